//! Library-level tests that need more control than the command line gives: tiny chunk sizes
//! (to exercise chunk-list blobs) and a backend that fails part-way (crash safety).

mod common;

use cairn::backup::{self, BackupOptions, Progress};
use cairn::check::{self, CheckOptions};
use cairn::chunker::ChunkerParams;
use cairn::error::{Error, Result};
use cairn::repo::backend::{Backend, LocalBackend, ObjectInfo};
use cairn::repo::config::EncryptionMode;
use cairn::repo::{InitOptions, Repository, Secret};
use cairn::restore::{self, RestoreOptions, RestoreProgress};
use cairn::tree::{Content, EntryKind, find_entry};
use common::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

fn open(backend: Arc<dyn Backend>, cache: &std::path::Path) -> Repository {
    Repository::open(
        backend,
        |_| Ok(Secret::KeyFile(cache.parent().unwrap().join("key"))),
        cache,
    )
    .unwrap()
}

/// A keyfile-mode repository in the sandbox, with the given chunk sizes.
fn init_repo(sandbox: &Sandbox, chunker: ChunkerParams) -> Arc<LocalBackend> {
    init_repo_in_mode(sandbox, chunker, EncryptionMode::Keyfile)
}

fn init_repo_in_mode(
    sandbox: &Sandbox,
    chunker: ChunkerParams,
    mode: EncryptionMode,
) -> Arc<LocalBackend> {
    let backend = Arc::new(LocalBackend::new(sandbox.path("repo")));
    let mut options = InitOptions::new(mode);
    options.key_file = Some(sandbox.path("key"));
    options.chunker = chunker;
    Repository::init(backend.as_ref(), options).unwrap();
    backend
}

const TINY_CHUNKS: ChunkerParams = ChunkerParams {
    min_bytes: 256,
    avg_bytes: 1024,
    max_bytes: 4096,
};

#[test]
fn files_with_many_chunks_use_a_chunk_list_blob() {
    let sandbox = Sandbox::new();
    let backend = init_repo(&sandbox, TINY_CHUNKS);
    let repo = open(backend, &sandbox.path("cache"));
    let source = sandbox.path("source");
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(source.join("large"), pseudo_random(600_000, 11)).unwrap();
    let outcome = backup::run(
        &repo,
        &BackupOptions::new(vec![source.clone()]),
        &Progress::default(),
    )
    .unwrap();
    let entry = find_entry(&repo, outcome.checkpoint.root_entry(), "large").unwrap();
    assert!(
        matches!(entry.kind, EntryKind::File(Content::ChunkList(_))),
        "{:?}",
        entry.kind
    );
    let target = sandbox.path("target");
    let node = outcome.checkpoint.root_entry();
    restore::run(
        &repo,
        &node,
        &target,
        &RestoreOptions::default(),
        &RestoreProgress::default(),
    )
    .unwrap();
    assert_same_tree(&source, &target);
    assert!(
        check::run(&repo, &CheckOptions { read_data: true })
            .unwrap()
            .is_sound()
    );
}

/// A backend whose puts (and, when limited, deletes) start failing after a set number, like
/// a full disk or a killed process: what was done before stays, nothing after it is.
struct FailingBackend {
    inner: LocalBackend,
    puts_left: AtomicUsize,
    deletes_left: AtomicUsize,
}

/// Takes one from `left`, or fails with `ENOSPC` when nothing is left.
fn take_one(left: &AtomicUsize, what: &str) -> Result<()> {
    let n = left.load(Ordering::SeqCst);
    if n == 0 {
        return Err(Error::io(
            what.to_owned(),
            std::io::Error::from_raw_os_error(libc::ENOSPC),
        ));
    }
    left.store(n - 1, Ordering::SeqCst);
    Ok(())
}

impl Backend for FailingBackend {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn get(&self, name: &str) -> Result<Vec<u8>> {
        self.inner.get(name)
    }
    fn get_range(&self, name: &str, offset: u64, length: u64) -> Result<Vec<u8>> {
        self.inner.get_range(name, offset, length)
    }
    fn put(&self, name: &str, data: &[u8]) -> Result<()> {
        take_one(&self.puts_left, &format!("writing {name}"))?;
        self.inner.put(name, data)
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.inner.list(prefix)
    }
    fn delete(&self, name: &str) -> Result<()> {
        take_one(&self.deletes_left, &format!("deleting {name}"))?;
        self.inner.delete(name)
    }
    fn exists(&self, name: &str) -> Result<bool> {
        self.inner.exists(name)
    }
}

#[test]
fn a_backup_stopped_at_any_write_leaves_a_sound_repository_and_resumes() {
    let sandbox = Sandbox::new();
    init_repo(&sandbox, ChunkerParams::default());
    let source = sandbox.path("source");
    make_tree(&source);
    // Enough data for several packs, so the run can stop between any two of them.
    for i in 0..2 {
        std::fs::write(
            source.join(format!("blob{i}")),
            pseudo_random(18_000_000, 100 + i),
        )
        .unwrap();
    }
    let mut completed = false;
    for allowed_puts in 0.. {
        let failing = Arc::new(FailingBackend {
            inner: LocalBackend::new(sandbox.path("repo")),
            puts_left: AtomicUsize::new(allowed_puts),
            deletes_left: AtomicUsize::new(usize::MAX),
        });
        let repo = open(failing, &sandbox.path("cache"));
        let result = backup::run(
            &repo,
            &BackupOptions::new(vec![source.clone()]),
            &Progress::default(),
        );
        // Whatever happened, the repository read through a healthy backend is sound.
        let healthy = open(
            Arc::new(LocalBackend::new(sandbox.path("repo"))),
            &sandbox.path("cache"),
        );
        let report = check::run(&healthy, &CheckOptions { read_data: true }).unwrap();
        assert!(report.is_sound(), "after {allowed_puts} puts: {report:?}");
        match result {
            Ok(outcome) => {
                assert!(outcome.id.is_some());
                completed = true;
                break;
            }
            Err(e) => assert!(e.to_string().contains("No space left"), "{e}"),
        }
        // The stale lock of the failed run is removed by its guard; no lock is left behind.
        assert!(healthy.backend().list("locks/").unwrap().is_empty());
    }
    assert!(completed);
    let repo = open(
        Arc::new(LocalBackend::new(sandbox.path("repo"))),
        &sandbox.path("cache"),
    );
    let (_, latest) = cairn::checkpoint::resolve(&repo, "latest").unwrap();
    let target = sandbox.path("target");
    restore::run(
        &repo,
        &latest.root_entry(),
        &target,
        &RestoreOptions::default(),
        &RestoreProgress::default(),
    )
    .unwrap();
    assert_same_tree(&source, &target);
}

/// Copies a repository directory (a plain tree of files).
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn a_prune_stopped_at_any_write_or_delete_loses_nothing() {
    prune_stopped_at_any_point_loses_nothing(EncryptionMode::Keyfile);
}

/// Unencrypted, a repacked pack can have the id of a pack it replaces (the same blobs in the
/// same order): the prune after a stopped one must not delete it.
#[test]
fn an_unencrypted_prune_stopped_at_any_write_or_delete_loses_nothing() {
    prune_stopped_at_any_point_loses_nothing(EncryptionMode::None);
}

fn prune_stopped_at_any_point_loses_nothing(mode: EncryptionMode) {
    let sandbox = Sandbox::new();
    init_repo_in_mode(&sandbox, ChunkerParams::default(), mode);
    let source = sandbox.path("source");
    std::fs::create_dir_all(&source).unwrap();
    let healthy = |repo: &str, cache: &str| {
        open(
            Arc::new(LocalBackend::new(sandbox.path(repo))),
            &sandbox.path(cache),
        )
    };
    // Two checkpoints; the first one's file `a` is gone from the second, so once the first
    // is forgotten its packs are partly used and get repacked.
    for (name, seed) in [("a", 1), ("b", 2)] {
        let data = pseudo_random(12_000_000, seed);
        std::fs::write(source.join(name), data).unwrap();
    }
    let repo = healthy("repo", "cache");
    let backup = |repo: &Repository| {
        backup::run(
            repo,
            &BackupOptions::new(vec![source.clone()]),
            &Progress::default(),
        )
        .unwrap()
        .id
        .unwrap()
    };
    let first = backup(&repo);
    std::fs::remove_file(source.join("a")).unwrap();
    std::fs::write(source.join("c"), pseudo_random(12_000_000, 3)).unwrap();
    backup(&repo);
    cairn::checkpoint::remove(&repo, &first).unwrap();
    drop(repo);

    let prune = |repo: &Repository| cairn::prune::run(repo, &Default::default());
    let mut completed = false;
    // Stop after every number of puts with deletes free, and after every number of deletes
    // with puts free: every point of the prune.
    for (puts, deletes) in (0..12)
        .map(|n| (n, usize::MAX))
        .chain((0..12).map(|n| (usize::MAX, n)))
    {
        let work = format!("work-{puts}-{deletes}");
        let _ = std::fs::remove_dir_all(sandbox.path(&work));
        copy_dir(&sandbox.path("repo"), &sandbox.path(&work));
        let failing = Arc::new(FailingBackend {
            inner: LocalBackend::new(sandbox.path(&work)),
            puts_left: AtomicUsize::new(puts),
            deletes_left: AtomicUsize::new(deletes),
        });
        let cache = format!("cache-{puts}-{deletes}");
        let result = prune(&open(failing, &sandbox.path(&cache)));
        completed |= result.is_ok();
        let after = healthy(&work, &cache);
        // A lock the stopped run could not remove is this (live) process's; a killed run's
        // would be stale. Remove it as `unlock --remove-all` would.
        cairn::repo::lock::remove_locks(&after, true, false).unwrap();
        let report = check::run(&after, &CheckOptions { read_data: true }).unwrap();
        assert!(
            report.is_sound(),
            "stopped at {puts} puts, {deletes} deletes: {report:?}"
        );
        let (_, latest) = cairn::checkpoint::resolve(&after, "latest").unwrap();
        let target = sandbox.path(&format!("restored-{puts}-{deletes}"));
        restore::run(
            &after,
            &latest.root_entry(),
            &target,
            &RestoreOptions::default(),
            &RestoreProgress::default(),
        )
        .unwrap();
        assert_same_tree(&source, &target);
        // A full prune afterwards finishes the job.
        prune(&after).unwrap();
        let report = check::run(&after, &CheckOptions::default()).unwrap();
        assert!(
            report.is_sound(),
            "pruned again after {puts}/{deletes}: {report:?}"
        );
        let size: u64 = after
            .backend()
            .list("data/")
            .unwrap()
            .iter()
            .map(|o| o.size)
            .sum();
        assert!(
            size < 26_000_000,
            "{size} bytes left after pruning at {puts}/{deletes}"
        );
        std::fs::remove_dir_all(sandbox.path(&work)).unwrap();
        std::fs::remove_dir_all(&target).unwrap();
    }
    assert!(completed, "the prune never got to its end");
}
