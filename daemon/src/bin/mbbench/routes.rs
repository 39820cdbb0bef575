//! The benchmark's route set: route `i` is derived from its index, and an
//! index is recovered from a received route without any lookup table.

use bytes::BytesMut;
use metalbondd::wire::{encode_update, Action, Address, Destination, NextHop, Route, Vni};
use std::net::{Ipv4Addr, Ipv6Addr};

/// First IPv4 destination: route `i` is `10.0.0.0 + i` / 32.
const V4_BASE: u32 = 0x0A00_0000;
/// Largest route count that still fits in 10.0.0.0/8.
pub const V4_LIMIT: u64 = 1 << 24;
/// Upper 64 bits of the IPv6 destinations used beyond [`V4_LIMIT`] routes:
/// route `i` is `fd00:bench::` + i / 128.
const V6_PREFIX: [u8; 8] = [0xfd, 0x00, 0xbe, 0x9c, 0, 0, 0, 0];

/// N distinct routes in one VNI, all with next hop `2001:db8::1` STANDARD.
#[derive(Clone, Copy, Debug)]
pub struct RouteSet {
    /// Number of routes tracked (indexes `0..n`).
    pub n: u64,
    /// VNI of every route.
    pub vni: Vni,
    v6: bool,
    hop: NextHop,
}

impl RouteSet {
    /// Routes `0..n` in `vni`: IPv4 /32 below 2^24 routes (one more index,
    /// n, is used by the latency probe), IPv6 /128 beyond or if `ipv6`.
    pub fn new(n: u64, vni: u32, ipv6: bool) -> Self {
        Self {
            n,
            vni: Vni(vni),
            v6: ipv6 || n >= V4_LIMIT,
            hop: NextHop::standard(Address::from(Ipv6Addr::new(
                0x2001, 0xdb8, 0, 0, 0, 0, 0, 1,
            ))),
        }
    }

    /// Route number `i` (any `i`, also outside `0..n`).
    #[inline]
    pub fn route(&self, i: u64) -> Route {
        let dest = if self.v6 {
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&V6_PREFIX);
            b[8..].copy_from_slice(&i.to_be_bytes());
            Destination {
                addr: Address::from(Ipv6Addr::from(b)),
                prefix_len: 128,
            }
        } else {
            Destination {
                addr: Address::from(Ipv4Addr::from(V4_BASE.wrapping_add(i as u32))),
                prefix_len: 32,
            }
        };
        Route {
            vni: self.vni,
            dest,
            next_hop: self.hop,
        }
    }

    /// The index of a received route, or `None` if it is not one of ours
    /// (other VNI, other next hop, other address family or prefix).
    #[inline]
    pub fn index(&self, r: &Route) -> Option<u64> {
        if r.vni != self.vni || r.next_hop != self.hop {
            return None;
        }
        let b = r.dest.addr.as_bytes();
        if self.v6 {
            if r.dest.prefix_len != 128 || b.len() != 16 || b[..8] != V6_PREFIX {
                return None;
            }
            Some(u64::from_be_bytes(b[8..].try_into().ok()?))
        } else {
            if r.dest.prefix_len != 32 || b.len() != 4 {
                return None;
            }
            let a = u32::from_be_bytes(b.try_into().ok()?);
            Some(u64::from(a.wrapping_sub(V4_BASE)))
        }
    }
}

/// Recognises the canonical encoding of our own UPDATE frames with a byte
/// comparison, several times cheaper than a full protobuf decode. Anything
/// else (another encoding, a foreign route) falls back to `decode_frame`.
pub struct FastPath {
    /// (template frame of route 0, byte range carrying the route index) per action.
    templates: [(Vec<u8>, std::ops::Range<usize>, Action); 2],
    n: u64,
}

impl FastPath {
    /// Templates for the routes of `set`.
    pub fn new(set: &RouteSet) -> Self {
        let frame = |action, i| {
            let mut b = BytesMut::new();
            encode_update(action, &set.route(i), &mut b);
            b.to_vec()
        };
        // Route 0 and the route with every index bit of the address set differ
        // exactly in the bytes that carry the index.
        let all_bits = if set.v6 { u64::MAX } else { V4_LIMIT - 1 };
        let template = |action| {
            let (a, b) = (frame(action, 0), frame(action, all_bits));
            assert_eq!(a.len(), b.len(), "route encodings differ in length");
            let first = a.iter().zip(&b).position(|(x, y)| x != y).unwrap_or(0);
            let last = a.iter().zip(&b).rposition(|(x, y)| x != y).unwrap_or(0);
            (a, first..last + 1, action)
        };
        Self {
            templates: [template(Action::Add), template(Action::Remove)],
            n: set.n,
        }
    }

    /// If `buf` starts with a whole UPDATE frame of one of our routes in the
    /// canonical encoding: (frame length, action, route index).
    #[inline]
    pub fn match_frame(&self, buf: &[u8]) -> Option<(usize, Action, u64)> {
        for (template, w, action) in &self.templates {
            let len = template.len();
            if buf.len() >= len
                && buf[..w.start] == template[..w.start]
                && buf[w.end..len] == template[w.end..]
            {
                let index = buf[w.clone()]
                    .iter()
                    .fold(0u64, |acc, &b| acc << 8 | u64::from(b));
                return (index < self.n).then_some((len, *action, index));
            }
        }
        None
    }
}

/// A fixed-size bit set, one bit per route index.
pub struct Bitset {
    words: Vec<u64>,
}

impl Bitset {
    /// `n` cleared bits.
    pub fn new(n: u64) -> Self {
        Self {
            words: vec![0; n.div_ceil(64) as usize],
        }
    }

    /// Sets bit `i` and returns whether it was already set.
    #[inline]
    pub fn test_and_set(&mut self, i: u64) -> bool {
        let w = &mut self.words[(i >> 6) as usize];
        let m = 1u64 << (i & 63);
        let was = *w & m != 0;
        *w |= m;
        was
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_round_trips() {
        for set in [
            RouteSet::new(1000, 7, false),
            RouteSet::new(V4_LIMIT + 5, 7, false),
        ] {
            for i in [0, 1, 999, 65_537] {
                assert_eq!(set.index(&set.route(i)), Some(i));
            }
            let mut other = set.route(3);
            other.vni = Vni(8);
            assert_eq!(set.index(&other), None);
        }
    }

    #[test]
    fn fast_path_agrees_with_the_decoder() {
        for set in [
            RouteSet::new(1000, 7, false),
            RouteSet::new(1000, 9, true),
            RouteSet::new(V4_LIMIT + 5, 123_456, false),
        ] {
            let fast = FastPath::new(&set);
            for i in [0, 1, 255, 256, 999] {
                for action in [Action::Add, Action::Remove] {
                    let mut b = BytesMut::new();
                    encode_update(action, &set.route(i), &mut b);
                    assert_eq!(fast.match_frame(&b), Some((b.len(), action, i)));
                    // A truncated frame or a frame of another route set never matches.
                    assert_eq!(fast.match_frame(&b[..b.len() - 1]), None);
                }
            }
            // Out of range index, other VNI.
            let mut b = BytesMut::new();
            encode_update(Action::Add, &set.route(set.n), &mut b);
            assert_eq!(fast.match_frame(&b), None);
            let mut other = set.route(3);
            other.vni = Vni(8);
            let mut b = BytesMut::new();
            encode_update(Action::Add, &other, &mut b);
            assert_eq!(fast.match_frame(&b), None);
        }
    }

    #[test]
    fn bitset_detects_duplicates() {
        let mut b = Bitset::new(130);
        assert!(!b.test_and_set(129));
        assert!(b.test_and_set(129));
        assert!(!b.test_and_set(0));
    }
}
