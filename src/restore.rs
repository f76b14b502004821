//! Restore: a checkpoint's tree (or one path in it) back into a directory, exactly.
//!
//! The planner (the calling thread) walks the tree in order, creating directories, symlinks,
//! FIFOs and device nodes as it goes and handing regular files to worker threads, which
//! fetch, verify and write their chunks. Blocks of zeros are skipped, so holes come back as
//! holes. Hard links are made once their first path is written, and directory metadata is
//! applied last, deepest first, so writing into a directory does not disturb its mtime.
//!
//! Nothing is ever written outside the target (invariant 4): names come from validated trees,
//! and whatever already sits at a path — with `--overwrite` — is removed, never followed.
//! A file whose chunk is missing or corrupt is deleted, never left with wrong bytes.

use crate::error::{Error, IoContext, Result};
use crate::fsmeta::{apply_metadata, make_node, running_as_root};
use crate::repo::Repository;
use crate::tree::{Entry, EntryKind, file_chunks, is_valid_name, load_tree, read_chunk};
use crossbeam_channel::{Receiver, bounded};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Runs of zero bytes at least this long, aligned to it, are left as holes.
const HOLE_BLOCK_BYTES: usize = 4096;

/// Inputs of a restore.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Restore into a target that already has content, replacing what is in the way.
    pub overwrite: bool,
    /// File workers; defaults to twice the number of cores (they wait on I/O).
    pub threads: usize,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            overwrite: false,
            threads: std::thread::available_parallelism().map_or(4, |n| 2 * n.get()),
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
}

/// Removes whatever is at `path` unless it is a directory and `keep_dir` is set. Never
/// follows a symlink.
pub(crate) fn clear_path(path: &Path, keep_dir: bool) -> Result<()> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
        Ok(m) if m.is_dir() => {
            if keep_dir {
                Ok(())
            } else {
                fs::remove_dir_all(path).context_io(|| format!("removing {}", path.display()))
            }
        }
        Ok(_) => fs::remove_file(path).context_io(|| format!("removing {}", path.display())),
    }
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

/// Writes one regular file's content and metadata.
fn restore_file(
    repo: &Repository,
    path: &Path,
    entry: &Entry,
    progress: &RestoreProgress,
) -> Result<()> {
    let EntryKind::File(content) = &entry.kind else {
        unreachable!("only regular files are sent to workers");
    };
    let context = || format!("writing {}", path.display());
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(path)
        .context_io(context)?;
    let mut offset = 0u64;
    for chunk in file_chunks(repo, content)? {
        let data = read_chunk(repo, &chunk)?;
        write_sparse(&file, offset, &data).context_io(context)?;
        offset += data.len() as u64;
        progress
            .bytes_done
            .fetch_add(data.len() as u64, Ordering::Relaxed);
    }
    if offset != entry.size {
        return Err(Error::corrupt(
            path.display().to_string(),
            format!(
                "chunks hold {offset} bytes where the tree says {}",
                entry.size
            ),
        ));
    }
    file.set_len(offset).context_io(context)?;
    drop(file);
    apply_metadata(path, entry).context_io(|| format!("setting metadata of {}", path.display()))?;
    progress.files_done.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// The hard-link groups met in a walk: the first path of each group is written like any file,
/// the others are kept to be linked to it once it exists.
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

struct FileJob {
    path: PathBuf,
    entry: Entry,
}

fn run_worker(
    repo: &Repository,
    jobs: Receiver<FileJob>,
    errors: &Mutex<Vec<RestoreError>>,
    progress: &RestoreProgress,
) {
    for job in jobs {
        if let Err(e) = restore_file(repo, &job.path, &job.entry, progress) {
            // Never leave a file with missing or wrong bytes under its real name.
            let _ = fs::remove_file(&job.path);
            errors.lock().expect("not poisoned").push(RestoreError {
                path: job.path,
                message: format!("{e}"),
            });
        }
    }
}

/// Walks the tree, creating everything but regular files, which go to the workers.
struct Planner<'a> {
    repo: &'a Repository,
    files: crossbeam_channel::Sender<FileJob>,
    /// Hard links to make once the files exist.
    links: HardLinkGroups,
    /// Directories with their metadata, deepest first.
    dirs: Vec<(PathBuf, Entry)>,
    stats: RestoreStats,
}

impl Planner<'_> {
    fn restore_dir_contents(&mut self, tree_id: &crate::id::BlobId, dir: &Path) -> Result<()> {
        let tree = load_tree(self.repo, tree_id)?;
        for entry in tree.entries {
            let path = dir.join(OsStr::from_bytes(&entry.name));
            self.restore_entry(path, entry)?;
        }
        Ok(())
    }

    fn restore_entry(&mut self, path: PathBuf, entry: Entry) -> Result<()> {
        clear_path(&path, entry.is_dir())?;
        let metadata_error = |e| Error::io(format!("setting metadata of {}", path.display()), e);
        match &entry.kind {
            EntryKind::Dir(tree) => {
                if !path.is_dir() {
                    fs::create_dir(&path).context_io(|| format!("creating {}", path.display()))?;
                }
                self.restore_dir_contents(tree, &path)?;
                self.stats.dirs += 1;
                self.dirs.push((path, entry));
            }
            EntryKind::File(_) => {
                if self.links.defer(&entry, &path) {
                    return Ok(());
                }
                self.files
                    .send(FileJob { path, entry })
                    .expect("restore workers outlive the planner");
            }
            EntryKind::Symlink(target) => {
                std::os::unix::fs::symlink(OsStr::from_bytes(target), &path)
                    .context_io(|| format!("creating symlink {}", path.display()))?;
                apply_metadata(&path, &entry).map_err(metadata_error)?;
            }
            EntryKind::Fifo | EntryKind::CharDevice(_) | EntryKind::BlockDevice(_) => {
                if !matches!(entry.kind, EntryKind::Fifo) && !running_as_root() {
                    self.stats.skipped.push(format!(
                        "{} (device node; only root can create it)",
                        path.display()
                    ));
                    return Ok(());
                }
                make_node(&path, &entry.kind)
                    .context_io(|| format!("creating {}", path.display()))?;
                apply_metadata(&path, &entry).map_err(metadata_error)?;
            }
        }
        Ok(())
    }
}

/// Checks the target and creates it if needed.
fn prepare_target(target: &Path, overwrite: bool) -> Result<()> {
    match fs::symlink_metadata(target) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::create_dir_all(target)
            .context_io(|| format!("creating restore target {}", target.display())),
        Err(e) => Err(Error::io(
            format!("reading restore target {}", target.display()),
            e,
        )),
        Ok(m) if !m.is_dir() => Err(Error::InvalidInput(format!(
            "restore target {} exists and is not a directory",
            target.display()
        ))),
        Ok(_) => {
            let non_empty = fs::read_dir(target)
                .context_io(|| format!("reading restore target {}", target.display()))?
                .next()
                .is_some();
            if non_empty && !overwrite {
                return Err(Error::InvalidInput(format!(
                    "restore target {} is not empty: choose an empty or new directory, or pass --overwrite",
                    target.display()
                )));
            }
            Ok(())
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
    prepare_target(target, options.overwrite)?;
    let errors = Mutex::new(Vec::new());
    let threads = options.threads.max(1);
    let (files, jobs) = bounded::<FileJob>(threads * 4);
    let (planned, links, mut dirs, mut stats) = std::thread::scope(|scope| {
        for _ in 0..threads {
            let jobs = jobs.clone();
            let errors = &errors;
            scope.spawn(move || run_worker(repo, jobs, errors, progress));
        }
        let mut planner = Planner {
            repo,
            files,
            links: HardLinkGroups::default(),
            dirs: Vec::new(),
            stats: RestoreStats::default(),
        };
        let planned = match &node.kind {
            EntryKind::Dir(tree) => planner.restore_dir_contents(tree, target),
            _ if !is_valid_name(&node.name) => Err(Error::corrupt(
                "restore",
                format!("refusing to restore an entry named {:?}", node.name_lossy()),
            )),
            _ => planner.restore_entry(target.join(OsStr::from_bytes(&node.name)), node.clone()),
        };
        // Taking the planner apart drops its sender, which lets the workers finish; the
        // scope waits for them.
        let Planner {
            links, dirs, stats, ..
        } = planner;
        (planned, links, dirs, stats)
    });
    stats.errors = errors.into_inner().expect("not poisoned");
    let failed: std::collections::HashSet<PathBuf> =
        stats.errors.iter().map(|e| e.path.clone()).collect();
    for (path, first) in links.later {
        if failed.contains(&first) {
            stats.errors.push(RestoreError {
                path,
                message: format!("not linked: {} could not be restored", first.display()),
            });
            continue;
        }
        match fs::hard_link(&first, &path) {
            Ok(()) => {
                progress.files_done.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => stats.errors.push(RestoreError {
                message: format!("linking to {}: {e}", first.display()),
                path,
            }),
        }
    }
    if node.is_dir() && !node.name.is_empty() {
        // The target becomes the restored directory itself: its mode, owner and times.
        dirs.push((target.to_owned(), node.clone()));
    }
    for (path, entry) in &dirs {
        apply_metadata(path, entry)
            .context_io(|| format!("setting metadata of {}", path.display()))?;
    }
    planned?;
    stats.files = progress.files_done.load(Ordering::Relaxed);
    stats.bytes = progress.bytes_done.load(Ordering::Relaxed);
    Ok(stats)
}
