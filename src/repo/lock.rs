//! Repository locks: `locks/<random id>` objects saying who is working on the repository.
//! Backups, syncs, restores, mounts and the commands that only read take a shared lock; a
//! command that deletes data (forget, prune, repair) takes an exclusive one. A conflicting
//! run fails with `Locked`, naming the holder, or first waits as long as the repository
//! handle allows (`Repository::wait_for_locks`, the command line's `--retry-lock`).
//!
//! A held lock is rewritten every few minutes, so a lock older than `STALE_AFTER` belongs to
//! a run that is gone or hung; so does a lock of this host whose process is dead. Stale
//! locks are ignored, and `cairn unlock` removes them. Locks are encoded like every other
//! object, so an encrypted repository does not reveal host names.

use super::Repository;
use super::backend::Backend;
use super::codec::Codec;
use crate::error::{Error, ErrorKind, LockConflict, Result};
use crate::repo::objects::ObjectKind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// A lock not rewritten for this long is stale.
pub const STALE_AFTER: Duration = Duration::from_secs(30 * 60);
/// A held lock is rewritten this often.
const REFRESH_EVERY: Duration = Duration::from_secs(5 * 60);
/// How often a waiting run looks again.
const RETRY_EVERY: Duration = Duration::from_millis(500);

/// The content of a lock object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockRecord {
    pub host: String,
    pub pid: u32,
    /// When the lock was taken or last refreshed (RFC 3339).
    pub time: String,
    pub exclusive: bool,
    pub purpose: String,
}

impl LockRecord {
    fn new(exclusive: bool, purpose: &str) -> Self {
        LockRecord {
            host: crate::host_name(),
            pid: std::process::id(),
            time: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            exclusive,
            purpose: purpose.to_owned(),
        }
    }

    /// Why the lock is stale (its run is gone or hung), or `None` while it is live.
    pub fn stale_because(&self, this_host: &str) -> Option<String> {
        if self.host == this_host {
            // SAFETY: kill with signal 0 only checks whether the process exists.
            let alive = unsafe { libc::kill(self.pid as libc::pid_t, 0) } == 0
                || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
            if !alive {
                return Some(format!("process {} is gone", self.pid));
            }
        }
        let age = humantime::parse_rfc3339(&self.time)
            .ok()
            .and_then(|time| SystemTime::now().duration_since(time).ok())?;
        (age > STALE_AFTER).then(|| {
            format!(
                "not refreshed for {}",
                humantime::format_duration(Duration::from_secs(age.as_secs()))
            )
        })
    }

    fn describe(&self, name: &str) -> String {
        held_by(&self.purpose, self.pid, &self.host, &self.time, name)
    }
}

/// Whose lock object `name` is, as messages say it.
fn held_by(purpose: &str, pid: u32, host: &str, since: &str, name: &str) -> String {
    format!("{purpose} (pid {pid} on {host}, since {since}; {name})")
}

/// Who or what holds the lock a run waited for, as its error says it.
fn holder_words(conflict: &LockConflict) -> String {
    match conflict {
        LockConflict::HeldBy {
            lock,
            host,
            pid,
            purpose,
            since,
            ..
        } => held_by(purpose, *pid, host, since, lock),
        LockConflict::Unreadable { lock } => format!("an unreadable lock ({lock})"),
        LockConflict::KeptChanging => "locks that keep changing".to_owned(),
        LockConflict::OwnLockStale { age } => format!(
            "this run's own lock, last written {} ago",
            humantime::format_duration(*age)
        ),
    }
}

/// Writes `record` as lock object `name`.
fn put_record(backend: &dyn Backend, codec: &Codec, name: &str, record: &LockRecord) -> Result<()> {
    let json = serde_json::to_vec(record).expect("lock records serialize");
    backend.put(name, &codec.encode(&json, true))
}

fn new_lock_name() -> String {
    ObjectKind::Lock.name(&hex::encode(crate::crypto::random_bytes::<16>()))
}

/// A held lock, refreshed in the background; dropping it removes the lock object.
pub struct LockGuard {
    backend: Arc<dyn Backend>,
    /// The lock object's current name (a refresh writes a new one).
    name: Arc<Mutex<String>>,
    /// When the lock object was last written.
    written: Arc<Mutex<Instant>>,
    stop: Option<crossbeam_channel::Sender<()>>,
    refresher: Option<std::thread::JoinHandle<()>>,
}

impl LockGuard {
    /// Fails when the lock may look stale to others by now (the run was suspended, or its
    /// refreshes failed): a run checks this before it commits anything (a checkpoint, a
    /// deletion), since a prune elsewhere may have ignored the lock meanwhile.
    pub fn ensure_held(&self) -> Result<()> {
        let age = self.written.lock().expect("not poisoned").elapsed();
        if age + REFRESH_EVERY >= STALE_AFTER {
            let age = Duration::from_secs(age.as_secs());
            return Err(Error::Locked {
                conflict: Box::new(LockConflict::OwnLockStale { age }),
                message: format!(
                    "the repository lock was last written {} ago and may have been taken for \
                     stale: stopping before committing anything; run again",
                    humantime::format_duration(age)
                ),
            });
        }
        Ok(())
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(refresher) = self.refresher.take() {
            let _ = refresher.join();
        }
        let name = self.name.lock().expect("not poisoned").clone();
        if let Err(e) = self.backend.delete(&name) {
            tracing::warn!("could not remove lock {name}: {e}");
        }
    }
}

/// Rewrites the lock under a new name every `REFRESH_EVERY` until `stop` closes.
fn refresh_until_stopped(
    backend: Arc<dyn Backend>,
    codec: Codec,
    name: Arc<Mutex<String>>,
    written: Arc<Mutex<Instant>>,
    mut record: LockRecord,
    stop: crossbeam_channel::Receiver<()>,
) {
    while let Err(crossbeam_channel::RecvTimeoutError::Timeout) = stop.recv_timeout(REFRESH_EVERY) {
        record.time = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let fresh = new_lock_name();
        // The new object first, then the old one goes: the lock never disappears.
        match put_record(backend.as_ref(), &codec, &fresh, &record) {
            Ok(()) => {
                *written.lock().expect("not poisoned") = Instant::now();
                let old = std::mem::replace(&mut *name.lock().expect("not poisoned"), fresh);
                if let Err(e) = backend.delete(&old) {
                    tracing::warn!("could not remove the old lock {old}: {e}");
                }
            }
            Err(e) => tracing::warn!("could not refresh the repository lock: {e}"),
        }
    }
}

/// Lock objects with their records (`None`: unreadable).
type Locks = Vec<(String, Option<LockRecord>)>;

/// Every lock object of `repo` but `own` with its record, and the names of those that
/// vanished between the listing and their reading (a refresh or a release).
fn read_locks(repo: &Repository, own: &str) -> Result<(Locks, BTreeSet<String>)> {
    let mut locks = Vec::new();
    let mut vanished = BTreeSet::new();
    for name in repo.backend().list_names(ObjectKind::Lock.prefix())? {
        if name == own {
            continue;
        }
        match repo.read_json_object::<LockRecord>(&name) {
            Ok(record) => locks.push((name, Some(record))),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                vanished.insert(name);
            }
            Err(e) => {
                tracing::warn!("unreadable lock {name}: {e}");
                locks.push((name, None));
            }
        }
    }
    Ok((locks, vanished))
}

/// Every lock object of `repo` with its record (`None`: unreadable).
pub fn list(repo: &Repository) -> Result<Locks> {
    Ok(read_locks(repo, "")?.0)
}

/// The first live lock other than `own` that conflicts with a lock of kind `exclusive`. A
/// lock that vanished while being read may have been refreshed under a new name, so the
/// listing is read again (after a growing pause) until it holds still: until nothing
/// vanishes that had not vanished on the pass before.
fn conflicting(repo: &Repository, own: &str, exclusive: bool) -> Result<Option<LockConflict>> {
    let host = crate::host_name();
    let mut vanished_before = BTreeSet::new();
    for pass in 0..10 {
        if pass > 0 {
            std::thread::sleep(Duration::from_millis(50 * pass));
        }
        let (locks, vanished) = read_locks(repo, own)?;
        for (name, record) in locks {
            match record {
                Some(other)
                    if other.stale_because(&host).is_none() && (exclusive || other.exclusive) =>
                {
                    return Ok(Some(LockConflict::HeldBy {
                        lock: name,
                        host: other.host,
                        pid: other.pid,
                        purpose: other.purpose,
                        exclusive: other.exclusive,
                        since: other.time,
                    }));
                }
                // An unreadable lock is someone's: for an exclusive lock, better to wait.
                None if exclusive => return Ok(Some(LockConflict::Unreadable { lock: name })),
                _ => {}
            }
        }
        // A name listed again and still not there to read is no lock: an object store may
        // list for a while what a failed or interrupted write or delete left behind.
        if vanished.is_subset(&vanished_before) {
            return Ok(None);
        }
        vanished_before = vanished;
    }
    Ok(Some(LockConflict::KeptChanging))
}

/// One try at a lock.
enum Attempt {
    Held(LockGuard),
    Conflict(LockConflict),
    /// The lock object could not be written.
    Unwritable(Error),
}

/// Writes a lock, with the current time, and looks for conflicts; keeps it when there are
/// none. The lock is written first and the others read afterwards, so of two processes
/// starting at once at least one sees the other.
fn attempt(repo: &Repository, exclusive: bool, purpose: &str) -> Result<Attempt> {
    let record = LockRecord::new(exclusive, purpose);
    let name = new_lock_name();
    if let Err(e) = put_record(repo.backend(), repo.codec(), &name, &record) {
        return Ok(Attempt::Unwritable(e));
    }
    let (stop, stopped) = crossbeam_channel::bounded(0);
    let shared_name = Arc::new(Mutex::new(name.clone()));
    let written = Arc::new(Mutex::new(Instant::now()));
    // From here on the guard removes the lock, whatever happens.
    let mut guard = LockGuard {
        backend: repo.backend_arc(),
        name: shared_name.clone(),
        written: written.clone(),
        stop: Some(stop),
        refresher: None,
    };
    if let Some(holder) = conflicting(repo, &name, exclusive)? {
        return Ok(Attempt::Conflict(holder));
    }
    let (backend, codec) = (repo.backend_arc(), repo.codec().clone());
    guard.refresher = Some(std::thread::spawn(move || {
        refresh_until_stopped(backend, codec, shared_name, written, record, stopped)
    }));
    // What was indexed before the lock may have been pruned since: the cache catches up
    // with the index files now, so nothing is deduplicated against a deleted pack.
    repo.index().sync(repo.backend(), repo.codec())?;
    Ok(Attempt::Held(guard))
}

/// Takes a lock, waiting for conflicting ones as long as `repo.lock_wait()` allows. With
/// `reading`, a lock that cannot be written (a read-only server or medium) is done without,
/// with a warning, unless an exclusive lock is held.
fn acquire_as(
    repo: &Repository,
    exclusive: bool,
    purpose: &str,
    reading: bool,
) -> Result<Option<LockGuard>> {
    let started = Instant::now();
    loop {
        let holder = match attempt(repo, exclusive, purpose)? {
            Attempt::Held(guard) => return Ok(Some(guard)),
            Attempt::Conflict(holder) => holder,
            Attempt::Unwritable(e) if !reading => return Err(e),
            Attempt::Unwritable(e) => match conflicting(repo, "", false)? {
                Some(holder) => holder,
                None => {
                    tracing::warn!(
                        "reading {} without a lock ({e}): a prune meanwhile could make this \
                         {purpose} fail",
                        repo.backend().location()
                    );
                    return Ok(None);
                }
            },
        };
        if started.elapsed() >= repo.lock_wait() {
            let waited = if repo.lock_wait().is_zero() {
                "wait with --retry-lock DURATION".to_owned()
            } else {
                format!(
                    "waited {}",
                    humantime::format_duration(Duration::from_secs(started.elapsed().as_secs()))
                )
            };
            let message = format!(
                "repository is locked by {}: {waited}; if that process is gone, \
                 `cairn unlock` removes its lock",
                holder_words(&holder)
            );
            return Err(Error::Locked {
                conflict: Box::new(holder),
                message,
            });
        }
        // A little jitter, so two runs waiting for each other do not retry in step.
        let jitter = u64::from(crate::crypto::random_bytes::<1>()[0]) * 2;
        std::thread::sleep(RETRY_EVERY + Duration::from_millis(jitter));
    }
}

/// Takes a lock on `repo` for `purpose`: shared, or `exclusive`; a dry run, which changes
/// nothing, always shares. On a conflict the new lock is removed again and written anew on
/// the next try, for as long as `repo.lock_wait()`.
pub fn acquire(repo: &Repository, exclusive: bool, purpose: &str) -> Result<LockGuard> {
    let exclusive = exclusive && !repo.is_dry_run();
    Ok(acquire_as(repo, exclusive, purpose, false)?.expect("taken, or an error"))
}

/// A shared lock for a run that only reads. Where the repository cannot be written (a
/// read-only server or medium), the run goes on unlocked, with a warning; a live exclusive
/// lock still stops it (or makes it wait).
pub fn acquire_for_reading(repo: &Repository, purpose: &str) -> Result<Option<LockGuard>> {
    acquire_as(repo, false, purpose, true)
}

/// A lock `remove_locks` removed (or would remove).
#[derive(Debug, Clone)]
pub struct RemovedLock {
    /// The lock object's name.
    pub name: String,
    /// Why it was removed: whose lock it was and why it counts as stale.
    pub why: String,
}

/// Removes stale locks, or every lock with `all` (in a dry run, only says which); returns
/// them with why.
pub fn remove_locks(repo: &Repository, all: bool, dry_run: bool) -> Result<Vec<RemovedLock>> {
    let host = crate::host_name();
    let mut removed = Vec::new();
    for (name, record) in list(repo)? {
        let why = match &record {
            Some(record) => match record.stale_because(&host) {
                Some(why) => format!("{}: {why}", record.describe(&name)),
                None if all => format!("{}: removed with --remove-all", record.describe(&name)),
                None => continue,
            },
            None if all => format!("unreadable lock {name}"),
            None => continue,
        };
        if !dry_run {
            repo.backend().delete(&name)?;
        }
        removed.push(RemovedLock { name, why });
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(host: &str, pid: u32, age: Duration) -> LockRecord {
        LockRecord {
            host: host.to_owned(),
            pid,
            time: humantime::format_rfc3339_seconds(SystemTime::now() - age).to_string(),
            exclusive: false,
            purpose: "backup".into(),
        }
    }

    #[test]
    fn shared_locks_coexist_an_exclusive_one_waits_for_them_and_takes_a_fresh_time() {
        let dir = tempfile::tempdir().unwrap();
        let repo = crate::repo::writer::tests::repository(dir.path());
        let first = acquire(&repo, false, "backup").unwrap();
        let second = acquire(&repo, false, "mount").unwrap();
        let refused = acquire(&repo, true, "prune").err().unwrap().to_string();
        assert!(refused.contains("locked by backup") || refused.contains("locked by mount"));
        assert!(refused.contains("--retry-lock"), "{refused}");
        assert_eq!(
            list(&repo).unwrap().len(),
            2,
            "the refused lock was left behind"
        );

        // Waiting: the shared locks go after a while and the exclusive lock is taken, with
        // the time it was taken at, not the time the wait began (times are whole seconds).
        repo.wait_for_locks(Duration::from_secs(20));
        let asked = SystemTime::now();
        let taken = std::thread::scope(|scope| {
            scope.spawn(|| {
                std::thread::sleep(Duration::from_millis(2500));
                drop((first, second));
            });
            acquire(&repo, true, "prune").unwrap()
        });
        let locks = list(&repo).unwrap();
        assert_eq!(locks.len(), 1);
        let record = locks[0].1.clone().unwrap();
        let time = humantime::parse_rfc3339(&record.time).unwrap();
        assert!(time >= asked + Duration::from_secs(1), "{record:?}");
        assert!(record.exclusive && record.purpose == "prune");
        taken.ensure_held().unwrap();
        drop(taken);
        assert!(list(&repo).unwrap().is_empty(), "a dropped lock stays");
    }

    #[test]
    fn a_lock_is_stale_when_its_process_is_gone_or_it_was_not_refreshed() {
        let here = crate::host_name();
        let minute = Duration::from_secs(60);
        // This process, refreshed a minute ago: live.
        assert_eq!(
            record(&here, std::process::id(), minute).stale_because(&here),
            None
        );
        // Another host's lock can only go stale by age.
        assert_eq!(record("elsewhere", 1, minute).stale_because(&here), None);
        let old = record("elsewhere", 1, STALE_AFTER + minute).stale_because(&here);
        assert!(old.is_some_and(|why| why.starts_with("not refreshed for 31m")));
        // A process of this host that is gone (pids stay below 2^22 on Linux).
        let gone = record(&here, 4_194_304 + 7, minute).stale_because(&here);
        assert!(gone.is_some_and(|why| why.contains("is gone")));
    }
}
