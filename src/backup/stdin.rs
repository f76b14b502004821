//! A backup of standard input as one file (`cairn backup --stdin --stdin-filename NAME`): a
//! database dump or an archive piped in. The checkpoint's root holds one regular file,
//! `NAME`, with the bytes read until end of input, mode 0644, the running user's ids and
//! the time of the backup; the checkpoint records `/NAME` as its path, so the backups of
//! one name are one series. A read error fails the backup: a checkpoint is never made of
//! part of the input.

use super::local::{StoreError, store_stream};
use super::{
    BackupOptions, FileError, FileJob, Identity, Root, Settings, Source, Started, back_up_opening,
};
use crate::checkpoint::Checkpoint;
use crate::error::{Error, PathError, Result};
use crate::fs::throttle::RateLimiter;
use crate::id::CheckpointId;
use crate::progress::Progress;
use crate::read_blocks::ReadBlocks;
use crate::repo::Repository;
use crate::repo::writer::BlobSink;
use crate::tree::{Listed, ListedKind};
use crossbeam_channel::Receiver;
use std::io::Read;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;

/// Standard input (or any stream) as the one file of a checkpoint.
struct StdinSource<R> {
    name: Vec<u8>,
    identity: Identity,
    input: Mutex<Option<R>>,
    read_limiter: Option<RateLimiter>,
}

/// Backs up `input` as the file `name` (see the module documentation) into the repository
/// `open` opens; `options` gives the host, tags and read limit (its paths are not used).
pub fn run_stream<R, Repo, E>(
    open: impl FnOnce() -> std::result::Result<Repo, E>,
    input: R,
    name: &str,
    options: &BackupOptions,
    progress: &Progress,
) -> std::result::Result<super::BackupOutcome, E>
where
    R: Read + Send,
    Repo: std::borrow::Borrow<Repository>,
    E: From<Error>,
{
    let started = Started::now();
    crate::checkpoint::check_tags(&options.tags)?;
    if !crate::tree::is_valid_name(name.as_bytes()) {
        return Err(Error::InvalidInput(format!(
            "--stdin-filename {name:?} cannot name a file: give a name without `/`, such as `database.sql`"
        ))
        .into());
    }
    let source = StdinSource {
        name: name.as_bytes().to_vec(),
        identity: Identity {
            host: options.host.clone(),
            paths: vec![format!("/{name}")],
            pulled_from: None,
        },
        input: Mutex::new(Some(input)),
        read_limiter: options.read_limit.map(RateLimiter::new),
    };
    let settings = Settings {
        purpose: "backup",
        tags: options.tags.clone(),
        threads: 1,
        read_ahead_threads: 0,
        parent_trees_ahead: false,
    };
    back_up_opening(open, &source, &settings, started, progress)
}

impl<R: Read + Send> Source for StdinSource<R> {
    type Path = ();

    fn identity(&self) -> &Identity {
        &self.identity
    }

    /// None: nothing is known of the input before it is read.
    fn find_parent(&self, _: &Repository) -> Result<Option<(CheckpointId, Checkpoint)>> {
        Ok(None)
    }

    fn root(&self, _: &Mutex<Vec<PathError>>) -> Result<Root<()>> {
        let now = crate::timestamp::from_system_time(std::time::SystemTime::now());
        // SAFETY: getuid and getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let entry = Listed {
            name: self.name.clone(),
            kind: ListedKind::File,
            mode: 0o644,
            uid,
            gid,
            user: None,
            group: None,
            mtime_ns: now,
            ctime_ns: now,
            size: 0,
            device: 0,
            inode: 0,
            links: 1,
            xattrs: Vec::new(),
        };
        Ok(Root::Paths(vec![(entry, ())]))
    }

    fn list(&self, _: &(), _: &Mutex<Vec<PathError>>) -> Result<Vec<Listed>> {
        Ok(Vec::new())
    }

    fn child(&self, _: &(), _: &[u8]) {}

    /// Nothing to count: the input's length is known once it is read.
    fn count_totals(&self, _: &Progress, _: &AtomicBool) {}

    fn store_files(&self, sink: &BlobSink, jobs: Receiver<Vec<FileJob<()>>>, progress: &Progress) {
        let blocks = ReadBlocks::default();
        for job in jobs.into_iter().flatten() {
            let input = self.input.lock().expect("not poisoned").take();
            let result = match input {
                Some(input) => store_stream(
                    sink,
                    None,
                    self.read_limiter.as_ref(),
                    input,
                    &blocks,
                    progress,
                ),
                None => Err(StoreError::Repository(Error::InvalidInput(
                    "standard input was already read".into(),
                ))),
            };
            let result = result.map_err(|e| match e {
                StoreError::Read(e) => {
                    FileError::Repository(Error::io("reading standard input", e))
                }
                StoreError::Repository(e) => FileError::Repository(e),
            });
            let _ = job.result.send(result);
        }
    }
}
