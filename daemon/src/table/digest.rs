//! The per-VNI route digest (ADR 0029): an order-independent 64-bit hash of
//! the routes of a VNI that two servers holding the same routes agree on.
//!
//! The digest of a VNI is the wrapping sum of [`route_hash`] over its
//! distinct routes, so adding a route adds its hash and removing it subtracts
//! it, whatever the order. The hash uses fixed constants (never a random
//! hasher state) and only the route's wire fields, so it is the same on every
//! server, every run and every platform.

use crate::wire::{Address, Route};

/// Multiplier of the word mixer (2^64 / golden ratio, odd).
const K: u64 = 0x9E37_79B9_7F4A_7C15;
/// Start value, so that the all-zero route does not hash to a small number.
const SEED: u64 = 0x6D65_7461_6C62_6F6E; // "metalbon"

/// The 64-bit hash of one route: its canonical encoding (fixed-width words,
/// below) through a multiply-xorshift mixer and the murmur3 finalizer.
/// No allocation; a few multiplications per route.
///
/// Canonical encoding, 7 little-endian words:
/// 1. VNI (high 32 bits) | next-hop type as `u32` (low 32 bits);
/// 2. target VNI (high 32) | first NAT port (bits 16..32) | last NAT port;
/// 3. destination address length (bits 16..24) | prefix length (bits 8..16)
///    | next-hop address length (low 8 bits);
/// 4. and 5. the destination address, zero-padded to 16 bytes, big-endian;
/// 6. and 7. the next-hop address, likewise.
///
/// The lengths make an IPv4 address and the IPv6 address with the same
/// leading bytes distinct.
pub fn route_hash(route: &Route) -> u64 {
    let hop = &route.next_hop;
    let dest = &route.dest;
    let (d_hi, d_lo) = addr_words(&dest.addr);
    let (h_hi, h_lo) = addr_words(&hop.addr);
    let words = [
        (u64::from(route.vni.0) << 32) | u64::from(hop.kind.0 as u32),
        (u64::from(hop.target_vni) << 32) | (u64::from(hop.nat_from) << 16) | u64::from(hop.nat_to),
        ((dest.addr.as_bytes().len() as u64) << 16)
            | (u64::from(dest.prefix_len) << 8)
            | hop.addr.as_bytes().len() as u64,
        d_hi,
        d_lo,
        h_hi,
        h_lo,
    ];
    let mut h = SEED;
    for w in words {
        h = (h ^ w).wrapping_mul(K);
        h ^= h >> 29;
    }
    fmix64(h)
}

/// The two 64-bit halves of an address padded to 16 bytes.
fn addr_words(addr: &Address) -> (u64, u64) {
    let mut b = [0u8; 16];
    let raw = addr.as_bytes();
    b[..raw.len()].copy_from_slice(raw);
    let hi = u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    let lo = u64::from_be_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]);
    (hi, lo)
}

/// The murmur3 64-bit finalizer: every input bit affects every output bit.
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// The digest as the API shows it: 16 lower-case hex digits.
pub fn to_hex(digest: u64) -> String {
    format!("{digest:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Route {
        s.parse().unwrap()
    }

    #[test]
    fn hash_is_fixed_across_runs_and_platforms() {
        // A pinned value: a change here changes every digest of the fleet
        // (servers of different versions would disagree), so it must be deliberate.
        assert_eq!(
            to_hex(route_hash(&r("1#10.0.0.0/24@2001:db8::1"))),
            "0439e44a1bbe2480"
        );
    }

    #[test]
    fn every_field_of_the_route_changes_the_hash() {
        let base = route_hash(&r("1#10.0.0.0/24@2001:db8::1#nat#1#10"));
        for other in [
            "2#10.0.0.0/24@2001:db8::1#nat#1#10",
            "1#10.0.1.0/24@2001:db8::1#nat#1#10",
            "1#10.0.0.0/25@2001:db8::1#nat#1#10",
            "1#10.0.0.0/24@2001:db8::2#nat#1#10",
            "1#10.0.0.0/24@2001:db8::1#nat#2#10",
            "1#10.0.0.0/24@2001:db8::1#nat#1#11",
            "1#10.0.0.0/24@2001:db8::1#lb",
            "1#10.0.0.0/24@10.0.0.1#nat#1#10",
            "1#a00::/24@2001:db8::1#nat#1#10",
        ] {
            assert_ne!(route_hash(&r(other)), base, "{other}");
        }
    }

    #[test]
    fn hex_is_sixteen_lower_case_digits() {
        assert_eq!(to_hex(0xAB), "00000000000000ab");
        assert_eq!(to_hex(u64::MAX), "ffffffffffffffff");
    }
}
