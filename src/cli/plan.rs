//! `cairn run PLAN`, `cairn status [PLAN]` and `cairn plans init PLAN`: the plans of the
//! configuration file, each target opened with the secret the plan names for it. `run` exits
//! 0 when every target holds the new checkpoint, 3 when some do (or files could not be
//! read), 1 when none does; 130 when interrupted.

use super::{GlobalArgs, counted, print_json, printable_lines, show_progress};
use anyhow::{Context, Result, bail};
use cairn::error::Missing;
use cairn::plan::{self, Config, Target};
use cairn::progress::Progress;
use cairn::repo::config::EncryptionMode;
use cairn::repo::{InitOptions, Repository};
use clap::{Args, Subcommand};
use indicatif::HumanBytes;
use serde_json::json;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The plan to run, as named in the configuration file
    plan: String,
    /// Print one JSON object instead of text
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only this plan (default: every plan)
    plan: Option<String>,
    /// Print JSON instead of text
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct PlansArgs {
    #[command(subcommand)]
    command: PlansCommand,
}

#[derive(Debug, Subcommand)]
enum PlansCommand {
    /// Create every target of a plan that has no repository yet: the first one as its
    /// secret says (password, key file or none), the others sharing its blob ids
    Init {
        /// The plan, as named in the configuration file
        plan: String,
    },
    /// Print the plans a repository keeps (every `run` and `init` stores its plan in each
    /// target) as a plans file; with --write, write it where the plans file belongs
    Recover {
        /// Write the plans file (refused when one exists) instead of printing it
        #[arg(long)]
        write: bool,
    },
}

/// The plans file, its name for messages, and its path.
pub(super) fn load_config(global: &GlobalArgs) -> Result<(Config, String, PathBuf)> {
    let path = config_path(global)?;
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading the plans file {shown}: write one (see docs/PLANS.md) or pass --config FILE"
        )
    })?;
    Ok((Config::parse(&text, &shown)?, shown, path))
}

/// `--config` (or `CAIRN_CONFIG`), else the plans file's place in the user's configuration.
fn config_path(global: &GlobalArgs) -> Result<PathBuf> {
    if let Some(path) = &global.config {
        return Ok(path.clone());
    }
    let unknown = "cannot find the plans file: set HOME or CAIRN_CONFIG, or pass --config FILE";
    Ok(super::config_dir(unknown)?.join("cairn.toml"))
}

/// The global options as they apply to one target: its location and the secrets the plan
/// names for it, nothing taken from the environment's `CAIRN_PASSWORD` or `CAIRN_TOKEN`.
fn for_target(global: &GlobalArgs, target: &Target) -> GlobalArgs {
    GlobalArgs {
        repo: Some(PathBuf::from(&target.repo)),
        password_file: target.password_file.clone(),
        password_command: target.password_command.clone(),
        key_file: target.key_file.clone(),
        token_file: target.token_file.clone(),
        tls_ca: target.tls_ca.clone().or_else(|| global.tls_ca.clone()),
        tls_fingerprint: (target.tls_fingerprint.clone())
            .or_else(|| global.tls_fingerprint.clone()),
        secrets_from_environment: false,
        ..global.clone()
    }
}

/// Opens `target` as the library's plan runs ask.
fn open_target(global: &GlobalArgs, target: &Target) -> cairn::Result<Repository> {
    for_target(global, target)
        .open()
        .map_err(|e| match e.downcast::<cairn::Error>() {
            Ok(error) => error,
            Err(other) => cairn::Error::InvalidInput(format!("{other:#}")),
        })
}

pub fn run(global: &GlobalArgs, args: RunArgs) -> Result<ExitCode> {
    let (config, origin, _) = load_config(global)?;
    let plan = config.plan(&args.plan, &origin)?;
    if plan.low_priority {
        cairn::fs::throttle::lower_priority()?;
    }
    let read_limit = plan
        .limit_rate
        .as_deref()
        .map(cairn::fs::throttle::parse_rate)
        .transpose()?;
    cairn::interrupt::install()?;
    let progress = Progress::default();
    let done = std::sync::atomic::AtomicBool::new(false);
    let report = std::thread::scope(|scope| {
        if show_progress(global, args.json) {
            scope.spawn(|| super::draw_progress(&args.plan, &progress, &done));
        }
        let report = plan::run(
            &args.plan,
            plan,
            &mut |target| open_target(global, target),
            read_limit,
            &progress,
        );
        done.store(true, Ordering::Relaxed);
        report
    });
    let report = match report {
        Err(_) if cairn::interrupt::requested() => {
            return Ok(super::interrupted(
                &format!("plan {}", args.plan),
                &progress,
            ));
        }
        report => report?,
    };
    let unreadable = report.backup.as_ref().map_or(&[][..], |b| &b.errors[..]);
    for error in unreadable {
        errln!(
            "warning: {}: {} (not in the checkpoint)",
            error.path.display(),
            error.message
        );
    }
    if args.json {
        print_json(&json!({
            "plan": args.plan,
            "id": report.checkpoint.map(|id| id.to_hex()),
            "short_id": report.checkpoint.map(|id| id.short()),
            "errors": unreadable.len(),
            "unreadable": unreadable,
            "targets": report.targets.iter().map(|t| json!({
                "repo": t.repo,
                "holds_checkpoint": t.holds_checkpoint,
                "backed_up_here": t.backed_up_here,
                "blobs_copied": t.copied.as_ref().map(|c| c.blobs_copied),
                "bytes_copied": t.copied.as_ref().map(|c| c.bytes_transferred),
                "forgotten": t.forgotten,
                "error": t.error.as_ref().map(|e| e.to_string()),
            })).collect::<Vec<_>>(),
        }))?;
    } else {
        print_run_summary(&args.plan, &report)?;
    }
    let held = report.held_by();
    Ok(if held == 0 {
        ExitCode::FAILURE
    } else if held < report.targets.len() || !unreadable.is_empty() {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

fn print_run_summary(name: &str, report: &plan::RunReport) -> Result<()> {
    match report.checkpoint {
        Some(id) => {
            outln!("{id}");
            errln!(
                "plan {name}: checkpoint {} in {} of {} targets",
                id.short(),
                report.held_by(),
                report.targets.len()
            );
        }
        None => errln!("plan {name}: no checkpoint was made"),
    }
    for target in &report.targets {
        let mut what = match (&target.copied, target.backed_up_here) {
            (_, true) => "backed up here".to_owned(),
            (Some(copy), _) => format!(
                "copied and verified ({}, {})",
                counted(copy.blobs_copied, "blob"),
                HumanBytes(copy.bytes_transferred)
            ),
            (None, false) => String::new(),
        };
        if target.forgotten > 0 {
            what.push_str(&format!(
                ", {} forgotten",
                counted(target.forgotten, "old checkpoint")
            ));
        }
        let state = if target.holds_checkpoint {
            "holds"
        } else {
            "lacks"
        };
        match &target.error {
            Some(error) => errln!(
                "  {state} {}: {what}{}failed: {error}",
                target.repo,
                if what.is_empty() { "" } else { "; " }
            ),
            None => errln!("  {state} {}: {what}", target.repo),
        }
    }
    Ok(())
}

pub fn status(global: &GlobalArgs, args: StatusArgs) -> Result<ExitCode> {
    let (config, origin, _) = load_config(global)?;
    let names: Vec<&String> = match &args.plan {
        Some(name) => {
            config.plan(name, &origin)?;
            vec![name]
        }
        None => config.plans.keys().collect(),
    };
    let now = std::time::SystemTime::now();
    let mut everywhere_all = true;
    let mut listing = Vec::new();
    for name in names {
        let plan = &config.plans[name];
        let statuses = plan::status(name, plan, &mut |target| open_target(global, target));
        let newest = plan::newest_everywhere(&statuses);
        everywhere_all &= newest.is_some_and(|(_, everywhere)| everywhere);
        if args.json {
            listing.push(json!({
                "plan": name,
                "replicated_everywhere": newest.map(|(_, everywhere)| everywhere),
                "newest": newest.map(|(stored, _)| stored.id.to_hex()),
                "targets": statuses.iter().map(|s| json!({
                    "repo": s.repo,
                    "checkpoints": s.checkpoints.len(),
                    "latest": s.latest().map(|l| json!({
                        "id": l.id.to_hex(),
                        "time": l.record.time,
                        "bytes": l.record.stats.bytes,
                    })),
                    "error": s.error.as_ref().map(|e| e.to_string()),
                })).collect::<Vec<_>>(),
            }));
            continue;
        }
        outln!(
            "{name}: {}",
            match newest {
                None => "no checkpoint yet".to_owned(),
                Some((stored, true)) => format!("{} is in every target", stored.id.short()),
                Some((stored, false)) => format!("{} is not in every target", stored.id.short()),
            }
        );
        for target in &statuses {
            let state = match (&target.error, target.latest()) {
                (Some(error), _) => format!("unreadable: {error}"),
                (None, None) => "no checkpoint of this plan".to_owned(),
                (None, Some(latest)) => format!(
                    "{}, latest {} {} ({} ago, {})",
                    counted(target.checkpoints.len(), "checkpoint"),
                    latest.id.short(),
                    latest.record.time.get(..19).unwrap_or(&latest.record.time),
                    age(&latest.record.time, now),
                    HumanBytes(latest.record.stats.bytes)
                ),
            };
            outln!("  {}: {state}", target.repo);
        }
    }
    if args.json {
        print_json(&listing)?;
    }
    Ok(if everywhere_all {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

/// How long ago RFC 3339 `time` was, to the minute.
fn age(time: &str, now: std::time::SystemTime) -> String {
    humantime::parse_rfc3339_weak(time.trim_end_matches('Z').get(..19).unwrap_or(time))
        .ok()
        .and_then(|then| now.duration_since(then).ok())
        .map_or_else(
            || "?".to_owned(),
            |ago| {
                humantime::format_duration(std::time::Duration::from_secs(ago.as_secs() / 60 * 60))
                    .to_string()
            },
        )
}

pub fn plans(global: &GlobalArgs, args: PlansArgs) -> Result<ExitCode> {
    match args.command {
        PlansCommand::Init { plan } => init(global, &plan),
        PlansCommand::Recover { write } => recover(global, write),
    }
}

/// The plans `--repo` keeps, as a plans file.
fn recover(global: &GlobalArgs, write: bool) -> Result<ExitCode> {
    let repo = global.open()?;
    let (kept, unreadable) = plan::stored(&repo)?;
    for error in &unreadable {
        errln!("warning: {error}");
    }
    if kept.is_empty() {
        bail!(
            "{} keeps no plan: only repositories that `cairn run` or `cairn plans init` wrote \
             to hold one",
            repo.backend().location()
        );
    }
    for stored in kept.values() {
        errln!(
            "plan {}: stored {} from {}",
            stored.name,
            stored.time.get(..19).unwrap_or(&stored.time),
            stored.host
        );
    }
    let config = Config {
        plans: kept
            .into_iter()
            .map(|(name, stored)| (name, stored.plan))
            .collect(),
    };
    let text = toml::to_string(&config).context("writing the plans as TOML")?;
    if !write {
        // Line by line: TOML escapes most control characters in strings, not all.
        use std::io::Write as _;
        writeln!(
            std::io::stdout().lock(),
            "{}",
            printable_lines(text.trim_end())
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    let path = config_path(global)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| {
            format!(
                "writing {}: a plans file is there already; print the plans without --write \
                 and merge them by hand",
                path.display()
            )
        })?;
    std::io::Write::write_all(&mut file, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    errln!("plans written to {}", path.display());
    Ok(ExitCode::SUCCESS)
}

/// Creates the plan's targets that hold no repository yet.
fn init(global: &GlobalArgs, name: &str) -> Result<ExitCode> {
    let (config, origin, _) = load_config(global)?;
    let plan = config.plan(name, &origin)?;
    let mut model: Option<Repository> = None;
    let mut failed = 0;
    for target in &plan.targets {
        let args = for_target(global, target);
        match init_target(&args, target, model.as_ref()) {
            Ok((repo, created)) => {
                if let Err(e) = plan::store(&repo, name, plan) {
                    errln!(
                        "warning: {}: could not keep the plan there: {e}",
                        target.repo
                    );
                }
                errln!(
                    "  {}: {}",
                    target.repo,
                    if created {
                        "created"
                    } else {
                        "already a repository"
                    }
                );
                model.get_or_insert(repo);
            }
            Err(e) => {
                failed += 1;
                errln!("  {}: failed: {e:#}", target.repo);
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

/// Opens `target`, creating it first when it holds no repository: like `model` when there
/// is one, so that every target shares blob ids.
fn init_target(
    args: &GlobalArgs,
    target: &Target,
    model: Option<&Repository>,
) -> Result<(Repository, bool)> {
    let backend = args.backend()?;
    match Repository::read_config(backend.as_ref()) {
        Ok(_) => return Ok((args.open()?, false)),
        Err(e) if matches!(e.missing(), Some(Missing::Repository { .. })) => {}
        Err(e) => return Err(e.into()),
    }
    let encryption = if target.key_file.is_some() {
        EncryptionMode::Keyfile
    } else if target.password_file.is_some() || target.password_command.is_some() {
        EncryptionMode::Password
    } else {
        bail!(
            "target {} names no secret: give it password_file, password_command or key_file \
             (an unencrypted target is made with `cairn init --encryption none`)",
            target.repo
        );
    };
    let mut options = match model {
        Some(model) => InitOptions::like(encryption, model)?,
        None => InitOptions::new(encryption),
    };
    match encryption {
        EncryptionMode::Keyfile => options.key_file = target.key_file.clone(),
        _ => options.password = Some(args.password(false)?),
    }
    Repository::init(backend.as_ref(), options)?;
    Ok((args.open()?, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_age_is_said_to_the_minute() {
        let now = humantime::parse_rfc3339("2026-12-04T10:00:00Z").unwrap();
        assert_eq!(age("2026-12-04T08:29:30.123456789Z", now), "1h 30m");
        assert_eq!(age("not a time", now), "?");
    }
}
