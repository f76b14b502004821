//! `cairn restore`: a checkpoint, or a path in it, into a directory.

use super::{GlobalArgs, print_json, show_progress, split_reference};
use anyhow::{Result, bail};
use cairn::progress::Progress;
use cairn::restore::{self, RestoreOptions};
use clap::Args;
use indicatif::HumanBytes;
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// CKPT[:PATH] — a checkpoint reference and optionally a path in it
    reference: String,
    /// The directory to restore into (created if missing; must be empty unless --overwrite)
    #[arg(long)]
    target: PathBuf,
    /// Restore into a non-empty directory, replacing what is in the way
    #[arg(long)]
    overwrite: bool,
    /// Leave runs of zeros in files as holes (sparse files); without it files are written dense
    #[arg(long)]
    sparse: bool,
    /// Restore only what matches this pattern, with the directories leading to it
    /// (repeatable): `*.pdf` a name anywhere, `/home/me/docs` or `src/*.c` a path in the
    /// checkpoint, as `cairn find` shows it; a matching directory comes back whole
    #[arg(long = "include", value_name = "PATTERN")]
    includes: Vec<String>,
    /// Leave out what matches this pattern, and everything below it (repeatable; same forms
    /// as --include)
    #[arg(long = "exclude", value_name = "PATTERN")]
    excludes: Vec<String>,
    /// Print one JSON object instead of text
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    filters: super::FilterArgs,
}

pub fn run(global: &GlobalArgs, args: RestoreArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let repo = global.open()?;
    let (reference, path) = split_reference(&args.reference);
    let record = super::resolve_checkpoint(&repo, reference, &args.filters)?.record;
    let options = RestoreOptions {
        overwrite: args.overwrite,
        sparse: args.sparse,
        includes: args.includes,
        excludes: args.excludes,
        ..RestoreOptions::default()
    };
    let progress = Progress::default();
    let done = AtomicBool::new(false);
    let report = std::thread::scope(|scope| {
        if show_progress(global, args.json) {
            scope.spawn(|| super::draw_progress("restore", &progress, &done));
        }
        let report = restore::run(&repo, &record, path, &args.target, &options, &progress);
        done.store(true, Ordering::Relaxed);
        report
    })?;
    let files = report.files_written + report.files_unchanged;
    let bytes = progress.bytes_done.load(Ordering::Relaxed);
    let skipped = super::report_skipped(&report.skipped);
    for error in &report.errors {
        errln!("error: {}: {}", error.path.display(), error.message);
    }
    if args.json {
        print_json(&json!({
            "files": files,
            "dirs": report.dirs,
            "bytes": bytes,
            "skipped": skipped,
            // A count, as in backup's and list's; the files and why under `failed`.
            "errors": report.errors.len(),
            "failed": report.errors,
            "out_of_space": report.out_of_space,
        }))?;
    } else {
        errln!(
            "restored {}, {}, {} into {} in {:.1}s",
            super::counted(files, "file"),
            super::counted(report.dirs, "dir"),
            HumanBytes(bytes),
            args.target.display(),
            started.elapsed().as_secs_f64()
        );
    }
    if let Some(full) = &report.out_of_space {
        let total = progress.total_bytes.load(Ordering::Relaxed);
        let done = format!(
            "Restored {}, {}, {} of {}",
            super::counted(files, "file"),
            super::counted(report.dirs, "dir"),
            HumanBytes(bytes),
            HumanBytes(total)
        );
        let again = " with --overwrite";
        let error =
            super::out_of_space_error(full, &args.target, "restore", "restored", &done, again);
        return Err(error);
    }
    if !report.errors.is_empty() {
        bail!(
            "{} could not be restored (listed above): not written",
            super::counted(report.errors.len(), "file")
        );
    }
    Ok(ExitCode::SUCCESS)
}
