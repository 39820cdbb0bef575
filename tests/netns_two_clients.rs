//! The main hypervisor scenario: in one network namespace, a
//! `metalbondd server` and several `metalbondd client` processes, each with
//! its own routing table and tunnel device (a veth each), announcing routes
//! to each other through the server (`--announce`).
//!
//! Needs root and `ip` (iproute2); skipped with a message otherwise, unless
//! `CI=true` (see `tests/common/netns.rs`). Tables are polled with a
//! deadline; every process is killed by its PID on drop; the namespace is
//! deleted by a guard.

mod common;

use common::netns::{expected, table, wait_table, NetnsEnv, Want};
use common::QUIET;

/// Client A: VNI 100 -> table 100 via mbt0; STD, NAT and LB routes for
/// IPv4 and IPv6, and one side of two ECMP destinations.
const A_ANNOUNCE: &[&str] = &[
    "100#10.1.1.0/24@2001:db8::a1",
    "100#10.1.2.0/24@2001:db8::a2#nat#1024#2047",
    "100#10.1.3.0/24@2001:db8::a3#lb",
    "100#2001:db8:a1::/64@2001:db8::a1",
    "100#2001:db8:a2::/64@2001:db8::a2#nat#0#1023",
    "100#2001:db8:a3::/64@2001:db8::a3#lb",
    // ECMP with B; A's next hop sorts after B's although A announces first.
    "100#10.7.0.0/16@2001:db8::e2",
    "100#2001:db8:77::/64@2001:db8::e2",
];

/// Client B: VNI 100 -> table 200 via mbt2; one route of its own and the
/// other side of the ECMP destinations.
const B_ANNOUNCE: &[&str] = &[
    "100#10.2.1.0/24@2001:db8::b1",
    "100#10.7.0.0/16@2001:db8::e1",
    "100#2001:db8:77::/64@2001:db8::e1",
];

/// A's routes as installed elsewhere (without the ECMP destinations).
const A_V4: Want = &[
    ("10.1.1.0/24", &["2001:db8::a1"]),
    ("10.1.2.0/24", &["2001:db8::a2"]),
    ("10.1.3.0/24", &["2001:db8::a3"]),
];
const A_V6: Want = &[
    ("2001:db8:a1::/64", &["2001:db8::a1"]),
    ("2001:db8:a2::/64", &["2001:db8::a2"]),
    ("2001:db8:a3::/64", &["2001:db8::a3"]),
];

fn args<'a>(table_map: &'a str, tun: &'a str, announce: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "--subscribe",
        "100",
        "--install-routes",
        table_map,
        "--tun",
        tun,
    ];
    for a in announce {
        v.extend(["--announce", a]);
    }
    v
}

fn concat<'a>(a: Want<'a>, b: Want<'a>) -> Vec<(&'a str, &'a [&'a str])> {
    a.iter().chain(b).copied().collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_clients_exchange_routes_ecmp_and_withdraw_on_disconnect() {
    let Some(env) = NetnsEnv::for_test_with(
        "two_clients_exchange_routes_ecmp_and_withdraw_on_disconnect",
        &[("mbt0", "mbt1"), ("mbt2", "mbt3")],
    ) else {
        return;
    };
    let server = env.server("s");
    let servers = [server.addr.to_string()];
    let client_a = env.client("a", &servers, &args("100#100", "mbt0", A_ANNOUNCE));
    let _client_b = env.client("b", &servers, &args("100#200", "mbt2", B_ANNOUNCE));
    // C announces nothing: it sees both sides of the ECMP destinations.
    let _client_c = env.client("c", &servers, &args("100#300", "mbt0", &[]));

    // B's table: A's routes with A's exact encap destinations, never B's own
    // destinations (10.2.1.0/24 and the ECMP ones, which A also announces).
    wait_table(&env.ns, 200, "mbt2", A_V4, A_V6).await;
    // A's table: B's one route, not A's own (nor the shared ECMP destinations).
    wait_table(
        &env.ns,
        100,
        "mbt0",
        &[("10.2.1.0/24", &["2001:db8::b1"])],
        &[],
    )
    .await;
    // C's table: everything, ECMP as a two-hop multipath route sorted by address.
    let mut c_v4 = concat(A_V4, &[("10.2.1.0/24", &["2001:db8::b1"])]);
    c_v4.push(("10.7.0.0/16", &["2001:db8::e1", "2001:db8::e2"]));
    let mut c_v6 = A_V6.to_vec();
    c_v6.push(("2001:db8:77::/64", &["2001:db8::e1", "2001:db8::e2"]));
    wait_table(&env.ns, 300, "mbt0", &c_v4, &c_v6).await;

    // Loop prevention holds over time, not only at the first look.
    tokio::time::sleep(QUIET).await;
    assert_eq!(table(&env.ns, false, 200, "mbt2"), Ok(expected(A_V4)));
    assert_eq!(table(&env.ns, true, 200, "mbt2"), Ok(expected(A_V6)));
    assert_eq!(
        table(&env.ns, false, 100, "mbt0"),
        Ok(expected(&[("10.2.1.0/24", &["2001:db8::b1"])]))
    );
    assert_eq!(table(&env.ns, true, 100, "mbt0"), Ok(expected(&[])));

    // Kill A: once the server notices the disconnect it withdraws A's routes,
    // and B and C delete them; C's ECMP routes shrink to B's single next hop.
    client_a.kill_hard();
    wait_table(&env.ns, 200, "mbt2", &[], &[]).await;
    wait_table(
        &env.ns,
        300,
        "mbt0",
        &[
            ("10.2.1.0/24", &["2001:db8::b1"]),
            ("10.7.0.0/16", &["2001:db8::e1"]),
        ],
        &[("2001:db8:77::/64", &["2001:db8::e1"])],
    )
    .await;
    assert!(
        server.logs().contains("session closed"),
        "the server did not log the closed session of client A; log:\n{}",
        server.logs()
    );
}
