//! A live directory served by `cairn serve --source NAME=DIR`, read over HTTP(S): listings,
//! chunk lists and the chunks a client lacks (see `wire`). As a `TreeSource` it syncs into a
//! directory, rebuilding changed files from the chunks the target already holds; the pull
//! into a repository (`pull`) uses the same calls. Everything the server sends is checked:
//! names must be valid and sorted, and every chunk must match its id.

use super::SyncError;
use super::into_dir::{FileWrite, TreeSource, rebuild_file};
use super::wire::{BlobsRequest, ChunkSpec, ChunksRequest, ChunksResponse, split_blobs};
use crate::chunker::Chunker;
use crate::error::{Error, Result};
use crate::id::BlobId;
use crate::repo::http::{Remote, check_response, read_body};
use crate::throttle::RateLimiter;
use crate::tree::{ChunkRef, Entry, EntryKind, is_valid_name};
use std::fs::File;
use std::sync::Mutex;

/// A served source directory, chunked by the server as `spec` says.
pub struct RemoteSource {
    remote: Remote,
    agent: ureq::Agent,
    spec: ChunkSpec,
    chunker: Chunker,
}

/// A path below the source: components joined by `/`, empty for its root.
pub type RemotePath = Vec<u8>;

/// `dir/name`, or `name` at the root.
pub fn child_path(dir: &[u8], name: &[u8]) -> RemotePath {
    if dir.is_empty() {
        return name.to_vec();
    }
    [dir, b"/", name].concat()
}

impl RemoteSource {
    /// `remote.url` is the source's URL (`https://host:port/source/NAME`).
    pub fn new(remote: Remote, spec: ChunkSpec) -> Result<Self> {
        let agent = remote.agent()?;
        let chunker = spec.chunker()?;
        Ok(RemoteSource {
            remote,
            agent,
            spec,
            chunker,
        })
    }

    pub fn url(&self) -> &str {
        &self.remote.url
    }

    /// The entries of directory `dir`, checked: valid names, sorted and unique.
    pub fn list_dir(&self, dir: &[u8]) -> Result<Vec<Entry>> {
        let url = format!("{}/list?path={}", self.remote.url, hex::encode(dir));
        let request = self
            .agent
            .get(&url)
            .header("Authorization", &self.remote.bearer());
        let body = read_body(&url, check_response(&url, request.call())?)?;
        let entries: Vec<Entry> = postcard::from_bytes(&body)
            .map_err(|e| Error::corrupt(&url, format!("unreadable listing: {e}")))?;
        if let Some(bad) = entries.iter().find(|e| !is_valid_name(&e.name)) {
            return Err(Error::corrupt(
                &url,
                format!("hostile entry name {:?}", bad.name_lossy()),
            ));
        }
        if entries.windows(2).any(|w| w[0].name >= w[1].name) {
            return Err(Error::corrupt(&url, "entries are not sorted and unique"));
        }
        Ok(entries)
    }

    /// The entry of `path` itself (the source's root for an empty path); `None` for a socket.
    pub fn stat(&self, path: &[u8]) -> Result<Option<Entry>> {
        let url = format!("{}/stat?path={}", self.remote.url, hex::encode(path));
        let request = self
            .agent
            .get(&url)
            .header("Authorization", &self.remote.bearer());
        let body = read_body(&url, check_response(&url, request.call())?)?;
        postcard::from_bytes(&body)
            .map_err(|e| Error::corrupt(&url, format!("unreadable entry: {e}")))
    }

    /// The last component of the source's URL: its name on the server.
    pub fn name(&self) -> &str {
        self.remote.url.rsplit('/').next().unwrap_or_default()
    }

    /// The chunk list of the file at `path`, as the server chunks it now.
    pub fn file_chunks(&self, path: &[u8]) -> Result<Vec<ChunkRef>> {
        let url = format!("{}/chunks", self.remote.url);
        let request = ChunksRequest {
            spec: self.spec.clone(),
            path: path.to_vec(),
        };
        let body = postcard::to_stdvec(&request).expect("requests serialize");
        let call = self
            .agent
            .post(&url)
            .header("Authorization", &self.remote.bearer())
            .send(&body[..]);
        let answer = read_body(&url, check_response(&url, call)?)?;
        let response: ChunksResponse = postcard::from_bytes(&answer)
            .map_err(|e| Error::corrupt(&url, format!("unreadable chunk list: {e}")))?;
        Ok(response.chunks)
    }

    /// The chunks at the given offsets of the file at `path`, each checked against its id;
    /// also the bytes that crossed (compressed).
    pub fn fetch(
        &self,
        path: &[u8],
        chunks: &[(u64, ChunkRef)],
        limiter: Option<&RateLimiter>,
    ) -> Result<(Vec<Vec<u8>>, u64)> {
        let url = format!("{}/blobs", self.remote.url);
        let ranges: Vec<(u64, u32)> = chunks.iter().map(|(at, c)| (*at, c.length)).collect();
        let request = BlobsRequest {
            path: path.to_vec(),
            ranges: ranges.clone(),
        };
        let body = postcard::to_stdvec(&request).expect("requests serialize");
        let call = self
            .agent
            .post(&url)
            .header("Authorization", &self.remote.bearer())
            .send(&body[..]);
        let answer = read_body(&url, check_response(&url, call)?)?;
        if let Some(limiter) = limiter {
            limiter.take(answer.len() as u64);
        }
        let what = format!("{url} ({})", String::from_utf8_lossy(path));
        let parts = split_blobs(&answer, &ranges, &what)?;
        for ((at, chunk), data) in chunks.iter().zip(&parts) {
            if self.spec.id_of(data) != chunk.id {
                return Err(Error::corrupt(
                    &what,
                    format!(
                        "the chunk at offset {at} does not match its id (changed while syncing, or a bad server)"
                    ),
                ));
            }
        }
        Ok((parts, answer.len() as u64))
    }

    pub fn id_of(&self, data: &[u8]) -> BlobId {
        self.spec.id_of(data)
    }
}

impl TreeSource for RemoteSource {
    type Dir = RemotePath;

    fn list(
        &self,
        dir: &RemotePath,
        _: &Mutex<Vec<SyncError>>,
    ) -> Result<Vec<(Entry, Option<RemotePath>)>> {
        Ok(self
            .list_dir(dir)?
            .into_iter()
            .map(|entry| {
                let subdir =
                    matches!(entry.kind, EntryKind::Dir(_)).then(|| child_path(dir, &entry.name));
                (entry, subdir)
            })
            .collect())
    }

    fn write_file(
        &self,
        dir: &RemotePath,
        entry: &Entry,
        old: Option<&File>,
        out: &File,
        limiter: Option<&RateLimiter>,
    ) -> Result<FileWrite> {
        let path = child_path(dir, &entry.name);
        let chunks = self.file_chunks(&path)?;
        let id_of = |data: &[u8]| self.id_of(data);
        let mut fetch = |missing: &[(u64, ChunkRef)]| self.fetch(&path, missing, limiter);
        rebuild_file(&chunks, entry, old, &self.chunker, &id_of, &mut fetch, out)
    }
}
