//! The mounted filesystem, for real: `cairn mount` runs as a child process over FUSE and the
//! tests read it with ordinary file calls, `cp -a` and `tar`.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn repo_with_two_checkpoints(sandbox: &Sandbox) -> (PathBuf, PathBuf) {
    let source = sandbox.path("source");
    make_tree(&source);
    fs::write(source.join("changing.txt"), b"first version\n").unwrap();
    let repo = sandbox.path("repo");
    let repo_arg = repo.to_str().unwrap();
    sandbox.ok(&["init", "--repo", repo_arg, "--encryption", "none"]);
    sandbox.ok(&[
        "backup",
        "--repo",
        repo_arg,
        "--tag",
        "first",
        source.to_str().unwrap(),
    ]);
    // Checkpoint names have one-second resolution; keep the two apart so they sort by time.
    std::thread::sleep(Duration::from_millis(1100));
    fs::write(source.join("changing.txt"), b"second version, longer\n").unwrap();
    sandbox.ok(&["backup", "--repo", repo_arg, source.to_str().unwrap()]);
    (repo, source)
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn layout_metadata_and_cp_equal_restore() {
    let steps = Steps::new();
    let sandbox = Sandbox::new();
    let (repo, source) = repo_with_two_checkpoints(&sandbox);
    let mount = Mounted::start(&sandbox, &repo);

    assert_eq!(
        names(&mount.point),
        ["checkpoints", "history", "latest", "tags"]
    );
    let checkpoints = names(&mount.path("checkpoints"));
    assert_eq!(checkpoints.len(), 2);
    assert!(checkpoints[0] < checkpoints[1], "names sort in time order");
    for name in &checkpoints {
        let (time, short) = name.split_once('_').unwrap();
        assert_eq!(time.len(), "2026-11-23T163000Z".len(), "{name}");
        assert_eq!(short.len(), 8, "{name}");
    }
    let latest = fs::read_link(mount.path("latest")).unwrap();
    assert_eq!(latest, Path::new("checkpoints").join(&checkpoints[1]));
    assert_eq!(names(&mount.path("tags")), ["first"]);
    let tagged = fs::read_link(mount.path("tags/first").join(&checkpoints[0])).unwrap();
    assert_eq!(tagged, Path::new("../../checkpoints").join(&checkpoints[0]));
    assert!(
        mount
            .path("tags/first")
            .join(&checkpoints[0])
            .join("hello.txt")
            .exists()
    );

    steps.enter("cp -a out of the mount equals restore");
    // `cp -a` out of the mount gives the same tree as `cairn restore` (and as the source).
    let copied = sandbox.path("copied");
    let status = Command::new("cp")
        .arg("-a")
        .arg(mount.path("latest/."))
        .arg(&copied)
        .status()
        .unwrap();
    assert!(status.success());
    let restored = sandbox.path("restored");
    sandbox.ok(&[
        "restore",
        "--repo",
        repo.to_str().unwrap(),
        "latest",
        "--target",
        restored.to_str().unwrap(),
    ]);
    let without_root = |tree: &Path| {
        let mut s = snapshot(tree);
        s.remove(Path::new(""));
        s
    };
    let restored_entries = without_root(&restored);
    let copied_entries = without_root(&copied);
    assert_eq!(
        restored_entries.keys().collect::<Vec<_>>(),
        copied_entries.keys().collect::<Vec<_>>()
    );
    for (path, entry) in &restored_entries {
        assert_eq!(
            Some(entry),
            copied_entries.get(path),
            "{} differs between cp -a and restore",
            path.display()
        );
    }
    assert_same_tree(&source, &restored);

    steps.enter("metadata as stat sees it through the mount");
    // Metadata as stat sees it through the mount.
    use std::os::unix::fs::MetadataExt;
    let through = fs::symlink_metadata(mount.path("latest/hello.txt")).unwrap();
    let original = fs::symlink_metadata(source.join("hello.txt")).unwrap();
    assert_eq!(
        (through.mode(), through.uid(), through.gid(), through.size()),
        (
            original.mode(),
            original.uid(),
            original.gid(),
            original.size()
        )
    );
    assert_eq!(
        (through.mtime(), through.mtime_nsec()),
        (original.mtime(), original.mtime_nsec())
    );
    assert_eq!(through.nlink(), 2, "hello.txt has a hard link");
    let linked = fs::symlink_metadata(mount.path("latest/dir/hardlink")).unwrap();
    assert_eq!(linked.ino(), through.ino(), "hard links share an inode");
    assert_eq!(
        fs::read_link(mount.path("latest/dangling")).unwrap(),
        Path::new("/nonexistent/target")
    );
    if xattrs_supported(&sandbox.path("")) {
        assert_eq!(
            xattr::get(mount.path("latest/hello.txt"), "user.color")
                .unwrap()
                .as_deref(),
            Some(&b"blue"[..])
        );
        let listed: Vec<_> = xattr::list(mount.path("latest/hello.txt"))
            .unwrap()
            .collect();
        assert_eq!(listed, ["user.color"]);
    }
}

#[test]
fn reads_at_any_offset_return_the_right_bytes() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    fs::create_dir_all(&source).unwrap();
    // Several chunks (default chunker: 512 KiB..8 MiB) and a sparse file.
    let data = pseudo_random(9_000_000, 42);
    fs::write(source.join("big"), &data).unwrap();
    let sparse = fs::File::create(source.join("sparse")).unwrap();
    sparse.set_len(3 << 20).unwrap();
    sparse.write_all_at(b"island", 2 << 20).unwrap();
    drop(sparse);
    let repo = sandbox.plain_repo_with_backup_of(&source);
    let mount = Mounted::start(&sandbox, &repo);

    let file = fs::File::open(mount.path("latest/big")).unwrap();
    let mut state = 7u64;
    for _ in 0..200 {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let offset = (state >> 11) as usize % data.len();
        let len = ((state >> 40) as usize % 3_000_000).min(data.len() - offset);
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset as u64).unwrap();
        assert!(
            buf == data[offset..offset + len],
            "bytes differ at {offset}+{len}"
        );
    }
    assert_eq!(fs::read(mount.path("latest/big")).unwrap(), data);
    let sparse = fs::read(mount.path("latest/sparse")).unwrap();
    assert_eq!(sparse.len(), 3 << 20);
    assert_eq!(&sparse[2 << 20..(2 << 20) + 6], b"island");
    assert!(sparse[..2 << 20].iter().all(|&b| b == 0));
}

/// A walker reading a wide directory file by file gets most files from pages the mount
/// pushed ahead of it into the kernel's cache; every byte must still be right, for small
/// files and for files of several chunks, in listing order and out of it.
#[test]
fn walking_a_wide_directory_reads_every_file_right() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    fs::create_dir_all(source.join("wide")).unwrap();
    for i in 0..300u64 {
        let len = match i % 50 {
            7 => 2_500_000,
            _ => (i as usize * 997) % 40_000,
        };
        fs::write(source.join(format!("wide/f{i:03}")), pseudo_random(len, i)).unwrap();
    }
    let repo = sandbox.plain_repo_with_backup_of(&source);
    let mount = Mounted::start(&sandbox, &repo);

    let mut names = names(&mount.path("latest/wide"));
    // One file out of order first, then the rest in listing order, twice.
    names.rotate_left(150);
    for _ in 0..2 {
        for name in &names {
            let read = fs::read(mount.path(&format!("latest/wide/{name}"))).unwrap();
            let expected = fs::read(source.join("wide").join(name)).unwrap();
            assert!(read == expected, "{name} differs");
        }
    }
}

#[test]
fn every_write_fails_with_erofs() {
    let sandbox = Sandbox::new();
    let (repo, _) = repo_with_two_checkpoints(&sandbox);
    let mount = Mounted::start(&sandbox, &repo);
    let erofs = |result: std::io::Result<()>, what: &str| {
        let error = result.expect_err(what);
        assert_eq!(error.raw_os_error(), Some(libc::EROFS), "{what}: {error}");
    };
    use std::os::unix::fs::PermissionsExt;
    erofs(fs::write(mount.path("latest/new-file"), b"x"), "create");
    erofs(
        fs::OpenOptions::new()
            .write(true)
            .open(mount.path("latest/hello.txt"))
            .map(drop),
        "open for writing",
    );
    erofs(fs::create_dir(mount.path("latest/new-dir")), "mkdir");
    erofs(fs::remove_file(mount.path("latest/hello.txt")), "unlink");
    erofs(
        fs::rename(mount.path("latest/hello.txt"), mount.path("latest/renamed")),
        "rename",
    );
    erofs(
        fs::set_permissions(
            mount.path("latest/hello.txt"),
            fs::Permissions::from_mode(0o777),
        ),
        "chmod",
    );
    erofs(
        fs::create_dir(mount.path("checkpoints/new")),
        "mkdir in checkpoints/",
    );
}

#[test]
fn history_collapses_versions_and_new_checkpoints_appear() {
    let sandbox = Sandbox::new();
    let (repo, source) = repo_with_two_checkpoints(&sandbox);
    let mount = Mounted::start(&sandbox, &repo);
    let checkpoints = names(&mount.path("checkpoints"));

    // Unchanged in both checkpoints: one version. Changed: two, oldest first, with .txt kept.
    let hello = names(&mount.path("history/hello.txt"));
    assert_eq!(hello, [format!("{}.txt", checkpoints[0])]);
    let changing = names(&mount.path("history/changing.txt"));
    assert_eq!(
        changing,
        [
            format!("{}.txt", checkpoints[0]),
            format!("{}.txt", checkpoints[1])
        ]
    );
    let first = fs::read(mount.path("history/changing.txt").join(&changing[0])).unwrap();
    let second = fs::read(mount.path("history/changing.txt").join(&changing[1])).unwrap();
    assert_eq!(
        (first.as_slice(), second.as_slice()),
        (&b"first version\n"[..], &b"second version, longer\n"[..])
    );
    assert!(mount.path("history/dir/nested/deeper/small").is_dir());

    // A checkpoint made while mounted shows up within seconds, in history too, and `latest`
    // (already looked up once) moves to it.
    let before = fs::read_link(mount.path("latest")).unwrap();
    assert_eq!(before, Path::new("checkpoints").join(&checkpoints[1]));
    std::thread::sleep(Duration::from_millis(1100));
    fs::write(source.join("changing.txt"), b"third\n").unwrap();
    sandbox.ok(&[
        "backup",
        "--repo",
        repo.to_str().unwrap(),
        source.to_str().unwrap(),
    ]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while names(&mount.path("checkpoints")).len() < 3 {
        assert!(
            Instant::now() < deadline,
            "the new checkpoint did not appear"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let newest = names(&mount.path("checkpoints")).pop().unwrap();
    assert_eq!(
        fs::read_link(mount.path("latest")).unwrap(),
        Path::new("checkpoints").join(&newest)
    );
    while names(&mount.path("history/changing.txt")).len() < 3 {
        assert!(
            Instant::now() < deadline,
            "history did not pick up the new checkpoint"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // `cairn history` says the same.
    let output = sandbox.ok(&[
        "history",
        "--repo",
        repo.to_str().unwrap(),
        "changing.txt",
        "--json",
    ]);
    let versions: serde_json::Value = serde_json::from_str(&output).unwrap();
    assert_eq!(
        json_strings(&versions, "change"),
        ["added", "changed", "changed"]
    );

    let status = mount.terminate();
    assert!(
        status.success(),
        "SIGTERM should unmount cleanly and exit 0: {status}"
    );
    assert!(
        names(&sandbox.path("mnt")).is_empty(),
        "still mounted after SIGTERM"
    );
}

#[test]
fn a_corrupt_pack_gives_eio_not_wrong_bytes() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    fs::create_dir_all(&source).unwrap();
    fs::write(source.join("data.bin"), pseudo_random(1_000_000, 5)).unwrap();
    let repo = sandbox.plain_repo_with_backup_of(&source);
    let pack = file_contents(&repo.join("data"))
        .into_keys()
        .next()
        .unwrap();
    let mut bytes = fs::read(&pack).unwrap();
    bytes[100] ^= 1;
    fs::write(&pack, bytes).unwrap();
    let mount = Mounted::start(&sandbox, &repo);
    let error = fs::read(mount.path("latest/data.bin")).unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::EIO), "{error}");
}

#[test]
fn bad_mountpoints_get_clear_errors() {
    let sandbox = Sandbox::new();
    let repo = sandbox.path("repo");
    sandbox.ok(&[
        "init",
        "--repo",
        repo.to_str().unwrap(),
        "--encryption",
        "none",
    ]);
    let missing = sandbox.run(&[
        "mount",
        "--repo",
        repo.to_str().unwrap(),
        sandbox.path("nope").to_str().unwrap(),
    ]);
    assert_fails(&missing, 1, "does not exist");
    let full = sandbox.path("full");
    fs::create_dir_all(&full).unwrap();
    fs::write(full.join("file"), b"x").unwrap();
    let output = sandbox.run(&[
        "mount",
        "--repo",
        repo.to_str().unwrap(),
        full.to_str().unwrap(),
    ]);
    assert_fails(&output, 1, "not empty");
}

#[test]
fn times_before_1970_and_after_2262_show_through_the_mount() {
    use std::os::unix::fs::MetadataExt;
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    make_tree_with_far_times(&source);
    let repo = sandbox.plain_repo_with_backup_of(&source);
    let mount = Mounted::start(&sandbox, &repo);
    for name in ["future.txt", "past.txt", "link", "old", "old/inside.txt"] {
        let expected = fs::symlink_metadata(source.join(name)).unwrap();
        let shown = fs::symlink_metadata(mount.path("latest").join(name)).unwrap();
        assert_eq!(
            (shown.mtime(), shown.mtime_nsec()),
            (expected.mtime(), expected.mtime_nsec()),
            "{name}"
        );
    }
    let copied = sandbox.path("copied");
    let status = Command::new("cp")
        .arg("-a")
        .arg(mount.path("latest/."))
        .arg(&copied)
        .status()
        .unwrap();
    assert!(status.success());
    assert_same_tree(&source, &copied);
}

/// `SEEK_DATA` or `SEEK_HOLE` (`whence`) from `offset` in `file`: the offset, or the errno.
fn seek(file: &fs::File, offset: i64, whence: i32) -> Result<i64, i32> {
    use std::os::fd::AsRawFd;
    // SAFETY: lseek on an open descriptor has no other preconditions.
    let found = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    if found < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    } else {
        Ok(found)
    }
}

#[test]
fn sparse_files_keep_their_holes_through_the_mount() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    fs::create_dir_all(&source).unwrap();
    // 256 MiB with three islands of data, and a dense file.
    let sparse = fs::File::create(source.join("sparse.img")).unwrap();
    sparse.set_len(256 << 20).unwrap();
    for (seed, offset) in [(1, 16 << 20), (2, 100 << 20), (3, 200 << 20)] {
        sparse
            .write_all_at(&pseudo_random(256 << 10, seed), offset)
            .unwrap();
    }
    drop(sparse);
    fs::write(source.join("dense.bin"), pseudo_random(3 << 20, 4)).unwrap();
    let source_allocated = allocated_bytes(&source.join("sparse.img"));
    assert!(source_allocated < 2 << 20, "this filesystem keeps holes");
    let repo = sandbox.plain_repo_with_backup_of(&source);
    let mount = Mounted::start(&sandbox, &repo);
    let latest = mount.path("latest");

    // The chunks holding an island hold zeros around it too: at most two maximum chunks
    // (8 MiB each) per island.
    let near_source = source_allocated + 3 * 2 * (8 << 20);
    let shown = allocated_bytes(&latest.join("sparse.img"));
    assert!(shown <= near_source, "stat shows {shown} bytes allocated");
    assert_eq!(allocated_bytes(&latest.join("dense.bin")), 3 << 20);

    let dense = fs::File::open(latest.join("dense.bin")).unwrap();
    assert_eq!(seek(&dense, 0, libc::SEEK_HOLE), Ok(3 << 20));
    assert_eq!(seek(&dense, 1000, libc::SEEK_DATA), Ok(1000));
    assert_eq!(seek(&dense, 3 << 20, libc::SEEK_DATA), Err(libc::ENXIO));
    // Walking the file with SEEK_DATA and SEEK_HOLE finds one run of data around each island.
    let through = fs::File::open(latest.join("sparse.img")).unwrap();
    let mut data_runs = Vec::new();
    let mut at = 0;
    while let Ok(start) = seek(&through, at, libc::SEEK_DATA) {
        at = seek(&through, start, libc::SEEK_HOLE).unwrap();
        data_runs.push(start..at);
    }
    assert_eq!(data_runs.len(), 3, "{data_runs:?}");
    for (run, island) in data_runs.iter().zip([16 << 20, 100 << 20, 200 << 20]) {
        assert!(
            run.start <= island && island + (256 << 10) <= run.end,
            "{run:?}"
        );
    }
    assert!(
        at < 256 << 20,
        "the trailing zeros are a hole: {data_runs:?}"
    );
    assert_eq!(seek(&through, 256 << 20, libc::SEEK_HOLE), Err(libc::ENXIO));

    let original = fs::read(source.join("sparse.img")).unwrap();
    let copied = sandbox.path("copied");
    let status = Command::new("cp")
        .arg("-a")
        .arg(mount.path("latest/."))
        .arg(&copied)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(fs::read(copied.join("sparse.img")).unwrap(), original);
    let copied_allocated = allocated_bytes(&copied.join("sparse.img"));
    assert!(
        copied_allocated <= near_source,
        "cp wrote {copied_allocated} bytes"
    );

    let archive = sandbox.path("sparse.tar");
    let status = Command::new("tar")
        .arg("--sparse")
        .arg("-cf")
        .arg(&archive)
        .arg("-C")
        .arg(&latest)
        .arg("sparse.img")
        .status()
        .unwrap();
    assert!(status.success());
    let extracted = sandbox.path("extracted");
    fs::create_dir_all(&extracted).unwrap();
    let status = Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&extracted)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(fs::read(extracted.join("sparse.img")).unwrap(), original);
    let extracted_allocated = allocated_bytes(&extracted.join("sparse.img"));
    assert!(
        extracted_allocated <= near_source,
        "tar wrote {extracted_allocated} bytes"
    );
}
