use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::Ipv6Addr;

use proptest::prelude::*;

use super::*;
use crate::wire::{Address, NextHop, NextHopType};

const S1: ServerId = ServerId(1);
const S2: ServerId = ServerId(2);

fn route(s: &str) -> Route {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

fn change(vni: u32, dest: &str, hops: &[&str]) -> Change {
    Change {
        vni: Vni(vni),
        dest: crate::wire::text::parse_prefix(dest).unwrap(),
        next_hops: hops.iter().map(|h| v6(h)).collect(),
    }
}

fn key(vni: u32, dest: &str) -> (Vni, Destination) {
    (Vni(vni), crate::wire::text::parse_prefix(dest).unwrap())
}

#[test]
fn first_add_installs_and_repeat_is_silent() {
    let mut rr = ReceivedRoutes::new();
    let r = route("100#10.0.1.0/24@2001:db8::1");
    assert_eq!(
        rr.add(S1, r),
        vec![change(100, "10.0.1.0/24", &["2001:db8::1"])]
    );
    assert_eq!(rr.add(S1, r), vec![]);
    assert_eq!(rr.provider_count(&r), 1);
    assert_eq!(rr.route_count(), 1);
}

#[test]
fn second_server_adds_a_provider_but_no_change() {
    let mut rr = ReceivedRoutes::new();
    let r = route("100#10.0.1.0/24@2001:db8::1");
    assert_eq!(rr.add(S1, r).len(), 1);
    assert_eq!(rr.add(S2, r), vec![]);
    assert_eq!(rr.provider_count(&r), 2);
    // One server withdrawing keeps it installed (no HA flap).
    assert_eq!(rr.remove(S1, r), vec![]);
    assert_eq!(rr.provider_count(&r), 1);
    assert_eq!(rr.remove(S2, r), vec![change(100, "10.0.1.0/24", &[])]);
    assert_eq!(rr.provider_count(&r), 0);
    assert!(rr.snapshot().is_empty());
}

#[test]
fn remove_of_unknown_route_or_server_is_ignored() {
    let mut rr = ReceivedRoutes::new();
    let r = route("100#10.0.1.0/24@2001:db8::1");
    assert_eq!(rr.remove(S1, r), vec![]);
    rr.add(S1, r);
    // S2 never provided it: nothing happens, S1 still provides it.
    assert_eq!(rr.remove(S2, r), vec![]);
    assert_eq!(rr.next_hops(r.vni, r.dest), vec![v6("2001:db8::1")]);
    assert_eq!(rr.drop_server(S2), vec![]);
}

#[test]
fn multipath_set_is_sorted_and_grows_and_shrinks() {
    let mut rr = ReceivedRoutes::new();
    let b = route("100#10.0.1.0/24@2001:db8::b");
    let a = route("100#10.0.1.0/24@2001:db8::a");
    assert_eq!(
        rr.add(S1, b),
        vec![change(100, "10.0.1.0/24", &["2001:db8::b"])]
    );
    assert_eq!(
        rr.add(S2, a),
        vec![change(100, "10.0.1.0/24", &["2001:db8::a", "2001:db8::b"])]
    );
    assert_eq!(
        rr.remove(S1, b),
        vec![change(100, "10.0.1.0/24", &["2001:db8::a"])]
    );
}

#[test]
fn nat_hops_sharing_an_address_count_per_address() {
    let mut rr = ReceivedRoutes::new();
    let n1 = route("200#10.0.2.0/24@2001:db8::4#nat#1024#2048");
    let n2 = route("200#10.0.2.0/24@2001:db8::4#nat#2049#4096");
    assert_eq!(
        rr.add(S1, n1),
        vec![change(200, "10.0.2.0/24", &["2001:db8::4"])]
    );
    // Same address: the kernel set does not change.
    assert_eq!(rr.add(S1, n2), vec![]);
    assert_eq!(rr.route_count(), 2);
    // One of the two goes: the address stays.
    assert_eq!(rr.remove(S1, n1), vec![]);
    assert_eq!(rr.remove(S1, n2), vec![change(200, "10.0.2.0/24", &[])]);
}

#[test]
fn ipv4_next_hops_are_tracked_but_not_installed() {
    let mut rr = ReceivedRoutes::new();
    let r4 = route("100#10.0.5.0/24@192.0.2.7");
    assert_eq!(rr.add(S1, r4), vec![]);
    assert_eq!(rr.provider_count(&r4), 1);
    assert!(rr.snapshot().is_empty());
    // An IPv6 hop on the same destination is installed alone.
    let r6 = route("100#10.0.5.0/24@2001:db8::9");
    assert_eq!(
        rr.add(S1, r6),
        vec![change(100, "10.0.5.0/24", &["2001:db8::9"])]
    );
    assert_eq!(rr.remove(S1, r4), vec![]);
    assert_eq!(rr.drop_server(S1), vec![change(100, "10.0.5.0/24", &[])]);
    assert_eq!(rr.route_count(), 0);
}

#[test]
fn drop_server_removes_only_what_no_other_server_provides() {
    let mut rr = ReceivedRoutes::new();
    let shared = route("100#10.0.1.0/24@2001:db8::1");
    let only1 = route("100#10.0.2.0/24@2001:db8::2");
    let only1_same_dest = route("100#10.0.1.0/24@2001:db8::3");
    let ipv6_dest = route("300#2001:db8:100::/48@2001:db8::5");
    rr.add(S1, shared);
    rr.add(S2, shared);
    rr.add(S1, only1);
    rr.add(S1, only1_same_dest);
    rr.add(S1, ipv6_dest);
    assert_eq!(
        rr.drop_server(S1),
        vec![
            change(100, "10.0.1.0/24", &["2001:db8::1"]),
            change(100, "10.0.2.0/24", &[]),
            change(300, "2001:db8:100::/48", &[]),
        ]
    );
    assert_eq!(rr.provider_count(&shared), 1);
    assert_eq!(rr.routes_of(S1).count(), 0);
    // Dropping again is a no-op.
    assert_eq!(rr.drop_server(S1), vec![]);
    assert_eq!(
        rr.snapshot(),
        vec![(Vni(100), shared.dest, vec![v6("2001:db8::1")])]
    );
}

#[test]
fn local_announcement_suppresses_and_releases_received_routes() {
    let mut rr = ReceivedRoutes::new();
    let r = route("100#10.0.1.0/24@2001:db8::1");
    rr.add(S1, r);
    // This node now announces the same destination: remove from the kernel.
    assert_eq!(
        rr.set_local_announcements([key(100, "10.0.1.0/24")]),
        vec![change(100, "10.0.1.0/24", &[])]
    );
    assert!(rr.snapshot().is_empty());
    // Still tracked: more received hops change nothing in the kernel.
    assert_eq!(rr.add(S2, route("100#10.0.1.0/24@2001:db8::2")), vec![]);
    assert_eq!(rr.next_hops(Vni(100), r.dest), Vec::<Ipv6Addr>::new());
    // Setting the same set again: nothing.
    assert_eq!(
        rr.set_local_announcements([key(100, "10.0.1.0/24")]),
        vec![]
    );
    // The local announcement goes away: the received routes appear.
    assert_eq!(
        rr.set_local_announcements([]),
        vec![change(100, "10.0.1.0/24", &["2001:db8::1", "2001:db8::2"])]
    );
}

#[test]
fn local_announcement_of_other_vni_or_unreceived_dest_changes_nothing() {
    let mut rr = ReceivedRoutes::new();
    rr.add(S1, route("100#10.0.1.0/24@2001:db8::1"));
    assert_eq!(
        rr.set_local_announcements([key(200, "10.0.1.0/24"), key(100, "10.0.9.0/24")]),
        vec![]
    );
    assert_eq!(rr.local_announcements().count(), 2);
    // A route received later for a local pair is never installed.
    assert_eq!(rr.add(S1, route("100#10.0.9.0/24@2001:db8::1")), vec![]);
    assert_eq!(rr.snapshot().len(), 1);
}

#[test]
fn destination_identity_is_exact_not_masked() {
    let mut rr = ReceivedRoutes::new();
    let a = route("100#10.0.4.0/24@2001:db8::1");
    let b = route("100#10.0.4.7/24@2001:db8::1");
    assert_eq!(rr.add(S1, a).len(), 1);
    assert_eq!(rr.add(S1, b).len(), 1);
    assert_eq!(rr.snapshot().len(), 2);
}

#[test]
fn snapshot_is_sorted() {
    let mut rr = ReceivedRoutes::new();
    rr.add(S1, route("200#10.0.1.0/24@2001:db8::1"));
    rr.add(S1, route("100#10.0.2.0/24@2001:db8::2"));
    rr.add(S1, route("100#10.0.1.0/24@2001:db8::3"));
    let keys: Vec<_> = rr.snapshot().into_iter().map(|(v, d, _)| (v, d)).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
}

// ---------------------------------------------------------------------------
// Property test against a naive model
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Add(ServerId, Route),
    Remove(ServerId, Route),
    Drop(ServerId),
    SetLocal(Vec<(Vni, Destination)>),
}

/// A small universe so that operations collide often: 3 servers, 2 VNIs,
/// 2 destinations, next hops on 3 IPv6 addresses and 1 IPv4 address, with
/// two NAT port ranges per address (same address, different routes).
fn universe_route() -> impl Strategy<Value = Route> {
    (0u32..2, 0u8..2, 0u8..4, 0u8..3).prop_map(|(vni, dest, hop, kind)| {
        let dest =
            Destination::new(Address::from(std::net::Ipv4Addr::new(10, 0, dest, 0)), 24).unwrap();
        let addr = if hop == 3 {
            Address::from(std::net::Ipv4Addr::new(192, 0, 2, 1))
        } else {
            Address::from(Ipv6Addr::new(
                0x2001,
                0xdb8,
                0,
                0,
                0,
                0,
                0,
                u16::from(hop) + 1,
            ))
        };
        let next_hop = match kind {
            0 => NextHop::standard(addr),
            n => NextHop {
                addr,
                target_vni: 0,
                kind: NextHopType::NAT,
                nat_from: u16::from(n) * 1000,
                nat_to: u16::from(n) * 1000 + 999,
            },
        };
        Route {
            vni: Vni(100 + vni),
            dest,
            next_hop,
        }
    })
}

fn universe_key() -> impl Strategy<Value = (Vni, Destination)> {
    universe_route().prop_map(|r| (r.vni, r.dest))
}

fn op() -> impl Strategy<Value = Op> {
    let server = (0usize..3).prop_map(ServerId);
    prop_oneof![
        5 => (server.clone(), universe_route()).prop_map(|(s, r)| Op::Add(s, r)),
        3 => (server.clone(), universe_route()).prop_map(|(s, r)| Op::Remove(s, r)),
        1 => server.prop_map(Op::Drop),
        1 => proptest::collection::vec(universe_key(), 0..3).prop_map(Op::SetLocal),
    ]
}

/// The naive model: which (server, route) pairs exist, and the local set.
#[derive(Default)]
struct Model {
    pairs: HashSet<(ServerId, Route)>,
    local: HashSet<(Vni, Destination)>,
}

impl Model {
    fn apply(&mut self, op: &Op) {
        match op {
            Op::Add(s, r) => {
                self.pairs.insert((*s, *r));
            }
            Op::Remove(s, r) => {
                self.pairs.remove(&(*s, *r));
            }
            Op::Drop(s) => self.pairs.retain(|(x, _)| x != s),
            Op::SetLocal(keys) => self.local = keys.iter().copied().collect(),
        }
    }

    /// The kernel state computed from scratch.
    fn expected_kernel(&self) -> BTreeMap<(Vni, Destination), Vec<Ipv6Addr>> {
        let mut out: BTreeMap<(Vni, Destination), BTreeSet<Ipv6Addr>> = BTreeMap::new();
        for (_, r) in &self.pairs {
            let key = (r.vni, r.dest);
            if self.local.contains(&key) {
                continue;
            }
            if let std::net::IpAddr::V6(a) = r.next_hop.addr.to_ip() {
                out.entry(key).or_default().insert(a);
            }
        }
        out.into_iter()
            .map(|(k, v)| (k, v.into_iter().collect()))
            .collect()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn changes_keep_kernel_equal_to_model(ops in proptest::collection::vec(op(), 1..60)) {
        let mut rr = ReceivedRoutes::new();
        let mut model = Model::default();
        let mut kernel: BTreeMap<(Vni, Destination), Vec<Ipv6Addr>> = BTreeMap::new();
        // The received-routes feed's view, rebuilt from the deltas alone.
        let mut fed: BTreeSet<Route> = BTreeSet::new();
        for op in &ops {
            let changes = match op {
                Op::Add(s, r) => rr.add(*s, *r),
                Op::Remove(s, r) => rr.remove(*s, *r),
                Op::Drop(s) => rr.drop_server(*s),
                Op::SetLocal(keys) => rr.set_local_announcements(keys.iter().copied()),
            };
            model.apply(op);
            let mut seen = HashSet::new();
            for c in changes {
                let key = (c.vni, c.dest);
                prop_assert!(seen.insert(key), "two changes for one key in one op: {op:?}");
                let mut sorted = c.next_hops.clone();
                sorted.sort();
                sorted.dedup();
                prop_assert_eq!(&sorted, &c.next_hops, "next hops not sorted/deduplicated");
                let old = kernel.get(&key).cloned().unwrap_or_default();
                prop_assert_ne!(&old, &c.next_hops, "change that changes nothing: {:?}", op);
                if c.next_hops.is_empty() {
                    kernel.remove(&key);
                } else {
                    kernel.insert(key, c.next_hops);
                }
            }
            let expected = model.expected_kernel();
            prop_assert_eq!(&kernel, &expected, "after {:?}", op);
            let snapshot: BTreeMap<_, _> = rr
                .snapshot()
                .into_iter()
                .map(|(v, d, h)| ((v, d), h))
                .collect();
            prop_assert_eq!(&snapshot, &expected);
            // The deltas alone rebuild the provided set: each Added is a
            // route not there yet, each Removed one that was.
            for d in rr.take_deltas() {
                match d {
                    RouteDelta::Added(r) => prop_assert!(fed.insert(r), "Added twice: {:?}", r),
                    RouteDelta::Removed(r) => prop_assert!(fed.remove(&r), "Removed unknown: {:?}", r),
                }
            }
            let provided: BTreeSet<Route> = model.pairs.iter().map(|(_, r)| *r).collect();
            prop_assert_eq!(&fed, &provided, "feed after {:?}", op);
            prop_assert_eq!(rr.route_list(|_| true), provided.iter().copied().collect::<Vec<_>>());
            // Provider counts agree with the model too.
            for (_, r) in &model.pairs {
                let n = model.pairs.iter().filter(|(_, x)| x == r).count() as u32;
                prop_assert_eq!(rr.provider_count(r), n);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Changing the local announcements by difference gives exactly what
    /// setting the complete set gives.
    #[test]
    fn local_changes_by_difference_equal_setting_the_whole_set(
        received in proptest::collection::vec(universe_route(), 0..12),
        steps in proptest::collection::vec(
            (proptest::collection::vec(universe_route(), 0..4), proptest::collection::vec(universe_route(), 0..4)),
            1..12,
        ),
    ) {
        let mut by_diff = ReceivedRoutes::new();
        let mut by_set = ReceivedRoutes::new();
        for r in &received {
            by_diff.add(S1, *r);
            by_set.add(S1, *r);
        }
        let mut announced: BTreeSet<Route> = BTreeSet::new();
        for (add, remove) in steps {
            // What an announcement change passes: routes that really appear
            // and leave.
            let leave: Vec<Route> = remove.iter().filter(|r| announced.remove(r)).copied().collect();
            let appear: Vec<Route> = add.iter().filter(|r| announced.insert(**r)).copied().collect();
            let a = by_diff.change_local_announcements(&appear, &leave);
            let b = by_set.set_local_announcements(announced.iter().map(|r| (r.vni, r.dest)));
            prop_assert_eq!(a, b);
            prop_assert_eq!(by_diff.snapshot(), by_set.snapshot());
        }
    }
}
