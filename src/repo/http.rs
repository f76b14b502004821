//! A repository served by `cairn serve`, reached over HTTP or HTTPS (`net::client`): the
//! same object store as a local directory, one request per call. The server never sees a
//! key: objects cross as the repository stores them (sealed when the repository is
//! encrypted). `get_ranges` asks for many blob ranges in one request, so a copy does not pay
//! a round trip per blob.

use super::backend::{Backend, ObjectInfo, RangeRequest};
use crate::error::{Error, ErrorKind, Result};
use crate::net::client::{Ask, HttpClient, Remote};
use crate::net::wire::ListedObject;
use crate::repo::objects::ObjectKind;
use std::collections::HashMap;
use std::io::Read;
use std::sync::Mutex;

/// A repository listing (JSON) is refused past this: about 1.2 million objects.
const MAX_OBJECT_LISTING_BYTES: u64 = 128 << 20;

/// Requests kept under way at once against a server: four 16 MiB packs uploading, or four
/// batched reads, keep a link with tens of milliseconds of round trip busy.
const CONCURRENT_REQUESTS: usize = 4;

/// A repository behind `cairn serve --repo`.
pub struct HttpBackend {
    client: HttpClient,
    /// The sizes the last listings gave, by object name (packs under `data/` left out:
    /// they are many and read by range), so a whole object is read up to its size.
    listed_sizes: Mutex<HashMap<String, u64>>,
}

impl HttpBackend {
    /// `remote.url` is the repository's URL (`https://host:port/repo`).
    pub fn new(remote: Remote) -> Result<Self> {
        Ok(HttpBackend {
            client: HttpClient::new(remote)?,
            listed_sizes: Mutex::new(HashMap::new()),
        })
    }

    fn object_url(&self, name: &str) -> String {
        format!("{}/objects/{name}", self.client.url())
    }

    /// The most bytes object `name` can hold: its listed size, or the cap of its kind.
    fn max_object_bytes(&self, name: &str) -> u64 {
        let listed = self
            .listed_sizes
            .lock()
            .expect("not poisoned")
            .get(name)
            .copied();
        match listed {
            Some(size) => size,
            None => super::backend::max_whole_object_bytes(name),
        }
    }
}

impl Backend for HttpBackend {
    fn location(&self) -> String {
        self.client.url().to_owned()
    }

    fn get(&self, name: &str) -> Result<Vec<u8>> {
        let url = self.object_url(name);
        self.client
            .read_bytes(&url, Ask::Get, self.max_object_bytes(name))
    }

    fn get_range(&self, name: &str, offset: u64, length: u64) -> Result<Vec<u8>> {
        if length == 0 {
            return Ok(Vec::new());
        }
        let url = self.object_url(name);
        let bytes = self
            .client
            .read_bytes(&url, Ask::Range { offset, length }, length)?;
        if bytes.len() as u64 != length {
            return Err(Error::corrupt(
                url,
                format!(
                    "truncated: wanted {length} bytes at offset {offset}, got {}",
                    bytes.len()
                ),
            ));
        }
        Ok(bytes)
    }

    fn get_ranges(&self, ranges: &[RangeRequest]) -> Result<Vec<Vec<u8>>> {
        let url = format!("{}/ranges", self.client.url());
        let asked = ranges
            .iter()
            .try_fold(0u64, |sum, r| sum.checked_add(r.length))
            .ok_or_else(|| Error::InvalidInput(format!("{url}: ranges past 2^64 bytes")))?;
        let body = serde_json::to_vec(ranges).expect("ranges serialize");
        self.client.read(&url, Ask::Post(&body), asked, |answer| {
            let mut out = Vec::with_capacity(ranges.len());
            for range in ranges {
                let mut part = Vec::new();
                (&mut *answer)
                    .take(range.length)
                    .read_to_end(&mut part)
                    .map_err(|e| Error::Network(format!("{url}: {e}")))?;
                if part.len() as u64 != range.length {
                    return Err(Error::corrupt(
                        &url,
                        format!(
                            "truncated batch: {} lacks {} bytes",
                            range.name,
                            range.length - part.len() as u64
                        ),
                    ));
                }
                out.push(part);
            }
            Ok(out)
        })
    }

    fn put(&self, name: &str, data: &[u8]) -> Result<()> {
        self.client.write(&self.object_url(name), Some(data))
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let url = format!("{}/list/{prefix}", self.client.url());
        let listed: Vec<ListedObject> =
            self.client
                .read(&url, Ask::Get, MAX_OBJECT_LISTING_BYTES, |answer| {
                    serde_json::from_reader(std::io::BufReader::new(answer))
                        .map_err(|e| Error::Network(format!("{url}: unreadable listing: {e}")))
                })?;
        let mut sizes = self.listed_sizes.lock().expect("not poisoned");
        for object in listed
            .iter()
            .filter(|o| ObjectKind::of(&o.name) != Some(ObjectKind::Pack))
        {
            sizes.insert(object.name.clone(), object.size);
        }
        Ok(listed
            .into_iter()
            .map(|o| ObjectInfo {
                name: o.name,
                size: o.size,
            })
            .collect())
    }

    fn delete(&self, name: &str) -> Result<()> {
        match self.client.write(&self.object_url(name), None) {
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    fn preferred_concurrency(&self) -> usize {
        CONCURRENT_REQUESTS
    }

    fn exists(&self, name: &str) -> Result<bool> {
        match self.client.open(&self.object_url(name), Ask::Head, 0) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}
