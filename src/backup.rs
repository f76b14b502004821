//! Backup: source paths in, one checkpoint out.
//!
//! The work is a bounded pipeline of threads joined by crossbeam channels:
//!
//! ```text
//! walker ──file jobs──▶ file workers ──encoded blobs──▶ packer ──▶ packs + index files
//!    └──dirs (post-order)──▶ tree builder ──tree blobs──┘
//! ```
//!
//! The walker (the calling thread) reads directories in name order, compares each file with
//! the parent checkpoint (the stat cache: same size, mtime, ctime and inode ⇒ reuse the old
//! chunk list without opening the file, when the index still lists all its chunks) and hands the rest to the file workers, one per
//! core, which read, chunk, hash and — for blobs the repository lacks — compress and encrypt.
//! The tree builder receives each directory after its children, waits for its files and
//! stores the tree bottom-up. The packer appends blobs to 16 MiB packs and writes an index
//! file every few packs, so an interrupted backup leaves reusable work behind. Every queue
//! is bounded, so memory stays flat whatever the size of the source. The checkpoint record
//! is written last, after every pack and index file is durable (invariant 1).
//!
//! Source files that vanish or cannot be read are soft errors: they are listed, left out of
//! the checkpoint, and the backup goes on.

use crate::checkpoint::{self, Checkpoint, CheckpointStats};
use crate::error::{Error, PathError, Result};
use crate::fsmeta::{ctime_ns, entry_from_metadata, mtime_ns, read_xattrs};
use crate::id::{BlobId, CheckpointId};
use crate::repo::Repository;
use crate::repo::pack::BlobKind;
use crate::repo::writer::{BlobSink, take_orphan_packs, with_blob_sink};
use crate::throttle::{RateLimiter, Throttled};
use crate::tree::{
    ChunkRef, Content, Entry, EntryKind, INLINE_CHUNKS_MAX, Tree, encode_chunk_list, load_tree,
};
use crossbeam_channel::{Receiver, Sender, bounded};
use globset::{Glob, GlobSet, GlobSetBuilder};
use std::collections::HashSet;
use std::fs::{self, Metadata};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

/// Files the walker may queue ahead of the file workers.
const FILES_QUEUED: usize = 256;
/// Threads asking the kernel to start reading queued files.
const READ_AHEAD_THREADS: usize = 4;
/// Bytes of a queued file the kernel is asked to read ahead; sequential reading takes over
/// after that.
const READ_AHEAD_BYTES: i64 = 2 << 20;
/// Threads of the scan ahead: enough metadata reads in flight to keep a disk busy.
const SCAN_AHEAD_THREADS: usize = 4;
/// Threads decoding the parent checkpoint's trees ahead of the walker.
const PARENT_TREE_THREADS: usize = 2;
/// Parent trees decoded ahead of the walker at most.
const PARENT_TREES_AHEAD: usize = 256;

/// Inputs of a backup.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    pub paths: Vec<PathBuf>,
    pub tags: Vec<String>,
    /// Glob patterns: without `/` they match a name anywhere, with `/` the whole path.
    pub excludes: Vec<String>,
    /// Scan, chunk and count, but write nothing to the repository.
    pub dry_run: bool,
    pub host: String,
    /// The checkpoint whose stat cache to use; `None` picks the newest one of this host with
    /// the same paths.
    pub parent: Option<CheckpointId>,
    /// File workers; defaults to the number of cores.
    pub threads: usize,
    /// A cap on the bytes read from source files per second, shared by all file workers.
    pub read_limit: Option<u64>,
    /// Keep one read in flight at a time (one file worker, no read-ahead or scan-ahead
    /// threads), so a backup running at low priority leaves the disk to others.
    pub one_read_at_a_time: bool,
}

impl BackupOptions {
    pub fn new(paths: Vec<PathBuf>) -> Self {
        BackupOptions {
            paths,
            tags: Vec::new(),
            excludes: Vec::new(),
            dry_run: false,
            host: crate::host_name(),
            parent: None,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            read_limit: None,
            one_read_at_a_time: false,
        }
    }
}

pub use crate::progress::Progress;

/// What a backup produced.
#[derive(Debug)]
pub struct BackupOutcome {
    /// The new checkpoint's id (`None` after a dry run).
    pub id: Option<CheckpointId>,
    pub checkpoint: Checkpoint,
    pub errors: Vec<PathError>,
}

/// Matches paths against the exclude patterns.
struct Excludes {
    by_name: GlobSet,
    by_path: GlobSet,
}

impl Excludes {
    fn new(patterns: &[String]) -> Result<Self> {
        let mut by_name = GlobSetBuilder::new();
        let mut by_path = GlobSetBuilder::new();
        for pattern in patterns {
            let glob = Glob::new(pattern).map_err(|e| {
                Error::InvalidInput(format!("bad exclude pattern {pattern:?}: {e}"))
            })?;
            if pattern.contains('/') {
                by_path.add(glob);
            } else {
                by_name.add(glob);
            }
        }
        let build = |b: GlobSetBuilder| b.build().map_err(|e| Error::InvalidInput(e.to_string()));
        Ok(Excludes {
            by_name: build(by_name)?,
            by_path: build(by_path)?,
        })
    }

    fn matches(&self, path: &Path) -> bool {
        path.file_name()
            .is_some_and(|name| self.by_name.is_match(name))
            || self.by_path.is_match(path)
    }
}

/// Why a file could not be stored.
pub(crate) enum FileError {
    /// The source could not be read: a soft error, with its message.
    Source(String),
    /// The repository could not be written, or the source sent data that cannot be trusted:
    /// the backup fails.
    Repository(Error),
}

impl From<std::io::Error> for FileError {
    fn from(e: std::io::Error) -> Self {
        FileError::Source(e.to_string())
    }
}

/// A file for the workers.
struct FileJob {
    path: PathBuf,
    result: Sender<Result<(Content, u64), FileError>>,
}

fn open_source(path: &Path) -> std::io::Result<fs::File> {
    // O_NOATIME keeps the backup from touching access times; only the owner (or root) may
    // ask for it, so fall back without it.
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOATIME | libc::O_NOFOLLOW)
        .open(path)
        .or_else(|_| {
            fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)
        })
}

/// Asks the kernel to start reading the start of a file the workers will read soon, so the
/// reads of many small files overlap on the disk instead of waiting one by one. Holds no
/// memory of its own: the bytes land in the page cache.
fn read_ahead(path: &Path) {
    if let Ok(file) = open_source(path) {
        // SAFETY: posix_fadvise only reads its integer arguments; the descriptor is open.
        unsafe {
            libc::posix_fadvise(
                file.as_raw_fd(),
                0,
                READ_AHEAD_BYTES,
                libc::POSIX_FADV_WILLNEED,
            )
        };
    }
}

/// Reads, chunks and stores one file; returns its content and the bytes read.
fn store_file(
    sink: &BlobSink,
    read_limiter: Option<&RateLimiter>,
    path: &Path,
    buffer: &mut Vec<u8>,
    progress: &Progress,
) -> Result<(Content, u64), FileError> {
    let file = Throttled::new(open_source(path)?, read_limiter);
    let mut chunks = Vec::new();
    let read = sink
        .repo()
        .chunker()
        .for_each_chunk(file, buffer, |chunk| {
            crate::interrupt::check().map_err(FileError::Repository)?;
            let id = sink
                .store(BlobKind::Data, chunk)
                .map_err(FileError::Repository)?;
            chunks.push(ChunkRef {
                id,
                length: chunk.len() as u32,
            });
            progress
                .bytes_read
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            Ok::<(), FileError>(())
        })?;
    let content = file_content(sink, chunks).map_err(FileError::Repository)?;
    Ok((content, read))
}

/// A file's content for its tree entry: the chunks inline, or stored as a chunk list blob
/// when there are many.
pub(crate) fn file_content(sink: &BlobSink, chunks: Vec<ChunkRef>) -> Result<Content> {
    if chunks.len() > INLINE_CHUNKS_MAX {
        let list = encode_chunk_list(&chunks);
        Ok(Content::ChunkList(sink.store(BlobKind::ChunkList, &list)?))
    } else {
        Ok(Content::Chunks(chunks))
    }
}

fn run_file_worker(
    sink: &BlobSink,
    read_limiter: Option<&RateLimiter>,
    jobs: Receiver<FileJob>,
    progress: &Progress,
) {
    let mut buffer = Vec::new();
    for job in jobs {
        // Once interrupted, the queued files are answered without being read.
        let result = match crate::interrupt::check() {
            Ok(()) => store_file(sink, read_limiter, &job.path, &mut buffer, progress),
            Err(e) => Err(FileError::Repository(e)),
        };
        // The tree builder may have stopped after a fatal error; then nobody waits.
        let _ = job.result.send(result);
    }
}

/// One entry of a directory being built.
pub(crate) enum PendingEntry {
    Ready(Entry),
    File(Entry, PathBuf, Receiver<Result<(Content, u64), FileError>>),
    Dir(Entry, Receiver<BlobId>),
}

/// A directory whose children have all been scanned.
pub(crate) struct PendingDir {
    pub(crate) entries: Vec<PendingEntry>,
    pub(crate) done: Sender<BlobId>,
}

/// Resolves the pending entries of each directory, in post-order, and stores its tree.
pub(crate) fn run_tree_builder(
    sink: &BlobSink,
    dirs: Receiver<PendingDir>,
    errors: &Mutex<Vec<PathError>>,
    progress: &Progress,
) -> Result<CheckpointStats> {
    let mut stats = CheckpointStats::default();
    for dir in dirs {
        let mut entries = Vec::with_capacity(dir.entries.len());
        for pending in dir.entries {
            let entry = match pending {
                PendingEntry::Ready(entry) => entry,
                PendingEntry::File(mut entry, path, result) => {
                    match result.recv().expect("workers answer every job") {
                        Ok((content, read)) => {
                            entry.kind = EntryKind::File(content);
                            entry.size = read;
                            entry
                        }
                        Err(FileError::Repository(e)) => return Err(e),
                        Err(FileError::Source(message)) => {
                            errors
                                .lock()
                                .expect("not poisoned")
                                .push(PathError { path, message });
                            continue;
                        }
                    }
                }
                PendingEntry::Dir(mut entry, tree) => {
                    let id = tree
                        .recv()
                        .map_err(|_| Error::InvalidInput("tree builder lost a directory".into()))?;
                    entry.kind = EntryKind::Dir(id);
                    entry
                }
            };
            match &entry.kind {
                EntryKind::File(_) => {
                    stats.files += 1;
                    stats.bytes += entry.size;
                    progress.file_done(entry.size);
                }
                EntryKind::Dir(_) => stats.dirs += 1,
                _ => {}
            }
            entries.push(entry);
        }
        let tree = Tree::from_entries(entries);
        let id = sink.store(BlobKind::Tree, &tree.encode())?;
        // The parent's receiver is gone only when the walk was abandoned.
        let _ = dir.done.send(id);
    }
    Ok(stats)
}

/// Walks the source and feeds the workers and the tree builder.
struct Walker<'a> {
    repo: &'a Repository,
    excludes: &'a Excludes,
    files: Sender<FileJob>,
    /// Files about to be read, for the read-ahead threads.
    read_ahead: Sender<PathBuf>,
    dirs: Sender<PendingDir>,
    errors: &'a Mutex<Vec<PathError>>,
    parent_trees: &'a ParentTrees,
    /// Whether a parent's chunk list must be found in the index before it is reused: unless
    /// the cache trusts the parent (`BlobIndex::trusts_parent`).
    verify_reused: bool,
}

pub(crate) fn abandoned() -> Error {
    Error::InvalidInput("backup stopped".into())
}

impl Walker<'_> {
    fn soft_error(&self, path: &Path, message: impl ToString) {
        self.errors.lock().expect("not poisoned").push(PathError {
            path: path.to_owned(),
            message: message.to_string(),
        });
    }

    /// The parent checkpoint's tree for a directory, if there is a usable one.
    fn parent_tree(&self, parent: Option<&Entry>) -> Option<Arc<Tree>> {
        let EntryKind::Dir(id) = parent?.kind else {
            return None;
        };
        if let Some((_, tree)) = self.parent_trees.ahead.remove(&id) {
            return Some(tree);
        }
        load_tree(self.repo, &id)
            .map(Arc::new)
            .map_err(|e| tracing::warn!("parent tree {id} unreadable, reading all files: {e}"))
            .ok()
    }

    /// Whether every blob of a parent's file content is in the index, as far as it must be
    /// checked (`verify_reused`). One dropped by `cairn repair packs` is not: the file is
    /// read again, so the backup stores it anew and heals the older checkpoints that need
    /// it, instead of referring to it once more.
    fn is_indexed(&self, content: &Content) -> bool {
        if !self.verify_reused {
            return true;
        }
        let index = self.repo.index();
        if let Content::ChunkList(list) = content
            && !index.contains(list).unwrap_or(false)
        {
            return false;
        }
        crate::tree::file_chunks(self.repo, content).is_ok_and(|chunks| {
            chunks
                .iter()
                .all(|chunk| index.contains(&chunk.id).unwrap_or(false))
        })
    }

    /// Scans directory `path` and everything below it; returns where its tree id will arrive.
    fn scan_dir(&self, path: &Path, parent: Option<&Tree>) -> Result<Receiver<BlobId>> {
        let mut children = sorted_children(path).unwrap_or_else(|e| {
            self.soft_error(path, e);
            Vec::new()
        });
        let mut entries = Vec::with_capacity(children.len());
        for (name, child) in children.drain(..) {
            match child {
                // Stats relative to the open directory: no path walk from the root per entry.
                Ok(child) => {
                    let stat = || child.metadata();
                    entries.extend(self.scan_entry(&child.path(), name, stat, parent)?);
                }
                Err(e) => self.soft_error(path, e),
            }
        }
        self.send_dir(entries)
    }

    /// Scans several sources (or one that is not a directory) into a root directory holding
    /// one entry per source, named by its base name.
    fn scan_sources(&self, sources: &[PathBuf], parent: Option<&Tree>) -> Result<Receiver<BlobId>> {
        let mut entries = Vec::with_capacity(sources.len());
        for source in sources {
            let stat = || fs::symlink_metadata(source);
            entries.extend(self.scan_entry(source, base_name(source), stat, parent)?);
        }
        self.send_dir(entries)
    }

    /// Hands a scanned directory to the tree builder; returns where its tree id will arrive.
    fn send_dir(&self, entries: Vec<PendingEntry>) -> Result<Receiver<BlobId>> {
        let (done, receiver) = bounded(1);
        self.dirs
            .send(PendingDir { entries, done })
            .map_err(|_| abandoned())?;
        Ok(receiver)
    }

    /// Scans one path named `name` in its directory, whose metadata (not following symlinks)
    /// `stat` reads; `None` when it is excluded or unreadable.
    fn scan_entry(
        &self,
        path: &Path,
        name: Vec<u8>,
        stat: impl FnOnce() -> std::io::Result<Metadata>,
        parent: Option<&Tree>,
    ) -> Result<Option<PendingEntry>> {
        crate::interrupt::check()?;
        if self.excludes.matches(path) {
            return Ok(None);
        }
        let metadata = match stat() {
            Ok(m) => m,
            Err(e) => {
                self.soft_error(path, e);
                return Ok(None);
            }
        };
        let file_type = metadata.file_type();
        if file_type.is_socket() {
            tracing::warn!(
                "{}: skipping socket (sockets cannot be backed up)",
                path.display()
            );
            return Ok(None);
        }
        let xattrs = read_xattrs(path).unwrap_or_else(|e| {
            tracing::warn!("{}: cannot read xattrs: {e}", path.display());
            Vec::new()
        });
        let parent_entry = parent.and_then(|tree| tree.get(&name));
        let placeholder = EntryKind::Fifo;
        let entry = |kind| entry_from_metadata(name.clone(), &metadata, kind, xattrs.clone());
        let pending = if file_type.is_dir() {
            let parent_tree = self.parent_tree(parent_entry);
            let tree = self.scan_dir(path, parent_tree.as_deref())?;
            PendingEntry::Dir(entry(placeholder), tree)
        } else if file_type.is_file() {
            match reusable_content(parent_entry, &metadata).filter(|c| self.is_indexed(c)) {
                Some(content) => PendingEntry::Ready(entry(EntryKind::File(content))),
                None => {
                    let (result, receiver) = bounded(1);
                    // Dropped when the read-ahead threads are busy: only a hint.
                    let _ = self.read_ahead.try_send(path.to_owned());
                    self.files
                        .send(FileJob {
                            path: path.to_owned(),
                            result,
                        })
                        .map_err(|_| abandoned())?;
                    PendingEntry::File(entry(placeholder), path.to_owned(), receiver)
                }
            }
        } else if file_type.is_symlink() {
            match fs::read_link(path) {
                Ok(target) => PendingEntry::Ready(entry(EntryKind::Symlink(
                    target.as_os_str().as_bytes().to_vec(),
                ))),
                Err(e) => {
                    self.soft_error(path, e);
                    return Ok(None);
                }
            }
        } else if file_type.is_fifo() {
            PendingEntry::Ready(entry(EntryKind::Fifo))
        } else if file_type.is_char_device() {
            PendingEntry::Ready(entry(EntryKind::CharDevice(metadata.rdev())))
        } else if file_type.is_block_device() {
            PendingEntry::Ready(entry(EntryKind::BlockDevice(metadata.rdev())))
        } else {
            self.soft_error(path, "unknown file type");
            return Ok(None);
        };
        Ok(Some(pending))
    }
}

/// The entries of directory `path` with their names, in byte order of the names (the order
/// of a tree's entries).
fn sorted_children(path: &Path) -> std::io::Result<Vec<(Vec<u8>, std::io::Result<fs::DirEntry>)>> {
    let mut children: Vec<_> = fs::read_dir(path)?
        .map(|child| {
            let name = child.as_ref().map(|c| c.file_name().into_vec());
            (name.unwrap_or_default(), child)
        })
        .collect();
    children.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(children)
}

/// The parent's chunk list when the file is unchanged: same size, mtime, ctime and inode.
fn reusable_content(parent: Option<&Entry>, metadata: &Metadata) -> Option<Content> {
    let parent = parent?;
    let EntryKind::File(content) = &parent.kind else {
        return None;
    };
    let unchanged = parent.size == metadata.len()
        && parent.mtime_ns == mtime_ns(metadata)
        && parent.ctime_ns == ctime_ns(metadata)
        && parent.inode == metadata.ino();
    unchanged.then(|| content.clone())
}

/// The last component of a source path, as an entry name.
fn base_name(path: &Path) -> Vec<u8> {
    path.file_name()
        .map(|n| n.as_bytes().to_vec())
        .unwrap_or_default()
}

/// `path` made absolute against the working directory and cleaned without looking at the
/// filesystem: `.` and empty components dropped, `..` taking away the component before it
/// (never above `/`). How a source path is recorded in a checkpoint, and how `--path` filters
/// name one.
pub fn clean_path(path: &Path) -> std::io::Result<PathBuf> {
    let absolute = std::path::absolute(path)?;
    let components: Vec<_> = absolute.components().collect();
    Ok(crate::target::apply_lexically(
        PathBuf::from("/"),
        &components,
    ))
}

/// The absolute, cleaned form of a source path as recorded in the checkpoint, so that
/// `src/misc/../misc` and `src/misc` are one series. When cleaning would name another file
/// (`..` after a symlink to a directory leads out of that directory, not back), the path
/// with its directories' symlinks resolved is recorded instead.
pub(crate) fn recorded_path(path: &Path) -> Result<PathBuf> {
    let resolving = |e| Error::io(format!("resolving {}", path.display()), e);
    let clean = clean_path(path).map_err(resolving)?;
    let has_parent_step = path
        .components()
        .any(|c| c == std::path::Component::ParentDir);
    if !has_parent_step {
        return Ok(clean);
    }
    let identity = |p: &Path| fs::symlink_metadata(p).map(|m| (m.dev(), m.ino()));
    let given =
        identity(path).map_err(|e| Error::io(format!("cannot back up {}", path.display()), e))?;
    if identity(&clean).ok() == Some(given) {
        return Ok(clean);
    }
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => Ok(fs::canonicalize(parent).map_err(resolving)?.join(name)),
        // `a/..`: a directory, whose own symlinks may be resolved too.
        _ => fs::canonicalize(path).map_err(resolving),
    }
}

/// Parent trees decoded ahead of the walker, taken out as it reaches them.
struct ParentTrees {
    ahead: quick_cache::sync::Cache<BlobId, Arc<Tree>>,
}

/// Work waiting for the threads of `parallel_depth_first`, and how many items are in hand.
struct DepthFirstQueue<T> {
    pending: Vec<T>,
    busy: usize,
}

/// Visits `roots` and everything `visit` returns for them, on `threads` threads, roughly
/// depth first in the given order (the first child is taken next), until nothing is left or
/// `stop` is set. `visit` may block (`stop` is checked between items).
fn parallel_depth_first<T: Send>(
    roots: Vec<T>,
    threads: usize,
    stop: &AtomicBool,
    visit: impl Fn(T) -> Vec<T> + Sync,
) {
    let queue = Mutex::new(DepthFirstQueue {
        pending: roots.into_iter().rev().collect(),
        busy: 0,
    });
    let wakeup = std::sync::Condvar::new();
    let work = || loop {
        let item = {
            let mut queue = queue.lock().expect("not poisoned");
            loop {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                if let Some(item) = queue.pending.pop() {
                    queue.busy += 1;
                    break item;
                }
                if queue.busy == 0 {
                    return;
                }
                queue = wakeup.wait(queue).expect("not poisoned");
            }
        };
        let children = visit(item);
        let mut queue = queue.lock().expect("not poisoned");
        queue.busy -= 1;
        queue.pending.extend(children.into_iter().rev());
        wakeup.notify_all();
    };
    std::thread::scope(|scope| {
        for _ in 1..threads.max(1) {
            scope.spawn(work);
        }
        work();
    });
}

/// Counts the files and bytes below `paths` into `progress` (the ETA's denominator) on
/// several threads. Running ahead of the walker, it also brings directories and inodes into
/// the kernel's caches, so on a cold cache the walker's own calls rarely wait for the disk:
/// the many small reads of a metadata walk overlap instead of queueing one by one. Stops
/// early, without a final count, when `stop` is set.
fn scan_ahead(
    paths: &[PathBuf],
    excludes: &Excludes,
    progress: &Progress,
    threads: usize,
    stop: &AtomicBool,
) {
    let mut roots = Vec::new();
    for path in paths {
        scan_ahead_visit(
            path.clone(),
            || fs::symlink_metadata(path),
            excludes,
            progress,
            &mut roots,
        );
    }
    parallel_depth_first(roots, threads, stop, |dir: PathBuf| {
        let mut subdirs = Vec::new();
        for (_, child) in sorted_children(&dir).unwrap_or_default() {
            if let Ok(child) = child {
                let stat = || child.metadata();
                scan_ahead_visit(child.path(), stat, excludes, progress, &mut subdirs);
            }
        }
        subdirs
    });
    if !stop.load(Ordering::Relaxed) {
        progress.counted.store(true, Ordering::Relaxed);
    }
}

/// Counts the files and bytes below directory `root` into `progress`, as a backup's scan
/// ahead does, and marks the count final unless `stop` was set first.
pub(crate) fn count_tree(root: &Path, progress: &Progress, threads: usize, stop: &AtomicBool) {
    let no_excludes = Excludes::new(&[]).expect("no patterns, nothing to reject");
    scan_ahead(&[root.to_owned()], &no_excludes, progress, threads, stop);
}

/// Decodes the parent checkpoint's trees below `root` ahead of the walker, in its order, into
/// `trees`, which the walker empties as it goes; waits while `trees` holds its fill, so memory
/// stays bounded whatever the size of the tree.
fn load_parent_trees_ahead(repo: &Repository, root: &Tree, trees: &ParentTrees, stop: &AtomicBool) {
    let subdirs = |tree: &Tree| -> Vec<BlobId> {
        tree.entries
            .iter()
            .filter_map(|entry| match entry.kind {
                EntryKind::Dir(id) => Some(id),
                _ => None,
            })
            .collect()
    };
    parallel_depth_first(subdirs(root), PARENT_TREE_THREADS, stop, |id: BlobId| {
        // Wait a little for the walker to catch up; entries it never takes (directories gone
        // from the source) are evicted once the wait is over.
        for _ in 0..20 {
            if trees.ahead.len() < PARENT_TREES_AHEAD || stop.load(Ordering::Relaxed) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        match load_tree(repo, &id) {
            Ok(tree) => {
                let children = subdirs(&tree);
                trees.ahead.insert(id, Arc::new(tree));
                children
            }
            Err(_) => Vec::new(),
        }
    });
}

/// Counts `path` when it is a file, or adds it to `subdirs` when it is a directory; `stat`
/// reads its metadata (not following symlinks).
fn scan_ahead_visit(
    path: PathBuf,
    stat: impl FnOnce() -> std::io::Result<Metadata>,
    excludes: &Excludes,
    progress: &Progress,
    subdirs: &mut Vec<PathBuf>,
) {
    if excludes.matches(&path) {
        return;
    }
    let Ok(metadata) = stat() else {
        return;
    };
    if metadata.is_dir() {
        subdirs.push(path);
    } else if metadata.is_file() {
        progress.total_files.fetch_add(1, Ordering::Relaxed);
        progress
            .total_bytes
            .fetch_add(metadata.len(), Ordering::Relaxed);
    }
}

/// The checkpoint whose stat cache a backup of `paths` from `host` uses.
fn find_parent(
    repo: &Repository,
    host: &str,
    paths: &[String],
) -> Result<Option<(CheckpointId, Checkpoint)>> {
    let newest_known = |listing: crate::catalogue::Listing| {
        listing
            .into_iter()
            .rev()
            .find(|s| s.label.series() == (host, paths, None))
    };
    // The catalogue as this cache knows it, without a listing; a parent forgotten since
    // (its trees may be pruned) sends it to the repository.
    let mut found = newest_known(repo.catalogue().known(repo)?);
    // A parent saved through this cache with no index file removed since keeps every
    // blob, even if its record was forgotten meanwhile.
    if let Some(summary) = &found
        && !repo.index().trusts_parent(&summary.id)?
        && !checkpoint::exists(repo, &summary.id)?
    {
        found = newest_known(checkpoint::list_shared(repo)?);
    }
    found
        .map(|summary| Ok((summary.id, repo.catalogue().record(repo, &summary)?)))
        .transpose()
}

/// Backs up `options.paths` into `repo` and writes the checkpoint (unless a dry run).
pub fn run(
    repo: &Repository,
    options: &BackupOptions,
    progress: &Progress,
) -> Result<BackupOutcome> {
    run_opening(|| Ok(repo), options, progress)
}

/// Like [`run`], for a repository that `open` opens: the sources are checked first, and the
/// scan ahead starts walking them while `open` derives the key and loads the index.
pub fn run_opening<R, E>(
    open: impl FnOnce() -> std::result::Result<R, E>,
    options: &BackupOptions,
    progress: &Progress,
) -> std::result::Result<BackupOutcome, E>
where
    R: std::borrow::Borrow<Repository>,
    E: From<Error>,
{
    let sources = Sources::check(options)?;
    let scan_threads = if options.one_read_at_a_time {
        1
    } else {
        SCAN_AHEAD_THREADS
    };
    let scan_stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let scanning = scope.spawn(|| {
            scan_ahead(
                &sources.paths,
                &sources.excludes,
                progress,
                scan_threads,
                &scan_stop,
            )
        });
        let outcome = open().and_then(|repo| {
            Ok(back_up(
                repo.borrow(),
                options,
                &sources,
                progress,
                &scan_stop,
            )?)
        });
        if outcome.is_err() {
            scan_stop.store(true, Ordering::Relaxed);
        }
        scanning.join().expect("the scan ahead does not panic");
        outcome
    })
}

/// The checked inputs of a backup: absolute source paths and the exclude patterns.
struct Sources {
    started: Instant,
    time: String,
    paths: Vec<PathBuf>,
    /// The paths as the checkpoint records them.
    path_strings: Vec<String>,
    excludes: Excludes,
}

impl Sources {
    fn check(options: &BackupOptions) -> Result<Sources> {
        let started = Instant::now();
        let time = humantime::format_rfc3339_nanos(SystemTime::now()).to_string();
        if let Some(tag) = options
            .tags
            .iter()
            .find(|t| !crate::tree::is_valid_name(t.as_bytes()))
        {
            return Err(Error::InvalidInput(format!(
                "tag {tag:?} is not usable: a tag must be non-empty and contain no `/` (it names a directory in the mount)"
            )));
        }
        if options.paths.is_empty() {
            return Err(Error::InvalidInput(
                "nothing to back up: give at least one path".into(),
            ));
        }
        let mut paths = Vec::new();
        for path in &options.paths {
            let absolute = recorded_path(path)?;
            fs::symlink_metadata(&absolute)
                .map_err(|e| Error::io(format!("cannot back up {}", path.display()), e))?;
            paths.push(absolute);
        }
        if options.paths.len() > 1 {
            let mut names = HashSet::new();
            for source in &paths {
                let name = base_name(source);
                if !crate::tree::is_valid_name(&name) || !names.insert(name) {
                    return Err(Error::InvalidInput(format!(
                        "{} cannot be one of several backup paths: each needs a distinct base name",
                        source.display()
                    )));
                }
            }
        }
        let path_strings = paths
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        Ok(Sources {
            started,
            time,
            paths,
            path_strings,
            excludes: Excludes::new(&options.excludes)?,
        })
    }
}

/// The backup itself, with the scan ahead already running (told to stop through
/// `scan_stop` when the walk fails).
fn back_up(
    repo: &Repository,
    options: &BackupOptions,
    sources: &Sources,
    progress: &Progress,
    scan_stop: &AtomicBool,
) -> Result<BackupOutcome> {
    let Sources {
        started,
        time,
        paths: sources,
        path_strings,
        excludes,
    } = sources;
    // The lock comes before the parent is read: a prune waited for meanwhile could delete
    // the chunks the parent's unchanged files would be taken from.
    let lock = if options.dry_run {
        None
    } else {
        Some(crate::repo::lock::acquire(repo, false, "backup")?)
    };
    let orphans = take_orphan_packs(repo, options.dry_run)?;
    let parent = match options.parent {
        Some(id) => Some((id, checkpoint::load(repo, &id)?)),
        None => find_parent(repo, &options.host, path_strings)?,
    };
    let parent_root = match &parent {
        Some((_, c)) => Some(load_tree(repo, &c.tree)?),
        None => None,
    };
    let verify_reused = match &parent {
        Some((id, _)) => !repo.index().trusts_parent(id)?,
        None => false,
    };
    // One directory: the checkpoint's root is its contents, and its own metadata is kept.
    let single_dir = match sources.as_slice() {
        [single] => fs::symlink_metadata(single)
            .ok()
            .filter(Metadata::is_dir)
            .map(|metadata| (single.clone(), metadata)),
        _ => None,
    };

    let errors = Mutex::new(Vec::new());
    // Threads: file workers, read ahead; and whether parent trees are decoded ahead. At low
    // priority, one read in flight at a time.
    let (threads, read_ahead_threads, parent_trees_ahead) = if options.one_read_at_a_time {
        (1, 0, false)
    } else {
        (options.threads.max(1), READ_AHEAD_THREADS, true)
    };
    let read_limiter = options.read_limit.map(RateLimiter::new);
    let walk_done = AtomicBool::new(false);
    let parent_trees = ParentTrees {
        ahead: quick_cache::sync::Cache::new(PARENT_TREES_AHEAD),
    };
    let walk = |sink: &BlobSink| {
        std::thread::scope(|scope| -> Result<(BlobId, CheckpointStats)> {
            if let Some(root) = &parent_root
                && parent_trees_ahead
            {
                let (trees, stop) = (&parent_trees, &walk_done);
                scope.spawn(move || load_parent_trees_ahead(repo, root, trees, stop));
            }
            let (file_tx, file_rx) = bounded::<FileJob>(FILES_QUEUED);
            let (read_ahead_tx, read_ahead_rx) = bounded::<PathBuf>(FILES_QUEUED);
            for _ in 0..read_ahead_threads {
                let paths = read_ahead_rx.clone();
                scope.spawn(move || paths.into_iter().for_each(|path| read_ahead(&path)));
            }
            // With no read-ahead threads the walker's hints fail at once instead of queueing.
            drop(read_ahead_rx);
            let (dir_tx, dir_rx) = bounded(1024);
            for _ in 0..threads {
                let (jobs, limiter) = (file_rx.clone(), read_limiter.as_ref());
                scope.spawn(move || run_file_worker(sink, limiter, jobs, progress));
            }
            drop(file_rx);
            let builder = scope.spawn(|| run_tree_builder(sink, dir_rx, &errors, progress));
            let walker = Walker {
                repo,
                excludes,
                files: file_tx,
                read_ahead: read_ahead_tx,
                dirs: dir_tx,
                errors: &errors,
                parent_trees: &parent_trees,
                verify_reused,
            };
            let walked = match &single_dir {
                Some((single, _)) => walker.scan_dir(single, parent_root.as_ref()),
                None => walker.scan_sources(sources, parent_root.as_ref()),
            };
            drop(walker);
            walk_done.store(true, Ordering::Relaxed);
            let built = builder.join().expect("tree builder does not panic");
            if walked.is_err() || built.is_err() {
                scan_stop.store(true, Ordering::Relaxed);
            }
            let stats = built?;
            let root = walked?.recv().map_err(|_| abandoned())?;
            Ok((root, stats))
        })
    };
    let ((root, mut stats), added_blobs) =
        with_blob_sink(repo, options.dry_run, threads * 2, progress, |sink| {
            sink.count_as_stored(&orphans);
            walk(sink)
        })?;
    stats.added_blobs = added_blobs;

    let errors = errors.into_inner().expect("not poisoned");
    stats.errors = errors.len() as u64;
    stats.bytes_read = progress.bytes_read.load(Ordering::Relaxed);
    stats.added_bytes = progress.added_bytes.load(Ordering::Relaxed);
    stats.duration_ms = started.elapsed().as_millis() as u64;
    let checkpoint = Checkpoint {
        time: time.clone(),
        host: options.host.clone(),
        paths: path_strings.clone(),
        tags: options.tags.clone(),
        tree: root,
        root: single_dir.map(|(path, metadata)| {
            let xattrs = read_xattrs(&path).unwrap_or_default();
            entry_from_metadata(base_name(&path), &metadata, EntryKind::Dir(root), xattrs)
        }),
        parent: parent.map(|(id, _)| id),
        stats,
        program_version: env!("CARGO_PKG_VERSION").to_owned(),
        pulled_from: None,
    };
    let id = if options.dry_run {
        None
    } else {
        if let Some(lock) = &lock {
            lock.ensure_held()?;
        }
        let id = checkpoint::save(repo, &checkpoint)?;
        // Every blob it refers to is indexed: the next backup may reuse it unchecked.
        repo.index().trust_parent(&id)?;
        Some(id)
    };
    Ok(BackupOutcome {
        id,
        checkpoint,
        errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn parallel_depth_first_visits_every_node_once_and_stops_when_asked() {
        // Node n has children 4n+1 ..= 4n+4, below 5,000.
        let children = |n: u32| (4 * n + 1..=4 * n + 4).filter(|c| *c < 5000).collect();
        let seen = Mutex::new(Vec::new());
        parallel_depth_first(vec![0], 3, &AtomicBool::new(false), |n| {
            seen.lock().unwrap().push(n);
            children(n)
        });
        let mut seen = seen.into_inner().unwrap();
        seen.sort();
        assert_eq!(seen, (0..5000).collect::<Vec<_>>());

        let stop = AtomicBool::new(false);
        let visited = AtomicU64::new(0);
        parallel_depth_first(vec![0], 3, &stop, |n| {
            if visited.fetch_add(1, Ordering::Relaxed) == 10 {
                stop.store(true, Ordering::Relaxed);
            }
            children(n)
        });
        assert!(visited.load(Ordering::Relaxed) < 20);
    }
}
