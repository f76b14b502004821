//! cairn: content-addressed, deduplicating, compressed and encrypted backups of directory
//! trees, kept as immutable checkpoints you can list, browse and restore.
//!
//! The library holds everything; the `cairn` binary is a thin command line over it.
//! Layers, top to bottom: [`backup`], [`restore`] and [`check`] run whole operations over a
//! [`repo::Repository`]; [`checkpoint`] and [`tree`] define what a backup is made of; the
//! repository stores blobs in packs through a [`repo::backend::Backend`], using
//! [`chunker`], [`crypto`] and [`id`].
//!
//! ```no_run
//! use cairn::repo::{InitOptions, Repository, Secret, backend::LocalBackend};
//! use cairn::repo::config::EncryptionMode;
//! use std::sync::Arc;
//!
//! let backend = Arc::new(LocalBackend::new("/tmp/repo"));
//! Repository::init(backend.as_ref(), InitOptions::new(EncryptionMode::None))?;
//! let repo = Repository::open(backend, |_| Ok(Secret::None), "/tmp/cache".as_ref())?;
//! let options = cairn::backup::BackupOptions::new(vec!["/etc".into()]);
//! let outcome = cairn::backup::run(&repo, &options, &cairn::backup::Progress::default())?;
//! if let Some(id) = outcome.id {
//!     println!("checkpoint {id}");
//! }
//! # Ok::<(), cairn::error::Error>(())
//! ```

pub mod backup;
pub mod catalogue;
pub mod check;
pub mod checkpoint;
pub mod chunker;
pub mod crypto;
pub mod diff;
pub mod error;
pub mod fs;
#[doc(hidden)]
pub mod fuzzing;
pub mod history;
pub mod holes;
pub mod id;
pub mod interrupt;
pub mod mount;
pub mod net;
pub mod progress;
pub mod prune;
pub mod readahead;
pub mod repair;
pub mod repo;
pub mod restore;
pub mod retention;
pub mod source;
pub mod space;
pub mod speed;
pub mod sync;
pub mod target;
pub mod timestamp;
pub mod tree;
pub mod vfs;

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
