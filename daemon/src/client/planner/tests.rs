//! The planner driven with explicit time against a [`MemoryDataplane`]: no
//! root, no tokio, no clock.

use std::net::Ipv6Addr;

use super::*;
use crate::client::dataplane::MemoryDataplane;

const HOLD: Duration = Duration::from_secs(30);
const STALE: Duration = Duration::from_secs(60);

fn route(s: &str) -> Route {
    s.parse().unwrap()
}

fn pfx(s: &str) -> Prefix {
    let (addr, len) = s.split_once('/').unwrap();
    Prefix::new(addr.parse().unwrap(), len.parse().unwrap())
}

fn hops(list: &[&str]) -> Vec<Ipv6Addr> {
    list.iter().map(|h| h.parse().unwrap()).collect()
}

fn server_addr(i: usize) -> ServerAddr {
    format!("[::1]:{}", 4711 + i).parse().unwrap()
}

/// A planner with two servers, subscribed to VNIs 100 and 200, VNI 100
/// mapped to table 100, a memory dataplane (unless `dataplane` is false)
/// and a clock the test moves.
struct Bench {
    p: Planner,
    dp: MemoryDataplane,
    now: Instant,
}

struct Setup {
    announcements: Vec<Route>,
    tables: BTreeMap<Vni, BTreeSet<u32>>,
    ipv4_only: bool,
    flush_at_start: bool,
    dataplane: bool,
    /// Routes in the dataplane before start (an earlier run's).
    earlier: Vec<(u32, &'static str, &'static [&'static str])>,
    /// The feed waits for its VNIs to sync (else nothing waits, so that the
    /// kernel tests see only the kernel's deadlines).
    feed: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            announcements: Vec::new(),
            tables: BTreeMap::from([(Vni(100), BTreeSet::from([100]))]),
            ipv4_only: false,
            flush_at_start: false,
            dataplane: true,
            earlier: Vec::new(),
            feed: false,
        }
    }
}

impl Setup {
    fn start(self) -> Bench {
        let dp = MemoryDataplane::new();
        for (table, prefix, next_hops) in &self.earlier {
            dp.insert(*table, pfx(prefix), hops(next_hops));
        }
        let config = PlannerConfig {
            servers: (0..2).map(|i| (ServerId(i), server_addr(i))).collect(),
            desired: Desired {
                subscriptions: vec![Vni(100), Vni(200)],
                announcements: self.announcements.into_iter().collect(),
            },
            tables: self.tables,
            ipv4_only: self.ipv4_only,
            hold_time: HOLD,
            stale_time: STALE,
            flush_at_start: self.flush_at_start,
        };
        let mut b = Bench {
            p: Planner::new(config, self.dataplane),
            dp,
            now: Instant::now(),
        };
        if !self.feed {
            b.p.feed = feed::FeedSync::default();
        }
        let ops = b.p.start();
        b.run(ops);
        let _ = b.dp.take_ops();
        b
    }
}

impl Bench {
    fn new() -> Bench {
        Setup::default().start()
    }

    /// Runs `ops` and what follows from them, as the agent does.
    fn run(&mut self, ops: Vec<Planned>) {
        let mut queue = std::collections::VecDeque::from(ops);
        while let Some(job) = queue.pop_front() {
            let result = self.dp.apply(&job.op);
            queue.extend(self.p.completed(job, result.as_ref(), self.now));
        }
    }

    fn up(&mut self, server: usize) {
        self.p.server_up(ServerId(server), self.now);
    }

    /// Server up with the SYNC extension negotiated.
    fn up_sync(&mut self, server: usize) {
        self.p.server_up_with(ServerId(server), true, self.now);
    }

    fn synced(&mut self, server: usize, vni: u32) {
        let ops = self.p.synced(ServerId(server), Vni(vni), self.now);
        self.run(ops);
    }

    fn down(&mut self, server: usize) {
        let ops = self.p.server_down(ServerId(server), self.now);
        self.run(ops);
    }

    fn update(&mut self, server: usize, action: Action, r: &str) {
        let update = Update {
            action,
            route: route(r),
        };
        let ops = self.p.update(ServerId(server), update, self.now);
        self.run(ops);
    }

    fn add(&mut self, server: usize, r: &str) {
        self.update(server, Action::Add, r);
    }

    fn remove(&mut self, server: usize, r: &str) {
        self.update(server, Action::Remove, r);
    }

    /// Moves the clock by `d`, firing every timer due on the way at its
    /// time.
    fn advance(&mut self, d: Duration) {
        let target = self.now + d;
        for _ in 0..1000 {
            match self.p.next_deadline() {
                Some(due) if due <= target => {
                    self.now = self.now.max(due);
                    let ops = self.p.on_timer(self.now);
                    self.run(ops);
                }
                _ => {
                    self.now = target;
                    return;
                }
            }
        }
        panic!("the planner's timer does not settle");
    }

    /// Table `t` of the dataplane: prefix -> next hops.
    fn table(&self, t: u32) -> BTreeMap<String, Vec<Ipv6Addr>> {
        self.dp
            .routes()
            .into_iter()
            .filter(|((table, _), _)| *table == t)
            .map(|((_, p), h)| (p.to_string(), h))
            .collect()
    }

    fn installed_tables(&self, r: &str) -> Vec<u32> {
        let r = route(r);
        self.p
            .received(Some(r.vni))
            .into_iter()
            .find(|e| e.route == r)
            .map(|e| e.installed_tables)
            .unwrap_or_else(|| panic!("{r} not received"))
    }
}

fn one(prefix: &str, next_hops: &[&str]) -> BTreeMap<String, Vec<Ipv6Addr>> {
    BTreeMap::from([(prefix.to_string(), hops(next_hops))])
}

#[test]
fn updates_of_a_mapped_vni_become_replaces_and_deletes_with_multipath() {
    let mut b = Bench::new();
    b.up(0);
    b.add(0, "100#10.0.1.0/24@2001:db8::2");
    assert_eq!(b.table(100), one("10.0.1.0/24", &["2001:db8::2"]));
    // A second next hop: one multipath route, hops sorted.
    b.add(0, "100#10.0.1.0/24@2001:db8::1");
    assert_eq!(
        b.dp.take_ops().last(),
        Some(&DataplaneOp::Replace(KernelRoute {
            table: 100,
            dest: pfx("10.0.1.0/24"),
            next_hops: hops(&["2001:db8::1", "2001:db8::2"]),
        }))
    );
    assert_eq!(
        b.table(100),
        one("10.0.1.0/24", &["2001:db8::1", "2001:db8::2"])
    );
    b.remove(0, "100#10.0.1.0/24@2001:db8::2");
    assert_eq!(b.table(100), one("10.0.1.0/24", &["2001:db8::1"]));
    b.remove(0, "100#10.0.1.0/24@2001:db8::1");
    assert_eq!(
        b.dp.take_ops(),
        vec![
            DataplaneOp::Replace(KernelRoute {
                table: 100,
                dest: pfx("10.0.1.0/24"),
                next_hops: hops(&["2001:db8::1"]),
            }),
            DataplaneOp::Delete {
                table: 100,
                prefix: pfx("10.0.1.0/24"),
            },
        ]
    );
    assert!(b.table(100).is_empty());
    // VNI 200 is subscribed but not mapped: received, not installed.
    b.add(0, "200#10.0.2.0/24@2001:db8::2");
    assert!(b.dp.take_ops().is_empty());
    assert_eq!(
        b.installed_tables("200#10.0.2.0/24@2001:db8::2"),
        Vec::<u32>::new()
    );
    assert_eq!(b.p.received_count(), 1);
    // Nothing to wait for.
    assert_eq!(b.p.next_deadline(), None);
}

#[test]
fn a_route_stays_while_any_server_provides_it() {
    let mut b = Bench::new();
    b.up(0);
    b.up(1);
    b.add(0, "100#10.0.1.0/24@2001:db8::1");
    b.add(1, "100#10.0.1.0/24@2001:db8::1");
    let _ = b.dp.take_ops();
    // Server 0 goes while server 1 is up: nothing changes in the kernel.
    b.down(0);
    assert!(b.dp.take_ops().is_empty());
    assert_eq!(b.table(100), one("10.0.1.0/24", &["2001:db8::1"]));
    assert_eq!(b.p.up_count(), 1);
    // The last provider withdraws: gone.
    b.remove(1, "100#10.0.1.0/24@2001:db8::1");
    assert!(b.table(100).is_empty());
}

#[test]
fn what_this_node_announces_is_never_installed() {
    let mut b = Setup {
        announcements: vec![route("100#10.0.9.0/24@2001:db8::99")],
        ..Setup::default()
    }
    .start();
    b.up(0);
    // Another node announcing the same destination: received (and counted),
    // but the kernel keeps routing it locally.
    b.add(0, "100#10.0.9.0/24@2001:db8::5");
    b.add(0, "100#10.0.1.0/24@2001:db8::1");
    assert_eq!(b.p.received_count(), 2);
    assert_eq!(b.table(100), one("10.0.1.0/24", &["2001:db8::1"]));
    assert_eq!(
        b.installed_tables("100#10.0.9.0/24@2001:db8::5"),
        Vec::<u32>::new()
    );
    assert_eq!(b.installed_tables("100#10.0.1.0/24@2001:db8::1"), vec![100]);
}

#[test]
fn updates_of_other_vnis_ipv6_with_ipv4_only_and_removed_servers_are_ignored() {
    let mut b = Setup {
        ipv4_only: true,
        ..Setup::default()
    }
    .start();
    b.up(0);
    b.add(0, "300#10.0.1.0/24@2001:db8::1");
    b.add(0, "100#2001:db8:20::/64@2001:db8::1");
    assert_eq!(b.p.received_count(), 0);
    b.add(1, "100#10.0.1.0/24@2001:db8::1");
    let ops = b.p.remove_server(ServerId(1), b.now);
    b.run(ops);
    assert!(
        b.table(100).is_empty(),
        "a removed server's routes go at once"
    );
    // Queued before the removal.
    b.add(1, "100#10.0.2.0/24@2001:db8::1");
    b.up(1);
    assert_eq!(b.p.received_count(), 0);
    assert_eq!(b.p.server_count(), 1);
    assert_eq!(b.p.up_count(), 1);
}

#[test]
fn held_routes_of_an_earlier_run_wait_for_the_hold_time() {
    let mut b = Setup {
        earlier: vec![
            (100, "10.0.1.0/24", &["2001:db8::7"]),
            (100, "10.0.2.0/24", &["2001:db8::2"]),
        ],
        ..Setup::default()
    }
    .start();
    let start = b.now;
    assert_eq!(b.p.next_deadline(), Some(start + HOLD));
    // Only server 0 comes up: the hold waits for every server.
    b.up(0);
    b.add(0, "100#10.0.1.0/24@2001:db8::1");
    // A held route the server sends is replaced in place.
    assert_eq!(b.table(100)["10.0.1.0/24"], hops(&["2001:db8::1"]));
    // Withdrawn again: its deletion waits for the reconciliation.
    b.add(0, "100#10.0.3.0/24@2001:db8::3");
    b.remove(0, "100#10.0.3.0/24@2001:db8::3");
    assert!(
        !b.table(100).contains_key("10.0.3.0/24"),
        "not held: deleted"
    );
    b.advance(HOLD - Duration::from_secs(1));
    assert_eq!(
        b.table(100).len(),
        2,
        "nothing deleted before the hold time"
    );
    b.advance(Duration::from_secs(1));
    assert_eq!(b.table(100), one("10.0.1.0/24", &["2001:db8::1"]));
    assert_eq!(b.p.next_deadline(), None);
}

#[test]
fn a_restart_reconciles_once_every_server_has_resynced() {
    let mut b = Setup {
        earlier: vec![
            (100, "10.0.1.0/24", &["2001:db8::1"]),
            (100, "10.0.2.0/24", &["2001:db8::2"]),
        ],
        ..Setup::default()
    }
    .start();
    b.up(0);
    b.up(1);
    b.add(0, "100#10.0.1.0/24@2001:db8::1");
    b.advance(Duration::from_millis(400));
    b.add(1, "100#10.0.1.0/24@2001:db8::1");
    let last = b.now;
    // Reconciled when the last UPDATE is QUIET_AFTER_DUMP old.
    assert_eq!(b.p.next_deadline(), Some(last + QUIET_AFTER_DUMP));
    b.advance(QUIET_AFTER_DUMP - Duration::from_millis(1));
    assert_eq!(b.table(100).len(), 2);
    let _ = b.dp.take_ops();
    b.advance(Duration::from_millis(1));
    // The unconfirmed route goes; the confirmed one is replaced (a no-op).
    assert_kept_the_confirmed_route_only(&mut b);
}

#[test]
fn flush_at_start_deletes_what_an_earlier_run_left() {
    let dp_routes: Vec<(u32, &str, &[&str])> = vec![
        (100, "10.0.1.0/24", &["2001:db8::1"]),
        (100, "10.0.2.0/24", &["2001:db8::2"]),
        // Not a mapped table: left alone.
        (7, "10.0.3.0/24", &["2001:db8::3"]),
    ];
    let b = Setup {
        earlier: dp_routes,
        flush_at_start: true,
        ..Setup::default()
    }
    .start();
    assert!(b.table(100).is_empty());
    assert_eq!(b.table(7).len(), 1);
    assert_eq!(b.p.next_deadline(), None, "nothing held");
}

#[test]
fn losing_every_server_keeps_routes_for_the_stale_time() {
    let mut b = Bench::new();
    b.up(0);
    b.add(0, "100#10.0.1.0/24@2001:db8::1");
    b.down(0);
    assert_eq!(b.table(100).len(), 1, "kept while stale");
    assert_eq!(b.p.received_count(), 0);
    assert_eq!(b.p.next_deadline(), Some(b.now + STALE));
    b.advance(STALE - Duration::from_secs(1));
    assert_eq!(b.table(100).len(), 1);
    b.advance(Duration::from_secs(1));
    assert!(b.table(100).is_empty());
}

#[test]
fn a_server_back_within_the_stale_time_reconciles_after_its_resync() {
    let mut b = Bench::new();
    b.up(0);
    b.add(0, "100#10.0.1.0/24@2001:db8::1");
    b.add(0, "100#10.0.2.0/24@2001:db8::2");
    b.down(0);
    b.advance(Duration::from_secs(10));
    b.up(0);
    // Any one server's resync is enough now.
    b.add(0, "100#10.0.1.0/24@2001:db8::1");
    assert_eq!(b.p.next_deadline(), Some(b.now + QUIET_AFTER_DUMP));
    b.advance(QUIET_AFTER_DUMP);
    assert_eq!(b.table(100), one("10.0.1.0/24", &["2001:db8::1"]));
}

#[test]
fn a_failed_operation_is_retried_every_second_with_the_current_state() {
    let mut b = Bench::new();
    b.up(0);
    b.dp.fail(100, pfx("10.0.1.0/24"), libc::ENOBUFS);
    b.add(0, "100#10.0.1.0/24@2001:db8::1");
    assert!(b.table(100).is_empty());
    assert_eq!(
        b.installed_tables("100#10.0.1.0/24@2001:db8::1"),
        Vec::<u32>::new()
    );
    let failed_at = b.now;
    assert_eq!(b.p.next_deadline(), Some(failed_at + RETRY_INTERVAL));
    let _ = b.dp.take_ops();
    b.advance(RETRY_INTERVAL);
    assert_eq!(b.dp.take_ops().len(), 1, "retried once");
    assert_eq!(b.p.next_deadline(), Some(failed_at + 2 * RETRY_INTERVAL));
    // Another hop meanwhile: the retry installs what is wanted then.
    b.dp.heal(100, pfx("10.0.1.0/24"));
    b.add(0, "100#10.0.1.0/24@2001:db8::2");
    assert_eq!(
        b.table(100),
        one("10.0.1.0/24", &["2001:db8::1", "2001:db8::2"])
    );
    assert_eq!(b.installed_tables("100#10.0.1.0/24@2001:db8::1"), vec![100]);
    // Succeeded: nothing to retry (the scheduled wake-up is dropped).
    assert_eq!(b.p.next_deadline(), None);

    // A failed delete is retried as a delete while nothing is wanted.
    b.dp.fail(100, pfx("10.0.1.0/24"), libc::EBUSY);
    b.remove(0, "100#10.0.1.0/24@2001:db8::1");
    b.remove(0, "100#10.0.1.0/24@2001:db8::2");
    assert_eq!(b.table(100).len(), 1);
    b.dp.heal(100, pfx("10.0.1.0/24"));
    let _ = b.dp.take_ops();
    b.advance(RETRY_INTERVAL);
    assert_eq!(
        b.dp.take_ops(),
        vec![DataplaneOp::Delete {
            table: 100,
            prefix: pfx("10.0.1.0/24"),
        }]
    );
    assert!(b.table(100).is_empty());
}

#[test]
fn a_failed_reconciliation_delete_is_retried() {
    let mut b = Setup {
        earlier: vec![(100, "10.0.2.0/24", &["2001:db8::2"])],
        ..Setup::default()
    }
    .start();
    b.dp.fail(100, pfx("10.0.2.0/24"), libc::ENOMEM);
    b.advance(HOLD);
    assert_eq!(b.table(100).len(), 1);
    b.dp.heal(100, pfx("10.0.2.0/24"));
    b.advance(RETRY_INTERVAL);
    assert!(b.table(100).is_empty());
    assert_eq!(b.p.next_deadline(), None);
}

#[test]
fn mapping_and_unmapping_a_vni_moves_its_routes() {
    let mut b = Bench::new();
    b.up(0);
    b.add(0, "200#10.0.2.0/24@2001:db8::2");
    assert!(b.dp.routes().is_empty());
    let ops = b.p.set_mapping(Vni(200), Some(7));
    b.run(ops);
    assert_eq!(b.table(7), one("10.0.2.0/24", &["2001:db8::2"]));
    let ops = b.p.set_mapping(Vni(200), Some(8));
    b.run(ops);
    assert!(b.table(7).is_empty());
    assert_eq!(b.table(8), one("10.0.2.0/24", &["2001:db8::2"]));
    assert_eq!(b.installed_tables("200#10.0.2.0/24@2001:db8::2"), vec![8]);
    let ops = b.p.set_mapping(Vni(200), None);
    b.run(ops);
    assert!(b.dp.routes().is_empty());
    assert_eq!(
        b.p.tables(),
        &BTreeMap::from([(Vni(100), BTreeSet::from([100]))])
    );
}

#[test]
fn unsubscribing_drops_the_vnis_routes() {
    let mut b = Bench::new();
    b.up(0);
    b.up(1);
    b.add(0, "100#10.0.1.0/24@2001:db8::1");
    b.add(1, "100#10.0.1.0/24@2001:db8::1");
    b.add(0, "200#10.0.2.0/24@2001:db8::2");
    let ops = b.p.unsubscribe(Vni(100));
    b.run(ops);
    assert!(b.table(100).is_empty());
    assert_eq!(b.p.received_count(), 1);
    // Late updates of the VNI are ignored.
    b.add(0, "100#10.0.1.0/24@2001:db8::1");
    assert_eq!(b.p.received_count(), 1);
    assert_eq!(b.p.desired().subscriptions, vec![Vni(200)]);
    b.p.subscribe(Vni(100));
    assert_eq!(b.p.desired().subscriptions, vec![Vni(200), Vni(100)]);
}

#[test]
fn checks_name_what_is_wrong_as_the_api_says_it() {
    let b = Bench::new();
    let check = |c: ClientChange| b.p.check(&c);
    assert_eq!(
        check(ClientChange::AddServer(server_addr(0))),
        Err(Refused::AlreadyExists(
            "address: server [::1]:4711 is configured already".into()
        ))
    );
    assert_eq!(check(ClientChange::AddServer(server_addr(5))), Ok(()));
    assert_eq!(
        check(ClientChange::RemoveServer(server_addr(5))),
        Err(Refused::NotFound(
            "address: server [::1]:4716 is not configured".into()
        ))
    );
    assert_eq!(
        check(ClientChange::Subscribe(Vni(100))),
        Err(Refused::AlreadyExists(
            "vni: 100 is subscribed already".into()
        ))
    );
    assert_eq!(
        check(ClientChange::Unsubscribe(Vni(300))),
        Err(Refused::NotFound("vni: 300 is not subscribed".into()))
    );
    assert_eq!(
        check(ClientChange::SetMapping(Vni(300), 0)),
        Err(Refused::Invalid(
            "table: 0 is not a valid routing table".into()
        ))
    );
    assert_eq!(check(ClientChange::SetMapping(Vni(300), 3)), Ok(()));
    assert_eq!(
        check(ClientChange::RemoveMapping(Vni(300))),
        Err(Refused::NotFound("vni: 300 is not mapped".into()))
    );
    assert_eq!(check(ClientChange::RemoveMapping(Vni(100))), Ok(()));
}

#[test]
fn without_a_dataplane_nothing_is_asked_and_nothing_held() {
    let mut b = Setup {
        dataplane: false,
        ..Setup::default()
    }
    .start();
    b.up(0);
    b.add(0, "100#10.0.1.0/24@2001:db8::1");
    b.down(0);
    assert!(b.dp.take_ops().is_empty());
    assert_eq!(
        b.p.next_deadline(),
        None,
        "no stale time without a dataplane"
    );
    assert_eq!(b.p.received_count(), 0);
    assert!(b.p.cleanup().is_empty());
}

#[test]
fn cleanup_deletes_every_route_of_the_mapped_tables() {
    let mut b = Setup {
        earlier: vec![(100, "10.0.2.0/24", &["2001:db8::2"])],
        ..Setup::default()
    }
    .start();
    b.up(0);
    b.add(0, "100#10.0.1.0/24@2001:db8::1");
    b.dp.insert(9, pfx("10.0.9.0/24"), hops(&["2001:db8::9"]));
    let ops = b.p.cleanup();
    b.run(ops);
    assert!(b.table(100).is_empty(), "installed and held alike");
    assert_eq!(b.table(9).len(), 1, "not a mapped table");
}

/// The routes of an earlier run the SYNC tests start from.
fn earlier_run() -> Bench {
    Setup {
        earlier: vec![
            (100, "10.0.1.0/24", &["2001:db8::1"]),
            (100, "10.0.2.0/24", &["2001:db8::2"]),
        ],
        ..Setup::default()
    }
    .start()
}

#[test]
fn a_restart_with_sync_reconciles_at_the_last_sync_without_waiting() {
    let mut b = earlier_run();
    b.up_sync(0);
    b.up_sync(1);
    b.add(0, "100#10.0.1.0/24@2001:db8::1");
    b.add(1, "100#10.0.1.0/24@2001:db8::1");
    // Quiet for much longer than QUIET_AFTER_DUMP: a SYNC server is not
    // judged by silence, only by its SYNCs (or the hold time).
    b.advance(Duration::from_secs(5));
    assert_eq!(b.table(100).len(), 2, "held until every server synced");
    b.synced(0, 100);
    b.synced(0, 200);
    b.synced(1, 100);
    assert_eq!(b.table(100).len(), 2, "server 1 has not synced VNI 200");
    let _ = b.dp.take_ops();
    let at = b.now;
    b.synced(1, 200);
    // At that very instant, not a timer later.
    assert_eq!(b.now, at);
    assert_kept_the_confirmed_route_only(&mut b);
}

#[test]
fn a_restart_with_sync_waits_for_every_configured_server() {
    let mut b = earlier_run();
    let start = b.now;
    b.up_sync(0);
    b.synced(0, 100);
    b.synced(0, 200);
    // Server 1 is not up: it may still hold the routes.
    assert_eq!(b.table(100).len(), 2);
    assert_eq!(b.p.next_deadline(), Some(start + HOLD));
    b.up_sync(1);
    b.synced(1, 100);
    b.synced(1, 200);
    assert!(b.table(100).is_empty(), "nothing confirmed: all deleted");
}

#[test]
fn a_server_without_sync_falls_back_to_quiet_next_to_a_sync_server() {
    let mut b = earlier_run();
    b.up_sync(0);
    b.up(1);
    b.add(1, "100#10.0.1.0/24@2001:db8::1");
    b.synced(0, 100);
    b.synced(0, 200);
    // Server 0 synced; server 1 (no SYNC) is judged by its quiet time.
    assert_eq!(b.table(100).len(), 2);
    assert_eq!(b.p.next_deadline(), Some(b.now + QUIET_AFTER_DUMP));
    b.advance(QUIET_AFTER_DUMP);
    assert_eq!(b.table(100), one("10.0.1.0/24", &["2001:db8::1"]));
}

#[test]
fn sync_of_an_earlier_session_does_not_count_after_a_reconnect() {
    let mut b = earlier_run();
    let start = b.now;
    b.up_sync(0);
    b.up_sync(1);
    b.synced(0, 100);
    b.synced(0, 200);
    b.synced(1, 100);
    // Server 1 reconnects: its new session must sync again.
    b.down(1);
    b.up_sync(1);
    b.synced(1, 200);
    assert_eq!(b.table(100).len(), 2);
    // A SYNC from a session that did not negotiate it is ignored.
    b.down(1);
    b.up(1);
    b.synced(1, 100);
    b.synced(1, 200);
    b.add(1, "100#10.0.2.0/24@2001:db8::2");
    assert_eq!(b.table(100).len(), 2);
    // The fallback for server 1 (no SYNC now) is its quiet time.
    assert_eq!(b.p.next_deadline(), Some(b.now + QUIET_AFTER_DUMP));
    assert!(b.now < start + HOLD);
    b.advance(QUIET_AFTER_DUMP);
    assert_eq!(b.table(100), one("10.0.2.0/24", &["2001:db8::2"]));
}

#[test]
fn a_server_back_after_a_loss_reconciles_at_its_sync() {
    let mut b = Bench::new();
    b.up_sync(0);
    b.add(0, "100#10.0.1.0/24@2001:db8::1");
    b.add(0, "100#10.0.2.0/24@2001:db8::2");
    b.down(0);
    b.advance(Duration::from_secs(10));
    b.up_sync(0);
    b.add(0, "100#10.0.1.0/24@2001:db8::1");
    b.synced(0, 100);
    assert_eq!(b.table(100).len(), 2, "VNI 200 not synced yet");
    b.synced(0, 200);
    assert_eq!(b.table(100), one("10.0.1.0/24", &["2001:db8::1"]));
    assert_eq!(b.p.next_deadline(), None);
}

#[test]
fn runtime_announcements_are_checked_reference_counted_and_prevent_loops() {
    let mine = "100#10.0.1.0/24@2001:db8::1";
    let mut b = Setup {
        announcements: vec![route(mine)],
        ..Setup::default()
    }
    .start();
    b.advance(HOLD);
    b.up(0);
    // A route of another hypervisor for a destination not announced here.
    b.add(0, "100#10.0.2.0/24@2001:db8::7");
    assert_eq!(b.table(100), one("10.0.2.0/24", &["2001:db8::7"]));
    let announce = |owner: &str, texts: &[&str], allow_existing: bool| ClientChange::Announce {
        owner: owner.into(),
        routes: texts.iter().map(|t| route(t)).collect(),
        allow_existing,
    };

    // Typed refusals, field first.
    assert_eq!(
        b.p.check(&announce("config", &[mine], false)),
        Err(Refused::Invalid(
            "owner: \"config\" is reserved for the routes of --announce and the configuration file"
                .into()
        ))
    );
    assert_eq!(
        b.p.check(&ClientChange::Withdraw {
            owner: "api".into(),
            routes: vec![route(mine)],
            allow_missing: false,
        }),
        Err(Refused::NotFound(format!(
            "routes[0]: {mine} is not announced by owner \"api\""
        )))
    );
    assert!(matches!(
        b.p.check(&announce("api", &[mine, mine], true)),
        Err(Refused::Invalid(m)) if m.starts_with("routes[1]: ")
    ));

    // A second owner of the configured route: no wire change.
    let change = announce("api", &[mine, "100#10.0.2.0/24@2001:db8::1"], false);
    b.p.check(&change).unwrap();
    let delta = b.p.announcement_delta(&change).unwrap();
    let (commands, ops) = b.p.apply_announcements(&delta);
    // Only the new destination goes out; announcing 10.0.2.0/24 here
    // takes the other hypervisor's route for it out of the kernel.
    assert_eq!(
        commands,
        vec![ClientCommand::Announce(route(
            "100#10.0.2.0/24@2001:db8::1"
        ))]
    );
    b.run(ops);
    assert!(b.table(100).is_empty(), "{:?}", b.table(100));
    assert_eq!(
        b.p.check(&announce("api", &[mine], false)),
        Err(Refused::AlreadyExists(format!(
            "routes[0]: {mine} is announced by owner \"api\" already"
        )))
    );
    // Withdrawn: the received route is installed again.
    let change = ClientChange::SetAnnouncements {
        owner: "api".into(),
        routes: vec![],
    };
    let delta = b.p.announcement_delta(&change).unwrap();
    let (commands, ops) = b.p.apply_announcements(&delta);
    assert_eq!(
        commands,
        vec![ClientCommand::Withdraw(route(
            "100#10.0.2.0/24@2001:db8::1"
        ))]
    );
    b.run(ops);
    assert_eq!(b.table(100), one("10.0.2.0/24", &["2001:db8::7"]));
    assert_eq!(
        b.p.announcements(),
        vec![(route(mine), vec!["config".to_string()])]
    );
}

/// The reconciliation of an earlier run's 10.0.1.0/24 (confirmed by a
/// server) and 10.0.2.0/24 (not confirmed) happened: the confirmed route is
/// replaced (a no-op), the other deleted, and no timer is left.
fn assert_kept_the_confirmed_route_only(b: &mut Bench) {
    assert_eq!(
        b.dp.take_ops(),
        vec![
            DataplaneOp::Replace(KernelRoute {
                table: 100,
                dest: pfx("10.0.1.0/24"),
                next_hops: hops(&["2001:db8::1"]),
            }),
            DataplaneOp::Delete {
                table: 100,
                prefix: pfx("10.0.2.0/24"),
            },
        ]
    );
    assert_eq!(b.table(100), one("10.0.1.0/24", &["2001:db8::1"]));
    assert_eq!(b.p.next_deadline(), None);
}

// The received-routes feed (ADR 0024).

fn feed_bench() -> Bench {
    Setup {
        feed: true,
        ..Setup::default()
    }
    .start()
}

fn added(r: &str) -> FeedEvent {
    FeedEvent::Added(route(r))
}

fn removed(r: &str) -> FeedEvent {
    FeedEvent::Removed(route(r))
}

#[test]
fn the_feed_reports_each_route_once_however_many_servers_send_it() {
    let mut b = feed_bench();
    b.up(0);
    b.up(1);
    b.add(0, "100#10.0.1.0/24@2001:db8::1");
    b.add(1, "100#10.0.1.0/24@2001:db8::1");
    b.add(1, "200#10.0.2.0/24@2001:db8::2");
    assert_eq!(
        b.p.take_feed(),
        vec![
            added("100#10.0.1.0/24@2001:db8::1"),
            added("200#10.0.2.0/24@2001:db8::2")
        ]
    );
    // One server withdraws: still received. The other goes down: gone.
    b.remove(0, "100#10.0.1.0/24@2001:db8::1");
    assert_eq!(b.p.take_feed(), vec![]);
    b.down(1);
    let mut events = b.p.take_feed();
    events.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(
        events,
        vec![
            removed("100#10.0.1.0/24@2001:db8::1"),
            removed("200#10.0.2.0/24@2001:db8::2")
        ]
    );
    let (routes, _) = b.p.feed_snapshot(|_| true);
    assert!(routes.is_empty());
}

#[test]
fn a_vni_is_synced_once_every_established_sync_server_sent_sync() {
    let mut b = feed_bench();
    b.up_sync(0);
    b.up_sync(1);
    b.add(0, "100#10.0.1.0/24@2001:db8::1");
    b.synced(0, 100);
    // Server 1 has not synced 100 yet.
    assert_eq!(b.p.take_feed(), vec![added("100#10.0.1.0/24@2001:db8::1")]);
    b.synced(1, 100);
    assert_eq!(b.p.take_feed(), vec![FeedEvent::Synced(Vni(100))]);
    assert_eq!(b.p.feed_snapshot(|_| true).1, vec![Vni(100)]);
    // Once per subscription: a later SYNC (a reconnect) says nothing.
    b.down(1);
    b.up_sync(1);
    b.synced(1, 100);
    assert_eq!(b.p.take_feed(), vec![]);
    // The filter applies to the synced list too.
    assert_eq!(b.p.feed_snapshot(|v| v == Vni(200)).1, vec![]);
}

#[test]
fn the_loss_of_the_only_unsynced_server_syncs_what_the_others_synced() {
    let mut b = feed_bench();
    b.up_sync(0);
    b.up_sync(1);
    b.synced(0, 200);
    assert_eq!(b.p.take_feed(), vec![]);
    b.down(1);
    assert_eq!(b.p.take_feed(), vec![FeedEvent::Synced(Vni(200))]);
}

#[test]
fn without_sync_a_vni_is_synced_at_the_hold_time_not_earlier() {
    let mut b = feed_bench();
    b.up(0);
    b.add(0, "100#10.0.1.0/24@2001:db8::1");
    // Quiet for far longer than QUIET_AFTER_DUMP: no guess.
    b.advance(HOLD - Duration::from_secs(1));
    assert_eq!(b.p.take_feed(), vec![added("100#10.0.1.0/24@2001:db8::1")]);
    b.advance(Duration::from_secs(1));
    let mut synced = b.p.take_feed();
    synced.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(
        synced,
        vec![FeedEvent::Synced(Vni(100)), FeedEvent::Synced(Vni(200))]
    );
}

#[test]
fn unsubscribing_removes_the_vnis_routes_and_resubscribing_waits_again() {
    let mut b = feed_bench();
    b.up_sync(0);
    b.add(0, "100#10.0.1.0/24@2001:db8::1");
    b.synced(0, 100);
    b.synced(0, 200);
    let _ = b.p.take_feed();
    let ops = b.p.unsubscribe(Vni(100));
    b.run(ops);
    assert_eq!(
        b.p.take_feed(),
        vec![removed("100#10.0.1.0/24@2001:db8::1")]
    );
    assert_eq!(b.p.feed_snapshot(|_| true).1, vec![Vni(200)]);
    b.p.subscribe(Vni(100));
    b.synced(0, 200);
    assert_eq!(b.p.take_feed(), vec![], "100 waits for its own SYNC");
    // The server's session predates the subscription: its SYNC for 100 comes
    // after the new SUBSCRIBE's dump.
    b.synced(0, 100);
    assert_eq!(b.p.take_feed(), vec![FeedEvent::Synced(Vni(100))]);
}
