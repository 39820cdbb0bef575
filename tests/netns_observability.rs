//! The hypervisor role's metrics and status page end to end (issue 5): a
//! `metalbondd` server and client in a network namespace; the client's
//! Prometheus endpoint and `/routes.json`, scraped from inside the
//! namespace, follow its session, the received routes and the routes it
//! installed in the kernel.
//!
//! Needs root and `ip` (iproute2); skipped with a message otherwise, unless
//! `CI=true`. Every wait is bounded ([`WAIT`]).

mod common;

use std::net::SocketAddr;
use std::time::Instant;

use common::api::inject;
use common::http::{get, value, value_or_zero};
use common::netns::{run_in_netns, NetnsEnv, MAP_100, POLL, WAIT};

/// Scrapes `addr` inside the namespace until `check` holds (bounded);
/// returns the last scrape.
fn scrape_until(ns: &str, addr: SocketAddr, what: &'static str, check: fn(&str) -> bool) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    run_in_netns(ns, move || async move {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = get(addr, "/metrics").await.body;
            if check(&text) {
                tx.send(text).unwrap();
                return;
            }
            assert!(Instant::now() < deadline, "{what}; last scrape:\n{text}");
            tokio::time::sleep(POLL).await;
        }
    });
    rx.recv().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn client_metrics_follow_sessions_received_and_installed_routes() {
    let Some(env) =
        NetnsEnv::for_test("client_metrics_follow_sessions_received_and_installed_routes")
    else {
        return;
    };
    let server = env.server("s");
    inject(
        &env.sock("s"),
        &["100#10.0.1.0/24@2001:db8::1", "100#10.0.2.0/24@2001:db8::2"],
    )
    .await;
    let client = env.client(
        "c",
        &[server.addr],
        &[MAP_100, &["--http", "[::1]:0"]].concat(),
    );
    let addr = client.http_addr("serving HTTP").await;
    env.wait_table(
        100,
        &[
            ("10.0.1.0/24", &["2001:db8::1"]),
            ("10.0.2.0/24", &["2001:db8::2"]),
        ],
        &[],
    )
    .await;

    let text = scrape_until(&env.ns, addr, "both routes counted as installed", |t| {
        value_or_zero(t, "metalbondd_kernel_routes", &[("table", "100")]) == 2.0
    });
    let client_role = [("role", "client")];
    assert_eq!(
        value(
            &text,
            "metalbondd_sessions",
            &[("role", "client"), ("state", "established")]
        ),
        1.0
    );
    assert_eq!(value(&text, "metalbondd_route_servers", &[]), 1.0);
    // `metalbondd client` runs no route server: none of its families.
    let server_side: Vec<_> = common::http::samples(&text)
        .into_iter()
        .filter(|s| {
            s.labels.get("role").map(String::as_str) == Some("server")
                || s.name == "metalbondd_routes"
        })
        .collect();
    assert!(server_side.is_empty(), "{server_side:?}");
    assert_eq!(
        value(&text, "metalbondd_session_ups_total", &client_role),
        1.0
    );
    assert_eq!(
        value(&text, "metalbondd_updates_received_total", &client_role),
        2.0
    );
    assert!(value(&text, "metalbondd_received_bytes_total", &client_role) > 0.0);
    assert!(value(&text, "metalbondd_sent_bytes_total", &client_role) > 0.0);
    assert_eq!(value(&text, "metalbondd_received_routes", &[]), 2.0);
    assert_eq!(
        value(
            &text,
            "metalbondd_netlink_operations_total",
            &[("op", "replace")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &text,
            "metalbondd_netlink_errors_total",
            &[("op", "replace")]
        ),
        0.0
    );

    // The status page of the client shows what it received, in the Go shape.
    let (tx, rx) = std::sync::mpsc::channel();
    run_in_netns(&env.ns, move || async move {
        tx.send(get(addr, "/routes.json").await).unwrap();
    });
    let json = rx.recv().unwrap();
    assert_eq!(json.status, 200);
    let v: serde_json::Value = serde_json::from_str(&json.body).unwrap();
    assert_eq!(
        v["vnet"],
        serde_json::json!({"100": {
            r#"{"IPVersion":4,"Prefix":"10.0.1.0/24"}"#: [{
                "TargetAddress": "2001:db8::1", "TargetVNI": 0, "Type": 0,
                "NATPortRangeFrom": 0, "NATPortRangeTo": 0,
            }],
            r#"{"IPVersion":4,"Prefix":"10.0.2.0/24"}"#: [{
                "TargetAddress": "2001:db8::2", "TargetVNI": 0, "Type": 0,
                "NATPortRangeFrom": 0, "NATPortRangeTo": 0,
            }],
        }})
    );

    // The route server goes away: the session is down and its end counted;
    // the routes stay installed for the stale time.
    server.terminate(WAIT);
    let text = scrape_until(&env.ns, addr, "the session counted as down", |t| {
        value_or_zero(
            t,
            "metalbondd_sessions",
            &[("role", "client"), ("state", "down")],
        ) == 1.0
    });
    let downs = value_or_zero(
        &text,
        "metalbondd_session_downs_total",
        &[("role", "client")],
    );
    assert!(downs >= 1.0, "{text}");
    assert_eq!(
        value(&text, "metalbondd_kernel_routes", &[("table", "100")]),
        2.0,
        "routes stay for the stale time"
    );
    drop(client);
}
