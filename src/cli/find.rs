//! `cairn find`: which checkpoints hold entries matching name or path patterns, read from the
//! trees alone (see `cairn::find`). Each version of a match is one line, with the checkpoints
//! that hold it.

use super::GlobalArgs;
use anyhow::{Context, Result};
use cairn::checkpoint;
use cairn::find::{FindOptions, find};
use cairn::pattern::Patterns;
use cairn::timestamp;
use cairn::tree::load_tree;
use clap::Args;
use indicatif::HumanBytes;
use serde_json::json;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Debug, Args)]
pub struct FindArgs {
    /// What to look for: `*.rs` a name anywhere, `/src/main.rs` or `src/*.c` a path below
    /// the checkpoint's root, `build/` directories only (any of the patterns)
    #[arg(required = true, value_name = "PATTERN")]
    patterns: Vec<String>,
    /// Match names and paths ignoring case
    #[arg(short = 'i', long)]
    ignore_case: bool,
    /// Only entries modified at or after this time: a date (`2026-11-01`, UTC), a date and
    /// time, or an age (`7d`, `12h`)
    #[arg(long, value_name = "TIME", value_parser = point_in_time)]
    newest: Option<i128>,
    /// Only entries modified at or before this time (same forms as --newest)
    #[arg(long, value_name = "TIME", value_parser = point_in_time)]
    oldest: Option<i128>,
    /// Search only this checkpoint (id, prefix or `latest`; repeatable)
    #[arg(short = 'c', long = "checkpoint", value_name = "CKPT")]
    checkpoints: Vec<String>,
    /// Print a JSON array instead of text
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    filters: super::FilterArgs,
}

/// The checkpoints named on a match's line; `--json` names them all.
const IDS_SHOWN: usize = 4;

/// A time in nanoseconds since the epoch from a UTC date, date and time, or an age.
fn point_in_time(text: &str) -> std::result::Result<i128, String> {
    let time = match humantime::parse_duration(text) {
        Ok(age) => std::time::SystemTime::now()
            .checked_sub(age)
            .ok_or_else(|| format!("{text} ago is before the epoch"))?,
        Err(_) => {
            let full = match text.len() {
                10 => format!("{text} 00:00:00"),
                16 => format!("{text}:00"),
                _ => text.trim_end_matches('Z').to_owned(),
            };
            humantime::parse_rfc3339_weak(&full).map_err(|_| {
                format!(
                    "{text:?} is not a time: give a date (2026-11-01), a date and time (2026-11-01 14:30) or an age (7d, 12h)"
                )
            })?
        }
    };
    Ok(timestamp::from_system_time(time))
}

pub fn run(global: &GlobalArgs, args: FindArgs) -> Result<ExitCode> {
    let (repo, _lock) = global.open_to_read("find")?;
    let patterns = Patterns::new(&args.patterns, "find", args.ignore_case)?;
    let filter = args.filters.filter()?;
    let mut catalogue = checkpoint::list_shared(&repo)?;
    catalogue.retain(|summary| filter.matches_label(&summary.label));
    if !args.checkpoints.is_empty() {
        let mut named = Vec::new();
        for reference in &args.checkpoints {
            let id = super::resolve_checkpoint(&repo, reference, &args.filters)?.id;
            named.push(id);
        }
        catalogue.retain(|summary| named.contains(&summary.id));
    }
    let records = repo
        .catalogue()
        .records(&repo, &catalogue)
        .context("reading the checkpoints to search")?;
    let roots: Vec<_> = records.iter().map(|record| record.tree).collect();
    let cache = quick_cache::sync::Cache::new(4096);
    let load = |id: &cairn::id::TreeId| {
        cache.get_or_insert_with(id, || load_tree(&repo, id).map(Arc::new))
    };
    let options = FindOptions {
        patterns: &patterns,
        modified_since: args.newest,
        modified_until: args.oldest,
    };
    // Matches are written as they are found (a JSON array row by row), so memory does not
    // grow with the output.
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let writing = |e| cairn::error::Error::io("writing the matches", e);
    if args.json {
        out.write_all(b"[").map_err(writing)?;
    }
    let mut rows_written = 0u64;
    let stats = find(&load, &roots, &options, |found| {
        let path = String::from_utf8_lossy(&found.path).into_owned();
        let shown = super::printable(&path);
        let entry = &found.entry;
        if args.json {
            let ids: Vec<String> = found
                .checkpoints
                .iter()
                .map(|&i| catalogue[i].id.to_hex())
                .collect();
            let row = json!({
                "path": path,
                "type": super::ls::type_name(entry),
                "mode": entry.mode,
                "size": entry.size,
                "mtime": timestamp::rfc3339_nanos(entry.mtime_ns),
                "first": catalogue[found.checkpoints[0]].time,
                "last": catalogue[*found.checkpoints.last().expect("a match is in a checkpoint")].time,
                "checkpoints": ids,
            });
            let separator: &[u8] = if rows_written > 0 { b",\n" } else { b"\n" };
            rows_written += 1;
            return out
                .write_all(separator)
                .and_then(|()| serde_json::to_writer(&mut out, &row).map_err(std::io::Error::from))
                .map_err(writing);
        }
        let ids = super::short_ids(&catalogue, &found.checkpoints, IDS_SHOWN);
        writeln!(
            out,
            "{} {:>10}  {}  {shown}{}  in {ids}",
            entry.type_char(),
            if entry.is_file() {
                HumanBytes(entry.size).to_string()
            } else {
                String::new()
            },
            timestamp::date_time(entry.mtime_ns),
            if entry.is_dir() { "/" } else { "" },
        )
        .map_err(writing)
    })?;
    if args.json {
        out.write_all(b"\n]\n").map_err(writing)?;
    }
    out.flush().map_err(writing)?;
    if stats.found == 0 {
        errln!(
            "nothing matched in {}",
            super::counted(catalogue.len(), "checkpoint")
        );
    }
    Ok(ExitCode::SUCCESS)
}
