//! A repository served by `cairn serve`, reached over HTTP or HTTPS: the same object store
//! as a local directory, one request per call, with a bearer token on every request. The
//! server never sees a key: objects cross as the repository stores them (sealed when the
//! repository is encrypted). `get_ranges` asks for many blob ranges in one request, so a
//! copy does not pay a round trip per blob.

use super::backend::{Backend, ObjectInfo, RangeRequest};
use crate::error::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};
use std::io::Read;
use ureq::Agent;

/// How a client reaches a server: its URL, the token, and a CA to trust besides the system's.
#[derive(Debug, Clone)]
pub struct Remote {
    /// `http(s)://host:port/...`, without a trailing slash.
    pub url: String,
    pub token: String,
    /// PEM certificates to trust (a self-signed server's own certificate, for example).
    pub ca_pem: Option<Vec<u8>>,
}

impl Remote {
    /// An HTTP agent for this remote: the extra CA trusted, error statuses returned as
    /// responses (they are turned into messages here), no size limit on bodies.
    pub fn agent(&self) -> Result<Agent> {
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(pem) = &self.ca_pem {
            let certs = ureq::tls::parse_pem(pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(cert)) => Some(Ok(cert)),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                })
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| Error::InvalidInput(format!("reading the CA certificate: {e}")))?;
            if certs.is_empty() {
                return Err(Error::InvalidInput(
                    "the CA file holds no PEM certificate".into(),
                ));
            }
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
        }
        let config = Agent::config_builder()
            .tls_config(tls.build())
            .http_status_as_error(false)
            .build();
        Ok(config.into())
    }

    /// `Authorization` header value.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.token)
    }
}

/// Turns a failed request or an error status into a clear error naming `what`.
pub fn check_response(
    what: &str,
    result: std::result::Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<ureq::http::Response<ureq::Body>> {
    let mut response = result.map_err(|e| Error::Network(format!("{what}: {e}")))?;
    let status = response.status().as_u16();
    if (200..300).contains(&status) {
        return Ok(response);
    }
    let body = response
        .body_mut()
        .with_config()
        .limit(64 * 1024)
        .read_to_string()
        .unwrap_or_default();
    let detail = body.trim();
    Err(match status {
        401 => Error::InvalidInput(format!(
            "{what}: the server refused the token (401): pass the server's token with --token-file FILE or CAIRN_TOKEN"
        )),
        404 => Error::NotFound(format!("{what}: not found on the server")),
        403 | 409 => Error::InvalidInput(format!(
            "{what}: refused by the server ({status}): {detail}"
        )),
        _ => Error::Network(format!("{what}: the server answered {status}: {detail}")),
    })
}

/// Reads a whole response body.
pub fn read_body(what: &str, mut response: ureq::http::Response<ureq::Body>) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    response
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .reader()
        .read_to_end(&mut out)
        .map_err(|e| Error::Network(format!("{what}: {e}")))?;
    Ok(out)
}

/// A listed object, as the server sends it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListedObject {
    pub name: String,
    pub size: u64,
}

/// A repository behind `cairn serve --repo`.
pub struct HttpBackend {
    remote: Remote,
    agent: Agent,
}

impl HttpBackend {
    /// `remote.url` is the repository's URL (`https://host:port/repo`).
    pub fn new(remote: Remote) -> Result<Self> {
        let agent = remote.agent()?;
        Ok(HttpBackend { remote, agent })
    }

    fn object_url(&self, name: &str) -> String {
        format!("{}/objects/{name}", self.remote.url)
    }

    fn what(&self, name: &str) -> String {
        format!("{}/objects/{name}", self.remote.url)
    }
}

impl Backend for HttpBackend {
    fn location(&self) -> String {
        self.remote.url.clone()
    }

    fn get(&self, name: &str) -> Result<Vec<u8>> {
        let what = self.what(name);
        let request = self
            .agent
            .get(&self.object_url(name))
            .header("Authorization", &self.remote.bearer());
        read_body(&what, check_response(&what, request.call())?)
    }

    fn get_range(&self, name: &str, offset: u64, length: u64) -> Result<Vec<u8>> {
        if length == 0 {
            return Ok(Vec::new());
        }
        let what = self.what(name);
        let range = format!("bytes={}-{}", offset, offset + length - 1);
        let request = self
            .agent
            .get(&self.object_url(name))
            .header("Authorization", &self.remote.bearer())
            .header("Range", &range);
        let bytes = read_body(&what, check_response(&what, request.call())?)?;
        if bytes.len() as u64 != length {
            return Err(Error::corrupt(
                what,
                format!(
                    "truncated: wanted {length} bytes at offset {offset}, got {}",
                    bytes.len()
                ),
            ));
        }
        Ok(bytes)
    }

    fn get_ranges(&self, ranges: &[RangeRequest]) -> Result<Vec<Vec<u8>>> {
        let what = format!("{}/ranges", self.remote.url);
        let body = serde_json::to_vec(ranges).expect("ranges serialize");
        let request = self
            .agent
            .post(&what)
            .header("Authorization", &self.remote.bearer())
            .header("Content-Type", "application/json");
        let bytes = read_body(&what, check_response(&what, request.send(&body[..]))?)?;
        let mut rest = &bytes[..];
        let mut out = Vec::with_capacity(ranges.len());
        for range in ranges {
            if (rest.len() as u64) < range.length {
                return Err(Error::corrupt(
                    what,
                    format!(
                        "truncated batch: {} lacks {} bytes",
                        range.name, range.length
                    ),
                ));
            }
            let (this, next) = rest.split_at(range.length as usize);
            out.push(this.to_vec());
            rest = next;
        }
        Ok(out)
    }

    fn put(&self, name: &str, data: &[u8]) -> Result<()> {
        let what = self.what(name);
        let request = self
            .agent
            .put(&self.object_url(name))
            .header("Authorization", &self.remote.bearer());
        check_response(&what, request.send(data))?;
        Ok(())
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let url = format!("{}/list/{prefix}", self.remote.url);
        let request = self
            .agent
            .get(&url)
            .header("Authorization", &self.remote.bearer());
        let bytes = read_body(&url, check_response(&url, request.call())?)?;
        let listed: Vec<ListedObject> = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Network(format!("{url}: unreadable listing: {e}")))?;
        Ok(listed
            .into_iter()
            .map(|o| ObjectInfo {
                name: o.name,
                size: o.size,
            })
            .collect())
    }

    fn delete(&self, name: &str) -> Result<()> {
        let what = self.what(name);
        let request = self
            .agent
            .delete(&self.object_url(name))
            .header("Authorization", &self.remote.bearer());
        match check_response(&what, request.call()) {
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            other => other.map(drop),
        }
    }

    fn exists(&self, name: &str) -> Result<bool> {
        let what = self.what(name);
        let request = self
            .agent
            .head(&self.object_url(name))
            .header("Authorization", &self.remote.bearer());
        match check_response(&what, request.call()) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}
