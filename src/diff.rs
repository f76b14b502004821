//! What changed between two checkpoints: the paths added, removed and modified from one to the
//! other. The walk compares the two root trees merge-style (entries are sorted by raw name
//! bytes) and relies on trees being content-addressed: two directories with the same tree id
//! hold the same entries all the way down, so such a pair is skipped without reading its tree.
//! The cost of a diff therefore grows with what changed, not with the size of the checkpoints.
//!
//! What counts as a change:
//! - A path only in the second checkpoint is `Added`, only in the first `Removed`; for a
//!   directory the directory and every path below it are reported, so each new or gone path
//!   shows up.
//! - A path whose kind changed (file to directory, symlink to file, ...) is reported as
//!   `Removed` (the old entry, and what was below it) followed by `Added` (the new one): the
//!   two are different objects that happen to share a name.
//! - A path of the same kind in both is `Modified` when its content or its metadata differs.
//!   Content is a regular file's data (its chunks and size). Metadata is mode, owner (uid,
//!   gid, user and group names), mtime and xattrs, plus a symlink's target and a device's
//!   number. A directory's own mtime is left out, since adding or removing anything in it
//!   changes it and the paths below already say what changed. Ctime, device, inode and link
//!   count are always ignored: they change when a tree is merely copied or restored.

use crate::checkpoint::Checkpoint;
use crate::error::Result;
use crate::id::TreeId;
use crate::repo::Repository;
use crate::tree::{Content, Entry, EntryKind, file_chunks, load_tree};
use serde::Serialize;
use std::cmp::Ordering;

/// The path reported for a change of the checkpoint's root directory itself.
pub const ROOT_PATH: &str = ".";

/// How a path differs between two checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    Added,
    Removed,
    Modified,
}

/// One changed path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// Relative to the checkpoint root, components separated by `/`, names decoded as lossy
    /// UTF-8; [`ROOT_PATH`] for the root directory itself.
    pub path: String,
    pub kind: ChangeKind,
    /// A regular file's data changed (only ever set on `Modified`).
    pub content: bool,
    /// Mode, owner, mtime, xattrs, symlink target or device number changed (only ever set on
    /// `Modified`).
    pub metadata: bool,
    /// The entry is a directory (for `Removed`, the old entry; otherwise the new one).
    pub is_dir: bool,
}

/// The changes from checkpoint `a` to checkpoint `b`, in path order (a directory before the
/// paths below it; for a path whose kind changed, its removal before its addition).
///
/// The root directory's own metadata is compared only when both checkpoints recorded it
/// (checkpoints of a single directory do; those of several paths have a synthetic root).
pub fn diff_checkpoints(repo: &Repository, a: &Checkpoint, b: &Checkpoint) -> Result<Vec<Change>> {
    let mut differ = Differ {
        repo,
        changes: Vec::new(),
    };
    if let (Some(root_a), Some(root_b)) = (&a.root, &b.root)
        && dir_metadata_differs(root_a, root_b)
    {
        differ.push(
            ROOT_PATH.to_owned(),
            ChangeKind::Modified,
            false,
            true,
            true,
        );
    }
    differ.run(Step::Dirs {
        a: a.tree,
        b: b.tree,
        prefix: String::new(),
    })?;
    Ok(differ.changes)
}

/// One piece of the comparison, waiting on the differ's stack.
enum Step {
    /// Compare directory trees `a` and `b`, whose entries live below `prefix`.
    Dirs {
        a: TreeId,
        b: TreeId,
        prefix: String,
    },
    /// Report `entry` at `path`, and everything below it, as `kind`.
    Whole {
        path: String,
        entry: Entry,
        kind: ChangeKind,
    },
    /// Compare two entries of the same name at `path` (boxed: two entries would make every
    /// step on the stack twice as large).
    Entries {
        path: String,
        a: Box<Entry>,
        b: Box<Entry>,
    },
}

/// Collects changes while walking two trees side by side.
struct Differ<'a> {
    repo: &'a Repository,
    changes: Vec<Change>,
}

impl Differ<'_> {
    fn push(
        &mut self,
        path: String,
        kind: ChangeKind,
        content: bool,
        metadata: bool,
        is_dir: bool,
    ) {
        self.changes.push(Change {
            path,
            kind,
            content,
            metadata,
            is_dir,
        });
    }

    /// Carries out `first` and every step it leads to, depth first. The steps wait on an
    /// explicit stack, each one's follow-ups pushed in reverse so they run in path order, so
    /// trees nested however deep are compared without exhausting the call stack.
    fn run(&mut self, first: Step) -> Result<()> {
        let mut stack = vec![first];
        while let Some(step) = stack.pop() {
            let mut next = match step {
                Step::Dirs { a, b, prefix } => self.dirs(&a, &b, &prefix)?,
                Step::Whole { path, entry, kind } => self.whole(path, entry, kind)?,
                Step::Entries { path, a, b } => self.entries(path, *a, *b)?,
            };
            next.reverse();
            stack.append(&mut next);
        }
        Ok(())
    }

    /// The steps that compare directory trees `a` and `b`, whose entries live below `prefix`.
    fn dirs(&mut self, a: &TreeId, b: &TreeId, prefix: &str) -> Result<Vec<Step>> {
        if a == b {
            return Ok(Vec::new());
        }
        let mut old = load_tree(self.repo, a)?.entries.into_iter().peekable();
        let mut new = load_tree(self.repo, b)?.entries.into_iter().peekable();
        let mut steps = Vec::new();
        loop {
            let order = match (old.peek(), new.peek()) {
                (Some(x), Some(y)) => x.name.cmp(&y.name),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => break,
            };
            steps.push(match order {
                Ordering::Less => {
                    let entry = old.next().expect("peeked");
                    let path = join(prefix, &entry);
                    Step::Whole {
                        path,
                        entry,
                        kind: ChangeKind::Removed,
                    }
                }
                Ordering::Greater => {
                    let entry = new.next().expect("peeked");
                    let path = join(prefix, &entry);
                    Step::Whole {
                        path,
                        entry,
                        kind: ChangeKind::Added,
                    }
                }
                Ordering::Equal => {
                    let (a, b) = (old.next().expect("peeked"), new.next().expect("peeked"));
                    Step::Entries {
                        path: join(prefix, &b),
                        a: Box::new(a),
                        b: Box::new(b),
                    }
                }
            });
        }
        Ok(steps)
    }

    /// Reports `entry` at `path` as `kind`; returns the steps that report what is below it.
    fn whole(&mut self, path: String, entry: Entry, kind: ChangeKind) -> Result<Vec<Step>> {
        self.push(path.clone(), kind, false, false, entry.is_dir());
        let EntryKind::Dir(tree) = &entry.kind else {
            return Ok(Vec::new());
        };
        let prefix = format!("{path}/");
        let children = load_tree(self.repo, tree)?.entries;
        Ok(children
            .into_iter()
            .map(|child| Step::Whole {
                path: join(&prefix, &child),
                entry: child,
                kind,
            })
            .collect())
    }

    /// Compares two entries of the same name at `path`; returns the steps that compare what
    /// is below them.
    fn entries(&mut self, path: String, a: Entry, b: Entry) -> Result<Vec<Step>> {
        match (&a.kind, &b.kind) {
            (EntryKind::Dir(tree_a), EntryKind::Dir(tree_b)) => {
                if dir_metadata_differs(&a, &b) {
                    self.push(path.clone(), ChangeKind::Modified, false, true, true);
                }
                return Ok(vec![Step::Dirs {
                    a: *tree_a,
                    b: *tree_b,
                    prefix: format!("{path}/"),
                }]);
            }
            (EntryKind::File(content_a), EntryKind::File(content_b)) => {
                let content = a.size != b.size || !self.same_content(content_a, content_b)?;
                let metadata = metadata_differs(&a, &b);
                if content || metadata {
                    self.push(path, ChangeKind::Modified, content, metadata, false);
                }
            }
            (kind_a, kind_b)
                if std::mem::discriminant(kind_a) == std::mem::discriminant(kind_b) =>
            {
                // Symlinks, fifos and devices: the target or device number is metadata.
                if kind_a != kind_b || metadata_differs(&a, &b) {
                    self.push(path, ChangeKind::Modified, false, true, false);
                }
            }
            _ => {
                return Ok(vec![
                    Step::Whole {
                        path: path.clone(),
                        entry: a,
                        kind: ChangeKind::Removed,
                    },
                    Step::Whole {
                        path,
                        entry: b,
                        kind: ChangeKind::Added,
                    },
                ]);
            }
        }
        Ok(Vec::new())
    }

    /// Whether two file contents hold the same chunks. Chunk lists are content-addressed, so
    /// equal kinds compare by value; only a file stored inline in one checkpoint and as a
    /// chunk list blob in the other needs the blob read.
    fn same_content(&self, a: &Content, b: &Content) -> Result<bool> {
        Ok(match (a, b) {
            (Content::Chunks(x), Content::Chunks(y)) => x == y,
            (Content::ChunkList(x), Content::ChunkList(y)) => x == y,
            _ => file_chunks(self.repo, a)? == file_chunks(self.repo, b)?,
        })
    }
}

/// `prefix` (empty or ending in `/`) followed by the entry's name.
fn join(prefix: &str, entry: &Entry) -> String {
    format!("{prefix}{}", entry.name_lossy())
}

/// Mode, owner or xattrs differ: the metadata compared for directories.
fn dir_metadata_differs(a: &Entry, b: &Entry) -> bool {
    a.mode != b.mode
        || a.uid != b.uid
        || a.gid != b.gid
        || a.user != b.user
        || a.group != b.group
        || a.xattrs != b.xattrs
}

/// The metadata compared for everything but directories: theirs plus mtime.
fn metadata_differs(a: &Entry, b: &Entry) -> bool {
    dir_metadata_differs(a, b) || a.mtime_ns != b.mtime_ns
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::{self, BackupOptions, Progress};
    use crate::repo::pack::pack_object_name;
    use crate::repo::writer::tests::{RecordingBackend, recording_repository};
    use crate::tree::find_entry;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    /// A source directory and an unencrypted repository to back it up into.
    struct Fixture {
        _dir: tempfile::TempDir,
        source: PathBuf,
        backend: Arc<RecordingBackend>,
        repo: Repository,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let source = dir.path().join("source");
            fs::create_dir(&source).unwrap();
            let (repo, backend) = recording_repository(dir.path());
            Fixture {
                _dir: dir,
                source,
                backend,
                repo,
            }
        }

        fn path(&self, relative: &str) -> PathBuf {
            self.source.join(relative)
        }

        /// Writes a file (creating its parents) with a fixed mtime, so tests do not depend on
        /// the clock's granularity.
        fn write(&self, relative: &str, data: &[u8], mtime_s: u64) {
            let path = self.path(relative);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, data).unwrap();
            set_mtime(&path, mtime_s);
        }

        fn backup(&self) -> Checkpoint {
            let options = BackupOptions::new(vec![self.source.clone()]);
            let outcome = backup::run(&self.repo, &options, &Progress::default()).unwrap();
            assert!(outcome.errors.is_empty(), "{:?}", outcome.errors);
            outcome.checkpoint
        }

        fn diff(&self, a: &Checkpoint, b: &Checkpoint) -> Vec<Change> {
            diff_checkpoints(&self.repo, a, b).unwrap()
        }
    }

    fn set_mtime(path: &Path, seconds: u64) {
        fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds))
            .unwrap();
    }

    fn change(path: &str, kind: ChangeKind, content: bool, metadata: bool, is_dir: bool) -> Change {
        Change {
            path: path.to_owned(),
            kind,
            content,
            metadata,
            is_dir,
        }
    }

    fn added(path: &str, is_dir: bool) -> Change {
        change(path, ChangeKind::Added, false, false, is_dir)
    }

    fn removed(path: &str, is_dir: bool) -> Change {
        change(path, ChangeKind::Removed, false, false, is_dir)
    }

    #[test]
    fn unchanged_checkpoints_have_no_changes() {
        let f = Fixture::new();
        f.write("a", b"alpha", 1_000);
        f.write("sub/b", b"beta", 1_000);
        let first = f.backup();
        let second = f.backup();
        assert_eq!(f.diff(&first, &second), vec![]);
        assert_eq!(f.diff(&first, &first), vec![]);
    }

    #[test]
    fn added_removed_and_modified_paths() {
        let f = Fixture::new();
        f.write("keep", b"same", 1_000);
        f.write("edit", b"old text", 1_000);
        f.write("gone", b"bye", 1_000);
        f.write("old-dir/x", b"x", 1_000);
        f.write("old-dir/deep/y", b"y", 1_000);
        let first = f.backup();
        f.write("edit", b"new, longer text", 2_000);
        fs::remove_file(f.path("gone")).unwrap();
        fs::remove_dir_all(f.path("old-dir")).unwrap();
        f.write("new", b"hello", 1_000);
        f.write("new-dir/deep/z", b"z", 1_000);
        let second = f.backup();
        assert_eq!(
            f.diff(&first, &second),
            vec![
                change("edit", ChangeKind::Modified, true, true, false),
                removed("gone", false),
                added("new", false),
                added("new-dir", true),
                added("new-dir/deep", true),
                added("new-dir/deep/z", false),
                removed("old-dir", true),
                removed("old-dir/deep", true),
                removed("old-dir/deep/y", false),
                removed("old-dir/x", false),
            ]
        );
        // The other way round, additions and removals swap.
        let back = f.diff(&second, &first);
        assert_eq!(back[1], added("gone", false));
        assert_eq!(back[2], removed("new", false));
    }

    #[test]
    fn same_size_content_change_is_content() {
        let f = Fixture::new();
        f.write("f", b"aaaa", 1_000);
        let first = f.backup();
        // Same size and mtime; a new inode so the stat cache cannot take it for unchanged.
        f.write("f.new", b"bbbb", 1_000);
        fs::rename(f.path("f.new"), f.path("f")).unwrap();
        let second = f.backup();
        assert_eq!(
            f.diff(&first, &second),
            vec![change("f", ChangeKind::Modified, true, false, false)]
        );
    }

    #[test]
    fn chmod_is_a_metadata_change_and_dir_mtime_is_ignored() {
        let f = Fixture::new();
        f.write("script", b"#!/bin/sh\n", 1_000);
        f.write("sub/file", b"data", 1_000);
        fs::create_dir(f.path("locked")).unwrap();
        let first = f.backup();
        fs::set_permissions(f.path("script"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::set_permissions(f.path("locked"), fs::Permissions::from_mode(0o700)).unwrap();
        // A new file changes `sub`'s mtime, which alone is not a change of `sub`.
        f.write("sub/more", b"more", 1_000);
        let second = f.backup();
        assert_eq!(
            f.diff(&first, &second),
            vec![
                change("locked", ChangeKind::Modified, false, true, true),
                change("script", ChangeKind::Modified, false, true, false),
                added("sub/more", false),
            ]
        );
    }

    #[test]
    fn root_metadata_change_is_reported_as_dot() {
        let f = Fixture::new();
        f.write("f", b"x", 1_000);
        fs::set_permissions(&f.source, fs::Permissions::from_mode(0o755)).unwrap();
        let first = f.backup();
        fs::set_permissions(&f.source, fs::Permissions::from_mode(0o750)).unwrap();
        let second = f.backup();
        assert_eq!(
            f.diff(&first, &second),
            vec![change(ROOT_PATH, ChangeKind::Modified, false, true, true)]
        );
    }

    #[test]
    fn kind_change_is_a_removal_and_an_addition() {
        let f = Fixture::new();
        f.write("thing", b"a file", 1_000);
        std::os::unix::fs::symlink("target-one", f.path("link")).unwrap();
        let first = f.backup();
        fs::remove_file(f.path("thing")).unwrap();
        f.write("thing/inside", b"now a directory", 1_000);
        fs::remove_file(f.path("link")).unwrap();
        std::os::unix::fs::symlink("target-two", f.path("link")).unwrap();
        let second = f.backup();
        let changes = f.diff(&first, &second);
        // The symlink's mtime may or may not have changed; its target did, which is metadata.
        assert_eq!(changes[0].path, "link");
        assert_eq!(changes[0].kind, ChangeKind::Modified);
        assert!(changes[0].metadata && !changes[0].content);
        assert_eq!(
            changes[1..],
            [
                removed("thing", false),
                added("thing", true),
                added("thing/inside", false),
            ]
        );
    }

    #[test]
    fn unchanged_subtrees_are_not_read() {
        let f = Fixture::new();
        f.write("left/a/b/c/deep.txt", b"version one", 1_000);
        f.write("left/a/other", b"other", 1_000);
        f.write("right/x/y/untouched.txt", b"never changes", 1_000);
        f.write("right/x/z", b"z", 1_000);
        let first = f.backup();
        f.write("left/a/b/c/deep.txt", b"version two!", 2_000);
        let second = f.backup();

        let root = second.root_entry();
        let right = find_entry(&f.repo, root.clone(), "right").unwrap();
        let EntryKind::Dir(right_tree) = right.kind else {
            panic!("right is a directory")
        };
        let first_right = find_entry(&f.repo, first.root_entry(), "right").unwrap();
        assert_eq!(
            first_right.kind, right.kind,
            "the sibling subtree is shared"
        );
        let location = f.repo.locate(&right_tree.blob()).unwrap();
        let right_read = (
            pack_object_name(&location.pack),
            location.entry.offset as u64,
        );

        f.backend.reads.lock().unwrap().clear();
        assert_eq!(
            f.diff(&first, &second),
            vec![change(
                "left/a/b/c/deep.txt",
                ChangeKind::Modified,
                true,
                true,
                false
            )]
        );
        let reads = f.backend.reads.lock().unwrap();
        // Two roots, and two versions of left, left/a, left/a/b and left/a/b/c.
        assert_eq!(reads.len(), 10, "{reads:?}");
        assert!(
            !reads.contains(&right_read),
            "the unchanged subtree was read"
        );
    }
}
