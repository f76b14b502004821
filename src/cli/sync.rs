//! `cairn sync SRC DST`: moves data between directories and repositories, copying only what
//! the destination lacks. Each side is a directory or a repository (`REPO::CKPT` names one
//! checkpoint), local or served (`https://host:port/repo`); a source may also be a directory
//! served by `cairn serve --source` (`https://host:port/source/NAME`). A directory into a repository is a backup with the parent's stat cache; a
//! repository into another copies checkpoints blob by blob; a checkpoint or a directory into
//! a directory makes it match, like rsync. The destination repository opens with the main
//! secret (`--password-file`, `CAIRN_PASSWORD`, `--key-file`), a source repository with the
//! `--from-*` ones when given. Exit 3 when the sync finished but some paths failed.

use super::{FromCredentials, GlobalArgs, print_json, show_progress};
use anyhow::{Context, Result, bail};
use cairn::backup::{self, BackupOptions, Progress};
use cairn::checkpoint;
use cairn::sync::into_dir::{CheckpointSource, DirectorySource};
use cairn::sync::remote::RemoteSource;
use cairn::sync::wire::ChunkSpec;
use cairn::sync::{SyncError, SyncOptions, SyncReport, copy, into_dir, pull};
use clap::Args;
use indicatif::HumanBytes;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Source: a directory, a repository, REPO::CKPT, or a served https://HOST/source/NAME
    source: String,
    /// Destination: a directory or a repository
    destination: String,
    /// Plan and report what would move; read only what planning needs, write nothing
    #[arg(long)]
    dry_run: bool,
    /// Into a directory: remove what the source lacks
    #[arg(long)]
    delete: bool,
    /// Parallel transfers (default: twice the cores)
    #[arg(long, value_name = "N")]
    concurrency: Option<usize>,
    /// Move at most this many bytes per second, all transfers together (e.g. 20M, 512K)
    #[arg(long, value_name = "RATE", value_parser = super::rate)]
    limit_rate: Option<u64>,
    /// Print one JSON object instead of text
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    from: FromCredentials,
}

/// One side of a sync.
enum Endpoint {
    Directory(PathBuf),
    /// A live directory served by `cairn serve --source` (its URL).
    Served(String),
    Repository {
        path: PathBuf,
        checkpoint: Option<String>,
    },
}

impl Endpoint {
    fn parse(text: &str) -> Result<Endpoint> {
        let (location, checkpoint) = match text.rsplit_once("::") {
            Some((location, reference))
                if !reference.is_empty()
                    && reference.bytes().all(|b| b.is_ascii_alphanumeric()) =>
            {
                (location, Some(reference.to_owned()))
            }
            _ => (text, None),
        };
        if super::is_url(location) {
            if location.contains("/source/") && checkpoint.is_none() {
                return Ok(Endpoint::Served(location.trim_end_matches('/').to_owned()));
            }
            return Ok(Endpoint::Repository {
                path: PathBuf::from(location),
                checkpoint,
            });
        }
        let path = PathBuf::from(location);
        if is_repository(&path) {
            return Ok(Endpoint::Repository { path, checkpoint });
        }
        if checkpoint.is_some() {
            bail!(
                "{location} is not a cairn repository (it has no config), so {text} names no checkpoint"
            );
        }
        Ok(Endpoint::Directory(path))
    }
}

/// Whether `path` holds a cairn repository: a `config` naming the format.
fn is_repository(path: &Path) -> bool {
    std::fs::read(path.join("config"))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .is_some_and(|config| config.get("cairn_repository").is_some())
}

pub fn run(global: &GlobalArgs, args: SyncArgs) -> Result<ExitCode> {
    let source = Endpoint::parse(&args.source)?;
    let destination = Endpoint::parse(&args.destination)?;
    let mut options = SyncOptions {
        dry_run: args.dry_run,
        delete: args.delete,
        rate_limit: args.limit_rate,
        ..SyncOptions::default()
    };
    if let Some(n) = args.concurrency {
        options.concurrency = n.max(1);
    }
    // Into a repository a signal stops the run cleanly (what is packed stays indexed).
    if !args.dry_run && matches!(destination, Endpoint::Repository { .. }) {
        cairn::interrupt::install()?;
    }
    let progress = Progress::default();
    let done = AtomicBool::new(false);
    let report = std::thread::scope(|scope| {
        if show_progress(args.json) {
            scope.spawn(|| super::draw_run_progress("sync", "received", &progress, &done));
        }
        let report = sync(global, &args, source, destination, &options, &progress);
        done.store(true, Ordering::Relaxed);
        report
    });
    let report = match report {
        Err(_) if cairn::interrupt::requested() => {
            return Ok(super::interrupted("sync", &progress));
        }
        report => report?,
    };
    for error in &report.errors {
        eprintln!("warning: {}: {}", error.path.display(), error.message);
    }
    if args.json {
        print_json(&report)?;
    } else {
        print_report(&report);
    }
    Ok(if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

fn sync(
    global: &GlobalArgs,
    args: &SyncArgs,
    source: Endpoint,
    destination: Endpoint,
    options: &SyncOptions,
    progress: &Progress,
) -> Result<SyncReport> {
    let open_source = |path: &Path| global.open_at(path, args.from.resolve(global));
    match (source, destination) {
        (_, Endpoint::Served(url)) => {
            bail!("{url} is a served source directory: it is read-only, so it can only be a source")
        }
        (
            Endpoint::Served(url),
            Endpoint::Repository {
                path,
                checkpoint: None,
            },
        ) => {
            let repo = global.open_at(&path, global.credentials())?;
            let source = RemoteSource::new(global.remote(&url)?, ChunkSpec::of(&repo), false)?;
            Ok(pull::run(&repo, &source, options, progress)?)
        }
        (Endpoint::Served(url), Endpoint::Directory(target)) => {
            let source = RemoteSource::new(global.remote(&url)?, ChunkSpec::plain(), true)?;
            let root = source.stat(&[])?.filter(|e| e.is_dir());
            Ok(into_dir::run(
                &source,
                Vec::new(),
                root.as_ref(),
                &target,
                options,
                progress,
            )?)
        }
        (
            _,
            Endpoint::Repository {
                checkpoint: Some(_),
                ..
            },
        ) => {
            bail!(
                "the destination names a checkpoint: give the repository alone ({})",
                args.destination
            )
        }
        (Endpoint::Directory(dir), Endpoint::Repository { path, .. }) => {
            pull_directory(global, &dir, &path, options, progress)
        }
        (Endpoint::Repository { path, checkpoint }, Endpoint::Repository { path: to, .. }) => {
            let from = open_source(&path)?;
            let to = global.open_at(&to, global.credentials())?;
            let only = match checkpoint {
                Some(reference) => Some(checkpoint::resolve(&from, &reference)?.0),
                None => None,
            };
            Ok(copy::run(&from, &to, only, options, progress)?)
        }
        (Endpoint::Repository { path, checkpoint }, Endpoint::Directory(target)) => {
            refuse_overlap(&path, &target)?;
            let repo = open_source(&path)?;
            let _lock = cairn::repo::lock::acquire_for_reading(&repo, "sync")?;
            let reference = checkpoint.as_deref().unwrap_or("latest");
            let (_, record) = checkpoint::resolve(&repo, reference)?;
            let source = CheckpointSource {
                repo: &repo,
                totals: (record.stats.files, record.stats.bytes),
            };
            let root = record.root.as_ref();
            Ok(into_dir::run(
                &source,
                record.tree,
                root,
                &target,
                options,
                progress,
            )?)
        }
        (Endpoint::Directory(dir), Endpoint::Directory(target)) => {
            sync_directories(&dir, &target, options, progress)
        }
    }
}

/// Directory → repository: a backup of `dir` into the repository at `repo`.
fn pull_directory(
    global: &GlobalArgs,
    dir: &Path,
    repo: &Path,
    options: &SyncOptions,
    progress: &Progress,
) -> Result<SyncReport> {
    if !dir.is_dir() {
        bail!("{} is not a directory or a repository", dir.display());
    }
    let mut backup_options = BackupOptions::new(vec![dir.to_owned()]);
    backup_options.dry_run = options.dry_run;
    backup_options.read_limit = options.rate_limit;
    let opened = || global.open_at(repo, global.credentials());
    let outcome = backup::run_opening(opened, &backup_options, progress)?;
    let stats = &outcome.checkpoint.stats;
    Ok(SyncReport {
        dry_run: options.dry_run,
        checkpoints_copied: u64::from(outcome.id.is_some()),
        blobs_copied: stats.added_blobs,
        bytes_transferred: stats.bytes_read,
        errors: outcome.errors.into_iter().map(SyncError::from).collect(),
        ..SyncReport::default()
    })
}

/// Refuses a target directory inside `source` (a directory or a local repository) or
/// containing it: the sync would read what it writes, or `--delete` what it reads.
fn refuse_overlap(source: &Path, target: &Path) -> Result<()> {
    if source.to_str().is_some_and(super::is_url) {
        return Ok(());
    }
    let source = std::fs::canonicalize(source)?;
    // Where the target will really be: a symlink in a part that exists is followed, the
    // rest is yet to be created.
    let resolved_target = cairn::target::resolve_future_path(target)
        .with_context(|| format!("resolving {}", target.display()))?;
    if resolved_target.starts_with(&source) || source.starts_with(&resolved_target) {
        bail!(
            "{} and {} overlap: sync between places that do not contain each other",
            source.display(),
            target.display()
        );
    }
    Ok(())
}

/// Directory → directory, refusing a target inside the source (or the other way round).
fn sync_directories(
    dir: &Path,
    target: &Path,
    options: &SyncOptions,
    progress: &Progress,
) -> Result<SyncReport> {
    let source = std::fs::canonicalize(dir)
        .with_context(|| format!("{} is not a directory or a repository", dir.display()))?;
    if !source.is_dir() {
        bail!("{} is not a directory or a repository", dir.display());
    }
    refuse_overlap(&source, target)?;
    let metadata = std::fs::symlink_metadata(&source)?;
    let root = cairn::fsmeta::entry_from_metadata(
        Vec::new(),
        &metadata,
        cairn::tree::EntryKind::Dir(cairn::id::BlobId([0; 32])),
        cairn::fsmeta::read_xattrs(&source).unwrap_or_default(),
    );
    Ok(into_dir::run(
        &DirectorySource,
        source,
        Some(&root),
        target,
        options,
        progress,
    )?)
}

fn print_report(report: &SyncReport) {
    let would = if report.dry_run { "would be " } else { "" };
    if report.checkpoints_copied + report.blobs_copied + report.blobs_skipped > 0 {
        println!(
            "{} checkpoints {would}copied; {} blobs {would}copied, {} already there",
            report.checkpoints_copied, report.blobs_copied, report.blobs_skipped
        );
    }
    if report.files_written + report.files_unchanged + report.entries_deleted > 0 {
        println!(
            "{} files {would}written, {} unchanged, {} entries {would}deleted; {} reused from the target",
            report.files_written,
            report.files_unchanged,
            report.entries_deleted,
            HumanBytes(report.bytes_reused)
        );
    }
    println!(
        "{} {would}transferred",
        HumanBytes(report.bytes_transferred)
    );
}
