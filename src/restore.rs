//! Restore: a checkpoint's tree (or one path in it) back into a directory, exactly.
//!
//! The planner (the calling thread) walks the tree in order, creating directories, symlinks,
//! FIFOs and device nodes as it goes and handing regular files, in batches of up to 256
//! files or 8 MiB, to worker threads, which fetch their chunks ahead, neighbours in a pack in
//! one ranged read (`readahead`), verify them and write the files. Blocks of zeros are written as holes and, unless
//! `sparse` asks to keep them, filled with zeros once the file is complete: cairn does not
//! record which files were sparse, so files come back dense, as with rsync or restic, and
//! with `--sparse` every zero run becomes a hole. Hard links are made once their first path
//! is written, and directory metadata is applied last, deepest first, so writing into a
//! directory does not disturb its mtime.
//!
//! Nothing is ever written outside the target (invariant 4): every write goes through
//! `target::TargetDir`, beneath the target's descriptor, names come from validated trees, and
//! whatever already sits at a path — with `--overwrite` — is removed, never followed. The
//! tree is walked with an explicit stack, so depth costs heap, not the thread's stack. A file
//! whose chunk is missing or corrupt is deleted, never left with wrong bytes.
//!
//! A full filesystem (`ENOSPC`, `EDQUOT`) stops the restore at once: the file being written is
//! deleted, the workers drop the files still queued, the walk stops, no hard links are made,
//! and the outcome says where it stopped and how much space is left, so the user gets one
//! message instead of one error per remaining file.

use crate::error::{Error, IoContext, Result};
use crate::fsmeta::running_as_root;
use crate::id::BlobId;
use crate::readahead::{self, ChunkStream, Delivered};
use crate::repo::Repository;
use crate::space::{OutOfSpace, SpaceFailure, is_out_of_space};
use crate::target::{TargetDir, check_path_length, set_directories_metadata, set_metadata_of};
use crate::tree::{ChunkRef, Entry, EntryKind, is_valid_name, load_tree, sized_file_chunks};
use crossbeam_channel::{Receiver, bounded};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Runs of zero bytes at least this long, aligned to it, are left as holes.
const HOLE_BLOCK_BYTES: usize = 4096;

/// Inputs of a restore.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Restore into a target that already has content, replacing what is in the way.
    pub overwrite: bool,
    /// File workers; defaults to twice the number of cores (they wait on I/O).
    pub threads: usize,
    /// Leave runs of zeros as holes (`--sparse`); otherwise files are written dense.
    pub sparse: bool,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            overwrite: false,
            threads: std::thread::available_parallelism().map_or(4, |n| 2 * n.get()),
            sparse: false,
        }
    }
}

/// Live counters for a progress display.
#[derive(Debug, Default)]
pub struct RestoreProgress {
    pub files_done: AtomicU64,
    pub bytes_done: AtomicU64,
}

/// A path that could not be restored.
#[derive(Debug, Clone)]
pub struct RestoreError {
    pub path: PathBuf,
    pub message: String,
}

/// What a restore did.
#[derive(Debug, Default)]
pub struct RestoreStats {
    /// Regular files written or linked.
    pub files: u64,
    pub dirs: u64,
    /// Bytes of content written.
    pub bytes: u64,
    /// Entries not restored: device nodes without root, for example.
    pub skipped: Vec<String>,
    pub errors: Vec<RestoreError>,
    /// Set when the target's filesystem filled up and the restore stopped; its missing
    /// bytes are for the caller, who knows the total, to set.
    pub out_of_space: Option<OutOfSpace>,
}

/// Writes `data` at `offset`, skipping aligned all-zero blocks so they stay holes.
pub(crate) fn write_sparse(file: &fs::File, offset: u64, data: &[u8]) -> std::io::Result<()> {
    let mut run_start = None;
    let mut at = 0;
    while at < data.len() {
        let end = (at + HOLE_BLOCK_BYTES).min(data.len());
        let zero = end - at == HOLE_BLOCK_BYTES && data[at..end].iter().all(|&b| b == 0);
        match (zero, run_start) {
            (false, None) => run_start = Some(at),
            (true, Some(start)) => {
                file.write_all_at(&data[start..at], offset + start as u64)?;
                run_start = None;
            }
            _ => {}
        }
        at = end;
    }
    if let Some(start) = run_start {
        file.write_all_at(&data[start..], offset + start as u64)?;
    }
    Ok(())
}

/// Bytes of zeros written at a time into a hole.
const FILL_BYTES: usize = 1 << 20;

/// Writes zeros into every hole of `file` (found with `SEEK_HOLE`/`SEEK_DATA`), so a file
/// written with `write_sparse` becomes dense: what restore and sync give without `--sparse`.
pub(crate) fn fill_holes(file: &fs::File) -> std::io::Result<()> {
    let size = file.metadata()?.len();
    let mut zeros = Vec::new();
    let mut at = 0;
    while at < size {
        let hole = match seek_from(file, at, libc::SEEK_HOLE)? {
            Some(hole) if hole < size => hole,
            _ => break,
        };
        let data = seek_from(file, hole, libc::SEEK_DATA)?.unwrap_or(size);
        zeros.resize(FILL_BYTES.min((data - hole) as usize).max(zeros.len()), 0);
        let mut offset = hole;
        while offset < data {
            let length = zeros.len().min((data - offset) as usize);
            file.write_all_at(&zeros[..length], offset)?;
            offset += length as u64;
        }
        at = data;
    }
    Ok(())
}

/// `lseek(file, offset, whence)` for `SEEK_HOLE`/`SEEK_DATA`; `None` for ENXIO (none left).
fn seek_from(file: &fs::File, offset: u64, whence: i32) -> std::io::Result<Option<u64>> {
    let offset = i64::try_from(offset).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    // SAFETY: lseek on an open descriptor has no other preconditions.
    let found = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    if found >= 0 {
        return Ok(Some(found as u64));
    }
    let error = std::io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::ENXIO) => Ok(None),
        _ => Err(error),
    }
}

/// Writes one regular file's content, whose `chunks` come next from `stream`, and metadata.
/// Every chunk of the file is taken from the stream, whatever fails.
fn restore_file(
    job: &FileJob,
    chunks: &[ChunkRef],
    stream: &mut impl Iterator<Item = Delivered<()>>,
    progress: &RestoreProgress,
    sparse: bool,
) -> Result<()> {
    let mut chunks_left = chunks.len();
    let mut written = || -> Result<()> {
        let shown = job.dir.child_path(&job.entry.name);
        let context = || format!("writing {}", shown.display());
        let file = job.dir.create_file(&job.entry.name).context_io(context)?;
        let mut offset = 0u64;
        while chunks_left > 0 {
            let ((), data) = stream
                .next()
                .expect("the stream holds every chunk of the batch");
            chunks_left -= 1;
            let data = data?.bytes;
            write_sparse(&file, offset, &data).context_io(context)?;
            offset += data.len() as u64;
            progress
                .bytes_done
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        if offset != job.entry.size {
            return Err(Error::corrupt(
                shown.display().to_string(),
                format!(
                    "chunks hold {offset} bytes where the tree says {}",
                    job.entry.size
                ),
            ));
        }
        file.set_len(offset).context_io(context)?;
        if !sparse {
            fill_holes(&file).context_io(context)?;
        }
        set_metadata_of(file.as_fd(), &job.entry, &shown)
            .context_io(|| format!("setting metadata of {}", shown.display()))?;
        progress.files_done.fetch_add(1, Ordering::Relaxed);
        Ok(())
    };
    let result = written();
    stream.take(chunks_left).for_each(drop);
    result
}

/// The hard-link groups met in a walk, by paths relative to the target: the first path of
/// each group is written like any file, the others are kept to be linked to it once it
/// exists.
#[derive(Default)]
pub(crate) struct HardLinkGroups {
    first_paths: HashMap<(u64, u64), PathBuf>,
    /// (path, first path of its group), in walk order.
    pub(crate) later: Vec<(PathBuf, PathBuf)>,
}

impl HardLinkGroups {
    /// Whether `entry` at `path` is a later member of a group already met: then it is kept
    /// for linking and must not be written. A first member is remembered and written.
    pub(crate) fn defer(&mut self, entry: &Entry, path: &Path) -> bool {
        let Some(key) = entry.hardlink_key() else {
            return false;
        };
        match self.first_paths.get(&key) {
            Some(first) => {
                self.later.push((path.to_owned(), first.clone()));
                true
            }
            None => {
                self.first_paths.insert(key, path.to_owned());
                false
            }
        }
    }
}

/// A regular file for the workers: entry `entry.name` of `dir`.
struct FileJob {
    dir: Arc<TargetDir>,
    entry: Entry,
}

/// Files the planner hands a worker together, at most, and bytes of their content: their
/// chunks are read in few requests (`readahead`).
const FILES_PER_BATCH: usize = 256;
const BATCH_BYTES: u64 = readahead::WINDOW_BYTES;

/// Restores batches of files: each batch's chunks are read ahead, coalesced, while its files
/// are written one after the other.
fn run_worker(
    repo: &Repository,
    batches: Receiver<Vec<FileJob>>,
    errors: &Mutex<Vec<RestoreError>>,
    full: &SpaceFailure,
    progress: &RestoreProgress,
    sparse: bool,
) {
    for batch in batches {
        // Once the filesystem is full, the queued files are dropped unwritten.
        if full.is_full() {
            continue;
        }
        let failed = |job: &FileJob, e: Error| {
            // Never leave a file with missing or wrong bytes under its real name.
            let _ = job.dir.unlink(&job.entry.name);
            let path = job.dir.child_path(&job.entry.name);
            if is_out_of_space(&e) {
                full.record(path, &e);
                return;
            }
            errors.lock().expect("not poisoned").push(RestoreError {
                path,
                message: format!("{e}"),
            });
        };
        let lists: Vec<Option<Vec<ChunkRef>>> = batch
            .iter()
            .map(|job| {
                let EntryKind::File(content) = &job.entry.kind else {
                    unreachable!("only regular files are sent to workers");
                };
                sized_file_chunks(repo, content, job.entry.size)
                    .map_err(|e| failed(job, e))
                    .ok()
            })
            .collect();
        let chunks = lists
            .iter()
            .flat_map(|list| list.iter().flatten().map(|chunk| ((), *chunk)));
        std::thread::scope(|scope| {
            let mut stream = ChunkStream::new(repo, scope, chunks);
            for (job, list) in batch.iter().zip(&lists) {
                if full.is_full() {
                    return;
                }
                if let Some(chunks) = list
                    && let Err(e) = restore_file(job, chunks, &mut stream, progress, sparse)
                {
                    failed(job, e);
                }
            }
        });
    }
}

/// One directory being walked: where it is written, its remaining entries, and its own
/// entry (whose metadata it gets at the end; `None` for the target itself).
struct Level {
    dir: Arc<TargetDir>,
    relative: PathBuf,
    entries: std::vec::IntoIter<Entry>,
    own: Option<Entry>,
}

/// Walks the tree, creating everything but regular files, which go to the workers.
struct Planner<'a> {
    repo: &'a Repository,
    files: crossbeam_channel::Sender<Vec<FileJob>>,
    /// Files not yet handed to a worker, and the bytes of their content.
    batch: Vec<FileJob>,
    batch_bytes: u64,
    /// Hard links to make once the files exist.
    links: HardLinkGroups,
    /// Directories (relative to the target) with their metadata, deepest first.
    dirs: Vec<(PathBuf, Entry)>,
    stats: RestoreStats,
    full: &'a SpaceFailure,
}

impl Planner<'_> {
    /// Hands the files gathered so far to a worker.
    fn send_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        self.batch_bytes = 0;
        self.files
            .send(std::mem::take(&mut self.batch))
            .expect("restore workers outlive the planner");
    }

    /// Restores the tree `tree_id` into `root`, walking it with an explicit stack.
    fn restore_tree(&mut self, tree_id: &BlobId, root: Arc<TargetDir>) -> Result<()> {
        let mut stack = vec![Level {
            dir: root,
            relative: PathBuf::new(),
            entries: load_tree(self.repo, tree_id)?.entries.into_iter(),
            own: None,
        }];
        while let Some(level) = stack.last_mut() {
            if self.full.is_full() {
                return Ok(());
            }
            let Some(entry) = level.entries.next() else {
                let done = stack.pop().expect("the loop holds a level");
                if let Some(own) = done.own {
                    self.stats.dirs += 1;
                    self.dirs.push((done.relative, own));
                }
                continue;
            };
            let relative = level.relative.join(OsStr::from_bytes(&entry.name));
            let dir = Arc::clone(&level.dir);
            let shown = dir.child_path(&entry.name);
            match self.restore_entry(dir, relative, entry) {
                Ok(Some(next)) => stack.push(next),
                Ok(None) => {}
                Err(e) if is_out_of_space(&e) => self.full.record(shown, &e),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Restores one entry into `dir`; a directory is created and returned to be walked.
    fn restore_entry(
        &mut self,
        dir: Arc<TargetDir>,
        relative: PathBuf,
        entry: Entry,
    ) -> Result<Option<Level>> {
        let name = entry.name.as_slice();
        let shown = dir.child_path(name);
        let created = || format!("creating {}", shown.display());
        check_path_length(&relative).context_io(created)?;
        if let EntryKind::Dir(tree) = &entry.kind {
            let subdir = dir.ensure_dir(name).context_io(created)?;
            return Ok(Some(Level {
                dir: Arc::new(subdir),
                relative,
                entries: load_tree(self.repo, tree)?.entries.into_iter(),
                own: Some(entry),
            }));
        }
        dir.remove(name)
            .context_io(|| format!("removing {}", shown.display()))?;
        match &entry.kind {
            EntryKind::Dir(_) => unreachable!("directories are handled above"),
            EntryKind::File(_) => {
                if !self.links.defer(&entry, &relative) {
                    self.batch_bytes += entry.size;
                    self.batch.push(FileJob { dir, entry });
                    if self.batch.len() >= FILES_PER_BATCH || self.batch_bytes >= BATCH_BYTES {
                        self.send_batch();
                    }
                }
                return Ok(None);
            }
            EntryKind::Symlink(target) => dir.symlink(target, name).context_io(created)?,
            EntryKind::Fifo | EntryKind::CharDevice(_) | EntryKind::BlockDevice(_) => {
                if !matches!(entry.kind, EntryKind::Fifo) && !running_as_root() {
                    self.stats.skipped.push(format!(
                        "{} (device node; only root can create it)",
                        shown.display()
                    ));
                    return Ok(None);
                }
                dir.make_node(name, &entry.kind).context_io(created)?;
            }
        }
        dir.set_metadata_of_new(name, &entry)
            .context_io(|| format!("setting metadata of {}", shown.display()))?;
        Ok(None)
    }
}

/// Checks the target, creates it if needed and opens it.
fn prepare_target(target: &Path, overwrite: bool) -> Result<TargetDir> {
    let context = || format!("opening restore target {}", target.display());
    match fs::symlink_metadata(target) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            TargetDir::open(target, true).context_io(context)
        }
        Err(e) => Err(Error::io(context(), e)),
        Ok(m) if !m.is_dir() => Err(Error::InvalidInput(format!(
            "restore target {} exists and is not a directory",
            target.display()
        ))),
        Ok(_) => {
            let dir = TargetDir::open(target, false).context_io(context)?;
            if !overwrite && !dir.names().context_io(context)?.is_empty() {
                return Err(Error::InvalidInput(format!(
                    "restore target {} is not empty: choose an empty or new directory, or pass --overwrite",
                    target.display()
                )));
            }
            Ok(dir)
        }
    }
}

/// Restores `node` into `target`: a directory's contents go into `target`, any other entry
/// becomes `target/<name>`.
pub fn run(
    repo: &Repository,
    node: &Entry,
    target: &Path,
    options: &RestoreOptions,
    progress: &RestoreProgress,
) -> Result<RestoreStats> {
    let _lock = crate::repo::lock::acquire_for_reading(repo, "restore")?;
    let root = Arc::new(prepare_target(target, options.overwrite)?);
    let errors = Mutex::new(Vec::new());
    let full = SpaceFailure::default();
    let threads = options.threads.max(1);
    let (files, jobs) = bounded::<Vec<FileJob>>(threads);
    let (planned, links, mut dirs, mut stats) = std::thread::scope(|scope| {
        for _ in 0..threads {
            let jobs = jobs.clone();
            let (errors, full) = (&errors, &full);
            scope.spawn(move || run_worker(repo, jobs, errors, full, progress, options.sparse));
        }
        let mut planner = Planner {
            repo,
            files,
            batch: Vec::new(),
            batch_bytes: 0,
            links: HardLinkGroups::default(),
            dirs: Vec::new(),
            stats: RestoreStats::default(),
            full: &full,
        };
        let planned = match &node.kind {
            EntryKind::Dir(tree) => planner.restore_tree(tree, Arc::clone(&root)),
            _ if !is_valid_name(&node.name) => Err(Error::corrupt(
                "restore",
                format!("refusing to restore an entry named {:?}", node.name_lossy()),
            )),
            _ => {
                let relative = PathBuf::from(OsStr::from_bytes(&node.name));
                planner
                    .restore_entry(Arc::clone(&root), relative, node.clone())
                    .map(|_| ())
            }
        };
        planner.send_batch();
        // Taking the planner apart drops its sender, which lets the workers finish; the
        // scope waits for them.
        let Planner {
            links, dirs, stats, ..
        } = planner;
        (planned, links, dirs, stats)
    });
    stats.errors = errors.into_inner().expect("not poisoned");
    stats.out_of_space = full.into_outcome(target);
    // Out of space, the files to link to may be missing; the message says what was restored.
    let links = match stats.out_of_space {
        Some(_) => Vec::new(),
        None => links.later,
    };
    let failed: std::collections::HashSet<PathBuf> =
        stats.errors.iter().map(|e| e.path.clone()).collect();
    for (path, first) in links {
        if failed.contains(&target.join(&first)) {
            stats.errors.push(RestoreError {
                path: target.join(path),
                message: format!("not linked: {} could not be restored", first.display()),
            });
            continue;
        }
        let linked = root.open_parent(&first).and_then(|(from, from_name)| {
            let (dir, name) = root.open_parent(&path)?;
            dir.hard_link(&from, from_name, name)
        });
        match linked {
            Ok(()) => {
                progress.files_done.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => stats.errors.push(RestoreError {
                message: format!("linking to {}: {e}", first.display()),
                path: target.join(path),
            }),
        }
    }
    if node.is_dir() && !node.name.is_empty() {
        // The target becomes the restored directory itself: its mode, owner and times.
        dirs.push((PathBuf::new(), node.clone()));
    }
    for (path, message) in set_directories_metadata(&root, &dirs) {
        stats.errors.push(RestoreError { path, message });
    }
    planned?;
    stats.files = progress.files_done.load(Ordering::Relaxed);
    stats.bytes = progress.bytes_done.load(Ordering::Relaxed);
    Ok(stats)
}
