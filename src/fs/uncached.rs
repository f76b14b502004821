//! Reading a large source file, and writing a pack, around the page cache (`O_DIRECT`). On
//! reading, the bytes go from the disk straight into the reader's buffer, so a backup of a
//! disk image or a database dump neither pays for copying each page out of the cache (a
//! quarter of the CPU of backing up a 1.36 GB file just read from disk) nor pushes what other
//! programs use out of it; a pack, built in page-aligned memory (`AlignedBytes`), goes from
//! there to the disk the same way. Reads must start and end on block boundaries in memory
//! and in the file (the chunker reads that way, `Chunker::for_each_marked_chunk`); a read the
//! filesystem refuses falls back to reading through the cache from where the file is, a
//! refused write is written again through it. Only filesystems on a local disk are used this
//! way: a network or userspace filesystem (NFS, FUSE) needs the kernel's read-ahead, which
//! `O_DIRECT` gives up. A file being written has its dirty pages written out before a direct
//! read of them, which the writer then need not do later.

use std::fs::File;
use std::io::{ErrorKind, Read, Result};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

/// What reads and writes through `O_DIRECT` are aligned to, in memory and in the file: a
/// page, which every block device's logical block size divides.
pub(crate) const DIRECT_IO_ALIGN: usize = 4096;

/// `len` rounded down to whole pages of `DIRECT_IO_ALIGN`.
pub(crate) fn whole_pages(len: usize) -> usize {
    len / DIRECT_IO_ALIGN * DIRECT_IO_ALIGN
}

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

/// Bytes in page-aligned memory, which a write around the page cache can take as they are
/// (`O_DIRECT` writes from aligned memory only): what a pack is built in.
#[derive(Default)]
pub struct AlignedBytes {
    storage: Vec<u8>,
    /// Where the aligned bytes start in `storage`.
    base: usize,
    len: usize,
}

impl AlignedBytes {
    /// `len` zero bytes.
    pub(crate) fn zeroed(len: usize) -> Self {
        let storage = vec![0u8; len + DIRECT_IO_ALIGN];
        let base = storage.as_ptr().align_offset(DIRECT_IO_ALIGN);
        AlignedBytes { storage, base, len }
    }

    /// How many bytes fit without moving.
    pub(crate) fn capacity(&self) -> usize {
        self.storage.len().saturating_sub(self.base)
    }

    /// Makes room for `additional` more bytes, moving them once to larger memory when needed.
    pub(crate) fn reserve(&mut self, additional: usize) {
        let needed = self.len + additional;
        if needed <= self.capacity() {
            return;
        }
        let mut larger = AlignedBytes::zeroed(needed.max(2 * self.capacity()));
        larger[..self.len].copy_from_slice(self);
        larger.len = self.len;
        *self = larger;
    }

    pub(crate) fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.reserve(bytes.len());
        let end = self.base + self.len;
        self.storage[end..end + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    pub(crate) fn clear(&mut self) {
        self.len = 0;
    }
}

impl std::ops::Deref for AlignedBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.storage[self.base..self.base + self.len]
    }
}

impl std::ops::DerefMut for AlignedBytes {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.base..self.base + self.len]
    }
}

/// Asks the kernel for huge pages over the whole pages of `len` bytes at `start`, memory
/// read in large stretches or at random (read blocks, argon2's), where 4 KiB pages cost page
/// faults, pinned pages and TLB misses. A kernel without huge pages refuses it and the pages
/// stay small.
///
/// # Safety
/// `start..start + len` must lie in one allocation the caller owns.
pub(crate) unsafe fn advise_huge_pages(start: *const u8, len: usize) {
    let skip = start.align_offset(DIRECT_IO_ALIGN).min(len);
    let whole_pages = whole_pages(len - skip);
    // SAFETY: a page-aligned range inside the caller's allocation; the advice changes no
    // byte of it.
    unsafe {
        libc::madvise(
            start.add(skip).cast_mut().cast(),
            whole_pages,
            libc::MADV_HUGEPAGE,
        )
    };
}

/// Writes `data` at the start of `file` (new and empty, open for writing); when `data` lies
/// in page-aligned memory (`AlignedBytes`) and the filesystem is one of a local disk, its
/// whole pages go around the page cache: they neither cost a copy into the cache nor push
/// out what other programs use. The last part page, or everything when the filesystem
/// refuses, goes through the cache. The caller syncs.
pub(crate) fn write_new_file(file: &File, data: &[u8]) -> Result<()> {
    let whole_pages = whole_pages(data.len());
    let aligned = data.as_ptr().addr().is_multiple_of(DIRECT_IO_ALIGN);
    let mut cached_from = 0;
    if whole_pages > 0 && aligned && on_local_disk(file) && set_direct(file, true).is_ok() {
        cached_from = match file.write_all_at(&data[..whole_pages], 0) {
            Ok(()) => whole_pages,
            // Refused (this file or this filesystem after all): all again through the cache.
            Err(e) if matches!(e.kind(), ErrorKind::InvalidInput | ErrorKind::Unsupported) => 0,
            Err(e) => return Err(e),
        };
        set_direct(file, false)?;
    }
    file.write_all_at(&data[cached_from..], cached_from as u64)
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
        let mut storage = vec![0u8; (1 << 20) + 2 * DIRECT_IO_ALIGN];
        let base = storage.as_ptr().align_offset(DIRECT_IO_ALIGN) + misalign;
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

    #[test]
    fn a_new_file_is_written_whole_from_aligned_bytes_or_not_and_left_as_it_was() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let page = DIRECT_IO_ALIGN;
        for len in [0, 100, page, 3 * page, 5 * page + 17, (1 << 20) + 1] {
            let data: Vec<u8> = (0..len).map(|i| (i * 13 + i / 4093) as u8).collect();
            let mut aligned = AlignedBytes::default();
            // Grown in steps, so the bytes move to larger memory on the way.
            for part in data.chunks(1000) {
                aligned.extend_from_slice(part);
            }
            assert_eq!(&*aligned, &data[..]);
            let unaligned = &[&[0u8][..], &data].concat()[1..];
            for (name, bytes) in [("aligned", &*aligned), ("unaligned", unaligned)] {
                let path = dir.path().join(format!("{name}-{len}"));
                let file = File::create_new(&path).unwrap();
                write_new_file(&file, bytes).unwrap();
                assert!(!direct_flag(&file), "the descriptor is left as it was");
                drop(file);
                assert_eq!(std::fs::read(&path).unwrap(), data, "{name}, {len} bytes");
            }
        }
    }

    /// Whether `O_DIRECT` is set on `file`.
    fn direct_flag(file: &File) -> bool {
        // SAFETY: fcntl reads the flags of a descriptor `file` keeps open.
        let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
        flags & libc::O_DIRECT != 0
    }
}
