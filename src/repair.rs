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
//! `packs` heals damaged packs (restic's `repair packs`, borg's `check --repair`): every
//! indexed pack is read whole, and one whose bytes no longer match its id has the blobs that
//! still read back copied into new packs; the rest, and every blob a missing pack held, leave
//! the index. The damaged pack is deleted only after the fresh index files are saved. A blob
//! no longer indexed is stored again by the next backup (or sync) that meets its content, and
//! since ids are content addresses that heals every checkpoint referencing it.
//!
//! `checkpoints` rewrites every checkpoint that references blobs `check` finds missing or
//! unreadable: file entries whose chunks (or chunk list) are damaged and subtrees that
//! cannot be loaded are dropped, the trees above them are stored anew, and a new record
//! (same time, host, paths and parent, tagged `repaired`, statistics recounted) is written
//! before the damaged record is removed, so a crash leaves both, never neither (invariant 1
//! holds for the new record: its trees are durable before it is written). The new record
//! depends only on the damaged one, so a repair run again after a crash writes the same
//! record and removes the old one. Undamaged checkpoints keep their id. Trees are rewritten
//! with an explicit stack, so a checkpoint nested however deep is repaired without exhausting
//! the call stack.

use crate::check::{self, CheckOptions};
use crate::checkpoint::{self, Checkpoint};
use crate::error::{Error, ErrorKind, Result};
use crate::id::{BlobId, CheckpointId, PackId, TreeId};
use crate::progress::Progress;
use crate::prune::{index_files, merge_listings};
use crate::repo::Repository;
use crate::repo::index::IndexedPacks;
use crate::repo::lock;
use crate::repo::objects::ObjectKind;
use crate::repo::pack::{BlobKind, fetch_header, pack_id_of_object, pack_object_name};
use crate::repo::writer::{
    BlobSink, commit_pack_rewrite, packs_holding, replace_index_files, with_blob_sink,
};
use crate::tree::{Content, Entry, EntryKind, Tree, file_chunks, load_tree, store_tree};
use serde::Serialize;
use std::collections::{HashMap, HashSet};

/// The tag a repaired checkpoint carries.
pub const REPAIRED_TAG: &str = "repaired";

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
pub fn index(repo: &Repository) -> Result<IndexRepairReport> {
    let _lock = lock::acquire(repo, true, "repair")?;
    let mut report = IndexRepairReport {
        dry_run: repo.is_dry_run(),
        ..IndexRepairReport::default()
    };
    let mut objects = repo.backend().list(ObjectKind::Pack.prefix())?;
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
        .list(ObjectKind::Index.prefix())?
        .into_iter()
        .map(|o| o.name)
        .collect();
    let replaced = replace_index_files(repo, &readable, &old)?;
    report.index_files_written = replaced.written;
    report.index_files_deleted = replaced.deleted;
    repo.index().sync(repo.backend(), repo.codec())?;
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
    id: TreeId,
    /// Names of the entries dropped from this tree itself.
    dropped: Vec<String>,
    /// Subdirectories (name, old tree id) below which something was dropped: the paths are
    /// spelled out only for the report, so deep trees do not repeat long paths per level.
    dropped_below: Vec<(String, TreeId)>,
    totals: TreeTotals,
}

/// Rewrites trees bottom-up without what `damaged` makes unreadable; each distinct tree once.
struct TreeRewriter<'a> {
    sink: &'a BlobSink<'a>,
    damaged: HashSet<BlobId>,
    done: HashMap<TreeId, RewrittenTree>,
}

/// A tree being rewritten: the entries still to look at, and what is kept so far.
struct PendingTree {
    id: TreeId,
    entries: std::vec::IntoIter<Entry>,
    /// A directory entry waiting for its subtree, which is being rewritten above this one.
    waiting: Option<Entry>,
    kept: Vec<Entry>,
    dropped: Vec<String>,
    dropped_below: Vec<(String, TreeId)>,
    totals: TreeTotals,
}

impl TreeRewriter<'_> {
    /// Tree `id` rewritten, or `None` when it is damaged. Subtrees are rewritten first,
    /// with an explicit stack of the trees in progress, so a tree nested however deep is
    /// rewritten without exhausting the call stack.
    fn rewrite(&mut self, id: TreeId) -> Result<Option<RewrittenTree>> {
        if self.damaged.contains(&id.blob()) {
            return Ok(None);
        }
        if let Some(done) = self.done.get(&id) {
            return Ok(Some(done.clone()));
        }
        let mut stack = vec![self.open(id)?];
        while let Some(tree) = stack.last_mut() {
            let Some(entry) = tree.waiting.take().or_else(|| tree.entries.next()) else {
                let finished = stack.pop().expect("the loop holds the last tree");
                let id = finished.id;
                let rewritten = self.finish(finished)?;
                self.done.insert(id, rewritten.clone());
                if stack.is_empty() {
                    return Ok(Some(rewritten));
                }
                continue;
            };
            if let EntryKind::Dir(subtree) = entry.kind
                && !self.damaged.contains(&subtree.blob())
                && !self.done.contains_key(&subtree)
            {
                tree.waiting = Some(entry);
                let below = self.open(subtree)?;
                stack.push(below);
                continue;
            }
            self.place(tree, entry)?;
        }
        unreachable!("the loop returns when the outermost tree is finished")
    }

    fn open(&self, id: TreeId) -> Result<PendingTree> {
        let tree = load_tree(self.sink.repo(), &id)?;
        Ok(PendingTree {
            id,
            kept: Vec::with_capacity(tree.entries.len()),
            entries: tree.entries.into_iter(),
            waiting: None,
            dropped: Vec::new(),
            dropped_below: Vec::new(),
            totals: TreeTotals::default(),
        })
    }

    /// Keeps or drops `entry` of `tree`; a directory's subtree is rewritten (or damaged)
    /// already.
    fn place(&self, tree: &mut PendingTree, mut entry: Entry) -> Result<()> {
        let name = entry.name_lossy().into_owned();
        match &entry.kind {
            EntryKind::Dir(subtree) => {
                let Some(below) = self.done.get(subtree) else {
                    tree.dropped.push(name);
                    return Ok(());
                };
                if !below.dropped.is_empty() || !below.dropped_below.is_empty() {
                    tree.dropped_below.push((name, *subtree));
                }
                tree.totals.files += below.totals.files;
                tree.totals.dirs += below.totals.dirs + 1;
                tree.totals.bytes += below.totals.bytes;
                entry.kind = EntryKind::Dir(below.id);
            }
            EntryKind::File(content) => {
                if !self.readable(content)? {
                    tree.dropped.push(name);
                    return Ok(());
                }
                tree.totals.files += 1;
                tree.totals.bytes += entry.size;
            }
            _ => {}
        }
        tree.kept.push(entry);
        Ok(())
    }

    /// A tree whose entries are all placed: stored anew when something below it was dropped.
    fn finish(&self, tree: PendingTree) -> Result<RewrittenTree> {
        let id = if tree.dropped.is_empty() && tree.dropped_below.is_empty() {
            tree.id
        } else {
            self.store(&Tree::from_entries(tree.kept))?
        };
        Ok(RewrittenTree {
            id,
            dropped: tree.dropped,
            dropped_below: tree.dropped_below,
            totals: tree.totals,
        })
    }

    /// The paths dropped below `root`, each starting with `/`, spelled out with an explicit
    /// stack of the subdirectories still to visit.
    fn dropped_paths(&self, root: &RewrittenTree) -> Vec<String> {
        let mut paths = Vec::new();
        let mut pending = vec![(String::new(), root)];
        while let Some((prefix, tree)) = pending.pop() {
            paths.extend(tree.dropped.iter().map(|name| format!("{prefix}/{name}")));
            for (name, old_id) in tree.dropped_below.iter().rev() {
                if let Some(below) = self.done.get(old_id) {
                    pending.push((format!("{prefix}/{name}"), below));
                }
            }
        }
        paths
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
    fn store(&self, tree: &Tree) -> Result<TreeId> {
        let repo = self.sink.repo();
        let id = BlobId(repo.codec().id_of(&tree.encode()));
        if self.damaged.contains(&id) && repo.index().contains(&id)? {
            return Err(Error::corrupt(
                format!("tree {id}"),
                "a repaired checkpoint needs this tree, but the index lists a damaged copy of it: run `cairn repair index` first",
            ));
        }
        store_tree(self.sink, tree)
    }
}

/// A checkpoint's new record, planned.
struct PlannedRecord {
    old_id: CheckpointId,
    record: Checkpoint,
    dropped: Vec<String>,
}

/// Rewrites every damaged checkpoint of `repo` (which the caller has not locked).
pub fn checkpoints(repo: &Repository) -> Result<CheckpointRepairReport> {
    let _lock = lock::acquire(repo, true, "repair")?;
    let mut report = CheckpointRepairReport {
        dry_run: repo.is_dry_run(),
        ..CheckpointRepairReport::default()
    };
    let damaged: HashSet<BlobId> = check::run_locked(repo, &CheckOptions::default())?
        .damaged
        .into_iter()
        .map(|d| d.blob)
        .collect();
    let mut records = Vec::new();
    for id in checkpoint::list_ids(repo)? {
        match checkpoint::load(repo, &id) {
            Ok(record) => records.push((id, record)),
            Err(e) => report.unreadable_checkpoints.push(format!(
                "{}: {e}",
                ObjectKind::Checkpoint.name(&id.to_string())
            )),
        }
    }
    records.sort_by(|a, b| checkpoint::catalogue_order((&a.0, &a.1), (&b.0, &b.1)));
    report.checkpoints_checked = records.len() as u64;
    if damaged.is_empty() {
        return Ok(report);
    }

    // New trees first: they are durable once the sink has finished.
    let (planned, _) = with_blob_sink(repo, 8, &Progress::default(), |sink| {
        let mut rewriter = TreeRewriter {
            sink,
            damaged,
            done: HashMap::new(),
        };
        let mut planned = Vec::new();
        for (old_id, record) in records {
            // An unreadable root leaves an empty tree, its whole content dropped.
            let (root_id, totals, paths) = match rewriter.rewrite(record.tree)? {
                Some(root) => (root.id, root.totals, rewriter.dropped_paths(&root)),
                None => {
                    let empty = rewriter.store(&Tree::default())?;
                    (empty, TreeTotals::default(), vec!["/".to_owned()])
                }
            };
            if paths.is_empty() {
                continue;
            }
            let short = old_id.short();
            let dropped: Vec<String> = paths.iter().map(|path| format!("{short}:{path}")).collect();
            planned.push(PlannedRecord {
                old_id,
                record: repaired_record(record, root_id, totals, dropped.len()),
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
        let new_id = checkpoint::save(repo, &record)?;
        checkpoint::remove(repo, &old_id)?;
        report.repaired.push(RepairedCheckpoint {
            old_id,
            new_id: (!repo.is_dry_run()).then_some(new_id),
            dropped,
        });
    }
    Ok(report)
}

/// `record` pointing at its rewritten root `root_id`, tagged, with statistics recounted
/// (`dropped` paths were left out).
fn repaired_record(
    mut record: Checkpoint,
    root_id: TreeId,
    totals: TreeTotals,
    dropped: usize,
) -> Checkpoint {
    record.tree = root_id;
    if let Some(entry) = &mut record.root {
        entry.kind = EntryKind::Dir(root_id);
    }
    if !record.tags.iter().any(|tag| tag == REPAIRED_TAG) {
        record.tags.push(REPAIRED_TAG.into());
    }
    record.stats.files = totals.files;
    record.stats.dirs = totals.dirs;
    record.stats.bytes = totals.bytes;
    record.stats.errors += dropped as u64;
    record
}

/// A pack `packs` found damaged or missing.
#[derive(Debug, Clone, Serialize)]
pub struct RepairedPack {
    /// The object's name under `data/`.
    pub name: String,
    pub reason: String,
    /// Readable blobs copied into new packs.
    pub blobs_kept: u64,
    /// Blobs dropped from the index: unreadable, or in a missing pack.
    pub blobs_dropped: u64,
}

/// What `packs` did (or, in a dry run, would do).
#[derive(Debug, Default, Serialize)]
pub struct PackRepairReport {
    pub dry_run: bool,
    pub packs_read: u64,
    pub damaged_packs: Vec<RepairedPack>,
    pub blobs_kept: u64,
    pub blobs_dropped: u64,
    pub index_files_written: u64,
    pub index_files_deleted: u64,
}

/// Reads every indexed pack of `repo` (which the caller has not locked) whole; each pack whose
/// bytes no longer match its id has its readable blobs copied into new packs and is then
/// deleted, and the blobs it held that do not read back, or that a missing pack held, are
/// dropped from the index. The order is prune's: new packs and their index files, one fresh
/// set of index files, the old index files, and last the damaged packs.
pub fn packs(repo: &Repository) -> Result<PackRepairReport> {
    let lock = lock::acquire(repo, true, "repair")?;
    let mut report = PackRepairReport {
        dry_run: repo.is_dry_run(),
        ..PackRepairReport::default()
    };
    let old_index_files = index_files(repo)?;
    let listings = merge_listings(old_index_files.iter().flat_map(|(_, listed)| listed))?;
    let present: HashMap<PackId, u64> = repo
        .backend()
        .list(ObjectKind::Pack.prefix())?
        .into_iter()
        .filter_map(|object| Some((pack_id_of_object(&object.name)?, object.size)))
        .collect();
    let mut intact: IndexedPacks = Vec::new();
    let mut replaced: Vec<PackId> = Vec::new();
    let mut kept: HashSet<BlobId> = HashSet::new();
    with_blob_sink(repo, 8, &Progress::default(), |sink| {
        // Blobs that shared a frame share one again, with the others rescued beside them.
        let mut frame = sink.shared_frame(BlobKind::Data);
        for (pack, entries) in listings {
            let name = pack_object_name(&pack);
            // Absent from the listing is asked again before the pack's blobs are dropped: a
            // listing that came back short must not cost them.
            if !present.contains_key(&pack) && !repo.backend().exists(&name)? {
                report.damaged_packs.push(RepairedPack {
                    name,
                    reason: "missing".into(),
                    blobs_kept: 0,
                    blobs_dropped: entries.len() as u64,
                });
                continue;
            }
            let bytes = repo.backend().get(&name)?;
            report.packs_read += 1;
            if blake3::hash(&bytes).as_bytes() == &pack.0 {
                intact.push((pack, entries));
                continue;
            }
            let mut repaired = RepairedPack {
                name,
                reason: "its content does not match its id".into(),
                blobs_kept: 0,
                blobs_dropped: 0,
            };
            for entry in &entries {
                // A blob two damaged packs hold is rescued once: a second copy would lie in a
                // new pack no index lists it in.
                if !kept.contains(&entry.id)
                    && sink.copy_stored(&pack, &bytes, entry, &mut frame)?.is_err()
                {
                    repaired.blobs_dropped += 1;
                    continue;
                }
                kept.insert(entry.id);
                repaired.blobs_kept += 1;
            }
            report.damaged_packs.push(repaired);
            replaced.push(pack);
        }
        frame.finish()
    })?;
    report.blobs_kept = report.damaged_packs.iter().map(|p| p.blobs_kept).sum();
    report.blobs_dropped = report.damaged_packs.iter().map(|p| p.blobs_dropped).sum();
    if report.damaged_packs.is_empty() {
        return Ok(report);
    }
    // Where the kept blobs landed: the packs just written.
    let new_packs = packs_holding(repo, &kept)?;
    // A new pack may have the very id of a damaged one (the same blobs in the same order,
    // unencrypted, when only its header was hurt): written over it, it stays.
    replaced.retain(|pack| !new_packs.contains_key(pack));
    lock.ensure_held()?;
    intact.extend(new_packs);
    let old_names: Vec<String> = old_index_files.into_iter().map(|(name, _)| name).collect();
    let written = commit_pack_rewrite(repo, &intact, &old_names, &replaced)?;
    report.index_files_written = written.written;
    report.index_files_deleted = written.deleted;
    Ok(report)
}
