//! The FUSE adapter: serves a `Vfs` read-only through fuser. It owns only what FUSE needs —
//! attribute conversion, directory listings (by handle, or by directory where the kernel
//! opens none), errno mapping and the mount session — and knows nothing of repositories.
//! Checkpoint content is immutable, so entries get long TTLs and files are never opened (the
//! kernel then keeps their pages); the synthetic directories (`checkpoints/`, `tags/`,
//! `history/`, `latest`) get short TTLs so new checkpoints show up. Listings are READDIRPLUS,
//! and file starts the VFS decodes ahead of a reader are stored straight into the kernel's
//! page cache (FUSE_NOTIFY_STORE), so a tree walk costs few round trips. A failed blob read
//! is logged with its pack and blob id and reported as EIO, never as wrong bytes.

use crate::error::{Error, Missing, Result};
use crate::timestamp::to_system_time;
use crate::vfs::{Attr, FileKind, Ino, ListedEntry, Vfs, VfsError};
use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEntry, ReplyLseek, ReplyOpen, ReplyXattr, Request,
    Session, SessionACL,
};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long the kernel may cache what never changes (checkpoint content).
const IMMUTABLE_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long the kernel may cache the synthetic directories.
const CATALOGUE_TTL: Duration = Duration::from_secs(1);

/// Inputs of a mount.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Let other users (and root) see the mount (`allow_other`).
    pub allow_other: bool,
    /// Threads serving requests.
    pub threads: usize,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            allow_other: false,
            threads: std::thread::available_parallelism().map_or(4, |n| 2 * n.get()),
        }
    }
}

/// The entries of a directory: attributes and name.
type Listing = Vec<ListedEntry>;

/// Directory listings kept without a handle, at most: of readers that stopped before the
/// end (see `CairnFs::by_dir`).
const LISTINGS_BY_DIR: usize = 256;

struct CairnFs {
    vfs: Arc<Vfs>,
    /// Listings of open directories, so a large directory is listed once per `opendir`.
    dir_handles: Mutex<HashMap<u64, Arc<Listing>>>,
    next_handle: AtomicU64,
    /// Whether the kernel sends OPENDIR and RELEASEDIR at all. A kernel that can do without
    /// (FUSE_NO_OPENDIR_SUPPORT) stops once an OPENDIR is answered ENOSYS, which saves two
    /// round trips per directory of a tree walk (a fifth of tar's requests on a source
    /// tree); it then lists with handle 0, and `by_dir` holds the listings.
    no_opendir: bool,
    /// Without directory handles, each directory's listing from the READDIRPLUS at offset 0
    /// (which makes it anew) to the one past its end (which drops it).
    by_dir: Mutex<HashMap<Ino, Arc<Listing>>>,
}

fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::Directory => FileType::Directory,
        FileKind::RegularFile => FileType::RegularFile,
        FileKind::Symlink => FileType::Symlink,
        FileKind::NamedPipe => FileType::NamedPipe,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
    }
}

fn file_attr(attr: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(attr.ino),
        size: attr.size,
        blocks: attr.allocated.div_ceil(512),
        atime: to_system_time(attr.mtime_ns),
        mtime: to_system_time(attr.mtime_ns),
        ctime: to_system_time(attr.ctime_ns),
        crtime: to_system_time(attr.mtime_ns),
        kind: file_type(attr.kind),
        perm: attr.perm,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: attr.rdev as u32,
        flags: 0,
        blksize: 128 * 1024,
    }
}

fn errno(error: VfsError) -> Errno {
    match error {
        VfsError::NotFound => Errno::ENOENT,
        VfsError::NotDirectory => Errno::ENOTDIR,
        VfsError::NotFile => Errno::EISDIR,
        VfsError::NotSymlink => Errno::EINVAL,
        VfsError::Repository(e) => {
            tracing::error!("{e}");
            Errno::EIO
        }
    }
}

/// `.`, `..` and then a listing's entries, each with the offset of the entry after it.
fn with_dots(
    ino: INodeNo,
    entries: &Listing,
) -> impl Iterator<Item = (u64, (Ino, FileKind, &[u8]))> {
    let dots = [
        (ino.0, FileKind::Directory, b".".as_slice()),
        (ino.0, FileKind::Directory, b".."),
    ];
    dots.into_iter()
        .chain(
            entries
                .iter()
                .map(|entry| (entry.attr.ino, entry.attr.kind, entry.name.as_slice())),
        )
        .enumerate()
        .map(|(index, entry)| (index as u64 + 1, entry))
}

/// Whether a READDIR(PLUS) at `offset` asks past the last entry of `entries` (after `.`
/// and `..`): the call that tells the kernel the listing has ended.
fn past_end(offset: u64, entries: &Listing) -> bool {
    offset as usize >= entries.len() + 2
}

impl CairnFs {
    /// The listing a READDIR(PLUS) of directory `ino` at `offset` reads: the one behind
    /// handle `fh`, or without handles the directory's, made anew at offset 0 or when it was
    /// dropped.
    fn listing(&self, ino: INodeNo, fh: FileHandle, offset: u64) -> Result<Arc<Listing>, Errno> {
        if !self.no_opendir {
            let handles = self.dir_handles.lock().expect("not poisoned");
            return handles.get(&fh.0).cloned().ok_or(Errno::EBADF);
        }
        if offset > 0
            && let Some(listing) = self.by_dir.lock().expect("not poisoned").get(&ino.0)
        {
            return Ok(listing.clone());
        }
        // The directory's previous listing is let go before the new one is made, which interns
        // the same names again: released after, it would forget the new listing's inodes.
        let previous = self.by_dir.lock().expect("not poisoned").remove(&ino.0);
        if let Some(previous) = previous {
            self.release(&previous);
        }
        let listing = Arc::new(self.vfs.readdir(ino.0).map_err(errno)?);
        let mut by_dir = self.by_dir.lock().expect("not poisoned");
        let mut dropped = by_dir.insert(ino.0, listing.clone());
        if dropped.is_none() && by_dir.len() > LISTINGS_BY_DIR {
            // A reader that stopped before the end; one still reading lists anew.
            let stale = *by_dir
                .keys()
                .find(|&&dir| dir != ino.0)
                .expect("more than one");
            dropped = by_dir.remove(&stale);
        }
        drop(by_dir);
        if let Some(dropped) = dropped {
            self.release(&dropped);
        }
        Ok(listing)
    }

    /// Notes that a READDIR(PLUS) of `ino` went past the end of its listing: without
    /// handles, that is where the listing is done with.
    fn listed_to_end(&self, ino: INodeNo, listing: &Arc<Listing>) {
        if !self.no_opendir {
            return;
        }
        // Only the listing this reader went through: another may have made a newer one.
        let done = {
            let mut by_dir = self.by_dir.lock().expect("not poisoned");
            match by_dir.get(&ino.0) {
                Some(kept) if Arc::ptr_eq(kept, listing) => by_dir.remove(&ino.0),
                _ => None,
            }
        };
        if let Some(done) = done {
            self.release(&done);
        }
    }

    /// Lets the VFS forget the entries of a listing the kernel never looked up.
    fn release(&self, listing: &Listing) {
        self.vfs
            .release_listing(listing.iter().map(|entry| entry.attr.ino));
    }

    /// The TTL for an attribute: long for checkpoint content, short for the catalogue views.
    fn ttl(&self, attr: &Attr) -> Duration {
        if self.vfs.is_immutable(attr.ino) {
            IMMUTABLE_TTL
        } else {
            CATALOGUE_TTL
        }
    }
}

/// Replies to an xattr request: the size when `size` is 0, the bytes when they fit.
fn reply_xattr(reply: ReplyXattr, size: u32, bytes: &[u8]) {
    if size == 0 {
        reply.size(bytes.len() as u32);
    } else if bytes.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(bytes);
    }
}

impl Filesystem for CairnFs {
    /// Asks for READDIRPLUS on every listing, and for no OPENDIR, when the kernel offers them.
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if let Err(missing) = config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS) {
            tracing::debug!("the kernel lacks {missing:?}: listings are followed by lookups");
        }
        match config.add_capabilities(InitFlags::FUSE_NO_OPENDIR_SUPPORT) {
            Ok(()) => self.no_opendir = true,
            Err(missing) => tracing::debug!("the kernel lacks {missing:?}: it opens directories"),
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.vfs.lookup(parent.0, name.as_bytes()) {
            Ok(attr) => reply.entry(&self.ttl(&attr), &file_attr(&attr), Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.vfs.getattr(ino.0) {
            Ok(attr) => reply.attr(&self.ttl(&attr), &file_attr(&attr)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.vfs.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(errno(e)),
        }
    }

    /// Every file is checkpoint content, so opening needs no state: ENOSYS tells the kernel
    /// to stop sending open, flush and release at all and to keep file pages cached (its
    /// no-open mode implies keep-cache), which saves three round trips per file read.
    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.error(Errno::ENOSYS);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.vfs.read(ino.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(e)),
        }
    }

    /// `SEEK_DATA` and `SEEK_HOLE` over the file's chunks, all-zero chunks being holes, so
    /// `cp` and `tar --sparse` keep a sparse file's holes. The kernel handles the other
    /// kinds of seek itself.
    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let want_data = match whence {
            libc::SEEK_DATA => true,
            libc::SEEK_HOLE => false,
            _ => return reply.error(Errno::EINVAL),
        };
        let Ok(offset) = u64::try_from(offset) else {
            return reply.error(Errno::ENXIO);
        };
        match self.vfs.seek(ino.0, offset, want_data) {
            Ok(Some(found)) => reply.offset(found as i64),
            Ok(None) => reply.error(Errno::ENXIO),
            Err(e) => reply.error(errno(e)),
        }
    }

    /// Nothing is ever written, so there is nothing to flush: ENOSYS stops the kernel asking.
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: fuser::ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.no_opendir {
            return reply.error(Errno::ENOSYS);
        }
        match self.vfs.readdir(ino.0) {
            Ok(entries) => {
                let handle = self.next_handle.fetch_add(1, Ordering::Relaxed);
                self.dir_handles
                    .lock()
                    .expect("not poisoned")
                    .insert(handle, Arc::new(entries));
                let flags = if self.vfs.is_immutable(ino.0) {
                    FopenFlags::FOPEN_CACHE_DIR
                } else {
                    FopenFlags::empty()
                };
                reply.opened(FileHandle(handle), flags);
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match self.listing(ino, fh, offset) {
            Ok(entries) => entries,
            Err(e) => return reply.error(e),
        };
        if past_end(offset, &entries) {
            self.listed_to_end(ino, &entries);
        }
        for (index, (child, kind, name)) in with_dots(ino, &entries).skip(offset as usize) {
            if reply.add(
                INodeNo(child),
                index,
                file_type(kind),
                OsStr::from_bytes(name),
            ) {
                break;
            }
        }
        reply.ok();
    }

    /// Listing with attributes, which spares the kernel a LOOKUP per entry when a program
    /// walks a tree (tar, cp -a, find). Every entry but `.` and `..` counts as a lookup.
    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let entries = match self.listing(ino, fh, offset) {
            Ok(entries) => entries,
            Err(e) => return reply.error(e),
        };
        // The call past the last entry: the kernel holds them all (see `listing_taken`).
        if past_end(offset, &entries) {
            self.vfs.listing_taken(ino.0);
            self.listed_to_end(ino, &entries);
        }
        for (index, (child, _, name)) in with_dots(ino, &entries).skip(offset as usize) {
            let is_dot = name == b"." || name == b"..";
            let attr = if is_dot {
                self.vfs.getattr(ino.0)
            } else {
                self.vfs.hold_listed(ino.0, name)
            };
            let attr = match attr {
                Ok(attr) => attr,
                Err(VfsError::NotFound) if child != ino.0 => continue,
                Err(e) => {
                    reply.error(errno(e));
                    return;
                }
            };
            let name = OsStr::from_bytes(name);
            let ttl = self.ttl(&attr);
            if reply.add(
                INodeNo(attr.ino),
                index,
                name,
                &ttl,
                &file_attr(&attr),
                Generation(0),
            ) {
                if !is_dot {
                    self.vfs.forget(attr.ino, 1);
                }
                break;
            }
        }
        reply.ok();
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.vfs.forget(ino.0, nlookup);
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: fuser::ReplyEmpty,
    ) {
        let listing = self.dir_handles.lock().expect("not poisoned").remove(&fh.0);
        if let Some(listing) = listing {
            self.release(&listing);
        }
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.vfs.xattrs(ino.0) {
            Ok(xattrs) => match xattrs.iter().find(|x| x.name == name.as_bytes()) {
                Some(x) => reply_xattr(reply, size, &x.value),
                None => reply.error(Errno::ENODATA),
            },
            Err(e) => reply.error(errno(e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.vfs.xattrs(ino.0) {
            Ok(xattrs) => {
                let mut names = Vec::new();
                for x in &xattrs {
                    names.extend_from_slice(&x.name);
                    names.push(0);
                }
                reply_xattr(reply, size, &names);
            }
            Err(e) => reply.error(errno(e)),
        }
    }
}

/// Checks that `mountpoint` is an empty directory, with a clear error otherwise.
pub fn check_mountpoint(mountpoint: &Path) -> Result<()> {
    let shown = mountpoint.display();
    let metadata = std::fs::metadata(mountpoint).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOTCONN) => Error::InvalidInput(format!(
            "{shown} is a stale mount left by a process that died: run `fusermount3 -u {shown}` and try again"
        )),
        Some(libc::ENOENT) => Error::not_found(
            Missing::LocalPath(mountpoint.to_owned()),
            format!("mountpoint {shown} does not exist: create it with `mkdir -p {shown}`"),
        ),
        _ => Error::io(format!("checking mountpoint {shown}"), e),
    })?;
    if !metadata.is_dir() {
        return Err(Error::InvalidInput(format!(
            "mountpoint {shown} is not a directory"
        )));
    }
    let mut entries = std::fs::read_dir(mountpoint)
        .map_err(|e| Error::io(format!("reading mountpoint {shown}"), e))?;
    if entries.next().is_some() {
        return Err(Error::InvalidInput(format!(
            "mountpoint {shown} is not empty (is something already mounted there? `fusermount3 -u {shown}` unmounts it)"
        )));
    }
    Ok(())
}

/// A mounted filesystem, served until it is unmounted.
pub struct MountedVfs {
    session: Session<CairnFs>,
}

/// Unmounts a `MountedVfs` from another thread (on a signal).
pub struct Unmounter(fuser::SessionUnmounter);

impl Unmounter {
    pub fn unmount(&mut self) -> Result<()> {
        self.0.unmount().map_err(|e| Error::io("unmounting", e))
    }
}

impl MountedVfs {
    /// Mounts `vfs` read-only at `mountpoint`.
    pub fn mount(vfs: Vfs, mountpoint: &Path, options: &MountOptions) -> Result<Self> {
        check_mountpoint(mountpoint)?;
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::RO,
            MountOption::FSName("cairn".into()),
            MountOption::Subtype("cairn".into()),
            MountOption::DefaultPermissions,
            MountOption::NoDev,
            MountOption::NoSuid,
        ];
        if options.allow_other {
            config.acl = SessionACL::All;
        }
        config.n_threads = Some(options.threads.max(1));
        // One /dev/fuse descriptor per thread: requests are not all queued behind one lock.
        config.clone_fd = true;
        let vfs = Arc::new(vfs);
        let fs = CairnFs {
            vfs: vfs.clone(),
            dir_handles: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            no_opendir: false,
            by_dir: Mutex::new(HashMap::new()),
        };
        let session = Session::new(fs, mountpoint, &config).map_err(|e| {
            Error::io(
                format!(
                    "mounting at {} (is fuse3 installed and /dev/fuse usable?)",
                    mountpoint.display()
                ),
                e,
            )
        })?;
        let notifier = session.notifier();
        vfs.push_pages_to(Box::new(move |ino, offset, bytes| {
            notifier.store(INodeNo(ino), offset, bytes).is_ok()
        }));
        Ok(MountedVfs { session })
    }

    pub fn unmounter(&mut self) -> Unmounter {
        Unmounter(self.session.unmount_callable())
    }

    /// Serves requests until the filesystem is unmounted.
    pub fn run(self) -> Result<()> {
        self.session
            .run()
            .map_err(|e| Error::io("serving the mount", e))
    }
}
