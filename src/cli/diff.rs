//! `cairn diff`: the paths added, removed and changed between two checkpoints, one per line
//! (`+` added, `-` removed, `M` content changed, `m` metadata only; directories end in `/`),
//! with a count on stderr; or the changes as a JSON array.

use super::{GlobalArgs, print_json};
use anyhow::Result;
use cairn::diff::{Change, ChangeKind, diff_checkpoints};
use clap::Args;
use std::io::Write;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The older checkpoint (id, prefix or `latest`)
    a: String,
    /// The newer checkpoint (id, prefix or `latest`)
    b: String,
    /// Print a JSON array of the changes instead of text
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    filters: super::FilterArgs,
}

/// The one-character marker of a change.
fn marker(change: &Change) -> char {
    match change.kind {
        ChangeKind::Added => '+',
        ChangeKind::Removed => '-',
        ChangeKind::Modified if change.content => 'M',
        ChangeKind::Modified => 'm',
    }
}

pub fn run(global: &GlobalArgs, args: DiffArgs) -> Result<ExitCode> {
    let (repo, _lock) = global.open_to_read("diff")?;
    let a = super::resolve_checkpoint(&repo, &args.a, &args.filters)?.record;
    let b = super::resolve_checkpoint(&repo, &args.b, &args.filters)?.record;
    let changes = diff_checkpoints(&repo, &a, &b)?;
    if args.json {
        print_json(&changes)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    let (mut added, mut removed, mut modified) = (0, 0, 0);
    for change in &changes {
        match change.kind {
            ChangeKind::Added => added += 1,
            ChangeKind::Removed => removed += 1,
            ChangeKind::Modified => modified += 1,
        }
        let slash = if change.is_dir { "/" } else { "" };
        let path = super::printable(&change.path);
        writeln!(out, "{} {path}{slash}", marker(change))?;
    }
    out.flush()?;
    errln!("{added} added, {removed} removed, {modified} modified");
    Ok(ExitCode::SUCCESS)
}
