//! What a client and `cairn serve` say to each other. About a served repository: JSON
//! listings of objects (`ListedObject`) and range requests (`repo::backend::RangeRequest`);
//! the objects themselves cross as stored. About a live source directory, encoded with
//! postcard: the client lists directories (`GET …/list?path=HEX`: the entries as
//! cairn tree entries, in one zstd frame), asks for the chunk lists of changed files
//! (`POST …/chunks`, many files per request), and then for just the chunks it lacks
//! (`POST …/blobs`, many files per request, the answer one zstd frame), checking every chunk
//! against its id. The server chunks with the client's parameters: for a repository, its
//! chunker, gear seed and id key, so the ids are the repository's own; for a plain directory,
//! small chunks and unkeyed BLAKE3. It never sees the repository's encryption key.

use crate::chunker::{Chunker, ChunkerParams};
use crate::error::{Error, Result};
use crate::id::{BlobId, TreeId};
use crate::tree::{ChunkRef, Content, Entry, EntryKind, Listed};
use serde::{Deserialize, Serialize};
use std::io::Read;

/// A listing of one directory larger than this (decompressed) is refused: over a million
/// entries.
pub const MAX_LISTING_BYTES: u64 = 128 << 20;

/// Bytes of chunks one `blobs` request may ask for.
pub const MAX_BLOBS_BYTES: u64 = 256 << 20;

/// How the server must chunk and name chunks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChunkSpec {
    pub params: ChunkerParams,
    pub seed: u64,
    /// The repository's id key; `None` for plain BLAKE3 ids.
    pub id_key: Option<[u8; 32]>,
}

impl ChunkSpec {
    /// Small chunks (1 KiB / 4 KiB / 32 KiB), unkeyed ids: what a sync between directories
    /// uses. Without a repository to keep small, chunks only decide what crosses, and small
    /// ones let a few changed bytes in a small file cost a few KiB, not the whole file.
    pub fn plain() -> Self {
        ChunkSpec {
            params: ChunkerParams {
                min_bytes: 1024,
                avg_bytes: 4096,
                max_bytes: 32 * 1024,
            },
            seed: 0,
            id_key: None,
        }
    }

    /// The chunking and ids of `repo`.
    pub fn of(repo: &crate::repo::Repository) -> Self {
        let key = repo.codec().master_key();
        ChunkSpec {
            params: repo.config().chunker,
            seed: key.map_or(0, |k| k.chunker_seed()),
            id_key: key.map(|k| *k.id_key()),
        }
    }

    pub fn chunker(&self) -> Result<Chunker> {
        Chunker::new(self.params, self.seed)
    }

    pub fn id_of(&self, data: &[u8]) -> BlobId {
        BlobId(match &self.id_key {
            Some(key) => *blake3::keyed_hash(key, data).as_bytes(),
            None => *blake3::hash(data).as_bytes(),
        })
    }
}

/// One directory of a `GET …/tree` answer: its path below the source and its entries (or why
/// it could not be listed). The answer is one zstd stream of these, each behind its length
/// (u32, little-endian), in depth-first order by name: a directory, then each of its
/// subdirectories' records in turn, the order in which a sync visits them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TreeRecord {
    pub path: serde_bytes::ByteBuf,
    pub entries: std::result::Result<Vec<WireEntry>, String>,
}

/// A listed entry as the protocol carries it: in the encoding of a tree's entry, where a
/// directory's tree id is all zeros and a file's chunk list empty, since a listing has
/// neither. Read back, whatever a server put there is dropped (`listed`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WireEntry(Entry);

impl From<Listed> for WireEntry {
    fn from(listed: Listed) -> Self {
        let kind = match listed.kind.stored() {
            Some(kind) => kind,
            None if listed.is_dir() => EntryKind::Dir(TreeId([0; 32])),
            None => EntryKind::File(Content::Chunks(Vec::new())),
        };
        WireEntry(listed.with_kind(kind))
    }
}

impl WireEntry {
    /// The entry as listed.
    pub fn listed(self) -> Listed {
        self.0.into_listed()
    }
}

/// Entries as the protocol carries them.
pub fn to_wire(entries: Vec<Listed>) -> Vec<WireEntry> {
    entries.into_iter().map(WireEntry::from).collect()
}

/// Entries the protocol carried, as listed.
pub fn from_wire(entries: Vec<WireEntry>) -> Vec<Listed> {
    entries.into_iter().map(WireEntry::listed).collect()
}

/// Clears what a sync between directories never reads, so listings cross smaller: the
/// ctime, and the device and inode of files that are not hard links.
pub fn lean_entry(mut entry: Listed) -> Listed {
    entry.ctime_ns = 0;
    if entry.links <= 1 || entry.is_dir() {
        entry.device = 0;
        entry.inode = 0;
    }
    entry
}

/// `POST …/chunks`: the chunk lists of the regular files at `paths` (below the source).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChunksRequest {
    pub spec: ChunkSpec,
    pub paths: Vec<serde_bytes::ByteBuf>,
}

/// The answer to `ChunksRequest`: one chunk list per path, or why that file failed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChunksResponse {
    pub files: Vec<std::result::Result<Vec<ChunkRef>, String>>,
}

/// The ranges wanted of one file: (offset, length) pairs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileRanges {
    pub path: serde_bytes::ByteBuf,
    pub ranges: Vec<(u64, u32)>,
}

/// `POST …/blobs`: the bytes at these ranges of these files, all of them one after another
/// in a single zstd frame (one compression context for the whole answer).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlobsRequest {
    pub files: Vec<FileRanges>,
}

impl BlobsRequest {
    pub fn bytes(&self) -> u64 {
        let ranges = self.files.iter().flat_map(|f| &f.ranges);
        ranges.map(|r| r.1 as u64).sum()
    }
}

/// The most bytes zstd can make of `raw` bytes: the bound of a compressed answer.
pub fn max_compressed_bytes(raw: u64) -> u64 {
    let raw = usize::try_from(raw).unwrap_or(usize::MAX);
    u64::try_from(zstd::zstd_safe::compress_bound(raw)).unwrap_or(u64::MAX)
}

/// Reads a `BlobsRequest` answer (one zstd frame) from `answer` and splits it into its
/// parts: per file, one buffer per range. Each part grows as its bytes arrive, and the
/// answer must hold exactly the bytes asked for.
pub fn read_blobs(
    answer: impl std::io::Read,
    request: &BlobsRequest,
    what: &str,
) -> Result<Vec<Vec<Vec<u8>>>> {
    use std::io::Read;
    let unreadable = |e: std::io::Error| Error::corrupt(what, format!("unreadable chunks: {e}"));
    let mut data = zstd::stream::read::Decoder::new(answer).map_err(unreadable)?;
    let mut out = Vec::with_capacity(request.files.len());
    for file in &request.files {
        let mut parts = Vec::with_capacity(file.ranges.len());
        for &(_, length) in &file.ranges {
            let mut part = Vec::new();
            (&mut data)
                .take(u64::from(length))
                .read_to_end(&mut part)
                .map_err(unreadable)?;
            if part.len() != length as usize {
                return Err(Error::corrupt(
                    what,
                    format!(
                        "fewer bytes of chunks than the {} asked for",
                        request.bytes()
                    ),
                ));
            }
            parts.push(part);
        }
        out.push(parts);
    }
    let mut rest = [0u8; 1];
    if data.read(&mut rest).map_err(unreadable)? != 0 {
        return Err(Error::corrupt(
            what,
            format!(
                "more bytes of chunks than the {} asked for",
                request.bytes()
            ),
        ));
    }
    Ok(out)
}

/// `GET …/about`: where a served source lives, so a pull records it as a backup made on that
/// machine would (its host name and the directory's absolute path there).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceAbout {
    pub host: String,
    pub path: String,
}

/// Longest host name (`HOST_NAME_MAX`) and path (`PATH_MAX`) a `SourceAbout` may carry.
pub const MAX_ABOUT_HOST_BYTES: usize = 255;
pub const MAX_ABOUT_PATH_BYTES: usize = 4096;

impl SourceAbout {
    /// Whether a server's answer is usable as a checkpoint's host and path: a plain host
    /// name and an absolute path, both of bounded length and free of control characters.
    pub fn is_plausible(&self) -> bool {
        let plain = |text: &str| !text.chars().any(char::is_control);
        !self.host.is_empty()
            && self.host.len() <= MAX_ABOUT_HOST_BYTES
            && !self.host.contains(['/', ' '])
            && plain(&self.host)
            && self.path.starts_with('/')
            && self.path.len() <= MAX_ABOUT_PATH_BYTES
            && plain(&self.path)
    }
}

/// A listed object, as the server sends it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListedObject {
    pub name: String,
    pub size: u64,
}

/// A path below the source: components joined by `/`, empty for its root.
pub type RemotePath = Vec<u8>;

/// `dir/name`, or `name` at the root.
pub fn child_path(dir: &[u8], name: &[u8]) -> RemotePath {
    if dir.is_empty() {
        return name.to_vec();
    }
    [dir, b"/", name].concat()
}

/// Writes one record of a streamed listing: its length (four bytes, little-endian), then the
/// record, postcard-encoded.
pub fn write_record(out: &mut impl std::io::Write, record: &TreeRecord) -> std::io::Result<()> {
    let encoded = postcard::to_stdvec(record).expect("records serialize");
    out.write_all(&(encoded.len() as u32).to_le_bytes())?;
    out.write_all(&encoded)
}

/// The next record of a streamed listing; `None` at its end.
pub fn read_record(reader: &mut dyn Read) -> std::io::Result<Option<TreeRecord>> {
    let mut length = [0u8; 4];
    match reader.read_exact(&mut length) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let length = u32::from_le_bytes(length) as usize;
    if length as u64 > MAX_LISTING_BYTES {
        return Err(std::io::Error::other("a listing record is too large"));
    }
    // Grown as the bytes arrive: the length the server wrote sizes nothing up front.
    let mut record = Vec::new();
    reader.take(length as u64).read_to_end(&mut record)?;
    if record.len() != length {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
    }
    postcard::from_bytes(&record)
        .map(Some)
        .map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::ListedKind;

    fn listed(name: &[u8], kind: ListedKind) -> Listed {
        Listed {
            name: name.to_vec(),
            kind,
            mode: 0o755,
            uid: 1,
            gid: 2,
            user: None,
            group: None,
            mtime_ns: 3,
            ctime_ns: 4,
            size: 0,
            device: 5,
            inode: 6,
            links: 1,
            xattrs: Vec::new(),
        }
    }

    #[test]
    fn listed_entries_cross_in_the_encoding_of_tree_entries_and_come_back_as_listed() {
        for kind in [
            ListedKind::Dir,
            ListedKind::File,
            ListedKind::Symlink(b"target".to_vec()),
            ListedKind::Fifo,
            ListedKind::CharDevice(7),
        ] {
            let entry = listed(b"e", kind);
            let sent = postcard::to_stdvec(&WireEntry::from(entry.clone())).unwrap();
            // What earlier versions sent: a tree's entry, zeros for a directory's tree and no
            // chunk for a file.
            let stored = match entry.kind.stored() {
                Some(kind) => kind,
                None if entry.is_dir() => EntryKind::Dir(TreeId([0; 32])),
                None => EntryKind::File(Content::Chunks(Vec::new())),
            };
            let before = postcard::to_stdvec(&entry.clone().with_kind(stored)).unwrap();
            assert_eq!(sent, before);
            let back: WireEntry = postcard::from_bytes(&sent).unwrap();
            assert_eq!(back.listed(), entry);
        }
        // Whatever a server puts where a listing has nothing is dropped.
        let hostile = listed(b"d", ListedKind::Dir).with_kind(EntryKind::Dir(TreeId([9; 32])));
        let sent = postcard::to_stdvec(&hostile).unwrap();
        let back: WireEntry = postcard::from_bytes(&sent).unwrap();
        assert_eq!(back.listed().kind, ListedKind::Dir);
    }
}
