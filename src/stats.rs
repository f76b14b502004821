//! Repository statistics (`cairn stats`): what the checkpoints hold (the bytes of their files,
//! as restoring each would write them), what the repository keeps of that (its distinct
//! blobs, before and after compression and encryption), and what the store holds in packs.
//! Read from the checkpoint records, the index files and one listing of the packs; no pack
//! is read.

use crate::checkpoint::{self, Stored};
use crate::error::Result;
use crate::id::BlobId;
use crate::repo::Repository;
use crate::repo::index::read_index_file;
use crate::repo::objects::ObjectKind;
use serde::Serialize;
use std::collections::HashSet;

/// The sizes of a repository.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RepositoryStats {
    pub checkpoints: u64,
    /// What restoring every checkpoint would write: the sum of their files' bytes.
    pub restore_bytes: u64,
    /// Distinct blobs the index lists (file chunks, chunk lists and trees).
    pub blobs: u64,
    /// Their plaintext bytes: the data after deduplication, before compression.
    pub raw_bytes: u64,
    /// Their stored bytes: after compression and encryption.
    pub stored_bytes: u64,
    pub packs: u64,
    /// What the packs take in the store (blobs, headers, and blobs no index lists any more).
    pub pack_bytes: u64,
}

impl RepositoryStats {
    /// How many times over the checkpoints hold their distinct data (1 without any
    /// deduplication).
    pub fn deduplication(&self) -> f64 {
        ratio(self.restore_bytes, self.raw_bytes)
    }

    /// How much smaller compression made the distinct data.
    pub fn compression(&self) -> f64 {
        ratio(self.raw_bytes, self.stored_bytes)
    }
}

fn ratio(over: u64, under: u64) -> f64 {
    if under == 0 {
        1.0
    } else {
        over as f64 / under as f64
    }
}

/// The sizes of `repo`, with its checkpoints (oldest first) for a per-checkpoint report.
pub fn run(repo: &Repository) -> Result<(RepositoryStats, Vec<Stored>)> {
    let _lock = crate::repo::lock::acquire_for_reading(repo, "stats")?;
    let checkpoints = checkpoint::list(repo)?;
    let mut stats = RepositoryStats {
        checkpoints: checkpoints.len() as u64,
        restore_bytes: checkpoints.iter().map(|c| c.record.stats.bytes).sum(),
        ..Default::default()
    };
    let mut seen: HashSet<BlobId> = HashSet::new();
    for name in repo.backend().list_names(ObjectKind::Index.prefix())? {
        for (_, entries) in read_index_file(repo.backend(), repo.codec(), &name)? {
            for entry in entries.iter().filter(|e| seen.insert(e.id)) {
                stats.raw_bytes += u64::from(entry.raw_length);
                stats.stored_bytes += entry.stored_share();
            }
        }
    }
    stats.blobs = seen.len() as u64;
    for pack in repo.backend().list(ObjectKind::Pack.prefix())? {
        stats.packs += 1;
        stats.pack_bytes += pack.size;
    }
    Ok((stats, checkpoints))
}
