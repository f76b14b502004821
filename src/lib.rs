//! cairn: content-addressed, deduplicating, compressed and encrypted backups of directory
//! trees, kept as immutable checkpoints you can list, browse and restore.
//!
//! The library holds everything; the `cairn` binary is a thin command line over it. Data
//! flows one way, a source copied into a target: [`backup`] turns local paths (or a served
//! directory) into a checkpoint in a [`Repository`]; [`restore`] writes a checkpoint (or a
//! live or served directory, see [`source`]) into a directory; a [`Vfs`] is the browsable
//! view of every checkpoint, and [`mount`] (feature `mount`) hands it to FUSE. The repository
//! stores blobs in packs through a [`repo::backend::Backend`]: a local directory, a
//! `cairn serve` (feature `client`) or an S3-compatible store (feature `s3`).
//!
//! The common calls are re-exported here. A backup, a listing, a restore and a look through
//! the view, in a temporary directory:
//!
//! ```
//! use cairn::repo::{backend::LocalBackend, config::EncryptionMode};
//! use cairn::{BackupOptions, InitOptions, Progress, Repository, RestoreOptions, Secret, Vfs};
//! use std::sync::Arc;
//!
//! let work = std::env::temp_dir().join(format!("cairn-doc-{}", std::process::id()));
//! let source = work.join("source");
//! std::fs::create_dir_all(&source).unwrap();
//! std::fs::write(source.join("notes.txt"), "remember the milk\n").unwrap();
//!
//! // A repository in a local directory, unencrypted (pass a password or key file otherwise).
//! let backend = Arc::new(LocalBackend::new(work.join("repo")));
//! Repository::init(backend.as_ref(), InitOptions::new(EncryptionMode::None))?;
//! let repo = Repository::open(backend, |_| Ok(Secret::None), &work.join("cache"))?;
//!
//! // Back the source up: one checkpoint.
//! let outcome = cairn::backup::run(&repo, &BackupOptions::new(vec![source]), &Progress::default())?;
//! assert!(outcome.errors.is_empty());
//!
//! // List the checkpoints and restore the newest into a new directory.
//! let checkpoints = cairn::checkpoint::list(&repo)?;
//! let newest = checkpoints.last().expect("one checkpoint");
//! let target = work.join("restored");
//! let report = cairn::restore::run(&repo, &newest.record, "", &target, &RestoreOptions::default(), &Progress::default())?;
//! assert_eq!(report.files_written, 1);
//! assert_eq!(std::fs::read(target.join("notes.txt")).unwrap(), b"remember the milk\n");
//!
//! // Browse it without restoring: /latest/notes.txt in the view of every checkpoint.
//! let vfs = Vfs::new(Arc::new(repo), Default::default())?;
//! let latest = vfs.lookup(cairn::vfs::ROOT_INO, b"latest")?;
//! let dir = vfs.lookup(cairn::vfs::ROOT_INO, b"checkpoints")?;
//! let name = vfs.readlink(latest.ino)?;
//! let checkpoint = vfs.lookup(dir.ino, &name[b"checkpoints/".len()..])?;
//! let notes = vfs.lookup(checkpoint.ino, b"notes.txt")?;
//! assert_eq!(&*vfs.read(notes.ino, 0, 4096)?, b"remember the milk\n");
//! drop(vfs);
//! let _ = std::fs::remove_dir_all(&work);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(unreachable_pub)]

// What a caller does: back up, restore, sync, browse, look after a repository.
pub mod backup;
pub mod check;
pub mod diff;
pub mod dump;
pub mod find;
pub mod history;
#[cfg(feature = "mount")]
pub mod mount;
pub mod plan;
pub mod prune;
pub mod repair;
pub mod restore;
pub mod retention;
pub mod stats;
pub mod sync;
pub mod vfs;

// What it works on: checkpoints, trees and ids; sources to read; repositories and their
// stores, including the encoders of the on-disk format (repo::{codec, pack, index, writer})
// for tools that read or craft repositories; the network protocol and its client and server.
pub mod checkpoint;
pub mod id;
pub mod net;
pub mod pattern;
pub mod repo;
pub mod source;
pub mod tree;

// Helpers a front end needs: errors, progress, interruption, throttling, timestamps.
pub mod error;
pub mod fs;
pub mod interrupt;
pub mod progress;
pub mod readahead;
pub mod space;
pub mod speed;
pub mod timestamp;

// Internals.
pub(crate) mod catalogue;
pub(crate) mod chunk_pool;
pub(crate) mod chunker;
pub(crate) mod crypto;
pub(crate) mod holes;
pub(crate) mod read_blocks;
pub(crate) mod target;

#[doc(hidden)]
pub mod fuzzing;

pub use backup::{BackupOptions, BackupOutcome, Progress};
pub use checkpoint::{Checkpoint, CheckpointFilter, Stored};
pub use error::{Error, ErrorKind, LockConflict, Missing, PathError, Result};
pub use id::{BlobId, CheckpointId, TreeId};
pub use repo::{InitOptions, Repository, Secret};
pub use restore::RestoreOptions;
pub use sync::{SyncOptions, SyncReport};
pub use vfs::Vfs;

/// This machine's host name, as recorded in checkpoints and locks.
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its whole length and gethostname NUL-terminates within it.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..len]).into_owned()
}
