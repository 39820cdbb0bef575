//! Sends a checked request to the daemon and hands the answer to the
//! printer: one function per request, each a call (or a stream) and the
//! document it makes; the text of table mode is `render`'s.

use std::path::PathBuf;
use std::time::Duration;

use clap::CommandFactory;
use metalbond_proto::api::{
    self, client_service_client::ClientServiceClient, daemon_service_client::DaemonServiceClient,
    peer_service_client::PeerServiceClient, route_service_client::RouteServiceClient,
    vni_service_client::VniServiceClient,
};
use tonic::transport::Channel;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

use crate::cli::Cli;
use crate::client::{call, connect, default_socket};
use crate::error::{CliError, EXIT_DAEMON, EXIT_OK};
use crate::model::*;
use crate::printer::Printer;
use crate::render;
use crate::request::Request;

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
        Request::Completions(_) => unreachable!("printed above"),
    }
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
    p.emit(&doc, |d| render::peers::peers_table(&d.peers))?;
    Ok(EXIT_OK)
}

async fn peer(
    ctx: &mut Ctx,
    p: &mut Printer,
    sel: api::get_peer_request::Peer,
) -> Result<u8, CliError> {
    let req = api::GetPeerRequest { peer: Some(sel) };
    let resp = call("GetPeer", ctx.timeout, ctx.peers().get_peer(req)).await?;
    p.emit(&PeerJson::from(&resp), render::peers::peer_details)?;
    Ok(EXIT_OK)
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
        render::peers::peer_reset,
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
    p.emit(&VniJson::from(&resp), render::vnis::vni_details)?;
    Ok(EXIT_OK)
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
    p.emit(&doc, |d| render::vnis::vnis_table(&d.vnis))?;
    Ok(EXIT_OK)
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
    p.emit(&doc, |d| render::routes::routes_table(&d.routes))?;
    Ok(EXIT_OK)
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
    p.emit(&doc, |d| render::client::servers_table(&d.servers))?;
    Ok(EXIT_OK)
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
        render::client::server_added,
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
        render::client::server_removed,
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
    p.emit(&doc, |d| render::client::subscriptions_table(&d.vnis))?;
    Ok(EXIT_OK)
}

async fn subscribe(ctx: &mut Ctx, p: &mut Printer, vni: u32) -> Result<u8, CliError> {
    let req = api::SubscribeRequest { vni };
    call("Subscribe", ctx.timeout, ctx.client().subscribe(req)).await?;
    p.emit(
        &SubscribedJson {
            vni,
            subscribed: true,
        },
        render::client::subscribed,
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
        render::client::unsubscribed,
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
    p.emit(&doc, |d| render::client::mappings_table(&d.mappings))?;
    Ok(EXIT_OK)
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
    p.emit(&doc, render::client::mapped)?;
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
        render::client::unmapped,
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
    p.emit(&doc, |d| render::client::received_table(&d.routes))?;
    Ok(EXIT_OK)
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
        render::routes::announced(n, a)
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
        |w| render::routes::withdrew(n, w),
    )?;
    Ok(EXIT_OK)
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
        p.event(&json, |e| render::events::route_event_line(e, &ev))?;
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
        p.event(&json, render::events::peer_event_line)?;
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
    p.emit(&StatusJson::from(&resp), render::daemon::status_details)?;
    Ok(EXIT_OK)
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
    p.emit(&HealthJson { status: name }, render::daemon::health)?;
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
    p.emit(&doc, render::daemon::reloaded)?;
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
        render::daemon::shutting_down,
    )?;
    Ok(EXIT_OK)
}
