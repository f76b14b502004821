//! Fuzzing harnesses: one per decoder of untrusted bytes, so every byte a repository, a
//! server or a client can send cairn is fed through the same code that reads it for real.
//! Each harness takes arbitrary bytes and must return, whatever they are: no panic, no
//! abort, no hang, no allocation beyond the bounds the format sets (invariant 7).
//!
//! The cargo-fuzz targets in `fuzz/` are one line each over [`TARGETS`];
//! `tests/fuzz_corpus.rs` replays the committed corpus and every crash ever found through the
//! same functions on stable, so a fixed crash stays fixed. Not part of the public API.

use crate::net::wire::{
    BlobsRequest, ChunksRequest, ChunksResponse, FileRanges, TreeRecord, WireEntry,
};
use crate::repo::codec::Codec;
use crate::repo::table::{CACHED_ENTRY_BYTES, Layout, read_cached_entry};

/// A harness: arbitrary bytes in, nothing out.
pub type Harness = fn(&[u8]);

/// Every harness, by the name of its cargo-fuzz target.
pub const TARGETS: &[(&str, Harness)] = &[
    ("pack_header", pack_header),
    ("blob", blob),
    ("tree", tree),
    ("chunk_list", chunk_list),
    ("index_file", index_file),
    ("checkpoint", checkpoint),
    ("config", config),
    ("key", key),
    ("lock", lock),
    ("server_answer", server_answer),
    ("client_request", client_request),
    ("catalogue_log", catalogue_log),
    ("catalogue_summary", catalogue_summary),
    ("path_history", path_history),
    ("plan", plan),
];

fn location() -> String {
    "fuzz input".into()
}

/// The codecs a hostile object meets: plaintext (whose parsers see the bytes as they are)
/// in each table layout (formats 2 and 3), and encrypted (whose MAC check sees them first).
fn codecs() -> &'static [Codec; 3] {
    // Made once: a fresh key per input would cost every execution a key generation.
    static CODECS: std::sync::OnceLock<[Codec; 3]> = std::sync::OnceLock::new();
    CODECS.get_or_init(|| {
        [
            Codec::new(None, 3).with_format(2),
            Codec::new(None, 3).with_format(3),
            Codec::new(Some(crate::crypto::MasterKey::generate()), 3),
        ]
    })
}

/// The local catalogue's log of records (a cache file another local user could not write,
/// but a damaged disk or a bug could).
pub fn catalogue_log(data: &[u8]) {
    for codec in codecs() {
        crate::catalogue::decoders::log(data, codec, &location);
    }
}

/// The plaintext of the local catalogue's summary.
pub fn catalogue_summary(data: &[u8]) {
    crate::catalogue::decoders::summary(data, &location);
}

/// The plaintext of a kept path history.
pub fn path_history(data: &[u8]) {
    crate::catalogue::decoders::path_history(data, &location);
}

/// A whole pack, read through its header.
pub fn pack_header(data: &[u8]) {
    for codec in codecs() {
        let _ = crate::repo::pack::read_header(data, codec, &location);
    }
}

/// One stored frame behind the pack entry of a blob in it, as the local cache records it
/// (its first `CACHED_ENTRY_BYTES`).
pub fn blob(data: &[u8]) {
    let Some(entry) = data.get(..CACHED_ENTRY_BYTES).and_then(read_cached_entry) else {
        return;
    };
    for codec in codecs() {
        let _ = codec.decode_blob(&data[CACHED_ENTRY_BYTES..], &entry, &location);
    }
}

/// The plaintext of a tree blob.
pub fn tree(data: &[u8]) {
    let _ = crate::tree::Tree::decode(data, &location);
}

/// The plaintext of a chunk list blob.
pub fn chunk_list(data: &[u8]) {
    let _ = crate::tree::decode_chunk_list(data, &crate::id::BlobId([0; 32]));
}

/// The plaintext of an index file.
pub fn index_file(data: &[u8]) {
    for layout in [Layout::Entries, Layout::Frames] {
        let _ = crate::repo::index::decode_index_file(data, layout, &location);
    }
}

/// The plaintext of a checkpoint record.
pub fn checkpoint(data: &[u8]) {
    let _ = crate::checkpoint::decode(data, "checkpoints/fuzz");
}

/// A plan a repository keeps (`plans/<id>`), as read once its seal is opened.
pub fn plan(data: &[u8]) {
    let _ = crate::plan::decode_stored(data, "plans/fuzz");
}

/// A repository's `config`.
pub fn config(data: &[u8]) {
    if let Ok(config) = crate::repo::decode_config(data, "fuzz") {
        let _ = config.settings();
    }
}

/// A password key object (`keys/<id>`) or a key file: parsed, and a password key with costs
/// small enough for a fuzzer unwrapped.
pub fn key(data: &[u8]) {
    if let Ok(key) = serde_json::from_slice::<crate::crypto::PasswordKey>(data)
        && key.kdf.memory_kib <= 64
        && key.kdf.iterations <= 1
    {
        let _ = key.unwrap(b"fuzz");
    }
    if let Ok(file) = serde_json::from_slice::<crate::crypto::KeyFile>(data) {
        let _ = file.master_key();
    }
}

/// A lock record, and the staleness judgement made from it.
pub fn lock(data: &[u8]) {
    if let Ok(record) = serde_json::from_slice::<crate::repo::lock::LockRecord>(data) {
        let _ = record.stale_because("fuzz-host");
    }
}

/// What a server sends a client; the first byte picks the answer.
pub fn server_answer(data: &[u8]) {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    match kind % 6 {
        0 => {
            // A streamed tree listing: records until the end or the first error.
            let mut reader = body;
            while let Ok(Some(_)) = crate::net::wire::read_record(&mut reader) {}
        }
        1 => {
            let _ =
                postcard::from_bytes::<Option<WireEntry>>(body).map(|e| e.map(WireEntry::listed));
        }
        2 => {
            let _ = postcard::from_bytes::<(u64, u64)>(body);
        }
        3 => {
            let _ = postcard::from_bytes::<ChunksResponse>(body);
        }
        4 => {
            let request = BlobsRequest {
                files: vec![FileRanges {
                    path: serde_bytes::ByteBuf::from(b"f".to_vec()),
                    ranges: vec![(0, 7), (7, 4096)],
                }],
            };
            let _ = crate::net::wire::read_blobs(body, &request, "fuzz input");
        }
        _ => {
            let _ = serde_json::from_slice::<Vec<crate::net::wire::ListedObject>>(body);
            let _ = postcard::from_bytes::<TreeRecord>(body);
        }
    }
}

/// What a client sends `cairn serve`; the first byte picks the request.
pub fn client_request(data: &[u8]) {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    match kind % 4 {
        0 => {
            if let Ok(ranges) =
                serde_json::from_slice::<Vec<crate::repo::backend::RangeRequest>>(body)
            {
                let _ = ranges
                    .iter()
                    .all(|r| crate::repo::objects::valid_object_name(&r.name));
            }
        }
        1 => {
            let _ = postcard::from_bytes::<ChunksRequest>(body);
        }
        2 => {
            if let Ok(request) = postcard::from_bytes::<BlobsRequest>(body) {
                let _ = request.bytes();
            }
        }
        _ => {
            let text = String::from_utf8_lossy(body);
            #[cfg(feature = "server")]
            let _ = crate::net::server::parse_range(&text);
            let _ = crate::repo::objects::valid_object_name(&text);
        }
    }
}
