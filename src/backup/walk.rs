//! The walk of a backup: the source's directories in name order, depth first, with an
//! explicit stack (a source decides the depth, which must cost heap, not the thread's stack).
//! Each file is compared with the parent checkpoint's entry (the stat cache) and either
//! taken over or handed to the file workers; each directory goes to the tree builder once
//! its children are walked. The parent's trees are decoded ahead of the walker.

use super::trees::{PendingDir, PendingEntry};
use super::{FileJob, Root, Source, abandoned};
use crate::error::{PathError, Result};
use crate::id::TreeId;
use crate::repo::Repository;
use crate::repo::writer::SHARED_FRAME_TARGET_BYTES;
use crate::tree::{Content, Entry, EntryKind, Listed, ListedKind, Tree, load_tree};
use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Jobs (a larger file, or a batch of small ones) the walker may queue ahead of the file
/// workers.
pub(super) const FILES_QUEUED: usize = 256;
/// Files one batch holds at most, however small: a tree of empty files would otherwise go
/// to one worker in batches of any length (bounded by bytes alone).
const BATCH_FILES: usize = 1024;
/// Threads decoding the parent checkpoint's trees ahead of the walker.
const PARENT_TREE_THREADS: usize = 2;
/// Parent trees decoded ahead of the walker at most.
const PARENT_TREES_AHEAD: usize = 256;

/// Parent trees decoded ahead of the walker, taken out as it reaches them.
pub(super) struct ParentTrees {
    ahead: quick_cache::sync::Cache<TreeId, Arc<Tree>>,
}

impl Default for ParentTrees {
    fn default() -> Self {
        ParentTrees {
            ahead: quick_cache::sync::Cache::new(PARENT_TREES_AHEAD),
        }
    }
}

/// Small files next to each other in the walk, on their way to one worker, which stores
/// their contents in one shared frame: compressed together, small source files take far
/// less room than each alone (docs/FORMAT.md §8).
pub(super) struct Batch<P> {
    jobs: Vec<FileJob<P>>,
    bytes: u64,
}

impl<P> Default for Batch<P> {
    fn default() -> Self {
        Batch {
            jobs: Vec::new(),
            bytes: 0,
        }
    }
}

/// Walks a source and feeds the workers and the tree builder.
pub(super) struct Walker<'a, S: Source> {
    pub repo: &'a Repository,
    pub source: &'a S,
    pub files: Sender<Vec<FileJob<S::Path>>>,
    /// The small files gathered for the next batch. Sent once full, before the walker could
    /// wait for the tree builder (which may be waiting for them), and at the end.
    pub batch: std::cell::RefCell<Batch<S::Path>>,
    /// Files about to be read, for the read-ahead threads (`None`: no hints).
    pub read_ahead: Option<Sender<(S::Path, u64)>>,
    pub dirs: Sender<PendingDir>,
    pub errors: &'a Mutex<Vec<PathError>>,
    pub parent_trees: &'a ParentTrees,
    /// Whether a parent's chunk list must be found in the index before it is reused: unless
    /// the cache trusts the parent (`BlobIndex::trusts_parent`).
    pub verify_reused: bool,
    /// Unchanged files count as done here; read ones as the workers read them.
    pub progress: &'a crate::progress::Progress,
}

impl<S: Source> Drop for Walker<'_, S> {
    /// A walk that stopped early still hands over the files it gathered: the tree builder
    /// may be waiting for them, and the workers answer every job.
    fn drop(&mut self) {
        let _ = self.send_batch();
    }
}

/// One directory of the walk.
struct Level<P> {
    /// Where its entries are (`None` for a root of several paths, named in `paths`).
    dir: Option<P>,
    /// Its tree in the parent checkpoint.
    parent: Option<Arc<Tree>>,
    /// The entries still to walk, and for a root of several paths the path of each.
    entries: std::vec::IntoIter<Listed>,
    paths: Option<std::vec::IntoIter<P>>,
    /// What is pending of the entries walked.
    pending: Vec<PendingEntry>,
    /// Its own entry (`None` for the root).
    own: Option<Listed>,
}

impl<S: Source> Walker<'_, S> {
    /// Walks the whole source from `root`; returns where the root tree's id will arrive.
    pub(super) fn walk(
        &self,
        root: Root<S::Path>,
        parent: Option<Arc<Tree>>,
    ) -> Result<Receiver<TreeId>> {
        let first = match root {
            Root::Dir { path, .. } => self.open_level(path, parent, None)?,
            Root::Paths(paths) => {
                let (entries, paths): (Vec<Listed>, Vec<S::Path>) = paths.into_iter().unzip();
                Level {
                    dir: None,
                    parent,
                    pending: Vec::with_capacity(entries.len()),
                    entries: entries.into_iter(),
                    paths: Some(paths.into_iter()),
                    own: None,
                }
            }
        };
        let mut stack = vec![first];
        loop {
            crate::interrupt::check()?;
            let level = stack
                .last_mut()
                .expect("the walk holds a level until the root is sent");
            let Some(entry) = level.entries.next() else {
                let done = stack.pop().expect("the walk holds a level");
                let (done_sender, receiver) = bounded(1);
                let dir = PendingDir {
                    entries: done.pending,
                    done: done_sender,
                };
                match self.dirs.try_send(dir) {
                    Ok(()) => {}
                    Err(TrySendError::Full(dir)) => {
                        self.send_batch()?;
                        self.dirs.send(dir).map_err(|_| abandoned())?;
                    }
                    // The tree builder stopped (a failure): so does the walk.
                    Err(TrySendError::Disconnected(_)) => return Err(abandoned()),
                }
                match (done.own, stack.last_mut()) {
                    (Some(own), Some(parent)) => {
                        parent.pending.push(PendingEntry::Dir(own, receiver))
                    }
                    _ => {
                        self.send_batch()?;
                        return Ok(receiver);
                    }
                }
                continue;
            };
            let path = match (&mut level.paths, &level.dir) {
                (Some(paths), _) => paths.next().expect("a path for each entry"),
                (None, Some(dir)) => self.source.child(dir, &entry.name),
                (None, None) => unreachable!("a level has a directory or its paths"),
            };
            let parent_entry = level.parent.as_ref().and_then(|tree| tree.get(&entry.name));
            match entry.kind.stored() {
                Some(kind) => level
                    .pending
                    .push(PendingEntry::Ready(entry.with_kind(kind))),
                None if entry.kind == ListedKind::Dir => {
                    let parent_tree = self.parent_tree(parent_entry);
                    let next = self.open_level(path, parent_tree, Some(entry))?;
                    stack.push(next);
                }
                None => {
                    let reused = unchanged_content(parent_entry, &entry)
                        .filter(|content| self.is_indexed(content));
                    let pending = match reused {
                        Some(content) => {
                            self.progress
                                .bytes_done
                                .fetch_add(entry.size, std::sync::atomic::Ordering::Relaxed);
                            PendingEntry::Ready(entry.with_kind(EntryKind::File(content)))
                        }
                        None => {
                            if let Some(read_ahead) = &self.read_ahead {
                                // Dropped when the read-ahead threads are busy: only a hint.
                                let _ = read_ahead.try_send((path.clone(), entry.size));
                            }
                            let (result, receiver) = bounded(1);
                            let size = entry.size;
                            self.hand_over(FileJob { path, size, result })?;
                            PendingEntry::File(entry, receiver)
                        }
                    };
                    level.pending.push(pending);
                }
            }
        }
    }

    /// Gives a file to the workers: a small one into the batch, sent once it holds a
    /// shared frame's worth or `BATCH_FILES` files; a larger one on its own.
    fn hand_over(&self, job: FileJob<S::Path>) -> Result<()> {
        if job.size >= u64::from(self.repo.chunker().params().min_bytes) {
            return self.files.send(vec![job]).map_err(|_| abandoned());
        }
        let full = {
            let mut batch = self.batch.borrow_mut();
            batch.bytes += job.size;
            batch.jobs.push(job);
            batch.bytes >= SHARED_FRAME_TARGET_BYTES as u64 || batch.jobs.len() >= BATCH_FILES
        };
        if full { self.send_batch() } else { Ok(()) }
    }

    /// Sends the small files gathered so far, if any.
    fn send_batch(&self) -> Result<()> {
        let jobs = std::mem::take(&mut *self.batch.borrow_mut()).jobs;
        if jobs.is_empty() {
            return Ok(());
        }
        self.files.send(jobs).map_err(|_| abandoned())
    }

    /// Lists directory `dir` into a new level.
    fn open_level(
        &self,
        dir: S::Path,
        parent: Option<Arc<Tree>>,
        own: Option<Listed>,
    ) -> Result<Level<S::Path>> {
        let entries = self.source.list(&dir, self.errors)?;
        Ok(Level {
            dir: Some(dir),
            parent,
            pending: Vec::with_capacity(entries.len()),
            entries: entries.into_iter(),
            paths: None,
            own,
        })
    }

    /// The parent checkpoint's tree for a directory, if there is a usable one.
    fn parent_tree(&self, parent: Option<&Entry>) -> Option<Arc<Tree>> {
        let EntryKind::Dir(id) = parent?.kind else {
            return None;
        };
        if let Some((_, tree)) = self.parent_trees.ahead.remove(&id) {
            return Some(tree);
        }
        load_tree(self.repo, &id)
            .map(Arc::new)
            .map_err(|e| tracing::warn!("parent tree {id} unreadable, reading all files: {e}"))
            .ok()
    }

    /// Whether every blob of a parent's file content is in the index, as far as it must be
    /// checked (`verify_reused`). One dropped by `cairn repair packs` is not: the file is
    /// read again, so the backup stores it anew and heals the older checkpoints that need
    /// it, instead of referring to it once more.
    fn is_indexed(&self, content: &Content) -> bool {
        if !self.verify_reused {
            return true;
        }
        let index = self.repo.index();
        if let Content::ChunkList(list) = content
            && !index.contains(list).unwrap_or(false)
        {
            return false;
        }
        crate::tree::file_chunks(self.repo, content).is_ok_and(|chunks| {
            chunks
                .iter()
                .all(|chunk| index.contains(&chunk.id).unwrap_or(false))
        })
    }
}

/// The parent's content for a listed file when it is unchanged: same size, mtime, ctime and
/// inode.
fn unchanged_content(parent: Option<&Entry>, listed: &Listed) -> Option<Content> {
    let parent = parent?;
    let EntryKind::File(content) = &parent.kind else {
        return None;
    };
    let unchanged = parent.size == listed.size
        && parent.mtime_ns == listed.mtime_ns
        && parent.ctime_ns == listed.ctime_ns
        && parent.inode == listed.inode;
    unchanged.then(|| content.clone())
}

/// Decodes the parent checkpoint's trees below `root` ahead of the walker, in its order, into
/// `trees`, which the walker empties as it goes; waits while `trees` holds its fill, so memory
/// stays bounded whatever the size of the tree.
pub(super) fn load_parent_trees_ahead(
    repo: &Repository,
    root: &Tree,
    trees: &ParentTrees,
    stop: &AtomicBool,
) {
    let subdirs = |tree: &Tree| -> Vec<TreeId> {
        tree.entries
            .iter()
            .filter_map(|entry| match entry.kind {
                EntryKind::Dir(id) => Some(id),
                _ => None,
            })
            .collect()
    };
    parallel_depth_first(subdirs(root), PARENT_TREE_THREADS, stop, |id: TreeId| {
        // Wait a little for the walker to catch up; entries it never takes (directories gone
        // from the source) are evicted once the wait is over.
        for _ in 0..20 {
            if trees.ahead.len() < PARENT_TREES_AHEAD || stop.load(Ordering::Relaxed) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        match load_tree(repo, &id) {
            Ok(tree) => {
                let children = subdirs(&tree);
                trees.ahead.insert(id, Arc::new(tree));
                children
            }
            Err(_) => Vec::new(),
        }
    });
}

/// Work waiting for the threads of `parallel_depth_first`, and how many items are in hand.
struct DepthFirstQueue<T> {
    pending: Vec<T>,
    busy: usize,
}

/// Visits `roots` and everything `visit` returns for them, on `threads` threads, roughly
/// depth first in the given order (the first child is taken next), until nothing is left or
/// `stop` is set. `visit` may block (`stop` is checked between items).
pub(super) fn parallel_depth_first<T: Send>(
    roots: Vec<T>,
    threads: usize,
    stop: &AtomicBool,
    visit: impl Fn(T) -> Vec<T> + Sync,
) {
    let queue = Mutex::new(DepthFirstQueue {
        pending: roots.into_iter().rev().collect(),
        busy: 0,
    });
    let wakeup = std::sync::Condvar::new();
    let work = || loop {
        let item = {
            let mut queue = queue.lock().expect("not poisoned");
            loop {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                if let Some(item) = queue.pending.pop() {
                    queue.busy += 1;
                    break item;
                }
                if queue.busy == 0 {
                    return;
                }
                queue = wakeup.wait(queue).expect("not poisoned");
            }
        };
        let children = visit(item);
        let mut queue = queue.lock().expect("not poisoned");
        queue.busy -= 1;
        queue.pending.extend(children.into_iter().rev());
        wakeup.notify_all();
    };
    std::thread::scope(|scope| {
        for _ in 1..threads.max(1) {
            scope.spawn(work);
        }
        work();
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::BackupOptions;
    use crate::backup::local::LocalSource;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn a_batch_holds_a_bounded_number_of_files_however_small() {
        let dir = tempfile::tempdir().unwrap();
        let repo = crate::repo::writer::tests::repository(dir.path());
        let tree = dir.path().join("empty files");
        std::fs::create_dir(&tree).unwrap();
        let count = 2 * BATCH_FILES + 10;
        for i in 0..count {
            std::fs::write(tree.join(format!("{i:05}")), b"").unwrap();
        }
        let source = LocalSource::check(&BackupOptions::new(vec![tree.clone()])).unwrap();
        let (files, batches) = crossbeam_channel::unbounded();
        let (dirs, _built) = crossbeam_channel::unbounded();
        let (errors, parent_trees, progress) = Default::default();
        let walker = Walker {
            repo: &repo,
            source: &source,
            files,
            batch: Default::default(),
            read_ahead: None,
            dirs,
            errors: &errors,
            parent_trees: &parent_trees,
            verify_reused: false,
            progress: &progress,
        };
        let root = Root::Dir {
            path: tree,
            entry: None,
        };
        walker.walk(root, None).unwrap();
        drop(walker);
        let sizes: Vec<usize> = batches.try_iter().map(|jobs| jobs.len()).collect();
        assert_eq!(sizes.iter().sum::<usize>(), count);
        assert_eq!(sizes, vec![BATCH_FILES, BATCH_FILES, 10]);
    }

    #[test]
    fn parallel_depth_first_visits_every_node_once_and_stops_when_asked() {
        // Node n has children 4n+1 ..= 4n+4, below 5,000.
        let children = |n: u32| (4 * n + 1..=4 * n + 4).filter(|c| *c < 5000).collect();
        let seen = Mutex::new(Vec::new());
        parallel_depth_first(vec![0], 3, &AtomicBool::new(false), |n| {
            seen.lock().unwrap().push(n);
            children(n)
        });
        let mut seen = seen.into_inner().unwrap();
        seen.sort();
        assert_eq!(seen, (0..5000).collect::<Vec<_>>());

        let stop = AtomicBool::new(false);
        let visited = AtomicU64::new(0);
        parallel_depth_first(vec![0], 3, &stop, |n| {
            if visited.fetch_add(1, Ordering::Relaxed) == 10 {
                stop.store(true, Ordering::Relaxed);
            }
            children(n)
        });
        assert!(visited.load(Ordering::Relaxed) < 20);
    }
}
