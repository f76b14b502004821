//! Reading many chunks with few requests, ahead of their use: what restore, sync into a
//! directory, `cat` and the mount's read-ahead read file content through.
//!
//! A `ChunkStream` takes chunks in the order they are needed and cuts them into windows of
//! at most `WINDOW_BYTES` (stored or decoded, whichever is more) and `WINDOW_CHUNKS` chunks.
//! In a window, chunks are located in the index and sorted by pack and offset; neighbours in
//! one pack, with gaps of at most `GAP_BYTES` between them, become one ranged read, and the
//! ranges of a window go to the backend in one `get_ranges` call (one request for a served
//! repository). Up to `Backend::preferred_concurrency` windows are read at once, on threads of
//! their own, while the caller takes the chunks of the oldest one, each decoded and checked
//! against its id, in the order it gave them. Memory is bounded by the windows under way.
//!
//! A chunk that cannot be read costs only itself: when a window's read fails because an
//! object is missing or short, each of its chunks is read alone, so the error names the
//! chunk (and the caller the file) it concerns, and its neighbours still arrive.
//!
//! Restore and sync into a directory, which know every place a round of files needs each
//! chunk, read by pack instead (`read_by_pack`): the chunks of the round are located and
//! grouped by pack, each blob once however many places need it; each pack's needed blobs,
//! sorted by offset, make stretches read in one streamed request each, from the first
//! needed blob to the last (a stretch ends only at a gap over `STRETCH_GAP_BYTES` or at
//! `STRETCH_BYTES`); several stretches are read at once, and each blob is decoded, checked
//! against its id and handed to every place that needs it as soon as its last byte arrives.
//! Memory is one blob's buffer per stretch under way (on a store that streams), not packs.

use crate::error::{Error, ErrorKind, Result};
use crate::id::{BlobId, PackId};
use crate::repo::Repository;
use crate::repo::backend::RangeRequest;
use crate::repo::index::BlobLocation;
use crate::repo::pack::{PACK_TARGET_BYTES, pack_object_name};
use crate::tree::{ChunkRef, locate_chunk};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::{Scope, ScopedJoinHandle};

/// Bytes of chunks one window holds, at most (the last chunk may go past it).
pub const WINDOW_BYTES: u64 = 8 << 20;

/// Chunks one window holds, at most.
const WINDOW_CHUNKS: usize = 4096;

/// Bytes between two neighbours in a pack that are read through rather than asked for as
/// two ranges; a window reads through at most `WINDOW_BYTES` of such gaps.
const GAP_BYTES: u64 = 64 << 10;

/// One chunk of a window: what the caller tagged it with, and where it is stored (or why it
/// cannot be read).
struct Planned<T> {
    tag: T,
    chunk: ChunkRef,
    location: Result<BlobLocation>,
}

/// A chunk read: its bytes, and the bytes it is stored as (what crossed from the backend
/// for it, gaps read through aside; its share of a frame it shares with others, so that the
/// shares of a frame's chunks add up to the frame once).
#[derive(Debug, Clone)]
pub struct ReadChunk {
    pub bytes: Vec<u8>,
    pub stored_length: u64,
}

/// A chunk's tag and the chunk, or its error.
pub type Delivered<T> = (T, Result<ReadChunk>);

/// The chunks of an iterator, read a window at a time ahead of their use (see the module
/// documentation). Yields every chunk it is given, in order, with its tag.
pub struct ChunkStream<'scope, 'env, T, I> {
    repo: &'env Repository,
    scope: &'scope Scope<'scope, 'env>,
    chunks: std::iter::Fuse<I>,
    reads: VecDeque<ScopedJoinHandle<'scope, Vec<Delivered<T>>>>,
    ready: std::vec::IntoIter<Delivered<T>>,
    windows_at_once: usize,
}

impl<'scope, 'env, T, I> ChunkStream<'scope, 'env, T, I>
where
    T: Send + 'scope,
    I: Iterator<Item = (T, ChunkRef)>,
{
    /// A stream of `chunks` of `repo`, whose reads run on threads of `scope`.
    pub fn new(
        repo: &'env Repository,
        scope: &'scope Scope<'scope, 'env>,
        chunks: impl IntoIterator<IntoIter = I>,
    ) -> Self {
        ChunkStream {
            repo,
            scope,
            chunks: chunks.into_iter().fuse(),
            reads: VecDeque::new(),
            ready: Vec::new().into_iter(),
            windows_at_once: repo.backend().preferred_concurrency().max(1),
        }
    }

    /// Starts reading windows until as many as the backend takes at once are under way.
    fn read_ahead(&mut self) {
        while self.reads.len() < self.windows_at_once {
            let window = self.next_window();
            if window.is_empty() {
                return;
            }
            let repo = self.repo;
            self.reads
                .push_back(self.scope.spawn(move || read_window(repo, window)));
        }
    }

    /// The next chunks, located, up to a window's bounds; empty when none are left. A
    /// frame several chunks share counts once, with each chunk's own bytes.
    fn next_window(&mut self) -> Vec<Planned<T>> {
        let mut window = Vec::new();
        let mut bytes = 0u64;
        let mut frames = HashSet::new();
        while bytes < WINDOW_BYTES && window.len() < WINDOW_CHUNKS {
            let Some((tag, chunk)) = self.chunks.next() else {
                break;
            };
            let location = locate_chunk(self.repo, &chunk);
            if let Ok(at) = &location {
                let (stored, raw) = (u64::from(at.entry.length), u64::from(at.entry.raw_length));
                bytes += match at.entry.is_alone() {
                    true => stored.max(raw),
                    false if frames.insert((at.pack, at.entry.offset)) => stored + raw,
                    false => raw,
                };
            }
            window.push(Planned {
                tag,
                chunk,
                location,
            });
        }
        window
    }
}

impl<'scope, 'env, T, I> Iterator for ChunkStream<'scope, 'env, T, I>
where
    T: Send + 'scope,
    I: Iterator<Item = (T, ChunkRef)>,
{
    type Item = Delivered<T>;

    fn next(&mut self) -> Option<Delivered<T>> {
        loop {
            self.read_ahead();
            if let Some(delivered) = self.ready.next() {
                return Some(delivered);
            }
            let read = self.reads.pop_front()?;
            self.ready = read.join().expect("window reads do not panic").into_iter();
        }
    }
}

/// A run of neighbouring chunks of one pack, read as one range: the indexes (into the
/// window) of the chunks it holds.
struct Span {
    range: RangeRequest,
    members: Vec<usize>,
}

/// Groups the located chunks of `window` into spans of neighbours, but for those whose
/// frame the repository holds decoded (`held[i]`), which need no read.
fn spans_of<T>(window: &[Planned<T>], held: &[bool]) -> Vec<Span> {
    let mut located: Vec<(usize, &BlobLocation)> = window
        .iter()
        .enumerate()
        .filter(|&(i, _)| !held[i])
        .filter_map(|(i, planned)| planned.location.as_ref().ok().map(|at| (i, at)))
        .collect();
    located.sort_by_key(|(_, at)| (at.pack, at.entry.offset));
    let mut spans: Vec<Span> = Vec::new();
    let mut gaps_read = 0u64;
    for (i, at) in located {
        let (start, length) = (u64::from(at.entry.offset), u64::from(at.entry.length));
        let name = pack_object_name(&at.pack);
        if let Some(span) = spans.last_mut().filter(|span| span.range.name == name) {
            let end = span.range.offset + span.range.length;
            let gap = start.saturating_sub(end);
            if gap <= GAP_BYTES && gaps_read + gap <= WINDOW_BYTES {
                gaps_read += gap;
                span.range.length = end.max(start + length) - span.range.offset;
                span.members.push(i);
                continue;
            }
        }
        spans.push(Span {
            range: RangeRequest {
                name,
                offset: start,
                length,
            },
            members: vec![i],
        });
    }
    spans
}

/// Reads and decodes the chunks of `window`, in its order. Chunks of a frame the repository
/// holds decoded are cut from it, not read again.
fn read_window<T>(repo: &Repository, window: Vec<Planned<T>>) -> Vec<Delivered<T>> {
    let held: Vec<bool> = window
        .iter()
        .map(|planned| (planned.location.as_ref()).is_ok_and(|at| repo.holds_frame(at)))
        .collect();
    let spans = spans_of(&window, &held);
    let ranges: Vec<RangeRequest> = spans.iter().map(|span| span.range.clone()).collect();
    let mut decoded: Vec<Option<Result<Vec<u8>>>> = window.iter().map(|_| None).collect();
    for (i, _) in held.iter().enumerate().filter(|(_, held)| **held) {
        let (chunk, at) = located(&window[i]);
        decoded[i] = Some(repo.read_blob_at(at, &chunk.id));
    }
    match repo.backend().get_ranges(&ranges) {
        Ok(parts) => {
            for (span, part) in spans.iter().zip(&parts) {
                for &i in &span.members {
                    let (chunk, at) = located(&window[i]);
                    let start = (u64::from(at.entry.offset) - span.range.offset) as usize;
                    let stored = part.get(start..start + at.entry.length as usize);
                    decoded[i] = Some(match stored {
                        Some(stored) => repo.decode_blob_at(at, &chunk.id, stored),
                        None => Err(Error::corrupt(&span.range.name, "short ranged read")),
                    });
                }
            }
        }
        // Which chunk a missing or short pack costs is found by reading each alone.
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::Corrupt) => {
            for &i in spans.iter().flat_map(|span| &span.members) {
                let (chunk, at) = located(&window[i]);
                decoded[i] = Some(repo.read_blob_at(at, &chunk.id));
            }
        }
        Err(e) => {
            let message = e.to_string();
            for &i in spans.iter().flat_map(|span| &span.members) {
                decoded[i] = Some(Err(Error::Network(format!(
                    "reading blob {}: {message}",
                    window[i].chunk.id
                ))));
            }
        }
    }
    window
        .into_iter()
        .zip(decoded)
        .map(|(planned, decoded)| match planned.location {
            Ok(at) => {
                let read = decoded.expect("every located chunk is read");
                let chunk = read.map(|bytes| ReadChunk {
                    bytes,
                    stored_length: at.entry.stored_share(),
                });
                (planned.tag, chunk)
            }
            Err(e) => (planned.tag, Err(e)),
        })
        .collect()
}

/// The chunk and location of a chunk known to be located.
fn located<T>(planned: &Planned<T>) -> (&ChunkRef, &BlobLocation) {
    let at = planned
        .location
        .as_ref()
        .expect("spans hold located chunks");
    (&planned.chunk, at)
}

/// Bytes between two needed blobs of a pack that a stretch reads through rather than ending
/// there and asking again: on a fast link about what one round trip could have carried,
/// and what a GET costs on a paying store in transfer (DESIGN.md, "Reading content").
const STRETCH_GAP_BYTES: u64 = 1 << 20;

/// Bytes one stretch asks for, at most: a pack and a half, so a whole pack is one request
/// and a backend that cannot stream holds no more than that.
const STRETCH_BYTES: u64 = PACK_TARGET_BYTES as u64 * 3 / 2;

/// One blob a round needs: where it is stored, and every place (an index into the round's
/// places) it goes to.
struct Need {
    at: BlobLocation,
    id: BlobId,
    places: Vec<usize>,
}

/// Needed blobs of one pack, by offset, read in one request from the first to the last.
struct Stretch {
    name: String,
    offset: u64,
    length: u64,
    needs: Vec<Need>,
}

/// Reads the chunks of `places` pack by pack (see the module documentation) with up to
/// `readers` stretches under way, and hands each chunk, or why it cannot be read, to
/// `deliver` with its place's tag: exactly once per place, from the reading threads, in no
/// particular order (a chunk with one place is handed over as decoded, not copied). Once
/// `stop` says so, the stretches not yet started are not read: their places get
/// `Error::Interrupted`.
pub fn read_by_pack<T: Sync>(
    repo: &Repository,
    places: Vec<(T, ChunkRef)>,
    readers: usize,
    stop: &(dyn Fn() -> bool + Sync),
    deliver: &(dyn Fn(&T, Result<ReadChunk>) + Sync),
) {
    let mut tags = Vec::with_capacity(places.len());
    let mut packs: Vec<(PackId, Vec<Need>)> = Vec::new();
    let mut pack_of: HashMap<PackId, usize> = HashMap::new();
    let mut need_of: HashMap<BlobId, (usize, usize)> = HashMap::new();
    for (place, (tag, chunk)) in places.into_iter().enumerate() {
        tags.push(tag);
        if let Some(&(pack, need)) = need_of.get(&chunk.id) {
            packs[pack].1[need].places.push(place);
            continue;
        }
        match locate_chunk(repo, &chunk) {
            Ok(at) => {
                let pack = *pack_of.entry(at.pack).or_insert_with(|| {
                    packs.push((at.pack, Vec::new()));
                    packs.len() - 1
                });
                let needs = &mut packs[pack].1;
                need_of.insert(chunk.id, (pack, needs.len()));
                needs.push(Need {
                    at,
                    id: chunk.id,
                    places: vec![place],
                });
            }
            Err(e) => deliver(&tags[place], Err(e)),
        }
    }
    drop(need_of);
    let stretches = stretches_of(packs);
    let next = AtomicUsize::new(0);
    let tags = &tags;
    std::thread::scope(|scope| {
        for _ in 0..readers.clamp(1, stretches.len().max(1)) {
            scope.spawn(|| {
                while let Some(stretch) = stretches.get(next.fetch_add(1, Ordering::Relaxed)) {
                    if stop() {
                        for need in &stretch.needs {
                            hand_over(need, Err(Error::Interrupted), tags, deliver);
                        }
                        continue;
                    }
                    read_stretch(repo, stretch, tags, deliver);
                }
            });
        }
    });
}

/// Cuts each pack's needed blobs, sorted by offset, into stretches; packs in the order
/// they were first needed.
fn stretches_of(packs: Vec<(PackId, Vec<Need>)>) -> Vec<Stretch> {
    let mut stretches: Vec<Stretch> = Vec::new();
    for (pack, mut needs) in packs {
        needs.sort_by_key(|need| need.at.entry.offset);
        let name = pack_object_name(&pack);
        let mut current: Option<Stretch> = None;
        for need in needs {
            let start = u64::from(need.at.entry.offset);
            let end = start + u64::from(need.at.entry.length);
            if let Some(stretch) = current.as_mut() {
                // Blobs sharing a frame need its bytes once.
                let last = stretch.needs.last().expect("a stretch holds a need");
                if last.at.entry.offset == need.at.entry.offset
                    && last.at.entry.length == need.at.entry.length
                {
                    stretch.needs.push(need);
                    continue;
                }
                let stretch_end = stretch.offset + stretch.length;
                // Blobs that overlap (an index no writer made) go to a request of their own.
                let joins = start >= stretch_end
                    && start - stretch_end <= STRETCH_GAP_BYTES
                    && end - stretch.offset <= STRETCH_BYTES;
                if joins {
                    stretch.length = end - stretch.offset;
                    stretch.needs.push(need);
                    continue;
                }
            }
            stretches.extend(current.replace(Stretch {
                name: name.clone(),
                offset: start,
                length: end - start,
                needs: vec![need],
            }));
        }
        stretches.extend(current);
    }
    stretches
}

/// Reads one stretch as it streams in, handing each blob over once its bytes are in.
/// When the read fails because the pack is missing or short, the blobs not yet handed
/// over are read alone, so each error names its blob.
fn read_stretch<T>(
    repo: &Repository,
    stretch: &Stretch,
    tags: &[T],
    deliver: &(dyn Fn(&T, Result<ReadChunk>) + Sync),
) {
    let needs = &stretch.needs;
    let mut next = 0;
    let mut position = stretch.offset;
    let mut stored = Vec::new();
    // The last frame read whole and where it starts: the blobs after the first in it are
    // cut from it.
    let mut frame: Option<(u64, Vec<u8>)> = None;
    let streamed = repo.backend().get_range_streamed(
        &stretch.name,
        stretch.offset,
        stretch.length,
        &mut |mut piece: &[u8]| {
            while let Some(need) = needs.get(next) {
                let start = u64::from(need.at.entry.offset);
                if let Some((_, bytes)) = frame.as_ref().filter(|(at, _)| *at == start) {
                    hand_over(
                        need,
                        repo.decode_blob_at(&need.at, &need.id, bytes),
                        tags,
                        deliver,
                    );
                    next += 1;
                    continue;
                }
                if piece.is_empty() {
                    break;
                }
                if position < start {
                    let skipped = (start - position).min(piece.len() as u64) as usize;
                    piece = &piece[skipped..];
                    position += skipped as u64;
                    continue;
                }
                let end = start + u64::from(need.at.entry.length);
                let taken = (end - position).min(piece.len() as u64) as usize;
                stored.extend_from_slice(&piece[..taken]);
                piece = &piece[taken..];
                position += taken as u64;
                if position == end {
                    let decoded = repo.decode_blob_at(&need.at, &need.id, &stored);
                    hand_over(need, decoded, tags, deliver);
                    let mut spare = frame.replace((start, std::mem::take(&mut stored)));
                    stored = spare.take().map(|(_, bytes)| bytes).unwrap_or_default();
                    stored.clear();
                    next += 1;
                }
            }
        },
    );
    let rest = &needs[next..];
    match streamed {
        Ok(()) if rest.is_empty() => {}
        Err(e) if !matches!(e.kind(), ErrorKind::NotFound | ErrorKind::Corrupt) => {
            let message = e.to_string();
            for need in rest {
                let error = Error::Network(format!("reading blob {}: {message}", need.id));
                hand_over(need, Err(error), tags, deliver);
            }
        }
        // A missing or short pack (or blobs of no length, which no stream ends): which blob
        // it costs is found by reading each alone.
        _ => {
            for need in rest {
                hand_over(need, repo.read_blob_at(&need.at, &need.id), tags, deliver);
            }
        }
    }
}

/// Hands a blob read (or its error) to every place that needs it.
fn hand_over<T>(
    need: &Need,
    read: Result<Vec<u8>>,
    tags: &[T],
    deliver: &(dyn Fn(&T, Result<ReadChunk>) + Sync),
) {
    let read = read.map(|bytes| ReadChunk {
        bytes,
        stored_length: need.at.entry.stored_share(),
    });
    let Some((&last, others)) = need.places.split_last() else {
        return;
    };
    for &place in others {
        deliver(
            &tags[place],
            read.as_ref()
                .map(ReadChunk::clone)
                .map_err(Error::duplicate),
        );
    }
    deliver(&tags[last], read);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::{BackupOptions, Progress};

    /// Backs `files` up into `repo` (from a directory in `dir`, file `i` named so that it
    /// sorts `i`-th) and returns every file's chunks tagged with its number.
    fn backed_up_chunks(
        repo: &Repository,
        dir: &std::path::Path,
        files: &[Vec<u8>],
    ) -> Vec<(usize, ChunkRef)> {
        let source = dir.join("source");
        std::fs::create_dir(&source).unwrap();
        for (i, bytes) in files.iter().enumerate() {
            std::fs::write(source.join(format!("f{i:05}")), bytes).unwrap();
        }
        let options = BackupOptions::new(vec![source]);
        let outcome = crate::backup::run(repo, &options, &Progress::default()).unwrap();
        let root = crate::tree::load_tree(repo, &outcome.checkpoint.tree).unwrap();
        let mut chunks = Vec::new();
        for (i, entry) in root.entries.iter().enumerate() {
            let crate::tree::EntryKind::File(content) = &entry.kind else {
                panic!("only files");
            };
            for chunk in crate::tree::file_chunks(repo, content).unwrap() {
                chunks.push((i, chunk));
            }
        }
        chunks
    }

    #[test]
    fn neighbours_in_a_pack_are_read_together_and_every_chunk_arrives_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let repo = crate::repo::writer::tests::repository(dir.path());
        let expected: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; 100 + usize::from(i)]).collect();
        let mut chunks = backed_up_chunks(&repo, dir.path(), &expected);
        // Each file twice, the second time backwards: order is the caller's, not the pack's.
        let backwards: Vec<_> = chunks.iter().rev().copied().collect();
        chunks.extend(backwards);
        let window: Vec<Planned<usize>> = chunks
            .iter()
            .map(|&(tag, chunk)| Planned {
                tag,
                chunk,
                location: locate_chunk(&repo, &chunk),
            })
            .collect();
        assert_eq!(
            spans_of(&window, &vec![false; window.len()]).len(),
            1,
            "one pack, one range"
        );
        let got: Vec<(usize, Vec<u8>)> = std::thread::scope(|scope| {
            ChunkStream::new(&repo, scope, chunks.clone())
                .map(|(tag, chunk)| (tag, chunk.unwrap().bytes))
                .collect()
        });
        let wanted: Vec<(usize, Vec<u8>)> = chunks
            .iter()
            .map(|&(i, _)| (i, expected[i].clone()))
            .collect();
        assert_eq!(got, wanted);
    }

    #[test]
    fn a_frame_counts_once_in_a_window_and_a_frame_held_decoded_is_not_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let (repo, backend) = crate::repo::writer::tests::recording_repository(dir.path());
        // 400 small files of 4 KiB that do not compress: one shared frame of 1.6 MB.
        let mut state = 1u64;
        let files: Vec<Vec<u8>> = (0..400)
            .map(|_| {
                (0..4096)
                    .map(|_| {
                        state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                        (state >> 56) as u8
                    })
                    .collect()
            })
            .collect();
        let chunks = backed_up_chunks(&repo, dir.path(), &files);
        let first = locate_chunk(&repo, &chunks[0].1).unwrap();
        assert!(!first.entry.is_alone() && first.entry.length > 1 << 20);
        std::thread::scope(|scope| {
            let mut stream = ChunkStream::new(&repo, scope, chunks.clone());
            // Counted per chunk, the frame filled the window after five chunks.
            let window = stream.next_window();
            assert_eq!(window.len(), chunks.len(), "one window for the whole frame");
            assert_eq!(spans_of(&window, &vec![false; window.len()]).len(), 1);
            assert!(!repo.holds_frame(&first));
            let read = read_window(&repo, window);
            assert!(read.iter().all(|(_, chunk)| chunk.is_ok()));
            assert!(repo.holds_frame(&first));
        });
        // Once the repository holds the frame decoded, a window reads nothing: the chunks
        // are cut from it.
        backend.reads.lock().unwrap().clear();
        let got: Vec<Vec<u8>> = std::thread::scope(|scope| {
            ChunkStream::new(&repo, scope, chunks.clone())
                .map(|(_, chunk)| chunk.unwrap().bytes)
                .collect()
        });
        assert_eq!(got.len(), 400);
        assert!(got.iter().all(|bytes| bytes.len() == 4096));
        assert_eq!(*backend.reads.lock().unwrap(), vec![]);
    }
}
