//! Served directory → repository: a pull is a backup whose source is a directory served by
//! `cairn serve --source` (`backup::remote`), reported as a sync.

use super::{SyncOptions, SyncReport};
use crate::backup::remote::ServedSource;
use crate::backup::{self, Started};
use crate::error::Result;
use crate::progress::Progress;
use crate::repo::Repository;
use crate::source::remote::RemoteSource;

/// Pulls the served source into `repo` as a new checkpoint (unless a dry run).
pub fn run(
    repo: &Repository,
    source: &RemoteSource,
    options: &SyncOptions,
    progress: &Progress,
) -> Result<SyncReport> {
    let started = Started::now();
    let served = ServedSource::new(source, options.rate_limit, options.dry_run);
    let settings = served.settings(options.concurrency);
    let outcome = backup::back_up_opening(|| Ok(repo), &served, &settings, started, progress)?;
    Ok(SyncReport {
        dry_run: options.dry_run,
        checkpoints_copied: u64::from(outcome.id.is_some()),
        blobs_copied: outcome.checkpoint.stats.added_blobs + served.planned_chunks(),
        blobs_skipped: served.chunks_held(),
        bytes_transferred: outcome.checkpoint.stats.bytes_read,
        errors: outcome.errors,
        ..SyncReport::default()
    })
}
