//! The subcommands: build the request, call the daemon, print the answer.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::CommandFactory;
use metalbond_proto::api::{
    self, client_service_client::ClientServiceClient, daemon_service_client::DaemonServiceClient,
    peer_service_client::PeerServiceClient, route_service_client::RouteServiceClient,
    vni_service_client::VniServiceClient,
};
use serde::Serialize;
use tonic::transport::Channel;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

use crate::cli::{
    Cli, Command, Output, PeerAction, PeerArgs, RouteTypeArg, RoutesArgs, ServerCommand,
    WatchCommand,
};
use crate::client::{call, connect, default_socket};
use crate::error::{CliError, EXIT_DAEMON, EXIT_OK};
use crate::model::*;
use crate::route::{format_route, parse_addr, parse_prefix, parse_route, MAX_VNI};
use crate::table::{human_bytes, human_duration, key_values, or_dash, short_list, Table};

/// Largest answer accepted (a page of 10000 routes is far below this).
const MAX_MESSAGE: usize = 64 << 20;

/// Where output goes: stdout, flushed after every write so that `watch`
/// lines appear at once.
pub struct Printer {
    out: Box<dyn Write>,
    format: Output,
}

impl Printer {
    /// A printer to `out` in `format`.
    pub fn new(out: Box<dyn Write>, format: Output) -> Self {
        Printer { out, format }
    }

    /// Writes text as it is.
    pub fn text(&mut self, s: &str) -> Result<(), CliError> {
        self.out
            .write_all(s.as_bytes())
            .and_then(|()| self.out.flush())
            .map_err(CliError::Output)
    }

    /// Writes a value as one JSON document (pretty) or one line (`compact`).
    pub fn json<T: Serialize>(&mut self, v: &T, compact: bool) -> Result<(), CliError> {
        let mut s = if compact {
            serde_json::to_string(v)
        } else {
            serde_json::to_string_pretty(v)
        }
        .map_err(|e| CliError::Other(format!("cannot encode JSON: {e}")))?;
        s.push('\n');
        self.text(&s)
    }

    /// Writes the JSON document in JSON mode, else the text `table()` makes.
    fn emit<T: Serialize>(
        &mut self,
        v: &T,
        table: impl FnOnce(&T) -> String,
    ) -> Result<(), CliError> {
        match self.format {
            Output::Json => self.json(v, false),
            Output::Table => self.text(&table(v)),
        }
    }
}

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
    let request = match cli.command {
        Command::Completions { shell } => {
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "mbctl", &mut buf);
            p.text(&String::from_utf8_lossy(&buf))?;
            return Ok(EXIT_OK);
        }
        Command::Announce {
            allow_existing,
            routes,
        } => Request::Announce(api::AnnounceRoutesRequest {
            routes: parse_routes(&routes)?,
            allow_existing,
        }),
        Command::Withdraw {
            allow_missing,
            routes,
        } => Request::Withdraw(api::WithdrawRoutesRequest {
            routes: parse_routes(&routes)?,
            allow_missing,
        }),
        Command::Routes(args) => Request::Routes(route_filter(&args)?),
        Command::Peer(PeerArgs {
            action: Some(PeerAction::Reset { peer }),
            ..
        }) => Request::ResetPeer(peer_selector(&peer)),
        Command::Peer(PeerArgs { peer, .. }) => {
            // clap requires ADDR|ID without an action.
            Request::Peer(peer_selector(peer.as_deref().unwrap_or_default()))
        }
        Command::Peers => Request::Peers,
        Command::Vnis => Request::Vnis,
        Command::Vni { vni } => Request::Vni(vni_arg(&vni)?),
        Command::Watch(WatchCommand::Routes { vni }) => Request::WatchRoutes(api::RouteFilter {
            vni,
            ..Default::default()
        }),
        Command::Watch(WatchCommand::Peers) => Request::WatchPeers,
        Command::Servers => Request::Servers,
        Command::Server(ServerCommand::Add { address }) => {
            Request::AddServer(server_arg(&address)?)
        }
        Command::Server(ServerCommand::Remove { address }) => {
            Request::RemoveServer(server_arg(&address)?)
        }
        Command::Subscriptions => Request::Subscriptions,
        Command::Subscribe { vni } => Request::Subscribe(vni_arg(&vni)?),
        Command::Unsubscribe { vni } => Request::Unsubscribe(vni_arg(&vni)?),
        Command::Mappings => Request::Mappings,
        Command::Map { vni, table } => Request::Map(api::SetTableMappingRequest {
            vni: vni_arg(&vni)?,
            table: table_arg(&table)?,
        }),
        Command::Unmap { vni } => Request::Unmap(vni_arg(&vni)?),
        Command::Received { vni } => Request::Received(match vni {
            Some(v) => Some(vni_arg(&v.to_string())?),
            None => None,
        }),
        Command::Status => Request::Status,
        Command::Health => Request::Health,
        Command::Reload => Request::Reload,
        Command::Shutdown => Request::Shutdown,
    };

    let channel = connect(&socket, timeout).await?;
    let mut ctx = Ctx { channel, timeout };
    match request {
        Request::Peers => peers(&mut ctx, p).await,
        Request::Peer(sel) => peer(&mut ctx, p, sel).await,
        Request::ResetPeer(sel) => reset_peer(&mut ctx, p, sel).await,
        Request::Vnis => vnis(&mut ctx, p).await,
        Request::Vni(vni) => vni_one(&mut ctx, p, vni).await,
        Request::Routes(filter) => routes(&mut ctx, p, filter).await,
        Request::Announce(req) => announce(&mut ctx, p, req).await,
        Request::Withdraw(req) => withdraw(&mut ctx, p, req).await,
        Request::WatchRoutes(filter) => watch_routes(&mut ctx, p, filter).await,
        Request::WatchPeers => watch_peers(&mut ctx, p).await,
        Request::Servers => servers(&mut ctx, p).await,
        Request::AddServer(a) => add_server(&mut ctx, p, a).await,
        Request::RemoveServer(a) => remove_server(&mut ctx, p, a).await,
        Request::Subscriptions => subscriptions(&mut ctx, p).await,
        Request::Subscribe(vni) => subscribe(&mut ctx, p, vni).await,
        Request::Unsubscribe(vni) => unsubscribe(&mut ctx, p, vni).await,
        Request::Mappings => mappings(&mut ctx, p).await,
        Request::Map(req) => map(&mut ctx, p, req).await,
        Request::Unmap(vni) => unmap(&mut ctx, p, vni).await,
        Request::Received(vni) => received(&mut ctx, p, vni).await,
        Request::Status => status(&mut ctx, p).await,
        Request::Health => health(&mut ctx, p).await,
        Request::Reload => reload(&mut ctx, p).await,
        Request::Shutdown => shutdown(&mut ctx, p).await,
    }
}

/// A checked request, ready to send.
enum Request {
    Peers,
    Peer(api::get_peer_request::Peer),
    ResetPeer(api::get_peer_request::Peer),
    Vnis,
    Vni(u32),
    Routes(api::RouteFilter),
    Announce(api::AnnounceRoutesRequest),
    Withdraw(api::WithdrawRoutesRequest),
    WatchRoutes(api::RouteFilter),
    WatchPeers,
    Servers,
    AddServer(String),
    RemoveServer(String),
    Subscriptions,
    Subscribe(u32),
    Unsubscribe(u32),
    Mappings,
    Map(api::SetTableMappingRequest),
    Unmap(u32),
    Received(Option<u32>),
    Status,
    Health,
    Reload,
    Shutdown,
}

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
}

/// Parses every ROUTE; the first bad one is a usage error naming it.
pub fn parse_routes(args: &[String]) -> Result<Vec<api::Route>, CliError> {
    args.iter()
        .map(|s| parse_route(s).map_err(|e| CliError::Usage(e.to_string())))
        .collect()
}

/// The filter of `mbctl routes`, checked.
pub fn route_filter(a: &RoutesArgs) -> Result<api::RouteFilter, CliError> {
    use api::route_filter::Origin;
    let prefix = match &a.prefix {
        Some(p) => {
            parse_prefix(p).map_err(|e| CliError::Usage(format!("invalid --prefix: {e}")))?
        }
        None => String::new(),
    };
    let next_hop = match &a.next_hop {
        Some(n) => {
            parse_addr(n).map_err(|e| CliError::Usage(format!("invalid --next-hop: {e}")))?
        }
        None => String::new(),
    };
    let kind = match a.kind {
        None => api::RouteType::Unspecified,
        Some(RouteTypeArg::Std) => api::RouteType::Standard,
        Some(RouteTypeArg::Nat) => api::RouteType::Nat,
        Some(RouteTypeArg::Lb) => api::RouteType::LoadbalancerTarget,
    };
    let origin = match a.origin.as_deref().map(str::trim) {
        None => None,
        Some("") => return Err(CliError::Usage("invalid --origin: empty".into())),
        Some(o) if o.eq_ignore_ascii_case("local") => Some(Origin::Local(true)),
        Some(o) => match o.parse::<u64>() {
            Ok(id) => Some(Origin::SessionId(id)),
            Err(_) => Some(Origin::PeerAddress(o.to_string())),
        },
    };
    Ok(api::RouteFilter {
        vni: a.vni,
        prefix,
        next_hop,
        r#type: kind as i32,
        origin,
    })
}

/// A VNI argument, 0..16777215.
pub fn vni_arg(s: &str) -> Result<u32, CliError> {
    match s.trim().parse::<u32>() {
        Ok(v) if v <= MAX_VNI => Ok(v),
        _ => Err(CliError::Usage(format!(
            "invalid VNI {s:?}: not a number from 0 to {MAX_VNI}"
        ))),
    }
}

/// A routing table argument, 1..4294967295 (table 0 is never "all tables").
pub fn table_arg(s: &str) -> Result<u32, CliError> {
    match s.trim().parse::<u32>() {
        Ok(t) if t > 0 => Ok(t),
        _ => Err(CliError::Usage(format!(
            "invalid TABLE {s:?}: not a number from 1 to {}",
            u32::MAX
        ))),
    }
}

/// A server argument, `HOST:PORT` with an IP address (sent in its
/// canonical form, `[2001:db8::2]:4711`) or a host name (sent lower-cased;
/// the daemon checks it fully and resolves it).
pub fn server_arg(s: &str) -> Result<String, CliError> {
    let t = s.trim();
    if let Ok(a) = t.parse::<std::net::SocketAddr>() {
        return Ok(a.to_string());
    }
    let bad = || {
        CliError::Usage(format!(
            "invalid server {s:?}: not HOST:PORT (`[2001:db8::2]:4711`, `192.0.2.1:4711`, `metalbond.example:4711`)"
        ))
    };
    let (host, port) = t.rsplit_once(':').ok_or_else(bad)?;
    let name_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        // All digits and dots is a malformed IPv4 address, not a name.
        && !host.chars().all(|c| c.is_ascii_digit() || c == '.');
    if !name_ok || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    Ok(format!("{}:{port}", host.to_ascii_lowercase()))
}

/// `ADDR|ID`: a number is a session id, anything else an address.
pub fn peer_selector(s: &str) -> api::get_peer_request::Peer {
    use api::get_peer_request::Peer;
    let s = s.trim();
    match s.parse::<u64>() {
        Ok(id) => Peer::SessionId(id),
        Err(_) => Peer::Address(s.to_string()),
    }
}

async fn peers(ctx: &mut Ctx, p: &mut Printer) -> Result<u8, CliError> {
    let resp = call(
        "ListPeers",
        ctx.timeout,
        ctx.peers().list_peers(api::ListPeersRequest {}),
    )
    .await?;
    let doc = PeerListJson {
        peers: resp.peers.iter().map(PeerJson::from).collect(),
    };
    p.emit(&doc, |d| peers_table(&d.peers))?;
    Ok(EXIT_OK)
}

/// The table of `mbctl peers`.
pub fn peers_table(peers: &[PeerJson]) -> String {
    let mut t = Table::new(&[
        "ID",
        "REMOTE",
        "ROLE",
        "STATE",
        "KEEPALIVE",
        "UPTIME",
        "VNIS",
        "ANNOUNCED",
        "IN/OUT",
        "QUEUE",
        "LAST ERROR",
    ]);
    for peer in peers {
        t.row(vec![
            peer.session_id.to_string(),
            peer.remote_address.clone(),
            peer.role.to_string(),
            peer.state.to_string(),
            if peer.keepalive_seconds == 0 {
                "-".into()
            } else {
                format!("{}s", peer.keepalive_seconds)
            },
            human_duration(peer.uptime_seconds),
            short_list(&peer.subscribed_vnis, 4),
            peer.routes_announced.to_string(),
            format!("{}/{}", peer.updates_received, peer.updates_sent),
            human_bytes(peer.queue_bytes),
            or_dash(&peer.last_error),
        ]);
    }
    t.render()
}

async fn peer(
    ctx: &mut Ctx,
    p: &mut Printer,
    sel: api::get_peer_request::Peer,
) -> Result<u8, CliError> {
    let req = api::GetPeerRequest { peer: Some(sel) };
    let resp = call("GetPeer", ctx.timeout, ctx.peers().get_peer(req)).await?;
    p.emit(&PeerJson::from(&resp), peer_details)?;
    Ok(EXIT_OK)
}

/// The `key: value` lines of `mbctl peer`.
pub fn peer_details(peer: &PeerJson) -> String {
    let vnis: Vec<String> = peer.subscribed_vnis.iter().map(u32::to_string).collect();
    key_values(&[
        ("session_id", peer.session_id.to_string()),
        ("remote_address", or_dash(&peer.remote_address)),
        ("local_address", or_dash(&peer.local_address)),
        ("role", peer.role.into()),
        ("state", peer.state.into()),
        ("keepalive_seconds", peer.keepalive_seconds.to_string()),
        (
            "connected_at",
            peer.connected_at.clone().unwrap_or_else(|| "-".into()),
        ),
        ("uptime", human_duration(peer.uptime_seconds)),
        ("subscribed_vnis", or_dash(&vnis.join(","))),
        ("routes_announced", peer.routes_announced.to_string()),
        ("updates_received", peer.updates_received.to_string()),
        ("updates_sent", peer.updates_sent.to_string()),
        ("messages_in", peer.messages_in.to_string()),
        ("messages_out", peer.messages_out.to_string()),
        ("bytes_in", peer.bytes_in.to_string()),
        ("bytes_out", peer.bytes_out.to_string()),
        ("queue_bytes", peer.queue_bytes.to_string()),
        ("last_error", or_dash(&peer.last_error)),
    ])
}

async fn reset_peer(
    ctx: &mut Ctx,
    p: &mut Printer,
    sel: api::get_peer_request::Peer,
) -> Result<u8, CliError> {
    use api::get_peer_request::Peer as Sel;
    use api::reset_peer_request::Peer as Which;
    let (which, text) = match sel {
        Sel::SessionId(id) => (Which::SessionId(id), id.to_string()),
        Sel::Address(a) => (Which::Address(a.clone()), a),
    };
    let req = api::ResetPeerRequest { peer: Some(which) };
    call("ResetPeer", ctx.timeout, ctx.peers().reset_peer(req)).await?;
    p.emit(
        &PeerResetJson {
            peer: text,
            reset: true,
        },
        |r| format!("reset session {} (its client reconnects)\n", r.peer),
    )?;
    Ok(EXIT_OK)
}

async fn vni_one(ctx: &mut Ctx, p: &mut Printer, vni: u32) -> Result<u8, CliError> {
    let resp = call(
        "GetVni",
        ctx.timeout,
        ctx.vnis().get_vni(api::GetVniRequest { vni }),
    )
    .await?;
    p.emit(&VniJson::from(&resp), vni_details)?;
    Ok(EXIT_OK)
}

/// The `key: value` lines of `mbctl vni`.
pub fn vni_details(v: &VniJson) -> String {
    key_values(&[
        ("vni", v.vni.to_string()),
        ("routes", v.routes.to_string()),
        ("announcers", v.announcers.to_string()),
        ("subscribers", v.subscribers.to_string()),
    ])
}

async fn vnis(ctx: &mut Ctx, p: &mut Printer) -> Result<u8, CliError> {
    let resp = call(
        "ListVnis",
        ctx.timeout,
        ctx.vnis().list_vnis(api::ListVnisRequest {}),
    )
    .await?;
    let doc = VniListJson {
        vnis: resp.vnis.iter().map(VniJson::from).collect(),
    };
    p.emit(&doc, |d| vnis_table(&d.vnis))?;
    Ok(EXIT_OK)
}

/// The table of `mbctl vnis`.
pub fn vnis_table(vnis: &[VniJson]) -> String {
    let mut t = Table::new(&["VNI", "ROUTES", "ANNOUNCERS", "SUBSCRIBERS"]);
    for v in vnis {
        t.row(vec![
            v.vni.to_string(),
            v.routes.to_string(),
            v.announcers.to_string(),
            v.subscribers.to_string(),
        ]);
    }
    t.render()
}

async fn routes(ctx: &mut Ctx, p: &mut Printer, filter: api::RouteFilter) -> Result<u8, CliError> {
    let mut client = ctx.routes();
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let req = api::ListRoutesRequest {
            filter: Some(filter.clone()),
            page_size: 0,
            page_token: token.clone(),
        };
        let resp = call("ListRoutes", ctx.timeout, client.list_routes(req)).await?;
        all.extend(resp.routes.iter().map(RouteEntryJson::from));
        if resp.next_page_token.is_empty() {
            break;
        }
        if resp.next_page_token == token {
            return Err(CliError::Other(
                "the daemon returned the same page token twice; listing stopped".into(),
            ));
        }
        token = resp.next_page_token;
    }
    let doc = RouteListJson { routes: all };
    p.emit(&doc, |d| routes_table(&d.routes))?;
    Ok(EXIT_OK)
}

/// The table of `mbctl routes`.
pub fn routes_table(routes: &[RouteEntryJson]) -> String {
    let mut t = Table::new(&["VNI", "PREFIX", "NEXT HOP", "TYPE", "PORTS", "ANNOUNCERS"]);
    for e in routes {
        let nh = &e.route.next_hop;
        let (kind, ports) = type_and_ports(nh);
        let announcers: Vec<String> = e.announcers.iter().map(AnnouncerJson::short).collect();
        t.row(vec![
            e.route.vni.to_string(),
            e.route.prefix.clone(),
            nh.address.clone(),
            kind,
            ports,
            short_list(&announcers, 3),
        ]);
    }
    t.render()
}

/// TYPE and PORTS cells of a next hop.
fn type_and_ports(nh: &NextHopJson) -> (String, String) {
    let kind = if nh.kind == "other" {
        format!("other({})", nh.wire_type)
    } else {
        nh.kind.to_string()
    };
    let ports = if nh.kind == "nat" {
        format!("{}-{}", nh.nat_port_from, nh.nat_port_to)
    } else {
        "-".into()
    };
    (kind, ports)
}

async fn servers(ctx: &mut Ctx, p: &mut Printer) -> Result<u8, CliError> {
    let resp = call(
        "ListServers",
        ctx.timeout,
        ctx.client().list_servers(api::ListServersRequest {}),
    )
    .await?;
    let doc = ServerListJson {
        servers: resp.servers.iter().map(ClientServerJson::from).collect(),
    };
    p.emit(&doc, |d| servers_table(&d.servers))?;
    Ok(EXIT_OK)
}

/// The table of `mbctl servers`.
pub fn servers_table(servers: &[ClientServerJson]) -> String {
    let mut t = Table::new(&[
        "ADDRESS",
        "STATE",
        "CONNECTED",
        "RESOLVED",
        "SINCE",
        "IN/OUT",
        "LAST ERROR",
    ]);
    for s in servers {
        // A literal address resolves to itself: not worth a column entry.
        let resolved = if s.resolved.len() == 1 && s.resolved[0] == s.address {
            "-".to_string()
        } else {
            short_list(&s.resolved, 3)
        };
        t.row(vec![
            s.address.clone(),
            s.state.to_string(),
            s.connected.clone().unwrap_or_else(|| "-".into()),
            resolved,
            s.since.clone().unwrap_or_else(|| "-".into()),
            format!("{}/{}", s.updates_received, s.updates_sent),
            or_dash(&s.last_error),
        ]);
    }
    t.render()
}

async fn add_server(ctx: &mut Ctx, p: &mut Printer, address: String) -> Result<u8, CliError> {
    let req = api::AddServerRequest {
        address: address.clone(),
    };
    call("AddServer", ctx.timeout, ctx.client().add_server(req)).await?;
    p.emit(
        &ServerAddedJson {
            address,
            added: true,
        },
        |d| format!("added server {}\n", d.address),
    )?;
    Ok(EXIT_OK)
}

async fn remove_server(ctx: &mut Ctx, p: &mut Printer, address: String) -> Result<u8, CliError> {
    let req = api::RemoveServerRequest {
        address: address.clone(),
    };
    call("RemoveServer", ctx.timeout, ctx.client().remove_server(req)).await?;
    p.emit(
        &ServerRemovedJson {
            address,
            removed: true,
        },
        |d| format!("removed server {}\n", d.address),
    )?;
    Ok(EXIT_OK)
}

async fn subscriptions(ctx: &mut Ctx, p: &mut Printer) -> Result<u8, CliError> {
    let resp = call(
        "ListSubscriptions",
        ctx.timeout,
        ctx.client()
            .list_subscriptions(api::ListSubscriptionsRequest {}),
    )
    .await?;
    let doc = SubscriptionListJson { vnis: resp.vnis };
    p.emit(&doc, |d| subscriptions_table(&d.vnis))?;
    Ok(EXIT_OK)
}

/// The table of `mbctl subscriptions`.
pub fn subscriptions_table(vnis: &[u32]) -> String {
    let mut t = Table::new(&["VNI"]);
    for v in vnis {
        t.row(vec![v.to_string()]);
    }
    t.render()
}

async fn subscribe(ctx: &mut Ctx, p: &mut Printer, vni: u32) -> Result<u8, CliError> {
    let req = api::SubscribeRequest { vni };
    call("Subscribe", ctx.timeout, ctx.client().subscribe(req)).await?;
    p.emit(
        &SubscribedJson {
            vni,
            subscribed: true,
        },
        |d| format!("subscribed to VNI {}\n", d.vni),
    )?;
    Ok(EXIT_OK)
}

async fn unsubscribe(ctx: &mut Ctx, p: &mut Printer, vni: u32) -> Result<u8, CliError> {
    let req = api::UnsubscribeRequest { vni };
    call("Unsubscribe", ctx.timeout, ctx.client().unsubscribe(req)).await?;
    p.emit(
        &UnsubscribedJson {
            vni,
            unsubscribed: true,
        },
        |d| format!("unsubscribed from VNI {}\n", d.vni),
    )?;
    Ok(EXIT_OK)
}

async fn mappings(ctx: &mut Ctx, p: &mut Printer) -> Result<u8, CliError> {
    let resp = call(
        "ListTableMappings",
        ctx.timeout,
        ctx.client()
            .list_table_mappings(api::ListTableMappingsRequest {}),
    )
    .await?;
    let doc = MappingListJson {
        mappings: resp.mappings.iter().map(TableMappingJson::from).collect(),
    };
    p.emit(&doc, |d| mappings_table(&d.mappings))?;
    Ok(EXIT_OK)
}

/// The table of `mbctl mappings`.
pub fn mappings_table(mappings: &[TableMappingJson]) -> String {
    let mut t = Table::new(&["VNI", "TABLE"]);
    for m in mappings {
        t.row(vec![m.vni.to_string(), m.table.to_string()]);
    }
    t.render()
}

async fn map(
    ctx: &mut Ctx,
    p: &mut Printer,
    req: api::SetTableMappingRequest,
) -> Result<u8, CliError> {
    let doc = TableMappingJson {
        vni: req.vni,
        table: req.table,
    };
    call(
        "SetTableMapping",
        ctx.timeout,
        ctx.client().set_table_mapping(req),
    )
    .await?;
    p.emit(&doc, |d| {
        format!("mapped VNI {} to table {}\n", d.vni, d.table)
    })?;
    Ok(EXIT_OK)
}

async fn unmap(ctx: &mut Ctx, p: &mut Printer, vni: u32) -> Result<u8, CliError> {
    let req = api::RemoveTableMappingRequest { vni };
    call(
        "RemoveTableMapping",
        ctx.timeout,
        ctx.client().remove_table_mapping(req),
    )
    .await?;
    p.emit(
        &UnmappedJson {
            vni,
            unmapped: true,
        },
        |d| format!("unmapped VNI {}\n", d.vni),
    )?;
    Ok(EXIT_OK)
}

async fn received(ctx: &mut Ctx, p: &mut Printer, vni: Option<u32>) -> Result<u8, CliError> {
    let resp = call(
        "ListReceivedRoutes",
        ctx.timeout,
        ctx.client()
            .list_received_routes(api::ListReceivedRoutesRequest { vni }),
    )
    .await?;
    let doc = ReceivedListJson {
        routes: resp.routes.iter().map(ReceivedRouteJson::from).collect(),
    };
    p.emit(&doc, |d| received_table(&d.routes))?;
    Ok(EXIT_OK)
}

/// The table of `mbctl received`.
pub fn received_table(routes: &[ReceivedRouteJson]) -> String {
    let mut t = Table::new(&[
        "VNI",
        "PREFIX",
        "NEXT HOP",
        "TYPE",
        "PORTS",
        "SERVERS",
        "INSTALLED",
    ]);
    for r in routes {
        let (kind, ports) = type_and_ports(&r.route.next_hop);
        let tables: Vec<String> = r.installed_tables.iter().map(u32::to_string).collect();
        t.row(vec![
            r.route.vni.to_string(),
            r.route.prefix.clone(),
            r.route.next_hop.address.clone(),
            kind,
            ports,
            short_list(&r.servers, 3),
            or_dash(&tables.join(",")),
        ]);
    }
    t.render()
}

async fn announce(
    ctx: &mut Ctx,
    p: &mut Printer,
    req: api::AnnounceRoutesRequest,
) -> Result<u8, CliError> {
    let n = req.routes.len();
    let resp = call(
        "AnnounceRoutes",
        ctx.timeout,
        ctx.routes().announce_routes(req),
    )
    .await?;
    p.emit(&AnnounceJson { added: resp.added }, |a| {
        format!("announced {n} {}, {} new\n", plural(n, "route"), a.added)
    })?;
    Ok(EXIT_OK)
}

async fn withdraw(
    ctx: &mut Ctx,
    p: &mut Printer,
    req: api::WithdrawRoutesRequest,
) -> Result<u8, CliError> {
    let n = req.routes.len();
    let resp = call(
        "WithdrawRoutes",
        ctx.timeout,
        ctx.routes().withdraw_routes(req),
    )
    .await?;
    p.emit(
        &WithdrawJson {
            removed: resp.removed,
        },
        |w| {
            format!(
                "withdrew {n} {}, {} removed\n",
                plural(n, "route"),
                w.removed
            )
        },
    )?;
    Ok(EXIT_OK)
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        word.to_string()
    } else {
        format!("{word}s")
    }
}

/// One line of `mbctl watch routes` in table mode:
/// `SEQ KIND ROUTE` (`12 added 100#10.0.1.0/24@2001:db8::1`).
pub fn route_event_line(e: &RouteEventJson, raw: &api::RouteEvent) -> String {
    use api::route_event::Event;
    let detail = match (&e.event, &raw.event) {
        (_, Some(Event::Snapshot(r) | Event::Added(r) | Event::Removed(r))) => format_route(r),
        (RouteEventKind::SnapshotEnd { routes }, _) => {
            format!("{routes} {}", plural(*routes as usize, "route"))
        }
        (RouteEventKind::Lagged { reason }, _) => reason.clone(),
        _ => String::new(),
    };
    let kind = match &e.event {
        RouteEventKind::Snapshot { .. } => "snapshot",
        RouteEventKind::SnapshotEnd { .. } => "snapshot_end",
        RouteEventKind::Added { .. } => "added",
        RouteEventKind::Removed { .. } => "removed",
        RouteEventKind::Lagged { .. } => "lagged",
        RouteEventKind::Unknown => "unknown",
    };
    format!("{} {kind} {detail}", e.sequence)
        .trim_end()
        .to_string()
        + "\n"
}

/// One line of `mbctl watch peers` in table mode:
/// `SEQ up ID REMOTE ROLE STATE`, `SEQ established ID REMOTE ROLE STATE`
/// or `SEQ down ID REMOTE: REASON`.
pub fn peer_event_line(e: &PeerEventJson) -> String {
    let line = match &e.event {
        PeerEventKind::Up { peer } | PeerEventKind::Established { peer } => format!(
            "{} {} {} {} {} {}",
            e.sequence,
            if matches!(e.event, PeerEventKind::Up { .. }) {
                "up"
            } else {
                "established"
            },
            peer.session_id,
            peer.remote_address,
            peer.role,
            peer.state
        ),
        PeerEventKind::Down { peer, reason } => {
            let who = peer
                .as_ref()
                .map(|p| format!("{} {}", p.session_id, p.remote_address))
                .unwrap_or_else(|| "?".into());
            format!("{} down {who}: {}", e.sequence, or_dash(reason))
        }
        PeerEventKind::Lagged { reason } => format!("{} lagged {reason}", e.sequence),
        PeerEventKind::Unknown => format!("{} unknown", e.sequence),
    };
    line + "\n"
}

async fn watch_routes(
    ctx: &mut Ctx,
    p: &mut Printer,
    filter: api::RouteFilter,
) -> Result<u8, CliError> {
    let req = api::WatchRoutesRequest {
        filter: Some(filter),
    };
    let mut stream = call("WatchRoutes", ctx.timeout, ctx.routes().watch_routes(req)).await?;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let msg = tokio::select! {
            _ = &mut ctrl_c => return Ok(EXIT_OK),
            m = stream.message() => m?,
        };
        let Some(ev) = msg else {
            return Ok(EXIT_OK);
        };
        let json = RouteEventJson::from(&ev);
        match p.format {
            Output::Json => p.json(&json, true)?,
            Output::Table => p.text(&route_event_line(&json, &ev))?,
        }
        if let RouteEventKind::Lagged { reason } = json.event {
            return Err(CliError::Lagged(reason));
        }
    }
}

async fn watch_peers(ctx: &mut Ctx, p: &mut Printer) -> Result<u8, CliError> {
    let mut stream = call(
        "WatchPeers",
        ctx.timeout,
        ctx.peers().watch_peers(api::WatchPeersRequest {}),
    )
    .await?;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let msg = tokio::select! {
            _ = &mut ctrl_c => return Ok(EXIT_OK),
            m = stream.message() => m?,
        };
        let Some(ev) = msg else {
            return Ok(EXIT_OK);
        };
        let json = PeerEventJson::from(&ev);
        match p.format {
            Output::Json => p.json(&json, true)?,
            Output::Table => p.text(&peer_event_line(&json))?,
        }
        if let PeerEventKind::Lagged { reason } = json.event {
            return Err(CliError::Lagged(reason));
        }
    }
}

async fn status(ctx: &mut Ctx, p: &mut Printer) -> Result<u8, CliError> {
    let resp = call(
        "GetStatus",
        ctx.timeout,
        ctx.daemon().get_status(api::GetStatusRequest {}),
    )
    .await?;
    p.emit(&StatusJson::from(&resp), status_details)?;
    Ok(EXIT_OK)
}

/// The `key: value` lines of `mbctl status`: the daemon, then the client
/// role's counters when it runs, then each setting given at start that a
/// stored API change overrides.
pub fn status_details(s: &StatusJson) -> String {
    let mut lines = vec![
        ("version", or_dash(&s.version)),
        (
            "started_at",
            s.started_at.clone().unwrap_or_else(|| "-".into()),
        ),
        ("uptime", human_duration(s.uptime_seconds)),
        ("listen_addresses", or_dash(&s.listen_addresses.join(", "))),
        (
            "metrics_address",
            s.metrics_address.clone().unwrap_or_else(|| "-".into()),
        ),
        (
            "http_address",
            s.http_address.clone().unwrap_or_else(|| "-".into()),
        ),
        ("api_socket", or_dash(&s.api_socket)),
        ("state_dir", or_dash(&s.state_dir)),
        ("sessions", s.sessions.to_string()),
        ("routes", s.routes.to_string()),
        ("vnis", s.vnis.to_string()),
        ("next_hops", s.next_hops.to_string()),
        ("injected_routes", s.injected_routes.to_string()),
        ("static_routes", s.static_routes.to_string()),
    ];
    if let Some(c) = &s.client {
        lines.extend([
            (
                "client_servers",
                format!("{} ({} established)", c.servers, c.servers_established),
            ),
            ("client_subscriptions", c.subscriptions.to_string()),
            ("client_mapped_vnis", c.mapped_vnis.to_string()),
            ("client_received_routes", c.received_routes.to_string()),
            ("client_installed_routes", c.installed_routes.to_string()),
            (
                "client_updates_in/out",
                format!("{}/{}", c.updates_received, c.updates_sent),
            ),
        ]);
    }
    for o in &s.overrides {
        lines.push(("overridden", format!("{} -> {}", o.setting, o.replaced_by)));
    }
    key_values(&lines)
}

async fn health(ctx: &mut Ctx, p: &mut Printer) -> Result<u8, CliError> {
    use tonic_health::pb::health_check_response::ServingStatus;
    let mut client = HealthClient::new(ctx.channel.clone());
    let req = HealthCheckRequest {
        service: String::new(),
    };
    let resp = call("Health/Check", ctx.timeout, client.check(req)).await?;
    let status = ServingStatus::try_from(resp.status).unwrap_or(ServingStatus::Unknown);
    let name = status.as_str_name().to_string();
    p.emit(&HealthJson { status: name }, |h| format!("{}\n", h.status))?;
    Ok(if status == ServingStatus::Serving {
        EXIT_OK
    } else {
        EXIT_DAEMON
    })
}

async fn reload(ctx: &mut Ctx, p: &mut Printer) -> Result<u8, CliError> {
    let resp = call(
        "Reload",
        ctx.timeout,
        ctx.daemon().reload(api::ReloadRequest {}),
    )
    .await?;
    let doc = ReloadJson {
        applied: resp.applied,
        needs_restart: resp.needs_restart,
    };
    p.emit(&doc, |r| {
        if r.applied.is_empty() && r.needs_restart.is_empty() {
            return "configuration reloaded: nothing changed\n".into();
        }
        key_values(&[
            ("applied", or_dash(&r.applied.join(", "))),
            ("needs restart", or_dash(&r.needs_restart.join(", "))),
        ])
    })?;
    Ok(EXIT_OK)
}

async fn shutdown(ctx: &mut Ctx, p: &mut Printer) -> Result<u8, CliError> {
    call(
        "Shutdown",
        ctx.timeout,
        ctx.daemon().shutdown(api::ShutdownRequest {}),
    )
    .await?;
    p.emit(
        &ShutdownJson {
            shutting_down: true,
        },
        |_| "metalbondd is shutting down\n".into(),
    )?;
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_route_is_a_usage_error_naming_it() {
        let args = vec![
            "100#10.0.1.0/24@2001:db8::1".to_string(),
            "1#bad@::1".to_string(),
        ];
        let err = parse_routes(&args).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let msg = err.to_string();
        assert!(msg.starts_with("invalid route \"1#bad@::1\": "), "{msg}");
        assert!(!msg.contains('\n'));
        assert_eq!(parse_routes(&args[..1]).unwrap().len(), 1);
    }

    #[test]
    fn filters() {
        use api::route_filter::Origin;
        let f = route_filter(&RoutesArgs {
            vni: Some(7),
            prefix: Some("10.0.1.0/24".into()),
            next_hop: Some("2001:DB8::1".into()),
            kind: Some(RouteTypeArg::Nat),
            origin: Some("LOCAL".into()),
        })
        .unwrap();
        assert_eq!(f.vni, Some(7));
        assert_eq!(f.prefix, "10.0.1.0/24");
        assert_eq!(f.next_hop, "2001:db8::1");
        assert_eq!(f.r#type, api::RouteType::Nat as i32);
        assert_eq!(f.origin, Some(Origin::Local(true)));
        let origin = |o: &str| {
            route_filter(&RoutesArgs {
                origin: Some(o.into()),
                ..Default::default()
            })
            .unwrap()
            .origin
        };
        assert_eq!(origin("12"), Some(Origin::SessionId(12)));
        assert_eq!(
            origin("[2001:db8::7]:40522"),
            Some(Origin::PeerAddress("[2001:db8::7]:40522".into()))
        );
        let empty = route_filter(&RoutesArgs::default()).unwrap();
        assert_eq!(empty, api::RouteFilter::default());
        for bad in [
            RoutesArgs {
                prefix: Some("10.0.0.0".into()),
                ..Default::default()
            },
            RoutesArgs {
                next_hop: Some("host".into()),
                ..Default::default()
            },
            RoutesArgs {
                origin: Some(" ".into()),
                ..Default::default()
            },
        ] {
            assert_eq!(route_filter(&bad).unwrap_err().exit_code(), 2);
        }
    }

    #[test]
    fn client_arguments() {
        assert_eq!(vni_arg("0").unwrap(), 0);
        assert_eq!(vni_arg("16777215").unwrap(), 16_777_215);
        assert_eq!(table_arg("254").unwrap(), 254);
        assert_eq!(table_arg("4294967295").unwrap(), u32::MAX);
        assert_eq!(
            server_arg("[2001:DB8::2]:4711").unwrap(),
            "[2001:db8::2]:4711"
        );
        assert_eq!(server_arg("192.0.2.1:4711").unwrap(), "192.0.2.1:4711");
        assert_eq!(
            server_arg("MetalBond.example:4711").unwrap(),
            "metalbond.example:4711"
        );
        assert_eq!(server_arg("localhost:4711").unwrap(), "localhost:4711");
        for bad in ["16777216", "-1", "x", ""] {
            let err = vni_arg(bad).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad}");
            assert!(!err.to_string().contains('\n'));
        }
        for bad in ["0", "4294967296", "main"] {
            assert_eq!(table_arg(bad).unwrap_err().exit_code(), 2, "{bad}");
        }
        for bad in [
            "2001:db8::2",
            "host",
            "host:99999",
            "bad host:4711",
            "1.2.3:4711",
            ":4711",
            "[::1]:99999",
        ] {
            assert_eq!(server_arg(bad).unwrap_err().exit_code(), 2, "{bad}");
        }
    }

    #[test]
    fn received_table_columns() {
        let routes = vec![
            ReceivedRouteJson::from(&api::ReceivedRoute {
                route: Some(parse_route("200#10.0.2.0/24@2001:db8::2#nat#1024#2048").unwrap()),
                servers: vec!["[2001:db8::a]:4711".into(), "[2001:db8::b]:4711".into()],
                installed_tables: vec![200, 201],
            }),
            ReceivedRouteJson::from(&api::ReceivedRoute {
                route: Some(parse_route("100#10.0.1.0/24@2001:db8::1").unwrap()),
                servers: vec![],
                installed_tables: vec![],
            }),
        ];
        assert_eq!(
            received_table(&routes),
            "VNI  PREFIX       NEXT HOP     TYPE  PORTS      SERVERS                                INSTALLED\n\
             200  10.0.2.0/24  2001:db8::2  nat   1024-2048  [2001:db8::a]:4711,[2001:db8::b]:4711  200,201\n\
             100  10.0.1.0/24  2001:db8::1  std   -          -                                      -\n"
        );
    }

    #[test]
    fn peer_selectors() {
        use api::get_peer_request::Peer;
        assert_eq!(peer_selector("12"), Peer::SessionId(12));
        assert_eq!(
            peer_selector("2001:db8::7"),
            Peer::Address("2001:db8::7".into())
        );
        assert_eq!(
            peer_selector("[2001:db8::7]:40522"),
            Peer::Address("[2001:db8::7]:40522".into())
        );
    }

    #[test]
    fn routes_table_columns() {
        let entries = vec![
            RouteEntryJson::from(&api::RouteEntry {
                route: Some(parse_route("200#10.0.2.0/24@2001:db8::2#nat#1024#2048").unwrap()),
                announcers: vec![api::Announcer {
                    kind: Some(api::announcer::Kind::Api(true)),
                }],
            }),
            RouteEntryJson::from(&api::RouteEntry {
                route: Some(parse_route("100#10.0.1.0/24@2001:db8::1").unwrap()),
                announcers: vec![],
            }),
        ];
        assert_eq!(
            routes_table(&entries),
            "VNI  PREFIX       NEXT HOP     TYPE  PORTS      ANNOUNCERS\n\
             200  10.0.2.0/24  2001:db8::2  nat   1024-2048  api\n\
             100  10.0.1.0/24  2001:db8::1  std   -          -\n"
        );
    }

    #[test]
    fn event_lines() {
        use api::route_event::Event;
        let ev = api::RouteEvent {
            sequence: 3,
            event: Some(Event::Added(parse_route("1#10.0.0.0/8@::1#lb").unwrap())),
        };
        assert_eq!(
            route_event_line(&(&ev).into(), &ev),
            "3 added 1#10.0.0.0/8@::1#lb\n"
        );
        let ev = api::RouteEvent {
            sequence: 4,
            event: Some(Event::SnapshotEnd(api::SnapshotEnd { routes: 2 })),
        };
        assert_eq!(
            route_event_line(&(&ev).into(), &ev),
            "4 snapshot_end 2 routes\n"
        );
        let pe = api::PeerEvent {
            sequence: 5,
            event: Some(api::peer_event::Event::Down(api::PeerDown {
                peer: Some(api::Peer {
                    session_id: 2,
                    remote_address: "[::1]:9".into(),
                    ..Default::default()
                }),
                reason: "keepalive timeout".into(),
            })),
        };
        assert_eq!(
            peer_event_line(&(&pe).into()),
            "5 down 2 [::1]:9: keepalive timeout\n"
        );
    }
}
