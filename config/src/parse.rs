//! Value parsers used by the serde model, and the translation of toml errors
//! into [`ConfigError`]s that name the key.
//!
//! Every parser checks its value inside a serde visitor, so that toml
//! attaches the value's position to the error.

use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, Visitor};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::addr::{listen_addr, ServerAddr};
use crate::error::ConfigError;
use crate::file::LogFormat;
use crate::MAX_KEEPALIVE_SECS;

/// A visitor for a string value checked by `check`.
struct StrVisitor<T, F> {
    expecting: &'static str,
    check: F,
    out: PhantomData<T>,
}

impl<T, F> Visitor<'_> for StrVisitor<T, F>
where
    F: FnOnce(&str) -> Result<T, String>,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.check)(v).map_err(E::custom)
    }
}

pub(crate) fn string_with<'de, D, T>(
    d: D,
    expecting: &'static str,
    check: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    d.deserialize_str(StrVisitor {
        expecting,
        check,
        out: PhantomData,
    })
}

/// A visitor for an integer value checked by `check`.
struct IntVisitor<T, F> {
    expecting: &'static str,
    check: F,
    out: PhantomData<T>,
}

impl<T, F> Visitor<'_> for IntVisitor<T, F>
where
    F: FnOnce(i128) -> Result<T, String>,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        (self.check)(i128::from(v)).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        (self.check)(i128::from(v)).map_err(E::custom)
    }
}

fn int_with<'de, D, T>(
    d: D,
    expecting: &'static str,
    check: impl FnOnce(i128) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    d.deserialize_i64(IntVisitor {
        expecting,
        check,
        out: PhantomData,
    })
}

/// An integer from `min` to `max`, described as `what` in messages.
pub(crate) fn int_in<'de, D, T>(
    d: D,
    expecting: &'static str,
    min: T,
    max: T,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i128> + Into<i128> + Copy + fmt::Display,
{
    int_with(d, expecting, |v| {
        if v < min.into() || v > max.into() {
            return Err(format!("{v} is out of range: expected {expecting}"));
        }
        T::try_from(v).map_err(|_| format!("{v} is out of range: expected {expecting}"))
    })
}

/// A visitor for a table, deserialized as `T`.
struct TableVisitor<T>(PhantomData<T>);

impl<'de, T: de::Deserialize<'de>> Visitor<'de> for TableVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a table (a [section] header, not [[section]])")
    }

    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::deserialize(de::value::MapAccessDeserializer::new(map))
    }
}

/// A section: a table only (serde would also take a list for a struct).
pub(crate) fn section<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: de::Deserialize<'de>,
{
    d.deserialize_map(TableVisitor(PhantomData))
}

/// An optional section: present means `Some`.
pub(crate) fn opt_section<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: de::Deserialize<'de>,
{
    section(d).map(Some)
}

/// A visitor for a list of `T`.
struct ListVisitor<T> {
    expecting: &'static str,
    out: PhantomData<T>,
}

impl<'de, T: de::Deserialize<'de>> Visitor<'de> for ListVisitor<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element()? {
            out.push(item);
        }
        Ok(out)
    }
}

fn list_of<'de, D, T>(d: D, expecting: &'static str) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: de::Deserialize<'de>,
{
    d.deserialize_seq(ListVisitor {
        expecting,
        out: PhantomData,
    })
}

/// `routes.static`: a list of strings, each kept with its position.
pub(crate) fn static_routes<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Vec<Spanned<String>>, D::Error> {
    list_of(
        d,
        "a list of route strings such as [\"100#10.0.1.0/24@2001:db8::1\"]",
    )
}

/// `client.servers`: a list of server addresses, `HOST:PORT` with an IP
/// address or a DNS name (checked non-empty after parsing, with the
/// section's position).
pub(crate) fn client_servers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ServerAddr>, D::Error> {
    let addrs: Vec<Server> = list_of(
        d,
        "a list of server addresses such as [\"[2001:db8::1]:4711\", \"metalbond.example:4711\"]",
    )?;
    Ok(addrs.into_iter().map(|a| a.0).collect())
}

/// A server address written as a string, one element of a list.
struct Server(ServerAddr);

impl<'de> de::Deserialize<'de> for Server {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        string_with(
            d,
            "a server address string such as \"metalbond.example:4711\"",
            str::parse,
        )
        .map(Server)
    }
}

/// One VNI (0 to 2^32-1).
struct VniValue(u32);

impl<'de> de::Deserialize<'de> for VniValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        int_in(d, "a VNI from 0 to 4294967295", 0u32, u32::MAX).map(VniValue)
    }
}

/// `client.subscribe`: a list of VNIs.
pub(crate) fn vnis<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u32>, D::Error> {
    let v: Vec<VniValue> = list_of(d, "a list of VNIs such as [100, 200]")?;
    Ok(v.into_iter().map(|v| v.0).collect())
}

/// One `"VNI#TABLE"` mapping.
struct InstallRoute((u32, u32));

impl<'de> de::Deserialize<'de> for InstallRoute {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        string_with(
            d,
            "a mapping string such as \"100#100\"",
            crate::parse_install_route,
        )
        .map(InstallRoute)
    }
}

/// `client.install_routes`: a list of `"VNI#TABLE"` strings.
pub(crate) fn install_routes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(u32, u32)>, D::Error> {
    let v: Vec<InstallRoute> = list_of(d, "a list of mappings such as [\"100#100\"]")?;
    Ok(v.into_iter().map(|v| v.0).collect())
}

/// `client.hold_time`, `client.stale_time`, `server.withdraw_delay`:
/// seconds, 0 to a day.
pub(crate) fn duration_secs<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    const _: () = assert!(crate::MAX_HOLD_SECS == 86_400);
    int_in(d, "seconds from 0 to 86400", 0, crate::MAX_HOLD_SECS)
}

fn socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.trim().parse().map_err(|_| {
        format!("{s:?} is not a socket address (expected IP:PORT, e.g. \"[::]:4711\" or \"0.0.0.0:4711\")")
    })
}

/// An HTTP listen address as the Go reference takes it: `IP:PORT`, or
/// `:PORT` for every address (IPv6 and IPv4), or `localhost:PORT`.
pub fn http_addr(s: &str) -> Result<SocketAddr, String> {
    let t = s.trim();
    if let Some(port) = t.strip_prefix(':') {
        if let Ok(port) = port.parse::<u16>() {
            return Ok(SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)));
        }
    }
    if let Some(port) = t.strip_prefix("localhost:") {
        if let Ok(port) = port.parse::<u16>() {
            return Ok(SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port)));
        }
    }
    t.parse().map_err(|_| {
        format!("{s:?} is not an HTTP listen address (expected IP:PORT, :PORT or localhost:PORT, e.g. \"127.0.0.1:9711\")")
    })
}

/// An optional HTTP listen address (see [`http_addr`]).
pub(crate) fn opt_http_addr<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<SocketAddr>, D::Error> {
    string_with(d, "an address string such as \"127.0.0.1:9711\"", http_addr).map(Some)
}

/// A count (0 allowed).
pub(crate) fn count<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let v: u64 = int_in(d, "a whole number (0 or more)", 0, i64::MAX as u64)?;
    usize::try_from(v).map_err(|_| de::Error::custom(format!("{v} is too large")))
}

/// A listen address written as a string (see [`listen_addr`]), one
/// element of a list.
struct Listen(SocketAddr);

impl<'de> de::Deserialize<'de> for Listen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        string_with(
            d,
            "a listen address string such as \"[::]:4711\" or \":4711\"",
            listen_addr,
        )
        .map(Listen)
    }
}

/// `server.listen`: a non-empty list of listen addresses, no address twice.
pub(crate) fn listen<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    let addrs: Vec<Listen> = list_of(
        d,
        "a list of listen addresses such as [\"[::]:4711\"] or [\":4711\"]",
    )?;
    if addrs.is_empty() {
        return Err(de::Error::custom(
            "the list is empty: give at least one address to listen on",
        ));
    }
    let addrs: Vec<SocketAddr> = addrs.into_iter().map(|a| a.0).collect();
    crate::addr::no_duplicate_listen(&addrs).map_err(de::Error::custom)?;
    Ok(addrs)
}

/// `server.tls_listen`: like `listen`, but may be empty; kept with its
/// position for the checks across keys.
pub(crate) fn tls_listen<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Spanned<Vec<SocketAddr>>, D::Error> {
    let addrs: Spanned<Vec<Listen>> = de::Deserialize::deserialize(d)?;
    let span = addrs.span();
    let addrs: Vec<SocketAddr> = addrs.into_inner().into_iter().map(|a| a.0).collect();
    crate::addr::no_duplicate_listen(&addrs).map_err(de::Error::custom)?;
    Ok(Spanned::new(span, addrs))
}

/// An optional socket address (present means given).
pub(crate) fn opt_socket_addr<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<SocketAddr>, D::Error> {
    string_with(
        d,
        "a socket address string such as \"127.0.0.1:4712\"",
        socket_addr,
    )
    .map(Some)
}

/// `server.keepalive`: seconds, 0 to [`MAX_KEEPALIVE_SECS`].
pub(crate) fn keepalive<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    // The message text is built from the constant, so keep it in sync.
    const _: () = assert!(MAX_KEEPALIVE_SECS == 3600);
    int_in(
        d,
        "seconds from 0 to 3600 (0 means 5)",
        0,
        MAX_KEEPALIVE_SECS,
    )
}

/// A count of at least 1.
pub(crate) fn positive_usize<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let v: u64 = int_in(d, "a whole number of at least 1", 1, i64::MAX as u64)?;
    usize::try_from(v).map_err(|_| de::Error::custom(format!("{v} is too large")))
}

/// A count of bytes (0 allowed).
pub(crate) fn bytes_usize<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let v: u64 = int_in(d, "a number of bytes (0 or more)", 0, i64::MAX as u64)?;
    usize::try_from(v).map_err(|_| de::Error::custom(format!("{v} is too large")))
}

/// A count of bytes of at least 1.
pub(crate) fn positive_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    int_in(d, "a number of bytes of at least 1", 1, i64::MAX as u64)
}

/// A duration in whole seconds of at least 1.
pub(crate) fn positive_secs<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    int_in(d, "seconds, at least 1", 1, i64::MAX as u64)
}

/// A whole number of at least 1, when given.
pub(crate) fn opt_positive_usize<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<usize>, D::Error> {
    positive_usize(d).map(Some)
}

/// A non-empty string.
pub(crate) fn opt_nonempty_string<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    string_with(d, "a non-empty string", |s| {
        if s.trim().is_empty() {
            Err("the value is empty".to_string())
        } else {
            Ok(Some(s.to_string()))
        }
    })
}

/// A non-empty path.
pub(crate) fn opt_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    string_with(d, "a path string", |s| {
        if s.is_empty() {
            Err("the path is empty".to_string())
        } else {
            Ok(Some(PathBuf::from(s)))
        }
    })
}

/// `api.socket_mode`: permission bits as an octal string ("0660", "0o660").
pub(crate) fn octal_mode<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    string_with(d, "an octal mode string such as \"0660\"", |s| {
        let bad = || format!("{s:?} is not an octal permission mode (expected e.g. \"0660\")");
        let digits = s.strip_prefix("0o").unwrap_or(s);
        if digits.is_empty() || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            return Err(bad());
        }
        let mode = u32::from_str_radix(digits, 8).map_err(|_| bad())?;
        if mode > 0o7777 {
            return Err(format!("{s:?} is not a permission mode: it exceeds 07777"));
        }
        Ok(mode)
    })
}

/// `log.level`: a tracing `EnvFilter` directive.
pub(crate) fn log_level<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    string_with(d, "a log filter string such as \"info\"", |s| {
        if s.trim().is_empty() {
            return Err("the log filter is empty (use e.g. \"info\")".to_string());
        }
        tracing_subscriber::EnvFilter::try_new(s)
            .map(|_| s.to_string())
            .map_err(|e| format!("{s:?} is not a log filter: {e} (use e.g. \"info\" or \"info,metalbondd=debug\")"))
    })
}

impl<'de> de::Deserialize<'de> for LogFormat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        string_with(d, "\"text\" or \"json\"", |s| match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "unknown log format {other:?} (expected \"text\" or \"json\")"
            )),
        })
    }
}

/// Turns a toml error into a [`ConfigError`] whose message names the key at
/// the error's position.
pub(crate) fn toml_error(path: &Path, text: &str, err: &toml::de::Error) -> ConfigError {
    let message = err.message().trim().to_string();
    let Some(span) = err.span() else {
        return ConfigError::whole_file(path, message);
    };
    let message = match key_path(text, span.start) {
        Some(key) => match message.strip_prefix("unknown field `") {
            Some(rest) => {
                let rest = rest.split_once('`').map_or("", |(_, rest)| rest);
                format!("unknown key `{key}`{rest}")
            }
            None => format!("{key}: {message}"),
        },
        None => message,
    };
    ConfigError::at(path, text, span.start, message)
}

/// The dotted key (`server.listen[1]`) whose key or value lies at byte
/// `offset`, if the document parses.
pub(crate) fn key_path(text: &str, offset: usize) -> Option<String> {
    let doc = DeTable::parse(text).ok()?;
    let mut path = String::new();
    find_in_table(doc.get_ref(), offset, &mut path).then_some(path)
}

fn contains(span: &std::ops::Range<usize>, offset: usize) -> bool {
    span.start <= offset && offset < span.end.max(span.start + 1)
}

fn push_key(path: &mut String, key: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        path.push_str(key);
    } else {
        path.push_str(&format!("{key:?}"));
    }
}

fn find_in_table(table: &DeTable<'_>, offset: usize, path: &mut String) -> bool {
    for (key, value) in table.iter() {
        let len = path.len();
        push_key(path, key.get_ref());
        if contains(&key.span(), offset) || find_in_value(value, offset, path) {
            return true;
        }
        path.truncate(len);
    }
    false
}

fn find_in_value(value: &Spanned<DeValue<'_>>, offset: usize, path: &mut String) -> bool {
    match value.get_ref() {
        // Tables (`[server]` headers, dotted keys) may be spread over the
        // file, so look inside whatever their own span says.
        DeValue::Table(t) => find_in_table(t, offset, path) || contains(&value.span(), offset),
        DeValue::Array(items) => {
            // An error about the list itself starts where the list starts.
            if value.span().start == offset {
                return true;
            }
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                if find_in_value(item, offset, path) {
                    return true;
                }
                path.truncate(len);
            }
            contains(&value.span(), offset)
        }
        _ => contains(&value.span(), offset),
    }
}
