//! Reading ahead of a reader: the background threads that decode trees and hand the walk
//! ahead's file starts to the kernel, and the reading order of each listed directory that
//! tells them which files a walker reads next.

use super::Vfs;
use super::namespace::NodeKind;
use super::walk_ahead::WalkAhead;
use super::{
    FILE_STARTS_BYTES, FILE_STARTS_SERVED_FIRST, Ino, PREFETCH_WINDOW_FILES, PagePusher, TreeCache,
    cached_tree,
};
use crate::id::TreeId;
use crate::repo::Repository;
use crate::tree::{ChunkRef, Content, EntryKind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// What the background threads do ahead of a reader.
pub(super) enum Prefetch {
    Tree(TreeId),
    /// The first chunk of a file, handed from the walk ahead to the kernel's page cache when
    /// the walk holds it and the kernel takes it.
    FileStart(Ino, ChunkRef),
}

/// The files of a directory in the order a program walking it reads them, each with its
/// first chunk, and how many of them the prefetcher was asked for.
pub(super) struct ReadingOrder {
    pub(super) files: Vec<(Ino, ChunkRef)>,
    requested: AtomicUsize,
}

/// What the prefetch threads decode trees with and hand file starts from.
pub(super) struct Prefetcher {
    pub(super) repo: Arc<Repository>,
    pub(super) trees: Arc<TreeCache>,
    pub(super) page_pusher: Arc<OnceLock<PagePusher>>,
    /// The walk ahead: file starts come from it, never from a read of their own.
    pub(super) walk: Arc<WalkAhead>,
}

impl Prefetcher {
    /// Serves one prefetch request.
    pub(super) fn serve(&self, request: Prefetch) -> crate::error::Result<()> {
        match request {
            Prefetch::Tree(id) => cached_tree(&self.trees, &self.repo, &id).map(drop),
            Prefetch::FileStart(ino, chunk) => {
                // Taken from the walk only when it can go to the kernel; what the walk hands
                // over is in the chunk cache already.
                if let Some(push) = self.page_pusher.get()
                    && let Some(data) = self.walk.take_ahead(&chunk.id)
                {
                    push(ino, 0, &data);
                }
                Ok(())
            }
        }
    }
}

/// Starts a background thread named `name` (as `top -H` and `perf` show it), like
/// `std::thread::spawn`, which panics too when no thread can be made.
pub(super) fn spawn_named(name: &str, body: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(body)
        .expect("starting a thread");
}

impl Vfs {
    /// Sends prefetched file starts to `pusher` (the kernel's page cache) from now on.
    pub fn push_pages_to(&self, pusher: PagePusher) {
        if self.page_pusher.set(pusher).is_err() {
            tracing::debug!("a page pusher was already set");
        }
    }

    /// Records the reading order of directory `dir` for `note_read`, and starts decoding the
    /// trees of its subdirectories, which a program walking the tree (tar, cp -a, find)
    /// lists next.
    pub(super) fn start_reading_order(&self, dir: Ino, listing: &[(Ino, NodeKind, Vec<u8>)]) {
        let mut files = Vec::new();
        for (ino, kind, _) in listing {
            let NodeKind::Entry { entry, .. } = kind else {
                continue;
            };
            match &entry.kind {
                EntryKind::File(Content::Chunks(chunks)) => {
                    files.extend(chunks.first().map(|chunk| (*ino, *chunk)));
                }
                EntryKind::Dir(tree) if !self.trees.contains_key(tree) => {
                    self.prefetch.try_push(Prefetch::Tree(*tree));
                }
                _ => {}
            }
        }
        if files.is_empty() {
            return;
        }
        {
            let mut nodes = self.nodes.write().expect("not poisoned");
            for (place, (ino, _)) in files.iter().enumerate() {
                if let Some(slot) = nodes.get_mut(ino) {
                    slot.place = Some((dir, place));
                }
            }
        }
        let order = ReadingOrder {
            files,
            requested: AtomicUsize::new(0),
        };
        self.reading_orders.insert(dir, Arc::new(order));
    }

    /// Notes that file `ino` was read. A read of a file the prefetcher was not asked for yet
    /// asks it to hand the walk ahead's starts of the files after it in its directory to the
    /// kernel: a walker reading files one at a time (tar, cp -a) then finds them in the
    /// kernel's page cache (small files are a single chunk).
    pub(super) fn note_read(&self, ino: Ino) {
        let place = {
            let nodes = self.nodes.read().expect("not poisoned");
            match nodes.get(&ino) {
                Some(slot) if !slot.was_read.swap(true, Ordering::Relaxed) => slot.place,
                _ => None,
            }
        };
        let Some((dir, place)) = place else {
            return;
        };
        if let Some(order) = self.reading_orders.get(&dir) {
            self.ask_for_file_starts(&order, place + 1, 0);
        }
    }

    /// Notes that the kernel holds every entry of directory `dir`'s listing (the reader has
    /// listed it to its end). When the walk ahead holds the first file's start, it likely
    /// holds the next ones': they go to the kernel's page cache now, the first few before the
    /// reader is answered, so a walker reading the directory's files next finds them there.
    /// (A read of the first files would otherwise come before the background pushed them: a
    /// tar of the kernel tree missed 6,200 of 78,000 files, now 800.) Nothing is read for
    /// it, and a program that only lists (find, where no walk runs) asks for nothing.
    pub fn listing_taken(&self, dir: Ino) {
        if let Some(order) = self.reading_orders.get(&dir)
            && order.requested.load(Ordering::Relaxed) == 0
            && (order.files.first()).is_some_and(|(_, start)| self.walk.holds(&start.id))
        {
            self.ask_for_file_starts(&order, 0, FILE_STARTS_SERVED_FIRST);
        }
    }

    /// Asks the prefetcher for the starts of the files of `order` from place `from` on, a
    /// window of them, unless it was asked for most of them already; the first `served_now`
    /// are served before this returns.
    fn ask_for_file_starts(&self, order: &ReadingOrder, from: usize, served_now: usize) {
        // Asked for again only once the reader is half way through what was asked for, so
        // each request holds half a window or more.
        let end = (from + PREFETCH_WINDOW_FILES).min(order.files.len());
        if order.requested.load(Ordering::Relaxed) > from + PREFETCH_WINDOW_FILES / 2 {
            return;
        }
        let start = order.requested.fetch_max(end, Ordering::Relaxed).max(from);
        let nodes = self.nodes.read().expect("not poisoned");
        // At most one read-ahead window of bytes handed to the kernel per request, however
        // large the files' first chunks.
        let mut bytes = 0u64;
        let batch: Vec<(Ino, ChunkRef)> = order
            .files
            .get(start..end)
            .unwrap_or_default()
            .iter()
            .filter(|(ino, _)| {
                !nodes
                    .get(ino)
                    .is_some_and(|slot| slot.was_read.load(Ordering::Relaxed))
            })
            .take_while(|(_, chunk)| {
                let first = bytes == 0;
                bytes += u64::from(chunk.length);
                first || bytes <= FILE_STARTS_BYTES
            })
            .copied()
            .collect();
        drop(nodes);
        let mut batch = batch.into_iter();
        for (ino, chunk) in batch.by_ref().take(served_now) {
            if let Err(e) = self.prefetcher.serve(Prefetch::FileStart(ino, chunk)) {
                tracing::debug!("prefetch failed: {e}");
            }
        }
        // One request per file, which the prefetch threads serve side by side.
        for (ino, chunk) in batch {
            if !self.prefetch.try_push(Prefetch::FileStart(ino, chunk)) {
                break;
            }
        }
    }
}
