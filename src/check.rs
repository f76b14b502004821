//! `cairn check`: proves a repository sound, or says exactly what is damaged. It reads the
//! repository alone — index files, pack listing, checkpoints and trees — never the local
//! cache. Every checkpoint's trees are walked (each distinct tree once) and every blob they
//! reference must be indexed in a pack that exists and is long enough. With `read_data`,
//! every pack is read whole: its id must match its bytes, and every blob must decrypt and
//! hash to its id, to exactly the raw length its pack entry records. Each damaged blob is
//! reported with its pack and the paths it affects. A file whose chunks do not add up to its
//! recorded size, or whose chunk list gives a chunk another length than its blob holds, is
//! reported as a problem with its path. Trees are walked with an explicit stack, so a
//! repository nested however deep is checked without exhausting the call stack (invariant 7).

use crate::checkpoint;
use crate::error::Result;
use crate::id::{BlobId, CheckpointId, PackId, TreeId};
use crate::repo::Repository;
use crate::repo::index::{BlobLocation, read_index_file};
use crate::repo::objects::ObjectKind;
use crate::repo::pack::{PackEntry, pack_id_of_object, pack_object_name, read_header};
use crate::tree::{ChunkRef, Content, EntryKind, Tree, check_file_size, decode_chunk_list};
use std::collections::{BTreeMap, HashMap, HashSet};

/// At most this many affected paths are listed per damaged blob.
const PATHS_PER_PROBLEM: usize = 10;

/// Inputs of a check.
#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    /// Read, decrypt and verify every blob of every pack.
    pub read_data: bool,
    /// Walk only this checkpoint (a copy verified where it landed); every one otherwise.
    pub only: Option<CheckpointId>,
}

/// A blob that cannot be read back.
#[derive(Debug, Clone)]
pub struct DamagedBlob {
    pub blob: BlobId,
    pub pack: Option<PackId>,
    pub reason: String,
    /// `<checkpoint short id>:/<path>` of entries that need this blob (capped).
    pub paths: Vec<String>,
    pub affected_paths: u64,
}

/// A checkpoint that needs a damaged blob, with the source paths it was made of (what a
/// backup must read again to heal it).
#[derive(Debug, Clone)]
pub struct AffectedCheckpoint {
    pub id: CheckpointId,
    pub paths: Vec<String>,
}

/// What a check found.
#[derive(Debug, Default)]
pub struct CheckReport {
    pub checkpoints: u64,
    pub trees: u64,
    pub packs: u64,
    pub blobs_read: u64,
    /// Packs whose bytes no longer hash to their id (`read_data` only).
    pub mismatched_packs: u64,
    /// Packs no index file lists (a stopped run's, or a stopped rewrite's): nothing reads
    /// them, so they are not read; the next writing run takes them back when they are whole
    /// and prune deletes the rest (`read_data` only).
    pub unlisted_packs: u64,
    pub damaged: Vec<DamagedBlob>,
    /// Every checkpoint that needs a damaged blob, in catalogue order.
    pub affected_checkpoints: Vec<AffectedCheckpoint>,
    /// Problems not tied to one blob: unreadable index files or checkpoints, bad packs.
    pub problems: Vec<String>,
}

impl CheckReport {
    pub fn is_sound(&self) -> bool {
        self.damaged.is_empty() && self.problems.is_empty()
    }
}

struct Checker<'a> {
    repo: &'a Repository,
    /// Every indexed blob and where it is.
    index: HashMap<BlobId, (PackId, PackEntry)>,
    /// Size of every pack in the repository.
    packs: HashMap<PackId, u64>,
    /// Blobs known to be unreadable, with why.
    bad: HashMap<BlobId, (Option<PackId>, String)>,
    affected: BTreeMap<BlobId, (u64, Vec<String>)>,
    trees_seen: HashSet<BlobId>,
    /// Trees that hold a damaged entry themselves.
    damaged_within: HashSet<BlobId>,
    /// The trees that hold each subtree as an entry: damage below a tree shared by several
    /// checkpoints is walked once and attributed to all of them through these.
    holders: HashMap<BlobId, Vec<BlobId>>,
    report: CheckReport,
}

impl Checker<'_> {
    fn load_index(&mut self) -> Result<()> {
        for object in self.repo.backend().list(ObjectKind::Index.prefix())? {
            match read_index_file(self.repo.backend(), self.repo.codec(), &object.name) {
                Ok(packs) => {
                    for (pack, entries) in packs {
                        for entry in entries {
                            self.index.insert(entry.id, (pack, entry));
                        }
                    }
                }
                Err(e) => self.report.problems.push(format!("{e}")),
            }
        }
        for object in self.repo.backend().list(ObjectKind::Pack.prefix())? {
            match pack_id_of_object(&object.name) {
                Some(id) => {
                    self.packs.insert(id, object.size);
                }
                None => self
                    .report
                    .problems
                    .push(format!("unexpected object {}", object.name)),
            }
        }
        self.report.packs = self.packs.len() as u64;
        for (blob, (pack, entry)) in &self.index {
            match self.packs.get(pack) {
                None => {
                    self.bad
                        .insert(*blob, (Some(*pack), "its pack is missing".into()));
                }
                Some(size) if entry.offset as u64 + entry.length as u64 > *size => {
                    self.bad.insert(
                        *blob,
                        (
                            Some(*pack),
                            format!("its pack is truncated to {size} bytes"),
                        ),
                    );
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    fn read_all_data(&mut self) -> Result<()> {
        let mut by_pack: HashMap<PackId, Vec<PackEntry>> = HashMap::new();
        for (pack, entry) in self.index.values() {
            by_pack.entry(*pack).or_default().push(*entry);
        }
        let codec = self.repo.codec();
        for pack in self.packs.keys().copied().collect::<Vec<_>>() {
            if !by_pack.contains_key(&pack) {
                self.report.unlisted_packs += 1;
                continue;
            }
            let name = pack_object_name(&pack);
            let bytes = match self.repo.backend().get(&name) {
                Ok(bytes) => bytes,
                Err(e) => {
                    self.report.problems.push(format!("pack {pack}: {e}"));
                    continue;
                }
            };
            if blake3::hash(&bytes).as_bytes() != &pack.0 {
                self.report.mismatched_packs += 1;
                self.report.problems.push(format!(
                    "pack {pack}: content does not match its id (damaged)"
                ));
            }
            if let Err(e) = read_header(&bytes, codec, &|| format!("pack {pack}")) {
                self.report.problems.push(format!("{e}"));
            }
            for entry in by_pack.remove(&pack).unwrap_or_default() {
                self.report.blobs_read += 1;
                let start = entry.offset as usize;
                let location = BlobLocation { pack, entry };
                // Through the repository, which decodes a frame once for all its blobs.
                let verdict = match bytes.get(start..start + entry.length as usize) {
                    None => Err("lies past the end of the pack".to_owned()),
                    Some(stored) => self
                        .repo
                        .decode_blob_at(&location, &entry.id, stored)
                        .map(drop)
                        .map_err(|e| format!("{e}")),
                };
                if let Err(reason) = verdict {
                    self.bad.insert(entry.id, (Some(pack), reason));
                }
            }
        }
        Ok(())
    }

    /// Whether `blob`, an entry of tree `holder` (`None` for a checkpoint's root), can be
    /// read; records `path` and the holder as affected when it cannot.
    fn need(&mut self, blob: &BlobId, path: &str, holder: Option<BlobId>) -> bool {
        if !self.index.contains_key(blob) {
            self.bad
                .entry(*blob)
                .or_insert((None, "not listed in any index file".into()));
        }
        if !self.bad.contains_key(blob) {
            return true;
        }
        if let Some(holder) = holder {
            self.damaged_within.insert(holder);
        }
        let (count, paths) = self.affected.entry(*blob).or_default();
        *count += 1;
        if paths.len() < PATHS_PER_PROBLEM {
            paths.push(path.to_owned());
        }
        false
    }

    fn read_verified(&self, blob: &BlobId) -> Result<Vec<u8>> {
        let (pack, entry) = self.index[blob];
        self.repo.read_blob_at(&BlobLocation { pack, entry }, blob)
    }

    /// Reads and decodes a tree or chunk list blob; when that fails the blob is recorded as
    /// damaged, affecting `path`.
    fn read_metadata_blob<T>(
        &mut self,
        id: BlobId,
        path: &str,
        holder: Option<BlobId>,
        decode: impl FnOnce(&[u8]) -> Result<T>,
    ) -> Option<T> {
        if !self.need(&id, path, holder) {
            return None;
        }
        match self.read_verified(&id).and_then(|bytes| decode(&bytes)) {
            Ok(value) => Some(value),
            Err(e) => {
                let pack = self.index.get(&id).map(|(p, _)| *p);
                self.bad.insert(id, (pack, format!("{e}")));
                self.need(&id, path, holder);
                None
            }
        }
    }

    /// Walks the trees below `root`, each distinct tree once. The walk keeps its own stack of
    /// trees to visit, so a tree nested however deep costs heap, never call stack.
    fn walk_trees(&mut self, root: TreeId, root_path: String) {
        // Trees are checked as the blobs they are stored as.
        let mut pending = vec![(root.blob(), root_path, None)];
        while let Some((tree_id, path, holder)) = pending.pop() {
            if let Some(holder) = holder {
                self.holders.entry(tree_id).or_default().push(holder);
            }
            if !self.trees_seen.insert(tree_id) {
                self.need(&tree_id, &path, holder);
                continue;
            }
            let decode = |bytes: &[u8]| Tree::decode(bytes, &|| format!("tree {tree_id}"));
            let Some(tree) = self.read_metadata_blob(tree_id, &path, holder, decode) else {
                continue;
            };
            self.report.trees += 1;
            let mut subtrees = Vec::new();
            for entry in tree.entries {
                let separator = if path.ends_with('/') { "" } else { "/" };
                let child = format!("{path}{separator}{}", entry.name_lossy());
                match entry.kind {
                    EntryKind::Dir(id) => subtrees.push((id.blob(), child, Some(tree_id))),
                    EntryKind::File(Content::Chunks(chunks)) => {
                        self.check_file(&chunks, entry.size, &child, tree_id)
                    }
                    EntryKind::File(Content::ChunkList(list)) => {
                        let decode = |bytes: &[u8]| decode_chunk_list(bytes, &list);
                        let holder = Some(tree_id);
                        if let Some(chunks) = self.read_metadata_blob(list, &child, holder, decode)
                        {
                            self.check_file(&chunks, entry.size, &child, tree_id);
                        }
                    }
                    _ => {}
                }
            }
            // Reversed, so subdirectories are visited in name order.
            pending.extend(subtrees.into_iter().rev());
        }
    }

    /// Every tree with damage in or below it: the trees holding a damaged entry and, walking
    /// up through the holders with an explicit stack, every tree above them.
    fn trees_with_damage(&self) -> HashSet<BlobId> {
        let mut marked = HashSet::new();
        let mut pending: Vec<BlobId> = self.damaged_within.iter().copied().collect();
        while let Some(tree) = pending.pop() {
            if marked.insert(tree) {
                pending.extend(self.holders.get(&tree).into_iter().flatten());
            }
        }
        marked
    }

    /// Checks that every chunk of the file at `path` is readable and holds the length the
    /// file gives it, and that the lengths add up to the file's recorded `size`; `holder` is
    /// the tree that lists the file.
    fn check_file(&mut self, chunks: &[ChunkRef], size: u64, path: &str, holder: BlobId) {
        if let Err(problem) = check_file_size(chunks, size) {
            self.report.problems.push(format!("{path}: {problem}"));
        }
        for chunk in chunks {
            if !self.need(&chunk.id, path, Some(holder)) {
                continue;
            }
            if let Some((_, entry)) = self.index.get(&chunk.id)
                && entry.raw_length != chunk.length
            {
                self.report.problems.push(format!(
                    "{path}: blob {} holds {} bytes where the file's chunk list says {}",
                    chunk.id, entry.raw_length, chunk.length
                ));
            }
        }
    }
}

/// Checks `repo`; the report says what, if anything, is damaged.
pub fn run(repo: &Repository, options: &CheckOptions) -> Result<CheckReport> {
    // Shared: a prune deleting packs under a check would look like damage.
    let _lock = crate::repo::lock::acquire_for_reading(repo, "check")?;
    run_locked(repo, options)
}

/// A check within a lock the caller holds (a repair's exclusive one).
pub(crate) fn run_locked(repo: &Repository, options: &CheckOptions) -> Result<CheckReport> {
    let mut checker = Checker {
        repo,
        index: HashMap::new(),
        packs: HashMap::new(),
        bad: HashMap::new(),
        affected: BTreeMap::new(),
        trees_seen: HashSet::new(),
        damaged_within: HashSet::new(),
        holders: HashMap::new(),
        report: CheckReport::default(),
    };
    checker.load_index()?;
    if options.read_data {
        checker.read_all_data()?;
    }
    let mut records = Vec::new();
    let ids = match options.only {
        Some(id) => vec![id],
        None => checkpoint::list_ids(repo)?,
    };
    for id in ids {
        match checkpoint::load(repo, &id) {
            Ok(record) => records.push((id, record)),
            Err(e) => checker
                .report
                .problems
                .push(format!("checkpoint {id}: {e}")),
        }
    }
    records.sort_by(|a, b| checkpoint::catalogue_order((&a.0, &a.1), (&b.0, &b.1)));
    for (id, record) in &records {
        checker.report.checkpoints += 1;
        checker.walk_trees(record.tree, format!("{}:/", id.short()));
    }
    let with_damage = checker.trees_with_damage();
    checker.report.affected_checkpoints = records
        .into_iter()
        .filter(|(_, record)| {
            let root = record.tree.blob();
            with_damage.contains(&root) || checker.bad.contains_key(&root)
        })
        .map(|(id, record)| AffectedCheckpoint {
            id,
            paths: record.paths,
        })
        .collect();
    let Checker {
        bad,
        affected,
        mut report,
        ..
    } = checker;
    for (blob, (pack, reason)) in bad {
        let (affected_paths, paths) = affected.get(&blob).cloned().unwrap_or_default();
        report.damaged.push(DamagedBlob {
            blob,
            pack,
            reason,
            paths,
            affected_paths,
        });
    }
    report.damaged.sort_by_key(|d| (d.pack, d.blob));
    Ok(report)
}
