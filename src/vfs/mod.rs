//! The browsable view of a repository, independent of FUSE: an inode-numbered tree of
//!
//! ```text
//! /checkpoints/<time>_<shortid>/…   every checkpoint's root tree
//! /latest -> checkpoints/<newest>
//! /tags/<tag>/<time>_<shortid> -> ../../checkpoints/<time>_<shortid>
//! /history/<path…>                  the union of all paths; a non-directory becomes a
//!                                   directory of its versions, <time>_<shortid>[.ext]
//! ```
//!
//! Everything is loaded lazily: a directory's tree is read when it is first listed or looked
//! up, a file's chunk list when it is first read. Decoded trees, chunk lists and chunks are
//! kept in bounded caches. Reading ahead happens in the background: a listing decodes its
//! subdirectories' trees, and the first read in a directory hands the files after it in
//! listing order (a tree walker reads them next) to the kernel's page cache through the
//! adapter's `PagePusher`. On a local disk those file starts are read one by one, and a
//! read prefetches the next chunks of its file (the next eight at every eighth chunk); on a
//! store a round trip away, `walk_ahead` reads the checkpoint in the walker's order ahead of
//! it, pack by pack, and both come from there.
//! The checkpoint catalogue is re-listed every few seconds, so checkpoints made while
//! mounted appear; a `CheckpointFilter` (host, paths, tags) can narrow it. Hard-linked
//! files of one checkpoint share one inode, so `cp -a` recreates the links.

use crate::catalogue::Summary;
use crate::checkpoint::CheckpointFilter;
use crate::error::Error;
use crate::history::{PathHistory, versions};
use crate::holes::{ZeroChunks, seek};
use crate::id::{BlobId, CheckpointId, TreeId};
use crate::readahead::ChunkStream;
use crate::repo::Repository;
use crate::tree::{
    ChunkRef, Content, Entry, EntryKind, Tree, Xattr, check_file_size, load_tree, sized_file_chunks,
};
use quick_cache::sync::{Cache, GuardResult};
use std::collections::{BTreeSet, HashMap};
use std::ops::{Deref, Range};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};
use walk_ahead::{WalkAhead, WalkStart};
use work_queue::WorkQueue;

mod walk_ahead;
mod work_queue;

/// An inode number.
pub type Ino = u64;
/// The inode of the mount's root.
pub const ROOT_INO: Ino = 1;

/// The catalogue of checkpoints is re-listed when older than this.
const CATALOGUE_TTL: Duration = Duration::from_secs(2);
/// Bytes of decoded chunks kept in memory: enough for every request thread and the
/// prefetcher to hold the largest chunks; the kernel's page cache keeps file content beyond.
const CHUNK_CACHE_BYTES: u64 = 64 << 20;
/// Decoded trees kept in memory.
const TREE_CACHE_ITEMS: usize = 4096;
/// Chunks read ahead of a sequential reader, in one coalesced read (`readahead`): asked for
/// when the reader reaches the start of every this many-th chunk, so each chunk is asked for
/// once.
const PREFETCH_CHUNKS: usize = 8;
/// Bytes of file starts asked for after one read, at most (the first is asked for whatever
/// its size).
const FILE_STARTS_BYTES: u64 = crate::readahead::WINDOW_BYTES;
/// Background threads that prefetch chunks and trees.
const PREFETCH_THREADS: usize = 4;
/// Files of a directory whose first chunk is fetched ahead of the reader, at most; more are
/// asked for, in one coalesced read, once the reader is half way through those asked for.
const PREFETCH_WINDOW_FILES: usize = 64;
/// Files of a fully listed directory whose starts go to the kernel before the listing's
/// reader is answered (`Vfs::listing_taken`); the rest of the window follows in the
/// background, a few files behind a reader that would otherwise overtake it.
const FILE_STARTS_SERVED_FIRST: usize = 4;
/// Directories whose reading order is kept for the prefetcher.
const READING_ORDERS: usize = 1024;
/// Bytes of `history/` path histories kept in memory. A history holds an entry per
/// checkpoint, so a count alone would let ten thousand checkpoints take gigabytes.
const HISTORY_CACHE_BYTES: u64 = 32 << 20;
/// Path histories kept in memory at most, however small.
const HISTORY_CACHE_ITEMS: usize = 4096;
/// Root entries of checkpoints kept in memory (read from their records when a checkpoint's
/// directory is first listed or looked into).
const ROOT_CACHE_ITEMS: usize = 1024;

/// What kind of file a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Directory,
    RegularFile,
    Symlink,
    NamedPipe,
    CharDevice,
    BlockDevice,
}

/// The attributes of a node, as `stat` reports them.
#[derive(Debug, Clone)]
pub struct Attr {
    pub ino: Ino,
    pub kind: FileKind,
    pub size: u64,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    pub rdev: u64,
    /// Bytes that hold data (not holes): what the file would allocate, as `st_blocks` says.
    pub allocated: u64,
}

/// Why a VFS call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VfsError {
    #[error("no such entry")]
    NotFound,
    #[error("not a directory")]
    NotDirectory,
    #[error("not a regular file")]
    NotFile,
    #[error("not a symlink")]
    NotSymlink,
    #[error(transparent)]
    Repository(#[from] Error),
}

pub type VfsResult<T> = std::result::Result<T, VfsError>;

/// The components of a path below `history/`.
type HistoryPath = Arc<Vec<Vec<u8>>>;

/// What a node stands for.
#[derive(Debug, Clone)]
enum NodeKind {
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
struct Slot {
    kind: NodeKind,
    names: Vec<(Ino, Vec<u8>)>,
    lookups: u64,
    /// Whether a read of this file was answered: the kernel then keeps its bytes cached for
    /// as long as it keeps the inode, so prefetching them again would be wasted work.
    was_read: AtomicBool,
    /// The directory whose reading order this file was last listed in, and its place there.
    place: Option<(Ino, usize)>,
}

impl Slot {
    fn new(kind: NodeKind) -> Self {
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
struct Catalogue {
    /// Replaced whole on every change, so a reader can keep a consistent snapshot.
    checkpoints: CatalogueEntries,
    names: Vec<String>,
    listed: Instant,
    generation: u64,
}

/// A file's chunks with their end offsets, and which of them are holes (known once a seek
/// asks).
struct ChunkIndex {
    chunks: Arc<[ChunkRef]>,
    ends: Vec<u64>,
    holes: OnceLock<Vec<bool>>,
}

#[derive(Clone)]
struct ChunkWeight;

/// Decoded trees.
type TreeCache = Cache<TreeId, Arc<Tree>>;

/// Decoded chunks, bounded by their bytes.
type ChunkCache = Cache<BlobId, Arc<Vec<u8>>, ChunkWeight>;

impl quick_cache::Weighter<BlobId, Arc<Vec<u8>>> for ChunkWeight {
    fn weight(&self, _key: &BlobId, value: &Arc<Vec<u8>>) -> u64 {
        value.len() as u64 + 64
    }
}

#[derive(Clone)]
struct HistoryWeight;

/// Path histories with the catalogue generation they were computed for, bounded by the
/// bytes they hold.
type HistoryCache = Cache<HistoryPath, (u64, Arc<PathHistory>), HistoryWeight>;

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

/// The virtual filesystem over one repository.
pub struct Vfs {
    repo: Arc<Repository>,
    /// The repository's shared lock, held as long as the view lives: a prune waits until the
    /// checkpoints are no longer shown (none where the repository cannot be written).
    _read_lock: Option<crate::repo::lock::LockGuard>,
    /// Which checkpoints the view shows (and so which one `latest` is).
    filter: CheckpointFilter,
    /// Every inode the kernel may know. Lock order: `children`, `hardlinks`, `nodes`.
    nodes: RwLock<HashMap<Ino, Slot>>,
    next_ino: AtomicU64,
    children: RwLock<HashMap<(Ino, Vec<u8>), Ino>>,
    hardlinks: Mutex<HashMap<(CheckpointId, u64, u64), Ino>>,
    catalogue: RwLock<Catalogue>,
    /// Root entries of checkpoints, read from their records.
    roots: Cache<CheckpointId, Arc<Entry>>,
    trees: Arc<TreeCache>,
    chunk_lists: Cache<Ino, Arc<ChunkIndex>>,
    zero_chunks: ZeroChunks,
    chunks: Arc<ChunkCache>,
    /// Histories of `history/` paths, with the catalogue generation they were computed for.
    histories: HistoryCache,
    prefetch: Arc<WorkQueue<Prefetch>>,
    /// What the prefetch threads serve requests with, for one served at once.
    prefetcher: Arc<Prefetcher>,
    /// Set by the FUSE adapter: where prefetched file starts go.
    page_pusher: Arc<OnceLock<PagePusher>>,
    /// The files of recently listed directories, in listing order, with their first chunks
    /// (a local disk: file by file, see `note_read`).
    reading_orders: Cache<Ino, Arc<ReadingOrder>>,
    /// On a store a round trip away, the walk that reads a checkpoint ahead of its reader;
    /// `None` on a local disk, where reading file by file is enough.
    walk: Option<Arc<WalkAhead>>,
}

/// What the background threads fetch ahead of a reader.
enum Prefetch {
    /// Chunks of a file, read together.
    Chunks(Vec<ChunkRef>),
    Tree(TreeId),
    /// The first chunk of a file, handed to the kernel's page cache when it takes it.
    FileStart(Ino, ChunkRef),
}

/// Offers decoded bytes of a file (inode, offset, bytes) to the kernel's page cache, so the
/// kernel answers reads of them without asking; says whether the kernel took them.
pub type PagePusher = Box<dyn Fn(Ino, u64, &[u8]) -> bool + Send + Sync>;

/// The files of a directory in the order a program walking it reads them, each with its
/// first chunk, and how many of them the prefetcher was asked for.
struct ReadingOrder {
    files: Vec<(Ino, ChunkRef)>,
    requested: AtomicUsize,
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

/// A decoded tree, from `trees` or loaded into it.
fn cached_tree(
    trees: &TreeCache,
    repo: &Repository,
    id: &TreeId,
) -> crate::error::Result<Arc<Tree>> {
    trees.get_or_insert_with(id, || load_tree(repo, id).map(Arc::new))
}

/// What the prefetch threads read with and into.
struct Prefetcher {
    repo: Arc<Repository>,
    chunks: Arc<ChunkCache>,
    trees: Arc<TreeCache>,
    page_pusher: Arc<OnceLock<PagePusher>>,
    /// On a store a round trip away, the walk ahead: file starts come from it, never from a
    /// request of their own.
    walk: Option<Arc<WalkAhead>>,
}

impl Prefetcher {
    /// Serves one prefetch request. A file's first chunk goes to the kernel's page cache
    /// when a pusher is set and the kernel takes it, and to the chunk cache otherwise.
    fn serve(&self, request: Prefetch) -> crate::error::Result<()> {
        let repo = &self.repo;
        match request {
            Prefetch::Chunks(wanted) => std::thread::scope(|scope| {
                // Each chunk's place in the cache is held while it is read, so a reader
                // asking for it waits for this read instead of making its own.
                let mut held = HashMap::new();
                let mut order = Vec::new();
                for chunk in wanted {
                    if let GuardResult::Guard(guard) = self
                        .chunks
                        .get_value_or_guard(&chunk.id, Some(Duration::ZERO))
                    {
                        held.insert(chunk.id, guard);
                        order.push((chunk.id, chunk));
                    }
                }
                for (id, read) in ChunkStream::new(repo, scope, order) {
                    let guard = held.remove(&id);
                    match read {
                        Ok(read) => {
                            if let Some(guard) = guard {
                                let _ = guard.insert(trimmed(read.bytes));
                            }
                        }
                        // The reader will ask for it, and be told what is wrong.
                        Err(e) => tracing::debug!("prefetching chunk {id} failed: {e}"),
                    }
                }
                Ok(())
            }),
            Prefetch::Tree(id) => cached_tree(&self.trees, repo, &id).map(drop),
            Prefetch::FileStart(ino, chunk) => {
                let data = match &self.walk {
                    Some(walk) => match walk.take_ahead(&chunk.id) {
                        Some(data) => data,
                        None => return Ok(()),
                    },
                    // A chunk being read elsewhere is left to that read: a reader of the
                    // file then finds it in the chunk cache.
                    None => match self
                        .chunks
                        .get_value_or_guard(&chunk.id, Some(Duration::ZERO))
                    {
                        GuardResult::Value(data) => data,
                        GuardResult::Guard(_) => cached_chunk(repo, &chunk)?,
                        GuardResult::Timeout => return Ok(()),
                    },
                };
                // What the walk hands over is in the chunk cache already.
                let taken = self
                    .page_pusher
                    .get()
                    .is_some_and(|push| push(ino, 0, &data));
                if !taken && self.walk.is_none() {
                    self.chunks.insert(chunk.id, data);
                }
                Ok(())
            }
        }
    }
}

/// Starts a background thread named `name` (as `top -H` and `perf` show it), like
/// `std::thread::spawn`, which panics too when no thread can be made.
fn spawn_named(name: &str, body: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(body)
        .expect("starting a thread");
}

/// Reads a chunk for the cache (see `trimmed`).
fn cached_chunk(repo: &Repository, chunk: &ChunkRef) -> crate::error::Result<Arc<Vec<u8>>> {
    Ok(trimmed(crate::tree::read_chunk(repo, chunk)?))
}

/// A chunk's bytes for the cache, trimmed so its weight is what it holds.
fn trimmed(mut data: Vec<u8>) -> Arc<Vec<u8>> {
    data.shrink_to_fit();
    Arc::new(data)
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
    /// A view of the checkpoints of `repo` that `filter` lets through, under the repository's
    /// shared lock; starts the prefetch threads.
    pub fn new(repo: Arc<Repository>, filter: CheckpointFilter) -> VfsResult<Self> {
        let read_lock = crate::repo::lock::acquire_for_reading(&repo, "mount")?;
        let chunks = Arc::new(Cache::with_weighter(4096, CHUNK_CACHE_BYTES, ChunkWeight));
        let trees = Arc::new(Cache::new(TREE_CACHE_ITEMS));
        let page_pusher = Arc::new(OnceLock::<PagePusher>::new());
        let remote = repo.backend().preferred_concurrency() > 1;
        let walk =
            remote.then(|| Arc::new(WalkAhead::new(repo.clone(), trees.clone(), chunks.clone())));
        let prefetch = Arc::new(WorkQueue::new(2 * PREFETCH_WINDOW_FILES));
        let prefetcher = Arc::new(Prefetcher {
            repo: repo.clone(),
            chunks: chunks.clone(),
            trees: trees.clone(),
            page_pusher: page_pusher.clone(),
            walk: walk.clone(),
        });
        for _ in 0..PREFETCH_THREADS {
            let (prefetcher, requests) = (prefetcher.clone(), prefetch.clone());
            spawn_named("cairn-prefetch", move || {
                while let Some(request) = requests.pop() {
                    if let Err(e) = prefetcher.serve(request) {
                        tracing::debug!("prefetch failed: {e}");
                    }
                }
            });
        }
        let vfs = Vfs {
            _read_lock: read_lock,
            zero_chunks: ZeroChunks::new(&repo),
            repo,
            filter,
            nodes: RwLock::new(HashMap::from([(ROOT_INO, Slot::new(NodeKind::Root))])),
            next_ino: AtomicU64::new(ROOT_INO + 1),
            children: RwLock::new(HashMap::new()),
            hardlinks: Mutex::new(HashMap::new()),
            catalogue: RwLock::new(Catalogue {
                checkpoints: Arc::new(Vec::new()),
                names: Vec::new(),
                listed: Instant::now() - CATALOGUE_TTL * 2,
                generation: 0,
            }),
            roots: Cache::new(ROOT_CACHE_ITEMS),
            trees,
            chunk_lists: Cache::new(1024),
            chunks,
            histories: Cache::with_weighter(
                HISTORY_CACHE_ITEMS,
                HISTORY_CACHE_BYTES,
                HistoryWeight,
            ),
            prefetch,
            prefetcher,
            reading_orders: Cache::new(READING_ORDERS),
            walk,
            page_pusher,
        };
        vfs.refresh_catalogue()?;
        Ok(vfs)
    }

    /// Re-lists the checkpoints when the last listing is older than `CATALOGUE_TTL`.
    fn refresh_catalogue(&self) -> VfsResult<()> {
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
        for (id, e) in &synced.unreadable {
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

    fn node(&self, ino: Ino) -> VfsResult<NodeKind> {
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

    fn tree(&self, id: &TreeId) -> crate::error::Result<Arc<Tree>> {
        cached_tree(&self.trees, &self.repo, id)
    }

    /// The root entry of the checkpoint `summary` stands for.
    fn checkpoint_root(&self, summary: &Summary) -> VfsResult<Arc<Entry>> {
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
    fn history(
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
    fn list(&self, node: &NodeKind) -> VfsResult<Vec<(Vec<u8>, NodeKind)>> {
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
    pub fn readdir(&self, ino: Ino) -> VfsResult<Vec<(Attr, Vec<u8>)>> {
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
            .map(|(child, kind, name)| (self.attr_of(child, &kind), name))
            .collect())
    }

    /// Sends prefetched file starts to `pusher` (the kernel's page cache) from now on.
    pub fn push_pages_to(&self, pusher: PagePusher) {
        if self.page_pusher.set(pusher).is_err() {
            tracing::debug!("a page pusher was already set");
        }
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

    /// Records the reading order of directory `dir` for `note_read`, and starts decoding the
    /// trees of its subdirectories, which a program walking the tree (tar, cp -a, find)
    /// lists next.
    fn start_reading_order(&self, dir: Ino, listing: &[(Ino, NodeKind, Vec<u8>)]) {
        let mut files = Vec::new();
        for (ino, kind, _) in listing {
            let NodeKind::Entry { entry, .. } = kind else {
                continue;
            };
            match &entry.kind {
                EntryKind::File(Content::Chunks(chunks)) => {
                    files.extend(chunks.first().map(|chunk| (*ino, *chunk)));
                }
                EntryKind::Dir(tree) if !self.trees.contains_key(tree) => {
                    self.prefetch.try_push(Prefetch::Tree(*tree));
                }
                _ => {}
            }
        }
        if files.is_empty() {
            return;
        }
        {
            let mut nodes = self.nodes.write().expect("not poisoned");
            for (place, (ino, _)) in files.iter().enumerate() {
                if let Some(slot) = nodes.get_mut(ino) {
                    slot.place = Some((dir, place));
                }
            }
        }
        let order = ReadingOrder {
            files,
            requested: AtomicUsize::new(0),
        };
        self.reading_orders.insert(dir, Arc::new(order));
    }

    /// Notes that file `ino` was read. A read of a file the prefetcher was not asked for yet
    /// asks it for the first chunks of the files after it in its directory: a walker reading
    /// files one at a time (tar, cp -a) then finds them in the kernel's page cache or in
    /// memory (small files are a single chunk), while a walk that only lists decodes nothing.
    fn note_read(&self, ino: Ino) {
        let place = {
            let nodes = self.nodes.read().expect("not poisoned");
            match nodes.get(&ino) {
                Some(slot) if !slot.was_read.swap(true, Ordering::Relaxed) => slot.place,
                _ => None,
            }
        };
        let Some((dir, place)) = place else {
            return;
        };
        if let Some(order) = self.reading_orders.get(&dir) {
            self.ask_for_file_starts(&order, place + 1, 0);
        }
    }

    /// Notes that the kernel holds every entry of directory `dir`'s listing (the reader has
    /// listed it to its end). On a store a round trip away the walk ahead is likely to hold
    /// the first files' starts already: they go to the kernel's page cache now, the first
    /// few before the reader is answered, so a walker reading the directory's files next
    /// finds them there. (A read of the first files would otherwise come before the
    /// background pushed them: a tar of the kernel tree missed 6,200 of 78,000 files, now
    /// 800.) On a local disk nothing is read until a file is, so a program that only lists
    /// reads nothing.
    pub fn listing_taken(&self, dir: Ino) {
        if self.walk.is_none() {
            return;
        }
        if let Some(order) = self.reading_orders.get(&dir)
            && order.requested.load(Ordering::Relaxed) == 0
        {
            self.ask_for_file_starts(&order, 0, FILE_STARTS_SERVED_FIRST);
        }
    }

    /// Asks the prefetcher for the starts of the files of `order` from place `from` on, a
    /// window of them, unless it was asked for most of them already; the first `served_now`
    /// are served before this returns.
    fn ask_for_file_starts(&self, order: &ReadingOrder, from: usize, served_now: usize) {
        // Asked for again only once the reader is half way through what was asked for, so
        // each request holds half a window or more.
        let end = (from + PREFETCH_WINDOW_FILES).min(order.files.len());
        if order.requested.load(Ordering::Relaxed) > from + PREFETCH_WINDOW_FILES / 2 {
            return;
        }
        let start = order.requested.fetch_max(end, Ordering::Relaxed).max(from);
        let nodes = self.nodes.read().expect("not poisoned");
        // At most one read-ahead window of bytes in flight, however large the files' first
        // chunks.
        let mut bytes = 0u64;
        let batch: Vec<(Ino, ChunkRef)> = order
            .files
            .get(start..end)
            .unwrap_or_default()
            .iter()
            .filter(|(ino, _)| {
                !nodes
                    .get(ino)
                    .is_some_and(|slot| slot.was_read.load(Ordering::Relaxed))
            })
            .take_while(|(_, chunk)| {
                let first = bytes == 0;
                bytes += u64::from(chunk.length);
                first || bytes <= FILE_STARTS_BYTES
            })
            .copied()
            .collect();
        drop(nodes);
        let mut batch = batch.into_iter();
        for (ino, chunk) in batch.by_ref().take(served_now) {
            if let Err(e) = self.prefetcher.serve(Prefetch::FileStart(ino, chunk)) {
                tracing::debug!("prefetch failed: {e}");
            }
        }
        // One request per file, which the prefetch threads serve side by side.
        for (ino, chunk) in batch {
            if !self.prefetch.try_push(Prefetch::FileStart(ino, chunk)) {
                break;
            }
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

    fn chunk_index(&self, ino: Ino) -> VfsResult<Arc<ChunkIndex>> {
        let NodeKind::Entry { entry, .. } = self.node(ino)? else {
            return Err(VfsError::NotFile);
        };
        self.chunk_index_of(ino, &entry)
    }

    /// The chunk index of file `ino`, whose entry is `entry`.
    fn chunk_index_of(&self, ino: Ino, entry: &Entry) -> VfsResult<Arc<ChunkIndex>> {
        let EntryKind::File(content) = &entry.kind else {
            return Err(VfsError::NotFile);
        };
        Ok(self.chunk_lists.get_or_insert_with(&ino, || {
            let chunks = sized_file_chunks(&self.repo, content, entry.size)?;
            let ends = chunks
                .iter()
                .scan(0u64, |end, c| {
                    *end += c.length as u64;
                    Some(*end)
                })
                .collect();
            Ok::<_, Error>(Arc::new(ChunkIndex {
                chunks: chunks.into(),
                ends,
                holes: OnceLock::new(),
            }))
        })?)
    }

    /// The bytes of file `ino` that are not holes. It costs no data read, but a file with a
    /// separate chunk list needs that list; one that cannot be read, or whose chunks do not
    /// add up to its size, counts as all data (its reads fail with the error).
    fn allocated_bytes(&self, ino: Ino, entry: &Entry) -> u64 {
        let data_bytes = |chunks: &[ChunkRef]| self.zero_chunks.data_bytes(&self.repo, chunks);
        match &entry.kind {
            EntryKind::File(Content::Chunks(chunks)) => match check_file_size(chunks, entry.size) {
                Ok(()) => data_bytes(chunks),
                Err(_) => entry.size,
            },
            _ => match self.chunk_index_of(ino, entry) {
                Ok(index) => data_bytes(&index.chunks),
                Err(_) => entry.size,
            },
        }
    }

    /// Where `SEEK_DATA` (`want_data`) or `SEEK_HOLE` from `offset` lands in file `ino`;
    /// `None` when there is no such place (ENXIO).
    pub fn seek(&self, ino: Ino, offset: u64, want_data: bool) -> VfsResult<Option<u64>> {
        let index = self.chunk_index(ino)?;
        let holes = (index.holes).get_or_init(|| self.zero_chunks.holes(&self.repo, &index.chunks));
        Ok(seek(&index.ends, holes, offset, want_data))
    }

    /// Chunk `i` of file `ino` from the walk ahead, when there is one and it holds the chunk;
    /// `from` is where the read starts in the chunk, `through_end` says it reaches its end.
    /// A read of a chunk's start that the walk did not foresee, of a file's first chunk or of
    /// the one after a chunk just read, moves the walk there.
    fn walked_chunk(
        &self,
        ino: Ino,
        index: &ChunkIndex,
        i: usize,
        from: usize,
        through_end: bool,
    ) -> Option<Arc<Vec<u8>>> {
        let walk = self.walk.as_ref()?;
        let chunk = &index.chunks[i];
        if let Some(data) = walk.take(&chunk.id, through_end) {
            return Some(data);
        }
        if let Some(data) = self.chunks.get(&chunk.id) {
            return Some(data);
        }
        let sequential = i == 0 || self.chunks.contains_key(&index.chunks[i - 1].id);
        if from == 0 && sequential {
            walk.start_at(WalkStart {
                dirs: self.path_from_root(ino).unwrap_or_default(),
                chunks: index.chunks.clone(),
                next_chunk: i + 1,
            });
        }
        None
    }

    /// The directories from the root of the checkpoint file `ino` is in down to the file:
    /// each one's tree and the place in it of the next step down. `None` when the file is
    /// not in a checkpoint's tree (a version in `history/`).
    fn path_from_root(&self, ino: Ino) -> Option<Vec<(Arc<Tree>, usize)>> {
        // Each directory above the file, innermost first, with the name of the step below.
        let mut steps: Vec<(NodeKind, Vec<u8>)> = Vec::new();
        {
            let nodes = self.nodes.read().expect("not poisoned");
            let mut at = ino;
            loop {
                let (parent, name) = nodes.get(&at)?.names.first()?.clone();
                let parent_kind = nodes.get(&parent)?.kind.clone();
                let top = matches!(parent_kind, NodeKind::Checkpoint(_));
                if !top && !matches!(&parent_kind, NodeKind::Entry { entry, .. } if entry.is_dir())
                {
                    return None;
                }
                steps.push((parent_kind, name));
                if top {
                    break;
                }
                at = parent;
            }
        }
        (steps.into_iter().rev())
            .map(|(dir, name)| {
                let entry = match dir {
                    NodeKind::Checkpoint(summary) => self.checkpoint_root(&summary).ok()?,
                    NodeKind::Entry { entry, .. } => entry,
                    _ => return None,
                };
                let EntryKind::Dir(id) = &entry.kind else {
                    return None;
                };
                let tree = self.tree(id).ok()?;
                let place = tree.position(&name)?;
                Some((tree, place))
            })
            .collect()
    }

    /// A chunk's bytes. A chunk read whole in one request (most small files) is not worth
    /// caching; one that later requests will read more of is kept.
    fn chunk(&self, chunk: &ChunkRef, read_whole: bool) -> VfsResult<Arc<Vec<u8>>> {
        // A chunk being read ahead is waited for, not read again.
        Ok(match self.chunks.get_value_or_guard(&chunk.id, None) {
            GuardResult::Value(data) => data,
            GuardResult::Guard(guard) => {
                let data = cached_chunk(&self.repo, chunk)?;
                if !read_whole {
                    let _ = guard.insert(data.clone());
                }
                data
            }
            GuardResult::Timeout => cached_chunk(&self.repo, chunk)?,
        })
    }

    /// Up to `size` bytes of file `ino` from `offset`; fewer only at the end of the file.
    pub fn read(&self, ino: Ino, offset: u64, size: u32) -> VfsResult<FileBytes> {
        let index = self.chunk_index(ino)?;
        let file_size = index.ends.last().copied().unwrap_or(0);
        let end = file_size.min(offset.saturating_add(size as u64));
        let mut pieces = Vec::new();
        let mut position = offset;
        let mut i = index.ends.partition_point(|&e| e <= offset);
        while position < end {
            let chunk = &index.chunks[i];
            let start = index.ends[i] - chunk.length as u64;
            let from = (position - start) as usize;
            let through_end = end >= index.ends[i];
            let data = match self.walked_chunk(ino, &index, i, from, through_end) {
                Some(data) => data,
                None => self.chunk(chunk, from == 0 && through_end)?,
            };
            let to = ((end - start) as usize).min(data.len());
            pieces.push((data, from..to));
            position = start + to as u64;
            i += 1;
        }
        let first = index.ends.partition_point(|&e| e <= offset);
        let at_chunk_start = index
            .chunks
            .get(first)
            .is_some_and(|chunk| index.ends[first] - chunk.length as u64 == offset);
        if self.walk.is_none() && at_chunk_start && first.is_multiple_of(PREFETCH_CHUNKS) {
            // The chunks after `first` up to the next prefetch point, past what this read took.
            let wanted: Vec<ChunkRef> = index
                .chunks
                .iter()
                .take(first + 1 + PREFETCH_CHUNKS)
                .skip(i.max(first + 1))
                .filter(|next| !self.chunks.contains_key(&next.id))
                .copied()
                .collect();
            if !wanted.is_empty() {
                self.prefetch.try_push(Prefetch::Chunks(wanted));
            }
        }
        self.note_read(ino);
        Ok(match pieces.len() {
            0 => FileBytes::Joined(Vec::new()),
            1 => {
                let (chunk, range) = pieces.pop().expect("one piece");
                FileBytes::Slice(chunk, range)
            }
            _ => {
                let mut joined = Vec::with_capacity((end - offset) as usize);
                for (chunk, range) in pieces {
                    joined.extend_from_slice(&chunk[range]);
                }
                FileBytes::Joined(joined)
            }
        })
    }
}

impl Drop for Vfs {
    /// Ends the prefetch threads.
    fn drop(&mut self) {
        self.prefetch.close();
    }
}

/// The bytes of one read: a slice of a single chunk when the read falls within it (the
/// common case, answered without copying), or the pieces of several chunks joined.
pub enum FileBytes {
    Slice(Arc<Vec<u8>>, Range<usize>),
    Joined(Vec<u8>),
}

impl Deref for FileBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            FileBytes::Slice(chunk, range) => &chunk[range.clone()],
            FileBytes::Joined(bytes) => bytes,
        }
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
