//! `cairn key`: the passwords of a password-mode repository. `list` shows its keys and marks
//! the one the password opened, `add` gives it another password, `passwd` changes the password
//! in use (the new key is written and checked before the old one is removed, so an interruption
//! leaves both passwords working, never neither) and `remove` deletes a key but never the last.
//! The new password comes from `--new-password-file`, else `CAIRN_NEW_PASSWORD`, else a prompt.

use super::{GlobalArgs, print_json, prompt_password, read_password_file};
use anyhow::{Context, Result, bail};
use cairn::repo::Repository;
use cairn::repo::keys::{self, KeyInfo};
use clap::{Args, Subcommand};
use serde_json::json;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct KeyArgs {
    #[command(subcommand)]
    command: KeyCommand,
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// List the keys; `*` marks the one the password opened
    List {
        /// Print a JSON array instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Add another password that opens the repository
    Add {
        #[command(flatten)]
        new_password: NewPasswordArgs,
    },
    /// Change the password that opened the repository (no data is rewritten)
    Passwd {
        #[command(flatten)]
        new_password: NewPasswordArgs,
        /// Say what would happen and change nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Remove a key; the last one is never removed
    Remove {
        /// The key: a full id or at least 4 hex digits of one (`cairn key list` shows them)
        id: String,
        /// Say what would happen and change nothing
        #[arg(long)]
        dry_run: bool,
    },
}

/// Where the new password comes from.
#[derive(Debug, Args)]
struct NewPasswordArgs {
    /// Read the new password from this file (first line); `CAIRN_NEW_PASSWORD` also works
    #[arg(long)]
    new_password_file: Option<PathBuf>,
}

impl NewPasswordArgs {
    /// The new password from the file, the environment, or a prompt asked twice.
    fn read(&self) -> Result<Vec<u8>> {
        let password = if let Some(file) = &self.new_password_file {
            read_password_file(file)?
        } else if let Some(password) = std::env::var_os("CAIRN_NEW_PASSWORD") {
            std::os::unix::ffi::OsStringExt::into_vec(password)
        } else if std::io::stdin().is_terminal() {
            prompt_password("new password", true)?
        } else {
            bail!(
                "a new password is needed: pass --new-password-file FILE, set CAIRN_NEW_PASSWORD, \
                 or run on a terminal"
            );
        };
        keys::check_new_password(&password)?;
        Ok(password)
    }
}

pub fn run(global: &GlobalArgs, args: KeyArgs) -> Result<ExitCode> {
    // Checked before opening, so a keyfile-mode repository is named as such rather than
    // asking for its key file.
    let backend = global.backend()?;
    keys::ensure_password_mode(
        &Repository::read_config(backend.as_ref())?,
        &backend.location(),
    )?;
    let repo = global.open()?;
    match args.command {
        KeyCommand::List { json } => list(&repo, json),
        KeyCommand::Add { new_password } => add(&repo, &new_password),
        KeyCommand::Passwd {
            new_password,
            dry_run,
        } => passwd(&repo, &new_password, dry_run),
        KeyCommand::Remove { id, dry_run } => remove(&repo, &id, dry_run),
    }
}

fn list(repo: &Repository, json: bool) -> Result<ExitCode> {
    let all = repo.keys()?;
    if json {
        let rows: Vec<_> = all
            .iter()
            .map(|key| {
                json!({
                    "id": key.id,
                    "short_id": key.short_id(),
                    "created": key.created,
                    "host": key.host,
                    "opened": key.opened,
                    "unreadable": key.unreadable,
                })
            })
            .collect();
        return print_json(&rows).map(|_| ExitCode::SUCCESS);
    }
    outln!("  {:<8}  {:<19}  host", "id", "created");
    for key in &all {
        let created = key.created.get(..19).unwrap_or(&key.created);
        let host = match &key.unreadable {
            Some(problem) => format!("(unreadable: {problem})"),
            None => key.host.clone(),
        };
        outln!(
            "{} {:<8}  {:<19}  {host}",
            if key.opened { '*' } else { ' ' },
            key.short_id(),
            created.replace('T', " "),
        );
    }
    let noun = if all.len() == 1 { "key" } else { "keys" };
    errln!("{} {noun}; * marks the one your password opened", all.len());
    Ok(ExitCode::SUCCESS)
}

fn add(repo: &Repository, new_password: &NewPasswordArgs) -> Result<ExitCode> {
    let password = new_password.read()?;
    let id = repo.add_password(&password)?;
    outln!("{id}");
    errln!(
        "added key {}: the new password opens repository {} too",
        keys::short_key_id(&id),
        repo.backend().location()
    );
    Ok(ExitCode::SUCCESS)
}

fn passwd(repo: &Repository, new_password: &NewPasswordArgs, dry_run: bool) -> Result<ExitCode> {
    let old = repo
        .opened_key()
        .expect("a password-mode repository is opened by one of its keys")
        .to_owned();
    let password = new_password.read()?;
    if dry_run {
        errln!(
            "dry run: would add a key for the new password, then remove key {} (the current \
             password's); nothing was changed",
            keys::short_key_id(&old)
        );
        return Ok(ExitCode::SUCCESS);
    }
    // The new key first: until the old one is gone, both passwords open the repository.
    let added = repo.add_password(&password)?;
    let removal = repo
        .plan_replaced_key_removal()
        .and_then(|plan| repo.remove_key(&plan));
    removal.with_context(|| {
        format!(
            "the new password works (key {}), but the old key {} could not be removed, so the \
             old password still opens the repository; remove it with `cairn key remove {}`",
            keys::short_key_id(&added),
            keys::short_key_id(&old),
            keys::short_key_id(&old)
        )
    })?;
    outln!("{added}");
    errln!(
        "password changed: key {} replaces key {}; the old password no longer opens repository {}",
        keys::short_key_id(&added),
        keys::short_key_id(&old),
        repo.backend().location()
    );
    Ok(ExitCode::SUCCESS)
}

fn remove(repo: &Repository, id: &str, dry_run: bool) -> Result<ExitCode> {
    let plan = repo.plan_key_removal(id)?;
    let key = plan.key();
    if dry_run {
        errln!(
            "dry run: would remove key {}; nothing was changed",
            describe(key)
        );
        return Ok(ExitCode::SUCCESS);
    }
    repo.remove_key(&plan)?;
    errln!("removed key {}", describe(key));
    Ok(ExitCode::SUCCESS)
}

/// A key's short id with what is known of it, for messages.
fn describe(key: &KeyInfo) -> String {
    let mut about = Vec::new();
    if !key.created.is_empty() {
        about.push(format!("created {}", key.created));
    }
    if !key.host.is_empty() {
        about.push(format!("on {}", key.host));
    }
    if key.opened {
        about.push("the current password's".to_owned());
    }
    if key.unreadable.is_some() {
        about.push("unreadable".to_owned());
    }
    if about.is_empty() {
        key.short_id().to_owned()
    } else {
        format!("{} ({})", key.short_id(), about.join(", "))
    }
}
