//! `dump`: a directory of a checkpoint as one tar stream (to stdout, a pipe, a file), for
//! handing a backup to another tool or machine without restoring it first.
//!
//! The archive is GNU tar with POSIX extended headers where the GNU header cannot say
//! everything: long names and link targets (GNU long-name records), modification times
//! with nanoseconds or before 1970 (`mtime`), extended attributes (`SCHILY.xattr.*`, as GNU
//! tar's `--xattrs` reads them). Owners go by number and name, hard links as link entries
//! to the first path of the group, devices and FIFOs as themselves.
//!
//! The walk keeps its own stack (no recursion however deep the tree) and feeds the files'
//! chunks to one read-ahead stream (`readahead::ChunkStream`), so the reads of the next files
//! overlap the writing of this one; memory holds a window of chunks, the open directories
//! and at most `PENDING_MAX` entries waiting their turn, not the tree. Each chunk is checked against its id and its recorded length,
//! and the chunks must add up to each file's recorded size: a damaged repository ends the
//! stream with an error and without the end-of-archive blocks, so `tar` reports the archive
//! as truncated instead of extracting a short file silently.

use crate::error::{Error, Result};
use crate::id::TreeId;
use crate::readahead::ChunkStream;
use crate::repo::Repository;
use crate::tree::{ChunkRef, Entry, EntryKind, load_tree, sized_file_chunks};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use tar::{EntryType, Header};

/// Entries (directories, links, empty files) held before they are written when no file
/// data comes between them.
const PENDING_MAX: usize = 4096;

/// What a dump wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DumpStats {
    pub entries: u64,
    /// File bytes (headers and padding aside).
    pub bytes: u64,
}

/// Writes `entry` (a directory, or any other kind) as a tar stream to `out`. A directory's
/// contents are named below `name` (`name/...`, the directory first), or at the archive's
/// top level when `name` is empty (a whole checkpoint).
pub fn tar(repo: &Repository, entry: &Entry, name: &[u8], out: impl Write) -> Result<DumpStats> {
    let broken = Cell::new(false);
    let mut archive = tar::Builder::new(StopAfterError {
        out,
        broken: &broken,
    });
    let result = write_archive(repo, entry, name, &mut archive);
    if result.is_err() {
        // The builder writes the end-of-archive blocks when dropped; a failed dump must end
        // without them, so a reader sees a truncated archive.
        broken.set(true);
        return result;
    }
    archive
        .into_inner()
        .and_then(|mut out| out.flush())
        .map_err(|e| Error::io("writing the archive", e))?;
    result
}

fn write_archive<W: Write>(
    repo: &Repository,
    entry: &Entry,
    name: &[u8],
    archive: &mut tar::Builder<W>,
) -> Result<DumpStats> {
    let mut writer = ArchiveWriter {
        archive,
        stats: DumpStats::default(),
        file_size: 0,
        file_left: 0,
    };
    let walk = RefCell::new(Walk::new(repo, entry, name));
    // Each stream of chunks runs until the walk ends or pauses with `PENDING_MAX` entries
    // and no file data to read; those are written and the next stream goes on.
    loop {
        std::thread::scope(|scope| -> Result<()> {
            let chunks = std::iter::from_fn(|| walk.borrow_mut().next_chunk());
            for (headers, chunk) in ChunkStream::new(repo, scope, chunks) {
                for item in headers {
                    writer.item(&item)?;
                }
                writer.file_bytes(&chunk?.bytes)?;
            }
            Ok(())
        })?;
        let mut walk = walk.borrow_mut();
        if let Some(error) = walk.error.take() {
            return Err(error);
        }
        for item in std::mem::take(&mut walk.pending) {
            writer.item(&item)?;
        }
        if walk.open.is_empty() {
            return Ok(writer.stats);
        }
    }
}

/// One archive entry to write: its path and entry, or for the second and later paths of a
/// hard-link group, the first path.
struct Item {
    path: Vec<u8>,
    entry: Entry,
    link_to: Option<Vec<u8>>,
}

/// The walk over the tree, as the chunks it needs: each chunk comes with the entries to
/// write before it (the directories, links and empty files since the last file with
/// content, then the header of the chunk's file).
struct Walk<'a> {
    repo: &'a Repository,
    /// Open directories: their remaining entries and their path prefix (`dir/`).
    open: Vec<(std::vec::IntoIter<Entry>, Vec<u8>)>,
    /// Entries met since the last chunk handed out.
    pending: Vec<Item>,
    /// The rest of the current file's chunks.
    chunks: std::vec::IntoIter<ChunkRef>,
    /// The first path of each hard-link group met.
    links: HashMap<(u64, u64), Vec<u8>>,
    /// What stopped the walk.
    error: Option<Error>,
}

impl<'a> Walk<'a> {
    fn new(repo: &'a Repository, entry: &Entry, name: &[u8]) -> Self {
        let mut walk = Walk {
            repo,
            open: Vec::new(),
            pending: Vec::new(),
            chunks: Vec::new().into_iter(),
            links: HashMap::new(),
            error: None,
        };
        match (&entry.kind, name.is_empty()) {
            (EntryKind::Dir(tree), true) => {
                if let Err(e) = walk.open_dir(tree, Vec::new()) {
                    walk.error = Some(e);
                }
            }
            _ => {
                let mut named = entry.clone();
                named.name = name.to_vec();
                if let Err(e) = walk.visit(named, &[]) {
                    walk.error = Some(e);
                }
            }
        }
        walk
    }

    fn open_dir(&mut self, tree: &TreeId, prefix: Vec<u8>) -> Result<()> {
        let entries = load_tree(self.repo, tree)?.entries;
        self.open.push((entries.into_iter(), prefix));
        Ok(())
    }

    /// The next chunk to read and the entries to write before it; `None` at the end or at
    /// an error (kept in `error`).
    fn next_chunk(&mut self) -> Option<(Vec<Item>, ChunkRef)> {
        loop {
            if let Some(chunk) = self.chunks.next() {
                return Some((std::mem::take(&mut self.pending), chunk));
            }
            // A pause: the caller writes what is pending and asks again, so directories,
            // links and empty files without file data between them never pile up.
            if self.error.is_some() || self.pending.len() >= PENDING_MAX {
                return None;
            }
            let (entries, prefix) = self.open.last_mut()?;
            let Some(entry) = entries.next() else {
                self.open.pop();
                continue;
            };
            let prefix = prefix.clone();
            if let Err(e) = self.visit(entry, &prefix) {
                self.error = Some(e);
                return None;
            }
        }
    }

    /// Queues `entry`, named below `prefix`: a directory is opened, a file's chunks are
    /// next, a hard link already met points at its first path.
    fn visit(&mut self, entry: Entry, prefix: &[u8]) -> Result<()> {
        crate::interrupt::check()?;
        let mut path = prefix.to_vec();
        path.extend_from_slice(&entry.name);
        let mut link_to = None;
        match &entry.kind {
            EntryKind::Dir(tree) => {
                let mut below = path.clone();
                below.push(b'/');
                self.open_dir(tree, below)?;
            }
            EntryKind::File(content) => match entry.hardlink_key() {
                Some(key) if self.links.contains_key(&key) => {
                    link_to = self.links.get(&key).cloned()
                }
                key => {
                    if let Some(key) = key {
                        self.links.insert(key, path.clone());
                    }
                    self.chunks = sized_file_chunks(self.repo, content, entry.size)?.into_iter();
                }
            },
            _ => {}
        }
        self.pending.push(Item {
            path,
            entry,
            link_to,
        });
        Ok(())
    }
}

/// Writes items and file bytes to the archive, padding each file's data to the block.
struct ArchiveWriter<'b, W: Write> {
    archive: &'b mut tar::Builder<W>,
    stats: DumpStats,
    /// The current file's size, and its bytes still to come.
    file_size: u64,
    file_left: u64,
}

impl<W: Write> ArchiveWriter<'_, W> {
    fn item(&mut self, item: &Item) -> Result<()> {
        let entry = &item.entry;
        let writing = |e| {
            Error::io(
                format!(
                    "writing {} to the archive",
                    String::from_utf8_lossy(&item.path)
                ),
                e,
            )
        };
        let extended = extended_records(entry);
        if !extended.is_empty() {
            let mut header = Header::new_ustar();
            header.set_entry_type(EntryType::XHeader);
            header.set_size(extended.len() as u64);
            header.set_mode(0o644);
            let name = item
                .path
                .rsplit(|&b| b == b'/')
                .next()
                .unwrap_or(&item.path);
            let mut pax_path = b"PaxHeaders/".to_vec();
            pax_path.extend_from_slice(&name[..name.len().min(80)]);
            self.archive
                .append_data(&mut header, as_path(&pax_path), extended.as_slice())
                .map_err(writing)?;
        }
        let mut header = header_of(entry);
        let mut path = item.path.clone();
        match (&item.link_to, &entry.kind) {
            (Some(first), _) => {
                header.set_entry_type(EntryType::Link);
                header.set_size(0);
                self.archive
                    .append_link(&mut header, as_path(&path), as_path(first))
                    .map_err(writing)?;
            }
            (None, EntryKind::Symlink(target)) => {
                self.archive
                    .append_link(&mut header, as_path(&path), as_path(target))
                    .map_err(writing)?;
            }
            (None, kind) => {
                if matches!(kind, EntryKind::Dir(_)) {
                    path.push(b'/');
                }
                // The header alone: a file's bytes follow as its chunks arrive.
                self.archive
                    .append_data(&mut header, as_path(&path), std::io::empty())
                    .map_err(writing)?;
                if matches!(kind, EntryKind::File(_)) {
                    self.file_size = entry.size;
                    self.file_left = entry.size;
                    self.stats.bytes += entry.size;
                }
            }
        }
        self.stats.entries += 1;
        Ok(())
    }

    fn file_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        let writing = |e| Error::io("writing to the archive", e);
        let length = bytes.len() as u64;
        // Nothing to write, and the padding is written once, by the write that ends the file.
        if length == 0 {
            return Ok(());
        }
        // sized_file_chunks checked that the chunks add up to the size in the header.
        debug_assert!(length <= self.file_left);
        self.file_left -= length;
        let out = self.archive.get_mut();
        out.write_all(bytes).map_err(writing)?;
        if self.file_left == 0 {
            let padding = (512 - self.file_size % 512) % 512;
            out.write_all(&[0; 512][..padding as usize])
                .map_err(writing)?;
        }
        Ok(())
    }
}

fn as_path(bytes: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(bytes))
}

/// The GNU header of `entry`, without its path (set when appended).
fn header_of(entry: &Entry) -> Header {
    let mut header = Header::new_gnu();
    header.set_mode(entry.mode);
    header.set_uid(u64::from(entry.uid));
    header.set_gid(u64::from(entry.gid));
    // Names too long for the header are left out; the numbers are always there.
    if let Some(user) = &entry.user {
        let _ = header.set_username(user);
    }
    if let Some(group) = &entry.group {
        let _ = header.set_groupname(group);
    }
    let (seconds, _) = crate::timestamp::to_parts(entry.mtime_ns);
    header.set_mtime(seconds.max(0) as u64);
    header.set_size(0);
    let kind = match &entry.kind {
        EntryKind::File(_) => {
            header.set_size(entry.size);
            EntryType::Regular
        }
        EntryKind::Dir(_) => EntryType::Directory,
        EntryKind::Symlink(_) => EntryType::Symlink,
        EntryKind::Fifo => EntryType::Fifo,
        EntryKind::CharDevice(device) | EntryKind::BlockDevice(device) => {
            let _ = header.set_device_major(libc::major(*device));
            let _ = header.set_device_minor(libc::minor(*device));
            match entry.kind {
                EntryKind::CharDevice(_) => EntryType::Char,
                _ => EntryType::Block,
            }
        }
    };
    header.set_entry_type(kind);
    header
}

/// The POSIX extended header records `entry` needs: an exact modification time when it has
/// nanoseconds or is before 1970, and its extended attributes.
fn extended_records(entry: &Entry) -> Vec<u8> {
    let mut records = Vec::new();
    let (seconds, nanos) = crate::timestamp::to_parts(entry.mtime_ns);
    if nanos != 0 || seconds < 0 {
        let value = match nanos {
            0 => seconds.to_string(),
            // to_parts gives nanoseconds in 0..1e9 after floor division of the seconds.
            _ if seconds < 0 => format!("-{}.{:09}", -(seconds + 1), 1_000_000_000 - nanos),
            _ => format!("{seconds}.{nanos:09}"),
        };
        push_record(&mut records, b"mtime", value.as_bytes());
    }
    for xattr in &entry.xattrs {
        let mut key = b"SCHILY.xattr.".to_vec();
        key.extend_from_slice(&xattr.name);
        push_record(&mut records, &key, &xattr.value);
    }
    records
}

/// Appends one `length key=value\n` record, whose length counts its own digits.
fn push_record(records: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut length = rest + 1;
    while length.to_string().len() + rest != length {
        length += 1;
    }
    records.extend_from_slice(length.to_string().as_bytes());
    records.push(b' ');
    records.extend_from_slice(key);
    records.push(b'=');
    records.extend_from_slice(value);
    records.push(b'\n');
}

/// A writer that refuses every write once `broken` is set, so nothing (such as the builder's
/// end-of-archive blocks) follows a failure.
struct StopAfterError<'a, W> {
    out: W,
    broken: &'a Cell<bool>,
}

impl<W: Write> Write for StopAfterError<'_, W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.broken.get() {
            return Err(std::io::Error::other("the archive was abandoned"));
        }
        self.out.write(bytes)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extended_records_count_their_own_length() {
        let mut records = Vec::new();
        push_record(&mut records, b"mtime", b"1.5");
        assert_eq!(records, b"13 mtime=1.5\n");
        let mut long = Vec::new();
        push_record(&mut long, b"k", &[b'v'; 95]);
        assert_eq!(long.len(), 102);
        assert!(long.starts_with(b"102 k="));
    }
}
