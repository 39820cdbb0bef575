//! The routes the shared state holds, as this server applied them (pure:
//! no I/O, no clock; ADR 0031).
//!
//! [`Applied`] is the set of routes announced to the table from etcd and the
//! revision they reflect. A snapshot (the start, a resync after compaction or
//! an outage) or a batch of watch events goes in; the difference to apply to
//! the table comes out as a [`Delta`]. A resync compares the snapshot with
//! the applied set, so routes that did not change cause no table operation
//! and so no WITHDRAW/ANNOUNCE on the wire.
//!
//! Keys are `{prefix}routes/{route}` with the route in the canonical text
//! form of PROTOCOL.md section 7 (`Route`'s `Display`), so a route has
//! exactly one key. A key under the prefix that is not a canonical route is
//! skipped and reported, never applied and never fatal.

use bytes::Bytes;
use hashbrown::{HashMap, HashSet};

use crate::wire::Route;

/// Sub-prefix of the route keys below the configured prefix.
pub const ROUTES: &str = "routes/";

/// One key-value change of a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyEvent {
    /// Put (true) or delete (false).
    pub put: bool,
    /// The key.
    pub key: Bytes,
    /// The value (empty for a delete).
    pub value: Bytes,
    /// The revision of the change.
    pub revision: i64,
}

/// The etcd key of `route` under `prefix` (which ends with `/`), or why the
/// route has no key (its text form would not read back as the same route:
/// a target VNI).
pub fn route_key(prefix: &str, route: &Route) -> Result<Vec<u8>, String> {
    use std::io::Write;
    let mut key = Vec::with_capacity(prefix.len() + ROUTES.len() + 64);
    key.extend_from_slice(prefix.as_bytes());
    key.extend_from_slice(ROUTES.as_bytes());
    let text_at = key.len();
    write!(key, "{route}").expect("writing to a Vec cannot fail");
    // The common routes read back exactly by construction (a property test
    // holds this); the others are checked by reading them back.
    if !text_reads_back(route) {
        let text = std::str::from_utf8(&key[text_at..]).expect("route text is ASCII");
        if text.parse::<Route>().ok() != Some(*route) {
            return Err(format!(
                "{text} cannot be kept in the shared state (its text form does not name it exactly)"
            ));
        }
    }
    Ok(key)
}

/// Whether `route`'s text form reads back as `route` without trying: no
/// target VNI, a known type, and NAT ports only on a NAT next hop, in
/// order.
fn text_reads_back(route: &Route) -> bool {
    use metalbond_types::route::NextHopType;
    let hop = &route.next_hop;
    hop.target_vni == 0
        && match hop.kind {
            NextHopType::NAT => hop.nat_from <= hop.nat_to,
            NextHopType::STANDARD | NextHopType::LOADBALANCER_TARGET => {
                hop.nat_from == 0 && hop.nat_to == 0
            }
            _ => false,
        }
}

/// Compares formatted text with the bytes it should equal, without
/// building the text (see [`route_of_key`]).
struct SameText<'a> {
    rest: &'a [u8],
    same: bool,
}

impl std::fmt::Write for SameText<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        match self.rest.strip_prefix(s.as_bytes()) {
            Some(rest) if self.same => self.rest = rest,
            _ => self.same = false,
        }
        Ok(())
    }
}

/// Whether `text` is exactly the canonical text of `route`.
fn is_canonical(route: &Route, text: &str) -> bool {
    use std::fmt::Write;
    let mut cmp = SameText {
        rest: text.as_bytes(),
        same: true,
    };
    let _ = write!(cmp, "{route}");
    cmp.same && cmp.rest.is_empty()
}

/// The route of `key` (under `routes_prefix`, i.e. `{prefix}routes/`), or
/// why it is skipped.
pub fn route_of_key(routes_prefix: &[u8], key: &[u8]) -> Result<Route, String> {
    let text = key
        .strip_prefix(routes_prefix)
        .ok_or_else(|| "not under the routes prefix".to_string())?;
    let text = std::str::from_utf8(text).map_err(|_| "the key is not UTF-8".to_string())?;
    let route: Route = text
        .parse()
        .map_err(|e: crate::wire::ParseRouteError| e.to_string())?;
    if !is_canonical(&route, text) {
        return Err(format!(
            "not the canonical form of the route: write the key as {}{route}",
            String::from_utf8_lossy(routes_prefix)
        ));
    }
    Ok(route)
}

/// What to change in the table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    /// Routes to announce (sorted).
    pub announce: Vec<Route>,
    /// Routes to withdraw (sorted).
    pub withdraw: Vec<Route>,
    /// Keys skipped (the key, lossily as text, and why).
    pub skipped: Vec<(String, String)>,
}

impl Delta {
    /// Nothing to change in the table.
    pub fn is_empty(&self) -> bool {
        self.announce.is_empty() && self.withdraw.is_empty()
    }
}

/// The routes applied from the shared state (see the module documentation).
#[derive(Clone, Debug)]
pub struct Applied {
    routes_prefix: Vec<u8>,
    routes: HashSet<Route>,
    revision: i64,
}

impl Applied {
    /// An empty set for the fleet prefix `prefix` (ends with `/`).
    pub fn new(prefix: &str) -> Self {
        Self {
            routes_prefix: format!("{prefix}{ROUTES}").into_bytes(),
            routes: HashSet::new(),
            revision: 0,
        }
    }

    /// Starts from routes applied earlier (the local cache of the last state
    /// seen), at an unknown revision: the first snapshot corrects them.
    pub fn with_cached(prefix: &str, cached: impl IntoIterator<Item = Route>) -> Self {
        let mut applied = Self::new(prefix);
        applied.routes.extend(cached);
        applied
    }

    /// The key prefix of the routes (`{prefix}routes/`).
    pub fn routes_prefix(&self) -> &[u8] {
        &self.routes_prefix
    }

    /// The revision applied last (0: none yet).
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// How many routes are applied.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether no route is applied.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Whether `route` is applied.
    pub fn contains(&self, route: &Route) -> bool {
        self.routes.contains(route)
    }

    /// The applied routes (unordered).
    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }

    /// Replaces the applied set with the snapshot `keys` taken at
    /// `revision`: only the differences come out.
    pub fn resync<'a>(&mut self, keys: impl IntoIterator<Item = &'a [u8]>, revision: i64) -> Delta {
        let mut delta = Delta::default();
        let mut now = HashSet::with_capacity(self.routes.len());
        for key in keys {
            match route_of_key(&self.routes_prefix, key) {
                Ok(route) => {
                    now.insert(route);
                }
                Err(why) => delta
                    .skipped
                    .push((String::from_utf8_lossy(key).into_owned(), why)),
            }
        }
        delta.announce = now.difference(&self.routes).copied().collect();
        delta.withdraw = self.routes.difference(&now).copied().collect();
        delta.announce.sort_unstable();
        delta.withdraw.sort_unstable();
        self.routes = now;
        self.revision = self.revision.max(revision);
        delta
    }

    /// Applies watch events (in revision order) up to `revision`; events at
    /// or below the applied revision are repeats and ignored. A route put
    /// and deleted within the batch nets out to nothing.
    pub fn apply(&mut self, events: &[KeyEvent], revision: i64) -> Delta {
        let mut delta = Delta::default();
        // Per route touched: whether it was applied before this batch.
        let mut before: HashMap<Route, bool> = HashMap::new();
        for event in events {
            if event.revision <= self.revision {
                continue;
            }
            let route = match route_of_key(&self.routes_prefix, &event.key) {
                Ok(route) => route,
                Err(why) => {
                    // Deleting a key we never applied needs no warning.
                    if event.put {
                        delta
                            .skipped
                            .push((String::from_utf8_lossy(&event.key).into_owned(), why));
                    }
                    continue;
                }
            };
            let was = self.routes.contains(&route);
            before.entry(route).or_insert(was);
            if event.put {
                self.routes.insert(route);
            } else {
                self.routes.remove(&route);
            }
        }
        for (route, was) in before {
            match (was, self.routes.contains(&route)) {
                (false, true) => delta.announce.push(route),
                (true, false) => delta.withdraw.push(route),
                _ => {}
            }
        }
        delta.announce.sort_unstable();
        delta.withdraw.sort_unstable();
        self.revision = self.revision.max(revision);
        delta
    }

    /// Records that nothing changed up to `revision` (a progress notice).
    pub fn progress(&mut self, revision: i64) {
        self.revision = self.revision.max(revision);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const P: &str = "/mb/";

    fn r(s: &str) -> Route {
        s.parse().unwrap()
    }

    fn key(route: &Route) -> Vec<u8> {
        route_key(P, route).unwrap()
    }

    fn put(route: &Route, revision: i64) -> KeyEvent {
        KeyEvent {
            put: true,
            key: key(route).into(),
            value: Bytes::new(),
            revision,
        }
    }

    fn del(route: &Route, revision: i64) -> KeyEvent {
        KeyEvent {
            put: false,
            key: key(route).into(),
            value: Bytes::new(),
            revision,
        }
    }

    #[test]
    fn keys_are_the_canonical_text_and_read_back() {
        for text in [
            "100#10.0.1.0/24@2001:db8::1",
            "7#2001:db8:1::/48@2001:db8::2#nat#1024#2047",
            "1#10.0.0.1/32@192.0.2.1#lb",
            "1#::ffff:10.0.0.0/104@::ffff:192.0.2.1",
        ] {
            let route = r(text);
            let k = key(&route);
            assert_eq!(k, format!("/mb/routes/{text}").into_bytes());
            assert_eq!(route_of_key(b"/mb/routes/", &k).unwrap(), route);
        }
    }

    #[test]
    fn non_canonical_and_garbage_keys_are_refused_with_a_reason() {
        let go_form =
            route_of_key(b"/mb/routes/", b"/mb/routes/100#10.0.1.0/24#2001:db8::1").unwrap_err();
        assert!(
            go_form.contains("/mb/routes/100#10.0.1.0/24@2001:db8::1"),
            "{go_form}"
        );
        let junk = route_of_key(b"/mb/routes/", b"/mb/routes/hello").unwrap_err();
        assert!(junk.contains("invalid route"), "{junk}");
        assert!(route_of_key(b"/mb/routes/", b"/mb/routes/\xff")
            .unwrap_err()
            .contains("UTF-8"));
    }

    #[test]
    fn a_resync_yields_only_the_differences_and_reports_bad_keys() {
        let (a, b, c) = (
            r("1#10.0.0.0/24@2001:db8::1"),
            r("1#10.0.1.0/24@2001:db8::1"),
            r("2#10.0.0.0/24@2001:db8::2"),
        );
        let mut applied = Applied::with_cached(P, [a, b]);
        let keys = [key(&b), key(&c), b"/mb/routes/nonsense".to_vec()];
        let delta = applied.resync(keys.iter().map(Vec::as_slice), 40);
        assert_eq!(delta.announce, vec![c]);
        assert_eq!(delta.withdraw, vec![a]);
        assert_eq!(delta.skipped.len(), 1);
        assert_eq!(applied.revision(), 40);
        // The same snapshot again: nothing at all.
        let again = applied.resync(keys.iter().map(Vec::as_slice), 41);
        assert!(again.is_empty(), "{again:?}");
    }

    #[test]
    fn events_net_out_and_repeats_are_ignored() {
        let (a, b) = (
            r("1#10.0.0.0/24@2001:db8::1"),
            r("1#10.0.1.0/24@2001:db8::1"),
        );
        let mut applied = Applied::new(P);
        let d = applied.apply(&[put(&a, 5), put(&b, 5), del(&b, 6)], 6);
        assert_eq!(d.announce, vec![a]);
        assert!(d.withdraw.is_empty());
        // A re-watch delivering revision 5 again changes nothing.
        assert!(applied.apply(&[put(&b, 5)], 6).is_empty());
        let d = applied.apply(&[del(&a, 7)], 7);
        assert_eq!(d.withdraw, vec![a]);
        assert!(applied.is_empty());
    }

    fn arb_route() -> impl Strategy<Value = Route> {
        (0u32..4, 0u8..8, 1u8..3)
            .prop_map(|(vni, net, hop)| r(&format!("{vni}#10.0.{net}.0/24@2001:db8::{hop}")))
    }

    fn arb_any_route() -> impl Strategy<Value = Route> {
        use metalbond_types::route::{Address, Destination, NextHop, NextHopType};
        let addr = prop_oneof![
            any::<[u8; 4]>().prop_map(|b| Address::from_slice(&b).unwrap()),
            any::<[u8; 16]>().prop_map(|b| Address::from_slice(&b).unwrap()),
        ];
        (
            any::<u32>(),
            addr.clone(),
            any::<u8>(),
            addr,
            prop_oneof![Just(0u32), any::<u32>()],
            -1i32..4,
            prop_oneof![Just(0u16), any::<u16>()],
            prop_oneof![Just(0u16), any::<u16>()],
        )
            .prop_map(
                |(vni, dest, len, hop, target_vni, kind, nat_from, nat_to)| Route {
                    vni: crate::wire::Vni(vni & 0x00ff_ffff),
                    dest: Destination::new(dest, len % (dest.bit_width() + 1)).unwrap(),
                    next_hop: NextHop {
                        addr: hop,
                        target_vni,
                        kind: NextHopType(kind),
                        nat_from,
                        nat_to,
                    },
                },
            )
    }

    proptest! {
        /// A route whose text the key writer trusts without reading it
        /// back does read back exactly; any key written reads back as its
        /// route and is canonical.
        #[test]
        fn keys_read_back_as_their_route(route in arb_any_route()) {
            let text = route.to_string();
            if text_reads_back(&route) {
                prop_assert_eq!(text.parse::<Route>().ok(), Some(route));
            }
            if let Ok(k) = route_key(P, &route) {
                prop_assert_eq!(route_of_key(b"/mb/routes/", &k), Ok(route));
            }
            prop_assert!(is_canonical(&route, &text));
            let spaced = format!("{text} ");
            prop_assert!(!is_canonical(&route, &spaced));
            prop_assert!(!is_canonical(&route, &text[..text.len() - 1]));
        }

        /// Whatever the events, a resync from the true state afterwards
        /// changes nothing, and the applied set equals the true state.
        #[test]
        fn applied_set_follows_the_store(ops in proptest::collection::vec((any::<bool>(), arb_route()), 0..60), split in 0usize..60) {
            let mut truth: std::collections::BTreeSet<Route> = Default::default();
            let events: Vec<KeyEvent> = ops.iter().enumerate().map(|(i, (p, route))| {
                if *p { truth.insert(*route); } else { truth.remove(route); }
                KeyEvent { put: *p, key: key(route).into(), value: Bytes::new(), revision: i as i64 + 1 }
            }).collect();
            let mut applied = Applied::new(P);
            let mut table: std::collections::BTreeSet<Route> = Default::default();
            let cut = split.min(events.len());
            for chunk in [&events[..cut], &events[cut..]] {
                let last = chunk.last().map(|e| e.revision).unwrap_or(0);
                let d = applied.apply(chunk, last);
                for w in &d.withdraw { prop_assert!(table.remove(w)); }
                for a in &d.announce { prop_assert!(table.insert(*a)); }
            }
            prop_assert_eq!(&table, &truth);
            let keys: Vec<Vec<u8>> = truth.iter().map(key).collect();
            let d = applied.resync(keys.iter().map(Vec::as_slice), events.len() as i64 + 1);
            prop_assert!(d.is_empty());
        }
    }
}
