//! The local catalogue: every checkpoint record of a repository, kept in the repository's
//! cache directory (`<cache>/<repository id>/catalogue`) so that commands which list
//! checkpoints read one local file instead of every `checkpoints/<id>` object on every run.
//!
//! The repository decides what exists: each sync lists `checkpoints/` once, reads (and
//! checks against its id) only the records the catalogue does not hold, and drops those no
//! longer listed. Records never change once written, so a record checked once stays true.
//! The file is a log: a new record is appended (`O_APPEND`, one write of whole records,
//! then fsync), so saving a checkpoint costs the same at ten or ten thousand. Records no
//! longer listed stay in the file until they outnumber a quarter of the live ones (and
//! `STALE_RECORDS_KEPT`); then, or when the file is missing, damaged or torn, it is written
//! whole to a temporary name and renamed over the old one. Processes sharing the cache (a
//! mount running for days, `list` and `backup` beside it) need no lock: appends of whole
//! records do not interleave, a record appended to a file just replaced is lost from the
//! catalogue only, and every version of the file is a correct subset that the next listing
//! completes. Reading stops at the first record that cannot be read (a torn tail of a
//! killed writer); what came before is kept and the file is written whole at the next
//! save. A missing or unreadable file is an empty catalogue, rebuilt from the repository
//! without a word.
//!
//! Beside the records, the catalogue keeps the history of the paths `history` and the
//! mount's `history/` were asked for (`histories/<keyed hash of the path>`): the entry at the
//! path in each checkpoint, by checkpoint id, so a history reads only the trees of
//! checkpoints made since it was last asked for, whatever the number of checkpoints. Its
//! plaintext is a header line, the path, the distinct entries (u32 LE count, then each as
//! u32 LE length and JSON), then per checkpoint its id and the index of its entry (u32 LE;
//! `u32::MAX` where the path is absent). The most recently written `MAX_PATH_HISTORIES`
//! are kept.
//!
//! Every record and path history is encoded by the repository's codec: sealed under the
//! master key when the repository is encrypted (records name hosts and paths), private
//! (0600 in the 0700 cache directory) in every case. The catalogue file is the line
//! `HEADER`, then per record its stored form (the id and the record's JSON, encoded) with
//! its length (u32 LE) before it.

use crate::checkpoint::{self, Checkpoint};
use crate::error::{Error, ErrorKind, Result};
use crate::history::{PathHistory, TreeLoader, path_history};
use crate::id::{CheckpointId, ID_BYTES};
use crate::repo::Repository;
use crate::repo::codec::Codec;
use crate::tree::Entry;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The first bytes of the file; a file that starts otherwise is rebuilt.
const HEADER: &[u8] = b"cairn catalogue log 2\n";

/// The largest catalogue file read: far more than a million checkpoint records.
const MAX_CATALOGUE_BYTES: u64 = 4 << 30;

/// The largest stored record the file may hold: a checkpoint record (16 MiB at most) with
/// its id and the codec's framing.
const MAX_FRAME_BYTES: u64 = (16 << 20) + 4096;

/// Stale records (forgotten, or appended twice by racing processes) the file may hold
/// beyond a quarter of its live ones before it is compacted.
const STALE_RECORDS_KEPT: usize = 64;

/// The first line of a path history's plaintext.
const HISTORY_HEADER: &[u8] = b"cairn path history 1\n";

/// Path histories kept; the least recently written beyond these are removed.
const MAX_PATH_HISTORIES: usize = 256;

/// The entry index of a checkpoint where the path is absent.
const ABSENT: u32 = u32::MAX;

/// The entry at one path by checkpoint.
type PathEntries = HashMap<CheckpointId, Option<Entry>>;

/// Checkpoints in catalogue order, shared.
pub type Listing = Vec<(CheckpointId, Arc<Checkpoint>)>;

/// What a sync found: the checkpoints whose records could be read, in catalogue order, and
/// those listed whose records could not (with why).
pub struct Synced {
    pub checkpoints: Listing,
    pub unreadable: Vec<(CheckpointId, Error)>,
}

/// The catalogue of one repository: its file, and the records as this process last knew
/// them (read from the file on first use).
pub struct Catalogue {
    path: PathBuf,
    histories: PathBuf,
    known: Mutex<Option<Known>>,
}

/// The records as this process knows them, and what it knows of the file.
struct Known {
    records: HashMap<CheckpointId, Arc<Checkpoint>>,
    /// The records the file holds, stale ones included.
    stored: usize,
    /// Whether the file must be written whole before records are appended to it: it is
    /// missing, of another version, damaged or torn.
    rewrite: bool,
}

impl Catalogue {
    /// The catalogue kept in cache directory `dir` (which must exist and be private).
    pub fn in_dir(dir: &Path) -> Self {
        Catalogue {
            path: dir.join("catalogue"),
            histories: dir.join("histories"),
            known: Mutex::new(None),
        }
    }

    /// Brings the catalogue up to date with one listing of `checkpoints/` in `repo`.
    pub fn sync(&self, repo: &Repository) -> Result<Synced> {
        let listed = checkpoint::list_ids(repo)?;
        let mut guard = self.known.lock().expect("not poisoned");
        let known = guard.get_or_insert_with(|| self.read_file(repo.codec()));
        let listed_set: HashSet<CheckpointId> = listed.iter().copied().collect();
        known.records.retain(|id, _| listed_set.contains(id));
        let mut added = Vec::new();
        let mut unreadable = Vec::new();
        for id in listed {
            if known.records.contains_key(&id) {
                continue;
            }
            match checkpoint::load(repo, &id) {
                Ok(record) => added.push((id, Arc::new(record))),
                // Forgotten since it was listed.
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => unreadable.push((id, e)),
            }
        }
        self.save(repo.codec(), known, added);
        let mut checkpoints: Listing = known
            .records
            .iter()
            .map(|(id, record)| (*id, record.clone()))
            .collect();
        checkpoints.sort_by(|a, b| checkpoint::catalogue_order((&a.0, &a.1), (&b.0, &b.1)));
        Ok(Synced {
            checkpoints,
            unreadable,
        })
    }

    /// Adds record `id`, just written to the repository by this process, so no later run
    /// reads it back.
    pub fn insert(&self, codec: &Codec, id: CheckpointId, record: &Checkpoint) {
        let mut guard = self.known.lock().expect("not poisoned");
        let known = guard.get_or_insert_with(|| self.read_file(codec));
        if !known.records.contains_key(&id) {
            self.save(codec, known, vec![(id, Arc::new(record.clone()))]);
        }
    }

    /// The entry at the path made of `components` in each of `checkpoints` (in their
    /// order), reading trees with `load` only for checkpoints the kept history of that path
    /// lacks.
    pub fn path_history(
        &self,
        codec: &Codec,
        checkpoints: &[(CheckpointId, Arc<Checkpoint>)],
        components: &[Vec<u8>],
        load: &TreeLoader,
    ) -> Result<PathHistory> {
        let mut key = b"cairn path history\0".to_vec();
        key.extend_from_slice(&components.join(&b'/'));
        let file = self.histories.join(hex::encode(codec.id_of(&key)));
        let mut known = match read_path_history(&file, codec, components) {
            Ok(known) => known,
            Err(e) => {
                if e.kind() != ErrorKind::NotFound {
                    tracing::info!("rebuilding a path history: {e}");
                }
                HashMap::new()
            }
        };
        let missing: Vec<&(CheckpointId, Arc<Checkpoint>)> = checkpoints
            .iter()
            .filter(|(id, _)| !known.contains_key(id))
            .collect();
        let mut changed = !missing.is_empty();
        if changed {
            let roots = missing.iter().map(|(_, r)| Some(r.root_entry())).collect();
            let found = path_history(load, roots, components)?;
            known.extend(missing.iter().map(|(id, _)| *id).zip(found));
        }
        if let Some(catalogue) = self.known.lock().expect("not poisoned").as_ref() {
            let before = known.len();
            known.retain(|id, _| catalogue.records.contains_key(id));
            changed |= known.len() != before;
        }
        let history = checkpoints
            .iter()
            .map(|(id, _)| known.get(id).cloned().flatten())
            .collect();
        if changed {
            let written =
                crate::repo::backend::create_private_dir(&self.histories).and_then(|()| {
                    let plaintext = encode_path_history(components, &known);
                    write_private_atomically(&file, &codec.encode(&plaintext, true))
                });
            match written {
                Ok(()) => keep_newest_files(&self.histories, MAX_PATH_HISTORIES),
                Err(e) => tracing::info!("could not save a path history: {e}"),
            }
        }
        Ok(history)
    }

    /// The records in the file: none when it is missing or of another version, those
    /// before the damage when it is damaged or torn.
    fn read_file(&self, codec: &Codec) -> Known {
        let mut known = Known {
            records: HashMap::new(),
            stored: 0,
            rewrite: true,
        };
        if let Err(e) = self.try_read_file(codec, &mut known)
            && e.kind() != ErrorKind::NotFound
        {
            tracing::info!("rebuilding the checkpoint catalogue: {e}");
        }
        known
    }

    /// Reads the records of the file into `known`, up to the first that cannot be read
    /// (an error); `known.rewrite` is cleared only when every one could be.
    fn try_read_file(&self, codec: &Codec, known: &mut Known) -> Result<()> {
        let location = || self.path.display().to_string();
        let stored = read_bounded(&self.path, MAX_CATALOGUE_BYTES)?;
        let mut reader = Reader {
            rest: stored
                .strip_prefix(HEADER)
                .ok_or_else(|| Error::corrupt(location(), "not a catalogue of this version"))?,
            location: &location,
        };
        while !reader.rest.is_empty() {
            let plaintext = codec.decode(reader.framed()?, MAX_FRAME_BYTES, &location)?;
            let (id, json) = plaintext
                .split_at_checked(ID_BYTES)
                .ok_or_else(|| Error::corrupt(location(), "truncated record"))?;
            let id = CheckpointId::from_slice(id).expect("32 bytes");
            let record = checkpoint::decode(json, &format!("{} record {id}", location()))?;
            known.records.insert(id, Arc::new(record));
            known.stored += 1;
        }
        known.rewrite = false;
        Ok(())
    }

    /// Adds the records of `added` to `known` and to the file: appended when the file is
    /// sound and holds few stale records, the file written whole otherwise. A catalogue
    /// that cannot be written costs only reads on the next run, so a failure is logged,
    /// not returned.
    fn save(&self, codec: &Codec, known: &mut Known, added: Vec<(CheckpointId, Arc<Checkpoint>)>) {
        let live = known.records.len();
        let stale = known.stored.saturating_sub(live);
        let compact = known.rewrite || stale > STALE_RECORDS_KEPT.max(live / 4);
        if !compact && added.is_empty() {
            return;
        }
        let mut appended = Vec::new();
        for (id, record) in &added {
            push_framed(&mut appended, &encode_record(codec, id, record));
        }
        known.records.extend(added.iter().cloned());
        let written = if compact {
            self.write_whole(codec, known)
        } else {
            match append_synced(&self.path, &appended) {
                Ok(()) => {
                    known.stored += added.len();
                    Ok(())
                }
                // Removed or replaced by something unwritable meanwhile.
                Err(_) => self.write_whole(codec, known),
            }
        };
        if let Err(e) = written {
            tracing::info!("could not save the checkpoint catalogue: {e}");
            known.rewrite = true;
        }
    }

    /// Replaces the file with one holding the records of `known`.
    fn write_whole(&self, codec: &Codec, known: &mut Known) -> Result<()> {
        let mut bytes = HEADER.to_vec();
        for (id, record) in &known.records {
            push_framed(&mut bytes, &encode_record(codec, id, record));
        }
        write_private_atomically(&self.path, &bytes)?;
        known.stored = known.records.len();
        known.rewrite = false;
        Ok(())
    }
}

/// The stored form of record `id` in the file: its id and JSON, encoded by `codec`.
fn encode_record(codec: &Codec, id: &CheckpointId, record: &Checkpoint) -> Vec<u8> {
    let mut plaintext = id.0.to_vec();
    serde_json::to_writer(&mut plaintext, record).expect("checkpoints serialize");
    codec.encode(&plaintext, true)
}

/// Appends `bytes` to the existing file `path` in one write and syncs it. Writes with
/// `O_APPEND` of whole records by several processes do not interleave; the file is not
/// created, so a missing one is written whole (with its header) instead.
fn append_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_data()
        })
        .map_err(|e| Error::io(format!("appending to {}", path.display()), e))
}

/// The bytes of file `path`, refused when it holds more than `max_bytes`.
pub(crate) fn read_bounded(path: &Path, max_bytes: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| Error::io(path.display().to_string(), e))?;
    let mut bytes = Vec::new();
    file.take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path.display().to_string(), e))?;
    if bytes.len() as u64 > max_bytes {
        return Err(Error::corrupt(
            path.display().to_string(),
            format!("larger than {max_bytes} bytes"),
        ));
    }
    Ok(bytes)
}

/// Writes `bytes` to `path` (mode 0600) through a temporary file renamed over it, so readers
/// see the old file or the new one, never a part.
pub(crate) fn write_private_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let file_name = path.file_name().expect("a file path").to_string_lossy();
    let temporary = path.with_file_name(format!(
        ".{file_name}.{}-{}",
        std::process::id(),
        hex::encode(crate::crypto::random_bytes::<8>())
    ));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)
        .and_then(|mut file| file.write_all(bytes))
        .and_then(|()| std::fs::rename(&temporary, path));
    written.map_err(|e| {
        let _ = std::fs::remove_file(&temporary);
        Error::io(format!("writing {}", path.display()), e)
    })
}

/// The plaintext of the kept history of the path made of `components`.
fn encode_path_history(components: &[Vec<u8>], known: &PathEntries) -> Vec<u8> {
    let mut entries: Vec<Vec<u8>> = Vec::new();
    let mut indices: HashMap<Vec<u8>, u32> = HashMap::new();
    let mut by_checkpoint = Vec::with_capacity(known.len() * (ID_BYTES + 4));
    for (id, entry) in known {
        let index = match entry {
            None => ABSENT,
            Some(entry) => {
                let json = serde_json::to_vec(entry).expect("entries serialize");
                *indices.entry(json.clone()).or_insert_with(|| {
                    entries.push(json);
                    u32::try_from(entries.len() - 1).expect("fewer than 2^32 versions")
                })
            }
        };
        by_checkpoint.extend_from_slice(&id.0);
        by_checkpoint.extend_from_slice(&index.to_le_bytes());
    }
    let mut out = HISTORY_HEADER.to_vec();
    let path = components.join(&b'/');
    push_framed(&mut out, &path);
    let count = u32::try_from(entries.len()).expect("fewer than 2^32 versions");
    out.extend_from_slice(&count.to_le_bytes());
    for json in &entries {
        push_framed(&mut out, json);
    }
    out.extend_from_slice(&by_checkpoint);
    out
}

/// Appends `bytes` with its length (u32 LE) before it.
fn push_framed(out: &mut Vec<u8>, bytes: &[u8]) {
    let length = u32::try_from(bytes.len()).expect("shorter than 4 GiB");
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Reads the kept history of the path made of `components` from `file`.
fn read_path_history(file: &Path, codec: &Codec, components: &[Vec<u8>]) -> Result<PathEntries> {
    let location = || file.display().to_string();
    let stored = read_bounded(file, MAX_CATALOGUE_BYTES)?;
    let plaintext = codec.decode(&stored, MAX_CATALOGUE_BYTES, &location)?;
    let mut reader = Reader {
        rest: plaintext
            .strip_prefix(HISTORY_HEADER)
            .ok_or_else(|| Error::corrupt(location(), "not a path history of this version"))?,
        location: &location,
    };
    if reader.framed()? != components.join(&b'/') {
        return Err(Error::corrupt(location(), "the history of another path"));
    }
    let count = reader.u32()?;
    let mut entries = Vec::new();
    for _ in 0..count {
        let json = reader.framed()?;
        let entry: Entry =
            serde_json::from_slice(json).map_err(|e| Error::corrupt(location(), e.to_string()))?;
        entries.push(entry);
    }
    let mut known = HashMap::new();
    while !reader.rest.is_empty() {
        let id = CheckpointId::from_slice(reader.take(ID_BYTES)?).expect("32 bytes");
        let entry = match reader.u32()? {
            ABSENT => None,
            index => Some(
                entries
                    .get(index as usize)
                    .cloned()
                    .ok_or_else(|| Error::corrupt(location(), "entry index out of range"))?,
            ),
        };
        known.insert(id, entry);
    }
    Ok(known)
}

/// Reads the fields of a plaintext in turn, any short one an error naming the file.
struct Reader<'a> {
    rest: &'a [u8],
    location: &'a dyn Fn() -> String,
}

impl<'a> Reader<'a> {
    fn take(&mut self, length: usize) -> Result<&'a [u8]> {
        if self.rest.len() < length {
            return Err(Error::corrupt((self.location)(), "truncated"));
        }
        let (taken, rest) = self.rest.split_at(length);
        self.rest = rest;
        Ok(taken)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn framed(&mut self) -> Result<&'a [u8]> {
        let length = self.u32()? as usize;
        self.take(length)
    }
}

/// Removes the least recently modified files of `dir` beyond the newest `keep`.
fn keep_newest_files(dir: &Path, keep: usize) {
    let Ok(listing) = std::fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = listing
        .flatten()
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if files.len() <= keep {
        return;
    }
    files.sort();
    for (_, path) in &files[..files.len() - keep] {
        let _ = std::fs::remove_file(path);
    }
}
