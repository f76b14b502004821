//! Backup: a source in, one checkpoint out. This is the one engine behind `cairn backup` of
//! local paths (`local`) and the pull of a directory served by `cairn serve --source`
//! (`remote`); a source says only what differs (how a directory is listed, how a changed
//! file's chunks reach the repository, how the totals are counted, which checkpoint is the
//! parent) and the engine does the rest the same way for both.
//!
//! The work is a bounded pipeline of threads joined by crossbeam channels:
//!
//! ```text
//! walker ──file jobs──▶ file workers ──encoded blobs──▶ packer ──▶ packs + index files
//!    └──dirs (post-order)──▶ tree builder ──tree blobs──┘
//! ```
//!
//! The walker (`walk`, the calling thread) lists directories in name order, compares each
//! file with the parent checkpoint (the stat cache: same size, mtime, ctime and inode ⇒ reuse
//! the old chunk list without reading the file, when the index still lists all its chunks)
//! and hands the rest to the source's file workers, one per core (or per transfer), which
//! store the chunks the repository lacks. The tree builder (`trees`) receives each directory
//! after its children, waits for its files and stores the tree bottom-up. The packer appends
//! blobs to 16 MiB packs and writes an index file every few packs, so an interrupted backup
//! leaves reusable work behind. Every queue is bounded, so memory stays flat whatever the
//! size of the source. The checkpoint record is written last, after every pack and index
//! file is durable (invariant 1).
//!
//! Source files that vanish or cannot be read are soft errors: they are listed, left out of
//! the checkpoint, and the backup goes on.

mod local;
#[cfg(feature = "client")]
pub(crate) mod remote;
mod stdin;
mod trees;
mod walk;

pub use crate::progress::Progress;
pub(crate) use local::count_tree;
#[cfg(feature = "server")]
pub(crate) use local::recorded_path;
pub use local::{BackupOptions, clean_path};
pub use stdin::run_stream;

use crate::checkpoint::{self, Checkpoint};
use crate::error::{Error, PathError, Result};
use crate::id::{CheckpointId, TreeId};
use crate::repo::Repository;
use crate::repo::writer::{BlobSink, recover_orphan_packs, with_blob_sink};
use crate::tree::{Content, EntryKind, Listed, load_tree};
use crossbeam_channel::{Receiver, Sender, bounded};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime};
use trees::run_tree_builder;
use walk::{ParentTrees, Walker, load_parent_trees_ahead};

/// What a backup produced.
#[derive(Debug)]
pub struct BackupOutcome {
    /// The new checkpoint's id (`None` after a dry run).
    pub id: Option<CheckpointId>,
    pub checkpoint: Checkpoint,
    pub errors: Vec<PathError>,
    /// The exclude patterns, as written, that matched nothing in the source.
    pub unmatched_excludes: Vec<String>,
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
    let started = Started::now();
    let source = local::LocalSource::check(options)?;
    let mut outcome = back_up_opening(open, &source, &source.settings(options), started, progress)?;
    outcome.unmatched_excludes = source.unmatched_excludes();
    for pattern in &outcome.unmatched_excludes {
        tracing::warn!(
            "exclude {pattern:?} matched nothing: a pattern with a `/` is relative to the backup root (`/build`, `src/gen`), one without matches a name anywhere (`*.o`); see docs/BACKUP.md"
        );
    }
    Ok(outcome)
}

/// Where a backup reads from: what the engine asks of a local directory or a served one.
pub(crate) trait Source: Sync {
    /// How the source names one of its files or directories.
    type Path: Clone + Send;

    /// The checkpoint's host and paths, as the record names the source.
    fn identity(&self) -> &Identity;

    /// The checkpoint whose unchanged files this backup takes over.
    fn find_parent(&self, repo: &Repository) -> Result<Option<(CheckpointId, Checkpoint)>>;

    /// The checkpoint's root: one directory's contents, or one entry per path.
    fn root(&self, errors: &Mutex<Vec<PathError>>) -> Result<Root<Self::Path>>;

    /// The entries of directory `dir`, in name order. One that cannot be listed is reported
    /// in `errors` and walked empty, unless the source can no longer be trusted (then the
    /// backup fails). A file's content and a directory's tree in them are not read.
    fn list(&self, dir: &Self::Path, errors: &Mutex<Vec<PathError>>) -> Result<Vec<Listed>>;

    /// Entry `name` of directory `dir`.
    fn child(&self, dir: &Self::Path, name: &[u8]) -> Self::Path;

    /// Counts the source's files and bytes into `progress` (the ETA's denominator), until
    /// done or `stop` is set.
    fn count_totals(&self, progress: &Progress, stop: &AtomicBool);

    /// A hint that `file`, of `size` bytes, will be read soon, given on the engine's
    /// read-ahead threads.
    fn read_ahead(&self, _file: &Self::Path, _size: u64) {}

    /// Stores the files `jobs` brings until it closes, answering each job: one call per
    /// file worker thread. Each message is a run of small files next to each other in the
    /// walk (stored together, see `walk::Batch`) or one larger file.
    fn store_files(
        &self,
        sink: &BlobSink,
        jobs: Receiver<Vec<FileJob<Self::Path>>>,
        progress: &Progress,
    );

    /// The bytes the backup read from the source, for the checkpoint's statistics.
    fn bytes_read(&self, progress: &Progress) -> u64 {
        progress.bytes_read.load(Ordering::Relaxed)
    }
}

/// How the checkpoint names its source.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub host: String,
    pub paths: Vec<String>,
    /// The URL of a served source.
    pub pulled_from: Option<String>,
}

/// The root of a checkpoint.
pub(crate) enum Root<P> {
    /// One directory: the checkpoint's root tree is its contents, and its own entry (when
    /// known) is kept in the record.
    Dir { path: P, entry: Option<Listed> },
    /// One entry per path, each under its own name in the root tree.
    Paths(Vec<(Listed, P)>),
}

/// How the engine runs for one backup.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Named in the repository's lock while the backup runs.
    pub purpose: &'static str,
    pub tags: Vec<String>,
    /// File workers (at least one is started).
    pub threads: usize,
    /// Threads giving the source's read-ahead hints; none: no hints.
    pub read_ahead_threads: usize,
    /// Whether the parent's trees are decoded ahead of the walker.
    pub parent_trees_ahead: bool,
}

/// When the backup began: its duration and the checkpoint's time count from here.
#[derive(Debug, Clone)]
pub(crate) struct Started {
    at: Instant,
    time: String,
}

impl Started {
    pub(crate) fn now() -> Self {
        Started {
            at: Instant::now(),
            time: humantime::format_rfc3339_nanos(SystemTime::now()).to_string(),
        }
    }
}

/// Why a file could not be stored.
pub(crate) enum FileError {
    /// The source could not be read: a soft error.
    Source(PathError),
    /// The repository could not be written, or the source sent data that cannot be trusted:
    /// the backup fails.
    Repository(Error),
}

/// A stored file's content and the bytes it holds, or why it could not be stored.
pub(crate) type FileResult = std::result::Result<(Content, u64), FileError>;

/// A file for the workers.
pub(crate) struct FileJob<P> {
    pub path: P,
    /// Its size in the listing (what a served source's answer may hold).
    #[cfg_attr(not(feature = "client"), allow(dead_code))]
    pub size: u64,
    pub result: Sender<FileResult>,
}

/// What a walk stopped by a failure elsewhere (the tree builder or a worker) reports.
fn abandoned() -> Error {
    Error::InvalidInput("backup stopped".into())
}

/// Backs `source` up into the repository `open` opens; the source's totals are counted from
/// the start, while the repository opens.
pub(crate) fn back_up_opening<S: Source, R, E>(
    open: impl FnOnce() -> std::result::Result<R, E>,
    source: &S,
    settings: &Settings,
    started: Started,
    progress: &Progress,
) -> std::result::Result<BackupOutcome, E>
where
    R: std::borrow::Borrow<Repository>,
    E: From<Error>,
{
    let stop_counting = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let counting = scope.spawn(|| source.count_totals(progress, &stop_counting));
        let outcome = open().and_then(|repo| {
            Ok(back_up(
                repo.borrow(),
                source,
                settings,
                started,
                progress,
                &stop_counting,
            )?)
        });
        // Done without the total, if the source is still counting.
        stop_counting.store(true, Ordering::Relaxed);
        counting.join().expect("counting does not panic");
        outcome
    })
}

/// The backup itself; `stop_counting` is set as soon as the walk or the trees fail.
fn back_up<S: Source>(
    repo: &Repository,
    source: &S,
    settings: &Settings,
    started: Started,
    progress: &Progress,
    stop_counting: &AtomicBool,
) -> Result<BackupOutcome> {
    // The lock comes before the parent is read: a prune waited for meanwhile could delete
    // the chunks the parent's unchanged files would be taken from.
    let lock = crate::repo::lock::acquire(repo, false, settings.purpose)?;
    recover_orphan_packs(repo)?;
    let parent = source.find_parent(repo)?;
    let parent_root = match &parent {
        Some((_, c)) => Some(std::sync::Arc::new(load_tree(repo, &c.tree)?)),
        None => None,
    };
    let verify_reused = match &parent {
        Some((id, _)) => !repo.index().trusts_parent(id)?,
        None => false,
    };
    match &parent {
        Some((id, record)) => tracing::info!(
            "parent checkpoint {} of {}: files with its size, mtime, ctime and inode are not read again{}",
            id.short(),
            record.time.get(..19).unwrap_or(&record.time),
            if verify_reused {
                " (their chunks are checked in the index)"
            } else {
                ""
            }
        ),
        None => tracing::info!("no parent checkpoint of this source: every file is read"),
    }
    let errors = Mutex::new(Vec::new());
    let root = source.root(&errors)?;
    let root_entry = match &root {
        Root::Dir { entry, .. } => entry.clone(),
        Root::Paths(_) => None,
    };
    let threads = settings.threads.max(1);
    let walk_done = AtomicBool::new(false);
    let parent_trees = ParentTrees::default();
    let walk = |sink: &BlobSink| {
        std::thread::scope(|scope| -> Result<(TreeId, _)> {
            if let Some(root) = &parent_root
                && settings.parent_trees_ahead
            {
                let (trees, stop) = (&parent_trees, &walk_done);
                scope.spawn(move || load_parent_trees_ahead(repo, root, trees, stop));
            }
            let (file_tx, file_rx) = bounded::<Vec<FileJob<S::Path>>>(walk::FILES_QUEUED);
            let (read_ahead_tx, read_ahead_rx) = bounded::<(S::Path, u64)>(walk::FILES_QUEUED);
            for _ in 0..settings.read_ahead_threads {
                let files = read_ahead_rx.clone();
                scope.spawn(move || {
                    files
                        .into_iter()
                        .for_each(|(f, size)| source.read_ahead(&f, size))
                });
            }
            drop(read_ahead_rx);
            let (dir_tx, dir_rx) = bounded(1024);
            for _ in 0..threads {
                let jobs = file_rx.clone();
                scope.spawn(move || source.store_files(sink, jobs, progress));
            }
            drop(file_rx);
            let builder = scope.spawn(|| run_tree_builder(sink, dir_rx, &errors, progress));
            let walker = Walker {
                repo,
                source,
                files: file_tx,
                batch: Default::default(),
                read_ahead: (settings.read_ahead_threads > 0).then_some(read_ahead_tx),
                dirs: dir_tx,
                errors: &errors,
                parent_trees: &parent_trees,
                verify_reused,
                progress,
            };
            let walked = walker.walk(root, parent_root.clone());
            drop(walker);
            walk_done.store(true, Ordering::Relaxed);
            let built = builder.join().expect("tree builder does not panic");
            if walked.is_err() || built.is_err() {
                stop_counting.store(true, Ordering::Relaxed);
            }
            let stats = built?;
            let root = walked?.recv().map_err(|_| abandoned())?;
            Ok((root, stats))
        })
    };
    let ((root, mut stats), added_blobs) = with_blob_sink(repo, threads * 2, progress, walk)?;
    let errors = errors.into_inner().expect("not poisoned");
    stats.added_blobs = added_blobs;
    stats.errors = errors.len() as u64;
    stats.bytes_read = source.bytes_read(progress);
    progress
        .bytes_read
        .store(stats.bytes_read, Ordering::Relaxed);
    stats.added_bytes = progress.added_bytes.load(Ordering::Relaxed);
    stats.duration_ms = started.at.elapsed().as_millis() as u64;
    tracing::info!(
        "walk done: files {}, directories {}, bytes read from the source {}, new blobs {} ({} bytes)",
        stats.files,
        stats.dirs,
        stats.bytes_read,
        stats.added_blobs,
        stats.added_bytes
    );
    let identity = source.identity();
    let checkpoint = Checkpoint {
        time: started.time,
        host: identity.host.clone(),
        paths: identity.paths.clone(),
        tags: settings.tags.clone(),
        tree: root,
        root: root_entry.map(|entry| entry.with_kind(EntryKind::Dir(root))),
        parent: parent.map(|(id, _)| id),
        stats,
        program_version: env!("CARGO_PKG_VERSION").to_owned(),
        pulled_from: identity.pulled_from.clone(),
    };
    lock.ensure_held()?;
    let id = checkpoint::save(repo, &checkpoint)?;
    // Every blob it refers to is indexed: the next backup may reuse it unchecked.
    repo.index().trust_parent(&id)?;
    Ok(BackupOutcome {
        id: (!repo.is_dry_run()).then_some(id),
        checkpoint,
        errors,
        unmatched_excludes: Vec::new(),
    })
}
