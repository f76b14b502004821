//! Path patterns: the globs that backup excludes, restore filters and `find` share, matched
//! against paths inside a checkpoint the way rsync and `.gitignore` match them.
//!
//! - A pattern without `/` matches a name at any depth: `*.o`, `target`.
//! - A pattern with a `/` at its start or in its middle is anchored at the checkpoint's root
//!   (for a backup: the directory backed up, or with several paths the directory holding
//!   them): `/doc` and `src/doc` match only there.
//! - A trailing `/` matches directories only: `doc/`.
//! - `*` and `?` stay within one name; `**` spans any number of directories; `[a-z]` and
//!   `{a,b}` as usual; `\` escapes.
//!
//! A set of patterns remembers which of them matched something, so a command can warn about
//! a pattern that matched nothing (most often a typo, or a path given the wrong way round).

use crate::error::{Error, Result};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// Compiled patterns, each matched against either a name or a whole path.
#[derive(Debug)]
pub struct Patterns {
    written: Vec<String>,
    /// Patterns without an inner `/`, matched against the last name of a path.
    by_name: GlobSet,
    /// Indices into `written` of the `by_name` globs, in their order.
    name_patterns: Vec<usize>,
    /// Anchored patterns, matched against the whole path below the root.
    by_path: GlobSet,
    path_patterns: Vec<usize>,
    /// Which patterns end in `/` (directories only).
    dir_only: Vec<bool>,
    matched: Vec<AtomicBool>,
}

impl Patterns {
    /// Compiles `patterns`; `what` names them in errors ("exclude", "--include"). Matching
    /// ignores case when `ignore_case` is set.
    pub fn new(patterns: &[String], what: &str, ignore_case: bool) -> Result<Self> {
        let mut by_name = GlobSetBuilder::new();
        let mut by_path = GlobSetBuilder::new();
        let mut name_patterns = Vec::new();
        let mut path_patterns = Vec::new();
        let mut dir_only = Vec::with_capacity(patterns.len());
        for (index, pattern) in patterns.iter().enumerate() {
            let body = pattern.trim_end_matches('/');
            if body.trim_start_matches('/').is_empty() {
                return Err(Error::InvalidInput(format!(
                    "{what} pattern {pattern:?} names nothing: give a name such as `*.o`, or a path below the root such as `/build`"
                )));
            }
            dir_only.push(body.len() < pattern.len());
            let anchored = body.contains('/');
            let glob = GlobBuilder::new(body.trim_start_matches('/'))
                .literal_separator(true)
                .backslash_escape(true)
                .case_insensitive(ignore_case)
                .build()
                .map_err(|e| {
                    Error::InvalidInput(format!("{what} pattern {pattern:?} is not a glob: {e}"))
                })?;
            if anchored {
                by_path.add(glob);
                path_patterns.push(index);
            } else {
                by_name.add(glob);
                name_patterns.push(index);
            }
        }
        let build = |builder: GlobSetBuilder| {
            builder
                .build()
                .map_err(|e| Error::InvalidInput(format!("{what} patterns: {e}")))
        };
        Ok(Patterns {
            written: patterns.to_vec(),
            by_name: build(by_name)?,
            name_patterns,
            by_path: build(by_path)?,
            path_patterns,
            dir_only,
            matched: patterns.iter().map(|_| AtomicBool::new(false)).collect(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.written.is_empty()
    }

    /// Whether a pattern matches `path`, the `/`-separated path below the root (no leading
    /// `/`), of a directory when `is_dir`. The patterns that match are remembered.
    pub fn matches(&self, path: &[u8], is_dir: bool) -> bool {
        self.matches_any(path, None, is_dir)
    }

    /// As `matches`, where an anchored pattern may also match `absolute` (a backup's excludes
    /// also accept the source's absolute paths, as earlier versions took them).
    pub fn matches_any(&self, path: &[u8], absolute: Option<&[u8]>, is_dir: bool) -> bool {
        let name = path.rsplit(|&b| b == b'/').next().unwrap_or(path);
        let mut found = false;
        let mut check = |set: &GlobSet, indices: &[usize], candidate: &[u8]| {
            let candidate = Path::new(OsStr::from_bytes(candidate));
            if !set.is_match(candidate) {
                return;
            }
            for hit in set.matches(candidate) {
                let index = indices[hit];
                if is_dir || !self.dir_only[index] {
                    self.matched[index].store(true, Ordering::Relaxed);
                    found = true;
                }
            }
        };
        check(&self.by_name, &self.name_patterns, name);
        check(&self.by_path, &self.path_patterns, path);
        if let Some(absolute) = absolute {
            let below_root = absolute.strip_prefix(b"/").unwrap_or(absolute);
            check(&self.by_path, &self.path_patterns, below_root);
        }
        found
    }

    /// The patterns, as written, that have matched nothing so far.
    pub fn unmatched(&self) -> Vec<&str> {
        self.written
            .iter()
            .zip(&self.matched)
            .filter(|(_, matched)| !matched.load(Ordering::Relaxed))
            .map(|(written, _)| written.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns(written: &[&str]) -> Patterns {
        let written: Vec<String> = written.iter().map(|p| p.to_string()).collect();
        Patterns::new(&written, "exclude", false).unwrap()
    }

    #[test]
    fn names_match_at_any_depth_and_anchored_paths_only_below_the_root() {
        let set = patterns(&["*.o", "/doc", "src/gen", "build/"]);
        assert!(set.matches(b"main.o", false));
        assert!(set.matches(b"a/b/main.o", false));
        assert!(set.matches(b"doc", true));
        assert!(!set.matches(b"src/doc", true), "/doc is anchored");
        assert!(set.matches(b"src/gen", true));
        assert!(!set.matches(b"lib/src/gen", true), "src/gen is anchored");
        assert!(set.matches(b"lib/build", true));
        assert!(
            !set.matches(b"lib/build", false),
            "build/ is for directories"
        );
    }

    #[test]
    fn stars_stay_within_a_name_and_double_stars_span_directories() {
        let set = patterns(&["src/*.c", "docs/**/*.png"]);
        assert!(set.matches(b"src/a.c", false));
        assert!(!set.matches(b"src/sub/a.c", false));
        assert!(set.matches(b"docs/a.png", false));
        assert!(set.matches(b"docs/x/y/a.png", false));
    }

    #[test]
    fn absolute_paths_match_anchored_patterns() {
        let set = patterns(&["/home/me/src/target"]);
        assert!(set.matches_any(b"target", Some(b"/home/me/src/target"), true));
        assert!(!set.matches_any(b"other", Some(b"/home/me/src/other"), true));
    }

    #[test]
    fn patterns_that_matched_nothing_are_named() {
        let set = patterns(&["*.o", "doc/", "/nowhere"]);
        set.matches(b"a.o", false);
        set.matches(b"doc", false);
        assert_eq!(set.unmatched(), vec!["doc/", "/nowhere"]);
    }

    #[test]
    fn empty_and_broken_patterns_are_refused_by_name() {
        let refused = |p: &str| {
            Patterns::new(&[p.to_string()], "exclude", false)
                .unwrap_err()
                .to_string()
        };
        assert!(refused("/").contains("names nothing"), "{}", refused("/"));
        assert!(refused("a[").contains("not a glob"), "{}", refused("a["));
    }

    #[test]
    fn case_is_ignored_when_asked() {
        let set = Patterns::new(&["*.JPG".to_string()], "find", true).unwrap();
        assert!(set.matches(b"x/photo.jpg", false));
    }
}
