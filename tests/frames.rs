//! Frames of several small blobs (format 3, docs/FORMAT.md §8): small files next to each other
//! in a backup are compressed together, and every reader still gets any one file by itself:
//! restore, `cat`, the mount, `check --read-data`, prune's repacking, a copy to another
//! repository. Older repositories keep their own format.

mod common;

use cairn::repo::codec::Codec;
use cairn::repo::pack::{PackEntry, read_header};
use common::*;
use std::fs;
use std::path::Path;

fn text(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// 400 small text files in 8 directories, like source code: compressible, each different,
/// two with the same content; and one file of several chunks.
fn write_small_files(root: &Path) {
    for dir in 0..8 {
        let dir_path = root.join(format!("dir{dir}"));
        fs::create_dir_all(&dir_path).unwrap();
        for file in 0..50 {
            let mut body = String::new();
            for line in 0..(20 + (dir * 50 + file) % 90) {
                body += &format!(
                    "fn item_{dir}_{file}_{line}(value: u32) -> u32 {{ value * {line} }}\n"
                );
            }
            fs::write(dir_path.join(format!("f{file}.rs")), body).unwrap();
        }
    }
    fs::write(
        root.join("dir0/copy.rs"),
        fs::read(root.join("dir3/f7.rs")).unwrap(),
    )
    .unwrap();
    fs::write(root.join("large.bin"), pseudo_random(3 << 20, 7)).unwrap();
}

#[test]
fn small_files_share_frames_and_every_reader_cuts_each_one_out() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    write_small_files(&source);
    let repo = sandbox.plain_repo_with_backup_of(&source);

    let entries = pack_entries(&repo);
    let shared: Vec<&PackEntry> = entries.iter().filter(|e| !e.is_alone()).collect();
    assert!(
        shared.len() >= 300,
        "most small files share frames: {} of {}",
        shared.len(),
        entries.len()
    );
    assert!(
        shared.iter().all(|e| e.frame_raw_length <= 4 << 20),
        "a frame is closed near its target size"
    );

    // Restore, cat, check: each file is cut out of its frame and checked against its id.
    assert_same_tree(&source, &sandbox.restore(&repo, "latest", "restored"));
    let one = sandbox.ok(&["cat", "--repo", text(&repo), "latest:dir6/f31.rs"]);
    assert_eq!(
        one.as_bytes(),
        fs::read(source.join("dir6/f31.rs")).unwrap()
    );
    sandbox.ok(&["check", "--repo", text(&repo), "--read-data"]);

    // The mount reads files of one frame in any order.
    let mounted = Mounted::start(&sandbox, &repo);
    for rel in ["dir2/f40.rs", "dir2/f3.rs", "dir0/copy.rs", "large.bin"] {
        let read = fs::read(mounted.path(&format!("latest/{rel}"))).unwrap();
        assert_eq!(read, fs::read(source.join(rel)).unwrap(), "{rel}");
    }
    assert!(mounted.terminate().success());

    // Half the files go; prune repacks frames that hold some of them, keeping the rest whole.
    for dir in 0..8 {
        for file in (0..50).step_by(2) {
            fs::remove_file(source.join(format!("dir{dir}/f{file}.rs"))).unwrap();
        }
    }
    sandbox.ok(&["backup", "--repo", text(&repo), text(&source)]);
    sandbox.ok(&[
        "forget",
        "--repo",
        text(&repo),
        "--keep-last",
        "1",
        "--prune",
    ]);
    sandbox.ok(&["prune", "--repo", text(&repo), "--max-unused", "0"]);
    sandbox.ok(&["check", "--repo", text(&repo), "--read-data"]);
    assert_same_tree(&source, &sandbox.restore(&repo, "latest", "after-prune"));

    // A copy into another repository keeps blobs that shared a frame in shared frames (it
    // stored each alone, losing what compressing them together saved), and restores the same.
    let copy = sandbox.path("copy");
    sandbox.ok(&["init", "--repo", text(&copy), "--encryption", "none"]);
    sandbox.ok(&["sync", text(&repo), text(&copy)]);
    sandbox.ok(&["check", "--repo", text(&copy), "--read-data"]);
    assert_same_tree(&source, &sandbox.restore(&copy, "latest", "from-copy"));
    let shared_in = |repo: &Path| pack_entries(repo).iter().filter(|e| !e.is_alone()).count();
    let (kept, copied) = (shared_in(&repo), shared_in(&copy));
    assert!(kept >= 100, "the pruned repository shares frames: {kept}");
    // (A frame of the copy may be cut where the source's was not, leaving a blob alone.)
    assert!(
        copied * 10 >= kept * 9,
        "the copy shares frames as the source does: {copied} of {kept}"
    );
}

#[test]
fn a_format_2_repository_is_written_in_its_own_format() {
    let sandbox = Sandbox::new();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v2-none/repo");
    let repo = sandbox.path("repo");
    copy_tree(&fixture, &repo);
    let source = sandbox.path("source");
    write_small_files(&source);
    sandbox.ok(&["backup", "--repo", text(&repo), text(&source)]);

    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(repo.join("config")).unwrap()).unwrap();
    assert_eq!(config["cairn_repository"], 2, "never upgraded in place");
    let codec = Codec::new(None, 3).with_format(2);
    for dir in fs::read_dir(repo.join("data")).unwrap() {
        for pack in fs::read_dir(dir.unwrap().path()).unwrap() {
            let bytes = fs::read(pack.unwrap().path()).unwrap();
            let entries = read_header(&bytes, &codec, &|| "pack".into()).unwrap();
            assert!(entries.iter().all(PackEntry::is_alone));
        }
    }
    sandbox.ok(&["check", "--repo", text(&repo), "--read-data"]);
    assert_same_tree(&source, &sandbox.restore(&repo, "latest", "restored"));
}
