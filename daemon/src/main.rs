//! `metalbondd`: the MetalBond route server daemon.
//!
//! `metalbondd` with no arguments serves on `[::1]:4711`. `metalbondd server
//! --listen ADDR [--keepalive SECS] [--verbose] [--http ADDR]` accepts the Go
//! reference's server flags and address forms (`:4711`, `localhost:4711`,
//! and host names for `client --server`), so it drops into the same systemd
//! unit; `--metrics ADDR` adds a Prometheus endpoint.
//!
//! The default state directory and API socket depend on the role and on
//! what the user may write ([`metalbondd::store::default_state_dir`]): a
//! route server (or a daemon running both roles) uses `metalbondd`, the
//! client role alone `metalbondd-client`, so both run on one host.
//!
//! `--config FILE` reads a TOML configuration file (`examples/metalbondd.toml`);
//! flags given on the command line override it, and SIGHUP re-reads it.
//! `metalbondd check-config FILE` (or `--check --config FILE`) validates a
//! file, static routes included, and exits: `FILE: ok`, or one
//! `FILE:LINE:COL: reason` line per error, in file order.
//!
//! A `[client]` section in the file also runs the hypervisor role next to the
//! server; `metalbondd client [--config FILE] FLAGS` runs it alone, its flags
//! overriding the file's `[client]` section.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use metalbondd::app;
use metalbondd::settings::{self, ClientArgs, LogFormat, Reloader, ServerArgs, Settings};
use metalbondd_config as defaults;
use tracing::{error, info};

/// MetalBond v1 route server.
#[derive(Parser, Debug)]
#[command(
    name = "metalbondd",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Server options (when no subcommand is given, `metalbondd` runs a server).
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a route server (the default).
    Server(ServerArgs),
    /// Run the hypervisor role: connect to route servers, subscribe
    /// to VNIs, announce routes and install received routes into kernel
    /// routing tables. Flags of the Go reference's `metalbond client`; with
    /// --config, the file's [client] section, the flags overriding it.
    Client(ClientArgs),
    /// Validate a configuration file, static routes included, and exit:
    /// prints `FILE: ok` (exit 0) or every error, one `FILE:LINE:COL:
    /// reason` line each in file order (exit 1).
    CheckConfig {
        /// The TOML configuration file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

fn main() -> ExitCode {
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
            // One line, as for every other bad argument.
            let line = metalbond_types::usage::one_line(&e.render().to_string());
            eprintln!("metalbondd: {line} (see --help)");
            return ExitCode::from(2);
        }
    };
    let args = match cli.command {
        Some(Command::CheckConfig { file }) => return check_config(&file, &ServerArgs::default()),
        Some(Command::Server(args)) => args,
        Some(Command::Client(args)) => {
            let loaded =
                settings::load_client(&args).map_err(|e| format!("metalbondd client: {e}"));
            return run(
                loaded,
                args.config.as_deref(),
                settings::client_reloader(&args),
            );
        }
        None => cli.server,
    };
    // Before anything is bound: "Address already in use" would not say
    // that the same address was simply given twice.
    if let Err(e) = defaults::no_duplicate_listen(&args.listen) {
        eprintln!("metalbondd: --listen: {e}");
        return ExitCode::from(2);
    }
    if args.check {
        // clap enforces that --check comes with --config.
        let path = args.config.clone().unwrap_or_default();
        return check_config(&path, &args);
    }
    run(
        settings::load_server(&args).map_err(|e| e.to_string()),
        args.config.as_deref(),
        settings::server_reloader(&args),
    )
}

/// Starts logging and the runtime and runs the daemon with the `loaded`
/// settings until it stops. Settings that did not load are reported on
/// stderr (before logging exists), every error on its own line.
fn run(
    loaded: Result<(Settings, LogFormat), String>,
    config: Option<&Path>,
    reload: Option<Reloader>,
) -> ExitCode {
    let (settings, log_format) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let log = metalbondd::logging::init(&settings.log_level, log_format == LogFormat::Json);
    if let Some(path) = config {
        info!(file = %path.display(), "configuration loaded");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let started = std::time::Instant::now();
    let outcome = runtime.block_on(app::run(settings, reload, Some(log)));
    // Tasks still holding the state store close it here: the final line
    // comes after everything is written and closed.
    drop(runtime);
    match outcome {
        Ok(()) => {
            info!(
                uptime_secs = format!("{:.3}", started.elapsed().as_secs_f64()),
                "metalbondd stopped"
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// `check-config FILE` / `--check --config FILE`: validates without starting
/// anything.
fn check_config(path: &Path, args: &ServerArgs) -> ExitCode {
    match settings::check_file(path, args) {
        Ok(()) => {
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
