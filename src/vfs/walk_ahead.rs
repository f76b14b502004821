//! Reading a checkpoint's files ahead of a program that walks it, for a store a round trip
//! away (S3, a served repository).
//!
//! tar, `cp -a` and rsync read a tree one file at a time, depth first, in the order of its
//! listings (names sorted, as trees hold them). On an object store a read per file is a
//! round trip per file. The walk ahead follows the same order from the file whose read it
//! did not foresee, a bounded number of bytes ahead of the reader, and reads what it meets
//! pack by pack (`readahead::read_by_pack`: each pack's needed stretch in one streamed
//! request), so the reader finds the next files' chunks in memory. A reader asking for a
//! chunk the walk is reading waits for it rather than asking the store again.
//!
//! How far ahead the walk goes starts at `WINDOW_START_BYTES` and grows to twice what the
//! reader has taken since the walk started, up to `WINDOW_MAX_BYTES` (as a kernel's
//! read-ahead ramps up), so a single `cat` reads little beyond its file. A read the walk did
//! not foresee (another subtree, another program, a file it skipped) moves the walk there;
//! chunks the reader has gone more than `BEHIND_BYTES` past are dropped, so memory is bounded
//! by the window and that margin whatever the reader does.

use super::{ChunkCache, TreeCache, cached_tree};
use crate::error::{ErrorKind, Result};
use crate::id::BlobId;
use crate::readahead::{ReadChunk, read_by_pack};
use crate::repo::Repository;
use crate::tree::{ChunkRef, EntryKind, Tree, file_chunks};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Bytes the walk reads ahead of the reader when it starts or moves.
const WINDOW_START_BYTES: u64 = 4 << 20;
/// Bytes the walk reads ahead of the reader at most.
const WINDOW_MAX_BYTES: u64 = 64 << 20;
/// Bytes one read of the walk asks for at least (then about a quarter of the window, so
/// the next read starts while the reader takes this one).
const BATCH_MIN_BYTES: u64 = 1 << 20;
/// Chunks the reader has gone past are kept this many bytes behind it, for reads that
/// arrive out of order (several request threads, the kernel's own read-ahead).
const BEHIND_BYTES: u64 = 8 << 20;
/// How long a reader waits for a chunk the walk is reading before it reads it itself.
const WAIT_LIMIT: Duration = Duration::from_secs(60);

/// Where a walk starts: a file of a checkpoint and the first of its chunks to read.
pub(super) struct WalkStart {
    /// From the checkpoint's root down to the file's directory: each directory's tree and
    /// the place in it of the next step down (the file, in the last).
    pub dirs: Vec<(Arc<Tree>, usize)>,
    /// The file's chunks.
    pub chunks: Arc<[ChunkRef]>,
    /// The first of them to read ahead.
    pub next_chunk: usize,
}

/// A chunk the walk has read or is reading.
struct Held {
    /// `None` while it is being read.
    bytes: Option<Arc<Vec<u8>>>,
    length: u64,
    /// Where in the walk it is used, in order (a chunk can be in several files).
    uses: VecDeque<u64>,
}

/// What the walker thread and the readers share.
#[derive(Default)]
struct State {
    /// Counts the walk's starts; reads of an older walk not yet under way are given up.
    walk: u64,
    /// A start asked for and not yet taken up by the walker.
    start: Option<WalkStart>,
    held: HashMap<BlobId, Held>,
    /// Each held chunk by its next use, oldest first.
    by_use: BTreeSet<(u64, BlobId)>,
    /// Bytes of chunks the walk holds or is reading.
    held_bytes: u64,
    /// Bytes of chunks the walk has gone through since the mount started: where it is (each
    /// chunk counts at least one, so places are distinct).
    cursor_at: u64,
    /// The furthest place in the walk the reader has taken a chunk from.
    reader_at: u64,
    /// Bytes the reader has taken from the walk since it last started.
    taken_since_start: u64,
    stopped: bool,
}

impl State {
    /// How far ahead of the reader the walk goes now.
    fn window(&self) -> u64 {
        (2 * self.taken_since_start).clamp(WINDOW_START_BYTES, WINDOW_MAX_BYTES)
    }

    /// Bytes one read of the walk asks for now.
    fn batch(&self) -> u64 {
        (self.window() / 4).max(BATCH_MIN_BYTES)
    }

    /// Drops the next use of held chunk `id`, and the chunk when no use is left.
    fn use_up(&mut self, id: &BlobId) {
        let Some(held) = self.held.get_mut(id) else {
            return;
        };
        if let Some(at) = held.uses.pop_front() {
            self.by_use.remove(&(at, *id));
        }
        match held.uses.front() {
            Some(&next) => {
                self.by_use.insert((next, *id));
            }
            None => self.forget(id),
        }
    }

    /// Forgets held chunk `id` with all its uses.
    fn forget(&mut self, id: &BlobId) {
        if let Some(held) = self.held.remove(id) {
            if let Some(&at) = held.uses.front() {
                self.by_use.remove(&(at, *id));
            }
            self.held_bytes -= held.length;
        }
    }

    /// Drops the uses the reader has gone more than `BEHIND_BYTES` past.
    fn drop_passed(&mut self) {
        while let Some(&(at, id)) = self.by_use.first() {
            if at.saturating_add(BEHIND_BYTES) >= self.reader_at {
                return;
            }
            self.use_up(&id);
        }
    }

    /// Counts a use of `chunk` at the walk's current place; says whether it must be read
    /// (it is neither held nor being read).
    fn register(&mut self, chunk: &ChunkRef) -> bool {
        let length = u64::from(chunk.length);
        self.cursor_at += length.max(1);
        let at = self.cursor_at;
        match self.held.get_mut(&chunk.id) {
            Some(held) => {
                if held.uses.is_empty() {
                    self.by_use.insert((at, chunk.id));
                }
                held.uses.push_back(at);
                false
            }
            None => {
                self.held.insert(
                    chunk.id,
                    Held {
                        bytes: None,
                        length,
                        uses: VecDeque::from([at]),
                    },
                );
                self.by_use.insert((at, chunk.id));
                self.held_bytes += length;
                true
            }
        }
    }
}

/// The lock and the signal the walker thread and the readers share.
#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Signalled when a chunk arrives, the reader moves on, or the walk starts anew.
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("not poisoned")
    }

    /// Stores a chunk the walk read, or forgets it when it could not be read (the reader
    /// then reads it itself, and is told what is wrong).
    fn deliver(&self, id: &BlobId, read: Result<&ReadChunk>) {
        let mut state = self.lock();
        match read {
            Ok(read) => {
                if let Some(held) = state.held.get_mut(id) {
                    held.bytes = Some(Arc::new(read.bytes.clone()));
                }
            }
            Err(e) => {
                if e.kind() != ErrorKind::Interrupted {
                    tracing::debug!("reading chunk {id} ahead failed: {e}");
                }
                state.forget(id);
            }
        }
        drop(state);
        self.changed.notify_all();
    }
}

/// The walk ahead of one mount: a thread that follows the reader through a checkpoint.
pub(super) struct WalkAhead {
    shared: Arc<Shared>,
    /// Where chunks go once the walk is done with them.
    chunks: Arc<ChunkCache>,
}

impl WalkAhead {
    /// Starts the walker thread over `repo`, loading trees through `trees`; chunks the
    /// reader has used up go to `chunks`.
    pub fn new(repo: Arc<Repository>, trees: Arc<TreeCache>, chunks: Arc<ChunkCache>) -> Self {
        let shared = Arc::new(Shared::default());
        let walker = shared.clone();
        std::thread::spawn(move || walk(&walker, &repo, &trees));
        WalkAhead { shared, chunks }
    }

    /// Moves the walk to `start`: the reader is reading there now.
    pub fn start_at(&self, start: WalkStart) {
        let mut state = self.shared.lock();
        tracing::debug!(
            "the walk ahead moves, dropping {} chunks ({} bytes)",
            state.held.len(),
            state.held_bytes
        );
        state.walk += 1;
        state.start = Some(start);
        // What the walk held is behind the reader or elsewhere: a walk that starts again
        // where it was finds most of it in the chunk cache.
        state.held.clear();
        state.by_use.clear();
        state.held_bytes = 0;
        state.reader_at = state.cursor_at;
        state.taken_since_start = 0;
        drop(state);
        self.shared.changed.notify_all();
    }

    /// Chunk `id` for the reader when the walk holds it, waiting for it while the walk reads
    /// it; `None` when the walk does not have it. The reader is then at the chunk's place in
    /// the walk; `through_end` says it has read the chunk to its end, which uses it up.
    pub fn take(&self, id: &BlobId, through_end: bool) -> Option<Arc<Vec<u8>>> {
        self.take_at(id, through_end, true)
    }

    /// Chunk `id`, used up, for a file start handed to the kernel ahead of the reader (which
    /// stays where it is); like `take` otherwise.
    pub fn take_ahead(&self, id: &BlobId) -> Option<Arc<Vec<u8>>> {
        self.take_at(id, true, false)
    }

    fn take_at(&self, id: &BlobId, through_end: bool, moves_reader: bool) -> Option<Arc<Vec<u8>>> {
        let deadline = Instant::now() + WAIT_LIMIT;
        let mut state = self.shared.lock();
        let bytes = loop {
            let held = state.held.get(id)?;
            if let Some(bytes) = &held.bytes {
                break bytes.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, left)
                .expect("not poisoned")
                .0;
        };
        let held = &state.held[id];
        let (at, length) = (held.uses.front().copied(), held.length);
        if let Some(at) = at.filter(|_| moves_reader) {
            state.reader_at = state.reader_at.max(at);
        }
        if through_end {
            state.taken_since_start += length;
            state.use_up(id);
            // Kept where a read still to come (out of order, or the kernel asking for a
            // file start it was handed) finds it, before another reader can miss it here.
            if !state.held.contains_key(id) {
                self.chunks.insert(*id, bytes.clone());
            }
        }
        state.drop_passed();
        drop(state);
        self.shared.changed.notify_all();
        Some(bytes)
    }
}

impl Drop for WalkAhead {
    fn drop(&mut self) {
        self.shared.lock().stopped = true;
        self.shared.changed.notify_all();
    }
}

/// A place in a checkpoint's tree, moving depth first in the order of its listings.
struct Cursor {
    /// The directories entered, outermost first, each with the place of its next entry.
    frames: Vec<(Arc<Tree>, usize)>,
    /// The file being gone through, and its next chunk.
    chunks: Arc<[ChunkRef]>,
    next_chunk: usize,
}

impl Cursor {
    fn new(start: WalkStart) -> Self {
        Cursor {
            frames: (start.dirs.into_iter())
                .map(|(tree, place)| (tree, place + 1))
                .collect(),
            chunks: start.chunks,
            next_chunk: start.next_chunk,
        }
    }

    /// The next chunk in walk order; `None` at the end of the checkpoint. A file or
    /// directory that cannot be read is passed over: its reader is told why.
    fn next(&mut self, repo: &Repository, trees: &TreeCache) -> Option<ChunkRef> {
        loop {
            if let Some(chunk) = self.chunks.get(self.next_chunk) {
                self.next_chunk += 1;
                return Some(*chunk);
            }
            let (tree, next) = self.frames.last_mut()?;
            let Some(entry) = tree.entries.get(*next) else {
                self.frames.pop();
                continue;
            };
            *next += 1;
            match &entry.kind {
                EntryKind::File(content) => {
                    self.chunks = file_chunks(repo, content).unwrap_or_default().into();
                    self.next_chunk = 0;
                }
                EntryKind::Dir(id) => {
                    let id = *id;
                    if let Ok(tree) = cached_tree(trees, repo, &id) {
                        self.frames.push((tree, 0));
                    }
                }
                _ => {}
            }
        }
    }
}

/// The walker thread: waits for a start, then reads ahead of the reader a batch at a time
/// while the window has room, until the checkpoint ends or the walk starts elsewhere.
fn walk(shared: &Shared, repo: &Repository, trees: &TreeCache) {
    let readers = repo.backend().preferred_concurrency().max(1);
    let mut cursor: Option<(u64, Cursor)> = None;
    loop {
        let (walk, batch) = {
            let mut state = shared.lock();
            loop {
                if state.stopped {
                    return;
                }
                if let Some(start) = state.start.take() {
                    cursor = Some((state.walk, Cursor::new(start)));
                }
                let batch = state.batch();
                if cursor.is_some() && state.held_bytes + batch <= state.window() {
                    break (state.walk, batch);
                }
                state = shared.changed.wait(state).expect("not poisoned");
            }
        };
        let walker = match cursor.as_mut() {
            Some((started, walker)) if *started == walk => walker,
            _ => continue,
        };
        let mut chunks = Vec::new();
        let mut bytes = 0u64;
        while bytes < batch {
            let Some(chunk) = walker.next(repo, trees) else {
                cursor = None;
                break;
            };
            bytes += u64::from(chunk.length);
            chunks.push(chunk);
        }
        let wanted: Vec<(BlobId, ChunkRef)> = {
            let mut state = shared.lock();
            if state.walk != walk {
                continue;
            }
            (chunks.iter())
                .filter(|chunk| state.register(chunk))
                .map(|chunk| (chunk.id, *chunk))
                .collect()
        };
        if wanted.is_empty() {
            continue;
        }
        let moved_on = || shared.lock().walk != walk;
        read_by_pack(repo, wanted, readers, &moved_on, &|id, read| {
            shared.deliver(id, read)
        });
    }
}
