//! `[policy]`: what each peer of the route server may do, by class.
//!
//! ```toml
//! [[policy.class]]
//! name = "hypervisors"
//! match = ["2001:db8:100::/48", "10.0.0.0/8"]
//! subscribe_vnis = ["100-199", 300]
//! announce_vnis = ["100-199"]
//! next_hop = ["self", "2001:db8:ff::/48"]
//! route_types = ["std", "nat"]
//! max_routes = 10000
//! max_routes_action = "refuse"
//! max_routes_warn = 80
//! max_routes_per_vni = 2000
//! max_sessions_per_address = 4
//! connect_rate = "10/s"
//! connect_burst = 20
//!
//! [policy.default]
//! subscribe_vnis = []
//! announce_vnis = []
//! ```
//!
//! A session's class is the first `[[policy.class]]` (in file order) one of
//! whose `match` prefixes holds the peer's source address, else
//! `[policy.default]`. Every key of a class is optional and absent means
//! "anything" (a missing `[policy.default]` is a class allowing everything).
//! No `[policy]` at all is the open policy of the reference implementation.
//!
//! The values are checked here (CIDRs, ranges, types, numbers); a `match`
//! prefix that lies inside an earlier one (of an earlier class or of the same
//! class) can never select its class and is an error (see
//! [`PolicySection::check`]): first match wins, so an overlap that matters is
//! always a mistake in the order of the classes.

use std::fmt;
use std::net::IpAddr;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::Spanned;

/// An IP prefix `ADDR/LEN` (the address is masked to its prefix; an
/// IPv4-mapped IPv6 prefix is written and compared as IPv4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    /// Network address (masked).
    pub addr: IpAddr,
    /// Prefix length (at most 32 for IPv4, 128 for IPv6).
    pub len: u8,
}

impl Cidr {
    /// True if `ip` lies inside this prefix (IPv4-mapped IPv6 addresses are
    /// compared as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => mask32(u32::from(ip), self.len) == u32::from(net),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask128(u128::from(ip), self.len) == u128::from(net)
            }
            _ => false,
        }
    }

    /// True if every address of `other` lies inside this prefix.
    pub fn covers(&self, other: &Cidr) -> bool {
        self.len <= other.len && self.contains(other.addr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "{s:?} is not a prefix: {why} (expected e.g. \"10.0.0.0/8\" or \"2001:db8::/32\")"
            )
        };
        let (addr, len) = s.trim().split_once('/').ok_or_else(|| bad("no /LENGTH"))?;
        let addr: IpAddr = addr.parse().map_err(|_| bad("bad address"))?;
        let len: u8 = len.parse().map_err(|_| bad("bad length"))?;
        // An IPv4-mapped prefix (::ffff:0:0/96 and longer) is its IPv4 prefix.
        let (addr, len) = match addr {
            IpAddr::V6(v6) if len >= 96 && v6.to_ipv4_mapped().is_some() => {
                (IpAddr::V4(v6.to_ipv4_mapped().expect("checked")), len - 96)
            }
            other => (other, len),
        };
        let addr = match addr {
            IpAddr::V4(a) if len <= 32 => IpAddr::V4(mask32(u32::from(a), len).into()),
            IpAddr::V6(a) if len <= 128 => IpAddr::V6(mask128(u128::from(a), len).into()),
            _ => return Err(bad("the length is longer than the address")),
        };
        Ok(Cidr { addr, len })
    }
}

/// `ip`, with an IPv4-mapped IPv6 address as its IPv4 address (a dual-stack
/// listener sees IPv4 peers as `::ffff:a.b.c.d`).
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn mask32(v: u32, len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        v & (u32::MAX << (32 - u32::from(len.min(32))))
    }
}

fn mask128(v: u128, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        v & (u128::MAX << (128 - u32::from(len.min(128))))
    }
}

/// An inclusive range of VNIs (`"100"`, `"200-299"` or `100` in the file).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct VniRange {
    /// First VNI.
    pub first: u32,
    /// Last VNI (at least `first`).
    pub last: u32,
}

impl std::str::FromStr for VniRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let vni = |t: &str| -> Result<u32, String> {
            t.trim().parse::<u32>().map_err(|_| {
                format!("{s:?} is not a VNI or a range (expected e.g. \"100\" or \"200-299\", VNIs from 0 to 4294967295)")
            })
        };
        let (first, last) = match s.split_once('-') {
            Some((a, b)) => (vni(a)?, vni(b)?),
            None => (vni(s)?, vni(s)?),
        };
        if first > last {
            return Err(format!("{s:?} is an empty range: {first} is after {last}"));
        }
        Ok(VniRange { first, last })
    }
}

impl<'de> Deserialize<'de> for VniRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = VniRange;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a VNI (100) or a range string (\"200-299\")")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<VniRange, E> {
                let v = u32::try_from(v).map_err(|_| {
                    E::custom(format!(
                        "{v} is out of range: expected a VNI from 0 to 4294967295"
                    ))
                })?;
                Ok(VniRange { first: v, last: v })
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<VniRange, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(-1))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<VniRange, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// One entry of `next_hop`: `"self"`, `"any"` or a prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NextHopItem {
    Any,
    OwnAddress,
    Prefix(Cidr),
}

impl<'de> Deserialize<'de> for NextHopItem {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::parse::string_with(
            d,
            "\"any\", \"self\" or a prefix string such as \"2001:db8::/32\"",
            |s| match s.trim() {
                "any" => Ok(NextHopItem::Any),
                "self" => Ok(NextHopItem::OwnAddress),
                other => other
                    .parse()
                    .map(NextHopItem::Prefix)
                    .map_err(|e| format!("{e}, \"self\" or \"any\"")),
            },
        )
    }
}

/// `next_hop`: which next hops a class may announce. `None` in
/// [`PolicyClass::next_hop`] means any.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NextHopRule {
    /// The peer's own source address (`"self"`).
    pub own_address: bool,
    /// Addresses inside these prefixes.
    pub prefixes: Vec<Cidr>,
}

fn next_hop<'de, D: Deserializer<'de>>(d: D) -> Result<Option<NextHopRule>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<NextHopItem>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("\"any\", \"self\", or a list such as [\"self\", \"2001:db8::/32\"]")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            NextHopItem::deserialize(de::value::StrDeserializer::<E>::new(v)).map(|i| vec![i])
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(item) = seq.next_element()? {
                out.push(item);
            }
            Ok(out)
        }
    }
    let items = d.deserialize_any(V)?;
    if items.is_empty() {
        return Err(de::Error::custom(
            "the list is empty: nothing could be announced (give \"self\", prefixes or \"any\")",
        ));
    }
    if items.contains(&NextHopItem::Any) {
        if items.len() > 1 {
            return Err(de::Error::custom(
                "\"any\" allows every next hop: it cannot be combined with \"self\" or prefixes",
            ));
        }
        return Ok(None);
    }
    let mut rule = NextHopRule::default();
    for item in items {
        match item {
            NextHopItem::OwnAddress => rule.own_address = true,
            NextHopItem::Prefix(p) => rule.prefixes.push(p),
            NextHopItem::Any => {}
        }
    }
    Ok(Some(rule))
}

/// A route (next-hop) type of `route_types`: its protobuf value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RouteType(i32);

impl<'de> Deserialize<'de> for RouteType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::parse::string_with(d, "\"std\", \"nat\" or \"lb\"", |s| match s.trim() {
            "std" | "standard" => Ok(RouteType(0)),
            "nat" => Ok(RouteType(1)),
            "lb" | "loadbalancer_target" => Ok(RouteType(2)),
            other => Err(format!(
                "unknown route type {other:?} (expected \"std\", \"nat\" or \"lb\")"
            )),
        })
    }
}

fn route_types<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<i32>>, D::Error> {
    let v: Vec<RouteType> = Vec::deserialize(d)?;
    Ok(Some(v.into_iter().map(|t| t.0).collect()))
}

/// One entry of a class's `destinations`:
/// `{ vnis = ["100-199"], prefixes = ["10.0.0.0/8", "fd00::/8"] }`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationRule {
    /// The VNIs it applies to (not empty).
    pub vnis: Vec<VniRange>,
    /// The prefixes a route's destination must lie inside (an empty list
    /// allows no route in those VNIs).
    pub prefixes: Vec<CidrValue>,
}

fn destinations<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<DestinationRule>>, D::Error> {
    let rules = Vec::<DestinationRule>::deserialize(d)?;
    if rules.iter().any(|r| r.vnis.is_empty()) {
        return Err(de::Error::custom(
            "an entry with `vnis = []` applies to no VNI (give the VNIs its prefixes are for)",
        ));
    }
    Ok(Some(rules))
}

fn vni_ranges<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<VniRange>>, D::Error> {
    Vec::deserialize(d).map(Some)
}

/// What a session over `max_routes` gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MaxRoutesAction {
    /// Routes over the limit are not accepted (`"refuse"`).
    #[default]
    Refuse,
    /// The session is closed (`"close"`); its routes are withdrawn.
    Close,
}

impl<'de> Deserialize<'de> for MaxRoutesAction {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::parse::string_with(d, "\"refuse\" or \"close\"", |s| match s {
            "refuse" => Ok(MaxRoutesAction::Refuse),
            "close" => Ok(MaxRoutesAction::Close),
            other => Err(format!(
                "unknown action {other:?} (expected \"refuse\" or \"close\")"
            )),
        })
    }
}

fn max_routes<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    crate::parse::count(d).map(|n| Some(n as u64))
}

fn max_routes_per_vni<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    crate::parse::count(d).map(|n| Some(n as u64))
}

fn sessions<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    crate::parse::int_in(
        d,
        "a number of sessions from 1 to 4294967295",
        1u32,
        u32::MAX,
    )
    .map(Some)
}

fn burst<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Spanned<u32>>, D::Error> {
    let v = Spanned::<u64>::deserialize(d)?;
    let n = *v.get_ref();
    if n == 0 || n > u64::from(u32::MAX) {
        return Err(de::Error::custom(format!(
            "{n} is out of range: expected a number of connections from 1 to 4294967295"
        )));
    }
    Ok(Some(Spanned::new(v.span(), n as u32)))
}

/// `connect_rate`: new connections per source address, `"N/s"`, `"N/m"` or
/// `"N/h"` (a token bucket refilled at that rate, holding `connect_burst`
/// tokens).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectRate {
    /// Connections per `per_secs`.
    pub count: u32,
    /// The period in seconds (1, 60 or 3600).
    pub per_secs: u32,
}

impl std::str::FromStr for ConnectRate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("{s:?} is not a rate (expected \"N/s\", \"N/m\" or \"N/h\" with N from 1 to 4294967295, e.g. \"10/s\")")
        };
        let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        let per_secs = match unit.trim() {
            "s" | "sec" | "second" => 1,
            "m" | "min" | "minute" => 60,
            "h" | "hour" => 3600,
            _ => return Err(bad()),
        };
        if count == 0 {
            return Err(format!(
                "{s:?}: a rate of 0 lets nobody connect (leave connect_rate out for no limit)"
            ));
        }
        Ok(ConnectRate { count, per_secs })
    }
}

fn connect_rate<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ConnectRate>, D::Error> {
    crate::parse::string_with(d, "a rate string such as \"10/s\"", |s| s.parse()).map(Some)
}

fn percent<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    crate::parse::int_in(d, "a percentage from 1 to 100", 1u8, 100u8)
}

fn name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Spanned<String>>, D::Error> {
    let s = Spanned::<String>::deserialize(d)?;
    let t = s.get_ref();
    if t.is_empty()
        || !t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
    {
        return Err(de::Error::custom(format!(
            "{t:?} is not a class name (letters, digits, '_', '-', '.'; it becomes a metric label)"
        )));
    }
    Ok(Some(s))
}

/// One class: `[[policy.class]]` or `[policy.default]`. Absent keys allow
/// anything.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyClass {
    /// `name`: the class's name in logs, metrics and the API (required in
    /// `[[policy.class]]`; `"default"` for `[policy.default]`).
    #[serde(deserialize_with = "name")]
    pub name: Option<Spanned<String>>,
    /// `match`: prefixes of the peer's source address (required and not
    /// empty in `[[policy.class]]`, absent in `[policy.default]`).
    #[serde(rename = "match")]
    pub matches: Option<Spanned<Vec<Spanned<CidrValue>>>>,
    /// `match_identity`: names matched against a TLS client certificate's
    /// DNS names (its subject CN when it has none): `"hv-17.example.net"`
    /// exactly, or `"*.hv.example.net"` for one more label in front
    /// (ADR 0026). With `match` as well, both must match. Lower-cased.
    #[serde(deserialize_with = "identities")]
    pub match_identity: Option<SpannedNames>,
    /// `subscribe_vnis`: VNIs the peer may subscribe to; `None`: any.
    #[serde(deserialize_with = "vni_ranges")]
    pub subscribe_vnis: Option<Vec<VniRange>>,
    /// `announce_vnis`: VNIs the peer may announce into; `None`: any.
    #[serde(deserialize_with = "vni_ranges")]
    pub announce_vnis: Option<Vec<VniRange>>,
    /// `next_hop`: `"any"` (the default, `None`), `"self"`, prefixes, or
    /// `"self"` and prefixes.
    #[serde(deserialize_with = "next_hop")]
    pub next_hop: Option<NextHopRule>,
    /// `route_types`: protobuf values of the allowed next-hop types (std 0,
    /// nat 1, lb 2); `None`: all.
    #[serde(deserialize_with = "route_types")]
    pub route_types: Option<Vec<i32>>,
    /// `destinations`: per VNI, the destination prefixes a peer may
    /// announce: a route in a VNI of an entry must lie inside one of that
    /// entry's prefixes (the first entry listing the VNI decides; VNIs no
    /// entry lists are not restricted by it). `None`: any.
    #[serde(deserialize_with = "destinations")]
    pub destinations: Option<Vec<DestinationRule>>,
    /// `max_routes`: most routes a session may hold in the table; `None`:
    /// no limit.
    #[serde(deserialize_with = "max_routes")]
    pub max_routes: Option<u64>,
    /// `max_routes_action`: what happens to a route over the limit.
    pub max_routes_action: MaxRoutesAction,
    /// `max_routes_warn`: a warning is logged when a session reaches this
    /// percentage of `max_routes` (default 80).
    #[serde(deserialize_with = "percent")]
    pub max_routes_warn: u8,
    /// `max_routes_per_vni`: most routes a session may hold in one VNI
    /// (same action and warning threshold as `max_routes`); `None`: no limit.
    #[serde(deserialize_with = "max_routes_per_vni")]
    pub max_routes_per_vni: Option<u64>,
    /// `max_sessions_per_address`: most sessions open at once from one
    /// source address; further connections are closed at accept.
    #[serde(deserialize_with = "sessions")]
    pub max_sessions_per_address: Option<u32>,
    /// `connect_rate`: new connections per source address; the excess is
    /// closed at accept.
    #[serde(deserialize_with = "connect_rate")]
    pub connect_rate: Option<ConnectRate>,
    /// `connect_burst`: connections a source address may open at once
    /// before `connect_rate` applies (default: the rate's N). Only with
    /// `connect_rate`.
    #[serde(deserialize_with = "burst")]
    pub connect_burst: Option<Spanned<u32>>,
}

impl Default for PolicyClass {
    fn default() -> Self {
        Self {
            name: None,
            matches: None,
            match_identity: None,
            subscribe_vnis: None,
            announce_vnis: None,
            next_hop: None,
            route_types: None,
            destinations: None,
            max_routes: None,
            max_routes_action: MaxRoutesAction::Refuse,
            max_routes_warn: crate::DEFAULT_MAX_ROUTES_WARN_PERCENT,
            max_routes_per_vni: None,
            max_sessions_per_address: None,
            connect_rate: None,
            connect_burst: None,
        }
    }
}

impl PolicyClass {
    /// The class's name (`"default"` when unnamed).
    pub fn name(&self) -> &str {
        self.name.as_ref().map_or("default", |n| n.get_ref())
    }

    /// The class's `match` prefixes (none for the default class).
    pub fn match_prefixes(&self) -> impl Iterator<Item = Cidr> + '_ {
        self.matches
            .iter()
            .flat_map(|m| m.get_ref().iter().map(|c| c.get_ref().0))
    }

    /// The bucket size of `connect_rate`: `connect_burst`, else the rate's N.
    pub fn connect_burst(&self) -> Option<u32> {
        let rate = self.connect_rate?;
        Some(
            self.connect_burst
                .as_ref()
                .map_or(rate.count, |b| *b.get_ref()),
        )
    }

    /// `connect_burst` without `connect_rate`: (offset, message).
    fn check_burst(&self, what: &str) -> Option<(usize, String)> {
        match (&self.connect_burst, self.connect_rate) {
            (Some(b), None) => Some((
                b.span().start,
                format!("{what}.connect_burst: give connect_rate too (the burst is the size of its token bucket)"),
            )),
            _ => None,
        }
    }
}

impl PolicyClass {
    /// The class's `match_identity` patterns, lower-cased (none when absent).
    pub fn identity_patterns(&self) -> impl Iterator<Item = &str> + '_ {
        self.match_identity
            .iter()
            .flat_map(|m| m.get_ref().iter().map(|p| p.get_ref().as_str()))
    }
}

/// A list of names with the position of the list and of each name.
pub type SpannedNames = Spanned<Vec<Spanned<String>>>;

fn identities<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SpannedNames>, D::Error> {
    let list = Spanned::<Vec<Spanned<String>>>::deserialize(d)?;
    let span = list.span();
    let mut out = Vec::new();
    for p in list.into_inner() {
        let at = p.span();
        let t = p.into_inner().to_ascii_lowercase();
        let name = t.strip_prefix("*.").unwrap_or(&t);
        let ok = !name.is_empty()
            && name.split('.').all(|l| {
                !l.is_empty()
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !ok {
            return Err(de::Error::custom(format!(
                "{t:?} is not an identity pattern (a DNS name such as \"hv-17.example.net\", or \"*.hv.example.net\" for one label in front)"
            )));
        }
        out.push(Spanned::new(at, t));
    }
    Ok(Some(Spanned::new(span, out)))
}

/// A prefix of `match`, written as a string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CidrValue(pub Cidr);

impl<'de> Deserialize<'de> for CidrValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::parse::string_with(d, "a prefix string such as \"10.0.0.0/8\"", |s| {
            s.parse().map(CidrValue)
        })
    }
}

/// `[policy]`: the classes in file order and the default class.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicySection {
    /// `[[policy.class]]`: the classes, first match wins.
    pub class: Vec<PolicyClass>,
    /// `[policy.default]`: peers no class matches; absent: anything allowed.
    #[serde(deserialize_with = "crate::parse::opt_section")]
    pub default: Option<PolicyClass>,
}

impl PolicySection {
    /// Checks across keys: every class has a name (unique, not "default")
    /// and a non-empty `match`; `[policy.default]` has no `match`; no
    /// `match` prefix lies inside an earlier one (it could never select its
    /// class). Returns (byte offset, message) pairs; `header` is the offset
    /// to report a problem of a class without a position of its own.
    pub(crate) fn check(&self, header: usize) -> Vec<(usize, String)> {
        let mut errors = Vec::new();
        let mut names: Vec<&str> = Vec::new();
        let mut earlier: Vec<(Cidr, &str)> = Vec::new();
        for (i, class) in self.class.iter().enumerate() {
            let at = class
                .name
                .as_ref()
                .map(|n| n.span().start)
                .or_else(|| class.matches.as_ref().map(|m| m.span().start))
                .unwrap_or(header);
            match &class.name {
                None => errors.push((
                    at,
                    format!("policy.class[{i}]: give the class a name (name = \"hypervisors\")"),
                )),
                Some(n) if n.get_ref() == "default" => errors.push((
                    n.span().start,
                    format!("policy.class[{i}].name: \"default\" is the name of [policy.default]"),
                )),
                Some(n) if names.contains(&n.get_ref().as_str()) => errors.push((
                    n.span().start,
                    format!(
                        "policy.class[{i}].name: a class named {:?} comes earlier",
                        n.get_ref()
                    ),
                )),
                Some(n) => names.push(n.get_ref()),
            }
            if let Some(ids) = &class.match_identity {
                if ids.get_ref().is_empty() {
                    errors.push((
                        ids.span().start,
                        format!("policy.class[{i}].match_identity: the list is empty: the class would match nobody"),
                    ));
                }
            }
            let Some(matches) = &class.matches else {
                if class.match_identity.is_none() {
                    errors.push((at, format!("policy.class[{i}]: give the peer addresses it matches (match = [\"10.0.0.0/8\"]) or the certificate identities (match_identity = [\"*.hv.example.net\"])")));
                }
                continue;
            };
            if matches.get_ref().is_empty() {
                errors.push((
                    matches.span().start,
                    format!(
                        "policy.class[{i}].match: the list is empty: the class would match nobody"
                    ),
                ));
            }
            for (j, m) in matches.get_ref().iter().enumerate() {
                let cidr = m.get_ref().0;
                if let Some((by, owner)) = earlier.iter().find(|(e, _)| e.covers(&cidr)) {
                    errors.push((
                        m.span().start,
                        format!(
                            "policy.class[{i}].match[{j}]: {cidr} lies inside {by} of class {owner:?} earlier in the file, so it never selects class {:?} (first match wins: put the narrower class first)",
                            class.name()
                        ),
                    ));
                }
                // A class that also needs an identity does not take every
                // peer of its prefixes: later classes may still match them.
                if class.match_identity.is_none() {
                    earlier.push((cidr, class.name()));
                }
            }
            errors.extend(class.check_burst(&format!("policy.class[{i}]")));
        }
        if let Some(default) = &self.default {
            errors.extend(default.check_burst("policy.default"));
            if let Some(m) = &default.match_identity {
                errors.push((
                    m.span().start,
                    "policy.default.match_identity: the default class takes every peer no class matches; it has no match_identity".to_string(),
                ));
            }
            if let Some(m) = &default.matches {
                errors.push((
                    m.span().start,
                    "policy.default.match: the default class takes every peer no class matches; it has no match".to_string(),
                ));
            }
            if let Some(n) = &default.name {
                if n.get_ref() != "default" {
                    errors.push((
                        n.span().start,
                        "policy.default.name: the default class is named \"default\"".to_string(),
                    ));
                }
            }
        }
        errors
    }
}
