//! Received routes, reference-counted per server (PROTOCOL.md section 5).
//!
//! A client is connected to every route server at once, and each server
//! sends it the same routes. The kernel must hold a route as long as at least
//! one server provides it: the Go client removes it as soon as any one server
//! withdraws it, so one server restarting makes multi-server HA flap. This
//! module keeps, without any I/O:
//!
//! - per route, the set of servers that provide it (a bit per server: one
//!   ordered map of routes is the whole table, about 100 bytes per route;
//!   the routes of one (VNI, destination) are adjacent in it, so the kernel
//!   next hops of a destination are a short range scan: several routes can
//!   share an address, e.g. NAT next hops that differ only in their port
//!   range are distinct routes but one kernel next hop);
//! - the (VNI, destination) pairs this node announces itself, whose received
//!   routes are tracked but never installed (loop prevention, reference PR
//!   #177).
//!
//! Every operation returns the [`Change`]s of the kernel state: for each
//! (VNI, destination) whose installable next-hop set changed, the new sorted
//! set (empty means delete the route). Nothing is emitted when the set stays
//! the same, so the kernel installer does no needless work. The changes of
//! the route set itself (a route's first provider came, its last one left)
//! are journaled as [`RouteDelta`]s for the received-routes feed
//! ([`ReceivedRoutes::take_deltas`]).
//!
//! At most [`MAX_SERVERS`] servers can provide routes at once (the width of
//! the provider bit set); the configuration and the API refuse more.
//!
//! Next hops whose address is IPv4 cannot be installed (the kernel routes go
//! through an `ip6tnl` tunnel with `encap ip6 dst <next hop>`): such routes
//! are tracked like any other (so counts stay right) but never contribute a
//! next hop.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv6Addr};

use super::ServerId;
use crate::wire::{Address, Destination, NextHop, NextHopType, Route, Vni};

#[cfg(test)]
mod tests;

/// Most servers that can provide routes at once (a bit each).
pub const MAX_SERVERS: usize = 64;

/// What the kernel should now hold for one (VNI, destination).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Change {
    /// The VNI (mapped to a routing table by the installer).
    pub vni: Vni,
    /// The destination prefix.
    pub dest: Destination,
    /// The next-hop addresses, sorted and without duplicates. Empty: delete
    /// the route.
    pub next_hops: Vec<Ipv6Addr>,
}

/// A change of the set of received routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RouteDelta {
    /// The route's first provider sent it.
    Added(Route),
    /// The route's last provider withdrew it or went away.
    Removed(Route),
}

/// The kernel-relevant key of a route.
type Key = (Vni, Destination);

/// The servers that provide a route: bit `i` is the server in slot `i`.
/// Never 0 in the table (the route is absent instead).
type Providers = u64;

/// See the module documentation.
#[derive(Debug, Default)]
pub struct ReceivedRoutes {
    /// Every provided route and its providers, ordered by (VNI,
    /// destination, next hop).
    routes: BTreeMap<Route, Providers>,
    /// The server of each provider bit (`None`: free).
    slots: Vec<Option<ServerId>>,
    /// (VNI, destination) pairs this node announces itself, with the number
    /// of announced routes that have each.
    local: HashMap<Key, u32>,
    /// Route-set changes not yet taken.
    journal: Vec<RouteDelta>,
}

/// The installable address of a route's next hop, if it has one.
fn ipv6_hop(route: &Route) -> Option<Ipv6Addr> {
    match route.next_hop.addr.to_ip() {
        IpAddr::V6(a) => Some(a),
        IpAddr::V4(_) => None,
    }
}

/// A next hop ordered before every other (the derived order compares the
/// address first, and an IPv4 address sorts before every IPv6 one), the
/// start of the range of one (VNI, destination).
fn min_next_hop() -> NextHop {
    NextHop {
        addr: Address::from_slice(&[0; 4]).expect("4 bytes"),
        target_vni: 0,
        kind: NextHopType(i32::MIN),
        nat_from: 0,
        nat_to: 0,
    }
}

impl ReceivedRoutes {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// `server` provides `route` (an UPDATE ADD, or a dump entry). A repeated
    /// ADD from the same server changes nothing.
    pub fn add(&mut self, server: ServerId, route: Route) -> Vec<Change> {
        let Some(bit) = self.take_bit(server) else {
            debug_assert!(false, "more than MAX_SERVERS servers provide routes");
            return Vec::new();
        };
        let key = (route.vni, route.dest);
        let providers = self.routes.get(&route).copied().unwrap_or(0);
        if providers & bit != 0 {
            return Vec::new();
        }
        if providers != 0 {
            // Provided already: the next hops do not change.
            self.routes.insert(route, providers | bit);
            return Vec::new();
        }
        let before = self.installed(&key);
        self.routes.insert(route, bit);
        self.journal.push(RouteDelta::Added(route));
        self.changes_for([(key, before)])
    }

    /// `server` withdraws `route` (an UPDATE REMOVE). A REMOVE for a route
    /// the server did not provide changes nothing.
    pub fn remove(&mut self, server: ServerId, route: Route) -> Vec<Change> {
        let Some(bit) = self.find_bit(server) else {
            return Vec::new();
        };
        let Some(providers) = self.routes.get_mut(&route) else {
            return Vec::new();
        };
        if *providers & bit == 0 {
            return Vec::new();
        }
        *providers &= !bit;
        if *providers != 0 {
            return Vec::new();
        }
        let key = (route.vni, route.dest);
        let before = self.installed(&key);
        self.routes.remove(&route);
        self.journal.push(RouteDelta::Removed(route));
        self.changes_for([(key, before)])
    }

    /// Every route of `server` is gone (its session ended). Routes another
    /// server still provides stay installed.
    pub fn drop_server(&mut self, server: ServerId) -> Vec<Change> {
        let Some(bit) = self.find_bit(server) else {
            return Vec::new();
        };
        let slot = bit.trailing_zeros() as usize;
        self.slots[slot] = None;
        // The routes only this server provides go; the next hops of their
        // keys are taken before (a full scan: a server's loss is rare).
        let gone: Vec<Route> = self
            .routes
            .iter()
            .filter(|&(_, &p)| p == bit)
            .map(|(r, _)| *r)
            .collect();
        let mut befores: HashMap<Key, Vec<Ipv6Addr>> = HashMap::new();
        for route in &gone {
            let key = (route.vni, route.dest);
            if let std::collections::hash_map::Entry::Vacant(e) = befores.entry(key) {
                e.insert(self.installed(&key));
            }
        }
        self.routes.retain(|_, p| {
            *p &= !bit;
            *p != 0
        });
        self.journal
            .extend(gone.into_iter().map(RouteDelta::Removed));
        self.changes_for(befores)
    }

    /// Replaces the set of (VNI, destination) pairs this node announces
    /// itself. Received routes for those pairs are not installed; a pair
    /// that stops being local gets its received routes installed again.
    pub fn set_local_announcements(
        &mut self,
        local: impl IntoIterator<Item = (Vni, Destination)>,
    ) -> Vec<Change> {
        let mut new: HashMap<Key, u32> = HashMap::new();
        for key in local {
            *new.entry(key).or_insert(0) += 1;
        }
        // Only pairs that flip, and that have received next hops, can change.
        let flipped: Vec<Key> = self
            .local
            .keys()
            .filter(|k| !new.contains_key(k))
            .chain(new.keys().filter(|k| !self.local.contains_key(k)))
            .copied()
            .filter(|k| self.key_routes(k).next().is_some())
            .collect();
        let befores: Vec<(Key, Vec<Ipv6Addr>)> =
            flipped.iter().map(|k| (*k, self.installed(k))).collect();
        self.local = new;
        self.changes_for(befores)
    }

    /// Routes announced locally appear (`appear`) and leave (`leave`): the
    /// same as [`ReceivedRoutes::set_local_announcements`] with the new
    /// complete set, at the cost of the difference (a change of a few routes
    /// among 100,000 announced ones does not rebuild the set). A pair stays
    /// local while any announced route has it.
    pub fn change_local_announcements(&mut self, appear: &[Route], leave: &[Route]) -> Vec<Change> {
        // The pairs that may flip, with what they install now (only pairs
        // with received routes can change anything).
        let befores: HashMap<Key, Vec<Ipv6Addr>> = appear
            .iter()
            .chain(leave)
            .map(|r| (r.vni, r.dest))
            .filter(|k| self.key_routes(k).next().is_some())
            .map(|k| (k, self.installed(&k)))
            .collect();
        for r in leave {
            let key = (r.vni, r.dest);
            if let Some(n) = self.local.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    self.local.remove(&key);
                }
            }
        }
        for r in appear {
            *self.local.entry((r.vni, r.dest)).or_insert(0) += 1;
        }
        self.changes_for(befores)
    }

    /// The (VNI, destination) pairs currently announced locally.
    pub fn local_announcements(&self) -> impl Iterator<Item = &(Vni, Destination)> {
        self.local.keys()
    }

    /// Everything the kernel should hold now, sorted by (VNI, destination):
    /// each entry has at least one next hop. For reconciling the kernel at
    /// start or after an installer error.
    pub fn snapshot(&self) -> Vec<(Vni, Destination, Vec<Ipv6Addr>)> {
        let mut out: Vec<(Vni, Destination, Vec<Ipv6Addr>)> = Vec::new();
        for route in self.routes.keys() {
            let key = (route.vni, route.dest);
            if self.local.contains_key(&key) {
                continue;
            }
            let Some(addr) = ipv6_hop(route) else {
                continue;
            };
            match out.last_mut() {
                Some((v, d, hops)) if (*v, *d) == key => {
                    if hops.last() != Some(&addr) {
                        hops.push(addr);
                    }
                }
                _ => out.push((key.0, key.1, vec![addr])),
            }
        }
        out
    }

    /// The installable next hops of one (VNI, destination), sorted.
    pub fn next_hops(&self, vni: Vni, dest: Destination) -> Vec<Ipv6Addr> {
        self.installed(&(vni, dest))
    }

    /// How many servers provide `route` right now.
    pub fn provider_count(&self, route: &Route) -> u32 {
        self.routes.get(route).map_or(0, |p| p.count_ones())
    }

    /// Number of distinct provided routes (installable or not).
    pub fn route_count(&self) -> usize {
        self.routes.len()
    }

    /// The routes `server` currently provides, sorted (a full scan: for
    /// tests; the agent lists with [`ReceivedRoutes::routes`]).
    #[cfg(test)]
    pub fn routes_of(&self, server: ServerId) -> impl Iterator<Item = &Route> {
        let bit = self.find_bit(server).unwrap_or(0);
        self.routes
            .iter()
            .filter(move |&(_, &p)| p & bit != 0)
            .map(|(r, _)| r)
    }

    /// Every provided route with the servers providing it, sorted by route
    /// (of one VNI if given).
    pub fn routes(&self, vni: Option<Vni>) -> impl Iterator<Item = (&Route, Vec<ServerId>)> {
        let range = match vni {
            Some(v) => self.routes.range(Self::first_of(v, None)..),
            None => self.routes.range(..),
        };
        range
            .take_while(move |(r, _)| vni.is_none_or(|v| r.vni == v))
            .map(|(r, &p)| (r, self.servers_of(p)))
    }

    /// The routes provided now (of the VNIs `accept` accepts), sorted.
    pub fn route_list(&self, accept: impl Fn(Vni) -> bool) -> Vec<Route> {
        self.routes
            .keys()
            .filter(|r| accept(r.vni))
            .copied()
            .collect()
    }

    /// The route-set changes since the last call, in order.
    pub fn take_deltas(&mut self) -> Vec<RouteDelta> {
        std::mem::take(&mut self.journal)
    }

    /// The servers of a provider set, in slot order.
    fn servers_of(&self, providers: Providers) -> Vec<ServerId> {
        (0..MAX_SERVERS)
            .filter(|i| providers & (1 << i) != 0)
            .filter_map(|i| self.slots.get(i).copied().flatten())
            .collect()
    }

    /// The provider bit of `server`, if it has one.
    fn find_bit(&self, server: ServerId) -> Option<Providers> {
        let i = self.slots.iter().position(|s| *s == Some(server))?;
        Some(1 << i)
    }

    /// The provider bit of `server`, taking a free slot for it if needed
    /// (`None` when every slot is taken).
    fn take_bit(&mut self, server: ServerId) -> Option<Providers> {
        if let Some(bit) = self.find_bit(server) {
            return Some(bit);
        }
        let i = match self.slots.iter().position(Option::is_none) {
            Some(i) => i,
            None if self.slots.len() < MAX_SERVERS => {
                self.slots.push(None);
                self.slots.len() - 1
            }
            None => return None,
        };
        self.slots[i] = Some(server);
        Some(1 << i)
    }

    /// The first possible route of `vni` (and `dest`, if given).
    fn first_of(vni: Vni, dest: Option<Destination>) -> Route {
        let dest = dest.unwrap_or_else(|| {
            Destination::new(Address::from_slice(&[0; 4]).expect("4 bytes"), 0).expect("/0")
        });
        Route {
            vni,
            dest,
            next_hop: min_next_hop(),
        }
    }

    /// The provided routes of one (VNI, destination), sorted by next hop.
    fn key_routes(&self, key: &Key) -> impl Iterator<Item = &Route> {
        let (vni, dest) = *key;
        self.routes
            .range(Self::first_of(vni, Some(dest))..)
            .map(|(r, _)| r)
            .take_while(move |r| r.vni == vni && r.dest == dest)
    }

    /// What the kernel should hold for `key`: sorted addresses, empty when
    /// nothing is provided or the pair is announced locally.
    fn installed(&self, key: &Key) -> Vec<Ipv6Addr> {
        if self.local.contains_key(key) {
            return Vec::new();
        }
        // Sorted by next hop, so by address (IPv6 after IPv4): equal
        // addresses are adjacent.
        let mut out: Vec<Ipv6Addr> = Vec::new();
        for addr in self.key_routes(key).filter_map(ipv6_hop) {
            if out.last() != Some(&addr) {
                out.push(addr);
            }
        }
        out
    }

    /// Compares each key's set before the operation with its set now and
    /// returns the differences, sorted by key so that the output is
    /// deterministic.
    fn changes_for(&self, befores: impl IntoIterator<Item = (Key, Vec<Ipv6Addr>)>) -> Vec<Change> {
        let sorted: BTreeMap<Key, Vec<Ipv6Addr>> = befores.into_iter().collect();
        sorted
            .into_iter()
            .filter_map(|(key, before)| {
                let after = self.installed(&key);
                (after != before).then_some(Change {
                    vni: key.0,
                    dest: key.1,
                    next_hops: after,
                })
            })
            .collect()
    }
}
