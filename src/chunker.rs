//! Content-defined chunking with FastCDC (2020). The same bytes always give the same chunks,
//! so an insertion in a large file changes only the chunks around it. Parameters are per
//! repository; in encrypted repositories the gear table is keyed by a secret seed so chunk
//! lengths do not reveal content. Streaming reads into blocks of twice the maximum chunk
//! size (`read_blocks`), a few per worker whatever the size of the file, on page boundaries
//! (as reads around the page cache need), one block ahead of the cutting.

use crate::error::{Error, Result};
use crate::fs::uncached::DIRECT_IO_ALIGN;
use crate::read_blocks::{Block, Chunk, ReadBlocks, fill};
use fastcdc::v2020::{Normalization, cut_gear, get_gear_with_seed, select_masks};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::io::Read;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The largest chunk any valid chunker configuration cuts (FastCDC's maximum `max_bytes`),
/// and so the largest data blob a reader accepts.
pub(crate) const MAX_CHUNK_BYTES: u32 = fastcdc::v2020::MAXIMUM_MAX as u32;

/// Chunk size bounds in bytes, stored in the repository config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    pub min_bytes: u32,
    pub avg_bytes: u32,
    pub max_bytes: u32,
}

impl Default for ChunkerParams {
    fn default() -> Self {
        ChunkerParams {
            min_bytes: 512 * 1024,
            avg_bytes: 1024 * 1024,
            max_bytes: 8 * 1024 * 1024,
        }
    }
}

/// The smallest and largest minimum chunk size a repository may use, in bytes.
pub(crate) const MIN_BYTES_RANGE: RangeInclusive<u32> = 1024..=1024 * 1024;
/// The smallest and largest average chunk size a repository may use, in bytes.
pub(crate) const AVG_BYTES_RANGE: RangeInclusive<u32> = 4 * 1024..=4 * 1024 * 1024;
/// The smallest and largest maximum chunk size a repository may use, in bytes.
pub(crate) const MAX_BYTES_RANGE: RangeInclusive<u32> = 16 * 1024..=16 * 1024 * 1024;

impl ChunkerParams {
    /// Refuses sizes that are unordered, odd, or outside cairn's bounds. The upper bounds are
    /// FastCDC's and keep a worker's read blocks small; the lower ones are cairn's own: a config
    /// from hostile storage must not make every file thousands of tiny blobs, each with its
    /// index entry, cache entry and seal (invariant 7).
    pub fn validate(&self) -> Result<()> {
        let (min, avg, max) = (self.min_bytes, self.avg_bytes, self.max_bytes);
        let in_range = MIN_BYTES_RANGE.contains(&min)
            && AVG_BYTES_RANGE.contains(&avg)
            && MAX_BYTES_RANGE.contains(&max);
        let even = min % 2 == 0 && avg % 2 == 0 && max % 2 == 0;
        if in_range && even && min <= avg && avg <= max {
            Ok(())
        } else {
            Err(Error::InvalidInput(format!(
                "chunker sizes {min}/{avg}/{max} (min/avg/max bytes) are out of bounds: cairn \
                 needs even sizes, min <= avg <= max, min in {}..={}, avg in {}..={} and max \
                 in {}..={}",
                MIN_BYTES_RANGE.start(),
                MIN_BYTES_RANGE.end(),
                AVG_BYTES_RANGE.start(),
                AVG_BYTES_RANGE.end(),
                MAX_BYTES_RANGE.start(),
                MAX_BYTES_RANGE.end(),
            )))
        }
    }
}

/// A FastCDC chunker with precomputed masks and gear tables.
pub struct Chunker {
    params: ChunkerParams,
    mask_s: u64,
    mask_l: u64,
    gear: Cow<'static, [u64]>,
    gear_ls: Cow<'static, [u64]>,
}

impl Chunker {
    pub fn new(params: ChunkerParams, seed: u64) -> Result<Self> {
        params.validate()?;
        let (mask_s, mask_l) = select_masks(params.avg_bytes as usize, Normalization::Level1);
        let (gear, gear_ls) = get_gear_with_seed(seed);
        Ok(Chunker {
            params,
            mask_s,
            mask_l,
            gear,
            gear_ls,
        })
    }

    pub fn params(&self) -> ChunkerParams {
        self.params
    }

    /// Length of the first chunk of `data`. A length short of `data`'s is where the chunk
    /// ends whatever follows (FastCDC decides each cut from the bytes before it); `data`'s
    /// whole length is the chunk's only at `max_bytes` or at the end of the input.
    fn first_chunk_len(&self, data: &[u8]) -> usize {
        let (_, len) = cut_gear(
            data,
            self.params.min_bytes as usize,
            self.params.avg_bytes as usize,
            self.params.max_bytes as usize,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
            &self.gear,
            &self.gear_ls,
        );
        len
    }

    /// The length of every chunk cut inside a long run of zeros. The gear hash of a chunk
    /// starts at its `min_bytes`-th byte, so over zeros it runs through the same values in
    /// every such chunk and cuts at the same place: the interior of a hole is chunks of this
    /// one length, with one id.
    pub fn zero_run_chunk_len(&self) -> usize {
        self.first_chunk_len(&vec![0; self.params.max_bytes as usize + 1])
    }

    /// The chunks of an in-memory buffer.
    pub fn chunks<'a>(&'a self, mut data: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        std::iter::from_fn(move || {
            if data.is_empty() {
                return None;
            }
            let (chunk, rest) = data.split_at(self.first_chunk_len(data));
            data = rest;
            Some(chunk)
        })
    }

    /// Reads `reader` to its end and calls `on_chunk` with each chunk in order; returns the
    /// bytes read. A stream longer than one block is read a block ahead on a thread of its
    /// own while this one cuts, into `blocks` (kept for the caller's next stream). Every
    /// read until a short one (the stream's end) starts and ends on a page boundary in
    /// memory (and so in the file), as reads around the page cache must (`fs::uncached`).
    pub fn for_each_chunk<R: Read + Send, E>(
        &self,
        reader: R,
        blocks: &ReadBlocks,
        mut on_chunk: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<u64, E>
    where
        E: From<std::io::Error>,
    {
        self.for_each_marked_chunk(reader, blocks, |chunk, _| on_chunk(chunk))
    }

    /// Like [`Chunker::for_each_chunk`], handing out each chunk as a range of its block
    /// (which the chunk keeps) and telling `on_chunk` also whether it is known to be the
    /// stream's last (`true` once the reader has said it is at its end).
    pub fn for_each_marked_chunk<R: Read + Send, E>(
        &self,
        mut reader: R,
        blocks: &ReadBlocks,
        on_chunk: impl FnMut(&Chunk, bool) -> Result<(), E>,
    ) -> Result<u64, E>
    where
        E: From<std::io::Error>,
    {
        // A block holds the unfinished chunk the one before ended with (shorter than the
        // largest chunk), then what is read into it.
        let carry = (self.params.max_bytes as usize).next_multiple_of(DIRECT_IO_ALIGN);
        let mut first = blocks.take(carry, carry);
        let (read, eof) = fill(&mut reader, &mut first.area_mut()[carry..])?;
        let first = (first, read, eof);
        if eof {
            return self.cut_blocks(first, carry, || unreachable!("read to its end"), on_chunk);
        }
        let cutting_stopped = AtomicBool::new(false);
        let stopped = &cutting_stopped;
        std::thread::scope(|scope| {
            let (read_tx, read_rx) = crossbeam_channel::bounded(0);
            let mut reading = Some(scope.spawn(move || {
                let mut reader = UntilCuttingStops { reader, stopped };
                loop {
                    let mut block = blocks.take(carry, carry);
                    let read = fill(&mut reader, &mut block.area_mut()[carry..]);
                    let more = matches!(read, Ok((_, false)));
                    // The cutter stops listening when it fails.
                    if read_tx.send((block, read)).is_err() || !more {
                        break;
                    }
                }
            }));
            let next = || match read_rx.recv() {
                Ok((block, read)) => read.map(|(read, eof)| (block, read, eof)),
                // The reading thread sends to the stream's end or failure, unless it panicked.
                Err(_) => match reading.take().expect("joined once").join() {
                    Err(panic) => std::panic::resume_unwind(panic),
                    Ok(()) => unreachable!("the reading thread sends to the stream's end"),
                },
            };
            // Set however the cutting ends, a panic in `on_chunk` among the ways.
            let cutting_ended = SetWhenDropped(stopped);
            let cut = self.cut_blocks(first, carry, next, on_chunk);
            // The reading thread fails its next read, or finds no one listening, and ends;
            // a panic of its own is the caller's, whatever the cutting returned.
            drop(cutting_ended);
            drop(read_rx);
            if let Some(Err(panic)) = reading.take().map(|thread| thread.join()) {
                std::panic::resume_unwind(panic);
            }
            cut
        })
    }

    /// Cuts the blocks of one stream, the first given and each next one from `next` (with
    /// the bytes read into it after `carry` and whether the stream ended there), into
    /// chunks for `on_chunk`.
    fn cut_blocks<E: From<std::io::Error>>(
        &self,
        (first, read, mut eof): (Block, usize, bool),
        carry: usize,
        mut next: impl FnMut() -> std::io::Result<(Block, usize, bool)>,
        mut on_chunk: impl FnMut(&Chunk, bool) -> Result<(), E>,
    ) -> Result<u64, E> {
        let max = self.params.max_bytes as usize;
        let mut block = Arc::new(first);
        let (mut start, mut end, mut total) = (carry, carry + read, 0u64);
        loop {
            let available = &block.area()[start..end];
            let len = self.first_chunk_len(available);
            // A cut before the end of what was read is where it would be with more; one at
            // the end is final only at the largest size or the stream's end. Taking the next
            // block only when a chunk cannot be cut keeps what moves to it to part of a chunk.
            if len < available.len() || available.len() >= max || eof {
                if len == 0 {
                    return Ok(total);
                }
                let chunk = Chunk::new(block.clone(), start..start + len);
                on_chunk(&chunk, eof && start + len == end)?;
                start += len;
                total += len as u64;
                continue;
            }
            let (mut following, read, ended) = next()?;
            let left = end - start;
            following.area_mut()[carry - left..carry].copy_from_slice(available);
            block = Arc::new(following);
            (start, end, eof) = (carry - left, carry + read, ended);
        }
    }
}

/// Sets its flag when dropped, by a return or by unwinding.
struct SetWhenDropped<'a>(&'a AtomicBool);

impl Drop for SetWhenDropped<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The stream as the thread reading ahead sees it: failing once the cutting has stopped, so
/// that thread ends within a read instead of first filling its block from a slow or
/// throttled stream.
struct UntilCuttingStops<'a, R> {
    reader: R,
    stopped: &'a AtomicBool,
}

impl<R: Read> Read for UntilCuttingStops<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.stopped.load(Ordering::Relaxed) {
            return Err(std::io::Error::other("the cutting stopped"));
        }
        self.reader.read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn small_chunker() -> Chunker {
        let params = ChunkerParams {
            min_bytes: 1024,
            avg_bytes: 4096,
            max_bytes: 16384,
        };
        Chunker::new(params, 7).unwrap()
    }

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (state >> 33) as u8
            })
            .collect()
    }

    /// Hands out at most three pages per read and counts the reads before its end whose
    /// buffer did not start and end on a page boundary (the one after the short last read
    /// cannot).
    struct PageReader<'a> {
        data: &'a [u8],
        unaligned_reads: usize,
    }

    impl Read for PageReader<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let page = DIRECT_IO_ALIGN;
            let aligned =
                (buf.as_ptr() as usize).is_multiple_of(page) && buf.len().is_multiple_of(page);
            if !aligned && !self.data.is_empty() {
                self.unaligned_reads += 1;
            }
            let n = buf.len().min(3 * page).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn reads_start_and_end_on_page_boundaries_and_cut_as_in_memory() {
        let chunker = small_chunker();
        let data = pseudo_random(300_000, 9);
        let mut reader = PageReader {
            data: &data,
            unaligned_reads: 0,
        };
        let mut chunks = Vec::new();
        chunker
            .for_each_chunk(&mut reader, &ReadBlocks::default(), |chunk| {
                chunks.push(chunk.to_vec());
                Ok::<_, std::io::Error>(())
            })
            .unwrap();
        assert_eq!(reader.unaligned_reads, 0);
        let in_memory: Vec<Vec<u8>> = chunker.chunks(&data).map(<[u8]>::to_vec).collect();
        assert!(in_memory.len() > 20);
        assert_eq!(chunks, in_memory);
    }

    #[test]
    fn every_chunk_inside_a_run_of_zeros_has_the_zero_run_length() {
        let chunker = small_chunker();
        let mut data = pseudo_random(5000, 1);
        data.extend(std::iter::repeat_n(0, 200_000));
        data.extend(pseudo_random(7000, 2));
        let zero_run = chunker.zero_run_chunk_len();
        let zero_chunks: Vec<usize> = chunker
            .chunks(&data)
            .filter(|c| c.iter().all(|&b| b == 0))
            .map(<[u8]>::len)
            .collect();
        assert!(zero_chunks.len() > 5, "{zero_chunks:?}");
        assert!(
            zero_chunks.iter().all(|&len| len == zero_run),
            "{zero_chunks:?}"
        );
    }

    fn streamed(chunker: &Chunker, data: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        chunker
            .for_each_chunk::<_, std::io::Error>(data, &ReadBlocks::default(), |c| {
                out.push(c.to_vec());
                Ok(())
            })
            .unwrap();
        out
    }

    /// Reads `good` bytes, then fails.
    struct FailingReader {
        good: usize,
    }

    impl Read for FailingReader {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.good == 0 {
                return Err(std::io::Error::other("the disk failed"));
            }
            let n = buf.len().min(self.good);
            buf[..n].fill(7);
            self.good -= n;
            Ok(n)
        }
    }

    #[test]
    fn a_read_failing_ahead_of_the_cutting_or_a_cut_refused_ends_the_stream_with_its_error() {
        let chunker = small_chunker();
        let blocks = ReadBlocks::default();
        // The first block reads whole; the failure comes on the thread reading ahead.
        let mut cut = 0;
        let failed = chunker.for_each_chunk(FailingReader { good: 100_000 }, &blocks, |c| {
            cut += c.len();
            Ok::<_, std::io::Error>(())
        });
        assert_eq!(failed.unwrap_err().to_string(), "the disk failed");
        assert!((16384..100_000).contains(&cut), "{cut}");
        // The cutter gives up while the thread still reads: it stops reading.
        let data = pseudo_random(1 << 20, 3);
        let mut chunks = 0;
        let refused = chunker.for_each_chunk(&data[..], &blocks, |_| {
            chunks += 1;
            match chunks {
                3 => Err(std::io::Error::other("interrupted")),
                _ => Ok(()),
            }
        });
        assert_eq!(refused.unwrap_err().to_string(), "interrupted");
        assert_eq!(chunks, 3);
    }

    #[test]
    fn a_panic_on_the_thread_reading_ahead_is_the_callers_panic() {
        /// Reads `good` bytes, then panics.
        struct PanickingReader {
            good: usize,
        }
        impl Read for PanickingReader {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                assert!(self.good > 0, "the reader's own panic");
                let n = buf.len().min(self.good);
                buf[..n].fill(1);
                self.good -= n;
                Ok(n)
            }
        }
        let chunker = small_chunker();
        let blocks = ReadBlocks::default();
        let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            chunker.for_each_chunk(PanickingReader { good: 100_000 }, &blocks, |_| {
                Ok::<_, std::io::Error>(())
            })
        }))
        .unwrap_err();
        assert_eq!(
            panic.downcast_ref::<&str>(),
            Some(&"the reader's own panic")
        );
    }

    /// Where a test holds the thread reading ahead: it waits (`waiting`) at its first read
    /// past the first block until `released`, then counts its reads.
    #[derive(Default)]
    struct Gate {
        waiting: AtomicBool,
        released: AtomicBool,
        reads_after_release: std::sync::atomic::AtomicUsize,
    }

    impl Gate {
        /// Releases the reader once it waits, as a cutter that gives up on the first chunk.
        fn release_once_waiting(&self) {
            while !self.waiting.load(Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            self.released.store(true, Ordering::Relaxed);
        }
    }

    /// An endless stream of zeros, a page per read, held at `gate` past the first block of
    /// the default chunker; after release each read takes a millisecond, or panics.
    struct HeldBackReader<'a> {
        served: usize,
        gate: &'a Gate,
        panics_after_release: bool,
    }

    impl Read for HeldBackReader<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.served >= ChunkerParams::default().max_bytes as usize {
                self.gate.waiting.store(true, Ordering::Relaxed);
                while !self.gate.released.load(Ordering::Relaxed) {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                assert!(!self.panics_after_release, "the reader's own panic");
                self.gate
                    .reads_after_release
                    .fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            let n = buf.len().min(DIRECT_IO_ALIGN);
            buf[..n].fill(0);
            self.served += n;
            Ok(n)
        }
    }

    /// Cuts a held-back stream whose cutter gives up on the first chunk with `give_up` (an
    /// error returned or a panic); returns what the cutting returned, or its panic.
    fn cut_held_back(
        gate: &Gate,
        panics_after_release: bool,
        give_up: impl Fn() -> std::io::Error,
    ) -> std::thread::Result<std::io::Result<u64>> {
        let chunker = Chunker::new(ChunkerParams::default(), 7).unwrap();
        let reader = HeldBackReader {
            served: 0,
            gate,
            panics_after_release,
        };
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            chunker.for_each_chunk(reader, &ReadBlocks::default(), |_| {
                gate.release_once_waiting();
                Err(give_up())
            })
        }))
    }

    /// Fewer than half a block's reads after the release: the thread reading ahead stopped
    /// within a read, instead of filling its block first.
    fn assert_reading_stopped_early(gate: &Gate) {
        let reads = gate.reads_after_release.load(Ordering::Relaxed);
        let pages_per_block = ChunkerParams::default().max_bytes as usize / DIRECT_IO_ALIGN;
        assert!(
            reads < pages_per_block / 2,
            "{reads} reads of {pages_per_block} after the cutting stopped"
        );
    }

    #[test]
    fn the_thread_reading_ahead_stops_within_a_read_once_the_cutting_stops() {
        let gate = Gate::default();
        let refused = cut_held_back(&gate, false, || std::io::Error::other("interrupted"));
        assert_eq!(refused.unwrap().unwrap_err().to_string(), "interrupted");
        assert_reading_stopped_early(&gate);
    }

    #[test]
    fn a_panic_while_cutting_stops_the_thread_reading_ahead_within_a_read() {
        let gate = Gate::default();
        let panic = cut_held_back(&gate, false, || panic!("the cutter's panic")).unwrap_err();
        assert_eq!(panic.downcast_ref::<&str>(), Some(&"the cutter's panic"));
        assert_reading_stopped_early(&gate);
    }

    #[test]
    fn a_reading_panic_after_the_cutting_failed_is_still_the_callers_panic() {
        let gate = Gate::default();
        let panic = cut_held_back(&gate, true, || std::io::Error::other("interrupted"));
        let panic = panic.unwrap_err();
        assert_eq!(
            panic.downcast_ref::<&str>(),
            Some(&"the reader's own panic")
        );
    }

    proptest! {
        #[test]
        fn chunks_concatenate_to_the_input_within_bounds(len in 0usize..100_000, seed: u64) {
            let chunker = small_chunker();
            let data = pseudo_random(len, seed);
            let chunks = streamed(&chunker, &data);
            prop_assert_eq!(chunks.concat(), data.clone());
            for (i, c) in chunks.iter().enumerate() {
                prop_assert!(c.len() <= 16384);
                prop_assert!(c.len() >= 1024 || i + 1 == chunks.len());
            }
            let in_memory: Vec<Vec<u8>> = chunker.chunks(&data).map(|c| c.to_vec()).collect();
            prop_assert_eq!(in_memory, chunks);
        }

        #[test]
        fn only_the_last_chunk_is_marked_last(len in 0usize..100_000, seed: u64) {
            let chunker = small_chunker();
            let data = pseudo_random(len, seed);
            let mut marks = Vec::new();
            chunker
                .for_each_marked_chunk::<_, std::io::Error>(&data[..], &ReadBlocks::default(), |_, last| {
                    marks.push(last);
                    Ok(())
                })
                .unwrap();
            let (final_mark, earlier) = marks.split_last().map_or((false, &[][..]), |(l, e)| (*l, e));
            prop_assert!(earlier.iter().all(|last| !last), "{:?}", marks);
            // A stream shorter than the maximum chunk is read to its end before it is cut.
            if len > 0 && len < 16384 {
                prop_assert!(final_mark);
            }
        }

        #[test]
        fn boundaries_survive_an_insertion(seed: u64, at in 0usize..200_000, insert in proptest::collection::vec(any::<u8>(), 1..100)) {
            let chunker = small_chunker();
            let data = pseudo_random(200_000, seed);
            let mut edited = data[..at].to_vec();
            edited.extend_from_slice(&insert);
            edited.extend_from_slice(&data[at..]);
            let before: std::collections::HashSet<Vec<u8>> = streamed(&chunker, &data).into_iter().collect();
            let after = streamed(&chunker, &edited);
            let mut offset = 0;
            let mut changed_bytes = 0;
            for chunk in &after {
                let end = offset + chunk.len();
                if !before.contains(chunk) {
                    // Chunks before the edit never change. FastCDC rolls two bytes per step,
                    // so a cut right at the edit may see the first inserted byte.
                    prop_assert!(end >= at, "chunk {}..{} changed (edit at {})", offset, end, at);
                    changed_bytes += chunk.len();
                }
                offset = end;
            }
            // Past the edit the chunker falls back in step within a few chunks; a fixed-size
            // chunker would change everything after the edit.
            prop_assert!(changed_bytes <= insert.len() + 8 * 16384, "{} bytes changed", changed_bytes);
        }
    }

    #[test]
    fn seed_changes_boundaries() {
        let data = pseudo_random(100_000, 1);
        let params = small_chunker().params();
        let a: Vec<usize> = Chunker::new(params, 1)
            .unwrap()
            .chunks(&data)
            .map(<[u8]>::len)
            .collect();
        let b: Vec<usize> = Chunker::new(params, 2)
            .unwrap()
            .chunks(&data)
            .map(<[u8]>::len)
            .collect();
        assert_ne!(a, b);
    }

    #[test]
    fn rejects_bad_params() {
        let params = ChunkerParams {
            min_bytes: 10,
            avg_bytes: 5,
            max_bytes: 1,
        };
        assert!(Chunker::new(params, 0).is_err());
        let sizes = |min_bytes, avg_bytes, max_bytes| ChunkerParams {
            min_bytes,
            avg_bytes,
            max_bytes,
        };
        assert!(sizes(64, 256, 1024).validate().is_err(), "tiny");
        assert!(sizes(8192, 4096, 65536).validate().is_err(), "unordered");
        assert!(sizes(1024, 4096, 32 << 20).validate().is_err(), "huge");
        assert!(sizes(1024, 4097, 16384).validate().is_err(), "odd");
        assert!(sizes(1024, 4096, 16384).validate().is_ok());
        assert!(ChunkerParams::default().validate().is_ok());
    }
}
