//! The command-line flags of the two roles, as clap argument groups.
//!
//! A flag given overrides the configuration file, which overrides the
//! defaults; a flag left out is `None` (or empty, or `false`). The flags both
//! roles take with the same meaning are [`DaemonArgs`], flattened into
//! [`ServerArgs`] and [`ClientArgs`]; each role's help names the file key of
//! each flag (`[file: section.key]`).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use metalbondd_config as defaults;

use crate::client::ServerAddr;

/// Log output format: text lines or one JSON object per line.
// Doc comments on the variants would become clap help text
// (`--help` lists the values as `[possible values: text, json]`).
#[allow(missing_docs)]
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
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

/// Flags of both roles: logging, the HTTP listeners, the API socket and the
/// state directory.
#[derive(Args, Debug, Clone, Default)]
pub struct DaemonArgs {
    /// Log debug details (the file's log.level becomes "debug"; RUST_LOG
    /// overrides both).
    #[arg(short, long)]
    pub verbose: bool,
    /// Log format. Default text [file: log.format].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Status page as in the Go reference (/, /routes.json, /routes.yaml),
    /// plus /metrics and /healthz: IP:PORT, :PORT (all addresses) or
    /// localhost:PORT. Off by default [file: server.http].
    #[arg(long, value_name = "ADDR", value_parser = defaults::http_addr)]
    pub http: Option<SocketAddr>,
    /// Prometheus metrics (/metrics) and /healthz on this address, e.g.
    /// 127.0.0.1:9711. Off by default [file: metrics.listen].
    #[arg(long, value_name = "ADDR", value_parser = defaults::http_addr)]
    pub metrics: Option<SocketAddr>,
    /// Unix socket of the control API. Default /run/NAME/api.sock if
    /// /run/NAME can be created, else $XDG_RUNTIME_DIR/NAME/api.sock, else
    /// /tmp/NAME-UID/api.sock, where NAME is metalbondd-client for
    /// `metalbondd client` and metalbondd otherwise [file: api.socket].
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,
    /// Directory of the daemon's state store. Default /var/lib/NAME if it
    /// can be created, else $XDG_STATE_HOME/NAME, else
    /// ~/.local/state/NAME, where NAME is metalbondd-client for
    /// `metalbondd client` and metalbondd otherwise [file: state.dir].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Worker threads of the async runtime (sessions, route table, API);
    /// read at start. Default 1 for a route server, 2 for `metalbondd
    /// client` [file: runtime.threads].
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    pub threads: Option<usize>,
}

/// Route server flags (`metalbondd [server]`).
#[derive(Args, Debug, Clone, Default)]
pub struct ServerArgs {
    /// TOML configuration file (see examples/metalbondd.toml). Flags given on
    /// the command line override its values; SIGHUP re-reads it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Validate the configuration file (static routes included) and exit
    /// instead of running.
    #[arg(long, requires = "config")]
    pub check: bool,
    /// Address to listen on, as in Go: IP:PORT, :PORT (every address, IPv4
    /// and IPv6) or NAME:PORT (e.g. localhost:4711, resolved at start);
    /// repeat for several (none twice). Default [::1]:4711 (loopback only)
    /// [file: server.listen].
    #[arg(long, value_name = "ADDR", value_parser = defaults::listen_addr)]
    pub listen: Vec<SocketAddr>,
    /// This server's name in the fleet view (`mbctl fleet`), unique among
    /// the fleet's servers. Default HOSTNAME:PORT (the first listen port)
    /// [file: server.name].
    #[arg(long, value_name = "NAME", value_parser = non_empty_name)]
    pub name: Option<String>,
    /// Keepalive interval in seconds offered to clients (0 means 5). Default
    /// 5 [file: server.keepalive].
    #[arg(long, value_name = "SECS")]
    pub keepalive: Option<u32>,
    /// Most VNIs with their own label in the per-VNI metrics (the rest are
    /// summed under vni="other"). Default 1000 [file: metrics.vni_label_limit].
    #[arg(long, value_name = "N")]
    pub metrics_vni_limit: Option<usize>,
    /// Most sessions open at once. Default 10000 [file: server.max_sessions].
    #[arg(long, value_name = "N")]
    pub max_sessions: Option<usize>,
    /// Close a session that falls this many bytes behind the update log.
    /// Default 1073741824 (1 GiB) [file: server.max_lag_bytes].
    #[arg(long, value_name = "BYTES")]
    pub max_lag_bytes: Option<u64>,
    /// Largest batch of route data a peer may have unacknowledged (batches
    /// start at 16 KiB and grow while the peer reads fast; Go peers reset at
    /// 64 KiB unread; metalbondd peers, which negotiate an extension, are
    /// never paced); 0 disables pacing. Default 16384 [file: server.pace_limit].
    #[arg(long, value_name = "BYTES")]
    pub pace_limit: Option<usize>,
    /// Close a session whose socket accepts no data for this many seconds.
    /// Default 60 [file: server.write_timeout].
    #[arg(long, value_name = "SECS")]
    pub write_timeout: Option<u64>,
    /// Keep an ended session's routes this many seconds before withdrawing
    /// them, so a reconnecting client takes them over silently; 0 withdraws
    /// at once. Default 0 [file: server.withdraw_delay].
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub withdraw_delay: Option<u64>,
    /// A route watcher (API WatchRoutes) this many bytes behind the update
    /// log gets a `lagged` event and its stream ends. Default 67108864
    /// (64 MiB) [file: api.watch_max_lag_bytes].
    #[arg(long, value_name = "BYTES")]
    pub watch_max_lag_bytes: Option<u64>,
    /// The flags of both roles.
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

/// Client (hypervisor role) flags, as the Go reference's `metalbond client`.
/// With `--config FILE`, the file's `[client]` section (and `[api]`,
/// `[state]`, `[log]`) is the base and the flags given override it; a flag
/// that can repeat replaces the file's whole list.
#[derive(Args, Debug, Clone, Default)]
pub struct ClientArgs {
    /// TOML configuration file whose `[client]` section is used (the server
    /// role does not run: use `metalbondd --config FILE` for both roles).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Route server to connect to, HOST:PORT with an IP address or a name,
    /// e.g. [2001:db8::1]:4711 or metalbond.example:4711 (resolved on every
    /// connection attempt; every address it resolves to is tried);
    /// repeatable. Required unless the config file gives client.servers
    /// [file: client.servers].
    #[arg(long, value_name = "HOST:PORT", required_unless_present = "config")]
    pub server: Vec<ServerAddr>,
    /// VNI to subscribe to; repeatable [file: client.subscribe].
    #[arg(long, value_name = "VNI")]
    pub subscribe: Vec<u32>,
    /// Route to announce: VNI#PREFIX@NEXTHOP[#TYPE[#FROM#TO]] or the Go form
    /// VNI#PREFIX#NEXTHOP[#TYPE][#FROM#TO]; repeatable [file:
    /// client.announce].
    #[arg(long, value_name = "ROUTE")]
    pub announce: Vec<String>,
    /// Install the received routes of VNI into routing table TABLE (not 0);
    /// repeatable. Needs --tun [file: client.install_routes].
    #[arg(long, value_name = "VNI#TABLE")]
    pub install_routes: Vec<String>,
    /// Tunnel device the installed routes leave through (an ip6tnl device)
    /// [file: client.tun].
    #[arg(long, value_name = "DEV")]
    pub tun: Option<String>,
    /// Receive only IPv4 routes (received IPv6 destinations are ignored)
    /// [file: client.ipv4_only].
    #[arg(long)]
    pub ipv4_only: bool,
    /// Keepalive interval in seconds proposed to the servers (0 means 5).
    /// Default 5 [file: client.keepalive].
    #[arg(long, value_name = "SECS")]
    pub keepalive: Option<u32>,
    /// At start, protocol-254 routes already in the mapped tables (an
    /// earlier run's) are kept (unless --flush-at-start), and the received
    /// routes replace them in place; those the servers do not confirm are
    /// deleted once this many seconds have passed, or earlier once every
    /// server is established and has sent its dump (no UPDATE for 1 s).
    /// Default 30 [file: client.hold_time].
    #[arg(long, value_name = "SECS")]
    pub hold_time: Option<u64>,
    /// When the last established server is lost, installed routes stay
    /// this many seconds; a server back in time resyncs and the routes are
    /// reconciled, otherwise they are deleted. Default 60 [file:
    /// client.stale_time].
    #[arg(long, value_name = "SECS")]
    pub stale_time: Option<u64>,
    /// Cleanup routes upon exit, as the Go reference's --cleanup: at a clean
    /// exit (SIGINT, SIGTERM, mbctl shutdown) delete every protocol-254
    /// route in the mapped tables. Without it they stay, and the next start
    /// takes them over without a gap. Only the mapped tables are touched
    /// [file: client.cleanup].
    #[arg(long)]
    pub cleanup: bool,
    /// At start, delete every protocol-254 route in the mapped tables
    /// (left by an earlier run, or added by hand with proto 254) before
    /// connecting, instead of keeping and reconciling them; received routes
    /// are then installed as they arrive (the data plane has a gap). Only
    /// the mapped tables are touched [file: client.flush_at_start].
    #[arg(long)]
    pub flush_at_start: bool,
    /// Do not offer the SYNC extension (an exact end of every SUBSCRIBE
    /// dump, metalbondd servers only): the HELLO is then byte for byte a
    /// reference client's, and resync falls back to 1 s of quiet and the
    /// hold time. For a peer that misbehaves with the extension [file:
    /// client.sync = false].
    #[arg(long)]
    pub no_sync: bool,
    /// Seconds before the first reconnect to a lost server; the delay then
    /// doubles per failed attempt (with +-20% jitter). Default 1 [file:
    /// client.reconnect_min].
    #[arg(long, value_name = "SECS")]
    pub reconnect_min: Option<u64>,
    /// Largest reconnect delay in seconds. Default 30 [file:
    /// client.reconnect_max].
    #[arg(long, value_name = "SECS")]
    pub reconnect_max: Option<u64>,
    /// The flags of both roles.
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

/// A `--name`: not empty or blank.
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn non_empty_name(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        Err("the name is empty".into())
    } else {
        Ok(s.to_string())
    }
}
