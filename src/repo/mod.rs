//! The repository: one type that opens a backend with its key, reads and verifies blobs, and
//! reads and writes the small JSON objects (checkpoints, locks). Layers above see blobs by id
//! and never a file path: the backend decides where bytes live.

pub mod backend;
pub mod codec;
pub mod config;
pub(crate) mod frame_cache;
#[cfg(feature = "client")]
pub mod http;
pub mod index;
pub mod keys;
pub mod layers;
pub mod location;
pub mod lock;
pub mod objects;
pub mod pack;
pub(crate) mod remembered;
#[cfg(feature = "s3")]
pub mod s3;
pub mod table;
pub(crate) mod tree_cache;
pub mod writer;

use crate::chunker::{Chunker, ChunkerParams};
use crate::crypto::{KeyFile, MasterKey, PasswordKey};
use crate::error::{Error, ErrorKind, Missing, Result};
use crate::id::BlobId;
use backend::Backend;
use codec::Codec;
use config::{
    COMPRESSION_LEVELS, Config, DEFAULT_COMPRESSION_LEVEL, EncryptionMode, FORMAT_VERSION,
    FORMAT_VERSION_OLDEST, Settings,
};
use index::{BlobIndex, BlobLocation};
pub use location::{StoreOptions, is_local_repository, is_s3, is_url, open_store};
use objects::ObjectKind;
use pack::pack_object_name;
use remembered::RememberedSettings;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The largest record (checkpoint or lock) plaintext accepted.
pub const MAX_RECORD_BYTES: u64 = 16 << 20;

/// The file in a repository's cache directory naming the key that last opened it.
const LAST_KEY_FILE: &str = "last-key";

/// The secret that opens a repository.
pub enum Secret {
    None,
    Password(Vec<u8>),
    KeyFile(PathBuf),
}

/// Inputs of `Repository::init`.
pub struct InitOptions {
    pub encryption: EncryptionMode,
    /// The password (password mode).
    pub password: Option<Vec<u8>>,
    /// Where to write the new key file (keyfile mode); an existing file is never overwritten.
    pub key_file: Option<PathBuf>,
    pub chunker: ChunkerParams,
    pub compression_level: i32,
    /// The key of a repository whose blob ids and chunk boundaries the new one shares (the
    /// new one gets its own encryption key), set by `InitOptions::like`.
    pub like_key: Option<MasterKey>,
}

impl InitOptions {
    pub fn new(encryption: EncryptionMode) -> Self {
        InitOptions {
            encryption,
            password: None,
            key_file: None,
            chunker: ChunkerParams::default(),
            compression_level: DEFAULT_COMPRESSION_LEVEL,
            like_key: None,
        }
    }

    /// Options for a repository like `other`: same chunker and compression, and the same blob
    /// ids, so blobs deduplicate across both and copy between them without re-chunking. An
    /// encrypted repository can only be like an encrypted one (and a plain one like a plain
    /// one): keyed and unkeyed ids differ.
    pub fn like(encryption: EncryptionMode, other: &Repository) -> Result<Self> {
        let other_key = other.codec().master_key();
        if (encryption == EncryptionMode::None) != other_key.is_none() {
            return Err(Error::InvalidInput(format!(
                "a {encryption}-mode repository cannot be like {} ({} mode): encrypted and unencrypted repositories give blobs different ids",
                other.backend().location(),
                other.config().encryption
            )));
        }
        Ok(InitOptions {
            chunker: other.config().chunker,
            compression_level: other.config().compression_level,
            like_key: other_key.cloned(),
            ..InitOptions::new(encryption)
        })
    }
}

/// An open repository.
pub struct Repository {
    backend: Arc<dyn Backend>,
    config: Config,
    codec: Codec,
    chunker: Chunker,
    index: BlobIndex,
    catalogue: crate::catalogue::Catalogue,
    /// Trees kept locally for a repository a round trip away.
    trees: tree_cache::TreeCache,
    /// Frames of several blobs decoded lately, by pack and offset: the blobs of one frame,
    /// read by any thread, come from one read and one decoding.
    frames: frame_cache::FrameCache,
    /// How long taking a lock waits for conflicting locks, in milliseconds.
    lock_wait_ms: std::sync::atomic::AtomicU64,
    /// The id of the `keys/<id>` object that opened the repository (password mode only).
    opened_key: Option<String>,
    /// This repository's directory in the local cache.
    cache_dir: std::path::PathBuf,
    /// Whether this is a dry run's view (see `into_dry_run`).
    dry_run: bool,
}

/// Bytes of decoded frames a repository keeps: a few frames per thread of a restore or mount.
const FRAMES_KEPT_BYTES: u64 = 32 << 20;

fn write_key_file(path: &Path, key_file: &KeyFile) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let text = serde_json::to_vec_pretty(key_file).expect("key files serialize");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Error::InvalidInput(format!(
                    "key file {} already exists: cairn never overwrites a key; choose another path",
                    path.display()
                ))
            } else {
                Error::io(format!("creating key file {}", path.display()), e)
            }
        })?;
    file.write_all(&text)
        .and_then(|_| file.sync_all())
        .map_err(|e| Error::io(format!("writing key file {}", path.display()), e))
}

/// Hex of what `key` seals, opened: `None` when the field is absent, not hex, or does not
/// open under `key`.
fn open_sealed_hex(sealed: Option<&str>, key: &MasterKey) -> Option<Vec<u8>> {
    key.open(&hex::decode(sealed?).ok()?)
}

/// Whether `key` is this repository's master key. A format-2 config's sealed settings must
/// open under it and equal the settings the config states; a key that opens them and finds
/// other settings proves the config was changed (`Error::Tampered`). A format-1 config has
/// only its key check, the repository id sealed: its settings are vouched for by nothing but
/// the cache's memory (`RememberedSettings`).
fn verify_master_key(config: &Config, key: &MasterKey, location: &str) -> Result<bool> {
    let tampered = |what: String| Error::Tampered {
        repository: location.to_owned(),
        what,
    };
    if config.sealed_settings.is_none() {
        if config.cairn_repository != FORMAT_VERSION_OLDEST {
            return Err(tampered(format!(
                "its format-{} config is encrypted ({}) but lacks the sealed settings",
                config.cairn_repository, config.encryption
            )));
        }
        let id = open_sealed_hex(config.key_check.as_deref(), key);
        return Ok(id.is_some_and(|id| id == config.id.as_bytes()));
    }
    let Some(plaintext) = open_sealed_hex(config.sealed_settings.as_deref(), key) else {
        return Ok(false);
    };
    let sealed: Settings = serde_json::from_slice(&plaintext).map_err(|e| {
        Error::corrupt(
            format!("{location}/config"),
            format!("sealed settings: {e}"),
        )
    })?;
    let changes = sealed.changes_to(&config.settings());
    if changes.is_empty() {
        Ok(true)
    } else {
        Err(tampered(format!(
            "its config states other settings than those sealed under its key ({})",
            changes.join(", ")
        )))
    }
}

/// Refuses a config that says `none` while something proves the repository encrypted: a
/// secret given for it, a seal in the config, or password keys in `keys/`. Without this,
/// whoever controls the storage could turn the config to `none` and have the next backup
/// store the user's files in plaintext.
fn refuse_downgrade_to_none(backend: &dyn Backend, config: &Config, given: Secret) -> Result<()> {
    let mut evidence = Vec::new();
    match given {
        Secret::None => {}
        Secret::Password(_) => evidence.push("a password was given for it".to_owned()),
        Secret::KeyFile(path) => {
            evidence.push(format!("a key file ({}) was given for it", path.display()))
        }
    }
    if config.carries_a_seal() {
        evidence.push("the config carries a seal only an encryption key makes".to_owned());
    }
    let keys = backend.list_names(ObjectKind::Key.prefix())?.len();
    if keys > 0 {
        evidence.push(format!(
            "{} holds {keys} password key(s)",
            ObjectKind::Key.prefix()
        ));
    }
    if evidence.is_empty() {
        return Ok(());
    }
    Err(Error::Tampered {
        repository: backend.location(),
        what: format!(
            "its config says it is not encrypted (encryption: none), but {}; cairn will not \
             read or write it in plaintext (if it really is unencrypted, give it no password \
             or key file)",
            evidence.join(", and ")
        ),
    })
}

/// Whether `id` is a repository id: 64 lowercase hex digits (it names a cache directory).
fn is_repository_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Repository {
    /// Creates a new repository. Writes the key (file or `keys/`) first and `config` last, so
    /// a repository with a config is always complete.
    pub fn init(backend: &dyn Backend, options: InitOptions) -> Result<Config> {
        if backend.exists(objects::CONFIG)? {
            return Err(Error::InvalidInput(format!(
                "{} already holds a cairn repository",
                backend.location()
            )));
        }
        options.chunker.validate()?;
        if !COMPRESSION_LEVELS.contains(&options.compression_level) {
            return Err(Error::InvalidInput(format!(
                "compression level {} is out of range 1..=22",
                options.compression_level
            )));
        }
        let id = hex::encode(crate::crypto::random_bytes::<32>());
        let master = match (options.encryption, &options.like_key) {
            (EncryptionMode::None, None) => None,
            (EncryptionMode::None, Some(_)) => {
                return Err(Error::InvalidInput(
                    "an unencrypted repository cannot share an encrypted one's ids".into(),
                ));
            }
            (_, Some(like)) => Some(like.generate_like()),
            (_, None) => Some(MasterKey::generate()),
        };
        let mut written_key = None;
        match options.encryption {
            EncryptionMode::None => {}
            EncryptionMode::Keyfile => {
                let path = options.key_file.as_deref().ok_or_else(|| {
                    Error::InvalidInput("keyfile mode needs --key-file PATH for the new key".into())
                })?;
                let master = master.as_ref().expect("made for encrypted modes");
                write_key_file(path, &KeyFile::new(master, id.clone()))?;
            }
            EncryptionMode::Password => {
                let password = options
                    .password
                    .as_deref()
                    .ok_or_else(|| Error::InvalidInput("password mode needs a password".into()))?;
                let master = master.as_ref().expect("made for encrypted modes");
                written_key = Some(keys::write_password_key(backend, master, password)?);
            }
        }
        let settings = Settings {
            cairn_repository: FORMAT_VERSION,
            id,
            created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            chunker: options.chunker,
            compression_level: options.compression_level,
            encryption: options.encryption,
        };
        let sealed_settings = master.as_ref().map(|m| {
            hex::encode(m.seal(&serde_json::to_vec(&settings).expect("settings serialize")))
        });
        let config = Config {
            cairn_repository: settings.cairn_repository,
            id: settings.id,
            created: settings.created,
            chunker: settings.chunker,
            compression_level: settings.compression_level,
            encryption: settings.encryption,
            key_check: None,
            sealed_settings,
        };
        let config_bytes = serde_json::to_vec_pretty(&config).expect("config serializes");
        backend.put(objects::CONFIG, &config_bytes)?;
        // An object store cannot create exclusively, so two racing inits may both have
        // written: the config read back tells which one won, and the loser takes its key
        // back out and says so.
        if backend.get(objects::CONFIG)? != config_bytes {
            if let Some(key) = written_key {
                backend.delete(&keys::key_object_name(&key))?;
            }
            return Err(Error::InvalidInput(format!(
                "{} was initialised by another run at the same time: that repository stands; open \
                 it with its password (or choose another location)",
                backend.location()
            )));
        }
        Ok(config)
    }

    /// Reads the plaintext `config`, with a clear error when there is no repository.
    pub fn read_config(backend: &dyn Backend) -> Result<Config> {
        let bytes = backend.get(objects::CONFIG).map_err(|e| {
            if e.kind() == ErrorKind::NotFound {
                let location = backend.location();
                Error::not_found(
                    Missing::Repository {
                        location: location.clone(),
                    },
                    format!(
                        "no cairn repository at {location} (no config file): create one with \
                         `cairn init --repo {location}`"
                    ),
                )
            } else {
                e
            }
        })?;
        decode_config(&bytes, &backend.location())
    }

    /// Opens a repository. `secret` is called once with the mode the config states, so a
    /// password prompt appears only when one is needed; for `None` it must not ask, only
    /// return the secret the user gave for this repository unasked, if any, because a secret
    /// given for a repository whose config says `none` is refused as a downgrade (invariant
    /// 8). The local cache lives in `cache_root/<repository id>`; it remembers the settings
    /// first seen and refuses a config that states others.
    pub fn open(
        backend: Arc<dyn Backend>,
        secret: impl FnOnce(EncryptionMode) -> Result<Secret>,
        cache_root: &Path,
    ) -> Result<Self> {
        let config = Self::read_config(backend.as_ref())?;
        let repository_cache = cache_root.join(&config.id);
        let remembered = RememberedSettings::at(&repository_cache);
        remembered.check(&config.settings(), &backend.location())?;
        let (master, opened_key) = match config.encryption {
            EncryptionMode::None => {
                refuse_downgrade_to_none(backend.as_ref(), &config, secret(EncryptionMode::None)?)?;
                (None, None)
            }
            mode => {
                let last_key = repository_cache.join(LAST_KEY_FILE);
                let tried_first = std::fs::read_to_string(&last_key).ok();
                let (master, opened_key) = Self::unlock(
                    backend.as_ref(),
                    &config,
                    secret(mode)?,
                    tried_first.as_deref(),
                )?;
                if let Some(id) = &opened_key
                    && tried_first.as_deref() != Some(id)
                {
                    // Only a saving: a key that cannot be remembered is found by listing.
                    let _ = backend::create_private_dir(&repository_cache).and_then(|()| {
                        crate::catalogue::write_private_atomically(&last_key, id.as_bytes())
                    });
                }
                (Some(master), opened_key)
            }
        };
        remembered.remember(&config.settings())?;
        let seed = master.as_ref().map_or(0, MasterKey::chunker_seed);
        let chunker = Chunker::new(config.chunker, seed)?;
        let codec =
            Codec::new(master, config.compression_level).with_format(config.cairn_repository);
        let index = BlobIndex::open(&repository_cache)?;
        let synced = std::time::Instant::now();
        index.sync(backend.as_ref(), &codec)?;
        tracing::info!(
            "opened repository {} at {} (encryption: {:?}{}); index cache {} brought up to date in {:.1}s",
            &config.id[..8.min(config.id.len())],
            backend.location(),
            config.encryption,
            opened_key
                .as_ref()
                .map(|k| format!(", key {}", &k[..8.min(k.len())]))
                .unwrap_or_default(),
            repository_cache.display(),
            synced.elapsed().as_secs_f64()
        );
        let trees = tree_cache::TreeCache::in_dir(
            (backend.preferred_concurrency() > 1).then(|| repository_cache.join("trees")),
        );
        Ok(Repository {
            backend,
            config,
            codec,
            chunker,
            index,
            catalogue: crate::catalogue::Catalogue::in_dir(&repository_cache),
            trees,
            frames: frame_cache::FrameCache::new(FRAMES_KEPT_BYTES),
            lock_wait_ms: Default::default(),
            opened_key,
            cache_dir: repository_cache,
            dry_run: false,
        })
    }

    /// The repository as a dry run sees it: every write succeeds without reaching the store
    /// or the local cache, while what was written is remembered in memory, so the run goes
    /// through every step a real one takes (chunks stored once, packs and index files
    /// written, the checkpoint saved) and reports what it would add. Only its lock is
    /// stored, shared whatever the run asks for. Every command's `--dry-run` opens this.
    pub fn into_dry_run(mut self) -> Repository {
        self.backend = Arc::new(layers::DryRun {
            inner: self.backend,
        });
        self.index.keep_additions_in_memory();
        self.dry_run = true;
        self
    }

    /// Whether this is a dry run's view (`into_dry_run`): nothing it writes is kept.
    pub fn is_dry_run(&self) -> bool {
        self.dry_run
    }

    /// The master key `secret` opens, and in password mode the id of the key object that
    /// opened it. In password mode key `tried_first` (the one that opened the repository
    /// last time, remembered in the cache) is tried before the keys are listed.
    fn unlock(
        backend: &dyn Backend,
        config: &Config,
        secret: Secret,
        tried_first: Option<&str>,
    ) -> Result<(MasterKey, Option<String>)> {
        let location = backend.location();
        match (config.encryption, secret) {
            (EncryptionMode::Password, Secret::Password(password)) => {
                if let Some(id) = tried_first.filter(|id| keys::is_key_id(id)) {
                    let opened = backend
                        .get(&keys::key_object_name(id))
                        .ok()
                        .and_then(|bytes| serde_json::from_slice::<PasswordKey>(&bytes).ok())
                        .and_then(|key| key.unwrap(&password).ok().flatten());
                    if let Some(master) = opened
                        && verify_master_key(config, &master, &location)?
                    {
                        return Ok((master, Some(id.to_owned())));
                    }
                }
                // A key the password opens whose master key the config does not accept.
                let mut unaccepted_key = None;
                for object in backend.list(ObjectKind::Key.prefix())? {
                    let bytes = backend.get(&object.name)?;
                    let unwrapped = serde_json::from_slice::<PasswordKey>(&bytes)
                        .map_err(|e| Error::corrupt(&object.name, e.to_string()))
                        .and_then(|key| key.unwrap(&password));
                    match unwrapped {
                        Ok(Some(master)) if verify_master_key(config, &master, &location)? => {
                            let id = keys::key_id(&object.name).to_owned();
                            return Ok((master, Some(id)));
                        }
                        Ok(Some(_)) => unaccepted_key = Some(object.name),
                        Ok(None) => {}
                        // One unreadable key must not lock out the others.
                        Err(e) => tracing::warn!("skipping key {}: {e}", object.name),
                    }
                }
                match unaccepted_key {
                    Some(key) => Err(Error::Tampered {
                        repository: location,
                        what: format!(
                            "the password opens {key}, but the config's seal does not open \
                             under that key: the config or the key was replaced"
                        ),
                    }),
                    None => Err(Error::WrongKey(format!(
                        "wrong password for repository {location}"
                    ))),
                }
            }
            (EncryptionMode::Keyfile, Secret::KeyFile(path)) => {
                let bytes = std::fs::read(&path)
                    .map_err(|e| Error::io(format!("reading key file {}", path.display()), e))?;
                let master = serde_json::from_slice::<KeyFile>(&bytes)
                    .ok()
                    .and_then(|file| file.master_key());
                let master = match master {
                    Some(key) if verify_master_key(config, &key, &location)? => Some(key),
                    _ => None,
                };
                let master = master.ok_or_else(|| {
                    Error::WrongKey(format!(
                        "wrong key: {} is not the key file of repository {location}",
                        path.display()
                    ))
                })?;
                Ok((master, None))
            }
            (mode, _) => Err(Error::InvalidInput(format!(
                "repository {location} is in {mode} mode and needs its {}",
                if mode == EncryptionMode::Password {
                    "password"
                } else {
                    "key file (--key-file)"
                }
            ))),
        }
    }

    /// Lets lock acquisition wait up to `wait` for conflicting locks to go (0: fail at once).
    pub fn wait_for_locks(&self, wait: std::time::Duration) {
        let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        self.lock_wait_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// How long lock acquisition waits for conflicting locks.
    pub fn lock_wait(&self) -> std::time::Duration {
        std::time::Duration::from_millis(
            self.lock_wait_ms.load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// The backend, shared (for work that outlives a borrow, like a lock's refresher).
    pub fn backend_arc(&self) -> Arc<dyn Backend> {
        self.backend.clone()
    }

    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn codec(&self) -> &Codec {
        &self.codec
    }

    pub fn chunker(&self) -> &Chunker {
        &self.chunker
    }

    pub fn index(&self) -> &BlobIndex {
        &self.index
    }

    /// The local catalogue of checkpoint records.
    pub fn catalogue(&self) -> &crate::catalogue::Catalogue {
        &self.catalogue
    }

    /// The id of the `keys/<id>` object whose password opened the repository; `None` unless
    /// it is in password mode.
    /// This repository's directory in the local cache (private; it exists once opened).
    pub(crate) fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    pub fn opened_key(&self) -> Option<&str> {
        self.opened_key.as_deref()
    }

    /// Whether `other` gives the same bytes the same blob ids and chunk boundaries (it was
    /// made with `init --like`, or this one was), so blobs copy between them as they are.
    pub fn shares_ids_with(&self, other: &Repository) -> bool {
        let probe = b"cairn: do these repositories share blob ids?";
        let seed = |repo: &Repository| repo.codec.master_key().map(MasterKey::chunker_seed);
        self.codec.id_of(probe) == other.codec.id_of(probe)
            && self.config.chunker == other.config.chunker
            && seed(self) == seed(other)
    }

    /// Where blob `id` is stored. A blob the cache lacks may come from a run that finished
    /// after this repository was opened, so the cache is synced once before giving up.
    pub fn locate(&self, id: &BlobId) -> Result<BlobLocation> {
        if let Some(location) = self.index.get(id)? {
            return Ok(location);
        }
        self.index.sync_listed(self.backend(), &self.codec)?;
        self.index.get(id)?.ok_or_else(|| {
            Error::not_found(
                Missing::Blob(*id),
                format!("blob {id} is not in repository {}", self.backend.location()),
            )
        })
    }

    /// Reads tree `id` like `read_blob`, from the local cache of trees when the repository
    /// is a round trip away and the tree is kept there (see `tree_cache`).
    pub fn read_tree_blob(&self, id: &BlobId) -> Result<Vec<u8>> {
        if let Some(plaintext) = self.trees.get(&self.codec, id) {
            return Ok(plaintext);
        }
        let location = self.locate(id)?;
        let stored = self.read_stored_blob(&location, id)?;
        let plaintext = self.decode_blob_at(&location, id, &stored)?;
        // The cache keeps a tree's own stored form, which a tree sharing its frame lacks.
        if location.entry.is_alone() {
            self.keep_tree(id, &stored);
        }
        Ok(plaintext)
    }

    /// Keeps tree `id`, in its stored form, in the local cache of trees (when there is one).
    pub fn keep_tree(&self, id: &BlobId, stored: &[u8]) {
        self.trees.put(id, stored);
    }

    /// Reads blob `id`, decrypts and decompresses it, and checks it against its id.
    pub fn read_blob(&self, id: &BlobId) -> Result<Vec<u8>> {
        self.read_blob_at(&self.locate(id)?, id)
    }

    /// Reads blob `id` from `location` and checks it against its id.
    pub fn read_blob_at(&self, location: &BlobLocation, id: &BlobId) -> Result<Vec<u8>> {
        if location.entry.is_alone() {
            let stored = self.read_stored_blob(location, id)?;
            return self.decode_blob_at(location, id, &stored);
        }
        self.blob_of_frame(location, id, || {
            self.read_stored_blob(location, id).map(Cow::Owned)
        })
    }

    /// Blob `id` of the shared frame at `location`, cut from the frame kept decoded, or
    /// else from the frame decoded from `stored` (its stored bytes, asked for only then; by
    /// one thread, the others asking for the frame meanwhile waiting for it).
    fn blob_of_frame<'a>(
        &self,
        location: &BlobLocation,
        id: &BlobId,
        stored: impl FnOnce() -> Result<Cow<'a, [u8]>>,
    ) -> Result<Vec<u8>> {
        let where_ = || format!("pack {} blob {}", location.pack, id);
        codec::check_blob_lengths(&location.entry, &where_)?;
        let frame = self.frames.get_or_decode(
            (location.pack, location.entry.offset),
            u64::from(location.entry.frame_raw_length),
            |into| {
                self.codec
                    .decode_frame(&stored()?, &location.entry, &where_, into)
            },
        )?;
        self.codec.cut_blob(&frame, &location.entry, &where_)
    }

    /// Whether the shared frame at `location` is kept decoded (or being decoded), so that
    /// `read_blob_at` cuts the blob out of it without a read.
    pub fn holds_frame(&self, location: &BlobLocation) -> bool {
        !location.entry.is_alone() && self.frames.holds((location.pack, location.entry.offset))
    }

    /// The bytes of blob `id` as stored at `location`, its lengths checked before they are
    /// asked for.
    fn read_stored_blob(&self, location: &BlobLocation, id: &BlobId) -> Result<Vec<u8>> {
        let where_ = || format!("pack {} blob {}", location.pack, id);
        codec::check_blob_lengths(&location.entry, &where_)?;
        let pack = pack_object_name(&location.pack);
        self.backend
            .get_range(
                &pack,
                location.entry.offset as u64,
                location.entry.length as u64,
            )
            .map_err(|e| blob_read_error(e, pack, &where_))
    }

    /// Decodes blob `id`, whose stored bytes at `location` are `stored` (read along with its
    /// neighbours), and checks it against its id, as `read_blob_at` does.
    pub fn decode_blob_at(
        &self,
        location: &BlobLocation,
        id: &BlobId,
        stored: &[u8],
    ) -> Result<Vec<u8>> {
        if !location.entry.is_alone() {
            return self.blob_of_frame(location, id, || Ok(Cow::Borrowed(stored)));
        }
        let where_ = || format!("pack {} blob {}", location.pack, id);
        codec::check_blob_lengths(&location.entry, &where_)?;
        self.codec.decode_blob(stored, &location.entry, &where_)
    }

    /// Encodes `value` as JSON and stores it under `name`, sealed when encrypted.
    pub fn write_json_object(&self, name: &str, value: &impl Serialize) -> Result<()> {
        let json = serde_json::to_vec(value).expect("records serialize");
        self.backend.put(name, &self.codec.encode(&json, true))
    }

    /// Reads what `write_json_object` stored.
    pub fn read_json_object<T: DeserializeOwned>(&self, name: &str) -> Result<T> {
        let plaintext = self.read_object_plaintext(name)?;
        serde_json::from_slice(&plaintext).map_err(|e| Error::corrupt(name, e.to_string()))
    }

    /// The decoded plaintext of record object `name` (a checkpoint or a lock).
    pub fn read_object_plaintext(&self, name: &str) -> Result<Vec<u8>> {
        let stored = self.backend.get(name)?;
        self.codec
            .decode(&stored, MAX_RECORD_BYTES, &|| name.to_owned())
    }
}

/// A failed read of the blob `where_` names, in object `pack`: a missing or truncated pack
/// says which blob it cost.
fn blob_read_error(e: Error, pack: String, where_: &dyn Fn() -> String) -> Error {
    match e.kind() {
        ErrorKind::NotFound => Error::not_found(
            Missing::Object { name: pack },
            format!("{} is missing ({e})", where_()),
        ),
        ErrorKind::Corrupt => Error::corrupt(where_(), e.to_string()),
        _ => e,
    }
}

/// Parses and checks the plaintext `config` of the repository at `repository` (named in
/// errors): format version, id, compression level and chunker bounds.
pub fn decode_config(bytes: &[u8], repository: &str) -> Result<Config> {
    let location = format!("{repository}/config");
    let config: Config =
        serde_json::from_slice(bytes).map_err(|e| Error::corrupt(&location, e.to_string()))?;
    if !(FORMAT_VERSION_OLDEST..=FORMAT_VERSION).contains(&config.cairn_repository) {
        return Err(Error::InvalidInput(format!(
            "repository {} has format version {}; this cairn reads versions \
             {FORMAT_VERSION_OLDEST} to {FORMAT_VERSION}",
            repository, config.cairn_repository
        )));
    }
    if !is_repository_id(&config.id) {
        return Err(Error::corrupt(
            &location,
            format!("repository id {:?} is not 64 hex digits", config.id),
        ));
    }
    if !COMPRESSION_LEVELS.contains(&config.compression_level) {
        return Err(Error::corrupt(
            &location,
            format!(
                "compression level {} is out of range 1..=22",
                config.compression_level
            ),
        ));
    }
    config
        .chunker
        .validate()
        .map_err(|e| Error::corrupt(&location, e.to_string()))?;
    Ok(config)
}
