//! End-to-end tests of a repository's life: retention (`forget`), garbage collection
//! (`prune`) and the space they return, locks and concurrent runs, killed runs, and the
//! ways out after damage (`repair`).

mod common;

use common::*;
use std::fs;
use std::path::Path;
use std::process::{Child, Stdio};

fn text(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn checkpoint_count(repo: &Path) -> usize {
    fs::read_dir(repo.join("checkpoints")).map_or(0, |d| d.count())
}

/// A tree of 40 files of 100 KB; `version` rewrites a third of them with new content.
fn write_version(root: &Path, version: u64) {
    fs::create_dir_all(root).unwrap();
    for i in 0..40u64 {
        if version == 0 || i % 3 == version % 3 {
            let seed = 1000 * version + i;
            fs::write(root.join(format!("f{i}")), pseudo_random(100_000, seed)).unwrap();
        }
    }
}

/// Asserts that `check --read-data` passes and that the newest checkpoint restores to a copy
/// of `source`.
fn assert_sound_and_latest_is(sandbox: &Sandbox, repo: &Path, source: &Path) {
    sandbox.ok(&["check", "--repo", text(repo), "--read-data"]);
    let restored = sandbox.path("restored-latest");
    let _ = fs::remove_dir_all(&restored);
    sandbox.ok(&[
        "restore",
        "--repo",
        text(repo),
        "latest",
        "--target",
        text(&restored),
    ]);
    assert_same_tree(source, &restored);
}

#[test]
fn forget_keeps_what_the_policy_says_and_prune_returns_the_space() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    let repo = sandbox.path("repo");
    sandbox.ok(&["init", "--repo", text(&repo), "--encryption", "none"]);
    for version in 0..6 {
        write_version(&source, version);
        let tag = if version == 1 { "keep-me" } else { "daily" };
        sandbox.ok(&["backup", "--repo", text(&repo), "--tag", tag, text(&source)]);
    }
    assert_eq!(checkpoint_count(&repo), 6);

    // No policy is refused: it would remove everything.
    let refused = sandbox.run(&["forget", "--repo", text(&repo)]);
    assert_fails(&refused, 1, "no retention policy");

    // A dry run says what it would do and removes nothing.
    let planned: serde_json::Value = serde_json::from_str(&sandbox.ok(&[
        "forget",
        "--repo",
        text(&repo),
        "--keep-last",
        "2",
        "--keep-tag",
        "keep-me",
        "--dry-run",
        "--json",
    ]))
    .unwrap();
    assert_eq!(planned["removed"], 3, "{planned}");
    let decisions = planned["series"][0]["checkpoints"].as_array().unwrap();
    let reasons: Vec<String> = decisions.iter().map(|d| d["reasons"].to_string()).collect();
    assert_eq!(
        reasons,
        [
            r#"["last"]"#,
            r#"["last"]"#,
            "[]",
            "[]",
            r#"[{"tag":"keep-me"}]"#,
            "[]"
        ],
        "newest first"
    );
    assert_eq!(checkpoint_count(&repo), 6);
    let before = disk_usage(&repo.join("data"));
    let text_plan = sandbox.ok(&[
        "forget",
        "--repo",
        text(&repo),
        "--keep-last",
        "2",
        "--dry-run",
    ]);
    assert!(
        text_plan.contains("keep (last)") && text_plan.contains("remove"),
        "{text_plan}"
    );

    // Forget all but the newest and prune: the repository shrinks to about a fresh backup.
    let forgot = sandbox.ok(&[
        "forget",
        "--repo",
        text(&repo),
        "--keep-last",
        "1",
        "--prune",
    ]);
    assert!(forgot.contains("5 checkpoints removed"), "{forgot}");
    assert_eq!(checkpoint_count(&repo), 1);
    let after = disk_usage(&repo.join("data"));
    let fresh = sandbox.path("fresh");
    sandbox.ok(&["init", "--repo", text(&fresh), "--encryption", "none"]);
    sandbox.ok(&["backup", "--repo", text(&fresh), text(&source)]);
    let fresh_size = disk_usage(&fresh.join("data"));
    assert!(
        after < before && (after as f64) <= fresh_size as f64 * 1.10,
        "data {before} → {after} bytes; a fresh backup takes {fresh_size}"
    );
    assert_sound_and_latest_is(&sandbox, &repo, &source);

    // A dry-run prune of a pruned repository has nothing to do and changes nothing.
    let listing = |dir: &Path| file_contents(dir).into_keys().collect::<Vec<_>>();
    let packs = listing(&repo.join("data"));
    let dry: serde_json::Value =
        serde_json::from_str(&sandbox.ok(&["prune", "--repo", text(&repo), "--dry-run", "--json"]))
            .unwrap();
    assert_eq!(dry["packs_deleted"], 0, "{dry}");
    assert_eq!(listing(&repo.join("data")), packs);
}

/// Starts `cairn backup --limit-rate RATE` of `source` into `repo` in the background.
fn spawn_slow_backup(sandbox: &Sandbox, repo: &Path, source: &Path, rate: &str) -> Child {
    sandbox
        .cairn()
        .args([
            "backup",
            "--repo",
            text(repo),
            "--limit-rate",
            rate,
            text(source),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Whether `dir` holds a file written whole (not a hidden temporary one still being written).
fn holds_a_whole_file(dir: &Path) -> bool {
    fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| !e.file_name().to_string_lossy().starts_with('.'))
    })
}

/// Waits until the repository holds a lock (a run started and took it); a lock still being
/// written (a hidden temporary file) does not count.
fn wait_for_a_lock(repo: &Path) {
    for _ in 0..200 {
        if holds_a_whole_file(&repo.join("locks")) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    panic!("no lock appeared in {}", repo.display());
}

#[test]
fn a_command_that_reads_holds_a_shared_lock_that_a_prune_waits_for() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    fs::create_dir_all(&source).unwrap();
    let big = pseudo_random(8_000_000, 21);
    fs::write(source.join("big"), &big).unwrap();
    let repo = sandbox.plain_repo_with_backup_of(&source);
    // `cat` into a pipe nobody reads yet stops once the pipe is full, its lock held.
    let cat = sandbox
        .cairn()
        .args(["cat", "--repo", text(&repo), "latest:big"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_a_lock(&repo);
    let refused = sandbox.run(&["prune", "--repo", text(&repo)]);
    assert_fails(&refused, 1, "locked by cat");
    let read = cat.wait_with_output().unwrap();
    assert!(read.status.success(), "{}", stderr(&read));
    assert!(read.stdout == big, "cat gave {} bytes", read.stdout.len());
    // The lock goes with the command.
    sandbox.ok(&["prune", "--repo", text(&repo)]);
}

#[test]
fn backups_run_together_a_prune_waits_for_them_and_unlock_removes_only_stale_locks() {
    let steps = Steps::new();
    let sandbox = Sandbox::new();
    let repo = sandbox.path("repo");
    sandbox.ok(&["init", "--repo", text(&repo), "--encryption", "none"]);
    let (one, two) = (sandbox.path("one"), sandbox.path("two"));
    write_version(&one, 0);
    make_tree(&two);

    steps.enter("two backups at once both succeed and restore");
    // Two backups of different trees at the same time both succeed and both restore.
    let started: Vec<Child> = [&one, &two]
        .iter()
        .map(|tree| {
            sandbox
                .cairn()
                .args(["backup", "--repo", text(&repo), text(tree)])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in started {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
    }
    let list: serde_json::Value =
        serde_json::from_str(&sandbox.ok(&["list", "--repo", text(&repo), "--json"])).unwrap();
    for (i, tree) in [&one, &two].iter().enumerate() {
        let entry = list
            .as_array()
            .unwrap()
            .iter()
            .find(|c| {
                c["paths"][0]
                    .as_str()
                    .unwrap()
                    .ends_with(tree.file_name().unwrap().to_str().unwrap())
            })
            .unwrap();
        let target = sandbox.path(&format!("restored-{i}"));
        let id = entry["short_id"].as_str().unwrap();
        sandbox.ok(&[
            "restore",
            "--repo",
            text(&repo),
            id,
            "--target",
            text(&target),
        ]);
        assert_same_tree(tree, &target);
    }

    steps.enter("a prune refused, then waiting for a running backup");
    // A slow backup holds a shared lock: a prune fails at once, naming it, or waits for it
    // with --retry-lock and then succeeds.
    let slow_source = sandbox.path("slow");
    fs::create_dir_all(&slow_source).unwrap();
    fs::write(slow_source.join("big"), pseudo_random(5_000_000, 9)).unwrap();
    let mut slow = spawn_slow_backup(&sandbox, &repo, &slow_source, "1M");
    wait_for_a_lock(&repo);
    let refused = sandbox.run(&["prune", "--repo", text(&repo)]);
    assert_fails(&refused, 1, "locked by backup");
    let waited = sandbox.run(&["prune", "--repo", text(&repo), "--retry-lock", "2m"]);
    // The backup saves its checkpoint before it lets its lock go.
    let checkpoints_when_the_prune_ended = checkpoint_count(&repo);
    assert!(waited.status.success(), "{}", stderr(&waited));
    assert_eq!(
        checkpoints_when_the_prune_ended, 3,
        "the prune ran before the backup had finished"
    );
    assert!(slow.wait().unwrap().success());
    sandbox.ok(&["check", "--repo", text(&repo), "--read-data"]);

    steps.enter("a killed backup's stale lock stops nobody and unlock removes only it");
    // A backup killed mid-run leaves a stale lock: it stops nobody, and unlock removes it.
    // (New content each time, so the stat cache does not make the backups instant.)
    fs::write(slow_source.join("big"), pseudo_random(3_000_000, 10)).unwrap();
    let mut killed = spawn_slow_backup(&sandbox, &repo, &slow_source, "200K");
    wait_for_a_lock(&repo);
    killed.kill().unwrap();
    killed.wait().unwrap();
    sandbox.ok(&["prune", "--repo", text(&repo)]);
    fs::write(slow_source.join("big"), pseudo_random(3_000_000, 11)).unwrap();
    let mut live = spawn_slow_backup(&sandbox, &repo, &slow_source, "200K");
    // The live backup's lock may not be written yet: wait until unlock sees it.
    let mut dry = String::new();
    for _ in 0..400 {
        dry = sandbox.ok(&["unlock", "--repo", text(&repo), "--dry-run"]);
        if dry.contains(", 1 left") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    assert!(dry.contains("1 lock would be removed, 1 left"), "{dry}");
    let unlocked = sandbox.ok(&["unlock", "--repo", text(&repo)]);
    assert!(
        unlocked.contains("is gone") && unlocked.contains("1 lock removed, 1 left"),
        "{unlocked}"
    );
    let all = sandbox.ok(&["unlock", "--repo", text(&repo), "--remove-all"]);
    assert!(all.contains("1 lock removed, 0 left"), "{all}");
    live.kill().unwrap();
    live.wait().unwrap();
}

#[test]
fn a_killed_backup_leaves_a_sound_repository_and_the_next_one_reuses_its_packs() {
    let sandbox = Sandbox::new();
    let repo = sandbox.path("repo");
    sandbox.ok(&["init", "--repo", text(&repo), "--encryption", "none"]);
    let source = sandbox.path("source");
    let total = random_files(&source, 6, 8_000_000, 50);
    let backup_slowly = || spawn_slow_backup(&sandbox, &repo, &source, "4M");
    // Killed early (before any index file), then killed once an index file lists packs.
    let mut early = backup_slowly();
    std::thread::sleep(std::time::Duration::from_millis(700));
    early.kill().unwrap();
    early.wait().unwrap();
    sandbox.ok(&["check", "--repo", text(&repo), "--read-data"]);
    let mut later = backup_slowly();
    let indexed = || holds_a_whole_file(&repo.join("index"));
    for _ in 0..600 {
        if indexed() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    assert!(indexed(), "no index file was written");
    later.kill().unwrap();
    later.wait().unwrap();
    assert_eq!(checkpoint_count(&repo), 0);
    sandbox.ok(&["check", "--repo", text(&repo), "--read-data"]);

    // The next backup completes, adding less than the whole tree: the indexed packs are
    // reused. The killed runs' stale locks stop nothing.
    let done: serde_json::Value = serde_json::from_str(&sandbox.ok(&[
        "backup",
        "--repo",
        text(&repo),
        "--json",
        text(&source),
    ]))
    .unwrap();
    let added = done["added_bytes"].as_u64().unwrap();
    assert!(
        added < total - 8_000_000,
        "added {added} of {total} bytes: {done}"
    );
    assert_sound_and_latest_is(&sandbox, &repo, &source);
    // Prune deletes what the killed runs wrote but never indexed.
    sandbox.ok(&["unlock", "--repo", text(&repo)]);
    let pruned: serde_json::Value =
        serde_json::from_str(&sandbox.ok(&["prune", "--repo", text(&repo), "--json"])).unwrap();
    assert!(
        pruned["bytes_after"].as_u64().unwrap() < total + 2_000_000,
        "{pruned}"
    );
    sandbox.ok(&["check", "--repo", text(&repo), "--read-data"]);
}

/// The strings of array `field` of every object in JSON array `objects`, one after another.
fn strings_of_each(objects: &serde_json::Value, field: &str) -> Vec<String> {
    objects
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|o| o[field].as_array().unwrap().clone())
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

/// Every checkpoint's short id, oldest first.
fn short_ids(sandbox: &Sandbox, repo: &Path) -> Vec<String> {
    let list: serde_json::Value =
        serde_json::from_str(&sandbox.ok(&["list", "--repo", text(repo), "--json"])).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .map(|c| c["short_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Restores every checkpoint into `<sandbox>/<prefix>-<short id>`; returns those directories.
fn restore_all(sandbox: &Sandbox, repo: &Path, prefix: &str) -> Vec<std::path::PathBuf> {
    short_ids(sandbox, repo)
        .iter()
        .map(|id| {
            let target = sandbox.path(&format!("{prefix}-{id}"));
            sandbox.ok(&[
                "restore",
                "--repo",
                text(repo),
                id,
                "--target",
                text(&target),
            ]);
            target
        })
        .collect()
}

/// The names of the files in `repo/index`.
fn index_files(repo: &Path) -> Vec<std::path::PathBuf> {
    fs::read_dir(repo.join("index"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

/// Runs `repair index --dry-run`, asserting that it changes no file of the repository.
fn dry_run_changes_nothing(sandbox: &Sandbox, repo: &Path, what: &str) -> serde_json::Value {
    let before = file_contents(repo);
    let report: serde_json::Value = serde_json::from_str(&sandbox.ok(&[
        "repair",
        what,
        "--repo",
        text(repo),
        "--dry-run",
        "--json",
    ]))
    .unwrap();
    assert_eq!(report["dry_run"], true, "{report}");
    assert!(
        file_contents(repo) == before,
        "a dry run changed the repository"
    );
    report
}

#[test]
fn repair_index_rebuilds_lost_or_damaged_index_files_from_the_packs() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    make_tree(&source);
    write_version(&source.join("versions"), 0);
    let repo = sandbox.path("repo");
    let cache = sandbox.path("cache");
    sandbox.ok(&["init", "--repo", text(&repo), "--encryption", "none"]);
    sandbox.ok(&["backup", "--repo", text(&repo), text(&source)]);
    write_version(&source.join("versions"), 1);
    sandbox.ok(&["backup", "--repo", text(&repo), text(&source)]);
    let expected = restore_all(&sandbox, &repo, "expected");
    assert_same_tree(&source, expected.last().unwrap());
    let old_index = index_files(&repo);
    assert!(old_index.len() >= 2, "{old_index:?}");

    let damages: [(&str, &dyn Fn()); 2] = [
        ("one index file is garbage", &|| {
            fs::write(&old_index[0], b"\x01 garbage, not an index file").unwrap();
        }),
        ("every index file is gone", &|| {
            for file in index_files(&repo) {
                fs::remove_file(file).unwrap();
            }
        }),
    ];
    for (round, (damage, apply)) in damages.iter().enumerate() {
        apply();
        fs::remove_dir_all(&cache).unwrap();
        let check = sandbox.run(&["check", "--repo", text(&repo)]);
        assert_eq!(check.status.code(), Some(1), "{damage}: {}", stderr(&check));

        let planned = dry_run_changes_nothing(&sandbox, &repo, "index");
        assert!(
            planned["index_files_written"].as_u64().unwrap() >= 1,
            "{planned}"
        );
        let report: serde_json::Value = serde_json::from_str(&sandbox.ok(&[
            "repair",
            "index",
            "--repo",
            text(&repo),
            "--json",
        ]))
        .unwrap();
        let packs = file_contents(&repo.join("data")).len() as u64;
        assert_eq!(report["packs_read"], packs, "{damage}: {report}");
        assert_eq!(
            report["unreadable_packs"],
            serde_json::json!([]),
            "{report}"
        );
        assert_eq!(
            report["blobs_indexed"], planned["blobs_indexed"],
            "{report}"
        );
        assert_eq!(
            index_files(&repo).len() as u64,
            report["index_files_written"]
        );

        sandbox.ok(&["check", "--repo", text(&repo), "--read-data"]);
        let restored = restore_all(&sandbox, &repo, &format!("restored-{round}"));
        assert_eq!(restored.len(), expected.len());
        for (want, got) in expected.iter().zip(&restored) {
            assert_same_tree(want, got);
        }
    }
}

/// Removes `path` from a reference tree, keeping its directory's mtime as it was.
fn remove_keeping_mtime(path: &Path) {
    use std::os::unix::fs::MetadataExt;
    let parent = path.parent().unwrap();
    let before = fs::metadata(parent).unwrap();
    if fs::symlink_metadata(path).unwrap().is_dir() {
        fs::remove_dir_all(path).unwrap();
    } else {
        fs::remove_file(path).unwrap();
    }
    set_mtime(parent, before.mtime(), before.mtime_nsec());
}

#[test]
fn repair_checkpoints_drops_the_files_of_a_lost_pack_and_keeps_everything_else() {
    let steps = Steps::new();
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    fs::create_dir_all(source.join("dir")).unwrap();
    for i in 0..3u64 {
        fs::write(
            source.join(format!("big{i}")),
            pseudo_random(20_000_000, 50 + i),
        )
        .unwrap();
    }
    fs::write(source.join("dir/small"), b"small and safe\n").unwrap();
    let other = sandbox.path("other");
    write_version(&other, 0);
    let repo = sandbox.path("repo");
    sandbox.ok(&["init", "--repo", text(&repo), "--encryption", "none"]);
    // One read at a time, so the big files' chunks do not interleave across packs.
    let backup = |tree: &Path| {
        sandbox.ok(&[
            "backup",
            "--repo",
            text(&repo),
            "--low-priority",
            text(tree),
        ]);
    };
    steps.enter("three checkpoints, two of the big files and one of another tree");
    backup(&source);
    fs::write(source.join("dir/small"), b"changed, still safe\n").unwrap();
    backup(&source);
    backup(&other);
    let ids_before = short_ids(&sandbox, &repo);
    let expected = restore_all(&sandbox, &repo, "expected");

    steps.enter("the biggest pack lost: check names only big files");
    let packs = file_contents(&repo.join("data"));
    let (lost, _) = packs.iter().max_by_key(|(_, bytes)| bytes.len()).unwrap();
    fs::remove_file(lost).unwrap();
    let check: serde_json::Value = serde_json::from_str(&String::from_utf8_lossy(
        &sandbox
            .run(&["check", "--repo", text(&repo), "--json"])
            .stdout,
    ))
    .unwrap();
    assert_eq!(check["sound"], false, "{check}");
    let mut affected = strings_of_each(&check["damaged"], "paths");
    affected.sort();
    affected.dedup();
    assert!(
        !affected.is_empty() && affected.iter().all(|p| p.contains(":/big")),
        "only big files lose chunks: {affected:?}"
    );
    let lost_names: std::collections::BTreeSet<&str> = affected
        .iter()
        .map(|p| p.split_once(":/").unwrap().1)
        .collect();
    assert!(lost_names.len() < 3, "some big file survives: {affected:?}");

    steps.enter("repair index, then a dry run plans the drops check named");
    sandbox.ok(&["repair", "index", "--repo", text(&repo)]);
    let planned = dry_run_changes_nothing(&sandbox, &repo, "checkpoints");
    let mut planned_drops = strings_of_each(&planned["repaired"], "dropped");
    planned_drops.sort();
    assert_eq!(planned_drops, affected, "{planned}");

    steps.enter("repair checkpoints drops exactly those paths");
    let repaired = sandbox.ok(&["repair", "checkpoints", "--repo", text(&repo)]);
    for path in &affected {
        assert!(repaired.contains(&format!("dropped {path}")), "{repaired}");
    }
    assert!(
        repaired.contains("3 checkpoints checked, 2 repaired"),
        "{repaired}"
    );
    sandbox.ok(&["check", "--repo", text(&repo), "--read-data"]);

    steps.enter("the undamaged checkpoint keeps its id; the repaired restore what they kept");
    let list: serde_json::Value =
        serde_json::from_str(&sandbox.ok(&["list", "--repo", text(&repo), "--json"])).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 3);
    assert_eq!(list[2]["short_id"], ids_before[2].as_str());
    let parent = list[1]["parent"].as_str().unwrap();
    assert!(
        parent.starts_with(&ids_before[0]),
        "the parent stays as recorded"
    );
    for (i, checkpoint) in list[..2].iter().enumerate() {
        let id = checkpoint["short_id"].as_str().unwrap();
        assert_ne!(id, ids_before[i]);
        assert!(
            checkpoint["tags"].to_string().contains("repaired"),
            "{checkpoint}"
        );
        assert_eq!(
            checkpoint["stats"]["files"].as_u64().unwrap() as usize,
            4 - lost_names.len(),
            "{checkpoint}"
        );
        for name in &lost_names {
            remove_keeping_mtime(&expected[i].join(name));
        }
        let restored = sandbox.path(&format!("restored-{i}"));
        sandbox.ok(&[
            "restore",
            "--repo",
            text(&repo),
            id,
            "--target",
            text(&restored),
        ]);
        assert_same_tree(&expected[i], &restored);
    }
    let restored_other = sandbox.path("restored-other");
    sandbox.ok(&[
        "restore",
        "--repo",
        text(&repo),
        &ids_before[2],
        "--target",
        text(&restored_other),
    ]);
    assert_same_tree(&other, &restored_other);

    steps.enter("a second repair finds nothing to do");
    let again = sandbox.ok(&["repair", "checkpoints", "--repo", text(&repo)]);
    assert!(
        again.contains("3 checkpoints checked, 0 repaired"),
        "{again}"
    );
}

/// Waits until `repo` holds at least `packs` whole packs.
fn wait_for_packs(repo: &Path, packs: usize) {
    for _ in 0..1200 {
        if pack_bytes(repo).1 >= packs {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    panic!("fewer than {packs} packs appeared in {}", repo.display());
}

/// A source of incompressible files; returns it with its size in bytes.
fn random_source(sandbox: &Sandbox, files: u64) -> (std::path::PathBuf, u64) {
    let source = sandbox.path("source");
    fs::create_dir_all(&source).unwrap();
    for i in 0..files {
        let name = source.join(format!("f{i}"));
        fs::write(name, pseudo_random(8_000_000, 70 + i)).unwrap();
    }
    (source, files * 8_000_000)
}

/// `cairn backup --json` of `source` into `repo`.
fn backup_json(sandbox: &Sandbox, repo: &Path, source: &Path) -> serde_json::Value {
    let args = ["backup", "--repo", text(repo), "--json", text(source)];
    serde_json::from_str(&sandbox.ok(&args)).unwrap()
}

#[test]
fn packs_a_killed_backup_left_unindexed_are_reused_not_stored_again() {
    let sandbox = Sandbox::new();
    let (source, _) = random_source(&sandbox, 6);
    let clean_repo = sandbox.path("clean");
    sandbox.ok(&["init", "--repo", text(&clean_repo), "--encryption", "none"]);
    backup_json(&sandbox, &clean_repo, &source);
    let (clean, _) = pack_bytes(&clean_repo);

    let repo = sandbox.path("repo");
    sandbox.ok(&["init", "--repo", text(&repo), "--encryption", "none"]);
    let mut killed = spawn_slow_backup(&sandbox, &repo, &source, "16M");
    wait_for_packs(&repo, 2);
    killed.kill().unwrap();
    killed.wait().unwrap();
    let (orphaned, _) = pack_bytes(&repo);

    // A dry run counts what the killed run left as stored, as the real run will.
    let dry_run = [
        "backup",
        "--dry-run",
        "--json",
        "--repo",
        text(&repo),
        text(&source),
    ];
    let dry: serde_json::Value = serde_json::from_str(&sandbox.ok(&dry_run)).unwrap();
    let done = backup_json(&sandbox, &repo, &source);
    assert_eq!(dry["added_blobs"], done["added_blobs"], "{dry} {done}");
    let added = done["added_bytes"].as_u64().unwrap();
    assert!(
        orphaned + added <= clean + clean / 20,
        "{orphaned} bytes left by the killed run, {added} added, against {clean}: {done}"
    );
    let (total, _) = pack_bytes(&repo);
    assert!(total <= clean + clean / 20, "{total} bytes against {clean}");
    assert_sound_and_latest_is(&sandbox, &repo, &source);
}

#[test]
fn an_interrupted_backup_keeps_its_packs_says_so_and_the_rerun_adds_only_the_rest() {
    let sandbox = Sandbox::new();
    let (source, size) = random_source(&sandbox, 6);
    let repo = sandbox.path("repo");
    sandbox.ok(&["init", "--repo", text(&repo), "--encryption", "none"]);
    let backup = sandbox
        .cairn()
        .args(["backup", "--repo", text(&repo), "--limit-rate", "16M"])
        .arg(&source)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_packs(&repo, 1);
    // SAFETY: signals a child this test started and has not waited for.
    assert_eq!(unsafe { libc::kill(backup.id() as i32, libc::SIGINT) }, 0);
    let output = backup.wait_with_output().unwrap();
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(130), "{message}");
    assert!(message.contains("interrupted:"), "{message}");
    assert!(message.contains("packs kept"), "{message}");
    assert!(!holds_a_whole_file(&repo.join("locks")), "lock released");
    assert_eq!(checkpoint_count(&repo), 0);
    let (kept, _) = pack_bytes(&repo);
    assert!(!index_files(&repo).is_empty(), "the kept packs are indexed");

    let done = backup_json(&sandbox, &repo, &source);
    let added = done["added_bytes"].as_u64().unwrap();
    assert!(
        kept + added <= size + size / 20,
        "{kept} bytes kept, {added} added, for {size} bytes: {done}"
    );
    assert_sound_and_latest_is(&sandbox, &repo, &source);
}
