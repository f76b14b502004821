//! A live local directory as a source: entries listed with `fs::meta`, files copied from the
//! source, or taken as they are when the old file holds the same bytes.

use super::{FileWrite, TreeSource, check_size, write_at, write_error};
use crate::error::{Error, IoContext, PathError, Result};
use crate::fs::meta::{local_entry, path_entry};
use crate::fs::throttle::RateLimiter;
use crate::progress::Progress;
use crate::tree::{Listed, ListedKind};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;

/// A live directory on this machine, read at most as fast as its limit allows.
#[derive(Default)]
pub struct DirectorySource {
    limiter: Option<RateLimiter>,
}

impl DirectorySource {
    /// A source whose files are read at most `bytes_per_second` (`None`: unlimited), the
    /// cap shared by every transfer.
    pub fn limited(bytes_per_second: Option<u64>) -> Self {
        DirectorySource {
            limiter: bytes_per_second.map(RateLimiter::new),
        }
    }
}

impl TreeSource for DirectorySource {
    type Dir = PathBuf;
    type Kind = ListedKind;

    fn count(&self, root: &PathBuf, progress: &Progress, stop: &AtomicBool) {
        crate::backup::count_tree(root, progress, 2, stop);
    }

    fn list(
        &self,
        dir: &PathBuf,
        errors: &Mutex<Vec<PathError>>,
    ) -> Result<Vec<(Listed, Option<PathBuf>)>> {
        let report = |path: &Path, message: String| {
            errors.lock().expect("not poisoned").push(PathError {
                path: path.to_owned(),
                message,
            })
        };
        let mut children: Vec<_> = fs::read_dir(dir)
            .context_io(|| format!("reading source directory {}", dir.display()))?
            .filter_map(|child| match child {
                Ok(child) => Some(child),
                Err(e) => {
                    report(dir, e.to_string());
                    None
                }
            })
            .collect();
        children.sort_by_key(|child| child.file_name());
        let mut entries = Vec::with_capacity(children.len());
        for child in children {
            let path = child.path();
            match local_entry(&child) {
                Ok(Some(entry)) => {
                    let subdir = entry.is_dir().then(|| path.clone());
                    entries.push((entry, subdir));
                }
                Ok(None) => {}
                Err(e) => report(&path, e.to_string()),
            }
        }
        Ok(entries)
    }

    fn write_file(
        &self,
        dir: &PathBuf,
        entry: &Listed,
        old: Option<&File>,
        out: &File,
    ) -> Result<FileWrite> {
        let path = dir.join(OsStr::from_bytes(&entry.name));
        let context = || format!("reading {}", path.display());
        // Not waiting on a FIFO, not taking a terminal, and only the file that was listed:
        // the source may be changed by someone else while the sync runs.
        let source = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(&path)
            .context_io(context)?;
        let metadata = source.metadata().context_io(context)?;
        if !metadata.is_file() || (metadata.dev(), metadata.ino()) != (entry.device, entry.inode) {
            return Err(Error::InvalidInput(format!(
                "{} changed while it was synced (not the file listed); left for the next run",
                path.display()
            )));
        }
        if let Some(old) = old
            && old.metadata().is_ok_and(|m| m.len() == entry.size)
            && same_bytes(&source, old).context_io(context)?
        {
            return Ok(FileWrite::Same);
        }
        let copied = copy_file(&source, &path, out, entry.size, self.limiter.as_ref())?;
        check_size(copied, entry)?;
        Ok(FileWrite::Written {
            fetched: copied,
            reused: 0,
        })
    }
}

/// The entry named `name` in local directory `dir`, for a `OneEntry` source; a socket is
/// refused.
pub fn local_one_entry(dir: &Path, name: &OsStr) -> Result<Listed> {
    let path = dir.join(name);
    path_entry(&path, name.as_bytes().to_vec())
        .context_io(|| format!("reading {}", path.display()))?
        .ok_or_else(|| {
            Error::InvalidInput(format!(
                "{} is a socket, which cairn does not sync",
                path.display()
            ))
        })
}

/// Copies `from` into the new file `out`, leaving holes where blocks are zeros, and reads no
/// more than one byte past `size` (the size it was listed with): a file that grew, or a
/// device swapped in, is cut off there. Returns the bytes read; `from_path` names `from` in
/// a failure to read it.
pub(crate) fn copy_file(
    from: &File,
    from_path: &Path,
    out: &File,
    size: u64,
    limiter: Option<&RateLimiter>,
) -> Result<u64> {
    let mut buffer = vec![0; 1 << 20];
    let mut offset = 0u64;
    while offset <= size {
        let want = buffer.len().min((size + 1 - offset) as usize);
        let read = from
            .read_at(&mut buffer[..want], offset)
            .context_io(|| format!("reading {}", from_path.display()))?;
        if read == 0 {
            break;
        }
        if let Some(limiter) = limiter {
            limiter.take(read as u64);
        }
        write_at(out, offset, &buffer[..read])?;
        offset += read as u64;
    }
    out.set_len(offset).map_err(write_error)?;
    Ok(offset)
}

/// Whether two open files hold the same bytes.
fn same_bytes(a: &File, b: &File) -> std::io::Result<bool> {
    let (mut a, mut b) = (std::io::BufReader::new(a), std::io::BufReader::new(b));
    let (mut x, mut y) = (vec![0; 1 << 16], vec![0; 1 << 16]);
    loop {
        let n = read_full(&mut a, &mut x)?;
        let m = read_full(&mut b, &mut y)?;
        if n != m || x[..n] != y[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

/// Fills `buffer` as far as the reader goes; returns the bytes read.
fn read_full(reader: &mut impl Read, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}
