//! Writing files with holes: aligned runs of zeros skipped so they stay holes (`--sparse`),
//! and the holes of a file filled with zeros when it must be dense.

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

/// Runs of zero bytes at least this long, aligned to it, are left as holes.
pub(crate) const HOLE_BLOCK_BYTES: usize = 4096;

/// Writes `data` at `offset`, skipping aligned all-zero blocks so they stay holes.
pub(crate) fn write_sparse(file: &fs::File, offset: u64, data: &[u8]) -> std::io::Result<()> {
    let mut run_start = None;
    let mut at = 0;
    while at < data.len() {
        let end = (at + HOLE_BLOCK_BYTES).min(data.len());
        let zero = end - at == HOLE_BLOCK_BYTES && data[at..end].iter().all(|&b| b == 0);
        match (zero, run_start) {
            (false, None) => run_start = Some(at),
            (true, Some(start)) => {
                file.write_all_at(&data[start..at], offset + start as u64)?;
                run_start = None;
            }
            _ => {}
        }
        at = end;
    }
    if let Some(start) = run_start {
        file.write_all_at(&data[start..], offset + start as u64)?;
    }
    Ok(())
}

/// Bytes of zeros written at a time into a hole.
const FILL_BYTES: usize = 1 << 20;

/// Writes zeros into every hole of `file` (found with `SEEK_HOLE`/`SEEK_DATA`), so a file
/// written with `write_sparse` becomes dense: what restore and sync give without `--sparse`.
pub(crate) fn fill_holes(file: &fs::File) -> std::io::Result<()> {
    let size = file.metadata()?.len();
    let mut zeros = Vec::new();
    let mut at = 0;
    while at < size {
        let hole = match seek_from(file, at, libc::SEEK_HOLE)? {
            Some(hole) if hole < size => hole,
            _ => break,
        };
        let data = seek_from(file, hole, libc::SEEK_DATA)?.unwrap_or(size);
        zeros.resize(FILL_BYTES.min((data - hole) as usize).max(zeros.len()), 0);
        let mut offset = hole;
        while offset < data {
            let length = zeros.len().min((data - offset) as usize);
            file.write_all_at(&zeros[..length], offset)?;
            offset += length as u64;
        }
        at = data;
    }
    Ok(())
}

/// `lseek(file, offset, whence)` for `SEEK_HOLE`/`SEEK_DATA`; `None` for ENXIO (none left).
fn seek_from(file: &fs::File, offset: u64, whence: i32) -> std::io::Result<Option<u64>> {
    let offset = i64::try_from(offset).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    // SAFETY: lseek on an open descriptor has no other preconditions.
    let found = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    if found >= 0 {
        return Ok(Some(found as u64));
    }
    let error = std::io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::ENXIO) => Ok(None),
        _ => Err(error),
    }
}
