//! The JSON output of `mbctl -o json`: our own serde structs, so that the
//! shape is stable whatever the generated code does. Field names are the
//! proto field names (snake_case); enums are short lower-case names
//! (`std`/`nat`/`lb`, `client`/`server`, `established`, ...); timestamps are
//! RFC 3339 UTC text (`null` when unset); durations are whole seconds in a
//! field named `..._seconds`. Every field is always present.

use metalbond_proto::api;
use metalbond_types::civil::UtcDateTime;
use serde::Serialize;

use crate::route::type_name;

/// A next hop.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct NextHopJson {
    /// Underlay address.
    pub address: String,
    /// `std`, `nat`, `lb`, `other` or `unspecified`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// NAT port range start (0 unless NAT).
    pub nat_port_from: u32,
    /// NAT port range end (0 unless NAT).
    pub nat_port_to: u32,
    /// Target VNI (0 when unset).
    pub target_vni: u32,
    /// The MetalBond wire value of the type.
    pub wire_type: i32,
}

/// A route.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RouteJson {
    /// VNI.
    pub vni: u32,
    /// `ADDR/LEN`.
    pub prefix: String,
    /// The next hop.
    pub next_hop: NextHopJson,
}

impl From<&api::Route> for RouteJson {
    fn from(r: &api::Route) -> Self {
        let nh = r.next_hop.clone().unwrap_or_default();
        RouteJson {
            vni: r.vni,
            prefix: r.prefix.clone(),
            next_hop: NextHopJson {
                address: nh.address,
                kind: type_name(nh.r#type),
                nat_port_from: nh.nat_port_from,
                nat_port_to: nh.nat_port_to,
                target_vni: nh.target_vni,
                wire_type: nh.wire_type,
            },
        }
    }
}

/// Who announces a route: `{"kind": "peer", "session_id": 12, "remote_address": "..."}`,
/// `{"kind": "api"}`, `{"kind": "config"}` or `{"kind": "unknown"}`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AnnouncerJson {
    /// A session.
    Peer {
        /// Session id.
        session_id: u64,
        /// Remote address of the session.
        remote_address: String,
    },
    /// Injected through the API.
    Api,
    /// A static route of the configuration file.
    Config,
    /// A kind this version does not know.
    Unknown,
}

impl From<&api::Announcer> for AnnouncerJson {
    fn from(a: &api::Announcer) -> Self {
        use api::announcer::Kind;
        match &a.kind {
            Some(Kind::Peer(p)) => AnnouncerJson::Peer {
                session_id: p.session_id,
                remote_address: p.remote_address.clone(),
            },
            Some(Kind::Api(_)) => AnnouncerJson::Api,
            Some(Kind::Config(_)) => AnnouncerJson::Config,
            None => AnnouncerJson::Unknown,
        }
    }
}

impl AnnouncerJson {
    /// Short text for tables: the remote address, `api` or `config`.
    pub fn short(&self) -> String {
        match self {
            AnnouncerJson::Peer {
                session_id,
                remote_address,
            } => {
                if remote_address.is_empty() {
                    format!("session {session_id}")
                } else {
                    remote_address.clone()
                }
            }
            AnnouncerJson::Api => "api".into(),
            AnnouncerJson::Config => "config".into(),
            AnnouncerJson::Unknown => "?".into(),
        }
    }
}

/// A route in the table with its announcers.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RouteEntryJson {
    /// The route.
    pub route: RouteJson,
    /// Everyone announcing it.
    pub announcers: Vec<AnnouncerJson>,
}

impl From<&api::RouteEntry> for RouteEntryJson {
    fn from(e: &api::RouteEntry) -> Self {
        RouteEntryJson {
            route: RouteJson::from(&e.route.clone().unwrap_or_default()),
            announcers: e.announcers.iter().map(AnnouncerJson::from).collect(),
        }
    }
}

/// `mbctl routes -o json`: all pages in one document.
#[derive(Debug, Clone, Serialize)]
pub struct RouteListJson {
    /// The routes.
    pub routes: Vec<RouteEntryJson>,
}

/// A session.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PeerJson {
    /// Session id.
    pub session_id: u64,
    /// Remote address (`[2001:db8::7]:40522`).
    pub remote_address: String,
    /// Local address.
    pub local_address: String,
    /// `client`, `server` or `unspecified`.
    pub role: &'static str,
    /// `connecting`, `hello_sent`, `hello_received`, `established`, `retry`, `closed`, `unspecified`.
    pub state: &'static str,
    /// Negotiated keepalive interval (0 before the handshake).
    pub keepalive_seconds: u32,
    /// When the session connected (RFC 3339), or null.
    pub connected_at: Option<String>,
    /// Age of the session in whole seconds, or null.
    pub uptime_seconds: Option<u64>,
    /// Subscribed VNIs.
    pub subscribed_vnis: Vec<u32>,
    /// Routes this peer announces now.
    pub routes_announced: u64,
    /// UPDATEs received from the peer.
    pub updates_received: u64,
    /// UPDATEs sent to the peer.
    pub updates_sent: u64,
    /// Messages received.
    pub messages_in: u64,
    /// Messages sent.
    pub messages_out: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Bytes queued for the peer.
    pub queue_bytes: u64,
    /// Last error or close reason (empty if none).
    pub last_error: String,
    /// Negotiated extensions by name (`["sync"]`; empty with a reference
    /// peer).
    pub extensions: Vec<String>,
    /// Peer policy class (empty without a policy).
    pub policy_class: String,
    /// Routes the policy refused.
    pub routes_refused: u64,
    /// SUBSCRIBEs the policy refused.
    pub subscribes_refused: u64,
    /// Reason of the last refusal (empty if none).
    pub last_refusal_reason: String,
    /// When the last refusal happened (RFC 3339), or null.
    pub last_refusal_at: Option<String>,
    /// TLS client certificate identity (empty for plaintext).
    pub tls_identity: String,
    /// Route data to the peer is paced (it may be a Go reference peer).
    pub paced: bool,
}

impl From<&api::Peer> for PeerJson {
    fn from(p: &api::Peer) -> Self {
        PeerJson {
            session_id: p.session_id,
            remote_address: p.remote_address.clone(),
            local_address: p.local_address.clone(),
            role: role_name(p.role),
            state: state_name(p.state),
            keepalive_seconds: p.keepalive_seconds,
            connected_at: timestamp_text(&p.connected_at),
            uptime_seconds: whole_seconds(&p.uptime),
            subscribed_vnis: p.subscribed_vnis.clone(),
            routes_announced: p.routes_announced,
            updates_received: p.updates_received,
            updates_sent: p.updates_sent,
            messages_in: p.messages_in,
            messages_out: p.messages_out,
            bytes_in: p.bytes_in,
            bytes_out: p.bytes_out,
            queue_bytes: p.queue_bytes,
            last_error: p.last_error.clone(),
            extensions: p.extensions.clone(),
            policy_class: p.policy_class.clone(),
            routes_refused: p.routes_refused,
            subscribes_refused: p.subscribes_refused,
            last_refusal_reason: p.last_refusal_reason.clone(),
            last_refusal_at: timestamp_text(&p.last_refusal_at),
            tls_identity: p.tls_identity.clone(),
            paced: p.paced,
        }
    }
}

/// `mbctl peers -o json`.
#[derive(Debug, Clone, Serialize)]
pub struct PeerListJson {
    /// The sessions.
    pub peers: Vec<PeerJson>,
}

/// A VNI.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct VniJson {
    /// The VNI.
    pub vni: u32,
    /// Routes in it.
    pub routes: u64,
    /// Distinct announcers of its routes.
    pub announcers: u64,
    /// Sessions subscribed to it.
    pub subscribers: u64,
    /// Distinct routes the digest covers.
    pub digest_routes: u64,
    /// Order-independent hash of its routes (16 hex digits): equal on
    /// servers that hold the same routes in this VNI.
    pub digest: String,
}

impl From<&api::Vni> for VniJson {
    fn from(v: &api::Vni) -> Self {
        VniJson {
            vni: v.vni,
            routes: v.routes,
            announcers: v.announcers,
            subscribers: v.subscribers,
            digest_routes: v.digest_routes,
            digest: v.digest.clone(),
        }
    }
}

/// `mbctl vnis -o json`.
#[derive(Debug, Clone, Serialize)]
pub struct VniListJson {
    /// The VNIs.
    pub vnis: Vec<VniJson>,
}

/// `mbctl fleet -o json`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FleetJson {
    /// Where the members come from: `self` (the daemon alone), `etcd`, or
    /// `servers` (the `--server` options, compared by mbctl).
    pub source: String,
    /// The members, the answering (or first named) server first.
    pub members: Vec<FleetMemberJson>,
    /// The VNIs the members disagree on, sorted by VNI.
    pub disagreeing_vnis: Vec<FleetDisagreementJson>,
}

/// A route server of the fleet.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FleetMemberJson {
    /// Its name.
    pub name: String,
    /// Whether it is the server that answered (`--server`: each is).
    pub local: bool,
    /// Its metalbondd version.
    pub version: String,
    /// Where its API answers.
    pub api_addresses: Vec<String>,
    /// Its MetalBond listen addresses.
    pub listen_addresses: Vec<String>,
    /// Open sessions.
    pub sessions: u64,
    /// Routes in its table.
    pub routes: u64,
    /// Its digest of every VNI with routes.
    pub vnis: Vec<FleetVniJson>,
    /// When its record was made (RFC 3339), or null.
    pub updated_at: Option<String>,
}

/// One VNI's digest on a member.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FleetVniJson {
    /// The VNI.
    pub vni: u32,
    /// Its distinct routes.
    pub routes: u64,
    /// Its digest, 16 hex digits.
    pub digest: String,
}

/// A VNI the members disagree on.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FleetDisagreementJson {
    /// The VNI.
    pub vni: u32,
    /// Every member's value, in the order of `members`.
    pub members: Vec<FleetMemberDigestJson>,
    /// How long the answering server has seen the VNI disagreeing, in
    /// milliseconds; null with `--server` (mbctl compares once, it has no
    /// history).
    pub disagreeing_for_ms: Option<u64>,
    /// Disagreeing for at least 5 s: not just a route change on its way;
    /// null with `--server`.
    pub settled: Option<bool>,
}

/// One member's digest of a disagreeing VNI.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FleetMemberDigestJson {
    /// The member's name.
    pub member: String,
    /// Its routes in the VNI.
    pub routes: u64,
    /// Its digest of the VNI.
    pub digest: String,
}

impl From<&api::FleetMember> for FleetMemberJson {
    fn from(m: &api::FleetMember) -> Self {
        FleetMemberJson {
            name: m.name.clone(),
            local: m.local,
            version: m.version.clone(),
            api_addresses: m.api_addresses.clone(),
            listen_addresses: m.listen_addresses.clone(),
            sessions: m.sessions,
            routes: m.routes,
            vnis: m
                .vnis
                .iter()
                .map(|v| FleetVniJson {
                    vni: v.vni,
                    routes: v.routes,
                    digest: v.digest.clone(),
                })
                .collect(),
            updated_at: timestamp_text(&m.updated_at),
        }
    }
}

impl From<&api::Fleet> for FleetJson {
    fn from(f: &api::Fleet) -> Self {
        FleetJson {
            source: f.source.clone(),
            members: f.members.iter().map(FleetMemberJson::from).collect(),
            disagreeing_vnis: f
                .disagreeing_vnis
                .iter()
                .map(|d| FleetDisagreementJson {
                    vni: d.vni,
                    members: d
                        .members
                        .iter()
                        .map(|m| FleetMemberDigestJson {
                            member: m.member.clone(),
                            routes: m.routes,
                            digest: m.digest.clone(),
                        })
                        .collect(),
                    disagreeing_for_ms: Some(d.disagreeing_for_ms),
                    settled: Some(d.settled),
                })
                .collect(),
        }
    }
}

/// `mbctl diff -o json`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DiffJson {
    /// The VNI compared.
    pub vni: u32,
    /// Server A as named (and resolved).
    pub a: DiffSideJson,
    /// Server B.
    pub b: DiffSideJson,
    /// Whether A and B hold the same routes in the VNI.
    pub equal: bool,
    /// Routes only A has, sorted.
    pub only_a: Vec<RouteJson>,
    /// Routes only B has, sorted.
    pub only_b: Vec<RouteJson>,
}

/// One side of `mbctl diff`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DiffSideJson {
    /// The server as given on the command line.
    pub server: String,
    /// The API address asked (the socket path or tcp://HOST:PORT).
    pub address: String,
    /// Its routes in the VNI.
    pub routes: u64,
}

/// `mbctl status -o json`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StatusJson {
    /// Daemon version.
    pub version: String,
    /// Start time (RFC 3339), or null.
    pub started_at: Option<String>,
    /// Uptime in whole seconds, or null.
    pub uptime_seconds: Option<u64>,
    /// MetalBond listen addresses.
    pub listen_addresses: Vec<String>,
    /// Prometheus listener, or null when metrics are off.
    pub metrics_address: Option<String>,
    /// Status page listener (`--http`), or null when off.
    pub http_address: Option<String>,
    /// Path of the API socket.
    pub api_socket: String,
    /// State directory.
    pub state_dir: String,
    /// Open sessions.
    pub sessions: u64,
    /// Routes in the table.
    pub routes: u64,
    /// VNIs.
    pub vnis: u64,
    /// Distinct next hops.
    pub next_hops: u64,
    /// Routes injected through the API.
    pub injected_routes: u64,
    /// Static routes of the configuration.
    pub static_routes: u64,
    /// Settings given at start that stored API changes replaced.
    pub overrides: Vec<OverrideJson>,
    /// The client role's counters, or null when it does not run.
    pub client: Option<ClientStatusJson>,
    /// The operator state's backend and its health, or null from a daemon
    /// that does not report it.
    pub shared_state: Option<SharedStateJson>,
}

/// The shared-state part of `mbctl status -o json` (ADR 0031).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SharedStateJson {
    /// `redb` or `etcd`.
    pub backend: String,
    /// etcd client URLs.
    pub endpoints: Vec<String>,
    /// etcd key prefix.
    pub prefix: String,
    /// etcd unreachable: the last state seen is kept, writes fail.
    pub degraded: bool,
    /// Why, when degraded (null otherwise).
    pub reason: Option<String>,
    /// etcd revision applied last.
    pub revision: i64,
    /// Routes applied from the shared state.
    pub routes: u64,
    /// Resyncs from a snapshot.
    pub resyncs: u64,
    /// Keys under the prefix that are not routes.
    pub skipped_keys: u64,
}

impl From<&api::SharedStateStatus> for SharedStateJson {
    fn from(s: &api::SharedStateStatus) -> Self {
        SharedStateJson {
            backend: s.backend.clone(),
            endpoints: s.endpoints.clone(),
            prefix: s.prefix.clone(),
            degraded: s.degraded,
            reason: non_empty(&s.reason),
            revision: s.revision,
            routes: s.routes,
            resyncs: s.resyncs,
            skipped_keys: s.skipped_keys,
        }
    }
}

/// A setting given at start that a stored API change replaced.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct OverrideJson {
    /// The flag and configuration key with the value given.
    pub setting: String,
    /// What is in effect instead.
    pub replaced_by: String,
}

/// The client role's part of `mbctl status -o json`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ClientStatusJson {
    /// Route servers configured.
    pub servers: u64,
    /// Of them, with an established session.
    pub servers_established: u64,
    /// Subscribed VNIs.
    pub subscriptions: u64,
    /// VNIs mapped to routing tables.
    pub mapped_vnis: u64,
    /// Distinct routes received.
    pub received_routes: u64,
    /// Routes installed in the kernel.
    pub installed_routes: u64,
    /// UPDATEs received from the servers.
    pub updates_received: u64,
    /// UPDATEs sent to the servers.
    pub updates_sent: u64,
}

impl From<&api::ClientStatus> for ClientStatusJson {
    fn from(c: &api::ClientStatus) -> Self {
        ClientStatusJson {
            servers: c.servers,
            servers_established: c.servers_established,
            subscriptions: c.subscriptions,
            mapped_vnis: c.mapped_vnis,
            received_routes: c.received_routes,
            installed_routes: c.installed_routes,
            updates_received: c.updates_received,
            updates_sent: c.updates_sent,
        }
    }
}

impl From<&api::Status> for StatusJson {
    fn from(s: &api::Status) -> Self {
        StatusJson {
            version: s.version.clone(),
            started_at: timestamp_text(&s.started_at),
            uptime_seconds: whole_seconds(&s.uptime),
            listen_addresses: s.listen_addresses.clone(),
            metrics_address: non_empty(&s.metrics_address),
            http_address: non_empty(&s.http_address),
            api_socket: s.api_socket.clone(),
            state_dir: s.state_dir.clone(),
            sessions: s.sessions,
            routes: s.routes,
            vnis: s.vnis,
            next_hops: s.next_hops,
            injected_routes: s.injected_routes,
            static_routes: s.static_routes,
            overrides: s
                .overrides
                .iter()
                .map(|o| OverrideJson {
                    setting: o.setting.clone(),
                    replaced_by: o.replaced_by.clone(),
                })
                .collect(),
            client: s.client.as_ref().map(ClientStatusJson::from),
            shared_state: s.shared_state.as_ref().map(SharedStateJson::from),
        }
    }
}

/// `Some(text)` unless `text` is empty.
fn non_empty(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_string())
}

/// `mbctl reload -o json`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReloadJson {
    /// What changed and was applied.
    pub applied: Vec<String>,
    /// What changed but needs a restart.
    pub needs_restart: Vec<String>,
}

/// `mbctl peer reset -o json`.
#[derive(Debug, Clone, Serialize)]
pub struct PeerResetJson {
    /// The session, as given (id or address).
    pub peer: String,
    /// Always true (the daemon closed it).
    pub reset: bool,
}

/// `mbctl announce -o json`.
#[derive(Debug, Clone, Serialize)]
pub struct AnnounceJson {
    /// How many routes were new.
    pub added: u32,
}

/// `mbctl announce -o json` in a client-role daemon (to the route servers).
#[derive(Debug, Clone, Serialize)]
pub struct ClientAnnounceJson {
    /// The owner of the routes.
    pub owner: String,
    /// Routes the owner did not announce before.
    pub added: u32,
    /// Routes the owner announced already (with `--allow-existing`).
    pub unchanged: u32,
}

/// `mbctl withdraw -o json` in a client-role daemon.
#[derive(Debug, Clone, Serialize)]
pub struct ClientWithdrawJson {
    /// The owner of the routes.
    pub owner: String,
    /// Routes the owner stopped announcing.
    pub removed: u32,
    /// Routes the owner did not announce (with `--allow-missing`).
    pub unchanged: u32,
}

/// `mbctl announce --owner NAME --exact -o json`.
#[derive(Debug, Clone, Serialize)]
pub struct SetAnnouncementsJson {
    /// The owner.
    pub owner: String,
    /// Routes added to the owner's set.
    pub added: u32,
    /// Routes removed from it.
    pub removed: u32,
    /// Routes it had already.
    pub unchanged: u32,
}

/// A route announced to the route servers, with its owners.
#[derive(Debug, Clone, Serialize)]
pub struct AnnouncementJson {
    /// The route.
    pub route: RouteJson,
    /// Its owners (`config`: the flags and the configuration file).
    pub owners: Vec<String>,
}

impl From<&api::Announcement> for AnnouncementJson {
    fn from(a: &api::Announcement) -> Self {
        AnnouncementJson {
            route: RouteJson::from(&a.route.clone().unwrap_or_default()),
            owners: a.owners.clone(),
        }
    }
}

/// `mbctl announcements -o json`.
#[derive(Debug, Clone, Serialize)]
pub struct AnnouncementListJson {
    /// The announced routes.
    pub announcements: Vec<AnnouncementJson>,
}

/// `mbctl withdraw -o json`.
#[derive(Debug, Clone, Serialize)]
pub struct WithdrawJson {
    /// How many routes were removed.
    pub removed: u32,
}

/// `mbctl health -o json`.
#[derive(Debug, Clone, Serialize)]
pub struct HealthJson {
    /// `SERVING`, `NOT_SERVING`, `UNKNOWN` or `SERVICE_UNKNOWN`.
    pub status: String,
    /// The health of the shared state (service `metalbondd.shared_state`:
    /// `SERVING`, or `NOT_SERVING` while etcd is unreachable); left out
    /// when the daemon has no shared state (the redb backend).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared_state: Option<String>,
}

/// `mbctl shutdown -o json`.
#[derive(Debug, Clone, Serialize)]
pub struct ShutdownJson {
    /// Always true (the daemon accepted the request).
    pub shutting_down: bool,
}

/// One line of `mbctl watch routes -o json`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RouteEventJson {
    /// Sequence number (from 1, no gaps).
    pub sequence: u64,
    /// The event.
    #[serde(flatten)]
    pub event: RouteEventKind,
}

/// What a route event is, tagged by `kind`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RouteEventKind {
    /// A route of the initial snapshot.
    Snapshot {
        /// The route.
        route: RouteJson,
    },
    /// The end of the snapshot.
    SnapshotEnd {
        /// Routes in the snapshot.
        routes: u64,
    },
    /// A route appeared.
    Added {
        /// The route.
        route: RouteJson,
    },
    /// A route is gone.
    Removed {
        /// The route.
        route: RouteJson,
    },
    /// The watcher fell behind; the stream ends.
    Lagged {
        /// Why.
        reason: String,
    },
    /// An event this version does not know.
    Unknown,
}

impl From<&api::RouteEvent> for RouteEventJson {
    fn from(e: &api::RouteEvent) -> Self {
        use api::route_event::Event;
        let event = match &e.event {
            Some(Event::Snapshot(r)) => RouteEventKind::Snapshot { route: r.into() },
            Some(Event::SnapshotEnd(end)) => RouteEventKind::SnapshotEnd { routes: end.routes },
            Some(Event::Added(r)) => RouteEventKind::Added { route: r.into() },
            Some(Event::Removed(r)) => RouteEventKind::Removed { route: r.into() },
            Some(Event::Lagged(l)) => RouteEventKind::Lagged {
                reason: l.reason.clone(),
            },
            None => RouteEventKind::Unknown,
        };
        RouteEventJson {
            sequence: e.sequence,
            event,
        }
    }
}

/// One line of `mbctl watch received -o json`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReceivedEventJson {
    /// Sequence number (from 1, no gaps).
    pub sequence: u64,
    /// The event.
    #[serde(flatten)]
    pub event: ReceivedEventKind,
}

/// What a received-routes event is, tagged by `kind`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ReceivedEventKind {
    /// Routes of a snapshot (the first, or the one after `lagged`).
    Snapshot {
        /// The routes.
        routes: Vec<RouteJson>,
    },
    /// The end of a snapshot: it replaces everything seen before.
    SnapshotEnd {
        /// Routes in the snapshot.
        routes: u64,
    },
    /// A route is received now.
    Added {
        /// The route.
        route: RouteJson,
    },
    /// A route is no longer received.
    Removed {
        /// The route.
        route: RouteJson,
    },
    /// Every route server delivered this VNI's routes.
    Synced {
        /// The VNI.
        vni: u32,
    },
    /// The watch fell behind; a fresh snapshot follows.
    Lagged {
        /// Why.
        reason: String,
    },
    /// An event this version does not know.
    Unknown,
}

impl From<&api::ReceivedEvent> for ReceivedEventJson {
    fn from(e: &api::ReceivedEvent) -> Self {
        use api::received_event::Event;
        let event = match &e.event {
            Some(Event::Snapshot(chunk)) => ReceivedEventKind::Snapshot {
                routes: chunk.routes.iter().map(RouteJson::from).collect(),
            },
            Some(Event::SnapshotEnd(end)) => ReceivedEventKind::SnapshotEnd { routes: end.routes },
            Some(Event::Added(r)) => ReceivedEventKind::Added { route: r.into() },
            Some(Event::Removed(r)) => ReceivedEventKind::Removed { route: r.into() },
            Some(Event::Synced(s)) => ReceivedEventKind::Synced { vni: s.vni },
            Some(Event::Lagged(l)) => ReceivedEventKind::Lagged {
                reason: l.reason.clone(),
            },
            None => ReceivedEventKind::Unknown,
        };
        ReceivedEventJson {
            sequence: e.sequence,
            event,
        }
    }
}

/// One line of `mbctl watch peers -o json`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PeerEventJson {
    /// Sequence number (from 1, no gaps).
    pub sequence: u64,
    /// The event.
    #[serde(flatten)]
    pub event: PeerEventKind,
}

/// What a peer event is, tagged by `kind`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PeerEventKind {
    /// A session's connection exists (no handshake yet).
    Up {
        /// The session.
        peer: PeerJson,
    },
    /// A session completed its handshake.
    Established {
        /// The session.
        peer: PeerJson,
    },
    /// A session went down.
    Down {
        /// The session.
        peer: Option<PeerJson>,
        /// Why.
        reason: String,
    },
    /// The watcher fell behind; the stream ends.
    Lagged {
        /// Why.
        reason: String,
    },
    /// An event this version does not know.
    Unknown,
}

impl From<&api::PeerEvent> for PeerEventJson {
    fn from(e: &api::PeerEvent) -> Self {
        use api::peer_event::Event;
        let event = match &e.event {
            Some(Event::Up(p)) => PeerEventKind::Up { peer: p.into() },
            Some(Event::Established(p)) => PeerEventKind::Established { peer: p.into() },
            Some(Event::Down(d)) => PeerEventKind::Down {
                peer: d.peer.as_ref().map(PeerJson::from),
                reason: d.reason.clone(),
            },
            Some(Event::Lagged(l)) => PeerEventKind::Lagged {
                reason: l.reason.clone(),
            },
            None => PeerEventKind::Unknown,
        };
        PeerEventJson {
            sequence: e.sequence,
            event,
        }
    }
}

/// A MetalBond server of the client role.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ClientServerJson {
    /// `HOST:PORT` as configured (an IP address or a name).
    pub address: String,
    /// `up`, `down` or `unspecified`.
    pub state: &'static str,
    /// What the address resolved to at the last attempt (`IP:PORT` each).
    pub resolved: Vec<String>,
    /// The address of the established session, or null when down.
    pub connected: Option<String>,
    /// When the server entered its current state (RFC 3339), or null.
    pub since: Option<String>,
    /// Why the last attempt or session ended, while the server is down
    /// (empty while it is up).
    pub last_error: String,
    /// UPDATEs received from the server.
    pub updates_received: u64,
    /// UPDATEs sent to the server.
    pub updates_sent: u64,
    /// Extensions the established session negotiated, by name (`["sync"]`;
    /// empty while down, with a reference server, or with `--no-sync`).
    pub extensions: Vec<String>,
}

impl From<&api::ClientServer> for ClientServerJson {
    fn from(s: &api::ClientServer) -> Self {
        ClientServerJson {
            address: s.address.clone(),
            state: server_state_name(s.state),
            resolved: s.resolved.clone(),
            connected: Some(s.connected.clone()).filter(|c| !c.is_empty()),
            since: timestamp_text(&s.since),
            last_error: s.last_error.clone(),
            updates_received: s.updates_received,
            updates_sent: s.updates_sent,
            extensions: s.extensions.clone(),
        }
    }
}

/// `mbctl servers -o json`.
#[derive(Debug, Clone, Serialize)]
pub struct ServerListJson {
    /// The servers.
    pub servers: Vec<ClientServerJson>,
}

/// `mbctl server add -o json`.
#[derive(Debug, Clone, Serialize)]
pub struct ServerAddedJson {
    /// The server, as sent.
    pub address: String,
    /// Always true (the daemon accepted the request).
    pub added: bool,
}

/// `mbctl server remove -o json`.
#[derive(Debug, Clone, Serialize)]
pub struct ServerRemovedJson {
    /// The server, as sent.
    pub address: String,
    /// Always true (the daemon accepted the request).
    pub removed: bool,
}

/// `mbctl subscriptions -o json`.
#[derive(Debug, Clone, Serialize)]
pub struct SubscriptionListJson {
    /// The subscribed VNIs.
    pub vnis: Vec<u32>,
}

/// `mbctl subscribe -o json`.
#[derive(Debug, Clone, Serialize)]
pub struct SubscribedJson {
    /// The VNI.
    pub vni: u32,
    /// Always true (the daemon accepted the request).
    pub subscribed: bool,
}

/// `mbctl unsubscribe -o json`.
#[derive(Debug, Clone, Serialize)]
pub struct UnsubscribedJson {
    /// The VNI.
    pub vni: u32,
    /// Always true (the daemon accepted the request).
    pub unsubscribed: bool,
}

/// A VNI -> routing table mapping (also `mbctl map -o json`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TableMappingJson {
    /// The VNI.
    pub vni: u32,
    /// The routing table its received routes are installed in.
    pub table: u32,
}

impl From<&api::TableMapping> for TableMappingJson {
    fn from(m: &api::TableMapping) -> Self {
        TableMappingJson {
            vni: m.vni,
            table: m.table,
        }
    }
}

/// `mbctl mappings -o json`.
#[derive(Debug, Clone, Serialize)]
pub struct MappingListJson {
    /// The mappings.
    pub mappings: Vec<TableMappingJson>,
}

/// `mbctl unmap -o json`.
#[derive(Debug, Clone, Serialize)]
pub struct UnmappedJson {
    /// The VNI.
    pub vni: u32,
    /// Always true (the daemon accepted the request).
    pub unmapped: bool,
}

/// A route received from the servers.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReceivedRouteJson {
    /// The route.
    pub route: RouteJson,
    /// Addresses of the servers providing it.
    pub servers: Vec<String>,
    /// Routing tables it is installed in (empty: not installed).
    pub installed_tables: Vec<u32>,
}

impl From<&api::ReceivedRoute> for ReceivedRouteJson {
    fn from(r: &api::ReceivedRoute) -> Self {
        ReceivedRouteJson {
            route: RouteJson::from(&r.route.clone().unwrap_or_default()),
            servers: r.servers.clone(),
            installed_tables: r.installed_tables.clone(),
        }
    }
}

/// `mbctl received -o json`.
#[derive(Debug, Clone, Serialize)]
pub struct ReceivedListJson {
    /// The received routes.
    pub routes: Vec<ReceivedRouteJson>,
}

/// Short name of a client server state.
pub fn server_state_name(s: i32) -> &'static str {
    match api::ClientServerState::try_from(s) {
        Ok(api::ClientServerState::Up) => "up",
        Ok(api::ClientServerState::Down) => "down",
        _ => "unspecified",
    }
}

/// Short name of a peer role.
pub fn role_name(r: i32) -> &'static str {
    match api::PeerRole::try_from(r) {
        Ok(api::PeerRole::Client) => "client",
        Ok(api::PeerRole::Server) => "server",
        _ => "unspecified",
    }
}

/// Short name of a session state.
pub fn state_name(s: i32) -> &'static str {
    use api::SessionState::*;
    match api::SessionState::try_from(s) {
        Ok(Connecting) => "connecting",
        Ok(HelloSent) => "hello_sent",
        Ok(HelloReceived) => "hello_received",
        Ok(Established) => "established",
        Ok(Retry) => "retry",
        Ok(Closed) => "closed",
        _ => "unspecified",
    }
}

/// A timestamp field of an answer as RFC 3339 text, `None` when unset.
fn timestamp_text(t: &Option<prost_types::Timestamp>) -> Option<String> {
    t.as_ref().map(|t| rfc3339(t.seconds, t.nanos))
}

/// A duration field of an answer in whole seconds (a negative one is 0),
/// `None` when unset.
fn whole_seconds(d: &Option<prost_types::Duration>) -> Option<u64> {
    d.as_ref().map(|d| d.seconds.max(0) as u64)
}

/// A Unix time as RFC 3339 UTC text: `2025-01-31T12:00:05Z`, with
/// milliseconds when they are not zero (`...05.250Z`).
pub fn rfc3339(seconds: i64, nanos: i32) -> String {
    let t = UtcDateTime::from_unix(seconds);
    let (year, month, day) = (t.year, t.month, t.day);
    let (h, m, s) = (t.hour, t.minute, t.second);
    let millis = nanos.clamp(0, 999_999_999) / 1_000_000;
    if millis == 0 {
        format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
    } else {
        format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{millis:03}Z")
    }
}

/// `mbctl policy -o json`: the peer policy in force.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PolicyJson {
    /// False without a `[policy]` section (everything allowed, no classes).
    pub enabled: bool,
    /// The classes in match order, the default last.
    pub classes: Vec<PolicyClassJson>,
}

/// A class of [`PolicyJson`].
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PolicyClassJson {
    /// Its name.
    pub name: String,
    /// The source prefixes it matches (empty for the default class).
    pub match_prefixes: Vec<String>,
    /// The default class.
    pub is_default: bool,
    /// Its rules, `key = value` each (empty: anything goes).
    pub rules: Vec<String>,
    /// `max_routes`, or null without a limit.
    pub max_routes: Option<u64>,
    /// `refuse` or `close`, or null without a limit.
    pub max_routes_action: Option<String>,
    /// Routes at which a session's warning is logged, or null.
    pub max_routes_warn: Option<u64>,
    /// Its live sessions, by session id.
    pub sessions: Vec<PolicySessionJson>,
}

/// A live session of a [`PolicyClassJson`].
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PolicySessionJson {
    /// Session id.
    pub session_id: u64,
    /// The peer's address.
    pub remote_address: String,
    /// Routes it holds in the table.
    pub routes_announced: u64,
    /// Routes the policy refused (including those a reload withdrew).
    pub routes_refused: u64,
    /// SUBSCRIBEs refused (including subscriptions a reload dropped).
    pub subscribes_refused: u64,
    /// Reason of the last refusal, or null.
    pub last_refusal_reason: Option<String>,
}

impl From<&api::Policy> for PolicyJson {
    fn from(p: &api::Policy) -> Self {
        let some = |n: u64| (n > 0).then_some(n);
        PolicyJson {
            enabled: p.enabled,
            classes: p
                .classes
                .iter()
                .map(|c| PolicyClassJson {
                    name: c.name.clone(),
                    match_prefixes: c.match_prefixes.clone(),
                    is_default: c.is_default,
                    rules: c.rules.clone(),
                    max_routes: some(c.max_routes),
                    max_routes_action: (!c.max_routes_action.is_empty())
                        .then(|| c.max_routes_action.clone()),
                    max_routes_warn: some(c.max_routes_warn),
                    sessions: c
                        .sessions
                        .iter()
                        .map(|s| PolicySessionJson {
                            session_id: s.session_id,
                            remote_address: s.remote_address.clone(),
                            routes_announced: s.routes_announced,
                            routes_refused: s.routes_refused,
                            subscribes_refused: s.subscribes_refused,
                            last_refusal_reason: (!s.last_refusal_reason.is_empty())
                                .then(|| s.last_refusal_reason.clone()),
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{fields, sorted};
    use crate::route::parse_route;
    use serde_json::json;

    fn keys(v: &serde_json::Value) -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    }

    #[test]
    fn route_entry_shape() {
        let entry = api::RouteEntry {
            route: Some(parse_route("200#10.0.2.0/24@2001:db8::2#nat#1024#2048").unwrap()),
            announcers: vec![
                api::Announcer {
                    kind: Some(api::announcer::Kind::Peer(api::PeerRef {
                        session_id: 12,
                        remote_address: "[2001:db8::7]:40522".into(),
                    })),
                },
                api::Announcer {
                    kind: Some(api::announcer::Kind::Api(true)),
                },
                api::Announcer {
                    kind: Some(api::announcer::Kind::Config(true)),
                },
            ],
        };
        let v = serde_json::to_value(RouteEntryJson::from(&entry)).unwrap();
        assert_eq!(
            v,
            json!({
                "route": {
                    "vni": 200,
                    "prefix": "10.0.2.0/24",
                    "next_hop": {
                        "address": "2001:db8::2",
                        "type": "nat",
                        "nat_port_from": 1024,
                        "nat_port_to": 2048,
                        "target_vni": 0,
                        "wire_type": 0
                    }
                },
                "announcers": [
                    {"kind": "peer", "session_id": 12, "remote_address": "[2001:db8::7]:40522"},
                    {"kind": "api"},
                    {"kind": "config"}
                ]
            })
        );
    }

    #[test]
    fn documents_have_the_contract_fields() {
        let entry = api::RouteEntry {
            route: Some(parse_route("1#10.0.0.0/8@::1").unwrap()),
            announcers: vec![api::Announcer {
                kind: Some(api::announcer::Kind::Peer(api::PeerRef::default())),
            }],
        };
        let v = serde_json::to_value(RouteEntryJson::from(&entry)).unwrap();
        assert_eq!(keys(&v), sorted(fields::ROUTE_ENTRY));
        assert_eq!(keys(&v["route"]), sorted(fields::ROUTE));
        assert_eq!(keys(&v["route"]["next_hop"]), sorted(fields::NEXT_HOP));
        assert_eq!(keys(&v["announcers"][0]), sorted(fields::PEER_ANNOUNCER));
        let v = serde_json::to_value(VniJson::from(&api::Vni::default())).unwrap();
        assert_eq!(keys(&v), sorted(fields::VNI));
        let fleet = api::Fleet {
            source: "self".into(),
            members: vec![api::FleetMember {
                vnis: vec![api::FleetVniDigest::default()],
                ..Default::default()
            }],
            disagreeing_vnis: vec![api::FleetDisagreement {
                vni: 1,
                members: vec![api::FleetMemberDigest::default()],
                ..Default::default()
            }],
        };
        let v = serde_json::to_value(FleetJson::from(&fleet)).unwrap();
        assert_eq!(keys(&v), sorted(fields::FLEET));
        assert_eq!(keys(&v["members"][0]), sorted(fields::FLEET_MEMBER));
        assert_eq!(keys(&v["members"][0]["vnis"][0]), sorted(fields::FLEET_VNI));
        assert_eq!(
            keys(&v["disagreeing_vnis"][0]),
            sorted(fields::FLEET_DISAGREEMENT)
        );
        assert_eq!(
            keys(&v["disagreeing_vnis"][0]["members"][0]),
            sorted(fields::FLEET_MEMBER_DIGEST)
        );
        let side = DiffSideJson {
            server: "a".into(),
            address: "a".into(),
            routes: 0,
        };
        let v = serde_json::to_value(DiffJson {
            vni: 1,
            a: side.clone(),
            b: side,
            equal: true,
            only_a: vec![],
            only_b: vec![],
        })
        .unwrap();
        assert_eq!(keys(&v), sorted(fields::DIFF));
        assert_eq!(keys(&v["a"]), sorted(fields::DIFF_SIDE));
    }

    #[test]
    fn peer_shape() {
        let p = api::Peer {
            session_id: 3,
            remote_address: "[::1]:5".into(),
            role: api::PeerRole::Client as i32,
            state: api::SessionState::Established as i32,
            keepalive_seconds: 5,
            connected_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            uptime: Some(prost_types::Duration {
                seconds: 61,
                nanos: 5,
            }),
            subscribed_vnis: vec![100, 200],
            ..Default::default()
        };
        let v = serde_json::to_value(PeerJson::from(&p)).unwrap();
        assert_eq!(keys(&v), sorted(fields::PEER));
        assert_eq!(v["role"], "client");
        assert_eq!(v["state"], "established");
        assert_eq!(v["connected_at"], "2023-11-14T22:13:20Z");
        assert_eq!(v["uptime_seconds"], 61);
        assert_eq!(v["subscribed_vnis"], json!([100, 200]));
        let none = serde_json::to_value(PeerJson::from(&api::Peer::default())).unwrap();
        assert_eq!(none["connected_at"], serde_json::Value::Null);
        assert_eq!(none["state"], "unspecified");
    }

    #[test]
    fn status_vni_reload_shapes() {
        let v = serde_json::to_value(StatusJson::from(&api::Status::default())).unwrap();
        assert_eq!(keys(&v), sorted(fields::STATUS));
        let v = serde_json::to_value(VniJson::from(&api::Vni {
            vni: 1,
            routes: 2,
            announcers: 3,
            subscribers: 4,
            digest_routes: 2,
            digest: "00000000000000ab".into(),
        }))
        .unwrap();
        assert_eq!(
            v,
            json!({"vni": 1, "routes": 2, "announcers": 3, "subscribers": 4,
                   "digest_routes": 2, "digest": "00000000000000ab"})
        );
        let v = serde_json::to_value(ReloadJson {
            applied: vec!["log".into()],
            needs_restart: vec![],
        })
        .unwrap();
        assert_eq!(v, json!({"applied": ["log"], "needs_restart": []}));
    }

    #[test]
    fn event_shapes() {
        use api::route_event::Event;
        let r = parse_route("1#10.0.0.0/8@::1").unwrap();
        let ev = |sequence, event| api::RouteEvent {
            sequence,
            event: Some(event),
        };
        let v =
            serde_json::to_value(RouteEventJson::from(&ev(1, Event::Snapshot(r.clone())))).unwrap();
        assert_eq!(keys(&v), ["kind", "route", "sequence"]);
        assert_eq!(v["kind"], "snapshot");
        assert_eq!(v["route"]["prefix"], "10.0.0.0/8");
        let v = serde_json::to_value(RouteEventJson::from(&ev(
            2,
            Event::SnapshotEnd(api::SnapshotEnd { routes: 1 }),
        )))
        .unwrap();
        assert_eq!(
            v,
            json!({"sequence": 2, "kind": "snapshot_end", "routes": 1})
        );
        let v =
            serde_json::to_value(RouteEventJson::from(&ev(3, Event::Added(r.clone())))).unwrap();
        assert_eq!(v["kind"], "added");
        let v = serde_json::to_value(RouteEventJson::from(&ev(4, Event::Removed(r)))).unwrap();
        assert_eq!(v["kind"], "removed");
        let v = serde_json::to_value(RouteEventJson::from(&ev(
            5,
            Event::Lagged(api::Lagged {
                reason: "slow".into(),
            }),
        )))
        .unwrap();
        assert_eq!(
            v,
            json!({"sequence": 5, "kind": "lagged", "reason": "slow"})
        );

        use api::peer_event::Event as P;
        let pe = api::PeerEvent {
            sequence: 9,
            event: Some(P::Down(api::PeerDown {
                peer: Some(api::Peer::default()),
                reason: "gone".into(),
            })),
        };
        let v = serde_json::to_value(PeerEventJson::from(&pe)).unwrap();
        assert_eq!(keys(&v), ["kind", "peer", "reason", "sequence"]);
        assert_eq!(v["kind"], "down");
        let pe = api::PeerEvent {
            sequence: 1,
            event: Some(P::Up(api::Peer::default())),
        };
        let v = serde_json::to_value(PeerEventJson::from(&pe)).unwrap();
        assert_eq!(keys(&v), ["kind", "peer", "sequence"]);
        assert_eq!(v["kind"], "up");
        let pe = api::PeerEvent {
            sequence: 2,
            event: Some(P::Established(api::Peer::default())),
        };
        let v = serde_json::to_value(PeerEventJson::from(&pe)).unwrap();
        assert_eq!(keys(&v), ["kind", "peer", "sequence"]);
        assert_eq!(v["kind"], "established");
    }

    #[test]
    fn client_shapes() {
        let s = api::ClientServer {
            address: "metalbond.example:4711".into(),
            state: api::ClientServerState::Down as i32,
            last_error: "refused".into(),
            since: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            resolved: vec!["[2001:db8::1]:4711".into(), "192.0.2.1:4711".into()],
            connected: String::new(),
            updates_received: 7,
            updates_sent: 2,
            extensions: vec![],
        };
        let v = serde_json::to_value(ClientServerJson::from(&s)).unwrap();
        assert_eq!(
            v,
            json!({"address": "metalbond.example:4711", "state": "down",
                   "resolved": ["[2001:db8::1]:4711", "192.0.2.1:4711"], "connected": null,
                   "since": "2023-11-14T22:13:20Z", "last_error": "refused",
                   "updates_received": 7, "updates_sent": 2, "extensions": []})
        );
        let none =
            serde_json::to_value(ClientServerJson::from(&api::ClientServer::default())).unwrap();
        assert_eq!(none["since"], serde_json::Value::Null);
        assert_eq!(none["state"], "unspecified");
        let r = api::ReceivedRoute {
            route: Some(parse_route("1#10.0.0.0/8@::1").unwrap()),
            servers: vec!["[::1]:4711".into()],
            installed_tables: vec![],
        };
        let v = serde_json::to_value(ReceivedRouteJson::from(&r)).unwrap();
        assert_eq!(keys(&v), sorted(fields::RECEIVED_ROUTE));
        assert_eq!(v["installed_tables"], json!([]));
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400, 0), "2000-02-29T00:00:00Z");
        assert_eq!(
            rfc3339(1_700_000_000, 250_000_000),
            "2023-11-14T22:13:20.250Z"
        );
        assert_eq!(rfc3339(-1, 0), "1969-12-31T23:59:59Z");
        assert_eq!(rfc3339(4_102_444_800, 0), "2100-01-01T00:00:00Z");
    }
}
