//! Whoever controls the storage cannot downgrade a repository (invariant 8): a config turned
//! to `"encryption": "none"`, changed chunker or compression settings, or chunker sizes too
//! small to be sane are refused with a clear error before anything is written, whether or not
//! the local cache remembers the repository. And what cairn writes is private: no file or
//! directory of a repository or of the local cache can be read by other users.

mod common;

use common::*;
use serde_json::{Value, json};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

const PASSWORD: &str = "correct horse";
/// Bytes that exist only in the source file, to find them in the repository if they leak.
const SECRET_MARKER: &[u8] =
    b"cairn-attack-marker: this sentence must never be stored in plaintext";

/// A source tree whose one file repeats `SECRET_MARKER`.
fn secret_source(sandbox: &Sandbox) -> PathBuf {
    let source = sandbox.path("source");
    fs::create_dir_all(&source).unwrap();
    fs::write(source.join("secret.txt"), SECRET_MARKER.repeat(100)).unwrap();
    source
}

/// Runs `cairn args --repo <sandbox>/repo` with the password in the environment when given,
/// and the cache in `cache`.
fn cairn_with(sandbox: &Sandbox, cache: &Path, password: Option<&str>, args: &[&str]) -> Output {
    let mut command = sandbox.cairn();
    command
        .args(args)
        .args(["--repo", sandbox.path("repo").to_str().unwrap()])
        .env("CAIRN_CACHE_DIR", cache);
    if let Some(password) = password {
        command.env("CAIRN_PASSWORD", password);
    }
    command.output().unwrap()
}

fn succeeds(output: Output) {
    assert!(output.status.success(), "{}", stderr(&output));
}

/// Fails unless the command failed and said every one of `needles`.
fn refused(output: Output, needles: &[&str]) {
    assert!(
        !output.status.success(),
        "the command succeeded: {}",
        stderr(&output)
    );
    let said = stderr(&output);
    for needle in needles {
        assert!(said.contains(needle), "no {needle:?} in: {said}");
    }
}

/// Rewrites `<repo>/config` with `change` applied to its JSON.
fn tamper_config(repo: &Path, change: impl FnOnce(&mut Value)) {
    let path = repo.join("config");
    let mut config: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    change(&mut config);
    fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
}

/// Every file below `dir`.
fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// Fails if any pack below `<repo>/data` holds `SECRET_MARKER` in plaintext.
fn assert_no_plaintext_pack(repo: &Path) {
    for pack in files_below(&repo.join("data")) {
        let bytes = fs::read(&pack).unwrap();
        assert!(
            !bytes
                .windows(SECRET_MARKER.len())
                .any(|w| w == SECRET_MARKER),
            "{} holds the source in plaintext",
            pack.display()
        );
    }
}

/// A password repository with one backup of `secret_source`, its config then turned to
/// `none` and its checkpoints and index moved away, as a hostile storage provider would.
fn downgraded_password_repo(sandbox: &Sandbox) -> (PathBuf, PathBuf) {
    let source = secret_source(sandbox);
    let cache = sandbox.path("cache");
    let password = Some(PASSWORD);
    succeeds(cairn_with(sandbox, &cache, password, &["init"]));
    succeeds(cairn_with(
        sandbox,
        &cache,
        password,
        &["backup", source.to_str().unwrap()],
    ));
    let repo = sandbox.path("repo");
    tamper_config(&repo, |config| {
        config["encryption"] = json!("none");
        let object = config.as_object_mut().unwrap();
        object.retain(|field, _| !["key_check", "sealed_settings"].contains(&field.as_str()));
    });
    let hidden = sandbox.path("hidden");
    fs::create_dir_all(&hidden).unwrap();
    for dir in ["checkpoints", "index"] {
        fs::rename(repo.join(dir), hidden.join(dir)).unwrap();
    }
    (repo, source)
}

#[test]
fn a_config_downgraded_to_none_is_refused_and_nothing_is_stored_in_plaintext() {
    let sandbox = Sandbox::new();
    let (repo, source) = downgraded_password_repo(&sandbox);
    let backup = ["backup", source.to_str().unwrap()];

    // The cache remembers the repository was encrypted.
    let cache = sandbox.path("cache");
    refused(
        cairn_with(&sandbox, &cache, Some(PASSWORD), &backup),
        &["tamper", "encryption"],
    );
    assert_no_plaintext_pack(&repo);

    // A fresh cache remembers nothing: the keys in keys/ and the password given refuse it.
    let fresh = sandbox.path("fresh-cache");
    refused(
        cairn_with(&sandbox, &fresh, Some(PASSWORD), &backup),
        &["tamper", "encryption"],
    );
    refused(
        cairn_with(&sandbox, &fresh, None, &backup),
        &["tamper", "keys/"],
    );
    assert_no_plaintext_pack(&repo);

    // With keys/ hidden too, the password given still refuses it.
    fs::rename(repo.join("keys"), sandbox.path("hidden/keys")).unwrap();
    let fresher = sandbox.path("fresher-cache");
    refused(
        cairn_with(&sandbox, &fresher, Some(PASSWORD), &backup),
        &["tamper", "password"],
    );
    assert_no_plaintext_pack(&repo);
    assert!(
        files_below(&repo.join("checkpoints")).is_empty(),
        "no checkpoint written"
    );
}

/// One edit of a config's JSON.
type ConfigChange = fn(&mut Value);

#[test]
fn changed_settings_of_an_encrypted_config_are_refused_without_a_cache() {
    let changes: [(&str, ConfigChange); 3] = [
        ("chunker", |config| {
            config["chunker"] = json!({
                "min_bytes": 1_048_576, "avg_bytes": 2_097_152, "max_bytes": 8_388_608
            })
        }),
        ("compression", |config| {
            config["compression_level"] = json!(19)
        }),
        ("encryption", |config| {
            config["encryption"] = json!("keyfile")
        }),
    ];
    for (what, change) in changes {
        let sandbox = Sandbox::new();
        let source = secret_source(&sandbox);
        let cache = sandbox.path("cache");
        succeeds(cairn_with(&sandbox, &cache, Some(PASSWORD), &["init"]));
        tamper_config(&sandbox.path("repo"), change);
        let backup = ["backup", source.to_str().unwrap()];
        let fresh = sandbox.path("fresh-cache");
        let output = cairn_with(&sandbox, &fresh, Some(PASSWORD), &backup);
        assert!(!output.status.success(), "{what}: {}", stderr(&output));
        assert!(
            stderr(&output).contains("tamper") || what == "encryption",
            "{what}: {}",
            stderr(&output)
        );
        assert!(files_below(&sandbox.path("repo/data")).is_empty(), "{what}");
    }
}

#[test]
fn changed_settings_of_an_old_unauthenticated_config_are_refused_by_the_cache() {
    let sandbox = Sandbox::new();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1-password");
    let repo = sandbox.path("repo");
    copy_tree(&fixture.join("repo"), &repo);
    let password = fs::read_to_string(fixture.join("password")).unwrap();
    let password = Some(password.trim_end());
    let cache = sandbox.path("cache");
    succeeds(cairn_with(&sandbox, &cache, password, &["list"]));
    tamper_config(&repo, |config| config["compression_level"] = json!(19));
    refused(
        cairn_with(&sandbox, &cache, password, &["list"]),
        &["tamper", "compression"],
    );
}

#[test]
fn tiny_chunker_sizes_are_refused() {
    let sandbox = Sandbox::new();
    let source = secret_source(&sandbox);
    let cache = sandbox.path("cache");
    succeeds(cairn_with(
        &sandbox,
        &cache,
        None,
        &["init", "--encryption", "none"],
    ));
    tamper_config(&sandbox.path("repo"), |config| {
        config["chunker"] = json!({"min_bytes": 64, "avg_bytes": 256, "max_bytes": 1024})
    });
    let fresh = sandbox.path("fresh-cache");
    refused(
        cairn_with(
            &sandbox,
            &fresh,
            None,
            &["backup", source.to_str().unwrap()],
        ),
        &["chunker"],
    );
    assert!(files_below(&sandbox.path("repo/data")).is_empty());
}

#[test]
fn changed_settings_of_a_none_repository_are_refused_by_the_cache() {
    let sandbox = Sandbox::new();
    let source = secret_source(&sandbox);
    let cache = sandbox.path("cache");
    let backup = ["backup", source.to_str().unwrap()];
    succeeds(cairn_with(
        &sandbox,
        &cache,
        None,
        &["init", "--encryption", "none"],
    ));
    succeeds(cairn_with(&sandbox, &cache, None, &backup));
    tamper_config(&sandbox.path("repo"), |config| {
        config["chunker"] = json!({
            "min_bytes": 1_048_576, "avg_bytes": 2_097_152, "max_bytes": 8_388_608
        })
    });
    let packs = files_below(&sandbox.path("repo/data")).len();
    refused(
        cairn_with(&sandbox, &cache, None, &backup),
        &["tamper", "chunker"],
    );
    assert_eq!(files_below(&sandbox.path("repo/data")).len(), packs);
}

/// Fails if a file or directory below `dir` (or `dir`) has any group or world bit other than
/// those `allowed`.
fn assert_private(dir: &Path, allowed: u32) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let mode = fs::symlink_metadata(&path).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o077 & !allowed,
            0,
            "{} has mode {:o}",
            path.display(),
            mode & 0o7777
        );
        if path.is_dir() {
            for entry in fs::read_dir(&path).unwrap() {
                stack.push(entry.unwrap().path());
            }
        }
    }
}

#[test]
fn repository_and_cache_are_private() {
    let sandbox = Sandbox::new();
    let source = secret_source(&sandbox);
    let cache = sandbox.path("cache");
    let password = Some(PASSWORD);
    succeeds(cairn_with(&sandbox, &cache, password, &["init"]));
    succeeds(cairn_with(
        &sandbox,
        &cache,
        password,
        &["backup", source.to_str().unwrap()],
    ));
    assert_private(&sandbox.path("repo"), 0);
    // The cache's directories are private; sled's own files inside them keep its modes.
    let cache_mode = fs::metadata(&cache).unwrap().permissions().mode();
    assert_eq!(cache_mode & 0o077, 0, "cache root has mode {cache_mode:o}");
    for entry in fs::read_dir(&cache).unwrap() {
        let path = entry.unwrap().path();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{} has mode {mode:o}", path.display());
    }
}

#[test]
fn a_group_readable_repository_root_makes_group_readable_files_and_never_world_readable_ones() {
    let sandbox = Sandbox::new();
    let source = secret_source(&sandbox);
    let repo = sandbox.path("repo");
    fs::create_dir_all(&repo).unwrap();
    fs::set_permissions(&repo, fs::Permissions::from_mode(0o750)).unwrap();
    let cache = sandbox.path("cache");
    succeeds(cairn_with(&sandbox, &cache, Some(PASSWORD), &["init"]));
    succeeds(cairn_with(
        &sandbox,
        &cache,
        Some(PASSWORD),
        &["backup", source.to_str().unwrap()],
    ));
    assert_private(&repo, 0o050);
    let config_mode = fs::metadata(repo.join("config"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(config_mode & 0o777, 0o640);
}
