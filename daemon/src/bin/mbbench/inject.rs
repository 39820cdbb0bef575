//! `mbbench --scenario inject`: routes injected through one server's API
//! reaching the subscribers of every server of a fleet (issue 14; with the
//! etcd backend the other servers learn them from etcd's watch;
//! scripts/bench-etcd.sh starts a 3-member etcd cluster and three servers).
//!
//! - **inject-one**: K = `--latency-samples` times, one route announced
//!   through `--inject-api` (RouteService.AnnounceRoutes), then withdrawn
//!   (WithdrawRoutes). Each sample is the time from the call's return until
//!   the last of the subscribers (`--subscribers` on each `--watch-server`)
//!   has the ADD (or the REMOVE); a subscriber that had it before the call
//!   returned counts 0. The call's own duration (the commit) is reported
//!   beside it.
//! - **inject-batch**: N = `--routes` routes in one AnnounceRoutes call; the
//!   time from the call until every subscriber has all N ADDs (and after
//!   the call returned), then one WithdrawRoutes call and the time until
//!   every subscriber has all N REMOVEs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use metalbond_proto::api as pb;
use metalbondd::wire::{Action, Route};
use pb::route_service_client::RouteServiceClient;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::agent::{api_route, connect};
use crate::peer::{Peer, PeerConfig, Sink};
use crate::report::{JsonObject, Latency};
use crate::routes::RouteSet;

/// Largest API message either way: a 100,000-route call is about 5 MB.
const MAX_MESSAGE: usize = 64 << 20;
/// How long one sample may take before it counts as lost.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the inject scenario needs.
pub struct InjectConfig {
    /// Peer settings; `server` is replaced by each watched server.
    pub peer: PeerConfig,
    /// The MetalBond listeners whose subscribers must receive the routes.
    pub watch: Vec<SocketAddr>,
    /// Subscribers per watched server.
    pub subscribers: usize,
    /// The API socket the routes are injected through.
    pub api: PathBuf,
    /// VNI of the routes.
    pub vni: u32,
    /// Single injections timed (K).
    pub samples: u64,
    /// Routes in the batch call (N).
    pub batch: u64,
    /// Bound of every wait of the batch phase.
    pub timeout: Duration,
}

/// One measured phase of the scenario.
pub struct InjectResult {
    /// `inject-one` or `inject-batch`.
    pub name: &'static str,
    /// Subscribers that had to receive every route.
    pub receivers: u64,
    /// Named durations in seconds, or latencies.
    pub figures: Vec<(&'static str, f64)>,
    /// Latency percentiles (inject-one), microseconds.
    pub latencies: Vec<(&'static str, Latency)>,
    /// Samples or routes that did not arrive everywhere in time.
    pub lost: u64,
}

impl InjectResult {
    /// The human report line(s).
    pub fn human(&self) -> String {
        let mut s = format!(
            "{:<13} receivers {}, lost {}",
            self.name, self.receivers, self.lost
        );
        for (k, v) in &self.figures {
            s.push_str(&format!(", {k} {v:.3}"));
        }
        for (k, l) in &self.latencies {
            s.push_str(&format!(
                "\n  {k:<22} p50 {:>8.2} ms  p99 {:>8.2} ms  max {:>8.2} ms  ({} samples)",
                l.p50 / 1e3,
                l.p99 / 1e3,
                l.max / 1e3,
                l.samples
            ));
        }
        s
    }

    /// One JSON object.
    pub fn json(&self, label: &str) -> String {
        let mut o = JsonObject::default();
        o.str("scenario", "inject");
        o.str("phase", self.name);
        o.str("label", label);
        o.num("receivers", self.receivers as f64);
        o.num("lost", self.lost as f64);
        for (k, v) in &self.figures {
            o.num(k, *v);
        }
        for (k, l) in &self.latencies {
            o.num(&format!("{k}_p50_us"), l.p50);
            o.num(&format!("{k}_p99_us"), l.p99);
            o.num(&format!("{k}_max_us"), l.max);
        }
        o.finish()
    }
}

/// Runs both phases, reporting each through `report`.
pub async fn run(cfg: &InjectConfig, report: impl Fn(&InjectResult)) -> Result<u64, String> {
    let channel = connect(&cfg.api).await?;
    let mut api = RouteServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let set = RouteSet::new(cfg.batch, cfg.vni, false);
    let mut lost = 0;
    if cfg.samples > 0 {
        let r = inject_one(cfg, &mut api, set).await?;
        lost += r.lost;
        report(&r);
    }
    if cfg.batch > 0 {
        let r = inject_batch(cfg, &mut api, set).await?;
        lost += r.lost;
        report(&r);
    }
    Ok(lost)
}

/// A peer config aimed at `server`.
fn aimed(cfg: &InjectConfig, server: SocketAddr) -> PeerConfig {
    PeerConfig {
        server,
        ..cfg.peer.clone()
    }
}

/// Waits (bounded) until every peer's last KEEPALIVE was answered: the
/// server has applied its SUBSCRIBE.
async fn synced(peers: &[Peer], timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while !peers.iter().all(Peer::synced) {
        if Instant::now() >= deadline {
            return Err("subscribers not synced with their servers".into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

async fn announce(
    api: &mut RouteServiceClient<Channel>,
    routes: Vec<pb::Route>,
) -> Result<(), String> {
    api.announce_routes(pb::AnnounceRoutesRequest {
        routes,
        allow_existing: true,
    })
    .await
    .map(drop)
    .map_err(|e| format!("AnnounceRoutes: {}: {}", e.code(), e.message()))
}

async fn withdraw(
    api: &mut RouteServiceClient<Channel>,
    routes: Vec<pb::Route>,
) -> Result<(), String> {
    api.withdraw_routes(pb::WithdrawRoutesRequest {
        routes,
        allow_missing: true,
    })
    .await
    .map(drop)
    .map_err(|e| format!("WithdrawRoutes: {}: {}", e.code(), e.message()))
}

/// K single routes, each announced and withdrawn; one probe route (index N
/// of the set, outside the batch's range) watched by every subscriber.
async fn inject_one(
    cfg: &InjectConfig,
    api: &mut RouteServiceClient<Channel>,
    set: RouteSet,
) -> Result<InjectResult, String> {
    let index = set.n;
    let probe: Route = set.route(index);
    let mut peers = Vec::new();
    let mut inboxes = Vec::new();
    for &server in &cfg.watch {
        for _ in 0..cfg.subscribers {
            let (tx, rx) = mpsc::unbounded_channel();
            let peer = Peer::connect(&aimed(cfg, server), Sink::Events { set, index, tx }).await?;
            peer.subscribe(cfg.vni).await?;
            peers.push(peer);
            inboxes.push(rx);
        }
    }
    synced(&peers, Duration::from_secs(10)).await?;
    let mut add = Vec::new();
    let mut remove = Vec::new();
    let mut add_call = Vec::new();
    let mut remove_call = Vec::new();
    let mut lost = 0;
    for _ in 0..cfg.samples {
        for (action, lat, call) in [
            (Action::Add, &mut add, &mut add_call),
            (Action::Remove, &mut remove, &mut remove_call),
        ] {
            let t0 = Instant::now();
            match action {
                Action::Add => announce(api, vec![api_route(&probe)]).await?,
                Action::Remove => withdraw(api, vec![api_route(&probe)]).await?,
            }
            let returned = Instant::now();
            call.push(returned.duration_since(t0).as_secs_f64() * 1e6);
            let mut last = returned;
            for rx in &mut inboxes {
                match wait_event(rx, action).await {
                    Some(at) => last = last.max(at),
                    None => lost += 1,
                }
            }
            lat.push(last.duration_since(returned).as_secs_f64() * 1e6);
        }
    }
    Ok(InjectResult {
        name: "inject-one",
        receivers: peers.len() as u64,
        figures: vec![("samples", cfg.samples as f64)],
        latencies: vec![
            ("add after return", crate::percentiles(&mut add)),
            ("remove after return", crate::percentiles(&mut remove)),
            ("announce call", crate::percentiles(&mut add_call)),
            ("withdraw call", crate::percentiles(&mut remove_call)),
        ],
        lost,
    })
}

/// The arrival of the next `action` of the probe, or None after
/// [`SAMPLE_TIMEOUT`]; other actions (a late duplicate) are skipped.
async fn wait_event(
    rx: &mut mpsc::UnboundedReceiver<(Action, Instant)>,
    action: Action,
) -> Option<Instant> {
    let deadline = tokio::time::Instant::now() + SAMPLE_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((a, at))) if a == action => return Some(at),
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => return None,
        }
    }
}

/// N routes in one call, then withdrawn in one call.
async fn inject_batch(
    cfg: &InjectConfig,
    api: &mut RouteServiceClient<Channel>,
    set: RouteSet,
) -> Result<InjectResult, String> {
    let mut peers = Vec::new();
    for &server in &cfg.watch {
        for _ in 0..cfg.subscribers {
            let peer = Peer::connect(&aimed(cfg, server), Sink::Track(set)).await?;
            peer.subscribe(cfg.vni).await?;
            peers.push(peer);
        }
    }
    synced(&peers, Duration::from_secs(10)).await?;
    let routes: Vec<pb::Route> = (0..set.n).map(|i| api_route(&set.route(i))).collect();
    let n = set.n;

    let t0 = Instant::now();
    announce(api, routes.clone()).await?;
    let returned = Instant::now();
    let all_added = wait_all(&peers, |p| p.stats.adds.load(Relaxed) >= n, cfg.timeout).await;
    let added_at = Instant::now();
    let missing_adds: u64 = peers
        .iter()
        .map(|p| n.saturating_sub(p.stats.adds.load(Relaxed)))
        .sum();

    let t1 = Instant::now();
    withdraw(api, routes).await?;
    let withdrawn = Instant::now();
    let all_removed = wait_all(&peers, |p| p.stats.removes.load(Relaxed) >= n, cfg.timeout).await;
    let removed_at = Instant::now();
    let missing_removes: u64 = peers
        .iter()
        .map(|p| n.saturating_sub(p.stats.removes.load(Relaxed)))
        .sum();
    let secs = |a: Instant, b: Instant| b.duration_since(a).as_secs_f64();
    Ok(InjectResult {
        name: "inject-batch",
        receivers: peers.len() as u64,
        figures: vec![
            ("routes", n as f64),
            ("announce_call_s", secs(t0, returned)),
            ("all_added_s", secs(t0, added_at)),
            ("added_after_return_s", secs(returned, added_at)),
            ("withdraw_call_s", secs(t1, withdrawn)),
            ("all_removed_s", secs(t1, removed_at)),
        ],
        latencies: Vec::new(),
        lost: if all_added && all_removed {
            0
        } else {
            missing_adds + missing_removes
        },
    })
}

/// Polls (every millisecond, bounded) until `done` holds for every peer.
async fn wait_all(peers: &[Peer], done: impl Fn(&Peer) -> bool, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if peers.iter().all(&done) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
