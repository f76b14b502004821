//! Sync: moving data between repositories and directories, copying only what the destination
//! lacks, with the options and report every direction shares. `copy` takes checkpoints from
//! one repository to another blob by blob; a directory is made to match a checkpoint or
//! another directory by the restore engine (`restore::into_dir`), the way rsync would. A local
//! directory pulled into a repository is a backup (see `backup`); a served one (over `cairn
//! serve --source`) is pulled by `pull`, the backup engine with a served source. `endpoint`
//! parses the sides of a sync as they are named and sends each pair to its engine.

pub mod copy;
pub mod endpoint;
#[cfg(feature = "client")]
pub mod pull;

use crate::error::PathError;
use serde::Serialize;

/// Inputs of a sync.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// Into a directory: read what is needed to plan, write nothing, report what would
    /// move. Into a repository the dry run is the repository's own
    /// (`Repository::into_dry_run`).
    pub dry_run: bool,
    /// Into a directory: remove what the source lacks.
    pub delete: bool,
    /// Into a directory: replace a non-empty directory by the source's file, symlink or
    /// special file even without `delete` (rsync's `--force`); `delete` implies it.
    pub force: bool,
    /// With `delete` or `force`: remove at most this many entries (each file and directory
    /// counts), leave the rest and report them skipped.
    pub max_delete: Option<u64>,
    /// Parallel transfers.
    pub concurrency: usize,
    /// Into a directory: leave runs of zeros in written files as holes (`--sparse`, like
    /// rsync's `-S`); otherwise written files are dense.
    pub sparse: bool,
    /// Into a directory: rebuild every file, even one whose size and mtime match (rsync's
    /// `--ignore-times`, what `restore --overwrite` does); chunks the old file holds are
    /// still taken from it, so only what differs is read from the source.
    pub ignore_times: bool,
    /// Into a directory: refuse a target that exists and holds anything (a restore without
    /// `--overwrite`).
    pub require_empty: bool,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            dry_run: false,
            delete: false,
            force: false,
            max_delete: None,
            concurrency: std::thread::available_parallelism().map_or(4, |n| 2 * n.get()),
            sparse: false,
            ignore_times: false,
            require_empty: false,
        }
    }
}

/// `items` cut into consecutive runs of at most `max_items` items and `max_bytes` bytes (an
/// item larger than that makes a run of its own): what one request asks for.
pub(crate) fn runs<T>(
    items: &[T],
    max_items: usize,
    max_bytes: u64,
    bytes_of: impl Fn(&T) -> u64,
) -> Vec<&[T]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0u64);
    for (i, item) in items.iter().enumerate() {
        let size = bytes_of(item);
        if i > start && (i - start >= max_items || bytes + size > max_bytes) {
            out.push(&items[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < items.len() {
        out.push(&items[start..]);
    }
    out
}

/// What a sync did (or, in a dry run, would do).
#[derive(Debug, Default, Serialize)]
pub struct SyncReport {
    pub dry_run: bool,
    /// Checkpoints written into a destination repository.
    pub checkpoints_copied: u64,
    /// Blobs written into a destination repository.
    pub blobs_copied: u64,
    /// Blobs the destination already held.
    pub blobs_skipped: u64,
    /// Bytes that crossed from the source to the destination, as sent (stored blobs are
    /// counted compressed).
    pub bytes_transferred: u64,
    /// Into a directory: files written, files left as they were, and the bytes of chunks
    /// taken from the destination's own old files instead of the source.
    pub files_written: u64,
    pub files_unchanged: u64,
    pub bytes_reused: u64,
    /// Into a directory with `delete`: entries removed, each file and directory of a removed
    /// tree counted, like rsync's deleted files.
    pub entries_deleted: u64,
    /// Entries the source lacks that `max_delete` left in place (a directory counts once).
    pub deletions_skipped: u64,
    /// Into a directory: the source's directories walked (created, updated or found right).
    pub dirs: u64,
    /// Into a directory: entries not written for a reason that is not an error (a device
    /// node, which only root can make).
    pub skipped: Vec<PathError>,
    pub errors: Vec<PathError>,
    /// Into a directory: set when the target's filesystem filled up and the sync stopped.
    pub out_of_space: Option<crate::space::OutOfSpace>,
}

impl SyncReport {
    /// A backup into a repository (a directory or a served source pulled into it), reported
    /// as a sync: the checkpoint written, the blobs added and the bytes read.
    pub fn of_backup(outcome: crate::backup::BackupOutcome, dry_run: bool) -> Self {
        let stats = &outcome.checkpoint.stats;
        SyncReport {
            dry_run,
            checkpoints_copied: u64::from(outcome.id.is_some()),
            blobs_copied: stats.added_blobs,
            bytes_transferred: stats.bytes_read,
            errors: outcome.errors,
            ..SyncReport::default()
        }
    }
}
