//! The differential test: random trees go through rounds of random changes (content, renames,
//! type changes, modes, owners, xattrs, times from before 1970 to after 2262, hard links,
//! sparse files, FIFOs and device nodes), and after each round
//! - `cairn sync SRC/ DST --delete` must leave DST exactly as the source, and as
//!   `rsync -aHAX --delete --numeric-ids SRC/ DST` leaves its own copy, as densely (neither
//!   makes holes unless asked), but for where rsync departs from the source by design (times
//!   compared in whole seconds; a hard link left in place);
//! - a backup restored into an empty directory, a checkpoint synced into the directory the
//!   previous round's checkpoint was synced into, and the source served by `cairn serve
//!   --source` synced into the directory it was synced into before, must equal the source;
//!   all compared attribute by attribute (`common::snapshot`).
//!
//! Every round's seed is printed, so a failure can be replayed.

mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A small deterministic generator (xorshift64*), so a seed replays a run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        (!items.is_empty()).then(|| &items[self.below(items.len())])
    }
}

/// Seconds since 1970 that every path must keep: before 1970, around now, after 2262 (where
/// nanoseconds since 1970 no longer fit 64 bits), up to ext4's limit in 2446.
const TIMES: [i64; 7] = [
    -2_147_483_000,
    -300_000_000,
    0,
    1_700_000_000,
    9_300_000_000,
    10_000_000_000,
    15_000_000_000,
];

const OWNERS: [u32; 3] = [0, 1000, 4242];

fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).unwrap()
}

fn chown(path: &Path, uid: u32, gid: u32) {
    // SAFETY: the path is a valid C string; lchown does not follow a symlink.
    assert_eq!(unsafe { libc::lchown(c_path(path).as_ptr(), uid, gid) }, 0);
}

fn mknod(path: &Path, kind: libc::mode_t, device: libc::dev_t) {
    // SAFETY: the path is a valid C string.
    let rc = unsafe { libc::mknod(c_path(path).as_ptr(), kind | 0o644, device) };
    assert_eq!(rc, 0, "mknod {}", path.display());
}

/// Every entry below `root` (not `root`), directories first in walk order.
fn entries(root: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let (mut dirs, mut others) = (Vec::new(), Vec::new());
    let mut all = entries_below(root);
    all.sort();
    for path in all {
        if fs::symlink_metadata(&path).unwrap().is_dir() {
            dirs.push(path);
        } else {
            others.push(path);
        }
    }
    (dirs, others)
}

fn remove_any(path: &Path) {
    if fs::symlink_metadata(path).unwrap().is_dir() {
        fs::remove_dir_all(path).unwrap();
    } else {
        fs::remove_file(path).unwrap();
    }
}

/// A regular file of random bytes; sometimes sparse (data islands in a hole), sometimes
/// dense with a long run of written zeros.
fn write_file(rng: &mut Rng, path: &Path) {
    let file = fs::File::create(path).unwrap();
    match rng.below(6) {
        0 => {
            let size = 4 << 20;
            file.set_len(size).unwrap();
            for _ in 0..3 {
                let at = rng.next() % (size - 70_000);
                file.write_all_at(&pseudo_random(1 + rng.below(60_000), rng.next()), at)
                    .unwrap();
            }
        }
        1 => {
            let mut bytes = pseudo_random(10_000, rng.next());
            bytes.extend(vec![0; 300_000]);
            bytes.extend(pseudo_random(10_000, rng.next()));
            file.write_all_at(&bytes, 0).unwrap();
        }
        _ => {
            let size = rng.below(120_000);
            file.write_all_at(&pseudo_random(size, rng.next()), 0)
                .unwrap();
        }
    }
}

/// A new entry of a random kind at `path`.
fn create(rng: &mut Rng, path: &Path) {
    match rng.below(10) {
        0..=4 => write_file(rng, path),
        5 | 6 => fs::create_dir(path).unwrap(),
        7 => {
            let target = ["a", "../b", "/nonexistent/x", "sub/dir/c"][rng.below(4)];
            std::os::unix::fs::symlink(target, path).unwrap();
        }
        8 => mknod(path, libc::S_IFIFO, 0),
        _ => {
            let kind = [libc::S_IFCHR, libc::S_IFBLK][rng.below(2)];
            mknod(
                path,
                kind,
                libc::makedev(1 + rng.below(8) as u32, rng.below(9) as u32),
            );
        }
    }
}

/// Gives `path` a random mode, owner, xattrs and mtime (what applies to its kind).
fn touch_metadata(rng: &mut Rng, path: &Path) {
    let metadata = fs::symlink_metadata(path).unwrap();
    let kind = metadata.file_type();
    if !kind.is_symlink() {
        if rng.chance(40) {
            let mode = [0o644, 0o600, 0o755, 0o4755, 0o2750, 0o1777, 0o444][rng.below(7)];
            // A directory keeps the owner's rwx so the test can still work in it.
            let mode = if kind.is_dir() { mode | 0o700 } else { mode };
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
        }
        if (kind.is_file() || kind.is_dir()) && rng.chance(40) {
            let name = format!("user.k{}", rng.below(3));
            match rng.below(3) {
                0 => {
                    let _ = xattr::remove(path, &name);
                }
                _ => xattr::set(path, &name, &pseudo_random(rng.below(40), rng.next())).unwrap(),
            }
        }
    }
    if rng.chance(30) {
        let (uid, gid) = (*rng.pick(&OWNERS).unwrap(), *rng.pick(&OWNERS).unwrap());
        chown(path, uid, gid);
        // chown clears setuid and setgid bits; give them back sometimes.
        if !kind.is_symlink() && rng.chance(50) {
            let mode = metadata.mode() & 0o7777;
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
        }
    }
    if rng.chance(60) {
        let seconds = *rng.pick(&TIMES).unwrap() + rng.below(1000) as i64;
        set_mtime(path, seconds, rng.below(1_000_000_000) as i64);
    }
}

/// One round of random changes below `root`.
fn change(rng: &mut Rng, root: &Path, round: usize) {
    let changes = if round == 0 { 60 } else { 25 };
    for step in 0..changes {
        let (dirs, others) = entries(root);
        let parent = if rng.chance(30) {
            root.to_path_buf()
        } else {
            rng.pick(&dirs)
                .cloned()
                .unwrap_or_else(|| root.to_path_buf())
        };
        let fresh = parent.join(format!("n{round}-{step}"));
        let everything: Vec<PathBuf> = dirs.iter().chain(&others).cloned().collect();
        let files: Vec<PathBuf> = others
            .iter()
            .filter(|p| fs::symlink_metadata(p).unwrap().is_file())
            .cloned()
            .collect();
        match rng.below(if round == 0 { 2 } else { 10 }) {
            0 | 1 => create(rng, &fresh),
            2 => {
                if let Some(file) = rng.pick(&files) {
                    // New content, possibly of the same size; a new mtime as an editor gives it.
                    let size = fs::metadata(file).unwrap().len() as usize;
                    let bytes = pseudo_random(size.min(200_000), rng.next());
                    fs::write(file, bytes).unwrap();
                    set_mtime(file, 1_800_000_000 + rng.below(1_000_000) as i64, 7);
                }
            }
            3 => {
                if let Some(path) = rng.pick(&everything)
                    && !fresh.starts_with(path)
                {
                    fs::rename(path, &fresh).unwrap();
                }
            }
            4 => {
                if let Some(path) = rng.pick(&everything) {
                    remove_any(path);
                }
            }
            5 => {
                // The same name, another kind.
                if let Some(path) = rng.pick(&everything) {
                    remove_any(path);
                    create(rng, path);
                }
            }
            6 => {
                if let Some(file) = rng.pick(&files) {
                    fs::hard_link(file, &fresh).unwrap();
                }
            }
            7 => {
                // A hard link broken: one name gets a copy of its own.
                if let Some(file) = files.iter().find(|f| fs::metadata(f).unwrap().nlink() > 1) {
                    let bytes = fs::read(file).unwrap();
                    fs::remove_file(file).unwrap();
                    fs::write(file, bytes).unwrap();
                }
            }
            _ => {
                if let Some(path) = rng.pick(&everything) {
                    touch_metadata(rng, path);
                }
            }
        }
    }
    // Metadata changes last, so the directories' own times are the chosen ones.
    let (dirs, others) = entries(root);
    for path in others.iter().chain(dirs.iter().rev()) {
        if rng.chance(if round == 0 { 100 } else { 15 }) {
            touch_metadata(rng, path);
        }
    }
}

/// Whether each regular file below `root` is dense (allocated over its whole size), by path.
fn density(root: &Path) -> Vec<(PathBuf, bool)> {
    let mut out: Vec<(PathBuf, bool)> = entries_below(root)
        .into_iter()
        .filter(|p| fs::symlink_metadata(p).unwrap().is_file())
        .map(|p| {
            let dense = allocated_bytes(&p) + 4096 >= fs::metadata(&p).unwrap().len();
            (p.strip_prefix(root).unwrap().to_path_buf(), dense)
        })
        .collect();
    out.sort();
    out
}

/// For each path, the paths hard-linked with it (itself included; empty when it is not).
fn link_groups(tree: &BTreeMap<PathBuf, Snapshot>) -> BTreeMap<&PathBuf, BTreeSet<&PathBuf>> {
    let mut members: BTreeMap<usize, BTreeSet<&PathBuf>> = BTreeMap::new();
    for (path, entry) in tree {
        if let Some(group) = entry.link_group {
            members.entry(group).or_default().insert(path);
        }
    }
    tree.iter()
        .map(|(path, entry)| {
            let group = entry.link_group.map(|g| members[&g].clone());
            (path, group.unwrap_or_default())
        })
        .collect()
}

fn rsync(source: &Path, destination: &Path) {
    let status = Command::new("rsync")
        .args(["-aHAX", "--delete", "--numeric-ids"])
        .arg(format!("{}/", source.display()))
        .arg(destination)
        .status()
        .expect("rsync is installed (scripts/test.sh installs it)");
    assert!(status.success(), "rsync failed");
}

fn text(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn sync_matches_rsync_and_restore_matches_the_source_through_rounds_of_random_changes() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the differential test sets owners and makes device nodes: run the suite as root"
    );
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    fs::create_dir(&source).unwrap();
    assert!(
        xattrs_supported(&source),
        "the test directory takes no xattrs"
    );
    let repo = sandbox.path("repo");
    sandbox.ok(&["init", "--repo", text(&repo), "--encryption", "none"]);
    let (by_rsync, by_cairn) = (sandbox.path("by-rsync"), sandbox.path("by-cairn"));
    let from_checkpoints = sandbox.path("from-checkpoints");
    let from_server = sandbox.path("from-server");
    let token = sandbox.path("token");
    let (_server, served) = Server::source(&sandbox, "tree", &source, &token);
    let seed = std::env::var("CAIRN_DIFFERENTIAL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_cafe_u64);
    let mut rng = Rng(seed);
    for round in 0..8 {
        println!("round {round} (seed {seed:#x})");
        change(&mut rng, &source, round);

        rsync(&source, &by_rsync);
        sandbox.ok(&[
            "sync",
            "--delete",
            &format!("{}/", text(&source)),
            text(&by_cairn),
        ]);
        // cairn's copy is the source, attribute by attribute. rsync's holds the same paths
        // and is the source too, but where rsync departs from it by design: it compares
        // times in whole seconds (an entry whose time moved below the second keeps its old
        // one, and a file replaced within the same second by one of the same size keeps its
        // old bytes: its quick check), and it leaves a hard link in place when the source's
        // names stopped being links but otherwise look unchanged.
        assert_same_tree(&source, &by_cairn);
        let (rsynced, synced) = (snapshot(&by_rsync), snapshot(&by_cairn));
        assert_eq!(
            rsynced.keys().collect::<Vec<_>>(),
            synced.keys().collect::<Vec<_>>(),
            "round {round}: rsync and cairn sync hold different paths"
        );
        // Entries compare without their link groups (numbered in walk order, so one link
        // rsync kept shifts every later number); the groups compare as sets of names.
        let plain = |entry: &Snapshot| Snapshot {
            mtime_ns: entry.mtime_ns - entry.mtime_ns.rem_euclid(1_000_000_000),
            link_group: None,
            ..entry.clone()
        };
        let (rsync_links, cairn_links) = (link_groups(&rsynced), link_groups(&synced));
        for (path, by_rsync) in &rsynced {
            let (by_rsync, by_cairn) = (plain(by_rsync), plain(&synced[path]));
            let quick_check_missed = by_rsync.content != by_cairn.content
                && Snapshot {
                    content: None,
                    ..by_rsync.clone()
                } == Snapshot {
                    content: None,
                    ..by_cairn.clone()
                };
            if quick_check_missed {
                println!("  rsync's quick check kept old bytes: {}", path.display());
                continue;
            }
            assert_eq!(
                by_rsync,
                by_cairn,
                "round {round}: {} differs between rsync and cairn sync",
                path.display()
            );
            let (linked_by_rsync, linked_by_cairn) = (&rsync_links[path], &cairn_links[path]);
            assert!(
                linked_by_cairn.is_subset(linked_by_rsync),
                "round {round}: cairn links {} with {linked_by_cairn:?}, rsync with {linked_by_rsync:?}",
                path.display()
            );
            if linked_by_cairn != linked_by_rsync {
                println!(
                    "  rsync kept a hard link the source no longer has: {}",
                    path.display()
                );
            }
        }
        assert_eq!(density(&by_rsync), density(&by_cairn), "round {round}");

        sandbox.ok(&["backup", "--repo", text(&repo), text(&source)]);
        let restored = sandbox.path(&format!("restored-{round}"));
        sandbox.ok(&[
            "restore",
            "--repo",
            text(&repo),
            "latest",
            "--target",
            text(&restored),
        ]);
        assert_same_tree(&source, &restored);
        fs::remove_dir_all(&restored).unwrap();

        sandbox.ok(&[
            "sync",
            "--delete",
            &format!("{}::latest", text(&repo)),
            text(&from_checkpoints),
        ]);
        assert_same_tree(&source, &from_checkpoints);

        sandbox.ok(&[
            "sync",
            "--delete",
            "--token-file",
            text(&token),
            &served,
            text(&from_server),
        ]);
        assert_same_tree(&source, &from_server);
    }
}
