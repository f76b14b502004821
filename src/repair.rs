//! `cairn repair`: the ways out after damage, each under an exclusive lock and each with a
//! dry run that reads and reports but writes nothing.
//!
//! `index` rebuilds the index from the packs themselves: every pack's header (a ranged read
//! of its tail) lists its blobs, so index files that are missing, truncated or garbage are
//! replaced by a fresh set covering every readable pack. A pack whose header cannot be read
//! is reported and left out (not deleted). The order is prune's: the fresh index files are
//! written before the old ones are deleted, so a readable pack is never unlisted (listed
//! twice at worst, which is harmless).
//!
//! `checkpoints` rewrites every checkpoint that references blobs `check` finds missing or
//! unreadable: file entries whose chunks (or chunk list) are damaged and subtrees that
//! cannot be loaded are dropped, the trees above them are stored anew, and a new record
//! (same time, host, paths and parent, tagged `repaired`, statistics recounted) is written
//! before the damaged record is removed, so a crash leaves both, never neither (invariant 1
//! holds for the new record: its trees are durable before it is written). The new record
//! depends only on the damaged one, so a repair run again after a crash writes the same
//! record and removes the old one. Undamaged checkpoints keep their id.

use crate::check::{self, CheckOptions};
use crate::checkpoint::{self, Checkpoint};
use crate::error::{Error, ErrorKind, Result};
use crate::id::{BlobId, CheckpointId};
use crate::repo::Repository;
use crate::repo::index::IndexedPacks;
use crate::repo::lock;
use crate::repo::pack::{BlobKind, fetch_header, pack_id_of_object};
use crate::repo::writer::{BlobSink, replace_index_files, with_blob_sink};
use crate::tree::{Content, EntryKind, Tree, file_chunks, load_tree};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;

/// The tag a repaired checkpoint carries.
pub const REPAIRED_TAG: &str = "repaired";

/// Inputs of a repair.
#[derive(Debug, Clone, Default)]
pub struct RepairOptions {
    /// Read and report, write nothing.
    pub dry_run: bool,
}

/// A pack left out of the rebuilt index.
#[derive(Debug, Clone, Serialize)]
pub struct UnreadablePack {
    /// The object's name under `data/`.
    pub name: String,
    pub reason: String,
}

/// What `index` did (or, in a dry run, would do).
#[derive(Debug, Default, Serialize)]
pub struct IndexRepairReport {
    pub dry_run: bool,
    pub packs_read: u64,
    pub unreadable_packs: Vec<UnreadablePack>,
    pub blobs_indexed: u64,
    pub index_files_written: u64,
    pub index_files_deleted: u64,
}

/// Rebuilds the index of `repo` (which the caller has not locked) from its pack headers.
pub fn index(repo: &Repository, options: &RepairOptions) -> Result<IndexRepairReport> {
    // A dry run changes nothing, so it waits for no one.
    let _lock = lock::acquire(repo, !options.dry_run, "repair")?;
    let mut report = IndexRepairReport {
        dry_run: options.dry_run,
        ..IndexRepairReport::default()
    };
    let mut objects = repo.backend().list("data/")?;
    objects.sort_by(|a, b| a.name.cmp(&b.name));
    let mut readable: IndexedPacks = Vec::new();
    for object in objects {
        let Some(pack) = pack_id_of_object(&object.name) else {
            report.unreadable_packs.push(UnreadablePack {
                name: object.name,
                reason: "not a pack's name".into(),
            });
            continue;
        };
        match fetch_header(repo.backend(), &pack, object.size, repo.codec()) {
            Ok(entries) => {
                report.blobs_indexed += entries.len() as u64;
                readable.push((pack, entries));
            }
            // Only damage leaves a pack out: a pack that failed to load for another reason
            // (a network error) would lose its only listing.
            Err(e) if e.kind() == ErrorKind::Corrupt => {
                report.unreadable_packs.push(UnreadablePack {
                    name: object.name,
                    reason: e.to_string(),
                });
            }
            Err(e) => return Err(e),
        }
    }
    report.packs_read = readable.len() as u64;
    let old: Vec<String> = repo
        .backend()
        .list("index/")?
        .into_iter()
        .map(|o| o.name)
        .collect();
    let replaced = replace_index_files(repo, &readable, &old, options.dry_run)?;
    report.index_files_written = replaced.written;
    report.index_files_deleted = replaced.deleted;
    if !options.dry_run {
        repo.index().sync(repo.backend(), repo.codec())?;
    }
    Ok(report)
}

/// One checkpoint rewritten without its damaged entries.
#[derive(Debug, Clone, Serialize)]
pub struct RepairedCheckpoint {
    pub old_id: CheckpointId,
    /// The new record's id (`None` in a dry run).
    pub new_id: Option<CheckpointId>,
    /// `<old short id>:/<path>` of every entry dropped.
    pub dropped: Vec<String>,
}

/// What `checkpoints` did (or, in a dry run, would do).
#[derive(Debug, Default, Serialize)]
pub struct CheckpointRepairReport {
    pub dry_run: bool,
    pub checkpoints_checked: u64,
    pub repaired: Vec<RepairedCheckpoint>,
    /// Records that cannot be read at all (`checkpoints/<id>: reason`); left as they are.
    pub unreadable_checkpoints: Vec<String>,
}

/// Files, directories and bytes below a tree, as a backup counts them.
#[derive(Debug, Clone, Copy, Default)]
struct TreeTotals {
    files: u64,
    dirs: u64,
    bytes: u64,
}

/// A tree with its damaged entries dropped.
#[derive(Debug, Clone)]
struct RewrittenTree {
    /// The tree's new id; its old one when nothing below it was dropped.
    id: BlobId,
    /// Paths dropped below the tree, each starting with `/`.
    dropped: Vec<String>,
    totals: TreeTotals,
}

/// Rewrites trees bottom-up without what `damaged` makes unreadable; each distinct tree once.
struct TreeRewriter<'a> {
    sink: &'a BlobSink<'a>,
    damaged: HashSet<BlobId>,
    done: HashMap<BlobId, RewrittenTree>,
}

impl TreeRewriter<'_> {
    /// Tree `id` rewritten, or `None` when it cannot be loaded.
    fn rewrite(&mut self, id: BlobId) -> Result<Option<RewrittenTree>> {
        if self.damaged.contains(&id) {
            return Ok(None);
        }
        if let Some(done) = self.done.get(&id) {
            return Ok(Some(done.clone()));
        }
        let repo = self.sink.repo();
        let tree = load_tree(repo, &id)?;
        let mut kept = Vec::with_capacity(tree.entries.len());
        let mut dropped = Vec::new();
        let mut totals = TreeTotals::default();
        for mut entry in tree.entries {
            let path = format!("/{}", entry.name_lossy());
            match &entry.kind {
                EntryKind::Dir(subtree) => {
                    let Some(below) = self.rewrite(*subtree)? else {
                        dropped.push(path);
                        continue;
                    };
                    dropped.extend(below.dropped.iter().map(|p| format!("{path}{p}")));
                    totals.files += below.totals.files;
                    totals.dirs += below.totals.dirs + 1;
                    totals.bytes += below.totals.bytes;
                    entry.kind = EntryKind::Dir(below.id);
                }
                EntryKind::File(content) => {
                    if !self.readable(content)? {
                        dropped.push(path);
                        continue;
                    }
                    totals.files += 1;
                    totals.bytes += entry.size;
                }
                _ => {}
            }
            kept.push(entry);
        }
        let new_id = if dropped.is_empty() {
            id
        } else {
            self.store(&Tree::from_entries(kept))?
        };
        let rewritten = RewrittenTree {
            id: new_id,
            dropped,
            totals,
        };
        self.done.insert(id, rewritten.clone());
        Ok(Some(rewritten))
    }

    /// Whether every blob a file's content needs is readable.
    fn readable(&self, content: &Content) -> Result<bool> {
        if let Content::ChunkList(list) = content
            && self.damaged.contains(list)
        {
            return Ok(false);
        }
        let chunks = file_chunks(self.sink.repo(), content)?;
        Ok(chunks.iter().all(|chunk| !self.damaged.contains(&chunk.id)))
    }

    /// Stores a rewritten tree. A tree the index lists but whose stored copy is damaged
    /// would be deduplicated against that copy, so it is refused.
    fn store(&self, tree: &Tree) -> Result<BlobId> {
        let encoded = tree.encode();
        let repo = self.sink.repo();
        let id = BlobId(repo.codec().id_of(&encoded));
        if self.damaged.contains(&id) && repo.index().contains(&id)? {
            return Err(Error::corrupt(
                format!("tree {id}"),
                "a repaired checkpoint needs this tree, but the index lists a damaged copy of it: run `cairn repair index` first",
            ));
        }
        self.sink.store(BlobKind::Tree, &encoded)
    }
}

/// A checkpoint's new record, planned.
struct PlannedRecord {
    old_id: CheckpointId,
    record: Checkpoint,
    dropped: Vec<String>,
}

/// Rewrites every damaged checkpoint of `repo` (which the caller has not locked).
pub fn checkpoints(repo: &Repository, options: &RepairOptions) -> Result<CheckpointRepairReport> {
    let _lock = lock::acquire(repo, !options.dry_run, "repair")?;
    let mut report = CheckpointRepairReport {
        dry_run: options.dry_run,
        ..CheckpointRepairReport::default()
    };
    let damaged: HashSet<BlobId> = check::run(repo, &CheckOptions::default())?
        .damaged
        .into_iter()
        .map(|d| d.blob)
        .collect();
    let mut records = Vec::new();
    for id in checkpoint::list_ids(repo)? {
        match checkpoint::load(repo, &id) {
            Ok(record) => records.push((id, record)),
            Err(e) => report
                .unreadable_checkpoints
                .push(format!("checkpoints/{id}: {e}")),
        }
    }
    records.sort_by(|a, b| checkpoint::catalogue_order((&a.0, &a.1), (&b.0, &b.1)));
    report.checkpoints_checked = records.len() as u64;
    if damaged.is_empty() {
        return Ok(report);
    }

    // New trees first: they are durable once the sink has finished.
    let added_bytes = AtomicU64::new(0);
    let (planned, _) = with_blob_sink(repo, options.dry_run, 8, &added_bytes, |sink| {
        let mut rewriter = TreeRewriter {
            sink,
            damaged,
            done: HashMap::new(),
        };
        let mut planned = Vec::new();
        for (old_id, record) in records {
            let root = match rewriter.rewrite(record.tree)? {
                Some(root) => root,
                None => RewrittenTree {
                    id: rewriter.store(&Tree::default())?,
                    dropped: vec![String::new()],
                    totals: TreeTotals::default(),
                },
            };
            if root.dropped.is_empty() {
                continue;
            }
            let short = old_id.short();
            let dropped: Vec<String> = root
                .dropped
                .iter()
                .map(|path| format!("{short}:{}", if path.is_empty() { "/" } else { path }))
                .collect();
            planned.push(PlannedRecord {
                old_id,
                record: repaired_record(record, &root),
                dropped,
            });
        }
        Ok(planned)
    })?;

    // Then each new record, and only then the damaged one it replaces.
    for PlannedRecord {
        old_id,
        record,
        dropped,
    } in planned
    {
        let new_id = if options.dry_run {
            None
        } else {
            let new_id = checkpoint::save(repo, &record)?;
            checkpoint::remove(repo, &old_id)?;
            Some(new_id)
        };
        report.repaired.push(RepairedCheckpoint {
            old_id,
            new_id,
            dropped,
        });
    }
    Ok(report)
}

/// `record` pointing at its rewritten root, tagged, with statistics recounted.
fn repaired_record(mut record: Checkpoint, root: &RewrittenTree) -> Checkpoint {
    record.tree = root.id;
    if let Some(entry) = &mut record.root {
        entry.kind = EntryKind::Dir(root.id);
    }
    if !record.tags.iter().any(|tag| tag == REPAIRED_TAG) {
        record.tags.push(REPAIRED_TAG.into());
    }
    record.stats.files = root.totals.files;
    record.stats.dirs = root.totals.dirs;
    record.stats.bytes = root.totals.bytes;
    record.stats.errors += root.dropped.len() as u64;
    record
}
