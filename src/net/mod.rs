//! cairn's network protocol, both sides: the client (`client`, every request a client makes
//! goes through it; the `client` feature), what crosses (`wire`), and `cairn serve`
//! (`server`: a repository's objects and live source directories; the `server` feature), with
//! how long a client waits (`HttpTimeouts`, which the S3 store shares), and certificate
//! pinning (`pin`). A served repository
//! is used as a `Backend` (`repo::http`); a served source as a tree source (`source::remote`)
//! and a backup's source (`backup::remote`).

#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "tls")]
pub mod pin;
#[cfg(feature = "server")]
pub mod server;
pub mod wire;

use std::time::Duration;

/// How long a client waits for a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpTimeouts {
    /// To connect (TCP and TLS).
    pub connect: Duration,
    /// For the response headers, for each read of a body, and for a body to move on by
    /// `client::MIN_PROGRESS_BYTES`.
    pub idle: Duration,
}

impl HttpTimeouts {
    /// The same wait for every step (`--http-timeout`).
    pub fn all(wait: Duration) -> Self {
        HttpTimeouts {
            connect: wait,
            idle: wait,
        }
    }
}

impl Default for HttpTimeouts {
    fn default() -> Self {
        HttpTimeouts {
            connect: Duration::from_secs(30),
            idle: Duration::from_secs(60),
        }
    }
}
