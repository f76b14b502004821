//! `cairn cat`: one file's bytes from a checkpoint to stdout, verified chunk by chunk.

use super::{GlobalArgs, split_reference};
use anyhow::{Result, bail};
use cairn::checkpoint;
use cairn::tree::{EntryKind, file_chunks, find_entry, read_chunk};
use clap::Args;
use std::io::Write;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct CatArgs {
    /// CKPT:PATH — a checkpoint reference and the path of a file in it
    reference: String,
}

pub fn run(global: &GlobalArgs, args: CatArgs) -> Result<ExitCode> {
    let repo = global.open()?;
    let (reference, path) = split_reference(&args.reference);
    let (_, record) = checkpoint::resolve(&repo, reference)?;
    let entry = find_entry(&repo, record.root_entry(), path)?;
    let EntryKind::File(content) = &entry.kind else {
        bail!("{path:?} is not a regular file in checkpoint {reference}");
    };
    let mut out = std::io::stdout().lock();
    let mut written = 0u64;
    for chunk in file_chunks(&repo, content)? {
        let data = read_chunk(&repo, &chunk)?;
        written += data.len() as u64;
        out.write_all(&data)?;
    }
    if written != entry.size {
        bail!(
            "{path}: the chunks hold {written} bytes where the checkpoint says {}; the output is incomplete",
            entry.size
        );
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
