//! A source seen through include and exclude patterns (`restore --include/--exclude`), matched
//! (`crate::pattern`) against each entry's path in the checkpoint, as `find` shows it.
//!
//! An excluded entry is left out with everything below it. With includes, an entry is kept
//! when it matches one, or lies below a directory that does (the whole directory comes
//! back), and a directory is kept when something below it is included, so the included
//! entries arrive at their places; the rest is left out. Which directories lead somewhere is
//! learnt by one walk of the listings before the restore starts, which also counts what will
//! be written (the progress totals).

use super::{FileTask, FileWrite, Listing, TreeSource};
use crate::error::{PathError, Result};
use crate::pattern::Patterns;
use crate::progress::Progress;
use crate::repo::Repository;
use crate::tree::Entry;
use std::collections::HashSet;
use std::fs::File;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

/// Include and exclude patterns: an entry must match an include (when there are any) and no
/// exclude.
pub struct Selection {
    pub includes: Patterns,
    pub excludes: Patterns,
}

impl Selection {
    /// Whether everything below the directory at `prefix` (`dir/`, empty at the root) is
    /// included: there are no includes, or the directory itself matches one (restoring a
    /// directory that an include names brings it back whole).
    fn takes_whole(&self, prefix: &[u8]) -> bool {
        let own = prefix.strip_suffix(b"/").unwrap_or(prefix);
        self.includes.is_empty() || (!own.is_empty() && self.includes.matches(own, true))
    }
}

/// `source` with only the entries `selection` keeps.
pub struct Filtered<'a, S: TreeSource> {
    source: &'a S,
    selection: &'a Selection,
    /// The paths of the directories with something included below them.
    leads_to_included: HashSet<Vec<u8>>,
    files: u64,
    bytes: u64,
}

/// A directory of a filtered source.
#[derive(Clone)]
pub struct FilteredDir<D> {
    inner: D,
    /// Its path in the checkpoint with a trailing `/`; empty at the root.
    prefix: Arc<[u8]>,
    /// Whether it, or a directory above it, matched an include.
    included: bool,
}

/// What becomes of an entry.
enum Verdict {
    Left,
    /// Kept; for a directory, whether what is below it is included whatever its name.
    Kept {
        included: bool,
    },
    /// Not kept itself, but a directory to look in for what is.
    LookBelow,
}

impl<'a, S: TreeSource> Filtered<'a, S> {
    /// Filters `source`, whose root directory is `root` at path `prefix` in the checkpoint
    /// (`dir/`, or empty for the whole checkpoint). Walks the source's listings once.
    pub fn new(
        source: &'a S,
        root: &S::Dir,
        prefix: &[u8],
        selection: &'a Selection,
        errors: &Mutex<Vec<PathError>>,
    ) -> Result<Self> {
        let mut filtered = Filtered {
            source,
            selection,
            leads_to_included: HashSet::new(),
            files: 0,
            bytes: 0,
        };
        let mut open = vec![(root.clone(), prefix.to_vec(), selection.takes_whole(prefix))];
        while let Some((dir, prefix, included)) = open.pop() {
            crate::interrupt::check()?;
            for (entry, handle) in source.list(&dir, errors)? {
                let path = [&prefix[..], &entry.name].concat();
                let verdict = filtered.verdict(&path, &entry, included);
                if let Verdict::Kept { .. } = verdict {
                    if entry.is_file() {
                        filtered.files += 1;
                        filtered.bytes += entry.size;
                    }
                    if !included {
                        filtered.mark_ancestors(&path);
                    }
                }
                let below = match verdict {
                    Verdict::Kept { included } => included,
                    Verdict::LookBelow => false,
                    Verdict::Left => continue,
                };
                if let Some(handle) = handle {
                    open.push((handle, [&path[..], b"/"].concat(), below));
                }
            }
        }
        Ok(filtered)
    }

    /// The handle of the root directory `root` at `prefix` (as given to `new`).
    pub fn root(&self, root: S::Dir, prefix: &[u8]) -> FilteredDir<S::Dir> {
        FilteredDir {
            inner: root,
            prefix: prefix.into(),
            included: self.selection.takes_whole(prefix),
        }
    }

    fn verdict(&self, path: &[u8], entry: &Entry<S::Kind>, below_included: bool) -> Verdict {
        let is_dir = entry.is_dir();
        if self.selection.excludes.matches(path, is_dir) {
            return Verdict::Left;
        }
        if below_included || self.selection.includes.matches(path, is_dir) {
            return Verdict::Kept { included: true };
        }
        match is_dir {
            true if self.leads_to_included.contains(path) => Verdict::Kept { included: false },
            true => Verdict::LookBelow,
            false => Verdict::Left,
        }
    }

    /// Records that the directories above `path` lead to something included.
    fn mark_ancestors(&mut self, path: &[u8]) {
        let mut end = path.len();
        while let Some(slash) = path[..end].iter().rposition(|&b| b == b'/') {
            if !self.leads_to_included.insert(path[..slash].to_vec()) {
                return;
            }
            end = slash;
        }
    }
}

impl<S: TreeSource> TreeSource for Filtered<'_, S> {
    type Dir = FilteredDir<S::Dir>;
    type Kind = S::Kind;

    fn list(&self, dir: &Self::Dir, errors: &Mutex<Vec<PathError>>) -> Result<Listing<Self>> {
        let mut kept = Vec::new();
        for (entry, handle) in self.source.list(&dir.inner, errors)? {
            let path = [&dir.prefix[..], &entry.name].concat();
            let included = match self.verdict(&path, &entry, dir.included) {
                Verdict::Kept { included } => included,
                Verdict::LookBelow | Verdict::Left => continue,
            };
            let handle = handle.map(|inner| FilteredDir {
                inner,
                prefix: [&path[..], b"/"].concat().into(),
                included,
            });
            kept.push((entry, handle));
        }
        Ok(kept)
    }

    fn count(&self, _: &Self::Dir, progress: &Progress, _: &AtomicBool) {
        progress.set_totals(self.files, self.bytes);
    }

    fn bytes_received(&self) -> Option<u64> {
        self.source.bytes_received()
    }

    fn write_file(
        &self,
        dir: &Self::Dir,
        entry: &Entry<S::Kind>,
        old: Option<&File>,
        out: &File,
    ) -> Result<FileWrite> {
        self.source.write_file(&dir.inner, entry, old, out)
    }

    fn repository(&self) -> Option<&Repository> {
        self.source.repository()
    }

    fn write_files(&self, files: &[FileTask<'_, Self::Dir, Self::Kind>]) -> Vec<Result<FileWrite>> {
        let inner: Vec<FileTask<'_, S::Dir, S::Kind>> = files
            .iter()
            .map(|file| FileTask {
                dir: &file.dir.inner,
                entry: file.entry,
                old: file.old,
                out: file.out,
            })
            .collect();
        self.source.write_files(&inner)
    }
}
