//! `mbbench --scenario agent`: the hypervisor agent as a local service
//! (issue 12), measured on a running `metalbondd client` connected to the
//! route server `--server` (scripts/bench-agent.sh starts both):
//!
//! - **received**: a raw announcer sends N routes of `--vni` to the server;
//!   time until the agent's received-routes feed (WatchReceived) holds all
//!   of them, and the agent's memory per received route (RSS growth of
//!   `--client-pid` / N);
//! - **feed snapshot**: a new watch; time until its `snapshot_end` (N
//!   routes), three times;
//! - **announce**: K = `--announcements` routes announced through the
//!   agent's API (ClientService.Announce, calls of at most 20,000 routes);
//!   time from the first call until a raw subscriber of the server has all
//!   K ADDs, then the owner's routes set to none (SetAnnouncements) and the
//!   time until it has all K REMOVEs.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use metalbond_proto::api as pb;
use metalbondd::wire::Route;
use pb::client_service_client::ClientServiceClient;
use pb::received_event::Event;
use tonic::transport::{Channel, Endpoint};

use crate::peer::{Peer, PeerConfig, Sink};
use crate::procfs;
use crate::report::JsonObject;
use crate::routes::RouteSet;

/// Routes per Announce call (far below the 4 MiB message limit).
const ANNOUNCE_CHUNK: u64 = 20_000;

/// What the agent scenario needs.
pub struct AgentConfig {
    /// The route server's peer config (for the raw announcer and subscriber).
    pub peer: PeerConfig,
    /// The agent's API socket.
    pub client_api: PathBuf,
    /// The agent's PID (RSS).
    pub client_pid: Option<u32>,
    /// Received routes (N), in `vni`.
    pub routes: u64,
    /// The VNI the agent subscribes to.
    pub vni: u32,
    /// Routes announced through the agent's API (K), in `announce_vni`.
    pub announcements: u64,
    /// The VNI of the announcements (the raw subscriber's).
    pub announce_vni: u32,
    /// Bound of every wait.
    pub timeout: Duration,
}

/// One measured phase.
pub struct PhaseResult {
    pub name: &'static str,
    pub routes: u64,
    pub secs: f64,
    pub extra: Vec<(&'static str, f64)>,
}

impl PhaseResult {
    pub fn human(&self) -> String {
        let mut s = format!(
            "{:<16} {:>9} routes in {:>7.3} s ({:>10.0} routes/s)",
            self.name,
            self.routes,
            self.secs,
            self.routes as f64 / self.secs.max(1e-9)
        );
        for (k, v) in &self.extra {
            s.push_str(&format!(", {k} {v:.1}"));
        }
        s
    }

    pub fn json(&self, label: &str) -> String {
        let mut o = JsonObject::default();
        o.str("scenario", "agent");
        o.str("phase", self.name);
        o.str("label", label);
        o.num("routes", self.routes as f64);
        o.num("secs", self.secs);
        for (k, v) in &self.extra {
            o.num(k, *v);
        }
        o.finish()
    }
}

/// A gRPC channel over the API's Unix socket at `path`.
pub async fn connect(path: &Path) -> Result<Channel, String> {
    let path = path.to_path_buf();
    let path_text = path.display().to_string();
    let endpoint = Endpoint::try_from("http://localhost").map_err(|e| e.to_string())?;
    endpoint
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|e| format!("connect to the API socket {}: {e}", path_text))
}

/// `r` as an API route (type STANDARD).
pub fn api_route(r: &Route) -> pb::Route {
    pb::Route {
        vni: r.vni.0,
        prefix: r.dest.to_string(),
        next_hop: Some(pb::NextHop {
            address: r.next_hop.addr.to_string(),
            r#type: pb::RouteType::Standard as i32,
            ..Default::default()
        }),
    }
}

/// A watch and what it has shown so far.
struct Watch {
    stream: tonic::Streaming<pb::ReceivedEvent>,
    /// Routes in the view.
    count: u64,
    /// When the current snapshot ended (`None` while one is being received).
    snapshot_end: Option<Instant>,
}

impl Watch {
    fn new(stream: tonic::Streaming<pb::ReceivedEvent>) -> Watch {
        Watch {
            stream,
            count: 0,
            snapshot_end: None,
        }
    }
}

/// Reads a watch until `done(routes in view)` or the stream ends; returns
/// the time `snapshot_end` came and the time `done` held.
async fn follow(
    watch: &mut Watch,
    mut done: impl FnMut(u64) -> bool,
    timeout: Duration,
) -> Result<(Instant, Instant), String> {
    let Watch {
        stream,
        count,
        snapshot_end,
    } = watch;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(end) = *snapshot_end {
            if done(*count) {
                return Ok((end, Instant::now()));
            }
        }
        let msg = tokio::time::timeout_at(deadline, stream.message())
            .await
            .map_err(|_| format!("watch: {count} routes after {timeout:?}"))?
            .map_err(|e| format!("watch: {e}"))?
            .ok_or("watch ended")?;
        match msg.event {
            Some(Event::Snapshot(chunk)) => *count += chunk.routes.len() as u64,
            Some(Event::SnapshotEnd(_)) => *snapshot_end = Some(Instant::now()),
            Some(Event::Added(_)) => *count += 1,
            Some(Event::Removed(_)) => *count -= 1,
            Some(Event::Lagged(_)) => {
                *count = 0;
                *snapshot_end = None;
            }
            _ => {}
        }
    }
}

/// A new watch of the received routes of `vni`.
async fn open_watch(client: &mut ClientServiceClient<Channel>, vni: u32) -> Result<Watch, String> {
    let stream = client
        .watch_received(pb::WatchReceivedRequest { vnis: vec![vni] })
        .await
        .map_err(|e| format!("WatchReceived: {e}"))?
        .into_inner();
    Ok(Watch::new(stream))
}

fn rss(pid: Option<u32>) -> Option<u64> {
    procfs::mem(pid?).map(|m| m.rss_kib * 1024)
}

/// Runs the phases; each result is reported as it completes.
pub async fn run(
    cfg: &AgentConfig,
    report: impl Fn(&PhaseResult),
) -> Result<Vec<PhaseResult>, String> {
    let channel = connect(&cfg.client_api).await?;
    let mut client = ClientServiceClient::new(channel).max_decoding_message_size(64 << 20);
    let mut results = Vec::new();

    // received + memory
    let mut watch = open_watch(&mut client, cfg.vni).await?;
    follow(&mut watch, |n| n == 0, cfg.timeout).await?;
    let rss_before = rss(cfg.client_pid);
    let set = RouteSet::new(cfg.routes, cfg.vni, false);
    let announcer = Peer::connect(&cfg.peer, Sink::Ignore).await?;
    let start = Instant::now();
    let bulk = announcer.bulk(metalbondd::wire::Action::Add, set, 0, cfg.routes)?;
    let n = cfg.routes;
    let (_, done) = follow(&mut watch, |c| c == n, cfg.timeout).await?;
    drop(bulk);
    let mut extra = Vec::new();
    if let (Some(before), Some(after)) = (rss_before, rss(cfg.client_pid)) {
        extra.push((
            "agent_bytes_per_route",
            after.saturating_sub(before) as f64 / n as f64,
        ));
        extra.push(("agent_rss_mib", after as f64 / (1 << 20) as f64));
    }
    let r = PhaseResult {
        name: "received",
        routes: n,
        secs: (done - start).as_secs_f64(),
        extra,
    };
    report(&r);
    results.push(r);
    drop(watch);

    // feed snapshot, three times
    for _ in 0..3 {
        let start = Instant::now();
        let mut watch = open_watch(&mut client, cfg.vni).await?;
        let (end, _) = follow(&mut watch, |c| c == n, cfg.timeout).await?;
        let r = PhaseResult {
            name: "feed-snapshot",
            routes: n,
            secs: (end - start).as_secs_f64(),
            extra: Vec::new(),
        };
        report(&r);
        results.push(r);
    }

    // announce through the API, then withdraw by an empty declarative set
    let k = cfg.announcements;
    if k > 0 {
        let set = RouteSet::new(k, cfg.announce_vni, false);
        let subscriber = Peer::connect(&cfg.peer, Sink::Track(set)).await?;
        subscriber.subscribe(cfg.announce_vni).await?;
        let owner = "mbbench".to_string();
        let start = Instant::now();
        let mut first = 0;
        while first < k {
            let last = (first + ANNOUNCE_CHUNK).min(k);
            let routes = (first..last).map(|i| api_route(&set.route(i))).collect();
            client
                .announce(pb::ClientAnnounceRequest {
                    routes,
                    owner: owner.clone(),
                    allow_existing: true,
                })
                .await
                .map_err(|e| format!("Announce: {e}"))?;
            first = last;
        }
        let api_done = Instant::now();
        let stats = subscriber.stats.clone();
        let arrived = wait(|| stats.adds.load(Relaxed) >= k, cfg.timeout).await;
        let adds = stats.adds.load(Relaxed);
        if !arrived {
            return Err(format!("announce: the subscriber has {adds} of {k} ADDs"));
        }
        let r = PhaseResult {
            name: "announce",
            routes: k,
            secs: (Instant::now() - start).as_secs_f64(),
            extra: vec![("api_calls_secs", (api_done - start).as_secs_f64())],
        };
        report(&r);
        results.push(r);

        let start = Instant::now();
        client
            .set_announcements(pb::SetAnnouncementsRequest {
                owner,
                routes: Vec::new(),
            })
            .await
            .map_err(|e| format!("SetAnnouncements: {e}"))?;
        let api_done = Instant::now();
        let arrived = wait(|| stats.removes.load(Relaxed) >= k, cfg.timeout).await;
        if !arrived {
            return Err(format!(
                "withdraw: the subscriber has {} of {k} REMOVEs",
                stats.removes.load(Relaxed)
            ));
        }
        let r = PhaseResult {
            name: "withdraw",
            routes: k,
            secs: (Instant::now() - start).as_secs_f64(),
            extra: vec![("api_calls_secs", (api_done - start).as_secs_f64())],
        };
        report(&r);
        results.push(r);
    }
    Ok(results)
}

/// Polls `cond` every millisecond until it holds (true) or `timeout` passes.
async fn wait(cond: impl Fn() -> bool, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    true
}
