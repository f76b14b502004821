//! Pack files: many encoded blobs appended one after another, then the encoded pack header
//! listing every blob, then the header's length as a little-endian u32. A pack is built in
//! memory up to `PACK_TARGET_BYTES` and stored with one atomic put; its id is the plain BLAKE3
//! hash of its bytes, so a pack that was changed or truncated no longer matches its name.

use super::backend::Backend;
use super::codec::Codec;
use crate::error::{Error, Result};
use crate::fs::uncached::AlignedBytes;
use crate::id::{BlobId, PackId};
use crate::repo::objects::ObjectKind;
use serde::{Deserialize, Serialize};

/// A pack is closed once it holds this many bytes.
pub const PACK_TARGET_BYTES: usize = 16 * 1024 * 1024;

/// The largest tree blob: a directory of roughly 600,000 entries. Readers refuse a tree that
/// claims more before reading it, so a hostile one costs at most this much memory (and its
/// decoded entries a few times more); writers refuse to store a larger one.
pub const MAX_TREE_BYTES: u32 = 64 << 20;

/// The most chunks one file may have: 4 TiB at the default 1 MiB average chunk.
pub const MAX_FILE_CHUNKS: u32 = 1 << 22;

/// The largest chunk list blob: `MAX_FILE_CHUNKS` chunk references of at most 37 bytes each
/// (a 32-byte id and a varint length) after a count of at most 10 bytes.
pub const MAX_CHUNK_LIST_BYTES: u32 = 10 + MAX_FILE_CHUNKS * 37;

/// The largest pack header plaintext accepted: about 6 million entries, far more than a
/// 16 MiB pack of distinct blobs can hold in practice.
pub const MAX_HEADER_BYTES: u64 = 256 << 20;

/// What a blob holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BlobKind {
    /// A chunk of a file.
    Data,
    /// A directory object.
    Tree,
    /// The chunk list of a very large file.
    ChunkList,
}

impl BlobKind {
    pub(crate) fn code(self) -> u8 {
        match self {
            BlobKind::Data => 0,
            BlobKind::Tree => 1,
            BlobKind::ChunkList => 2,
        }
    }

    /// The largest plaintext a blob of this kind may have. Every read checks a blob's recorded
    /// raw length against it before reading the blob, and decodes no further than the
    /// recorded length, so no stored object can make a reader allocate more.
    pub fn max_raw_length(self) -> u32 {
        match self {
            BlobKind::Data => crate::chunker::MAX_CHUNK_BYTES,
            BlobKind::Tree => MAX_TREE_BYTES,
            BlobKind::ChunkList => MAX_CHUNK_LIST_BYTES,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(BlobKind::Data),
            1 => Some(BlobKind::Tree),
            2 => Some(BlobKind::ChunkList),
            _ => None,
        }
    }
}

/// Where one blob sits inside its pack: in a frame, stored bytes `offset..offset + length` of
/// the pack compressed and sealed as one object, whose plaintext holds this blob's at
/// `frame_at..frame_at + raw_length` (docs/FORMAT.md §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackEntry {
    pub id: BlobId,
    pub kind: BlobKind,
    /// Where the blob's frame starts in the pack.
    pub offset: u32,
    /// Bytes of the frame as stored (encoded).
    pub length: u32,
    /// Bytes of the blob's plaintext.
    pub raw_length: u32,
    /// Where the blob's plaintext starts in its frame's (0 for a blob alone in its frame).
    pub frame_at: u32,
    /// Bytes of the frame's plaintext (`raw_length` for a blob alone in its frame).
    pub frame_raw_length: u32,
}

impl PackEntry {
    /// The entry of a blob stored alone in its frame.
    pub fn alone(id: BlobId, kind: BlobKind, offset: u32, length: u32, raw_length: u32) -> Self {
        PackEntry {
            id,
            kind,
            offset,
            length,
            raw_length,
            frame_at: 0,
            frame_raw_length: raw_length,
        }
    }

    /// Whether the blob's frame holds it alone.
    pub fn is_alone(&self) -> bool {
        self.frame_at == 0 && self.frame_raw_length == self.raw_length
    }

    /// The blob's share of its frame's stored bytes (all of them when alone, else in
    /// proportion to its plaintext), so shares of a frame's blobs add up to its length.
    pub fn stored_share(&self) -> u64 {
        match self.is_alone() {
            true => u64::from(self.length),
            false => {
                u64::from(self.length) * u64::from(self.raw_length)
                    / u64::from(self.frame_raw_length).max(1)
            }
        }
    }
}

/// The storage name of a pack: `data/<first two hex digits>/<hex id>`.
pub fn pack_object_name(id: &PackId) -> String {
    let hex = id.to_hex();
    format!("{}{}/{hex}", ObjectKind::Pack.prefix(), &hex[..2])
}

/// The pack a `data/` object name stands for; `None` when the name is not a pack's.
pub fn pack_id_of_object(name: &str) -> Option<PackId> {
    PackId::from_hex(name.rsplit('/').next().unwrap_or_default())
}

/// A pack being filled.
#[derive(Default)]
pub struct PackBuilder {
    /// Page-aligned, so a local repository writes the pack around the page cache.
    bytes: AlignedBytes,
    entries: Vec<PackEntry>,
    /// A stored pack's memory, for the next pack to fill.
    spare: AlignedBytes,
}

impl PackBuilder {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.bytes.len() >= PACK_TARGET_BYTES
    }

    /// Appends blob `id`, stored alone in its frame as `encoded`.
    pub fn add(&mut self, id: BlobId, kind: BlobKind, encoded: &[u8], raw_length: usize) {
        let raw_length = u32::try_from(raw_length).expect("blobs stay far below 4 GiB");
        self.add_frame(kind, encoded, &[(id, raw_length)]);
    }

    /// Appends one frame, stored as `encoded`, holding `blobs` (id and plaintext length) one
    /// after another, all of `kind`.
    pub fn add_frame(&mut self, kind: BlobKind, encoded: &[u8], blobs: &[(BlobId, u32)]) {
        if self.bytes.capacity() == 0 {
            self.bytes = std::mem::take(&mut self.spare);
            self.bytes
                .reserve(PACK_TARGET_BYTES + PACK_TARGET_BYTES / 2);
        }
        let offset = u32::try_from(self.bytes.len()).expect("packs stay far below 4 GiB");
        let length = u32::try_from(encoded.len()).expect("frames stay far below 4 GiB");
        let frame_raw_length = blobs.iter().map(|(_, raw)| raw).sum();
        let mut frame_at = 0;
        for &(id, raw_length) in blobs {
            self.entries.push(PackEntry {
                id,
                kind,
                offset,
                length,
                raw_length,
                frame_at,
                frame_raw_length,
            });
            frame_at += raw_length;
        }
        self.bytes.extend_from_slice(encoded);
    }

    /// Moves the frames of `other` in after this pack's; `other` is empty afterwards.
    pub fn take_from(&mut self, other: &mut PackBuilder) {
        let bytes = std::mem::take(&mut other.bytes);
        let entries = std::mem::take(&mut other.entries);
        for frame in super::table::frames(&entries) {
            let start = frame[0].offset as usize;
            let encoded = &bytes[start..start + frame[0].length as usize];
            let blobs: Vec<_> = frame.iter().map(|e| (e.id, e.raw_length)).collect();
            self.add_frame(frame[0].kind, encoded, &blobs);
        }
    }

    /// Keeps `bytes` (a finished pack's, stored) for the next pack to fill: its pages are the
    /// process's already, where fresh memory faults each one in.
    pub fn reuse(&mut self, mut bytes: AlignedBytes) {
        bytes.clear();
        if bytes.capacity() > self.spare.capacity() {
            self.spare = bytes;
        }
    }

    /// Appends the header and returns the pack's id, bytes and entries; the builder is empty
    /// afterwards.
    pub fn finish(&mut self, codec: &Codec) -> (PackId, AlignedBytes, Vec<PackEntry>) {
        let mut header = Vec::new();
        codec.layout().encode(&self.entries, false, &mut header);
        let encoded_header = codec.encode(&header, false);
        let mut bytes = std::mem::take(&mut self.bytes);
        bytes.extend_from_slice(&encoded_header);
        let header_len = u32::try_from(encoded_header.len()).expect("headers stay small");
        bytes.extend_from_slice(&header_len.to_le_bytes());
        let id = PackId(*blake3::hash(&bytes).as_bytes());
        (id, bytes, std::mem::take(&mut self.entries))
    }
}

/// Bytes of the trailer that gives the header's length.
const HEADER_LENGTH_BYTES: usize = 4;

/// Where the header of a pack of `pack_len` bytes starts, given its trailer.
fn header_start(pack_len: usize, trailer: &[u8], location: &dyn Fn() -> String) -> Result<usize> {
    let truncated = || Error::corrupt(location(), "truncated pack (no valid header)");
    let len_at = pack_len
        .checked_sub(HEADER_LENGTH_BYTES)
        .ok_or_else(truncated)?;
    let header_len = u32::from_le_bytes(trailer.try_into().map_err(|_| truncated())?) as usize;
    len_at.checked_sub(header_len).ok_or_else(truncated)
}

/// Decodes the header that starts at `header_at` and checks that every entry lies before it.
fn decode_header(
    encoded: &[u8],
    header_at: usize,
    codec: &Codec,
    location: &dyn Fn() -> String,
) -> Result<Vec<PackEntry>> {
    let plaintext = codec.decode(encoded, MAX_HEADER_BYTES, location)?;
    let (entries, _) = codec.layout().parse(&plaintext, false, None, location)?;
    for entry in &entries {
        if entry.offset as usize + entry.length as usize > header_at {
            return Err(Error::corrupt(
                location(),
                format!("blob {} lies outside the pack", entry.id),
            ));
        }
    }
    Ok(entries)
}

/// Reads the header at the end of a whole pack and checks that every entry lies inside it.
pub fn read_header(
    pack: &[u8],
    codec: &Codec,
    location: &dyn Fn() -> String,
) -> Result<Vec<PackEntry>> {
    let len_at = pack.len().saturating_sub(HEADER_LENGTH_BYTES);
    let header_at = header_start(pack.len(), &pack[len_at..], location)?;
    decode_header(&pack[header_at..len_at], header_at, codec, location)
}

/// Reads the header of stored pack `id`, `size` bytes long, with two ranged reads of its
/// tail, and checks that every entry lies inside the pack.
pub fn fetch_header(
    backend: &dyn Backend,
    id: &PackId,
    size: u64,
    codec: &Codec,
) -> Result<Vec<PackEntry>> {
    let name = pack_object_name(id);
    let location = || format!("pack {id}");
    let size = usize::try_from(size).map_err(|_| Error::corrupt(location(), "too large"))?;
    let len_at = size.saturating_sub(HEADER_LENGTH_BYTES);
    let trailer = backend.get_range(&name, len_at as u64, (size - len_at) as u64)?;
    let header_at = header_start(size, &trailer, &location)?;
    // The trailer's length is checked before anything is read at it.
    if (len_at - header_at) as u64 > MAX_HEADER_BYTES + 64 {
        return Err(Error::corrupt(
            location(),
            format!("a header of {} bytes", len_at - header_at),
        ));
    }
    let encoded = backend.get_range(&name, header_at as u64, (len_at - header_at) as u64)?;
    decode_header(&encoded, header_at, codec, &location)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_next_pack_fills_a_stored_packs_memory_and_starts_empty() {
        let codec = Codec::new(None, 3);
        let mut builder = PackBuilder::default();
        let add = |builder: &mut PackBuilder, blob: &[u8]| {
            builder.add(
                BlobId(codec.id_of(blob)),
                BlobKind::Data,
                &codec.encode(blob, true),
                blob.len(),
            )
        };
        add(&mut builder, b"first pack");
        let (_, stored, _) = builder.finish(&codec);
        let memory = stored.as_ptr();
        add(
            &mut builder,
            b"second pack, filled while the first is stored",
        );
        builder.reuse(stored);
        let (_, second, _) = builder.finish(&codec);
        add(&mut builder, b"third pack");
        let (_, third, entries) = builder.finish(&codec);
        assert_eq!(third.as_ptr(), memory);
        assert_eq!(
            read_header(&third, &codec, &|| "p".into()).unwrap(),
            entries
        );
        assert_eq!(entries[0].offset, 0);
        assert_ne!(second.as_ptr(), memory);
    }

    proptest! {
        #[test]
        fn packs_round_trip(blobs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..20), encrypted: bool) {
            let key = encrypted.then(crate::crypto::MasterKey::generate);
            let codec = Codec::new(key, 3);
            let mut builder = PackBuilder::default();
            for blob in &blobs {
                builder.add(BlobId(codec.id_of(blob)), BlobKind::Data, &codec.encode(blob, true), blob.len());
            }
            let (id, bytes, entries) = builder.finish(&codec);
            prop_assert!(builder.is_empty());
            prop_assert_eq!(id.0, *blake3::hash(&bytes).as_bytes());
            let header = read_header(&bytes, &codec, &|| "p".into()).unwrap();
            prop_assert_eq!(&header, &entries);
            for (entry, blob) in header.iter().zip(&blobs) {
                let stored = &bytes[entry.offset as usize..(entry.offset + entry.length) as usize];
                prop_assert_eq!(&codec.decode_blob(stored, entry, &|| "b".into()).unwrap(), blob);
                prop_assert_eq!(entry.raw_length as usize, blob.len());
            }
            prop_assert!(read_header(&bytes[..bytes.len() - 1], &codec, &|| "p".into()).is_err());

            let dir = tempfile::tempdir().unwrap();
            let backend = crate::repo::backend::LocalBackend::new(dir.path());
            backend.put(&pack_object_name(&id), &bytes).unwrap();
            prop_assert_eq!(&fetch_header(&backend, &id, bytes.len() as u64, &codec).unwrap(), &entries);
            let shorter = &bytes[..bytes.len() - 1];
            backend.put(&pack_object_name(&id), shorter).unwrap();
            prop_assert!(fetch_header(&backend, &id, shorter.len() as u64, &codec).is_err());
        }
    }
}
