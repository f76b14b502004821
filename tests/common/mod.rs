//! Helpers shared by the integration tests: running the real `cairn` binary (and restoring
//! with it), generating source trees with every file type, comparing two trees entry by
//! entry, and reading an unencrypted repository's pack headers.

#![allow(dead_code)]

pub mod backends;
pub mod garage;

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Every pack's entries in the unencrypted repository at `repo`, read from the packs
/// themselves.
pub fn pack_entries(repo: &Path) -> Vec<cairn::repo::pack::PackEntry> {
    let codec = cairn::repo::codec::Codec::new(None, 3);
    let mut entries = Vec::new();
    for dir in fs::read_dir(repo.join("data")).unwrap() {
        for pack in fs::read_dir(dir.unwrap().path()).unwrap() {
            let bytes = fs::read(pack.unwrap().path()).unwrap();
            let header = cairn::repo::pack::read_header(&bytes, &codec, &|| "pack".into());
            entries.extend(header.unwrap());
        }
    }
    entries
}

/// A scratch area with a cache directory every command shares.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    /// Environment variables every command gets (an object store's credentials).
    envs: Vec<(String, String)>,
}

impl Sandbox {
    pub fn new() -> Self {
        Sandbox {
            dir: tempfile::tempdir().unwrap(),
            envs: Vec::new(),
        }
    }

    /// The sandbox whose commands also get `envs`.
    pub fn with_envs(mut self, envs: Vec<(String, String)>) -> Self {
        self.envs.extend(envs);
        self
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `cairn` with the sandbox's cache and no inherited secrets.
    pub fn cairn(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_cairn"));
        command
            .env("CAIRN_CACHE_DIR", self.path("cache"))
            .env_remove("CAIRN_PASSWORD")
            .env_remove("CAIRN_PASSWORD_COMMAND")
            .env_remove("CAIRN_CONFIG")
            .env_remove("CAIRN_NEW_PASSWORD")
            .env_remove("CAIRN_REPO")
            .env_remove("CAIRN_KEY_FILE")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_REGION")
            .env_remove("AWS_DEFAULT_REGION")
            .envs(self.envs.iter().map(|(k, v)| (k, v)));
        command
    }

    /// Runs `cairn args...` and returns its output, whatever the exit code.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cairn().args(args).output().unwrap()
    }

    /// Runs `cairn args...`, asserting success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "cairn {args:?} failed: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }
}

impl Sandbox {
    /// `cairn` run as the unprivileged user 65534, for what only root may do (tests run as
    /// root): a copy of the binary in the sandbox, opened to everyone, with its own cache, and
    /// everything under `owned` given to that user.
    pub fn cairn_as_nobody(&self, owned: &[&Path]) -> Command {
        const NOBODY: u32 = 65534;
        fs::set_permissions(self.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let binary = self.path("cairn");
        fs::copy(env!("CARGO_BIN_EXE_cairn"), &binary).unwrap();
        fs::set_permissions(&binary, fs::Permissions::from_mode(0o755)).unwrap();
        let cache = self.path("cache-nobody");
        fs::create_dir_all(&cache).unwrap();
        let mut pending: Vec<PathBuf> = owned.iter().map(|p| p.to_path_buf()).collect();
        pending.push(cache.clone());
        while let Some(path) = pending.pop() {
            std::os::unix::fs::lchown(&path, Some(NOBODY), Some(NOBODY)).unwrap();
            if is_real_dir(&path) {
                pending.extend(fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            }
        }
        let mut command = Command::new("setpriv");
        command
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&binary)
            .env("CAIRN_CACHE_DIR", cache);
        command
    }

    /// Restores `checkpoint` of the unencrypted repository `repo` to `<sandbox>/<name>`.
    pub fn restore(&self, repo: &Path, checkpoint: &str, name: &str) -> PathBuf {
        let target = self.path(name);
        let (repo_arg, target_arg) = (repo.to_str().unwrap(), target.to_str().unwrap());
        self.ok(&[
            "restore", "--repo", repo_arg, checkpoint, "--target", target_arg,
        ]);
        target
    }

    /// Initialises an unencrypted repository at `<sandbox>/repo` and backs `source` up into it.
    pub fn plain_repo_with_backup_of(&self, source: &Path) -> PathBuf {
        let repo = self.path("repo");
        let repo_arg = repo.to_str().unwrap();
        self.ok(&["init", "--repo", repo_arg, "--encryption", "none"]);
        self.ok(&["backup", "--repo", repo_arg, source.to_str().unwrap()]);
        repo
    }
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts that a command exited with `code` and said `needle` on stderr.
pub fn assert_fails(output: &Output, code: i32, needle: &str) {
    assert_eq!(output.status.code(), Some(code), "{}", stderr(output));
    assert!(stderr(output).contains(needle), "{}", stderr(output));
}

/// The string `field` of every object in the JSON array `list`, as a `--json` listing prints.
pub fn json_strings<'a>(list: &'a serde_json::Value, field: &str) -> Vec<&'a str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|item| item[field].as_str().unwrap())
        .collect()
}

/// Deterministic pseudo-random bytes.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Makes directory `dir` holding `count` files `f0`, `f1`, … of `size` incompressible bytes
/// each (file `i` from seed `seed + i`); returns their total size.
pub fn random_files(dir: &Path, count: u64, size: usize, seed: u64) -> u64 {
    fs::create_dir_all(dir).unwrap();
    for i in 0..count {
        fs::write(dir.join(format!("f{i}")), pseudo_random(size, seed + i)).unwrap();
    }
    count * size as u64
}

/// Whether this filesystem takes `user.` xattrs.
pub fn xattrs_supported(dir: &Path) -> bool {
    let probe = dir.join(".xattr-probe");
    fs::write(&probe, b"").unwrap();
    let ok = xattr::set(&probe, "user.probe", b"1").is_ok();
    fs::remove_file(probe).unwrap();
    ok
}

pub fn set_mtime(path: &Path, seconds: i64, nanos: i64) {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let t = libc::timespec {
        tv_sec: seconds,
        tv_nsec: nanos,
    };
    // SAFETY: c is a valid path and the array holds two timespecs.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            [t, t].as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(rc, 0);
}

/// 2300-01-01T00:00:00Z in seconds: past 2262-04-11, the last time i64 nanoseconds hold.
pub const YEAR_2300_SECONDS: i64 = 10_413_792_000;
/// 1960-06-01T12:00:00Z in seconds: before the epoch.
pub const YEAR_1960_SECONDS: i64 = -302_443_200;

/// 3,000 small files in three directories with six of 6 MiB among them: more files than a
/// round of restore's reads takes, spread over several packs.
pub fn small_and_large_files(source: &Path) {
    for i in 0..3000u64 {
        let dir = source.join(format!("d{}", i / 1000));
        fs::create_dir_all(&dir).unwrap();
        let bytes = pseudo_random(200 + (i as usize * 13) % 3000, 5000 + i);
        fs::write(dir.join(format!("small{i:04}")), bytes).unwrap();
        if i % 500 == 250 {
            let large = pseudo_random(6 << 20, 9000 + i);
            fs::write(dir.join(format!("large{i:04}")), large).unwrap();
        }
    }
}

/// A tree whose entries carry times outside i64 nanoseconds since 1970 or before it:
/// `future.txt` (2300-01-01T00:00:00.123456789Z), `past.txt` (1960-06-01T12:00:00.000000005Z),
/// a symlink dated 2300 and a directory `old` dated 1960.
pub fn make_tree_with_far_times(root: &Path) {
    fs::create_dir_all(root.join("old")).unwrap();
    fs::write(root.join("future.txt"), b"written in 2300").unwrap();
    fs::write(root.join("past.txt"), b"written in 1960").unwrap();
    fs::write(root.join("old/inside.txt"), b"also from 1960").unwrap();
    std::os::unix::fs::symlink("future.txt", root.join("link")).unwrap();
    set_mtime(&root.join("future.txt"), YEAR_2300_SECONDS, 123_456_789);
    set_mtime(&root.join("past.txt"), YEAR_1960_SECONDS, 5);
    set_mtime(&root.join("old/inside.txt"), YEAR_1960_SECONDS, 0);
    set_mtime(&root.join("link"), YEAR_2300_SECONDS, 0);
    set_mtime(&root.join("old"), YEAR_1960_SECONDS, 0);
}

/// Writes a 3 MiB file that is dense on disk although its middle MiB is zeros.
pub fn write_dense_file_with_zeros(path: &Path) -> Vec<u8> {
    let mut bytes = pseudo_random(1 << 20, 11);
    bytes.resize(2 << 20, 0);
    bytes.extend(pseudo_random(1 << 20, 12));
    fs::write(path, &bytes).unwrap();
    assert!(allocated_bytes(path) >= 3 << 20, "written dense");
    bytes
}

/// Builds a tree with every kind of entry cairn keeps.
pub fn make_tree(root: &Path) {
    fs::create_dir_all(root.join("dir/nested/deeper")).unwrap();
    fs::create_dir_all(root.join("empty-dir")).unwrap();
    fs::write(root.join("hello.txt"), b"hello, cairn\n").unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    fs::write(root.join("dir/big.bin"), pseudo_random(3_000_000, 1)).unwrap();
    fs::write(root.join("dir/nested/text.txt"), "line\n".repeat(20_000)).unwrap();
    fs::write(root.join("dir/nested/deeper/small"), pseudo_random(777, 2)).unwrap();
    // A sparse file: 8 MiB with data at two places and holes elsewhere.
    let sparse = fs::File::create(root.join("sparse")).unwrap();
    sparse.set_len(8 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"middle", 4 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"end", (8 << 20) - 3).unwrap();
    drop(sparse);
    std::os::unix::fs::symlink("hello.txt", root.join("link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", root.join("dangling")).unwrap();
    fs::hard_link(root.join("hello.txt"), root.join("dir/hardlink")).unwrap();
    let fifo = std::ffi::CString::new(root.join("fifo").as_os_str().as_bytes()).unwrap();
    // SAFETY: fifo is a valid path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o640) }, 0);
    fs::write(
        root.join(OsStr::from_bytes(b"not-utf8-\xff\xfe")),
        b"odd name",
    )
    .unwrap();
    // Sockets are skipped with a notice, so `snapshot` leaves them out too.
    std::os::unix::net::UnixListener::bind(root.join("socket")).unwrap();
    if running_as_root() {
        let null = std::ffi::CString::new(root.join("dev-null").as_os_str().as_bytes()).unwrap();
        // SAFETY: null is a valid path; makedev(1, 3) is /dev/null's device number.
        let rc = unsafe { libc::mknod(null.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
        assert_eq!(rc, 0);
    }
    fs::write(root.join("script.sh"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(root.join("script.sh"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::set_permissions(root.join("dir/nested"), fs::Permissions::from_mode(0o750)).unwrap();
    if xattrs_supported(root) {
        xattr::set(root.join("hello.txt"), "user.color", b"blue").unwrap();
        xattr::set(root.join("dir"), "user.kind", b"directory").unwrap();
    }
    set_mtime(&root.join("hello.txt"), 1_600_000_000, 123_456_789);
    set_mtime(&root.join("link"), 1_500_000_000, 5);
    set_mtime(&root.join("dir/nested"), 1_400_000_000, 999_999_999);
}

/// What is compared of one entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i128,
    pub size: u64,
    /// The BLAKE3 hash of a regular file's bytes (short in a failed assertion's message).
    pub content: Option<String>,
    pub target: Option<PathBuf>,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Index of the first path of this entry's hard-link group, in walk order.
    pub link_group: Option<usize>,
}

/// `root` (as the empty path) and every entry below it, keyed by relative path.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, Snapshot> {
    let mut out = BTreeMap::new();
    let mut groups: HashMap<(u64, u64), usize> = HashMap::new();
    let mut stack = vec![root.to_path_buf()];
    let mut order = 0;
    let mut paths = vec![(root.to_path_buf(), fs::symlink_metadata(root).unwrap())];
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            let m = fs::symlink_metadata(&path).unwrap();
            if m.is_dir() {
                stack.push(path.clone());
            }
            paths.push((path, m));
        }
    }
    paths.sort_by(|a, b| a.0.cmp(&b.0));
    for (path, m) in paths {
        let ft = m.file_type();
        use std::os::unix::fs::FileTypeExt;
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_file() {
            "file"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_fifo() {
            "fifo"
        } else if ft.is_char_device() {
            "chardev"
        } else if ft.is_socket() {
            continue;
        } else {
            "other"
        };
        let link_group = (ft.is_file() && m.nlink() > 1).then(|| {
            order += 1;
            *groups.entry((m.dev(), m.ino())).or_insert(order)
        });
        let xattrs = xattr::list(&path)
            .map(|names| {
                names
                    .filter_map(|n| Some((n.as_bytes().to_vec(), xattr::get(&path, &n).ok()??)))
                    .collect()
            })
            .unwrap_or_default();
        out.insert(
            path.strip_prefix(root).unwrap().to_path_buf(),
            Snapshot {
                kind,
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
                size: if ft.is_file() { m.len() } else { m.rdev() },
                content: ft
                    .is_file()
                    .then(|| blake3::hash(&fs::read(&path).unwrap()).to_hex().to_string()),
                target: ft.is_symlink().then(|| fs::read_link(&path).unwrap()),
                xattrs,
                link_group,
            },
        );
    }
    out
}

/// Asserts that two trees hold the same entries with the same content and metadata.
pub fn assert_same_tree(expected: &Path, actual: &Path) {
    let a = snapshot(expected);
    let b = snapshot(actual);
    let a_keys: Vec<_> = a.keys().collect();
    let b_keys: Vec<_> = b.keys().collect();
    assert_eq!(a_keys, b_keys, "the trees hold different paths");
    for (path, entry) in &a {
        assert_eq!(Some(entry), b.get(path), "{} differs", path.display());
    }
}

/// Every entry below `dir` (not `dir` itself), directories included and symlinks not
/// followed, in no particular order.
pub fn entries_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
            out.push(e.path());
        }
    }
    out
}

/// Whether `path` is a directory itself (a symlink to one is not).
fn is_real_dir(path: &Path) -> bool {
    fs::symlink_metadata(path).unwrap().is_dir()
}

/// Total bytes of the files below `dir`.
pub fn disk_usage(dir: &Path) -> u64 {
    entries_below(dir)
        .iter()
        .map(|path| fs::symlink_metadata(path).unwrap())
        .filter(|m| !m.is_dir())
        .map(|m| m.len())
        .sum()
}

/// Every file below `dir` with its bytes, to prove a directory unchanged.
pub fn file_contents(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    entries_below(dir)
        .into_iter()
        .filter(|path| !is_real_dir(path))
        .map(|path| {
            let bytes = fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect()
}

/// Copies the plain files and directories below `from` to `to` (a repository, a fixture).
pub fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Allocated bytes of a file (to tell holes from written zeros).
pub fn allocated_bytes(path: &Path) -> u64 {
    fs::metadata(path).unwrap().blocks() * 512
}

/// What a child process did under `run_bounded`.
pub struct Bounded {
    pub output: Output,
    /// The child's peak resident set size, in bytes.
    pub peak_rss_bytes: u64,
    /// Whether the time limit ran out and the child was killed.
    pub timed_out: bool,
}

impl Bounded {
    /// Asserts that the child ended on its own within the time limit and stayed under
    /// `max_rss_bytes` of memory.
    pub fn assert_within(&self, max_rss_bytes: u64) {
        assert!(
            !self.timed_out,
            "the command hung and was killed: {}",
            stderr(&self.output)
        );
        assert!(
            self.peak_rss_bytes <= max_rss_bytes,
            "the command peaked at {} MiB of memory (cap {} MiB): {}",
            self.peak_rss_bytes >> 20,
            max_rss_bytes >> 20,
            stderr(&self.output)
        );
    }
}

/// Runs `command` to its end or until `limit` has passed (then kills it), collecting its
/// output and its peak memory: the harness of the attack tests, which prove hostile input
/// gets an error, never a hang or gigabytes of memory. The peak is the child's own high-water
/// mark (`VmHWM`), read every few milliseconds while it runs: `wait4`'s `ru_maxrss` would also
/// count the test process's memory, which the child held between fork and exec.
pub fn run_bounded(command: &mut Command, limit: std::time::Duration) -> Bounded {
    use std::io::Read;
    use std::process::Stdio;
    // Reaped by the waitpid below.
    #[allow(clippy::zombie_processes)]
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr_reader = drain(Box::new(child.stderr.take().unwrap()));
    let pid = child.id() as libc::pid_t;
    let deadline = std::time::Instant::now() + limit;
    let (mut timed_out, mut peak_kib) = (false, 0u64);
    let status = loop {
        if let Some(kib) = high_water_kib(pid) {
            peak_kib = peak_kib.max(kib);
        }
        let mut status = 0;
        // SAFETY: pid is our own child, not yet reaped (Child::wait is never called).
        let reaped = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        assert!(reaped >= 0, "waitpid: {}", std::io::Error::last_os_error());
        if reaped == pid {
            break status;
        }
        if !timed_out && std::time::Instant::now() > deadline {
            timed_out = true;
            // SAFETY: pid is our own child, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(std::time::Duration::from_millis(3));
    };
    use std::os::unix::process::ExitStatusExt;
    Bounded {
        output: Output {
            status: std::process::ExitStatus::from_raw(status),
            stdout: stdout.join().unwrap(),
            stderr: stderr_reader.join().unwrap(),
        },
        peak_rss_bytes: peak_kib * 1024,
        timed_out,
    }
}

/// The high-water mark of process `pid`'s resident memory, in KiB, while it runs.
fn high_water_kib(pid: libc::pid_t) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A running `cairn mount` of a repository at `<sandbox>/mnt`; unmounted and reaped on drop.
pub struct Mounted {
    child: Option<Child>,
    pub point: PathBuf,
}

impl Mounted {
    /// Mounts `repo` at `<sandbox>/mnt` and waits until the filesystem is up.
    pub fn start(sandbox: &Sandbox, repo: impl AsRef<OsStr>) -> Self {
        Self::start_with::<&str>(sandbox, repo, &[])
    }

    /// Like `start`, with `extra` arguments (a key or password file) after the repository.
    pub fn start_with<S: AsRef<OsStr>>(
        sandbox: &Sandbox,
        repo: impl AsRef<OsStr>,
        extra: &[S],
    ) -> Self {
        let point = sandbox.path("mnt");
        fs::create_dir_all(&point).unwrap();
        let child = sandbox
            .cairn()
            .args(["mount", "--repo"])
            .arg(repo)
            .args(extra)
            .arg(&point)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mounted = Mounted {
            child: Some(child),
            point,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !mounted.point.join("checkpoints").exists() {
            assert!(Instant::now() < deadline, "the mount did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        mounted
    }

    /// `rel` below the mount point.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.point.join(rel)
    }

    /// Sends SIGTERM and returns the exit status once the process is gone.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        // SAFETY: kill with a valid pid and signal.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().unwrap()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.point)
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A running `cairn serve`, killed and reaped when dropped.
pub struct Server {
    child: Child,
    /// The server's base URL, as it printed it (`http://127.0.0.1:PORT`).
    pub url: String,
    /// The lines it printed after the first, as they come.
    later: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Server {
    /// Spawns `command`, a `cairn serve` (possibly wrapped, as by `sh -c`), and waits for the
    /// `listening on URL` line it prints first.
    pub fn spawn(command: &mut Command) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        stdout.read_line(&mut line).unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("serve printed {line:?}"))
            .to_owned();
        let later = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = later.clone();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                kept.lock().unwrap().push(line);
            }
        });
        Server { child, url, later }
    }

    /// The first line after `listening on` that starts with `prefix`, once printed.
    pub fn printed(&self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let lines = self.later.lock().unwrap().clone();
            if let Some(line) = lines.iter().find(|l| l.starts_with(prefix)) {
                return line.clone();
            }
            assert!(
                Instant::now() < deadline,
                "serve printed no {prefix:?}: {lines:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Server {
    /// `cairn serve` on a free loopback port serving directory `dir` as source `name`, with
    /// the bearer token in `token` (written here); returns the server and the source's URL.
    pub fn source(sandbox: &Sandbox, name: &str, dir: &Path, token: &Path) -> (Self, String) {
        fs::write(token, "source-token\n").unwrap();
        let server = Server::spawn(sandbox.cairn().args([
            OsStr::new("serve"),
            OsStr::new("--listen"),
            OsStr::new("127.0.0.1:0"),
            OsStr::new("--token-file"),
            token.as_os_str(),
            OsStr::new("--source"),
            OsStr::new(&format!("{name}={}", dir.display())),
        ]));
        let url = format!("{}/source/{name}", server.url);
        (server, url)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A small tmpfs mounted for a test, unmounted when dropped.
pub struct SmallDisk(PathBuf);

impl SmallDisk {
    /// Mounts a tmpfs of `megabytes` at `path`; `None` when not root (mounting needs it).
    pub fn mount(path: &Path, megabytes: u32) -> Option<SmallDisk> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        fs::create_dir_all(path).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs");
        Some(SmallDisk(path.to_owned()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Bytes of every whole pack in `repo`, and how many there are.
pub fn pack_bytes(repo: &Path) -> (u64, usize) {
    let mut bytes = 0;
    let mut count = 0;
    for shard in fs::read_dir(repo.join("data"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for pack in fs::read_dir(shard.path()).into_iter().flatten().flatten() {
            if !pack.file_name().to_string_lossy().starts_with('.') {
                bytes += pack.metadata().unwrap().len();
                count += 1;
            }
        }
    }
    (bytes, count)
}

/// Whether the tests run as root (who may make device nodes, chown, and read anything).
pub fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The named steps of a long scenario test, so a failure says which step it was in:
/// `steps.enter("restore after the prune")` before each; the step's name is printed when the
/// test panics in it.
pub struct Steps {
    current: std::cell::Cell<&'static str>,
}

impl Steps {
    pub fn new() -> Self {
        Steps {
            current: std::cell::Cell::new("setting up"),
        }
    }

    /// The scenario goes on to step `name`.
    pub fn enter(&self, name: &'static str) {
        self.current.set(name);
    }
}

impl Drop for Steps {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("failed in step: {}", self.current.get());
        }
    }
}
