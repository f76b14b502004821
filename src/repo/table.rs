//! How pack headers and index files list the blobs of a pack (docs/FORMAT.md §8, §9). A
//! pack holds **frames**, each compressed and sealed as one object; a frame holds one blob or,
//! from format 3 on, several small blobs of one kind whose plaintexts follow each other. Two
//! layouts of the table exist:
//!
//! - **entries** (formats 1 and 2): one 45-byte entry per blob, every frame holding one blob;
//! - **frames** (format 3): per frame its kind, stored length and blob count, then per blob its
//!   id and plaintext length; offsets follow from the lengths, so a small blob costs 36 bytes.
//!
//! Either layout parses into the same `PackEntry` per blob. The local cache keeps one more
//! record per blob (`CACHED_ENTRY_BYTES`), which says where in its frame the blob lies.

use super::pack::{BlobKind, PackEntry};
use crate::error::{Error, Result};
use crate::id::{BlobId, ID_BYTES};

/// The frames of a table's entries (in pack order, a frame's blobs together): each run of
/// entries at one offset.
pub fn frames(entries: &[PackEntry]) -> impl Iterator<Item = &[PackEntry]> {
    entries.chunk_by(|a, b| a.offset == b.offset)
}

/// Whether `frame` (entries at one offset) lists every blob of one frame, in order: one
/// kind and stored length, each blob starting where the one before ends, up to the frame's
/// recorded plaintext length.
pub fn is_whole_frame(frame: &[PackEntry]) -> bool {
    let Some(first) = frame.first() else {
        return false;
    };
    let whole = frame.iter().try_fold(0u32, |at, entry| {
        let same = entry.kind == first.kind
            && entry.length == first.length
            && entry.frame_raw_length == first.frame_raw_length;
        (same && entry.frame_at == at).then(|| at.checked_add(entry.raw_length))?
    });
    whole == Some(first.frame_raw_length)
}

/// Bytes of one entry in the entries layout.
pub const ENTRY_BYTES: usize = ID_BYTES + 1 + 4 + 4 + 4;

/// Bytes of a blob's record in the local cache: an entry and where it lies in its frame.
pub const CACHED_ENTRY_BYTES: usize = ENTRY_BYTES + 4 + 4;

/// Bytes of a frame's head in the frames layout (kind, stored length, blob count), and of
/// each blob after it (id, plaintext length).
const FRAME_HEAD_BYTES: usize = 1 + 4 + 4;
const FRAMED_BLOB_BYTES: usize = ID_BYTES + 4;

/// The most plaintext one frame of several blobs may hold. Writers fill such frames with
/// small blobs up to far less; readers refuse more before reading the frame, so a hostile
/// table cannot make them decompress more than this to reach one blob.
pub const MAX_SHARED_FRAME_BYTES: u32 = 16 << 20;

/// How a repository's pack headers and index files list blobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One entry per blob, each blob its own frame (formats 1 and 2).
    Entries,
    /// Frames of one or more blobs (format 3).
    Frames,
}

impl Layout {
    /// The layout of repository format `version`.
    pub fn of_format(version: u32) -> Self {
        if version >= 3 {
            Layout::Frames
        } else {
            Layout::Entries
        }
    }

    /// Appends the table of `entries` (in pack order, a frame's blobs together) to `out`;
    /// with `offsets` (index files) each frame states where it starts in the pack. The
    /// entries layout can only list blobs alone in their frames.
    pub fn encode(self, entries: &[PackEntry], offsets: bool, out: &mut Vec<u8>) {
        match self {
            Layout::Entries => {
                for entry in entries {
                    assert!(
                        entry.is_alone(),
                        "formats 1 and 2 have no frames of several blobs"
                    );
                    write_entry(entry, out);
                }
            }
            Layout::Frames => {
                for frame in frames(entries) {
                    let first = &frame[0];
                    assert!(
                        is_whole_frame(frame),
                        "a table lists every blob of a frame, in order"
                    );
                    if offsets {
                        out.extend_from_slice(&first.offset.to_le_bytes());
                    }
                    out.push(first.kind.code());
                    out.extend_from_slice(&first.length.to_le_bytes());
                    let count = u32::try_from(frame.len()).expect("a frame holds few blobs");
                    out.extend_from_slice(&count.to_le_bytes());
                    for entry in frame {
                        out.extend_from_slice(&entry.id.0);
                        out.extend_from_slice(&entry.raw_length.to_le_bytes());
                    }
                }
            }
        }
    }

    /// Parses one table: all of `bytes` (`frames: None`), or `frames` frames from its start
    /// (index files, whose records count frames). Pack headers (`offsets` false) place each
    /// frame right after the one before it. Returns the entries and the bytes consumed.
    pub fn parse(
        self,
        bytes: &[u8],
        offsets: bool,
        frames: Option<u32>,
        location: &dyn Fn() -> String,
    ) -> Result<(Vec<PackEntry>, usize)> {
        match self {
            Layout::Entries => {
                let length = match frames {
                    Some(count) => (count as usize)
                        .checked_mul(ENTRY_BYTES)
                        .filter(|&length| length <= bytes.len())
                        .ok_or_else(|| Error::corrupt(location(), "truncated table"))?,
                    None if bytes.len().is_multiple_of(ENTRY_BYTES) => bytes.len(),
                    None => {
                        return Err(Error::corrupt(
                            location(),
                            "header length is not a whole number of entries",
                        ));
                    }
                };
                let entries = bytes[..length]
                    .chunks_exact(ENTRY_BYTES)
                    .map(|raw| {
                        read_entry(raw).ok_or_else(|| Error::corrupt(location(), "bad entry"))
                    })
                    .collect::<Result<_>>()?;
                Ok((entries, length))
            }
            Layout::Frames => parse_frames(bytes, offsets, frames, location),
        }
    }
}

/// The frames layout's parser: see [`Layout::parse`].
fn parse_frames(
    bytes: &[u8],
    offsets: bool,
    frames: Option<u32>,
    location: &dyn Fn() -> String,
) -> Result<(Vec<PackEntry>, usize)> {
    let corrupt = |what: &str| Error::corrupt(location(), what.to_owned());
    let mut entries = Vec::new();
    let (mut at, mut next_offset, mut parsed) = (0usize, 0u64, 0u32);
    while frames.map_or(at < bytes.len(), |count| parsed < count) {
        let mut take = |n: usize| {
            let taken = bytes
                .get(at..at + n)
                .ok_or_else(|| corrupt("truncated table"));
            at += n;
            taken
        };
        let u32_of = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes"));
        let offset = match offsets {
            true => u64::from(u32_of(take(4)?)),
            false => next_offset,
        };
        let head = take(FRAME_HEAD_BYTES)?;
        let kind = BlobKind::from_code(head[0]).ok_or_else(|| corrupt("unknown blob kind"))?;
        let length = u32_of(&head[1..5]);
        let count = u32_of(&head[5..9]);
        if count == 0 {
            return Err(corrupt("a frame without blobs"));
        }
        let blobs = take(
            (count as usize)
                .checked_mul(FRAMED_BLOB_BYTES)
                .ok_or_else(|| corrupt("truncated table"))?,
        )?;
        let offset = u32::try_from(offset).map_err(|_| corrupt("frames past 4 GiB"))?;
        let first = entries.len();
        let mut frame_raw_length = 0u32;
        for blob in blobs.chunks_exact(FRAMED_BLOB_BYTES) {
            let raw_length = u32_of(&blob[ID_BYTES..]);
            entries.push(PackEntry {
                id: BlobId::from_slice(&blob[..ID_BYTES]).expect("32 bytes"),
                kind,
                offset,
                length,
                raw_length,
                frame_at: frame_raw_length,
                frame_raw_length: 0,
            });
            frame_raw_length = frame_raw_length
                .checked_add(raw_length)
                .filter(|&total| count == 1 || total <= MAX_SHARED_FRAME_BYTES)
                .ok_or_else(|| {
                    corrupt(&format!(
                        "a frame of several blobs holding more than {MAX_SHARED_FRAME_BYTES} bytes"
                    ))
                })?;
        }
        for entry in &mut entries[first..] {
            entry.frame_raw_length = frame_raw_length;
        }
        next_offset = u64::from(offset) + u64::from(length);
        parsed += 1;
    }
    Ok((entries, at))
}

/// Appends one 45-byte entry (the entries layout).
fn write_entry(entry: &PackEntry, out: &mut Vec<u8>) {
    out.extend_from_slice(&entry.id.0);
    out.push(entry.kind.code());
    out.extend_from_slice(&entry.offset.to_le_bytes());
    out.extend_from_slice(&entry.length.to_le_bytes());
    out.extend_from_slice(&entry.raw_length.to_le_bytes());
}

/// Parses one 45-byte entry (the entries layout): a blob alone in its frame.
fn read_entry(bytes: &[u8]) -> Option<PackEntry> {
    let u32_at = |at: usize| Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
    let raw_length = u32_at(ID_BYTES + 9)?;
    Some(PackEntry {
        id: BlobId::from_slice(bytes.get(..ID_BYTES)?)?,
        kind: BlobKind::from_code(*bytes.get(ID_BYTES)?)?,
        offset: u32_at(ID_BYTES + 1)?,
        length: u32_at(ID_BYTES + 5)?,
        raw_length,
        frame_at: 0,
        frame_raw_length: raw_length,
    })
}

/// The local cache's record of `entry`: its entry, then where it lies in its frame.
pub fn cached_entry(entry: &PackEntry) -> Vec<u8> {
    let mut out = Vec::with_capacity(CACHED_ENTRY_BYTES);
    write_entry(entry, &mut out);
    out.extend_from_slice(&entry.frame_at.to_le_bytes());
    out.extend_from_slice(&entry.frame_raw_length.to_le_bytes());
    out
}

/// Parses a record `cached_entry` wrote (`None` when it is not one).
pub fn read_cached_entry(bytes: &[u8]) -> Option<PackEntry> {
    if bytes.len() != CACHED_ENTRY_BYTES {
        return None;
    }
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    Some(PackEntry {
        frame_at: u32_at(ENTRY_BYTES),
        frame_raw_length: u32_at(ENTRY_BYTES + 4),
        ..read_entry(&bytes[..ENTRY_BYTES])?
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Entries of frames of the given blob counts, laid out one after another.
    fn framed(counts: &[usize]) -> Vec<PackEntry> {
        let mut entries = Vec::new();
        let mut offset = 0;
        for (f, &count) in counts.iter().enumerate() {
            let raws: Vec<u32> = (0..count as u32).map(|b| 100 + b * 7 + f as u32).collect();
            let total: u32 = raws.iter().sum();
            let mut at = 0;
            for (b, raw) in raws.iter().enumerate() {
                entries.push(PackEntry {
                    id: BlobId([(f * 16 + b) as u8; 32]),
                    kind: if f % 2 == 0 {
                        BlobKind::Data
                    } else {
                        BlobKind::Tree
                    },
                    offset,
                    length: 50 + f as u32,
                    raw_length: *raw,
                    frame_at: at,
                    frame_raw_length: total,
                });
                at += raw;
            }
            offset += 50 + f as u32;
        }
        entries
    }

    proptest! {
        #[test]
        fn both_layouts_round_trip(counts in proptest::collection::vec(1usize..5, 0..8), offsets: bool) {
            let entries = framed(&counts);
            let mut bytes = Vec::new();
            Layout::Frames.encode(&entries, offsets, &mut bytes);
            let parsed = Layout::Frames.parse(&bytes, offsets, None, &|| "t".into()).unwrap();
            prop_assert_eq!(&parsed, &(entries.clone(), bytes.len()));
            let counted = Layout::Frames.parse(&bytes, offsets, Some(counts.len() as u32), &|| "t".into()).unwrap();
            prop_assert_eq!(&counted, &parsed);
            if !bytes.is_empty() {
                prop_assert!(Layout::Frames.parse(&bytes[..bytes.len() - 1], offsets, None, &|| "t".into()).is_err());
            }

            let alone = framed(&vec![1; counts.len()]);
            let mut bytes = Vec::new();
            Layout::Entries.encode(&alone, offsets, &mut bytes);
            prop_assert_eq!(bytes.len(), alone.len() * ENTRY_BYTES);
            prop_assert_eq!(Layout::Entries.parse(&bytes, offsets, None, &|| "t".into()).unwrap(), (alone.clone(), bytes.len()));
            for entry in &alone {
                prop_assert_eq!(read_cached_entry(&cached_entry(entry)), Some(*entry));
            }
        }

        #[test]
        fn hostile_tables_are_refused_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..200), offsets: bool, frames in proptest::option::of(0u32..10)) {
            for layout in [Layout::Entries, Layout::Frames] {
                if let Ok((entries, used)) = layout.parse(&bytes, offsets, frames, &|| "t".into()) {
                    prop_assert!(used <= bytes.len());
                    for entry in entries {
                        prop_assert!(entry.frame_at.checked_add(entry.raw_length).is_some_and(|end| end <= entry.frame_raw_length));
                    }
                }
            }
        }
    }

    #[test]
    fn a_shared_frame_is_bounded_and_frames_hold_blobs() {
        let mut bytes = vec![0u8];
        bytes.extend_from_slice(&100u32.to_le_bytes());
        bytes.extend_from_slice(&2u32.to_le_bytes());
        for raw in [MAX_SHARED_FRAME_BYTES, 1] {
            bytes.extend_from_slice(&[7; 32]);
            bytes.extend_from_slice(&raw.to_le_bytes());
        }
        let refused = Layout::Frames.parse(&bytes, false, None, &|| "t".into());
        assert!(refused.unwrap_err().to_string().contains("several blobs"));

        let mut empty = vec![0u8];
        empty.extend_from_slice(&100u32.to_le_bytes());
        empty.extend_from_slice(&0u32.to_le_bytes());
        assert!(
            Layout::Frames
                .parse(&empty, false, None, &|| "t".into())
                .is_err()
        );
    }

    #[test]
    fn formats_before_3_list_entries() {
        assert_eq!(Layout::of_format(1), Layout::Entries);
        assert_eq!(Layout::of_format(2), Layout::Entries);
        assert_eq!(Layout::of_format(3), Layout::Frames);
    }
}
