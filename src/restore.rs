//! Restore: a checkpoint's tree (or one path in it) back into a directory, exactly.
//!
//! A restore is the directory engine of `sync::into_dir` with the checkpoint as its source:
//! one planner, one round writer reading packs in order, one way of making files, links,
//! holes and metadata, and one answer to a full filesystem. What makes it a restore is the
//! target: new or empty, or, with `overwrite`, whatever is there is brought to the
//! checkpoint — every file rebuilt (chunks the old file already holds are kept, the rest
//! read from the repository), every entry in the way replaced, never followed, and nothing
//! the checkpoint lacks deleted.

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::repo::Repository;
use crate::sync::into_dir::{self, CheckpointSource, OneEntry};
use crate::sync::{SyncOptions, SyncReport};
use crate::tree::{EntryKind, find_entry};
use std::path::Path;

/// Inputs of a restore.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Restore into a target that already has content, replacing what is in the way.
    pub overwrite: bool,
    /// Stretches of packs read (and their chunks written) at once, at least as many as the
    /// backend keeps under way; defaults to twice the number of cores (they wait on I/O).
    pub threads: usize,
    /// Leave runs of zeros as holes (`--sparse`); otherwise files are written dense.
    pub sparse: bool,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            overwrite: false,
            threads: SyncOptions::default().concurrency,
            sparse: false,
        }
    }
}

/// Restores `path` of checkpoint `record` (`""` for all of it) into `target`: a directory's
/// contents go into `target`, which takes the directory's own metadata when it has a name;
/// any other entry becomes `target/<name>`. The report counts files written (and, with
/// `overwrite`, found already right), directories, and entries skipped or failed.
pub fn run(
    repo: &Repository,
    record: &Checkpoint,
    path: &str,
    target: &Path,
    options: &RestoreOptions,
    progress: &Progress,
) -> Result<SyncReport> {
    let sync = SyncOptions {
        force: options.overwrite,
        ignore_times: options.overwrite,
        require_empty: !options.overwrite,
        concurrency: options.threads,
        sparse: options.sparse,
        ..SyncOptions::default()
    };
    let path = path.trim_matches('/');
    let node = find_entry(repo, record.root_entry(), path)?;
    if let EntryKind::Dir(tree) = &node.kind {
        let whole = path
            .is_empty()
            .then_some((record.stats.files, record.stats.bytes));
        let source = CheckpointSource {
            repo,
            totals: whole,
        };
        let own = Some(&node).filter(|n| !n.name.is_empty());
        return into_dir::run(&source, *tree, own, target, &sync, progress, &mut |_| {});
    }
    let parent_path = path.rsplit_once('/').map_or("", |(parent, _)| parent);
    let EntryKind::Dir(parent) = find_entry(repo, record.root_entry(), parent_path)?.kind else {
        return Err(Error::NotFound(format!("{parent_path} is not a directory")));
    };
    let checkpoint = CheckpointSource { repo, totals: None };
    let name = node.name.clone();
    let one = OneEntry::new(&checkpoint, parent, node, &name)?;
    into_dir::run(&one, (), None, target, &sync, progress, &mut |_| {})
}
