//! The decoded frames a repository keeps: shared frames (several small blobs compressed
//! and sealed together, docs/FORMAT.md §8) read lately, so the blobs of one frame cost one
//! read and one decoding whichever thread asks for them.
//!
//! Readers go through frames the way they were written (restore's stretches, a walk of the
//! mount, a sync's copies), touching a frame many times in a burst and then moving on, with a
//! few frames in use at once (a newer checkpoint's files interleave its own frames with an
//! older one's). The cache is therefore a plain least-recently-used list weighed by decoded
//! bytes: a scan-resistant policy would keep old frames and drop the one being read. A frame
//! missing from the cache is decoded by the first thread asking for it while the others
//! asking meanwhile wait for that decoding rather than reading and decoding it again.
//!
//! A frame dropped from the cache leaves its buffer to the next decoding (when no reader
//! holds it still): a fresh buffer of a few MiB costs the kernel a page fault and a cleared
//! page per 4 KiB, which cost a walk of the mount more than decoding did.

use crate::error::Result;
use crate::id::PackId;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Buffers of dropped frames kept for the next decodings, at most (beside the budget).
const SPARE_BUFFERS: usize = 2;

/// Frames kept at most, however small: lookups scan the list.
const FRAMES_KEPT: usize = 256;

/// A frame is known by its pack and its offset in it.
pub(crate) type FrameKey = (PackId, u32);

/// A decoded frame, shared by the cache and its readers.
pub(crate) type DecodedFrame = Arc<Vec<u8>>;

/// Recently decoded frames, the most recently used last, within a budget of bytes.
pub(crate) struct FrameCache {
    slots: Mutex<VecDeque<Slot>>,
    /// Buffers of frames dropped from the cache, for the next decodings.
    spare: Mutex<Vec<Vec<u8>>>,
    capacity_bytes: u64,
}

/// One frame's place: decoded once its first reader is done with it.
struct Slot {
    key: FrameKey,
    /// What the frame weighs: the decoded length its table records until it is decoded,
    /// then the room its buffer holds.
    bytes: Arc<AtomicU64>,
    frame: Arc<Mutex<Option<DecodedFrame>>>,
}

impl FrameCache {
    /// A cache keeping at most `capacity_bytes` of decoded frames (and always the last one).
    pub(crate) fn new(capacity_bytes: u64) -> Self {
        FrameCache {
            slots: Mutex::new(VecDeque::new()),
            spare: Mutex::new(Vec::new()),
            capacity_bytes,
        }
    }

    /// Frame `key`, whose decoded length is `bytes`: from the cache, or from `decode`, given
    /// a buffer to decode into (run by one thread at a time for one frame; a failure is not
    /// kept, so the next reader tries again and is told what is wrong).
    pub(crate) fn get_or_decode(
        &self,
        key: FrameKey,
        bytes: u64,
        decode: impl FnOnce(Vec<u8>) -> Result<Vec<u8>>,
    ) -> Result<DecodedFrame> {
        let (frame, weight) = self.slot(key, bytes);
        let mut frame = frame.lock().expect("not poisoned");
        if let Some(decoded) = frame.as_ref() {
            return Ok(decoded.clone());
        }
        let decoded = Arc::new(decode(self.spare_buffer(bytes))?);
        weight.store(decoded.capacity() as u64, Ordering::Relaxed);
        *frame = Some(decoded.clone());
        Ok(decoded)
    }

    /// Whether frame `key` is kept decoded, or being decoded (a reader asking for it then
    /// waits for that decoding rather than reading it).
    pub(crate) fn holds(&self, key: FrameKey) -> bool {
        let slots = self.slots.lock().expect("not poisoned");
        slots.iter().rev().any(|slot| {
            slot.key == key
                && match slot.frame.try_lock() {
                    Ok(frame) => frame.is_some(),
                    Err(std::sync::TryLockError::WouldBlock) => true,
                    Err(std::sync::TryLockError::Poisoned(_)) => false,
                }
        })
    }

    /// The slot of frame `key` (its frame and its weight), made the most recently used; a
    /// new one for a frame not kept, for which the least recently used frames beyond the
    /// budget make room.
    fn slot(
        &self,
        key: FrameKey,
        bytes: u64,
    ) -> (Arc<Mutex<Option<DecodedFrame>>>, Arc<AtomicU64>) {
        let mut slots = self.slots.lock().expect("not poisoned");
        if let Some(at) = slots.iter().rposition(|slot| slot.key == key) {
            let slot = slots.remove(at).expect("found");
            let found = (slot.frame.clone(), slot.bytes.clone());
            slots.push_back(slot);
            return found;
        }
        let made = (Arc::new(Mutex::new(None)), Arc::new(AtomicU64::new(bytes)));
        slots.push_back(Slot {
            key,
            bytes: made.1.clone(),
            frame: made.0.clone(),
        });
        let mut kept: u64 = slots
            .iter()
            .map(|slot| slot.bytes.load(Ordering::Relaxed))
            .sum();
        while (kept > self.capacity_bytes || slots.len() > FRAMES_KEPT) && slots.len() > 1 {
            let oldest = slots.pop_front().expect("more than one");
            // A weight may have grown since the sum (a decoding finished meanwhile).
            kept = kept.saturating_sub(oldest.bytes.load(Ordering::Relaxed));
            self.keep_buffer(oldest);
        }
        made
    }

    /// A kept buffer for a frame of `bytes`, when one has the room and not much more (a
    /// small frame in a large buffer would weigh the buffer); else a new one.
    fn spare_buffer(&self, bytes: u64) -> Vec<u8> {
        let mut spare = self.spare.lock().expect("not poisoned");
        let fits = |buffer: &Vec<u8>| (bytes..=2 * bytes).contains(&(buffer.capacity() as u64));
        match spare.iter().position(fits) {
            Some(at) => spare.swap_remove(at),
            None => Vec::new(),
        }
    }

    /// Keeps the buffer of a frame dropped from the cache for a later decoding, unless a
    /// reader still holds the frame or enough buffers are kept.
    fn keep_buffer(&self, dropped: Slot) {
        let Ok(frame) = Arc::try_unwrap(dropped.frame) else {
            return;
        };
        let decoded = frame.into_inner().ok().flatten();
        if let Some(buffer) = decoded.and_then(|decoded| Arc::try_unwrap(decoded).ok()) {
            let mut spare = self.spare.lock().expect("not poisoned");
            if spare.len() == SPARE_BUFFERS {
                spare.remove(0);
            }
            spare.push(buffer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn key(n: u8) -> FrameKey {
        (PackId([n; 32]), u32::from(n))
    }

    /// Frame `n`, 100 bytes of `n`, from `cache`, counting the decodings.
    fn frame_of_100(cache: &FrameCache, decodings: &AtomicUsize, n: u8) -> DecodedFrame {
        let decode = |_| {
            decodings.fetch_add(1, Ordering::Relaxed);
            Ok(vec![n; 100])
        };
        cache.get_or_decode(key(n), 100, decode).unwrap()
    }

    #[test]
    fn the_least_recently_used_frames_go_first_and_a_frame_in_use_stays() {
        let cache = FrameCache::new(3 * 100);
        let decodings = AtomicUsize::new(0);
        let get = |n: u8| frame_of_100(&cache, &decodings, n);
        // A scan over five frames, each read in a burst, with frame 0 read throughout: a
        // scan-resistant cache would keep the first frames and decode each new one again.
        for n in 1..=5 {
            for _ in 0..3 {
                assert_eq!(*get(n), vec![n; 100]);
                assert_eq!(*get(0), vec![0; 100]);
            }
        }
        assert_eq!(
            decodings.load(Ordering::Relaxed),
            6,
            "each frame decoded once"
        );
        get(1);
        assert_eq!(decodings.load(Ordering::Relaxed), 7, "frame 1 was dropped");
        get(5);
        assert_eq!(decodings.load(Ordering::Relaxed), 7, "frame 5 was kept");
    }

    #[test]
    fn a_frame_is_decoded_once_however_many_threads_ask_and_a_failure_is_not_kept() {
        let cache = FrameCache::new(1 << 20);
        let decodings = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    let frame = cache
                        .get_or_decode(key(1), 10, |_| {
                            decodings.fetch_add(1, Ordering::Relaxed);
                            std::thread::sleep(std::time::Duration::from_millis(50));
                            Ok(vec![1; 10])
                        })
                        .unwrap();
                    assert_eq!(*frame, vec![1; 10]);
                });
            }
        });
        assert_eq!(decodings.load(Ordering::Relaxed), 1);
        let failed = cache.get_or_decode(key(2), 10, |_| Err(Error::corrupt("frame", "broken")));
        assert!(failed.is_err());
        let again = cache
            .get_or_decode(key(2), 10, |_| Ok(vec![2; 10]))
            .unwrap();
        assert_eq!(*again, vec![2; 10]);
    }

    #[test]
    fn a_frame_heavier_than_the_budget_is_still_kept_until_the_next() {
        let cache = FrameCache::new(10);
        let decodings = AtomicUsize::new(0);
        let get = |n: u8| frame_of_100(&cache, &decodings, n);
        get(1);
        get(1);
        assert_eq!(decodings.load(Ordering::Relaxed), 1);
        get(2);
        get(1);
        assert_eq!(decodings.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn a_dropped_frame_leaves_its_buffer_to_the_next_decoding_unless_a_reader_holds_it() {
        let cache = FrameCache::new(150);
        let first = cache
            .get_or_decode(key(1), 100, |_| Ok(vec![1; 100]))
            .unwrap();
        let given = Mutex::new(Vec::new());
        let get = |n: u8| {
            cache
                .get_or_decode(key(n), 100, |buffer| {
                    given.lock().unwrap().push(buffer.capacity());
                    let mut buffer = buffer;
                    buffer.clear();
                    buffer.resize(100, n);
                    Ok(buffer)
                })
                .unwrap()
        };
        // Frame 1 is dropped for frame 2 while its reader holds it: nothing to reuse.
        assert_eq!(*get(2), vec![2; 100]);
        drop(first);
        // Frame 2 is dropped for frame 3 with no reader: frame 3 is decoded into its buffer.
        assert_eq!(*get(3), vec![3; 100]);
        assert_eq!(*given.lock().unwrap(), vec![0, 100]);
    }

    #[test]
    fn small_frames_are_kept_to_a_count_and_a_buffer_goes_only_to_a_frame_of_its_size() {
        let cache = FrameCache::new(1 << 30);
        let decodings = AtomicUsize::new(0);
        let given = Mutex::new(Vec::new());
        let get = |n: u16, bytes: u64| {
            let key = (PackId([1; 32]), u32::from(n));
            cache
                .get_or_decode(key, bytes, |buffer| {
                    decodings.fetch_add(1, Ordering::Relaxed);
                    given.lock().unwrap().push(buffer.capacity());
                    Ok(vec![0; bytes as usize])
                })
                .unwrap()
        };
        for n in 0..=FRAMES_KEPT as u16 {
            get(n, 1000);
        }
        // Frame 0 was dropped for the count, not the bytes, and leaves its buffer: too large
        // for a frame of 10 bytes, given to one of 1,000.
        get(0, 1000);
        assert_eq!(decodings.load(Ordering::Relaxed), FRAMES_KEPT + 2);
        given.lock().unwrap().clear();
        get(1000, 10);
        get(1001, 1000);
        assert_eq!(*given.lock().unwrap(), vec![0, 1000]);
    }
}
