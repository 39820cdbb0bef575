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

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use metalbondd::app::{self, ApiSettings, MetricsSettings, Reloader, Settings};
use metalbondd::client::connection::BackoffConfig;
use metalbondd::client::{ClientConfig, ClientSettings, ServerAddr};
use metalbondd::server::{ServerConfig, SessionSettings};
use metalbondd::store::{default_api_socket, default_state_dir, PathRole};
use metalbondd::wire::{Route, Vni};
use metalbondd_config::{self as defaults, Config, ConfigError, ConfigErrors};
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

/// Server flags. Those given override the configuration file, which
/// overrides the defaults; a flag left out is `None` (or empty).
#[derive(Args, Debug, Clone, Default)]
struct ServerArgs {
    /// TOML configuration file (see examples/metalbondd.toml). Flags given on
    /// the command line override its values; SIGHUP re-reads it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Validate the configuration file (static routes included) and exit
    /// instead of running.
    #[arg(long, requires = "config")]
    check: bool,
    /// Address to listen on, as in Go: IP:PORT, :PORT (every address, IPv4
    /// and IPv6) or NAME:PORT (e.g. localhost:4711, resolved at start);
    /// repeat for several (none twice). Default [::1]:4711 (loopback only)
    /// [file: server.listen].
    #[arg(long, value_name = "ADDR", value_parser = defaults::listen_addr)]
    listen: Vec<SocketAddr>,
    /// Keepalive interval in seconds offered to clients (0 means 5). Default
    /// 5 [file: server.keepalive].
    #[arg(long, value_name = "SECS")]
    keepalive: Option<u32>,
    /// Log debug details (the file's log.level becomes "debug"; RUST_LOG
    /// overrides both).
    #[arg(short, long)]
    verbose: bool,
    /// Log format. Default text [file: log.format].
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Status page as in the Go reference (/, /routes.json, /routes.yaml),
    /// plus /metrics and /healthz: IP:PORT, :PORT (all addresses) or
    /// localhost:PORT. Off by default [file: server.http].
    #[arg(long, value_name = "ADDR", value_parser = defaults::http_addr)]
    http: Option<SocketAddr>,
    /// Prometheus metrics (/metrics) and /healthz on this address, e.g.
    /// 127.0.0.1:9711. Off by default [file: metrics.listen].
    #[arg(long, value_name = "ADDR", value_parser = defaults::http_addr)]
    metrics: Option<SocketAddr>,
    /// Most VNIs with their own label in the per-VNI metrics (the rest are
    /// summed under vni="other"). Default 1000 [file: metrics.vni_label_limit].
    #[arg(long, value_name = "N")]
    metrics_vni_limit: Option<usize>,
    /// Most sessions open at once. Default 10000 [file: server.max_sessions].
    #[arg(long, value_name = "N")]
    max_sessions: Option<usize>,
    /// Close a session that falls this many bytes behind the update log.
    /// Default 1073741824 (1 GiB) [file: server.max_lag_bytes].
    #[arg(long, value_name = "BYTES")]
    max_lag_bytes: Option<u64>,
    /// Largest batch of route data a peer may have unacknowledged (batches
    /// start at 16 KiB and grow while the peer reads fast; Go peers reset at
    /// 64 KiB unread); 0 disables pacing. Default 16384 [file: server.pace_limit].
    #[arg(long, value_name = "BYTES")]
    pace_limit: Option<usize>,
    /// Close a session whose socket accepts no data for this many seconds.
    /// Default 60 [file: server.write_timeout].
    #[arg(long, value_name = "SECS")]
    write_timeout: Option<u64>,
    /// Keep an ended session's routes this many seconds before withdrawing
    /// them, so a reconnecting client takes them over silently; 0 withdraws
    /// at once. Default 0 [file: server.withdraw_delay].
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(0..=86_400))]
    withdraw_delay: Option<u64>,
    /// Unix socket of the control API. Default /run/metalbondd/api.sock if
    /// /run/metalbondd can be created, else
    /// $XDG_RUNTIME_DIR/metalbondd/api.sock, else
    /// /tmp/metalbondd-UID/api.sock [file: api.socket].
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,
    /// Directory of the daemon's state store. Default /var/lib/metalbondd
    /// if it can be created, else $XDG_STATE_HOME/metalbondd, else
    /// ~/.local/state/metalbondd [file: state.dir].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// A route watcher (API WatchRoutes) this many bytes behind the update
    /// log gets a `lagged` event and its stream ends. Default 67108864
    /// (64 MiB) [file: api.watch_max_lag_bytes].
    #[arg(long, value_name = "BYTES")]
    watch_max_lag_bytes: Option<u64>,
}

/// Client (hypervisor role) flags, as the Go reference's `metalbond client`.
/// With `--config FILE`, the file's `[client]` section (and `[api]`,
/// `[state]`, `[log]`) is the base and the flags given override it; a flag
/// that can repeat replaces the file's whole list.
#[derive(Args, Debug, Clone, Default)]
struct ClientArgs {
    /// TOML configuration file whose `[client]` section is used (the server
    /// role does not run: use `metalbondd --config FILE` for both roles).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Route server to connect to, HOST:PORT with an IP address or a name,
    /// e.g. [2001:db8::1]:4711 or metalbond.example:4711 (resolved on every
    /// connection attempt; every address it resolves to is tried);
    /// repeatable. Required unless the config file gives client.servers
    /// [file: client.servers].
    #[arg(long, value_name = "HOST:PORT", required_unless_present = "config")]
    server: Vec<ServerAddr>,
    /// VNI to subscribe to; repeatable [file: client.subscribe].
    #[arg(long, value_name = "VNI")]
    subscribe: Vec<u32>,
    /// Route to announce: VNI#PREFIX@NEXTHOP[#TYPE[#FROM#TO]] or the Go form
    /// VNI#PREFIX#NEXTHOP[#TYPE][#FROM#TO]; repeatable [file:
    /// client.announce].
    #[arg(long, value_name = "ROUTE")]
    announce: Vec<String>,
    /// Install the received routes of VNI into routing table TABLE (not 0);
    /// repeatable. Needs --tun [file: client.install_routes].
    #[arg(long, value_name = "VNI#TABLE")]
    install_routes: Vec<String>,
    /// Tunnel device the installed routes leave through (an ip6tnl device)
    /// [file: client.tun].
    #[arg(long, value_name = "DEV")]
    tun: Option<String>,
    /// Receive only IPv4 routes (received IPv6 destinations are ignored)
    /// [file: client.ipv4_only].
    #[arg(long)]
    ipv4_only: bool,
    /// Keepalive interval in seconds proposed to the servers (0 means 5).
    /// Default 5 [file: client.keepalive].
    #[arg(long, value_name = "SECS")]
    keepalive: Option<u32>,
    /// At start, protocol-254 routes already in the mapped tables (an
    /// earlier run's) are kept (unless --flush-at-start), and the received
    /// routes replace them in place; those the servers do not confirm are
    /// deleted once this many seconds have passed, or earlier once every
    /// server is established and has sent its dump (no UPDATE for 1 s).
    /// Default 30 [file: client.hold_time].
    #[arg(long, value_name = "SECS")]
    hold_time: Option<u64>,
    /// When the last established server is lost, installed routes stay
    /// this many seconds; a server back in time resyncs and the routes are
    /// reconciled, otherwise they are deleted. Default 60 [file:
    /// client.stale_time].
    #[arg(long, value_name = "SECS")]
    stale_time: Option<u64>,
    /// Cleanup routes upon exit, as the Go reference's --cleanup: at a clean
    /// exit (SIGINT, SIGTERM, mbctl shutdown) delete every protocol-254
    /// route in the mapped tables. Without it they stay, and the next start
    /// takes them over without a gap. Only the mapped tables are touched
    /// [file: client.cleanup].
    #[arg(long)]
    cleanup: bool,
    /// At start, delete every protocol-254 route in the mapped tables
    /// (left by an earlier run, or added by hand with proto 254) before
    /// connecting, instead of keeping and reconciling them; received routes
    /// are then installed as they arrive (the data plane has a gap). Only
    /// the mapped tables are touched [file: client.flush_at_start].
    #[arg(long)]
    flush_at_start: bool,
    /// Seconds before the first reconnect to a lost server; the delay then
    /// doubles per failed attempt (with +-20% jitter). Default 1 [file:
    /// client.reconnect_min].
    #[arg(long, value_name = "SECS")]
    reconnect_min: Option<u64>,
    /// Largest reconnect delay in seconds. Default 30 [file:
    /// client.reconnect_max].
    #[arg(long, value_name = "SECS")]
    reconnect_max: Option<u64>,
    /// Log debug details (the file's log.level becomes "debug"; RUST_LOG
    /// overrides both).
    #[arg(short, long)]
    verbose: bool,
    /// Log format. Default text [file: log.format].
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Status page as in the Go reference (/, /routes.json, /routes.yaml),
    /// plus /metrics and /healthz. Off by default [file: server.http].
    #[arg(long, value_name = "ADDR", value_parser = defaults::http_addr)]
    http: Option<SocketAddr>,
    /// Prometheus metrics (/metrics) and /healthz on this address, e.g.
    /// 127.0.0.1:9711. Off by default [file: metrics.listen].
    #[arg(long, value_name = "ADDR", value_parser = defaults::http_addr)]
    metrics: Option<SocketAddr>,
    /// Unix socket of the control API. Default
    /// /run/metalbondd-client/api.sock if /run/metalbondd-client can be
    /// created, else $XDG_RUNTIME_DIR/metalbondd-client/api.sock, else
    /// /tmp/metalbondd-client-UID/api.sock [file: api.socket].
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,
    /// Directory of the daemon's state store. Default
    /// /var/lib/metalbondd-client if it can be created, else
    /// $XDG_STATE_HOME/metalbondd-client, else
    /// ~/.local/state/metalbondd-client [file: state.dir].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

impl From<defaults::LogFormat> for LogFormat {
    fn from(f: defaults::LogFormat) -> Self {
        match f {
            defaults::LogFormat::Text => LogFormat::Text,
            defaults::LogFormat::Json => LogFormat::Json,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::CheckConfig { file }) => return check_config(&file, &ServerArgs::default()),
        Some(Command::Server(args)) => args,
        Some(Command::Client(args)) => {
            return match load_client(&args) {
                Ok((settings, log_format)) => {
                    let reload = client_reloader(&args);
                    run(settings, log_format, args.config.as_deref(), reload)
                }
                Err(e) => {
                    eprintln!("metalbondd client: {e}");
                    ExitCode::FAILURE
                }
            };
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
    // Before logging exists, a bad file is reported on stderr as one line.
    let (settings, log_format) = match load(&args) {
        Ok(resolved) => resolved,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    run(
        settings,
        log_format,
        args.config.as_deref(),
        reloader(&args),
    )
}

/// Starts logging and the runtime and runs the daemon until it stops.
fn run(
    settings: Settings,
    log_format: LogFormat,
    config: Option<&Path>,
    reload: Option<Reloader>,
) -> ExitCode {
    let log = metalbondd::logging::init(&settings.log_level, log_format == LogFormat::Json);
    if let Some(path) = config {
        info!(file = %path.display(), "configuration loaded");
    }
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
    match read_config(path, args).and_then(|config| resolve(&config, args, PathRole::Server)) {
        Ok(_) => {
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// The file given with `--config` (or the defaults) with the flags applied.
fn load(args: &ServerArgs) -> Result<(Settings, LogFormat), ConfigErrors> {
    let config = match &args.config {
        Some(path) => read_config(path, args)?,
        None => Config::default(),
    };
    resolve(&config, args, PathRole::Server)
}

/// Reads the file at `path`. With errors, every one of them in file order,
/// those of its static routes included (one `FILE:LINE:COL: reason` line
/// each).
fn read_config(path: &Path, args: &ServerArgs) -> Result<Config, ConfigErrors> {
    let (config, errors) = Config::check_file(path);
    if errors.is_empty() {
        return Ok(config);
    }
    let mut errors = ConfigErrors::from(errors);
    if let Err(more) = resolve(&config, args, PathRole::Server) {
        // Positioned errors only: a complaint about the file as a whole
        // (no route server left) may follow from an error reported above.
        errors.extend(more.0.into_iter().filter(|e| e.location.is_some()));
    }
    Err(errors)
}

/// Re-reads the same file with the same flags on SIGHUP; `None` without
/// `--config`.
fn reloader(args: &ServerArgs) -> Option<Reloader> {
    args.config.as_ref()?;
    let args = args.clone();
    Some(Box::new(move || {
        load(&args).map(|(settings, _)| settings).map_err(|e| {
            // One log line and one API message, however many errors.
            let lines: Vec<String> = e.0.iter().map(ToString::to_string).collect();
            lines.join("; ")
        })
    }))
}

/// Merges the configuration file and the flags (a flag given wins) into the
/// daemon's settings and the log format; paths neither gives are `role`'s
/// defaults. Parses the static routes; a bad one is an error at its
/// position in the file.
fn resolve(
    config: &Config,
    args: &ServerArgs,
    role: PathRole,
) -> Result<(Settings, LogFormat), ConfigErrors> {
    let file = &config.server;
    let listen = if args.listen.is_empty() {
        file.listen.clone()
    } else {
        args.listen.clone()
    };
    let keepalive = defaults::effective_keepalive_secs(args.keepalive.unwrap_or(file.keepalive));
    let write_timeout = args.write_timeout.unwrap_or(file.write_timeout);

    let mut errors = ConfigErrors::default();
    let mut static_routes = Vec::with_capacity(config.routes.static_routes.len());
    for (i, text) in config.routes.static_routes.iter().enumerate() {
        match text.get_ref().parse::<Route>() {
            Ok(route) => static_routes.push(route),
            Err(e) => {
                errors.extend([config.error_at(text.span(), format!("routes.static[{i}]: {e}"))])
            }
        }
    }

    let api = &config.api;
    let settings = Settings {
        server: ServerConfig {
            listen,
            session: SessionSettings {
                keepalive_secs: keepalive,
                write_timeout: Duration::from_secs(write_timeout.max(1))
                    .max(Duration::from_millis(2500) * keepalive),
                max_lag_bytes: args.max_lag_bytes.unwrap_or(file.max_lag_bytes),
                pace_limit: args.pace_limit.unwrap_or(file.pace_limit),
                withdraw_delay: Duration::from_secs(
                    args.withdraw_delay.unwrap_or(file.withdraw_delay),
                ),
            },
            max_sessions: args.max_sessions.unwrap_or(file.max_sessions),
        },
        api: ApiSettings {
            socket: args
                .api_socket
                .clone()
                .or_else(|| api.socket.clone())
                .unwrap_or_else(|| default_api_socket(role)),
            socket_mode: api.socket_mode,
            socket_group: api.socket_group.clone(),
            tcp_listen: api.tcp_listen,
            tcp_read_only: api.tcp_read_only,
            watch_max_lag_bytes: args
                .watch_max_lag_bytes
                .unwrap_or(api.watch_max_lag_bytes)
                .max(1),
        },
        state_dir: args
            .state_dir
            .clone()
            .or_else(|| config.state.dir.clone())
            .unwrap_or_else(|| default_state_dir(role)),
        static_routes,
        log_level: if args.verbose {
            "debug".to_string()
        } else {
            config.log.level.clone()
        },
        http: args.http.or(file.http),
        metrics: MetricsSettings {
            listen: args.metrics.or(config.metrics.listen),
            vni_label_limit: args
                .metrics_vni_limit
                .unwrap_or(config.metrics.vni_label_limit),
        },
        client: None,
    };
    let mut settings = settings;
    if let Some(section) = &config.client {
        match client_settings(config, section, &ClientArgs::default()) {
            Ok(client) => settings.client = Some(client),
            Err(ClientError::Config(e)) => errors.extend(e.0),
            Err(ClientError::Flag(e)) => errors.extend([ConfigError::whole_file(config.path(), e)]),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let log_format = args.log_format.unwrap_or_else(|| config.log.format.into());
    Ok((settings, log_format))
}

/// An error resolving the client role: in the file (with its position) or
/// in a flag.
enum ClientError {
    Config(ConfigErrors),
    Flag(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Config(e) => e.fmt(f),
            ClientError::Flag(e) => f.write_str(e),
        }
    }
}

/// The client role from the file's `[client]` section (`section`, or the
/// defaults) with the flags `args` applied.
fn client_settings(
    config: &Config,
    section: &defaults::ClientSection,
    args: &ClientArgs,
) -> Result<ClientSettings, ClientError> {
    let mut announcements = Vec::new();
    if args.announce.is_empty() {
        let mut errors = ConfigErrors::default();
        for (i, text) in section.announce.iter().enumerate() {
            match text.get_ref().parse::<Route>() {
                Ok(route) => announcements.push(route),
                Err(e) => errors
                    .extend([config.error_at(text.span(), format!("client.announce[{i}]: {e}"))]),
            }
        }
        if !errors.is_empty() {
            return Err(ClientError::Config(errors));
        }
    } else {
        for text in &args.announce {
            let route: Route = text
                .parse()
                .map_err(|e| ClientError::Flag(format!("--announce {text}: {e}")))?;
            announcements.push(route);
        }
    }
    let mut install_routes: BTreeMap<Vni, BTreeSet<u32>> = BTreeMap::new();
    if args.install_routes.is_empty() {
        for &(vni, table) in &section.install_routes {
            install_routes.entry(Vni(vni)).or_default().insert(table);
        }
    } else {
        for text in &args.install_routes {
            let (vni, table) = defaults::parse_install_route(text)
                .map_err(|e| ClientError::Flag(format!("--install-routes {text}: {e}")))?;
            install_routes.entry(Vni(vni)).or_default().insert(table);
        }
    }
    let tun = args.tun.clone().or_else(|| section.tun.clone());
    if !install_routes.is_empty() && tun.is_none() {
        return Err(ClientError::Flag(
            "--install-routes needs the tunnel device (--tun DEV)".into(),
        ));
    }
    let servers = if args.server.is_empty() {
        section.servers.clone()
    } else {
        args.server.clone()
    };
    if servers.is_empty() {
        return Err(ClientError::Flag(
            "no route server given (--server ADDR or client.servers)".into(),
        ));
    }
    let subscriptions = if args.subscribe.is_empty() {
        section.subscribe.clone()
    } else {
        args.subscribe.clone()
    };
    Ok(ClientSettings {
        servers,
        subscriptions: subscriptions.into_iter().map(Vni).collect(),
        announcements,
        install_routes,
        tun,
        ipv4_only: args.ipv4_only || section.ipv4_only,
        connection: ClientConfig {
            keepalive_secs: args.keepalive.unwrap_or(section.keepalive),
            backoff: reconnect_backoff(
                args.reconnect_min.unwrap_or(section.reconnect_min),
                args.reconnect_max.unwrap_or(section.reconnect_max),
            ),
            ..ClientConfig::default()
        },
        hold_time: Duration::from_secs(args.hold_time.unwrap_or(section.hold_time)),
        stale_time: Duration::from_secs(args.stale_time.unwrap_or(section.stale_time)),
        cleanup: args.cleanup || section.cleanup,
        flush_at_start: args.flush_at_start || section.flush_at_start,
    })
}

/// The reconnect back-off from its configured bounds in seconds (a first
/// delay of 0 becomes 100 ms, and the largest is at least the first).
fn reconnect_backoff(min_secs: u64, max_secs: u64) -> BackoffConfig {
    let initial = Duration::from_secs(min_secs).max(Duration::from_millis(100));
    BackoffConfig {
        initial,
        max: Duration::from_secs(max_secs).max(initial),
        ..BackoffConfig::default()
    }
}

/// `metalbondd client ...`: the file given with `--config` (or the
/// defaults) with the client flags applied; no MetalBond listener. A bad
/// announcement or mapping is a one-line error.
fn load_client(args: &ClientArgs) -> Result<(Settings, LogFormat), String> {
    let config = match &args.config {
        Some(path) => read_config(path, &ServerArgs::default()).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    let server_args = ServerArgs {
        verbose: args.verbose,
        log_format: args.log_format,
        http: args.http,
        metrics: args.metrics,
        api_socket: args.api_socket.clone(),
        state_dir: args.state_dir.clone(),
        ..ServerArgs::default()
    };
    // The server part of the file is not used; only its shared sections
    // (the client section is resolved again below with the flags).
    let (mut settings, log_format) =
        resolve(&config, &server_args, PathRole::Client).map_err(|e| e.to_string())?;
    settings.server.listen.clear();
    let section = config.client.clone().unwrap_or_default();
    settings.client = Some(client_settings(&config, &section, args).map_err(|e| e.to_string())?);
    Ok((settings, log_format))
}

/// Re-reads the file on SIGHUP for `metalbondd client --config FILE`.
fn client_reloader(args: &ClientArgs) -> Option<Reloader> {
    args.config.as_ref()?;
    let args = args.clone();
    Some(Box::new(move || {
        load_client(&args).map(|(settings, _)| settings)
    }))
}
