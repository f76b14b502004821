//! Faults of a real three-node Garage cluster (`replication_factor = 3`,
//! `consistency_mode = "consistent"`: a write or a read needs two nodes) under S3 repositories:
//! a node lost in the middle of a backup, a quorum lost, nodes coming back, and a backup killed
//! while uploading. Cairn talks to the first node; the tests kill the others.

mod common;

use common::garage::Garage;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

fn text(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A three-node cluster holding an unencrypted repository at prefix `repo` (unencrypted: the
/// chunks of a rerun are the same, which the reuse counts rely on), and a sandbox whose
/// commands carry the bucket's credentials.
struct Cluster {
    garage: Garage,
    sandbox: Sandbox,
    repo: String,
}

impl Cluster {
    fn new() -> Self {
        let garage = Garage::cluster(3);
        let sandbox = Sandbox::new().with_envs(garage.env());
        let repo = garage.repo("repo");
        sandbox.ok(&["init", "--repo", &repo, "--encryption", "none"]);
        Cluster {
            garage,
            sandbox,
            repo,
        }
    }

    /// `cairn backup --json --repo REPO SOURCE` with `extra` arguments, in the background.
    fn spawn_backup(&self, source: &Path, extra: &[&str]) -> Child {
        self.sandbox
            .cairn()
            .args(["backup", "--json", "--repo", &self.repo])
            .args(extra)
            .arg(source)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn backup(&self, source: &Path) -> serde_json::Value {
        let output = self.spawn_backup(source, &[]).wait_with_output().unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
        serde_json::from_slice(&output.stdout).unwrap()
    }

    fn objects(&self, dir: &str) -> Vec<String> {
        self.garage
            .objects(&format!("repo/{dir}"))
            .into_keys()
            .collect()
    }

    /// Waits until the bucket holds at least `count` packs.
    fn wait_for_packs(&self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.objects("data/").len() < count {
            assert!(Instant::now() < deadline, "no {count} packs were uploaded");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn check_read_data(&self) {
        self.sandbox
            .ok(&["check", "--read-data", "--repo", &self.repo]);
    }

    fn assert_latest_is(&self, source: &Path, name: &str) {
        let target = self.sandbox.path(name);
        self.sandbox.ok(&[
            "restore",
            "--repo",
            &self.repo,
            "latest",
            "--target",
            text(&target),
        ]);
        assert_same_tree(source, &target);
    }
}

/// `files` files of 8 MB of incompressible bytes in `<sandbox>/<name>`.
fn big_source(sandbox: &Sandbox, name: &str, files: u64, seed: u64) -> PathBuf {
    let dir = sandbox.path(name);
    random_files(&dir, files, 8_000_000, seed);
    dir
}

/// Kills nodes 1 and 2 (those still running) and backs `source` up: without a quorum the
/// backup tries again for --retry-for (2 minutes unless told), then fails saying so.
fn backup_without_quorum(cluster: &mut Cluster, source: &Path) {
    cluster.garage.kill(1);
    cluster.garage.kill(2);
    let failed = run_bounded(
        cluster
            .sandbox
            .cairn()
            .args(["backup", "--retry-for", "10s", "--repo", &cluster.repo])
            .arg(source),
        Duration::from_secs(120),
    );
    assert!(!failed.timed_out, "{}", stderr(&failed.output));
    assert_fails(&failed.output, 1, "quorum");
}

#[test]
fn a_node_lost_mid_backup_is_survived_and_a_lost_quorum_fails_clearly() {
    let mut cluster = Cluster::new();
    let source = big_source(&cluster.sandbox, "source", 6, 1);

    // One node killed while the backup uploads: two of three still make a quorum.
    let running = cluster.spawn_backup(&source, &["--limit-rate", "12M"]);
    cluster.wait_for_packs(1);
    cluster.garage.kill(2);
    let output = running.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(cluster.objects("checkpoints/").len(), 1);
    cluster.check_read_data();
    cluster.assert_latest_is(&source, "restored");

    let more = big_source(&cluster.sandbox, "more", 1, 100);
    backup_without_quorum(&mut cluster, &more);
}

#[test]
fn nodes_back_after_a_lost_quorum_take_the_next_backup() {
    let mut cluster = Cluster::new();
    let more = big_source(&cluster.sandbox, "more", 2, 100);
    backup_without_quorum(&mut cluster, &more);

    // Both back: nothing of the failed run became a checkpoint, the next backup completes
    // and the repository checks clean.
    cluster.garage.restart(1);
    cluster.garage.restart(2);
    assert_eq!(cluster.objects("checkpoints/").len(), 0);
    let before = cluster.garage.requests();
    let healed = cluster.backup(&more);
    let puts = cluster.garage.requests().since(&before).get("PutObject");
    assert_eq!(cluster.objects("checkpoints/").len(), 1);
    // 16 MB of new data: a pack or two, an index file, the checkpoint and the lock.
    assert!(puts <= 8, "{puts} PUTs for 16 MB: {healed}");
    cluster.check_read_data();
    cluster.assert_latest_is(&more, "restored");
}

#[test]
fn a_backup_killed_while_uploading_leaves_packs_the_next_one_reuses() {
    let cluster = Cluster::new();
    let source = big_source(&cluster.sandbox, "source", 8, 7);
    let mut killed = cluster.spawn_backup(&source, &["--limit-rate", "16M"]);
    cluster.wait_for_packs(2);
    killed.kill().unwrap();
    killed.wait().unwrap();
    let uploaded = cluster.objects("data/");
    assert_eq!(cluster.objects("checkpoints/").len(), 0);

    let before = cluster.garage.requests();
    let done = cluster.backup(&source);
    let puts = cluster.garage.requests().since(&before).get("PutObject");
    let packs = cluster.objects("data/");
    for pack in &uploaded {
        assert!(packs.contains(pack), "{pack} of the killed run is gone");
    }
    // The rerun uploads only the packs the killed run had not: besides those, an index
    // file, the checkpoint and the lock (put and refreshed at most once) are all it writes.
    let new_packs = (packs.len() - uploaded.len()) as u64;
    assert!(
        puts <= new_packs + 4,
        "{puts} PUTs for {new_packs} new packs ({} reused): {done}",
        uploaded.len()
    );
    assert!(
        done["added_bytes"].as_u64().unwrap() < 64_000_000 - 16_000_000,
        "{done}"
    );
    cluster.check_read_data();
    cluster.assert_latest_is(&source, "restored");
}
