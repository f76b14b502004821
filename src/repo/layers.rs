//! Wrappers around any `Backend`, each owning one concern of talking to a store, so no
//! backend and no operation carries them itself: `Retrying` tries a request again, with
//! exponential backoff and jitter, when the store did not answer this time
//! (`Error::Unavailable`: a 5xx, throttling, a timeout, a reset); `Bounded` caps the requests
//! in flight; `Limited` caps the bytes per second sent and received. `wrap` stacks them the
//! one way every command uses: limit, then bound, then retry, then the store. `DryRun`
//! stores nothing but a run's lock: a dry-run repository (`Repository::into_dry_run`) is one
//! whose backend sits inside it.
//!
//! Every write cairn makes is idempotent (objects are named by their content, or are records
//! written whole under a fresh name), so a request is tried again whatever it was.

use super::backend::{Backend, ObjectInfo, PutNew, RangeRequest};
use crate::error::{Error, Result};
use crate::fs::throttle::RateLimiter;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long and how often a request the store did not answer is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries stop once this long has passed since the first (a try under way finishes).
    pub give_up_after: Duration,
    /// The pause before the second try; each further pause doubles, up to `longest_pause`.
    pub first_pause: Duration,
    pub longest_pause: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            give_up_after: Duration::from_secs(120),
            first_pause: Duration::from_millis(250),
            longest_pause: Duration::from_secs(10),
        }
    }
}

/// What `wrap` puts around a backend.
#[derive(Debug, Clone, Copy, Default)]
pub struct Layers {
    pub retry: RetryPolicy,
    /// At most this many requests in flight (`None`: as many as the callers make).
    pub max_in_flight: Option<usize>,
    /// Bytes per second sent (`put`) and received (`get`), when capped.
    pub upload_limit: Option<u64>,
    pub download_limit: Option<u64>,
}

/// `backend` inside the layers `layers` asks for.
pub fn wrap(backend: Arc<dyn Backend>, layers: Layers) -> Arc<dyn Backend> {
    let mut wrapped: Arc<dyn Backend> = Arc::new(Retrying {
        inner: backend,
        policy: layers.retry,
    });
    if let Some(permits) = layers.max_in_flight {
        wrapped = Arc::new(Bounded {
            inner: wrapped,
            free: Mutex::new(permits.max(1)),
            released: Condvar::new(),
        });
    }
    if layers.upload_limit.is_some() || layers.download_limit.is_some() {
        wrapped = Arc::new(Limited {
            inner: wrapped,
            upload: layers.upload_limit.map(RateLimiter::new),
            download: layers.download_limit.map(RateLimiter::new),
        });
    }
    wrapped
}

/// Methods a layer hands to the backend inside it (`self.inner`) as they are: each layer
/// writes only what it changes.
macro_rules! pass_through {
    ($($method:ident),+ $(,)?) => { $(pass_through!(@one $method);)+ };
    (@one location) => {
        fn location(&self) -> String {
            self.inner.location()
        }
    };
    (@one get) => {
        fn get(&self, name: &str) -> Result<Vec<u8>> {
            self.inner.get(name)
        }
    };
    (@one get_range) => {
        fn get_range(&self, name: &str, offset: u64, length: u64) -> Result<Vec<u8>> {
            self.inner.get_range(name, offset, length)
        }
    };
    (@one get_range_streamed) => {
        fn get_range_streamed(
            &self,
            name: &str,
            offset: u64,
            length: u64,
            take: &mut dyn FnMut(&[u8]),
        ) -> Result<()> {
            self.inner.get_range_streamed(name, offset, length, take)
        }
    };
    (@one get_ranges) => {
        fn get_ranges(&self, ranges: &[RangeRequest]) -> Result<Vec<Vec<u8>>> {
            self.inner.get_ranges(ranges)
        }
    };
    (@one put) => {
        fn put(&self, name: &str, data: &[u8]) -> Result<()> {
            self.inner.put(name, data)
        }
    };
    (@one list) => {
        fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
            self.inner.list(prefix)
        }
    };
    (@one list_names) => {
        fn list_names(&self, prefix: &str) -> Result<Vec<String>> {
            self.inner.list_names(prefix)
        }
    };
    (@one delete) => {
        fn delete(&self, name: &str) -> Result<()> {
            self.inner.delete(name)
        }
    };
    (@one exists) => {
        fn exists(&self, name: &str) -> Result<bool> {
            self.inner.exists(name)
        }
    };
    (@one size) => {
        fn size(&self, name: &str) -> Result<u64> {
            self.inner.size(name)
        }
    };
    (@one preferred_concurrency) => {
        fn preferred_concurrency(&self) -> usize {
            self.inner.preferred_concurrency()
        }
    };
    (@one listing_token) => {
        fn listing_token(&self, prefix: &str) -> Option<String> {
            self.inner.listing_token(prefix)
        }
    };
}
#[cfg(test)]
pub(crate) use pass_through;

/// Writes and deletes that succeed without reaching the store, except for lock objects (a dry
/// run holds its lock like any run, so nothing it reads is pruned under it); reads pass
/// through, so what a run wrote is never read back: the repository keeps what it would
/// have stored in memory instead (see `BlobIndex::keep_additions_in_memory`).
pub struct DryRun {
    pub(super) inner: Arc<dyn Backend>,
}

impl DryRun {
    fn reaches_store(name: &str) -> bool {
        super::objects::ObjectKind::of(name) == Some(super::objects::ObjectKind::Lock)
    }
}

impl Backend for DryRun {
    pass_through!(
        location,
        get,
        get_range,
        get_range_streamed,
        get_ranges,
        list,
        list_names,
        exists,
        size,
        preferred_concurrency,
        listing_token
    );
    fn put(&self, name: &str, data: &[u8]) -> Result<()> {
        match Self::reaches_store(name) {
            true => self.inner.put(name, data),
            false => Ok(()),
        }
    }
    fn put_new(&self, name: &str, data: &[u8]) -> Result<PutNew> {
        match Self::reaches_store(name) {
            true => self.inner.put_new(name, data),
            false => Ok(PutNew::Created),
        }
    }
    fn delete(&self, name: &str) -> Result<()> {
        match Self::reaches_store(name) {
            true => self.inner.delete(name),
            false => Ok(()),
        }
    }
}

/// Tries a request again while the store answers `Error::Unavailable`.
pub struct Retrying {
    inner: Arc<dyn Backend>,
    policy: RetryPolicy,
}

/// A pause of `pause` with full jitter in its upper half, so clients that failed together
/// do not come back together.
fn jittered(pause: Duration) -> Duration {
    let random = u64::from_le_bytes(crate::crypto::random_bytes::<8>());
    let half = pause / 2;
    half + Duration::from_nanos(random % (half.as_nanos() as u64).max(1))
}

impl Retrying {
    fn run<T>(&self, what: &str, mut request: impl FnMut() -> Result<T>) -> Result<T> {
        let started = Instant::now();
        let mut pause = self.policy.first_pause;
        let mut tries = 0u32;
        loop {
            tries += 1;
            let message = match request() {
                Err(Error::Unavailable(message)) => message,
                done => return done,
            };
            let elapsed = started.elapsed();
            if elapsed + pause > self.policy.give_up_after {
                return Err(Error::Network(format!(
                    "{} did not answer {what}: {message} (tried {tries} times over {}s). \
                     Check that the store is up (for a cluster, that enough nodes are up \
                     for a quorum) and run the command again; what was stored so far is \
                     kept and reused",
                    self.inner.location(),
                    elapsed.as_secs()
                )));
            }
            tracing::warn!(
                "{} did not answer {what} ({message}); trying again in {:?}",
                self.inner.location(),
                pause
            );
            std::thread::sleep(jittered(pause));
            pause = (pause * 2).min(self.policy.longest_pause);
        }
    }
}

impl Backend for Retrying {
    pass_through!(location, preferred_concurrency, listing_token);
    fn get(&self, name: &str) -> Result<Vec<u8>> {
        self.run(&format!("reading {name}"), || self.inner.get(name))
    }
    fn get_range(&self, name: &str, offset: u64, length: u64) -> Result<Vec<u8>> {
        self.run(&format!("reading {name}"), || {
            self.inner.get_range(name, offset, length)
        })
    }
    /// A stream cut off is taken up again where it stopped: what was handed over stays.
    fn get_range_streamed(
        &self,
        name: &str,
        offset: u64,
        length: u64,
        take: &mut dyn FnMut(&[u8]),
    ) -> Result<()> {
        let mut done = 0u64;
        self.run(&format!("reading {name}"), || {
            let (from, left) = (offset + done, length - done);
            self.inner
                .get_range_streamed(name, from, left, &mut |piece| {
                    done += piece.len() as u64;
                    take(piece);
                })
        })
    }
    fn get_ranges(&self, ranges: &[RangeRequest]) -> Result<Vec<Vec<u8>>> {
        self.run(&format!("reading {} blob ranges", ranges.len()), || {
            self.inner.get_ranges(ranges)
        })
    }
    fn put(&self, name: &str, data: &[u8]) -> Result<()> {
        self.run(&format!("storing {name}"), || self.inner.put(name, data))
    }
    fn put_new(&self, name: &str, data: &[u8]) -> Result<PutNew> {
        self.run(&format!("storing {name}"), || {
            self.inner.put_new(name, data)
        })
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.run(&format!("listing {prefix}"), || self.inner.list(prefix))
    }
    fn list_names(&self, prefix: &str) -> Result<Vec<String>> {
        self.run(&format!("listing {prefix}"), || {
            self.inner.list_names(prefix)
        })
    }
    fn delete(&self, name: &str) -> Result<()> {
        self.run(&format!("deleting {name}"), || self.inner.delete(name))
    }
    fn exists(&self, name: &str) -> Result<bool> {
        self.run(&format!("looking up {name}"), || self.inner.exists(name))
    }
    fn size(&self, name: &str) -> Result<u64> {
        self.run(&format!("looking up {name}"), || self.inner.size(name))
    }
}

/// At most a fixed number of requests in flight; the others wait for a free one.
pub struct Bounded {
    inner: Arc<dyn Backend>,
    free: Mutex<usize>,
    released: Condvar,
}

/// One request's place among those in flight, given back when dropped.
struct Permit<'a>(&'a Bounded);

impl Bounded {
    fn permit(&self) -> Permit<'_> {
        let mut free = self.free.lock().expect("not poisoned");
        while *free == 0 {
            free = self.released.wait(free).expect("not poisoned");
        }
        *free -= 1;
        Permit(self)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().expect("not poisoned") += 1;
        self.0.released.notify_one();
    }
}

impl Backend for Bounded {
    pass_through!(location, preferred_concurrency, listing_token);
    fn get(&self, name: &str) -> Result<Vec<u8>> {
        let _permit = self.permit();
        self.inner.get(name)
    }
    fn get_range(&self, name: &str, offset: u64, length: u64) -> Result<Vec<u8>> {
        let _permit = self.permit();
        self.inner.get_range(name, offset, length)
    }
    fn get_range_streamed(
        &self,
        name: &str,
        offset: u64,
        length: u64,
        take: &mut dyn FnMut(&[u8]),
    ) -> Result<()> {
        let _permit = self.permit();
        self.inner.get_range_streamed(name, offset, length, take)
    }
    fn get_ranges(&self, ranges: &[RangeRequest]) -> Result<Vec<Vec<u8>>> {
        let _permit = self.permit();
        self.inner.get_ranges(ranges)
    }
    fn put(&self, name: &str, data: &[u8]) -> Result<()> {
        let _permit = self.permit();
        self.inner.put(name, data)
    }
    fn put_new(&self, name: &str, data: &[u8]) -> Result<PutNew> {
        let _permit = self.permit();
        self.inner.put_new(name, data)
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let _permit = self.permit();
        self.inner.list(prefix)
    }
    fn list_names(&self, prefix: &str) -> Result<Vec<String>> {
        let _permit = self.permit();
        self.inner.list_names(prefix)
    }
    fn delete(&self, name: &str) -> Result<()> {
        let _permit = self.permit();
        self.inner.delete(name)
    }
    fn exists(&self, name: &str) -> Result<bool> {
        let _permit = self.permit();
        self.inner.exists(name)
    }
    fn size(&self, name: &str) -> Result<u64> {
        let _permit = self.permit();
        self.inner.size(name)
    }
}

/// Bytes per second capped: what is sent is paid for before the request, what is received
/// after it.
pub struct Limited {
    inner: Arc<dyn Backend>,
    upload: Option<RateLimiter>,
    download: Option<RateLimiter>,
}

impl Limited {
    fn received(&self, bytes: usize) {
        if let Some(limiter) = &self.download {
            limiter.take(bytes as u64);
        }
    }
    fn sending(&self, bytes: usize) {
        if let Some(limiter) = &self.upload {
            limiter.take(bytes as u64);
        }
    }
}

impl Backend for Limited {
    pass_through!(
        location,
        list,
        list_names,
        delete,
        exists,
        size,
        preferred_concurrency,
        listing_token
    );
    fn get(&self, name: &str) -> Result<Vec<u8>> {
        let bytes = self.inner.get(name)?;
        self.received(bytes.len());
        Ok(bytes)
    }
    fn get_range(&self, name: &str, offset: u64, length: u64) -> Result<Vec<u8>> {
        let bytes = self.inner.get_range(name, offset, length)?;
        self.received(bytes.len());
        Ok(bytes)
    }
    fn get_range_streamed(
        &self,
        name: &str,
        offset: u64,
        length: u64,
        take: &mut dyn FnMut(&[u8]),
    ) -> Result<()> {
        self.inner
            .get_range_streamed(name, offset, length, &mut |piece| {
                self.received(piece.len());
                take(piece);
            })
    }
    fn get_ranges(&self, ranges: &[RangeRequest]) -> Result<Vec<Vec<u8>>> {
        let all = self.inner.get_ranges(ranges)?;
        self.received(all.iter().map(Vec::len).sum());
        Ok(all)
    }
    fn put(&self, name: &str, data: &[u8]) -> Result<()> {
        self.sending(data.len());
        self.inner.put(name, data)
    }
    fn put_new(&self, name: &str, data: &[u8]) -> Result<PutNew> {
        self.sending(data.len());
        self.inner.put_new(name, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::backend::LocalBackend;
    use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

    /// A backend that fails its first `failures` gets with `Unavailable`, and records the
    /// most requests it saw at once.
    struct Flaky {
        inner: LocalBackend,
        failures: AtomicU32,
        in_flight: AtomicUsize,
        most_in_flight: AtomicUsize,
    }

    impl Backend for Flaky {
        fn location(&self) -> String {
            "flaky".into()
        }
        fn get(&self, name: &str) -> Result<Vec<u8>> {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_in_flight.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(20));
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            let left = self.failures.load(Ordering::SeqCst);
            if left > 0 {
                self.failures.store(left - 1, Ordering::SeqCst);
                return Err(Error::Unavailable("503 Service Unavailable".into()));
            }
            self.inner.get(name)
        }
        fn get_range(&self, name: &str, offset: u64, length: u64) -> Result<Vec<u8>> {
            self.inner.get_range(name, offset, length)
        }
        /// While failures are left, hands over the first half of the range and is cut off.
        fn get_range_streamed(
            &self,
            name: &str,
            offset: u64,
            length: u64,
            take: &mut dyn FnMut(&[u8]),
        ) -> Result<()> {
            let left = self.failures.load(Ordering::SeqCst);
            if left > 0 {
                self.failures.store(left - 1, Ordering::SeqCst);
                take(&self.inner.get_range(name, offset, length / 2)?);
                return Err(Error::Unavailable("connection reset".into()));
            }
            self.inner.get_range_streamed(name, offset, length, take)
        }
        fn put(&self, name: &str, data: &[u8]) -> Result<()> {
            self.inner.put(name, data)
        }
        fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
            self.inner.list(prefix)
        }
        fn delete(&self, name: &str) -> Result<()> {
            self.inner.delete(name)
        }
        fn exists(&self, name: &str) -> Result<bool> {
            self.inner.exists(name)
        }
    }

    fn flaky(dir: &std::path::Path, failures: u32) -> Arc<Flaky> {
        let inner = LocalBackend::new(dir);
        inner.put("config", b"x").unwrap();
        Arc::new(Flaky {
            inner,
            failures: AtomicU32::new(failures),
            in_flight: AtomicUsize::new(0),
            most_in_flight: AtomicUsize::new(0),
        })
    }

    fn quick(give_up_after: Duration) -> Layers {
        Layers {
            retry: RetryPolicy {
                give_up_after,
                first_pause: Duration::from_millis(10),
                longest_pause: Duration::from_millis(40),
            },
            ..Layers::default()
        }
    }

    #[test]
    fn a_store_that_answers_again_is_tried_until_it_does() {
        let dir = tempfile::tempdir().unwrap();
        let store = flaky(dir.path(), 3);
        let backend = wrap(store.clone(), quick(Duration::from_secs(30)));
        assert_eq!(backend.get("config").unwrap(), b"x");
        assert_eq!(store.failures.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_stream_cut_off_is_taken_up_where_it_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let store = flaky(dir.path(), 3);
        let bytes: Vec<u8> = (0..100).collect();
        store.inner.put("data/pack", &bytes).unwrap();
        let backend = wrap(store.clone(), quick(Duration::from_secs(30)));
        let mut received = Vec::new();
        backend
            .get_range_streamed("data/pack", 10, 80, &mut |piece| {
                received.extend_from_slice(piece)
            })
            .unwrap();
        assert_eq!(received, &bytes[10..90]);
        assert_eq!(store.failures.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_store_that_never_answers_is_given_up_on_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let store = flaky(dir.path(), u32::MAX);
        let backend = wrap(store, quick(Duration::from_millis(300)));
        let error = backend.get("config").unwrap_err();
        let text = error.to_string();
        assert!(matches!(error, Error::Network(_)), "{error:?}");
        assert!(text.contains("did not answer reading config"), "{text}");
        assert!(text.contains("503 Service Unavailable"), "{text}");
        assert!(text.contains("run the command again"), "{text}");
    }

    #[test]
    fn other_errors_are_not_tried_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = flaky(dir.path(), 0);
        let backend = wrap(store.clone(), quick(Duration::from_secs(30)));
        let error = backend.get("missing").unwrap_err();
        assert_eq!(error.kind(), crate::error::ErrorKind::NotFound);
    }

    #[test]
    fn no_more_requests_are_in_flight_than_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let store = flaky(dir.path(), 0);
        let backend = wrap(
            store.clone(),
            Layers {
                max_in_flight: Some(2),
                ..Layers::default()
            },
        );
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| backend.get("config").unwrap());
            }
        });
        assert_eq!(store.most_in_flight.load(Ordering::SeqCst), 2);
    }
}
