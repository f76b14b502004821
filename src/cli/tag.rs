//! `cairn tag`: adds, removes or sets the tags of existing checkpoints. A checkpoint's id is
//! the hash of its record, so a retagged checkpoint gets a new id (printed).

use super::{GlobalArgs, print_json};
use anyhow::{Result, bail};
use cairn::checkpoint::{self, TagChange};
use clap::Args;
use serde_json::json;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct TagArgs {
    /// The checkpoints to change (ids, unique prefixes, or `latest`); without any, every
    /// checkpoint that --host, --path and --tag let through
    #[arg(value_name = "CHECKPOINT")]
    checkpoints: Vec<String>,
    /// Add this tag (repeatable)
    #[arg(long = "add", value_name = "TAG")]
    add: Vec<String>,
    /// Remove this tag (repeatable)
    #[arg(long = "remove", value_name = "TAG")]
    remove: Vec<String>,
    /// Replace the tags with these (repeatable; `--set ''` removes them all)
    #[arg(long = "set", value_name = "TAG", conflicts_with_all = ["add", "remove"])]
    set: Vec<String>,
    #[command(flatten)]
    filters: super::FilterArgs,
    /// Print a JSON array (old id, new id, tags) instead of text
    #[arg(long)]
    json: bool,
}

pub fn run(global: &GlobalArgs, args: TagArgs) -> Result<ExitCode> {
    if args.add.is_empty() && args.remove.is_empty() && args.set.is_empty() {
        bail!("nothing to change: give --add TAG, --remove TAG or --set TAG");
    }
    let repo = global.open()?;
    let mut ids = Vec::new();
    if args.checkpoints.is_empty() {
        let filter = args.filters.filter()?;
        let catalogue = checkpoint::list_shared(&repo)?;
        ids.extend(
            catalogue
                .iter()
                .filter(|summary| filter.matches_label(&summary.label))
                .map(|summary| summary.id),
        );
    }
    for reference in &args.checkpoints {
        let id = super::resolve_checkpoint(&repo, reference, &args.filters)?.id;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    let change = TagChange {
        set: (!args.set.is_empty())
            .then(|| args.set.iter().filter(|t| !t.is_empty()).cloned().collect()),
        add: args.add,
        remove: args.remove,
    };
    let retagged = checkpoint::retag(&repo, &ids, &change)?;
    if args.json {
        let rows: Vec<_> = retagged
            .iter()
            .map(|r| json!({"old": r.old.to_hex(), "new": r.new.to_hex(), "tags": r.tags}))
            .collect();
        print_json(&rows)?;
    } else {
        for r in &retagged {
            outln!(
                "{} -> {}  tags: {}",
                r.old.short(),
                r.new.short(),
                r.tags.join(",")
            );
        }
        errln!(
            "{} retagged, {} already as asked",
            super::counted(retagged.len(), "checkpoint"),
            ids.len() - retagged.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}
