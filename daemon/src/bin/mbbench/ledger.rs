//! Exact per-session accounting of the fleet scenario.
//!
//! Each session holds one bit per route of each VNI it subscribes to (its
//! "held" set, what the server has given it on the current connection). The
//! expected set is every *live* route of its subscribed VNIs except its own.
//! Two counters per session are kept equal to the set differences at every
//! moment, updated in O(1) per delivery and in O(subscribers) per change of a
//! route's liveness:
//!
//! - **missing**: expected, not held;
//! - **stale**: held, not expected (a route withdrawn by its owner whose
//!   REMOVE has not arrived).
//!
//! and two event counters:
//!
//! - **extra**: an UPDATE that is not for the session at all (a foreign
//!   route, a VNI it did not subscribe to, its own route);
//! - **own**: its own route on a *reconnected* session, counted apart and
//!   allowed: when a hypervisor reconnects, the server may not yet have
//!   processed the end of its previous connection, whose announcements are
//!   then another session's routes and rightly part of the new session's dump
//!   (PROTOCOL.md sections 4 and 5: the client ignores them); since the new
//!   session announces them too, no REMOVE follows when the old one ends;
//! - **duplicate**: an ADD for a route it already holds, or a REMOVE for a
//!   route it does not hold.
//!
//! A session has converged when missing and stale are both 0.
//! [`Ledger::verify`] recomputes missing and stale from the bits, to check
//! the counters.

use metalbondd::wire::{Action, Update};

use crate::shape::Shape;

/// Declares a struct of `u64` counters (the fields listed, with their
/// attributes) with its field-by-field `add` and `since`.
macro_rules! counter_set {
    (
        $(#[$attr:meta])*
        $vis:vis struct $name:ident {
            $( $(#[$field_attr:meta])* $field_vis:vis $field:ident, )*
        }
    ) => {
        $(#[$attr])*
        $vis struct $name {
            $( $(#[$field_attr])* $field_vis $field: u64, )*
        }

        impl $name {
            /// Adds `o` to `self`.
            $vis fn add(&mut self, o: &$name) {
                $( self.$field += o.$field; )*
            }

            /// `self - o`, field by field.
            $vis fn since(&self, o: &$name) -> $name {
                $name {
                    $( $field: self.$field - o.$field, )*
                }
            }
        }
    };
}
pub(crate) use counter_set;

counter_set! {
    /// Event counters of one session (cumulative).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Events {
        /// UPDATE ADDs received.
        pub adds,
        /// UPDATE REMOVEs received.
        pub removes,
        /// UPDATEs that were not for this session.
        pub extra,
        /// Its own routes, received on a reconnected session (allowed).
        pub own,
        /// ADDs of a route already held.
        pub dup_adds,
        /// REMOVEs of a route not held.
        pub dup_removes,
    }
}

impl Events {
    /// Duplicate deliveries of either kind.
    pub fn duplicates(&self) -> u64 {
        self.dup_adds + self.dup_removes
    }
}

/// Missing and stale routes of one session, or summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gap {
    /// Expected, not held.
    pub missing: u64,
    /// Held, not expected.
    pub stale: u64,
}

/// The accounting of every session.
pub struct Ledger {
    /// Route g is announced (by its owner's intent).
    live: Vec<u64>,
    /// Held bits: session h's slot i covers bits
    /// `base[h*S+i] .. + routes_in(subs_of(h)[i]).len()`, indexed by rank.
    held: Vec<u64>,
    base: Vec<u64>,
    missing: Vec<u32>,
    stale: Vec<u32>,
    events: Vec<Events>,
    /// Subscriptions are in force: an empty session is missing its routes.
    active: bool,
}

#[inline]
fn get(bits: &[u64], i: u64) -> bool {
    bits[(i >> 6) as usize] & (1 << (i & 63)) != 0
}

#[inline]
fn put(bits: &mut [u64], i: u64, on: bool) {
    let w = &mut bits[(i >> 6) as usize];
    if on {
        *w |= 1 << (i & 63);
    } else {
        *w &= !(1 << (i & 63));
    }
}

impl Ledger {
    /// Every route live, nothing held, subscriptions not yet in force.
    pub fn new(shape: &Shape) -> Self {
        let h = shape.dims.sessions;
        let mut base = Vec::with_capacity((h * shape.dims.subs) as usize);
        let mut next = 0u64;
        for sess in 0..h {
            for &k in shape.subs_of(sess) {
                base.push(next);
                next += shape.routes_in(k).len() as u64;
            }
        }
        let n = u64::from(shape.n_routes());
        let mut live = vec![u64::MAX; n.div_ceil(64) as usize];
        if n % 64 != 0 {
            *live.last_mut().expect("n > 0") = (1 << (n % 64)) - 1;
        }
        Self {
            live,
            held: vec![0; next.div_ceil(64) as usize],
            base,
            missing: vec![0; h as usize],
            stale: vec![0; h as usize],
            events: vec![Events::default(); h as usize],
            active: false,
        }
    }

    /// True if route `g` is announced.
    #[inline]
    pub fn is_live(&self, g: u32) -> bool {
        get(&self.live, g.into())
    }

    /// Puts the subscriptions in force: from now on every session is
    /// expected to hold its routes (each starts from what it holds now).
    pub fn activate(&mut self, shape: &Shape) {
        self.active = true;
        for h in 0..shape.dims.sessions {
            self.reset(shape, h);
        }
    }

    /// A new connection of session `h` (or none): it holds nothing.
    pub fn reset(&mut self, shape: &Shape, h: u32) {
        let s = shape.dims.subs;
        let mut missing = 0;
        for (slot, &k) in shape.subs_of(h).iter().enumerate() {
            let base = self.base[(h * s) as usize + slot];
            for (rank, &g) in shape.routes_in(k).iter().enumerate() {
                put(&mut self.held, base + rank as u64, false);
                if self.active && shape.owner(g) != h && self.is_live(g) {
                    missing += 1;
                }
            }
        }
        self.missing[h as usize] = missing;
        self.stale[h as usize] = 0;
    }

    /// The bit of route `g` for session `h`, if `h` subscribes to its VNI.
    #[inline]
    fn bit(&self, shape: &Shape, h: u32, g: u32) -> Option<u64> {
        let k = shape.vni_of(g);
        let slot = shape.subs_of(h).iter().position(|&x| x == k)?;
        Some(self.base[(h * shape.dims.subs) as usize + slot] + u64::from(shape.rank(g)))
    }

    /// Session `h` received `u` on its current connection; `reconnected`
    /// if it had an earlier connection (its own routes are then allowed).
    pub fn on_update(&mut self, shape: &Shape, h: u32, u: &Update, reconnected: bool) {
        let ev = &mut self.events[h as usize];
        match u.action {
            Action::Add => ev.adds += 1,
            Action::Remove => ev.removes += 1,
        }
        let index = shape.index(&u.route);
        if reconnected && index.is_some_and(|g| shape.owner(g) == h) {
            ev.own += 1;
            return;
        }
        let found = index
            .filter(|&g| shape.owner(g) != h)
            .and_then(|g| Some((g, self.bit(shape, h, g)?)));
        let Some((g, bit)) = found else {
            self.events[h as usize].extra += 1;
            return;
        };
        let held = get(&self.held, bit);
        let live = self.is_live(g);
        let hu = h as usize;
        match (u.action, held) {
            (Action::Add, true) => self.events[hu].dup_adds += 1,
            (Action::Remove, false) => self.events[hu].dup_removes += 1,
            (Action::Add, false) => {
                put(&mut self.held, bit, true);
                if live {
                    self.missing[hu] -= 1;
                } else {
                    self.stale[hu] += 1;
                }
            }
            (Action::Remove, true) => {
                put(&mut self.held, bit, false);
                if live {
                    self.missing[hu] += 1;
                } else {
                    self.stale[hu] -= 1;
                }
            }
        }
    }

    /// Route `g` is announced (`live`) or withdrawn by its owner from now on.
    /// Returns false if it already was.
    pub fn set_live(&mut self, shape: &Shape, g: u32, live: bool) -> bool {
        if self.is_live(g) == live {
            return false;
        }
        put(&mut self.live, g.into(), live);
        if !self.active {
            return true;
        }
        let owner = shape.owner(g);
        let rank = u64::from(shape.rank(g));
        for &(h, slot) in shape.subscribers(shape.vni_of(g)) {
            if h == owner {
                continue;
            }
            let hu = h as usize;
            let held = get(
                &self.held,
                self.base[(h * shape.dims.subs + slot) as usize] + rank,
            );
            match (held, live) {
                (true, true) => self.stale[hu] -= 1,
                (true, false) => self.stale[hu] += 1,
                (false, true) => self.missing[hu] += 1,
                (false, false) => self.missing[hu] -= 1,
            }
        }
        true
    }

    /// Missing and stale routes of session `h` (from the counters).
    #[inline]
    pub fn gap(&self, h: u32) -> Gap {
        Gap {
            missing: self.missing[h as usize].into(),
            stale: self.stale[h as usize].into(),
        }
    }

    /// Event counters of session `h`.
    #[cfg(test)]
    pub fn events(&self, h: u32) -> &Events {
        &self.events[h as usize]
    }

    /// Event counters summed over all sessions.
    pub fn total_events(&self) -> Events {
        let mut t = Events::default();
        for e in &self.events {
            t.add(e);
        }
        t
    }

    /// Missing and stale summed over all sessions (from the counters).
    pub fn total_gap(&self) -> Gap {
        Gap {
            missing: self.missing.iter().map(|&m| u64::from(m)).sum(),
            stale: self.stale.iter().map(|&s| u64::from(s)).sum(),
        }
    }

    /// Missing and stale of session `h` recomputed from the bits.
    pub fn verify(&self, shape: &Shape, h: u32) -> Gap {
        let mut gap = Gap::default();
        for (slot, &k) in shape.subs_of(h).iter().enumerate() {
            let base = self.base[(h * shape.dims.subs) as usize + slot];
            for (rank, &g) in shape.routes_in(k).iter().enumerate() {
                let held = get(&self.held, base + rank as u64);
                let expected = self.active && shape.owner(g) != h && self.is_live(g);
                match (expected, held) {
                    (true, false) => gap.missing += 1,
                    (false, true) => gap.stale += 1,
                    _ => {}
                }
            }
        }
        gap
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shape::Dims;
    use metalbondd::wire::{Address, Vni};
    use std::net::Ipv4Addr;

    fn shape() -> Shape {
        Shape::new(Dims {
            sessions: 6,
            vnis: 3,
            subs: 2,
            routes: 4,
            zipf_s: 1.0,
            seed: 1,
        })
    }

    fn up(shape: &Shape, action: Action, g: u32) -> Update {
        Update {
            action,
            route: shape.route(g),
        }
    }

    /// Delivers to every session exactly its expected set.
    fn deliver_all(shape: &Shape, l: &mut Ledger) {
        for h in 0..shape.dims.sessions {
            for &k in shape.subs_of(h) {
                for &g in shape.routes_in(k) {
                    if shape.owner(g) != h && l.is_live(g) {
                        l.on_update(shape, h, &up(shape, Action::Add, g), false);
                    }
                }
            }
        }
    }

    /// A session that receives at least one route, and one such route.
    fn receiver(shape: &Shape) -> (u32, u32) {
        (0..shape.dims.sessions)
            .find_map(|h| {
                shape.subs_of(h).iter().find_map(|&k| {
                    let g = *shape.routes_in(k).iter().find(|&&g| shape.owner(g) != h)?;
                    Some((h, g))
                })
            })
            .expect("some session receives a route")
    }

    fn check(shape: &Shape, l: &Ledger) {
        for h in 0..shape.dims.sessions {
            assert_eq!(
                l.gap(h),
                l.verify(shape, h),
                "counters = bits for session {h}"
            );
        }
    }

    #[test]
    fn exact_delivery_converges() {
        let s = shape();
        let mut l = Ledger::new(&s);
        l.activate(&s);
        assert_eq!(l.total_gap().missing, s.full_deliveries());
        deliver_all(&s, &mut l);
        assert_eq!(l.total_gap(), Gap::default());
        let e = l.total_events();
        assert_eq!(e.adds, s.full_deliveries());
        assert_eq!((e.extra, e.duplicates()), (0, 0));
        check(&s, &l);
    }

    #[test]
    fn a_missing_route_is_detected() {
        let s = shape();
        let mut l = Ledger::new(&s);
        l.activate(&s);
        deliver_all(&s, &mut l);
        let (h, g) = receiver(&s);
        l.on_update(&s, h, &up(&s, Action::Remove, g), false);
        assert_eq!(
            l.gap(h),
            Gap {
                missing: 1,
                stale: 0
            }
        );
        assert_eq!(l.total_gap().missing, 1);
        check(&s, &l);
        // A reconnect starts from nothing: everything is missing again.
        l.reset(&s, h);
        assert_eq!(l.gap(h), l.verify(&s, h));
        assert!(l.gap(h).missing > 1);
    }

    #[test]
    fn an_extra_route_is_detected() {
        let s = shape();
        let mut l = Ledger::new(&s);
        l.activate(&s);
        deliver_all(&s, &mut l);
        let (h, _) = receiver(&s);
        // Its own route, a foreign route, a VNI it did not subscribe to.
        let own = h * s.dims.routes;
        l.on_update(&s, h, &up(&s, Action::Add, own), false);
        let mut foreign = s.route(0);
        foreign.dest.addr = Address::from(Ipv4Addr::new(192, 0, 2, 1));
        l.on_update(
            &s,
            h,
            &Update {
                action: Action::Add,
                route: foreign,
            },
            false,
        );
        let unsubscribed = (0..s.n_routes())
            .find(|&g| s.owner(g) != h && !s.subs_of(h).contains(&s.vni_of(g)))
            .expect("a route of another VNI");
        l.on_update(&s, h, &up(&s, Action::Add, unsubscribed), false);
        let mut wrong_vni = s.route(0);
        wrong_vni.vni = Vni(9999);
        l.on_update(
            &s,
            h,
            &Update {
                action: Action::Remove,
                route: wrong_vni,
            },
            false,
        );
        assert_eq!(l.events(h).extra, 4);
        assert_eq!(l.total_events().extra, 4);
        assert_eq!(l.total_gap(), Gap::default(), "extras do not count as held");
        check(&s, &l);
        // On a reconnected session, its own route is allowed (the server
        // may still hold the previous connection's announcements).
        l.on_update(&s, h, &up(&s, Action::Add, own), true);
        assert_eq!((l.events(h).extra, l.events(h).own), (4, 1));
        let unsubscribed_again = up(&s, Action::Add, unsubscribed);
        l.on_update(&s, h, &unsubscribed_again, true);
        assert_eq!(l.events(h).extra, 5, "other extras are never allowed");
    }

    #[test]
    fn a_duplicate_is_detected() {
        let s = shape();
        let mut l = Ledger::new(&s);
        l.activate(&s);
        deliver_all(&s, &mut l);
        let (h, g) = receiver(&s);
        l.on_update(&s, h, &up(&s, Action::Add, g), false);
        assert_eq!(l.events(h).dup_adds, 1);
        l.on_update(&s, h, &up(&s, Action::Remove, g), false);
        l.on_update(&s, h, &up(&s, Action::Remove, g), false);
        assert_eq!(l.events(h).dup_removes, 1);
        assert_eq!(l.total_events().duplicates(), 2);
        check(&s, &l);
    }

    #[test]
    fn a_stale_route_is_detected() {
        let s = shape();
        let mut l = Ledger::new(&s);
        l.activate(&s);
        deliver_all(&s, &mut l);
        let (h, g) = receiver(&s);
        // The owner withdraws it; until the REMOVE arrives it is stale
        // everywhere it was delivered.
        assert!(l.set_live(&s, g, false));
        assert!(!l.set_live(&s, g, false), "already withdrawn");
        assert_eq!(
            l.gap(h),
            Gap {
                missing: 0,
                stale: 1
            }
        );
        check(&s, &l);
        let holders: Vec<u32> = s
            .subscribers(s.vni_of(g))
            .iter()
            .map(|&(x, _)| x)
            .filter(|&x| x != s.owner(g))
            .collect();
        assert_eq!(l.total_gap().stale, holders.len() as u64);
        for &x in &holders {
            l.on_update(&s, x, &up(&s, Action::Remove, g), false);
        }
        assert_eq!(l.total_gap(), Gap::default());
        // Announced again: missing until the ADD arrives.
        l.set_live(&s, g, true);
        assert_eq!(l.total_gap().missing, holders.len() as u64);
        check(&s, &l);
        // An ADD of a withdrawn route is stale too.
        l.set_live(&s, g, false);
        assert_eq!(l.total_gap(), Gap::default());
        l.on_update(&s, h, &up(&s, Action::Add, g), false);
        assert_eq!(
            l.gap(h),
            Gap {
                missing: 0,
                stale: 1
            }
        );
        check(&s, &l);
    }
}
