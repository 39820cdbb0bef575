//! Received routes, reference-counted per server (PROTOCOL.md section 5).
//!
//! A client is connected to every route server at once, and each server
//! sends it the same routes. The kernel must hold a route as long as at least
//! one server provides it: the Go client removes it as soon as any one server
//! withdraws it, so one server restarting makes multi-server HA flap. This
//! module keeps, without any I/O:
//!
//! - per server, the set of routes it currently provides;
//! - per route, how many servers provide it;
//! - per (VNI, destination), a count per next-hop address over the provided
//!   routes (several routes can share an address: NAT next hops that differ
//!   only in their port range are distinct routes, but one kernel next hop);
//! - the (VNI, destination) pairs this node announces itself, whose received
//!   routes are tracked but never installed (loop prevention, reference PR
//!   #177).
//!
//! Every operation returns the [`Change`]s of the kernel state: for each
//! (VNI, destination) whose installable next-hop set changed, the new sorted
//! set (empty means delete the route). Nothing is emitted when the set stays
//! the same, so the kernel installer does no needless work.
//!
//! Next hops whose address is IPv4 cannot be installed (the kernel routes go
//! through an `ip6tnl` tunnel with `encap ip6 dst <next hop>`): such routes
//! are tracked like any other (so counts stay right) but never contribute a
//! next hop.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv6Addr};

use super::ServerId;
use crate::wire::{Destination, Route, Vni};

#[cfg(test)]
mod tests;

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

/// The kernel-relevant key of a route.
type Key = (Vni, Destination);

/// See the module documentation.
#[derive(Debug, Default)]
pub struct ReceivedRoutes {
    /// Routes each server currently provides.
    by_server: HashMap<ServerId, HashSet<Route>>,
    /// Number of servers providing each route (never 0: absent instead).
    providers: HashMap<Route, u32>,
    /// Per (VNI, destination): provided routes per IPv6 next-hop address.
    /// An address is in the map only with a count above 0, and a key only
    /// with at least one address.
    hops: HashMap<Key, BTreeMap<Ipv6Addr, u32>>,
    /// (VNI, destination) pairs this node announces itself.
    local: HashSet<Key>,
}

/// The installable address of a route's next hop, if it has one.
fn ipv6_hop(route: &Route) -> Option<Ipv6Addr> {
    match route.next_hop.addr.to_ip() {
        IpAddr::V6(a) => Some(a),
        IpAddr::V4(_) => None,
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
        if !self.by_server.entry(server).or_default().insert(route) {
            return Vec::new();
        }
        let key = (route.vni, route.dest);
        let before = self.installed(&key);
        self.provide(route);
        self.changes_for([(key, before)])
    }

    /// `server` withdraws `route` (an UPDATE REMOVE). A REMOVE for a route
    /// the server did not provide changes nothing.
    pub fn remove(&mut self, server: ServerId, route: Route) -> Vec<Change> {
        let Some(routes) = self.by_server.get_mut(&server) else {
            return Vec::new();
        };
        if !routes.remove(&route) {
            return Vec::new();
        }
        if routes.is_empty() {
            self.by_server.remove(&server);
        }
        let key = (route.vni, route.dest);
        let before = self.installed(&key);
        self.unprovide(route);
        self.changes_for([(key, before)])
    }

    /// Every route of `server` is gone (its session ended). Routes another
    /// server still provides stay installed.
    pub fn drop_server(&mut self, server: ServerId) -> Vec<Change> {
        let Some(routes) = self.by_server.remove(&server) else {
            return Vec::new();
        };
        let mut befores: HashMap<Key, Vec<Ipv6Addr>> = HashMap::new();
        for route in &routes {
            let key = (route.vni, route.dest);
            if let std::collections::hash_map::Entry::Vacant(e) = befores.entry(key) {
                e.insert(self.installed(&key));
            }
        }
        for route in routes {
            self.unprovide(route);
        }
        self.changes_for(befores)
    }

    /// Replaces the set of (VNI, destination) pairs this node announces
    /// itself. Received routes for those pairs are not installed; a pair
    /// that stops being local gets its received routes installed again.
    pub fn set_local_announcements(
        &mut self,
        local: impl IntoIterator<Item = (Vni, Destination)>,
    ) -> Vec<Change> {
        let new: HashSet<Key> = local.into_iter().collect();
        // Only pairs that flip, and that have received next hops, can change.
        let flipped: Vec<Key> = self
            .local
            .symmetric_difference(&new)
            .copied()
            .filter(|k| self.hops.contains_key(k))
            .collect();
        let befores: Vec<(Key, Vec<Ipv6Addr>)> =
            flipped.iter().map(|k| (*k, self.installed(k))).collect();
        self.local = new;
        self.changes_for(befores)
    }

    /// The (VNI, destination) pairs currently announced locally.
    pub fn local_announcements(&self) -> impl Iterator<Item = &(Vni, Destination)> {
        self.local.iter()
    }

    /// Everything the kernel should hold now, sorted by (VNI, destination):
    /// each entry has at least one next hop. For reconciling the kernel at
    /// start or after an installer error.
    pub fn snapshot(&self) -> Vec<(Vni, Destination, Vec<Ipv6Addr>)> {
        let mut out: Vec<_> = self
            .hops
            .iter()
            .filter(|(k, _)| !self.local.contains(k))
            .map(|(&(vni, dest), hops)| (vni, dest, hops.keys().copied().collect()))
            .collect();
        out.sort_by_key(|&(vni, dest, _)| (vni, dest));
        out
    }

    /// The installable next hops of one (VNI, destination), sorted.
    pub fn next_hops(&self, vni: Vni, dest: Destination) -> Vec<Ipv6Addr> {
        self.installed(&(vni, dest))
    }

    /// How many servers provide `route` right now.
    pub fn provider_count(&self, route: &Route) -> u32 {
        self.providers.get(route).copied().unwrap_or(0)
    }

    /// Number of distinct provided routes (installable or not).
    pub fn route_count(&self) -> usize {
        self.providers.len()
    }

    /// The routes `server` currently provides, in no particular order.
    pub fn routes_of(&self, server: ServerId) -> impl Iterator<Item = &Route> {
        self.by_server.get(&server).into_iter().flatten()
    }

    /// One more server provides `route`; counts its next hop when it becomes
    /// provided.
    fn provide(&mut self, route: Route) {
        let count = self.providers.entry(route).or_insert(0);
        *count += 1;
        if *count > 1 {
            return;
        }
        if let Some(addr) = ipv6_hop(&route) {
            *self
                .hops
                .entry((route.vni, route.dest))
                .or_default()
                .entry(addr)
                .or_insert(0) += 1;
        }
    }

    /// One server less provides `route`; uncounts its next hop when no
    /// server provides it any more.
    fn unprovide(&mut self, route: Route) {
        let Some(count) = self.providers.get_mut(&route) else {
            debug_assert!(false, "unprovide of a route nobody provides");
            return;
        };
        *count -= 1;
        if *count > 0 {
            return;
        }
        self.providers.remove(&route);
        let Some(addr) = ipv6_hop(&route) else {
            return;
        };
        let key = (route.vni, route.dest);
        let Some(hops) = self.hops.get_mut(&key) else {
            debug_assert!(false, "provided route without next-hop entry");
            return;
        };
        if let Some(n) = hops.get_mut(&addr) {
            *n -= 1;
            if *n == 0 {
                hops.remove(&addr);
            }
        }
        if hops.is_empty() {
            self.hops.remove(&key);
        }
    }

    /// What the kernel should hold for `key`: sorted addresses, empty when
    /// nothing is provided or the pair is announced locally.
    fn installed(&self, key: &Key) -> Vec<Ipv6Addr> {
        if self.local.contains(key) {
            return Vec::new();
        }
        self.hops
            .get(key)
            .map(|h| h.keys().copied().collect())
            .unwrap_or_default()
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
