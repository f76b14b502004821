//! `cairn forget`: removes checkpoint records by a retention policy, series by series (one
//! host and set of paths), printing what is kept and why and what is removed, or removes the
//! checkpoints named (`forget ID...`); with `--prune`, a prune follows and returns the space.

use super::{GlobalArgs, print_json};
use anyhow::{Result, bail};
use cairn::retention::{self, Policy, SeriesPlan};
use clap::Args;
use serde_json::json;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct ForgetArgs {
    /// Remove these checkpoints (ids, unique prefixes of 4+ hex digits, or `latest`) instead
    /// of applying a policy
    #[arg(value_name = "CHECKPOINT", conflicts_with_all = ["keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly", "keep_tags"])]
    checkpoints: Vec<String>,
    /// Keep the N newest checkpoints of each series
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_last: u32,
    /// Keep the newest checkpoint of each of the N newest hours that have one
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_hourly: u32,
    /// Keep the newest checkpoint of each of the N newest days that have one
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_daily: u32,
    /// Keep the newest checkpoint of each of the N newest ISO weeks that have one
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_weekly: u32,
    /// Keep the newest checkpoint of each of the N newest months that have one
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_monthly: u32,
    /// Keep the newest checkpoint of each of the N newest years that have one
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_yearly: u32,
    /// Keep every checkpoint with this tag (repeatable)
    #[arg(long = "keep-tag", value_name = "TAG")]
    keep_tags: Vec<String>,
    #[command(flatten)]
    filters: super::FilterArgs,
    /// Show what would be removed; remove nothing
    #[arg(long)]
    dry_run: bool,
    /// Prune afterwards, returning the space of what no checkpoint needs any more
    #[arg(long)]
    prune: bool,
    /// Print one JSON object instead of text
    #[arg(long)]
    json: bool,
}

pub fn run(global: &GlobalArgs, args: ForgetArgs) -> Result<ExitCode> {
    if !args.checkpoints.is_empty() {
        return forget_named(global, &args);
    }
    let policy = Policy {
        last: args.keep_last,
        hourly: args.keep_hourly,
        daily: args.keep_daily,
        weekly: args.keep_weekly,
        monthly: args.keep_monthly,
        yearly: args.keep_yearly,
        tags: args.keep_tags.clone(),
    };
    if policy.is_empty() {
        bail!(
            "no retention policy given: pass at least one of --keep-last, --keep-hourly, \
             --keep-daily, --keep-weekly, --keep-monthly, --keep-yearly or --keep-tag \
             (with none, every checkpoint would be removed)"
        );
    }
    let repo = global.open_for(args.dry_run)?;
    let forgotten = retention::forget(&repo, &policy, &args.filters.filter()?)?;
    let (plans, removed) = (&forgotten.series, forgotten.removed);
    let pruned = if args.prune {
        Some(cairn::prune::run(&repo, &Default::default())?)
    } else {
        None
    };
    if args.json {
        print_json(&json!({
            "dry_run": args.dry_run,
            "series": plans,
            "removed": removed,
            "prune": pruned,
        }))?;
    } else {
        print_plans(plans)?;
        let would = if args.dry_run { "would be " } else { "" };
        outln!("{} {would}removed", super::counted(removed, "checkpoint"));
        if let Some(report) = &pruned {
            super::prune::print_report(report)?;
            if args.dry_run {
                outln!(
                    "(the prune above still counts the checkpoints forget would remove as in use)"
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `forget ID...`: the named checkpoints, resolved first, removed together.
fn forget_named(global: &GlobalArgs, args: &ForgetArgs) -> Result<ExitCode> {
    let repo = global.open_for(args.dry_run)?;
    let mut ids = Vec::new();
    for reference in &args.checkpoints {
        let stored = super::resolve_checkpoint(&repo, reference, &args.filters)?;
        if !ids.contains(&stored.id) {
            ids.push(stored.id);
        }
    }
    let removed = retention::forget_named(&repo, &ids)?;
    let pruned = if args.prune {
        Some(cairn::prune::run(&repo, &Default::default())?)
    } else {
        None
    };
    let would = if args.dry_run { "would be " } else { "" };
    if args.json {
        print_json(&json!({
            "dry_run": args.dry_run,
            "ids": ids.iter().map(|id| id.to_hex()).collect::<Vec<_>>(),
            "removed": removed,
            "prune": pruned,
        }))?;
    } else {
        for id in &ids {
            outln!("  {}  {would}removed", id.short());
        }
        outln!("{} {would}removed", super::counted(removed, "checkpoint"));
        if let Some(report) = &pruned {
            super::prune::print_report(report)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_plans(plans: &[SeriesPlan]) -> Result<()> {
    for plan in plans {
        match &plan.pulled_from {
            Some(server) => outln!(
                "{} {} (pulled from {server})",
                plan.host,
                plan.paths.join(" ")
            ),
            None => outln!("{} {}", plan.host, plan.paths.join(" ")),
        }
        for decision in &plan.checkpoints {
            let time = decision
                .time
                .get(..19)
                .unwrap_or(&decision.time)
                .replace('T', " ");
            let verdict = if decision.reasons.is_empty() {
                "remove".to_owned()
            } else {
                let reasons: Vec<String> = decision.reasons.iter().map(|r| r.to_string()).collect();
                format!("keep ({})", reasons.join(", "))
            };
            outln!("  {}  {time}  {verdict}", decision.id.short());
        }
    }
    Ok(())
}
