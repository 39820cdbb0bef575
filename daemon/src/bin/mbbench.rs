//! `mbbench`: a load generator and benchmark for MetalBond route servers. It
//! speaks raw MetalBond v1 over TCP to any server (metalbondd, the Go
//! reference, rustbond) and measures, per scenario:
//!
//! ```text
//! mbbench --server [::1]:4711 [--scenario all|fanout|dump|withdraw|latency|session-end|scrape|fleet]
//!         [--routes N] [--subscribers M] [--vni V] [--keepalive SECS]
//!         [--server-pid PID] [--latency-samples K] [--timeout SECS] [--json]
//! mbbench --server [::1]:4711 --scenario fleet [--hypervisors H] [--vnis V]
//!         [--zipf-s S] [--subs-per-session S] [--routes-per-session R] [--seed X]
//!         [--churn-rate K] [--churn-secs C] [--storm-window SECS] [--server-pid PID]
//! mbbench --server [::1]:4711 --scenario inject --inject-api PATH [--watch-server ADDR]...
//!         [--subscribers M] [--latency-samples K] [--routes N]
//! ```
//!
//! One-VNI scenarios (`all` runs fanout, dump, session-end, withdraw and
//! latency): every simulated peer is a well-behaved MetalBond client (HELLO,
//! KEEPALIVE every negotiated interval, SUBSCRIBE/announce only once
//! established); every subscriber keeps a bit set per route index for ADD
//! and REMOVE, so loss and duplicates are detected exactly.
//!
//! The fleet scenario (`mbbench/fleet.rs`): H hypervisor sessions, V VNIs
//! with a Zipf-like popularity, S subscriptions and R routes per session;
//! phases connect, converge, churn and reconnect storm, each checked exactly
//! per session (missing, extra, duplicate, stale).
//!
//! Any loss (or, in the fleet scenario, any inexact state or a phase that did
//! not converge) makes the exit code 1; a setup failure (cannot connect,
//! handshake fails, bad arguments) makes it 2.

#[path = "mbbench/agent.rs"]
mod agent;
#[path = "mbbench/fleet.rs"]
mod fleet;
#[path = "mbbench/inject.rs"]
mod inject;
#[path = "mbbench/kernel.rs"]
mod kernel;
#[path = "mbbench/ledger.rs"]
mod ledger;
#[path = "mbbench/peer.rs"]
mod peer;
#[path = "mbbench/procfs.rs"]
mod procfs;
#[path = "mbbench/report.rs"]
mod report;
#[path = "mbbench/routes.rs"]
mod routes;
#[path = "mbbench/shape.rs"]
mod shape;

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use metalbondd::wire::Action;
use tokio::task::JoinSet;

use peer::{ns, Peer, PeerConfig, Sink};
use procfs::Mem;
use report::{Latency, MemReport, ScenarioResult};
use routes::RouteSet;

/// Benchmark and load generator for MetalBond route servers (metalbondd, the
/// Go reference, rustbond): raw MetalBond v1 sessions over TCP, exact loss
/// and duplicate accounting, server CPU and memory from /proc.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "mbbench",
    version,
    about = "Benchmark and load generator for MetalBond route servers (metalbondd, the Go reference, rustbond)",
    long_about = "Benchmark and load generator for MetalBond route servers (metalbondd, the Go reference, \
rustbond). Speaks raw MetalBond v1 over TCP to --server and measures one scenario (or `all`). \
One-VNI scenarios: fanout (M subscribers receive N routes from one announcer), dump (a late \
subscriber receives the N-route dump), session-end (a 1-route peer disconnects, time to the \
REMOVE), withdraw (the announcer disconnects, M subscribers receive N REMOVEs), latency (single \
updates on an idle server), scrape (GET /metrics, metalbondd only). Fleet: H hypervisor sessions \
in V VNIs with a Zipf-like popularity, phases connect, converge, churn and reconnect storm, each \
checked exactly per session. Exit code 1 on any loss or inexact state, 2 on a setup failure.",
    after_help = "Examples:\n  mbbench --server [::1]:4711 --scenario all --routes 1000000 --subscribers 100\n  \
mbbench --server [::1]:4711 --scenario fleet --hypervisors 1000 --server-pid $(pidof -s metalbondd)"
)]
struct Args {
    /// Server address, e.g. `[::1]:4711` or `127.0.0.1:4711`.
    #[arg(long)]
    server: String,
    /// Which scenario to run; `all` runs fanout, dump, session-end, withdraw
    /// and latency in order. `dump`, `session-end`, `withdraw` and `scrape`
    /// alone first load the routes with a fan-out to 1 (dump, session-end) or
    /// M (withdraw, scrape) subscribers, reported as "preload". `fleet` runs
    /// only the fleet phases (see --hypervisors).
    #[arg(long, value_enum, default_value_t = Scenario::All)]
    scenario: Scenario,
    /// Number of distinct routes (N).
    #[arg(long, default_value_t = 100_000)]
    routes: u64,
    /// Number of subscribers in the fan-out and withdraw scenarios (M).
    #[arg(long, default_value_t = 10)]
    subscribers: usize,
    /// VNI of all routes.
    #[arg(long, default_value_t = 100)]
    vni: u32,
    /// Use IPv6 /128 destinations (fd00:be9c::/64 + i) even below 2^24 routes.
    #[arg(long)]
    ipv6: bool,
    /// Keepalive interval proposed in HELLO, seconds (every scenario).
    #[arg(long, default_value_t = 5)]
    keepalive: u32,
    /// PID of the server process: report its RSS, peak RSS and CPU time.
    /// Bytes per route = (RSS once N routes are loaded and delivered - RSS at
    /// the start) / N, meaningful only on a freshly started server.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Number of single updates timed in the latency scenario (K).
    #[arg(long, default_value_t = 1000)]
    latency_samples: u64,
    /// Limit for every wait (each fleet phase), seconds; what has not
    /// arrived by then is loss.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Give up a wait early when nothing new arrived for this many seconds (0 = never).
    #[arg(long, default_value_t = 30)]
    stall: u64,
    /// Bytes per write when announcing in bulk (whole frames only).
    #[arg(long, default_value_t = 65536)]
    batch_bytes: usize,
    /// Pause after each bulk write, microseconds (to pace slow servers).
    #[arg(long, default_value_t = 0)]
    batch_pause_us: u64,
    /// Tokio worker threads (default: number of CPUs).
    #[arg(long)]
    threads: Option<usize>,
    /// Free-form label copied into every JSON object (e.g. the server name).
    #[arg(long, default_value = "")]
    label: String,
    /// Print one JSON object per scenario on stdout (the human report goes to stderr).
    #[arg(long)]
    json: bool,
    /// The server's metrics listener (`--metrics` of metalbondd), for the
    /// scrape scenario.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Run the fanout, dump, session-end, withdraw and latency sessions
    /// over TLS (a metalbondd `tls_listen` address as --server), trusting
    /// the CA certificates in this PEM file; the server's certificate must
    /// name its IP address.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM) to present, with --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key", requires = "tls_ca")]
    tls_cert: Option<std::path::PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Kernel scenario: the routing table the agent installs --vni into.
    #[arg(long, default_value_t = 100, help_heading = "Kernel scenario")]
    table: u32,
    /// Kernel scenario: the agent's tunnel device (to open netlink).
    #[arg(long, default_value = "mbt0", help_heading = "Kernel scenario")]
    tun: String,
    /// Kernel scenario: number of runs (announce + withdraw each).
    #[arg(long, default_value_t = 1, help_heading = "Kernel scenario")]
    runs: u32,
    /// Fleet: hypervisor sessions (H).
    #[arg(long, default_value_t = 1000, help_heading = "Fleet scenario")]
    hypervisors: u32,
    /// Fleet: VNIs (V), numbered from 1 in order of popularity.
    #[arg(long, default_value_t = 2000, help_heading = "Fleet scenario")]
    vnis: u32,
    /// Fleet: Zipf exponent of the VNI popularity (weight of the k-th VNI is
    /// 1/k^s; 0 = uniform). 0.5 gives issue 9's load (5.8M deliveries at
    /// H = 5,000, 22.8M at 10,000); at 1.0 the top VNI holds 12 % of all routes
    /// and most sessions subscribe to it (377M deliveries at 10,000).
    #[arg(long, default_value_t = 0.5, help_heading = "Fleet scenario")]
    zipf_s: f64,
    /// Fleet: distinct VNIs each session subscribes to (S).
    #[arg(long, default_value_t = 10, help_heading = "Fleet scenario")]
    subs_per_session: u32,
    /// Fleet: routes each session announces (R), each into a VNI drawn from the popularity.
    #[arg(long, default_value_t = 20, help_heading = "Fleet scenario")]
    routes_per_session: u32,
    /// Fleet: seed of every random choice (same seed, same fleet, same churn).
    #[arg(long, default_value_t = 1, help_heading = "Fleet scenario")]
    seed: u64,
    /// Fleet: churn events per second (single-route withdraw or re-announce by a random session).
    #[arg(long, default_value_t = 20.0, help_heading = "Fleet scenario")]
    churn_rate: f64,
    /// Fleet: churn duration in seconds (0 = no churn phase).
    #[arg(long, default_value_t = 20.0, help_heading = "Fleet scenario")]
    churn_secs: f64,
    /// Fleet: every session drops and reconnects within this window, seconds.
    #[arg(long, default_value_t = 1.0, help_heading = "Fleet scenario")]
    storm_window: f64,
    /// Fleet: skip the reconnect storm phase.
    #[arg(long, help_heading = "Fleet scenario")]
    no_storm: bool,
    /// Fleet: sessions offer the SYNC extension in HELLO, as metalbondd
    /// agents do (a metalbondd server then follows each dump with a SYNC and
    /// does not pace them); default: plain sessions, as the Go reference's client.
    #[arg(long, help_heading = "Fleet scenario")]
    offer_sync: bool,
    /// Fleet: connection handshakes under way at once.
    #[arg(long, default_value_t = 256, help_heading = "Fleet scenario")]
    connect_concurrency: usize,
    /// Fleet: mean delay before a session reconnects after the server ended it, milliseconds.
    #[arg(long, default_value_t = 1000, help_heading = "Fleet scenario")]
    reconnect_delay_ms: u64,
    /// Fleet: after a phase converged, keep counting late duplicates and extras this long, milliseconds.
    #[arg(long, default_value_t = 500, help_heading = "Fleet scenario")]
    settle_ms: u64,
    /// Inject: the API socket of the server routes are injected through.
    #[arg(long, value_name = "PATH", help_heading = "Inject scenario")]
    inject_api: Option<std::path::PathBuf>,
    /// Inject: a server whose subscribers must receive the injected routes
    /// (repeat for every server of the fleet; default: --server).
    #[arg(long, value_name = "ADDR", help_heading = "Inject scenario")]
    watch_server: Vec<SocketAddr>,
    /// Agent: the API socket of the `metalbondd client` under test, subscribed
    /// to --vni and connected to --server.
    #[arg(long, value_name = "PATH", help_heading = "Agent scenario")]
    client_api: Option<std::path::PathBuf>,
    /// Agent: the client's PID (its memory per received route).
    #[arg(long, help_heading = "Agent scenario")]
    client_pid: Option<u32>,
    /// Agent: routes announced through the client's API (K).
    #[arg(long, default_value_t = 100_000, help_heading = "Agent scenario")]
    announcements: u64,
    /// Agent: the VNI of those announcements.
    #[arg(long, default_value_t = 200, help_heading = "Agent scenario")]
    announce_vni: u32,
}

/// Scenario selection.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// fanout, dump, session-end, withdraw, latency.
    All,
    /// M subscribers receive N routes from one announcer.
    Fanout,
    /// A late subscriber receives the N-route dump.
    Dump,
    /// The announcer disconnects; subscribers receive N REMOVEs.
    Withdraw,
    /// Single-update latency on an idle server.
    Latency,
    /// With the N routes loaded: a peer that announced one route
    /// disconnects; time until subscribers hear the REMOVE. It must not grow
    /// with the table (a session's end costs time proportional to its own routes).
    SessionEnd,
    /// With the N routes loaded and M subscribers: time K sequential
    /// `GET /metrics` on `--metrics` (metalbondd only).
    Scrape,
    /// H hypervisor sessions, V VNIs, S subscriptions and R routes each:
    /// connect, converge, churn, reconnect storm, exact per-session state.
    Fleet,
    /// A running `metalbondd client` (--client-api) connected to --server:
    /// N received routes through its feed, feed snapshots, K announcements
    /// through its API to a subscriber of the server.
    Agent,
    /// Routes injected through one server's API (--inject-api) reaching
    /// --subscribers subscribers on every --watch-server: K single
    /// injections (latency after the call returned), then N routes in one
    /// call (`mbbench/inject.rs`).
    Inject,
    /// Run inside the namespace of an agent installing VNI into --table:
    /// time until N announced routes are in the kernel table and until they
    /// are gone after the withdrawal (`mbbench/kernel.rs`).
    Kernel,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = validate(&args) {
        eprintln!("mbbench: {e}");
        return ExitCode::from(2);
    }
    if args.scenario == Scenario::Fleet {
        return fleet_main(args);
    }
    let _ = ns(Instant::now());
    if args.scenario == Scenario::Agent {
        return agent_main(args);
    }
    if args.scenario == Scenario::Inject {
        return inject_main(args);
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(t) = args.threads {
        rt.worker_threads(t.max(1));
    }
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mbbench: cannot start runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let out = Output { json: args.json };
    let result = rt.block_on(run(args, &out));
    // Tasks blocked on a stuck server must not keep us alive.
    rt.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(results) => {
            let lossy: Vec<&str> = results
                .iter()
                .filter(|r| r.loss() > 0)
                .map(|r| r.name)
                .collect();
            if lossy.is_empty() {
                out.human("RESULT: no loss");
                ExitCode::SUCCESS
            } else {
                out.human(&format!("RESULT: LOSS in {}", lossy.join(", ")));
                ExitCode::from(1)
            }
        }
        Err(e) => {
            out.human(&format!("mbbench: setup failed: {e}"));
            ExitCode::from(2)
        }
    }
}

fn validate(a: &Args) -> Result<(), String> {
    if a.routes == 0 {
        return Err("--routes must be at least 1".into());
    }
    if a.subscribers == 0 {
        return Err("--subscribers must be at least 1".into());
    }
    if a.keepalive == 0 {
        return Err("--keepalive must be at least 1".into());
    }
    if a.batch_bytes < 64 {
        return Err("--batch-bytes must be at least 64".into());
    }
    if a.timeout == 0 {
        return Err("--timeout must be at least 1".into());
    }
    if a.routes >= u64::MAX / 2 {
        return Err("--routes is too large".into());
    }
    if a.scenario == Scenario::Scrape && a.metrics.is_none() {
        return Err("--scenario scrape needs --metrics ADDR".into());
    }
    if a.scenario == Scenario::Fleet {
        fleet_dims(a).validate()?;
        let non_negative = |x: f64| x.is_finite() && x >= 0.0;
        if !non_negative(a.churn_rate) || !non_negative(a.churn_secs) {
            return Err("--churn-rate and --churn-secs must be finite numbers >= 0".into());
        }
        if a.churn_rate * a.churn_secs > 1e9 {
            return Err("--churn-rate x --churn-secs is too large".into());
        }
        if !(a.storm_window.is_finite() && (0.0..=3600.0).contains(&a.storm_window)) {
            return Err("--storm-window must be between 0 and 3600 seconds".into());
        }
    }
    Ok(())
}

fn fleet_dims(a: &Args) -> shape::Dims {
    shape::Dims {
        sessions: a.hypervisors,
        vnis: a.vnis,
        subs: a.subs_per_session,
        routes: a.routes_per_session,
        zipf_s: a.zipf_s,
        seed: a.seed,
    }
}

/// A multi-threaded runtime with the default number of workers, or None
/// after saying why not.
fn default_runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("mbbench: cannot start runtime: {e}");
            None
        }
    }
}

/// The simulated peers' settings from the arguments, aimed at `server`.
fn peer_config(
    args: &Args,
    server: SocketAddr,
    handshake_timeout: Duration,
) -> Result<PeerConfig, String> {
    Ok(PeerConfig {
        server,
        keepalive: args.keepalive,
        batch_bytes: args.batch_bytes,
        batch_pause: Duration::from_micros(args.batch_pause_us),
        handshake_timeout,
        tls: tls_config(args)?,
    })
}

fn agent_main(args: Args) -> ExitCode {
    let out = Output { json: args.json };
    let Some(rt) = default_runtime() else {
        return ExitCode::from(2);
    };
    let result = rt.block_on(async {
        let server = resolve(&args.server).await?;
        let cfg = agent::AgentConfig {
            peer: peer_config(&args, server, Duration::from_secs(10))?,
            client_api: args.client_api.clone().ok_or("--client-api is required")?,
            client_pid: args.client_pid,
            routes: args.routes,
            vni: args.vni,
            announcements: args.announcements,
            announce_vni: args.announce_vni,
            timeout: Duration::from_secs(args.timeout),
        };
        agent::run(&cfg, |r| {
            out.human(&r.human());
            if args.json {
                println!("{}", r.json(&args.label));
            }
        })
        .await
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            out.human(&format!("mbbench: agent scenario failed: {e}"));
            ExitCode::from(2)
        }
    }
}

fn inject_main(args: Args) -> ExitCode {
    let out = Output { json: args.json };
    let Some(rt) = default_runtime() else {
        return ExitCode::from(2);
    };
    let result = rt.block_on(async {
        let server = resolve(&args.server).await?;
        let cfg = inject::InjectConfig {
            peer: peer_config(&args, server, Duration::from_secs(10))?,
            watch: if args.watch_server.is_empty() {
                vec![server]
            } else {
                args.watch_server.clone()
            },
            subscribers: args.subscribers,
            api: args.inject_api.clone().ok_or("--inject-api is required")?,
            vni: args.vni,
            samples: args.latency_samples,
            batch: args.routes,
            timeout: Duration::from_secs(args.timeout),
        };
        inject::run(&cfg, |r| {
            out.human(&r.human());
            if args.json {
                println!("{}", r.json(&args.label));
            }
        })
        .await
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(0) => {
            out.human("RESULT: no loss");
            ExitCode::SUCCESS
        }
        Ok(lost) => {
            out.human(&format!("RESULT: LOSS ({lost} deliveries missing)"));
            ExitCode::from(1)
        }
        Err(e) => {
            out.human(&format!("mbbench: inject scenario failed: {e}"));
            ExitCode::from(2)
        }
    }
}

/// `--scenario fleet`: one thread for every session (see `mbbench/fleet.rs`).
fn fleet_main(args: Args) -> ExitCode {
    let out = Output { json: args.json };
    if let Err(e) = fleet::raise_fd_limit(args.hypervisors) {
        out.human(&format!("mbbench: {e}"));
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mbbench: cannot start runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let server = match rt.block_on(resolve(&args.server)) {
        Ok(s) => s,
        Err(e) => {
            out.human(&format!("mbbench: setup failed: {e}"));
            return ExitCode::from(2);
        }
    };
    let cfg = fleet::FleetConfig {
        server,
        dims: fleet_dims(&args),
        keepalive: args.keepalive,
        churn_rate: args.churn_rate,
        churn_secs: args.churn_secs,
        storm_window: args.storm_window,
        storm: !args.no_storm,
        connect_concurrency: args.connect_concurrency,
        reconnect_delay: Duration::from_millis(args.reconnect_delay_ms),
        settle: Duration::from_millis(args.settle_ms),
        timeout: Duration::from_secs(args.timeout),
        stall: (args.stall > 0).then(|| Duration::from_secs(args.stall)),
        server_pid: args.server_pid,
        offer_sync: args.offer_sync,
    };
    out.human(&fleet::header(&cfg, &args.server));
    let report = |r: &fleet::PhaseResult| {
        out.human(&r.human());
        if out.json {
            println!("{}", r.json(&cfg, &args.server, &args.label));
            let _ = std::io::stdout().flush();
        }
    };
    let local = tokio::task::LocalSet::new();
    let results = local.block_on(&rt, fleet::run(cfg.clone(), &report));
    drop(local);
    rt.shutdown_timeout(Duration::from_secs(2));
    if results.first().is_some_and(|r| r.connects == 0) {
        out.human("mbbench: setup failed: no session could connect");
        return ExitCode::from(2);
    }
    let phases = ["connect", "converge", "churn", "storm"];
    let ran: Vec<&str> = results.iter().map(|r| r.name).collect();
    let bad: Vec<&str> = results.iter().filter(|r| !r.ok()).map(|r| r.name).collect();
    let skipped: Vec<&str> = phases
        .iter()
        .copied()
        .filter(|p| !ran.contains(p))
        .filter(|&p| match p {
            "churn" => cfg.churn_secs > 0.0 && cfg.churn_rate > 0.0,
            "storm" => cfg.storm,
            _ => true,
        })
        .collect();
    if bad.is_empty() && skipped.is_empty() {
        out.human("RESULT: every phase exact");
        ExitCode::SUCCESS
    } else {
        let mut msg = String::from("RESULT:");
        if !bad.is_empty() {
            msg.push_str(&format!(" NOT EXACT in {}", bad.join(", ")));
        }
        if !skipped.is_empty() {
            msg.push_str(&format!(" not run: {}", skipped.join(", ")));
        }
        out.human(&msg);
        ExitCode::from(1)
    }
}

/// Where the reports go.
struct Output {
    json: bool,
}

impl Output {
    fn human(&self, s: &str) {
        let s = s.trim_end();
        if self.json {
            eprintln!("{s}");
        } else {
            println!("{s}");
            let _ = std::io::stdout().flush();
        }
    }

    fn result(&self, r: &ScenarioResult, server: &str, label: &str, emit_json: bool) {
        self.human(&r.human());
        if self.json && emit_json {
            println!("{}", r.json(server, label));
            let _ = std::io::stdout().flush();
        }
    }
}

/// The TLS client configuration of `--tls-ca` (`--tls-cert`, `--tls-key`),
/// read with the daemon's own loader.
fn tls_config(args: &Args) -> Result<Option<Arc<rustls::ClientConfig>>, String> {
    let Some(ca) = &args.tls_ca else {
        return Ok(None);
    };
    let files = metalbondd::tls::ClientFiles {
        ca: ca.clone(),
        cert_key: args.tls_cert.clone().zip(args.tls_key.clone()),
    };
    Ok(Some(metalbondd::tls::ClientTls::load(files)?.config()))
}

async fn run(args: Args, out: &Output) -> Result<Vec<ScenarioResult>, String> {
    let server = resolve(&args.server).await?;
    let timeout = Duration::from_secs(args.timeout);
    let bench = Bench {
        cfg: peer_config(&args, server, timeout.min(Duration::from_secs(30)))?,
        set: RouteSet::new(args.routes, args.vni, args.ipv6),
        timeout,
        stall: (args.stall > 0).then(|| Duration::from_secs(args.stall)),
        pid: args.server_pid,
        args: args.clone(),
    };
    out.human(&format!(
        "mbbench: server {} ({server}), scenario {}, {} routes in VNI {}, {} subscriber(s) (fanout, withdraw, scrape), keepalive {} s, timeout {} s{}",
        args.server,
        format!("{:?}", args.scenario).to_lowercase(),
        args.routes,
        args.vni,
        args.subscribers,
        args.keepalive,
        args.timeout,
        match args.server_pid {
            Some(p) => format!(", server pid {p}"),
            None => String::new(),
        }
    ));
    let mut results = Vec::new();
    let emit = |r: ScenarioResult, json: bool, results: &mut Vec<ScenarioResult>| {
        out.result(&r, &args.server, &args.label, json);
        results.push(r);
    };
    let mem_start = bench.mem();
    let m = args.subscribers;
    match args.scenario {
        Scenario::All => {
            let (r, subs, ann) = bench.fanout("fanout", m, mem_start).await?;
            emit(r, true, &mut results);
            let (r, late) = bench.dump().await?;
            emit(r, true, &mut results);
            let r = bench.session_end().await?;
            emit(r, true, &mut results);
            let mut receivers: Vec<&Peer> = subs.iter().collect();
            receivers.push(&late);
            let r = bench.withdraw(ann, &receivers).await;
            emit(r, true, &mut results);
            drop(receivers);
            drop(subs);
            drop(late);
            // Let the server notice the closed sessions before timing on an idle server.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let r = bench.latency().await?;
            emit(r, true, &mut results);
        }
        Scenario::Fanout => {
            let (r, _subs, _ann) = bench.fanout("fanout", m, mem_start).await?;
            emit(r, true, &mut results);
        }
        Scenario::Dump => {
            let (r, _subs, _ann) = bench.fanout("preload", 1, mem_start).await?;
            emit(r, false, &mut results);
            let (r, _late) = bench.dump().await?;
            emit(r, true, &mut results);
        }
        Scenario::Withdraw => {
            let (r, subs, ann) = bench.fanout("preload", m, mem_start).await?;
            emit(r, false, &mut results);
            let receivers: Vec<&Peer> = subs.iter().collect();
            let r = bench.withdraw(ann, &receivers).await;
            emit(r, true, &mut results);
        }
        Scenario::Latency => {
            let r = bench.latency().await?;
            emit(r, true, &mut results);
        }
        Scenario::SessionEnd => {
            let (r, _subs, _ann) = bench.fanout("preload", 1, mem_start).await?;
            emit(r, false, &mut results);
            let r = bench.session_end().await?;
            emit(r, true, &mut results);
        }
        Scenario::Fleet => unreachable!("fleet runs in fleet_main"),
        Scenario::Agent => unreachable!("agent runs in agent_main"),
        Scenario::Inject => unreachable!("inject runs in inject_main"),
        Scenario::Kernel => {
            for i in 0..args.runs.max(1) {
                let r = kernel::run(
                    &bench.cfg,
                    bench.set,
                    &args.tun,
                    args.table,
                    timeout,
                    args.metrics,
                )
                .await?;
                out.human(&format!(
                    "kernel run {}: {} routes installed in {:.3} s, removed in {:.3} s (observed by {} of table {}, longest dump {:.3} s)",
                    i + 1,
                    args.routes,
                    r.install.as_secs_f64(),
                    r.remove.as_secs_f64(),
                    if args.metrics.is_some() {
                        "the agent's installed-routes gauge, checked by a dump"
                    } else {
                        "netlink dumps"
                    },
                    args.table,
                    r.max_dump.as_secs_f64()
                ));
                if args.json {
                    println!(
                        "{{\"scenario\":\"kernel\",\"label\":{:?},\"routes\":{},\"install_s\":{:.4},\"remove_s\":{:.4},\"max_dump_s\":{:.4}}}",
                        args.label,
                        args.routes,
                        r.install.as_secs_f64(),
                        r.remove.as_secs_f64(),
                        r.max_dump.as_secs_f64()
                    );
                }
            }
        }
        Scenario::Scrape => {
            let (r, _subs, _ann) = bench.fanout("preload", m, mem_start).await?;
            emit(r, false, &mut results);
            let addr = bench.args.metrics.expect("validated");
            let r = scrape(addr, bench.args.latency_samples).await;
            emit(r, true, &mut results);
        }
    }
    Ok(results)
}

async fn resolve(server: &str) -> Result<SocketAddr, String> {
    tokio::net::lookup_host(server)
        .await
        .map_err(|e| format!("cannot resolve {server}: {e}"))?
        .next()
        .ok_or_else(|| format!("{server} resolves to no address"))
}

/// Which counter a wait watches.
#[derive(Clone, Copy)]
enum Kind {
    Adds,
    Removes,
}

/// Cumulative counters of a peer, to report per-scenario deltas.
#[derive(Clone, Copy, Default)]
struct Counts {
    dup: u64,
    unexpected: u64,
    late: u64,
}

/// Distinct routes of `kind` a peer has received.
fn count(p: &Peer, kind: Kind) -> u64 {
    match kind {
        Kind::Adds => p.stats.adds.load(Relaxed),
        Kind::Removes => p.stats.removes.load(Relaxed),
    }
}

fn counts(p: &Peer) -> Counts {
    let s = &p.stats;
    Counts {
        dup: s.dup_adds.load(Relaxed) + s.dup_removes.load(Relaxed),
        unexpected: s.unexpected.load(Relaxed),
        late: s.keepalive_late.load(Relaxed),
    }
}

/// Resource usage at the start of a scenario.
struct Snapshot {
    client_cpu: f64,
    server_cpu: Option<procfs::ProcCpu>,
    mem: Option<Mem>,
    counts: Vec<Counts>,
}

struct Bench {
    args: Args,
    cfg: PeerConfig,
    set: RouteSet,
    timeout: Duration,
    stall: Option<Duration>,
    pid: Option<u32>,
}

impl Bench {
    fn mem(&self) -> Option<Mem> {
        self.pid.and_then(procfs::mem)
    }

    fn snapshot(&self, peers: &[&Peer]) -> Snapshot {
        Snapshot {
            client_cpu: procfs::self_cpu_secs(),
            server_cpu: self.pid.and_then(procfs::cpu),
            mem: self.mem(),
            counts: peers.iter().map(|p| counts(p)).collect(),
        }
    }

    /// Fills the resource and incident fields of `r` from the peers.
    fn finish(&self, r: &mut ScenarioResult, before: &Snapshot, peers: &[&Peer]) {
        r.client_cpu_s = procfs::self_cpu_secs() - before.client_cpu;
        if let (Some(b), Some(a)) = (before.server_cpu, self.pid.and_then(procfs::cpu)) {
            r.server_cpu = Some(a.since(b));
        }
        if let (Some(b), Some(a)) = (before.mem, self.mem()) {
            r.mem = Some(MemReport {
                before: b,
                after: a,
                bytes_per_route: None,
            });
        }
        if self.pid.is_some() && self.mem().is_none() {
            r.notes.push("server process is gone".into());
        }
        let silent = peers.iter().filter(|p| p.stats.keepalive_silent()).count();
        if silent > 0 {
            r.keepalive_late += silent as u64;
            r.notes.push(format!(
                "{silent} session(s) had no KEEPALIVE answer for over 2.5 x the interval at the end"
            ));
        }
        let mut reasons: Vec<String> = Vec::new();
        for (i, p) in peers.iter().enumerate() {
            let c = counts(p);
            let b = before.counts.get(i).copied().unwrap_or_default();
            r.duplicates += c.dup - b.dup;
            r.unexpected += c.unexpected - b.unexpected;
            r.keepalive_late += c.late - b.late;
            let s = &p.stats;
            if s.closed.load(Relaxed) && !s.closed_reported.swap(true, Relaxed) {
                r.closed_by_server += 1;
                if let Some(reason) = s.reason() {
                    if !reasons.contains(&reason) {
                        reasons.push(reason);
                    }
                }
            }
        }
        for reason in reasons.into_iter().take(5) {
            r.notes.push(format!("session ended: {reason}"));
        }
    }

    /// Connects `m` tracking subscribers concurrently and subscribes them.
    async fn subscribers(&self, m: usize) -> Result<Vec<Peer>, String> {
        let mut set = JoinSet::new();
        for _ in 0..m {
            let cfg = self.cfg.clone();
            let routes = self.set;
            set.spawn(async move { Peer::connect(&cfg, Sink::Track(routes)).await });
        }
        let mut subs = Vec::with_capacity(m);
        while let Some(r) = set.join_next().await {
            subs.push(r.map_err(|e| e.to_string())??);
        }
        for s in &subs {
            s.subscribe(self.set.vni.0).await?;
        }
        Ok(subs)
    }

    /// Waits until the server answered every KEEPALIVE of these peers (so it
    /// has read their SUBSCRIBE); returns a note if it did not in time.
    async fn wait_synced(&self, peers: &[&Peer]) -> Option<String> {
        let deadline = Instant::now() + self.cfg.handshake_timeout;
        loop {
            let pending = peers
                .iter()
                .filter(|p| !p.synced() && !p.stats.closed.load(Relaxed))
                .count();
            if pending == 0 {
                return None;
            }
            if Instant::now() >= deadline {
                return Some(format!(
                    "{pending} subscriber(s) not confirmed by a KEEPALIVE answer after SUBSCRIBE"
                ));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Waits until every peer has `target` distinct routes of `kind` (or is
    /// closed, or the timeout/stall limit hits). Returns (all complete, note).
    async fn wait_all(&self, peers: &[&Peer], kind: Kind, target: u64) -> (bool, Vec<String>) {
        let (complete, note) = self.wait_all_inner(peers, kind, target).await;
        let mut notes: Vec<String> = note.into_iter().collect();
        if !complete {
            let short: Vec<String> = peers
                .iter()
                .enumerate()
                .map(|(i, p)| (i, count(p, kind)))
                .filter(|&(_, c)| c < target)
                .take(8)
                .map(|(i, c)| format!("#{i}: {c}"))
                .collect();
            notes.push(format!(
                "incomplete receivers (index among {}: distinct routes received): {}",
                peers.len(),
                short.join(", ")
            ));
        }
        (complete, notes)
    }

    async fn wait_all_inner(
        &self,
        peers: &[&Peer],
        kind: Kind,
        target: u64,
    ) -> (bool, Option<String>) {
        let start = Instant::now();
        let deadline = start + self.timeout;
        let mut last_sum = u64::MAX;
        let mut last_progress = start;
        loop {
            let now = Instant::now();
            let mut sum = 0;
            let mut complete = 0;
            let mut closed = 0;
            for p in peers {
                let c = count(p, kind);
                sum += c;
                if c >= target {
                    complete += 1;
                } else if p.stats.closed.load(Relaxed) {
                    closed += 1;
                }
            }
            if complete == peers.len() {
                return (true, None);
            }
            if complete + closed == peers.len() {
                return (
                    false,
                    Some(format!(
                        "{closed} receiving session(s) ended before receiving everything"
                    )),
                );
            }
            if sum != last_sum {
                last_sum = sum;
                last_progress = now;
            }
            if now >= deadline {
                return (
                    false,
                    Some(format!(
                        "timeout after {} s: {complete}/{} receivers complete",
                        self.timeout.as_secs(),
                        peers.len()
                    )),
                );
            }
            if let Some(stall) = self.stall {
                if now.duration_since(last_progress) >= stall {
                    return (
                        false,
                        Some(format!(
                            "nothing new arrived for {} s (--stall): {complete}/{} receivers complete",
                            stall.as_secs(),
                            peers.len()
                        )),
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Elapsed seconds from `t0` to the latest recorded arrival of `kind`
    /// over `peers` (or to now if nothing arrived).
    fn elapsed(&self, peers: &[&Peer], kind: Kind, t0: Instant) -> f64 {
        let last = peers
            .iter()
            .map(|p| match kind {
                Kind::Adds => p.stats.last_add_ns.load(Relaxed),
                Kind::Removes => p.stats.last_remove_ns.load(Relaxed),
            })
            .max()
            .unwrap_or(0);
        let t0ns = ns(t0);
        if last > t0ns {
            (last - t0ns) as f64 / 1e9
        } else {
            t0.elapsed().as_secs_f64()
        }
    }

    /// (a) M subscribers, then one announcer pushes N ADDs.
    async fn fanout(
        &self,
        name: &'static str,
        m: usize,
        mem_start: Option<Mem>,
    ) -> Result<(ScenarioResult, Vec<Peer>, Peer), String> {
        let n = self.set.n;
        let subs = self.subscribers(m).await?;
        let refs: Vec<&Peer> = subs.iter().collect();
        let mut notes = Vec::new();
        notes.extend(self.wait_synced(&refs).await);
        let ann = Peer::connect(&self.cfg, Sink::Ignore).await?;
        let mut all = refs.clone();
        all.push(&ann);
        let before = self.snapshot(&all);
        let called = Instant::now();
        let mut bulk = ann.bulk(Action::Add, self.set, 0, n)?;
        let (completed, note) = self.wait_all(&refs, Kind::Adds, n).await;
        notes.extend(note);
        let t0 = bulk.started.try_recv().unwrap_or(called);
        let announce_s = bulk
            .done
            .try_recv()
            .ok()
            .map(|t| t.duration_since(t0).as_secs_f64());
        if announce_s.is_none() {
            notes.push("the announcer had not finished writing".into());
        }
        let mut r = ScenarioResult {
            name,
            routes: n,
            receivers: m as u64,
            completed,
            elapsed_s: self.elapsed(&refs, Kind::Adds, t0),
            expected: n * m as u64,
            received: refs.iter().map(|p| p.stats.adds.load(Relaxed)).sum(),
            announce_s,
            notes,
            ..Default::default()
        };
        self.finish(&mut r, &before, &all);
        if let (Some(start), Some(mem)) = (mem_start, r.mem.as_mut()) {
            mem.before = start;
            mem.bytes_per_route =
                Some((mem.after.rss_kib as f64 - start.rss_kib as f64) * 1024.0 / n as f64);
        }
        drop(all);
        drop(refs);
        Ok((r, subs, ann))
    }

    /// (b) A late subscriber receives the dump of N routes.
    async fn dump(&self) -> Result<(ScenarioResult, Peer), String> {
        let n = self.set.n;
        let late = Peer::connect(&self.cfg, Sink::Track(self.set)).await?;
        let before = self.snapshot(&[&late]);
        let t0 = late.subscribe(self.set.vni.0).await?;
        let (completed, notes) = self.wait_all(&[&late], Kind::Adds, n).await;
        let mut r = ScenarioResult {
            name: "dump",
            routes: n,
            receivers: 1,
            completed,
            elapsed_s: self.elapsed(&[&late], Kind::Adds, t0),
            expected: n,
            received: late.stats.adds.load(Relaxed),
            notes,
            ..Default::default()
        };
        self.finish(&mut r, &before, &[&late]);
        Ok((r, late))
    }

    /// (c) The announcer disconnects; every receiver gets N REMOVEs.
    async fn withdraw(&self, ann: Peer, receivers: &[&Peer]) -> ScenarioResult {
        let n = self.set.n;
        let mut all = receivers.to_vec();
        all.push(&ann);
        let before = self.snapshot(&all);
        drop(all);
        let mut notes = Vec::new();
        let t0 = match ann.close().await {
            Ok(t) => t,
            Err(e) => {
                notes.push(format!("closing the announcer: {e}"));
                Instant::now()
            }
        };
        drop(ann);
        let (completed, note) = self.wait_all(receivers, Kind::Removes, n).await;
        notes.extend(note);
        let mut r = ScenarioResult {
            name: "withdraw",
            routes: n,
            receivers: receivers.len() as u64,
            completed,
            elapsed_s: self.elapsed(receivers, Kind::Removes, t0),
            expected: n * receivers.len() as u64,
            received: receivers
                .iter()
                .map(|p| p.stats.removes.load(Relaxed))
                .sum(),
            notes,
            ..Default::default()
        };
        self.finish(&mut r, &before, receivers);
        r
    }

    /// (d) K single updates, each timed from write to arrival.
    async fn latency(&self) -> Result<ScenarioResult, String> {
        let ann = Peer::connect(&self.cfg, Sink::Ignore).await?;
        self.sample("latency", Some(&ann), |sampler: Arc<Sampler>, i| {
            let action = if i % 2 == 0 {
                Action::Add
            } else {
                Action::Remove
            };
            let ann = &ann;
            async move {
                let t0 = ann.send_one(action, sampler.set, sampler.index).await?;
                Ok((action, t0))
            }
        })
        .await
    }

    /// (e) K times: a new peer announces one route and disconnects; each
    /// sample is the time from its close to the subscriber's REMOVE, with
    /// the N routes of the other scenarios still in the table.
    async fn session_end(&self) -> Result<ScenarioResult, String> {
        let cfg = &self.cfg;
        self.sample("session-end", None, |sampler: Arc<Sampler>, _| async move {
            let peer = Peer::connect(cfg, Sink::Ignore).await?;
            peer.send_one(Action::Add, sampler.set, sampler.index)
                .await?;
            // Wait for the ADD so the REMOVE is timed on its own.
            sampler.expect(Action::Add).await?;
            let t0 = peer.close().await?;
            drop(peer);
            Ok((Action::Remove, t0))
        })
        .await
    }

    /// Runs `k` samples of `step`, which triggers one update of the route at
    /// `sampler.index` and returns (expected action, start time); each sample
    /// is the time until a dedicated subscriber sees that update.
    async fn sample<'a, F, Fut>(
        &'a self,
        name: &'static str,
        extra: Option<&Peer>,
        step: F,
    ) -> Result<ScenarioResult, String>
    where
        F: Fn(Arc<Sampler>, u64) -> Fut,
        Fut: std::future::Future<Output = Result<(Action, Instant), String>> + 'a,
    {
        let k = self.args.latency_samples;
        let index = self.set.n; // outside the tracked range: not touched by other scenarios
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let sub = Peer::connect(
            &self.cfg,
            Sink::Events {
                set: self.set,
                index,
                tx,
            },
        )
        .await?;
        sub.subscribe(self.set.vni.0).await?;
        let mut notes = Vec::new();
        notes.extend(self.wait_synced(&[&sub]).await);
        let mut watched = vec![&sub];
        watched.extend(extra);
        let before = self.snapshot(&watched);
        let start = Instant::now();
        let deadline = start + self.timeout;
        let per_sample = self
            .stall
            .unwrap_or(self.timeout)
            .min(Duration::from_secs(5));
        let sampler = Arc::new(Sampler {
            set: self.set,
            index,
            rx: tokio::sync::Mutex::new(rx),
            per_sample,
        });
        let mut samples: Vec<f64> = Vec::with_capacity(k as usize);
        let mut stale = 0u64;
        let mut lost = 0u64;
        for i in 0..k {
            if Instant::now() >= deadline {
                notes.push(format!("timeout after {} s", self.timeout.as_secs()));
                break;
            }
            let (action, t0) = match step(sampler.clone(), i).await {
                Ok(x) => x,
                Err(e) => {
                    notes.push(format!("sample {i} failed: {e}"));
                    break;
                }
            };
            match sampler.wait_for(action, t0, deadline).await {
                Wait::Seen(us, skipped) => {
                    samples.push(us);
                    stale += skipped;
                }
                Wait::Lost => {
                    lost += 1;
                    if lost == 1 {
                        notes.push(format!(
                            "update {i} not seen within {} ms",
                            per_sample.as_millis()
                        ));
                    }
                }
                Wait::Ended => {
                    notes.push("subscriber session ended".into());
                    break;
                }
            }
        }
        let elapsed = start.elapsed().as_secs_f64();
        // Anything arriving after the last sample is a duplicate.
        tokio::time::sleep(Duration::from_millis(100)).await;
        while sampler.rx.lock().await.try_recv().is_ok() {
            stale += 1;
        }
        let mut r = ScenarioResult {
            name,
            routes: k,
            receivers: 1,
            completed: samples.len() as u64 == k,
            elapsed_s: elapsed,
            expected: k,
            received: samples.len() as u64,
            duplicates: stale,
            latency: Some(percentiles(&mut samples)),
            notes,
            ..Default::default()
        };
        self.finish(&mut r, &before, &watched);
        Ok(r)
    }
}

/// The subscriber side of a latency-style scenario.
struct Sampler {
    set: RouteSet,
    index: u64,
    rx: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<(Action, Instant)>>,
    per_sample: Duration,
}

/// Outcome of waiting for one sample.
enum Wait {
    /// Seen after this many microseconds; this many stale events skipped.
    Seen(f64, u64),
    Lost,
    Ended,
}

impl Sampler {
    /// Waits for `action` seen at or after `t0`, until `per_sample` after
    /// `t0` or `deadline`, whichever is first.
    async fn wait_for(&self, action: Action, t0: Instant, deadline: Instant) -> Wait {
        self.wait_until(action, t0, (t0 + self.per_sample).min(deadline))
            .await
    }

    async fn wait_until(&self, action: Action, t0: Instant, limit: Instant) -> Wait {
        let mut rx = self.rx.lock().await;
        let mut skipped = 0;
        loop {
            match tokio::time::timeout_at(limit.into(), rx.recv()).await {
                Ok(Some((a, t))) if a == action && t >= t0 => {
                    return Wait::Seen(t.duration_since(t0).as_secs_f64() * 1e6, skipped)
                }
                Ok(Some(_)) => skipped += 1,
                Ok(None) => return Wait::Ended,
                Err(_) => return Wait::Lost,
            }
        }
    }

    /// Waits for `action` (however old); an error if it does not come in time.
    async fn expect(&self, action: Action) -> Result<(), String> {
        let now = Instant::now();
        let since = now.checked_sub(Duration::from_secs(60)).unwrap_or(now);
        match self.wait_until(action, since, now + self.per_sample).await {
            Wait::Seen(..) => Ok(()),
            Wait::Lost => Err(format!(
                "{action:?} not seen within {} ms",
                self.per_sample.as_millis()
            )),
            Wait::Ended => Err("subscriber session ended".into()),
        }
    }
}

/// Nearest-rank percentiles of `samples` (microseconds).
/// Times `k` sequential `GET /metrics` on `addr` (one connection each).
async fn scrape(addr: SocketAddr, k: u64) -> ScenarioResult {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut samples = Vec::with_capacity(k as usize);
    let mut notes = Vec::new();
    let mut body_bytes = 0;
    let start = Instant::now();
    for _ in 0..k {
        let t0 = Instant::now();
        let got = async {
            let mut s = tokio::net::TcpStream::connect(addr).await?;
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: mbbench\r\nConnection: close\r\n\r\n")
                .await?;
            let mut raw = Vec::new();
            s.read_to_end(&mut raw).await?;
            Ok::<_, std::io::Error>(raw)
        }
        .await;
        match got {
            Ok(raw) if raw.starts_with(b"HTTP/1.1 200") => {
                samples.push(t0.elapsed().as_secs_f64() * 1e6);
                body_bytes = raw.len();
            }
            Ok(raw) => {
                notes.push(format!(
                    "unexpected answer: {}",
                    String::from_utf8_lossy(&raw[..raw.len().min(80)])
                ));
                break;
            }
            Err(e) => {
                notes.push(format!("GET /metrics on {addr}: {e}"));
                break;
            }
        }
    }
    notes.push(format!("response size {body_bytes} bytes"));
    ScenarioResult {
        name: "scrape",
        routes: k,
        receivers: 0,
        completed: samples.len() as u64 == k,
        elapsed_s: start.elapsed().as_secs_f64(),
        expected: k,
        received: samples.len() as u64,
        latency: Some(percentiles(&mut samples)),
        notes,
        ..Default::default()
    }
}

fn percentiles(samples: &mut [f64]) -> Latency {
    if samples.is_empty() {
        return Latency::default();
    }
    samples.sort_by(f64::total_cmp);
    let n = samples.len();
    let at = |q: f64| samples[((q * n as f64).ceil() as usize).clamp(1, n) - 1];
    Latency {
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        max: samples[n - 1],
        mean: samples.iter().sum::<f64>() / n as f64,
        samples: n as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut s: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let l = percentiles(&mut s);
        assert_eq!((l.p50, l.p90, l.p99, l.max), (50.0, 90.0, 99.0, 100.0));
        assert_eq!(percentiles(&mut []).samples, 0);
    }
}
