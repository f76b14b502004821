//! `cairn cat`: one file's bytes from a checkpoint to stdout, verified chunk by chunk.

use super::{GlobalArgs, split_reference};
use anyhow::{Result, bail};
use cairn::tree::{EntryKind, find_entry, read_chunk, sized_file_chunks};
use clap::Args;
use std::io::Write;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct CatArgs {
    /// CKPT:PATH — a checkpoint reference and the path of a file in it
    reference: String,
    #[command(flatten)]
    filters: super::FilterArgs,
}

pub fn run(global: &GlobalArgs, args: CatArgs) -> Result<ExitCode> {
    let repo = global.open()?;
    let (reference, path) = split_reference(&args.reference);
    let (_, record) = super::resolve_checkpoint(&repo, reference, &args.filters)?;
    let entry = find_entry(&repo, record.root_entry(), path)?;
    let EntryKind::File(content) = &entry.kind else {
        bail!("{path:?} is not a regular file in checkpoint {reference}");
    };
    let mut out = std::io::stdout().lock();
    // The chunks add up to the recorded size and each read is checked against its length,
    // so what is written is the whole file or the command fails.
    for chunk in sized_file_chunks(&repo, content, entry.size)? {
        out.write_all(&read_chunk(&repo, &chunk)?)?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
