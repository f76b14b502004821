//! The repository's `config` object: plaintext JSON that says how to read everything else —
//! format version, repository id, chunker parameters, zstd level, encryption mode and, for
//! encrypted repositories, a key check (the repository id sealed with the master key) that
//! tells a wrong key or key file apart from a corrupt object.

use crate::chunker::ChunkerParams;
use serde::{Deserialize, Serialize};

/// The repository format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

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
    /// Hex of the repository id sealed with the master key (encrypted modes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_check: Option<String>,
}
