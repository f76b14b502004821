//! Writing the files of a sync or restore: the workers that rebuild a changed file in a
//! temporary file beside it and rename it over the old one (batched for a source that pays per
//! request), and the round writer that writes the files new to the target from a checkpoint,
//! pack by pack; a full filesystem stops both the same way.

use super::TEMP_PREFIX;
use crate::error::{Error, IoContext, PathError, Result};
use crate::fs::sparse::fill_holes;
use crate::progress::Progress;
use crate::readahead::{self, ReadChunk};
use crate::repo::Repository;
use crate::source::local::copy_file;
use crate::source::{FileTask, FileWrite, TreeSource, write_at, write_error};
use crate::space::{SpaceFailure, is_out_of_space};
use crate::target::{TargetDir, may_adjust_in_place, set_metadata_of};
use crate::tree::{Entry, Kind, sized_file_chunks};
use std::fs::File;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Files with nothing at their place handed to the round writer together, at most, and
/// bytes of their content: the chunks of a round are read pack by pack, so a pack is read
/// about once per round it serves. A round costs memory for its files' entries and chunk
/// lists, not their bytes.
pub(super) const ROUND_FILES: usize = 32_768;
pub(super) const ROUND_BYTES: u64 = 1 << 30;

/// A file for the workers: entry `entry.name` of source directory `dir`, written into
/// `target`.
pub(super) struct FileJob<D, K> {
    pub(super) dir: D,
    pub(super) target: Arc<TargetDir>,
    pub(super) entry: Entry<K>,
    /// Whether a regular file is at its place now.
    pub(super) has_old: bool,
    /// Whether this run made the target directory, so nothing else is at the file's name:
    /// it is written there directly, without a temporary name and a rename.
    pub(super) fresh: bool,
    /// Leave zero runs of a written file as holes, rather than fill them.
    pub(super) sparse: bool,
}

impl<D, K: Kind> FileJob<D, K> {
    pub(super) fn shown(&self) -> PathBuf {
        self.target.child_path(&self.entry.name)
    }

    /// The name the new file is written under: a fresh temporary one, renamed over the old
    /// file once written; in a directory this run made, its own.
    fn writing_name(&self) -> Vec<u8> {
        match self.fresh {
            true => self.entry.name.clone(),
            false => temp_name(),
        }
    }
}

/// A fresh temporary name.
pub(super) fn temp_name() -> Vec<u8> {
    let suffix = hex::encode(crate::crypto::random_bytes::<8>());
    format!("{TEMP_PREFIX}{suffix}").into_bytes()
}

/// Files the planner hands a worker together, at most (each holds its old and its new file
/// open while the batch is written), and bytes of their content: a checkpoint's chunks for
/// them are read in few requests (`readahead`), a remote source's in few round trips.
pub(super) const FILES_PER_BATCH: usize = 64;
pub(super) const BATCH_BYTES: u64 = crate::readahead::WINDOW_BYTES;

/// A file ready to be written: the old one (if a regular file is there) and the new one,
/// open under its temporary name (or its own, in a directory this run made).
struct Prepared {
    pub(super) old: Option<File>,
    pub(super) temp: Vec<u8>,
    pub(super) out: File,
}

fn prepare_file<D, K: Kind>(job: &FileJob<D, K>) -> Result<Prepared> {
    let old = if job.has_old {
        job.target.open_file(&job.entry.name).ok()
    } else {
        None
    };
    let temp = job.writing_name();
    let out = job
        .target
        .create_file(&temp)
        .context_io(|| format!("creating {}", job.target.child_path(&temp).display()))?;
    Ok(Prepared { old, temp, out })
}

/// Makes the new file of `job` dense, unless the sync keeps holes (see `restore::fill_holes`).
fn fill_unless_sparse<D, K: Kind>(job: &FileJob<D, K>, out: &File) -> std::io::Result<()> {
    if job.sparse { Ok(()) } else { fill_holes(out) }
}

/// Puts a written file in place (metadata on its descriptor, then rename over the old one),
/// or, when the old one already held the content, sets the metadata on the old file's
/// descriptor: the file that was compared, whatever its name holds now. Removes the
/// temporary file when anything failed.
fn finish_file<D, K: Kind>(
    job: &FileJob<D, K>,
    prepared: Prepared,
    written: Result<FileWrite>,
) -> Result<FileWrite> {
    let Prepared { old, temp, out } = prepared;
    let shown = job.shown();
    let metadata_error = |e| Error::io(format!("setting metadata of {}", shown.display()), e);
    let placed = written.and_then(|how| {
        match &how {
            FileWrite::Same => {
                let old = old.as_ref().ok_or_else(|| {
                    Error::InvalidInput(format!("{}: no old file to keep", shown.display()))
                })?;
                let in_place = old
                    .metadata()
                    .is_ok_and(|m| may_adjust_in_place(&m, &job.entry));
                if !in_place {
                    // Another user's file, or one with a name outside the target: its bytes
                    // are right, but it is replaced by a copy rather than changed.
                    copy_file(old, &shown, &out, job.entry.size, None)?;
                    fill_unless_sparse(job, &out).map_err(write_error)?;
                    set_metadata_of(out.as_fd(), &job.entry, &shown).map_err(metadata_error)?;
                    drop(out);
                    job.target
                        .rename(&temp, &job.entry.name)
                        .context_io(|| format!("replacing {}", shown.display()))?;
                    return Ok(FileWrite::Written {
                        fetched: 0,
                        reused: job.entry.size,
                    });
                }
                set_metadata_of(old.as_fd(), &job.entry, &shown).map_err(metadata_error)?;
                drop(out);
                job.target.unlink(&temp).context_io(|| {
                    format!("removing {}", job.target.child_path(&temp).display())
                })?;
            }
            FileWrite::Written { .. } => {
                fill_unless_sparse(job, &out)
                    .context_io(|| format!("writing {}", shown.display()))?;
                set_metadata_of(out.as_fd(), &job.entry, &shown).map_err(metadata_error)?;
                drop(out);
                if temp != job.entry.name {
                    job.target
                        .rename(&temp, &job.entry.name)
                        .context_io(|| format!("replacing {}", shown.display()))?;
                }
            }
        }
        Ok(how)
    });
    if placed.is_err() {
        let _ = job.target.unlink(&temp);
    }
    placed
}

/// Brings a batch of files up to date; one result per job.
fn sync_files<S: TreeSource>(
    source: &S,
    jobs: &[FileJob<S::Dir, S::Kind>],
) -> Vec<Result<FileWrite>> {
    let prepared: Vec<Result<Prepared>> = jobs.iter().map(prepare_file).collect();
    let ready: Vec<(usize, &Prepared)> = prepared
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.as_ref().ok().map(|p| (i, p)))
        .collect();
    let tasks: Vec<FileTask<'_, S::Dir, S::Kind>> = ready
        .iter()
        .map(|&(i, p)| FileTask {
            dir: &jobs[i].dir,
            entry: &jobs[i].entry,
            old: p.old.as_ref(),
            out: &p.out,
        })
        .collect();
    let mut written: Vec<Option<Result<FileWrite>>> = jobs.iter().map(|_| None).collect();
    for (&(i, _), result) in ready.iter().zip(source.write_files(&tasks)) {
        written[i] = Some(result);
    }
    drop(tasks);
    jobs.iter()
        .zip(prepared)
        .zip(written)
        .map(|((job, prepared), written)| {
            let prepared = prepared?;
            let written = written.unwrap_or_else(|| Err(Error::InvalidInput("not written".into())));
            finish_file(job, prepared, written)
        })
        .collect()
}

/// Where a file of a round stands.
pub(super) enum Writing {
    /// No chunk has arrived: its temporary file is not created yet.
    Waiting,
    Open {
        temp: Vec<u8>,
        out: File,
    },
    /// It cannot be written; its temporary file (if any) goes once its last chunk has come.
    Failed {
        error: Error,
        temp: Option<Vec<u8>>,
    },
    Finished,
}

/// A file of a round: its job, its temporary file once created, the chunks still to come,
/// the bytes fetched for it and the bytes of it written (counted done as they are).
struct RoundFile<'a, D, K> {
    pub(super) job: &'a FileJob<D, K>,
    pub(super) state: Mutex<Writing>,
    chunks_left: AtomicUsize,
    pub(super) fetched: AtomicU64,
    pub(super) written: AtomicU64,
}

impl<D, K: Kind> RoundFile<'_, D, K> {
    /// Writes `chunk` (or keeps why it cannot be written) at `offset`, where `length` bytes
    /// belong; the file is finished, and recorded in `outcomes`, once this was its last chunk.
    fn take_chunk(&self, offset: u64, length: u32, chunk: Result<&ReadChunk>, outcomes: &Outcomes) {
        {
            let mut state = self.state.lock().expect("not poisoned");
            if !matches!(*state, Writing::Failed { .. })
                && let Err(error) =
                    self.write_chunk(&mut state, offset, length, chunk, outcomes.progress)
            {
                let temp = match std::mem::replace(&mut *state, Writing::Finished) {
                    Writing::Open { temp, .. } => Some(temp),
                    _ => None,
                };
                *state = Writing::Failed { error, temp };
            }
        }
        if self.chunks_left.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.record(outcomes);
        }
    }

    /// Finishes the file and records how that went.
    pub(super) fn record(&self, outcomes: &Outcomes) {
        let result = self.finish();
        outcomes.record(self.job, result, self.written.load(Ordering::Relaxed));
    }

    /// Writes one chunk; its bytes count as done at once, so a large file's progress moves.
    fn write_chunk(
        &self,
        state: &mut Writing,
        offset: u64,
        length: u32,
        chunk: Result<&ReadChunk>,
        progress: &Progress,
    ) -> Result<()> {
        let chunk = chunk?;
        if chunk.bytes.len() != length as usize {
            return Err(Error::corrupt(
                self.job.entry.name_lossy(),
                format!("the chunk at offset {offset} has the wrong length"),
            ));
        }
        if matches!(state, Writing::Waiting) {
            *state = self.create()?;
        }
        let Writing::Open { out, .. } = state else {
            unreachable!("a file takes chunks only while open");
        };
        write_at(out, offset, &chunk.bytes)?;
        self.fetched
            .fetch_add(chunk.stored_length, Ordering::Relaxed);
        let length = u64::from(length);
        self.written.fetch_add(length, Ordering::Relaxed);
        progress.bytes_done.fetch_add(length, Ordering::Relaxed);
        Ok(())
    }

    /// Creates the file's temporary file beside its place, or, in a directory this run
    /// made, the file itself.
    pub(super) fn create(&self) -> Result<Writing> {
        let temp = self.job.writing_name();
        let target = &self.job.target;
        let out = target
            .create_file(&temp)
            .context_io(|| format!("creating {}", target.child_path(&temp).display()))?;
        Ok(Writing::Open { temp, out })
    }

    /// Puts the file, all of whose chunks are written, in place (`finish_file`); or removes
    /// its temporary file when it failed.
    pub(super) fn finish(&self) -> Result<FileWrite> {
        let state = std::mem::replace(
            &mut *self.state.lock().expect("not poisoned"),
            Writing::Finished,
        );
        let (temp, out) = match state {
            Writing::Failed { error, temp } => {
                if let Some(temp) = temp {
                    let _ = self.job.target.unlink(&temp);
                }
                return Err(error);
            }
            Writing::Finished => unreachable!("a file is finished once"),
            // A file without chunks gets its (empty) temporary file here.
            Writing::Waiting => match self.create()? {
                Writing::Open { temp, out } => (temp, out),
                _ => unreachable!("create opens"),
            },
            Writing::Open { temp, out } => (temp, out),
        };
        let written = out
            .set_len(self.job.entry.size)
            .map_err(write_error)
            .map(|()| FileWrite::Written {
                fetched: self.fetched.load(Ordering::Relaxed),
                reused: 0,
            });
        let prepared = Prepared {
            old: None,
            temp,
            out,
        };
        finish_file(self.job, prepared, written)
    }
}

/// Writes a round of files that have nothing at their place: every chunk read from
/// `repo` pack by pack, `readers` stretches at once, into temporary files created as their
/// first chunk arrives; each file is put in place as its last chunk is written, and
/// recorded in `outcomes`. Once the filesystem is full, the packs not yet read are not read.
pub(super) fn sync_round<D: Sync, K: Kind + Sync>(
    repo: &Repository,
    jobs: &[FileJob<D, K>],
    readers: usize,
    outcomes: &Outcomes,
) {
    let mut round = Vec::with_capacity(jobs.len());
    let mut places = Vec::new();
    for job in jobs {
        let chunks = match job.entry.kind.content() {
            Some(content) => sized_file_chunks(repo, content, job.entry.size),
            None => Err(Error::InvalidInput("not a stored regular file".into())),
        };
        let chunks = match chunks {
            Ok(chunks) => chunks,
            Err(e) => {
                outcomes.record(job, Err(e), 0);
                continue;
            }
        };
        let mut offset = 0u64;
        for chunk in &chunks {
            places.push(((round.len(), offset, chunk.length), *chunk));
            offset += u64::from(chunk.length);
        }
        round.push(RoundFile {
            job,
            state: Mutex::new(Writing::Waiting),
            chunks_left: AtomicUsize::new(chunks.len()),
            fetched: AtomicU64::new(0),
            written: AtomicU64::new(0),
        });
    }
    for file in round
        .iter()
        .filter(|f| f.chunks_left.load(Ordering::Relaxed) == 0)
    {
        file.record(outcomes);
    }
    readahead::read_by_pack(
        repo,
        places,
        readers,
        &|| outcomes.full.is_full(),
        &|&(file, offset, length), chunk| {
            let chunk = chunk.as_ref().map_err(Error::duplicate);
            round[file].take_chunk(offset, length, chunk, outcomes)
        },
    );
}

/// What the workers add up: files written (or found to hold the content already, which is
/// what rsync's transfer of a file failing the quick check is too), bytes fetched, bytes
/// reused.
pub(super) type WorkerTotals = Mutex<(u64, u64, u64)>;

/// Where the workers report each file: totals, progress, errors, a full filesystem.
pub(super) struct Outcomes<'a> {
    pub(super) progress: &'a Progress,
    pub(super) errors: &'a Mutex<Vec<PathError>>,
    pub(super) full: &'a SpaceFailure,
    pub(super) totals: &'a WorkerTotals,
}

impl Outcomes<'_> {
    /// Records how the file of `job` was brought up to date, or why it was not;
    /// `counted` of its bytes were counted done as they were written.
    pub(super) fn record<D, K: Kind>(
        &self,
        job: &FileJob<D, K>,
        result: Result<FileWrite>,
        counted: u64,
    ) {
        if result.is_err() {
            // A file not written is not done: its bytes stay to do.
            self.progress
                .bytes_done
                .fetch_sub(counted, Ordering::Relaxed);
        }
        match result {
            Ok(how) => {
                let mut totals = self.totals.lock().expect("not poisoned");
                totals.0 += 1;
                if let FileWrite::Written { fetched, reused } = how {
                    totals.1 += fetched;
                    totals.2 += reused;
                    self.progress
                        .bytes_read
                        .fetch_add(fetched, Ordering::Relaxed);
                }
                self.progress.working_on(job.shown().display());
                self.progress
                    .file_done(job.entry.size.saturating_sub(counted));
            }
            Err(e) if is_out_of_space(&e) => self.full.record(job.shown(), &e),
            // Once the filesystem is full, files given up on are not errors of their own.
            Err(_) if self.full.is_full() => {}
            Err(e) => self.errors.lock().expect("not poisoned").push(PathError {
                path: job.shown(),
                message: e.to_string(),
            }),
        }
    }
}

/// Takes batches of file jobs and brings each file up to date.
pub(super) fn run_sync_worker<S: TreeSource>(
    source: &S,
    jobs: crossbeam_channel::Receiver<Vec<FileJob<S::Dir, S::Kind>>>,
    outcomes: &Outcomes,
) {
    for batch in jobs {
        // Once the filesystem is full, the queued files are dropped unwritten.
        if outcomes.full.is_full() {
            continue;
        }
        let results = sync_files(source, &batch);
        for (job, result) in batch.iter().zip(results) {
            outcomes.record(job, result, 0);
        }
        if let Some(received) = source.bytes_received() {
            outcomes
                .progress
                .bytes_read
                .store(received, Ordering::Relaxed);
        }
    }
}

/// Writes the rounds of a checkpoint source one after the other, each read from `repo`
/// with `readers` stretches at once.
pub(super) fn run_round_writer<D: Sync, K: Kind + Sync>(
    repo: &Repository,
    rounds: crossbeam_channel::Receiver<Vec<FileJob<D, K>>>,
    readers: usize,
    outcomes: &Outcomes,
) {
    for round in rounds {
        if outcomes.full.is_full() {
            continue;
        }
        sync_round(repo, &round, readers, outcomes);
    }
}
