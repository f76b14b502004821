//! Attack tests of cairn on the network, each bounded in time and memory: a hostile server
//! (claimed sizes of 2^62 bytes, endless bodies, stalls, headers and bodies sent a byte at a
//! time) against `list --repo URL`, `sync URL DIR` and `sync URL REPO`, and hostile clients
//! against `cairn serve`: a slow-loris crowd of idle connections, and racing uploads to an
//! append-only server. Each must end in a clear error (or, for the server, in service to
//! legitimate clients), never in a crash, a hang or gigabytes of memory.

mod common;

use cairn::tree::{Content, Entry, EntryKind};
use common::*;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const TOKEN: &str = "attack-test-token";

/// No client run may use more memory than this, whatever the server sends.
const MEMORY_CAP_BYTES: u64 = 200 << 20;

/// Every run ends on its own well before this.
const TIME_LIMIT: Duration = Duration::from_secs(20);

/// The network timeout the client runs of these tests are given (`CAIRN_HTTP_TIMEOUT`).
const CLIENT_TIMEOUT: &str = "500ms";

/// 2^62 bytes: a file no server holds.
const HUGE_FILE_BYTES: u64 = 1 << 62;

fn text(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// What the hostile server does with every request.
#[derive(Debug, Clone, Copy)]
enum Hostility {
    /// Answers 200 and then bytes without end.
    EndlessBody,
    /// Takes the request and says nothing.
    Stall,
    /// Sends the response headers a byte at a time, 300 ms apart, never finishing them.
    SlowHeaders,
    /// Sends complete headers, then the body a byte at a time, 300 ms apart, without end.
    TrickleBody,
    /// Serves a source directory holding one file that claims 2^62 bytes, and answers the
    /// request for its bytes with an endless body.
    HugeFile,
    /// Serves a source whose tree is a chain of `DEEP_TREE_LEVELS` directories.
    DeepTree,
}

/// Levels of the `DeepTree` source: far past what a walk on the thread's stack survives.
const DEEP_TREE_LEVELS: usize = 40_000;

/// A hostile HTTP server on 127.0.0.1; its threads end with the test process.
struct HostileServer {
    url: String,
}

fn hostile_server(hostility: Hostility) -> HostileServer {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            std::thread::spawn(move || {
                let _ = answer(stream, hostility);
            });
        }
    });
    HostileServer { url }
}

/// Reads one request (headers and a body of Content-Length bytes); returns its request line.
fn read_request(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(request_line)
}

const BINARY_HEADERS: &str =
    "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n";

/// Writes a whole answer with a body.
fn send(stream: &mut TcpStream, body: &[u8]) -> std::io::Result<()> {
    write!(
        stream,
        "{BINARY_HEADERS}Content-Length: {}\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body)
}

/// Writes headers without a length, then bytes until the client hangs up.
fn send_endless(stream: &mut TcpStream) -> std::io::Result<()> {
    write!(stream, "{BINARY_HEADERS}\r\n")?;
    let piece = vec![b'7'; 64 * 1024];
    loop {
        stream.write_all(&piece)?;
    }
}

fn answer(mut stream: TcpStream, hostility: Hostility) -> std::io::Result<()> {
    let request = read_request(&mut stream)?;
    let pause = Duration::from_millis(300);
    match hostility {
        Hostility::EndlessBody => send_endless(&mut stream),
        Hostility::Stall => {
            std::thread::sleep(Duration::from_secs(60));
            Ok(())
        }
        Hostility::SlowHeaders => {
            for byte in BINARY_HEADERS.bytes().chain(std::iter::repeat(b'x')) {
                stream.write_all(&[byte])?;
                std::thread::sleep(pause);
            }
            Ok(())
        }
        Hostility::TrickleBody => {
            write!(stream, "{BINARY_HEADERS}Content-Length: 1000000000\r\n\r\n")?;
            loop {
                stream.write_all(b"7")?;
                std::thread::sleep(pause);
            }
        }
        Hostility::HugeFile => answer_huge_file(&mut stream, &request),
        Hostility::DeepTree => answer_deep_tree(&mut stream, &request),
    }
}

/// A served source whose tree is `d/d/d/…`, `DEEP_TREE_LEVELS` deep: the streamed listing
/// holds one record per level, compressed on the fly (the paths alone are gigabytes).
fn answer_deep_tree(stream: &mut TcpStream, request: &str) -> std::io::Result<()> {
    let dir = |name: &[u8]| entry(name, EntryKind::Dir(cairn::id::TreeId([0; 32])), 0);
    let path = request.split_whitespace().nth(1).unwrap_or_default();
    if path.contains("/stat") {
        send(stream, &postcard::to_stdvec(&Some(dir(b""))).unwrap())
    } else if path.contains("/totals") {
        send(stream, &postcard::to_stdvec(&(0u64, 0u64)).unwrap())
    } else if path.contains("/tree") {
        write!(stream, "{BINARY_HEADERS}\r\n")?;
        let mut encoder = zstd::stream::write::Encoder::new(stream, 1)?;
        let mut at = Vec::new();
        for _ in 0..DEEP_TREE_LEVELS {
            let record = cairn::net::wire::TreeRecord {
                path: serde_bytes::ByteBuf::from(at.clone()),
                entries: Ok(cairn::net::wire::to_wire(vec![dir(b"d").into_listed()])),
            };
            at.extend_from_slice(if at.is_empty() { b"d" } else { b"/d" });
            let encoded = postcard::to_stdvec(&record).unwrap();
            encoder.write_all(&(encoded.len() as u32).to_le_bytes())?;
            encoder.write_all(&encoded)?;
        }
        encoder.finish().map(drop)
    } else {
        let empty: Vec<Entry> = Vec::new();
        send(
            stream,
            &zstd::bulk::compress(&postcard::to_stdvec(&empty).unwrap(), 3).unwrap(),
        )
    }
}

fn entry(name: &[u8], kind: EntryKind, size: u64) -> Entry {
    Entry {
        name: name.to_vec(),
        kind,
        mode: 0o755,
        uid: 0,
        gid: 0,
        user: None,
        group: None,
        mtime_ns: 1_600_000_000_000_000_000,
        ctime_ns: 0,
        size,
        device: 0,
        inode: 0,
        links: 1,
        xattrs: Vec::new(),
    }
}

/// A served source whose root holds `big`, a file of 2^62 bytes.
fn answer_huge_file(stream: &mut TcpStream, request: &str) -> std::io::Result<()> {
    let root = entry(b"", EntryKind::Dir(cairn::id::TreeId([0; 32])), 0);
    let big = entry(
        b"big",
        EntryKind::File(Content::Chunks(Vec::new())),
        HUGE_FILE_BYTES,
    );
    let path = request.split_whitespace().nth(1).unwrap_or_default();
    if path.contains("/stat") {
        send(stream, &postcard::to_stdvec(&Some(root)).unwrap())
    } else if path.contains("/totals") {
        send(
            stream,
            &postcard::to_stdvec(&(1u64, HUGE_FILE_BYTES)).unwrap(),
        )
    } else if path.contains("/tree") {
        let record = cairn::net::wire::TreeRecord {
            path: serde_bytes::ByteBuf::new(),
            entries: Ok(cairn::net::wire::to_wire(vec![big.clone().into_listed()])),
        };
        let encoded = postcard::to_stdvec(&record).unwrap();
        let mut framed = (encoded.len() as u32).to_le_bytes().to_vec();
        framed.extend_from_slice(&encoded);
        send(stream, &zstd::bulk::compress(&framed, 3).unwrap())
    } else if path.contains("/list") {
        let listing = postcard::to_stdvec(&vec![big]).unwrap();
        send(stream, &zstd::bulk::compress(&listing, 3).unwrap())
    } else {
        // The chunk lists and the bytes of the file: without end.
        send_endless(stream)
    }
}

/// `cairn` with the token, a short network timeout and its cache in `sandbox`.
fn client(sandbox: &Sandbox) -> Command {
    let mut command = sandbox.cairn();
    command
        .env("CAIRN_TOKEN", TOKEN)
        .env("CAIRN_HTTP_TIMEOUT", CLIENT_TIMEOUT);
    command
}

/// Runs `cairn args...` bounded; asserts it failed on its own, in time, within the memory
/// cap, saying something about the server.
fn assert_fails_bounded(sandbox: &Sandbox, args: &[&str], server_url: &str) -> String {
    let started = Instant::now();
    let run = run_bounded(client(sandbox).args(args), TIME_LIMIT);
    run.assert_within(MEMORY_CAP_BYTES);
    let message = stderr(&run.output);
    assert!(!run.output.status.success(), "cairn {args:?} succeeded");
    assert!(
        message.contains(server_url),
        "cairn {args:?}: the error does not name the server: {message}"
    );
    assert!(
        started.elapsed() < TIME_LIMIT / 2,
        "cairn {args:?} took {:?}",
        started.elapsed()
    );
    message
}

/// Every file name below `dir`, to show nothing (no temporary file) was left.
fn names_below(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Every client command that reads from a server, against `server`: a served repository
/// listed and copied, a served source synced into a directory and into a repository.
fn every_client_command_fails_bounded(hostility: Hostility) -> Vec<String> {
    let sandbox = Sandbox::new();
    let server = hostile_server(hostility);
    let repo = sandbox.path("repo");
    sandbox.ok(&["init", "--repo", text(&repo), "--encryption", "none"]);
    let target = sandbox.path("target");
    let served_repo = format!("{}/repo", server.url);
    let served_source = format!("{}/source/src", server.url);
    let mut messages = vec![
        assert_fails_bounded(&sandbox, &["list", "--repo", &served_repo], &server.url),
        assert_fails_bounded(&sandbox, &["sync", &served_repo, text(&repo)], &server.url),
        assert_fails_bounded(
            &sandbox,
            &["sync", &served_source, text(&target)],
            &server.url,
        ),
        assert_fails_bounded(
            &sandbox,
            &["sync", &served_source, text(&repo)],
            &server.url,
        ),
    ];
    assert!(
        names_below(&target).is_empty(),
        "{:?}",
        names_below(&target)
    );
    messages.retain(|m| !m.is_empty());
    messages
}

/// Point 4: a source claiming a file of 2^62 bytes, whose bytes never end.
#[test]
fn a_file_of_two_to_the_62_bytes_is_an_error_not_an_abort() {
    let sandbox = Sandbox::new();
    let server = hostile_server(Hostility::HugeFile);
    let target = sandbox.path("target");
    let served = format!("{}/source/src", server.url);
    let message = assert_fails_bounded(&sandbox, &["sync", &served, text(&target)], &server.url);
    assert!(!message.contains("memory allocation"), "{message}");
    assert!(
        names_below(&target).is_empty(),
        "left behind: {:?}",
        names_below(&target)
    );
    let repo = sandbox.path("repo");
    sandbox.ok(&["init", "--repo", text(&repo), "--encryption", "none"]);
    assert_fails_bounded(&sandbox, &["sync", &served, text(&repo)], &server.url);
}

/// Point 5: an answer that never ends.
#[test]
fn an_endless_body_is_cut_off_at_what_was_asked_for() {
    for message in every_client_command_fails_bounded(Hostility::EndlessBody) {
        assert!(
            message.contains("more than") || message.contains("unreadable"),
            "{message}"
        );
    }
}

/// Point 6: a server that accepts and says nothing.
#[test]
fn a_stalled_server_times_out_with_a_clear_error() {
    for message in every_client_command_fails_bounded(Hostility::Stall) {
        assert!(message.contains("timed out"), "{message}");
        assert!(message.contains("CAIRN_HTTP_TIMEOUT"), "{message}");
    }
}

/// Point 6: a slow-loris server, whose headers never end.
#[test]
fn a_server_sending_headers_a_byte_at_a_time_times_out() {
    for message in every_client_command_fails_bounded(Hostility::SlowHeaders) {
        assert!(message.contains("timed out"), "{message}");
    }
}

/// Point 6: a slow-loris server, whose body trickles without end.
#[test]
fn a_server_trickling_its_body_is_given_up_on() {
    for message in every_client_command_fails_bounded(Hostility::TrickleBody) {
        assert!(
            message.contains("timed out") || message.contains("too slowly"),
            "{message}"
        );
    }
}

/// Starts `cairn serve --repo REPO args...` on a free loopback port, limited to
/// `descriptors` open files, with the client timeout of `CAIRN_SERVE_CLIENT_TIMEOUT`.
fn serve(sandbox: &Sandbox, repo: &Path, args: &[&str], descriptors: u32) -> Server {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(format!("ulimit -n {descriptors} && exec \"$@\""))
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_cairn"))
        .args(["serve", "--listen", "127.0.0.1:0", "--repo", text(repo)])
        .args(args)
        .env("CAIRN_TOKEN", TOKEN)
        .env("CAIRN_CACHE_DIR", sandbox.path("cache"))
        .env("CAIRN_SERVE_CLIENT_TIMEOUT", "1s");
    Server::spawn(&mut command)
}

/// Point 7: 300 idle connections that never finish their headers, at a limit of 256 open
/// files, must not lock a legitimate client out.
#[test]
fn idle_connections_do_not_lock_legitimate_clients_out() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    fs::create_dir_all(&source).unwrap();
    fs::write(source.join("file"), b"content").unwrap();
    let repo = sandbox.plain_repo_with_backup_of(&source);
    let server = serve(&sandbox, &repo, &[], 256);
    let address: std::net::SocketAddr =
        server.url.strip_prefix("http://").unwrap().parse().unwrap();
    let mut idle = Vec::new();
    for _ in 0..300 {
        let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_millis(200))
        else {
            continue;
        };
        let _ = stream.write_all(b"GET /repo/list/ HTTP/1.1\r\nHost: x\r\n");
        idle.push(stream);
    }
    assert!(idle.len() > 200, "only {} connections opened", idle.len());
    let mut legitimate = client(&sandbox);
    legitimate.env("CAIRN_HTTP_TIMEOUT", "10s").args([
        "list",
        "--repo",
        &format!("{}/repo", server.url),
    ]);
    let run = run_bounded(&mut legitimate, TIME_LIMIT);
    run.assert_within(MEMORY_CAP_BYTES);
    assert!(run.output.status.success(), "{}", stderr(&run.output));
    drop(idle);
}

/// PUTs `body` to `url` with the token; returns the status.
fn put(agent: &ureq::Agent, url: &str, body: &[u8]) -> u16 {
    agent
        .put(url)
        .header("Authorization", &format!("Bearer {TOKEN}"))
        .send(body)
        .unwrap()
        .status()
        .as_u16()
}

/// Point 8: 40 racing uploads of different bodies to one new name of an append-only server
/// create it once and never replace it; racing uploads of one body all succeed.
#[test]
fn racing_uploads_to_an_append_only_server_create_once_and_never_replace() {
    let sandbox = Sandbox::new();
    let source = sandbox.path("source");
    fs::create_dir_all(&source).unwrap();
    let repo = sandbox.plain_repo_with_backup_of(&source);
    let server = serve(&sandbox, &repo, &["--append-only"], 1024);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    for round in 0..5 {
        let name = format!("data/ee/ee{round:062}");
        let url = format!("{}/repo/objects/{name}", server.url);
        let start = std::sync::Barrier::new(40);
        let statuses: Vec<(Vec<u8>, u16)> = std::thread::scope(|scope| {
            let racers: Vec<_> = (0..40)
                .map(|racer| {
                    let (agent, url, start) = (&agent, &url, &start);
                    scope.spawn(move || {
                        let body = format!("body of racer {racer}").repeat(1000).into_bytes();
                        start.wait();
                        let status = put(agent, url, &body);
                        (body, status)
                    })
                })
                .collect();
            racers.into_iter().map(|r| r.join().unwrap()).collect()
        });
        let created: Vec<&Vec<u8>> = statuses
            .iter()
            .filter(|(_, status)| *status == 201)
            .map(|(body, _)| body)
            .collect();
        assert_eq!(
            created.len(),
            1,
            "round {round}: {} creations",
            created.len()
        );
        assert!(
            statuses.iter().all(|(_, s)| *s == 201 || *s == 409),
            "{:?}",
            statuses.iter().map(|(_, s)| s).collect::<Vec<_>>()
        );
        assert_eq!(
            &fs::read(repo.join(&name)).unwrap(),
            created[0],
            "round {round}"
        );

        let same = format!("{}/repo/objects/data/ef/ef{round:062}", server.url);
        let start = std::sync::Barrier::new(40);
        let body = b"one body for every racer".repeat(1000);
        std::thread::scope(|scope| {
            for _ in 0..40 {
                let (agent, same, start, body) = (&agent, &same, &start, &body);
                scope.spawn(move || {
                    start.wait();
                    assert_eq!(put(agent, same, body), 201);
                });
            }
        });
    }
    let leftovers: Vec<String> = names_below(&repo.join("data/ee"))
        .into_iter()
        .filter(|name| name.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

/// A served source 40,000 directories deep, pulled into a repository and synced into a
/// directory: the walks keep their levels on the heap and stop where a path passes the cap,
/// reporting it, in bounded memory.
#[test]
fn a_source_tree_deeper_than_any_stack_is_walked_to_the_path_cap_and_reported() {
    let sandbox = Sandbox::new();
    let server = hostile_server(Hostility::DeepTree);
    let served = format!("{}/source/src", server.url);
    let repo = sandbox.path("repo");
    sandbox.ok(&["init", "--repo", text(&repo), "--encryption", "none"]);
    let target = sandbox.path("target");
    for destination in [&repo, &target] {
        let run = run_bounded(
            client(&sandbox).args(["sync", &served, text(destination)]),
            TIME_LIMIT,
        );
        run.assert_within(MEMORY_CAP_BYTES);
        let message = stderr(&run.output);
        assert_eq!(run.output.status.code(), Some(3), "{message}");
        assert!(message.contains("longer than the 8192"), "{message}");
    }
    assert!(target.join("d/d/d/d/d/d/d/d").is_dir());
}
