//! A full target filesystem (`ENOSPC`, `EDQUOT`) while writing a tree into a directory, as
//! restore and sync into a directory do: the first failure is recorded and stops the run,
//! so the user gets one message saying where it stopped, what is missing and how much more
//! space that needs, instead of one error per remaining file.

use crate::error::Error;
use serde::Serialize;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Where a run into a directory stopped because the target's filesystem is full.
#[derive(Debug, Clone, Serialize)]
pub struct OutOfSpace {
    /// The path being written or created when the space ran out (it is not left behind).
    pub path: PathBuf,
    pub message: String,
    /// Bytes still free for this user on the target's filesystem afterwards.
    pub free_bytes: Option<u64>,
    /// Bytes of the files the run did not get to (see `set_missing`).
    pub bytes_missing: u64,
    /// About how much more free space those need: what is missing less what is free.
    pub bytes_needed: u64,
}

impl OutOfSpace {
    /// Records that `missing` bytes of files were not written, and so how much more free
    /// space is needed (at least a byte: the run did fail for want of space).
    pub fn set_missing(&mut self, missing: u64) {
        self.bytes_missing = missing;
        self.bytes_needed = missing.saturating_sub(self.free_bytes.unwrap_or(0)).max(1);
    }
}

/// Whether `error` says the filesystem (or the user's quota) is full.
pub(crate) fn is_out_of_space(error: &Error) -> bool {
    matches!(error, Error::Io { cause, .. }
        if matches!(cause.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)))
}

/// Bytes free for unprivileged writers on the filesystem holding `path`.
fn free_bytes(path: &Path) -> Option<u64> {
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is NUL-terminated and `stat` is a valid buffer statvfs fills on success.
    if unsafe { libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled `stat`.
    let stat = unsafe { stat.assume_init() };
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// The first out-of-space failure of a run, shared by its threads; once recorded, nothing
/// more is written.
#[derive(Default)]
pub(crate) struct SpaceFailure(Mutex<Option<OutOfSpace>>);

impl SpaceFailure {
    /// Records that writing `path` failed with `error` for want of space (the first one
    /// wins).
    pub(crate) fn record(&self, path: PathBuf, error: &Error) {
        self.0
            .lock()
            .expect("not poisoned")
            .get_or_insert_with(|| OutOfSpace {
                path,
                message: error.to_string(),
                free_bytes: None,
                bytes_missing: 0,
                bytes_needed: 0,
            });
    }

    /// Whether the filesystem has filled up: the run stops writing.
    pub(crate) fn is_full(&self) -> bool {
        self.0.lock().expect("not poisoned").is_some()
    }

    /// The failure, if any, with the space left on `target`'s filesystem now.
    pub(crate) fn into_outcome(self, target: &Path) -> Option<OutOfSpace> {
        let mut full = self.0.into_inner().expect("not poisoned")?;
        full.free_bytes = free_bytes(target);
        Some(full)
    }
}
