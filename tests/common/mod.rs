//! Shared harness for the end-to-end suites: start the real `metalbondd`
//! binary, capture its log, and talk to it over loopback TCP with a raw
//! MetalBond peer built on our own codec.
//!
//! Rules this harness keeps:
//! - every wait is bounded (a deadline, never an unbounded loop);
//! - waiting on the daemon's log is event based (the reader thread signals
//!   each new line), never a fixed sleep;
//! - the only fixed waits are the short quiet periods used to assert that
//!   something does *not* arrive ([`RawPeer::expect_no_update`]);
//! - every daemon started is killed by its PID and reaped on drop.

#![allow(dead_code)]

pub mod api;
pub mod etcd;
pub mod go;
pub mod http;
pub mod mbctl;
pub mod netns;
#[cfg(feature = "interop")]
pub mod rustbond;
pub mod tls;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use metalbondd::wire::{
    decode_frame_with, encode_message, Action, Extensions, Frame, Hello, Message, Route, Update,
    Vni,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upper bound for anything we expect to happen "now" (an update to arrive,
/// a session to close). Generous: test machines are slow and run suites in
/// parallel; a passing test never waits this long.
pub const T: Duration = Duration::from_secs(5);

/// Quiet period used to assert that nothing arrives. The only way to check
/// an absence; kept short.
pub const QUIET: Duration = Duration::from_millis(300);

/// Keepalive interval the test daemons are configured with unless a test
/// asks otherwise. With 5 s, a silent test peer lives 12.5 s, longer than
/// any test using it.
pub const DEFAULT_KEEPALIVE: u32 = 5;

/// How long to wait for the daemon to log that it listens.
const START_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Daemon process
// ---------------------------------------------------------------------------

/// The daemon's captured log (stdout and stderr), with change signals for
/// synchronous and asynchronous waiters.
struct LogBuf {
    text: Mutex<String>,
    cv: Condvar,
    notify: tokio::sync::Notify,
}

impl LogBuf {
    fn new() -> Arc<LogBuf> {
        Arc::new(LogBuf {
            text: Mutex::new(String::new()),
            cv: Condvar::new(),
            notify: tokio::sync::Notify::new(),
        })
    }

    fn push_line(&self, line: &str) {
        {
            let mut text = self.text.lock().unwrap();
            text.push_str(line);
            text.push('\n');
        }
        self.cv.notify_all();
        self.notify.notify_waiters();
    }
}

/// A running `metalbondd` process.
pub struct Daemon {
    child: Mutex<Child>,
    pid: u32,
    /// The address the daemon reported it listens on.
    pub addr: SocketAddr,
    logs: Arc<LogBuf>,
    /// Temporary directory holding its API socket and state (removed on drop).
    dir: Option<std::path::PathBuf>,
}

/// A port on [::1] that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("[::1]:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An address on [::1] that nothing listened on a moment ago.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, free_port()))
}

/// Runs `metalbondd ARGS` to its exit (bounded: killed by PID otherwise)
/// with the log uncoloured and `RUST_LOG` unset: its exit code, stdout and
/// stderr.
pub fn run_to_exit(args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_metalbondd"));
    cmd.args(args)
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = mbctl::run_blocking(cmd);
    (out.code, out.stdout, out.stderr)
}

/// A new empty directory under the system temp dir, unique to this process and call.
pub fn unique_temp_dir() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "metalbondd-e2e-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a temp dir");
    dir
}

/// Removes ANSI escape sequences (colours), in case the log is coloured.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // CSI: parameters and intermediates, then one final byte in @..~.
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// The socket address after `addr=` in a log line, if any.
pub fn parse_addr_field(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("addr=")? + "addr=".len()..];
    let token = rest.split_whitespace().next()?;
    let token = token.trim_matches(|c| c == '"' || c == ',');
    token.parse().ok()
}

/// The value of the `reason=` field of a log line: a quoted string, or the
/// words up to the next `name=` field or the end of the line.
pub fn reason_field(line: &str) -> Option<String> {
    let rest = &line[line.find("reason=")? + "reason=".len()..];
    if let Some(quoted) = rest.strip_prefix('"') {
        let mut out = String::new();
        let mut escaped = false;
        for c in quoted.chars() {
            match (escaped, c) {
                (true, c) => {
                    out.push(c);
                    escaped = false;
                }
                (false, '\\') => escaped = true,
                (false, '"') => return Some(out),
                (false, c) => out.push(c),
            }
        }
        return Some(out);
    }
    let is_field = |w: &str| {
        w.split_once('=').is_some_and(|(name, _)| {
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        })
    };
    let words: Vec<&str> = rest
        .split_whitespace()
        .take_while(|w| !is_field(w))
        .collect();
    Some(words.join(" "))
}

/// The daemon's I/O and environment in every test: log captured on pipes,
/// no colours, `RUST_LOG` only from `E2E_RUST_LOG`, and never a service
/// manager the test runner itself may run under.
fn daemon_io(cmd: &mut Command) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID");
    if let Ok(filter) = std::env::var("E2E_RUST_LOG") {
        cmd.env("RUST_LOG", filter);
    }
}

fn spawn_reader(mut stream: impl Read + Send + 'static, logs: Arc<LogBuf>, tag: String) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(&mut stream);
        let mut raw = Vec::new();
        loop {
            raw.clear();
            match reader.read_until(b'\n', &mut raw) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = strip_ansi(String::from_utf8_lossy(&raw).trim_end());
                    // Echoed for debugging; libtest shows it only for failing tests.
                    eprintln!("[{tag}] {line}");
                    logs.push_line(&line);
                }
            }
        }
    });
}

/// The log line [`Daemon::launch`] waits for.
#[derive(Clone, Copy)]
enum Until {
    /// The first `listening ... addr=` line: the MetalBond listener is bound.
    Listening,
    /// `metalbondd running`: every listener is bound (also a client's,
    /// which has no MetalBond listener).
    Running,
}

impl Until {
    fn reached(self, log: &str) -> bool {
        match self {
            Until::Listening => listening_addr(log).is_some(),
            Until::Running => log.lines().any(|l| l.contains("metalbondd running")),
        }
    }

    /// The line, as errors name it.
    fn line(self) -> &'static str {
        match self {
            Until::Listening => "listening ... addr=",
            Until::Running => "metalbondd running",
        }
    }

    /// "before ...", as errors say it.
    fn before(self) -> &'static str {
        match self {
            Until::Listening => "listening",
            Until::Running => "running",
        }
    }
}

/// The address of the first `listening ... addr=` line of `log`.
fn listening_addr(log: &str) -> Option<SocketAddr> {
    log.lines()
        .filter(|l| l.contains("listening"))
        .find_map(parse_addr_field)
}

impl Daemon {
    /// Starts `metalbondd client ARGS` with its API socket (returned) and
    /// state in `dir` (the same `dir` again is a restart) and quick
    /// reconnects (`--reconnect-min 0 --reconnect-max 1`); waits until it
    /// runs, not until its sessions are up.
    pub fn start_client(dir: &std::path::Path, args: &[&str]) -> (Daemon, std::path::PathBuf) {
        let sock = dir.join("client.sock");
        let state = dir.join("client-state");
        let mut all = vec!["client"];
        all.extend_from_slice(args);
        all.extend_from_slice(&[
            "--api-socket",
            sock.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
            "--reconnect-min",
            "0",
            "--reconnect-max",
            "1",
        ]);
        let d = Daemon::spawn_running(&all).unwrap_or_else(|e| panic!("{e}"));
        (d, sock)
    }

    /// A daemon run with the configuration file `text` (written to a fresh
    /// file, returned: rewrite it and reload to change it), listening on
    /// [::1] and 127.0.0.1, with metrics: for tests that tell peers apart
    /// by their loopback source address (127.0.0.2, ...), as the peer
    /// policy does. Returns the daemon, its IPv4 listener and the file.
    pub async fn start_with_config_v4(text: &str) -> (Daemon, SocketAddr, std::path::PathBuf) {
        Self::start_with_config_v4_in(text, None).await
    }

    /// [`Daemon::start_with_config_v4`] with the state directory `state`
    /// (`None`: a fresh one), e.g. to start a daemon again on the state an
    /// earlier one left.
    pub async fn start_with_config_v4_in(
        text: &str,
        state: Option<&std::path::Path>,
    ) -> (Daemon, SocketAddr, std::path::PathBuf) {
        let file = unique_temp_dir().join("metalbondd.toml");
        std::fs::write(&file, text).unwrap();
        let mut args = vec![
            "--config",
            file.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
        ];
        if let Some(state) = state {
            args.extend(["--state-dir", state.to_str().unwrap()]);
        }
        let d = Daemon::start(&args);
        let v4 = d
            .wait_for_line(
                |l| l.contains("listening") && parse_addr_field(l).is_some_and(|a| a.is_ipv4()),
                T,
            )
            .await
            .and_then(|l| parse_addr_field(&l))
            .unwrap_or_else(|| panic!("no IPv4 listener; log:\n{}", d.logs()));
        (d, v4, file)
    }

    /// Starts `metalbondd server --listen [::1]:0 --keepalive 5 ARGS...`
    /// (`--keepalive` is left out when `args` carries its own) and waits
    /// until it listens. Panics with the log if it does not.
    ///
    /// Each daemon gets its own API socket and state directory in a fresh
    /// temporary directory (unless `args` names them), so daemons of tests
    /// running in parallel never share them.
    pub fn start(args: &[&str]) -> Daemon {
        let mut full: Vec<String> = vec!["server".into(), "--listen".into(), "[::1]:0".into()];
        if !args.contains(&"--keepalive") {
            full.extend(["--keepalive".into(), DEFAULT_KEEPALIVE.to_string()]);
        }
        let dir = unique_temp_dir();
        if !args.contains(&"--api-socket") {
            full.extend([
                "--api-socket".into(),
                dir.join("api.sock").display().to_string(),
            ]);
        }
        if !args.contains(&"--state-dir") {
            full.extend([
                "--state-dir".into(),
                dir.join("state").display().to_string(),
            ]);
        }
        full.extend(args.iter().map(|a| a.to_string()));
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        let mut d = Self::spawn(&full).unwrap_or_else(|e| panic!("{e}"));
        d.dir = Some(dir);
        d
    }

    /// The daemon's API socket (for daemons started with [`Daemon::start`]
    /// without an explicit `--api-socket`).
    pub fn api_socket(&self) -> std::path::PathBuf {
        self.dir
            .as_ref()
            .expect("daemon started by Daemon::start")
            .join("api.sock")
    }

    /// The daemon's state directory (see [`Daemon::api_socket`]).
    pub fn state_dir(&self) -> std::path::PathBuf {
        self.dir
            .as_ref()
            .expect("daemon started by Daemon::start")
            .join("state")
    }

    /// Kills the daemon with SIGKILL (no chance to clean up) and reaps it;
    /// its temporary directory is kept for a restart.
    pub fn kill_hard(mut self) -> Option<std::path::PathBuf> {
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
        self.dir.take()
    }

    /// Starts the daemon with exactly `args` and waits (bounded) for its
    /// `listening ... addr=` log line.
    pub fn spawn(args: &[&str]) -> Result<Daemon, String> {
        Self::spawn_with_fd_limit(args, None)
    }

    /// Like [`Daemon::spawn`], with the daemon's open-file limit
    /// (`RLIMIT_NOFILE`) set to `fd_limit` if given.
    pub fn spawn_with_fd_limit(args: &[&str], fd_limit: Option<u64>) -> Result<Daemon, String> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_metalbondd"));
        if let Some(limit) = fd_limit {
            use std::os::unix::process::CommandExt;
            // SAFETY: runs in the forked child before exec and only calls
            // setrlimit, which is async-signal-safe.
            unsafe {
                cmd.pre_exec(move || {
                    let rl = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd.args(args);
        daemon_io(&mut cmd);
        Self::launch(cmd, args, "", "", Until::Listening)
    }

    /// Starts `cmd` (a `metalbondd` with `args`, its I/O set up by
    /// [`daemon_io`]), captures its log and waits (bounded, woken by each
    /// log line) for `until`. [`Daemon::addr`] is the address of its first
    /// `listening ... addr=` line if it has one, else `[::1]:0`. Errors
    /// carry the log; `where_` and `tag_suffix` say where it runs, in errors
    /// and in the echoed log.
    fn launch(
        mut cmd: Command,
        args: &[&str],
        where_: &str,
        tag_suffix: &str,
        until: Until,
    ) -> Result<Daemon, String> {
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start metalbondd {args:?}{where_}: {e}"))?;
        let pid = child.id();
        let logs = LogBuf::new();
        let tag = format!("metalbondd:{pid}{tag_suffix}");
        spawn_reader(child.stderr.take().unwrap(), logs.clone(), tag.clone());
        spawn_reader(child.stdout.take().unwrap(), logs.clone(), tag);

        let deadline = Instant::now() + START_TIMEOUT;
        let mut text = logs.text.lock().unwrap();
        let ready = loop {
            if until.reached(&text) {
                break true;
            }
            let now = Instant::now();
            if now >= deadline {
                break false;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let log = text.clone();
                return Err(format!(
                    "metalbondd {args:?}{where_} exited with {status} before {}; log:\n{log}",
                    until.before()
                ));
            }
            // Wake on each new line; the short cap also catches an early exit.
            let wait = (deadline - now).min(Duration::from_millis(100));
            text = logs.cv.wait_timeout(text, wait).unwrap().0;
        };
        let addr = listening_addr(&text);
        drop(text);
        let daemon = Daemon {
            child: Mutex::new(child),
            pid,
            addr: addr.unwrap_or_else(|| "[::1]:0".parse().unwrap()),
            logs,
            dir: None,
        };
        if ready {
            Ok(daemon)
        } else {
            // Dropping `daemon` kills the process.
            Err(format!(
                "metalbondd {args:?}{where_} did not log `{}` within {START_TIMEOUT:?}; log:\n{}",
                until.line(),
                daemon.logs()
            ))
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Everything logged so far.
    pub fn logs(&self) -> String {
        self.logs.text.lock().unwrap().clone()
    }

    /// Sends SIGTERM to the daemon's PID and waits (bounded) for it to exit.
    /// Returns its exit status, or `None` if it did not exit in time.
    pub fn terminate(&self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.stop_with(libc::SIGTERM, timeout)
    }

    /// Sends `signal` (SIGTERM, SIGINT) to the daemon's PID and waits
    /// (bounded) for it to exit. Returns its exit status, or `None` if it
    /// did not exit in time.
    pub fn stop_with(&self, signal: i32, timeout: Duration) -> Option<std::process::ExitStatus> {
        // SAFETY: kill(2) with our own child's PID and a valid signal number.
        unsafe {
            libc::kill(self.pid as libc::pid_t, signal);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.lock().unwrap().try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            // Process exit has no event we can wait on here; poll briefly.
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// True while the process runs.
    pub fn is_alive(&self) -> bool {
        matches!(self.child.lock().unwrap().try_wait(), Ok(None))
    }

    /// Waits (bounded, woken by each new log line) for a line matching
    /// `pred`; returns it, or `None` at the deadline.
    pub async fn wait_for_line(
        &self,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Option<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.logs.notify.notified();
            tokio::pin!(notified);
            // Register before checking, so a line pushed in between wakes us.
            notified.as_mut().enable();
            if let Some(line) = self.logs.text.lock().unwrap().lines().find(|l| pred(l)) {
                return Some(line.to_string());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    /// The address of the HTTP listener whose `serving HTTP` log line
    /// contains `marker` (bounded wait; panics with the log if none).
    pub async fn http_addr(&self, marker: &str) -> SocketAddr {
        self.wait_for_line(
            |l| l.contains("serving HTTP") && l.contains(marker),
            Duration::from_secs(10),
        )
        .await
        .and_then(|l| parse_addr_field(&l))
        .unwrap_or_else(|| {
            panic!(
                "no `serving HTTP` line with {marker}; log:\n{}",
                self.logs()
            )
        })
    }

    /// Waits (bounded) until the log contains `needle`.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        self.wait_for_line(|l| l.contains(needle), timeout)
            .await
            .is_some()
    }

    /// Waits for the `session closed` line of the session whose peer
    /// address is `peer` and returns it; panics with the log if absent.
    pub async fn expect_session_closed_log(&self, peer: SocketAddr) -> String {
        let tag = format!("peer={peer}");
        let line = self
            .wait_for_line(
                |l| l.contains("session closed") && contains_field(l, &tag),
                T,
            )
            .await;
        line.unwrap_or_else(|| {
            panic!(
                "no `session closed` log line with `{tag}` within {T:?}; log:\n{}",
                self.logs()
            )
        })
    }

    /// Like [`Self::expect_session_closed_log`], and checks that the line has
    /// a `reason=` naming the cause: the reason must contain (case
    /// insensitively) at least one of `keywords`.
    pub async fn expect_close_reason(&self, peer: SocketAddr, keywords: &[&str]) -> String {
        let line = self.expect_session_closed_log(peer).await;
        let reason = reason_field(&line)
            .unwrap_or_else(|| panic!("`session closed` line has no reason= field: {line}"));
        let lower = reason.to_lowercase();
        assert!(
            keywords.iter().any(|k| lower.contains(&k.to_lowercase())),
            "close reason {reason:?} names none of {keywords:?}; line: {line}"
        );
        reason
    }
}

impl Daemon {
    /// Starts `ip netns exec NS metalbondd ARGS...` (the daemon runs inside
    /// the network namespace `ns`; `ip netns exec` execs it, so the PID is
    /// the daemon's and drop kills it) and waits (bounded) for its
    /// `metalbondd running` log line. [`Daemon::addr`] is the address of its
    /// `listening ... addr=` line if it has one (a server), else `[::1]:0`
    /// (a client without MetalBond listener). Errors carry the log.
    pub fn spawn_in_netns(ns: &str, args: &[&str]) -> Result<Daemon, String> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_metalbondd")])
            .args(args);
        daemon_io(&mut cmd);
        Self::launch(
            cmd,
            args,
            &format!(" in netns {ns}"),
            &format!("@{ns}"),
            Until::Running,
        )
    }

    /// Starts `metalbondd ARGS...` in the current network namespace and
    /// waits (bounded) for its `metalbondd running` log line, like
    /// [`Daemon::spawn_in_netns`] (for a client, which has no MetalBond
    /// listener to wait for).
    pub fn spawn_running(args: &[&str]) -> Result<Daemon, String> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_metalbondd"));
        cmd.args(args);
        daemon_io(&mut cmd);
        Self::launch(cmd, args, "", "", Until::Running)
    }

    /// Like [`Daemon::spawn_running`] with the binary `exe` (a copy the user
    /// can reach), as the user of [`as_user`] with `env` (HOME, XDG
    /// directories) set and the XDG variables not in `env` removed.
    pub fn spawn_running_as(
        exe: &std::path::Path,
        user: Option<u32>,
        env: &[(&str, &std::path::Path)],
        args: &[&str],
    ) -> Result<Daemon, String> {
        let mut cmd = Command::new(exe);
        cmd.args(args);
        daemon_io(&mut cmd);
        as_user(&mut cmd, user, env);
        Self::launch(cmd, args, &format!(" as uid {user:?}"), "", Until::Running)
    }
}

/// Makes `cmd` run as `user` (its uid and gid, no supplementary groups)
/// if given, else as this process's user, with `env` set and the XDG base
/// variables not in `env` removed, so that the default paths come from
/// `env` alone.
pub fn as_user(cmd: &mut Command, user: Option<u32>, env: &[(&str, &std::path::Path)]) {
    for var in ["HOME", "XDG_STATE_HOME", "XDG_RUNTIME_DIR"] {
        cmd.env_remove(var);
    }
    for (var, value) in env {
        cmd.env(var, value);
    }
    if let Some(id) = user {
        use std::os::unix::process::CommandExt;
        // SAFETY: runs in the forked child before exec and only calls
        // setgroups, setgid and setuid, which are async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(id) != 0
                    || libc::setuid(id) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

/// True when `line` contains `field` (e.g. `peer=[::1]:4000`) as a whole
/// field, not as the prefix of a longer value (`peer=[::1]:40001`).
pub fn contains_field(line: &str, field: &str) -> bool {
    line.match_indices(field).any(|(i, _)| {
        line[i + field.len()..]
            .chars()
            .next()
            .is_none_or(|c| !c.is_ascii_digit())
    })
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        // `Child::kill` signals exactly this PID (SIGKILL); then reap it.
        let _ = child.kill();
        let _ = child.wait();
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

// ---------------------------------------------------------------------------
// Route and update helpers
// ---------------------------------------------------------------------------

/// Parses the announcement text form, e.g. `100#10.0.1.0/24@2001:db8::1`.
pub fn route(s: &str) -> Route {
    s.parse().unwrap_or_else(|e| panic!("{e}"))
}

/// ADD of `r`.
pub fn add(r: Route) -> Update {
    Update {
        action: Action::Add,
        route: r,
    }
}

/// REMOVE of `r`.
pub fn rem(r: Route) -> Update {
    Update {
        action: Action::Remove,
        route: r,
    }
}

fn sort_key(u: &Update) -> (u8, Route) {
    (
        match u.action {
            Action::Add => 0,
            Action::Remove => 1,
        },
        u.route,
    )
}

/// Asserts that `got` and `want` hold the same updates with the same
/// multiplicities, in any order.
pub fn assert_same_updates(got: &[Update], want: &[Update], what: &str) {
    let mut g: Vec<_> = got.iter().map(sort_key).collect();
    let mut w: Vec<_> = want.iter().map(sort_key).collect();
    g.sort();
    w.sort();
    assert_eq!(
        g, w,
        "{what}: updates received (left) differ from expected (right)"
    );
}

// ---------------------------------------------------------------------------
// Hand-made protobuf and frames, for inputs our codec refuses to produce
// ---------------------------------------------------------------------------

/// Protobuf encoding helpers (independent of the codec under test).
pub mod pb {
    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// A varint field.
    pub fn uint(field: u32, v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        varint(&mut out, u64::from(field) << 3);
        varint(&mut out, v);
        out
    }

    /// A length-delimited field.
    pub fn bytes(field: u32, b: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        varint(&mut out, (u64::from(field) << 3) | 2);
        varint(&mut out, b.len() as u64);
        out.extend_from_slice(b);
        out
    }

    /// Concatenation of fields.
    pub fn msg(fields: &[Vec<u8>]) -> Vec<u8> {
        fields.concat()
    }

    /// `Destination` message.
    pub fn destination(ip_version: u64, prefix: &[u8], prefix_len: u64) -> Vec<u8> {
        msg(&[uint(1, ip_version), bytes(2, prefix), uint(3, prefix_len)])
    }

    /// `NextHop` message (STANDARD, no target VNI).
    pub fn next_hop(addr: &[u8]) -> Vec<u8> {
        bytes(1, addr)
    }
}

/// One frame with an arbitrary version, type and payload.
pub fn raw_frame(version: u8, msg_type: u8, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(payload.len()).expect("payload too long for a frame");
    let mut out = vec![version];
    out.extend_from_slice(&len.to_be_bytes());
    out.push(msg_type);
    out.extend_from_slice(payload);
    out
}

/// Frame type bytes.
pub mod mtype {
    /// HELLO.
    pub const HELLO: u8 = 1;
    /// KEEPALIVE.
    pub const KEEPALIVE: u8 = 2;
    /// SUBSCRIBE.
    pub const SUBSCRIBE: u8 = 3;
    /// UNSUBSCRIBE.
    pub const UNSUBSCRIBE: u8 = 4;
    /// UPDATE.
    pub const UPDATE: u8 = 5;
}

/// A valid frame for `msg`, from our codec.
pub fn frame(msg: &Message) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_message(msg, &mut out);
    out.to_vec()
}

// ---------------------------------------------------------------------------
// Raw MetalBond peer
// ---------------------------------------------------------------------------

/// What one receive attempt gave.
#[derive(Debug)]
pub enum Recv {
    /// A whole frame.
    Frame(Frame),
    /// Nothing before the deadline.
    Timeout,
    /// EOF or connection reset.
    Closed,
}

/// A MetalBond peer over a raw TCP socket, driven step by step by the test.
/// It sends only what the test asks for and answers nothing by itself.
pub struct RawPeer {
    stream: TcpStream,
    buf: BytesMut,
    /// Frames read while looking for something else (e.g. a KEEPALIVE echo).
    pending: VecDeque<Frame>,
    closed: bool,
    /// Our side of the connection: the server logs it as `peer=`.
    pub local: SocketAddr,
    /// Extension messages decoded as messages (else unknown frames, as a
    /// reference peer sees them): set it after negotiating one.
    pub accept: Extensions,
}

impl RawPeer {
    /// Connects (bounded) without sending anything.
    pub async fn connect(addr: SocketAddr) -> RawPeer {
        let stream = tokio::time::timeout(T, TcpStream::connect(addr))
            .await
            .unwrap_or_else(|_| panic!("connect to {addr} timed out"))
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        stream.set_nodelay(true).unwrap();
        let local = stream.local_addr().unwrap();
        RawPeer {
            stream,
            buf: BytesMut::with_capacity(64 * 1024),
            pending: VecDeque::new(),
            closed: false,
            local,
            accept: Extensions::NONE,
        }
    }

    /// Connects from source address `src` (a loopback address: tests tell
    /// peers apart by 127.0.0.1, 127.0.0.2, ::1) and completes the handshake.
    pub async fn established_from(addr: SocketAddr, src: std::net::IpAddr) -> RawPeer {
        let mut p = Self::connect_from(addr, src).await;
        p.handshake(DEFAULT_KEEPALIVE).await;
        p
    }

    /// Connects (bounded) from source address `src` without sending
    /// anything.
    pub async fn connect_from(addr: SocketAddr, src: std::net::IpAddr) -> RawPeer {
        let socket = match src {
            std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        }
        .unwrap();
        socket
            .bind(SocketAddr::new(src, 0))
            .unwrap_or_else(|e| panic!("bind {src}: {e}"));
        let stream = tokio::time::timeout(T, socket.connect(addr))
            .await
            .unwrap_or_else(|_| panic!("connect to {addr} from {src} timed out"))
            .unwrap_or_else(|e| panic!("connect to {addr} from {src}: {e}"));
        stream.set_nodelay(true).unwrap();
        let local = stream.local_addr().unwrap();
        RawPeer {
            stream,
            buf: BytesMut::with_capacity(64 * 1024),
            pending: VecDeque::new(),
            closed: false,
            local,
            accept: Extensions::NONE,
        }
    }

    /// The socket as a blocking std stream (e.g. to flood the server from a
    /// thread of its own, without taking the test's runtime).
    pub fn into_std_stream(self) -> std::net::TcpStream {
        let s = self.stream.into_std().unwrap();
        s.set_nonblocking(false).unwrap();
        s
    }

    /// Connects and completes the client handshake proposing the default interval.
    pub async fn established(addr: SocketAddr) -> RawPeer {
        let mut p = Self::connect(addr).await;
        p.handshake(DEFAULT_KEEPALIVE).await;
        p
    }

    /// Writes raw bytes (one write call).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .await
            .unwrap_or_else(|e| panic!("{}: write failed: {e}", self.local));
    }

    /// Writes raw bytes and reports a failure instead of panicking (the
    /// server may close the connection while we write garbage).
    pub async fn try_send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Half-closes our sending side (the server sees EOF).
    pub async fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown().await;
    }

    /// Sends one message.
    pub async fn send(&mut self, msg: &Message) {
        let bytes = frame(msg);
        self.send_raw(&bytes).await;
    }

    /// HELLO -> server HELLO -> KEEPALIVE -> server KEEPALIVE. Returns the
    /// server's HELLO. Panics on anything else.
    pub async fn handshake(&mut self, keepalive_secs: u32) -> Hello {
        self.handshake_offering(keepalive_secs, 0).await
    }

    /// [`RawPeer::handshake`] offering the extension bits `extensions`
    /// (PROTOCOL.md section 8), as a metalbondd agent does; what the server
    /// answers is decoded from then on.
    pub async fn handshake_offering(&mut self, keepalive_secs: u32, extensions: u64) -> Hello {
        self.send(&Message::Hello(Hello {
            keepalive_secs,
            is_server: false,
            extensions,
        }))
        .await;
        let hello = match self.recv(T).await {
            Recv::Frame(Frame::Message(Message::Hello(h))) => h,
            other => panic!("{}: expected the server's HELLO, got {other:?}", self.local),
        };
        self.accept = Extensions(hello.extensions);
        self.send(&Message::Keepalive).await;
        match self.recv(T).await {
            Recv::Frame(Frame::Message(Message::Keepalive)) => {}
            other => panic!(
                "{}: expected the KEEPALIVE answering ours, got {other:?}",
                self.local
            ),
        }
        hello
    }

    /// The handshake of [`RawPeer::handshake`], or `None` if the server
    /// closes the connection without a frame (e.g. refused at accept).
    /// Panics on anything else.
    pub async fn try_handshake(&mut self, keepalive_secs: u32) -> Option<Hello> {
        let hello = Message::Hello(Hello {
            keepalive_secs,
            is_server: false,
            extensions: 0,
        });
        // The write may fail if the server already closed (reset).
        let _ = self.try_send_raw(&frame(&hello)).await;
        let hello = match self.recv(T).await {
            Recv::Frame(Frame::Message(Message::Hello(h))) => h,
            Recv::Closed => return None,
            other => panic!("{}: expected the server's HELLO, got {other:?}", self.local),
        };
        self.send(&Message::Keepalive).await;
        match self.recv(T).await {
            Recv::Frame(Frame::Message(Message::Keepalive)) => {}
            other => panic!(
                "{}: expected the KEEPALIVE answering ours, got {other:?}",
                self.local
            ),
        }
        Some(hello)
    }

    /// SUBSCRIBE `vni`.
    pub async fn subscribe(&mut self, vni: u32) {
        self.send(&Message::Subscribe(Vni(vni))).await;
    }

    /// UNSUBSCRIBE `vni`.
    pub async fn unsubscribe(&mut self, vni: u32) {
        self.send(&Message::Unsubscribe(Vni(vni))).await;
    }

    /// UPDATE ADD.
    pub async fn announce(&mut self, r: Route) {
        self.send(&Message::Update(add(r))).await;
    }

    /// UPDATE REMOVE.
    pub async fn withdraw(&mut self, r: Route) {
        self.send(&Message::Update(rem(r))).await;
    }

    /// Next frame: first those read earlier, then from the socket.
    pub async fn recv(&mut self, timeout: Duration) -> Recv {
        let deadline = tokio::time::Instant::now() + timeout;
        self.recv_until(deadline).await
    }

    async fn recv_until(&mut self, deadline: tokio::time::Instant) -> Recv {
        if let Some(f) = self.pending.pop_front() {
            return Recv::Frame(f);
        }
        loop {
            match decode_frame_with(&mut self.buf, self.accept) {
                Ok(Some(f)) => return Recv::Frame(f),
                Ok(None) => {}
                Err(e) => panic!(
                    "{}: the server sent an undecodable frame: {e} (bytes {:02x?})",
                    self.local,
                    &self.buf[..self.buf.len().min(64)]
                ),
            }
            if self.closed {
                assert!(
                    self.buf.is_empty(),
                    "{}: connection closed in the middle of a frame ({} bytes left)",
                    self.local,
                    self.buf.len()
                );
                return Recv::Closed;
            }
            self.buf.reserve(16 * 1024);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Recv::Timeout,
                Ok(Ok(0)) | Ok(Err(_)) => self.closed = true,
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Sends a KEEPALIVE and waits for the answer; updates read meanwhile
    /// are kept for later calls. Panics if no KEEPALIVE comes back.
    pub async fn ping(&mut self) {
        self.send(&Message::Keepalive).await;
        let deadline = tokio::time::Instant::now() + T;
        let mut held = VecDeque::new();
        // Look only at new frames; frames already pending stay first in line.
        let earlier = std::mem::take(&mut self.pending);
        loop {
            match self.recv_until(deadline).await {
                Recv::Frame(Frame::Message(Message::Keepalive)) => break,
                Recv::Frame(f) => held.push_back(f),
                other => panic!(
                    "{}: no KEEPALIVE answering ours within {T:?}: {other:?}",
                    self.local
                ),
            }
        }
        self.pending = earlier;
        self.pending.extend(held);
    }

    /// The next frame, which must be an UPDATE.
    pub async fn expect_update(&mut self, timeout: Duration) -> Update {
        match self.recv(timeout).await {
            Recv::Frame(Frame::Message(Message::Update(u))) => u,
            Recv::Frame(Frame::Message(Message::Keepalive)) => panic!(
                "{}: the server sent a KEEPALIVE we did not ask for",
                self.local
            ),
            Recv::Frame(other) => panic!("{}: expected an UPDATE, got {other:?}", self.local),
            Recv::Timeout => panic!("{}: no UPDATE within {timeout:?}", self.local),
            Recv::Closed => panic!(
                "{}: connection closed while waiting for an UPDATE",
                self.local
            ),
        }
    }

    /// The next `n` frames, which must all be UPDATEs, within one deadline.
    pub async fn expect_updates(&mut self, n: usize, timeout: Duration) -> Vec<Update> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            match self.recv_until(deadline).await {
                Recv::Frame(Frame::Message(Message::Update(u))) => got.push(u),
                other => panic!(
                    "{}: expected {n} UPDATEs within {timeout:?}, got {} ({got:?}) then {other:?}",
                    self.local,
                    got.len()
                ),
            }
        }
        got
    }

    /// Exactly these updates (any order) and then nothing for [`QUIET`].
    pub async fn expect_exactly(&mut self, want: &[Update], what: &str) {
        let got = self.expect_updates(want.len(), T).await;
        assert_same_updates(&got, want, what);
        self.expect_no_update(QUIET).await;
    }

    /// Asserts that nothing at all arrives within `within` (and that the
    /// connection stays open).
    pub async fn expect_no_update(&mut self, within: Duration) {
        match self.recv(within).await {
            Recv::Timeout => {}
            other => panic!(
                "{}: expected silence for {within:?}, got {other:?}",
                self.local
            ),
        }
    }

    /// Reads until the server closes the connection (EOF or reset) and
    /// returns the frames received before that. Panics at the deadline.
    pub async fn expect_closed(&mut self, timeout: Duration) -> Vec<Frame> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut frames = Vec::new();
        loop {
            match self.recv_until(deadline).await {
                Recv::Frame(f) => frames.push(f),
                Recv::Closed => return frames,
                Recv::Timeout => panic!(
                    "{}: the server did not close the connection within {timeout:?} (frames: {frames:?})",
                    self.local
                ),
            }
        }
    }
}

/// A table-side barrier: when it returns, the server has processed
/// everything `x` sent before. `helper` announces a marker route in the
/// otherwise unused VNI `vni`, `x` subscribes to it and must receive that
/// marker as its very next update (anything else first fails the test).
pub async fn barrier(x: &mut RawPeer, helper: &mut RawPeer, vni: u32) {
    let marker = route(&format!("{vni}#198.51.100.1/32@2001:db8:ffff::1"));
    helper.announce(marker).await;
    x.subscribe(vni).await;
    let u = x.expect_update(T).await;
    assert_eq!(
        u,
        add(marker),
        "{}: expected the barrier marker as the next update",
        x.local
    );
}

impl RawPeer {
    /// Waits for the next UPDATE while keeping the session alive: pings
    /// every `every` (for daemons with a short keepalive interval). Any
    /// frame other than an UPDATE or a ping answer fails the test.
    pub async fn pinging_expect_update(&mut self, every: Duration, timeout: Duration) -> Update {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: no UPDATE within {timeout:?}",
                self.local
            );
            self.ping().await;
            match self.recv(every).await {
                Recv::Frame(Frame::Message(Message::Update(u))) => return u,
                Recv::Timeout => {}
                other => panic!("{}: expected an UPDATE, got {other:?}", self.local),
            }
        }
    }
}
