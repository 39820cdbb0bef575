use std::time::Duration;

use super::*;

fn addr(s: &str) -> ServerAddr {
    s.parse().unwrap()
}

fn route(s: &str) -> Route {
    s.parse().unwrap()
}

fn settings() -> ClientSettings {
    ClientSettings {
        servers: vec![addr("[::1]:1"), addr("[::1]:2")],
        subscriptions: vec![Vni(1), Vni(2)],
        announcements: vec![route("1#10.0.0.0/24@2001:db8::1")],
        install_routes: BTreeMap::from([
            (Vni(1), BTreeSet::from([10])),
            (Vni(2), BTreeSet::from([20, 21])),
        ]),
        tun: Some("tun0".into()),
        ipv4_only: false,
        connection: Default::default(),
        hold_time: Duration::from_secs(30),
        stale_time: Duration::from_secs(60),
        cleanup: false,
        flush_at_start: false,
    }
}

#[test]
fn same_settings_make_no_difference() {
    let diff = ClientDiff::between(&settings(), &settings());
    assert!(diff.is_empty());
    assert_eq!(diff, ClientDiff::default());
    assert!(diff.applied().is_empty());
}

#[test]
fn every_runtime_key_is_diffed() {
    let old = settings();
    let mut new = settings();
    new.servers = vec![addr("[::1]:2"), addr("[::1]:3"), addr("[::1]:3")];
    new.subscriptions = vec![Vni(2), Vni(3)];
    new.install_routes = BTreeMap::from([
        (Vni(2), BTreeSet::from([21, 20])), // the same set: unchanged
        (Vni(3), BTreeSet::from([30])),
    ]);
    new.announcements = vec![
        route("1#10.0.0.0/24@2001:db8::1"),
        route("1#10.0.1.0/24@2001:db8::1"),
    ];
    let diff = ClientDiff::between(&old, &new);
    assert_eq!(diff.add_servers, vec![addr("[::1]:3")]);
    assert_eq!(diff.remove_servers, vec![addr("[::1]:1")]);
    assert_eq!(diff.subscribe, vec![Vni(3)]);
    assert_eq!(diff.unsubscribe, vec![Vni(1)]);
    assert_eq!(
        diff.mappings,
        BTreeMap::from([(Vni(1), BTreeSet::new()), (Vni(3), BTreeSet::from([30]))])
    );
    assert!(diff.maps_any());
    // The exact new set, sorted: the agent computes the wire difference.
    assert_eq!(
        diff.announcements,
        Some(vec![
            route("1#10.0.0.0/24@2001:db8::1"),
            route("1#10.0.1.0/24@2001:db8::1"),
        ])
    );
    assert!(diff.needs_restart.is_empty());
    assert_eq!(
        diff.applied(),
        vec![
            "client.servers: 1 added, 1 removed",
            "client.subscribe: 1 subscribed, 1 unsubscribed",
            "client.install_routes: VNI 1, 3 remapped",
            "client.announce: owner \"config\" now announces 2 route(s)",
        ]
    );
}

#[test]
fn reordering_a_list_changes_nothing() {
    let old = settings();
    let mut new = settings();
    new.servers.reverse();
    new.subscriptions.reverse();
    new.announcements.reverse();
    assert!(ClientDiff::between(&old, &new).is_empty());
}

#[test]
fn start_only_settings_need_a_restart() {
    let old = settings();
    let mut new = settings();
    new.tun = Some("tun1".into());
    new.connection.keepalive_secs = 9;
    new.hold_time = Duration::from_secs(1);
    new.stale_time = Duration::from_secs(2);
    new.ipv4_only = true;
    new.cleanup = true;
    new.flush_at_start = true;
    let diff = ClientDiff::between(&old, &new);
    assert!(diff.is_empty(), "nothing applies at runtime: {diff:?}");
    assert_eq!(
        diff.needs_restart,
        vec![
            "client.tun",
            "client.ipv4_only",
            "client.keepalive",
            "client.hold_time",
            "client.stale_time",
            "client.cleanup",
            "client.flush_at_start",
        ]
    );
    let mut backoff = settings();
    backoff.connection.backoff.max = Duration::from_secs(999);
    assert_eq!(
        ClientDiff::between(&old, &backoff).needs_restart,
        vec!["client.reconnect_min, client.reconnect_max"]
    );
    let mut no_sync = settings();
    no_sync.connection.sync = false;
    assert_eq!(
        ClientDiff::between(&old, &no_sync).needs_restart,
        vec!["client.sync"]
    );
}

#[test]
fn keys_the_api_changed_stay_as_the_api_left_them() {
    let old = settings();
    let mut new = settings();
    new.servers = vec![addr("[::1]:3")];
    new.subscriptions = vec![Vni(3)];
    new.install_routes.clear();
    new.announcements.clear();
    let stored = StoredClientState {
        servers: BTreeMap::from([(addr("[::1]:1"), true), (addr("[::1]:3"), false)]),
        subscriptions: BTreeMap::from([(Vni(2), true)]),
        mappings: BTreeMap::from([(Vni(1), Some(11))]),
        announcements: BTreeMap::new(),
    };
    let diff = ClientDiff::between(&old, &new).without_api_keys(&stored);
    // [::1]:3 was removed through the API, [::1]:1 added through it.
    assert_eq!(diff.add_servers, Vec::<ServerAddr>::new());
    assert_eq!(diff.remove_servers, vec![addr("[::1]:2")]);
    assert_eq!(diff.subscribe, vec![Vni(3)]);
    assert_eq!(diff.unsubscribe, vec![Vni(1)]);
    assert_eq!(diff.mappings, BTreeMap::from([(Vni(2), BTreeSet::new())]));
    // The API cannot own the configuration's routes.
    assert_eq!(diff.announcements, Some(vec![]));
    assert_eq!(
        diff.kept_by_api,
        vec![
            "client.servers [::1]:3",
            "client.servers [::1]:1",
            "client.subscribe 2",
            "client.install_routes 1",
        ]
    );
    assert!(diff
        .applied()
        .contains(&"client.servers [::1]:3: kept as changed through the API".to_string()));
}
