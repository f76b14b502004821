//! `cairn list`: one row per checkpoint, oldest first.

use super::{GlobalArgs, print_json};
use anyhow::Result;
use cairn::checkpoint::{self, Stored};
use clap::Args;
use indicatif::HumanBytes;
use serde_json::json;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print a JSON array instead of a table
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    filters: super::FilterArgs,
}

pub fn run(global: &GlobalArgs, args: ListArgs) -> Result<ExitCode> {
    let repo = global.open()?;
    let all = checkpoint::list_matching(&repo, &args.filters.filter()?)?;
    if args.json {
        let rows: Vec<_> = all
            .iter()
            .map(|Stored { id, record: c }| {
                json!({
                    "id": id.to_hex(),
                    "short_id": id.short(),
                    "time": c.time,
                    "host": c.host,
                    "paths": c.paths,
                    "tags": c.tags,
                    "parent": c.parent,
                    "tree": c.tree,
                    "stats": c.stats,
                    "pulled_from": c.pulled_from,
                })
            })
            .collect();
        return print_json(&rows).map(|_| ExitCode::SUCCESS);
    }
    outln!(
        "{:<8}  {:<19}  {:<12}  {:<12}  {:>8}  {:>10}  paths",
        "id",
        "time",
        "host",
        "tags",
        "files",
        "size"
    );
    for Stored { id, record: c } in &all {
        let time = c.time.get(..19).unwrap_or(&c.time).replace('T', " ");
        outln!(
            "{:<8}  {:<19}  {:<12}  {:<12}  {:>8}  {:>10}  {}",
            id.short(),
            time,
            c.host,
            c.tags.join(","),
            c.stats.files,
            HumanBytes(c.stats.bytes).to_string(),
            c.paths.join(" ")
        );
    }
    errln!("{}", super::counted(all.len(), "checkpoint"));
    Ok(ExitCode::SUCCESS)
}
