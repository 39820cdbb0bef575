//! The Go reference MetalBond (`ironcore-dev/metalbond`) as a test peer:
//! finding the binary `.ci/run` builds (`METALBONDD_TEST_GO_METALBOND`),
//! running its `server` and `client` commands as real processes on
//! loopback, and reading the routes they received from their status page
//! (`--http`, `/routes.json`).
//!
//! Facts of the Go binary these helpers rely on (see the build kit's
//! README, shared/go-reference): it logs to stderr (logrus text format);
//! the server logs `Listening on ADDR` once bound; a client logs
//! `Connection established` per server and panics if a server is not
//! ESTABLISHED within 10 s; SIGTERM/SIGKILL end it at once (peers see the
//! TCP connection drop). Its status page lists the routes it *received*,
//! not its own announcements.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a Go process gets to log that it is ready. Its client gives up
/// (panics) after 10 s without a session; this is a little longer, so that
/// the panic and its stack are in the failure message.
const READY_TIMEOUT: Duration = Duration::from_secs(12);

/// Polling step for conditions that have no event we can await (the Go
/// process's status page, its log).
const POLL: Duration = Duration::from_millis(50);

/// The Go reference binary (`METALBONDD_TEST_GO_METALBOND`), or None after
/// printing why `test` is skipped; under `CI=true` a missing binary fails
/// the test (`.ci/run` builds it, so CI always has it).
pub fn go_metalbond(test: &str) -> Option<PathBuf> {
    let reason = match std::env::var("METALBONDD_TEST_GO_METALBOND") {
        Ok(p) if !p.is_empty() => {
            let path = PathBuf::from(&p);
            if path.is_file() {
                return Some(path);
            }
            format!("METALBONDD_TEST_GO_METALBOND={p} is not a file")
        }
        _ => {
            "METALBONDD_TEST_GO_METALBOND is not set (.ci/run builds the Go reference)".to_string()
        }
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: cannot run with CI=true: {reason}");
    }
    // Past the test harness's output capture, so that it shows in a passing run.
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
    None
}

/// A running Go `metalbond` process; killed (SIGKILL, by its PID) and
/// reaped on drop.
pub struct GoProc {
    child: Mutex<Child>,
    pid: u32,
    /// `server` or `client`, for messages.
    role: &'static str,
    /// Its MetalBond listener (server) or the server it connects to (client).
    pub addr: SocketAddr,
    /// Its status page (`--http`).
    pub http: SocketAddr,
    log: Arc<Mutex<String>>,
}

/// Our text form of a Go announcement, for the Go command line:
/// `23#10.0.1.0/24@2001:db8::1#nat#1000#2000` becomes
/// `23#10.0.1.0/24#2001:db8::1#NAT#1000#2000` (`#lb`: `#LB`).
pub fn go_announce(text: &str) -> String {
    let (head, hop) = text.split_once('@').expect("VNI#PREFIX@HOP[...]");
    let mut parts = hop.split('#');
    let addr = parts.next().unwrap();
    let mut out = format!("{head}#{addr}");
    for p in parts {
        out.push('#');
        out.push_str(&p.to_uppercase());
    }
    out
}

impl GoProc {
    /// Starts `bin ROLE ARGS --http HTTP` (inside the network namespace
    /// `ns` if given: `ip netns exec` execs it, so the PID is the Go
    /// process's) and waits (bounded) until it logs `ready`.
    fn spawn(
        bin: &Path,
        ns: Option<&str>,
        role: &'static str,
        args: &[String],
        addr: SocketAddr,
        http: SocketAddr,
        ready: &str,
    ) -> GoProc {
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.arg(role)
            .args(args)
            .arg("--http")
            .arg(http.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} {role}: {e}", bin.display()));
        let pid = child.id();
        let log = Arc::new(Mutex::new(String::new()));
        let tag = format!("go-{role}:{pid}");
        reader(child.stderr.take().unwrap(), log.clone(), tag.clone());
        reader(child.stdout.take().unwrap(), log.clone(), tag);
        let p = GoProc {
            child: Mutex::new(child),
            pid,
            role,
            addr,
            http,
            log,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        while !p.logs().contains(ready) {
            if let Ok(Some(status)) = p.child.lock().unwrap().try_wait() {
                panic!(
                    "Go {role} {args:?} exited with {status} before `{ready}`; log:\n{}",
                    p.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "Go {role} {args:?} did not log `{ready}` within {READY_TIMEOUT:?}; log:\n{}",
                p.logs()
            );
            std::thread::sleep(POLL);
        }
        p
    }

    /// Starts `metalbond server --listen [::1]:PORT --http [::1]:PORT`
    /// (free ports) and waits until it listens.
    pub fn server(bin: &Path) -> GoProc {
        Self::server_at(bin, super::free_addr())
    }

    /// Like [`GoProc::server`], listening on `addr` (e.g. a restart on the
    /// address of a server that ended).
    pub fn server_at(bin: &Path, addr: SocketAddr) -> GoProc {
        let http = super::free_addr();
        Self::spawn(
            bin,
            None,
            "server",
            &["--listen".into(), addr.to_string()],
            addr,
            http,
            "Listening on",
        )
    }

    /// Starts `metalbond client --server SERVER --subscribe VNI...
    /// --announce ROUTE...` (routes in our text form, see [`go_announce`])
    /// with a status page on a free port, and waits until its session is
    /// ESTABLISHED.
    pub fn client(bin: &Path, server: SocketAddr, subscribe: &[u32], announce: &[&str]) -> GoProc {
        Self::client_with(bin, None, server, subscribe, announce, &[])
    }

    /// Starts `metalbond client --server SERVER --subscribe VNI...` and
    /// waits only until it has set up its peer, not for a session: for a
    /// server that is expected to refuse it (e.g. a TLS port).
    pub fn client_unestablished(bin: &Path, server: SocketAddr, subscribe: &[u32]) -> GoProc {
        let mut args = vec!["--server".to_string(), server.to_string()];
        for v in subscribe {
            args.extend(["--subscribe".into(), v.to_string()]);
        }
        Self::spawn(
            bin,
            None,
            "client",
            &args,
            server,
            super::free_addr(),
            "Adding peer",
        )
    }

    /// Like [`GoProc::client`], inside the network namespace `ns` if given,
    /// with `extra` flags (`--install-routes VNI#TABLE --tun DEV`).
    pub fn client_with(
        bin: &Path,
        ns: Option<&str>,
        server: SocketAddr,
        subscribe: &[u32],
        announce: &[&str],
        extra: &[&str],
    ) -> GoProc {
        let mut args = vec!["--server".to_string(), server.to_string()];
        for v in subscribe {
            args.extend(["--subscribe".into(), v.to_string()]);
        }
        for r in announce {
            args.extend(["--announce".into(), go_announce(r)]);
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        Self::spawn(
            bin,
            ns,
            "client",
            &args,
            server,
            super::free_addr(),
            "Connection established",
        )
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Everything it logged so far (stderr and stdout).
    pub fn logs(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The lines of its log at level error, fatal or panic (logrus), and Go
    /// runtime panics.
    pub fn error_lines(&self) -> Vec<String> {
        self.logs()
            .lines()
            .filter(|l| {
                l.contains("level=error")
                    || l.contains("level=fatal")
                    || l.contains("level=panic")
                    || l.starts_with("panic:")
            })
            .map(str::to_string)
            .collect()
    }

    /// Sends SIGTERM to its PID (the Go binary ends at once, without a
    /// goodbye: its peers see the connection drop) and reaps it (bounded).
    pub fn terminate(&self) -> std::process::ExitStatus {
        // SAFETY: kill(2) with our own, not yet reaped child's PID.
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + super::T;
        loop {
            if let Ok(Some(status)) = self.child.lock().unwrap().try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "Go {} {} did not exit on SIGTERM; log:\n{}",
                self.role,
                self.pid,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The routes of its status page, in our text form
    /// (`23#10.0.1.0/24@2001:db8::1#nat#1000#2000`, `...#lb`).
    pub async fn routes(&self) -> BTreeSet<String> {
        let resp = super::http::get(self.http, "/routes.json").await;
        assert_eq!(resp.status, 200, "{resp:?}");
        parse_routes_json(&resp.body)
    }

    /// Polls its status page (bounded) until its routes are exactly `want`;
    /// panics with what it had, and its log, otherwise.
    pub async fn wait_routes(&self, want: &[&str], what: &str, timeout: Duration) {
        let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.routes().await;
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: Go {} {} has routes {got:#?}, want {want:#?} (after {timeout:?}); log:\n{}",
                self.role,
                self.pid,
                self.logs()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Polls its log (bounded) until it contains `needle`.
    pub async fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.logs().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for GoProc {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        // `Child::kill` signals exactly this PID (SIGKILL); then reap it.
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn reader(stream: impl Read + Send + 'static, log: Arc<Mutex<String>>, tag: String) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            // Echoed for debugging; libtest shows it only for failing tests.
            eprintln!("[{tag}] {line}");
            let mut log = log.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
}

/// The routes of a Go status page (`/routes.json`) in our text form.
/// Its shape: `{"vnet": {"VNI": {"{\"IPVersion\":4,\"Prefix\":\"P\"}":
/// [{"TargetAddress", "Type" (0 STANDARD, 1 NAT, 2 LB), "NATPortRangeFrom",
/// "NATPortRangeTo", ...}]}}}`.
pub fn parse_routes_json(body: &str) -> BTreeSet<String> {
    let doc: Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("routes.json ({e}): {body}"));
    let mut out = BTreeSet::new();
    let Some(vnets) = doc["vnet"].as_object() else {
        // No VNI yet: `"vnet": {}` or null.
        return out;
    };
    for (vni, dests) in vnets {
        for (dest, hops) in dests.as_object().expect("destinations") {
            let dest: Value = serde_json::from_str(dest)
                .unwrap_or_else(|e| panic!("destination key {dest:?}: {e}"));
            let prefix = dest["Prefix"].as_str().expect("Prefix");
            for hop in hops.as_array().expect("next hops") {
                let addr = hop["TargetAddress"].as_str().expect("TargetAddress");
                let mut s = format!("{vni}#{prefix}@{addr}");
                match hop["Type"].as_u64() {
                    Some(0) => {}
                    Some(1) => s.push_str(&format!(
                        "#nat#{}#{}",
                        hop["NATPortRangeFrom"], hop["NATPortRangeTo"]
                    )),
                    Some(2) => s.push_str("#lb"),
                    other => panic!("next hop type {other:?} in {hop}"),
                }
                out.insert(s);
            }
        }
    }
    out
}
