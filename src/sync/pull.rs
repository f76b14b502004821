//! Served directory → repository: a backup pulled over the network. The walker lists the
//! source directory by directory (`cairn serve --source`) and compares each file with the
//! parent checkpoint (same size, mtime, ctime and inode ⇒ the old chunk list, nothing asked);
//! workers ask the server for each changed file's chunk list, chunked with the repository's
//! chunker, gear seed and id key, and then for just the chunks the repository lacks (the
//! wishlist), checking each against its id. Trees are built bottom-up by backup's tree
//! builder and packs written by the same writer; the checkpoint record comes last.
//!
//! The checkpoint records the source as a backup on its own machine would: the server's host
//! name and the directory's path there (`GET …/about`), with the URL it was pulled from. The
//! next pull takes the newest checkpoint of that host and path as its parent, or failing one
//! (checkpoints pulled before servers said where their sources live were recorded under the
//! URL's `host:port` and `/source/NAME`), the newest of that URL's path from the same server,
//! on any port.

use super::remote::{RemotePath, RemoteSource, child_path};
use super::{SyncOptions, SyncReport};
use crate::backup::{
    FileError, PendingDir, PendingEntry, abandoned, file_content, run_tree_builder,
};
use crate::checkpoint::{self, Checkpoint, Label};
use crate::error::{Error, PathError, Result};
use crate::id::BlobId;
use crate::progress::Progress;
use crate::repo::Repository;
use crate::repo::pack::BlobKind;
use crate::repo::writer::{BlobSink, Claim, take_orphan_packs, with_blob_sink};
use crate::throttle::RateLimiter;
use crate::tree::{ChunkRef, Content, Entry, EntryKind, Tree, load_tree};
use crossbeam_channel::{Receiver, Sender, bounded};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

/// Files the walker may queue ahead of the workers.
const FILES_QUEUED: usize = 256;

/// A changed file for the workers.
struct PullJob {
    path: RemotePath,
    /// Its size in the listing.
    size: u64,
    result: Sender<Result<(Content, u64), FileError>>,
}

/// The parent's content for `entry` when the file is unchanged.
fn unchanged_content(parent: Option<&Entry>, entry: &Entry) -> Option<Content> {
    let parent = parent?;
    let EntryKind::File(content) = &parent.kind else {
        return None;
    };
    let same = parent.size == entry.size
        && parent.mtime_ns == entry.mtime_ns
        && parent.ctime_ns == entry.ctime_ns
        && parent.inode == entry.inode;
    same.then(|| content.clone())
}

/// What the workers share.
struct PullContext<'a> {
    source: &'a RemoteSource,
    progress: &'a Progress,
    limiter: Option<RateLimiter>,
    /// Plan only: count the chunks the repository lacks instead of fetching them.
    dry_run: bool,
    /// Chunks a dry run would ask for, and their bytes.
    planned: AtomicU64,
    planned_bytes: AtomicU64,
    /// Chunks of changed files the repository already held.
    skipped: AtomicU64,
}

/// Files asked about in one request at most, and chunk bytes asked for in one request.
const FILES_PER_REQUEST: usize = 64;
const BYTES_PER_REQUEST: u64 = 8 << 20;

type FileResult = Result<(Content, u64), FileError>;

/// The chunks one file of a batch needs, with their offsets: (its index in the batch, chunks).
type Missing = (usize, Vec<(u64, ChunkRef)>);

/// Takes changed files from `jobs` in batches and stores them.
fn run_pull_worker(context: &PullContext, sink: &BlobSink, jobs: Receiver<PullJob>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < FILES_PER_REQUEST {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let files: Vec<(RemotePath, u64)> = batch
            .iter()
            .map(|job| (job.path.clone(), job.size))
            .collect();
        // Once interrupted, the queued files are answered without being fetched.
        let results = match crate::interrupt::check() {
            Ok(()) => pull_files(context, sink, &files),
            Err(_) => files
                .iter()
                .map(|_| Err(FileError::Repository(Error::Interrupted)))
                .collect(),
        };
        context
            .progress
            .bytes_read
            .store(context.source.received(), Ordering::Relaxed);
        for (job, result) in batch.into_iter().zip(results) {
            // The tree builder may have stopped after a fatal error; then nobody waits.
            let _ = job.result.send(result);
        }
    }
}

/// Stores a batch of changed files: their chunk lists from the server in one request, then
/// the chunks the repository lacks, in as few requests as their size allows.
/// `files` are (path, size in the listing).
fn pull_files(
    context: &PullContext,
    sink: &BlobSink,
    files: &[(RemotePath, u64)],
) -> Vec<FileResult> {
    let source = context.source;
    let paths: Vec<RemotePath> = files.iter().map(|(path, _)| path.clone()).collect();
    // A request that fails as a whole (the server went away, or answered nonsense) fails the
    // pull: leaving out every file of the batch would save a checkpoint missing them.
    let lists = match source.files_chunks(files) {
        Ok(lists) => lists,
        Err(e) => {
            let mut results = vec![FileError::Repository(e)];
            results.extend(
                paths[1..]
                    .iter()
                    .map(|_| FileError::Source("not asked".into())),
            );
            return results.into_iter().map(Err).collect();
        }
    };
    let mut results: Vec<Option<FileResult>> = Vec::with_capacity(paths.len());
    let mut wanted: Vec<Missing> = Vec::new();
    // Chunks another worker took on: (file index, offset, chunk), waited for at the end.
    let mut elsewhere: Vec<(usize, u64, ChunkRef)> = Vec::new();
    for (i, list) in lists.iter().enumerate() {
        let chunks = match list {
            Ok(chunks) => chunks,
            Err(message) => {
                results.push(Some(Err(FileError::Source(message.clone()))));
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
                Err(e) => results[i] = Some(Err(FileError::Repository(e))),
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
            wanted.push((i, missing));
        }
    }
    // Requests of up to BYTES_PER_REQUEST. Once a chunk is claimed, other files count on it
    // being stored, so a request that fails fails the pull (run it again to resume).
    let missing_bytes = |(_, chunks): &Missing| chunks.iter().map(|(_, c)| c.length as u64).sum();
    let groups = super::runs(&wanted, usize::MAX, BYTES_PER_REQUEST, missing_bytes);
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
            if let Some((first, _)) = files.next() {
                results[*first] = Some(Err(FileError::Repository(e)));
            }
            for (i, _) in files {
                results[*i] = Some(Err(FileError::Source("not fetched".into())));
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
            results[i].get_or_insert_with(|| Err(FileError::Source("not fetched".into())));
            continue;
        }
        let stored = wait_or_store(context, sink, &paths[i], offset, chunk);
        if let Err(e) = stored {
            failed = Some(e.to_string());
            results[i] = Some(Err(FileError::Repository(e)));
        }
    }
    results
        .into_iter()
        .zip(lists)
        .map(|(result, list)| match (result, list) {
            (Some(result), _) => result,
            (None, Ok(chunks)) => {
                let size = chunks.iter().map(|c| c.length as u64).sum();
                let content = file_content(sink, chunks).map_err(FileError::Repository)?;
                Ok((content, size))
            }
            (None, Err(message)) => Err(FileError::Source(message)),
        })
        .collect()
}

/// Gives up the claims on a group's chunks (those already queued are not affected), so other
/// workers waiting for them go on.
fn release_group(sink: &BlobSink, group: &[Missing]) {
    let claimed: Vec<BlobId> = group
        .iter()
        .flat_map(|(_, chunks)| chunks.iter().map(|(_, c)| c.id))
        .collect();
    sink.release(&claimed);
}

/// Waits for a chunk another worker took on; stores it from `path` when that worker gave up.
fn wait_or_store(
    context: &PullContext,
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
                return fetch_and_store(context, sink, &paths, &[(0, vec![(offset, chunk)])]);
            }
            Claim::Stored => return Ok(()),
            Claim::Elsewhere => {}
        }
    }
}

/// Fetches the missing chunks of a group of files in one request and queues them for the
/// packer; on failure, gives up their claims so other files can store them.
fn fetch_and_store(
    context: &PullContext,
    sink: &BlobSink,
    paths: &[RemotePath],
    group: &[Missing],
) -> Result<()> {
    let wanted: Vec<(RemotePath, Vec<(u64, ChunkRef)>)> = group
        .iter()
        .map(|(i, chunks)| (paths[*i].clone(), chunks.clone()))
        .collect();
    let parts = match context
        .source
        .fetch_files(&wanted, context.limiter.as_ref())
    {
        Ok(parts) => parts,
        Err(e) => {
            release_group(sink, group);
            return Err(e);
        }
    };
    for ((_, chunks), parts) in wanted.iter().zip(parts) {
        for ((_, chunk), data) in chunks.iter().zip(parts) {
            let encoded = sink.repo().codec().encode(&data, true);
            if let Err(e) = sink.send_encoded(chunk.id, BlobKind::Data, encoded, data.len()) {
                release_group(sink, group);
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Walks the served source and feeds the workers and the tree builder.
struct PullWalker<'a> {
    repo: &'a Repository,
    source: &'a RemoteSource,
    files: Sender<PullJob>,
    dirs: Sender<PendingDir>,
    errors: &'a Mutex<Vec<PathError>>,
}

/// One directory of the walk: its path below the source, its tree in the parent checkpoint,
/// the entries still to walk, what is pending of those walked, and its own entry (`None` for
/// the root).
struct PullLevel {
    dir: Vec<u8>,
    parent: Option<Tree>,
    entries: std::vec::IntoIter<Entry>,
    pending: Vec<PendingEntry>,
    own: Option<Entry>,
}

impl PullWalker<'_> {
    /// Walks the whole source with an explicit stack (a server decides the depth, which must
    /// cost heap, not the thread's stack); returns where the root tree's id will arrive.
    fn pull_tree(&self, parent_root: Option<Tree>) -> Result<Receiver<BlobId>> {
        let mut stack = vec![self.open_level(Vec::new(), parent_root, None)?];
        loop {
            crate::interrupt::check()?;
            let level = stack
                .last_mut()
                .expect("the walk holds a level until the root is sent");
            let Some(entry) = level.entries.next() else {
                let done = stack.pop().expect("the walk holds a level");
                let (done_sender, receiver) = bounded(1);
                self.dirs
                    .send(PendingDir {
                        entries: done.pending,
                        done: done_sender,
                    })
                    .map_err(|_| abandoned())?;
                match (done.own, stack.last_mut()) {
                    (Some(own), Some(parent)) => {
                        parent.pending.push(PendingEntry::Dir(own, receiver))
                    }
                    _ => return Ok(receiver),
                }
                continue;
            };
            let path = child_path(&level.dir, &entry.name);
            let parent_entry = level.parent.as_ref().and_then(|tree| tree.get(&entry.name));
            match &entry.kind {
                EntryKind::Dir(_) => {
                    let parent_tree = self.parent_tree(parent_entry);
                    let next = self.open_level(path, parent_tree, Some(entry))?;
                    stack.push(next);
                }
                EntryKind::File(_) => {
                    let pending = match unchanged_content(parent_entry, &entry) {
                        Some(content) => PendingEntry::Ready(Entry {
                            kind: EntryKind::File(content),
                            ..entry
                        }),
                        None => {
                            let (result, receiver) = bounded(1);
                            let job = PullJob {
                                path: path.clone(),
                                size: entry.size,
                                result,
                            };
                            self.files.send(job).map_err(|_| abandoned())?;
                            let shown = PathBuf::from(String::from_utf8_lossy(&path).into_owned());
                            PendingEntry::File(entry, shown, receiver)
                        }
                    };
                    level.pending.push(pending);
                }
                _ => level.pending.push(PendingEntry::Ready(entry)),
            }
        }
    }

    /// Lists directory `dir` of the source; a directory below the root that cannot be listed
    /// is reported and pulled empty.
    fn open_level(
        &self,
        dir: Vec<u8>,
        parent: Option<Tree>,
        own: Option<Entry>,
    ) -> Result<PullLevel> {
        // Each level keeps its path: past the cap a target has, a deeper tree would cost
        // memory that grows with the square of its depth.
        let listed = if dir.len() > crate::target::MAX_RELATIVE_PATH_BYTES {
            Err(Error::InvalidInput(format!(
                "a path of {} bytes, longer than the {} cairn pulls; not pulled",
                dir.len(),
                crate::target::MAX_RELATIVE_PATH_BYTES
            )))
        } else {
            self.source.list_dir(&dir)
        };
        let entries = match listed {
            Ok(entries) => entries,
            Err(e) if !dir.is_empty() && e.kind() != crate::error::ErrorKind::Corrupt => {
                self.soft_error(&dir, e.to_string());
                Vec::new()
            }
            Err(e) => return Err(e),
        };
        Ok(PullLevel {
            dir,
            parent,
            pending: Vec::with_capacity(entries.len()),
            entries: entries.into_iter(),
            own,
        })
    }

    fn parent_tree(&self, parent: Option<&Entry>) -> Option<Tree> {
        let EntryKind::Dir(id) = parent?.kind else {
            return None;
        };
        load_tree(self.repo, &id)
            .map_err(|e| tracing::warn!("parent tree {id} unreadable, pulling all files: {e}"))
            .ok()
    }

    fn soft_error(&self, path: &[u8], message: String) {
        self.errors.lock().expect("not poisoned").push(PathError {
            path: PathBuf::from(String::from_utf8_lossy(path).into_owned()),
            message,
        });
    }
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
    newest(&|c| c.series() == (host, paths, Some(server)))
        .or_else(|| newest(&|c| c.paths == url_paths && c.host == authority))
        .or_else(|| newest(&|c| c.paths == url_paths && without_port(&c.host) == server))
        .map(|summary| Ok((summary.id, repo.catalogue().record(repo, summary)?)))
        .transpose()
}

/// Pulls the served source into `repo` as a new checkpoint (unless a dry run).
pub fn run(
    repo: &Repository,
    source: &RemoteSource,
    options: &SyncOptions,
    progress: &Progress,
) -> Result<SyncReport> {
    let started = Instant::now();
    let time = humantime::format_rfc3339_nanos(SystemTime::now()).to_string();
    // The lock comes before the parent is read (see backup).
    let lock = if options.dry_run {
        None
    } else {
        Some(crate::repo::lock::acquire(repo, false, "sync")?)
    };
    let orphans = take_orphan_packs(repo, options.dry_run)?;
    let (host, paths) = match source.about() {
        Some(about) => (about.host, vec![about.path]),
        None => {
            let (authority, path) = source_identity(source.url());
            (authority, vec![path])
        }
    };
    let parent = find_pull_parent(repo, &host, &paths, source.url())?;
    let parent_root = match &parent {
        Some((_, c)) => Some(load_tree(repo, &c.tree)?),
        None => None,
    };
    // The source root's own metadata, kept like a backup of one directory keeps it.
    let root_entry = source.stat(&[])?;
    let errors = Mutex::new(Vec::new());
    let context = PullContext {
        source,
        progress,
        limiter: options.rate_limit.map(RateLimiter::new),
        dry_run: options.dry_run,
        planned: AtomicU64::new(0),
        planned_bytes: AtomicU64::new(0),
        skipped: AtomicU64::new(0),
    };
    let threads = options.concurrency.max(1);
    let walked_all = AtomicBool::new(false);
    let walk = |sink: &BlobSink| {
        std::thread::scope(|scope| {
            let (file_tx, file_rx) = bounded::<PullJob>(FILES_QUEUED);
            for _ in 0..threads {
                let (jobs, context) = (file_rx.clone(), &context);
                scope.spawn(move || run_pull_worker(context, sink, jobs));
            }
            drop(file_rx);
            scope.spawn(|| source.count_totals(progress, &walked_all));
            let (dir_tx, dir_rx) = bounded(1024);
            let builder = scope.spawn(|| run_tree_builder(sink, dir_rx, &errors, progress));
            let walker = PullWalker {
                repo,
                source,
                files: file_tx,
                dirs: dir_tx,
                errors: &errors,
            };
            let walked = walker.pull_tree(parent_root);
            drop(walker);
            let stats = builder.join().expect("the tree builder does not panic");
            // Done without the total, if the server is still counting.
            walked_all.store(true, Ordering::Relaxed);
            let stats = stats?;
            let root = walked?.recv().map_err(|_| abandoned())?;
            Ok((root, stats))
        })
    };
    let ((root, mut stats), added_blobs) =
        with_blob_sink(repo, options.dry_run, threads * 2, progress, |sink| {
            sink.count_as_stored(&orphans);
            walk(sink)
        })?;
    let errors = errors.into_inner().expect("not poisoned");
    stats.added_blobs = added_blobs;
    stats.errors = errors.len() as u64;
    // Everything that crossed: listings and chunk lists as well as chunks (in a dry run, the
    // chunks that would be asked for).
    stats.bytes_read = if options.dry_run {
        context.planned_bytes.load(Ordering::Relaxed)
    } else {
        source.received()
    };
    stats.added_bytes = progress.added_bytes.load(Ordering::Relaxed);
    progress
        .bytes_read
        .store(stats.bytes_read, Ordering::Relaxed);
    stats.duration_ms = started.elapsed().as_millis() as u64;
    let record = Checkpoint {
        time,
        host,
        paths,
        tags: Vec::new(),
        tree: root,
        root: root_entry.filter(|e| e.is_dir()).map(|e| Entry {
            name: source.name().as_bytes().to_vec(),
            kind: EntryKind::Dir(root),
            ..e
        }),
        parent: parent.map(|(id, _)| id),
        stats,
        program_version: env!("CARGO_PKG_VERSION").to_owned(),
        pulled_from: Some(source.url().to_owned()),
    };
    let saved = if options.dry_run {
        false
    } else {
        if let Some(lock) = &lock {
            lock.ensure_held()?;
        }
        checkpoint::save(repo, &record)?;
        true
    };
    Ok(SyncReport {
        dry_run: options.dry_run,
        checkpoints_copied: u64::from(saved),
        blobs_copied: added_blobs + context.planned.load(Ordering::Relaxed),
        blobs_skipped: context.skipped.load(Ordering::Relaxed),
        bytes_transferred: record.stats.bytes_read,
        errors,
        ..SyncReport::default()
    })
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
