//! Opening a path below a root directory without ever leaving it: the kernel resolves it
//! beneath the root with no symlink on the way (`openat2`), and what needs a path afterwards
//! (listing, readlink, xattrs) reaches the open descriptor through `/proc`, so a path is
//! never resolved twice. What `cairn serve --source` reads goes through here.

use crate::error::{Error, Result};
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};

/// `rel` as messages name it.
pub(crate) fn shown(rel: &[u8]) -> String {
    format!("path {:?}", String::from_utf8_lossy(rel))
}

/// Opens `rel` (components joined by `/`, empty for `root` itself) below `root` with `flags`.
/// Every component must be a valid name, and the kernel resolves the path beneath `root`
/// with no symlink anywhere on the way (`openat2` with `RESOLVE_BENEATH |
/// RESOLVE_NO_SYMLINKS`), so a directory swapped for a symlink meanwhile cannot lead
/// outside `root`.
pub(crate) fn open_beneath(root: &Path, rel: &[u8], flags: i32) -> Result<fs::File> {
    let valid = rel.is_empty() || rel.split(|&b| b == b'/').all(crate::tree::is_valid_name);
    if !valid {
        return Err(Error::InvalidInput(format!(
            "{} is not below {}",
            shown(rel),
            root.display()
        )));
    }
    let root_dir =
        fs::File::open(root).map_err(|e| Error::io(format!("opening {}", root.display()), e))?;
    let path = std::ffi::CString::new(if rel.is_empty() { &b"."[..] } else { rel })
        .map_err(|_| Error::InvalidInput(format!("{} holds a NUL byte", shown(rel))))?;
    /// The kernel's `struct open_how` (three u64s; libc's is not constructible).
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS,
    };
    // SAFETY: the path is NUL-terminated, `how` lives across the call and its size is given.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root_dir.as_raw_fd(),
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            // A symlink on the way (ELOOP, EXDEV), or where a directory or file was asked for.
            Some(libc::ELOOP | libc::EXDEV | libc::ENOTDIR) => Error::InvalidInput(format!(
                "{} is not a plain path below {} (a symlink or not a directory on the way): refused",
                shown(rel),
                root.display()
            )),
            _ => Error::io(format!("opening {}", shown(rel)), e),
        });
    }
    // SAFETY: openat2 returned a new descriptor that nothing else owns.
    Ok(unsafe { fs::File::from_raw_fd(fd as i32) })
}

/// A path that reaches into the open directory `dir` through /proc, for the calls that need a
/// path (listing, readlink, xattrs) without resolving the source path again.
pub(crate) fn fd_path(dir: &fs::File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()))
}
