//! `cairn history`: every distinct version of a path across all checkpoints, oldest first.

use super::{GlobalArgs, print_json};
use anyhow::Result;
use cairn::checkpoint;
use cairn::history::{components, versions};
use cairn::timestamp;
use cairn::tree::load_tree;
use clap::Args;
use indicatif::HumanBytes;
use serde_json::json;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// A path inside the backed-up tree, e.g. `src/main.rs`
    path: String,
    /// Print a JSON array instead of text
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    filters: super::FilterArgs,
}

pub fn run(global: &GlobalArgs, args: HistoryArgs) -> Result<ExitCode> {
    let repo = global.open()?;
    let filter = args.filters.filter()?;
    let mut catalogue = checkpoint::list_shared(&repo)?;
    catalogue.retain(|(_, c)| filter.matches(c));
    let cache = quick_cache::sync::Cache::new(4096);
    let load = |id: &cairn::id::BlobId| {
        cache.get_or_insert_with(id, || load_tree(&repo, id).map(Arc::new))
    };
    let history =
        repo.catalogue()
            .path_history(repo.codec(), &catalogue, &components(&args.path), &load)?;
    let versions = versions(&history);
    if versions.is_empty() {
        anyhow::bail!(
            "{} is in none of the {} checkpoints",
            args.path,
            catalogue.len()
        );
    }
    let rows: Vec<_> = versions
        .iter()
        .map(|version| {
            let ids: Vec<String> = version
                .checkpoints
                .iter()
                .map(|&i| catalogue[i].0.short())
                .collect();
            let (first_id, first) = &catalogue[version.checkpoints[0]];
            json!({
                "change": version.change,
                "time": first.time,
                "checkpoint": first_id.to_hex(),
                "checkpoints": ids,
                "size": version.entry.as_ref().map(|e| e.size),
                "mtime": version.entry.as_ref().map(|e| timestamp::rfc3339_nanos(e.mtime_ns)),
                "type": version.entry.as_ref().map(|e| e.type_char().to_string()),
            })
        })
        .collect();
    if args.json {
        print_json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    for (version, row) in versions.iter().zip(&rows) {
        let time = row["time"].as_str().unwrap_or_default();
        let detail = match &version.entry {
            Some(entry) => format!(
                "{:>10}  mtime {}",
                HumanBytes(entry.size).to_string(),
                timestamp::date_time(entry.mtime_ns)
            ),
            None => String::new(),
        };
        let ids = row["checkpoints"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        outln!(
            "{}  {:<8} {detail}  in {ids}",
            time.get(..19).unwrap_or(time).replace('T', " "),
            format!("{:?}", version.change).to_lowercase(),
        );
    }
    Ok(ExitCode::SUCCESS)
}
