//! Repositories in an S3 bucket, proven on a real single-node Garage (`common::garage`), each
//! test on a node of its own: what the local repository proves (round trips of every file
//! type, no-op backups, wrong passwords, a lost cache, damage found by `check --read-data`,
//! the mount, forget and prune, concurrent backups, sync and serve) holds on S3 too; errors of
//! the store name the bucket or endpoint and leave nothing behind; and a no-op backup makes as
//! many requests for 1,000 files as for 10, and a restore about one GET per pack.

mod common;

use common::garage::{Garage, KEY_ID};
use common::*;
use std::fs;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

fn text(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A password-mode repository at prefix `repo` of a fresh Garage's bucket, and a sandbox whose
/// commands carry the bucket's credentials.
struct S3Repo {
    garage: Garage,
    sandbox: Sandbox,
    repo: String,
    password: String,
}

impl S3Repo {
    fn new() -> Self {
        let garage = Garage::single();
        let sandbox = Sandbox::new().with_envs(garage.env());
        let password = sandbox.path("password");
        fs::write(&password, "s3 secret\n").unwrap();
        let s3 = S3Repo {
            repo: garage.repo("repo"),
            password: text(&password).to_owned(),
            garage,
            sandbox,
        };
        s3.ok(&["init"]);
        s3
    }

    /// `command` with `--repo` and `--password-file` added.
    fn args<'a>(&'a self, command: &[&'a str]) -> Vec<&'a str> {
        let mut all = command.to_vec();
        all.extend(["--repo", &self.repo, "--password-file", &self.password]);
        all
    }

    fn ok(&self, command: &[&str]) -> String {
        self.sandbox.ok(&self.args(command))
    }

    fn run(&self, command: &[&str]) -> std::process::Output {
        self.sandbox.run(&self.args(command))
    }

    fn json(&self, command: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ok(&[command, &["--json"]].concat())).unwrap()
    }

    /// Restores checkpoint `which` into a new directory `<sandbox>/<name>` and returns it.
    fn restore(&self, which: &str, name: &str) -> std::path::PathBuf {
        let target = self.sandbox.path(name);
        self.ok(&["restore", which, "--target", text(&target)]);
        target
    }

    /// The repository's objects below `dir` (`data/`, `checkpoints/`, …) and their sizes.
    fn objects(&self, dir: &str) -> std::collections::BTreeMap<String, u64> {
        self.garage.objects(&format!("repo/{dir}"))
    }
}

#[test]
fn every_file_type_round_trips_through_backup_restore_and_sync() {
    let s3 = S3Repo::new();
    let source = s3.sandbox.path("source");
    make_tree(&source);
    let first = s3.json(&["backup", text(&source)]);
    assert_eq!(first["files"], 9, "{first}");
    assert_same_tree(&source, &s3.restore("latest", "restored"));
    let hello = s3.ok(&["cat", "latest:hello.txt"]);
    assert_eq!(hello, "hello, cairn\n");

    // A checkpoint synced into a directory matches the tree too.
    let synced = s3.sandbox.path("synced");
    let checkpoint = format!("{}::latest", s3.repo);
    s3.sandbox.ok(&[
        "sync",
        &checkpoint,
        text(&synced),
        "--password-file",
        &s3.password,
    ]);
    assert_same_tree(&source, &synced);

    s3.ok(&["check", "--read-data"]);
    // Encrypted: no object in the bucket holds plaintext.
    let objects = s3.garage.objects("repo/");
    assert!(
        objects.keys().any(|k| k.starts_with("repo/data/")),
        "{objects:?}"
    );
    for key in objects.keys() {
        let bytes = s3.garage.get(key);
        let leaked = bytes.windows(12).any(|w| w == b"hello, cairn");
        assert!(!leaked, "{key} holds plaintext");
    }
}

/// `count` files of 100 bytes in `<sandbox>/<name>`, ten to a directory: a backup's trees
/// grow with them.
fn small_files(sandbox: &Sandbox, name: &str, count: u64) -> std::path::PathBuf {
    let dir = sandbox.path(name);
    for i in 0..count {
        let subdirectory = dir.join(format!("d{}", i / 10));
        fs::create_dir_all(&subdirectory).unwrap();
        fs::write(subdirectory.join(format!("f{i}")), pseudo_random(100, i)).unwrap();
    }
    dir
}

#[test]
fn a_no_op_backup_stores_no_data_and_its_requests_do_not_grow_with_the_files_and_directories() {
    let s3 = S3Repo::new();
    let mut no_op_requests = Vec::new();
    // Two repositories of one checkpoint each, of 10 files in one directory and of 1,000
    // in 100.
    for files in [10, 1000] {
        let prefix = format!("files-{files}");
        let repo = s3.garage.repo(&prefix);
        let opened = ["--repo", repo.as_str(), "--password-file", &s3.password];
        let objects = |dir: &str| s3.garage.objects(&format!("{prefix}/{dir}"));
        s3.sandbox.ok(&[&["init"][..], &opened].concat());
        let source = small_files(&s3.sandbox, &prefix, files);
        s3.sandbox
            .ok(&[&["backup", text(&source)][..], &opened].concat());
        let (data, index) = (objects("data/"), objects("index/"));
        let before = s3.garage.requests();
        let again = s3
            .sandbox
            .ok(&[&["backup", "--json", text(&source)][..], &opened].concat());
        let made = s3.garage.requests().since(&before);
        let again: serde_json::Value = serde_json::from_str(&again).unwrap();
        assert_eq!(again["bytes_read"], 0, "{again}");
        assert_eq!(objects("data/"), data, "a no-op backup stored data");
        assert_eq!(objects("index/"), index, "a no-op backup stored an index");
        assert_eq!(objects("checkpoints/").len(), 2);
        assert!(objects("locks/").is_empty(), "a lock was left behind");
        no_op_requests.push(made);
    }
    let [few, many] = &no_op_requests[..] else {
        unreachable!()
    };
    // The checkpoint record and the lock (written, then removed) are the only writes.
    assert!(many.get("PutObject") <= 3, "{no_op_requests:?}");
    for (endpoint, &count) in &many.0 {
        assert!(
            count <= few.get(endpoint) + 1,
            "{endpoint}: a no-op backup of 1,000 files made {count} requests, of 10 files {}: \
             {no_op_requests:?}",
            few.get(endpoint)
        );
    }
}

#[test]
fn a_restore_reads_each_pack_in_about_one_get() {
    let s3 = S3Repo::new();
    let source = s3.sandbox.path("source");
    small_and_large_files(&source);
    s3.ok(&["backup", text(&source)]);
    let packs = s3.objects("data/").len() as u64;
    let before = s3.garage.requests();
    assert_same_tree(&source, &s3.restore("latest", "restored"));
    let made = s3.garage.requests().since(&before);
    // Each pack about once; the config, the key and the trees come from one GET each at
    // most (the trees are in the cache the backup filled).
    assert!(
        made.get("GetObject") <= packs + 4,
        "restoring 3,006 files from {packs} packs made {made:?}"
    );
}

#[test]
fn a_wrong_password_is_refused_and_writes_nothing() {
    let s3 = S3Repo::new();
    let source = s3.sandbox.path("source");
    make_tree(&source);
    s3.ok(&["backup", text(&source)]);
    let before = s3.garage.objects("repo/");
    let wrong = s3.sandbox.path("wrong");
    fs::write(&wrong, "not the password\n").unwrap();
    for command in [&["list"][..], &["backup", text(&source)]] {
        let mut args = command.to_vec();
        args.extend(["--repo", &s3.repo, "--password-file", text(&wrong)]);
        let output = s3.sandbox.run(&args);
        assert_fails(&output, 1, "wrong password");
    }
    assert_eq!(s3.garage.objects("repo/"), before);
}

#[test]
fn everything_works_from_the_bucket_alone_after_the_cache_is_lost() {
    let s3 = S3Repo::new();
    let source = s3.sandbox.path("source");
    make_tree(&source);
    s3.ok(&["backup", text(&source)]);
    let cache = s3.sandbox.path("cache");
    fs::remove_dir_all(&cache).unwrap();
    let listed = s3.ok(&["list"]);
    assert_eq!(listed.lines().count(), 2, "{listed}");
    fs::remove_dir_all(&cache).unwrap();
    assert_same_tree(&source, &s3.restore("latest", "restored"));
    fs::remove_dir_all(&cache).unwrap();
    fs::write(source.join("new.txt"), b"after the cache was lost").unwrap();
    let second = s3.json(&["backup", text(&source)]);
    assert!(second["parent"].is_string(), "{second}");
    assert_same_tree(&source, &s3.restore("latest", "restored-2"));
    s3.ok(&["check", "--read-data"]);
}

#[test]
fn check_read_data_names_a_pack_object_with_a_flipped_byte() {
    let s3 = S3Repo::new();
    let source = s3.sandbox.path("source");
    fs::create_dir_all(&source).unwrap();
    fs::write(source.join("a.bin"), pseudo_random(2_000_000, 3)).unwrap();
    s3.ok(&["backup", text(&source)]);
    s3.ok(&["check", "--read-data"]);
    let packs = s3.objects("data/");
    let (pack, _) = packs.iter().max_by_key(|&(_, &size)| size).unwrap();
    let mut bytes = s3.garage.get(pack);
    bytes[1000] ^= 0x40;
    s3.garage.put(pack, &bytes);
    let pack_id = pack.rsplit('/').next().unwrap();

    let check = s3.run(&["check", "--read-data"]);
    assert_eq!(check.status.code(), Some(1), "{}", stderr(&check));
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(report.contains(pack_id), "{report}");
    assert!(report.contains("a.bin"), "{report}");
    // Without --read-data the structure is intact.
    s3.ok(&["check"]);
}

#[test]
fn the_mount_reads_files_and_shows_the_history_view() {
    let s3 = S3Repo::new();
    let source = s3.sandbox.path("source");
    make_tree(&source);
    fs::write(source.join("changing.txt"), b"first version\n").unwrap();
    s3.ok(&["backup", text(&source)]);
    // Checkpoint names have one-second resolution; keep the two apart.
    std::thread::sleep(Duration::from_millis(1100));
    fs::write(source.join("changing.txt"), b"second version, longer\n").unwrap();
    s3.ok(&["backup", text(&source)]);

    let mount = Mounted::start_with(&s3.sandbox, &s3.repo, &["--password-file", &s3.password]);
    let latest = mount.path("latest");
    assert_eq!(
        fs::read(latest.join("dir/big.bin")).unwrap(),
        fs::read(source.join("dir/big.bin")).unwrap()
    );
    assert_eq!(
        fs::read(latest.join("changing.txt")).unwrap(),
        b"second version, longer\n"
    );
    let mut versions: Vec<_> = fs::read_dir(mount.path("history/changing.txt"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    versions.sort();
    let contents: Vec<Vec<u8>> = versions.iter().map(|v| fs::read(v).unwrap()).collect();
    assert_eq!(
        contents,
        [&b"first version\n"[..], &b"second version, longer\n"[..]]
    );
    let hello = fs::read_dir(mount.path("history/hello.txt"))
        .unwrap()
        .count();
    assert_eq!(hello, 1, "an unchanged file has one version");
    assert!(mount.terminate().success());
}

#[test]
fn reading_many_small_files_through_the_mount_takes_few_gets() {
    let s3 = S3Repo::new();
    let source = small_files(&s3.sandbox, "small", 1000);
    s3.ok(&["backup", text(&source)]);
    let mount = Mounted::start_with(&s3.sandbox, &s3.repo, &["--password-file", &s3.password]);
    let latest = mount.path("latest");
    let before = s3.garage.requests();
    // As tar reads them: directory by directory, each file once, in listing order.
    let mut directories: Vec<_> = fs::read_dir(&latest)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    directories.sort();
    let mut read = 0;
    for directory in directories {
        let mut files: Vec<_> = fs::read_dir(&directory)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for file in files {
            let relative = file.strip_prefix(&latest).unwrap();
            assert_eq!(
                fs::read(&file).unwrap(),
                fs::read(source.join(relative)).unwrap()
            );
            read += 1;
        }
    }
    let made = s3.garage.requests().since(&before);
    assert_eq!(read, 1000);
    // The files' blobs lie side by side in one pack: read ahead in a few large ranges, not
    // a request per file or per directory.
    assert!(
        made.get("GetObject") <= 20,
        "reading 1,000 files in 100 directories made {made:?}"
    );
    assert!(mount.terminate().success());
}

/// Every file below `root` with its bytes, read the way tar and `cp -a` read a tree: depth
/// first, each directory's entries by name with files and directories interleaved, each
/// file whole, once.
fn read_depth_first(root: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut read = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            let mut entries: Vec<_> = fs::read_dir(&path)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            entries.sort();
            pending.extend(entries.into_iter().rev());
        } else {
            let bytes = fs::read(&path).unwrap();
            read.push((path.strip_prefix(root).unwrap().to_path_buf(), bytes));
        }
    }
    read
}

#[test]
fn a_tree_walk_through_the_mount_reads_the_packs_in_a_few_large_ranges() {
    let s3 = S3Repo::new();
    let source = s3.sandbox.path("tree");
    // 1,200 files of 1 to 40 KB in 24 directories two levels down, files beside the
    // directories at the first level (sorting before and after them), and two files of
    // several chunks: about 30 MB in two or three packs.
    let mut seed = 0u64;
    let mut next_file = |path: std::path::PathBuf, length: u64| {
        seed += 1;
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, pseudo_random(length as usize, seed)).unwrap();
    };
    for a in 0..4 {
        let top = source.join(format!("a{a}"));
        next_file(top.join("b-file"), 20_000);
        for m in 0..6 {
            for f in 0..50u64 {
                let length = 1_000 + (f * 7_919 + m * 104_729) % 40_000;
                next_file(top.join(format!("m{m}/f{f:02}")), length);
            }
        }
        next_file(top.join("n-file"), 30_000);
    }
    next_file(source.join("a1/large"), 3_000_000);
    next_file(source.join("a2/m3/large"), 3_000_000);
    s3.ok(&["backup", text(&source)]);
    let packs = s3.objects("data/").len();
    let mount = Mounted::start_with(&s3.sandbox, &s3.repo, &["--password-file", &s3.password]);
    let before = s3.garage.requests();
    let read = read_depth_first(&mount.path("latest"));
    let made = s3.garage.requests().since(&before);
    assert_eq!(read.len(), 1_210);
    for (path, bytes) in &read {
        assert!(
            *bytes == fs::read(source.join(path)).unwrap(),
            "{path:?} differs"
        );
    }
    // The walk ahead reads the packs in large ranges as the reader goes, a mebibyte or more
    // per request on average, not a request per file or per directory.
    let bytes: usize = read.iter().map(|(_, bytes)| bytes.len()).sum();
    assert!(
        made.get("GetObject") <= (bytes >> 20) as u64,
        "reading 1,210 files ({bytes} bytes) in {packs} packs made {made:?}"
    );
    assert!(mount.terminate().success());
}

/// A tree of 20 files of 100 KB; `version` rewrites a third of them with new content.
fn write_version(root: &Path, version: u64) {
    fs::create_dir_all(root).unwrap();
    for i in 0..20u64 {
        if version == 0 || i % 3 == version % 3 {
            fs::write(
                root.join(format!("f{i}")),
                pseudo_random(100_000, 1000 * version + i),
            )
            .unwrap();
        }
    }
}

#[test]
fn forget_and_prune_return_the_space_in_the_bucket() {
    let s3 = S3Repo::new();
    let source = s3.sandbox.path("source");
    for version in 0..4 {
        write_version(&source, version);
        s3.ok(&["backup", text(&source)]);
    }
    let before = s3.objects("data/");
    let forgot = s3.ok(&["forget", "--keep-last", "1", "--prune"]);
    assert!(forgot.contains("3 checkpoints removed"), "{forgot}");
    assert_eq!(s3.objects("checkpoints/").len(), 1);
    let after = s3.objects("data/");
    let bytes = |objects: &std::collections::BTreeMap<String, u64>| objects.values().sum::<u64>();
    // Four versions stored 2 MB + 3 × ~0.7 MB; the newest alone needs 2 MB.
    assert!(
        bytes(&after) < bytes(&before) && bytes(&after) < 2_400_000,
        "data {} → {} bytes",
        bytes(&before),
        bytes(&after)
    );
    s3.ok(&["check", "--read-data"]);
    assert_same_tree(&source, &s3.restore("latest", "restored"));
}

#[test]
fn two_backups_at_once_into_one_bucket_both_land() {
    let s3 = S3Repo::new();
    let (one, two) = (s3.sandbox.path("one"), s3.sandbox.path("two"));
    write_version(&one, 0);
    make_tree(&two);
    let started: Vec<Child> = [&one, &two]
        .iter()
        .map(|tree| {
            s3.sandbox
                .cairn()
                .args(s3.args(&["backup", "--json", text(tree)]))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let ids: Vec<String> = started
        .into_iter()
        .map(|child| {
            let output = child.wait_with_output().unwrap();
            assert!(output.status.success(), "{}", stderr(&output));
            let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
            report["short_id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(s3.objects("checkpoints/").len(), 2);
    for (i, (tree, id)) in [&one, &two].iter().zip(&ids).enumerate() {
        assert_same_tree(tree, &s3.restore(id, &format!("restored-{i}")));
    }
    s3.ok(&["check", "--read-data"]);
}

#[test]
fn sync_moves_directories_and_repositories_into_and_out_of_a_bucket() {
    let s3 = S3Repo::new();
    let sandbox = &s3.sandbox;
    let pw = ["--password-file", s3.password.as_str()];
    let source = sandbox.path("source");
    make_tree(&source);

    // A directory into the S3 repository is a backup of it.
    let pushed: serde_json::Value = serde_json::from_str(
        &sandbox.ok(&[&["sync", "--json", text(&source), &s3.repo][..], &pw].concat()),
    )
    .unwrap();
    assert_eq!(pushed["checkpoints_copied"], 1, "{pushed}");
    assert_eq!(s3.objects("checkpoints/").len(), 1);

    // S3 → local, into a repository made like it.
    let local = sandbox.path("local");
    sandbox.ok(&[
        &["init", "--repo", text(&local), "--like", &s3.repo][..],
        &pw,
    ]
    .concat());
    let down: serde_json::Value = serde_json::from_str(
        &sandbox.ok(&[&["sync", "--json", &s3.repo, text(&local)][..], &pw].concat()),
    )
    .unwrap();
    assert_eq!(down["checkpoints_copied"], 1, "{down}");
    let restored = sandbox.path("from-local");
    sandbox.ok(&[
        &[
            "restore",
            "--repo",
            text(&local),
            "latest",
            "--target",
            text(&restored),
        ][..],
        &pw,
    ]
    .concat());
    assert_same_tree(&source, &restored);

    // A new checkpoint made locally goes back up: local → S3 copies only it.
    std::thread::sleep(Duration::from_millis(1100));
    fs::write(source.join("new.txt"), b"made on the local side").unwrap();
    sandbox.ok(&[&["backup", "--repo", text(&local), text(&source)][..], &pw].concat());
    let up: serde_json::Value = serde_json::from_str(
        &sandbox.ok(&[&["sync", "--json", text(&local), &s3.repo][..], &pw].concat()),
    )
    .unwrap();
    assert_eq!(up["checkpoints_copied"], 1, "{up}");
    assert!(up["blobs_skipped"].as_u64().unwrap() > 0, "{up}");
    assert_eq!(s3.objects("checkpoints/").len(), 2);
    assert_same_tree(&source, &s3.restore("latest", "from-s3"));
    s3.ok(&["check", "--read-data"]);
}

#[test]
fn serve_in_front_of_a_bucket_takes_a_clients_backup() {
    let s3 = S3Repo::new();
    let sandbox = &s3.sandbox;
    let source = sandbox.path("source");
    make_tree(&source);
    let token = sandbox.path("token");
    fs::write(&token, "serve-token\n").unwrap();
    let server = Server::spawn(sandbox.cairn().args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--token-file",
        text(&token),
        "--repo",
        &s3.repo,
    ]));
    let url = format!("{}/repo", server.url);
    let client = [
        "--repo",
        url.as_str(),
        "--password-file",
        s3.password.as_str(),
        "--token-file",
        text(&token),
    ];
    sandbox.ok(&[&["backup", text(&source)][..], &client].concat());
    let listed = sandbox.ok(&[&["list"][..], &client].concat());
    assert_eq!(listed.lines().count(), 2, "{listed}");
    drop(server);
    // The checkpoint is in the bucket: cairn reads it there directly.
    assert_eq!(s3.objects("checkpoints/").len(), 1);
    assert_same_tree(&source, &s3.restore("latest", "restored"));
}

#[test]
fn store_errors_name_the_bucket_or_endpoint_exit_1_and_leave_no_checkpoint() {
    let s3 = S3Repo::new();
    let source = s3.sandbox.path("source");
    make_tree(&source);
    s3.ok(&["backup", text(&source)]);
    let before = s3.garage.objects("repo/");
    let bounded = |sandbox: &Sandbox, args: &[&str]| {
        let run = run_bounded(sandbox.cairn().args(args), Duration::from_secs(120));
        assert!(
            !run.timed_out,
            "cairn {args:?} hung: {}",
            stderr(&run.output)
        );
        run.output
    };
    let pw = s3.password.as_str();

    // No such bucket.
    let missing = s3
        .garage
        .repo("repo")
        .replace("/cairn/", "/no-such-bucket/");
    for command in [&["init"][..], &["backup", text(&source)]] {
        let args = [command, &["--repo", &missing, "--password-file", pw]].concat();
        let output = bounded(&s3.sandbox, &args);
        assert_fails(&output, 1, "no-such-bucket");
    }

    // A wrong secret key: access denied, naming the key.
    let wrong_secret = Sandbox::new().with_envs(s3.garage.env_with_secret(&"0".repeat(64)));
    for command in [&["list"][..], &["backup", text(&source)]] {
        let args = [command, &["--repo", &s3.repo, "--password-file", pw]].concat();
        let output = bounded(&wrong_secret, &args);
        assert_fails(&output, 1, KEY_ID);
        assert!(
            stderr(&output).contains("AWS_SECRET_ACCESS_KEY"),
            "{}",
            stderr(&output)
        );
    }

    // An endpoint nobody answers at: tried again for --retry-for (2 minutes unless told),
    // then named.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = format!("s3:http://127.0.0.1:{port}/cairn/repo");
    let output = bounded(
        &s3.sandbox,
        &[
            "backup",
            text(&source),
            "--repo",
            &dead,
            "--password-file",
            pw,
            "--retry-for",
            "5s",
        ],
    );
    assert_fails(&output, 1, &format!("127.0.0.1:{port}"));

    assert_eq!(s3.garage.objects("repo/"), before, "a failed command wrote");
}
