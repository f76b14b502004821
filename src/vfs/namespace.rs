//! The namespace of the view: inodes and their names, the catalogue of checkpoints (listed
//! again every few seconds), the synthetic directories (`checkpoints/`, `tags/`, `latest`,
//! `history/`), each node's attributes, listings and lookups.

use super::Vfs;
use super::{
    Attr, CATALOGUE_TTL, FileKind, Ino, ListedEntry, ROOT_INO, VfsError, VfsResult, cached_tree,
};
use crate::catalogue::Summary;
use crate::error::Error;
use crate::history::{PathHistory, versions};
use crate::id::{CheckpointId, TreeId};
use crate::tree::{Content, Entry, EntryKind, Tree, Xattr};
use quick_cache::sync::Cache;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// The components of a path below `history/`.
type HistoryPath = Arc<Vec<Vec<u8>>>;

/// What a node stands for.
#[derive(Debug, Clone)]
pub(super) enum NodeKind {
    Root,
    CheckpointsDir,
    TagsDir,
    Tag(String),
    /// A symlink with a computed target (`latest`, tag links).
    Link(Vec<u8>),
    /// A directory under `history/`, named by its path components.
    History(HistoryPath),
    /// `checkpoints/<name>`: a checkpoint's root directory, known by its summary until its
    /// contents are asked for (a listing of ten thousand reads no record).
    Checkpoint(Arc<Summary>),
    /// An entry of a checkpoint's tree (or a version in `history/`).
    Entry {
        entry: Arc<Entry>,
        checkpoint: CheckpointId,
    },
}

impl NodeKind {
    /// What hard-linked files of one checkpoint share: the checkpoint and the source's
    /// device and inode numbers.
    fn hardlink_key(&self) -> Option<(CheckpointId, u64, u64)> {
        match self {
            NodeKind::Entry { entry, checkpoint } => entry
                .hardlink_key()
                .map(|(dev, ino)| (*checkpoint, dev, ino)),
            _ => None,
        }
    }
}

/// One inode: what it is, the names it is known by, and how many lookups the kernel holds.
/// Inode numbers are never reused, so a cache keyed by one cannot serve another node.
pub(super) struct Slot {
    pub(super) kind: NodeKind,
    pub(super) names: Vec<(Ino, Vec<u8>)>,
    lookups: u64,
    /// Whether a read of this file was answered: the kernel then keeps its bytes cached for
    /// as long as it keeps the inode, so prefetching them again would be wasted work.
    pub(super) was_read: AtomicBool,
    /// The directory whose reading order this file was last listed in, and its place there.
    pub(super) place: Option<(Ino, usize)>,
}

impl Slot {
    pub(super) fn new(kind: NodeKind) -> Self {
        Slot {
            kind,
            names: Vec::new(),
            lookups: 0,
            was_read: AtomicBool::new(false),
            place: None,
        }
    }
}

/// Every checkpoint, oldest first, shared by snapshot.
type CatalogueEntries = Arc<Vec<Arc<Summary>>>;

/// The checkpoints as last listed.
pub(super) struct Catalogue {
    /// Replaced whole on every change, so a reader can keep a consistent snapshot.
    pub(super) checkpoints: CatalogueEntries,
    pub(super) names: Vec<String>,
    pub(super) listed: Instant,
    pub(super) generation: u64,
}

#[derive(Clone)]
pub(super) struct HistoryWeight;

/// Path histories with the catalogue generation they were computed for, bounded by the
/// bytes they hold.
pub(super) type HistoryCache = Cache<HistoryPath, (u64, Arc<PathHistory>), HistoryWeight>;

impl quick_cache::Weighter<HistoryPath, (u64, Arc<PathHistory>)> for HistoryWeight {
    fn weight(&self, path: &HistoryPath, value: &(u64, Arc<PathHistory>)) -> u64 {
        let path_bytes: usize = path.iter().map(|c| c.len() + 24).sum();
        // Checkpoints in a run of one version share its entry: counted once.
        let mut previous = std::ptr::null();
        let entry_bytes: usize = value
            .1
            .iter()
            .flatten()
            .filter(|e| {
                !std::ptr::eq(
                    std::mem::replace(&mut previous, Arc::as_ptr(e)),
                    Arc::as_ptr(e),
                )
            })
            .map(|e| std::mem::size_of::<Entry>() + entry_heap_bytes(e))
            .sum();
        let slots = value.1.len() * std::mem::size_of::<Option<Entry>>();
        (path_bytes + entry_bytes + slots) as u64
    }
}

/// The bytes `entry` holds outside itself.
fn entry_heap_bytes(entry: &Entry) -> usize {
    let kind = match &entry.kind {
        EntryKind::File(Content::Chunks(chunks)) => std::mem::size_of_val(chunks.as_slice()),
        EntryKind::Symlink(target) => target.len(),
        _ => 0,
    };
    let xattrs: usize = entry
        .xattrs
        .iter()
        .map(|x| std::mem::size_of::<Xattr>() + x.name.len() + x.value.len())
        .sum();
    let owners =
        entry.user.as_ref().map_or(0, String::len) + entry.group.as_ref().map_or(0, String::len);
    entry.name.len() + kind + xattrs + owners
}

/// `2026-11-23T18:30:22.869866970Z` → `2026-11-23T183022Z`.
fn compact_time(rfc3339: &str) -> String {
    let (date, rest) = rfc3339.split_once('T').unwrap_or((rfc3339, ""));
    let clock: String = rest.chars().take(8).filter(|c| *c != ':').collect();
    format!("{date}T{clock}Z")
}

fn checkpoint_dir_name(summary: &Summary) -> String {
    format!("{}_{}", compact_time(&summary.time), summary.id.short())
}

fn synthetic_dir(ino: Ino, mtime_ns: i128) -> Attr {
    Attr {
        ino,
        kind: FileKind::Directory,
        size: 0,
        perm: 0o555,
        nlink: 1,
        uid: 0,
        gid: 0,
        mtime_ns,
        ctime_ns: mtime_ns,
        rdev: 0,
        allocated: 0,
    }
}

impl Vfs {
    /// Re-lists the checkpoints when the last listing is older than `CATALOGUE_TTL`.
    pub(super) fn refresh_catalogue(&self) -> VfsResult<()> {
        if self
            .catalogue
            .read()
            .expect("not poisoned")
            .listed
            .elapsed()
            < CATALOGUE_TTL
        {
            return Ok(());
        }
        let synced = self.repo.catalogue().sync(&self.repo)?;
        for unreadable in &synced.unreadable {
            let (id, e) = (unreadable.id, &unreadable.error);
            tracing::warn!("checkpoint {id} is unreadable: {e}");
        }
        let mut all = synced.checkpoints;
        all.retain(|summary| self.filter.matches_label(&summary.label));
        let mut catalogue = self.catalogue.write().expect("not poisoned");
        let changed = all.len() != catalogue.checkpoints.len()
            || all
                .iter()
                .zip(catalogue.checkpoints.iter())
                .any(|(a, b)| a.id != b.id);
        if changed {
            catalogue.generation += 1;
            catalogue.names = all
                .iter()
                .map(|summary| checkpoint_dir_name(summary))
                .collect();
            catalogue.checkpoints = Arc::new(all);
        }
        catalogue.listed = Instant::now();
        Ok(())
    }

    pub(super) fn node(&self, ino: Ino) -> VfsResult<NodeKind> {
        let nodes = self.nodes.read().expect("not poisoned");
        nodes
            .get(&ino)
            .map(|slot| slot.kind.clone())
            .ok_or(VfsError::NotFound)
    }

    /// The inode of `name` in `parent`. `kind`, what the name stands for now, is stored for
    /// an existing inode too, which keeps catalogue views such as `latest` current; without
    /// it only an existing inode is found. `hold` counts a kernel lookup. Hard-linked files of
    /// one checkpoint share an inode.
    fn intern(&self, parent: Ino, name: &[u8], kind: Option<NodeKind>, hold: bool) -> Option<Ino> {
        let key = (parent, name.to_vec());
        let mut children = self.children.write().expect("not poisoned");
        let mut hardlinks = self.hardlinks.lock().expect("not poisoned");
        let mut nodes = self.nodes.write().expect("not poisoned");
        let ino = match children.get(&key) {
            Some(&ino) => {
                if let (Some(kind), Some(slot)) = (kind, nodes.get_mut(&ino)) {
                    slot.kind = kind;
                }
                ino
            }
            None => {
                let kind = kind?;
                let link_key = kind.hardlink_key();
                let ino = match link_key.as_ref().and_then(|k| hardlinks.get(k)) {
                    Some(&ino) => ino,
                    None => {
                        let ino = self.next_ino.fetch_add(1, Ordering::Relaxed);
                        nodes.insert(ino, Slot::new(kind));
                        if let Some(k) = link_key {
                            hardlinks.insert(k, ino);
                        }
                        ino
                    }
                };
                nodes
                    .get_mut(&ino)
                    .expect("inserted above")
                    .names
                    .push(key.clone());
                children.insert(key, ino);
                ino
            }
        };
        if hold {
            nodes.get_mut(&ino).expect("present above").lookups += 1;
        }
        Some(ino)
    }

    /// Drops `count` kernel lookups of `ino` and forgets the inode when none are left, so
    /// memory follows what the kernel holds, not everything ever browsed.
    pub fn forget(&self, ino: Ino, count: u64) {
        if ino == ROOT_INO {
            return;
        }
        let mut children = self.children.write().expect("not poisoned");
        let mut hardlinks = self.hardlinks.lock().expect("not poisoned");
        let mut nodes = self.nodes.write().expect("not poisoned");
        let Some(slot) = nodes.get_mut(&ino) else {
            return;
        };
        slot.lookups = slot.lookups.saturating_sub(count);
        if slot.lookups > 0 {
            return;
        }
        let slot = nodes.remove(&ino).expect("present above");
        for key in slot.names {
            children.remove(&key);
        }
        if let Some(key) = slot.kind.hardlink_key() {
            hardlinks.remove(&key);
        }
    }

    pub(super) fn tree(&self, id: &TreeId) -> crate::error::Result<Arc<Tree>> {
        cached_tree(&self.trees, &self.repo, id)
    }

    /// The root entry of the checkpoint `summary` stands for.
    pub(super) fn checkpoint_root(&self, summary: &Summary) -> VfsResult<Arc<Entry>> {
        Ok(self.roots.get_or_insert_with(&summary.id, || {
            let record = self.repo.catalogue().record(&self.repo, summary)?;
            Ok::<_, Error>(Arc::new(record.root_entry()))
        })?)
    }

    /// The node a checkpoint's contents are read through: its root entry.
    fn root_node(&self, summary: &Summary) -> VfsResult<NodeKind> {
        Ok(NodeKind::Entry {
            entry: self.checkpoint_root(summary)?,
            checkpoint: summary.id,
        })
    }

    /// The catalogue's generation and checkpoints, as one consistent snapshot.
    fn catalogue_snapshot(&self) -> (u64, CatalogueEntries) {
        let catalogue = self.catalogue.read().expect("not poisoned");
        (catalogue.generation, catalogue.checkpoints.clone())
    }

    /// The history of a `history/` path over the catalogue snapshot `checkpoints` of
    /// `generation`.
    pub(super) fn history(
        &self,
        path: &HistoryPath,
        generation: u64,
        checkpoints: &[Arc<Summary>],
    ) -> VfsResult<Arc<PathHistory>> {
        if let Some((g, history)) = self.histories.get(path)
            && g == generation
        {
            return Ok(history);
        }
        let history = if path.is_empty() {
            self.repo
                .catalogue()
                .records(&self.repo, checkpoints)?
                .iter()
                .map(|r| Some(Arc::new(r.root_entry())))
                .collect()
        } else {
            self.repo
                .catalogue()
                .path_history(&self.repo, checkpoints, path, &|id| self.tree(id))?
        };
        let history = Arc::new(history);
        self.histories
            .insert(path.clone(), (generation, history.clone()));
        Ok(history)
    }

    /// Every child of a directory node: name and what it is.
    pub(super) fn list(&self, node: &NodeKind) -> VfsResult<Vec<(Vec<u8>, NodeKind)>> {
        let catalogue_entries = || -> VfsResult<_> {
            self.refresh_catalogue()?;
            let catalogue = self.catalogue.read().expect("not poisoned");
            Ok(catalogue
                .checkpoints
                .iter()
                .cloned()
                .zip(catalogue.names.clone())
                .collect::<Vec<_>>())
        };
        Ok(match node {
            NodeKind::Root => {
                let mut out = vec![
                    (b"checkpoints".to_vec(), NodeKind::CheckpointsDir),
                    (b"history".to_vec(), NodeKind::History(Arc::new(Vec::new()))),
                    (b"tags".to_vec(), NodeKind::TagsDir),
                ];
                self.refresh_catalogue()?;
                let newest = self
                    .catalogue
                    .read()
                    .expect("not poisoned")
                    .names
                    .last()
                    .cloned();
                if let Some(name) = newest {
                    out.push((
                        b"latest".to_vec(),
                        NodeKind::Link(format!("checkpoints/{name}").into_bytes()),
                    ));
                }
                out
            }
            NodeKind::CheckpointsDir => catalogue_entries()?
                .into_iter()
                .map(|(summary, name)| (name.into_bytes(), NodeKind::Checkpoint(summary)))
                .collect(),
            NodeKind::TagsDir => {
                let tags: BTreeSet<String> = catalogue_entries()?
                    .into_iter()
                    .flat_map(|(summary, _)| summary.label.tags.clone())
                    .collect();
                tags.into_iter()
                    .map(|t| (t.clone().into_bytes(), NodeKind::Tag(t)))
                    .collect()
            }
            NodeKind::Tag(tag) => catalogue_entries()?
                .into_iter()
                .filter(|(summary, _)| summary.label.tags.contains(tag))
                .map(|(_, name)| {
                    let target = format!("../../checkpoints/{name}").into_bytes();
                    (name.into_bytes(), NodeKind::Link(target))
                })
                .collect(),
            NodeKind::History(path) => self.list_history(path)?,
            NodeKind::Entry { entry, checkpoint } => {
                let EntryKind::Dir(tree) = &entry.kind else {
                    return Err(VfsError::NotDirectory);
                };
                self.tree(tree)?
                    .entries
                    .iter()
                    .map(|child| {
                        let kind = NodeKind::Entry {
                            entry: Arc::new(child.clone()),
                            checkpoint: *checkpoint,
                        };
                        (child.name.clone(), kind)
                    })
                    .collect()
            }
            NodeKind::Link(_) => return Err(VfsError::NotDirectory),
            NodeKind::Checkpoint(summary) => return self.list(&self.root_node(summary)?),
        })
    }

    /// The children of a `history/` directory: the union of the names below it in every
    /// checkpoint where it is a directory, and one version file per distinct non-directory
    /// version.
    fn list_history(&self, path: &HistoryPath) -> VfsResult<Vec<(Vec<u8>, NodeKind)>> {
        self.refresh_catalogue()?;
        let (generation, checkpoints) = self.catalogue_snapshot();
        let history = self.history(path, generation, &checkpoints)?;
        let mut names = BTreeSet::new();
        let mut seen_trees = std::collections::HashSet::new();
        for entry in history.iter().flatten() {
            if let EntryKind::Dir(tree) = &entry.kind
                && seen_trees.insert(*tree)
            {
                names.extend(self.tree(tree)?.entries.iter().map(|e| e.name.clone()));
            }
        }
        let mut out: Vec<(Vec<u8>, NodeKind)> = names
            .into_iter()
            .map(|name| {
                let mut child = path.as_ref().clone();
                child.push(name.clone());
                (name, NodeKind::History(Arc::new(child)))
            })
            .collect();
        if path.is_empty() {
            return Ok(out);
        }
        for version in versions(&history) {
            let Some(entry) = version.entry.filter(|e| !e.is_dir()) else {
                continue;
            };
            let first = version.checkpoints[0];
            let Summary { id, time, .. } = checkpoints[first].as_ref();
            let extension = std::path::Path::new(std::ffi::OsStr::new(&*entry.name_lossy()))
                .extension()
                .map(|e| format!(".{}", e.to_string_lossy()))
                .unwrap_or_default();
            let name = format!("{}_{}{extension}", compact_time(time), id.short()).into_bytes();
            let mut entry = entry;
            entry.name = name.clone();
            out.push((
                name,
                NodeKind::Entry {
                    entry: Arc::new(entry),
                    checkpoint: *id,
                },
            ));
        }
        Ok(out)
    }

    fn attr_of(&self, ino: Ino, node: &NodeKind) -> Attr {
        let newest = || {
            let catalogue = self.catalogue.read().expect("not poisoned");
            catalogue.checkpoints.last().map_or(0, |summary| {
                crate::timestamp::parse_rfc3339(&summary.time).unwrap_or(0)
            })
        };
        match node {
            NodeKind::Root
            | NodeKind::CheckpointsDir
            | NodeKind::TagsDir
            | NodeKind::Tag(_)
            | NodeKind::History(_) => synthetic_dir(ino, newest()),
            NodeKind::Link(target) => Attr {
                kind: FileKind::Symlink,
                size: target.len() as u64,
                perm: 0o777,
                ..synthetic_dir(ino, newest())
            },
            NodeKind::Checkpoint(summary) => {
                let root = &summary.root;
                Attr {
                    size: root.size,
                    perm: (root.mode & 0o7777) as u16,
                    uid: root.uid,
                    gid: root.gid,
                    ctime_ns: root.ctime_ns,
                    allocated: root.size,
                    ..synthetic_dir(ino, root.mtime_ns)
                }
            }
            NodeKind::Entry { entry, .. } => {
                let (kind, rdev) = match &entry.kind {
                    EntryKind::File(_) => (FileKind::RegularFile, 0),
                    EntryKind::Dir(_) => (FileKind::Directory, 0),
                    EntryKind::Symlink(_) => (FileKind::Symlink, 0),
                    EntryKind::Fifo => (FileKind::NamedPipe, 0),
                    EntryKind::CharDevice(rdev) => (FileKind::CharDevice, *rdev),
                    EntryKind::BlockDevice(rdev) => (FileKind::BlockDevice, *rdev),
                };
                let size = match &entry.kind {
                    EntryKind::Symlink(target) => target.len() as u64,
                    _ => entry.size,
                };
                let allocated = match &entry.kind {
                    EntryKind::File(_) => self.allocated_bytes(ino, entry),
                    _ => size,
                };
                Attr {
                    ino,
                    kind,
                    size,
                    perm: (entry.mode & 0o7777) as u16,
                    nlink: if kind == FileKind::RegularFile {
                        entry.links.max(1) as u32
                    } else {
                        1
                    },
                    uid: entry.uid,
                    gid: entry.gid,
                    mtime_ns: entry.mtime_ns,
                    ctime_ns: entry.ctime_ns,
                    rdev,
                    allocated,
                }
            }
        }
    }

    /// The child `name` of a directory node, if it has one.
    fn find_child(&self, node: &NodeKind, name: &[u8]) -> VfsResult<Option<NodeKind>> {
        if let NodeKind::Checkpoint(summary) = node {
            return self.find_child(&self.root_node(summary)?, name);
        }
        if let NodeKind::Entry { entry, checkpoint } = node
            && let EntryKind::Dir(tree) = &entry.kind
        {
            let child = self.tree(tree)?.get(name).cloned();
            return Ok(child.map(|child| NodeKind::Entry {
                entry: Arc::new(child),
                checkpoint: *checkpoint,
            }));
        }
        if let NodeKind::CheckpointsDir = node {
            // One lookup per entry of `ls -l`: find the name without building every node.
            self.refresh_catalogue()?;
            let catalogue = self.catalogue.read().expect("not poisoned");
            let name = String::from_utf8_lossy(name);
            let Some(found) = catalogue.names.iter().position(|n| *n == name) else {
                return Ok(None);
            };
            return Ok(Some(NodeKind::Checkpoint(
                catalogue.checkpoints[found].clone(),
            )));
        }
        if let NodeKind::History(path) = node {
            // A directory's child is found by its own (kept) history, not by listing the
            // union of the names in every version of the directory.
            self.refresh_catalogue()?;
            let (generation, checkpoints) = self.catalogue_snapshot();
            // The root is a directory in every checkpoint; its own history would read
            // every checkpoint's record.
            let a_directory = path.is_empty()
                || self
                    .history(path, generation, &checkpoints)?
                    .iter()
                    .flatten()
                    .any(|e| e.is_dir());
            if a_directory {
                let mut child = path.as_ref().clone();
                child.push(name.to_vec());
                let child = Arc::new(child);
                let child_history = self.history(&child, generation, &checkpoints)?;
                if child_history.iter().any(Option::is_some) {
                    return Ok(Some(NodeKind::History(child)));
                }
            }
        }
        Ok(self
            .list(node)?
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, kind)| kind))
    }

    /// Whether `ino` is checkpoint content (never changes), as opposed to a catalogue view.
    pub fn is_immutable(&self, ino: Ino) -> bool {
        matches!(
            self.node(ino),
            Ok(NodeKind::Entry { .. } | NodeKind::Checkpoint(_))
        )
    }

    /// The attributes of `ino`.
    pub fn getattr(&self, ino: Ino) -> VfsResult<Attr> {
        let node = self.node(ino)?;
        Ok(self.attr_of(ino, &node))
    }

    /// The child `name` of directory `parent`.
    pub fn lookup(&self, parent: Ino, name: &[u8]) -> VfsResult<Attr> {
        let node = self.node(parent)?;
        // Checkpoint content never changes, and a name under `history/` stays valid while the
        // checkpoints it came from exist; the other views (new checkpoints, tags, `latest`)
        // are listed anew.
        let stable = matches!(
            node,
            NodeKind::Entry { .. } | NodeKind::Checkpoint(_) | NodeKind::History(_)
        );
        if stable && let Some(ino) = self.intern(parent, name, None, true) {
            return self.getattr(ino);
        }
        let kind = self.find_child(&node, name)?.ok_or(VfsError::NotFound)?;
        let ino = self
            .intern(parent, name, Some(kind), true)
            .expect("a kind was given");
        self.getattr(ino)
    }

    /// The entries of directory `ino` (without `.` and `..`) with their attributes. Listing
    /// does not count as a lookup: `hold_listed` does, for the entries handed to the kernel.
    pub fn readdir(&self, ino: Ino) -> VfsResult<Vec<ListedEntry>> {
        let node = self.node(ino)?;
        let listing: Vec<(Ino, NodeKind, Vec<u8>)> = self
            .list(&node)?
            .into_iter()
            .map(|(name, kind)| {
                let child = self
                    .intern(ino, &name, Some(kind.clone()), false)
                    .expect("a kind was given");
                (child, kind, name)
            })
            .collect();
        self.start_reading_order(ino, &listing);
        Ok(listing
            .into_iter()
            .map(|(child, kind, name)| ListedEntry {
                attr: self.attr_of(child, &kind),
                name,
            })
            .collect())
    }

    /// Counts a kernel lookup of `name`, an entry of a listing of `parent` (READDIRPLUS
    /// hands out entries as if looked up). The inode is looked up anew if it was forgotten
    /// since the listing was made.
    pub fn hold_listed(&self, parent: Ino, name: &[u8]) -> VfsResult<Attr> {
        match self.intern(parent, name, None, true) {
            Some(ino) => self.getattr(ino),
            None => self.lookup(parent, name),
        }
    }

    /// Forgets the entries of a finished directory listing that the kernel never looked up.
    pub fn release_listing(&self, inos: impl IntoIterator<Item = Ino>) {
        for ino in inos {
            self.forget(ino, 0);
        }
    }

    /// The target of symlink `ino`.
    pub fn readlink(&self, ino: Ino) -> VfsResult<Vec<u8>> {
        match self.node(ino)? {
            NodeKind::Link(target) => Ok(target),
            NodeKind::Entry { entry, .. } => match &entry.kind {
                EntryKind::Symlink(target) => Ok(target.clone()),
                _ => Err(VfsError::NotSymlink),
            },
            _ => Err(VfsError::NotSymlink),
        }
    }

    /// The extended attributes of `ino`.
    pub fn xattrs(&self, ino: Ino) -> VfsResult<Vec<Xattr>> {
        Ok(match self.node(ino)? {
            NodeKind::Entry { entry, .. } => entry.xattrs.clone(),
            NodeKind::Checkpoint(summary) if summary.root.has_xattrs => {
                self.checkpoint_root(&summary)?.xattrs.clone()
            }
            _ => Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_times_sort_like_times() {
        assert_eq!(
            compact_time("2026-11-23T18:30:22.869866970Z"),
            "2026-11-23T183022Z"
        );
    }
}
