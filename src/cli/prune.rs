//! `cairn prune`: deletes the packs no checkpoint needs and repacks partly used ones.

use super::{GlobalArgs, print_json};
use anyhow::Result;
use cairn::prune::{self, PruneOptions, PruneReport};
use clap::Args;
use indicatif::HumanBytes;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Unused space tolerated in partly used packs, in percent of the used space; packs
    /// beyond it are repacked
    #[arg(long, value_name = "PERCENT", default_value_t = 5.0)]
    max_unused: f64,
    /// Show what would be deleted and repacked; change nothing
    #[arg(long)]
    dry_run: bool,
    /// Print one JSON object instead of text
    #[arg(long)]
    json: bool,
}

pub fn run(global: &GlobalArgs, args: PruneArgs) -> Result<ExitCode> {
    let repo = global.open_for(args.dry_run)?;
    let options = PruneOptions {
        max_unused_percent: args.max_unused.max(0.0),
    };
    let report = prune::run(&repo, &options)?;
    if args.json {
        print_json(&report)?;
    } else {
        print_report(&report)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints what a prune did, or would do.
pub(super) fn print_report(report: &PruneReport) -> Result<()> {
    let would = if report.dry_run { "would be " } else { "" };
    outln!(
        "{} in use ({}); {} {would}deleted, {} {would}repacked ({}, {})",
        super::counted(report.used_blobs, "blob"),
        HumanBytes(report.used_bytes),
        super::counted(report.packs_deleted, "pack"),
        report.packs_repacked,
        super::counted(report.blobs_repacked, "blob"),
        HumanBytes(report.bytes_repacked),
    );
    outln!(
        "repository: {} → {} ({} unused left in kept packs)",
        HumanBytes(report.bytes_before),
        HumanBytes(report.bytes_after),
        HumanBytes(report.unused_bytes_kept),
    );
    Ok(())
}
