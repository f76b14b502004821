//! `cairn check`: exit 0 when the repository is sound, 1 with a list of what is damaged.

use super::{GlobalArgs, print_json};
use anyhow::Result;
use cairn::check::{self, CheckOptions};
use clap::Args;
use serde_json::json;
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
        },
    )?;
    if args.json {
        print_json(&json!({
            "sound": report.is_sound(),
            "checkpoints": report.checkpoints,
            "trees": report.trees,
            "packs": report.packs,
            "blobs_read": report.blobs_read,
            "problems": report.problems,
            "damaged": report.damaged.iter().map(|d| json!({
                "blob": d.blob, "pack": d.pack, "reason": d.reason,
                "paths": d.paths, "affected_paths": d.affected_paths,
            })).collect::<Vec<_>>(),
        }))?;
    } else {
        for problem in &report.problems {
            outln!("problem: {problem}");
        }
        for damaged in &report.damaged {
            let pack = damaged
                .pack
                .map_or("no pack".to_owned(), |p| format!("pack {p}"));
            outln!(
                "damaged: blob {} in {pack}: {}",
                damaged.blob,
                damaged.reason
            );
            if damaged.affected_paths == 0 {
                outln!("  not used by any readable tree");
            }
            for path in &damaged.paths {
                outln!("  affects {path}");
            }
            if damaged.affected_paths > damaged.paths.len() as u64 {
                outln!(
                    "  and {} more paths",
                    damaged.affected_paths - damaged.paths.len() as u64
                );
            }
        }
        eprintln!(
            "checked {} checkpoints, {} trees, {} packs{}",
            report.checkpoints,
            report.trees,
            report.packs,
            if args.read_data {
                format!(", read {} blobs", report.blobs_read)
            } else {
                String::new()
            }
        );
    }
    if report.is_sound() {
        eprintln!("no problems found");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "the repository is damaged: {} problems, {} damaged blobs",
            report.problems.len(),
            report.damaged.len()
        );
        Ok(ExitCode::FAILURE)
    }
}
