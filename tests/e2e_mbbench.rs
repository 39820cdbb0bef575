//! mbbench's fleet scenario (issue 9) against the real `metalbondd` binary:
//! a small fleet converges, churns and survives a reconnect storm with exact
//! state in every session; and against a server that delivers nothing,
//! mbbench reports the missing routes and fails. Also checks that
//! `mbbench --help` describes mbbench and every scenario (issue 10).

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use metalbondd::wire::{Hello, Message};

/// Upper bound for one mbbench run here (it bounds its own phases too).
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// Runs mbbench with `args`, bounded by [`RUN_LIMIT`] (killed by its PID
/// after that); returns (exit code, stdout).
fn mbbench(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mbbench"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mbbench");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for mbbench") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        // A child's exit has no event to wait on here; poll briefly.
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = out.join().unwrap();
    let err = err.join().unwrap();
    eprintln!("[mbbench stderr]\n{err}");
    assert!(
        status.is_some(),
        "mbbench ran longer than {RUN_LIMIT:?}:\n{err}"
    );
    (status.and_then(|s| s.code()), out)
}

/// The JSON object of each phase, by phase name.
fn phases(out: &str) -> Vec<(String, serde_json::Value)> {
    out.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("valid JSON");
            (v["scenario"].as_str().unwrap().to_string(), v)
        })
        .collect()
}

/// mbbench's fleet scenario against `server`: H sessions, V VNIs, S
/// subscriptions and R routes per session, then the `more` arguments.
fn fleet(server: &str, [h, v, s, r]: [&str; 4], more: &[&str]) -> (Option<i32>, String) {
    let mut args = vec![
        "--server",
        server,
        "--scenario",
        "fleet",
        "--hypervisors",
        h,
        "--vnis",
        v,
        "--subs-per-session",
        s,
        "--routes-per-session",
        r,
    ];
    args.extend_from_slice(more);
    mbbench(&args)
}

/// [`phases`], which must be exactly `names` in this order.
fn phases_named(out: &str, names: &[&str]) -> Vec<(String, serde_json::Value)> {
    let p = phases(out);
    let got: Vec<&str> = p.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(got, names, "{out}");
    p
}

fn num(v: &serde_json::Value, k: &str) -> f64 {
    v[k].as_f64()
        .unwrap_or_else(|| panic!("field {k} missing in {v}"))
}

#[test]
fn small_fleet_is_exact_in_every_phase() {
    let d = Daemon::start(&[]);
    let addr = d.addr.to_string();
    let pid = d.pid().to_string();
    let (code, out) = fleet(
        &addr,
        ["50", "20", "5", "8"],
        &[
            "--server-pid",
            &pid,
            "--churn-rate",
            "40",
            "--churn-secs",
            "1",
            "--storm-window",
            "0.5",
            "--settle-ms",
            "200",
            "--timeout",
            "30",
            "--json",
        ],
    );
    let p = phases_named(
        &out,
        &[
            "fleet-connect",
            "fleet-converge",
            "fleet-churn",
            "fleet-storm",
        ],
    );
    for (name, v) in &p {
        assert_eq!(v["completed"], true, "{name} did not complete: {v}");
        assert_eq!(v["exact"], true, "{name} not exact: {v}");
        for k in [
            "missing",
            "extra",
            "duplicates",
            "stale",
            "keepalive_timeouts",
            "resets",
            "connect_failures",
            "keepalive_unsolicited",
            "unexpected_frames",
            "sessions_off",
            "sessions_down",
        ] {
            assert_eq!(num(v, k), 0.0, "{name}: {k} in {v}");
        }
        assert!(num(v, "server_cpu_s") >= 0.0, "{name}: server CPU read");
        let kernel = num(v, "server_kernel_cpu_s");
        assert!(
            (0.0..=num(v, "server_cpu_s")).contains(&kernel),
            "{name}: the kernel's part of the server's CPU in {v}"
        );
        assert!(
            num(v, "server_hwm_after_kib") > 0.0,
            "{name}: server memory read"
        );
    }
    let (_, connect) = &p[0];
    assert_eq!(num(connect, "connects"), 50.0);
    let (_, converge) = &p[1];
    assert!(num(converge, "adds") > 0.0, "deliveries: {converge}");
    assert_eq!(
        num(converge, "adds"),
        num(converge, "expected_held"),
        "one ADD per expected route"
    );
    let (_, churn) = &p[2];
    assert_eq!(num(churn, "churn_events"), 40.0);
    assert!(
        num(churn, "removes") > 0.0,
        "withdrawals delivered: {churn}"
    );
    let (_, storm) = &p[3];
    assert_eq!(num(storm, "connects"), 50.0, "every session reconnected");
    assert!(
        num(storm, "adds") >= num(storm, "expected_held"),
        "re-dumped: {storm}"
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(d.is_alive());
}

/// Sessions that offer SYNC, as metalbondd agents do, get one SYNC per
/// dump and are still counted exactly (the server no longer paces them).
#[test]
fn a_fleet_offering_sync_gets_a_sync_per_dump_and_is_exact() {
    let d = Daemon::start(&[]);
    let addr = d.addr.to_string();
    let (code, out) = fleet(
        &addr,
        ["30", "10", "4", "5"],
        &[
            "--churn-secs",
            "0",
            "--no-storm",
            "--settle-ms",
            "200",
            "--timeout",
            "30",
            "--offer-sync",
            "--json",
        ],
    );
    let p = phases_named(&out, &["fleet-connect", "fleet-converge"]);
    let (_, converge) = &p[1];
    assert_eq!(converge["offer_sync"], true, "{converge}");
    assert_eq!(converge["exact"], true, "{converge}");
    assert_eq!(num(converge, "unexpected_frames"), 0.0, "{converge}");
    assert_eq!(
        num(converge, "adds"),
        num(converge, "expected_held"),
        "one ADD per expected route"
    );
    // Every session's 4 SUBSCRIBEs were answered with a dump and a SYNC.
    assert_eq!(num(converge, "syncs"), 30.0 * 4.0, "{converge}");
    assert_eq!(code, Some(0), "{out}");
    assert!(d.is_alive());
}

/// A "server" that completes every handshake and echoes KEEPALIVEs but
/// never forwards a route: every expected route is missing.
fn silent_server() -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("[::1]:0").expect("bind");
    let addr = listener.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        // Serves a bounded number of sessions; each ends when mbbench exits.
        for stream in listener.incoming().take(20) {
            let Ok(mut s) = stream else { return };
            std::thread::spawn(move || {
                let hello = frame(&Message::Hello(Hello {
                    keepalive_secs: 5,
                    is_server: true,
                    extensions: 0,
                }));
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let mut greeted = false;
                loop {
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    while buf.len() >= 4 {
                        let len = usize::from(u16::from_be_bytes([buf[1], buf[2]]));
                        if buf.len() < 4 + len {
                            break;
                        }
                        let reply: Option<&[u8]> = match buf[3] {
                            mtype::HELLO if !greeted => {
                                greeted = true;
                                Some(&hello)
                            }
                            mtype::KEEPALIVE => Some(&[1, 0, 0, 2]),
                            _ => None,
                        };
                        if let Some(r) = reply {
                            if s.write_all(r).is_err() {
                                return;
                            }
                        }
                        buf.drain(..4 + len);
                    }
                }
            });
        }
    });
    (addr, t)
}

#[test]
fn missing_routes_are_reported_and_fail_the_run() {
    let (addr, _server) = silent_server();
    let addr = addr.to_string();
    let (code, out) = fleet(
        &addr,
        ["10", "5", "2", "4"],
        &["--timeout", "2", "--stall", "0", "--json"],
    );
    let p = phases_named(&out, &["fleet-connect", "fleet-converge"]);
    assert_eq!(p[0].1["exact"], true, "{out}");
    let converge = &p[1].1;
    assert_eq!(converge["completed"], false);
    assert_eq!(converge["exact"], false);
    assert!(num(converge, "missing") > 0.0, "{converge}");
    assert_eq!(num(converge, "missing"), num(converge, "expected_held"));
    let notes = converge["notes"].to_string();
    assert!(
        notes.contains("missing"),
        "names sessions with missing routes: {notes}"
    );
    assert_eq!(code, Some(1), "{out}");
}

#[test]
fn help_describes_mbbench_and_every_scenario() {
    let (code, out) = mbbench(&["--help"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("MetalBond route servers"), "{out}");
    assert!(
        !out.contains("hypervisor agent"),
        "the daemon's description: {out}"
    );
    for scenario in [
        "fanout",
        "dump",
        "withdraw",
        "latency",
        "session-end",
        "scrape",
        "fleet",
        "--hypervisors",
        "--zipf-s",
        "--churn-rate",
        "--storm-window",
    ] {
        assert!(out.contains(scenario), "--help mentions {scenario}: {out}");
    }
    let (code, _) = mbbench(&[
        "--server",
        "[::1]:1",
        "--scenario",
        "fleet",
        "--subs-per-session",
        "30",
        "--vnis",
        "20",
    ]);
    assert_eq!(code, Some(2), "a bad fleet shape is a usage error");
}

#[test]
fn nothing_listening_is_a_setup_failure() {
    // A port nothing listens on: taken from a listener we close again.
    let port = TcpListener::bind("[::1]:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("[::1]:{port}");
    let started = Instant::now();
    let (code, out) = mbbench(&[
        "--server",
        &addr,
        "--scenario",
        "fleet",
        "--hypervisors",
        "5",
        "--json",
    ]);
    assert_eq!(code, Some(2), "{out}");
    // Without the early exit it would wait for --stall (30 s).
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}
