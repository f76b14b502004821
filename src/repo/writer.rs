//! Writing blobs into a repository: a `BlobSink` many threads share, which stores each blob
//! the repository lacks exactly once, and the packer thread behind it, which appends encoded
//! blobs to packs, hands them to uploader threads (several in flight on a remote backend) and
//! writes an index file every few packs, so an interrupted run leaves reusable work behind.
//! Backup and sync both write through it.

use super::Repository;
use super::index::{IndexedPacks, encode_index_file};
use super::pack::{BlobKind, PackBuilder, fetch_header, pack_id_of_object, pack_object_name};
use super::table::Layout;
use crate::chunk_pool::{ChunkPool, OrderedChunks, with_chunk_pool};
use crate::error::{Error, ErrorKind, Result};
use crate::id::BlobId;
use crate::progress::Progress;
use crate::repo::objects::ObjectKind;
use crate::tree::ChunkRef;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Condvar, Mutex};

/// An index file is written once this many stored packs wait for one, or once a stored pack
/// has waited this long since the last index file, and at the end of the run: what a killed
/// run leaves behind is reused by the next one once an index file lists it.
const PACKS_PER_INDEX_FILE: usize = 32;
const INDEX_FILE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// How often a packer waiting for blobs looks for finished uploads to index.
const UPLOAD_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

/// Packs listed per index file when a whole fresh set of index files is written.
const PACKS_PER_FRESH_INDEX_FILE: usize = 256;

/// An encoded frame (one blob, or several small ones of one kind) on its way to the packer.
struct EncodedFrame {
    kind: BlobKind,
    encoded: Vec<u8>,
    /// Its blobs, in order: id and plaintext length.
    blobs: Vec<(BlobId, u32)>,
}

/// Where a blob of this run stands on its way to the packer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flight {
    /// A thread took it on and has not queued it yet.
    Claimed,
    /// Queued for the packer; anything queued after it lands in the same or a later pack.
    Queued,
}

/// The blobs of this run not yet in the index cache, and a signal for each change.
#[derive(Default)]
struct Flights {
    blobs: Mutex<HashMap<BlobId, Flight>>,
    changed: Condvar,
}

impl Flights {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<BlobId, Flight>> {
        self.blobs.lock().expect("not poisoned")
    }
}

/// What `BlobSink::claim` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The caller stores it: it must queue it (`send_encoded`) or give it up (`release`).
    Mine,
    /// The repository has it, or it is queued already.
    Stored,
    /// Another thread has claimed it and not queued it yet. Whatever refers to it must not
    /// be stored before `wait_queued` says it is.
    Elsewhere,
}

/// Stores blobs the repository lacks: dedupes against the index and this run, and hands
/// them to the packer. A blob claimed by one thread is queued (or released) before anything
/// another thread refers it from may be stored: a tree never lands in an earlier pack, and so
/// never in an earlier index file, than a blob it references.
pub struct BlobSink<'a> {
    repo: &'a Repository,
    flights: &'a Flights,
    packer: Sender<EncodedFrame>,
    /// The threads storing data chunks of long streams (`None` in those threads' own sink).
    chunk_pool: Option<&'a ChunkPool<'a, ChunkRef>>,
}

impl<'a> BlobSink<'a> {
    pub fn repo(&self) -> &Repository {
        self.repo
    }

    /// A new stream of data chunks (a file's) to store in order: every chunk but the last on
    /// the run's chunk pool, so one long stream keeps every core busy.
    pub(crate) fn data_chunks(&self) -> OrderedChunks<'_, ChunkRef> {
        self.chunk_pool
            .expect("only the chunk pool's own threads hold a sink without it")
            .stream()
    }

    /// Stores blob `entry` of `pack` (read whole into `bytes`) again, once it decodes to its
    /// id: as it is stored when alone in its frame, or into `frame` with the blobs moved
    /// before it when it shared one (the caller finishes the frame). How prune repacks and
    /// `repair packs` rescues. The inner error is the blob's own (truncated or damaged;
    /// nothing is sent), the outer one the sink's.
    pub(crate) fn copy_stored(
        &self,
        pack: &crate::id::PackId,
        bytes: &[u8],
        entry: &super::pack::PackEntry,
        frame: &mut SharedFrame,
    ) -> Result<Result<()>> {
        let start = entry.offset as usize;
        let where_ = || format!("pack {pack} blob {}", entry.id);
        let Some(stored) = bytes.get(start..start + entry.length as usize) else {
            return Ok(Err(Error::corrupt(
                where_(),
                "lies past the end of its pack",
            )));
        };
        let location = super::index::BlobLocation {
            pack: *pack,
            entry: *entry,
        };
        let plaintext = match self.repo.decode_blob_at(&location, &entry.id, stored) {
            Ok(plaintext) => plaintext,
            Err(e) => return Ok(Err(e)),
        };
        match entry.is_alone() {
            true => {
                let encoded = stored.to_vec();
                self.send_encoded(entry.id, entry.kind, encoded, entry.raw_length as usize)?
            }
            false => frame.add_taken(entry.kind, entry.id, &plaintext)?,
        }
        Ok(Ok(()))
    }

    /// Takes blob `id` on, unless the repository has it or another thread does. Never waits.
    pub fn claim(&self, id: &BlobId) -> Result<Claim> {
        if self.repo.index().contains(id)? {
            return Ok(Claim::Stored);
        }
        {
            let mut blobs = self.flights.lock();
            match blobs.get(id) {
                Some(Flight::Queued) => return Ok(Claim::Stored),
                Some(Flight::Claimed) => return Ok(Claim::Elsewhere),
                None => {
                    blobs.insert(*id, Flight::Claimed);
                }
            }
        }
        // The packer indexes blobs before it forgets them, so a blob indexed between the
        // first check and the claim shows up here and is not stored twice.
        if self.repo.index().contains(id)? {
            self.release(&[*id]);
            return Ok(Claim::Stored);
        }
        Ok(Claim::Mine)
    }

    /// Waits until blob `id`, claimed by another thread, is queued: `true`. `false` when that
    /// thread gave it up, so the caller must store it itself.
    pub fn wait_queued(&self, id: &BlobId) -> Result<bool> {
        let mut blobs = self.flights.lock();
        loop {
            match blobs.get(id) {
                Some(Flight::Queued) => return Ok(true),
                Some(Flight::Claimed) => {
                    blobs = self.flights.changed.wait(blobs).expect("not poisoned");
                }
                None => {
                    drop(blobs);
                    return self.repo.index().contains(id);
                }
            }
        }
    }

    /// Gives up claims that will not be queued after all (the source failed), so that
    /// another thread stores them.
    pub fn release(&self, ids: &[BlobId]) {
        let mut blobs = self.flights.lock();
        for id in ids {
            if blobs.get(id) == Some(&Flight::Claimed) {
                blobs.remove(id);
            }
        }
        self.flights.changed.notify_all();
    }

    /// Queues a claimed blob, already in this repository's stored form, for the packer.
    pub fn send_encoded(
        &self,
        id: BlobId,
        kind: BlobKind,
        encoded: Vec<u8>,
        raw_length: usize,
    ) -> Result<()> {
        let raw_length = u32::try_from(raw_length).expect("blobs stay far below 4 GiB");
        self.send_frame(EncodedFrame {
            kind,
            encoded,
            blobs: vec![(id, raw_length)],
        })
    }

    /// Queues a frame of claimed blobs for the packer.
    fn send_frame(&self, frame: EncodedFrame) -> Result<()> {
        let ids: Vec<BlobId> = frame.blobs.iter().map(|(id, _)| *id).collect();
        if self.packer.send(frame).is_err() {
            self.release(&ids);
            return Err(Error::InvalidInput("the pack writer stopped".into()));
        }
        let mut blobs = self.flights.lock();
        for id in ids {
            blobs.insert(id, Flight::Queued);
        }
        drop(blobs);
        self.flights.changed.notify_all();
        Ok(())
    }

    /// A frame to gather small blobs of `kind` in, which are compressed and sealed together
    /// (format 3; in older formats each blob is stored alone).
    pub(crate) fn shared_frame(&self, kind: BlobKind) -> SharedFrame<'_, 'a> {
        SharedFrame {
            sink: self,
            kind,
            plaintext: Vec::new(),
            blobs: Vec::new(),
        }
    }

    /// Stores `plaintext` unless the repository has it already; returns its id once it is
    /// queued (by this thread or another).
    /// A blob larger than the format allows for its kind is refused: readers would refuse it.
    pub fn store(&self, kind: BlobKind, plaintext: &[u8]) -> Result<BlobId> {
        if plaintext.len() as u64 > u64::from(kind.max_raw_length()) {
            return Err(Error::InvalidInput(format!(
                "a {kind:?} blob of {} bytes is larger than the {} bytes the format allows (a directory with too many entries, or a file with too many chunks)",
                plaintext.len(),
                kind.max_raw_length()
            )));
        }
        let id = BlobId(self.repo.codec().id_of(plaintext));
        loop {
            match self.claim(&id)? {
                Claim::Mine => {
                    let encoded = self.repo.codec().encode(plaintext, true);
                    if kind == BlobKind::Tree {
                        self.repo.keep_tree(&id, &encoded);
                    }
                    self.send_encoded(id, kind, encoded, plaintext.len())?;
                    return Ok(id);
                }
                Claim::Stored => return Ok(id),
                Claim::Elsewhere => {
                    if self.wait_queued(&id)? {
                        return Ok(id);
                    }
                }
            }
        }
    }
}

/// Plaintext bytes a shared frame gathers before it is sent off: the frame is compressed as
/// one, so small blobs share zstd's window, while reading one blob decodes at most this much.
pub(crate) const SHARED_FRAME_TARGET_BYTES: usize = 4 << 20;

/// Small blobs gathered into one frame (`BlobSink::shared_frame`). Each blob added is
/// claimed; the frame is sent off once it holds `SHARED_FRAME_TARGET_BYTES`, before this
/// thread waits for a blob another thread (or this frame) claimed, and at `finish`. Claims
/// of a frame dropped unsent are released.
pub(crate) struct SharedFrame<'s, 'a> {
    sink: &'s BlobSink<'a>,
    kind: BlobKind,
    plaintext: Vec<u8>,
    blobs: Vec<(BlobId, u32)>,
}

impl SharedFrame<'_, '_> {
    /// Adds `plaintext` unless the repository has it or it is queued; returns its id. Once
    /// it returns, the blob is in this frame or queued.
    pub(crate) fn add(&mut self, plaintext: &[u8]) -> Result<BlobId> {
        let repo = self.sink.repo;
        if repo.codec().layout() == Layout::Entries || plaintext.len() >= SHARED_FRAME_TARGET_BYTES
        {
            return self.sink.store(self.kind, plaintext);
        }
        let id = BlobId(repo.codec().id_of(plaintext));
        loop {
            match self.sink.claim(&id)? {
                Claim::Mine => {
                    self.push(id, plaintext)?;
                    return Ok(id);
                }
                Claim::Stored => return Ok(id),
                Claim::Elsewhere => {
                    // What this thread holds may be what the other one waits for.
                    self.send_off()?;
                    if self.sink.wait_queued(&id)? {
                        return Ok(id);
                    }
                }
            }
        }
    }

    /// Adds blob `id` of `kind`, which the caller has taken on already (a copy from another
    /// repository claims a batch of blobs before it reads them; prune and `repair packs`
    /// move blobs under the exclusive lock), of plaintext `plaintext`: how blobs that shared
    /// a frame are moved without losing what compressing them together saved. A blob of
    /// another kind than the frame's sends the frame off and starts one of its kind. Stored
    /// alone where frames do not hold several blobs, or when it is large.
    pub(crate) fn add_taken(&mut self, kind: BlobKind, id: BlobId, plaintext: &[u8]) -> Result<()> {
        let codec = self.sink.repo.codec();
        if codec.layout() == Layout::Entries || plaintext.len() >= SHARED_FRAME_TARGET_BYTES {
            let encoded = codec.encode(plaintext, true);
            return self.sink.send_encoded(id, kind, encoded, plaintext.len());
        }
        if kind != self.kind {
            self.send_off()?;
            self.kind = kind;
        }
        self.push(id, plaintext)
    }

    /// Puts claimed blob `id` into the frame, sent off once it holds its target.
    fn push(&mut self, id: BlobId, plaintext: &[u8]) -> Result<()> {
        self.plaintext.extend_from_slice(plaintext);
        let length = u32::try_from(plaintext.len()).expect("a small blob");
        self.blobs.push((id, length));
        if self.plaintext.len() >= SHARED_FRAME_TARGET_BYTES {
            self.send_off()?;
        }
        Ok(())
    }

    /// Sends the frame off: every blob added is queued once this returns.
    pub(crate) fn finish(mut self) -> Result<()> {
        self.send_off()
    }

    /// Sends off what the frame holds so far (a new frame starts with the next blob): before
    /// this thread waits for others, which may be waiting for a blob the frame holds.
    pub(crate) fn send_off(&mut self) -> Result<()> {
        let blobs = std::mem::take(&mut self.blobs);
        let plaintext = std::mem::take(&mut self.plaintext);
        if blobs.is_empty() {
            return Ok(());
        }
        let encoded = self.sink.repo.codec().encode(&plaintext, true);
        self.sink.send_frame(EncodedFrame {
            kind: self.kind,
            encoded,
            blobs,
        })
    }
}

impl Drop for SharedFrame<'_, '_> {
    fn drop(&mut self) {
        let ids: Vec<BlobId> = self.blobs.iter().map(|(id, _)| *id).collect();
        self.sink.release(&ids);
    }
}

/// Runs `body` with a sink into `repo` (a dry run's repository keeps what it would write
/// in memory); `queued` encoded blobs may wait for the packer. Once `body` returns, the last
/// pack and index file are written. Returns `body`'s value and the number of blobs stored;
/// a failed write is reported rather than the failure it caused in `body`. `progress`
/// counts the packs and their bytes as they are written.
pub fn with_blob_sink<T>(
    repo: &Repository,
    queued: usize,
    progress: &Progress,
    body: impl FnOnce(&BlobSink) -> Result<T>,
) -> Result<(T, u64)> {
    // A dry run leaves no packs behind, so it has no run to mark.
    let mark = match repo.is_dry_run() {
        true => None,
        false => Some(RunMark::create(&runs_dir(repo))?),
    };
    let flights = Flights::default();
    let (packer_tx, packer_rx) = bounded(queued.max(1));
    std::thread::scope(|scope| {
        let flights = &flights;
        let packer = scope.spawn(move || run_packer(repo, packer_rx, flights, progress));
        let pool_sink = BlobSink {
            repo,
            flights,
            packer: packer_tx.clone(),
            chunk_pool: None,
        };
        let store_chunk = move |chunk: &[u8]| {
            let id = pool_sink.store(BlobKind::Data, chunk)?;
            Ok(ChunkRef {
                id,
                length: chunk.len() as u32,
            })
        };
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let value = with_chunk_pool(cores, &store_chunk, |pool| {
            let sink = BlobSink {
                repo,
                flights,
                packer: packer_tx,
                chunk_pool: Some(pool),
            };
            body(&sink)
        });
        drop(store_chunk);
        let blobs = packer.join().expect("the packer does not panic")?;
        // Every pack the run wrote is in an index file: nothing of it is left to recover.
        if let Some(mark) = mark {
            mark.finished();
        }
        Ok((value?, blobs))
    })
}

/// The name and stored bytes of an index file listing `packs`.
fn encode_index_object(
    repo: &Repository,
    packs: &[(crate::id::PackId, Vec<super::pack::PackEntry>)],
) -> (String, Vec<u8>) {
    let encoded = repo
        .codec()
        .encode(&encode_index_file(packs, repo.codec().layout()), true);
    let name = ObjectKind::Index.name(&blake3::hash(&encoded).to_hex());
    (name, encoded)
}

/// Stores an index file listing `packs` (whose packs must be stored already) and returns
/// its name; the local cache learns of it separately.
pub fn put_index_file(
    repo: &Repository,
    packs: &[(crate::id::PackId, Vec<super::pack::PackEntry>)],
) -> Result<String> {
    let (name, encoded) = encode_index_object(repo, packs);
    repo.backend().put(&name, &encoded)?;
    Ok(name)
}

/// How many index files `replace_index_files` wrote and deleted (or would).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexFilesReplaced {
    pub written: u64,
    pub deleted: u64,
}

/// Writes one fresh set of index files listing `packs` (all stored already), then deletes
/// the index files named in `old` that are not among the new ones, so every pack stays
/// listed at every moment (twice at worst). The local cache learns of the change at the caller's next sync.
pub fn replace_index_files(
    repo: &Repository,
    packs: &[(crate::id::PackId, Vec<super::pack::PackEntry>)],
    old: &[String],
) -> Result<IndexFilesReplaced> {
    let mut written = std::collections::HashSet::new();
    for group in packs.chunks(PACKS_PER_FRESH_INDEX_FILE) {
        let (name, encoded) = encode_index_object(repo, group);
        repo.backend().put(&name, &encoded)?;
        written.insert(name);
    }
    let mut deleted = 0;
    for name in old.iter().filter(|name| !written.contains(*name)) {
        repo.backend().delete(name)?;
        deleted += 1;
    }
    Ok(IndexFilesReplaced {
        written: written.len() as u64,
        deleted,
    })
}

/// Where blobs just copied by a `BlobSink` landed: the new packs holding `ids`, with their
/// entries, as the local index now knows them, in the order the packs hold them (a shared
/// frame's blobs together, in frame order, though blobs moved alone between them were
/// queued first) and each once.
pub(crate) fn packs_holding<'a>(
    repo: &Repository,
    ids: impl IntoIterator<Item = &'a BlobId>,
) -> Result<HashMap<crate::id::PackId, Vec<super::pack::PackEntry>>> {
    let mut packs: HashMap<_, Vec<super::pack::PackEntry>> = HashMap::new();
    for id in ids {
        let location = repo.locate(id)?;
        packs.entry(location.pack).or_default().push(location.entry);
    }
    for entries in packs.values_mut() {
        entries.sort_by_key(|entry| (entry.offset, entry.frame_at));
        entries.dedup();
    }
    Ok(packs)
}

/// How every rewrite of packs (prune, `repair packs`) ends, once the blobs that stay are in
/// packs: one fresh set of index files listing `listed`, then the index files named in
/// `old_index_files` are deleted, then the packs in `unlisted` (which nothing lists any
/// more), and the local cache learns of it. Each step leaves every needed blob listed.
pub(crate) fn commit_pack_rewrite<'a>(
    repo: &Repository,
    listed: &[(crate::id::PackId, Vec<super::pack::PackEntry>)],
    old_index_files: &[String],
    unlisted: impl IntoIterator<Item = &'a crate::id::PackId>,
) -> Result<IndexFilesReplaced> {
    let replaced = replace_index_files(repo, listed, old_index_files)?;
    for pack in unlisted {
        repo.backend().delete(&pack_object_name(pack))?;
    }
    repo.index().sync(repo.backend(), repo.codec())?;
    Ok(replaced)
}

/// Packs no index file listed, taken into the index by `recover_orphan_packs`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecoveredPacks {
    pub packs: u64,
    pub bytes: u64,
    /// Packs whose header could not be read or opened (torn or damaged): left for prune.
    pub unreadable: u64,
}

/// The packs `recover_orphan_packs` would index, with their entries, found without writing
/// anything.
fn find_orphan_packs(repo: &Repository) -> Result<(RecoveredPacks, IndexedPacks)> {
    let mut recovered = RecoveredPacks::default();
    let mut packs: IndexedPacks = Vec::new();
    // Names only: the size is asked for of the few packs no index file lists.
    for name in repo.backend().list_names(ObjectKind::Pack.prefix())? {
        let Some(pack) = pack_id_of_object(&name) else {
            continue;
        };
        if repo.index().contains_pack(&pack)? {
            continue;
        }
        let mut size = 0;
        let header = repo.backend().size(&name).and_then(|found| {
            size = found;
            fetch_header(repo.backend(), &pack, size, repo.codec())
        });
        // A pack some of whose blobs are listed elsewhere is the leftover of a rewrite (prune,
        // `repair packs`) stopped before it deleted it, possibly a damaged one the repair
        // meant to drop: it is read whole and taken only if its bytes match its id.
        let header = header.and_then(|entries| {
            let mut rewritten = false;
            for entry in &entries {
                if repo.index().contains(&entry.id)? {
                    rewritten = true;
                    break;
                }
            }
            if rewritten && blake3::hash(&repo.backend().get(&name)?).as_bytes() != &pack.0 {
                return Err(Error::corrupt(&name, "bytes do not match the pack's id"));
            }
            Ok(entries)
        });
        match header {
            Ok(entries) => {
                recovered.packs += 1;
                recovered.bytes += size;
                packs.push((pack, entries));
            }
            Err(e) if matches!(e.kind(), ErrorKind::Corrupt | ErrorKind::NotFound) => {
                tracing::warn!("leaving pack {name} unused: {e}");
                recovered.unreadable += 1;
            }
            Err(e) => return Err(e),
        }
    }
    Ok((recovered, packs))
}

/// Indexes the packs no index file lists: those a killed run stored before its next index
/// file, and those a backup running alongside has not indexed yet. One listing of the names
/// in `data/`; for each pack the cache does not know, its size and two ranged reads give its
/// header, which must open
/// under the repository's key and lie inside the pack, and an index file is written for the
/// packs whose header does; a pack that shares blobs with listed ones is read whole and must
/// match its id. A pack that fails is left as it is, unused (the next prune deletes it).
/// Nothing is deleted here, so another run's fresh packs are safe; listing them too is
/// harmless, since a blob is the same wherever it is stored. Runs that write call it once
/// they hold their lock, so the work of an interrupted run is reused, not stored again.
pub fn recover_orphan_packs(repo: &Repository) -> Result<RecoveredPacks> {
    let Some(ended) = ended_runs(&runs_dir(repo)) else {
        return Ok(RecoveredPacks::default());
    };
    let (recovered, packs) = find_orphan_packs(repo)?;
    for group in packs.chunks(PACKS_PER_FRESH_INDEX_FILE) {
        let name = put_index_file(repo, group)?;
        repo.index().add_index_file(&name, group)?;
    }
    if recovered.packs > 0 {
        tracing::info!(
            "indexed {} packs ({} bytes) an earlier run left unindexed",
            recovered.packs,
            recovered.bytes
        );
    }
    // A dry run's index files are not kept: the marks stay for the next real run.
    if !repo.is_dry_run() {
        for mark in ended {
            let _ = std::fs::remove_file(mark);
        }
        super::backend::create_private_dir(&runs_dir(repo))?;
    }
    Ok(recovered)
}

/// Where the marks of runs writing packs through this cache are kept (see [`RunMark`]).
fn runs_dir(repo: &Repository) -> std::path::PathBuf {
    repo.cache_dir().join("runs")
}

/// The mark, in the cache, of a run writing packs: a file the run holds an exclusive
/// `flock` on for its whole life and removes once every pack it wrote is listed by an index
/// file. A mark no process holds is a run that ended before that (killed, or failed), whose
/// packs may lack index files. Only then, or when the cache has no marks directory yet (a
/// new or lost cache), does `recover_orphan_packs` list `data/`; so a run after runs that
/// finished lists no packs, whatever their number. Packs another machine's killed run left
/// are not looked for: the next run there finds its own mark, and a prune removes them.
struct RunMark {
    path: std::path::PathBuf,
    _held: std::fs::File,
}

impl RunMark {
    /// Creates and holds a mark in `dir`: locked under a temporary name first, so no other
    /// run ever sees it unheld.
    fn create(dir: &std::path::Path) -> Result<RunMark> {
        use std::os::unix::fs::OpenOptionsExt;
        super::backend::create_private_dir(dir)?;
        let name = hex::encode(crate::crypto::random_bytes::<16>());
        let temporary = dir.join(format!(".{name}"));
        let path = dir.join(name);
        let held = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)
            .and_then(|file| {
                lock_exclusively(&file)?;
                std::fs::rename(&temporary, &path)?;
                Ok(file)
            })
            .map_err(|e| {
                let _ = std::fs::remove_file(&temporary);
                Error::io(format!("marking a run in {}", dir.display()), e)
            })?;
        Ok(RunMark { path, _held: held })
    }

    /// Removes the mark of a run whose packs are all indexed.
    fn finished(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The marks in `dir` of runs that ended before their packs were all indexed, or `None`
/// when none did. A missing or unreadable `dir` counts as one such run.
fn ended_runs(dir: &std::path::Path) -> Option<Vec<std::path::PathBuf>> {
    let Ok(listing) = std::fs::read_dir(dir) else {
        return Some(Vec::new());
    };
    let ended: Vec<std::path::PathBuf> = listing
        .flatten()
        .filter(|entry| !entry.file_name().as_encoded_bytes().starts_with(b"."))
        .map(|entry| entry.path())
        .filter(|path| {
            // Held: a run under way. Taken: its holder is gone.
            std::fs::File::open(path).is_ok_and(|file| lock_exclusively(&file).is_ok())
        })
        .collect();
    (!ended.is_empty()).then_some(ended)
}

/// Takes an exclusive `flock` on `file` without waiting; released when the file is closed
/// (or its process ends, however it ends).
fn lock_exclusively(file: &std::fs::File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor `file` owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A pack handed to an uploader thread.
struct PackInFlight<'scope> {
    id: crate::id::PackId,
    entries: Vec<super::pack::PackEntry>,
    bytes: u64,
    /// Gives the pack's bytes back once stored, for the next pack to fill.
    upload: std::thread::ScopedJoinHandle<'scope, Result<crate::fs::uncached::AlignedBytes>>,
}

/// The packer's state: a pack of file chunks and the metadata blobs (trees and chunk lists)
/// being gathered, the packs being uploaded (oldest first), and the stored packs no index file
/// lists yet, in the order they were finished.
struct Packer<'scope, 'env> {
    repo: &'env Repository,
    scope: &'scope std::thread::Scope<'scope, 'env>,
    flights: &'env Flights,
    progress: &'env Progress,
    data: PackBuilder,
    metadata: PackBuilder,
    in_flight: std::collections::VecDeque<PackInFlight<'scope>>,
    most_in_flight: usize,
    unindexed: IndexedPacks,
    last_index: std::time::Instant,
}

impl<'scope, 'env> Packer<'scope, 'env> {
    /// Finishes the data pack and hands it to an uploader thread, first waiting for the
    /// oldest uploads while as many as the backend takes at once are under way.
    fn send_off(&mut self) -> Result<()> {
        let (id, bytes, entries) = self.data.finish(self.repo.codec());
        while self.in_flight.len() >= self.most_in_flight {
            self.land_oldest()?;
        }
        let size = bytes.len() as u64;
        let backend = self.repo.backend();
        let upload = self
            .scope
            .spawn(move || backend.put(&pack_object_name(&id), &bytes).map(|()| bytes));
        self.in_flight.push_back(PackInFlight {
            id,
            entries,
            bytes: size,
            upload,
        });
        Ok(())
    }

    /// Waits for the oldest upload; once it is stored its pack waits for an index file.
    fn land_oldest(&mut self) -> Result<()> {
        let Some(pack) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let bytes = pack.upload.join().expect("uploads do not panic")?;
        self.data.reuse(bytes);
        self.progress
            .added_bytes
            .fetch_add(pack.bytes, Ordering::Relaxed);
        self.progress.added_packs.fetch_add(1, Ordering::Relaxed);
        self.unindexed.push((pack.id, pack.entries));
        Ok(())
    }

    /// Takes in the uploads that have finished, oldest first, without waiting.
    fn land_finished(&mut self) -> Result<()> {
        while self
            .in_flight
            .front()
            .is_some_and(|pack| pack.upload.is_finished())
        {
            self.land_oldest()?;
        }
        Ok(())
    }

    /// Writes an index file once `PACKS_PER_INDEX_FILE` landed packs wait for one, or once a
    /// landed pack has waited past `INDEX_FILE_INTERVAL` since the last index file.
    fn index_if_due(&mut self) -> Result<()> {
        self.land_finished()?;
        let due = self.unindexed.len() >= PACKS_PER_INDEX_FILE
            || (!self.unindexed.is_empty() && self.last_index.elapsed() >= INDEX_FILE_INTERVAL);
        if due { self.write_index() } else { Ok(()) }
    }

    /// Waits for every upload under way.
    fn land_all(&mut self) -> Result<()> {
        while !self.in_flight.is_empty() {
            self.land_oldest()?;
        }
        Ok(())
    }

    /// Stores the metadata blobs once every blob their trees and chunk lists refer to is
    /// stored: every upload lands first, and the chunks not sent off yet go in the same pack.
    fn send_off_metadata(&mut self) -> Result<()> {
        self.land_all()?;
        self.data.take_from(&mut self.metadata);
        self.send_off()?;
        self.land_all()
    }

    /// Writes an index file listing the stored packs no index file lists yet, and forgets
    /// their blobs as flights (the index cache has them now).
    fn write_index(&mut self) -> Result<()> {
        self.last_index = std::time::Instant::now();
        if self.unindexed.is_empty() {
            return Ok(());
        }
        let name = put_index_file(self.repo, &self.unindexed)?;
        self.repo.index().add_index_file(&name, &self.unindexed)?;
        let mut blobs = self.flights.lock();
        for (_, entries) in self.unindexed.drain(..) {
            for entry in entries {
                blobs.remove(&entry.id);
            }
        }
        self.flights.changed.notify_all();
        Ok(())
    }

    fn add(&mut self, frame: &EncodedFrame) -> Result<()> {
        let metadata = frame.kind != BlobKind::Data;
        let builder = if metadata {
            &mut self.metadata
        } else {
            &mut self.data
        };
        builder.add_frame(frame.kind, &frame.encoded, &frame.blobs);
        if builder.is_full() {
            if metadata {
                self.send_off_metadata()?;
            } else {
                self.send_off()?;
            }
        }
        self.index_if_due()
    }

    /// Stores what is left and writes the last index file.
    fn finish(&mut self) -> Result<()> {
        if !self.metadata.is_empty() {
            self.send_off_metadata()?;
        } else if !self.data.is_empty() {
            self.send_off()?;
        }
        self.land_all()?;
        self.write_index()
    }
}

/// Appends blobs to packs, stores them and writes index files. Returns the number of blobs.
///
/// File chunks fill data packs, which are uploaded by up to `Backend::preferred_concurrency`
/// threads while the next pack fills, so at most that many packs plus the two being filled
/// are held in memory. Uploads land in the order the packs were finished, and an index file
/// lists only landed packs, so no index file ever names a pack that is not stored. Trees and
/// chunk lists gather apart and are stored, with the chunks not yet sent off, in a pack put
/// only once every upload before it has landed (at the end, or when 16 MiB of them have
/// gathered): a stored tree's blobs are stored too, even when a killed run leaves packs that
/// no index file lists (`recover_orphan_packs` takes them all).
/// A failed upload stops the packer with its error once it is its turn to land; the uploads
/// still under way finish before the error is returned.
fn run_packer(
    repo: &Repository,
    blobs: Receiver<EncodedFrame>,
    flights: &Flights,
    progress: &Progress,
) -> Result<u64> {
    std::thread::scope(|scope| {
        let mut packer = Packer {
            repo,
            scope,
            flights,
            progress,
            data: PackBuilder::default(),
            metadata: PackBuilder::default(),
            in_flight: std::collections::VecDeque::new(),
            most_in_flight: repo.backend().preferred_concurrency().max(1),
            unindexed: Vec::new(),
            last_index: std::time::Instant::now(),
        };
        let mut count = 0u64;
        loop {
            match blobs.recv_timeout(UPLOAD_CHECK_INTERVAL) {
                Ok(frame) => {
                    packer.add(&frame)?;
                    count += frame.blobs.len() as u64;
                }
                // While no blob comes, finished uploads are still taken in and indexed.
                Err(RecvTimeoutError::Timeout) => packer.index_if_due()?,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        packer.finish()?;
        Ok(count)
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::repo::backend::{Backend, LocalBackend, ObjectInfo};
    use crate::repo::config::EncryptionMode;
    use crate::repo::layers::pass_through;
    use crate::repo::{InitOptions, Secret};
    use std::sync::Arc;
    use std::time::Duration;

    /// An unencrypted repository in `dir`, for unit tests.
    pub(crate) fn repository(dir: &std::path::Path) -> Repository {
        recording_repository(dir).0
    }

    /// A local backend that records every ranged read (object, offset): blob reads.
    pub(crate) struct RecordingBackend {
        inner: LocalBackend,
        pub(crate) reads: std::sync::Mutex<Vec<(String, u64)>>,
    }

    impl Backend for RecordingBackend {
        pass_through!(location, get, put, list, delete, exists);
        fn get_range(&self, name: &str, offset: u64, length: u64) -> Result<Vec<u8>> {
            self.reads.lock().unwrap().push((name.to_owned(), offset));
            self.inner.get_range(name, offset, length)
        }
    }

    /// An unencrypted repository in `dir` on a backend that records its blob reads.
    pub(crate) fn recording_repository(
        dir: &std::path::Path,
    ) -> (Repository, Arc<RecordingBackend>) {
        let inner = LocalBackend::new(dir.join("repo"));
        Repository::init(&inner, InitOptions::new(EncryptionMode::None)).unwrap();
        let backend = Arc::new(RecordingBackend {
            inner,
            reads: Default::default(),
        });
        let repo = Repository::open(backend.clone(), |_| Ok(Secret::None), &dir.join("cache"));
        (repo.unwrap(), backend)
    }

    #[test]
    fn packs_holding_lists_a_frame_whole_though_a_blob_alone_was_queued_between_its_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repository(dir.path());
        let codec = repo.codec();
        let blobs: Vec<Vec<u8>> = (0..3u8).map(|n| vec![n; 1000]).collect();
        let ids: Vec<BlobId> = blobs.iter().map(|b| BlobId(codec.id_of(b))).collect();
        // How prune moves a frame's survivor, a lone chunk, then another frame's survivor:
        // the lone chunk is queued first, the frame when it is finished.
        with_blob_sink(&repo, 4, &Progress::default(), |sink| {
            let mut frame = sink.shared_frame(BlobKind::Data);
            frame.add_taken(BlobKind::Data, ids[0], &blobs[0])?;
            let alone = codec.encode(&blobs[1], true);
            sink.send_encoded(ids[1], BlobKind::Data, alone, blobs[1].len())?;
            frame.add_taken(BlobKind::Data, ids[2], &blobs[2])?;
            frame.finish()
        })
        .unwrap();
        let packs = packs_holding(&repo, &ids).unwrap();
        let listed: Vec<_> = packs.into_iter().collect();
        let entries = &listed[0].1;
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].id, ids[1], "the lone chunk was written first");
        // Listed in the order moved, the frame's blobs were apart, and encoding panicked.
        crate::repo::index::encode_index_file(&listed, crate::repo::table::Layout::Frames);
    }

    #[test]
    fn a_blob_claimed_elsewhere_is_waited_for_until_queued_or_released() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repository(dir.path());
        let progress = Progress::default();
        let (queued, released) = (BlobId([1; 32]), BlobId([2; 32]));
        with_blob_sink(&repo, 4, &progress, |sink| {
            assert_eq!(sink.claim(&queued)?, Claim::Mine);
            assert_eq!(sink.claim(&released)?, Claim::Mine);
            std::thread::scope(|scope| {
                let waiter = scope.spawn(|| {
                    assert_eq!(sink.claim(&queued).unwrap(), Claim::Elsewhere);
                    let queued_then = sink.wait_queued(&queued).unwrap();
                    assert_eq!(sink.claim(&released).unwrap(), Claim::Elsewhere);
                    let released_then = sink.wait_queued(&released).unwrap();
                    (queued_then, released_then, sink.claim(&released).unwrap())
                });
                std::thread::sleep(Duration::from_millis(50));
                assert!(!waiter.is_finished(), "it waits while the claim is held");
                sink.send_encoded(queued, BlobKind::Data, vec![0, 7], 1)
                    .unwrap();
                std::thread::sleep(Duration::from_millis(50));
                sink.release(&[released]);
                let (queued_then, released_then, claim_after) = waiter.join().unwrap();
                assert!(queued_then, "queued by its owner");
                assert!(!released_then, "given up by its owner");
                assert_eq!(claim_after, Claim::Mine, "so the waiter stores it");
                sink.release(&[released]);
            });
            assert_eq!(sink.claim(&queued)?, Claim::Stored);
            Ok(())
        })
        .unwrap();
        assert!(repo.index().contains(&queued).unwrap());
        assert!(!repo.index().contains(&released).unwrap());
    }
}
