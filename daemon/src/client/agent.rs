//! The hypervisor agent: client connections, received routes and kernel
//! installation wired together (PROTOCOL.md section 5).
//!
//! One task owns a [`ReceivedRoutes`] and, when VNIs are mapped to routing
//! tables, an [`Installer`]. It reads the [`ClientEvent`]s of the
//! connections:
//!
//! - `Up`: logged, nothing else (the server sends its dump next);
//! - `Down`: every route of that server is dropped ([`ReceivedRoutes::drop_server`]);
//!   routes another server still provides stay installed;
//! - `Update`: the route is added or removed.
//!
//! Each resulting [`Change`] of a mapped VNI becomes an
//! [`Installer::replace`] (next hops left) or [`Installer::delete`] (none
//! left) in every table the VNI is mapped to. A failed kernel call is logged
//! with the route and the table, counted, and, when the error may go away,
//! retried every second with the then-current desired state. Kernel errors
//! are never fatal.
//!
//! Not done yet (issue 4): reconciling routes left by an earlier run, the
//! stale time after losing every server, runtime management through the API.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::{Change, Client, ClientConfig, ClientEvent, Desired, ReceivedRoutes, ServerId};
use crate::kernel::{Installer, KernelRoute, Prefix};
use crate::wire::{Action, Destination, Route, Vni};

/// Depth of the event channel from the connection tasks to the agent.
const EVENT_QUEUE: usize = 1024;
/// Interval between retries of failed kernel changes.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// Settings of the hypervisor role.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientSettings {
    /// Route servers to connect to (each is a [`ServerId`] by its index).
    pub servers: Vec<SocketAddr>,
    /// VNIs to subscribe to.
    pub subscriptions: Vec<Vni>,
    /// Routes this node announces (also the loop-prevention set).
    pub announcements: Vec<Route>,
    /// VNI -> routing tables the VNI's received routes are installed in.
    /// Table 0 is invalid. Empty: nothing touches the kernel.
    pub install_routes: BTreeMap<Vni, BTreeSet<u32>>,
    /// Tunnel device of the installed routes (needed with `install_routes`).
    pub tun: Option<String>,
    /// Ignore received routes with an IPv6 destination.
    pub ipv4_only: bool,
    /// Connection settings (keepalive, backoff).
    pub connection: ClientConfig,
}

/// Counters of the agent (to be exposed as metrics later).
#[derive(Debug, Default)]
pub struct AgentStats {
    /// Kernel calls that failed (first attempts and retries).
    pub kernel_errors: AtomicU64,
    /// Kernel changes applied successfully.
    pub kernel_changes: AtomicU64,
}

/// A running agent.
pub struct Agent {
    client: Client,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    /// The agent's counters.
    pub stats: Arc<AgentStats>,
}

impl Agent {
    /// Validates `settings`, opens the kernel installer when VNIs are mapped
    /// and starts the connections and the agent task. An error (table 0, a
    /// mapping without tunnel device, a missing tunnel device) is a startup
    /// failure, in one line.
    pub async fn start(settings: ClientSettings) -> Result<Agent, String> {
        if settings.servers.is_empty() {
            return Err("client: no route server given (--server ADDR)".into());
        }
        for (vni, tables) in &settings.install_routes {
            if tables.contains(&0) {
                return Err(format!(
                    "client: --install-routes {vni}#0: table 0 is not a valid routing table"
                ));
            }
        }
        let installer = if settings.install_routes.is_empty() {
            None
        } else {
            let tun = settings
                .tun
                .as_deref()
                .ok_or("client: --install-routes needs the tunnel device (--tun DEV)")?;
            let installer = Installer::new(tun).await.map_err(|e| {
                format!("client: cannot install routes through tunnel device {tun:?}: {e}")
            })?;
            info!(
                tun,
                tun_index = installer.tun_index(),
                "kernel route installation ready"
            );
            Some(installer)
        };

        let mut received = ReceivedRoutes::new();
        let _ = received
            .set_local_announcements(settings.announcements.iter().map(|r| (r.vni, r.dest)));
        let desired = Desired {
            subscriptions: dedup(&settings.subscriptions),
            announcements: settings.announcements.iter().copied().collect(),
        };
        let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
        let client = Client::start(&settings.servers, settings.connection, desired, events_tx);
        let (stop, stop_rx) = watch::channel(false);
        let stats = Arc::new(AgentStats::default());
        info!(
            servers = settings.servers.len(),
            subscriptions = settings.subscriptions.len(),
            announcements = settings.announcements.len(),
            mapped_vnis = settings.install_routes.len(),
            ipv4_only = settings.ipv4_only,
            "hypervisor agent started"
        );
        let state = AgentTask {
            servers: settings.servers,
            tables: settings.install_routes,
            ipv4_only: settings.ipv4_only,
            installer,
            received,
            up: HashSet::new(),
            retry: BTreeSet::new(),
            stats: stats.clone(),
        };
        let task = tokio::spawn(state.run(events, stop_rx));
        Ok(Agent {
            client,
            stop,
            task,
            stats,
        })
    }

    /// Closes the sessions and stops the agent task. Installed routes stay
    /// in the kernel.
    pub async fn shutdown(self) {
        self.client.shutdown().await;
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

fn dedup(vnis: &[Vni]) -> Vec<Vni> {
    let mut out = Vec::with_capacity(vnis.len());
    for v in vnis {
        if !out.contains(v) {
            out.push(*v);
        }
    }
    out
}

/// The kernel prefix of a MetalBond destination.
fn prefix_of(dest: Destination) -> Prefix {
    Prefix::new(dest.addr.to_ip(), dest.prefix_len)
}

struct AgentTask {
    servers: Vec<SocketAddr>,
    tables: BTreeMap<Vni, BTreeSet<u32>>,
    ipv4_only: bool,
    installer: Option<Installer>,
    received: ReceivedRoutes,
    /// Servers whose session is established.
    up: HashSet<ServerId>,
    /// (table, VNI, destination) whose last kernel call failed, to retry.
    retry: BTreeSet<(u32, Vni, Destination)>,
    stats: Arc<AgentStats>,
}

impl AgentTask {
    async fn run(
        mut self,
        mut events: mpsc::Receiver<ClientEvent>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(RETRY_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(ev) => self.handle(ev).await,
                    None => return,
                },
                _ = tick.tick(), if !self.retry.is_empty() => self.retry_failed().await,
                r = stop.changed() => if r.is_err() || *stop.borrow() {
                    return;
                },
            }
        }
    }

    fn addr(&self, server: ServerId) -> String {
        self.servers
            .get(server.0)
            .map(|a| a.to_string())
            .unwrap_or_default()
    }

    async fn handle(&mut self, ev: ClientEvent) {
        let changes = match ev {
            ClientEvent::Up { server } => {
                self.up.insert(server);
                info!(%server, addr = %self.addr(server), "route server up");
                return;
            }
            ClientEvent::Down { server, reason } => {
                if self.up.remove(&server) {
                    info!(%server, addr = %self.addr(server), %reason, "route server down");
                } else {
                    debug!(%server, addr = %self.addr(server), %reason, "route server unreachable");
                }
                self.received.drop_server(server)
            }
            ClientEvent::Update { server, update } => {
                let route = update.route;
                if self.ipv4_only && route.dest.addr.is_ipv6() {
                    return;
                }
                match update.action {
                    Action::Add => self.received.add(server, route),
                    Action::Remove => self.received.remove(server, route),
                }
            }
        };
        for change in changes {
            self.apply(change).await;
        }
    }

    async fn apply(&mut self, change: Change) {
        let Some(tables) = self.tables.get(&change.vni) else {
            return;
        };
        for table in tables.clone() {
            self.install(table, change.vni, change.dest, &change.next_hops, false)
                .await;
        }
    }

    /// Brings (table, dest) to `next_hops` (empty: delete). Failures are
    /// logged, counted and, if they may go away, queued for a retry.
    async fn install(
        &mut self,
        table: u32,
        vni: Vni,
        dest: Destination,
        next_hops: &[Ipv6Addr],
        retrying: bool,
    ) {
        let Some(installer) = &self.installer else {
            return;
        };
        let prefix = prefix_of(dest);
        let result = if next_hops.is_empty() {
            installer.delete(table, prefix).await.map(|_| ())
        } else {
            installer
                .replace(&KernelRoute {
                    table,
                    dest: prefix,
                    next_hops: next_hops.to_vec(),
                })
                .await
        };
        let key = (table, vni, dest);
        match result {
            Ok(()) => {
                self.stats.kernel_changes.fetch_add(1, Relaxed);
                let was_failed = self.retry.remove(&key);
                if next_hops.is_empty() {
                    debug!(table, %vni, %prefix, "kernel route deleted");
                } else {
                    debug!(table, %vni, %prefix, next_hops = ?next_hops, "kernel route installed");
                }
                if was_failed {
                    info!(table, %vni, %prefix, "kernel route change succeeded after a retry");
                }
            }
            Err(e) => {
                self.stats.kernel_errors.fetch_add(1, Relaxed);
                let retry = e.is_retryable();
                if retry {
                    self.retry.insert(key);
                } else {
                    self.retry.remove(&key);
                }
                if retrying {
                    debug!(table, %vni, %prefix, error = %e, retry, "kernel route retry failed");
                } else {
                    warn!(table, %vni, %prefix, error = %e, retry, "kernel route change failed");
                }
            }
        }
    }

    /// Retries every failed (table, destination) with what is desired now.
    async fn retry_failed(&mut self) {
        let pending: Vec<_> = self.retry.iter().copied().collect();
        for (table, vni, dest) in pending {
            // The mapping is fixed; ipv4_only routes never reach the retry set.
            let hops = self.received.next_hops(vni, dest);
            self.install(table, vni, dest, &hops, true).await;
        }
    }
}
