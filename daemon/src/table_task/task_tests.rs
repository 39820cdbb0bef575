//! The table task's fan-out against a naive model: every subscriber of
//! a VNI (and only it) hears each ADD/REMOVE exactly once, never its
//! own, in order, and its dump sits exactly between the updates before
//! and after its SUBSCRIBE, wherever the batches are sealed.

use super::*;
use crate::wire::{decode_frame, Frame, Message, Update};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// What a subscriber sees of one VNI, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    Dump(BTreeSet<Route>),
    Add(Route),
    Remove(Route),
}

#[derive(Clone, Debug)]
enum Step {
    Announce(usize, usize),
    Withdraw(usize, usize),
    Subscribe(usize, u32),
    Unsubscribe(usize, u32),
    /// The session of this slot ends (its routes withdrawn at once, or
    /// only at the next `Expire`); a new one takes the slot.
    Disconnect(usize, bool),
    /// Delayed withdrawals fall due.
    Expire,
    /// End of a batch.
    Seal,
}

const SLOTS: usize = 4;

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        5 => (0..SLOTS, 0usize..16).prop_map(|(s, r)| Step::Announce(s, r)),
        3 => (0..SLOTS, 0usize..16).prop_map(|(s, r)| Step::Withdraw(s, r)),
        2 => (0..SLOTS, 1u32..4).prop_map(|(s, v)| Step::Subscribe(s, v)),
        1 => (0..SLOTS, 1u32..4).prop_map(|(s, v)| Step::Unsubscribe(s, v)),
        1 => (0..SLOTS, any::<bool>()).prop_map(|(s, d)| Step::Disconnect(s, d)),
        1 => Just(Step::Expire),
        2 => Just(Step::Seal),
    ]
}

fn universe() -> Vec<Route> {
    (0..16)
        .map(|i| {
            format!("{}#10.0.{}.0/24@2001:db8::{}", i % 3 + 1, i % 4, i % 2 + 1)
                .parse()
                .unwrap()
        })
        .collect()
}

fn task() -> TableTask {
    TableTask::new(Arc::default())
}

/// `session` subscribes to `vni` (no SYNC), its mail going to `mailbox`.
fn subscribe(t: &mut TableTask, session: SessionId, vni: u32, mailbox: &Arc<Mailbox>) {
    t.handle(Command::Ops {
        session,
        ops: vec![Op::Subscribe {
            vni: Vni(vni),
            sync: false,
        }],
        received: Instant::now(),
        mailbox: mailbox.clone(),
    });
}

/// `session` announces `route` (it subscribes to nothing).
fn announce(t: &mut TableTask, session: SessionId, route: Route) {
    t.handle(Command::Ops {
        session,
        ops: vec![Op::Announce(route)],
        received: Instant::now(),
        mailbox: Mailbox::new(u64::MAX),
    });
}

fn decode_all(bytes: &[u8]) -> Vec<Update> {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(frame) = decode_frame(&mut buf).unwrap() {
        let Frame::Message(Message::Update(u)) = frame else {
            panic!("not an UPDATE: {frame:?}");
        };
        out.push(u);
    }
    assert!(buf.is_empty(), "a partial frame was delivered");
    out
}

/// Takes a mailbox's mail, appended to `seen` per VNI.
fn collect(mailbox: &Mailbox, seen: &mut BTreeMap<u32, Vec<Seen>>) {
    mailbox.take_while(|mail| {
        match mail {
            Mail::Updates { frames, count, .. } => {
                let updates = decode_all(&frames);
                assert_eq!(updates.len(), count as usize);
                for u in updates {
                    seen.entry(u.route.vni.0).or_default().push(match u.action {
                        Action::Add => Seen::Add(u.route),
                        Action::Remove => Seen::Remove(u.route),
                    });
                }
            }
            Mail::Dump {
                vni,
                frames,
                routes,
                ..
            } => {
                let set: BTreeSet<Route> = frames
                    .iter()
                    .flat_map(|f| decode_all(f))
                    .map(|u| {
                        assert_eq!(u.action, Action::Add);
                        assert_eq!(u.route.vni, vni);
                        u.route
                    })
                    .collect();
                assert_eq!(set.len(), routes);
                seen.entry(vni.0).or_default().push(Seen::Dump(set));
            }
        }
        Ok(())
    });
}

/// Between two dumps, the order of updates of different routes is free
/// (a session's end withdraws its routes in any order): keep each
/// route's own sequence, and the dumps where they are.
type Segments = Vec<(Option<BTreeSet<Route>>, BTreeMap<Route, Vec<bool>>)>;

fn per_route(list: Vec<Seen>) -> Segments {
    let mut out: Segments = vec![(None, BTreeMap::new())];
    for seen in list {
        match seen {
            Seen::Dump(set) => out.push((Some(set), BTreeMap::new())),
            Seen::Add(r) => out.last_mut().unwrap().1.entry(r).or_default().push(true),
            Seen::Remove(r) => out.last_mut().unwrap().1.entry(r).or_default().push(false),
        }
    }
    out
}

/// The naive model: who announces what, who subscribes to what, and
/// what each session must have seen per VNI.
#[derive(Default)]
struct Model {
    announcers: BTreeMap<Route, BTreeSet<SessionId>>,
    subs: BTreeMap<SessionId, BTreeSet<u32>>,
    expect: HashMap<SessionId, BTreeMap<u32, Vec<Seen>>>,
}

impl Model {
    /// `s` leaves every announcer set; routes left without one are
    /// withdrawn from the subscribers.
    fn withdraw_all(&mut self, s: SessionId) {
        let gone: Vec<Route> = self
            .announcers
            .iter_mut()
            .filter_map(|(r, set)| (set.remove(&s) && set.is_empty()).then_some(*r))
            .collect();
        for r in gone {
            self.tell(s, r, Seen::Remove(r));
        }
    }

    fn tell(&mut self, origin: SessionId, route: Route, seen: Seen) {
        for (s, vnis) in &self.subs {
            if *s != origin && vnis.contains(&route.vni.0) {
                self.expect
                    .entry(*s)
                    .or_default()
                    .entry(route.vni.0)
                    .or_default()
                    .push(seen.clone());
            }
        }
    }
}

fn run(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let routes = universe();
    let mut t = task();
    let mut model = Model::default();
    let mut ids: Vec<SessionId> = (0..SLOTS as u32).map(|i| 100 + i).collect();
    let mut next_id = 200;
    let mut boxes: HashMap<SessionId, Arc<Mailbox>> = HashMap::new();
    let mut seen: HashMap<SessionId, BTreeMap<u32, Vec<Seen>>> = HashMap::new();
    let at = Instant::now();
    let mut ghosts: Vec<SessionId> = Vec::new();
    for step in steps {
        let ops = |session: SessionId, op: Op, boxes: &mut HashMap<SessionId, Arc<Mailbox>>| {
            Command::Ops {
                session,
                ops: vec![op],
                received: at,
                mailbox: boxes
                    .entry(session)
                    .or_insert_with(|| Mailbox::new(u64::MAX))
                    .clone(),
            }
        };
        match step {
            Step::Announce(slot, i) => {
                let (s, r) = (ids[slot], routes[i]);
                let set = model.announcers.entry(r).or_default();
                let new = set.is_empty() && set.insert(s);
                set.insert(s);
                if new {
                    model.tell(s, r, Seen::Add(r));
                }
                t.handle(ops(s, Op::Announce(r), &mut boxes));
            }
            Step::Withdraw(slot, i) => {
                let (s, r) = (ids[slot], routes[i]);
                let set = model.announcers.entry(r).or_default();
                if set.remove(&s) && set.is_empty() {
                    model.tell(s, r, Seen::Remove(r));
                }
                t.handle(ops(s, Op::Withdraw(r), &mut boxes));
            }
            Step::Subscribe(slot, v) => {
                let s = ids[slot];
                if model.subs.entry(s).or_default().insert(v) {
                    let dump = model
                        .announcers
                        .iter()
                        .filter(|(r, set)| r.vni.0 == v && !set.is_empty() && !set.contains(&s))
                        .map(|(r, _)| *r)
                        .collect();
                    model
                        .expect
                        .entry(s)
                        .or_default()
                        .entry(v)
                        .or_default()
                        .push(Seen::Dump(dump));
                }
                t.handle(ops(
                    s,
                    Op::Subscribe {
                        vni: Vni(v),
                        sync: false,
                    },
                    &mut boxes,
                ));
            }
            Step::Unsubscribe(slot, v) => {
                let s = ids[slot];
                model.subs.entry(s).or_default().remove(&v);
                t.handle(ops(s, Op::Unsubscribe(Vni(v)), &mut boxes));
            }
            Step::Disconnect(slot, delayed) => {
                let s = ids[slot];
                ids[slot] = next_id;
                next_id += 1;
                // As the session shell does: it stops hearing first.
                if let Some(b) = boxes.get(&s) {
                    b.close();
                }
                model.subs.remove(&s);
                model.expect.remove(&s);
                seen.remove(&s);
                if delayed {
                    ghosts.push(s);
                } else {
                    model.withdraw_all(s);
                }
                t.handle(Command::Disconnect {
                    session: s,
                    at,
                    withdraw_delay: if delayed {
                        Duration::from_secs(1)
                    } else {
                        Duration::ZERO
                    },
                });
            }
            Step::Expire => {
                for s in ghosts.drain(..) {
                    model.withdraw_all(s);
                }
                t.expire(at + Duration::from_secs(2));
            }
            Step::Seal => t.log.seal(),
        }
        // Readers take their mail at arbitrary moments.
        for (s, b) in &boxes {
            if !b.is_closed() {
                collect(b, seen.entry(*s).or_default());
            }
        }
    }
    t.log.seal();
    for (s, b) in &boxes {
        if !b.is_closed() {
            collect(b, seen.entry(*s).or_default());
        }
    }
    for s in ids {
        let got = seen.remove(&s).unwrap_or_default();
        let want = model.expect.remove(&s).unwrap_or_default();
        let got: BTreeMap<_, _> = got
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(v, l)| (v, per_route(l)))
            .collect();
        let want: BTreeMap<_, _> = want.into_iter().map(|(v, l)| (v, per_route(l))).collect();
        prop_assert_eq!(got, want, "session {}", s);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn subscribers_hear_exactly_their_vnis_in_order(steps in proptest::collection::vec(step(), 0..120)) {
        run(steps)?;
    }
}

#[test]
fn an_update_reaches_only_the_subscribers_of_its_vni_and_never_its_origin() {
    let routes = universe();
    let mut t = task();
    let a = Mailbox::new(u64::MAX);
    let b = Mailbox::new(u64::MAX);
    let c = Mailbox::new(u64::MAX);
    let at = Instant::now();
    for (s, mb, vni) in [(20, &a, 1), (21, &b, 1), (22, &c, 2)] {
        subscribe(&mut t, s, vni, mb);
    }
    t.log.seal();
    let vni1 = routes.iter().find(|r| r.vni.0 == 1).copied().unwrap();
    t.handle(Command::Ops {
        session: 20,
        ops: vec![Op::Announce(vni1)],
        received: at,
        mailbox: a.clone(),
    });
    t.log.seal();
    let mut seen = [BTreeMap::new(), BTreeMap::new(), BTreeMap::new()];
    for (mb, seen) in [&a, &b, &c].into_iter().zip(seen.iter_mut()) {
        collect(mb, seen);
    }
    assert_eq!(seen[0][&1], vec![Seen::Dump(BTreeSet::new())]);
    assert_eq!(
        seen[1][&1],
        vec![Seen::Dump(BTreeSet::new()), Seen::Add(vni1)]
    );
    assert_eq!(seen[2].len(), 1, "only its own dump: {:?}", seen[2]);
}

#[test]
fn subscribers_joining_one_batch_hear_it_from_their_join_and_the_others_in_one_mail() {
    // More joins than the scan handles (the hashed lookup), each between
    // two announcements of the same batch.
    const JOINERS: u32 = 24;
    let mut t = task();
    let early = Mailbox::new(u64::MAX);
    subscribe(&mut t, 1, 7, &early);
    t.log.seal();
    let route = |i: u32| -> Route { format!("7#10.1.{i}.0/24@2001:db8::1").parse().unwrap() };
    let mut joiners = Vec::new();
    for i in 0..JOINERS {
        announce(&mut t, 2, route(i));
        let mailbox = Mailbox::new(u64::MAX);
        subscribe(&mut t, 100 + i, 7, &mailbox);
        joiners.push(mailbox);
    }
    announce(&mut t, 2, route(JOINERS));
    t.log.seal();
    for (i, mailbox) in joiners.iter().enumerate() {
        let mut seen = BTreeMap::new();
        collect(mailbox, &mut seen);
        let i = i as u32;
        let dump = (0..=i).map(route).collect();
        let later = (i + 1..=JOINERS).map(|j| Seen::Add(route(j)));
        let want: Vec<Seen> = std::iter::once(Seen::Dump(dump)).chain(later).collect();
        assert_eq!(seen[&7], want, "joiner {i}");
    }
    // The earlier subscriber gets the whole batch as one slice.
    let mut mails = 0;
    let mut heard = Vec::new();
    early.take_while(|mail| {
        mails += 1;
        heard.extend(mail.updates().map(|u| u.route));
        Ok(())
    });
    assert_eq!(mails, 2, "its dump, then the batch in one mail");
    assert_eq!(heard, (0..=JOINERS).map(route).collect::<Vec<_>>());
}

#[test]
fn a_mailbox_over_its_limit_overflows_and_the_table_goes_on() {
    let routes = universe();
    let mut t = task();
    let slow = Mailbox::new(100);
    let at = Instant::now();
    t.handle(Command::Ops {
        session: 20,
        ops: vec![Op::Subscribe {
            vni: Vni(1),
            sync: false,
        }],
        received: at,
        mailbox: slow.clone(),
    });
    for (i, r) in routes.iter().filter(|r| r.vni.0 == 1).enumerate() {
        t.handle(Command::Ops {
            session: 30 + i as u32,
            ops: vec![Op::Announce(*r)],
            received: at,
            mailbox: Mailbox::new(u64::MAX),
        });
        t.log.seal();
    }
    assert!(slow.overflowed().is_some_and(|lag| lag > 100));
    assert_eq!(
        slow.queued_bytes(),
        0,
        "an overflowed mailbox holds nothing"
    );
}

#[test]
fn a_dump_mail_decodes_into_the_routes_of_its_vni() {
    let routes = universe();
    let mut t = task();
    for r in &routes {
        announce(&mut t, 30, *r);
    }
    let mailbox = Mailbox::new(u64::MAX);
    subscribe(&mut t, 20, 2, &mailbox);
    let mut dumped = Vec::new();
    mailbox.take_while(|mail| {
        assert!(matches!(mail, Mail::Dump { .. }), "{mail:?}");
        dumped.extend(mail.updates().map(|u| {
            assert_eq!(u.action, Action::Add);
            u.route
        }));
        Ok(())
    });
    dumped.sort();
    let mut want: Vec<Route> = routes.into_iter().filter(|r| r.vni == Vni(2)).collect();
    want.sort();
    want.dedup();
    assert!(!want.is_empty());
    assert_eq!(dumped, want);
}

#[test]
fn ignored_operations_are_counted_in_the_handles_counters() {
    let counters = Arc::new(TableCounters::default());
    let mut t = TableTask::new(counters.clone());
    let route = universe()[0];
    let mailbox = Mailbox::new(u64::MAX);
    let at = Instant::now();
    t.handle(Command::Ops {
        session: 20,
        ops: vec![
            Op::Withdraw(route),
            Op::Subscribe {
                vni: Vni(1),
                sync: false,
            },
            Op::Subscribe {
                vni: Vni(1),
                sync: false,
            },
            Op::Subscribe {
                vni: Vni(1),
                sync: false,
            },
        ],
        received: at,
        mailbox,
    });
    assert_eq!(counters.unknown_withdrawals.load(Relaxed), 1);
    assert_eq!(counters.duplicate_subscribes.load(Relaxed), 2);
}

/// Every message of a mailbox's mail, in order, as a session that
/// negotiated SYNC decodes them.
fn messages(mailbox: &Mailbox) -> Vec<Message> {
    let mut out = Vec::new();
    mailbox.take_while(|mail| {
        let frames: Vec<bytes::Bytes> = match mail {
            Mail::Updates { frames, .. } => vec![frames],
            Mail::Dump { frames, .. } => frames,
        };
        for f in frames {
            let mut buf = bytes::BytesMut::from(&f[..]);
            while let Some(frame) =
                crate::wire::decode_frame_with(&mut buf, crate::wire::Extensions::SYNC).unwrap()
            {
                let Frame::Message(m) = frame else {
                    panic!("unknown frame {frame:?}")
                };
                out.push(m);
            }
        }
        Ok(())
    });
    out
}

#[test]
fn a_sync_subscriber_gets_sync_right_after_its_dump_once() {
    let mut routes: Vec<Route> = universe().into_iter().filter(|r| r.vni == Vni(2)).collect();
    routes.sort();
    routes.dedup();
    assert!(routes.len() > 1);
    let mut t = task();
    let at = Instant::now();
    for r in &routes {
        t.handle(Command::Ops {
            session: 30,
            ops: vec![Op::Announce(*r)],
            received: at,
            mailbox: Mailbox::new(u64::MAX),
        });
    }
    let sync = Mailbox::new(u64::MAX);
    let plain = Mailbox::new(u64::MAX);
    for (session, mailbox, flag) in [(20, &sync, true), (21, &plain, false)] {
        t.handle(Command::Ops {
            session,
            ops: vec![
                Op::Subscribe {
                    vni: Vni(2),
                    sync: flag,
                },
                // Empty VNI: SYNC too; a duplicate: no second dump or SYNC.
                Op::Subscribe {
                    vni: Vni(99),
                    sync: flag,
                },
                Op::Subscribe {
                    vni: Vni(2),
                    sync: flag,
                },
            ],
            received: at,
            mailbox: mailbox.clone(),
        });
    }
    // A later update of VNI 2 comes after the SYNC.
    let later = "2#10.99.0.0/16#2001:db8::99".parse::<Route>().unwrap();
    t.handle(Command::Ops {
        session: 30,
        ops: vec![Op::Announce(later)],
        received: at,
        mailbox: Mailbox::new(u64::MAX),
    });
    t.log.seal();
    let got = messages(&sync);
    let n = routes.len();
    assert_eq!(got.len(), n + 3, "{got:?}");
    assert!(got[..n]
        .iter()
        .all(|m| matches!(m, Message::Update(u) if u.route.vni == Vni(2))));
    assert_eq!(got[n], Message::Sync(Vni(2)));
    assert_eq!(got[n + 1], Message::Sync(Vni(99)));
    assert!(matches!(got[n + 2], Message::Update(u) if u.route == later));
    // Without SYNC: the same routes and no SYNC frame.
    let got = messages(&plain);
    assert_eq!(got.len(), n + 1);
    assert!(!got.iter().any(|m| matches!(m, Message::Sync(_))));
}

/// How long a policy reload's re-check of a session holding 1,000,000
/// routes takes: the table task's listing (the only part on the table
/// task) and the session's check. Run by hand, in release:
/// `cargo test --release -p metalbondd --lib recheck_of_a_million -- --ignored --nocapture`.
#[test]
#[ignore]
fn recheck_of_a_million_routes_timing() {
    use crate::policy::{Policy, SessionPolicy};
    let mut t = RouteTable::new();
    let peer: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    for i in 0..1_000_000u32 {
        let vni = 100 + i % 200;
        let hop = if i % 2 == 0 {
            "127.0.0.1"
        } else {
            "2001:db8::7"
        };
        let route: Route = format!("{vni}#10.{}.{}.0/24@{hop}", (i >> 8) & 255, i & 255)
            .parse()
            .unwrap();
        t.announce(20, &route);
    }
    // What the task does for a listing: copy the keys at once, then
    // resolve them a part per turn.
    let started = Instant::now();
    let mut keys = t.route_keys_of(20);
    let copied = started.elapsed();
    let mut routes = Vec::with_capacity(keys.len());
    let mut worst_part = std::time::Duration::ZERO;
    let mut parts = 0;
    while !keys.is_empty() {
        let part = Instant::now();
        let from = keys.len().saturating_sub(LISTING_PART);
        routes.extend(keys.drain(from..).filter_map(|(v, s)| t.route_at(v, s)));
        worst_part = worst_part.max(part.elapsed());
        parts += 1;
    }
    let listed = started.elapsed();
    assert_eq!(routes.len(), 1_000_000);
    let config = metalbondd_config::Config::parse(
        "[[policy.class]]\nname = \"n\"\nmatch = [\"127.0.0.1/32\"]\nannounce_vnis = [\"100-199\"]\nnext_hop = \"self\"\nmax_routes = 200000\n",
        "t.toml",
    )
    .unwrap();
    let policy = Policy::new(config.policy.as_ref().unwrap());
    let class = policy.class_for(peer).clone();
    let mut s = SessionPolicy::new(class.clone(), peer);
    let started = Instant::now();
    let r = s.reclassify(class, routes, &[]);
    let checked = started.elapsed();
    println!(
        "1M held routes: the table task copies the keys in {copied:?}, resolves them in {parts} parts \
         (worst {worst_part:?}), {listed:?} in all; the session re-checks them in {checked:?} \
         ({} to withdraw)",
        r.withdraw.len()
    );
    assert_eq!(r.withdraw.len(), 800_000);
}

/// A session's listing (policy re-check) longer than a part is answered
/// over several turns, other sessions' operations applied in between, and
/// is complete: every route of the session, nobody else's.
#[test]
fn a_long_listing_is_answered_in_parts_with_other_work_between() {
    let mut t = task();
    let n = LISTING_PART + 100;
    let mine: Vec<Route> = (0..n as u32)
        .map(|i| {
            format!(
                "{}#10.{}.{}.0/24@2001:db8::1",
                100 + i % 3,
                (i >> 8) & 255,
                i & 255
            )
            .parse()
            .unwrap()
        })
        .collect();
    let now = Instant::now();
    let mailbox = Mailbox::new(u64::MAX);
    t.handle(Command::Ops {
        session: 20,
        ops: mine.iter().copied().map(Op::Announce).collect(),
        received: now,
        mailbox: mailbox.clone(),
    });
    t.handle(Command::Ops {
        session: 20,
        ops: vec![Op::Subscribe {
            vni: Vni(7),
            sync: false,
        }],
        received: now,
        mailbox: mailbox.clone(),
    });
    let (reply, mut rx) = tokio::sync::oneshot::channel();
    t.handle(Command::Query(Query::SessionRoutes { session: 20, reply }));
    assert!(rx.try_recv().is_err(), "answered after one part");
    // Another session's work goes on between the parts.
    let other: Route = "100#192.0.2.0/24@2001:db8::2".parse().unwrap();
    t.handle(Command::Ops {
        session: 21,
        ops: vec![Op::Announce(other)],
        received: now,
        mailbox: Mailbox::new(u64::MAX),
    });
    assert_eq!(t.table.stats().routes, n + 1);
    t.continue_listing();
    let (mut routes, subs) = rx.try_recv().expect("answered after the second part");
    assert!(t.listings.is_empty());
    routes.sort();
    let mut want = mine;
    want.sort();
    assert_eq!(routes, want);
    assert_eq!(subs, vec![Vni(7)]);
}

/// Routes each mail of `mailbox` carries, per mail (dumps as ADDs).
fn mails(mailbox: &Mailbox) -> Vec<Vec<Route>> {
    let mut out = Vec::new();
    mailbox.take_while(|mail| {
        out.push(mail.updates().map(|u| u.route).collect());
        Ok(())
    });
    out
}

#[tokio::test(start_paused = true)]
async fn a_lone_change_is_sealed_at_once_and_a_busy_table_seals_once_per_interval() {
    use tokio::time::Instant as Clock;
    let table = spawn();
    let route = |i: u32| -> Route { format!("7#10.2.{i}.0/24@2001:db8::1").parse().unwrap() };
    let subscriber = Mailbox::new(u64::MAX);
    let announcer = Mailbox::new(u64::MAX);
    let send = |session, op, mailbox: &Arc<Mailbox>| {
        table.commands.try_send(Command::Ops {
            session,
            ops: vec![op],
            received: Instant::now(),
            mailbox: mailbox.clone(),
        })
    };
    send(
        10,
        Op::Subscribe {
            vni: Vni(7),
            sync: false,
        },
        &subscriber,
    )
    .unwrap();
    subscriber.notified().await;
    assert_eq!(mails(&subscriber), vec![vec![]], "the empty dump");

    // After a quiet moment: sealed at once (the paused clock has not moved).
    tokio::time::sleep(SEAL_INTERVAL * 2).await;
    let start = Clock::now();
    send(20, Op::Announce(route(0)), &announcer).unwrap();
    subscriber.notified().await;
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(mails(&subscriber), vec![vec![route(0)]]);

    // Right after a seal whose mail the reader took: at once again (a
    // sequence of single changes, each waiting for the last to arrive).
    send(20, Op::Announce(route(1)), &announcer).unwrap();
    subscriber.notified().await;
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(mails(&subscriber), vec![vec![route(1)]]);

    // The reader leaves route 2 unread: route 3 still goes at once (a mail
    // just sent may be on its way to the reader). With two unread, the
    // reader is behind: 4 and 5 wait for the interval, then go out in one mail.
    send(20, Op::Announce(route(2)), &announcer).unwrap();
    subscriber.notified().await;
    for i in 3..=5 {
        send(20, Op::Announce(route(i)), &announcer).unwrap();
        // The table takes each in its own batch.
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(SEAL_INTERVAL - Duration::from_millis(1)).await;
    assert_eq!(
        mails(&subscriber),
        vec![vec![route(2)], vec![route(3)]],
        "4 and 5 wait"
    );
    subscriber.notified().await;
    assert_eq!(start.elapsed(), SEAL_INTERVAL);
    assert_eq!(mails(&subscriber), vec![vec![route(4), route(5)]]);
}

#[test]
fn the_seal_clock_waits_within_an_interval_only_while_readers_are_behind() {
    let t0 = tokio::time::Instant::now();
    let ms = |n| Duration::from_millis(n);
    let behind = || true;
    let caught_up = || false;
    let mut clock = SealClock::default();
    assert!(clock.seal_now(t0, behind), "the first change");
    assert!(!clock.seal_now(t0 + ms(1), behind));
    assert_eq!(clock.due(), Some(t0 + SEAL_INTERVAL));
    assert!(
        !clock.seal_now(t0 + ms(2), behind),
        "one seal is due already"
    );
    assert_eq!(clock.due(), Some(t0 + SEAL_INTERVAL));
    clock.sealed(t0 + SEAL_INTERVAL);
    assert_eq!(clock.due(), None);
    assert!(!clock.seal_now(t0 + SEAL_INTERVAL + ms(1), behind));
    assert_eq!(clock.due(), Some(t0 + SEAL_INTERVAL * 2));
    // The readers caught up meanwhile: the next change seals everything.
    assert!(clock.seal_now(t0 + SEAL_INTERVAL + ms(3), caught_up));
    assert_eq!(clock.due(), None);
    assert!(clock.seal_now(t0 + SEAL_INTERVAL + ms(4), caught_up));
    let mut asked = false;
    assert!(
        clock.seal_now(t0 + SEAL_INTERVAL * 3, || {
            asked = true;
            true
        }),
        "quiet for an interval"
    );
    assert!(!asked, "after an interval the readers are not asked");
}

/// Route `i` of VNI 7 (the turn tests' routes).
fn turn_route(i: u32) -> Route {
    format!("7#10.3.{i}.0/24@2001:db8::1").parse().unwrap()
}

/// A table task handling batches in turns of a given time, with a
/// subscriber of VNI 7 that has taken its (empty) dump.
struct TurnFixture {
    table: TableHandle,
    subscriber: Arc<Mailbox>,
    announcer: Arc<Mailbox>,
}

impl TurnFixture {
    async fn new(turn_time: Duration) -> Self {
        let fixture = Self {
            table: spawn_with_turn_time(turn_time),
            subscriber: Mailbox::new(u64::MAX),
            announcer: Mailbox::new(u64::MAX),
        };
        let subscribe = Op::Subscribe {
            vni: Vni(7),
            sync: false,
        };
        fixture.send(10, subscribe, &fixture.subscriber);
        fixture.subscriber.notified().await;
        assert_eq!(mails(&fixture.subscriber), vec![vec![]], "the empty dump");
        fixture
    }

    fn send(&self, session: SessionId, op: Op, mailbox: &Arc<Mailbox>) {
        self.table
            .commands
            .try_send(Command::Ops {
                session,
                ops: vec![op],
                received: Instant::now(),
                mailbox: mailbox.clone(),
            })
            .unwrap();
    }

    /// Queues a command announcing [`turn_route`] `i` (the table task takes
    /// the commands queued before it runs as one batch).
    fn announce(&self, i: u32) {
        self.send(20, Op::Announce(turn_route(i)), &self.announcer);
    }
}

/// Polls another task got while the table task handled one batch of `n`
/// single-route commands in turns of `turn_time`, and the mails the
/// subscriber got from that batch.
async fn polls_during_a_batch(turn_time: Duration, n: u32) -> (usize, Vec<Vec<Route>>) {
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    let fixture = TurnFixture::new(turn_time).await;
    for i in 0..n {
        fixture.announce(i);
    }
    let polls = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let other = tokio::spawn({
        let (polls, stop) = (polls.clone(), stop.clone());
        async move {
            while !stop.load(Relaxed) {
                polls.fetch_add(1, Relaxed);
                tokio::task::yield_now().await;
            }
        }
    });
    fixture.subscriber.notified().await;
    stop.store(true, Relaxed);
    other.await.unwrap();
    (polls.load(Relaxed), mails(&fixture.subscriber))
}

#[tokio::test]
async fn a_long_batch_lets_other_tasks_run_between_turns_and_is_sealed_as_one() {
    let routes: Vec<Route> = (0..20).map(turn_route).collect();
    // A turn ends after each command: the other task runs between them.
    let (polls, got) = polls_during_a_batch(Duration::ZERO, 20).await;
    assert!(polls >= 19, "{polls} polls between 20 commands");
    assert_eq!(got, vec![routes.clone()], "one mail for the whole batch");
    // One turn for the whole batch: the other task waits for all of it.
    let (polls, got) = polls_during_a_batch(Duration::from_secs(3600), 20).await;
    assert!(polls <= 2, "{polls} polls during a one-turn batch");
    assert_eq!(got, vec![routes]);
}

/// How long after it was sent a batch of two single-route commands reached
/// the subscriber, which keeps up, right after a seal, the task handling
/// batches in turns of `turn_time` (paused clock).
async fn seal_delay_of_a_two_command_batch(turn_time: Duration) -> Duration {
    use tokio::time::Instant as Clock;
    let fixture = TurnFixture::new(turn_time).await;
    let subscriber = &fixture.subscriber;
    // The first change after a quiet moment is sealed at once, and taken.
    tokio::time::sleep(SEAL_INTERVAL * 2).await;
    let start = Clock::now();
    fixture.announce(0);
    subscriber.notified().await;
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(mails(subscriber), vec![vec![turn_route(0)]]);

    fixture.announce(1);
    fixture.announce(2);
    subscriber.notified().await;
    assert_eq!(mails(subscriber), vec![vec![turn_route(1), turn_route(2)]]);
    start.elapsed()
}

#[tokio::test(start_paused = true)]
async fn a_batch_that_took_several_turns_is_sealed_once_per_interval() {
    // Each command a turn of its own: the batch is bulk, and waits for the
    // interval although its reader keeps up.
    assert_eq!(
        seal_delay_of_a_two_command_batch(Duration::ZERO).await,
        SEAL_INTERVAL
    );
    // One turn: the reader keeps up, so it goes at once.
    assert_eq!(
        seal_delay_of_a_two_command_batch(Duration::from_secs(3600)).await,
        Duration::ZERO
    );
}

#[tokio::test]
async fn a_turn_goes_on_across_batches_until_the_task_waits_for_commands() {
    let (tx, mut rx) = mpsc::channel(4);
    let stats = || Command::Stats {
        reply: tokio::sync::oneshot::channel().0,
    };
    let mut batch = Vec::new();
    let long_ago = Instant::now() - Duration::from_secs(1);
    let mut turn = Turn {
        start: long_ago,
        cut: true,
    };
    tx.try_send(stats()).unwrap();
    assert_eq!(recv_batch(&mut rx, &mut batch, &mut turn).await, 1);
    assert_eq!(turn.start, long_ago, "a command was there: the same turn");
    assert!(turn.cut, "still busy");

    batch.clear();
    let sender = tokio::spawn(async move { tx.send(stats()).await.is_ok() });
    assert_eq!(recv_batch(&mut rx, &mut batch, &mut turn).await, 1);
    assert!(turn.start > long_ago, "it waited: a new turn");
    assert!(!turn.cut, "and no longer busy");
    assert!(sender.await.unwrap());
}

#[tokio::test]
async fn the_task_lets_go_between_batches_once_its_turn_is_over() {
    // Turns of zero length: every turn is over after one command.
    let fixture = TurnFixture::new(Duration::ZERO).await;
    // One full batch, then a second one queued behind it.
    for i in 0..BATCH as u32 {
        fixture.announce(i);
    }
    let (reply, mut stats) = tokio::sync::oneshot::channel();
    fixture
        .table
        .commands
        .try_send(Command::Stats { reply })
        .unwrap();
    fixture.subscriber.notified().await;
    let first: Vec<Route> = (0..BATCH as u32).map(turn_route).collect();
    assert_eq!(mails(&fixture.subscriber), vec![first]);
    assert!(
        stats.try_recv().is_err(),
        "the second batch waits while the other tasks have their turn"
    );
}
