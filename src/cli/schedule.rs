//! `cairn schedule PLAN [--remove]`: runs a plan at the times its `schedule` names, through
//! a systemd timer and service (the system's for root, the user's otherwise), or a crontab
//! line where systemd is not running. The run is low-priority (nice 19, idle I/O) and its
//! output goes where `journalctl` finds it: the unit's journal, or syslog for cron.

use super::GlobalArgs;
use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

#[derive(Debug, Args)]
pub struct ScheduleArgs {
    /// The plan, as named in the plans file
    plan: String,
    /// Remove the plan's timer (or crontab line) instead
    #[arg(long)]
    remove: bool,
    /// What runs it (default: systemd when it is running, else cron)
    #[arg(long, value_enum)]
    with: Option<Scheduler>,
    /// Write the systemd units into this directory and leave enabling them to you (for
    /// packaging, or to look first)
    #[arg(long, value_name = "DIR")]
    unit_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scheduler {
    Systemd,
    Cron,
}

pub fn run(global: &GlobalArgs, args: ScheduleArgs) -> Result<ExitCode> {
    let (config, origin, config_path) = super::plan::load_config(global)?;
    let plan = config.plan(&args.plan, &origin)?;
    let when = plan.schedule.as_deref().unwrap_or("daily");
    let unit = format!("cairn-plan-{}", args.plan);
    let scheduler = args.with.unwrap_or(
        if args.unit_dir.is_some() || Path::new("/run/systemd/system").is_dir() {
            Scheduler::Systemd
        } else {
            Scheduler::Cron
        },
    );
    let command = RunCommand {
        exe: std::env::current_exe().context("finding the cairn binary to schedule")?,
        config: std::path::absolute(&config_path)
            .with_context(|| format!("resolving {}", config_path.display()))?,
        cache: global.cache_root()?,
        plan: args.plan.clone(),
    };
    match scheduler {
        Scheduler::Systemd => {
            let systemd = Systemd::new(args.unit_dir.clone())?;
            if args.remove {
                systemd.remove(&unit)?;
            } else {
                systemd.install(&unit, when, &command)?;
            }
        }
        Scheduler::Cron => {
            let marker = format!("# {unit}");
            if args.remove {
                edit_crontab(&marker, None)?;
                errln!("removed the crontab line of plan {}", args.plan);
            } else {
                let line = format!("{} {} {marker}", cron_times(when)?, command.for_cron());
                edit_crontab(&marker, Some(&line))?;
                errln!(
                    "plan {} runs {when} from cron; its output goes to syslog \
                     (`journalctl -t {unit}`)",
                    args.plan
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The command a scheduled run is: this binary, the plans file and the cache as they are
/// now, whatever the scheduler's environment.
struct RunCommand {
    exe: PathBuf,
    config: PathBuf,
    cache: PathBuf,
    plan: String,
}

impl RunCommand {
    /// The command line, each word quoted by `quote`.
    fn line(&self, quote: fn(&str) -> String) -> String {
        let words = [
            &*self.exe.to_string_lossy(),
            "--config",
            &*self.config.to_string_lossy(),
            "--cache-dir",
            &*self.cache.to_string_lossy(),
            "run",
            &self.plan,
        ];
        words.map(quote).join(" ")
    }

    fn for_cron(&self) -> String {
        format!(
            "nice -n 19 ionice -c 3 {} 2>&1 | logger -t cairn-plan-{}",
            self.line(shell_word),
            self.plan
        )
    }
}

/// Whether `word` needs no quoting anywhere.
fn plain(word: &str) -> bool {
    !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:=@".contains(&b))
}

/// `word` quoted for sh when it holds anything but safe characters.
fn shell_word(word: &str) -> String {
    if plain(word) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// `word` quoted for a systemd `ExecStart=` (double quotes, backslash escapes, `%%` for `%`).
fn systemd_word(word: &str) -> String {
    let escaped = word.replace('%', "%%");
    if plain(word) {
        escaped
    } else {
        format!("\"{}\"", escaped.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// A cron time for a named schedule; cron has no calendar events.
fn cron_times(when: &str) -> Result<&'static str> {
    Ok(match when {
        "hourly" => "@hourly",
        "daily" => "@daily",
        "weekly" => "@weekly",
        "monthly" => "@monthly",
        other => bail!(
            "schedule {other:?} is a systemd calendar event, which cron cannot run: use hourly, \
             daily, weekly or monthly, or write the crontab line yourself"
        ),
    })
}

/// Replaces the crontab line ending in `marker` by `line` (or removes it).
fn edit_crontab(marker: &str, line: Option<&str>) -> Result<()> {
    let listed = Command::new("crontab")
        .arg("-l")
        .output()
        .context("running crontab: install cron, or use a systemd timer (--with systemd)")?;
    // `crontab -l` fails when there is no crontab yet.
    let current = if listed.status.success() {
        String::from_utf8_lossy(&listed.stdout).into_owned()
    } else {
        String::new()
    };
    let mut lines: Vec<&str> = current
        .lines()
        .filter(|l| !l.trim_end().ends_with(marker))
        .collect();
    lines.extend(line);
    let mut text = lines.join("\n");
    text.push('\n');
    let mut child = Command::new("crontab")
        .arg("-")
        .stdin(Stdio::piped())
        .spawn()
        .context("running crontab -")?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(text.as_bytes())
        .context("writing the crontab")?;
    let status = child.wait()?;
    if !status.success() {
        bail!("crontab - refused the new crontab ({status})");
    }
    Ok(())
}

/// Where units go and how they are enabled.
struct Systemd {
    dir: PathBuf,
    /// `None` with `--unit-dir`: the units are written and nothing else.
    systemctl: Option<Vec<&'static str>>,
}

impl Systemd {
    fn new(unit_dir: Option<PathBuf>) -> Result<Systemd> {
        if let Some(dir) = unit_dir {
            return Ok(Systemd {
                dir,
                systemctl: None,
            });
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            return Ok(Systemd {
                dir: "/etc/systemd/system".into(),
                systemctl: Some(vec![]),
            });
        }
        let config = match std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
            Some(dir) => PathBuf::from(dir),
            None => {
                PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".config")
            }
        };
        Ok(Systemd {
            dir: config.join("systemd/user"),
            systemctl: Some(vec!["--user"]),
        })
    }

    fn install(&self, unit: &str, when: &str, command: &RunCommand) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let plan = &command.plan;
        let service = format!(
            "[Unit]\n\
             Description=cairn plan {plan}\n\
             Wants=network-online.target\n\
             After=network-online.target\n\
             \n\
             [Service]\n\
             Type=oneshot\n\
             ExecStart={}\n\
             Nice=19\n\
             IOSchedulingClass=idle\n\
             CPUSchedulingPolicy=batch\n",
            command.line(systemd_word)
        );
        let timer = format!(
            "[Unit]\n\
             Description=cairn plan {plan}, {when}\n\
             \n\
             [Timer]\n\
             OnCalendar={when}\n\
             Persistent=true\n\
             RandomizedDelaySec=10min\n\
             \n\
             [Install]\n\
             WantedBy=timers.target\n"
        );
        self.write(&format!("{unit}.service"), &service)?;
        self.write(&format!("{unit}.timer"), &timer)?;
        match &self.systemctl {
            None => errln!(
                "wrote {unit}.service and {unit}.timer into {}: enable them with \
                 `systemctl enable --now {unit}.timer`",
                self.dir.display()
            ),
            Some(scope) => {
                systemctl(scope, &["daemon-reload"])?;
                systemctl(scope, &["enable", "--now", &format!("{unit}.timer")])?;
                errln!(
                    "plan {plan} runs {when} ({unit}.timer); its output: `journalctl {}-u {unit}`",
                    if scope.is_empty() { "" } else { "--user " }
                );
            }
        }
        Ok(())
    }

    fn remove(&self, unit: &str) -> Result<()> {
        if let Some(scope) = &self.systemctl {
            systemctl(scope, &["disable", "--now", &format!("{unit}.timer")])?;
        }
        for name in [format!("{unit}.timer"), format!("{unit}.service")] {
            match std::fs::remove_file(self.dir.join(&name)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing {name}"));
                }
                _ => {}
            }
        }
        if let Some(scope) = &self.systemctl {
            systemctl(scope, &["daemon-reload"])?;
        }
        errln!("removed {unit}.timer and {unit}.service");
        Ok(())
    }

    fn write(&self, name: &str, text: &str) -> Result<()> {
        let path = self.dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    }
}

fn systemctl(scope: &[&str], args: &[&str]) -> Result<()> {
    let status = Command::new("systemctl")
        .args(scope)
        .args(args)
        .status()
        .context("running systemctl")?;
    if !status.success() {
        bail!(
            "systemctl {} {} failed ({status})",
            scope.join(" "),
            args.join(" ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_for_the_shell_only_when_they_need_it() {
        assert_eq!(shell_word("/usr/bin/cairn"), "/usr/bin/cairn");
        assert_eq!(
            shell_word("/home/me/my plans.toml"),
            "'/home/me/my plans.toml'"
        );
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(systemd_word("/usr/bin/cairn"), "/usr/bin/cairn");
        assert_eq!(systemd_word("/a b/100%"), r#""/a b/100%%""#);
        assert_eq!(systemd_word(r#"say "hi"\"#), r#""say \"hi\"\\""#);
    }
}
