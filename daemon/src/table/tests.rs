use super::*;

fn r(s: &str) -> Route {
    s.parse().unwrap()
}

fn dump(t: &RouteTable, vni: u32, exclude: SessionId) -> Vec<Route> {
    let mut out = Vec::new();
    t.for_each_route_in(Vni(vni), exclude, |route| out.push(*route));
    out.sort();
    out
}

#[test]
fn first_announcer_creates_route_and_last_withdraw_removes_it() {
    let mut t = RouteTable::new();
    let a = r("1#10.0.0.0/24@2001:db8::1");
    assert_eq!(t.announce(1, &a), Announced::New);
    assert_eq!(t.announce(1, &a), Announced::Duplicate);
    assert_eq!(t.announce(2, &a), Announced::Joined);
    assert_eq!(t.stats().routes, 1);
    assert_eq!(t.stats().announcements, 2);
    assert_eq!(t.withdraw(1, &a), Withdrawn::StillAnnounced);
    assert_eq!(t.withdraw(1, &a), Withdrawn::NotAnnounced);
    assert_eq!(t.withdraw(2, &a), Withdrawn::Gone);
    assert_eq!(t.stats(), TableStats::default());
}

#[test]
fn withdraw_of_unknown_route_is_ignored() {
    let mut t = RouteTable::new();
    let a = r("1#10.0.0.0/24@2001:db8::1");
    assert_eq!(t.withdraw(1, &a), Withdrawn::NotAnnounced);
    t.announce(2, &a);
    assert_eq!(t.withdraw(1, &a), Withdrawn::NotAnnounced);
    assert_eq!(t.announcers(&a), vec![2]);
}

#[test]
fn ecmp_hops_and_nat_port_ranges_are_distinct_routes() {
    let mut t = RouteTable::new();
    for s in [
        "1#10.0.0.0/24@2001:db8::1",
        "1#10.0.0.0/24@2001:db8::2",
        "1#10.0.0.0/24@2001:db8::1#nat#1#10",
        "1#10.0.0.0/24@2001:db8::1#nat#11#20",
        "1#10.0.0.0/24@2001:db8::1#lb",
        "2#10.0.0.0/24@2001:db8::1",
    ] {
        assert_eq!(t.announce(1, &r(s)), Announced::New, "{s}");
    }
    assert_eq!(t.stats().routes, 6);
    assert_eq!(t.stats().vnis, 2);
    assert_eq!(dump(&t, 1, 99).len(), 5);
}

#[test]
fn dump_excludes_the_subscribers_own_routes() {
    let mut t = RouteTable::new();
    let mine = r("1#10.0.0.0/24@2001:db8::1");
    let theirs = r("1#10.0.1.0/24@2001:db8::2");
    let shared = r("1#10.0.2.0/24@2001:db8::3");
    t.announce(1, &mine);
    t.announce(2, &theirs);
    t.announce(1, &shared);
    t.announce(2, &shared);
    assert_eq!(dump(&t, 1, 1), vec![theirs]);
    assert_eq!(dump(&t, 1, 3), {
        let mut v = vec![mine, theirs, shared];
        v.sort();
        v
    });
    assert!(dump(&t, 2, 3).is_empty());
}

#[test]
fn removing_a_session_withdraws_only_routes_left_without_announcer() {
    let mut t = RouteTable::new();
    let only1 = r("1#10.0.0.0/24@2001:db8::1");
    let both = r("1#10.0.1.0/24@2001:db8::1");
    let other_vni = r("7#2001:db8:7::/48@2001:db8::1");
    t.announce(1, &only1);
    t.announce(1, &both);
    t.announce(2, &both);
    t.announce(1, &other_vni);
    t.subscribe(1, Vni(1));
    let mut gone = Vec::new();
    t.remove_session(1, |route| gone.push(*route));
    gone.sort();
    let mut expected = vec![only1, other_vni];
    expected.sort();
    assert_eq!(gone, expected);
    assert_eq!(t.announcers(&both), vec![2]);
    assert!(!t.is_subscribed(1, Vni(1)));
    assert_eq!(t.stats().routes, 1);
    assert_eq!(t.stats().subscriptions, 0);
    // The session is forgotten: a second removal reports nothing.
    t.remove_session(1, |_| panic!("nothing left"));
}

#[test]
fn subscriptions_are_deduplicated() {
    let mut t = RouteTable::new();
    assert!(t.subscribe(1, Vni(5)));
    assert!(!t.subscribe(1, Vni(5)));
    assert!(t.subscribe(2, Vni(5)));
    assert_eq!(t.stats().subscriptions, 2);
    assert!(t.unsubscribe(1, Vni(5)));
    assert!(!t.unsubscribe(1, Vni(5)));
    assert!(!t.unsubscribe(1, Vni(6)));
    assert_eq!(t.stats().subscriptions, 1);
}

#[test]
fn slots_are_reused_and_next_hops_released() {
    let mut t = RouteTable::new();
    for round in 0..3 {
        for i in 0..100u32 {
            let route = r(&format!(
                "1#10.0.{}.{}/32@2001:db8::{:x}",
                i / 256,
                i % 256,
                i % 7 + 1
            ));
            assert_eq!(t.announce(round + 1, &route), Announced::New);
        }
        assert_eq!(t.stats().next_hops, 7);
        t.remove_session(round + 1, |_| {});
        assert_eq!(t.stats(), TableStats::default());
    }
}

#[test]
fn withdrawal_cost_is_proportional_to_the_sessions_own_routes() {
    // A big table from session 1, one route from session 2: removing session 2
    // visits one route (the callback fires once and the big table is intact).
    let mut t = RouteTable::new();
    for i in 0..50_000u32 {
        let route = r(&format!("1#10.{}.{}.0/24@2001:db8::1", i / 256, i % 256));
        t.announce(1, &route);
    }
    t.announce(2, &r("1#192.168.0.0/16@2001:db8::2"));
    let mut calls = 0;
    t.remove_session(2, |_| calls += 1);
    assert_eq!(calls, 1);
    assert_eq!(t.stats().routes, 50_000);
}

#[test]
fn paging_returns_every_stable_route_exactly_once_despite_churn() {
    let mut t = RouteTable::new();
    let stable: Vec<Route> = (0..500u32)
        .map(|i| {
            r(&format!(
                "{}#10.{}.{}.0/24@2001:db8::1",
                i % 3,
                i / 256,
                i % 256
            ))
        })
        .collect();
    for route in &stable {
        t.announce(20, route);
    }
    let mut seen = std::collections::BTreeMap::new();
    let mut after = None;
    let mut churn = 0u32;
    loop {
        let (page, next) = t.page(after, 37, |_, _| true);
        for (route, announcers) in page {
            *seen.entry(route).or_insert(0) += 1;
            assert!(!announcers.is_empty());
        }
        // Routes come and go between pages (reusing freed slots).
        let extra = r(&format!("1#192.168.{}.0/24@2001:db8::9", churn % 200));
        t.announce(21, &extra);
        if churn % 2 == 1 {
            t.withdraw(21, &extra);
        }
        churn += 1;
        match next {
            Some(cursor) => after = Some(cursor),
            None => break,
        }
    }
    for route in &stable {
        assert_eq!(seen.get(route), Some(&1), "{route}");
    }
    assert!(seen.values().all(|&n| n == 1));
}

#[test]
fn paging_applies_the_filter_and_ends_with_no_cursor() {
    let mut t = RouteTable::new();
    for i in 0..10u32 {
        t.announce(20 + i % 2, &r(&format!("5#10.0.{i}.0/24@2001:db8::1")));
    }
    let (page, next) = t.page(None, 100, |_, a| a.contains(&21));
    assert_eq!(page.len(), 5);
    assert!(next.is_none());
    let (page, next) = t.page(None, 5, |_, a| a.contains(&20));
    assert_eq!(page.len(), 5);
    assert!(next.is_none(), "exactly a full page and nothing more");
    let (page, next) = t.page(None, 4, |_, a| a.contains(&20));
    assert_eq!(page.len(), 4);
    let (rest, end) = t.page(next, 4, |_, a| a.contains(&20));
    assert_eq!(rest.len(), 1);
    assert!(end.is_none());
}

#[test]
fn vni_stats_count_routes_announcers_and_subscribers() {
    let mut t = RouteTable::new();
    t.announce(20, &r("7#10.0.0.0/24@2001:db8::1"));
    t.announce(21, &r("7#10.0.0.0/24@2001:db8::1"));
    t.announce(21, &r("7#10.0.1.0/24@2001:db8::1"));
    t.announce(LOCAL_API, &r("8#10.0.1.0/24@2001:db8::1"));
    t.subscribe(22, Vni(7));
    t.subscribe(23, Vni(9));
    let stats = t.vni_stats(None);
    assert_eq!(
        stats,
        vec![
            VniStats {
                vni: Vni(7),
                routes: 2,
                announcers: 2,
                subscribers: 1,
                digest: digest::route_hash(&r("7#10.0.0.0/24@2001:db8::1"))
                    .wrapping_add(digest::route_hash(&r("7#10.0.1.0/24@2001:db8::1"))),
            },
            VniStats {
                vni: Vni(8),
                routes: 1,
                announcers: 1,
                subscribers: 0,
                digest: digest::route_hash(&r("8#10.0.1.0/24@2001:db8::1")),
            },
            VniStats {
                vni: Vni(9),
                routes: 0,
                announcers: 0,
                subscribers: 1,
                digest: 0,
            },
        ]
    );
    assert_eq!(t.vni_stats(Some(Vni(8))).len(), 1);
    assert_eq!(t.subscriptions_of(22), vec![Vni(7)]);
}

mod properties {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    #[derive(Debug, Clone)]
    enum Op {
        Announce(SessionId, usize),
        Withdraw(SessionId, usize),
        Disconnect(SessionId),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (1u32..5, 0usize..12).prop_map(|(s, r)| Op::Announce(s, r)),
            2 => (1u32..5, 0usize..12).prop_map(|(s, r)| Op::Withdraw(s, r)),
            1 => (1u32..5).prop_map(Op::Disconnect),
        ]
    }

    fn universe() -> Vec<Route> {
        (0..12)
            .map(|i| {
                r(&format!(
                    "{}#10.0.{}.0/24@2001:db8::{}",
                    i % 2 + 1,
                    i % 3,
                    i % 2 + 1
                ))
            })
            .collect()
    }

    proptest! {
        /// Against a naive model: exactly one ADD when a route first appears,
        /// one REMOVE when its last announcer goes, and the table content
        /// always equals the model's.
        #[test]
        fn table_matches_naive_model(ops in proptest::collection::vec(op(), 0..200)) {
            let routes = universe();
            let mut t = RouteTable::new();
            let mut model: BTreeMap<Route, BTreeSet<SessionId>> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Announce(s, i) => {
                        let set = model.entry(routes[i]).or_default();
                        let was_empty = set.is_empty();
                        let inserted = set.insert(s);
                        let expect = if !inserted { Announced::Duplicate } else if was_empty { Announced::New } else { Announced::Joined };
                        prop_assert_eq!(t.announce(s, &routes[i]), expect);
                    }
                    Op::Withdraw(s, i) => {
                        let set = model.entry(routes[i]).or_default();
                        let expect = if !set.remove(&s) { Withdrawn::NotAnnounced } else if set.is_empty() { Withdrawn::Gone } else { Withdrawn::StillAnnounced };
                        prop_assert_eq!(t.withdraw(s, &routes[i]), expect);
                    }
                    Op::Disconnect(s) => {
                        let mut expect = BTreeSet::new();
                        for (route, set) in model.iter_mut() {
                            if set.remove(&s) && set.is_empty() {
                                expect.insert(*route);
                            }
                        }
                        let mut gone = BTreeSet::new();
                        t.remove_session(s, |route| { gone.insert(*route); });
                        prop_assert_eq!(gone, expect);
                    }
                }
                model.retain(|_, set| !set.is_empty());
                let mut all = BTreeSet::new();
                for vni in [1, 2] {
                    t.for_each_route_in(Vni(vni), NOBODY, |route| { all.insert(*route); });
                }
                prop_assert_eq!(&all, &model.keys().copied().collect::<BTreeSet<_>>());
                for (route, set) in &model {
                    let mut got = t.announcers(route);
                    got.sort();
                    prop_assert_eq!(got, set.iter().copied().collect::<Vec<_>>());
                }
                // Distinct announcers and routes per VNI, kept incrementally.
                for stats in t.vni_stats(None) {
                    let in_vni: Vec<_> = model.iter().filter(|(r, _)| r.vni == stats.vni).collect();
                    let announcers: BTreeSet<SessionId> = in_vni.iter().flat_map(|(_, set)| set.iter().copied()).collect();
                    prop_assert_eq!(stats.routes, in_vni.len());
                    prop_assert_eq!(stats.announcers, announcers.len());
                    // The incremental digest equals the digest computed from scratch.
                    let want = in_vni.iter().fold(0u64, |d, (r, _)| d.wrapping_add(digest::route_hash(r)));
                    prop_assert_eq!(stats.digest, want);
                }
            }
        }

        /// Two tables that end with the same routes have equal digests, however
        /// the routes arrived: other orders, other announcers, routes announced
        /// and withdrawn in between, sessions that came and went.
        #[test]
        fn digest_depends_only_on_the_final_routes(
            keep in proptest::collection::vec(0usize..12, 0..12),
            noise_a in proptest::collection::vec(op(), 0..60),
            noise_b in proptest::collection::vec(op(), 0..60),
            order in proptest::collection::vec(any::<u32>(), 12),
            announcer_b in 20u32..30,
        ) {
            let routes = universe();
            let digests = |t: &RouteTable| -> Vec<(Vni, usize, u64)> {
                t.vni_stats(None).into_iter().filter(|s| s.routes > 0).map(|s| (s.vni, s.routes, s.digest)).collect()
            };
            // Noise from sessions 1..5, which then disconnect: only the kept
            // routes (announced by sessions that stay) remain.
            let noisy = |noise: &[Op], t: &mut RouteTable| {
                for op in noise {
                    match *op {
                        Op::Announce(s, i) => { t.announce(s, &routes[i]); }
                        Op::Withdraw(s, i) => { t.withdraw(s, &routes[i]); }
                        Op::Disconnect(s) => t.remove_session(s, |_| {}),
                    }
                }
            };
            let mut a = RouteTable::new();
            for &i in &keep {
                a.announce(LOCAL_API, &routes[i]);
            }
            noisy(&noise_a, &mut a);
            let mut b = RouteTable::new();
            noisy(&noise_b, &mut b);
            // A permutation of `keep` (sorted by random keys), a second
            // announcer and a repeated announcement for half of them.
            let mut shuffled: Vec<(u32, usize)> = order.iter().copied().zip(keep.iter().copied()).collect();
            shuffled.sort_unstable();
            let shuffled: Vec<usize> = shuffled.into_iter().map(|(_, i)| i).collect();
            for (n, &i) in shuffled.iter().enumerate() {
                b.announce(announcer_b, &routes[i]);
                if n % 2 == 0 {
                    b.announce(announcer_b + 1, &routes[i]);
                    b.announce(announcer_b, &routes[i]);
                }
            }
            for s in 1..5 {
                a.remove_session(s, |_| {});
                b.remove_session(s, |_| {});
            }
            b.remove_session(announcer_b + 1, |_| {});
            prop_assert_eq!(digests(&a), digests(&b));
            // And a table holding one route fewer (or more) differs.
            if let Some(&i) = keep.first() {
                a.withdraw(LOCAL_API, &routes[i]);
                prop_assert_ne!(digests(&a), digests(&b));
            }
        }
    }
}

#[test]
fn update_mail_decodes_into_the_updates_it_carries() {
    use crate::table::log::Mail;
    use crate::wire::{encode_update, Action, Update};
    use bytes::BytesMut;

    let (a, b) = (
        r("1#10.0.0.0/24@2001:db8::1"),
        r("1#10.0.1.0/24@2001:db8::2"),
    );
    let mut buf = BytesMut::new();
    encode_update(Action::Add, &a, &mut buf);
    encode_update(Action::Remove, &b, &mut buf);
    let updates = Mail::Updates {
        frames: buf.freeze(),
        marks: None,
        count: 2,
        since: None,
    };
    assert_eq!(
        updates.updates().collect::<Vec<_>>(),
        vec![
            Update {
                action: Action::Add,
                route: a
            },
            Update {
                action: Action::Remove,
                route: b
            },
        ]
    );
}

#[test]
fn routes_of_lists_exactly_a_sessions_routes() {
    let mut t = RouteTable::new();
    let mine = [
        r("1#10.0.0.0/24@2001:db8::1"),
        r("2#10.0.0.0/24@2001:db8::1"),
        r("1#10.0.1.0/24@2001:db8::2#nat#1#10"),
    ];
    let shared = r("3#10.9.0.0/24@2001:db8::9");
    for route in &mine {
        t.announce(20, route);
    }
    t.announce(20, &shared);
    t.announce(21, &shared);
    t.announce(21, &r("1#10.5.0.0/24@2001:db8::5"));
    t.withdraw(20, &mine[1]);
    let mut got = t.routes_of(20);
    got.sort();
    let mut want = vec![mine[0], mine[2], shared];
    want.sort();
    assert_eq!(got, want);
    assert!(t.routes_of(22).is_empty());
    let keys = t.route_keys_of(21);
    assert_eq!(keys.len(), 2);
    // A freed slot resolves to nothing.
    let (vni, slot) = t.route_keys_of(20)[0];
    let gone = t.route_at(vni, slot).unwrap();
    t.withdraw(20, &gone);
    if t.announcers(&gone).is_empty() {
        assert_eq!(t.route_at(vni, slot), None);
    }
}

#[test]
fn digest_changes_only_when_a_route_appears_or_goes() {
    let mut t = RouteTable::new();
    let a = r("5#10.0.0.0/24@2001:db8::1");
    let b = r("5#10.0.1.0/24@2001:db8::1#nat#1#10");
    let digest = |t: &RouteTable| {
        t.vni_stats(Some(Vni(5)))
            .first()
            .map_or((0, 0), |s| (s.routes, s.digest))
    };
    t.subscribe(30, Vni(5));
    assert_eq!(digest(&t), (0, 0), "a VNI without routes");
    t.announce(20, &a);
    let one = digest(&t);
    assert_eq!(one, (1, digest::route_hash(&a)));
    // Re-announcing, or a second announcer, changes nothing.
    t.announce(20, &a);
    t.announce(21, &a);
    t.announce(LOCAL_API, &a);
    assert_eq!(digest(&t), one);
    t.announce(21, &b);
    let two = digest(&t);
    assert_eq!(two.0, 2);
    assert_eq!(two.1, one.1.wrapping_add(digest::route_hash(&b)));
    // A withdraw that leaves other announcers changes nothing; an unknown one neither.
    t.withdraw(20, &a);
    t.withdraw(22, &b);
    assert_eq!(digest(&t), two);
    // The session end takes b (its only announcer) but not a.
    t.remove_session(21, |_| {});
    assert_eq!(digest(&t), one);
    // The last announcer withdraws: back to the empty digest.
    t.withdraw(LOCAL_API, &a);
    assert_eq!(digest(&t), (0, 0));
    // Other VNIs are not affected.
    t.announce(20, &r("6#10.0.0.0/24@2001:db8::1"));
    assert_eq!(digest(&t), (0, 0));
}
