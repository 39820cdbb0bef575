//! gRPC clients of the control API over the daemon's Unix socket.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use metalbond_proto::api as pb;
use tonic::transport::{Channel, Endpoint};

/// Clients of every API service, sharing one connection.
#[derive(Clone)]
pub struct Api {
    pub channel: Channel,
    pub routes: pb::route_service_client::RouteServiceClient<Channel>,
    pub peers: pb::peer_service_client::PeerServiceClient<Channel>,
    pub vnis: pb::vni_service_client::VniServiceClient<Channel>,
    pub daemon: pb::daemon_service_client::DaemonServiceClient<Channel>,
    pub client: pb::client_service_client::ClientServiceClient<Channel>,
    pub fleet: pb::fleet_service_client::FleetServiceClient<Channel>,
}

/// Connects to the API socket at `path` (bounded).
pub async fn connect(path: &Path) -> Api {
    connect_endpoint(path, Endpoint::try_from("http://localhost").unwrap()).await
}

/// Like [`connect`], with the smallest HTTP/2 flow-control windows, so that a
/// client that does not read stops the server within 64 KiB (hyper's
/// defaults let a client buffer megabytes it has not read).
pub async fn connect_small_windows(path: &Path) -> Api {
    let endpoint = Endpoint::try_from("http://localhost")
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535);
    connect_endpoint(path, endpoint).await
}

async fn connect_endpoint(path: &Path, endpoint: Endpoint) -> Api {
    let path: PathBuf = path.to_path_buf();
    let connect = endpoint.connect_with_connector(tower::service_fn(move |_| {
        let path = path.clone();
        async move {
            let stream = tokio::net::UnixStream::connect(path).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    }));
    let channel = tokio::time::timeout(super::T, connect)
        .await
        .expect("connecting to the API timed out")
        .expect("connect to the API socket");
    Api {
        routes: pb::route_service_client::RouteServiceClient::new(channel.clone()),
        peers: pb::peer_service_client::PeerServiceClient::new(channel.clone()),
        vnis: pb::vni_service_client::VniServiceClient::new(channel.clone()),
        daemon: pb::daemon_service_client::DaemonServiceClient::new(channel.clone()),
        client: pb::client_service_client::ClientServiceClient::new(channel.clone()),
        fleet: pb::fleet_service_client::FleetServiceClient::new(channel.clone()),
        channel,
    }
}

/// An API route from the text form (`100#10.0.1.0/24@2001:db8::1#nat#1#2`).
pub fn api_route(text: &str) -> pb::Route {
    let r = super::route(text);
    let hop = r.next_hop;
    let kind = match hop.kind.0 {
        0 => pb::RouteType::Standard,
        1 => pb::RouteType::Nat,
        2 => pb::RouteType::LoadbalancerTarget,
        _ => pb::RouteType::Other,
    };
    pb::Route {
        vni: r.vni.0,
        prefix: r.dest.to_string(),
        next_hop: Some(pb::NextHop {
            address: hop.addr.to_string(),
            r#type: kind as i32,
            nat_port_from: u32::from(hop.nat_from),
            nat_port_to: u32::from(hop.nat_to),
            target_vni: hop.target_vni,
            wire_type: hop.kind.0,
        }),
    }
}

/// The text form of an API route (for comparisons).
pub fn route_text(r: &pb::Route) -> String {
    let hop = r.next_hop.as_ref().unwrap();
    let mut s = format!("{}#{}@{}", r.vni, r.prefix, hop.address);
    match pb::RouteType::try_from(hop.r#type) {
        Ok(pb::RouteType::Nat) => {
            s.push_str(&format!("#nat#{}#{}", hop.nat_port_from, hop.nat_port_to))
        }
        Ok(pb::RouteType::LoadbalancerTarget) => s.push_str("#lb"),
        _ => {}
    }
    s
}

/// Every session of the daemon (`ListPeers`).
pub async fn list_peers(api: &mut Api) -> Vec<pb::Peer> {
    api.peers
        .list_peers(pb::ListPeersRequest {})
        .await
        .expect("ListPeers")
        .into_inner()
        .peers
}

/// Every route of a listing, following page tokens.
pub async fn list_all(
    api: &mut Api,
    filter: Option<pb::RouteFilter>,
    page_size: u32,
) -> Vec<pb::RouteEntry> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = api
            .routes
            .list_routes(pb::ListRoutesRequest {
                filter: filter.clone(),
                page_size,
                page_token: token,
            })
            .await
            .expect("ListRoutes")
            .into_inner();
        out.extend(page.routes);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

/// Announces the routes `texts` (text form) through the API at `sock`.
pub async fn inject(sock: &Path, texts: &[&str]) {
    let mut api = connect(sock).await;
    api.routes
        .announce_routes(pb::AnnounceRoutesRequest {
            routes: texts.iter().map(|t| api_route(t)).collect(),
            allow_existing: false,
        })
        .await
        .expect("AnnounceRoutes");
}

/// Withdraws the routes `texts` (text form) through the API at `sock`.
pub async fn withdraw(sock: &Path, texts: &[&str]) {
    let mut api = connect(sock).await;
    api.routes
        .withdraw_routes(pb::WithdrawRoutesRequest {
            routes: texts.iter().map(|t| api_route(t)).collect(),
            ..Default::default()
        })
        .await
        .expect("WithdrawRoutes");
}

/// Starts a daemon whose API also listens on a free TCP port of 127.0.0.1
/// (`extra_api_keys`: more lines of the `[api]` section, e.g.
/// `tcp_read_only = true`), once that listener is up. Returns the port.
pub async fn start_with_tcp_api(extra_api_keys: &str) -> (super::Daemon, u16) {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = super::unique_temp_dir();
    let config = dir.join("metalbondd.toml");
    std::fs::write(
        &config,
        format!("[api]\ntcp_listen = \"127.0.0.1:{port}\"\n{extra_api_keys}"),
    )
    .unwrap();
    let d = super::Daemon::start(&["--config", config.to_str().unwrap()]);
    assert!(
        d.wait_for_log("control API listening on TCP", super::T)
            .await
    );
    (d, port)
}
