use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::*;

fn server(s: &str) -> ServerAddr {
    s.parse().unwrap()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn parse(text: &str) -> Config {
    Config::parse(text, "test.toml").unwrap_or_else(|e| panic!("{e}"))
}

/// Parses `text`, which must fail, and checks the position and that the
/// message contains each of `words`.
#[track_caller]
fn reject(text: &str, line: usize, col: usize, words: &[&str]) -> ConfigError {
    let err = match Config::parse(text, "bad.toml") {
        Ok(c) => panic!("accepted {text:?}: {c:?}"),
        Err(e) => e,
    };
    let shown = err.to_string();
    assert_eq!(
        err.location,
        Some((line, col)),
        "wrong position for {text:?}: {shown}"
    );
    assert!(
        shown.starts_with(&format!("bad.toml:{line}:{col}: ")),
        "{shown}"
    );
    assert!(!shown.contains('\n'), "not one line: {shown:?}");
    for w in words {
        assert!(shown.contains(w), "{shown:?} does not mention {w:?}");
    }
    err
}

#[test]
fn zero_keepalive_means_default() {
    assert_eq!(effective_keepalive_secs(0), 5);
    assert_eq!(effective_keepalive_secs(3), 3);
}

#[test]
fn empty_file_is_all_defaults() {
    for text in [
        "",
        "\n",
        "# only a comment\n",
        "[server]\n[api]\n[state]\n[log]\n[routes]\n",
    ] {
        let c = parse(text);
        assert_eq!(c.server.listen, vec![addr(DEFAULT_LISTEN)]);
        assert_eq!(c.server.keepalive, DEFAULT_KEEPALIVE_SECS);
        assert_eq!(c.server.max_sessions, DEFAULT_MAX_SESSIONS);
        assert_eq!(c.server.max_lag_bytes, DEFAULT_MAX_SESSION_LAG_BYTES);
        assert_eq!(c.server.write_timeout, DEFAULT_WRITE_TIMEOUT_SECS);
        assert_eq!(c.server.pace_limit, DEFAULT_PACE_LIMIT_BYTES);
        assert_eq!(c.server.http, None);
        assert_eq!(c.api.socket, None);
        assert_eq!(c.api.socket_mode, DEFAULT_API_SOCKET_MODE);
        assert_eq!(c.api.socket_group, None);
        assert_eq!(c.api.tcp_listen, None);
        assert!(c.api.tcp_read_only);
        assert_eq!(c.state.dir, None);
        assert_eq!(c.log.level, DEFAULT_LOG_LEVEL);
        assert_eq!(c.log.format, LogFormat::Text);
        assert!(c.routes.static_routes.is_empty());
        assert_eq!(c.path(), Path::new("test.toml"));
        // The sections equal those of the default configuration.
        let d = Config::default();
        assert_eq!(
            (&c.server, &c.api, &c.state, &c.log, &c.routes),
            (&d.server, &d.api, &d.state, &d.log, &d.routes)
        );
    }
}

const FULL: &str = r#"
[server]
listen = ["[::]:4711", "0.0.0.0:4711"]
keepalive = 7
max_sessions = 500
max_lag_bytes = 1048576
write_timeout = 30
withdraw_delay = 3
pace_limit = 0
http = "[::1]:4712"

[api]
socket = "/tmp/mb/api.sock"
socket_mode = "0640"
socket_group = "metalbond"
tcp_listen = "127.0.0.1:4712"
tcp_read_only = false

[state]
dir = "/tmp/mb/state"

[log]
level = "info,metalbondd=debug"
format = "json"

[metrics]
listen = ":9711"
vni_label_limit = 50

[routes]
static = [
    "100#10.0.1.0/24@2001:db8::1",
    "200#10.0.2.0/24@2001:db8::2#nat#1024#2048",
]
"#;

#[test]
fn full_file() {
    let c = parse(FULL);
    assert_eq!(
        c.server,
        ServerSection {
            listen: vec![addr("[::]:4711"), addr("0.0.0.0:4711")],
            keepalive: 7,
            max_sessions: 500,
            max_lag_bytes: 1 << 20,
            write_timeout: 30,
            pace_limit: 0,
            withdraw_delay: 3,
            http: Some("[::1]:4712".parse().unwrap()),
            ..ServerSection::default()
        }
    );
    assert_eq!(
        c.api,
        ApiSection {
            socket: Some(PathBuf::from("/tmp/mb/api.sock")),
            socket_mode: 0o640,
            socket_group: Some("metalbond".into()),
            tcp_listen: Some(addr("127.0.0.1:4712")),
            tcp_read_only: false,
            watch_max_lag_bytes: crate::DEFAULT_WATCH_MAX_LAG_BYTES,
        }
    );
    assert_eq!(c.state.dir, Some(PathBuf::from("/tmp/mb/state")));
    assert_eq!(c.log.level, "info,metalbondd=debug");
    assert_eq!(c.log.format, LogFormat::Json);
    let routes: Vec<&str> = c
        .routes
        .static_routes
        .iter()
        .map(|r| r.get_ref().as_str())
        .collect();
    assert_eq!(
        routes,
        [
            "100#10.0.1.0/24@2001:db8::1",
            "200#10.0.2.0/24@2001:db8::2#nat#1024#2048"
        ]
    );
    // Routes keep their position (the opening quote) for error messages.
    let second = &c.routes.static_routes[1];
    assert_eq!(c.position(second.span()), (33, 5));
    let err = c.error_at(second.span(), "routes.static[1]: no good");
    assert_eq!(err.to_string(), "test.toml:33:5: routes.static[1]: no good");
}

#[test]
fn octal_modes() {
    for (text, mode) in [
        ("0660", 0o660),
        ("660", 0o660),
        ("0o600", 0o600),
        ("0", 0),
        ("07777", 0o7777),
    ] {
        let c = parse(&format!("[api]\nsocket_mode = \"{text}\"\n"));
        assert_eq!(c.api.socket_mode, mode, "{text}");
    }
}

#[test]
fn keepalive_bounds() {
    assert_eq!(parse("[server]\nkeepalive = 0").server.keepalive, 0);
    assert_eq!(
        parse("[server]\nkeepalive = 3600").server.keepalive,
        MAX_KEEPALIVE_SECS
    );
    reject(
        "[server]\nkeepalive = 3601",
        2,
        13,
        &["server.keepalive", "3601", "out of range", "0 to 3600"],
    );
    reject(
        "[server]\nkeepalive = -1",
        2,
        13,
        &["server.keepalive", "-1", "out of range"],
    );
}

#[test]
fn syntax_error() {
    reject("[server\nkeepalive = 5\n", 1, 8, &["unclosed table"]);
    reject("[server]\nkeepalive = = 5\n", 2, 13, &[]);
    // An unterminated string is reported where the line ends.
    reject("[server]\nlisten = \"[::]:4711\n", 2, 20, &["string"]);
}

#[test]
fn unknown_key_in_each_section() {
    reject(
        "[servr]\n",
        1,
        2,
        &["unknown key `servr`", "`server`", "`routes`"],
    );
    reject("answer = 42\n", 1, 1, &["unknown key `answer`"]);
    let cases = [
        ("server", "listen"),
        ("api", "socket_mode"),
        ("state", "dir"),
        ("log", "format"),
        ("routes", "static"),
    ];
    for (section, known) in cases {
        let text = format!("# comment\n[{section}]\n\n  bogus_key = 1\n");
        reject(
            &text,
            4,
            3,
            &[
                &format!("unknown key `{section}.bogus_key`"),
                &format!("`{known}`"),
            ],
        );
        // Dotted keys and nested tables are unknown keys too.
        let text = format!("{section}.nested.deeper = 1\n");
        reject(
            &text,
            1,
            section.len() + 2,
            &[&format!("unknown key `{section}.nested`")],
        );
    }
}

#[test]
fn wrong_types() {
    reject(
        "[server]\nkeepalive = \"5\"\n",
        2,
        13,
        &["server.keepalive", "invalid type: string \"5\""],
    );
    reject(
        "[server]\nlisten = \"[::]:4711\"\n",
        2,
        10,
        &["server.listen", "expected a list of listen addresses"],
    );
    reject(
        "[server]\nmax_sessions = 1.5\n",
        2,
        16,
        &["server.max_sessions", "1.5"],
    );
    reject(
        "[api]\ntcp_read_only = \"yes\"\n",
        2,
        17,
        &["api.tcp_read_only", "\"yes\"", "boolean"],
    );
    reject(
        "[api]\nsocket_mode = 660\n",
        2,
        15,
        &["api.socket_mode", "660", "octal mode string"],
    );
    reject(
        "[routes]\nstatic = [\"100#10.0.1.0/24@2001:db8::1\", 5]\n",
        2,
        42,
        &["routes.static[1]", "integer `5`", "string"],
    );
    reject(
        "[routes]\nstatic = \"100#10.0.1.0/24@2001:db8::1\"\n",
        2,
        10,
        &["routes.static", "a list of route strings"],
    );
    reject("server = 5\n", 1, 10, &["server", "expected a table"]);
    reject(
        "[[log]]\nlevel = \"info\"\n",
        1,
        1,
        &["log", "expected a table"],
    );
}

#[test]
fn go_address_forms() {
    let c = parse(
        "[server]\nlisten = [\":4711\", \"localhost:4712\"]\n\
         [client]\nservers = [\"metalbond.example:4711\", \"[::1]:4711\"]\n",
    );
    assert_eq!(
        c.server.listen,
        vec![addr("[::]:4711"), addr("127.0.0.1:4712")]
    );
    let servers = c.client.unwrap().servers;
    assert_eq!(servers[0].name(), Some("metalbond.example"));
    assert_eq!(servers[0].to_string(), "metalbond.example:4711");
    assert_eq!(servers[1].socket_addr(), Some(addr("[::1]:4711")));
}

#[test]
fn bad_socket_addresses() {
    reject(
        "[server]\nlisten = [\"[::]:4711\", \"no-such-host.invalid:4711\"]\n",
        2,
        24,
        &[
            "server.listen[1]",
            "\"no-such-host.invalid:4711\"",
            "cannot resolve",
        ],
    );
    reject(
        "[server]\nlisten = [\"[::]:4711\", \"bad host:4711\"]\n",
        2,
        24,
        &["server.listen[1]", "bad host name", ":PORT"],
    );
    reject(
        "[server]\nlisten = [\"[::1]:4711\", \"127.0.0.1:4711\", \"[::1]:4711\"]\n",
        2,
        10,
        &["server.listen", "[::1]:4711 is given twice"],
    );
    reject(
        "[server]\nlisten = [\"[::]\"]\n",
        2,
        11,
        &["server.listen[0]", "\"[::]\""],
    );
    reject(
        "[server]\nlisten = []\n",
        2,
        10,
        &["server.listen", "empty"],
    );
    reject(
        "[api]\ntcp_listen = \"127.0.0.1\"\n",
        2,
        14,
        &["api.tcp_listen", "\"127.0.0.1\"", "not a socket address"],
    );
}

#[test]
fn bad_octal_modes() {
    for (value, what) in [
        ("0999", "not an octal permission mode"),
        ("rw-rw----", "not an octal permission mode"),
        ("", "not an octal permission mode"),
        ("0o", "not an octal permission mode"),
        ("-660", "not an octal permission mode"),
        ("17777", "exceeds 07777"),
    ] {
        reject(
            &format!("[api]\nsocket_mode = \"{value}\"\n"),
            2,
            15,
            &["api.socket_mode", &format!("{value:?}"), what],
        );
    }
}

#[test]
fn bad_log_settings() {
    reject(
        "[log]\nformat = \"xml\"\n",
        2,
        10,
        &["log.format", "\"xml\"", "\"text\" or \"json\""],
    );
    reject(
        "[log]\nformat = \"Text\"\n",
        2,
        10,
        &["log.format", "\"Text\""],
    );
    reject(
        "[log]\nlevel = \"info,metalbondd=loud\"\n",
        2,
        9,
        &["log.level", "\"info,metalbondd=loud\"", "not a log filter"],
    );
    reject("[log]\nlevel = \"\"\n", 2, 9, &["log.level", "empty"]);
}

#[test]
fn out_of_range_counts() {
    reject(
        "[server]\nmax_sessions = 0\n",
        2,
        16,
        &["server.max_sessions", "0 is out of range", "at least 1"],
    );
    reject(
        "[server]\nwrite_timeout = 0\n",
        2,
        17,
        &["server.write_timeout", "0 is out of range"],
    );
    reject(
        "[server]\nmax_lag_bytes = 0\n",
        2,
        17,
        &["server.max_lag_bytes", "0 is out of range"],
    );
    reject(
        "[server]\npace_limit = -16384\n",
        2,
        14,
        &["server.pace_limit", "-16384 is out of range"],
    );
    assert_eq!(parse("[server]\npace_limit = 0").server.pace_limit, 0);
}

#[test]
fn empty_strings() {
    reject("[state]\ndir = \"\"\n", 2, 7, &["state.dir", "empty"]);
    reject("[api]\nsocket = \"\"\n", 2, 10, &["api.socket", "empty"]);
    reject(
        "[api]\nsocket_group = \"\"\n",
        2,
        16,
        &["api.socket_group", "empty"],
    );
    reject(
        "[server]\nhttp = \"\"\n",
        2,
        8,
        &["server.http", "not an HTTP listen address"],
    );
    reject(
        "[metrics]\nlisten = \"somewhere\"\n",
        2,
        10,
        &["metrics.listen", "not an HTTP listen address"],
    );
    reject(
        "[metrics]\nvni_label_limit = -1\n",
        2,
        19,
        &["metrics.vni_label_limit"],
    );
}

#[test]
fn positions_count_characters_and_lines() {
    assert_eq!(line_col("", 0), (1, 1));
    assert_eq!(line_col("abc", 2), (1, 3));
    assert_eq!(line_col("abc\n", 4), (2, 1));
    assert_eq!(line_col("a\nbc\nd", 3), (2, 2));
    assert_eq!(line_col("a\r\nb", 3), (2, 1));
    // Multi-byte characters count as one column; offsets inside one and
    // past the end are clamped.
    assert_eq!(line_col("é=x", 2), (1, 2));
    assert_eq!(line_col("é=x", 1), (1, 1));
    assert_eq!(line_col("ab", 99), (1, 3));
    // An error after a non-ASCII comment is in the right column.
    reject(
        "# café ☕\n[log] # überall\nformat = \"xml\"\n",
        3,
        10,
        &["log.format"],
    );
    reject("[log]\nformat = \"é\"\ny = 1", 2, 10, &["\"é\""]);
}

#[test]
fn unreadable_file_has_no_position() {
    let err = Config::load("/nonexistent/metalbondd.toml").unwrap_err();
    assert_eq!(err.location, None);
    let shown = err.to_string();
    assert!(
        shown.starts_with("/nonexistent/metalbondd.toml: cannot read the file: "),
        "{shown}"
    );
}

/// The example files in `examples/` stay valid. (The daemon's tests also
/// parse their static routes.)
#[test]
fn examples_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let full = Config::load(dir.join("metalbondd.toml")).unwrap_or_else(|e| panic!("{e}"));
    // The full example spells out every default.
    let d = Config::default();
    assert_eq!(full.server.keepalive, d.server.keepalive);
    assert_eq!(full.server.max_sessions, d.server.max_sessions);
    assert_eq!(full.server.max_lag_bytes, d.server.max_lag_bytes);
    assert_eq!(full.server.write_timeout, d.server.write_timeout);
    assert_eq!(full.server.pace_limit, d.server.pace_limit);
    assert_eq!(full.server.withdraw_delay, d.server.withdraw_delay);
    assert_eq!(
        full.api.socket.as_deref(),
        Some(Path::new(DEFAULT_API_SOCKET))
    );
    assert_eq!(full.api.socket_mode, d.api.socket_mode);
    assert_eq!(full.api.tcp_read_only, d.api.tcp_read_only);
    assert_eq!(
        full.state.dir.as_deref(),
        Some(Path::new(DEFAULT_STATE_DIR))
    );
    assert_eq!(full.log, d.log);
    assert!(!full.routes.static_routes.is_empty());

    let minimal = Config::load(dir.join("minimal.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(minimal.server.listen, vec![addr("[::]:4711")]);
    assert_eq!(minimal.routes.static_routes.len(), 1);
}

#[test]
fn client_section_absent_means_no_client_role() {
    assert_eq!(parse("").client, None);
    assert_eq!(parse("[server]\n").client, None);
}

#[test]
fn client_section_defaults_and_full() {
    let c = parse("[client]\nservers = [\"[2001:db8::1]:4711\"]\n");
    let client = c.client.expect("client section");
    assert_eq!(client.servers, vec![server("[2001:db8::1]:4711")]);
    assert_eq!(
        client,
        ClientSection {
            servers: vec![server("[2001:db8::1]:4711")],
            ..ClientSection::default()
        }
    );
    assert_eq!(client.keepalive, DEFAULT_KEEPALIVE_SECS);
    assert_eq!(client.hold_time, DEFAULT_HOLD_TIME_SECS);
    assert_eq!(client.stale_time, DEFAULT_STALE_TIME_SECS);
    assert!(!client.cleanup && !client.ipv4_only && client.tun.is_none());

    let text = "[client]\n\
        servers = [\"[2001:db8::1]:4711\", \"192.0.2.1:4711\"]\n\
        subscribe = [100, 200]\n\
        announce = [\"100#10.0.1.0/24@2001:db8::9\"]\n\
        install_routes = [\"100#100\", \"200#4294967295\"]\n\
        tun = \"overlay-tun\"\n\
        ipv4_only = true\n\
        keepalive = 3\n\
        hold_time = 0\n\
        stale_time = 86400\n\
        cleanup = true\n\
        flush_at_start = true\n\
        reconnect_min = 2\n\
        reconnect_max = 120\n";
    let client = parse(text).client.unwrap();
    assert_eq!(client.servers.len(), 2);
    assert_eq!(client.subscribe, vec![100, 200]);
    assert_eq!(client.announce.len(), 1);
    assert_eq!(client.announce[0].get_ref(), "100#10.0.1.0/24@2001:db8::9");
    assert_eq!(client.install_routes, vec![(100, 100), (200, u32::MAX)]);
    assert_eq!(client.tun.as_deref(), Some("overlay-tun"));
    assert!(client.ipv4_only && client.cleanup && client.flush_at_start);
    assert_eq!(
        (client.keepalive, client.hold_time, client.stale_time),
        (3, 0, 86400)
    );
    assert_eq!((client.reconnect_min, client.reconnect_max), (2, 120));
}

#[test]
fn bad_client_sections() {
    let ok = "servers = [\"[::1]:4711\"]\n";
    reject(
        &format!("[client]\n{ok}bogus = 1\n"),
        3,
        1,
        &["unknown key `client.bogus`", "`hold_time`"],
    );
    reject(
        &format!("[client]\n{ok}install_routes = [\"100#0\"]\ntun = \"t\"\n"),
        3,
        19,
        &["client.install_routes[0]", "table 0"],
    );
    reject(
        &format!("[client]\n{ok}install_routes = [\"100\"]\ntun = \"t\"\n"),
        3,
        19,
        &["client.install_routes[0]", "VNI#TABLE"],
    );
    reject(
        &format!("[client]\n{ok}subscribe = [-1]\n"),
        3,
        14,
        &["client.subscribe[0]", "VNI"],
    );
    reject(
        &format!("[client]\n{ok}hold_time = 86401\n"),
        3,
        13,
        &["client.hold_time", "86400"],
    );
    reject(
        &format!("[client]\n{ok}stale_time = \"60\"\n"),
        3,
        14,
        &["client.stale_time"],
    );
    reject(
        "[client]\nservers = [\"nope\"]\n",
        2,
        12,
        &["client.servers[0]", "no port", "HOST:PORT"],
    );
    reject(
        "[client]\nservers = [\"2001:db8::1\"]\n",
        2,
        12,
        &["client.servers[0]", "brackets"],
    );
    reject(
        "# the client\n  [client]\nsubscribe = [100]\n",
        2,
        3,
        &["client.servers", "at least one"],
    );
    reject(
        &format!("[client]\n{ok}install_routes = [\"100#100\"]\n"),
        1,
        1,
        &["client.tun"],
    );
}

#[test]
fn install_route_mappings() {
    assert_eq!(parse_install_route("100#100"), Ok((100, 100)));
    assert_eq!(parse_install_route(" 7 # 9 "), Ok((7, 9)));
    for bad in ["100", "x#1", "1#x", "1#0", "1#4294967296", "#"] {
        assert!(parse_install_route(bad).is_err(), "{bad}");
    }
}

/// The commented `[client]` section of the full example is valid once
/// uncommented (explanations are `# # ` lines, keys `# key = ...`).
#[test]
fn example_client_section_is_valid_when_uncommented() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let text = std::fs::read_to_string(dir.join("metalbondd.toml")).unwrap();
    let start = text
        .find("# [client]")
        .expect("a commented [client] section");
    let mut uncommented = text[..start].to_string();
    for line in text[start..].lines() {
        if line.starts_with("# # ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            uncommented.push_str(rest);
            uncommented.push('\n');
        }
    }
    let c = parse(&uncommented);
    let client = c.client.expect("client section");
    assert_eq!(client.servers.len(), 2);
    assert_eq!(client.install_routes, vec![(100, 100)]);
    assert_eq!(client.hold_time, DEFAULT_HOLD_TIME_SECS);
    assert_eq!(client.stale_time, DEFAULT_STALE_TIME_SECS);
    assert_eq!(client.keepalive, DEFAULT_KEEPALIVE_SECS);
    assert!(!client.cleanup && !client.ipv4_only);
    assert!(client.tls.is_some(), "the example [client.tls]");
}

#[test]
fn metrics_section_and_go_style_http_addresses() {
    let c = parse(FULL);
    assert_eq!(
        c.metrics,
        crate::MetricsSection {
            listen: Some(addr("[::]:9711")),
            vni_label_limit: 50,
        }
    );
    assert_eq!(Config::default().metrics.listen, None);
    assert_eq!(
        Config::default().metrics.vni_label_limit,
        crate::DEFAULT_METRICS_VNI_LABEL_LIMIT
    );
    assert_eq!(crate::http_addr(":4712"), Ok(addr("[::]:4712")));
    assert_eq!(crate::http_addr("localhost:80"), Ok(addr("127.0.0.1:80")));
    assert_eq!(crate::http_addr("[::1]:9711"), Ok(addr("[::1]:9711")));
    assert!(crate::http_addr(":99999").is_err());
    assert!(crate::http_addr("host:1").is_err());
}

/// Every error of `text`, as `(line, col, message)`.
fn all_errors(text: &str) -> Vec<(usize, usize, String)> {
    let (_, errors) = Config::check_text(text, "bad.toml");
    errors
        .into_iter()
        .map(|e| {
            let (line, col) = e.location.expect("a position");
            (line, col, e.message)
        })
        .collect()
}

#[test]
fn every_error_is_reported_in_file_order() {
    // "server" is parsed after "log" and "api" (keys reach serde sorted),
    // but its errors come first because they come first in the file.
    let text = "[server]\nkeepalive = -1\nlisten = [\"x\", \"[::1]:1\", \"y\"]\n\n[logging]\nlevel = 1\n\n[api]\nsocket_mode = \"9\"\n";
    let errors = all_errors(text);
    let at: Vec<(usize, usize)> = errors.iter().map(|e| (e.0, e.1)).collect();
    assert_eq!(
        at,
        [(2, 13), (3, 11), (3, 27), (5, 2), (9, 15)],
        "{errors:?}"
    );
    assert!(errors[0].2.starts_with("server.keepalive"), "{errors:?}");
    assert!(errors[1].2.starts_with("server.listen[0]"), "{errors:?}");
    // Both bad items of one list, and no complaint about the list itself.
    assert!(errors[2].2.starts_with("server.listen[2]"), "{errors:?}");
    assert!(errors[3].2.contains("unknown key `logging`"), "{errors:?}");
    assert!(errors[4].2.starts_with("api.socket_mode"), "{errors:?}");
    // `Config::parse` still gives the first of them.
    reject(text, 2, 13, &["server.keepalive"]);
}

#[test]
fn a_list_whose_only_item_fails_is_not_also_reported_empty() {
    let errors = all_errors("[server]\nlisten = [\"nope\"]\n");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!((errors[0].0, errors[0].1), (2, 11));
}

#[test]
fn client_checks_do_not_repeat_an_error_of_the_section() {
    // The bad server is reported; "give at least one route server" would
    // only repeat it.
    let errors = all_errors("[client]\nservers = [\"nope\"]\n");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].2.starts_with("client.servers[0]"), "{errors:?}");
    // Without any error in the section, the cross-key check still runs.
    let errors = all_errors("[client]\nsubscribe = [1]\n[api]\nsocket_mode = \"9\"\n");
    let messages: Vec<&str> = errors.iter().map(|e| e.2.as_str()).collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        messages[0].starts_with("client.servers: give at least one"),
        "{messages:?}"
    );
    assert!(messages[1].starts_with("api.socket_mode"), "{messages:?}");
}

#[test]
fn positions_survive_removed_multibyte_text() {
    // The first error's value holds multi-byte characters; the second
    // error on the next line keeps its column.
    let errors = all_errors("[log]\nformat = \"ünïcödé\"\nlevel = \"\"\n");
    let at: Vec<(usize, usize)> = errors.iter().map(|e| (e.0, e.1)).collect();
    assert_eq!(at, [(2, 10), (3, 9)], "{errors:?}");
}

#[test]
fn syntax_errors_are_all_reported() {
    let errors = all_errors("[server]\nkeepalive = = 5\n[api]\nsocket = \n");
    assert!(!errors.is_empty());
    assert_eq!(errors[0].0, 2, "{errors:?}");
    let mut sorted = errors.clone();
    sorted.sort();
    assert_eq!(sorted, errors, "in file order");
}

mod policy {
    use super::*;

    const FULL: &str = r#"
[[policy.class]]
name = "hypervisors"
match = ["2001:db8:100::/48", "10.0.0.0/8"]
subscribe_vnis = ["100-199", 300]
announce_vnis = ["100-199"]
next_hop = ["self", "2001:db8:ff::/48"]
route_types = ["std", "nat"]
max_routes = 10000
max_routes_action = "close"
max_routes_warn = 90
max_routes_per_vni = 2000
max_sessions_per_address = 4
connect_rate = "10/s"
connect_burst = 20

[[policy.class]]
name = "wide"
connect_rate = "600/m"
match = ["::/0", "0.0.0.0/0"]
next_hop = "self"

[policy.default]
subscribe_vnis = []
"#;

    #[test]
    fn parses_every_key() {
        let c = parse(FULL);
        let p = c.policy.expect("policy");
        assert_eq!(p.class.len(), 2);
        let h = &p.class[0];
        assert_eq!(h.name(), "hypervisors");
        let m: Vec<String> = h.match_prefixes().map(|c| c.to_string()).collect();
        assert_eq!(m, ["2001:db8:100::/48", "10.0.0.0/8"]);
        assert_eq!(
            h.subscribe_vnis,
            Some(vec![
                VniRange {
                    first: 100,
                    last: 199
                },
                VniRange {
                    first: 300,
                    last: 300
                }
            ])
        );
        let nh = h.next_hop.clone().expect("rule");
        assert!(nh.own_address);
        assert_eq!(nh.prefixes, vec!["2001:db8:ff::/48".parse().unwrap()]);
        assert_eq!(h.route_types, Some(vec![0, 1]));
        assert_eq!(h.max_routes, Some(10000));
        assert_eq!(h.max_routes_action, MaxRoutesAction::Close);
        assert_eq!(h.max_routes_warn, 90);
        assert_eq!(h.max_routes_per_vni, Some(2000));
        assert_eq!(h.max_sessions_per_address, Some(4));
        assert_eq!(
            h.connect_rate,
            Some(ConnectRate {
                count: 10,
                per_secs: 1
            })
        );
        assert_eq!(h.connect_burst(), Some(20));
        let w = &p.class[1];
        assert_eq!(
            w.next_hop,
            Some(NextHopRule {
                own_address: true,
                prefixes: vec![]
            })
        );
        assert_eq!(w.subscribe_vnis, None);
        assert_eq!(w.max_routes_warn, DEFAULT_MAX_ROUTES_WARN_PERCENT);
        assert_eq!(
            w.connect_rate,
            Some(ConnectRate {
                count: 600,
                per_secs: 60
            })
        );
        // Without connect_burst the bucket holds the rate's N.
        assert_eq!(w.connect_burst(), Some(600));
        assert_eq!(w.max_sessions_per_address, None);
        assert_eq!(w.max_routes_per_vni, None);
        let d = p.default.expect("default");
        assert_eq!(d.name(), "default");
        assert_eq!(d.subscribe_vnis, Some(vec![]));
        assert_eq!(d.announce_vnis, None);
    }

    #[test]
    fn no_policy_section_is_none() {
        assert_eq!(parse("[server]\n").policy, None);
        let p = parse("[policy.default]\nnext_hop = \"any\"\n")
            .policy
            .unwrap();
        assert_eq!(p.default.unwrap().next_hop, None);
    }

    #[test]
    fn cidr_matching_and_mapped_addresses() {
        let c: Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert!(c.contains("10.200.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        let mapped: Cidr = "::ffff:127.0.0.0/104".parse().unwrap();
        assert_eq!(mapped.to_string(), "127.0.0.0/8");
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:1::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.covers(&c));
        assert!(!c.covers(&all));
    }

    #[test]
    fn bad_values_have_positions() {
        reject(
            "[[policy.class]]\nname = \"a\"\nmatch = [\"10.0.0.0/33\"]\n",
            3,
            10,
            &["policy.class[0].match[0]", "longer than the address"],
        );
        reject(
            "[[policy.class]]\nname = \"a\"\nmatch = [\"10.0.0.0/8\"]\nannounce_vnis = [\"300-200\"]\n",
            4,
            18,
            &["announce_vnis[0]", "empty range"],
        );
        reject(
            "[policy.default]\nsubscribe_vnis = [\"1-x\"]\n",
            2,
            19,
            &["subscribe_vnis[0]", "not a VNI or a range"],
        );
        reject(
            "[policy.default]\nroute_types = [\"std\", \"bgp\"]\n",
            2,
            23,
            &["route_types[1]", "unknown route type \"bgp\""],
        );
        reject(
            "[policy.default]\nnext_hop = [\"self\", \"any\"]\n",
            2,
            12,
            &["next_hop", "cannot be combined"],
        );
        reject(
            "[policy.default]\nnext_hop = \"elsewhere\"\n",
            2,
            12,
            &["next_hop", "not a prefix"],
        );
        reject(
            "[policy.default]\ndestinations = [{ vnis = [100], prefixes = [\"10.0.0.0/40\"] }]\n",
            2,
            45,
            &["destinations", "longer than the address"],
        );
        reject(
            "[policy.default]\ndestinations = [{ vnis = [], prefixes = [] }]\n",
            2,
            16,
            &["destinations", "applies to no VNI"],
        );
        reject(
            "[policy.default]\ndestinations = [{ vni = [100], prefixes = [] }]\n",
            2,
            19,
            &["destinations[0].vni", "expected `vnis` or `prefixes`"],
        );
        reject(
            "[policy.default]\nmax_routes_action = \"drop\"\n",
            2,
            21,
            &["max_routes_action", "\"refuse\" or \"close\""],
        );
        reject(
            "[policy.default]\nmax_routes_warn = 0\n",
            2,
            19,
            &["max_routes_warn", "percentage"],
        );
        reject(
            "[policy.default]\nconnect_rate = \"10/fortnight\"\n",
            2,
            16,
            &["connect_rate", "not a rate", "\"N/s\""],
        );
        reject(
            "[policy.default]\nconnect_rate = \"0/s\"\n",
            2,
            16,
            &["connect_rate", "lets nobody connect"],
        );
        reject(
            "[policy.default]\nconnect_rate = \"1/s\"\nconnect_burst = 0\n",
            3,
            17,
            &["connect_burst", "out of range"],
        );
        reject(
            "[policy.default]\nmax_sessions_per_address = 0\n",
            2,
            28,
            &["max_sessions_per_address", "from 1"],
        );
        reject(
            "[policy.default]\nmax_routes_per_vni = -1\n",
            2,
            22,
            &["max_routes_per_vni", "0 or more"],
        );
        reject(
            "[[policy.class]]\nname = \"a\"\nmatch = [\"10.0.0.0/8\"]\nconnect_burst = 5\n",
            4,
            17,
            &["policy.class[0].connect_burst", "give connect_rate too"],
        );
        reject(
            "[policy.default]\nconnect_burst = 5\n",
            2,
            17,
            &["policy.default.connect_burst", "give connect_rate too"],
        );
        reject(
            "[policy.default]\nmatch = [\"10.0.0.0/8\"]\n",
            2,
            9,
            &["policy.default.match", "no match"],
        );
    }

    #[test]
    fn shadowed_classes_and_names_are_errors() {
        reject(
            "[[policy.class]]\nname = \"all\"\nmatch = [\"10.0.0.0/8\"]\n[[policy.class]]\nname = \"some\"\nmatch = [\"10.1.0.0/16\"]\n",
            6,
            10,
            &["policy.class[1].match[0]", "10.1.0.0/16 lies inside 10.0.0.0/8", "\"all\""],
        );
        reject(
            "[[policy.class]]\nname = \"a\"\nmatch = [\"10.0.0.0/8\"]\n[[policy.class]]\nname = \"a\"\nmatch = [\"11.0.0.0/8\"]\n",
            5,
            8,
            &["policy.class[1].name", "comes earlier"],
        );
        reject(
            "[[policy.class]]\nname = \"a\"\n",
            2,
            8,
            &["policy.class[0]", "match ="],
        );
        reject(
            "[[policy.class]]\nname = \"a b\"\nmatch = [\"10.0.0.0/8\"]\n",
            2,
            8,
            &["not a class name"],
        );
        // Narrower first, then wider: the ordinary layout.
        let p = parse("[[policy.class]]\nname = \"some\"\nmatch = [\"10.1.0.0/16\"]\n[[policy.class]]\nname = \"all\"\nmatch = [\"10.0.0.0/8\"]\n");
        assert_eq!(p.policy.unwrap().class.len(), 2);
    }
}

#[test]
fn example_policy_section_is_valid_when_uncommented() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let text = std::fs::read_to_string(dir.join("metalbondd.toml")).unwrap();
    let start = text.find("# [[policy.class]]").expect("a commented policy");
    let end = text[start..].find("\n\n").map_or(text.len(), |e| start + e);
    let mut uncommented = String::new();
    for line in text[start..end].lines() {
        if let Some(rest) = line.strip_prefix("# ").filter(|r| !r.starts_with("# ")) {
            uncommented.push_str(rest);
            uncommented.push('\n');
        }
    }
    let c = parse(&uncommented);
    let p = c.policy.expect("policy");
    assert_eq!(p.class[0].name(), "hypervisors");
    assert_eq!(p.class[0].max_routes, Some(10000));
    assert_eq!(p.default.expect("default").announce_vnis, Some(vec![]));
}

#[test]
fn tls_sections() {
    let c = parse(
        "[server]\nlisten = [\"[::1]:4711\"]\ntls_listen = [\"[::1]:4712\", \":4713\"]\n\
         [server.tls]\ncert = \"/etc/mb/server.pem\"\nkey = \"/etc/mb/server.key\"\nclient_ca = \"/etc/mb/ca.pem\"\n\
         [client]\nservers = [\"tls://mb.example:4712\", \"[::1]:4711\"]\n[client.tls]\nca = \"/etc/mb/ca.pem\"\n",
    );
    assert_eq!(
        c.server.tls_listen.get_ref(),
        &vec![addr("[::1]:4712"), addr("[::]:4713")]
    );
    let tls = c.server.tls.as_ref().unwrap().get_ref();
    assert_eq!(tls.cert.get_ref(), Path::new("/etc/mb/server.pem"));
    assert_eq!(
        tls.client_ca.as_ref().unwrap().get_ref(),
        Path::new("/etc/mb/ca.pem")
    );
    let client = c.client.unwrap();
    assert!(client.servers[0].tls());
    assert_eq!(client.servers[0].host(), "mb.example");
    assert_eq!(client.servers[0].to_string(), "tls://mb.example:4712");
    assert!(!client.servers[1].tls());
    assert!(client.tls.unwrap().get_ref().cert.is_none());
}

#[test]
fn bad_tls_sections() {
    reject(
        "[server]\ntls_listen = [\"[::1]:4712\"]\n",
        2,
        14,
        &["tls_listen needs [server.tls]"],
    );
    reject(
        "[server]\nlisten = [\"[::1]:4712\"]\ntls_listen = [\"[::1]:4712\"]\n[server.tls]\ncert = \"a\"\nkey = \"b\"\n",
        3,
        14,
        &["[::1]:4712 is also in server.listen"],
    );
    reject(
        "[server]\ntls_listen = [\"[::1]:4712\", \"[::1]:4712\"]\n",
        2,
        14,
        &["[::1]:4712"],
    );
    reject("[server.tls]\ncert = \"a\"\n", 1, 1, &["key"]);
    reject(
        "[client]\nservers = [\"tls://[::1]:4712\"]\n",
        1,
        1,
        &["tls://[::1]:4712 needs [client.tls]"],
    );
    reject(
        "[client]\nservers = [\"tcp://[::1]:4712\"]\n",
        2,
        12,
        &["unknown scheme \"tcp\""],
    );
}

#[test]
fn policy_match_identity() {
    let c = parse(
        "[[policy.class]]\nname = \"hv\"\nmatch_identity = [\"*.HV.example.net\", \"hv-1.example.net\"]\n",
    );
    let class = &c.policy.unwrap().class[0];
    assert!(class.matches.is_none());
    assert_eq!(
        class.identity_patterns().collect::<Vec<_>>(),
        ["*.hv.example.net", "hv-1.example.net"]
    );
    reject(
        "[[policy.class]]\nname = \"hv\"\nmatch_identity = [\"a.*.net\"]\n",
        3,
        18,
        &["not an identity pattern"],
    );
    reject(
        "[[policy.class]]\nname = \"hv\"\n",
        2,
        8,
        &["match_identity"],
    );
    reject(
        "[policy.default]\nmatch_identity = [\"a.net\"]\n",
        2,
        18,
        &["has no match_identity"],
    );
}

#[test]
fn store_defaults_to_redb_and_etcd_section_parses() {
    let c = parse("");
    assert_eq!(*c.store.backend.get_ref(), StoreBackend::Redb);
    assert!(c.store.etcd.is_none());
    let c = parse(
        "[store]\nbackend = \"etcd\"\n[store.etcd]\nendpoints = [\"http://127.0.0.1:2379\", \"http://[::1]:2380/\"]\n\
         prefix = \"/fleet-a\"\ndial_timeout = \"500ms\"\nrequest_timeout = 3\nmax_txn_ops = 64\n\
         username = \"mb\"\npassword_file = \"/etc/mb/pw\"\n",
    );
    assert_eq!(*c.store.backend.get_ref(), StoreBackend::Etcd);
    let e = c.store.etcd.as_ref().unwrap().get_ref();
    assert_eq!(
        e.endpoints.get_ref(),
        &vec![
            "http://127.0.0.1:2379".to_string(),
            "http://[::1]:2380".to_string()
        ]
    );
    assert_eq!(e.prefix, "/fleet-a/");
    assert_eq!(e.dial_timeout, std::time::Duration::from_millis(500));
    assert_eq!(e.request_timeout, std::time::Duration::from_secs(3));
    assert_eq!(e.max_txn_ops, 64);
    assert_eq!(e.username.as_deref(), Some("mb"));
    let d = parse("[store]\nbackend = \"etcd\"\n[store.etcd]\nendpoints = [\"http://a:1\"]\n");
    let e = d.store.etcd.as_ref().unwrap().get_ref();
    assert_eq!(e.prefix, DEFAULT_ETCD_PREFIX);
    assert_eq!(e.dial_timeout, DEFAULT_ETCD_DIAL_TIMEOUT);
    assert_eq!(e.request_timeout, DEFAULT_ETCD_REQUEST_TIMEOUT);
    assert_eq!(e.max_txn_ops, DEFAULT_ETCD_MAX_TXN_OPS);
}

#[test]
fn bad_store_settings_are_reported_at_their_position() {
    reject(
        "[store]\nbackend = \"zk\"\n",
        2,
        11,
        &["store.backend", "redb", "etcd"],
    );
    reject("[store]\nbackend = \"etcd\"\n", 2, 11, &["[store.etcd]"]);
    reject(
        "[store]\nbackend = \"etcd\"\n[store.etcd]\nendpoints = [\"127.0.0.1:2379\"]\n",
        4,
        13,
        &["http://"],
    );
    reject(
        "[store]\nbackend = \"etcd\"\n[store.etcd]\nendpoints = [\"http://h\"]\n",
        4,
        13,
        &["port"],
    );
    reject(
        "[store]\nbackend = \"etcd\"\n[store.etcd]\nendpoints = []\n",
        4,
        13,
        &["at least one"],
    );
    reject(
        "[store]\nbackend = \"etcd\"\n[store.etcd]\nendpoints = [\"https://a:1\"]\n",
        4,
        13,
        &["store.etcd.ca"],
    );
    reject(
        "[store]\nbackend = \"etcd\"\n[store.etcd]\nendpoints = [\"http://a:1\", \"https://b:1\"]\nca = \"/ca\"\n",
        4,
        13,
        &["either http:// or https://"],
    );
    reject(
        "[store]\nbackend = \"etcd\"\n[store.etcd]\nendpoints = [\"https://a:1\"]\nca = \"/ca\"\ncert = \"/c\"\n",
        6,
        8,
        &["both cert and key"],
    );
    reject(
        "[store]\nbackend = \"etcd\"\n[store.etcd]\nendpoints = [\"http://a:1\"]\npassword_file = \"/pw\"\n",
        5,
        17,
        &["username and password_file"],
    );
    reject(
        "[store]\nbackend = \"etcd\"\n[store.etcd]\nendpoints = [\"http://a:1\"]\ndial_timeout = \"2 parsecs\"\n",
        5,
        16,
        &["store.etcd.dial_timeout", "not a duration"],
    );
    reject(
        "[store]\nbackend = \"etcd\"\n[store.etcd]\nendpoints = [\"http://a:1\"]\nprefix = \"\"\n",
        5,
        10,
        &["prefix is empty"],
    );
    reject(
        "[store.etcd]\nendpoints = [\"http://a:1\"]\n",
        1,
        1,
        &["backend is \"redb\""],
    );
    reject(
        "[store]\nbackend = \"etcd\"\n[store.etcd]\nendpoints = [\"http://a:1\"]\nhosts = 1\n",
        5,
        1,
        &["hosts"],
    );
}
