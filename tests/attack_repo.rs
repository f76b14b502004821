//! Hostile or damaged repositories, crafted through the library and read by the real binary:
//! decompression bombs and oversized chunk lists (bounded memory, a clear error), trees
//! nested far deeper than any call stack (walked correctly), files whose recorded size
//! disagrees with their chunks (flagged by `check`, EIO from the mount). Every command runs
//! under `run_bounded`: it must end on its own, without crashing, under a memory cap.

mod common;

use cairn::checkpoint::{self, Checkpoint, CheckpointStats};
use cairn::id::{BlobId, TreeId};
use cairn::progress::Progress;
use cairn::repo::backend::LocalBackend;
use cairn::repo::config::EncryptionMode;
use cairn::repo::pack::{BlobKind, PackBuilder, pack_object_name};
use cairn::repo::writer::{put_index_file, with_blob_sink};
use cairn::repo::{InitOptions, Repository, Secret};
use cairn::tree::{ChunkRef, Content, Entry, EntryKind, Tree, root_entry};
use common::*;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

/// The most memory any command may use on a hostile repository.
const MAX_RSS_BYTES: u64 = 300 << 20;
/// The longest any command may take on one.
const TIME_LIMIT: Duration = Duration::from_secs(120);

/// An unencrypted repository at `<sandbox>/<name>`, opened through the library with a cache
/// of its own (the binary keeps the sandbox's).
fn plain_repo(sandbox: &Sandbox, name: &str) -> (PathBuf, Repository) {
    let path = sandbox.path(name);
    let backend = Arc::new(LocalBackend::new(&path));
    Repository::init(backend.as_ref(), InitOptions::new(EncryptionMode::None)).unwrap();
    let cache = sandbox.path(&format!("{name}-library-cache"));
    let repo = Repository::open(backend, |_| Ok(Secret::None), &cache).unwrap();
    (path, repo)
}

/// Stores one pack holding `blobs` exactly as given — stored bytes and the raw length the
/// header claims, true or not — and an index file listing it.
fn put_raw_pack(repo: &Repository, blobs: &[(BlobId, BlobKind, &[u8], usize)]) {
    let mut builder = PackBuilder::default();
    for (id, kind, stored, raw_length) in blobs {
        builder.add(*id, *kind, stored, *raw_length);
    }
    let (pack, bytes, entries) = builder.finish(repo.codec());
    repo.backend()
        .put(&pack_object_name(&pack), &bytes)
        .unwrap();
    put_index_file(repo, &[(pack, entries)]).unwrap();
}

/// Stores honest blobs (trees, chunks) through the ordinary writer.
fn store_blobs(repo: &Repository, blobs: &[(BlobKind, Vec<u8>)]) -> Vec<BlobId> {
    let (ids, _) = with_blob_sink(repo, 8, &Progress::default(), |sink| {
        blobs
            .iter()
            .map(|(kind, plaintext)| sink.store(*kind, plaintext))
            .collect()
    })
    .unwrap();
    ids
}

/// Stores the 5 bytes `hello` as one data blob and returns the chunk reference to it.
fn store_hello_chunk(repo: &Repository) -> ChunkRef {
    let [id] = store_blobs(repo, &[(BlobKind::Data, b"hello".to_vec())])[..] else {
        unreachable!("one blob stored")
    };
    ChunkRef { id, length: 5 }
}

fn entry(name: &str, kind: EntryKind, size: u64) -> Entry {
    let mut entry = root_entry(TreeId([0; 32]));
    entry.name = name.as_bytes().to_vec();
    entry.kind = kind;
    entry.mode = if size == 0 { 0o755 } else { 0o644 };
    entry.size = size;
    entry
}

fn file(name: &str, chunks: Vec<ChunkRef>, size: u64) -> Entry {
    entry(name, EntryKind::File(Content::Chunks(chunks)), size)
}

/// Writes a checkpoint of root tree `tree` (a blob stored as a tree, crafted or not) and
/// returns its id in hex.
fn save_checkpoint(repo: &Repository, tree: BlobId) -> String {
    let tree = TreeId(tree.0);
    let time = humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string();
    let record = Checkpoint {
        time,
        host: "attacker".into(),
        paths: vec!["/crafted".into()],
        tags: Vec::new(),
        tree,
        root: None,
        parent: None,
        stats: CheckpointStats::default(),
        program_version: "crafted".into(),
        pulled_from: None,
    };
    checkpoint::save(repo, &record).unwrap().to_string()
}

/// Stores `root` and saves a checkpoint of it.
fn save_tree_checkpoint(repo: &Repository, root: Tree) -> String {
    let [id] = store_blobs(repo, &[(BlobKind::Tree, root.encode())])[..] else {
        unreachable!("one blob stored")
    };
    save_checkpoint(repo, id)
}

fn cairn(sandbox: &Sandbox, args: &[&str]) -> Bounded {
    let run = run_bounded(sandbox.cairn().args(args), TIME_LIMIT);
    // Shown when a test fails: which command used how much.
    eprintln!("cairn {args:?}: {} MiB", run.peak_rss_bytes >> 20);
    run
}

/// Asserts the command was not killed by a signal or a panic.
fn assert_no_crash(output: &Output, what: &str) {
    use std::os::unix::process::ExitStatusExt;
    assert!(
        output.status.signal().is_none() && output.status.code() != Some(101),
        "{what} crashed ({}): {}",
        output.status,
        stderr(output)
    );
}

/// Runs `cairn args` under the bounds and asserts it failed cleanly, saying `needle`.
fn assert_refused(sandbox: &Sandbox, args: &[&str], needle: &str) -> Output {
    let run = cairn(sandbox, args);
    run.assert_within(MAX_RSS_BYTES);
    assert_no_crash(&run.output, &format!("{args:?}"));
    assert!(
        !run.output.status.success(),
        "{args:?} succeeded on a hostile repository"
    );
    let said = format!(
        "{}{}",
        stderr(&run.output),
        String::from_utf8_lossy(&run.output.stdout)
    );
    assert!(
        said.contains(needle),
        "{args:?} did not say {needle:?}: {said}"
    );
    run.output
}

/// Runs `cairn restore` of checkpoint `ckpt` to `<sandbox>/restored` under the bounds and
/// asserts it failed cleanly, saying `needle`.
fn assert_restore_refused(sandbox: &Sandbox, repo_arg: &str, ckpt: &str, needle: &str) {
    let target = sandbox.path("restored");
    assert_refused(
        sandbox,
        &[
            "restore",
            "--repo",
            repo_arg,
            "--target",
            target.to_str().unwrap(),
            ckpt,
        ],
        needle,
    );
}

/// Runs `cairn args` under the bounds and asserts it succeeded; returns stdout.
fn assert_ok(sandbox: &Sandbox, args: &[&str]) -> String {
    let run = cairn(sandbox, args);
    run.assert_within(MAX_RSS_BYTES);
    assert_no_crash(&run.output, &format!("{args:?}"));
    assert!(
        run.output.status.success(),
        "{args:?} failed: {}",
        stderr(&run.output)
    );
    String::from_utf8(run.output.stdout).unwrap()
}

/// A zstd frame (framed with cairn's compression flag, unencrypted) of `total` zero bytes
/// whose header states their size.
fn zero_bomb(total: u64) -> Vec<u8> {
    let mut encoder = zstd::stream::Encoder::new(vec![1u8], 1).unwrap();
    encoder.set_pledged_src_size(Some(total)).unwrap();
    encoder.include_contentsize(true).unwrap();
    let block = vec![0u8; 1 << 20];
    for _ in 0..total / block.len() as u64 {
        encoder.write_all(&block).unwrap();
    }
    encoder.finish().unwrap()
}

// ---- 10. Decompression bombs and oversized chunk lists ----

#[test]
fn a_decompression_bomb_is_refused_without_inflating_it() {
    let sandbox = Sandbox::new();
    let (path, repo) = plain_repo(&sandbox, "repo");
    let repo_arg = path.to_str().unwrap();
    // 512 MiB of zeros in a few hundred KiB, under the id of 6 bytes, claiming 6 bytes.
    let content = b"hello\n";
    let id = BlobId(repo.codec().id_of(content));
    let bomb = zero_bomb(512 << 20);
    assert!(bomb.len() < 1 << 20, "the bomb is small: {}", bomb.len());
    put_raw_pack(&repo, &[(id, BlobKind::Data, &bomb, content.len())]);
    let chunk = ChunkRef { id, length: 6 };
    let files = (0..8)
        .map(|i| file(&format!("bomb{i}"), vec![chunk], 6))
        .collect();
    let ckpt = save_tree_checkpoint(&repo, Tree::from_entries(files));

    assert_refused(
        &sandbox,
        &["cat", "--repo", repo_arg, &format!("{ckpt}:bomb0")],
        "blob",
    );
    assert_restore_refused(&sandbox, repo_arg, &ckpt, "bomb");
    assert_refused(
        &sandbox,
        &["check", "--read-data", "--repo", repo_arg],
        "bomb0",
    );
}

/// A chunk list plaintext of `count` references to `chunk`, and its (unkeyed) id.
fn chunk_list_bomb(count: u64, chunk: ChunkRef) -> (BlobId, Vec<u8>, usize) {
    let mut one = Vec::new();
    one.extend_from_slice(&chunk.id.0);
    let mut length = chunk.length;
    while length >= 0x80 {
        one.push(length as u8 | 0x80);
        length >>= 7;
    }
    one.push(length as u8);
    let mut head = Vec::new();
    let mut n = count;
    while n >= 0x80 {
        head.push(n as u8 | 0x80);
        n >>= 7;
    }
    head.push(n as u8);
    let raw_length = head.len() + one.len() * count as usize;
    let mut hasher = blake3::Hasher::new();
    let mut encoder = zstd::stream::Encoder::new(vec![1u8], 1).unwrap();
    encoder
        .set_pledged_src_size(Some(raw_length as u64))
        .unwrap();
    hasher.update(&head);
    encoder.write_all(&head).unwrap();
    let block = one.repeat(4096);
    let mut left = count;
    while left > 0 {
        let take = left.min(4096) as usize;
        let piece = &block[..take * one.len()];
        hasher.update(piece);
        encoder.write_all(piece).unwrap();
        left -= take as u64;
    }
    (
        BlobId(*hasher.finalize().as_bytes()),
        encoder.finish().unwrap(),
        raw_length,
    )
}

#[test]
fn a_chunk_list_of_millions_of_entries_is_refused_before_it_is_decoded() {
    let sandbox = Sandbox::new();
    let (path, repo) = plain_repo(&sandbox, "repo");
    let repo_arg = path.to_str().unwrap();
    let chunk = store_hello_chunk(&repo);
    let count = 8_000_000;
    let (list, stored, raw_length) = chunk_list_bomb(count, chunk);
    put_raw_pack(&repo, &[(list, BlobKind::ChunkList, &stored, raw_length)]);
    let huge = entry("huge", EntryKind::File(Content::ChunkList(list)), count * 5);
    let ckpt = save_tree_checkpoint(&repo, Tree::from_entries(vec![huge]));

    assert_refused(&sandbox, &["check", "--repo", repo_arg], "huge");
    assert_refused(
        &sandbox,
        &["cat", "--repo", repo_arg, &format!("{ckpt}:huge")],
        "may hold",
    );
    assert_restore_refused(&sandbox, repo_arg, &ckpt, "huge");
}

// ---- 11. Trees nested deeper than any call stack ----

/// Stores a chain of `depth` directories named `d`, the deepest holding file `f` whose only
/// chunk is `leaf`, and returns the root tree's id.
fn deep_chain(repo: &Repository, depth: usize, leaf: ChunkRef) -> BlobId {
    let (root, _) = with_blob_sink(repo, 8, &Progress::default(), |sink| {
        let mut tree = Tree::from_entries(vec![file("f", vec![leaf], leaf.length.into())]);
        let mut id = sink.store(BlobKind::Tree, &tree.encode())?;
        for _ in 1..depth {
            tree = Tree::from_entries(vec![entry("d", EntryKind::Dir(TreeId(id.0)), 0)]);
            id = sink.store(BlobKind::Tree, &tree.encode())?;
        }
        Ok(id)
    })
    .unwrap();
    root
}

const DEEP: usize = 16_000;

#[test]
fn a_tree_sixteen_thousand_levels_deep_is_checked_copied_diffed_and_repaired() {
    let sandbox = Sandbox::new();
    let (path, repo) = plain_repo(&sandbox, "repo");
    let repo_arg = path.to_str().unwrap();
    let leaf = store_hello_chunk(&repo);
    let sound = save_checkpoint(&repo, deep_chain(&repo, DEEP, leaf));
    let deepest = format!("{}f", "d/".repeat(DEEP - 1));

    assert_ok(&sandbox, &["check", "--repo", repo_arg]);
    assert_eq!(
        assert_ok(
            &sandbox,
            &["cat", "--repo", repo_arg, &format!("{sound}:{deepest}")]
        ),
        "hello"
    );
    let copy = sandbox.path("copy");
    let copy_arg = copy.to_str().unwrap();
    sandbox.ok(&[
        "init",
        "--repo",
        copy_arg,
        "--encryption",
        "none",
        "--like",
        repo_arg,
    ]);
    assert_ok(&sandbox, &["sync", repo_arg, copy_arg]);
    assert_ok(&sandbox, &["check", "--read-data", "--repo", copy_arg]);
    // Written out, the tree is refused where its path passes the target's cap: an error,
    // with the levels above it written and memory bounded, never a crash.
    let target = sandbox.path("restored");
    let target_arg = target.to_str().unwrap();
    let restore = [
        "restore", "--repo", repo_arg, &sound, "--target", target_arg,
    ];
    assert_refused(&sandbox, &restore, "longer than the 8192");
    let sync = format!("{repo_arg}::{sound}");
    let synced = sandbox.path("synced");
    assert_refused(
        &sandbox,
        &["sync", &sync, synced.to_str().unwrap()],
        "longer than the 8192",
    );
    assert!(target.join("d/d/d/d").is_dir() && synced.join("d/d/d/d").is_dir());

    // A second checkpoint whose deepest file lost its chunk: diff finds the one change, and
    // repair rewrites every level above it.
    std::thread::sleep(Duration::from_millis(10));
    let lost = ChunkRef {
        id: BlobId([7; 32]),
        length: 5,
    };
    let damaged = save_checkpoint(&repo, deep_chain(&repo, DEEP, lost));
    let diff = assert_ok(&sandbox, &["diff", "--repo", repo_arg, &sound, &damaged]);
    assert_eq!(diff.lines().count(), 1, "{}", &diff[..diff.len().min(200)]);
    assert!(
        diff.trim_end().ends_with(&deepest),
        "{}",
        &diff[diff.len().saturating_sub(200)..]
    );
    assert_refused(
        &sandbox,
        &["check", "--repo", repo_arg],
        "not listed in any index file",
    );
    assert_ok(&sandbox, &["repair", "checkpoints", "--repo", repo_arg]);
    assert_ok(&sandbox, &["check", "--repo", repo_arg]);
}

#[test]
fn ls_lists_a_tree_deeper_than_its_stack() {
    // `ls -r` prints every path whole, so its output grows with the square of the depth; a
    // smaller stack (1 MiB instead of 8) reaches the depth where a recursive walk overflows
    // with a bounded amount of output.
    let depth = 6_000;
    let sandbox = Sandbox::new();
    let (path, repo) = plain_repo(&sandbox, "repo");
    let leaf = store_hello_chunk(&repo);
    let ckpt = save_checkpoint(&repo, deep_chain(&repo, depth, leaf));
    let mut command = small_stack(sandbox.cairn());
    command.args(["ls", "-r", "--repo", path.to_str().unwrap(), &ckpt]);
    let run = run_bounded(&mut command, TIME_LIMIT);
    run.assert_within(MAX_RSS_BYTES);
    assert_no_crash(&run.output, "ls -r");
    assert!(run.output.status.success(), "{}", stderr(&run.output));
    let listing = String::from_utf8(run.output.stdout).unwrap();
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), depth, "one line per directory and the file");
    assert!(lines[0].ends_with(" d"), "{}", lines[0]);
    let deepest = format!("{}f", "d/".repeat(depth - 1));
    assert!(lines[depth - 1].ends_with(&deepest));
}

/// `command` with its main thread's stack limited to 1 MiB.
fn small_stack(mut command: Command) -> Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit is async-signal-safe and touches only the child being spawned.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 1 << 20,
                rlim_max: 1 << 20,
            };
            if libc::setrlimit(libc::RLIMIT_STACK, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
}

// ---- 12. Files whose size disagrees with their chunks ----

/// A repository with `short` (size 100 over a 5-byte chunk) and `inflated` (a chunk length of
/// 4e9 over a 6-byte blob), plus an honest `fine`.
fn lying_sizes(sandbox: &Sandbox) -> (PathBuf, String) {
    let (path, repo) = plain_repo(sandbox, "repo");
    let ids = store_blobs(
        &repo,
        &[
            (BlobKind::Data, b"hello".to_vec()),
            (BlobKind::Data, b"hello\n".to_vec()),
        ],
    );
    let short = file(
        "short",
        vec![ChunkRef {
            id: ids[0],
            length: 5,
        }],
        100,
    );
    let inflated = file(
        "inflated",
        vec![ChunkRef {
            id: ids[1],
            length: 4_000_000_000,
        }],
        4_000_000_000,
    );
    let fine = file(
        "fine",
        vec![ChunkRef {
            id: ids[0],
            length: 5,
        }],
        5,
    );
    let ckpt = save_tree_checkpoint(&repo, Tree::from_entries(vec![fine, inflated, short]));
    (path, ckpt)
}

#[test]
fn check_flags_files_whose_size_disagrees_with_their_chunks() {
    let sandbox = Sandbox::new();
    let (path, ckpt) = lying_sizes(&sandbox);
    let repo_arg = path.to_str().unwrap();
    for args in [
        &["check", "--repo", repo_arg][..],
        &["check", "--read-data", "--repo", repo_arg],
    ] {
        let output = assert_refused(&sandbox, args, "short");
        let said = format!(
            "{}{}",
            stderr(&output),
            String::from_utf8_lossy(&output.stdout)
        );
        assert!(said.contains("inflated"), "{said}");
        assert!(!said.contains("fine"), "{said}");
    }
    assert_refused(
        &sandbox,
        &["cat", "--repo", repo_arg, &format!("{ckpt}:short")],
        "100",
    );
    assert_refused(
        &sandbox,
        &["cat", "--repo", repo_arg, &format!("{ckpt}:inflated")],
        "4000000000",
    );
    assert_eq!(
        assert_ok(
            &sandbox,
            &["cat", "--repo", repo_arg, &format!("{ckpt}:fine")]
        ),
        "hello"
    );
}

#[test]
fn the_mount_gives_eio_for_files_whose_size_disagrees_with_their_chunks() {
    let sandbox = Sandbox::new();
    let (path, _) = lying_sizes(&sandbox);
    let mount = Mounted::start(&sandbox, &path);
    let read = |name: &str| std::fs::read(mount.path("latest").join(name));
    let results = [read("short"), read("inflated"), read("fine")];
    // Unmounted before the assertions, which may panic.
    drop(mount);
    let [short, inflated, fine] = results;
    for (name, result) in [("short", short), ("inflated", inflated)] {
        let error = result.expect_err(name);
        assert_eq!(error.raw_os_error(), Some(libc::EIO), "{name}: {error}");
    }
    assert_eq!(fine.unwrap(), b"hello");
}
