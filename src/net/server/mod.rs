//! `cairn serve`: a repository (`objects`) and live source directories (`source`) over
//! HTTP(S), so backups, restores, mounts and syncs reach them from other machines. This file
//! holds what both share: the options, the token check, the connection cap and the runtime. The server holds no key: it stores and returns objects exactly as
//! the clients' repository code encodes them, so an encrypted repository stays opaque to it.
//!
//! Every request needs the bearer token. `--append-only` never deletes or overwrites an
//! object (lock objects excepted, which clients must be able to remove): a new object is
//! created without replacing (`Backend::put_new`), so racing uploads create it once;
//! `--read-only` refuses every write. Object names are checked against the repository
//! layout, so no request reaches outside the repository directory.
//!
//! Clients that are not (yet) authenticated cannot hold the server (invariant 7): a client
//! has `client_timeout` to finish its TLS handshake and to send each request's headers, an
//! idle kept-alive connection is closed after the same time, and at most `max_connections`
//! are open at once (`ConnectionSlots`); connections past the cap wait in the kernel's
//! backlog, holding no descriptor, until one closes.
//!
//! Routes, below `/repo`:
//! - `GET|HEAD /objects/NAME` (with `Range: bytes=A-B` for part of it), `PUT`, `DELETE`;
//! - `GET /list/PREFIX`: JSON `[{name, size}]`;
//! - `POST /ranges`: JSON `[{name, offset, length}]` in, the ranges' bytes one after another
//!   out: many blobs in one round trip.
//!
//! And below `/source/NAME`, read-only (see `net::wire`): `GET /list?path=HEX`,
//! `GET /stat?path=HEX` (the entry of the path itself), `GET /tree?path=HEX&lean=BOOL` (every
//! directory below, streamed),
//! `POST /chunks`, `POST /blobs`. Paths are checked component by component: valid names only,
//! and no symlink on the way, so nothing outside the served directory is reachable.

mod objects;
pub mod self_signed;
mod source;

pub(crate) use objects::parse_range;
pub use source::valid_source_name;

use crate::error::{Error, ErrorKind, Missing};
use crate::repo::backend::Backend;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What a server may do to the repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadWrite,
    /// Adds objects; never deletes or overwrites one, except locks.
    AppendOnly,
    ReadOnly,
}

/// A live directory served read-only as `/source/NAME`.
#[derive(Debug, Clone)]
pub struct SourceDir {
    pub name: String,
    pub dir: PathBuf,
}

/// The PEM files of an HTTPS server.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert_chain: PathBuf,
    pub key: PathBuf,
}

/// How to serve.
pub struct ServeOptions {
    /// The repository's store (a directory or an object store), if one is served.
    pub repo: Option<Arc<dyn Backend>>,
    /// Live source directories by name, served read-only.
    pub sources: Vec<SourceDir>,
    pub access: Access,
    pub token: String,
    /// HTTPS with these; plain HTTP without them.
    pub tls: Option<TlsFiles>,
    /// How long a client may take over its TLS handshake or a request's headers, and how
    /// long an idle connection is kept.
    pub client_timeout: Duration,
    /// Connections open at once, at most.
    pub max_connections: usize,
}

/// The most connections served at once by default, whatever the descriptor limit.
const MAX_CONNECTIONS_CEILING: usize = 1024;

/// The default of `ServeOptions::max_connections`: half the open-file limit (the rest is
/// for the files requests open), between 16 and `MAX_CONNECTIONS_CEILING`.
pub fn default_max_connections() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into `limit`, which lives across the call.
    let known = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    let descriptors = if known {
        usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
    } else {
        MAX_CONNECTIONS_CEILING
    };
    (descriptors / 2).clamp(16, MAX_CONNECTIONS_CEILING)
}

pub(super) struct ServerState {
    pub(super) backend: Option<Arc<dyn Backend>>,
    sources: HashMap<String, PathBuf>,
    access: Access,
    token: String,
}

impl ServerState {
    pub(super) fn backend(&self) -> crate::error::Result<&dyn Backend> {
        self.backend.as_deref().ok_or_else(|| {
            Error::not_found(
                Missing::OnServer {
                    asked: "/repo".into(),
                },
                "this server serves no repository",
            )
        })
    }
}

pub(super) type Shared = Arc<ServerState>;

pub(super) fn error_response(e: &Error) -> Response {
    let status = match e.kind() {
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::InvalidInput => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, e.to_string()).into_response()
}

/// Runs blocking repository work off the async threads.
pub(super) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> crate::error::Result<T> + Send + 'static,
) -> Result<T, Response> {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(error_response(&e)),
        Err(e) => Err((StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()),
    }
}

/// Compares two byte strings in time independent of where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_token(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(token) if same_secret(token.as_bytes(), state.token.as_bytes()) => {
            next.run(request).await
        }
        _ => (StatusCode::UNAUTHORIZED, "a valid bearer token is required").into_response(),
    }
}

/// The routes, behind the token check.
fn router(state: Shared) -> Router {
    Router::new()
        .nest("/repo", objects::routes())
        .nest("/source/{name}", source::routes())
        .layer(axum::extract::DefaultBodyLimit::max(64 << 20))
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state)
}

/// Serves until the process is stopped. `listener` is bound already (so a caller that asked
/// for port 0 knows the port); `ready` is called with the address once it accepts.
pub fn run(
    listener: std::net::TcpListener,
    options: ServeOptions,
    ready: impl FnOnce(SocketAddr),
) -> crate::error::Result<()> {
    if let Some(repo) = &options.repo {
        crate::repo::Repository::read_config(repo.as_ref())?;
    }
    let mut sources = HashMap::new();
    for SourceDir { name, dir } in options.sources {
        if !valid_source_name(&name) {
            return Err(Error::InvalidInput(format!(
                "source name {name:?}: use letters, digits, - and _"
            )));
        }
        if !dir.is_dir() {
            return Err(Error::InvalidInput(format!(
                "source {name}: {} is not a directory",
                dir.display()
            )));
        }
        sources.insert(name, dir);
    }
    let state = Arc::new(ServerState {
        backend: options.repo,
        sources,
        access: options.access,
        token: options.token,
    });
    let app = router(state);
    let address = listener
        .local_addr()
        .map_err(|e| Error::io("reading the listening address", e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::io("preparing the listener", e))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the server's runtime", e))?;
    let client_timeout = options.client_timeout;
    let slots = Arc::new(Semaphore::new(options.max_connections.max(1)));
    runtime.block_on(async move {
        let connections = ConnectionSlots {
            router: app,
            slots,
            acquiring: None,
            acquired: None,
        };
        match &options.tls {
            Some(TlsFiles {
                cert_chain: cert,
                key,
            }) => {
                let config = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                    .await
                    .map_err(|e| {
                        Error::io(
                            format!(
                                "loading TLS certificate {} and key {}",
                                cert.display(),
                                key.display()
                            ),
                            e,
                        )
                    })?;
                let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(config)
                    .handshake_timeout(client_timeout);
                let server = axum_server::from_tcp(listener)
                    .map_err(|e| Error::io("starting the TLS server", e))?
                    .acceptor(acceptor);
                ready(address);
                with_client_timeout(server, client_timeout)
                    .serve(connections)
                    .await
                    .map_err(|e| Error::io("serving", e))
            }
            None => {
                let server = axum_server::from_tcp(listener)
                    .map_err(|e| Error::io("starting the server", e))?;
                ready(address);
                with_client_timeout(server, client_timeout)
                    .serve(connections)
                    .await
                    .map_err(|e| Error::io("serving", e))
            }
        }
    })
}

/// HTTP/1 only (what cairn's clients speak), with `timeout` to send a request's headers;
/// hyper's header timer also runs while a kept-alive connection waits for its next request,
/// so it closes idle connections too.
fn with_client_timeout<Acceptor>(
    mut server: axum_server::Server<SocketAddr, Acceptor>,
    timeout: Duration,
) -> axum_server::Server<SocketAddr, Acceptor> {
    server
        .http_builder()
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(timeout);
    server.http1_only()
}

/// Makes the service of each new connection, but only while a slot is free: the server
/// accepts the next connection only once `poll_ready` is ready, so past the cap new
/// connections wait in the kernel's backlog. The slot goes with the connection's service
/// and is freed when the connection closes.
struct ConnectionSlots {
    router: Router,
    slots: Arc<Semaphore>,
    acquiring: Option<std::pin::Pin<Box<dyn Future<Output = OwnedSemaphorePermit> + Send>>>,
    acquired: Option<OwnedSemaphorePermit>,
}

impl tower_service::Service<SocketAddr> for ConnectionSlots {
    type Response = SlottedRouter;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<SlottedRouter, std::convert::Infallible>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.acquired.is_none() {
            let slots = self.slots.clone();
            let acquiring = self.acquiring.get_or_insert_with(|| {
                Box::pin(async move {
                    slots
                        .acquire_owned()
                        .await
                        .expect("the connection semaphore is never closed")
                })
            });
            let slot = std::task::ready!(acquiring.as_mut().poll(context));
            self.acquiring = None;
            self.acquired = Some(slot);
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: SocketAddr) -> Self::Future {
        let slot = self.acquired.take().expect("poll_ready comes before call");
        std::future::ready(Ok(SlottedRouter {
            router: self.router.clone(),
            _slot: Arc::new(slot),
        }))
    }
}

/// The routes for one connection, holding its slot.
#[derive(Clone)]
struct SlottedRouter {
    router: Router,
    _slot: Arc<OwnedSemaphorePermit>,
}

impl<B> tower_service::Service<axum::http::Request<B>> for SlottedRouter
where
    Router: tower_service::Service<axum::http::Request<B>>,
{
    type Response = <Router as tower_service::Service<axum::http::Request<B>>>::Response;
    type Error = <Router as tower_service::Service<axum::http::Request<B>>>::Error;
    type Future = <Router as tower_service::Service<axum::http::Request<B>>>::Future;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower_service::Service::<axum::http::Request<B>>::poll_ready(&mut self.router, context)
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        self.router.call(request)
    }
}
