//! Served directory → repository: a pull is a backup whose source is a directory served by
//! `cairn serve --source` (`backup::remote`), reported as a sync.

use super::{SyncOptions, SyncReport};
use crate::backup::remote::ServedSource;
use crate::backup::{self, Started};
use crate::error::Result;
use crate::progress::Progress;
use crate::repo::Repository;
use crate::source::remote::RemoteSource;

/// Pulls the served source into `repo` as a new checkpoint; into a dry run's repository
/// (`Repository::into_dry_run`) no chunk is fetched: those it would ask for are counted.
pub fn run(
    repo: &Repository,
    source: &RemoteSource,
    options: &SyncOptions,
    progress: &Progress,
) -> Result<SyncReport> {
    let started = Started::now();
    let dry_run = repo.is_dry_run();
    let served = ServedSource::new(source, dry_run);
    let settings = served.settings(options.concurrency);
    let outcome = backup::back_up_opening(|| Ok(repo), &served, &settings, started, progress)?;
    let mut report = SyncReport::of_backup(outcome, dry_run);
    report.blobs_copied += served.planned_chunks();
    report.blobs_skipped = served.chunks_held();
    Ok(report)
}
