//! `cairn repair index|packs|checkpoints`: rebuild the index from the packs; rewrite damaged
//! packs without their unreadable blobs; rewrite damaged checkpoints without what cannot be
//! read.

use super::{GlobalArgs, print_json};
use anyhow::Result;
use cairn::repair::{self, CheckpointRepairReport, IndexRepairReport, PackRepairReport};
use clap::{Args, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct RepairArgs {
    #[command(subcommand)]
    command: RepairCommand,
}

#[derive(Debug, Subcommand)]
enum RepairCommand {
    /// Rebuild the index files from the pack headers (after index files were lost or damaged)
    Index(RepairFlags),
    /// Read every pack; copy the readable blobs of damaged packs into new ones and drop the
    /// unreadable ones (and those of missing packs) from the index, so the next backup
    /// stores that content again
    Packs(RepairFlags),
    /// Rewrite checkpoints that reference missing or unreadable data, dropping what is lost
    Checkpoints(RepairFlags),
}

#[derive(Debug, Args)]
struct RepairFlags {
    /// Read and report what would change; write nothing
    #[arg(long)]
    dry_run: bool,
    /// Print one JSON object instead of text
    #[arg(long)]
    json: bool,
}

pub fn run(global: &GlobalArgs, args: RepairArgs) -> Result<ExitCode> {
    let flags = match &args.command {
        RepairCommand::Index(flags) | RepairCommand::Packs(flags) => flags,
        RepairCommand::Checkpoints(flags) => flags,
    };
    let repo = global.open_for(flags.dry_run)?;
    match args.command {
        RepairCommand::Index(flags) => {
            let report = repair::index(&repo)?;
            if flags.json {
                print_json(&report)?;
            } else {
                print_index_report(&report)?;
            }
        }
        RepairCommand::Packs(flags) => {
            let report = repair::packs(&repo)?;
            if flags.json {
                print_json(&report)?;
            } else {
                print_packs_report(&report)?;
            }
        }
        RepairCommand::Checkpoints(flags) => {
            let report = repair::checkpoints(&repo)?;
            if flags.json {
                print_json(&report)?;
            } else {
                print_checkpoints_report(&report)?;
            }
            if !report.unreadable_checkpoints.is_empty() {
                errln!(
                    "{} checkpoint records cannot be read and were left as they are",
                    report.unreadable_checkpoints.len()
                );
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_index_report(report: &IndexRepairReport) -> Result<()> {
    let would = if report.dry_run { "would be " } else { "" };
    for pack in &report.unreadable_packs {
        outln!("unreadable pack {}: {}", pack.name, pack.reason);
    }
    outln!(
        "{} read, {} unreadable; {} indexed",
        super::counted(report.packs_read, "pack"),
        report.unreadable_packs.len(),
        super::counted(report.blobs_indexed, "blob")
    );
    outln!(
        "index files: {} {would}written, {} {would}deleted",
        report.index_files_written,
        report.index_files_deleted
    );
    if !report.unreadable_packs.is_empty() {
        errln!(
            "unreadable packs are left out of the index (a later prune deletes them; move them \
             out of the repository to keep them); `cairn repair checkpoints` drops what needed them"
        );
    }
    Ok(())
}

fn print_packs_report(report: &PackRepairReport) -> Result<()> {
    let would = if report.dry_run { "would be " } else { "" };
    for pack in &report.damaged_packs {
        outln!(
            "pack {} ({}): {} {would}kept, {} {would}dropped",
            pack.name,
            pack.reason,
            super::counted(pack.blobs_kept, "blob"),
            pack.blobs_dropped
        );
    }
    outln!(
        "{} read, {} damaged or missing; {} {would}kept, {} {would}dropped from the index",
        super::counted(report.packs_read, "pack"),
        report.damaged_packs.len(),
        super::counted(report.blobs_kept, "blob"),
        report.blobs_dropped
    );
    if report.blobs_dropped > 0 {
        errln!(
            "next: back up the affected paths again (`cairn check` names them) to store the dropped \
             content anew, which heals every checkpoint that needs it; if the sources no longer \
             hold it, `cairn repair checkpoints` drops what cannot be read"
        );
    }
    Ok(())
}

fn print_checkpoints_report(report: &CheckpointRepairReport) -> Result<()> {
    for problem in &report.unreadable_checkpoints {
        outln!("unreadable checkpoint {problem}");
    }
    for repaired in &report.repaired {
        match repaired.new_id {
            Some(new_id) => outln!(
                "checkpoint {} repaired as {}:",
                repaired.old_id.short(),
                new_id.short()
            ),
            None => outln!("checkpoint {} would be repaired:", repaired.old_id.short()),
        }
        for path in &repaired.dropped {
            outln!("  dropped {path}");
        }
    }
    let would = if report.dry_run { "would be " } else { "" };
    outln!(
        "{} checked, {} {would}repaired",
        super::counted(report.checkpoints_checked, "checkpoint"),
        report.repaired.len()
    );
    Ok(())
}
