//! Source → directory, like rsync: make a target directory match a checkpoint's tree or a
//! live directory, touching only what differs.
//!
//! The planner (the calling thread) walks the source in name order next to the target. A
//! regular file with the source's size and mtime is left alone; any other file goes to the
//! workers, which rebuild it in a temporary file beside it and rename that over the old one,
//! so an interrupted sync never leaves a half-written file under a real name. A rebuilt file
//! takes every chunk the old file already holds from there (chunked the same way) and only
//! the rest from the source; when the old file turns out to hold exactly the source's chunks,
//! only its metadata is set. Directories, symlinks and special files are created or replaced
//! as needed; with `delete`, whatever the source lacks is removed. Directory metadata is
//! applied last, deepest first.
//!
//! Nothing is written outside the target (invariant 4): source names are validated, an
//! existing symlink or file where a directory belongs is removed rather than followed, and
//! every file is opened with `O_NOFOLLOW`.

use super::{SyncError, SyncOptions, SyncReport};
use crate::chunker::Chunker;
use crate::error::{Error, IoContext, Result};
use crate::fsmeta::{apply_metadata, entry_from_metadata, make_node, mtime_ns, read_xattrs};
use crate::id::BlobId;
use crate::progress::Progress;
use crate::repo::Repository;
use crate::restore::{HardLinkGroups, clear_path, write_sparse};
use crate::throttle::RateLimiter;
use crate::tree::{ChunkRef, Content, Entry, EntryKind, file_chunks, is_valid_name, load_tree};
use crossbeam_channel::bounded;
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Temporary files of a sync start with this; leftovers of an interrupted run are removed.
const TEMP_PREFIX: &str = ".cairn-sync-";

/// How a file was brought up to date.
pub enum FileWrite {
    /// The old file already held this content; nothing was written.
    Same,
    /// Written: bytes taken from the source (as sent) and from the old file.
    Written { fetched: u64, reused: u64 },
}

/// One file for `TreeSource::write_files`.
pub struct FileTask<'a, D> {
    pub dir: &'a D,
    pub entry: &'a Entry,
    pub old: Option<&'a File>,
    pub out: &'a File,
}

/// Where a directory sync reads from.
pub trait TreeSource: Sync {
    /// A handle on one source directory.
    type Dir: Clone + Send + Sync;

    /// The entries of directory `dir`, sorted by name, each directory with its handle.
    /// Entries that cannot be read are left out and reported in `errors`.
    fn list(
        &self,
        dir: &Self::Dir,
        errors: &Mutex<Vec<SyncError>>,
    ) -> Result<Vec<(Entry, Option<Self::Dir>)>>;

    /// Counts the regular files below `root` and their bytes into `progress`: the total
    /// against which progress and the ETA are shown. Stops early when `stop` is set.
    fn count(&self, root: &Self::Dir, progress: &Progress, stop: &AtomicBool);

    /// Every byte received from the source so far, for a source that counts them (over the
    /// network: listings and chunk lists too); it then stands for `bytes_transferred`.
    fn bytes_received(&self) -> Option<u64> {
        None
    }

    /// Writes regular file `entry` of directory `dir` into `out` (new and empty), taking
    /// what it can from `old`, the file now at its place.
    fn write_file(
        &self,
        dir: &Self::Dir,
        entry: &Entry,
        old: Option<&File>,
        out: &File,
        limiter: Option<&RateLimiter>,
    ) -> Result<FileWrite>;

    /// Writes several files, each as `write_file` does; one result per file. A source that
    /// pays per request (over the network) asks for them together.
    fn write_files(
        &self,
        files: &[FileTask<'_, Self::Dir>],
        limiter: Option<&RateLimiter>,
    ) -> Vec<Result<FileWrite>> {
        files
            .iter()
            .map(|f| self.write_file(f.dir, f.entry, f.old, f.out, limiter))
            .collect()
    }
}

/// A checkpoint's tree in a repository.
pub struct CheckpointSource<'a> {
    pub repo: &'a Repository,
    /// The regular files in the tree and their bytes (the checkpoint's statistics).
    pub totals: (u64, u64),
}

impl TreeSource for CheckpointSource<'_> {
    type Dir = BlobId;

    fn count(&self, _: &BlobId, progress: &Progress, _: &AtomicBool) {
        progress.set_totals(self.totals.0, self.totals.1);
    }

    fn list(
        &self,
        dir: &BlobId,
        _: &Mutex<Vec<SyncError>>,
    ) -> Result<Vec<(Entry, Option<BlobId>)>> {
        let tree = load_tree(self.repo, dir)?;
        Ok(tree
            .entries
            .into_iter()
            .map(|entry| match entry.kind {
                EntryKind::Dir(id) => (entry, Some(id)),
                _ => (entry, None),
            })
            .collect())
    }

    fn write_file(
        &self,
        _: &BlobId,
        entry: &Entry,
        old: Option<&File>,
        out: &File,
        limiter: Option<&RateLimiter>,
    ) -> Result<FileWrite> {
        let EntryKind::File(content) = &entry.kind else {
            return Err(Error::InvalidInput("not a regular file".into()));
        };
        let chunks = file_chunks(self.repo, content)?;
        let repo = self.repo;
        let id_of = |data: &[u8]| BlobId(repo.codec().id_of(data));
        let mut fetch = |missing: &[(u64, ChunkRef)]| -> Result<(Vec<Vec<u8>>, u64)> {
            let mut parts = Vec::with_capacity(missing.len());
            let mut stored = 0;
            for (_, chunk) in missing {
                let location = repo.locate(&chunk.id)?;
                let length = location.entry.length as u64;
                if let Some(limiter) = limiter {
                    limiter.take(length);
                }
                stored += length;
                parts.push(repo.read_blob_at(&location, &chunk.id)?);
            }
            Ok((parts, stored))
        };
        rebuild_file(&chunks, entry, old, repo.chunker(), &id_of, &mut fetch, out)
    }
}

/// Chunks fetched per call of a rebuild's `fetch`, at most, and bytes.
const FETCH_CHUNKS: usize = 64;
const FETCH_BYTES: u64 = 32 << 20;

/// Gets the given chunks (with their offsets in the file): their bytes, in order, each
/// checked against its id, and the bytes that crossed to get them.
pub type Fetch<'a> = dyn FnMut(&[(u64, ChunkRef)]) -> Result<(Vec<Vec<u8>>, u64)> + 'a;

/// A file being rebuilt: the chunks the old file held are written; `missing` are to come.
pub struct Rebuild {
    pub missing: Vec<(u64, ChunkRef)>,
    size: u64,
    reused: u64,
}

/// Starts writing the file of `entry`, whose chunks are `chunks`, into `out`: every chunk
/// `old` already holds (chunked with `chunker`, named by `id_of`) is copied from it. `None`
/// when `old` holds exactly these chunks: nothing is written.
pub fn start_rebuild(
    chunks: &[ChunkRef],
    entry: &Entry,
    old: Option<&File>,
    chunker: &Chunker,
    id_of: &dyn Fn(&[u8]) -> BlobId,
    out: &File,
) -> Result<Option<Rebuild>> {
    let mut held = HashMap::new();
    if let Some(old) = old {
        let wanted: HashSet<BlobId> = chunks.iter().map(|c| c.id).collect();
        let mut old_ids = Vec::new();
        let mut offset = 0u64;
        let mut buffer = Vec::new();
        chunker
            .for_each_chunk(old, &mut buffer, |chunk| {
                let id = id_of(chunk);
                if wanted.contains(&id) {
                    held.entry(id).or_insert((offset, chunk.len()));
                }
                old_ids.push(id);
                offset += chunk.len() as u64;
                Ok::<(), std::io::Error>(())
            })
            .map_err(|e| Error::io("reading the file in the target", e))?;
        if old_ids.len() == chunks.len() && old_ids.iter().zip(chunks).all(|(a, b)| *a == b.id) {
            return Ok(None);
        }
    }
    let (mut offset, mut reused) = (0u64, 0u64);
    let mut missing = Vec::new();
    for chunk in chunks {
        match (held.get(&chunk.id), old) {
            (Some(&(at, length)), Some(old)) => {
                let mut data = vec![0; length];
                old.read_exact_at(&mut data, at)
                    .map_err(|e| Error::io("reading the file in the target", e))?;
                // Checked again: the old file may have changed since it was chunked.
                if id_of(&data) == chunk.id {
                    write_sparse(out, offset, &data).map_err(write_error)?;
                    reused += length as u64;
                } else {
                    missing.push((offset, *chunk));
                }
            }
            _ => missing.push((offset, *chunk)),
        }
        offset += chunk.length as u64;
    }
    check_size(offset, entry)?;
    Ok(Some(Rebuild {
        missing,
        size: offset,
        reused,
    }))
}

fn write_error(e: std::io::Error) -> Error {
    Error::io("writing the new file", e)
}

/// Writes `data` at offset `at` of the new file, leaving holes where it is all zeros.
pub fn write_at(out: &File, at: u64, data: &[u8]) -> Result<()> {
    write_sparse(out, at, data).map_err(write_error)
}

/// Writes fetched chunks (`parts`, for `batch`, a run of a rebuild's missing chunks); the
/// fetch has checked each against its id.
pub fn write_fetched(
    entry: &Entry,
    batch: &[(u64, ChunkRef)],
    parts: &[Vec<u8>],
    out: &File,
) -> Result<()> {
    for ((at, chunk), data) in batch.iter().zip(parts) {
        if data.len() != chunk.length as usize {
            return Err(Error::corrupt(
                entry.name_lossy(),
                format!("the chunk at offset {at} has the wrong length"),
            ));
        }
        write_at(out, *at, data)?;
    }
    Ok(())
}

/// Ends a rebuild whose missing chunks are all written; `fetched` bytes crossed for them.
pub fn finish_rebuild(rebuild: Rebuild, fetched: u64, out: &File) -> Result<FileWrite> {
    out.set_len(rebuild.size).map_err(write_error)?;
    Ok(FileWrite::Written {
        fetched,
        reused: rebuild.reused,
    })
}

/// Writes the file of `entry` as `start_rebuild` says, the missing chunks from `fetch` in
/// batches.
pub fn rebuild_file(
    chunks: &[ChunkRef],
    entry: &Entry,
    old: Option<&File>,
    chunker: &Chunker,
    id_of: &dyn Fn(&[u8]) -> BlobId,
    fetch: &mut Fetch,
    out: &File,
) -> Result<FileWrite> {
    let Some(rebuild) = start_rebuild(chunks, entry, old, chunker, id_of, out)? else {
        return Ok(FileWrite::Same);
    };
    let mut fetched = 0;
    for batch in fetch_batches(&rebuild.missing) {
        let (parts, crossed) = fetch(batch)?;
        write_fetched(entry, batch, &parts, out)?;
        fetched += crossed;
    }
    finish_rebuild(rebuild, fetched, out)
}

/// Runs of at most `FETCH_CHUNKS` chunks and `FETCH_BYTES` bytes.
fn fetch_batches(missing: &[(u64, ChunkRef)]) -> Vec<&[(u64, ChunkRef)]> {
    super::runs(missing, FETCH_CHUNKS, FETCH_BYTES, |(_, c)| c.length as u64)
}

/// The bytes written must be what the entry says.
fn check_size(written: u64, entry: &Entry) -> Result<()> {
    if written != entry.size {
        return Err(Error::corrupt(
            entry.name_lossy(),
            format!(
                "source holds {written} bytes where its listing said {}",
                entry.size
            ),
        ));
    }
    Ok(())
}

/// A live directory on this machine.
pub struct DirectorySource;

impl TreeSource for DirectorySource {
    type Dir = PathBuf;

    fn count(&self, root: &PathBuf, progress: &Progress, stop: &AtomicBool) {
        crate::backup::count_tree(root, progress, 2, stop);
    }

    fn list(
        &self,
        dir: &PathBuf,
        errors: &Mutex<Vec<SyncError>>,
    ) -> Result<Vec<(Entry, Option<PathBuf>)>> {
        let report = |path: &Path, message: String| {
            errors.lock().expect("not poisoned").push(SyncError {
                path: path.to_owned(),
                message,
            })
        };
        let mut children: Vec<_> = fs::read_dir(dir)
            .context_io(|| format!("reading source directory {}", dir.display()))?
            .filter_map(|child| match child {
                Ok(child) => Some(child),
                Err(e) => {
                    report(dir, e.to_string());
                    None
                }
            })
            .collect();
        children.sort_by_key(|child| child.file_name());
        let mut entries = Vec::with_capacity(children.len());
        for child in children {
            let path = child.path();
            match local_entry(&child) {
                Ok(Some(entry)) => {
                    let subdir = entry.is_dir().then(|| path.clone());
                    entries.push((entry, subdir));
                }
                Ok(None) => {}
                Err(e) => report(&path, e.to_string()),
            }
        }
        Ok(entries)
    }

    fn write_file(
        &self,
        dir: &PathBuf,
        entry: &Entry,
        old: Option<&File>,
        out: &File,
        limiter: Option<&RateLimiter>,
    ) -> Result<FileWrite> {
        let path = dir.join(OsStr::from_bytes(&entry.name));
        let context = || format!("reading {}", path.display());
        let source = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .context_io(context)?;
        if let Some(old) = old
            && old.metadata().is_ok_and(|m| m.len() == entry.size)
            && same_bytes(&source, old).context_io(context)?
        {
            return Ok(FileWrite::Same);
        }
        let mut buffer = vec![0; 1 << 20];
        let mut offset = 0u64;
        loop {
            let read = source.read_at(&mut buffer, offset).context_io(context)?;
            if read == 0 {
                break;
            }
            if let Some(limiter) = limiter {
                limiter.take(read as u64);
            }
            write_sparse(out, offset, &buffer[..read])
                .map_err(|e| Error::io("writing the new file", e))?;
            offset += read as u64;
        }
        check_size(offset, entry)?;
        out.set_len(offset)
            .map_err(|e| Error::io("writing the new file", e))?;
        Ok(FileWrite::Written {
            fetched: offset,
            reused: 0,
        })
    }
}

/// The entry for one directory entry of a live source; `None` for sockets.
pub(crate) fn local_entry(child: &fs::DirEntry) -> std::io::Result<Option<Entry>> {
    let metadata = child.metadata()?;
    entry_of(
        &child.path(),
        child.file_name().as_bytes().to_vec(),
        &metadata,
    )
}

/// The entry of `path` (not following a symlink), named `name`; `None` for a socket.
pub(crate) fn path_entry(path: &Path, name: Vec<u8>) -> std::io::Result<Option<Entry>> {
    entry_of(path, name, &fs::symlink_metadata(path)?)
}

fn entry_of(path: &Path, name: Vec<u8>, metadata: &fs::Metadata) -> std::io::Result<Option<Entry>> {
    let file_type = metadata.file_type();
    let kind = if file_type.is_dir() {
        // The id is never read: a live directory is reached by its path.
        EntryKind::Dir(BlobId([0; 32]))
    } else if file_type.is_file() {
        EntryKind::File(Content::Chunks(Vec::new()))
    } else if file_type.is_symlink() {
        EntryKind::Symlink(fs::read_link(path)?.as_os_str().as_bytes().to_vec())
    } else if file_type.is_fifo() {
        EntryKind::Fifo
    } else if file_type.is_char_device() {
        EntryKind::CharDevice(metadata.rdev())
    } else if file_type.is_block_device() {
        EntryKind::BlockDevice(metadata.rdev())
    } else {
        return Ok(None);
    };
    let xattrs = read_xattrs(path).unwrap_or_default();
    Ok(Some(entry_from_metadata(name, metadata, kind, xattrs)))
}

/// Whether two open files hold the same bytes.
fn same_bytes(a: &File, b: &File) -> std::io::Result<bool> {
    let (mut a, mut b) = (std::io::BufReader::new(a), std::io::BufReader::new(b));
    let (mut x, mut y) = (vec![0; 1 << 16], vec![0; 1 << 16]);
    loop {
        let n = read_full(&mut a, &mut x)?;
        let m = read_full(&mut b, &mut y)?;
        if n != m || x[..n] != y[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

/// Fills `buffer` as far as the reader goes; returns the bytes read.
fn read_full(reader: &mut impl Read, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// A file for the workers.
struct FileJob<D> {
    dir: D,
    path: PathBuf,
    entry: Entry,
    /// Whether a regular file is at `path` now.
    has_old: bool,
}

/// A fresh temporary name beside `path`.
fn temp_path(path: &Path) -> PathBuf {
    let suffix = hex::encode(crate::crypto::random_bytes::<8>());
    path.with_file_name(format!("{TEMP_PREFIX}{suffix}"))
}

/// Files a worker takes on together, at most.
const FILES_PER_BATCH: usize = 64;

/// A file ready to be written: the old one (if a regular file is there) and the new one,
/// open under its temporary name.
struct Prepared {
    old: Option<File>,
    temp: PathBuf,
    out: File,
}

fn prepare_file<D>(job: &FileJob<D>) -> Result<Prepared> {
    let path = &job.path;
    let old = if job.has_old {
        let opened = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path);
        opened.ok()
    } else {
        None
    };
    let temp = temp_path(path);
    let out = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(&temp)
        .context_io(|| format!("creating {}", temp.display()))?;
    Ok(Prepared { old, temp, out })
}

/// Puts a written file in place (metadata, then rename over the old one), or, when the old
/// one already held the content, only sets its metadata; removes the temporary file when
/// anything failed.
fn finish_file<D>(
    job: &FileJob<D>,
    prepared: Prepared,
    written: Result<FileWrite>,
) -> Result<FileWrite> {
    let Prepared { temp, out, .. } = prepared;
    drop(out);
    let path = &job.path;
    let placed = written.and_then(|how| {
        let metadata_of = |p: &Path| {
            apply_metadata(p, &job.entry)
                .context_io(|| format!("setting metadata of {}", p.display()))
        };
        match how {
            FileWrite::Same => {
                fs::remove_file(&temp).context_io(|| format!("removing {}", temp.display()))?;
                metadata_of(path)?;
            }
            FileWrite::Written { .. } => {
                metadata_of(&temp)?;
                fs::rename(&temp, path).context_io(|| format!("replacing {}", path.display()))?;
            }
        }
        Ok(how)
    });
    if placed.is_err() {
        let _ = fs::remove_file(&temp);
    }
    placed
}

/// Brings a batch of files up to date; one result per job.
fn sync_files<S: TreeSource>(
    source: &S,
    jobs: &[FileJob<S::Dir>],
    limiter: Option<&RateLimiter>,
) -> Vec<Result<FileWrite>> {
    let prepared: Vec<Result<Prepared>> = jobs.iter().map(prepare_file).collect();
    let ready: Vec<(usize, &Prepared)> = prepared
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.as_ref().ok().map(|p| (i, p)))
        .collect();
    let tasks: Vec<FileTask<'_, S::Dir>> = ready
        .iter()
        .map(|&(i, p)| FileTask {
            dir: &jobs[i].dir,
            entry: &jobs[i].entry,
            old: p.old.as_ref(),
            out: &p.out,
        })
        .collect();
    let mut written: Vec<Option<Result<FileWrite>>> = jobs.iter().map(|_| None).collect();
    for (&(i, _), result) in ready.iter().zip(source.write_files(&tasks, limiter)) {
        written[i] = Some(result);
    }
    drop(tasks);
    jobs.iter()
        .zip(prepared)
        .zip(written)
        .map(|((job, prepared), written)| {
            let prepared = prepared?;
            let written = written.unwrap_or_else(|| Err(Error::InvalidInput("not written".into())));
            finish_file(job, prepared, written)
        })
        .collect()
}

/// Walks source and target side by side, fixing all but regular files, which go to workers.
struct Planner<'a, S: TreeSource> {
    source: &'a S,
    options: &'a SyncOptions,
    progress: &'a Progress,
    files: crossbeam_channel::Sender<FileJob<S::Dir>>,
    errors: &'a Mutex<Vec<SyncError>>,
    /// Directories with their metadata, deepest first.
    dirs: Vec<(PathBuf, Entry)>,
    /// Hard links to make once the files are written.
    links: HardLinkGroups,
    report: SyncReport,
}

impl<S: TreeSource> Planner<'_, S> {
    /// Syncs the source directory `dir` into `target`; when `present` is false (a dry run
    /// below a directory that does not exist yet) the target is not looked at.
    fn sync_dir(&mut self, dir: &S::Dir, target: &Path, present: bool) -> Result<()> {
        let entries = self.source.list(dir, self.errors)?;
        if present {
            self.remove_extras(&entries, target)?;
        }
        for (entry, subdir) in entries {
            if !is_valid_name(&entry.name) {
                return Err(Error::corrupt(
                    target.display().to_string(),
                    format!("refusing the source entry named {:?}", entry.name_lossy()),
                ));
            }
            let path = target.join(OsStr::from_bytes(&entry.name));
            let existing = if present {
                fs::symlink_metadata(&path).ok()
            } else {
                None
            };
            self.sync_entry(dir, subdir, path, existing, entry)?;
        }
        Ok(())
    }

    /// Removes what the source lacks (with `delete`) and this tool's own leftovers.
    fn remove_extras(&mut self, entries: &[(Entry, Option<S::Dir>)], target: &Path) -> Result<()> {
        let Ok(existing) = fs::read_dir(target) else {
            return Ok(());
        };
        let wanted: HashSet<&[u8]> = entries.iter().map(|(e, _)| e.name.as_slice()).collect();
        for child in existing.flatten() {
            let name = child.file_name();
            if wanted.contains(name.as_bytes()) {
                continue;
            }
            let leftover = name.as_bytes().starts_with(TEMP_PREFIX.as_bytes());
            if self.options.delete && !leftover {
                self.report.entries_deleted += 1;
            } else if !leftover {
                continue;
            }
            if !self.options.dry_run {
                clear_path(&child.path(), false)?;
            }
        }
        Ok(())
    }

    fn sync_entry(
        &mut self,
        dir: &S::Dir,
        subdir: Option<S::Dir>,
        path: PathBuf,
        existing: Option<fs::Metadata>,
        entry: Entry,
    ) -> Result<()> {
        let dry_run = self.options.dry_run;
        let created = |p: &Path| format!("creating {}", p.display());
        match &entry.kind {
            EntryKind::Dir(_) => {
                let is_dir = existing.as_ref().is_some_and(|m| m.is_dir());
                if !is_dir && !dry_run {
                    clear_path(&path, false)?;
                    fs::create_dir(&path).context_io(|| created(&path))?;
                }
                if let Some(subdir) = subdir {
                    match self.sync_dir(&subdir, &path, is_dir || !dry_run) {
                        Ok(()) => {}
                        // Wrong data from the source stops everything; a directory that
                        // cannot be read or written is reported and the rest goes on.
                        Err(e) if e.kind() == crate::error::ErrorKind::Corrupt => return Err(e),
                        Err(e) => self.errors.lock().expect("not poisoned").push(SyncError {
                            path: path.clone(),
                            message: e.to_string(),
                        }),
                    }
                }
                self.dirs.push((path, entry));
            }
            EntryKind::File(_) => {
                if self.links.defer(&entry, &path) {
                    self.progress.file_done(entry.size);
                    return Ok(());
                }
                let old = existing.as_ref().filter(|m| m.is_file());
                if let Some(old) = old
                    && old.len() == entry.size
                    && mtime_ns(old) == entry.mtime_ns
                {
                    // Same content by rsync's quick check; owner or mode may still differ.
                    let same_owner_and_mode = old.mode() & 0o7777 == entry.mode
                        && old.uid() == entry.uid
                        && old.gid() == entry.gid;
                    if !same_owner_and_mode && !dry_run {
                        apply_metadata(&path, &entry)
                            .context_io(|| format!("setting metadata of {}", path.display()))?;
                    }
                    self.report.files_unchanged += 1;
                    self.progress.file_done(entry.size);
                    return Ok(());
                }
                if dry_run {
                    self.report.files_written += 1;
                    self.progress.file_done(entry.size);
                    return Ok(());
                }
                if existing.as_ref().is_some_and(|m| m.is_dir()) {
                    clear_path(&path, false)?;
                }
                let job = FileJob {
                    dir: dir.clone(),
                    path,
                    entry,
                    has_old: old.is_some(),
                };
                self.files
                    .send(job)
                    .expect("sync workers outlive the planner");
            }
            EntryKind::Symlink(target) => {
                let same = existing
                    .as_ref()
                    .is_some_and(|m| m.file_type().is_symlink())
                    && fs::read_link(&path).is_ok_and(|t| t.as_os_str().as_bytes() == target);
                if same || dry_run {
                    self.count(same);
                    return Ok(());
                }
                let temp = temp_path(&path);
                std::os::unix::fs::symlink(OsStr::from_bytes(target), &temp)
                    .context_io(|| created(&path))?;
                apply_metadata(&temp, &entry).context_io(|| created(&path))?;
                if existing.as_ref().is_some_and(|m| m.is_dir()) {
                    clear_path(&path, false)?;
                }
                fs::rename(&temp, &path).context_io(|| created(&path))?;
                self.count(false);
            }
            EntryKind::Fifo | EntryKind::CharDevice(_) | EntryKind::BlockDevice(_) => {
                let same = existing.as_ref().is_some_and(|m| same_node(m, &entry.kind));
                if same || dry_run {
                    self.count(same);
                    return Ok(());
                }
                clear_path(&path, false)?;
                make_node(&path, &entry.kind).context_io(|| created(&path))?;
                apply_metadata(&path, &entry).context_io(|| created(&path))?;
                self.count(false);
            }
        }
        Ok(())
    }

    fn count(&mut self, unchanged: bool) {
        if unchanged {
            self.report.files_unchanged += 1;
        } else {
            self.report.files_written += 1;
        }
    }
}

/// Whether a special file in the target is the one an entry describes.
fn same_node(metadata: &fs::Metadata, kind: &EntryKind) -> bool {
    let file_type = metadata.file_type();
    match kind {
        EntryKind::Fifo => file_type.is_fifo(),
        EntryKind::CharDevice(rdev) => file_type.is_char_device() && metadata.rdev() == *rdev,
        EntryKind::BlockDevice(rdev) => file_type.is_block_device() && metadata.rdev() == *rdev,
        _ => false,
    }
}

/// What the workers add up: files found the same, files written, bytes fetched, bytes
/// reused.
type WorkerTotals = Mutex<(u64, u64, u64, u64)>;

/// Takes file jobs in batches and brings each file up to date.
fn run_sync_worker<S: TreeSource>(
    source: &S,
    jobs: crossbeam_channel::Receiver<FileJob<S::Dir>>,
    limiter: Option<&RateLimiter>,
    progress: &Progress,
    errors: &Mutex<Vec<SyncError>>,
    totals: &WorkerTotals,
) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < FILES_PER_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let results = sync_files(source, &batch, limiter);
        for (job, result) in batch.into_iter().zip(results) {
            match result {
                Ok(how) => {
                    let mut totals = totals.lock().expect("not poisoned");
                    match how {
                        FileWrite::Same => totals.0 += 1,
                        FileWrite::Written { fetched, reused } => {
                            totals.1 += 1;
                            totals.2 += fetched;
                            totals.3 += reused;
                            progress.bytes_read.fetch_add(fetched, Ordering::Relaxed);
                        }
                    }
                    progress.file_done(job.entry.size);
                }
                Err(e) => errors.lock().expect("not poisoned").push(SyncError {
                    path: job.path,
                    message: e.to_string(),
                }),
            }
        }
        if let Some(received) = source.bytes_received() {
            progress.bytes_read.store(received, Ordering::Relaxed);
        }
    }
}

/// Makes `target` match the source directory `root`; `root_entry`, when given, is the
/// metadata `target` itself gets.
pub fn run<S: TreeSource>(
    source: &S,
    root: S::Dir,
    root_entry: Option<&Entry>,
    target: &Path,
    options: &SyncOptions,
    progress: &Progress,
) -> Result<SyncReport> {
    match fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(Error::InvalidInput(format!(
                "sync target {} exists and is not a directory",
                target.display()
            )));
        }
        Err(_) if options.dry_run => {}
        Err(_) => fs::create_dir_all(target)
            .context_io(|| format!("creating sync target {}", target.display()))?,
    }
    let errors = Mutex::new(Vec::new());
    let totals: WorkerTotals = Mutex::new((0, 0, 0, 0));
    let limiter = options.rate_limit.map(RateLimiter::new);
    let threads = options.concurrency.max(1);
    let (files, jobs) = bounded::<FileJob<S::Dir>>(threads * FILES_PER_BATCH);
    let counting_stopped = AtomicBool::new(false);
    let (planned, mut dirs, links, mut report) = std::thread::scope(|scope| {
        scope.spawn(|| source.count(&root, progress, &counting_stopped));
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let (jobs, errors, totals, limiter) =
                    (jobs.clone(), &errors, &totals, limiter.as_ref());
                scope
                    .spawn(move || run_sync_worker(source, jobs, limiter, progress, errors, totals))
            })
            .collect();
        drop(jobs);
        let mut planner = Planner {
            source,
            options,
            progress,
            files,
            errors: &errors,
            dirs: Vec::new(),
            links: HardLinkGroups::default(),
            report: SyncReport {
                dry_run: options.dry_run,
                ..SyncReport::default()
            },
        };
        let planned = planner.sync_dir(&root, target, target.is_dir());
        let Planner {
            files,
            dirs,
            links,
            report,
            ..
        } = planner;
        // With the planner's sender gone, the workers finish what is queued and stop.
        drop(files);
        for worker in workers {
            worker.join().expect("sync workers do not panic");
        }
        counting_stopped.store(true, Ordering::Relaxed);
        (planned, dirs, links, report)
    });
    planned?;
    let mut errors = errors.into_inner().expect("not poisoned");
    for (path, first) in links.later {
        if options.dry_run {
            report.files_written += 1;
            continue;
        }
        match link(&path, &first, &errors) {
            Ok(true) => report.files_unchanged += 1,
            Ok(false) => report.files_written += 1,
            Err(e) => errors.push(SyncError {
                path,
                message: e.to_string(),
            }),
        }
    }
    if let Some(entry) = root_entry {
        dirs.push((target.to_owned(), entry.clone()));
    }
    if !options.dry_run {
        for (path, entry) in &dirs {
            apply_metadata(path, entry)
                .context_io(|| format!("setting metadata of {}", path.display()))?;
        }
    }
    let (same, written, fetched, reused) = totals.into_inner().expect("not poisoned");
    report.files_unchanged += same;
    report.files_written += written;
    report.bytes_transferred += source.bytes_received().unwrap_or(fetched);
    // What arrived after the workers' last update (the total's answer, the listing's end).
    if let Some(received) = source.bytes_received() {
        progress.bytes_read.store(received, Ordering::Relaxed);
    }
    report.bytes_reused += reused;
    report.errors = errors;
    Ok(report)
}

/// Makes `path` a hard link of `first`; `true` when it already was one.
fn link(path: &Path, first: &Path, errors: &[SyncError]) -> Result<bool> {
    if errors.iter().any(|e| e.path == first) {
        return Err(Error::InvalidInput(format!(
            "not linked: {} could not be written",
            first.display()
        )));
    }
    let inode = |p: &Path| fs::symlink_metadata(p).map(|m| (m.dev(), m.ino()));
    if let (Ok(a), Ok(b)) = (inode(path), inode(first))
        && a == b
    {
        return Ok(true);
    }
    let temp = temp_path(path);
    fs::hard_link(first, &temp).context_io(|| format!("linking {}", path.display()))?;
    if fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
        clear_path(path, false)?;
    }
    fs::rename(&temp, path).context_io(|| format!("replacing {}", path.display()))?;
    Ok(false)
}
