//! `cairn backup`: one new checkpoint of the given paths, with progress on a terminal and a
//! cost summary (bytes read, bytes added, duration). Exit 3 when the checkpoint was saved but
//! some files could not be read; 130 when SIGINT or SIGTERM stopped it, after saying what was
//! kept for the next run.

use super::{GlobalArgs, print_json, show_progress};
use anyhow::{Context, Result};
use cairn::backup::{self, BackupOptions, Progress};
use clap::Args;
use indicatif::HumanBytes;
use serde_json::json;
use std::io::Read;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Paths to back up
    #[arg(required_unless_present_any = ["files_from", "stdin", "stdin_filename"])]
    paths: Vec<PathBuf>,
    /// Back up standard input as one file (a dump piped in: `pg_dump db | cairn backup
    /// --stdin --stdin-filename db.sql`)
    #[arg(long, conflicts_with_all = ["paths", "files_from"])]
    stdin: bool,
    /// The name of the file --stdin makes (the checkpoint's path is /NAME; default: stdin);
    /// implies --stdin
    #[arg(long, value_name = "NAME", conflicts_with_all = ["paths", "files_from"])]
    stdin_filename: Option<String>,
    /// Tag the checkpoint (repeatable)
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Leave out what matches this pattern (repeatable): `*.o` a name anywhere, `/build` or
    /// `src/gen` a path below the backup root, `cache/` directories only
    #[arg(long = "exclude", value_name = "PATTERN")]
    excludes: Vec<String>,
    /// Read exclude patterns from FILE, one per line (blank lines and lines starting with
    /// `#` are skipped; repeatable)
    #[arg(long = "exclude-file", value_name = "FILE")]
    exclude_files: Vec<PathBuf>,
    /// Leave out directories holding a CACHEDIR.TAG file (bford.info/cachedir)
    #[arg(long)]
    exclude_caches: bool,
    /// Do not cross filesystem boundaries: a mount point inside is kept, empty
    #[arg(short = 'x', long)]
    one_file_system: bool,
    /// Back up the paths listed in FILE (one per line; `-` reads stdin), below their
    /// deepest common directory, which the checkpoint records as its path
    #[arg(long = "files-from", value_name = "FILE")]
    files_from: Vec<PathBuf>,
    /// The --files-from lists are separated by NUL bytes, not lines (`find -print0`)
    #[arg(short = '0', long = "null", requires = "files_from")]
    null: bool,
    /// Scan and chunk, write nothing, report what would be added
    #[arg(long)]
    dry_run: bool,
    /// Print one JSON object instead of text
    #[arg(long)]
    json: bool,
    /// Host name to record (default: this machine's)
    #[arg(long)]
    host: Option<String>,
    /// Run at nice 19 and idle I/O priority with one read at a time, so people using the
    /// machine barely notice
    #[arg(long)]
    low_priority: bool,
    /// Read source files at most this fast, in bytes per second (e.g. 20M, 512K)
    #[arg(long, value_name = "RATE", value_parser = super::rate)]
    limit_rate: Option<u64>,
}

/// The items of list file `file` (`-`: stdin), split at `separator`; lines lose a trailing
/// carriage return.
fn read_list(file: &Path, separator: u8) -> Result<Vec<Vec<u8>>> {
    let bytes = if file == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::stdin().read_to_end(&mut bytes)?;
        bytes
    } else {
        std::fs::read(file).with_context(|| format!("reading list {}", file.display()))?
    };
    Ok(bytes
        .split(|&b| b == separator)
        .map(|item| match separator {
            b'\n' => item.strip_suffix(b"\r").unwrap_or(item).to_vec(),
            _ => item.to_vec(),
        })
        .collect())
}

pub fn run(global: &GlobalArgs, args: BackupArgs) -> Result<ExitCode> {
    if args.low_priority {
        cairn::fs::throttle::lower_priority()?;
    }
    let mut options = BackupOptions::new(args.paths);
    options.tags = args.tags;
    options.excludes = args.excludes;
    for file in &args.exclude_files {
        options
            .excludes
            .extend(read_list(file, b'\n')?.into_iter().filter_map(|line| {
                let line = String::from_utf8_lossy(&line).trim().to_owned();
                (!line.is_empty() && !line.starts_with('#')).then_some(line)
            }));
    }
    for file in &args.files_from {
        let separator = if args.null { b'\0' } else { b'\n' };
        options.files_from.extend(
            read_list(file, separator)?
                .into_iter()
                .filter(|path| !path.is_empty() && (args.null || !path.starts_with(b"#")))
                .map(|path| PathBuf::from(std::ffi::OsString::from_vec(path))),
        );
    }
    options.exclude_caches = args.exclude_caches;
    options.one_file_system = args.one_file_system;
    options.read_limit = args.limit_rate;
    options.one_read_at_a_time = args.low_priority;
    if let Some(host) = args.host {
        options.host = host;
    }
    if !args.dry_run {
        cairn::interrupt::install()?;
    }
    let progress = Progress::default();
    let draw = show_progress(global, args.json);
    let done = std::sync::atomic::AtomicBool::new(false);
    let outcome = std::thread::scope(|scope| {
        if draw {
            scope.spawn(|| super::draw_progress("backup", &progress, &done));
        }
        let open = || global.open_for(args.dry_run);
        let name = args.stdin_filename.as_deref().unwrap_or("stdin");
        let outcome = match args.stdin || args.stdin_filename.is_some() {
            true => backup::run_stream(open, std::io::stdin(), name, &options, &progress),
            false => backup::run_opening(open, &options, &progress),
        };
        done.store(true, Ordering::Relaxed);
        outcome
    });
    let outcome = match outcome {
        Err(_) if cairn::interrupt::requested() => {
            return Ok(super::interrupted("backup", &progress));
        }
        outcome => outcome?,
    };
    for error in &outcome.errors {
        errln!(
            "warning: {}: {} (not in the checkpoint)",
            error.path.display(),
            error.message
        );
    }
    let stats = &outcome.checkpoint.stats;
    if args.json {
        print_json(&json!({
            "id": outcome.id.map(|id| id.to_hex()),
            "short_id": outcome.id.map(|id| id.short()),
            "dry_run": args.dry_run,
            "time": outcome.checkpoint.time,
            "parent": outcome.checkpoint.parent,
            "tree": outcome.checkpoint.tree,
            "files": stats.files,
            "dirs": stats.dirs,
            "bytes": stats.bytes,
            "bytes_read": stats.bytes_read,
            "added_bytes": stats.added_bytes,
            "added_blobs": stats.added_blobs,
            "duration_ms": stats.duration_ms,
            // A count, as in the checkpoint's stats (`list --json`); the paths are `unreadable`.
            "errors": outcome.errors.len(),
            "unreadable": outcome.errors,
            "unmatched_excludes": outcome.unmatched_excludes,
        }))?;
    } else {
        let seconds = stats.duration_ms as f64 / 1000.0;
        if let Some(id) = outcome.id {
            outln!("{id}");
        }
        errln!(
            "{} {}, {}, {}: read {}, {} {} to the repository, in {seconds:.1}s",
            if args.dry_run {
                "dry run:"
            } else {
                "checkpoint saved:"
            },
            super::counted(stats.files, "file"),
            super::counted(stats.dirs, "dir"),
            HumanBytes(stats.bytes),
            HumanBytes(stats.bytes_read),
            if args.dry_run { "would add" } else { "added" },
            HumanBytes(stats.added_bytes),
        );
    }
    if outcome.errors.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        errln!(
            "{} could not be read: not in the checkpoint",
            super::counted(outcome.errors.len(), "path")
        );
        Ok(ExitCode::from(3))
    }
}
