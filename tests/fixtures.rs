//! Old repositories keep working. `tests/fixtures/v<format>-<mode>/` holds a small repository
//! made by the cairn of that format version in each encryption mode (`none`, `keyfile`,
//! `password`), with two checkpoints and a manifest of the tree each one backed up. Every
//! fixture is listed, checked with its data read, diffed, restored and compared byte for byte
//! with its manifest, and mounted; a later change that cannot read a repository an earlier
//! cairn wrote fails here.
//!
//! `generate_fixtures_of_this_format` (ignored; run it with
//! `cargo test --test fixtures -- --ignored`) adds the fixtures of the current format version
//! beside the old ones and never overwrites a fixture that exists.

mod common;

use blake3::Hasher;
use common::*;
use std::fmt::Write as _;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The password of every `password`-mode fixture.
const FIXTURE_PASSWORD: &str = "cairn fixture password";
/// The encryption modes a fixture is made in.
const MODES: [&str; 3] = ["none", "keyfile", "password"];

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The fixture directories, `v<format>-<mode>`, in name order.
fn fixtures() -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("repo/config").is_file())
        .collect();
    found.sort();
    found
}

/// The mode a fixture directory is named for.
fn mode_of(fixture: &Path) -> &'static str {
    let name = fixture.file_name().unwrap().to_str().unwrap();
    MODES
        .into_iter()
        .find(|mode| name.ends_with(&format!("-{mode}")))
        .unwrap_or_else(|| panic!("fixture {name} is not named v<format>-<mode>"))
}

/// The arguments that give `cairn` the secret of a repository in `mode` whose key file or
/// password file lives in `dir`.
fn secret_args(mode: &str, dir: &Path) -> Vec<String> {
    let arg = |flag: &str, file: &str| vec![flag.into(), dir.join(file).display().to_string()];
    match mode {
        "keyfile" => arg("--key-file", "key"),
        "password" => arg("--password-file", "password"),
        _ => Vec::new(),
    }
}

/// `bytes` with every byte outside printable ASCII, and space and backslash, as `\xHH`.
fn escaped(bytes: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes {
        if b.is_ascii_graphic() && b != b'\\' {
            out.push(b as char);
        } else {
            write!(out, "\\x{b:02x}").unwrap();
        }
    }
    out
}

/// One line per entry of the tree at `root`, sorted by path: path, kind, permission bits,
/// mtime in ns, and the BLAKE3 of a file's bytes or a symlink's target. Owners are left out
/// so the comparison holds for a non-root test run.
fn manifest(root: &Path) -> String {
    let mut lines = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = fs::symlink_metadata(&path).unwrap();
        let relative = path.strip_prefix(root).unwrap().as_os_str().as_bytes();
        let name = if relative.is_empty() {
            ".".into()
        } else {
            escaped(relative)
        };
        let (kind, content) = if meta.is_dir() {
            for entry in fs::read_dir(&path).unwrap() {
                stack.push(entry.unwrap().path());
            }
            ("dir", "-".to_owned())
        } else if meta.is_symlink() {
            let target = fs::read_link(&path).unwrap();
            ("symlink", escaped(target.as_os_str().as_bytes()))
        } else {
            let mut hasher = Hasher::new();
            hasher.update(&fs::read(&path).unwrap());
            ("file", hasher.finalize().to_hex().to_string())
        };
        let mode = meta.mode() & 0o7777;
        let mtime_ns = meta.mtime() * 1_000_000_000 + meta.mtime_nsec();
        lines.push(format!("{name} {kind} {mode:04o} {mtime_ns} {content}"));
    }
    lines.sort();
    lines.join("\n") + "\n"
}

/// The first state of the fixtures' source tree: files, an empty file, an executable, a
/// subdirectory, a symlink and a name that is not UTF-8, with fixed modes and times.
fn write_first_source(root: &Path) {
    fs::create_dir_all(root.join("sub")).unwrap();
    fs::write(root.join("hello.txt"), b"hello, cairn\n").unwrap();
    fs::write(root.join("sub/data.bin"), pseudo_random(20_000, 7)).unwrap();
    fs::write(root.join("sub/empty"), b"").unwrap();
    fs::write(root.join("script.sh"), b"#!/bin/sh\necho cairn\n").unwrap();
    fs::set_permissions(root.join("script.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(
        root.join(std::ffi::OsStr::from_bytes(b"not-utf8-\xff\xfe")),
        b"a name that is not UTF-8\n",
    )
    .unwrap();
    std::os::unix::fs::symlink("hello.txt", root.join("link")).unwrap();
    fs::set_permissions(root.join("sub"), fs::Permissions::from_mode(0o750)).unwrap();
    fix_times(root, 1_700_000_000);
}

/// The second state: one file changed, one added, one removed.
fn write_second_source(root: &Path) {
    fs::write(root.join("hello.txt"), b"hello again, cairn\n").unwrap();
    fs::write(
        root.join("sub/new.txt"),
        b"added in the second checkpoint\n",
    )
    .unwrap();
    fs::remove_file(root.join("sub/empty")).unwrap();
    for (path, seconds) in [("hello.txt", 1), ("sub/new.txt", 2), ("sub", 3), ("", 4)] {
        set_mtime(&root.join(path), 1_700_100_000 + seconds, 500_000_000);
    }
}

/// Gives every entry below `root` (and `root`) an mtime of `seconds` plus its position.
fn fix_times(root: &Path, seconds: i64) {
    let mut paths = entries_below(root);
    paths.push(root.to_path_buf());
    paths.sort();
    // Children before parents, so setting a file's time does not move its directory's.
    for (position, path) in paths.iter().enumerate().rev() {
        set_mtime(path, seconds + position as i64, 250_000_000);
    }
}

/// Runs one fixture through list, check, diff, restore and mount.
fn exercise(fixture: &Path) {
    let mode = mode_of(fixture);
    let sandbox = Sandbox::new();
    let repo = sandbox.path("repo");
    copy_tree(&fixture.join("repo"), &repo);
    let cairn = |args: &[&str]| -> String {
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        all.extend(["--repo".into(), repo.display().to_string()]);
        all.extend(secret_args(mode, fixture));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        sandbox.ok(&all)
    };

    let listed: serde_json::Value = serde_json::from_str(&cairn(&["list", "--json"])).unwrap();
    let ids = json_strings(&listed, "id");
    assert_eq!(ids.len(), 2, "{}: two checkpoints", fixture.display());

    cairn(&["check", "--read-data"]);

    let diff = cairn(&["diff", ids[0], ids[1]]);
    let changes: Vec<&str> = diff.lines().collect();
    for expected in ["M hello.txt", "+ sub/new.txt", "- sub/empty"] {
        assert!(changes.contains(&expected), "{}: {diff}", fixture.display());
    }
    assert!(!diff.contains("data.bin"), "{}: {diff}", fixture.display());

    for (number, id) in ids.iter().enumerate() {
        let target = sandbox.path(&format!("restored-{number}"));
        cairn(&["restore", id, "--target", target.to_str().unwrap()]);
        let expected =
            fs::read_to_string(fixture.join(format!("manifest-{}.txt", number + 1))).unwrap();
        assert_eq!(
            manifest(&target),
            expected,
            "{}: checkpoint {id} restores another tree",
            fixture.display()
        );
    }

    let mount = Mounted::start_with(&sandbox, &repo, &secret_args(mode, fixture));
    let restored = sandbox.path("restored-1");
    for file in ["hello.txt", "sub/data.bin", "sub/new.txt"] {
        assert_eq!(
            fs::read(mount.path("latest").join(file)).unwrap(),
            fs::read(restored.join(file)).unwrap(),
            "{}: {file} through the mount",
            fixture.display()
        );
    }
}

#[test]
fn every_fixture_lists_checks_diffs_restores_and_mounts() {
    let found = fixtures();
    for mode in MODES {
        assert!(
            found.iter().any(|f| mode_of(f) == mode),
            "no {mode} fixture in {}",
            fixtures_dir().display()
        );
    }
    for fixture in &found {
        exercise(fixture);
    }
}

/// Makes the fixtures of the format version this build writes, beside the older ones; a
/// fixture that exists is left as it is.
#[test]
#[ignore = "writes tests/fixtures/; run by hand when the format version changes"]
fn generate_fixtures_of_this_format() {
    for mode in MODES {
        let sandbox = Sandbox::new();
        let source = sandbox.path("source");
        let repo = sandbox.path("repo");
        let made = sandbox.path("fixture");
        fs::create_dir_all(&made).unwrap();
        fs::write(made.join("password"), format!("{FIXTURE_PASSWORD}\n")).unwrap();
        let run = |args: &[&str]| {
            let mut command = sandbox.cairn();
            command.args(args).args(["--repo", repo.to_str().unwrap()]);
            command.args(secret_args(mode, &made));
            let output = command.output().unwrap();
            assert!(output.status.success(), "{args:?}: {}", stderr(&output));
        };
        run(&["init", "--encryption", mode]);
        write_first_source(&source);
        run(&["backup", source.to_str().unwrap()]);
        fs::write(made.join("manifest-1.txt"), manifest(&source)).unwrap();
        // Checkpoints sort by time; keep the two apart.
        std::thread::sleep(Duration::from_millis(1100));
        write_second_source(&source);
        run(&["backup", source.to_str().unwrap()]);
        fs::write(made.join("manifest-2.txt"), manifest(&source)).unwrap();
        if mode != "password" {
            fs::remove_file(made.join("password")).unwrap();
        }

        let config: serde_json::Value =
            serde_json::from_slice(&fs::read(repo.join("config")).unwrap()).unwrap();
        let version = config["cairn_repository"].as_u64().unwrap();
        let destination = fixtures_dir().join(format!("v{version}-{mode}"));
        if destination.exists() {
            eprintln!("{} exists; left as it is", destination.display());
            continue;
        }
        copy_tree(&repo, &made.join("repo"));
        copy_tree(&made, &destination);
        eprintln!("wrote {}", destination.display());
    }
}
