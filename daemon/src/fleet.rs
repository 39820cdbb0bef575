//! The fleet view (ADR 0030), shell: this server's member record, built from
//! its own state, and the directory of the fleet's members the API, the
//! metrics and the status page read.
//!
//! Without a shared registry the directory knows only this server
//! (`source` "self"); `mbctl fleet --server A --server B` then asks each
//! server for its own record and compares them itself. A registration task
//! (the etcd backend) publishes the other members' records with
//! [`FleetDirectory::publish`]; the comparison is the same either way
//! ([`metalbond_types::fleet::disagreeing_vnis`]).
//!
//! # The member record as JSON
//!
//! [`MemberRecord`] is self-describing and stable: it is the value a
//! registration task stores for each member (e.g. under a lease in etcd),
//! so servers of different versions read each other's. Fields are only ever
//! added (readers ignore fields they do not know); a change of meaning
//! bumps `schema`.
//!
//! ```json
//! {
//!   "schema": 1,
//!   "name": "rs1:4711",
//!   "version": "0.1.0",
//!   "api_addresses": ["/run/metalbondd/api.sock", "tcp://10.0.0.1:4713"],
//!   "listen_addresses": ["[::]:4711"],
//!   "sessions": 12,
//!   "routes": 3,
//!   "vnis": [
//!     {"vni": 100, "routes": 2, "digest": "45827419d0ef347b"},
//!     {"vni": 200, "routes": 1, "digest": "0c1f5e3a9b7d2e41"}
//!   ],
//!   "updated_at_unix_ms": 1765000000000
//! }
//! ```
//!
//! `vnis` lists every VNI with routes, sorted by VNI; a VNI not listed has
//! no routes on that member (routes 0, digest 0). `digest` is 16 lower-case
//! hex digits, as `Vni.digest` in the API.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use metalbond_types::fleet::{
    self as compare, Disagreement, DisagreementClock, MemberDigests, VniDigest,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::server::registry::Registry;
use crate::table::VniStats;
use crate::table_task::{Query, TableHandle};

/// The `schema` of the records this version writes.
pub const RECORD_SCHEMA: u32 = 1;

/// `source` when the directory knows only this server.
pub const SOURCE_SELF: &str = "self";

/// One route server of the fleet, as it describes itself (see the module
/// documentation for its JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// The record's format, [`RECORD_SCHEMA`].
    pub schema: u32,
    /// The member's name (`--name`), unique in the fleet.
    pub name: String,
    /// Its metalbondd version.
    pub version: String,
    /// Where its control API answers: a Unix socket path, or
    /// `tcp://HOST:PORT`.
    pub api_addresses: Vec<String>,
    /// Its MetalBond listen addresses.
    pub listen_addresses: Vec<String>,
    /// Sessions open on it.
    pub sessions: u64,
    /// Routes in its table.
    pub routes: u64,
    /// Its digest of every VNI with routes, sorted by VNI.
    pub vnis: Vec<VniRecord>,
    /// When the record was made, milliseconds since the Unix epoch.
    pub updated_at_unix_ms: u64,
}

/// One VNI's digest in a [`MemberRecord`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VniRecord {
    /// The VNI.
    pub vni: u32,
    /// Its distinct routes.
    pub routes: u64,
    /// Its digest, 16 lower-case hex digits.
    pub digest: String,
}

impl MemberRecord {
    /// The record as one line of JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a member record serialises")
    }

    /// A record read back (e.g. another member's, from the shared store).
    pub fn from_json(text: &str) -> Result<MemberRecord, String> {
        let record: MemberRecord =
            serde_json::from_str(text).map_err(|e| format!("member record: {e}"))?;
        record.digests()?;
        Ok(record)
    }

    /// The record's digests for the comparison; an error names a digest
    /// that is not hex.
    pub fn digests(&self) -> Result<MemberDigests, String> {
        let mut vnis = std::collections::BTreeMap::new();
        for v in &self.vnis {
            let digest = compare::parse_digest_hex(&v.digest).ok_or_else(|| {
                format!(
                    "member {}: VNI {}: digest {:?} is not 16 hex digits",
                    self.name, v.vni, v.digest
                )
            })?;
            vnis.insert(
                v.vni,
                VniDigest {
                    routes: v.routes,
                    digest,
                },
            );
        }
        Ok(MemberDigests {
            name: self.name.clone(),
            vnis,
        })
    }
}

/// The members a registration task published, and where from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Published {
    /// `"etcd"` (or another registry's name); empty: nothing published.
    pub source: String,
    /// Every member's record; this server's own (same name) is ignored,
    /// the directory always builds that one fresh.
    pub records: Vec<MemberRecord>,
}

/// The fleet as this server sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetView {
    /// [`SOURCE_SELF`] or the registry's name.
    pub source: String,
    /// Every member, this server first.
    pub members: Vec<MemberRecord>,
    /// The VNIs the members disagree on, sorted by VNI.
    pub disagreements: Vec<Disagreement>,
    /// How long each of `disagreements` (same order) has been disagreeing
    /// in this server's views, in milliseconds (see
    /// [`FleetDirectory::view_at`]).
    pub disagreeing_for_ms: Vec<u64>,
}

impl FleetView {
    /// Whether the `i`th disagreement is settled: older than
    /// [`compare::SETTLE_AFTER_MS`], so not just a route change whose
    /// records are still on their way.
    pub fn settled(&self, i: usize) -> bool {
        self.disagreeing_for_ms
            .get(i)
            .is_some_and(|&ms| compare::is_settled(ms))
    }

    /// Disagreements that are settled.
    pub fn settled_count(&self) -> usize {
        (0..self.disagreements.len())
            .filter(|&i| self.settled(i))
            .count()
    }
}

/// The directory of the fleet's members (see the module documentation).
pub struct FleetDirectory {
    name: String,
    listen: Vec<SocketAddr>,
    api_addresses: Mutex<Vec<String>>,
    table: TableHandle,
    sessions: Arc<Registry>,
    published: watch::Sender<Published>,
    /// Since when each VNI has been disagreeing, updated by every view.
    clock: Mutex<DisagreementClock>,
    /// The origin of the clock's milliseconds (monotonic).
    epoch: Instant,
}

impl FleetDirectory {
    /// A directory that knows only this server, `name`, listening on
    /// `listen`, whose state is in `table` and `sessions`.
    pub fn new(
        name: String,
        listen: Vec<SocketAddr>,
        table: TableHandle,
        sessions: Arc<Registry>,
    ) -> Self {
        Self {
            name,
            listen,
            api_addresses: Mutex::new(Vec::new()),
            table,
            sessions,
            published: watch::Sender::new(Published::default()),
            clock: Mutex::new(DisagreementClock::default()),
            epoch: Instant::now(),
        }
    }

    /// This server's name in the fleet.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds an address where this server's API answers (the socket path,
    /// `tcp://HOST:PORT`), once it is bound.
    pub fn add_api_address(&self, address: String) {
        let mut all = self.api_addresses.lock().unwrap_or_else(|e| e.into_inner());
        if !all.contains(&address) {
            all.push(address);
        }
    }

    /// Replaces the other members' records (a registration task's view of
    /// the fleet, from `source`). A record whose digests do not parse is
    /// left out, with a warning: it could only be compared wrongly.
    pub fn publish(&self, mut published: Published) {
        published.records.retain(|r| match r.digests() {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %e, "fleet member record ignored");
                false
            }
        });
        self.published.send_replace(published);
    }

    /// This server's record, made now from the table task's answers and the
    /// session registry; `None` while the daemon shuts down.
    pub async fn local_record(&self) -> Option<MemberRecord> {
        let stats = self.table.stats().await?;
        let per_vni = self
            .table
            .query(|reply| Query::Vnis { only: None, reply })
            .await?;
        Some(self.record_of(stats.routes as u64, &per_vni))
    }

    /// This server's record from answers of the table task already at hand
    /// (`routes` in the table, `per_vni` of every VNI), e.g. a scrape's.
    pub fn record_of(&self, routes: u64, per_vni: &[VniStats]) -> MemberRecord {
        let mut vnis: Vec<VniRecord> = per_vni
            .iter()
            .filter(|v| v.routes > 0)
            .map(|v| VniRecord {
                vni: v.vni.0,
                routes: v.routes as u64,
                digest: compare::digest_hex(v.digest),
            })
            .collect();
        vnis.sort_by_key(|v| v.vni);
        MemberRecord {
            schema: RECORD_SCHEMA,
            name: self.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            api_addresses: self
                .api_addresses
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            listen_addresses: self.listen.iter().map(ToString::to_string).collect(),
            sessions: self.sessions.len() as u64,
            routes,
            vnis,
            updated_at_unix_ms: unix_ms(SystemTime::now()),
        }
    }

    /// The fleet: this server's fresh record first, then the published
    /// ones, and where they disagree; `None` while the daemon shuts down.
    pub async fn view(&self) -> Option<FleetView> {
        Some(self.view_with(self.local_record().await?))
    }

    /// The fleet with `local` as this server's record, at the present time.
    pub fn view_with(&self, local: MemberRecord) -> FleetView {
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        self.view_at(local, now_ms)
    }

    /// The fleet with `local` as this server's record, computed `now_ms`
    /// milliseconds after the directory was made. Every view updates the
    /// memory of since when each VNI has been disagreeing (a VNI that
    /// agrees again is forgotten), so a disagreement's age is measured
    /// from the first view that saw it; the registration task computes a
    /// view every round so ages advance even when nobody asks.
    pub fn view_at(&self, local: MemberRecord, now_ms: u64) -> FleetView {
        let published = self.published.borrow().clone();
        let mut members = vec![local];
        members.extend(
            published
                .records
                .into_iter()
                .filter(|r| r.name != self.name),
        );
        // A record whose digest is unreadable was refused when it was
        // published; here it would only be skipped.
        let digests: Vec<MemberDigests> = members.iter().filter_map(|m| m.digests().ok()).collect();
        let source = if published.source.is_empty() {
            SOURCE_SELF.to_string()
        } else {
            published.source
        };
        let disagreements = compare::disagreeing_vnis(&digests);
        let vnis: Vec<u32> = disagreements.iter().map(|d| d.vni).collect();
        let disagreeing_for_ms = self
            .clock
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .observe(now_ms, &vnis);
        FleetView {
            source,
            disagreements,
            disagreeing_for_ms,
            members,
        }
    }
}

/// The default member name: the host name, `:` and the first listen port,
/// so servers on one host differ (`host` when the server does not listen).
pub fn default_name(listen: &[SocketAddr]) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string());
    match listen.first() {
        Some(addr) => format!("{host}:{}", addr.port()),
        None => host,
    }
}

/// Milliseconds since the Unix epoch (0 before it).
fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> MemberRecord {
        MemberRecord {
            schema: RECORD_SCHEMA,
            name: "rs1:4711".into(),
            version: "0.1.0".into(),
            api_addresses: vec!["/run/metalbondd/api.sock".into()],
            listen_addresses: vec!["[::]:4711".into()],
            sessions: 2,
            routes: 3,
            vnis: vec![
                VniRecord {
                    vni: 100,
                    routes: 2,
                    digest: "45827419d0ef347b".into(),
                },
                VniRecord {
                    vni: 200,
                    routes: 1,
                    digest: "0000000000000001".into(),
                },
            ],
            updated_at_unix_ms: 1_765_000_000_000,
        }
    }

    /// The JSON is the stable contract of the shared registry: the field
    /// names are pinned here.
    #[test]
    fn the_json_record_is_pinned_and_round_trips() {
        let r = record();
        let json = r.to_json();
        assert_eq!(
            json,
            r#"{"schema":1,"name":"rs1:4711","version":"0.1.0","api_addresses":["/run/metalbondd/api.sock"],"listen_addresses":["[::]:4711"],"sessions":2,"routes":3,"vnis":[{"vni":100,"routes":2,"digest":"45827419d0ef347b"},{"vni":200,"routes":1,"digest":"0000000000000001"}],"updated_at_unix_ms":1765000000000}"#
        );
        assert_eq!(MemberRecord::from_json(&json).unwrap(), r);
    }

    #[test]
    fn unknown_fields_are_ignored_and_bad_digests_refused() {
        let mut v: serde_json::Value = serde_json::from_str(&record().to_json()).unwrap();
        v["added_later"] = serde_json::json!({"x": 1});
        assert_eq!(MemberRecord::from_json(&v.to_string()).unwrap(), record());
        v["vnis"][0]["digest"] = "xyz".into();
        let err = MemberRecord::from_json(&v.to_string()).unwrap_err();
        assert!(err.contains("VNI 100") && err.contains("xyz"), "{err}");
        assert!(MemberRecord::from_json("{}").is_err());
    }

    #[test]
    fn digests_are_parsed_for_the_comparison() {
        let d = record().digests().unwrap();
        assert_eq!(d.name, "rs1:4711");
        assert_eq!(
            d.digest(100),
            VniDigest {
                routes: 2,
                digest: 0x4582_7419_d0ef_347b
            }
        );
        assert_eq!(d.digest(7), VniDigest::EMPTY);
    }

    #[test]
    fn default_names_carry_the_first_port() {
        let name = default_name(&["[::1]:4711".parse().unwrap(), "[::1]:9".parse().unwrap()]);
        assert!(name.ends_with(":4711") && name.len() > 5, "{name}");
        assert!(!default_name(&[]).contains(':'));
    }

    /// What a registration task publishes joins this server's fresh record:
    /// its own name is ignored, an unreadable record left out, and the
    /// comparison runs over all of them.
    #[tokio::test]
    async fn published_members_join_the_view() {
        let table = crate::table_task::spawn();
        let route: crate::wire::Route = "100#10.0.0.0/24@2001:db8::1".parse().unwrap();
        table
            .local_ops(
                crate::table::LOCAL_API,
                vec![crate::table_task::Op::Announce(route)],
            )
            .await;
        let dir = FleetDirectory::new(
            "me".into(),
            vec!["[::1]:4711".parse().unwrap()],
            table,
            Arc::new(Registry::default()),
        );
        dir.add_api_address("/run/me.sock".into());
        dir.add_api_address("/run/me.sock".into());
        let view = dir.view().await.unwrap();
        assert_eq!(view.source, SOURCE_SELF);
        assert_eq!(view.members.len(), 1);
        let me = &view.members[0];
        assert_eq!(me.api_addresses, ["/run/me.sock"]);
        assert_eq!(me.routes, 1);
        let mine = me.vnis[0].clone();
        assert_eq!(
            (mine.vni, mine.routes, mine.digest.clone()),
            (
                100,
                1,
                crate::table::digest::to_hex(crate::table::digest::route_hash(&route))
            )
        );

        let mut same = record();
        same.name = "twin".into();
        same.vnis = vec![mine.clone()];
        let mut other = record();
        other.name = "other".into();
        let mut stale_self = record();
        stale_self.name = "me".into();
        let mut broken = record();
        broken.name = "broken".into();
        broken.vnis[0].digest = "zz".into();
        dir.publish(Published {
            source: "etcd".into(),
            records: vec![same, other, stale_self, broken],
        });
        let view = dir.view().await.unwrap();
        assert_eq!(view.source, "etcd");
        let names: Vec<&str> = view.members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["me", "twin", "other"]);
        // "other" holds VNIs 100 (2 routes) and 200: both differ from "me".
        let vnis: Vec<u32> = view.disagreements.iter().map(|d| d.vni).collect();
        assert_eq!(vnis, [100, 200]);
        assert_eq!(view.disagreements[1].members[0].1, VniDigest::EMPTY);
    }

    /// A disagreement's age runs from the first view that saw it, across
    /// views, and it settles after SETTLE_AFTER_MS; agreeing again resets it.
    #[tokio::test]
    async fn disagreements_age_across_views_and_settle() {
        let dir = FleetDirectory::new(
            "me".into(),
            vec![],
            crate::table_task::spawn(),
            Arc::new(Registry::default()),
        );
        let mut me = record();
        me.name = "me".into();
        let mut other = record();
        other.name = "other".into();
        other.vnis[0].digest = "0000000000000abc".into();
        dir.publish(Published {
            source: "etcd".into(),
            records: vec![other.clone()],
        });
        let v = dir.view_at(me.clone(), 10_000);
        assert_eq!(v.disagreements.len(), 1);
        assert_eq!(
            (v.disagreeing_for_ms.clone(), v.settled_count()),
            (vec![0], 0)
        );
        let v = dir.view_at(me.clone(), 14_999);
        assert_eq!(
            (v.disagreeing_for_ms.clone(), v.settled(0)),
            (vec![4_999], false)
        );
        let v = dir.view_at(me.clone(), 15_000);
        assert_eq!(
            (v.disagreeing_for_ms.clone(), v.settled(0)),
            (vec![5_000], true)
        );
        assert_eq!(v.settled_count(), 1);
        // The members agree again: forgotten; a new disagreement starts at 0.
        dir.publish(Published {
            source: "etcd".into(),
            records: vec![MemberRecord {
                name: "other".into(),
                ..me.clone()
            }],
        });
        assert!(dir.view_at(me.clone(), 16_000).disagreements.is_empty());
        dir.publish(Published {
            source: "etcd".into(),
            records: vec![other],
        });
        assert_eq!(dir.view_at(me, 17_000).disagreeing_for_ms, vec![0]);
    }

    mod properties {
        use std::collections::BTreeSet;

        use metalbond_types::fleet::{disagreeing_vnis, MemberDigests, VniDigest};
        use proptest::prelude::*;

        use crate::table::{RouteTable, LOCAL_API};
        use crate::wire::Route;

        /// 24 routes over VNIs 1..=4.
        fn universe() -> Vec<Route> {
            (0..24u32)
                .map(|i| {
                    format!("{}#10.0.{i}.0/24@2001:db8::{}", i % 4 + 1, i % 3 + 1)
                        .parse()
                        .unwrap()
                })
                .collect()
        }

        /// A member's digests as its table has them.
        fn member(name: &str, t: &RouteTable) -> MemberDigests {
            MemberDigests {
                name: name.into(),
                vnis: t
                    .vni_stats(None)
                    .into_iter()
                    .filter(|s| s.routes > 0)
                    .map(|s| {
                        (
                            s.vni.0,
                            VniDigest {
                                routes: s.routes as u64,
                                digest: s.digest,
                            },
                        )
                    })
                    .collect(),
            }
        }

        proptest! {
            /// Two servers fed the same routes in any order agree; fed
            /// different sets, they disagree exactly on the VNIs whose
            /// routes differ (a VNI one of them lacks included).
            #[test]
            fn members_disagree_exactly_where_their_routes_differ(
                a_routes in proptest::collection::btree_set(0usize..24, 0..24),
                b_routes in proptest::collection::btree_set(0usize..24, 0..24),
                order in proptest::collection::vec(any::<u32>(), 24),
            ) {
                let routes = universe();
                let mut a = RouteTable::new();
                for &i in &a_routes {
                    a.announce(LOCAL_API, &routes[i]);
                }
                // B in another order (sorted by random keys).
                let mut shuffled: Vec<(u32, usize)> =
                    order.iter().copied().zip(b_routes.iter().copied()).collect();
                shuffled.sort_unstable();
                let mut b = RouteTable::new();
                for (_, i) in shuffled {
                    b.announce(LOCAL_API, &routes[i]);
                }
                let got: Vec<u32> = disagreeing_vnis(&[member("a", &a), member("b", &b)])
                    .iter()
                    .map(|d| d.vni)
                    .collect();
                let want: Vec<u32> = (1..=4u32)
                    .filter(|&v| {
                        let of = |set: &BTreeSet<usize>| -> BTreeSet<usize> {
                            set.iter().copied().filter(|&i| routes[i].vni.0 == v).collect()
                        };
                        of(&a_routes) != of(&b_routes)
                    })
                    .collect();
                prop_assert_eq!(got, want);
            }
        }
    }
}
