//! Shared operator state on etcd (issue 14, ADR 0031): three real
//! metalbondd servers on a real 3-member etcd cluster on loopback; a raw
//! MetalBond subscriber connected to one server only sees what an operator
//! does through another server's API or directly in etcd, and nothing at
//! all while etcd fails.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::api::{self, api_route};
use common::etcd::EtcdCluster;
use common::mbctl::run_args;
use common::{add, rem, route, Daemon, RawPeer, Recv};
use metalbond_proto::api as pb;
use serde_json::Value;

/// Bound on waiting for something to reach a subscriber or a status.
const WAIT: Duration = Duration::from_secs(15);

struct Server {
    daemon: Daemon,
    listen: SocketAddr,
    metrics: SocketAddr,
    sock: PathBuf,
}

/// A server on `cluster` with its state store (the local cache of the
/// shared state) in `state`.
async fn start_server(cluster: &EtcdCluster, state: &std::path::Path) -> Server {
    start_named_server(cluster, state, None).await
}

/// [`start_server`] with `[server] name` set.
async fn start_named_server(
    cluster: &EtcdCluster,
    state: &std::path::Path,
    name: Option<&str>,
) -> Server {
    let name = name.map(|n| format!("name = {n:?}\n")).unwrap_or_default();
    // DEBUG for the shared state: tests wait for its cache writes.
    let config = format!(
        "[server]\nkeepalive = 3600\n{name}[log]\nlevel = \"info,metalbondd::etcd::shared=debug\"\n\
         [store]\nbackend = \"etcd\"\n\
         [store.etcd]\nendpoints = {}\ndial_timeout = \"500ms\"\nrequest_timeout = \"2s\"\n",
        cluster.endpoints_toml()
    );
    let (daemon, listen, _file) = Daemon::start_with_config_v4_in(&config, Some(state)).await;
    let metrics = daemon.http_addr("/metrics").await;
    let sock = daemon.api_socket();
    Server {
        daemon,
        listen,
        metrics,
        sock,
    }
}

async fn shared_status(sock: &std::path::Path) -> pb::SharedStateStatus {
    let mut api = api::connect(sock).await;
    api.daemon
        .get_status(pb::GetStatusRequest {})
        .await
        .expect("GetStatus")
        .into_inner()
        .shared_state
        .expect("Status.shared_state")
}

/// Polls `sock`'s status until `want(status)` (bounded).
async fn wait_status(
    sock: &std::path::Path,
    what: &str,
    want: impl Fn(&pb::SharedStateStatus) -> bool,
) -> pb::SharedStateStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = shared_status(sock).await;
        if want(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: status still {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The next frame the subscriber gets must be exactly this UPDATE.
async fn expect_next(peer: &mut RawPeer, want: metalbondd::wire::Update, what: &str) {
    let got = peer.expect_update(WAIT).await;
    assert_eq!(got, want, "{what}");
}

/// A raw peer subscribed to VNI 100, whose dump was empty.
async fn subscriber_of_vni_100(listen: SocketAddr) -> RawPeer {
    let mut sub = RawPeer::connect(listen).await;
    sub.handshake(3600).await;
    sub.subscribe(100).await;
    expect_quiet(&mut sub, "empty dump").await;
    sub
}

/// The subscriber has nothing waiting: everything the server sent before
/// our KEEPALIVE's answer was read, and there was no UPDATE among it.
async fn expect_quiet(peer: &mut RawPeer, what: &str) {
    peer.ping().await;
    match peer.recv(Duration::from_millis(1)).await {
        Recv::Timeout => {}
        other => panic!("{what}: the subscriber got {other:?}"),
    }
}

/// Announces `route` through the API at `sock`, which must fail with
/// UNAVAILABLE (`what` says why it should); the error.
async fn announce_unavailable(sock: &std::path::Path, route: &str, what: &str) -> tonic::Status {
    let mut api = api::connect(sock).await;
    let err = api
        .routes
        .announce_routes(pb::AnnounceRoutesRequest {
            routes: vec![api_route(route)],
            allow_existing: false,
        })
        .await
        .expect_err(what);
    assert_eq!(err.code(), tonic::Code::Unavailable, "{what}: {err:?}");
    err
}

async fn table_routes(sock: &std::path::Path) -> Vec<String> {
    let mut api = api::connect(sock).await;
    let mut out: Vec<String> = api
        .routes
        .list_routes(pb::ListRoutesRequest::default())
        .await
        .expect("ListRoutes")
        .into_inner()
        .routes
        .iter()
        .map(|e| api::route_text(e.route.as_ref().unwrap()))
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_injected_anywhere_reach_every_server_and_survive_etcd_faults() {
    let Some(mut cluster) = EtcdCluster::start("e2e_etcd", 3) else {
        return;
    };
    let states: Vec<PathBuf> = (0..3)
        .map(|_| common::unique_temp_dir().join("state"))
        .collect();
    let a = start_server(&cluster, &states[0]).await;
    let b = start_server(&cluster, &states[1]).await;
    let c = start_server(&cluster, &states[2]).await;

    let mut sub = subscriber_of_vni_100(c.listen).await;

    // Injected through A, seen by a subscriber of C only.
    let r1 = "100#10.0.1.0/24@2001:db8::1";
    api::inject(&a.sock, &[r1]).await;
    expect_next(&mut sub, add(route(r1)), "r1 injected through A").await;
    assert_eq!(
        cluster.keys("/metalbondd/routes/"),
        vec![format!("/metalbondd/routes/{r1}")]
    );

    // A dies: the route stays on B and C (C's subscriber sees no REMOVE:
    // the next thing it sees is r2, injected through B).
    let _a_dir = a.daemon.kill_hard();
    let r2 = "100#10.0.2.0/24@2001:db8::2";
    api::inject(&b.sock, &[r2]).await;
    // Read your writes: B's table has r2 when the call returned.
    assert_eq!(
        table_routes(&b.sock).await,
        vec![r1.to_string(), r2.to_string()]
    );
    expect_next(&mut sub, add(route(r2)), "r2 through B after A died").await;

    // Withdrawn through B: gone everywhere.
    api::withdraw(&b.sock, &[r1]).await;
    expect_next(&mut sub, rem(route(r1)), "r1 withdrawn through B").await;
    assert!(!table_routes(&c.sock).await.contains(&r1.to_string()));

    // One etcd member killed: writes and the watch go on, nothing flaps.
    cluster.kill_member(0);
    let r3 = "100#10.0.3.0/24@2001:db8::3";
    api::inject(&b.sock, &[r3]).await;
    expect_next(&mut sub, add(route(r3)), "r3 with one member down").await;
    expect_quiet(&mut sub, "one member down").await;
    assert!(!shared_status(&c.sock).await.degraded);

    // Every member stopped: the servers keep their routes, writes fail
    // with UNAVAILABLE, health and status say degraded.
    cluster.stop_all();
    let s = wait_status(&c.sock, "C degraded", |s| s.degraded).await;
    assert!(s.reason.contains("etcd"), "{s:?}");
    assert_eq!(s.routes, 2, "{s:?}");
    let err = announce_unavailable(
        &b.sock,
        "100#10.0.9.0/24@2001:db8::9",
        "a write with etcd down",
    )
    .await;
    assert!(
        err.message().contains("shared state (etcd) unreachable")
            && err.message().contains("not announced"),
        "{}",
        err.message()
    );
    let health = common::http::get(c.metrics, "/healthz").await;
    assert_eq!(health.status, 200);
    assert!(
        health.body.contains("serving; shared state degraded: "),
        "{}",
        health.body
    );
    let metrics = common::http::get(c.metrics, "/metrics").await.body;
    assert_eq!(
        common::http::value(&metrics, "metalbondd_shared_state_degraded", &[]),
        1.0
    );
    assert_eq!(
        common::http::value(&metrics, "metalbondd_shared_state_routes", &[]),
        2.0
    );
    let mut api_c = api::connect(&c.sock).await;
    let mut health_client =
        tonic_health::pb::health_client::HealthClient::new(api_c.channel.clone());
    let shared_health = health_client
        .check(tonic_health::pb::HealthCheckRequest {
            service: "metalbondd.shared_state".into(),
        })
        .await
        .expect("health check")
        .into_inner()
        .status;
    assert_eq!(
        shared_health,
        tonic_health::pb::health_check_response::ServingStatus::NotServing as i32
    );
    expect_quiet(&mut sub, "etcd down").await;
    let mut cmd = std::process::Command::new(common::mbctl::mbctl_bin());
    cmd.args(["--socket", c.sock.to_str().unwrap(), "status"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let out = common::mbctl::run(cmd).await;
    let ctl = out.ok();
    assert!(
        ctl.contains("shared_state_health") && ctl.contains("DEGRADED"),
        "{ctl}"
    );
    // `mbctl health`: the daemon serves (exit 0), its shared state not.
    let out = run_args(&["--socket", c.sock.to_str().unwrap(), "health"]).await;
    assert_eq!(out.ok(), "SERVING (shared state: NOT_SERVING)\n");
    let out = run_args(&["--socket", c.sock.to_str().unwrap(), "-o", "json", "health"]).await;
    assert_eq!(
        out.json(),
        serde_json::json!({"status": "SERVING", "shared_state": "NOT_SERVING"})
    );

    // etcd back: a route written directly in etcd reaches every server;
    // the unchanged r2 and r3 are neither withdrawn nor re-announced.
    cluster.restart_all();
    let r4 = "100#10.0.4.0/24@2001:db8::4";
    cluster.put(&format!("/metalbondd/routes/{r4}"), "");
    expect_next(&mut sub, add(route(r4)), "r4 put with etcdctl").await;
    expect_quiet(&mut sub, "after the outage").await;
    for sock in [&b.sock, &c.sock] {
        let s = wait_status(sock, "healthy again", |s| !s.degraded && s.routes == 3).await;
        assert!(s.resyncs >= 1, "{s:?}");
        assert_eq!(
            table_routes(sock).await,
            vec![r2.to_string(), r3.to_string(), r4.to_string()]
        );
    }
    let shared_health = health_client
        .check(tonic_health::pb::HealthCheckRequest {
            service: "metalbondd.shared_state".into(),
        })
        .await
        .expect("health check")
        .into_inner()
        .status;
    assert_eq!(
        shared_health,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let _ = api_c.daemon.get_status(pb::GetStatusRequest {}).await;
    // A key under the prefix that is not a canonical route is skipped and
    // counted, never applied.
    cluster.put("/metalbondd/routes/100#10.0.5.0/24#2001:db8::5", "");
    wait_status(&c.sock, "skipped key counted", |s| s.skipped_keys >= 1).await;
    expect_quiet(&mut sub, "a non-canonical key").await;
}

/// With etcd authentication on, a server with the right password writes and
/// watches; one with a wrong password refuses writes with a clear message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_authentication_with_a_password_file() {
    let Some(cluster) = EtcdCluster::start("e2e_etcd auth", 1) else {
        return;
    };
    for args in [
        &["user", "add", "root", "--new-user-password", "s3cret"][..],
        &["user", "grant-role", "root", "root"],
        &["auth", "enable"],
    ] {
        let (code, out, err) = cluster.etcdctl(args);
        assert_eq!(code, Some(0), "etcdctl {args:?}: {out} {err}");
    }
    let dir = common::unique_temp_dir();
    let good = dir.join("good");
    let bad = dir.join("bad");
    std::fs::write(&good, "s3cret\n").unwrap();
    std::fs::write(&bad, "wrong\n").unwrap();
    let start = |pw: &std::path::Path| {
        format!(
            "[server]\nkeepalive = 3600\n[store]\nbackend = \"etcd\"\n[store.etcd]\nendpoints = {}\n\
             username = \"root\"\npassword_file = {:?}\nrequest_timeout = \"2s\"\n",
            cluster.endpoints_toml(),
            pw.to_str().unwrap()
        )
    };
    let (ok, ok_listen, _) = Daemon::start_with_config_v4(&start(&good)).await;
    let (refused, _, _) = Daemon::start_with_config_v4(&start(&bad)).await;
    let mut sub = subscriber_of_vni_100(ok_listen).await;

    let r = "100#10.0.7.0/24@2001:db8::7";
    api::inject(&ok.api_socket(), &[r]).await;
    expect_next(&mut sub, add(route(r)), "injected with a password").await;
    let (code, out, err) = cluster.etcdctl(&[
        "--user",
        "root:s3cret",
        "get",
        "--prefix",
        "--keys-only",
        "/metalbondd/routes/",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(&format!("/metalbondd/routes/{r}")), "{out}");

    let err = announce_unavailable(
        &refused.api_socket(),
        "100#10.0.8.0/24@2001:db8::8",
        "a wrong password",
    )
    .await;
    assert!(
        err.message().contains("authenticate") && err.message().contains("not announced"),
        "{}",
        err.message()
    );
    let s = shared_status(&refused.api_socket()).await;
    assert!(s.degraded && s.reason.contains("authenticat"), "{s:?}");
}

/// One etcd member with TLS on its client URL (client certificates
/// required), killed by PID on drop.
struct TlsEtcd {
    child: std::process::Child,
    url: String,
}

impl Drop for TlsEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Routes go through an `https://` endpoint with a client certificate;
/// a server without one is refused by etcd and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_tls_with_a_client_certificate() {
    let Some(bin) = common::etcd::etcd_binary("e2e_etcd tls") else {
        return;
    };
    let dir = common::unique_temp_dir();
    let ca = common::tls::Ca::new("etcd test CA");
    let ca_file = ca.write(&dir.join("ca.pem"));
    let server = ca.issue(&dir, "etcd", &["127.0.0.1"], false);
    let client = ca.issue(&dir, "metalbondd", &["metalbondd"], false);
    let port = |_| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (cport, pport) = (port(0), port(1));
    let url = format!("https://127.0.0.1:{cport}");
    let peer = format!("http://127.0.0.1:{pport}");
    let log = std::fs::File::create(dir.join("etcd.log")).unwrap();
    let child = std::process::Command::new(bin)
        .args(["--name", "t0", "--data-dir"])
        .arg(dir.join("t0.etcd"))
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .args(["--initial-cluster", &format!("t0={peer}")])
        .arg("--cert-file")
        .arg(&server.cert)
        .arg("--key-file")
        .arg(&server.key)
        .arg("--trusted-ca-file")
        .arg(&ca_file)
        .arg("--client-cert-auth")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start etcd");
    let etcd = TlsEtcd { child, url };
    let config = |identity: bool| {
        let mut text = format!(
            "[server]\nkeepalive = 3600\n[store]\nbackend = \"etcd\"\n[store.etcd]\nendpoints = [{:?}]\n\
             ca = {:?}\nrequest_timeout = \"2s\"\n",
            etcd.url,
            ca_file.to_str().unwrap()
        );
        if identity {
            text.push_str(&format!(
                "cert = {:?}\nkey = {:?}\n",
                client.cert.to_str().unwrap(),
                client.key.to_str().unwrap()
            ));
        }
        text
    };
    let (with_cert, listen, _) = Daemon::start_with_config_v4(&config(true)).await;
    let (without_cert, _, _) = Daemon::start_with_config_v4(&config(false)).await;
    // etcd may still be starting: the status says when the server synced.
    wait_status(&with_cert.api_socket(), "TLS server in sync", |s| {
        !s.degraded && s.revision > 0
    })
    .await;
    let mut sub = subscriber_of_vni_100(listen).await;
    let r = "100#10.0.6.0/24@2001:db8::6";
    api::inject(&with_cert.api_socket(), &[r]).await;
    expect_next(&mut sub, add(route(r)), "injected over TLS").await;
    assert_eq!(
        table_routes(&with_cert.api_socket()).await,
        vec![r.to_string()]
    );

    let s = wait_status(&without_cert.api_socket(), "no client certificate", |s| {
        s.degraded
    })
    .await;
    assert!(s.reason.contains("etcd"), "{s:?}");
    let err = announce_unavailable(
        &without_cert.api_socket(),
        "100#10.0.8.0/24@2001:db8::8",
        "no client certificate",
    )
    .await;
    assert!(err.message().contains("not announced"), "{}", err.message());
}

/// `mbctl -o json --socket SOCK fleet`, polled (bounded) until `want` holds.
async fn wait_fleet(sock: &std::path::Path, what: &str, want: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let out = run_args(&["--socket", sock.to_str().unwrap(), "-o", "json", "fleet"]).await;
        let doc = out.json();
        if want(&doc) {
            return doc;
        }
        assert!(Instant::now() < deadline, "{what}: fleet still {doc}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn member_names(doc: &Value) -> Vec<String> {
    let mut names: Vec<String> = doc["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_server_registers_in_the_fleet_and_disagreement_is_named() {
    let Some(cluster) = EtcdCluster::start("e2e_etcd fleet", 3) else {
        return;
    };
    let dirs: Vec<PathBuf> = (0..3)
        .map(|_| common::unique_temp_dir().join("state"))
        .collect();
    let a = start_named_server(&cluster, &dirs[0], Some("rs-a")).await;
    let b = start_named_server(&cluster, &dirs[1], Some("rs-b")).await;
    let c = start_named_server(&cluster, &dirs[2], Some("rs-c")).await;

    // Each registers under a lease; any server lists all three, from etcd.
    let doc = wait_fleet(&c.sock, "three members", |d| member_names(d).len() == 3).await;
    assert_eq!(doc["source"], "etcd", "{doc}");
    assert_eq!(member_names(&doc), ["rs-a", "rs-b", "rs-c"]);
    assert_eq!(
        doc["members"][0]["name"], "rs-c",
        "this server first: {doc}"
    );
    assert_eq!(doc["disagreeing_vnis"], serde_json::json!([]), "{doc}");
    let keys = cluster.keys("/metalbondd/fleet/");
    assert_eq!(
        keys,
        [
            "/metalbondd/fleet/rs-a",
            "/metalbondd/fleet/rs-b",
            "/metalbondd/fleet/rs-c"
        ]
    );

    // A peer announces to A only: C names VNI 300 (A's fresh record).
    let mut peer = RawPeer::established(a.listen).await;
    peer.announce(route("300#10.3.0.0/24@2001:db8::3")).await;
    let doc = wait_fleet(&c.sock, "VNI 300 disagrees", |d| {
        d["disagreeing_vnis"]
            .as_array()
            .is_some_and(|v| !v.is_empty())
    })
    .await;
    let dis = doc["disagreeing_vnis"].as_array().unwrap();
    assert_eq!(dis.len(), 1, "{doc}");
    assert_eq!(dis[0]["vni"], 300);
    let a_value = dis[0]["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["member"] == "rs-a")
        .unwrap_or_else(|| panic!("{doc}"));
    assert_eq!(a_value["routes"], 1, "{doc}");

    // `mbctl diff` on C, A and B named by their member names (resolved
    // through the fleet's records): exactly that route, exit 1.
    let out = run_args(&[
        "--socket",
        c.sock.to_str().unwrap(),
        "-o",
        "json",
        "diff",
        "--vni",
        "300",
        "rs-a",
        "rs-b",
    ])
    .await;
    assert_eq!(out.code, Some(1), "{out:?}");
    let diff: Value = serde_json::from_str(&out.stdout).expect("diff JSON");
    assert_eq!(diff["only_b"], serde_json::json!([]), "{diff}");
    let only_a = diff["only_a"].as_array().unwrap();
    assert_eq!(only_a.len(), 1, "{diff}");
    assert_eq!(only_a[0]["prefix"], "10.3.0.0/24", "{diff}");
    assert_eq!(only_a[0]["next_hop"]["address"], "2001:db8::3", "{diff}");

    // The disagreement has an age; it settles after 5 s (A's peer route is
    // not shared through etcd, so it never goes away).
    let age = |d: &Value| {
        d["disagreeing_for_ms"]
            .as_u64()
            .unwrap_or_else(|| panic!("{d}"))
    };
    assert_eq!(dis[0]["settled"], age(&dis[0]) >= 5_000, "{doc}");
    let doc = wait_fleet(&c.sock, "VNI 300 settled", |d| {
        d["disagreeing_vnis"][0]["settled"] == true
    })
    .await;
    assert!(age(&doc["disagreeing_vnis"][0]) >= 5_000, "{doc}");
    let text = run_args(&["--socket", c.sock.to_str().unwrap(), "fleet"]).await;
    let text = text.ok();
    assert!(
        text.contains("VNIs where members disagree: 1\n") && !text.contains("settling"),
        "{text}"
    );

    // The metrics of C count the members and the settled disagreeing VNI
    // (polled: each scrape computes a view of its own).
    let deadline = Instant::now() + WAIT;
    loop {
        let body = common::http::get(c.metrics, "/metrics").await.body;
        if body.contains("metalbondd_fleet_disagreeing_vnis 1") {
            assert!(body.contains("metalbondd_fleet_members 3"), "{body}");
            assert!(body.contains("metalbondd_fleet_settling_vnis 0"), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "not settled in metrics: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // B stops: it revokes its lease and leaves the fleet at once (long
    // before its lease would expire).
    let stopped = Instant::now();
    b.daemon.terminate(WAIT).expect("B stops");
    wait_fleet(&c.sock, "B gone", |d| member_names(d) == ["rs-a", "rs-c"]).await;
    assert!(
        stopped.elapsed() < Duration::from_secs(8),
        "B left only when its lease expired"
    );
    drop(peer);
}

/// The revision the current etcd header reports (`etcdctl endpoint status`).
/// Waits (bounded) until the kernel reports `pid` stopped (state `T`).
fn wait_stopped(pid: libc::pid_t) {
    let deadline = Instant::now() + WAIT;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The state follows the command name in parentheses.
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next());
        if state == Some('T') {
            return;
        }
        assert!(Instant::now() < deadline, "{pid} not stopped: {stat}");
        std::thread::yield_now();
    }
}

fn etcd_revision(cluster: &EtcdCluster) -> i64 {
    let (code, out, err) = cluster.etcdctl(&["endpoint", "status", "-w", "json"]);
    assert_eq!(code, Some(0), "{err}");
    let doc: Value = serde_json::from_str(&out).expect("endpoint status JSON");
    doc[0]["Status"]["header"]["revision"]
        .as_i64()
        .unwrap_or_else(|| panic!("no revision in {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_watch_revision_resyncs_with_the_differences_only() {
    let Some(mut cluster) = EtcdCluster::start("e2e_etcd compaction", 1) else {
        return;
    };
    let s = start_server(&cluster, &common::unique_temp_dir().join("state")).await;
    let mut sub = subscriber_of_vni_100(s.listen).await;
    let (kept, gone, new) = (
        "100#10.0.1.0/24@2001:db8::1",
        "100#10.0.2.0/24@2001:db8::2",
        "100#10.0.3.0/24@2001:db8::3",
    );
    cluster.put(&format!("/metalbondd/routes/{kept}"), "");
    cluster.put(&format!("/metalbondd/routes/{gone}"), "");
    expect_next(&mut sub, add(route(kept)), "kept").await;
    expect_next(&mut sub, add(route(gone)), "gone").await;

    // The server is frozen (SIGSTOP) while etcd restarts (its watch
    // connection dies with nothing in flight), changes, and compacts away
    // the revisions the server has not seen: when the server thaws, its watch
    // is broken and the revision it resumes from is gone.
    let pid = s.daemon.pid() as libc::pid_t;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    // The signal is delivered asynchronously: until the kernel reports the
    // process stopped, it could still see etcd go away and take the outage
    // path instead of the compaction one.
    wait_stopped(pid);
    cluster.kill_member(0);
    cluster.restart_all();
    cluster.put(&format!("/metalbondd/routes/{new}"), "");
    let out = cluster.etcdctl(&["del", &format!("/metalbondd/routes/{gone}")]);
    assert_eq!(out.0, Some(0), "{out:?}");
    let revision = etcd_revision(&cluster).to_string();
    let out = cluster.etcdctl(&["compact", &revision]);
    assert_eq!(out.0, Some(0), "{out:?}");
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);

    // A resync from a snapshot: exactly the two differences on the wire
    // (the REMOVE and the ADD, in table order), nothing for the kept route.
    let mut got = vec![sub.expect_update(WAIT).await, sub.expect_update(WAIT).await];
    got.sort_by_key(|u| format!("{u:?}"));
    let mut want = vec![rem(route(gone)), add(route(new))];
    want.sort_by_key(|u| format!("{u:?}"));
    assert_eq!(got, want);
    expect_quiet(&mut sub, "nothing else after the resync").await;
    assert!(
        s.daemon
            .wait_for_line(|l| l.contains("revision compacted; resyncing"), WAIT)
            .await
            .is_some(),
        "no compaction in the log:\n{}",
        s.daemon.logs()
    );
    let status = wait_status(&s.sock, "resynced", |st| st.resyncs >= 1).await;
    assert_eq!(status.routes, 2, "{status:?}");
    assert!(!status.degraded, "{status:?}");
    assert_eq!(
        table_routes(&s.sock).await,
        vec![kept.to_string(), new.to_string()]
    );
}

/// A server whose `max_txn_ops` (default 1024) is above what etcd accepts
/// (its default `--max-txn-ops` is 128) writes a bulk call anyway: the
/// refused transactions go again at 128, the fall-back is logged once, and
/// every route of the call is in etcd and on a subscriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_write_falls_back_to_the_transaction_size_etcd_accepts() {
    let Some(cluster) = EtcdCluster::start("e2e_etcd max-txn-ops", 1) else {
        return;
    };
    let server = start_server(&cluster, &common::unique_temp_dir().join("state")).await;
    let mut sub = subscriber_of_vni_100(server.listen).await;

    let texts: Vec<String> = (0..1_000u32)
        .map(|i| format!("100#10.{}.{}.0/24@2001:db8::1", i / 256, i % 256))
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    api::inject(&server.sock, &refs).await;
    assert_eq!(cluster.keys("/metalbondd/routes/").len(), 1_000);
    assert!(
        server
            .daemon
            .wait_for_log("etcd refuses transactions this large", WAIT)
            .await,
        "the fall-back is logged: {}",
        server.daemon.logs()
    );
    // It names the transaction etcd refused (the whole call) and the new size.
    let logs = server.daemon.logs();
    assert!(
        logs.contains("refused=1000 now=128"),
        "the WARN names the sizes: {logs}"
    );
    let updates = sub.expect_updates(1_000, WAIT).await;
    let seen: std::collections::HashSet<_> = updates
        .iter()
        .inspect(|u| assert_eq!(u.action, metalbondd::wire::Action::Add, "{u:?}"))
        .map(|u| u.route)
        .collect();
    assert_eq!(seen.len(), 1_000, "every route reached the subscriber once");

    // Withdrawn in one call: the smaller size is remembered (one WARN).
    api::withdraw(&server.sock, &refs).await;
    assert!(cluster.keys("/metalbondd/routes/").is_empty());
    assert_eq!(
        server
            .daemon
            .logs()
            .matches("etcd refuses transactions this large")
            .count(),
        1
    );
}

/// A server switched from the redb backend to etcd announces what etcd
/// holds, not the routes injected under redb (those stay in its store), and
/// says so once at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_injected_under_redb_are_not_announced_after_switching_to_etcd() {
    let Some(cluster) = EtcdCluster::start("e2e_etcd backend switch", 1) else {
        return;
    };
    let state = common::unique_temp_dir().join("state");
    let redb_config = "[server]\nkeepalive = 3600\n";
    let (redb, _, _) = Daemon::start_with_config_v4_in(redb_config, Some(&state)).await;
    let old = "100#10.0.5.0/24@2001:db8::5";
    api::inject(&redb.api_socket(), &[old]).await;
    assert!(redb.terminate(WAIT).is_some_and(|s| s.success()));

    let server = start_server(&cluster, &state).await;
    let shared = "100#10.0.6.0/24@2001:db8::6";
    api::inject(&server.sock, &[shared]).await;
    assert_eq!(table_routes(&server.sock).await, vec![shared.to_string()]);
    let logs = server.daemon.logs();
    assert!(
        logs.contains("routes injected under the redb backend are not announced")
            && logs.contains("routes=1"),
        "{logs}"
    );
}

/// A server restarted while etcd is down announces the routes it last
/// applied from etcd (its local cache); when etcd returns, it resyncs and
/// its subscriber sees nothing for the unchanged routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restarted_during_an_etcd_outage_announces_its_cached_routes() {
    let Some(mut cluster) = EtcdCluster::start("e2e_etcd cache", 1) else {
        return;
    };
    let state = common::unique_temp_dir().join("state");
    let first = start_server(&cluster, &state).await;
    let (r1, r2) = ("100#10.0.1.0/24@2001:db8::1", "100#10.0.2.0/24@2001:db8::2");
    api::inject(&first.sock, &[r1, r2]).await;
    api::withdraw(&first.sock, &[r2]).await;
    // The cache is written in the background, once changes stop coming:
    // with the withdrawal (in the write of both changes or after it).
    assert!(
        first.daemon.wait_for_log("removed=1", WAIT).await,
        "{}",
        first.daemon.logs()
    );
    cluster.stop_all();
    assert!(first.daemon.terminate(WAIT).is_some_and(|s| s.success()));

    let second = start_server(&cluster, &state).await;
    assert!(second
        .daemon
        .logs()
        .contains("shared state (etcd) not reachable at start"));
    let mut sub = RawPeer::connect(second.listen).await;
    sub.handshake(3600).await;
    sub.subscribe(100).await;
    expect_next(&mut sub, add(route(r1)), "the cached route, etcd down").await;
    expect_quiet(&mut sub, "only the cached state").await;
    assert!(shared_status(&second.sock).await.degraded);

    cluster.restart_all();
    wait_status(&second.sock, "etcd back", |s| !s.degraded && s.revision > 0).await;
    expect_quiet(&mut sub, "resync of an unchanged state").await;
    assert_eq!(table_routes(&second.sock).await, vec![r1.to_string()]);
}
