//! Keys and authenticated encryption. A repository's secrets are one `MasterKey`: the
//! XChaCha20-Poly1305 key that seals every object, the BLAKE3 key that makes blob ids reveal
//! nothing about content, and the seed of the chunker's gear table so chunk boundaries do not
//! either. In `password` mode the master key is wrapped by a key derived with argon2id; in
//! `keyfile` mode it lives in a file the user keeps. A wrong password or key fails the
//! Poly1305 check and is reported as such, before anything is written (invariant 5).

use crate::error::{Error, Result};
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};

/// Bytes of the random nonce stored in front of every sealed object.
pub(crate) const NONCE_BYTES: usize = 24;
/// Bytes of the Poly1305 tag stored after every sealed object.
pub(crate) const TAG_BYTES: usize = 16;
/// Bytes a sealed object is longer than its plaintext.
pub(crate) const SEAL_OVERHEAD_BYTES: usize = NONCE_BYTES + TAG_BYTES;
/// Largest argon2 memory cost accepted from a key (1 GiB; cairn makes keys of 64 MiB).
const KDF_MEMORY_KIB_MAX: u32 = 1 << 20;
/// Largest argon2 iteration count accepted from a key (cairn makes keys of 2).
const KDF_ITERATIONS_MAX: u32 = 16;
/// Bytes of a master key in its serialized form.
const MASTER_KEY_BYTES: usize = 32 + 32 + 8;

/// Fills `buf` with bytes from the operating system's random source.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    getrandom::getrandom(&mut buf).expect("the operating system's random source is available");
    buf
}

/// The secrets of one encrypted repository.
#[derive(Clone)]
pub struct MasterKey {
    encryption: [u8; 32],
    id_key: [u8; 32],
    chunker_seed: u64,
}

impl MasterKey {
    pub fn generate() -> Self {
        MasterKey {
            encryption: random_bytes(),
            id_key: random_bytes(),
            chunker_seed: u64::from_le_bytes(random_bytes()),
        }
    }

    /// A key for another repository whose blobs get the same ids and chunk boundaries
    /// (same id key and chunker seed) but are encrypted under a fresh key.
    pub fn generate_like(&self) -> Self {
        MasterKey {
            encryption: random_bytes(),
            ..self.clone()
        }
    }

    pub fn id_key(&self) -> &[u8; 32] {
        &self.id_key
    }

    pub fn chunker_seed(&self) -> u64 {
        self.chunker_seed
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MASTER_KEY_BYTES);
        out.extend_from_slice(&self.encryption);
        out.extend_from_slice(&self.id_key);
        out.extend_from_slice(&self.chunker_seed.to_le_bytes());
        out
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != MASTER_KEY_BYTES {
            return None;
        }
        Some(MasterKey {
            encryption: bytes[..32].try_into().ok()?,
            id_key: bytes[32..64].try_into().ok()?,
            chunker_seed: u64::from_le_bytes(bytes[64..72].try_into().ok()?),
        })
    }

    /// Encrypts `plaintext` as `nonce || ciphertext || tag`.
    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        seal_with(&self.encryption, plaintext)
    }

    /// Decrypts what `seal` produced; `None` when the key is wrong or a bit changed.
    pub fn open(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        open_with(&self.encryption, sealed)
    }
}

fn seal_with(key: &[u8; 32], plaintext: &[u8]) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new(key.into());
    let nonce: [u8; NONCE_BYTES] = random_bytes();
    let ciphertext = cipher
        .encrypt(XNonce::from_slice(&nonce), plaintext)
        .expect("XChaCha20-Poly1305 encrypts any length that fits in memory");
    let mut out = Vec::with_capacity(NONCE_BYTES + ciphertext.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    out
}

fn open_with(key: &[u8; 32], sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < SEAL_OVERHEAD_BYTES {
        return None;
    }
    let cipher = XChaCha20Poly1305::new(key.into());
    let (nonce, ciphertext) = sealed.split_at(NONCE_BYTES);
    cipher.decrypt(XNonce::from_slice(nonce), ciphertext).ok()
}

/// The argon2id cost parameters stored with each password-wrapped key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct KdfParams {
    pub algorithm: String,
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    pub salt: String,
}

impl KdfParams {
    fn new_random() -> Self {
        KdfParams {
            algorithm: "argon2id".into(),
            memory_kib: 64 * 1024,
            iterations: 2,
            parallelism: 1,
            salt: hex::encode(random_bytes::<16>()),
        }
    }

    fn derive(&self, password: &[u8]) -> Result<[u8; 32]> {
        let invalid = |what: String| Error::corrupt("key file", what);
        if self.algorithm != "argon2id" {
            return Err(invalid(format!("unknown kdf {:?}", self.algorithm)));
        }
        // A hostile repository must not make cairn allocate or spin without bound.
        if self.memory_kib > KDF_MEMORY_KIB_MAX
            || self.iterations > KDF_ITERATIONS_MAX
            || self.parallelism > 16
        {
            return Err(invalid(format!(
                "argon2 costs m={} KiB, t={}, p={} exceed the limits cairn accepts",
                self.memory_kib, self.iterations, self.parallelism
            )));
        }
        let salt = hex::decode(&self.salt).map_err(|_| invalid("salt is not hex".into()))?;
        let params =
            argon2::Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32))
                .map_err(|e| invalid(format!("argon2 parameters: {e}")))?;
        let memory = argon2_memory(&params);
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = [0u8; 32];
        argon
            .hash_password_into_with_memory(password, &salt, &mut out, memory)
            .map_err(|e| invalid(format!("argon2: {e}")))?;
        Ok(out)
    }
}

/// The memory argon2 works in, in huge pages where the kernel can: it reads it at random,
/// and in 4 KiB pages faulting it in and missing the TLB made a one-file backup take
/// 0.09-0.10 s against 0.06-0.08 s.
fn argon2_memory(params: &argon2::Params) -> Vec<argon2::Block> {
    let blocks = params.block_count();
    let mut memory = Vec::<argon2::Block>::with_capacity(blocks);
    let bytes = blocks * std::mem::size_of::<argon2::Block>();
    // SAFETY: the vector's allocation holds `blocks` blocks; advised before they are written.
    unsafe { crate::fs::uncached::advise_huge_pages(memory.as_ptr().cast(), bytes) };
    memory.resize(blocks, argon2::Block::default());
    memory
}

/// `keys/<id>` in a password-mode repository: the master key wrapped by a password.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PasswordKey {
    /// When the key was made (RFC 3339); informational.
    #[serde(default)]
    pub created: String,
    /// The host the key was made on; informational, empty in keys made before it was kept.
    #[serde(default)]
    pub host: String,
    pub kdf: KdfParams,
    /// Hex of `nonce || ciphertext || tag` of the master key.
    pub wrapped: String,
}

impl PasswordKey {
    pub(crate) fn wrap(master: &MasterKey, password: &[u8]) -> Result<Self> {
        let kdf = KdfParams::new_random();
        let wrapping_key = kdf.derive(password)?;
        Ok(PasswordKey {
            created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            host: String::new(),
            kdf,
            wrapped: hex::encode(seal_with(&wrapping_key, &master.to_bytes())),
        })
    }

    /// The master key, or `None` when the password is not this key's.
    pub(crate) fn unwrap(&self, password: &[u8]) -> Result<Option<MasterKey>> {
        let wrapping_key = self.kdf.derive(password)?;
        let sealed = hex::decode(&self.wrapped)
            .map_err(|_| Error::corrupt("key file", "wrapped key is not hex"))?;
        Ok(open_with(&wrapping_key, &sealed).and_then(|bytes| MasterKey::from_bytes(&bytes)))
    }
}

/// The key file of a `keyfile`-mode repository, kept by the user outside the repository.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct KeyFile {
    pub cairn_key_file: u32,
    pub repository: String,
    /// Hex of the master key: encryption key, id key, chunker seed (little-endian u64).
    pub master_key: String,
}

impl KeyFile {
    pub(crate) fn new(master: &MasterKey, repository: String) -> Self {
        KeyFile {
            cairn_key_file: 1,
            repository,
            master_key: hex::encode(master.to_bytes()),
        }
    }

    pub(crate) fn master_key(&self) -> Option<MasterKey> {
        MasterKey::from_bytes(&hex::decode(&self.master_key).ok()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn key_costs_past_the_caps_are_refused_before_any_work() {
        let costs = [
            (KDF_MEMORY_KIB_MAX + 1, 2, 1),
            (64 << 10, KDF_ITERATIONS_MAX + 1, 1),
            (64 << 10, 2, 17),
        ];
        for (memory_kib, iterations, parallelism) in costs {
            let kdf = KdfParams {
                algorithm: "argon2id".into(),
                memory_kib,
                iterations,
                parallelism,
                salt: "00".repeat(16),
            };
            let refused = kdf.derive(b"password").unwrap_err().to_string();
            assert!(refused.contains("exceed the limits"), "{refused}");
        }
    }

    proptest! {
        #[test]
        fn open_inverts_seal_and_any_flipped_bit_fails(
            data in proptest::collection::vec(any::<u8>(), 0..2048),
            flip in any::<prop::sample::Index>(),
        ) {
            let key = MasterKey::generate();
            let mut sealed = key.seal(&data);
            prop_assert_eq!(key.open(&sealed), Some(data.clone()));
            let bit = flip.index(sealed.len() * 8);
            sealed[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(key.open(&sealed).is_none());
        }
    }

    #[test]
    fn another_key_cannot_open() {
        let sealed = MasterKey::generate().seal(b"secret");
        assert!(MasterKey::generate().open(&sealed).is_none());
    }

    #[test]
    fn password_wrap_round_trips_and_rejects_wrong_password() {
        let master = MasterKey::generate();
        let wrapped = PasswordKey::wrap(&master, b"right").unwrap();
        let back = wrapped.unwrap(b"right").unwrap().unwrap();
        assert_eq!(back.to_bytes(), master.to_bytes());
        assert!(wrapped.unwrap(b"wrong").unwrap().is_none());
    }

    #[test]
    fn key_file_round_trips() {
        let master = MasterKey::generate();
        let file = KeyFile::new(&master, "repo".into());
        assert_eq!(file.master_key().unwrap().to_bytes(), master.to_bytes());
    }
}
