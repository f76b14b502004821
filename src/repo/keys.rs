//! The passwords of a `password`-mode repository. Each `keys/<id>` object wraps the same
//! master key under one password, so a repository can have several passwords, and a password
//! changes by adding a key and removing another; no data is rewritten. This module lists, adds
//! and removes those objects and keeps two invariants: a new key is read back and opened with
//! its password before anything relies on it, and the last key that can be read is never
//! removed (without a key the repository is unreadable forever).

use super::Repository;
use super::backend::Backend;
use super::config::{Config, EncryptionMode};
use crate::crypto::{MasterKey, PasswordKey};
use crate::error::{Error, Missing, Result};
use crate::repo::objects::ObjectKind;

/// The prefix of every key object's name.
/// The fewest hex digits of a key id that name a key.
const KEY_ID_PREFIX_DIGITS_MIN: usize = 4;
/// Hex digits of a key id shown in messages.
const SHORT_KEY_ID_DIGITS: usize = 8;

/// The id of key object `name`: its name without `keys/`.
pub(super) fn key_id(name: &str) -> &str {
    name.strip_prefix(ObjectKind::Key.prefix()).unwrap_or(name)
}

/// Whether `id` could name a key: the hex digits of a BLAKE3 hash.
pub(super) fn is_key_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

pub(super) fn key_object_name(id: &str) -> String {
    ObjectKind::Key.name(id)
}

/// The first digits of a key id, as shown to people.
pub fn short_key_id(id: &str) -> &str {
    id.get(..SHORT_KEY_ID_DIGITS).unwrap_or(id)
}

/// Wraps `master` with `password` into a new key object, stores it, and returns its id (the
/// BLAKE3 hash of its bytes, so two keys never share a name).
pub(super) fn write_password_key(
    backend: &dyn Backend,
    master: &MasterKey,
    password: &[u8],
) -> Result<String> {
    let key = PasswordKey {
        host: crate::host_name(),
        ..PasswordKey::wrap(master, password)?
    };
    let bytes = serde_json::to_vec_pretty(&key).expect("keys serialize");
    let id = blake3::hash(&bytes).to_hex().to_string();
    backend.put(&key_object_name(&id), &bytes)?;
    Ok(id)
}

/// Fails unless the repository keeps password keys, saying where its key lives instead.
pub fn ensure_password_mode(config: &Config, location: &str) -> Result<()> {
    match config.encryption {
        EncryptionMode::Password => Ok(()),
        EncryptionMode::Keyfile => Err(Error::InvalidInput(format!(
            "repository {location} is in keyfile mode: its key lives in the key file you keep \
             (--key-file), not in the repository, so it has no passwords to manage; keep copies \
             of that file somewhere safe instead"
        ))),
        EncryptionMode::None => Err(Error::InvalidInput(format!(
            "repository {location} is not encrypted (encryption: none): it has no keys or \
             passwords to manage"
        ))),
    }
}

/// Refuses a password no one should use: an empty one.
pub fn check_new_password(password: &[u8]) -> Result<()> {
    if password.is_empty() {
        return Err(Error::InvalidInput(
            "the new password is empty: choose a non-empty password".into(),
        ));
    }
    Ok(())
}

/// One key object of a repository.
#[derive(Debug, Clone)]
pub struct KeyInfo {
    /// The object is `keys/<id>`; 64 hex digits.
    pub id: String,
    /// When the key was made (RFC 3339), empty when unknown.
    pub created: String,
    /// The host the key was made on, empty when unknown.
    pub host: String,
    /// Whether this key's password opened the repository.
    pub opened: bool,
    /// Why the object cannot be read as a key, when it cannot; such a key opens nothing.
    pub unreadable: Option<String>,
}

impl KeyInfo {
    pub fn short_id(&self) -> &str {
        short_key_id(&self.id)
    }
}

/// A key checked to be removable by `Repository::plan_key_removal`, for `remove_key`.
#[derive(Debug, Clone)]
pub struct KeyRemovalPlan {
    key: KeyInfo,
}

impl KeyRemovalPlan {
    /// The key that would be removed.
    pub fn key(&self) -> &KeyInfo {
        &self.key
    }
}

impl Repository {
    /// The id of the key that opened the repository; fails in `none` and `keyfile` mode.
    fn opened_password_key(&self) -> Result<&str> {
        ensure_password_mode(&self.config, &self.backend.location())?;
        Ok(self
            .opened_key()
            .expect("a password-mode repository is opened by one of its keys"))
    }

    /// Every key object, oldest first; unreadable ones are listed with the reason.
    pub fn keys(&self) -> Result<Vec<KeyInfo>> {
        let opened = self.opened_password_key()?;
        let mut keys = Vec::new();
        for object in self.backend.list(ObjectKind::Key.prefix())? {
            let id = key_id(&object.name).to_owned();
            let parsed = self.backend.get(&object.name).and_then(|bytes| {
                serde_json::from_slice::<PasswordKey>(&bytes)
                    .map_err(|e| Error::corrupt(&object.name, e.to_string()))
            });
            let (created, host, unreadable) = match parsed {
                Ok(key) => (key.created, key.host, None),
                Err(e) => (String::new(), String::new(), Some(e.to_string())),
            };
            keys.push(KeyInfo {
                opened: id == opened,
                id,
                created,
                host,
                unreadable,
            });
        }
        keys.sort_by(|a, b| (&a.created, &a.id).cmp(&(&b.created, &b.id)));
        Ok(keys)
    }

    /// Adds `password` as another password of the repository and returns the new key's id.
    /// The key is read back and opened with `password` before this returns, so the password
    /// is known to work; a key that does not open is removed again and reported.
    pub fn add_password(&self, password: &[u8]) -> Result<String> {
        self.opened_password_key()?;
        check_new_password(password)?;
        let master = self
            .codec
            .master_key()
            .expect("a password-mode repository has a master key");
        let id = write_password_key(self.backend.as_ref(), master, password)?;
        let name = key_object_name(&id);
        let opens = self.backend.get(&name).and_then(|bytes| {
            serde_json::from_slice::<PasswordKey>(&bytes)
                .map_err(|e| Error::corrupt(&name, e.to_string()))?
                .unwrap(password)
        })?;
        let location = self.backend.location();
        let verified = match opens {
            Some(key) => super::verify_master_key(&self.config, &key, &location)?,
            None => false,
        };
        if !verified {
            self.backend.delete(&name)?;
            return Err(Error::corrupt(
                &name,
                "the key just written does not open with its password as read back; it was removed",
            ));
        }
        Ok(id)
    }

    /// The key `id_prefix` names (a full id or at least 4 hex digits of one), checked to be
    /// removable: some other readable key stays behind, and it is not the key in use.
    /// Changes nothing.
    pub fn plan_key_removal(&self, id_prefix: &str) -> Result<KeyRemovalPlan> {
        self.plan_removal(id_prefix, true)
    }

    /// The removal of the key in use once `add_password` gave a new password (`key passwd`):
    /// checked like `plan_key_removal`, except that this key is the one to go.
    pub fn plan_replaced_key_removal(&self) -> Result<KeyRemovalPlan> {
        let opened = self.opened_key().ok_or_else(|| {
            Error::InvalidInput("no key opened this repository: it has no passwords".into())
        })?;
        self.plan_removal(opened, false)
    }

    fn plan_removal(&self, id_prefix: &str, keep_in_use: bool) -> Result<KeyRemovalPlan> {
        let location = self.backend.location();
        let keys = self.keys()?;
        let key = find_key(&keys, id_prefix, &location)?;
        let others = keys.iter().filter(|k| k.id != key.id);
        let others_readable = others.clone().filter(|k| k.unreadable.is_none()).count();
        if others_readable == 0 {
            let unreadable = match others.count() {
                0 => String::new(),
                n => format!(" (the {n} other key objects cannot be read)"),
            };
            return Err(Error::InvalidInput(format!(
                "key {} is the last key of repository {location}{unreadable}: removing it would \
                 leave no password that opens the repository; to change its password use \
                 `cairn key passwd`, or add another password first with `cairn key add`",
                key.short_id()
            )));
        }
        // The other keys are only known to parse, not to open with a password anyone still
        // has: the key in use never goes, lest the repository lock everyone out.
        if keep_in_use && self.opened_key() == Some(key.id.as_str()) {
            return Err(Error::InvalidInput(format!(
                "key {} is the one your password opened: to change your password use \
                 `cairn key passwd`; to remove this key, open the repository with another \
                 password",
                key.short_id()
            )));
        }
        Ok(KeyRemovalPlan { key: key.clone() })
    }

    /// Deletes the key `plan` names.
    pub fn remove_key(&self, plan: &KeyRemovalPlan) -> Result<()> {
        self.backend.delete(&key_object_name(&plan.key.id))
    }
}

/// The key among `keys` that `id_prefix` names.
fn find_key<'a>(keys: &'a [KeyInfo], id_prefix: &str, location: &str) -> Result<&'a KeyInfo> {
    let id_prefix = id_prefix.to_ascii_lowercase();
    if id_prefix.len() < KEY_ID_PREFIX_DIGITS_MIN
        || !id_prefix.chars().all(|c| c.is_ascii_hexdigit())
    {
        return Err(Error::InvalidInput(format!(
            "{id_prefix:?} is not a key id: give a full id or at least \
             {KEY_ID_PREFIX_DIGITS_MIN} hex digits of one (`cairn key list` shows them)"
        )));
    }
    let matches: Vec<&KeyInfo> = keys
        .iter()
        .filter(|k| k.id.starts_with(&id_prefix))
        .collect();
    match matches.as_slice() {
        [key] => Ok(key),
        [] => Err(Error::not_found(
            Missing::Key {
                asked: id_prefix.clone(),
            },
            format!(
                "no key of repository {location} matches {id_prefix:?}; `cairn key list` shows them"
            ),
        )),
        many => Err(Error::InvalidInput(format!(
            "{id_prefix:?} is ambiguous: it matches {} keys ({}); give more digits",
            many.len(),
            many.iter()
                .map(|k| k.short_id())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::backend::LocalBackend;
    use crate::repo::{InitOptions, Secret};
    use std::sync::Arc;

    fn password_repo(dir: &std::path::Path, password: &[u8]) -> Arc<dyn Backend> {
        let backend: Arc<dyn Backend> = Arc::new(LocalBackend::new(dir.join("repo")));
        let options = InitOptions {
            password: Some(password.to_vec()),
            ..InitOptions::new(EncryptionMode::Password)
        };
        Repository::init(backend.as_ref(), options).unwrap();
        backend
    }

    fn open(
        backend: &Arc<dyn Backend>,
        dir: &std::path::Path,
        password: &[u8],
    ) -> Result<Repository> {
        let secret = |_| Ok(Secret::Password(password.to_vec()));
        Repository::open(backend.clone(), secret, &dir.join("cache"))
    }

    #[test]
    fn added_password_opens_and_the_last_key_stays() {
        let dir = tempfile::tempdir().unwrap();
        let backend = password_repo(dir.path(), b"first");
        let repo = open(&backend, dir.path(), b"first").unwrap();
        let first = repo.opened_key().unwrap().to_owned();
        assert!(repo.plan_key_removal(&first).is_err(), "the only key");
        assert!(repo.add_password(b"").is_err(), "an empty password");

        let second = repo.add_password(b"second").unwrap();
        let reopened = open(&backend, dir.path(), b"second").unwrap();
        assert_eq!(reopened.opened_key(), Some(second.as_str()));
        let keys = reopened.keys().unwrap();
        assert_eq!(keys.len(), 2);
        assert!(keys.iter().any(|k| k.id == second && k.opened));
        assert!(keys.iter().any(|k| k.id == first && !k.opened));

        let plan = reopened.plan_key_removal(&first[..6]).unwrap();
        reopened.remove_key(&plan).unwrap();
        assert!(open(&backend, dir.path(), b"first").is_err());
        assert!(
            reopened.plan_key_removal(&second).is_err(),
            "now the only key"
        );
    }

    #[test]
    fn an_unreadable_key_does_not_count_as_another_key() {
        let dir = tempfile::tempdir().unwrap();
        let backend = password_repo(dir.path(), b"only");
        backend.put("keys/0000aaaa", b"not a key").unwrap();
        let repo = open(&backend, dir.path(), b"only").unwrap();
        let opened = repo.opened_key().unwrap().to_owned();
        let refused = repo.plan_key_removal(&opened).unwrap_err().to_string();
        assert!(refused.contains("cannot be read"), "{refused}");
        let plan = repo.plan_key_removal("0000").unwrap();
        assert!(plan.key().unreadable.is_some());
    }

    #[test]
    fn key_ids_need_enough_digits_and_one_match() {
        let key = |id: &str| KeyInfo {
            id: id.into(),
            created: String::new(),
            host: String::new(),
            opened: false,
            unreadable: None,
        };
        let keys = [key("abcd01"), key("abcd02")];
        assert!(find_key(&keys, "abc", "r").is_err());
        assert!(find_key(&keys, "abcd", "r").is_err());
        assert!(find_key(&keys, "zzzz", "r").is_err());
        assert_eq!(find_key(&keys, "ABCD02", "r").unwrap().id, "abcd02");
    }
}
