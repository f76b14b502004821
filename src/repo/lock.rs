//! Repository locks: `locks/<random id>` objects saying who is working on the repository.
//! Backups take a shared lock; a command that deletes data takes an exclusive one and waits
//! for no one: it fails with `Locked` while another live lock exists. A lock left by a
//! process that died on this host is recognised as stale and ignored. Locks are encoded like
//! every other object, so an encrypted repository does not reveal host names.

use super::Repository;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// The content of a lock object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockRecord {
    pub host: String,
    pub pid: u32,
    pub time: String,
    pub exclusive: bool,
    pub purpose: String,
}

impl LockRecord {
    fn is_stale(&self, this_host: &str) -> bool {
        // SAFETY: kill with signal 0 only checks whether the process exists.
        let alive = unsafe { libc::kill(self.pid as libc::pid_t, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        self.host == this_host && !alive
    }
}

/// A held lock; dropping it removes the lock object.
pub struct LockGuard<'a> {
    repo: &'a Repository,
    name: String,
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.repo.backend().delete(&self.name) {
            tracing::warn!("could not remove lock {}: {e}", self.name);
        }
    }
}

/// Takes a lock on `repo` for `purpose`. The lock is written first and the others are read
/// afterwards, so of two processes starting at once at least one sees the other; on a
/// conflict the new lock is removed again and `Locked` names the holder.
pub fn acquire<'a>(repo: &'a Repository, exclusive: bool, purpose: &str) -> Result<LockGuard<'a>> {
    let host = crate::host_name();
    let record = LockRecord {
        host: host.clone(),
        pid: std::process::id(),
        time: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        exclusive,
        purpose: purpose.to_owned(),
    };
    let name = format!("locks/{}", hex::encode(crate::crypto::random_bytes::<16>()));
    repo.write_json_object(&name, &record)?;
    // From here on the guard removes our lock, whatever happens.
    let guard = LockGuard { repo, name };
    for object in repo.backend().list("locks/")? {
        if object.name == guard.name {
            continue;
        }
        let other: LockRecord = match repo.read_json_object(&object.name) {
            Ok(other) => other,
            Err(e) if e.kind() == crate::error::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if !other.is_stale(&host) && (exclusive || other.exclusive) {
            return Err(Error::Locked(format!(
                "repository is locked by {} (pid {} on {}, since {}): wait for it to finish; \
                 if that process is gone, delete {} from the repository",
                other.purpose, other.pid, other.host, other.time, object.name
            )));
        }
    }
    // What was indexed before the lock may have been pruned since: the cache catches up
    // with the index files now, so nothing is deduplicated against a deleted pack.
    repo.index().sync(repo.backend(), repo.codec())?;
    Ok(guard)
}
