//! Source → directory, like rsync, and restore: the one engine that writes a source (a
//! checkpoint, a live directory, a served one: `source`) into a directory, touching only what
//! differs (`into_dir`), and restore, which is that engine with a checkpoint as its source.
//!
//! The planner (the calling thread) walks the source in name order next to the target,
//! comparing every recorded attribute (`itemize::differences`) and listing each change it
//! decides, in a dry run as in a real one. A regular file with the source's size and mtime
//! keeps its content, and only differing metadata is set on it in place (so are symlinks and
//! special files whose target or number is right); any other file goes to the workers,
//! which rebuild it in a temporary file beside it and rename that over the old one, so an
//! interrupted sync never leaves a half-written file under the name of one it found. (In a
//! directory the run made itself nothing can be replaced, so files are written under their
//! own names: a file cut short there has its mtime unset, and the next sync rewrites it.)
//! A rebuilt file
//! takes every chunk the old file already holds from there (chunked the same way) and only
//! the rest from the source; when the old file turns out to hold exactly the source's chunks,
//! only its metadata is set. From a checkpoint, files with nothing at their place go instead
//! to one round writer, in rounds read pack by pack as restore reads them (`sync_round`).
//! Directories, symlinks and special files are created or replaced as needed; with `delete`, whatever the source lacks is removed. A directory replaced by
//! another kind of entry loses what it holds only as deletions (`delete` or `force`, within
//! `max_delete`), like rsync. Directory metadata is applied last, deepest first.
//!
//! Nothing is written outside the target (invariant 4): every write goes through
//! `target::TargetDir`, beneath the target's descriptor; source names are validated; an
//! existing symlink or file where a directory belongs is removed rather than followed; a
//! file found the same gets its metadata on the descriptor it was compared through. Both
//! trees are walked with an explicit stack.
//!
//! A full filesystem (`ENOSPC`, `EDQUOT`) stops the sync at once, as it stops a restore
//! (`space`): the file being written never gets its name and its temporary file is removed,
//! the workers drop the files still queued, the walk stops, no hard links are made, and the
//! report says where it stopped, what is missing and how much more space that needs.
//!
//! A restore is the directory engine (`into_dir`, below) with the checkpoint as its source:
//! one planner, one round writer reading packs in order, one way of making files, links,
//! holes and metadata, and one answer to a full filesystem. What makes it a restore is the
//! target: new or empty, or, with `overwrite`, whatever is there is brought to the
//! checkpoint — every file rebuilt (chunks the old file already holds are kept, the rest
//! read from the repository), every entry in the way replaced, never followed, and nothing
//! the checkpoint lacks deleted.

pub mod itemize;
mod links;
mod plan;
mod write;

use crate::checkpoint::Checkpoint;
use crate::error::{Error, IoContext, Missing, PathError, Result};
use crate::pattern::Patterns;
use crate::progress::Progress;
use crate::repo::Repository;
use crate::source::checkpoint::CheckpointSource;
use crate::source::filtered::{Filtered, Selection};
use crate::source::{OneEntry, TreeSource};
use crate::space::SpaceFailure;
use crate::sync::{SyncOptions, SyncReport};
use crate::target::{TargetDir, set_directories_metadata};
use crate::tree::{Entry, EntryKind, find_entry};
use crossbeam_channel::bounded;
use itemize::{Change, Update};
use links::LinkGroups;
use links::link;
use plan::Planner;
use plan::compare;
use std::fs::{self};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use write::FileJob;
use write::Outcomes;
use write::WorkerTotals;
use write::run_round_writer;
use write::run_sync_worker;

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
    /// Restore only what matches one of these patterns (`crate::pattern`, matched against
    /// paths in the checkpoint), with the directories leading to it; everything when empty.
    pub includes: Vec<String>,
    /// Leave out what matches one of these patterns, and everything below it.
    pub excludes: Vec<String>,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            overwrite: false,
            threads: SyncOptions::default().concurrency,
            sparse: false,
            includes: Vec::new(),
            excludes: Vec::new(),
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
        let source = match path.is_empty() {
            true => CheckpointSource::whole(repo, record),
            false => CheckpointSource::part(repo),
        };
        let own = Some(&node).filter(|n| !n.name.is_empty());
        if options.includes.is_empty() && options.excludes.is_empty() {
            return into_dir(&source, *tree, own, target, &sync, progress, &mut |_| {});
        }
        let selection = Selection {
            includes: Patterns::new(&options.includes, "--include", false)?,
            excludes: Patterns::new(&options.excludes, "--exclude", false)?,
        };
        let prefix = match path.is_empty() {
            true => Vec::new(),
            false => format!("{path}/").into_bytes(),
        };
        let errors = Mutex::new(Vec::new());
        let filtered = Filtered::new(&source, tree, &prefix, &selection, &errors)?;
        let root = filtered.root(*tree, &prefix);
        let report = into_dir(&filtered, root, own, target, &sync, progress, &mut |_| {})?;
        let unmatched = [
            ("include", selection.includes.unmatched()),
            ("exclude", selection.excludes.unmatched()),
        ];
        for (what, patterns) in unmatched {
            for pattern in patterns {
                tracing::warn!(
                    "{what} {pattern:?} matched nothing in the checkpoint: patterns are matched against paths in it as `cairn find` shows them"
                );
            }
        }
        return Ok(report);
    }
    if !(options.includes.is_empty() && options.excludes.is_empty()) {
        return Err(Error::InvalidInput(format!(
            "{path} is not a directory: --include and --exclude choose entries of a directory"
        )));
    }
    let parent_path = path.rsplit_once('/').map_or("", |(parent, _)| parent);
    let EntryKind::Dir(parent) = find_entry(repo, record.root_entry(), parent_path)?.kind else {
        return Err(Error::not_found(
            Missing::PathInCheckpoint {
                path: parent_path.to_owned(),
            },
            format!("{parent_path} is not a directory"),
        ));
    };
    let checkpoint = CheckpointSource::part(repo);
    let name = node.name.clone();
    let one = OneEntry::new(&checkpoint, parent, node, &name)?;
    into_dir(&one, (), None, target, &sync, progress, &mut |_| {})
}

/// Temporary files of a sync start with this; leftovers of an interrupted run are removed.
pub(crate) const TEMP_PREFIX: &str = ".cairn-sync-";

/// The target directory as the run found it.
enum Opened {
    /// It was there (and, when the options require it, empty).
    Existing(TargetDir),
    /// This run made it: nothing in it needs looking at.
    Made(TargetDir),
    /// It is not there and this is a dry run.
    Absent,
}

/// Opens the target, creating it unless this is a dry run; refuses a target that holds
/// anything when `options.require_empty`.
fn open_target(target: &Path, options: &SyncOptions) -> Result<Opened> {
    let context = || format!("opening target {}", target.display());
    match fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() => {
            let dir = TargetDir::open(target, false).context_io(context)?;
            if options.require_empty && !dir.names().context_io(context)?.is_empty() {
                return Err(Error::InvalidInput(format!(
                    "target {} is not empty: choose an empty or new directory, or pass --overwrite",
                    target.display()
                )));
            }
            Ok(Opened::Existing(dir))
        }
        Ok(_) => Err(Error::InvalidInput(format!(
            "target {} exists and is not a directory",
            target.display()
        ))),
        Err(_) if options.dry_run => Ok(Opened::Absent),
        Err(_) => Ok(Opened::Made(
            TargetDir::open(target, true).context_io(context)?,
        )),
    }
}

/// Makes `target` match the source directory `root`; `root_entry`, when given, is the
/// metadata `target` itself gets. Each entry created, changed or deleted is given to
/// `changes` as it is decided, in the order of the walk, in a dry run as in a real one.
pub fn into_dir<S: TreeSource>(
    source: &S,
    root: S::Dir,
    root_entry: Option<&Entry<S::Kind>>,
    target: &Path,
    options: &SyncOptions,
    progress: &Progress,
    changes: &mut dyn FnMut(&Change),
) -> Result<SyncReport> {
    // Chunks read from a repository stay there while they are read.
    let _lock = match source.repository() {
        Some(repo) => crate::repo::lock::acquire_for_reading(repo, "restore")?,
        None => None,
    };
    let (target_dir, fresh) = match open_target(target, options)? {
        Opened::Existing(dir) => (Some(Arc::new(dir)), false),
        Opened::Made(dir) => (Some(Arc::new(dir)), true),
        Opened::Absent => (None, true),
    };
    if let Some(entry) = root_entry {
        let root_change = match target_dir.as_deref().filter(|_| !fresh) {
            None => Some(Change::of(Update::Created, entry, Path::new(""), None)),
            Some(dir) => {
                let reading = || format!("reading target {}", target.display());
                let metadata = dir.metadata(b".").context_io(reading)?;
                let metadata = metadata.ok_or_else(|| {
                    Error::InvalidInput(format!("target {} is gone", target.display()))
                })?;
                let d = compare(dir, b".", &metadata, entry)?;
                d.metadata()
                    .then(|| Change::of(Update::Attributes, entry, Path::new(""), Some(d)))
            }
        };
        if let Some(change) = root_change {
            changes(&change);
        }
    }
    let errors = Mutex::new(Vec::new());
    let full = SpaceFailure::default();
    let totals: WorkerTotals = Mutex::new((0, 0, 0));
    let threads = options.concurrency.max(1);
    let (files, jobs) = bounded::<Vec<FileJob<S::Dir, S::Kind>>>(threads);
    // A round is handed over once the writer is done with the one before: at most two are
    // held, one written and one planned.
    let (rounds, round_jobs) = bounded::<Vec<FileJob<S::Dir, S::Kind>>>(0);
    let outcomes = Outcomes {
        progress,
        errors: &errors,
        full: &full,
        totals: &totals,
    };
    let counting_stopped = AtomicBool::new(false);
    let (planned, mut dirs, links, mut report) = std::thread::scope(|scope| {
        scope.spawn(|| source.count(&root, progress, &counting_stopped));
        let outcomes = &outcomes;
        let mut workers: Vec<_> = (0..threads)
            .map(|_| {
                let jobs = jobs.clone();
                scope.spawn(move || run_sync_worker(source, jobs, outcomes))
            })
            .collect();
        drop(jobs);
        if let Some(repo) = source.repository() {
            let readers = threads.max(repo.backend().preferred_concurrency());
            workers
                .push(scope.spawn(move || run_round_writer(repo, round_jobs, readers, outcomes)));
        }
        let mut planner = Planner {
            source,
            options,
            progress,
            files,
            rounds,
            batch: Vec::new(),
            batch_bytes: 0,
            round: Vec::new(),
            round_bytes: 0,
            errors: &errors,
            full: &full,
            dirs: Vec::new(),
            links: LinkGroups::default(),
            report: SyncReport {
                dry_run: options.dry_run,
                ..SyncReport::default()
            },
            changes,
        };
        let planned = planner.sync_tree(root.clone(), target_dir.clone(), fresh);
        planner.send_batch();
        planner.send_round();
        let Planner {
            files,
            rounds,
            dirs,
            links,
            report,
            ..
        } = planner;
        // With the planner's senders gone, the workers finish what is queued and stop.
        drop((files, rounds));
        for worker in workers {
            worker.join().expect("sync workers do not panic");
        }
        // Out of space, the count goes on to its end: the report says how much is missing.
        if !full.is_full() {
            counting_stopped.store(true, Ordering::Relaxed);
        }
        (planned, dirs, links, report)
    });
    planned?;
    let mut errors = errors.into_inner().expect("not poisoned");
    report.out_of_space = full.into_outcome(target).map(|mut full| {
        let total = progress.total_bytes.load(Ordering::Relaxed);
        full.set_missing(total.saturating_sub(progress.bytes_done.load(Ordering::Relaxed)));
        full
    });
    // Out of space, the files to link to may be missing; the report says what was synced.
    let pending = match report.out_of_space {
        Some(_) => &[][..],
        None => &links.pending[..],
    };
    for later in pending {
        if later.linked {
            report.files_unchanged += 1;
            continue;
        }
        let Some(root_dir) = target_dir.as_deref().filter(|_| !options.dry_run) else {
            report.files_written += 1;
            continue;
        };
        match link(root_dir, &later.path, &later.first, &errors) {
            Ok(()) => report.files_written += 1,
            Err(e) => errors.push(PathError {
                path: target.join(&later.path),
                message: e.to_string(),
            }),
        }
    }
    if let Some(root_dir) = target_dir.as_deref().filter(|_| !options.dry_run) {
        if let Some(entry) = root_entry {
            dirs.push((PathBuf::new(), entry.clone()));
        }
        for (path, message) in set_directories_metadata(root_dir, &dirs) {
            errors.push(PathError { path, message });
        }
    }
    let (written, fetched, reused) = totals.into_inner().expect("not poisoned");
    report.files_written += written;
    report.bytes_transferred += source.bytes_received().unwrap_or(fetched);
    // What arrived after the workers' last update (the total's answer, the listing's end).
    if let Some(received) = source.bytes_received() {
        progress.bytes_read.store(received, Ordering::Relaxed);
    }
    report.bytes_reused += reused;
    report.errors = errors;
    Ok(report)
}
