//! The tree builder of a backup: it receives each directory after its children (post-order),
//! waits for the content of its files, and stores its tree, bottom-up; and how a file's chunk
//! list becomes its content.

use super::{FileError, FileResult};
use crate::checkpoint::CheckpointStats;
use crate::error::{Error, PathError, Result};
use crate::id::TreeId;
use crate::progress::Progress;
use crate::repo::pack::BlobKind;
use crate::repo::writer::BlobSink;
use crate::tree::{
    ChunkRef, Content, Entry, EntryKind, INLINE_CHUNKS_MAX, Listed, Tree, encode_chunk_list,
    store_tree,
};
use crossbeam_channel::{Receiver, Sender};
use std::sync::Mutex;
use std::sync::atomic::Ordering;

/// One entry of a directory being built.
pub(super) enum PendingEntry {
    /// Complete as it is.
    Ready(Entry),
    /// A file whose content a worker is storing; the listed entry takes it.
    File(Listed, Receiver<FileResult>),
    /// A directory whose tree is being built; the listed entry takes its id.
    Dir(Listed, Receiver<TreeId>),
}

/// A directory whose children have all been walked.
pub(super) struct PendingDir {
    pub entries: Vec<PendingEntry>,
    pub done: Sender<TreeId>,
}

/// A file's content for its tree entry: the chunks inline, or stored as a chunk list blob
/// when there are many.
pub(super) fn file_content(sink: &BlobSink, chunks: Vec<ChunkRef>) -> Result<Content> {
    if chunks.len() > INLINE_CHUNKS_MAX {
        let list = encode_chunk_list(&chunks);
        Ok(Content::ChunkList(sink.store(BlobKind::ChunkList, &list)?))
    } else {
        Ok(Content::Chunks(chunks))
    }
}

/// Resolves the pending entries of each directory, in post-order, and stores its tree.
pub(super) fn run_tree_builder(
    sink: &BlobSink,
    dirs: Receiver<PendingDir>,
    errors: &Mutex<Vec<PathError>>,
    progress: &Progress,
) -> Result<CheckpointStats> {
    let mut stats = CheckpointStats::default();
    for dir in dirs {
        let mut entries = Vec::with_capacity(dir.entries.len());
        for pending in dir.entries {
            let entry = match pending {
                PendingEntry::Ready(entry) => entry,
                PendingEntry::File(entry, result) => {
                    match result.recv().expect("workers answer every job") {
                        Ok((content, size)) => Entry {
                            size,
                            ..entry.with_kind(EntryKind::File(content))
                        },
                        Err(FileError::Repository(e)) => return Err(e),
                        Err(FileError::Source(error)) => {
                            errors.lock().expect("not poisoned").push(error);
                            continue;
                        }
                    }
                }
                PendingEntry::Dir(entry, tree) => {
                    let id = tree
                        .recv()
                        .map_err(|_| Error::InvalidInput("tree builder lost a directory".into()))?;
                    entry.with_kind(EntryKind::Dir(id))
                }
            };
            match &entry.kind {
                EntryKind::File(_) => {
                    stats.files += 1;
                    stats.bytes += entry.size;
                    // Its bytes counted as done when it was read or found unchanged.
                    progress.files_done.fetch_add(1, Ordering::Relaxed);
                }
                EntryKind::Dir(_) => stats.dirs += 1,
                _ => {}
            }
            entries.push(entry);
        }
        let id = store_tree(sink, &Tree::from_entries(entries))?;
        // The parent's receiver is gone only when the walk was abandoned.
        let _ = dir.done.send(id);
    }
    Ok(stats)
}
