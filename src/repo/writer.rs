//! Writing blobs into a repository: a `BlobSink` many threads share, which stores each blob
//! the repository lacks exactly once, and the packer thread behind it, which appends encoded
//! blobs to packs, stores them and writes an index file every few packs, so an interrupted
//! run leaves reusable work behind. Backup and sync both write through it.

use super::Repository;
use super::index::{IndexedPacks, encode_index_file};
use super::pack::{BlobKind, PackBuilder, pack_object_name};
use crate::error::{Error, Result};
use crate::id::BlobId;
use crossbeam_channel::{Receiver, Sender, bounded};
use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// An index file is written after this many packs, or once a pack is written this long
/// after the last index file, and at the end of the run: what a killed run leaves behind
/// is reused by the next one once an index file lists it.
const PACKS_PER_INDEX_FILE: usize = 32;
const INDEX_FILE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// An encoded blob on its way to the packer.
struct EncodedBlob {
    id: BlobId,
    kind: BlobKind,
    encoded: Vec<u8>,
    raw_length: usize,
}

/// Stores blobs the repository lacks: dedupes against the index and this run, and hands
/// them to the packer.
pub struct BlobSink<'a> {
    repo: &'a Repository,
    /// Blobs sent to the packer in this run and not yet in the index cache.
    in_flight: &'a Mutex<HashSet<BlobId>>,
    packer: Sender<EncodedBlob>,
}

impl BlobSink<'_> {
    pub fn repo(&self) -> &Repository {
        self.repo
    }

    /// Whether this caller should store blob `id`: false when the repository has it or
    /// another thread of this run is storing it.
    pub fn claim(&self, id: &BlobId) -> Result<bool> {
        if self.repo.index().contains(id)?
            || !self.in_flight.lock().expect("not poisoned").insert(*id)
        {
            return Ok(false);
        }
        // The packer indexes blobs before it releases their claims, so a blob indexed between
        // the first check and the claim shows up here and is not stored twice.
        if self.repo.index().contains(id)? {
            self.in_flight.lock().expect("not poisoned").remove(id);
            return Ok(false);
        }
        Ok(true)
    }

    /// Gives up claims that will not be sent after all (the source failed), so that another
    /// file with the same blob stores it.
    pub fn release(&self, ids: &[BlobId]) {
        let mut in_flight = self.in_flight.lock().expect("not poisoned");
        for id in ids {
            in_flight.remove(id);
        }
    }

    /// Queues a claimed blob, already in this repository's stored form, for the packer.
    pub fn send_encoded(
        &self,
        id: BlobId,
        kind: BlobKind,
        encoded: Vec<u8>,
        raw_length: usize,
    ) -> Result<()> {
        let blob = EncodedBlob {
            id,
            kind,
            encoded,
            raw_length,
        };
        self.packer
            .send(blob)
            .map_err(|_| Error::InvalidInput("the pack writer stopped".into()))
    }

    /// Stores `plaintext` unless the repository has it already; returns its id.
    pub fn store(&self, kind: BlobKind, plaintext: &[u8]) -> Result<BlobId> {
        let id = BlobId(self.repo.codec().id_of(plaintext));
        if self.claim(&id)? {
            let encoded = self.repo.codec().encode(plaintext, true);
            self.send_encoded(id, kind, encoded, plaintext.len())?;
        }
        Ok(id)
    }
}

/// Runs `body` with a sink into `repo` (nothing is written in a dry run, but sizes are
/// counted); `queued` encoded blobs may wait for the packer. Once `body` returns, the last
/// pack and index file are written. Returns `body`'s value and the number of blobs stored;
/// a failed write is reported rather than the failure it caused in `body`. `added_bytes`
/// counts the bytes of packs as they are written.
pub fn with_blob_sink<T>(
    repo: &Repository,
    dry_run: bool,
    queued: usize,
    added_bytes: &AtomicU64,
    body: impl FnOnce(&BlobSink) -> Result<T>,
) -> Result<(T, u64)> {
    let in_flight = Mutex::new(HashSet::new());
    let (packer_tx, packer_rx) = bounded(queued.max(1));
    std::thread::scope(|scope| {
        let in_flight = &in_flight;
        let packer =
            scope.spawn(move || run_packer(repo, packer_rx, in_flight, dry_run, added_bytes));
        let sink = BlobSink {
            repo,
            in_flight,
            packer: packer_tx,
        };
        let value = body(&sink);
        drop(sink);
        let blobs = packer.join().expect("the packer does not panic")?;
        Ok((value?, blobs))
    })
}

/// Appends blobs to packs, stores them and writes index files. Returns the number of blobs.
fn run_packer(
    repo: &Repository,
    blobs: Receiver<EncodedBlob>,
    in_flight: &Mutex<HashSet<BlobId>>,
    dry_run: bool,
    added_bytes: &AtomicU64,
) -> Result<u64> {
    let mut builder = PackBuilder::default();
    let mut unindexed: IndexedPacks = Vec::new();
    let mut count = 0u64;
    let mut last_index = std::time::Instant::now();
    let flush_pack = |builder: &mut PackBuilder, unindexed: &mut IndexedPacks| -> Result<()> {
        let (id, bytes, entries) = builder.finish(repo.codec());
        if !dry_run {
            repo.backend().put(&pack_object_name(&id), &bytes)?;
        }
        added_bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        unindexed.push((id, entries));
        Ok(())
    };
    let write_index = |unindexed: &mut IndexedPacks| -> Result<()> {
        if dry_run || unindexed.is_empty() {
            return Ok(());
        }
        let encoded = repo.codec().encode(&encode_index_file(unindexed), true);
        let name = format!("index/{}", blake3::hash(&encoded).to_hex());
        repo.backend().put(&name, &encoded)?;
        repo.index().add_index_file(&name, unindexed)?;
        let mut in_flight = in_flight.lock().expect("not poisoned");
        for (_, entries) in unindexed.drain(..) {
            for entry in entries {
                in_flight.remove(&entry.id);
            }
        }
        Ok(())
    };
    for blob in blobs {
        builder.add(blob.id, blob.kind, &blob.encoded, blob.raw_length);
        count += 1;
        if builder.is_full() {
            flush_pack(&mut builder, &mut unindexed)?;
            if unindexed.len() >= PACKS_PER_INDEX_FILE
                || last_index.elapsed() >= INDEX_FILE_INTERVAL
            {
                write_index(&mut unindexed)?;
                last_index = std::time::Instant::now();
            }
        }
    }
    if !builder.is_empty() {
        flush_pack(&mut builder, &mut unindexed)?;
    }
    write_index(&mut unindexed)?;
    Ok(count)
}
