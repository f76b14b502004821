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
    let steps = Steps::new();
    let t = TwoVersions::new("password");
    let sandbox = &t.sandbox;
    let copy = sandbox.path("copy");
    let copy_password = password_file(sandbox, "pw2", "second secret");
    let main = ["--password-file", copy_password.as_str()];
    let from = ["--from-password-file", t.password.as_str()];
    steps.enter("a repository not made alike is refused");
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
    steps.enter("the first checkpoint alone, a dry run, then the rest");
    // The first checkpoint alone, then everything the copy lacks (the second).
    let first_only = format!("{}::{}", text(&t.repo), t.first);
    let one = json(
        sandbox,
        &[&["sync", &first_only, text(&copy)][..], &main, &from].concat(),
    );
    assert_eq!(one["checkpoints_copied"], 1, "{one}");
    assert_eq!(
        one["errors"], 0,
        "a count, as backup's and list's are: {one}"
    );
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
    let said = sandbox.ok(&[
        &["sync", "--dry-run", text(&t.repo), text(&copy)][..],
        &main,
        &from,
    ]
    .concat());
    assert!(said.contains("1 checkpoint would be copied;"), "{said}");
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
    steps.enter("the second copy moves only the changed chunks and trees");
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
    steps.enter("the copy is sealed under its own key");
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
    let contents = format!("{}/", text(&source));
    let first = json(&sandbox, &["sync", "--sparse", &contents, text(&target)]);
    assert!(first["files_written"].as_u64().unwrap() >= 9, "{first}");
    assert_same_tree(&source, &target);
    assert!(
        allocated_bytes(&target.join("sparse")) < 1 << 20,
        "with --sparse, holes stay holes"
    );

    make_version_2(&source);
    // Without --delete, the removed file stays; with it, the trees match again.
    let kept = json(&sandbox, &["sync", &contents, text(&target)]);
    assert_eq!(kept["entries_deleted"], 0, "{kept}");
    assert!(target.join("empty").exists());
    let update = json(&sandbox, &["sync", "--delete", &contents, text(&target)]);
    assert_eq!(update["entries_deleted"], 1, "{update}");
    assert_same_tree(&source, &target);
    // A mode change alone (same size and mtime) still reaches the copy.
    fs::set_permissions(
        source.join("hello.txt"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    sandbox.ok(&["sync", &contents, text(&target)]);
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
    random_files(&source, 6, 8_000_000, 60);
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
    random_files(&source, 6, 1_500_000, 40);
    let repo = sandbox.plain_repo_with_backup_of(&source);

    // Into a directory, from a checkpoint or a directory: the sync stops at the first file
    // that does not fit and says so once; the files that fit are whole, the rest absent, no
    // temporary files.
    let target = sandbox.path("small/target");
    let checkpoint = format!("{}::latest", text(&repo));
    let contents = format!("{}/", text(&source));
    for from in [&checkpoint, &contents] {
        let full = sandbox.run(&["sync", from, text(&target)]);
        let message = stderr(&full);
        assert_eq!(full.status.code(), Some(1), "{message}");
        assert_eq!(
            message.to_lowercase().matches("no space left").count(),
            1,
            "one message: {message}"
        );
        assert!(message.contains("not synced"), "{message}");
        assert!(message.contains("more free space"), "{message}");
        let mut synced = 0;
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
            synced += 1;
        }
        assert!((1..6).contains(&synced), "{synced} files synced");
        fs::remove_dir_all(&target).unwrap();
    }

    // `--json` carries the same facts.
    let full = sandbox.run(&["sync", &checkpoint, text(&target), "--json"]);
    assert_eq!(full.status.code(), Some(1), "{}", stderr(&full));
    let report: serde_json::Value = serde_json::from_slice(&full.stdout).unwrap();
    let out_of_space = &report["out_of_space"];
    assert!(
        out_of_space["message"]
            .as_str()
            .unwrap()
            .contains("No space left"),
        "{report}"
    );
    assert!(
        out_of_space["bytes_missing"].as_u64().unwrap() > 0,
        "{report}"
    );
    assert!(
        out_of_space["bytes_needed"].as_u64().unwrap() > 0,
        "{report}"
    );
    assert!(report["files_written"].as_u64().unwrap() >= 1, "{report}");
    fs::remove_dir_all(&target).unwrap();

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

#[test]
fn times_before_1970_and_after_2262_survive_every_sync_into_a_directory() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    make_tree_with_far_times(&source);
    let contents = format!("{}/", text(&source));

    let mirror = sandbox.path("mirror");
    sandbox.ok(&["sync", &contents, text(&mirror)]);
    assert_same_tree(&source, &mirror);

    let repo = sandbox.plain_repo_with_backup_of(&source);
    let from_checkpoint = sandbox.path("from-checkpoint");
    let latest = format!("{}::latest", text(&repo));
    sandbox.ok(&["sync", &latest, text(&from_checkpoint)]);
    assert_same_tree(&source, &from_checkpoint);

    // Run again, nothing is rewritten: the times compare equal to the source's.
    let again = json(&sandbox, &["sync", &latest, text(&from_checkpoint)]);
    assert_eq!(again["files_written"], 0, "{again}");
}

#[test]
fn syncs_into_a_directory_keep_dense_files_dense_unless_asked_for_sparse() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    fs::create_dir_all(&source).unwrap();
    let bytes = write_dense_file_with_zeros(&source.join("dense.bin"));
    let repo = sandbox.plain_repo_with_backup_of(&source);
    let contents = format!("{}/", text(&source));
    let latest = format!("{}::latest", text(&repo));
    for from in [&contents, &latest] {
        for (flags, expect_sparse) in [(&[][..], false), (&["--sparse"][..], true)] {
            let target = sandbox.path("target");
            let _ = fs::remove_dir_all(&target);
            sandbox.ok(&[&["sync"][..], flags, &[from.as_str(), text(&target)]].concat());
            let synced = target.join("dense.bin");
            assert_eq!(fs::read(&synced).unwrap(), bytes);
            let allocated = allocated_bytes(&synced);
            if expect_sparse {
                assert!(allocated <= 5 << 19, "{from} --sparse: {allocated}");
            } else {
                assert!(allocated >= 3 << 20, "{from} dense: {allocated}");
            }
        }
    }
}

#[test]
fn device_nodes_are_skipped_and_named_by_every_run_into_a_directory_when_not_root() {
    if !running_as_root() {
        eprintln!("skipped: making a device node to back up needs root");
        return;
    }
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    fs::create_dir_all(&source).unwrap();
    fs::write(source.join("file"), b"kept\n").unwrap();
    mknod(&source.join("fifo"), libc::S_IFIFO, 0);
    mknod(&source.join("null"), libc::S_IFCHR, libc::makedev(1, 3));
    let repo = sandbox.plain_repo_with_backup_of(&source);
    let latest = format!("{}::latest", text(&repo));
    let contents = format!("{}/", text(&source));
    let runs: [(&str, Vec<&str>); 3] = [
        ("sync-checkpoint", vec!["sync", &latest]),
        ("sync-directory", vec!["sync", &contents]),
        (
            "restore",
            vec!["restore", "--repo", text(&repo), "latest", "--target"],
        ),
    ];
    for (name, args) in runs {
        let target = sandbox.path(name);
        fs::create_dir_all(&target).unwrap();
        let output = sandbox
            .cairn_as_nobody(&[&repo, &target])
            .args(&args)
            .arg(&target)
            .output()
            .unwrap();
        let said = stderr(&output);
        assert!(output.status.success(), "{name} failed: {said}");
        assert!(
            said.contains("null (device node; only root can create it)"),
            "{name}: {said}"
        );
        assert_eq!(fs::read(target.join("file")).unwrap(), b"kept\n", "{name}");
        assert!(target.join("fifo").exists(), "{name}");
        assert!(fs::symlink_metadata(target.join("null")).is_err(), "{name}");
    }
}

/// Runs `cairn sync ARGS`, asserting success; the stdout lines, sorted.
fn sorted_lines(sandbox: &Sandbox, args: &[&str]) -> Vec<String> {
    let mut lines: Vec<String> = sandbox.ok(args).lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

/// The itemized lines of a sync's output (its summary left out).
fn itemized(output: &str) -> Vec<String> {
    output
        .lines()
        .filter(|l| l.len() > 12 && l.as_bytes()[11] == b' ' && !l.contains("transferred"))
        .map(str::to_owned)
        .collect()
}

fn lchown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
}

fn mknod(path: &Path, kind: libc::mode_t, rdev: libc::dev_t) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: c is a valid path.
    assert_eq!(unsafe { libc::mknod(c.as_ptr(), kind | 0o640, rdev) }, 0);
}

#[test]
fn a_directory_without_a_trailing_slash_lands_inside_the_destination() {
    let sandbox = Sandbox::new();
    let misc = sandbox.path("src/misc");
    fs::create_dir_all(misc.join("sub")).unwrap();
    fs::write(misc.join("note"), b"misc").unwrap();
    let usb = sandbox.path("usb");
    for kept in ["photos", "music"] {
        fs::create_dir_all(usb.join(kept)).unwrap();
        fs::write(usb.join(kept).join("keep"), kept).unwrap();
    }
    // `src/misc` is the directory itself: it becomes usb/misc, and --delete acts only there.
    fs::create_dir_all(usb.join("misc")).unwrap();
    fs::write(usb.join("misc/stale"), b"old").unwrap();
    let report = json(&sandbox, &["sync", "--delete", text(&misc), text(&usb)]);
    assert_eq!(report["entries_deleted"], 1, "only misc/stale: {report}");
    assert_same_tree(&misc, &usb.join("misc"));
    for kept in ["photos", "music"] {
        assert!(usb.join(kept).join("keep").is_file(), "{kept} was deleted");
    }
    // `src/misc/` is its contents: usb2 becomes a copy of misc.
    let usb2 = sandbox.path("usb2");
    fs::create_dir_all(usb2.join("photos")).unwrap();
    sandbox.ok(&[
        "sync",
        "--delete",
        &format!("{}/", text(&misc)),
        text(&usb2),
    ]);
    assert_same_tree(&misc, &usb2);
    // A file goes into a destination directory under its name, or becomes a new name;
    // --delete touches nothing beside it.
    sandbox.ok(&["sync", "--delete", text(&misc.join("note")), text(&usb)]);
    assert_eq!(fs::read(usb.join("note")).unwrap(), b"misc");
    assert!(usb.join("photos/keep").is_file());
    sandbox.ok(&["sync", text(&misc.join("note")), text(&usb.join("renamed"))]);
    assert_eq!(fs::read(usb.join("renamed")).unwrap(), b"misc");
    let listed = sandbox.ok(&[
        "sync",
        "-i",
        text(&misc.join("note")),
        text(&sandbox.path("new/")),
    ]);
    assert_eq!(listed.lines().next(), Some(">f+++++++++ note"), "{listed}");
    assert!(sandbox.path("new/note").is_file());
}

#[test]
fn max_delete_leaves_the_rest_and_exits_25() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    fs::create_dir_all(&source).unwrap();
    fs::write(source.join("keep"), b"k").unwrap();
    let target = sandbox.path("target");
    fs::create_dir_all(target.join("extra/deep")).unwrap();
    for name in ["extra/deep/f", "extra/g", "zy", "zz"] {
        fs::write(target.join(name), name).unwrap();
    }
    let contents = format!("{}/", text(&source));
    let none = sandbox.run(&[
        "sync",
        "--delete",
        "--max-delete",
        "0",
        &contents,
        text(&target),
    ]);
    assert_fails(&none, 25, "--max-delete");
    assert_eq!(
        entries_below(&target).len(),
        7,
        "--max-delete 0 deletes nothing"
    );
    let two = sandbox
        .cairn()
        .args([
            "sync",
            "-i",
            "--delete",
            "--max-delete",
            "2",
            &contents,
            text(&target),
        ])
        .output()
        .unwrap();
    assert_fails(&two, 25, "--max-delete");
    let lines: Vec<&str> = std::str::from_utf8(&two.stdout)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with('*'))
        .collect();
    assert_eq!(
        lines,
        ["*deleting   extra/deep/f", "*deleting   extra/deep/"]
    );
    assert!(!target.join("extra/deep").exists() && target.join("extra/g").exists());
    let rest = json(&sandbox, &["sync", "--delete", &contents, text(&target)]);
    assert_eq!(rest["entries_deleted"], 4, "extra/g, extra, zy, zz: {rest}");
    assert_same_tree(&source, &target);
}

/// A tree with every kind of entry, hard links and an entry of each kind to change.
fn make_change_tree(root: &Path) {
    fs::create_dir_all(root.join("sub")).unwrap();
    fs::create_dir_all(root.join("typechg")).unwrap();
    fs::create_dir_all(root.join("gone")).unwrap();
    fs::write(root.join("a"), b"a\n").unwrap();
    fs::hard_link(root.join("a"), root.join("hard")).unwrap();
    std::os::unix::fs::symlink("a", root.join("lnk")).unwrap();
    mknod(&root.join("fifo"), libc::S_IFIFO, 0);
    fs::write(root.join("sub/b"), b"b\n").unwrap();
    fs::write(root.join("gone/x"), b"x\n").unwrap();
    fs::write(root.join("gone2"), b"2\n").unwrap();
    fs::write(root.join("same"), b"same\n").unwrap();
    if running_as_root() {
        mknod(&root.join("null"), libc::S_IFCHR, libc::makedev(1, 3));
    }
}

/// One change of each sort to a `make_change_tree` tree, and the lines rsync's
/// `-aHAX --delete --numeric-ids -i` prints for them, sorted.
fn change_tree(root: &Path) -> Vec<String> {
    let mut expected = vec![
        "*deleting   gone/",
        "*deleting   gone/x",
        "*deleting   gone2",
        ".S...p..... fifo",
        ".d..t...... ./",
        ">f+++++++++ new",
        ">f+++++++++ typechg",
        ">f.st...... sub/b",
        "cLc.t...... lnk -> sub",
        "hf+++++++++ zlink => same",
    ];
    if xattrs_supported(root) {
        xattr::set(root.join("a"), "user.x", b"1").unwrap();
        expected.extend([".f........x a", "hf........x hard"]);
    }
    fs::write(root.join("sub/b"), b"b and more\n").unwrap();
    set_mtime(&root.join("sub/b"), 1_100_000_000, 0);
    fs::remove_file(root.join("lnk")).unwrap();
    std::os::unix::fs::symlink("sub", root.join("lnk")).unwrap();
    set_mtime(&root.join("lnk"), 1_000_000_000, 0);
    chmod(&root.join("fifo"), 0o600);
    fs::remove_dir(root.join("typechg")).unwrap();
    fs::write(root.join("typechg"), b"t\n").unwrap();
    fs::remove_dir_all(root.join("gone")).unwrap();
    fs::remove_file(root.join("gone2")).unwrap();
    fs::write(root.join("new"), b"n\n").unwrap();
    fs::hard_link(root.join("same"), root.join("zlink")).unwrap();
    if running_as_root() {
        lchown(&root.join("null"), 7, 8);
        expected.push(".D....og... null");
    }
    set_mtime(root, 1_200_000_000, 0);
    let mut expected: Vec<String> = expected.into_iter().map(str::to_owned).collect();
    expected.sort();
    expected
}

#[test]
fn itemized_changes_are_rsyncs() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    make_change_tree(&source);
    let contents = format!("{}/", text(&source));
    let target = sandbox.path("target");
    let first = sorted_lines(&sandbox, &["sync", "-i", &contents, text(&target)]);
    assert!(first.contains(&"cd+++++++++ ./".to_owned()), "{first:?}");
    assert!(
        first.contains(&"hf+++++++++ hard => a".to_owned()),
        "{first:?}"
    );
    assert!(
        first.contains(&"cL+++++++++ lnk -> a".to_owned()),
        "{first:?}"
    );
    let twin = sandbox.path("twin");
    let copied = std::process::Command::new("cp")
        .args(["-a", text(&target), text(&twin)])
        .status()
        .unwrap();
    assert!(copied.success());
    let expected = change_tree(&source);
    let args = ["sync", "-i", "--delete", &contents, text(&target)];
    let mut listed = sorted_lines(&sandbox, &args);
    listed.retain(|l| !l.contains("transferred") && !l.contains("written"));
    assert_eq!(listed, expected);
    assert_same_tree(&source, &target);
    assert_eq!(itemized(&sandbox.ok(&args)), Vec::<String>::new());
    // `-v` names what is created, written, linked or deleted, not attribute changes.
    let named = sorted_lines(
        &sandbox,
        &["sync", "-v", "--delete", &contents, text(&twin)],
    );
    assert!(named.contains(&"deleting gone/x".to_owned()), "{named:?}");
    assert!(named.contains(&"lnk -> sub".to_owned()), "{named:?}");
    assert!(!named.iter().any(|l| l == "fifo"), "{named:?}");
}

#[test]
fn a_dry_run_reports_and_lists_exactly_what_the_real_run_does() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    make_change_tree(&source);
    let contents = format!("{}/", text(&source));
    let target = sandbox.path("target");
    sandbox.ok(&["sync", &contents, text(&target)]);
    // After a clean sync, hard links included, nothing would be written.
    let clean = json(&sandbox, &["sync", "--dry-run", &contents, text(&target)]);
    assert_eq!(clean["files_written"], 0, "{clean}");
    change_tree(&source);
    let twin = sandbox.path("twin");
    let copied = std::process::Command::new("cp")
        .args(["-a", text(&target), text(&twin)])
        .status()
        .unwrap();
    assert!(copied.success());
    let counts = |report: &serde_json::Value| {
        let mut report = report.clone();
        let fields = report.as_object_mut().unwrap();
        // Nothing crosses in a dry run.
        for moved in ["dry_run", "bytes_transferred", "bytes_reused"] {
            fields.remove(moved);
        }
        report
    };
    let sync = |extra: &[&str], dir: &Path| {
        let args = [&["sync", "--delete"][..], extra, &[&contents, text(dir)]].concat();
        sandbox.ok(&args)
    };
    let dry: serde_json::Value =
        serde_json::from_str(&sync(&["--dry-run", "--json"], &target)).unwrap();
    let dry_listing = sync(&["--dry-run", "-i"], &twin);
    let real: serde_json::Value = serde_json::from_str(&sync(&["--json"], &target)).unwrap();
    let real_listing = sync(&["-i"], &twin);
    assert_eq!(counts(&dry), counts(&real), "{dry} {real}");
    assert_eq!(itemized(&dry_listing), itemized(&real_listing));
    assert!(itemized(&real_listing).len() >= 10, "{real_listing}");
    assert_same_tree(&source, &target);
    assert_same_tree(&source, &twin);
}

/// A tree with an entry of each kind whose metadata alone will change.
fn make_metadata_tree(root: &Path) {
    fs::create_dir_all(root.join("d")).unwrap();
    for name in ["plain", "tagged", "retagged"] {
        fs::write(root.join(name), name).unwrap();
    }
    xattr::set(root.join("tagged"), "user.a", b"1").unwrap();
    xattr::set(root.join("retagged"), "user.b", b"1").unwrap();
    mknod(&root.join("fifo"), libc::S_IFIFO, 0);
    if running_as_root() {
        mknod(&root.join("null"), libc::S_IFCHR, libc::makedev(1, 3));
    }
    std::os::unix::fs::symlink("plain", root.join("link")).unwrap();
    for name in ["plain", "tagged", "retagged", "fifo", "link", "d"] {
        set_mtime(&root.join(name), 1_500_000_000, 0);
    }
}

/// Changes only metadata: xattrs added, changed, removed on files; mode, owner and mtime of
/// the FIFO and the device; owner and mtime of the symlink; mode, owner, mtime and xattrs
/// of the directory.
fn change_metadata(root: &Path) {
    xattr::set(root.join("plain"), "user.new", b"added").unwrap();
    xattr::set(root.join("retagged"), "user.b", b"changed").unwrap();
    xattr::remove(root.join("tagged"), "user.a").unwrap();
    let mut special = vec!["fifo"];
    if running_as_root() {
        special.push("null");
    }
    for name in special {
        chmod(&root.join(name), 0o604);
        set_mtime(&root.join(name), 1_600_000_000, 7);
    }
    chmod(&root.join("d"), 0o711);
    xattr::set(root.join("d"), "user.dir", b"x").unwrap();
    if running_as_root() {
        for name in ["fifo", "null", "link", "d"] {
            lchown(&root.join(name), 4321, 4322);
        }
    }
    set_mtime(&root.join("link"), 1_600_000_000, 9);
    set_mtime(&root.join("d"), 1_600_000_000, 11);
}

/// The inodes of the regular files below `dir`: a file fixed in place keeps its own.
fn file_inodes(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut inodes: Vec<_> = entries_below(dir)
        .into_iter()
        .filter(|p| fs::symlink_metadata(p).unwrap().is_file())
        .map(|p| {
            let inode = fs::metadata(&p).unwrap().ino();
            (p, inode)
        })
        .collect();
    inodes.sort();
    inodes
}

/// Syncs with `sync` (which makes `source`'s state reach `target`), changes only metadata in
/// `source`, syncs again and checks that every change arrived, in place.
fn metadata_changes_arrive(sandbox: &Sandbox, source: &Path, target: &Path, sync: &dyn Fn()) {
    sync();
    assert_same_tree(source, target);
    let inodes = file_inodes(target);
    change_metadata(source);
    sync();
    assert_same_tree(source, target);
    assert_eq!(
        file_inodes(target),
        inodes,
        "files were rewritten, not fixed in place"
    );
    let _ = sandbox;
}

#[test]
fn metadata_only_changes_reach_a_directory_from_a_directory() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    make_metadata_tree(&source);
    let target = sandbox.path("target");
    let contents = format!("{}/", text(&source));
    metadata_changes_arrive(&sandbox, &source, &target, &|| {
        sandbox.ok(&["sync", &contents, text(&target)]);
    });
}

#[test]
fn metadata_only_changes_reach_a_directory_from_a_checkpoint() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    make_metadata_tree(&source);
    let repo = sandbox.path("repo");
    sandbox.ok(&["init", "--repo", text(&repo), "--encryption", "none"]);
    let target = sandbox.path("target");
    let latest = format!("{}::latest", text(&repo));
    metadata_changes_arrive(&sandbox, &source, &target, &|| {
        sandbox.ok(&["backup", "--repo", text(&repo), text(&source)]);
        sandbox.ok(&["sync", &latest, text(&target)]);
    });
}

#[test]
fn metadata_only_changes_reach_a_directory_from_a_served_source() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    make_metadata_tree(&source);
    let token = sandbox.path("token");
    let (_server, url) = Server::source(&sandbox, "home", &source, &token);
    let target = sandbox.path("target");
    metadata_changes_arrive(&sandbox, &source, &target, &|| {
        sandbox.ok(&["sync", "--token-file", text(&token), &url, text(&target)]);
    });
}

#[test]
fn a_served_source_is_its_contents_and_a_directory_in_it_keeps_its_name() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    fs::create_dir_all(source.join("misc/sub")).unwrap();
    fs::write(source.join("misc/sub/f"), b"f").unwrap();
    fs::write(source.join("top"), b"t").unwrap();
    let token = sandbox.path("token");
    let (_server, url) = Server::source(&sandbox, "home", &source, &token);
    let sync = |from: &str, to: &Path| {
        sandbox.ok(&[
            "sync",
            "--delete",
            "--token-file",
            text(&token),
            from,
            text(to),
        ]);
    };
    // Like an rsync daemon's module: the source itself is its contents.
    let whole = sandbox.path("whole");
    sync(&url, &whole);
    assert_same_tree(&source, &whole);
    // A directory in it keeps its name in the destination, unless named with a slash; with
    // --delete, the destination's other entries stay.
    let usb = sandbox.path("usb");
    fs::create_dir_all(usb.join("photos")).unwrap();
    sync(&format!("{url}/misc"), &usb);
    assert_same_tree(&source.join("misc"), &usb.join("misc"));
    assert!(usb.join("photos").is_dir());
    let contents = sandbox.path("contents");
    sync(&format!("{url}/misc/"), &contents);
    assert_same_tree(&source.join("misc"), &contents);
    let file = sandbox.run(&[
        "sync",
        "--token-file",
        text(&token),
        &format!("{url}/top"),
        text(&contents),
    ]);
    assert_fails(&file, 1, "not a directory");
}

#[test]
fn a_directory_replaced_by_a_non_directory_is_deleted_like_rsync() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    fs::create_dir_all(&source).unwrap();
    for name in ["e", "empty", "x"] {
        fs::write(source.join(name), name).unwrap();
    }
    std::os::unix::fs::symlink("e", source.join("l")).unwrap();
    let target = sandbox.path("target");
    for dir in ["empty", "l/q", "x/sub"] {
        fs::create_dir_all(target.join(dir)).unwrap();
    }
    for name in ["l/q/z", "x/f", "x/sub/g"] {
        fs::write(target.join(name), name).unwrap();
    }
    let contents = format!("{}/", text(&source));
    // Without --delete a non-empty directory stays and is an error; an empty one is replaced.
    let kept = sandbox.run(&["sync", "-i", &contents, text(&target)]);
    assert_fails(&kept, 3, "non-empty directory");
    assert!(target.join("x/sub/g").is_file() && target.join("l/q/z").is_file());
    assert_eq!(fs::read(target.join("empty")).unwrap(), b"empty");
    let stdout = String::from_utf8_lossy(&kept.stdout);
    assert!(!stdout.contains("deleting"), "{stdout}");
    // With --delete each entry a replaced directory holds counts against --max-delete, the
    // same in a dry run as in the real run.
    let limited = ["sync", "--delete", "--max-delete", "2", "--json"];
    let places = [contents.as_str(), text(&target)];
    for run in [
        [&limited[..], &["--dry-run"], &places].concat(),
        [&limited[..], &places].concat(),
    ] {
        let output = sandbox.run(&run);
        assert_fails(&output, 3, "--max-delete");
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(report["entries_deleted"], 2, "l/q/z, l/q: {report}");
        assert_eq!(report["deletions_skipped"], 1, "x: {report}");
    }
    assert!(target.join("x/sub/g").is_file());
    assert_eq!(fs::read_link(target.join("l")).unwrap(), Path::new("e"));
    let listed = sandbox.ok(&["sync", "-i", "--delete", &contents, text(&target)]);
    assert_eq!(
        itemized(&listed),
        [
            "*deleting   x/f",
            "*deleting   x/sub/g",
            "*deleting   x/sub/",
            ">f+++++++++ x"
        ]
    );
    assert_same_tree(&source, &target);
    // --force replaces a non-empty directory without --delete, listing what it removes.
    fs::remove_file(target.join("x")).unwrap();
    fs::create_dir_all(target.join("x/sub")).unwrap();
    let forced = sandbox.ok(&["sync", "-v", "--force", &contents, text(&target)]);
    assert!(forced.lines().any(|l| l == "deleting x/sub/"), "{forced}");
    assert_same_tree(&source, &target);
}

#[test]
fn xattrs_cairn_does_not_manage_are_left_alone_in_the_target() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    fs::create_dir_all(&source).unwrap();
    if !running_as_root() || !xattrs_supported(&source) {
        return;
    }
    fs::write(source.join("f"), b"f").unwrap();
    fs::write(source.join("g"), b"g").unwrap();
    xattr::set(source.join("f"), "user.a", b"1").unwrap();
    // The source machine's label is not the target's to take.
    xattr::set(source.join("g"), "security.selinux", b"source_t").unwrap();
    let contents = format!("{}/", text(&source));
    let target = sandbox.path("target");
    sandbox.ok(&["sync", "--delete", &contents, text(&target)]);
    assert_eq!(
        xattr::get(target.join("g"), "security.selinux").unwrap(),
        None
    );
    // The target's own label stays; a trusted.* name the source lacks goes, as root.
    for name in ["f", "g", ""] {
        xattr::set(target.join(name), "security.selinux", b"target_t").unwrap();
    }
    xattr::set(target.join("f"), "trusted.x", b"1").unwrap();
    let first = sandbox.ok(&["sync", "-i", "--delete", &contents, text(&target)]);
    assert_eq!(itemized(&first), [".f........x f"]);
    for name in ["f", "g", ""] {
        let label = xattr::get(target.join(name), "security.selinux").unwrap();
        assert_eq!(label.as_deref(), Some(&b"target_t"[..]), "{name}");
    }
    assert_eq!(xattr::get(target.join("f"), "trusted.x").unwrap(), None);
    assert_eq!(
        xattr::get(target.join("f"), "user.a").unwrap().as_deref(),
        Some(&b"1"[..])
    );
    let second = sandbox.ok(&["sync", "-i", "--delete", &contents, text(&target)]);
    assert_eq!(itemized(&second), Vec::<String>::new(), "{second}");
}
