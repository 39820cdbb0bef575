//! Routes between the text format and the control API's `Route`.
//!
//! The grammar (PROTOCOL.md section 7) is `metalbond_types::text`, shared
//! with the daemon; here its results become API messages (prefix and next
//! hop as canonical text, the API's route type), with the API's 24-bit VNI
//! limit, and API routes are written back as text.

use metalbond_proto::api::{NextHop, Route, RouteType};
use metalbond_types::{text, NextHopType};

pub use metalbond_types::ParseRouteError;

/// The largest VNI the API accepts (24 bits, as in VXLAN and Geneve).
pub const MAX_VNI: u32 = 0xff_ffff;

/// Parses one ROUTE argument into an API route (prefix and next hop as
/// normalised text, the type, and the NAT port range).
pub fn parse_route(s: &str) -> Result<Route, ParseRouteError> {
    let r = text::parse_route(s, MAX_VNI)?;
    let kind = match r.next_hop.kind {
        NextHopType::NAT => RouteType::Nat,
        NextHopType::LOADBALANCER_TARGET => RouteType::LoadbalancerTarget,
        // The grammar knows only std, nat and lb.
        _ => RouteType::Standard,
    };
    Ok(Route {
        vni: r.vni.0,
        prefix: r.dest.to_string(),
        next_hop: Some(NextHop {
            address: r.next_hop.addr.to_string(),
            r#type: kind as i32,
            nat_port_from: r.next_hop.nat_from.into(),
            nat_port_to: r.next_hop.nat_to.into(),
            target_vni: 0,
            wire_type: 0,
        }),
    })
}

/// Parses an IP address (an IPv6 address may be written in brackets) and
/// returns its canonical text form.
pub fn parse_addr(s: &str) -> Result<String, String> {
    text::parse_address(s).map(|a| a.to_string())
}

/// Parses `ADDR/LEN` and returns it in canonical text form (the address is
/// kept as written, host bits are not masked). The error quotes the prefix.
pub fn parse_prefix(s: &str) -> Result<String, String> {
    text::parse_prefix(s)
        .map(|d| d.to_string())
        .map_err(|e| e.quoted().to_string())
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
    //! The grammar's own cases are in `metalbond_types::text`; these check
    //! what mbctl makes of it.

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
        assert_eq!(r, route("100#10.0.1.0/24#2001:db8::1#STD"));
    }

    #[test]
    fn nat_and_lb() {
        let nat = route("200#10.0.2.0/24@2001:db8::2#nat#1024#2048");
        assert_eq!(nh(&nat).r#type, RouteType::Nat as i32);
        assert_eq!((nh(&nat).nat_port_from, nh(&nat).nat_port_to), (1024, 2048));
        let full = route("1#10.0.0.1/32@::1#NaT#0#65535");
        assert_eq!((nh(&full).nat_port_from, nh(&full).nat_port_to), (0, 65535));
        let lb = route("100#10.0.3.0/24@2001:db8::3#lb");
        assert_eq!(nh(&lb).r#type, RouteType::LoadbalancerTarget as i32);
        assert_eq!((nh(&lb).nat_port_from, nh(&lb).nat_port_to), (0, 0));
    }

    #[test]
    fn addresses_are_normalised_and_not_masked() {
        let r = route("7#2001:DB8:42:0::5/48@2001:0DB8::4242");
        assert_eq!(r.prefix, "2001:db8:42::5/48");
        assert_eq!(nh(&r).address, "2001:db8::4242");
        let r = route("7#10.1.2.3/8@[2001:db8::1]");
        assert_eq!(r.prefix, "10.1.2.3/8");
        assert_eq!(nh(&r).address, "2001:db8::1");
        let r = route("16777215#::/0@::1");
        assert_eq!(r.vni, MAX_VNI);
        assert_eq!(parse_addr("[2001:DB8::1]").unwrap(), "2001:db8::1");
        assert_eq!(parse_prefix("10.0.1.0/024").unwrap(), "10.0.1.0/24");
    }

    #[test]
    fn api_limits_and_error_text() {
        let err = parse_route("16777216#10.0.0.0/8@::1").unwrap_err();
        assert_eq!(err.input, "16777216#10.0.0.0/8@::1");
        assert_eq!(
            err.to_string(),
            "invalid route \"16777216#10.0.0.0/8@::1\": VNI \"16777216\" is not a number \
             from 0 to 16777215 (expected VNI#PREFIX@NEXTHOP[#TYPE[#FROM#TO]], \
             e.g. 100#10.0.1.0/24@2001:db8::1)"
        );
        assert_eq!(
            parse_route("1#10.0.0.0/33@::1").unwrap_err().reason,
            "prefix \"10.0.0.0/33\": length 33 exceeds 32 bits"
        );
        assert_eq!(
            parse_prefix("10.0.0.0").unwrap_err(),
            "prefix \"10.0.0.0\" has no /LENGTH"
        );
        assert_eq!(
            parse_addr("host").unwrap_err(),
            "\"host\" is not an IP address"
        );
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
    }
}
