//! The local catalogue: every checkpoint record of a repository, kept in the repository's
//! cache directory (`<cache>/<repository id>/`) so that commands which list checkpoints read
//! local files instead of every `checkpoints/<id>` object on every run, and read no more of
//! them than they need.
//!
//! Two files. `catalogue` is a log of whole records: a new record is appended (`O_APPEND`,
//! one write of whole records, then fsync), so saving a checkpoint costs the same at ten or
//! ten thousand. `catalogue.summary` holds, per live checkpoint in catalogue order, what
//! listing, ordering, filtering and naming need: its id, time, label (host, paths, tags,
//! the URL it was pulled from; each distinct label stored once), what `stat` says of its
//! root directory and where its record is in the log; with it the backend's listing token
//! of `checkpoints/` at which it was complete (see `Backend::listing_token`). A command
//! reads the summary whole (one decode) and records one by one at their offsets, each
//! checked against its id; a record that cannot be read there is read from the repository.
//!
//! The repository decides what exists: a sync lists `checkpoints/` once, reads (and checks
//! against its id) only the records the catalogue does not hold, and drops those no longer
//! listed; when the backend gives a listing token equal to the summary's, nothing was added
//! or removed and the listing is skipped. Records never change once written, so a record
//! checked once stays true. Records no longer listed stay in the log until they outnumber a
//! quarter of the live ones (and `STALE_RECORDS_KEPT`); then, or when the log is missing,
//! damaged or torn, it is written whole (live records copied as they are stored) to a
//! temporary name and renamed over the old one, and the summary after it. Processes sharing
//! the cache (a mount running for days, `list` and `backup` beside it) need no lock:
//! appends of whole records do not interleave, both files are replaced by rename, every
//! version of the summary is a correct subset of the repository at its token (a stale token
//! only costs a listing), and a record found at an offset is used only if it is the record
//! asked for (if not, it is looked for where the summary file now places it, then in the
//! repository). Reading the log stops at the first record that cannot be read (a torn tail of
//! a killed writer); what came before is kept and the log is written whole at the next
//! save. Missing or unreadable files are an empty catalogue, rebuilt from the repository
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
//! Every record, summary and path history is encoded by the repository's codec: sealed under
//! the master key when the repository is encrypted (records name hosts and paths), private
//! (0600 in the 0700 cache directory) in every case. The log is the line `HEADER`, then per
//! record its stored form (the id and the record's JSON, encoded) with its length (u32 LE)
//! before it. The summary's plaintext is the line `SUMMARY_HEADER`, the listing token
//! (framed; empty for none), the number of records in the log (u64 LE), the labels (u32 LE
//! count, each framed JSON), then per checkpoint its id, label index (u32 LE), record offset
//! (u64 LE; `u64::MAX` for none) and frame length (u32 LE), framed time, and its root's
//! mode, uid, gid (u32 LE), size (u64 LE), mtime and ctime (nanoseconds, i128 LE) and
//! whether it has extended attributes (one byte, 0 or 1).

use crate::checkpoint::{self, Checkpoint, Label, RootStat};
use crate::error::{Error, ErrorKind, Missing, Result};
use crate::history::{PathHistory, TreeLoader, path_history};
use crate::id::{CheckpointId, ID_BYTES};
use crate::repo::Repository;
use crate::repo::codec::Codec;
use crate::repo::objects::ObjectKind;
use crate::tree::Entry;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The first bytes of the log; a file that starts otherwise is rebuilt.
const HEADER: &[u8] = b"cairn catalogue log 2\n";

/// The first line of the summary's plaintext.
const SUMMARY_HEADER: &[u8] = b"cairn catalogue summary 2\n";

/// The largest catalogue file read: far more than a million checkpoint records.
const MAX_CATALOGUE_BYTES: u64 = 4 << 30;

/// The largest stored record the log may hold: a checkpoint record (16 MiB at most) with
/// its id and the codec's framing.
const MAX_FRAME_BYTES: u64 = (16 << 20) + 4096;

/// Stale records (forgotten, or appended twice by racing processes) the log may hold
/// beyond a quarter of its live ones before it is compacted.
const STALE_RECORDS_KEPT: usize = 64;

/// Records wanted at once beyond which the log is read whole rather than record by record.
const RECORDS_READ_ONE_BY_ONE: usize = 32;

/// The first line of a path history's plaintext.
const HISTORY_HEADER: &[u8] = b"cairn path history 1\n";

/// Path histories kept; the least recently written beyond these are removed.
const MAX_PATH_HISTORIES: usize = 256;

/// The entry index of a checkpoint where the path is absent.
const ABSENT: u32 = u32::MAX;

/// The record offset of a checkpoint the log does not hold.
const NOT_STORED: u64 = u64::MAX;

/// The entry at one path by checkpoint.
type PathEntries = HashMap<CheckpointId, Option<Arc<Entry>>>;

/// What the catalogue holds of one checkpoint without reading its record: enough to list,
/// order, filter and name it.
#[derive(Debug, Clone)]
pub struct Summary {
    pub id: CheckpointId,
    /// RFC 3339 UTC, as in the record.
    pub time: String,
    pub label: Arc<Label>,
    pub root: RootStat,
    /// Where the record is in the log: offset of its frame and the frame's length.
    stored_at: Option<(u64, u32)>,
}

impl Summary {
    fn of(id: CheckpointId, record: &Checkpoint, stored_at: Option<(u64, u32)>) -> Self {
        Summary {
            id,
            time: record.time.clone(),
            label: Arc::new(record.label()),
            root: record.root_stat(),
            stored_at,
        }
    }

    /// The order of the catalogue: oldest first, ties broken by id.
    fn order(&self, other: &Summary) -> std::cmp::Ordering {
        self.time.cmp(&other.time).then(self.id.cmp(&other.id))
    }
}

/// Checkpoints in catalogue order, shared.
pub(crate) type Listing = Vec<Arc<Summary>>;

/// What a sync found: the checkpoints whose records could be read, in catalogue order, and
/// those listed whose records could not (with why).
pub struct Synced {
    pub checkpoints: Listing,
    pub unreadable: Vec<UnreadableRecord>,
}

/// A listed checkpoint whose record could not be read, and why.
#[derive(Debug)]
pub struct UnreadableRecord {
    pub id: CheckpointId,
    pub error: Error,
}

/// The catalogue of one repository: its files, and the summaries as this process last knew
/// them (read from the files on first use).
pub struct Catalogue {
    path: PathBuf,
    summary_path: PathBuf,
    histories: PathBuf,
    known: Mutex<Option<Known>>,
}

/// The checkpoints as this process knows them, and what it knows of the files.
struct Known {
    /// In catalogue order.
    summaries: Listing,
    /// The listing token of `checkpoints/` at which `summaries` held every checkpoint.
    token: Option<String>,
    /// The records the log holds, stale ones included.
    stored: usize,
    /// Whether the log must be written whole before records are appended to it: it is
    /// missing, of another version, damaged or torn.
    rewrite: bool,
    /// Whether the summary file lacks what `summaries` holds.
    summary_stale: bool,
}

impl Known {
    /// Nothing known, both files to be written.
    fn nothing() -> Self {
        Known {
            summaries: Vec::new(),
            token: None,
            stored: 0,
            rewrite: true,
            summary_stale: true,
        }
    }
}

impl Catalogue {
    /// The catalogue kept in cache directory `dir` (which must exist and be private).
    pub fn in_dir(dir: &Path) -> Self {
        Catalogue {
            path: dir.join("catalogue"),
            summary_path: dir.join("catalogue.summary"),
            histories: dir.join("histories"),
            known: Mutex::new(None),
        }
    }

    /// Brings the catalogue up to date with one listing of `checkpoints/` in `repo`, or
    /// with none when the backend's listing token shows nothing changed since the last.
    pub fn sync(&self, repo: &Repository) -> Result<Synced> {
        let token = repo
            .backend()
            .listing_token(ObjectKind::Checkpoint.prefix());
        let mut guard = self.known.lock().expect("not poisoned");
        let known = guard.get_or_insert_with(|| self.read_files(repo.codec()));
        if token.is_some() && token == known.token {
            return Ok(Synced {
                checkpoints: known.summaries.clone(),
                unreadable: Vec::new(),
            });
        }
        let listed: HashSet<CheckpointId> = checkpoint::list_ids(repo)?.into_iter().collect();
        let before = known.summaries.len();
        known.summaries.retain(|s| listed.contains(&s.id));
        let held: HashSet<CheckpointId> = known.summaries.iter().map(|s| s.id).collect();
        let mut added = Vec::new();
        let mut unreadable = Vec::new();
        for id in listed.difference(&held) {
            match checkpoint::load(repo, id) {
                Ok(record) => added.push((*id, record)),
                // Forgotten since it was listed.
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(error) => unreadable.push(UnreadableRecord { id: *id, error }),
            }
        }
        // Unreadable records are looked for again by the next sync.
        let token = token.filter(|_| unreadable.is_empty());
        known.summary_stale |= known.summaries.len() != before || token != known.token;
        known.token = token;
        self.save(repo.codec(), known, added);
        Ok(Synced {
            checkpoints: known.summaries.clone(),
            unreadable,
        })
    }

    /// The checkpoints the catalogue holds, without asking the repository when it holds
    /// any (none: a sync): for a backup's parent, where one missed by the catalogue only
    /// costs reading files the parent would have let it skip.
    pub fn known(&self, repo: &Repository) -> Result<Listing> {
        {
            let mut guard = self.known.lock().expect("not poisoned");
            let known = guard.get_or_insert_with(|| self.read_files(repo.codec()));
            if !known.summaries.is_empty() {
                return Ok(known.summaries.clone());
            }
        }
        Ok(self.sync(repo)?.checkpoints)
    }

    /// Adds record `id`, just written to the repository by this process, so no later run
    /// reads it back.
    pub fn insert(&self, codec: &Codec, id: CheckpointId, record: &Checkpoint) {
        let mut guard = self.known.lock().expect("not poisoned");
        let known = guard.get_or_insert_with(|| self.read_files(codec));
        if !known.summaries.iter().any(|s| s.id == id) {
            self.save(codec, known, vec![(id, record.clone())]);
        }
    }

    /// The record of `summary`, from the log when it is there and is that record, from the
    /// repository otherwise (and then written to the log again).
    pub fn record(&self, repo: &Repository, summary: &Summary) -> Result<Checkpoint> {
        let frame = summary.stored_at.and_then(|place| self.frame_at(place));
        let mut read_again = Vec::new();
        let record = self.record_from(repo, summary, frame.as_deref(), &mut read_again)?;
        self.store_again(repo.codec(), read_again);
        Ok(record)
    }

    /// The records of `summaries`, in their order (see [`Catalogue::record`]); many are
    /// read from the log in one read of it.
    pub fn records(
        &self,
        repo: &Repository,
        summaries: &[Arc<Summary>],
    ) -> Result<Vec<Checkpoint>> {
        if summaries.len() <= RECORDS_READ_ONE_BY_ONE {
            return summaries.iter().map(|s| self.record(repo, s)).collect();
        }
        let log = read_bounded(&self.path, MAX_CATALOGUE_BYTES).unwrap_or_default();
        let mut read_again = Vec::new();
        let records = summaries
            .iter()
            .map(|summary| {
                let frame = summary.stored_at.and_then(|place| frame_in(&log, place));
                self.record_from(repo, summary, frame, &mut read_again)
            })
            .collect();
        self.store_again(repo.codec(), read_again);
        records
    }

    /// The record of `summary` from `frame` (its framed stored form, if the log had one
    /// where the summary says) when it is that record; from the repository otherwise, and
    /// then pushed to `read_again`.
    fn record_from(
        &self,
        repo: &Repository,
        summary: &Summary,
        frame: Option<&[u8]>,
        read_again: &mut Vec<(CheckpointId, Checkpoint)>,
    ) -> Result<Checkpoint> {
        let from_log = frame
            .ok_or_else(|| {
                Error::not_found(
                    Missing::LocalPath(self.path.clone()),
                    self.path.display().to_string(),
                )
            })
            .and_then(|frame| self.checked_record(repo.codec(), &summary.id, frame));
        let error = match from_log {
            Ok(record) => return Ok(record),
            Err(e) => e,
        };
        // Another process may have written the log whole since this one read the summary.
        let moved = self
            .place_now(repo.codec(), &summary.id, summary.stored_at)
            .and_then(|place| self.frame_at(place))
            .and_then(|frame| self.checked_record(repo.codec(), &summary.id, &frame).ok());
        if let Some(record) = moved {
            return Ok(record);
        }
        tracing::debug!(
            "reading checkpoint {} from the repository: {error}",
            summary.id
        );
        let record = checkpoint::load(repo, &summary.id)?;
        read_again.push((summary.id, record.clone()));
        Ok(record)
    }

    /// Record `id` from `frame` (its framed stored form), if that is what the frame holds.
    fn checked_record(&self, codec: &Codec, id: &CheckpointId, frame: &[u8]) -> Result<Checkpoint> {
        let location = || self.path.display().to_string();
        let mut reader = Reader {
            rest: frame,
            location: &location,
        };
        let (found, record) = decode_record(codec, reader.framed()?, &location)?;
        if found == *id {
            Ok(record)
        } else {
            Err(Error::corrupt(
                location(),
                "another record where the summary says",
            ))
        }
    }

    /// The frame of `length` bytes (and its length) at `offset` in the log.
    fn frame_at(&self, (offset, length): (u64, u32)) -> Option<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::open(&self.path).ok()?;
        let mut frame = vec![0; length as usize + 4];
        file.read_exact_at(&mut frame, offset).ok()?;
        Some(frame)
    }

    /// Where the log holds record `id` now, when that is not `stale`: the summary file is
    /// read again when the one this process knows places it at `stale` too.
    fn place_now(
        &self,
        codec: &Codec,
        id: &CheckpointId,
        stale: Option<(u64, u32)>,
    ) -> Option<(u64, u32)> {
        let mut guard = self.known.lock().expect("not poisoned");
        let known = guard.get_or_insert_with(|| self.read_files(codec));
        let place = |known: &Known| {
            let summary = known.summaries.iter().find(|s| s.id == *id)?;
            summary.stored_at
        };
        if place(known) == stale
            && !known.summary_stale
            && let Ok(fresh) = self.read_summary(codec)
        {
            *known = fresh;
        }
        place(known).filter(|found| Some(*found) != stale)
    }

    /// Writes `records`, which the log should have held and did not (it was lost, damaged
    /// or torn), into a log written whole.
    fn store_again(&self, codec: &Codec, records: Vec<(CheckpointId, Checkpoint)>) {
        if records.is_empty() {
            return;
        }
        let mut guard = self.known.lock().expect("not poisoned");
        let known = guard.get_or_insert_with(|| self.read_files(codec));
        let ids: HashSet<CheckpointId> = records.iter().map(|(id, _)| *id).collect();
        let live: HashSet<CheckpointId> = known
            .summaries
            .iter()
            .map(|s| s.id)
            .filter(|id| ids.contains(id))
            .collect();
        known.summaries.retain(|s| !live.contains(&s.id));
        known.rewrite = true;
        let records = records
            .into_iter()
            .filter(|(id, _)| live.contains(id))
            .collect();
        self.save(codec, known, records);
    }

    /// The entry at the path made of `components` in each of `checkpoints` (in their
    /// order), reading records and trees (with `load`) only for checkpoints the kept
    /// history of that path lacks.
    pub fn path_history(
        &self,
        repo: &Repository,
        checkpoints: &[Arc<Summary>],
        components: &[Vec<u8>],
        load: &TreeLoader,
    ) -> Result<PathHistory> {
        let codec = repo.codec();
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
        let missing: Vec<Arc<Summary>> = checkpoints
            .iter()
            .filter(|s| !known.contains_key(&s.id))
            .cloned()
            .collect();
        let mut changed = !missing.is_empty();
        if changed {
            let records = self.records(repo, &missing)?;
            let roots = records
                .iter()
                .map(|r| Some(Arc::new(r.root_entry())))
                .collect();
            let found = path_history(load, roots, components)?;
            known.extend(missing.iter().map(|s| s.id).zip(found));
        }
        if let Some(catalogue) = self.known.lock().expect("not poisoned").as_ref()
            && known.len() > catalogue.summaries.len()
        {
            // Holds more than every live checkpoint: some were forgotten.
            let live: HashSet<CheckpointId> = catalogue.summaries.iter().map(|s| s.id).collect();
            let before = known.len();
            known.retain(|id, _| live.contains(id));
            changed |= known.len() != before;
        }
        let history = checkpoints
            .iter()
            .map(|s| known.get(&s.id).cloned().flatten())
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

    /// What the files hold: the summary when it can be read, else the records of the log
    /// (none when it is missing or of another version, those before the damage when it is
    /// damaged or torn).
    fn read_files(&self, codec: &Codec) -> Known {
        match self.read_summary(codec) {
            Ok(known) => return known,
            Err(e) if e.kind() != ErrorKind::NotFound => {
                tracing::info!("rebuilding the checkpoint catalogue's summary: {e}")
            }
            Err(_) => {}
        }
        let mut known = Known::nothing();
        if let Err(e) = self.read_log(codec, &mut known)
            && e.kind() != ErrorKind::NotFound
        {
            tracing::info!("rebuilding the checkpoint catalogue: {e}");
        }
        known.summaries.sort_by(|a, b| a.order(b));
        known
    }

    /// Reads the summaries of the records of the log into `known`, up to the first that
    /// cannot be read (an error); `known.rewrite` is cleared only when every one could be.
    fn read_log(&self, codec: &Codec, known: &mut Known) -> Result<()> {
        let location = || self.path.display().to_string();
        let stored = read_bounded(&self.path, MAX_CATALOGUE_BYTES)?;
        decode_log(&stored, codec, &location, known)
    }

    /// Reads the summary file.
    fn read_summary(&self, codec: &Codec) -> Result<Known> {
        let location = || self.summary_path.display().to_string();
        let stored = read_bounded(&self.summary_path, MAX_CATALOGUE_BYTES)?;
        decode_summary(
            &codec.decode(&stored, MAX_CATALOGUE_BYTES, &location)?,
            &location,
        )
    }

    /// Writes the summary file from `known`.
    fn write_summary(&self, codec: &Codec, known: &Known) -> Result<()> {
        let mut labels: Vec<&Label> = Vec::new();
        let mut label_indices: HashMap<&Label, u32> = HashMap::new();
        let mut checkpoints = Vec::with_capacity(known.summaries.len() * 96);
        for summary in &known.summaries {
            let index = *label_indices.entry(&summary.label).or_insert_with(|| {
                labels.push(&summary.label);
                u32::try_from(labels.len() - 1).expect("fewer than 2^32 labels")
            });
            checkpoints.extend_from_slice(&summary.id.0);
            checkpoints.extend_from_slice(&index.to_le_bytes());
            let (offset, length) = summary.stored_at.unwrap_or((NOT_STORED, 0));
            checkpoints.extend_from_slice(&offset.to_le_bytes());
            checkpoints.extend_from_slice(&length.to_le_bytes());
            push_framed(&mut checkpoints, summary.time.as_bytes());
            let root = &summary.root;
            for field in [root.mode, root.uid, root.gid] {
                checkpoints.extend_from_slice(&field.to_le_bytes());
            }
            checkpoints.extend_from_slice(&root.size.to_le_bytes());
            checkpoints.extend_from_slice(&root.mtime_ns.to_le_bytes());
            checkpoints.extend_from_slice(&root.ctime_ns.to_le_bytes());
            checkpoints.push(u8::from(root.has_xattrs));
        }
        let mut plaintext = SUMMARY_HEADER.to_vec();
        push_framed(
            &mut plaintext,
            known.token.as_deref().unwrap_or_default().as_bytes(),
        );
        plaintext.extend_from_slice(&(known.stored as u64).to_le_bytes());
        let count = u32::try_from(labels.len()).expect("fewer than 2^32 labels");
        plaintext.extend_from_slice(&count.to_le_bytes());
        for label in labels {
            push_framed(
                &mut plaintext,
                &serde_json::to_vec(label).expect("labels serialize"),
            );
        }
        plaintext.extend_from_slice(&checkpoints);
        write_private_atomically(&self.summary_path, &codec.encode(&plaintext, false))
    }

    /// Adds the records of `added` to `known` and to the log (appended when the log is
    /// sound and holds few stale records, the log written whole otherwise), then writes
    /// the summary if it changed. A catalogue that cannot be written costs only reads on
    /// the next run, so a failure is logged, not returned.
    fn save(&self, codec: &Codec, known: &mut Known, added: Vec<(CheckpointId, Checkpoint)>) {
        let live = known.summaries.len() + added.len();
        let stale = known.stored.saturating_sub(known.summaries.len());
        let compact = known.rewrite || stale > STALE_RECORDS_KEPT.max(live / 4);
        if !compact && added.is_empty() && !known.summary_stale {
            return;
        }
        let frames: Vec<Vec<u8>> = added
            .iter()
            .map(|(id, record)| encode_record(codec, id, record))
            .collect();
        let written = if compact {
            self.write_whole(codec, known, &added, &frames)
        } else {
            let mut appended = Vec::new();
            for frame in &frames {
                push_framed(&mut appended, frame);
            }
            match append_synced(&self.path, &appended) {
                Ok(start) => {
                    let mut offset = start;
                    for ((id, record), frame) in added.iter().zip(&frames) {
                        let length = frame.len() as u32;
                        insert_ordered(known, Summary::of(*id, record, Some((offset, length))));
                        offset += u64::from(length) + 4;
                    }
                    known.stored += added.len();
                    Ok(())
                }
                // Removed or replaced by something unwritable meanwhile.
                Err(_) => self.write_whole(codec, known, &added, &frames),
            }
        };
        if let Err(e) = written {
            tracing::info!("could not save the checkpoint catalogue: {e}");
            known.rewrite = true;
            for (id, record) in &added {
                insert_ordered(known, Summary::of(*id, record, None));
            }
        }
        match self.write_summary(codec, known) {
            Ok(()) => known.summary_stale = false,
            Err(e) => tracing::info!("could not save the checkpoint catalogue's summary: {e}"),
        }
    }

    /// Replaces the log with one holding the live records of `known` (copied as the old
    /// log stores them, each checked to be the record its summary names) and those of
    /// `added` (stored as `frames`). A live record the old log does not hold where its
    /// summary says is left out of the new one, to be read from the repository.
    fn write_whole(
        &self,
        codec: &Codec,
        known: &mut Known,
        added: &[(CheckpointId, Checkpoint)],
        frames: &[Vec<u8>],
    ) -> Result<()> {
        let old = read_bounded(&self.path, MAX_CATALOGUE_BYTES).unwrap_or_default();
        let mut bytes = HEADER.to_vec();
        let mut summaries = Vec::with_capacity(known.summaries.len() + added.len());
        for summary in &known.summaries {
            // Only frames that hold the record the summary names are kept.
            let frame = summary
                .stored_at
                .and_then(|place| frame_in(&old, place))
                .filter(|frame| self.checked_record(codec, &summary.id, frame).is_ok());
            let stored_at = frame.map(|frame| {
                let offset = bytes.len() as u64;
                bytes.extend_from_slice(frame);
                (offset, (frame.len() - 4) as u32)
            });
            summaries.push(Arc::new(Summary {
                stored_at,
                ..Summary::clone(summary)
            }));
        }
        let mut placed = Vec::with_capacity(added.len());
        for ((id, record), frame) in added.iter().zip(frames) {
            let offset = bytes.len() as u64;
            push_framed(&mut bytes, frame);
            placed.push(Summary::of(*id, record, Some((offset, frame.len() as u32))));
        }
        write_private_atomically(&self.path, &bytes)?;
        known.summaries = summaries;
        for summary in placed {
            insert_ordered(known, summary);
        }
        known.stored = known
            .summaries
            .iter()
            .filter(|s| s.stored_at.is_some())
            .count();
        known.rewrite = false;
        known.summary_stale = true;
        Ok(())
    }
}

/// Reads the summaries of the records of log `stored` into `known` (see
/// `Catalogue::read_log`).
fn decode_log(
    stored: &[u8],
    codec: &Codec,
    location: &dyn Fn() -> String,
    known: &mut Known,
) -> Result<()> {
    let records = stored
        .strip_prefix(HEADER)
        .ok_or_else(|| Error::corrupt(location(), "not a catalogue of this version"))?;
    let mut reader = Reader {
        rest: records,
        location,
    };
    let mut seen = HashSet::new();
    while !reader.rest.is_empty() {
        let offset = (stored.len() - reader.rest.len()) as u64;
        let frame = reader.framed()?;
        let (id, record) = decode_record(codec, frame, location)?;
        let length = u32::try_from(frame.len()).expect("framed with a u32 length");
        if seen.insert(id) {
            known
                .summaries
                .push(Arc::new(Summary::of(id, &record, Some((offset, length)))));
        }
        known.stored += 1;
    }
    known.rewrite = false;
    Ok(())
}

/// Parses the plaintext of a summary file.
fn decode_summary(plaintext: &[u8], location: &dyn Fn() -> String) -> Result<Known> {
    let mut reader = Reader {
        rest: plaintext
            .strip_prefix(SUMMARY_HEADER)
            .ok_or_else(|| Error::corrupt(location(), "not a catalogue summary of this version"))?,
        location,
    };
    let token = reader.framed()?;
    let token = (!token.is_empty()).then(|| String::from_utf8_lossy(token).into_owned());
    let stored_records = reader.u64()?;
    let mut labels = Vec::new();
    for _ in 0..reader.u32()? {
        let label: Label = serde_json::from_slice(reader.framed()?)
            .map_err(|e| Error::corrupt(location(), e.to_string()))?;
        labels.push(Arc::new(label));
    }
    let mut summaries = Vec::new();
    while !reader.rest.is_empty() {
        let id = CheckpointId::from_slice(reader.take(ID_BYTES)?).expect("32 bytes");
        let label = labels
            .get(reader.u32()? as usize)
            .ok_or_else(|| Error::corrupt(location(), "label index out of range"))?
            .clone();
        let offset = reader.u64()?;
        let length = reader.u32()?;
        let time = String::from_utf8(reader.framed()?.to_vec())
            .map_err(|e| Error::corrupt(location(), e.to_string()))?;
        let root = RootStat {
            mode: reader.u32()?,
            uid: reader.u32()?,
            gid: reader.u32()?,
            size: reader.u64()?,
            mtime_ns: reader.i128()?,
            ctime_ns: reader.i128()?,
            has_xattrs: match reader.take(1)? {
                [0] => false,
                [1] => true,
                _ => return Err(Error::corrupt(location(), "bad root xattrs flag")),
            },
        };
        summaries.push(Arc::new(Summary {
            id,
            time,
            label,
            root,
            stored_at: (offset != NOT_STORED).then_some((offset, length)),
        }));
    }
    if !summaries.is_sorted_by(|a, b| a.order(b).is_lt()) {
        return Err(Error::corrupt(location(), "checkpoints out of order"));
    }
    Ok(Known {
        summaries,
        token,
        stored: usize::try_from(stored_records).unwrap_or(usize::MAX),
        rewrite: false,
        summary_stale: false,
    })
}

/// The decoders of the catalogue's files, for `crate::fuzzing`.
pub(crate) mod decoders {
    use super::*;

    /// The log, through `codec`.
    pub(crate) fn log(stored: &[u8], codec: &Codec, location: &dyn Fn() -> String) {
        let mut known = Known::nothing();
        let _ = decode_log(stored, codec, location, &mut known);
    }

    /// A summary's plaintext.
    pub(crate) fn summary(plaintext: &[u8], location: &dyn Fn() -> String) {
        let _ = decode_summary(plaintext, location);
    }

    /// A path history's plaintext, for the path it names (its first frame, when there is
    /// one) and for another.
    pub(crate) fn path_history(plaintext: &[u8], location: &dyn Fn() -> String) {
        let named = plaintext
            .strip_prefix(HISTORY_HEADER)
            .and_then(|rest| {
                let length = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
                rest.get(4..4 + length)
            })
            .unwrap_or_default();
        let components: Vec<Vec<u8>> = named.split(|b| *b == b'/').map(<[u8]>::to_vec).collect();
        let _ = decode_path_history(plaintext, &components, location);
        let _ = decode_path_history(plaintext, &[b"other".to_vec()], location);
    }
}

/// The frame of `length` bytes (and its length) at `offset` in `log`, a log read whole.
fn frame_in(log: &[u8], (offset, length): (u64, u32)) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    log.get(start..start.checked_add(length as usize + 4)?)
}

/// Inserts `summary` into `known.summaries` at its place in catalogue order.
fn insert_ordered(known: &mut Known, summary: Summary) {
    let at = known
        .summaries
        .partition_point(|s| s.order(&summary).is_lt());
    known.summaries.insert(at, Arc::new(summary));
    known.summary_stale = true;
}

/// The stored form of record `id` in the log: its id and JSON, encoded by `codec`, not
/// compressed (a record alone compresses little, and `list` and the mount's `checkpoints/`
/// decode every one).
fn encode_record(codec: &Codec, id: &CheckpointId, record: &Checkpoint) -> Vec<u8> {
    let mut plaintext = id.0.to_vec();
    serde_json::to_writer(&mut plaintext, record).expect("checkpoints serialize");
    codec.encode(&plaintext, false)
}

/// The id and record of a stored record of the log, checked against its id.
fn decode_record(
    codec: &Codec,
    stored: &[u8],
    location: &dyn Fn() -> String,
) -> Result<(CheckpointId, Checkpoint)> {
    let plaintext = codec.decode(stored, MAX_FRAME_BYTES, location)?;
    let (id, json) = plaintext
        .split_at_checked(ID_BYTES)
        .ok_or_else(|| Error::corrupt(location(), "truncated record"))?;
    let id = CheckpointId::from_slice(id).expect("32 bytes");
    if codec.id_of(json) != id.0 {
        return Err(Error::corrupt(
            location(),
            format!("record {id} does not match its id"),
        ));
    }
    let record = checkpoint::decode(json, &format!("{} record {id}", location()))?;
    Ok((id, record))
}

/// Appends `bytes` to the existing file `path` in one write, syncs it, and returns the
/// offset the bytes start at. Writes with `O_APPEND` of whole records by several processes
/// do not interleave, and leave the file offset at the end of this one's bytes; the file is
/// not created, so a missing one is written whole (with its header) instead.
fn append_synced(path: &Path, bytes: &[u8]) -> Result<u64> {
    use std::io::{Seek, Write};
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_data()?;
            Ok(file.stream_position()? - bytes.len() as u64)
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

/// The plaintext of the kept history of the path made of `components`. Entries shared by
/// checkpoints (one `Arc` each) are encoded once; equal ones held apart are found by their
/// JSON.
fn encode_path_history(components: &[Vec<u8>], known: &PathEntries) -> Vec<u8> {
    let mut entries: Vec<Vec<u8>> = Vec::new();
    let mut by_json: HashMap<Vec<u8>, u32> = HashMap::new();
    let mut by_pointer: HashMap<*const Entry, u32> = HashMap::new();
    let mut by_checkpoint = Vec::with_capacity(known.len() * (ID_BYTES + 4));
    for (id, entry) in known {
        let index = match entry {
            None => ABSENT,
            Some(entry) => *by_pointer.entry(Arc::as_ptr(entry)).or_insert_with(|| {
                let json = serde_json::to_vec(entry.as_ref()).expect("entries serialize");
                *by_json.entry(json.clone()).or_insert_with(|| {
                    entries.push(json);
                    u32::try_from(entries.len() - 1).expect("fewer than 2^32 versions")
                })
            }),
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
    decode_path_history(&plaintext, components, &location)
}

/// Parses the plaintext of the kept history of the path made of `components`.
fn decode_path_history(
    plaintext: &[u8],
    components: &[Vec<u8>],
    location: &dyn Fn() -> String,
) -> Result<PathEntries> {
    let mut reader = Reader {
        rest: plaintext
            .strip_prefix(HISTORY_HEADER)
            .ok_or_else(|| Error::corrupt(location(), "not a path history of this version"))?,
        location,
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
        entries.push(Arc::new(entry));
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

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn i128(&mut self) -> Result<i128> {
        Ok(i128::from_le_bytes(
            self.take(16)?.try_into().expect("16 bytes"),
        ))
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
