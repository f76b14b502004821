//! What a sync into a directory finds different, and how it lists what it does: the
//! comparison of a source entry with what the target holds at its place (every recorded
//! attribute: size, mtime, mode, owner, group, the xattrs cairn manages, symlink target,
//! device number), and
//! rsync's itemized form of each change (`-i`, `YXcstpoguax`: `>f.st...... path`,
//! `cd+++++++++ dir/`, `*deleting   path`).

use crate::fs::meta::{is_acl_xattr, manages_xattr};
use crate::tree::{Entry, Kind, Shape, Xattr};
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The attributes in which an entry in the target differs from the source's entry of the
/// same kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Differences {
    /// A symlink's target or a device's number.
    pub value: bool,
    /// A regular file's size.
    pub size: bool,
    pub time: bool,
    pub perms: bool,
    pub owner: bool,
    pub group: bool,
    /// POSIX ACLs (the `system.posix_acl_*` xattrs).
    pub acl: bool,
    /// Any other xattr: added, changed or removed.
    pub xattrs: bool,
}

impl Differences {
    /// Whether a regular file fails rsync's quick check: its content is to be transferred.
    pub fn content(&self) -> bool {
        self.size || self.time
    }

    /// Whether anything but the content or value differs: what setting metadata fixes.
    pub fn metadata(&self) -> bool {
        self.time || self.perms || self.owner || self.group || self.acl || self.xattrs
    }

    /// The nine attribute letters of an itemized line (`cstpoguax`).
    fn letters(&self) -> String {
        let flag = |on: bool, letter: char| if on { letter } else { '.' };
        [
            flag(self.value, 'c'),
            flag(self.size, 's'),
            flag(self.time, 't'),
            flag(self.perms, 'p'),
            flag(self.owner, 'o'),
            flag(self.group, 'g'),
            '.',
            flag(self.acl, 'a'),
            flag(self.xattrs, 'x'),
        ]
        .into_iter()
        .collect()
    }
}

/// How an entry in the target of the same kind (`metadata`, its `xattrs` sorted by name and,
/// for a symlink, its `link` target) differs from `entry`. Owners are compared only
/// `as_root` (a sync that sets them), xattrs only those `manages_xattr` names; a symlink has
/// no mode of its own.
pub fn differences(
    metadata: &Metadata,
    xattrs: &[Xattr],
    link: Option<&[u8]>,
    entry: &Entry<impl Kind>,
    as_root: bool,
) -> Differences {
    let split = |list: &[Xattr]| -> (Vec<Xattr>, Vec<Xattr>) {
        list.iter()
            .filter(|x| manages_xattr(&x.name, as_root))
            .cloned()
            .partition(|x| is_acl_xattr(&x.name))
    };
    let (old_acl, old_other) = split(xattrs);
    let (new_acl, new_other) = split(&entry.xattrs);
    let mut new_sorted = (new_acl, new_other);
    new_sorted.0.sort_by(|a, b| a.name.cmp(&b.name));
    new_sorted.1.sort_by(|a, b| a.name.cmp(&b.name));
    let value = match entry.kind.shape() {
        Shape::Symlink(target) => link != Some(target),
        Shape::CharDevice(rdev) | Shape::BlockDevice(rdev) => metadata.rdev() != rdev,
        _ => false,
    };
    let is_symlink = matches!(entry.kind.shape(), Shape::Symlink(_));
    Differences {
        value,
        size: entry.is_file() && metadata.len() != entry.size,
        time: crate::fs::meta::mtime_ns(metadata) != entry.mtime_ns,
        perms: !is_symlink && metadata.mode() & 0o7777 != entry.mode,
        owner: as_root && metadata.uid() != entry.uid,
        group: as_root && metadata.gid() != entry.gid,
        acl: old_acl != new_sorted.0,
        xattrs: old_other != new_sorted.1,
    }
}

/// What happened to an entry, as the first letter of its itemized line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update {
    /// A regular file's content was transferred (`>`).
    Received,
    /// Created or replaced in place: a directory, symlink or special file (`c`).
    Created,
    /// A hard link to another entry of the transfer (`h`).
    HardLink,
    /// Only attributes changed (`.`).
    Attributes,
    /// Removed, with `--delete` (`*deleting`).
    Deleted,
}

/// One entry a sync creates, changes or deletes.
#[derive(Debug, Clone)]
pub struct Change {
    pub update: Update,
    /// The entry's kind as rsync writes it: `f`, `d`, `L`, `D` (device), `S` (FIFO).
    pub kind: char,
    /// What differs; `None` for an entry new to the target (`+++++++++`).
    pub differences: Option<Differences>,
    /// Relative to the target, empty for the target itself.
    pub path: PathBuf,
    /// A symlink's target (` -> target`).
    pub link: Option<Vec<u8>>,
    /// The entry a new hard link points to (` => first`).
    pub linked_to: Option<PathBuf>,
}

/// The letter rsync gives a kind of entry.
pub fn kind_letter(kind: Shape<'_>) -> char {
    match kind {
        Shape::File => 'f',
        Shape::Dir => 'd',
        Shape::Symlink(_) => 'L',
        Shape::CharDevice(_) | Shape::BlockDevice(_) => 'D',
        Shape::Fifo => 'S',
    }
}

impl Change {
    /// A change of `entry` at `path`.
    pub fn of(
        update: Update,
        entry: &Entry<impl Kind>,
        path: &Path,
        differences: Option<Differences>,
    ) -> Change {
        let link = match entry.kind.shape() {
            Shape::Symlink(target) => Some(target.to_vec()),
            _ => None,
        };
        Change {
            update,
            kind: kind_letter(entry.kind.shape()),
            differences,
            path: path.to_owned(),
            link,
            linked_to: None,
        }
    }

    /// The deletion of the entry at `path`.
    pub fn deleted(path: PathBuf, is_dir: bool) -> Change {
        Change {
            update: Update::Deleted,
            kind: if is_dir { 'd' } else { 'f' },
            differences: None,
            path,
            link: None,
            linked_to: None,
        }
    }

    /// Whether rsync's `-v` names this entry: created, transferred, linked or deleted, not
    /// one whose attributes alone changed.
    pub fn is_named_by_verbose(&self) -> bool {
        self.update != Update::Attributes
    }

    /// The path as shown: below `prefix`, `./` for the target itself, a directory with a
    /// trailing `/`.
    fn shown_path(&self, prefix: &Path) -> String {
        let path = prefix.join(&self.path);
        let mut shown = String::from_utf8_lossy(path.as_os_str().as_bytes()).into_owned();
        if shown.is_empty() {
            shown.push('.');
        }
        if self.kind == 'd' {
            shown.push('/');
        }
        shown
    }

    /// The name and what it points to (`link -> target`, `new => first`), as `-v` prints it.
    pub fn name(&self, prefix: &Path) -> String {
        let mut out = self.shown_path(prefix);
        if let Some(target) = &self.link {
            out.push_str(" -> ");
            out.push_str(&String::from_utf8_lossy(target));
        }
        if let Some(first) = &self.linked_to {
            out.push_str(" => ");
            out.push_str(&String::from_utf8_lossy(
                prefix.join(first).as_os_str().as_bytes(),
            ));
        }
        out
    }

    /// The itemized line, as rsync's `-i` prints it.
    pub fn itemized(&self, prefix: &Path) -> String {
        let update = match self.update {
            Update::Received => '>',
            Update::Created => 'c',
            Update::HardLink => 'h',
            Update::Attributes => '.',
            Update::Deleted => return format!("*deleting   {}", self.shown_path(prefix)),
        };
        let letters = self
            .differences
            .map_or_else(|| "+".repeat(9), |d| d.letters());
        format!("{update}{}{letters} {}", self.kind, self.name(prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_have_rsyncs_form() {
        let changed = Differences {
            value: true,
            time: true,
            ..Differences::default()
        };
        let relinked = Change {
            update: Update::Created,
            kind: 'L',
            differences: Some(changed),
            path: PathBuf::from("lnk"),
            link: Some(b"sub".to_vec()),
            linked_to: None,
        };
        assert_eq!(relinked.itemized(Path::new("")), "cLc.t...... lnk -> sub");
        let gone = Change::deleted(PathBuf::from("gone"), true);
        assert_eq!(gone.itemized(Path::new("misc")), "*deleting   misc/gone/");
        let root = Change::deleted(PathBuf::new(), true);
        assert_eq!(root.name(Path::new("")), "./");
    }
}
