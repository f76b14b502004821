//! Local paths as a backup's source: directories listed in name order with `lstat`,
//! `readlink` and the xattr calls (`fs::meta`), changed files read, chunked, hashed and stored
//! by one worker per core with the kernel asked to read ahead of them, and the files and
//! bytes to come counted by a scan ahead that also warms the kernel's caches for the walk.

use super::trees::file_content;
use super::{FileError, FileJob, Identity, Root, Settings, Source};
use crate::checkpoint::{self, Checkpoint, Series};
use crate::error::{Error, PathError, Result};
use crate::fs::meta::listed_entry;
use crate::fs::throttle::{RateLimiter, Throttled};
use crate::fs::uncached::Uncached;
use crate::id::CheckpointId;
use crate::pattern::Patterns;
use crate::progress::Progress;
use crate::read_blocks::ReadBlocks;
use crate::repo::Repository;
use crate::repo::pack::BlobKind;
use crate::repo::writer::{BlobSink, SharedFrame};
use crate::tree::{ChunkRef, Content, Listed};
use crossbeam_channel::Receiver;
use std::collections::{HashMap, HashSet};
use std::fs::{self, Metadata};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Threads asking the kernel to start reading queued files.
const READ_AHEAD_THREADS: usize = 4;
/// Bytes of a queued file the kernel is asked to read ahead; sequential reading takes over
/// after that.
const READ_AHEAD_BYTES: i64 = 2 << 20;
/// Threads of the scan ahead: enough metadata reads in flight to keep a disk busy.
const SCAN_AHEAD_THREADS: usize = 4;
/// Files at least this large are read around the page cache (`fs::uncached`): streamed once,
/// they gain nothing from it, and copying them out of it costs CPU the pipeline needs.
/// Smaller ones are read through it, where the kernel's read-ahead overlaps their reads.
const UNCACHED_MIN_BYTES: u64 = 16 << 20;

/// Inputs of a backup.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    pub paths: Vec<PathBuf>,
    pub tags: Vec<String>,
    /// Patterns of what to leave out (`crate::pattern`): a name anywhere (`*.o`), a path
    /// below the backup root (`/build`, `src/gen`), directories only (`cache/`).
    pub excludes: Vec<String>,
    /// Leave out directories holding a `CACHEDIR.TAG` with the standard signature.
    pub exclude_caches: bool,
    /// Stay on the filesystem of each path: directories of other filesystems (mount
    /// points) are kept, empty, as rsync's `--one-file-system` keeps them.
    pub one_file_system: bool,
    /// Paths chosen one by one (`--files-from`), together with `paths`: they are backed up
    /// below their deepest common directory, which the checkpoint records as its path, with
    /// the directories leading to them and everything below a chosen directory. One that
    /// does not exist is reported like an unreadable file.
    pub files_from: Vec<PathBuf>,
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
            exclude_caches: false,
            one_file_system: false,
            files_from: Vec::new(),
            host: crate::host_name(),
            parent: None,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            read_limit: None,
            one_read_at_a_time: false,
        }
    }
}

/// Local paths being backed up.
pub(super) struct LocalSource {
    /// Absolute and cleaned, as the checkpoint records them.
    paths: Vec<PathBuf>,
    identity: Identity,
    selection: Selection,
    /// Paths chosen with `files_from` that are not there.
    missing: Vec<PathError>,
    /// The parent asked for, if any.
    parent: Option<CheckpointId>,
    read_limiter: Option<RateLimiter>,
    scan_threads: usize,
}

impl LocalSource {
    /// Checks the inputs of a backup: usable tags, source paths that exist, and distinct
    /// base names when there are several.
    pub(super) fn check(options: &BackupOptions) -> Result<Self> {
        crate::checkpoint::check_tags(&options.tags)?;
        if options.paths.is_empty() && options.files_from.is_empty() {
            return Err(Error::InvalidInput(
                "nothing to back up: give at least one path".into(),
            ));
        }
        let (paths, listed, missing) = match options.files_from.is_empty() {
            true => (checked_paths(&options.paths)?, None, Vec::new()),
            false => chosen_paths(&options.paths, &options.files_from)?,
        };
        let identity = Identity {
            host: options.host.clone(),
            paths: paths
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect(),
            pulled_from: None,
        };
        Ok(LocalSource {
            selection: Selection::new(options, &paths, listed)?,
            missing,
            paths,
            identity,
            parent: options.parent,
            read_limiter: options.read_limit.map(RateLimiter::new),
            scan_threads: match options.one_read_at_a_time {
                true => 1,
                false => SCAN_AHEAD_THREADS,
            },
        })
    }

    /// The exclude patterns that have matched nothing so far.
    pub(super) fn unmatched_excludes(&self) -> Vec<String> {
        let unmatched = self.selection.patterns.unmatched();
        unmatched.into_iter().map(str::to_owned).collect()
    }

    /// How the engine runs for `options`: at low priority, one read in flight at a time
    /// (one file worker, no read-ahead hints, no parent trees decoded ahead).
    pub(super) fn settings(&self, options: &BackupOptions) -> Settings {
        let one_at_a_time = options.one_read_at_a_time;
        Settings {
            purpose: "backup",
            tags: options.tags.clone(),
            threads: if one_at_a_time { 1 } else { options.threads },
            read_ahead_threads: if one_at_a_time { 0 } else { READ_AHEAD_THREADS },
            parent_trees_ahead: !one_at_a_time,
        }
    }

    /// The entry of `path`, named `name`, whose metadata (not following symlinks) `stat`
    /// reads; `None` when it is excluded, unreadable (reported in `errors`) or a socket.
    fn entry(
        &self,
        path: &Path,
        name: Vec<u8>,
        stat: impl FnOnce() -> std::io::Result<Metadata>,
        errors: &Mutex<Vec<PathError>>,
    ) -> Option<Listed> {
        if self.selection.leaves_out(path, None) {
            return None;
        }
        let metadata = stat()
            .map_err(|e| report(errors, path, e.to_string()))
            .ok()?;
        if self.selection.leaves_out(path, Some(&metadata)) {
            return None;
        }
        listed_from(path, name, &metadata, errors)
    }
}

/// The entry of `path`, named `name`, whatever the selection says (a path given to back
/// up); `None` when it is unreadable (reported in `errors`) or a socket.
fn read_entry(
    path: &Path,
    name: Vec<u8>,
    stat: impl FnOnce() -> std::io::Result<Metadata>,
    errors: &Mutex<Vec<PathError>>,
) -> Option<Listed> {
    let metadata = stat()
        .map_err(|e| report(errors, path, e.to_string()))
        .ok()?;
    listed_from(path, name, &metadata, errors)
}

/// The entry of `path` as `metadata` describes it; `None` for a socket (skipped with a
/// notice) or what cannot be read (reported in `errors`).
fn listed_from(
    path: &Path,
    name: Vec<u8>,
    metadata: &Metadata,
    errors: &Mutex<Vec<PathError>>,
) -> Option<Listed> {
    let soft_error = |message: String| report(errors, path, message);
    match listed_entry(path, name, metadata) {
        Ok(Some(entry)) => Some(entry),
        Ok(None) if metadata.file_type().is_socket() => {
            let shown = path.display();
            tracing::warn!("{shown}: skipping socket (sockets cannot be backed up)");
            None
        }
        Ok(None) => {
            soft_error("unknown file type".into());
            None
        }
        Err(e) => {
            soft_error(e.to_string());
            None
        }
    }
}

impl Source for LocalSource {
    type Path = PathBuf;

    fn identity(&self) -> &Identity {
        &self.identity
    }

    fn find_parent(&self, repo: &Repository) -> Result<Option<(CheckpointId, Checkpoint)>> {
        match self.parent {
            Some(id) => Ok(Some((id, checkpoint::load(repo, &id)?))),
            None => find_parent(repo, &self.identity.host, &self.identity.paths),
        }
    }

    fn root(&self, errors: &Mutex<Vec<PathError>>) -> Result<Root<PathBuf>> {
        errors
            .lock()
            .expect("not poisoned")
            .extend(self.missing.iter().cloned());
        // One directory: the checkpoint's root is its contents, and its own entry is kept
        // (the path given is backed up whatever the excludes say of it).
        if let [single] = self.paths.as_slice()
            && let Ok(metadata) = fs::symlink_metadata(single)
            && metadata.is_dir()
        {
            let entry = listed_entry(single, base_name(single), &metadata).unwrap_or_default();
            let path = single.clone();
            return Ok(Root::Dir { path, entry });
        }
        // The paths given are backed up whatever the excludes say of them.
        let mut entries = Vec::with_capacity(self.paths.len());
        for path in &self.paths {
            let stat = || fs::symlink_metadata(path);
            if let Some(entry) = read_entry(path, base_name(path), stat, errors) {
                entries.push((entry, path.clone()));
            }
        }
        Ok(Root::Paths(entries))
    }

    fn list(&self, dir: &PathBuf, errors: &Mutex<Vec<PathError>>) -> Result<Vec<Listed>> {
        if self.selection.is_other_filesystem(dir) {
            return Ok(Vec::new());
        }
        let children = sorted_children(dir).unwrap_or_else(|e| {
            report(errors, dir, e.to_string());
            Vec::new()
        });
        let mut entries = Vec::with_capacity(children.len());
        for (name, child) in children {
            crate::interrupt::check()?;
            match child {
                // Stats relative to the open directory: no path walk from the root per entry.
                Ok(child) => {
                    let stat = || child.metadata();
                    entries.extend(self.entry(&child.path(), name, stat, errors));
                }
                Err(e) => report(errors, dir, e.to_string()),
            }
        }
        Ok(entries)
    }

    fn child(&self, dir: &PathBuf, name: &[u8]) -> PathBuf {
        dir.join(std::ffi::OsStr::from_bytes(name))
    }

    fn count_totals(&self, progress: &Progress, stop: &AtomicBool) {
        scan_ahead(
            &self.paths,
            &self.selection,
            progress,
            self.scan_threads,
            stop,
        );
    }

    /// Files read around the page cache are left out: what the kernel read ahead into the
    /// cache would be read again.
    fn read_ahead(&self, file: &PathBuf, size: u64) {
        if size < UNCACHED_MIN_BYTES {
            read_ahead(file);
        }
    }

    fn store_files(
        &self,
        sink: &BlobSink,
        jobs: Receiver<Vec<FileJob<PathBuf>>>,
        progress: &Progress,
    ) {
        let blocks = ReadBlocks::default();
        let limiter = self.read_limiter.as_ref();
        for batch in jobs {
            let mut frame = sink.shared_frame(BlobKind::Data);
            let mut answers = Vec::with_capacity(batch.len());
            for job in batch {
                // Once interrupted, the queued files are answered without being read.
                progress.working_on(job.path.display());
                let result = match crate::interrupt::check() {
                    Ok(()) => {
                        let file = open_source(&job.path);
                        file.map_err(StoreError::from).and_then(|file| {
                            let large = job.size >= UNCACHED_MIN_BYTES;
                            store_stream(
                                sink,
                                Some(&mut frame),
                                limiter,
                                Uncached::new(file, large),
                                &blocks,
                                progress,
                            )
                        })
                    }
                    Err(e) => Err(StoreError::Repository(e)),
                };
                let result = result.map_err(|e| match e {
                    StoreError::Read(e) => FileError::Source(PathError {
                        path: job.path,
                        message: e.to_string(),
                    }),
                    StoreError::Repository(e) => FileError::Repository(e),
                });
                answers.push((job.result, result));
            }
            // The files are answered once the frame holding their contents is queued.
            let queued = frame.finish();
            for (answer, result) in answers {
                let result = match &queued {
                    Ok(()) => result,
                    Err(e) => Err(FileError::Repository(Error::duplicate(e))),
                };
                // The tree builder may have stopped after a fatal error; then nobody waits.
                let _ = answer.send(result);
            }
        }
    }
}

/// Reports `path` as left out of the backup, for `message`.
fn report(errors: &Mutex<Vec<PathError>>, path: &Path, message: String) {
    let path = path.to_owned();
    errors
        .lock()
        .expect("not poisoned")
        .push(PathError { path, message });
}

/// Why a local file could not be stored.
pub(super) enum StoreError {
    Read(std::io::Error),
    Repository(Error),
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        StoreError::Read(e)
    }
}

/// What of the source paths goes into the checkpoint: the exclude patterns (matched
/// against a path as it is named inside the checkpoint), cache directories, other
/// filesystems, and with `--files-from` only the paths chosen.
struct Selection {
    patterns: Patterns,
    /// Each source path, the name its entries are below in the checkpoint (none for a single
    /// directory, whose contents are the checkpoint's root), and its filesystem.
    roots: Vec<SourceRoot>,
    exclude_caches: bool,
    one_file_system: bool,
    listed: Option<ChosenPaths>,
}

struct SourceRoot {
    path: PathBuf,
    name: Option<Vec<u8>>,
    device: u64,
}

/// The paths chosen one by one (with the filesystem each is on), and the directories
/// leading to them.
struct ChosenPaths {
    chosen: HashMap<PathBuf, u64>,
    leading: HashSet<PathBuf>,
}

/// The first line of a cache directory's `CACHEDIR.TAG` (bford.info/cachedir).
const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";

impl Selection {
    fn new(
        options: &BackupOptions,
        paths: &[PathBuf],
        listed: Option<ChosenPaths>,
    ) -> Result<Self> {
        let contents_are_root =
            matches!(paths, [single] if fs::symlink_metadata(single).is_ok_and(|m| m.is_dir()));
        let roots = paths
            .iter()
            .map(|path| SourceRoot {
                path: path.clone(),
                name: (!contents_are_root).then(|| base_name(path)),
                device: fs::symlink_metadata(path).map_or(0, |m| m.dev()),
            })
            .collect();
        Ok(Selection {
            patterns: Patterns::new(&options.excludes, "exclude", false)?,
            roots,
            exclude_caches: options.exclude_caches,
            one_file_system: options.one_file_system,
            listed,
        })
    }

    fn everything() -> Self {
        Selection {
            patterns: Patterns::new(&[], "exclude", false).expect("no patterns to refuse"),
            roots: Vec::new(),
            exclude_caches: false,
            one_file_system: false,
            listed: None,
        }
    }

    /// Whether `path` is left out: before its metadata is read (`None`) by what its path
    /// says, after (`Some`) by what makes a directory one to leave out.
    fn leaves_out(&self, path: &Path, metadata: Option<&Metadata>) -> bool {
        match metadata {
            None => {
                self.listed.as_ref().is_some_and(|l| !l.keeps(path))
                    || (!self.patterns.is_empty() && self.matches(path, false))
            }
            Some(metadata) => {
                metadata.is_dir()
                    && ((!self.patterns.is_empty() && self.matches(path, true))
                        || (self.exclude_caches && is_cache_dir(path)))
            }
        }
    }

    /// Whether directory `dir` is on another filesystem than its source path, when the
    /// backup stays on one: it is then kept empty.
    fn is_other_filesystem(&self, dir: &Path) -> bool {
        if !self.one_file_system {
            return false;
        }
        // With paths chosen one by one, each stays on its own filesystem, and the
        // directories leading to them are crossed whatever theirs.
        let device = match &self.listed {
            Some(listed) => dir.ancestors().find_map(|a| listed.chosen.get(a).copied()),
            None => self.root_of(dir).map(|root| root.device),
        };
        device.is_some_and(|device| fs::symlink_metadata(dir).is_ok_and(|m| m.dev() != device))
    }

    fn root_of(&self, path: &Path) -> Option<&SourceRoot> {
        self.roots.iter().find(|root| path.starts_with(&root.path))
    }

    /// Whether an exclude pattern matches `path` (a directory when `is_dir`) as the
    /// checkpoint names it (`src/doc` below the backed-up directory), or an anchored one
    /// its absolute path.
    fn matches(&self, path: &Path, is_dir: bool) -> bool {
        let absolute = path.as_os_str().as_bytes();
        let mut below_root = Vec::new();
        if let Some(root) = self.root_of(path) {
            let rest = path.strip_prefix(&root.path).unwrap_or(path);
            if let Some(name) = &root.name {
                below_root.extend_from_slice(name);
                if !rest.as_os_str().is_empty() {
                    below_root.push(b'/');
                }
            }
            below_root.extend_from_slice(rest.as_os_str().as_bytes());
        }
        self.patterns
            .matches_any(&below_root, Some(absolute), is_dir)
    }
}

impl ChosenPaths {
    /// Whether `path` is chosen, below a chosen directory, or leads to a chosen path.
    fn keeps(&self, path: &Path) -> bool {
        self.leading.contains(path) || path.ancestors().any(|a| self.chosen.contains_key(a))
    }
}

/// Whether directory `dir` holds a `CACHEDIR.TAG` that starts with the standard signature.
/// Only a regular file counts, opened without following a symlink or waiting on a FIFO.
fn is_cache_dir(dir: &Path) -> bool {
    use std::io::Read;
    let tag = dir.join("CACHEDIR.TAG");
    if !fs::symlink_metadata(&tag).is_ok_and(|m| m.is_file()) {
        return false;
    }
    let mut start = [0; CACHEDIR_SIGNATURE.len()];
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(tag)
        .and_then(|mut tag| tag.read_exact(&mut start))
        .is_ok_and(|()| start == CACHEDIR_SIGNATURE)
}

/// Absolute, cleaned source paths that exist, with distinct base names when there are
/// several (each is an entry of the checkpoint's root).
fn checked_paths(given: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for path in given {
        let absolute = recorded_path(path)?;
        fs::symlink_metadata(&absolute)
            .map_err(|e| Error::io(format!("cannot back up {}", path.display()), e))?;
        paths.push(absolute);
    }
    if paths.len() > 1 {
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
    Ok(paths)
}

/// The deepest directory holding every path of `paths` and `files_from` (the checkpoint's
/// one path), what is chosen below it, and the chosen paths that are not there.
fn chosen_paths(
    paths: &[PathBuf],
    files_from: &[PathBuf],
) -> Result<(Vec<PathBuf>, Option<ChosenPaths>, Vec<PathError>)> {
    let mut chosen = HashMap::new();
    let mut missing = Vec::new();
    for path in paths.iter().chain(files_from) {
        let absolute = match recorded_path(path) {
            Ok(absolute) => absolute,
            Err(e) => {
                missing.push(PathError {
                    path: path.clone(),
                    message: format!("{e} (listed to back up)"),
                });
                continue;
            }
        };
        match fs::symlink_metadata(&absolute) {
            Ok(metadata) => {
                chosen.insert(absolute, metadata.dev());
            }
            Err(e) => missing.push(PathError {
                path: absolute,
                message: format!("{e} (listed to back up)"),
            }),
        }
    }
    let mut common: Option<PathBuf> = None;
    for path in chosen.keys() {
        common = Some(match common {
            None => path.clone(),
            Some(common) => common
                .components()
                .zip(path.components())
                .take_while(|(a, b)| a == b)
                .map(|(a, _)| a)
                .collect(),
        });
    }
    let Some(mut root) = common else {
        return Err(Error::InvalidInput(format!(
            "nothing to back up: none of the {} paths listed exists",
            missing.len()
        )));
    };
    if !fs::symlink_metadata(&root).is_ok_and(|m| m.is_dir()) {
        root.pop();
    }
    let mut leading = HashSet::new();
    for path in chosen.keys() {
        for ancestor in path.ancestors().skip(1) {
            if ancestor == root || !leading.insert(ancestor.to_owned()) {
                break;
            }
        }
    }
    Ok((vec![root], Some(ChosenPaths { chosen, leading }), missing))
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

/// Reads, chunks and stores one stream of bytes (a file's, stdin's); returns its content
/// and the bytes read. A stream of one chunk goes into `frame`, when there is one.
pub(super) fn store_stream(
    sink: &BlobSink,
    mut frame: Option<&mut SharedFrame>,
    read_limiter: Option<&RateLimiter>,
    stream: impl std::io::Read + Send,
    blocks: &ReadBlocks,
    progress: &Progress,
) -> std::result::Result<(Content, u64), StoreError> {
    let file = Throttled::new(stream, read_limiter);
    let mut chunks = sink.data_chunks();
    let mut only_chunk = None;
    let read = sink
        .repo()
        .chunker()
        .for_each_marked_chunk(file, blocks, |chunk, last| {
            crate::interrupt::check().map_err(StoreError::Repository)?;
            match frame.as_deref_mut().filter(|_| last && chunks.is_empty()) {
                Some(frame) => {
                    let id = frame.add(chunk).map_err(StoreError::Repository)?;
                    let length = chunk.len() as u32;
                    only_chunk = Some(ChunkRef { id, length });
                }
                None => {
                    // The pool's threads may wait for a blob the frame holds; this thread is
                    // about to wait for them.
                    if let Some(frame) = frame.as_deref_mut() {
                        frame.send_off().map_err(StoreError::Repository)?;
                    }
                    chunks.push(chunk, last).map_err(StoreError::Repository)?
                }
            }
            let length = chunk.len() as u64;
            progress.bytes_read.fetch_add(length, Ordering::Relaxed);
            progress.bytes_done.fetch_add(length, Ordering::Relaxed);
            Ok::<(), StoreError>(())
        })?;
    let mut chunks = chunks.finish().map_err(StoreError::Repository)?;
    chunks.extend(only_chunk);
    let content = file_content(sink, chunks).map_err(StoreError::Repository)?;
    Ok((content, read))
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

/// Counts the files and bytes below `paths` into `progress` (the ETA's denominator) on
/// several threads. Running ahead of the walker, it also brings directories and inodes into
/// the kernel's caches, so on a cold cache the walker's own calls rarely wait for the disk:
/// the many small reads of a metadata walk overlap instead of queueing one by one. Stops
/// early, without a final count, when `stop` is set.
fn scan_ahead(
    paths: &[PathBuf],
    selection: &Selection,
    progress: &Progress,
    threads: usize,
    stop: &AtomicBool,
) {
    // The paths given are counted whatever the selection says of them, as they are backed up.
    let mut roots = Vec::new();
    for path in paths {
        scan_ahead_visit(
            path.clone(),
            || fs::symlink_metadata(path),
            &Selection::everything(),
            progress,
            &mut roots,
        );
    }
    super::walk::parallel_depth_first(roots, threads, stop, |dir: PathBuf| {
        let mut subdirs = Vec::new();
        for (_, child) in sorted_children(&dir).unwrap_or_default() {
            if let Ok(child) = child {
                let stat = || child.metadata();
                scan_ahead_visit(child.path(), stat, selection, progress, &mut subdirs);
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
    scan_ahead(
        &[root.to_owned()],
        &Selection::everything(),
        progress,
        threads,
        stop,
    );
}

/// Counts `path` when it is a file, or adds it to `subdirs` when it is a directory; `stat`
/// reads its metadata (not following symlinks).
fn scan_ahead_visit(
    path: PathBuf,
    stat: impl FnOnce() -> std::io::Result<Metadata>,
    selection: &Selection,
    progress: &Progress,
    subdirs: &mut Vec<PathBuf>,
) {
    if selection.leaves_out(&path, None) {
        return;
    }
    let Ok(metadata) = stat() else {
        return;
    };
    if selection.leaves_out(&path, Some(&metadata)) {
        return;
    }
    if metadata.is_dir() {
        if selection.is_other_filesystem(&path) {
            return;
        }
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
        listing.into_iter().rev().find(|s| {
            s.label.series()
                == Series {
                    host,
                    paths,
                    server: None,
                }
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::writer::{tests::repository, with_blob_sink};

    #[test]
    fn a_stream_of_several_chunks_sends_its_batchs_frame_off_before_it_waits_for_the_pool() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repository(dir.path());
        // A stream whose first chunk is small enough for a shared frame.
        let (data, first_chunk) = (1u64..)
            .map(|seed| {
                let mut state = seed;
                let data: Vec<u8> = (0..(3 << 20))
                    .map(|_| {
                        state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                        (state >> 56) as u8
                    })
                    .collect();
                let first = repo.chunker().chunks(&data).next().unwrap().to_vec();
                (data, first)
            })
            .find(|(_, first)| first.len() < crate::repo::writer::SHARED_FRAME_TARGET_BYTES)
            .unwrap();
        let (done, finished) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || {
            let stored = with_blob_sink(&repo, 4, &Progress::default(), |sink| {
                // An earlier small file of the batch holds what the stream's first chunk is.
                let mut frame = sink.shared_frame(BlobKind::Data);
                frame.add(&first_chunk)?;
                let (content, read) = store_stream(
                    sink,
                    Some(&mut frame),
                    None,
                    &data[..],
                    &ReadBlocks::default(),
                    &Progress::default(),
                )
                .map_err(|_| Error::InvalidInput("store_stream failed".into()))?;
                frame.finish()?;
                Ok((content, read))
            });
            let _ = done.send(stored.map(|((content, read), _)| (content, read)));
        });
        let (content, read) = finished
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("the stream is stored without waiting for itself")
            .unwrap();
        assert_eq!(read, 3 << 20);
        let Content::Chunks(chunks) = content else {
            panic!("a few chunks are listed inline")
        };
        assert!(chunks.len() >= 2);
    }
}
