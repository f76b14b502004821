//! Source → directory, like rsync: make a target directory match a checkpoint's tree or a
//! live directory, touching only what differs.
//!
//! The planner (the calling thread) walks the source in name order next to the target,
//! comparing every recorded attribute (`itemize::differences`) and listing each change it
//! decides, in a dry run as in a real one. A regular file with the source's size and mtime
//! keeps its content, and only differing metadata is set on it in place (so are symlinks and
//! special files whose target or number is right); any other file goes to the workers,
//! which rebuild it in a temporary file beside it and rename that over the old one, so an
//! interrupted sync never leaves a half-written file under a real name. A rebuilt file
//! takes every chunk the old file already holds from there (chunked the same way) and only
//! the rest from the source; when the old file turns out to hold exactly the source's chunks,
//! only its metadata is set. From a checkpoint, files with nothing at their place go instead
//! to one round writer, in rounds read pack by pack as restore reads them (`sync_round`). Directories, symlinks and special files are created or replaced
//! as needed; with `delete`, whatever the source lacks is removed. A directory replaced by
//! another kind of entry loses what it holds only as deletions (`delete` or `force`, within
//! `max_delete`), like rsync. Directory metadata is applied last, deepest first.
//!
//! Nothing is written outside the target (invariant 4): every write goes through
//! `target::TargetDir`, beneath the target's descriptor; source names are validated; an
//! existing symlink or file where a directory belongs is removed rather than followed; a
//! file found the same gets its metadata on the descriptor it was compared through. Both
//! trees are walked with an explicit stack.
//!
//! A full filesystem (`ENOSPC`, `EDQUOT`) stops the sync at once, as it stops a restore
//! (`space`): the file being written never gets its name and its temporary file is removed,
//! the workers drop the files still queued, the walk stops, no hard links are made, and the
//! report says where it stopped, what is missing and how much more space that needs.

use super::itemize::{Change, Differences, Update, differences};
use super::{SyncOptions, SyncReport};
use crate::chunker::Chunker;
use crate::error::{Error, IoContext, PathError, Result};
use crate::fs::meta::{local_entry, path_entry, running_as_root};
use crate::fs::throttle::RateLimiter;
use crate::id::BlobId;
use crate::progress::Progress;
use crate::readahead::{self, ChunkStream, ReadChunk};
use crate::repo::Repository;
use crate::space::{SpaceFailure, is_out_of_space};
use crate::target::{
    TargetDir, check_path_length, may_adjust_in_place, same_kind, set_directories_metadata,
    set_metadata_of,
};
use crate::tree::{ChunkRef, Entry, EntryKind, is_valid_name, load_tree, sized_file_chunks};
use crossbeam_channel::bounded;
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Temporary files of a sync start with this; leftovers of an interrupted run are removed.
const TEMP_PREFIX: &str = ".cairn-sync-";

/// Runs of zero bytes at least this long, aligned to it, are left as holes.
const HOLE_BLOCK_BYTES: usize = 4096;

/// Files with nothing at their place handed to the round writer together, at most, and
/// bytes of their content: the chunks of a round are read pack by pack, so a pack is read
/// about once per round it serves. A round costs memory for its files' entries and chunk
/// lists, not their bytes.
const ROUND_FILES: usize = 32_768;
const ROUND_BYTES: u64 = 1 << 30;

/// Writes `data` at `offset`, skipping aligned all-zero blocks so they stay holes.
fn write_sparse(file: &fs::File, offset: u64, data: &[u8]) -> std::io::Result<()> {
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
fn fill_holes(file: &fs::File) -> std::io::Result<()> {
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
        errors: &Mutex<Vec<PathError>>,
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

    /// The repository a checkpoint's chunks come from: files with nothing at their place
    /// are then written in rounds read pack by pack (`sync_round`), not through
    /// `write_files`.
    fn repository(&self) -> Option<&Repository> {
        None
    }

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
    /// The regular files in the tree and their bytes, when known (a whole checkpoint's
    /// statistics); otherwise they are counted from the trees.
    pub totals: Option<(u64, u64)>,
}

impl TreeSource for CheckpointSource<'_> {
    type Dir = BlobId;

    fn count(&self, root: &BlobId, progress: &Progress, stop: &AtomicBool) {
        if let Some((files, bytes)) = self.totals {
            progress.set_totals(files, bytes);
            return;
        }
        // The trees are read again by the walk, from the repository's tree cache.
        let mut pending = vec![*root];
        while let Some(id) = pending.pop() {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let Ok(tree) = load_tree(self.repo, &id) else {
                return;
            };
            for entry in tree.entries {
                match entry.kind {
                    EntryKind::Dir(id) => pending.push(id),
                    EntryKind::File(_) => {
                        progress.total_files.fetch_add(1, Ordering::Relaxed);
                        progress
                            .total_bytes
                            .fetch_add(entry.size, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
        }
        progress.counted.store(true, Ordering::Relaxed);
    }

    fn repository(&self) -> Option<&Repository> {
        Some(self.repo)
    }

    fn list(
        &self,
        dir: &BlobId,
        _: &Mutex<Vec<PathError>>,
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
        dir: &BlobId,
        entry: &Entry,
        old: Option<&File>,
        out: &File,
        limiter: Option<&RateLimiter>,
    ) -> Result<FileWrite> {
        let task = FileTask {
            dir,
            entry,
            old,
            out,
        };
        self.write_files(std::slice::from_ref(&task), limiter)
            .pop()
            .expect("one result per file")
    }

    /// Starts each file's rebuild, then reads the chunks none of the old files held, for all
    /// the files together, ahead and coalesced (`readahead`).
    fn write_files(
        &self,
        files: &[FileTask<'_, BlobId>],
        limiter: Option<&RateLimiter>,
    ) -> Vec<Result<FileWrite>> {
        let repo = self.repo;
        let id_of = |data: &[u8]| BlobId(repo.codec().id_of(data));
        let mut results: Vec<Option<Result<FileWrite>>> = files.iter().map(|_| None).collect();
        let mut rebuilds: Vec<Option<Rebuild>> = files.iter().map(|_| None).collect();
        for (i, file) in files.iter().enumerate() {
            let EntryKind::File(content) = &file.entry.kind else {
                results[i] = Some(Err(Error::InvalidInput("not a regular file".into())));
                continue;
            };
            let started = sized_file_chunks(repo, content, file.entry.size).and_then(|chunks| {
                start_rebuild(
                    &chunks,
                    file.entry,
                    file.old,
                    repo.chunker(),
                    &id_of,
                    file.out,
                )
            });
            match started {
                Ok(Some(rebuild)) => rebuilds[i] = Some(rebuild),
                Ok(None) => results[i] = Some(Ok(FileWrite::Same)),
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        let mut fetched = vec![0u64; files.len()];
        let missing = rebuilds.iter().enumerate().flat_map(|(i, rebuild)| {
            let missing = rebuild.as_ref().map_or(&[][..], |r| &r.missing[..]);
            missing
                .iter()
                .map(move |&(at, chunk)| ((i, at, chunk.length), chunk))
        });
        std::thread::scope(|scope| {
            for ((i, at, length), chunk) in ChunkStream::new(repo, scope, missing) {
                if results[i].is_some() {
                    continue;
                }
                let written = chunk.and_then(|chunk| {
                    if let Some(limiter) = limiter {
                        limiter.take(chunk.stored_length);
                    }
                    if chunk.bytes.len() != length as usize {
                        return Err(Error::corrupt(
                            files[i].entry.name_lossy(),
                            format!("the chunk at offset {at} has the wrong length"),
                        ));
                    }
                    write_at(files[i].out, at, &chunk.bytes)?;
                    Ok(chunk.stored_length)
                });
                match written {
                    Ok(stored) => fetched[i] += stored,
                    Err(e) => results[i] = Some(Err(e)),
                }
            }
        });
        results
            .into_iter()
            .zip(rebuilds)
            .zip(files.iter().zip(fetched))
            .map(
                |((result, rebuild), (file, fetched))| match (result, rebuild) {
                    (Some(result), _) => result,
                    (None, Some(rebuild)) => finish_rebuild(rebuild, fetched, file.out),
                    (None, None) => Err(Error::InvalidInput("not written".into())),
                },
            )
            .collect()
    }
}

/// An old file is read for chunks to reuse only up to twice the new file's size and this.
const REUSE_SLACK_BYTES: u64 = 64 << 20;

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
    // An old file far larger than the new one (a huge sparse file planted there, say) is not
    // read through for the little it could give.
    let reuse_limit = entry
        .size
        .saturating_mul(2)
        .saturating_add(REUSE_SLACK_BYTES);
    let old = old.filter(|f| f.metadata().is_ok_and(|m| m.len() <= reuse_limit));
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
        errors: &Mutex<Vec<PathError>>,
    ) -> Result<Vec<(Entry, Option<PathBuf>)>> {
        let report = |path: &Path, message: String| {
            errors.lock().expect("not poisoned").push(PathError {
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
        // Not waiting on a FIFO, not taking a terminal, and only the file that was listed:
        // the source may be changed by someone else while the sync runs.
        let source = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(&path)
            .context_io(context)?;
        let metadata = source.metadata().context_io(context)?;
        if !metadata.is_file() || (metadata.dev(), metadata.ino()) != (entry.device, entry.inode) {
            return Err(Error::InvalidInput(format!(
                "{} changed while it was synced (not the file listed); left for the next run",
                path.display()
            )));
        }
        if let Some(old) = old
            && old.metadata().is_ok_and(|m| m.len() == entry.size)
            && same_bytes(&source, old).context_io(context)?
        {
            return Ok(FileWrite::Same);
        }
        let copied = copy_file(&source, &path, out, entry.size, limiter)?;
        check_size(copied, entry)?;
        Ok(FileWrite::Written {
            fetched: copied,
            reused: 0,
        })
    }
}

/// One entry (not a directory) of directory `parent` of a source, written into the target
/// under a name of its own: `cairn sync FILE DIR/NAME`, or a restore of one file of a
/// checkpoint. Its own directory handle is `()`: the listing is this one entry.
pub struct OneEntry<'a, S: TreeSource> {
    source: &'a S,
    parent: S::Dir,
    /// As listed in its directory.
    entry: Entry,
    /// The name it gets in the target.
    name: Vec<u8>,
}

impl<'a, S: TreeSource> OneEntry<'a, S> {
    /// Entry `entry` of `source`'s directory `parent`, to be named `name` in the target.
    pub fn new(source: &'a S, parent: S::Dir, entry: Entry, name: &[u8]) -> Result<Self> {
        if entry.is_dir() {
            return Err(Error::InvalidInput(format!(
                "{} is a directory: sync it as a tree",
                entry.name_lossy()
            )));
        }
        Ok(OneEntry {
            source,
            parent,
            entry,
            name: name.to_vec(),
        })
    }
}

impl<S: TreeSource> TreeSource for OneEntry<'_, S> {
    type Dir = ();

    fn count(&self, _: &(), progress: &Progress, _: &AtomicBool) {
        let is_file = matches!(self.entry.kind, EntryKind::File(_));
        progress.set_totals(u64::from(is_file), self.entry.size);
    }

    fn list(&self, _: &(), _: &Mutex<Vec<PathError>>) -> Result<Vec<(Entry, Option<()>)>> {
        let entry = Entry {
            name: self.name.clone(),
            ..self.entry.clone()
        };
        Ok(vec![(entry, None)])
    }

    fn bytes_received(&self) -> Option<u64> {
        self.source.bytes_received()
    }

    fn repository(&self) -> Option<&Repository> {
        self.source.repository()
    }

    fn write_file(
        &self,
        _: &(),
        _: &Entry,
        old: Option<&File>,
        out: &File,
        limiter: Option<&RateLimiter>,
    ) -> Result<FileWrite> {
        self.source
            .write_file(&self.parent, &self.entry, old, out, limiter)
    }
}

/// The entry named `name` in local directory `dir`, for a `OneEntry` source; a socket is
/// refused.
pub fn local_one_entry(dir: &Path, name: &OsStr) -> Result<Entry> {
    let path = dir.join(name);
    path_entry(&path, name.as_bytes().to_vec())
        .context_io(|| format!("reading {}", path.display()))?
        .ok_or_else(|| {
            Error::InvalidInput(format!(
                "{} is a socket, which cairn does not sync",
                path.display()
            ))
        })
}

/// Copies `from` into the new file `out`, leaving holes where blocks are zeros, and reads no
/// more than one byte past `size` (the size it was listed with): a file that grew, or a
/// device swapped in, is cut off there. Returns the bytes read; `from_path` names `from` in
/// a failure to read it.
fn copy_file(
    from: &File,
    from_path: &Path,
    out: &File,
    size: u64,
    limiter: Option<&RateLimiter>,
) -> Result<u64> {
    let mut buffer = vec![0; 1 << 20];
    let mut offset = 0u64;
    while offset <= size {
        let want = buffer.len().min((size + 1 - offset) as usize);
        let read = from
            .read_at(&mut buffer[..want], offset)
            .context_io(|| format!("reading {}", from_path.display()))?;
        if read == 0 {
            break;
        }
        if let Some(limiter) = limiter {
            limiter.take(read as u64);
        }
        write_at(out, offset, &buffer[..read])?;
        offset += read as u64;
    }
    out.set_len(offset).map_err(write_error)?;
    Ok(offset)
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

/// A file for the workers: entry `entry.name` of source directory `dir`, written into
/// `target`.
struct FileJob<D> {
    dir: D,
    target: Arc<TargetDir>,
    entry: Entry,
    /// Whether a regular file is at its place now.
    has_old: bool,
    /// Leave zero runs of a written file as holes, rather than fill them.
    sparse: bool,
}

impl<D> FileJob<D> {
    fn shown(&self) -> PathBuf {
        self.target.child_path(&self.entry.name)
    }
}

/// A fresh temporary name.
fn temp_name() -> Vec<u8> {
    let suffix = hex::encode(crate::crypto::random_bytes::<8>());
    format!("{TEMP_PREFIX}{suffix}").into_bytes()
}

/// Files the planner hands a worker together, at most (each holds its old and its new file
/// open while the batch is written), and bytes of their content: a checkpoint's chunks for
/// them are read in few requests (`readahead`), a remote source's in few round trips.
const FILES_PER_BATCH: usize = 64;
const BATCH_BYTES: u64 = crate::readahead::WINDOW_BYTES;

/// A file ready to be written: the old one (if a regular file is there) and the new one,
/// open under its temporary name.
struct Prepared {
    old: Option<File>,
    temp: Vec<u8>,
    out: File,
}

fn prepare_file<D>(job: &FileJob<D>) -> Result<Prepared> {
    let old = if job.has_old {
        job.target.open_file(&job.entry.name).ok()
    } else {
        None
    };
    let temp = temp_name();
    let out = job
        .target
        .create_file(&temp)
        .context_io(|| format!("creating {}", job.target.child_path(&temp).display()))?;
    Ok(Prepared { old, temp, out })
}

/// Makes the new file of `job` dense, unless the sync keeps holes (see `restore::fill_holes`).
fn fill_unless_sparse<D>(job: &FileJob<D>, out: &File) -> std::io::Result<()> {
    if job.sparse { Ok(()) } else { fill_holes(out) }
}

/// Puts a written file in place (metadata on its descriptor, then rename over the old one),
/// or, when the old one already held the content, sets the metadata on the old file's
/// descriptor: the file that was compared, whatever its name holds now. Removes the
/// temporary file when anything failed.
fn finish_file<D>(
    job: &FileJob<D>,
    prepared: Prepared,
    written: Result<FileWrite>,
) -> Result<FileWrite> {
    let Prepared { old, temp, out } = prepared;
    let shown = job.shown();
    let metadata_error = |e| Error::io(format!("setting metadata of {}", shown.display()), e);
    let placed = written.and_then(|how| {
        match &how {
            FileWrite::Same => {
                let old = old.as_ref().ok_or_else(|| {
                    Error::InvalidInput(format!("{}: no old file to keep", shown.display()))
                })?;
                let in_place = old
                    .metadata()
                    .is_ok_and(|m| may_adjust_in_place(&m, &job.entry));
                if !in_place {
                    // Another user's file, or one with a name outside the target: its bytes
                    // are right, but it is replaced by a copy rather than changed.
                    copy_file(old, &shown, &out, job.entry.size, None)?;
                    fill_unless_sparse(job, &out).map_err(write_error)?;
                    set_metadata_of(out.as_fd(), &job.entry, &shown).map_err(metadata_error)?;
                    drop(out);
                    job.target
                        .rename(&temp, &job.entry.name)
                        .context_io(|| format!("replacing {}", shown.display()))?;
                    return Ok(FileWrite::Written {
                        fetched: 0,
                        reused: job.entry.size,
                    });
                }
                set_metadata_of(old.as_fd(), &job.entry, &shown).map_err(metadata_error)?;
                drop(out);
                job.target.unlink(&temp).context_io(|| {
                    format!("removing {}", job.target.child_path(&temp).display())
                })?;
            }
            FileWrite::Written { .. } => {
                fill_unless_sparse(job, &out)
                    .context_io(|| format!("writing {}", shown.display()))?;
                set_metadata_of(out.as_fd(), &job.entry, &shown).map_err(metadata_error)?;
                drop(out);
                job.target
                    .rename(&temp, &job.entry.name)
                    .context_io(|| format!("replacing {}", shown.display()))?;
            }
        }
        Ok(how)
    });
    if placed.is_err() {
        let _ = job.target.unlink(&temp);
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

/// Where a file of a round stands.
enum Writing {
    /// No chunk has arrived: its temporary file is not created yet.
    Waiting,
    Open {
        temp: Vec<u8>,
        out: File,
    },
    /// It cannot be written; its temporary file (if any) goes once its last chunk has come.
    Failed {
        error: Error,
        temp: Option<Vec<u8>>,
    },
    Finished,
}

/// A file of a round: its job, its temporary file once created, the chunks still to come,
/// the bytes fetched for it and the bytes of it written (counted done as they are).
struct RoundFile<'a, D> {
    job: &'a FileJob<D>,
    state: Mutex<Writing>,
    chunks_left: AtomicUsize,
    fetched: AtomicU64,
    written: AtomicU64,
}

impl<D> RoundFile<'_, D> {
    /// Writes `chunk` (or keeps why it cannot be written) at `offset`, where `length` bytes
    /// belong; the file is finished, and recorded in `outcomes`, once this was its last chunk.
    fn take_chunk(
        &self,
        offset: u64,
        length: u32,
        chunk: Result<&ReadChunk>,
        limiter: Option<&RateLimiter>,
        outcomes: &Outcomes,
    ) {
        {
            let mut state = self.state.lock().expect("not poisoned");
            if !matches!(*state, Writing::Failed { .. })
                && let Err(error) = self.write_chunk(
                    &mut state,
                    offset,
                    length,
                    chunk,
                    limiter,
                    outcomes.progress,
                )
            {
                let temp = match std::mem::replace(&mut *state, Writing::Finished) {
                    Writing::Open { temp, .. } => Some(temp),
                    _ => None,
                };
                *state = Writing::Failed { error, temp };
            }
        }
        if self.chunks_left.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.record(outcomes);
        }
    }

    /// Finishes the file and records how that went.
    fn record(&self, outcomes: &Outcomes) {
        let result = self.finish();
        outcomes.record(self.job, result, self.written.load(Ordering::Relaxed));
    }

    /// Writes one chunk; its bytes count as done at once, so a large file's progress moves.
    fn write_chunk(
        &self,
        state: &mut Writing,
        offset: u64,
        length: u32,
        chunk: Result<&ReadChunk>,
        limiter: Option<&RateLimiter>,
        progress: &Progress,
    ) -> Result<()> {
        let chunk = chunk?;
        if let Some(limiter) = limiter {
            limiter.take(chunk.stored_length);
        }
        if chunk.bytes.len() != length as usize {
            return Err(Error::corrupt(
                self.job.entry.name_lossy(),
                format!("the chunk at offset {offset} has the wrong length"),
            ));
        }
        if matches!(state, Writing::Waiting) {
            *state = self.create()?;
        }
        let Writing::Open { out, .. } = state else {
            unreachable!("a file takes chunks only while open");
        };
        write_at(out, offset, &chunk.bytes)?;
        self.fetched
            .fetch_add(chunk.stored_length, Ordering::Relaxed);
        let length = u64::from(length);
        self.written.fetch_add(length, Ordering::Relaxed);
        progress.bytes_done.fetch_add(length, Ordering::Relaxed);
        Ok(())
    }

    /// Creates the file's temporary file beside its place.
    fn create(&self) -> Result<Writing> {
        let temp = temp_name();
        let target = &self.job.target;
        let out = target
            .create_file(&temp)
            .context_io(|| format!("creating {}", target.child_path(&temp).display()))?;
        Ok(Writing::Open { temp, out })
    }

    /// Puts the file, all of whose chunks are written, in place (`finish_file`); or removes
    /// its temporary file when it failed.
    fn finish(&self) -> Result<FileWrite> {
        let state = std::mem::replace(
            &mut *self.state.lock().expect("not poisoned"),
            Writing::Finished,
        );
        let (temp, out) = match state {
            Writing::Failed { error, temp } => {
                if let Some(temp) = temp {
                    let _ = self.job.target.unlink(&temp);
                }
                return Err(error);
            }
            Writing::Finished => unreachable!("a file is finished once"),
            // A file without chunks gets its (empty) temporary file here.
            Writing::Waiting => match self.create()? {
                Writing::Open { temp, out } => (temp, out),
                _ => unreachable!("create opens"),
            },
            Writing::Open { temp, out } => (temp, out),
        };
        let written = out
            .set_len(self.job.entry.size)
            .map_err(write_error)
            .map(|()| FileWrite::Written {
                fetched: self.fetched.load(Ordering::Relaxed),
                reused: 0,
            });
        let prepared = Prepared {
            old: None,
            temp,
            out,
        };
        finish_file(self.job, prepared, written)
    }
}

/// Writes a round of files that have nothing at their place: every chunk read from
/// `repo` pack by pack, `readers` stretches at once, into temporary files created as their
/// first chunk arrives; each file is put in place as its last chunk is written, and
/// recorded in `outcomes`. Once the filesystem is full, the packs not yet read are not read.
fn sync_round<D: Sync>(
    repo: &Repository,
    jobs: &[FileJob<D>],
    readers: usize,
    limiter: Option<&RateLimiter>,
    outcomes: &Outcomes,
) {
    let mut round = Vec::with_capacity(jobs.len());
    let mut places = Vec::new();
    for job in jobs {
        let chunks = match &job.entry.kind {
            EntryKind::File(content) => sized_file_chunks(repo, content, job.entry.size),
            _ => Err(Error::InvalidInput("not a regular file".into())),
        };
        let chunks = match chunks {
            Ok(chunks) => chunks,
            Err(e) => {
                outcomes.record(job, Err(e), 0);
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
            fetched: AtomicU64::new(0),
            written: AtomicU64::new(0),
        });
    }
    for file in round
        .iter()
        .filter(|f| f.chunks_left.load(Ordering::Relaxed) == 0)
    {
        file.record(outcomes);
    }
    readahead::read_by_pack(
        repo,
        places,
        readers,
        &|| outcomes.full.is_full(),
        &|&(file, offset, length), chunk| {
            let chunk = chunk.as_ref().map_err(Error::duplicate);
            round[file].take_chunk(offset, length, chunk, limiter, outcomes)
        },
    );
}

/// One directory being walked: the source's handle, where it is written (`None` in a dry run
/// below a directory that does not exist yet), whether this run made that directory (then
/// nothing is at any entry's place, and nothing there is looked at), its remaining entries,
/// and its own entry (whose metadata it gets at the end; `None` for the target itself).
struct Level<D> {
    target: Option<Arc<TargetDir>>,
    fresh: bool,
    relative: PathBuf,
    entries: std::vec::IntoIter<(Entry, Option<D>)>,
    source: D,
    own: Option<Entry>,
}

/// Where an entry goes: the directory it is written into (`None` in a dry run below a
/// directory that does not exist yet), whether this run made that directory, and its path
/// below the sync's target.
struct Place {
    target: Option<Arc<TargetDir>>,
    fresh: bool,
    relative: PathBuf,
}

/// Walks source and target side by side, fixing all but regular files, which go to workers,
/// and lists each change as it decides it.
struct Planner<'a, S: TreeSource> {
    source: &'a S,
    options: &'a SyncOptions,
    progress: &'a Progress,
    files: crossbeam_channel::Sender<Vec<FileJob<S::Dir>>>,
    /// Where rounds go (see `sync_round`), for a checkpoint source.
    rounds: crossbeam_channel::Sender<Vec<FileJob<S::Dir>>>,
    /// Files not yet handed to a worker, and the bytes of their content.
    batch: Vec<FileJob<S::Dir>>,
    batch_bytes: u64,
    /// Files for a round (see `sync_round`) not yet handed over, and their bytes.
    round: Vec<FileJob<S::Dir>>,
    round_bytes: u64,
    errors: &'a Mutex<Vec<PathError>>,
    full: &'a SpaceFailure,
    /// Directories (relative to the target) with their metadata, deepest first.
    dirs: Vec<(PathBuf, Entry)>,
    /// Hard links to make once the files are written, by paths relative to the target.
    links: LinkGroups,
    report: SyncReport,
    changes: &'a mut dyn FnMut(&Change),
}

impl<S: TreeSource> Planner<'_, S> {
    /// Hands the files gathered so far to a worker.
    fn send_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        self.batch_bytes = 0;
        self.files
            .send(std::mem::take(&mut self.batch))
            .expect("sync workers outlive the planner");
    }

    /// Hands the files gathered for a round so far to the round writer.
    fn send_round(&mut self) {
        if self.round.is_empty() {
            return;
        }
        self.round_bytes = 0;
        self.rounds
            .send(std::mem::take(&mut self.round))
            .expect("the round writer outlives the planner");
    }

    /// Syncs the source directory `root` into `target`, walking with an explicit stack.
    /// Wrong data from the source stops everything, and so does a full filesystem; an entry
    /// that cannot be read or written otherwise is reported and the rest goes on.
    fn sync_tree(
        &mut self,
        root: S::Dir,
        target: Option<Arc<TargetDir>>,
        fresh: bool,
    ) -> Result<()> {
        let entries = self.list_dir(&root, target.as_deref().filter(|_| !fresh), Path::new(""))?;
        let mut stack = vec![Level {
            target,
            fresh,
            relative: PathBuf::new(),
            entries: entries.into_iter(),
            source: root,
            own: None,
        }];
        while let Some(level) = stack.last_mut() {
            if self.full.is_full() {
                return Ok(());
            }
            let Some((entry, subdir)) = level.entries.next() else {
                let done = stack.pop().expect("the loop holds a level");
                if let Some(own) = done.own {
                    self.dirs.push((done.relative, own));
                }
                continue;
            };
            if !is_valid_name(&entry.name) {
                return Err(Error::corrupt(
                    self.shown(level.target.as_deref(), &level.relative)
                        .display()
                        .to_string(),
                    format!("refusing the source entry named {:?}", entry.name_lossy()),
                ));
            }
            let relative = level.relative.join(OsStr::from_bytes(&entry.name));
            let (source_dir, target) = (level.source.clone(), level.target.clone());
            let shown = self.shown(target.as_deref(), &relative);
            let place = Place {
                target,
                fresh: level.fresh,
                relative,
            };
            match self.sync_entry(&source_dir, subdir, place, entry) {
                Ok(Some(next)) => stack.push(next),
                Ok(None) => {}
                Err(e) if e.kind() == crate::error::ErrorKind::Corrupt => return Err(e),
                Err(e) => self.report_error(shown, e),
            }
        }
        Ok(())
    }

    /// Where `relative` is, for messages.
    fn shown(&self, target: Option<&TargetDir>, relative: &Path) -> PathBuf {
        match (target, relative.file_name()) {
            (Some(dir), Some(name)) => dir.child_path(name.as_bytes()),
            (Some(dir), None) => dir.path().to_owned(),
            (None, _) => relative.to_owned(),
        }
    }

    /// Reports that `path` could not be synced (a full filesystem stops the sync instead).
    fn report_error(&self, path: PathBuf, e: Error) {
        if is_out_of_space(&e) {
            self.full.record(path, &e);
            return;
        }
        self.errors.lock().expect("not poisoned").push(PathError {
            path,
            message: e.to_string(),
        });
    }

    /// The entries of source directory `dir`; with `target` (the directory it is written
    /// into, at `relative` below the sync's target), also removes what the source lacks
    /// there.
    fn list_dir(
        &mut self,
        dir: &S::Dir,
        target: Option<&TargetDir>,
        relative: &Path,
    ) -> Result<Vec<(Entry, Option<S::Dir>)>> {
        let entries = self.source.list(dir, self.errors)?;
        if let Some(target) = target {
            self.remove_extras(&entries, target, relative)?;
        }
        Ok(entries)
    }

    /// Removes what the source lacks (with `delete`, within `max_delete`) and this tool's
    /// own leftovers; `relative` is where `target` is below the sync's target.
    fn remove_extras(
        &mut self,
        entries: &[(Entry, Option<S::Dir>)],
        target: &TargetDir,
        relative: &Path,
    ) -> Result<()> {
        let Ok(mut existing) = target.names() else {
            return Ok(());
        };
        existing.sort_unstable();
        let wanted: HashSet<&[u8]> = entries.iter().map(|(e, _)| e.name.as_slice()).collect();
        let (dry_run, max_delete) = (self.options.dry_run, self.options.max_delete);
        for name in existing {
            if wanted.contains(name.as_slice()) {
                continue;
            }
            let removing = || format!("removing {}", target.child_path(&name).display());
            if name.starts_with(TEMP_PREFIX.as_bytes()) {
                if !dry_run {
                    target.remove(&name).context_io(removing)?;
                }
                continue;
            }
            if !self.options.delete {
                continue;
            }
            let (report, changes) = (&mut self.report, &mut *self.changes);
            let mut allow = |path: &Path, is_dir: bool| {
                delete_within(report, changes, max_delete, relative.join(path), is_dir)
            };
            if !target
                .remove_each(&name, dry_run, &mut allow)
                .context_io(removing)?
            {
                self.report.deletions_skipped += 1;
            }
        }
        Ok(())
    }

    /// Clears directory `name` of `target` (at `relative` below the sync's target) for an
    /// entry of another kind, as rsync does. With `delete` or `force` each entry it holds
    /// is asked for like a deletion (listed, counted, within `max_delete`); the directory
    /// itself is replaced, not deleted. Otherwise only an empty directory goes. In a dry
    /// run nothing is removed and the answer is the real run's. A directory that stays is
    /// an error: the entry is not synced.
    fn make_way(&mut self, target: &TargetDir, name: &[u8], relative: &Path) -> Result<()> {
        let (dry_run, max_delete) = (self.options.dry_run, self.options.max_delete);
        let deleting = self.options.delete || self.options.force;
        let own = Path::new(OsStr::from_bytes(name));
        let parent = relative.parent().unwrap_or(Path::new(""));
        let (report, changes) = (&mut self.report, &mut *self.changes);
        let mut allow = |path: &Path, is_dir: bool| {
            if path == own {
                return true;
            }
            deleting && delete_within(report, changes, max_delete, parent.join(path), is_dir)
        };
        if target
            .remove_each(name, dry_run, &mut allow)
            .context_io(|| format!("removing {}", target.child_path(name).display()))?
        {
            return Ok(());
        }
        if !deleting {
            return Err(Error::InvalidInput(
                "cannot replace a non-empty directory by the source's entry: run with \
                 --delete or --force to remove what it holds"
                    .into(),
            ));
        }
        self.report.deletions_skipped += 1;
        Err(Error::InvalidInput(
            "cannot replace the directory by the source's entry: removing what it holds \
             stopped at the --max-delete limit"
                .into(),
        ))
    }

    /// Brings one entry of `place` up to date; a directory is returned to be walked.
    fn sync_entry(
        &mut self,
        dir: &S::Dir,
        subdir: Option<S::Dir>,
        place: Place,
        entry: Entry,
    ) -> Result<Option<Level<S::Dir>>> {
        let Place {
            target,
            fresh,
            relative,
        } = place;
        let dry_run = self.options.dry_run;
        let name = entry.name.as_slice();
        let shown = self.shown(target.as_deref(), &relative);
        let created = || format!("creating {}", shown.display());
        check_path_length(&relative).context_io(created)?;
        let existing = match target.as_ref().filter(|_| !fresh) {
            Some(t) => t
                .metadata(name)
                .context_io(|| format!("reading {}", shown.display()))?,
            None => None,
        };
        let is_dir = existing.as_ref().is_some_and(|m| m.is_dir());
        // What the target holds of the entry's kind, and how it differs.
        let old = existing
            .as_ref()
            .filter(|m| same_kind(m, &entry.kind))
            .zip(target.as_deref());
        let compared = match old {
            Some((m, t)) => Some((m, compare(t, name, m, &entry)?)),
            None => None,
        };
        let differences = compared.map(|(_, d)| d);
        // The entry's metadata set where it is, when only that differs: `Some(true)` done (or
        // to be done, in a dry run), `Some(false)` nothing to do, `None` it must be made anew.
        let fixed_in_place = |content_differs: bool| -> Result<Option<bool>> {
            let Some((m, d)) = compared.filter(|_| !content_differs) else {
                return Ok(None);
            };
            if !d.metadata() {
                return Ok(Some(false));
            }
            if !may_adjust_in_place(m, &entry) {
                return Ok(None);
            }
            match target.as_deref().filter(|_| !dry_run) {
                Some(t) => Ok(t
                    .set_metadata_at(name, &entry)
                    .context_io(|| format!("setting metadata of {}", shown.display()))?
                    .then_some(true)),
                None => Ok(Some(true)),
            }
        };
        // Below here a missing target means a dry run: nothing is written.
        let writable = target.as_deref().filter(|_| !dry_run);
        match &entry.kind {
            EntryKind::Dir(_) => {
                self.report.dirs += 1;
                match differences {
                    None => self.list_change(Update::Created, &entry, &relative, None),
                    Some(d) if d.metadata() => {
                        self.list_change(Update::Attributes, &entry, &relative, Some(d))
                    }
                    Some(_) => {}
                }
                let subtarget = match (&target, dry_run) {
                    (Some(t), false) => Some(t.ensure_dir(name).context_io(created)?),
                    (Some(t), true) if is_dir => Some(
                        t.open_dir(name)
                            .context_io(|| format!("opening {}", shown.display()))?,
                    ),
                    _ => None,
                }
                .map(Arc::new);
                let Some(subdir) = subdir else {
                    self.dirs.push((relative, entry));
                    return Ok(None);
                };
                // Made by this run unless a directory was there: nothing inside to compare.
                let sub_fresh = subtarget.is_some() && !is_dir;
                let listed_target = subtarget.as_deref().filter(|_| !sub_fresh);
                let entries = match self.list_dir(&subdir, listed_target, &relative) {
                    Ok(entries) => entries,
                    Err(e) if e.kind() == crate::error::ErrorKind::Corrupt => return Err(e),
                    Err(e) => {
                        self.report_error(shown.clone(), e);
                        Vec::new()
                    }
                };
                return Ok(Some(Level {
                    target: subtarget,
                    fresh: sub_fresh,
                    relative,
                    entries: entries.into_iter(),
                    source: subdir,
                    own: Some(entry),
                }));
            }
            EntryKind::File(_) => {
                let group = self.links.group_of(&entry);
                if let (true, Some(t)) = (is_dir, &target) {
                    self.make_way(t, name, &relative)?;
                }
                if let LinkRole::Later(first) = &group {
                    let inode = existing.as_ref().map(|m| (m.dev(), m.ino()));
                    let (linked, listed) = self.links.later(first, inode, differences);
                    let mut change = Change::of(Update::HardLink, &entry, &relative, listed);
                    if !linked {
                        change.linked_to = Some(first.path.clone());
                    }
                    if !linked || listed.is_some_and(|d| d.metadata()) {
                        (self.changes)(&change);
                    }
                    self.links.pending.push(LaterLink {
                        path: relative,
                        first: first.path.clone(),
                        linked,
                    });
                    self.progress.file_done(entry.size);
                    return Ok(None);
                }
                let content_differs =
                    self.options.ignore_times || differences.is_none_or(|d| d.content());
                if let Some(fixed) = fixed_in_place(content_differs)? {
                    if fixed {
                        self.list_change(Update::Attributes, &entry, &relative, differences);
                    }
                    if let LinkRole::First(key) = group {
                        let inode = existing.as_ref().map(|m| (m.dev(), m.ino()));
                        self.links.first(key, &relative, inode, differences);
                    }
                    self.report.files_unchanged += 1;
                    self.progress.file_done(entry.size);
                    return Ok(None);
                }
                if let LinkRole::First(key) = group {
                    self.links.first(key, &relative, None, differences);
                }
                self.list_change(Update::Received, &entry, &relative, differences);
                let Some(target) = target.filter(|_| !dry_run) else {
                    self.report.files_written += 1;
                    self.progress.file_done(entry.size);
                    return Ok(None);
                };
                let job = FileJob {
                    dir: dir.clone(),
                    target,
                    has_old: existing.as_ref().is_some_and(|m| m.is_file()),
                    entry,
                    sparse: self.options.sparse,
                };
                if !job.has_old && self.source.repository().is_some() {
                    self.round_bytes += job.entry.size;
                    self.round.push(job);
                    if self.round.len() >= ROUND_FILES || self.round_bytes >= ROUND_BYTES {
                        self.send_round();
                    }
                } else {
                    self.batch_bytes += job.entry.size;
                    self.batch.push(job);
                    if self.batch.len() >= FILES_PER_BATCH || self.batch_bytes >= BATCH_BYTES {
                        self.send_batch();
                    }
                }
            }
            EntryKind::CharDevice(_) | EntryKind::BlockDevice(_) if !running_as_root() => {
                self.report.skipped.push(PathError {
                    path: shown,
                    message: "device node; only root can create it".into(),
                });
                return Ok(None);
            }
            EntryKind::Symlink(_)
            | EntryKind::Fifo
            | EntryKind::CharDevice(_)
            | EntryKind::BlockDevice(_) => {
                let value_differs = differences.is_none_or(|d| d.value);
                if let Some(fixed) = fixed_in_place(value_differs)? {
                    if fixed {
                        self.list_change(Update::Attributes, &entry, &relative, differences);
                    }
                    self.report.files_unchanged += 1;
                    return Ok(None);
                }
                if let (true, Some(t)) = (is_dir, &target) {
                    self.make_way(t, name, &relative)?;
                }
                self.list_change(Update::Created, &entry, &relative, differences);
                self.report.files_written += 1;
                let Some(t) = writable else {
                    return Ok(None);
                };
                // Made under a temporary name, then renamed over what is there: a symlink
                // or node is replaced at once, never missing.
                let temp = temp_name();
                match &entry.kind {
                    EntryKind::Symlink(link_target) => t.symlink(link_target, &temp),
                    kind => t.make_node(&temp, kind),
                }
                .context_io(created)?;
                let placed = t
                    .set_metadata_of_new(&temp, &entry)
                    .and_then(|()| t.rename(&temp, name));
                if let Err(e) = placed {
                    let _ = t.unlink(&temp);
                    return Err(e).context_io(created);
                }
            }
        }
        Ok(None)
    }

    /// Lists a change of `entry` at `relative`.
    fn list_change(
        &mut self,
        update: Update,
        entry: &Entry,
        relative: &Path,
        differences: Option<Differences>,
    ) {
        (self.changes)(&Change::of(update, entry, relative, differences));
    }
}

/// How entry `name` of `target` (`.` for the target itself), of `entry`'s kind as
/// `metadata` says, differs from `entry`.
fn compare(
    target: &TargetDir,
    name: &[u8],
    metadata: &fs::Metadata,
    entry: &Entry,
) -> Result<Differences> {
    let shown = || format!("reading {}", target.child_path(name).display());
    let xattrs = target.xattrs(name).context_io(shown)?;
    let link = match entry.kind {
        EntryKind::Symlink(_) => Some(target.read_link(name).context_io(shown)?),
        _ => None,
    };
    Ok(differences(
        metadata,
        &xattrs,
        link.as_deref(),
        entry,
        running_as_root(),
    ))
}

/// Whether `--delete` may remove one more entry (at `path` relative to the sync's target)
/// within `max_delete`; if so it is counted and listed.
fn delete_within(
    report: &mut SyncReport,
    changes: &mut dyn FnMut(&Change),
    max_delete: Option<u64>,
    path: PathBuf,
    is_dir: bool,
) -> bool {
    if max_delete.is_some_and(|max| report.entries_deleted >= max) {
        return false;
    }
    report.entries_deleted += 1;
    changes(&Change::deleted(path, is_dir));
    true
}

/// Where a regular file stands among the source's hard links.
enum LinkRole {
    /// Not a hard link.
    Alone,
    /// The first of its group met by the walk (its key): written like any file.
    First((u64, u64)),
    /// A later member: linked to the first once that is written.
    Later(FirstLink),
}

/// The first member of a hard-link group, as the planner left it.
#[derive(Clone)]
struct FirstLink {
    path: PathBuf,
    /// The inode at its place in the target, when that was kept (not written anew).
    kept_inode: Option<(u64, u64)>,
    /// How that inode differed from the entry before its metadata was set.
    differences: Option<Differences>,
}

/// A later member of a hard-link group, to be linked to the first unless it already is.
struct LaterLink {
    path: PathBuf,
    first: PathBuf,
    linked: bool,
}

/// The source's hard-link groups as the planner meets them, by paths relative to the target.
/// Whether a later member is already linked is decided when it is planned, from the
/// target as it was then, so a dry run decides as the real run does.
#[derive(Default)]
struct LinkGroups {
    firsts: HashMap<(u64, u64), FirstLink>,
    pending: Vec<LaterLink>,
}

impl LinkGroups {
    /// Where `entry` stands: alone, the first of its group, or a later member.
    fn group_of(&self, entry: &Entry) -> LinkRole {
        let Some(key) = entry.hardlink_key() else {
            return LinkRole::Alone;
        };
        match self.firsts.get(&key) {
            Some(first) => LinkRole::Later(first.clone()),
            None => LinkRole::First(key),
        }
    }

    /// Records the first member of group `key`, planned at `path`.
    fn first(
        &mut self,
        key: (u64, u64),
        path: &Path,
        kept_inode: Option<(u64, u64)>,
        differences: Option<Differences>,
    ) {
        let first = FirstLink {
            path: path.to_owned(),
            kept_inode,
            differences,
        };
        self.firsts.insert(key, first);
    }

    /// Whether a later member whose place holds `inode` is linked to `first` already, and
    /// what its line shows: the first's differences when it is (one inode), its own when not.
    fn later(
        &self,
        first: &FirstLink,
        inode: Option<(u64, u64)>,
        own: Option<Differences>,
    ) -> (bool, Option<Differences>) {
        match (first.kept_inode, inode) {
            (Some(a), Some(b)) if a == b => (true, first.differences),
            _ => (false, own),
        }
    }
}

/// What the workers add up: files written (or found to hold the content already, which is
/// what rsync's transfer of a file failing the quick check is too), bytes fetched, bytes
/// reused.
type WorkerTotals = Mutex<(u64, u64, u64)>;

/// Where the workers report each file: totals, progress, errors, a full filesystem.
struct Outcomes<'a> {
    progress: &'a Progress,
    errors: &'a Mutex<Vec<PathError>>,
    full: &'a SpaceFailure,
    totals: &'a WorkerTotals,
}

impl Outcomes<'_> {
    /// Records how the file of `job` was brought up to date, or why it was not;
    /// `counted` of its bytes were counted done as they were written.
    fn record<D>(&self, job: &FileJob<D>, result: Result<FileWrite>, counted: u64) {
        if result.is_err() {
            // A file not written is not done: its bytes stay to do.
            self.progress
                .bytes_done
                .fetch_sub(counted, Ordering::Relaxed);
        }
        match result {
            Ok(how) => {
                let mut totals = self.totals.lock().expect("not poisoned");
                totals.0 += 1;
                if let FileWrite::Written { fetched, reused } = how {
                    totals.1 += fetched;
                    totals.2 += reused;
                    self.progress
                        .bytes_read
                        .fetch_add(fetched, Ordering::Relaxed);
                }
                self.progress
                    .file_done(job.entry.size.saturating_sub(counted));
            }
            Err(e) if is_out_of_space(&e) => self.full.record(job.shown(), &e),
            // Once the filesystem is full, files given up on are not errors of their own.
            Err(_) if self.full.is_full() => {}
            Err(e) => self.errors.lock().expect("not poisoned").push(PathError {
                path: job.shown(),
                message: e.to_string(),
            }),
        }
    }
}

/// Takes batches of file jobs and brings each file up to date.
fn run_sync_worker<S: TreeSource>(
    source: &S,
    jobs: crossbeam_channel::Receiver<Vec<FileJob<S::Dir>>>,
    limiter: Option<&RateLimiter>,
    outcomes: &Outcomes,
) {
    for batch in jobs {
        // Once the filesystem is full, the queued files are dropped unwritten.
        if outcomes.full.is_full() {
            continue;
        }
        let results = sync_files(source, &batch, limiter);
        for (job, result) in batch.iter().zip(results) {
            outcomes.record(job, result, 0);
        }
        if let Some(received) = source.bytes_received() {
            outcomes
                .progress
                .bytes_read
                .store(received, Ordering::Relaxed);
        }
    }
}

/// Writes the rounds of a checkpoint source one after the other, each read from `repo`
/// with `readers` stretches at once.
fn run_round_writer<D: Sync>(
    repo: &Repository,
    rounds: crossbeam_channel::Receiver<Vec<FileJob<D>>>,
    readers: usize,
    limiter: Option<&RateLimiter>,
    outcomes: &Outcomes,
) {
    for round in rounds {
        if outcomes.full.is_full() {
            continue;
        }
        sync_round(repo, &round, readers, limiter, outcomes);
    }
}

/// The target directory as the run found it.
enum Opened {
    /// It was there (and, when the options require it, empty).
    Existing(TargetDir),
    /// This run made it: nothing in it needs looking at.
    Made(TargetDir),
    /// It is not there and this is a dry run.
    Absent,
}

/// Opens the target, creating it unless this is a dry run; refuses a target that holds
/// anything when `options.require_empty`.
fn open_target(target: &Path, options: &SyncOptions) -> Result<Opened> {
    let context = || format!("opening target {}", target.display());
    match fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() => {
            let dir = TargetDir::open(target, false).context_io(context)?;
            if options.require_empty && !dir.names().context_io(context)?.is_empty() {
                return Err(Error::InvalidInput(format!(
                    "target {} is not empty: choose an empty or new directory, or pass --overwrite",
                    target.display()
                )));
            }
            Ok(Opened::Existing(dir))
        }
        Ok(_) => Err(Error::InvalidInput(format!(
            "target {} exists and is not a directory",
            target.display()
        ))),
        Err(_) if options.dry_run => Ok(Opened::Absent),
        Err(_) => Ok(Opened::Made(
            TargetDir::open(target, true).context_io(context)?,
        )),
    }
}

/// Makes `target` match the source directory `root`; `root_entry`, when given, is the
/// metadata `target` itself gets. Each entry created, changed or deleted is given to
/// `changes` as it is decided, in the order of the walk, in a dry run as in a real one.
pub fn run<S: TreeSource>(
    source: &S,
    root: S::Dir,
    root_entry: Option<&Entry>,
    target: &Path,
    options: &SyncOptions,
    progress: &Progress,
    changes: &mut dyn FnMut(&Change),
) -> Result<SyncReport> {
    // Chunks read from a repository stay there while they are read.
    let _lock = match source.repository() {
        Some(repo) => crate::repo::lock::acquire_for_reading(repo, "restore")?,
        None => None,
    };
    let (target_dir, fresh) = match open_target(target, options)? {
        Opened::Existing(dir) => (Some(Arc::new(dir)), false),
        Opened::Made(dir) => (Some(Arc::new(dir)), true),
        Opened::Absent => (None, true),
    };
    if let Some(entry) = root_entry {
        let root_change = match target_dir.as_deref().filter(|_| !fresh) {
            None => Some(Change::of(Update::Created, entry, Path::new(""), None)),
            Some(dir) => {
                let reading = || format!("reading target {}", target.display());
                let metadata = dir.metadata(b".").context_io(reading)?;
                let metadata = metadata.ok_or_else(|| {
                    Error::InvalidInput(format!("target {} is gone", target.display()))
                })?;
                let d = compare(dir, b".", &metadata, entry)?;
                d.metadata()
                    .then(|| Change::of(Update::Attributes, entry, Path::new(""), Some(d)))
            }
        };
        if let Some(change) = root_change {
            changes(&change);
        }
    }
    let errors = Mutex::new(Vec::new());
    let full = SpaceFailure::default();
    let totals: WorkerTotals = Mutex::new((0, 0, 0));
    let limiter = options.rate_limit.map(RateLimiter::new);
    let threads = options.concurrency.max(1);
    let (files, jobs) = bounded::<Vec<FileJob<S::Dir>>>(threads);
    // A round is handed over once the writer is done with the one before: at most two are
    // held, one written and one planned.
    let (rounds, round_jobs) = bounded::<Vec<FileJob<S::Dir>>>(0);
    let outcomes = Outcomes {
        progress,
        errors: &errors,
        full: &full,
        totals: &totals,
    };
    let counting_stopped = AtomicBool::new(false);
    let (planned, mut dirs, links, mut report) = std::thread::scope(|scope| {
        scope.spawn(|| source.count(&root, progress, &counting_stopped));
        let (outcomes, limiter) = (&outcomes, limiter.as_ref());
        let mut workers: Vec<_> = (0..threads)
            .map(|_| {
                let jobs = jobs.clone();
                scope.spawn(move || run_sync_worker(source, jobs, limiter, outcomes))
            })
            .collect();
        drop(jobs);
        if let Some(repo) = source.repository() {
            let readers = threads.max(repo.backend().preferred_concurrency());
            workers.push(
                scope.spawn(move || run_round_writer(repo, round_jobs, readers, limiter, outcomes)),
            );
        }
        let mut planner = Planner {
            source,
            options,
            progress,
            files,
            rounds,
            batch: Vec::new(),
            batch_bytes: 0,
            round: Vec::new(),
            round_bytes: 0,
            errors: &errors,
            full: &full,
            dirs: Vec::new(),
            links: LinkGroups::default(),
            report: SyncReport {
                dry_run: options.dry_run,
                ..SyncReport::default()
            },
            changes,
        };
        let planned = planner.sync_tree(root.clone(), target_dir.clone(), fresh);
        planner.send_batch();
        planner.send_round();
        let Planner {
            files,
            rounds,
            dirs,
            links,
            report,
            ..
        } = planner;
        // With the planner's senders gone, the workers finish what is queued and stop.
        drop((files, rounds));
        for worker in workers {
            worker.join().expect("sync workers do not panic");
        }
        // Out of space, the count goes on to its end: the report says how much is missing.
        if !full.is_full() {
            counting_stopped.store(true, Ordering::Relaxed);
        }
        (planned, dirs, links, report)
    });
    planned?;
    let mut errors = errors.into_inner().expect("not poisoned");
    report.out_of_space = full.into_outcome(target).map(|mut full| {
        let total = progress.total_bytes.load(Ordering::Relaxed);
        full.set_missing(total.saturating_sub(progress.bytes_done.load(Ordering::Relaxed)));
        full
    });
    // Out of space, the files to link to may be missing; the report says what was synced.
    let pending = match report.out_of_space {
        Some(_) => &[][..],
        None => &links.pending[..],
    };
    for later in pending {
        if later.linked {
            report.files_unchanged += 1;
            continue;
        }
        let Some(root_dir) = target_dir.as_deref().filter(|_| !options.dry_run) else {
            report.files_written += 1;
            continue;
        };
        match link(root_dir, &later.path, &later.first, &errors) {
            Ok(()) => report.files_written += 1,
            Err(e) => errors.push(PathError {
                path: target.join(&later.path),
                message: e.to_string(),
            }),
        }
    }
    if let Some(root_dir) = target_dir.as_deref().filter(|_| !options.dry_run) {
        if let Some(entry) = root_entry {
            dirs.push((PathBuf::new(), entry.clone()));
        }
        for (path, message) in set_directories_metadata(root_dir, &dirs) {
            errors.push(PathError { path, message });
        }
    }
    let (written, fetched, reused) = totals.into_inner().expect("not poisoned");
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

/// Makes `path` a hard link of `first` (both relative to `root`).
fn link(root: &TargetDir, path: &Path, first: &Path, errors: &[PathError]) -> Result<()> {
    let shown_first = root.path().join(first);
    if errors.iter().any(|e| e.path == shown_first) {
        return Err(Error::InvalidInput(format!(
            "not linked: {} could not be written",
            shown_first.display()
        )));
    }
    let shown = root.path().join(path);
    let context = || format!("linking {}", shown.display());
    let (from, from_name) = root.open_parent(first).context_io(context)?;
    let (dir, name) = root.open_parent(path).context_io(context)?;
    let temp = temp_name();
    dir.hard_link(&from, from_name, &temp).context_io(context)?;
    dir.rename(&temp, name)
        .context_io(|| format!("replacing {}", shown.display()))?;
    // Renaming a link over another name of the same inode leaves both names.
    let _ = dir.unlink(&temp);
    Ok(())
}
