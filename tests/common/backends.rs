//! Backends for tests that call the library: `MemoryBackend`, a store held in memory, and
//! `Instrumented`, which wraps any backend to count what is asked of it and to inject
//! faults (a full disk after a number of puts or deletes; pack uploads held until two are
//! under way at once, as on a remote store).

use cairn::error::{Error, Missing, Result};
use cairn::repo::backend::{Backend, ObjectInfo, RangeRequest};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Objects held in memory, as a store holds them: whole, under their names.
#[derive(Default)]
pub struct MemoryBackend {
    objects: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl MemoryBackend {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The names of every object held.
    pub fn names(&self) -> Vec<String> {
        self.objects.lock().unwrap().keys().cloned().collect()
    }
}

fn missing(name: &str) -> Error {
    Error::not_found(
        Missing::Object {
            name: name.to_owned(),
        },
        format!("memory: no object {name}"),
    )
}

impl Backend for MemoryBackend {
    fn location(&self) -> String {
        "memory".into()
    }
    fn get(&self, name: &str) -> Result<Vec<u8>> {
        let objects = self.objects.lock().unwrap();
        objects.get(name).cloned().ok_or_else(|| missing(name))
    }
    fn get_range(&self, name: &str, offset: u64, length: u64) -> Result<Vec<u8>> {
        let objects = self.objects.lock().unwrap();
        let object = objects.get(name).ok_or_else(|| missing(name))?;
        let end = offset.saturating_add(length);
        if end > object.len() as u64 {
            return Err(Error::corrupt(name, "the range runs past the object's end"));
        }
        Ok(object[offset as usize..end as usize].to_vec())
    }
    fn put(&self, name: &str, data: &[u8]) -> Result<()> {
        let mut objects = self.objects.lock().unwrap();
        objects.insert(name.to_owned(), data.to_vec());
        Ok(())
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let objects = self.objects.lock().unwrap();
        Ok(objects
            .range(prefix.to_owned()..)
            .take_while(|(name, _)| name.starts_with(prefix))
            .map(|(name, data)| ObjectInfo {
                name: name.clone(),
                size: data.len() as u64,
            })
            .collect())
    }
    fn delete(&self, name: &str) -> Result<()> {
        self.objects.lock().unwrap().remove(name);
        Ok(())
    }
    fn exists(&self, name: &str) -> Result<bool> {
        Ok(self.objects.lock().unwrap().contains_key(name))
    }
}

/// Pack uploads under way now, and the most seen at once.
#[derive(Default)]
struct Overlap {
    uploading: Mutex<(usize, usize)>,
    changed: Condvar,
}

/// Any backend, counted and, when asked, failing.
pub struct Instrumented {
    inner: Arc<dyn Backend>,
    /// Puts and deletes that succeed before each fails with `ENOSPC` (a full disk, a killed
    /// process): what was done before stays, nothing after it is.
    pub puts_left: AtomicUsize,
    pub deletes_left: AtomicUsize,
    /// What `preferred_concurrency` says: above one, several packs upload at once, so a write
    /// fails while others are under way, and packs finished later may be stored before it.
    concurrency: usize,
    /// When set, the first pack upload waits (at most 20 s) until a second one starts, so a
    /// packer that uploads one pack at a time shows as such rather than by chance.
    overlap: Option<Overlap>,
    /// Checkpoint records read whole, in order.
    pub record_gets: Mutex<Vec<String>>,
    /// Listings of `checkpoints/`, with or without sizes.
    pub checkpoint_lists: AtomicUsize,
    /// Ranges read from packs: one per `get_range`, one per range of a `get_ranges` (a
    /// store without batched reads makes a request for each).
    pub ranged_reads: AtomicUsize,
    /// Prefixes listed with sizes, in order.
    pub sized_lists: Mutex<Vec<String>>,
    /// Listings of the names in `data/`.
    pub pack_lists: AtomicUsize,
}

impl Instrumented {
    /// `inner`, counted, with no fault.
    pub fn new(inner: Arc<dyn Backend>) -> Arc<Self> {
        Arc::new(Self::counting(inner))
    }

    /// `inner` whose puts fail after `puts` and deletes after `deletes`, three packs
    /// uploading at once.
    pub fn failing_after(inner: Arc<dyn Backend>, puts: usize, deletes: usize) -> Arc<Self> {
        Arc::new(Instrumented {
            puts_left: AtomicUsize::new(puts),
            deletes_left: AtomicUsize::new(deletes),
            concurrency: 3,
            ..Self::counting(inner)
        })
    }

    /// `inner` taking four pack uploads at once, the first held until a second starts.
    pub fn overlapping(inner: Arc<dyn Backend>) -> Arc<Self> {
        Arc::new(Instrumented {
            concurrency: 4,
            overlap: Some(Overlap::default()),
            ..Self::counting(inner)
        })
    }

    fn counting(inner: Arc<dyn Backend>) -> Self {
        let concurrency = inner.preferred_concurrency();
        Instrumented {
            inner,
            puts_left: AtomicUsize::new(usize::MAX),
            deletes_left: AtomicUsize::new(usize::MAX),
            concurrency,
            overlap: None,
            record_gets: Mutex::default(),
            checkpoint_lists: AtomicUsize::new(0),
            ranged_reads: AtomicUsize::new(0),
            sized_lists: Mutex::default(),
            pack_lists: AtomicUsize::new(0),
        }
    }

    /// The checkpoint records read since the last call, and the listings of `checkpoints/`.
    pub fn take_counts(&self) -> (Vec<String>, usize) {
        let gets = std::mem::take(&mut *self.record_gets.lock().unwrap());
        (gets, self.checkpoint_lists.swap(0, Ordering::SeqCst))
    }

    /// The most pack uploads seen under way at once (with `overlapping`).
    pub fn most_at_once(&self) -> usize {
        self.overlap
            .as_ref()
            .map_or(0, |o| o.uploading.lock().unwrap().1)
    }

    /// Stores a pack, held until a second upload is under way when asked to.
    fn put_overlapping(&self, overlap: &Overlap, name: &str, data: &[u8]) -> Result<()> {
        let mut uploading = overlap.uploading.lock().unwrap();
        uploading.0 += 1;
        uploading.1 = uploading.1.max(uploading.0);
        overlap.changed.notify_all();
        let (uploading, _) = overlap
            .changed
            .wait_timeout_while(uploading, Duration::from_secs(20), |u| u.1 < 2)
            .unwrap();
        drop(uploading);
        let stored = self.inner.put(name, data);
        overlap.uploading.lock().unwrap().0 -= 1;
        stored
    }
}

/// Takes one from `left`, or fails with `ENOSPC` when nothing is left.
fn take_one(left: &AtomicUsize, what: &str) -> Result<()> {
    left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .map(drop)
        .map_err(|_| {
            Error::io(
                what.to_owned(),
                std::io::Error::from_raw_os_error(libc::ENOSPC),
            )
        })
}

impl Backend for Instrumented {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn get(&self, name: &str) -> Result<Vec<u8>> {
        if name.starts_with("checkpoints/") {
            self.record_gets.lock().unwrap().push(name.to_owned());
        }
        self.inner.get(name)
    }
    fn get_range(&self, name: &str, offset: u64, length: u64) -> Result<Vec<u8>> {
        self.ranged_reads.fetch_add(1, Ordering::SeqCst);
        self.inner.get_range(name, offset, length)
    }
    fn get_ranges(&self, ranges: &[RangeRequest]) -> Result<Vec<Vec<u8>>> {
        self.ranged_reads.fetch_add(ranges.len(), Ordering::SeqCst);
        self.inner.get_ranges(ranges)
    }
    fn put(&self, name: &str, data: &[u8]) -> Result<()> {
        take_one(&self.puts_left, &format!("writing {name}"))?;
        match &self.overlap {
            Some(overlap) if name.starts_with("data/") => self.put_overlapping(overlap, name, data),
            _ => self.inner.put(name, data),
        }
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        if prefix == "checkpoints/" {
            self.checkpoint_lists.fetch_add(1, Ordering::SeqCst);
        }
        self.sized_lists.lock().unwrap().push(prefix.to_owned());
        self.inner.list(prefix)
    }
    fn list_names(&self, prefix: &str) -> Result<Vec<String>> {
        if prefix == "checkpoints/" {
            self.checkpoint_lists.fetch_add(1, Ordering::SeqCst);
        }
        if prefix == "data/" {
            self.pack_lists.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.list_names(prefix)
    }
    fn delete(&self, name: &str) -> Result<()> {
        take_one(&self.deletes_left, &format!("deleting {name}"))?;
        self.inner.delete(name)
    }
    fn exists(&self, name: &str) -> Result<bool> {
        self.inner.exists(name)
    }
    fn preferred_concurrency(&self) -> usize {
        self.concurrency
    }
    fn listing_token(&self, prefix: &str) -> Option<String> {
        self.inner.listing_token(prefix)
    }
}
