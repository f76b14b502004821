//! Where a sync or restore into a directory reads from: the `TreeSource` trait and its
//! implementations — a checkpoint in a repository (`checkpoint`), a live directory (`local`),
//! a directory served by `cairn serve --source` (`remote`), and one entry of any of them
//! (`OneEntry`) — with the rebuilding of a changed file from the chunks the old file already
//! holds, which every source shares.

pub mod checkpoint;
pub mod filtered;
pub mod local;
#[cfg(feature = "client")]
pub mod remote;

use crate::chunker::Chunker;
use crate::error::{Error, PathError, Result};
use crate::fs::sparse::write_sparse;
use crate::id::BlobId;
use crate::progress::Progress;
use crate::read_blocks::ReadBlocks;
use crate::repo::Repository;
use crate::tree::{ChunkRef, Entry, Kind};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;

/// How a file was brought up to date.
pub enum FileWrite {
    /// The old file already held this content; nothing was written.
    Same,
    /// Written: bytes taken from the source (as sent) and from the old file.
    Written { fetched: u64, reused: u64 },
}

/// One file for `TreeSource::write_files`.
pub struct FileTask<'a, D, K> {
    pub dir: &'a D,
    pub entry: &'a Entry<K>,
    pub old: Option<&'a File>,
    pub out: &'a File,
}

impl<D, K: Kind> FileTask<'_, D, K> {
    /// Starts rebuilding this file from its `chunks` (see `start_rebuild`): `Ok` with the
    /// rebuild under way, or `Err` with the file's result when nothing is left to fetch (the
    /// old file holds the content) or its chunks could not be had.
    pub fn start_rebuild(
        &self,
        chunks: Result<Vec<ChunkRef>>,
        chunker: &Chunker,
        id_of: &dyn Fn(&[u8]) -> BlobId,
    ) -> std::result::Result<Rebuild, Result<FileWrite>> {
        let started = chunks.and_then(|chunks| {
            start_rebuild(&chunks, self.entry, self.old, chunker, id_of, self.out)
        });
        match started {
            Ok(Some(rebuild)) => Ok(rebuild),
            Ok(None) => Err(Ok(FileWrite::Same)),
            Err(e) => Err(Err(e)),
        }
    }
}

/// The entries of a source's directory, each directory with its handle.
pub type Listing<S> = Vec<(
    Entry<<S as TreeSource>::Kind>,
    Option<<S as TreeSource>::Dir>,
)>;

/// Where a directory sync reads from.
pub trait TreeSource: Sync {
    /// A handle on one source directory.
    type Dir: Clone + Send + Sync;
    /// The kind its entries have: stored (`EntryKind`, a checkpoint) or listed (`ListedKind`,
    /// a live directory).
    type Kind: Kind + Clone + Send + Sync;

    /// The entries of directory `dir`, sorted by name, each directory with its handle.
    /// Entries that cannot be read are left out and reported in `errors`.
    fn list(&self, dir: &Self::Dir, errors: &Mutex<Vec<PathError>>) -> Result<Listing<Self>>;

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
        entry: &Entry<Self::Kind>,
        old: Option<&File>,
        out: &File,
    ) -> Result<FileWrite>;

    /// The repository a checkpoint's chunks come from: files with nothing at their place
    /// are then written in rounds read pack by pack (`sync_round`), not through
    /// `write_files`.
    fn repository(&self) -> Option<&Repository> {
        None
    }

    /// Writes several files, each as `write_file` does; one result per file. A source that
    /// pays per request (over the network) asks for them together.
    fn write_files(&self, files: &[FileTask<'_, Self::Dir, Self::Kind>]) -> Vec<Result<FileWrite>> {
        files
            .iter()
            .map(|f| self.write_file(f.dir, f.entry, f.old, f.out))
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

thread_local! {
    /// The blocks the old files a thread reads are read into, kept for its next one.
    static OLD_FILE_BLOCKS: ReadBlocks = ReadBlocks::default();
}

/// Starts writing the file of `entry`, whose chunks are `chunks`, into `out`: every chunk
/// `old` already holds (chunked with `chunker`, named by `id_of`) is copied from it. `None`
/// when `old` holds exactly these chunks: nothing is written.
fn start_rebuild(
    chunks: &[ChunkRef],
    entry: &Entry<impl Kind>,
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
        OLD_FILE_BLOCKS
            .with(|blocks| {
                chunker.for_each_chunk(old, blocks, |chunk| {
                    let id = id_of(chunk);
                    if wanted.contains(&id) {
                        held.entry(id).or_insert((offset, chunk.len()));
                    }
                    old_ids.push(id);
                    offset += chunk.len() as u64;
                    Ok::<(), std::io::Error>(())
                })
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

pub(crate) fn write_error(e: std::io::Error) -> Error {
    Error::io("writing the new file", e)
}

/// Writes `data` at offset `at` of the new file, leaving holes where it is all zeros.
pub fn write_at(out: &File, at: u64, data: &[u8]) -> Result<()> {
    write_sparse(out, at, data).map_err(write_error)
}

/// Writes fetched chunks (`parts`, for `batch`, a run of a rebuild's missing chunks); the
/// fetch has checked each against its id.
pub fn write_fetched(
    entry: &Entry<impl Kind>,
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
    entry: &Entry<impl Kind>,
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
    crate::sync::runs(missing, FETCH_CHUNKS, FETCH_BYTES, |(_, c)| c.length as u64)
}

/// The bytes written must be what the entry says.
pub(crate) fn check_size(written: u64, entry: &Entry<impl Kind>) -> Result<()> {
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

/// One entry (not a directory) of directory `parent` of a source, written into the target
/// under a name of its own: `cairn sync FILE DIR/NAME`, or a restore of one file of a
/// checkpoint. Its own directory handle is `()`: the listing is this one entry.
pub struct OneEntry<'a, S: TreeSource> {
    source: &'a S,
    parent: S::Dir,
    /// As listed in its directory.
    entry: Entry<S::Kind>,
    /// The name it gets in the target.
    name: Vec<u8>,
}

impl<'a, S: TreeSource> OneEntry<'a, S> {
    /// Entry `entry` of `source`'s directory `parent`, to be named `name` in the target.
    pub fn new(source: &'a S, parent: S::Dir, entry: Entry<S::Kind>, name: &[u8]) -> Result<Self> {
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
    type Kind = S::Kind;

    fn count(&self, _: &(), progress: &Progress, _: &AtomicBool) {
        progress.set_totals(u64::from(self.entry.is_file()), self.entry.size);
    }

    fn list(&self, _: &(), _: &Mutex<Vec<PathError>>) -> Result<Vec<(Entry<S::Kind>, Option<()>)>> {
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
        _: &Entry<S::Kind>,
        old: Option<&File>,
        out: &File,
    ) -> Result<FileWrite> {
        self.source.write_file(&self.parent, &self.entry, old, out)
    }
}
