//! The control API end to end: the real binary, its real Unix socket, gRPC
//! clients generated from the same .proto, MetalBond peers over TCP.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::api::{api_route, connect, list_all, route_text};
use common::*;
use metalbond_proto::api as pb;
use tonic::Code;

fn local_filter() -> Option<pb::RouteFilter> {
    Some(pb::RouteFilter {
        origin: Some(pb::route_filter::Origin::Local(true)),
        ..Default::default()
    })
}

#[tokio::test]
async fn status_health_and_reflection() {
    let d = Daemon::start(&[]);
    let mut api = connect(&d.api_socket()).await;
    let status = api
        .daemon
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(status.listen_addresses, vec![d.addr.to_string()]);
    assert_eq!(status.api_socket, d.api_socket().display().to_string());
    assert_eq!(status.state_dir, d.state_dir().display().to_string());
    assert_eq!((status.sessions, status.routes), (0, 0));

    let mut health = tonic_health::pb::health_client::HealthClient::new(api.channel.clone());
    for service in ["", "metalbondd.v1.RouteService"] {
        let answer = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            answer.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
    }

    // Both reflection versions list our services (what grpcurl asks first).
    use tonic_reflection::pb::{v1, v1alpha};
    let mut v1c = v1::server_reflection_client::ServerReflectionClient::new(api.channel.clone());
    let req = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut stream = v1c
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let reply = stream.message().await.unwrap().unwrap();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        reply.message_response
    else {
        panic!("unexpected reflection reply {reply:?}")
    };
    let names: BTreeSet<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "metalbondd.v1.RouteService",
        "metalbondd.v1.PeerService",
        "metalbondd.v1.VniService",
        "metalbondd.v1.DaemonService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.contains(expected),
            "{expected} missing from {names:?}"
        );
    }
    let mut alpha =
        v1alpha::server_reflection_client::ServerReflectionClient::new(api.channel.clone());
    let req = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "metalbondd.v1.RouteService".into(),
            ),
        ),
    };
    let mut stream = alpha
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let reply = stream.message().await.unwrap().unwrap();
    assert!(
        matches!(
            reply.message_response,
            Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()
        ),
        "{reply:?}"
    );
}

#[tokio::test]
async fn injected_routes_are_distributed_listed_and_withdrawn() {
    let d = Daemon::start(&[]);
    let mut sub = RawPeer::established(d.addr).await;
    sub.subscribe(100).await;
    let mut api = connect(&d.api_socket()).await;
    let texts = [
        "100#10.0.1.0/24@2001:db8::1",
        "100#2001:db8:100::/48@2001:db8::2#nat#1024#2048",
        "100#10.0.3.0/24@2001:db8::3#lb",
    ];
    let added = api
        .routes
        .announce_routes(pb::AnnounceRoutesRequest {
            routes: texts.iter().map(|t| api_route(t)).collect(),
            allow_existing: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(added.added, 3);
    let want: Vec<_> = texts.iter().map(|t| add(route(t))).collect();
    sub.expect_exactly(&want, "injected routes").await;

    let listed = list_all(&mut api, local_filter(), 0).await;
    let got: BTreeSet<String> = listed
        .iter()
        .map(|e| route_text(e.route.as_ref().unwrap()))
        .collect();
    assert_eq!(got, texts.iter().map(|t| t.to_string()).collect());
    for e in &listed {
        assert_eq!(e.announcers.len(), 1);
        assert_eq!(
            e.announcers[0].kind,
            Some(pb::announcer::Kind::Api(true)),
            "{e:?}"
        );
    }

    api.routes
        .withdraw_routes(pb::WithdrawRoutesRequest {
            routes: vec![api_route(texts[0])],
            allow_missing: false,
        })
        .await
        .unwrap();
    assert_eq!(sub.expect_update(T).await, rem(route(texts[0])));
    assert_eq!(list_all(&mut api, local_filter(), 0).await.len(), 2);
}

#[tokio::test]
async fn bad_api_input_gets_the_right_code_and_changes_nothing() {
    let d = Daemon::start(&[]);
    let mut sub = RawPeer::established(d.addr).await;
    sub.subscribe(100).await;
    let mut api = connect(&d.api_socket()).await;
    let mut bad_prefix = api_route("100#10.0.0.0/24@2001:db8::1");
    bad_prefix.prefix = "10.0.0.0/33".into();
    let mut bad_vni = api_route("100#10.0.0.0/24@2001:db8::1");
    bad_vni.vni = 1 << 24;
    let mut nat_without_ports = api_route("100#10.0.0.0/24@2001:db8::1");
    nat_without_ports.next_hop.as_mut().unwrap().r#type = pb::RouteType::Nat as i32;
    let good = api_route("100#10.9.0.0/24@2001:db8::9");
    for (routes, field) in [
        (vec![good.clone(), bad_prefix], "routes[1].prefix"),
        (vec![bad_vni], "routes[0].vni"),
        (vec![nat_without_ports], "routes[0].next_hop.nat_port_from"),
    ] {
        let err = api
            .routes
            .announce_routes(pb::AnnounceRoutesRequest {
                routes,
                allow_existing: false,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().starts_with(field), "{}", err.message());
    }
    let err = api
        .routes
        .withdraw_routes(pb::WithdrawRoutesRequest {
            routes: vec![good.clone()],
            allow_missing: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    // Nothing was applied, not even the good route of the rejected batch.
    assert!(list_all(&mut api, None, 0).await.is_empty());
    sub.expect_no_update(QUIET).await;

    // A duplicate is ALREADY_EXISTS unless allowed, and changes nothing.
    let announce = |allow_existing| pb::AnnounceRoutesRequest {
        routes: vec![good.clone()],
        allow_existing,
    };
    api.routes.announce_routes(announce(false)).await.unwrap();
    assert_eq!(
        sub.expect_update(T).await,
        add(route("100#10.9.0.0/24@2001:db8::9"))
    );
    let err = api
        .routes
        .announce_routes(announce(false))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    let again = api.routes.announce_routes(announce(true)).await.unwrap();
    assert_eq!(again.into_inner().added, 0);
    sub.expect_no_update(QUIET).await;
    assert_eq!(list_all(&mut api, None, 0).await.len(), 1);

    let err = api
        .peers
        .get_peer(pb::GetPeerRequest {
            peer: Some(pb::get_peer_request::Peer::Address("not an address".into())),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = api
        .vnis
        .get_vni(pb::GetVniRequest { vni: 4242 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = api
        .routes
        .list_routes(pb::ListRoutesRequest {
            page_token: "garbage".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(d.is_alive());
}

#[tokio::test]
async fn paging_lists_every_route_exactly_once() {
    let d = Daemon::start(&[]);
    let mut api = connect(&d.api_socket()).await;
    let routes: Vec<pb::Route> = (0..2500u32)
        .map(|i| {
            api_route(&format!(
                "{}#10.{}.{}.0/24@2001:db8::1",
                i % 3,
                i / 256,
                i % 256
            ))
        })
        .collect();
    api.routes
        .announce_routes(pb::AnnounceRoutesRequest {
            routes: routes.clone(),
            allow_existing: false,
        })
        .await
        .unwrap();
    let first = api
        .routes
        .list_routes(pb::ListRoutesRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.routes.len(), 1000);
    assert!(!first.next_page_token.is_empty());
    let all = list_all(&mut api, None, 1000).await;
    let mut seen = BTreeMap::new();
    for e in &all {
        *seen
            .entry(route_text(e.route.as_ref().unwrap()))
            .or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2500);
    assert!(seen.values().all(|&n| n == 1));
    let vni1 = list_all(
        &mut api,
        Some(pb::RouteFilter {
            vni: Some(1),
            ..Default::default()
        }),
        100,
    )
    .await;
    assert_eq!(vni1.len(), 2500 / 3);
}

#[tokio::test]
async fn peers_are_listed_watched_and_reset() {
    let d = Daemon::start(&[]);
    let mut api = connect(&d.api_socket()).await;
    let mut watch = api
        .peers
        .watch_peers(pb::WatchPeersRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut peer = RawPeer::established(d.addr).await;
    peer.subscribe(7).await;
    let r = route("7#10.7.0.0/16@2001:db8::7");
    peer.announce(r).await;
    let mut other = RawPeer::established(d.addr).await;
    barrier(&mut other, &mut peer, 99).await;

    let up = tokio::time::timeout(T, watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(up.sequence, 1);
    let Some(pb::peer_event::Event::Up(p)) = up.event else {
        panic!("{up:?}")
    };
    assert_eq!(p.remote_address, peer.local.to_string());

    let listed = api::list_peers(&mut api).await;
    assert_eq!(listed.len(), 2);
    let me = api
        .peers
        .get_peer(pb::GetPeerRequest {
            peer: Some(pb::get_peer_request::Peer::Address(peer.local.to_string())),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.state, pb::SessionState::Established as i32);
    assert_eq!(me.role, pb::PeerRole::Server as i32);
    assert_eq!(me.keepalive_seconds, DEFAULT_KEEPALIVE);
    assert_eq!(me.subscribed_vnis, vec![7]);
    assert_eq!(me.routes_announced, 2, "its route and the barrier marker");
    assert!(me.updates_received >= 2 && me.messages_in >= 4 && me.bytes_in > 0);

    api.peers
        .reset_peer(pb::ResetPeerRequest {
            peer: Some(pb::reset_peer_request::Peer::SessionId(me.session_id)),
        })
        .await
        .unwrap();
    peer.expect_closed(T).await;
    // Its routes are withdrawn like on any disconnect.
    let mut sub = RawPeer::established(d.addr).await;
    sub.subscribe(7).await;
    sub.expect_no_update(QUIET).await;
    let reason = d.expect_close_reason(peer.local, &["reset"]).await;
    assert!(reason.contains("operator"), "{reason}");
    // The watch saw it go, with the reason.
    let down = loop {
        let e = tokio::time::timeout(T, watch.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Some(pb::peer_event::Event::Down(down)) = e.event {
            break down;
        }
    };
    assert_eq!(down.peer.unwrap().session_id, me.session_id);
    assert!(down.reason.contains("operator"));

    let err = api
        .peers
        .reset_peer(pb::ResetPeerRequest {
            peer: Some(pb::reset_peer_request::Peer::SessionId(me.session_id)),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn vnis_count_routes_announcers_and_subscribers() {
    let d = Daemon::start(&[]);
    let mut api = connect(&d.api_socket()).await;
    let mut a = RawPeer::established(d.addr).await;
    let mut b = RawPeer::established(d.addr).await;
    b.subscribe(5).await;
    a.announce(route("5#10.0.0.0/24@2001:db8::1")).await;
    a.announce(route("5#10.0.1.0/24@2001:db8::1")).await;
    assert_eq!(b.expect_updates(2, T).await.len(), 2);
    api.routes
        .announce_routes(pb::AnnounceRoutesRequest {
            routes: vec![api_route("5#10.0.2.0/24@2001:db8::2")],
            allow_existing: false,
        })
        .await
        .unwrap();
    let vni = api
        .vnis
        .get_vni(pb::GetVniRequest { vni: 5 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((vni.routes, vni.announcers, vni.subscribers), (3, 2, 1));
    let all = api
        .vnis
        .list_vnis(pb::ListVnisRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.vnis, vec![vni]);
}

/// The per-VNI digest (ADR 0029) of two servers: equal when they hold the
/// same routes, however the routes arrived (other order, other announcers,
/// routes that came and went), different when one route differs.
#[tokio::test]
async fn vni_digests_of_two_servers_agree_exactly_when_their_routes_do() {
    const R: [&str; 4] = [
        "7#10.0.0.0/24@2001:db8::1",
        "7#10.0.1.0/24@2001:db8::1#nat#1024#2047",
        "7#10.0.2.0/24@2001:db8::2#lb",
        "7#2001:db8:7::/64@2001:db8::3",
    ];
    const NOISE: &str = "7#10.9.9.0/24@2001:db8::9";
    let digest_of = |sock: std::path::PathBuf| async move {
        let mut api = connect(&sock).await;
        let deadline = tokio::time::Instant::now() + T;
        loop {
            let get = |api: &mut common::api::Api| {
                let mut vnis = api.vnis.clone();
                async move {
                    vnis.get_vni(pb::GetVniRequest { vni: 7 })
                        .await
                        .unwrap()
                        .into_inner()
                }
            };
            let one = get(&mut api).await;
            // ListVnis shows the same digest as GetVni (read between two
            // equal GetVni answers: a route that is still leaving, after
            // its session ended, may change the table in between).
            let all = api
                .vnis
                .list_vnis(pb::ListVnisRequest {})
                .await
                .unwrap()
                .into_inner();
            if get(&mut api).await == one {
                assert!(all.vnis.contains(&one), "{all:?} lacks {one:?}");
                return (one.digest_routes, one.digest);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "VNI 7 kept changing"
            );
        }
    };

    // Server a: peer p announces R[0..3] in order, a second peer joins on
    // R[1], the API adds R[3]; a noise route comes and goes.
    let a = Daemon::start(&[]);
    let mut p = RawPeer::established(a.addr).await;
    let mut p2 = RawPeer::established(a.addr).await;
    let mut helper = RawPeer::established(a.addr).await;
    for text in &R[..3] {
        p.announce(route(text)).await;
    }
    p2.announce(route(R[1])).await;
    p2.announce(route(NOISE)).await;
    p2.withdraw(route(NOISE)).await;
    common::api::inject(&a.api_socket(), &[R[3]]).await;
    barrier(&mut p, &mut helper, 900).await;
    barrier(&mut p2, &mut helper, 900).await;

    // Server b: the API first (R[3], R[0]), then a peer in reverse order,
    // announcing R[0] a second time; its noise route leaves with a session.
    let b = Daemon::start(&[]);
    common::api::inject(&b.api_socket(), &[R[3], R[0]]).await;
    let mut q = RawPeer::established(b.addr).await;
    let mut q2 = RawPeer::established(b.addr).await;
    let mut helper_b = RawPeer::established(b.addr).await;
    for text in R.iter().rev() {
        q.announce(route(text)).await;
    }
    q2.announce(route(NOISE)).await;
    barrier(&mut q, &mut helper_b, 900).await;
    barrier(&mut q2, &mut helper_b, 900).await;
    let (routes, noisy) = digest_of(b.api_socket()).await;
    assert_eq!(routes, 5, "the noise route is in b's digest");
    drop(q2);
    // Bounded polling: the session end reaches the table asynchronously.
    let deadline = tokio::time::Instant::now() + T;
    let digest_b = loop {
        let got = digest_of(b.api_socket()).await;
        if got.0 == 4 {
            break got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "b still counts {} routes",
            got.0
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let digest_a = digest_of(a.api_socket()).await;
    assert_eq!(digest_a.0, 4);
    assert_eq!(digest_a.1.len(), 16, "{digest_a:?}");
    assert!(
        digest_a
            .1
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
        "{digest_a:?}"
    );
    assert_ne!(noisy, digest_b.1);
    assert_eq!(digest_a, digest_b, "same routes, same digest");

    // One route more on b: the digests differ; withdrawn again: equal.
    common::api::inject(&b.api_socket(), &[NOISE]).await;
    let differing = digest_of(b.api_socket()).await;
    assert_eq!(differing.0, 5);
    assert_ne!(
        differing.1, digest_a.1,
        "a differing route, a differing digest"
    );
    assert_eq!(
        differing.1, noisy,
        "the digest of a route set does not depend on who announced it"
    );
    common::api::withdraw(&b.api_socket(), &[NOISE]).await;
    assert_eq!(digest_of(b.api_socket()).await, digest_a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_started_during_announcements_sees_every_route_exactly_once() {
    const N: u32 = 20_000;
    let d = Daemon::start(&[]);
    let mut api = connect(&d.api_socket()).await;
    let mut announcer = RawPeer::established(d.addr).await;
    let frames = |from: u32, to: u32| {
        let mut buf = bytes::BytesMut::new();
        for i in from..to {
            let r = route(&format!("3#10.{}.{}.0/24@2001:db8::1", i / 256, i % 256));
            metalbondd::wire::encode_update(metalbondd::wire::Action::Add, &r, &mut buf);
        }
        buf
    };
    // Half before the watch, half while it starts.
    announcer.send_raw(&frames(0, N / 2)).await;
    let push_rest = tokio::spawn(async move {
        for start in (N / 2..N).step_by(500) {
            announcer.send_raw(&frames(start, start + 500)).await;
            tokio::task::yield_now().await;
        }
        announcer
    });
    let mut watch = api
        .routes
        .watch_routes(pb::WatchRoutesRequest {
            filter: Some(pb::RouteFilter {
                vni: Some(3),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let _announcer = push_rest.await.unwrap();
    let mut routes = BTreeSet::new();
    let mut next_sequence = 1;
    let mut snapshot_end = None;
    // The snapshot may already hold every route (the watch can arrive after
    // the last announcement): read at least up to its end marker.
    while routes.len() < N as usize || snapshot_end.is_none() {
        let e = tokio::time::timeout(Duration::from_secs(30), watch.message())
            .await
            .expect("watch stalled")
            .unwrap()
            .expect("watch ended");
        assert_eq!(e.sequence, next_sequence, "sequence gap");
        next_sequence += 1;
        match e.event.unwrap() {
            pb::route_event::Event::Snapshot(r) => {
                assert!(snapshot_end.is_none(), "snapshot after its end marker");
                assert!(routes.insert(route_text(&r)), "twice: {r:?}");
            }
            pb::route_event::Event::SnapshotEnd(end) => {
                assert_eq!(end.routes as usize, routes.len());
                snapshot_end = Some(end.routes);
            }
            pb::route_event::Event::Added(r) => {
                assert!(snapshot_end.is_some(), "delta before the snapshot ended");
                assert!(routes.insert(route_text(&r)), "twice: {r:?}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(snapshot_end.is_some(), "no end-of-snapshot marker");
    // Nothing more: no duplicate arrives later.
    let extra = tokio::time::timeout(QUIET, watch.message()).await;
    assert!(extra.is_err(), "unexpected event {extra:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_injected_through_the_api_survive_kill_9() {
    const N: u32 = 10_000;
    let d = Daemon::start(&[]);
    let mut api = connect(&d.api_socket()).await;
    let routes: Vec<pb::Route> = (0..N)
        .map(|i| api_route(&format!("8#10.{}.{}.0/24@2001:db8::8", i / 256, i % 256)))
        .collect();
    let added = api
        .routes
        .announce_routes(pb::AnnounceRoutesRequest {
            routes,
            allow_existing: false,
        })
        .await
        .unwrap()
        .into_inner()
        .added;
    assert_eq!(added, N);
    drop(api);
    let dir = d.kill_hard().expect("the daemon's temp dir");

    let socket = dir.join("api.sock");
    let state = dir.join("state");
    let d = Daemon::start(&[
        "--api-socket",
        socket.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
    ]);
    let mut sub = RawPeer::established(d.addr).await;
    sub.subscribe(8).await;
    let got = sub
        .expect_updates(N as usize, Duration::from_secs(30))
        .await;
    let distinct: BTreeSet<_> = got.iter().map(|u| u.route).collect();
    assert_eq!(distinct.len(), N as usize, "every route back, none twice");
    sub.expect_no_update(QUIET).await;
    let mut api = connect(&socket).await;
    assert_eq!(
        list_all(&mut api, local_filter(), 10_000).await.len(),
        N as usize
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn reload_without_a_config_file_is_a_failed_precondition_and_shutdown_stops() {
    let d = Daemon::start(&[]);
    let mut api = connect(&d.api_socket()).await;
    let err = api.daemon.reload(pb::ReloadRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    api.daemon.shutdown(pb::ShutdownRequest {}).await.unwrap();
    let status = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while d.is_alive() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        d.is_alive()
    })
    .await
    .unwrap();
    assert!(!status, "metalbondd still running after Shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_watcher_gets_lagged_and_the_daemon_keeps_serving_peers() {
    const N: u32 = 40_000;
    // A long keepalive: the raw peers send none, and a loaded machine may
    // take a while to move 40,000 routes.
    let d = Daemon::start(&["--watch-max-lag-bytes", "200000", "--keepalive", "60"]);
    let mut api = common::api::connect_small_windows(&d.api_socket()).await;
    // The session keepalive is the smaller of both sides' proposals: the
    // peers propose 60 too.
    let mut sub = RawPeer::connect(d.addr).await;
    sub.handshake(60).await;
    sub.subscribe(4).await;
    // The watcher reads nothing while the routes arrive.
    let mut watch = api
        .routes
        .watch_routes(pb::WatchRoutesRequest { filter: None })
        .await
        .unwrap()
        .into_inner();
    let mut announcer = RawPeer::connect(d.addr).await;
    announcer.handshake(60).await;
    let mut buf = bytes::BytesMut::new();
    for i in 0..N {
        let r = route(&format!("4#10.{}.{}.0/24@2001:db8::4", i / 256, i % 256));
        metalbondd::wire::encode_update(metalbondd::wire::Action::Add, &r, &mut buf);
    }
    announcer.send_raw(&buf).await;
    // Peers are served in full meanwhile.
    let got = sub
        .expect_updates(N as usize, Duration::from_secs(30))
        .await;
    assert_eq!(got.len(), N as usize);

    // The watcher then finds a gap-free prefix of events ending in `lagged`.
    let mut next_sequence = 1;
    let lagged = loop {
        let e = tokio::time::timeout(Duration::from_secs(30), watch.message())
            .await
            .unwrap_or_else(|_| panic!("watch stalled after {} events", next_sequence - 1))
            .unwrap()
            .expect("the stream ended without a lagged event");
        assert_eq!(e.sequence, next_sequence, "sequence gap");
        next_sequence += 1;
        if let Some(pb::route_event::Event::Lagged(l)) = e.event {
            break l;
        }
    };
    assert!(lagged.reason.contains("behind"), "{}", lagged.reason);
    assert!(
        next_sequence < u64::from(N),
        "it lagged before seeing everything"
    );
    let end = tokio::time::timeout(T, watch.message())
        .await
        .unwrap()
        .unwrap();
    assert!(end.is_none(), "the stream ends after lagged");
    assert!(d.is_alive());
}

#[tokio::test]
async fn a_read_only_tcp_listener_lists_but_refuses_changes() {
    let (d, port) = common::api::start_with_tcp_api("tcp_read_only = true\n").await;
    let channel = tonic::transport::Endpoint::try_from(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut routes = pb::route_service_client::RouteServiceClient::new(channel.clone());
    let mut daemon = pb::daemon_service_client::DaemonServiceClient::new(channel);
    routes
        .list_routes(pb::ListRoutesRequest::default())
        .await
        .expect("reads are allowed");
    daemon
        .get_status(pb::GetStatusRequest {})
        .await
        .expect("reads are allowed");
    let err = routes
        .announce_routes(pb::AnnounceRoutesRequest {
            routes: vec![api_route("1#10.0.0.0/8@2001:db8::1")],
            allow_existing: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = daemon.shutdown(pb::ShutdownRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // Nothing changed, and the Unix socket still allows changes.
    let mut api = connect(&d.api_socket()).await;
    assert!(list_all(&mut api, None, 0).await.is_empty());
    api.routes
        .announce_routes(pb::AnnounceRoutesRequest {
            routes: vec![api_route("1#10.0.0.0/8@2001:db8::1")],
            allow_existing: false,
        })
        .await
        .unwrap();
    assert!(d.is_alive());
}
