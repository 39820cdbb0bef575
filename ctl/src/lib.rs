//! `mbctl`: the command-line client of metalbondd's control API.
//!
//! It talks gRPC (the `metalbondd.v1` API of the `metalbond-proto` crate)
//! over the daemon's Unix socket. See docs/MBCTL.md.
//!
//! Exit status: 0 ok, 1 error from the daemon (a gRPC status), 2 usage or
//! parse error, 3 cannot connect to the daemon.
//!
//! The way through: `cli` parses the command line (clap), `request` checks
//! the arguments, `dispatch` calls the daemon and builds the JSON documents
//! of `model`, `printer` writes them, or in table mode the text `render`
//! makes of them. The library is the binary's body (`main.rs` calls
//! [`main`]) plus [`contract`], mbctl's output contract, which the daemon
//! package's tests read.

mod cli;
mod client;
pub mod contract;
mod dispatch;
mod error;
mod model;
mod printer;
mod render;
mod request;
mod route;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Output};
use crate::error::{CliError, EXIT_DAEMON};
use crate::printer::Printer;

/// Runs mbctl with the process's arguments and returns its exit status.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help, --version, and the help asked for by giving nothing.
        Err(e)
            if !e.use_stderr()
                || e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            e.exit()
        }
        Err(e) => {
            // One line, as for every other error.
            let line = metalbond_types::usage::one_line(&e.render().to_string());
            eprintln!("mbctl: {line} (see --help)");
            return ExitCode::from(2);
        }
    };
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
    match runtime.block_on(dispatch::run(cli, &mut printer)) {
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
