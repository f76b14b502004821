//! Argument definitions shared by every subcommand and the dispatch to one file per
//! subcommand. Repository, password and key file come from flags or the environment
//! (`CAIRN_REPO`, `CAIRN_PASSWORD`, `CAIRN_KEY_FILE`, `CAIRN_CACHE_DIR`); a password prompt
//! appears only on a terminal and only for a password-mode repository.

mod backup;
mod cat;
mod check;
mod diff;
mod history;
mod init;
mod list;
mod ls;
mod mount;
mod pipeline_speed;
mod restore;

use anyhow::{Context, Result, bail};
use cairn::repo::backend::LocalBackend;
use cairn::repo::config::EncryptionMode;
use cairn::repo::{Repository, Secret};
use clap::{Args, Parser, Subcommand};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// cairn: deduplicating, compressed, encrypted backups you can browse and restore.
#[derive(Debug, Parser)]
#[command(name = "cairn", version, about)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Options every subcommand takes.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// The repository (a directory)
    #[arg(long, global = true, env = "CAIRN_REPO")]
    repo: Option<PathBuf>,
    /// Read the password from this file (first line); `CAIRN_PASSWORD` also works
    #[arg(long, global = true)]
    password_file: Option<PathBuf>,
    /// The key file of a keyfile-mode repository
    #[arg(long, global = true, env = "CAIRN_KEY_FILE")]
    key_file: Option<PathBuf>,
    /// Where the local index cache lives (default: $XDG_CACHE_HOME/cairn or ~/.cache/cairn)
    #[arg(long, global = true, env = "CAIRN_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a new repository
    Init(init::InitArgs),
    /// Back up paths into a new checkpoint
    Backup(backup::BackupArgs),
    /// List checkpoints
    List(list::ListArgs),
    /// List the entries of a checkpoint or of a directory in it
    Ls(ls::LsArgs),
    /// Write a file from a checkpoint to stdout
    Cat(cat::CatArgs),
    /// Restore a checkpoint, or a path in it, into a directory
    Restore(restore::RestoreArgs),
    /// Verify the repository: structure, and with --read-data every blob
    Check(check::CheckArgs),
    /// Show what changed between two checkpoints
    Diff(diff::DiffArgs),
    /// Mount every checkpoint as a read-only filesystem
    Mount(mount::MountArgs),
    /// Show every version of a path across all checkpoints
    History(history::HistoryArgs),
    /// Measure the backup pipeline in memory on some files (the floor in scripts/bench.sh)
    #[command(hide = true)]
    PipelineSpeed(pipeline_speed::PipelineSpeedArgs),
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    let global = &cli.global;
    match cli.command {
        Command::Init(args) => init::run(global, args),
        Command::Backup(args) => backup::run(global, args),
        Command::List(args) => list::run(global, args),
        Command::Ls(args) => ls::run(global, args),
        Command::Cat(args) => cat::run(global, args),
        Command::Restore(args) => restore::run(global, args),
        Command::Check(args) => check::run(global, args),
        Command::Diff(args) => diff::run(global, args),
        Command::Mount(args) => mount::run(global, args),
        Command::History(args) => history::run(global, args),
        Command::PipelineSpeed(args) => pipeline_speed::run(args),
    }
}

/// Parses a `--limit-rate` value for clap.
fn rate(text: &str) -> std::result::Result<u64, String> {
    cairn::throttle::parse_rate(text).map_err(|e| e.to_string())
}

impl GlobalArgs {
    fn repo_path(&self) -> Result<&PathBuf> {
        self.repo
            .as_ref()
            .context("no repository given: pass --repo PATH or set CAIRN_REPO")
    }

    fn backend(&self) -> Result<Arc<LocalBackend>> {
        Ok(Arc::new(LocalBackend::new(self.repo_path()?)))
    }

    fn cache_root(&self) -> Result<PathBuf> {
        if let Some(dir) = &self.cache_dir {
            return Ok(dir.clone());
        }
        if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
            return Ok(PathBuf::from(dir).join("cairn"));
        }
        let home = std::env::var_os("HOME")
            .context("cannot place the cache: set HOME, CAIRN_CACHE_DIR or --cache-dir")?;
        Ok(PathBuf::from(home).join(".cache/cairn"))
    }

    /// The password from `CAIRN_PASSWORD`, `--password-file`, or a prompt on a terminal.
    fn password(&self, confirm: bool) -> Result<Vec<u8>> {
        if let Some(password) = std::env::var_os("CAIRN_PASSWORD") {
            return Ok(std::os::unix::ffi::OsStringExt::into_vec(password));
        }
        if let Some(file) = &self.password_file {
            let text = std::fs::read(file)
                .with_context(|| format!("reading password file {}", file.display()))?;
            let line = text.split(|&b| b == b'\n').next().unwrap_or_default();
            return Ok(line.strip_suffix(b"\r").unwrap_or(line).to_vec());
        }
        if !std::io::stdin().is_terminal() {
            bail!(
                "a password is needed: set CAIRN_PASSWORD, pass --password-file FILE, or run on a terminal"
            );
        }
        let password = rpassword::prompt_password("repository password: ")?;
        if confirm && rpassword::prompt_password("repeat password: ")? != password {
            bail!("the passwords do not match; nothing was created");
        }
        if password.is_empty() {
            bail!("the password is empty");
        }
        Ok(password.into_bytes())
    }

    /// Opens the repository, asking for its secret only if it needs one.
    fn open(&self) -> Result<Repository> {
        let backend = self.backend()?;
        let cache_root = self.cache_root()?;
        let repo = Repository::open(
            backend,
            |mode| {
                match mode {
                EncryptionMode::None => Ok(Secret::None),
                EncryptionMode::Password => self
                    .password(false)
                    .map(Secret::Password)
                    .map_err(|e| cairn::error::Error::InvalidInput(format!("{e:#}"))),
                EncryptionMode::Keyfile => self.key_file.clone().map(Secret::KeyFile).ok_or_else(|| {
                    cairn::error::Error::InvalidInput(
                        "this repository needs its key file: pass --key-file FILE or set CAIRN_KEY_FILE".into(),
                    )
                }),
            }
            },
            &cache_root,
        )?;
        Ok(repo)
    }
}

/// Whether to draw progress: stderr is a terminal and the output is not JSON.
fn show_progress(json: bool) -> bool {
    !json && std::io::stderr().is_terminal()
}

/// Prints `value` as pretty JSON on stdout.
fn print_json(value: &impl serde::Serialize) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// Splits `CKPT[:PATH]`.
fn split_reference(reference: &str) -> (&str, &str) {
    reference.split_once(':').unwrap_or((reference, ""))
}

/// Formats nanoseconds since the epoch as RFC 3339 (UTC).
fn format_time_ns(ns: i64) -> String {
    let time = if ns >= 0 {
        std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns as u64)
    } else {
        std::time::UNIX_EPOCH - std::time::Duration::from_nanos(ns.unsigned_abs())
    };
    humantime::format_rfc3339_nanos(time).to_string()
}
