//! The grammar's cases, from the daemon's and mbctl's former parsers.

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
    assert_eq!((r.next_hop.nat_from, r.next_hop.nat_to), (0, 0));
    assert_eq!(r, route("100#10.0.1.0/24#2001:db8::1"));
    assert_eq!(r, route("100#10.0.1.0/24@2001:db8::1#std"));
    assert_eq!(r, route("100#10.0.1.0/24@2001:db8::1#STANDARD"));
    assert_eq!(r, route("  100#10.0.1.0/24@2001:db8::1\n"));

    let nat = route("200#10.0.2.0/24@2001:db8::2#nat#1024#2048");
    assert_eq!(nat.next_hop.kind, NextHopType::NAT);
    assert_eq!((nat.next_hop.nat_from, nat.next_hop.nat_to), (1024, 2048));
    assert_eq!(nat, route("200#10.0.2.0/24#2001:db8::2#NAT#1024#2048"));
    let full = route("1#10.0.0.1/32@::1#NaT#0#65535");
    assert_eq!((full.next_hop.nat_from, full.next_hop.nat_to), (0, 65535));
    let single = route("1#10.0.0.1/32@::1#nat#80#80");
    assert_eq!((single.next_hop.nat_from, single.next_hop.nat_to), (80, 80));

    let lb = route("100#10.0.3.0/24@2001:db8::3#lb");
    assert_eq!(lb.next_hop.kind, NextHopType::LOADBALANCER_TARGET);
    assert_eq!(lb, route("100#10.0.3.0/24#2001:db8::3#LB"));
    assert_eq!(lb, route("100#10.0.3.0/24#2001:db8::3#Lb"));
    assert_eq!(lb, route("100#10.0.3.0/24@2001:db8::3#LOADBALANCER_TARGET"));
    assert_eq!(lb, route("100#10.0.3.0/24@2001:db8::3#loadbalancer"));

    let v6 = route("7#2001:db8:42::/48@2001:db8::4242");
    assert!(v6.dest.addr.is_ipv6());
}

#[test]
fn addresses_are_normalised_and_not_masked() {
    let r = route("7#2001:DB8:42:0::5/48@2001:0DB8::4242");
    assert_eq!(r.dest.to_string(), "2001:db8:42::5/48");
    assert_eq!(r.next_hop.addr.to_string(), "2001:db8::4242");
    let r = route("7#10.1.2.3/8@[2001:db8::1]");
    assert_eq!(r.dest.to_string(), "10.1.2.3/8");
    assert_eq!(r.next_hop.addr.to_string(), "2001:db8::1");
    let r = route("0#0.0.0.0/0@10.0.0.1");
    assert_eq!((r.vni, r.dest.to_string().as_str()), (Vni(0), "0.0.0.0/0"));
    assert_eq!(route("4294967295#::/0@::1").vni, Vni(u32::MAX));
    assert_eq!(
        parse_route("16777215#::/0@::1", 0xff_ffff).unwrap().vni,
        Vni(0xff_ffff)
    );
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
fn rejects_every_bad_input_with_a_reason() {
    const API: u32 = 0xff_ffff;
    for (s, max_vni, why) in [
        ("", API, "empty"),
        ("   ", API, "empty"),
        ("x#10.0.0.0/8@::1", u32::MAX, "VNI"),
        ("x#10.0.0.0/8@::1", API, "VNI \"x\""),
        ("-1#10.0.0.0/8@::1", API, "VNI"),
        ("16777216#10.0.0.0/8@::1", API, "0 to 16777215"),
        ("4294967296#10.0.0.0/8@::1", u32::MAX, "0 to 4294967295"),
        ("1#10.0.0.0/33@::1", API, "exceeds 32 bits"),
        ("1#2001:db8::/129@::1", API, "exceeds 128 bits"),
        ("1#10.0.0.0/x@::1", API, "not a number"),
        ("1#10.0.0.0/@::1", API, "not a number"),
        ("1#10.0.0.0/+8@::1", API, "not a number"),
        ("1#10.0.0.0@::1", API, "no /LENGTH"),
        ("1#10.0.0.300/24@::1", API, "not an IP address"),
        (
            "1#10.0.0.0/8@nothost",
            API,
            "next hop \"nothost\" is not an IP",
        ),
        ("1#10.0.0.0/8@", API, "next hop"),
        ("1#10.0.0.0/8@::1#nat", API, "port range"),
        ("1#10.0.0.0/8@::1#nat#10", API, "only FROM"),
        ("1#10.0.0.0/8@::1#nat#1#2#3", API, "too many"),
        ("1#10.0.0.0/8@::1#nat#20#10", API, "inverted"),
        ("1#10.0.0.0/8@::1#nat#1#70000", API, "0 to 65535"),
        ("1#10.0.0.0/8@::1#nat#-1#5", API, "0 to 65535"),
        ("1#10.0.0.0/8@::1#nat#a#b", API, "NAT port \"a\""),
        ("1#10.0.0.0/8@::1#std#1#2", API, "only valid for NAT"),
        ("1#10.0.0.0/8@::1#lb#1#2", API, "only valid for NAT"),
        ("1#10.0.0.0/8#::1#1#2", API, "only valid for NAT"),
        ("1#10.0.0.0/8@::1#weird", API, "unknown type \"weird\""),
        ("1#10.0.0.0/8", API, "missing"),
        ("1", API, "missing"),
        ("1@::1", API, "before '@'"),
        ("1#2#10.0.0.0/8@::1", API, "before '@'"),
        ("1#10.0.0.0/8@::1@::2", API, "more than one '@'"),
    ] {
        let err = parse_route(s, max_vni).unwrap_err();
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
fn prefix_errors_alone_and_quoted() {
    for (s, alone, quoted) in [
        (
            "10.0.0.0/33",
            "prefix length 33 exceeds 32 bits",
            "prefix \"10.0.0.0/33\": length 33 exceeds 32 bits",
        ),
        (
            "10.0.0.0/x",
            "prefix length \"x\" is not a number",
            "prefix \"10.0.0.0/x\": length \"x\" is not a number",
        ),
        (
            "host/8",
            "\"host\" is not an IP address",
            "prefix \"host/8\": \"host\" is not an IP address",
        ),
        (
            "10.0.0.0",
            "prefix \"10.0.0.0\" has no /LENGTH",
            "prefix \"10.0.0.0\" has no /LENGTH",
        ),
    ] {
        let e = parse_prefix(s).unwrap_err();
        assert_eq!(e.to_string(), alone);
        assert_eq!(e.quoted().to_string(), quoted);
    }
    let d = parse_prefix("10.1.2.3/8").unwrap();
    assert_eq!(d.to_string(), "10.1.2.3/8");
    assert_eq!(parse_prefix("::/0").unwrap().prefix_len, 0);
}

#[test]
fn types_and_addresses() {
    assert_eq!(parse_type("LB"), Ok(NextHopType::LOADBALANCER_TARGET));
    assert!(parse_type("x").is_err());
    assert_eq!(
        parse_address("[2001:DB8::1]").unwrap().to_string(),
        "2001:db8::1"
    );
    assert_eq!(
        parse_address("host").unwrap_err(),
        "\"host\" is not an IP address"
    );
}
