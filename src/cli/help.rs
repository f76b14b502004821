//! What `--help` (and the man pages) end with, for every command: two or three examples,
//! and the environment variables the command reads, in one place so no command is left
//! without them.

use clap::{Command, CommandFactory};

/// Examples per command: the command line, and what it does.
const EXAMPLES: &[(&str, &[(&str, &str)])] = &[
    (
        "init",
        &[
            (
                "cairn init --repo /backup/repo",
                "a repository protected by a password",
            ),
            (
                "cairn init --repo s3:https://s3.example.net/bucket",
                "one in an S3 bucket",
            ),
        ],
    ),
    (
        "backup",
        &[
            (
                "cairn backup ~/work --exclude target/ --exclude '*.o'",
                "a directory, less build output",
            ),
            (
                "cairn backup --files-from list.txt --exclude-caches",
                "the paths a file lists",
            ),
            (
                "pg_dump db | cairn backup --stdin --stdin-filename db.sql",
                "a dump piped in",
            ),
        ],
    ),
    (
        "run",
        &[
            (
                "cairn run home",
                "the plan named home: back up, copy, verify, keep",
            ),
            (
                "cairn run home --json",
                "the same, reporting per target as JSON",
            ),
        ],
    ),
    (
        "status",
        &[
            (
                "cairn status",
                "every plan: newest checkpoint per target, and its age",
            ),
            ("cairn status home --json", "one plan, as JSON"),
        ],
    ),
    (
        "plans",
        &[
            (
                "cairn plans init home",
                "create the repositories a plan names",
            ),
            (
                "cairn plans recover --repo /backup/repo --write",
                "bring the plans back on a new machine",
            ),
        ],
    ),
    (
        "schedule",
        &[
            (
                "cairn schedule home",
                "run the plan at its schedule (systemd timer or cron)",
            ),
            ("cairn schedule home --remove", "stop running it"),
        ],
    ),
    (
        "list",
        &[
            ("cairn list", "every checkpoint, oldest first"),
            (
                "cairn list --host laptop --tag daily --json",
                "some of them, as JSON",
            ),
        ],
    ),
    (
        "ls",
        &[
            ("cairn ls latest", "the top of the newest checkpoint"),
            (
                "cairn ls -r 1a2b3c4d:etc",
                "everything below etc in one checkpoint",
            ),
        ],
    ),
    (
        "cat",
        &[
            ("cairn cat latest:etc/fstab", "one file's bytes"),
            ("cairn cat 1a2b3c4d:notes.txt | less", "an older version"),
        ],
    ),
    (
        "dump",
        &[
            (
                "cairn dump latest > home.tar",
                "the whole newest checkpoint as a tar",
            ),
            (
                "cairn dump 1a2b3c4d:src/project | tar -x",
                "one directory, unpacked here",
            ),
            ("cairn dump latest:etc/fstab", "one file's bytes"),
        ],
    ),
    (
        "find",
        &[
            ("cairn find '*.pdf'", "every PDF, in every checkpoint"),
            (
                "cairn find /etc/fstab --json",
                "one path below the backup root, as JSON",
            ),
            (
                "cairn find -i 'report*' --newest 7d",
                "modified in the last seven days, any case",
            ),
        ],
    ),
    (
        "restore",
        &[
            ("cairn restore latest --target /tmp/back", "everything"),
            (
                "cairn restore latest:home/me/docs --target /tmp/docs",
                "one directory",
            ),
            (
                "cairn restore latest --target /tmp/pdfs --include '*.pdf'",
                "the PDFs, where they were",
            ),
        ],
    ),
    (
        "check",
        &[
            ("cairn check", "the structure: records, trees, index"),
            (
                "cairn check --read-data",
                "and every blob, read and verified",
            ),
        ],
    ),
    (
        "diff",
        &[
            (
                "cairn diff 1a2b3c4d latest",
                "what changed since an older checkpoint",
            ),
            ("cairn diff 1a2b3c4d latest --json", "the same as JSON"),
        ],
    ),
    (
        "mount",
        &[
            (
                "cairn mount /mnt/backups",
                "every checkpoint, browsable; Ctrl-C unmounts",
            ),
            (
                "cp /mnt/backups/latest/notes.txt ~/",
                "then restore with cp",
            ),
        ],
    ),
    (
        "history",
        &[
            (
                "cairn history notes.txt",
                "every version of a file, oldest first",
            ),
            ("cairn history src/main.rs --json", "as JSON"),
        ],
    ),
    (
        "sync",
        &[
            (
                "cairn sync ~/work /backup/repo",
                "a directory into a repository (a checkpoint)",
            ),
            (
                "cairn sync /backup/repo::latest /srv/mirror --delete",
                "a checkpoint into a directory, like rsync",
            ),
            (
                "cairn sync https://host:8443/source/home /backup/repo",
                "pull a served directory",
            ),
        ],
    ),
    (
        "serve",
        &[
            (
                "cairn serve --repo /backup/repo --listen 0.0.0.0:8443 --token-file t --tls-cert c.pem --tls-key k.pem",
                "a repository over HTTPS",
            ),
            (
                "cairn serve --repo /backup/repo --listen 0.0.0.0:8443 --token-file t --tls-self-signed",
                "with a certificate it makes; clients pin the fingerprint it prints",
            ),
        ],
    ),
    (
        "forget",
        &[
            (
                "cairn forget --keep-daily 7 --keep-weekly 5 --prune",
                "thin out, and free the space",
            ),
            ("cairn forget 1a2b3c4d", "remove one checkpoint"),
        ],
    ),
    (
        "tag",
        &[
            ("cairn tag latest --add keep", "mark the newest checkpoint"),
            (
                "cairn tag --tag daily --remove daily --add weekly",
                "every checkpoint tagged daily",
            ),
            (
                "cairn tag 1a2b3c4d --set release --set v2",
                "replace its tags",
            ),
        ],
    ),
    (
        "prune",
        &[
            ("cairn prune", "delete the data no checkpoint needs"),
            ("cairn prune --dry-run", "say what would be deleted"),
        ],
    ),
    (
        "repair",
        &[
            ("cairn repair index", "rebuild the index from the packs"),
            (
                "cairn repair checkpoints",
                "rewrite checkpoints that lost data, without it",
            ),
        ],
    ),
    (
        "unlock",
        &[
            ("cairn unlock", "remove the locks of runs that are gone"),
            (
                "cairn unlock --remove-all",
                "remove every lock (no run may be going on)",
            ),
        ],
    ),
    (
        "key",
        &[
            ("cairn key list", "the passwords that open the repository"),
            ("cairn key add", "another password"),
        ],
    ),
    (
        "stats",
        &[
            ("cairn stats", "sizes: restored, deduplicated, stored"),
            ("cairn stats --json", "with every checkpoint's sizes"),
        ],
    ),
    (
        "completions",
        &[
            (
                "cairn completions bash > /etc/bash_completion.d/cairn",
                "bash",
            ),
            ("cairn completions zsh > ~/.zfunc/_cairn", "zsh"),
        ],
    ),
    (
        "man",
        &[
            (
                "cairn man --dir /usr/local/share/man/man1",
                "install the man pages",
            ),
            (
                "cairn man --dir /tmp/man && man /tmp/man/cairn-backup.1",
                "read one",
            ),
        ],
    ),
];

/// What every command that opens a repository reads from the environment.
const ENVIRONMENT: &[(&str, &str)] = &[
    ("CAIRN_REPO", "the repository (--repo)"),
    ("CAIRN_PASSWORD", "its password"),
    (
        "CAIRN_PASSWORD_COMMAND",
        "a command printing its password (--password-command)",
    ),
    ("CAIRN_KEY_FILE", "its key file (--key-file)"),
    (
        "CAIRN_TOKEN",
        "the bearer token of a cairn serve (--token-file)",
    ),
    (
        "CAIRN_TLS_CA",
        "a certificate to trust for https:// (--tls-ca)",
    ),
    ("CAIRN_CACHE_DIR", "the local cache (--cache-dir)"),
    ("CAIRN_CONFIG", "the plans file (--config)"),
    (
        "AWS_ACCESS_KEY_ID",
        "S3 credentials, with AWS_SECRET_ACCESS_KEY",
    ),
    (
        "CAIRN_LOG",
        "what is logged, e.g. info or debug (overrides -v and -q)",
    ),
    ("NO_COLOR", "no colours in log lines"),
];

/// The command line with every command's examples and environment at the end of its help.
pub fn command() -> Command {
    let mut cli = super::Cli::command();
    // The global options are the top level's; each command reads their variables too.
    let globals: Vec<clap::Arg> = cli.get_arguments().cloned().collect();
    for (name, examples) in EXAMPLES {
        cli = cli.mut_subcommand(*name, |command| {
            let mut text = String::from("Examples:\n");
            for (line, what) in *examples {
                text.push_str(&format!("  {line}\n      {what}\n"));
            }
            text.push_str("\nEnvironment:\n");
            let own = command
                .get_arguments()
                .chain(globals.iter())
                .filter_map(|arg| {
                    let variable = arg.get_env()?.to_str()?.to_owned();
                    Some((
                        variable,
                        format!("as --{}", arg.get_id().as_str().replace('_', "-")),
                    ))
                });
            let common = ENVIRONMENT
                .iter()
                .map(|(v, what)| (v.to_string(), what.to_string()));
            let mut variables: Vec<(String, String)> = common.collect();
            for (variable, what) in own {
                if !variables.iter().any(|(listed, _)| *listed == variable) {
                    variables.push((variable, what));
                }
            }
            let width = variables.iter().map(|(v, _)| v.len()).max().unwrap_or(0);
            for (variable, what) in variables {
                text.push_str(&format!("  {variable:<width$}  {what}\n"));
            }
            let text = text.trim_end().to_owned();
            // A group's commands (`key add`, `repair packs`) end with the group's examples,
            // which show them.
            let children: Vec<String> = command
                .get_subcommands()
                .map(|child| child.get_name().to_owned())
                .collect();
            let mut command = command.after_help(text.clone());
            for child in children {
                command = command.mut_subcommand(child, |child| child.after_help(text.clone()));
            }
            command
        });
    }
    cli
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_has_examples_and_its_environment() {
        let cli = command();
        let commands = cli.get_subcommands().filter(|c| !c.is_hide_set());
        // With a group's own commands (`key add`, `repair packs`, `plans init`).
        let nested = commands.flat_map(|c| std::iter::once(c).chain(c.get_subcommands()));
        let mut checked = 0;
        for sub in nested.filter(|c| !c.is_hide_set() && c.get_name() != "help") {
            let help = sub
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            assert!(
                help.contains("Examples:\n  cairn"),
                "{}: {help}",
                sub.get_name()
            );
            let examples = (help.split("\n\nEnvironment:").next().unwrap_or_default())
                .lines()
                .filter(|line| line.starts_with("  ") && !line.starts_with("   "))
                .count();
            assert!((2..=3).contains(&examples), "{}: {help}", sub.get_name());
            assert!(help.contains("CAIRN_REPO"), "{}: {help}", sub.get_name());
            checked += 1;
        }
        assert!(
            checked > cli.get_subcommands().count(),
            "nested commands checked"
        );
    }
}
