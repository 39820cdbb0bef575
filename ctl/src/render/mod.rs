//! Table mode: the text of every command's answer, one module per family.
//! JSON mode needs nothing here: the documents of `model` are printed as
//! they are. Column headers and key lists come from `contract`.

pub mod client;
pub mod daemon;
pub mod events;
pub mod fleet;
pub mod peers;
pub mod policy;
pub mod routes;
pub mod table;
pub mod vnis;

use crate::model::{NextHopJson, RouteJson};

/// `word`, or `words` unless `n` is 1.
pub fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        word.to_string()
    } else {
        format!("{word}s")
    }
}

/// TYPE and PORTS cells of a next hop.
fn type_and_ports(nh: &NextHopJson) -> (String, String) {
    let kind = if nh.kind == "other" {
        format!("other({})", nh.wire_type)
    } else {
        nh.kind.to_string()
    };
    let ports = if nh.kind == "nat" {
        format!("{}-{}", nh.nat_port_from, nh.nat_port_to)
    } else {
        "-".into()
    };
    (kind, ports)
}

/// The VNI, PREFIX, NEXT HOP, TYPE and PORTS cells of a route, the first
/// columns of `mbctl routes` and `mbctl received`.
pub fn route_cells(route: &RouteJson) -> Vec<String> {
    let (kind, ports) = type_and_ports(&route.next_hop);
    vec![
        route.vni.to_string(),
        route.prefix.clone(),
        route.next_hop.address.clone(),
        kind,
        ports,
    ]
}
