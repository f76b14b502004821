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
    let backend = Arc::new(LocalBackend::new(sandbox.path("repo")));
    let mut options = InitOptions::new(EncryptionMode::Keyfile);
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

/// A backend whose puts start failing after a set number, like a full disk or a killed
/// process: what was stored before stays, nothing after it is written.
struct FailingBackend {
    inner: LocalBackend,
    puts_left: AtomicUsize,
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
        let left = self.puts_left.load(Ordering::SeqCst);
        if left == 0 {
            return Err(Error::io(
                format!("writing {name}"),
                std::io::Error::from_raw_os_error(libc::ENOSPC),
            ));
        }
        self.puts_left.store(left - 1, Ordering::SeqCst);
        self.inner.put(name, data)
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.inner.list(prefix)
    }
    fn delete(&self, name: &str) -> Result<()> {
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
