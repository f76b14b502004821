//! `cairn unlock`: removes stale locks (their process is gone, or they were not refreshed
//! for `STALE_AFTER`); with `--remove-all`, every lock, live ones of other hosts included.

use super::GlobalArgs;
use anyhow::Result;
use clap::Args;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct UnlockArgs {
    /// Remove every lock, also those of runs that may still be working: only when you know
    /// they are not
    #[arg(long)]
    remove_all: bool,
    /// Show which locks would be removed; remove none
    #[arg(long)]
    dry_run: bool,
}

pub fn run(global: &GlobalArgs, args: UnlockArgs) -> Result<ExitCode> {
    let repo = global.open()?;
    let removed = cairn::repo::lock::remove_locks(&repo, args.remove_all, args.dry_run)?;
    let would = if args.dry_run { "would be " } else { "" };
    for cairn::repo::lock::RemovedLock { why, .. } in &removed {
        outln!("{would}removed {why}");
    }
    let listed = cairn::repo::lock::list(&repo)?.len();
    let left = if args.dry_run {
        listed.saturating_sub(removed.len())
    } else {
        listed
    };
    outln!(
        "{} {would}removed, {left} left",
        super::counted(removed.len(), "lock")
    );
    Ok(ExitCode::SUCCESS)
}
