//! The client (hypervisor) core against the real `metalbondd` server binary:
//! connection tasks, subscriptions, announcements, multi-server reference
//! counting, reconnects (PROTOCOL.md sections 3 and 5), and the agent's
//! counters.
//!
//! One test runs an agent in-process inside a network namespace to check
//! its kernel counters; like the netns suites it needs root and `ip`
//! (iproute2), and without them prints why it was skipped and passes,
//! unless `CI=true`, where it fails instead.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::netns::{ip_in, run_in_netns, wait_table, NetnsEnv};
use common::*;
use metalbondd::client::{
    Agent, AgentStats, BackoffConfig, Client, ClientConfig, ClientEvent, ClientSettings, Desired,
    ReceivedRoutes, ServerId, DEFAULT_HOLD_TIME, DEFAULT_STALE_TIME,
};
use metalbondd::wire::{Action, Route, Update, Vni};
use tokio::sync::mpsc;

/// Bound on a reconnect: the test backoff is capped at 1 s (+ connect and
/// handshake), so this is generous.
const RECONNECT: Duration = Duration::from_secs(15);

/// Fast reconnects so that tests do not wait for production backoff.
fn config() -> ClientConfig {
    ClientConfig {
        keepalive_secs: 0,
        backoff: BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            ..BackoffConfig::default()
        },
        stable_after: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(2),
        sync: true,
        tls: None,
    }
}

fn desired(subs: &[u32], announce: &[Route]) -> Desired {
    Desired {
        subscriptions: subs.iter().map(|&v| Vni(v)).collect(),
        announcements: announce.iter().copied().collect(),
    }
}

/// The client's event stream, with every event also applied to a
/// [`ReceivedRoutes`] the way the agent will (Update -> add/remove, Down ->
/// drop_server).
struct Events {
    rx: mpsc::Receiver<ClientEvent>,
    received: ReceivedRoutes,
    seen: Vec<ClientEvent>,
}

impl Events {
    fn new(rx: mpsc::Receiver<ClientEvent>) -> Self {
        Events {
            rx,
            received: ReceivedRoutes::new(),
            seen: Vec::new(),
        }
    }

    fn apply(&mut self, ev: &ClientEvent) {
        match ev {
            ClientEvent::Update { server, update } => match update.action {
                Action::Add => {
                    self.received.add(*server, update.route);
                }
                Action::Remove => {
                    self.received.remove(*server, update.route);
                }
            },
            ClientEvent::Down { server, .. } => {
                self.received.drop_server(*server);
            }
            ClientEvent::Up { .. } | ClientEvent::Synced { .. } => {}
        }
    }

    /// Consumes events until one matches `pred` (bounded by `timeout`).
    async fn wait(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&ClientEvent) -> bool,
    ) -> ClientEvent {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(ev)) => {
                    self.apply(&ev);
                    self.seen.push(ev.clone());
                    if pred(&ev) {
                        return ev;
                    }
                }
                Ok(None) => panic!("event channel closed while waiting for {what}"),
                Err(_) => panic!(
                    "no {what} within {timeout:?}; events so far: {:#?}",
                    self.seen
                ),
            }
        }
    }

    async fn up(&mut self, server: usize, timeout: Duration) {
        let s = ServerId(server);
        self.wait(
            &format!("Up of {s}"),
            timeout,
            |e| matches!(e, ClientEvent::Up { server, .. } if *server == s),
        )
        .await;
    }

    async fn down(&mut self, server: usize) -> String {
        let s = ServerId(server);
        match self
            .wait(
                &format!("Down of {s}"),
                T,
                |e| matches!(e, ClientEvent::Down { server, .. } if *server == s),
            )
            .await
        {
            ClientEvent::Down { reason, .. } => reason,
            _ => unreachable!(),
        }
    }

    async fn update(&mut self, server: usize, want: Update) {
        let s = ServerId(server);
        self.wait(&format!("{want:?} from {s}"), T, |e| {
            matches!(e, ClientEvent::Update { server, update } if *server == s && *update == want)
        })
        .await;
    }

    /// Consumes events until the received routes satisfy `pred` (bounded).
    async fn until_received(&mut self, what: &str, pred: impl Fn(&ReceivedRoutes) -> bool) {
        let deadline = tokio::time::Instant::now() + T;
        while !pred(&self.received) {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(ev)) => {
                    self.apply(&ev);
                    self.seen.push(ev);
                }
                Ok(None) => panic!("event channel closed while waiting for {what}"),
                Err(_) => panic!("no {what} within {T:?}; events so far: {:#?}", self.seen),
            }
        }
    }

    /// Asserts that no event arrives for [`QUIET`].
    async fn quiet(&mut self) {
        if let Ok(Some(ev)) = tokio::time::timeout(QUIET, self.rx.recv()).await {
            panic!("unexpected event {ev:?}");
        }
    }
}

fn start_client(servers: &[SocketAddr], desired: Desired) -> (Client, Events) {
    let (tx, rx) = mpsc::channel(1024);
    let servers: Vec<_> = servers.iter().map(|&a| a.into()).collect();
    let client = Client::start(&servers, config(), desired, tx);
    (client, Events::new(rx))
}

/// A subscriber of `vni` whose subscription the server has processed.
async fn subscriber(addr: SocketAddr, vni: u32) -> RawPeer {
    let mut p = RawPeer::established(addr).await;
    p.subscribe(vni).await;
    // The SUBSCRIBE is handed to the table before the echo is written.
    p.ping().await;
    p
}

/// Starts a daemon that also listens on `addr` (besides the harness's
/// `[::1]:0`) and waits (bounded) until that listener is bound: the harness
/// returns as soon as the first listener logs.
async fn start_daemon_on(addr: SocketAddr) -> Daemon {
    let arg = addr.to_string();
    let d = Daemon::start(&["--listen", &arg]);
    let needle = format!("addr={addr}");
    assert!(
        d.wait_for_line(|l| l.contains("listening") && l.contains(&needle), T)
            .await
            .is_some(),
        "daemon did not listen on {addr}:\n{}",
        d.logs()
    );
    d
}

#[tokio::test]
async fn establishes_subscribes_and_receives_dump_and_live_updates() {
    let d = Daemon::start(&[]);
    let mut ann = RawPeer::established(d.addr).await;
    let r1 = route("100#10.0.1.0/24@2001:db8::1");
    ann.announce(r1).await;
    ann.ping().await;

    let (client, mut ev) = start_client(&[d.addr], desired(&[100], &[]));
    ev.up(0, T).await;
    // The dump.
    ev.update(0, add(r1)).await;
    // Live updates.
    let r2 = route("100#10.0.2.0/24@2001:db8::2#nat#1024#2048");
    ann.announce(r2).await;
    ev.update(0, add(r2)).await;
    ann.withdraw(r1).await;
    ev.update(0, rem(r1)).await;
    // Nothing from a VNI the client did not subscribe to.
    ann.announce(route("200#10.0.3.0/24@2001:db8::3")).await;
    ev.quiet().await;

    // A subscription made at run time applies to the live session.
    client.subscribe(Vni(300)).await;
    // The (empty) dump is complete: what follows is live.
    ev.wait("Synced of VNI 300", T, |e| {
        matches!(e, ClientEvent::Synced { vni: Vni(300), .. })
    })
    .await;
    let r3 = route("300#10.0.4.0/24@2001:db8::4");
    ann.announce(r3).await;
    ev.update(0, add(r3)).await;
    // Unsubscribed: no more updates of that VNI.
    client.unsubscribe(Vni(300)).await;
    // Let the UNSUBSCRIBE reach the server (absence check, short).
    tokio::time::sleep(QUIET).await;
    ann.withdraw(r3).await;
    ev.quiet().await;

    assert_eq!(
        ev.received.next_hops(r2.vni, r2.dest),
        vec!["2001:db8::2".parse::<std::net::Ipv6Addr>().unwrap()]
    );
    client.shutdown().await;
}

/// Our client and our server negotiate SYNC (PROTOCOL.md section 8): the
/// Up says so, and a Synced event follows the last UPDATE of every dump,
/// an empty one included, at start and for a subscription made at run time.
#[tokio::test]
async fn our_client_and_server_negotiate_sync_and_each_dump_ends_with_synced() {
    let d = Daemon::start(&[]);
    let mut ann = RawPeer::established(d.addr).await;
    let routes = [
        route("100#10.0.1.0/24@2001:db8::1"),
        route("100#10.0.2.0/24@2001:db8::2"),
    ];
    for r in routes {
        ann.announce(r).await;
    }
    ann.ping().await;

    let (client, mut ev) = start_client(&[d.addr], desired(&[100, 200], &[]));
    let up = ev
        .wait("Up", T, |e| matches!(e, ClientEvent::Up { .. }))
        .await;
    assert!(matches!(up, ClientEvent::Up { sync: true, .. }), "{up:?}");
    for vni in [100, 200] {
        ev.wait(
            &format!("Synced of VNI {vni}"),
            T,
            |e| matches!(e, ClientEvent::Synced { vni: v, .. } if *v == Vni(vni)),
        )
        .await;
        if vni == 100 {
            // Everything of the dump came before its SYNC.
            for r in routes {
                assert_eq!(ev.received.next_hops(r.vni, r.dest).len(), 1, "{r}");
            }
        }
    }
    // A run-time subscription of an empty VNI: a Synced right away.
    client.subscribe(Vni(300)).await;
    ev.wait("Synced of VNI 300", T, |e| {
        matches!(e, ClientEvent::Synced { vni: Vni(300), .. })
    })
    .await;
    // Exactly one Synced per VNI, and none more.
    ev.quiet().await;
    let synced = ev
        .seen
        .iter()
        .filter(|e| matches!(e, ClientEvent::Synced { .. }))
        .count();
    assert_eq!(synced, 3, "{:#?}", ev.seen);
    client.shutdown().await;
}

#[tokio::test]
async fn client_announcements_reach_subscribers() {
    let d = Daemon::start(&[]);
    let mut sub = subscriber(d.addr, 100).await;
    let c1 = route("100#10.1.0.0/24@2001:db8::c1");
    let (client, mut ev) = start_client(&[d.addr], desired(&[], &[c1]));
    ev.up(0, T).await;
    assert_eq!(sub.expect_update(T).await, add(c1));

    // Live announce and withdraw.
    let c2 = route("100#10.2.0.0/24@2001:db8::c2#lb");
    client.announce(c2).await;
    assert_eq!(sub.expect_update(T).await, add(c2));
    client.withdraw(c1).await;
    assert_eq!(sub.expect_update(T).await, rem(c1));
    // Duplicates are not re-sent.
    client.announce(c2).await;
    sub.expect_no_update(QUIET).await;

    // Shutting the client down closes its session: its routes are withdrawn.
    client.shutdown().await;
    assert_eq!(sub.expect_update(T).await, rem(c2));
}

#[tokio::test]
async fn two_servers_reference_counting_and_reconnect_after_restart() {
    let d0 = Daemon::start(&[]);
    let d1 = Daemon::start(&[]);
    let addr0 = d0.addr;
    let r = route("100#10.0.1.0/24@2001:db8::1");
    let mine = route("100#10.9.0.0/24@2001:db8::99");

    let mut ann0 = RawPeer::established(addr0).await;
    let mut ann1 = RawPeer::established(d1.addr).await;
    ann0.announce(r).await;
    ann1.announce(r).await;
    ann0.ping().await;
    ann1.ping().await;

    let (client, mut ev) = start_client(&[addr0, d1.addr], desired(&[100], &[mine]));
    // The route arrives from both servers, in whatever order.
    ev.until_received("the route from both servers", |rr| {
        rr.provider_count(&r) == 2
    })
    .await;
    let hops = vec!["2001:db8::1".parse::<std::net::Ipv6Addr>().unwrap()];
    assert_eq!(ev.received.next_hops(r.vni, r.dest), hops);

    // Kill server 0: Down for it; the route stays provided by server 1.
    drop(ann0);
    drop(d0);
    let reason = ev.down(0).await;
    assert!(!reason.is_empty());
    assert_eq!(ev.received.provider_count(&r), 1);
    assert_eq!(ev.received.next_hops(r.vni, r.dest), hops);

    // Restart it on the same port: the client reconnects by itself,
    // re-subscribes (gets the route again, in the dump or live) and
    // re-announces its own route.
    let d0 = start_daemon_on(addr0).await;
    let mut ann0 = RawPeer::established(addr0).await;
    ann0.announce(r).await;
    let mut sub0 = subscriber(addr0, 100).await;
    ev.up(0, RECONNECT).await;
    ev.update(0, add(r)).await;
    assert_eq!(ev.received.provider_count(&r), 2);
    // The subscriber hears the other announcer's route and the client's.
    let got = sub0.expect_updates(2, T).await;
    assert_same_updates(&got, &[add(r), add(mine)], "routes on the restarted server");
    // Server 1 never noticed anything: no duplicate events from it.
    assert!(
        !ev.seen
            .iter()
            .any(|e| matches!(e, ClientEvent::Down { server, .. } if *server == ServerId(1))),
        "{:#?}",
        ev.seen
    );
    client.shutdown().await;
    drop(d0);
}

#[tokio::test]
async fn keeps_retrying_until_a_server_comes_up() {
    let addr = free_addr();
    let (client, mut ev) = start_client(&[addr], desired(&[100], &[]));
    // Nothing listens: failed attempts are reported as Down (without Up).
    let reason = ev.down(0).await;
    assert!(reason.contains("connect"), "{reason}");
    ev.down(0).await;
    assert!(!ev.seen.iter().any(|e| matches!(e, ClientEvent::Up { .. })));

    let d = start_daemon_on(addr).await;
    let mut ann = RawPeer::established(addr).await;
    let r = route("100#10.0.1.0/24@2001:db8::1");
    ann.announce(r).await;
    ev.up(0, RECONNECT).await;
    ev.update(0, add(r)).await;
    client.shutdown().await;
    drop(d);
}

#[tokio::test]
async fn keepalives_keep_the_session_up_beyond_the_timeout() {
    // The server negotiates 1 s and drops a silent client after 2.5 s.
    let d = Daemon::start(&["--keepalive", "1"]);
    let (client, mut ev) = start_client(&[d.addr], desired(&[100], &[]));
    ev.up(0, T).await;
    // The (empty) dump of VNI 100 ends with a SYNC.
    ev.wait("Synced", T, |e| matches!(e, ClientEvent::Synced { .. }))
        .await;
    // An absence over two timeout windows: no Down means keepalives flowed.
    if let Ok(Some(e)) = tokio::time::timeout(Duration::from_secs(6), ev.rx.recv()).await {
        panic!("unexpected event {e:?}");
    }
    // And the session still works.
    let mut ann = RawPeer::connect(d.addr).await;
    ann.handshake(1).await;
    let r = route("100#10.0.1.0/24@2001:db8::1");
    ann.announce(r).await;
    ev.update(0, add(r)).await;
    client.shutdown().await;
}

/// Polls `stats` until `pred` holds (bounded by [`T`]).
async fn until_stats(what: &str, stats: &AgentStats, pred: impl Fn(&AgentStats) -> bool) {
    let deadline = tokio::time::Instant::now() + T;
    while !pred(stats) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {what} within {T:?}: {stats:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn agent_counts_sessions_updates_and_received_routes() {
    let d = Daemon::start(&[]);
    let mut ann = RawPeer::established(d.addr).await;
    let r = route("100#10.0.1.0/24@2001:db8::1");
    ann.announce(r).await;
    ann.ping().await;

    let mine = route("100#10.9.0.0/24@2001:db8::99");
    let agent = Agent::start(ClientSettings {
        servers: vec![d.addr.into()],
        subscriptions: vec![Vni(100)],
        announcements: vec![mine],
        install_routes: BTreeMap::new(),
        tun: None,
        ipv4_only: false,
        connection: config(),
        hold_time: DEFAULT_HOLD_TIME,
        stale_time: DEFAULT_STALE_TIME,
        cleanup: false,
        flush_at_start: false,
    })
    .await
    .unwrap();
    let stats = agent.stats.clone();
    until_stats("established session with the route received", &stats, |s| {
        s.servers_up.load(Relaxed) == 1 && s.received_routes.load(Relaxed) == 1
    })
    .await;
    assert_eq!(stats.servers_configured.load(Relaxed), 1);
    assert!(stats.session_ups.load(Relaxed) >= 1);
    assert!(stats.updates_in.load(Relaxed) >= 1);
    // Its own announcement.
    assert!(stats.updates_out.load(Relaxed) >= 1);
    assert!(stats.bytes_in.load(Relaxed) > 0);
    assert!(stats.bytes_out.load(Relaxed) > 0);
    assert!(stats.session_downs().is_empty(), "{stats:#?}");
    assert!(stats.protocol_errors().is_empty(), "{stats:#?}");
    // No table mapped: the kernel is never touched.
    assert!(stats.installed_routes().is_empty());
    assert_eq!(stats.netlink_replace.ok.load(Relaxed), 0);
    assert_eq!(stats.netlink_dump.ok.load(Relaxed), 0);

    // Another route, live.
    let r2 = route("100#10.0.2.0/24@2001:db8::2");
    ann.announce(r2).await;
    until_stats("the second route", &stats, |s| {
        s.received_routes.load(Relaxed) == 2
    })
    .await;
    assert!(stats.updates_in.load(Relaxed) >= 2);

    // The server goes away: the session ends (the server closed it; a
    // reset if the close raced a keepalive), the routes are dropped.
    drop(ann);
    d.terminate(T);
    until_stats("the end of the session", &stats, |s| {
        let downs = s.session_downs();
        s.servers_up.load(Relaxed) == 0
            && (downs.contains_key("peer_closed") || downs.contains_key("io_error"))
    })
    .await;
    assert_eq!(stats.received_routes.load(Relaxed), 0);
    assert_eq!(stats.servers_configured.load(Relaxed), 1);
    assert!(stats.protocol_errors().is_empty(), "{stats:#?}");
    agent.shutdown().await;
}

#[test]
fn agent_counts_kernel_routes_in_a_netns() {
    let Some(env) = NetnsEnv::for_test("agent_counts_kernel_routes_in_a_netns") else {
        return;
    };
    let ns = env.ns.clone();
    // Routes of an earlier run: the server confirms the first, not the second.
    for (dest, hop) in [
        ("10.0.1.0/24", "2001:db8::1"),
        ("10.0.9.0/24", "2001:db8::9"),
    ] {
        ip_in(
            &ns,
            &format!("route add {dest} encap ip6 dst {hop} dev mbt0 table 100 proto 254"),
        );
    }
    let d = env.server("s");
    let addr = d.addr;
    run_in_netns(&env.ns, move || async move {
        let r1 = route("100#10.0.1.0/24@2001:db8::1");
        let r2 = route("100#10.0.2.0/24@2001:db8::2");
        let mut ann = RawPeer::established(addr).await;
        ann.announce(r1).await;
        ann.announce(r2).await;
        ann.ping().await;

        let agent = Agent::start(ClientSettings {
            servers: vec![addr.into()],
            subscriptions: vec![Vni(100)],
            announcements: vec![],
            install_routes: BTreeMap::from([(Vni(100), BTreeSet::from([100]))]),
            tun: Some("mbt0".into()),
            ipv4_only: false,
            connection: config(),
            hold_time: Duration::from_secs(30),
            stale_time: Duration::from_secs(1),
            cleanup: false,
            flush_at_start: false,
        })
        .await
        .unwrap();
        let stats = agent.stats.clone();
        // The start-up dump of the one mapped table.
        assert_eq!(stats.netlink_dump.ok.load(Relaxed), 1);
        assert_eq!(stats.netlink_dump.failed.load(Relaxed), 0);

        // Once the server resynced: both routes installed (the kept one
        // confirmed), the unconfirmed one deleted.
        until_stats("the reconciliation", &stats, |s| {
            s.installed_routes() == BTreeMap::from([(100, 2)])
                && s.netlink_delete.ok.load(Relaxed) >= 1
        })
        .await;
        wait_table(
            &ns,
            100,
            "mbt0",
            &[
                ("10.0.1.0/24", &["2001:db8::1"]),
                ("10.0.2.0/24", &["2001:db8::2"]),
            ],
            &[],
        )
        .await;
        assert!(stats.netlink_replace.ok.load(Relaxed) >= 2);
        assert_eq!(stats.netlink_replace.failed.load(Relaxed), 0);
        assert_eq!(stats.netlink_delete.failed.load(Relaxed), 0);
        assert_eq!(stats.kernel_errors.load(Relaxed), 0);
        assert_eq!(stats.received_routes.load(Relaxed), 2);

        // A withdrawal deletes its route.
        ann.withdraw(r2).await;
        until_stats("the deletion of the withdrawn route", &stats, |s| {
            s.installed_routes() == BTreeMap::from([(100, 1)])
        })
        .await;

        // The server is lost (killed, so it withdraws nothing; the announcer
        // must stay until then, or its disconnect withdraws the route): the
        // route stays for the stale time, then goes.
        drop(d);
        drop(ann);
        until_stats("the loss of the server", &stats, |s| {
            s.servers_up.load(Relaxed) == 0
        })
        .await;
        assert_eq!(stats.installed_routes(), BTreeMap::from([(100, 1)]));
        until_stats("the end of the stale time", &stats, |s| {
            s.installed_routes() == BTreeMap::from([(100, 0)])
        })
        .await;
        wait_table(&ns, 100, "mbt0", &[], &[]).await;
        assert_eq!(stats.netlink_delete.failed.load(Relaxed), 0);
        agent.shutdown().await;
    });
}
