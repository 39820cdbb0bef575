//! The client role managed through the API (ClientService, issue 4): a
//! `metalbondd` server and client in a network namespace; servers,
//! subscriptions and VNI -> table mappings changed at runtime, checked in
//! the kernel (`ip route`) and in the API's listings, and still in effect
//! after the client restarts with the same state directory and flags.
//!
//! Needs root and `ip` (iproute2); skipped with a message otherwise, unless
//! `CI=true`. Every wait is bounded ([`WAIT`]).

mod common;

use std::time::Instant;

use common::api::{self, inject};
use common::netns::{NetnsEnv, MAP_100, POLL, WAIT};
use common::QUIET;
use metalbond_proto::api as pb;
use tonic::Code;

/// Polls `check` until it returns true, at most [`WAIT`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        tokio::time::sleep(POLL).await;
    }
}

async fn servers(api: &mut api::Api) -> Vec<pb::ClientServer> {
    api.client
        .list_servers(pb::ListServersRequest {})
        .await
        .unwrap()
        .into_inner()
        .servers
}

async fn received(api: &mut api::Api, vni: Option<u32>) -> Vec<pb::ReceivedRoute> {
    api.client
        .list_received_routes(pb::ListReceivedRoutesRequest { vni })
        .await
        .unwrap()
        .into_inner()
        .routes
}

async fn subscriptions(api: &mut api::Api) -> Vec<u32> {
    api.client
        .list_subscriptions(pb::ListSubscriptionsRequest {})
        .await
        .unwrap()
        .into_inner()
        .vnis
}

async fn mappings(api: &mut api::Api) -> Vec<(u32, u32)> {
    api.client
        .list_table_mappings(pb::ListTableMappingsRequest {})
        .await
        .unwrap()
        .into_inner()
        .mappings
        .into_iter()
        .map(|m| (m.vni, m.table))
        .collect()
}

fn prefix_of(r: &pb::ReceivedRoute) -> &str {
    &r.route.as_ref().unwrap().prefix
}

#[tokio::test(flavor = "multi_thread")]
async fn servers_subscriptions_and_mappings_change_at_runtime_and_survive_a_restart() {
    let Some(env) = NetnsEnv::for_test(
        "servers_subscriptions_and_mappings_change_at_runtime_and_survive_a_restart",
    ) else {
        return;
    };
    let server = env.server("s");
    let second = env.server("s2");
    inject(
        &env.sock("s"),
        &["100#10.0.1.0/24@2001:db8::1", "200#10.0.2.0/24@2001:db8::2"],
    )
    .await;
    let client = env.client("c", &[server.addr], MAP_100);
    env.wait_table(100, &[("10.0.1.0/24", &["2001:db8::1"])], &[])
        .await;
    let mut capi = api::connect(&env.sock("c")).await;
    let s1 = server.addr.to_string();
    let s2 = second.addr.to_string();

    // Map VNI 200 to table 200 and subscribe: its route appears there.
    capi.client
        .set_table_mapping(pb::SetTableMappingRequest {
            vni: 200,
            table: 200,
        })
        .await
        .unwrap();
    capi.client
        .subscribe(pb::SubscribeRequest { vni: 200 })
        .await
        .unwrap();
    env.wait_table(200, &[("10.0.2.0/24", &["2001:db8::2"])], &[])
        .await;
    assert_eq!(mappings(&mut capi).await, vec![(100, 100), (200, 200)]);
    assert_eq!(subscriptions(&mut capi).await, vec![100, 200]);
    let err = capi
        .client
        .subscribe(pb::SubscribeRequest { vni: 200 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");

    // Received routes: provider and installed table.
    let mut api2 = capi.clone();
    let s1c = s1.clone();
    eventually("both received routes listed as installed", move || {
        let mut api = api2.clone();
        let s1 = s1c.clone();
        async move {
            let routes = received(&mut api, None).await;
            routes.len() == 2
                && prefix_of(&routes[0]) == "10.0.1.0/24"
                && routes[0].servers == vec![s1.clone()]
                && routes[0].installed_tables == vec![100]
                && prefix_of(&routes[1]) == "10.0.2.0/24"
                && routes[1].servers == vec![s1]
                && routes[1].installed_tables == vec![200]
        }
    })
    .await;
    api2 = capi.clone();
    let only = received(&mut api2, Some(200)).await;
    assert_eq!(only.len(), 1, "{only:?}");
    assert_eq!(prefix_of(&only[0]), "10.0.2.0/24");

    // A second server, added at runtime, comes up; removed, it is gone.
    capi.client
        .add_server(pb::AddServerRequest {
            address: s2.clone(),
        })
        .await
        .unwrap();
    let err = capi
        .client
        .add_server(pb::AddServerRequest {
            address: s2.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    let s2c = s2.clone();
    eventually("the added server is up", move || {
        let mut api = api2.clone();
        let s2 = s2c.clone();
        async move {
            servers(&mut api).await.iter().any(|s| {
                s.address == s2 && s.state == pb::ClientServerState::Up as i32 && s.since.is_some()
            })
        }
    })
    .await;
    capi.client
        .remove_server(pb::RemoveServerRequest {
            address: s2.clone(),
        })
        .await
        .unwrap();
    let listed: Vec<String> = servers(&mut capi)
        .await
        .into_iter()
        .map(|s| s.address)
        .collect();
    assert_eq!(listed, vec![s1.clone()]);
    let err = capi
        .client
        .remove_server(pb::RemoveServerRequest {
            address: s2.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    // Unsubscribe: the route leaves table 200; subscribe again: it is back.
    capi.client
        .unsubscribe(pb::UnsubscribeRequest { vni: 200 })
        .await
        .unwrap();
    env.wait_table(200, &[], &[]).await;
    assert_eq!(received(&mut capi, Some(200)).await, vec![]);
    capi.client
        .subscribe(pb::SubscribeRequest { vni: 200 })
        .await
        .unwrap();
    env.wait_table(200, &[("10.0.2.0/24", &["2001:db8::2"])], &[])
        .await;
    // Unsubscribe the VNI the flags subscribe: it stays unsubscribed.
    capi.client
        .unsubscribe(pb::UnsubscribeRequest { vni: 100 })
        .await
        .unwrap();
    env.wait_table(100, &[], &[]).await;

    // Bad input.
    let err = capi
        .client
        .set_table_mapping(pb::SetTableMappingRequest { vni: 300, table: 0 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), "table: 0 is not a valid routing table");
    let err = capi
        .client
        .add_server(pb::AddServerRequest {
            address: "not-an-address".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("address: "), "{}", err.message());
    let err = capi
        .client
        .subscribe(pb::SubscribeRequest { vni: 1 << 24 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("vni: "), "{}", err.message());
    assert_eq!(mappings(&mut capi).await, vec![(100, 100), (200, 200)]);
    // Unmap the VNI the flags map (`--install-routes 100#100`).
    capi.client
        .remove_table_mapping(pb::RemoveTableMappingRequest { vni: 100 })
        .await
        .unwrap();
    assert_eq!(mappings(&mut capi).await, vec![(200, 200)]);

    // Restart with the same state directory and flags (now naming the
    // removed server too): the API changes win, and say so.
    drop(capi);
    drop(client);
    let client = env.client("c", &[server.addr, second.addr], MAP_100);
    let mut capi = api::connect(&env.sock("c")).await;
    assert_eq!(mappings(&mut capi).await, vec![(200, 200)]);
    let want = [
        (
            format!("--server {s2} (client.servers)"),
            format!("server {s2} removed through the API"),
        ),
        (
            "--subscribe 100 (client.subscribe)".to_string(),
            "VNI 100 unsubscribed through the API".to_string(),
        ),
        (
            "--install-routes 100#100 (client.install_routes)".to_string(),
            "VNI 100 unmapped through the API".to_string(),
        ),
    ];
    let status = capi
        .daemon
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let overrides: Vec<(String, String)> = status
        .overrides
        .into_iter()
        .map(|o| (o.setting, o.replaced_by))
        .collect();
    assert_eq!(overrides, want);
    for (setting, replaced_by) in &want {
        let line = client
            .wait_for_line(
                |l| l.contains(" WARN ") && l.contains(setting.as_str()),
                WAIT,
            )
            .await
            .unwrap_or_else(|| panic!("no WARN naming {setting}: {}", client.logs()));
        assert!(line.contains(replaced_by.as_str()), "{line}");
    }
    assert_eq!(subscriptions(&mut capi).await, vec![200]);
    let listed: Vec<String> = servers(&mut capi)
        .await
        .into_iter()
        .map(|s| s.address)
        .collect();
    assert_eq!(listed, vec![s1.clone()], "the removed server came back");
    env.wait_table(200, &[("10.0.2.0/24", &["2001:db8::2"])], &[])
        .await;
    tokio::time::sleep(QUIET).await;
    env.wait_table(100, &[], &[]).await;

    // A daemon without the client role.
    let mut sapi = api::connect(&env.sock("s")).await;
    let err = sapi
        .client
        .list_servers(pb::ListServersRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("the client role is not running"),
        "{}",
        err.message()
    );
    let err = sapi
        .client
        .subscribe(pb::SubscribeRequest { vni: 5 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
}
