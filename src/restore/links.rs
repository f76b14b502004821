//! Hard links of a sync or restore: the entries of a source that share one inode, the first
//! written and the others linked to it once every file is written.

use super::itemize::Differences;
use super::write::temp_name;
use crate::error::{Error, IoContext, PathError, Result};
use crate::target::TargetDir;
use crate::tree::{Entry, Kind};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Where a regular file stands among the source's hard links.
pub(super) enum LinkRole {
    /// Not a hard link.
    Alone,
    /// The first of its group met by the walk (its key): written like any file.
    First((u64, u64)),
    /// A later member: linked to the first once that is written.
    Later(FirstLink),
}

/// The first member of a hard-link group, as the planner left it.
#[derive(Clone)]
pub(super) struct FirstLink {
    pub(super) path: PathBuf,
    /// The inode at its place in the target, when that was kept (not written anew).
    pub(super) kept_inode: Option<(u64, u64)>,
    /// How that inode differed from the entry before its metadata was set.
    pub(super) differences: Option<Differences>,
}

/// A later member of a hard-link group, to be linked to the first unless it already is.
pub(super) struct LaterLink {
    pub(super) path: PathBuf,
    pub(super) first: PathBuf,
    pub(super) linked: bool,
}

/// The source's hard-link groups as the planner meets them, by paths relative to the target.
/// Whether a later member is already linked is decided when it is planned, from the
/// target as it was then, so a dry run decides as the real run does.
#[derive(Default)]
pub(super) struct LinkGroups {
    firsts: HashMap<(u64, u64), FirstLink>,
    pub(super) pending: Vec<LaterLink>,
}

impl LinkGroups {
    /// Where `entry` stands: alone, the first of its group, or a later member.
    pub(super) fn group_of(&self, entry: &Entry<impl Kind>) -> LinkRole {
        let Some(key) = entry.hardlink_key() else {
            return LinkRole::Alone;
        };
        match self.firsts.get(&key) {
            Some(first) => LinkRole::Later(first.clone()),
            None => LinkRole::First(key),
        }
    }

    /// Records the first member of group `key`, planned at `path`.
    pub(super) fn first(
        &mut self,
        key: (u64, u64),
        path: &Path,
        kept_inode: Option<(u64, u64)>,
        differences: Option<Differences>,
    ) {
        let first = FirstLink {
            path: path.to_owned(),
            kept_inode,
            differences,
        };
        self.firsts.insert(key, first);
    }

    /// Whether a later member whose place holds `inode` is linked to `first` already, and
    /// what its line shows: the first's differences when it is (one inode), its own when not.
    pub(super) fn later(
        &self,
        first: &FirstLink,
        inode: Option<(u64, u64)>,
        own: Option<Differences>,
    ) -> (bool, Option<Differences>) {
        match (first.kept_inode, inode) {
            (Some(a), Some(b)) if a == b => (true, first.differences),
            _ => (false, own),
        }
    }
}

/// Makes `path` a hard link of `first` (both relative to `root`).
pub(super) fn link(
    root: &TargetDir,
    path: &Path,
    first: &Path,
    errors: &[PathError],
) -> Result<()> {
    let shown_first = root.path().join(first);
    if errors.iter().any(|e| e.path == shown_first) {
        return Err(Error::InvalidInput(format!(
            "not linked: {} could not be written",
            shown_first.display()
        )));
    }
    let shown = root.path().join(path);
    let context = || format!("linking {}", shown.display());
    let (from, from_name) = root.open_parent(first).context_io(context)?;
    let (dir, name) = root.open_parent(path).context_io(context)?;
    let temp = temp_name();
    dir.hard_link(&from, from_name, &temp).context_io(context)?;
    dir.rename(&temp, name)
        .context_io(|| format!("replacing {}", shown.display()))?;
    // Renaming a link over another name of the same inode leaves both names.
    let _ = dir.unlink(&temp);
    Ok(())
}
