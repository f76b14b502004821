//! What a client and `cairn serve --source` say to each other about a live source directory,
//! encoded with postcard. The client lists directories (`GET …/list?path=HEX`: the entries as
//! cairn tree entries), asks for a changed file's chunk list (`POST …/chunks`), and then for
//! just the chunks it lacks (`POST …/blobs`: each one zstd-compressed behind a 4-byte length),
//! checking every chunk against its id. The server chunks with the client's parameters: for a
//! repository, its chunker, gear seed and id key, so the ids are the repository's own; for a
//! plain directory, the defaults and unkeyed BLAKE3. It never sees the repository's
//! encryption key.

use crate::chunker::{Chunker, ChunkerParams};
use crate::error::{Error, Result};
use crate::id::BlobId;
use crate::tree::ChunkRef;
use serde::{Deserialize, Serialize};

/// How the server must chunk and name chunks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChunkSpec {
    pub params: ChunkerParams,
    pub seed: u64,
    /// The repository's id key; `None` for plain BLAKE3 ids.
    pub id_key: Option<[u8; 32]>,
}

impl ChunkSpec {
    /// Default chunking, unkeyed ids: what a sync between directories uses.
    pub fn plain() -> Self {
        ChunkSpec {
            params: ChunkerParams::default(),
            seed: 0,
            id_key: None,
        }
    }

    /// The chunking and ids of `repo`.
    pub fn of(repo: &crate::repo::Repository) -> Self {
        let key = repo.codec().master_key();
        ChunkSpec {
            params: repo.config().chunker,
            seed: key.map_or(0, |k| k.chunker_seed()),
            id_key: key.map(|k| *k.id_key()),
        }
    }

    pub fn chunker(&self) -> Result<Chunker> {
        Chunker::new(self.params, self.seed)
    }

    pub fn id_of(&self, data: &[u8]) -> BlobId {
        BlobId(match &self.id_key {
            Some(key) => *blake3::keyed_hash(key, data).as_bytes(),
            None => *blake3::hash(data).as_bytes(),
        })
    }
}

/// `POST …/chunks`: the chunk list of the regular file at `path` (below the source).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChunksRequest {
    pub spec: ChunkSpec,
    #[serde(with = "serde_bytes")]
    pub path: Vec<u8>,
}

/// The answer to `ChunksRequest`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChunksResponse {
    pub chunks: Vec<ChunkRef>,
}

/// `POST …/blobs`: the bytes at these (offset, length) ranges of the file at `path`, each
/// zstd-compressed behind its compressed length (u32, little-endian).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlobsRequest {
    #[serde(with = "serde_bytes")]
    pub path: Vec<u8>,
    pub ranges: Vec<(u64, u32)>,
}

/// Splits a `BlobsRequest` answer into its decompressed parts, one per range, checking each
/// decompresses to the length asked for.
pub fn split_blobs(body: &[u8], ranges: &[(u64, u32)], what: &str) -> Result<Vec<Vec<u8>>> {
    let mut rest = body;
    let mut out = Vec::with_capacity(ranges.len());
    for &(offset, length) in ranges {
        let bad = |why: &str| Error::corrupt(what, format!("chunk at offset {offset}: {why}"));
        if rest.len() < 4 {
            return Err(bad("the answer is truncated"));
        }
        let (size, tail) = rest.split_at(4);
        let size = u32::from_le_bytes(size.try_into().expect("4 bytes")) as usize;
        if tail.len() < size {
            return Err(bad("the answer is truncated"));
        }
        let (frame, tail) = tail.split_at(size);
        let data = zstd::bulk::decompress(frame, length as usize)
            .map_err(|e| bad(&format!("zstd: {e}")))?;
        if data.len() != length as usize {
            return Err(bad("wrong length"));
        }
        out.push(data);
        rest = tail;
    }
    Ok(out)
}
