//! Peer policy (docs/POLICY.md) with the real binary: peers told apart by
//! their loopback source address (127.0.0.1, 127.0.0.2, 127.0.0.3, ::1),
//! each in its own class; what a refused peer tries never reaches another
//! peer, and its counters (API, mbctl, metrics) and the log say why.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::api::connect;
use common::http::{get, value};
use common::mbctl::{mbctl_bin, run};
use common::*;
use metalbond_proto::api as pb;
use metalbondd::wire::{Action, Message};

const POLICY: &str = r#"
[[policy.class]]
name = "hv1"
match = ["127.0.0.1/32"]
subscribe_vnis = ["100-199"]
announce_vnis = ["100-199"]
next_hop = "self"

[[policy.class]]
name = "hv2"
match = ["127.0.0.2/32"]
next_hop = ["self", "2001:db8:2::/48"]
destinations = [{ vnis = [300], prefixes = ["10.0.0.0/12"] }]
max_routes = 5
max_routes_warn = 60

[[policy.class]]
name = "closer"
match = ["127.0.0.3/32"]
max_routes = 2
max_routes_action = "close"
"#;

/// A daemon with [`POLICY`] listening on [::1] (the open default class's
/// observers) and 127.0.0.1; returns it and its IPv4 address.
async fn start() -> (Daemon, SocketAddr) {
    let (d, v4, _) = Daemon::start_with_config_v4(POLICY).await;
    (d, v4)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
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

/// Log lines of policy refusals with `reason=REASON` from the peer at `local`.
fn refusal_lines(d: &Daemon, local: SocketAddr, reason: &str) -> usize {
    let peer = format!("peer={local}");
    let reason = format!("reason={reason}");
    d.logs()
        .lines()
        .filter(|l| l.contains("policy refused") && l.contains(&peer) && l.contains(&reason))
        .count()
}

#[tokio::test]
async fn refused_subscriptions_and_routes_reach_nobody_and_are_counted() {
    let (d, v4) = start().await;
    // The observer (::1, default class: open) listens to 100 and 300.
    let mut obs = RawPeer::established(d.addr).await;
    obs.subscribe(100).await;
    obs.subscribe(300).await;
    let mut helper = RawPeer::established(d.addr).await;
    let mut a = RawPeer::established_from(v4, ip("127.0.0.1")).await;
    let mut b = RawPeer::established_from(v4, ip("127.0.0.2")).await;

    // hv1 may not subscribe to 300 nor announce into it, nor claim hv2's
    // tunnel endpoint; its own address in an allowed VNI is distributed.
    a.subscribe(300).await;
    let outside = route("300#10.0.0.0/24@127.0.0.1");
    let hijack = route("100#10.1.0.0/24@127.0.0.2");
    let own = route("100#10.2.0.0/24@127.0.0.1");
    a.announce(outside).await;
    a.announce(hijack).await;
    a.announce(own).await;
    // hv2 announces into 300 with its own address (IPv4-mapped on the wire
    // is the same address) and into an allowed prefix.
    let b_own = route("300#10.3.0.0/24@::ffff:127.0.0.2");
    let b_listed = route("300#10.4.0.0/24@2001:db8:2::9");
    let b_hijack = route("300#10.5.0.0/24@127.0.0.1");
    b.announce(b_own).await;
    b.announce(b_listed).await;
    b.announce(b_hijack).await;
    // ... and outside its destinations in VNI 300.
    b.announce(route("300#192.0.2.0/24@127.0.0.2")).await;
    obs.expect_exactly(
        &[add(own), add(b_own), add(b_listed)],
        "allowed routes only",
    )
    .await;
    // hv1's refused SUBSCRIBE gave it no dump and gives it no updates of 300.
    barrier(&mut a, &mut helper, 150).await;
    b.announce(route("300#10.6.0.0/24@127.0.0.2")).await;
    assert_eq!(
        obs.expect_update(T).await,
        add(route("300#10.6.0.0/24@127.0.0.2"))
    );
    a.expect_no_update(QUIET).await;

    // The REMOVE of a refused route removes nothing (the same route of
    // nobody else, or a route someone else holds) and is no new refusal.
    a.withdraw(hijack).await;
    a.withdraw(outside).await;
    obs.expect_no_update(QUIET).await;
    // A second hijack is counted, not logged again.
    a.announce(route("100#10.7.0.0/24@127.0.0.2")).await;
    obs.expect_no_update(QUIET).await;

    let pa = peer(&d, a.local).await;
    assert_eq!(pa.policy_class, "hv1");
    assert_eq!(pa.subscribes_refused, 1);
    assert_eq!(
        pa.routes_refused, 3,
        "outside, hijack, second hijack: {pa:?}"
    );
    assert_eq!(pa.routes_announced, 1);
    assert_eq!(pa.last_refusal_reason, "next_hop");
    assert!(pa.last_refusal_at.is_some());
    let pb_ = peer(&d, b.local).await;
    assert_eq!(pb_.policy_class, "hv2");
    assert_eq!((pb_.routes_refused, pb_.routes_announced), (2, 3));
    let po = peer(&d, obs.local).await;
    assert_eq!(
        (po.policy_class.as_str(), po.routes_refused),
        ("default", 0)
    );

    // The log says why, once per session and reason.
    for reason in ["subscribe_vni", "announce_vni", "next_hop"] {
        assert_eq!(
            refusal_lines(&d, a.local, reason),
            1,
            "{reason}; log:\n{}",
            d.logs()
        );
    }
    assert_eq!(refusal_lines(&d, b.local, "next_hop"), 1);
    assert_eq!(refusal_lines(&d, b.local, "destination"), 1);

    // Metrics by class and reason.
    let metrics = d.http_addr("/metrics").await;
    let text = get(metrics, "/metrics").await.body;
    let refused = |class: &str, reason: &str| {
        value(
            &text,
            "metalbondd_policy_refused_total",
            &[("class", class), ("reason", reason)],
        )
    };
    assert_eq!(refused("hv1", "next_hop"), 2.0);
    assert_eq!(refused("hv1", "announce_vni"), 1.0);
    assert_eq!(refused("hv1", "subscribe_vni"), 1.0);
    assert_eq!(refused("hv2", "next_hop"), 1.0);
    assert_eq!(refused("hv2", "destination"), 1.0);
    assert_eq!(refused("default", "next_hop"), 0.0);

    // mbctl peer ADDR shows the same.
    let mut cmd = Command::new(mbctl_bin());
    cmd.args(["--socket", d.api_socket().to_str().unwrap(), "peer"])
        .arg(a.local.to_string())
        .env_remove("MBCTL_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = run(cmd).await;
    let text = out.ok();
    for line in [
        "policy_class:        hv1\n",
        "routes_refused:      3\n",
        "subscribes_refused:  1\n",
        "last_refusal_reason: next_hop\n",
    ] {
        assert!(text.contains(line), "{line:?} not in:\n{text}");
    }
}

#[tokio::test]
async fn max_routes_refuses_the_excess_or_closes_and_others_keep_flowing() {
    let (d, v4) = start().await;
    let mut obs = RawPeer::established(d.addr).await;
    obs.subscribe(100).await;
    let mut a = RawPeer::established_from(v4, ip("127.0.0.1")).await;
    let mut b = RawPeer::established_from(v4, ip("127.0.0.2")).await;

    // hv2 may hold 5 routes: the next 3 are refused.
    let routes: Vec<_> = (0..8)
        .map(|i| route(&format!("100#10.9.{i}.0/24@127.0.0.2")))
        .collect();
    for r in &routes {
        b.announce(*r).await;
    }
    let first: Vec<_> = routes[..5].iter().map(|r| add(*r)).collect();
    obs.expect_exactly(&first, "the first max_routes routes")
        .await;
    // Re-announcing a held route holds nothing more; hv1 is unaffected.
    b.announce(routes[0]).await;
    let a_route = route("100#10.10.0.0/24@127.0.0.1");
    a.announce(a_route).await;
    obs.expect_exactly(&[add(a_route)], "another peer's update")
        .await;
    // Withdrawing a held route frees a place; a refused one's REMOVE does
    // nothing.
    b.withdraw(routes[7]).await;
    b.withdraw(routes[0]).await;
    assert_eq!(obs.expect_update(T).await, rem(routes[0]));
    b.announce(routes[6]).await;
    obs.expect_exactly(&[add(routes[6])], "the freed place")
        .await;
    let pb_ = peer(&d, b.local).await;
    assert_eq!(
        (pb_.routes_refused, pb_.routes_announced),
        (3, 5),
        "{pb_:?}"
    );
    assert_eq!(pb_.last_refusal_reason, "max_routes");
    assert_eq!(refusal_lines(&d, b.local, "max_routes"), 1);
    assert!(
        d.wait_for_log("session near its policy's max_routes", T)
            .await
    );

    // "close": the third route closes the session; its two are withdrawn.
    let mut c = RawPeer::established_from(v4, ip("127.0.0.3")).await;
    let c_routes: Vec<_> = (0..3)
        .map(|i| route(&format!("100#10.11.{i}.0/24@2001:db8:3::1")))
        .collect();
    for r in &c_routes {
        c.announce(*r).await;
    }
    c.expect_closed(T).await;
    let reason = d.expect_close_reason(c.local, &["max_routes"]).await;
    assert!(reason.contains("closer"), "{reason}");
    let got = obs.expect_updates(4, T).await;
    assert_same_updates(
        &got,
        &[
            add(c_routes[0]),
            add(c_routes[1]),
            rem(c_routes[0]),
            rem(c_routes[1]),
        ],
        "the closed session's routes come and go",
    );
    obs.expect_no_update(QUIET).await;
    // Others go on.
    let a2 = route("100#10.12.0.0/24@127.0.0.1");
    a.announce(a2).await;
    obs.expect_exactly(&[add(a2)], "after the close").await;
}

#[test]
fn check_config_reports_policy_errors_with_positions() {
    let dir = unique_temp_dir();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[[policy.class]]\nname = \"all\"\nmatch = [\"10.0.0.0/8\"]\nannounce_vnis = [\"300-200\"]\n\n[[policy.class]]\nname = \"some\"\nmatch = [\"10.1.0.0/16\"]\nroute_types = [\"bgp\"]\n",
    )
    .unwrap();
    let (code, stdout, stderr) = run_to_exit(&["check-config", bad.to_str().unwrap()]);
    assert_ne!(code, Some(0), "{stdout}{stderr}");
    let all = format!("{stdout}{stderr}");
    let path = bad.display().to_string();
    for want in [
        format!("{path}:4:18: policy.class[0].announce_vnis[0]"),
        format!("{path}:8:10: policy.class[1].match[0]: 10.1.0.0/16 lies inside 10.0.0.0/8"),
        format!("{path}:9:16: policy.class[1].route_types[0]"),
    ] {
        assert!(all.contains(&want), "{want:?} not in:\n{all}");
    }
    let good = dir.join("good.toml");
    std::fs::write(&good, POLICY).unwrap();
    let (code, stdout, stderr) = run_to_exit(&["check-config", good.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
}

/// The daemon's resident set size in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_a_million_routes_is_held_to_the_limit_in_bounded_memory() {
    const FLOOD: u32 = 1_000_000;
    const LIMIT: u32 = 10_000;
    let (d, v4, _) = Daemon::start_with_config_v4(&format!(
        "[[policy.class]]\nname = \"flood\"\nmatch = [\"127.0.0.4/32\"]\nmax_routes = {LIMIT}\n"
    ))
    .await;
    // The flood: 1M distinct routes in writes of 4096 frames, each chunk
    // with a KEEPALIVE so the session stays alive however long it takes.
    // Encoded before any session starts, so that the probes below measure
    // the daemon, not this test's encoding, and no session waits for it
    // (a debug build on a loaded machine can take longer than the
    // keepalive timeout).
    let mut chunks = Vec::new();
    let mut chunk = Vec::with_capacity(4096 * 40);
    for i in 0..FLOOD {
        let r = route(&format!(
            "200#10.{}.{}.{}/32@127.0.0.4",
            (i >> 16) & 0xff,
            (i >> 8) & 0xff,
            i & 0xff
        ));
        chunk.extend_from_slice(&frame(&Message::Update(add(r))));
        if i % 4096 == 4095 || i == FLOOD - 1 {
            chunk.extend_from_slice(&frame(&Message::Keepalive));
            chunks.push(std::mem::take(&mut chunk));
        }
    }
    let mut obs = RawPeer::established(d.addr).await;
    obs.subscribe(100).await;
    let mut sub200 = RawPeer::established(d.addr).await;
    sub200.subscribe(200).await;
    let mut a = RawPeer::established_from(v4, ip("127.0.0.1")).await;
    let flooder = RawPeer::established_from(v4, ip("127.0.0.4")).await;
    let flood_local = flooder.local;
    // Warm up the daemon's allocations (a session's buffers, the table's
    // first slabs) before taking the baseline.
    let warm = route("100#10.255.0.0/24@127.0.0.1");
    a.announce(warm).await;
    assert_eq!(obs.expect_update(T).await, add(warm));
    let before = rss_kib(d.pid());

    let start = std::time::Instant::now();
    // From a thread of its own: the probes below measure the daemon, not
    // this test's scheduling.
    let mut stream = flooder.into_std_stream();
    let flood = std::thread::spawn(move || {
        use std::io::Write;
        for chunk in chunks {
            stream.write_all(&chunk).unwrap();
        }
        stream
    });
    // Meanwhile, until the daemon has looked at every route of the flood
    // (the excess counted as refused), another peer's updates keep arriving.
    let mut probes = 0u32;
    let mut worst = Duration::ZERO;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    // The other peers keep their sessions alive: a flood on a loaded
    // machine can outlast the keepalive timeout (12.5 s).
    let mut pinged = std::time::Instant::now();
    let p = loop {
        if pinged.elapsed() > Duration::from_secs(2) {
            obs.ping().await;
            sub200.ping().await;
            a.ping().await;
            pinged = std::time::Instant::now();
        }
        if flood.is_finished() {
            let p = peer(&d, flood_local).await;
            if p.routes_refused == u64::from(FLOOD - LIMIT) {
                break p;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "flood not processed in time"
        );
        let r = route(&format!(
            "100#10.254.{}.{}/32@127.0.0.1",
            probes >> 8,
            probes & 0xff
        ));
        let sent = std::time::Instant::now();
        a.announce(r).await;
        assert_eq!(
            obs.expect_update(T).await,
            add(r),
            "probe {probes} during the flood"
        );
        worst = worst.max(sent.elapsed());
        probes += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let _flooder = flood.join().unwrap();
    assert!(
        probes >= 3,
        "the flood was over before it was probed ({probes} probes)"
    );
    assert_eq!(p.routes_announced, u64::from(LIMIT));
    let got = sub200.expect_updates(LIMIT as usize, T).await;
    assert!(got.iter().all(|u| u.action == Action::Add));
    sub200.expect_no_update(QUIET).await;
    let after = rss_kib(d.pid());
    let growth = after.saturating_sub(before);
    eprintln!(
        "flood: {:?}; rss {before} KiB -> {after} KiB (+{growth} KiB); {probes} probes, worst {worst:?}",
        start.elapsed()
    );
    // 10,000 routes held (table and the session's set) and the buffers of
    // one busy session: a few MiB; 1M routes in the table would be ~100 MiB.
    assert!(growth < 48 * 1024, "RSS grew by {growth} KiB");
    // A debug build on a shared machine: generous, but a flood that
    // starved other sessions would take the whole flood's time.
    assert!(worst < Duration::from_secs(2), "a probe took {worst:?}");
    assert_eq!(refusal_lines(&d, flood_local, "max_routes"), 1);
}

#[tokio::test]
async fn a_reload_applies_a_changed_policy_to_new_and_open_sessions() {
    let (d, v4, config) = Daemon::start_with_config_v4(POLICY).await;
    let mut helper = RawPeer::established(d.addr).await;
    let r = route("150#10.0.0.0/24@2001:db8::1");
    helper.announce(r).await;
    let mut old = RawPeer::established_from(v4, ip("127.0.0.1")).await;

    // hv1 may now subscribe to 200 only.
    std::fs::write(
        &config,
        POLICY.replace("subscribe_vnis = [\"100-199\"]", "subscribe_vnis = [200]"),
    )
    .unwrap();
    let mut api = connect(&d.api_socket()).await;
    let reply = api
        .daemon
        .reload(pb::ReloadRequest {})
        .await
        .expect("reload")
        .into_inner();
    assert!(
        reply
            .applied
            .iter()
            .any(|a| a.contains("policy (new sessions, and open sessions re-checked)")),
        "{reply:?}"
    );

    // The open session is re-checked (it holds nothing the new class
    // refuses, so nothing happens on the wire) and is under the new class
    // from then on (tests/e2e_policy_reload.rs has the withdrawals) ...
    let line = format!("peer={}", old.local);
    assert!(
        d.wait_for_line(
            |l| l.contains("policy reload: session within its new class") && l.contains(&line),
            T
        )
        .await
        .is_some(),
        "log:\n{}",
        d.logs()
    );
    old.subscribe(150).await;
    old.expect_no_update(QUIET).await;
    // ... and so is a new one.
    let mut new = RawPeer::established_from(v4, ip("127.0.0.1")).await;
    new.subscribe(150).await;
    new.expect_no_update(QUIET).await;
    let p = peer(&d, new.local).await;
    assert_eq!((p.policy_class.as_str(), p.subscribes_refused), ("hv1", 1));
    assert_eq!(peer(&d, old.local).await.subscribes_refused, 1);
}
