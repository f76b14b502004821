//! End-to-end tests of the commands people reach for once backups exist: `find` across
//! checkpoints, and the backup inputs that choose what goes in (anchored excludes).

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
fn find_reports_each_version_of_a_match_with_the_checkpoints_holding_it() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    write(&source, "src/main.c", "int main;", JAN_2021);
    write(&source, "src/lib.c", "int lib;", JAN_2021);
    write(&source, "doc/Guide.txt", "read me", JAN_2021);
    write(&source, "doc/img/a.png", "png", JAN_2021);
    write(&source, "src/doc/inner.txt", "inner", JAN_2021);
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

    let text = sandbox.ok(&["find", "--repo", &repo, "main.c"]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].contains("src/main.c  in"), "{text}");
    assert!(lines[0].contains(&ids[0][..8]), "{text}");
    assert!(lines[1].contains("2025-06-01"), "{text}");

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
}
