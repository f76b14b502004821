//! `cairn serve`: a repository over HTTP(S), so backups, restores, mounts and syncs reach it
//! from other machines. The server holds no key: it stores and returns objects exactly as
//! the clients' repository code encodes them, so an encrypted repository stays opaque to it.
//!
//! Every request needs the bearer token. `--append-only` never deletes or overwrites an
//! object (lock objects excepted, which clients must be able to remove); `--read-only`
//! refuses every write. Object names are checked against the repository layout, so no
//! request reaches outside the repository directory.
//!
//! Routes, below `/repo`:
//! - `GET|HEAD /objects/NAME` (with `Range: bytes=A-B` for part of it), `PUT`, `DELETE`;
//! - `GET /list/PREFIX`: JSON `[{name, size}]`;
//! - `POST /ranges`: JSON `[{name, offset, length}]` in, the ranges' bytes one after another
//!   out: many blobs in one round trip.

use crate::error::{Error, ErrorKind};
use crate::repo::backend::{Backend, LocalBackend, RangeRequest};
use crate::repo::http::ListedObject;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::net::SocketAddr;
use std::sync::Arc;

/// What a server may do to the repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadWrite,
    /// Adds objects; never deletes or overwrites one, except locks.
    AppendOnly,
    ReadOnly,
}

/// How to serve.
pub struct ServeOptions {
    pub repo: std::path::PathBuf,
    pub access: Access,
    pub token: String,
    /// PEM certificate chain and private key; plain HTTP without them.
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

struct ServerState {
    backend: LocalBackend,
    access: Access,
    token: String,
}

type Shared = Arc<ServerState>;

/// Whether `name` is an object name of the repository layout: `config`, or a known top-level
/// directory followed by plain components (no `.`, `..` or empty parts, hex and a few safe
/// characters only).
fn valid_object_name(name: &str) -> bool {
    if name == "config" {
        return true;
    }
    let mut parts = name.split('/');
    let top_ok = matches!(
        parts.next(),
        Some("keys" | "data" | "index" | "checkpoints" | "locks")
    );
    let rest: Vec<&str> = parts.collect();
    top_ok
        && !rest.is_empty()
        && rest.iter().all(|part| {
            !part.is_empty()
                && !part.starts_with('.')
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// A prefix for `list`: empty, `config`, or a layout directory with a trailing slash.
fn valid_prefix(prefix: &str) -> bool {
    prefix.is_empty()
        || valid_object_name(prefix)
        || valid_object_name(&format!("{prefix}x"))
        || matches!(
            prefix,
            "keys/" | "data/" | "index/" | "checkpoints/" | "locks/"
        )
}

fn error_response(e: &Error) -> Response {
    let status = match e.kind() {
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::InvalidInput => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, e.to_string()).into_response()
}

/// Runs blocking repository work off the async threads.
async fn blocking<T: Send + 'static>(
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

fn bad_name(name: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        format!("{name:?} is not an object of a cairn repository"),
    )
        .into_response()
}

/// `bytes=A-B` as (offset, length).
fn parse_range(value: &str) -> Option<(u64, u64)> {
    let (start, end) = value.strip_prefix("bytes=")?.split_once('-')?;
    let (start, end): (u64, u64) = (start.parse().ok()?, end.parse().ok()?);
    (end >= start).then(|| (start, end - start + 1))
}

async fn get_object(
    State(state): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !valid_object_name(&name) {
        return bad_name(&name);
    }
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|v| parse_range(v).ok_or(v.to_owned()));
    let result = match range {
        Some(Err(v)) => {
            return (StatusCode::BAD_REQUEST, format!("unreadable range {v:?}")).into_response();
        }
        Some(Ok((offset, length))) => {
            let partial = blocking(move || state.backend.get_range(&name, offset, length)).await;
            partial.map(|bytes| (StatusCode::PARTIAL_CONTENT, bytes))
        }
        None => blocking(move || state.backend.get(&name))
            .await
            .map(|bytes| (StatusCode::OK, bytes)),
    };
    match result {
        Ok(found) => found.into_response(),
        Err(response) => response,
    }
}

async fn put_object(
    State(state): State<Shared>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    if !valid_object_name(&name) {
        return bad_name(&name);
    }
    if state.access == Access::ReadOnly {
        return (StatusCode::FORBIDDEN, "this server is read-only").into_response();
    }
    let result = blocking(move || {
        if state.access == Access::AppendOnly
            && !name.starts_with("locks/")
            && state.backend.exists(&name)?
        {
            return Ok(false);
        }
        state.backend.put(&name, &body)?;
        Ok(true)
    })
    .await;
    match result {
        Ok(true) => StatusCode::CREATED.into_response(),
        Ok(false) => (
            StatusCode::CONFLICT,
            "this server is append-only: an existing object is never overwritten",
        )
            .into_response(),
        Err(response) => response,
    }
}

async fn delete_object(State(state): State<Shared>, Path(name): Path<String>) -> Response {
    if !valid_object_name(&name) {
        return bad_name(&name);
    }
    let allowed = match state.access {
        Access::ReadWrite => true,
        Access::AppendOnly => name.starts_with("locks/"),
        Access::ReadOnly => false,
    };
    if !allowed {
        return (
            StatusCode::FORBIDDEN,
            "this server does not delete objects (read-only or append-only)",
        )
            .into_response();
    }
    match blocking(move || state.backend.delete(&name)).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(response) => response,
    }
}

async fn list_objects(State(state): State<Shared>, prefix: Option<Path<String>>) -> Response {
    let prefix = prefix.map(|Path(p)| p).unwrap_or_default();
    if !valid_prefix(&prefix) {
        return bad_name(&prefix);
    }
    let listed = blocking(move || state.backend.list(&prefix)).await;
    match listed {
        Ok(objects) => {
            let objects: Vec<ListedObject> = objects
                .into_iter()
                .map(|o| ListedObject {
                    name: o.name,
                    size: o.size,
                })
                .collect();
            axum::Json(objects).into_response()
        }
        Err(response) => response,
    }
}

async fn get_ranges(State(state): State<Shared>, body: Bytes) -> Response {
    let ranges: Vec<RangeRequest> = match serde_json::from_slice(&body) {
        Ok(ranges) => ranges,
        Err(e) => {
            return (StatusCode::BAD_REQUEST, format!("unreadable ranges: {e}")).into_response();
        }
    };
    if let Some(bad) = ranges.iter().find(|r| !valid_object_name(&r.name)) {
        return bad_name(&bad.name);
    }
    match blocking(move || state.backend.get_ranges(&ranges)).await {
        Ok(parts) => parts.concat().into_response(),
        Err(response) => response,
    }
}

/// The routes, behind the token check.
fn router(state: Shared) -> Router {
    let repo = Router::new()
        .route(
            "/objects/{*name}",
            get(get_object).put(put_object).delete(delete_object),
        )
        .route("/list/", get(list_objects))
        .route("/list/{*prefix}", get(list_objects))
        .route("/ranges", post(get_ranges));
    Router::new()
        .nest("/repo", repo)
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
    crate::repo::Repository::read_config(&LocalBackend::new(&options.repo))?;
    let state = Arc::new(ServerState {
        backend: LocalBackend::new(&options.repo),
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
    runtime.block_on(async move {
        let service = app.into_make_service();
        match &options.tls {
            Some((cert, key)) => {
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
                let server = axum_server::from_tcp_rustls(listener, config)
                    .map_err(|e| Error::io("starting the TLS server", e))?;
                ready(address);
                server
                    .serve(service)
                    .await
                    .map_err(|e| Error::io("serving", e))
            }
            None => {
                let server = axum_server::from_tcp(listener)
                    .map_err(|e| Error::io("starting the server", e))?;
                ready(address);
                server
                    .serve(service)
                    .await
                    .map_err(|e| Error::io("serving", e))
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_repository_objects_are_reachable() {
        for good in [
            "config",
            "keys/ab12",
            "data/ab/ab12cd",
            "index/ff",
            "locks/x-1",
        ] {
            assert!(valid_object_name(good), "{good}");
        }
        for bad in [
            "",
            "..",
            "../etc/passwd",
            "data/../config",
            "data//x",
            "data/.hidden",
            "/config",
            "other/x",
            "keys",
            "data/a b",
            "data/%2e%2e",
        ] {
            assert!(!valid_object_name(bad), "{bad}");
        }
        assert!(valid_prefix("data/") && valid_prefix("") && !valid_prefix("../"));
        assert_eq!(parse_range("bytes=10-19"), Some((10, 10)));
        assert_eq!(parse_range("bytes=19-10"), None);
    }
}
