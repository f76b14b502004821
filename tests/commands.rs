//! End-to-end tests of the commands people reach for once backups exist: `find` across
//! checkpoints, the backup inputs that choose what goes in (anchored excludes), how a
//! backup reads a large file (around the page cache), and names that would drive a terminal
//! printed harmless.

mod common;

use common::*;
use serde_json::Value;
use std::fs;
use std::path::Path;

/// 2021-01-01, 2025-06-01 and 2026-01-01 (UTC) in seconds since the epoch.
const JAN_2021: i64 = 1_609_459_200;
const JUNE_2025: i64 = 1_748_736_000;
const JAN_2026: i64 = 1_767_225_600;

/// An unencrypted repository at `sandbox/repo`; returns its path as an argument.
fn plain_repo(sandbox: &Sandbox) -> String {
    let repo = sandbox.path("repo");
    let repo = repo.to_str().unwrap().to_owned();
    sandbox.ok(&["init", "--repo", &repo, "--encryption", "none"]);
    repo
}

fn write(root: &Path, path: &str, contents: &str, mtime: i64) {
    let path = root.join(path);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, contents).unwrap();
    set_mtime(&path, mtime, 0);
}

fn backup(sandbox: &Sandbox, repo: &str, args: &[&str], source: &Path) -> Value {
    let mut all = vec!["backup", "--json", "--repo", repo];
    all.extend(args);
    all.push(source.to_str().unwrap());
    serde_json::from_str(&sandbox.ok(&all)).unwrap()
}

fn find_json(sandbox: &Sandbox, repo: &str, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["find", "--json", "--repo", repo];
    all.extend(args);
    let found: Value = serde_json::from_str(&sandbox.ok(&all)).unwrap();
    found.as_array().unwrap().clone()
}

/// Each match as `path [checkpoint indices]`, the indices into `ids` (oldest first).
fn summary(found: &[Value], ids: &[String]) -> Vec<String> {
    found
        .iter()
        .map(|m| {
            let holders: Vec<String> = m["checkpoints"]
                .as_array()
                .unwrap()
                .iter()
                .map(|id| ids.iter().position(|i| id == i).unwrap().to_string())
                .collect();
            format!("{} [{}]", m["path"].as_str().unwrap(), holders.join(" "))
        })
        .collect()
}

#[test]
fn names_with_control_characters_print_as_question_marks_in_text_output() {
    use std::os::unix::fs::PermissionsExt;
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    write(&source, "red\x1b[31mfile", "red", JAN_2021);
    std::os::unix::fs::symlink("to\x1b]0;title\x07", source.join("link\r")).unwrap();
    // Skipped with a warning from the log.
    let _socket =
        std::os::unix::net::UnixListener::bind(source.join("sock\x1b[5m\rx\x0e")).unwrap();
    let repo = plain_repo(&sandbox);
    let first = backup(&sandbox, &repo, &[], &source)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    write(&source, "green\x1b[32mfile", "green", JAN_2026);
    let locked = source.join("locked\x1b[5m");
    fs::write(&locked, "locked").unwrap();
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).unwrap();
    // Root reads everything, so the backup that cannot read `locked` runs unprivileged.
    let mut command = match running_as_root() {
        true => sandbox.cairn_as_nobody(&[Path::new(&repo), &source]),
        false => sandbox.cairn(),
    };
    let warned = command
        .args(["backup", "--repo", &repo])
        .arg(&source)
        .output()
        .unwrap();
    assert_eq!(warned.status.code(), Some(3), "{}", stderr(&warned));
    let missing = sandbox.run(&["ls", "--repo", &repo, "latest:gone\x1b[31m"]);
    assert!(!missing.status.success());
    let copy = sandbox.path("copy");
    let contents = format!("{}/", source.display());
    let said = [
        ("backup's warning", stderr(&warned), "locked?[5m"),
        ("the log's warning", stderr(&warned), "skipping socket"),
        (
            "ls",
            sandbox.ok(&["ls", "-r", "--repo", &repo, "latest"]),
            "link? -> to?]0;title?",
        ),
        (
            "diff",
            sandbox.ok(&["diff", "--repo", &repo, &first, "latest"]),
            "+ green?[32mfile",
        ),
        (
            "sync -i",
            sandbox.ok(&["sync", "-i", &contents, copy.to_str().unwrap()]),
            "red?[31mfile",
        ),
        ("an error", stderr(&missing), "gone?[31m"),
    ];
    for (what, text, shown) in said {
        assert!(text.contains(shown), "{what} shows {shown:?}: {text:?}");
        let control = text.chars().find(|&c| c.is_control() && c != '\n');
        assert_eq!(control, None, "{what} prints a control character: {text:?}");
    }
    // JSON keeps names exact.
    let listed = sandbox.ok(&["ls", "--json", "--repo", &repo, "latest"]);
    assert!(listed.contains("red\\u001b[31mfile"), "{listed}");
}

#[test]
fn find_reports_each_version_of_a_match_with_the_checkpoints_holding_it() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    write(&source, "src/main.c", "int main;", JAN_2021);
    write(&source, "src/lib.c", "int lib;", JAN_2021);
    write(&source, "doc/Guide.txt", "read me", JAN_2021);
    write(&source, "doc/img/a.png", "png", JAN_2021);
    write(&source, "src/doc/inner.txt", "inner", JAN_2021);
    write(&source, "esc\x1b[31mape.log", "escape", JAN_2021);
    let repo = plain_repo(&sandbox);
    let mut ids = vec![backup(&sandbox, &repo, &[], &source)["id"].to_string()];
    write(&source, "src/main.c", "int main(void);", JUNE_2025);
    write(&source, "new.c", "new", JAN_2026);
    ids.push(backup(&sandbox, &repo, &[], &source)["id"].to_string());
    ids.push(backup(&sandbox, &repo, &[], &source)["id"].to_string());
    let ids: Vec<String> = ids
        .iter()
        .map(|id| id.trim_matches('"').to_owned())
        .collect();

    let found = find_json(&sandbox, &repo, &["*.c"]);
    assert_eq!(
        summary(&found, &ids),
        [
            "new.c [1 2]",
            "src/lib.c [0 1 2]",
            "src/main.c [0]",
            "src/main.c [1 2]"
        ]
    );
    assert_eq!(found[3]["size"], 15);
    assert_eq!(found[3]["mtime"], "2025-06-01T00:00:00.000000000Z");
    assert_eq!(found[3]["type"], "file");

    // Anchored at the root, directories only, case ignored, by modification time.
    let anchored = find_json(&sandbox, &repo, &["/doc"]);
    assert_eq!(summary(&anchored, &ids), ["doc [0 1 2]"]);
    let dirs = find_json(&sandbox, &repo, &["doc/"]);
    assert_eq!(summary(&dirs, &ids), ["doc [0 1 2]", "src/doc [0 1 2]"]);
    let below = find_json(&sandbox, &repo, &["doc/**/*.png"]);
    assert_eq!(summary(&below, &ids), ["doc/img/a.png [0 1 2]"]);
    let any_case = find_json(&sandbox, &repo, &["-i", "guide*"]);
    assert_eq!(summary(&any_case, &ids), ["doc/Guide.txt [0 1 2]"]);
    let window = ["*.c", "--newest", "2025-01-01", "--oldest", "2025-12-31"];
    let in_2025 = find_json(&sandbox, &repo, &window);
    assert_eq!(summary(&in_2025, &ids), ["src/main.c [1 2]"]);
    let latest = find_json(&sandbox, &repo, &["main.c", "-c", "latest"]);
    assert_eq!(summary(&latest, &ids), ["src/main.c [2]"]);
    // --path keeps the checkpoints of one backed-up path, as list's does.
    let backed_up = source.to_str().unwrap();
    let of_source = find_json(&sandbox, &repo, &["main.c", "--path", backed_up]);
    assert_eq!(
        summary(&of_source, &ids),
        ["src/main.c [0]", "src/main.c [1 2]"]
    );
    let elsewhere = sandbox.run(&["find", "--repo", &repo, "main.c", "--path", "/elsewhere"]);
    assert!(elsewhere.stdout.is_empty(), "{}", stderr(&elsewhere));

    let text = sandbox.ok(&["find", "--repo", &repo, "main.c"]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].contains("src/main.c  in"), "{text}");
    assert!(lines[0].contains(&ids[0][..8]), "{text}");
    assert!(lines[1].contains("2025-06-01"), "{text}");

    let escaped = sandbox.ok(&["find", "--repo", &repo, "*.log"]);
    assert!(escaped.contains("esc?[31mape.log"), "{escaped:?}");
    assert!(!escaped.contains('\x1b'), "{escaped:?}");

    let nothing = sandbox.run(&["find", "--repo", &repo, "*.rs"]);
    assert!(nothing.status.success());
    assert!(nothing.stdout.is_empty());
    assert!(stderr(&nothing).contains("nothing matched in 3 checkpoints"));
    let bad_time = sandbox.run(&["find", "--repo", &repo, "x", "--newest", "soon"]);
    assert_fails(&bad_time, 2, "is not a time");
}

#[test]
fn excludes_are_anchored_at_the_backup_root_and_one_that_matched_nothing_is_named() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    for path in [
        "keep.txt",
        "doc/x",
        "src/doc/y",
        "src/gen/z",
        "lib/src/gen/w",
        "notes/doc",
        "top.o",
        "lib/deep.o",
    ] {
        write(&source, path, path, JAN_2021);
    }
    let repo = plain_repo(&sandbox);
    let excludes = [
        "--exclude",
        "doc/", // directories named doc, anywhere
        "--exclude",
        "src/gen", // the path below the root only
        "--exclude",
        "/notes/doc", // anchored with a leading slash
        "--exclude",
        "*.o", // names anywhere
        "--exclude",
        "nowhere/",
    ];
    let mut args = vec!["backup", "--repo", &repo];
    args.extend(excludes);
    args.push(source.to_str().unwrap());
    let output = sandbox.run(&args);
    assert!(output.status.success(), "{}", stderr(&output));
    let warning = stderr(&output);
    assert!(
        warning.contains("exclude \"nowhere/\" matched nothing"),
        "{warning}"
    );
    assert!(!warning.contains("\"doc/\""), "{warning}");
    let listing = sandbox.ok(&["ls", "-r", "--json", "--repo", &repo, "latest"]);
    let listing: Value = serde_json::from_str(&listing).unwrap();
    assert_eq!(
        json_strings(&listing, "path"),
        [
            "keep.txt",
            "lib",
            "lib/src",
            "lib/src/gen",
            "lib/src/gen/w",
            "notes",
            "src"
        ]
    );
    let report = backup(&sandbox, &repo, &excludes, &source);
    assert_eq!(
        report["unmatched_excludes"],
        serde_json::json!(["nowhere/"])
    );
    // A path given is backed up whatever the patterns say of its own name.
    let given = source.join("top.o");
    backup(&sandbox, &repo, &["--exclude", "*.o"], &given);
    assert_eq!(listed_paths(&sandbox, &repo), ["top.o"]);
}

/// Unpacks `archive` into `dir` with GNU tar, as root keeping owners, modes and xattrs.
fn untar(archive: &Path, dir: &Path) -> std::process::Output {
    fs::create_dir_all(dir).unwrap();
    std::process::Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf"])
        .arg(archive)
        .arg("-C")
        .arg(dir)
        .output()
        .unwrap()
}

fn dump_to(sandbox: &Sandbox, repo: &str, reference: &str, file: &Path) -> std::process::Output {
    sandbox
        .cairn()
        .args(["dump", "--repo", repo, reference])
        .stdout(fs::File::create(file).unwrap())
        .output()
        .unwrap()
}

#[test]
fn dump_writes_a_tar_that_gnu_tar_unpacks_into_the_tree_backed_up() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    make_tree(&source);
    let repo = plain_repo(&sandbox);
    backup(&sandbox, &repo, &[], &source);

    // The whole checkpoint: its entries at the archive's top level.
    let whole = sandbox.path("whole.tar");
    let output = dump_to(&sandbox, &repo, "latest", &whole);
    assert!(output.status.success(), "{}", stderr(&output));
    let unpacked = sandbox.path("whole");
    let tar = untar(&whole, &unpacked);
    assert!(tar.status.success(), "{}", stderr(&tar));
    let mut expected = snapshot(&source);
    let mut actual = snapshot(&unpacked);
    // The root's own metadata is not an entry of the archive.
    expected.remove(Path::new(""));
    actual.remove(Path::new(""));
    assert_eq!(actual, expected);

    // One directory: named by its own name, itself first.
    let one = sandbox.path("dir.tar");
    assert!(
        dump_to(&sandbox, &repo, "latest:dir/nested", &one)
            .status
            .success()
    );
    let listed = std::process::Command::new("tar")
        .arg("-tf")
        .arg(&one)
        .output()
        .unwrap();
    let names = String::from_utf8(listed.stdout).unwrap();
    assert_eq!(
        names.lines().collect::<Vec<_>>(),
        [
            "nested/",
            "nested/deeper/",
            "nested/deeper/small",
            "nested/text.txt"
        ]
    );

    // A file: its bytes; to a --target file, replaced once complete.
    let bytes = sandbox
        .cairn()
        .args(["dump", "--repo", &repo, "latest:dir/big.bin"])
        .output()
        .unwrap();
    assert_eq!(bytes.stdout, fs::read(source.join("dir/big.bin")).unwrap());
    let target = sandbox.path("out.tar");
    let t = target.to_str().unwrap();
    // A symlink planted where the partial file goes is replaced, not followed.
    let victim = sandbox.path("victim");
    fs::write(&victim, "keep me").unwrap();
    std::os::unix::fs::symlink(&victim, sandbox.path(".out.tar.cairn-partial")).unwrap();
    sandbox.ok(&["dump", "--repo", &repo, "latest:dir", "--target", t]);
    assert!(untar(&target, &sandbox.path("targeted")).status.success());
    assert_eq!(fs::read(&victim).unwrap(), b"keep me");
    let mut dir = snapshot(&source.join("dir"));
    // Its hard-link partner (hello.txt) is outside the directory dumped.
    dir.get_mut(Path::new("hardlink")).unwrap().link_group = None;
    assert_eq!(snapshot(&sandbox.path("targeted/dir")), dir);

    // More entries without file data than a dump holds at once (empty files, links).
    let many = sandbox.path("many");
    for i in 0..5000 {
        fs::write(many.join(format!("d{}", i % 7)).join(format!("e{i}")), "")
            .or_else(|_| {
                fs::create_dir_all(many.join(format!("d{}", i % 7)))?;
                fs::write(many.join(format!("d{}", i % 7)).join(format!("e{i}")), "")
            })
            .unwrap();
    }
    std::os::unix::fs::symlink("d0/e0", many.join("link")).unwrap();
    fs::write(many.join("last.bin"), pseudo_random(100_000, 3)).unwrap();
    backup(&sandbox, &repo, &[], &many);
    let archive = sandbox.path("many.tar");
    assert!(
        dump_to(&sandbox, &repo, "latest", &archive)
            .status
            .success()
    );
    let unpacked = sandbox.path("many-unpacked");
    assert!(untar(&archive, &unpacked).status.success());
    let mut expected = snapshot(&many);
    let mut actual = snapshot(&unpacked);
    expected.remove(Path::new(""));
    actual.remove(Path::new(""));
    assert_eq!(actual.len(), 5000 + 7 + 2);
    assert_eq!(actual, expected);
}

#[test]
fn a_dump_from_a_damaged_repository_fails_and_tar_sees_a_truncated_archive() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    fs::create_dir_all(&source).unwrap();
    fs::write(source.join("a.bin"), pseudo_random(2_000_000, 4)).unwrap();
    fs::write(source.join("b.txt"), "after the damage").unwrap();
    let repo = plain_repo(&sandbox);
    backup(&sandbox, &repo, &[], &source);
    let mut packs: Vec<_> = walk_files(&sandbox.path("repo/data"));
    packs.sort_by_key(|p| std::cmp::Reverse(fs::metadata(p).unwrap().len()));
    let mut bytes = fs::read(&packs[0]).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    fs::write(&packs[0], bytes).unwrap();

    let archive = sandbox.path("damaged.tar");
    let output = dump_to(&sandbox, &repo, "latest", &archive);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(stderr(&output).contains("error:"), "{}", stderr(&output));
    let tar = untar(&archive, &sandbox.path("unpacked"));
    assert!(!tar.status.success(), "tar took a damaged dump as whole");
}

/// Every regular file below `dir`.
fn walk_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut open = vec![dir.to_owned()];
    while let Some(dir) = open.pop() {
        for entry in fs::read_dir(dir).unwrap().flatten() {
            if entry.file_type().unwrap().is_dir() {
                open.push(entry.path());
            } else {
                files.push(entry.path());
            }
        }
    }
    files
}

/// Restores with `args` into a new directory; returns the sorted paths below it and stderr.
fn restore_with(
    sandbox: &Sandbox,
    repo: &str,
    reference: &str,
    args: &[&str],
) -> (Vec<String>, String) {
    let target = sandbox.path(&format!(
        "restored-{}",
        args.join("-").replace(['/', '*'], "_")
    ));
    let mut all = vec![
        "restore",
        "--repo",
        repo,
        reference,
        "--target",
        target.to_str().unwrap(),
    ];
    all.extend(args);
    let output = sandbox.run(&all);
    assert!(output.status.success(), "{args:?}: {}", stderr(&output));
    let mut paths: Vec<String> = entries_below(&target)
        .iter()
        .map(|p| {
            p.strip_prefix(&target)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    paths.sort();
    (paths, stderr(&output))
}

#[test]
fn restore_includes_and_excludes_choose_entries_by_their_paths_in_the_checkpoint() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    for path in [
        "docs/a.pdf",
        "docs/b.txt",
        "src/main.c",
        "src/doc/c.pdf",
        "build/out.o",
        "build/sub/x.pdf",
    ] {
        write(&source, path, path, JAN_2021);
    }
    let repo = plain_repo(&sandbox);
    backup(&sandbox, &repo, &[], &source);

    let (pdfs, _) = restore_with(&sandbox, &repo, "latest", &["--include", "*.pdf"]);
    assert_eq!(
        pdfs,
        [
            "build",
            "build/sub",
            "build/sub/x.pdf",
            "docs",
            "docs/a.pdf",
            "src",
            "src/doc",
            "src/doc/c.pdf"
        ]
    );
    let (src, _) = restore_with(&sandbox, &repo, "latest", &["--include", "/src"]);
    assert_eq!(src, ["src", "src/doc", "src/doc/c.pdf", "src/main.c"]);
    let both = ["--include", "*.pdf", "--exclude", "build/"];
    let (not_built, _) = restore_with(&sandbox, &repo, "latest", &both);
    assert_eq!(
        not_built,
        ["docs", "docs/a.pdf", "src", "src/doc", "src/doc/c.pdf"]
    );
    let (no_pdfs, _) = restore_with(&sandbox, &repo, "latest", &["--exclude", "*.pdf"]);
    assert_eq!(
        no_pdfs,
        [
            "build",
            "build/out.o",
            "build/sub",
            "docs",
            "docs/b.txt",
            "src",
            "src/doc",
            "src/main.c"
        ]
    );
    // Below a path of the checkpoint, patterns still name paths in the checkpoint.
    let (part, _) = restore_with(&sandbox, &repo, "latest:src", &["--include", "src/doc"]);
    assert_eq!(part, ["doc", "doc/c.pdf"]);
    let (whole, _) = restore_with(
        &sandbox,
        &repo,
        "latest:src/doc",
        &["--include", "/src/doc"],
    );
    assert_eq!(
        whole,
        ["c.pdf"],
        "the directory restored is itself included"
    );
    let (nothing, warning) = restore_with(&sandbox, &repo, "latest", &["--include", "*.rs"]);
    assert!(nothing.is_empty(), "{nothing:?}");
    assert!(
        warning.contains("include \"*.rs\" matched nothing"),
        "{warning}"
    );

    let file = sandbox.path("one-file");
    let refused = sandbox.run(&[
        "restore",
        "--repo",
        &repo,
        "latest:src/main.c",
        "--target",
        file.to_str().unwrap(),
        "--include",
        "x",
    ]);
    assert_fails(&refused, 1, "is not a directory");
}

fn listed(sandbox: &Sandbox, repo: &str) -> Vec<Value> {
    let list = sandbox.ok(&["list", "--json", "--repo", repo]);
    serde_json::from_str::<Value>(&list)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn tags_of(checkpoint: &Value) -> Vec<&str> {
    checkpoint["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect()
}

#[test]
fn tag_adds_removes_and_sets_tags_and_a_retagged_checkpoint_gets_a_new_id() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    write(&source, "file", "contents", JAN_2021);
    let repo = plain_repo(&sandbox);
    let first = backup(&sandbox, &repo, &["--tag", "daily"], &source)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    backup(&sandbox, &repo, &["--tag", "daily"], &source);

    let changed = sandbox.ok(&["tag", "--json", "--repo", &repo, &first, "--add", "keep"]);
    let changed: Value = serde_json::from_str(&changed).unwrap();
    assert_eq!(changed[0]["old"], first.as_str());
    let renamed = changed[0]["new"].as_str().unwrap().to_owned();
    assert_ne!(renamed, first);
    let list = listed(&sandbox, &repo);
    assert_eq!(list.len(), 2);
    assert_eq!(
        list[0]["id"],
        renamed.as_str(),
        "the time and so the order are kept"
    );
    assert_eq!(tags_of(&list[0]), ["daily", "keep"]);
    // The next checkpoint still names the one it was compared against.
    assert_eq!(list[1]["parent"], first.as_str());
    let restored = sandbox.path("restored");
    sandbox.ok(&[
        "restore",
        "--repo",
        &repo,
        &renamed[..8],
        "--target",
        restored.to_str().unwrap(),
    ]);
    assert_eq!(fs::read(restored.join("file")).unwrap(), b"contents");

    // Without ids: every checkpoint the filters let through.
    let all = sandbox.run(&[
        "tag", "--repo", &repo, "--tag", "daily", "--remove", "daily", "--add", "weekly",
    ]);
    assert!(
        stderr(&all).contains("2 checkpoints retagged"),
        "{}",
        stderr(&all)
    );
    let list = listed(&sandbox, &repo);
    assert_eq!(tags_of(&list[0]), ["keep", "weekly"]);
    assert_eq!(tags_of(&list[1]), ["weekly"]);
    let again = sandbox.run(&["tag", "--repo", &repo, "latest", "--add", "weekly"]);
    assert!(
        stderr(&again).contains("0 checkpoints retagged, 1 already as asked"),
        "{}",
        stderr(&again)
    );
    sandbox.ok(&["tag", "--repo", &repo, "latest", "--set", ""]);
    assert!(tags_of(&listed(&sandbox, &repo)[1]).is_empty());
    sandbox.ok(&["tag", "--repo", &repo, "latest", "--set", "a", "--set", "b"]);
    assert_eq!(tags_of(&listed(&sandbox, &repo)[1]), ["a", "b"]);

    assert_fails(
        &sandbox.run(&["tag", "--repo", &repo, "latest", "--add", "a/b"]),
        1,
        "not usable",
    );
    assert_fails(
        &sandbox.run(&["tag", "--repo", &repo, "latest"]),
        1,
        "nothing to change",
    );
    let both = sandbox.run(&["tag", "--repo", &repo, "latest", "--set", "x", "--add", "y"]);
    assert_fails(&both, 2, "cannot be used with");
    assert_eq!(
        listed(&sandbox, &repo).len(),
        2,
        "no failed retag removed a checkpoint"
    );
}

/// The paths `ls -r` lists in the newest checkpoint.
fn listed_paths(sandbox: &Sandbox, repo: &str) -> Vec<String> {
    let listing = sandbox.ok(&["ls", "-r", "--json", "--repo", repo, "latest"]);
    let listing: Value = serde_json::from_str(&listing).unwrap();
    json_strings(&listing, "path")
        .iter()
        .map(|p| p.to_string())
        .collect()
}

#[test]
fn exclude_files_and_cache_directories_are_left_out() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    for path in [
        "keep.txt",
        "debug.log",
        "build/out",
        "sub/build/kept",
        "cache/data",
        "fake/data",
    ] {
        write(&source, path, path, JAN_2021);
    }
    fs::write(
        source.join("cache/CACHEDIR.TAG"),
        "Signature: 8a477f597d28d172789f06886806bc55\n# a cache\n",
    )
    .unwrap();
    fs::write(
        source.join("fake/CACHEDIR.TAG"),
        "Signature: something else\n",
    )
    .unwrap();
    // A FIFO where a tag would be: looked at without opening it (an open would wait).
    fs::create_dir_all(source.join("piped")).unwrap();
    let fifo = source.join("piped/CACHEDIR.TAG");
    let fifo = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: fifo is a valid path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let list = sandbox.path("excludes.txt");
    fs::write(&list, "# what to leave out\n\n*.log\r\n  /build  \n").unwrap();
    let repo = plain_repo(&sandbox);
    let args = ["--exclude-file", list.to_str().unwrap(), "--exclude-caches"];
    let mut command = sandbox.cairn();
    command
        .args(["backup", "--json", "--repo", &repo])
        .args(args)
        .arg(&source);
    let bounded = run_bounded(&mut command, std::time::Duration::from_secs(60));
    assert!(
        !bounded.timed_out,
        "the backup waited on a FIFO named CACHEDIR.TAG"
    );
    assert!(
        bounded.output.status.success(),
        "{}",
        stderr(&bounded.output)
    );
    let report: Value = serde_json::from_slice(&bounded.output.stdout).unwrap();
    assert_eq!(report["unmatched_excludes"], serde_json::json!([]));
    assert_eq!(
        listed_paths(&sandbox, &repo),
        [
            "fake",
            "fake/CACHEDIR.TAG",
            "fake/data",
            "keep.txt",
            "piped",
            "piped/CACHEDIR.TAG",
            "sub",
            "sub/build",
            "sub/build/kept"
        ]
    );
}

#[test]
fn files_from_backs_up_the_listed_paths_below_their_common_directory() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    for path in ["a/x.txt", "a/y.txt", "b/one", "b/deep/two", "c/other"] {
        write(&source, path, path, JAN_2021);
    }
    let repo = plain_repo(&sandbox);
    let list = sandbox.path("list.txt");
    let root = source.to_str().unwrap();
    fs::write(
        &list,
        format!("{root}/a/x.txt\n# a comment\n{root}/b\n\n{root}/missing\n"),
    )
    .unwrap();
    let mut args = vec![
        "backup",
        "--json",
        "--repo",
        &repo,
        "--files-from",
        list.to_str().unwrap(),
    ];
    let output = sandbox.run(&args);
    assert_eq!(
        output.status.code(),
        Some(3),
        "a listed path is missing: {}",
        stderr(&output)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["errors"], 1);
    let missing = report["unreadable"][0]["path"].as_str().unwrap();
    assert!(missing.ends_with("source/missing"), "{report}");
    assert_eq!(
        listed_paths(&sandbox, &repo),
        ["a", "a/x.txt", "b", "b/deep", "b/deep/two", "b/one"]
    );
    let list = sandbox.ok(&["list", "--json", "--repo", &repo]);
    let list: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(
        list[0]["paths"],
        serde_json::json!([root]),
        "the common directory"
    );

    // NUL-separated, from stdin, beside a path given as an argument.
    let nul_list = format!("{root}/c/other\0{root}/a/y.txt\0");
    args = vec!["backup", "--repo", &repo, "-0", "--files-from", "-", root];
    let mut child = sandbox
        .cairn()
        .args(&args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(nul_list.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let everything = listed_paths(&sandbox, &repo);
    assert_eq!(
        everything.len(),
        9,
        "the root given backs up all: {everything:?}"
    );
}

#[test]
fn one_file_system_keeps_a_mount_point_empty() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    write(&source, "local.txt", "here", JAN_2021);
    let _disk = SmallDisk::mount(&source.join("mnt"), 4).expect("the tests run as root");
    write(&source, "mnt/elsewhere.txt", "there", JAN_2021);
    let repo = plain_repo(&sandbox);
    backup(&sandbox, &repo, &[], &source);
    assert_eq!(
        listed_paths(&sandbox, &repo),
        ["local.txt", "mnt", "mnt/elsewhere.txt"]
    );
    let report = backup(&sandbox, &repo, &["--one-file-system"], &source);
    assert_eq!(listed_paths(&sandbox, &repo), ["local.txt", "mnt"]);
    assert_eq!(report["files"], 1);
    backup(&sandbox, &repo, &["-x"], &source);
    assert_eq!(listed_paths(&sandbox, &repo), ["local.txt", "mnt"]);
    // Chosen one by one, each path stays on its own filesystem, whichever that is.
    let list = sandbox.path("list");
    let chosen = format!("{0}/local.txt\n{0}/mnt/elsewhere.txt\n", source.display());
    fs::write(&list, chosen).unwrap();
    let list = list.to_str().unwrap();
    sandbox.ok(&["backup", "--repo", &repo, "-x", "--files-from", list]);
    let paths = listed_paths(&sandbox, &repo);
    assert!(
        paths.contains(&"mnt/elsewhere.txt".to_string()),
        "{paths:?}"
    );
}

/// Runs `cairn` with `args`, `input` on its stdin.
fn with_stdin(sandbox: &Sandbox, args: &[&str], input: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = sandbox
        .cairn()
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output().unwrap();
    let _ = writer.join().unwrap();
    output
}

#[test]
fn stdin_is_backed_up_as_one_named_file() {
    let sandbox = Sandbox::new();
    let repo = plain_repo(&sandbox);
    let mut dump = pseudo_random(3_000_000, 8);
    dump.extend_from_slice(&b"INSERT INTO t VALUES (1);\n".repeat(10_000));
    let args = [
        "backup",
        "--json",
        "--repo",
        &repo,
        "--stdin",
        "--stdin-filename",
        "db.sql",
    ];
    let output = with_stdin(&sandbox, &args, &dump);
    assert!(output.status.success(), "{}", stderr(&output));
    let first: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(first["files"], 1);
    assert_eq!(first["bytes"], dump.len());
    let cat = sandbox
        .cairn()
        .args(["cat", "--repo", &repo, "latest:db.sql"])
        .output()
        .unwrap();
    assert!(cat.stdout == dump, "cat gives back the input");
    let list: Value =
        serde_json::from_str(&sandbox.ok(&["list", "--json", "--repo", &repo])).unwrap();
    assert_eq!(list[0]["paths"], serde_json::json!(["/db.sql"]));

    // The same input again: its chunks are in the repository already.
    let again = with_stdin(&sandbox, &args, &dump);
    let again: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert!(again["added_bytes"].as_u64().unwrap() < 10_000, "{again}");
    let default_name = with_stdin(&sandbox, &["backup", "--repo", &repo, "--stdin"], b"x");
    assert!(default_name.status.success(), "{}", stderr(&default_name));
    let cat = sandbox
        .cairn()
        .args(["cat", "--repo", &repo, "latest:stdin"])
        .output()
        .unwrap();
    assert_eq!(cat.stdout, b"x");

    let slash = [
        "backup",
        "--repo",
        &repo,
        "--stdin",
        "--stdin-filename",
        "a/b",
    ];
    assert_fails(&with_stdin(&sandbox, &slash, b"x"), 1, "cannot name a file");
    let elsewhere = sandbox.path("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    let elsewhere = elsewhere.to_str().unwrap();
    let both = ["backup", "--repo", &repo, "--stdin", elsewhere];
    assert_fails(&with_stdin(&sandbox, &both, b"x"), 2, "cannot be used with");
    let named = [
        "backup",
        "--repo",
        &repo,
        "--stdin-filename",
        "x",
        elsewhere,
    ];
    assert_fails(
        &with_stdin(&sandbox, &named, b"x"),
        2,
        "cannot be used with",
    );
}

#[test]
fn verbose_says_what_each_step_does_quiet_only_errors_and_no_colour_off_a_terminal() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    write(&source, "file", "contents", JAN_2021);
    let repo = plain_repo(&sandbox);
    let src = source.to_str().unwrap();
    let first = sandbox.run(&["-v", "backup", "--repo", &repo, src]);
    let said = stderr(&first);
    assert!(said.contains("INFO opened repository"), "{said}");
    assert!(said.contains("no parent checkpoint"), "{said}");
    assert!(
        !said.contains('\x1b'),
        "no colour codes into a pipe: {said:?}"
    );
    let second = sandbox.run(&["backup", "--verbose", "--repo", &repo, src]);
    assert!(
        stderr(&second).contains("parent checkpoint"),
        "{}",
        stderr(&second)
    );

    let plain = sandbox.run(&["backup", "--repo", &repo, src, "--exclude", "nothing"]);
    assert!(!stderr(&plain).contains("INFO"), "{}", stderr(&plain));
    assert!(
        stderr(&plain).contains("matched nothing"),
        "{}",
        stderr(&plain)
    );
    let quiet = sandbox.run(&["-q", "backup", "--repo", &repo, src, "--exclude", "nothing"]);
    assert!(quiet.status.success());
    assert!(
        !stderr(&quiet).contains("matched nothing"),
        "{}",
        stderr(&quiet)
    );
    let overridden = sandbox
        .cairn()
        .env("CAIRN_LOG", "error")
        .args(["-v", "backup", "--repo", &repo, src])
        .output()
        .unwrap();
    assert!(
        !stderr(&overridden).contains("INFO"),
        "{}",
        stderr(&overridden)
    );
    let pinned_s3 = sandbox.run(&[
        "list",
        "--repo",
        "s3:https://127.0.0.1:1/bucket",
        "--tls-fingerprint",
        &"ab".repeat(32),
    ]);
    assert_fails(&pinned_s3, 1, "pins a `cairn serve` certificate");
    let both = sandbox.run(&["-v", "-q", "list", "--repo", &repo]);
    assert_fails(&both, 2, "cannot be used with");
}

#[test]
fn the_progress_line_on_a_terminal_fits_its_width_and_names_the_file_being_read() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    random_files(&source, 3, 4_000_000, 12);
    let repo = plain_repo(&sandbox);
    // A terminal 60 columns wide, made by script(1); the backup reads at 8 MB/s, so the
    // line is drawn several times.
    let cairn = env!("CARGO_BIN_EXE_cairn");
    let command = format!(
        "stty cols 60; {cairn} backup --limit-rate 8M --repo {repo} {}",
        source.display()
    );
    let output = std::process::Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .env("CAIRN_CACHE_DIR", sandbox.path("cache"))
        .env_remove("CAIRN_PASSWORD")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let shown = String::from_utf8_lossy(&output.stdout);
    let frames: Vec<String> = shown
        .split(['\r', '\n'])
        .map(|frame| frame.replace("\x1b[2K", ""))
        .filter(|frame| frame.contains("backup  "))
        .collect();
    assert!(frames.len() >= 3, "{shown:?}");
    for frame in &frames {
        assert!(
            frame.chars().count() <= 60,
            "wider than the terminal: {frame:?}"
        );
        assert!(!frame.contains('\x1b'), "{frame:?}");
    }
    assert!(frames.iter().any(|f| f.contains("/3 files")), "{frames:?}");
    assert!(
        frames.iter().any(|f| f.contains("/source/f")),
        "the current file: {frames:?}"
    );
}

#[test]
fn help_puts_global_options_apart_and_ends_with_examples_and_the_environment() {
    let sandbox = Sandbox::new();
    let help = sandbox.ok(&["backup", "--help"]);
    let own = help
        .find("--exclude-caches")
        .expect("the command's options");
    let global = help
        .find("Global options:")
        .expect("a heading for the global options");
    let repo = help.find("--repo <REPO>").unwrap();
    assert!(own < global && global < repo, "{help}");
    let examples = help.find("Examples:\n  cairn backup").expect("examples");
    let environment = help.find("Environment:\n  ").expect("the environment");
    assert!(repo < examples && examples < environment, "{help}");
    assert!(help[environment..].contains("CAIRN_PASSWORD "), "{help}");
    let serve = sandbox.ok(&["serve", "--help"]);
    assert!(serve.contains("CAIRN_SERVE_CLIENT_TIMEOUT"), "{serve}");
}

/// Pages of `path` in the page cache, and its pages, as `mincore` tells.
fn cached_pages(path: &Path) -> (usize, usize) {
    use std::os::fd::AsRawFd;
    let file = fs::File::open(path).unwrap();
    let len = file.metadata().unwrap().len() as usize;
    let page = 4096;
    let pages = len.div_ceil(page);
    let mut resident = vec![0u8; pages];
    // SAFETY: a private read-only mapping of the whole open file, checked, unmapped below;
    // `resident` holds a byte per page of it, as mincore writes.
    unsafe {
        let map = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            file.as_raw_fd(),
            0,
        );
        assert_ne!(map, libc::MAP_FAILED);
        assert_eq!(libc::mincore(map, len, resident.as_mut_ptr()), 0);
        libc::munmap(map, len);
    }
    (resident.iter().filter(|&&r| r & 1 == 1).count(), pages)
}

/// Writes `path` out and drops its pages from the page cache.
fn evict(path: &Path) {
    use std::os::fd::AsRawFd;
    let file = fs::File::open(path).unwrap();
    file.sync_all().unwrap();
    // SAFETY: an advice on the whole of a descriptor this function holds open.
    let advised = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(advised, 0);
}

/// Whether `path` is on ext2-4 or XFS, where a large file is read around the page cache.
fn on_ext4_or_xfs(path: &Path) -> bool {
    let path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a plain C struct, filled in by statfs from a NUL-terminated path.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statfs(path.as_ptr(), &mut stat) }, 0);
    [0xEF53, 0x5846_5342].contains(&(stat.f_type as u64))
}

/// A large file (a disk image, a dump) is read around the page cache and the packs holding
/// it are written around it: a backup leaves (almost) none of either cached, where going
/// through the cache would leave them all, and the file restores byte for byte, its size no
/// multiple of a page. (Where the sandbox is on another filesystem, only the restore is
/// checked.)
#[test]
fn a_large_file_is_read_and_its_packs_written_around_the_page_cache_and_it_restores_whole() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    fs::create_dir_all(&source).unwrap();
    let large = source.join("disk.img");
    let mut data = pseudo_random(12 << 20, 5);
    data.extend((0..(8 << 20) + 1234).map(|i| (i % 251) as u8));
    fs::write(&large, &data).unwrap();
    fs::write(source.join("notes.txt"), b"a small file\n").unwrap();
    let around_the_cache = on_ext4_or_xfs(&source);
    if around_the_cache {
        evict(&large);
        assert_eq!(
            cached_pages(&large).0,
            0,
            "the test starts with nothing cached"
        );
    } else {
        eprintln!("the sandbox is not on ext4 or XFS: only the restore is checked");
    }

    let repo = plain_repo(&sandbox);
    sandbox.ok(&["backup", "--repo", &repo, source.to_str().unwrap()]);
    if around_the_cache {
        let (cached, pages) = cached_pages(&large);
        assert!(cached < pages / 20, "{cached} of {pages} pages cached");
        let (mut pack_cached, mut pack_pages) = (0, 0);
        for dir in fs::read_dir(Path::new(&repo).join("data")).unwrap() {
            for pack in fs::read_dir(dir.unwrap().path()).unwrap() {
                let (cached, pages) = cached_pages(&pack.unwrap().path());
                (pack_cached, pack_pages) = (pack_cached + cached, pack_pages + pages);
            }
        }
        assert!(
            pack_pages > (10 << 20) / 4096,
            "{pack_pages} pages of packs"
        );
        assert!(
            pack_cached < pack_pages / 20,
            "{pack_cached} of {pack_pages} pages of packs cached"
        );
    }

    let target = sandbox.path("target");
    sandbox.ok(&[
        "restore",
        "--repo",
        &repo,
        "latest",
        "--target",
        target.to_str().unwrap(),
    ]);
    assert_same_tree(&source, &target);
}
