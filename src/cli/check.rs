//! `cairn check`: exit 0 when the repository is sound, 1 with a summary of what is damaged
//! (grouped by pack, capped, every affected checkpoint named) and the commands to run next.

use super::{GlobalArgs, print_json};
use anyhow::Result;
use cairn::check::{self, CheckOptions, CheckReport, DamagedBlob};
use cairn::id::PackId;
use clap::Args;
use serde_json::json;
use std::collections::BTreeMap;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Read, decrypt and verify every blob
    #[arg(long)]
    read_data: bool,
    /// Print one JSON object instead of text
    #[arg(long)]
    json: bool,
}

pub fn run(global: &GlobalArgs, args: CheckArgs) -> Result<ExitCode> {
    let repo = global.open()?;
    let report = check::run(
        &repo,
        &CheckOptions {
            read_data: args.read_data,
            ..Default::default()
        },
    )?;
    if args.json {
        print_json(&json!({
            "sound": report.is_sound(),
            "checkpoints": report.checkpoints,
            "trees": report.trees,
            "packs": report.packs,
            "blobs_read": report.blobs_read,
            "mismatched_packs": report.mismatched_packs,
            "unlisted_packs": report.unlisted_packs,
            "problems": report.problems,
            "affected_checkpoints": report.affected_checkpoints.iter().map(|c| json!({
                "id": c.id.to_hex(), "short_id": c.id.short(), "paths": c.paths,
            })).collect::<Vec<_>>(),
            "damaged": report.damaged.iter().map(|d| json!({
                "blob": d.blob, "pack": d.pack, "reason": d.reason,
                "paths": d.paths, "affected_paths": d.affected_paths,
            })).collect::<Vec<_>>(),
        }))?;
    } else {
        print_summary(&report)?;
        errln!(
            "checked {}, {}, {}{}",
            super::counted(report.checkpoints, "checkpoint"),
            super::counted(report.trees, "tree"),
            super::counted(report.packs, "pack"),
            if args.read_data {
                format!(", read {} blobs", report.blobs_read)
            } else {
                String::new()
            }
        );
        if report.unlisted_packs > 0 {
            errln!(
                "{} no index file lists not read (left by a stopped run: the next backup takes \
                 them back if whole, `cairn prune` deletes the rest)",
                super::counted(report.unlisted_packs, "pack")
            );
        }
    }
    if report.is_sound() {
        errln!("no problems found");
        Ok(ExitCode::SUCCESS)
    } else {
        errln!(
            "the repository is damaged: {}, {} damaged, {} affected",
            super::counted(report.problems.len(), "problem"),
            super::counted(report.damaged.len(), "blob"),
            super::counted(report.affected_checkpoints.len(), "checkpoint")
        );
        print_next_steps(&report);
        Ok(ExitCode::FAILURE)
    }
}

/// Prints what is damaged, summarised: problems and damaged blobs grouped by pack are capped
/// at `LISTED` lines each with "and N more", every affected checkpoint is named, and the
/// paths they lose are capped too. `--json` gives the whole list.
fn print_summary(report: &CheckReport) -> Result<()> {
    print_capped("", "problems", &report.problems, |problem| {
        format!("problem: {problem}")
    })?;
    let mut by_pack: BTreeMap<Option<PackId>, Vec<&DamagedBlob>> = BTreeMap::new();
    for damaged in &report.damaged {
        by_pack.entry(damaged.pack).or_default().push(damaged);
    }
    for (pack, blobs) in &by_pack {
        let pack = pack.map_or("no pack".to_owned(), |p| format!("pack {p}"));
        let reason = &blobs[0].reason;
        outln!("damaged: {} blobs in {pack}: {reason}", blobs.len());
        print_capped("  ", "blobs", blobs, |d| match &d.reason {
            same if same == reason => format!("blob {}", d.blob),
            other => format!("blob {}: {other}", d.blob),
        })?;
    }
    if report.affected_checkpoints.is_empty() {
        if !report.damaged.is_empty() {
            outln!("no checkpoint needs the damaged blobs");
        }
        return Ok(());
    }
    let ids: Vec<String> = report
        .affected_checkpoints
        .iter()
        .map(|c| c.id.short())
        .collect();
    outln!("affected checkpoints ({}): {}", ids.len(), ids.join(" "));
    let paths: Vec<&String> = report.damaged.iter().flat_map(|d| &d.paths).collect();
    let affected_paths: u64 = report.damaged.iter().map(|d| d.affected_paths).sum();
    for path in paths.iter().take(LISTED) {
        outln!("  affects {path}");
    }
    let listed = paths.len().min(LISTED) as u64;
    if affected_paths > listed {
        outln!("  and {} more paths", affected_paths - listed);
    }
    Ok(())
}

/// Lines of each kind listed before the rest is counted.
const LISTED: usize = 10;

/// Prints the first `LISTED` of `items`, indented, then how many more `noun` there are.
fn print_capped<T>(
    indent: &str,
    noun: &str,
    items: &[T],
    show: impl Fn(&T) -> String,
) -> Result<()> {
    for item in items.iter().take(LISTED) {
        outln!("{indent}{}", show(item));
    }
    if items.len() > LISTED {
        outln!("{indent}and {} more {noun}", items.len() - LISTED);
    }
    Ok(())
}

/// Ends a failed check with the commands to run next.
fn print_next_steps(report: &CheckReport) {
    errln!("next:");
    if report.mismatched_packs > 0 || report.damaged.iter().any(|d| d.pack.is_some()) {
        errln!(
            "  cairn repair packs      drops the damaged blobs from the index and keeps every readable one"
        );
    }
    if !report.affected_checkpoints.is_empty() {
        let mut paths: Vec<&str> = report
            .affected_checkpoints
            .iter()
            .flat_map(|c| c.paths.iter().map(String::as_str))
            .collect();
        paths.sort_unstable();
        paths.dedup();
        errln!(
            "  cairn backup {}   back up the affected paths again: a backup stores the content the index lacks, which heals every checkpoint that needs it",
            paths.join(" ")
        );
        errln!(
            "  cairn repair checkpoints   if the sources no longer hold that content, drops what cannot be read from the affected checkpoints"
        );
    }
    if report.damaged.is_empty() && report.mismatched_packs == 0 {
        errln!(
            "  cairn repair index      rebuilds the index files from the packs when index files are damaged"
        );
    }
}
