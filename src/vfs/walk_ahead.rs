//! Reading a checkpoint's files ahead of a program that walks it, on every store: most
//! needed a round trip away (S3, a served repository), and on a local disk, where small files
//! share frames, it decodes each frame once, off the reader's path.
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
//! not foresee (another subtree, another program, a file it skipped) moves the walk there.
//! The window bounds the bytes held or under way, whatever the reader does; chunks the reader
//! has gone more than `BEHIND_BYTES` past without taking are dropped, and a chunk it has used
//! up goes to the mount's chunk cache, where a read arriving late still finds it. Two fetcher
//! threads read the walker's batches, so the next is under way while one arrives.

use super::content::{ChunkCache, trimmed};
use super::prefetch::spawn_named;
use super::{TreeCache, cached_tree};
use crate::error::{ErrorKind, Result};
use crate::id::BlobId;
use crate::readahead::{ReadChunk, read_by_pack};
use crate::repo::Repository;
use crate::tree::{ChunkRef, EntryKind, Tree, file_chunks};
use crossbeam_channel::{Receiver, Sender, bounded};
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
/// Batches read at once: the next is under way while the last one's tail arrives and decodes.
const FETCHERS: usize = 2;
/// How long a reader waits for a chunk the walk is reading before it reads it itself.
const WAIT_LIMIT: Duration = Duration::from_secs(60);

/// The chunks a walk (known by its number) registered together, to be read as one.
type Batch = (u64, Vec<(BlobId, ChunkRef)>);

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
    /// Readers waiting for a chunk under way.
    readers_waiting: usize,
    /// Whether the walker thread waits, and if so whether it has a walk to go on with.
    walker_waits: Option<bool>,
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

    /// Whether the window has room for the walk's next batch.
    fn has_room(&self) -> bool {
        self.held_bytes + self.batch() <= self.window()
    }

    /// Whether the walker thread waits for something that is now there: a stop, a start,
    /// or room for the walk it has.
    fn walker_can_go_on(&self) -> bool {
        match self.walker_waits {
            None => false,
            Some(walking) => self.stopped || self.start.is_some() || (walking && self.has_room()),
        }
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

/// The lock and the signals the walker thread and the readers share. Each side is woken
/// only when it waits and what it waits for may be there: a wake-up per chunk would cost
/// more than reading it.
#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Signalled to readers when a chunk arrives or is given up, or the walk starts anew.
    arrived: Condvar,
    /// Signalled to the walker when it can go on (`State::walker_can_go_on`).
    walker: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("not poisoned")
    }

    /// Wakes whoever waits for what has changed in `state`, and unlocks it.
    fn release(&self, state: MutexGuard<'_, State>) {
        let readers = state.readers_waiting > 0;
        let walker = state.walker_can_go_on();
        drop(state);
        if readers {
            self.arrived.notify_all();
        }
        if walker {
            self.walker.notify_one();
        }
    }

    /// Stores a chunk the walk read, or forgets it when it could not be read (the reader
    /// then reads it itself, and is told what is wrong).
    fn deliver(&self, id: &BlobId, read: Result<ReadChunk>) {
        let read = read.map(|read| trimmed(read.bytes));
        let mut state = self.lock();
        match read {
            Ok(bytes) => {
                if let Some(held) = state.held.get_mut(id) {
                    held.bytes = Some(bytes);
                }
            }
            Err(e) => {
                if e.kind() != ErrorKind::Interrupted {
                    tracing::debug!("reading chunk {id} ahead failed: {e}");
                }
                state.forget(id);
            }
        }
        self.release(state);
    }
}

/// The walk ahead of one mount: a thread that follows the reader through a checkpoint, and
/// the threads that read what it finds.
pub(super) struct WalkAhead {
    shared: Arc<Shared>,
    /// Where chunks go once the walk is done with them.
    chunks: Arc<ChunkCache>,
}

impl WalkAhead {
    /// Starts the walker thread over `repo`, loading trees through `trees`; chunks the
    /// reader has used up go to `chunks`.
    pub(super) fn new(
        repo: Arc<Repository>,
        trees: Arc<TreeCache>,
        chunks: Arc<ChunkCache>,
    ) -> Self {
        let shared = Arc::new(Shared::default());
        let walker = shared.clone();
        let (batches, to_fetch) = bounded(1);
        for _ in 0..FETCHERS {
            let (shared, repo, to_fetch) = (shared.clone(), repo.clone(), to_fetch.clone());
            spawn_named("cairn-fetch", move || fetch(&shared, &repo, to_fetch));
        }
        spawn_named("cairn-walk", move || walk(&walker, &repo, &trees, batches));
        WalkAhead { shared, chunks }
    }

    /// Moves the walk to `start`: the reader is reading there now.
    pub(super) fn start_at(&self, start: WalkStart) {
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
        self.shared.release(state);
    }

    /// Whether the walk holds chunk `id` or is reading it.
    pub(super) fn holds(&self, id: &BlobId) -> bool {
        self.shared.lock().held.contains_key(id)
    }

    /// Chunk `id` for the reader when the walk holds it, waiting for it while the walk reads
    /// it; `None` when the walk does not have it. The reader is then at the chunk's place in
    /// the walk; `through_end` says it has read the chunk to its end, which uses it up.
    pub(super) fn take(&self, id: &BlobId, through_end: bool) -> Option<Arc<Vec<u8>>> {
        self.take_at(id, through_end, true)
    }

    /// Chunk `id`, used up, for a file start handed to the kernel ahead of the reader (which
    /// stays where it is); like `take` otherwise.
    pub(super) fn take_ahead(&self, id: &BlobId) -> Option<Arc<Vec<u8>>> {
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
            state.readers_waiting += 1;
            state = self
                .shared
                .arrived
                .wait_timeout(state, left)
                .expect("not poisoned")
                .0;
            state.readers_waiting -= 1;
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
        self.shared.release(state);
        Some(bytes)
    }
}

impl Drop for WalkAhead {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.stopped = true;
        self.shared.release(state);
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

/// The walker thread: waits for a start, then gathers and registers the chunks ahead of the
/// reader a batch at a time while the window has room, and hands each batch to the fetcher
/// threads, until the checkpoint ends or the walk starts elsewhere.
fn walk(shared: &Shared, repo: &Repository, trees: &TreeCache, batches: Sender<Batch>) {
    let mut cursor: Option<Cursor> = None;
    loop {
        let (walk, batch) = {
            let mut state = shared.lock();
            loop {
                if state.stopped {
                    return;
                }
                // A start is taken under the lock that set it, so the cursor always follows
                // the current walk.
                if let Some(start) = state.start.take() {
                    cursor = Some(Cursor::new(start));
                }
                if cursor.is_some() && state.has_room() {
                    break (state.walk, state.batch());
                }
                state.walker_waits = Some(cursor.is_some());
                state = shared.walker.wait(state).expect("not poisoned");
                state.walker_waits = None;
            }
        };
        let Some(walker) = cursor.as_mut() else {
            continue;
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
        if !wanted.is_empty() && batches.send((walk, wanted)).is_err() {
            return;
        }
    }
}

/// A fetcher thread: reads the batches the walker registered, pack by pack, until the walker
/// ends; a batch of a walk that has moved on is given up where it has not started.
fn fetch(shared: &Shared, repo: &Repository, batches: Receiver<Batch>) {
    let readers = repo.backend().preferred_concurrency().max(1);
    for (walk, wanted) in batches {
        let moved_on = || shared.lock().walk != walk;
        read_by_pack(repo, wanted, readers, &moved_on, &|id, read| {
            shared.deliver(id, read)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::{BackupOptions, Progress};
    use crate::tree::{Entry, load_tree};
    use quick_cache::sync::Cache;

    /// The chunks of every file below `tree`, depth first with files and directories
    /// interleaved by name: the order tar reads them in.
    fn walker_order(repo: &Repository, tree: &Tree) -> Vec<ChunkRef> {
        let mut chunks = Vec::new();
        let mut pending: Vec<Entry> = tree.entries.iter().rev().cloned().collect();
        while let Some(entry) = pending.pop() {
            match &entry.kind {
                EntryKind::File(content) => chunks.extend(file_chunks(repo, content).unwrap()),
                EntryKind::Dir(id) => {
                    let below = load_tree(repo, id).unwrap();
                    pending.extend(below.entries.into_iter().rev());
                }
                _ => {}
            }
        }
        chunks
    }

    #[test]
    fn the_walk_reads_what_follows_a_file_in_the_order_a_tree_walker_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Arc::new(crate::repo::writer::tests::repository(dir.path()));
        let source = dir.path().join("source");
        // Directories and files interleaved by name, three levels, one file of several
        // chunks, and two files of one content (a chunk used twice).
        let files: [(&str, usize); 9] = [
            ("a/1", 3_000),
            ("a/2", 5_000),
            ("b-file", 7_000),
            ("c/d/x", 11_000),
            ("c/d/y", 6_000_000),
            ("c/e", 13_000),
            ("c/same", 17_000),
            ("same", 17_000),
            ("z", 19_000),
        ];
        for (i, (path, length)) in files.iter().enumerate() {
            let path = source.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let mut state = if path.ends_with("same") {
                99
            } else {
                i as u64 + 1
            };
            let bytes: Vec<u8> = (0..*length)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state >> 32) as u8
                })
                .collect();
            std::fs::write(path, bytes).unwrap();
        }
        let outcome = crate::backup::run(
            &repo,
            &BackupOptions::new(vec![source]),
            &Progress::default(),
        )
        .unwrap();
        let root = Arc::new(load_tree(&repo, &outcome.checkpoint.tree).unwrap());
        let order = walker_order(&repo, &root);
        assert!(order.len() > files.len(), "a file of several chunks");

        // The reader reads a/1 itself: the walk starts after it.
        let EntryKind::Dir(a) = root.entries[0].kind else {
            panic!("a is a directory")
        };
        let a = Arc::new(load_tree(&repo, &a).unwrap());
        let EntryKind::File(first) = a.entries[0].kind.clone() else {
            panic!("a/1 is a file")
        };
        let trees = Arc::new(Cache::new(64));
        let start = || WalkStart {
            dirs: vec![(root.clone(), 0), (a.clone(), 0)],
            chunks: file_chunks(&repo, &first).unwrap().into(),
            next_chunk: 1,
        };
        let mut cursor = Cursor::new(start());
        let walked: Vec<ChunkRef> = std::iter::from_fn(|| cursor.next(&repo, &trees)).collect();
        assert_eq!(walked, order[1..], "the walk goes where the walker goes");

        let chunks = Arc::new(Cache::with_weighter(
            64,
            64 << 20,
            super::super::ChunkWeight,
        ));
        let walk = WalkAhead::new(repo.clone(), trees, chunks.clone());
        walk.start_at(start());
        for (n, chunk) in order.iter().enumerate().skip(1) {
            // The walk holds each chunk by the time a reader could ask, or is reading it
            // (then `take` waits); before it has got there, `take` says it does not have it.
            let deadline = Instant::now() + Duration::from_secs(10);
            let taken = loop {
                if let Some(bytes) = walk.take(&chunk.id, true) {
                    break bytes;
                }
                assert!(Instant::now() < deadline, "chunk {n} never arrived");
                std::thread::sleep(Duration::from_millis(1));
            };
            assert_eq!(*taken, crate::tree::read_chunk(&repo, chunk).unwrap());
            // Used up, it is in the chunk cache for a read that arrives late.
            assert!(chunks.contains_key(&chunk.id) || order[n + 1..].contains(chunk));
        }
        let state = walk.shared.lock();
        assert_eq!(state.held_bytes, 0, "everything read ahead was taken");
        assert!(state.held.is_empty() && state.by_use.is_empty());
    }
}
