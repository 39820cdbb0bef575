//! Between API messages (`metalbond_proto::api`) and our wire types, with the
//! validation of everything an operator can send. Every error is
//! INVALID_ARGUMENT and starts with the offending field.

use std::net::IpAddr;
use std::str::FromStr;

use metalbond_proto::api as pb;
use tonic::Status;

use crate::table::SessionId;
use crate::table::{LOCAL_API, LOCAL_CONFIG};
use crate::wire::text::parse_prefix;
use crate::wire::{Address, Destination, Extensions, NextHop, NextHopType, Route, Vni};

/// Largest VNI the API accepts (24 bits, as VXLAN and Geneve).
pub const MAX_API_VNI: u32 = (1 << 24) - 1;

/// An INVALID_ARGUMENT naming `field`.
pub fn invalid(field: &str, why: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {why}"))
}

/// Checks a VNI given to the API.
pub fn vni_from_api(field: &str, vni: u32) -> Result<Vni, Status> {
    if vni > MAX_API_VNI {
        return Err(invalid(
            field,
            format!("{vni} is out of range 0..{MAX_API_VNI}"),
        ));
    }
    Ok(Vni(vni))
}

/// Parses `ADDR/LEN`.
pub fn prefix_from_api(field: &str, prefix: &str) -> Result<Destination, Status> {
    if prefix.is_empty() {
        return Err(invalid(field, "required (e.g. 10.0.1.0/24)"));
    }
    parse_prefix(prefix).map_err(|why| invalid(field, why))
}

/// Parses an IP address.
pub fn address_from_api(field: &str, address: &str) -> Result<Address, Status> {
    if address.is_empty() {
        return Err(invalid(field, "required (e.g. 2001:db8::1)"));
    }
    IpAddr::from_str(address)
        .map(Address::from)
        .map_err(|_| invalid(field, format!("{address:?} is not an IP address")))
}

/// The route type filter of a listing (`None` for unspecified).
pub fn kind_from_api(
    field: &str,
    kind: i32,
    wire_type: i32,
) -> Result<Option<NextHopType>, Status> {
    let kind = pb::RouteType::try_from(kind)
        .map_err(|_| invalid(field, format!("unknown route type {kind}")))?;
    Ok(match kind {
        pb::RouteType::Unspecified => None,
        pb::RouteType::Standard => Some(NextHopType::STANDARD),
        pb::RouteType::Nat => Some(NextHopType::NAT),
        pb::RouteType::LoadbalancerTarget => Some(NextHopType::LOADBALANCER_TARGET),
        pb::RouteType::Other => Some(NextHopType(wire_type)),
    })
}

/// Validates and converts one route; `field` names it in errors (`routes[3]`).
pub fn route_from_api(field: &str, route: &pb::Route) -> Result<Route, Status> {
    let vni = vni_from_api(&format!("{field}.vni"), route.vni)?;
    let dest = prefix_from_api(&format!("{field}.prefix"), &route.prefix)?;
    let hop = route
        .next_hop
        .as_ref()
        .ok_or_else(|| invalid(&format!("{field}.next_hop"), "required"))?;
    let hop_field = format!("{field}.next_hop");
    let addr = address_from_api(&format!("{hop_field}.address"), &hop.address)?;
    let kind = kind_from_api(&format!("{hop_field}.type"), hop.r#type, hop.wire_type)?
        .unwrap_or(NextHopType::STANDARD);
    let port = |name: &str, p: u32| {
        u16::try_from(p).map_err(|_| {
            invalid(
                &format!("{hop_field}.{name}"),
                format!("{p} is above 65535"),
            )
        })
    };
    let (nat_from, nat_to) = (
        port("nat_port_from", hop.nat_port_from)?,
        port("nat_port_to", hop.nat_port_to)?,
    );
    if kind == NextHopType::NAT {
        if nat_from == 0 && nat_to == 0 {
            return Err(invalid(
                &format!("{hop_field}.nat_port_from"),
                "a NAT route needs a port range (nat_port_from..nat_port_to)",
            ));
        }
        if nat_from > nat_to {
            return Err(invalid(
                &format!("{hop_field}.nat_port_from"),
                format!("port range {nat_from}-{nat_to} is inverted"),
            ));
        }
    } else if nat_from != 0 || nat_to != 0 {
        return Err(invalid(
            &format!("{hop_field}.nat_port_from"),
            "a port range is only valid for NAT routes",
        ));
    }
    Ok(Route {
        vni,
        dest,
        next_hop: NextHop {
            addr,
            target_vni: hop.target_vni,
            kind,
            nat_from,
            nat_to,
        },
    })
}

/// Validates a list of routes (`routes[i]` in errors); at least one.
pub fn routes_from_api(routes: &[pb::Route]) -> Result<Vec<Route>, Status> {
    if routes.is_empty() {
        return Err(invalid("routes", "at least one route is required"));
    }
    routes
        .iter()
        .enumerate()
        .map(|(i, r)| route_from_api(&format!("routes[{i}]"), r))
        .collect()
}

/// The API form of a next-hop type.
pub fn kind_to_api(kind: NextHopType) -> pb::RouteType {
    match kind {
        NextHopType::STANDARD => pb::RouteType::Standard,
        NextHopType::NAT => pb::RouteType::Nat,
        NextHopType::LOADBALANCER_TARGET => pb::RouteType::LoadbalancerTarget,
        _ => pb::RouteType::Other,
    }
}

/// The API form of a route.
pub fn route_to_api(route: &Route) -> pb::Route {
    let hop = &route.next_hop;
    pb::Route {
        vni: route.vni.0,
        prefix: route.dest.to_string(),
        next_hop: Some(pb::NextHop {
            address: hop.addr.to_string(),
            r#type: kind_to_api(hop.kind) as i32,
            nat_port_from: u32::from(hop.nat_from),
            nat_port_to: u32::from(hop.nat_to),
            target_vni: hop.target_vni,
            wire_type: hop.kind.0,
        }),
    }
}

/// The API form of an announcer; `remote` resolves a session id to its address.
pub fn announcer_to_api(id: SessionId, remote: impl Fn(SessionId) -> String) -> pb::Announcer {
    use pb::announcer::Kind;
    let kind = match id {
        LOCAL_API => Kind::Api(true),
        LOCAL_CONFIG => Kind::Config(true),
        _ => Kind::Peer(pb::PeerRef {
            session_id: u64::from(id),
            remote_address: remote(id),
        }),
    };
    pb::Announcer { kind: Some(kind) }
}

/// A `SystemTime` as a protobuf timestamp.
pub fn timestamp(t: std::time::SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// A `Duration` as a protobuf duration.
pub fn duration(d: std::time::Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// The API form of a negotiated extension set: its names.
pub fn extension_names(extensions: Extensions) -> Vec<String> {
    extensions.names().into_iter().map(str::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn api_route(
        vni: u32,
        prefix: &str,
        addr: &str,
        kind: pb::RouteType,
        ports: (u32, u32),
    ) -> pb::Route {
        pb::Route {
            vni,
            prefix: prefix.into(),
            next_hop: Some(pb::NextHop {
                address: addr.into(),
                r#type: kind as i32,
                nat_port_from: ports.0,
                nat_port_to: ports.1,
                target_vni: 0,
                wire_type: 0,
            }),
        }
    }

    #[test]
    fn valid_routes_round_trip() {
        for (r, text) in [
            (
                api_route(
                    100,
                    "10.0.1.0/24",
                    "2001:db8::1",
                    pb::RouteType::Unspecified,
                    (0, 0),
                ),
                "100#10.0.1.0/24@2001:db8::1",
            ),
            (
                api_route(
                    100,
                    "10.0.1.0/24",
                    "2001:db8::1",
                    pb::RouteType::Standard,
                    (0, 0),
                ),
                "100#10.0.1.0/24@2001:db8::1",
            ),
            (
                api_route(
                    200,
                    "2001:db8:2::/48",
                    "2001:db8::2",
                    pb::RouteType::Nat,
                    (1024, 2048),
                ),
                "200#2001:db8:2::/48@2001:db8::2#nat#1024#2048",
            ),
            (
                api_route(
                    7,
                    "10.0.3.7/24",
                    "2001:db8::3",
                    pb::RouteType::LoadbalancerTarget,
                    (0, 0),
                ),
                "7#10.0.3.7/24@2001:db8::3#lb",
            ),
        ] {
            let route = route_from_api("route", &r).unwrap();
            assert_eq!(route.to_string(), text);
            let back = route_to_api(&route);
            assert_eq!(route_from_api("route", &back).unwrap(), route);
        }
    }

    #[test]
    fn bad_routes_name_the_field() {
        for (r, field) in [
            (
                api_route(
                    1 << 24,
                    "10.0.0.0/8",
                    "::1",
                    pb::RouteType::Standard,
                    (0, 0),
                ),
                "routes[0].vni",
            ),
            (
                api_route(1, "10.0.0.0/33", "::1", pb::RouteType::Standard, (0, 0)),
                "routes[0].prefix",
            ),
            (
                api_route(1, "nonsense", "::1", pb::RouteType::Standard, (0, 0)),
                "routes[0].prefix",
            ),
            (
                api_route(1, "", "::1", pb::RouteType::Standard, (0, 0)),
                "routes[0].prefix",
            ),
            (
                api_route(1, "10.0.0.0/8", "host", pb::RouteType::Standard, (0, 0)),
                "routes[0].next_hop.address",
            ),
            (
                api_route(1, "10.0.0.0/8", "::1", pb::RouteType::Nat, (0, 0)),
                "routes[0].next_hop.nat_port_from",
            ),
            (
                api_route(1, "10.0.0.0/8", "::1", pb::RouteType::Nat, (20, 10)),
                "routes[0].next_hop.nat_port_from",
            ),
            (
                api_route(1, "10.0.0.0/8", "::1", pb::RouteType::Nat, (1, 70000)),
                "routes[0].next_hop.nat_port_to",
            ),
            (
                api_route(1, "10.0.0.0/8", "::1", pb::RouteType::Standard, (1, 2)),
                "routes[0].next_hop.nat_port_from",
            ),
        ] {
            let err = routes_from_api(&[r]).unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument);
            assert!(
                err.message().starts_with(field),
                "{field}: {}",
                err.message()
            );
        }
        let mut no_hop = api_route(1, "10.0.0.0/8", "::1", pb::RouteType::Standard, (0, 0));
        no_hop.next_hop = None;
        assert!(routes_from_api(&[no_hop])
            .unwrap_err()
            .message()
            .starts_with("routes[0].next_hop"));
        assert!(routes_from_api(&[])
            .unwrap_err()
            .message()
            .starts_with("routes"));
    }
}
