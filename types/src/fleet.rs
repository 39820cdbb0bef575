//! The fleet comparison (ADR 0030): which VNIs the route servers of a fleet
//! disagree on, from each member's per-VNI digests (ADR 0029) alone.
//!
//! Pure and std only, so the daemon (`FleetService.GetFleet`, metrics) and
//! `mbctl fleet --server ...` (which asks each server for its own digests
//! and compares locally) compute the same answer.
//!
//! Two members agree on a VNI when their `(routes, digest)` pairs are equal.
//! A VNI a member does not list counts as `(0, 0)`, the digest of a VNI
//! without routes: a server that has never heard of a VNI and one whose
//! routes of that VNI were all withdrawn agree, while a server holding
//! routes of a VNI the other lacks disagrees with it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// One VNI's digest on one member: its distinct routes and the wrapping sum
/// of their route hashes (ADR 0029).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VniDigest {
    /// Distinct routes of the VNI.
    pub routes: u64,
    /// Order-independent hash of those routes.
    pub digest: u64,
}

impl VniDigest {
    /// The digest of a VNI without routes, and of a VNI a member lacks.
    pub const EMPTY: VniDigest = VniDigest {
        routes: 0,
        digest: 0,
    };
}

/// One member's digests, by VNI.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberDigests {
    /// The member's name (unique in the fleet).
    pub name: String,
    /// Its digest per VNI; a VNI not listed is [`VniDigest::EMPTY`].
    pub vnis: BTreeMap<u32, VniDigest>,
}

impl MemberDigests {
    /// The member's digest of `vni` ([`VniDigest::EMPTY`] if it lacks it).
    pub fn digest(&self, vni: u32) -> VniDigest {
        self.vnis.get(&vni).copied().unwrap_or(VniDigest::EMPTY)
    }
}

/// A VNI the members disagree on, with every member's value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disagreement {
    /// The VNI.
    pub vni: u32,
    /// Every member's name and digest of this VNI, in the members' order
    /// (a member lacking the VNI shows [`VniDigest::EMPTY`]).
    pub members: Vec<(String, VniDigest)>,
}

/// The VNIs where `members` do not all have the same digest, sorted by VNI.
/// Fewer than two members never disagree.
pub fn disagreeing_vnis(members: &[MemberDigests]) -> Vec<Disagreement> {
    if members.len() < 2 {
        return Vec::new();
    }
    let every_vni: BTreeSet<u32> = members
        .iter()
        .flat_map(|m| m.vnis.keys().copied())
        .collect();
    every_vni
        .into_iter()
        .filter_map(|vni| {
            let first = members[0].digest(vni);
            if members.iter().all(|m| m.digest(vni) == first) {
                return None;
            }
            Some(Disagreement {
                vni,
                members: members
                    .iter()
                    .map(|m| (m.name.clone(), m.digest(vni)))
                    .collect(),
            })
        })
        .collect()
}

/// How long a VNI must have been disagreeing before the disagreement counts
/// as settled, in milliseconds. Members refresh their records every 2 s
/// (etcd registration), so a route change shows as a disagreement for up to
/// one refresh round although the servers converge in milliseconds; 5 s is
/// more than two rounds, so a disagreement that old is not one of those.
pub const SETTLE_AFTER_MS: u64 = 5_000;

/// Whether a disagreement `disagreeing_for_ms` old is settled
/// ([`SETTLE_AFTER_MS`]).
pub fn is_settled(disagreeing_for_ms: u64) -> bool {
    disagreeing_for_ms >= SETTLE_AFTER_MS
}

/// Remembers since when each VNI has been disagreeing, across the
/// comparisons of one server. Time is passed in (milliseconds on any
/// monotonic clock), so the logic is tested without waiting.
#[derive(Clone, Debug, Default)]
pub struct DisagreementClock {
    /// VNI -> the time of the first comparison that found it disagreeing
    /// (without an agreeing comparison since).
    first_seen_ms: HashMap<u32, u64>,
}

impl DisagreementClock {
    /// Records a comparison made at `now_ms` that found `disagreeing`
    /// VNIs; returns how long each of them has been disagreeing, in the
    /// same order. A VNI not in `disagreeing` agrees again and is
    /// forgotten: its next disagreement starts at 0.
    pub fn observe(&mut self, now_ms: u64, disagreeing: &[u32]) -> Vec<u64> {
        let now: BTreeSet<u32> = disagreeing.iter().copied().collect();
        self.first_seen_ms.retain(|vni, _| now.contains(vni));
        disagreeing
            .iter()
            .map(|vni| {
                let since = *self.first_seen_ms.entry(*vni).or_insert(now_ms);
                now_ms.saturating_sub(since)
            })
            .collect()
    }

    /// VNIs currently remembered as disagreeing.
    pub fn len(&self) -> usize {
        self.first_seen_ms.len()
    }

    /// Whether no VNI is remembered as disagreeing.
    pub fn is_empty(&self) -> bool {
        self.first_seen_ms.is_empty()
    }
}

/// A digest as the API shows it: 16 lower-case hex digits.
pub fn digest_hex(digest: u64) -> String {
    format!("{digest:016x}")
}

/// Parses a digest as the API shows it ([`digest_hex`]); `None` unless it
/// is 1 to 16 hex digits.
pub fn parse_digest_hex(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 16 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(text, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, vnis: &[(u32, u64, u64)]) -> MemberDigests {
        MemberDigests {
            name: name.into(),
            vnis: vnis
                .iter()
                .map(|&(v, routes, digest)| (v, VniDigest { routes, digest }))
                .collect(),
        }
    }

    fn d(routes: u64, digest: u64) -> VniDigest {
        VniDigest { routes, digest }
    }

    #[test]
    fn equal_members_agree() {
        let a = member("a", &[(1, 2, 0xAB), (7, 1, 0x11)]);
        let b = member("b", &[(7, 1, 0x11), (1, 2, 0xAB)]);
        assert!(disagreeing_vnis(&[a, b]).is_empty());
    }

    #[test]
    fn fewer_than_two_members_never_disagree() {
        assert!(disagreeing_vnis(&[]).is_empty());
        assert!(disagreeing_vnis(&[member("a", &[(1, 1, 1)])]).is_empty());
    }

    #[test]
    fn a_different_digest_or_count_disagrees_and_names_every_member() {
        let a = member("a", &[(1, 2, 0xAB), (2, 1, 5)]);
        let b = member("b", &[(1, 2, 0xAC), (2, 1, 5)]);
        let c = member("c", &[(1, 2, 0xAB), (2, 2, 5)]);
        assert_eq!(
            disagreeing_vnis(&[a, b, c]),
            vec![
                Disagreement {
                    vni: 1,
                    members: vec![
                        ("a".into(), d(2, 0xAB)),
                        ("b".into(), d(2, 0xAC)),
                        ("c".into(), d(2, 0xAB)),
                    ],
                },
                Disagreement {
                    vni: 2,
                    members: vec![
                        ("a".into(), d(1, 5)),
                        ("b".into(), d(1, 5)),
                        ("c".into(), d(2, 5)),
                    ],
                },
            ]
        );
    }

    #[test]
    fn a_missing_vni_counts_as_empty() {
        // Absent on b and empty on a: agree.
        let a = member("a", &[(3, 0, 0), (9, 1, 0x99)]);
        let b = member("b", &[]);
        let got = disagreeing_vnis(&[a, b]);
        assert_eq!(
            got,
            vec![Disagreement {
                vni: 9,
                members: vec![("a".into(), d(1, 0x99)), ("b".into(), VniDigest::EMPTY)],
            }]
        );
    }

    #[test]
    fn results_are_sorted_by_vni() {
        let a = member("a", &[(30, 1, 1), (10, 1, 1), (20, 1, 1)]);
        let b = member("b", &[]);
        let vnis: Vec<u32> = disagreeing_vnis(&[b, a]).iter().map(|x| x.vni).collect();
        assert_eq!(vnis, vec![10, 20, 30]);
    }

    #[test]
    fn a_disagreement_ages_from_its_first_sighting_and_settles() {
        let mut clock = DisagreementClock::default();
        assert_eq!(clock.observe(1_000, &[7]), vec![0]);
        assert_eq!(clock.observe(3_000, &[7, 9]), vec![2_000, 0]);
        let ages = clock.observe(6_000, &[7, 9]);
        assert_eq!(ages, vec![5_000, 3_000]);
        assert!(is_settled(ages[0]) && !is_settled(ages[1]));
        assert!(!is_settled(SETTLE_AFTER_MS - 1));
    }

    #[test]
    fn an_agreeing_vni_is_forgotten_and_starts_again_at_zero() {
        let mut clock = DisagreementClock::default();
        clock.observe(0, &[7, 9]);
        assert_eq!(clock.observe(10_000, &[9]), vec![10_000]);
        assert_eq!(clock.len(), 1);
        assert_eq!(clock.observe(11_000, &[7, 9]), vec![0, 11_000]);
        assert!(clock.observe(12_000, &[]).is_empty());
        assert!(clock.is_empty());
        // A clock going backwards never yields a huge age.
        clock.observe(5_000, &[1]);
        assert_eq!(clock.observe(4_000, &[1]), vec![0]);
    }

    #[test]
    fn hex_round_trips_and_rejects_garbage() {
        assert_eq!(digest_hex(0xAB), "00000000000000ab");
        for v in [0, 1, 0xAB, u64::MAX, 0x45827419d0ef347b] {
            assert_eq!(parse_digest_hex(&digest_hex(v)), Some(v));
        }
        for bad in ["", "x", "-1", "+1", "00000000000000000", " 1"] {
            assert_eq!(parse_digest_hex(bad), None, "{bad:?}");
        }
    }
}
