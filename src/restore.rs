//! Restore: a checkpoint's tree (or one path in it) back into a directory, exactly.
//!
//! The planner (the calling thread) walks the tree in order, creating directories, symlinks,
//! FIFOs and device nodes as it goes and handing regular files, in rounds of up to
//! `ROUND_FILES` files or `ROUND_BYTES` of content, to a writer thread, which reads each
//! round's chunks pack by pack (`readahead::read_by_pack`: each pack's needed stretch in one
//! streamed request, several at once) and writes every chunk, verified, to each place in the
//! round's files that holds it. A file is created when its first chunk arrives and finished
//! (length, holes filled, metadata) when its last has been written, so only files partly
//! written are open. Blocks of zeros are written as holes and, unless
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
//! A full filesystem (`ENOSPC`, `EDQUOT`) stops the restore at once: the files being written
//! are deleted, the packs not yet read are not read, the walk stops, no hard links are made,
//! and the outcome says where it stopped and how much space is left, so the user gets one
//! message instead of one error per remaining file.

use crate::error::{Error, IoContext, Result};
use crate::fsmeta::running_as_root;
use crate::id::BlobId;
use crate::readahead::{self, ReadChunk};
use crate::repo::Repository;
use crate::space::{OutOfSpace, SpaceFailure, is_out_of_space};
use crate::target::{TargetDir, check_path_length, set_directories_metadata, set_metadata_of};
use crate::tree::{Entry, EntryKind, is_valid_name, load_tree, sized_file_chunks};
use crossbeam_channel::{Receiver, bounded};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Runs of zero bytes at least this long, aligned to it, are left as holes.
const HOLE_BLOCK_BYTES: usize = 4096;

/// Inputs of a restore.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Restore into a target that already has content, replacing what is in the way.
    pub overwrite: bool,
    /// Stretches of packs read (and their chunks written) at once, at least as many as the
    /// backend keeps under way; defaults to twice the number of cores (they wait on I/O).
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

/// A regular file for the writer: entry `entry.name` of `dir`.
struct FileJob {
    dir: Arc<TargetDir>,
    entry: Entry,
}

/// Files the planner hands the writer together, at most, and bytes of their content: the
/// chunks of a round are read pack by pack, so a pack is read about once per round it
/// serves. A round costs memory for its files' entries and chunk lists, not their bytes.
pub(crate) const ROUND_FILES: usize = 32_768;
pub(crate) const ROUND_BYTES: u64 = 1 << 30;

/// Where a file of a round stands.
enum Writing {
    /// No chunk has arrived: the file is not created yet.
    Waiting,
    Open(fs::File),
    /// It cannot be restored; it is removed once its last chunk has come.
    Failed(Error),
    Finished,
}

/// A file of a round, and how many of its chunks are still to come.
struct RoundFile {
    job: FileJob,
    state: Mutex<Writing>,
    chunks_left: AtomicUsize,
}

/// What the writer reports into, shared by the threads writing a round.
struct Outcome<'a> {
    errors: &'a Mutex<Vec<RestoreError>>,
    full: &'a SpaceFailure,
    progress: &'a RestoreProgress,
    sparse: bool,
}

impl RoundFile {
    fn shown(&self) -> PathBuf {
        self.job.dir.child_path(&self.job.entry.name)
    }

    /// Writes `chunk` (or records why it cannot be) at `offset`, where `length` bytes
    /// belong; the file is finished once this was its last chunk.
    fn take_chunk(&self, offset: u64, length: u32, chunk: Result<&ReadChunk>, out: &Outcome) {
        {
            let mut state = self.state.lock().expect("not poisoned");
            if !matches!(*state, Writing::Failed(_))
                && let Err(e) = self.write_chunk(&mut state, offset, length, chunk, out)
            {
                *state = Writing::Failed(e);
            }
        }
        if self.chunks_left.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.finish(out);
        }
    }

    fn write_chunk(
        &self,
        state: &mut Writing,
        offset: u64,
        length: u32,
        chunk: Result<&ReadChunk>,
        out: &Outcome,
    ) -> Result<()> {
        let bytes = &chunk?.bytes;
        let context = || format!("writing {}", self.shown().display());
        if bytes.len() != length as usize {
            return Err(Error::corrupt(
                self.shown().display().to_string(),
                format!("the chunk at offset {offset} has the wrong length"),
            ));
        }
        if matches!(state, Writing::Waiting) {
            *state = Writing::Open(self.create().context_io(context)?);
        }
        let Writing::Open(file) = state else {
            unreachable!("a file takes chunks only while open");
        };
        write_sparse(file, offset, bytes).context_io(context)?;
        out.progress
            .bytes_done
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn create(&self) -> std::io::Result<fs::File> {
        self.job.dir.create_file(&self.job.entry.name)
    }

    /// Gives the file, all of whose chunks are written, its length, its zeros (unless
    /// sparse) and its metadata; or removes it when it failed.
    fn finish(&self, out: &Outcome) {
        let state = std::mem::replace(
            &mut *self.state.lock().expect("not poisoned"),
            Writing::Finished,
        );
        let shown = self.shown();
        let context = || format!("writing {}", shown.display());
        let finished = match state {
            Writing::Failed(e) => Err(e),
            Writing::Finished => unreachable!("a file is finished once"),
            // A file without chunks is created here.
            Writing::Waiting => self.create().context_io(context),
            Writing::Open(file) => Ok(file),
        }
        .and_then(|file| {
            file.set_len(self.job.entry.size).context_io(context)?;
            if !out.sparse {
                fill_holes(&file).context_io(context)?;
            }
            set_metadata_of(file.as_fd(), &self.job.entry, &shown)
                .context_io(|| format!("setting metadata of {}", shown.display()))
        });
        match finished {
            Ok(()) => {
                out.progress.files_done.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => failed(&self.job, e, out),
        }
    }
}

/// Records why the file of `job` could not be restored, and removes what was written of
/// it: a file is never left with missing or wrong bytes under its real name. Once the
/// filesystem is full, files given up on are not errors of their own.
fn failed(job: &FileJob, e: Error, out: &Outcome) {
    let _ = job.dir.unlink(&job.entry.name);
    let path = job.dir.child_path(&job.entry.name);
    if is_out_of_space(&e) {
        out.full.record(path, &e);
    } else if !out.full.is_full() {
        out.errors.lock().expect("not poisoned").push(RestoreError {
            path,
            message: format!("{e}"),
        });
    }
}

/// Restores the rounds of files, one after the other, each read pack by pack with
/// `readers` stretches under way.
fn run_writer(repo: &Repository, rounds: Receiver<Vec<FileJob>>, readers: usize, out: &Outcome) {
    for jobs in rounds {
        // Once the filesystem is full, the queued files are dropped unwritten.
        if out.full.is_full() {
            continue;
        }
        let mut round = Vec::with_capacity(jobs.len());
        let mut places = Vec::new();
        for job in jobs {
            let EntryKind::File(content) = &job.entry.kind else {
                unreachable!("only regular files are sent to the writer");
            };
            let chunks = match sized_file_chunks(repo, content, job.entry.size) {
                Ok(chunks) => chunks,
                Err(e) => {
                    failed(&job, e, out);
                    continue;
                }
            };
            let mut offset = 0u64;
            for chunk in &chunks {
                places.push(((round.len(), offset, chunk.length), *chunk));
                offset += u64::from(chunk.length);
            }
            round.push(RoundFile {
                job,
                state: Mutex::new(Writing::Waiting),
                chunks_left: AtomicUsize::new(chunks.len()),
            });
        }
        for file in round
            .iter()
            .filter(|f| f.chunks_left.load(Ordering::Relaxed) == 0)
        {
            file.finish(out);
        }
        readahead::read_by_pack(
            repo,
            places,
            readers,
            &|| out.full.is_full(),
            &|&(file, offset, length), chunk| {
                round[file].take_chunk(
                    offset,
                    length,
                    chunk.as_ref().map_err(Error::duplicate),
                    out,
                )
            },
        );
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

/// Walks the tree, creating everything but regular files, which go to the writer.
struct Planner<'a> {
    repo: &'a Repository,
    files: crossbeam_channel::Sender<Vec<FileJob>>,
    /// Files not yet handed to the writer, and the bytes of their content.
    round: Vec<FileJob>,
    round_bytes: u64,
    /// Hard links to make once the files exist.
    links: HardLinkGroups,
    /// Directories (relative to the target) with their metadata, deepest first.
    dirs: Vec<(PathBuf, Entry)>,
    stats: RestoreStats,
    full: &'a SpaceFailure,
}

impl Planner<'_> {
    /// Hands the files gathered so far to the writer.
    fn send_round(&mut self) {
        if self.round.is_empty() {
            return;
        }
        self.round_bytes = 0;
        self.files
            .send(std::mem::take(&mut self.round))
            .expect("the restore writer outlives the planner");
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
                    self.round_bytes += entry.size;
                    self.round.push(FileJob { dir, entry });
                    if self.round.len() >= ROUND_FILES || self.round_bytes >= ROUND_BYTES {
                        self.send_round();
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
    let readers = options
        .threads
        .max(repo.backend().preferred_concurrency())
        .max(1);
    // The planner hands a round over once the writer is done with the one before: at most
    // two rounds are held, one written and one planned.
    let (files, rounds) = bounded::<Vec<FileJob>>(0);
    let (planned, links, mut dirs, mut stats) = std::thread::scope(|scope| {
        let out = Outcome {
            errors: &errors,
            full: &full,
            progress,
            sparse: options.sparse,
        };
        scope.spawn(move || run_writer(repo, rounds, readers, &out));
        let mut planner = Planner {
            repo,
            files,
            round: Vec::new(),
            round_bytes: 0,
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
        planner.send_round();
        // Taking the planner apart drops its sender, which lets the writer finish; the
        // scope waits for it.
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
