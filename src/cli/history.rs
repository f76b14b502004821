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

/// The checkpoints named on a version's line; `--json` names them all.
const IDS_SHOWN: usize = 8;

pub fn run(global: &GlobalArgs, args: HistoryArgs) -> Result<ExitCode> {
    let (repo, _lock) = global.open_to_read("history")?;
    let filter = args.filters.filter()?;
    let mut catalogue = checkpoint::list_shared(&repo)?;
    catalogue.retain(|summary| filter.matches_label(&summary.label));
    let cache = quick_cache::sync::Cache::new(4096);
    let load = |id: &cairn::id::TreeId| {
        cache.get_or_insert_with(id, || load_tree(&repo, id).map(Arc::new))
    };
    let history =
        repo.catalogue()
            .path_history(&repo, &catalogue, &components(&args.path), &load)?;
    let versions = versions(&history);
    if versions.is_empty() {
        anyhow::bail!(
            "{} is in none of the {}",
            args.path,
            super::counted(catalogue.len(), "checkpoint")
        );
    }
    if args.json {
        let rows: Vec<_> = versions
            .iter()
            .map(|version| {
                let ids: Vec<String> = version
                    .checkpoints
                    .iter()
                    .map(|&i| catalogue[i].id.short())
                    .collect();
                let first = &catalogue[version.checkpoints[0]];
                json!({
                    "change": version.change,
                    "time": first.time,
                    "checkpoint": first.id.to_hex(),
                    "checkpoints": ids,
                    "size": version.entry.as_ref().map(|e| e.size),
                    "mtime": version.entry.as_ref().map(|e| timestamp::rfc3339_nanos(e.mtime_ns)),
                    "type": version.entry.as_ref().map(|e| e.type_char().to_string()),
                })
            })
            .collect();
        print_json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    for version in &versions {
        let time = &catalogue[version.checkpoints[0]].time;
        let detail = match &version.entry {
            Some(entry) => format!(
                "{:>10}  mtime {}",
                HumanBytes(entry.size).to_string(),
                timestamp::date_time(entry.mtime_ns)
            ),
            None => String::new(),
        };
        let ids = super::short_ids(&catalogue, &version.checkpoints, IDS_SHOWN);
        outln!(
            "{}  {:<8} {detail}  in {ids}",
            time.get(..19).unwrap_or(time).replace('T', " "),
            format!("{:?}", version.change).to_lowercase(),
        );
    }
    Ok(ExitCode::SUCCESS)
}
