//! Sends a checked request to the daemon and hands the answer to the
//! printer: each request is a call (or a stream) and the document made of
//! the daemon's answer; the text of table mode is `render`'s.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use clap::CommandFactory;
use metalbond_proto::api::{
    self, client_service_client::ClientServiceClient, daemon_service_client::DaemonServiceClient,
    fleet_service_client::FleetServiceClient, peer_service_client::PeerServiceClient,
    route_service_client::RouteServiceClient, vni_service_client::VniServiceClient,
};
use serde::Serialize;
use tonic::transport::Channel;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

use crate::cli::Cli;
use crate::client::{call, connect, connect_tcp, default_socket};
use crate::error::{CliError, EXIT_DAEMON, EXIT_OK};
use crate::model::*;
use crate::printer::Printer;
use crate::render;
use crate::request::{Request, Target};

/// Largest answer accepted (a page of 10000 routes is far below this).
const MAX_MESSAGE: usize = 64 << 20;

/// Runs the command. Returns the exit code of a completed command (0, or 1
/// for `health` when the daemon is not SERVING).
pub async fn run(cli: Cli, p: &mut Printer) -> Result<u8, CliError> {
    let timeout = Duration::from_secs_f64(cli.timeout);
    let socket: PathBuf = cli
        .socket
        .clone()
        .unwrap_or_else(|| default_socket(cli.role()));

    // Everything that needs no daemon, and every argument check, comes first:
    // a bad argument is exit 2 with nothing sent, daemon or not.
    let request = Request::check(cli.command)?;
    if let Request::Completions(shell) = request {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "mbctl", &mut buf);
        p.text(&String::from_utf8_lossy(&buf))?;
        return Ok(EXIT_OK);
    }

    match request {
        // Several daemons, each asked for itself: no default socket needed.
        Request::Fleet(targets) if !targets.is_empty() => {
            return fleet_of_servers(&targets, timeout, p).await
        }
        Request::Diff { vni, a, b } => return diff(vni, [a, b], &socket, timeout, p).await,
        _ => {}
    }
    let ctx = Ctx::open(&socket_target(&socket), timeout).await?;
    serve(&ctx, p, request).await
}

/// `--socket`: a Unix socket path, or `tcp://HOST:PORT` (a TCP API
/// listener, e.g. another host's read-only one).
fn socket_target(socket: &std::path::Path) -> Target {
    match socket.to_str().and_then(|s| s.strip_prefix("tcp://")) {
        Some(addr) => Target::Tcp(addr.to_string()),
        None => Target::Socket(socket.to_path_buf()),
    }
}

/// Sends `request` (any but `Completions`) and prints the answer.
async fn serve(ctx: &Ctx, p: &mut Printer, request: Request) -> Result<u8, CliError> {
    match request {
        Request::Peers => {
            ctx.answer(
                p,
                "ListPeers",
                ctx.peers().list_peers(api::ListPeersRequest {}),
                |r| PeerListJson {
                    peers: r.peers.iter().map(PeerJson::from).collect(),
                },
                |d| render::peers::peers_table(&d.peers),
            )
            .await
        }
        Request::Peer(sel) => {
            let req = api::GetPeerRequest { peer: Some(sel) };
            ctx.answer(
                p,
                "GetPeer",
                ctx.peers().get_peer(req),
                |r| PeerJson::from(&r),
                render::peers::peer_details,
            )
            .await
        }
        Request::ResetPeer(sel) => {
            let (which, peer) = reset_selector(sel);
            let req = api::ResetPeerRequest { peer: Some(which) };
            let doc = PeerResetJson { peer, reset: true };
            ctx.answer(
                p,
                "ResetPeer",
                ctx.peers().reset_peer(req),
                |_| doc,
                render::peers::peer_reset,
            )
            .await
        }
        Request::Vnis => {
            ctx.answer(
                p,
                "ListVnis",
                ctx.vnis().list_vnis(api::ListVnisRequest {}),
                |r| VniListJson {
                    vnis: r.vnis.iter().map(VniJson::from).collect(),
                },
                |d| render::vnis::vnis_table(&d.vnis),
            )
            .await
        }
        Request::Vni(vni) => {
            ctx.answer(
                p,
                "GetVni",
                ctx.vnis().get_vni(api::GetVniRequest { vni }),
                |r| VniJson::from(&r),
                render::vnis::vni_details,
            )
            .await
        }
        Request::Routes(filter) => routes(ctx, p, filter).await,
        Request::Announce(req, owner) if owner.is_some() || ctx.to_route_servers().await? => {
            let sent = req.routes.len();
            let req = api::ClientAnnounceRequest {
                routes: req.routes,
                owner: owner.unwrap_or_default(),
                allow_existing: req.allow_existing,
            };
            let owner = effective_owner(&req.owner);
            ctx.answer(
                p,
                "Announce",
                ctx.client().announce(req),
                |r| ClientAnnounceJson {
                    owner,
                    added: r.added,
                    unchanged: r.unchanged,
                },
                |d| render::client::client_announced(sent, d),
            )
            .await
        }
        Request::Announce(req, _) => {
            let sent = req.routes.len();
            ctx.answer(
                p,
                "AnnounceRoutes",
                ctx.routes().announce_routes(req),
                |r| AnnounceJson { added: r.added },
                |d| render::routes::announced(sent, d),
            )
            .await
        }
        Request::Withdraw(req, owner) if owner.is_some() || ctx.to_route_servers().await? => {
            let sent = req.routes.len();
            let req = api::ClientWithdrawRequest {
                routes: req.routes,
                owner: owner.unwrap_or_default(),
                allow_missing: req.allow_missing,
            };
            let owner = effective_owner(&req.owner);
            ctx.answer(
                p,
                "Withdraw",
                ctx.client().withdraw(req),
                |r| ClientWithdrawJson {
                    owner,
                    removed: r.removed,
                    unchanged: r.unchanged,
                },
                |d| render::client::client_withdrew(sent, d),
            )
            .await
        }
        Request::SetAnnouncements(req) => {
            let owner = req.owner.clone();
            ctx.answer(
                p,
                "SetAnnouncements",
                ctx.client().set_announcements(req),
                |r| SetAnnouncementsJson {
                    owner,
                    added: r.added,
                    removed: r.removed,
                    unchanged: r.unchanged,
                },
                render::client::announcements_set,
            )
            .await
        }
        Request::Announcements => {
            ctx.answer(
                p,
                "ListAnnouncements",
                ctx.client()
                    .list_announcements(api::ListAnnouncementsRequest {}),
                |r| AnnouncementListJson {
                    announcements: r.announcements.iter().map(AnnouncementJson::from).collect(),
                },
                |d| render::client::announcements_table(&d.announcements),
            )
            .await
        }
        Request::Withdraw(req, _) => {
            let sent = req.routes.len();
            ctx.answer(
                p,
                "WithdrawRoutes",
                ctx.routes().withdraw_routes(req),
                |r| WithdrawJson { removed: r.removed },
                |d| render::routes::withdrew(sent, d),
            )
            .await
        }
        Request::WatchRoutes(filter) => {
            let req = api::WatchRoutesRequest {
                filter: Some(filter),
            };
            let events = ctx
                .call("WatchRoutes", ctx.routes().watch_routes(req))
                .await?;
            watch(p, events, render::events::route_event_line).await
        }
        Request::WatchPeers => {
            let req = api::WatchPeersRequest {};
            let events = ctx.call("WatchPeers", ctx.peers().watch_peers(req)).await?;
            watch(p, events, |e: &PeerEventJson, _| {
                render::events::peer_event_line(e)
            })
            .await
        }
        Request::WatchReceived(vnis) => {
            let req = api::WatchReceivedRequest { vnis };
            let events = ctx
                .call("WatchReceived", ctx.client().watch_received(req))
                .await?;
            watch(p, events, render::events::received_event_line).await
        }
        Request::Servers => {
            ctx.answer(
                p,
                "ListServers",
                ctx.client().list_servers(api::ListServersRequest {}),
                |r| ServerListJson {
                    servers: r.servers.iter().map(ClientServerJson::from).collect(),
                },
                |d| render::client::servers_table(&d.servers),
            )
            .await
        }
        Request::AddServer(address) => {
            let req = api::AddServerRequest {
                address: address.clone(),
            };
            let doc = ServerAddedJson {
                address,
                added: true,
            };
            ctx.answer(
                p,
                "AddServer",
                ctx.client().add_server(req),
                |_| doc,
                render::client::server_added,
            )
            .await
        }
        Request::RemoveServer(address) => {
            let req = api::RemoveServerRequest {
                address: address.clone(),
            };
            let doc = ServerRemovedJson {
                address,
                removed: true,
            };
            ctx.answer(
                p,
                "RemoveServer",
                ctx.client().remove_server(req),
                |_| doc,
                render::client::server_removed,
            )
            .await
        }
        Request::Subscriptions => {
            ctx.answer(
                p,
                "ListSubscriptions",
                ctx.client()
                    .list_subscriptions(api::ListSubscriptionsRequest {}),
                |r| SubscriptionListJson { vnis: r.vnis },
                |d| render::client::subscriptions_table(&d.vnis),
            )
            .await
        }
        Request::Subscribe(vni) => {
            let doc = SubscribedJson {
                vni,
                subscribed: true,
            };
            ctx.answer(
                p,
                "Subscribe",
                ctx.client().subscribe(api::SubscribeRequest { vni }),
                |_| doc,
                render::client::subscribed,
            )
            .await
        }
        Request::Unsubscribe(vni) => {
            let doc = UnsubscribedJson {
                vni,
                unsubscribed: true,
            };
            ctx.answer(
                p,
                "Unsubscribe",
                ctx.client().unsubscribe(api::UnsubscribeRequest { vni }),
                |_| doc,
                render::client::unsubscribed,
            )
            .await
        }
        Request::Mappings => {
            ctx.answer(
                p,
                "ListTableMappings",
                ctx.client()
                    .list_table_mappings(api::ListTableMappingsRequest {}),
                |r| MappingListJson {
                    mappings: r.mappings.iter().map(TableMappingJson::from).collect(),
                },
                |d| render::client::mappings_table(&d.mappings),
            )
            .await
        }
        Request::Map(req) => {
            let doc = TableMappingJson {
                vni: req.vni,
                table: req.table,
            };
            ctx.answer(
                p,
                "SetTableMapping",
                ctx.client().set_table_mapping(req),
                |_| doc,
                render::client::mapped,
            )
            .await
        }
        Request::Unmap(vni) => {
            let req = api::RemoveTableMappingRequest { vni };
            let doc = UnmappedJson {
                vni,
                unmapped: true,
            };
            ctx.answer(
                p,
                "RemoveTableMapping",
                ctx.client().remove_table_mapping(req),
                |_| doc,
                render::client::unmapped,
            )
            .await
        }
        Request::Received(vni) => {
            ctx.answer(
                p,
                "ListReceivedRoutes",
                ctx.client()
                    .list_received_routes(api::ListReceivedRoutesRequest { vni }),
                |r| ReceivedListJson {
                    routes: r.routes.iter().map(ReceivedRouteJson::from).collect(),
                },
                |d| render::client::received_table(&d.routes),
            )
            .await
        }
        Request::Status => {
            ctx.answer(
                p,
                "GetStatus",
                ctx.daemon().get_status(api::GetStatusRequest {}),
                |r| StatusJson::from(&r),
                render::daemon::status_details,
            )
            .await
        }
        Request::Policy => {
            ctx.answer(
                p,
                "GetPolicy",
                ctx.daemon().get_policy(api::GetPolicyRequest {}),
                |r| PolicyJson::from(&r),
                render::policy::policy_tables,
            )
            .await
        }
        Request::Health => health(ctx, p).await,
        Request::Reload => {
            let doc = |r: api::ReloadResponse| ReloadJson {
                applied: r.applied,
                needs_restart: r.needs_restart,
            };
            ctx.answer(
                p,
                "Reload",
                ctx.daemon().reload(api::ReloadRequest {}),
                doc,
                render::daemon::reloaded,
            )
            .await
        }
        Request::Shutdown => {
            let doc = ShutdownJson {
                shutting_down: true,
            };
            ctx.answer(
                p,
                "Shutdown",
                ctx.daemon().shutdown(api::ShutdownRequest {}),
                |_| doc,
                render::daemon::shutting_down,
            )
            .await
        }
        Request::Fleet(_) => {
            ctx.answer(
                p,
                "GetFleet",
                ctx.fleet().get_fleet(api::GetFleetRequest {}),
                |r| FleetJson::from(&r),
                render::fleet::fleet_tables,
            )
            .await
        }
        Request::Diff { .. } => unreachable!("answered by `run`"),
        Request::Completions(_) => unreachable!("printed by `run`"),
    }
}

/// The channel to the daemon and the time limit of every call.
struct Ctx {
    channel: Channel,
    timeout: Duration,
}

impl Ctx {
    fn routes(&self) -> RouteServiceClient<Channel> {
        RouteServiceClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE)
    }
    fn peers(&self) -> PeerServiceClient<Channel> {
        PeerServiceClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE)
    }
    fn vnis(&self) -> VniServiceClient<Channel> {
        VniServiceClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE)
    }
    fn client(&self) -> ClientServiceClient<Channel> {
        ClientServiceClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE)
    }
    fn daemon(&self) -> DaemonServiceClient<Channel> {
        DaemonServiceClient::new(self.channel.clone())
    }
    fn fleet(&self) -> FleetServiceClient<Channel> {
        FleetServiceClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE)
    }

    /// A context for the daemon at `target` (a socket or a TCP listener).
    async fn open(target: &Target, timeout: Duration) -> Result<Ctx, CliError> {
        let channel = match target {
            Target::Socket(path) => connect(path, timeout).await?,
            Target::Tcp(addr) => connect_tcp(addr, timeout).await?,
            Target::Member(m) => {
                return Err(CliError::Other(format!(
                    "member {m:?} has no API address to connect to"
                )))
            }
        };
        Ok(Ctx { channel, timeout })
    }

    /// Every route matching `filter`, all pages.
    async fn all_routes(&self, filter: api::RouteFilter) -> Result<Vec<api::RouteEntry>, CliError> {
        let mut client = self.routes();
        let mut all = Vec::new();
        let mut token = String::new();
        loop {
            let req = api::ListRoutesRequest {
                filter: Some(filter.clone()),
                page_size: 0,
                page_token: token.clone(),
            };
            let resp = self.call("ListRoutes", client.list_routes(req)).await?;
            all.extend(resp.routes);
            if resp.next_page_token.is_empty() {
                return Ok(all);
            }
            if resp.next_page_token == token {
                return Err(CliError::Other(
                    "the daemon returned the same page token twice; listing stopped".into(),
                ));
            }
            token = resp.next_page_token;
        }
    }

    /// Whether `announce`/`withdraw` go to the route servers: the daemon
    /// runs the client role and has no route-server listener (so no peer
    /// reads its own table). Asked with GetStatus.
    async fn to_route_servers(&self) -> Result<bool, CliError> {
        let status = self
            .call(
                "GetStatus",
                self.daemon().get_status(api::GetStatusRequest {}),
            )
            .await?;
        Ok(status.client.is_some() && status.listen_addresses.is_empty())
    }

    /// Awaits `reply`, the call of the RPC `method`, within the time limit.
    async fn call<R>(
        &self,
        method: &'static str,
        reply: impl Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    ) -> Result<R, CliError> {
        call(method, self.timeout, reply).await
    }

    /// Awaits `reply` (see [`Ctx::call`]) and prints the document
    /// `document()` makes of the daemon's answer, in table mode as the text
    /// `table()` makes of it. Returns exit 0.
    async fn answer<R, D: Serialize>(
        &self,
        p: &mut Printer,
        method: &'static str,
        reply: impl Future<Output = Result<tonic::Response<R>, tonic::Status>>,
        document: impl FnOnce(R) -> D,
        table: impl FnOnce(&D) -> String,
    ) -> Result<u8, CliError> {
        let answer = self.call(method, reply).await?;
        p.emit(&document(answer), table)?;
        Ok(EXIT_OK)
    }
}

/// The owner the daemon uses for `owner` (empty: `api`).
fn effective_owner(owner: &str) -> String {
    if owner.is_empty() { "api" } else { owner }.to_string()
}

/// The ResetPeer selector of a GetPeer one, and the session as the user
/// gave it (id or address).
fn reset_selector(sel: api::get_peer_request::Peer) -> (api::reset_peer_request::Peer, String) {
    use api::get_peer_request::Peer as Sel;
    use api::reset_peer_request::Peer as Which;
    match sel {
        Sel::SessionId(id) => (Which::SessionId(id), id.to_string()),
        Sel::Address(a) => (Which::Address(a.clone()), a),
    }
}

/// `mbctl routes`: every page of ListRoutes, printed as one document.
async fn routes(ctx: &Ctx, p: &mut Printer, filter: api::RouteFilter) -> Result<u8, CliError> {
    let all = ctx.all_routes(filter).await?;
    let doc = RouteListJson {
        routes: all.iter().map(RouteEntryJson::from).collect(),
    };
    p.emit(&doc, |d| render::routes::routes_table(&d.routes))?;
    Ok(EXIT_OK)
}

/// `mbctl fleet --server S...`: each server's own record (its GetFleet's
/// local member), compared here with the daemon's rule (ADR 0030).
async fn fleet_of_servers(
    targets: &[Target],
    timeout: Duration,
    p: &mut Printer,
) -> Result<u8, CliError> {
    use metalbond_types::fleet::{digest_hex, disagreeing_vnis, parse_digest_hex, MemberDigests};
    let mut members: Vec<FleetMemberJson> = Vec::new();
    for target in targets {
        let ctx = Ctx::open(target, timeout).await?;
        let fleet = ctx
            .call("GetFleet", ctx.fleet().get_fleet(api::GetFleetRequest {}))
            .await?;
        let own =
            fleet.members.iter().find(|m| m.local).ok_or_else(|| {
                CliError::Other(format!("{target}: GetFleet has no local member"))
            })?;
        if let Some(twin) = members.iter().find(|m| m.name == own.name) {
            return Err(CliError::Other(format!(
                "{target} and another server are both named {:?} (set --name / server.name)",
                twin.name
            )));
        }
        members.push(FleetMemberJson::from(own));
    }
    let mut digests = Vec::with_capacity(members.len());
    for m in &members {
        let mut d = MemberDigests {
            name: m.name.clone(),
            ..MemberDigests::default()
        };
        for v in &m.vnis {
            let digest = parse_digest_hex(&v.digest).ok_or_else(|| {
                CliError::Other(format!(
                    "{}: VNI {}: digest {:?} is not hex",
                    m.name, v.vni, v.digest
                ))
            })?;
            d.vnis.insert(
                v.vni,
                metalbond_types::fleet::VniDigest {
                    routes: v.routes,
                    digest,
                },
            );
        }
        digests.push(d);
    }
    let doc = FleetJson {
        source: "servers".into(),
        disagreeing_vnis: disagreeing_vnis(&digests)
            .into_iter()
            .map(|d| FleetDisagreementJson {
                vni: d.vni,
                members: d
                    .members
                    .into_iter()
                    .map(|(member, v)| FleetMemberDigestJson {
                        member,
                        routes: v.routes,
                        digest: digest_hex(v.digest),
                    })
                    .collect(),
                // Compared once, here: no history, so no age.
                disagreeing_for_ms: None,
                settled: None,
            })
            .collect(),
        members,
    };
    p.emit(&doc, render::fleet::fleet_tables)?;
    Ok(EXIT_OK)
}

/// The routes of one server in `mbctl diff`, by (VNI, text form).
type RouteSet = std::collections::BTreeMap<(u32, String), api::Route>;

/// `mbctl diff --vni V A B`: the routes of `vni` only A or only B has;
/// exit 0 when there are none, 1 when there are (as diff(1)). Member names
/// are resolved through the GetFleet of the daemon at `socket`.
async fn diff(
    vni: u32,
    sides: [Target; 2],
    socket: &std::path::Path,
    timeout: Duration,
    p: &mut Printer,
) -> Result<u8, CliError> {
    let mut fleet: Option<api::Fleet> = None;
    let mut lists: Vec<(DiffSideJson, RouteSet)> = Vec::new();
    for given in &sides {
        let target = match given {
            Target::Member(name) => {
                if fleet.is_none() {
                    let ctx = Ctx::open(&socket_target(socket), timeout).await?;
                    let f = ctx
                        .call("GetFleet", ctx.fleet().get_fleet(api::GetFleetRequest {}))
                        .await?;
                    fleet = Some(f);
                }
                let members = &fleet.as_ref().expect("asked above").members;
                let member = members.iter().find(|m| &m.name == name).ok_or_else(|| {
                    let known: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
                    CliError::Usage(format!(
                        "no fleet member named {name:?} (known: {}); give an API socket path or tcp://HOST:PORT",
                        known.join(", ")
                    ))
                })?;
                member_address(member)?
            }
            t => t.clone(),
        };
        let ctx = Ctx::open(&target, timeout).await?;
        let filter = api::RouteFilter {
            vni: Some(vni),
            ..Default::default()
        };
        let routes: RouteSet = ctx
            .all_routes(filter)
            .await?
            .into_iter()
            .filter_map(|e| e.route)
            .map(|r| ((r.vni, crate::route::format_route(&r)), r))
            .collect();
        let side = DiffSideJson {
            server: given.to_string(),
            address: target.to_string(),
            routes: routes.len() as u64,
        };
        lists.push((side, routes));
    }
    let (b_side, b) = lists.pop().expect("two sides");
    let (a_side, a) = lists.pop().expect("two sides");
    let only = |x: &RouteSet, y: &RouteSet| {
        x.iter()
            .filter(|(k, _)| !y.contains_key(*k))
            .map(|(_, r)| RouteJson::from(r))
            .collect::<Vec<_>>()
    };
    let doc = DiffJson {
        vni,
        only_a: only(&a, &b),
        only_b: only(&b, &a),
        equal: a.len() == b.len() && a.keys().all(|k| b.contains_key(k)),
        a: a_side,
        b: b_side,
    };
    p.emit(&doc, render::fleet::diff_table)?;
    Ok(if doc.equal { EXIT_OK } else { EXIT_DAEMON })
}

/// Where to reach a fleet member's API from here: its socket if that file
/// is on this host, else its TCP listener, else its first address.
fn member_address(m: &api::FleetMember) -> Result<Target, CliError> {
    let parse = |a: &String| match a.strip_prefix("tcp://") {
        Some(addr) => Target::Tcp(addr.to_string()),
        None => Target::Socket(a.into()),
    };
    let local_socket = m
        .api_addresses
        .iter()
        .find(|a| !a.starts_with("tcp://") && std::path::Path::new(a).exists());
    let tcp = m.api_addresses.iter().find(|a| a.starts_with("tcp://"));
    local_socket
        .or(tcp)
        .or(m.api_addresses.first())
        .map(parse)
        .ok_or_else(|| CliError::Other(format!("fleet member {:?} lists no API address", m.name)))
}

/// The document of a `watch` event, and whether it is the `lagged` event
/// that ends the stream.
trait WatchEvent<Raw>: Serialize + for<'a> From<&'a Raw> {
    /// Why the watcher fell behind, if this is the `lagged` event.
    fn lagged_reason(&self) -> Option<&str>;
}

impl WatchEvent<api::RouteEvent> for RouteEventJson {
    fn lagged_reason(&self) -> Option<&str> {
        match &self.event {
            RouteEventKind::Lagged { reason } => Some(reason),
            _ => None,
        }
    }
}

impl WatchEvent<api::ReceivedEvent> for ReceivedEventJson {
    fn lagged_reason(&self) -> Option<&str> {
        // A received-routes watch goes on after `lagged` with a fresh
        // snapshot: nothing ends.
        None
    }
}

impl WatchEvent<api::PeerEvent> for PeerEventJson {
    fn lagged_reason(&self) -> Option<&str> {
        match &self.event {
            PeerEventKind::Lagged { reason } => Some(reason),
            _ => None,
        }
    }
}

/// `mbctl watch ...`: prints every event of `events` (in table mode the
/// line `line()` makes of its document and the event) until the stream
/// ends or the user interrupts (exit 0), or the daemon says the watcher
/// lagged (that event is printed, then the `Lagged` error).
async fn watch<Raw, Doc: WatchEvent<Raw>>(
    p: &mut Printer,
    mut events: tonic::Streaming<Raw>,
    line: impl Fn(&Doc, &Raw) -> String,
) -> Result<u8, CliError> {
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let msg = tokio::select! {
            _ = &mut ctrl_c => return Ok(EXIT_OK),
            m = events.message() => m?,
        };
        let Some(ev) = msg else {
            return Ok(EXIT_OK);
        };
        let doc = Doc::from(&ev);
        p.event(&doc, |d| line(d, &ev))?;
        if let Some(reason) = doc.lagged_reason() {
            return Err(CliError::Lagged(reason.to_string()));
        }
    }
}

/// The health service of the shared state (etcd); absent with redb.
const SHARED_STATE_HEALTH: &str = "metalbondd.shared_state";

/// `mbctl health`: exit 0 if the daemon is SERVING, else 1. With a shared
/// state (etcd) its health is shown too, but does not change the exit
/// status: a server whose etcd is unreachable still serves its last state.
async fn health(ctx: &Ctx, p: &mut Printer) -> Result<u8, CliError> {
    use tonic_health::pb::health_check_response::ServingStatus;
    let mut client = HealthClient::new(ctx.channel.clone());
    let req = HealthCheckRequest {
        service: String::new(),
    };
    let resp = ctx.call("Health/Check", client.check(req)).await?;
    let status = ServingStatus::try_from(resp.status).unwrap_or(ServingStatus::Unknown);
    let name = status.as_str_name().to_string();
    let req = HealthCheckRequest {
        service: SHARED_STATE_HEALTH.to_string(),
    };
    // NOT_FOUND: the daemon has no shared state (redb), nothing to show.
    let shared_state = match tokio::time::timeout(ctx.timeout, client.check(req)).await {
        Ok(Ok(r)) => Some(
            ServingStatus::try_from(r.into_inner().status)
                .unwrap_or(ServingStatus::Unknown)
                .as_str_name()
                .to_string(),
        ),
        Ok(Err(s)) if s.code() == tonic::Code::NotFound => None,
        Ok(Err(s)) => Some(format!("UNKNOWN ({})", s.message())),
        Err(_) => Some("UNKNOWN (timed out)".to_string()),
    };
    p.emit(
        &HealthJson {
            status: name,
            shared_state,
        },
        render::daemon::health,
    )?;
    Ok(if status == ServingStatus::Serving {
        EXIT_OK
    } else {
        EXIT_DAEMON
    })
}
