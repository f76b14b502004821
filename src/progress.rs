//! Live counters of a long run (a backup or a sync) that a progress display reads while it
//! works: what the run covers, counted ahead of it, and what it has done so far. The ETA is
//! the bytes still to do at the rate bytes get done.

use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Progress {
    /// Files and bytes the run covers, as far as the count ahead has got.
    pub total_files: AtomicU64,
    pub total_bytes: AtomicU64,
    /// Set when the count has finished, so the totals are final.
    pub counted: AtomicBool,
    pub files_done: AtomicU64,
    /// Bytes of files done: read, reused, or found unchanged.
    pub bytes_done: AtomicU64,
    /// Bytes taken from the source: read from its files, or received from a server or
    /// another repository.
    pub bytes_read: AtomicU64,
    /// Bytes of packs written (or, in a dry run, that would be written).
    pub added_bytes: AtomicU64,
    /// Packs written (or, in a dry run, that would be written).
    pub added_packs: AtomicU64,
    /// The file being worked on (the last one begun), for the display.
    current: Mutex<String>,
}

impl Progress {
    /// Sets final totals counted elsewhere (by a server, or from a plan).
    pub fn set_totals(&self, files: u64, bytes: u64) {
        self.total_files.store(files, Ordering::Relaxed);
        self.total_bytes.store(bytes, Ordering::Relaxed);
        self.counted.store(true, Ordering::Relaxed);
    }

    /// Names the file being worked on now.
    pub fn working_on(&self, file: impl std::fmt::Display) {
        let mut current = self.current.lock().expect("not poisoned");
        current.clear();
        let _ = write!(current, "{file}");
    }

    /// The file being worked on, as last named.
    pub fn current(&self) -> String {
        self.current.lock().expect("not poisoned").clone()
    }

    /// Counts one file of `bytes` as done.
    pub fn file_done(&self, bytes: u64) {
        self.files_done.fetch_add(1, Ordering::Relaxed);
        self.bytes_done.fetch_add(bytes, Ordering::Relaxed);
    }
}
