//! End-to-end tests of the configuration file: `metalbondd check-config`,
//! `--config` with static routes, command-line overrides, and SIGHUP
//! re-reading the file. The real binary, driven by raw MetalBond peers.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use metalbondd::wire::Route;
use metalbondd_config::Config;

/// A scratch directory for one test's files, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // Short: the control API's Unix socket lives here (108-byte limit).
        let dir = std::env::temp_dir().join(format!("mbcfg-{}-{n}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    /// Writes `name` with `text` and returns its path.
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The `[api]` and `[state]` sections pointing into this directory, so
    /// that daemons need no root and never share state.
    fn private_sections(&self) -> String {
        format!(
            "[api]\nsocket = \"{}\"\n\n[state]\ndir = \"{}\"\n",
            self.0.join("api.sock").display(),
            self.0.join("state").display()
        )
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// Asserts a failed check: exit 1, nothing on stdout, and one line on
/// stderr starting with `FILE:LINE:COL: ` and naming each of `words`.
#[track_caller]
fn assert_rejected(
    run: (Option<i32>, String, String),
    file: &Path,
    line: usize,
    col: usize,
    words: &[&str],
) {
    let (code, out, err) = run;
    assert_eq!(code, Some(1), "exit code; stderr: {err}");
    assert_eq!(out, "", "stdout of a failed check");
    let prefix = format!("{}:{line}:{col}: ", file.display());
    assert!(
        err.starts_with(&prefix),
        "stderr {err:?} does not start with {prefix:?}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    for w in words {
        assert!(err.contains(w), "stderr {err:?} does not mention {w:?}");
    }
}

// ---------------------------------------------------------------------------
// check-config
// ---------------------------------------------------------------------------

#[test]
fn check_config_accepts_good_files() {
    let s = Scratch::new("good");
    let file = s.write(
        "good.toml",
        "[server]\nlisten = [\"[::1]:0\"]\nkeepalive = 7\n\n[routes]\nstatic = [\"100#10.0.1.0/24@2001:db8::1\"]\n",
    );
    let empty = s.write("empty.toml", "");
    for f in [
        file,
        empty,
        examples_dir().join("metalbondd.toml"),
        examples_dir().join("minimal.toml"),
        // The configs of the systemd units (systemd/, docs/OPERATIONS.md).
        examples_dir().join("server.toml"),
        examples_dir().join("client.toml"),
    ] {
        let f = path_str(&f);
        for args in [
            vec!["check-config", f],
            vec!["--check", "--config", f],
            vec!["server", "--check", "--config", f],
        ] {
            let (code, out, err) = run_to_exit(&args);
            assert_eq!(code, Some(0), "{args:?}: stderr {err}");
            assert_eq!(out, format!("{f}: ok\n"), "{args:?}");
        }
    }
}

#[test]
fn check_config_rejects_unknown_key() {
    let s = Scratch::new("unknown");
    let file = s.write(
        "bad.toml",
        "[server]\nlisten = [\"[::1]:0\"]\nkeepalive = 7\nkepalive = 7\n",
    );
    for args in [
        vec!["check-config", path_str(&file)],
        vec!["--check", "--config", path_str(&file)],
    ] {
        assert_rejected(
            run_to_exit(&args),
            &file,
            4,
            1,
            &["unknown key `server.kepalive`", "`keepalive`"],
        );
    }
    let file = s.write(
        "bad2.toml",
        "[state]\ndir = \"/tmp\"\n\n[logging]\nlevel = \"debug\"\n",
    );
    assert_rejected(
        run_to_exit(&["check-config", path_str(&file)]),
        &file,
        4,
        2,
        &["unknown key `logging`"],
    );
}

#[test]
fn check_config_rejects_bad_route() {
    let s = Scratch::new("route");
    let file = s.write(
        "bad.toml",
        "[server]\nlisten = [\"[::1]:0\"]\n\n[routes]\nstatic = [\n    \"100#10.0.1.0/24@2001:db8::1\",\n    \"100#10.0.1.0/24@not-an-ip\",\n]\n",
    );
    assert_rejected(
        run_to_exit(&["check-config", path_str(&file)]),
        &file,
        7,
        5,
        &[
            "routes.static[1]",
            "\"100#10.0.1.0/24@not-an-ip\"",
            "not an IP address",
        ],
    );
    let file = s.write(
        "nat.toml",
        "[routes]\nstatic = [\"200#10.0.2.0/24@2001:db8::2#nat\"]\n",
    );
    assert_rejected(
        run_to_exit(&["check-config", path_str(&file)]),
        &file,
        2,
        11,
        &["routes.static[0]", "port range"],
    );
}

#[test]
fn check_config_rejects_bad_values_and_missing_files() {
    let s = Scratch::new("values");
    let file = s.write("bad.toml", "[server]\nkeepalive = 86400\n");
    assert_rejected(
        run_to_exit(&["check-config", path_str(&file)]),
        &file,
        2,
        13,
        &["server.keepalive", "86400", "out of range"],
    );
    let file = s.write("mode.toml", "[api]\nsocket_mode = \"rw-rw----\"\n");
    assert_rejected(
        run_to_exit(&["check-config", path_str(&file)]),
        &file,
        2,
        15,
        &["api.socket_mode", "octal"],
    );
    let missing = s.0.join("missing.toml");
    let (code, out, err) = run_to_exit(&["check-config", path_str(&missing)]);
    assert_eq!((code, out.as_str()), (Some(1), ""), "{err}");
    assert!(
        err.starts_with(&format!("{}: cannot read the file", missing.display())),
        "{err}"
    );
}

#[test]
fn daemon_refuses_to_start_with_a_bad_file() {
    let s = Scratch::new("refuse");
    let file = s.write(
        "bad.toml",
        "[server]\nlisten = [\"[::1]:0\"]\n[routes]\nstatic = [\"100#10.0.1.0/99@2001:db8::1\"]\n",
    );
    for args in [
        vec!["--config", path_str(&file)],
        vec!["server", "--config", path_str(&file), "--keepalive", "2"],
    ] {
        assert_rejected(
            run_to_exit(&args),
            &file,
            4,
            11,
            &["routes.static[0]", "length 99 exceeds 32 bits"],
        );
    }
}

/// A file with several errors in several sections: every one is reported,
/// one `FILE:LINE:COL: reason` line each, in file order (the keys of a
/// section reach the parser sorted, so "api" would come before "server").
const MANY_ERRORS: &str = "\
[server]
listen = [\"[::1]:0\", \"not-an-address\"]
keepalive = 86400
kepalive = 7

[api]
socket_mode = \"rw-rw----\"

[routes]
static = [
    \"100#10.0.1.0/24@2001:db8::1\",
    \"100#10.0.1.0/99@2001:db8::1\",
    \"100#10.0.2.0/24@not-an-ip\",
]
";

#[track_caller]
fn assert_every_error_in_file_order(run: (Option<i32>, String, String), file: &Path) {
    let (code, out, err) = run;
    assert_eq!(code, Some(1), "exit code; stderr: {err}");
    assert_eq!(out, "", "stdout of a failed check");
    let f = file.display();
    let lines: Vec<&str> = err.lines().collect();
    let want = [
        (format!("{f}:2:22: "), "server.listen[1]"),
        (format!("{f}:3:13: "), "server.keepalive"),
        (format!("{f}:4:1: "), "unknown key `server.kepalive`"),
        (format!("{f}:7:15: "), "api.socket_mode"),
        (format!("{f}:12:5: "), "routes.static[1]"),
        (format!("{f}:13:5: "), "routes.static[2]"),
    ];
    assert_eq!(lines.len(), want.len(), "one line per error: {err}");
    for (line, (prefix, word)) in lines.iter().zip(&want) {
        assert!(
            line.starts_with(prefix.as_str()),
            "{line:?} does not start with {prefix:?}; all:\n{err}"
        );
        assert!(line.contains(word), "{line:?} does not mention {word:?}");
    }
}

#[test]
fn check_config_reports_every_error_in_file_order() {
    let s = Scratch::new("many");
    let file = s.write("bad.toml", MANY_ERRORS);
    assert_every_error_in_file_order(run_to_exit(&["check-config", path_str(&file)]), &file);
    assert_every_error_in_file_order(
        run_to_exit(&["--check", "--config", path_str(&file)]),
        &file,
    );
    // The daemon refuses to start and lists them all too.
    assert_every_error_in_file_order(run_to_exit(&["--config", path_str(&file)]), &file);
}

/// The example files are valid and every static route in them parses (so
/// that they never rot).
#[test]
fn example_files_are_valid_and_their_routes_parse() {
    for name in ["metalbondd.toml", "minimal.toml"] {
        let path = examples_dir().join(name);
        let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            !config.routes.static_routes.is_empty(),
            "{name} shows a static route"
        );
        for r in &config.routes.static_routes {
            let (line, col) = config.position(r.span());
            r.get_ref()
                .parse::<Route>()
                .unwrap_or_else(|e| panic!("{}:{line}:{col}: {e}", path.display()));
        }
    }
}

// ---------------------------------------------------------------------------
// Running with a configuration file
// ---------------------------------------------------------------------------

#[tokio::test]
async fn static_route_from_the_file_is_in_the_dump() {
    let s = Scratch::new("static");
    let file = s.write(
        "metalbondd.toml",
        &format!(
            "[server]\nlisten = [\"[::1]:0\"]\nkeepalive = 5\n\n{}\n[routes]\nstatic = [\n    \"100#10.0.1.0/24@2001:db8::1\",\n    \"100#10.0.2.0/24@2001:db8::2#nat#1024#2048\",\n    \"200#10.0.3.0/24@2001:db8::3\",\n]\n",
            s.private_sections()
        ),
    );
    let d = Daemon::spawn(&["--config", path_str(&file)]).unwrap_or_else(|e| panic!("{e}"));
    let mut sub = RawPeer::established(d.addr).await;
    sub.subscribe(100).await;
    sub.expect_exactly(
        &[
            add(route("100#10.0.1.0/24@2001:db8::1")),
            add(route("100#10.0.2.0/24@2001:db8::2#nat#1024#2048")),
        ],
        "dump of VNI 100 with the file's static routes",
    )
    .await;
    sub.subscribe(200).await;
    sub.expect_exactly(
        &[add(route("200#10.0.3.0/24@2001:db8::3"))],
        "dump of VNI 200",
    )
    .await;
}

#[tokio::test]
async fn command_line_flags_override_the_file() {
    let s = Scratch::new("override");
    let file = s.write(
        "metalbondd.toml",
        &format!(
            "[server]\nlisten = [\"[::1]:0\"]\nkeepalive = 7\n\n{}",
            s.private_sections()
        ),
    );
    let file = path_str(&file);

    // The file alone: the server offers 7 s, so a client proposing 30 gets 7.
    let d = Daemon::spawn(&["--config", file]).unwrap_or_else(|e| panic!("{e}"));
    let mut p = RawPeer::connect(d.addr).await;
    assert_eq!(
        p.handshake(30).await.keepalive_secs,
        7,
        "keepalive from the file"
    );
    drop(p);
    assert!(d.terminate(T).is_some(), "daemon did not stop on SIGTERM");
    drop(d);

    // --keepalive 2 wins over the file's 7; --listen wins over its listen.
    let d = Daemon::spawn(&[
        "server",
        "--config",
        file,
        "--keepalive",
        "2",
        "--listen",
        "127.0.0.1:0",
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(d.addr.is_ipv4(), "--listen overrides the file: {}", d.addr);
    let mut p = RawPeer::connect(d.addr).await;
    assert_eq!(
        p.handshake(30).await.keepalive_secs,
        2,
        "--keepalive overrides the file"
    );
}

/// The worker threads the daemon's runtime reports at start (tokio's
/// blocking threads carry the workers' thread name, so /proc cannot tell).
async fn worker_threads(d: &Daemon) -> usize {
    let line = d
        .wait_for_line(|l| l.contains("metalbondd running"), T)
        .await
        .unwrap_or_else(|| panic!("no start line in:\n{}", d.logs()));
    let (_, n) = line
        .split_once("worker_threads=")
        .unwrap_or_else(|| panic!("no worker_threads in {line}"));
    n.split_whitespace().next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn worker_threads_default_to_the_roles_and_come_from_the_file_or_the_flag() {
    let s = Scratch::new("threads");
    let file = s.write(
        "metalbondd.toml",
        &format!(
            "[server]\nlisten = [\"[::1]:0\"]\n\n{}\n[runtime]\nthreads = 3\n",
            s.private_sections()
        ),
    );
    let file = path_str(&file);
    let plain = s.write(
        "plain.toml",
        &format!(
            "[server]\nlisten = [\"[::1]:0\"]\n\n{}",
            s.private_sections()
        ),
    );
    for (args, want) in [
        (vec!["--config", path_str(&plain)], 1),
        (vec!["--config", file], 3),
        (vec!["--config", file, "--threads", "2"], 2),
    ] {
        let d = Daemon::spawn(&args).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            worker_threads(&d).await,
            want,
            "worker threads with {args:?}"
        );
    }
    // The hypervisor role defaults to two (ADR 0033); its flag works too.
    for (args, want) in [(&[][..], 2), (&["--threads", "1"][..], 1)] {
        let mut all = vec!["--server", "[::1]:1"];
        all.extend_from_slice(args);
        let (d, _) = Daemon::start_client(&s.0.join(format!("client{want}")), &all);
        assert_eq!(
            worker_threads(&d).await,
            want,
            "client worker threads with {args:?}"
        );
    }
    let (code, _, err) = run_to_exit(&["--threads", "0"]);
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("--threads") && err.contains("must be at least 1"),
        "{err}"
    );
    let zero = s.write("zero.toml", "[runtime]\nthreads = 0\n");
    assert_rejected(
        run_to_exit(&["check-config", path_str(&zero)]),
        &zero,
        2,
        11,
        &["runtime.threads", "at least 1"],
    );
}

#[test]
fn log_level_from_the_file_and_verbose_override() {
    if std::env::var_os("E2E_RUST_LOG").is_some() {
        // RUST_LOG overrides the file and -v; nothing to check.
        return;
    }
    let s = Scratch::new("loglevel");
    // Only the server module logs at info: enough for the harness to see
    // `listening`, not enough for main's `configuration loaded` line, which
    // comes first.
    let file = s.write(
        "metalbondd.toml",
        &format!(
            "[server]\nlisten = [\"[::1]:0\"]\n\n{}\n[log]\nlevel = \"warn,metalbondd::server=info\"\n",
            s.private_sections()
        ),
    );
    let file = path_str(&file);
    let d = Daemon::spawn(&["--config", file]).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !d.logs().contains("configuration loaded"),
        "log.level from the file not applied; log:\n{}",
        d.logs()
    );
    drop(d);

    // -v means debug, whatever the file says.
    let d = Daemon::spawn(&["--config", file, "-v"]).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        d.logs().contains("configuration loaded"),
        "-v does not override log.level; log:\n{}",
        d.logs()
    );
}

#[tokio::test]
async fn sighup_rereads_the_file_and_keeps_running_on_a_bad_one() {
    let s = Scratch::new("reload");
    let config = |routes: &str| {
        format!(
            "[server]\nlisten = [\"[::1]:0\"]\n\n{}\n[routes]\nstatic = [{routes}]\n",
            s.private_sections()
        )
    };
    let file = s.write(
        "metalbondd.toml",
        &config("\"100#10.0.1.0/24@2001:db8::1\""),
    );
    let d = Daemon::spawn(&["--config", path_str(&file)]).unwrap_or_else(|e| panic!("{e}"));
    let mut sub = RawPeer::established(d.addr).await;
    sub.subscribe(100).await;
    sub.expect_exactly(&[add(route("100#10.0.1.0/24@2001:db8::1"))], "initial dump")
        .await;

    // A new static route replaces the old one.
    s.write(
        "metalbondd.toml",
        &config("\"100#10.0.9.0/24@2001:db8::9\""),
    );
    sighup(&d);
    let got = sub.expect_updates(2, T).await;
    assert_same_updates(
        &got,
        &[
            rem(route("100#10.0.1.0/24@2001:db8::1")),
            add(route("100#10.0.9.0/24@2001:db8::9")),
        ],
        "after SIGHUP",
    );

    // A broken file is rejected with its position; the daemon keeps running
    // with what it had.
    s.write("metalbondd.toml", &config("\"100#10.0.9.0/24@nowhere\""));
    sighup(&d);
    let where_ = format!("{}:", file.display());
    let line = d
        .wait_for_line(|l| l.contains(&where_) && l.contains("routes.static[0]"), T)
        .await
        .unwrap_or_else(|| panic!("no rejection logged; log:\n{}", d.logs()));
    assert!(
        line.contains(&format!("{}:11:11: ", file.display())),
        "position of the bad route: {line}"
    );
    assert!(d.is_alive());
    sub.ping().await;
    sub.expect_no_update(QUIET).await;
}

fn sighup(d: &Daemon) {
    // SAFETY: kill(2) with our own child's PID and a valid signal number.
    unsafe {
        libc::kill(d.pid() as libc::pid_t, libc::SIGHUP);
    }
}

#[tokio::test]
async fn api_reload_applies_what_it_can_and_reports_the_rest() {
    use metalbond_proto::api as pb;
    let s = Scratch::new("apireload");
    let config = |listen: &str, max_sessions: u32, level: &str, routes: &str, threads: u32| {
        format!(
            "[server]\nlisten = [\"{listen}\"]\nmax_sessions = {max_sessions}\n\n{}\n[log]\nlevel = \"{level}\"\n\n[routes]\nstatic = [{routes}]\n\n[runtime]\nthreads = {threads}\n",
            s.private_sections()
        )
    };
    let file = s.write(
        "metalbondd.toml",
        &config("[::1]:0", 100, "info", "\"100#10.0.1.0/24@2001:db8::1\"", 1),
    );
    let d = Daemon::spawn(&["--config", path_str(&file)]).unwrap_or_else(|e| panic!("{e}"));
    let mut sub = RawPeer::established(d.addr).await;
    sub.subscribe(100).await;
    sub.expect_exactly(&[add(route("100#10.0.1.0/24@2001:db8::1"))], "initial dump")
        .await;
    let mut api = common::api::connect(&s.0.join("api.sock")).await;

    s.write(
        "metalbondd.toml",
        &config("[::1]:1", 1, "debug", "\"100#10.0.2.0/24@2001:db8::2\"", 2),
    );
    let report = api
        .daemon
        .reload(pb::ReloadRequest {})
        .await
        .expect("reload")
        .into_inner();
    let applied = report.applied.join("; ");
    assert!(
        applied.contains("static routes: 1 announced, 1 withdrawn"),
        "{applied}"
    );
    assert!(applied.contains("server.max_sessions = 1"), "{applied}");
    assert!(applied.contains("log.level = debug"), "{applied}");
    assert_eq!(
        report.needs_restart,
        vec!["server.listen".to_string(), "runtime.threads".to_string()]
    );
    // The session was not dropped and heard the change.
    let got = sub.expect_updates(2, T).await;
    assert_same_updates(
        &got,
        &[
            rem(route("100#10.0.1.0/24@2001:db8::1")),
            add(route("100#10.0.2.0/24@2001:db8::2")),
        ],
        "after Reload",
    );
    // The new session limit holds (one session is open): a new one is refused.
    let mut refused = RawPeer::connect(d.addr).await;
    assert!(refused.expect_closed(T).await.is_empty());
    // The new log level is live: debug lines appear.
    sub.subscribe(100).await; // a duplicate SUBSCRIBE is logged at debug
    assert!(d.wait_for_log("duplicate SUBSCRIBE ignored", T).await);

    // A broken file: FAILED_PRECONDITION naming the position; nothing changes.
    s.write("metalbondd.toml", "[server]\nlisten = 7\n");
    let err = api.daemon.reload(pb::ReloadRequest {}).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains(&format!("{}:2:", file.display())),
        "{}",
        err.message()
    );
    sub.ping().await;
    sub.expect_no_update(QUIET).await;
    assert!(d.is_alive());
}
