//! What a configuration reload changes in the client role (ADR 0023),
//! pure: the old and the new client settings in, the difference out.
//!
//! A reload applies **the configuration's own difference** (the settings
//! resolved from the file and flags before the reload against those after
//! it), never a comparison with what runs: changes made through the API
//! (stored by [`super::operator`]) are not part of the file, so a key the
//! API changed stays as the API left it ([`ClientDiff::without_api_keys`]
//! drops it from the difference), and nothing a reload does is stored as
//! an API record. The routes of the file are the reserved owner
//! [`CONFIG_OWNER`]'s, whose new exact set the agent applies like an
//! owner's `SetAnnouncements` (only the difference reaches the wire).
//!
//! Settings used only when the role starts (tunnel device, keepalive,
//! reconnect back-off, hold and stale time, IPv4 only, cleanup, flush at
//! start) are listed in [`ClientDiff::needs_restart`] and not applied.

use std::collections::{BTreeMap, BTreeSet};

use super::operator::StoredClientState;
use super::planner::CONFIG_OWNER;
use super::{ClientSettings, ServerAddr};
use crate::wire::{Route, Vni};

/// The difference between two client settings that a running agent can
/// apply (see the module documentation).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientDiff {
    /// Servers to connect to, in the file's order.
    pub add_servers: Vec<ServerAddr>,
    /// Servers to stop using (their sessions close, their routes go).
    pub remove_servers: Vec<ServerAddr>,
    /// VNIs to subscribe to.
    pub subscribe: Vec<Vni>,
    /// VNIs to unsubscribe from.
    pub unsubscribe: Vec<Vni>,
    /// VNI -> its tables from now on (empty: the VNI is no longer mapped).
    pub mappings: BTreeMap<Vni, BTreeSet<u32>>,
    /// The [`CONFIG_OWNER`]'s new exact set of routes, when it changed.
    pub announcements: Option<Vec<Route>>,
    /// Keys whose change is left out because the API changed them (as
    /// `client.servers [::1]:4711`), for the log and the reply.
    pub kept_by_api: Vec<String>,
    /// Changed settings that are used only at start (the file's keys).
    pub needs_restart: Vec<&'static str>,
}

impl ClientDiff {
    /// The difference from `old` to `new`.
    pub fn between(old: &ClientSettings, new: &ClientSettings) -> ClientDiff {
        let servers_old: BTreeSet<&ServerAddr> = old.servers.iter().collect();
        let servers_new: BTreeSet<&ServerAddr> = new.servers.iter().collect();
        let subs_old: BTreeSet<Vni> = old.subscriptions.iter().copied().collect();
        let subs_new: BTreeSet<Vni> = new.subscriptions.iter().copied().collect();
        let mut mappings = BTreeMap::new();
        let vnis: BTreeSet<&Vni> = old
            .install_routes
            .keys()
            .chain(new.install_routes.keys())
            .collect();
        for vni in vnis {
            let tables = new.install_routes.get(vni).cloned().unwrap_or_default();
            if old.install_routes.get(vni).cloned().unwrap_or_default() != tables {
                mappings.insert(*vni, tables);
            }
        }
        let ann_old: BTreeSet<Route> = old.announcements.iter().copied().collect();
        let ann_new: BTreeSet<Route> = new.announcements.iter().copied().collect();
        let mut needs_restart = Vec::new();
        for (key, changed) in [
            ("client.tun", old.tun != new.tun),
            ("client.ipv4_only", old.ipv4_only != new.ipv4_only),
            (
                "client.keepalive",
                old.connection.keepalive_secs != new.connection.keepalive_secs,
            ),
            (
                "client.reconnect_min, client.reconnect_max",
                old.connection.backoff != new.connection.backoff,
            ),
            // Every session's HELLO carries it: a running session cannot
            // renegotiate.
            ("client.sync", old.connection.sync != new.connection.sync),
            ("client.hold_time", old.hold_time != new.hold_time),
            ("client.stale_time", old.stale_time != new.stale_time),
            ("client.cleanup", old.cleanup != new.cleanup),
            (
                "client.flush_at_start",
                old.flush_at_start != new.flush_at_start,
            ),
        ] {
            if changed {
                needs_restart.push(key);
            }
        }
        ClientDiff {
            add_servers: unique(new.servers.iter().filter(|a| !servers_old.contains(a))),
            remove_servers: unique(old.servers.iter().filter(|a| !servers_new.contains(a))),
            subscribe: unique(new.subscriptions.iter().filter(|v| !subs_old.contains(v))),
            unsubscribe: unique(old.subscriptions.iter().filter(|v| !subs_new.contains(v))),
            mappings,
            announcements: (ann_old != ann_new).then(|| ann_new.into_iter().collect()),
            kept_by_api: Vec::new(),
            needs_restart,
        }
    }

    /// The difference without the keys the API changed (`stored`): each is
    /// named in [`ClientDiff::kept_by_api`]. The announcements stay: the
    /// API cannot change the [`CONFIG_OWNER`]'s routes.
    pub fn without_api_keys(mut self, stored: &StoredClientState) -> ClientDiff {
        let mut kept = Vec::new();
        for list in [&mut self.add_servers, &mut self.remove_servers] {
            list.retain(|a| {
                let api = stored.servers.contains_key(a);
                if api {
                    kept.push(format!("client.servers {a}"));
                }
                !api
            });
        }
        for list in [&mut self.subscribe, &mut self.unsubscribe] {
            list.retain(|v| {
                let api = stored.subscriptions.contains_key(v);
                if api {
                    kept.push(format!("client.subscribe {v}"));
                }
                !api
            });
        }
        self.mappings.retain(|v, _| {
            let api = stored.mappings.contains_key(v);
            if api {
                kept.push(format!("client.install_routes {v}"));
            }
            !api
        });
        self.kept_by_api.extend(kept);
        self
    }

    /// Nothing to apply at runtime.
    pub fn is_empty(&self) -> bool {
        self.add_servers.is_empty()
            && self.remove_servers.is_empty()
            && self.subscribe.is_empty()
            && self.unsubscribe.is_empty()
            && self.mappings.is_empty()
            && self.announcements.is_none()
    }

    /// The tables the difference maps VNIs to, none of them 0 (the
    /// configuration rejects table 0; checked again before anything
    /// changes).
    pub fn maps_any(&self) -> bool {
        self.mappings.values().any(|t| !t.is_empty())
    }

    /// What the difference applies, one entry per file key (the
    /// ReloadResponse's `applied`), e.g. `client.servers: 1 added, 0
    /// removed`.
    pub fn applied(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.add_servers.is_empty() || !self.remove_servers.is_empty() {
            out.push(format!(
                "client.servers: {} added, {} removed",
                self.add_servers.len(),
                self.remove_servers.len()
            ));
        }
        if !self.subscribe.is_empty() || !self.unsubscribe.is_empty() {
            out.push(format!(
                "client.subscribe: {} subscribed, {} unsubscribed",
                self.subscribe.len(),
                self.unsubscribe.len()
            ));
        }
        if !self.mappings.is_empty() {
            let vnis: Vec<String> = self.mappings.keys().map(ToString::to_string).collect();
            out.push(format!(
                "client.install_routes: VNI {} remapped",
                vnis.join(", ")
            ));
        }
        if let Some(routes) = &self.announcements {
            out.push(format!(
                "client.announce: owner {CONFIG_OWNER:?} now announces {} route(s)",
                routes.len()
            ));
        }
        for key in &self.kept_by_api {
            out.push(format!("{key}: kept as changed through the API"));
        }
        out
    }
}

/// The items of `items` in order, each once.
fn unique<'a, T: Clone + PartialEq + 'a>(items: impl Iterator<Item = &'a T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    for item in items {
        if !out.contains(item) {
            out.push(item.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests;
