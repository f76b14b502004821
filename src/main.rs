//! The `cairn` command line: parses arguments, installs logging, runs one subcommand from
//! `cli/` and maps the outcome to an exit code (0 success, 1 failure, 3 backup saved with
//! unreadable files). Errors print with their whole chain; a closed stdout pipe exits quietly.

mod cli;

use clap::FromArgMatches;
use std::io::IsTerminal;
use std::process::ExitCode;

fn main() -> ExitCode {
    let matches = cli::command().get_matches();
    let args = cli::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // Colours only for a person at a terminal, and not when NO_COLOR asks for none.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(args.log_filter())),
        )
        .with_ansi(colour)
        .with_writer(|| PrintableLog(std::io::stderr()))
        .without_time()
        .with_target(false)
        .init();
    match cli::run(args) {
        Ok(code) => code,
        Err(error) => {
            let broken_pipe = error.chain().any(|cause| {
                let kind = match cause.downcast_ref::<cairn::error::Error>() {
                    Some(e) => e.io_kind(),
                    None => cause.downcast_ref::<std::io::Error>().map(|e| e.kind()),
                };
                kind == Some(std::io::ErrorKind::BrokenPipe)
            });
            if broken_pipe {
                return ExitCode::SUCCESS;
            }
            // Some causes span lines (a TOML error points at its line and column).
            eprintln!("error: {}", cli::printable_lines(&format!("{error:#}")));
            ExitCode::FAILURE
        }
    }
}

/// stderr for log lines: one event per write, its control characters shown as `?` (a name
/// in a warning cannot drive the terminal or forge a line) but for the line's end and the
/// escapes of its colours (the logger escapes those that come with names itself).
struct PrintableLog(std::io::Stderr);

impl std::io::Write for PrintableLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let last = buf.len().saturating_sub(1);
        let shown: Vec<u8> = (buf.iter().enumerate())
            .map(|(i, &byte)| match byte {
                b'\n' if i == last => byte,
                0x1b => byte,
                0..0x20 | 0x7f => b'?',
                _ => byte,
            })
            .collect();
        self.0.write_all(&shown)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}
