//! `cairn sync SRC DST`: moves data between directories and repositories, copying only what
//! the destination lacks. Each side is a directory or a repository (`REPO::CKPT` names one
//! checkpoint), local or served (`https://host:port/repo`); a source may also be a directory
//! served by `cairn serve --source` (`https://host:port/source/NAME[/SUB]`). Which engine a
//! pair goes to, and rsync's trailing-slash rule, are the library's (`sync::endpoint`); this
//! file gives it the command line's secrets (`CliOpener`: the destination repository opens
//! with the main secret, a source repository with the `--from-*` ones when given), prints
//! the changes and the report, and maps the outcome to an exit code: 3 when the sync finished
//! but some paths failed, 25 (rsync's code) when `--max-delete` left entries undeleted, 1
//! when a full target filesystem stopped a sync into a directory (one message says what is
//! missing).

use super::{FromCredentials, GlobalArgs, print_json, show_progress};
use anyhow::Result;
use cairn::Repository;
use cairn::backup::Progress;
use cairn::net::client::Remote;
use cairn::restore::itemize::{Change, Update};
use cairn::sync::endpoint::{Endpoint, Opener, Transfer};
use cairn::sync::{SyncOptions, SyncReport};
use clap::Args;
use indicatif::HumanBytes;
use std::path::Path;
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
    if !args.dry_run && destination.is_repository() {
        cairn::interrupt::install()?;
    }
    let progress = Progress::default();
    let done = AtomicBool::new(false);
    let report = std::thread::scope(|scope| {
        if show_progress(global, args.json) {
            scope.spawn(|| super::draw_progress("sync", &progress, &done));
        }
        let listing = match (args.itemize_changes, global.verbose > 0 && !args.json) {
            (true, _) => Listing::Itemized,
            (false, true) => Listing::Names,
            (false, false) => Listing::Quiet,
        };
        let opener = CliOpener {
            global,
            from: &args.from,
        };
        let report = Transfer {
            opener: &opener,
            options: &options,
            rate_limit: args.limit_rate,
            progress: &progress,
            changes: &mut listing.printer(),
        }
        .run(source, destination);
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
        errln!("warning: {}: {}", error.path.display(), error.message);
    }
    if args.json {
        // `errors` a count, as in backup's and list's; the paths and why under `failed`.
        let mut shown = serde_json::to_value(&report).expect("reports serialize");
        shown["failed"] = shown["errors"].take();
        shown["errors"] = report.errors.len().into();
        print_json(&shown)?;
    } else {
        print_report(&report)?;
    }
    if let Some(full) = &report.out_of_space {
        let done = format!(
            "Synced {} ({} of them already up to date)",
            super::counted(report.files_written + report.files_unchanged, "file"),
            report.files_unchanged
        );
        let target = Path::new(&args.destination);
        return Err(super::out_of_space_error(
            full, target, "sync", "synced", &done, "",
        ));
    }
    if report.deletions_skipped > 0 {
        errln!(
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
    /// A printer of changes, each with where its directory is in what the user named. A
    /// line that cannot be written (a closed pipe) is dropped; the summary after the sync
    /// reports the failed write.
    fn printer(self) -> impl FnMut(&Path, &Change) {
        use std::io::Write as _;
        move |prefix: &Path, change: &Change| {
            let line = match self {
                Listing::Itemized => change.itemized(prefix),
                Listing::Names if change.update == Update::Deleted => {
                    format!("deleting {}", change.name(prefix))
                }
                Listing::Names if change.is_named_by_verbose() => change.name(prefix),
                Listing::Quiet | Listing::Names => return,
            };
            let _ = writeln!(std::io::stdout().lock(), "{}", super::printable(&line));
        }
    }
}

/// How the command line reaches a sync's sides: the destination repository with the main
/// secret, a source repository with the `--from-*` ones, servers with the token and TLS
/// settings given.
struct CliOpener<'a> {
    global: &'a GlobalArgs,
    from: &'a FromCredentials,
}

impl Opener for CliOpener<'_> {
    fn source_repository(
        &self,
        location: &Path,
        receiving: Option<u64>,
    ) -> cairn::Result<Repository> {
        let global = self.global.receiving_at_most(receiving);
        global
            .open_at(location, self.from.resolve(self.global))
            .map_err(library_error)
    }

    fn target_repository(&self, location: &Path, dry_run: bool) -> cairn::Result<Repository> {
        self.global
            .open_target(location, dry_run)
            .map_err(library_error)
    }

    fn remote(&self, url: &str) -> cairn::Result<Remote> {
        self.global.remote(url).map_err(library_error)
    }
}

/// A command-line failure (a password that cannot be read, say) as the library reports it.
fn library_error(error: anyhow::Error) -> cairn::Error {
    match error.downcast::<cairn::Error>() {
        Ok(error) => error,
        Err(error) => cairn::Error::InvalidInput(format!("{error:#}")),
    }
}

fn print_report(report: &SyncReport) -> Result<()> {
    let would = if report.dry_run { "would be " } else { "" };
    if report.checkpoints_copied + report.blobs_copied + report.blobs_skipped > 0 {
        outln!(
            "{} {would}copied; {} {would}copied, {} already there",
            super::counted(report.checkpoints_copied, "checkpoint"),
            super::counted(report.blobs_copied, "blob"),
            report.blobs_skipped
        );
    }
    if report.files_written + report.files_unchanged + report.entries_deleted > 0 {
        let deleted = match report.entries_deleted {
            1 => "1 entry".to_owned(),
            count => format!("{count} entries"),
        };
        outln!(
            "{} {would}written, {} unchanged, {deleted} {would}deleted; {} reused from the target",
            super::counted(report.files_written, "file"),
            report.files_unchanged,
            HumanBytes(report.bytes_reused)
        );
    }
    outln!(
        "{} {would}transferred",
        HumanBytes(report.bytes_transferred)
    );
    Ok(())
}
