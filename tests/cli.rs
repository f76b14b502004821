//! End-to-end tests of the `cairn` binary on generated trees: round trips in every
//! encryption mode, deduplication, cache loss, wrong secrets, damage detection, soft errors
//! and the command-line contract.

mod common;

use common::*;
use std::fs;
use std::path::Path;
use std::process::Command;

const PASSWORD: &str = "correct horse battery staple";

/// Initialises a repository in `mode`; returns the extra arguments every command then needs.
fn init(sandbox: &Sandbox, repo: &Path, mode: &str) -> Vec<String> {
    let repo_arg = repo.to_str().unwrap().to_owned();
    let mut args = vec!["--repo".to_owned(), repo_arg];
    match mode {
        "keyfile" => {
            let key = sandbox.path("key.json");
            args.extend(["--key-file".to_owned(), key.to_str().unwrap().to_owned()]);
        }
        "password" => {
            let file = sandbox.path("password.txt");
            fs::write(&file, format!("{PASSWORD}\n")).unwrap();
            args.extend([
                "--password-file".to_owned(),
                file.to_str().unwrap().to_owned(),
            ]);
        }
        _ => {}
    }
    let mut init_args: Vec<&str> = vec!["init", "--encryption", mode];
    init_args.extend(args.iter().map(String::as_str));
    sandbox.ok(&init_args);
    args
}

fn with<'a>(command: &[&'a str], extra: &'a [String]) -> Vec<&'a str> {
    let mut all = command.to_vec();
    all.extend(extra.iter().map(String::as_str));
    all
}

fn backup_json(sandbox: &Sandbox, extra: &[String], paths: &[&Path]) -> serde_json::Value {
    let mut args = with(&["backup", "--json"], extra);
    args.extend(paths.iter().map(|p| p.to_str().unwrap()));
    serde_json::from_str(&sandbox.ok(&args)).unwrap()
}

#[test]
fn round_trip_in_every_encryption_mode() {
    for mode in ["none", "keyfile", "password"] {
        let sandbox = Sandbox::new();
        let source = sandbox.path("source");
        make_tree(&source);
        let extra = init(&sandbox, &sandbox.path("repo"), mode);
        let first = backup_json(&sandbox, &extra, &[&source]);
        assert_eq!(first["files"], 9, "{mode}: {first}");
        assert!(first["id"].as_str().unwrap().len() == 64);
        let target = sandbox.path("restored");
        sandbox.ok(&with(
            &[
                "restore",
                "latest",
                "--sparse",
                "--target",
                target.to_str().unwrap(),
            ],
            &extra,
        ));
        assert_same_tree(&source, &target);
        // With --sparse, holes stay holes: the 8 MiB sparse file holds two small writes.
        assert!(
            allocated_bytes(&target.join("sparse")) < 1 << 20,
            "{mode}: sparse file was filled"
        );
        let hello = sandbox.ok(&with(&["cat", "latest:hello.txt"], &extra));
        assert_eq!(hello, "hello, cairn\n");
        let check = sandbox.run(&with(&["check", "--read-data"], &extra));
        assert!(check.status.success(), "{mode}: {}", stderr(&check));
        if mode != "none" {
            // Encrypted: no plaintext in any object of the repository.
            for (path, bytes) in file_contents(&sandbox.path("repo")) {
                let leaked = bytes.windows(12).any(|w| w == b"hello, cairn");
                assert!(!leaked, "{mode}: {} holds plaintext", path.display());
            }
        }
    }
}

#[test]
fn unchanged_and_copied_data_add_almost_nothing() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    make_tree(&source);
    fs::write(source.join("more.bin"), pseudo_random(6_000_000, 9)).unwrap();
    let repo = sandbox.path("repo");
    let extra = init(&sandbox, &repo, "none");
    let first = backup_json(&sandbox, &extra, &[&source]);
    let before = disk_usage(&repo);
    let second = backup_json(&sandbox, &extra, &[&source]);
    assert_eq!(second["parent"], first["id"]);
    assert_eq!(
        second["bytes_read"], 0,
        "the stat cache should skip every file: {second}"
    );
    assert_eq!(
        second["tree"], first["tree"],
        "an unchanged tree keeps its id"
    );
    let growth = disk_usage(&repo) - before;
    assert!(growth < 1 << 20, "unchanged backup added {growth} bytes");

    let copy = sandbox.path("elsewhere/copy");
    fs::create_dir_all(copy.parent().unwrap()).unwrap();
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(&source)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    let before = disk_usage(&repo);
    let third = backup_json(&sandbox, &extra, &[&copy]);
    let growth = disk_usage(&repo) - before;
    let size = third["bytes"].as_u64().unwrap();
    assert!(
        growth * 100 < size,
        "a copy of {size} bytes added {growth} bytes"
    );
}

#[test]
fn index_cache_is_rebuilt_from_the_repository() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    make_tree(&source);
    let extra = init(&sandbox, &sandbox.path("repo"), "password");
    backup_json(&sandbox, &extra, &[&source]);
    fs::remove_dir_all(sandbox.path("cache")).unwrap();
    assert!(sandbox.ok(&with(&["list"], &extra)).lines().count() == 2);
    fs::remove_dir_all(sandbox.path("cache")).unwrap();
    let cat = sandbox.run(&with(&["cat", "latest:dir/nested/deeper/small"], &extra));
    assert_eq!(cat.stdout, pseudo_random(777, 2));
    fs::remove_dir_all(sandbox.path("cache")).unwrap();
    let target = sandbox.path("restored");
    sandbox.ok(&with(
        &["restore", "latest", "--target", target.to_str().unwrap()],
        &extra,
    ));
    assert_same_tree(&source, &target);
}

#[test]
fn wrong_password_or_key_changes_nothing() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    make_tree(&source);
    let repo = sandbox.path("repo");
    let extra = init(&sandbox, &repo, "password");
    backup_json(&sandbox, &extra, &[&source]);
    let before = file_contents(&repo);
    let wrong = sandbox.path("wrong.txt");
    fs::write(&wrong, "not it").unwrap();
    let repo_arg = repo.to_str().unwrap();
    for command in [
        &["backup", source.to_str().unwrap()][..],
        &["list"],
        &["check"],
    ] {
        let mut args = command.to_vec();
        args.extend([
            "--repo",
            repo_arg,
            "--password-file",
            wrong.to_str().unwrap(),
        ]);
        let output = sandbox.run(&args);
        assert_fails(&output, 1, "wrong password");
    }
    let no_password = sandbox.run(&["list", "--repo", repo_arg]);
    assert_fails(&no_password, 1, "CAIRN_PASSWORD");
    assert_eq!(before, file_contents(&repo), "the repository changed");

    let keyed = sandbox.path("keyed");
    let key_extra = init(&sandbox, &keyed, "keyfile");
    let other_key = sandbox.path("other-key.json");
    sandbox.ok(&[
        "init",
        "--repo",
        sandbox.path("other").to_str().unwrap(),
        "--encryption",
        "keyfile",
        "--key-file",
        other_key.to_str().unwrap(),
    ]);
    let output = sandbox.run(&[
        "list",
        "--repo",
        keyed.to_str().unwrap(),
        "--key-file",
        other_key.to_str().unwrap(),
    ]);
    assert_fails(&output, 1, "wrong key");
    // init never overwrites a key file.
    let again = sandbox.run(&with(
        &[
            "init",
            "--repo",
            sandbox.path("third").to_str().unwrap(),
            "--encryption",
            "keyfile",
        ],
        &key_extra[2..],
    ));
    assert_fails(&again, 1, "already exists");
    assert!(!sandbox.path("third/config").exists());
}

/// The pack objects of a repository.
fn packs(repo: &Path) -> Vec<std::path::PathBuf> {
    let mut out: Vec<_> = file_contents(&repo.join("data")).into_keys().collect();
    out.sort();
    out
}

#[test]
fn check_names_damage_and_restore_fails_loudly() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    fs::create_dir_all(&source).unwrap();
    fs::write(source.join("a.bin"), pseudo_random(2_000_000, 3)).unwrap();
    let repo = sandbox.path("repo");
    let extra = init(&sandbox, &repo, "keyfile");
    backup_json(&sandbox, &extra, &[&source]);
    fs::write(source.join("b.bin"), pseudo_random(2_000_000, 4)).unwrap();
    backup_json(&sandbox, &extra, &[&source]);
    let all = packs(&repo);
    assert_eq!(all.len(), 2, "one pack per backup");

    // Flip one byte in the middle of the second pack (inside b.bin's data).
    let damaged = &all
        .iter()
        .max_by_key(|p| fs::metadata(p).unwrap().modified().unwrap())
        .unwrap()
        .clone();
    let mut bytes = fs::read(damaged).unwrap();
    bytes[1000] ^= 0x40;
    fs::write(damaged, &bytes).unwrap();
    let pack_name = damaged.file_name().unwrap().to_str().unwrap().to_owned();

    let check = sandbox.run(&with(&["check", "--read-data"], &extra));
    assert_eq!(check.status.code(), Some(1));
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(report.contains(&pack_name), "{report}");
    assert!(report.contains("b.bin"), "{report}");
    // Without --read-data the structure is intact.
    assert!(sandbox.run(&with(&["check"], &extra)).status.success());

    let target = sandbox.path("restored");
    let restore = sandbox.run(&with(
        &["restore", "latest", "--target", target.to_str().unwrap()],
        &extra,
    ));
    assert_fails(&restore, 1, "b.bin");
    assert!(
        !target.join("b.bin").exists(),
        "a damaged file must not be left behind"
    );
    // In JSON `errors` is a count, as backup's and list's are; the files are under `failed`.
    let again = sandbox.path("restored-json");
    let restore = sandbox.run(&with(
        &[
            "restore",
            "latest",
            "--json",
            "--target",
            again.to_str().unwrap(),
        ],
        &extra,
    ));
    assert_eq!(restore.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&restore.stdout).unwrap();
    assert_eq!(report["errors"], 1, "{report}");
    assert!(
        report["failed"][0]["path"].to_string().contains("b.bin"),
        "{report}"
    );
    assert_eq!(
        fs::read(target.join("a.bin")).unwrap(),
        fs::read(source.join("a.bin")).unwrap()
    );
    let cat = sandbox.run(&with(&["cat", "latest:b.bin"], &extra));
    assert_eq!(cat.status.code(), Some(1));

    // A deleted pack is named too, with the paths it takes down: the first pack holds
    // a.bin, which both checkpoints use.
    let first = all.iter().find(|p| *p != damaged).unwrap();
    fs::remove_file(first).unwrap();
    let check = sandbox.run(&with(&["check"], &extra));
    assert_eq!(check.status.code(), Some(1));
    let report = String::from_utf8_lossy(&check.stdout);
    let first_name = first.file_name().unwrap().to_str().unwrap();
    assert!(
        report.contains(first_name) && report.contains("missing"),
        "{report}"
    );
    assert!(report.contains(":/a.bin"), "{report}");
}

#[test]
fn unreadable_files_are_listed_and_exit_3() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    fs::create_dir_all(&source).unwrap();
    fs::write(source.join("fine.txt"), b"fine").unwrap();
    fs::write(source.join("secret.txt"), b"secret").unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(source.join("secret.txt"), fs::Permissions::from_mode(0o000)).unwrap();
    let repo = sandbox.path("repo");
    let extra = init(&sandbox, &repo, "none");
    // Root reads everything, so run the backup as an unprivileged user when we are root.
    let mut command = if running_as_root() {
        sandbox.cairn_as_nobody(&[&repo, &source])
    } else {
        sandbox.cairn()
    };
    let output = command
        .args(with(&["backup"], &extra))
        .arg(&source)
        .output()
        .unwrap();
    assert_fails(&output, 3, "secret.txt");
    assert!(
        stderr(&output).contains("1 path could not be read"),
        "{}",
        stderr(&output)
    );
    let listing = sandbox.ok(&with(&["ls", "latest"], &extra));
    assert!(
        listing.contains("fine.txt") && !listing.contains("secret.txt"),
        "{listing}"
    );

    // In JSON, `errors` is a count as in the checkpoint's stats, the paths are `unreadable`.
    let mut command = if running_as_root() {
        sandbox.cairn_as_nobody(&[&repo, &source])
    } else {
        sandbox.cairn()
    };
    let output = command
        .args(with(&["backup", "--json"], &extra))
        .arg(&source)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["errors"], 1, "{report}");
    let path = report["unreadable"][0]["path"].as_str().unwrap();
    assert!(path.ends_with("secret.txt"), "{report}");
    let listed: serde_json::Value =
        serde_json::from_str(&sandbox.ok(&with(&["list", "--json"], &extra))).unwrap();
    assert_eq!(listed[1]["stats"]["errors"], report["errors"]);
}

#[test]
fn several_paths_excludes_and_dry_run() {
    let sandbox = Sandbox::new();
    let one = sandbox.path("one");
    let two = sandbox.path("two");
    fs::create_dir_all(one.join("cache")).unwrap();
    fs::create_dir_all(&two).unwrap();
    fs::write(one.join("keep.txt"), b"keep").unwrap();
    fs::write(one.join("skip.tmp"), b"skip").unwrap();
    fs::write(one.join("cache/blob"), b"cached").unwrap();
    fs::write(two.join("file"), pseudo_random(100_000, 5)).unwrap();
    let repo = sandbox.path("repo");
    let extra = init(&sandbox, &repo, "none");

    let before = file_contents(&repo);
    let mut args = with(&["backup", "--json", "--dry-run"], &extra);
    args.extend([one.to_str().unwrap(), two.to_str().unwrap()]);
    let dry: serde_json::Value = serde_json::from_str(&sandbox.ok(&args)).unwrap();
    assert!(dry["id"].is_null());
    assert!(dry["added_bytes"].as_u64().unwrap() > 100_000, "{dry}");
    assert_eq!(
        before,
        file_contents(&repo),
        "a dry run wrote to the repository"
    );

    let mut args = with(
        &[
            "backup",
            "--exclude",
            "*.tmp",
            "--exclude",
            "**/one/cache",
            "--tag",
            "daily",
        ],
        &extra,
    );
    args.extend([one.to_str().unwrap(), two.to_str().unwrap()]);
    sandbox.ok(&args);
    let listing = sandbox.ok(&with(&["ls", "latest", "-r"], &extra));
    let paths: Vec<&str> = listing
        .lines()
        .map(|l| l.rsplit(' ').next().unwrap())
        .collect();
    assert_eq!(
        paths,
        ["one", "one/keep.txt", "two", "two/file"],
        "{listing}"
    );

    let list: serde_json::Value =
        serde_json::from_str(&sandbox.ok(&with(&["list", "--json"], &extra))).unwrap();
    let row = &list[0];
    for field in [
        "id", "short_id", "time", "host", "paths", "tags", "parent", "tree", "stats",
    ] {
        assert!(row.get(field).is_some(), "list --json lacks {field}: {row}");
    }
    assert_eq!(row["tags"][0], "daily");
    assert_eq!(row["paths"].as_array().unwrap().len(), 2);

    // A path inside a checkpoint restores on its own; a prefix of 4+ digits names it.
    let short = row["short_id"].as_str().unwrap();
    let target = sandbox.path("part");
    sandbox.ok(&with(
        &[
            "restore",
            &format!("{}:two", &short[..6]),
            "--target",
            target.to_str().unwrap(),
        ],
        &extra,
    ));
    assert_eq!(
        fs::read(target.join("file")).unwrap(),
        fs::read(two.join("file")).unwrap()
    );
}

#[test]
fn bad_input_gets_clear_errors() {
    let sandbox = Sandbox::new();
    let missing = sandbox.run(&["list", "--repo", sandbox.path("nowhere").to_str().unwrap()]);
    assert_fails(&missing, 1, "cairn init");

    let source = sandbox.path("source");
    fs::create_dir_all(&source).unwrap();
    fs::write(source.join("f"), b"x").unwrap();
    let extra = init(&sandbox, &sandbox.path("repo"), "none");
    let unknown = sandbox.run(&with(&["ls", "abcdef"], &extra));
    assert_fails(&unknown, 1, "no checkpoint matches");
    let empty = sandbox.run(&with(&["ls", "latest"], &extra));
    assert!(
        stderr(&empty).contains("no checkpoints"),
        "{}",
        stderr(&empty)
    );

    let mut bad_tag = with(&["backup", "--tag", "a/b"], &extra);
    bad_tag.push(source.to_str().unwrap());
    let refused = sandbox.run(&bad_tag);
    assert_fails(&refused, 1, "tag \"a/b\"");

    backup_json(&sandbox, &extra, &[&source]);
    let no_path = sandbox.run(&with(&["cat", "latest:nope"], &extra));
    assert!(stderr(&no_path).contains("no nope"), "{}", stderr(&no_path));

    let occupied = sandbox.path("occupied");
    fs::create_dir_all(&occupied).unwrap();
    fs::write(occupied.join("mine"), b"keep me").unwrap();
    let refused = sandbox.run(&with(
        &["restore", "latest", "--target", occupied.to_str().unwrap()],
        &extra,
    ));
    assert_fails(&refused, 1, "--overwrite");
    assert_eq!(fs::read(occupied.join("mine")).unwrap(), b"keep me");
    sandbox.ok(&with(
        &[
            "restore",
            "latest",
            "--overwrite",
            "--target",
            occupied.to_str().unwrap(),
        ],
        &extra,
    ));
    assert_eq!(fs::read(occupied.join("f")).unwrap(), b"x");

    let gone = sandbox.run(&with(&["backup", "/definitely/not/here"], &extra));
    assert_fails(&gone, 1, "/definitely/not/here");
}

#[test]
fn overwrite_replaces_symlinks_instead_of_following_them() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    fs::create_dir_all(source.join("sub")).unwrap();
    fs::write(source.join("sub/file"), b"from backup").unwrap();
    let extra = init(&sandbox, &sandbox.path("repo"), "none");
    backup_json(&sandbox, &extra, &[&source]);
    // The target has `sub` as a symlink to a directory outside it.
    let outside = sandbox.path("outside");
    fs::create_dir_all(&outside).unwrap();
    let target = sandbox.path("target");
    fs::create_dir_all(&target).unwrap();
    std::os::unix::fs::symlink(&outside, target.join("sub")).unwrap();
    sandbox.ok(&with(
        &[
            "restore",
            "latest",
            "--overwrite",
            "--target",
            target.to_str().unwrap(),
        ],
        &extra,
    ));
    assert!(
        fs::read_dir(&outside).unwrap().next().is_none(),
        "restore wrote through a symlink"
    );
    assert_eq!(fs::read(target.join("sub/file")).unwrap(), b"from backup");
}

#[test]
fn diff_lists_added_removed_and_changed_paths() {
    use std::os::unix::fs::PermissionsExt;
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    fs::create_dir_all(source.join("sub")).unwrap();
    fs::write(source.join("changed.txt"), b"before").unwrap();
    fs::write(source.join("removed.txt"), b"going away").unwrap();
    fs::write(source.join("script.sh"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(source.join("script.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(source.join("sub/keep.txt"), b"kept").unwrap();
    let extra = init(&sandbox, &sandbox.path("repo"), "none");
    let first = backup_json(&sandbox, &extra, &[&source]);
    let first_id = first["id"].as_str().unwrap();

    fs::write(source.join("changed.txt"), b"after, and longer").unwrap();
    fs::remove_file(source.join("removed.txt")).unwrap();
    fs::set_permissions(source.join("script.sh"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(source.join("sub/added.txt"), b"new").unwrap();
    fs::create_dir(source.join("newdir")).unwrap();
    fs::write(source.join("newdir/inner"), b"inside").unwrap();
    backup_json(&sandbox, &extra, &[&source]);

    let output = sandbox.run(&with(&["diff", &first_id[..8], "latest"], &extra));
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "M changed.txt\n\
         + newdir/\n\
         + newdir/inner\n\
         - removed.txt\n\
         m script.sh\n\
         + sub/added.txt\n"
    );
    assert!(
        stderr(&output).contains("3 added, 1 removed, 2 modified"),
        "{}",
        stderr(&output)
    );

    let json: serde_json::Value =
        serde_json::from_str(&sandbox.ok(&with(&["diff", first_id, "latest", "--json"], &extra)))
            .unwrap();
    let changes = json.as_array().unwrap();
    let summary: Vec<(&str, &str)> = changes
        .iter()
        .map(|c| (c["path"].as_str().unwrap(), c["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(
        summary,
        [
            ("changed.txt", "modified"),
            ("newdir", "added"),
            ("newdir/inner", "added"),
            ("removed.txt", "removed"),
            ("script.sh", "modified"),
            ("sub/added.txt", "added"),
        ]
    );
    assert_eq!(changes[0]["content"], true);
    assert_eq!(changes[1]["is_dir"], true);
    assert_eq!(changes[2]["is_dir"], false);
    assert_eq!(
        changes[4],
        serde_json::json!({
            "path": "script.sh", "kind": "modified", "content": false, "metadata": true,
            "is_dir": false,
        })
    );

    // The same checkpoint twice: nothing changed.
    let same = sandbox.run(&with(&["diff", "latest", "latest"], &extra));
    assert!(same.status.success(), "{}", stderr(&same));
    assert!(same.stdout.is_empty());
    assert!(stderr(&same).contains("0 added, 0 removed, 0 modified"));
}

#[test]
fn limit_rate_and_low_priority_slow_the_backup_not_its_result() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    fs::create_dir_all(&source).unwrap();
    fs::write(source.join("four-mib"), pseudo_random(4 << 20, 9)).unwrap();
    let repo = sandbox.path("repo");
    let extra = init(&sandbox, &repo, "none");

    let args: Vec<String> = ["--limit-rate", "2M", "--low-priority"]
        .map(String::from)
        .into();
    let started = std::time::Instant::now();
    let report = backup_json(&sandbox, &[extra.clone(), args].concat(), &[&source]);
    // 4 MiB at 2 MiB/s: about 2 s, however fast the machine is.
    assert!(started.elapsed() >= std::time::Duration::from_millis(1800));
    assert_eq!(report["bytes_read"], 4 << 20);
    let target = sandbox.path("restored");
    sandbox.ok(&with(
        &["restore", "latest", "--target", target.to_str().unwrap()],
        &extra,
    ));
    assert_same_tree(&source, &target);

    let output = sandbox.run(&with(
        &["backup", "--limit-rate", "fast", source.to_str().unwrap()],
        &extra,
    ));
    assert_fails(&output, 2, "\"fast\" is not a rate");
}

/// Writes `password` to `<sandbox>/<name>` and returns that file's path as an argument.
fn password_file(sandbox: &Sandbox, name: &str, password: &str) -> String {
    let file = sandbox.path(name);
    fs::write(&file, format!("{password}\n")).unwrap();
    file.to_str().unwrap().to_owned()
}

/// The arguments that open `repo` with the password in `file`.
fn opened_with(repo: &Path, file: &str) -> Vec<String> {
    ["--repo", repo.to_str().unwrap(), "--password-file", file]
        .map(String::from)
        .into()
}

/// `cairn key list --json` as (id, opened) pairs.
fn key_list(sandbox: &Sandbox, extra: &[String]) -> Vec<(String, bool)> {
    let json: serde_json::Value =
        serde_json::from_str(&sandbox.ok(&with(&["key", "list", "--json"], extra))).unwrap();
    json.as_array()
        .unwrap()
        .iter()
        .map(|k| {
            let id = k["id"].as_str().unwrap().to_owned();
            (id, k["opened"].as_bool().unwrap())
        })
        .collect()
}

/// The id of a repository's only key, which must be the one that opened it.
fn only_key(sandbox: &Sandbox, extra: &[String]) -> String {
    let keys = key_list(sandbox, extra);
    assert!(matches!(keys[..], [(_, true)]), "{keys:?}");
    keys[0].0.clone()
}

#[test]
fn key_add_gives_a_second_password_that_opens_the_repository() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    fs::create_dir_all(&source).unwrap();
    fs::write(source.join("note.txt"), b"kept under two passwords").unwrap();
    let repo = sandbox.path("repo");
    let first = init(&sandbox, &repo, "password");
    backup_json(&sandbox, &first, &[&source]);
    let first_id = only_key(&sandbox, &first);

    let new_file = password_file(&sandbox, "second.txt", "a second password");
    let added = sandbox.ok(&with(
        &["key", "add", "--new-password-file", &new_file],
        &first,
    ));
    let added_id = added.trim();
    assert_eq!(added_id.len(), 64, "{added}");
    assert_ne!(added_id, first_id);

    let second = opened_with(&repo, &new_file);
    for extra in [&first, &second] {
        assert_eq!(sandbox.ok(&with(&["list"], extra)).lines().count(), 2);
        let note = sandbox.ok(&with(&["cat", "latest:note.txt"], extra));
        assert_eq!(note, "kept under two passwords");
    }
    let mut listed = key_list(&sandbox, &second);
    listed.sort();
    let mut expected = vec![(first_id.clone(), false), (added_id.to_owned(), true)];
    expected.sort();
    assert_eq!(listed, expected, "the second password opened the added key");
    let table = sandbox.ok(&with(&["key", "list"], &first));
    let marked: Vec<&str> = table.lines().filter(|l| l.starts_with('*')).collect();
    assert_eq!(marked.len(), 1, "{table}");
    assert!(
        marked[0].starts_with(&format!("* {}", &first_id[..8])),
        "{table}"
    );

    let empty = password_file(&sandbox, "empty.txt", "");
    let refused = sandbox.run(&with(
        &["key", "add", "--new-password-file", &empty],
        &first,
    ));
    assert_fails(&refused, 1, "empty.txt is empty");
    let no_password = sandbox.run(&with(&["key", "add"], &first));
    assert_fails(&no_password, 1, "CAIRN_NEW_PASSWORD");
    assert_eq!(
        key_list(&sandbox, &first).len(),
        2,
        "a refused add wrote a key"
    );
}

#[test]
fn key_passwd_replaces_the_password_and_keeps_the_data() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    make_tree(&source);
    let repo = sandbox.path("repo");
    let old = init(&sandbox, &repo, "password");
    backup_json(&sandbox, &old, &[&source]);
    let new_file = password_file(&sandbox, "new.txt", "the new password");

    let before = file_contents(&repo);
    let dry = sandbox.run(&with(
        &[
            "key",
            "passwd",
            "--dry-run",
            "--new-password-file",
            &new_file,
        ],
        &old,
    ));
    assert!(dry.status.success(), "{}", stderr(&dry));
    assert!(stderr(&dry).contains("would add"), "{}", stderr(&dry));
    assert_eq!(
        before,
        file_contents(&repo),
        "a dry run changed the repository"
    );

    let changed = sandbox.ok(&with(
        &["key", "passwd", "--new-password-file", &new_file],
        &old,
    ));
    let new_id = changed.trim().to_owned();
    let keys_after: Vec<_> = fs::read_dir(repo.join("keys"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        keys_after,
        std::slice::from_ref(&new_id),
        "the old key object is gone"
    );

    let refused = sandbox.run(&with(&["list"], &old));
    assert_fails(&refused, 1, "wrong password");
    let new = opened_with(&repo, &new_file);
    assert_eq!(key_list(&sandbox, &new), [(new_id, true)]);
    let target = sandbox.path("restored");
    sandbox.ok(&with(
        &["restore", "latest", "--target", target.to_str().unwrap()],
        &new,
    ));
    assert_same_tree(&source, &target);
    // The data was not rewritten: only the key object changed.
    let data_untouched = |contents: &std::collections::BTreeMap<std::path::PathBuf, Vec<u8>>| {
        contents
            .iter()
            .filter(|(path, _)| !path.starts_with(repo.join("keys")))
            .map(|(path, bytes)| (path.clone(), bytes.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        data_untouched(&before),
        data_untouched(&file_contents(&repo))
    );
}

#[test]
fn key_remove_refuses_the_last_key_and_removes_others() {
    let sandbox = Sandbox::new();
    let repo = sandbox.path("repo");
    let first = init(&sandbox, &repo, "password");
    let only_id = only_key(&sandbox, &first);
    let refused = sandbox.run(&with(&["key", "remove", &only_id[..8]], &first));
    assert_fails(&refused, 1, "is the last key");
    assert!(
        stderr(&refused).contains("cairn key add"),
        "{}",
        stderr(&refused)
    );
    let not_an_id = sandbox.run(&with(&["key", "remove", "xyz"], &first));
    assert_fails(&not_an_id, 1, "not a key id");
    assert_eq!(key_list(&sandbox, &first).len(), 1);

    let second_file = password_file(&sandbox, "second.txt", "second");
    let second_id = sandbox.ok(&with(
        &["key", "add", "--new-password-file", &second_file],
        &first,
    ));
    let second_id = second_id.trim();
    let second = opened_with(&repo, &second_file);
    sandbox.ok(&with(
        &["key", "remove", "--dry-run", &second_id[..8]],
        &first,
    ));
    assert_eq!(
        key_list(&sandbox, &second).len(),
        2,
        "a dry run removed a key"
    );

    sandbox.ok(&with(&["key", "remove", &second_id[..8]], &first));
    assert_fails(&sandbox.run(&with(&["list"], &second)), 1, "wrong password");
    assert_eq!(key_list(&sandbox, &first), [(only_id.clone(), true)]);

    // The key in use never goes; another password can remove it.
    let third_file = password_file(&sandbox, "third.txt", "third");
    sandbox.ok(&with(
        &["key", "add", "--new-password-file", &third_file],
        &first,
    ));
    let own = sandbox.run(&with(&["key", "remove", &only_id], &first));
    assert_fails(&own, 1, "the one your password opened");
    let third = opened_with(&repo, &third_file);
    sandbox.ok(&with(&["key", "remove", &only_id], &third));
    assert_fails(&sandbox.run(&with(&["list"], &first)), 1, "wrong password");
    assert_eq!(key_list(&sandbox, &third).len(), 1);
}

#[test]
fn key_commands_fail_in_keyfile_and_none_mode() {
    let sandbox = Sandbox::new();
    let new_file = password_file(&sandbox, "new.txt", "new");
    let keyed = sandbox.path("keyed");
    let key_extra = init(&sandbox, &keyed, "keyfile");
    let output = sandbox.run(&with(
        &["key", "add", "--new-password-file", &new_file],
        &key_extra,
    ));
    assert_fails(&output, 1, "keyfile mode: its key lives in the key file");
    // Without the key file too: the mode is named, not the missing key file.
    let output = sandbox.run(&["key", "list", "--repo", keyed.to_str().unwrap()]);
    assert_fails(&output, 1, "keyfile mode");
    assert!(!keyed.join("keys").exists());

    let plain = sandbox.path("plain");
    let plain_extra = init(&sandbox, &plain, "none");
    for command in [
        &["key", "add", "--new-password-file", &new_file][..],
        &["key", "list"],
        &["key", "passwd", "--new-password-file", &new_file],
        &["key", "remove", "abcd"],
    ] {
        let output = sandbox.run(&with(command, &plain_extra));
        assert_fails(&output, 1, "is not encrypted");
    }
    assert!(!plain.join("keys").exists());
}

/// Runs `cairn args...` with its stdout a pipe whose reading end is already closed, as under
/// `cairn … | head -c 10` once head has exited.
fn into_closed_pipe(sandbox: &Sandbox, args: &[&str]) -> std::process::Output {
    let mut child = sandbox
        .cairn()
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    child.wait_with_output().unwrap()
}

#[test]
fn output_into_a_closed_pipe_exits_quietly() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    fs::create_dir_all(&source).unwrap();
    fs::write(source.join("f"), b"one").unwrap();
    let extra = init(&sandbox, &sandbox.path("repo"), "none");
    let first = backup_json(&sandbox, &extra, &[&source]);
    fs::write(source.join("f"), b"two").unwrap();
    let second = backup_json(&sandbox, &extra, &[&source]);
    let (first, second) = (
        first["id"].as_str().unwrap(),
        second["id"].as_str().unwrap(),
    );
    let commands: [&[&str]; 6] = [
        &["list"],
        &["list", "--json"],
        &["ls", "latest"],
        &["history", "f"],
        &["diff", first, second],
        &["forget", "--keep-last", "5", "--dry-run"],
    ];
    for command in commands {
        let output = into_closed_pipe(&sandbox, &with(command, &extra));
        assert_eq!(
            output.status.code(),
            Some(0),
            "cairn {command:?} into a closed pipe: {}",
            stderr(&output)
        );
        assert_eq!(stderr(&output), "", "cairn {command:?} into a closed pipe");
    }
}

#[test]
fn an_error_names_its_cause_once() {
    let sandbox = Sandbox::new();
    let extra = init(&sandbox, &sandbox.path("repo"), "none");
    let missing = sandbox.path("nonexist_dir");
    let output = sandbox.run(&with(&["backup", missing.to_str().unwrap()], &extra));
    assert_fails(&output, 1, "nonexist_dir");
    let text = stderr(&output);
    assert_eq!(
        text.matches("No such file or directory").count(),
        1,
        "{text}"
    );
}

#[test]
fn a_source_path_through_dot_dot_is_recorded_clean_and_keeps_its_series() {
    let sandbox = Sandbox::new();
    let misc = sandbox.path("src/misc");
    fs::create_dir_all(&misc).unwrap();
    fs::write(misc.join("notes"), b"some notes").unwrap();
    let extra = init(&sandbox, &sandbox.path("repo"), "none");
    let first = backup_json(&sandbox, &extra, &[&misc]);
    let roundabout = sandbox.path("src/misc/../misc");
    let second = backup_json(&sandbox, &extra, &[&roundabout]);
    assert_eq!(second["parent"], first["id"], "{second}");
    assert_eq!(second["bytes_read"], 0, "{second}");
    let list: serde_json::Value =
        serde_json::from_str(&sandbox.ok(&with(&["list", "--json"], &extra))).unwrap();
    for checkpoint in list.as_array().unwrap() {
        assert_eq!(
            checkpoint["paths"],
            serde_json::json!([misc.to_str().unwrap()])
        );
    }

    // `..` after a symlink to a directory leaves that directory: cleaning the path by its
    // text alone would name another one.
    let elsewhere = sandbox.path("elsewhere/inner");
    fs::create_dir_all(&elsewhere).unwrap();
    fs::create_dir_all(sandbox.path("elsewhere/misc")).unwrap();
    fs::write(sandbox.path("elsewhere/misc/other"), b"other").unwrap();
    std::os::unix::fs::symlink(&elsewhere, sandbox.path("src/jump")).unwrap();
    let through_link = sandbox.path("src/jump/../misc");
    let third = backup_json(&sandbox, &extra, &[&through_link]);
    let listed = sandbox.ok(&with(&["ls", third["id"].as_str().unwrap()], &extra));
    assert!(listed.contains("other"), "{listed}");
    let list: serde_json::Value =
        serde_json::from_str(&sandbox.ok(&with(&["list", "--json"], &extra))).unwrap();
    let recorded = fs::canonicalize(sandbox.path("elsewhere/misc")).unwrap();
    assert_eq!(
        list[2]["paths"],
        serde_json::json!([recorded.to_str().unwrap()])
    );
}

#[test]
fn latest_is_scoped_by_host_path_and_tag() {
    let steps = Steps::new();
    let sandbox = Sandbox::new();
    let src = sandbox.path("src");
    let json_dir = src.join("python/json");
    fs::create_dir_all(&json_dir).unwrap();
    fs::write(src.join("top"), b"top").unwrap();
    fs::write(json_dir.join("decoder.py"), b"decode").unwrap();
    let repo = sandbox.path("repo");
    let extra = init(&sandbox, &repo, "none");
    let mut tagged = with(&["backup", "--json", "--tag", "daily"], &extra);
    tagged.push(src.to_str().unwrap());
    let whole: serde_json::Value = serde_json::from_str(&sandbox.ok(&tagged)).unwrap();
    let part = backup_json(&sandbox, &extra, &[&json_dir]);
    let (whole_id, part_id) = (whole["id"].as_str().unwrap(), part["id"].as_str().unwrap());

    steps.enter("unscoped latest names its series");
    // Unscoped, `latest` is the newest of any series, and says so.
    let output = sandbox.run(&with(&["ls", "latest"], &extra));
    assert!(String::from_utf8_lossy(&output.stdout).contains("decoder.py"));
    assert!(
        stderr(&output).contains("newest of 2 series"),
        "{}",
        stderr(&output)
    );

    let src_arg = src.to_str().unwrap();
    let scoped = [
        vec!["--path", src_arg],
        vec!["--tag", "daily"],
        vec!["--tag", "nightly", "--tag", "daily"],
    ];
    let host =
        serde_json::from_str::<serde_json::Value>(&sandbox.ok(&with(&["list", "--json"], &extra)))
            .unwrap()[0]["host"]
            .as_str()
            .unwrap()
            .to_owned();
    for filter in &scoped {
        let mut ls = with(&["ls", "latest"], &extra);
        ls.extend(filter.iter().copied());
        let output = sandbox.run(&ls);
        let listed = String::from_utf8_lossy(&output.stdout);
        assert!(
            listed.contains("top") && !listed.contains("decoder"),
            "{filter:?}: {listed}"
        );
        assert!(!stderr(&output).contains("series"), "{}", stderr(&output));

        let mut list = with(&["list", "--json"], &extra);
        list.extend(filter.iter().copied());
        let rows: serde_json::Value = serde_json::from_str(&sandbox.ok(&list)).unwrap();
        assert_eq!(json_strings(&rows, "id"), vec![whole_id], "{filter:?}");
    }
    let mut by_host = with(&["list", "--json", "--host", "no-such-host"], &extra);
    assert_eq!(sandbox.ok(&by_host).trim(), "[]");
    by_host.extend(["--host", host.as_str()]);
    let rows: serde_json::Value = serde_json::from_str(&sandbox.ok(&by_host)).unwrap();
    assert_eq!(json_strings(&rows, "id").len(), 2);
    let nothing = sandbox.run(&with(&["ls", "latest", "--tag", "daily,weekly"], &extra));
    assert_fails(&nothing, 1, "tag daily,weekly");

    let target = sandbox.path("restored");
    sandbox.ok(&with(
        &[
            "restore",
            "latest",
            "--path",
            src_arg,
            "--target",
            target.to_str().unwrap(),
        ],
        &extra,
    ));
    assert!(target.join("top").exists() && target.join("python/json/decoder.py").exists());
    let diff = sandbox.ok(&with(
        &["diff", whole_id, "latest", "--path", src_arg],
        &extra,
    ));
    assert_eq!(diff, "", "latest of src is the first checkpoint itself");
    let cat = sandbox.ok(&with(&["cat", "latest:top", "--tag", "daily"], &extra));
    assert_eq!(cat, "top");

    steps.enter("forget applies its policy to what the filter lets through");
    // forget applies its policy only to what the filter lets through.
    fs::write(json_dir.join("encoder.py"), b"encode").unwrap();
    backup_json(&sandbox, &extra, &[&json_dir]);
    let json_arg = json_dir.to_str().unwrap();
    sandbox.ok(&with(
        &["forget", "--keep-last", "1", "--path", json_arg],
        &extra,
    ));
    let left: serde_json::Value =
        serde_json::from_str(&sandbox.ok(&with(&["list", "--json"], &extra))).unwrap();
    let left = json_strings(&left, "id");
    assert_eq!(left.len(), 2);
    assert!(
        left.contains(&whole_id) && !left.contains(&part_id),
        "{left:?}"
    );

    steps.enter("the mount's latest is the newest it shows");
    // The mount's `latest` is the newest checkpoint it shows.
    let mounted = common::Mounted::start_with(&sandbox, &repo, &["--path", src_arg]);
    let shown = fs::read_dir(mounted.path("checkpoints")).unwrap().count();
    assert_eq!(shown, 1);
    assert!(mounted.path("latest/top").exists());
    assert!(mounted.terminate().success());
}

#[test]
fn times_before_1970_and_after_2262_restore_and_print() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    make_tree_with_far_times(&source);
    let repo = sandbox.plain_repo_with_backup_of(&source);
    let repo = repo.to_str().unwrap();

    let restored = sandbox.path("restored");
    sandbox.ok(&[
        "restore",
        "--repo",
        repo,
        "latest",
        "--target",
        restored.to_str().unwrap(),
    ]);
    assert_same_tree(&source, &restored);

    let listing = sandbox.ok(&["ls", "--repo", repo, "latest", "-r"]);
    for line in [
        "2300-01-01 00:00:00 future.txt",
        "2300-01-01 00:00:00 link -> future.txt",
        "1960-06-01 12:00:00 old",
        "1960-06-01 12:00:00 old/inside.txt",
        "1960-06-01 12:00:00 past.txt",
    ] {
        assert!(listing.contains(line), "{line} is not in\n{listing}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&sandbox.ok(&["ls", "--repo", repo, "latest", "--json"])).unwrap();
    let mtimes: Vec<(&str, &str)> = json_strings(&json, "name")
        .into_iter()
        .zip(json_strings(&json, "mtime"))
        .collect();
    assert_eq!(
        mtimes,
        [
            ("future.txt", "2300-01-01T00:00:00.123456789Z"),
            ("link", "2300-01-01T00:00:00.000000000Z"),
            ("old", "1960-06-01T12:00:00.000000000Z"),
            ("past.txt", "1960-06-01T12:00:00.000000005Z"),
        ]
    );

    let history = sandbox.ok(&["history", "--repo", repo, "past.txt"]);
    assert!(history.contains("mtime 1960-06-01 12:00:00"), "{history}");
    let history: serde_json::Value =
        serde_json::from_str(&sandbox.ok(&["history", "--repo", repo, "future.txt", "--json"]))
            .unwrap();
    assert_eq!(
        json_strings(&history, "mtime"),
        ["2300-01-01T00:00:00.123456789Z"]
    );
}

#[test]
fn restore_keeps_dense_files_dense_unless_asked_for_sparse() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    fs::create_dir_all(&source).unwrap();
    let bytes = write_dense_file_with_zeros(&source.join("dense.bin"));
    let repo = sandbox.plain_repo_with_backup_of(&source);
    let repo = repo.to_str().unwrap();
    for (flags, expect_sparse) in [(&[][..], false), (&["--sparse"][..], true)] {
        let target = sandbox.path(if expect_sparse { "sparse" } else { "dense" });
        let target_arg = target.to_str().unwrap();
        let args = [
            &["restore", "--repo", repo, "latest", "--target", target_arg][..],
            flags,
        ];
        sandbox.ok(&args.concat());
        let restored = target.join("dense.bin");
        assert_eq!(fs::read(&restored).unwrap(), bytes);
        let allocated = allocated_bytes(&restored);
        if expect_sparse {
            assert!(
                allocated <= 5 << 19,
                "--sparse leaves the zeros as holes: {allocated}"
            );
        } else {
            assert!(allocated >= 3 << 20, "restored dense: {allocated}");
        }
    }
}

/// The short ids of every checkpoint, oldest first.
fn short_ids(sandbox: &Sandbox, extra: &[String]) -> Vec<String> {
    let list: serde_json::Value =
        serde_json::from_str(&sandbox.ok(&with(&["list", "--json"], extra))).unwrap();
    json_strings(&list, "short_id")
        .into_iter()
        .map(str::to_owned)
        .collect()
}

#[test]
fn repair_packs_drops_a_damaged_blob_and_the_next_backup_heals_every_checkpoint() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    fs::create_dir_all(&source).unwrap();
    fs::write(source.join("a.bin"), pseudo_random(3_000_000, 7)).unwrap();
    fs::write(source.join("b.bin"), pseudo_random(3_000_000, 8)).unwrap();
    let repo = sandbox.path("repo");
    let extra = init(&sandbox, &repo, "keyfile");
    backup_json(&sandbox, &extra, &[&source]);
    let old = short_ids(&sandbox, &extra)[0].clone();
    // Sixteen bytes in the middle of the only pack are overwritten.
    let [pack] = packs(&repo).try_into().unwrap();
    let mut bytes = fs::read(&pack).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle..middle + 16].copy_from_slice(&[0x55; 16]);
    fs::write(&pack, &bytes).unwrap();

    let check = sandbox.run(&with(&["check", "--read-data"], &extra));
    assert_eq!(check.status.code(), Some(1));
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(report.contains(&old), "names the checkpoint: {report}");
    assert!(
        stderr(&check).contains("cairn repair packs"),
        "{}",
        stderr(&check)
    );

    let repaired: serde_json::Value =
        serde_json::from_str(&sandbox.ok(&with(&["repair", "packs", "--json"], &extra))).unwrap();
    assert_eq!(repaired["blobs_dropped"], 1, "{repaired}");
    assert!(!pack.exists(), "the damaged pack is replaced: {repaired}");
    // What is left is listed and whole; what is lost is named, with the way out.
    let check = sandbox.run(&with(&["check", "--read-data"], &extra));
    assert_eq!(check.status.code(), Some(1));
    assert!(stderr(&check).contains("back up"), "{}", stderr(&check));

    // The next backup stores the dropped content again, which heals the old checkpoint.
    let healed = backup_json(&sandbox, &extra, &[&source]);
    assert!(healed["added_bytes"].as_u64().unwrap() > 0, "{healed}");
    let check = sandbox.run(&with(&["check", "--read-data"], &extra));
    assert!(check.status.success(), "{}", stderr(&check));
    let target = sandbox.path("restored");
    sandbox.ok(&with(
        &["restore", &old, "--target", target.to_str().unwrap()],
        &extra,
    ));
    for name in ["a.bin", "b.bin"] {
        assert_eq!(
            fs::read(target.join(name)).unwrap(),
            fs::read(source.join(name)).unwrap(),
            "{name}"
        );
    }
}

#[test]
fn a_damaged_pack_a_stopped_repair_left_behind_is_not_taken_back() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    fs::create_dir_all(&source).unwrap();
    fs::write(source.join("a.bin"), pseudo_random(3_000_000, 27)).unwrap();
    fs::write(source.join("b.bin"), pseudo_random(3_000_000, 28)).unwrap();
    let repo = sandbox.path("repo");
    let extra = init(&sandbox, &repo, "keyfile");
    backup_json(&sandbox, &extra, &[&source]);
    let [pack] = packs(&repo).try_into().unwrap();
    let mut damaged = fs::read(&pack).unwrap();
    let middle = damaged.len() / 2;
    damaged[middle..middle + 16].copy_from_slice(&[0x55; 16]);
    fs::write(&pack, &damaged).unwrap();
    sandbox.ok(&with(&["repair", "packs"], &extra));
    // As if the repair had stopped after its new index files, before deleting the pack.
    fs::write(&pack, &damaged).unwrap();

    // The next backup must not index the damaged pack again (which would list the dropped
    // blob once more and have the backup reuse it): it stores the content anew.
    let healed = backup_json(&sandbox, &extra, &[&source]);
    assert!(healed["added_bytes"].as_u64().unwrap() > 0, "{healed}");
    let check = sandbox.run(&with(&["check", "--read-data"], &extra));
    assert!(check.status.success(), "{}", stderr(&check));
}

#[test]
fn repair_packs_keeps_a_pack_rebuilt_under_its_own_id() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    fs::create_dir_all(&source).unwrap();
    fs::write(source.join("a.bin"), pseudo_random(300_000, 17)).unwrap();
    let repo = sandbox.path("repo");
    let extra = init(&sandbox, &repo, "none");
    backup_json(&sandbox, &extra, &[&source]);
    // Unencrypted, with every blob whole and only the pack's last byte hurt (its header's
    // length), the repair writes the very same pack again, under the very same name.
    let [pack] = packs(&repo).try_into().unwrap();
    let whole = fs::read(&pack).unwrap();
    let mut hurt = whole.clone();
    *hurt.last_mut().unwrap() ^= 0xff;
    fs::write(&pack, &hurt).unwrap();

    let repaired: serde_json::Value =
        serde_json::from_str(&sandbox.ok(&with(&["repair", "packs", "--json"], &extra))).unwrap();
    assert_eq!(repaired["blobs_dropped"], 0, "{repaired}");
    assert_eq!(
        fs::read(&pack).unwrap(),
        whole,
        "the pack is rebuilt, not deleted"
    );
    let check = sandbox.run(&with(&["check", "--read-data"], &extra));
    assert!(check.status.success(), "{}", stderr(&check));
}

#[test]
fn check_summarises_a_lost_pack_and_names_every_checkpoint_it_affects() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    fs::create_dir_all(source.join("sub")).unwrap();
    for i in 0..300 {
        fs::write(source.join(format!("sub/f{i}")), format!("file {i}")).unwrap();
    }
    let repo = sandbox.path("repo");
    let extra = init(&sandbox, &repo, "none");
    backup_json(&sandbox, &extra, &[&source]);
    fs::write(source.join("new"), b"new").unwrap();
    backup_json(&sandbox, &extra, &[&source]);
    let ids = short_ids(&sandbox, &extra);
    let first = packs(&repo)
        .into_iter()
        .min_by_key(|p| fs::metadata(p).unwrap().modified().unwrap())
        .unwrap();
    fs::remove_file(&first).unwrap();

    let check = sandbox.run(&with(&["check"], &extra));
    assert_eq!(check.status.code(), Some(1));
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(report.lines().count() <= 40, "{report}");
    assert!(report.contains("more"), "{report}");
    for id in &ids {
        assert!(report.contains(id.as_str()), "{id}: {report}");
    }
    let advice = stderr(&check);
    assert!(advice.contains("cairn repair packs"), "{advice}");
    assert!(advice.contains("cairn repair checkpoints"), "{advice}");
}

#[test]
fn a_restore_into_a_full_disk_stops_at_once_and_says_what_is_missing() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    fs::create_dir_all(&source).unwrap();
    for i in 0..20 {
        fs::write(
            source.join(format!("f{i:02}")),
            pseudo_random(1_000_000, 90 + i),
        )
        .unwrap();
    }
    let repo = sandbox.path("repo");
    let extra = init(&sandbox, &repo, "none");
    backup_json(&sandbox, &extra, &[&source]);
    let Some(_disk) = SmallDisk::mount(&sandbox.path("small"), 8) else {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    };
    let target = sandbox.path("small/restored");

    let restore = sandbox.run(&with(
        &["restore", "latest", "--target", target.to_str().unwrap()],
        &extra,
    ));
    let message = stderr(&restore);
    assert_eq!(restore.status.code(), Some(1), "{message}");
    assert_eq!(
        message.to_lowercase().matches("no space left").count(),
        1,
        "one message: {message}"
    );
    assert!(message.contains("not restored"), "{message}");
    assert!(message.contains("more free space"), "{message}");
    // What was written is whole; the file being written when the space ran out is gone.
    let restored = fs::read_dir(&target).unwrap().count();
    assert!((1..20).contains(&restored), "{restored} files restored");
    for entry in fs::read_dir(&target).unwrap() {
        let name = entry.unwrap().file_name();
        assert_eq!(
            fs::read(target.join(&name)).unwrap(),
            fs::read(source.join(&name)).unwrap(),
            "{name:?}"
        );
    }
}

#[test]
fn completions_load_in_bash_and_complete_commands_and_options() {
    let sandbox = Sandbox::new();
    let script = sandbox.path("cairn.bash");
    fs::write(&script, sandbox.ok(&["completions", "bash"])).unwrap();
    let complete = |words: &str, current: usize| {
        let output = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source {}; COMP_WORDS=({words}); COMP_CWORD={current}; \
                 _cairn cairn \"${{COMP_WORDS[$COMP_CWORD]}}\" \"${{COMP_WORDS[$COMP_CWORD-1]}}\"; \
                 echo \"${{COMPREPLY[@]}}\"",
                script.display()
            ))
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
        String::from_utf8(output.stdout).unwrap()
    };
    assert_eq!(complete("cairn ba", 1).trim(), "backup");
    assert!(complete("cairn backup --ex", 2).contains("--exclude"));
    assert!(complete("cairn plans ''", 2).contains("recover"));
    for shell in ["zsh", "fish"] {
        let other = sandbox.ok(&["completions", shell]);
        assert!(
            other.contains("backup") && other.contains("exclude"),
            "{shell}"
        );
    }
}

#[test]
fn a_man_page_is_written_for_every_command() {
    let sandbox = Sandbox::new();
    let dir = sandbox.path("man1");
    sandbox.ok(&["man", "--dir", dir.to_str().unwrap()]);
    for page in [
        "cairn.1",
        "cairn-backup.1",
        "cairn-plans-recover.1",
        "cairn-schedule.1",
    ] {
        let text = fs::read_to_string(dir.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{page}");
    }
    let backup = fs::read_to_string(dir.join("cairn-backup.1")).unwrap();
    assert!(backup.contains("exclude"), "the options are in the page");
    assert!(
        !dir.join("cairn-pipeline-speed.1").exists(),
        "hidden commands get no page"
    );
}

#[test]
fn forget_removes_the_checkpoints_named_and_nothing_when_one_is_not_there() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    fs::create_dir_all(&source).unwrap();
    let repo = sandbox.path("repo");
    let extra = init(&sandbox, &repo, "none");
    let ids: Vec<String> = (0..3)
        .map(|round| {
            fs::write(source.join("file"), format!("round {round}")).unwrap();
            backup_json(&sandbox, &extra, &[&source])["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let listed = || {
        let list: serde_json::Value =
            serde_json::from_str(&sandbox.ok(&with(&["list", "--json"], &extra))).unwrap();
        json_strings(&list, "id")
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };

    let dry = sandbox.ok(&with(&["forget", &ids[0][..8], "--dry-run"], &extra));
    assert!(dry.contains("1 checkpoint would be removed"), "{dry}");
    assert_eq!(listed().len(), 3);

    let missing = sandbox.run(&with(&["forget", &ids[0][..8], "ffffffff"], &extra));
    assert_fails(&missing, 1, "no checkpoint matches \"ffffffff\"");
    assert_eq!(listed().len(), 3, "nothing removed when one is not there");

    let done = sandbox.ok(&with(&["forget", &ids[0][..8], "latest"], &extra));
    assert!(done.contains("2 checkpoints removed"), "{done}");
    assert_eq!(listed(), vec![ids[1].clone()]);

    let both = sandbox.run(&with(&["forget", &ids[1][..8], "--keep-last", "1"], &extra));
    assert_eq!(
        both.status.code(),
        Some(2),
        "a policy and names together: {}",
        stderr(&both)
    );
}

#[test]
fn stats_say_what_the_checkpoints_hold_and_what_is_stored() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    fs::create_dir_all(&source).unwrap();
    let data = pseudo_random(300_000, 9);
    fs::write(source.join("a.bin"), &data).unwrap();
    fs::write(source.join("copy.bin"), &data).unwrap();
    fs::write(source.join("text.txt"), "words ".repeat(20_000)).unwrap();
    let repo = sandbox.path("repo");
    let extra = init(&sandbox, &repo, "none");
    backup_json(&sandbox, &extra, &[&source]);
    backup_json(&sandbox, &extra, &[&source]);

    let report: serde_json::Value =
        serde_json::from_str(&sandbox.ok(&with(&["stats", "--json"], &extra))).unwrap();
    let stats = &report["repository"];
    let one_tree = 2 * 300_000 + 120_000;
    assert_eq!(stats["checkpoints"], 2);
    assert_eq!(stats["restore_bytes"], 2 * one_tree, "{report}");
    let raw = stats["raw_bytes"].as_u64().unwrap();
    assert!(
        (420_000..430_000).contains(&raw),
        "one copy of the random data, one of the text, and the trees: {raw}"
    );
    let stored = stats["stored_bytes"].as_u64().unwrap();
    assert!(stored < raw, "the text compresses: {stored} of {raw}");
    let pack_bytes = stats["pack_bytes"].as_u64().unwrap();
    assert!(pack_bytes >= stored, "{report}");
    assert!(report["deduplication"].as_f64().unwrap() > 3.0, "{report}");
    assert_eq!(report["checkpoints"].as_array().unwrap().len(), 2);
    assert_eq!(report["checkpoints"][1]["bytes"], one_tree);

    let text = sandbox.ok(&with(&["stats"], &extra));
    assert!(text.starts_with("2 checkpoints, "), "{text}");
    assert!(text.contains("x deduplication"), "{text}");
}
