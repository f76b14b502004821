//! `cairn completions SHELL` and `cairn man --dir DIR`: shell completions and a man page per
//! command, both made from the same argument definitions the parser uses, so they never
//! drift from what cairn accepts.

use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for
    shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write the pages (cairn.1, cairn-backup.1, ...) into this directory, such as
    /// ~/.local/share/man/man1
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
}

/// Prints the completion script of `shell` to stdout.
pub fn completions(args: CompletionsArgs) -> Result<ExitCode> {
    let mut command = super::command();
    // Made whole first: the generator panics on a write error, and a closed pipe (`| head`)
    // must end the run quietly like any other output.
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "cairn", &mut script);
    std::io::Write::write_all(&mut std::io::stdout().lock(), &script)?;
    Ok(ExitCode::SUCCESS)
}

/// Writes a man page for cairn and for each of its commands into `--dir`.
pub fn man(args: ManArgs) -> Result<ExitCode> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    clap_mangen::generate_to(super::command(), &args.dir)
        .with_context(|| format!("writing man pages into {}", args.dir.display()))?;
    errln!(
        "man pages written to {} (`man cairn-backup` finds them when the directory is on \
         MANPATH, as ~/.local/share/man/man1 is)",
        args.dir.display()
    );
    Ok(ExitCode::SUCCESS)
}
