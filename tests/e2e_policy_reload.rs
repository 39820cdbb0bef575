//! A reload that changes the peer policy re-applies it to live sessions
//! (docs/POLICY.md "Reload", ADR 0028), with the real binary: peers told
//! apart by their loopback source address; what the new class refuses is
//! withdrawn from every subscriber, exactly and only that; sessions stay up.

mod common;

use std::net::{IpAddr, SocketAddr};

use std::process::{Command, Stdio};

use ::mbctl::contract::{columns, fields, sorted};
use common::api::connect;
use common::http::{get, value};
use common::mbctl::{mbctl_bin, run, Out};
use common::*;
use metalbond_proto::api as pb;
use serde_json::Value;

/// hv (127.0.0.1) may do a lot before the reload; other (127.0.0.2) has a
/// class of its own the reload leaves alone; everybody else (::1) is open.
const BEFORE: &str = r#"
[[policy.class]]
name = "hv"
match = ["127.0.0.1/32"]
subscribe_vnis = [100, 200]
announce_vnis = ["100-299"]

[[policy.class]]
name = "other"
match = ["127.0.0.2/32"]
announce_vnis = [300]
subscribe_vnis = [300]
"#;

/// hv narrowed: VNI 100 only, its own next hop only.
const AFTER: &str = r#"
[[policy.class]]
name = "hv"
match = ["127.0.0.1/32"]
subscribe_vnis = [100]
announce_vnis = [100]
next_hop = "self"

[[policy.class]]
name = "other"
match = ["127.0.0.2/32"]
announce_vnis = [300]
subscribe_vnis = [300]
"#;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The daemon with `config` written to a file, listening on [::1] and
/// 127.0.0.1; returns it, the IPv4 listener and the file.
async fn start(config: &str) -> (Daemon, SocketAddr, std::path::PathBuf) {
    Daemon::start_with_config_v4(config).await
}

async fn peer(d: &Daemon, local: SocketAddr) -> pb::Peer {
    let mut api = connect(&d.api_socket()).await;
    api.peers
        .get_peer(pb::GetPeerRequest {
            peer: Some(pb::get_peer_request::Peer::Address(local.to_string())),
        })
        .await
        .unwrap_or_else(|e| panic!("GetPeer {local}: {e}"))
        .into_inner()
}

async fn reload(d: &Daemon) -> Vec<String> {
    let mut api = connect(&d.api_socket()).await;
    api.daemon
        .reload(pb::ReloadRequest {})
        .await
        .expect("reload")
        .into_inner()
        .applied
}

#[tokio::test]
async fn reload_that_tightens_a_policy_withdraws_exactly_the_routes_that_became_illegal() {
    let (d, v4, file) = start(BEFORE).await;
    // The subscriber (::1, open default class) listens to 100, 200 and 300.
    let mut sub = RawPeer::established(d.addr).await;
    for vni in [100, 200, 300] {
        sub.subscribe(vni).await;
    }
    let mut a = RawPeer::established_from(v4, ip("127.0.0.1")).await;
    let mut other = RawPeer::established_from(v4, ip("127.0.0.2")).await;
    a.subscribe(100).await;
    a.subscribe(200).await;
    other.subscribe(300).await;
    let own100 = route("100#10.0.0.0/24@127.0.0.1");
    let foreign100 = route("100#10.0.1.0/24@2001:db8::99");
    let own200 = route("200#10.0.2.0/24@127.0.0.1");
    let foreign200 = route("200#10.0.3.0/24@2001:db8::99");
    for r in [own100, foreign100, own200, foreign200] {
        a.announce(r).await;
    }
    let other300 = route("300#10.3.0.0/24@127.0.0.2");
    other.announce(other300).await;
    sub.expect_exactly(
        &[
            add(own100),
            add(foreign100),
            add(own200),
            add(foreign200),
            add(other300),
        ],
        "everything allowed before the reload",
    )
    .await;
    a.expect_no_update(QUIET).await;
    let a_before = peer(&d, a.local).await;
    let other_before = peer(&d, other.local).await;
    assert_eq!(a_before.routes_announced, 4);

    std::fs::write(&file, AFTER).unwrap();
    let applied = reload(&d).await;
    assert!(
        applied
            .iter()
            .any(|a| a.contains("open sessions re-checked")),
        "{applied:?}"
    );

    // Exactly the now-illegal routes are withdrawn from the subscriber.
    sub.expect_exactly(
        &[rem(foreign100), rem(own200), rem(foreign200)],
        "REMOVEs of the routes hv may no longer announce",
    )
    .await;
    // The route still within the class stays: a new subscriber's dump has it.
    let mut late = RawPeer::established(d.addr).await;
    late.subscribe(100).await;
    late.expect_exactly(&[add(own100)], "the dump after the reload")
        .await;
    // The untouched class's session saw nothing on the wire and is alive.
    other.expect_no_update(QUIET).await;
    other.ping().await;
    let other_after = peer(&d, other.local).await;
    assert_eq!(other_after.session_id, other_before.session_id);
    assert_eq!(
        (other_after.routes_refused, other_after.subscribes_refused),
        (0, 0)
    );

    // A's session is the same one, and holds what is legal.
    let a_after = peer(&d, a.local).await;
    assert_eq!(a_after.session_id, a_before.session_id);
    assert_eq!(a_after.state, a_before.state);
    assert_eq!(a_after.policy_class, "hv");
    assert_eq!(a_after.routes_announced, 1, "{a_after:?}");
    assert_eq!(
        (a_after.routes_refused, a_after.subscribes_refused),
        (3, 1),
        "{a_after:?}"
    );
    // A's later ADDs follow the new class.
    let own_later = route("100#10.0.6.0/24@127.0.0.1");
    a.announce(route("100#10.0.5.0/24@2001:db8::99")).await;
    a.announce(route("200#10.0.7.0/24@127.0.0.1")).await;
    a.announce(own_later).await;
    sub.expect_exactly(&[add(own_later)], "A's ADDs under the new class")
        .await;
    // Its subscription to 200 is dropped, the one to 100 kept: an update
    // of 200 sent first never reaches it, the one of 100 after it does.
    let r200 = route("200#10.9.0.0/24@2001:db8::1");
    let r100 = route("100#10.8.0.0/24@2001:db8::1");
    sub.announce(r200).await;
    sub.announce(r100).await;
    assert_eq!(a.expect_update(T).await, add(r100));
    a.expect_no_update(QUIET).await;

    // One log line for the session, the refusals counted by class and reason.
    let a_peer = format!("peer={}", a.local);
    let lines: Vec<&str> = d
        .logs()
        .lines()
        .filter(|l| l.contains("policy reload: the new class refuses") && l.contains(&a_peer))
        .map(|_| "")
        .collect();
    assert_eq!(lines.len(), 1, "log:\n{}", d.logs());
    let metrics = d.http_addr("/metrics").await;
    let text = get(metrics, "/metrics").await.body;
    let refused = |class: &str, reason: &str| {
        value(
            &text,
            "metalbondd_policy_refused_total",
            &[("class", class), ("reason", reason)],
        )
    };
    assert_eq!(refused("hv", "next_hop"), 2.0);
    assert_eq!(refused("hv", "announce_vni"), 3.0);
    assert_eq!(refused("hv", "subscribe_vni"), 1.0);
    assert_eq!(refused("other", "announce_vni"), 0.0);
}

/// `mbctl --socket S policy ARGS...` against `d`.
async fn mbctl_policy(d: &Daemon, args: &[&str]) -> Out {
    let mut cmd = Command::new(mbctl_bin());
    cmd.args(["--socket", d.api_socket().to_str().unwrap(), "policy"])
        .args(args)
        .env_remove("MBCTL_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    run(cmd).await
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().expect("an object").keys().cloned().collect();
    k.sort();
    k
}

#[tokio::test]
async fn mbctl_policy_shows_the_classes_and_their_live_sessions() {
    let (d, v4, _file) = start(BEFORE).await;
    let mut obs = RawPeer::established(d.addr).await;
    let mut a = RawPeer::established_from(v4, ip("127.0.0.1")).await;
    // Refused first: once the observer has the two routes sent after, the
    // refusals are counted.
    a.subscribe(300).await;
    a.announce(route("400#10.0.2.0/24@127.0.0.1")).await;
    a.announce(route("100#10.0.0.0/24@127.0.0.1")).await;
    a.announce(route("200#10.0.1.0/24@127.0.0.1")).await;
    obs.subscribe(100).await;
    obs.subscribe(200).await;
    obs.expect_updates(2, T).await;
    let a_id = peer(&d, a.local).await.session_id;
    let obs_id = peer(&d, obs.local).await.session_id;

    let json = mbctl_policy(&d, &["-o", "json"]).await.json();
    assert_eq!(keys(&json), sorted(fields::POLICY));
    assert_eq!(json["enabled"], true);
    let classes = json["classes"].as_array().unwrap();
    let names: Vec<&str> = classes
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["hv", "other", "default"],
        "match order, default last"
    );
    for c in classes {
        assert_eq!(keys(c), sorted(fields::POLICY_CLASS));
    }
    let hv = &classes[0];
    assert_eq!(hv["match_prefixes"], serde_json::json!(["127.0.0.1/32"]));
    assert_eq!(hv["is_default"], false);
    assert_eq!(
        hv["rules"],
        serde_json::json!(["subscribe_vnis = [100, 200]", "announce_vnis = [100-299]"])
    );
    assert_eq!(hv["max_routes"], Value::Null);
    let hv_sessions = hv["sessions"].as_array().unwrap();
    assert_eq!(hv_sessions.len(), 1, "{json}");
    let s = &hv_sessions[0];
    assert_eq!(keys(s), sorted(fields::POLICY_SESSION));
    assert_eq!(s["session_id"], a_id);
    assert_eq!(s["remote_address"], a.local.to_string());
    assert_eq!(s["routes_announced"], 2);
    assert_eq!(s["routes_refused"], 1);
    assert_eq!(s["subscribes_refused"], 1);
    assert_eq!(s["last_refusal_reason"], "announce_vni");
    assert_eq!(classes[1]["sessions"], serde_json::json!([]));
    let default = &classes[2];
    assert_eq!(default["is_default"], true);
    assert_eq!(default["rules"], serde_json::json!([]));
    let ids: Vec<u64> = default["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["session_id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [obs_id]);

    let text = mbctl_policy(&d, &[]).await;
    let text = text.ok();
    let lines: Vec<&str> = text.lines().collect();
    let header: Vec<&str> = lines[0]
        .split("  ")
        .filter(|c| !c.is_empty())
        .map(str::trim)
        .collect();
    assert_eq!(header, columns::POLICY_CLASSES, "{text}");
    assert!(
        lines[1].starts_with("hv ") && lines[1].contains("127.0.0.1/32"),
        "{text}"
    );
    assert!(
        lines[1].contains("subscribe_vnis = [100, 200]; announce_vnis = [100-299]"),
        "{text}"
    );
    assert!(
        lines[3].starts_with("default") && lines[3].contains("(default)"),
        "{text}"
    );
    let a_row = lines
        .iter()
        .find(|l| l.contains(&a.local.to_string()))
        .unwrap_or_else(|| panic!("no row of {}:\n{text}", a.local));
    let cells: Vec<&str> = a_row.split_whitespace().collect();
    assert_eq!(
        cells,
        [
            "hv",
            &a_id.to_string(),
            &a.local.to_string(),
            "2",
            "1",
            "1",
            "announce_vni"
        ],
        "{text}"
    );

    // Without a policy: said so, and an empty document.
    let open = Daemon::start(&[]);
    let json = mbctl_policy(&open, &["-o", "json"]).await.json();
    assert_eq!(json, serde_json::json!({"enabled": false, "classes": []}));
    assert!(mbctl_policy(&open, &[])
        .await
        .ok()
        .starts_with("no peer policy"));
}

/// A class that gains `max_routes` in a reload keeps the first routes in
/// route order (whatever order they came in) and withdraws the rest; with
/// the `close` action the session is closed instead. 5,000 routes: more
/// than the session checks inline (the blocking-thread path).
#[tokio::test]
async fn a_reload_that_adds_a_route_limit_keeps_the_first_routes_in_route_order() {
    const BULK: &str = "[[policy.class]]\nname = \"bulk\"\nmatch = [\"127.0.0.3/32\"]\n";
    let (d, v4, file) = start(BULK).await;
    let mut sub = RawPeer::established(d.addr).await;
    sub.subscribe(100).await;
    let mut bulk = RawPeer::established_from(v4, ip("127.0.0.3")).await;
    // Announced in descending order: the kept ones are not the first sent.
    let mut routes: Vec<_> = (0..5000u32)
        .map(|i| route(&format!("100#10.{}.{}.0/24@127.0.0.3", i / 256, i % 256)))
        .collect();
    routes.reverse();
    let mut bytes = Vec::new();
    for r in &routes {
        bytes.extend(frame(&metalbondd::wire::Message::Update(add(*r))));
    }
    bulk.send_raw(&bytes).await;
    assert_eq!(sub.expect_updates(5000, T).await.len(), 5000);

    std::fs::write(&file, format!("{BULK}max_routes = 4500\n")).unwrap();
    reload(&d).await;
    routes.sort();
    let want: Vec<_> = routes[4500..].iter().map(|r| rem(*r)).collect();
    sub.expect_exactly(&want, "REMOVEs of the last 500 routes in route order")
        .await;
    let p = peer(&d, bulk.local).await;
    assert_eq!((p.routes_announced, p.routes_refused), (4500, 500));
    bulk.ping().await;

    // The close action closes it instead; all its routes go.
    std::fs::write(
        &file,
        format!("{BULK}max_routes = 4000\nmax_routes_action = \"close\"\n"),
    )
    .unwrap();
    reload(&d).await;
    bulk.expect_closed(T).await;
    let reason = d.expect_close_reason(bulk.local, &["max_routes"]).await;
    assert!(reason.contains("4000"), "{reason}");
    let gone = sub.expect_updates(4500, T).await;
    assert!(gone
        .iter()
        .all(|u| u.action == metalbondd::wire::Action::Remove));
}
