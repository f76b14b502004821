//! Version history of one path across every checkpoint. The history of a path is the entry
//! found at that path in each checkpoint (or none), oldest first. It is computed from the
//! history of the parent path: a child is looked up in each checkpoint's parent tree, and
//! checkpoints whose parent has the same tree id share one lookup, so a subtree that did not
//! change is read once, not once per checkpoint. Consecutive identical versions collapse
//! into one `Version`.

use crate::error::Result;
use crate::id::TreeId;
use crate::tree::{Entry, EntryKind, Tree};
use std::sync::Arc;

/// Loads (and usually caches) a tree by id.
pub type TreeLoader<'a> = dyn Fn(&TreeId) -> Result<Arc<Tree>> + 'a;

/// The entry at one path in each checkpoint of a catalogue, in catalogue order.
pub type PathHistory = Vec<Option<Arc<Entry>>>;

/// The history of `name` inside the directory whose history is `parent`.
pub fn child_history(
    load: &TreeLoader,
    parent: &[Option<Arc<Entry>>],
    name: &[u8],
) -> Result<PathHistory> {
    let mut out = Vec::with_capacity(parent.len());
    let mut previous: Option<(TreeId, Option<Arc<Entry>>)> = None;
    for entry in parent {
        let child = match entry.as_ref().map(|e| &e.kind) {
            Some(EntryKind::Dir(tree)) => match &previous {
                Some((id, child)) if id == tree => child.clone(),
                _ => {
                    let child = load(tree)?.get(name).cloned().map(Arc::new);
                    previous = Some((*tree, child.clone()));
                    child
                }
            },
            _ => None,
        };
        out.push(child);
    }
    Ok(out)
}

/// The components of a `/`-separated path inside a checkpoint.
pub fn components(path: &str) -> Vec<Vec<u8>> {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(|c| c.as_bytes().to_vec())
        .collect()
}

/// The history of the path made of `components`, starting from the checkpoints' root
/// entries.
pub fn path_history(
    load: &TreeLoader,
    roots: PathHistory,
    components: &[Vec<u8>],
) -> Result<PathHistory> {
    let mut history = roots;
    for component in components {
        history = child_history(load, &history, component)?;
    }
    Ok(history)
}

/// How a version relates to the one before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Added,
    Changed,
    Removed,
}

/// One distinct version of a path: the same entry in a run of consecutive checkpoints.
#[derive(Debug, Clone)]
pub struct Version {
    /// The entry, or `None` for a run of checkpoints where the path is absent.
    pub entry: Option<Entry>,
    /// Catalogue indices of the checkpoints holding this version.
    pub checkpoints: Vec<usize>,
    pub change: Change,
}

/// Whether two entries are the same version: same kind and content, size, mode and mtime.
pub(crate) fn same_version(a: &Entry, b: &Entry) -> bool {
    let same_kind = match (&a.kind, &b.kind) {
        (EntryKind::Dir(_), EntryKind::Dir(_)) => true,
        (x, y) => x == y,
    };
    same_kind && a.size == b.size && a.mode == b.mode && a.mtime_ns == b.mtime_ns
}

/// Collapses a history into its distinct versions, oldest first. Absence before the first
/// appearance is not listed; absence after it is a `Removed` version.
pub fn versions(history: &[Option<Arc<Entry>>]) -> Vec<Version> {
    let mut out: Vec<Version> = Vec::new();
    for (index, entry) in history.iter().enumerate() {
        if let Some(last) = out.last_mut() {
            let same = match (&last.entry, entry) {
                (Some(a), Some(b)) => same_version(a, b),
                (None, None) => true,
                _ => false,
            };
            if same {
                last.checkpoints.push(index);
                continue;
            }
        }
        let change = match (out.last().map(|v| v.entry.is_some()), entry.is_some()) {
            (_, false) => Change::Removed,
            (None | Some(false), true) => Change::Added,
            (Some(true), true) => Change::Changed,
        };
        if entry.is_none() && out.is_empty() {
            continue;
        }
        out.push(Version {
            entry: entry.as_deref().cloned(),
            checkpoints: vec![index],
            change,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::root_entry;
    use std::cell::Cell;
    use std::collections::HashMap;

    fn file(name: &str, mtime_ns: i128, size: u64) -> Entry {
        let mut entry = root_entry(TreeId([0; 32]));
        entry.name = name.as_bytes().to_vec();
        entry.kind = EntryKind::File(crate::tree::Content::Chunks(Vec::new()));
        entry.mtime_ns = mtime_ns;
        entry.size = size;
        entry
    }

    #[test]
    fn versions_collapse_and_report_changes() {
        let a = Some(Arc::new(file("f", 1, 10)));
        let b = Some(Arc::new(file("f", 2, 12)));
        let history = vec![None, a.clone(), a.clone(), b.clone(), None, None, b.clone()];
        let versions = versions(&history);
        let summary: Vec<(Change, Vec<usize>)> = versions
            .iter()
            .map(|v| (v.change, v.checkpoints.clone()))
            .collect();
        assert_eq!(
            summary,
            vec![
                (Change::Added, vec![1, 2]),
                (Change::Changed, vec![3]),
                (Change::Removed, vec![4, 5]),
                (Change::Added, vec![6]),
            ]
        );
    }

    #[test]
    fn unchanged_parents_are_read_once() {
        let mut trees = HashMap::new();
        let tree_a = TreeId([1; 32]);
        let tree_b = TreeId([2; 32]);
        trees.insert(tree_a, Arc::new(Tree::from_entries(vec![file("x", 1, 1)])));
        trees.insert(tree_b, Arc::new(Tree::from_entries(vec![file("x", 2, 1)])));
        let loads = Cell::new(0);
        let load = |id: &TreeId| {
            loads.set(loads.get() + 1);
            Ok(trees[id].clone())
        };
        let roots: PathHistory = [tree_a, tree_a, tree_a, tree_b, tree_b]
            .iter()
            .map(|t| Some(Arc::new(root_entry(*t))))
            .collect();
        let history = path_history(&load, roots, &components("x")).unwrap();
        assert_eq!(loads.get(), 2);
        assert_eq!(versions(&history).len(), 2);
    }
}
