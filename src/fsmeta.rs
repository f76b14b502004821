//! File metadata between the filesystem and tree entries: reading what `lstat`, `readlink`
//! and the xattr calls report into an `Entry`, and applying an entry's owner, mode, xattrs
//! and timestamps back onto a restored path. Nothing here follows symlinks.

use crate::tree::{Entry, EntryKind, Xattr};
use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;

/// Builds the entry for `name` from its `lstat` metadata, with the given kind.
pub fn entry_from_metadata(
    name: Vec<u8>,
    metadata: &Metadata,
    kind: EntryKind,
    xattrs: Vec<Xattr>,
) -> Entry {
    let is_file = matches!(kind, EntryKind::File(_));
    Entry {
        name,
        kind,
        mode: metadata.mode() & 0o7777,
        uid: metadata.uid(),
        gid: metadata.gid(),
        user: user_name(metadata.uid()),
        group: group_name(metadata.gid()),
        mtime_ns: mtime_ns(metadata),
        ctime_ns: ctime_ns(metadata),
        size: if is_file { metadata.len() } else { 0 },
        device: metadata.dev(),
        inode: metadata.ino(),
        links: metadata.nlink(),
        xattrs,
    }
}

/// Modification time in nanoseconds since the epoch.
pub fn mtime_ns(metadata: &Metadata) -> i64 {
    metadata.mtime() * 1_000_000_000 + metadata.mtime_nsec()
}

/// Status-change time in nanoseconds since the epoch.
pub fn ctime_ns(metadata: &Metadata) -> i64 {
    metadata.ctime() * 1_000_000_000 + metadata.ctime_nsec()
}

/// The extended attributes of `path` (not following symlinks). Filesystems without xattr
/// support give none.
pub fn read_xattrs(path: &Path) -> std::io::Result<Vec<Xattr>> {
    let names = match xattr::list(path) {
        Ok(names) => names,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for name in names {
        if let Some(value) = xattr::get(path, &name)? {
            out.push(Xattr {
                name: name.as_bytes().to_vec(),
                value,
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn cached_name(
    cache: &Mutex<HashMap<u32, Option<String>>>,
    id: u32,
    lookup: impl Fn(u32) -> Option<String>,
) -> Option<String> {
    let mut cache = cache.lock().expect("name cache lock is never poisoned");
    cache.entry(id).or_insert_with(|| lookup(id)).clone()
}

fn user_name(uid: u32) -> Option<String> {
    static NAMES: std::sync::OnceLock<Mutex<HashMap<u32, Option<String>>>> =
        std::sync::OnceLock::new();
    cached_name(NAMES.get_or_init(Default::default), uid, |uid| {
        let mut buf = vec![0u8; 4096];
        // SAFETY: passwd and buf outlive the call; getpwuid_r writes only inside them.
        unsafe {
            let mut passwd: libc::passwd = std::mem::zeroed();
            let mut result = std::ptr::null_mut();
            libc::getpwuid_r(
                uid,
                &mut passwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            );
            (!result.is_null()).then(|| {
                CStr::from_ptr(passwd.pw_name)
                    .to_string_lossy()
                    .into_owned()
            })
        }
    })
}

fn group_name(gid: u32) -> Option<String> {
    static NAMES: std::sync::OnceLock<Mutex<HashMap<u32, Option<String>>>> =
        std::sync::OnceLock::new();
    cached_name(NAMES.get_or_init(Default::default), gid, |gid| {
        let mut buf = vec![0u8; 4096];
        // SAFETY: group and buf outlive the call; getgrgid_r writes only inside them.
        unsafe {
            let mut group: libc::group = std::mem::zeroed();
            let mut result = std::ptr::null_mut();
            libc::getgrgid_r(
                gid,
                &mut group,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            );
            (!result.is_null())
                .then(|| CStr::from_ptr(group.gr_name).to_string_lossy().into_owned())
        }
    })
}

/// Whether this process may set owners and create device nodes.
pub fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn c_path(path: &Path) -> std::io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path contains NUL"))
}

fn check(rc: libc::c_int) -> std::io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn timespec(ns: i64) -> libc::timespec {
    libc::timespec {
        tv_sec: ns.div_euclid(1_000_000_000),
        tv_nsec: ns.rem_euclid(1_000_000_000),
    }
}

/// Applies owner (when root), mode, xattrs and timestamps of `entry` to `path`, without
/// following a symlink at `path`.
pub fn apply_metadata(path: &Path, entry: &Entry) -> std::io::Result<()> {
    let c = c_path(path)?;
    let is_symlink = matches!(entry.kind, EntryKind::Symlink(_));
    if running_as_root() {
        // SAFETY: c is a valid NUL-terminated path.
        check(unsafe { libc::lchown(c.as_ptr(), entry.uid, entry.gid) })?;
    }
    if !is_symlink {
        // SAFETY: c is a valid NUL-terminated path; AT_FDCWD makes it relative to the cwd.
        check(unsafe {
            libc::fchmodat(libc::AT_FDCWD, c.as_ptr(), entry.mode as libc::mode_t, 0)
        })?;
    }
    for attr in &entry.xattrs {
        let name = std::ffi::OsStr::from_bytes(&attr.name);
        if let Err(e) = xattr::set(path, name, &attr.value) {
            // Restoring onto a filesystem without xattrs, or a privileged namespace as a
            // normal user, loses only the attribute, not the file.
            tracing::warn!(
                "{}: cannot set xattr {}: {e}",
                path.display(),
                name.to_string_lossy()
            );
        }
    }
    // Access times are not kept (reading a directory would change its tree id); a restored
    // entry gets its mtime as atime.
    let times = [timespec(entry.mtime_ns), timespec(entry.mtime_ns)];
    // SAFETY: c is a valid path and times points to two timespecs.
    check(unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

/// Creates a FIFO or device node at `path` with mode 0600 (metadata is applied afterwards).
pub fn make_node(path: &Path, kind: &EntryKind) -> std::io::Result<()> {
    let c = c_path(path)?;
    let (type_bits, rdev) = match kind {
        EntryKind::Fifo => (libc::S_IFIFO, 0),
        EntryKind::CharDevice(rdev) => (libc::S_IFCHR, *rdev),
        EntryKind::BlockDevice(rdev) => (libc::S_IFBLK, *rdev),
        _ => unreachable!("make_node is called for FIFOs and devices only"),
    };
    // SAFETY: c is a valid NUL-terminated path.
    check(unsafe { libc::mknod(c.as_ptr(), type_bits | 0o600, rdev as libc::dev_t) })
}
