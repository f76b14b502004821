//! What a repository location names — a local directory, the URL of a `cairn serve`, an S3
//! bucket — and the store it opens, inside the layers every store is used through. A new
//! kind of store is named here and nowhere else.

use super::backend::{Backend, LocalBackend};
use super::layers::{self, Layers, RetryPolicy};
use super::objects;
use crate::error::Result;
use crate::net::HttpTimeouts;
use std::path::Path;
use std::sync::Arc;

/// Whether a repository location is the URL of a `cairn serve` (`http://`, `https://`).
pub fn is_url(location: &str) -> bool {
    location.starts_with("http://") || location.starts_with("https://")
}

/// Whether a repository location is an S3 bucket (`s3:`).
pub fn is_s3(location: &str) -> bool {
    location.starts_with("s3:")
}

/// Whether local directory `path` holds a cairn repository: a `config` naming the format.
pub fn is_local_repository(path: &Path) -> bool {
    std::fs::read(path.join(objects::CONFIG))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .is_some_and(|config| config.get("cairn_repository").is_some())
}

/// How to reach the store a location names, and the limits it is used within.
#[derive(Clone, Default)]
pub struct StoreOptions {
    /// PEM certificates to trust besides the system's (a self-signed server, a private CA).
    pub ca_pem: Option<Vec<u8>>,
    /// How long to wait for a server or an object store.
    pub timeouts: HttpTimeouts,
    /// The token a `cairn serve` asks for: needed for an `http(s)://` location only.
    pub token: Option<String>,
    /// S3: `BUCKET.HOST/NAME` instead of `HOST/BUCKET/NAME` (the default on AWS).
    pub s3_virtual_host_style: bool,
    /// How long a request the store did not answer is tried again.
    pub retry: RetryPolicy,
    /// Bytes per second sent (`put`), when capped.
    pub upload_limit: Option<u64>,
    /// Bytes per second received (`get`), when capped.
    pub download_limit: Option<u64>,
}

/// The store at `location` inside its layers: retries, the rate limits asked for, and for a
/// store that serves many requests at once a bound of twice as many in flight.
pub fn open_store(location: &Path, options: &StoreOptions) -> Result<Arc<dyn Backend>> {
    let store: Arc<dyn Backend> = match location.to_str() {
        Some(text) if is_s3(text) => s3_store(text, options)?,
        Some(text) if is_url(text) => served_store(text, options)?,
        _ => Arc::new(LocalBackend::new(location)),
    };
    let max_in_flight = match store.preferred_concurrency() {
        1 => None,
        many => Some(2 * many),
    };
    Ok(layers::wrap(
        store,
        Layers {
            retry: options.retry,
            max_in_flight,
            upload_limit: options.upload_limit,
            download_limit: options.download_limit,
        },
    ))
}

#[cfg(feature = "s3")]
fn s3_store(location: &str, options: &StoreOptions) -> Result<Arc<dyn Backend>> {
    use super::s3::{S3Backend, S3Location, S3Settings};
    let settings = S3Settings {
        ca_pem: options.ca_pem.clone(),
        timeouts: options.timeouts,
        virtual_host_style: options.s3_virtual_host_style,
    };
    Ok(Arc::new(S3Backend::new(
        S3Location::parse(location)?,
        &settings,
    )?))
}

#[cfg(not(feature = "s3"))]
fn s3_store(location: &str, _: &StoreOptions) -> Result<Arc<dyn Backend>> {
    Err(crate::error::Error::InvalidInput(format!(
        "{location}: this build of cairn has no S3 support (Cargo feature `s3`)"
    )))
}

#[cfg(feature = "client")]
fn served_store(url: &str, options: &StoreOptions) -> Result<Arc<dyn Backend>> {
    let token = options.token.clone().ok_or_else(|| {
        crate::error::Error::InvalidInput(format!("{url}: a server token is needed"))
    })?;
    let remote =
        crate::net::client::Remote::new(url, token, options.ca_pem.clone(), options.timeouts);
    Ok(Arc::new(super::http::HttpBackend::new(remote)?))
}

#[cfg(not(feature = "client"))]
fn served_store(url: &str, _: &StoreOptions) -> Result<Arc<dyn Backend>> {
    Err(crate::error::Error::InvalidInput(format!(
        "{url}: this build of cairn cannot reach a served repository (Cargo feature `client`)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn a_location_opens_the_store_it_names() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path(), &StoreOptions::default()).unwrap();
        store.put("config", b"settings").unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("config")).unwrap(),
            b"settings"
        );
        assert!(
            !is_local_repository(dir.path()),
            "not a config naming the format"
        );

        let served = open_store(Path::new("https://127.0.0.1:1/"), &StoreOptions::default());
        let error = served.err().expect("a served store without a token");
        assert_eq!(error.kind(), ErrorKind::InvalidInput);
        assert!(
            error.to_string().starts_with("https://127.0.0.1:1/"),
            "{error}"
        );

        let bucket = open_store(Path::new("s3:"), &StoreOptions::default());
        let error = bucket.err().expect("an S3 location without a bucket");
        assert_eq!(error.kind(), ErrorKind::InvalidInput);
    }
}
