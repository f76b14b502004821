//! A real Garage, the S3-compatible object store, for the S3 tests: one node
//! (`Garage::single`) or a cluster (`Garage::cluster`) on free loopback ports, each node in its
//! own temporary directories, with the layout applied and a key and a bucket made and allowed.
//! Nodes can be killed and restarted; every node still running is killed by PID when the
//! `Garage` is dropped (also when a test panics), and each node dies with the test thread that
//! started it (`PR_SET_PDEATHSIG`) should the test process itself be killed.
//!
//! Besides the environment and the `s3:` repository string for the `cairn` binary, it counts
//! the S3 requests the cluster served (Garage's own metrics, per endpoint) and reaches into the
//! bucket directly (list, get, put, delete objects) through `curl --aws-sigv4`.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The Garage version the suite is proven against, as `scripts/garage.sh` installs it.
pub const GARAGE_VERSION: &str = "2.5.0";
/// The region Garage's config names (`s3_region`); S3 clients must sign for it.
pub const REGION: &str = "garage";
/// The bucket every `Garage` makes.
pub const BUCKET: &str = "cairn";
/// The access key every `Garage` imports (Garage's key ids are `GK` and 24 hex digits).
pub const KEY_ID: &str = "GK0123456789abcdef01234567";
/// The secret of `KEY_ID`.
pub const SECRET: &str = "5ecre75ecre75ecre75ecre75ecre75ecre75ecre75ecre75ecre75ecre75ec0";
/// The RPC secret the nodes of a cluster share.
const RPC_SECRET: &str = "c41f0c41f0c41f0c41f0c41f0c41f0c41f0c41f0c41f0c41f0c41f0c41f0c41f";
const ADMIN_TOKEN: &str = "cairn-test-admin-token";
const METRICS_TOKEN: &str = "cairn-test-metrics-token";
/// How long a node may take to come up, or the nodes to connect.
const START_LIMIT: Duration = Duration::from_secs(60);

/// The Garage binary: `$CAIRN_GARAGE`, else where `scripts/garage.sh` installs it. Panics
/// saying how to get it when it is missing: a skipped S3 suite is a red CI.
pub fn garage_binary() -> PathBuf {
    let path = match std::env::var_os("CAIRN_GARAGE") {
        Some(path) => PathBuf::from(path),
        None => {
            let tools = std::env::var_os("CAIRN_TOOLS_DIR").map_or_else(
                || PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/cairn-tools"),
                PathBuf::from,
            );
            tools.join("bin/garage")
        }
    };
    assert!(
        path.is_file(),
        "the S3 tests need Garage {GARAGE_VERSION}, and {} does not exist: run \
         `bash scripts/garage.sh` (it builds Garage once into ~/.cache/cairn-tools, or \
         $CAIRN_TOOLS_DIR) or set CAIRN_GARAGE to a garage {GARAGE_VERSION} binary",
        path.display()
    );
    path
}

/// A loopback port nobody listens on right now.
/// A loopback port free now, below the kernel's ephemeral range (32768 and up): a port the
/// kernel handed out for port 0 and that was closed again can be taken by any outgoing
/// connection before Garage binds it, and a node then reaches something else. Each test
/// process starts at its own place in 20000..32000 and counts up from there.
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = (std::process::id() % 400) * 30;
    loop {
        let port = 20_000 + (start + NEXT.fetch_add(1, Ordering::SeqCst)) % 12_000;
        let port = u16::try_from(port).expect("below 32000");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// One Garage node: its config, its ports and, while it runs, its process.
struct Node {
    dir: PathBuf,
    s3_port: u16,
    rpc_port: u16,
    admin_port: u16,
    process: Option<Child>,
}

impl Node {
    fn config(&self) -> PathBuf {
        self.dir.join("garage.toml")
    }

    /// `garage -c CONFIG args...` for this node, asserting success; returns stdout.
    fn garage(&self, args: &[&str]) -> String {
        let output = self.garage_output(args);
        assert!(
            output.status.success(),
            "garage {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    fn garage_output(&self, args: &[&str]) -> Output {
        Command::new(garage_binary())
            .arg("-c")
            .arg(self.config())
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Starts `garage server` and waits until it answers on its S3 port.
    fn start(&mut self) {
        assert!(self.process.is_none(), "node already running");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("garage.log"))
            .unwrap();
        let mut command = Command::new(garage_binary());
        command
            .arg("-c")
            .arg(self.config())
            .arg("server")
            .env("RUST_LOG", "garage=info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; the closure touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        self.process = Some(command.spawn().unwrap());
        let deadline = Instant::now() + START_LIMIT;
        while std::net::TcpStream::connect(("127.0.0.1", self.s3_port)).is_err() {
            let exited = self.process.as_mut().unwrap().try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "garage did not come up ({exited:?}): {}",
                fs::read_to_string(self.dir.join("garage.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the node (SIGKILL, by PID) and reaps it.
    fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    /// `GET` on the admin API with `token`; the body, or `None` when it did not answer 200.
    fn admin_get(&self, path: &str, token: &str) -> Option<String> {
        let url = format!("http://127.0.0.1:{}{path}", self.admin_port);
        let mut response = ureq::get(&url)
            .header("Authorization", &format!("Bearer {token}"))
            .call()
            .ok()?;
        response.body_mut().read_to_string().ok()
    }
}

/// A running Garage: one node or a cluster, with key `KEY_ID` allowed on bucket `BUCKET`.
/// Cairn talks to the first node's S3 API; the fault tests kill the others.
pub struct Garage {
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl Garage {
    /// One node, `replication_factor = 1`.
    pub fn single() -> Self {
        Self::start(1)
    }

    /// `nodes` nodes, each in a zone of its own, every object on each of them
    /// (`replication_factor = nodes`, `consistency_mode = "consistent"`: reads and writes need
    /// a majority), all connected.
    pub fn cluster(nodes: usize) -> Self {
        Self::start(nodes)
    }

    fn start(count: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut nodes: Vec<Node> = (0..count)
            .map(|i| {
                let node_dir = dir.path().join(format!("node{i}"));
                fs::create_dir_all(&node_dir).unwrap();
                Node {
                    dir: node_dir,
                    s3_port: free_port(),
                    rpc_port: free_port(),
                    admin_port: free_port(),
                    process: None,
                }
            })
            .collect();
        for node in &nodes {
            write_config(node, count);
        }
        for node in &mut nodes {
            node.start();
        }
        let garage = Garage { nodes, _dir: dir };
        garage.form_cluster();
        garage
    }

    /// Connects the nodes, applies a layout holding all of them, imports the key, makes the
    /// bucket and waits until every node is up and the bucket answers.
    fn form_cluster(&self) {
        let first = &self.nodes[0];
        let ids: Vec<String> = self
            .nodes
            .iter()
            .map(|node| {
                retry(|| node.garage_output(&["node", "id", "-q"]))
                    .trim()
                    .to_owned()
            })
            .collect();
        for id in &ids[1..] {
            retry(|| first.garage_output(&["node", "connect", id]));
        }
        for (zone, id) in ids.iter().enumerate() {
            let short = id.split('@').next().unwrap();
            let zone = format!("dc{}", zone + 1);
            first.garage(&["layout", "assign", "-z", &zone, "-c", "1G", short]);
        }
        first.garage(&["layout", "apply", "--version", "1"]);
        retry(|| first.garage_output(&["key", "import", "--yes", "-n", "cairn", KEY_ID, SECRET]));
        retry(|| first.garage_output(&["bucket", "create", BUCKET]));
        first.garage(&[
            "bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", "cairn",
        ]);
        self.wait_until_connected();
    }

    /// Waits until the first node is connected to every node running (the nodes killed and
    /// not restarted aside) and the bucket answers a listing.
    fn wait_until_connected(&self) {
        let running = self.nodes.iter().filter(|n| n.process.is_some()).count();
        let deadline = Instant::now() + START_LIMIT;
        loop {
            let health = self.nodes[0].admin_get("/v2/GetClusterHealth", ADMIN_TOKEN);
            let up = health
                .as_deref()
                .and_then(|h| serde_json::from_str::<serde_json::Value>(h).ok())
                .and_then(|h| h["storageNodesUp"].as_u64());
            let listing = self.s3(&[&self.bucket_url("")]);
            if up == Some(running as u64) && listing.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "garage did not come together: {health:?}; the bucket answered: {}",
                String::from_utf8_lossy(&listing.stdout)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills node `index` (SIGKILL) and reaps it.
    pub fn kill(&mut self, index: usize) {
        self.nodes[index].kill();
    }

    /// Starts node `index` again with its config and data, and waits until the first node is
    /// connected to it. The node dies with the thread that calls this (see the module doc).
    pub fn restart(&mut self, index: usize) {
        self.nodes[index].start();
        self.wait_until_connected();
    }

    /// The environment the `cairn` binary reads S3 credentials from, for `Sandbox::with_envs`.
    pub fn env(&self) -> Vec<(String, String)> {
        self.env_with_secret(SECRET)
    }

    /// Like `env`, with `secret` as the secret access key (a wrong one, for the errors).
    pub fn env_with_secret(&self, secret: &str) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", KEY_ID),
            ("AWS_SECRET_ACCESS_KEY", secret),
            ("AWS_REGION", REGION),
            ("AWS_DEFAULT_REGION", REGION),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// `http://127.0.0.1:PORT`, the first node's S3 endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.nodes[0].s3_port)
    }

    /// The repository string of a repository at `prefix` in the bucket.
    pub fn repo(&self, prefix: &str) -> String {
        format!("s3:{}/{BUCKET}/{prefix}", self.endpoint())
    }

    /// S3 requests served by every running node since it started, per endpoint (`GetObject`,
    /// `PutObject`, `ListObjectsV2`, …), from Garage's metrics (`api_s3_request_counter`).
    /// The requests of this module's own bucket access count too.
    pub fn requests(&self) -> Requests {
        let mut counts = BTreeMap::new();
        for node in self.nodes.iter().filter(|n| n.process.is_some()) {
            let metrics = node
                .admin_get("/metrics", METRICS_TOKEN)
                .expect("garage's /metrics answers");
            for line in metrics.lines() {
                let Some(labels) = line.strip_prefix("api_s3_request_counter{") else {
                    continue;
                };
                let endpoint = labels
                    .split("api_endpoint=\"")
                    .nth(1)
                    .and_then(|rest| rest.split('"').next())
                    .unwrap_or_default();
                let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
                *counts.entry(endpoint.to_owned()).or_insert(0) += value as u64;
            }
        }
        Requests(counts)
    }

    /// `curl` signing for the bucket's key, with `args`; its output whatever the status.
    fn s3(&self, args: &[&str]) -> Output {
        Command::new("curl")
            .args(["-sS", "--fail-with-body"])
            // Garage wants the payload's hash named; curl before 8.0 leaves it out.
            .args([
                "-H",
                "x-amz-content-sha256: UNSIGNED-PAYLOAD",
                "--aws-sigv4",
            ])
            .arg(format!("aws:amz:{REGION}:s3"))
            .arg("--user")
            .arg(format!("{KEY_ID}:{SECRET}"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("curl runs (scripts/test.sh installs it)")
    }

    fn s3_ok(&self, args: &[&str]) -> Vec<u8> {
        let output = self.s3(args);
        assert!(
            output.status.success(),
            "curl {args:?}: {}{}",
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout)
        );
        output.stdout
    }

    fn bucket_url(&self, key: &str) -> String {
        format!("{}/{BUCKET}/{key}", self.endpoint())
    }

    /// Every object whose key starts with `prefix`, with its size, in key order.
    pub fn objects(&self, prefix: &str) -> BTreeMap<String, u64> {
        let mut objects = BTreeMap::new();
        let mut token: Option<String> = None;
        loop {
            // The query in the order and encoding SigV4 signs it: curl does not sort it.
            let continuation = token
                .as_deref()
                .map(|t| format!("continuation-token={}&", percent_encode(t)))
                .unwrap_or_default();
            let url = format!(
                "{}?{continuation}list-type=2&prefix={}",
                self.bucket_url(""),
                percent_encode(prefix)
            );
            let body = String::from_utf8(self.s3_ok(&[&url])).unwrap();
            for contents in body.split("<Contents>").skip(1) {
                let key = xml_field(contents, "Key").unwrap();
                let size = xml_field(contents, "Size").unwrap().parse().unwrap();
                objects.insert(xml_unescape(&key), size);
            }
            token = xml_field(&body, "NextContinuationToken");
            if token.is_none() {
                return objects;
            }
        }
    }

    /// The bytes of object `key`.
    pub fn get(&self, key: &str) -> Vec<u8> {
        self.s3_ok(&[&self.bucket_url(key)])
    }

    /// Writes object `key` (whole, replacing it).
    pub fn put(&self, key: &str, bytes: &[u8]) {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(bytes).unwrap();
        let upload = file.path().to_str().unwrap().to_owned();
        self.s3_ok(&["-T", &upload, &self.bucket_url(key)]);
    }

    /// Deletes object `key`.
    pub fn delete(&self, key: &str) {
        self.s3_ok(&["-X", "DELETE", &self.bucket_url(key)]);
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
    }
}

/// S3 requests per endpoint, as `Garage::requests` counts them.
#[derive(Debug, Clone, PartialEq)]
pub struct Requests(pub BTreeMap<String, u64>);

impl Requests {
    /// The requests made since `before` (a count taken earlier), endpoints with none left out.
    pub fn since(&self, before: &Requests) -> Requests {
        Requests(
            self.0
                .iter()
                .map(|(endpoint, &n)| (endpoint.clone(), n.saturating_sub(before.get(endpoint))))
                .filter(|&(_, n)| n > 0)
                .collect(),
        )
    }

    /// The count of `endpoint` (`PutObject`, …), 0 when none.
    pub fn get(&self, endpoint: &str) -> u64 {
        self.0.get(endpoint).copied().unwrap_or(0)
    }

    /// All requests together.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

/// Writes `node`'s config for a cluster of `count` nodes.
fn write_config(node: &Node, count: usize) {
    let dir = node.dir.display();
    let config = format!(
        r#"metadata_dir = "{dir}/meta"
data_dir = "{dir}/data"
db_engine = "sqlite"
metadata_fsync = false
data_fsync = false
block_size = "1M"
compression_level = "none"
replication_factor = {count}
consistency_mode = "consistent"
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{RPC_SECRET}"

[s3_api]
api_bind_addr = "127.0.0.1:{s3}"
s3_region = "{REGION}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin}"
admin_token = "{ADMIN_TOKEN}"
metrics_token = "{METRICS_TOKEN}"
"#,
        rpc = node.rpc_port,
        s3 = node.s3_port,
        admin = node.admin_port,
    );
    fs::write(node.config(), config).unwrap();
}

/// Runs a garage CLI command until it succeeds (a node just started may not answer RPC yet);
/// returns its stdout.
fn retry(mut run: impl FnMut() -> Output) -> String {
    let deadline = Instant::now() + START_LIMIT;
    loop {
        let output = run();
        if output.status.success() {
            return String::from_utf8(output.stdout).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "garage kept failing: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The text of the first `<name>…</name>` element in `xml`.
fn xml_field(xml: &str, name: &str) -> Option<String> {
    let start = xml.find(&format!("<{name}>"))? + name.len() + 2;
    let end = start + xml[start..].find(&format!("</{name}>"))?;
    Some(xml[start..end].to_owned())
}

fn xml_unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
