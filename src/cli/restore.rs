//! `cairn restore`: a checkpoint, or a path in it, into a directory.

use super::{GlobalArgs, print_json, show_progress, split_reference};
use anyhow::{Result, bail};
use cairn::restore::{self, RestoreOptions, RestoreProgress};
use cairn::tree::find_entry;
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
    /// Print one JSON object instead of text
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    filters: super::FilterArgs,
}

fn draw_progress(progress: &RestoreProgress, total_bytes: u64, done: &AtomicBool) {
    super::draw_bytes_progress("restore", done, |bar| {
        bar.set_length(total_bytes);
        bar.set_position(progress.bytes_done.load(Ordering::Relaxed));
        bar.set_message(format!(
            "{} files",
            progress.files_done.load(Ordering::Relaxed)
        ));
    });
}

pub fn run(global: &GlobalArgs, args: RestoreArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let repo = global.open()?;
    let (reference, path) = split_reference(&args.reference);
    let (_, record) = super::resolve_checkpoint(&repo, reference, &args.filters)?;
    let node = find_entry(&repo, record.root_entry(), path)?;
    let options = RestoreOptions {
        overwrite: args.overwrite,
        sparse: args.sparse,
        ..RestoreOptions::default()
    };
    let progress = RestoreProgress::default();
    let done = AtomicBool::new(false);
    let total = if path.trim_matches('/').is_empty() {
        record.stats.bytes
    } else {
        node.size
    };
    let mut stats = std::thread::scope(|scope| {
        if show_progress(args.json) {
            scope.spawn(|| draw_progress(&progress, total, &done));
        }
        let stats = restore::run(&repo, &node, &args.target, &options, &progress);
        done.store(true, Ordering::Relaxed);
        stats
    })?;
    if let Some(full) = &mut stats.out_of_space {
        full.set_missing(total.saturating_sub(stats.bytes));
    }
    for skipped in &stats.skipped {
        eprintln!("skipped: {skipped}");
    }
    for error in &stats.errors {
        eprintln!("error: {}: {}", error.path.display(), error.message);
    }
    if args.json {
        print_json(&json!({
            "files": stats.files,
            "dirs": stats.dirs,
            "bytes": stats.bytes,
            "skipped": stats.skipped,
            "errors": stats.errors.iter().map(|e| json!({"path": e.path, "message": e.message})).collect::<Vec<_>>(),
            "out_of_space": stats.out_of_space,
        }))?;
    } else {
        eprintln!(
            "restored {} files, {} dirs, {} into {} in {:.1}s",
            stats.files,
            stats.dirs,
            HumanBytes(stats.bytes),
            args.target.display(),
            started.elapsed().as_secs_f64()
        );
    }
    if let Some(full) = &stats.out_of_space {
        let done = format!(
            "Restored {} files, {} dirs, {} of {}",
            stats.files,
            stats.dirs,
            HumanBytes(stats.bytes),
            HumanBytes(total)
        );
        let again = " with --overwrite";
        let error =
            super::out_of_space_error(full, &args.target, "restore", "restored", &done, again);
        return Err(error);
    }
    if !stats.errors.is_empty() {
        bail!(
            "{} files could not be restored (listed above); they were not written",
            stats.errors.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}
