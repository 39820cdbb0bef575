//! The announcement text format of PROTOCOL.md section 7.
//!
//! `VNI#PREFIX@NEXTHOP[#TYPE[#FROM#TO]]` (rustbond style) and the Go
//! reference's `VNI#PREFIX#NEXTHOP[#TYPE][#FROM#TO]` are both accepted. TYPE is
//! `std`, `nat` or `lb` (case-insensitive); NAT requires FROM and TO.

use std::net::IpAddr;
use std::str::FromStr;

use super::types::{Address, Destination, NextHop, NextHopType, Route, Vni};

/// Why an announcement string was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid route {input:?}: {reason} (expected VNI#PREFIX@NEXTHOP[#TYPE[#FROM#TO]], e.g. 100#10.0.1.0/24@2001:db8::1)")]
pub struct ParseRouteError {
    /// The text given.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FromStr for Route {
    type Err = ParseRouteError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_route(s).map_err(|reason| ParseRouteError {
            input: s.to_string(),
            reason,
        })
    }
}

fn parse_route(s: &str) -> Result<Route, String> {
    let s = s.trim();
    // Normalise the rustbond form (`PREFIX@NEXTHOP`) to the Go form (`PREFIX#NEXTHOP`).
    let parts: Vec<&str> = if let Some((head, tail)) = s.split_once('@') {
        let mut parts: Vec<&str> = head.split('#').collect();
        if parts.len() != 2 {
            return Err("expected VNI#PREFIX before '@'".into());
        }
        parts.extend(tail.split('#'));
        parts
    } else {
        s.split('#').collect()
    };
    if parts.len() < 3 {
        return Err("missing fields".into());
    }
    let vni = parts[0]
        .parse::<u32>()
        .map_err(|_| format!("VNI {:?} is not a number from 0 to 4294967295", parts[0]))?;
    let dest = parse_prefix(parts[1])?;
    let addr = IpAddr::from_str(parts[2])
        .map_err(|_| format!("next hop {:?} is not an IP address", parts[2]))?;
    let mut next_hop = NextHop::standard(Address::from(addr));
    let mut rest = &parts[3..];
    if let Some(first) = rest.first() {
        if first.parse::<u32>().is_err() {
            next_hop.kind = match first.to_ascii_lowercase().as_str() {
                "std" | "standard" => NextHopType::STANDARD,
                "nat" => NextHopType::NAT,
                "lb" | "loadbalancer" | "loadbalancer_target" => NextHopType::LOADBALANCER_TARGET,
                other => return Err(format!("unknown type {other:?} (use std, nat or lb)")),
            };
            rest = &rest[1..];
        }
    }
    match (next_hop.kind, rest) {
        (NextHopType::NAT, [from, to]) => {
            let port = |p: &str| {
                p.parse::<u16>()
                    .map_err(|_| format!("NAT port {p:?} is not a number from 0 to 65535"))
            };
            next_hop.nat_from = port(from)?;
            next_hop.nat_to = port(to)?;
            if next_hop.nat_from > next_hop.nat_to {
                return Err(format!("NAT port range {from}-{to} is inverted"));
            }
        }
        (NextHopType::NAT, _) => return Err("NAT needs a port range #FROM#TO".into()),
        (_, []) => {}
        (_, _) => return Err("a port range is only valid for NAT".into()),
    }
    Ok(Route {
        vni: Vni(vni),
        dest,
        next_hop,
    })
}

/// Parses `ADDR/LEN` into a destination (the address is kept as written, not masked).
pub fn parse_prefix(s: &str) -> Result<Destination, String> {
    let (addr, len) = s
        .split_once('/')
        .ok_or_else(|| format!("prefix {s:?} has no /LENGTH"))?;
    let addr = IpAddr::from_str(addr).map_err(|_| format!("{addr:?} is not an IP address"))?;
    let addr = Address::from(addr);
    let len: u8 = len
        .parse()
        .map_err(|_| format!("prefix length {len:?} is not a number"))?;
    Destination::new(addr, len)
        .ok_or_else(|| format!("prefix length {len} exceeds {} bits", addr.bit_width()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(s: &str) -> Route {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn parses_both_forms_and_all_types() {
        let r = route("100#10.0.1.0/24@2001:db8::1");
        assert_eq!(r.vni, Vni(100));
        assert_eq!(r.dest.to_string(), "10.0.1.0/24");
        assert_eq!(r.next_hop.kind, NextHopType::STANDARD);
        assert_eq!(r, route("100#10.0.1.0/24#2001:db8::1"));

        let nat = route("200#10.0.2.0/24@2001:db8::2#nat#1024#2048");
        assert_eq!(nat.next_hop.kind, NextHopType::NAT);
        assert_eq!((nat.next_hop.nat_from, nat.next_hop.nat_to), (1024, 2048));
        assert_eq!(nat, route("200#10.0.2.0/24#2001:db8::2#NAT#1024#2048"));

        let lb = route("100#10.0.3.0/24@2001:db8::3#lb");
        assert_eq!(lb.next_hop.kind, NextHopType::LOADBALANCER_TARGET);
        assert_eq!(lb, route("100#10.0.3.0/24#2001:db8::3#LB"));

        let v6 = route("7#2001:db8:42::/48@2001:db8::4242");
        assert!(v6.dest.addr.is_ipv6());
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "100#10.0.1.0/24@2001:db8::1",
            "200#10.0.2.0/24@2001:db8::2#nat#1024#2048",
            "100#10.0.3.0/24@2001:db8::3#lb",
            "1#2001:db8::/64@2001:db8::9",
        ] {
            assert_eq!(route(s).to_string(), s);
        }
    }

    #[test]
    fn rejects_bad_input_with_a_reason() {
        for (s, why) in [
            ("x#10.0.0.0/8@::1", "VNI"),
            ("1#10.0.0.0/33@::1", "exceeds 32"),
            ("1#10.0.0.0@::1", "no /LENGTH"),
            ("1#10.0.0.0/8@nothost", "not an IP"),
            ("1#10.0.0.0/8@::1#nat", "port range"),
            ("1#10.0.0.0/8@::1#nat#20#10", "inverted"),
            ("1#10.0.0.0/8@::1#nat#1#70000", "0 to 65535"),
            ("1#10.0.0.0/8@::1#std#1#2", "only valid for NAT"),
            ("1#10.0.0.0/8@::1#weird", "unknown type"),
            ("1#10.0.0.0/8", "missing"),
        ] {
            let err = s.parse::<Route>().unwrap_err().to_string();
            assert!(err.contains(why), "{s}: {err}");
        }
    }
}
