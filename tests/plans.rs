//! Plans through the command line: a configuration file with three targets (one of them a
//! server nobody answers at), created with `plans init`, run twice, and `status`.

mod common;

use common::*;
use std::fs;
use std::path::Path;

fn text(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A plan "home" backing `source` up into two local repositories (one opened with a password
/// file, one with a password command) and a served one at a port nobody listens on.
fn write_plan(sandbox: &Sandbox, source: &Path) -> std::path::PathBuf {
    fs::write(sandbox.path("a.pass"), "password of a\n").unwrap();
    fs::write(sandbox.path("token"), "some-token\n").unwrap();
    let config = sandbox.path("cairn.toml");
    fs::write(
        &config,
        format!(
            r#"
[plans.home]
sources = ["{source}"]
exclude = ["*.tmp"]
keep = {{ last = 1 }}

[[plans.home.targets]]
repo = "{a}"
password_file = "{a_pass}"

[[plans.home.targets]]
repo = "http://127.0.0.1:1/repo"
password_file = "{a_pass}"
token_file = "{token}"

[[plans.home.targets]]
repo = "{c}"
password_command = "echo password of c"
"#,
            source = text(source),
            a = text(&sandbox.path("repo-a")),
            a_pass = text(&sandbox.path("a.pass")),
            token = text(&sandbox.path("token")),
            c = text(&sandbox.path("repo-c")),
        ),
    )
    .unwrap();
    config
}

/// `cairn ARGS` with the plans file `config`, giving up quickly on what does not answer.
fn with_plans(sandbox: &Sandbox, config: &Path, args: &[&str]) -> std::process::Output {
    sandbox
        .cairn()
        .args(["--config", text(config), "--retry-for", "1s"])
        .args(args)
        .output()
        .unwrap()
}

/// The checkpoint ids `list --json` shows in `repo`, opened with `secret` (a password).
fn checkpoint_ids(sandbox: &Sandbox, repo: &Path, password: &str) -> Vec<String> {
    let output = sandbox
        .cairn()
        .env("CAIRN_PASSWORD", password)
        .args(["list", "--json", "--repo", text(repo)])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let list: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    json_strings(&list, "id")
        .into_iter()
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_plan_with_an_unreachable_target_puts_each_run_in_the_others_and_keeps_what_it_says() {
    let steps = Steps::new();
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    make_tree(&source);
    fs::write(source.join("scratch.tmp"), "left out").unwrap();
    let config = write_plan(&sandbox, &source);
    let plan = |args: &[&str]| with_plans(&sandbox, &config, args);

    steps.enter("plans init creates the reachable targets");
    let init = plan(&["plans", "init", "home"]);
    assert_eq!(init.status.code(), Some(3), "{}", stderr(&init));
    let said = stderr(&init);
    assert!(
        said.contains(&format!("{}: created", text(&sandbox.path("repo-a")))),
        "{said}"
    );
    assert!(
        said.contains(&format!("{}: created", text(&sandbox.path("repo-c")))),
        "{said}"
    );
    assert!(said.contains("http://127.0.0.1:1/repo: failed"), "{said}");

    steps.enter("the first run backs up into a, copies into c, and reports the server");
    let first = plan(&["run", "home"]);
    assert_eq!(first.status.code(), Some(3), "{}", stderr(&first));
    let first_id = String::from_utf8_lossy(&first.stdout).trim().to_owned();
    let said = stderr(&first);
    assert!(
        said.contains("checkpoint") && said.contains("in 2 of 3 targets"),
        "{said}"
    );
    assert!(said.contains("lacks http://127.0.0.1:1/repo"), "{said}");
    assert!(said.contains("copied and verified"), "{said}");
    let a = checkpoint_ids(&sandbox, &sandbox.path("repo-a"), "password of a");
    let c = checkpoint_ids(&sandbox, &sandbox.path("repo-c"), "password of c");
    assert_eq!(a, vec![first_id.clone()]);
    assert_eq!(c, a, "the copy keeps the checkpoint's id");

    steps.enter("the copy restores as the source was, without what the plan excludes");
    let restored = sandbox.path("restored");
    let restore = sandbox
        .cairn()
        .env("CAIRN_PASSWORD", "password of c")
        .args(["restore", "--repo", text(&sandbox.path("repo-c")), "latest"])
        .args(["--target", text(&restored)])
        .output()
        .unwrap();
    assert!(restore.status.success(), "{}", stderr(&restore));
    let kept = fs::metadata(&source).unwrap();
    fs::remove_file(source.join("scratch.tmp")).unwrap();
    use std::os::unix::fs::MetadataExt;
    set_mtime(&source, kept.mtime(), kept.mtime_nsec());
    assert_same_tree(&source, &restored);

    steps.enter("the second run copies only what changed and keeps one checkpoint");
    fs::write(source.join("new.txt"), "added after the first run").unwrap();
    let second = plan(&["run", "home", "--json"]);
    assert_eq!(second.status.code(), Some(3), "{}", stderr(&second));
    let report: serde_json::Value = serde_json::from_slice(&second.stdout).unwrap();
    let second_id = report["id"].as_str().unwrap().to_owned();
    let targets = report["targets"].as_array().unwrap();
    assert_eq!(targets[0]["backed_up_here"], true);
    assert_eq!(targets[0]["forgotten"], 1);
    assert_eq!(targets[1]["holds_checkpoint"], false);
    assert!(
        targets[1]["error"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1:1")
    );
    assert_eq!(targets[2]["holds_checkpoint"], true);
    assert_eq!(targets[2]["forgotten"], 1);
    let copied = targets[2]["bytes_copied"].as_u64().unwrap();
    assert!(
        copied < 4096,
        "{copied} bytes copied for one small new file"
    );
    assert_eq!(
        checkpoint_ids(&sandbox, &sandbox.path("repo-a"), "password of a"),
        vec![second_id.clone()]
    );
    assert_eq!(
        checkpoint_ids(&sandbox, &sandbox.path("repo-c"), "password of c"),
        vec![second_id.clone()]
    );

    steps.enter("status names the newest checkpoint and the target that lacks it");
    let status = plan(&["status"]);
    assert_eq!(status.status.code(), Some(3), "{}", stderr(&status));
    let shown = String::from_utf8_lossy(&status.stdout).into_owned();
    let short = &second_id[..8];
    assert!(
        shown.contains(&format!("home: {short} is not in every target")),
        "{shown}"
    );
    assert!(shown.contains("1 checkpoint, latest"), "{shown}");
    // With its time, its age and its size.
    let latest = shown
        .lines()
        .find(|line| line.contains(&format!("latest {short} ")))
        .unwrap_or_else(|| panic!("{shown}"));
    assert!(
        latest.contains(" ago, ") && latest.ends_with("B)"),
        "{latest}"
    );
    assert!(
        shown.contains("http://127.0.0.1:1/repo: unreadable"),
        "{shown}"
    );

    steps.enter("a target gives the plan back, as the plans file said it");
    let recovered = sandbox
        .cairn()
        .env("CAIRN_PASSWORD", "password of c")
        .args(["plans", "recover", "--repo", text(&sandbox.path("repo-c"))])
        .output()
        .unwrap();
    assert!(recovered.status.success(), "{}", stderr(&recovered));
    let as_written: toml::Table = fs::read_to_string(&config).unwrap().parse().unwrap();
    let as_kept: toml::Table = String::from_utf8_lossy(&recovered.stdout).parse().unwrap();
    assert_eq!(
        as_kept["plans"]["home"]["sources"],
        as_written["plans"]["home"]["sources"]
    );
    assert_eq!(
        as_kept["plans"]["home"]["targets"],
        as_written["plans"]["home"]["targets"]
    );

    steps.enter("recover --write writes a new plans file and never over one");
    let new_machine = sandbox.path("new-machine/cairn.toml");
    let recover_into_new_machine = || {
        sandbox
            .cairn()
            .env("CAIRN_PASSWORD", "password of a")
            .args([
                "--config",
                text(&new_machine),
                "plans",
                "recover",
                "--write",
            ])
            .args(["--repo", text(&sandbox.path("repo-a"))])
            .output()
            .unwrap()
    };
    let written = recover_into_new_machine();
    assert!(written.status.success(), "{}", stderr(&written));
    let status = with_plans(&sandbox, &new_machine, &["status", "home"]);
    assert!(
        String::from_utf8_lossy(&status.stdout).contains(short),
        "the recovered plan finds the checkpoints: {}",
        stderr(&status)
    );
    assert_fails(
        &recover_into_new_machine(),
        1,
        "a plans file is there already",
    );
}

#[test]
fn a_plans_file_with_a_misspelt_key_or_an_unknown_plan_is_refused_by_name() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    fs::create_dir_all(&source).unwrap();
    let config = write_plan(&sandbox, &source);
    let unknown = sandbox.run(&["--config", text(&config), "run", "work"]);
    assert_fails(&unknown, 1, "has no plan \"work\"; its plans: home");
    let misspelt = fs::read_to_string(&config)
        .unwrap()
        .replace("exclude", "excludes");
    fs::write(&config, misspelt).unwrap();
    let refused = sandbox.run(&["--config", text(&config), "run", "home"]);
    assert_fails(&refused, 1, "excludes");
    // The parser's pointer at the place keeps its own lines.
    let said = stderr(&refused);
    assert!(
        said.lines().any(|line| line.trim_end().ends_with('^')),
        "{said}"
    );
    let missing = sandbox.run(&["--config", text(&sandbox.path("nowhere.toml")), "status"]);
    assert_fails(&missing, 1, "nowhere.toml");
}

#[test]
fn an_empty_password_file_is_said_to_be_empty_not_a_wrong_password() {
    let sandbox = Sandbox::new();
    let repo = sandbox.path("repo");
    fs::write(sandbox.path("pass"), "secret\n").unwrap();
    fs::write(sandbox.path("empty"), "").unwrap();
    let pass = text(&sandbox.path("pass")).to_owned();
    sandbox.ok(&["init", "--repo", text(&repo), "--password-file", &pass]);
    let empty = sandbox.run(&[
        "list",
        "--repo",
        text(&repo),
        "--password-file",
        text(&sandbox.path("empty")),
    ]);
    assert_fails(&empty, 1, "is empty: write the password on its first line");
    let by_command = sandbox.run(&[
        "list",
        "--repo",
        text(&repo),
        "--password-command",
        "printf 'secret\\n'",
    ]);
    assert!(by_command.status.success(), "{}", stderr(&by_command));
}

#[test]
fn a_schedule_writes_units_or_a_crontab_line_whose_command_runs_the_plan() {
    let steps = Steps::new();
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    make_tree(&source);
    let config = write_plan(&sandbox, &source);
    let units = sandbox.path("units");
    let cairn = |args: &[&str]| with_plans(&sandbox, &config, args);
    let _ = cairn(&["plans", "init", "home"]);

    steps.enter("systemd units, low-priority, running this binary on this plans file");
    let written = cairn(&["schedule", "home", "--unit-dir", text(&units)]);
    assert!(written.status.success(), "{}", stderr(&written));
    let service = fs::read_to_string(units.join("cairn-plan-home.service")).unwrap();
    let timer = fs::read_to_string(units.join("cairn-plan-home.timer")).unwrap();
    assert!(timer.contains("OnCalendar=daily\n"), "{timer}");
    assert!(service.contains("Nice=19\n") && service.contains("IOSchedulingClass=idle\n"));
    let exec = service
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart line");
    assert!(
        exec.starts_with(env!("CARGO_BIN_EXE_cairn")) && exec.ends_with(" run home"),
        "{exec}"
    );
    if std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok()
    {
        let verified = std::process::Command::new("systemd-analyze")
            .args(["verify", text(&units.join("cairn-plan-home.timer"))])
            .output()
            .unwrap();
        assert!(verified.status.success(), "{}", stderr(&verified));
    }

    steps.enter("the scheduled command runs the plan");
    let ran = std::process::Command::new("sh")
        .args(["-c", exec])
        .env_remove("CAIRN_PASSWORD")
        .output()
        .unwrap();
    assert_eq!(ran.status.code(), Some(3), "{}", stderr(&ran));
    assert_eq!(
        checkpoint_ids(&sandbox, &sandbox.path("repo-c"), "password of c").len(),
        1
    );

    steps.enter("--remove takes the units away");
    let removed = cairn(&["schedule", "home", "--remove", "--unit-dir", text(&units)]);
    assert!(removed.status.success(), "{}", stderr(&removed));
    assert!(!units.join("cairn-plan-home.timer").exists());
    assert!(!units.join("cairn-plan-home.service").exists());

    steps.enter("cron: one line, replaced on a second schedule, gone on --remove");
    let crontab = |args: &[&str]| std::process::Command::new("crontab").args(args).output();
    let before = crontab(&["-l"]).expect("crontab (cron) is installed by scripts/test.sh");
    for _ in 0..2 {
        let scheduled = cairn(&["schedule", "home", "--with", "cron"]);
        assert!(scheduled.status.success(), "{}", stderr(&scheduled));
    }
    let listed = String::from_utf8(crontab(&["-l"]).unwrap().stdout).unwrap();
    let ours: Vec<&str> = listed
        .lines()
        .filter(|l| l.ends_with("# cairn-plan-home"))
        .collect();
    assert_eq!(ours.len(), 1, "{listed}");
    assert!(
        ours[0].starts_with("@daily nice -n 19 ionice -c 3 "),
        "{listed}"
    );
    assert!(
        ours[0].contains(exec),
        "cron runs what systemd would: {listed}"
    );
    let removed = cairn(&["schedule", "home", "--with", "cron", "--remove"]);
    assert!(removed.status.success(), "{}", stderr(&removed));
    let listed = String::from_utf8(crontab(&["-l"]).unwrap().stdout).unwrap();
    assert!(!listed.contains("cairn-plan-home"), "{listed}");
    if before.status.success() {
        let mut restore = std::process::Command::new("crontab")
            .arg("-")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        restore
            .stdin
            .take()
            .unwrap()
            .write_all(&before.stdout)
            .unwrap();
        restore.wait().unwrap();
    }

    steps.enter("a calendar event cron cannot run is refused");
    let calendar = fs::read_to_string(&config).unwrap().replace(
        "keep = { last = 1 }",
        "keep = { last = 1 }\nschedule = \"*-*-* 03:30\"",
    );
    fs::write(&config, calendar).unwrap();
    let refused = cairn(&["schedule", "home", "--with", "cron"]);
    assert_fails(&refused, 1, "cron cannot run");
}
