//! The client side of cairn's protocol: `HttpClient` is the one way cairn talks to a
//! `cairn serve` (a served repository in `repo::http`, a served source in `source::remote`),
//! with a bearer token on every request, and it keeps invariant 7 against a hostile or broken server:
//! every answer is read as it arrives and cut off past the most bytes the request can
//! mean (a server's claimed length never sizes a buffer), every wait is bounded
//! (`HttpTimeouts`: connecting, the response headers, each read, and a body that trickles),
//! and requests that only read are tried again a few times, with a pause, before the
//! error names the server and says what to do.

use super::HttpTimeouts;
use crate::error::{Error, Missing, Result};
use std::io::Read;
use std::time::{Duration, Instant};
use ureq::Agent;

/// A body that brings fewer bytes than this in an idle timeout is given up on, so a server
/// sending a byte at a time cannot hold a client forever.
pub const MIN_PROGRESS_BYTES: u64 = 16 * 1024;

/// Tries of a request that only reads, in all.
const READ_ATTEMPTS: u32 = 3;

/// The pause before the second try; it doubles for each further one.
const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(500);

/// Small objects (`config`, `keys/…`, `checkpoints/…`, `locks/…`), error messages and other
/// short answers are refused past this.
pub const MAX_SMALL_ANSWER_BYTES: u64 = 16 << 20;

/// How a client reaches a server: its URL, the token, a CA to trust besides the system's,
/// and how long to wait.
#[derive(Debug, Clone)]
pub struct Remote {
    /// `http(s)://host:port/...`, without a trailing slash.
    pub url: String,
    pub token: String,
    /// PEM certificates to trust (a self-signed server's own certificate, for example).
    pub ca_pem: Option<Vec<u8>>,
    pub timeouts: HttpTimeouts,
}

impl Remote {
    /// The server at `url` (a trailing slash dropped), reached with `token`.
    pub fn new(
        url: &str,
        token: String,
        ca_pem: Option<Vec<u8>>,
        timeouts: HttpTimeouts,
    ) -> Remote {
        Remote {
            url: url.trim_end_matches('/').to_owned(),
            token,
            ca_pem,
            timeouts,
        }
    }

    /// An HTTP agent for this remote: the extra CA trusted, error statuses returned as
    /// responses (they are turned into messages here), every wait bounded by `timeouts`.
    fn agent(&self) -> Result<Agent> {
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
        let idle = Some(self.timeouts.idle);
        let config = Agent::config_builder()
            .tls_config(tls.build())
            .http_status_as_error(false)
            .timeout_connect(Some(self.timeouts.connect))
            .timeout_send_request(idle)
            .timeout_recv_response(idle)
            .timeout_per_read(idle)
            .timeout_per_write(idle)
            .build();
        Ok(config.into())
    }

    /// `Authorization` header value.
    fn bearer(&self) -> String {
        format!("Bearer {}", self.token)
    }
}

/// What a request that only reads asks for; sending it again is always safe.
#[derive(Debug, Clone, Copy)]
pub enum Ask<'a> {
    Get,
    Head,
    /// `length` bytes from `offset` (`length` > 0).
    Range {
        offset: u64,
        length: u64,
    },
    /// A POST whose answer is read, not a write (`/ranges`, `/chunks`, `/blobs`).
    Post(&'a [u8]),
}

/// Why one try failed: worth another, or final.
enum Failure {
    Transient(Error),
    Final(Error),
}

/// The body of an answer as it arrives: refused past `max_bytes`, and given up on when fewer
/// than `MIN_PROGRESS_BYTES` arrive in an idle timeout. Remembers whether the network
/// failed (worth another try) rather than the server sending too much.
pub struct AnswerReader {
    inner: ureq::BodyReader<'static>,
    what: String,
    max_bytes: u64,
    read: u64,
    idle: Duration,
    window_start: Instant,
    window_bytes: u64,
    network_failed: bool,
}

impl AnswerReader {
    fn new(
        response: ureq::http::Response<ureq::Body>,
        what: &str,
        max_bytes: u64,
        idle: Duration,
    ) -> Self {
        AnswerReader {
            inner: response.into_body().into_reader(),
            what: what.to_owned(),
            max_bytes,
            read: 0,
            idle,
            window_start: Instant::now(),
            window_bytes: 0,
            network_failed: false,
        }
    }
}

impl Read for AnswerReader {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        // One byte past the limit is let through, to tell "exactly the limit" from "more".
        let room = (self.max_bytes - self.read.min(self.max_bytes)).saturating_add(1);
        let wanted = buffer
            .len()
            .min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buffer[..wanted]).map_err(|e| {
            self.network_failed = true;
            match ureq::Error::from(e) {
                ureq::Error::Timeout(_) => std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("timed out: the server sent nothing for {:?}", self.idle),
                ),
                other => other.into_io(),
            }
        })?;
        self.read += n as u64;
        if self.read > self.max_bytes {
            return Err(std::io::Error::other(format!(
                "the server sent more than the {} bytes this request can mean",
                self.max_bytes
            )));
        }
        self.window_bytes += n as u64;
        if self.window_bytes >= MIN_PROGRESS_BYTES || n == 0 {
            self.window_start = Instant::now();
            self.window_bytes = 0;
        } else if self.window_start.elapsed() > self.idle {
            self.network_failed = true;
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "{}: the server sends too slowly (fewer than {MIN_PROGRESS_BYTES} bytes in {:?})",
                    self.what, self.idle
                ),
            ));
        }
        Ok(n)
    }
}

/// A server's client: every request and every answer goes through here, bounded.
pub struct HttpClient {
    remote: Remote,
    agent: Agent,
}

impl HttpClient {
    pub fn new(remote: Remote) -> Result<Self> {
        let agent = remote.agent()?;
        Ok(HttpClient { remote, agent })
    }

    pub fn url(&self) -> &str {
        &self.remote.url
    }

    /// Sends `ask` to `url` once; the response, if its status is a success.
    fn send_once(
        &self,
        url: &str,
        ask: Ask<'_>,
    ) -> std::result::Result<ureq::http::Response<ureq::Body>, Failure> {
        let bearer = self.remote.bearer();
        let sent = match ask {
            Ask::Get => self.agent.get(url).header("Authorization", &bearer).call(),
            Ask::Head => self.agent.head(url).header("Authorization", &bearer).call(),
            Ask::Range { offset, length } => self
                .agent
                .get(url)
                .header("Authorization", &bearer)
                .header(
                    "Range",
                    &format!("bytes={}-{}", offset, offset + length - 1),
                )
                .call(),
            Ask::Post(body) => self
                .agent
                .post(url)
                .header("Authorization", &bearer)
                .send(body),
        };
        let response = match sent {
            Ok(response) => response,
            // A CA's certificate on the server: no retry mends it, the advice does.
            Err(e) if e.to_string().contains("CaUsedAsEndEntity") => {
                return Err(Failure::Final(Error::Network(format!(
                    "{url}: {e}: {}",
                    crate::net::pin::CA_AS_SERVER_ADVICE
                ))));
            }
            Err(ureq::Error::Timeout(phase)) => {
                return Err(Failure::Transient(Error::Network(format!(
                    "{url}: timed out waiting for the server ({phase})"
                ))));
            }
            Err(
                e
                @ (ureq::Error::Io(_) | ureq::Error::ConnectionFailed | ureq::Error::HostNotFound),
            ) => return Err(Failure::Transient(Error::Network(format!("{url}: {e}")))),
            Err(e) => return Err(Failure::Final(Error::Network(format!("{url}: {e}")))),
        };
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(response);
        }
        let error = status_error(url, status, response, self.remote.timeouts.idle);
        Err(match status {
            502..=504 => Failure::Transient(error),
            _ => Failure::Final(error),
        })
    }

    /// Tries `once` up to `READ_ATTEMPTS` times while it fails for a network reason,
    /// pausing between tries; the last error says how often and what to do.
    fn with_retries<T>(
        &self,
        mut once: impl FnMut() -> std::result::Result<T, Failure>,
    ) -> Result<T> {
        let mut pause = FIRST_RETRY_PAUSE;
        let mut attempt = 1;
        loop {
            match once() {
                Ok(value) => return Ok(value),
                Err(Failure::Final(e)) => return Err(e),
                Err(Failure::Transient(e)) if attempt < READ_ATTEMPTS => {
                    tracing::debug!("{e}; trying again in {pause:?}");
                    std::thread::sleep(pause);
                    pause *= 2;
                    attempt += 1;
                }
                Err(Failure::Transient(e)) => {
                    return Err(Error::Network(format!(
                        "{e} (tried {READ_ATTEMPTS} times, waiting up to {:?} for each answer): check that the server at {} is up and reachable, or wait longer with --http-timeout or CAIRN_HTTP_TIMEOUT",
                        self.remote.timeouts.idle, self.remote.url
                    )));
                }
            }
        }
    }

    /// Sends `ask` to `url` and hands its answer, at most `max_bytes`, to `read` as it
    /// arrives; the whole exchange is tried again when the network fails.
    pub fn read<T>(
        &self,
        url: &str,
        ask: Ask<'_>,
        max_bytes: u64,
        mut read: impl FnMut(&mut AnswerReader) -> Result<T>,
    ) -> Result<T> {
        self.with_retries(|| {
            let response = self.send_once(url, ask)?;
            let mut body = AnswerReader::new(response, url, max_bytes, self.remote.timeouts.idle);
            read(&mut body).map_err(|e| match body.network_failed {
                true => Failure::Transient(e),
                false => Failure::Final(e),
            })
        })
    }

    /// The whole answer to `ask`, at most `max_bytes`; the buffer grows as bytes arrive.
    pub fn read_bytes(&self, url: &str, ask: Ask<'_>, max_bytes: u64) -> Result<Vec<u8>> {
        self.read(url, ask, max_bytes, |body| read_all(url, body))
    }

    /// The answer to `ask` as a reader, at most `max_bytes`, for a stream too long to hold;
    /// only getting the response headers is tried again.
    pub fn open(&self, url: &str, ask: Ask<'_>, max_bytes: u64) -> Result<AnswerReader> {
        let response = self.with_retries(|| self.send_once(url, ask))?;
        Ok(AnswerReader::new(
            response,
            url,
            max_bytes,
            self.remote.timeouts.idle,
        ))
    }

    /// Sends a request that writes (`PUT` with `body`, or `DELETE`) once: a write is not
    /// tried again behind the caller's back.
    pub fn write(&self, url: &str, put: Option<&[u8]>) -> Result<()> {
        let bearer = self.remote.bearer();
        let sent = match put {
            Some(body) => self
                .agent
                .put(url)
                .header("Authorization", &bearer)
                .send(body),
            None => self
                .agent
                .delete(url)
                .header("Authorization", &bearer)
                .call(),
        };
        let response = sent.map_err(|e| Error::Network(format!("{url}: {e}")))?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        Err(status_error(
            url,
            status,
            response,
            self.remote.timeouts.idle,
        ))
    }
}

/// Reads all of `body` into a buffer that grows as bytes arrive.
fn read_all(what: &str, body: &mut AnswerReader) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    body.read_to_end(&mut out)
        .map_err(|e| Error::Network(format!("{what}: {e}")))?;
    Ok(out)
}

/// An error status as a clear error naming `what`, with the server's message (its first
/// 64 KiB, as much as arrives in time).
fn status_error(
    what: &str,
    status: u16,
    response: ureq::http::Response<ureq::Body>,
    idle: Duration,
) -> Error {
    let mut message = Vec::new();
    let _ = AnswerReader::new(response, what, 64 * 1024, idle).read_to_end(&mut message);
    let message = String::from_utf8_lossy(&message);
    let detail = message.trim();
    match status {
        401 => Error::InvalidInput(format!(
            "{what}: the server refused the token (401): pass the server's token with --token-file FILE or CAIRN_TOKEN"
        )),
        404 => Error::not_found(
            Missing::OnServer {
                asked: what.to_owned(),
            },
            format!("{what}: not found on the server"),
        ),
        403 | 409 => Error::InvalidInput(format!(
            "{what}: refused by the server ({status}): {detail}"
        )),
        _ => Error::Network(format!("{what}: the server answered {status}: {detail}")),
    }
}
