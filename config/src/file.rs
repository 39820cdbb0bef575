//! The TOML configuration file model.
//!
//! ```toml
//! [server]
//! listen = ["[::]:4711"]
//! keepalive = 5
//! [api]
//! socket = "/run/metalbondd/api.sock"
//! socket_mode = "0660"
//! [state]
//! dir = "/var/lib/metalbondd"
//! [log]
//! level = "info"
//! format = "text"
//! [routes]
//! static = ["100#10.0.1.0/24@2001:db8::1"]
//! ```
//!
//! See `examples/metalbondd.toml` for every key.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::addr::ServerAddr;
use crate::error::{line_col, ConfigError};
use crate::parse;
use crate::policy::PolicySection;
use crate::recover;
use crate::store::StoreSection;

/// The whole configuration file. Every section and key is optional; a
/// missing one takes the command line's default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[server]`: the MetalBond route server.
    #[serde(deserialize_with = "parse::section")]
    pub server: ServerSection,
    /// `[api]`: the control API.
    #[serde(deserialize_with = "parse::section")]
    pub api: ApiSection,
    /// `[state]`: the daemon's own state store.
    #[serde(deserialize_with = "parse::section")]
    pub state: StateSection,
    /// `[store]`: the operator state's backend (redb or etcd, ADR 0031).
    #[serde(deserialize_with = "parse::section")]
    pub store: StoreSection,
    /// `[log]`: logging.
    #[serde(deserialize_with = "parse::section")]
    pub log: LogSection,
    /// `[runtime]`: the async runtime's threads.
    #[serde(deserialize_with = "parse::section")]
    pub runtime: RuntimeSection,
    /// `[routes]`: routes the daemon announces itself.
    #[serde(deserialize_with = "parse::section")]
    pub routes: RoutesSection,
    /// `[metrics]`: the Prometheus endpoint.
    #[serde(deserialize_with = "parse::section")]
    pub metrics: MetricsSection,
    /// `[client]`: the hypervisor role; present means enabled.
    #[serde(deserialize_with = "parse::opt_section")]
    pub client: Option<ClientSection>,
    /// `[policy]`: what the route server's peers may do, by class (see
    /// [`PolicySection`]); absent: everything is allowed, as in the
    /// reference implementation.
    #[serde(deserialize_with = "parse::opt_section")]
    pub policy: Option<PolicySection>,
    /// Where the configuration came from, for positions in errors.
    #[serde(skip)]
    source: Source,
}

/// The file a [`Config`] was read from and its text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Source {
    path: PathBuf,
    text: String,
}

/// `[server]`: the MetalBond route server (the `metalbondd server` flags).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// `listen`: addresses to listen on (`--listen`): `IP:PORT`, `:PORT`
    /// or `NAME:PORT` ([`crate::listen_addr`]); at least one, none twice.
    #[serde(deserialize_with = "parse::listen")]
    pub listen: Vec<SocketAddr>,
    /// `keepalive`: interval in seconds offered to clients (`--keepalive`);
    /// 0 means 5, at most [`crate::MAX_KEEPALIVE_SECS`].
    #[serde(deserialize_with = "parse::keepalive")]
    pub keepalive: u32,
    /// `max_sessions`: sessions open at once (`--max-sessions`); at least 1.
    #[serde(deserialize_with = "parse::positive_usize")]
    pub max_sessions: usize,
    /// `max_lag_bytes`: how far a session may fall behind the update log
    /// (`--max-lag-bytes`); at least 1.
    #[serde(deserialize_with = "parse::positive_bytes")]
    pub max_lag_bytes: u64,
    /// `write_timeout`: seconds a session's socket may accept nothing
    /// (`--write-timeout`); at least 1.
    #[serde(deserialize_with = "parse::positive_secs")]
    pub write_timeout: u64,
    /// `pace_limit`: route data in bytes a paced peer may have unacknowledged
    /// (`--pace-limit`); 0 disables pacing.
    #[serde(deserialize_with = "parse::bytes_usize")]
    pub pace_limit: usize,
    /// `withdraw_delay`: seconds an ended session's routes stay before they
    /// are withdrawn (`--withdraw-delay`); 0 (the default) withdraws at once.
    #[serde(deserialize_with = "parse::duration_secs")]
    pub withdraw_delay: u64,
    /// `http`: address of the status page (`--http`, as in the Go
    /// reference): `/`, `/routes.json`, `/routes.yaml`, `/metrics`,
    /// `/healthz`. Off unless set.
    #[serde(deserialize_with = "parse::opt_http_addr")]
    pub http: Option<SocketAddr>,
    /// `tls_listen`: addresses of TLS listeners, next to the plaintext
    /// ones (same forms as `listen`; none twice, none also in `listen`).
    /// Needs `[server.tls]`. None by default.
    #[serde(deserialize_with = "parse::tls_listen")]
    pub tls_listen: Spanned<Vec<SocketAddr>>,
    /// `[server.tls]`: the TLS listeners' certificate, key and client CA.
    pub tls: Option<Spanned<ServerTls>>,
    /// `name`: this server's name in the fleet view (`--name`; ADR 0030),
    /// unique among the fleet's servers. Default: the host name, `:` and
    /// the first listen port (so servers on one host differ).
    #[serde(deserialize_with = "parse::opt_nonempty_string")]
    pub name: Option<String>,
}

/// `[server.tls]`: PEM files of the TLS listeners (ADR 0026). Read at
/// start, by `check-config` and again on every reload.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    /// `cert`: the server's certificate chain (PEM), leaf first.
    pub cert: Spanned<PathBuf>,
    /// `key`: the server's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: Spanned<PathBuf>,
    /// `client_ca`: CA certificates (PEM) that client certificates must
    /// chain to; set: every TLS client must present a valid certificate.
    /// Absent: no client certificate is asked for.
    #[serde(default)]
    pub client_ca: Option<Spanned<PathBuf>>,
}

/// `[client.tls]`: PEM files for servers given as `tls://HOST:PORT`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTls {
    /// `ca`: CA certificates (PEM) the server's certificate must chain to
    /// (for the name HOST).
    pub ca: Spanned<PathBuf>,
    /// `cert`: this node's certificate chain (PEM), presented to servers
    /// that ask for one; with `key`.
    #[serde(default)]
    pub cert: Option<Spanned<PathBuf>>,
    /// `key`: the private key of `cert` (PEM).
    #[serde(default)]
    pub key: Option<Spanned<PathBuf>>,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            listen: vec![crate::DEFAULT_LISTEN
                .parse()
                .expect("DEFAULT_LISTEN is a socket address")],
            keepalive: crate::DEFAULT_KEEPALIVE_SECS,
            max_sessions: crate::DEFAULT_MAX_SESSIONS,
            max_lag_bytes: crate::DEFAULT_MAX_SESSION_LAG_BYTES,
            write_timeout: crate::DEFAULT_WRITE_TIMEOUT_SECS,
            pace_limit: crate::DEFAULT_PACE_LIMIT_BYTES,
            withdraw_delay: 0,
            http: None,
            tls_listen: Spanned::new(0..0, Vec::new()),
            tls: None,
            name: None,
        }
    }
}

/// `[api]`: the control API.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSection {
    /// `socket`: path of the Unix socket; `None` when the file does not set
    /// it (the daemon then picks its default for its role, e.g.
    /// [`crate::DEFAULT_API_SOCKET`] for a route server run as root).
    #[serde(deserialize_with = "parse::opt_path")]
    pub socket: Option<PathBuf>,
    /// `socket_mode`: permission bits of the socket, written in the file as
    /// an octal string (`"0660"`).
    #[serde(deserialize_with = "parse::octal_mode")]
    pub socket_mode: u32,
    /// `socket_group`: group owning the socket, if set.
    #[serde(deserialize_with = "parse::opt_nonempty_string")]
    pub socket_group: Option<String>,
    /// `tcp_listen`: optional TCP listener; off unless set.
    #[serde(deserialize_with = "parse::opt_socket_addr")]
    pub tcp_listen: Option<SocketAddr>,
    /// `tcp_read_only`: the TCP listener serves read-only RPCs only.
    pub tcp_read_only: bool,
    /// `watch_max_lag_bytes`: a route watcher this far behind the update log
    /// gets a `lagged` event and its stream ends.
    pub watch_max_lag_bytes: u64,
}

impl Default for ApiSection {
    fn default() -> Self {
        Self {
            socket: None,
            socket_mode: crate::DEFAULT_API_SOCKET_MODE,
            socket_group: None,
            tcp_listen: None,
            tcp_read_only: crate::DEFAULT_API_TCP_READ_ONLY,
            watch_max_lag_bytes: crate::DEFAULT_WATCH_MAX_LAG_BYTES,
        }
    }
}

/// `[state]`: the daemon's own state store.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateSection {
    /// `dir`: directory of the state store; `None` when the file does not
    /// set it (the daemon then picks its default for its role, e.g.
    /// [`crate::DEFAULT_STATE_DIR`] for a route server run as root).
    #[serde(deserialize_with = "parse::opt_path")]
    pub dir: Option<PathBuf>,
}

/// Log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable text (`"text"`).
    #[default]
    Text,
    /// One JSON object per line (`"json"`).
    Json,
}

/// `[log]`: logging.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// `level`: a tracing `EnvFilter` directive (`"info"`,
    /// `"info,metalbondd=debug"`). `-v` and `RUST_LOG` override it.
    #[serde(deserialize_with = "parse::log_level")]
    pub level: String,
    /// `format`: `"text"` or `"json"`.
    pub format: LogFormat,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            level: crate::DEFAULT_LOG_LEVEL.to_string(),
            format: LogFormat::Text,
        }
    }
}

/// `[runtime]`: the daemon's async runtime. Read at start only.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeSection {
    /// `threads`: worker threads running the sessions, the route table and
    /// the API (`--threads`); at least 1. `None`: the role's default
    /// ([`crate::DEFAULT_SERVER_THREADS`], [`crate::DEFAULT_CLIENT_THREADS`]).
    /// Blocking work (the state store, netlink) has threads of its own.
    #[serde(deserialize_with = "parse::opt_positive_usize")]
    pub threads: Option<usize>,
}

/// `[metrics]`: the Prometheus endpoint (`/metrics` and `/healthz`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// `listen`: address of the metrics listener (`--metrics`); off unless
    /// set. The documented port is [`crate::DEFAULT_METRICS_PORT`].
    #[serde(deserialize_with = "parse::opt_http_addr")]
    pub listen: Option<SocketAddr>,
    /// `vni_label_limit`: most VNIs with their own `vni` label in the
    /// per-VNI metrics (`--metrics-vni-limit`); the rest are summed under
    /// `vni="other"`.
    #[serde(deserialize_with = "parse::count")]
    pub vni_label_limit: usize,
}

impl Default for MetricsSection {
    fn default() -> Self {
        Self {
            listen: None,
            vni_label_limit: crate::DEFAULT_METRICS_VNI_LABEL_LIMIT,
        }
    }
}

/// `[routes]`: routes the daemon announces itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutesSection {
    /// `static`: routes in the announcement text format
    /// (`VNI#PREFIX@NEXTHOP[#TYPE[#FROM#TO]]`), each with its position in the
    /// file so that the daemon, which parses them, can report a bad one with
    /// [`Config::error_at`].
    #[serde(rename = "static", deserialize_with = "parse::static_routes")]
    pub static_routes: Vec<Spanned<String>>,
}

/// `[client]`: the hypervisor role (the `metalbondd client` flags). The
/// section being present enables the role, next to the server role.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientSection {
    /// `servers`: route servers to connect to (`--server`), `HOST:PORT`
    /// with an IP address or a DNS name; at least one.
    #[serde(deserialize_with = "parse::client_servers")]
    pub servers: Vec<ServerAddr>,
    /// `subscribe`: VNIs to subscribe to (`--subscribe`).
    #[serde(deserialize_with = "parse::vnis")]
    pub subscribe: Vec<u32>,
    /// `announce`: routes this node announces (`--announce`), in the
    /// announcement text format, each with its position so that the daemon,
    /// which parses them, can report a bad one with [`Config::error_at`].
    #[serde(deserialize_with = "parse::static_routes")]
    pub announce: Vec<Spanned<String>>,
    /// `install_routes`: `"VNI#TABLE"` mappings (`--install-routes`), as
    /// (VNI, table); table 0 is rejected.
    #[serde(deserialize_with = "parse::install_routes")]
    pub install_routes: Vec<(u32, u32)>,
    /// `tun`: tunnel device of the installed routes (`--tun`).
    #[serde(deserialize_with = "parse::opt_nonempty_string")]
    pub tun: Option<String>,
    /// `ipv4_only`: ignore received IPv6 destinations (`--ipv4-only`).
    pub ipv4_only: bool,
    /// `keepalive`: interval in seconds proposed to the servers
    /// (`--keepalive`); 0 means 5, at most [`crate::MAX_KEEPALIVE_SECS`].
    #[serde(deserialize_with = "parse::keepalive")]
    pub keepalive: u32,
    /// `hold_time`: seconds routes of an earlier run are kept at start
    /// before unconfirmed ones are deleted (`--hold-time`).
    #[serde(deserialize_with = "parse::duration_secs")]
    pub hold_time: u64,
    /// `stale_time`: seconds installed routes stay after every server was
    /// lost (`--stale-time`).
    #[serde(deserialize_with = "parse::duration_secs")]
    pub stale_time: u64,
    /// `cleanup`: delete the protocol-254 routes of the mapped tables at
    /// a clean exit (SIGINT, SIGTERM, API Shutdown), as the Go reference's
    /// `--cleanup` (`--cleanup`).
    pub cleanup: bool,
    /// `flush_at_start`: delete the protocol-254 routes of the mapped
    /// tables at start instead of keeping and reconciling them
    /// (`--flush-at-start`).
    pub flush_at_start: bool,
    /// `reconnect_min`: seconds before the first reconnect to a lost server
    /// (`--reconnect-min`); the delay doubles per failed attempt, with jitter.
    #[serde(deserialize_with = "parse::duration_secs")]
    pub reconnect_min: u64,
    /// `reconnect_max`: largest reconnect delay in seconds (`--reconnect-max`).
    #[serde(deserialize_with = "parse::duration_secs")]
    pub reconnect_max: u64,
    /// `sync`: offer the SYNC extension (PROTOCOL.md section 8) to the
    /// route servers; `false` (`--no-sync`) sends a reference client's
    /// HELLO. Default true.
    pub sync: bool,
    /// `[client.tls]`: CA (and client certificate) for servers given as
    /// `tls://HOST:PORT`.
    pub tls: Option<Spanned<ClientTls>>,
}

impl Default for ClientSection {
    fn default() -> Self {
        Self {
            servers: Vec::new(),
            subscribe: Vec::new(),
            announce: Vec::new(),
            install_routes: Vec::new(),
            tun: None,
            ipv4_only: false,
            keepalive: crate::DEFAULT_KEEPALIVE_SECS,
            hold_time: crate::DEFAULT_HOLD_TIME_SECS,
            stale_time: crate::DEFAULT_STALE_TIME_SECS,
            cleanup: false,
            flush_at_start: false,
            reconnect_min: crate::DEFAULT_RECONNECT_MIN_SECS,
            reconnect_max: crate::DEFAULT_RECONNECT_MAX_SECS,
            sync: true,
            tls: None,
        }
    }
}

/// Byte offset of the `[client]` header line (0 if not found).
fn client_header(text: &str) -> usize {
    header(text, "[client]")
}

/// Byte offset of the first line starting with `start` (0 if none).
fn header(text: &str, start: &str) -> usize {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        // `[[policy.class]]` counts as a `[policy` header too.
        if trimmed.starts_with(start)
            || trimmed
                .strip_prefix('[')
                .is_some_and(|t| t.starts_with(start))
        {
            return offset + (line.len() - trimmed.len());
        }
        offset += line.len();
    }
    0
}

impl Config {
    /// Reads and validates the file at `path`; the first error in the file
    /// if it has any (see [`Config::check_file`] for all of them).
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        first_error(Self::check_file(path))
    }

    /// Parses and validates `text`; `path` names the file in errors. The
    /// first error in the file if it has any.
    pub fn parse(text: &str, path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        first_error(Self::check_text(text, path))
    }

    /// Reads and validates the file at `path`, reporting every error in it
    /// in file order. The configuration returned holds defaults where the
    /// file has errors: use it for further checks (static routes) only, and
    /// run with it only if there are no errors.
    pub fn check_file(path: impl AsRef<Path>) -> (Config, Vec<ConfigError>) {
        let path = path.as_ref();
        match std::fs::read_to_string(path) {
            Ok(text) => Self::check_text(&text, path),
            Err(e) => (
                Config::default(),
                vec![ConfigError::whole_file(
                    path,
                    format!("cannot read the file: {e}"),
                )],
            ),
        }
    }

    /// Like [`Config::check_file`], for `text` (the contents of `path`).
    pub fn check_text(text: &str, path: impl AsRef<Path>) -> (Config, Vec<ConfigError>) {
        let path = path.as_ref();
        let recover::Parsed {
            value: mut config,
            mut errors,
            failed_keys,
        } = recover::parse_all::<Config>(text, path);
        // Checks across keys, unless a key they look at was removed already
        // (an empty `servers` after its only entry failed is no news).
        let client_intact = !failed_keys.iter().any(|k| k.starts_with("client"));
        if let (Some(client), true) = (&config.client, client_intact) {
            let header = client_header(text);
            if client.servers.is_empty() {
                errors.push(ConfigError::at(
                    path,
                    text,
                    header,
                    "client.servers: give at least one route server (e.g. servers = [\"[2001:db8::1]:4711\"])",
                ));
            }
            if let Some(tls) = &client.tls {
                if tls.get_ref().cert.is_some() != tls.get_ref().key.is_some() {
                    errors.push(ConfigError::at(
                        path,
                        text,
                        tls.span().start,
                        "client.tls: give both cert and key (or neither)",
                    ));
                }
            } else if let Some(s) = client.servers.iter().find(|s| s.tls()) {
                errors.push(ConfigError::at(
                    path,
                    text,
                    header,
                    format!("client.servers: {s} needs [client.tls] (ca = \"...\")"),
                ));
            }
            if !client.install_routes.is_empty() && client.tun.is_none() {
                errors.push(ConfigError::at(
                    path,
                    text,
                    header,
                    "client.install_routes needs the tunnel device (client.tun)",
                ));
            }
        }
        if !failed_keys.iter().any(|k| k.starts_with("server")) {
            let server = &config.server;
            if !server.tls_listen.get_ref().is_empty() && server.tls.is_none() {
                errors.push(ConfigError::at(
                    path,
                    text,
                    server.tls_listen.span().start,
                    "server.tls_listen needs [server.tls] (cert = \"...\", key = \"...\")",
                ));
            }
            if let Some(both) = server
                .tls_listen
                .get_ref()
                .iter()
                .find(|a| server.listen.contains(a))
            {
                errors.push(ConfigError::at(
                    path,
                    text,
                    server.tls_listen.span().start,
                    format!("server.tls_listen: {both} is also in server.listen"),
                ));
            }
        }
        // The checks across keys look at names, `match` and `connect_rate`
        // (which `connect_burst` needs) only.
        let policy_intact = !failed_keys.iter().any(|k| {
            matches!(k.as_str(), "policy" | "policy.class" | "policy.default")
                || (k.starts_with("policy")
                    && (k.contains(".match") || k.contains(".name") || k.contains(".connect_rate")))
        });
        if let (Some(policy), true) = (&config.policy, policy_intact) {
            for (offset, message) in policy.check(header(text, "[policy")) {
                errors.push(ConfigError::at(path, text, offset, message));
            }
        }
        if !failed_keys.iter().any(|k| k.starts_with("store")) {
            for (offset, message) in config.store.check(header(text, "[store")) {
                errors.push(ConfigError::at(path, text, offset, message));
            }
        }
        errors.sort_by_key(|e| e.location);
        config.source = Source {
            path: path.to_path_buf(),
            text: text.to_string(),
        };
        (config, errors)
    }

    /// The file this configuration was read from (empty for
    /// [`Config::default`]).
    pub fn path(&self) -> &Path {
        &self.source.path
    }

    /// Line and column (both from 1) of the start of `span`, a byte range in
    /// the file (e.g. [`Spanned::span`] of a static route).
    pub fn position(&self, span: Range<usize>) -> (usize, usize) {
        line_col(&self.source.text, span.start)
    }

    /// An error at `span` of this file, e.g. for a static route that does
    /// not parse.
    pub fn error_at(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        ConfigError::at(&self.source.path, &self.source.text, span.start, message)
    }
}

/// The configuration, or the first of its errors.
fn first_error((config, errors): (Config, Vec<ConfigError>)) -> Result<Config, ConfigError> {
    match errors.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(config),
    }
}
