//! A file's bytes: its chunk index (end offsets, holes), reads answered from the chunk
//! cache or the repository, and `SEEK_DATA`/`SEEK_HOLE`.

use super::Vfs;
use super::namespace::NodeKind;
use super::walk_ahead::WalkStart;
use super::{Ino, VfsError, VfsResult};
use crate::error::Error;
use crate::holes::seek;
use crate::id::BlobId;
use crate::repo::Repository;
use crate::tree::{ChunkRef, Content, Entry, EntryKind, Tree, check_file_size, sized_file_chunks};
use quick_cache::sync::{Cache, GuardResult};
use std::ops::{Deref, Range};
use std::sync::{Arc, OnceLock};

/// A file's chunks with their end offsets, and which of them are holes (known once a seek
/// asks).
pub(super) struct ChunkIndex {
    pub(super) chunks: Arc<[ChunkRef]>,
    pub(super) ends: Vec<u64>,
    pub(super) holes: OnceLock<Vec<bool>>,
}

#[derive(Clone)]
pub(super) struct ChunkWeight;

/// Decoded chunks, bounded by their bytes.
pub(super) type ChunkCache = Cache<BlobId, Arc<Vec<u8>>, ChunkWeight>;

impl quick_cache::Weighter<BlobId, Arc<Vec<u8>>> for ChunkWeight {
    fn weight(&self, _key: &BlobId, value: &Arc<Vec<u8>>) -> u64 {
        value.len() as u64 + 64
    }
}

/// Reads a chunk for the cache (see `trimmed`).
pub(super) fn cached_chunk(
    repo: &Repository,
    chunk: &ChunkRef,
) -> crate::error::Result<Arc<Vec<u8>>> {
    Ok(trimmed(crate::tree::read_chunk(repo, chunk)?))
}

/// A chunk's bytes for the cache, trimmed so its weight is what it holds.
pub(super) fn trimmed(mut data: Vec<u8>) -> Arc<Vec<u8>> {
    data.shrink_to_fit();
    Arc::new(data)
}

impl Vfs {
    fn chunk_index(&self, ino: Ino) -> VfsResult<Arc<ChunkIndex>> {
        let NodeKind::Entry { entry, .. } = self.node(ino)? else {
            return Err(VfsError::NotFile);
        };
        self.chunk_index_of(ino, &entry)
    }

    /// The chunk index of file `ino`, whose entry is `entry`.
    fn chunk_index_of(&self, ino: Ino, entry: &Entry) -> VfsResult<Arc<ChunkIndex>> {
        let EntryKind::File(content) = &entry.kind else {
            return Err(VfsError::NotFile);
        };
        Ok(self.chunk_lists.get_or_insert_with(&ino, || {
            let chunks = sized_file_chunks(&self.repo, content, entry.size)?;
            let ends = chunks
                .iter()
                .scan(0u64, |end, c| {
                    *end += c.length as u64;
                    Some(*end)
                })
                .collect();
            Ok::<_, Error>(Arc::new(ChunkIndex {
                chunks: chunks.into(),
                ends,
                holes: OnceLock::new(),
            }))
        })?)
    }

    /// The bytes of file `ino` that are not holes. It costs no data read, but a file with a
    /// separate chunk list needs that list; one that cannot be read, or whose chunks do not
    /// add up to its size, counts as all data (its reads fail with the error).
    pub(super) fn allocated_bytes(&self, ino: Ino, entry: &Entry) -> u64 {
        let data_bytes = |chunks: &[ChunkRef]| self.zero_chunks.data_bytes(&self.repo, chunks);
        match &entry.kind {
            EntryKind::File(Content::Chunks(chunks)) => match check_file_size(chunks, entry.size) {
                Ok(()) => data_bytes(chunks),
                Err(_) => entry.size,
            },
            _ => match self.chunk_index_of(ino, entry) {
                Ok(index) => data_bytes(&index.chunks),
                Err(_) => entry.size,
            },
        }
    }

    /// Where `SEEK_DATA` (`want_data`) or `SEEK_HOLE` from `offset` lands in file `ino`;
    /// `None` when there is no such place (ENXIO).
    pub fn seek(&self, ino: Ino, offset: u64, want_data: bool) -> VfsResult<Option<u64>> {
        let index = self.chunk_index(ino)?;
        let holes = (index.holes).get_or_init(|| self.zero_chunks.holes(&self.repo, &index.chunks));
        Ok(seek(&index.ends, holes, offset, want_data))
    }

    /// Chunk `i` of file `ino` from the walk ahead or the chunk cache, when either holds it;
    /// `from` is where the read starts in the chunk, `through_end` says it reaches its end.
    /// A read of a chunk's start that the walk did not foresee, of a file's first chunk or of
    /// the one after a chunk just read, moves the walk there.
    fn walked_chunk(
        &self,
        ino: Ino,
        index: &ChunkIndex,
        i: usize,
        from: usize,
        through_end: bool,
    ) -> Option<Arc<Vec<u8>>> {
        let walk = &self.walk;
        let chunk = &index.chunks[i];
        if let Some(data) = walk.take(&chunk.id, through_end) {
            return Some(data);
        }
        if let Some(data) = self.chunks.get(&chunk.id) {
            return Some(data);
        }
        let sequential = i == 0 || self.chunks.contains_key(&index.chunks[i - 1].id);
        if from == 0 && sequential {
            walk.start_at(WalkStart {
                dirs: self.path_from_root(ino).unwrap_or_default(),
                chunks: index.chunks.clone(),
                next_chunk: i + 1,
            });
        }
        None
    }

    /// The directories from the root of the checkpoint file `ino` is in down to the file:
    /// each one's tree and the place in it of the next step down. `None` when the file is
    /// not in a checkpoint's tree (a version in `history/`).
    fn path_from_root(&self, ino: Ino) -> Option<Vec<(Arc<Tree>, usize)>> {
        // Each directory above the file, innermost first, with the name of the step below.
        let mut steps: Vec<(NodeKind, Vec<u8>)> = Vec::new();
        {
            let nodes = self.nodes.read().expect("not poisoned");
            let mut at = ino;
            loop {
                let (parent, name) = nodes.get(&at)?.names.first()?.clone();
                let parent_kind = nodes.get(&parent)?.kind.clone();
                let top = matches!(parent_kind, NodeKind::Checkpoint(_));
                if !top && !matches!(&parent_kind, NodeKind::Entry { entry, .. } if entry.is_dir())
                {
                    return None;
                }
                steps.push((parent_kind, name));
                if top {
                    break;
                }
                at = parent;
            }
        }
        (steps.into_iter().rev())
            .map(|(dir, name)| {
                let entry = match dir {
                    NodeKind::Checkpoint(summary) => self.checkpoint_root(&summary).ok()?,
                    NodeKind::Entry { entry, .. } => entry,
                    _ => return None,
                };
                let EntryKind::Dir(id) = &entry.kind else {
                    return None;
                };
                let tree = self.tree(id).ok()?;
                let place = tree.position(&name)?;
                Some((tree, place))
            })
            .collect()
    }

    /// A chunk's bytes. A chunk read whole in one request (most small files) is not worth
    /// caching; one that later requests will read more of is kept.
    pub(super) fn chunk(&self, chunk: &ChunkRef, read_whole: bool) -> VfsResult<Arc<Vec<u8>>> {
        // A chunk another request thread is reading is waited for, not read again.
        Ok(match self.chunks.get_value_or_guard(&chunk.id, None) {
            GuardResult::Value(data) => data,
            GuardResult::Guard(guard) => {
                let data = cached_chunk(&self.repo, chunk)?;
                if !read_whole {
                    let _ = guard.insert(data.clone());
                }
                data
            }
            GuardResult::Timeout => cached_chunk(&self.repo, chunk)?,
        })
    }

    /// Up to `size` bytes of file `ino` from `offset`; fewer only at the end of the file.
    pub fn read(&self, ino: Ino, offset: u64, size: u32) -> VfsResult<FileBytes> {
        let index = self.chunk_index(ino)?;
        let file_size = index.ends.last().copied().unwrap_or(0);
        let end = file_size.min(offset.saturating_add(size as u64));
        let mut pieces = Vec::new();
        let mut position = offset;
        let mut i = index.ends.partition_point(|&e| e <= offset);
        while position < end {
            let chunk = &index.chunks[i];
            let start = index.ends[i] - chunk.length as u64;
            let from = (position - start) as usize;
            let through_end = end >= index.ends[i];
            let data = match self.walked_chunk(ino, &index, i, from, through_end) {
                Some(data) => data,
                None => self.chunk(chunk, from == 0 && through_end)?,
            };
            let to = ((end - start) as usize).min(data.len());
            pieces.push((data, from..to));
            position = start + to as u64;
            i += 1;
        }
        self.note_read(ino);
        Ok(match pieces.len() {
            0 => FileBytes::Joined(Vec::new()),
            1 => {
                let (chunk, range) = pieces.pop().expect("one piece");
                FileBytes::Slice(chunk, range)
            }
            _ => {
                let mut joined = Vec::with_capacity((end - offset) as usize);
                for (chunk, range) in pieces {
                    joined.extend_from_slice(&chunk[range]);
                }
                FileBytes::Joined(joined)
            }
        })
    }
}

/// The bytes of one read: a slice of a single chunk when the read falls within it (the
/// common case, answered without copying), or the pieces of several chunks joined.
pub enum FileBytes {
    Slice(Arc<Vec<u8>>, Range<usize>),
    Joined(Vec<u8>),
}

impl Deref for FileBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            FileBytes::Slice(chunk, range) => &chunk[range.clone()],
            FileBytes::Joined(bytes) => bytes,
        }
    }
}
