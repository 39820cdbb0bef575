//! `metalbondd`: the MetalBond route server daemon.
//!
//! `metalbondd` with no arguments serves on `[::1]:4711`. `metalbondd server
//! --listen ADDR [--keepalive SECS] [--verbose] [--http ADDR]` accepts the Go
//! reference's server flags, so it drops into the same systemd unit.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use metalbondd::app::{self, ApiSettings, Settings};
use metalbondd::server::{ServerConfig, SessionSettings};
use metalbondd_config as defaults;
use tracing::error;
use tracing_subscriber::EnvFilter;

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
}

#[derive(Args, Debug, Clone)]
struct ServerArgs {
    /// Address to listen on; repeat for several. Default [::1]:4711 (loopback only).
    #[arg(long, value_name = "ADDR")]
    listen: Vec<SocketAddr>,
    /// Keepalive interval in seconds offered to clients (0 means 5).
    #[arg(long, value_name = "SECS", default_value_t = defaults::DEFAULT_KEEPALIVE_SECS)]
    keepalive: u32,
    /// Log debug details.
    #[arg(short, long)]
    verbose: bool,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// HTTP listen address of the Go reference (status page); accepted for
    /// compatibility, not served yet.
    #[arg(long, value_name = "ADDR")]
    http: Option<String>,
    /// Most sessions open at once.
    #[arg(long, value_name = "N", default_value_t = defaults::DEFAULT_MAX_SESSIONS)]
    max_sessions: usize,
    /// Close a session that falls this many bytes behind the update log.
    #[arg(long, value_name = "BYTES", default_value_t = defaults::DEFAULT_MAX_SESSION_LAG_BYTES)]
    max_lag_bytes: u64,
    /// Largest batch of route data a peer may have unacknowledged (batches
    /// start at 16 KiB and grow while the peer reads fast; Go peers reset at
    /// 64 KiB unread); 0 disables pacing.
    #[arg(long, value_name = "BYTES", default_value_t = 16 * 1024)]
    pace_limit: usize,
    /// Close a session whose socket accepts no data for this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    write_timeout: u64,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
    Text,
    Json,
}

fn init_logging(args: &ServerArgs) {
    let default = if args.verbose { "debug" } else { "info" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colours only for a person at a terminal, never in files or journald.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Server(args)) => args,
        None => cli.server,
    };
    init_logging(&args);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(app::run(settings_from_args(&args), None)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn settings_from_args(args: &ServerArgs) -> Settings {
    let listen = if args.listen.is_empty() {
        vec![defaults::DEFAULT_LISTEN
            .parse()
            .expect("default listen address")]
    } else {
        args.listen.clone()
    };
    let keepalive = defaults::effective_keepalive_secs(args.keepalive);
    Settings {
        server: ServerConfig {
            listen,
            session: SessionSettings {
                keepalive_secs: keepalive,
                write_timeout: Duration::from_secs(args.write_timeout.max(1))
                    .max(Duration::from_millis(2500) * keepalive),
                max_lag_bytes: args.max_lag_bytes,
                pace_limit: args.pace_limit,
            },
            max_sessions: args.max_sessions,
        },
        api: ApiSettings {
            socket: PathBuf::from("/run/metalbondd/api.sock"),
            socket_mode: 0o660,
            socket_group: None,
            tcp_listen: None,
            tcp_read_only: true,
        },
        state_dir: PathBuf::from("/var/lib/metalbondd"),
        static_routes: Vec::new(),
        log_level: if args.verbose { "debug" } else { "info" }.to_string(),
        http: args.http.clone(),
    }
}
