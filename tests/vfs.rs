//! The browsable view of a repository without FUSE: a `Vfs` built over a real repository,
//! walked, read and refreshed through its own calls, and compared with the trees backed up.

mod common;

use cairn::backup::{self, BackupOptions, Progress};
use cairn::repo::backend::LocalBackend;
use cairn::repo::config::EncryptionMode;
use cairn::repo::{InitOptions, Repository, Secret};
use cairn::vfs::{Attr, FileKind, Ino, ListedEntry, ROOT_INO, Vfs};
use common::*;
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// An unencrypted repository at `<sandbox>/repo`, opened with its cache beside it.
fn repository(sandbox: &Sandbox) -> Arc<Repository> {
    let backend = Arc::new(LocalBackend::new(sandbox.path("repo")));
    Repository::init(backend.as_ref(), InitOptions::new(EncryptionMode::None)).unwrap();
    let cache = sandbox.path("cache");
    Arc::new(Repository::open(backend, |_| Ok(Secret::None), &cache).unwrap())
}

fn back_up(repo: &Repository, source: &Path) {
    let options = BackupOptions::new(vec![source.to_owned()]);
    let outcome = backup::run(repo, &options, &Progress::default()).unwrap();
    assert!(outcome.errors.is_empty(), "{:?}", outcome.errors);
}

/// The whole content of file `ino`, read in pieces of `piece` bytes as a reader would.
fn read_all(vfs: &Vfs, ino: Ino, piece: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    loop {
        let got = vfs.read(ino, bytes.len() as u64, piece).unwrap();
        if got.is_empty() {
            return bytes;
        }
        bytes.extend_from_slice(&got);
    }
}

/// What `snapshot` says of a source tree, said of the mounted directory `dir` instead, walked
/// with `readdir`, `read`, `readlink` and `xattrs` alone.
fn vfs_snapshot(vfs: &Vfs, dir: &Attr) -> BTreeMap<PathBuf, Snapshot> {
    let mut out = BTreeMap::new();
    let mut all = vec![(PathBuf::new(), dir.clone())];
    let mut stack = vec![(PathBuf::new(), dir.ino)];
    while let Some((path, ino)) = stack.pop() {
        for ListedEntry { attr, name } in vfs.readdir(ino).unwrap() {
            let child = path.join(OsStr::from_bytes(&name));
            if attr.kind == FileKind::Directory {
                stack.push((child.clone(), attr.ino));
            }
            all.push((child, attr));
        }
    }
    all.sort_by(|a, b| a.0.cmp(&b.0));
    let (mut groups, mut order) = (HashMap::new(), 0);
    for (path, attr) in all {
        let is_file = attr.kind == FileKind::RegularFile;
        let link_group = (is_file && attr.nlink > 1).then(|| {
            order += 1;
            *groups.entry(attr.ino).or_insert(order)
        });
        let kind = match attr.kind {
            FileKind::Directory => "dir",
            FileKind::RegularFile => "file",
            FileKind::Symlink => "symlink",
            FileKind::NamedPipe => "fifo",
            FileKind::CharDevice => "chardev",
            FileKind::BlockDevice => "other",
        };
        let content = is_file.then(|| {
            let bytes = read_all(vfs, attr.ino, 128 << 10);
            assert_eq!(bytes.len() as u64, attr.size, "{}", path.display());
            blake3::hash(&bytes).to_hex().to_string()
        });
        let target = (attr.kind == FileKind::Symlink)
            .then(|| PathBuf::from(OsStr::from_bytes(&vfs.readlink(attr.ino).unwrap())));
        let xattrs = vfs
            .xattrs(attr.ino)
            .unwrap()
            .into_iter()
            .map(|x| (x.name, x.value))
            .collect();
        let snapshot = Snapshot {
            kind,
            mode: u32::from(attr.perm),
            uid: attr.uid,
            gid: attr.gid,
            mtime_ns: attr.mtime_ns,
            size: if is_file { attr.size } else { attr.rdev },
            content,
            target,
            xattrs,
            link_group,
        };
        out.insert(path, snapshot);
    }
    out
}

/// The checkpoint directories under `/checkpoints`, by name with the one `latest` names
/// last (checkpoints made within one second may sort either way by name).
fn checkpoint_dirs(vfs: &Vfs) -> Vec<ListedEntry> {
    let checkpoints = vfs.lookup(ROOT_INO, b"checkpoints").unwrap();
    let latest = vfs.lookup(ROOT_INO, b"latest").unwrap();
    let newest = vfs.readlink(latest.ino).unwrap()[b"checkpoints/".len()..].to_vec();
    let mut listed = vfs.readdir(checkpoints.ino).unwrap();
    listed.sort_by_key(|entry| (entry.name == newest, entry.name.clone()));
    listed
}

#[test]
fn every_checkpoint_walks_and_reads_back_as_its_source_was() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    make_tree(&source);
    let repo = repository(&sandbox);
    back_up(&repo, &source);
    let first = snapshot(&source);
    std::fs::write(source.join("hello.txt"), b"changed\n").unwrap();
    std::fs::remove_dir_all(source.join("dir/nested/deeper")).unwrap();
    back_up(&repo, &source);
    let second = snapshot(&source);

    let vfs = Vfs::new(repo, Default::default()).unwrap();
    let dirs = checkpoint_dirs(&vfs);
    assert_eq!(dirs.len(), 2);
    assert_eq!(
        vfs_snapshot(&vfs, &dirs[0].attr),
        first,
        "the first checkpoint"
    );
    assert_eq!(
        vfs_snapshot(&vfs, &dirs[1].attr),
        second,
        "the second checkpoint"
    );
    // `checkpoint_dirs` puts the one `latest` names last: it holds the second tree.
    assert_eq!(
        vfs.lookup(ROOT_INO, b"latest").unwrap().kind,
        FileKind::Symlink
    );
}

#[test]
fn a_files_history_lists_each_version_once_with_its_bytes() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    std::fs::create_dir_all(source.join("notes")).unwrap();
    let repo = repository(&sandbox);
    let versions = [
        &b"first\n"[..],
        b"second, longer\n",
        b"second, longer\n",
        b"3\n",
    ];
    for (i, version) in versions.iter().enumerate() {
        std::fs::write(source.join("notes/todo.txt"), version).unwrap();
        // A distinct mtime per round, so an unchanged round is seen as unchanged.
        set_mtime(&source.join("notes/todo.txt"), 1_700_000_000 + i as i64, 0);
        back_up(&repo, &source);
    }
    let vfs = Vfs::new(repo, Default::default()).unwrap();
    let history = vfs.lookup(ROOT_INO, b"history").unwrap();
    let mut dir = history;
    for name in [b"notes".as_slice(), b"todo.txt"] {
        dir = vfs.lookup(dir.ino, name).unwrap();
        assert_eq!(
            dir.kind,
            FileKind::Directory,
            "{}",
            String::from_utf8_lossy(name)
        );
    }
    // Oldest first by the files' own mtimes (checkpoints made within one second may sort
    // either way by name).
    let mut listed = vfs.readdir(dir.ino).unwrap();
    listed.sort_by_key(|entry| entry.attr.mtime_ns);
    let read: Vec<Vec<u8>> = listed
        .iter()
        .map(|entry| read_all(&vfs, entry.attr.ino, 4))
        .collect();
    // The third round changed only the mtime: each content a version of its own, but no
    // version listed twice for the same (content, mtime).
    assert!(
        (3..=4).contains(&read.len()),
        "{:?}",
        listed
            .iter()
            .map(|entry| String::from_utf8_lossy(&entry.name))
            .collect::<Vec<_>>()
    );
    assert_eq!(read.first().unwrap(), b"first\n");
    assert_eq!(read.last().unwrap(), b"3\n");
    for name in listed.iter().map(|entry| &entry.name) {
        assert!(name.ends_with(b".txt"), "{}", String::from_utf8_lossy(name));
    }
}

#[test]
fn a_checkpoint_made_while_the_view_lives_appears_once_the_catalogue_is_listed_again() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(source.join("a"), b"one").unwrap();
    let repo = repository(&sandbox);
    back_up(&repo, &source);
    let vfs = Vfs::new(repo.clone(), Default::default()).unwrap();
    assert_eq!(checkpoint_dirs(&vfs).len(), 1);

    // A backup runs beside the view (both hold the shared lock).
    std::fs::write(source.join("a"), b"two").unwrap();
    back_up(&repo, &source);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let dirs = loop {
        let dirs = checkpoint_dirs(&vfs);
        if dirs.len() == 2 || std::time::Instant::now() > deadline {
            break dirs;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(dirs.len(), 2, "the new checkpoint appears");
    let newest = vfs.lookup(dirs[1].attr.ino, b"a").unwrap();
    assert_eq!(read_all(&vfs, newest.ino, 1 << 20), b"two");
    let oldest = vfs.lookup(dirs[0].attr.ino, b"a").unwrap();
    assert_eq!(read_all(&vfs, oldest.ino, 1 << 20), b"one");
}
