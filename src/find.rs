//! `find`: the entries whose names or paths match patterns, across many checkpoints, from
//! their trees alone (no file data is read). The checkpoints are walked together, path by
//! path: at each directory the distinct trees the checkpoints hold there are read once each,
//! so a subtree that a hundred checkpoints share is read once, and each match is reported
//! once per version with the checkpoints that hold it. The walk keeps its own stack, so a
//! tree nested however deep is searched without exhausting the call stack.

use crate::error::Result;
use crate::history::{TreeLoader, same_version};
use crate::id::TreeId;
use crate::pattern::Patterns;
use crate::tree::{Entry, EntryKind};
use std::collections::BTreeMap;

/// What to look for.
pub struct FindOptions<'a> {
    /// The entry's path below the checkpoint's root must match one of these.
    pub patterns: &'a Patterns,
    /// Only entries modified at or after this time (nanoseconds since the epoch).
    pub modified_since: Option<i128>,
    /// Only entries modified at or before this time.
    pub modified_until: Option<i128>,
}

/// One version of a matching entry.
#[derive(Debug, Clone)]
pub struct Found {
    /// The entry's path below the checkpoint's root, `/`-separated, without a leading `/`.
    pub path: Vec<u8>,
    /// The entry (for a directory: as the first checkpoint holding this version has it).
    pub entry: Entry,
    /// The indices, ascending, of the checkpoints (in the order given) that hold it.
    pub checkpoints: Vec<usize>,
}

/// What a search read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FindStats {
    /// Tree blobs read (each distinct tree at each path once).
    pub trees_read: usize,
    /// Versions reported.
    pub found: usize,
}

/// One entry as some checkpoints hold it: same kind and content (for a directory, the same
/// tree), size, mode and mtime.
struct Occurrence {
    entry: Entry,
    checkpoints: Vec<usize>,
}

/// A directory being searched: its path with a trailing `/` (empty at the root) and the
/// names in it not yet visited, each with its occurrences.
struct Frame {
    prefix: Vec<u8>,
    names: std::vec::IntoIter<(Vec<u8>, Vec<Occurrence>)>,
}

/// Searches the checkpoints whose root trees are `roots` (in catalogue order), calling
/// `found` for each version of a match, in path order (a directory before its contents).
pub fn find(
    load: &TreeLoader,
    roots: &[TreeId],
    options: &FindOptions,
    mut found: impl FnMut(Found) -> Result<()>,
) -> Result<FindStats> {
    let mut stats = FindStats::default();
    let mut open = vec![Frame {
        prefix: Vec::new(),
        names: open_dir(
            load,
            &group_by_tree(roots.iter().copied().enumerate()),
            &mut stats,
        )?,
    }];
    while let Some(frame) = open.last_mut() {
        crate::interrupt::check()?;
        let Some((name, occurrences)) = frame.names.next() else {
            open.pop();
            continue;
        };
        let mut path = frame.prefix.clone();
        path.extend_from_slice(&name);
        for version in versions(&occurrences) {
            if matches(options, &path, &version.entry) {
                stats.found += 1;
                found(version_found(&path, version))?;
            }
        }
        let subtrees = group_by_tree(occurrences.iter().flat_map(|o| match &o.entry.kind {
            EntryKind::Dir(tree) => o.checkpoints.iter().map(|&c| (c, *tree)).collect(),
            _ => Vec::new(),
        }));
        if !subtrees.is_empty() {
            let names = open_dir(load, &subtrees, &mut stats)?;
            path.push(b'/');
            open.push(Frame {
                prefix: path,
                names,
            });
        }
    }
    Ok(stats)
}

fn matches(options: &FindOptions, path: &[u8], entry: &Entry) -> bool {
    options.modified_since.is_none_or(|t| entry.mtime_ns >= t)
        && options.modified_until.is_none_or(|t| entry.mtime_ns <= t)
        && options.patterns.matches(path, entry.is_dir())
}

fn version_found(path: &[u8], version: Occurrence) -> Found {
    let mut checkpoints = version.checkpoints;
    checkpoints.sort_unstable();
    Found {
        path: path.to_vec(),
        entry: version.entry,
        checkpoints,
    }
}

/// The distinct versions among a name's occurrences: directories with the same metadata are
/// one version whatever their trees.
fn versions(occurrences: &[Occurrence]) -> Vec<Occurrence> {
    let mut out: Vec<Occurrence> = Vec::new();
    for occurrence in occurrences {
        match out
            .iter_mut()
            .find(|v| same_version(&v.entry, &occurrence.entry))
        {
            Some(version) => version.checkpoints.extend(&occurrence.checkpoints),
            None => out.push(Occurrence {
                entry: occurrence.entry.clone(),
                checkpoints: occurrence.checkpoints.clone(),
            }),
        }
    }
    out
}

/// The distinct trees among `(checkpoint, tree)` pairs, each with its checkpoints.
fn group_by_tree(pairs: impl IntoIterator<Item = (usize, TreeId)>) -> Vec<(TreeId, Vec<usize>)> {
    let mut trees: Vec<(TreeId, Vec<usize>)> = Vec::new();
    for (checkpoint, tree) in pairs {
        match trees.iter_mut().find(|(id, _)| *id == tree) {
            Some((_, checkpoints)) => checkpoints.push(checkpoint),
            None => trees.push((tree, vec![checkpoint])),
        }
    }
    trees
}

/// Reads each of `trees` once and gathers their entries by name, in name order.
fn open_dir(
    load: &TreeLoader,
    trees: &[(TreeId, Vec<usize>)],
    stats: &mut FindStats,
) -> Result<std::vec::IntoIter<(Vec<u8>, Vec<Occurrence>)>> {
    let mut names: BTreeMap<Vec<u8>, Vec<Occurrence>> = BTreeMap::new();
    for (tree, checkpoints) in trees {
        let tree = load(tree)?;
        stats.trees_read += 1;
        for entry in &tree.entries {
            let occurrences = names.entry(entry.name.clone()).or_default();
            match occurrences
                .iter_mut()
                .find(|o| same_occurrence(&o.entry, entry))
            {
                Some(occurrence) => occurrence.checkpoints.extend(checkpoints),
                None => occurrences.push(Occurrence {
                    entry: entry.clone(),
                    checkpoints: checkpoints.clone(),
                }),
            }
        }
    }
    Ok(names.into_iter().collect::<Vec<_>>().into_iter())
}

/// Whether two entries of one name are the same occurrence: a version, and for directories
/// the same tree.
fn same_occurrence(a: &Entry, b: &Entry) -> bool {
    same_version(a, b) && a.kind == b.kind
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{Content, Tree, root_entry};
    use std::cell::Cell;
    use std::collections::HashMap;
    use std::sync::Arc;

    fn file(name: &str, mtime_ns: i128) -> Entry {
        let mut entry = root_entry(TreeId([0; 32]));
        entry.name = name.as_bytes().to_vec();
        entry.kind = EntryKind::File(Content::Chunks(Vec::new()));
        entry.mtime_ns = mtime_ns;
        entry
    }

    fn dir(name: &str, tree: TreeId) -> Entry {
        let mut entry = root_entry(tree);
        entry.name = name.as_bytes().to_vec();
        entry
    }

    /// Three checkpoints: `src` is the same tree in the first two and changes `main.c` in
    /// the third; `doc` is the same in all three.
    fn store() -> (HashMap<TreeId, Arc<Tree>>, Vec<TreeId>) {
        let id = |n: u8| TreeId([n; 32]);
        let mut trees = HashMap::new();
        let mut add = |n: u8, entries: Vec<Entry>| {
            trees.insert(id(n), Arc::new(Tree::from_entries(entries)));
        };
        add(1, vec![file("main.c", 1), file("lib.c", 1)]);
        add(2, vec![file("main.c", 2), file("lib.c", 1)]);
        add(3, vec![file("guide.txt", 1), file("main.c.txt", 1)]);
        add(10, vec![dir("src", id(1)), dir("doc", id(3))]);
        add(
            11,
            vec![dir("src", id(1)), dir("doc", id(3)), file("new.c", 5)],
        );
        add(12, vec![dir("src", id(2)), dir("doc", id(3))]);
        (trees, vec![id(10), id(11), id(12)])
    }

    fn search(written: &[&str], since: Option<i128>) -> (Vec<(String, Vec<usize>)>, FindStats) {
        let (trees, roots) = store();
        let loads = Cell::new(0);
        let load = |id: &TreeId| {
            loads.set(loads.get() + 1);
            Ok(trees[id].clone())
        };
        let written: Vec<String> = written.iter().map(|p| p.to_string()).collect();
        let patterns = Patterns::new(&written, "find", false).unwrap();
        let options = FindOptions {
            patterns: &patterns,
            modified_since: since,
            modified_until: None,
        };
        let mut out = Vec::new();
        let stats = find(&load, &roots, &options, |found| {
            out.push((String::from_utf8(found.path).unwrap(), found.checkpoints));
            Ok(())
        })
        .unwrap();
        assert_eq!(loads.get(), stats.trees_read);
        (out, stats)
    }

    #[test]
    fn each_version_is_reported_once_with_the_checkpoints_holding_it() {
        let (found, stats) = search(&["*.c"], None);
        let expected = [
            ("new.c", vec![1]),
            ("src/lib.c", vec![0, 1, 2]),
            ("src/main.c", vec![0, 1]),
            ("src/main.c", vec![2]),
        ];
        let expected: Vec<(String, Vec<usize>)> = expected
            .iter()
            .map(|(p, c)| (p.to_string(), c.clone()))
            .collect();
        assert_eq!(found, expected);
        // Three roots, two versions of src, one of doc: each read once.
        assert_eq!(stats.trees_read, 6);
    }

    #[test]
    fn anchored_patterns_directories_and_times_narrow_the_search() {
        let (found, _) = search(&["/src"], None);
        assert_eq!(found, vec![("src".to_string(), vec![0, 1, 2])]);
        let (found, _) = search(&["src/main.c"], Some(2));
        assert_eq!(found, vec![("src/main.c".to_string(), vec![2])]);
        let (found, _) = search(&["doc/"], None);
        assert_eq!(found, vec![("doc".to_string(), vec![0, 1, 2])]);
        let (found, _) = search(&["doc/**"], None);
        let paths: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["doc/guide.txt", "doc/main.c.txt"]);
    }
}
