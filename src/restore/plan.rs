//! The planner of a sync or restore: walks the source beside the target in name order with an
//! explicit stack, decides every change (listing it as `itemize` does), makes directories,
//! symlinks and special files, deletes what `delete` asks for, and hands the files to the
//! writers.

use super::TEMP_PREFIX;
use super::itemize::{Change, Differences, Update, differences};
use super::links::{LaterLink, LinkGroups, LinkRole};
use super::write::{BATCH_BYTES, FILES_PER_BATCH, FileJob, ROUND_BYTES, ROUND_FILES, temp_name};
use crate::error::{Error, IoContext, PathError, Result};
use crate::fs::meta::running_as_root;
use crate::progress::Progress;
use crate::source::Listing;
use crate::source::TreeSource;
use crate::space::{SpaceFailure, is_out_of_space};
use crate::sync::{SyncOptions, SyncReport};
use crate::target::{TargetDir, check_path_length, may_adjust_in_place, same_kind};
use crate::tree::{Entry, Kind, Shape, is_valid_name};
use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// One directory being walked: the source's handle, where it is written (`None` in a dry run
/// below a directory that does not exist yet), whether this run made that directory (then
/// nothing is at any entry's place, and nothing there is looked at), its remaining entries,
/// and its own entry (whose metadata it gets at the end; `None` for the target itself).
pub(super) struct Level<D, K> {
    pub(super) target: Option<Arc<TargetDir>>,
    pub(super) fresh: bool,
    pub(super) relative: PathBuf,
    pub(super) entries: std::vec::IntoIter<(Entry<K>, Option<D>)>,
    pub(super) source: D,
    pub(super) own: Option<Entry<K>>,
}

/// Where an entry goes: the directory it is written into (`None` in a dry run below a
/// directory that does not exist yet), whether this run made that directory, and its path
/// below the sync's target.
struct Place {
    pub(super) target: Option<Arc<TargetDir>>,
    pub(super) fresh: bool,
    pub(super) relative: PathBuf,
}

/// Walks source and target side by side, fixing all but regular files, which go to workers,
/// and lists each change as it decides it.
pub(super) struct Planner<'a, S: TreeSource> {
    pub(super) source: &'a S,
    pub(super) options: &'a SyncOptions,
    pub(super) progress: &'a Progress,
    pub(super) files: crossbeam_channel::Sender<Vec<FileJob<S::Dir, S::Kind>>>,
    /// Where rounds go (see `sync_round`), for a checkpoint source.
    pub(super) rounds: crossbeam_channel::Sender<Vec<FileJob<S::Dir, S::Kind>>>,
    /// Files not yet handed to a worker, and the bytes of their content.
    pub(super) batch: Vec<FileJob<S::Dir, S::Kind>>,
    pub(super) batch_bytes: u64,
    /// Files for a round (see `sync_round`) not yet handed over, and their bytes.
    pub(super) round: Vec<FileJob<S::Dir, S::Kind>>,
    pub(super) round_bytes: u64,
    pub(super) errors: &'a Mutex<Vec<PathError>>,
    pub(super) full: &'a SpaceFailure,
    /// Directories (relative to the target) with their metadata, deepest first.
    pub(super) dirs: Vec<(PathBuf, Entry<S::Kind>)>,
    /// Hard links to make once the files are written, by paths relative to the target.
    pub(super) links: LinkGroups,
    pub(super) report: SyncReport,
    pub(super) changes: &'a mut dyn FnMut(&Change),
}

impl<S: TreeSource> Planner<'_, S> {
    /// Hands the files gathered so far to a worker.
    pub(super) fn send_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        self.batch_bytes = 0;
        self.files
            .send(std::mem::take(&mut self.batch))
            .expect("sync workers outlive the planner");
    }

    /// Hands the files gathered for a round so far to the round writer.
    pub(super) fn send_round(&mut self) {
        if self.round.is_empty() {
            return;
        }
        self.round_bytes = 0;
        self.rounds
            .send(std::mem::take(&mut self.round))
            .expect("the round writer outlives the planner");
    }

    /// Syncs the source directory `root` into `target`, walking with an explicit stack.
    /// Wrong data from the source stops everything, and so does a full filesystem; an entry
    /// that cannot be read or written otherwise is reported and the rest goes on.
    pub(super) fn sync_tree(
        &mut self,
        root: S::Dir,
        target: Option<Arc<TargetDir>>,
        fresh: bool,
    ) -> Result<()> {
        let entries = self.list_dir(&root, target.as_deref().filter(|_| !fresh), Path::new(""))?;
        let mut stack = vec![Level {
            target,
            fresh,
            relative: PathBuf::new(),
            entries: entries.into_iter(),
            source: root,
            own: None,
        }];
        while let Some(level) = stack.last_mut() {
            if self.full.is_full() {
                return Ok(());
            }
            let Some((entry, subdir)) = level.entries.next() else {
                let done = stack.pop().expect("the loop holds a level");
                if let Some(own) = done.own {
                    self.dirs.push((done.relative, own));
                }
                continue;
            };
            if !is_valid_name(&entry.name) {
                return Err(Error::corrupt(
                    self.shown(level.target.as_deref(), &level.relative)
                        .display()
                        .to_string(),
                    format!("refusing the source entry named {:?}", entry.name_lossy()),
                ));
            }
            let relative = level.relative.join(OsStr::from_bytes(&entry.name));
            let (source_dir, target) = (level.source.clone(), level.target.clone());
            let shown = self.shown(target.as_deref(), &relative);
            let place = Place {
                target,
                fresh: level.fresh,
                relative,
            };
            match self.sync_entry(&source_dir, subdir, place, entry) {
                Ok(Some(next)) => stack.push(next),
                Ok(None) => {}
                Err(e) if e.kind() == crate::error::ErrorKind::Corrupt => return Err(e),
                Err(e) => self.report_error(shown, e),
            }
        }
        Ok(())
    }

    /// Where `relative` is, for messages.
    pub(super) fn shown(&self, target: Option<&TargetDir>, relative: &Path) -> PathBuf {
        match (target, relative.file_name()) {
            (Some(dir), Some(name)) => dir.child_path(name.as_bytes()),
            (Some(dir), None) => dir.path().to_owned(),
            (None, _) => relative.to_owned(),
        }
    }

    /// Reports that `path` could not be synced (a full filesystem stops the sync instead).
    fn report_error(&self, path: PathBuf, e: Error) {
        if is_out_of_space(&e) {
            self.full.record(path, &e);
            return;
        }
        self.errors.lock().expect("not poisoned").push(PathError {
            path,
            message: e.to_string(),
        });
    }

    /// The entries of source directory `dir`; with `target` (the directory it is written
    /// into, at `relative` below the sync's target), also removes what the source lacks
    /// there.
    pub(super) fn list_dir(
        &mut self,
        dir: &S::Dir,
        target: Option<&TargetDir>,
        relative: &Path,
    ) -> Result<Listing<S>> {
        let entries = self.source.list(dir, self.errors)?;
        if let Some(target) = target {
            self.remove_extras(&entries, target, relative)?;
        }
        Ok(entries)
    }

    /// Removes what the source lacks (with `delete`, within `max_delete`) and this tool's
    /// own leftovers; `relative` is where `target` is below the sync's target.
    fn remove_extras(
        &mut self,
        entries: &Listing<S>,
        target: &TargetDir,
        relative: &Path,
    ) -> Result<()> {
        let Ok(mut existing) = target.names() else {
            return Ok(());
        };
        existing.sort_unstable();
        let wanted: HashSet<&[u8]> = entries.iter().map(|(e, _)| e.name.as_slice()).collect();
        let (dry_run, max_delete) = (self.options.dry_run, self.options.max_delete);
        for name in existing {
            if wanted.contains(name.as_slice()) {
                continue;
            }
            let removing = || format!("removing {}", target.child_path(&name).display());
            if name.starts_with(TEMP_PREFIX.as_bytes()) {
                if !dry_run {
                    target.remove(&name).context_io(removing)?;
                }
                continue;
            }
            if !self.options.delete {
                continue;
            }
            let (report, changes) = (&mut self.report, &mut *self.changes);
            let mut allow = |path: &Path, is_dir: bool| {
                delete_within(report, changes, max_delete, relative.join(path), is_dir)
            };
            if !target
                .remove_each(&name, dry_run, &mut allow)
                .context_io(removing)?
            {
                self.report.deletions_skipped += 1;
            }
        }
        Ok(())
    }

    /// Clears directory `name` of `target` (at `relative` below the sync's target) for an
    /// entry of another kind, as rsync does. With `delete` or `force` each entry it holds
    /// is asked for like a deletion (listed, counted, within `max_delete`); the directory
    /// itself is replaced, not deleted. Otherwise only an empty directory goes. In a dry
    /// run nothing is removed and the answer is the real run's. A directory that stays is
    /// an error: the entry is not synced.
    fn make_way(&mut self, target: &TargetDir, name: &[u8], relative: &Path) -> Result<()> {
        let (dry_run, max_delete) = (self.options.dry_run, self.options.max_delete);
        let deleting = self.options.delete || self.options.force;
        let own = Path::new(OsStr::from_bytes(name));
        let parent = relative.parent().unwrap_or(Path::new(""));
        let (report, changes) = (&mut self.report, &mut *self.changes);
        let mut allow = |path: &Path, is_dir: bool| {
            if path == own {
                return true;
            }
            deleting && delete_within(report, changes, max_delete, parent.join(path), is_dir)
        };
        if target
            .remove_each(name, dry_run, &mut allow)
            .context_io(|| format!("removing {}", target.child_path(name).display()))?
        {
            return Ok(());
        }
        if !deleting {
            return Err(Error::InvalidInput(
                "cannot replace a non-empty directory by the source's entry: run with \
                 --delete or --force to remove what it holds"
                    .into(),
            ));
        }
        self.report.deletions_skipped += 1;
        Err(Error::InvalidInput(
            "cannot replace the directory by the source's entry: removing what it holds \
             stopped at the --max-delete limit"
                .into(),
        ))
    }

    /// Brings one entry of `place` up to date; a directory is returned to be walked.
    fn sync_entry(
        &mut self,
        dir: &S::Dir,
        subdir: Option<S::Dir>,
        place: Place,
        entry: Entry<S::Kind>,
    ) -> Result<Option<Level<S::Dir, S::Kind>>> {
        let Place {
            target,
            fresh,
            relative,
        } = place;
        let dry_run = self.options.dry_run;
        let name = entry.name.as_slice();
        let shown = self.shown(target.as_deref(), &relative);
        let created = || format!("creating {}", shown.display());
        check_path_length(&relative).context_io(created)?;
        let existing = match target.as_ref().filter(|_| !fresh) {
            Some(t) => t
                .metadata(name)
                .context_io(|| format!("reading {}", shown.display()))?,
            None => None,
        };
        let is_dir = existing.as_ref().is_some_and(|m| m.is_dir());
        // What the target holds of the entry's kind, and how it differs.
        let old = existing
            .as_ref()
            .filter(|m| same_kind(m, entry.kind.shape()))
            .zip(target.as_deref());
        let compared = match old {
            Some((m, t)) => Some((m, compare(t, name, m, &entry)?)),
            None => None,
        };
        let differences = compared.map(|(_, d)| d);
        // The entry's metadata set where it is, when only that differs: `Some(true)` done (or
        // to be done, in a dry run), `Some(false)` nothing to do, `None` it must be made anew.
        let fixed_in_place = |content_differs: bool| -> Result<Option<bool>> {
            let Some((m, d)) = compared.filter(|_| !content_differs) else {
                return Ok(None);
            };
            if !d.metadata() {
                return Ok(Some(false));
            }
            if !may_adjust_in_place(m, &entry) {
                return Ok(None);
            }
            match target.as_deref().filter(|_| !dry_run) {
                Some(t) => Ok(t
                    .set_metadata_at(name, &entry)
                    .context_io(|| format!("setting metadata of {}", shown.display()))?
                    .then_some(true)),
                None => Ok(Some(true)),
            }
        };
        // Below here a missing target means a dry run: nothing is written.
        let writable = target.as_deref().filter(|_| !dry_run);
        match entry.kind.shape() {
            Shape::Dir => {
                self.report.dirs += 1;
                match differences {
                    None => self.list_change(Update::Created, &entry, &relative, None),
                    Some(d) if d.metadata() => {
                        self.list_change(Update::Attributes, &entry, &relative, Some(d))
                    }
                    Some(_) => {}
                }
                let subtarget = match (&target, dry_run) {
                    (Some(t), false) => Some(t.ensure_dir(name).context_io(created)?),
                    (Some(t), true) if is_dir => Some(
                        t.open_dir(name)
                            .context_io(|| format!("opening {}", shown.display()))?,
                    ),
                    _ => None,
                }
                .map(Arc::new);
                let Some(subdir) = subdir else {
                    self.dirs.push((relative, entry));
                    return Ok(None);
                };
                // Made by this run unless a directory was there: nothing inside to compare.
                let sub_fresh = subtarget.is_some() && !is_dir;
                let listed_target = subtarget.as_deref().filter(|_| !sub_fresh);
                let entries = match self.list_dir(&subdir, listed_target, &relative) {
                    Ok(entries) => entries,
                    Err(e) if e.kind() == crate::error::ErrorKind::Corrupt => return Err(e),
                    Err(e) => {
                        self.report_error(shown.clone(), e);
                        Vec::new()
                    }
                };
                return Ok(Some(Level {
                    target: subtarget,
                    fresh: sub_fresh,
                    relative,
                    entries: entries.into_iter(),
                    source: subdir,
                    own: Some(entry),
                }));
            }
            Shape::File => {
                let group = self.links.group_of(&entry);
                if let (true, Some(t)) = (is_dir, &target) {
                    self.make_way(t, name, &relative)?;
                }
                if let LinkRole::Later(first) = &group {
                    let inode = existing.as_ref().map(|m| (m.dev(), m.ino()));
                    let (linked, listed) = self.links.later(first, inode, differences);
                    let mut change = Change::of(Update::HardLink, &entry, &relative, listed);
                    if !linked {
                        change.linked_to = Some(first.path.clone());
                    }
                    if !linked || listed.is_some_and(|d| d.metadata()) {
                        (self.changes)(&change);
                    }
                    self.links.pending.push(LaterLink {
                        path: relative,
                        first: first.path.clone(),
                        linked,
                    });
                    self.progress.file_done(entry.size);
                    return Ok(None);
                }
                let content_differs =
                    self.options.ignore_times || differences.is_none_or(|d| d.content());
                if let Some(fixed) = fixed_in_place(content_differs)? {
                    if fixed {
                        self.list_change(Update::Attributes, &entry, &relative, differences);
                    }
                    if let LinkRole::First(key) = group {
                        let inode = existing.as_ref().map(|m| (m.dev(), m.ino()));
                        self.links.first(key, &relative, inode, differences);
                    }
                    self.report.files_unchanged += 1;
                    self.progress.file_done(entry.size);
                    return Ok(None);
                }
                if let LinkRole::First(key) = group {
                    self.links.first(key, &relative, None, differences);
                }
                self.list_change(Update::Received, &entry, &relative, differences);
                let Some(target) = target.filter(|_| !dry_run) else {
                    self.report.files_written += 1;
                    self.progress.file_done(entry.size);
                    return Ok(None);
                };
                let job = FileJob {
                    dir: dir.clone(),
                    target,
                    has_old: existing.as_ref().is_some_and(|m| m.is_file()),
                    fresh,
                    entry,
                    sparse: self.options.sparse,
                };
                if !job.has_old && self.source.repository().is_some() {
                    self.round_bytes += job.entry.size;
                    self.round.push(job);
                    if self.round.len() >= ROUND_FILES || self.round_bytes >= ROUND_BYTES {
                        self.send_round();
                    }
                } else {
                    self.batch_bytes += job.entry.size;
                    self.batch.push(job);
                    if self.batch.len() >= FILES_PER_BATCH || self.batch_bytes >= BATCH_BYTES {
                        self.send_batch();
                    }
                }
            }
            Shape::CharDevice(_) | Shape::BlockDevice(_) if !running_as_root() => {
                self.report.skipped.push(PathError {
                    path: shown,
                    message: "device node; only root can create it".into(),
                });
                return Ok(None);
            }
            Shape::Symlink(_) | Shape::Fifo | Shape::CharDevice(_) | Shape::BlockDevice(_) => {
                let value_differs = differences.is_none_or(|d| d.value);
                if let Some(fixed) = fixed_in_place(value_differs)? {
                    if fixed {
                        self.list_change(Update::Attributes, &entry, &relative, differences);
                    }
                    self.report.files_unchanged += 1;
                    return Ok(None);
                }
                if let (true, Some(t)) = (is_dir, &target) {
                    self.make_way(t, name, &relative)?;
                }
                self.list_change(Update::Created, &entry, &relative, differences);
                self.report.files_written += 1;
                let Some(t) = writable else {
                    return Ok(None);
                };
                // Made under a temporary name, then renamed over what is there: a symlink
                // or node is replaced at once, never missing.
                let temp = temp_name();
                match entry.kind.shape() {
                    Shape::Symlink(link_target) => t.symlink(link_target, &temp),
                    kind => t.make_node(&temp, kind),
                }
                .context_io(created)?;
                let placed = t
                    .set_metadata_of_new(&temp, &entry)
                    .and_then(|()| t.rename(&temp, name));
                if let Err(e) = placed {
                    let _ = t.unlink(&temp);
                    return Err(e).context_io(created);
                }
            }
        }
        Ok(None)
    }

    /// Lists a change of `entry` at `relative`.
    fn list_change(
        &mut self,
        update: Update,
        entry: &Entry<S::Kind>,
        relative: &Path,
        differences: Option<Differences>,
    ) {
        (self.changes)(&Change::of(update, entry, relative, differences));
    }
}

/// How entry `name` of `target` (`.` for the target itself), of `entry`'s kind as
/// `metadata` says, differs from `entry`.
pub(super) fn compare(
    target: &TargetDir,
    name: &[u8],
    metadata: &fs::Metadata,
    entry: &Entry<impl Kind>,
) -> Result<Differences> {
    let shown = || format!("reading {}", target.child_path(name).display());
    let xattrs = target.xattrs(name).context_io(shown)?;
    let link = match entry.kind.shape() {
        Shape::Symlink(_) => Some(target.read_link(name).context_io(shown)?),
        _ => None,
    };
    Ok(differences(
        metadata,
        &xattrs,
        link.as_deref(),
        entry,
        running_as_root(),
    ))
}

/// Whether `--delete` may remove one more entry (at `path` relative to the sync's target)
/// within `max_delete`; if so it is counted and listed.
fn delete_within(
    report: &mut SyncReport,
    changes: &mut dyn FnMut(&Change),
    max_delete: Option<u64>,
    path: PathBuf,
    is_dir: bool,
) -> bool {
    if max_delete.is_some_and(|max| report.entries_deleted >= max) {
        return false;
    }
    report.entries_deleted += 1;
    changes(&Change::deleted(path, is_dir));
    true
}
