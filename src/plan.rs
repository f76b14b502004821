//! Plans: a backup described once — its sources and excludes, its target repositories, its
//! retention and limits — and run as one checkpoint put into every target. `Config` reads the
//! plans from TOML; `run` backs a plan up into its first target that opens, copies the new
//! checkpoint into every other target (the repository copy of `sync::copy`), verifies it
//! where it landed, and applies the plan's retention in each; `status` says what each target
//! holds. Opening a target (its store and its secret) is the caller's, as it is for
//! `sync::endpoint`: a plan names where secrets come from and never holds one.
//!
//! Each target also keeps the plan itself, sealed under its key (`plans/<id>`, see
//! docs/FORMAT.md), so that on a new machine the repository and its password are enough to
//! get the plans back (`stored`).

use crate::backup::{self, BackupOptions, BackupOutcome};
use crate::check::{self, CheckOptions};
use crate::checkpoint::{self, CheckpointFilter, Stored};
use crate::error::{Error, ErrorKind, Result};
use crate::id::CheckpointId;
use crate::progress::Progress;
use crate::repo::Repository;
use crate::repo::objects::ObjectKind;
use crate::retention::{self, Policy};
use crate::sync::{SyncOptions, SyncReport, copy};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The plans of a configuration file, by name.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub plans: BTreeMap<String, Plan>,
}

/// What to back up, where to, and how.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// The paths backed up, as `cairn backup` takes them.
    pub sources: Vec<PathBuf>,
    /// Globs left out, as `cairn backup --exclude` takes them.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Leave out directories marked with a `CACHEDIR.TAG` (`--exclude-caches`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exclude_caches: bool,
    /// Stay on each source's filesystem (`--one-file-system`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub one_file_system: bool,
    /// The repositories that keep the plan's checkpoints: the backup goes to the first that
    /// opens, and is copied into the others.
    pub targets: Vec<Target>,
    /// Which of the plan's checkpoints each target keeps after a run (none removed without).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep: Option<Policy>,
    /// Run at low CPU and I/O priority, one read at a time.
    #[serde(default)]
    pub low_priority: bool,
    /// Read source files at most this fast, in bytes per second ("20M", "512K").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_rate: Option<String>,
    /// When `cairn schedule` runs the plan: `hourly`, `daily`, `weekly`, `monthly`, or a
    /// systemd calendar event such as `*-*-* 03:30` (default: daily).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
}

/// One repository of a plan and where its secret comes from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// A directory, the URL of a `cairn serve`, or an S3 bucket, as `--repo` takes it.
    pub repo: String,
    /// A file whose first line is the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// A command (run by `sh -c`) whose first line of output is the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_command: Option<String>,
    /// The key file of a keyfile-mode repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// The token of a `cairn serve`, from this file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// A PEM certificate (or CA) to trust for this target's server or store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
    /// The SHA-256 fingerprint of this target's server certificate, pinned (as
    /// `--tls-fingerprint`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_fingerprint: Option<String>,
}

impl Config {
    /// Reads a configuration from TOML `text`; `origin` (a file name) is named in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config> {
        let config: Config = toml::from_str(text)
            .map_err(|e| Error::InvalidInput(format!("{origin}: {}", e.to_string().trim())))?;
        for (name, plan) in &config.plans {
            plan.check(name)
                .map_err(|why| Error::InvalidInput(format!("{origin}: plan {name}: {why}")))?;
        }
        Ok(config)
    }

    /// The plan called `name`.
    pub fn plan(&self, name: &str, origin: &str) -> Result<&Plan> {
        self.plans.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.plans.keys().map(String::as_str).collect();
            Error::InvalidInput(match known.as_slice() {
                [] => format!("{origin} has no plans: describe one in a [plans.NAME] table"),
                known => format!(
                    "{origin} has no plan {name:?}; its plans: {}",
                    known.join(", ")
                ),
            })
        })
    }
}

impl Plan {
    /// What makes a plan unusable, said for its table.
    fn check(&self, name: &str) -> std::result::Result<(), String> {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err("a plan's name is letters, digits, '-', '_' and '.'".into());
        }
        if self.sources.is_empty() {
            return Err("sources is empty: name the paths to back up".into());
        }
        if self.targets.is_empty() {
            return Err("no targets: add a [[plans.NAME.targets]] table with repo = ...".into());
        }
        if self.keep.as_ref().is_some_and(Policy::is_empty) {
            return Err(
                "keep keeps nothing: give last, hourly, daily, weekly, monthly, yearly or tags"
                    .into(),
            );
        }
        for target in &self.targets {
            let secrets = [
                target.password_file.is_some(),
                target.password_command.is_some(),
                target.key_file.is_some(),
            ];
            if secrets.iter().filter(|&&given| given).count() > 1 {
                return Err(format!(
                    "target {}: give one of password_file, password_command and key_file",
                    target.repo
                ));
            }
        }
        Ok(())
    }

    /// The tag every checkpoint of plan `name` carries, which its status and retention select.
    pub fn tag(name: &str) -> String {
        format!("plan:{name}")
    }

    fn filter(name: &str) -> CheckpointFilter {
        CheckpointFilter {
            tag_groups: vec![vec![Plan::tag(name)]],
            ..Default::default()
        }
    }
}

/// A plan as a repository keeps it: its name, when it was stored and from where.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoredPlan {
    pub name: String,
    /// RFC 3339 UTC; of several versions of one plan, the newest is the plan.
    pub time: String,
    pub host: String,
    pub plan: Plan,
}

/// Keeps plan `name` in `repo` unless this very plan is there already (one object per
/// version, named by its contents, so nothing is overwritten); older versions of the plan
/// are removed where the store allows it.
pub fn store(repo: &Repository, name: &str, plan: &Plan) -> Result<()> {
    let identity = serde_json::to_vec(&(name, plan)).expect("plans serialize");
    let object = ObjectKind::Plan.name(&hex::encode(repo.codec().id_of(&identity)));
    if repo.backend().exists(&object)? {
        return Ok(());
    }
    let record = StoredPlan {
        name: name.to_owned(),
        time: humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string(),
        host: crate::host_name(),
        plan: plan.clone(),
    };
    let json = serde_json::to_vec(&record).expect("plans serialize");
    repo.backend()
        .put(&object, &repo.codec().encode(&json, true))?;
    for older in repo.backend().list_names(ObjectKind::Plan.prefix())? {
        if older != object && read_stored(repo, &older).is_ok_and(|kept| kept.name == name) {
            // An append-only server refuses: the newest version is the plan all the same.
            let _ = repo.backend().delete(&older);
        }
    }
    Ok(())
}

/// The plans `repo` keeps, the newest version of each, by name; with the objects that could
/// not be read and why.
pub fn stored(repo: &Repository) -> Result<(BTreeMap<String, StoredPlan>, Vec<Error>)> {
    let mut plans: BTreeMap<String, StoredPlan> = BTreeMap::new();
    let mut unreadable = Vec::new();
    for object in repo.backend().list_names(ObjectKind::Plan.prefix())? {
        match read_stored(repo, &object) {
            Ok(kept) => match plans.get(&kept.name) {
                Some(newer) if newer.time >= kept.time => {}
                _ => {
                    plans.insert(kept.name.clone(), kept);
                }
            },
            Err(e) => unreadable.push(e),
        }
    }
    Ok((plans, unreadable))
}

fn read_stored(repo: &Repository, object: &str) -> Result<StoredPlan> {
    decode_stored(&repo.read_object_plaintext(object)?, object)
}

/// Parses and checks the plaintext of plan object `object` (named in errors).
pub fn decode_stored(plaintext: &[u8], object: &str) -> Result<StoredPlan> {
    let kept: StoredPlan =
        serde_json::from_slice(plaintext).map_err(|e| Error::corrupt(object, e.to_string()))?;
    kept.plan
        .check(&kept.name)
        .map_err(|why| Error::corrupt(object, format!("plan {}: {why}", kept.name)))?;
    Ok(kept)
}

/// What a run did in one target.
#[derive(Debug, Default)]
pub struct TargetReport {
    pub repo: String,
    /// Whether the target holds the run's checkpoint: made there, or copied and verified.
    pub holds_checkpoint: bool,
    /// Whether the backup was made in this target.
    pub backed_up_here: bool,
    /// The copy into this target, when the checkpoint was copied.
    pub copied: Option<SyncReport>,
    /// The plan's checkpoints its retention removed here.
    pub forgotten: u64,
    /// What went wrong here (a target may hold the checkpoint and still fail its retention).
    pub error: Option<Error>,
}

/// What a run of a plan did.
#[derive(Debug)]
pub struct RunReport {
    /// The new checkpoint, when the backup succeeded in some target.
    pub checkpoint: Option<CheckpointId>,
    /// The backup: its record and the files it could not read.
    pub backup: Option<BackupOutcome>,
    /// Every target, in the plan's order.
    pub targets: Vec<TargetReport>,
}

impl RunReport {
    /// How many targets hold the new checkpoint.
    pub fn held_by(&self) -> usize {
        self.targets.iter().filter(|t| t.holds_checkpoint).count()
    }
}

/// Runs plan `name`: a backup into its first target that opens (`open` opens a target with
/// its secret), the new checkpoint copied into every other target and verified there, then
/// the plan's retention in each target that holds it. A target that fails is reported and
/// the others go on; only an interruption stops the run.
pub fn run(
    name: &str,
    plan: &Plan,
    open: &mut dyn FnMut(&Target) -> Result<Repository>,
    read_limit: Option<u64>,
    progress: &Progress,
) -> Result<RunReport> {
    let mut options = BackupOptions::new(plan.sources.clone());
    options.excludes = plan.exclude.clone();
    options.exclude_caches = plan.exclude_caches;
    options.one_file_system = plan.one_file_system;
    options.tags = vec![Plan::tag(name)];
    options.read_limit = read_limit;
    options.one_read_at_a_time = plan.low_priority;
    let mut targets: Vec<TargetReport> = plan
        .targets
        .iter()
        .map(|target| TargetReport {
            repo: target.repo.clone(),
            ..Default::default()
        })
        .collect();
    let mut opened: Vec<Option<Repository>> = Vec::with_capacity(plan.targets.len());
    let mut made: Option<(usize, BackupOutcome)> = None;
    for (i, target) in plan.targets.iter().enumerate() {
        let repo = match open(target) {
            Ok(repo) => repo,
            Err(e) => {
                stop_if_interrupted(&e)?;
                targets[i].error = Some(e);
                opened.push(None);
                continue;
            }
        };
        if made.is_none() {
            match backup::run(&repo, &options, progress) {
                Ok(outcome) => {
                    targets[i].backed_up_here = true;
                    targets[i].holds_checkpoint = true;
                    made = Some((i, outcome));
                }
                Err(e) => {
                    stop_if_interrupted(&e)?;
                    targets[i].error = Some(e);
                }
            }
        }
        opened.push(Some(repo));
    }
    let Some((primary, outcome)) = made else {
        return Ok(RunReport {
            checkpoint: None,
            backup: None,
            targets,
        });
    };
    let id = outcome
        .id
        .expect("a backup that is no dry run names its checkpoint");
    let source = opened[primary]
        .as_ref()
        .expect("the backup's target is open");
    for (i, repo) in opened.iter().enumerate() {
        let Some(repo) = repo
            .as_ref()
            .filter(|_| i != primary && targets[i].error.is_none())
        else {
            continue;
        };
        match replicate(source, repo, id, progress) {
            Ok(report) => {
                targets[i].copied = Some(report);
                targets[i].holds_checkpoint = true;
            }
            Err(e) => {
                stop_if_interrupted(&e)?;
                targets[i].error = Some(e);
            }
        }
    }
    for (i, repo) in opened.iter().enumerate() {
        let Some(repo) = repo.as_ref().filter(|_| targets[i].holds_checkpoint) else {
            continue;
        };
        if let Err(e) = store(repo, name, plan) {
            tracing::warn!("could not keep plan {name} in {}: {e}", targets[i].repo);
        }
        let Some(policy) = &plan.keep else { continue };
        match retention::forget(repo, policy, &Plan::filter(name)) {
            Ok(forgotten) => targets[i].forgotten = forgotten.removed,
            Err(e) => {
                stop_if_interrupted(&e)?;
                targets[i].error = Some(e);
            }
        }
    }
    Ok(RunReport {
        checkpoint: Some(id),
        backup: Some(outcome),
        targets,
    })
}

/// An interruption ends the whole run; any other failure is one target's.
fn stop_if_interrupted(error: &Error) -> Result<()> {
    match error.kind() {
        ErrorKind::Interrupted => Err(Error::Interrupted),
        _ => Ok(()),
    }
}

/// Copies checkpoint `id` from `source` into `target` and verifies it there: its record reads
/// back under the target's key with the same id, every tree below it reads back, and every
/// chunk its files list is indexed in a pack that holds it.
fn replicate(
    source: &Repository,
    target: &Repository,
    id: CheckpointId,
    progress: &Progress,
) -> Result<SyncReport> {
    let report = copy::run(source, target, Some(id), &SyncOptions::default(), progress)?;
    let verified = check::run(
        target,
        &CheckOptions {
            only: Some(id),
            ..Default::default()
        },
    )?;
    if !verified.problems.is_empty() || !verified.affected_checkpoints.is_empty() {
        let what = verified
            .problems
            .first()
            .cloned()
            .or_else(|| {
                verified
                    .damaged
                    .first()
                    .map(|d| format!("blob {}: {}", d.blob, d.reason))
            })
            .unwrap_or_default();
        return Err(Error::corrupt(
            target.backend().location(),
            format!(
                "checkpoint {} did not verify after the copy: {what}",
                id.short()
            ),
        ));
    }
    Ok(report)
}

/// The plan's checkpoints in one target, newest last.
#[derive(Debug)]
pub struct TargetStatus {
    pub repo: String,
    /// The plan's checkpoints there, oldest first; empty when it could not be read.
    pub checkpoints: Vec<Stored>,
    /// Why the target could not be read.
    pub error: Option<Error>,
}

impl TargetStatus {
    /// The newest of the plan's checkpoints here.
    pub fn latest(&self) -> Option<&Stored> {
        self.checkpoints.last()
    }

    /// Whether checkpoint `id` is here.
    pub fn holds(&self, id: &CheckpointId) -> bool {
        self.checkpoints.iter().any(|stored| stored.id == *id)
    }
}

/// What each target of plan `name` holds.
pub fn status(
    name: &str,
    plan: &Plan,
    open: &mut dyn FnMut(&Target) -> Result<Repository>,
) -> Vec<TargetStatus> {
    plan.targets
        .iter()
        .map(|target| {
            let listed =
                open(target).and_then(|repo| checkpoint::list_matching(&repo, &Plan::filter(name)));
            let (checkpoints, error) = match listed {
                Ok(checkpoints) => (checkpoints, None),
                Err(e) => (Vec::new(), Some(e)),
            };
            TargetStatus {
                repo: target.repo.clone(),
                checkpoints,
                error,
            }
        })
        .collect()
}

/// The newest checkpoint any target holds, and whether every target holds it.
pub fn newest_everywhere(statuses: &[TargetStatus]) -> Option<(&Stored, bool)> {
    let newest = statuses
        .iter()
        .filter_map(TargetStatus::latest)
        .max_by(|a, b| a.record.time.cmp(&b.record.time))?;
    Some((newest, statuses.iter().all(|s| s.holds(&newest.id))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_reads_from_toml_and_a_misspelt_key_is_an_error() {
        let text = r#"
            [plans.home]
            sources = ["/home/me"]
            exclude = ["*.tmp"]
            keep = { last = 3, daily = 7 }
            low_priority = true
            limit_rate = "10M"
            [[plans.home.targets]]
            repo = "/mnt/usb/cairn"
            password_file = "/root/usb.pass"
            [[plans.home.targets]]
            repo = "s3:https://store:3900/bucket"
            password_command = "pass show cairn"
        "#;
        let config = Config::parse(text, "cairn.toml").unwrap();
        let plan = config.plan("home", "cairn.toml").unwrap();
        assert_eq!(plan.targets.len(), 2);
        assert_eq!(plan.keep.as_ref().unwrap().daily, 7);
        assert!(plan.low_priority);
        assert_eq!(plan.limit_rate.as_deref(), Some("10M"));
        assert_eq!(
            plan.targets[1].password_command.as_deref(),
            Some("pass show cairn")
        );

        let misspelt = text.replace("exclude", "exclde");
        let error = Config::parse(&misspelt, "cairn.toml").unwrap_err();
        assert!(error.to_string().contains("exclde"), "{error}");
        let error = config.plan("work", "cairn.toml").unwrap_err();
        assert!(error.to_string().contains("its plans: home"), "{error}");
        let two_secrets = text.replace(
            "password_file = \"/root/usb.pass\"",
            "password_file = \"/root/usb.pass\"\nkey_file = \"/k\"",
        );
        let error = Config::parse(&two_secrets, "cairn.toml").unwrap_err();
        assert!(error.to_string().contains("give one of"), "{error}");

        // The README's five lines: targets as inline tables.
        let inline = r#"
            [plans.home]
            sources = ["/home/me"]
            keep = { daily = 7, weekly = 4 }
            targets = [{ repo = "/mnt/usb/cairn", password_file = "/root/usb.pass" },
                       { repo = "s3:https://garage.lan:3900/backups", password_command = "pass show cairn" }]
        "#;
        let config = Config::parse(inline, "README").unwrap();
        assert_eq!(
            config.plans["home"].targets[1].repo,
            "s3:https://garage.lan:3900/backups"
        );
        assert!(!config.plans["home"].exclude_caches);

        let inputs = text.replace(
            "exclude = [\"*.tmp\"]",
            "exclude = [\"*.tmp\"]\nexclude_caches = true\none_file_system = true",
        );
        let plan = Config::parse(&inputs, "cairn.toml").unwrap().plans["home"].clone();
        assert!(plan.exclude_caches && plan.one_file_system);
        // Stored as before when they are off: a record's bytes do not change.
        let stored = serde_json::to_string(&config.plans["home"]).unwrap();
        assert!(!stored.contains("exclude_caches"), "{stored}");
    }
}
