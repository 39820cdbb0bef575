//! The operator's runtime changes to the client role (through the API),
//! kept in the state store so that they survive restarts.
//!
//! Namespaces of the store's key/value table, one record per key, the last
//! change made through the API, and the store's table of announcements:
//!
//! - [`SERVERS`]: key `HOST:PORT` (an IP address or a name), value `added`
//!   or `removed`;
//! - [`SUBSCRIPTIONS`]: key the VNI in decimal, value `subscribed` or
//!   `unsubscribed`;
//! - [`MAPPINGS`]: key the VNI in decimal, value the routing table in
//!   decimal (the VNI maps to exactly that table) or `removed`;
//! - the routes announced through the API, by owner (ADR 0021), in the
//!   store's `client_announcements` table (binary keys: owner and route;
//!   [`Store::write_owner_routes`]). Records of the first layout, key
//!   `OWNER<TAB>ROUTE` in namespace [`ANNOUNCEMENTS`], are moved there
//!   when first read. They are not merged with the configuration: the routes of
//!   `--announce` belong to the owner `config`, which the API cannot
//!   change, and an owner's routes are kept until that owner withdraws them.
//!
//! The merge rule at start ([`StoredClientState::apply`]): the flags and
//! the config file give the starting point, and **a stored API change wins
//! over them for the same key**. A server or subscription removed through
//! the API stays removed even if the flags still name it (the `removed` /
//! `unsubscribed` record is a tombstone), a mapping set through the API
//! replaces the configured tables of that VNI, and a mapping removed
//! through the API stays removed. To return a key to the configuration's
//! control, change it back through the API (or delete the state
//! directory). Records that cannot be read are logged and ignored.
//!
//! So that a flag never loses silently, [`StoredClientState::overrides`]
//! lists every setting given at start that a stored change replaces; the
//! agent logs a WARN for each and the API's GetStatus (`mbctl status`)
//! shows them.
//!
//! The agent ([`super::agent`]) is the only writer: it checks a change,
//! [`record`]s it, then applies it.

use std::collections::{BTreeMap, BTreeSet};

use tracing::{info, warn};

use super::planner::OwnerDelta;
use super::{ClientChange, ClientSettings, ServerAddr};
use crate::store::{Store, StoreError};
use crate::wire::{Route, Vni};

/// Store namespace of the servers added or removed through the API.
pub const SERVERS: &str = "client.servers";
/// Store namespace of the subscriptions changed through the API.
pub const SUBSCRIPTIONS: &str = "client.subscriptions";
/// Store namespace of the table mappings changed through the API.
pub const MAPPINGS: &str = "client.mappings";
/// Store namespace of the routes announced through the API, by owner.
pub const ANNOUNCEMENTS: &str = "client.announcements";

const ANNOUNCED: &str = "announced";

const ADDED: &str = "added";
const REMOVED: &str = "removed";
const SUBSCRIBED: &str = "subscribed";
const UNSUBSCRIBED: &str = "unsubscribed";

/// A setting given at start (flag or configuration file) that a change
/// stored through the API replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Override {
    /// The flag and the configuration key with the value given, e.g.
    /// `--install-routes 100#100 (client.install_routes)`.
    pub setting: String,
    /// What is in effect instead, e.g. `VNI 100 unmapped through the API`.
    pub replaced_by: String,
}

/// The operator's stored changes (see the module documentation).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredClientState {
    /// Server -> added (true) or removed (false).
    pub servers: BTreeMap<ServerAddr, bool>,
    /// VNI -> subscribed (true) or unsubscribed (false).
    pub subscriptions: BTreeMap<Vni, bool>,
    /// VNI -> its table, or `None` when the mapping was removed.
    pub mappings: BTreeMap<Vni, Option<u32>>,
    /// Owner -> the routes it announces through the API.
    pub announcements: BTreeMap<String, BTreeSet<Route>>,
}

impl StoredClientState {
    /// Reads the records from `store`; unreadable ones are logged and skipped.
    pub fn load(store: &Store) -> Result<StoredClientState, StoreError> {
        let mut out = StoredClientState::default();
        for (key, value) in store.list(SERVERS)? {
            match (key.parse::<ServerAddr>(), value.as_str()) {
                (Ok(addr), ADDED) => drop(out.servers.insert(addr, true)),
                (Ok(addr), REMOVED) => drop(out.servers.insert(addr, false)),
                _ => warn!(
                    key,
                    value, "ignoring an unreadable stored client server record"
                ),
            }
        }
        for (key, value) in store.list(SUBSCRIPTIONS)? {
            match (key.parse::<u32>(), value.as_str()) {
                (Ok(vni), SUBSCRIBED) => drop(out.subscriptions.insert(Vni(vni), true)),
                (Ok(vni), UNSUBSCRIBED) => drop(out.subscriptions.insert(Vni(vni), false)),
                _ => warn!(
                    key,
                    value, "ignoring an unreadable stored subscription record"
                ),
            }
        }
        for (key, value) in store.list(MAPPINGS)? {
            let table = match value.as_str() {
                REMOVED => Ok(None),
                v => v.parse::<u32>().map(Some),
            };
            match (key.parse::<u32>(), table) {
                (Ok(vni), Ok(t)) if t != Some(0) => drop(out.mappings.insert(Vni(vni), t)),
                _ => warn!(
                    key,
                    value, "ignoring an unreadable stored table mapping record"
                ),
            }
        }
        // Records of the first layout (text keys in `operator_state`) move
        // to the binary table once.
        let mut legacy_keys = Vec::new();
        let mut legacy = Vec::new();
        for (key, value) in store.list(ANNOUNCEMENTS)? {
            let parsed = key
                .split_once('\t')
                .filter(|_| value == ANNOUNCED)
                .and_then(|(owner, route)| Some((owner, route.parse::<Route>().ok()?)));
            match parsed {
                Some((owner, route)) => legacy.push((owner.to_string(), route)),
                None => warn!(
                    key,
                    value, "ignoring an unreadable stored announcement record"
                ),
            }
            legacy_keys.push(key);
        }
        if !legacy_keys.is_empty() {
            store.adopt_owner_routes(ANNOUNCEMENTS, &legacy_keys, &legacy)?;
            info!(
                routes = legacy.len(),
                "stored announcements moved to the binary table"
            );
        }
        for (owner, route) in store.owner_routes()? {
            out.announcements.entry(owner).or_default().insert(route);
        }
        Ok(out)
    }

    /// True if nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
            && self.subscriptions.is_empty()
            && self.mappings.is_empty()
            && self.announcements.is_empty()
    }

    /// The settings of `settings` (as given at start, before
    /// [`StoredClientState::apply`]) that the stored changes replace. A
    /// stored addition of something not configured replaces nothing.
    pub fn overrides(&self, settings: &ClientSettings) -> Vec<Override> {
        let mut out = Vec::new();
        for (addr, &added) in &self.servers {
            if !added && settings.servers.contains(addr) {
                out.push(Override {
                    setting: format!("--server {addr} (client.servers)"),
                    replaced_by: format!("server {addr} removed through the API"),
                });
            }
        }
        for (vni, &subscribed) in &self.subscriptions {
            if !subscribed && settings.subscriptions.contains(vni) {
                out.push(Override {
                    setting: format!("--subscribe {vni} (client.subscribe)"),
                    replaced_by: format!("VNI {vni} unsubscribed through the API"),
                });
            }
        }
        for (vni, table) in &self.mappings {
            let Some(configured) = settings.install_routes.get(vni) else {
                continue;
            };
            let replaced_by = match table {
                Some(t) if configured.len() == 1 && configured.contains(t) => continue,
                Some(t) => format!("VNI {vni} mapped to table {t} through the API"),
                None => format!("VNI {vni} unmapped through the API"),
            };
            let given: Vec<String> = configured.iter().map(|t| format!("{vni}#{t}")).collect();
            out.push(Override {
                setting: format!(
                    "--install-routes {} (client.install_routes)",
                    given.join(", ")
                ),
                replaced_by,
            });
        }
        out
    }

    /// Merges the stored changes into `settings` (stored wins; see the
    /// module documentation).
    pub fn apply(&self, settings: &mut ClientSettings) {
        for (addr, &added) in &self.servers {
            settings.servers.retain(|a| a != addr);
            if added {
                settings.servers.push(addr.clone());
            }
        }
        for (vni, &subscribed) in &self.subscriptions {
            settings.subscriptions.retain(|v| v != vni);
            if subscribed {
                settings.subscriptions.push(*vni);
            }
        }
        for (vni, table) in &self.mappings {
            match table {
                Some(t) => drop(settings.install_routes.insert(*vni, BTreeSet::from([*t]))),
                None => drop(settings.install_routes.remove(vni)),
            }
        }
    }
}

/// Records `change` durably: the one write of an operator change, made
/// after the agent checked it and before it applies it.
pub fn record(store: &Store, change: &ClientChange) -> Result<(), StoreError> {
    match change {
        ClientChange::AddServer(addr) => record_server(store, addr, true),
        ClientChange::RemoveServer(addr) => record_server(store, addr, false),
        ClientChange::Subscribe(vni) => record_subscription(store, *vni, true),
        ClientChange::Unsubscribe(vni) => record_subscription(store, *vni, false),
        ClientChange::SetMapping(vni, table) => record_mapping(store, *vni, Some(*table)),
        ClientChange::RemoveMapping(vni) => record_mapping(store, *vni, None),
        // Recorded as the difference they make: record_announcements.
        ClientChange::Announce { .. }
        | ClientChange::Withdraw { .. }
        | ClientChange::SetAnnouncements { .. } => Ok(()),
    }
}

/// Records an owner's announcement difference durably, in one transaction
/// (added routes stored, removed ones deleted).
pub fn record_announcements(store: &Store, delta: &OwnerDelta) -> Result<(), StoreError> {
    store.write_owner_routes(&delta.owner, &delta.add, &delta.remove)
}

/// Records that `addr` was added (true) or removed (false), durably.
pub fn record_server(store: &Store, addr: &ServerAddr, added: bool) -> Result<(), StoreError> {
    store.put(
        SERVERS,
        &addr.to_string(),
        if added { ADDED } else { REMOVED },
    )
}

/// Records that `vni` was subscribed (true) or unsubscribed (false), durably.
pub fn record_subscription(store: &Store, vni: Vni, subscribed: bool) -> Result<(), StoreError> {
    store.put(
        SUBSCRIPTIONS,
        &vni.0.to_string(),
        if subscribed { SUBSCRIBED } else { UNSUBSCRIBED },
    )
}

/// Records `vni`'s mapping (`None`: removed), durably.
pub fn record_mapping(store: &Store, vni: Vni, table: Option<u32>) -> Result<(), StoreError> {
    let value = table.map_or_else(|| REMOVED.to_string(), |t| t.to_string());
    store.put(MAPPINGS, &vni.0.to_string(), &value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_changes_win_over_the_configuration() {
        let a: ServerAddr = "[::1]:1".parse().unwrap();
        let b: ServerAddr = "[::1]:2".parse().unwrap();
        let c: ServerAddr = "metalbond.example:3".parse().unwrap();
        let mut settings = ClientSettings {
            servers: vec![a.clone(), b.clone()],
            subscriptions: vec![Vni(1), Vni(2)],
            announcements: vec![],
            install_routes: BTreeMap::from([
                (Vni(1), BTreeSet::from([10, 11])),
                (Vni(2), BTreeSet::from([20])),
            ]),
            tun: None,
            ipv4_only: false,
            connection: Default::default(),
            hold_time: Default::default(),
            stale_time: Default::default(),
            cleanup: false,
            flush_at_start: false,
        };
        let stored = StoredClientState {
            servers: BTreeMap::from([(a, false), (c.clone(), true)]),
            subscriptions: BTreeMap::from([(Vni(2), false), (Vni(3), true)]),
            mappings: BTreeMap::from([(Vni(1), Some(12)), (Vni(2), None), (Vni(3), Some(30))]),
            announcements: BTreeMap::new(),
        };
        let overrides = stored.overrides(&settings);
        let texts: Vec<(&str, &str)> = overrides
            .iter()
            .map(|o| (o.setting.as_str(), o.replaced_by.as_str()))
            .collect();
        assert_eq!(
            texts,
            vec![
                (
                    "--server [::1]:1 (client.servers)",
                    "server [::1]:1 removed through the API"
                ),
                (
                    "--subscribe 2 (client.subscribe)",
                    "VNI 2 unsubscribed through the API"
                ),
                (
                    "--install-routes 1#10, 1#11 (client.install_routes)",
                    "VNI 1 mapped to table 12 through the API"
                ),
                (
                    "--install-routes 2#20 (client.install_routes)",
                    "VNI 2 unmapped through the API"
                ),
            ]
        );
        stored.apply(&mut settings);
        assert_eq!(settings.servers, vec![b, c]);
        assert_eq!(settings.subscriptions, vec![Vni(1), Vni(3)]);
        assert_eq!(
            settings.install_routes,
            BTreeMap::from([
                (Vni(1), BTreeSet::from([12])),
                (Vni(3), BTreeSet::from([30])),
            ])
        );
    }

    #[test]
    fn announcements_round_trip_and_records_of_the_first_layout_move_once() {
        let dir = std::env::temp_dir().join(format!(
            "mbd-operator-announce-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let r1: Route = "100#10.0.1.0/24@2001:db8::1".parse().unwrap();
        let r2: Route = "100#10.0.2.0/24@2001:db8::2#nat#1#2".parse().unwrap();
        let r3: Route = "7#2001:db8:7::/64@2001:db8::7#lb".parse().unwrap();
        {
            let store = Store::open(&dir).unwrap();
            // An earlier build's record, and an unreadable one.
            store
                .write_batch(
                    ANNOUNCEMENTS,
                    &[
                        (format!("old\t{r3}"), ANNOUNCED.to_string()),
                        ("garbage".to_string(), ANNOUNCED.to_string()),
                    ],
                    &[],
                )
                .unwrap();
            let delta = |add: Vec<Route>, remove: Vec<Route>| OwnerDelta {
                owner: "vm-agent".into(),
                add,
                remove,
                unchanged: 0,
            };
            record_announcements(&store, &delta(vec![r1, r2], vec![])).unwrap();
            record_announcements(&store, &delta(vec![], vec![r1])).unwrap();
            let loaded = StoredClientState::load(&store).unwrap();
            assert_eq!(
                loaded.announcements,
                BTreeMap::from([
                    ("old".to_string(), BTreeSet::from([r3])),
                    ("vm-agent".to_string(), BTreeSet::from([r2])),
                ])
            );
            // Moved: the first layout's namespace is empty now.
            assert_eq!(store.list(ANNOUNCEMENTS).unwrap(), vec![]);
        }
        // After a restart, from the binary table alone.
        let store = Store::open(&dir).unwrap();
        let loaded = StoredClientState::load(&store).unwrap();
        assert_eq!(loaded.announcements.len(), 2);
        assert_eq!(
            store.owner_routes().unwrap(),
            vec![("old".to_string(), r3), ("vm-agent".to_string(), r2)]
        );
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
