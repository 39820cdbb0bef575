//! The route text form of PROTOCOL.md section 7, parsed into the API's `Route`.
//!
//! `VNI#PREFIX@NEXTHOP[#TYPE[#FROM#TO]]` (rustbond style) and the Go
//! reference's `VNI#PREFIX#NEXTHOP[#TYPE][#FROM#TO]` are both accepted. TYPE is
//! `std`, `nat` or `lb` (case-insensitive); NAT requires FROM and TO
//! (0..65535, FROM <= TO); other types take no ports. Examples:
//! `100#10.0.1.0/24@2001:db8::1`, `200#10.0.2.0/24@2001:db8::2#nat#1024#2048`,
//! `100#10.0.3.0/24#2001:db8::3#LB`.

use std::fmt;
use std::net::IpAddr;

use metalbond_proto::api::{NextHop, Route, RouteType};

/// The largest VNI the API accepts (24 bits, as in VXLAN and Geneve).
pub const MAX_VNI: u32 = 0xff_ffff;

/// Why a ROUTE argument was rejected.
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

/// Parses one ROUTE argument into an API route (prefix and next hop as
/// normalised text, the type, and the NAT port range).
pub fn parse_route(s: &str) -> Result<Route, ParseRouteError> {
    parse(s).map_err(|reason| ParseRouteError {
        input: s.to_string(),
        reason,
    })
}

fn parse(s: &str) -> Result<Route, String> {
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
    let vni = parse_vni(parts[0])?;
    let prefix = parse_prefix(parts[1])?;
    let address = parse_addr(parts[2])
        .map_err(|_| format!("next hop {:?} is not an IP address", parts[2]))?;

    let mut kind = RouteType::Standard;
    let mut rest = &parts[3..];
    if let Some(first) = rest.first() {
        // In the Go form a number right after the next hop is a port (no TYPE given).
        if first.parse::<u32>().is_err() {
            kind = parse_type(first)?;
            rest = &rest[1..];
        }
    }
    let (from, to) = match (kind, rest) {
        (RouteType::Nat, [from, to]) => {
            let from = parse_port(from)?;
            let to = parse_port(to)?;
            if from > to {
                return Err(format!(
                    "NAT port range {from}-{to} is inverted (FROM > TO)"
                ));
            }
            (from, to)
        }
        (RouteType::Nat, []) => return Err("NAT needs a port range #FROM#TO".into()),
        (RouteType::Nat, [_]) => {
            return Err("NAT needs a port range #FROM#TO, got only FROM".into())
        }
        (RouteType::Nat, _) => return Err("too many fields after the NAT port range".into()),
        (_, []) => (0, 0),
        (_, _) => return Err("a port range is only valid for NAT".into()),
    };
    Ok(Route {
        vni,
        prefix,
        next_hop: Some(NextHop {
            address,
            r#type: kind as i32,
            nat_port_from: from,
            nat_port_to: to,
            target_vni: 0,
            wire_type: 0,
        }),
    })
}

fn parse_vni(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(v) if v <= MAX_VNI => Ok(v),
        _ => Err(format!("VNI {s:?} is not a number from 0 to {MAX_VNI}")),
    }
}

fn parse_port(s: &str) -> Result<u32, String> {
    s.parse::<u16>()
        .map(u32::from)
        .map_err(|_| format!("NAT port {s:?} is not a number from 0 to 65535"))
}

/// Parses a route type name: `std`, `nat` or `lb` (case-insensitive; the long
/// names `standard`, `loadbalancer` and `loadbalancer_target` are accepted too).
pub fn parse_type(s: &str) -> Result<RouteType, String> {
    match s.to_ascii_lowercase().as_str() {
        "std" | "standard" => Ok(RouteType::Standard),
        "nat" => Ok(RouteType::Nat),
        "lb" | "loadbalancer" | "loadbalancer_target" => Ok(RouteType::LoadbalancerTarget),
        _ => Err(format!("unknown type {s:?} (use std, nat or lb)")),
    }
}

/// Parses an IP address (an IPv6 address may be written in brackets) and
/// returns its canonical text form.
pub fn parse_addr(s: &str) -> Result<String, String> {
    let bare = s
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(s);
    bare.parse::<IpAddr>()
        .map(|a| a.to_string())
        .map_err(|_| format!("{s:?} is not an IP address"))
}

/// Parses `ADDR/LEN` and returns it in canonical text form (the address is
/// kept as written, host bits are not masked).
pub fn parse_prefix(s: &str) -> Result<String, String> {
    let (addr, len) = s
        .split_once('/')
        .ok_or_else(|| format!("prefix {s:?} has no /LENGTH"))?;
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("prefix {s:?}: {addr:?} is not an IP address"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("prefix {s:?}: length {len:?} is not a number"));
    }
    match len.parse::<u32>() {
        Ok(l) if l <= max => Ok(format!("{ip}/{l}")),
        _ => Err(format!("prefix {s:?}: length {len} exceeds {max} bits")),
    }
}

/// Short name of a route type as used on the command line and in output:
/// `std`, `nat`, `lb`, `other` or `unspecified`.
pub fn type_name(t: i32) -> &'static str {
    match RouteType::try_from(t) {
        Ok(RouteType::Standard) => "std",
        Ok(RouteType::Nat) => "nat",
        Ok(RouteType::LoadbalancerTarget) => "lb",
        Ok(RouteType::Other) => "other",
        Ok(RouteType::Unspecified) | Err(_) => "unspecified",
    }
}

/// The text form of a route (rustbond style), which `announce` accepts back:
/// `100#10.0.1.0/24@2001:db8::1`, `200#10.0.2.0/24@2001:db8::2#nat#1024#2048`.
/// A type unknown to the API is shown as `#other(N)` with its wire value.
pub fn format_route(r: &Route) -> String {
    let mut s = format!("{}#{}", r.vni, r.prefix);
    let Some(nh) = &r.next_hop else {
        s.push_str("@?");
        return s;
    };
    s.push('@');
    s.push_str(&nh.address);
    match RouteType::try_from(nh.r#type) {
        Ok(RouteType::Standard) | Ok(RouteType::Unspecified) => {}
        Ok(RouteType::Nat) => {
            s.push_str(&format!("#nat#{}#{}", nh.nat_port_from, nh.nat_port_to));
        }
        Ok(RouteType::LoadbalancerTarget) => s.push_str("#lb"),
        Ok(RouteType::Other) | Err(_) => s.push_str(&format!("#other({})", nh.wire_type)),
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(s: &str) -> Route {
        parse_route(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn nh(r: &Route) -> &NextHop {
        r.next_hop.as_ref().unwrap()
    }

    #[test]
    fn rustbond_form_standard() {
        let r = route("100#10.0.1.0/24@2001:db8::1");
        assert_eq!(r.vni, 100);
        assert_eq!(r.prefix, "10.0.1.0/24");
        assert_eq!(nh(&r).address, "2001:db8::1");
        assert_eq!(nh(&r).r#type, RouteType::Standard as i32);
        assert_eq!((nh(&r).nat_port_from, nh(&r).nat_port_to), (0, 0));
        assert_eq!(r, route("100#10.0.1.0/24@2001:db8::1#std"));
        assert_eq!(r, route("100#10.0.1.0/24@2001:db8::1#STANDARD"));
        assert_eq!(r, route("  100#10.0.1.0/24@2001:db8::1\n"));
    }

    #[test]
    fn go_form_equals_rustbond_form() {
        for (go, rb) in [
            ("100#10.0.1.0/24#2001:db8::1", "100#10.0.1.0/24@2001:db8::1"),
            (
                "100#10.0.1.0/24#2001:db8::1#STD",
                "100#10.0.1.0/24@2001:db8::1",
            ),
            (
                "200#10.0.2.0/24#2001:db8::2#NAT#1024#2048",
                "200#10.0.2.0/24@2001:db8::2#nat#1024#2048",
            ),
            (
                "100#10.0.3.0/24#2001:db8::3#Lb",
                "100#10.0.3.0/24@2001:db8::3#lb",
            ),
        ] {
            assert_eq!(route(go), route(rb), "{go}");
        }
    }

    #[test]
    fn nat_and_lb() {
        let nat = route("200#10.0.2.0/24@2001:db8::2#nat#1024#2048");
        assert_eq!(nh(&nat).r#type, RouteType::Nat as i32);
        assert_eq!((nh(&nat).nat_port_from, nh(&nat).nat_port_to), (1024, 2048));
        let full = route("1#10.0.0.1/32@::1#NaT#0#65535");
        assert_eq!((nh(&full).nat_port_from, nh(&full).nat_port_to), (0, 65535));
        let single = route("1#10.0.0.1/32@::1#nat#80#80");
        assert_eq!(
            (nh(&single).nat_port_from, nh(&single).nat_port_to),
            (80, 80)
        );

        let lb = route("100#10.0.3.0/24@2001:db8::3#lb");
        assert_eq!(nh(&lb).r#type, RouteType::LoadbalancerTarget as i32);
        assert_eq!(lb, route("100#10.0.3.0/24@2001:db8::3#LOADBALANCER_TARGET"));
        assert_eq!(lb, route("100#10.0.3.0/24@2001:db8::3#loadbalancer"));
    }

    #[test]
    fn addresses_are_normalised_and_not_masked() {
        let r = route("7#2001:DB8:42:0::5/48@2001:0DB8::4242");
        assert_eq!(r.prefix, "2001:db8:42::5/48");
        assert_eq!(nh(&r).address, "2001:db8::4242");
        let r = route("7#10.1.2.3/8@[2001:db8::1]");
        assert_eq!(r.prefix, "10.1.2.3/8");
        assert_eq!(nh(&r).address, "2001:db8::1");
        let r = route("0#0.0.0.0/0@10.0.0.1");
        assert_eq!((r.vni, r.prefix.as_str()), (0, "0.0.0.0/0"));
        let r = route("16777215#::/0@::1");
        assert_eq!(r.vni, MAX_VNI);
    }

    #[test]
    fn rejects_every_bad_input_with_a_reason() {
        for (s, why) in [
            ("", "empty"),
            ("   ", "empty"),
            ("x#10.0.0.0/8@::1", "VNI \"x\""),
            ("-1#10.0.0.0/8@::1", "VNI"),
            ("16777216#10.0.0.0/8@::1", "0 to 16777215"),
            ("4294967296#10.0.0.0/8@::1", "VNI"),
            ("1#10.0.0.0/33@::1", "exceeds 32 bits"),
            ("1#2001:db8::/129@::1", "exceeds 128 bits"),
            ("1#10.0.0.0/x@::1", "not a number"),
            ("1#10.0.0.0/@::1", "not a number"),
            ("1#10.0.0.0@::1", "no /LENGTH"),
            ("1#10.0.0.300/24@::1", "not an IP address"),
            ("1#10.0.0.0/8@nothost", "next hop \"nothost\" is not an IP"),
            ("1#10.0.0.0/8@", "next hop"),
            ("1#10.0.0.0/8@::1#nat", "port range"),
            ("1#10.0.0.0/8@::1#nat#10", "only FROM"),
            ("1#10.0.0.0/8@::1#nat#1#2#3", "too many"),
            ("1#10.0.0.0/8@::1#nat#20#10", "inverted"),
            ("1#10.0.0.0/8@::1#nat#1#70000", "0 to 65535"),
            ("1#10.0.0.0/8@::1#nat#-1#5", "0 to 65535"),
            ("1#10.0.0.0/8@::1#nat#a#b", "NAT port \"a\""),
            ("1#10.0.0.0/8@::1#std#1#2", "only valid for NAT"),
            ("1#10.0.0.0/8@::1#lb#1#2", "only valid for NAT"),
            ("1#10.0.0.0/8#::1#1#2", "only valid for NAT"),
            ("1#10.0.0.0/8@::1#weird", "unknown type \"weird\""),
            ("1#10.0.0.0/8", "missing"),
            ("1", "missing"),
            ("1@::1", "before '@'"),
            ("1#2#10.0.0.0/8@::1", "before '@'"),
            ("1#10.0.0.0/8@::1@::2", "more than one '@'"),
        ] {
            let err = parse_route(s).unwrap_err();
            assert_eq!(err.input, s);
            let text = err.to_string();
            assert!(text.contains(why), "{s:?}: {text}");
            assert!(!text.contains('\n'), "{s:?}: multi-line error");
            assert!(
                text.starts_with(&format!("invalid route {s:?}: ")),
                "{text}"
            );
        }
    }

    #[test]
    fn format_round_trips() {
        for s in [
            "100#10.0.1.0/24@2001:db8::1",
            "200#10.0.2.0/24@2001:db8::2#nat#1024#2048",
            "100#10.0.3.0/24@2001:db8::3#lb",
            "1#2001:db8::/64@2001:db8::9",
        ] {
            assert_eq!(format_route(&route(s)), s);
        }
        let mut other = route("1#10.0.0.0/8@::1");
        other.next_hop.as_mut().unwrap().r#type = RouteType::Other as i32;
        other.next_hop.as_mut().unwrap().wire_type = 7;
        assert_eq!(format_route(&other), "1#10.0.0.0/8@::1#other(7)");
    }

    #[test]
    fn type_names() {
        assert_eq!(type_name(RouteType::Standard as i32), "std");
        assert_eq!(type_name(RouteType::Nat as i32), "nat");
        assert_eq!(type_name(RouteType::LoadbalancerTarget as i32), "lb");
        assert_eq!(type_name(RouteType::Other as i32), "other");
        assert_eq!(type_name(0), "unspecified");
        assert_eq!(type_name(99), "unspecified");
        assert_eq!(parse_type("LB"), Ok(RouteType::LoadbalancerTarget));
        assert!(parse_type("x").is_err());
    }
}
