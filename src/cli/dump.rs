//! `cairn dump`: a checkpoint, or a directory in it, as a tar stream on stdout (or in a
//! file); a regular file's own bytes, as `cat` writes them.

use super::{GlobalArgs, split_reference};
use anyhow::{Context, Result, bail};
use cairn::tree::{EntryKind, find_entry};
use clap::Args;
use std::io::{IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct DumpArgs {
    /// CKPT[:PATH] — a checkpoint reference (id, prefix or `latest`) and a path in it
    reference: String,
    /// Write to this file instead of stdout (replaced once complete)
    #[arg(long, value_name = "FILE")]
    target: Option<PathBuf>,
    #[command(flatten)]
    filters: super::FilterArgs,
}

pub fn run(global: &GlobalArgs, args: DumpArgs) -> Result<ExitCode> {
    if args.target.is_none() && std::io::stdout().is_terminal() {
        bail!(
            "cairn dump writes an archive: redirect stdout to a file or a pipe (`> out.tar`, `| tar -x`), or give --target FILE"
        );
    }
    let (repo, _lock) = global.open_to_read("dump")?;
    let (reference, path) = split_reference(&args.reference);
    let record = super::resolve_checkpoint(&repo, reference, &args.filters)?.record;
    let entry = find_entry(&repo, record.root_entry(), path)?;
    let name = path
        .trim_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default();
    let write = |out: &mut dyn Write| -> Result<()> {
        match &entry.kind {
            EntryKind::File(content) => super::cat::write_file(&repo, content, entry.size, out),
            _ => {
                cairn::dump::tar(&repo, &entry, name.as_bytes(), out)?;
                Ok(())
            }
        }
    };
    match &args.target {
        None => {
            let mut out = std::io::stdout().lock();
            write(&mut out)?;
            out.flush()?;
        }
        Some(target) => {
            let partial = partial_path(target);
            let written = (|| -> Result<()> {
                // A leftover (or a planted symlink) is removed, never followed.
                let _ = std::fs::remove_file(&partial);
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&partial)
                    .with_context(|| format!("creating {}", partial.display()))?;
                write(&mut file)?;
                file.sync_all()?;
                std::fs::rename(&partial, target).with_context(|| {
                    format!("renaming {} to {}", partial.display(), target.display())
                })
            })();
            if written.is_err() {
                let _ = std::fs::remove_file(&partial);
            }
            written?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Where a --target file is written until it is complete: beside it, hidden.
fn partial_path(target: &std::path::Path) -> PathBuf {
    let name = target.file_name().unwrap_or_default().to_string_lossy();
    target.with_file_name(format!(".{name}.cairn-partial"))
}
