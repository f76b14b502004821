//! Repositories on S3-compatible object stores (AWS S3, Garage, MinIO, Ceph RGW, Backblaze B2,
//! Cloudflare R2, Wasabi), spelled as restic spells them: `s3:https://HOST[:PORT]/BUCKET[/PREFIX]`
//! or `s3:HOST/BUCKET[/PREFIX]` (https). OpenDAL's S3 service speaks the protocol (signing,
//! listing, errors); this module maps cairn's `Backend` onto it and turns the store's answers
//! into errors that say what to do. Retries, the bound on requests in flight and rate limits
//! are not here: `layers` wraps every backend in them.
//!
//! Credentials and settings come the way the AWS tools take them: `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_PROFILE` with `~/.aws/credentials`,
//! `AWS_REGION` or `AWS_DEFAULT_REGION`. Without a region, an AWS host names its own, and
//! another store is asked for its bucket's (`x-amz-bucket-region`), else `us-east-1`.
//! Addressing is path-style (`HOST/BUCKET/NAME`) except on AWS, or when asked for
//! (`S3Settings::virtual_host_style`).
//!
//! Every answer is bounded by what was asked (invariant 7): a whole object is read as it
//! arrives and refused past the most bytes such an object can hold, a range past its length.
//! Each object is written with one PUT: a pack is 16 MiB, far below the 5 GiB a single PUT
//! may carry, and a multipart upload would cost three requests or more for it.

use super::backend::{Backend, ObjectInfo, RangeRequest, max_whole_object_bytes};
use super::http::HttpTimeouts;
use crate::error::{Error, Result};
use opendal::services::S3;
use opendal::{ErrorKind as StoreErrorKind, Operator};
use std::sync::OnceLock;
use tokio_stream::StreamExt;

/// Where a repository lives in an object store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    /// `scheme://host[:port]`, without a trailing slash.
    pub endpoint: String,
    pub bucket: String,
    /// The objects' common prefix, without leading or trailing slashes; empty for the
    /// bucket's root.
    pub prefix: String,
}

impl S3Location {
    /// Parses `s3:https://HOST[:PORT]/BUCKET[/PREFIX]`, `s3:http://…` or `s3:HOST/BUCKET[/PREFIX]`.
    pub fn parse(text: &str) -> Result<Self> {
        let usage = |why: &str| {
            Error::InvalidInput(format!(
                "{text}: {why}; an S3 repository is written s3:https://HOST[:PORT]/BUCKET[/PREFIX] \
                 (s3:s3.amazonaws.com/BUCKET for AWS)"
            ))
        };
        let rest = text
            .strip_prefix("s3:")
            .ok_or_else(|| usage("not an s3: location"))?;
        let (scheme, rest) = match rest.split_once("://") {
            Some((scheme @ ("http" | "https"), rest)) => (scheme, rest),
            Some(_) => return Err(usage("the scheme must be http or https")),
            None => ("https", rest),
        };
        let (host, path) = rest
            .split_once('/')
            .ok_or_else(|| usage("no bucket given"))?;
        if host.is_empty() {
            return Err(usage("no host given"));
        }
        let mut parts = path.split('/').filter(|part| !part.is_empty());
        let bucket = parts.next().ok_or_else(|| usage("no bucket given"))?;
        let prefix: Vec<&str> = parts.collect();
        if prefix.iter().any(|part| matches!(*part, "." | "..")) {
            return Err(usage("the prefix may not hold . or .. components"));
        }
        Ok(S3Location {
            endpoint: format!("{scheme}://{host}"),
            bucket: bucket.to_owned(),
            prefix: prefix.join("/"),
        })
    }

    /// Whether the endpoint is Amazon's own.
    fn is_aws(&self) -> bool {
        self.endpoint
            .split_once("://")
            .is_some_and(|(_, host)| host.ends_with(".amazonaws.com"))
    }

    /// The region an AWS endpoint names (`s3.eu-west-1.amazonaws.com`), if it names one.
    fn aws_region(&self) -> Option<String> {
        let (_, host) = self.endpoint.split_once("://")?;
        let region = host
            .strip_prefix("s3.")?
            .strip_suffix(".amazonaws.com")?
            .trim_start_matches("dualstack.");
        (!region.is_empty()).then(|| region.to_owned())
    }
}

impl std::fmt::Display for S3Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3:{}/{}", self.endpoint, self.bucket)?;
        if !self.prefix.is_empty() {
            write!(f, "/{}", self.prefix)?;
        }
        Ok(())
    }
}

/// How cairn talks to the store, besides its location.
#[derive(Debug, Clone, Default)]
pub struct S3Settings {
    /// PEM certificates to trust besides the system's (a private CA, a self-signed store).
    pub ca_pem: Option<Vec<u8>>,
    pub timeouts: HttpTimeouts,
    /// `BUCKET.HOST/NAME` instead of `HOST/BUCKET/NAME` (the default on AWS).
    pub virtual_host_style: bool,
}

/// The runtime OpenDAL's requests run on; cairn's threads wait on them with `block_on`.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("cairn-s3")
            .enable_all()
            .build()
            .expect("the S3 client's runtime starts")
    })
}

/// Requests one `get_ranges` call keeps in flight at once.
const RANGES_IN_FLIGHT: usize = 8;

/// A repository in an S3 bucket.
pub struct S3Backend {
    operator: Operator,
    location: S3Location,
    /// The access key id in use, named in "access denied" (never the secret).
    key_id: Option<String>,
    region: String,
}

/// The environment variable `name`, when set and not empty.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

impl S3Backend {
    pub fn new(location: S3Location, settings: &S3Settings) -> Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = http_client(settings)?;
        let region = match env("AWS_REGION")
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .or_else(|| location.aws_region())
        {
            Some(region) => region,
            None if location.is_aws() => "us-east-1".to_owned(),
            None => runtime()
                .block_on(bucket_region(&client, &location))
                .unwrap_or_else(|| "us-east-1".to_owned()),
        };
        let mut builder = S3::default()
            .endpoint(&location.endpoint)
            .bucket(&location.bucket)
            .root(&format!("/{}", location.prefix))
            .region(&region)
            .disable_ec2_metadata();
        if settings.virtual_host_style || location.is_aws() {
            builder = builder.enable_virtual_host_style();
        }
        let operator = Operator::new(builder)
            .map_err(|e| Error::InvalidInput(format!("{location}: {}", e.message())))?;
        let transport = opendal::HttpTransporter::new(
            opendal_http_transport_reqwest::ReqwestTransport::new(client),
        );
        let context = operator.context().with_http_transport(transport);
        Ok(S3Backend {
            operator: operator.with_context(context),
            key_id: env("AWS_ACCESS_KEY_ID"),
            location,
            region,
        })
    }

    /// Runs `request` on the client's runtime and waits for it, its error made cairn's.
    fn wait<T>(
        &self,
        what: impl FnOnce() -> String,
        request: impl Future<Output = opendal::Result<T>>,
    ) -> Result<T> {
        runtime()
            .block_on(request)
            .map_err(|e| self.error(&what(), e))
    }

    /// Reads `range` of object `name` (the whole object when `None`: one GET without a
    /// range, as a range past the object's end is an error to the client) as it arrives,
    /// refused once past `limit` bytes.
    fn read_bounded(
        &self,
        name: &str,
        range: Option<std::ops::Range<u64>>,
        limit: u64,
    ) -> Result<Vec<u8>> {
        let what = || format!("reading {name}");
        let operator = self.operator.clone();
        let name_owned = name.to_owned();
        let location = self.location.to_string();
        let outcome = runtime().block_on(async move {
            let reader = operator.reader(&name_owned).await?;
            let mut stream = match range {
                Some(range) => reader.into_bytes_stream(range).await?,
                None => reader.into_bytes_stream(..).await?,
            };
            let mut bytes = Vec::new();
            while let Some(piece) = stream.next().await {
                let piece = piece.map_err(store_error_of_stream)?;
                if bytes.len() as u64 + piece.len() as u64 > limit {
                    return Ok(Err(Error::corrupt(
                        format!("{location}/{name_owned}"),
                        format!("more than the {limit} bytes asked for or such an object holds"),
                    )));
                }
                bytes.extend_from_slice(&piece);
            }
            Ok(Ok(bytes))
        });
        outcome.map_err(|e| self.error(&what(), e))?
    }

    /// The error a user reads for what the store answered `what`.
    fn error(&self, what: &str, error: opendal::Error) -> Error {
        let location = &self.location;
        let bucket = &location.bucket;
        let said = error.message().to_owned();
        let text = error.to_string();
        let key = self.key_id.as_deref().unwrap_or("(none given)");
        match error.kind() {
            StoreErrorKind::NotFound => {
                Error::NotFound(format!("{location}: {what}: no such object"))
            }
            StoreErrorKind::ConfigInvalid if text.contains("NoSuchBucket") => {
                Error::NotFound(format!(
                    "{location}: bucket {bucket} does not exist at {}: create it (for example \
                 `garage bucket create {bucket}`, `mc mb ALIAS/{bucket}` or `aws s3 mb s3://{bucket}`) \
                 or correct the bucket in --repo",
                    location.endpoint
                ))
            }
            StoreErrorKind::PermissionDenied if text.contains("SignatureDoesNotMatch") => {
                Error::Network(format!(
                    "{location}: {what}: the store refused the signature of key {key}: \
                     AWS_SECRET_ACCESS_KEY is not that key's secret"
                ))
            }
            StoreErrorKind::PermissionDenied => Error::Network(format!(
                "{location}: access denied {what} with key {key}: check AWS_ACCESS_KEY_ID and \
                 AWS_SECRET_ACCESS_KEY, and that this key may read and write bucket {bucket} \
                 (Garage: `garage bucket allow --read --write --key KEY {bucket}`)"
            )),
            _ if text.contains("AuthorizationHeaderMalformed") || text.contains("region") => {
                Error::Network(format!(
                    "{location}: {what}: the store expects another region than {}: set \
                     AWS_REGION to the bucket's region (the store said: {said})",
                    self.region
                ))
            }
            StoreErrorKind::RateLimited => Error::Unavailable(format!("throttled ({said})")),
            _ if error.is_temporary() => Error::Unavailable(temporary_cause(&said, location)),
            _ => Error::Network(format!("{location}: {what}: {said}")),
        }
    }
}

/// The store's own error inside an error of a read stream (the first piece of a stream makes
/// the request, so its answer, an access denied as much as a reset, arrives here), with its
/// kind kept; anything else broke the transfer and may be tried again.
fn store_error_of_stream(error: std::io::Error) -> opendal::Error {
    let text = error.to_string();
    match error
        .into_inner()
        .map(|inner| inner.downcast::<opendal::Error>())
    {
        Some(Ok(store)) => *store,
        _ => opendal::Error::new(StoreErrorKind::Unexpected, text).set_temporary(),
    }
}

/// What a temporary failure says, in words: a connection that failed says the endpoint is
/// unreachable.
fn temporary_cause(said: &str, location: &S3Location) -> String {
    let lower = said.to_ascii_lowercase();
    if lower.contains("connect") || lower.contains("dns") || lower.contains("error sending request")
    {
        format!("cannot reach {} ({said})", location.endpoint)
    } else {
        said.to_owned()
    }
}

/// The HTTP client of the store: the extra CA trusted, every wait bounded by `timeouts`.
fn http_client(settings: &S3Settings) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(settings.timeouts.connect)
        .read_timeout(settings.timeouts.idle)
        .pool_idle_timeout(std::time::Duration::from_secs(30));
    if let Some(pem) = &settings.ca_pem {
        let certificates = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| Error::InvalidInput(format!("reading the CA certificate: {e}")))?;
        if certificates.is_empty() {
            return Err(Error::InvalidInput(
                "the CA file holds no PEM certificate".into(),
            ));
        }
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder
        .build()
        .map_err(|e| Error::InvalidInput(format!("preparing the S3 client: {e}")))
}

/// The region a store says its bucket is in (`x-amz-bucket-region` on a HEAD of the bucket),
/// asked once when none is configured.
async fn bucket_region(client: &reqwest::Client, location: &S3Location) -> Option<String> {
    let answer = client
        .head(format!("{}/{}", location.endpoint, location.bucket))
        .send()
        .await
        .ok()?;
    let region = answer.headers().get("x-amz-bucket-region")?.to_str().ok()?;
    (!region.is_empty()).then(|| region.to_owned())
}

impl Backend for S3Backend {
    fn location(&self) -> String {
        self.location.to_string()
    }

    fn get(&self, name: &str) -> Result<Vec<u8>> {
        let limit = max_whole_object_bytes(name);
        self.read_bounded(name, None, limit)
    }

    fn get_range(&self, name: &str, offset: u64, length: u64) -> Result<Vec<u8>> {
        let end = offset.checked_add(length).ok_or_else(|| {
            Error::InvalidInput(format!("{name}: {length} bytes at {offset} overflow"))
        })?;
        let bytes = self.read_bounded(name, Some(offset..end), length)?;
        if (bytes.len() as u64) < length {
            return Err(Error::corrupt(
                format!("{}/{name}", self.location),
                format!(
                    "truncated: {} bytes at {offset} where {length} were expected",
                    bytes.len()
                ),
            ));
        }
        Ok(bytes)
    }

    fn get_ranges(&self, ranges: &[RangeRequest]) -> Result<Vec<Vec<u8>>> {
        let mut all = Vec::with_capacity(ranges.len());
        for window in ranges.chunks(RANGES_IN_FLIGHT) {
            let answers: Vec<Result<Vec<u8>>> = std::thread::scope(|scope| {
                let readers: Vec<_> = window
                    .iter()
                    .map(|r| scope.spawn(move || self.get_range(&r.name, r.offset, r.length)))
                    .collect();
                readers
                    .into_iter()
                    .map(|reader| reader.join().expect("range readers do not panic"))
                    .collect()
            });
            for answer in answers {
                all.push(answer?);
            }
        }
        Ok(all)
    }

    fn put(&self, name: &str, data: &[u8]) -> Result<()> {
        let operator = self.operator.clone();
        self.wait(|| format!("storing {name}"), async move {
            operator.write(name, data.to_vec()).await.map(|_| ())
        })
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        // The store lists by directory: list the directory the prefix is in, and keep what
        // starts with the prefix.
        let directory = match prefix.rfind('/') {
            Some(slash) => &prefix[..=slash],
            None => "",
        };
        let operator = self.operator.clone();
        let entries = self.wait(|| format!("listing {prefix}"), async move {
            let mut lister = operator.lister_with(directory).recursive(true).await?;
            let mut objects = Vec::new();
            while let Some(entry) = lister.next().await {
                let entry = entry?;
                if entry.metadata().is_file() && entry.path().starts_with(prefix) {
                    objects.push(ObjectInfo {
                        name: entry.path().to_owned(),
                        size: entry.metadata().content_length(),
                    });
                }
            }
            Ok(objects)
        })?;
        Ok(entries)
    }

    fn delete(&self, name: &str) -> Result<()> {
        let operator = self.operator.clone();
        self.wait(|| format!("deleting {name}"), async move {
            operator.delete(name).await
        })
    }

    fn exists(&self, name: &str) -> Result<bool> {
        let operator = self.operator.clone();
        self.wait(|| format!("looking up {name}"), async move {
            operator.exists(name).await
        })
    }

    fn size(&self, name: &str) -> Result<u64> {
        let operator = self.operator.clone();
        self.wait(|| format!("looking up {name}"), async move {
            Ok(operator.stat(name).await?.content_length())
        })
    }

    fn preferred_concurrency(&self) -> usize {
        RANGES_IN_FLIGHT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_as_restic_spells_them() {
        let parsed = S3Location::parse("s3:http://127.0.0.1:3900/backups/host/a").unwrap();
        assert_eq!(parsed.endpoint, "http://127.0.0.1:3900");
        assert_eq!(parsed.bucket, "backups");
        assert_eq!(parsed.prefix, "host/a");
        assert_eq!(
            parsed.to_string(),
            "s3:http://127.0.0.1:3900/backups/host/a"
        );
        let aws = S3Location::parse("s3:s3.eu-west-1.amazonaws.com/bucket/").unwrap();
        assert_eq!(aws.endpoint, "https://s3.eu-west-1.amazonaws.com");
        assert_eq!(aws.prefix, "");
        assert_eq!(aws.aws_region().as_deref(), Some("eu-west-1"));
        assert!(aws.is_aws());
        for wrong in [
            "s3:",
            "s3:host",
            "s3:https://host/",
            "s3:ftp://host/bucket",
            "s3:https:///bucket",
            "s3:host/bucket/../other",
        ] {
            assert!(S3Location::parse(wrong).is_err(), "{wrong}");
        }
    }
}
