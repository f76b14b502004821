//! End-to-end tests of `cairn serve` on 127.0.0.1: every command against a served
//! repository, syncs to and from one over HTTP and HTTPS, and the server's refusals: a wrong
//! or missing token, writes to a read-only or append-only server, names outside the
//! repository, and plain HTTP on a non-loopback address.

mod common;

use common::*;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

const TOKEN: &str = "s3cret-token-for-tests";

fn text(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A running `cairn serve`, stopped when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `cairn serve --repo REPO` with `extra` arguments on a free loopback port.
fn serve(sandbox: &Sandbox, repo: &Path, extra: &[&str]) -> Server {
    let token = sandbox.path("token");
    fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let mut child = sandbox
        .cairn()
        .args(["serve", "--repo", text(repo), "--listen", "127.0.0.1:0"])
        .args(["--token-file", text(&token)])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("serve printed {line:?}"))
        .to_owned();
    Server { child, url }
}

/// Client arguments: the token file and a password file.
fn client_args(sandbox: &Sandbox) -> Vec<String> {
    let password = sandbox.path("password");
    fs::write(&password, "remote password\n").unwrap();
    let token = sandbox.path("client-token");
    fs::write(&token, format!("{TOKEN}\n")).unwrap();
    vec![
        "--password-file".into(),
        text(&password).into(),
        "--token-file".into(),
        text(&token).into(),
    ]
}

fn with<'a>(command: &[&'a str], extra: &'a [String]) -> Vec<&'a str> {
    let mut all = command.to_vec();
    all.extend(extra.iter().map(String::as_str));
    all
}

fn checkpoints(repo: &Path) -> usize {
    fs::read_dir(repo.join("checkpoints")).map_or(0, |d| d.count())
}

/// An empty password repository at `<sandbox>/served`, initialised through a server.
fn served_repository(sandbox: &Sandbox, extra: &[&str]) -> (PathBuf, Server, Vec<String>) {
    let repo = sandbox.path("served");
    let client = client_args(sandbox);
    // init runs against the directory; everything else goes through the server.
    sandbox.ok(&with(&["init", "--repo", text(&repo)], &client));
    let server = serve(sandbox, &repo, extra);
    (repo, server, client)
}

#[test]
fn every_command_works_against_a_served_repository() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    make_tree(&source);
    let (repo, server, client) = served_repository(&sandbox, &[]);
    let url = server.url.as_str();
    sandbox.ok(&with(&["backup", "--repo", url, text(&source)], &client));
    assert_eq!(checkpoints(&repo), 1);
    let listed = sandbox.ok(&with(&["list", "--repo", url], &client));
    assert_eq!(
        listed.lines().filter(|l| l.contains("source")).count(),
        1,
        "{listed}"
    );
    let hello = sandbox.ok(&with(&["cat", "--repo", url, "latest:hello.txt"], &client));
    assert_eq!(hello, "hello, cairn\n");
    let restored = sandbox.path("restored");
    sandbox.ok(&with(
        &[
            "restore",
            "--repo",
            url,
            "latest",
            "--target",
            text(&restored),
        ],
        &client,
    ));
    assert_same_tree(&source, &restored);
    let check = sandbox.run(&with(&["check", "--read-data", "--repo", url], &client));
    assert!(check.status.success(), "{}", stderr(&check));

    // A wrong token or none: a clear refusal and nothing written.
    let bad_token = sandbox.path("bad-token");
    fs::write(&bad_token, "guess\n").unwrap();
    let password = &client[1];
    let wrong = sandbox.run(&[
        "backup",
        "--repo",
        url,
        "--password-file",
        password,
        "--token-file",
        text(&bad_token),
        text(&source),
    ]);
    assert_fails(&wrong, 1, "401");
    let missing = sandbox.run(&["list", "--repo", url, "--password-file", password]);
    assert_fails(&missing, 1, "--token-file");
    assert_eq!(checkpoints(&repo), 1);
}

#[test]
fn repositories_sync_to_and_from_a_server_over_https() {
    let sandbox = Sandbox::new();
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert_file, key_file) = (sandbox.path("cert.pem"), sandbox.path("key.pem"));
    fs::write(&cert_file, cert.cert.pem()).unwrap();
    fs::write(&key_file, cert.signing_key.serialize_pem()).unwrap();

    let source = sandbox.path("source");
    make_tree(&source);
    let local = sandbox.path("local");
    let client = client_args(&sandbox);
    sandbox.ok(&with(&["init", "--repo", text(&local)], &client));
    sandbox.ok(&with(
        &["backup", "--repo", text(&local), text(&source)],
        &client,
    ));
    let remote = sandbox.path("served");
    sandbox.ok(&with(
        &["init", "--repo", text(&remote), "--like", text(&local)],
        &client,
    ));
    let server = serve(
        &sandbox,
        &remote,
        &["--tls-cert", text(&cert_file), "--tls-key", text(&key_file)],
    );
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let url = server.url.as_str();

    // Without the certificate trusted, the client refuses the server.
    let untrusted = sandbox.run(&with(&["list", "--repo", url], &client));
    assert!(!untrusted.status.success());
    let ca = ["--tls-ca".to_owned(), text(&cert_file).to_owned()];
    let client: Vec<String> = client.into_iter().chain(ca).collect();

    let pushed: serde_json::Value =
        serde_json::from_str(&sandbox.ok(&with(&["sync", "--json", text(&local), url], &client)))
            .unwrap();
    assert_eq!(pushed["checkpoints_copied"], 1, "{pushed}");
    assert_eq!(checkpoints(&remote), 1);
    // Back from the server into a third repository.
    let back = sandbox.path("back");
    sandbox.ok(&with(
        &["init", "--repo", text(&back), "--like", text(&local)],
        &client,
    ));
    let pulled: serde_json::Value = serde_json::from_str(&sandbox.ok(&with(
        &["sync", "--json", &format!("{url}::latest"), text(&back)],
        &client,
    )))
    .unwrap();
    assert_eq!(
        pulled["blobs_copied"], pushed["blobs_copied"],
        "{pushed} {pulled}"
    );
    let restored = sandbox.path("restored");
    sandbox.ok(&with(
        &["sync", &format!("{}::latest", text(&back)), text(&restored)],
        &client,
    ));
    assert_same_tree(&source, &restored);
    let check = sandbox.run(&with(&["check", "--read-data", "--repo", url], &client));
    assert!(check.status.success(), "{}", stderr(&check));
}

#[test]
fn the_server_refuses_what_its_mode_forbids_and_names_outside_the_repository() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    make_tree(&source);
    let (repo, server, client) = served_repository(&sandbox, &["--append-only"]);
    let url = server.url.clone();
    sandbox.ok(&with(&["backup", "--repo", &url, text(&source)], &client));
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let bearer = format!("Bearer {TOKEN}");
    let checkpoint = fs::read_dir(repo.join("checkpoints"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let name = format!("checkpoints/{}", checkpoint.file_name().to_str().unwrap());
    let object = format!("{url}/objects/{name}");
    let status = |response: Result<ureq::http::Response<ureq::Body>, ureq::Error>| {
        response.unwrap().status().as_u16()
    };
    assert_eq!(
        status(
            agent
                .delete(&object)
                .header("Authorization", &bearer)
                .call()
        ),
        403
    );
    assert_eq!(
        status(
            agent
                .put(&object)
                .header("Authorization", &bearer)
                .send(&b"x"[..])
        ),
        409
    );
    assert_eq!(status(agent.get(&object).call()), 401, "no token");
    for hostile in [
        "../config",
        "..%2F..%2Fetc%2Fpasswd",
        "data/..%2Fconfig",
        "elsewhere/x",
    ] {
        let got = status(
            agent
                .get(&format!("{url}/objects/{hostile}"))
                .header("Authorization", &bearer)
                .call(),
        );
        assert!(got == 400 || got == 404, "{hostile}: {got}");
    }
    assert_eq!(checkpoints(&repo), 1);
    drop(server);

    let read_only = serve(&sandbox, &repo, &["--read-only"]);
    let refused = sandbox.run(&with(
        &["backup", "--repo", &read_only.url, text(&source)],
        &client,
    ));
    assert_fails(&refused, 1, "read-only");
    assert_eq!(checkpoints(&repo), 1);

    let token = sandbox.path("token");
    let open = sandbox.run(&[
        "serve",
        "--repo",
        text(&repo),
        "--listen",
        "0.0.0.0:0",
        "--token-file",
        text(&token),
    ]);
    assert_fails(&open, 1, "--tls-cert");
}
