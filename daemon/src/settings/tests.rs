//! Settings resolution: a flag given wins over the file, the file over the
//! defaults; each role's default paths; the errors and their wording.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use metalbondd_config::Config;

use super::*;

/// Parses `text` as the file `test.toml`; panics on a file error.
fn file(text: &str) -> Config {
    let (config, errors) = Config::check_text(text, "test.toml");
    assert!(errors.is_empty(), "{errors:?}");
    config
}

/// Flags `A` from a command line (without the program and subcommand names).
fn flags<A: clap::Args>(args: &[&str]) -> A {
    #[derive(Parser)]
    struct Cli<A: clap::Args> {
        #[command(flatten)]
        args: A,
    }
    Cli::<A>::parse_from(std::iter::once("metalbondd").chain(args.iter().copied())).args
}

fn server_flags(args: &[&str]) -> ServerArgs {
    flags(args)
}

fn client_flags(args: &[&str]) -> ClientArgs {
    flags(args)
}

fn server(config: &Config, args: &[&str]) -> (Settings, LogFormat) {
    resolve(config, &server_flags(args), PathRole::Server).unwrap_or_else(|e| panic!("{e}"))
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn defaults_without_file_or_flags() {
    let (s, format) = server(&Config::default(), &[]);
    assert_eq!(s.server.listen, vec![addr("[::1]:4711")]);
    assert_eq!(s.server.session.keepalive_secs, 5);
    assert_eq!(s.server.session.write_timeout, Duration::from_secs(60));
    assert_eq!(s.server.session.withdraw_delay, Duration::ZERO);
    assert_eq!(s.api.socket, default_api_socket(PathRole::Server));
    assert_eq!(s.state_dir, default_state_dir(PathRole::Server));
    assert_eq!(s.log_level, "info");
    assert_eq!(format, LogFormat::Text);
    assert_eq!(s.http, None);
    assert_eq!(s.metrics, MetricsSettings::default());
    assert!(s.static_routes.is_empty());
    assert!(s.client.is_none());
}

#[test]
fn the_file_overrides_the_defaults_and_a_flag_overrides_the_file() {
    let config = file(
        r#"
[server]
listen = ["127.0.0.1:5000", "127.0.0.1:5001"]
keepalive = 7
max_sessions = 10
http = "127.0.0.1:8000"
[api]
socket = "/file/api.sock"
[state]
dir = "/file/state"
[log]
level = "warn"
format = "json"
[metrics]
listen = "127.0.0.1:9000"
vni_label_limit = 3
"#,
    );
    let (s, format) = server(&config, &[]);
    assert_eq!(
        s.server.listen,
        vec![addr("127.0.0.1:5000"), addr("127.0.0.1:5001")]
    );
    assert_eq!(s.server.session.keepalive_secs, 7);
    assert_eq!(s.server.max_sessions, 10);
    assert_eq!(s.api.socket, PathBuf::from("/file/api.sock"));
    assert_eq!(s.state_dir, PathBuf::from("/file/state"));
    assert_eq!(s.log_level, "warn");
    assert_eq!(format, LogFormat::Json);
    assert_eq!(s.http, Some(addr("127.0.0.1:8000")));
    assert_eq!(s.metrics.listen, Some(addr("127.0.0.1:9000")));
    assert_eq!(s.metrics.vni_label_limit, 3);

    let (s, format) = server(
        &config,
        &[
            "--listen",
            "127.0.0.1:6000",
            "--keepalive",
            "9",
            "--max-sessions",
            "20",
            "--api-socket",
            "/flag/api.sock",
            "--state-dir",
            "/flag/state",
            "--verbose",
            "--log-format",
            "text",
            "--http",
            "127.0.0.1:8001",
            "--metrics",
            "127.0.0.1:9001",
            "--metrics-vni-limit",
            "4",
        ],
    );
    // A repeatable flag replaces the file's whole list.
    assert_eq!(s.server.listen, vec![addr("127.0.0.1:6000")]);
    assert_eq!(s.server.session.keepalive_secs, 9);
    assert_eq!(s.server.max_sessions, 20);
    assert_eq!(s.api.socket, PathBuf::from("/flag/api.sock"));
    assert_eq!(s.state_dir, PathBuf::from("/flag/state"));
    assert_eq!(s.log_level, "debug");
    assert_eq!(format, LogFormat::Text);
    assert_eq!(s.http, Some(addr("127.0.0.1:8001")));
    assert_eq!(s.metrics.listen, Some(addr("127.0.0.1:9001")));
    assert_eq!(s.metrics.vni_label_limit, 4);
}

#[test]
fn keepalive_0_means_5_and_the_write_timeout_covers_the_session_timeout() {
    let (s, _) = server(
        &Config::default(),
        &["--keepalive", "0", "--write-timeout", "1"],
    );
    assert_eq!(s.server.session.keepalive_secs, 5);
    // 2.5 keepalive intervals: a write may not time out a session that the
    // keepalive timer would still keep.
    assert_eq!(
        s.server.session.write_timeout,
        Duration::from_millis(12_500)
    );
}

#[test]
fn a_bad_static_route_is_an_error_at_its_position() {
    let config = file("[routes]\nstatic = [\"100#10.0.0.0/24@2001:db8::1\", \"nonsense\"]\n");
    let errors = resolve(&config, &ServerArgs::default(), PathRole::Server).unwrap_err();
    assert_eq!(errors.0.len(), 1, "{errors}");
    let line = errors.0[0].to_string();
    assert!(
        line.starts_with("test.toml:2:") && line.contains("routes.static[1]"),
        "{line}"
    );
}

#[test]
fn a_client_section_runs_the_hypervisor_role_next_to_the_server() {
    let config = file(
        r#"
[client]
servers = ["[2001:db8::1]:4711"]
subscribe = [100]
announce = ["100#10.0.10.0/24@2001:db8::10"]
install_routes = ["100#100"]
tun = "tun0"
reconnect_min = 0
reconnect_max = 0
"#,
    );
    let (s, _) = server(&config, &[]);
    assert_eq!(s.server.listen, vec![addr("[::1]:4711")]);
    let client = s.client.expect("client role");
    assert_eq!(client.servers.len(), 1);
    assert_eq!(client.subscriptions, vec![Vni(100)]);
    assert_eq!(client.announcements.len(), 1);
    assert_eq!(client.install_routes[&Vni(100)], BTreeSet::from([100]));
    assert_eq!(client.tun.as_deref(), Some("tun0"));
    // A first delay of 0 becomes 100 ms; the largest is at least the first.
    assert_eq!(
        client.connection.backoff.initial,
        Duration::from_millis(100)
    );
    assert_eq!(client.connection.backoff.max, Duration::from_millis(100));
}

#[test]
fn a_bad_client_section_is_an_error_in_the_file() {
    let config = file("[client]\nservers = [\"[::1]:4711\"]\nannounce = [\"nonsense\"]\n");
    let errors = resolve(&config, &ServerArgs::default(), PathRole::Server).unwrap_err();
    let line = errors.to_string();
    assert!(
        line.starts_with("test.toml:3:") && line.contains("client.announce[0]"),
        "{line}"
    );
}

#[test]
fn client_flags_override_the_client_section() {
    let config = file(
        r#"
[client]
servers = ["[2001:db8::1]:4711", "[2001:db8::2]:4711"]
subscribe = [100, 200]
announce = ["100#10.0.10.0/24@2001:db8::10"]
tun = "file-tun"
keepalive = 7
hold_time = 30
stale_time = 60
"#,
    );
    let section = config.client.clone().unwrap();
    let from_file = client_settings(&config, &section, &ClientArgs::default()).unwrap();
    assert_eq!(from_file.servers.len(), 2);
    assert_eq!(from_file.subscriptions, vec![Vni(100), Vni(200)]);
    assert_eq!(from_file.tun.as_deref(), Some("file-tun"));
    assert_eq!(from_file.connection.keepalive_secs, 7);
    assert_eq!(from_file.hold_time, Duration::from_secs(30));
    assert!(!from_file.cleanup);

    let args = client_flags(&[
        "--server",
        "[2001:db8::3]:4711",
        "--subscribe",
        "300",
        "--announce",
        "300#10.0.30.0/24@2001:db8::30",
        "--install-routes",
        "300#30",
        "--tun",
        "flag-tun",
        "--keepalive",
        "9",
        "--hold-time",
        "1",
        "--stale-time",
        "2",
        "--cleanup",
        "--flush-at-start",
        "--ipv4-only",
    ]);
    let c = client_settings(&config, &section, &args).unwrap();
    assert_eq!(c.servers, vec!["[2001:db8::3]:4711".parse().unwrap()]);
    assert_eq!(c.subscriptions, vec![Vni(300)]);
    assert_eq!(
        c.announcements,
        vec!["300#10.0.30.0/24@2001:db8::30".parse::<Route>().unwrap()]
    );
    assert_eq!(c.install_routes[&Vni(300)], BTreeSet::from([30]));
    assert_eq!(c.tun.as_deref(), Some("flag-tun"));
    assert_eq!(c.connection.keepalive_secs, 9);
    assert_eq!(c.hold_time, Duration::from_secs(1));
    assert_eq!(c.stale_time, Duration::from_secs(2));
    assert!(c.cleanup && c.flush_at_start && c.ipv4_only);
    // SYNC is offered unless a flag or the file turns it off.
    assert!(from_file.connection.sync && c.connection.sync);
}

#[test]
fn sync_offer_is_on_by_default_and_off_by_flag_or_file() {
    let on = file("[client]\nservers = [\"[2001:db8::1]:4711\"]\n");
    let section = on.client.clone().unwrap();
    let c = client_settings(&on, &section, &ClientArgs::default()).unwrap();
    assert!(c.connection.sync);
    let args = client_flags(&["--server", "[2001:db8::1]:4711", "--no-sync"]);
    let c = client_settings(&on, &section, &args).unwrap();
    assert!(!c.connection.sync, "--no-sync");
    let off = file("[client]\nservers = [\"[2001:db8::1]:4711\"]\nsync = false\n");
    let section = off.client.clone().unwrap();
    let c = client_settings(&off, &section, &ClientArgs::default()).unwrap();
    assert!(!c.connection.sync, "client.sync = false");
}

#[test]
fn client_flag_errors_are_one_line_naming_the_flag() {
    let config = Config::default();
    let section = defaults::ClientSection::default();
    let err = |args: &[&str]| {
        client_settings(&config, &section, &client_flags(args))
            .unwrap_err()
            .to_string()
    };
    let bad = err(&["--server", "[::1]:4711", "--announce", "nonsense"]);
    assert!(bad.starts_with("--announce nonsense: "), "{bad}");
    let bad = err(&["--server", "[::1]:4711", "--install-routes", "100#0"]);
    assert!(bad.starts_with("--install-routes 100#0: "), "{bad}");
    assert_eq!(
        err(&["--server", "[::1]:4711", "--install-routes", "100#100"]),
        "--install-routes needs the tunnel device (--tun DEV)"
    );
    // With --config, --server may be left out; the file must then give one.
    assert_eq!(
        err(&["--config", "x.toml"]),
        "no route server given (--server ADDR or client.servers)"
    );
}

#[test]
fn the_client_role_alone_has_no_listener_and_its_own_default_paths() {
    let args = client_flags(&["--server", "[::1]:4711", "--verbose"]);
    let (s, _) = load_client(&args).unwrap();
    assert!(s.server.listen.is_empty());
    assert_eq!(s.api.socket, default_api_socket(PathRole::Client));
    assert_eq!(s.state_dir, default_state_dir(PathRole::Client));
    assert_eq!(s.log_level, "debug");
    assert!(s.client.is_some());

    let args = client_flags(&[
        "--server",
        "[::1]:4711",
        "--api-socket",
        "/flag/api.sock",
        "--state-dir",
        "/flag/state",
    ]);
    let (s, _) = load_client(&args).unwrap();
    assert_eq!(s.api.socket, PathBuf::from("/flag/api.sock"));
    assert_eq!(s.state_dir, PathBuf::from("/flag/state"));
}

#[test]
fn without_a_file_there_is_nothing_to_reload() {
    assert!(server_reloader(&ServerArgs::default()).is_none());
    assert!(client_reloader(&client_flags(&["--server", "[::1]:4711"])).is_none());
}

#[test]
fn a_missing_file_is_an_error_naming_it() {
    let path = std::env::temp_dir().join("metalbondd-settings-test-no-such-file.toml");
    let errors = check_file(&path, &ServerArgs::default()).unwrap_err();
    assert!(
        errors.to_string().contains(&path.display().to_string()),
        "{errors}"
    );
}
