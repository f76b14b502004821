//! A checkpoint's tree in a repository as a source: directories are trees, files are read chunk
//! by chunk from the packs (several files' chunks in one pass), and a changed file takes what
//! the old file holds.

use super::{FileTask, FileWrite, Rebuild, TreeSource, finish_rebuild, write_at};
use crate::checkpoint::Checkpoint;
use crate::error::{Error, PathError, Result};
use crate::id::{BlobId, TreeId};
use crate::progress::Progress;
use crate::readahead::ChunkStream;
use crate::repo::Repository;
use crate::tree::{Entry, EntryKind, load_tree, sized_file_chunks};
use std::fs::File;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// A checkpoint's tree in a repository.
pub struct CheckpointSource<'a> {
    repo: &'a Repository,
    /// The checkpoint whose statistics give the regular files and bytes of the tree, for a
    /// whole checkpoint; for part of one they are counted from the trees.
    whole: Option<&'a Checkpoint>,
}

impl<'a> CheckpointSource<'a> {
    /// All of checkpoint `record`: its statistics are the progress totals.
    pub fn whole(repo: &'a Repository, record: &'a Checkpoint) -> Self {
        CheckpointSource {
            repo,
            whole: Some(record),
        }
    }

    /// A directory of a checkpoint: the progress totals are counted from its trees.
    pub fn part(repo: &'a Repository) -> Self {
        CheckpointSource { repo, whole: None }
    }
}

impl TreeSource for CheckpointSource<'_> {
    type Dir = TreeId;
    type Kind = EntryKind;

    fn count(&self, root: &TreeId, progress: &Progress, stop: &AtomicBool) {
        if let Some(record) = self.whole {
            progress.set_totals(record.stats.files, record.stats.bytes);
            return;
        }
        // The trees are read again by the walk, from the repository's tree cache.
        let mut pending = vec![*root];
        while let Some(id) = pending.pop() {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let Ok(tree) = load_tree(self.repo, &id) else {
                return;
            };
            for entry in tree.entries {
                match entry.kind {
                    EntryKind::Dir(id) => pending.push(id),
                    EntryKind::File(_) => {
                        progress.total_files.fetch_add(1, Ordering::Relaxed);
                        progress
                            .total_bytes
                            .fetch_add(entry.size, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
        }
        progress.counted.store(true, Ordering::Relaxed);
    }

    fn repository(&self) -> Option<&Repository> {
        Some(self.repo)
    }

    fn list(
        &self,
        dir: &TreeId,
        _: &Mutex<Vec<PathError>>,
    ) -> Result<Vec<(Entry, Option<TreeId>)>> {
        let tree = load_tree(self.repo, dir)?;
        Ok(tree
            .entries
            .into_iter()
            .map(|entry| match entry.kind {
                EntryKind::Dir(id) => (entry, Some(id)),
                _ => (entry, None),
            })
            .collect())
    }

    fn write_file(
        &self,
        dir: &TreeId,
        entry: &Entry,
        old: Option<&File>,
        out: &File,
    ) -> Result<FileWrite> {
        let task = FileTask {
            dir,
            entry,
            old,
            out,
        };
        self.write_files(std::slice::from_ref(&task))
            .pop()
            .expect("one result per file")
    }

    /// Starts each file's rebuild, then reads the chunks none of the old files held, for all
    /// the files together, ahead and coalesced (`readahead`).
    fn write_files(&self, files: &[FileTask<'_, TreeId, EntryKind>]) -> Vec<Result<FileWrite>> {
        let repo = self.repo;
        let id_of = |data: &[u8]| BlobId(repo.codec().id_of(data));
        let mut results: Vec<Option<Result<FileWrite>>> = files.iter().map(|_| None).collect();
        let mut rebuilds: Vec<Option<Rebuild>> = files.iter().map(|_| None).collect();
        for (i, file) in files.iter().enumerate() {
            let EntryKind::File(content) = &file.entry.kind else {
                results[i] = Some(Err(Error::InvalidInput("not a regular file".into())));
                continue;
            };
            let chunks = sized_file_chunks(repo, content, file.entry.size);
            match file.start_rebuild(chunks, repo.chunker(), &id_of) {
                Ok(rebuild) => rebuilds[i] = Some(rebuild),
                Err(result) => results[i] = Some(result),
            }
        }
        let mut fetched = vec![0u64; files.len()];
        let missing = rebuilds.iter().enumerate().flat_map(|(i, rebuild)| {
            let missing = rebuild.as_ref().map_or(&[][..], |r| &r.missing[..]);
            missing
                .iter()
                .map(move |&(at, chunk)| ((i, at, chunk.length), chunk))
        });
        std::thread::scope(|scope| {
            for ((i, at, length), chunk) in ChunkStream::new(repo, scope, missing) {
                if results[i].is_some() {
                    continue;
                }
                let written = chunk.and_then(|chunk| {
                    if chunk.bytes.len() != length as usize {
                        return Err(Error::corrupt(
                            files[i].entry.name_lossy(),
                            format!("the chunk at offset {at} has the wrong length"),
                        ));
                    }
                    write_at(files[i].out, at, &chunk.bytes)?;
                    Ok(chunk.stored_length)
                });
                match written {
                    Ok(stored) => fetched[i] += stored,
                    Err(e) => results[i] = Some(Err(e)),
                }
            }
        });
        results
            .into_iter()
            .zip(rebuilds)
            .zip(files.iter().zip(fetched))
            .map(
                |((result, rebuild), (file, fetched))| match (result, rebuild) {
                    (Some(result), _) => result,
                    (None, Some(rebuild)) => finish_rebuild(rebuild, fetched, file.out),
                    (None, None) => Err(Error::InvalidInput("not written".into())),
                },
            )
            .collect()
    }
}
