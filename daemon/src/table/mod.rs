//! The route table (PROTOCOL.md section 4), a plain data structure with one
//! owner and no I/O.
//!
//! For each VNI: destination -> next hop -> the set of sessions announcing it.
//! Per session: the routes it announces (so its disconnect costs time
//! proportional to its own routes, never to the table) and its subscriptions.
//!
//! Memory layout (most routes have one announcer and one next hop):
//! * each VNI keeps its routes in a dense slab (`Vec<Slot>`, 40 bytes a route)
//!   indexed by a `HashTable<u32>` that stores only slot numbers;
//! * next hops are interned ([`hops::HopTable`]): a route stores a `u32`;
//! * a single announcer is stored inline; only shared routes allocate.
//!
//! Operations report what subscribers must hear (a route that first appears,
//! or whose last announcer left); the caller turns that into UPDATE frames.

pub mod digest;
mod hops;
pub mod log;

use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashMap, HashSet, HashTable};

use crate::wire::{Destination, Route, Vni};
use hops::{HopId, HopTable};

/// Identifies one session (one TCP connection) for the lifetime of the process.
/// Ids below [`FIRST_SESSION`] stand for the daemon itself.
pub type SessionId = u32;

/// The announcer of routes injected through the control API.
pub const LOCAL_API: SessionId = 0;
/// The announcer of the configuration file's static routes.
pub const LOCAL_CONFIG: SessionId = 1;
/// An id no announcer or subscriber ever has (for "exclude nobody").
pub const NOBODY: SessionId = SessionId::MAX;
/// The first id given to a real session.
pub const FIRST_SESSION: SessionId = 16;

/// True for the daemon's own pseudo-sessions ([`LOCAL_API`], [`LOCAL_CONFIG`]).
pub fn is_local(id: SessionId) -> bool {
    id < FIRST_SESSION
}

/// Outcome of [`RouteTable::announce`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Announced {
    /// The route is new: subscribers of its VNI (except the announcer) must get an ADD.
    New,
    /// Someone else already announces it; nothing is sent.
    Joined,
    /// This session already announced it; nothing changes.
    Duplicate,
}

/// Outcome of [`RouteTable::withdraw`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Withdrawn {
    /// The last announcer left: subscribers (except the withdrawing session) must get a REMOVE.
    Gone,
    /// Others still announce it; nothing is sent.
    StillAnnounced,
    /// This session never announced it (ignored, counted).
    NotAnnounced,
}

/// The announcers of one route. `Vacant` marks a free slab slot.
///
/// `Many` boxes its `Vec` on purpose: it keeps this enum at 16 bytes (a
/// `Vec` inline would make every slot 8 bytes bigger), and shared routes are rare.
#[allow(clippy::box_collection)]
#[derive(Clone, Debug)]
enum Announcers {
    Vacant,
    One(SessionId),
    Many(Box<Vec<SessionId>>),
}

impl Announcers {
    fn contains(&self, s: SessionId) -> bool {
        match self {
            Announcers::Vacant => false,
            Announcers::One(one) => *one == s,
            Announcers::Many(many) => many.contains(&s),
        }
    }

    fn len(&self) -> usize {
        match self {
            Announcers::Vacant => 0,
            Announcers::One(_) => 1,
            Announcers::Many(many) => many.len(),
        }
    }

    /// Adds `s`; false if it was there already.
    fn insert(&mut self, s: SessionId) -> bool {
        match self {
            Announcers::Vacant => *self = Announcers::One(s),
            Announcers::One(one) if *one == s => return false,
            Announcers::One(one) => *self = Announcers::Many(Box::new(vec![*one, s])),
            Announcers::Many(many) if many.contains(&s) => return false,
            Announcers::Many(many) => many.push(s),
        }
        true
    }

    /// The announcers as a slice.
    fn as_slice(&self) -> &[SessionId] {
        match self {
            Announcers::Vacant => &[],
            Announcers::One(one) => std::slice::from_ref(one),
            Announcers::Many(many) => many,
        }
    }

    /// Removes `s`; false if it was not there.
    fn remove(&mut self, s: SessionId) -> bool {
        match self {
            Announcers::One(one) if *one == s => *self = Announcers::Vacant,
            Announcers::Many(many) => {
                let Some(pos) = many.iter().position(|&x| x == s) else {
                    return false;
                };
                many.swap_remove(pos);
                if many.len() == 1 {
                    *self = Announcers::One(many[0]);
                }
            }
            _ => return false,
        }
        true
    }
}

/// One route of a VNI.
#[derive(Clone, Debug)]
struct Slot {
    dest: Destination,
    hop: HopId,
    announcers: Announcers,
}

/// The routes of one VNI.
#[derive(Default)]
struct VniTable {
    slots: Vec<Slot>,
    free: Vec<u32>,
    index: HashTable<u32>,
    routes: usize,
    subscribers: usize,
    /// Routes of this VNI per announcer (for the distinct announcer count
    /// without a scan of the routes).
    announcers: HashMap<SessionId, u32>,
    /// Wrapping sum of [`digest::route_hash`] over the routes of this VNI
    /// (the count is `routes`): changed only when a route appears or goes.
    digest: u64,
}

impl VniTable {
    fn find(&self, hash: u64, dest: &Destination, hop: HopId) -> Option<u32> {
        self.index
            .find(hash, |&i| {
                let s = &self.slots[i as usize];
                s.hop == hop && s.dest == *dest
            })
            .copied()
    }

    fn is_empty(&self) -> bool {
        self.routes == 0 && self.subscribers == 0
    }
}

/// What the table knows of one session.
#[derive(Default)]
struct SessionEntry {
    /// (VNI, slot) of every route this session announces.
    announced: HashSet<(u32, u32)>,
    subscriptions: HashSet<Vni>,
}

/// Counts for status and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    /// Distinct routes (VNI, destination, next hop).
    pub routes: usize,
    /// VNIs with at least one route or subscriber.
    pub vnis: usize,
    /// Distinct next hops.
    pub next_hops: usize,
    /// (session, route) announcement pairs.
    pub announcements: usize,
    /// (session, VNI) subscription pairs.
    pub subscriptions: usize,
}

/// Counts of one VNI.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VniStats {
    /// The VNI.
    pub vni: Vni,
    /// Routes in it.
    pub routes: usize,
    /// Distinct announcers of its routes.
    pub announcers: usize,
    /// Sessions subscribed to it.
    pub subscribers: usize,
    /// Order-independent hash of its routes ([`digest`]); equal on two
    /// servers that hold the same routes in this VNI.
    pub digest: u64,
}

/// Position after the last route of a page: (VNI, slot). Routes stay in their
/// slot while they exist, so paging by it returns every route that exists
/// throughout the listing exactly once.
pub type PageCursor = (Vni, u32);

/// The route table. See the module documentation.
#[derive(Default)]
pub struct RouteTable {
    vnis: HashMap<Vni, VniTable>,
    hops: HopTable,
    sessions: HashMap<SessionId, SessionEntry>,
    hasher: DefaultHashBuilder,
    routes: usize,
    announcements: usize,
    subscriptions: usize,
}

impl RouteTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    fn key_hash(&self, dest: &Destination, hop: HopId) -> u64 {
        self.hasher.hash_one((dest, hop))
    }

    /// `session` announces `route`.
    pub fn announce(&mut self, session: SessionId, route: &Route) -> Announced {
        let hop = self.hops.intern(&route.next_hop);
        let hash = self.key_hash(&route.dest, hop);
        let vt = self.vnis.entry(route.vni).or_default();
        let (slot, outcome) = match vt.find(hash, &route.dest, hop) {
            Some(i) => {
                // The route holds a reference to the hop already.
                self.hops.release(hop);
                let slot = &mut vt.slots[i as usize];
                if !slot.announcers.insert(session) {
                    return Announced::Duplicate;
                }
                (i, Announced::Joined)
            }
            None => {
                let entry = Slot {
                    dest: route.dest,
                    hop,
                    announcers: Announcers::One(session),
                };
                let i = slab_insert(&mut vt.slots, &mut vt.free, entry);
                // The route appears in the VNI: the only place the digest grows.
                vt.digest = vt.digest.wrapping_add(digest::route_hash(route));
                let (slots, hasher) = (&vt.slots, &self.hasher);
                vt.index.insert_unique(hash, i, |&j| {
                    let s = &slots[j as usize];
                    hasher.hash_one((&s.dest, s.hop))
                });
                vt.routes += 1;
                self.routes += 1;
                (i, Announced::New)
            }
        };
        *vt.announcers.entry(session).or_default() += 1;
        self.sessions
            .entry(session)
            .or_default()
            .announced
            .insert((route.vni.0, slot));
        self.announcements += 1;
        outcome
    }

    /// `session` withdraws `route`.
    pub fn withdraw(&mut self, session: SessionId, route: &Route) -> Withdrawn {
        let Some(hop) = self.hops.lookup(&route.next_hop) else {
            return Withdrawn::NotAnnounced;
        };
        let hash = self.key_hash(&route.dest, hop);
        let Some(slot) = self
            .vnis
            .get(&route.vni)
            .and_then(|vt| vt.find(hash, &route.dest, hop))
        else {
            return Withdrawn::NotAnnounced;
        };
        let removed = self
            .sessions
            .get_mut(&session)
            .is_some_and(|s| s.announced.remove(&(route.vni.0, slot)));
        if !removed {
            return Withdrawn::NotAnnounced;
        }
        self.announcements -= 1;
        if self.leave(route.vni, slot, session).is_some() {
            Withdrawn::Gone
        } else {
            Withdrawn::StillAnnounced
        }
    }

    /// Removes `session` from the announcers of one slot. Returns the route if
    /// that was its last announcer (the route is then gone from the table).
    fn leave(&mut self, vni: Vni, slot: u32, session: SessionId) -> Option<Route> {
        let vt = self.vnis.get_mut(&vni)?;
        let entry = &mut vt.slots[slot as usize];
        let was_there = entry.announcers.remove(session);
        debug_assert!(was_there, "session index out of sync with slot announcers");
        if let hashbrown::hash_map::Entry::Occupied(mut n) = vt.announcers.entry(session) {
            *n.get_mut() -= 1;
            if *n.get() == 0 {
                n.remove();
            }
        }
        if entry.announcers.len() > 0 {
            return None;
        }
        let (dest, hop) = (entry.dest, entry.hop);
        let hash = self.hasher.hash_one((&dest, hop));
        if let Ok(e) = vt.index.find_entry(hash, |&i| i == slot) {
            e.remove();
        }
        vt.free.push(slot);
        vt.routes -= 1;
        self.routes -= 1;
        let next_hop = *self.hops.get(hop);
        self.hops.release(hop);
        let route = Route {
            vni,
            dest,
            next_hop,
        };
        // The route's last announcer left: the only place the digest shrinks.
        vt.digest = vt.digest.wrapping_sub(digest::route_hash(&route));
        if vt.is_empty() {
            self.vnis.remove(&vni);
        }
        Some(route)
    }

    /// Records that `session` subscribes to `vni`. False if it already did
    /// (a duplicate SUBSCRIBE: no second dump).
    pub fn subscribe(&mut self, session: SessionId, vni: Vni) -> bool {
        if !self
            .sessions
            .entry(session)
            .or_default()
            .subscriptions
            .insert(vni)
        {
            return false;
        }
        self.vnis.entry(vni).or_default().subscribers += 1;
        self.subscriptions += 1;
        true
    }

    /// Records that `session` unsubscribes from `vni`. False if it was not subscribed.
    /// Its own announcements in `vni` stay (PROTOCOL.md section 4 DECISION).
    pub fn unsubscribe(&mut self, session: SessionId, vni: Vni) -> bool {
        let removed = self
            .sessions
            .get_mut(&session)
            .is_some_and(|s| s.subscriptions.remove(&vni));
        if removed {
            self.subscriptions -= 1;
            if let Some(vt) = self.vnis.get_mut(&vni) {
                vt.subscribers -= 1;
                if vt.is_empty() {
                    self.vnis.remove(&vni);
                }
            }
        }
        removed
    }

    /// Calls `f` for every route of `vni` except those `exclude` announces
    /// (the SUBSCRIBE dump never contains the subscriber's own routes).
    pub fn for_each_route_in(&self, vni: Vni, exclude: SessionId, mut f: impl FnMut(&Route)) {
        let Some(vt) = self.vnis.get(&vni) else {
            return;
        };
        for slot in &vt.slots {
            if matches!(slot.announcers, Announcers::Vacant) || slot.announcers.contains(exclude) {
                continue;
            }
            f(&Route {
                vni,
                dest: slot.dest,
                next_hop: *self.hops.get(slot.hop),
            });
        }
    }

    /// Removes everything `session` announced and its subscriptions. Calls
    /// `gone` for every route that lost its last announcer. Time is
    /// proportional to the session's own routes.
    pub fn remove_session(&mut self, session: SessionId, mut gone: impl FnMut(&Route)) {
        let Some(entry) = self.sessions.remove(&session) else {
            return;
        };
        self.announcements -= entry.announced.len();
        // In slot order, not the set's: a VNI's slots are one array, so
        // each slot is then the next one along instead of a cache miss (the
        // largest single cost of a session end with a million routes).
        let mut announced: Vec<(u32, u32)> = entry.announced.into_iter().collect();
        announced.sort_unstable();
        for (vni, slot) in announced {
            if let Some(route) = self.leave(Vni(vni), slot, session) {
                gone(&route);
            }
        }
        for vni in entry.subscriptions {
            self.subscriptions -= 1;
            if let Some(vt) = self.vnis.get_mut(&vni) {
                vt.subscribers -= 1;
                if vt.is_empty() {
                    self.vnis.remove(&vni);
                }
            }
        }
    }

    /// Every route `session` announces, in no particular order. Time is
    /// proportional to the session's own routes.
    pub fn routes_of(&self, session: SessionId) -> Vec<Route> {
        self.route_keys_of(session)
            .into_iter()
            .filter_map(|(vni, slot)| self.route_at(vni, slot))
            .collect()
    }

    /// Where the routes `session` announces are: (VNI, slot) each, for
    /// [`RouteTable::route_at`]. A slot stays the route's while the session
    /// announces it, so the keys can be resolved a part at a time.
    pub fn route_keys_of(&self, session: SessionId) -> Vec<(u32, u32)> {
        self.sessions
            .get(&session)
            .map(|e| e.announced.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The route in `slot` of `vni`, if there is one.
    pub fn route_at(&self, vni: u32, slot: u32) -> Option<Route> {
        let vt = self.vnis.get(&Vni(vni))?;
        let s = vt.slots.get(slot as usize)?;
        if matches!(s.announcers, Announcers::Vacant) {
            return None;
        }
        Some(Route {
            vni: Vni(vni),
            dest: s.dest,
            next_hop: *self.hops.get(s.hop),
        })
    }

    /// Whether `session` subscribes to `vni`.
    pub fn is_subscribed(&self, session: SessionId, vni: Vni) -> bool {
        self.sessions
            .get(&session)
            .is_some_and(|s| s.subscriptions.contains(&vni))
    }

    /// The announcers of `route` (empty if unknown).
    pub fn announcers(&self, route: &Route) -> Vec<SessionId> {
        let Some(hop) = self.hops.lookup(&route.next_hop) else {
            return Vec::new();
        };
        let hash = self.key_hash(&route.dest, hop);
        let Some(vt) = self.vnis.get(&route.vni) else {
            return Vec::new();
        };
        match vt.find(hash, &route.dest, hop) {
            None => Vec::new(),
            Some(i) => match &vt.slots[i as usize].announcers {
                Announcers::Vacant => Vec::new(),
                Announcers::One(one) => vec![*one],
                Announcers::Many(many) => many.to_vec(),
            },
        }
    }

    /// Number of routes in `vni`.
    pub fn routes_in(&self, vni: Vni) -> usize {
        self.vnis.get(&vni).map_or(0, |vt| vt.routes)
    }

    /// Number of routes `session` announces.
    pub fn announced_by(&self, session: SessionId) -> usize {
        self.sessions.get(&session).map_or(0, |s| s.announced.len())
    }

    /// Up to `limit` routes after `after` (in VNI order, then slot order)
    /// for which `keep(route, announcers)` holds, with the cursor of the
    /// next page (None when the listing is complete).
    pub fn page(
        &self,
        after: Option<PageCursor>,
        limit: usize,
        mut keep: impl FnMut(&Route, &[SessionId]) -> bool,
    ) -> (Vec<(Route, Vec<SessionId>)>, Option<PageCursor>) {
        let mut vnis: Vec<Vni> = self.vnis.keys().copied().collect();
        vnis.sort_unstable();
        let mut out = Vec::new();
        let mut last = None;
        for vni in vnis {
            let first_slot = match after {
                Some((v, _)) if vni < v => continue,
                Some((v, slot)) if vni == v => slot as usize + 1,
                _ => 0,
            };
            let vt = &self.vnis[&vni];
            for (i, slot) in vt.slots.iter().enumerate().skip(first_slot) {
                let announcers = slot.announcers.as_slice();
                if announcers.is_empty() {
                    continue;
                }
                let route = Route {
                    vni,
                    dest: slot.dest,
                    next_hop: *self.hops.get(slot.hop),
                };
                if !keep(&route, announcers) {
                    continue;
                }
                if out.len() == limit {
                    // There is more: continue after the last route returned.
                    return (out, last);
                }
                out.push((route, announcers.to_vec()));
                last = Some((vni, i as u32));
            }
        }
        (out, None)
    }

    /// Calls `f` for every route of every VNI.
    pub fn for_each_route(&self, mut f: impl FnMut(&Route)) {
        for &vni in self.vnis.keys() {
            self.for_each_route_in(vni, NOBODY, &mut f);
        }
    }

    /// Counts per VNI, in VNI order (`only`: just that one).
    pub fn vni_stats(&self, only: Option<Vni>) -> Vec<VniStats> {
        let mut out: Vec<VniStats> = self
            .vnis
            .iter()
            .filter(|(vni, _)| only.is_none_or(|o| o == **vni))
            .map(|(&vni, vt)| VniStats {
                vni,
                routes: vt.routes,
                announcers: vt.announcers.len(),
                subscribers: vt.subscribers,
                digest: vt.digest,
            })
            .collect();
        out.sort_unstable_by_key(|s| s.vni);
        out
    }

    /// The VNIs `session` subscribes to, in order.
    pub fn subscriptions_of(&self, session: SessionId) -> Vec<Vni> {
        let mut vnis: Vec<Vni> = self
            .sessions
            .get(&session)
            .map(|s| s.subscriptions.iter().copied().collect())
            .unwrap_or_default();
        vnis.sort_unstable();
        vnis
    }

    /// Counts of everything in the table.
    pub fn stats(&self) -> TableStats {
        TableStats {
            routes: self.routes,
            vnis: self.vnis.len(),
            next_hops: self.hops.len(),
            announcements: self.announcements,
            subscriptions: self.subscriptions,
        }
    }
}

/// Stores `entry` in a free slot of `slots` (or a new one) and returns its index.
fn slab_insert<T>(slots: &mut Vec<T>, free: &mut Vec<u32>, entry: T) -> u32 {
    match free.pop() {
        Some(i) => {
            slots[i as usize] = entry;
            i
        }
        None => {
            slots.push(entry);
            (slots.len() - 1) as u32
        }
    }
}

#[cfg(test)]
mod tests;
