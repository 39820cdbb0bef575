//! The routes this agent announces to its route servers, by owner (ADR 0021).
//!
//! An *owner* is a name the announcing program picks (`[A-Za-z0-9._-]`, 1 to
//! [`MAX_OWNER_LEN`] characters). The routes of the command line and the
//! configuration file (`--announce`, `client.announce`) belong to the
//! reserved owner [`CONFIG_OWNER`], which the API cannot change; incremental
//! API calls without an owner use [`DEFAULT_OWNER`].
//!
//! A route is on the wire while at least one owner announces it: the set
//! sent to the servers is the union of the owners' sets, reference-counted
//! per route. An owner's change therefore sends an ADD only for a route no
//! other owner had, and a REMOVE only when the last owner lets it go.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::wire::Route;

/// The owner of the routes of the command line and the configuration file.
pub const CONFIG_OWNER: &str = "config";
/// The owner of incremental API calls that name none.
pub const DEFAULT_OWNER: &str = "api";
/// Longest owner name.
pub const MAX_OWNER_LEN: usize = 64;

/// Checks an owner name given through the API (empty: [`DEFAULT_OWNER`]).
/// The error reads after the field name: `owner: ...`.
pub fn check_owner(owner: &str) -> Result<&str, String> {
    if owner.is_empty() {
        return Ok(DEFAULT_OWNER);
    }
    if owner == CONFIG_OWNER {
        return Err(format!(
            "{CONFIG_OWNER:?} is reserved for the routes of --announce and the configuration file"
        ));
    }
    if owner.len() > MAX_OWNER_LEN {
        return Err(format!(
            "{} characters, at most {MAX_OWNER_LEN} are allowed",
            owner.len()
        ));
    }
    if let Some(c) = owner
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{owner:?} contains {c:?}: only letters, digits, '.', '_' and '-' are allowed"
        ));
    }
    Ok(owner)
}

/// What an owner's change does to that owner's set: computed before it is
/// stored ([`Announcements::delta`]), then applied
/// ([`Announcements::apply`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OwnerDelta {
    /// The owner.
    pub owner: String,
    /// Routes the owner starts announcing (sorted, no duplicates).
    pub add: Vec<Route>,
    /// Routes the owner stops announcing (sorted, no duplicates).
    pub remove: Vec<Route>,
    /// Routes of the request the owner had already (announce, exact set)
    /// or did not have (withdraw).
    pub unchanged: usize,
}

/// The announcements by owner and the reference-counted union sent to the
/// servers.
#[derive(Clone, Debug, Default)]
pub struct Announcements {
    owners: BTreeMap<String, BTreeSet<Route>>,
    refs: HashMap<Route, u32>,
}

impl Announcements {
    /// The routes of `owner` (empty if it has none).
    pub fn owned(&self, owner: &str) -> impl Iterator<Item = &Route> {
        self.owners.get(owner).into_iter().flatten()
    }

    /// Whether `owner` announces `route`.
    pub fn owns(&self, owner: &str, route: &Route) -> bool {
        self.owners.get(owner).is_some_and(|s| s.contains(route))
    }

    /// Every announced route with its owners, sorted by route.
    pub fn list(&self) -> Vec<(Route, Vec<String>)> {
        let mut by_route: BTreeMap<Route, Vec<String>> = BTreeMap::new();
        for (owner, routes) in &self.owners {
            for r in routes {
                by_route.entry(*r).or_default().push(owner.clone());
            }
        }
        by_route.into_iter().collect()
    }

    /// The difference `routes` makes to `owner`'s set: `exact` replaces the
    /// set, otherwise `withdraw` removes from it or (false) adds to it.
    pub fn delta(&self, owner: &str, routes: &[Route], how: DeltaKind) -> OwnerDelta {
        let empty = BTreeSet::new();
        let have = self.owners.get(owner).unwrap_or(&empty);
        let given: BTreeSet<Route> = routes.iter().copied().collect();
        let mut d = OwnerDelta {
            owner: owner.to_string(),
            ..OwnerDelta::default()
        };
        match how {
            DeltaKind::Announce => {
                d.add = given.difference(have).copied().collect();
                d.unchanged = given.len() - d.add.len();
            }
            DeltaKind::Withdraw => {
                d.remove = given.intersection(have).copied().collect();
                d.unchanged = given.len() - d.remove.len();
            }
            DeltaKind::Exact => {
                d.add = given.difference(have).copied().collect();
                d.remove = have.difference(&given).copied().collect();
                d.unchanged = given.len() - d.add.len();
            }
        }
        d
    }

    /// Applies `delta`; returns the routes that appear on the wire (no
    /// owner had them) and those that leave it (their last owner let go).
    pub fn apply(&mut self, delta: &OwnerDelta) -> (Vec<Route>, Vec<Route>) {
        let mut appear = Vec::new();
        let mut leave = Vec::new();
        let set = self.owners.entry(delta.owner.clone()).or_default();
        for r in &delta.remove {
            if !set.remove(r) {
                continue;
            }
            match self.refs.get_mut(r) {
                Some(n) if *n > 1 => *n -= 1,
                _ => {
                    self.refs.remove(r);
                    leave.push(*r);
                }
            }
        }
        for r in &delta.add {
            if !set.insert(*r) {
                continue;
            }
            let n = self.refs.entry(*r).or_insert(0);
            *n += 1;
            if *n == 1 {
                appear.push(*r);
            }
        }
        if set.is_empty() {
            self.owners.remove(&delta.owner);
        }
        (appear, leave)
    }
}

/// How a list of routes changes an owner's set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeltaKind {
    /// Add them.
    Announce,
    /// Remove them.
    Withdraw,
    /// The owner's set becomes exactly them.
    Exact,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Route {
        s.parse().unwrap()
    }

    #[test]
    fn owners_are_reference_counted_and_exact_sets_send_only_the_difference() {
        let mut a = Announcements::default();
        let (x, y, z) = (
            r("1#10.0.0.0/24@::1"),
            r("1#10.0.1.0/24@::1"),
            r("2#10.0.0.0/24@::2"),
        );
        let d = a.delta("a", &[x, y], DeltaKind::Exact);
        assert_eq!(a.apply(&d), (vec![x, y], vec![]));
        // A second owner of x: nothing on the wire.
        let d = a.delta("b", &[x, z], DeltaKind::Announce);
        assert_eq!((d.add.len(), d.unchanged), (2, 0));
        assert_eq!(a.apply(&d), (vec![z], vec![]));
        // Same exact set again: no difference at all.
        let d = a.delta("a", &[y, x], DeltaKind::Exact);
        assert!(d.add.is_empty() && d.remove.is_empty());
        assert_eq!(d.unchanged, 2);
        // a lets x go: b still has it.
        let d = a.delta("a", &[y], DeltaKind::Exact);
        assert_eq!(a.apply(&d), (vec![], vec![]));
        let d = a.delta("b", &[x, y], DeltaKind::Withdraw);
        assert_eq!((d.remove.clone(), d.unchanged), (vec![x], 1));
        assert_eq!(a.apply(&d), (vec![], vec![x]));
        assert_eq!(
            a.list(),
            vec![(y, vec!["a".to_string()]), (z, vec!["b".to_string()])]
        );
    }

    #[test]
    fn owner_names_are_checked() {
        assert_eq!(check_owner(""), Ok(DEFAULT_OWNER));
        assert_eq!(check_owner("vm-42.nic_0"), Ok("vm-42.nic_0"));
        assert!(check_owner("config").unwrap_err().contains("reserved"));
        assert!(check_owner("a b").unwrap_err().contains("' '"));
        assert!(check_owner(&"x".repeat(65))
            .unwrap_err()
            .contains("at most 64"));
    }
}
