//! End-to-end tests of `cairn sync` between local directories and repositories: repository
//! copies that move only missing blobs, checkpoints and directories synced into directories
//! like rsync (unchanged files untouched, changed ones rebuilt from their own chunks,
//! `--delete`), directory pulls, dry runs, interrupted copies and hostile targets.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A password file in the sandbox holding `password`.
fn password_file(sandbox: &Sandbox, name: &str, password: &str) -> String {
    let file = sandbox.path(name);
    fs::write(&file, format!("{password}\n")).unwrap();
    file.to_str().unwrap().to_owned()
}

fn json(sandbox: &Sandbox, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    serde_json::from_str(&sandbox.ok(&all)).unwrap()
}

fn text(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Version 2 of a `make_tree` tree: 100 bytes changed in the middle of the 3 MB file, one
/// file rewritten, one removed, one added.
fn make_version_2(root: &Path) {
    let big = root.join("dir/big.bin");
    let mut bytes = fs::read(&big).unwrap();
    bytes[1_500_000..1_500_100].fill(0xAB);
    fs::write(&big, bytes).unwrap();
    set_mtime(&big, 1_700_000_000, 1);
    fs::write(root.join("dir/nested/deeper/small"), b"rewritten").unwrap();
    fs::remove_file(root.join("empty")).unwrap();
    fs::write(root.join("new.txt"), b"new in version 2").unwrap();
}

/// A source tree and a repository holding two checkpoints of it (v1, v2).
struct TwoVersions {
    sandbox: Sandbox,
    source: PathBuf,
    repo: PathBuf,
    password: String,
    first: String,
}

impl TwoVersions {
    /// `encryption` is the repository's mode: `none` makes chunk boundaries the same in every
    /// run (no secret gear seed), for tests that count reused bytes.
    fn new(encryption: &str) -> Self {
        let sandbox = Sandbox::new();
        let source = sandbox.path("source");
        make_tree(&source);
        let repo = sandbox.path("repo");
        let password = password_file(&sandbox, "pw", "first secret");
        sandbox.ok(&[
            "init",
            "--repo",
            text(&repo),
            "--password-file",
            &password,
            "--encryption",
            encryption,
        ]);
        // A password given for a `none` repository is refused as a downgrade.
        let secret: &[&str] = match encryption {
            "none" => &[],
            _ => &["--password-file", &password],
        };
        let backup = |sandbox: &Sandbox| {
            let args = ["backup", "--repo", text(&repo)];
            json(sandbox, &[&args[..], secret, &[text(&source)]].concat())
        };
        let first = backup(&sandbox)["short_id"].as_str().unwrap().to_owned();
        make_version_2(&source);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        backup(&sandbox);
        TwoVersions {
            sandbox,
            source,
            repo,
            password,
            first,
        }
    }
}

#[test]
fn a_repository_copy_moves_only_missing_blobs_and_restores_identically() {
    let t = TwoVersions::new("password");
    let sandbox = &t.sandbox;
    let copy = sandbox.path("copy");
    let copy_password = password_file(sandbox, "pw2", "second secret");
    let main = ["--password-file", copy_password.as_str()];
    let from = ["--from-password-file", t.password.as_str()];
    // A repository not made alike is refused with the way out.
    let stranger = sandbox.path("stranger");
    sandbox.ok(&[&["init", "--repo", text(&stranger)][..], &main].concat());
    let refused =
        sandbox.run(&[&["sync", text(&t.repo), text(&stranger)][..], &main, &from].concat());
    assert_fails(&refused, 1, "--like");

    sandbox.ok(&[
        &["init", "--repo", text(&copy), "--like", text(&t.repo)][..],
        &main,
        &from,
    ]
    .concat());
    // The first checkpoint alone, then everything the copy lacks (the second).
    let first_only = format!("{}::{}", text(&t.repo), t.first);
    let one = json(
        sandbox,
        &[&["sync", &first_only, text(&copy)][..], &main, &from].concat(),
    );
    assert_eq!(one["checkpoints_copied"], 1, "{one}");
    let blobs_one = one["blobs_copied"].as_u64().unwrap();
    assert!(blobs_one > 5, "{one}");
    let dry = json(
        sandbox,
        &[
            &["sync", "--dry-run", text(&t.repo), text(&copy)][..],
            &main,
            &from,
        ]
        .concat(),
    );
    assert_eq!(dry["checkpoints_copied"], 1, "{dry}");
    let rest = json(
        sandbox,
        &[&["sync", text(&t.repo), text(&copy)][..], &main, &from].concat(),
    );
    assert_eq!(rest["checkpoints_copied"], 1, "{rest}");
    assert_eq!(
        rest["blobs_copied"], dry["blobs_copied"],
        "the dry run planned the same: {dry} {rest}"
    );
    assert_eq!(rest["bytes_transferred"], dry["bytes_transferred"]);
    // Version 2 changed three files: a few chunks and the trees above them.
    let blobs_two = rest["blobs_copied"].as_u64().unwrap();
    assert!(blobs_two < blobs_one, "{one} {rest}");
    assert!(rest["blobs_skipped"].as_u64().unwrap() > 0, "{rest}");
    assert!(
        rest["bytes_transferred"].as_u64().unwrap() < one["bytes_transferred"].as_u64().unwrap(),
        "{one} {rest}"
    );
    let again = json(
        sandbox,
        &[&["sync", text(&t.repo), text(&copy)][..], &main, &from].concat(),
    );
    assert_eq!(
        (
            again["checkpoints_copied"].as_u64(),
            again["blobs_copied"].as_u64()
        ),
        (Some(0), Some(0)),
        "{again}"
    );

    let listed = sandbox.ok(&[&["list", "--repo", text(&copy)][..], &main].concat());
    assert_eq!(
        listed.lines().filter(|l| l.contains("source")).count(),
        2,
        "{listed}"
    );
    let restored = sandbox.path("restored");
    sandbox.ok(&[
        &[
            "restore",
            "--repo",
            text(&copy),
            "latest",
            "--target",
            text(&restored),
        ][..],
        &main,
    ]
    .concat());
    assert_same_tree(&t.source, &restored);
    let check =
        sandbox.run(&[&["check", "--read-data", "--repo", text(&copy)][..], &main].concat());
    assert!(check.status.success(), "{}", stderr(&check));
    // The copy is sealed under its own key: the source's password does not open it.
    let wrong = sandbox.run(&[
        "list",
        "--repo",
        text(&copy),
        "--password-file",
        &t.password,
    ]);
    assert_fails(&wrong, 1, "wrong password");
}

#[test]
fn a_checkpoint_into_a_directory_rewrites_only_what_changed() {
    let t = TwoVersions::new("none");
    let sandbox = &t.sandbox;
    let target = sandbox.path("target");
    let password: [&str; 0] = [];
    let first = format!("{}::{}", text(&t.repo), t.first);
    let initial = json(
        sandbox,
        &[&["sync", &first, text(&target)][..], &password].concat(),
    );
    assert!(initial["files_written"].as_u64().unwrap() >= 9, "{initial}");
    fs::write(target.join("extra"), b"not in any checkpoint").unwrap();
    let kept_inode = fs::metadata(target.join("dir/nested/text.txt"))
        .unwrap()
        .ino();

    let latest = format!("{}::latest", text(&t.repo));
    let dry = json(
        sandbox,
        &[
            &["sync", "--dry-run", "--delete", &latest, text(&target)][..],
            &password,
        ]
        .concat(),
    );
    assert_eq!(dry["entries_deleted"], 2, "extra and empty: {dry}");
    assert!(target.join("extra").exists(), "a dry run deletes nothing");

    let update = json(
        sandbox,
        &[&["sync", "--delete", &latest, text(&target)][..], &password].concat(),
    );
    assert_eq!(
        update["files_written"], 3,
        "big.bin, small, new.txt: {update}"
    );
    assert_eq!(update["entries_deleted"], 2, "{update}");
    assert!(update["files_unchanged"].as_u64().unwrap() >= 8, "{update}");
    // The 3 MB file changed in 100 bytes: most of it came from the old file, not the repository.
    let reused = update["bytes_reused"].as_u64().unwrap();
    assert!(reused >= 1_000_000, "{update}");
    assert!(
        update["bytes_transferred"].as_u64().unwrap() < 2_000_000,
        "{update}"
    );
    assert_same_tree(&t.source, &target);
    assert_eq!(
        fs::metadata(target.join("dir/nested/text.txt"))
            .unwrap()
            .ino(),
        kept_inode,
        "an unchanged file is left alone"
    );
    let leftovers: Vec<_> = fs::read_dir(target.join("dir"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".cairn-sync-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files stay behind");

    let again = json(
        sandbox,
        &[&["sync", "--delete", &latest, text(&target)][..], &password].concat(),
    );
    assert_eq!(
        (
            again["files_written"].as_u64(),
            again["bytes_transferred"].as_u64()
        ),
        (Some(0), Some(0)),
        "{again}"
    );
}

#[test]
fn a_directory_into_a_directory_matches_it_and_keeps_extras_without_delete() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    make_tree(&source);
    let target = sandbox.path("mirror");
    let first = json(&sandbox, &["sync", text(&source), text(&target)]);
    assert!(first["files_written"].as_u64().unwrap() >= 9, "{first}");
    assert_same_tree(&source, &target);
    assert!(
        allocated_bytes(&target.join("sparse")) < 1 << 20,
        "holes stay holes"
    );

    make_version_2(&source);
    // Without --delete, the removed file stays; with it, the trees match again.
    let kept = json(&sandbox, &["sync", text(&source), text(&target)]);
    assert_eq!(kept["entries_deleted"], 0, "{kept}");
    assert!(target.join("empty").exists());
    let update = json(
        &sandbox,
        &["sync", "--delete", text(&source), text(&target)],
    );
    assert_eq!(update["entries_deleted"], 1, "{update}");
    assert_same_tree(&source, &target);
    // A mode change alone (same size and mtime) still reaches the copy.
    fs::set_permissions(
        source.join("hello.txt"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    sandbox.ok(&["sync", text(&source), text(&target)]);
    assert_same_tree(&source, &target);

    let inside = sandbox.run(&["sync", text(&source), text(&source.join("dir/inside"))]);
    assert_fails(&inside, 1, "overlap");
    assert!(!source.join("dir/inside").exists());
}

#[test]
fn a_directory_into_a_repository_is_a_backup_with_the_stat_cache() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    make_tree(&source);
    let repo = sandbox.path("repo");
    sandbox.ok(&["init", "--repo", text(&repo), "--encryption", "none"]);
    let first = json(&sandbox, &["sync", text(&source), text(&repo)]);
    assert_eq!(first["checkpoints_copied"], 1, "{first}");
    assert!(
        first["bytes_transferred"].as_u64().unwrap() > 3_000_000,
        "{first}"
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let second = json(&sandbox, &["sync", text(&source), text(&repo)]);
    assert_eq!(
        (
            second["blobs_copied"].as_u64(),
            second["bytes_transferred"].as_u64()
        ),
        (Some(0), Some(0)),
        "{second}"
    );
    let restored = sandbox.path("restored");
    sandbox.ok(&["sync", &format!("{}::latest", text(&repo)), text(&restored)]);
    assert_same_tree(&source, &restored);
}

#[test]
fn a_sync_never_writes_through_a_symlink_in_the_target() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    make_tree(&source);
    let repo = sandbox.plain_repo_with_backup_of(&source);
    let outside = sandbox.path("outside");
    fs::create_dir(&outside).unwrap();
    let target = sandbox.path("target");
    fs::create_dir(&target).unwrap();
    // Where the checkpoint has the directory `dir` and the file `hello.txt`, the target
    // has symlinks pointing out of it.
    std::os::unix::fs::symlink(&outside, target.join("dir")).unwrap();
    std::os::unix::fs::symlink(outside.join("hello.txt"), target.join("hello.txt")).unwrap();
    sandbox.ok(&["sync", &format!("{}::latest", text(&repo)), text(&target)]);
    // A target that contains the repository is refused: --delete would remove it.
    let parent = sandbox.dir.path().to_str().unwrap();
    let overlap = sandbox.run(&[
        "sync",
        "--delete",
        &format!("{}::latest", text(&repo)),
        parent,
    ]);
    assert_fails(&overlap, 1, "overlap");
    assert!(repo.join("config").exists());
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "something was written outside the target"
    );
    assert_same_tree(&source, &target);
}

#[test]
fn a_killed_copy_completes_when_run_again() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    fs::create_dir(&source).unwrap();
    for i in 0..6 {
        fs::write(source.join(format!("f{i}")), pseudo_random(2_000_000, i)).unwrap();
    }
    let repo = sandbox.plain_repo_with_backup_of(&source);
    let copy = sandbox.path("copy");
    sandbox.ok(&[
        "init",
        "--repo",
        text(&copy),
        "--encryption",
        "none",
        "--like",
        text(&repo),
    ]);
    // At 2 MB/s the 12 MB copy takes about 6 s; it is killed after 1 s.
    let mut child = sandbox
        .cairn()
        .args(["sync", "--limit-rate", "2M", text(&repo), text(&copy)])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(1));
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        fs::read_dir(copy.join("checkpoints"))
            .map(|d| d.count())
            .unwrap_or(0),
        0,
        "a checkpoint before its blobs"
    );
    let rerun = json(&sandbox, &["sync", text(&repo), text(&copy)]);
    assert_eq!(rerun["checkpoints_copied"], 1, "{rerun}");
    for repository in [&repo, &copy] {
        let check = sandbox.run(&["check", "--read-data", "--repo", text(repository)]);
        assert!(check.status.success(), "{}", stderr(&check));
    }
    let restored = sandbox.path("restored");
    sandbox.ok(&[
        "restore",
        "--repo",
        text(&copy),
        "latest",
        "--target",
        text(&restored),
    ]);
    assert_same_tree(&source, &restored);
}

#[test]
fn an_interrupted_copy_keeps_its_packs_says_so_and_the_rerun_copies_only_the_rest() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    fs::create_dir(&source).unwrap();
    for i in 0..6 {
        fs::write(
            source.join(format!("f{i}")),
            pseudo_random(8_000_000, 60 + i),
        )
        .unwrap();
    }
    let repo = sandbox.plain_repo_with_backup_of(&source);
    let copy = sandbox.path("copy");
    let like = [
        "init",
        "--repo",
        text(&copy),
        "--encryption",
        "none",
        "--like",
    ];
    sandbox.ok(&[&like[..], &[text(&repo)]].concat());
    let child = sandbox
        .cairn()
        .args(["sync", "--limit-rate", "16M", text(&repo), text(&copy)])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..1200 {
        if pack_bytes(&copy).0 > 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    // SAFETY: signals a child this test started and has not waited for.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let output = child.wait_with_output().unwrap();
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(130), "{message}");
    assert!(message.contains("packs kept"), "{message}");
    assert_eq!(
        fs::read_dir(copy.join("locks")).unwrap().count(),
        0,
        "lock released"
    );
    let (kept, _) = pack_bytes(&copy);
    assert!(kept > 0);

    let rerun = json(&sandbox, &["sync", text(&repo), text(&copy)]);
    assert_eq!(rerun["checkpoints_copied"], 1, "{rerun}");
    let ((whole, _), (copied, _)) = (pack_bytes(&repo), pack_bytes(&copy));
    assert!(
        copied <= whole + whole / 20,
        "{copied} bytes copied in all for {whole}: {rerun}"
    );
    let check = sandbox.run(&["check", "--read-data", "--repo", text(&copy)]);
    assert!(check.status.success(), "{}", stderr(&check));
}

#[test]
fn a_full_disk_fails_clearly_and_leaves_nothing_half_written() {
    let sandbox = Sandbox::new();
    let Some(_disk) = SmallDisk::mount(&sandbox.path("small"), 4) else {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    };
    let source = sandbox.path("source");
    fs::create_dir(&source).unwrap();
    for i in 0..4 {
        fs::write(
            source.join(format!("f{i}")),
            pseudo_random(1_500_000, 40 + i),
        )
        .unwrap();
    }
    let repo = sandbox.plain_repo_with_backup_of(&source);

    // Into a directory: the files that fit are whole, the rest absent, no temporary files.
    let target = sandbox.path("small/target");
    let full = sandbox.run(&["sync", &format!("{}::latest", text(&repo)), text(&target)]);
    assert_fails(&full, 3, "No space left");
    for entry in fs::read_dir(&target).unwrap().flatten() {
        let name = entry.file_name();
        assert!(
            !name.to_string_lossy().starts_with(".cairn-sync-"),
            "{name:?} left behind"
        );
        let written = fs::read(entry.path()).unwrap();
        assert_eq!(
            written,
            fs::read(source.join(&name)).unwrap(),
            "{name:?} half-written"
        );
    }

    // Into a repository: a clear error and no checkpoint.
    let copy = sandbox.path("small/copy");
    sandbox.ok(&[
        "init",
        "--repo",
        text(&copy),
        "--encryption",
        "none",
        "--like",
        text(&repo),
    ]);
    let full = sandbox.run(&["sync", text(&repo), text(&copy)]);
    assert_fails(&full, 1, "No space left");
    assert_eq!(
        fs::read_dir(copy.join("checkpoints")).map_or(0, |d| d.count()),
        0
    );
}
