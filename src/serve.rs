//! `cairn serve`: a repository and live source directories over HTTP(S), so backups,
//! restores, mounts and syncs reach them from other machines. The server holds no key: it stores and returns objects exactly as
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
//! And below `/source/NAME`, read-only (see `sync::wire`): `GET /list?path=HEX`,
//! `GET /stat?path=HEX` (the entry of the path itself), `GET /tree?path=HEX&lean=BOOL` (every
//! directory below, streamed),
//! `POST /chunks`, `POST /blobs`. Paths are checked component by component: valid names only,
//! and no symlink on the way, so nothing outside the served directory is reachable.

use crate::error::{Error, ErrorKind};
use crate::repo::backend::{Backend, PutNew, RangeRequest};
use crate::repo::http::ListedObject;
use crate::repo::objects::{self, ObjectKind};
use crate::sync::wire::{
    BlobsRequest, ChunkSpec, ChunksRequest, ChunksResponse, MAX_BLOBS_BYTES, SourceAbout,
    TreeRecord, lean_entry,
};
use crate::tree::ChunkRef;
use crate::tree::Entry;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
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

/// How to serve.
pub struct ServeOptions {
    /// The repository's store (a directory or an object store), if one is served.
    pub repo: Option<Arc<dyn Backend>>,
    /// Live source directories by name, served read-only.
    pub sources: Vec<(String, std::path::PathBuf)>,
    pub access: Access,
    pub token: String,
    /// PEM certificate chain and private key; plain HTTP without them.
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
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

struct ServerState {
    backend: Option<Arc<dyn Backend>>,
    sources: HashMap<String, PathBuf>,
    access: Access,
    token: String,
}

impl ServerState {
    fn backend(&self) -> crate::error::Result<&dyn Backend> {
        self.backend
            .as_deref()
            .ok_or_else(|| Error::NotFound("this server serves no repository".into()))
    }
}

type Shared = Arc<ServerState>;

/// Whether `name` is an object name of the repository layout: `config`, or a known top-level
/// directory followed by plain components (no `.`, `..` or empty parts, hex and a few safe
/// characters only).
pub(crate) fn valid_object_name(name: &str) -> bool {
    if name == objects::CONFIG {
        return true;
    }
    let mut parts = name.split('/');
    let top_ok = parts.next().and_then(ObjectKind::from_dir).is_some();
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
        || ObjectKind::ALL.iter().any(|kind| kind.prefix() == prefix)
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
pub(crate) fn parse_range(value: &str) -> Option<(u64, u64)> {
    let (start, end) = value.strip_prefix("bytes=")?.split_once('-')?;
    let (start, end): (u64, u64) = (start.parse().ok()?, end.parse().ok()?);
    let length = end.checked_sub(start)?.checked_add(1)?;
    Some((start, length))
}

/// Refuses ranges a client cannot mean: past the end of their object, or more than
/// `MAX_BLOBS_BYTES` in all (the server allocates what is asked for).
fn check_ranges(backend: &dyn Backend, ranges: &[RangeRequest]) -> crate::error::Result<()> {
    let total = ranges
        .iter()
        .try_fold(0u64, |sum, r| sum.checked_add(r.length))
        .filter(|total| *total <= MAX_BLOBS_BYTES);
    if total.is_none() {
        return Err(Error::InvalidInput(format!(
            "more than {MAX_BLOBS_BYTES} bytes asked in one request"
        )));
    }
    // Ranges of one request mostly share a pack: its size is asked once (a request to
    // the store when it is an object store).
    let mut sizes = HashMap::new();
    for range in ranges {
        let size = match sizes.get(&range.name) {
            Some(&size) => size,
            None => *sizes
                .entry(range.name.clone())
                .or_insert(backend.size(&range.name)?),
        };
        if range
            .offset
            .checked_add(range.length)
            .is_none_or(|end| end > size)
        {
            return Err(Error::InvalidInput(format!(
                "{} holds {size} bytes: {} at {} is past its end",
                range.name, range.length, range.offset
            )));
        }
    }
    Ok(())
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
            let partial = blocking(move || {
                let backend = state.backend()?;
                let range = RangeRequest {
                    name: name.clone(),
                    offset,
                    length,
                };
                check_ranges(backend, std::slice::from_ref(&range))?;
                backend.get_range(&name, offset, length)
            })
            .await;
            partial.map(|bytes| (StatusCode::PARTIAL_CONTENT, bytes))
        }
        None => blocking(move || state.backend()?.get(&name))
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
        let backend = state.backend()?;
        if state.access == Access::AppendOnly && ObjectKind::of(&name) != Some(ObjectKind::Lock) {
            // An identical object is a retried upload (a run killed before its index file,
            // say): accepted, since nothing changes.
            return Ok(backend.put_new(&name, &body)? != PutNew::Different);
        }
        backend.put(&name, &body)?;
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
        Access::AppendOnly => ObjectKind::of(&name) == Some(ObjectKind::Lock),
        Access::ReadOnly => false,
    };
    if !allowed {
        return (
            StatusCode::FORBIDDEN,
            "this server does not delete objects (read-only or append-only)",
        )
            .into_response();
    }
    match blocking(move || state.backend()?.delete(&name)).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(response) => response,
    }
}

async fn list_objects(State(state): State<Shared>, prefix: Option<Path<String>>) -> Response {
    let prefix = prefix.map(|Path(p)| p).unwrap_or_default();
    if !valid_prefix(&prefix) {
        return bad_name(&prefix);
    }
    let listed = blocking(move || state.backend()?.list(&prefix)).await;
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
    let read = blocking(move || {
        let backend = state.backend()?;
        check_ranges(backend, &ranges)?;
        backend.get_ranges(&ranges)
    });
    match read.await {
        Ok(parts) => parts.concat().into_response(),
        Err(response) => response,
    }
}

/// Whether `name` can name a served source: letters, digits, `-` and `_`.
pub fn valid_source_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `rel` (components joined by `/`, empty for the root) as shown in messages.
fn shown(rel: &[u8]) -> String {
    format!("source path {:?}", String::from_utf8_lossy(rel))
}

/// Opens `rel` below the source `root` with `flags`. Every component must be a valid name, and
/// the kernel resolves the path beneath `root` with no symlink anywhere on the way
/// (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`), so a directory swapped for a
/// symlink while the server works cannot lead outside the source.
fn open_beneath(root: &std::path::Path, rel: &[u8], flags: i32) -> crate::error::Result<fs::File> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let valid = rel.is_empty() || rel.split(|&b| b == b'/').all(crate::tree::is_valid_name);
    if !valid {
        return Err(Error::InvalidInput(format!(
            "{} is not below the source",
            shown(rel)
        )));
    }
    let root_dir = fs::File::open(root)
        .map_err(|e| Error::io(format!("opening source {}", root.display()), e))?;
    let path = std::ffi::CString::new(if rel.is_empty() { &b"."[..] } else { rel })
        .map_err(|_| Error::InvalidInput(format!("{} holds a NUL byte", shown(rel))))?;
    /// The kernel's `struct open_how` (three u64s; libc's is not constructible).
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS,
    };
    // SAFETY: the path is NUL-terminated, `how` lives across the call and its size is given.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root_dir.as_raw_fd(),
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            // A symlink on the way (ELOOP, EXDEV), or where a directory or file was asked for.
            Some(libc::ELOOP | libc::EXDEV | libc::ENOTDIR) => Error::InvalidInput(format!(
                "{} is not a plain path below the source (a symlink or not a directory on the way): not served",
                shown(rel)
            )),
            _ => Error::io(format!("opening {}", shown(rel)), e),
        });
    }
    // SAFETY: openat2 returned a new descriptor that nothing else owns.
    Ok(unsafe { fs::File::from_raw_fd(fd as i32) })
}

/// Opens a regular file of the source.
fn open_source_file(root: &std::path::Path, rel: &[u8]) -> crate::error::Result<fs::File> {
    let file = open_beneath(root, rel, libc::O_RDONLY | libc::O_NOFOLLOW)?;
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return Err(Error::InvalidInput(format!(
            "{} is not a regular file",
            shown(rel)
        )));
    }
    Ok(file)
}

/// A path that reaches into the open directory `dir` through /proc, for the calls that need a
/// path (listing, readlink, xattrs) without resolving the source path again.
fn fd_path(dir: &fs::File) -> PathBuf {
    use std::os::fd::AsRawFd;
    PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()))
}

/// The source directory `rel` of `root` as postcard-encoded tree entries, sorted by name, in
/// one zstd frame.
fn list_source_dir(root: &std::path::Path, rel: &[u8]) -> crate::error::Result<Vec<u8>> {
    // Listings repeat owners, modes and similar names: compressed, they cross in a fraction.
    let encoded = postcard::to_stdvec(&source_entries(root, rel)?).expect("entries serialize");
    zstd::bulk::compress(&encoded, 3).map_err(|e| Error::io("compressing a listing", e))
}

/// The entries of source directory `rel`, sorted by name.
fn source_entries(root: &std::path::Path, rel: &[u8]) -> crate::error::Result<Vec<Entry>> {
    let dir = open_beneath(
        root,
        rel,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
    )?;
    let path = fd_path(&dir);
    let mut entries = Vec::new();
    for child in fs::read_dir(&path).map_err(|e| Error::io(format!("listing {}", shown(rel)), e))? {
        let entry = child.and_then(|child| crate::fsmeta::local_entry(&child));
        match entry {
            Ok(Some(entry)) => entries.push(entry),
            Ok(None) => {}
            // Gone or unreadable: left out here, as a backup leaves it out.
            Err(e) => tracing::warn!("{}: {e}", shown(rel)),
        }
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}

/// Writes the records of a `tree` answer for `rel` and everything below it (see
/// `TreeRecord`); stops at the first write that fails (the client went away).
fn write_source_tree(
    root: &std::path::Path,
    rel: &[u8],
    lean: bool,
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    // Directories still to list, the next on top: each directory's record, then its
    // subdirectories' in name order, with an explicit stack (the source decides the depth).
    let mut to_list = vec![rel.to_vec()];
    while let Some(dir) = to_list.pop() {
        let entries = source_entries(root, &dir).map_err(|e| e.to_string());
        let entries = match entries {
            Ok(entries) if lean => Ok(entries.into_iter().map(lean_entry).collect()),
            other => other,
        };
        if let Ok(entries) = &entries {
            let subdirs = entries.iter().filter(|e| e.is_dir()).rev();
            to_list.extend(subdirs.map(|e| crate::sync::remote::child_path(&dir, &e.name)));
        }
        let record = TreeRecord {
            path: serde_bytes::ByteBuf::from(dir),
            entries,
        };
        let encoded = postcard::to_stdvec(&record).expect("records serialize");
        out.write_all(&(encoded.len() as u32).to_le_bytes())?;
        out.write_all(&encoded)?;
    }
    Ok(())
}

/// Bytes of a streamed answer handed to the server at a time.
const STREAM_PIECE_BYTES: usize = 64 * 1024;

/// A writer that hands what it gets to an answer being streamed, in pieces.
struct StreamWriter {
    pieces: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    buffer: Vec<u8>,
}

impl StreamWriter {
    fn send(&mut self) -> std::io::Result<()> {
        let piece = Bytes::from(std::mem::take(&mut self.buffer));
        self.pieces
            .blocking_send(Ok(piece))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client left"))
    }
}

impl std::io::Write for StreamWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= STREAM_PIECE_BYTES {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        self.send()
    }
}

/// The entry of `rel` itself (its metadata; the source's root for an empty path),
/// postcard-encoded.
fn stat_source_path(root: &std::path::Path, rel: &[u8]) -> crate::error::Result<Vec<u8>> {
    let entry = match rel.iter().rposition(|&b| b == b'/') {
        _ if rel.is_empty() => crate::fsmeta::path_entry(root, Vec::new()),
        split => {
            let (parent, name) = match split {
                Some(at) => (&rel[..at], &rel[at + 1..]),
                None => (&b""[..], rel),
            };
            let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
            let dir = open_beneath(root, parent, flags)?;
            if !crate::tree::is_valid_name(name) {
                return Err(Error::InvalidInput(format!(
                    "{} is not below the source",
                    shown(rel)
                )));
            }
            crate::fsmeta::path_entry(&fd_path(&dir).join(OsStr::from_bytes(name)), name.to_vec())
        }
    };
    let entry = entry.map_err(|e| Error::io(format!("reading {}", shown(rel)), e))?;
    Ok(postcard::to_stdvec(&entry).expect("entries serialize"))
}

/// The chunk list of one source file, chunked and named as `spec` says.
fn chunk_source_file(
    root: &std::path::Path,
    spec: &ChunkSpec,
    chunker: &crate::chunker::Chunker,
    rel: &[u8],
    buffer: &mut Vec<u8>,
) -> crate::error::Result<Vec<ChunkRef>> {
    let file = open_source_file(root, rel)?;
    let mut chunks = Vec::new();
    chunker
        .for_each_chunk(&file, buffer, |chunk| {
            chunks.push(ChunkRef {
                id: spec.id_of(chunk),
                length: chunk.len() as u32,
            });
            Ok::<(), std::io::Error>(())
        })
        .map_err(|e| Error::io(format!("reading {}", shown(rel)), e))?;
    Ok(chunks)
}

/// The chunk lists of the requested files; a file that cannot be read gets its error.
fn chunk_source_files(
    root: &std::path::Path,
    request: &ChunksRequest,
) -> crate::error::Result<Vec<u8>> {
    let chunker = request.spec.chunker()?;
    let mut buffer = Vec::new();
    let files = request
        .paths
        .iter()
        .map(|rel| {
            chunk_source_file(root, &request.spec, &chunker, rel, &mut buffer)
                .map_err(|e| e.to_string())
        })
        .collect();
    Ok(postcard::to_stdvec(&ChunksResponse { files }).expect("chunk lists serialize"))
}

/// The requested ranges of source files, one after another in one zstd frame.
fn read_source_blobs(
    root: &std::path::Path,
    request: &BlobsRequest,
) -> crate::error::Result<Vec<u8>> {
    use std::io::{Read, Seek};
    let asked = request.bytes();
    if asked > MAX_BLOBS_BYTES {
        return Err(Error::InvalidInput(format!(
            "{asked} bytes asked in one request; the limit is {MAX_BLOBS_BYTES}"
        )));
    }
    let mut data = Vec::with_capacity(asked as usize);
    for file_ranges in &request.files {
        let mut file = open_source_file(root, &file_ranges.path)?;
        for &(offset, length) in &file_ranges.ranges {
            let reading = || format!("reading {} at {offset}", shown(&file_ranges.path));
            file.seek(std::io::SeekFrom::Start(offset))
                .map_err(|e| Error::io(reading(), e))?;
            // Read into the spare capacity: no zeroing of what is about to be overwritten.
            let read = (&mut file)
                .take(u64::from(length))
                .read_to_end(&mut data)
                .map_err(|e| Error::io(reading(), e))?;
            if read != length as usize {
                return Err(Error::io(
                    reading(),
                    std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
                ));
            }
        }
    }
    // The fastest level: it still makes source code about 5 times smaller, and at several
    // hundred MB/s per core it rarely holds back even a fast link.
    zstd::bulk::compress(&data, 1).map_err(|e| Error::io("compressing chunks", e))
}

#[derive(Debug, serde::Deserialize)]
struct ListQuery {
    /// The directory's path below the source, hex-encoded (names are bytes).
    #[serde(default)]
    path: String,
}

/// The answer to a request for a source this server does not serve.
fn no_such_source(name: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        format!("this server serves no source {name:?}"),
    )
        .into_response()
}

/// Runs `work` on the root directory of source `name` off the async threads and answers
/// with the bytes it makes; 404 for a source this server does not serve.
async fn on_source(
    state: Shared,
    name: String,
    work: impl FnOnce(PathBuf) -> crate::error::Result<Vec<u8>> + Send + 'static,
) -> Response {
    let Some(root) = state.sources.get(&name).cloned() else {
        return no_such_source(&name);
    };
    match blocking(move || work(root)).await {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response(),
        Err(response) => response,
    }
}

fn bad_request(what: &str) -> Response {
    (StatusCode::BAD_REQUEST, what.to_owned()).into_response()
}

async fn list_source(
    State(state): State<Shared>,
    Path(name): Path<String>,
    Query(query): Query<ListQuery>,
) -> Response {
    let Ok(rel) = hex::decode(&query.path) else {
        return bad_request("the path must be hex");
    };
    on_source(state, name, move |root| list_source_dir(&root, &rel)).await
}

#[derive(Debug, serde::Deserialize)]
struct TreeQuery {
    /// Where to start, hex-encoded.
    #[serde(default)]
    path: String,
    /// Leave out what a sync between directories does not read (see `lean_entry`).
    #[serde(default)]
    lean: bool,
}

/// The whole tree below a path as one streamed answer, so a sync needs neither a round trip
/// per directory nor memory for the whole listing on either side.
async fn tree_source(
    State(state): State<Shared>,
    Path(name): Path<String>,
    Query(query): Query<TreeQuery>,
) -> Response {
    let Some(root) = state.sources.get(&name).cloned() else {
        return no_such_source(&name);
    };
    let Ok(rel) = hex::decode(&query.path) else {
        return bad_request("the path must be hex");
    };
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
    if let Err(e) = open_beneath(&root, &rel, flags) {
        return error_response(&e);
    }
    let (pieces, stream) = tokio::sync::mpsc::channel(8);
    tokio::task::spawn_blocking(move || {
        let writer = StreamWriter {
            pieces: pieces.clone(),
            buffer: Vec::new(),
        };
        let written = zstd::stream::Encoder::new(writer, 3).and_then(|mut encoder| {
            write_source_tree(&root, &rel, query.lean, &mut encoder)?;
            std::io::Write::flush(&mut encoder.finish()?)
        });
        if let Err(e) = written {
            // The answer ends short; the client reports it unreadable.
            let _ = pieces.blocking_send(Err(e));
        }
    });
    let body = axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(stream));
    ([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response()
}

async fn stat_source(
    State(state): State<Shared>,
    Path(name): Path<String>,
    Query(query): Query<ListQuery>,
) -> Response {
    let Ok(rel) = hex::decode(&query.path) else {
        return bad_request("the path must be hex");
    };
    on_source(state, name, move |root| stat_source_path(&root, &rel)).await
}

/// The files and bytes of the whole source, counted as a backup's scan ahead counts them:
/// a client's progress total.
async fn total_source(State(state): State<Shared>, Path(name): Path<String>) -> Response {
    on_source(state, name, |root| {
        let counted = crate::progress::Progress::default();
        let never = std::sync::atomic::AtomicBool::new(false);
        crate::backup::count_tree(&root, &counted, 2, &never);
        let totals = (
            counted.total_files.into_inner(),
            counted.total_bytes.into_inner(),
        );
        Ok(postcard::to_stdvec(&totals).expect("numbers serialize"))
    })
    .await
}

/// Where the source lives: this machine's host name and the source's path as a backup here
/// would record it, so a pull records the source as that backup would.
async fn about_source(State(state): State<Shared>, Path(name): Path<String>) -> Response {
    on_source(state, name, |root| {
        let path = crate::backup::recorded_path(&root)?;
        let about = SourceAbout {
            host: crate::host_name(),
            path: path.to_string_lossy().into_owned(),
        };
        Ok(postcard::to_stdvec(&about).expect("strings serialize"))
    })
    .await
}

async fn source_chunks(
    State(state): State<Shared>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let Ok(request) = postcard::from_bytes::<ChunksRequest>(&body) else {
        return bad_request("unreadable chunks request");
    };
    on_source(state, name, move |root| chunk_source_files(&root, &request)).await
}

async fn source_blobs(
    State(state): State<Shared>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let Ok(request) = postcard::from_bytes::<BlobsRequest>(&body) else {
        return bad_request("unreadable blobs request");
    };
    on_source(state, name, move |root| read_source_blobs(&root, &request)).await
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
        .route("/source/{name}/list", get(list_source))
        .route("/source/{name}/stat", get(stat_source))
        .route("/source/{name}/tree", get(tree_source))
        .route("/source/{name}/totals", get(total_source))
        .route("/source/{name}/about", get(about_source))
        .route("/source/{name}/chunks", post(source_chunks))
        .route("/source/{name}/blobs", post(source_blobs))
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
    for (name, dir) in options.sources {
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
