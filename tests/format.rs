//! Pins the repository format to `docs/FORMAT.md`: the worked example's bytes and ids there,
//! and the sealed settings' JSON, must be what this build writes, so the document and the code
//! cannot drift apart.

use cairn::id::BlobId;
use cairn::repo::codec::Codec;
use cairn::repo::index::encode_index_file;
use cairn::repo::pack::{BlobKind, PackBuilder};
use cairn::tree::{ChunkRef, Content, Entry, EntryKind, Tree};

fn hex_id(text: &str) -> BlobId {
    BlobId::from_hex(text).unwrap()
}

#[test]
fn worked_example_of_format_md_holds() {
    let codec = Codec::new(None, 3);
    let blob = hex_id("ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f");
    assert_eq!(codec.id_of(b"hello"), blob.0);
    let stored = codec.encode(b"hello", true);
    assert_eq!(stored, b"\x00hello");

    // Format 3 (frames) and format 2 (entries) list the same pack differently.
    for (version, pack_hex, index_len) in [
        (
            3,
            "09df7b85d6d6750d87691eef5679d8e39910c23f0bc2b34f954f6f2a1f0a952d",
            85,
        ),
        (
            2,
            "ba8fcb51c26eb1812aca97b14ee2e1f6aff58fbc70c500de4182467e90d2a6ca",
            81,
        ),
    ] {
        let codec = Codec::new(None, 3).with_format(version);
        let mut pack = PackBuilder::default();
        pack.add(blob, BlobKind::Data, &stored, 5);
        let (pack_id, bytes, entries) = pack.finish(&codec);
        assert_eq!(bytes.len(), 56);
        assert_eq!(pack_id.to_hex(), pack_hex);
        let index = encode_index_file(&[(pack_id, entries)], codec.layout());
        assert_eq!(index.len(), index_len);
    }

    // Two blobs sharing one frame (format 3).
    let world = codec.id_of(b"world");
    let shared = codec.encode(b"helloworld", true);
    assert_eq!(shared, b"\x00helloworld");
    let mut pack = PackBuilder::default();
    pack.add_frame(BlobKind::Data, &shared, &[(blob, 5), (BlobId(world), 5)]);
    let (pack_id, bytes, entries) = pack.finish(&codec);
    assert_eq!(bytes.len(), 97);
    assert_eq!(
        pack_id.to_hex(),
        "fd0cd2a9f5a0c5f2e147b3e1579a96e6d0ae2739dc81edd8565e7892a79a1cf1"
    );
    assert_eq!((entries[1].offset, entries[1].frame_at), (0, 5));
    assert_eq!(
        encode_index_file(&[(pack_id, entries)], codec.layout()).len(),
        121
    );

    let entry = Entry {
        name: b"hello.txt".to_vec(),
        kind: EntryKind::File(Content::Chunks(vec![ChunkRef {
            id: blob,
            length: 5,
        }])),
        mode: 0o644,
        uid: 1000,
        gid: 1000,
        user: Some("alice".into()),
        group: None,
        mtime_ns: 1_700_000_000_123_456_789,
        ctime_ns: 1_700_000_000_123_456_789,
        size: 5,
        device: 2049,
        inode: 131,
        links: 1,
        xattrs: Vec::new(),
    };
    let encoded = Tree::from_entries(vec![entry]).encode();
    assert_eq!(encoded.len(), 86);
    assert_eq!(
        hex::encode(codec.id_of(&encoded)),
        "1e21e4488700e70175c75939e601a68e3ad5b8ca3ec9c15507db719f2c5d4fc7"
    );
}

#[test]
fn sealed_settings_json_is_the_one_format_md_shows() {
    use cairn::repo::config::ChunkerParams;
    use cairn::repo::config::{EncryptionMode, FORMAT_VERSION, Settings};
    let settings = Settings {
        cairn_repository: FORMAT_VERSION,
        id: "…".into(),
        created: "…".into(),
        chunker: ChunkerParams::default(),
        compression_level: 3,
        encryption: EncryptionMode::Password,
    };
    let json = String::from_utf8(serde_json::to_vec(&settings).unwrap()).unwrap();
    let format_md = include_str!("../docs/FORMAT.md");
    assert!(format_md.contains(&format!("\n{json}\n")), "{json}");
}
