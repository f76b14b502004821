//! `cairn serve`: serves the repository given with `--repo` (as `https://host:port/repo`) and
//! live directories given with `--source NAME=DIR` (as `https://host:port/source/NAME`, for
//! `cairn sync` to pull from) over HTTP(S). The token file names the bearer
//! token every request must carry. A non-loopback address needs TLS (`--tls-cert`,
//! `--tls-key`) unless `--insecure-http` says otherwise. `--client-timeout` and
//! `--max-connections` bound what idle or slow clients can hold. Prints the URL once
//! listening.

use super::GlobalArgs;
use anyhow::{Context, Result, bail};
use cairn::net::server::{Access, ServeOptions, SourceDir, TlsFiles};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on, e.g. 127.0.0.1:8080 (port 0 picks a free one)
    #[arg(long, value_name = "ADDR")]
    listen: String,
    /// Serve the live directory DIR, read-only, as http(s)://ADDR/source/NAME (repeatable)
    #[arg(long = "source", value_name = "NAME=DIR", value_parser = source)]
    sources: Vec<SourceDir>,
    /// Refuse every write
    #[arg(long, conflicts_with = "append_only")]
    read_only: bool,
    /// Add objects but never delete or overwrite one (locks excepted)
    #[arg(long)]
    append_only: bool,
    /// PEM certificate chain for HTTPS
    #[arg(long, requires = "tls_key", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS
    #[arg(long, requires = "tls_cert", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Serve HTTPS with a certificate made for this machine (kept in --tls-dir, made again
    /// only when missing) and print its SHA-256 fingerprint, which clients pin with
    /// --tls-fingerprint
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    tls_self_signed: bool,
    /// Where --tls-self-signed keeps its certificate and key (default:
    /// $XDG_CONFIG_HOME/cairn/serve-tls or ~/.config/cairn/serve-tls)
    #[arg(long, value_name = "DIR")]
    tls_dir: Option<PathBuf>,
    /// Another name (or address) the certificate --tls-self-signed makes is for, besides
    /// localhost, the host name and the machine's addresses (repeatable)
    #[arg(long = "tls-name", value_name = "NAME")]
    tls_names: Vec<String>,
    /// Allow plain HTTP on a non-loopback address (the token and data cross in clear)
    #[arg(long)]
    insecure_http: bool,
    /// How long a client may take over its TLS handshake or a request's headers, and how
    /// long an idle connection is kept open
    #[arg(long, env = "CAIRN_SERVE_CLIENT_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "30s")]
    client_timeout: std::time::Duration,
    /// Connections served at once; more wait until one closes (default: half the open-file
    /// limit, between 16 and 1024)
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
}

/// Parses `NAME=DIR`.
fn source(text: &str) -> std::result::Result<SourceDir, String> {
    let (name, dir) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: give NAME=DIR"))?;
    if !cairn::net::server::valid_source_name(name) {
        return Err(format!(
            "source name {name:?}: use letters, digits, - and _"
        ));
    }
    Ok(SourceDir {
        name: name.to_owned(),
        dir: PathBuf::from(dir),
    })
}

pub fn run(global: &GlobalArgs, args: ServeArgs) -> Result<ExitCode> {
    let repo = match &global.repo {
        Some(location) => Some(global.backend_at(location)?),
        None => None,
    };
    if repo.is_none() && args.sources.is_empty() {
        bail!("nothing to serve: give --repo R, --source NAME=DIR, or both");
    }
    let token = global
        .token()
        .context("cairn serve needs the token clients must present")?;
    let listener = std::net::TcpListener::bind(&args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    if !args.tls_self_signed && (args.tls_dir.is_some() || !args.tls_names.is_empty()) {
        bail!(
            "--tls-dir and --tls-name are for the certificate --tls-self-signed makes: add --tls-self-signed"
        );
    }
    let mut pinned = None;
    let tls = match args.tls_self_signed {
        true => {
            let dir = match args.tls_dir {
                Some(dir) => dir,
                None => {
                    super::config_dir("neither XDG_CONFIG_HOME nor HOME is set: give --tls-dir")?
                        .join("serve-tls")
                }
            };
            let (files, fingerprint) =
                cairn::net::server::self_signed::ensure(&dir, &args.tls_names)?;
            pinned = Some(cairn::net::pin::show(&fingerprint));
            Some(files)
        }
        false => args
            .tls_cert
            .zip(args.tls_key)
            .map(|(cert_chain, key)| TlsFiles { cert_chain, key }),
    };
    if tls.is_none() && !address.ip().is_loopback() && !args.insecure_http {
        bail!(
            "{address} is not a loopback address: serve it with --tls-cert and --tls-key, or pass --insecure-http to send the token and data in clear"
        );
    }
    let access = if args.read_only {
        Access::ReadOnly
    } else if args.append_only {
        Access::AppendOnly
    } else {
        Access::ReadWrite
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let names: Vec<String> = args.sources.iter().map(|s| s.name.clone()).collect();
    let serves_repo = repo.is_some();
    let options = ServeOptions {
        repo,
        sources: args.sources,
        access,
        token,
        tls,
        client_timeout: args.client_timeout,
        max_connections: args
            .max_connections
            .unwrap_or_else(cairn::net::server::default_max_connections),
    };
    cairn::net::server::run(listener, options, |address| {
        // Whoever started the server may stop reading its output: never fail on that.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on {scheme}://{address}");
        if let Some(fingerprint) = &pinned {
            let _ = writeln!(out, "certificate SHA-256 fingerprint {fingerprint}");
            let _ = writeln!(out, "clients connect with --tls-fingerprint {fingerprint}");
        }
        if serves_repo {
            let _ = writeln!(out, "repository at {scheme}://{address}/repo");
        }
        for name in &names {
            let _ = writeln!(out, "source {name} at {scheme}://{address}/source/{name}");
        }
        let _ = out.flush();
    })?;
    Ok(ExitCode::SUCCESS)
}
