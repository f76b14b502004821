//! Which chunks of a file are holes — all zeros — known from their ids alone, so the mount can
//! report a sparse file's allocated size and answer `SEEK_DATA`/`SEEK_HOLE` without reading a
//! byte of it.
//!
//! An id is the (keyed) hash of a chunk's bytes, so the id of `n` zeros is computable by
//! whoever holds the repository. FastCDC cuts a long run of zeros into chunks of one length
//! (`Chunker::zero_run_chunk_len`), so every all-zero chunk inside a file has that length and
//! one id, computed once; only a file's last chunk (a hole that ends the file) can be all zeros
//! at another length, and its id is computed for that length and remembered. A zero chunk of
//! any other length (one cut by another chunker) counts as data, and so does a file's only
//! chunk unless it is that run: the answer may be dense, it is never wrong. (Hashing zeros of
//! every small file's length to find the rare all-zero one would cost as much as hashing the
//! files themselves.)

use crate::id::BlobId;
use crate::repo::Repository;
use crate::tree::ChunkRef;
use quick_cache::sync::Cache;

/// Ids of zeros at the lengths that end files, remembered.
const TAIL_LENGTHS: usize = 1024;

/// Recognizes the all-zero chunks of one repository by their ids.
pub(crate) struct ZeroChunks {
    /// The chunk cut inside any long run of zeros.
    zero_run: ChunkRef,
    /// The id of zeros of a given length, for last chunks.
    tails: Cache<u32, BlobId>,
}

impl ZeroChunks {
    pub(crate) fn new(repo: &Repository) -> Self {
        let length = repo.chunker().zero_run_chunk_len();
        ZeroChunks {
            zero_run: ChunkRef {
                id: zeros_id(repo, length),
                length: length as u32,
            },
            tails: Cache::new(TAIL_LENGTHS),
        }
    }

    /// Whether `chunk`, the last of its file when `last`, holds only zeros.
    pub(crate) fn is_zero(&self, repo: &Repository, chunk: &ChunkRef, last: bool) -> bool {
        if *chunk == self.zero_run {
            return true;
        }
        // A chunk longer than the chunker's longest (which the run of zeros is) is no chunk
        // cairn made: a crafted tree's, never hashed as zeros of that length.
        if !last || chunk.length > self.zero_run.length {
            return false;
        }
        let id = self.tails.get(&chunk.length).unwrap_or_else(|| {
            let id = zeros_id(repo, chunk.length as usize);
            self.tails.insert(chunk.length, id);
            id
        });
        id == chunk.id
    }

    /// For each chunk of a file, in order, whether it is a hole.
    pub(crate) fn holes(&self, repo: &Repository, chunks: &[ChunkRef]) -> Vec<bool> {
        let last = chunks.len().saturating_sub(1);
        chunks
            .iter()
            .enumerate()
            .map(|(i, chunk)| self.is_zero(repo, chunk, i == last && last > 0))
            .collect()
    }

    /// The bytes of a file's chunks that are not holes.
    pub(crate) fn data_bytes(&self, repo: &Repository, chunks: &[ChunkRef]) -> u64 {
        chunks
            .iter()
            .zip(self.holes(repo, chunks))
            .filter(|(_, hole)| !hole)
            .map(|(chunk, _)| u64::from(chunk.length))
            .sum()
    }
}

fn zeros_id(repo: &Repository, length: usize) -> BlobId {
    BlobId(repo.codec().id_of(&vec![0; length]))
}

/// The offset `SEEK_DATA` (`want_data`) or `SEEK_HOLE` answers from `offset` in a file whose
/// chunks end at `ends` and are holes where `holes` says; `None` for ENXIO (at or past the
/// end, or no data after `offset`). The end of the file counts as a hole.
pub(crate) fn seek(ends: &[u64], holes: &[bool], offset: u64, want_data: bool) -> Option<u64> {
    let size = ends.last().copied().unwrap_or(0);
    if offset >= size {
        return None;
    }
    let first = ends.partition_point(|&end| end <= offset);
    let found = (first..ends.len()).find(|&i| holes[i] != want_data);
    match found {
        Some(i) if i == first => Some(offset),
        Some(i) => Some(ends[i - 1]),
        None if want_data => None,
        None => Some(size),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeking_finds_data_and_holes_by_chunk() {
        // data 0..10, hole 10..30, data 30..35, hole 35..40
        let ends = [10, 20, 30, 35, 40];
        let holes = [false, true, true, false, true];
        assert_eq!(seek(&ends, &holes, 0, true), Some(0));
        assert_eq!(seek(&ends, &holes, 0, false), Some(10));
        assert_eq!(seek(&ends, &holes, 12, true), Some(30));
        assert_eq!(seek(&ends, &holes, 12, false), Some(12));
        assert_eq!(seek(&ends, &holes, 33, false), Some(35));
        assert_eq!(seek(&ends, &holes, 36, true), None);
        assert_eq!(seek(&ends, &holes, 40, false), None);
        let dense = [10, 20];
        assert_eq!(seek(&dense, &[false, false], 5, false), Some(20));
        assert_eq!(seek(&[], &[], 0, true), None);
    }

    #[test]
    fn zero_chunks_are_holes_except_a_files_only_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let repo = crate::repo::writer::tests::repository(dir.path());
        let zeros = ZeroChunks::new(&repo);
        let chunk = |bytes: &[u8]| ChunkRef {
            id: BlobId(repo.codec().id_of(bytes)),
            length: bytes.len() as u32,
        };
        let run = zeros.zero_run;
        let (tail, data) = (chunk(&[0; 5000]), chunk(&[1; 5000]));
        assert_eq!(zeros.holes(&repo, &[run, data, tail]), [true, false, true]);
        assert_eq!(zeros.data_bytes(&repo, &[run, data, tail]), 5000);
        // Zeros of another length inside a file are no chunk the chunker cuts: data.
        assert_eq!(zeros.holes(&repo, &[tail, data]), [false, false]);
        // A file of one chunk is data, whatever it holds: finding the rare all-zero one
        // would hash zeros of every small file's length.
        assert_eq!(zeros.holes(&repo, &[tail]), [false]);
        assert_eq!(zeros.data_bytes(&repo, &[tail]), 5000);
    }
}
