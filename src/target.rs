//! The one way cairn writes a tree into a directory: restore and sync into a directory both go
//! through [`TargetDir`], so the rule below holds for every writer at once.
//!
//! The target itself is opened once, by the path the user gave. Everything beneath it is
//! reached through directory descriptors: each directory is opened relative to its parent's
//! descriptor with `O_NOFOLLOW | O_DIRECTORY`, every entry is created, renamed, linked and
//! removed with `*at()` calls on the descriptor of the directory it lives in, and metadata is
//! set on a descriptor (`fchmod`, `fchown`, `fsetxattr`, `futimens`) or, for symlinks and
//! special files, beside one with `AT_SYMLINK_NOFOLLOW` (see `fs::meta`). No path beneath the
//! target is ever resolved twice, so a directory swapped for a symlink while a run goes on
//! makes the next step fail (`ELOOP`, `ENOTDIR`) instead of sending writes outside the target
//! (invariant 4). Directories are created private (0700) and get their real mode at the end,
//! so nobody else can put anything into them while they are being filled.
//!
//! Paths are kept only to name things in messages.

use crate::fs::meta::{manages_xattr, read_xattrs_through, running_as_root};
use crate::tree::{Entry, Kind, Shape, Xattr};
use std::ffi::{CStr, CString, OsStr};
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

/// The longest path beneath a target that is written, in bytes: twice `PATH_MAX`, deeper than
/// any tool but cairn could reach. A walk keeps each level's path, so this bounds its memory
/// (a tree made deep on purpose would otherwise cost the square of its depth).
pub(crate) const MAX_RELATIVE_PATH_BYTES: usize = 8 << 10;

/// Refuses a path beneath the target longer than `MAX_RELATIVE_PATH_BYTES`.
pub(crate) fn check_path_length(relative: &Path) -> io::Result<()> {
    if relative.as_os_str().len() <= MAX_RELATIVE_PATH_BYTES {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "a path of {} bytes beneath the target, longer than the {MAX_RELATIVE_PATH_BYTES} \
             cairn writes; not written",
            relative.as_os_str().len()
        ),
    ))
}

/// An open directory of a target tree.
#[derive(Debug)]
pub(crate) struct TargetDir {
    fd: OwnedFd,
    /// Where it is, for messages only.
    path: PathBuf,
}

/// A name as the `*at()` calls take it.
pub(crate) fn c_name(name: &[u8]) -> io::Result<CString> {
    CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a name contains NUL"))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Takes ownership of a descriptor an `open*` call returned (or its error).
fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by the kernel and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

const DIR_FLAGS: libc::c_int =
    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;

/// Raises this process's soft limit on open files to its hard limit, once: a deep tree keeps
/// one descriptor open per level while it is written.
fn raise_open_file_limit() {
    static RAISED: std::sync::Once = std::sync::Once::new();
    RAISED.call_once(|| {
        // SAFETY: an all-zero rlimit is valid; getrlimit and setrlimit only read and write it.
        unsafe {
            let mut limit: libc::rlimit = std::mem::zeroed();
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0
                && limit.rlim_cur < limit.rlim_max
            {
                limit.rlim_cur = limit.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            }
        }
    });
}

impl TargetDir {
    /// Opens the directory at `path`, the target the user named (symlinks in the directories
    /// above it are followed, as they are by rsync and cp; the target itself must be a
    /// directory, not a symlink, as the callers checked); with `create`, creates it and its
    /// missing parents first.
    pub(crate) fn open(path: &Path, create: bool) -> io::Result<TargetDir> {
        raise_open_file_limit();
        if create {
            std::fs::create_dir_all(path)?;
        }
        let c = c_name(path.as_os_str().as_bytes())?;
        // SAFETY: c is a valid NUL-terminated path.
        let fd = owned(unsafe { libc::open(c.as_ptr(), DIR_FLAGS) })?;
        Ok(TargetDir {
            fd,
            path: path.to_owned(),
        })
    }

    /// Where this directory is, for messages.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Where entry `name` of this directory is, for messages.
    pub(crate) fn child_path(&self, name: &[u8]) -> PathBuf {
        self.path.join(OsStr::from_bytes(name))
    }

    /// The directory's descriptor, for setting its metadata.
    pub(crate) fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The metadata of entry `name` (a symlink is not followed); `None` when there is none.
    pub(crate) fn metadata(&self, name: &[u8]) -> io::Result<Option<std::fs::Metadata>> {
        let c = c_name(name)?;
        // SAFETY: the descriptor is open and c is a valid NUL-terminated name.
        let fd = unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        match owned(fd) {
            Ok(fd) => File::from(fd).metadata().map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Opens subdirectory `name`; fails when it is a symlink or not a directory.
    pub(crate) fn open_dir(&self, name: &[u8]) -> io::Result<TargetDir> {
        let mut dir = self.open_unnamed_dir(name)?;
        dir.path = self.child_path(name);
        Ok(dir)
    }

    /// `open_dir` without a path for messages.
    fn open_unnamed_dir(&self, name: &[u8]) -> io::Result<TargetDir> {
        let c = c_name(name)?;
        // SAFETY: the descriptor is open and c is a valid NUL-terminated name.
        let fd = owned(unsafe { libc::openat(self.fd.as_raw_fd(), c.as_ptr(), DIR_FLAGS) })?;
        Ok(TargetDir {
            fd,
            path: PathBuf::new(),
        })
    }

    /// Opens the directory at `relative` beneath this one, one name at a time, never
    /// following a symlink; an empty path opens this directory again.
    pub(crate) fn open_beneath(&self, relative: &Path) -> io::Result<TargetDir> {
        // SAFETY: the descriptor is open and "." is a valid NUL-terminated name.
        let fd = owned(unsafe { libc::openat(self.fd.as_raw_fd(), c".".as_ptr(), DIR_FLAGS) })?;
        let mut dir = TargetDir {
            fd,
            path: self.path.clone(),
        };
        for component in relative.components() {
            let Component::Normal(name) = component else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{} is not a plain relative path", relative.display()),
                ));
            };
            dir = dir.open_dir(name.as_bytes())?;
        }
        Ok(dir)
    }

    /// The directory holding `relative` (a path beneath this one), opened as `open_beneath`
    /// does, and the last name of `relative`.
    pub(crate) fn open_parent<'a>(&self, relative: &'a Path) -> io::Result<(TargetDir, &'a [u8])> {
        let name = relative.file_name().map_or(&[][..], |n| n.as_bytes());
        let parent = self.open_beneath(relative.parent().unwrap_or(Path::new("")))?;
        Ok((parent, name))
    }

    /// Creates subdirectory `name`, private until its metadata is applied.
    pub(crate) fn make_dir(&self, name: &[u8]) -> io::Result<()> {
        let c = c_name(name)?;
        // SAFETY: the descriptor is open and c is a valid NUL-terminated name.
        check(unsafe { libc::mkdirat(self.fd.as_raw_fd(), c.as_ptr(), 0o700) })
    }

    /// Opens subdirectory `name`, first replacing whatever else is there by a new directory.
    pub(crate) fn ensure_dir(&self, name: &[u8]) -> io::Result<TargetDir> {
        match self.metadata(name)? {
            Some(m) if m.is_dir() => {}
            Some(_) => {
                self.remove(name)?;
                self.make_dir(name)?;
            }
            None => self.make_dir(name)?,
        }
        self.open_dir(name)
    }

    /// Creates regular file `name`, which must not exist, open for reading and writing.
    pub(crate) fn create_file(&self, name: &[u8]) -> io::Result<File> {
        let c = c_name(name)?;
        let flags =
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: the descriptor is open and c is a valid NUL-terminated name.
        let fd = owned(unsafe { libc::openat(self.fd.as_raw_fd(), c.as_ptr(), flags, 0o600) })?;
        Ok(File::from(fd))
    }

    /// Opens regular file `name` for reading; fails when it is anything else (a FIFO is not
    /// waited on, a symlink not followed).
    pub(crate) fn open_file(&self, name: &[u8]) -> io::Result<File> {
        let c = c_name(name)?;
        let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
        // SAFETY: the descriptor is open and c is a valid NUL-terminated name.
        let file = File::from(owned(unsafe {
            libc::openat(self.fd.as_raw_fd(), c.as_ptr(), flags)
        })?);
        if !file.metadata()?.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a regular file", self.child_path(name).display()),
            ));
        }
        Ok(file)
    }

    /// Creates symlink `name` pointing at `target`.
    pub(crate) fn symlink(&self, target: &[u8], name: &[u8]) -> io::Result<()> {
        let (target, c) = (c_name(target)?, c_name(name)?);
        // SAFETY: both are valid NUL-terminated strings and the descriptor is open.
        check(unsafe { libc::symlinkat(target.as_ptr(), self.fd.as_raw_fd(), c.as_ptr()) })
    }

    /// Creates FIFO or device node `name`, mode 0600 until its metadata is applied.
    pub(crate) fn make_node(&self, name: &[u8], kind: Shape<'_>) -> io::Result<()> {
        let (type_bits, rdev) = match kind {
            Shape::Fifo => (libc::S_IFIFO, 0),
            Shape::CharDevice(rdev) => (libc::S_IFCHR, rdev),
            Shape::BlockDevice(rdev) => (libc::S_IFBLK, rdev),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "only FIFOs and device nodes are made by make_node",
                ));
            }
        };
        let c = c_name(name)?;
        // SAFETY: the descriptor is open and c is a valid NUL-terminated name.
        check(unsafe {
            libc::mknodat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                type_bits | 0o600,
                rdev as libc::dev_t,
            )
        })
    }

    /// Makes `name` a hard link of `from_name` in directory `from` (a symlink is linked as
    /// itself, never followed).
    pub(crate) fn hard_link(
        &self,
        from: &TargetDir,
        from_name: &[u8],
        name: &[u8],
    ) -> io::Result<()> {
        let (from_c, c) = (c_name(from_name)?, c_name(name)?);
        // SAFETY: both descriptors are open and both names valid NUL-terminated strings.
        check(unsafe {
            libc::linkat(
                from.fd.as_raw_fd(),
                from_c.as_ptr(),
                self.fd.as_raw_fd(),
                c.as_ptr(),
                0,
            )
        })
    }

    /// Renames entry `from` of this directory to `to`, replacing what `to` was.
    pub(crate) fn rename(&self, from: &[u8], to: &[u8]) -> io::Result<()> {
        let (from_c, to_c) = (c_name(from)?, c_name(to)?);
        let fd = self.fd.as_raw_fd();
        // SAFETY: the descriptor is open and both names are valid NUL-terminated strings.
        check(unsafe { libc::renameat(fd, from_c.as_ptr(), fd, to_c.as_ptr()) })
    }

    /// The target of symlink `name`.
    pub(crate) fn read_link(&self, name: &[u8]) -> io::Result<Vec<u8>> {
        let c = c_name(name)?;
        let mut buffer = vec![0u8; 256];
        loop {
            // SAFETY: the buffer is valid for its whole length; readlinkat writes within it.
            let length = unsafe {
                libc::readlinkat(
                    self.fd.as_raw_fd(),
                    c.as_ptr(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                )
            };
            if length < 0 {
                return Err(io::Error::last_os_error());
            }
            let length = length as usize;
            if length < buffer.len() {
                buffer.truncate(length);
                return Ok(buffer);
            }
            // Symlink targets are at most PATH_MAX bytes; the buffer grows to hold one.
            if buffer.len() >= libc::PATH_MAX as usize * 2 {
                return Err(io::Error::other("symlink target longer than PATH_MAX"));
            }
            buffer.resize(buffer.len() * 2, 0);
        }
    }

    /// The names in this directory (without `.` and `..`), in no particular order.
    pub(crate) fn names(&self) -> io::Result<Vec<Vec<u8>>> {
        // A descriptor of its own, which closedir closes.
        // SAFETY: the descriptor is open and "." is a valid NUL-terminated name.
        let fd = owned(unsafe { libc::openat(self.fd.as_raw_fd(), c".".as_ptr(), DIR_FLAGS) })?;
        // SAFETY: fd is an open directory descriptor whose ownership passes to the stream.
        let stream = unsafe { libc::fdopendir(std::os::fd::IntoRawFd::into_raw_fd(fd)) };
        if stream.is_null() {
            return Err(io::Error::last_os_error());
        }
        let mut names = Vec::new();
        let result = loop {
            // SAFETY: errno is thread-local; readdir reports an error only through it.
            unsafe { *libc::__errno_location() = 0 };
            // SAFETY: stream is a valid open directory stream.
            let entry = unsafe { libc::readdir64(stream) };
            if entry.is_null() {
                let error = io::Error::last_os_error();
                break if error.raw_os_error() == Some(0) {
                    Ok(())
                } else {
                    Err(error)
                };
            }
            // SAFETY: d_name of a returned entry is a NUL-terminated name inside it.
            let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) }.to_bytes();
            if name != b"." && name != b".." {
                names.push(name.to_vec());
            }
        };
        // SAFETY: stream is valid and closed exactly once.
        unsafe { libc::closedir(stream) };
        result.map(|()| names)
    }

    /// Removes whatever is at `name`: a file, a symlink (never followed) or a whole directory
    /// tree, walked with an explicit stack of descriptors. Nothing there is fine.
    pub(crate) fn remove(&self, name: &[u8]) -> io::Result<()> {
        self.remove_each(name, false, &mut |_, _| true).map(|_| ())
    }

    /// Removes `name` as `remove` does, one entry at a time, deepest first and in name order,
    /// asking `allow` before each (its path below this directory, whether it is a
    /// directory): what `--delete` lists and counts. A directory goes only once everything
    /// in it has; the first refusal stops the walk. With `dry_run` nothing is removed, only
    /// asked. Returns whether all of `name` was (or would be) removed.
    pub(crate) fn remove_each(
        &self,
        name: &[u8],
        dry_run: bool,
        allow: &mut dyn FnMut(&Path, bool) -> bool,
    ) -> io::Result<bool> {
        let Some(metadata) = self.metadata(name)? else {
            return Ok(true);
        };
        let mut path = PathBuf::from(OsStr::from_bytes(name));
        if !metadata.is_dir() {
            if !allow(&path, false) {
                return Ok(false);
            }
            return self.unlink_unless(dry_run, name).map(|()| true);
        }
        // Each level: the open directory, its name in the level above, the names left in it
        // (sorted, taken from the end). The directories opened here carry no path, and the
        // one path kept grows and shrinks with the walk: a tree an attacker made deep must
        // not cost memory that grows with the square of its depth.
        let open = |parent: &TargetDir, name: &[u8]| -> io::Result<(TargetDir, Vec<Vec<u8>>)> {
            let dir = parent.open_unnamed_dir(name)?;
            let mut names = dir.names()?;
            names.sort_unstable_by(|a, b| b.cmp(a));
            Ok((dir, names))
        };
        let (first, names) = open(self, name)?;
        let mut stack = vec![(first, name.to_vec(), names)];
        while let Some((dir, _, names)) = stack.last_mut() {
            let Some(child) = names.pop() else {
                let (_, dir_name, _) = stack.pop().expect("the loop holds a level");
                if !allow(&path, true) {
                    return Ok(false);
                }
                let parent = stack.last().map_or(self, |(parent, _, _)| parent);
                if !dry_run {
                    parent.remove_empty_dir(&dir_name)?;
                }
                path.pop();
                continue;
            };
            path.push(OsStr::from_bytes(&child));
            match dir.metadata(&child)? {
                Some(m) if m.is_dir() => {
                    let (subdir, names) = open(dir, &child)?;
                    stack.push((subdir, child, names));
                }
                Some(_) => {
                    if !allow(&path, false) {
                        return Ok(false);
                    }
                    dir.unlink_unless(dry_run, &child)?;
                    path.pop();
                }
                None => {
                    path.pop();
                }
            }
        }
        Ok(true)
    }

    /// Removes non-directory entry `name`, unless `dry_run`; gone already is fine.
    fn unlink_unless(&self, dry_run: bool, name: &[u8]) -> io::Result<()> {
        if dry_run {
            return Ok(());
        }
        match self.unlink(name) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            result => result,
        }
    }

    /// Removes non-directory entry `name`.
    pub(crate) fn unlink(&self, name: &[u8]) -> io::Result<()> {
        let c = c_name(name)?;
        // SAFETY: the descriptor is open and c is a valid NUL-terminated name.
        check(unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) })
    }

    fn remove_empty_dir(&self, name: &[u8]) -> io::Result<()> {
        let c = c_name(name)?;
        // SAFETY: the descriptor is open and c is a valid NUL-terminated name.
        check(unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), libc::AT_REMOVEDIR) })
    }
}

/// Whether `metadata` is of the kind `kind` names (a device of any number).
pub(crate) fn same_kind(metadata: &Metadata, kind: Shape<'_>) -> bool {
    let file_type = metadata.file_type();
    match kind {
        Shape::File => file_type.is_file(),
        Shape::Dir => file_type.is_dir(),
        Shape::Symlink(_) => file_type.is_symlink(),
        Shape::Fifo => file_type.is_fifo(),
        Shape::CharDevice(_) => file_type.is_char_device(),
        Shape::BlockDevice(_) => file_type.is_block_device(),
    }
}

/// Whether an existing inode with `metadata` may get `entry`'s metadata where it is: the same
/// kind, no more names than the entry has (a hard link planted to a file elsewhere has more),
/// and owned by the entry's owner or by this process, so a chown or chmod never turns
/// someone else's file (a binary, say) into the entry's, setuid bits and all.
pub(crate) fn may_adjust_in_place(metadata: &Metadata, entry: &Entry<impl Kind>) -> bool {
    // SAFETY: geteuid has no preconditions.
    let this_process = unsafe { libc::geteuid() };
    same_kind(metadata, entry.kind.shape())
        && metadata.nlink() <= entry.links.max(1)
        && (metadata.uid() == entry.uid || metadata.uid() == this_process)
}

impl TargetDir {
    /// Entry `name` (`.` for this directory) opened with `O_PATH | O_NOFOLLOW`: its inode,
    /// a symlink's own, held whatever the name comes to hold.
    fn pin(&self, name: &[u8]) -> io::Result<File> {
        let c = c_name(name)?;
        let flags = libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: the descriptor is open and c is a valid NUL-terminated name.
        Ok(File::from(owned(unsafe {
            libc::openat(self.fd.as_raw_fd(), c.as_ptr(), flags)
        })?))
    }

    /// The xattrs of entry `name` (`.` for this directory), sorted by name, read on its
    /// pinned inode (a symlink's own, never followed); none where the filesystem has none.
    pub(crate) fn xattrs(&self, name: &[u8]) -> io::Result<Vec<Xattr>> {
        let pinned = self.pin(name)?;
        // The magic link leads to the pinned inode itself, a symlink included.
        read_xattrs_through(Path::new(&format!("/proc/self/fd/{}", pinned.as_raw_fd())))
    }

    /// Applies owner (when root), mode, xattrs and times of `entry` to entry `name` of this
    /// directory, which is not opened for reading: a symlink or special file just made, or a
    /// file left in place. The inode is pinned with `O_PATH | O_NOFOLLOW` and checked with
    /// `may_adjust_in_place` first; `false` (nothing set) when it fails that check. A symlink
    /// gets its times and xattrs beside its directory's descriptor, never followed.
    pub(crate) fn set_metadata_at(
        &self,
        name: &[u8],
        entry: &Entry<impl Kind>,
    ) -> io::Result<bool> {
        let c = c_name(name)?;
        let pinned = self.pin(name)?;
        if !may_adjust_in_place(&pinned.metadata()?, entry) {
            return Ok(false);
        }
        let fd = pinned.as_raw_fd();
        if running_as_root() {
            let empty = libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW;
            // SAFETY: fd is open; the empty name makes fchownat act on fd itself.
            check(unsafe { libc::fchownat(fd, c"".as_ptr(), entry.uid, entry.gid, empty) })?;
        }
        let times = entry_times(entry);
        if matches!(entry.kind.shape(), Shape::Symlink(_)) {
            // The directory's descriptor as a path, then the name, which lsetxattr does not
            // follow: the same anchoring as the *at() calls.
            let dir = self.fd.as_raw_fd();
            let mut anchored = format!("/proc/self/fd/{dir}/").into_bytes();
            anchored.extend_from_slice(name);
            self.set_xattrs(Path::new(OsStr::from_bytes(&anchored)), name, entry, false);
            let nofollow = libc::AT_SYMLINK_NOFOLLOW;
            // SAFETY: as above; times points to two timespecs.
            check(unsafe { libc::utimensat(dir, c.as_ptr(), times.as_ptr(), nofollow) })?;
            return Ok(true);
        }
        // The pinned inode through its descriptor's magic link: what was checked is what
        // changes, whatever the name holds by now.
        let magic = format!("/proc/self/fd/{fd}");
        let magic_c = c_name(magic.as_bytes())?;
        // SAFETY: magic_c is a valid NUL-terminated path.
        check(unsafe { libc::chmod(magic_c.as_ptr(), entry.mode as libc::mode_t) })?;
        self.set_xattrs(Path::new(&magic), name, entry, true);
        // SAFETY: as above; times points to two timespecs.
        check(unsafe { libc::utimensat(libc::AT_FDCWD, magic_c.as_ptr(), times.as_ptr(), 0) })?;
        Ok(true)
    }

    /// `set_metadata_at` for a symlink or special file this run has just made: one that fails
    /// the check was put there by someone else meanwhile, an error.
    pub(crate) fn set_metadata_of_new(
        &self,
        name: &[u8],
        entry: &Entry<impl Kind>,
    ) -> io::Result<()> {
        if self.set_metadata_at(name, entry)? {
            return Ok(());
        }
        Err(io::Error::other(format!(
            "{} was replaced by something else while it was written; left as it is",
            self.child_path(name).display()
        )))
    }

    /// Sets `entry`'s xattrs on `path` (following it when `deref`) and removes those it
    /// lacks, warning of each failure.
    fn set_xattrs(&self, path: &Path, name: &[u8], entry: &Entry<impl Kind>, deref: bool) {
        remove_stale_xattrs(path, deref, entry, &self.child_path(name));
        for attr in managed_xattrs(entry) {
            let attr_name = OsStr::from_bytes(&attr.name);
            let set = if deref {
                xattr::set_deref(path, attr_name, &attr.value)
            } else {
                xattr::set(path, attr_name, &attr.value)
            };
            if let Err(e) = set {
                warn_xattr(&self.child_path(name), attr_name, &e);
            }
        }
    }
}

/// Sets the metadata of directories written beneath `root` (paths relative to it, in the
/// order given: deepest first), each on a descriptor opened beneath `root` name by name. The
/// chain of directories opened for one is kept for the next, which is mostly its parent, so
/// the whole costs one open per directory however deep the tree. A directory replaced
/// meanwhile (by a symlink, say) is reported, never followed: the paths that failed come back
/// with why.
pub(crate) fn set_directories_metadata(
    root: &TargetDir,
    dirs: &[(PathBuf, Entry<impl Kind>)],
) -> Vec<(PathBuf, String)> {
    let mut failed = Vec::new();
    // chain[i] is the directory at the first i + 1 names of the last path handled.
    let (mut chain, mut chain_names): (Vec<TargetDir>, Vec<&OsStr>) = (Vec::new(), Vec::new());
    for (relative, entry) in dirs {
        let shown = root.path().join(relative);
        let names: Vec<&OsStr> = relative.iter().collect();
        let shared = chain_names
            .iter()
            .zip(&names)
            .take_while(|(a, b)| a == b)
            .count();
        chain.truncate(shared);
        chain_names.truncate(shared);
        let mut set = || -> io::Result<()> {
            for name in &names[shared..] {
                let parent = chain.last().unwrap_or(root);
                if matches!(name.as_bytes(), b"." | b"..") {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "not a plain name",
                    ));
                }
                let next = parent.open_unnamed_dir(name.as_bytes())?;
                chain.push(next);
                chain_names.push(name);
            }
            set_metadata_of(chain.last().unwrap_or(root).as_fd(), entry, &shown)
        };
        if let Err(e) = set() {
            failed.push((shown, format!("setting metadata: {e}")));
        }
    }
    failed
}

/// Applies owner (when root), mode, xattrs and times of `entry` to the open file or
/// directory `fd`; `shown` names it in warnings.
pub(crate) fn set_metadata_of(
    fd: BorrowedFd<'_>,
    entry: &Entry<impl Kind>,
    shown: &Path,
) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    if running_as_root() {
        // SAFETY: fd is an open descriptor.
        check(unsafe { libc::fchown(fd, entry.uid, entry.gid) })?;
    }
    // SAFETY: fd is an open descriptor.
    check(unsafe { libc::fchmod(fd, entry.mode as libc::mode_t) })?;
    remove_stale_xattrs(
        Path::new(&format!("/proc/self/fd/{fd}")),
        true,
        entry,
        shown,
    );
    for attr in managed_xattrs(entry) {
        let name = c_name(&attr.name)?;
        // SAFETY: fd is open, name NUL-terminated, and value valid for its length.
        let rc = unsafe {
            libc::fsetxattr(
                fd,
                name.as_ptr(),
                attr.value.as_ptr().cast(),
                attr.value.len(),
                0,
            )
        };
        if let Err(e) = check(rc) {
            warn_xattr(shown, OsStr::from_bytes(&attr.name), &e);
        }
    }
    let times = entry_times(entry);
    // SAFETY: fd is open and times points to two timespecs.
    check(unsafe { libc::futimens(fd, times.as_ptr()) })
}

/// The xattrs of `entry` that are written: those `manages_xattr` names for this process.
fn managed_xattrs<K>(entry: &Entry<K>) -> impl Iterator<Item = &Xattr> {
    let as_root = running_as_root();
    entry
        .xattrs
        .iter()
        .filter(move |x| manages_xattr(&x.name, as_root))
}

/// Removes the xattrs of `path` (followed when `deref`) that `entry` lacks: an attribute
/// removed from the source goes from the copy too; one cairn does not manage stays.
/// `shown` names it in warnings.
fn remove_stale_xattrs(path: &Path, deref: bool, entry: &Entry<impl Kind>, shown: &Path) {
    let names = if deref {
        xattr::list_deref(path)
    } else {
        xattr::list(path)
    };
    // Nothing listed, nothing to remove (a filesystem without xattrs among them).
    let Ok(names) = names else {
        return;
    };
    let as_root = running_as_root();
    for name in names {
        let name_bytes = name.as_bytes();
        if !manages_xattr(name_bytes, as_root) || entry.xattrs.iter().any(|x| x.name == name_bytes)
        {
            continue;
        }
        let removed = if deref {
            xattr::remove_deref(path, &name)
        } else {
            xattr::remove(path, &name)
        };
        if let Err(e) = removed {
            warn_xattr(shown, &name, &e);
        }
    }
}

/// Restoring onto a filesystem without xattrs, or a privileged namespace as a normal user,
/// loses only the attribute, not the file.
fn warn_xattr(path: &Path, name: &OsStr, error: &io::Error) {
    tracing::warn!(
        "{}: cannot change xattr {}: {error}",
        path.display(),
        name.to_string_lossy()
    );
}

/// Access and modification time for an entry: access times are not kept (reading a
/// directory would change its tree id), so a written entry gets its mtime as atime.
fn entry_times(entry: &Entry<impl Kind>) -> [libc::timespec; 2] {
    let time = crate::timestamp::to_timespec(entry.mtime_ns);
    [time, time]
}

/// `base` with `components` applied by their text alone: a name is pushed, `..` takes away
/// the last name (never above `/`), anything else is nothing.
pub(crate) fn apply_lexically<'a>(
    mut base: PathBuf,
    components: impl IntoIterator<Item = &'a Component<'a>>,
) -> PathBuf {
    for component in components {
        match component {
            Component::ParentDir => {
                base.pop();
            }
            Component::Normal(name) => base.push(name),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    base
}

/// `path` with its deepest existing ancestor resolved (symlinks and all) and the rest, which
/// does not exist yet and will be created as plain directories, appended with `.` and `..`
/// applied: where a target will really be, to compare with a source.
pub(crate) fn resolve_future_path(path: &Path) -> io::Result<PathBuf> {
    let absolute = std::path::absolute(path)?;
    let components: Vec<Component> = absolute.components().collect();
    for existing in (1..=components.len()).rev() {
        let prefix: PathBuf = components[..existing].iter().collect();
        let resolved = match std::fs::canonicalize(&prefix) {
            Ok(resolved) => resolved,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        return Ok(apply_lexically(resolved, &components[existing..]));
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no part of {} exists", path.display()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlinked_directory_is_never_entered() {
        let scratch = tempfile::tempdir().unwrap();
        let (target, outside) = (scratch.path().join("t"), scratch.path().join("outside"));
        std::fs::create_dir_all(&outside).unwrap();
        let root = TargetDir::open(&target, true).unwrap();
        std::os::unix::fs::symlink(&outside, target.join("sub")).unwrap();
        let refused = root.open_dir(b"sub").unwrap_err().raw_os_error();
        assert!(matches!(refused, Some(libc::ENOTDIR | libc::ELOOP)));
        assert!(root.open_beneath(Path::new("sub")).is_err());
        // ensure_dir replaces the symlink, leaving what it pointed at alone.
        let sub = root.ensure_dir(b"sub").unwrap();
        sub.create_file(b"f").unwrap();
        assert!(target.join("sub/f").is_file());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    }

    #[test]
    fn remove_takes_a_deep_tree_and_never_follows_a_symlink() {
        let scratch = tempfile::tempdir().unwrap();
        let outside = scratch.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("keep"), b"x").unwrap();
        let root = TargetDir::open(&scratch.path().join("t"), true).unwrap();
        let mut dir = root.ensure_dir(b"d").unwrap();
        for _ in 0..2000 {
            dir.symlink(outside.as_os_str().as_bytes(), b"link")
                .unwrap();
            dir.create_file(b"file").unwrap();
            dir = dir.ensure_dir(b"d").unwrap();
        }
        root.remove(b"d").unwrap();
        assert!(root.metadata(b"d").unwrap().is_none());
        assert!(outside.join("keep").is_file());
    }

    #[test]
    fn names_lists_everything_but_dot_entries() {
        let scratch = tempfile::tempdir().unwrap();
        let root = TargetDir::open(scratch.path(), false).unwrap();
        root.create_file(b"a").unwrap();
        root.make_dir(b"b").unwrap();
        root.symlink(b"/nowhere", b"c").unwrap();
        let mut names = root.names().unwrap();
        names.sort();
        assert_eq!(names, [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        assert_eq!(root.read_link(b"c").unwrap(), b"/nowhere");
    }

    #[test]
    fn a_future_path_through_a_symlink_resolves_to_where_it_will_be() {
        let scratch = tempfile::tempdir().unwrap();
        let source = scratch.path().join("src");
        std::fs::create_dir_all(&source).unwrap();
        std::os::unix::fs::symlink(&source, scratch.path().join("lnk")).unwrap();
        let resolved =
            resolve_future_path(&scratch.path().join("lnk/inner/../inner/copy2")).unwrap();
        let source = std::fs::canonicalize(&source).unwrap();
        assert_eq!(resolved, source.join("inner/copy2"));
    }
}
