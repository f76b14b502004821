//! The repository's `config` object: plaintext JSON that says how to read everything else —
//! format version, repository id, chunker parameters, zstd level and encryption mode (the
//! `Settings`). In an encrypted repository of format 2 those settings are also sealed under
//! the master key (`sealed_settings`), so whoever controls the storage cannot change them, nor
//! turn the repository to `none`, without cairn noticing (invariant 8); the seal doubles as
//! the key check that tells a wrong key apart from a corrupt object. Format 1 sealed only the
//! repository id (`key_check`); such configs are still read. Format 3 adds frames of several
//! small blobs to packs, listed by frame in pack headers and index files (`repo::table`).

pub use crate::chunker::ChunkerParams;
use serde::{Deserialize, Serialize};

/// The repository format version this build writes.
pub const FORMAT_VERSION: u32 = 3;
/// The oldest format version this build reads: format 1 has no `sealed_settings`.
pub const FORMAT_VERSION_OLDEST: u32 = 1;

/// The zstd levels a repository may use.
pub const COMPRESSION_LEVELS: std::ops::RangeInclusive<i32> = 1..=22;

/// Default zstd level.
pub const DEFAULT_COMPRESSION_LEVEL: i32 = 3;

/// How a repository's objects are protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncryptionMode {
    /// Plaintext objects; ids are plain BLAKE3.
    None,
    /// The master key lives in a key file the user keeps.
    Keyfile,
    /// The master key is stored in `keys/`, wrapped by a password (argon2id).
    Password,
}

impl std::fmt::Display for EncryptionMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EncryptionMode::None => "none",
            EncryptionMode::Keyfile => "keyfile",
            EncryptionMode::Password => "password",
        })
    }
}

/// The settings a config states; in format 2 an encrypted config also carries them sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    pub cairn_repository: u32,
    pub id: String,
    pub created: String,
    pub chunker: ChunkerParams,
    pub compression_level: i32,
    pub encryption: EncryptionMode,
}

impl Settings {
    /// What differs from `self` in `now`, one phrase per setting, e.g.
    /// `encryption password -> none`.
    pub fn changes_to(&self, now: &Settings) -> Vec<String> {
        let chunker =
            |c: &ChunkerParams| format!("{}/{}/{}", c.min_bytes, c.avg_bytes, c.max_bytes);
        let mut changes = Vec::new();
        let mut compare = |what: &str, was: String, is: String| {
            if was != is {
                changes.push(format!("{what} {was} -> {is}"));
            }
        };
        compare(
            "format version",
            self.cairn_repository.to_string(),
            now.cairn_repository.to_string(),
        );
        compare("id", self.id.clone(), now.id.clone());
        compare("created", self.created.clone(), now.created.clone());
        compare("chunker", chunker(&self.chunker), chunker(&now.chunker));
        compare(
            "compression level",
            self.compression_level.to_string(),
            now.compression_level.to_string(),
        );
        compare(
            "encryption",
            self.encryption.to_string(),
            now.encryption.to_string(),
        );
        changes
    }
}

/// The `config` object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    /// Format version; readers refuse versions they do not know.
    pub cairn_repository: u32,
    /// 64 hex digits, random at `init`.
    pub id: String,
    pub created: String,
    pub chunker: ChunkerParams,
    pub compression_level: i32,
    pub encryption: EncryptionMode,
    /// Format 1, encrypted modes: hex of the repository id sealed with the master key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_check: Option<String>,
    /// Format 2, encrypted modes: hex of the `Settings` (compact JSON) sealed with the master
    /// key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_settings: Option<String>,
}

impl Config {
    /// The settings this config states.
    pub fn settings(&self) -> Settings {
        Settings {
            cairn_repository: self.cairn_repository,
            id: self.id.clone(),
            created: self.created.clone(),
            chunker: self.chunker,
            compression_level: self.compression_level,
            encryption: self.encryption,
        }
    }

    /// Whether the config carries a seal only a master key makes: evidence that the
    /// repository is encrypted whatever its `encryption` field says.
    pub fn carries_a_seal(&self) -> bool {
        self.key_check.is_some() || self.sealed_settings.is_some()
    }
}
