//! Repositories on S3-compatible object stores (AWS S3, Garage, MinIO, Ceph RGW, Backblaze B2,
//! Cloudflare R2, Wasabi), spelled as restic spells them: `s3:https://HOST[:PORT]/BUCKET[/PREFIX]`
//! or `s3:HOST/BUCKET[/PREFIX]` (https). OpenDAL's S3 service speaks the protocol (signing,
//! listing, errors); this module maps cairn's `Backend` onto it and turns the store's answers
//! into errors that say what to do. Retries, the bound on requests in flight and rate limits
//! are not here: `layers` wraps every backend in them.
//!
//! Credentials and settings come the way the AWS tools take them: `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_PROFILE` with `~/.aws/credentials`,
//! `AWS_REGION` or `AWS_DEFAULT_REGION`. Without a region, an AWS host names its own (else
//! `us-east-1`), and another store names the one it expects when asked in `us-east-1`.
//! Addressing is path-style (`HOST/BUCKET/NAME`) except on AWS, or when asked for
//! (`S3Settings::virtual_host_style`).
//!
//! Every answer is bounded by what was asked (invariant 7): a whole object is read as it
//! arrives and refused past the most bytes such an object can hold, a range past its length.
//! Each object is written with one PUT: a pack is 16 MiB, far below the 5 GiB a single PUT
//! may carry, and a multipart upload would cost three requests or more for it.

use super::backend::{Backend, ObjectInfo, RangeRequest, max_whole_object_bytes};
use crate::error::{Error, Missing, Result};
use crate::net::HttpTimeouts;
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

/// Packs uploading and read-ahead windows kept under way at once: five requests of up to
/// 16 MiB keep a link busy at tens of milliseconds of round trip and bound the memory
/// (restic's default for S3 is five connections too).
const REQUESTS_WORTH_KEEPING_UNDER_WAY: usize = 5;

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
        let configured = env("AWS_REGION")
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .or_else(|| location.aws_region());
        let region = configured.clone().unwrap_or_else(|| "us-east-1".to_owned());
        let mut backend = S3Backend {
            operator: operator(&location, settings, &client, &region)?,
            key_id: env("AWS_ACCESS_KEY_ID"),
            location,
            region,
        };
        if configured.is_none()
            && !backend.location.is_aws()
            && let Some(region) = backend.region_the_store_expects()
        {
            backend.operator = operator(&backend.location, settings, &client, &region)?;
            backend.region = region;
        }
        Ok(backend)
    }

    /// The region the store names when asked in the wrong one: stores answer a request
    /// signed for another region with the one they expect (Garage: `expected:
    /// 'DATE/REGION/s3/aws4_request'`; AWS and MinIO: `expecting 'REGION'`). One small read,
    /// made only when no region is configured.
    fn region_the_store_expects(&self) -> Option<String> {
        let operator = self.operator.clone();
        let answer =
            runtime().block_on(async move { operator.read_with("config").range(0..1).await });
        let text = answer.err()?.to_string();
        if let Some((_, rest)) = text.split_once("expected: '") {
            return rest.split('/').nth(1).map(str::to_owned);
        }
        let (_, rest) = text.split_once("expecting '")?;
        rest.split('\'').next().map(str::to_owned)
    }

    /// Runs `request` on the client's runtime and waits for it, its error made cairn's.
    fn wait<T>(
        &self,
        action: &str,
        name: &str,
        request: impl Future<Output = opendal::Result<T>>,
    ) -> Result<T> {
        runtime()
            .block_on(request)
            .map_err(|e| self.error(action, name, e))
    }

    /// Reads `range` of object `name` as it arrives, refused once past `limit` bytes.
    fn read_bounded(
        &self,
        name: &str,
        range: impl std::ops::RangeBounds<u64> + Send + 'static,
        limit: u64,
    ) -> Result<Vec<u8>> {
        let operator = self.operator.clone();
        let name_owned = name.to_owned();
        let location = self.location.to_string();
        self.wait("reading", name, async move {
            let reader = operator.reader(&name_owned).await?;
            let mut stream = reader.into_bytes_stream(range).await?;
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
        })?
    }

    /// The error a user reads for what the store answered to `action` (reading, storing, …)
    /// on object `name`.
    fn error(&self, action: &str, name: &str, error: opendal::Error) -> Error {
        let what = format!("{action} {name}");
        let location = &self.location;
        let bucket = &location.bucket;
        let said = store_words(&error);
        let text = error.to_string();
        let key = self.key_id.as_deref().unwrap_or("(none given)");
        match error.kind() {
            _ if text.contains("NoSuchBucket") => Error::InvalidInput(format!(
                "{location}: bucket {bucket} does not exist at {}: create it (for example \
                 `garage bucket create {bucket}`, `mc mb ALIAS/{bucket}` or `aws s3 mb s3://{bucket}`) \
                 or correct the bucket in --repo",
                location.endpoint
            )),
            StoreErrorKind::NotFound => Error::not_found(
                Missing::Object {
                    name: name.to_owned(),
                },
                format!("{location}: {what}: no such object"),
            ),
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
            _ if text.contains("AuthorizationHeaderMalformed") || text.contains("the region") => {
                Error::Network(format!(
                    "{location}: {what}: the store expects another region than {}: set \
                     AWS_REGION to the bucket's region (the store said: {said})",
                    self.region
                ))
            }
            StoreErrorKind::RateLimited => Error::Unavailable(format!("throttled ({said})")),
            _ if error.is_temporary() => {
                Error::Unavailable(temporary_cause(&text, &said, location))
            }
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
fn temporary_cause(text: &str, said: &str, location: &S3Location) -> String {
    let lower = text.to_ascii_lowercase();
    if lower.contains("error sending request") || lower.contains("connect") {
        format!("cannot reach {}", location.endpoint)
    } else {
        said.to_owned()
    }
}

/// The OpenDAL operator for the bucket at `location`, signing for `region`, sending through
/// `client`.
fn operator(
    location: &S3Location,
    settings: &S3Settings,
    client: &reqwest::Client,
    region: &str,
) -> Result<Operator> {
    let mut builder = S3::default()
        .endpoint(&location.endpoint)
        .bucket(&location.bucket)
        .root(&format!("/{}", location.prefix))
        .region(region)
        .disable_ec2_metadata();
    if settings.virtual_host_style || location.is_aws() {
        builder = builder.enable_virtual_host_style();
    }
    let operator = Operator::new(builder)
        .map_err(|e| Error::InvalidInput(format!("{location}: {}", e.message())))?;
    let transport = opendal::HttpTransporter::new(
        opendal_http_transport_reqwest::ReqwestTransport::new(client.clone()),
    );
    let context = operator.context().with_http_transport(transport);
    Ok(operator.with_context(context))
}

/// What the store said, in its own words: the S3 error's code and message when it sent
/// one, else the HTTP status, else OpenDAL's description.
fn store_words(error: &opendal::Error) -> String {
    let text = error.to_string();
    let quoted = |field: &str| {
        let (_, rest) = text.split_once(&format!("{field}: \""))?;
        rest.split('"').next().filter(|s| !s.is_empty())
    };
    match (quoted("code"), quoted("message")) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.to_owned(),
        _ => match text.split_once("status: ") {
            Some((_, rest)) => format!(
                "HTTP {}",
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()
                    .unwrap_or("?")
            ),
            None if !error.message().is_empty() => error.message().to_owned(),
            None => text,
        },
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

impl Backend for S3Backend {
    fn location(&self) -> String {
        self.location.to_string()
    }

    fn get(&self, name: &str) -> Result<Vec<u8>> {
        self.read_bounded(name, .., max_whole_object_bytes(name))
    }

    fn get_range(&self, name: &str, offset: u64, length: u64) -> Result<Vec<u8>> {
        let end = offset.checked_add(length).ok_or_else(|| {
            Error::InvalidInput(format!("{name}: {length} bytes at {offset} overflow"))
        })?;
        let bytes = self.read_bounded(name, offset..end, length)?;
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

    fn get_range_streamed(
        &self,
        name: &str,
        offset: u64,
        length: u64,
        take: &mut dyn FnMut(&[u8]),
    ) -> Result<()> {
        if length == 0 {
            return Ok(());
        }
        let end = offset.checked_add(length).ok_or_else(|| {
            Error::InvalidInput(format!("{name}: {length} bytes at {offset} overflow"))
        })?;
        let object = format!("{}/{name}", self.location);
        let operator = self.operator.clone();
        let mut received = 0u64;
        self.wait("reading", name, async {
            let reader = operator.reader(name).await?;
            let mut stream = reader.into_bytes_stream(offset..end).await?;
            while let Some(piece) = stream.next().await {
                let piece = piece.map_err(store_error_of_stream)?;
                if received + piece.len() as u64 > length {
                    return Ok(Err(Error::corrupt(
                        &object,
                        format!("more than the {length} bytes asked for at {offset}"),
                    )));
                }
                received += piece.len() as u64;
                take(&piece);
            }
            Ok(Ok(()))
        })??;
        if received < length {
            return Err(Error::corrupt(
                object,
                format!("truncated: {received} bytes at {offset} where {length} were expected"),
            ));
        }
        Ok(())
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
        self.wait("storing", name, async move {
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
        let entries = self.wait("listing", prefix, async move {
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
        self.wait("deleting", name, async move { operator.delete(name).await })
    }

    fn exists(&self, name: &str) -> Result<bool> {
        let operator = self.operator.clone();
        self.wait(
            "looking up",
            name,
            async move { operator.exists(name).await },
        )
    }

    fn size(&self, name: &str) -> Result<u64> {
        let operator = self.operator.clone();
        self.wait("looking up", name, async move {
            Ok(operator.stat(name).await?.content_length())
        })
    }

    fn preferred_concurrency(&self) -> usize {
        REQUESTS_WORTH_KEEPING_UNDER_WAY
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
