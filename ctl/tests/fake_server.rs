//! Runs the built `mbctl` binary against an in-process fake metalbondd: a
//! tonic server with canned answers on a temporary Unix socket. This tests
//! the CLI (requests, paging, tables, JSON, exit codes) without the daemon.

use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metalbond_proto::api::{self, *};
use prost_types::{Duration as PbDuration, Timestamp};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// A stream of `events`, numbered 1, 2, 3, ... by `make(sequence, event)`.
fn numbered<E, T: Send + 'static>(
    events: Vec<E>,
    make: impl Fn(u64, E) -> T,
) -> Response<EventStream<T>> {
    let items: Vec<Result<T, Status>> = events
        .into_iter()
        .enumerate()
        .map(|(i, e)| Ok(make(i as u64 + 1, e)))
        .collect();
    Response::new(Box::pin(tokio_stream::iter(items)))
}

/// What the fake server was asked.
#[derive(Default)]
struct Seen {
    list_routes: Vec<ListRoutesRequest>,
    announce: Vec<AnnounceRoutesRequest>,
    withdraw: Vec<WithdrawRoutesRequest>,
    get_peer: Vec<GetPeerRequest>,
    reset_peer: Vec<ResetPeerRequest>,
    shutdowns: usize,
    add_server: Vec<AddServerRequest>,
    remove_server: Vec<RemoveServerRequest>,
    subscribe: Vec<SubscribeRequest>,
    unsubscribe: Vec<UnsubscribeRequest>,
    set_mapping: Vec<SetTableMappingRequest>,
    remove_mapping: Vec<RemoveTableMappingRequest>,
    list_received: Vec<ListReceivedRoutesRequest>,
}

#[derive(Clone, Default)]
struct Fake {
    seen: Arc<Mutex<Seen>>,
    /// Answer GetStatus only after this long.
    status_delay: Duration,
    /// GetStatus: the overridden settings.
    overrides: Vec<SettingOverride>,
    /// GetStatus: the client role, if it "runs".
    client_status: Option<ClientStatus>,
}

fn route(vni: u32, prefix: &str, nh: &str, kind: RouteType, ports: (u32, u32)) -> Route {
    Route {
        vni,
        prefix: prefix.into(),
        next_hop: Some(NextHop {
            address: nh.into(),
            r#type: kind as i32,
            nat_port_from: ports.0,
            nat_port_to: ports.1,
            target_vni: 0,
            wire_type: 0,
        }),
    }
}

/// A route as the daemon lists it: with its wire type set.
fn listed(vni: u32, prefix: &str, nh: &str, kind: RouteType, ports: (u32, u32)) -> Route {
    let mut r = route(vni, prefix, nh, kind, ports);
    r.next_hop.as_mut().unwrap().wire_type = match kind {
        RouteType::Nat => 1,
        RouteType::LoadbalancerTarget => 2,
        _ => 0,
    };
    r
}

fn peer_announcer(id: u64, addr: &str) -> Announcer {
    Announcer {
        kind: Some(announcer::Kind::Peer(PeerRef {
            session_id: id,
            remote_address: addr.into(),
        })),
    }
}

/// Five routes, served two per page.
fn all_routes() -> Vec<RouteEntry> {
    let api_a = Announcer {
        kind: Some(announcer::Kind::Api(true)),
    };
    let cfg = Announcer {
        kind: Some(announcer::Kind::Config(true)),
    };
    vec![
        RouteEntry {
            route: Some(listed(
                100,
                "10.0.1.0/24",
                "2001:db8::1",
                RouteType::Standard,
                (0, 0),
            )),
            announcers: vec![peer_announcer(16, "[2001:db8::7]:40522")],
        },
        RouteEntry {
            route: Some(listed(
                100,
                "10.0.3.0/24",
                "2001:db8::3",
                RouteType::LoadbalancerTarget,
                (0, 0),
            )),
            announcers: vec![
                peer_announcer(16, "[2001:db8::7]:40522"),
                peer_announcer(17, "[2001:db8::8]:50000"),
            ],
        },
        RouteEntry {
            route: Some(listed(
                200,
                "10.0.2.0/24",
                "2001:db8::2",
                RouteType::Nat,
                (1024, 2048),
            )),
            announcers: vec![api_a.clone()],
        },
        RouteEntry {
            route: Some(listed(
                200,
                "2001:db8:42::/48",
                "2001:db8::4242",
                RouteType::Standard,
                (0, 0),
            )),
            announcers: vec![cfg, api_a],
        },
        RouteEntry {
            route: Some(listed(
                300,
                "192.168.0.0/16",
                "2001:db8::9",
                RouteType::Standard,
                (0, 0),
            )),
            announcers: vec![],
        },
    ]
}

fn peer_one() -> Peer {
    Peer {
        session_id: 16,
        remote_address: "[2001:db8::7]:40522".into(),
        local_address: "[2001:db8::1]:4711".into(),
        role: PeerRole::Server as i32,
        state: SessionState::Established as i32,
        keepalive_seconds: 5,
        connected_at: Some(Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        }),
        uptime: Some(PbDuration {
            seconds: 7500,
            nanos: 0,
        }),
        subscribed_vnis: vec![100, 200],
        routes_announced: 2,
        updates_received: 2,
        updates_sent: 3,
        messages_in: 40,
        messages_out: 41,
        bytes_in: 1000,
        bytes_out: 2000,
        queue_bytes: 0,
        last_error: String::new(),
        extensions: vec!["sync".into()],
        policy_class: "hypervisors".into(),
        routes_refused: 3,
        subscribes_refused: 1,
        last_refusal_reason: "next_hop".into(),
        last_refusal_at: Some(Timestamp {
            seconds: 1_700_000_100,
            nanos: 0,
        }),
        tls_identity: String::new(),
        paced: false,
    }
}

fn peer_two() -> Peer {
    Peer {
        session_id: 17,
        remote_address: "[2001:db8::8]:50000".into(),
        local_address: "[2001:db8::1]:4711".into(),
        role: PeerRole::Server as i32,
        state: SessionState::HelloSent as i32,
        keepalive_seconds: 0,
        connected_at: None,
        uptime: Some(PbDuration {
            seconds: 3,
            nanos: 0,
        }),
        subscribed_vnis: vec![],
        queue_bytes: 16 * 1024,
        last_error: "keepalive timeout".into(),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl route_service_server::RouteService for Fake {
    async fn list_routes(
        &self,
        req: Request<ListRoutesRequest>,
    ) -> Result<Response<ListRoutesResponse>, Status> {
        let req = req.into_inner();
        self.seen.lock().unwrap().list_routes.push(req.clone());
        let filter = req.filter.unwrap_or_default();
        let routes: Vec<RouteEntry> = all_routes()
            .into_iter()
            .filter(|e| {
                filter
                    .vni
                    .is_none_or(|v| e.route.as_ref().unwrap().vni == v)
            })
            .collect();
        let start: usize = match req.page_token.as_str() {
            "" => 0,
            t => t
                .strip_prefix("page-")
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| Status::invalid_argument("page_token: bad"))?,
        };
        let end = (start + 2).min(routes.len());
        let next_page_token = if end < routes.len() {
            format!("page-{end}")
        } else {
            String::new()
        };
        Ok(Response::new(ListRoutesResponse {
            routes: routes[start..end].to_vec(),
            next_page_token,
        }))
    }

    async fn announce_routes(
        &self,
        req: Request<AnnounceRoutesRequest>,
    ) -> Result<Response<AnnounceRoutesResponse>, Status> {
        let req = req.into_inner();
        let n = req.routes.len() as u32;
        let allow = req.allow_existing;
        self.seen.lock().unwrap().announce.push(req);
        if !allow && n > 2 {
            return Err(Status::already_exists("routes[2]: already announced"));
        }
        Ok(Response::new(AnnounceRoutesResponse { added: n }))
    }

    async fn withdraw_routes(
        &self,
        req: Request<WithdrawRoutesRequest>,
    ) -> Result<Response<WithdrawRoutesResponse>, Status> {
        let req = req.into_inner();
        let allow = req.allow_missing;
        self.seen.lock().unwrap().withdraw.push(req);
        if !allow {
            return Err(Status::not_found(
                "routes[0]: not announced through the API",
            ));
        }
        Ok(Response::new(WithdrawRoutesResponse { removed: 0 }))
    }

    type WatchRoutesStream = EventStream<RouteEvent>;

    async fn watch_routes(
        &self,
        req: Request<WatchRoutesRequest>,
    ) -> Result<Response<Self::WatchRoutesStream>, Status> {
        use route_event::Event;
        let filter = req.into_inner().filter.unwrap_or_default();
        let r1 = route(
            100,
            "10.0.1.0/24",
            "2001:db8::1",
            RouteType::Standard,
            (0, 0),
        );
        let r2 = route(100, "10.0.2.0/24", "2001:db8::2", RouteType::Nat, (1, 2));
        let mut events = vec![
            Event::Snapshot(r1.clone()),
            Event::SnapshotEnd(SnapshotEnd { routes: 1 }),
            Event::Added(r2),
            Event::Removed(r1),
        ];
        if filter.vni == Some(666) {
            events.push(Event::Lagged(Lagged {
                reason: "watcher fell 10000 events behind".into(),
            }));
        }
        Ok(numbered(events, |sequence, e| RouteEvent {
            sequence,
            event: Some(e),
        }))
    }
}

#[tonic::async_trait]
impl peer_service_server::PeerService for Fake {
    async fn list_peers(
        &self,
        _: Request<ListPeersRequest>,
    ) -> Result<Response<ListPeersResponse>, Status> {
        Ok(Response::new(ListPeersResponse {
            peers: vec![peer_one(), peer_two()],
        }))
    }

    async fn get_peer(&self, req: Request<GetPeerRequest>) -> Result<Response<Peer>, Status> {
        let req = req.into_inner();
        self.seen.lock().unwrap().get_peer.push(req.clone());
        match req.peer {
            Some(get_peer_request::Peer::SessionId(16)) => Ok(Response::new(peer_one())),
            Some(get_peer_request::Peer::Address(a))
                if a == "2001:db8::7" || a == "[2001:db8::7]:40522" =>
            {
                Ok(Response::new(peer_one()))
            }
            _ => Err(Status::not_found("no such session")),
        }
    }

    async fn reset_peer(
        &self,
        req: Request<ResetPeerRequest>,
    ) -> Result<Response<ResetPeerResponse>, Status> {
        let req = req.into_inner();
        self.seen.lock().unwrap().reset_peer.push(req.clone());
        match req.peer {
            Some(reset_peer_request::Peer::SessionId(16)) => {
                Ok(Response::new(ResetPeerResponse {}))
            }
            Some(reset_peer_request::Peer::Address(a)) if a == "[2001:db8::7]:40522" => {
                Ok(Response::new(ResetPeerResponse {}))
            }
            _ => Err(Status::not_found("no such session")),
        }
    }

    type WatchPeersStream = EventStream<PeerEvent>;

    async fn watch_peers(
        &self,
        _: Request<WatchPeersRequest>,
    ) -> Result<Response<Self::WatchPeersStream>, Status> {
        use peer_event::Event;
        let items = vec![
            Ok(PeerEvent {
                sequence: 1,
                event: Some(Event::Up(peer_one())),
            }),
            Ok(PeerEvent {
                sequence: 2,
                event: Some(Event::Established(peer_one())),
            }),
            Ok(PeerEvent {
                sequence: 3,
                event: Some(Event::Down(PeerDown {
                    peer: Some(peer_two()),
                    reason: "keepalive timeout".into(),
                })),
            }),
        ];
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }
}

#[tonic::async_trait]
impl vni_service_server::VniService for Fake {
    async fn list_vnis(
        &self,
        _: Request<ListVnisRequest>,
    ) -> Result<Response<ListVnisResponse>, Status> {
        Ok(Response::new(ListVnisResponse {
            vnis: vec![
                api::Vni {
                    vni: 100,
                    routes: 2,
                    announcers: 2,
                    subscribers: 1,
                    digest_routes: 2,
                    digest: "0123456789abcdef".into(),
                },
                api::Vni {
                    vni: 16_777_215,
                    routes: 12_345,
                    announcers: 1,
                    subscribers: 0,
                    digest_routes: 12_345,
                    digest: "fedcba9876543210".into(),
                },
            ],
        }))
    }

    async fn get_vni(&self, req: Request<GetVniRequest>) -> Result<Response<api::Vni>, Status> {
        match req.into_inner().vni {
            100 => Ok(Response::new(api::Vni {
                vni: 100,
                routes: 2,
                announcers: 2,
                subscribers: 1,
                digest_routes: 2,
                digest: "0123456789abcdef".into(),
            })),
            vni => Err(Status::not_found(format!("no VNI {vni}"))),
        }
    }
}

#[tonic::async_trait]
impl daemon_service_server::DaemonService for Fake {
    async fn get_status(
        &self,
        _: Request<GetStatusRequest>,
    ) -> Result<Response<api::Status>, Status> {
        tokio::time::sleep(self.status_delay).await;
        Ok(Response::new(api::Status {
            version: "0.1.0".into(),
            started_at: Some(Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            uptime: Some(PbDuration {
                seconds: 187,
                nanos: 0,
            }),
            listen_addresses: vec!["[::]:4711".into(), "0.0.0.0:4711".into()],
            metrics_address: "127.0.0.1:9711".into(),
            http_address: String::new(),
            api_socket: "/run/metalbondd/api.sock".into(),
            state_dir: "/var/lib/metalbondd".into(),
            sessions: 2,
            routes: 5,
            vnis: 3,
            next_hops: 5,
            injected_routes: 2,
            static_routes: 1,
            overrides: self.overrides.clone(),
            client: self.client_status,
            shared_state: None,
        }))
    }

    async fn reload(&self, _: Request<ReloadRequest>) -> Result<Response<ReloadResponse>, Status> {
        Ok(Response::new(ReloadResponse {
            applied: vec!["log_level".into(), "static_routes".into()],
            needs_restart: vec!["listen".into()],
        }))
    }

    async fn get_policy(
        &self,
        _: Request<api::GetPolicyRequest>,
    ) -> Result<Response<api::Policy>, Status> {
        // No policy (the real daemon's answer is tested in
        // tests/e2e_policy_reload.rs).
        Ok(Response::new(api::Policy::default()))
    }

    async fn shutdown(
        &self,
        _: Request<ShutdownRequest>,
    ) -> Result<Response<ShutdownResponse>, Status> {
        self.seen.lock().unwrap().shutdowns += 1;
        Ok(Response::new(ShutdownResponse {}))
    }
}

fn received_routes() -> Vec<ReceivedRoute> {
    vec![
        ReceivedRoute {
            route: Some(listed(
                100,
                "10.0.1.0/24",
                "2001:db8::1",
                RouteType::Standard,
                (0, 0),
            )),
            servers: vec!["[2001:db8::a]:4711".into(), "[2001:db8::b]:4711".into()],
            installed_tables: vec![100],
        },
        ReceivedRoute {
            route: Some(listed(
                200,
                "10.0.2.0/24",
                "2001:db8::2",
                RouteType::Nat,
                (1024, 2048),
            )),
            servers: vec!["[2001:db8::a]:4711".into()],
            installed_tables: vec![],
        },
    ]
}

#[tonic::async_trait]
impl client_service_server::ClientService for Fake {
    type WatchReceivedStream = EventStream<ReceivedEvent>;

    async fn watch_received(
        &self,
        _: Request<WatchReceivedRequest>,
    ) -> Result<Response<Self::WatchReceivedStream>, Status> {
        use received_event::Event;
        let r1 = route(
            100,
            "10.0.1.0/24",
            "2001:db8::1",
            RouteType::Standard,
            (0, 0),
        );
        let r2 = route(100, "10.0.2.0/24", "2001:db8::2", RouteType::Nat, (1, 2));
        let events = vec![
            Event::Snapshot(RouteChunk {
                routes: vec![r1.clone(), r2.clone()],
            }),
            Event::SnapshotEnd(SnapshotEnd { routes: 2 }),
            Event::Synced(VniSynced { vni: 100 }),
            Event::Removed(r1.clone()),
            Event::Lagged(Lagged {
                reason: "this watch fell behind and missed 20000 events".into(),
            }),
            Event::Snapshot(RouteChunk { routes: vec![r2] }),
            Event::SnapshotEnd(SnapshotEnd { routes: 1 }),
            Event::Synced(VniSynced { vni: 100 }),
            Event::Added(r1),
        ];
        Ok(numbered(events, |sequence, e| ReceivedEvent {
            sequence,
            event: Some(e),
        }))
    }

    async fn announce(
        &self,
        _: Request<ClientAnnounceRequest>,
    ) -> Result<Response<ClientAnnounceResponse>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn withdraw(
        &self,
        _: Request<ClientWithdrawRequest>,
    ) -> Result<Response<ClientWithdrawResponse>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn set_announcements(
        &self,
        _: Request<SetAnnouncementsRequest>,
    ) -> Result<Response<SetAnnouncementsResponse>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn list_announcements(
        &self,
        _: Request<ListAnnouncementsRequest>,
    ) -> Result<Response<ListAnnouncementsResponse>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn list_servers(
        &self,
        _: Request<ListServersRequest>,
    ) -> Result<Response<ListServersResponse>, Status> {
        Ok(Response::new(ListServersResponse {
            servers: vec![
                ClientServer {
                    address: "[2001:db8::a]:4711".into(),
                    state: ClientServerState::Up as i32,
                    last_error: String::new(),
                    since: Some(Timestamp {
                        seconds: 1_700_000_000,
                        nanos: 0,
                    }),
                    resolved: vec!["[2001:db8::a]:4711".into()],
                    connected: "[2001:db8::a]:4711".into(),
                    updates_received: 12,
                    updates_sent: 3,
                    extensions: vec!["sync".into()],
                },
                ClientServer {
                    address: "metalbond.example:4711".into(),
                    state: ClientServerState::Up as i32,
                    last_error: String::new(),
                    since: Some(Timestamp {
                        seconds: 1_700_000_001,
                        nanos: 0,
                    }),
                    resolved: vec!["[2001:db8::7]:4711".into(), "192.0.2.7:4711".into()],
                    connected: "192.0.2.7:4711".into(),
                    updates_received: 5,
                    updates_sent: 1,
                    extensions: vec![],
                },
                ClientServer {
                    address: "192.0.2.1:4711".into(),
                    state: ClientServerState::Down as i32,
                    last_error: "connection refused".into(),
                    since: None,
                    resolved: vec!["192.0.2.1:4711".into()],
                    connected: String::new(),
                    updates_received: 0,
                    updates_sent: 0,
                    extensions: vec![],
                },
            ],
        }))
    }

    async fn add_server(
        &self,
        req: Request<AddServerRequest>,
    ) -> Result<Response<AddServerResponse>, Status> {
        let req = req.into_inner();
        let exists = req.address == "[2001:db8::a]:4711";
        self.seen.lock().unwrap().add_server.push(req);
        if exists {
            return Err(Status::already_exists(
                "address: server [2001:db8::a]:4711 is configured already",
            ));
        }
        Ok(Response::new(AddServerResponse {}))
    }

    async fn remove_server(
        &self,
        req: Request<RemoveServerRequest>,
    ) -> Result<Response<RemoveServerResponse>, Status> {
        self.seen
            .lock()
            .unwrap()
            .remove_server
            .push(req.into_inner());
        Ok(Response::new(RemoveServerResponse {}))
    }

    async fn list_subscriptions(
        &self,
        _: Request<ListSubscriptionsRequest>,
    ) -> Result<Response<ListSubscriptionsResponse>, Status> {
        Ok(Response::new(ListSubscriptionsResponse {
            vnis: vec![100, 200, 16_777_215],
        }))
    }

    async fn subscribe(
        &self,
        req: Request<SubscribeRequest>,
    ) -> Result<Response<SubscribeResponse>, Status> {
        self.seen.lock().unwrap().subscribe.push(req.into_inner());
        Ok(Response::new(SubscribeResponse {}))
    }

    async fn unsubscribe(
        &self,
        req: Request<UnsubscribeRequest>,
    ) -> Result<Response<UnsubscribeResponse>, Status> {
        self.seen.lock().unwrap().unsubscribe.push(req.into_inner());
        Ok(Response::new(UnsubscribeResponse {}))
    }

    async fn list_table_mappings(
        &self,
        _: Request<ListTableMappingsRequest>,
    ) -> Result<Response<ListTableMappingsResponse>, Status> {
        Ok(Response::new(ListTableMappingsResponse {
            mappings: vec![
                TableMapping {
                    vni: 100,
                    table: 100,
                },
                TableMapping {
                    vni: 16_777_215,
                    table: 4_000_000_000,
                },
            ],
        }))
    }

    async fn set_table_mapping(
        &self,
        req: Request<SetTableMappingRequest>,
    ) -> Result<Response<SetTableMappingResponse>, Status> {
        self.seen.lock().unwrap().set_mapping.push(req.into_inner());
        Ok(Response::new(SetTableMappingResponse {}))
    }

    async fn remove_table_mapping(
        &self,
        req: Request<RemoveTableMappingRequest>,
    ) -> Result<Response<RemoveTableMappingResponse>, Status> {
        let req = req.into_inner();
        let vni = req.vni;
        self.seen.lock().unwrap().remove_mapping.push(req);
        if vni != 100 {
            return Err(Status::not_found(format!("vni: VNI {vni} is not mapped")));
        }
        Ok(Response::new(RemoveTableMappingResponse {}))
    }

    async fn list_received_routes(
        &self,
        req: Request<ListReceivedRoutesRequest>,
    ) -> Result<Response<ListReceivedRoutesResponse>, Status> {
        let req = req.into_inner();
        let vni = req.vni;
        self.seen.lock().unwrap().list_received.push(req);
        let routes = received_routes()
            .into_iter()
            .filter(|r| vni.is_none_or(|v| r.route.as_ref().unwrap().vni == v))
            .collect();
        Ok(Response::new(ListReceivedRoutesResponse { routes }))
    }
}

/// A running fake daemon.
struct Server {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    seen: Arc<Mutex<Seen>>,
}

/// Starts a fake daemon on its own thread and runtime (it lives until the
/// test process ends).
fn start(fake: Fake, serving: bool) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let seen = fake.seen.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let path = socket.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::UnixListener::bind(&path).unwrap();
            let (reporter, health) = tonic_health::server::health_reporter();
            if !serving {
                reporter
                    .set_service_status("", tonic_health::ServingStatus::NotServing)
                    .await;
            }
            ready_tx.send(()).unwrap();
            tonic::transport::Server::builder()
                .add_service(health)
                .add_service(route_service_server::RouteServiceServer::new(fake.clone()))
                .add_service(peer_service_server::PeerServiceServer::new(fake.clone()))
                .add_service(vni_service_server::VniServiceServer::new(fake.clone()))
                .add_service(client_service_server::ClientServiceServer::new(
                    fake.clone(),
                ))
                .add_service(daemon_service_server::DaemonServiceServer::new(fake))
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
                .await
                .unwrap();
        });
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    Server {
        _dir: dir,
        socket,
        seen,
    }
}

impl Server {
    fn mbctl(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_mbctl"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run mbctl")
    }

    /// Runs mbctl, expects exit 0 and no stderr, returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.mbctl(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: stderr {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs mbctl, expects exit `code` and exactly `stderr` (one
    /// `mbctl: ...` line).
    fn fails(&self, args: &[&str], code: i32, stderr: &str) {
        let out = self.mbctl(args);
        assert_eq!(out.status.code(), Some(code), "{args:?}");
        assert_eq!(String::from_utf8_lossy(&out.stderr), stderr, "{args:?}");
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["-o", "json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }
}

/// Each line of `out` as a JSON document (`watch -o json`).
fn json_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn default_server() -> Server {
    start(Fake::default(), true)
}

#[test]
fn peers_table_and_json() {
    let s = default_server();
    assert_eq!(
        s.ok(&["peers"]),
        "\
ID  REMOTE               ROLE    STATE        KEEPALIVE  UPTIME  VNIS     ANNOUNCED  IN/OUT  QUEUE  EXTENSIONS  LAST ERROR
16  [2001:db8::7]:40522  server  established  5s         2h05m   100,200  2          2/3     0B     sync        -
17  [2001:db8::8]:50000  server  hello_sent   -          3s      -        0          0/0     16KiB  -           keepalive timeout
"
    );
    let v = s.json(&["peers"]);
    let peers = v["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 2);
    assert_eq!(peers[0]["session_id"], 16);
    assert_eq!(peers[0]["role"], "server");
    assert_eq!(peers[0]["remote_address"], "[2001:db8::7]:40522");
    assert_eq!(peers[0]["state"], "established");
    assert_eq!(peers[0]["connected_at"], "2023-11-14T22:13:20Z");
    assert_eq!(peers[0]["uptime_seconds"], 7500);
    assert_eq!(peers[1]["connected_at"], serde_json::Value::Null);
    assert_eq!(peers[1]["last_error"], "keepalive timeout");
    assert_eq!(peers[0]["extensions"], serde_json::json!(["sync"]));
    assert_eq!(peers[1]["extensions"], serde_json::json!([]));
}

/// docs/MBCTL.md shows what `mbctl` prints for the fake's answers, whose
/// session ids and roles are the daemon's (ids from 16, role `server` for
/// accepted sessions): the examples cannot drift from the real output.
#[test]
fn mbctl_md_examples_are_real_output() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/MBCTL.md"))
        .expect("docs/MBCTL.md");
    let s = default_server();
    for (command, args) in [
        ("$ mbctl peers\n", &["peers"][..]),
        ("$ mbctl servers\n", &["servers"][..]),
    ] {
        let shown = format!("{command}{}", s.ok(args));
        assert!(
            doc.contains(&shown),
            "docs/MBCTL.md does not show the real output:\n{shown}"
        );
    }
}

#[test]
fn one_peer_by_id_and_address() {
    let s = default_server();
    let out = s.ok(&["peer", "16"]);
    assert!(
        out.starts_with("session_id:          16\nremote_address:      [2001:db8::7]:40522\n"),
        "{out}"
    );
    assert!(
        out.contains("\nstate:               established\n"),
        "{out}"
    );
    assert!(out.contains("\nsubscribed_vnis:     100,200\n"), "{out}");
    // The peer policy's view of the session (docs/POLICY.md).
    assert!(
        out.contains("\npolicy_class:        hypervisors\n"),
        "{out}"
    );
    assert!(out.contains("\nroutes_refused:      3\n"), "{out}");
    assert!(out.contains("\nsubscribes_refused:  1\n"), "{out}");
    assert!(out.contains("\nlast_refusal_reason: next_hop\n"), "{out}");
    assert!(
        out.contains("\nlast_refusal_at:     2023-11-14T22:15:00Z\n"),
        "{out}"
    );
    let v = s.json(&["peer", "2001:db8::7"]);
    assert_eq!(v["session_id"], 16);
    assert_eq!(v["policy_class"], "hypervisors");
    assert_eq!(v["routes_refused"], 3);
    assert_eq!(v["last_refusal_reason"], "next_hop");
    {
        let seen = s.seen.lock().unwrap();
        assert_eq!(
            seen.get_peer[0].peer,
            Some(get_peer_request::Peer::SessionId(16))
        );
        assert_eq!(
            seen.get_peer[1].peer,
            Some(get_peer_request::Peer::Address("2001:db8::7".into()))
        );
    }

    // NOT_FOUND: exit 1, one line on stderr; in JSON mode the error document on stdout.
    let out = s.mbctl(&["peer", "99"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "mbctl: no such session (NOT_FOUND)\n"
    );
    let out = s.mbctl(&["-o", "json", "peer", "99"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"error": {"code": "NOT_FOUND", "message": "no such session"}})
    );
}

#[test]
fn vnis_table_and_json() {
    let s = default_server();
    assert_eq!(
        s.ok(&["vnis"]),
        "\
VNI       ROUTES  ANNOUNCERS  SUBSCRIBERS  DIGEST
100       2       2           1            0123456789abcdef
16777215  12345   1           0            fedcba9876543210
"
    );
    let v = s.json(&["vnis"]);
    assert_eq!(
        v,
        serde_json::json!({"vnis": [
            {"vni": 100, "routes": 2, "announcers": 2, "subscribers": 1,
             "digest_routes": 2, "digest": "0123456789abcdef"},
            {"vni": 16777215, "routes": 12345, "announcers": 1, "subscribers": 0,
             "digest_routes": 12345, "digest": "fedcba9876543210"}
        ]})
    );
}

#[test]
fn routes_all_pages_table_and_json() {
    let s = default_server();
    assert_eq!(
        s.ok(&["routes"]),
        "\
VNI  PREFIX            NEXT HOP        TYPE  PORTS      ANNOUNCERS
100  10.0.1.0/24       2001:db8::1     std   -          [2001:db8::7]:40522
100  10.0.3.0/24       2001:db8::3     lb    -          [2001:db8::7]:40522,[2001:db8::8]:50000
200  10.0.2.0/24       2001:db8::2     nat   1024-2048  api
200  2001:db8:42::/48  2001:db8::4242  std   -          config,api
300  192.168.0.0/16    2001:db8::9     std   -          -
"
    );
    // Three pages: "", "page-2", "page-4".
    {
        let seen = s.seen.lock().unwrap();
        let tokens: Vec<&str> = seen
            .list_routes
            .iter()
            .map(|r| r.page_token.as_str())
            .collect();
        assert_eq!(tokens, ["", "page-2", "page-4"]);
    }

    let v = s.json(&["routes"]);
    let routes = v["routes"].as_array().unwrap();
    assert_eq!(routes.len(), 5);
    assert_eq!(
        routes[2],
        serde_json::json!({
            "route": {
                "vni": 200,
                "prefix": "10.0.2.0/24",
                "next_hop": {
                    "address": "2001:db8::2",
                    "type": "nat",
                    "nat_port_from": 1024,
                    "nat_port_to": 2048,
                    "target_vni": 0,
                    "wire_type": 1
                }
            },
            "announcers": [{"kind": "api"}]
        })
    );
    assert_eq!(routes[0]["announcers"][0]["kind"], "peer");
    assert_eq!(routes[0]["announcers"][0]["session_id"], 16);
}

#[test]
fn routes_filter_is_sent() {
    let s = default_server();
    let out = s.ok(&[
        "routes",
        "--vni",
        "200",
        "--prefix",
        "10.0.2.0/24",
        "--next-hop",
        "2001:DB8::2",
        "--type",
        "NAT",
        "--origin",
        "[2001:db8::7]:40522",
    ]);
    assert_eq!(out.lines().count(), 3, "{out}");
    let seen = s.seen.lock().unwrap();
    let f = seen.list_routes[0].filter.clone().unwrap();
    assert_eq!(f.vni, Some(200));
    assert_eq!(f.prefix, "10.0.2.0/24");
    assert_eq!(f.next_hop, "2001:db8::2");
    assert_eq!(f.r#type, RouteType::Nat as i32);
    assert_eq!(
        f.origin,
        Some(route_filter::Origin::PeerAddress(
            "[2001:db8::7]:40522".into()
        ))
    );
}

#[test]
fn announce_sends_all_routes_in_one_call() {
    let s = default_server();
    let out = s.ok(&[
        "announce",
        "--allow-existing",
        "100#10.0.1.0/24@2001:db8::1",
        "200#10.0.2.0/24#2001:db8::2#NAT#1024#2048",
        "100#10.0.3.0/24@2001:db8::3#lb",
    ]);
    assert_eq!(out, "announced 3 routes, 3 new\n");
    {
        let seen = s.seen.lock().unwrap();
        assert_eq!(seen.announce.len(), 1);
        let req = &seen.announce[0];
        assert!(req.allow_existing);
        assert_eq!(
            req.routes,
            vec![
                route(
                    100,
                    "10.0.1.0/24",
                    "2001:db8::1",
                    RouteType::Standard,
                    (0, 0)
                ),
                route(
                    200,
                    "10.0.2.0/24",
                    "2001:db8::2",
                    RouteType::Nat,
                    (1024, 2048)
                ),
                route(
                    100,
                    "10.0.3.0/24",
                    "2001:db8::3",
                    RouteType::LoadbalancerTarget,
                    (0, 0)
                ),
            ]
        );
    }

    // The daemon refuses (ALREADY_EXISTS): exit 1.
    s.fails(
        &[
            "announce",
            "1#10.0.0.1/32@::1",
            "1#10.0.0.2/32@::1",
            "1#10.0.0.3/32@::1",
        ],
        1,
        "mbctl: routes[2]: already announced (ALREADY_EXISTS)\n",
    );

    // A bad route: exit 2 and nothing sent.
    let before = s.seen.lock().unwrap().announce.len();
    let out = s.mbctl(&["announce", "1#10.0.0.1/32@::1", "1#10.0.0.1/32@::1#nat#9#1"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(s.seen.lock().unwrap().announce.len(), before);

    let v = s.json(&["announce", "1#10.0.0.1/32@::1"]);
    assert_eq!(v, serde_json::json!({"added": 1}));
}

#[test]
fn withdraw_flags_and_errors() {
    let s = default_server();
    s.fails(
        &["withdraw", "1#10.0.0.1/32@::1"],
        1,
        "mbctl: routes[0]: not announced through the API (NOT_FOUND)\n",
    );
    assert_eq!(
        s.ok(&[
            "withdraw",
            "--allow-missing",
            "1#10.0.0.1/32@::1",
            "2#10.0.0.0/8#::2"
        ]),
        "withdrew 2 routes, 0 removed\n"
    );
    let seen = s.seen.lock().unwrap();
    assert_eq!(seen.withdraw.len(), 2);
    assert!(!seen.withdraw[0].allow_missing);
    assert!(seen.withdraw[1].allow_missing);
    assert_eq!(seen.withdraw[1].routes.len(), 2);
}

#[test]
fn watch_routes_lines_and_lagged() {
    let s = default_server();
    assert_eq!(
        s.ok(&["watch", "routes", "--vni", "100"]),
        "\
1 snapshot 100#10.0.1.0/24@2001:db8::1
2 snapshot_end 1 route
3 added 100#10.0.2.0/24@2001:db8::2#nat#1#2
4 removed 100#10.0.1.0/24@2001:db8::1
"
    );
    let out = s.ok(&["-o", "json", "watch", "routes"]);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0]["sequence"], 1);
    assert_eq!(lines[0]["kind"], "snapshot");
    assert_eq!(lines[0]["route"]["prefix"], "10.0.1.0/24");
    assert_eq!(
        lines[1],
        serde_json::json!({"sequence": 2, "kind": "snapshot_end", "routes": 1})
    );
    assert_eq!(lines[2]["kind"], "added");
    assert_eq!(lines[3]["kind"], "removed");

    // Lagged: the event is printed, then an error, exit 1.
    let out = s.mbctl(&["watch", "routes", "--vni", "666"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.ends_with("5 lagged watcher fell 10000 events behind\n"),
        "{stdout}"
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1);
    assert!(stderr.starts_with("mbctl: watch lagged behind"), "{stderr}");

    let out = s.mbctl(&["-o", "json", "watch", "routes", "--vni", "666"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines = json_lines(&stdout);
    assert_eq!(lines.len(), 6);
    assert_eq!(lines[4]["kind"], "lagged");
    assert_eq!(lines[5]["error"]["code"], "ABORTED");
}

#[test]
fn watch_received_lines_go_on_after_lagged() {
    let s = default_server();
    // The snapshot after `lagged` replaces the view; the watch goes on and
    // ends (exit 0) only with the stream.
    assert_eq!(
        s.ok(&["watch", "received"]),
        "\
1 snapshot 100#10.0.1.0/24@2001:db8::1
1 snapshot 100#10.0.2.0/24@2001:db8::2#nat#1#2
2 snapshot_end 2 routes
3 synced vni 100
4 removed 100#10.0.1.0/24@2001:db8::1
5 lagged this watch fell behind and missed 20000 events
6 snapshot 100#10.0.2.0/24@2001:db8::2#nat#1#2
7 snapshot_end 1 route
8 synced vni 100
9 added 100#10.0.1.0/24@2001:db8::1
"
    );
    let out = s.ok(&["-o", "json", "watch", "received", "--vni", "100"]);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 9);
    assert_eq!(lines[0]["kind"], "snapshot");
    assert_eq!(lines[0]["routes"][1]["prefix"], "10.0.2.0/24");
    assert_eq!(
        lines[2],
        serde_json::json!({"sequence": 3, "kind": "synced", "vni": 100})
    );
    assert_eq!(lines[4]["kind"], "lagged");
    assert_eq!(lines[8]["kind"], "added");
}

#[test]
fn watch_peers_lines() {
    let s = default_server();
    assert_eq!(
        s.ok(&["watch", "peers"]),
        "1 up 16 [2001:db8::7]:40522 server established\n2 established 16 [2001:db8::7]:40522 server established\n3 down 17 [2001:db8::8]:50000: keepalive timeout\n"
    );
    let out = s.ok(&["-o", "json", "watch", "peers"]);
    let lines = json_lines(&out);
    assert_eq!(lines[0]["kind"], "up");
    assert_eq!(lines[0]["peer"]["session_id"], 16);
    assert_eq!(lines[1]["kind"], "established");
    assert_eq!(lines[1]["peer"]["session_id"], 16);
    assert_eq!(lines[2]["kind"], "down");
    assert_eq!(lines[2]["reason"], "keepalive timeout");
}

#[test]
fn peer_reset_by_id_and_address() {
    let s = default_server();
    assert_eq!(
        s.ok(&["peer", "reset", "16"]),
        "reset session 16 (its client reconnects)\n"
    );
    assert_eq!(
        s.json(&["peer", "reset", "[2001:db8::7]:40522"]),
        serde_json::json!({"peer": "[2001:db8::7]:40522", "reset": true})
    );
    s.fails(
        &["peer", "reset", "99"],
        1,
        "mbctl: no such session (NOT_FOUND)\n",
    );
    let seen = s.seen.lock().unwrap();
    assert_eq!(
        seen.reset_peer
            .iter()
            .map(|r| r.peer.clone().unwrap())
            .collect::<Vec<_>>(),
        [
            reset_peer_request::Peer::SessionId(16),
            reset_peer_request::Peer::Address("[2001:db8::7]:40522".into()),
            reset_peer_request::Peer::SessionId(99),
        ]
    );
    // Nothing else was reset or shown.
    assert!(seen.get_peer.is_empty());
}

#[test]
fn one_vni_table_and_json() {
    let s = default_server();
    assert_eq!(
        s.ok(&["vni", "100"]),
        "vni:           100\nroutes:        2\nannouncers:    2\nsubscribers:   1\n\
         digest_routes: 2\ndigest:        0123456789abcdef\n"
    );
    assert_eq!(
        s.json(&["vni", "100"]),
        serde_json::json!({"vni": 100, "routes": 2, "announcers": 2, "subscribers": 1,
                           "digest_routes": 2, "digest": "0123456789abcdef"})
    );
    s.fails(&["vni", "7"], 1, "mbctl: no VNI 7 (NOT_FOUND)\n");
    // Out of range: a usage error, nothing sent.
    assert_eq!(s.mbctl(&["vni", "16777216"]).status.code(), Some(2));
}

#[test]
fn status_of_a_client_role_with_overrides() {
    let s = start(
        Fake {
            overrides: vec![SettingOverride {
                setting: "--install-routes 100#100 (client.install_routes)".into(),
                replaced_by: "VNI 100 unmapped through the API".into(),
            }],
            client_status: Some(ClientStatus {
                servers: 2,
                servers_established: 1,
                subscriptions: 3,
                mapped_vnis: 1,
                received_routes: 40,
                installed_routes: 38,
                updates_received: 45,
                updates_sent: 2,
            }),
            ..Fake::default()
        },
        true,
    );
    let out = s.ok(&["status"]);
    assert!(
        out.ends_with(
            "\
client_servers:          2 (1 established)
client_subscriptions:    3
client_mapped_vnis:      1
client_received_routes:  40
client_installed_routes: 38
client_updates_in/out:   45/2
overridden:              --install-routes 100#100 (client.install_routes) -> VNI 100 unmapped through the API
"
        ),
        "{out}"
    );
    let v = s.json(&["status"]);
    assert_eq!(
        v["overrides"],
        serde_json::json!([{
            "setting": "--install-routes 100#100 (client.install_routes)",
            "replaced_by": "VNI 100 unmapped through the API"
        }])
    );
    assert_eq!(v["client"]["servers_established"], 1);
    assert_eq!(v["client"]["received_routes"], 40);
    assert_eq!(v["client"]["updates_received"], 45);
    // Without the client role: null, no client lines.
    let s = default_server();
    let out = s.ok(&["status"]);
    assert!(!out.contains("client_"), "{out}");
    assert_eq!(s.json(&["status"])["client"], serde_json::Value::Null);
    assert_eq!(s.json(&["status"])["overrides"], serde_json::json!([]));
}

#[test]
fn status_health_reload_shutdown() {
    let s = default_server();
    assert_eq!(
        s.ok(&["status"]),
        "\
version:          0.1.0
started_at:       2023-11-14T22:13:20Z
uptime:           3m07s
listen_addresses: [::]:4711, 0.0.0.0:4711
metrics_address:  127.0.0.1:9711
http_address:     -
api_socket:       /run/metalbondd/api.sock
state_dir:        /var/lib/metalbondd
sessions:         2
routes:           5
vnis:             3
next_hops:        5
injected_routes:  2
static_routes:    1
"
    );
    let v = s.json(&["status"]);
    assert_eq!(v["version"], "0.1.0");
    assert_eq!(v["uptime_seconds"], 187);
    assert_eq!(
        v["listen_addresses"],
        serde_json::json!(["[::]:4711", "0.0.0.0:4711"])
    );
    assert_eq!(v["metrics_address"], "127.0.0.1:9711");
    assert_eq!(v["http_address"], serde_json::Value::Null);

    assert_eq!(s.ok(&["health"]), "SERVING\n");
    assert_eq!(
        s.json(&["health"]),
        serde_json::json!({"status": "SERVING"})
    );

    assert_eq!(
        s.ok(&["reload"]),
        "applied:       log_level, static_routes\nneeds restart: listen\n"
    );
    assert_eq!(
        s.json(&["reload"]),
        serde_json::json!({"applied": ["log_level", "static_routes"], "needs_restart": ["listen"]})
    );

    assert_eq!(s.ok(&["shutdown"]), "metalbondd is shutting down\n");
    assert_eq!(s.seen.lock().unwrap().shutdowns, 1);
}

#[test]
fn not_serving_exits_non_zero() {
    let s = start(Fake::default(), false);
    let out = s.mbctl(&["health"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "NOT_SERVING\n");
}

#[test]
fn slow_daemon_times_out() {
    let s = start(
        Fake {
            status_delay: Duration::from_secs(30),
            ..Fake::default()
        },
        true,
    );
    let started = std::time::Instant::now();
    let out = s.mbctl(&["--timeout", "0.3", "status"]);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "mbctl: GetStatus timed out after 0.3s (see --timeout)\n"
    );
}

#[test]
fn closed_pipe_is_quiet() {
    use std::io::Read;
    use std::process::Stdio;
    let s = default_server();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mbctl"))
        .arg("--socket")
        .arg(&s.socket)
        .arg("routes")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(err.is_empty(), "{err}");
}

#[test]
fn servers_table_json_and_changes() {
    let s = default_server();
    assert_eq!(
        s.ok(&["servers"]),
        "\
ADDRESS                 STATE  CONNECTED           RESOLVED                           SINCE                 IN/OUT  EXTENSIONS  LAST ERROR
[2001:db8::a]:4711      up     [2001:db8::a]:4711  -                                  2023-11-14T22:13:20Z  12/3    sync        -
metalbond.example:4711  up     192.0.2.7:4711      [2001:db8::7]:4711,192.0.2.7:4711  2023-11-14T22:13:21Z  5/1     -           -
192.0.2.1:4711          down   -                   -                                  -                     0/0     -           connection refused
"
    );
    assert_eq!(
        s.json(&["servers"]),
        serde_json::json!({"servers": [
            {"address": "[2001:db8::a]:4711", "state": "up",
             "resolved": ["[2001:db8::a]:4711"], "connected": "[2001:db8::a]:4711",
             "since": "2023-11-14T22:13:20Z", "last_error": "",
             "updates_received": 12, "updates_sent": 3, "extensions": ["sync"]},
            {"address": "metalbond.example:4711", "state": "up",
             "resolved": ["[2001:db8::7]:4711", "192.0.2.7:4711"], "connected": "192.0.2.7:4711",
             "since": "2023-11-14T22:13:21Z", "last_error": "",
             "updates_received": 5, "updates_sent": 1, "extensions": []},
            {"address": "192.0.2.1:4711", "state": "down",
             "resolved": ["192.0.2.1:4711"], "connected": null,
             "since": null, "last_error": "connection refused",
             "updates_received": 0, "updates_sent": 0, "extensions": []}
        ]})
    );

    assert_eq!(
        s.ok(&["server", "add", "[2001:DB8::2]:4711"]),
        "added server [2001:db8::2]:4711\n"
    );
    // A name: sent lower-cased, for the daemon to resolve.
    assert_eq!(
        s.ok(&["server", "add", "MetalBond.example:4711"]),
        "added server metalbond.example:4711\n"
    );
    assert_eq!(
        s.json(&["server", "remove", "192.0.2.1:4711"]),
        serde_json::json!({"address": "192.0.2.1:4711", "removed": true})
    );
    s.fails(
        &["server", "add", "[2001:db8::a]:4711"],
        1,
        "mbctl: address: server [2001:db8::a]:4711 is configured already (ALREADY_EXISTS)\n",
    );
    // A bad address: exit 2 and nothing sent.
    let out = s.mbctl(&["server", "add", "2001:db8::2"]);
    assert_eq!(out.status.code(), Some(2));
    let seen = s.seen.lock().unwrap();
    let added: Vec<&str> = seen.add_server.iter().map(|r| r.address.as_str()).collect();
    assert_eq!(
        added,
        [
            "[2001:db8::2]:4711",
            "metalbond.example:4711",
            "[2001:db8::a]:4711"
        ]
    );
    assert_eq!(seen.remove_server[0].address, "192.0.2.1:4711");
}

#[test]
fn subscriptions_table_json_and_changes() {
    let s = default_server();
    assert_eq!(s.ok(&["subscriptions"]), "VNI\n100\n200\n16777215\n");
    assert_eq!(
        s.json(&["subscriptions"]),
        serde_json::json!({"vnis": [100, 200, 16777215]})
    );
    assert_eq!(s.ok(&["subscribe", "300"]), "subscribed to VNI 300\n");
    assert_eq!(
        s.json(&["unsubscribe", "16777215"]),
        serde_json::json!({"vni": 16777215, "unsubscribed": true})
    );
    s.fails(
        &["subscribe", "16777216"],
        2,
        "mbctl: invalid VNI \"16777216\": not a number from 0 to 16777215\n",
    );
    let seen = s.seen.lock().unwrap();
    assert_eq!(seen.subscribe, vec![SubscribeRequest { vni: 300 }]);
    assert_eq!(
        seen.unsubscribe,
        vec![UnsubscribeRequest { vni: 16_777_215 }]
    );
}

#[test]
fn mappings_table_json_and_changes() {
    let s = default_server();
    assert_eq!(
        s.ok(&["mappings"]),
        "\
VNI       TABLE
100       100
16777215  4000000000
"
    );
    assert_eq!(
        s.json(&["mappings"]),
        serde_json::json!({"mappings": [
            {"vni": 100, "table": 100},
            {"vni": 16777215, "table": 4000000000u32}
        ]})
    );
    assert_eq!(
        s.ok(&["map", "200", "201"]),
        "mapped VNI 200 to table 201\n"
    );
    assert_eq!(
        s.json(&["map", "300", "301"]),
        serde_json::json!({"vni": 300, "table": 301})
    );
    assert_eq!(s.ok(&["unmap", "100"]), "unmapped VNI 100\n");
    s.fails(
        &["unmap", "7"],
        1,
        "mbctl: vni: VNI 7 is not mapped (NOT_FOUND)\n",
    );
    // Table 0: exit 2, nothing sent.
    let out = s.mbctl(&["map", "200", "0"]);
    assert_eq!(out.status.code(), Some(2));
    let seen = s.seen.lock().unwrap();
    assert_eq!(
        seen.set_mapping,
        vec![
            SetTableMappingRequest {
                vni: 200,
                table: 201
            },
            SetTableMappingRequest {
                vni: 300,
                table: 301
            },
        ]
    );
    assert_eq!(seen.remove_mapping.len(), 2);
}

#[test]
fn received_table_and_json() {
    let s = default_server();
    assert_eq!(
        s.ok(&["received"]),
        "\
VNI  PREFIX       NEXT HOP     TYPE  PORTS      SERVERS                                INSTALLED
100  10.0.1.0/24  2001:db8::1  std   -          [2001:db8::a]:4711,[2001:db8::b]:4711  100
200  10.0.2.0/24  2001:db8::2  nat   1024-2048  [2001:db8::a]:4711                     -
"
    );
    let v = s.json(&["received", "--vni", "200"]);
    assert_eq!(
        v,
        serde_json::json!({"routes": [{
            "route": {
                "vni": 200,
                "prefix": "10.0.2.0/24",
                "next_hop": {
                    "address": "2001:db8::2",
                    "type": "nat",
                    "nat_port_from": 1024,
                    "nat_port_to": 2048,
                    "target_vni": 0,
                    "wire_type": 1
                }
            },
            "servers": ["[2001:db8::a]:4711"],
            "installed_tables": []
        }]})
    );
    let seen = s.seen.lock().unwrap();
    let vnis: Vec<Option<u32>> = seen.list_received.iter().map(|r| r.vni).collect();
    assert_eq!(vnis, [None, Some(200)]);
}
