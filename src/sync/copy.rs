//! Repository → repository: copies checkpoints with every blob the destination lacks.
//!
//! The two repositories must share blob ids (`init --like`), so a blob moves as it is
//! stored: read from its pack, opened and checked against its id, sealed again under the
//! destination's key without being compressed again, and appended to the destination's
//! packs. The plan walks each checkpoint's trees and leaves out every blob the destination
//! already indexes; a tree it holds stands for everything below it, because every writer
//! stores a tree only after its children. Data blobs then move on several threads, in pack
//! order so each source pack is read front to back; chunk lists and trees follow in
//! post-order from one thread, so they land after what they reference. The checkpoint records
//! are written last (invariant 1): an interrupted copy leaves indexed packs that the next run
//! skips, and no checkpoint that lacks a blob.

use super::{SyncOptions, SyncReport};
use crate::checkpoint::{self, Stored};
use crate::error::{Error, Result};
use crate::id::{BlobId, CheckpointId, TreeId};
use crate::progress::Progress;
use crate::repo::Repository;
use crate::repo::backend::RangeRequest;
use crate::repo::index::BlobLocation;
use crate::repo::pack::{BlobKind, pack_object_name};
use crate::repo::writer::{BlobSink, Claim, recover_orphan_packs, with_blob_sink};
use crate::tree::{Content, EntryKind, file_chunks, load_tree};
use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::Ordering;

/// What the destination lacks, in the order it is written.
#[derive(Default)]
struct CopyPlan {
    /// File chunks, any order.
    data: Vec<(BlobId, BlobLocation)>,
    /// Chunk lists and trees, each after everything it references.
    structure: Vec<(BlobId, BlobLocation)>,
    /// Blobs looked at that the destination already holds (a tree it holds counts once).
    skipped: u64,
    /// Every blob already planned or skipped.
    seen: HashSet<BlobId>,
}

impl CopyPlan {
    /// Plans blob `id` unless it was seen; `true` when the destination lacks it.
    fn visit(&mut self, to: &Repository, id: BlobId) -> Result<bool> {
        if !self.seen.insert(id) {
            return Ok(false);
        }
        if to.index().contains(&id)? {
            self.skipped += 1;
            return Ok(false);
        }
        Ok(true)
    }

    /// Plans the tree `root` and, unless the destination holds it, everything below it: each
    /// tree after its subtrees, walked with an explicit stack of the trees in progress, so a
    /// tree nested however deep is planned without exhausting the call stack.
    fn add_tree(&mut self, from: &Repository, to: &Repository, root: TreeId) -> Result<()> {
        if !self.visit(to, root.blob())? {
            return Ok(());
        }
        let mut stack = vec![(root, self.add_files(from, to, root)?)];
        while let Some((id, subtrees)) = stack.last_mut() {
            match subtrees.next() {
                Some(subtree) => {
                    if self.visit(to, subtree.blob())? {
                        let below = self.add_files(from, to, subtree)?;
                        stack.push((subtree, below));
                    }
                }
                None => {
                    let id = id.blob();
                    stack.pop();
                    self.structure.push((id, from.locate(&id)?));
                }
            }
        }
        Ok(())
    }

    /// Plans the files of tree `id` and returns its subtrees, in order.
    fn add_files(
        &mut self,
        from: &Repository,
        to: &Repository,
        id: TreeId,
    ) -> Result<std::vec::IntoIter<TreeId>> {
        let mut subtrees = Vec::new();
        for entry in load_tree(from, &id)?.entries {
            match entry.kind {
                EntryKind::Dir(subtree) => subtrees.push(subtree),
                EntryKind::File(Content::Chunks(chunks)) => {
                    for chunk in chunks {
                        self.add_data(from, to, chunk.id)?;
                    }
                }
                EntryKind::File(Content::ChunkList(list)) if self.visit(to, list)? => {
                    for chunk in file_chunks(from, &Content::ChunkList(list))? {
                        self.add_data(from, to, chunk.id)?;
                    }
                    self.structure.push((list, from.locate(&list)?));
                }
                _ => {}
            }
        }
        Ok(subtrees.into_iter())
    }

    fn add_data(&mut self, from: &Repository, to: &Repository, id: BlobId) -> Result<()> {
        if self.visit(to, id)? {
            self.data.push((id, from.locate(&id)?));
        }
        Ok(())
    }

    fn stored_bytes(&self) -> u64 {
        let blobs = self.data.iter().chain(&self.structure);
        blobs.map(|(_, at)| at.entry.stored_share()).sum()
    }
}

/// The checkpoints to copy: `only`, or every one of `from` that `to` lacks, oldest first.
fn checkpoints_to_copy(
    from: &Repository,
    to: &Repository,
    only: Option<CheckpointId>,
) -> Result<Vec<Stored>> {
    let candidates = match only {
        Some(id) => vec![Stored {
            id,
            record: checkpoint::load(from, &id)?,
        }],
        None => checkpoint::list(from)?,
    };
    let mut lacking = Vec::new();
    for stored in candidates {
        if !checkpoint::exists(to, &stored.id)? {
            lacking.push(stored);
        }
    }
    Ok(lacking)
}

/// Copies checkpoint `only` (or every checkpoint `to` lacks) from `from` into `to`; into a
/// dry run's repository, only plans and reports.
pub fn run(
    from: &Repository,
    to: &Repository,
    only: Option<CheckpointId>,
    options: &SyncOptions,
    progress: &Progress,
) -> Result<SyncReport> {
    if !from.shares_ids_with(to) {
        return Err(Error::InvalidInput(format!(
            "{} does not share blob ids with {}: copy into a repository made with `cairn init --repo NEW --like {}`",
            to.backend().location(),
            from.backend().location(),
            from.backend().location()
        )));
    }
    let _source_lock = crate::repo::lock::acquire_for_reading(from, "sync")?;
    let lock = crate::repo::lock::acquire(to, false, "sync")?;
    recover_orphan_packs(to)?;
    let checkpoints = checkpoints_to_copy(from, to, only)?;
    let mut plan = CopyPlan::default();
    for Stored { record, .. } in &checkpoints {
        plan.add_tree(from, to, record.tree)?;
    }
    // Front to back through each source pack.
    plan.data.sort_by_key(|(_, at)| (at.pack, at.entry.offset));
    progress.set_totals(0, plan.stored_bytes());
    let mut report = SyncReport {
        dry_run: to.is_dry_run(),
        checkpoints_copied: checkpoints.len() as u64,
        blobs_copied: (plan.data.len() + plan.structure.len()) as u64,
        blobs_skipped: plan.skipped,
        bytes_transferred: plan.stored_bytes(),
        ..SyncReport::default()
    };
    // A dry run plans, and reads no blob for a copy that is not kept.
    if to.is_dry_run() {
        return Ok(report);
    }
    let (_, stored) = with_blob_sink(to, options.concurrency * 2, progress, |sink| {
        copy_data(from, sink, &plan.data, options.concurrency, progress)?;
        // One batch at a time, in order.
        for batch in batches(&plan.structure) {
            copy_blobs(from, sink, batch, progress)?;
        }
        Ok(())
    })?;
    // Another writer may have stored some of the planned blobs meanwhile.
    report.blobs_skipped += report.blobs_copied - stored;
    report.blobs_copied = stored;
    for Stored { id, .. } in &checkpoints {
        lock.ensure_held()?;
        checkpoint::copy_record(from, to, id)?;
    }
    Ok(report)
}

/// Frames read in one request at most, and their stored bytes.
const BATCH_FRAMES: usize = 256;
const BATCH_BYTES: u64 = 8 << 20;

/// Consecutive runs of `blobs`, each read in one request: whole frames (the blobs of one
/// frame lie next to each other in `blobs`), each frame's stored bytes counted once however
/// many of its blobs are copied.
fn batches(blobs: &[(BlobId, BlobLocation)]) -> Vec<&[(BlobId, BlobLocation)]> {
    let frames: Vec<&[(BlobId, BlobLocation)]> =
        blobs.chunk_by(|(_, a), (_, b)| a.same_frame(b)).collect();
    let mut start = 0;
    super::runs(&frames, BATCH_FRAMES, BATCH_BYTES, |frame| {
        u64::from(frame[0].1.entry.length)
    })
    .into_iter()
    .map(|run| {
        let length: usize = run.iter().map(|frame| frame.len()).sum();
        start += length;
        &blobs[start - length..start]
    })
    .collect()
}

/// Moves the data blobs on `threads` threads, each taking the next batch in turn.
fn copy_data(
    from: &Repository,
    sink: &BlobSink,
    data: &[(BlobId, BlobLocation)],
    threads: usize,
    progress: &Progress,
) -> Result<()> {
    let batches = batches(data);
    let next = Mutex::new(batches.iter());
    let failure = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| {
                loop {
                    let Some(batch) = next.lock().expect("not poisoned").next() else {
                        return;
                    };
                    if let Err(e) = copy_blobs(from, sink, batch, progress) {
                        failure.lock().expect("not poisoned").get_or_insert(e);
                        // Stop the others: nothing is left to take.
                        *next.lock().expect("not poisoned") = [].iter();
                        return;
                    }
                }
            });
        }
    });
    match failure.into_inner().expect("not poisoned") {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Moves a batch of blobs from `from` into the sink, read in one request and each checked
/// against its id on the way; blobs another thread or run stored meanwhile are left out.
fn copy_blobs(
    from: &Repository,
    sink: &BlobSink,
    batch: &[(BlobId, BlobLocation)],
    progress: &Progress,
) -> Result<()> {
    crate::interrupt::check()?;
    let mut wanted = Vec::with_capacity(batch.len());
    let mut elsewhere = Vec::new();
    for blob in batch {
        match sink.claim(&blob.0)? {
            Claim::Mine => wanted.push(blob),
            Claim::Stored => {}
            Claim::Elsewhere => elsewhere.push(blob),
        }
    }
    let moved = move_claimed(from, sink, &wanted);
    if moved.is_err() {
        let claimed: Vec<BlobId> = wanted.iter().map(|(id, _)| *id).collect();
        sink.release(&claimed);
    }
    let bytes = moved?;
    // What another thread took on must be queued before this batch counts as done (trees
    // that refer to it come later); if that thread gave up, this one moves it.
    for blob in elsewhere {
        if !sink.wait_queued(&blob.0)? {
            copy_blobs(from, sink, std::slice::from_ref(blob), progress)?;
        }
    }
    progress.bytes_done.fetch_add(bytes, Ordering::Relaxed);
    progress.bytes_read.fetch_add(bytes, Ordering::Relaxed);
    Ok(())
}

/// Reads claimed blobs in one request (blobs next to each other in one frame read it once),
/// checks them and queues them; returns the bytes read. A blob alone in its frame is
/// resealed as it was compressed; blobs that share a frame are cut out of it (decoded once,
/// through the repository) and gathered into frames of the destination's, so a copy keeps
/// what compressing small files together saved.
fn move_claimed(
    from: &Repository,
    sink: &BlobSink,
    wanted: &[&(BlobId, BlobLocation)],
) -> Result<u64> {
    let frames: Vec<_> = wanted.chunk_by(|(_, a), (_, b)| a.same_frame(b)).collect();
    let ranges: Vec<RangeRequest> = frames
        .iter()
        .map(|frame| {
            let at = &frame[0].1;
            RangeRequest {
                name: pack_object_name(&at.pack),
                offset: at.entry.offset as u64,
                length: at.entry.length as u64,
            }
        })
        .collect();
    let bytes: u64 = ranges.iter().map(|r| r.length).sum();
    let stored = from.backend().get_ranges(&ranges)?;
    let mut shared = sink.shared_frame(BlobKind::Data);
    for (frame, stored) in frames.iter().zip(&stored) {
        for (id, at) in frame.iter().copied() {
            if at.entry.is_alone() {
                // What a tree or chunk list refers to is queued before it.
                if at.entry.kind != BlobKind::Data {
                    shared.send_off()?;
                }
                let location = || format!("pack {} blob {id}", at.pack);
                let to = sink.repo().codec();
                let encoded = from
                    .codec()
                    .transcode_blob(stored, &at.entry, to, &location)?;
                sink.send_encoded(*id, at.entry.kind, encoded, at.entry.raw_length as usize)?;
                continue;
            }
            let plaintext = from.decode_blob_at(at, id, stored)?;
            shared.add_taken(at.entry.kind, *id, &plaintext)?;
        }
    }
    shared.finish()?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::PackId;
    use crate::repo::pack::{BlobKind, PackEntry};

    /// A blob of `pack` in the frame at `offset`, `length` bytes stored, at `frame_at` in it.
    fn blob(n: u16, offset: u32, length: u32, frame_at: u32) -> (BlobId, BlobLocation) {
        let mut id = [0; 32];
        id[..2].copy_from_slice(&n.to_le_bytes());
        let entry = PackEntry {
            frame_at,
            frame_raw_length: 1 << 20,
            ..PackEntry::alone(BlobId(id), BlobKind::Data, offset, length, 100)
        };
        let pack = PackId([1; 32]);
        (entry.id, BlobLocation { pack, entry })
    }

    #[test]
    fn a_batch_holds_whole_frames_each_counted_once() {
        const MIB: u32 = 1 << 20;
        let mut blobs: Vec<_> = (0..300)
            .map(|n| blob(n, 0, 5 * MIB, 100 * u32::from(n)))
            .collect();
        blobs.extend((0..2).map(|n| blob(300 + n, 5 * MIB, 4 * MIB, 100 * u32::from(n))));
        let (id, mut alone) = blob(302, 9 * MIB, 10, 0);
        alone.entry = PackEntry::alone(id, BlobKind::Data, 9 * MIB, 10, 10);
        blobs.push((id, alone));
        let sizes: Vec<usize> = batches(&blobs).iter().map(|batch| batch.len()).collect();
        // Counted per blob, each of the first frame's blobs weighed 5 MiB: 300 batches.
        assert_eq!(sizes, vec![300, 3]);
    }
}
