//! Reading a large source file around the page cache (`O_DIRECT`): the bytes go from the disk
//! straight into the reader's buffer, so a backup of a disk image or a database dump neither
//! pays for copying each page out of the cache (a quarter of the CPU of backing up a 1.36 GB
//! file just read from disk) nor pushes what other programs use out of it. Reads must start
//! and end on block boundaries in memory and in the file (the chunker reads that way,
//! `Chunker::for_each_marked_chunk`); a read the filesystem refuses falls back to reading
//! through the cache from where the file is. Only filesystems on a local disk are read this
//! way: a network or userspace filesystem (NFS, FUSE) needs the kernel's read-ahead, which
//! `O_DIRECT` gives up. A file being written has its dirty pages written out before a direct
//! read of them, which the writer then need not do later.

use std::fs::File;
use std::io::{ErrorKind, Read, Result};
use std::os::fd::AsRawFd;

/// What reads through `O_DIRECT` are aligned to, in memory and in the file: a page, which
/// every block device's logical block size divides.
pub(crate) const DIRECT_READ_ALIGN: usize = 4096;

/// Filesystems on a local disk whose `O_DIRECT` reads go to the disk as asked: ext2-4, XFS,
/// btrfs, F2FS (`statfs` magic numbers).
const DIRECT_FILESYSTEMS: [u64; 4] = [0xEF53, 0x5846_5342, 0x9123_683E, 0xF2F5_2010];

/// A file read around the page cache while the filesystem allows it.
pub(crate) struct Uncached {
    file: File,
    direct: bool,
}

impl Uncached {
    /// `file`, read around the page cache when `wanted` and its filesystem is one of a local
    /// disk that supports it.
    pub(crate) fn new(file: File, wanted: bool) -> Self {
        let direct = wanted && on_local_disk(&file) && set_direct(&file, true).is_ok();
        Uncached { file, direct }
    }
}

impl Read for Uncached {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        if self.direct {
            match self.file.read(buf) {
                // An unaligned buffer or length, or a file whose filesystem takes O_DIRECT at
                // open but not for this read: the offset has not moved, read on cached.
                Err(e) if e.kind() == ErrorKind::InvalidInput => {
                    self.direct = false;
                    set_direct(&self.file, false)?;
                }
                other => return other,
            }
        }
        self.file.read(buf)
    }
}

/// Whether `file` is on one of `DIRECT_FILESYSTEMS`.
fn on_local_disk(file: &File) -> bool {
    filesystem_of(file).is_some_and(|kind| DIRECT_FILESYSTEMS.contains(&kind))
}

/// The `statfs` magic number of `file`'s filesystem.
fn filesystem_of(file: &File) -> Option<u64> {
    // SAFETY: a plain C struct, for fstatfs to fill in.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs writes one statfs into `stat`, for a descriptor this File owns and
    // keeps open.
    let status = unsafe { libc::fstatfs(file.as_raw_fd(), &mut stat) };
    (status == 0).then_some(stat.f_type as u64)
}

/// Sets or clears `O_DIRECT` on `file`'s open file description.
fn set_direct(file: &File, direct: bool) -> Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: fcntl reads and sets the flags of a descriptor this File owns and keeps open.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let flags = match direct {
        true => flags | libc::O_DIRECT,
        false => flags & !libc::O_DIRECT,
    };
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads `path` whole through `Uncached` into buffers at `misalign` bytes past a page.
    fn read_all(path: &std::path::Path, misalign: usize) -> (Vec<u8>, bool) {
        let mut reader = Uncached::new(File::open(path).unwrap(), true);
        let mut storage = vec![0u8; (1 << 20) + 2 * DIRECT_READ_ALIGN];
        let base = storage.as_ptr().align_offset(DIRECT_READ_ALIGN) + misalign;
        let buffer = &mut storage[base..base + (1 << 20)];
        let mut read = Vec::new();
        loop {
            let n = reader.read(buffer).unwrap();
            if n == 0 {
                return (read, reader.direct);
            }
            read.extend_from_slice(&buffer[..n]);
        }
    }

    #[test]
    fn every_byte_is_read_aligned_or_not_and_a_refused_read_goes_on_through_the_cache() {
        // Beside the sources: a disk filesystem, where /tmp may be a tmpfs.
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let path = dir.path().join("file");
        let data: Vec<u8> = (0..3_000_000u32)
            .map(|i| (i * 7 + i / 4099) as u8)
            .collect();
        std::fs::write(&path, &data).unwrap();

        let open = || File::open(&path).unwrap();
        let local_disk = on_local_disk(&open());
        assert_eq!(Uncached::new(open(), true).direct, local_disk);
        assert!(!Uncached::new(open(), false).direct);
        let (aligned, stayed_direct) = read_all(&path, 0);
        assert_eq!(aligned, data);
        assert_eq!(stayed_direct, local_disk, "aligned reads stay direct");

        let (unaligned, stayed_direct) = read_all(&path, 512 + 3);
        assert_eq!(unaligned, data);
        // ext4 and XFS refuse a read into an unaligned buffer (btrfs reads it through the
        // cache and stays direct).
        if filesystem_of(&open()).is_some_and(|kind| DIRECT_FILESYSTEMS[..2].contains(&kind)) {
            assert!(!stayed_direct, "a refused read falls back");
        }
    }
}
