//! `cairn stats`: the repository's sizes — what its checkpoints hold, the distinct data it
//! keeps before and after compression, what the store holds — and with `--json` every
//! checkpoint's own.

use super::{GlobalArgs, counted, print_json};
use anyhow::Result;
use clap::Args;
use indicatif::HumanBytes;
use serde_json::json;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Print one JSON object, with every checkpoint's sizes, instead of text
    #[arg(long)]
    json: bool,
}

pub fn run(global: &GlobalArgs, args: StatsArgs) -> Result<ExitCode> {
    let repo = global.open()?;
    let (stats, checkpoints) = cairn::stats::run(&repo)?;
    if args.json {
        print_json(&json!({
            "repository": stats,
            "deduplication": stats.deduplication(),
            "compression": stats.compression(),
            "checkpoints": checkpoints.iter().map(|c| json!({
                "id": c.id.to_hex(),
                "short_id": c.id.short(),
                "time": c.record.time,
                "host": c.record.host,
                "paths": c.record.paths,
                "files": c.record.stats.files,
                "dirs": c.record.stats.dirs,
                "bytes": c.record.stats.bytes,
                "added_bytes": c.record.stats.added_bytes,
            })).collect::<Vec<_>>(),
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "{}, {} as restored",
        counted(stats.checkpoints, "checkpoint"),
        HumanBytes(stats.restore_bytes)
    );
    outln!(
        "distinct data: {} in {} ({:.2}x deduplication)",
        HumanBytes(stats.raw_bytes),
        counted(stats.blobs, "blob"),
        stats.deduplication()
    );
    outln!(
        "stored: {} after compression and encryption ({:.2}x), {} in {}",
        HumanBytes(stats.stored_bytes),
        stats.compression(),
        HumanBytes(stats.pack_bytes),
        counted(stats.packs, "pack")
    );
    Ok(ExitCode::SUCCESS)
}
