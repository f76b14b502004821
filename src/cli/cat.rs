//! `cairn cat`: one file's bytes from a checkpoint to stdout, verified chunk by chunk.

use super::{GlobalArgs, split_reference};
use anyhow::{Result, bail};
use cairn::readahead::ChunkStream;
use cairn::repo::Repository;
use cairn::tree::{Content, EntryKind, find_entry, sized_file_chunks};
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
    let (repo, _lock) = global.open_to_read("cat")?;
    let (reference, path) = split_reference(&args.reference);
    let record = super::resolve_checkpoint(&repo, reference, &args.filters)?.record;
    let entry = find_entry(&repo, record.root_entry(), path)?;
    let EntryKind::File(content) = &entry.kind else {
        bail!("{path:?} is not a regular file in checkpoint {reference}");
    };
    let mut out = std::io::stdout().lock();
    write_file(&repo, content, entry.size, &mut out)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// Writes the bytes of a file (`content`, recorded as `size` bytes) to `out`. The chunks add
/// up to the recorded size and each read is checked against its length, so what is written
/// is the whole file or the command fails. They are read ahead, neighbours in a pack
/// together, while `out` takes the ones before.
pub(super) fn write_file(
    repo: &Repository,
    content: &Content,
    size: u64,
    out: &mut dyn Write,
) -> Result<()> {
    let chunks = sized_file_chunks(repo, content, size)?;
    std::thread::scope(|scope| -> Result<()> {
        for ((), chunk) in ChunkStream::new(repo, scope, chunks.into_iter().map(|c| ((), c))) {
            out.write_all(&chunk?.bytes)?;
        }
        Ok(())
    })
}
