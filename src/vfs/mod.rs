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
//! subdirectories' trees; a read the view did not foresee starts `walk_ahead`, which reads
//! the checkpoint in a tree walker's order ahead of it, pack by pack, and the starts of the
//! files after a read one in listing order (a tree walker reads them next) go from the walk
//! to the kernel's page cache through the adapter's `PagePusher`.
//! The checkpoint catalogue is re-listed every few seconds, so checkpoints made while
//! mounted appear; a `CheckpointFilter` (host, paths, tags) can narrow it. Hard-linked
//! files of one checkpoint share one inode, so `cp -a` recreates the links.
//!
//! This file holds the `Vfs` and its public types; `namespace` the inodes, names, catalogue
//! and listings; `content` a file's chunks and reads; `prefetch` the background reading
//! ahead (with `walk_ahead` reading, and `work_queue` feeding the threads that hand file
//! starts to the kernel and decode trees).

use crate::checkpoint::CheckpointFilter;
use crate::error::Error;
use crate::holes::ZeroChunks;
use crate::id::{CheckpointId, TreeId};
use crate::repo::Repository;
use crate::tree::{Entry, Tree, load_tree};
use content::{ChunkCache, ChunkIndex, ChunkWeight};
use namespace::{Catalogue, HistoryCache, HistoryWeight, NodeKind, Slot};
use prefetch::{Prefetch, Prefetcher, ReadingOrder, spawn_named};
use quick_cache::sync::Cache;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};
use walk_ahead::WalkAhead;
use work_queue::WorkQueue;

mod content;
mod namespace;
mod prefetch;
mod walk_ahead;
mod work_queue;

/// An inode number.
pub type Ino = u64;
/// The inode of the mount's root.
pub const ROOT_INO: Ino = 1;

/// The catalogue of checkpoints is re-listed when older than this.
const CATALOGUE_TTL: Duration = Duration::from_secs(2);
/// Bytes of decoded chunks kept in memory (those a reader read part of, and those the walk
/// ahead handed over): enough for every request thread to hold the largest chunks; the
/// kernel's page cache keeps file content beyond.
const CHUNK_CACHE_BYTES: u64 = 64 << 20;
/// Decoded trees kept in memory.
const TREE_CACHE_ITEMS: usize = 4096;
/// Bytes of file starts asked for after one read, at most (the first is asked for whatever
/// its size).
const FILE_STARTS_BYTES: u64 = crate::readahead::WINDOW_BYTES;
/// Background threads that hand file starts to the kernel and decode trees.
const PREFETCH_THREADS: usize = 4;
/// Files of a directory whose start is handed from the walk ahead to the kernel ahead of the
/// reader, at most; more are asked for once the reader is half way through those asked for.
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

/// One entry of a directory listing (`Vfs::readdir`).
#[derive(Debug, Clone)]
pub struct ListedEntry {
    pub name: Vec<u8>,
    pub attr: Attr,
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

/// Decoded trees.
type TreeCache = Cache<TreeId, Arc<Tree>>;

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
    /// (see `note_read`).
    reading_orders: Cache<Ino, Arc<ReadingOrder>>,
    /// The walk that reads a checkpoint ahead of its reader.
    walk: Arc<WalkAhead>,
}

/// Offers decoded bytes of a file (inode, offset, bytes) to the kernel's page cache, so the
/// kernel answers reads of them without asking; says whether the kernel took them.
pub type PagePusher = Box<dyn Fn(Ino, u64, &[u8]) -> bool + Send + Sync>;

/// A decoded tree, from `trees` or loaded into it.
fn cached_tree(
    trees: &TreeCache,
    repo: &Repository,
    id: &TreeId,
) -> crate::error::Result<Arc<Tree>> {
    trees.get_or_insert_with(id, || load_tree(repo, id).map(Arc::new))
}

impl Vfs {
    /// A view of the checkpoints of `repo` that `filter` lets through, under the repository's
    /// shared lock; starts the prefetch threads.
    pub fn new(repo: Arc<Repository>, filter: CheckpointFilter) -> VfsResult<Self> {
        let read_lock = crate::repo::lock::acquire_for_reading(&repo, "mount")?;
        let chunks = Arc::new(Cache::with_weighter(4096, CHUNK_CACHE_BYTES, ChunkWeight));
        let trees = Arc::new(Cache::new(TREE_CACHE_ITEMS));
        let page_pusher = Arc::new(OnceLock::<PagePusher>::new());
        let walk = Arc::new(WalkAhead::new(repo.clone(), trees.clone(), chunks.clone()));
        let prefetch = Arc::new(WorkQueue::new(2 * PREFETCH_WINDOW_FILES));
        let prefetcher = Arc::new(Prefetcher {
            repo: repo.clone(),
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
}

impl Drop for Vfs {
    /// Ends the prefetch threads.
    fn drop(&mut self) {
        self.prefetch.close();
    }
}

pub use content::FileBytes;
