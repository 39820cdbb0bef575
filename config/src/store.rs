//! `[store]`: where the daemon keeps its operator state (injected routes):
//! the embedded redb file (default) or a shared etcd cluster (ADR 0031).
//!
//! ```toml
//! [store]
//! backend = "etcd"
//! [store.etcd]
//! endpoints = ["http://10.0.0.1:2379", "http://10.0.0.2:2379", "http://10.0.0.3:2379"]
//! prefix = "/metalbondd/"
//! ```

use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;
use toml::Spanned;

use crate::parse;

/// Default etcd key prefix of the shared state.
pub const DEFAULT_ETCD_PREFIX: &str = "/metalbondd/";
/// Default time to connect to one etcd member.
pub const DEFAULT_ETCD_DIAL_TIMEOUT: Duration = Duration::from_secs(2);
/// Default time one etcd request may take.
pub const DEFAULT_ETCD_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Default largest number of operations in one etcd transaction: 1024, for
/// clusters that run with `--max-txn-ops 1024`; against etcd's default (128)
/// the server falls back to 128 at the first refusal.
pub const DEFAULT_ETCD_MAX_TXN_OPS: usize = 1024;

/// Which store holds the operator state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StoreBackend {
    /// The embedded redb file in the state directory (`"redb"`).
    #[default]
    Redb,
    /// A shared etcd cluster (`"etcd"`); the redb file stays a local cache.
    Etcd,
}

impl<'de> de::Deserialize<'de> for StoreBackend {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse::string_with(d, "\"redb\" or \"etcd\"", |s| match s {
            "redb" => Ok(StoreBackend::Redb),
            "etcd" => Ok(StoreBackend::Etcd),
            other => Err(format!(
                "unknown store backend {other:?} (expected \"redb\" or \"etcd\")"
            )),
        })
    }
}

/// `[store]`: the operator state's backend.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// `backend`: `"redb"` (default) or `"etcd"` (needs `[store.etcd]`).
    pub backend: Spanned<StoreBackend>,
    /// `[store.etcd]`: the cluster, when the backend is etcd.
    #[serde(deserialize_with = "opt_etcd")]
    pub etcd: Option<Spanned<EtcdSection>>,
}

impl Default for StoreSection {
    fn default() -> Self {
        Self {
            backend: Spanned::new(0..0, StoreBackend::Redb),
            etcd: None,
        }
    }
}

fn opt_etcd<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Spanned<EtcdSection>>, D::Error> {
    Ok(Some(Spanned::<EtcdSection>::deserialize(d)?))
}

/// `[store.etcd]`: how to reach the etcd cluster.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EtcdSection {
    /// `endpoints`: client URLs of the members, `http://HOST:PORT` or
    /// `https://HOST:PORT` (all of one scheme); at least one.
    #[serde(deserialize_with = "endpoints")]
    pub endpoints: Spanned<Vec<String>>,
    /// `prefix`: every key of this fleet starts with it (default
    /// `/metalbondd/`; always ends with `/`).
    #[serde(deserialize_with = "prefix")]
    pub prefix: String,
    /// `ca`: CA certificates (PEM) the members' certificates must chain to;
    /// needed with `https://` endpoints.
    pub ca: Option<Spanned<PathBuf>>,
    /// `cert`: client certificate chain (PEM), with `key`; optional.
    pub cert: Option<Spanned<PathBuf>>,
    /// `key`: the private key of `cert` (PEM).
    pub key: Option<Spanned<PathBuf>>,
    /// `username`: etcd user (with `password_file`).
    #[serde(deserialize_with = "parse::opt_nonempty_string")]
    pub username: Option<String>,
    /// `password_file`: file holding the user's password (one line).
    pub password_file: Option<Spanned<PathBuf>>,
    /// `dial_timeout`: time to connect to one member (`"2s"`, `"500ms"`).
    #[serde(deserialize_with = "duration")]
    pub dial_timeout: Duration,
    /// `request_timeout`: time one request may take (`"5s"`).
    #[serde(deserialize_with = "duration")]
    pub request_timeout: Duration,
    /// `max_txn_ops`: most operations per transaction. A server that etcd
    /// refuses (its `--max-txn-ops`, 128 unless the cluster raised it)
    /// falls back to 128 by itself; bulk writes are fastest with both at
    /// 1024 (the default here).
    #[serde(deserialize_with = "parse::positive_usize")]
    pub max_txn_ops: usize,
}

impl Default for EtcdSection {
    fn default() -> Self {
        Self {
            endpoints: Spanned::new(0..0, Vec::new()),
            prefix: DEFAULT_ETCD_PREFIX.to_string(),
            ca: None,
            cert: None,
            key: None,
            username: None,
            password_file: None,
            dial_timeout: DEFAULT_ETCD_DIAL_TIMEOUT,
            request_timeout: DEFAULT_ETCD_REQUEST_TIMEOUT,
            max_txn_ops: DEFAULT_ETCD_MAX_TXN_OPS,
        }
    }
}

/// Checks one etcd endpoint URL: `http://` or `https://`, a host and a port.
pub fn etcd_endpoint(s: &str) -> Result<String, String> {
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
        .ok_or_else(|| {
            format!("etcd endpoint {s:?} must start with http:// or https:// (e.g. \"http://127.0.0.1:2379\")")
        })?;
    let hostport = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = hostport.rsplit_once(':').ok_or_else(|| {
        format!("etcd endpoint {s:?} needs a port (e.g. \"http://127.0.0.1:2379\")")
    })?;
    if host.is_empty() || hostport.contains('/') {
        return Err(format!("etcd endpoint {s:?} is not SCHEME://HOST:PORT"));
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(s.strip_suffix('/').unwrap_or(s).to_string()),
        _ => Err(format!(
            "etcd endpoint {s:?}: port {port:?} is not a number from 1 to 65535"
        )),
    }
}

fn endpoints<'de, D: Deserializer<'de>>(d: D) -> Result<Spanned<Vec<String>>, D::Error> {
    let list = Spanned::<Vec<String>>::deserialize(d)?;
    let span = list.span();
    let mut out = Vec::new();
    for e in list.into_inner() {
        out.push(etcd_endpoint(e.trim()).map_err(de::Error::custom)?);
    }
    Ok(Spanned::new(span, out))
}

fn prefix<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    parse::string_with(d, "a key prefix such as \"/metalbondd/\"", |s| {
        if s.is_empty() {
            return Err("the prefix is empty (the fleet's keys would mix with everything else in etcd; use e.g. \"/metalbondd/\")".into());
        }
        if s.chars().any(|c| c.is_control()) {
            return Err(format!("prefix {s:?} contains control characters"));
        }
        // Our keys are `{prefix}routes/...`: a prefix without the slash
        // would make "/a" and "/ab" overlap.
        Ok(if s.ends_with('/') {
            s.to_string()
        } else {
            format!("{s}/")
        })
    })
}

/// Parses a duration: `"2s"`, `"500ms"`, `"1m"`, or a number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let bad = || format!("{s:?} is not a duration (use e.g. \"2s\", \"500ms\" or \"1m\")");
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = number.parse().map_err(|_| bad())?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(bad()),
    };
    if d.is_zero() {
        return Err(format!("{s:?}: the duration must be more than 0"));
    }
    if d > Duration::from_secs(3600) {
        return Err(format!("{s:?}: the duration must be at most an hour"));
    }
    Ok(d)
}

struct DurationVisitor;

impl de::Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a duration such as \"2s\" or \"500ms\"")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        parse_duration(v).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
        parse_duration(&v.to_string()).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
        parse_duration(&v.to_string()).map_err(E::custom)
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_any(DurationVisitor)
}

impl StoreSection {
    /// Checks across keys: (byte offset, message) of each problem.
    /// `header` is the offset of the `[store` header, for problems of the
    /// section as a whole.
    pub(crate) fn check(&self, header: usize) -> Vec<(usize, String)> {
        let mut problems = Vec::new();
        let Some(etcd) = &self.etcd else {
            if *self.backend.get_ref() == StoreBackend::Etcd {
                problems.push((
                    self.backend.span().start,
                    "store.backend = \"etcd\" needs [store.etcd] (endpoints = [\"http://127.0.0.1:2379\"])".into(),
                ));
            }
            return problems;
        };
        let at = etcd.span().start.max(header);
        let e = etcd.get_ref();
        let list = e.endpoints.get_ref();
        if list.is_empty() {
            problems.push((
                if e.endpoints.span().is_empty() { at } else { e.endpoints.span().start },
                "store.etcd.endpoints: give at least one etcd member (e.g. endpoints = [\"http://127.0.0.1:2379\"])".into(),
            ));
        }
        let https = list.iter().filter(|u| u.starts_with("https://")).count();
        if https != 0 && https != list.len() {
            problems.push((
                e.endpoints.span().start,
                "store.etcd.endpoints: use either http:// or https:// for every endpoint, not both"
                    .into(),
            ));
        }
        if https != 0 && e.ca.is_none() {
            problems.push((
                e.endpoints.span().start,
                "store.etcd.endpoints: https:// needs store.etcd.ca (the CA of the members' certificates)".into(),
            ));
        }
        if https == 0 && !list.is_empty() {
            if let Some(f) = e.ca.iter().chain(&e.cert).chain(&e.key).next() {
                problems.push((
                    f.span().start,
                    "store.etcd: ca, cert and key are for https:// endpoints, but every endpoint is http://".into(),
                ));
            }
        }
        if e.cert.is_some() != e.key.is_some() {
            let f = e.cert.as_ref().or(e.key.as_ref()).expect("one is set");
            problems.push((
                f.span().start,
                "store.etcd: give both cert and key (or neither)".into(),
            ));
        }
        if e.username.is_some() != e.password_file.is_some() {
            let offset = e
                .password_file
                .as_ref()
                .map(|p| p.span().start)
                .unwrap_or(at);
            problems.push((
                offset,
                "store.etcd: give both username and password_file (or neither)".into(),
            ));
        }
        if *self.backend.get_ref() == StoreBackend::Redb {
            problems.push((
                at,
                "[store.etcd] is set but store.backend is \"redb\": set backend = \"etcd\" to use it".into(),
            ));
        }
        problems
    }
}
