//! The address forms of the Go reference's command line.
//!
//! - [`ServerAddr`]: a route server to connect to, `HOST:PORT`, where HOST
//!   is an IP address (IPv6 in brackets) or a DNS name (a Kubernetes
//!   service name is the common case); `tls://HOST:PORT` connects with TLS
//!   (ADR 0026). Names are kept as written and
//!   resolved by the daemon on every connection attempt, so a service that
//!   moves is followed.
//! - [`listen_addr`]: an address to listen on, in the forms Go's
//!   `net.Listen` takes: `IP:PORT`, `:PORT` (every address: the dual-stack
//!   `[::]`) and `NAME:PORT` (the name resolved once, at start, to one
//!   address, IPv4 first, as Go does).

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::str::FromStr;

/// A route server: an IP address or a DNS name, and a port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServerAddr {
    host: Host,
    port: u16,
    /// Written `tls://HOST:PORT`: the session runs over TLS.
    tls: bool,
}

/// The host part of a [`ServerAddr`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Host {
    Ip(IpAddr),
    /// A DNS name, lower-cased.
    Name(String),
}

impl ServerAddr {
    /// The address of an IP literal server.
    pub fn from_socket_addr(addr: SocketAddr) -> Self {
        Self {
            host: Host::Ip(addr.ip()),
            port: addr.port(),
            tls: false,
        }
    }

    /// Whether the server was written `tls://HOST:PORT`: connect with TLS,
    /// verifying the server's certificate for HOST.
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// The host as written (an IP address without brackets, or the name):
    /// the name a TLS server's certificate is checked against.
    pub fn host(&self) -> String {
        match &self.host {
            Host::Ip(ip) => ip.to_string(),
            Host::Name(n) => n.clone(),
        }
    }

    /// The socket address when the host is an IP address; `None` for a
    /// name, which has to be resolved.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match &self.host {
            Host::Ip(ip) => Some(SocketAddr::new(*ip, self.port)),
            Host::Name(_) => None,
        }
    }

    /// The DNS name, if the host is one.
    pub fn name(&self) -> Option<&str> {
        match &self.host {
            Host::Ip(_) => None,
            Host::Name(n) => Some(n),
        }
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl From<SocketAddr> for ServerAddr {
    fn from(addr: SocketAddr) -> Self {
        Self::from_socket_addr(addr)
    }
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.tls {
            f.write_str(TLS_SCHEME)?;
        }
        match &self.host {
            Host::Ip(ip) => SocketAddr::new(*ip, self.port).fmt(f),
            Host::Name(n) => write!(f, "{n}:{}", self.port),
        }
    }
}

/// What a server address looks like, for error messages.
const SERVER_FORMS: &str =
    "expected HOST:PORT, e.g. \"[2001:db8::1]:4711\", \"192.0.2.1:4711\" or \"metalbond.example:4711\"";

/// The prefix of a server reached over TLS.
const TLS_SCHEME: &str = "tls://";

impl FromStr for ServerAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if let Some(rest) = t.strip_prefix(TLS_SCHEME) {
            if rest.contains("://") {
                return Err(format!("{s:?}: one scheme only ({SERVER_FORMS})"));
            }
            let mut addr: ServerAddr = rest.parse()?;
            addr.tls = true;
            return Ok(addr);
        }
        if let Some((scheme, _)) = t.split_once("://") {
            return Err(format!(
                "{s:?}: unknown scheme {scheme:?} (only \"tls://HOST:PORT\"; plaintext is HOST:PORT)"
            ));
        }
        if let Ok(addr) = t.parse::<SocketAddr>() {
            return Ok(Self::from_socket_addr(addr));
        }
        let Some((host, port)) = t.rsplit_once(':') else {
            return Err(format!("{s:?} has no port ({SERVER_FORMS})"));
        };
        if host.contains(':') || host.starts_with('[') {
            return Err(format!(
                "{s:?} is not a valid address: an IPv6 address is written in brackets with a port, e.g. \"[2001:db8::1]:4711\""
            ));
        }
        let port = parse_port(s, port)?;
        if host.is_empty() {
            return Err(format!("{s:?} has no host ({SERVER_FORMS})"));
        }
        check_host_name(host).map_err(|why| format!("{s:?}: {why} ({SERVER_FORMS})"))?;
        Ok(Self {
            host: Host::Name(host.to_ascii_lowercase()),
            port,
            tls: false,
        })
    }
}

fn parse_port(s: &str, port: &str) -> Result<u16, String> {
    port.parse::<u16>()
        .map_err(|_| format!("{s:?}: bad port {port:?} (expected a number 0..65535)"))
}

/// A DNS host name: labels of letters, digits, `-` and `_` (service
/// records), 1 to 63 characters each, 253 in all; not all-numeric at the
/// end (that is a malformed IPv4 address, not a name).
fn check_host_name(host: &str) -> Result<(), String> {
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.len() > 253 {
        return Err("the host name is longer than 253 characters".into());
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("bad host name {host:?} (empty or overlong label)"));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!("bad host name {host:?} (character {c:?})"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "bad host name {host:?} (a label starts or ends with '-')"
            ));
        }
    }
    let last = name.rsplit('.').next().unwrap_or(name);
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{host:?} is not a valid IP address"));
    }
    Ok(())
}

/// An address to listen on, as Go's `net.Listen` takes it: `IP:PORT`,
/// `:PORT` (every address, IPv6 and IPv4: `[::]:PORT`, which metalbondd
/// binds dual-stack) or `NAME:PORT` (e.g. `localhost:4711`; resolved now
/// to one address, the first IPv4 one if any, as Go does).
pub fn listen_addr(s: &str) -> Result<SocketAddr, String> {
    const FORMS: &str =
        "expected IP:PORT, :PORT or NAME:PORT, e.g. \"[::]:4711\", \":4711\" or \"localhost:4711\"";
    let t = s.trim();
    if let Ok(addr) = t.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if t.contains("://") {
        return Err(format!("{s:?}: a listen address has no scheme ({FORMS})"));
    }
    if let Some(port) = t.strip_prefix(':') {
        let port = parse_port(s, port)?;
        return Ok(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)));
    }
    let server: ServerAddr = t
        .parse()
        .map_err(|e: String| e.replace(SERVER_FORMS, FORMS))?;
    let name = server.name().unwrap_or_default();
    let resolved: Vec<SocketAddr> = (name, server.port())
        .to_socket_addrs()
        .map_err(|e| format!("{s:?}: cannot resolve {name:?}: {e}"))?
        .collect();
    resolved
        .iter()
        .find(|a| a.is_ipv4())
        .or(resolved.first())
        .copied()
        .ok_or_else(|| format!("{s:?}: {name:?} resolves to no address"))
}

/// Rejects an address listed twice (before anything is bound, so the
/// operator reads which one rather than "Address already in use"). Port 0
/// (any free port) may repeat.
pub fn no_duplicate_listen(addrs: &[SocketAddr]) -> Result<(), String> {
    for (i, a) in addrs.iter().enumerate() {
        if a.port() != 0 && addrs[..i].contains(a) {
            return Err(format!("listen address {a} is given twice"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addr_forms() {
        let ok = [
            ("[2001:db8::1]:4711", "[2001:db8::1]:4711", None),
            ("192.0.2.1:4711", "192.0.2.1:4711", None),
            (
                " metalbond.example:4711 ",
                "metalbond.example:4711",
                Some("metalbond.example"),
            ),
            ("MetalBond:1", "metalbond:1", Some("metalbond")),
            (
                "metalbond.ns.svc.cluster.local.:4711",
                "metalbond.ns.svc.cluster.local.:4711",
                Some("metalbond.ns.svc.cluster.local."),
            ),
            ("localhost:4711", "localhost:4711", Some("localhost")),
            ("_mb._tcp.x:4711", "_mb._tcp.x:4711", Some("_mb._tcp.x")),
        ];
        for (text, shown, name) in ok {
            let a: ServerAddr = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(a.to_string(), shown);
            assert_eq!(a.name(), name);
            assert_eq!(a.socket_addr().is_some(), name.is_none());
        }
        let bad = [
            ("metalbond.example", "no port"),
            ("2001:db8::1", "brackets"),
            ("[2001:db8::1]", "brackets"),
            (":4711", "no host"),
            ("host:99999", "bad port"),
            ("host:", "bad port"),
            ("bad host:4711", "character ' '"),
            ("a..b:4711", "empty"),
            ("-a:4711", "'-'"),
            ("1.2.3:4711", "not a valid IP address"),
            ("300.1.1.1:4711", "not a valid IP address"),
            ("", "no port"),
        ];
        for (text, why) in bad {
            let e = text.parse::<ServerAddr>().unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
        }
    }

    #[test]
    fn duplicate_listen_addresses() {
        let a: SocketAddr = "[::1]:4711".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:4711".parse().unwrap();
        let any: SocketAddr = "[::1]:0".parse().unwrap();
        assert!(no_duplicate_listen(&[a, b, any, any]).is_ok());
        let e = no_duplicate_listen(&[a, b, a]).unwrap_err();
        assert_eq!(e, "listen address [::1]:4711 is given twice");
    }

    #[test]
    fn listen_addr_forms() {
        assert_eq!(listen_addr(":4711").unwrap(), "[::]:4711".parse().unwrap());
        assert_eq!(
            listen_addr("[::1]:4711").unwrap(),
            "[::1]:4711".parse().unwrap()
        );
        assert_eq!(
            listen_addr("localhost:4711").unwrap(),
            "127.0.0.1:4711".parse().unwrap()
        );
        for (text, why) in [
            (":x", "bad port"),
            ("4711", "no port"),
            ("no-such-host.invalid:4711", "cannot resolve"),
        ] {
            let e = listen_addr(text).unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
            assert!(!e.contains("HOST:PORT"), "{text}: {e}");
        }
    }
}
