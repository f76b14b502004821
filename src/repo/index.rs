//! The blob index: which pack holds each blob. The truth is the repository's `index/` files
//! (each lists the packs of one run and their entries); the local sled database is only a
//! cache of them, kept per repository id under the cache directory. On every open the cache
//! is compared with the listing of `index/`: new files are imported, and when a file it had
//! imported is gone the cache is rebuilt from scratch. A blob enters the cache only after the
//! index file that lists it is durable in the repository, so the cache never claims a blob the
//! repository could lack. An index file that cannot be decoded is skipped with a warning, so
//! a damaged one never stops a repository from opening (`cairn repair index` replaces it).
//! The cache directory is private (0700), which keeps sled's own files from other users
//! whatever modes sled gives them. This is the only module that names sled.

use super::backend::{Backend, create_private_dir};
use super::codec::Codec;
use super::pack::PackEntry;
use super::table::{Layout, cached_entry, read_cached_entry};
use crate::error::{Error, ErrorKind, Result};
use crate::id::{BlobId, CheckpointId, ID_BYTES, PackId};
use crate::repo::objects::ObjectKind;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Version of the cache's own layout; a cache with another version is rebuilt.
const CACHE_SCHEMA_VERSION: u32 = 4;

/// The `meta` key of the checkpoint `BlobIndex::trusts_parent` names.
const TRUSTED_PARENT_KEY: &str = "trusted_parent";

/// The `meta` key of the backend's listing token of `index/` the cache was last synced at.
const LISTING_TOKEN_KEY: &str = "index_listing_token";

/// The largest index file plaintext accepted. A fresh index file lists up to 256 packs, whose
/// entries take far less than this even for packs of tiny blobs.
pub const MAX_INDEX_FILE_BYTES: u64 = 1 << 30;

/// Where a blob is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLocation {
    pub pack: PackId,
    pub entry: PackEntry,
}

impl BlobLocation {
    /// Whether this blob and `other` lie in one frame (read and decoded once for both).
    pub fn same_frame(&self, other: &BlobLocation) -> bool {
        self.pack == other.pack && self.entry.offset == other.entry.offset
    }
}

/// The packs one index file lists, with their entries.
pub type IndexedPacks = Vec<(PackId, Vec<PackEntry>)>;

/// Encodes the plaintext of an index file in `layout`: per pack its id, the count of its
/// table's entries (formats 1 and 2) or frames (format 3) as a u32 LE, and the table, each
/// frame with its offset.
pub fn encode_index_file(packs: &[(PackId, Vec<PackEntry>)], layout: Layout) -> Vec<u8> {
    let mut out = Vec::new();
    for (pack, entries) in packs {
        out.extend_from_slice(&pack.0);
        let count = match layout {
            Layout::Entries => entries.len(),
            Layout::Frames => super::table::frames(entries).count(),
        };
        let count = u32::try_from(count).expect("a pack holds far fewer than 2^32 blobs");
        out.extend_from_slice(&count.to_le_bytes());
        layout.encode(entries, true, &mut out);
    }
    out
}

/// Parses the plaintext of an index file in `layout`.
pub fn decode_index_file(
    mut bytes: &[u8],
    layout: Layout,
    location: &dyn Fn() -> String,
) -> Result<IndexedPacks> {
    let mut packs = Vec::new();
    while !bytes.is_empty() {
        if bytes.len() < ID_BYTES + 4 {
            return Err(Error::corrupt(location(), "truncated index file"));
        }
        let pack = PackId::from_slice(&bytes[..ID_BYTES]).expect("32 bytes");
        let count = u32::from_le_bytes(bytes[ID_BYTES..ID_BYTES + 4].try_into().expect("4 bytes"));
        let (entries, used) = layout.parse(&bytes[ID_BYTES + 4..], true, Some(count), location)?;
        packs.push((pack, entries));
        bytes = &bytes[ID_BYTES + 4 + used..];
    }
    Ok(packs)
}

/// Reads, opens and parses index file `name`.
pub fn read_index_file(backend: &dyn Backend, codec: &Codec, name: &str) -> Result<IndexedPacks> {
    let location = || format!("index file {name}");
    let plaintext = codec.decode(&backend.get(name)?, MAX_INDEX_FILE_BYTES, &location)?;
    decode_index_file(&plaintext, codec.layout(), &location)
}

/// The local sled cache of every index file of one repository.
pub struct BlobIndex {
    _db: sled::Db,
    /// The schema version, and the trusted parent (see `trusts_parent`).
    meta: sled::Tree,
    blobs: sled::Tree,
    /// Every pack an imported index file lists (so packs no index file lists can be found).
    packs: sled::Tree,
    files: sled::Tree,
    path: PathBuf,
    /// A dry run's additions, which the cache never sees (`keep_additions_in_memory`).
    in_memory: Option<Mutex<Additions>>,
}

/// Blobs and packs a dry run indexed.
#[derive(Default)]
struct Additions {
    blobs: HashMap<BlobId, BlobLocation>,
    packs: HashSet<PackId>,
}

fn cache_error(path: &Path, e: sled::Error) -> Error {
    Error::Cache {
        path: path.to_owned(),
        message: format!("{e} (the cache can be deleted; it is rebuilt from the repository)"),
    }
}

impl BlobIndex {
    /// Opens the cache in `dir`. When another cairn process holds it, a private temporary
    /// cache inside `dir` is used instead, so concurrent commands still work.
    pub fn open(dir: &Path) -> Result<Self> {
        create_private_dir(dir)?;
        let path = dir.join("index.sled");
        let db = match sled::Config::new()
            .path(&path)
            .cache_capacity(32 << 20)
            .open()
        {
            Ok(db) => db,
            Err(sled::Error::Io(e))
                if e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("lock") =>
            {
                tracing::info!(
                    "index cache {} is in use; using a temporary one",
                    path.display()
                );
                let temporary = dir.join(format!("tmp-{}", std::process::id()));
                sled::Config::new()
                    .path(&temporary)
                    .temporary(true)
                    .open()
                    .map_err(|e| cache_error(&temporary, e))?
            }
            Err(e) => return Err(cache_error(&path, e)),
        };
        let open_tree = |name: &str| db.open_tree(name).map_err(|e| cache_error(&path, e));
        // Blobs by their place in a pack, which earlier versions kept for the mount.
        db.drop_tree("placed").map_err(|e| cache_error(&path, e))?;
        let meta = open_tree("meta")?;
        let index = BlobIndex {
            meta: meta.clone(),
            blobs: open_tree("blobs")?,
            packs: open_tree("packs")?,
            files: open_tree("index_files")?,
            _db: db,
            path,
            in_memory: None,
        };
        let schema = meta
            .get("schema")
            .map_err(|e| cache_error(&index.path, e))?;
        if schema.as_deref() != Some(&CACHE_SCHEMA_VERSION.to_le_bytes()[..]) {
            index.clear()?;
            meta.insert("schema", &CACHE_SCHEMA_VERSION.to_le_bytes())
                .map_err(|e| cache_error(&index.path, e))?;
        }
        Ok(index)
    }

    fn clear(&self) -> Result<()> {
        for key in [TRUSTED_PARENT_KEY, LISTING_TOKEN_KEY] {
            self.meta
                .remove(key)
                .map_err(|e| cache_error(&self.path, e))?;
        }
        self.blobs.clear().map_err(|e| cache_error(&self.path, e))?;
        self.packs.clear().map_err(|e| cache_error(&self.path, e))?;
        self.files.clear().map_err(|e| cache_error(&self.path, e))
    }

    /// From now on, index files added and parents trusted are kept in memory only, for this
    /// handle's life, and the cache is left as it was: a dry run's view.
    pub(super) fn keep_additions_in_memory(&mut self) {
        self.in_memory = Some(Mutex::default());
    }

    fn additions(&self) -> Option<std::sync::MutexGuard<'_, Additions>> {
        let additions = self.in_memory.as_ref()?;
        Some(additions.lock().expect("not poisoned"))
    }

    pub fn get(&self, id: &BlobId) -> Result<Option<BlobLocation>> {
        if let Some(found) = self.additions().and_then(|a| a.blobs.get(id).copied()) {
            return Ok(Some(found));
        }
        let value = self
            .blobs
            .get(id.0)
            .map_err(|e| cache_error(&self.path, e))?;
        Ok(value.and_then(|v| {
            let pack = PackId::from_slice(v.get(..ID_BYTES)?)?;
            let mut entry_bytes = id.0.to_vec();
            entry_bytes.extend_from_slice(v.get(ID_BYTES..)?);
            Some(BlobLocation {
                pack,
                entry: read_cached_entry(&entry_bytes)?,
            })
        }))
    }

    pub fn contains(&self, id: &BlobId) -> Result<bool> {
        if self.additions().is_some_and(|a| a.blobs.contains_key(id)) {
            return Ok(true);
        }
        self.blobs
            .contains_key(id.0)
            .map_err(|e| cache_error(&self.path, e))
    }

    /// Whether an imported index file lists pack `id`.
    pub fn contains_pack(&self, id: &PackId) -> Result<bool> {
        if self.additions().is_some_and(|a| a.packs.contains(id)) {
            return Ok(true);
        }
        self.packs
            .contains_key(id.0)
            .map_err(|e| cache_error(&self.path, e))
    }

    /// Records the blobs of index file `name`, which must already be durable in the repository.
    pub fn add_index_file(&self, name: &str, packs: &[(PackId, Vec<PackEntry>)]) -> Result<()> {
        if let Some(mut additions) = self.additions() {
            for (pack, entries) in packs {
                additions.packs.insert(*pack);
                for entry in entries {
                    let location = BlobLocation {
                        pack: *pack,
                        entry: *entry,
                    };
                    additions.blobs.insert(entry.id, location);
                }
            }
            return Ok(());
        }
        for (pack, entries) in packs {
            self.packs
                .insert(pack.0, &[])
                .map_err(|e| cache_error(&self.path, e))?;
            for entry in entries {
                let mut value = pack.0.to_vec();
                value.extend_from_slice(&cached_entry(entry)[ID_BYTES..]);
                self.blobs
                    .insert(&entry.id.0[..], value)
                    .map_err(|e| cache_error(&self.path, e))?;
            }
        }
        self.files
            .insert(name, &[])
            .map_err(|e| cache_error(&self.path, e))?;
        Ok(())
    }

    /// Whether every blob checkpoint `id` refers to is known to be indexed: it was saved by a
    /// backup through this cache, and no index file has been removed since (a prune or a
    /// `repair packs`, here or on another machine, which may have dropped blobs). A backup
    /// reuses a trusted parent's chunk lists without looking each chunk up.
    pub fn trusts_parent(&self, id: &CheckpointId) -> Result<bool> {
        let trusted = self
            .meta
            .get(TRUSTED_PARENT_KEY)
            .map_err(|e| cache_error(&self.path, e))?;
        Ok(trusted.as_deref() == Some(&id.0[..]))
    }

    /// Records checkpoint `id`, just saved by a backup whose every blob is indexed, as the
    /// one `trusts_parent` names.
    pub fn trust_parent(&self, id: &CheckpointId) -> Result<()> {
        if self.in_memory.is_some() {
            return Ok(());
        }
        self.meta
            .insert(TRUSTED_PARENT_KEY, &id.0[..])
            .map_err(|e| cache_error(&self.path, e))?;
        Ok(())
    }

    /// Brings the cache up to date with the repository's `index/` files, without listing
    /// them when the backend's listing token says none was added or removed since the
    /// last sync.
    pub fn sync(&self, backend: &dyn Backend, codec: &Codec) -> Result<()> {
        let token = backend.listing_token(ObjectKind::Index.prefix());
        if let Some(token) = &token {
            let synced_at = self
                .meta
                .get(LISTING_TOKEN_KEY)
                .map_err(|e| cache_error(&self.path, e))?;
            if synced_at.as_deref() == Some(token.as_bytes()) {
                return Ok(());
            }
        }
        self.sync_listed(backend, codec)?;
        let recorded = match &token {
            Some(token) => self.meta.insert(LISTING_TOKEN_KEY, token.as_bytes()),
            None => self.meta.remove(LISTING_TOKEN_KEY),
        };
        recorded.map_err(|e| cache_error(&self.path, e))?;
        Ok(())
    }

    /// Brings the cache up to date with a listing of the repository's `index/` files.
    pub fn sync_listed(&self, backend: &dyn Backend, codec: &Codec) -> Result<()> {
        let listed: HashSet<String> = backend
            .list_names(ObjectKind::Index.prefix())?
            .into_iter()
            .collect();
        let mut known = HashSet::new();
        for key in self.files.iter().keys() {
            let key = key.map_err(|e| cache_error(&self.path, e))?;
            known.insert(String::from_utf8_lossy(&key).into_owned());
        }
        if !known.is_subset(&listed) {
            tracing::info!(
                "index files were removed from the repository; rebuilding the index cache"
            );
            self.clear()?;
            known.clear();
        }
        for name in listed.difference(&known) {
            match read_index_file(backend, codec, name) {
                Ok(packs) => self.add_index_file(name, &packs)?,
                // Its blobs look absent (stored again by a backup, reported by check); it is
                // not recorded, so it is read again once repaired.
                Err(e) if e.kind() == ErrorKind::Corrupt => tracing::warn!(
                    "skipping an unreadable index file ({e}); `cairn repair index` rebuilds the index from the packs"
                ),
                Err(e) => return Err(e),
            }
        }
        self.blobs.flush().map_err(|e| cache_error(&self.path, e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::backend::LocalBackend;
    use crate::repo::pack::BlobKind;

    fn entry(n: u8) -> PackEntry {
        PackEntry::alone(BlobId([n; 32]), BlobKind::Data, n as u32 * 10, 10, 20)
    }

    #[test]
    fn index_files_round_trip() {
        let shared = PackEntry {
            frame_at: 20,
            frame_raw_length: 25,
            raw_length: 5,
            ..entry(3)
        };
        let first = PackEntry {
            frame_raw_length: 25,
            ..entry(3)
        };
        let with_frames = vec![(PackId([3; 32]), vec![entry(1), first, shared])];
        let alone = vec![
            (PackId([1; 32]), vec![entry(1), entry(2)]),
            (PackId([2; 32]), vec![]),
        ];
        for (layout, packs) in [
            (Layout::Entries, &alone),
            (Layout::Frames, &alone),
            (Layout::Frames, &with_frames),
        ] {
            let bytes = encode_index_file(packs, layout);
            assert_eq!(
                &decode_index_file(&bytes, layout, &|| "i".into()).unwrap(),
                packs
            );
            assert!(decode_index_file(&bytes[..bytes.len() - 1], layout, &|| "i".into()).is_err());
        }
    }

    #[test]
    fn cache_follows_the_repository() {
        let repo = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let backend = LocalBackend::new(repo.path());
        let codec = Codec::new(None, 3);
        let packs = vec![(PackId([9; 32]), vec![entry(1)])];
        backend
            .put(
                "index/a",
                &codec.encode(&encode_index_file(&packs, codec.layout()), true),
            )
            .unwrap();

        let index = BlobIndex::open(cache.path()).unwrap();
        assert!(!index.contains(&BlobId([1; 32])).unwrap());
        index.sync(&backend, &codec).unwrap();
        assert!(index.contains_pack(&PackId([9; 32])).unwrap());
        let found = index.get(&BlobId([1; 32])).unwrap().unwrap();
        assert_eq!(
            found,
            BlobLocation {
                pack: PackId([9; 32]),
                entry: entry(1)
            }
        );

        backend
            .put("index/garbage", b"\x07 not an index file")
            .unwrap();
        index.sync(&backend, &codec).unwrap();
        assert!(
            index.contains(&BlobId([1; 32])).unwrap(),
            "a damaged file is skipped"
        );
        backend.delete("index/garbage").unwrap();

        backend.delete("index/a").unwrap();
        index.sync(&backend, &codec).unwrap();
        assert!(
            !index.contains(&BlobId([1; 32])).unwrap(),
            "a removed index file empties the cache"
        );
        assert!(!index.contains_pack(&PackId([9; 32])).unwrap());
    }
}
