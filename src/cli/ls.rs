//! `cairn ls`: the entries of a directory in a checkpoint (`-r` for everything below it).

use super::{GlobalArgs, print_json, split_reference};
use anyhow::Result;
use cairn::repo::Repository;
use cairn::timestamp;
use cairn::tree::{Entry, EntryKind, find_entry, load_tree};
use clap::Args;
use serde_json::{Value, json};
use std::io::Write;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct LsArgs {
    /// CKPT[:PATH] — a checkpoint reference (id, prefix or `latest`) and a path in it
    reference: String,
    /// List everything below the directory
    #[arg(short, long)]
    recursive: bool,
    /// Print a JSON array instead of text
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    filters: super::FilterArgs,
}

/// `rwxr-xr-x` for permission bits, with setuid/setgid/sticky.
fn mode_string(entry: &Entry) -> String {
    let mut out = String::with_capacity(10);
    out.push(entry.type_char());
    let special = [(0o4000, 's'), (0o2000, 's'), (0o1000, 't')];
    for (i, (bit, letter)) in special.iter().enumerate() {
        let shift = 6 - 3 * i;
        let bits = (entry.mode >> shift) & 7;
        out.push(if bits & 4 != 0 { 'r' } else { '-' });
        out.push(if bits & 2 != 0 { 'w' } else { '-' });
        let exec = bits & 1 != 0;
        out.push(match (entry.mode & bit != 0, exec) {
            (true, true) => *letter,
            (true, false) => letter.to_ascii_uppercase(),
            (false, true) => 'x',
            (false, false) => '-',
        });
    }
    out
}

/// The kind of an entry as `--json` names it.
pub(super) fn type_name(entry: &Entry) -> &'static str {
    match entry.kind {
        EntryKind::File(_) => "file",
        EntryKind::Dir(_) => "dir",
        EntryKind::Symlink(_) => "symlink",
        EntryKind::Fifo => "fifo",
        EntryKind::CharDevice(_) => "chardev",
        EntryKind::BlockDevice(_) => "blockdev",
    }
}

fn entry_json(path: &str, entry: &Entry) -> Value {
    let mut value = json!({
        "path": path,
        "name": entry.name_lossy(),
        "type": type_name(entry),
        "mode": entry.mode,
        "uid": entry.uid,
        "gid": entry.gid,
        "user": entry.user,
        "group": entry.group,
        "size": entry.size,
        "mtime": timestamp::rfc3339_nanos(entry.mtime_ns),
    });
    if let EntryKind::Symlink(target) = &entry.kind {
        value["target"] = json!(String::from_utf8_lossy(target));
    }
    value
}

struct Lister<'a> {
    repo: &'a Repository,
    recursive: bool,
    json: Option<Vec<Value>>,
    out: std::io::StdoutLock<'static>,
}

impl Lister<'_> {
    /// Shows the entries of `tree`, below `prefix`, and with `recursive` everything below
    /// them, each directory followed by its contents. The walk keeps its own stack of open
    /// directories, so a tree nested however deep is listed without exhausting the call stack.
    fn list_dir(&mut self, tree: &cairn::id::TreeId, prefix: &str) -> Result<()> {
        let mut open = vec![(
            load_tree(self.repo, tree)?.entries.into_iter(),
            prefix.to_owned(),
        )];
        while let Some((entries, prefix)) = open.last_mut() {
            let Some(entry) = entries.next() else {
                open.pop();
                continue;
            };
            let path = format!("{prefix}{}", entry.name_lossy());
            self.show(&path, &entry)?;
            if let (true, EntryKind::Dir(subtree)) = (self.recursive, &entry.kind) {
                let below = load_tree(self.repo, subtree)?.entries.into_iter();
                open.push((below, format!("{path}/")));
            }
        }
        Ok(())
    }

    fn show(&mut self, path: &str, entry: &Entry) -> Result<()> {
        if let Some(rows) = &mut self.json {
            rows.push(entry_json(path, entry));
            return Ok(());
        }
        let owner = entry.user.clone().unwrap_or_else(|| entry.uid.to_string());
        let group = entry.group.clone().unwrap_or_else(|| entry.gid.to_string());
        let target = match &entry.kind {
            EntryKind::Symlink(t) => format!(" -> {}", String::from_utf8_lossy(t)),
            _ => String::new(),
        };
        let line = format!(
            "{} {:<8} {:<8} {:>12} {} {path}{target}",
            mode_string(entry),
            owner,
            group,
            entry.size,
            timestamp::date_time(entry.mtime_ns)
        );
        writeln!(self.out, "{}", super::printable(&line))?;
        Ok(())
    }
}

pub fn run(global: &GlobalArgs, args: LsArgs) -> Result<ExitCode> {
    let (repo, _lock) = global.open_to_read("ls")?;
    let (reference, path) = split_reference(&args.reference);
    let record = super::resolve_checkpoint(&repo, reference, &args.filters)?.record;
    let entry = find_entry(&repo, record.root_entry(), path)?;
    let mut lister = Lister {
        repo: &repo,
        recursive: args.recursive,
        json: args.json.then(Vec::new),
        out: std::io::stdout().lock(),
    };
    match &entry.kind {
        EntryKind::Dir(tree) => {
            let prefix = path.trim_matches('/');
            let prefix = if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            };
            lister.list_dir(tree, &prefix)?
        }
        _ => lister.show(path.trim_matches('/'), &entry)?,
    }
    if let Some(rows) = lister.json.take() {
        drop(lister);
        print_json(&rows)?;
    }
    Ok(ExitCode::SUCCESS)
}
