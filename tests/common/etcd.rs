//! A real etcd cluster on loopback for the shared-state tests: N members
//! (`/usr/bin/etcd`, Debian's `etcd-server`, or `METALBONDD_TEST_ETCD`),
//! each with its own data directory, client and peer port on 127.0.0.1;
//! members are killed, stopped and restarted by PID, and `etcdctl` (v3 API)
//! reads and writes the cluster the way an operator would.
//!
//! Every member is started with short raft timers (heartbeat 50 ms,
//! election 500 ms) so a test that kills the leader sees a new one quickly.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a cluster gets to report every running member healthy.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(30);
/// Polling step while waiting for health (no event to await from etcd).
const POLL: Duration = Duration::from_millis(100);

/// The etcd binary, or None after printing why `test` is skipped; under
/// `CI=true` a missing binary fails the test (`.ci/run` installs
/// `etcd-server`, so CI always has it).
pub fn etcd_binary(test: &str) -> Option<PathBuf> {
    let path = std::env::var("METALBONDD_TEST_ETCD")
        .ok()
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"));
    if path.is_file() {
        return Some(path);
    }
    let reason = format!(
        "{} is missing (install Debian's etcd-server, or set METALBONDD_TEST_ETCD)",
        path.display()
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: cannot run with CI=true: {reason}");
    }
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
    None
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_v4_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One member of an [`EtcdCluster`].
pub struct EtcdMember {
    /// Its name in the cluster (`m0`, `m1`, ...).
    pub name: String,
    /// Its client URL, `http://127.0.0.1:PORT`.
    pub client_url: String,
    peer_url: String,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl EtcdMember {
    /// Whether its process is running (started and not stopped by the test).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Its PID, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The last lines of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// A running etcd cluster; every member is killed (SIGKILL, by PID) and its
/// directory removed on drop.
pub struct EtcdCluster {
    bin: PathBuf,
    dir: PathBuf,
    initial_cluster: String,
    /// The members, in start order.
    pub members: Vec<EtcdMember>,
}

impl EtcdCluster {
    /// Starts an `n`-member cluster and waits until every member is
    /// healthy; None (test skipped) when etcd is not installed outside CI.
    pub fn start(test: &str, n: usize) -> Option<EtcdCluster> {
        let bin = etcd_binary(test)?;
        let dir = super::unique_temp_dir();
        let members: Vec<EtcdMember> = (0..n)
            .map(|i| {
                let name = format!("m{i}");
                EtcdMember {
                    client_url: format!("http://127.0.0.1:{}", free_v4_port()),
                    peer_url: format!("http://127.0.0.1:{}", free_v4_port()),
                    data_dir: dir.join(format!("{name}.etcd")),
                    log: dir.join(format!("{name}.log")),
                    name,
                    child: None,
                }
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            bin,
            dir,
            initial_cluster,
            members,
        };
        for i in 0..n {
            cluster.spawn(i);
        }
        cluster.wait_healthy();
        Some(cluster)
    }

    /// The client URLs of every member, for `[store.etcd] endpoints`.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// The endpoints as a TOML array, e.g. `["http://127.0.0.1:1", ...]`.
    pub fn endpoints_toml(&self) -> String {
        let quoted: Vec<String> = self
            .endpoints()
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect();
        format!("[{}]", quoted.join(", "))
    }

    fn spawn(&mut self, i: usize) {
        let m = &self.members[i];
        assert!(
            m.child.is_none(),
            "etcd member {} is already running",
            m.name
        );
        let log = File::options()
            .create(true)
            .append(true)
            .open(&m.log)
            .expect("open the etcd log");
        let child = Command::new(&self.bin)
            .args([
                "--name",
                &m.name,
                "--data-dir",
                &m.data_dir.to_string_lossy(),
                "--listen-client-urls",
                &m.client_url,
                "--advertise-client-urls",
                &m.client_url,
                "--listen-peer-urls",
                &m.peer_url,
                "--initial-advertise-peer-urls",
                &m.peer_url,
                "--initial-cluster",
                &self.initial_cluster,
                "--initial-cluster-token",
                "metalbondd-test",
                // Ignored by a member that restarts on its data directory.
                "--initial-cluster-state",
                "new",
                "--heartbeat-interval",
                "50",
                "--election-timeout",
                "500",
                "--logger",
                "zap",
                "--log-outputs",
                "stderr",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start etcd");
        self.members[i].child = Some(child);
    }

    /// Kills member `i` at once (SIGKILL to its PID) and reaps it.
    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops every member (SIGKILL by PID: etcd's WAL makes that safe, and
    /// it is the fault the servers must survive).
    pub fn stop_all(&mut self) {
        for i in 0..self.members.len() {
            self.kill_member(i);
        }
    }

    /// Starts member `i` again on its data directory (it rejoins the cluster).
    pub fn restart_member(&mut self, i: usize) {
        self.spawn(i);
    }

    /// Starts every stopped member again and waits until all are healthy.
    pub fn restart_all(&mut self) {
        for i in 0..self.members.len() {
            if !self.members[i].is_running() {
                self.spawn(i);
            }
        }
        self.wait_healthy();
    }

    /// The client URLs of the running members.
    fn running_endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.is_running())
            .map(|m| m.client_url.clone())
            .collect()
    }

    /// Waits (bounded) until every running member answers `endpoint health`.
    pub fn wait_healthy(&self) {
        let deadline = Instant::now() + HEALTHY_TIMEOUT;
        let endpoints = self.running_endpoints().join(",");
        loop {
            let out = self.etcdctl_at(&endpoints, &["endpoint", "health"]);
            if out.0 == Some(0) {
                return;
            }
            if Instant::now() >= deadline {
                let logs: Vec<String> = self
                    .members
                    .iter()
                    .map(|m| format!("--- {} ---\n{}", m.name, m.log_tail()))
                    .collect();
                panic!(
                    "etcd not healthy after {HEALTHY_TIMEOUT:?}: {} {}\n{}",
                    out.1,
                    out.2,
                    logs.join("\n")
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Runs `etcdctl ARGS` (v3 API) against the running members, bounded:
    /// its exit code, stdout and stderr.
    pub fn etcdctl(&self, args: &[&str]) -> (Option<i32>, String, String) {
        self.etcdctl_at(&self.running_endpoints().join(","), args)
    }

    fn etcdctl_at(&self, endpoints: &str, args: &[&str]) -> (Option<i32>, String, String) {
        let mut cmd = Command::new(etcdctl_path(&self.bin));
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoints}"))
            .arg("--command-timeout=3s")
            .arg("--dial-timeout=1s")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = super::mbctl::run_blocking(cmd);
        (out.code, out.stdout, out.stderr)
    }

    /// `etcdctl put KEY VALUE`, asserting it succeeded.
    pub fn put(&self, key: &str, value: &str) {
        let out = self.etcdctl(&["put", key, value]);
        assert_eq!(out.0, Some(0), "etcdctl put {key}: {} {}", out.1, out.2);
    }

    /// The keys under `prefix`, sorted (`etcdctl get --prefix --keys-only`).
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let out = self.etcdctl(&["get", "--prefix", "--keys-only", prefix]);
        assert_eq!(out.0, Some(0), "etcdctl get {prefix}: {} {}", out.1, out.2);
        let mut keys: Vec<String> = out
            .1
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        keys.sort();
        keys
    }

    /// The directory holding the members' data and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// `etcdctl` next to the etcd binary (both come from Debian's packages).
fn etcdctl_path(etcd: &Path) -> PathBuf {
    let beside = etcd.with_file_name("etcdctl");
    if beside.is_file() {
        beside
    } else {
        PathBuf::from("/usr/bin/etcdctl")
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        self.stop_all();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
