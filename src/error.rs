//! The library's error type. Every error carries the path, object or id it concerns, and
//! `kind()` sorts it into the few classes callers act on. Integrity failures (a MAC or hash
//! that does not match) are `Corrupt` and never folded into `Io`: they mean the repository
//! holds wrong bytes, not that the disk said no.

use std::path::PathBuf;

/// A problem with one path that a run went on without: a source file that could not be read,
/// a target entry that could not be written, or one left out for a reason (a device node when
/// not root). Backups, pulls, restores and syncs all report these.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PathError {
    pub path: PathBuf,
    pub message: String,
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
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    InvalidInput(String),
    #[error("{0}")]
    Locked(String),
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
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::InvalidInput(_) => ErrorKind::InvalidInput,
            Error::Locked(_) => ErrorKind::Locked,
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
            Error::NotFound(message) => Error::NotFound(message.clone()),
            Error::InvalidInput(message) => Error::InvalidInput(message.clone()),
            Error::Locked(message) => Error::Locked(message.clone()),
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
