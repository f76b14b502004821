//! Argument definitions shared by every subcommand and the dispatch to one file per
//! subcommand. Repository, password and key file come from flags or the environment
//! (`CAIRN_REPO`, `CAIRN_PASSWORD`, `CAIRN_KEY_FILE`, `CAIRN_CACHE_DIR`); a password prompt
//! appears only on a terminal and only for a password-mode repository.

/// `println!` for command output that returns a failed write (a closed pipe, a full disk) as
/// an error instead of panicking; `main` exits quietly when it was a closed pipe. The line
/// is `printable`: names in it never reach the terminal as control characters.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), "{}", crate::cli::printable(&format!($($arg)*)))?
    }};
}

/// `eprintln!` for what cairn tells a person, `printable` like `outln!`.
macro_rules! errln {
    ($($arg:tt)*) => {
        eprintln!("{}", crate::cli::printable(&format!($($arg)*)))
    };
}

mod backup;
mod cat;
mod check;
mod diff;
mod docs;
mod dump;
mod find;
mod forget;
mod help;
mod history;
mod init;
mod key;
mod list;
mod ls;
mod mount;
mod pipeline_speed;
mod plan;
mod progress_line;
mod prune;
mod repair;
mod restore;
mod schedule;
mod serve;
mod stats;
mod sync;
mod tag;
mod unlock;

use anyhow::{Context, Result, bail};
use cairn::checkpoint::Stored;
use cairn::net::HttpTimeouts;
use cairn::net::client::Remote;
use cairn::repo::backend::Backend;
use cairn::repo::config::EncryptionMode;
use cairn::repo::layers::RetryPolicy;
use cairn::repo::lock::LockGuard;
use cairn::repo::{Repository, Secret, StoreOptions, is_s3, is_url, open_store};
use clap::{Args, Parser, Subcommand};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
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
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Say more: -v logs what each step does (and sync lists each change, as rsync -v
    /// does), -vv adds details; CAIRN_LOG (e.g. `debug`) overrides
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Say less: no progress line and no warnings (summaries and errors still print)
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// The repository: a directory, the URL of a `cairn serve` (https://host:port/repo), or
    /// an S3 bucket (s3:https://host[:port]/bucket[/prefix]; credentials from AWS_* variables)
    #[arg(long, global = true, env = "CAIRN_REPO")]
    repo: Option<PathBuf>,
    /// Read the password from this file (first line); `CAIRN_PASSWORD` also works
    #[arg(long, global = true)]
    password_file: Option<PathBuf>,
    /// Run this command (with `sh -c`) for the password: the first line it prints
    #[arg(
        long,
        global = true,
        env = "CAIRN_PASSWORD_COMMAND",
        value_name = "COMMAND"
    )]
    password_command: Option<String>,
    /// The key file of a keyfile-mode repository
    #[arg(long, global = true, env = "CAIRN_KEY_FILE")]
    key_file: Option<PathBuf>,
    /// Where the local index cache lives (default: $XDG_CACHE_HOME/cairn or ~/.cache/cairn)
    #[arg(long, global = true, env = "CAIRN_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// The bearer token of a `cairn serve` server, from this file (first line);
    /// `CAIRN_TOKEN` also works. For `serve`, the token clients must present
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    /// Trust this PEM certificate (or CA) for https:// servers, besides the public roots
    #[arg(long, global = true, env = "CAIRN_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Trust only the https:// server whose certificate has this SHA-256 fingerprint (what
    /// `cairn serve --tls-self-signed` prints)
    #[arg(
        long,
        global = true,
        env = "CAIRN_TLS_FINGERPRINT",
        value_name = "SHA256",
        conflicts_with = "tls_ca"
    )]
    tls_fingerprint: Option<String>,
    /// When the repository is locked by another run, wait up to this long (e.g. 10m, 2h)
    /// for it instead of failing
    #[arg(long, global = true, value_name = "DURATION", value_parser = humantime::parse_duration)]
    retry_lock: Option<std::time::Duration>,
    /// How long to wait for a server to connect, to answer, or to send more of an answer
    /// before trying again (three tries) and giving up (default: 30s to connect, 60s for
    /// the rest)
    #[arg(long, global = true, env = "CAIRN_HTTP_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    http_timeout: Option<std::time::Duration>,
    /// How long to keep trying a store that does not answer (a 5xx, throttling, a timeout,
    /// a reset) before giving up, with growing pauses between tries (default: 2m)
    #[arg(long, global = true, env = "CAIRN_RETRY_FOR", value_name = "DURATION", value_parser = humantime::parse_duration)]
    retry_for: Option<std::time::Duration>,
    /// Send at most this many bytes per second to the repository's store (e.g. 5M)
    #[arg(long, global = true, env = "CAIRN_LIMIT_UPLOAD", value_name = "RATE", value_parser = rate)]
    limit_upload: Option<u64>,
    /// Receive at most this many bytes per second from the repository's store (e.g. 20M)
    #[arg(long, global = true, env = "CAIRN_LIMIT_DOWNLOAD", value_name = "RATE", value_parser = rate)]
    limit_download: Option<u64>,
    /// Address S3 buckets as BUCKET.HOST (virtual-hosted style) instead of HOST/BUCKET;
    /// AWS endpoints always are
    #[arg(long, global = true, env = "CAIRN_S3_VIRTUAL_HOST_STYLE")]
    s3_virtual_host_style: bool,
    /// The plans file (default: $XDG_CONFIG_HOME/cairn/cairn.toml or ~/.config/cairn/cairn.toml)
    #[arg(long, global = true, env = "CAIRN_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Whether `CAIRN_PASSWORD` and `CAIRN_TOKEN` count: not for a plan's target, whose
    /// secrets the plan names.
    #[arg(skip = true)]
    secrets_from_environment: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a new repository
    Init(init::InitArgs),
    /// Back up paths into a new checkpoint
    Backup(backup::BackupArgs),
    /// Run a plan of the configuration file: back up, copy to every target, verify
    Run(plan::RunArgs),
    /// Show what each target of each plan holds, and whether the newest checkpoint is in
    /// every target
    Status(plan::StatusArgs),
    /// Manage the plans of the configuration file
    Plans(plan::PlansArgs),
    /// Run a plan at the times its `schedule` names (a systemd timer, or cron)
    Schedule(schedule::ScheduleArgs),
    /// List checkpoints
    List(list::ListArgs),
    /// List the entries of a checkpoint or of a directory in it
    Ls(ls::LsArgs),
    /// Write a file from a checkpoint to stdout
    Cat(cat::CatArgs),
    /// Write a checkpoint, or a directory in it, as a tar stream (a file as its bytes)
    Dump(dump::DumpArgs),
    /// Find entries by name or path across checkpoints, without restoring anything
    Find(find::FindArgs),
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
    /// Copy only what the destination lacks: directory or repository into a repository,
    /// checkpoint or directory into a directory
    Sync(sync::SyncArgs),
    /// Serve a repository over HTTP(S) to cairn clients elsewhere
    Serve(serve::ServeArgs),
    /// Remove checkpoints by a retention policy (--keep-daily 7 ...)
    Forget(forget::ForgetArgs),
    /// Add, remove or set the tags of existing checkpoints
    Tag(tag::TagArgs),
    /// Delete the data no checkpoint needs any more
    Prune(prune::PruneArgs),
    /// Recover from damage: rebuild the index from the packs, or rewrite damaged checkpoints
    Repair(repair::RepairArgs),
    /// Remove stale locks (of finished or hung runs); --remove-all removes every lock
    Unlock(unlock::UnlockArgs),
    /// Manage the passwords of a password-mode repository: list, add, change, remove
    Key(key::KeyArgs),
    /// Show the repository's sizes: as restored, deduplicated, stored
    Stats(stats::StatsArgs),
    /// Print a shell's completion script (bash, zsh, fish, elvish, powershell)
    Completions(docs::CompletionsArgs),
    /// Write a man page for cairn and for each of its commands
    Man(docs::ManArgs),
    /// Measure the backup pipeline in memory on some files (the floor in scripts/bench.sh)
    #[command(hide = true)]
    PipelineSpeed(pipeline_speed::PipelineSpeedArgs),
}

impl Cli {
    /// What is logged, unless CAIRN_LOG says otherwise: warnings, or by -q and -v.
    pub fn log_filter(&self) -> &'static str {
        // fuser logs routine events (such as a second unmount attempt) as warnings.
        match (self.global.quiet, self.global.verbose) {
            (true, _) => "error",
            (false, 0) => "warn,fuser=error",
            (false, 1) => "warn,cairn=info,fuser=error",
            (false, 2) => "warn,cairn=debug",
            (false, _) => "debug",
        }
    }
}

pub use help::command;

pub fn run(cli: Cli) -> Result<ExitCode> {
    let global = &cli.global;
    match cli.command {
        Command::Init(args) => init::run(global, args),
        Command::Backup(args) => backup::run(global, args),
        Command::Run(args) => plan::run(global, args),
        Command::Status(args) => plan::status(global, args),
        Command::Plans(args) => plan::plans(global, args),
        Command::Schedule(args) => schedule::run(global, args),
        Command::List(args) => list::run(global, args),
        Command::Ls(args) => ls::run(global, args),
        Command::Cat(args) => cat::run(global, args),
        Command::Dump(args) => dump::run(global, args),
        Command::Find(args) => find::run(global, args),
        Command::Restore(args) => restore::run(global, args),
        Command::Check(args) => check::run(global, args),
        Command::Diff(args) => diff::run(global, args),
        Command::Mount(args) => mount::run(global, args),
        Command::History(args) => history::run(global, args),
        Command::Sync(args) => sync::run(global, args),
        Command::Serve(args) => serve::run(global, args),
        Command::Forget(args) => forget::run(global, args),
        Command::Tag(args) => tag::run(global, args),
        Command::Prune(args) => prune::run(global, args),
        Command::Repair(args) => repair::run(global, args),
        Command::Unlock(args) => unlock::run(global, args),
        Command::Key(args) => key::run(global, args),
        Command::Stats(args) => stats::run(global, args),
        Command::Completions(args) => docs::completions(args),
        Command::Man(args) => docs::man(args),
        Command::PipelineSpeed(args) => pipeline_speed::run(args),
    }
}

/// `count` and `noun`, in the plural unless the count is one: "1 checkpoint", "2 files".
fn counted(count: impl TryInto<u64>, noun: &str) -> String {
    match count.try_into().unwrap_or(u64::MAX) {
        1 => format!("1 {noun}"),
        count => format!("{count} {noun}s"),
    }
}

/// Parses a `--limit-rate` value for clap.
fn rate(text: &str) -> std::result::Result<u64, String> {
    cairn::fs::throttle::parse_rate(text).map_err(|e| e.to_string())
}

impl GlobalArgs {
    fn repo_path(&self) -> Result<&PathBuf> {
        self.repo
            .as_ref()
            .context("no repository given: pass --repo PATH or set CAIRN_REPO")
    }

    /// These arguments with what is received from a store capped at `rate` bytes per
    /// second as well (the lower cap wins).
    fn receiving_at_most(&self, rate: Option<u64>) -> GlobalArgs {
        let limit_download = match (self.limit_download, rate) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        GlobalArgs {
            limit_download,
            ..self.clone()
        }
    }

    fn backend(&self) -> Result<Arc<dyn Backend>> {
        self.backend_at(self.repo_path()?)
    }

    /// The backend of a repository location: a directory, an `http(s)://` URL served by
    /// `cairn serve`, or an `s3:` bucket; inside the layers every store is used through
    /// (retries, and the rate limits asked for).
    fn backend_at(&self, location: &Path) -> Result<Arc<dyn Backend>> {
        // The CA file and the token are read only for a store across the network.
        let served = location.to_str().is_some_and(is_url);
        let networked = served || location.to_str().is_some_and(is_s3);
        let options = StoreOptions {
            ca_pem: match (networked, location.to_str()) {
                (true, Some(url)) => self.trusted_certificates(url)?,
                _ => None,
            },
            timeouts: self.timeouts(),
            token: if served { Some(self.token()?) } else { None },
            s3_virtual_host_style: self.s3_virtual_host_style,
            retry: RetryPolicy {
                give_up_after: self
                    .retry_for
                    .unwrap_or(RetryPolicy::default().give_up_after),
                ..RetryPolicy::default()
            },
            upload_limit: self.limit_upload,
            download_limit: self.limit_download,
        };
        Ok(open_store(location, &options)?)
    }

    /// The PEM certificates to trust for the server at `url` besides the public roots: the
    /// one whose fingerprint `--tls-fingerprint` pins (fetched from the server), or those of
    /// `--tls-ca`.
    fn trusted_certificates(&self, url: &str) -> Result<Option<Vec<u8>>> {
        if let Some(pinned) = &self.tls_fingerprint {
            if is_s3(url) {
                bail!(
                    "--tls-fingerprint pins a `cairn serve` certificate; an S3 store's is trusted through a CA (--tls-ca for your own)"
                );
            }
            let pinned = cairn::net::pin::parse(pinned)?;
            let wait = self.timeouts().connect;
            return Ok(Some(cairn::net::pin::pinned_certificate(
                url, &pinned, wait,
            )?));
        }
        self.tls_ca
            .as_ref()
            .map(|file| {
                std::fs::read(file)
                    .with_context(|| format!("reading the CA certificate {}", file.display()))
            })
            .transpose()
    }

    /// How long to wait for a server or store (`--http-timeout`).
    fn timeouts(&self) -> HttpTimeouts {
        self.http_timeout
            .map_or_else(HttpTimeouts::default, HttpTimeouts::all)
    }

    /// How to reach the server at `url`: the token and the extra CA.
    fn remote(&self, url: &str) -> Result<Remote> {
        Ok(Remote::new(
            url,
            self.token()?,
            self.trusted_certificates(url)?,
            self.timeouts(),
        ))
    }

    /// The server token from `CAIRN_TOKEN` or `--token-file`.
    fn token(&self) -> Result<String> {
        if let Some(token) =
            std::env::var_os("CAIRN_TOKEN").filter(|_| self.secrets_from_environment)
        {
            let token = token.to_string_lossy().trim().to_owned();
            if token.is_empty() {
                bail!("CAIRN_TOKEN is empty");
            }
            return Ok(token);
        }
        let file = self
            .token_file
            .as_ref()
            .context("a server token is needed: pass --token-file FILE or set CAIRN_TOKEN")?;
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading token file {}", file.display()))?;
        let token = text.lines().next().unwrap_or_default().trim().to_owned();
        if token.is_empty() {
            bail!("token file {} is empty", file.display());
        }
        Ok(token)
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

    /// Where the secret of `--repo` comes from.
    fn credentials(&self) -> Credentials<'_> {
        Credentials {
            password_env: Some("CAIRN_PASSWORD").filter(|_| self.secrets_from_environment),
            password_file: self.password_file.as_deref(),
            password_command: self.password_command.as_deref(),
            key_file: self.key_file.as_deref(),
            lent: false,
        }
    }

    /// The password of `--repo`, as `Credentials::password` gives it.
    fn password(&self, confirm: bool) -> Result<Vec<u8>> {
        self.credentials().password(confirm)
    }

    /// Opens `--repo`, asking for its secret only if it needs one.
    fn open(&self) -> Result<Repository> {
        self.open_at(self.repo_path()?, self.credentials())
    }

    /// Opens the repository for a command that only reads it (`ls`, `cat`, ...), with a shared
    /// lock held as long as the guard: a prune or forget waits for the command (or it for
    /// them, with `--retry-lock`) instead of deleting what it reads.
    fn open_to_read(&self, command: &str) -> Result<(Repository, Option<LockGuard>)> {
        let repo = self.open()?;
        let lock = cairn::repo::lock::acquire_for_reading(&repo, command)?;
        Ok((repo, lock))
    }

    /// Opens the repository, as a dry run sees it when `dry_run` (nothing written is kept).
    fn open_for(&self, dry_run: bool) -> Result<Repository> {
        self.open_target(self.repo_path()?, dry_run)
    }

    /// Opens the repository at `path` to write into, as a dry run sees it when `dry_run`.
    fn open_target(&self, path: &Path, dry_run: bool) -> Result<Repository> {
        let repo = self.open_at(path, self.credentials())?;
        Ok(if dry_run { repo.into_dry_run() } else { repo })
    }

    /// Opens the repository at `path` with the secret `credentials` name.
    fn open_at(&self, path: &Path, credentials: Credentials) -> Result<Repository> {
        let backend = self.backend_at(path)?;
        let cache_root = self.cache_root()?;
        let secret = |mode| {
            let secret = match mode {
                EncryptionMode::None => credentials.given_unasked(),
                EncryptionMode::Password => credentials.password(false).map(Secret::Password),
                EncryptionMode::Keyfile => credentials.key_file().map(Secret::KeyFile),
            };
            secret.map_err(|e| cairn::error::Error::InvalidInput(format!("{e:#}")))
        };
        let repo = Repository::open(backend, secret, &cache_root)?;
        if let Some(wait) = self.retry_lock {
            repo.wait_for_locks(wait);
        }
        Ok(repo)
    }
}

/// Where one repository's secret comes from: an environment variable, a file or a command for
/// the password (else a prompt on a terminal), or a key file.
#[derive(Debug, Clone, Copy)]
struct Credentials<'a> {
    password_env: Option<&'static str>,
    password_file: Option<&'a Path>,
    password_command: Option<&'a str>,
    key_file: Option<&'a Path>,
    /// Whether these are the main repository's credentials lent to a second repository that
    /// was given none of its own (`FromCredentials`).
    lent: bool,
}

impl Credentials<'_> {
    /// The secret given for this repository without asking for one. A repository whose
    /// config says `none` is refused when one was given: the secret says it is encrypted.
    /// Lent credentials were given for another repository and say nothing about this one.
    fn given_unasked(&self) -> Result<Secret> {
        if self.lent {
            return Ok(Secret::None);
        }
        if self.password_given() {
            return self.password(false).map(Secret::Password);
        }
        Ok(self
            .key_file
            .map_or(Secret::None, |file| Secret::KeyFile(file.to_path_buf())))
    }

    /// Whether a password is given without asking for one.
    fn password_given(&self) -> bool {
        self.password_env
            .is_some_and(|name| std::env::var_os(name).is_some())
            || self.password_file.is_some()
            || self.password_command.is_some()
    }

    /// The password from the environment variable, the password file, the password
    /// command, or a prompt.
    fn password(&self, confirm: bool) -> Result<Vec<u8>> {
        if let Some(password) = self.password_env.and_then(std::env::var_os) {
            return Ok(std::os::unix::ffi::OsStringExt::into_vec(password));
        }
        if let Some(file) = self.password_file {
            return read_password_file(file);
        }
        if let Some(command) = self.password_command {
            return run_password_command(command);
        }
        if !std::io::stdin().is_terminal() {
            bail!(
                "a password is needed: {}pass --password-file FILE or --password-command \
                 COMMAND, or run on a terminal",
                self.password_env
                    .map(|name| format!("set {name}, "))
                    .unwrap_or_default()
            );
        }
        prompt_password("repository password", confirm)
    }

    fn key_file(&self) -> Result<PathBuf> {
        self.key_file.map(Path::to_path_buf).context(
            "this repository needs its key file: pass --key-file FILE or set CAIRN_KEY_FILE",
        )
    }
}

/// The first line of a password file, without its line ending.
fn read_password_file(file: &Path) -> Result<Vec<u8>> {
    let text =
        std::fs::read(file).with_context(|| format!("reading password file {}", file.display()))?;
    let line = first_line(&text);
    if line.is_empty() {
        bail!(
            "password file {} is empty: write the password on its first line",
            file.display()
        );
    }
    Ok(line.to_vec())
}

/// The first line `command` prints (run by `sh -c`, stdin and stderr left to the user, so it
/// may ask for a passphrase of its own).
fn run_password_command(command: &str) -> Result<Vec<u8>> {
    let output = std::process::Command::new("sh")
        .args(["-c", command])
        .stdin(std::process::Stdio::inherit())
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running password command {command:?}"))?;
    if !output.status.success() {
        bail!("password command {command:?} failed ({})", output.status);
    }
    let line = first_line(&output.stdout);
    if line.is_empty() {
        bail!("password command {command:?} printed no password");
    }
    Ok(line.to_vec())
}

/// `text` up to its first line ending (`\n` or `\r\n`).
fn first_line(text: &[u8]) -> &[u8] {
    let line = text.split(|&b| b == b'\n').next().unwrap_or_default();
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Asks for `what` (a password) on the terminal, twice when `confirm`; refuses an empty one.
fn prompt_password(what: &str, confirm: bool) -> Result<Vec<u8>> {
    let password = rpassword::prompt_password(format!("{what}: "))?;
    if confirm && rpassword::prompt_password(format!("repeat {what}: "))? != password {
        bail!("the passwords do not match; nothing was changed");
    }
    if password.is_empty() {
        bail!("the password is empty");
    }
    Ok(password.into_bytes())
}

/// The secret of a second repository that a command reads from (`sync`'s source,
/// `init --like`); without any of these, the main ones (`--password-file`, `CAIRN_PASSWORD`,
/// `--key-file`) serve.
#[derive(Debug, Args)]
struct FromCredentials {
    /// Read the source repository's password from this file; `CAIRN_FROM_PASSWORD` also works
    #[arg(long)]
    from_password_file: Option<PathBuf>,
    /// The source repository's key file (keyfile mode)
    #[arg(long, env = "CAIRN_FROM_KEY_FILE")]
    from_key_file: Option<PathBuf>,
}

impl FromCredentials {
    fn resolve<'a>(&'a self, global: &'a GlobalArgs) -> Credentials<'a> {
        let given = std::env::var_os("CAIRN_FROM_PASSWORD").is_some()
            || self.from_password_file.is_some()
            || self.from_key_file.is_some();
        if !given {
            return Credentials {
                lent: true,
                ..global.credentials()
            };
        }
        Credentials {
            password_env: Some("CAIRN_FROM_PASSWORD"),
            password_file: self.from_password_file.as_deref(),
            password_command: None,
            key_file: self.from_key_file.as_deref(),
            lent: false,
        }
    }
}

/// Draws the progress of a backup, sync or restore on stderr until `done` is set: one line
/// that fits the terminal (`progress_line`), redrawn in place, cleared at the end.
fn draw_progress(
    name: &str,
    progress: &cairn::progress::Progress,
    done: &std::sync::atomic::AtomicBool,
) {
    use std::io::Write;
    const SPINNER: [char; 4] = ['|', '/', '-', '\\'];
    let mut line = progress_line::ProgressLine::new();
    let mut stderr = std::io::stderr();
    for turn in 0.. {
        if done.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        // Two columns for the spinner, one left free so the line never wraps.
        let width = progress_line::terminal_width().saturating_sub(3);
        let reading = progress_line::Reading::of(progress);
        let text = line.render(name, &reading, std::time::Instant::now(), width);
        let _ = write!(stderr, "\r\x1b[2K{} {text}", SPINNER[turn % SPINNER.len()]);
        let _ = stderr.flush();
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let _ = write!(stderr, "\r\x1b[2K");
    let _ = stderr.flush();
}

/// Reports a run that a signal stopped, with what it kept for the next one; exit 130.
fn interrupted(what: &str, progress: &cairn::progress::Progress) -> ExitCode {
    use std::sync::atomic::Ordering::Relaxed;
    errln!(
        "interrupted: {} in {} packs kept; run the {what} again to continue",
        indicatif::HumanBytes(progress.added_bytes.load(Relaxed)),
        progress.added_packs.load(Relaxed)
    );
    ExitCode::from(cairn::interrupt::EXIT_CODE)
}

/// The one error of a `run` ("restore", "sync") into `target` that stopped on a full
/// filesystem: where it stopped, what it wrote (`done`, a sentence), what was not `past`
/// ("restored"), how much more free space that needs, and how to go on (`again`).
fn out_of_space_error(
    full: &cairn::space::OutOfSpace,
    target: &Path,
    run: &str,
    past: &str,
    done: &str,
    again: &str,
) -> anyhow::Error {
    use indicatif::HumanBytes;
    anyhow::anyhow!(
        "no space left on device: the {run} into {} stopped while writing {} (that file was \
         not left behind). {done}; not {past}: the rest, {}. About {} more free space is \
         needed ({} free now): free some, or {run} elsewhere, then run the {run} again{again}.",
        target.display(),
        full.path.display(),
        HumanBytes(full.bytes_missing),
        HumanBytes(full.bytes_needed),
        HumanBytes(full.free_bytes.unwrap_or(0))
    )
}

/// Says on stderr which entries a run into a directory left out and why (a device node when
/// not root); returns the lines, "PATH (why)", for a JSON report.
fn report_skipped(skipped: &[cairn::error::PathError]) -> Vec<String> {
    let lines: Vec<String> = skipped
        .iter()
        .map(|s| format!("{} ({})", s.path.display(), s.message))
        .collect();
    for line in &lines {
        errln!("skipped: {line}");
    }
    lines
}

/// Whether to draw progress: stderr is a terminal and the output is not JSON.
fn show_progress(global: &GlobalArgs, json: bool) -> bool {
    !json && !global.quiet && std::io::stderr().is_terminal()
}

/// cairn's directory of configuration: `$XDG_CONFIG_HOME/cairn`, else `~/.config/cairn`;
/// `unknown` says what to do when neither variable is set.
fn config_dir(unknown: &str) -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("cairn"));
    }
    let home = std::env::var_os("HOME").with_context(|| unknown.to_owned())?;
    Ok(PathBuf::from(home).join(".config/cairn"))
}

/// `text` with control characters (a terminal's escape sequences among them) shown as `?`:
/// names from a repository or a source are printed for a person, never obeyed by the terminal.
/// All text output goes through it (`outln!`, `errln!`, the listings); JSON output is exact.
pub(crate) fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    match text.chars().any(char::is_control) {
        false => std::borrow::Cow::Borrowed(text),
        true => text
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect::<String>()
            .into(),
    }
}

/// `text` line by line, each `printable`: for text whose lines are its own (a TOML error's
/// pointer at the place, plans as TOML) around names it may hold.
pub(crate) fn printable_lines(text: &str) -> String {
    text.lines().map(printable).collect::<Vec<_>>().join("\n")
}

/// The short ids of the checkpoints at `indices` of `catalogue`, the first `shown` of them
/// and how many more: `1a2b3c4d 5e6f7a8b and 3 more`.
fn short_ids(
    catalogue: &[std::sync::Arc<cairn::checkpoint::Summary>],
    indices: &[usize],
    shown: usize,
) -> String {
    let ids: Vec<String> = indices
        .iter()
        .take(shown)
        .map(|&i| catalogue[i].id.short())
        .collect();
    match indices.len().saturating_sub(shown) {
        0 => ids.join(" "),
        more => format!("{} and {more} more", ids.join(" ")),
    }
}

/// Prints `value` as pretty JSON on stdout.
fn print_json(value: &impl serde::Serialize) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    // Into an `io::Error` so that a closed pipe is recognised as one.
    serde_json::to_writer_pretty(&mut out, value).map_err(std::io::Error::from)?;
    writeln!(out)?;
    Ok(())
}

/// `--host`, `--path` and `--tag`: which checkpoints a command considers, and so which one
/// `latest` names.
#[derive(Debug, Default, Args)]
struct FilterArgs {
    /// Only checkpoints of this host (repeatable: any of them)
    #[arg(long = "host", value_name = "HOST")]
    hosts: Vec<String>,
    /// Only checkpoints whose backed-up paths include this one (repeatable: all of them)
    #[arg(long = "path", value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Only checkpoints with this tag; `a,b` needs both, a repeated --tag means either
    #[arg(long = "tag", value_name = "TAG[,TAG…]")]
    tags: Vec<String>,
}

impl FilterArgs {
    fn filter(&self) -> Result<cairn::checkpoint::CheckpointFilter> {
        let paths = self
            .paths
            .iter()
            .map(|path| {
                let clean = cairn::backup::clean_path(path)
                    .with_context(|| format!("resolving --path {}", path.display()))?;
                Ok(clean.to_string_lossy().into_owned())
            })
            .collect::<Result<_>>()?;
        Ok(cairn::checkpoint::CheckpointFilter {
            hosts: self.hosts.clone(),
            paths,
            tag_groups: self
                .tags
                .iter()
                .map(|group| group.split(',').map(str::to_owned).collect())
                .collect(),
        })
    }
}

/// Resolves a checkpoint reference among the checkpoints `filters` lets through. When a
/// bare `latest` picks one of several series (`Checkpoint::series`), a note on stderr says
/// which, since the newest checkpoint of a repository may be of another source than
/// expected; the catalogue it is counted from is the one `latest` is taken from.
fn resolve_checkpoint(repo: &Repository, reference: &str, filters: &FilterArgs) -> Result<Stored> {
    let filter = filters.filter()?;
    if reference != "latest" || !filter.is_empty() {
        return Ok(cairn::checkpoint::resolve_matching(
            repo, reference, &filter,
        )?);
    }
    let catalogue = cairn::checkpoint::list_shared(repo)?;
    let Some(newest) = catalogue.last() else {
        // None at all: the error says so.
        return Ok(cairn::checkpoint::resolve(repo, reference)?);
    };
    let found = Stored {
        id: newest.id,
        record: repo.catalogue().record(repo, newest)?,
    };
    let labels: std::collections::HashSet<_> = catalogue.iter().map(|s| &s.label).collect();
    let series: std::collections::BTreeSet<_> = labels.iter().map(|l| l.series()).collect();
    if series.len() > 1 {
        errln!(
            "note: latest is {} of {} {}, the newest of {} series; --host, --path or --tag choose another",
            found.id.short(),
            found.record.host,
            found.record.paths.join(" "),
            series.len()
        );
    }
    Ok(found)
}

/// Splits `CKPT[:PATH]`.
fn split_reference(reference: &str) -> (&str, &str) {
    reference.split_once(':').unwrap_or((reference, ""))
}
