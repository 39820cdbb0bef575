//! Peer policy of the route server (docs/POLICY.md, ADR 0025): which class
//! a session falls in, and what that class lets it subscribe to and
//! announce, checked per session before anything reaches the table.
//!
//! Pure: [`Policy`] is built from the config file's `[policy]` section and
//! picks a [`Class`] for a peer address; [`SessionPolicy`] is one session's
//! checker, holding the routes it let through when the class has a limit.
//! The session shell ([`crate::server::connection`]) logs, counts and
//! forwards what the verdicts say. [`admission`] holds the per-address
//! limits the acceptor checks before a session exists.

pub mod admission;

use std::net::IpAddr;
use std::sync::Arc;

use hashbrown::{HashMap, HashSet};
use metalbondd_config::{canonical, Cidr, MaxRoutesAction, PolicyClass, PolicySection, VniRange};

use crate::wire::{Action, Route, Vni};

/// Why the policy refused something; also the `reason` label of
/// `metalbondd_policy_refused_total` and the API's `last_refusal_reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Reason {
    /// A SUBSCRIBE to a VNI outside `subscribe_vnis`.
    SubscribeVni = 0,
    /// A route in a VNI outside `announce_vnis`.
    AnnounceVni = 1,
    /// A route whose next hop `next_hop` does not allow.
    NextHop = 2,
    /// A route of a type outside `route_types`.
    RouteType = 3,
    /// A route over `max_routes`.
    MaxRoutes = 4,
    /// A route over `max_routes_per_vni` in its VNI.
    MaxRoutesPerVni = 5,
    /// A connection from an address that has `max_sessions_per_address`
    /// sessions open (closed at accept).
    SessionsPerAddress = 6,
    /// A connection over the address's `connect_rate` (closed at accept).
    ConnectRate = 7,
    /// A route whose destination lies outside its VNI's `destinations`.
    Destination = 8,
}

impl Reason {
    /// Every reason, in the order of their numbers.
    /// (At most 16: a session's `logged` set is a `u16`.)
    pub const ALL: [Reason; 9] = [
        Reason::SubscribeVni,
        Reason::AnnounceVni,
        Reason::NextHop,
        Reason::RouteType,
        Reason::MaxRoutes,
        Reason::MaxRoutesPerVni,
        Reason::SessionsPerAddress,
        Reason::ConnectRate,
        Reason::Destination,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Reason::SubscribeVni => "subscribe_vni",
            Reason::AnnounceVni => "announce_vni",
            Reason::NextHop => "next_hop",
            Reason::RouteType => "route_type",
            Reason::MaxRoutes => "max_routes",
            Reason::MaxRoutesPerVni => "max_routes_per_vni",
            Reason::SessionsPerAddress => "sessions_per_address",
            Reason::ConnectRate => "connect_rate",
            Reason::Destination => "destination",
        }
    }

    /// What the log says.
    pub fn describe(self) -> &'static str {
        match self {
            Reason::SubscribeVni => {
                "SUBSCRIBE to a VNI the class does not allow (no dump, no updates)"
            }
            Reason::AnnounceVni => {
                "route in a VNI the class may not announce into (not distributed)"
            }
            Reason::NextHop => "route with a next hop the class does not allow (not distributed)",
            Reason::RouteType => "route of a type the class does not allow (not distributed)",
            Reason::MaxRoutes => "route over the class's max_routes (not distributed)",
            Reason::MaxRoutesPerVni => {
                "route over the class's max_routes_per_vni in its VNI (not distributed)"
            }
            Reason::SessionsPerAddress => {
                "connection from an address with max_sessions_per_address sessions open (closed at accept)"
            }
            Reason::ConnectRate => {
                "connection over the address's connect_rate (closed at accept)"
            }
            Reason::Destination => {
                "route whose destination lies outside the class's destinations for its VNI (not distributed)"
            }
        }
    }

    /// The reason with number `n` (of [`Reason::ALL`]).
    pub fn from_u8(n: u8) -> Option<Reason> {
        Reason::ALL.get(usize::from(n)).copied()
    }
}

/// A set of VNIs: sorted, merged inclusive ranges (a binary search per
/// lookup; a few ranges in practice).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VniSet(Vec<(u32, u32)>);

impl VniSet {
    /// The union of `ranges`.
    pub fn new(ranges: &[VniRange]) -> Self {
        let mut r: Vec<(u32, u32)> = ranges.iter().map(|r| (r.first, r.last)).collect();
        r.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(r.len());
        for (first, last) in r {
            match merged.last_mut() {
                Some(prev) if first <= prev.1.saturating_add(1) => prev.1 = prev.1.max(last),
                _ => merged.push((first, last)),
            }
        }
        VniSet(merged)
    }

    /// True if `vni` is in the set.
    #[inline]
    pub fn contains(&self, vni: Vni) -> bool {
        let i = self.0.partition_point(|&(_, last)| last < vni.0);
        self.0.get(i).is_some_and(|&(first, _)| first <= vni.0)
    }
}

/// A route limit of a class (`max_routes`, or `max_routes_per_vni` per VNI).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    /// Most routes a session may hold in the table (in one VNI).
    pub max: usize,
    /// A warning is logged when a session first holds this many.
    pub warn_at: usize,
    /// Refuse the excess or close the session.
    pub action: MaxRoutesAction,
}

impl Limit {
    fn new(max: u64, c: &PolicyClass) -> Self {
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        Limit {
            max,
            // Rounded up, at least 1: "80 % of 1" warns at 1.
            warn_at: (max.saturating_mul(usize::from(c.max_routes_warn)))
                .div_ceil(100)
                .max(1),
            action: c.max_routes_action,
        }
    }
}

/// One class of peers, compiled from the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Class {
    /// Its name (logs, metrics, API).
    pub name: String,
    matches: Vec<Cidr>,
    /// `match_identity` patterns (lower-case); with `matches` too, both
    /// must match.
    identities: Vec<String>,
    subscribe: Option<VniSet>,
    announce: Option<VniSet>,
    /// `None`: any next hop. Else the peer's own address (if `own_address`)
    /// or an address inside `prefixes`.
    next_hop: Option<(bool, Vec<Cidr>)>,
    /// Bit `t` set: type `t` (0..=63) allowed; `None`: every type.
    types: Option<u64>,
    /// `destinations`: (VNIs, prefixes) in file order, the first entry
    /// holding a route's VNI decides; `None`: any destination.
    destinations: Option<Vec<(VniSet, Vec<Cidr>)>>,
    /// The route limit, if any.
    pub limit: Option<Limit>,
    /// The route limit per VNI, if any (same action and warning share).
    pub vni_limit: Option<Limit>,
    /// The limits checked at accept, per source address.
    pub address: admission::AddressLimits,
}

impl Class {
    fn new(c: &PolicyClass) -> Self {
        Class {
            name: c.name().to_string(),
            matches: c.match_prefixes().collect(),
            identities: c.identity_patterns().map(str::to_string).collect(),
            subscribe: c.subscribe_vnis.as_deref().map(VniSet::new),
            announce: c.announce_vnis.as_deref().map(VniSet::new),
            next_hop: c
                .next_hop
                .as_ref()
                .map(|r| (r.own_address, r.prefixes.clone())),
            types: c.route_types.as_ref().map(|t| {
                t.iter()
                    .filter(|&&t| (0..64).contains(&t))
                    .fold(0u64, |m, &t| m | (1 << t))
            }),
            destinations: c.destinations.as_ref().map(|rules| {
                rules
                    .iter()
                    .map(|r| {
                        (
                            VniSet::new(&r.vnis),
                            r.prefixes.iter().map(|p| p.0).collect(),
                        )
                    })
                    .collect()
            }),
            limit: c.max_routes.map(|max| Limit::new(max, c)),
            vni_limit: c.max_routes_per_vni.map(|max| Limit::new(max, c)),
            address: admission::AddressLimits {
                max_sessions: c.max_sessions_per_address,
                rate: c.connect_rate.map(|r| admission::ConnectLimit {
                    count: r.count,
                    per: std::time::Duration::from_secs(u64::from(r.per_secs)),
                    burst: c.connect_burst().unwrap_or(r.count),
                }),
            },
        }
    }

    /// True if the session must keep the set of routes it holds.
    fn tracks_routes(&self) -> bool {
        self.limit.is_some() || self.vni_limit.is_some()
    }

    /// A class that allows everything (a `[policy]` without
    /// `[policy.default]`).
    fn open(name: &str) -> Self {
        Class {
            name: name.to_string(),
            matches: Vec::new(),
            identities: Vec::new(),
            subscribe: None,
            announce: None,
            next_hop: None,
            types: None,
            destinations: None,
            limit: None,
            vni_limit: None,
            address: admission::AddressLimits::default(),
        }
    }

    /// True if the class can refuse anything (a rule or a limit): a live
    /// session moved into a class that cannot has nothing to re-check.
    pub fn restricts(&self) -> bool {
        self.subscribe.is_some()
            || self.announce.is_some()
            || self.next_hop.is_some()
            || self.types.is_some()
            || self.destinations.is_some()
            || self.limit.is_some()
            || self.vni_limit.is_some()
    }

    /// The `match` prefixes, in file order.
    pub fn match_prefixes(&self) -> &[Cidr] {
        &self.matches
    }

    /// The rules in readable form, one `key = value` each, in the order and
    /// spelling of the file (absent keys, "anything", are left out).
    pub fn rules(&self) -> Vec<String> {
        let vnis = |s: &VniSet| {
            let items: Vec<String> =
                s.0.iter()
                    .map(|&(a, b)| {
                        if a == b {
                            a.to_string()
                        } else {
                            format!("{a}-{b}")
                        }
                    })
                    .collect();
            format!("[{}]", items.join(", "))
        };
        let mut out = Vec::new();
        if let Some(s) = &self.subscribe {
            out.push(format!("subscribe_vnis = {}", vnis(s)));
        }
        if let Some(s) = &self.announce {
            out.push(format!("announce_vnis = {}", vnis(s)));
        }
        if let Some((own, prefixes)) = &self.next_hop {
            let mut items: Vec<String> = Vec::new();
            if *own {
                items.push("self".into());
            }
            items.extend(prefixes.iter().map(|p| p.to_string()));
            out.push(format!("next_hop = [{}]", items.join(", ")));
        }
        if let Some(types) = self.types {
            let names: Vec<String> = (0..64u16)
                .filter(|t| types & (1 << t) != 0)
                .map(|t| crate::wire::NextHopType(i32::from(t)).name())
                .collect();
            out.push(format!("route_types = [{}]", names.join(", ")));
        }
        if let Some(rules) = &self.destinations {
            let entries: Vec<String> = rules
                .iter()
                .map(|(set, prefixes)| {
                    let p: Vec<String> = prefixes.iter().map(|p| p.to_string()).collect();
                    format!("{{ vnis = {}, prefixes = [{}] }}", vnis(set), p.join(", "))
                })
                .collect();
            out.push(format!("destinations = [{}]", entries.join(", ")));
        }
        // `max_routes` has fields of its own in the API; the other limits
        // are listed here.
        if let Some(l) = self.vni_limit {
            out.push(format!("max_routes_per_vni = {}", l.max));
        }
        if let Some(n) = self.address.max_sessions {
            out.push(format!("max_sessions_per_address = {n}"));
        }
        if let Some(r) = self.address.rate {
            let unit = match r.per.as_secs() {
                1 => "s",
                60 => "m",
                _ => "h",
            };
            out.push(format!("connect_rate = \"{}/{unit}\"", r.count));
            out.push(format!("connect_burst = {}", r.burst));
        }
        out
    }

    /// The reason a route announced by a peer at `peer` (canonical) breaks
    /// this class, ignoring the limit.
    #[inline]
    fn check_route(&self, route: &Route, peer: IpAddr) -> Option<Reason> {
        if let Some(set) = &self.announce {
            if !set.contains(route.vni) {
                return Some(Reason::AnnounceVni);
            }
        }
        if let Some(types) = self.types {
            let t = route.next_hop.kind.0;
            if !(0..64).contains(&t) || types & (1 << t) == 0 {
                return Some(Reason::RouteType);
            }
        }
        if let Some((own, prefixes)) = &self.next_hop {
            let hop = canonical(route.next_hop.addr.to_ip());
            if !((*own && hop == peer) || prefixes.iter().any(|p| p.contains(hop))) {
                return Some(Reason::NextHop);
            }
        }
        if let Some(rules) = &self.destinations {
            if let Some((_, prefixes)) = rules.iter().find(|(vnis, _)| vnis.contains(route.vni)) {
                let dest = Cidr {
                    addr: canonical(route.dest.addr.to_ip()),
                    len: route.dest.prefix_len,
                };
                if !prefixes.iter().any(|p| p.covers(&dest)) {
                    return Some(Reason::Destination);
                }
            }
        }
        None
    }
}

/// The whole policy: classes in file order, first match wins, then the
/// default class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    classes: Vec<Arc<Class>>,
    default: Arc<Class>,
}

impl Policy {
    /// Compiles the `[policy]` section (already validated by the config crate).
    pub fn new(section: &PolicySection) -> Self {
        Policy {
            classes: section
                .class
                .iter()
                .map(|c| Arc::new(Class::new(c)))
                .collect(),
            default: Arc::new(
                section
                    .default
                    .as_ref()
                    .map_or_else(|| Class::open("default"), Class::new),
            ),
        }
    }

    /// The class of a plaintext peer whose source address is `peer`.
    pub fn class_for(&self, peer: IpAddr) -> &Arc<Class> {
        self.class_for_peer(peer, &[])
    }

    /// The class of a peer at `peer` whose TLS client certificate speaks
    /// for `identities` (lower-case; none for plaintext): the first class
    /// whose `match` (if any) holds the address and whose `match_identity`
    /// (if any) matches one of the identities.
    pub fn class_for_peer(&self, peer: IpAddr, identities: &[String]) -> &Arc<Class> {
        let peer = canonical(peer);
        self.classes
            .iter()
            .find(|c| {
                (c.matches.is_empty() || c.matches.iter().any(|m| m.contains(peer)))
                    && (c.identities.is_empty()
                        || c.identities
                            .iter()
                            .any(|p| identities.iter().any(|id| identity_matches(p, id))))
            })
            .unwrap_or(&self.default)
    }

    /// Every class in match order, the default last.
    pub fn classes(&self) -> impl Iterator<Item = &Arc<Class>> {
        self.classes.iter().chain(std::iter::once(&self.default))
    }

    /// Names of every class, the default last (for metrics).
    pub fn class_names(&self) -> impl Iterator<Item = &str> {
        self.classes
            .iter()
            .chain(std::iter::once(&self.default))
            .map(|c| c.name.as_str())
    }
}

/// Whether certificate name `name` matches `pattern`: equal, or for
/// `*.SUFFIX` exactly one non-wildcard label in front of SUFFIX.
fn identity_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => name
            .split_once('.')
            .is_some_and(|(first, rest)| !first.is_empty() && first != "*" && rest == suffix),
        None => pattern == name,
    }
}

/// What to do with one UPDATE of a session under a policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Hand it to the table.
    Forward,
    /// Hand it to the table; the session just reached its class's warning
    /// threshold (log once).
    ForwardAndWarn,
    /// Drop it silently: a REMOVE of a route this session does not hold
    /// through the policy (refused earlier, or never announced). Not a new
    /// refusal.
    Ignore,
    /// Refused: not distributed; count it.
    Refuse(Reason),
    /// Over the limit with the "close" action: close the session.
    Close,
    /// Hand it to the table; the session just reached the warning threshold
    /// of `max_routes_per_vni` in this VNI (log once per session).
    ForwardAndWarnVni(Vni),
    /// Over `max_routes_per_vni` in this VNI with the "close" action: close
    /// the session.
    CloseVni(Vni),
}

/// What [`SessionPolicy::reclassify`] decided for a live session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recheck {
    /// Routes to withdraw, in route order, each with the reason.
    pub withdraw: Vec<(Route, Reason)>,
    /// VNIs whose subscription is to be dropped, in order.
    pub unsubscribe: Vec<Vni>,
    /// Over `max_routes` with the `close` action: close the session.
    pub close: bool,
}

/// One session's checker.
#[derive(Debug)]
pub struct SessionPolicy {
    class: Arc<Class>,
    /// The peer's source address, IPv4-mapped addresses as IPv4.
    peer: IpAddr,
    /// Routes this session holds through the policy (only with a limit):
    /// at most the limit, whatever the peer sends.
    held: HashSet<Route>,
    /// Routes held per VNI (only with `max_routes_per_vni`; a VNI is
    /// removed when its count drops to 0).
    per_vni: HashMap<Vni, usize>,
    warned: bool,
    warned_vni: bool,
    /// Bit `r` set: reason `r` was logged for this session already.
    logged: u16,
}

impl SessionPolicy {
    /// The checker of a session from `peer` in `class`.
    pub fn new(class: Arc<Class>, peer: IpAddr) -> Self {
        SessionPolicy {
            class,
            peer: canonical(peer),
            held: HashSet::new(),
            per_vni: HashMap::new(),
            warned: false,
            warned_vni: false,
            logged: 0,
        }
    }

    /// The session's class.
    pub fn class(&self) -> &Arc<Class> {
        &self.class
    }

    /// Routes held through the limit (0 without a limit).
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Routes held in `vni` (0 without `max_routes_per_vni`).
    pub fn held_in(&self, vni: Vni) -> usize {
        self.per_vni.get(&vni).copied().unwrap_or(0)
    }

    /// A SUBSCRIBE (`subscribe` true) or UNSUBSCRIBE: `Err` if the class
    /// does not allow the VNI (an UNSUBSCRIBE of it is then a no-op to drop,
    /// and not counted: see [`SessionPolicy::vni_allowed`]).
    #[inline]
    pub fn vni_allowed(&self, vni: Vni) -> Result<(), Reason> {
        match &self.class.subscribe {
            Some(set) if !set.contains(vni) => Err(Reason::SubscribeVni),
            _ => Ok(()),
        }
    }

    /// The verdict on one UPDATE.
    pub fn route(&mut self, route: &Route, action: Action) -> Verdict {
        let broken = self.class.check_route(route, self.peer);
        match action {
            Action::Add => {
                if let Some(reason) = broken {
                    return Verdict::Refuse(reason);
                }
                if !self.class.tracks_routes() {
                    return Verdict::Forward;
                }
                if self.held.contains(route) {
                    // A repeated announcement holds nothing more.
                    return Verdict::Forward;
                }
                if let Some(limit) = self.class.limit {
                    if self.held.len() >= limit.max {
                        return match limit.action {
                            MaxRoutesAction::Refuse => Verdict::Refuse(Reason::MaxRoutes),
                            MaxRoutesAction::Close => Verdict::Close,
                        };
                    }
                }
                let in_vni = match self.class.vni_limit {
                    Some(limit) => {
                        let n = self.held_in(route.vni);
                        if n >= limit.max {
                            return match limit.action {
                                MaxRoutesAction::Refuse => Verdict::Refuse(Reason::MaxRoutesPerVni),
                                MaxRoutesAction::Close => Verdict::CloseVni(route.vni),
                            };
                        }
                        *self.per_vni.entry(route.vni).or_insert(0) += 1;
                        Some((n + 1, limit))
                    }
                    None => None,
                };
                self.held.insert(*route);
                if let Some(limit) = self.class.limit {
                    if !self.warned && self.held.len() >= limit.warn_at {
                        self.warned = true;
                        return Verdict::ForwardAndWarn;
                    }
                }
                if let Some((n, limit)) = in_vni {
                    if !self.warned_vni && n >= limit.warn_at {
                        self.warned_vni = true;
                        return Verdict::ForwardAndWarnVni(route.vni);
                    }
                }
                Verdict::Forward
            }
            Action::Remove => {
                if broken.is_some() {
                    // It can only have been refused: the table never had it
                    // from this session.
                    return Verdict::Ignore;
                }
                if !self.class.tracks_routes() {
                    return Verdict::Forward;
                }
                if self.held.remove(route) {
                    if let hashbrown::hash_map::Entry::Occupied(mut e) =
                        self.per_vni.entry(route.vni)
                    {
                        *e.get_mut() -= 1;
                        if *e.get() == 0 {
                            e.remove();
                        }
                    }
                    if self.held.is_empty() && self.held.capacity() > 1024 {
                        self.held = HashSet::new();
                        self.per_vni = HashMap::new();
                    }
                    Verdict::Forward
                } else {
                    Verdict::Ignore
                }
            }
        }
    }

    /// Moves a live session into `class` (a reload changed its policy) and
    /// re-checks what it holds: `routes` it has in the table and the VNIs it
    /// is `subscribed` to. Routes the new class refuses, and with a limit
    /// those beyond the first `max_routes` legal ones in route order (VNI,
    /// prefix, next hop: deterministic whatever order they came in), are to
    /// be withdrawn as the session's own REMOVE would; subscriptions it may
    /// no longer have are to be dropped. The refusal log bits are kept (one
    /// log line per session and reason); the warning is re-armed.
    pub fn reclassify(
        &mut self,
        class: Arc<Class>,
        mut routes: Vec<Route>,
        subscribed: &[Vni],
    ) -> Recheck {
        self.class = class;
        self.held = HashSet::new();
        self.per_vni = HashMap::new();
        self.warned = false;
        self.warned_vni = false;
        let mut out = Recheck {
            unsubscribe: subscribed
                .iter()
                .copied()
                .filter(|&v| self.vni_allowed(v).is_err())
                .collect(),
            ..Recheck::default()
        };
        out.unsubscribe.sort_unstable();
        routes.sort_unstable();
        let (limit, vni_limit) = (self.class.limit, self.class.vni_limit);
        for route in routes {
            if let Some(reason) = self.class.check_route(&route, self.peer) {
                out.withdraw.push((route, reason));
                continue;
            }
            if !self.class.tracks_routes() {
                continue;
            }
            // The total limit first, as for an ADD (`route`).
            let over = match (limit, vni_limit) {
                (Some(l), _) if self.held.len() >= l.max => Some((l, Reason::MaxRoutes)),
                (_, Some(l)) if self.held_in(route.vni) >= l.max => {
                    Some((l, Reason::MaxRoutesPerVni))
                }
                _ => None,
            };
            match over {
                Some((l, _)) if l.action == MaxRoutesAction::Close => out.close = true,
                Some((_, reason)) => out.withdraw.push((route, reason)),
                None => {
                    self.held.insert(route);
                    if vni_limit.is_some() {
                        *self.per_vni.entry(route.vni).or_insert(0) += 1;
                    }
                }
            }
        }
        // Already over a threshold: no warning for what it held before.
        self.warned = limit.is_some_and(|l| self.held.len() >= l.warn_at);
        self.warned_vni = vni_limit.is_some_and(|l| self.per_vni.values().any(|&n| n >= l.warn_at));
        out
    }

    /// True the first time `reason` is seen in this session (log it then,
    /// never again).
    pub fn first_time(&mut self, reason: Reason) -> bool {
        let bit = 1u16 << (reason as u8);
        let first = self.logged & bit == 0;
        self.logged |= bit;
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metalbondd_config::Config;

    fn policy(text: &str) -> Policy {
        let c = Config::parse(text, "t.toml").unwrap_or_else(|e| panic!("{e}"));
        Policy::new(&c.policy.expect("policy"))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn route(s: &str) -> Route {
        s.parse().unwrap()
    }

    const TEXT: &str = r#"
[[policy.class]]
name = "local4"
match = ["127.0.0.1/32"]
subscribe_vnis = ["100-199", 300]
announce_vnis = ["100"]
next_hop = ["self", "2001:db8:ff::/48"]
route_types = ["std"]
max_routes = 3
max_routes_action = "refuse"
max_routes_warn = 50

[[policy.class]]
name = "closer"
match = ["127.0.0.2/32"]
max_routes = 1
max_routes_action = "close"

[policy.default]
subscribe_vnis = []
"#;

    #[test]
    fn first_matching_class_then_default() {
        let p = policy(TEXT);
        assert_eq!(p.class_for(ip("127.0.0.1")).name, "local4");
        assert_eq!(p.class_for(ip("::ffff:127.0.0.1")).name, "local4");
        assert_eq!(p.class_for(ip("127.0.0.2")).name, "closer");
        assert_eq!(p.class_for(ip("::1")).name, "default");
        let names: Vec<&str> = p.class_names().collect();
        assert_eq!(names, ["local4", "closer", "default"]);
        let open = policy("[[policy.class]]\nname = \"x\"\nmatch = [\"10.0.0.0/8\"]\n");
        let d = open.class_for(ip("::1"));
        assert_eq!(d.name, "default");
        let mut s = SessionPolicy::new(d.clone(), ip("::1"));
        assert_eq!(s.vni_allowed(Vni(7)), Ok(()));
        assert_eq!(
            s.route(&route("7#10.0.0.0/8@2001:db8::9#nat#1#2"), Action::Add),
            Verdict::Forward
        );
    }

    #[test]
    fn vni_sets_merge_and_look_up() {
        let r = |first, last| VniRange { first, last };
        let s = VniSet::new(&[r(300, 300), r(100, 199), r(150, 250), r(251, 251)]);
        assert_eq!(s.0, vec![(100, 251), (300, 300)]);
        for (v, want) in [
            (99, false),
            (100, true),
            (251, true),
            (252, false),
            (300, true),
            (301, false),
        ] {
            assert_eq!(s.contains(Vni(v)), want, "{v}");
        }
        assert!(!VniSet::new(&[]).contains(Vni(0)));
        assert!(VniSet::new(&[r(u32::MAX - 1, u32::MAX)]).contains(Vni(u32::MAX)));
    }

    #[test]
    fn subscriptions_by_class() {
        let p = policy(TEXT);
        let s = SessionPolicy::new(p.class_for(ip("127.0.0.1")).clone(), ip("127.0.0.1"));
        assert_eq!(s.vni_allowed(Vni(150)), Ok(()));
        assert_eq!(s.vni_allowed(Vni(300)), Ok(()));
        assert_eq!(s.vni_allowed(Vni(200)), Err(Reason::SubscribeVni));
        let d = SessionPolicy::new(p.class_for(ip("::1")).clone(), ip("::1"));
        assert_eq!(d.vni_allowed(Vni(100)), Err(Reason::SubscribeVni));
    }

    #[test]
    fn routes_by_vni_type_and_next_hop() {
        let p = policy(TEXT);
        let mut s = SessionPolicy::new(
            p.class_for(ip("::ffff:127.0.0.1")).clone(),
            ip("::ffff:127.0.0.1"),
        );
        let own = route("100#10.0.0.0/24@127.0.0.1");
        assert_eq!(s.route(&own, Action::Add), Verdict::Forward);
        // Mapped next hop, own address.
        assert_eq!(
            s.route(&route("100#10.0.1.0/24@::ffff:127.0.0.1"), Action::Add),
            Verdict::ForwardAndWarn
        );
        assert_eq!(
            s.route(&route("100#10.0.2.0/24@2001:db8:ff::7"), Action::Add),
            Verdict::Forward
        );
        let hijack = route("100#10.0.3.0/24@127.0.0.2");
        assert_eq!(
            s.route(&hijack, Action::Add),
            Verdict::Refuse(Reason::NextHop)
        );
        assert_eq!(s.route(&hijack, Action::Remove), Verdict::Ignore);
        assert_eq!(
            s.route(&route("101#10.0.0.0/24@127.0.0.1"), Action::Add),
            Verdict::Refuse(Reason::AnnounceVni)
        );
        assert_eq!(
            s.route(&route("100#10.0.0.0/24@127.0.0.1#nat#1#2"), Action::Add),
            Verdict::Refuse(Reason::RouteType)
        );
        // The limit (3) is reached: the excess is refused, a repeat is not.
        assert_eq!(
            s.route(&route("100#10.0.9.0/24@127.0.0.1"), Action::Add),
            Verdict::Refuse(Reason::MaxRoutes)
        );
        assert_eq!(s.route(&own, Action::Add), Verdict::Forward);
        // A refused route's REMOVE removes nothing; a held one frees a place.
        assert_eq!(
            s.route(&route("100#10.0.9.0/24@127.0.0.1"), Action::Remove),
            Verdict::Ignore
        );
        assert_eq!(s.route(&own, Action::Remove), Verdict::Forward);
        assert_eq!(s.held(), 2);
        assert_eq!(
            s.route(&route("100#10.0.9.0/24@127.0.0.1"), Action::Add),
            Verdict::Forward
        );
    }

    #[test]
    fn routes_per_vni() {
        let p = policy(
            r#"
[[policy.class]]
name = "closer"
match = ["10.1.0.0/16"]
max_routes_per_vni = 1
max_routes_action = "close"

[[policy.class]]
name = "pervni"
match = ["10.0.0.0/8"]
max_routes = 5
max_routes_per_vni = 2
max_routes_warn = 100
max_sessions_per_address = 3
connect_rate = "6/m"
"#,
        );
        let class = p.class_for(ip("10.0.0.1")).clone();
        assert_eq!(class.address.max_sessions, Some(3));
        assert_eq!(
            class.address.rate,
            Some(admission::ConnectLimit {
                count: 6,
                per: std::time::Duration::from_secs(60),
                burst: 6
            })
        );
        let mut s = SessionPolicy::new(class, ip("10.0.0.1"));
        let a1 = route("1#10.0.1.0/24@2001:db8::1");
        let a2 = route("1#10.0.2.0/24@2001:db8::1");
        let a3 = route("1#10.0.3.0/24@2001:db8::1");
        assert_eq!(s.route(&a1, Action::Add), Verdict::Forward);
        // 100 % of 2 per VNI: the warning at the second route of VNI 1.
        assert_eq!(
            s.route(&a2, Action::Add),
            Verdict::ForwardAndWarnVni(Vni(1))
        );
        assert_eq!(
            s.route(&a3, Action::Add),
            Verdict::Refuse(Reason::MaxRoutesPerVni)
        );
        // A repeat is no new route; another VNI has its own count.
        assert_eq!(s.route(&a1, Action::Add), Verdict::Forward);
        assert_eq!(
            s.route(&route("2#10.0.1.0/24@2001:db8::1"), Action::Add),
            Verdict::Forward
        );
        assert_eq!(
            s.route(&route("2#10.0.2.0/24@2001:db8::1"), Action::Add),
            Verdict::Forward
        );
        assert_eq!(s.held_in(Vni(1)), 2);
        assert_eq!(s.held_in(Vni(2)), 2);
        // The total limit (5) comes first.
        assert_eq!(
            s.route(&route("3#10.0.1.0/24@2001:db8::1"), Action::Add),
            Verdict::ForwardAndWarn
        );
        assert_eq!(
            s.route(&route("4#10.0.1.0/24@2001:db8::1"), Action::Add),
            Verdict::Refuse(Reason::MaxRoutes)
        );
        // A REMOVE frees a place in its VNI; of a refused route, nothing.
        assert_eq!(s.route(&a3, Action::Remove), Verdict::Ignore);
        assert_eq!(s.route(&a1, Action::Remove), Verdict::Forward);
        assert_eq!(s.held_in(Vni(1)), 1);
        assert_eq!(s.route(&a3, Action::Add), Verdict::Forward);
        assert_eq!(s.held_in(Vni(1)), 2);
        // Emptied VNIs are forgotten.
        assert_eq!(
            s.route(&route("3#10.0.1.0/24@2001:db8::1"), Action::Remove),
            Verdict::Forward
        );
        assert!(!s.per_vni.contains_key(&Vni(3)));

        let mut c = SessionPolicy::new(p.class_for(ip("10.1.0.1")).clone(), ip("10.1.0.1"));
        assert_eq!(
            c.route(&a1, Action::Add),
            Verdict::ForwardAndWarnVni(Vni(1))
        );
        assert_eq!(c.route(&a2, Action::Add), Verdict::CloseVni(Vni(1)));
    }

    #[test]
    fn reclassify_withdraws_what_the_new_class_refuses() {
        let open = policy("[[policy.class]]\nname = \"x\"\nmatch = [\"10.0.0.0/8\"]\n");
        let p = policy(TEXT);
        let peer = ip("127.0.0.1");
        let mut s = SessionPolicy::new(open.class_for(peer).clone(), peer);
        assert!(!open.class_for(peer).restricts());
        let local4 = p.class_for(peer).clone();
        assert!(local4.restricts());
        let held: Vec<Route> = [
            "100#10.0.4.0/24@127.0.0.1",
            "100#10.0.1.0/24@127.0.0.1",
            "100#10.0.9.0/24@127.0.0.2",
            "200#10.0.0.0/24@127.0.0.1",
            "100#10.0.3.0/24@2001:db8:ff::1",
            "100#10.0.2.0/24@127.0.0.1",
            "100#10.0.5.0/24@127.0.0.1#nat#1#2",
        ]
        .iter()
        .map(|r| route(r))
        .collect();
        let r = s.reclassify(
            local4.clone(),
            held.clone(),
            &[Vni(300), Vni(5), Vni(150), Vni(4)],
        );
        // Stateless refusals first, then of the 4 legal routes the first 3
        // in route order are kept and the last refused for the limit.
        let mut want = vec![
            (route("100#10.0.9.0/24@127.0.0.2"), Reason::NextHop),
            (route("200#10.0.0.0/24@127.0.0.1"), Reason::AnnounceVni),
            (
                route("100#10.0.5.0/24@127.0.0.1#nat#1#2"),
                Reason::RouteType,
            ),
            (route("100#10.0.4.0/24@127.0.0.1"), Reason::MaxRoutes),
        ];
        want.sort_unstable();
        let mut got = r.withdraw.clone();
        got.sort_unstable();
        assert_eq!(got, want);
        assert_eq!(r.unsubscribe, vec![Vni(4), Vni(5)]);
        assert!(!r.close);
        assert_eq!(s.held(), 3);
        assert_eq!(s.class().name, "local4");
        // The limit now holds: a fourth route is refused, a held one repeats.
        assert_eq!(
            s.route(&route("100#10.0.8.0/24@127.0.0.1"), Action::Add),
            Verdict::Refuse(Reason::MaxRoutes)
        );
        assert_eq!(
            s.route(&route("100#10.0.1.0/24@127.0.0.1"), Action::Add),
            Verdict::Forward
        );
        // The same input in another order decides the same.
        let mut again = SessionPolicy::new(local4.clone(), peer);
        let mut reversed = held.clone();
        reversed.reverse();
        let r2 = again.reclassify(local4, reversed, &[Vni(5), Vni(150), Vni(4), Vni(300)]);
        assert_eq!(r2, r);
        // The close action closes a session over the limit instead.
        let closer = p.class_for(ip("127.0.0.2")).clone();
        let mut c = SessionPolicy::new(closer.clone(), ip("127.0.0.2"));
        let r = c.reclassify(closer, held, &[]);
        assert!(r.close && r.withdraw.is_empty() && r.unsubscribe.is_empty());
    }

    #[test]
    fn close_action_and_logging_once() {
        let p = policy(TEXT);
        let mut s = SessionPolicy::new(p.class_for(ip("127.0.0.2")).clone(), ip("127.0.0.2"));
        assert_eq!(
            s.route(&route("5#10.0.0.0/24@2001:db8::1"), Action::Add),
            Verdict::ForwardAndWarn
        );
        assert_eq!(
            s.route(&route("5#10.0.1.0/24@2001:db8::1"), Action::Add),
            Verdict::Close
        );
        assert!(s.first_time(Reason::MaxRoutes));
        assert!(!s.first_time(Reason::MaxRoutes));
        assert!(s.first_time(Reason::NextHop));
        for n in 0..9 {
            assert_eq!(Reason::from_u8(n).map(|r| r as u8), Some(n));
        }
        assert_eq!(Reason::from_u8(9), None);
        // Every reason has its own bit in a session's `logged` set.
        for r in Reason::ALL {
            assert!(s.first_time(r) || matches!(r, Reason::MaxRoutes | Reason::NextHop));
            assert!(!s.first_time(r));
        }
    }

    #[test]
    fn destinations_per_vni() {
        let p = policy(
            r#"
[[policy.class]]
name = "d"
match = ["10.0.0.0/8"]
destinations = [
  { vnis = ["100-199"], prefixes = ["10.100.0.0/16", "fd00:100::/32"] },
  { vnis = [100, 300], prefixes = [] },
]
"#,
        );
        let class = p.class_for(ip("10.0.0.1")).clone();
        assert!(class.restricts());
        let mut s = SessionPolicy::new(class.clone(), ip("10.0.0.1"));
        let mut verdict = |r: &str| s.route(&route(r), Action::Add);
        // Inside a prefix of the first entry holding the VNI: allowed (the
        // second entry, which allows nothing in VNI 100, is not asked).
        assert_eq!(verdict("100#10.100.1.0/24@2001:db8::1"), Verdict::Forward);
        assert_eq!(verdict("150#10.100.0.0/16@2001:db8::1"), Verdict::Forward);
        assert_eq!(verdict("150#fd00:100:1::/48@2001:db8::1"), Verdict::Forward);
        // Wider than the prefix, or outside it: refused.
        assert_eq!(
            verdict("150#10.0.0.0/8@2001:db8::1"),
            Verdict::Refuse(Reason::Destination)
        );
        assert_eq!(
            verdict("150#10.101.0.0/24@2001:db8::1"),
            Verdict::Refuse(Reason::Destination)
        );
        // An empty list allows nothing; an unlisted VNI is unrestricted.
        assert_eq!(
            verdict("300#10.100.1.0/24@2001:db8::1"),
            Verdict::Refuse(Reason::Destination)
        );
        assert_eq!(verdict("400#192.0.2.0/24@2001:db8::1"), Verdict::Forward);
        assert_eq!(
            class.rules(),
            vec!["destinations = [{ vnis = [100-199], prefixes = [10.100.0.0/16, fd00:100::/32] }, { vnis = [100, 300], prefixes = [] }]".to_string()]
        );
    }

    #[test]
    fn identity_selects_the_class() {
        let section = Config::parse(
            r#"
            [[policy.class]]
            name = "hv-local"
            match = ["127.0.0.0/8"]
            match_identity = ["*.hv.example.net"]
            [[policy.class]]
            name = "hv"
            match_identity = ["*.hv.example.net", "hv-special.example.net"]
            [[policy.class]]
            name = "local"
            match = ["127.0.0.0/8"]
            "#,
            "test.toml",
        )
        .unwrap()
        .policy
        .unwrap();
        let p = Policy::new(&section);
        let ids = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let a = ip("127.0.0.1");
        let b = ip("2001:db8::1");
        assert_eq!(
            p.class_for_peer(a, &ids(&["hv-1.hv.example.net"])).name,
            "hv-local"
        );
        assert_eq!(
            p.class_for_peer(b, &ids(&["hv-1.hv.example.net"])).name,
            "hv"
        );
        assert_eq!(
            p.class_for_peer(b, &ids(&["x", "hv-special.example.net"]))
                .name,
            "hv"
        );
        // One label only, and no wildcard certificate names.
        assert_eq!(
            p.class_for_peer(b, &ids(&["a.b.hv.example.net"])).name,
            "default"
        );
        assert_eq!(
            p.class_for_peer(b, &ids(&["*.hv.example.net"])).name,
            "default"
        );
        assert_eq!(
            p.class_for_peer(b, &ids(&["hv.example.net"])).name,
            "default"
        );
        assert_eq!(p.class_for_peer(a, &[]).name, "local");
        assert_eq!(p.class_for(b).name, "default");
    }
}
