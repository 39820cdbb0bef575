//! Operations end to end: the real binary's Prometheus endpoint, its status
//! page in the Go reference's shapes, `/healthz`, and systemd's readiness
//! protocol, over real TCP and a real datagram socket.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use common::http::{families, get, value, value_or_zero};
use common::*;
use metalbond_proto::api as pb;

const T: Duration = Duration::from_secs(10);

/// The `endpoints` field of the `serving HTTP` line of a `--metrics` listener.
const METRICS_ONLY: &str = "endpoints=\"/metrics";
/// ... and of a `--http` listener.
const STATUS_PAGE: &str = "endpoints=\"/ /routes.json";

/// The address of the daemon's HTTP listener serving `endpoints`.
async fn scrape(addr: SocketAddr) -> String {
    let r = get(addr, "/metrics").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.headers["content-type"].starts_with("text/plain; version=0.0.4"),
        "{:?}",
        r.headers
    );
    r.body
}

/// Every family the issue asks for, by name and type.
const FAMILIES: &[(&str, &str)] = &[
    ("metalbondd_build_info", "gauge"),
    ("metalbondd_start_time_seconds", "gauge"),
    ("metalbondd_sessions", "gauge"),
    ("metalbondd_session_ups_total", "counter"),
    ("metalbondd_session_downs_total", "counter"),
    ("metalbondd_vni_routes", "gauge"),
    ("metalbondd_vni_announcers", "gauge"),
    ("metalbondd_vni_subscribers", "gauge"),
    ("metalbondd_routes", "gauge"),
    ("metalbondd_announcers", "gauge"),
    ("metalbondd_subscribers", "gauge"),
    ("metalbondd_updates_received_total", "counter"),
    ("metalbondd_updates_sent_total", "counter"),
    ("metalbondd_received_bytes_total", "counter"),
    ("metalbondd_sent_bytes_total", "counter"),
    ("metalbondd_subscribe_dumps_total", "counter"),
    ("metalbondd_subscribe_dump_duration_seconds", "histogram"),
    ("metalbondd_outbound_queue_bytes", "gauge"),
    ("metalbondd_outbound_queue_max_bytes", "gauge"),
    ("metalbondd_paced_sessions", "gauge"),
    ("metalbondd_slow_consumer_events_total", "counter"),
    ("metalbondd_protocol_errors_total", "counter"),
    ("metalbondd_handshake_timeouts_total", "counter"),
    ("metalbondd_keepalive_timeouts_total", "counter"),
    ("metalbondd_update_propagation_seconds", "histogram"),
    ("metalbondd_api_requests_total", "counter"),
    ("metalbondd_api_request_duration_seconds", "histogram"),
    ("metalbondd_table_queue_depth", "gauge"),
    ("process_resident_memory_bytes", "gauge"),
];

/// Scrapes until `done` holds (bounded by [`T`]); returns that scrape.
async fn scrape_until(addr: SocketAddr, done: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let text = scrape(addr).await;
        if done(&text) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {T:?}; last scrape:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Every family of [`FAMILIES`] is declared with its type (except those in
/// `not_yet`), and every family is named by the conventions.
fn check_families(text: &str, not_yet: &[&str]) {
    let declared = families(text);
    for (name, kind) in FAMILIES {
        if not_yet.contains(name) {
            continue;
        }
        assert_eq!(
            declared.get(*name).map(String::as_str),
            Some(*kind),
            "{name} missing or of the wrong type; declared: {declared:?}"
        );
    }
    for (name, kind) in &declared {
        if name.starts_with("process_") {
            continue;
        }
        assert!(name.starts_with("metalbondd_"), "{name}");
        assert_eq!(
            name.ends_with("_total"),
            kind == "counter",
            "{name} ({kind}): counters and only counters end in _total"
        );
    }
}

#[tokio::test]
async fn metrics_are_named_by_convention_and_move() {
    let d = Daemon::start(&["--metrics", "127.0.0.1:0"]);
    let addr = d.http_addr(METRICS_ONLY).await;
    let before = scrape(addr).await;
    // Families with labels appear with their first sample: no VNI, no
    // protocol error and no API request yet.
    check_families(
        &before,
        &[
            "metalbondd_vni_routes",
            "metalbondd_vni_announcers",
            "metalbondd_vni_subscribers",
            "metalbondd_protocol_errors_total",
            "metalbondd_api_requests_total",
            "metalbondd_api_request_duration_seconds",
        ],
    );
    assert_eq!(
        value(
            &before,
            "metalbondd_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert!(value(&before, "process_resident_memory_bytes", &[]) > 0.0);
    assert_eq!(
        value(
            &before,
            "metalbondd_sessions",
            &[("role", "server"), ("state", "established")]
        ),
        0.0
    );

    // A subscriber, an announcer, one route between them.
    let mut sub = RawPeer::established(d.addr).await;
    sub.subscribe(100).await;
    // The answer to a KEEPALIVE sent after the SUBSCRIBE comes once the
    // SUBSCRIBE is in the table's queue: the route below is a live update.
    sub.ping().await;
    let mut ann = RawPeer::established(d.addr).await;
    let r = route("100#10.0.1.0/24@2001:db8::1");
    ann.announce(r).await;
    assert_eq!(sub.expect_update(T).await, add(r));
    // A late subscriber gets a one-route dump.
    let mut late = RawPeer::established(d.addr).await;
    late.subscribe(100).await;
    assert_eq!(late.expect_update(T).await, add(r));
    // A peer speaking protocol version 2 is a protocol error.
    let mut bad = RawPeer::connect(d.addr).await;
    let _ = bad
        .try_send_raw(&raw_frame(2, mtype::HELLO, &common::pb::uint(1, 5)))
        .await;
    d.expect_close_reason(bad.local, &["version 2"]).await;
    // API requests: one that succeeds, one that fails.
    let mut api = common::api::connect(&d.api_socket()).await;
    api.daemon
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap();
    let missing = api
        .peers
        .get_peer(pb::GetPeerRequest {
            peer: Some(pb::get_peer_request::Peer::SessionId(999_999)),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);

    // A delivery is timed right after the write that completes it, which
    // may be just after the peer read it: wait for the observations.
    let after = scrape_until(addr, |t| {
        value_or_zero(t, "metalbondd_update_propagation_seconds_count", &[]) == 1.0
            && value_or_zero(t, "metalbondd_subscribe_dump_duration_seconds_count", &[]) == 2.0
    })
    .await;
    check_families(&after, &[]);
    let v = |name: &str, labels: &[(&str, &str)]| value(&after, name, labels);
    let server = [("role", "server")];
    assert_eq!(
        v(
            "metalbondd_sessions",
            &[("role", "server"), ("state", "established")]
        ),
        3.0
    );
    assert_eq!(v("metalbondd_session_ups_total", &server), 3.0);
    assert_eq!(
        v(
            "metalbondd_session_downs_total",
            &[("role", "server"), ("reason", "bad_version")]
        ),
        1.0
    );
    assert_eq!(
        v(
            "metalbondd_protocol_errors_total",
            &[("role", "server"), ("reason", "bad_version")]
        ),
        1.0
    );
    assert_eq!(v("metalbondd_updates_received_total", &server), 1.0);
    assert_eq!(v("metalbondd_updates_sent_total", &server), 2.0);
    for bytes in [
        "metalbondd_received_bytes_total",
        "metalbondd_sent_bytes_total",
    ] {
        assert!(
            v(bytes, &server) > value(&before, bytes, &server),
            "{bytes} did not move"
        );
    }
    assert_eq!(v("metalbondd_subscribe_dumps_total", &[]), 2.0);
    assert_eq!(v("metalbondd_subscribe_dump_routes_total", &[]), 1.0);
    assert_eq!(
        v("metalbondd_subscribe_dump_duration_seconds_count", &[]),
        2.0
    );
    // The live update reached the first subscriber: one timed delivery.
    assert_eq!(v("metalbondd_update_propagation_seconds_count", &[]), 1.0);
    assert!(v("metalbondd_update_propagation_seconds_sum", &[]) > 0.0);
    assert_eq!(v("metalbondd_routes", &[]), 1.0);
    assert_eq!(v("metalbondd_vni_routes", &[("vni", "100")]), 1.0);
    assert_eq!(v("metalbondd_vni_announcers", &[("vni", "100")]), 1.0);
    assert_eq!(v("metalbondd_vni_subscribers", &[("vni", "100")]), 2.0);
    assert_eq!(v("metalbondd_announcers", &[]), 1.0);
    assert_eq!(v("metalbondd_subscribers", &[]), 2.0);
    assert_eq!(
        v(
            "metalbondd_api_requests_total",
            &[
                ("service", "metalbondd.v1.DaemonService"),
                ("method", "GetStatus"),
                ("code", "OK")
            ]
        ),
        1.0
    );
    assert_eq!(
        v(
            "metalbondd_api_requests_total",
            &[
                ("service", "metalbondd.v1.PeerService"),
                ("method", "GetPeer"),
                ("code", "NotFound")
            ]
        ),
        1.0
    );

    // One line per session event, none per route at the default level.
    let logs = d.logs();
    assert!(
        !logs.contains("10.0.1.0/24"),
        "a route was logged at info:\n{logs}"
    );
    assert!(logs.contains("session established"), "{logs}");

    // The announcer leaves: its route is withdrawn and its end is counted.
    let ann_addr = ann.local;
    drop(ann);
    assert_eq!(sub.expect_update(T).await, rem(r));
    assert_eq!(late.expect_update(T).await, rem(r));
    // Logged after its end was counted.
    d.expect_session_closed_log(ann_addr).await;
    let gone = scrape_until(addr, |t| {
        value_or_zero(t, "metalbondd_update_propagation_seconds_count", &[]) == 3.0
    })
    .await;
    assert_eq!(
        value(
            &gone,
            "metalbondd_session_downs_total",
            &[("role", "server"), ("reason", "peer_closed")]
        ),
        1.0
    );
    assert_eq!(value(&gone, "metalbondd_routes", &[]), 0.0);
    assert_eq!(
        value_or_zero(&gone, "metalbondd_vni_routes", &[("vni", "100")]),
        0.0
    );
    assert_eq!(
        value(&gone, "metalbondd_update_propagation_seconds_count", &[]),
        3.0,
        "the REMOVE reached two subscribers"
    );
}

#[tokio::test]
async fn vni_labels_are_bounded() {
    let d = Daemon::start(&["--metrics", "127.0.0.1:0", "--metrics-vni-limit", "2"]);
    let addr = d.http_addr(METRICS_ONLY).await;
    let mut sub = RawPeer::established(d.addr).await;
    for vni in 1..=4 {
        sub.subscribe(vni).await;
    }
    let mut ann = RawPeer::established(d.addr).await;
    // VNI 1 has 3 routes, VNI 2 has 2, VNIs 3 and 4 one each.
    for (vni, n) in [(1, 3), (2, 2), (3, 1), (4, 1)] {
        for i in 0..n {
            ann.announce(route(&format!("{vni}#10.0.{i}.0/24@2001:db8::1")))
                .await;
        }
    }
    // All 7 are in the table once the subscriber has heard them.
    sub.expect_updates(7, T).await;
    let text = scrape(addr).await;
    let vnis: BTreeSet<String> = common::http::samples(&text)
        .into_iter()
        .filter(|s| s.name == "metalbondd_vni_routes")
        .map(|s| s.labels["vni"].clone())
        .collect();
    assert_eq!(
        vnis,
        ["1", "2", "other"].map(String::from).into_iter().collect()
    );
    assert_eq!(
        value(&text, "metalbondd_vni_routes", &[("vni", "other")]),
        2.0
    );
    assert_eq!(value(&text, "metalbondd_vni_routes", &[("vni", "1")]), 3.0);
}

#[tokio::test]
async fn status_page_serves_the_reference_shapes() {
    let d = Daemon::start(&["--http", "127.0.0.1:0", "--metrics", "127.0.0.1:0"]);
    let status = d.http_addr(STATUS_PAGE).await;
    let metrics_only = d.http_addr(METRICS_ONLY).await;
    // The routes of the pages captured from the Go reference
    // (tests/vectors/go-status-page): three from a peer, two of the
    // daemon's own (the table holds both).
    let mut ann = RawPeer::established(d.addr).await;
    for r in [
        "100#10.1.0.0/16@2001:db8::1",
        "23#10.0.23.0/24@2001:db8::10",
        "23#2001:db8:5::/64@2001:db8::5#lb",
    ] {
        ann.announce(route(r)).await;
    }
    common::api::inject(
        &d.api_socket(),
        &[
            "23#10.0.99.0/24@2001:db8::99#nat#1024#2047",
            "23#10.0.23.0/24@2001:db8::1",
        ],
    )
    .await;
    // Wait for all five via a subscriber (the table applies in order).
    let mut sub = RawPeer::established(d.addr).await;
    sub.subscribe(100).await;
    sub.subscribe(23).await;
    sub.expect_updates(5, T).await;

    // Byte for byte the Go reference's page, date and version aside.
    let go_page = |text: &str, date: &str| {
        text.replace("2026-12-06 05:20:36", date)
            .replace("0.5.0-6-g11ad382", env!("CARGO_PKG_VERSION"))
    };
    let json = get(status, "/routes.json").await;
    assert_eq!(json.status, 200);
    assert_eq!(json.headers["content-type"], "application/json");
    let v: serde_json::Value = serde_json::from_str(&json.body).unwrap();
    let keys: BTreeSet<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, BTreeSet::from(["date", "vnet", "metalbondVersion"]));
    let date = v["date"].as_str().unwrap();
    assert_eq!(date.len(), "2026-11-21 03:49:05".len(), "{date}");
    let go_json = include_str!("vectors/go-status-page/routes.json");
    assert_eq!(json.body, go_page(go_json, date), "{}", json.body);
    let nat = &v["vnet"]["23"][r#"{"IPVersion":4,"Prefix":"10.0.99.0/24"}"#][0];
    assert_eq!(
        (
            &nat["Type"],
            &nat["NATPortRangeFrom"],
            &nat["NATPortRangeTo"]
        ),
        (
            &serde_json::json!(1),
            &serde_json::json!(1024),
            &serde_json::json!(2047)
        )
    );

    let yaml = get(status, "/routes.yaml").await;
    assert_eq!(yaml.status, 200);
    assert_eq!(yaml.headers["content-type"], "text/yaml");
    let date = yaml.body.lines().next().unwrap();
    let date = date.trim_start_matches("date: ").trim_matches('"');
    let go_yaml = include_str!("vectors/go-status-page/routes.yaml");
    assert_eq!(yaml.body, go_page(go_yaml, date), "{}", yaml.body);

    let html = get(status, "/").await;
    assert_eq!(html.status, 200);
    assert!(html.headers["content-type"].starts_with("text/html"));
    assert!(html.body.contains(&ann.local.to_string()), "{}", html.body);
    assert!(html.body.contains("<h3 id=\"vni-100\">VNI 100</h3>"));
    assert!(html.body.contains("<h2>Routes (5 in 2 VNIs)</h2>"));

    // The API tells where the HTTP listeners are.
    let mut api = common::api::connect(&d.api_socket()).await;
    let st = api
        .daemon
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (st.metrics_address, st.http_address),
        (metrics_only.to_string(), status.to_string())
    );

    // The status listener also serves metrics and health; the metrics-only
    // listener does not serve the route table.
    assert_eq!(get(status, "/metrics").await.status, 200);
    let health = get(status, "/healthz").await;
    assert_eq!((health.status, health.body.as_str()), (200, "serving\n"));
    assert_eq!(get(metrics_only, "/healthz").await.status, 200);
    assert_eq!(get(metrics_only, "/routes.json").await.status, 404);
    assert_eq!(get(metrics_only, "/").await.status, 404);
}

#[tokio::test]
async fn bad_http_addresses_are_one_line_errors() {
    for (flag, value) in [("--http", "nowhere"), ("--metrics", ":99999")] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_metalbondd"))
            .args(["server", flag, value])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("not an HTTP listen address"), "{err}");
    }
}

/// Receives one notification datagram, bounded.
fn recv_notification(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no notification within the timeout: {e}"));
    String::from_utf8_lossy(&buf[..n]).to_string()
}

#[tokio::test]
async fn systemd_readiness_comes_after_every_listener_is_bound() {
    let dir = unique_temp_dir();
    let notify_path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&notify_path).unwrap();
    sock.set_read_timeout(Some(T)).unwrap();
    let config = dir.join("metalbondd.toml");
    std::fs::write(&config, "[log]\nlevel = \"info\"\n").unwrap();
    let api_socket = dir.join("api.sock");
    let (mb, metrics) = (free_port(), free_port());
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Reap(
        std::process::Command::new(env!("CARGO_BIN_EXE_metalbondd"))
            .args(["server", "--config"])
            .arg(&config)
            .args([
                "--listen",
                &mb.to_string(),
                "--metrics",
                &metrics.to_string(),
            ])
            .arg("--api-socket")
            .arg(&api_socket)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .env("NOTIFY_SOCKET", &notify_path)
            .env("WATCHDOG_USEC", "200000")
            .env_remove("WATCHDOG_PID")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = child.0.id() as libc::pid_t;

    let ready = recv_notification(&sock);
    assert_eq!(
        ready,
        format!(
            "READY=1\nSTATUS=serving: route server on {mb}; API at {}",
            api_socket.display()
        )
    );
    // At READY every listener accepts: MetalBond, the API, HTTP.
    let mut peer = RawPeer::connect(mb).await;
    peer.handshake(5).await;
    let mut api = common::api::connect(&api_socket).await;
    api.daemon
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap();
    assert_eq!(get(metrics, "/healthz").await.status, 200);

    // The watchdog is pinged (every 100 ms for WATCHDOG_USEC = 200 ms).
    let mut seen = Vec::new();
    while !seen.iter().any(|m: &String| m == "WATCHDOG=1") {
        seen.push(recv_notification(&sock));
    }
    // SIGHUP: RELOADING=1, then READY=1 again.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let mut after_hup = Vec::new();
    loop {
        let m = recv_notification(&sock);
        if m == "WATCHDOG=1" {
            continue;
        }
        after_hup.push(m);
        if after_hup.len() == 2 {
            break;
        }
    }
    assert_eq!(after_hup[0], "RELOADING=1");
    assert_eq!(after_hup[1], ready, "the same status after a reload");
    // SIGTERM: STOPPING=1, then a clean exit.
    drop((api, peer));
    unsafe { libc::kill(pid, libc::SIGTERM) };
    loop {
        let m = recv_notification(&sock);
        if m.starts_with("STOPPING=1") {
            break;
        }
        assert_eq!(m, "WATCHDOG=1");
    }
    let status = wait_exit(&mut child.0, T).await;
    assert!(status.success(), "{status:?}");
}

/// A loopback address with a port that was free a moment ago (the kernel
/// picks it; the daemon binds it right after).
fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Waits (bounded) for the process to exit, letting the test's other tasks run.
async fn wait_exit(child: &mut std::process::Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(tokio::time::Instant::now() < deadline, "did not exit");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Starts the daemon with its stderr on a pipe made here and
/// `JOURNAL_STREAM` naming that pipe (as systemd does for a service logging
/// to journald) or another stream; returns its first log line.
fn first_log_line(journal_stream_matches: bool) -> String {
    use std::io::{BufRead, BufReader};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::fstat(write.as_raw_fd(), &mut st) }, 0);
    let ino = if journal_stream_matches {
        st.st_ino as u64
    } else {
        st.st_ino as u64 + 1
    };
    let dir = unique_temp_dir();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_metalbondd"))
        .args(["server", "--listen", "[::1]:0", "--api-socket"])
        .arg(dir.join("api.sock"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .env("JOURNAL_STREAM", format!("{}:{ino}", st.st_dev as u64))
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(write))
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(std::fs::File::from(read))
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    line
}

#[test]
fn no_second_timestamp_when_logging_to_journald() {
    let to_journal = first_log_line(true);
    assert!(
        to_journal.starts_with(" INFO") || to_journal.starts_with("INFO"),
        "{to_journal:?}"
    );
    let elsewhere = first_log_line(false);
    assert!(
        elsewhere.starts_with("20") && elsewhere.contains("Z "),
        "a timestamp first: {elsewhere:?}"
    );
}

/// Which sessions are paced (ADR 0006) is visible: `Peer.paced` in the API
/// (`mbctl peer`) and the `metalbondd_paced_sessions` gauge. A peer that
/// speaks like the Go reference is paced; one that negotiated SYNC, a
/// metalbondd agent, is not.
#[tokio::test]
async fn the_api_and_the_metrics_say_which_sessions_are_paced() {
    use metalbondd::wire::Extensions;
    let d = Daemon::start(&["--metrics", "127.0.0.1:0"]);
    let addr = d.http_addr(METRICS_ONLY).await;
    let plain = RawPeer::established(d.addr).await;
    let mut agent = RawPeer::connect(d.addr).await;
    let hello = agent.handshake_offering(5, Extensions::SYNC.0).await;
    assert_eq!(hello.extensions, Extensions::SYNC.0, "SYNC negotiated");

    // Each session reports after its turn: wait for both to be counted.
    let text = scrape_until(addr, |t| {
        value_or_zero(t, "metalbondd_sessions", &[("state", "established")]) == 2.0
            && value_or_zero(t, "metalbondd_paced_sessions", &[]) == 1.0
    })
    .await;
    assert_eq!(value(&text, "metalbondd_paced_sessions", &[]), 1.0);
    let mut api = api::connect(&d.api_socket()).await;
    let peers = api::list_peers(&mut api).await;
    let paced = |local: std::net::SocketAddr| {
        peers
            .iter()
            .find(|p| p.remote_address == local.to_string())
            .unwrap_or_else(|| panic!("no session from {local}: {peers:?}"))
            .paced
    };
    assert!(paced(plain.local), "a reference-style peer is paced");
    assert!(!paced(agent.local), "a peer that negotiated SYNC is not");
}
