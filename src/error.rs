//! The library's error type. Every error says in its text what it concerns, and `kind()`
//! sorts it into the few classes callers act on. What a caller may act on beyond the class
//! is typed: a `NotFound` carries what was missing (`Missing`: a repository, an object, a
//! blob, a checkpoint, a path, a key), a `Locked` what stood in the way (`LockConflict`: whose
//! lock, or this run's own gone stale). `InvalidInput` is a request a person must correct and
//! carries only its text, which names the argument and what to give instead. Integrity
//! failures (a MAC or hash that does not match) are `Corrupt` and never folded into `Io`:
//! they mean the repository holds wrong bytes, not that the disk said no.

use crate::id::BlobId;
use std::path::PathBuf;
use std::time::Duration;

/// A problem with one path that a run went on without: a source file that could not be read,
/// a target entry that could not be written, or one left out for a reason (a device node when
/// not root). Backups, pulls, restores and syncs all report these.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PathError {
    pub path: PathBuf,
    pub message: String,
}

/// What a `NotFound` error looked for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Missing {
    /// No repository at this location (no config object).
    Repository { location: String },
    /// An object of a store, by name (a pack, an index file, a record).
    Object { name: String },
    /// A blob no index file lists.
    Blob(BlobId),
    /// A checkpoint matching what was asked: an id prefix or a filter's description (empty:
    /// any checkpoint at all).
    Checkpoint { asked: String },
    /// A path inside a checkpoint, or a component of it that is not a directory.
    PathInCheckpoint { path: String },
    /// A key of the repository matching an id prefix.
    Key { asked: String },
    /// A local path (a mount point, a cache file).
    LocalPath(PathBuf),
    /// What a server was asked for and does not have (the request, as described).
    OnServer { asked: String },
}

/// What kept a run from its lock, in a `Locked` error.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LockConflict {
    /// Another run's lock: its object's name and what the run wrote into it.
    HeldBy {
        lock: String,
        host: String,
        pid: u32,
        purpose: String,
        exclusive: bool,
        /// When the lock was taken or last refreshed (RFC 3339).
        since: String,
    },
    /// A lock that could not be read stands in the way of an exclusive one.
    Unreadable { lock: String },
    /// Locks kept appearing and vanishing while they were read.
    KeptChanging,
    /// This run's own lock was last written this long ago and may look stale to others, so
    /// the run stopped before committing anything.
    OwnLockStale { age: Duration },
}

/// The classes of failure a caller can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    Io,
    Corrupt,
    Crypto,
    NotFound,
    InvalidInput,
    Locked,
    /// The run was stopped by a signal (SIGINT, SIGTERM).
    Interrupted,
}

/// Everything the cairn library can fail with. New kinds of failure may be added: match on
/// `kind()` to act on a class.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Shows its cause in its own text, and so does not also report it as `source()`: a
    /// chain printed whole would say it twice.
    #[error("{context}: {cause}")]
    Io {
        context: String,
        cause: std::io::Error,
    },
    #[error("corrupt data in {location}: {what}")]
    Corrupt { location: String, what: String },
    #[error("{0}")]
    WrongKey(String),
    #[error("{message}")]
    NotFound { missing: Missing, message: String },
    #[error("{0}")]
    InvalidInput(String),
    #[error("{message}")]
    Locked {
        conflict: Box<LockConflict>,
        message: String,
    },
    /// A signal asked the run to stop; what it wrote so far is kept.
    #[error("interrupted")]
    Interrupted,
    /// A server could not be reached or answered with an error.
    #[error("{0}")]
    Network(String),
    /// A store did not answer this time (a 5xx, throttling, a timeout, a reset connection):
    /// the same request may succeed later. `repo::layers::Retrying` tries it again; what
    /// reaches the user once the tries are spent is a `Network` error.
    #[error("{0}")]
    Unavailable(String),
    #[error("local index cache {path}: {message}")]
    Cache { path: PathBuf, message: String },
    /// A repository's config contradicts what vouches for it: the settings sealed under its
    /// key, its keys, the secret given, or what this machine remembers of it.
    #[error("refusing repository {repository}: {what} (possible tampering with its config)")]
    Tampered { repository: String, what: String },
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Io { cause, .. } if cause.kind() == std::io::ErrorKind::NotFound => {
                ErrorKind::NotFound
            }
            Error::Io { .. } | Error::Cache { .. } | Error::Network(_) | Error::Unavailable(_) => {
                ErrorKind::Io
            }
            Error::Corrupt { .. } | Error::Tampered { .. } => ErrorKind::Corrupt,
            Error::WrongKey(_) => ErrorKind::Crypto,
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::InvalidInput(_) => ErrorKind::InvalidInput,
            Error::Locked { .. } => ErrorKind::Locked,
            Error::Interrupted => ErrorKind::Interrupted,
        }
    }

    /// An I/O error with what was being done to what.
    pub fn io(context: impl Into<String>, cause: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            cause,
        }
    }

    /// The kind of the operating system's error, when this is one.
    pub fn io_kind(&self) -> Option<std::io::ErrorKind> {
        match self {
            Error::Io { cause, .. } => Some(cause.kind()),
            _ => None,
        }
    }

    /// The same error again, for another place it concerns (a blob several files hold):
    /// `std::io::Error` cannot be cloned, so an I/O cause is made anew, same code and text.
    pub fn duplicate(&self) -> Self {
        match self {
            Error::Io { context, cause } => Error::Io {
                context: context.clone(),
                cause: match cause.raw_os_error() {
                    Some(code) => std::io::Error::from_raw_os_error(code),
                    None => std::io::Error::new(cause.kind(), cause.to_string()),
                },
            },
            Error::Corrupt { location, what } => Error::corrupt(location.clone(), what.clone()),
            Error::WrongKey(message) => Error::WrongKey(message.clone()),
            Error::NotFound { missing, message } => Error::NotFound {
                missing: missing.clone(),
                message: message.clone(),
            },
            Error::InvalidInput(message) => Error::InvalidInput(message.clone()),
            Error::Locked { conflict, message } => Error::Locked {
                conflict: conflict.clone(),
                message: message.clone(),
            },
            Error::Interrupted => Error::Interrupted,
            Error::Network(message) => Error::Network(message.clone()),
            Error::Unavailable(message) => Error::Unavailable(message.clone()),
            Error::Cache { path, message } => Error::Cache {
                path: path.clone(),
                message: message.clone(),
            },
            Error::Tampered { repository, what } => Error::Tampered {
                repository: repository.clone(),
                what: what.clone(),
            },
        }
    }

    /// `missing` was not found; `message` says so to a person.
    pub fn not_found(missing: Missing, message: impl Into<String>) -> Self {
        Error::NotFound {
            missing,
            message: message.into(),
        }
    }

    /// What was not found, when this is a `NotFound` error.
    pub fn missing(&self) -> Option<&Missing> {
        match self {
            Error::NotFound { missing, .. } => Some(missing),
            _ => None,
        }
    }

    /// What kept the run from its lock, when this is a `Locked` error.
    pub fn lock_conflict(&self) -> Option<&LockConflict> {
        match self {
            Error::Locked { conflict, .. } => Some(conflict),
            _ => None,
        }
    }

    /// Wrong bytes found at `location` (a pack, blob or file name).
    pub fn corrupt(location: impl Into<String>, what: impl Into<String>) -> Self {
        Error::Corrupt {
            location: location.into(),
            what: what.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds "what was being done" to `std::io::Result`s.
pub trait IoContext<T> {
    fn context_io(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn context_io(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::io(context(), source))
    }
}
