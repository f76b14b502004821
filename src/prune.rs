//! `cairn prune`: returns the space of blobs no checkpoint references.
//!
//! Under an exclusive lock, prune walks every checkpoint's trees for the blobs still used,
//! reads every index file, and sorts the packs: packs with no used blob are deleted; packs
//! partly used are repacked (their used blobs, each checked against its id, copied into new
//! packs) until the unused bytes left are at most `max_unused` percent of the used ones,
//! fullest-of-waste first; packs no index file lists (left by a killed run) are deleted.
//!
//! The order keeps every used blob reachable at every moment, so a prune killed at any point
//! loses nothing: (1) repacked blobs go into new packs with their own index files; (2) one
//! fresh set of index files lists every pack that stays, the new ones included (a new pack
//! that happens to have an old pack's id stays); (3) only then are the old index
//! files deleted, and (4) last the packs nothing lists any more. A crash before (3) leaves
//! blobs listed twice, which the next prune removes; after it, only unlisted packs, which the
//! next prune deletes. Other machines' caches see index files gone and rebuild.

use crate::checkpoint;
use crate::error::{Error, Result};
use crate::id::{BlobId, PackId, TreeId};
use crate::progress::Progress;
use crate::repo::Repository;
use crate::repo::index::{IndexedPacks, read_index_file};
use crate::repo::lock::LockGuard;
use crate::repo::objects::ObjectKind;
use crate::repo::pack::{BlobKind, PackEntry, pack_id_of_object, pack_object_name};
use crate::repo::table;
use crate::repo::writer::{commit_pack_rewrite, packs_holding, with_blob_sink};
use crate::tree::{Content, EntryKind, decode_chunk_list, load_tree};
use serde::Serialize;
use std::collections::{HashMap, HashSet};

/// Inputs of a prune.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// Unused bytes tolerated in partly used packs, in percent of the used bytes; packs
    /// beyond it are repacked.
    pub max_unused_percent: f64,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            max_unused_percent: 5.0,
        }
    }
}

/// What a prune did (or, in a dry run, would do).
#[derive(Debug, Default, Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    pub packs_before: u64,
    pub bytes_before: u64,
    pub used_blobs: u64,
    pub used_bytes: u64,
    /// Packs deleted whole: no used blob, or listed by no index file.
    pub packs_deleted: u64,
    /// Partly used packs whose used blobs were copied into new packs.
    pub packs_repacked: u64,
    pub blobs_repacked: u64,
    pub bytes_repacked: u64,
    /// Unused bytes left in partly used packs that were kept.
    pub unused_bytes_kept: u64,
    pub index_files_written: u64,
    pub index_files_deleted: u64,
    pub bytes_after: u64,
}

/// How much of a pack is used.
#[derive(Debug, Default)]
struct PackUse {
    entries: Vec<PackEntry>,
    /// Entries to keep: used, and the first copy of their blob.
    used: Vec<PackEntry>,
    used_bytes: u64,
    unused_bytes: u64,
}

/// Every blob that some checkpoint references: trees, chunk lists and data.
fn used_blobs(repo: &Repository) -> Result<HashSet<BlobId>> {
    let mut used = HashSet::new();
    let mut trees: Vec<TreeId> = checkpoint::read_all(repo)?
        .into_iter()
        .map(|stored| stored.record.tree)
        .collect();
    while let Some(id) = trees.pop() {
        if !used.insert(id.blob()) {
            continue;
        }
        for entry in load_tree(repo, &id)?.entries {
            match entry.kind {
                EntryKind::Dir(subtree) => trees.push(subtree),
                EntryKind::File(Content::Chunks(chunks)) => {
                    used.extend(chunks.iter().map(|c| c.id));
                }
                EntryKind::File(Content::ChunkList(list)) => {
                    let chunks = decode_chunk_list(&repo.read_blob(&list)?, &list)?;
                    used.insert(list);
                    used.extend(chunks.iter().map(|c| c.id));
                }
                _ => {}
            }
        }
    }
    Ok(used)
}

/// Every index file, decoded, in name order.
pub(crate) fn index_files(repo: &Repository) -> Result<Vec<(String, IndexedPacks)>> {
    let mut names: Vec<String> = repo
        .backend()
        .list(ObjectKind::Index.prefix())?
        .into_iter()
        .map(|o| o.name)
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let packs = read_index_file(repo.backend(), repo.codec(), &name)?;
            Ok((name, packs))
        })
        .collect()
}

/// Every pack's entries, merged over the index files that list it: each pack once, in the
/// order first listed, with its frames in listing order, each frame (a pack and an offset)
/// once and whole. Index files that list different blobs for one frame are refused (the
/// frame could be neither kept whole nor rewritten): `cairn repair index` lists the packs
/// afresh from their own headers. Linear in the entries.
pub(crate) fn merge_listings<'a>(
    listings: impl IntoIterator<Item = &'a (PackId, Vec<PackEntry>)>,
) -> Result<Vec<(PackId, Vec<PackEntry>)>> {
    let mut merged: Vec<(PackId, Vec<PackEntry>)> = Vec::new();
    let mut position: HashMap<PackId, usize> = HashMap::new();
    // Where each frame listed so far lies in its pack's merged entries.
    let mut frames: HashMap<(PackId, u32), std::ops::Range<usize>> = HashMap::new();
    for (pack, entries) in listings {
        let i = *position.entry(*pack).or_insert_with(|| {
            merged.push((*pack, Vec::new()));
            merged.len() - 1
        });
        let into = &mut merged[i].1;
        for frame in table::frames(entries) {
            let offset = frame[0].offset;
            let conflict = |what: &str| {
                Error::corrupt(
                    pack_object_name(pack),
                    format!(
                        "index files list {what} at offset {offset}: run `cairn repair index`, which lists packs from their own headers"
                    ),
                )
            };
            if !table::is_whole_frame(frame) {
                return Err(conflict("a frame that is not whole"));
            }
            if let Some(listed) = frames.get(&(*pack, offset)) {
                if into[listed.clone()] != *frame {
                    return Err(conflict("different blobs"));
                }
                continue;
            }
            frames.insert((*pack, offset), into.len()..into.len() + frame.len());
            into.extend_from_slice(frame);
        }
    }
    Ok(merged)
}

/// Prunes `repo` (which the caller has not locked): decides under the lock what to delete and
/// repack, then does it, unless `repo` is a dry run's (`Repository::into_dry_run`).
pub fn run(repo: &Repository, options: &PruneOptions) -> Result<PruneReport> {
    // A dry run changes nothing: it reads like a restore does.
    let lock = if repo.is_dry_run() {
        crate::repo::lock::acquire_for_reading(repo, "prune --dry-run")?
    } else {
        Some(crate::repo::lock::acquire(repo, true, "prune")?)
    };
    let plan = Plan::decide(repo, options.max_unused_percent)?;
    if repo.is_dry_run() {
        return Ok(PruneReport {
            dry_run: true,
            bytes_after: plan.report.bytes_before - plan.bytes_gone + plan.report.bytes_repacked,
            ..plan.report
        });
    }
    plan.execute(repo, lock.as_ref())
}

/// What a prune will do, decided from the repository as it is, before anything changes.
struct Plan {
    /// The numbers, as far as they are known before the work.
    report: PruneReport,
    /// How much of each indexed pack is used.
    packs: HashMap<PackId, PackUse>,
    /// Partly used packs whose used blobs move into new packs.
    repack: Vec<PackId>,
    /// Packs deleted: unused, unlisted, or repacked.
    gone: HashSet<PackId>,
    bytes_gone: u64,
    /// Indexed packs that stay as they are, in the order first listed.
    staying: Vec<PackId>,
    /// The index files read, replaced at the end.
    old_index_files: Vec<String>,
}

impl Plan {
    /// Reads every checkpoint's trees, every index file and the list of packs, and decides:
    /// packs with no used blob and packs no index file lists are deleted; partly used packs
    /// are repacked, most wasteful first, until the unused bytes left are at most
    /// `max_unused_percent` of the used ones.
    fn decide(repo: &Repository, max_unused_percent: f64) -> Result<Plan> {
        let used = used_blobs(repo)?;
        let old_index_files = index_files(repo)?;
        let present = present_packs(repo)?;
        let mut report = PruneReport {
            packs_before: present.len() as u64,
            bytes_before: present.values().sum(),
            ..PruneReport::default()
        };
        let listings = merge_listings(old_index_files.iter().flat_map(|(_, listed)| listed))?;
        let (packs, pack_order) = pack_use(listings, &used, &present)?;
        report.used_blobs = packs.values().map(|p| p.used.len() as u64).sum();
        report.used_bytes = packs.values().map(|p| p.used_bytes).sum();

        let mut doomed: Vec<PackId> = present
            .keys()
            .filter(|pack| !packs.contains_key(pack))
            .copied()
            .collect();
        let mut partly: Vec<PackId> = Vec::new();
        for pack in &pack_order {
            let usage = &packs[pack];
            if usage.used.is_empty() {
                doomed.push(*pack);
            } else if usage.unused_bytes > 0 {
                partly.push(*pack);
            }
        }
        partly.sort_by_key(|pack| std::cmp::Reverse(packs[pack].unused_bytes));
        let tolerated = (report.used_bytes as f64 * max_unused_percent / 100.0) as u64;
        let mut waste: u64 = partly.iter().map(|p| packs[p].unused_bytes).sum();
        let mut repack: Vec<PackId> = Vec::new();
        for pack in partly {
            if waste <= tolerated {
                break;
            }
            waste -= packs[&pack].unused_bytes;
            repack.push(pack);
        }
        report.unused_bytes_kept = waste;
        report.packs_repacked = repack.len() as u64;
        report.blobs_repacked = repack.iter().map(|p| packs[p].used.len() as u64).sum();
        report.bytes_repacked = repack.iter().map(|p| packs[p].used_bytes).sum();
        report.packs_deleted = doomed.len() as u64;
        let gone: HashSet<PackId> = doomed.iter().chain(&repack).copied().collect();
        let staying = pack_order
            .into_iter()
            .filter(|pack| !gone.contains(pack))
            .collect();
        Ok(Plan {
            bytes_gone: gone.iter().map(|p| present[p]).sum(),
            report,
            packs,
            repack,
            gone,
            staying,
            old_index_files: old_index_files.into_iter().map(|(name, _)| name).collect(),
        })
    }

    /// Does what was decided, in the order that keeps every used blob reachable (see the
    /// module's documentation); checks the lock is still held before the first deletion.
    fn execute(self, repo: &Repository, lock: Option<&LockGuard>) -> Result<PruneReport> {
        let Plan {
            mut report,
            packs,
            repack,
            gone,
            staying,
            old_index_files,
            ..
        } = self;
        // (1) Repacked blobs into new packs, each checked against its id on the way.
        with_blob_sink(repo, 8, &Progress::default(), |sink| {
            // Blobs that shared a frame share one again, with the others moved beside them.
            let mut frame = sink.shared_frame(BlobKind::Data);
            for pack in &repack {
                let name = pack_object_name(pack);
                let bytes = repo.backend().get(&name)?;
                for entry in &packs[pack].used {
                    sink.copy_stored(pack, &bytes, entry, &mut frame)??;
                }
            }
            frame.finish()
        })?;
        // Where the repacked blobs landed. A new pack may have the very id of an old one (the
        // same blobs in the same order, unencrypted): it stays, whatever was decided for it.
        let repacked_into = packs_holding(
            repo,
            repack
                .iter()
                .flat_map(|pack| &packs[pack].used)
                .map(|e| &e.id),
        )?;
        let gone: HashSet<PackId> = gone
            .into_iter()
            .filter(|pack| !repacked_into.contains_key(pack))
            .collect();
        if let Some(lock) = lock {
            lock.ensure_held()?;
        }
        // (2) One fresh set of index files for the packs that stay and the new ones, then (3)
        // the old index files, then (4) the packs nothing lists any more.
        let mut listed: IndexedPacks = staying
            .iter()
            .filter(|pack| !repacked_into.contains_key(pack))
            .map(|pack| (*pack, packs[pack].entries.clone()))
            .collect();
        listed.extend(repacked_into);
        let replaced = commit_pack_rewrite(repo, &listed, &old_index_files, &gone)?;
        report.index_files_written = replaced.written;
        report.index_files_deleted = replaced.deleted;
        report.bytes_after = present_packs(repo)?.values().sum();
        Ok(report)
    }
}

/// Every pack in the repository, with its size.
fn present_packs(repo: &Repository) -> Result<HashMap<PackId, u64>> {
    let mut present = HashMap::new();
    for object in repo.backend().list(ObjectKind::Pack.prefix())? {
        let pack = pack_id_of_object(&object.name).ok_or_else(|| {
            Error::corrupt(
                &object.name,
                "not a pack: move it out of the repository before pruning",
            )
        })?;
        present.insert(pack, object.size);
    }
    Ok(present)
}

/// Sorts every indexed entry into its pack, in the order the packs are first listed; the
/// first copy of a used blob is the kept one. Fails when a listed pack is missing or a used
/// blob is listed nowhere: pruning then could lose data.
fn pack_use(
    listings: Vec<(PackId, Vec<PackEntry>)>,
    used: &HashSet<BlobId>,
    present: &HashMap<PackId, u64>,
) -> Result<(HashMap<PackId, PackUse>, Vec<PackId>)> {
    let mut packs: HashMap<PackId, PackUse> = HashMap::new();
    let mut pack_order: Vec<PackId> = Vec::new();
    let mut kept: HashSet<BlobId> = HashSet::new();
    for (pack, entries) in listings {
        if !present.contains_key(&pack) {
            return Err(Error::corrupt(
                pack_object_name(&pack),
                "listed by an index file but missing: run `cairn check`, then `cairn repair index`, before pruning",
            ));
        }
        let mut usage = PackUse::default();
        for entry in &entries {
            if used.contains(&entry.id) && kept.insert(entry.id) {
                usage.used.push(*entry);
                usage.used_bytes += entry.stored_share();
            } else {
                usage.unused_bytes += entry.stored_share();
            }
        }
        usage.entries = entries;
        packs.insert(pack, usage);
        pack_order.push(pack);
    }
    if let Some(missing) = used.iter().find(|id| !kept.contains(id)) {
        return Err(Error::corrupt(
            format!("blob {missing}"),
            "a checkpoint needs it but no index file lists it: run `cairn check` before pruning",
        ));
    }
    Ok((packs, pack_order))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::pack::BlobKind;

    fn entry(blob: u8, offset: u32) -> PackEntry {
        PackEntry::alone(BlobId([blob; 32]), BlobKind::Tree, offset, 10, 10)
    }

    #[test]
    fn listings_merge_each_pack_once_and_each_entry_once_in_listing_order() {
        let (p, q) = (PackId([1; 32]), PackId([2; 32]));
        let listed = [
            (p, vec![entry(1, 0), entry(2, 10)]),
            (q, vec![entry(1, 0)]),
            // The same pack listed again: a repeat is dropped, a new entry and the same blob
            // at another offset are kept.
            (p, vec![entry(2, 10), entry(3, 20), entry(1, 30)]),
        ];
        let merged = merge_listings(&listed).unwrap();
        assert_eq!(
            merged,
            vec![
                (
                    p,
                    vec![entry(1, 0), entry(2, 10), entry(3, 20), entry(1, 30)]
                ),
                (q, vec![entry(1, 0)]),
            ]
        );
    }

    /// The entries of one shared frame at `offset` holding `blobs`, 10 bytes each.
    fn frame(offset: u32, blobs: &[u8]) -> Vec<PackEntry> {
        let frame_raw_length = 10 * blobs.len() as u32;
        (0u32..)
            .zip(blobs)
            .map(|(i, &blob)| PackEntry {
                frame_at: 10 * i,
                frame_raw_length,
                ..PackEntry::alone(BlobId([blob; 32]), BlobKind::Data, offset, 40, 10)
            })
            .collect()
    }

    #[test]
    fn listings_merge_whole_frames_and_refuse_two_frames_at_one_offset() {
        use crate::repo::{index::encode_index_file, table::Layout};
        let p = PackId([1; 32]);
        // One frame holding one blob twice, listed twice: kept whole, once, and encodable
        // (a merge by blob and offset kept one of the two, and encoding it panicked).
        let twice = [(p, frame(0, &[1, 1])), (p, frame(0, &[1, 1]))];
        let merged = merge_listings(&twice).unwrap();
        assert_eq!(merged, vec![(p, frame(0, &[1, 1]))]);
        encode_index_file(&merged, Layout::Frames);
        // Two index files naming different frames at one offset: refused, naming the pack
        // (a merge by blob and offset made one frame of both, and encoding it panicked).
        let conflicting = [(p, frame(0, &[1, 2])), (p, frame(0, &[3, 4]))];
        let error = merge_listings(&conflicting).unwrap_err();
        assert_eq!(error.kind(), crate::error::ErrorKind::Corrupt);
        assert!(error.to_string().contains(&pack_object_name(&p)), "{error}");
        assert!(error.to_string().contains("cairn repair index"), "{error}");
        // One index file listing one frame twice in a row: the two read as one frame that is
        // not whole (joined, it made encoding panic), and are refused.
        let repeated = [(p, [frame(0, &[1, 2]), frame(0, &[1, 2])].concat())];
        let error = merge_listings(&repeated).unwrap_err();
        assert!(error.to_string().contains("not whole"), "{error}");
    }
}
