//! The agent shell: its gauges follow events and API changes.

use super::*;
use crate::client::MemoryDataplane;
use crate::wire::{Action, Update};

/// An agent task without dataplane for `servers` (listeners that accept
/// and stay silent, so no connection task reports anything soon),
/// subscribed to VNI 100, as `Agent::start_on` builds it; also the
/// listeners (a third one for a server added later) and the event
/// receiver, which the test never reads.
async fn task() -> (
    AgentTask,
    Vec<tokio::net::TcpListener>,
    mpsc::Receiver<ClientEvent>,
) {
    let mut listeners = Vec::new();
    for _ in 0..3 {
        listeners.push(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let servers: Vec<(ServerId, ServerAddr)> = listeners[..2]
        .iter()
        .enumerate()
        .map(|(i, l)| (ServerId(i), l.local_addr().unwrap().into()))
        .collect();
    let addrs: Vec<ServerAddr> = servers.iter().map(|(_, a)| a.clone()).collect();
    let stats = Arc::new(AgentStats::default());
    let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
    let desired = Desired {
        subscriptions: vec![Vni(100)],
        announcements: BTreeSet::new(),
    };
    let client = Client::start_with_stats(
        &addrs,
        ClientConfig::default(),
        desired.clone(),
        events_tx,
        stats.clone(),
    );
    let planner = Planner::new(
        PlannerConfig {
            servers: servers.clone(),
            desired,
            tables: BTreeMap::new(),
            ipv4_only: false,
            hold_time: DEFAULT_HOLD_TIME,
            stale_time: DEFAULT_STALE_TIME,
            flush_at_start: false,
        },
        false,
    );
    let now = SystemTime::now();
    let task = AgentTask {
        feed: crate::client::feed::Feed::default(),
        planner,
        executor: Executor::new(None, stats),
        client,
        links: servers
            .iter()
            .map(|(id, _)| (*id, Link::new(now)))
            .collect(),
        tun: None,
        store: None,
        cleanup: false,
    };
    task.publish_gauges();
    (task, listeners, events_rx)
}

/// What the serve loop does with one event.
async fn event(t: &mut AgentTask, ev: ClientEvent) {
    t.handle(ev).await;
    // The serve loop completes the operations as they finish; here, at once.
    t.executor.drain(&mut t.planner, now).await;
    t.publish_gauges();
}

/// What the serve loop does with one request.
async fn request<T>(t: &mut AgentTask, make: impl FnOnce(oneshot::Sender<T>) -> AgentRequest) -> T {
    let (tx, rx) = oneshot::channel();
    t.request(make(tx)).await;
    t.publish_gauges();
    rx.await.unwrap()
}

fn add(server: usize, route: &str) -> ClientEvent {
    ClientEvent::Update {
        server: ServerId(server),
        update: Update {
            action: Action::Add,
            route: route.parse().unwrap(),
        },
    }
}

fn down(server: usize) -> ClientEvent {
    ClientEvent::Down {
        server: ServerId(server),
        reason: "server closed the connection".into(),
        label: "peer_closed",
        resolved: Vec::new(),
    }
}

fn up(server: usize) -> ClientEvent {
    let peer: SocketAddr = "[::1]:4711".parse().unwrap();
    ClientEvent::Up {
        server: ServerId(server),
        peer,
        resolved: vec![peer],
        sync: false,
    }
}

/// (configured, up, received)
fn gauges(t: &AgentTask) -> (u64, u64, u64) {
    let s = &t.executor.stats;
    (
        s.servers_configured.load(Relaxed),
        s.servers_up.load(Relaxed),
        s.received_routes.load(Relaxed),
    )
}

#[tokio::test]
async fn gauges_follow_events_and_api_changes() {
    let (mut t, listeners, _events) = task().await;
    assert_eq!(gauges(&t), (2, 0, 0));
    event(&mut t, up(0)).await;
    event(&mut t, up(1)).await;
    assert_eq!(gauges(&t), (2, 2, 0));

    // Distinct routes, whoever provides them; a NAT next hop differing
    // only in its ports is another route.
    event(&mut t, add(0, "100#10.0.1.0/24@2001:db8::1")).await;
    event(&mut t, add(1, "100#10.0.1.0/24@2001:db8::1")).await;
    event(&mut t, add(0, "100#10.0.2.0/24@2001:db8::2")).await;
    event(&mut t, add(0, "100#10.0.3.0/24@2001:db8::3#nat#0#1023")).await;
    event(&mut t, add(0, "100#10.0.3.0/24@2001:db8::3#nat#1024#2047")).await;
    // Not subscribed: not held.
    event(&mut t, add(0, "200#10.0.4.0/24@2001:db8::4")).await;
    assert_eq!(gauges(&t), (2, 2, 4));

    // Server 0 down: only what server 1 provides is left.
    event(&mut t, down(0)).await;
    assert_eq!(gauges(&t), (2, 1, 1));
    // A failed attempt (no Up before) changes no gauge.
    event(&mut t, down(0)).await;
    assert_eq!(gauges(&t), (2, 1, 1));

    // Removing an established server through the API: not up any more,
    // its routes gone; no session down is counted for it.
    let addr1 = t.planner.server_addr(ServerId(1)).unwrap().clone();
    request(&mut t, |r| {
        AgentRequest::Change(ClientChange::RemoveServer(addr1), r)
    })
    .await
    .unwrap();
    assert_eq!(gauges(&t), (1, 0, 0));
    // Events it had queued are ignored.
    event(&mut t, up(1)).await;
    event(&mut t, add(1, "100#10.0.1.0/24@2001:db8::1")).await;
    assert_eq!(gauges(&t), (1, 0, 0));

    let addr2: ServerAddr = listeners[2].local_addr().unwrap().into();
    request(&mut t, |r| {
        AgentRequest::Change(ClientChange::AddServer(addr2.clone()), r)
    })
    .await
    .unwrap();
    // Refused: no change.
    assert!(request(&mut t, |r| AgentRequest::Change(
        ClientChange::AddServer(addr2),
        r
    ))
    .await
    .is_err());
    assert_eq!(gauges(&t), (2, 0, 0));

    // Unsubscribing drops the VNI's received routes.
    event(&mut t, up(0)).await;
    event(&mut t, add(0, "100#10.0.1.0/24@2001:db8::1")).await;
    assert_eq!(gauges(&t), (2, 1, 1));
    request(&mut t, |r| {
        AgentRequest::Change(ClientChange::Unsubscribe(Vni(100)), r)
    })
    .await
    .unwrap();
    assert_eq!(gauges(&t), (2, 1, 0));
    // No route was installed (no table mapped): nothing counted.
    assert!(t.executor.stats.installed_routes().is_empty());
    assert_eq!(t.executor.stats.netlink_replace.ok.load(Relaxed), 0);
}

#[tokio::test]
async fn changes_are_checked_stored_then_applied_on_the_dataplane() {
    let dir = std::env::temp_dir().join(format!("mbd-agent-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Arc::new(Store::open(&dir).unwrap());
    let stored = || StoredClientState::load(&store).unwrap();
    let (mut t, _listeners, _events) = task().await;
    t.store = Some(store.clone());
    let change = |c: ClientChange| move |r| AgentRequest::Change(c, r);

    // No dataplane and no tunnel device: refused before anything is stored.
    assert_eq!(
        request(&mut t, change(ClientChange::SetMapping(Vni(100), 7))).await,
        Err(Refused::Precondition(
            "no tunnel device: start the client with --tun DEV to install routes".into()
        ))
    );
    assert!(stored().is_empty());

    let dp = MemoryDataplane::new();
    t.executor.dataplane = Some(Box::new(dp.clone()));
    t.planner.set_dataplane();
    event(&mut t, up(0)).await;
    event(&mut t, add(0, "100#10.0.1.0/24@2001:db8::1")).await;
    request(&mut t, change(ClientChange::SetMapping(Vni(100), 7)))
        .await
        .unwrap();
    let prefix = crate::kernel::Prefix::new("10.0.1.0".parse().unwrap(), 24);
    assert_eq!(
        dp.routes(),
        BTreeMap::from([((7, prefix), vec!["2001:db8::1".parse().unwrap()])])
    );
    assert_eq!(stored().mappings, BTreeMap::from([(Vni(100), Some(7))]));
    let stats = t.executor.stats.clone();
    assert_eq!(stats.installed_routes(), BTreeMap::from([(7, 1)]));
    assert_eq!(stats.netlink_replace.ok.load(Relaxed), 1);
    assert_eq!(stats.kernel_changes.load(Relaxed), 1);

    // Refused changes store nothing.
    assert_eq!(
        request(&mut t, change(ClientChange::Subscribe(Vni(100)))).await,
        Err(Refused::AlreadyExists(
            "vni: 100 is subscribed already".into()
        ))
    );
    assert_eq!(
        request(&mut t, change(ClientChange::RemoveMapping(Vni(5)))).await,
        Err(Refused::NotFound("vni: 5 is not mapped".into()))
    );
    assert!(stored().subscriptions.is_empty());
    request(&mut t, change(ClientChange::Subscribe(Vni(200))))
        .await
        .unwrap();
    assert_eq!(stored().subscriptions, BTreeMap::from([(Vni(200), true)]));
    assert_eq!(
        request(&mut t, AgentRequest::Subscriptions).await,
        vec![Vni(100), Vni(200)]
    );

    // A failed kernel call is counted where it is made.
    dp.fail(7, prefix, libc::ENOBUFS);
    event(&mut t, add(0, "100#10.0.1.0/24@2001:db8::2")).await;
    assert_eq!(stats.netlink_replace.failed.load(Relaxed), 1);
    assert_eq!(stats.kernel_errors.load(Relaxed), 1);
    assert!(t.planner.next_deadline().is_some(), "a retry is due");
    drop(t);
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

fn op_key(op: &crate::client::DataplaneOp) -> String {
    match op {
        crate::client::DataplaneOp::Replace(r) => format!("replace {} {:?}", r.dest, r.next_hops),
        crate::client::DataplaneOp::Delete { prefix, .. } => format!("delete {prefix}"),
        crate::client::DataplaneOp::Dump { table } => format!("dump {table}"),
    }
}

/// An agent task on a manual memory dataplane with VNI 100 mapped to table
/// 7 and server 0 up.
async fn manual_task() -> (AgentTask, Vec<tokio::net::TcpListener>, MemoryDataplane) {
    let (mut t, listeners, _events) = task().await;
    let dp = MemoryDataplane::new();
    t.executor.dataplane = Some(Box::new(dp.clone()));
    t.planner.set_dataplane();
    let change = |c: ClientChange| move |r| AgentRequest::Change(c, r);
    request(&mut t, change(ClientChange::SetMapping(Vni(100), 7)))
        .await
        .unwrap();
    event(&mut t, up(0)).await;
    dp.manual();
    (t, listeners, dp)
}

#[tokio::test]
async fn ops_on_one_key_stay_ordered_while_other_keys_overlap() {
    let (mut t, _listeners, dp) = manual_task().await;
    t.handle(add(0, "100#10.0.1.0/24@2001:db8::1")).await;
    t.handle(add(0, "100#10.0.2.0/24@2001:db8::1")).await;
    t.handle(add(0, "100#10.0.1.0/24@2001:db8::2")).await;
    t.handle(add(0, "100#10.0.3.0/24@2001:db8::1")).await;
    // Different keys are in flight together; the second change of
    // 10.0.1.0/24 waits for the first.
    let keys = |dp: &MemoryDataplane| dp.in_flight().iter().map(op_key).collect::<Vec<_>>();
    assert_eq!(
        keys(&dp),
        [
            "replace 10.0.1.0/24 [2001:db8::1]",
            "replace 10.0.2.0/24 [2001:db8::1]",
            "replace 10.0.3.0/24 [2001:db8::1]",
        ]
    );
    assert_eq!(t.executor.backlog(), 4);
    // Completed out of order: 10.0.3.0/24 first, then 10.0.1.0/24.
    let is = |p: &'static str| move |op: &crate::client::DataplaneOp| op_key(op).contains(p);
    assert_eq!(dp.release(is("10.0.3.0/24")), 1);
    let (job, r) = t.executor.next_done().await;
    t.executor.complete(&mut t.planner, job, r, now());
    assert_eq!(
        t.executor.stats.installed_routes(),
        BTreeMap::from([(7, 1)])
    );
    assert_eq!(dp.release(is("10.0.1.0/24")), 1);
    let (job, r) = t.executor.next_done().await;
    t.executor.complete(&mut t.planner, job, r, now());
    // Only now the later change of 10.0.1.0/24 starts, with both next hops.
    assert_eq!(
        keys(&dp),
        [
            "replace 10.0.2.0/24 [2001:db8::1]",
            "replace 10.0.1.0/24 [2001:db8::1, 2001:db8::2]",
        ]
    );
    dp.release(|_| true);
    t.executor.drain(&mut t.planner, now).await;
    let hop = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap();
    let prefix = |s: &str| crate::kernel::Prefix::new(s.parse().unwrap(), 24);
    assert_eq!(
        dp.routes().get(&(7, prefix("10.0.1.0"))),
        Some(&vec![hop("2001:db8::1"), hop("2001:db8::2")])
    );
    assert_eq!(dp.routes().len(), 3);
    assert_eq!(
        t.executor.stats.installed_routes(),
        BTreeMap::from([(7, 3)])
    );
    assert_eq!(t.executor.stats.netlink_replace.ok.load(Relaxed), 4);
    assert_eq!(t.executor.backlog(), 0);
}

#[tokio::test]
async fn the_backlog_bound_stops_reading_events() {
    let (mut t, _listeners, dp) = manual_task().await;
    t.executor.set_limits(4, 10);
    let (tx, mut events) = mpsc::channel(EVENT_QUEUE);
    let (_control_tx, mut control) = mpsc::channel(1);
    let (stop_tx, mut stop) = watch::channel(false);
    const N: usize = 100;
    for i in 0..N {
        let route = format!("100#10.1.{}.{}/32@2001:db8::1", i / 256, i % 256);
        tx.send(add(0, &route)).await.unwrap();
    }
    let serving = tokio::spawn(async move {
        t.serve(&mut events, &mut control, &mut stop).await;
        t
    });
    // Wait until the agent is stuck on its backlog: 4 in flight.
    let queued = |tx: &mpsc::Sender<ClientEvent>| tx.max_capacity() - tx.capacity();
    let mut installed = 0;
    for _ in 0..10_000 {
        let in_flight = dp.in_flight().len();
        assert!(in_flight <= 4, "{in_flight} in flight, bound 4");
        // Read events = installed + waiting + in flight <= the backlog bound.
        let read = N - queued(&tx);
        assert!(
            read <= installed + 10,
            "{read} events read, {installed} done"
        );
        if in_flight == 4 || read == N {
            installed += dp.release(|_| true);
        }
        if installed == N {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(installed, N);
    // Every route arrives in the dataplane and in the gauge.
    for _ in 0..1000 {
        if dp.routes().len() == N {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(dp.routes().len(), N);
    stop_tx.send(true).unwrap();
    let t = serving.await.unwrap();
    assert_eq!(t.executor.backlog(), 0);
    assert_eq!(
        t.executor.stats.installed_routes(),
        BTreeMap::from([(7, N as u64)])
    );
}

#[tokio::test]
async fn a_reload_difference_applies_without_storing_and_a_refusal_changes_nothing() {
    use crate::client::reload::ClientDiff;
    let dir = std::env::temp_dir().join(format!("mbd-agent-reload-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Arc::new(Store::open(&dir).unwrap());
    let (mut t, listeners, _events) = task().await;
    t.store = Some(store.clone());
    event(&mut t, up(0)).await;
    event(&mut t, up(1)).await;
    event(&mut t, add(0, "100#10.0.1.0/24@2001:db8::1")).await;
    let addr1 = t.planner.server_addr(ServerId(1)).unwrap().clone();
    let addr2: ServerAddr = listeners[2].local_addr().unwrap().into();
    let diff = ClientDiff {
        add_servers: vec![addr2.clone()],
        remove_servers: vec![addr1],
        subscribe: vec![Vni(200)],
        mappings: BTreeMap::from([(Vni(100), BTreeSet::from([7, 8]))]),
        ..ClientDiff::default()
    };

    // No dataplane and no tunnel device: refused before any change.
    let refused = request(&mut t, |r| AgentRequest::Reconfigure(diff.clone(), r)).await;
    assert!(
        matches!(&refused, Err(Refused::Precondition(m)) if m.starts_with("no tunnel device")),
        "{refused:?}"
    );
    assert_eq!(gauges(&t), (2, 2, 1));
    assert_eq!(t.planner.desired().subscriptions, vec![Vni(100)]);

    let dp = MemoryDataplane::new();
    t.executor.dataplane = Some(Box::new(dp.clone()));
    t.planner.set_dataplane();
    let applied = request(&mut t, |r| AgentRequest::Reconfigure(diff, r))
        .await
        .unwrap();
    assert_eq!(
        applied,
        vec![
            "client.servers: 1 added, 1 removed",
            "client.subscribe: 1 subscribed, 0 unsubscribed",
            "client.install_routes: VNI 100 remapped",
        ]
    );
    // Server 1 replaced by server 2 (down until it connects); server 0 is
    // still up; the VNI's route is in both tables.
    assert_eq!(gauges(&t), (2, 1, 1));
    assert!(t.planner.server_id(&addr2).is_some());
    assert_eq!(t.planner.desired().subscriptions, vec![Vni(100), Vni(200)]);
    let prefix = crate::kernel::Prefix::new("10.0.1.0".parse().unwrap(), 24);
    let hops = vec!["2001:db8::1".parse().unwrap()];
    assert_eq!(
        dp.routes(),
        BTreeMap::from([((7, prefix), hops.clone()), ((8, prefix), hops)])
    );
    // Not API changes: nothing stored.
    assert!(StoredClientState::load(&store).unwrap().is_empty());

    // The tables of a VNI move: out of 7, into 9.
    let moved = ClientDiff {
        mappings: BTreeMap::from([(Vni(100), BTreeSet::from([8, 9]))]),
        ..ClientDiff::default()
    };
    request(&mut t, |r| AgentRequest::Reconfigure(moved, r))
        .await
        .unwrap();
    assert_eq!(
        dp.routes().keys().copied().collect::<Vec<_>>(),
        vec![(8, prefix), (9, prefix)]
    );
    drop(t);
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}
