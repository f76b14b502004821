//! `cairn sync SRC DST`: moves data between directories and repositories, copying only what
//! the destination lacks. Each side is a directory or a repository (`REPO::CKPT` names one
//! checkpoint), local or served (`https://host:port/repo`); a source may also be a directory
//! served by `cairn serve --source` (`https://host:port/source/NAME[/SUB]`). A directory into
//! a repository is a backup with the parent's stat cache; a repository into another copies
//! checkpoints blob by blob; a checkpoint or a directory into a directory makes it match,
//! like rsync, trailing-slash rule included (`DIR/` syncs the contents, `DIR` the directory
//! itself into `DST/DIR`; a file goes to `DST/FILE`). The destination repository opens with
//! the main secret (`--password-file`, `CAIRN_PASSWORD`, `--key-file`), a source repository
//! with the `--from-*` ones when given. Exit 3 when the sync finished but some paths failed,
//! 25 (rsync's code) when `--max-delete` left entries undeleted, 1 when a full target
//! filesystem stopped a sync into a directory (one message says what is missing).

use super::{FromCredentials, GlobalArgs, print_json, show_progress};
use anyhow::{Context, Result, bail};
use cairn::backup::{self, BackupOptions, Progress};
use cairn::checkpoint;
use cairn::net::wire::ChunkSpec;
use cairn::restore;
use cairn::restore::itemize::{Change, Update};
use cairn::source::OneEntry;
use cairn::source::checkpoint::CheckpointSource;
use cairn::source::local::{DirectorySource, local_one_entry};
use cairn::source::remote::RemoteSource;
use cairn::sync::{SyncOptions, SyncReport, copy, pull};
use clap::Args;
use indicatif::HumanBytes;
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
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
    /// Into a directory: replace a non-empty directory by the source's file, symlink or
    /// special file, removing what it holds (--delete does too)
    #[arg(long)]
    force: bool,
    /// Into a directory: leave runs of zeros in files as holes; without it files are dense
    #[arg(short = 'S', long)]
    sparse: bool,
    /// With --delete or --force: remove at most N entries (files and directories each
    /// count), then leave the rest, say so and exit 25; 0 removes nothing
    #[arg(long, value_name = "N")]
    max_delete: Option<u64>,
    /// Into a directory: print each entry created, written, linked or deleted
    #[arg(short, long, conflicts_with = "json")]
    verbose: bool,
    /// Into a directory: print every change in rsync's itemized form (YXcstpoguax PATH)
    #[arg(short, long, conflicts_with = "json")]
    itemize_changes: bool,
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
        if super::is_s3(location) {
            return Ok(Endpoint::Repository {
                path: PathBuf::from(location),
                checkpoint,
            });
        }
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
    std::fs::read(path.join(cairn::repo::objects::CONFIG))
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
        force: args.force,
        max_delete: args.max_delete,
        sparse: args.sparse,
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
        let listing = match (args.itemize_changes, args.verbose) {
            (true, _) => Listing::Itemized,
            (false, true) => Listing::Names,
            (false, false) => Listing::Quiet,
        };
        let report = sync(
            global,
            &args,
            source,
            destination,
            &options,
            &progress,
            listing,
        );
        done.store(true, Ordering::Relaxed);
        report
    });
    let report = match report {
        Err(_) if cairn::interrupt::requested() => {
            return Ok(super::interrupted("sync", &progress));
        }
        report => report?,
    };
    super::report_skipped(&report.skipped);
    for error in &report.errors {
        eprintln!("warning: {}: {}", error.path.display(), error.message);
    }
    if args.json {
        print_json(&report)?;
    } else {
        print_report(&report)?;
    }
    if let Some(full) = &report.out_of_space {
        let done = format!(
            "Synced {} files ({} of them already up to date)",
            report.files_written + report.files_unchanged,
            report.files_unchanged
        );
        let target = Path::new(&args.destination);
        return Err(super::out_of_space_error(
            full, target, "sync", "synced", &done, "",
        ));
    }
    if report.deletions_skipped > 0 {
        eprintln!(
            "warning: deletions stopped at the --max-delete limit of {}: {} entries the \
             source lacks were left in place; run again with a higher limit to remove them",
            args.max_delete.unwrap_or_default(),
            report.deletions_skipped
        );
    }
    Ok(if !report.errors.is_empty() {
        ExitCode::from(3)
    } else if report.deletions_skipped > 0 {
        ExitCode::from(25)
    } else {
        ExitCode::SUCCESS
    })
}

/// How the entries a sync into a directory changes are printed.
#[derive(Clone, Copy)]
enum Listing {
    Quiet,
    /// `-v`: names of entries created, written, linked or deleted (`deleting PATH`).
    Names,
    /// `-i`: every change in rsync's itemized form.
    Itemized,
}

impl Listing {
    /// A printer of changes whose paths are below `prefix` in what the user named. A line
    /// that cannot be written (a closed pipe) is dropped; the summary after the sync reports
    /// the failed write.
    fn printer(self, prefix: &Path) -> impl FnMut(&Change) + '_ {
        use std::io::Write as _;
        move |change: &Change| {
            let line = match self {
                Listing::Itemized => change.itemized(prefix),
                Listing::Names if change.update == Update::Deleted => {
                    format!("deleting {}", change.name(prefix))
                }
                Listing::Names if change.is_named_by_verbose() => change.name(prefix),
                Listing::Quiet | Listing::Names => return,
            };
            let _ = writeln!(std::io::stdout().lock(), "{line}");
        }
    }
}

fn sync(
    global: &GlobalArgs,
    args: &SyncArgs,
    source: Endpoint,
    destination: Endpoint,
    options: &SyncOptions,
    progress: &Progress,
    listing: Listing,
) -> Result<SyncReport> {
    // `--limit-rate` caps what is read from the source, whatever it is.
    let receiving = global.receiving_at_most(args.limit_rate);
    let open_source = |path: &Path| receiving.open_at(path, args.from.resolve(global));
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
            let (_, sub) = split_served(&url);
            if !sub.is_empty() {
                bail!(
                    "{url} names a directory inside a served source: a source is pulled into a \
                     repository whole (give its URL without the path after its name)"
                );
            }
            let repo = global.open_target(&path, options.dry_run)?;
            let source = RemoteSource::new(global.remote(&url)?, ChunkSpec::of(&repo), false)?
                .limited(args.limit_rate);
            Ok(pull::run(&repo, &source, options, progress)?)
        }
        (Endpoint::Served(url), Endpoint::Directory(target)) => {
            let (base, sub) = split_served(&url);
            let source = RemoteSource::new(global.remote(base)?, ChunkSpec::plain(), true)?
                .limited(args.limit_rate);
            let root = source.stat(sub.as_bytes())?.filter(|e| e.is_dir());
            if root.is_none() && !sub.is_empty() {
                bail!("{url} is not a directory: a served source syncs directories");
            }
            // Like an rsync daemon's module: the source itself is its contents, a directory
            // in it is that directory unless named with a trailing slash.
            let name = sub
                .rsplit('/')
                .next()
                .filter(|_| !args.source.ends_with('/'));
            let (target, prefix) = match name.filter(|n| !n.is_empty()) {
                Some(name) => (target.join(name), PathBuf::from(name)),
                None => (target, PathBuf::new()),
            };
            Ok(restore::into_dir(
                &source,
                sub.as_bytes().to_vec(),
                root.as_ref(),
                &target,
                options,
                progress,
                &mut listing.printer(&prefix),
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
            pull_directory(global, &dir, &path, args.limit_rate, options, progress)
        }
        (Endpoint::Repository { path, checkpoint }, Endpoint::Repository { path: to, .. }) => {
            let from = open_source(&path)?;
            let to = global.open_target(&to, options.dry_run)?;
            let only = match checkpoint {
                Some(reference) => Some(checkpoint::resolve(&from, &reference)?.id),
                None => None,
            };
            Ok(copy::run(&from, &to, only, options, progress)?)
        }
        (Endpoint::Repository { path, checkpoint }, Endpoint::Directory(target)) => {
            refuse_overlap(&path, &target)?;
            let repo = open_source(&path)?;
            let reference = checkpoint.as_deref().unwrap_or("latest");
            let record = checkpoint::resolve(&repo, reference)?.record;
            let source = CheckpointSource::whole(&repo, &record);
            let root = record.root.as_ref();
            Ok(restore::into_dir(
                &source,
                record.tree,
                root,
                &target,
                options,
                progress,
                &mut listing.printer(Path::new("")),
            )?)
        }
        (Endpoint::Directory(dir), Endpoint::Directory(target)) => {
            let local = LocalSync {
                source: DirectorySource::limited(args.limit_rate),
                options,
                progress,
                listing,
            };
            match source_name(&args.source, &dir) {
                None => local.directory(&dir, &target, Path::new("")),
                Some(name) => {
                    let metadata = std::fs::symlink_metadata(&dir).with_context(|| {
                        format!("{} is not a directory or a repository", dir.display())
                    })?;
                    if metadata.is_dir() {
                        local.directory(&dir, &target.join(&name), Path::new(&name))
                    } else {
                        local.entry(&dir, &name, &args.destination, &target)
                    }
                }
            }
        }
    }
}

/// Directory → repository: a backup of `dir` into the repository at `repo`.
fn pull_directory(
    global: &GlobalArgs,
    dir: &Path,
    repo: &Path,
    read_limit: Option<u64>,
    options: &SyncOptions,
    progress: &Progress,
) -> Result<SyncReport> {
    if !dir.is_dir() {
        bail!("{} is not a directory or a repository", dir.display());
    }
    let mut backup_options = BackupOptions::new(vec![dir.to_owned()]);
    backup_options.read_limit = read_limit;
    let opened = || global.open_target(repo, options.dry_run);
    let outcome = backup::run_opening(opened, &backup_options, progress)?;
    Ok(SyncReport::of_backup(outcome, options.dry_run))
}

/// Refuses a target directory inside `source` (a directory or a local repository) or
/// containing it: the sync would read what it writes, or `--delete` what it reads.
fn refuse_overlap(source: &Path, target: &Path) -> Result<()> {
    if source
        .to_str()
        .is_some_and(|s| super::is_url(s) || super::is_s3(s))
    {
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

/// A served source's URL split into the source's own (`…/source/NAME`) and the path of a
/// directory inside it (empty for the source itself).
fn split_served(url: &str) -> (&str, &str) {
    let Some(at) = url.find("/source/") else {
        return (url, "");
    };
    let after = at + "/source/".len();
    match url[after..].find('/') {
        Some(slash) => (
            &url[..after + slash],
            url[after + slash..].trim_matches('/'),
        ),
        None => (url, ""),
    }
}

/// The name a local source keeps in the destination, by rsync's trailing-slash rule: `None`
/// when its contents are meant (`DIR/`, `DIR/.`, `.`, `..`, `/`), else its last component.
fn source_name(text: &str, path: &Path) -> Option<OsString> {
    let contents = text.ends_with('/') || text.ends_with("/.") || text == ".";
    if contents {
        return None;
    }
    path.file_name().map(ToOwned::to_owned)
}

/// A sync from this machine into a directory.
struct LocalSync<'a> {
    source: DirectorySource,
    options: &'a SyncOptions,
    progress: &'a Progress,
    listing: Listing,
}

impl LocalSync<'_> {
    /// Directory → directory, refusing a target inside the source (or the other way round);
    /// `prefix` is where `target` is in the destination the user named.
    fn directory(&self, dir: &Path, target: &Path, prefix: &Path) -> Result<SyncReport> {
        let source = std::fs::canonicalize(dir)
            .with_context(|| format!("{} is not a directory or a repository", dir.display()))?;
        if !source.is_dir() {
            bail!("{} is not a directory or a repository", dir.display());
        }
        refuse_overlap(&source, target)?;
        let root = cairn::fs::meta::path_entry(&source, Vec::new())
            .with_context(|| format!("reading {}", source.display()))?
            .with_context(|| format!("{} is not a directory", source.display()))?;
        Ok(restore::into_dir(
            &self.source,
            source,
            Some(&root),
            target,
            self.options,
            self.progress,
            &mut self.listing.printer(prefix),
        )?)
    }

    /// A file, symlink or special file `path` (named `name`) → `target`: into it when it is
    /// a directory or named with a trailing slash (`destination`, as given), else as it,
    /// like rsync. Nothing else in the directory is touched, `--delete` or not.
    fn entry(
        &self,
        path: &Path,
        name: &OsString,
        destination: &str,
        target: &Path,
    ) -> Result<SyncReport> {
        let into_target = destination.ends_with('/')
            || std::fs::symlink_metadata(target).is_ok_and(|m| m.is_dir());
        let (dir, target_name) = match (into_target, target.file_name()) {
            (false, Some(target_name)) => (
                target.parent().unwrap_or(Path::new("")).to_owned(),
                target_name.to_owned(),
            ),
            _ => (target.to_owned(), name.clone()),
        };
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
        let source_dir = std::fs::canonicalize(parent.unwrap_or(Path::new(".")))
            .with_context(|| format!("reading {}", path.display()))?;
        let entry = local_one_entry(&source_dir, name)?;
        let source = OneEntry::new(
            &self.source,
            source_dir.clone(),
            entry,
            target_name.as_bytes(),
        )?;
        let resolved = cairn::target::resolve_future_path(&dir.join(&target_name))
            .with_context(|| format!("resolving {}", target.display()))?;
        if resolved == source_dir.join(name) {
            bail!(
                "{} and {} are the same: sync a file to another place",
                path.display(),
                target.display()
            );
        }
        let options = SyncOptions {
            delete: false,
            ..self.options.clone()
        };
        Ok(restore::into_dir(
            &source,
            (),
            None,
            &dir,
            &options,
            self.progress,
            &mut self.listing.printer(Path::new("")),
        )?)
    }
}

fn print_report(report: &SyncReport) -> Result<()> {
    let would = if report.dry_run { "would be " } else { "" };
    if report.checkpoints_copied + report.blobs_copied + report.blobs_skipped > 0 {
        outln!(
            "{} checkpoints {would}copied; {} blobs {would}copied, {} already there",
            report.checkpoints_copied,
            report.blobs_copied,
            report.blobs_skipped
        );
    }
    if report.files_written + report.files_unchanged + report.entries_deleted > 0 {
        outln!(
            "{} files {would}written, {} unchanged, {} entries {would}deleted; {} reused from the target",
            report.files_written,
            report.files_unchanged,
            report.entries_deleted,
            HumanBytes(report.bytes_reused)
        );
    }
    outln!(
        "{} {would}transferred",
        HumanBytes(report.bytes_transferred)
    );
    Ok(())
}
