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
        .with_writer(std::io::stderr)
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
            eprintln!("error: {}", cli::printable(&format!("{error:#}")));
            ExitCode::FAILURE
        }
    }
}
