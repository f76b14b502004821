//! A directory served by `cairn serve --source` as a backup's source: a pull over the
//! network. The engine lists the source directory by directory and compares each file with
//! the parent checkpoint (same size, mtime, ctime and inode ⇒ the old chunk list, nothing
//! asked); the file workers ask the server for each changed file's chunk list, chunked with
//! the repository's chunker, gear seed and id key, and then for just the chunks the
//! repository lacks (the wishlist), checking each against its id.
//!
//! The checkpoint records the source as a backup on its own machine would: the server's host
//! name and the directory's path there (`GET …/about`), with the URL it was pulled from. The
//! next pull takes the newest checkpoint of that host and path as its parent, or failing one
//! (checkpoints pulled before servers said where their sources live were recorded under the
//! URL's `host:port` and `/source/NAME`), the newest of that URL's path from the same server,
//! on any port.

use super::trees::file_content;
use super::{FileError, FileJob, Identity, Root, Settings, Source};
use crate::checkpoint::{self, Checkpoint, Label, Series};
use crate::error::{Error, PathError, Result};
use crate::id::{BlobId, CheckpointId};
use crate::net::wire::{RemotePath, child_path};
use crate::progress::Progress;
use crate::repo::Repository;
use crate::repo::pack::BlobKind;
use crate::repo::writer::{BlobSink, Claim};
use crate::source::remote::RemoteSource;
use crate::tree::{ChunkRef, Content, Listed};
use crossbeam_channel::Receiver;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A served source directory being pulled.
pub(crate) struct ServedSource<'a> {
    source: &'a RemoteSource,
    identity: Identity,
    /// Plan only: count the chunks the repository lacks instead of fetching them.
    dry_run: bool,
    /// Chunks a dry run would ask for, and their bytes.
    planned: AtomicU64,
    planned_bytes: AtomicU64,
    /// Chunks of changed files the repository already held.
    skipped: AtomicU64,
}

impl<'a> ServedSource<'a> {
    /// `source`, pulled (a dry run fetches no chunk); asks the server where the source
    /// lives, to name the checkpoint.
    pub(crate) fn new(source: &'a RemoteSource, dry_run: bool) -> Self {
        let (host, path) = match source.about() {
            Some(about) => (about.host, about.path),
            None => source_identity(source.url()),
        };
        ServedSource {
            source,
            identity: Identity {
                host,
                paths: vec![path],
                pulled_from: Some(source.url().to_owned()),
            },
            dry_run,
            planned: AtomicU64::new(0),
            planned_bytes: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
        }
    }

    /// How the engine runs a pull with `transfers` parallel transfers.
    pub(crate) fn settings(&self, transfers: usize) -> Settings {
        Settings {
            purpose: "sync",
            tags: Vec::new(),
            threads: transfers,
            read_ahead_threads: 0,
            parent_trees_ahead: true,
        }
    }

    /// Chunks a dry run would have asked for.
    pub(crate) fn planned_chunks(&self) -> u64 {
        self.planned.load(Ordering::Relaxed)
    }

    /// Chunks of changed files the repository already held.
    pub(crate) fn chunks_held(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }
}

impl Source for ServedSource<'_> {
    type Path = RemotePath;

    fn identity(&self) -> &Identity {
        &self.identity
    }

    fn find_parent(&self, repo: &Repository) -> Result<Option<(CheckpointId, Checkpoint)>> {
        let Identity { host, paths, .. } = &self.identity;
        find_pull_parent(repo, host, paths, self.source.url())
    }

    fn root(&self, _errors: &Mutex<Vec<PathError>>) -> Result<Root<RemotePath>> {
        // The source root's own entry, kept like a backup of one directory keeps it.
        let entry = self
            .source
            .stat(&[])?
            .filter(|e| e.is_dir())
            .map(|e| Listed {
                name: self.source.name().as_bytes().to_vec(),
                ..e
            });
        Ok(Root::Dir {
            path: Vec::new(),
            entry,
        })
    }

    /// A directory below the root that cannot be listed is reported and pulled empty; the
    /// root, or a listing that cannot be trusted, fails the pull.
    fn list(&self, dir: &RemotePath, errors: &Mutex<Vec<PathError>>) -> Result<Vec<Listed>> {
        // Each level keeps its path: past the cap a target has, a deeper tree would cost
        // memory that grows with the square of its depth.
        let listed = if dir.len() > crate::target::MAX_RELATIVE_PATH_BYTES {
            Err(Error::InvalidInput(format!(
                "a path of {} bytes, longer than the {} cairn pulls; not pulled",
                dir.len(),
                crate::target::MAX_RELATIVE_PATH_BYTES
            )))
        } else {
            self.source.list_dir(dir)
        };
        match listed {
            Ok(entries) => Ok(entries),
            Err(e) if !dir.is_empty() && e.kind() != crate::error::ErrorKind::Corrupt => {
                errors.lock().expect("not poisoned").push(PathError {
                    path: shown(dir),
                    message: e.to_string(),
                });
                Ok(Vec::new())
            }
            Err(e) => Err(e),
        }
    }

    fn child(&self, dir: &RemotePath, name: &[u8]) -> RemotePath {
        child_path(dir, name)
    }

    fn count_totals(&self, progress: &Progress, stop: &AtomicBool) {
        self.source.count_totals(progress, stop);
    }

    /// Takes changed files from `jobs` in batches and stores them.
    fn store_files(
        &self,
        sink: &BlobSink,
        jobs: Receiver<Vec<FileJob<RemotePath>>>,
        progress: &Progress,
    ) {
        while let Ok(mut batch) = jobs.recv() {
            while batch.len() < FILES_PER_REQUEST {
                match jobs.try_recv() {
                    Ok(more) => batch.extend(more),
                    Err(_) => break,
                }
            }
            let files: Vec<(RemotePath, u64)> = batch
                .iter()
                .map(|job| (job.path.clone(), job.size))
                .collect();
            // Once interrupted, the queued files are answered without being fetched.
            let results = match crate::interrupt::check() {
                Ok(()) => pull_files(self, sink, &files),
                Err(_) => files
                    .iter()
                    .map(|_| Err(PullError::Repository(Error::Interrupted)))
                    .collect(),
            };
            progress
                .bytes_read
                .store(self.source.received(), Ordering::Relaxed);
            for (job, result) in batch.into_iter().zip(results) {
                if result.is_ok() {
                    progress.bytes_done.fetch_add(job.size, Ordering::Relaxed);
                }
                let result = result.map_err(|e| match e {
                    PullError::Source(message) => FileError::Source(PathError {
                        path: shown(&job.path),
                        message,
                    }),
                    PullError::Repository(e) => FileError::Repository(e),
                });
                // The tree builder may have stopped after a fatal error; then nobody waits.
                let _ = job.result.send(result);
            }
        }
    }

    /// Everything that crossed: listings and chunk lists as well as chunks (in a dry run,
    /// the chunks that would be asked for).
    fn bytes_read(&self, _progress: &Progress) -> u64 {
        match self.dry_run {
            true => self.planned_bytes.load(Ordering::Relaxed),
            false => self.source.received(),
        }
    }
}

/// A path below the source as a soft error names it.
fn shown(path: &[u8]) -> PathBuf {
    PathBuf::from(String::from_utf8_lossy(path).into_owned())
}

/// Why a file of a batch was not stored.
enum PullError {
    /// The server could not read it, or it was not fetched after another failure.
    Source(String),
    /// The pull fails.
    Repository(Error),
}

/// Files asked about in one request at most, and chunk bytes asked for in one request.
const FILES_PER_REQUEST: usize = 64;
const BYTES_PER_REQUEST: u64 = 8 << 20;

type PullResult = std::result::Result<(Content, u64), PullError>;

/// The chunks one file of a batch needs.
struct Missing {
    /// The file's index in the batch.
    file: usize,
    /// The chunks, each with its offset in the file.
    chunks: Vec<(u64, ChunkRef)>,
    /// The file is this one chunk: it goes into a frame shared with other small files, as a
    /// backup of a local directory stores it.
    only_chunk: bool,
}

/// Stores a batch of changed files: their chunk lists from the server in one request, then
/// the chunks the repository lacks, in as few requests as their size allows.
/// `files` are (path, size in the listing).
fn pull_files(
    context: &ServedSource,
    sink: &BlobSink,
    files: &[(RemotePath, u64)],
) -> Vec<PullResult> {
    let source = context.source;
    let paths: Vec<RemotePath> = files.iter().map(|(path, _)| path.clone()).collect();
    // A request that fails as a whole (the server went away, or answered nonsense) fails the
    // pull: leaving out every file of the batch would save a checkpoint missing them.
    let lists = match source.files_chunks(files) {
        Ok(lists) => lists,
        Err(e) => {
            let mut results = vec![PullError::Repository(e)];
            results.extend(
                paths[1..]
                    .iter()
                    .map(|_| PullError::Source("not asked".into())),
            );
            return results.into_iter().map(Err).collect();
        }
    };
    let mut results: Vec<Option<PullResult>> = Vec::with_capacity(paths.len());
    let mut wanted: Vec<Missing> = Vec::new();
    // Chunks another worker took on: (file index, offset, chunk), waited for at the end.
    let mut elsewhere: Vec<(usize, u64, ChunkRef)> = Vec::new();
    for (i, list) in lists.iter().enumerate() {
        let chunks = match list {
            Ok(chunks) => chunks,
            Err(message) => {
                results.push(Some(Err(PullError::Source(message.clone()))));
                continue;
            }
        };
        results.push(None);
        let mut missing = Vec::new();
        let mut offset = 0u64;
        for chunk in chunks {
            match sink.claim(&chunk.id) {
                Ok(Claim::Mine) => missing.push((offset, *chunk)),
                Ok(Claim::Elsewhere) if !context.dry_run => elsewhere.push((i, offset, *chunk)),
                Ok(_) => {
                    context.skipped.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => results[i] = Some(Err(PullError::Repository(e))),
            }
            offset += chunk.length as u64;
        }
        if context.dry_run {
            let bytes: u64 = missing.iter().map(|(_, c)| c.length as u64).sum();
            context.planned_bytes.fetch_add(bytes, Ordering::Relaxed);
            context
                .planned
                .fetch_add(missing.len() as u64, Ordering::Relaxed);
        } else if !missing.is_empty() {
            wanted.push(Missing {
                file: i,
                only_chunk: chunks.len() == 1,
                chunks: missing,
            });
        }
    }
    // Requests of up to BYTES_PER_REQUEST. Once a chunk is claimed, other files count on it
    // being stored, so a request that fails fails the pull (run it again to resume).
    let missing_bytes = |file: &Missing| file.chunks.iter().map(|(_, c)| c.length as u64).sum();
    let groups = crate::sync::runs(&wanted, usize::MAX, BYTES_PER_REQUEST, missing_bytes);
    let mut failed = None;
    for group in groups {
        let outcome = match &failed {
            Some(message) => {
                // Not fetched after all: let other workers waiting for these go on.
                release_group(sink, group);
                Err(Error::Network(format!("not fetched: {message}")))
            }
            // A signal stops the pull between requests, like a failed request.
            None => match crate::interrupt::check() {
                Ok(()) => fetch_and_store(context, sink, &paths, group),
                Err(e) => {
                    release_group(sink, group);
                    Err(e)
                }
            },
        };
        if let Err(e) = outcome {
            failed.get_or_insert_with(|| e.to_string());
            let mut files = group.iter();
            if let Some(first) = files.next() {
                results[first.file] = Some(Err(PullError::Repository(e)));
            }
            for missing in files {
                results[missing.file] = Some(Err(PullError::Source("not fetched".into())));
            }
        }
    }
    // A file's result goes to the tree builder only once every chunk it refers to is queued
    // for the packer, so its tree can never be packed (and indexed) before them. This worker
    // holds no unqueued claim while it waits, so waits cannot form a cycle.
    // After a failure, a file still waiting for a chunk is not done: it must not reach the
    // tree builder as if whole.
    for (i, offset, chunk) in elsewhere {
        if failed.is_some() {
            results[i].get_or_insert_with(|| Err(PullError::Source("not fetched".into())));
            continue;
        }
        let stored = wait_or_store(context, sink, &paths[i], offset, chunk);
        if let Err(e) = stored {
            failed = Some(e.to_string());
            results[i] = Some(Err(PullError::Repository(e)));
        }
    }
    results
        .into_iter()
        .zip(lists)
        .map(|(result, list)| match (result, list) {
            (Some(result), _) => result,
            (None, Ok(chunks)) => {
                let size = chunks.iter().map(|c| c.length as u64).sum();
                let content = file_content(sink, chunks).map_err(PullError::Repository)?;
                Ok((content, size))
            }
            (None, Err(message)) => Err(PullError::Source(message)),
        })
        .collect()
}

/// Gives up the claims on a group's chunks (those already queued are not affected), so other
/// workers waiting for them go on.
fn release_group(sink: &BlobSink, group: &[Missing]) {
    let claimed: Vec<BlobId> = group
        .iter()
        .flat_map(|file| file.chunks.iter().map(|(_, c)| c.id))
        .collect();
    sink.release(&claimed);
}

/// Waits for a chunk another worker took on; stores it from `path` when that worker gave up.
fn wait_or_store(
    context: &ServedSource,
    sink: &BlobSink,
    path: &RemotePath,
    offset: u64,
    chunk: ChunkRef,
) -> Result<()> {
    loop {
        if sink.wait_queued(&chunk.id)? {
            return Ok(());
        }
        match sink.claim(&chunk.id)? {
            Claim::Mine => {
                let paths = [path.clone()];
                let missing = Missing {
                    file: 0,
                    chunks: vec![(offset, chunk)],
                    only_chunk: false,
                };
                return fetch_and_store(context, sink, &paths, &[missing]);
            }
            Claim::Stored => return Ok(()),
            Claim::Elsewhere => {}
        }
    }
}

/// Fetches the missing chunks of a group of files in one request and queues them for the
/// packer, small files' only chunks in shared frames; on failure, gives up their claims so
/// other files can store them.
fn fetch_and_store(
    context: &ServedSource,
    sink: &BlobSink,
    paths: &[RemotePath],
    group: &[Missing],
) -> Result<()> {
    let wanted: Vec<(RemotePath, Vec<(u64, ChunkRef)>)> = group
        .iter()
        .map(|file| (paths[file.file].clone(), file.chunks.clone()))
        .collect();
    let stored = context.source.fetch_files(&wanted).and_then(|parts| {
        let mut frame = sink.shared_frame(BlobKind::Data);
        for (file, parts) in group.iter().zip(parts) {
            for ((_, chunk), data) in file.chunks.iter().zip(parts) {
                if file.only_chunk {
                    frame.add_taken(BlobKind::Data, chunk.id, &data)?;
                } else {
                    let encoded = sink.repo().codec().encode(&data, true);
                    sink.send_encoded(chunk.id, BlobKind::Data, encoded, data.len())?;
                }
            }
        }
        frame.finish()
    });
    if stored.is_err() {
        release_group(sink, group);
    }
    stored
}

/// The checkpoint's host and path for a source URL `scheme://host[:port]/source/NAME`: the
/// server's `host:port` and the source's path on the server.
fn source_identity(url: &str) -> (String, String) {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    (authority.to_owned(), format!("/{path}"))
}

/// A `host[:port]` without its port (an IPv6 address keeps its brackets and colons).
fn without_port(authority: &str) -> &str {
    match authority.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// The parent of a pull: the newest checkpoint of the source's host and path pulled from the
/// same server (on any port: a server moved to another port, or from HTTP to HTTPS, still
/// serves the same tree), or else one recorded under the URL's identity before servers said
/// where their sources live. Never a local backup or another server's pull: the server names
/// the host and path, and the stat cache must not let it probe another series (a file it
/// lists with a parent's size and times is not asked for, which it would notice).
fn find_pull_parent(
    repo: &Repository,
    host: &str,
    paths: &[String],
    url: &str,
) -> Result<Option<(crate::id::CheckpointId, Checkpoint)>> {
    let all = checkpoint::list_shared(repo)?;
    let newest = |matches: &dyn Fn(&Label) -> bool| all.iter().rev().find(|s| matches(&s.label));
    let (authority, url_path) = source_identity(url);
    let url_paths = [url_path];
    let server = without_port(&authority);
    let pulled = Series {
        host,
        paths,
        server: Some(server),
    };
    newest(&|c| c.series() == pulled)
        .or_else(|| newest(&|c| c.paths == url_paths && c.host == authority))
        .or_else(|| newest(&|c| c.paths == url_paths && without_port(&c.host) == server))
        .map(|summary| Ok((summary.id, repo.catalogue().record(repo, summary)?)))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::{source_identity, without_port};

    #[test]
    fn a_source_is_named_by_its_server_and_path_and_its_host_is_found_without_the_port() {
        let (authority, path) = source_identity("https://backup.example:8443/source/home");
        assert_eq!(
            (authority.as_str(), path.as_str()),
            ("backup.example:8443", "/source/home")
        );
        assert_eq!(without_port(&authority), "backup.example");
        assert_eq!(without_port("backup.example"), "backup.example");
        assert_eq!(without_port("[::1]:9000"), "[::1]");
        assert_eq!(without_port("[::1]"), "[::1]");
    }
}
