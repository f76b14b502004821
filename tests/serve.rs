//! End-to-end tests of `cairn serve` on 127.0.0.1: every command against a served
//! repository, syncs to and from one over HTTP and HTTPS, and the server's refusals: a wrong
//! or missing token, writes to a read-only or append-only server, names outside the
//! repository, and plain HTTP on a non-loopback address.

mod common;

use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const TOKEN: &str = "s3cret-token-for-tests";

fn text(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Starts `cairn serve` with `args` on a free loopback port; the URL is the server's base.
fn serve_with(sandbox: &Sandbox, args: &[&str]) -> Server {
    let token = sandbox.path("token");
    fs::write(&token, format!("{TOKEN}\n")).unwrap();
    Server::spawn(
        sandbox
            .cairn()
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--token-file",
                text(&token),
            ])
            .args(args),
    )
}

/// Starts `cairn serve --repo REPO` with `extra` arguments; the URL is the repository's.
fn serve(sandbox: &Sandbox, repo: &Path, extra: &[&str]) -> Server {
    let mut server = serve_with(sandbox, &[&["--repo", text(repo)][..], extra].concat());
    server.url.push_str("/repo");
    server
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
    let home = format!("home={}", text(&source));
    let server = serve(
        &sandbox,
        &remote,
        &[
            "--tls-cert",
            text(&cert_file),
            "--tls-key",
            text(&key_file),
            "--source",
            &home,
        ],
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

    // The same server's source directory, pulled over HTTPS into a repository and a directory.
    let source_url = url.replace("/repo", "/source/home");
    let pulled = sync_json(&sandbox, &[&source_url, text(&back)], &client);
    assert_eq!(pulled["checkpoints_copied"], 1, "{pulled}");
    let mirror = sandbox.path("mirror");
    sync_json(&sandbox, &[&source_url, text(&mirror)], &client);
    assert_same_tree(&source, &mirror);
}

#[test]
fn the_server_refuses_what_its_mode_forbids_and_names_outside_the_repository() {
    let steps = Steps::new();
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
    steps.enter("a retried upload of the same bytes is accepted");
    // The same bytes again (a retried upload) are accepted: nothing changes.
    let same = fs::read(repo.join(&name)).unwrap();
    let retried = agent
        .put(&object)
        .header("Authorization", &bearer)
        .send(&same[..]);
    assert_eq!(status(retried), 201);
    assert_eq!(status(agent.get(&object).call()), 401, "no token");
    steps.enter("ranges past the end or absurdly large are refused");
    // Ranges past the end, or absurdly large, are refused instead of allocated.
    for range in [
        "bytes=0-1099511627775",
        "bytes=1-18446744073709551615",
        "bytes=9-3",
    ] {
        let got = agent
            .get(&object)
            .header("Authorization", &bearer)
            .header("Range", range)
            .call();
        assert_eq!(status(got), 400, "{range}");
    }
    let huge = format!(r#"[{{"name":"{name}","offset":0,"length":1099511627776}}]"#);
    let got = agent
        .post(&format!("{url}/ranges"))
        .header("Authorization", &bearer)
        .send(huge.as_bytes());
    assert_eq!(status(got), 400);
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

/// A tree of 200 files of 20-60 KB (and `make_tree`'s entries): about 8 MB.
fn make_wide_tree(root: &Path) -> u64 {
    make_tree(root);
    let mut total = 0;
    for i in 0..200u64 {
        let dir = root.join(format!("d{}", i % 10));
        fs::create_dir_all(&dir).unwrap();
        let data = pseudo_random(20_000 + (i as usize * 997) % 40_000, 100 + i);
        total += data.len() as u64;
        fs::write(dir.join(format!("f{i}")), data).unwrap();
    }
    total + 3_000_000 + 100_000
}

/// `make_wide_tree` at `<sandbox>/source`, served as the source `home`: the tree, its bytes,
/// the server and the source's URL.
fn served_wide_tree(sandbox: &Sandbox) -> (PathBuf, u64, Server, String) {
    let source = sandbox.path("source");
    let total = make_wide_tree(&source);
    let server = serve_with(sandbox, &["--source", &format!("home={}", text(&source))]);
    let url = format!("{}/source/home", server.url);
    (source, total, server, url)
}

/// Changes 2 of the 200 files (1%): a few bytes in each.
fn change_one_percent(root: &Path) {
    for i in [7u64, 123] {
        let path = root.join(format!("d{}/f{i}", i % 10));
        let mut data = fs::read(&path).unwrap();
        data[100..110].fill(0x5A);
        fs::write(&path, data).unwrap();
        set_mtime(&path, 1_750_000_000, i as i64);
    }
}

/// A pull from a served directory stores small files as a backup of the directory would:
/// their chunks share frames (they were each stored alone).
#[test]
fn a_pull_stores_small_files_in_shared_frames() {
    let sandbox = Sandbox::new();
    let (source, _, _server, url) = served_wide_tree(&sandbox);
    let client = client_args(&sandbox);
    let repo = sandbox.path("repo");
    // The token only: a password given for a `none` repository is refused as a downgrade.
    let token_only = &client[2..];
    sandbox.ok(&["init", "--repo", text(&repo), "--encryption", "none"]);
    sandbox.ok(&with(&["sync", &url, text(&repo)], token_only));

    let shared = pack_entries(&repo)
        .iter()
        .filter(|entry| !entry.is_alone())
        .count();
    // make_wide_tree's 200 files of 20-60 KB are one chunk each.
    assert!(shared >= 200, "{shared} blobs share frames");
    assert_same_tree(&source, &sandbox.restore(&repo, "latest", "restored"));
}

fn sync_json(sandbox: &Sandbox, args: &[&str], client: &[String]) -> serde_json::Value {
    let out = sandbox.ok(&with(&[&["sync", "--json"][..], args].concat(), client));
    serde_json::from_str(&out).unwrap()
}

#[test]
fn a_served_directory_pulls_into_a_repository_and_a_directory_moving_only_changes() {
    let steps = Steps::new();
    let sandbox = Sandbox::new();
    let (source, total, server, url) = served_wide_tree(&sandbox);
    let client = client_args(&sandbox);
    let repo = sandbox.path("repo");
    sandbox.ok(&with(&["init", "--repo", text(&repo)], &client));

    let first = sync_json(&sandbox, &[&url, text(&repo)], &client);
    assert_eq!(first["checkpoints_copied"], 1, "{first}");
    let restored = sandbox.path("restored");
    sandbox.ok(&with(
        &["sync", &format!("{}::latest", text(&repo)), text(&restored)],
        &client,
    ));
    assert_same_tree(&source, &restored);
    let mirror = sandbox.path("mirror");
    let mirrored = sync_json(&sandbox, &[&url, text(&mirror)], &client);
    assert!(
        mirrored["files_written"].as_u64().unwrap() > 200,
        "{mirrored}"
    );
    assert_same_tree(&source, &mirror);

    change_one_percent(&source);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    steps.enter("the server on another port: the pull still finds its parent");
    // The server comes back on another port: the pull still finds its parent, so only the
    // changed files are looked at.
    drop(server);
    let server = serve_with(&sandbox, &["--source", &format!("home={}", text(&source))]);
    let url = format!("{}/source/home", server.url);
    let second = sync_json(&sandbox, &[&url, text(&repo)], &client);
    assert!(second["blobs_skipped"].as_u64().unwrap() < 30, "{second}");
    let moved = second["bytes_transferred"].as_u64().unwrap();
    assert!(
        moved > 0 && moved < total / 50,
        "{moved} of {total} bytes: {second}"
    );
    assert!(second["blobs_copied"].as_u64().unwrap() < 30, "{second}");
    let restored_2 = sandbox.path("restored-2");
    sandbox.ok(&with(
        &[
            "sync",
            &format!("{}::latest", text(&repo)),
            text(&restored_2),
        ],
        &client,
    ));
    assert_same_tree(&source, &restored_2);

    steps.enter("a copy of the new checkpoint moves only its blobs");
    // A copy of the new checkpoint into a repository holding the first moves only its blobs.
    let other = sandbox.path("other");
    sandbox.ok(&with(
        &["init", "--repo", text(&other), "--like", text(&repo)],
        &client,
    ));
    let first_id = serde_json::from_str::<serde_json::Value>(
        &sandbox.ok(&with(&["list", "--json", "--repo", text(&repo)], &client)),
    )
    .unwrap()[0]["short_id"]
        .as_str()
        .unwrap()
        .to_owned();
    sync_json(
        &sandbox,
        &[&format!("{}::{first_id}", text(&repo)), text(&other)],
        &client,
    );
    let copied = sync_json(&sandbox, &[text(&repo), text(&other)], &client);
    assert_eq!(
        copied["blobs_copied"], second["blobs_copied"],
        "{copied} {second}"
    );

    let update = sync_json(&sandbox, &["--delete", &url, text(&mirror)], &client);
    assert_eq!(update["files_written"], 2, "{update}");
    let moved = update["bytes_transferred"].as_u64().unwrap();
    assert!(moved < total / 50, "{moved} of {total} bytes: {update}");
    assert_same_tree(&source, &mirror);

    steps.enter("the served source is read-only and confined");
    // The served source is read-only and nothing outside it is reachable.
    let refused = sandbox.run(&with(&["sync", text(&mirror), &url], &client));
    assert_fails(&refused, 1, "read-only");
    std::os::unix::fs::symlink("/etc", source.join("etc-link")).unwrap();
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let listing = format!("{url}/list?path={}", hex::encode("etc-link"));
    let got = agent
        .get(&listing)
        .header("Authorization", &format!("Bearer {TOKEN}"))
        .call()
        .unwrap();
    assert_eq!(got.status().as_u16(), 400, "listing through a symlink");
}

/// A fake server answering every request from `answer(request line)`, for as long as the
/// test runs; returns its base URL.
fn fake_server(answer: impl Fn(&str) -> Vec<u8> + Send + 'static) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = Vec::new();
            let mut byte = [0u8; 1];
            while !request.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                request.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&request).into_owned();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            let mut body = vec![0; length];
            let _ = stream.read_exact(&mut body);
            let payload = answer(head.lines().next().unwrap_or_default());
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                payload.len()
            );
            let _ = stream.write_all(&payload);
        }
    });
    url
}

/// A listing as the server sends it: postcard in a zstd frame; for `GET …/tree`, the root's
/// record behind its length.
fn listing(line: &str, entries: &[cairn::tree::Entry]) -> Vec<u8> {
    let encoded = if line.contains("/tree") {
        let record = cairn::net::wire::TreeRecord {
            path: serde_bytes::ByteBuf::new(),
            entries: Ok(cairn::net::wire::to_wire(
                entries.iter().cloned().map(|e| e.into_listed()).collect(),
            )),
        };
        let record = postcard::to_stdvec(&record).unwrap();
        [&(record.len() as u32).to_le_bytes()[..], &record].concat()
    } else {
        postcard::to_stdvec(entries).unwrap()
    };
    zstd::bulk::compress(&encoded, 3).unwrap()
}

fn file_entry(name: &[u8], size: u64) -> cairn::tree::Entry {
    cairn::tree::Entry {
        name: name.to_vec(),
        kind: cairn::tree::EntryKind::File(cairn::tree::Content::Chunks(Vec::new())),
        mode: 0o644,
        uid: 0,
        gid: 0,
        user: None,
        group: None,
        mtime_ns: 0,
        ctime_ns: 0,
        size,
        device: 1,
        inode: 2,
        links: 1,
        xattrs: Vec::new(),
    }
}

#[test]
fn a_hostile_or_lying_server_is_refused_and_nothing_is_saved() {
    let sandbox = Sandbox::new();
    let client = client_args(&sandbox);
    // A listing with `..` in it.
    let hostile = fake_server(|line| {
        if line.contains("/list") || line.contains("/tree") {
            listing(line, &[file_entry(b"..", 5)])
        } else {
            postcard::to_stdvec(&None::<cairn::tree::Entry>).unwrap()
        }
    });
    // Nobody listening, and a server that is not cairn's: clear errors.
    let nobody = sandbox.run(&with(
        &[
            "sync",
            "http://127.0.0.1:9/source/x",
            text(&sandbox.path("t")),
        ],
        &client,
    ));
    assert_fails(&nobody, 1, "127.0.0.1:9");
    let stranger = fake_server(|_| b"<html>hello</html>".to_vec());
    let garbage = sandbox.run(&with(
        &[
            "sync",
            &format!("{stranger}/source/x"),
            text(&sandbox.path("t")),
        ],
        &client,
    ));
    assert_fails(&garbage, 1, "unreadable");
    let target = sandbox.path("inside/target");
    let refused = sandbox.run(&with(
        &["sync", &format!("{hostile}/source/x"), text(&target)],
        &client,
    ));
    assert_fails(&refused, 1, "hostile");
    assert_eq!(
        fs::read_dir(sandbox.path("inside")).map_or(0, |d| d.count()),
        1,
        "only the target itself"
    );

    // A server whose chunk is not the one its chunk list names.
    let lying = fake_server(|line| {
        if line.contains("/list") || line.contains("/tree") {
            listing(line, &[file_entry(b"f", 5)])
        } else if line.contains("/chunks") {
            let id = cairn::id::BlobId(*blake3::hash(b"hello").as_bytes());
            postcard::to_stdvec(&cairn::net::wire::ChunksResponse {
                files: vec![Ok(vec![cairn::tree::ChunkRef { id, length: 5 }])],
            })
            .unwrap()
        } else if line.contains("/blobs") {
            zstd::bulk::compress(b"HELLO", 3).unwrap()
        } else {
            postcard::to_stdvec(&None::<cairn::tree::Entry>).unwrap()
        }
    });
    // A file new to the target comes whole, without a chunk list; one the target holds is
    // rebuilt from chunks, and each fetched chunk must match the id the list gave it.
    let mirror = sandbox.path("mirror");
    fs::create_dir_all(&mirror).unwrap();
    fs::write(mirror.join("f"), "old!!").unwrap();
    let into_dir = sandbox.run(&with(
        &["sync", &format!("{lying}/source/x"), text(&mirror)],
        &client,
    ));
    assert_fails(&into_dir, 3, "does not match");
    assert_eq!(
        fs::read(mirror.join("f")).unwrap(),
        b"old!!",
        "a file was replaced by wrong bytes"
    );
    let repo = sandbox.path("repo");
    // The token only: a password given for a `none` repository is refused as a downgrade.
    let token_only = &client[2..];
    sandbox.ok(&with(
        &["init", "--repo", text(&repo), "--encryption", "none"],
        token_only,
    ));
    let pulled = sandbox.run(&with(
        &["sync", &format!("{lying}/source/x"), text(&repo)],
        token_only,
    ));
    assert_fails(&pulled, 1, "does not match");
    assert_eq!(
        checkpoints(&repo),
        0,
        "a checkpoint was saved from a lying server"
    );
}

/// The regular files below `root` (every path of a hard link) and their bytes.
fn regular_files(root: &Path) -> (u64, u64) {
    let mut totals = (0, 0);
    for entry in fs::read_dir(root).unwrap() {
        let entry = entry.unwrap();
        let metadata = fs::symlink_metadata(entry.path()).unwrap();
        if metadata.is_dir() {
            let (files, bytes) = regular_files(&entry.path());
            totals = (totals.0 + files, totals.1 + bytes);
        } else if metadata.is_file() {
            totals = (totals.0 + 1, totals.1 + metadata.len());
        }
    }
    totals
}

/// Asserts that a finished sync's progress had the source's totals and did all of them, and
/// that the bytes it showed as taken from the source are the report's.
fn assert_progress_complete(
    progress: &cairn::progress::Progress,
    expected: (u64, u64),
    transferred: u64,
) {
    use std::sync::atomic::Ordering::Relaxed;
    assert!(progress.counted.load(Relaxed), "{progress:?}");
    let totals = (
        progress.total_files.load(Relaxed),
        progress.total_bytes.load(Relaxed),
    );
    let done = (
        progress.files_done.load(Relaxed),
        progress.bytes_done.load(Relaxed),
    );
    assert_eq!(totals, expected, "{progress:?}");
    assert_eq!(done, expected, "{progress:?}");
    assert_eq!(
        progress.bytes_read.load(Relaxed),
        transferred,
        "{progress:?}"
    );
}

#[test]
fn progress_has_a_total_and_reaches_it_for_served_local_and_checkpoint_sources() {
    use cairn::net::client::Remote;
    use cairn::net::wire::ChunkSpec;
    use cairn::progress::Progress;
    use cairn::repo::backend::LocalBackend;
    use cairn::repo::config::EncryptionMode;
    use cairn::repo::{InitOptions, Repository, Secret};
    use cairn::restore::into_dir;
    use cairn::source::checkpoint::CheckpointSource;
    use cairn::source::local::DirectorySource;
    use cairn::source::remote::RemoteSource;
    use cairn::sync::{SyncOptions, pull};

    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    make_wide_tree(&source);
    let expected = regular_files(&source);
    let server = serve_with(&sandbox, &["--source", &format!("home={}", text(&source))]);
    let remote = || Remote {
        url: format!("{}/source/home", server.url),
        token: TOKEN.into(),
        ca_pem: None,
        timeouts: Default::default(),
    };
    let options = SyncOptions::default();

    // Served directory → directory.
    let served = RemoteSource::new(remote(), ChunkSpec::plain(), true).unwrap();
    let progress = Progress::default();
    let mirror = sandbox.path("mirror");
    let report = into_dir(
        &served,
        Vec::new(),
        None,
        &mirror,
        &options,
        &progress,
        &mut |_| {},
    )
    .unwrap();
    assert_progress_complete(&progress, expected, report.bytes_transferred);

    // Local directory → directory.
    let progress = Progress::default();
    let copy = sandbox.path("copy");
    let report = into_dir(
        &DirectorySource::default(),
        source.clone(),
        None,
        &copy,
        &options,
        &progress,
        &mut |_| {},
    )
    .unwrap();
    assert_progress_complete(&progress, expected, report.bytes_transferred);

    // Served directory → repository, then the checkpoint → directory.
    let backend = Arc::new(LocalBackend::new(sandbox.path("repo")));
    let mut init = InitOptions::new(EncryptionMode::Keyfile);
    init.key_file = Some(sandbox.path("key"));
    Repository::init(backend.as_ref(), init).unwrap();
    let key = sandbox.path("key");
    let repo = Repository::open(
        backend,
        |_| Ok(Secret::KeyFile(key)),
        &sandbox.path("cache"),
    )
    .unwrap();
    let pulled = RemoteSource::new(remote(), ChunkSpec::of(&repo), false).unwrap();
    let progress = Progress::default();
    let report = pull::run(&repo, &pulled, &options, &progress).unwrap();
    assert_progress_complete(&progress, expected, report.bytes_transferred);

    let record = cairn::checkpoint::resolve(&repo, "latest").unwrap().record;
    let checkpoint = CheckpointSource::whole(&repo, &record);
    let progress = Progress::default();
    let restored = sandbox.path("restored");
    let report = into_dir(
        &checkpoint,
        record.tree,
        None,
        &restored,
        &options,
        &progress,
        &mut |_| {},
    )
    .unwrap();
    assert_progress_complete(&progress, expected, report.bytes_transferred);
}

#[test]
fn a_pulled_checkpoint_records_the_machine_and_path_of_its_source() {
    let sandbox = Sandbox::new();
    let (source, _, _server, url) = served_wide_tree(&sandbox);
    let client = client_args(&sandbox);
    let repo = sandbox.path("repo");
    sandbox.ok(&with(&["init", "--repo", text(&repo)], &client));
    sync_json(&sandbox, &[&url, text(&repo)], &client);

    let list = |sandbox: &Sandbox| -> serde_json::Value {
        serde_json::from_str(
            &sandbox.ok(&with(&["list", "--json", "--repo", text(&repo)], &client)),
        )
        .unwrap()
    };
    let pulled = list(&sandbox)[0].clone();
    assert_eq!(pulled["host"], cairn::host_name(), "{pulled}");
    assert_eq!(
        pulled["paths"],
        serde_json::json!([text(&source)]),
        "{pulled}"
    );
    assert_eq!(pulled["pulled_from"], url.as_str(), "{pulled}");

    // The server names the host and path, so its pulls are a series of their own: a local
    // backup of that very directory does not continue it (a server claiming a local series
    // could otherwise make `forget` drop its backups), and a pull never takes a local backup
    // as its parent (its stat cache would tell the server that series' sizes and times).
    let backup: serde_json::Value = serde_json::from_str(&sandbox.ok(&with(
        &["backup", "--json", "--repo", text(&repo), text(&source)],
        &client,
    )))
    .unwrap();
    assert_eq!(backup["parent"], serde_json::Value::Null, "{backup}");
    sync_json(&sandbox, &[&url, text(&repo)], &client);
    let again = list(&sandbox)[2].clone();
    assert_eq!(again["pulled_from"], url.as_str(), "{again}");
    assert_eq!(again["parent"], pulled["id"], "{again}");
    let forget = with(
        &[
            "forget",
            "--repo",
            text(&repo),
            "--keep-last",
            "1",
            "--dry-run",
            "--json",
        ],
        &client,
    );
    let plans: serde_json::Value = serde_json::from_str(&sandbox.ok(&forget)).unwrap();
    assert_eq!(plans["series"].as_array().unwrap().len(), 2, "{plans}");
}

#[test]
fn repair_packs_drops_a_damaged_blob_and_the_next_pull_heals_every_checkpoint() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    fs::create_dir_all(&source).unwrap();
    fs::write(source.join("a.bin"), pseudo_random(3_000_000, 17)).unwrap();
    fs::write(source.join("b.bin"), pseudo_random(3_000_000, 18)).unwrap();
    let server = serve_with(&sandbox, &["--source", &format!("home={}", text(&source))]);
    let url = format!("{}/source/home", server.url);
    let client = client_args(&sandbox);
    let repo = sandbox.path("repo");
    let repo_args = with(&["--repo", text(&repo)], &client);
    let with_repo = |command: &[&'static str]| [command, &repo_args].concat();
    sandbox.ok(&with_repo(&["init"]));
    sync_json(&sandbox, &[&url, text(&repo)], &client);
    // Sixteen bytes in the middle of the only pack are overwritten, and the repair drops
    // the blob they were in.
    let packs: Vec<PathBuf> = file_contents(&repo.join("data")).into_keys().collect();
    let [pack] = packs.try_into().unwrap();
    let mut bytes = fs::read(&pack).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle..middle + 16].copy_from_slice(&[0x55; 16]);
    fs::write(&pack, &bytes).unwrap();
    sandbox.ok(&with_repo(&["repair", "packs"]));
    assert_eq!(sandbox.run(&with_repo(&["check"])).status.code(), Some(1));

    // The files are unchanged, but the stat cache must not hand the new checkpoint a chunk
    // the repository lost: the pull asks for it again, which heals the old checkpoint too.
    let healed = sync_json(&sandbox, &[&url, text(&repo)], &client);
    assert_eq!(healed["checkpoints_copied"], 1, "{healed}");
    assert!(healed["blobs_copied"].as_u64().unwrap() > 0, "{healed}");
    let check = sandbox.run(&with_repo(&["check", "--read-data"]));
    assert!(check.status.success(), "{}", stderr(&check));
}

#[test]
fn an_interrupted_pull_keeps_its_packs_says_so_and_the_rerun_pulls_only_the_rest() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    // 96 MB read at 8 MB/s: the first pack lands after about two seconds and the pull has
    // about ten more to go when the signal arrives, however slow the machine is that day.
    let total = random_files(&source, 12, 8_000_000, 90);
    let token = sandbox.path("token");
    let (_server, url) = Server::source(&sandbox, "home", &source, &token);
    let repo = sandbox.path("repo");
    sandbox.ok(&["init", "--repo", text(&repo), "--encryption", "none"]);
    let child = sandbox
        .cairn()
        .args(["sync", "--limit-rate", "8M", "--token-file", text(&token)])
        .args([url.as_str(), text(&repo)])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..1200 {
        if pack_bytes(&repo).0 > 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    // SAFETY: signals a child this test started and has not waited for.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let output = child.wait_with_output().unwrap();
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(130), "{message}");
    assert!(message.contains("packs kept"), "{message}");
    assert_eq!(
        fs::read_dir(repo.join("locks")).unwrap().count(),
        0,
        "lock released"
    );
    let saved = fs::read_dir(repo.join("checkpoints")).map_or(0, |d| d.count());
    assert_eq!(saved, 0, "no checkpoint of a stopped pull");
    let (kept, _) = pack_bytes(&repo);
    assert!(kept > 0 && kept < total, "{kept} of {total} bytes kept");

    let rerun = sync_json(
        &sandbox,
        &[&url, text(&repo)],
        &["--token-file".into(), text(&token).into()],
    );
    assert_eq!(rerun["checkpoints_copied"], 1, "{rerun}");
    let stored = pack_bytes(&repo).0;
    assert!(
        stored <= total + total / 20,
        "{stored} bytes of packs in all for {total} bytes of incompressible files: {rerun}"
    );
    let moved = rerun["bytes_transferred"].as_u64().unwrap();
    assert!(
        moved <= total - kept + total / 20,
        "{moved} moved again, {kept} were kept: {rerun}"
    );
    let check = sandbox.run(&["check", "--read-data", "--repo", text(&repo)]);
    assert!(check.status.success(), "{}", stderr(&check));
}

#[test]
fn a_self_signed_server_is_pinned_by_its_fingerprint_and_keeps_it_across_restarts() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    make_tree(&source);
    let repo = sandbox.path("served");
    let client = client_args(&sandbox);
    sandbox.ok(&with(&["init", "--repo", text(&repo)], &client));
    let keep = sandbox.path("tls");
    let args = ["--tls-self-signed", "--tls-dir", text(&keep)];
    let server = serve(&sandbox, &repo, &args);
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "{}",
        server.url
    );
    let printed = server.printed("clients connect with --tls-fingerprint ");
    let fingerprint = printed.rsplit(' ').next().unwrap().to_owned();
    assert_eq!(fingerprint.len(), 32 * 3 - 1, "{printed}");
    let url = server.url.clone();

    // Pinned: the backup goes through; no CA is involved.
    let pinned: Vec<String> = client
        .iter()
        .cloned()
        .chain(["--tls-fingerprint".into(), fingerprint.clone()])
        .collect();
    sandbox.ok(&with(&["backup", "--repo", &url, text(&source)], &pinned));
    let untrusted = sandbox.run(&with(&["list", "--repo", &url], &client));
    assert!(!untrusted.status.success());
    let mut other = fingerprint.clone().into_bytes();
    other[0] = if other[0] == b'0' { b'1' } else { b'0' };
    let other = String::from_utf8(other).unwrap();
    let wrong = sandbox.run(&with(
        &["list", "--repo", &url, "--tls-fingerprint", &other],
        &client,
    ));
    assert_fails(&wrong, 1, "not the pinned");
    let garbled = sandbox.run(&with(
        &["list", "--repo", &url, "--tls-fingerprint", "AB:CD"],
        &client,
    ));
    assert_fails(&garbled, 1, "is not a SHA-256 fingerprint");

    // Started again, it presents the same certificate.
    drop(server);
    let again = serve(&sandbox, &repo, &args);
    assert_eq!(
        again.printed("clients connect with --tls-fingerprint "),
        printed
    );
    let listed = sandbox.ok(&with(&["list", "--repo", &again.url], &pinned));
    assert_eq!(
        listed.lines().count(),
        2,
        "a heading and the checkpoint: {listed}"
    );
}

#[test]
fn a_ca_certificate_on_the_server_is_explained_with_a_recipe() {
    let sandbox = Sandbox::new();
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".into()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_file, key_file) = (sandbox.path("cert.pem"), sandbox.path("key.pem"));
    fs::write(&cert_file, cert.pem()).unwrap();
    fs::write(&key_file, key.serialize_pem()).unwrap();
    let repo = sandbox.path("served");
    let client = client_args(&sandbox);
    sandbox.ok(&with(&["init", "--repo", text(&repo)], &client));
    let server = serve(
        &sandbox,
        &repo,
        &["--tls-cert", text(&cert_file), "--tls-key", text(&key_file)],
    );
    let listed = sandbox.run(&with(
        &["list", "--repo", &server.url, "--tls-ca", text(&cert_file)],
        &client,
    ));
    assert_fails(&listed, 1, "marked as a CA certificate");
    assert!(
        stderr(&listed).contains("--tls-self-signed"),
        "{}",
        stderr(&listed)
    );
    assert!(
        stderr(&listed).contains("basicConstraints=critical,CA:FALSE"),
        "{}",
        stderr(&listed)
    );
}
