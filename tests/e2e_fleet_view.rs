//! The fleet view without a shared registry (issue 14, ADR 0030), against
//! two real route servers: `mbctl fleet --server A --server B` compares the
//! servers' own records, `mbctl diff --vni V A B` lists the differing
//! routes, GetFleet and the metrics show the digests.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use ::mbctl::contract::{columns, fields, sorted};
use common::api::{self, Api};
use common::http::{get, samples, value};
use common::mbctl::run_args;
use common::*;
use metalbond_proto::api as pb;
use serde_json::Value;

const T: Duration = Duration::from_secs(10);

/// The `endpoints` field of the `serving HTTP` line of a `--metrics` listener.
const METRICS_ONLY: &str = "endpoints=\"/metrics";
/// ... and of a `--http` listener.
const STATUS_PAGE: &str = "endpoints=\"/ /routes.json";

/// The routes both servers get, in VNIs 100 and 200.
const SHARED: [&str; 4] = [
    "100#10.0.1.0/24@2001:db8::1",
    "100#10.0.2.0/24@2001:db8::2",
    "100#10.0.3.0/24@2001:db8::3#nat#1024#2047",
    "200#10.1.0.0/16@2001:db8::9",
];

/// The route only server A gets.
const EXTRA: &str = "100#10.9.9.0/24@2001:db8::7";

/// Waits (bounded) until the server at `api` has `routes` routes in `vni`;
/// returns its `Vni` then.
async fn wait_for_routes(api: &mut Api, vni: u32, routes: u64) -> pb::Vni {
    let deadline = Instant::now() + T;
    loop {
        let got = api.vnis.get_vni(pb::GetVniRequest { vni }).await;
        if let Ok(v) = &got {
            if v.get_ref().routes == routes {
                return v.get_ref().clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "VNI {vni} never reached {routes} routes: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The sorted keys of a JSON object.
fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().expect("an object").keys().cloned().collect();
    k.sort();
    k
}

fn sock(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `mbctl GLOBAL... fleet --server A --server B`.
async fn fleet_of(global: &[&str], a: &Path, b: &Path) -> common::mbctl::Out {
    let mut args = global.to_vec();
    args.extend(["fleet", "--server", sock(a), "--server", sock(b)]);
    run_args(&args).await
}

#[tokio::test]
async fn two_servers_agree_then_disagree_on_one_vni() {
    let a = Daemon::start(&[
        "--name",
        "rs-a",
        "--metrics",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
    ]);
    // B keeps the default name: the host name and its listen port.
    let b = Daemon::start(&[]);
    let (sa, sb) = (a.api_socket(), b.api_socket());
    let b_name_suffix = format!(":{}", b.addr.port());

    // One peer per server announces the same routes, in opposite orders.
    let mut pa = RawPeer::established(a.addr).await;
    let mut pb_ = RawPeer::established(b.addr).await;
    for r in SHARED {
        pa.announce(route(r)).await;
    }
    for r in SHARED.iter().rev() {
        pb_.announce(route(r)).await;
    }
    let (mut api_a, mut api_b) = (api::connect(&sa).await, api::connect(&sb).await);
    let va = wait_for_routes(&mut api_a, 100, 3).await;
    let vb = wait_for_routes(&mut api_b, 100, 3).await;
    wait_for_routes(&mut api_a, 200, 1).await;
    wait_for_routes(&mut api_b, 200, 1).await;
    assert_eq!(va.digest, vb.digest, "equal routes, equal digests");

    // `mbctl fleet --server A --server B`: no disagreement, equal digests.
    let out = fleet_of(&["-o", "json"], &sa, &sb).await;
    let doc = out.json();
    assert_eq!(keys(&doc), sorted(fields::FLEET), "{doc}");
    assert_eq!(doc["source"], "servers");
    assert_eq!(doc["disagreeing_vnis"], serde_json::json!([]), "{doc}");
    let members = doc["members"].as_array().unwrap();
    assert_eq!(members.len(), 2);
    assert_eq!(keys(&members[0]), sorted(fields::FLEET_MEMBER));
    assert_eq!(members[0]["name"], "rs-a");
    let b_name = members[1]["name"].as_str().unwrap().to_string();
    assert!(b_name.ends_with(&b_name_suffix), "{b_name}");
    assert_eq!(members[0]["vnis"], members[1]["vnis"], "{doc}");
    assert_eq!(members[0]["vnis"][0]["digest"], va.digest.as_str());
    assert_eq!(members[0]["routes"], 4);
    assert_eq!(
        members[0]["api_addresses"][0].as_str(),
        Some(sock(&sa)),
        "{doc}"
    );
    // Table mode.
    let text = fleet_of(&[], &sa, &sb).await;
    let text = text.ok();
    let header: Vec<&str> = text.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, columns::FLEET_MEMBERS, "{text}");
    assert!(
        text.contains("VNIs where members disagree: none (2 members, source servers)"),
        "{text}"
    );
    // Equal VNIs: diff says so, exit 0.
    let out = run_args(&["diff", "--vni", "100", sock(&sa), sock(&sb)]).await;
    assert!(out.ok().ends_with("no difference\n"), "{out:?}");

    // A route announced to A only.
    pa.announce(route(EXTRA)).await;
    let va = wait_for_routes(&mut api_a, 100, 4).await;
    assert_ne!(va.digest, vb.digest);

    let out = fleet_of(&["-o", "json"], &sa, &sb).await;
    let doc = out.json();
    let dis = doc["disagreeing_vnis"].as_array().unwrap();
    assert_eq!(dis.len(), 1, "only VNI 100 differs: {doc}");
    assert_eq!(keys(&dis[0]), sorted(fields::FLEET_DISAGREEMENT));
    assert_eq!(dis[0]["vni"], 100);
    assert_eq!(
        keys(&dis[0]["members"][0]),
        sorted(fields::FLEET_MEMBER_DIGEST)
    );
    assert_eq!(
        dis[0]["members"],
        serde_json::json!([
            {"member": "rs-a", "routes": 4, "digest": va.digest},
            {"member": b_name, "routes": 3, "digest": vb.digest},
        ])
    );
    // Compared once by mbctl: no history, so the age is unknown (null).
    assert_eq!(dis[0]["disagreeing_for_ms"], serde_json::Value::Null);
    assert_eq!(dis[0]["settled"], serde_json::Value::Null);
    let text = fleet_of(&[], &sa, &sb).await;
    let text = text.ok();
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("VNIs where members disagree: 1 (compared once by mbctl"))
        .unwrap_or_else(|| panic!("{text}"));
    let header: Vec<&str> = lines[at + 1].split_whitespace().collect();
    assert_eq!(header, columns::FLEET_DISAGREEMENTS, "{text}");
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["100", "-", "rs-a", "4", &va.digest]),
        "{text}"
    );

    // The GetFleet API of each server: itself (source "self"), its own
    // digests; compared, they name VNI 100.
    let fa = api_a
        .fleet
        .get_fleet(pb::GetFleetRequest {})
        .await
        .unwrap()
        .into_inner();
    let fb = api_b
        .fleet
        .get_fleet(pb::GetFleetRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fa.source, "self");
    assert_eq!(fa.members.len(), 1);
    assert!(fa.members[0].local && fa.members[0].name == "rs-a");
    assert!(fa.disagreeing_vnis.is_empty(), "one member never disagrees");
    let digests = |f: &pb::Fleet| metalbond_types::fleet::MemberDigests {
        name: f.members[0].name.clone(),
        vnis: f.members[0]
            .vnis
            .iter()
            .map(|v| {
                let digest = metalbond_types::fleet::parse_digest_hex(&v.digest).unwrap();
                (
                    v.vni,
                    metalbond_types::fleet::VniDigest {
                        routes: v.routes,
                        digest,
                    },
                )
            })
            .collect(),
    };
    let dis = metalbond_types::fleet::disagreeing_vnis(&[digests(&fa), digests(&fb)]);
    assert_eq!(dis.iter().map(|d| d.vni).collect::<Vec<_>>(), vec![100]);
    let v100 = fa.members[0].vnis.iter().find(|v| v.vni == 100).unwrap();
    assert_eq!((v100.routes, v100.digest.as_str()), (4, va.digest.as_str()));

    // `mbctl diff`: exactly the extra route, on A; exit 1.
    let out = run_args(&["-o", "json", "diff", "--vni", "100", sock(&sa), sock(&sb)]).await;
    assert_eq!(out.code, Some(1), "{out:?}");
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(keys(&doc), sorted(fields::DIFF));
    assert_eq!(doc["equal"], false);
    assert_eq!(doc["only_b"], serde_json::json!([]));
    let only_a = doc["only_a"].as_array().unwrap();
    assert_eq!(only_a.len(), 1, "{doc}");
    assert_eq!(only_a[0]["prefix"], "10.9.9.0/24");
    assert_eq!(only_a[0]["next_hop"]["address"], "2001:db8::7");
    assert_eq!(
        (doc["a"]["routes"].as_u64(), doc["b"]["routes"].as_u64()),
        (Some(4), Some(3))
    );
    // Table mode, A named by its member name (resolved through A's GetFleet).
    let out = run_args(&[
        "--socket",
        sock(&sa),
        "diff",
        "--vni",
        "100",
        "rs-a",
        sock(&sb),
    ])
    .await;
    assert_eq!(out.code, Some(1), "{out:?}");
    let rows: Vec<&str> = out.stdout.lines().skip(3).collect();
    assert_eq!(
        rows.iter()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .collect::<Vec<_>>(),
        vec![vec!["A", "100", "10.9.9.0/24", "2001:db8::7", "std", "-"]],
        "{out:?}"
    );
    assert!(
        out.stdout
            .contains(&format!("A: rs-a at {}: 4 routes in VNI 100", sock(&sa))),
        "{out:?}"
    );
    // The VNI they agree on.
    let out = run_args(&["diff", "--vni", "200", sock(&sa), sock(&sb)]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    // A member name nobody knows: a usage error naming the known ones.
    let out = run_args(&[
        "--socket",
        sock(&sa),
        "diff",
        "--vni",
        "100",
        "nobody",
        sock(&sb),
    ])
    .await;
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr.contains("\"nobody\"") && out.stderr.contains("rs-a"),
        "{out:?}"
    );

    // The metrics: the digest of each VNI as a label, the fleet gauges.
    let maddr = a.http_addr(METRICS_ONLY).await;
    let text = get(maddr, "/metrics").await.body;
    assert_eq!(
        value(
            &text,
            "metalbondd_vni_digest_info",
            &[("vni", "100"), ("digest", &va.digest)]
        ),
        1.0
    );
    let digest_series: Vec<_> = samples(&text)
        .into_iter()
        .filter(|s| s.name == "metalbondd_vni_digest_info")
        .map(|s| s.labels["vni"].clone())
        .collect();
    assert_eq!(
        digest_series,
        ["100", "200"],
        "one series per VNI with routes"
    );
    assert_eq!(value(&text, "metalbondd_fleet_members", &[]), 1.0);
    assert_eq!(value(&text, "metalbondd_fleet_disagreeing_vnis", &[]), 0.0);
    assert_eq!(value(&text, "metalbondd_fleet_settling_vnis", &[]), 0.0);

    // The status page: the digests in their own section.
    let page = get(a.http_addr(STATUS_PAGE).await, "/").await.body;
    assert!(
        page.contains(&format!(
            "<tr><td>100</td><td>4</td><td><code>{}</code></td></tr>",
            va.digest
        )),
        "{page}"
    );
    assert!(
        page.contains("<h2 id=\"fleet\">Fleet (1 members, source self)</h2>"),
        "{page}"
    );

    // A withdrawal on A brings the servers back into agreement.
    pa.withdraw(route(EXTRA)).await;
    wait_for_routes(&mut api_a, 100, 3).await;
    let out = fleet_of(&["-o", "json"], &sa, &sb).await;
    assert_eq!(out.json()["disagreeing_vnis"], serde_json::json!([]));
}

/// Two servers with the same name cannot be told apart: `--server` says so
/// instead of comparing them.
#[tokio::test]
async fn servers_with_one_name_are_refused() {
    let a = Daemon::start(&["--name", "twin"]);
    let b = Daemon::start(&["--name", "twin"]);
    let out = run_args(&[
        "fleet",
        "--server",
        sock(&a.api_socket()),
        "--server",
        sock(&b.api_socket()),
    ])
    .await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("both named \"twin\""), "{out:?}");
    // An empty --name is refused at start.
    let (code, _, err) = run_to_exit(&["server", "--name", " ", "--listen", "[::1]:0"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("the name is empty"), "{err}");
}

/// Across hosts: a read-only TCP API listener serves GetFleet and
/// ListRoutes, so `mbctl fleet --server tcp://...` and `mbctl diff` work
/// without the Unix socket; the member record lists that listener.
#[tokio::test]
async fn fleet_and_diff_over_a_read_only_tcp_listener() {
    let (a, port) = api::start_with_tcp_api("tcp_read_only = true\n").await;
    let b = Daemon::start(&[]);
    let tcp = format!("tcp://127.0.0.1:{port}");
    let mut peer = RawPeer::established(a.addr).await;
    peer.announce(route(EXTRA)).await;
    wait_for_routes(&mut api::connect(&a.api_socket()).await, 100, 1).await;

    let out = run_args(&[
        "-o",
        "json",
        "fleet",
        "--server",
        &tcp,
        "--server",
        sock(&b.api_socket()),
    ])
    .await;
    let doc = out.json();
    let addrs = doc["members"][0]["api_addresses"].as_array().unwrap();
    assert!(
        addrs.iter().any(|a| a == &Value::from(tcp.clone())),
        "{doc}"
    );
    assert_eq!(doc["disagreeing_vnis"][0]["vni"], 100, "{doc}");

    let out = run_args(&[
        "-o",
        "json",
        "diff",
        "--vni",
        "100",
        &tcp,
        sock(&b.api_socket()),
    ])
    .await;
    assert_eq!(out.code, Some(1), "{out:?}");
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc["a"]["address"], tcp.as_str());
    assert_eq!(doc["only_a"][0]["prefix"], "10.9.9.0/24", "{doc}");
    // `--socket tcp://...` for any read-only command; changes are refused.
    let out = run_args(&["--socket", &tcp, "-o", "json", "fleet"]).await;
    assert_eq!(out.json()["members"][0]["routes"], 1);
    let out = run_args(&["--socket", &tcp, "announce", "7#10.0.0.0/8@2001:db8::1"]).await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.to_lowercase().contains("read-only"), "{out:?}");
    // Nothing listens there: exit 3, the address named.
    let out = run_args(&[
        "fleet",
        "--server",
        &format!("tcp://127.0.0.1:{}", free_port()),
    ])
    .await;
    assert_eq!(out.code, Some(3), "{out:?}");
    assert!(out.stderr.contains("tcp://127.0.0.1:"), "{out:?}");
}
