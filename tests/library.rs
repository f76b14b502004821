//! Library-level tests that need more control than the command line gives: tiny chunk sizes
//! (to exercise chunk-list blobs) and a backend that fails part-way (crash safety).

mod common;

use cairn::backup::{self, BackupOptions, Progress};
use cairn::check::{self, CheckOptions};
use cairn::checkpoint::Checkpoint;
use cairn::checkpoint::Stored;
use cairn::error::{LockConflict, Missing, Result};
use cairn::repair;
use cairn::repo::backend::{Backend, LocalBackend};
use cairn::repo::config::ChunkerParams;
use cairn::repo::config::EncryptionMode;
use cairn::repo::{InitOptions, Repository, Secret};
use cairn::restore::{self, RestoreOptions};
use cairn::tree::{Content, EntryKind, find_entry};
use common::backends::{Instrumented, MemoryBackend};
use common::*;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Opens the sandbox's repository, giving its key file only when the config asks for one (a
/// secret given for a `none` repository is refused as a downgrade).
fn open(backend: Arc<dyn Backend>, cache: &std::path::Path) -> Repository {
    let key_file = cache.parent().unwrap().join("key");
    let secret = |mode| {
        Ok(match mode {
            EncryptionMode::None => Secret::None,
            _ => Secret::KeyFile(key_file),
        })
    };
    Repository::open(backend, secret, cache).unwrap()
}

/// The sandbox's repository, opened with its cache in the sandbox's `cache` folder.
fn open_local(sandbox: &Sandbox, cache: &str) -> Repository {
    open(
        Arc::new(LocalBackend::new(sandbox.path("repo"))),
        &sandbox.path(cache),
    )
}

/// A keyfile-mode repository with the default chunk sizes and an empty source directory in
/// the sandbox; gives the source's path.
fn init_repo_with_source(sandbox: &Sandbox) -> std::path::PathBuf {
    init_repo(sandbox, ChunkerParams::default());
    let source = sandbox.path("source");
    std::fs::create_dir_all(&source).unwrap();
    source
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
    init_store(sandbox, backend.as_ref(), chunker, mode);
    backend
}

/// A repository in `store`, its key file in the sandbox (see `open`).
fn init_store(
    sandbox: &Sandbox,
    store: &dyn Backend,
    chunker: ChunkerParams,
    mode: EncryptionMode,
) {
    let mut options = InitOptions::new(mode);
    options.key_file = Some(sandbox.path("key"));
    options.chunker = chunker;
    Repository::init(store, options).unwrap();
}

const TINY_CHUNKS: ChunkerParams = ChunkerParams {
    min_bytes: 1024,
    avg_bytes: 4096,
    max_bytes: 16384,
};

#[test]
fn files_with_many_chunks_use_a_chunk_list_blob() {
    let sandbox = Sandbox::new();
    let backend = init_repo(&sandbox, TINY_CHUNKS);
    let repo = open(backend, &sandbox.path("cache"));
    let source = sandbox.path("source");
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(source.join("large"), pseudo_random(2_000_000, 11)).unwrap();
    let outcome = back_up(&repo, &source).unwrap();
    let entry = find_entry(&repo, outcome.checkpoint.root_entry(), "large").unwrap();
    assert!(
        matches!(entry.kind, EntryKind::File(Content::ChunkList(_))),
        "{:?}",
        entry.kind
    );
    let target = sandbox.path("target");
    restore::run(
        &repo,
        &outcome.checkpoint,
        "",
        &target,
        &RestoreOptions::default(),
        &Progress::default(),
    )
    .unwrap();
    assert_same_tree(&source, &target);
    assert!(
        check::run(
            &repo,
            &CheckOptions {
                read_data: true,
                ..Default::default()
            }
        )
        .unwrap()
        .is_sound()
    );
}

/// Restores the newest checkpoint of `repo` into `target` and compares it with `source`.
fn assert_latest_restores_to(
    repo: &Repository,
    source: &std::path::Path,
    target: &std::path::Path,
) {
    let latest = cairn::checkpoint::resolve(repo, "latest").unwrap().record;
    restore::run(
        repo,
        &latest,
        "",
        target,
        &RestoreOptions::default(),
        &Progress::default(),
    )
    .unwrap();
    assert_same_tree(source, target);
}

/// Backs `source` up into `repo`.
fn back_up(repo: &Repository, source: &std::path::Path) -> Result<backup::BackupOutcome> {
    backup::run(
        repo,
        &BackupOptions::new(vec![source.to_path_buf()]),
        &Progress::default(),
    )
}

/// Every object name in the repository at `root`, and the files of the cache at `cache`
/// with their sizes: what a dry run must leave as it found.
fn stored_and_cached(
    root: &std::path::Path,
    cache: &std::path::Path,
) -> (Vec<String>, Vec<String>) {
    let stored = LocalBackend::new(root)
        .list("")
        .unwrap()
        .into_iter()
        .map(|o| o.name)
        .filter(|name| !name.starts_with("locks/"))
        .collect::<std::collections::BTreeSet<_>>();
    // sled rewrites its own files as it likes; what it holds is checked by a later run.
    let cached = walkdir_names(cache)
        .into_iter()
        .filter(|name| !name.contains("index.sled"))
        .collect();
    (stored.into_iter().collect(), cached)
}

fn walkdir_names(dir: &std::path::Path) -> Vec<String> {
    let mut names = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path.clone());
            }
            names.push(path.display().to_string());
        }
    }
    names.sort();
    names
}

#[test]
fn a_dry_run_repository_goes_through_a_backup_and_keeps_nothing_in_the_store_or_the_cache() {
    let sandbox = Sandbox::new();
    let source = init_repo_with_source(&sandbox);
    common::random_files(&source, 20, 40_000, 1);
    let (root, cache) = (sandbox.path("repo"), sandbox.path("cache"));
    let backend = || Arc::new(LocalBackend::new(&root));
    back_up(&open(backend(), &cache), &source).unwrap();
    common::random_files(&source.join("more"), 10, 40_000, 2);
    let before = stored_and_cached(&root, &cache);

    let dry = open(backend(), &cache).into_dry_run();
    assert!(dry.is_dry_run());
    let planned = back_up(&dry, &source).unwrap();
    drop(dry);
    assert_eq!(planned.id, None);
    assert!(planned.checkpoint.stats.added_blobs > 0, "{planned:?}");
    let after = stored_and_cached(&root, &cache);
    assert_eq!(before.0, after.0, "the dry run stored objects");
    assert_eq!(before.1, after.1, "the dry run changed the cache");
    // The cache's index must not know the dry run's blobs: the real run adds every one.
    let repo = open(backend(), &cache);
    assert_eq!(cairn::checkpoint::list(&repo).unwrap().len(), 1);
    let done = back_up(&repo, &source).unwrap();
    assert_eq!(
        done.checkpoint.stats.added_blobs, planned.checkpoint.stats.added_blobs,
        "the dry run reports what the real run adds"
    );
    assert_eq!(done.checkpoint.tree, planned.checkpoint.tree);
    assert_eq!(cairn::checkpoint::list(&repo).unwrap().len(), 2);
}

#[test]
fn the_one_directory_given_keeps_its_own_entry_whatever_the_excludes_say_of_its_name() {
    let sandbox = Sandbox::new();
    init_repo(&sandbox, ChunkerParams::default());
    let repo = open_local(&sandbox, "cache");
    let source = sandbox.path("source");
    std::fs::create_dir_all(source.join("source")).unwrap();
    std::fs::write(source.join("kept"), b"kept").unwrap();
    std::fs::write(source.join("source/inner"), b"excluded").unwrap();
    let mut options = BackupOptions::new(vec![source.clone()]);
    options.excludes = vec!["source".into()];
    let outcome = backup::run(&repo, &options, &Progress::default()).unwrap();
    // The pattern leaves out the subdirectory of that name, not the directory backed up.
    let root = outcome
        .checkpoint
        .root
        .expect("the directory's own entry is kept");
    assert_eq!(root.name, b"source");
    let tree = cairn::tree::load_tree(&repo, &outcome.checkpoint.tree).unwrap();
    let names: Vec<&[u8]> = tree.entries.iter().map(|e| e.name.as_slice()).collect();
    assert_eq!(names, [&b"kept"[..]]);
}

/// Backs `source` up `rounds` times, its file `counter` holding the round's number each time.
fn back_up_rounds(repo: &Repository, source: &std::path::Path, rounds: u32) {
    for round in 0..rounds {
        std::fs::write(source.join("counter"), round.to_string()).unwrap();
        back_up(repo, source).unwrap();
    }
}

#[test]
fn a_backup_stopped_at_any_write_leaves_a_sound_repository_and_resumes() {
    let sandbox = Sandbox::new();
    // The store in memory: each run sees what the failed runs before it left.
    let store = MemoryBackend::new();
    let mode = EncryptionMode::Keyfile;
    init_store(&sandbox, store.as_ref(), ChunkerParams::default(), mode);
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
    let cache = sandbox.path("cache");
    let mut completed = false;
    for allowed_puts in 0.. {
        let failing = Instrumented::failing_after(store.clone(), allowed_puts, usize::MAX);
        let result = back_up(&open(failing, &cache), &source);
        // Whatever happened, the repository read through a healthy backend is sound.
        let healthy = open(store.clone(), &cache);
        let report = check::run(
            &healthy,
            &CheckOptions {
                read_data: true,
                ..Default::default()
            },
        )
        .unwrap();
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
    assert_latest_restores_to(&open(store, &cache), &source, &sandbox.path("target"));
}

#[test]
fn a_backup_to_a_remote_like_backend_keeps_several_packs_uploading() {
    let sandbox = Sandbox::new();
    init_repo(&sandbox, ChunkerParams::default());
    let source = sandbox.path("source");
    make_tree(&source);
    // Enough for three packs.
    for i in 0..3 {
        std::fs::write(
            source.join(format!("blob{i}")),
            pseudo_random(14_000_000, 300 + i),
        )
        .unwrap();
    }
    let backend = Instrumented::overlapping(Arc::new(LocalBackend::new(sandbox.path("repo"))));
    let repo = open(backend.clone(), &sandbox.path("cache"));
    back_up(&repo, &source).unwrap();
    assert!(
        backend.most_at_once() >= 2,
        "packs were uploaded one at a time"
    );
    let report = check::run(
        &repo,
        &CheckOptions {
            read_data: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(report.is_sound(), "{report:?}");
    assert_latest_restores_to(&repo, &source, &sandbox.path("target"));
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
    let backup = |repo: &Repository| back_up(repo, &source).unwrap().id.unwrap();
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
        copy_tree(&sandbox.path("repo"), &sandbox.path(&work));
        let failing = Instrumented::failing_after(
            Arc::new(LocalBackend::new(sandbox.path(&work))),
            puts,
            deletes,
        );
        let cache = format!("cache-{puts}-{deletes}");
        let result = prune(&open(failing, &sandbox.path(&cache)));
        completed |= result.is_ok();
        let after = healthy(&work, &cache);
        // A lock the stopped run could not remove is this (live) process's; a killed run's
        // would be stale. Remove it as `unlock --remove-all` would.
        cairn::repo::lock::remove_locks(&after, true, false).unwrap();
        let report = check::run(
            &after,
            &CheckOptions {
                read_data: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(
            report.is_sound(),
            "stopped at {puts} puts, {deletes} deletes: {report:?}"
        );
        let target = sandbox.path(&format!("restored-{puts}-{deletes}"));
        assert_latest_restores_to(&after, &source, &target);
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

/// The name of the pack that holds blob `id`.
fn pack_holding(repo: &Repository, id: &cairn::id::BlobId) -> String {
    cairn::repo::pack::pack_object_name(&repo.locate(id).unwrap().pack)
}

/// Two checkpoints of `<sandbox>/source` in a keyfile repository, then the first run's pack
/// loses its header: it held `sub/`, `top` and the first root tree, while the second run's
/// pack holds `later` and the second root tree. Returns both checkpoint ids.
fn two_backups_then_a_truncated_pack(
    sandbox: &Sandbox,
) -> (cairn::id::CheckpointId, cairn::id::CheckpointId, String) {
    let backend = init_repo(sandbox, TINY_CHUNKS);
    let source = sandbox.path("source");
    std::fs::create_dir_all(source.join("sub")).unwrap();
    std::fs::write(source.join("sub/small"), pseudo_random(5_000, 1)).unwrap();
    // Large enough for a chunk-list blob with these tiny chunks.
    std::fs::write(source.join("top"), pseudo_random(2_000_000, 2)).unwrap();
    let repo = open(backend, &sandbox.path("cache"));
    let backup = |repo: &Repository| back_up(repo, &source).unwrap();
    let first = backup(&repo);
    std::fs::write(source.join("later"), pseudo_random(2_000_000, 3)).unwrap();
    let second = backup(&repo);
    let first_pack = pack_holding(&repo, &first.checkpoint.tree.blob());
    assert_ne!(
        first_pack,
        pack_holding(&repo, &second.checkpoint.tree.blob())
    );
    let pack_path = sandbox.path("repo").join(&first_pack);
    let pack = std::fs::read(&pack_path).unwrap();
    std::fs::write(&pack_path, &pack[..pack.len() - 10]).unwrap();
    (first.id.unwrap(), second.id.unwrap(), first_pack)
}

/// Restores `record` and returns the names at its top level; each must hold the source's
/// bytes.
fn restored_names(
    sandbox: &Sandbox,
    repo: &Repository,
    record: &Checkpoint,
    at: &str,
) -> Vec<String> {
    let target = sandbox.path(at);
    restore::run(
        repo,
        record,
        "",
        &target,
        &RestoreOptions::default(),
        &Progress::default(),
    )
    .unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&target)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    for name in &names {
        assert_eq!(
            std::fs::read(target.join(name)).unwrap(),
            std::fs::read(sandbox.path("source").join(name)).unwrap()
        );
    }
    names
}

#[test]
fn repair_rebuilds_a_damaged_index_and_drops_what_a_truncated_pack_held() {
    let sandbox = Sandbox::new();
    let (first_id, second_id, first_pack) = two_backups_then_a_truncated_pack(&sandbox);
    // And an index file is cut in half, with no cache.
    let backend = Arc::new(LocalBackend::new(sandbox.path("repo")));
    let index_file = backend.list("index/").unwrap()[0].name.clone();
    let index_path = sandbox.path("repo").join(&index_file);
    let bytes = std::fs::read(&index_path).unwrap();
    std::fs::write(&index_path, &bytes[..bytes.len() / 2]).unwrap();
    std::fs::remove_dir_all(sandbox.path("cache")).unwrap();

    // The damaged index file does not stop the repository from opening.
    let repo = open(backend, &sandbox.path("cache"));
    let report = repair::index(&repo).unwrap();
    assert_eq!(report.packs_read, 1, "{report:?}");
    assert_eq!(report.unreadable_packs.len(), 1, "{report:?}");
    assert_eq!(report.unreadable_packs[0].name, first_pack);
    assert!(repo.backend().exists(&first_pack).unwrap(), "left in place");
    assert!(!repo.backend().exists(&index_file).unwrap(), "replaced");

    let report = repair::checkpoints(&repo).unwrap();
    let dropped: Vec<Vec<String>> = report.repaired.iter().map(|r| r.dropped.clone()).collect();
    let (first_short, second_short) = (first_id.short(), second_id.short());
    assert_eq!(
        dropped,
        [
            vec![format!("{first_short}:/")],
            vec![
                format!("{second_short}:/sub"),
                format!("{second_short}:/top")
            ],
        ],
        "{report:?}"
    );
    assert!(
        check::run(&repo, &CheckOptions::default())
            .unwrap()
            .is_sound()
    );

    let checkpoints = cairn::checkpoint::list(&repo).unwrap();
    assert_eq!(checkpoints.len(), 2);
    for Stored { id, record } in &checkpoints {
        assert!(record.tags.contains(&repair::REPAIRED_TAG.to_owned()));
        assert!(*id != first_id && *id != second_id);
    }
    assert_eq!(checkpoints[0].record.stats.files, 0);
    assert_eq!(checkpoints[1].record.stats.files, 1);
    assert_eq!(checkpoints[1].record.stats.dirs, 0);
    assert_eq!(
        restored_names(&sandbox, &repo, &checkpoints[1].record, "target"),
        ["later"]
    );
}

#[test]
fn repairs_stopped_at_any_write_or_delete_lose_nothing_and_resume() {
    let sandbox = Sandbox::new();
    let (first_id, second_id, first_pack) = two_backups_then_a_truncated_pack(&sandbox);
    let healthy = |repo: &str, cache: &str| {
        open(
            Arc::new(LocalBackend::new(sandbox.path(repo))),
            &sandbox.path(cache),
        )
    };
    // Only the blobs of the truncated pack may ever be unreadable.
    let original = healthy("repo", "cache");
    let lost_pack = cairn::repo::pack::pack_id_of_object(&first_pack).unwrap();
    let mut in_lost_pack = HashSet::new();
    for object in original.backend().list("index/").unwrap() {
        let plain = original.read_object_plaintext(&object.name).unwrap();
        let layout = original.codec().layout();
        let packs =
            cairn::repo::index::decode_index_file(&plain, layout, &|| object.name.clone()).unwrap();
        for (pack, entries) in packs {
            if pack == lost_pack {
                in_lost_pack.extend(entries.iter().map(|e| e.id));
            }
        }
    }
    assert!(!in_lost_pack.is_empty());
    let repair_all = |repo: &Repository| -> Result<()> {
        repair::index(repo)?;
        repair::checkpoints(repo)?;
        Ok(())
    };
    let mut completed = false;
    for (puts, deletes) in (0..10)
        .map(|n| (n, usize::MAX))
        .chain((0..8).map(|n| (usize::MAX, n)))
    {
        let work = format!("work-{puts}-{deletes}");
        copy_tree(&sandbox.path("repo"), &sandbox.path(&work));
        let failing = Instrumented::failing_after(
            Arc::new(LocalBackend::new(sandbox.path(&work))),
            puts,
            deletes,
        );
        let cache = format!("cache-{puts}-{deletes}");
        completed |= repair_all(&open(failing, &sandbox.path(&cache))).is_ok();
        let after = healthy(&work, &cache);
        cairn::repo::lock::remove_locks(&after, true, false).unwrap();

        // Nothing readable became unreadable, and every checkpoint is there, as it was or
        // repaired; a repaired record is whole.
        let report = check::run(&after, &CheckOptions::default()).unwrap();
        let stopped = format!("stopped at {puts} puts, {deletes} deletes");
        assert!(
            report
                .damaged
                .iter()
                .all(|d| in_lost_pack.contains(&d.blob)),
            "{stopped}: {report:?}"
        );
        let records = cairn::checkpoint::list(&after).unwrap();
        for checkpoint in [first_id, second_id] {
            let record = cairn::checkpoint::load(&original, &checkpoint).unwrap();
            assert!(
                records
                    .iter()
                    .any(|Stored { id, record: r }| *id == checkpoint
                        || r.time == record.time
                            && r.tags.contains(&repair::REPAIRED_TAG.to_owned())),
                "{stopped}: checkpoint {checkpoint} is lost"
            );
        }
        for Stored { id, record } in &records {
            if record.tags.contains(&repair::REPAIRED_TAG.to_owned()) {
                let prefix = format!("{}:", id.short());
                assert!(
                    report
                        .damaged
                        .iter()
                        .all(|d| d.paths.iter().all(|p| !p.starts_with(&prefix))),
                    "{stopped}: repaired {id} is damaged: {report:?}"
                );
            }
        }

        // Running the repairs again finishes the job.
        repair_all(&after).unwrap();
        assert!(
            check::run(&after, &CheckOptions::default())
                .unwrap()
                .is_sound(),
            "{stopped}"
        );
        let records = cairn::checkpoint::list(&after).unwrap();
        assert_eq!(records.len(), 2, "{stopped}");
        let at = format!("restored-{puts}-{deletes}");
        assert_eq!(
            restored_names(&sandbox, &after, &records[1].record, &at),
            ["later"]
        );
        std::fs::remove_dir_all(sandbox.path(&work)).unwrap();
    }
    assert!(completed, "the repairs never got to their end");
}

/// The catalogue file in cache directory `cache`.
fn catalogue_file(cache: &std::path::Path) -> std::path::PathBuf {
    let found: Vec<_> = entries_below(cache)
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "catalogue"))
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    found[0].clone()
}

#[test]
fn a_new_checkpoint_is_appended_to_the_catalogue_and_a_torn_tail_is_read_again() {
    let sandbox = Sandbox::new();
    let source = init_repo_with_source(&sandbox);
    let counting = Instrumented::new(Arc::new(LocalBackend::new(sandbox.path("repo"))));
    let cache = sandbox.path("cache");
    let repo = open(counting.clone(), &cache);
    back_up_rounds(&repo, &source, 3);
    let file = catalogue_file(&cache);
    let inode = |path: &std::path::Path| {
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).unwrap())
    };
    let (before, inode_before) = (std::fs::read(&file).unwrap(), inode(&file));

    // Saving a checkpoint appends its record: the file is neither replaced nor rewritten.
    std::fs::write(source.join("counter"), "last").unwrap();
    let last = back_up(&repo, &source).unwrap().id.unwrap();
    let after = std::fs::read(&file).unwrap();
    assert_eq!(inode(&file), inode_before, "the catalogue was replaced");
    assert!(
        after.len() > before.len() && after.starts_with(&before),
        "the catalogue was rewritten"
    );
    drop(repo);

    // A writer killed while appending leaves a torn tail: the records before it are kept,
    // the torn one is read again from the repository, and the file is made whole.
    std::fs::write(&file, &after[..after.len() - 5]).unwrap();
    counting.take_counts();
    let repo = open(counting.clone(), &cache);
    assert_eq!(cairn::checkpoint::list(&repo).unwrap().len(), 4);
    assert_eq!(
        counting.take_counts().0,
        vec![format!("checkpoints/{last}")]
    );
    drop(repo);
    let repo = open(counting.clone(), &cache);
    assert_eq!(cairn::checkpoint::list(&repo).unwrap().len(), 4);
    assert_eq!(counting.take_counts().0, Vec::<String>::new());
}

#[test]
fn opening_listing_and_a_no_op_backup_list_checkpoints_index_and_locks_by_name_only() {
    let sandbox = Sandbox::new();
    let source = init_repo_with_source(&sandbox);
    std::fs::write(source.join("file"), "content").unwrap();
    let counting = Instrumented::new(Arc::new(LocalBackend::new(sandbox.path("repo"))));
    let cache = sandbox.path("cache");
    back_up(&open(counting.clone(), &cache), &source).unwrap();
    counting.sized_lists.lock().unwrap().clear();

    let repo = open(counting.clone(), &cache);
    assert_eq!(cairn::checkpoint::list(&repo).unwrap().len(), 1);
    cairn::checkpoint::resolve(&repo, "latest").unwrap();
    back_up(&repo, &source).unwrap();
    let sized = std::mem::take(&mut *counting.sized_lists.lock().unwrap());
    assert_eq!(sized, Vec::<String>::new(), "listed with a stat per object");
}

#[test]
fn the_local_catalogue_reads_each_checkpoint_record_once_and_follows_the_listing() {
    let sandbox = Sandbox::new();
    init_repo(&sandbox, ChunkerParams::default());
    let source = sandbox.path("source");
    std::fs::create_dir_all(source.join("docs")).unwrap();
    std::fs::write(source.join("docs/notes.txt"), "first").unwrap();
    let elsewhere = open_local(&sandbox, "other-cache");
    back_up_rounds(&elsewhere, &source, 3);
    let counting = Instrumented::new(Arc::new(LocalBackend::new(sandbox.path("repo"))));
    let cache = sandbox.path("cache");
    let ids = |repo: &Repository| -> Vec<cairn::id::CheckpointId> {
        cairn::checkpoint::list(repo)
            .unwrap()
            .into_iter()
            .map(|stored| stored.id)
            .collect()
    };

    // A cold cache reads each record once, with one listing.
    let repo = open(counting.clone(), &cache);
    assert_eq!(ids(&repo).len(), 3);
    let (gets, lists) = counting.take_counts();
    assert_eq!((gets.len(), lists), (3, 1), "{gets:?}");

    // Another run (another process) reads none: `list`, `latest` and a no-op backup.
    drop(repo);
    let repo = open(counting.clone(), &cache);
    assert_eq!(ids(&repo).len(), 3);
    cairn::checkpoint::resolve(&repo, "latest").unwrap();
    let outcome = back_up(&repo, &source).unwrap();
    let own = outcome.id.unwrap();
    let (gets, _) = counting.take_counts();
    assert_eq!(gets, Vec::<String>::new(), "records read again");
    drop(repo);
    let repo = open(counting.clone(), &cache);
    assert!(ids(&repo).contains(&own));
    let (gets, lists) = counting.take_counts();
    assert_eq!(
        (gets, lists),
        (Vec::new(), 1),
        "its own checkpoint read back"
    );

    // A checkpoint made elsewhere is read, and only it.
    std::fs::write(source.join("counter"), "elsewhere").unwrap();
    let added = back_up(&elsewhere, &source).unwrap().id.unwrap();
    assert!(ids(&repo).contains(&added));
    let (gets, _) = counting.take_counts();
    assert_eq!(gets, vec![format!("checkpoints/{added}")]);

    // One forgotten elsewhere disappears, though the catalogue still holds its record.
    cairn::checkpoint::remove(&elsewhere, &own).unwrap();
    assert!(!ids(&repo).contains(&own));
    drop(repo);
    let repo = open(counting.clone(), &cache);
    assert_eq!(ids(&repo).len(), 4);
    assert!(!ids(&repo).contains(&own));
    let (gets, _) = counting.take_counts();
    assert!(gets.is_empty(), "{gets:?}");

    // A lost or damaged catalogue is rebuilt from the repository, silently.
    drop(repo);
    let catalogue_file = catalogue_file(&cache);
    std::fs::write(&catalogue_file, b"\x01 damaged").unwrap();
    let repo = open(counting.clone(), &cache);
    assert_eq!(ids(&repo).len(), 4);
    let (gets, _) = counting.take_counts();
    assert_eq!(gets.len(), 4);
    drop(repo);
    std::fs::remove_file(&catalogue_file).unwrap();
    let repo = open(counting.clone(), &cache);
    assert_eq!(ids(&repo).len(), 4);
    assert_eq!(counting.take_counts().0.len(), 4);
    let mode = std::fs::metadata(&catalogue_file).unwrap().permissions();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o077, 0);
}

#[test]
fn a_catalogue_another_process_wrote_anew_is_followed_without_asking_the_repository() {
    let sandbox = Sandbox::new();
    let source = init_repo_with_source(&sandbox);
    let writer = open_local(&sandbox, "other-cache");
    back_up_rounds(&writer, &source, 40);
    let cache = sandbox.path("cache");
    let counting = Instrumented::new(Arc::new(LocalBackend::new(sandbox.path("repo"))));
    let long_running = open(counting.clone(), &cache);
    let listing = cairn::checkpoint::list_shared(&long_running).unwrap();
    counting.take_counts();

    // Another process finds the catalogue gone and writes it anew: its records land at
    // other offsets than the long-running one's summary says.
    let directory = catalogue_file(&cache).parent().unwrap().to_path_buf();
    std::fs::remove_file(directory.join("catalogue")).unwrap();
    std::fs::remove_file(directory.join("catalogue.summary")).unwrap();
    let other = open(Arc::new(LocalBackend::new(sandbox.path("repo"))), &cache);
    assert_eq!(cairn::checkpoint::list(&other).unwrap().len(), 40);
    drop(other);

    let records = long_running
        .catalogue()
        .records(&long_running, &listing)
        .unwrap();
    let times: Vec<&str> = records.iter().map(|r| r.time.as_str()).collect();
    let expected: Vec<&str> = listing.iter().map(|s| s.time.as_str()).collect();
    assert_eq!(times, expected);
    assert_eq!(
        counting.take_counts().0,
        Vec::<String>::new(),
        "read from the repository"
    );
}

#[test]
fn runs_after_runs_that_finished_list_no_packs_and_a_failed_runs_packs_are_reused() {
    let sandbox = Sandbox::new();
    init_repo(&sandbox, ChunkerParams::default());
    let source = sandbox.path("source");
    make_tree(&source);
    let counting = Instrumented::new(Arc::new(LocalBackend::new(sandbox.path("repo"))));
    let cache = sandbox.path("cache");
    let pack_lists = || counting.pack_lists.swap(0, Ordering::SeqCst);
    // A new cache knows nothing of earlier runs: the first run looks for their packs.
    back_up(&open(counting.clone(), &cache), &source).unwrap();
    assert_eq!(pack_lists(), 1);
    std::fs::write(source.join("more"), pseudo_random(100_000, 7)).unwrap();
    back_up(&open(counting.clone(), &cache), &source).unwrap();
    assert_eq!(
        pack_lists(),
        0,
        "runs that finished left nothing to look for"
    );

    // A run whose writes fail after its lock and two packs leaves them unindexed, and its
    // mark: the next run looks for them once and stores only the rest.
    for i in 0..2 {
        let blob = pseudo_random(18_000_000, 200 + i);
        std::fs::write(source.join(format!("blob{i}")), blob).unwrap();
    }
    let failing = Instrumented::failing_after(
        Arc::new(LocalBackend::new(sandbox.path("repo"))),
        3,
        usize::MAX,
    );
    assert!(back_up(&open(failing, &cache), &source).is_err());
    let outcome = back_up(&open(counting.clone(), &cache), &source).unwrap();
    assert_eq!(pack_lists(), 1);
    assert!(
        outcome.checkpoint.stats.added_bytes < 30_000_000,
        "{} bytes stored again",
        outcome.checkpoint.stats.added_bytes
    );
    back_up(&open(counting.clone(), &cache), &source).unwrap();
    assert_eq!(pack_lists(), 0);
}

/// Lets the last change to the repository's directories settle: a listing token is given only
/// once the change is older than a clock tick could hide (see `Backend::listing_token`).
fn let_changes_settle() {
    std::thread::sleep(std::time::Duration::from_millis(150));
}

#[test]
fn listing_the_mounts_checkpoints_reads_no_record_until_one_is_looked_into() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let sandbox = Sandbox::new();
    let source = init_repo_with_source(&sandbox);
    let cache = sandbox.path("cache");
    let repo = open(Arc::new(LocalBackend::new(sandbox.path("repo"))), &cache);
    back_up_rounds(&repo, &source, 12);
    drop(repo);
    // With the records gone from the local log, any record wanted is a GET.
    std::fs::remove_file(catalogue_file(&cache)).unwrap();
    let_changes_settle();
    let counting = Instrumented::new(Arc::new(LocalBackend::new(sandbox.path("repo"))));
    let repo = Arc::new(open(counting.clone(), &cache));
    let vfs = cairn::vfs::Vfs::new(repo, Default::default()).unwrap();
    let checkpoints = vfs.lookup(cairn::vfs::ROOT_INO, b"checkpoints").unwrap();
    let listed = vfs.readdir(checkpoints.ino).unwrap();
    assert_eq!(listed.len(), 12);
    let source_meta = std::fs::metadata(&source).unwrap();
    for cairn::vfs::ListedEntry { attr, name } in &listed {
        let looked_up = vfs.hold_listed(checkpoints.ino, name).unwrap();
        assert_eq!(looked_up.ino, attr.ino);
        assert_eq!(
            u32::from(attr.perm),
            source_meta.permissions().mode() & 0o7777
        );
        assert_eq!(attr.uid, source_meta.uid());
        assert!(vfs.xattrs(attr.ino).unwrap().is_empty());
    }
    let (gets, _) = counting.take_counts();
    assert_eq!(gets, Vec::<String>::new(), "listed from the summary");
    // Looking into one reads its record, once.
    let cairn::vfs::ListedEntry { attr: newest, name } = listed.last().unwrap();
    assert_eq!(
        vfs.lookup(newest.ino, b"counter").unwrap().size,
        "11".len() as u64
    );
    assert_eq!(vfs.readdir(newest.ino).unwrap().len(), 1);
    let (gets, _) = counting.take_counts();
    assert_eq!(gets.len(), 1, "{name:?}: {gets:?}");
}

#[test]
fn runs_after_nothing_changed_list_no_checkpoints_and_read_records_only_from_the_catalogue() {
    let sandbox = Sandbox::new();
    let source = init_repo_with_source(&sandbox);
    let elsewhere = open_local(&sandbox, "other-cache");
    let mut made = Vec::new();
    for round in 0..40 {
        std::fs::write(source.join("counter"), round.to_string()).unwrap();
        made.push(back_up(&elsewhere, &source).unwrap().id.unwrap());
    }
    let counting = Instrumented::new(Arc::new(LocalBackend::new(sandbox.path("repo"))));
    let cache = sandbox.path("cache");
    let ids = |repo: &Repository| -> Vec<cairn::id::CheckpointId> {
        cairn::checkpoint::list(repo)
            .unwrap()
            .into_iter()
            .map(|stored| stored.id)
            .collect()
    };
    let_changes_settle();
    assert_eq!(ids(&open(counting.clone(), &cache)), made);
    let (gets, lists) = counting.take_counts();
    assert_eq!(
        (gets.len(), lists),
        (made.len(), 1),
        "a cold cache reads each record once"
    );

    // Nothing added or removed since: no listing, no record read from the repository.
    let_changes_settle();
    let repo = open(counting.clone(), &cache);
    assert_eq!(ids(&repo), made);
    let latest = cairn::checkpoint::resolve(&repo, "latest").unwrap().record;
    assert_eq!(
        latest.time,
        cairn::checkpoint::load(&elsewhere, made.last().unwrap())
            .unwrap()
            .time
    );
    assert_eq!(counting.take_counts(), (Vec::new(), 0));

    // A backup finds its parent in the catalogue without a listing, and the next run
    // sees its own checkpoint at once.
    let own = back_up(&repo, &source).unwrap().id.unwrap();
    assert_eq!(counting.take_counts(), (Vec::new(), 0));
    made.push(own);
    drop(repo);

    // A change made elsewhere is listed and read, and only it.
    std::fs::write(source.join("counter"), "elsewhere").unwrap();
    let added = back_up(&elsewhere, &source).unwrap().id.unwrap();
    made.push(added);
    let_changes_settle();
    let repo = open(counting.clone(), &cache);
    assert_eq!(ids(&repo), made);
    assert_eq!(
        counting.take_counts(),
        (vec![format!("checkpoints/{added}")], 1)
    );
    drop(repo);

    // A lost summary is rebuilt from the log alone; a damaged log from the repository,
    // once.
    let directory = catalogue_file(&cache).parent().unwrap().to_path_buf();
    std::fs::remove_file(directory.join("catalogue.summary")).unwrap();
    let repo = open(counting.clone(), &cache);
    assert_eq!(ids(&repo), made);
    assert_eq!(counting.take_counts().0, Vec::<String>::new());
    drop(repo);
    let log = directory.join("catalogue");
    let mut damaged = std::fs::read(&log).unwrap();
    let middle = damaged.len() / 2;
    damaged[middle..].fill(0x5a);
    std::fs::write(&log, damaged).unwrap();
    let_changes_settle();
    let repo = open(counting.clone(), &cache);
    assert_eq!(ids(&repo), made);
    let (read_again, _) = counting.take_counts();
    assert!(
        !read_again.is_empty() && read_again.len() < made.len(),
        "{}",
        read_again.len()
    );
    drop(repo);
    let repo = open(counting.clone(), &cache);
    assert_eq!(ids(&repo), made);
    assert_eq!(counting.take_counts(), (Vec::new(), 0));
}

#[test]
fn a_path_history_reads_trees_only_of_checkpoints_it_has_not_seen() {
    let sandbox = Sandbox::new();
    init_repo(&sandbox, ChunkerParams::default());
    let source = sandbox.path("source");
    std::fs::create_dir_all(source.join("docs")).unwrap();
    let elsewhere = open_local(&sandbox, "other-cache");
    for round in 0..6 {
        std::fs::write(source.join("counter"), round.to_string()).unwrap();
        if round % 3 == 0 {
            std::fs::write(source.join("docs/notes.txt"), format!("notes {round}")).unwrap();
        }
        back_up(&elsewhere, &source).unwrap();
    }
    let counting = Instrumented::new(Arc::new(LocalBackend::new(sandbox.path("repo"))));
    let cache = sandbox.path("cache");
    let path = cairn::history::components("docs/notes.txt");
    // The history of the path as `cairn history` and the mount compute it, and the number
    // of tree blobs it read.
    let history = |repo: &Repository| {
        let listing = cairn::checkpoint::list_shared(repo).unwrap();
        counting.ranged_reads.store(0, Ordering::SeqCst);
        let load = |id: &cairn::id::TreeId| cairn::tree::load_tree(repo, id).map(Arc::new);
        let history = repo
            .catalogue()
            .path_history(repo, &listing, &path, &load)
            .unwrap();
        let versions: Vec<_> = cairn::history::versions(&history)
            .into_iter()
            .map(|v| (v.change, v.checkpoints))
            .collect();
        (versions, counting.ranged_reads.load(Ordering::SeqCst))
    };

    let repo = open(counting.clone(), &cache);
    let (first, trees_read) = history(&repo);
    assert_eq!(first.len(), 2, "{first:?}");
    assert_eq!(trees_read, 8, "six roots and two versions of docs");
    drop(repo);

    let repo = open(counting.clone(), &cache);
    assert_eq!(history(&repo), (first.clone(), 0), "kept, not read again");

    std::fs::write(source.join("docs/notes.txt"), "changed elsewhere").unwrap();
    back_up(&elsewhere, &source).unwrap();
    let (after, trees_read) = history(&repo);
    assert_eq!(trees_read, 2, "only the new checkpoint's trees");
    assert_eq!(after.len(), 3, "{after:?}");
    assert_eq!(after[..2], first[..]);
}

/// A thousand small files in one directory, backed up together, through a counting backend.
fn thousand_small_files_backed_up(sandbox: &Sandbox) -> (Arc<Instrumented>, Repository) {
    init_repo(sandbox, ChunkerParams::default());
    let source = sandbox.path("source");
    std::fs::create_dir_all(&source).unwrap();
    for i in 0..1000u64 {
        let bytes = pseudo_random(200 + (i as usize * 7) % 1800, 1000 + i);
        std::fs::write(source.join(format!("file{i:04}")), bytes).unwrap();
    }
    let counting = Instrumented::new(Arc::new(LocalBackend::new(sandbox.path("repo"))));
    let repo = open(counting.clone(), &sandbox.path("cache"));
    back_up(&repo, &source).unwrap();
    counting.ranged_reads.store(0, Ordering::SeqCst);
    (counting, repo)
}

#[test]
fn restoring_a_thousand_small_files_reads_their_packs_in_few_ranges() {
    let sandbox = Sandbox::new();
    let (counting, repo) = thousand_small_files_backed_up(&sandbox);
    let target = sandbox.path("target");
    assert_latest_restores_to(&repo, &sandbox.path("source"), &target);
    let reads = counting.ranged_reads.load(Ordering::SeqCst);
    assert!(reads <= 20, "{reads} ranged reads for 1,000 files");
}

/// Syncs the latest checkpoint of `repo` into directory `target`, without errors.
fn sync_latest_into(repo: &Repository, target: &std::path::Path) {
    use cairn::restore::into_dir;
    use cairn::source::checkpoint::CheckpointSource;
    let latest = cairn::checkpoint::resolve(repo, "latest").unwrap().record;
    let source = CheckpointSource::whole(repo, &latest);
    let report = into_dir(
        &source,
        latest.tree,
        latest.root.as_ref(),
        target,
        &cairn::sync::SyncOptions::default(),
        &Progress::default(),
        &mut |_| {},
    )
    .unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
}

#[test]
fn syncing_a_checkpoint_of_a_thousand_small_files_into_a_directory_reads_few_ranges() {
    let sandbox = Sandbox::new();
    let (counting, repo) = thousand_small_files_backed_up(&sandbox);
    let target = sandbox.path("target");
    sync_latest_into(&repo, &target);
    assert_same_tree(&sandbox.path("source"), &target);
    let reads = counting.ranged_reads.load(Ordering::SeqCst);
    assert!(reads <= 40, "{reads} ranged reads for 1,000 files");
}

#[test]
fn restoring_or_syncing_thousands_of_files_over_several_packs_reads_each_pack_in_few_ranges() {
    let sandbox = Sandbox::new();
    init_repo(&sandbox, ChunkerParams::default());
    let source = sandbox.path("source");
    small_and_large_files(&source);
    let counting = Instrumented::new(Arc::new(LocalBackend::new(sandbox.path("repo"))));
    let repo = open(counting.clone(), &sandbox.path("cache"));
    back_up(&repo, &source).unwrap();
    let packs = counting.list_names("data/").unwrap().len();
    assert!(packs >= 3, "{packs} packs: the tree should span several");
    // Each pack about once, and each of the four trees, by restore and by a sync of the
    // checkpoint into a new directory.
    type WriteInto<'a> = &'a dyn Fn(&std::path::Path);
    let ways: [(&str, WriteInto); 2] = [
        ("restore", &|target| {
            assert_latest_restores_to(&repo, &source, target)
        }),
        ("sync", &|target| {
            sync_latest_into(&repo, target);
            assert_same_tree(&source, target);
        }),
    ];
    for (way, write) in ways {
        counting.ranged_reads.store(0, Ordering::SeqCst);
        write(&sandbox.path(way));
        let reads = counting.ranged_reads.load(Ordering::SeqCst);
        assert!(
            reads <= packs + 4 + 2,
            "{way}: {reads} ranged reads for {packs} packs of 3,006 files"
        );
    }
}

#[test]
fn a_view_of_the_checkpoints_holds_the_shared_lock_so_a_prune_waits_for_it() {
    let sandbox = Sandbox::new();
    let source = init_repo_with_source(&sandbox);
    std::fs::write(source.join("file"), b"shown").unwrap();
    let repo = Arc::new(open_local(&sandbox, "cache"));
    back_up(&repo, &source).unwrap();
    let vfs = cairn::vfs::Vfs::new(repo.clone(), Default::default()).unwrap();
    let prune = cairn::prune::run(&repo, &Default::default());
    let error = prune.unwrap_err();
    match error.lock_conflict() {
        Some(LockConflict::HeldBy { purpose, pid, .. }) => {
            assert_eq!((purpose.as_str(), *pid), ("mount", std::process::id()))
        }
        _ => panic!("{error:?}"),
    }
    drop(vfs);
    cairn::prune::run(&repo, &Default::default()).unwrap();
}

#[test]
fn forget_takes_the_exclusive_lock_and_a_dry_run_shares_it() {
    let sandbox = Sandbox::new();
    let source = init_repo_with_source(&sandbox);
    let repo = open_local(&sandbox, "cache");
    back_up_rounds(&repo, &source, 3);
    let policy = cairn::retention::Policy {
        last: 1,
        ..Default::default()
    };
    let filter = Default::default();
    let dry = open_local(&sandbox, "cache").into_dry_run();
    let reading = cairn::repo::lock::acquire(&repo, false, "a reader").unwrap();
    let planned = cairn::retention::forget(&dry, &policy, &filter).unwrap();
    assert_eq!(planned.removed, 2);
    assert_eq!(cairn::checkpoint::list(&repo).unwrap().len(), 3);
    let refused = cairn::retention::forget(&repo, &policy, &filter);
    let error = refused.unwrap_err();
    match error.lock_conflict() {
        Some(LockConflict::HeldBy {
            purpose,
            host,
            exclusive,
            ..
        }) => {
            assert_eq!(purpose, "a reader");
            assert_eq!(*host, cairn::host_name());
            assert!(!exclusive);
            assert!(error.to_string().contains("a reader"), "{error}");
        }
        _ => panic!("{error:?}"),
    }
    drop(reading);
    let done = cairn::retention::forget(&repo, &policy, &filter).unwrap();
    assert_eq!(done.removed, 2);
    assert_eq!(cairn::checkpoint::list(&repo).unwrap().len(), 1);
}

#[test]
fn a_not_found_error_carries_what_was_missing() {
    let sandbox = Sandbox::new();
    let nowhere = LocalBackend::new(sandbox.path("nothing here"));
    let no_repository = Repository::open(
        Arc::new(nowhere),
        |_| Ok(Secret::None),
        &sandbox.path("cache"),
    );
    let Err(error) = no_repository else {
        panic!("opened a repository where there is none")
    };
    assert!(
        matches!(error.missing(), Some(Missing::Repository { location }) if location.contains("nothing here")),
        "{error:?}"
    );

    let source = init_repo_with_source(&sandbox);
    std::fs::write(source.join("file"), b"some bytes to keep").unwrap();
    let repo = open_local(&sandbox, "cache");
    back_up(&repo, &source).unwrap();

    let error = cairn::checkpoint::resolve(&repo, "0000ffff").unwrap_err();
    assert_eq!(
        error.missing(),
        Some(&Missing::Checkpoint {
            asked: "0000ffff".into()
        })
    );
    let latest = cairn::checkpoint::resolve(&repo, "latest").unwrap();
    let error = find_entry(&repo, latest.record.root_entry(), "no/such/path").unwrap_err();
    assert_eq!(
        error.missing(),
        Some(&Missing::PathInCheckpoint { path: "no".into() })
    );
    let error = find_entry(&repo, latest.record.root_entry(), "file/below").unwrap_err();
    assert_eq!(
        error.missing(),
        Some(&Missing::PathInCheckpoint {
            path: "file".into()
        })
    );

    let file = find_entry(&repo, latest.record.root_entry(), "file").unwrap();
    let EntryKind::File(Content::Chunks(chunks)) = file.kind else {
        panic!("a file of chunks: {file:?}")
    };
    let pack = cairn::repo::pack::pack_object_name(&repo.locate(&chunks[0].id).unwrap().pack);
    repo.backend().delete(&pack).unwrap();
    let error = repo.read_blob(&chunks[0].id).unwrap_err();
    assert_eq!(error.missing(), Some(&Missing::Object { name: pack }));
}

#[test]
fn a_check_holds_the_shared_lock_so_it_waits_for_a_prune() {
    let sandbox = Sandbox::new();
    let source = init_repo_with_source(&sandbox);
    std::fs::write(source.join("file"), b"checked").unwrap();
    let repo = open_local(&sandbox, "cache");
    back_up(&repo, &source).unwrap();
    let pruning = cairn::repo::lock::acquire(&repo, true, "a prune").unwrap();
    let error = check::run(&repo, &CheckOptions::default()).unwrap_err();
    match error.lock_conflict() {
        Some(LockConflict::HeldBy { purpose, .. }) => assert_eq!(purpose, "a prune"),
        _ => panic!("{error:?}"),
    }
    drop(pruning);
    assert!(
        check::run(&repo, &CheckOptions::default())
            .unwrap()
            .is_sound()
    );
}
