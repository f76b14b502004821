//! How one object's plaintext becomes stored bytes and back: a one-byte compression flag
//! (0 = stored raw, 1 = zstd) and the payload, then, in encrypted repositories, sealed with
//! XChaCha20-Poly1305 under a fresh random nonce. zstd is skipped when it does not shrink the
//! data. Ids are BLAKE3 of the plaintext, keyed in encrypted repositories. Decoding checks the
//! MAC; callers then check the id, so wrong bytes are reported, never returned (invariant 3).
//! A blob shares its stored object (its frame) with other small blobs when its pack entry
//! says so (format 3): the frame is decoded whole and the blob cut out of it (the repository
//! keeps decoded frames, so that their blobs are read from one decoding).
//!
//! Every decoding is bounded before it allocates (invariant 7): a blob by the raw length its
//! pack entry records, itself capped by the format's limit for the blob's kind, and any other
//! object by a limit its caller states. A zstd frame that states a larger size, or inflates
//! past the bound, is refused without being decompressed further.

use super::pack::PackEntry;
use super::table::{Layout, MAX_SHARED_FRAME_BYTES};
use crate::crypto::MasterKey;
use crate::error::{Error, Result};
use std::cell::RefCell;
use std::io::Read;

const FLAG_RAW: u8 = 0;
const FLAG_ZSTD: u8 = 1;

/// Bytes sealing adds to the framed bytes (nonce and tag).
const SEAL_OVERHEAD_BYTES: u64 = 40;

thread_local! {
    /// One zstd context per thread and level, reused for every blob.
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(None) };
    /// One zstd decompression context per thread, reused for every blob.
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

fn compress(data: &[u8], level: i32) -> Vec<u8> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            let compressor =
                zstd::bulk::Compressor::new(level).expect("zstd accepts levels 1..=22");
            *slot = Some((level, compressor));
        }
        let (_, compressor) = slot.as_mut().expect("set just above");
        compressor
            .compress(data)
            .expect("zstd compresses into a buffer it sizes itself")
    })
}

/// Decompresses one zstd frame into `into` (whose bytes are dropped and whose room is
/// reused), or `None` when it would give more than `max_bytes`. A frame that states its size
/// (cairn's all do) is refused before anything is allocated when that size is too large, and
/// otherwise decoded into one allocation by this thread's reused context; a frame without a
/// size is streamed and cut off just past `max_bytes`.
fn decompress(
    payload: &[u8],
    max_bytes: u64,
    mut into: Vec<u8>,
) -> std::io::Result<Option<Vec<u8>>> {
    into.clear();
    let stated = zstd::zstd_safe::get_frame_content_size(payload)
        .ok()
        .flatten();
    match stated {
        Some(size) if size > max_bytes => return Ok(None),
        Some(size) => DECOMPRESSOR.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.is_none() {
                *slot = Some(zstd::bulk::Decompressor::new()?);
            }
            let decompressor = slot.as_mut().expect("set just above");
            into.reserve_exact(size as usize);
            decompressor.decompress_to_buffer(payload, &mut into)
        })?,
        None => zstd::stream::Decoder::new(payload)?
            .take(max_bytes + 1)
            .read_to_end(&mut into)?,
    };
    Ok((into.len() as u64 <= max_bytes).then_some(into))
}

/// Encodes and decodes objects for one repository.
#[derive(Clone)]
pub struct Codec {
    key: Option<MasterKey>,
    compression_level: i32,
    layout: Layout,
}

impl Codec {
    /// A codec of the repository format this build writes.
    pub fn new(key: Option<MasterKey>, compression_level: i32) -> Self {
        Codec {
            key,
            compression_level,
            layout: Layout::of_format(super::config::FORMAT_VERSION),
        }
    }

    /// This codec for a repository of format `version`.
    pub fn with_format(self, version: u32) -> Self {
        Codec {
            layout: Layout::of_format(version),
            ..self
        }
    }

    /// How the repository's pack headers and index files list blobs.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    pub fn is_encrypted(&self) -> bool {
        self.key.is_some()
    }

    /// The repository's key (`None` when it is not encrypted).
    pub fn master_key(&self) -> Option<&MasterKey> {
        self.key.as_ref()
    }

    /// The content id of `plaintext`.
    pub fn id_of(&self, plaintext: &[u8]) -> [u8; 32] {
        match &self.key {
            Some(key) => *blake3::keyed_hash(key.id_key(), plaintext).as_bytes(),
            None => *blake3::hash(plaintext).as_bytes(),
        }
    }

    /// The stored form of `plaintext`; `compress` asks for zstd (used only if it shrinks).
    pub fn encode(&self, plaintext: &[u8], compress_it: bool) -> Vec<u8> {
        let mut framed = Vec::with_capacity(plaintext.len() + 1);
        let compressed = compress_it
            .then(|| compress(plaintext, self.compression_level))
            .filter(|c| c.len() < plaintext.len());
        match compressed {
            Some(c) => {
                framed.push(FLAG_ZSTD);
                framed.extend_from_slice(&c);
            }
            None => {
                framed.push(FLAG_RAW);
                framed.extend_from_slice(plaintext);
            }
        }
        match &self.key {
            Some(key) => key.seal(&framed),
            None => framed,
        }
    }

    /// The plaintext of blob `entry`, given its frame's stored bytes, checked against the raw
    /// lengths its entry records (decompressing no further) and against its id (invariant 3).
    pub fn decode_blob(
        &self,
        stored: &[u8],
        entry: &PackEntry,
        location: &dyn Fn() -> String,
    ) -> Result<Vec<u8>> {
        match entry.is_alone() {
            true => {
                let stored = blob_sized(stored, entry, location)?;
                let plaintext = unframe_blob(&self.open(stored, location)?, entry, location)?;
                self.checked(plaintext, entry, location)
            }
            false => self.cut_blob(
                &self.decode_frame(stored, entry, location, Vec::new())?,
                entry,
                location,
            ),
        }
    }

    /// The plaintext of the frame that blob `entry` lies in, given its stored bytes: exactly
    /// as long as the entry records, decompressing no further, in `into` (its room reused).
    pub fn decode_frame(
        &self,
        stored: &[u8],
        entry: &PackEntry,
        location: &dyn Fn() -> String,
        into: Vec<u8>,
    ) -> Result<Vec<u8>> {
        let expected = u64::from(entry.frame_raw_length);
        let frame = unframe(
            &self.open(blob_sized(stored, entry, location)?, location)?,
            expected,
            location,
            into,
        )?;
        if frame.len() as u64 != expected {
            return Err(Error::corrupt(
                location(),
                format!(
                    "its frame holds {} bytes where its pack entry records {expected}",
                    frame.len()
                ),
            ));
        }
        Ok(frame)
    }

    /// Blob `entry` cut out of its decoded `frame`, checked against its id.
    pub fn cut_blob(
        &self,
        frame: &[u8],
        entry: &PackEntry,
        location: &dyn Fn() -> String,
    ) -> Result<Vec<u8>> {
        check_blob_lengths(entry, location)?;
        let at = entry.frame_at as usize;
        let plaintext = frame
            .get(at..at + entry.raw_length as usize)
            .ok_or_else(|| Error::corrupt(location(), "lies past the end of its frame"))?;
        self.checked(plaintext.to_vec(), entry, location)
    }

    /// `plaintext`, once it matches blob `entry`'s id (invariant 3).
    fn checked(
        &self,
        plaintext: Vec<u8>,
        entry: &PackEntry,
        location: &dyn Fn() -> String,
    ) -> Result<Vec<u8>> {
        if self.id_of(&plaintext) != entry.id.0 {
            return Err(Error::corrupt(location(), "content does not match its id"));
        }
        Ok(plaintext)
    }

    /// The plaintext of a stored object that is not a blob, refused when it is larger than
    /// `max_bytes`; `location` names it in errors.
    pub fn decode(
        &self,
        stored: &[u8],
        max_bytes: u64,
        location: &dyn Fn() -> String,
    ) -> Result<Vec<u8>> {
        unframe(
            &self.open(stored, location)?,
            max_bytes,
            location,
            Vec::new(),
        )
    }

    /// Blob `entry`, stored by this codec alone in its frame, in the stored form of `to`:
    /// opened, checked like `decode_blob`, and sealed under `to`'s key as it was compressed
    /// (nothing is compressed again). `to` must give blobs the same ids. A blob that shares
    /// its frame is refused (its frame is not its own to move): sync cuts such blobs out of
    /// their decoded frame and gathers them into frames of the destination's.
    pub fn transcode_blob(
        &self,
        stored: &[u8],
        entry: &PackEntry,
        to: &Codec,
        location: &dyn Fn() -> String,
    ) -> Result<Vec<u8>> {
        let framed = self.open(blob_sized(stored, entry, location)?, location)?;
        if self.id_of(&unframe_blob(&framed, entry, location)?) != entry.id.0 {
            return Err(Error::corrupt(location(), "content does not match its id"));
        }
        Ok(match &to.key {
            Some(key) => key.seal(&framed),
            None => framed.into_owned(),
        })
    }

    /// The framed bytes (flag and payload) of a stored object, its MAC checked.
    fn open<'a>(
        &self,
        stored: &'a [u8],
        location: &dyn Fn() -> String,
    ) -> Result<std::borrow::Cow<'a, [u8]>> {
        match &self.key {
            Some(key) => key
                .open(stored)
                .map(Into::into)
                .ok_or_else(|| Error::corrupt(location(), "authentication failed (MAC mismatch)")),
            None => Ok(stored.into()),
        }
    }
}

/// Refuses blob `entry` when its recorded raw length is beyond the format's limit for its
/// kind (or its frame's beyond the limit of a frame of several blobs), when it does not lie
/// inside its frame, or when its frame's stored length is beyond what the frame's raw length
/// needs (zstd is used only when it shrinks), so neither a lying header nor a padded frame
/// makes a reader allocate more. Cheap: readers call it before fetching the blob.
pub fn check_blob_lengths(entry: &PackEntry, location: &dyn Fn() -> String) -> Result<()> {
    let limit = entry.kind.max_raw_length();
    if entry.raw_length > limit {
        return Err(Error::corrupt(
            location(),
            format!(
                "its pack entry records {} bytes, more than the {limit} a {:?} blob may hold",
                entry.raw_length, entry.kind
            ),
        ));
    }
    let inside = entry
        .frame_at
        .checked_add(entry.raw_length)
        .is_some_and(|end| end <= entry.frame_raw_length);
    if !inside {
        return Err(Error::corrupt(
            location(),
            format!(
                "its pack entry puts {} bytes at {} of a frame of {}",
                entry.raw_length, entry.frame_at, entry.frame_raw_length
            ),
        ));
    }
    if !entry.is_alone() && entry.frame_raw_length > MAX_SHARED_FRAME_BYTES {
        return Err(Error::corrupt(
            location(),
            format!(
                "its frame records {} bytes, more than the {MAX_SHARED_FRAME_BYTES} a frame of several blobs may hold",
                entry.frame_raw_length
            ),
        ));
    }
    if u64::from(entry.length) > u64::from(entry.frame_raw_length) + 1 + SEAL_OVERHEAD_BYTES {
        return Err(Error::corrupt(
            location(),
            format!(
                "{} stored bytes for {} bytes of content",
                entry.length, entry.frame_raw_length
            ),
        ));
    }
    Ok(())
}

/// `stored`, the bytes of blob `entry`, once its lengths pass `check_blob_lengths`.
fn blob_sized<'a>(
    stored: &'a [u8],
    entry: &PackEntry,
    location: &dyn Fn() -> String,
) -> Result<&'a [u8]> {
    check_blob_lengths(entry, location)?;
    if stored.len() != entry.length as usize {
        return Err(Error::corrupt(
            location(),
            format!(
                "{} stored bytes where its pack entry records {}",
                stored.len(),
                entry.length
            ),
        ));
    }
    Ok(stored)
}

/// The plaintext of a blob's framed bytes, which must be exactly its recorded raw length.
fn unframe_blob(
    framed: &[u8],
    entry: &PackEntry,
    location: &dyn Fn() -> String,
) -> Result<Vec<u8>> {
    let expected = u64::from(entry.raw_length);
    let plaintext = unframe(framed, expected, location, Vec::new())?;
    if plaintext.len() as u64 != expected {
        return Err(Error::corrupt(
            location(),
            format!(
                "holds {} bytes where its pack entry records {expected}",
                plaintext.len()
            ),
        ));
    }
    Ok(plaintext)
}

/// The plaintext of framed bytes, at most `max_bytes`, in `into` (its room reused): the flag
/// says whether the payload is zstd.
fn unframe(
    framed: &[u8],
    max_bytes: u64,
    location: &dyn Fn() -> String,
    mut into: Vec<u8>,
) -> Result<Vec<u8>> {
    let (flag, payload) = framed
        .split_first()
        .ok_or_else(|| Error::corrupt(location(), "empty object"))?;
    let too_large = || Error::corrupt(location(), format!("holds more than {max_bytes} bytes"));
    match *flag {
        FLAG_RAW if payload.len() as u64 > max_bytes => Err(too_large()),
        FLAG_RAW => {
            into.clear();
            into.extend_from_slice(payload);
            Ok(into)
        }
        FLAG_ZSTD => decompress(payload, max_bytes, into)
            .map_err(|e| Error::corrupt(location(), format!("zstd: {e}")))?
            .ok_or_else(too_large),
        other => Err(Error::corrupt(
            location(),
            format!("unknown compression flag {other}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::BlobId;
    use crate::repo::pack::BlobKind;
    use proptest::prelude::*;

    /// The pack entry of `data` as a data blob stored in `stored_len` bytes.
    fn entry_of(codec: &Codec, data: &[u8], stored_len: usize) -> PackEntry {
        PackEntry::alone(
            BlobId(codec.id_of(data)),
            BlobKind::Data,
            0,
            stored_len as u32,
            data.len() as u32,
        )
    }

    /// `entry`, alone in its frame, claiming `raw_length` bytes.
    fn claiming(entry: PackEntry, raw_length: u32) -> PackEntry {
        PackEntry {
            raw_length,
            frame_raw_length: raw_length,
            ..entry
        }
    }

    fn codecs() -> [Codec; 2] {
        [
            Codec::new(None, 3),
            Codec::new(Some(MasterKey::generate()), 3),
        ]
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(data in proptest::collection::vec(0u8..4, 0..4096), compress_it: bool) {
            for codec in codecs() {
                let stored = codec.encode(&data, compress_it);
                prop_assert_eq!(codec.decode(&stored, 4096, &|| "t".into()).unwrap(), data.clone());
                let entry = entry_of(&codec, &data, stored.len());
                prop_assert_eq!(codec.decode_blob(&stored, &entry, &|| "t".into()).unwrap(), data.clone());
            }
        }

        #[test]
        fn a_flipped_bit_never_decodes_silently_when_encrypted(
            data in proptest::collection::vec(any::<u8>(), 1..1024),
            flip in any::<prop::sample::Index>(),
        ) {
            let codec = Codec::new(Some(MasterKey::generate()), 3);
            let mut stored = codec.encode(&data, true);
            let bit = flip.index(stored.len() * 8);
            stored[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(codec.decode(&stored, 1024, &|| "t".into()).is_err());
        }
    }

    #[test]
    fn compressible_data_shrinks_and_random_data_is_stored_raw() {
        let codec = Codec::new(None, 3);
        let zeros = vec![0u8; 100_000];
        assert!(codec.encode(&zeros, true).len() < 1000);
        let random: Vec<u8> = (0..10_000)
            .map(|i| (i * 7919 % 251) as u8 ^ (i >> 3) as u8)
            .collect();
        let stored = codec.encode(&random, false);
        assert_eq!(stored[0], FLAG_RAW);
        assert_eq!(stored.len(), random.len() + 1);
    }

    #[test]
    fn a_zstd_frame_without_a_stated_size_still_decodes() {
        let data = vec![7u8; 50_000];
        let mut encoder = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
        encoder.include_contentsize(false).unwrap();
        std::io::Write::write_all(&mut encoder, &data).unwrap();
        let payload = encoder.finish().unwrap();
        assert!(matches!(
            zstd::zstd_safe::get_frame_content_size(&payload),
            Ok(None)
        ));
        let mut framed = vec![FLAG_ZSTD];
        framed.extend(payload);
        let decoded = Codec::new(None, 3).decode(&framed, 50_000, &|| "t".into());
        assert!(
            Codec::new(None, 3)
                .decode(&framed, 49_999, &|| "t".into())
                .is_err()
        );
        assert_eq!(decoded.unwrap(), data);
    }

    #[test]
    fn a_transcoded_blob_decodes_under_the_other_key_and_a_wrong_id_is_refused() {
        let from = Codec::new(Some(MasterKey::generate()), 3);
        let to = Codec::new(Some(from.key.as_ref().unwrap().generate_like()), 3);
        let data = vec![5u8; 10_000];
        let stored = from.encode(&data, true);
        let entry = entry_of(&from, &data, stored.len());
        assert_eq!(to.id_of(&data), entry.id.0);
        let moved = from
            .transcode_blob(&stored, &entry, &to, &|| "t".into())
            .unwrap();
        assert!(moved.len() < 1000, "stays compressed");
        assert_eq!(
            to.decode_blob(&moved, &entry, &|| "t".into()).unwrap(),
            data
        );
        assert!(
            from.decode(&moved, 10_000, &|| "t".into()).is_err(),
            "sealed under a new key"
        );
        let wrong = PackEntry {
            id: BlobId(from.id_of(b"other")),
            ..entry
        };
        assert!(
            from.transcode_blob(&stored, &wrong, &to, &|| "t".into())
                .is_err()
        );
    }

    #[test]
    fn keyed_ids_differ_from_plain_ids() {
        let [plain, keyed] = codecs();
        assert_ne!(plain.id_of(b"x"), keyed.id_of(b"x"));
        assert_eq!(plain.id_of(b"x"), *blake3::hash(b"x").as_bytes());
    }

    #[test]
    fn a_blob_never_inflates_past_its_recorded_raw_length() {
        for codec in codecs() {
            let data = vec![0u8; 1 << 20];
            let stored = codec.encode(&data, true);
            let honest = entry_of(&codec, &data, stored.len());
            assert_eq!(
                codec.decode_blob(&stored, &honest, &|| "t".into()).unwrap(),
                data
            );
            // Claiming 6 bytes: refused on the stored length alone, before decoding.
            let tiny = claiming(honest, 6);
            let error = codec
                .decode_blob(&stored, &tiny, &|| "t".into())
                .unwrap_err();
            assert!(error.to_string().contains("stored bytes for 6"), "{error}");
            // Claiming as many bytes as are stored: decompression stops there.
            let lying = claiming(honest, stored.len() as u32);
            let error = codec
                .decode_blob(&stored, &lying, &|| "t".into())
                .unwrap_err();
            let bound = format!("more than {} bytes", stored.len());
            assert!(error.to_string().contains(&bound), "{error}");
            let short = claiming(honest, honest.raw_length + 1);
            assert!(codec.decode_blob(&stored, &short, &|| "t".into()).is_err());
            let beyond_the_format = claiming(honest, BlobKind::Data.max_raw_length() + 1);
            let error = codec
                .decode_blob(&stored, &beyond_the_format, &|| "t".into())
                .unwrap_err();
            assert!(error.to_string().contains("may hold"), "{error}");
        }
    }

    #[test]
    fn blobs_sharing_a_frame_decode_from_it_and_nothing_outside_it() {
        let blobs: [&[u8]; 3] = [b"first blob, ", b"second blob, ", b"third and last"];
        let frame = blobs.concat();
        for codec in codecs() {
            let stored = codec.encode(&frame, true);
            let mut at = 0;
            let entries: Vec<PackEntry> = blobs
                .iter()
                .map(|blob| {
                    let entry = PackEntry {
                        frame_at: at,
                        frame_raw_length: frame.len() as u32,
                        ..entry_of(&codec, blob, stored.len())
                    };
                    at += blob.len() as u32;
                    entry
                })
                .collect();
            for _ in 0..2 {
                for (entry, blob) in entries.iter().zip(blobs) {
                    assert!(!entry.is_alone());
                    let decoded = codec.decode_blob(&stored, entry, &|| "t".into());
                    assert_eq!(decoded.unwrap(), blob);
                }
            }
            let shifted = PackEntry {
                frame_at: 1,
                ..entries[0]
            };
            let error = codec.decode_blob(&stored, &shifted, &|| "t".into());
            assert!(error.unwrap_err().to_string().contains("its id"));
            let outside = PackEntry {
                frame_at: frame.len() as u32 - 3,
                ..entries[2]
            };
            let error = codec.decode_blob(&stored, &outside, &|| "t".into());
            assert!(error.unwrap_err().to_string().contains("of a frame of"));
            let longer_frame = PackEntry {
                frame_raw_length: frame.len() as u32 + 1,
                ..entries[1]
            };
            assert!(
                codec
                    .decode_blob(&stored, &longer_frame, &|| "t".into())
                    .is_err()
            );
            let huge_frame = PackEntry {
                frame_raw_length: MAX_SHARED_FRAME_BYTES + 1,
                ..entries[1]
            };
            let error = codec.decode_blob(&stored, &huge_frame, &|| "t".into());
            assert!(error.unwrap_err().to_string().contains("several blobs"));

            let to = match &codec.key {
                Some(key) => Codec::new(Some(key.generate_like()), 3),
                None => Codec::new(None, 3),
            };
            let moved = codec.transcode_blob(&stored, &entries[1], &to, &|| "t".into());
            assert!(moved.unwrap_err().to_string().contains("holds"));
        }
    }

    #[test]
    fn stored_bytes_longer_than_their_raw_length_needs_are_refused() {
        let codec = Codec::new(None, 3);
        let mut stored = codec.encode(b"hello", false);
        stored.extend_from_slice(&[0; 64]);
        let entry = entry_of(&codec, b"hello", stored.len());
        assert!(codec.decode_blob(&stored, &entry, &|| "t".into()).is_err());
    }
}
