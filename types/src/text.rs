//! The announcement text format of PROTOCOL.md section 7, the one parser of
//! it (the daemon's configuration and tests, and mbctl's arguments).
//!
//! `VNI#PREFIX@NEXTHOP[#TYPE[#FROM#TO]]` (rustbond style) and the Go
//! reference's `VNI#PREFIX#NEXTHOP[#TYPE][#FROM#TO]` are both accepted. TYPE is
//! `std`, `nat` or `lb` (case-insensitive; the long names `standard`,
//! `loadbalancer` and `loadbalancer_target` too); NAT requires FROM and TO
//! (0..65535, FROM <= TO); other types take no ports. The next hop may be an
//! IPv6 address in brackets. The destination address is kept as written (not
//! masked). Examples: `100#10.0.1.0/24@2001:db8::1`,
//! `200#10.0.2.0/24@2001:db8::2#nat#1024#2048`, `100#10.0.3.0/24#2001:db8::3#LB`.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::route::{Address, Destination, NextHop, NextHopType, Route, Vni};

/// Why an announcement string was rejected. Displayed as one line:
/// `invalid route "TEXT": REASON (expected ..., e.g. ...)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseRouteError {
    /// The text given.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for ParseRouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid route {:?}: {} (expected VNI#PREFIX@NEXTHOP[#TYPE[#FROM#TO]], \
             e.g. 100#10.0.1.0/24@2001:db8::1)",
            self.input, self.reason
        )
    }
}

impl std::error::Error for ParseRouteError {}

impl FromStr for Route {
    type Err = ParseRouteError;

    /// Any 32-bit VNI (the wire's range); see [`parse_route`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_route(s, u32::MAX)
    }
}

/// Parses one route in the text format, accepting VNIs from 0 to `max_vni`
/// (the control API takes 24 bits, the wire 32).
pub fn parse_route(s: &str, max_vni: u32) -> Result<Route, ParseRouteError> {
    parse(s, max_vni).map_err(|reason| ParseRouteError {
        input: s.to_string(),
        reason,
    })
}

fn parse(s: &str, max_vni: u32) -> Result<Route, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty".into());
    }
    // Normalise the rustbond form (`PREFIX@NEXTHOP`) to the Go form (`PREFIX#NEXTHOP`).
    let parts: Vec<&str> = match s.split_once('@') {
        Some((head, tail)) => {
            let mut parts: Vec<&str> = head.split('#').collect();
            if parts.len() != 2 {
                return Err("expected VNI#PREFIX before '@'".into());
            }
            if tail.contains('@') {
                return Err("more than one '@'".into());
            }
            parts.extend(tail.split('#'));
            parts
        }
        None => s.split('#').collect(),
    };
    if parts.len() < 3 {
        return Err("missing fields".into());
    }
    let vni = match parts[0].parse::<u32>() {
        Ok(v) if v <= max_vni => v,
        _ => {
            return Err(format!(
                "VNI {:?} is not a number from 0 to {max_vni}",
                parts[0]
            ))
        }
    };
    let dest = parse_prefix(parts[1]).map_err(|e| e.quoted().to_string())?;
    let addr = parse_address(parts[2])
        .map_err(|_| format!("next hop {:?} is not an IP address", parts[2]))?;

    let mut next_hop = NextHop::standard(addr);
    let mut rest = &parts[3..];
    if let Some(first) = rest.first() {
        // In the Go form a number right after the next hop is a port (no TYPE given).
        if first.parse::<u32>().is_err() {
            next_hop.kind = parse_type(first)?;
            rest = &rest[1..];
        }
    }
    match (next_hop.kind, rest) {
        (NextHopType::NAT, [from, to]) => {
            let (from, to) = (parse_port(from)?, parse_port(to)?);
            if from > to {
                return Err(format!(
                    "NAT port range {from}-{to} is inverted (FROM > TO)"
                ));
            }
            (next_hop.nat_from, next_hop.nat_to) = (from, to);
        }
        (NextHopType::NAT, []) => return Err("NAT needs a port range #FROM#TO".into()),
        (NextHopType::NAT, [_]) => {
            return Err("NAT needs a port range #FROM#TO, got only FROM".into())
        }
        (NextHopType::NAT, _) => return Err("too many fields after the NAT port range".into()),
        (_, []) => {}
        (_, _) => return Err("a port range is only valid for NAT".into()),
    }
    Ok(Route {
        vni: Vni(vni),
        dest,
        next_hop,
    })
}

fn parse_port(s: &str) -> Result<u16, String> {
    s.parse::<u16>()
        .map_err(|_| format!("NAT port {s:?} is not a number from 0 to 65535"))
}

/// Parses a next-hop type name: `std`, `nat` or `lb` (case-insensitive; the
/// long names `standard`, `loadbalancer` and `loadbalancer_target` too).
pub fn parse_type(s: &str) -> Result<NextHopType, String> {
    match s.to_ascii_lowercase().as_str() {
        "std" | "standard" => Ok(NextHopType::STANDARD),
        "nat" => Ok(NextHopType::NAT),
        "lb" | "loadbalancer" | "loadbalancer_target" => Ok(NextHopType::LOADBALANCER_TARGET),
        _ => Err(format!("unknown type {s:?} (use std, nat or lb)")),
    }
}

/// Parses an IP address; an IPv6 address may be written in brackets
/// (`[2001:db8::1]`). The error reads `"TEXT" is not an IP address`.
pub fn parse_address(s: &str) -> Result<Address, String> {
    let bare = s
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(s);
    bare.parse::<IpAddr>()
        .map(Address::from)
        .map_err(|_| format!("{s:?} is not an IP address"))
}

/// Why `ADDR/LEN` was rejected.
///
/// Displayed on its own (where a field name gives the context, as in the
/// control API's `routes[1].prefix: prefix length 33 exceeds 32 bits`), or
/// with the prefix quoted ([`PrefixError::quoted`]) inside a route or an
/// mbctl option: `prefix "10.0.0.0/33": length 33 exceeds 32 bits`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrefixError {
    /// The text given.
    pub input: String,
    /// What is wrong with it.
    pub kind: PrefixErrorKind,
}

/// What is wrong with a prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrefixErrorKind {
    /// No `/`.
    NoLength,
    /// The part before `/` is not an IP address (that part).
    Address(String),
    /// The part after `/` is not a number (that part).
    Length(String),
    /// The length (as written) is larger than the address width (32 or 128).
    TooLong(String, u8),
}

impl PrefixError {
    /// The part after `prefix` (`length 33 exceeds 32 bits`), for the
    /// two framings.
    fn detail(&self) -> String {
        match &self.kind {
            PrefixErrorKind::NoLength => "has no /LENGTH".into(),
            PrefixErrorKind::Address(addr) => format!("{addr:?} is not an IP address"),
            PrefixErrorKind::Length(len) => format!("length {len:?} is not a number"),
            PrefixErrorKind::TooLong(len, max) => format!("length {len} exceeds {max} bits"),
        }
    }

    /// The error with the prefix quoted: `prefix "10.0.0.0/33": length 33
    /// exceeds 32 bits`, `prefix "10.0.0.0" has no /LENGTH`.
    pub fn quoted(&self) -> impl fmt::Display + '_ {
        struct Quoted<'a>(&'a PrefixError);
        impl fmt::Display for Quoted<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let e = self.0;
                match e.kind {
                    PrefixErrorKind::NoLength => write!(f, "prefix {:?} {}", e.input, e.detail()),
                    _ => write!(f, "prefix {:?}: {}", e.input, e.detail()),
                }
            }
        }
        Quoted(self)
    }
}

impl fmt::Display for PrefixError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            PrefixErrorKind::NoLength => write!(f, "prefix {:?} {}", self.input, self.detail()),
            PrefixErrorKind::Address(_) => f.write_str(&self.detail()),
            PrefixErrorKind::Length(_) | PrefixErrorKind::TooLong(..) => {
                write!(f, "prefix {}", self.detail())
            }
        }
    }
}

impl std::error::Error for PrefixError {}

/// Parses `ADDR/LEN` into a destination: LEN is decimal digits, at most the
/// address width; the address is kept as written (not masked).
pub fn parse_prefix(s: &str) -> Result<Destination, PrefixError> {
    let fail = |kind| PrefixError {
        input: s.to_string(),
        kind,
    };
    let (addr, len) = s
        .split_once('/')
        .ok_or_else(|| fail(PrefixErrorKind::NoLength))?;
    let addr = addr
        .parse::<IpAddr>()
        .map(Address::from)
        .map_err(|_| fail(PrefixErrorKind::Address(addr.to_string())))?;
    if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
        return Err(fail(PrefixErrorKind::Length(len.to_string())));
    }
    let too_long = || fail(PrefixErrorKind::TooLong(len.to_string(), addr.bit_width()));
    let len = len.parse::<u8>().map_err(|_| too_long())?;
    Destination::new(addr, len).ok_or_else(too_long)
}

#[cfg(test)]
mod tests;
