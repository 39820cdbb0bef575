//! The Go reference's command lines, and a first run for anyone (issue 10):
//! the real `metalbondd` and `mbctl` binaries.
//!
//! - Address forms: `--listen :PORT` (every address, IPv4 and IPv6),
//!   `--listen localhost:PORT`, host names for `client --server`, in the
//!   flags, the config file, `mbctl server add`; duplicate listen addresses
//!   refused before anything is bound.
//! - A name that resolves to several addresses, the first refusing, and a
//!   service that moves (a namespace with its own `/etc/hosts`: root and
//!   `ip` needed, skipped otherwise unless `CI=true`).
//! - Default paths as a user who is not root (as root, the test runs the
//!   daemon and `mbctl` as `nobody`): the XDG fallbacks, a server and a
//!   client role side by side with their own defaults, `mbctl` reaching
//!   each without a path.
//! - `metalbondd client --help` names the file key of each flag.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::mbctl::{mbctl_bin, run, Out};
use common::netns::NetnsEnv;
use common::*;
use serde_json::Value;

/// `--api-socket DIR/NAME.sock --state-dir DIR/NAME`.
fn private_paths(dir: &Path, name: &str) -> Vec<String> {
    vec![
        "--api-socket".into(),
        dir.join(format!("{name}.sock")).display().to_string(),
        "--state-dir".into(),
        dir.join(name).display().to_string(),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// `mbctl -o json --socket SOCKET servers`, as JSON.
async fn servers(socket: &Path) -> Vec<Value> {
    let mut cmd = Command::new(mbctl_bin());
    cmd.args([
        "-o",
        "json",
        "--socket",
        socket.to_str().unwrap(),
        "servers",
    ])
    .env_remove("MBCTL_SOCKET")
    .env_remove("MBCTL_ROLE")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    run(cmd).await.json()["servers"]
        .as_array()
        .expect("a server list")
        .clone()
}

/// Waits (bounded, on the log) for a `route server up` line whose fields
/// contain each of `fields`.
async fn wait_up(client: &Daemon, fields: &[&str]) {
    let line = client
        .wait_for_line(
            |l| l.contains("route server up") && fields.iter().all(|f| contains_field(l, f)),
            T,
        )
        .await;
    assert!(
        line.is_some(),
        "no `route server up` with {fields:?}; log:\n{}",
        client.logs()
    );
}

// ---------------------------------------------------------------------------
// Listen forms and duplicates
// ---------------------------------------------------------------------------

#[tokio::test]
async fn listen_on_every_address_and_on_localhost() {
    let dir = unique_temp_dir();
    // `:0` is every address, IPv6 and IPv4, as in Go's net.Listen.
    let mut args = vec!["server".to_string(), "--listen".into(), ":0".into()];
    args.extend(private_paths(&dir, "any"));
    let any = Daemon::spawn(&strs(&args)).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        any.addr.ip().is_unspecified() && any.addr.is_ipv6(),
        "{}",
        any.addr
    );
    for host in ["127.0.0.1", "[::1]"] {
        let addr = format!("{host}:{}", any.addr.port()).parse().unwrap();
        let mut peer = RawPeer::connect(addr).await;
        let hello = peer.handshake(DEFAULT_KEEPALIVE).await;
        assert!(hello.is_server, "{addr}");
    }

    // `localhost:0`: the name resolved at start, IPv4 first as in Go.
    let mut args = vec![
        "server".to_string(),
        "--listen".into(),
        "localhost:0".into(),
    ];
    args.extend(private_paths(&dir, "local"));
    let local = Daemon::spawn(&strs(&args)).unwrap_or_else(|e| panic!("{e}"));
    assert!(local.addr.ip().is_loopback(), "{}", local.addr);
    RawPeer::established(local.addr).await;

    // The same forms in the config file.
    let file = dir.join("listen.toml");
    std::fs::write(&file, "[server]\nlisten = [\":0\", \"localhost:0\"]\n").unwrap();
    let mut args = vec![
        "--config".to_string(),
        file.display().to_string(),
        "--keepalive".into(),
        "5".into(),
    ];
    args.extend(private_paths(&dir, "file"));
    // Running: every listener is bound and logged.
    let from_file = Daemon::spawn_running(&strs(&args)).unwrap_or_else(|e| panic!("{e}"));
    let listening: Vec<String> = from_file
        .logs()
        .lines()
        .filter(|l| l.contains("listening"))
        .filter_map(parse_addr_field)
        .map(|a| a.ip().to_string())
        .collect();
    assert_eq!(listening, ["::", "127.0.0.1"], "{}", from_file.logs());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_listen_address_given_twice_is_refused_before_binding() {
    let port = free_port();
    let same = format!("[::1]:{port}");
    for twice in [
        vec!["--listen", &same, "--listen", &same],
        vec![
            "server",
            "--listen",
            "127.0.0.1:0",
            "--listen",
            &same,
            "--listen",
            &same,
        ],
    ] {
        let (code, out, err) = run_to_exit(&twice);
        assert_eq!(code, Some(2), "{twice:?}: {err}");
        assert_eq!(out, "");
        assert_eq!(
            err,
            format!("metalbondd: --listen: listen address {same} is given twice\n")
        );
    }
    // Names resolve first: localhost:P and 127.0.0.1:P are one address.
    let v4 = format!("127.0.0.1:{port}");
    let named = format!("localhost:{port}");
    let (code, _, err) = run_to_exit(&["--listen", &named, "--listen", &v4]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&format!("{v4} is given twice")), "{err}");

    // In the file: FILE:LINE:COL naming the key.
    let dir = unique_temp_dir();
    let file = dir.join("twice.toml");
    std::fs::write(
        &file,
        format!("[server]\nlisten = [\"{same}\", \"{same}\"]\n"),
    )
    .unwrap();
    let (code, out, err) = run_to_exit(&["check-config", file.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(out, "");
    assert!(
        err.starts_with(&format!("{}:2:10: server.listen: ", file.display())),
        "{err}"
    );
    assert!(
        err.contains("is given twice") && err.lines().count() == 1,
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------
// Host names for route servers
// ---------------------------------------------------------------------------

#[tokio::test]
async fn client_connects_by_name_from_the_file_and_mbctl() {
    let dir = unique_temp_dir();
    let mut args = vec![
        "server".to_string(),
        "--listen".into(),
        "localhost:0".into(),
    ];
    args.extend(private_paths(&dir, "s1"));
    let s1 = Daemon::spawn(&strs(&args)).unwrap_or_else(|e| panic!("{e}"));
    let mut args = vec!["server".to_string(), "--listen".into(), ":0".into()];
    args.extend(private_paths(&dir, "s2"));
    let s2 = Daemon::spawn(&strs(&args)).unwrap_or_else(|e| panic!("{e}"));

    // The client role with its server given by name in the file.
    let name1 = format!("localhost:{}", s1.addr.port());
    let file = dir.join("client.toml");
    std::fs::write(
        &file,
        format!("[client]\nservers = [\"{name1}\"]\nsubscribe = [100]\n"),
    )
    .unwrap();
    // -v: a server that cannot be reached is logged at debug level.
    let mut args = vec![
        "client".to_string(),
        "-v".into(),
        "--config".into(),
        file.display().to_string(),
    ];
    args.extend(private_paths(&dir, "c"));
    let client = Daemon::spawn_running(&strs(&args)).unwrap_or_else(|e| panic!("{e}"));
    let peer1 = format!("127.0.0.1:{}", s1.addr.port());
    wait_up(
        &client,
        &[&format!("addr={name1}"), &format!("peer={peer1}")],
    )
    .await;
    let sock = dir.join("c.sock");
    let listed = servers(&sock).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["address"], name1.as_str());
    assert_eq!(listed[0]["state"], "up");
    assert_eq!(listed[0]["connected"], peer1.as_str());
    assert_eq!(listed[0]["resolved"], serde_json::json!([peer1]));

    // `mbctl server add` with a name (upper case: names are not case
    // sensitive); the second server listens on every address.
    let name2 = format!("LocalHost:{}", s2.addr.port());
    let mut cmd = Command::new(mbctl_bin());
    cmd.args(["--socket", sock.to_str().unwrap(), "server", "add", &name2])
        .env_remove("MBCTL_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let added = run(cmd).await;
    let lower = name2.to_ascii_lowercase();
    assert_eq!(added.ok(), format!("added server {lower}\n"));
    wait_up(&client, &[&format!("addr={lower}")]).await;
    let listed = servers(&sock).await;
    let second = listed
        .iter()
        .find(|s| s["address"] == lower.as_str())
        .unwrap_or_else(|| panic!("{lower} not listed: {listed:?}"));
    assert_eq!(second["state"], "up", "{second}");
    assert!(
        second["connected"]
            .as_str()
            .is_some_and(|c| c.ends_with(&format!(":{}", s2.addr.port()))),
        "{second}"
    );

    // A name that does not resolve is kept and retried, and says why.
    let mut cmd = Command::new(mbctl_bin());
    cmd.args([
        "--socket",
        sock.to_str().unwrap(),
        "server",
        "add",
        "no-such-host.invalid:4711",
    ])
    .env_remove("MBCTL_SOCKET")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    run(cmd).await.ok();
    let line = client
        .wait_for_line(
            |l| l.contains("no-such-host.invalid") && l.contains("cannot resolve"),
            T,
        )
        .await;
    assert!(line.is_some(), "{}", client.logs());
    let listed = servers(&sock).await;
    let bad = listed
        .iter()
        .find(|s| s["address"] == "no-such-host.invalid:4711")
        .unwrap_or_else(|| panic!("not listed: {listed:?}"));
    assert_eq!(bad["state"], "down", "{bad}");
    assert_eq!(bad["resolved"], serde_json::json!([]), "{bad}");
    assert!(
        bad["last_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("cannot resolve: no-such-host.invalid")),
        "{bad}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// An `/etc/hosts` for the namespace `ns` (`ip netns exec` mounts
/// `/etc/netns/NS/hosts` over `/etc/hosts`), removed on drop. Rewritten in
/// place, so that the mount sees the new text.
struct NsHosts(PathBuf);

impl NsHosts {
    fn new(ns: &str, text: &str) -> NsHosts {
        let dir = Path::new("/etc/netns").join(ns);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let hosts = NsHosts(dir.join("hosts"));
        hosts.set(text);
        hosts
    }

    fn set(&self, text: &str) {
        std::fs::write(&self.0, text).unwrap();
    }
}

impl Drop for NsHosts {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_resolved_address_is_tried_and_a_moved_service_is_followed() {
    let Some(env) = NetnsEnv::for_test_with(
        "every_resolved_address_is_tried_and_a_moved_service_is_followed",
        &[],
    ) else {
        return;
    };
    let hosts = NsHosts::new(
        &env.ns,
        "::1 metalbond.example\n127.0.0.1 metalbond.example\n",
    );
    // Only on the second address.
    let first = env.server_with("s1", "127.0.0.1:4711", "s1", &[]);
    let client = env.client(
        "c",
        &["metalbond.example:4711"],
        &["--subscribe", "100", "--reconnect-min", "0"],
    );
    wait_up(&client, &["peer=127.0.0.1:4711"]).await;
    let listed = servers(&env.sock("c")).await;
    assert_eq!(listed[0]["address"], "metalbond.example:4711");
    assert_eq!(listed[0]["connected"], "127.0.0.1:4711");
    // The resolver's order: ::1 first, which refused.
    assert_eq!(
        listed[0]["resolved"],
        serde_json::json!(["[::1]:4711", "127.0.0.1:4711"]),
        "{listed:?}"
    );

    // The service moves: the name now says ::1, the old server stops.
    hosts.set("::1 metalbond.example\n");
    let _moved = env.server_with("s2", "[::1]:4711", "s2", &[]);
    assert!(first.terminate(T).is_some(), "old server did not stop");
    wait_up(&client, &["peer=[::1]:4711"]).await;
    let listed = servers(&env.sock("c")).await;
    assert_eq!(listed[0]["connected"], "[::1]:4711", "{listed:?}");
    assert_eq!(
        listed[0]["resolved"],
        serde_json::json!(["[::1]:4711"]),
        "{listed:?}"
    );
}

// ---------------------------------------------------------------------------
// First run as a user who is not root; both roles on one host
// ---------------------------------------------------------------------------

/// As root: `nobody` (65534); otherwise this process's own user.
fn test_user() -> Option<u32> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    (unsafe { libc::geteuid() } == 0).then_some(65534)
}

/// Copies of the `metalbondd` and `mbctl` binaries in `dir`, so that the
/// test user can run them wherever the target directory is (a checkout
/// under a private home, say).
fn reachable_binaries(dir: &Path) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let daemon = dir.join("metalbondd");
    let ctl = dir.join("mbctl");
    std::fs::copy(env!("CARGO_BIN_EXE_metalbondd"), &daemon).unwrap();
    std::fs::copy(mbctl_bin(), &ctl).unwrap();
    (daemon, ctl)
}

/// `mbctl ARGS` (the binary `exe`) as [`test_user`] with `env`, no socket
/// given.
async fn mbctl_as(
    exe: &Path,
    env: &[(&str, &Path)],
    extra_env: &[(&str, &str)],
    args: &[&str],
) -> Out {
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .env_remove("MBCTL_SOCKET")
        .env_remove("MBCTL_ROLE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    as_user(&mut cmd, test_user(), env);
    run(cmd).await
}

#[tokio::test]
async fn first_run_as_a_user_with_both_roles_and_default_paths() {
    let base = unique_temp_dir();
    let home = base.join("home");
    let runtime = base.join("run");
    for d in [&home, &runtime] {
        std::fs::create_dir_all(d).unwrap();
        if let Some(uid) = test_user() {
            std::os::unix::fs::chown(d, Some(uid), Some(uid)).unwrap();
        }
    }
    // /tmp/metalbondd-UID is the last resort: with XDG_RUNTIME_DIR set it
    // is not used, and HOME gives the state directory.
    let env: [(&str, &Path); 2] = [("HOME", &home), ("XDG_RUNTIME_DIR", &runtime)];
    let (daemon, ctl) = reachable_binaries(&base.join("bin"));

    // No path on the command line.
    let server = Daemon::spawn_running_as(
        &daemon,
        test_user(),
        &env,
        &["server", "--listen", "[::1]:0"],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let logs = server.logs();
    let state = home.join(".local/state/metalbondd/state.redb");
    let socket = runtime.join("metalbondd/api.sock");
    assert!(
        logs.contains(&format!("path={}", state.display())),
        "state not under HOME: {logs}"
    );
    assert!(
        logs.contains(&format!("socket={}", socket.display())),
        "socket not under XDG_RUNTIME_DIR: {logs}"
    );

    // The client role next to it: its own defaults, no collision.
    let upstream = server.addr.to_string();
    let client = Daemon::spawn_running_as(
        &daemon,
        test_user(),
        &env,
        &["client", "--server", &upstream],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let logs = client.logs();
    let client_state = home.join(".local/state/metalbondd-client/state.redb");
    let client_socket = runtime.join("metalbondd-client/api.sock");
    assert!(
        logs.contains(&format!("path={}", client_state.display())),
        "{logs}"
    );
    assert!(
        logs.contains(&format!("socket={}", client_socket.display())),
        "{logs}"
    );
    wait_up(&client, &[&format!("addr={upstream}")]).await;

    // mbctl finds the server by default, the client with -c or MBCTL_ROLE.
    let status = mbctl_as(&ctl, &env, &[], &["-o", "json", "status"])
        .await
        .json();
    assert_eq!(
        status["api_socket"],
        socket.display().to_string(),
        "{status}"
    );
    for (extra, args) in [
        (&[][..], &["-c", "-o", "json", "servers"][..]),
        (
            &[("MBCTL_ROLE", "client")][..],
            &["-o", "json", "servers"][..],
        ),
    ] {
        let listed = mbctl_as(&ctl, &env, extra, args).await.json();
        assert_eq!(
            listed["servers"][0]["address"],
            upstream.as_str(),
            "{listed}"
        );
        assert_eq!(listed["servers"][0]["state"], "up", "{listed}");
    }

    // With the server gone, the client role's socket is the only one:
    // found without naming the role.
    mbctl_as(&ctl, &env, &[], &["shutdown"]).await.ok();
    assert!(server.terminate(T).is_some_and(|s| s.success()));
    assert!(!socket.exists(), "server socket left behind");
    let listed = mbctl_as(&ctl, &env, &[], &["-o", "json", "servers"])
        .await
        .json();
    assert_eq!(
        listed["servers"][0]["address"],
        upstream.as_str(),
        "{listed}"
    );

    mbctl_as(&ctl, &env, &[], &["shutdown"]).await.ok();
    let deadline = Instant::now() + T;
    while client.is_alive() {
        assert!(Instant::now() < deadline, "client did not stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = std::fs::remove_dir_all(&base);
}

// ---------------------------------------------------------------------------
// Help
// ---------------------------------------------------------------------------

#[test]
fn client_help_names_the_file_key_of_each_flag() {
    let (code, help, err) = run_to_exit(&["client", "--help"]);
    assert_eq!(code, Some(0), "{err}");
    // Each option's paragraph, whitespace folded.
    let mut paragraphs: Vec<(String, String)> = Vec::new();
    for line in help.lines() {
        let t = line.trim_start();
        if t.starts_with("--") || t.starts_with('-') && t.chars().nth(1) != Some('-') && t.len() > 1
        {
            let flag = t
                .split([' ', ','])
                .find(|w| w.starts_with("--"))
                .unwrap_or(t)
                .to_string();
            paragraphs.push((flag, t.to_string()));
        } else if let Some((_, text)) = paragraphs.last_mut() {
            text.push(' ');
            text.push_str(t);
        }
    }
    let text_of = |flag: &str| -> String {
        let (_, text) = paragraphs
            .iter()
            .find(|(f, _)| f == flag)
            .unwrap_or_else(|| panic!("no {flag} in:\n{help}"));
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    };
    for (flag, key) in [
        ("--server", "client.servers"),
        ("--subscribe", "client.subscribe"),
        ("--announce", "client.announce"),
        ("--install-routes", "client.install_routes"),
        ("--tun", "client.tun"),
        ("--keepalive", "client.keepalive"),
        ("--cleanup", "client.cleanup"),
        ("--flush-at-start", "client.flush_at_start"),
        ("--log-format", "log.format"),
        ("--api-socket", "api.socket"),
        ("--state-dir", "state.dir"),
    ] {
        let text = text_of(flag);
        assert!(
            text.contains(&format!("[file: {key}]")),
            "{flag} does not name [file: {key}]: {text}"
        );
    }
    // --cleanup is the Go reference's: at exit, not at start.
    assert!(text_of("--cleanup").contains("upon exit"), "{help}");
}
