//! The per-VNI route digest (ADR 0029): an order-independent 64-bit hash of
//! the routes of a VNI that two servers holding the same routes agree on.
//!
//! The digest of a VNI is the wrapping sum of [`route_hash`] over its
//! distinct routes, so adding a route adds its hash and removing it subtracts
//! it, whatever the order. The hash uses fixed constants (never a random
//! hasher state) and only the route's wire fields, so it is the same on every
//! server, every run and every platform.

use crate::wire::{Address, Route};

/// Fixed keys, one per input word (hex digits of pi): never a random state,
/// so every server computes the same hash.
const KEYS: [u64; 8] = [
    0x243F_6A88_85A3_08D3,
    0x1319_8A2E_0370_7344,
    0xA409_3822_299F_31D0,
    0x082E_FA98_EC4E_6C89,
    0x4528_21E6_38D0_1377,
    0xBE54_66CF_34E9_0C6C,
    0xC0AC_29B7_C97C_50DD,
    0x3F84_D5B5_B547_0917,
];

/// The 64-bit hash of one route: its canonical encoding (fixed-width words,
/// below), keyed, folded pairwise by 64x64->128-bit multiplications (as
/// foldhash and wyhash do) and finished with the murmur3 finalizer.
/// No allocation, no data-dependent branch beyond the address family; the
/// four multiplications are independent, so it costs a few nanoseconds.
///
/// Canonical encoding, 7 words:
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
    let w0 = (u64::from(route.vni.0) << 32) | u64::from(hop.kind.0 as u32);
    let w1 =
        (u64::from(hop.target_vni) << 32) | (u64::from(hop.nat_from) << 16) | u64::from(hop.nat_to);
    let w2 = ((dest.addr.as_bytes().len() as u64) << 16)
        | (u64::from(dest.prefix_len) << 8)
        | hop.addr.as_bytes().len() as u64;
    // Rotations keep the lanes from cancelling each other when summed.
    let x = folded_multiply(w0 ^ KEYS[0], w1 ^ KEYS[1])
        .wrapping_add(folded_multiply(w2 ^ KEYS[2], d_hi ^ KEYS[3]).rotate_left(17))
        .wrapping_add(folded_multiply(d_lo ^ KEYS[4], h_hi ^ KEYS[5]).rotate_left(31))
        .wrapping_add(folded_multiply(h_lo ^ KEYS[6], KEYS[7]).rotate_left(47));
    fmix64(x)
}

/// The full 128-bit product of `a` and `b`, its halves xor-ed.
fn folded_multiply(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

/// The two 64-bit halves of an address padded to 16 bytes.
fn addr_words(addr: &Address) -> (u64, u64) {
    let mut b = [0u8; 16];
    let raw = addr.as_bytes();
    // Fixed-size copies: a copy of variable length would call memcpy
    // (it made the hash several times slower).
    if raw.len() == 4 {
        b[..4].copy_from_slice(&raw[..4]);
    } else {
        b.copy_from_slice(&raw[..16]);
    }
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
            "45827419d0ef347b"
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
