//! Where repository objects live. A backend stores named, immutable objects (`config`,
//! `keys/<id>`, `data/<xx>/<id>`, `index/<id>`, `checkpoints/<id>`, `locks/<id>`) and offers
//! only what an object store can: get, ranged get, atomic put, list by prefix and delete.
//! Nothing above this trait assumes a local filesystem, so HTTP and S3-compatible stores plug
//! in here. `LocalBackend` makes `put` atomic and durable with a temporary file, fsync and
//! rename, so a killed process never leaves a half-written object under its real name, and
//! creates everything private (directories 0700, files 0600), or readable by the group
//! (0750 / 0640) when the repository's root directory is: see `CreationModes`. `put_new`
//! links the temporary file instead of renaming it, so it never replaces an object.

use crate::error::{Error, IoContext, Missing, Result};
use crate::fs::uncached::write_new_file;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// One object as listed: its name and size in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub name: String,
    pub size: u64,
}

/// One range of a batched read: `length` bytes at `offset` of object `name`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RangeRequest {
    pub name: String,
    pub offset: u64,
    pub length: u64,
}

/// The most bytes object `name` may hold when it is read whole: a pack or an index file the
/// largest blob a repository accepts plus room for its pack (1 GiB and 16 MiB), any other
/// object (`config`, `keys/…`, `checkpoints/…`, `locks/…`) 16 MiB. A larger one is no object
/// cairn wrote, and is refused before it is read (invariant 7).
pub fn max_whole_object_bytes(name: &str) -> u64 {
    use crate::repo::objects::ObjectKind;
    if matches!(
        ObjectKind::of(name),
        Some(ObjectKind::Pack | ObjectKind::Index)
    ) {
        (1 << 30) + (16 << 20)
    } else {
        16 << 20
    }
}

/// The piece a local disk hands a streamed range over in.
const STREAMED_PIECE_BYTES: u64 = 1 << 20;

/// Storage of named immutable objects.
pub trait Backend: Send + Sync {
    /// A human-readable location, for messages.
    fn location(&self) -> String;
    /// The whole object; `ErrorKind::NotFound` when it does not exist.
    fn get(&self, name: &str) -> Result<Vec<u8>>;
    /// `length` bytes from `offset`; fewer bytes than asked is a corrupt (truncated) object.
    fn get_range(&self, name: &str, offset: u64, length: u64) -> Result<Vec<u8>>;
    /// `length` bytes from `offset` in one request, handed to `take` in order as they arrive,
    /// in pieces of any size, so a long stretch of a pack is read without being held whole.
    /// Fewer bytes than asked is a corrupt (truncated) object, as for `get_range`; pieces
    /// handed over before an error stay handed over. This default reads the range whole.
    fn get_range_streamed(
        &self,
        name: &str,
        offset: u64,
        length: u64,
        take: &mut dyn FnMut(&[u8]),
    ) -> Result<()> {
        take(&self.get_range(name, offset, length)?);
        Ok(())
    }
    /// Several ranges, in order; a remote backend asks for them in one request.
    fn get_ranges(&self, ranges: &[RangeRequest]) -> Result<Vec<Vec<u8>>> {
        ranges
            .iter()
            .map(|r| self.get_range(&r.name, r.offset, r.length))
            .collect()
    }
    /// Stores the object atomically: afterwards it is complete and durable, or absent.
    fn put(&self, name: &str, data: &[u8]) -> Result<()>;
    /// Every object whose name starts with `prefix` (e.g. `"data/"`), in no particular order.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>>;
    /// The names `list` gives, for callers that need no sizes; a store that learns sizes
    /// only at a cost (a local directory: a `stat` per object) lists names alone.
    fn list_names(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self.list(prefix)?.into_iter().map(|o| o.name).collect())
    }
    fn delete(&self, name: &str) -> Result<()>;
    /// Whether the object exists.
    fn exists(&self, name: &str) -> Result<bool>;
    /// Stores object `name` only if no object has that name, and otherwise says whether the
    /// one there holds these bytes. A store that can create exclusively makes racing
    /// writers create it once; this default looks first and then writes, which is as much
    /// as an object store without conditional writes allows (names are content-addressed
    /// or fresh, so a lost race writes the same bytes).
    fn put_new(&self, name: &str, data: &[u8]) -> Result<PutNew> {
        if self.exists(name)? {
            return Ok(if self.get(name)? == data {
                PutNew::AlreadyThere
            } else {
                PutNew::Different
            });
        }
        self.put(name, data)?;
        Ok(PutNew::Created)
    }
    /// The size of object `name` in bytes.
    fn size(&self, name: &str) -> Result<u64> {
        self.list(name)?
            .into_iter()
            .find(|object| object.name == name)
            .map(|object| object.size)
            .ok_or_else(|| {
                Error::not_found(
                    Missing::Object {
                        name: name.to_owned(),
                    },
                    format!("{}: no object {name}", self.location()),
                )
            })
    }
    /// How many requests are worth keeping under way at once (packs uploading, reads ahead):
    /// a local disk gains little from more than one, a remote store, where each request
    /// waits a round trip, much.
    fn preferred_concurrency(&self) -> usize {
        1
    }
    /// A token that differs whenever the objects under `prefix` (a top-level prefix such as
    /// `"checkpoints/"`) have changed since it was taken, when the store can give one at no
    /// cost and be sure of it; `None` otherwise, and then a caller lists. A caller that keeps
    /// what a listing found with the token taken just before it may skip the next listing
    /// while the token is the same.
    fn listing_token(&self, _prefix: &str) -> Option<String> {
        None
    }
}

/// The modes the local backend creates directories and files with. Private by default, as
/// restic and borg do; when the repository's root directory already grants its group read
/// and search (`mkdir -m 750` and `chgrp` by whoever shares the repository), new directories
/// and files grant the group read too, so a repository stays readable by the group it was
/// shared with. Other users never get a bit. The process's umask can only narrow these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CreationModes {
    dir: u32,
    file: u32,
}

impl CreationModes {
    const PRIVATE: CreationModes = CreationModes {
        dir: 0o700,
        file: 0o600,
    };
    const GROUP_READABLE: CreationModes = CreationModes {
        dir: 0o750,
        file: 0o640,
    };

    /// The modes for a repository whose root directory has mode `root_mode`.
    fn following(root_mode: u32) -> Self {
        if root_mode & 0o050 == 0o050 {
            CreationModes::GROUP_READABLE
        } else {
            CreationModes::PRIVATE
        }
    }
}

/// Creates `dir` and its missing parents with mode `mode`.
fn create_dirs(dir: &Path, mode: u32) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .context_io(|| format!("creating {}", dir.display()))
}

/// Creates `dir` (and its missing parents) for the local cache, and makes `dir` itself
/// private even when an older cairn made it readable by others.
pub(crate) fn create_private_dir(dir: &Path) -> Result<()> {
    create_dirs(dir, CreationModes::PRIVATE.dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(CreationModes::PRIVATE.dir))
        .context_io(|| format!("making {} private", dir.display()))
}

/// Open files kept for ranged reads; objects never change once written, so a handle stays
/// valid until the object is deleted.
const OPEN_FILES_KEPT: usize = 64;

/// Objects this large (packs, built in page-aligned memory) are written around the page
/// cache (`fs::uncached`): a backup's packs are not read again soon, and copying them into
/// the cache was a twentieth of the CPU of backing up one large file.
const UNCACHED_WRITE_MIN_BYTES: usize = 1 << 20;

/// A repository in a local directory.
pub struct LocalBackend {
    root: PathBuf,
    open_files: quick_cache::sync::Cache<String, Arc<fs::File>>,
    /// Decided at the first write, from the root directory (created private if missing).
    modes: OnceLock<CreationModes>,
}

impl LocalBackend {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalBackend {
            root: root.into(),
            open_files: quick_cache::sync::Cache::new(OPEN_FILES_KEPT),
            modes: OnceLock::new(),
        }
    }

    /// The modes new directories and files get, creating the root directory if missing.
    fn creation_modes(&self) -> Result<CreationModes> {
        if let Some(modes) = self.modes.get() {
            return Ok(*modes);
        }
        let modes = match fs::metadata(&self.root) {
            Ok(metadata) => CreationModes::following(metadata.permissions().mode()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                create_dirs(&self.root, CreationModes::PRIVATE.dir)?;
                CreationModes::PRIVATE
            }
            Err(e) => return Err(Error::io(format!("reading {}", self.root.display()), e)),
        };
        Ok(*self.modes.get_or_init(|| modes))
    }

    fn path_of(&self, name: &str) -> Result<PathBuf> {
        let valid = !name.is_empty()
            && name
                .split('/')
                .all(|part| !part.is_empty() && part != "." && part != "..");
        if !valid {
            return Err(Error::InvalidInput(format!("invalid object name {name:?}")));
        }
        Ok(self.root.join(name))
    }

    /// Calls `found` with the name and directory entry of every object whose name starts
    /// with `prefix`, skipping temporary files of puts. Directories are told from files by
    /// the type `readdir` gives (a `stat` only for a symbolic link), and walked with a
    /// list of pending ones, not recursion.
    fn visit(
        &self,
        prefix: &str,
        mut found: impl FnMut(String, &fs::DirEntry) -> Result<()>,
    ) -> Result<()> {
        let top = prefix.rsplit_once('/').map_or("", |(dir, _)| dir);
        let mut pending = vec![top.to_owned()];
        while let Some(rel) = pending.pop() {
            let dir = self.root.join(&rel);
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(format!("listing {}", dir.display()), e)),
            };
            for entry in entries {
                let entry = entry.context_io(|| format!("listing {}", dir.display()))?;
                let Some(file_name) = entry.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                if file_name.starts_with('.') {
                    continue;
                }
                let name = if rel.is_empty() {
                    file_name
                } else {
                    format!("{rel}/{file_name}")
                };
                let reading = || format!("reading {}", entry.path().display());
                let file_type = entry.file_type().context_io(reading)?;
                let is_dir = if file_type.is_symlink() {
                    fs::metadata(entry.path()).context_io(reading)?.is_dir()
                } else {
                    file_type.is_dir()
                };
                if is_dir {
                    pending.push(name);
                } else if name.starts_with(prefix) {
                    found(name, &entry)?;
                }
            }
        }
        Ok(())
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .context_io(|| format!("syncing directory {}", dir.display()))
}

/// What `Backend::put_new` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutNew {
    Created,
    /// The object was there already with these very bytes.
    AlreadyThere,
    /// The object was there already with other bytes; it was left as it was.
    Different,
}

impl LocalBackend {
    /// The path of object `name`, and a fresh temporary file beside it (its directory
    /// created if missing) holding `data`, synced.
    fn write_temporary(&self, name: &str, data: &[u8]) -> Result<(PathBuf, PathBuf)> {
        let path = self.path_of(name)?;
        let dir = path.parent().expect("object paths are below the root");
        let modes = self.creation_modes()?;
        create_dirs(dir, modes.dir)?;
        let file_name = path.file_name().expect("object names are not empty");
        let temp = dir.join(format!(
            ".{}.tmp-{}",
            file_name.to_string_lossy(),
            hex::encode(crate::crypto::random_bytes::<6>())
        ));
        let write = || -> std::io::Result<()> {
            let file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(modes.file)
                .open(&temp)?;
            if data.len() >= UNCACHED_WRITE_MIN_BYTES {
                write_new_file(&file, data)?;
            } else {
                (&file).write_all(data)?;
            }
            file.sync_all()
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&temp);
            return Err(Error::io(format!("writing {}", path.display()), e));
        }
        Ok((path, temp))
    }

    /// `Backend::put_new`: the bytes go to a temporary file that is then hard-linked to the
    /// name, which fails rather than replace, so of racing writers exactly one creates it.
    /// Fills `out` from `offset` of object `name`, then hands it to `take`; an object that
    /// ends first is corrupt (truncated).
    fn read_range(
        &self,
        name: &str,
        offset: u64,
        out: &mut [u8],
        take: &mut dyn FnMut(&[u8]),
    ) -> Result<()> {
        let path = self.path_of(name)?;
        let context = || format!("reading {}", path.display());
        let file = self
            .open_files
            .get_or_insert_with(name, || fs::File::open(&path).map(Arc::new))
            .context_io(context)?;
        let mut filled = 0;
        while filled < out.len() {
            match file.read_at(&mut out[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io(context(), e)),
            }
        }
        if filled != out.len() {
            return Err(Error::corrupt(
                path.display().to_string(),
                format!(
                    "truncated: wanted {} bytes at offset {offset}, found {filled}",
                    out.len()
                ),
            ));
        }
        take(out);
        Ok(())
    }

    fn create_exclusively(&self, name: &str, data: &[u8]) -> Result<PutNew> {
        let (path, temp) = self.write_temporary(name, data)?;
        let linked = fs::hard_link(&temp, &path);
        let _ = fs::remove_file(&temp);
        match linked {
            Ok(()) => {
                sync_dir(path.parent().expect("object paths are below the root"))?;
                Ok(PutNew::Created)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let held = fs::read(&path).context_io(|| format!("reading {}", path.display()))?;
                Ok(if held == data {
                    PutNew::AlreadyThere
                } else {
                    PutNew::Different
                })
            }
            Err(e) => Err(Error::io(format!("creating {}", path.display()), e)),
        }
    }
}

impl Backend for LocalBackend {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn get(&self, name: &str) -> Result<Vec<u8>> {
        let path = self.path_of(name)?;
        let context = || format!("reading {}", path.display());
        let file = fs::File::open(&path).context_io(context)?;
        let size = file.metadata().context_io(context)?.len();
        let max = max_whole_object_bytes(name);
        if size > max {
            return Err(Error::corrupt(
                path.display().to_string(),
                format!("{size} bytes, more than the {max} any such object of cairn's holds"),
            ));
        }
        let mut data = Vec::with_capacity(size as usize);
        // Read no further than the size checked, even if the file grows meanwhile.
        file.take(max).read_to_end(&mut data).context_io(context)?;
        Ok(data)
    }

    fn get_range(&self, name: &str, offset: u64, length: u64) -> Result<Vec<u8>> {
        let mut out = vec![0u8; length as usize];
        self.read_range(name, offset, &mut out, &mut |_| {})?;
        Ok(out)
    }

    fn get_range_streamed(
        &self,
        name: &str,
        offset: u64,
        length: u64,
        take: &mut dyn FnMut(&[u8]),
    ) -> Result<()> {
        let mut piece = vec![0u8; length.min(STREAMED_PIECE_BYTES) as usize];
        let mut done = 0;
        while done < length {
            let part = (length - done).min(piece.len() as u64) as usize;
            self.read_range(name, offset + done, &mut piece[..part], take)?;
            done += part as u64;
        }
        Ok(())
    }

    fn put(&self, name: &str, data: &[u8]) -> Result<()> {
        let (path, temp) = self.write_temporary(name, data)?;
        if let Err(e) = fs::rename(&temp, &path) {
            let _ = fs::remove_file(&temp);
            return Err(Error::io(format!("writing {}", path.display()), e));
        }
        sync_dir(path.parent().expect("object paths are below the root"))
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let mut out = Vec::new();
        self.visit(prefix, |name, entry| {
            let metadata = entry
                .metadata()
                .context_io(|| format!("reading {}", entry.path().display()))?;
            out.push(ObjectInfo {
                name,
                size: metadata.len(),
            });
            Ok(())
        })?;
        Ok(out)
    }

    fn list_names(&self, prefix: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        self.visit(prefix, |name, _| {
            out.push(name);
            Ok(())
        })?;
        Ok(out)
    }

    fn delete(&self, name: &str) -> Result<()> {
        let path = self.path_of(name)?;
        self.open_files.remove(name);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("deleting {}", path.display()), e)),
        }
    }

    fn exists(&self, name: &str) -> Result<bool> {
        let path = self.path_of(name)?;
        match fs::symlink_metadata(&path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
        }
    }

    fn put_new(&self, name: &str, data: &[u8]) -> Result<PutNew> {
        self.create_exclusively(name, data)
    }

    fn size(&self, name: &str) -> Result<u64> {
        let path = self.path_of(name)?;
        fs::metadata(&path)
            .map(|m| m.len())
            .context_io(|| format!("reading {}", path.display()))
    }

    /// The directory's identity and change time: creating, renaming or removing an entry
    /// sets the change time to the current time. Given only on local filesystems whose
    /// change times come from this machine's clock, and only once the last change is
    /// `SETTLED` old: a change made within the same clock tick as the one the token saw
    /// could not be told from it, and none can be made in a tick already past.
    fn listing_token(&self, prefix: &str) -> Option<String> {
        use std::os::unix::fs::MetadataExt;
        /// How old the last change must be: far more than one tick of the clock that
        /// stamps files (1 to 10 ms).
        const SETTLED: std::time::Duration = std::time::Duration::from_millis(100);
        let dir = self.path_of(prefix.strip_suffix('/')?).ok()?;
        if !changes_are_stamped_by_this_machine(&dir) {
            return None;
        }
        let stat = fs::metadata(&dir).ok()?;
        let changed = std::time::UNIX_EPOCH
            + std::time::Duration::new(u64::try_from(stat.ctime()).ok()?, stat.ctime_nsec() as u32);
        let age = std::time::SystemTime::now().duration_since(changed).ok()?;
        (age >= SETTLED).then(|| {
            format!(
                "{}:{}:{}.{}",
                stat.dev(),
                stat.ino(),
                stat.ctime(),
                stat.ctime_nsec()
            )
        })
    }
}

/// Whether directory `dir` is on a local filesystem (ext4, XFS, Btrfs, tmpfs, F2FS, ZFS),
/// where a change time comes from this machine's clock; a network or FUSE filesystem's may
/// come from another.
fn changes_are_stamped_by_this_machine(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    const LOCAL_FILESYSTEMS: [i64; 6] = [
        0xEF53,      // ext2/3/4
        0x5846_5342, // XFS
        0x9123_683E, // Btrfs
        0x0102_1994, // tmpfs
        0xF2F5_2010, // F2FS
        0x2FC1_2FC1, // ZFS
    ];
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    let mut info: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a NUL-terminated string and `info` a statfs the call fills.
    if unsafe { libc::statfs(path.as_ptr(), &mut info) } != 0 {
        return false;
    }
    LOCAL_FILESYSTEMS.contains(&(info.f_type as i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_range_list_delete() {
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalBackend::new(dir.path());
        backend.put("data/ab/abcd", b"hello world").unwrap();
        backend.put("index/1", b"x").unwrap();
        assert_eq!(backend.get("data/ab/abcd").unwrap(), b"hello world");
        assert_eq!(backend.get_range("data/ab/abcd", 6, 5).unwrap(), b"world");
        assert_eq!(
            backend.get_range("data/ab/abcd", 6, 50).unwrap_err().kind(),
            crate::error::ErrorKind::Corrupt
        );
        let listed = backend.list("data/").unwrap();
        assert_eq!(
            listed,
            vec![ObjectInfo {
                name: "data/ab/abcd".into(),
                size: 11
            }]
        );
        assert_eq!(backend.list("index/").unwrap().len(), 1);
        assert_eq!(backend.list_names("data/").unwrap(), vec!["data/ab/abcd"]);
        assert_eq!(
            backend.list_names("data/ab/ab").unwrap(),
            vec!["data/ab/abcd"]
        );
        assert_eq!(backend.list_names("data/cd").unwrap(), Vec::<String>::new());
        backend.delete("data/ab/abcd").unwrap();
        assert!(!backend.exists("data/ab/abcd").unwrap());
        assert_eq!(
            backend.get("data/ab/abcd").unwrap_err().kind(),
            crate::error::ErrorKind::NotFound
        );
        assert!(backend.put("../escape", b"x").is_err());
    }

    #[test]
    fn modes_follow_the_group_bits_of_the_root_and_never_give_others_any() {
        assert_eq!(
            CreationModes::following(0o755),
            CreationModes::GROUP_READABLE
        );
        assert_eq!(
            CreationModes::following(0o2750),
            CreationModes::GROUP_READABLE
        );
        assert_eq!(CreationModes::following(0o700), CreationModes::PRIVATE);
        assert_eq!(CreationModes::following(0o740), CreationModes::PRIVATE);
        assert_eq!(CreationModes::following(0o707), CreationModes::PRIVATE);
    }

    #[test]
    fn put_new_creates_once_and_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalBackend::new(dir.path());
        assert_eq!(
            backend.put_new("keys/a", b"first").unwrap(),
            PutNew::Created
        );
        assert_eq!(
            backend.put_new("keys/a", b"first").unwrap(),
            PutNew::AlreadyThere
        );
        assert_eq!(
            backend.put_new("keys/a", b"other").unwrap(),
            PutNew::Different
        );
        assert_eq!(backend.get("keys/a").unwrap(), b"first");
        assert_eq!(fs::read_dir(dir.path().join("keys")).unwrap().count(), 1);
    }
}
