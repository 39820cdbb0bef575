//! `mbctl`: the command-line client of metalbondd's control API.
//!
//! It talks gRPC (the `metalbondd.v1` API of the `metalbond-proto` crate)
//! over the daemon's Unix socket. See docs/MBCTL.md.
//!
//! Exit status: 0 ok, 1 error from the daemon (a gRPC status), 2 usage or
//! parse error, 3 cannot connect to the daemon.

mod cli;
mod client;
mod commands;
mod error;
mod model;
mod route;
mod table;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Output};
use crate::commands::Printer;
use crate::error::{CliError, EXIT_DAEMON};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = cli.output;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mbctl: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_DAEMON);
        }
    };
    let mut printer = Printer::new(Box::new(std::io::stdout()), format);
    match runtime.block_on(commands::run(cli, &mut printer)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            report(&e, format);
            ExitCode::from(e.exit_code())
        }
    }
}

/// Prints an error: a JSON document on stdout in JSON mode, else one
/// `mbctl: ...` line on stderr.
fn report(e: &CliError, format: Output) {
    if e.is_silent() {
        return;
    }
    match format {
        Output::Json => {
            let doc = serde_json::to_string(&e.to_json()).unwrap_or_default();
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{doc}");
            let _ = out.flush();
        }
        Output::Table => eprintln!("mbctl: {e}"),
    }
}
