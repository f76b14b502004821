//! `cairn pipeline-speed`: the in-memory floor for `scripts/bench.sh` — how fast chunking,
//! hashing, compressing and sealing run on the given files with no I/O.

use super::print_json;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct PipelineSpeedArgs {
    /// Files or directories whose bytes to run through the pipeline
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Worker threads (default: one per core)
    #[arg(long)]
    threads: Option<usize>,
    /// zstd level
    #[arg(long, default_value_t = 3)]
    level: i32,
    /// Print one JSON object instead of text
    #[arg(long)]
    json: bool,
}

pub fn run(args: PipelineSpeedArgs) -> Result<ExitCode> {
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let speed = cairn::speed::measure(&args.paths, threads, args.level)?;
    if args.json {
        print_json(&serde_json::json!({
            "files": speed.files,
            "bytes": speed.bytes,
            "chunks": speed.chunks,
            "threads": speed.threads,
            "seconds": speed.seconds,
            "mib_per_second": speed.mib_per_second(),
        }))?;
    } else {
        outln!(
            "{}, {} bytes, {} through chunk+hash+compress+seal on {} threads in {:.2} s: {:.0} MiB/s",
            super::counted(speed.files, "file"),
            speed.bytes,
            super::counted(speed.chunks, "chunk"),
            speed.threads,
            speed.seconds,
            speed.mib_per_second()
        );
    }
    Ok(ExitCode::SUCCESS)
}
