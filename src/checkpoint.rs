//! Checkpoint records and the catalogue. A checkpoint names the root tree of one backup with
//! when, where and what was backed up, its parent and its statistics. It is stored as
//! `checkpoints/<id>`, where the id is the (keyed) hash of the record's JSON, and it is written
//! only after every blob it references is durable (invariant 1). References accepted
//! everywhere: a full id, a unique prefix of 4 or more hex digits, or `latest`: the newest
//! checkpoint a [`CheckpointFilter`] lets through (host, paths, tags; all of them by default).

use crate::catalogue::Listing;
pub use crate::catalogue::Summary;
use crate::error::{Error, Missing, Result};
use crate::id::{CheckpointId, TreeId};
use crate::repo::Repository;
use crate::repo::objects::ObjectKind;
use crate::tree::{Entry, EntryKind};
use serde::{Deserialize, Serialize};

/// What a backup did, stored in its checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointStats {
    pub files: u64,
    pub dirs: u64,
    /// Total size of the regular files in the checkpoint.
    pub bytes: u64,
    /// Bytes read from the source (files the stat cache skipped are not read).
    pub bytes_read: u64,
    /// Bytes of new packs written to the repository.
    pub added_bytes: u64,
    pub added_blobs: u64,
    /// Files or directories that could not be read and are missing from the checkpoint.
    pub errors: u64,
    pub duration_ms: u64,
}

/// One checkpoint record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// RFC 3339 UTC with nanoseconds; sorts lexically in time order.
    pub time: String,
    pub host: String,
    pub paths: Vec<String>,
    pub tags: Vec<String>,
    pub tree: TreeId,
    /// The backed-up directory's own entry (name, mode, owner, times, xattrs) when the
    /// checkpoint is of one directory; its kind is `Dir(tree)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<Entry>,
    pub parent: Option<CheckpointId>,
    pub stats: CheckpointStats,
    pub program_version: String,
    /// For a checkpoint pulled from a served source: the URL it was pulled from (`host` and
    /// `paths` name the machine and directory it lives on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pulled_from: Option<String>,
}

impl Checkpoint {
    /// The server a pulled checkpoint came from (see [`server_of`]); `None` for a local
    /// backup.
    pub fn pulled_from_server(&self) -> Option<&str> {
        server_of(self.pulled_from.as_deref())
    }

    /// What makes checkpoints one series: the stat cache of the next run, `forget`'s policies
    /// and which `latest` a note names. The host and paths, and for a pull the server it came
    /// from: a server names the host and paths it records, so its pulls never join the series
    /// of local backups (nor of another server's pulls) that they claim.
    pub fn series(&self) -> Series<'_> {
        Series {
            host: &self.host,
            paths: &self.paths,
            server: self.pulled_from_server(),
        }
    }

    /// The fields that name the checkpoint's series and that filters choose it by.
    pub fn label(&self) -> Label {
        Label {
            host: self.host.clone(),
            paths: self.paths.clone(),
            tags: self.tags.clone(),
            pulled_from: self.pulled_from.clone(),
        }
    }

    /// The directory entry of the checkpoint's root.
    pub fn root_entry(&self) -> Entry {
        self.root
            .clone()
            .unwrap_or_else(|| crate::tree::root_entry(self.tree))
    }

    /// What `stat` says of the checkpoint's root directory: its own entry's, dated by the
    /// checkpoint when the root has no metadata of its own (a checkpoint of several paths).
    pub fn root_stat(&self) -> RootStat {
        let root = self.root_entry();
        let (mtime_ns, ctime_ns) = if root.name.is_empty() {
            let time = crate::timestamp::parse_rfc3339(&self.time).unwrap_or(0);
            (time, time)
        } else {
            (root.mtime_ns, root.ctime_ns)
        };
        RootStat {
            mode: root.mode,
            uid: root.uid,
            gid: root.gid,
            size: root.size,
            mtime_ns,
            ctime_ns,
            has_xattrs: !root.xattrs.is_empty(),
        }
    }
}

/// What `stat` says of a checkpoint's root directory, which the local catalogue keeps for
/// every checkpoint so that listing them (the mount's `checkpoints/`) reads no record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RootStat {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    /// Whether the root has extended attributes (read from the record when asked for).
    pub has_xattrs: bool,
}

/// The host of URL `pulled_from` (without scheme, port or path): the server a pulled
/// checkpoint came from.
fn server_of(pulled_from: Option<&str>) -> Option<&str> {
    let url = pulled_from?;
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or_default();
    Some(match authority.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    })
}

/// The fields of a checkpoint that name its series and that filters choose it by, which the
/// local catalogue keeps for every checkpoint without its whole record.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Label {
    pub host: String,
    pub paths: Vec<String>,
    pub tags: Vec<String>,
    pub pulled_from: Option<String>,
}

impl Label {
    /// The series of the checkpoint (see [`Checkpoint::series`]).
    pub fn series(&self) -> Series<'_> {
        Series {
            host: &self.host,
            paths: &self.paths,
            server: server_of(self.pulled_from.as_deref()),
        }
    }
}

/// What makes checkpoints one series (see [`Checkpoint::series`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Series<'a> {
    pub host: &'a str,
    pub paths: &'a [String],
    /// The server a pulled checkpoint came from; `None` for a local backup.
    pub server: Option<&'a str>,
}

fn object_name(id: &CheckpointId) -> String {
    ObjectKind::Checkpoint.name(&id.to_string())
}

/// Stores `checkpoint` and returns its id; the local catalogue learns it too.
pub fn save(repo: &Repository, checkpoint: &Checkpoint) -> Result<CheckpointId> {
    let json = serde_json::to_vec(checkpoint).expect("checkpoints serialize");
    let id = CheckpointId(repo.codec().id_of(&json));
    repo.backend()
        .put(&object_name(&id), &repo.codec().encode(&json, true))?;
    // The catalogue is a cache of what the repository holds, which a dry run did not add to.
    if !repo.is_dry_run() {
        repo.catalogue().insert(repo.codec(), id, checkpoint);
    }
    Ok(id)
}

/// Reads checkpoint `id` and checks it against its id.
pub fn load(repo: &Repository, id: &CheckpointId) -> Result<Checkpoint> {
    let name = object_name(id);
    let plaintext = repo.read_object_plaintext(&name)?;
    if repo.codec().id_of(&plaintext) != id.0 {
        return Err(Error::corrupt(&name, "record does not match its id"));
    }
    decode(&plaintext, &name)
}

/// Parses and checks the plaintext of checkpoint record `name` (named in errors).
pub fn decode(plaintext: &[u8], name: &str) -> Result<Checkpoint> {
    let record: Checkpoint =
        serde_json::from_slice(plaintext).map_err(|e| Error::corrupt(name, e.to_string()))?;
    // The root entry names the restore target's own metadata; it must be the root tree
    // under a safe name, never something that could steer a restore elsewhere.
    if let Some(root) = &record.root {
        let valid =
            root.kind == EntryKind::Dir(record.tree) && crate::tree::is_valid_name(&root.name);
        if !valid {
            return Err(Error::corrupt(
                name,
                "root entry is not the checkpoint's root directory",
            ));
        }
    }
    Ok(record)
}

/// Removes checkpoint record `id` (its blobs stay until a prune).
pub fn remove(repo: &Repository, id: &CheckpointId) -> Result<()> {
    repo.backend().delete(&object_name(id))
}

/// Refuses a tag that cannot name a directory in the mount (empty, or with `/` or NUL).
pub(crate) fn check_tags(tags: &[String]) -> Result<()> {
    match tags
        .iter()
        .find(|t| !crate::tree::is_valid_name(t.as_bytes()))
    {
        Some(tag) => Err(Error::InvalidInput(format!(
            "tag {tag:?} is not usable: a tag must be non-empty and contain no `/` (it names a directory in the mount)"
        ))),
        None => Ok(()),
    }
}

/// How `retag` changes the tags of a checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TagChange {
    /// Replace the tags with these (when `Some`; an empty list removes them all).
    pub set: Option<Vec<String>>,
    pub add: Vec<String>,
    pub remove: Vec<String>,
}

impl TagChange {
    fn apply(&self, tags: &[String]) -> Vec<String> {
        let mut out: Vec<String> = self.set.clone().unwrap_or_else(|| tags.to_vec());
        for tag in &self.add {
            if !out.contains(tag) {
                out.push(tag.clone());
            }
        }
        out.retain(|tag| !self.remove.contains(tag));
        out
    }
}

/// A checkpoint whose tags changed: its record is stored anew (a record's id is the hash of
/// its contents) and the old one removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retagged {
    pub old: CheckpointId,
    pub new: CheckpointId,
    pub tags: Vec<String>,
}

/// Changes the tags of checkpoints `ids` under the exclusive lock: each whose tags change is
/// written again with them (time, tree, parent and statistics as they were) before its old
/// record is removed, so an interruption leaves both, never neither. A checkpoint naming a
/// retagged one as its parent keeps the old id there: the parent records what a backup
/// compared against, and nothing resolves it. Every id is checked before anything changes.
pub fn retag(repo: &Repository, ids: &[CheckpointId], change: &TagChange) -> Result<Vec<Retagged>> {
    check_tags(change.set.as_deref().unwrap_or_default())?;
    check_tags(&change.add)?;
    let _lock = crate::repo::lock::acquire(repo, true, "tag")?;
    let records = ids
        .iter()
        .map(|id| Ok((*id, load(repo, id)?)))
        .collect::<Result<Vec<_>>>()?;
    let mut retagged = Vec::new();
    for (old, mut record) in records {
        let tags = change.apply(&record.tags);
        if tags == record.tags {
            continue;
        }
        record.tags = tags.clone();
        let new = save(repo, &record)?;
        if !repo.is_dry_run() {
            remove(repo, &old)?;
        }
        retagged.push(Retagged { old, new, tags });
    }
    Ok(retagged)
}

/// Whether the repository holds checkpoint `id`.
pub fn exists(repo: &Repository, id: &CheckpointId) -> Result<bool> {
    repo.backend().exists(&object_name(id))
}

/// Copies checkpoint record `id` from `from` into `to` as it is (checked against its id), so
/// it keeps its id; `to` must share `from`'s ids. Written last, after every blob it needs.
pub fn copy_record(from: &Repository, to: &Repository, id: &CheckpointId) -> Result<()> {
    let name = object_name(id);
    let plaintext = from.read_object_plaintext(&name)?;
    if from.codec().id_of(&plaintext) != id.0 || to.codec().id_of(&plaintext) != id.0 {
        return Err(Error::corrupt(&name, "record does not match its id"));
    }
    to.backend()
        .put(&name, &to.codec().encode(&plaintext, true))
}

/// The ids of every checkpoint in the repository.
pub fn list_ids(repo: &Repository) -> Result<Vec<CheckpointId>> {
    let mut ids: Vec<CheckpointId> = repo
        .backend()
        .list_names(ObjectKind::Checkpoint.prefix())?
        .into_iter()
        .filter_map(|name| {
            CheckpointId::from_hex(name.strip_prefix(ObjectKind::Checkpoint.prefix())?)
        })
        .collect();
    ids.sort();
    Ok(ids)
}

/// The order of the catalogue everywhere (`list`, `latest`, the mount): oldest first, ties
/// broken by id.
pub fn catalogue_order(
    a: (&CheckpointId, &Checkpoint),
    b: (&CheckpointId, &Checkpoint),
) -> std::cmp::Ordering {
    a.1.time.cmp(&b.1.time).then(a.0.cmp(b.0))
}

/// What the local catalogue holds of every checkpoint, oldest first, brought up to date with
/// the repository (see [`crate::catalogue::Catalogue::sync`]): ids, times and labels, without
/// reading any record.
pub fn list_shared(repo: &Repository) -> Result<Listing> {
    let synced = repo.catalogue().sync(repo)?;
    match synced.unreadable.into_iter().next() {
        Some(unreadable) => Err(unreadable.error),
        None => Ok(synced.checkpoints),
    }
}

/// A checkpoint the repository holds: its id and its record.
#[derive(Debug, Clone)]
pub struct Stored {
    pub id: CheckpointId,
    pub record: Checkpoint,
}

/// The listed checkpoints with their records, in the listing's order.
fn with_records(listing: &Listing, records: Vec<Checkpoint>) -> Vec<Stored> {
    listing
        .iter()
        .zip(records)
        .map(|(summary, record)| Stored {
            id: summary.id,
            record,
        })
        .collect()
}

/// Every checkpoint with its record, oldest first (see [`list_shared`]).
pub fn list(repo: &Repository) -> Result<Vec<Stored>> {
    let listing = list_shared(repo)?;
    let records = repo.catalogue().records(repo, &listing)?;
    Ok(with_records(&listing, records))
}

/// Every checkpoint, oldest first, read from the repository itself and not from the local
/// catalogue: for the commands that must not trust the cache (check, repair, prune).
pub fn read_all(repo: &Repository) -> Result<Vec<Stored>> {
    let mut all = list_ids(repo)?
        .into_iter()
        .map(|id| {
            let record = load(repo, &id)?;
            Ok(Stored { id, record })
        })
        .collect::<Result<Vec<_>>>()?;
    all.sort_by(|a, b| catalogue_order((&a.id, &a.record), (&b.id, &b.record)));
    Ok(all)
}

/// Which checkpoints a command considers, as restic's `--host`, `--path` and `--tag` choose
/// them: every checkpoint when empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckpointFilter {
    /// A checkpoint of any of these hosts.
    pub hosts: Vec<String>,
    /// A checkpoint whose paths include every one of these.
    pub paths: Vec<String>,
    /// A checkpoint that has every tag of any one of these groups.
    pub tag_groups: Vec<Vec<String>>,
}

impl CheckpointFilter {
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty() && self.paths.is_empty() && self.tag_groups.is_empty()
    }

    pub fn matches(&self, checkpoint: &Checkpoint) -> bool {
        self.matches_fields(&checkpoint.host, &checkpoint.paths, &checkpoint.tags)
    }

    /// Whether the checkpoint labelled `label` passes.
    pub fn matches_label(&self, label: &Label) -> bool {
        self.matches_fields(&label.host, &label.paths, &label.tags)
    }

    fn matches_fields(&self, host: &String, paths: &[String], tags: &[String]) -> bool {
        (self.hosts.is_empty() || self.hosts.contains(host))
            && self.paths.iter().all(|path| paths.contains(path))
            && (self.tag_groups.is_empty()
                || self
                    .tag_groups
                    .iter()
                    .any(|group| group.iter().all(|tag| tags.contains(tag))))
    }

    /// The filter in the words of its flags, for messages: `host h, path /p, tag a,b`.
    pub fn describe(&self) -> String {
        let hosts = self.hosts.iter().map(|h| format!("host {h}"));
        let paths = self.paths.iter().map(|p| format!("path {p}"));
        let tags = self
            .tag_groups
            .iter()
            .map(|g| format!("tag {}", g.join(",")));
        hosts
            .chain(paths)
            .chain(tags)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Every checkpoint `filter` lets through, oldest first, with its record.
pub fn list_matching(repo: &Repository, filter: &CheckpointFilter) -> Result<Vec<Stored>> {
    let mut listing = list_shared(repo)?;
    listing.retain(|summary| filter.matches_label(&summary.label));
    let records = repo.catalogue().records(repo, &listing)?;
    Ok(with_records(&listing, records))
}

/// Resolves a reference over every checkpoint: `latest`, a full id, or a unique prefix of at
/// least 4 hex digits.
pub fn resolve(repo: &Repository, reference: &str) -> Result<Stored> {
    resolve_matching(repo, reference, &CheckpointFilter::default())
}

/// Resolves a reference; `latest` is the newest checkpoint `filter` lets through (an id names
/// its checkpoint whatever the filter).
pub fn resolve_matching(
    repo: &Repository,
    reference: &str,
    filter: &CheckpointFilter,
) -> Result<Stored> {
    if reference == "latest" {
        let listing = list_shared(repo)?;
        let newest = listing
            .iter()
            .rev()
            .find(|summary| filter.matches_label(&summary.label));
        if let Some(summary) = newest {
            let record = repo.catalogue().record(repo, summary)?;
            return Ok(Stored {
                id: summary.id,
                record,
            });
        }
        return Err({
            let location = repo.backend().location();
            let asked = filter.describe();
            let message = if filter.is_empty() {
                format!("repository {location} has no checkpoints yet")
            } else {
                format!("no checkpoint in {location} matches {asked}; `cairn list` shows them all")
            };
            Error::not_found(Missing::Checkpoint { asked }, message)
        });
    }
    let reference = reference.to_ascii_lowercase();
    if reference.len() < 4 || !reference.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(Error::InvalidInput(format!(
            "{reference:?} is not a checkpoint reference: use `latest`, a full id or at least 4 hex digits of one"
        )));
    }
    let matches: Vec<CheckpointId> = list_ids(repo)?
        .into_iter()
        .filter(|id| id.to_hex().starts_with(&reference))
        .collect();
    match matches.as_slice() {
        [id] => Ok(Stored {
            id: *id,
            record: load(repo, id)?,
        }),
        [] => Err(Error::not_found(
            Missing::Checkpoint {
                asked: reference.clone(),
            },
            format!("no checkpoint matches {reference:?}; `cairn list` shows them"),
        )),
        many => Err(Error::InvalidInput(format!(
            "{reference:?} is ambiguous: it matches {} checkpoints ({}); give more digits",
            many.len(),
            many.iter()
                .map(CheckpointId::short)
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::backend::LocalBackend;
    use crate::repo::config::EncryptionMode;
    use crate::repo::{InitOptions, Secret};
    use crate::tree::root_entry;
    use std::sync::Arc;

    fn record(tree: TreeId, root: Option<Entry>) -> Checkpoint {
        Checkpoint {
            time: "2026-11-23T18:00:00.000000000Z".into(),
            host: "h".into(),
            paths: vec!["/src".into()],
            tags: Vec::new(),
            tree,
            root,
            parent: None,
            stats: CheckpointStats::default(),
            program_version: "test".into(),
            pulled_from: None,
        }
    }

    #[test]
    fn root_times_past_i64_nanoseconds_round_trip_as_json_numbers() {
        let tree = TreeId([7; 32]);
        let mut root = root_entry(tree);
        root.name = b"src".to_vec();
        root.mtime_ns = 10_413_792_000_123_456_789; // 2300-01-01
        root.ctime_ns = -302_443_200_000_000_005; // 1960-06-01, an i64 as before
        let record = record(tree, Some(root));
        let json = String::from_utf8(serde_json::to_vec(&record).unwrap()).unwrap();
        assert!(
            json.contains(r#""mtime_ns":10413792000123456789,"#),
            "{json}"
        );
        assert!(
            json.contains(r#""ctime_ns":-302443200000000005,"#),
            "{json}"
        );
        assert_eq!(decode(json.as_bytes(), "c").unwrap(), record);
    }

    #[test]
    fn a_forged_root_entry_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let backend = Arc::new(LocalBackend::new(dir.path().join("repo")));
        Repository::init(backend.as_ref(), InitOptions::new(EncryptionMode::None)).unwrap();
        let repo =
            Repository::open(backend, |_| Ok(Secret::None), &dir.path().join("cache")).unwrap();
        let tree = TreeId([7; 32]);

        let mut good = root_entry(tree);
        good.name = b"src".to_vec();
        let id = save(&repo, &record(tree, Some(good.clone()))).unwrap();
        assert_eq!(load(&repo, &id).unwrap().root_entry(), good);

        let mut escaping = good.clone();
        escaping.name = b"../../etc".to_vec();
        let mut not_the_root = good.clone();
        not_the_root.kind = EntryKind::Dir(TreeId([8; 32]));
        let mut a_file = good;
        a_file.kind = EntryKind::Symlink(b"/etc/passwd".to_vec());
        for forged in [escaping, not_the_root, a_file] {
            let id = save(&repo, &record(tree, Some(forged))).unwrap();
            let error = load(&repo, &id).unwrap_err();
            assert_eq!(error.kind(), crate::error::ErrorKind::Corrupt, "{error}");
        }
    }
}
