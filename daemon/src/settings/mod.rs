//! What the daemon runs with, and how the command line and the
//! configuration file become it.
//!
//! [`Settings`] is everything [`crate::app`] needs. It is resolved from the
//! flags ([`flags`]) and the TOML file (`metalbondd-config`): a flag given
//! wins over the file, the file over the defaults; paths neither gives are
//! the role's defaults ([`PathRole`]). Static routes and client
//! announcements are parsed here, so a bad one is an error at its position
//! in the file. No I/O but reading the file.

pub mod flags;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use metalbondd_config::{self as defaults, Config, ConfigError, ConfigErrors};

use crate::client::connection::BackoffConfig;
use crate::client::{ClientConfig, ClientSettings};
use crate::server::{ServerConfig, SessionSettings};
use crate::store::{default_api_socket, default_state_dir, PathRole};
use crate::wire::{Route, Vni};

pub use flags::{ClientArgs, DaemonArgs, LogFormat, ServerArgs};

/// Control API settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiSettings {
    /// Unix socket path.
    pub socket: PathBuf,
    /// Permission bits of the socket file (e.g. 0o660).
    pub socket_mode: u32,
    /// Group owning the socket file, if set.
    pub socket_group: Option<String>,
    /// Optional TCP listener (loopback by default when enabled).
    pub tcp_listen: Option<SocketAddr>,
    /// The TCP listener serves read-only RPCs only.
    pub tcp_read_only: bool,
    /// A route watcher this many bytes behind the update log is told it lagged.
    pub watch_max_lag_bytes: u64,
}

/// Metrics settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsSettings {
    /// Address of the metrics listener; off when `None`.
    pub listen: Option<SocketAddr>,
    /// Most VNIs with their own `vni` label.
    pub vni_label_limit: usize,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self {
            listen: None,
            vni_label_limit: crate::metrics::DEFAULT_VNI_LABEL_LIMIT,
        }
    }
}

/// Everything the daemon needs to run, resolved from flags and the config file.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The MetalBond route server.
    pub server: ServerConfig,
    /// The control API.
    pub api: ApiSettings,
    /// Directory of the daemon's own state store.
    pub state_dir: PathBuf,
    /// Routes announced by the daemon itself, from the config file.
    pub static_routes: Vec<Route>,
    /// Log filter directive (e.g. `info`, `debug`).
    pub log_level: String,
    /// The status page listener (`--http`, as in the Go reference).
    pub http: Option<SocketAddr>,
    /// The Prometheus metrics listener.
    pub metrics: MetricsSettings,
    /// The hypervisor (client) role, when enabled (`metalbondd client`, or a
    /// `[client]` section in the config file).
    pub client: Option<ClientSettings>,
    /// The shared state on etcd (`[store] backend = "etcd"`); None: the
    /// local redb store only (ADR 0031).
    pub etcd: Option<crate::etcd::client::EtcdSettings>,
    /// This server's name in the fleet view (`--name`, `server.name`);
    /// `None`: the host name and the first listen port (`fleet`).
    pub name: Option<String>,
    /// Worker threads of the async runtime (`--threads`, `runtime.threads`;
    /// ADR 0033). Read at start only.
    pub threads: usize,
}

/// The etcd settings of `[store.etcd]` when the backend is etcd.
fn etcd_settings(config: &Config) -> Option<crate::etcd::client::EtcdSettings> {
    if *config.store.backend.get_ref() != metalbondd_config::StoreBackend::Etcd {
        return None;
    }
    let e = config.store.etcd.as_ref()?.get_ref();
    Some(crate::etcd::client::EtcdSettings {
        endpoints: e.endpoints.get_ref().clone(),
        prefix: e.prefix.clone(),
        ca: e.ca.as_ref().map(|p| p.get_ref().clone()),
        identity: e
            .cert
            .as_ref()
            .zip(e.key.as_ref())
            .map(|(c, k)| (c.get_ref().clone(), k.get_ref().clone())),
        credentials: e
            .username
            .clone()
            .zip(e.password_file.as_ref().map(|p| p.get_ref().clone())),
        dial_timeout: e.dial_timeout,
        request_timeout: e.request_timeout,
        max_txn_ops: e.max_txn_ops,
    })
}

/// Re-reads the settings (the config file) on SIGHUP or an API Reload.
pub type Reloader = Box<dyn Fn() -> Result<Settings, String> + Send + Sync>;

/// `metalbondd [server]`: the file given with `--config` (or the defaults)
/// with the flags applied. Errors are every error in the file, in file order.
pub fn load_server(args: &ServerArgs) -> Result<(Settings, LogFormat), ConfigErrors> {
    let config = match &args.config {
        Some(path) => read_config(path, args)?,
        None => Config::default(),
    };
    resolve(&config, args, PathRole::Server)
}

/// `check-config FILE` / `--check --config FILE`: the file at `path` with
/// `args` applied resolves, or every error in it, in file order.
pub fn check_file(path: &Path, args: &ServerArgs) -> Result<(), ConfigErrors> {
    read_config(path, args).and_then(|config| resolve(&config, args, PathRole::Server))?;
    Ok(())
}

/// `metalbondd client ...`: the file given with `--config` (or the
/// defaults) with the client flags applied; no MetalBond listener. A bad
/// announcement or mapping is a one-line error.
pub fn load_client(args: &ClientArgs) -> Result<(Settings, LogFormat), String> {
    let config = match &args.config {
        Some(path) => read_config(path, &ServerArgs::default()).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    let server_args = ServerArgs {
        daemon: args.daemon.clone(),
        ..ServerArgs::default()
    };
    // The server part of the file is not used; only its shared sections
    // (the client section is resolved again below with the flags).
    let (mut settings, log_format) =
        resolve(&config, &server_args, PathRole::Client).map_err(|e| e.to_string())?;
    settings.server.listen.clear();
    settings.server.tls_listen.clear();
    let section = config.client.clone().unwrap_or_default();
    settings.client = Some(client_settings(&config, &section, args).map_err(|e| e.to_string())?);
    Ok((settings, log_format))
}

/// Re-reads the same file with the same flags on SIGHUP; `None` without
/// `--config`.
pub fn server_reloader(args: &ServerArgs) -> Option<Reloader> {
    args.config.as_ref()?;
    let args = args.clone();
    Some(Box::new(move || {
        load_server(&args)
            .map(|(settings, _)| settings)
            .map_err(|e| {
                // One log line and one API message, however many errors.
                let lines: Vec<String> = e.0.iter().map(ToString::to_string).collect();
                lines.join("; ")
            })
    }))
}

/// Re-reads the file on SIGHUP for `metalbondd client --config FILE`;
/// `None` without `--config`.
pub fn client_reloader(args: &ClientArgs) -> Option<Reloader> {
    args.config.as_ref()?;
    let args = args.clone();
    Some(Box::new(move || {
        load_client(&args).map(|(settings, _)| settings)
    }))
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

/// Merges the configuration file and the flags (a flag given wins) into the
/// daemon's settings and the log format; paths neither gives are `role`'s
/// defaults. Parses the static routes; a bad one is an error at its
/// position in the file.
/// A list setting: the flag's values when given (a repeated flag replaces
/// the file's list, it does not extend it), else the file's.
fn flags_or_file<T: Clone>(flags: &[T], file: &[T]) -> Vec<T> {
    if flags.is_empty() { file } else { flags }.to_vec()
}

fn resolve(
    config: &Config,
    args: &ServerArgs,
    role: PathRole,
) -> Result<(Settings, LogFormat), ConfigErrors> {
    let file = &config.server;
    let shared = &args.daemon;
    let listen = flags_or_file(&args.listen, &file.listen);
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
    let mut settings = Settings {
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
                policy: config
                    .policy
                    .as_ref()
                    .map(|p| std::sync::Arc::new(crate::policy::Policy::new(p))),
            },
            max_sessions: args.max_sessions.unwrap_or(file.max_sessions),
            tls_listen: file.tls_listen.get_ref().clone(),
            tls: server_tls(config, &mut errors),
        },
        api: ApiSettings {
            socket: shared
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
        state_dir: shared
            .state_dir
            .clone()
            .or_else(|| config.state.dir.clone())
            .unwrap_or_else(|| default_state_dir(role)),
        static_routes,
        log_level: if shared.verbose {
            "debug".to_string()
        } else {
            config.log.level.clone()
        },
        http: shared.http.or(file.http),
        metrics: MetricsSettings {
            listen: shared.metrics.or(config.metrics.listen),
            vni_label_limit: args
                .metrics_vni_limit
                .unwrap_or(config.metrics.vni_label_limit),
        },
        client: None,
        etcd: etcd_settings(config),
        name: args.name.clone().or_else(|| file.name.clone()),
        threads: shared
            .threads
            .or(config.runtime.threads)
            .unwrap_or(match role {
                PathRole::Server => defaults::DEFAULT_SERVER_THREADS,
                PathRole::Client => defaults::DEFAULT_CLIENT_THREADS,
            }),
    };
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
    let log_format = shared
        .log_format
        .unwrap_or_else(|| config.log.format.into());
    Ok((settings, log_format))
}

/// `[server.tls]` loaded (every file read and checked), or `None` with
/// the error at the section when a file is missing or bad.
fn server_tls(config: &Config, errors: &mut ConfigErrors) -> Option<crate::tls::ServerTls> {
    let section = config.server.tls.as_ref()?;
    let t = section.get_ref();
    let files = crate::tls::ServerFiles {
        cert: t.cert.get_ref().clone(),
        key: t.key.get_ref().clone(),
        client_ca: t.client_ca.as_ref().map(|c| c.get_ref().clone()),
    };
    crate::tls::ServerTls::load(files)
        .map_err(|e| errors.extend([config.error_at(section.span(), format!("server.tls: {e}"))]))
        .ok()
}

/// An error resolving the client role: in the file (with its position) or
/// in a flag.
#[derive(Debug)]
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
    let servers = flags_or_file(&args.server, &section.servers);
    if servers.is_empty() {
        return Err(ClientError::Flag(
            "no route server given (--server ADDR or client.servers)".into(),
        ));
    }
    if servers.len() > crate::client::received::MAX_SERVERS {
        return Err(ClientError::Flag(format!(
            "{} route servers given, the most the client role takes is {}",
            servers.len(),
            crate::client::received::MAX_SERVERS
        )));
    }
    let subscriptions = flags_or_file(&args.subscribe, &section.subscribe);
    let tls = match &section.tls {
        Some(t) => {
            let c = t.get_ref();
            let files = crate::tls::ClientFiles {
                ca: c.ca.get_ref().clone(),
                cert_key: c
                    .cert
                    .as_ref()
                    .zip(c.key.as_ref())
                    .map(|(cert, key)| (cert.get_ref().clone(), key.get_ref().clone())),
            };
            Some(crate::tls::ClientTls::load(files).map_err(|e| {
                ClientError::Config(ConfigErrors::from(vec![
                    config.error_at(t.span(), format!("client.tls: {e}"))
                ]))
            })?)
        }
        None => None,
    };
    if let (None, Some(s)) = (&tls, servers.iter().find(|s| s.tls())) {
        return Err(ClientError::Flag(format!(
            "{s}: a tls:// server needs [client.tls] in the config file (ca = \"...\")"
        )));
    }
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
            // Off if either says so: the default is on.
            sync: !args.no_sync && section.sync,
            tls,
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
