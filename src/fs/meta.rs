//! File metadata from the filesystem into tree entries: what `lstat`, `readlink` and the
//! xattr calls report becomes an `Entry`, the one way a backup, a served source and a sync
//! from a directory list a live file. Nothing here follows symlinks. Writing metadata back
//! belongs to `target`, which sets it through descriptors.

use crate::timestamp;
use crate::tree::{Entry, Kind, Listed, ListedKind, Xattr};
use std::collections::HashMap;
use std::ffi::CStr;
use std::fs::{self, Metadata};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::sync::Mutex;

/// Builds the entry for `name` from its `lstat` metadata, with the given kind.
pub(crate) fn entry_from_metadata<K: Kind>(
    name: Vec<u8>,
    metadata: &Metadata,
    kind: K,
    xattrs: Vec<Xattr>,
) -> Entry<K> {
    let is_file = kind.shape() == crate::tree::Shape::File;
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

/// The entry for one directory entry of a live source; `None` for sockets.
pub(crate) fn local_entry(child: &fs::DirEntry) -> std::io::Result<Option<Listed>> {
    let metadata = child.metadata()?;
    listed_entry(
        &child.path(),
        child.file_name().as_bytes().to_vec(),
        &metadata,
    )
}

/// The entry of `path` (not following a symlink), named `name`; `None` for a socket.
pub(crate) fn path_entry(path: &Path, name: Vec<u8>) -> std::io::Result<Option<Listed>> {
    listed_entry(path, name, &fs::symlink_metadata(path)?)
}

/// The entry of a live file, named `name`, from its `lstat` metadata, as a listing gives it:
/// a symlink's target, a device's number and the xattrs are read; a directory and a file are
/// reached by path. `None` for a socket or an unknown type, which no tree holds.
pub(crate) fn listed_entry(
    path: &Path,
    name: Vec<u8>,
    metadata: &Metadata,
) -> std::io::Result<Option<Listed>> {
    let file_type = metadata.file_type();
    let kind = if file_type.is_dir() {
        ListedKind::Dir
    } else if file_type.is_file() {
        ListedKind::File
    } else if file_type.is_symlink() {
        ListedKind::Symlink(fs::read_link(path)?.as_os_str().as_bytes().to_vec())
    } else if file_type.is_fifo() {
        ListedKind::Fifo
    } else if file_type.is_char_device() {
        ListedKind::CharDevice(metadata.rdev())
    } else if file_type.is_block_device() {
        ListedKind::BlockDevice(metadata.rdev())
    } else {
        return Ok(None);
    };
    let xattrs = read_xattrs(path).unwrap_or_else(|e| {
        tracing::warn!("{}: cannot read xattrs: {e}", path.display());
        Vec::new()
    });
    Ok(Some(entry_from_metadata(name, metadata, kind, xattrs)))
}

/// Modification time in nanoseconds since the epoch.
pub(crate) fn mtime_ns(metadata: &Metadata) -> i128 {
    timestamp::from_parts(metadata.mtime(), metadata.mtime_nsec())
}

/// Status-change time in nanoseconds since the epoch.
pub(crate) fn ctime_ns(metadata: &Metadata) -> i128 {
    timestamp::from_parts(metadata.ctime(), metadata.ctime_nsec())
}

/// The extended attributes of `path` (not following symlinks), sorted by name. Filesystems
/// without xattr support give none.
pub(crate) fn read_xattrs(path: &Path) -> std::io::Result<Vec<Xattr>> {
    xattrs_of(path, false)
}

/// `read_xattrs` of what `path` leads to: a descriptor's `/proc/self/fd` link, which reaches
/// the inode it holds, a symlink's own included.
pub(crate) fn read_xattrs_through(path: &Path) -> std::io::Result<Vec<Xattr>> {
    xattrs_of(path, true)
}

fn xattrs_of(path: &Path, deref: bool) -> std::io::Result<Vec<Xattr>> {
    let names = if deref {
        xattr::list_deref(path)
    } else {
        xattr::list(path)
    };
    let names = match names {
        Ok(names) => names,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for name in names {
        let value = if deref {
            xattr::get_deref(path, &name)?
        } else {
            xattr::get(path, &name)?
        };
        if let Some(value) = value {
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

/// Whether xattr `name` is a POSIX ACL (`system.posix_acl_access`, `_default`).
pub(crate) fn is_acl_xattr(name: &[u8]) -> bool {
    name.starts_with(b"system.posix_acl_")
}

/// Whether cairn sets, compares and removes xattr `name` when it writes a tree (restore,
/// sync into a directory), as `rsync -aAX` does: `user.*` and the POSIX ACLs for anyone;
/// run `as_root`, every other namespace too except the rest of `system.*` (the kernel's)
/// and `security.selinux`, a label the target system's policy assigns. Backups record every
/// xattr; the ones outside are neither copied nor touched in the target.
pub(crate) fn manages_xattr(name: &[u8], as_root: bool) -> bool {
    if name.starts_with(b"user.") || is_acl_xattr(name) {
        return true;
    }
    as_root && !name.starts_with(b"system.") && name != b"security.selinux"
}

/// Whether this process may set owners and create device nodes.
pub(crate) fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn managed_xattrs_are_rsyncs_but_for_selinux_labels() {
        for (name, as_user, as_root) in [
            (&b"user.a"[..], true, true),
            (b"system.posix_acl_access", true, true),
            (b"trusted.x", false, true),
            (b"security.capability", false, true),
            (b"security.selinux", false, false),
            (b"system.nfs4_acl", false, false),
        ] {
            assert_eq!(manages_xattr(name, false), as_user, "{name:?}");
            assert_eq!(manages_xattr(name, true), as_root, "{name:?}");
        }
    }
}
