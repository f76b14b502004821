//! A live directory served by `cairn serve --source NAME=DIR`, read over HTTP(S): listings,
//! chunk lists and the chunks a client lacks (see `wire`). As a `TreeSource` it syncs into a
//! directory, rebuilding changed files from the chunks the target already holds; the pull
//! into a repository (`pull`) uses the same calls. Everything the server sends is checked:
//! names must be valid and sorted, chunk lengths within the chunker's bounds, and every
//! chunk must match its id. Every answer is read through `HttpClient`, bounded by what the
//! request can mean: a listing by `MAX_LISTING_BYTES`, chunk lists by the files' listed
//! sizes, chunks by the bytes asked for; a size the server claims never sizes a buffer
//! before the bytes arrive.

use crate::chunker::Chunker;
use crate::error::{Error, PathError, Result};
use crate::fs::throttle::RateLimiter;
use crate::id::BlobId;
use crate::net::client::{Ask, HttpClient, MAX_SMALL_ANSWER_BYTES, Remote};
use crate::net::wire::{
    BlobsRequest, ChunkSpec, ChunksRequest, ChunksResponse, FileRanges, MAX_ABOUT_HOST_BYTES,
    MAX_ABOUT_PATH_BYTES, MAX_LISTING_BYTES, RemotePath, SourceAbout, WireEntry, child_path,
    from_wire, max_compressed_bytes, read_blobs, read_record,
};
use crate::progress::Progress;
use crate::source::{
    FileTask, FileWrite, Rebuild, TreeSource, finish_rebuild, rebuild_file, write_at, write_fetched,
};
use crate::tree::{ChunkRef, Listed, ListedKind, is_valid_name};
use std::fs::File;
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Chunk bytes asked for in one request when files are written together.
const BATCH_BYTES: u64 = 8 << 20;

/// A file new to the target is asked for in pieces of this size at most.
const PIECE_BYTES: u64 = 4 << 20;

/// The most bytes one chunk takes in a chunk list: its id and its length (a varint).
const CHUNK_REF_MAX_BYTES: u64 = 32 + 5;

/// Room in a chunk-list answer for each file's framing or error message.
const CHUNK_LIST_OVERHEAD_BYTES: u64 = 64 * 1024;

/// A chunk-list answer may be this much larger than the listed sizes say (files grow), and
/// never larger than the second bound (3.6 million chunks), whatever sizes are claimed.
const CHUNK_LISTS_SLACK_BYTES: u64 = 16 << 20;
const MAX_CHUNK_LISTS_BYTES: u64 = 128 << 20;

/// The answer to a request for the totals: two numbers.
const MAX_TOTALS_BYTES: u64 = 64;

/// A served source directory, chunked by the server as `spec` says.
pub struct RemoteSource {
    client: Arc<HttpClient>,
    spec: ChunkSpec,
    chunker: Chunker,
    /// Listings without what a sync between directories never reads (`wire::lean_entry`).
    lean: bool,
    /// Bytes of every answer received: listings, chunk lists and chunks, as sent.
    received: Arc<AtomicU64>,
    /// The cap on the bytes of chunks fetched per second, shared by every transfer.
    limiter: Option<RateLimiter>,
    /// The streamed listing of the whole tree, read as the walk asks for each directory.
    tree: Mutex<TreeStream>,
}

/// Where the streamed listing stands.
enum TreeStream {
    NotStarted,
    Reading(Box<dyn Read + Send>),
    /// Finished, or given up for a walk in another order: directories are listed one by one.
    Done,
}

/// Counts the bytes read through it.
struct Counted<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buffer)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Asks `url` (a GET, or a POST of `body`) and returns the answer, at most `max_bytes`,
/// whose bytes are added to `received`.
fn call_counted(
    client: &HttpClient,
    received: &AtomicU64,
    url: &str,
    body: Option<&[u8]>,
    max_bytes: u64,
) -> Result<Vec<u8>> {
    let ask = body.map_or(Ask::Get, Ask::Post);
    let bytes = client.read_bytes(url, ask, max_bytes)?;
    received.fetch_add(bytes.len() as u64, Ordering::Relaxed);
    Ok(bytes)
}

impl RemoteSource {
    /// `remote.url` is the source's URL (`https://host:port/source/NAME`); `lean` asks for
    /// listings without ctimes and inodes (enough for a sync into a directory, not for a
    /// pull's stat cache).
    pub fn new(remote: Remote, spec: ChunkSpec, lean: bool) -> Result<Self> {
        let client = Arc::new(HttpClient::new(remote)?);
        let chunker = spec.chunker()?;
        Ok(RemoteSource {
            client,
            spec,
            chunker,
            lean,
            received: Arc::new(AtomicU64::new(0)),
            limiter: None,
            tree: Mutex::new(TreeStream::NotStarted),
        })
    }

    /// This source, fetching file contents at most `bytes_per_second` (`None`: unlimited).
    pub fn limited(mut self, bytes_per_second: Option<u64>) -> Self {
        self.limiter = bytes_per_second.map(RateLimiter::new);
        self
    }

    /// The next directory of the streamed listing, if the stream is at `dir`; starts the
    /// stream at the first directory asked for (the walk's root). `None` means: list `dir`
    /// on its own.
    fn streamed_listing(&self, dir: &[u8]) -> Option<Result<Vec<Listed>>> {
        let mut tree = self.tree.lock().expect("not poisoned");
        if matches!(*tree, TreeStream::NotStarted) {
            *tree = TreeStream::Done;
            {
                let url = format!(
                    "{}/tree?path={}&lean={}",
                    self.url(),
                    hex::encode(dir),
                    self.lean
                );
                // The stream is as long as the tree; each record in it is bounded.
                let answer = match self.client.open(&url, Ask::Get, u64::MAX) {
                    Ok(answer) => answer,
                    Err(e) => return Some(Err(e)),
                };
                let counted = Counted {
                    inner: answer,
                    count: self.received.clone(),
                };
                match zstd::stream::read::Decoder::new(counted) {
                    Ok(decoder) => *tree = TreeStream::Reading(Box::new(decoder)),
                    Err(e) => return Some(Err(Error::Network(format!("{url}: {e}")))),
                }
            }
        }
        let TreeStream::Reading(reader) = &mut *tree else {
            return None;
        };
        let what = || format!("{}/tree", self.url());
        let record = match read_record(reader) {
            Ok(Some(record)) => record,
            Ok(None) => {
                *tree = TreeStream::Done;
                return None;
            }
            Err(e) => {
                return Some(Err(Error::corrupt(
                    what(),
                    format!("unreadable listing: {e}"),
                )));
            }
        };
        if record.path.as_slice() != dir {
            // The walk left the stream's order: list directory by directory from here on.
            *tree = TreeStream::Done;
            return None;
        }
        Some(record.entries.map(from_wire).map_err(|message| {
            Error::Network(format!(
                "{}: {}: {message}",
                self.url(),
                String::from_utf8_lossy(dir)
            ))
        }))
    }

    /// Bytes received from the server so far, as sent (compressed).
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// GETs or POSTs (with `body`) `url` and returns the answer, at most `max_bytes`,
    /// counted.
    fn call(&self, url: &str, body: Option<&[u8]>, max_bytes: u64) -> Result<Vec<u8>> {
        call_counted(&self.client, &self.received, url, body, max_bytes)
    }

    pub fn url(&self) -> &str {
        self.client.url()
    }

    /// The entries of directory `dir`, checked: valid names, sorted and unique. Taken from
    /// the streamed listing while the walk follows its order.
    pub fn list_dir(&self, dir: &[u8]) -> Result<Vec<Listed>> {
        let url = format!("{}/list?path={}", self.url(), hex::encode(dir));
        let entries = match self.streamed_listing(dir) {
            Some(entries) => entries?,
            None => self.list_one(&url)?,
        };
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

    /// One directory's listing, on its own.
    fn list_one(&self, url: &str) -> Result<Vec<Listed>> {
        let max_bytes = max_compressed_bytes(MAX_LISTING_BYTES);
        let body = self.client.read(url, Ask::Get, max_bytes, |answer| {
            let counted = Counted {
                inner: answer,
                count: self.received.clone(),
            };
            let mut body = Vec::new();
            zstd::stream::Decoder::new(counted)
                .and_then(|decoder| decoder.take(MAX_LISTING_BYTES + 1).read_to_end(&mut body))
                .map_err(|e| Error::corrupt(url, format!("unreadable listing: {e}")))?;
            Ok(body)
        })?;
        if body.len() as u64 > MAX_LISTING_BYTES {
            return Err(Error::corrupt(
                url,
                format!("a listing larger than {MAX_LISTING_BYTES} bytes"),
            ));
        }
        postcard::from_bytes(&body)
            .map(from_wire)
            .map_err(|e| Error::corrupt(url, format!("unreadable listing: {e}")))
    }

    /// The entry of `path` itself (the source's root for an empty path); `None` for a socket.
    pub fn stat(&self, path: &[u8]) -> Result<Option<Listed>> {
        let url = format!("{}/stat?path={}", self.url(), hex::encode(path));
        let body = self.call(&url, None, MAX_SMALL_ANSWER_BYTES)?;
        postcard::from_bytes(&body)
            .map(|entry: Option<WireEntry>| entry.map(WireEntry::listed))
            .map_err(|e| Error::corrupt(&url, format!("unreadable entry: {e}")))
    }

    /// Sets the files and bytes of the whole source, as the server counts them now, as the
    /// totals of `progress`; without an answer, the total stays open. Waits for the answer
    /// until `stop` is set: the request itself runs on a thread of its own, so a server still
    /// counting a huge tree never holds up a sync that is done.
    pub fn count_totals(&self, progress: &Progress, stop: &AtomicBool) {
        let url = format!("{}/totals", self.url());
        let (client, received) = (self.client.clone(), self.received.clone());
        let (send, answer) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || {
            let totals = call_counted(&client, &received, &url, None, MAX_TOTALS_BYTES);
            let totals = totals.and_then(|body| {
                postcard::from_bytes::<(u64, u64)>(&body)
                    .map_err(|e| Error::corrupt(&url, format!("unreadable totals: {e}")))
            });
            let _ = send.send(totals);
        });
        loop {
            match answer.recv_timeout(std::time::Duration::from_millis(50)) {
                Ok(Ok((files, bytes))) => return progress.set_totals(files, bytes),
                Ok(Err(e)) => return tracing::debug!("no progress total: {e}"),
                Err(crossbeam_channel::RecvTimeoutError::Timeout)
                    if !stop.load(Ordering::Relaxed) => {}
                Err(_) => return,
            }
        }
    }

    /// The source's host name and path on its server; `None` when the server is too old to
    /// say (a warning when it answers something no checkpoint should record): it only names
    /// the checkpoint, which then names the source by its URL.
    pub fn about(&self) -> Option<SourceAbout> {
        let url = format!("{}/about", self.url());
        let max_bytes = (MAX_ABOUT_HOST_BYTES + MAX_ABOUT_PATH_BYTES + 16) as u64;
        let answer = call_counted(&self.client, &self.received, &url, None, max_bytes);
        let about = match answer {
            Ok(body) => postcard::from_bytes::<SourceAbout>(&body).map_err(|e| e.to_string()),
            Err(e) if e.kind() == crate::error::ErrorKind::NotFound => return None,
            Err(e) => Err(e.to_string()),
        };
        match about {
            Ok(about) if about.is_plausible() => Some(about),
            Ok(_) => {
                tracing::warn!(
                    "{url}: the server names an unusable host or path; recording the URL"
                );
                None
            }
            Err(e) => {
                tracing::warn!("{url}: {e}; recording the URL");
                None
            }
        }
    }

    /// The last component of the source's URL: its name on the server.
    pub fn name(&self) -> &str {
        self.url().rsplit('/').next().unwrap_or_default()
    }

    /// The chunk lists of `files` (path, size in its listing), as the server chunks them
    /// now; a file the server could not read gets its message. The answer may hold as many
    /// chunks as the sizes allow (and some slack for files that grew), each within the
    /// chunker's bounds.
    pub fn files_chunks(
        &self,
        files: &[(RemotePath, u64)],
    ) -> Result<Vec<std::result::Result<Vec<ChunkRef>, String>>> {
        let url = format!("{}/chunks", self.url());
        let request = ChunksRequest {
            spec: self.spec.clone(),
            paths: files
                .iter()
                .map(|(path, _)| serde_bytes::ByteBuf::from(path.clone()))
                .collect(),
        };
        let min_bytes = u64::from(self.spec.params.min_bytes.max(1));
        let max_bytes = files
            .iter()
            .map(|(_, size)| {
                let chunks = size.div_ceil(min_bytes).saturating_add(1);
                chunks
                    .saturating_mul(CHUNK_REF_MAX_BYTES)
                    .saturating_add(CHUNK_LIST_OVERHEAD_BYTES)
            })
            .fold(CHUNK_LISTS_SLACK_BYTES, u64::saturating_add)
            .min(MAX_CHUNK_LISTS_BYTES);
        let body = postcard::to_stdvec(&request).expect("requests serialize");
        let answer = self.call(&url, Some(&body), max_bytes)?;
        let response: ChunksResponse = postcard::from_bytes(&answer)
            .map_err(|e| Error::corrupt(&url, format!("unreadable chunk lists: {e}")))?;
        if response.files.len() != files.len() {
            return Err(Error::corrupt(&url, "a chunk list per file was expected"));
        }
        let longest = self.spec.params.max_bytes;
        let bad_length = |c: &ChunkRef| c.length == 0 || c.length > longest;
        let lists = response.files.iter().flat_map(|list| list.iter().flatten());
        if let Some(bad) = lists.into_iter().find(|c| bad_length(c)) {
            return Err(Error::corrupt(
                &url,
                format!(
                    "a chunk of {} bytes, where the chunker makes 1 to {longest}",
                    bad.length
                ),
            ));
        }
        Ok(response.files)
    }

    /// The chunk list of one file, `size` bytes in its listing.
    pub fn file_chunks(&self, path: &[u8], size: u64) -> Result<Vec<ChunkRef>> {
        let mut files = self.files_chunks(&[(path.to_vec(), size)])?;
        files
            .pop()
            .expect("one answer per file")
            .map_err(|message| {
                Error::Network(format!(
                    "{}: {}: {message}",
                    self.url(),
                    String::from_utf8_lossy(path)
                ))
            })
    }

    /// The given byte ranges (offset, length) of the given files, in one request: per file,
    /// the ranges' bytes in order.
    fn fetch_ranges(&self, wanted: Vec<FileRanges>) -> Result<Vec<Vec<Vec<u8>>>> {
        let url = format!("{}/blobs", self.url());
        let request = BlobsRequest { files: wanted };
        let body = postcard::to_stdvec(&request).expect("requests serialize");
        let max_bytes = max_compressed_bytes(request.bytes());
        let before = self.received();
        let parts = self
            .client
            .read(&url, Ask::Post(&body), max_bytes, |answer| {
                let counted = Counted {
                    inner: answer,
                    count: self.received.clone(),
                };
                read_blobs(counted, &request, &url)
            })?;
        if let Some(limiter) = &self.limiter {
            limiter.take(self.received() - before);
        }
        Ok(parts)
    }

    /// The given chunks (with their offsets) of the given files, in one request, each checked
    /// against its id: per file, the chunks' bytes in order.
    pub fn fetch_files(
        &self,
        wanted: &[(RemotePath, Vec<(u64, ChunkRef)>)],
    ) -> Result<Vec<Vec<Vec<u8>>>> {
        let ranges = wanted
            .iter()
            .map(|(path, chunks)| FileRanges {
                path: serde_bytes::ByteBuf::from(path.clone()),
                ranges: chunks.iter().map(|(at, c)| (*at, c.length)).collect(),
            })
            .collect();
        let parts = self.fetch_ranges(ranges)?;
        for ((path, chunks), data) in wanted.iter().zip(&parts) {
            for ((at, chunk), data) in chunks.iter().zip(data) {
                if self.spec.id_of(data) != chunk.id {
                    return Err(Error::corrupt(
                        format!("{}/blobs ({})", self.url(), String::from_utf8_lossy(path)),
                        format!(
                            "the chunk at offset {at} does not match its id (changed while syncing, or a bad server)"
                        ),
                    ));
                }
            }
        }
        Ok(parts)
    }

    /// Fetches `wanted` (ranges of the files `owners` names, in order) and writes each part
    /// into its file; a failed write becomes that file's result. An error: the request
    /// failed as a whole.
    fn fetch_into(
        &self,
        files: &[FileTask<'_, RemotePath, ListedKind>],
        owners: &[usize],
        wanted: Vec<FileRanges>,
        results: &mut [Option<Result<FileWrite>>],
    ) -> Result<()> {
        let ranges: Vec<Vec<(u64, u32)>> = wanted.iter().map(|f| f.ranges.clone()).collect();
        let parts = self.fetch_ranges(wanted)?;
        for ((&i, ranges), parts) in owners.iter().zip(ranges).zip(parts) {
            let written = ranges
                .iter()
                .zip(parts)
                .try_for_each(|(&(at, _), data)| write_at(files[i].out, at, &data));
            if let Err(e) = written {
                results[i] = Some(Err(e));
            }
        }
        Ok(())
    }

    /// Writes files the target does not hold yet, whole: with no old file to take chunks
    /// from, a chunk list would buy nothing, so their bytes are asked for directly, in pieces
    /// of up to `PIECE_BYTES`, in requests of up to `BATCH_BYTES` across files. The answer's
    /// length is checked against the listing's size.
    fn write_whole_files(
        &self,
        files: &[FileTask<'_, RemotePath, ListedKind>],
        fresh: &[usize],
        results: &mut [Option<Result<FileWrite>>],
    ) {
        // Requests of up to BATCH_BYTES, in pieces of up to PIECE_BYTES, made as they go: a
        // size the server claims sizes no list, and a file that failed is not asked again.
        let (mut file_at, mut offset) = (0, 0u64);
        loop {
            let mut group: Vec<(usize, u64, u32)> = Vec::new();
            let mut group_bytes = 0;
            while file_at < fresh.len() && group_bytes < BATCH_BYTES {
                let i = fresh[file_at];
                let size = files[i].entry.size;
                if results[i].is_some() || offset >= size {
                    (file_at, offset) = (file_at + 1, 0);
                    continue;
                }
                let length = (size - offset)
                    .min(PIECE_BYTES)
                    .min(BATCH_BYTES - group_bytes);
                group.push((i, offset, length as u32));
                offset += length;
                group_bytes += length;
            }
            if group.is_empty() {
                break;
            }
            let mut wanted: Vec<FileRanges> = Vec::new();
            let mut owners: Vec<usize> = Vec::new();
            for &(i, at, length) in &group {
                if owners.last() != Some(&i) {
                    owners.push(i);
                    wanted.push(FileRanges {
                        path: serde_bytes::ByteBuf::from(child_path(
                            files[i].dir,
                            &files[i].entry.name,
                        )),
                        ranges: Vec::new(),
                    });
                }
                wanted
                    .last_mut()
                    .expect("just pushed")
                    .ranges
                    .push((at, length));
            }
            if let Err(e) = self.fetch_into(files, &owners, wanted.clone(), results) {
                if owners.len() == 1 {
                    results[owners[0]] = Some(Err(e));
                    continue;
                }
                // One file the server cannot read (or that shrank) fails the whole request:
                // ask file by file, so that only that file fails.
                for (&i, one) in owners.iter().zip(wanted) {
                    if let Err(e) = self.fetch_into(files, &[i], vec![one], results) {
                        results[i] = Some(Err(e));
                    }
                }
            }
        }
        for &i in fresh {
            if results[i].is_none() {
                let size = files[i].entry.size;
                results[i] = Some(
                    files[i]
                        .out
                        .set_len(size)
                        .map_err(|e| Error::io("writing the new file", e))
                        .map(|()| FileWrite::Written {
                            fetched: 0,
                            reused: 0,
                        }),
                );
            }
        }
    }

    pub fn id_of(&self, data: &[u8]) -> BlobId {
        self.spec.id_of(data)
    }
}

impl TreeSource for RemoteSource {
    type Dir = RemotePath;
    type Kind = ListedKind;

    fn count(&self, root: &RemotePath, progress: &Progress, stop: &AtomicBool) {
        // The server counts its whole source; a sync of a part of it has no total.
        if root.is_empty() {
            self.count_totals(progress, stop);
        }
    }

    fn bytes_received(&self) -> Option<u64> {
        Some(self.received())
    }

    fn list(
        &self,
        dir: &RemotePath,
        _: &Mutex<Vec<PathError>>,
    ) -> Result<Vec<(Listed, Option<RemotePath>)>> {
        Ok(self
            .list_dir(dir)?
            .into_iter()
            .map(|entry| {
                let subdir = entry.is_dir().then(|| child_path(dir, &entry.name));
                (entry, subdir)
            })
            .collect())
    }

    fn write_file(
        &self,
        dir: &RemotePath,
        entry: &Listed,
        old: Option<&File>,
        out: &File,
    ) -> Result<FileWrite> {
        let path = child_path(dir, &entry.name);
        let chunks = self.file_chunks(&path, entry.size)?;
        let id_of = |data: &[u8]| self.id_of(data);
        let mut fetch = |missing: &[(u64, ChunkRef)]| {
            let before = self.received();
            let wanted = [(path.clone(), missing.to_vec())];
            let mut parts = self.fetch_files(&wanted)?;
            Ok((
                parts.pop().expect("one file asked"),
                self.received() - before,
            ))
        };
        rebuild_file(&chunks, entry, old, &self.chunker, &id_of, &mut fetch, out)
    }

    /// Chunk lists for all the files in one request, then their missing chunks in requests
    /// of up to 8 MiB across files.
    fn write_files(
        &self,
        files: &[FileTask<'_, RemotePath, ListedKind>],
    ) -> Vec<Result<FileWrite>> {
        let mut results: Vec<Option<Result<FileWrite>>> = files.iter().map(|_| None).collect();
        let (fresh, known): (Vec<usize>, Vec<usize>) =
            (0..files.len()).partition(|&i| files[i].old.is_none());
        self.write_whole_files(files, &fresh, &mut results);
        if known.is_empty() {
            return results
                .into_iter()
                .map(|r| r.expect("every new file has its result"))
                .collect();
        }
        let asked: Vec<(RemotePath, u64)> = known
            .iter()
            .map(|&i| {
                let entry = files[i].entry;
                (child_path(files[i].dir, &entry.name), entry.size)
            })
            .collect();
        let lists = match self.files_chunks(&asked) {
            Ok(lists) => lists,
            Err(e) => {
                let message = e.to_string();
                for &i in &known {
                    results[i] = Some(Err(Error::Network(message.clone())));
                }
                Vec::new()
            }
        };
        let id_of = |data: &[u8]| self.id_of(data);
        let mut rebuilds: Vec<Option<Rebuild>> = files.iter().map(|_| None).collect();
        for (&i, list) in known.iter().zip(lists) {
            let file = &files[i];
            let chunks =
                list.map_err(|message| Error::Network(format!("{}: {message}", self.url())));
            match file.start_rebuild(chunks, &self.chunker, &id_of) {
                Ok(rebuild) => rebuilds[i] = Some(rebuild),
                Err(result) => results[i] = Some(result),
            }
        }
        // Requests of up to BATCH_BYTES across files.
        let missing_bytes = |i: &usize| {
            let missing = rebuilds[*i].as_ref().map_or(&[][..], |r| &r.missing[..]);
            missing.iter().map(|(_, c)| c.length as u64).sum::<u64>()
        };
        let pending: Vec<usize> = known
            .iter()
            .copied()
            .filter(|i| missing_bytes(i) > 0)
            .collect();
        for group in crate::sync::runs(&pending, usize::MAX, BATCH_BYTES, missing_bytes) {
            let wanted: Vec<(RemotePath, Vec<(u64, ChunkRef)>)> = group
                .iter()
                .map(|&i| {
                    let missing = &rebuilds[i].as_ref().expect("grouped").missing;
                    let path = child_path(files[i].dir, &files[i].entry.name);
                    (path, missing.clone())
                })
                .collect();
            match self.fetch_files(&wanted) {
                Ok(parts) => {
                    for (&i, ((_, missing), parts)) in group.iter().zip(wanted.iter().zip(parts)) {
                        let file = &files[i];
                        if let Err(e) = write_fetched(file.entry, missing, &parts, file.out) {
                            results[i] = Some(Err(e));
                        }
                    }
                }
                Err(e) => {
                    let message = e.to_string();
                    for &i in group {
                        results[i] = Some(Err(Error::Network(message.clone())));
                    }
                }
            }
        }
        // bytes_transferred comes from bytes_received for this source, so none per file.
        results
            .into_iter()
            .zip(rebuilds)
            .zip(files)
            .map(|((result, rebuild), file)| match (result, rebuild) {
                (Some(result), _) => result,
                (None, Some(rebuild)) => finish_rebuild(rebuild, 0, file.out),
                (None, None) => Err(Error::InvalidInput("not written".into())),
            })
            .collect()
    }
}
