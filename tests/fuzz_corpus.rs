//! The fuzz corpus, replayed on stable: every committed input of every cargo-fuzz target
//! (`fuzz/corpus/<target>/`) and every crash a fuzzer ever found (`fuzz/regressions/<target>/`)
//! goes through the same harness the fuzzer runs (`cairn::fuzzing`). A decoder that panics,
//! aborts or hangs on any of them fails this test. `write_seed_corpus` made the seeds from the
//! format fixtures; run it again (it only adds files) when a format gains a new object.

use cairn::fuzzing::TARGETS;
use std::fs;
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    files.sort();
    files
}

#[test]
fn every_target_has_a_corpus_and_every_input_and_past_crash_replays_cleanly() {
    let mut replayed = 0;
    for (target, harness) in TARGETS {
        let corpus = inputs(&fuzz_dir().join("corpus").join(target));
        assert!(!corpus.is_empty(), "fuzz/corpus/{target} holds no inputs");
        let regressions = inputs(&fuzz_dir().join("regressions").join(target));
        for input in corpus.iter().chain(&regressions) {
            harness(&fs::read(input).unwrap());
            replayed += 1;
        }
        let source = fuzz_dir().join("fuzz_targets").join(format!("{target}.rs"));
        assert!(source.is_file(), "no cargo-fuzz target for {target}");
    }
    assert!(replayed >= TARGETS.len());
}

/// Seeds: real objects of the format fixtures and real wire messages, one file each.
#[test]
#[ignore = "writes fuzz/corpus; run by hand when the format changes"]
fn write_seed_corpus() {
    use cairn::net::wire::{
        BlobsRequest, ChunkSpec, ChunksRequest, ChunksResponse, FileRanges, TreeRecord,
    };
    use cairn::repo::codec::Codec;
    use cairn::repo::pack::{BlobKind, read_header};
    use cairn::tree::{Content, EntryKind, Tree};

    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let repo = fixtures.join("v3-none/repo");
    let codec = Codec::new(None, 3);
    let location = || "seed".to_string();
    let mut seeds: Vec<(&str, Vec<u8>)> = Vec::new();
    for mode in ["none", "keyfile", "password"] {
        seeds.push((
            "config",
            fs::read(fixtures.join(format!("v3-{mode}/repo/config"))).unwrap(),
        ));
    }
    seeds.push(("key", fs::read(fixtures.join("v3-keyfile/key")).unwrap()));
    for key in inputs(&fixtures.join("v3-password/repo/keys")) {
        seeds.push(("key", fs::read(key).unwrap()));
    }
    let mut trees = Vec::new();
    for dir in inputs(&repo.join("data")) {
        for pack in inputs(&dir) {
            let bytes = fs::read(pack).unwrap();
            for entry in read_header(&bytes, &codec, &location).unwrap() {
                let stored = &bytes[entry.offset as usize..][..entry.length as usize];
                let mut framed = cairn::repo::table::cached_entry(&entry);
                framed.extend_from_slice(stored);
                seeds.push(("blob", framed));
                let plaintext = codec.decode_blob(stored, &entry, &location).unwrap();
                match entry.kind {
                    BlobKind::Tree => {
                        trees.push(Tree::decode(&plaintext, &location).unwrap());
                        seeds.push(("tree", plaintext));
                    }
                    BlobKind::ChunkList => seeds.push(("chunk_list", plaintext)),
                    BlobKind::Data => {}
                }
            }
            seeds.push(("pack_header", bytes));
        }
    }
    for (target, dir) in [("index_file", "index"), ("checkpoint", "checkpoints")] {
        for object in inputs(&repo.join(dir)) {
            let plaintext = codec.decode(&fs::read(object).unwrap(), 1 << 30, &location);
            seeds.push((target, plaintext.unwrap()));
        }
    }
    let record = cairn::repo::lock::LockRecord {
        host: "seed-host".into(),
        pid: 4242,
        time: "2026-12-02T04:00:00Z".into(),
        exclusive: true,
        purpose: "prune".into(),
    };
    seeds.push(("lock", serde_json::to_vec(&record).unwrap()));

    let entries: Vec<_> = trees.iter().flat_map(|t| t.entries.clone()).collect();
    let chunks: Vec<_> = entries
        .iter()
        .filter_map(|e| match &e.kind {
            EntryKind::File(Content::Chunks(chunks)) => Some(chunks.clone()),
            _ => None,
        })
        .collect();
    seeds.push(("chunk_list", postcard::to_stdvec(&chunks.concat()).unwrap()));
    let tagged = |kind: u8, body: Vec<u8>| [vec![kind], body].concat();
    let listing = TreeRecord {
        path: serde_bytes::ByteBuf::new(),
        entries: Ok(cairn::net::wire::to_wire(
            entries.iter().cloned().map(|e| e.into_listed()).collect(),
        )),
    };
    let record = postcard::to_stdvec(&listing).unwrap();
    let stream = [(record.len() as u32).to_le_bytes().to_vec(), record.clone()].concat();
    seeds.push(("server_answer", tagged(0, stream)));
    seeds.push((
        "server_answer",
        tagged(1, postcard::to_stdvec(&entries.first()).unwrap()),
    ));
    seeds.push((
        "server_answer",
        tagged(2, postcard::to_stdvec(&(3u64, 1000u64)).unwrap()),
    ));
    let response = ChunksResponse {
        files: vec![Ok(chunks.concat()), Err("unreadable".into())],
    };
    seeds.push((
        "server_answer",
        tagged(3, postcard::to_stdvec(&response).unwrap()),
    ));
    let blobs = zstd::encode_all(&vec![7u8; 7 + 4096][..], 1).unwrap();
    seeds.push(("server_answer", tagged(4, blobs)));
    let objects = br#"[{"name":"data/ab/abcd","size":12},{"name":"config","size":300}]"#;
    seeds.push(("server_answer", tagged(5, objects.to_vec())));
    seeds.push(("server_answer", tagged(5, record)));
    let ranges = br#"[{"name":"data/ab/abcd","offset":0,"length":10}]"#;
    seeds.push(("client_request", tagged(0, ranges.to_vec())));
    let chunks_request = ChunksRequest {
        spec: ChunkSpec::plain(),
        paths: vec![serde_bytes::ByteBuf::from(b"dir/file".to_vec())],
    };
    seeds.push((
        "client_request",
        tagged(1, postcard::to_stdvec(&chunks_request).unwrap()),
    ));
    let blobs_request = BlobsRequest {
        files: vec![FileRanges {
            path: serde_bytes::ByteBuf::from(b"dir/file".to_vec()),
            ranges: vec![(0, 10), (4096, 512)],
        }],
    };
    seeds.push((
        "client_request",
        tagged(2, postcard::to_stdvec(&blobs_request).unwrap()),
    ));
    seeds.push(("client_request", tagged(3, b"bytes=0-99".to_vec())));
    seeds.push(("client_request", tagged(3, b"index/0a1b2c".to_vec())));

    for (target, bytes) in seeds {
        let dir = fuzz_dir().join("corpus").join(target);
        fs::create_dir_all(&dir).unwrap();
        let name = blake3::hash(&bytes).to_hex();
        fs::write(dir.join(&name.as_str()[..16]), bytes).unwrap();
    }
}
