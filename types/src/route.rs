//! Value types of the MetalBond v1 data model (PROTOCOL.md section 2).
//!
//! Small functions here carry `#[inline]`: these are the hot-path keys of
//! the daemon's table and codec, and they live in another crate than their
//! callers.
//!
//! These are compact, `Copy`, fixed-size keys: a route is (VNI, destination,
//! next hop) and every part of it is compared exactly as it was sent (the
//! destination address is never masked).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A virtual network identifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Vni(pub u32);

impl fmt::Display for Vni {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An IPv4 or IPv6 address as raw bytes (4 or 16 of them), as carried on the
/// wire. IPv4 addresses use the first four bytes; the rest stay zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address {
    len: u8,
    bytes: [u8; 16],
}

impl Address {
    /// Builds an address from 4 or 16 raw bytes; any other length is `None`.
    #[inline]
    pub fn from_slice(raw: &[u8]) -> Option<Self> {
        match raw.len() {
            4 | 16 => {
                let mut bytes = [0u8; 16];
                bytes[..raw.len()].copy_from_slice(raw);
                Some(Self {
                    len: raw.len() as u8,
                    bytes,
                })
            }
            _ => None,
        }
    }

    /// The raw bytes as they go on the wire (4 or 16).
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    /// True for a 16-byte (IPv6) address.
    #[inline]
    pub fn is_ipv6(&self) -> bool {
        self.len == 16
    }

    /// Width in bits (32 or 128): the largest valid prefix length.
    #[inline]
    pub fn bit_width(&self) -> u8 {
        self.len * 8
    }

    /// The standard library form.
    #[inline]
    pub fn to_ip(&self) -> IpAddr {
        if self.is_ipv6() {
            IpAddr::V6(Ipv6Addr::from(self.bytes))
        } else {
            let [a, b, c, d, ..] = self.bytes;
            IpAddr::V4(Ipv4Addr::new(a, b, c, d))
        }
    }
}

impl From<IpAddr> for Address {
    #[inline]
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::from(v4),
            IpAddr::V6(v6) => Self::from(v6),
        }
    }
}

impl From<Ipv4Addr> for Address {
    #[inline]
    fn from(ip: Ipv4Addr) -> Self {
        let mut bytes = [0u8; 16];
        bytes[..4].copy_from_slice(&ip.octets());
        Self { len: 4, bytes }
    }
}

impl From<Ipv6Addr> for Address {
    #[inline]
    fn from(ip: Ipv6Addr) -> Self {
        Self {
            len: 16,
            bytes: ip.octets(),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.to_ip().fmt(f)
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.to_ip().fmt(f)
    }
}

/// A route destination: address (not masked) and prefix length. The IP
/// version is implied by the address length.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Destination {
    /// Network address, exactly as sent.
    pub addr: Address,
    /// Prefix length, at most the address width.
    pub prefix_len: u8,
}

impl Destination {
    /// Builds a destination, checking the prefix length against the address width.
    #[inline]
    pub fn new(addr: Address, prefix_len: u8) -> Option<Self> {
        (prefix_len <= addr.bit_width()).then_some(Self { addr, prefix_len })
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl fmt::Debug for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Next-hop type. Kept as the raw protobuf enum value so that unknown types
/// are stored and forwarded unchanged (PROTOCOL.md section 2).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct NextHopType(pub i32);

impl NextHopType {
    /// Plain tunnel next hop.
    pub const STANDARD: Self = Self(0);
    /// NAT next hop, with a port range.
    pub const NAT: Self = Self(1);
    /// Load-balancer target.
    pub const LOADBALANCER_TARGET: Self = Self(2);

    /// Short lower-case name (`std`, `nat`, `lb`), or the number for unknown types.
    pub fn name(&self) -> String {
        match *self {
            Self::STANDARD => "std".into(),
            Self::NAT => "nat".into(),
            Self::LOADBALANCER_TARGET => "lb".into(),
            Self(other) => other.to_string(),
        }
    }
}

impl fmt::Display for NextHopType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl fmt::Debug for NextHopType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// A next hop: (address, target VNI, type, NAT port range). Two NAT hops that
/// differ only in port range are two different next hops.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NextHop {
    /// Underlay address of the hypervisor (normally IPv6).
    pub addr: Address,
    /// Target VNI (0 when unset).
    pub target_vni: u32,
    /// Next-hop type.
    pub kind: NextHopType,
    /// First NAT port (0 unless NAT).
    pub nat_from: u16,
    /// Last NAT port (0 unless NAT).
    pub nat_to: u16,
}

impl NextHop {
    /// A STANDARD next hop with no target VNI.
    #[inline]
    pub fn standard(addr: Address) -> Self {
        Self {
            addr,
            target_vni: 0,
            kind: NextHopType::STANDARD,
            nat_from: 0,
            nat_to: 0,
        }
    }
}

impl fmt::Display for NextHop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.addr)?;
        if self.kind != NextHopType::STANDARD {
            write!(f, "#{}", self.kind)?;
        }
        if self.kind == NextHopType::NAT || self.nat_from != 0 || self.nat_to != 0 {
            write!(f, "#{}#{}", self.nat_from, self.nat_to)?;
        }
        if self.target_vni != 0 {
            write!(f, " (target vni {})", self.target_vni)?;
        }
        Ok(())
    }
}

impl fmt::Debug for NextHop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A route: (VNI, destination, next hop).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Route {
    /// Virtual network.
    pub vni: Vni,
    /// Destination prefix inside the virtual network.
    pub dest: Destination,
    /// Where to send traffic for it.
    pub next_hop: NextHop,
}

impl fmt::Display for Route {
    /// The announcement text form of PROTOCOL.md section 7: `VNI#PREFIX@NEXTHOP[#TYPE[#FROM#TO]]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}@{}", self.vni, self.dest, self.next_hop)
    }
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// What an UPDATE does to a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Announce (protobuf value 0).
    Add,
    /// Withdraw (protobuf value 1).
    Remove,
}
