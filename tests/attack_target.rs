//! Attack tests for writing into a target (restore, checkpoint → directory, directory →
//! directory): a local user who can write into the target swaps directories and files for
//! symlinks while cairn runs, and must never get anything written, or any metadata set,
//! outside the target (invariant 4).

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

fn text(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A source holding `sub/` (mode 0777) with `files` small files.
fn wide_source(sandbox: &Sandbox, files: usize) -> PathBuf {
    let source = sandbox.path("source");
    let sub = source.join("sub");
    fs::create_dir_all(&sub).unwrap();
    for i in 0..files {
        fs::write(sub.join(format!("f{i:05}")), pseudo_random(512, i as u64)).unwrap();
    }
    fs::set_permissions(&sub, fs::Permissions::from_mode(0o777)).unwrap();
    source
}

/// Runs `command` while a racer waits for `target/sub` to appear as a directory, renames it
/// away and puts a symlink to `outside` in its place; returns whether the racer swapped.
fn run_with_directory_swap(mut command: Command, target: &Path, outside: &Path) -> bool {
    let done = Arc::new(AtomicBool::new(false));
    let racer = {
        let (done, target, outside) = (done.clone(), target.to_owned(), outside.to_owned());
        std::thread::spawn(move || {
            let sub = target.join("sub");
            while !done.load(Ordering::Relaxed) {
                if fs::symlink_metadata(&sub).is_ok_and(|m| m.is_dir()) {
                    fs::rename(&sub, target.join("moved")).unwrap();
                    std::os::unix::fs::symlink(&outside, &sub).unwrap();
                    return true;
                }
                std::hint::spin_loop();
            }
            false
        })
    };
    let output = command.output().unwrap();
    done.store(true, Ordering::Relaxed);
    let swapped = racer.join().unwrap();
    assert_ne!(output.status.code(), Some(101), "{}", stderr(&output));
    swapped
}

fn assert_outside_untouched(outside: &Path, writer: &str) {
    let written: Vec<_> = fs::read_dir(outside).unwrap().collect();
    assert!(
        written.is_empty(),
        "{writer}: {} entries were written outside the target",
        written.len()
    );
    let mode = fs::metadata(outside).unwrap().mode() & 0o7777;
    assert_eq!(
        mode, 0o750,
        "{writer}: the outside directory's mode was changed"
    );
}

#[test]
fn a_directory_swapped_for_a_symlink_mid_run_gets_nothing_written_outside() {
    let sandbox = Sandbox::new();
    let source = wide_source(&sandbox, 3000);
    let repo = sandbox.plain_repo_with_backup_of(&source);
    let outside = sandbox.path("outside");
    fs::create_dir(&outside).unwrap();
    fs::set_permissions(&outside, fs::Permissions::from_mode(0o750)).unwrap();
    let checkpoint = format!("{}::latest", text(&repo));
    for round in 0..3 {
        let writers: [(&str, Vec<String>); 3] = [
            (
                "restore",
                vec![
                    "restore".into(),
                    "--repo".into(),
                    text(&repo).into(),
                    "latest".into(),
                    "--target".into(),
                ],
            ),
            ("checkpoint sync", vec!["sync".into(), checkpoint.clone()]),
            (
                "directory sync",
                vec!["sync".into(), format!("{}/", text(&source))],
            ),
        ];
        for (writer, args) in writers {
            let target = sandbox.path(&format!("target-{round}-{}", writer.replace(' ', "-")));
            let mut command = sandbox.cairn();
            command.args(&args).arg(&target);
            let swapped = run_with_directory_swap(command, &target, &outside);
            assert!(swapped, "{writer}: the racer never saw target/sub");
            assert_outside_untouched(&outside, writer);
        }
    }
}

#[test]
fn metadata_is_never_set_through_a_symlink_put_in_place_of_a_compared_file() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    fs::create_dir(&source).unwrap();
    let content = pseudo_random(48 << 20, 7);
    fs::write(source.join("file"), &content).unwrap();
    fs::set_permissions(source.join("file"), fs::Permissions::from_mode(0o666)).unwrap();
    let outside = sandbox.path("secret");
    fs::write(&outside, b"not yours").unwrap();
    fs::set_permissions(&outside, fs::Permissions::from_mode(0o600)).unwrap();
    // The racer must catch the sync mid-comparison; on a loaded machine it may miss a round,
    // which proves nothing either way, so rounds go on until five were raced (at most 20).
    let (mut raced, mut round) = (0, 0);
    while raced < 5 && round < 20 {
        round += 1;
        // The target holds the same bytes with another mtime: the sync compares the content.
        let target = sandbox.path(&format!("target-{round}"));
        fs::create_dir(&target).unwrap();
        fs::write(target.join("file"), &content).unwrap();
        set_mtime(&target.join("file"), 1_000_000 + round, 0);
        let done = Arc::new(AtomicBool::new(false));
        let racer = {
            let (done, target, outside) = (done.clone(), target.clone(), outside.clone());
            std::thread::spawn(move || {
                // The sync's temporary file appears once the old file is open: swap then.
                while !done.load(Ordering::Relaxed) {
                    let started = fs::read_dir(&target)
                        .unwrap()
                        .flatten()
                        .any(|e| e.file_name().to_string_lossy().starts_with(".cairn-sync-"));
                    if started {
                        fs::rename(target.join("file"), target.join("moved")).unwrap();
                        std::os::unix::fs::symlink(&outside, target.join("file")).unwrap();
                        return true;
                    }
                }
                false
            })
        };
        let output = sandbox
            .cairn()
            .args(["sync", &format!("{}/", text(&source)), text(&target)])
            .output()
            .unwrap();
        done.store(true, Ordering::Relaxed);
        let swapped = racer.join().unwrap();
        assert_ne!(output.status.code(), Some(101), "{}", stderr(&output));
        raced += u32::from(swapped);
        let mode = fs::metadata(&outside).unwrap().mode() & 0o7777;
        assert_eq!(
            mode, 0o600,
            "round {round}: the outside file's mode was changed"
        );
        assert_eq!(fs::read(&outside).unwrap(), b"not yours");
    }
    assert_eq!(
        raced, 5,
        "the racer caught the sync in only {raced} of {round} rounds"
    );
}

#[test]
fn a_target_inside_the_source_through_a_symlink_is_refused() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("src");
    fs::create_dir(&source).unwrap();
    fs::write(source.join("file"), b"data").unwrap();
    std::os::unix::fs::symlink(&source, sandbox.path("lnk")).unwrap();
    for target in ["lnk/inner/copy2", "lnk/x/../inner/copy2", "lnk"] {
        let output = sandbox.run(&["sync", text(&source), text(&sandbox.path(target))]);
        assert_fails(&output, 1, "overlap");
    }
    let left: Vec<_> = fs::read_dir(&source)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, ["file"], "the refused sync wrote into the source");
}

/// A target where `file` is a hard link to `outside` (mode 0600), and a source `file` with the
/// same bytes, mode 0666 and the given mtime.
fn hard_link_setup(sandbox: &Sandbox, round: &str, mtime: i64) -> (PathBuf, PathBuf, PathBuf) {
    let content = b"the same bytes as a file outside".to_vec();
    let outside = sandbox.path(&format!("outside-{round}"));
    fs::write(&outside, &content).unwrap();
    fs::set_permissions(&outside, fs::Permissions::from_mode(0o600)).unwrap();
    set_mtime(&outside, 1_000_000, 0);
    let source = sandbox.path(&format!("source-{round}"));
    fs::create_dir(&source).unwrap();
    fs::write(source.join("file"), &content).unwrap();
    fs::set_permissions(source.join("file"), fs::Permissions::from_mode(0o666)).unwrap();
    set_mtime(&source.join("file"), mtime, 0);
    let target = sandbox.path(&format!("target-{round}"));
    fs::create_dir(&target).unwrap();
    fs::hard_link(&outside, target.join("file")).unwrap();
    (source, target, outside)
}

#[test]
fn a_hard_link_planted_in_the_target_never_carries_metadata_outside() {
    let sandbox = Sandbox::new();
    // Same size and mtime: rsync's quick check says "same"; only the mode differs. Then
    // another mtime: the content is compared and found the same.
    for (round, mtime) in [("quick-check", 1_000_000), ("compared", 2_000_000)] {
        let (source, target, outside) = hard_link_setup(&sandbox, round, mtime);
        let output = sandbox.run(&["sync", &format!("{}/", text(&source)), text(&target)]);
        assert!(output.status.success(), "{round}: {}", stderr(&output));
        let outside_meta = fs::metadata(&outside).unwrap();
        assert_eq!(
            outside_meta.mode() & 0o7777,
            0o600,
            "{round}: the mode of a file outside the target was changed"
        );
        assert_eq!(
            outside_meta.mtime(),
            1_000_000,
            "{round}: its mtime was changed"
        );
        let written = fs::metadata(target.join("file")).unwrap();
        assert_ne!(
            written.ino(),
            outside_meta.ino(),
            "{round}: still linked outside"
        );
        assert_eq!(written.mode() & 0o7777, 0o666, "{round}");
        assert_eq!(written.mtime(), mtime, "{round}");
    }
}

#[test]
fn another_users_file_in_the_target_is_replaced_not_made_the_entrys() {
    if !running_as_root() {
        eprintln!("needs root to make a file of another user; run as root (CI does)");
        return;
    }
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    fs::create_dir(&source).unwrap();
    fs::write(source.join("tool"), b"#!/bin/sh\necho root tool\n").unwrap();
    fs::set_permissions(source.join("tool"), fs::Permissions::from_mode(0o4755)).unwrap();
    set_mtime(&source.join("tool"), 1_500_000, 0);
    // Another user plants a file of their own with the entry's size and mtime.
    let target = sandbox.path("target");
    fs::create_dir(&target).unwrap();
    fs::write(target.join("tool"), b"#!/bin/sh\necho evil tool\n").unwrap();
    set_mtime(&target.join("tool"), 1_500_000, 0);
    std::os::unix::fs::chown(target.join("tool"), Some(65534), Some(65534)).unwrap();
    let planted = fs::metadata(target.join("tool")).unwrap().ino();
    sandbox.ok(&["sync", &format!("{}/", text(&source)), text(&target)]);
    let now = fs::metadata(target.join("tool")).unwrap();
    assert_ne!(
        now.ino(),
        planted,
        "the other user's file was made the setuid entry"
    );
    assert_eq!(
        fs::read(target.join("tool")).unwrap(),
        fs::read(source.join("tool")).unwrap()
    );
    assert_eq!((now.uid(), now.mode() & 0o7777), (0, 0o4755));
}
