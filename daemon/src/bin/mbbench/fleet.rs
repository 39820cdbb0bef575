//! `mbbench --scenario fleet`: H hypervisor-like sessions against one server,
//! in phases connect, converge, churn and reconnect storm, with exact
//! per-session accounting ([`crate::ledger`]) and the server's CPU and memory
//! per phase.
//!
//! Built to stay light at H = 10,000 on a 2-core machine: one thread (a
//! current-thread runtime), one task per session, one shared read buffer
//! (a session keeps only the bytes of a frame cut by a read), no allocation
//! per route, and the accounting in flat bit vectors. Every session behaves
//! like a real MetalBond client (PROTOCOL.md section 3): HELLO, a KEEPALIVE
//! at once and then every negotiated interval, SUBSCRIBEs and announcements
//! only once established, everything again on each new connection, and a
//! reconnect (after about `--reconnect-delay-ms`) when the server ends the
//! session. Each session counts keepalive timeouts (no answer for 2.5 x the
//! interval) and measures how long each KEEPALIVE took to be echoed.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};
use metalbondd::wire::{
    codec::{decode_payload, frame_len_at},
    encode_message, encode_update, Action, Extensions, Message, MessageType, Vni,
};
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore};

use crate::ledger::{counter_set, Events, Gap, Ledger};
use crate::procfs::{self, Mem, ProcCpu};
use crate::report::JsonObject;
use crate::shape::{Dims, Rng, Shape};

/// The whole KEEPALIVE frame.
const KEEPALIVE: [u8; 4] = [1, 0, 0, 2];
/// The shared read buffer (plus room for a carried-over partial frame).
const READ_BUF: usize = 256 * 1024;
const MAX_FRAME: usize = 4 + 65_535;
/// Reads per wake-up before other sessions get their turn.
const READS_PER_WAKE: usize = 16;
/// Unanswered KEEPALIVEs remembered for the echo time (more means the
/// server stopped answering anyway).
const MAX_KA_IN_FLIGHT: usize = 64;
/// How often the controller looks at the counters.
const POLL: Duration = Duration::from_millis(5);
/// Random streams (see [`Rng::new`]) of the controller's choices.
const CHURN_STREAM: u64 = 1 << 40;
const STORM_STREAM: u64 = 2 << 40;
const RECONNECT_STREAM: u64 = 3 << 40;

/// Settings of a fleet run.
#[derive(Clone, Debug)]
pub struct FleetConfig {
    /// Server address.
    pub server: SocketAddr,
    /// Fleet sizes and seed.
    pub dims: Dims,
    /// Keepalive interval proposed in HELLO, seconds.
    pub keepalive: u32,
    /// Churn events per second.
    pub churn_rate: f64,
    /// Churn duration, seconds (0 = no churn phase).
    pub churn_secs: f64,
    /// Every session drops and reconnects within this window, seconds.
    pub storm_window: f64,
    /// Run the reconnect storm.
    pub storm: bool,
    /// Handshakes under way at once.
    pub connect_concurrency: usize,
    /// Mean delay before reconnecting after the server ended a session.
    pub reconnect_delay: Duration,
    /// Quiet period after convergence in which late duplicates or extras are still counted.
    pub settle: Duration,
    /// Limit for each phase.
    pub timeout: Duration,
    /// Give up a phase when nothing arrived for this long (None = never).
    pub stall: Option<Duration>,
    /// Server PID for /proc readings.
    pub server_pid: Option<u32>,
    /// Sessions offer the SYNC extension in HELLO, as metalbondd agents do
    /// (PROTOCOL.md section 8); otherwise they are plain MetalBond clients,
    /// as the Go reference's.
    pub offer_sync: bool,
}

counter_set! {
    /// Connection-level counters of one session (cumulative).
    #[derive(Clone, Copy, Debug, Default)]
    struct Counters {
        /// KEEPALIVEs sent / received after the handshake.
        ka_tx,
        ka_rx,
        /// Times the server left a KEEPALIVE unanswered for 2.5 x the interval.
        ka_timeouts,
        /// KEEPALIVEs received that answered nothing (a server must not originate them).
        ka_unsolicited,
        /// Sessions ended by the server (EOF, reset, error, invalid frame).
        resets,
        /// Sessions established.
        connects,
        /// Connect or handshake attempts that failed.
        connect_failures,
        /// Frames a server should not send (HELLO again, SUBSCRIBE, unknown types).
        unexpected_frames,
        /// SYNC frames received (sessions that offer SYNC get one per dump).
        syncs,
    }
}

/// The state of one session shared with the controller.
#[derive(Default)]
struct Conn {
    /// Bytes waiting to be written on the current connection.
    out: BytesMut,
    /// Established now.
    up: bool,
    /// Connections established so far.
    gen: u32,
    /// Subscribed and announced on the current connection.
    announced: bool,
    /// Drop the current connection at this time (reconnect storm).
    drop_at: Option<Instant>,
    /// Last KEEPALIVE received on the current connection.
    last_ka_rx: Option<Instant>,
    /// Negotiated keepalive interval of the current connection.
    interval: Duration,
    counters: Counters,
}

/// Everything the sessions and the controller share (one thread).
struct World {
    shape: Shape,
    ledger: Ledger,
    conns: Vec<Conn>,
    /// Subscriptions and announcements are in force.
    active: bool,
    /// The shared read buffer.
    buf: Vec<u8>,
    /// Largest KEEPALIVE echo time since the last phase start, microseconds.
    echo_max_us: u64,
    /// Echo times over 1 s since the last phase start.
    echo_over_1s: u64,
    /// Why sessions ended or failed to connect, with counts (a few kinds).
    reasons: Vec<(String, u64)>,
    /// Sessions offer SYNC: its frames are expected ([`FleetConfig::offer_sync`]).
    offer_sync: bool,
}

/// The message type of SYNC (PROTOCOL.md section 8).
const SYNC_TYPE: u8 = MessageType::Sync as u8;

impl World {
    fn note_reason(&mut self, reason: String) {
        if let Some(r) = self.reasons.iter_mut().find(|r| r.0 == reason) {
            r.1 += 1;
        } else if self.reasons.len() < 32 {
            self.reasons.push((reason, 1));
        }
    }

    fn counters(&self) -> Counters {
        let mut t = Counters::default();
        for c in &self.conns {
            t.add(&c.counters);
        }
        t
    }

    /// Queues SUBSCRIBE for every subscribed VNI, then an ADD for every live
    /// route of session `h` (what a client does on each new session).
    fn announce(&mut self, h: u32) {
        let World {
            shape,
            ledger,
            conns,
            ..
        } = self;
        let c = &mut conns[h as usize];
        for &k in shape.subs_of(h) {
            encode_message(&Message::Subscribe(Vni(Shape::wire_vni(k))), &mut c.out);
        }
        let r = shape.dims.routes;
        for g in h * r..(h + 1) * r {
            if ledger.is_live(g) {
                encode_update(Action::Add, &shape.route(g), &mut c.out);
            }
        }
        c.announced = true;
    }
}

/// Shared by the controller and every session task.
struct Ctx {
    world: RefCell<World>,
    wake: Vec<Notify>,
    cfg: FleetConfig,
    connect_slots: Semaphore,
    stop: Cell<bool>,
}

/// Outcome of one phase.
#[derive(Clone, Debug, Default)]
pub struct PhaseResult {
    /// connect, converge, churn or storm.
    pub name: &'static str,
    /// Reached its goal before the timeout.
    pub converged: bool,
    /// Seconds from the start of the phase to its goal (or to giving up).
    pub wall_s: f64,
    /// Churn: seconds from the last event to convergence.
    pub tail_s: Option<f64>,
    /// Churn events sent.
    pub churn_events: u64,
    /// Deliveries and incidents during the phase.
    pub events: Events,
    /// Missing and stale at the end, recomputed from the bits.
    pub gap: Gap,
    /// Sessions with something missing or stale at the end.
    pub sessions_off: u64,
    /// Sessions not established at the end.
    pub sessions_down: u64,
    /// Routes the sessions are expected to hold at the end (summed).
    pub expected_held: u64,
    /// Keepalive timeouts seen by the sessions during the phase.
    pub ka_timeouts: u64,
    /// Sessions ended by the server during the phase.
    pub resets: u64,
    /// Sessions established during the phase.
    pub connects: u64,
    /// Failed connect or handshake attempts during the phase.
    pub connect_failures: u64,
    /// KEEPALIVEs the server sent unasked.
    pub ka_unsolicited: u64,
    /// Other frames a server must not send.
    pub unexpected_frames: u64,
    /// SYNC frames received (only when the sessions offer SYNC).
    pub syncs: u64,
    /// Largest KEEPALIVE echo time, milliseconds.
    pub echo_max_ms: f64,
    /// KEEPALIVE echoes slower than 1 s.
    pub echo_over_1s: u64,
    /// Server CPU during the phase (until its goal).
    pub server_cpu: Option<ProcCpu>,
    /// Server memory at the end of the phase.
    pub mem: Option<Mem>,
    /// mbbench CPU seconds during the phase (until its goal).
    pub bench_cpu_s: f64,
    /// Incidents worth reading.
    pub notes: Vec<String>,
}

impl PhaseResult {
    /// True if the phase reached its goal with exact state and no incident
    /// that breaks the protocol's semantics.
    pub fn ok(&self) -> bool {
        self.converged
            && self.gap == Gap::default()
            && self.events.extra == 0
            && self.events.duplicates() == 0
    }

    /// The human report (a few lines).
    pub fn human(&self) -> String {
        let mut s = String::new();
        let status = if self.ok() { "" } else { "  [NOT EXACT]" };
        let goal = if self.name == "connect" {
            "all sessions established"
        } else {
            "converged"
        };
        let _ = write!(
            s,
            "fleet {:<9} {} in {:.3} s",
            self.name,
            if self.converged { goal } else { "GAVE UP" },
            self.wall_s
        );
        if self.churn_events > 0 {
            let _ = write!(s, " ({} events", self.churn_events);
            if let Some(t) = self.tail_s {
                let _ = write!(s, ", converged {t:.3} s after the last");
            }
            s.push(')');
        }
        let _ = writeln!(s, "{status}");
        let e = &self.events;
        let _ = writeln!(
            s,
            "          deliveries {} ADD + {} REMOVE; missing {}, extra {}, duplicate {}, stale {}; own after reconnect {} ({} sessions off, {} down; {} routes held as expected)",
            e.adds, e.removes, self.gap.missing, e.extra, e.duplicates(), self.gap.stale, e.own,
            self.sessions_off, self.sessions_down, self.expected_held
        );
        let _ = writeln!(
            s,
            "          keepalive timeouts {}, echo max {:.1} ms ({} over 1 s), unsolicited {}; resets by server {}, connects {}, connect failures {}",
            self.ka_timeouts, self.echo_max_ms, self.echo_over_1s, self.ka_unsolicited,
            self.resets, self.connects, self.connect_failures
        );
        let _ = write!(s, "          CPU: mbbench {:.2} s", self.bench_cpu_s);
        if let Some(c) = self.server_cpu {
            let _ = write!(s, ", server {c}");
        }
        if let Some(m) = &self.mem {
            let _ = write!(
                s,
                "; server RSS {:.1} MiB (peak {:.1} MiB)",
                m.rss_kib as f64 / 1024.0,
                m.hwm_kib as f64 / 1024.0
            );
        }
        s.push('\n');
        for n in &self.notes {
            let _ = writeln!(s, "          note: {n}");
        }
        s
    }

    /// One JSON object (a single line).
    pub fn json(&self, cfg: &FleetConfig, server: &str, label: &str) -> String {
        let mut o = JsonObject::default();
        o.str("scenario", &format!("fleet-{}", self.name));
        o.str("server", server);
        if !label.is_empty() {
            o.str("label", label);
        }
        let d = &cfg.dims;
        o.num("hypervisors", d.sessions.into());
        o.num("vnis", d.vnis.into());
        o.num("subs_per_session", d.subs.into());
        o.num("routes_per_session", d.routes.into());
        o.num("zipf_s", d.zipf_s);
        o.num("seed", d.seed as f64);
        o.raw("offer_sync", if cfg.offer_sync { "true" } else { "false" });
        o.raw("completed", if self.converged { "true" } else { "false" });
        o.raw("exact", if self.ok() { "true" } else { "false" });
        o.num("elapsed_s", self.wall_s);
        if let Some(t) = self.tail_s {
            o.num("tail_s", t);
        }
        o.num("churn_events", self.churn_events as f64);
        o.num("adds", self.events.adds as f64);
        o.num("removes", self.events.removes as f64);
        o.num("missing", self.gap.missing as f64);
        o.num("extra", self.events.extra as f64);
        o.num("duplicates", self.events.duplicates() as f64);
        o.num("stale", self.gap.stale as f64);
        o.num("own_after_reconnect", self.events.own as f64);
        o.num("sessions_off", self.sessions_off as f64);
        o.num("sessions_down", self.sessions_down as f64);
        o.num("expected_held", self.expected_held as f64);
        o.num("keepalive_timeouts", self.ka_timeouts as f64);
        o.num("keepalive_echo_max_ms", self.echo_max_ms);
        o.num("keepalive_echo_over_1s", self.echo_over_1s as f64);
        o.num("keepalive_unsolicited", self.ka_unsolicited as f64);
        o.num("unexpected_frames", self.unexpected_frames as f64);
        o.num("syncs", self.syncs as f64);
        o.num("resets", self.resets as f64);
        o.num("connects", self.connects as f64);
        o.num("connect_failures", self.connect_failures as f64);
        o.num("client_cpu_s", self.bench_cpu_s);
        o.server_cpu(self.server_cpu);
        if let Some(m) = &self.mem {
            o.num("server_rss_after_kib", m.rss_kib as f64);
            o.num("server_hwm_after_kib", m.hwm_kib as f64);
        }
        o.strings("notes", &self.notes);
        o.finish()
    }
}

/// Raises this process's open-file limit to what `sessions` connections
/// need (the hard limit too, if we may); an error says what is missing.
pub fn raise_fd_limit(sessions: u32) -> Result<(), String> {
    let need = u64::from(sessions) + 256;
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return Err(format!("getrlimit: {}", std::io::Error::last_os_error()));
    }
    if rl.rlim_cur >= need {
        return Ok(());
    }
    let want = libc::rlimit {
        rlim_cur: need.max(rl.rlim_cur),
        rlim_max: need.max(rl.rlim_max),
    };
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
        return Ok(());
    }
    let soft = libc::rlimit {
        rlim_cur: rl.rlim_max,
        rlim_max: rl.rlim_max,
    };
    // SAFETY: as above.
    if rl.rlim_max >= need && unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &soft) } == 0 {
        return Ok(());
    }
    Err(format!(
        "{sessions} sessions need {need} open files, the limit is {} (hard {}); raise it with `ulimit -n {need}`",
        rl.rlim_cur, rl.rlim_max
    ))
}

/// Runs the fleet phases; `report` gets each phase's result as it ends.
/// Returns every phase's result.
pub async fn run(cfg: FleetConfig, report: &dyn Fn(&PhaseResult)) -> Vec<PhaseResult> {
    let shape = Shape::new(cfg.dims);
    let h = cfg.dims.sessions;
    let ledger = Ledger::new(&shape);
    let conns = (0..h).map(|_| Conn::default()).collect();
    let ctx = Rc::new(Ctx {
        world: RefCell::new(World {
            shape,
            ledger,
            conns,
            active: false,
            buf: vec![0; READ_BUF + MAX_FRAME],
            echo_max_us: 0,
            echo_over_1s: 0,
            offer_sync: cfg.offer_sync,
            reasons: Vec::new(),
        }),
        wake: (0..h).map(|_| Notify::new()).collect(),
        connect_slots: Semaphore::new(cfg.connect_concurrency.max(1)),
        cfg,
        stop: Cell::new(false),
    });
    let mut results = Vec::new();
    let mut emit = |r: PhaseResult| {
        report(&r);
        results.push(r);
    };

    // connect
    let snap = Snap::take(&ctx);
    for s in 0..h {
        tokio::task::spawn_local(session(s, ctx.clone()));
    }
    let (done, wall) = wait_until(&ctx, &snap, |w| w.conns.iter().all(|c| c.up)).await;
    let r = finish(&ctx, "connect", &snap, done, wall);
    let connected = r.converged;
    emit(r);

    // converge
    if connected {
        let snap = Snap::take(&ctx);
        {
            let mut w = ctx.world.borrow_mut();
            let w = &mut *w;
            w.active = true;
            w.ledger.activate(&w.shape);
        }
        for n in &ctx.wake {
            n.notify_one();
        }
        let (done, wall) = wait_converged(&ctx, &snap, None).await;
        settle(&ctx, done.is_some()).await;
        let r = finish(&ctx, "converge", &snap, done, wall);
        let ok = r.converged;
        emit(r);

        if ok && ctx.cfg.churn_secs > 0.0 && ctx.cfg.churn_rate > 0.0 {
            let r = churn(&ctx).await;
            emit(r);
        }
        if ok && ctx.cfg.storm {
            let r = storm(&ctx).await;
            emit(r);
        }
    }
    ctx.stop.set(true);
    for n in &ctx.wake {
        n.notify_one();
    }
    results
}

/// Readings at the start of a phase.
struct Snap {
    t0: Instant,
    bench_cpu: f64,
    server_cpu: Option<ProcCpu>,
    events: Events,
    counters: Counters,
    gens: Vec<u32>,
}

impl Snap {
    fn take(ctx: &Ctx) -> Snap {
        let mut w = ctx.world.borrow_mut();
        w.echo_max_us = 0;
        w.echo_over_1s = 0;
        w.reasons.clear();
        Snap {
            t0: Instant::now(),
            bench_cpu: procfs::self_cpu_secs(),
            server_cpu: ctx.cfg.server_pid.and_then(procfs::cpu),
            events: w.ledger.total_events(),
            counters: w.counters(),
            gens: w.conns.iter().map(|c| c.gen).collect(),
        }
    }
}

/// CPU readings at the moment a phase reached its goal.
struct Cpu {
    bench: f64,
    server: Option<ProcCpu>,
}

/// Waits (bounded by the timeout and the stall limit) until `goal` holds;
/// returns (reached, CPU at that moment, wall seconds).
async fn wait_until(ctx: &Ctx, snap: &Snap, goal: impl Fn(&World) -> bool) -> (Option<Cpu>, f64) {
    let deadline = snap.t0 + ctx.cfg.timeout;
    let mut last_progress = Instant::now();
    let mut last_seen = (u64::MAX, u64::MAX);
    loop {
        let now = Instant::now();
        {
            let w = ctx.world.borrow();
            if goal(&w) {
                let cpu = Cpu {
                    bench: procfs::self_cpu_secs(),
                    server: ctx.cfg.server_pid.and_then(procfs::cpu),
                };
                return (Some(cpu), now.duration_since(snap.t0).as_secs_f64());
            }
            let c = w.counters();
            // Every session failed to connect and none ever did: the
            // address is wrong or nothing listens; no point waiting.
            if c.connects == 0 && c.connect_failures >= u64::from(w.shape.dims.sessions) {
                return (None, now.duration_since(snap.t0).as_secs_f64());
            }
            let e = w.ledger.total_events();
            let seen = (e.adds + e.removes, c.connects);
            if seen != last_seen {
                last_seen = seen;
                last_progress = now;
            }
        }
        let stalled = ctx
            .cfg
            .stall
            .is_some_and(|s| now.duration_since(last_progress) >= s);
        if now >= deadline || stalled {
            return (None, now.duration_since(snap.t0).as_secs_f64());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until every session is established, subscribed, holds exactly its
/// expected set and (if `gens` is given) has reconnected since.
async fn wait_converged(ctx: &Ctx, snap: &Snap, gens: Option<&[u32]>) -> (Option<Cpu>, f64) {
    wait_until(ctx, snap, |w| {
        w.ledger.total_gap() == Gap::default()
            && w.conns
                .iter()
                .enumerate()
                .all(|(i, c)| c.up && c.announced && gens.is_none_or(|g| c.gen > g[i]))
    })
    .await
}

/// After convergence, keep counting for the settle period: a late duplicate
/// or extra delivery still shows up in the phase's result.
async fn settle(ctx: &Ctx, converged: bool) {
    if converged && !ctx.cfg.settle.is_zero() {
        tokio::time::sleep(ctx.cfg.settle).await;
    }
}

/// The phase's result, with exact missing/stale recomputed from the bits.
fn finish(ctx: &Ctx, name: &'static str, snap: &Snap, done: Option<Cpu>, wall: f64) -> PhaseResult {
    let w = ctx.world.borrow();
    let now_cpu = || Cpu {
        bench: procfs::self_cpu_secs(),
        server: ctx.cfg.server_pid.and_then(procfs::cpu),
    };
    let converged = done.is_some();
    let cpu = done.unwrap_or_else(now_cpu);
    let c = w.counters().since(&snap.counters);
    let mut r = PhaseResult {
        name,
        converged,
        wall_s: wall,
        events: w.ledger.total_events().since(&snap.events),
        ka_timeouts: c.ka_timeouts,
        resets: c.resets,
        connects: c.connects,
        connect_failures: c.connect_failures,
        ka_unsolicited: c.ka_unsolicited,
        unexpected_frames: c.unexpected_frames,
        syncs: c.syncs,
        echo_max_ms: w.echo_max_us as f64 / 1000.0,
        echo_over_1s: w.echo_over_1s,
        bench_cpu_s: cpu.bench - snap.bench_cpu,
        server_cpu: match (cpu.server, snap.server_cpu) {
            (Some(now), Some(start)) => Some(now.since(start)),
            _ => None,
        },
        mem: ctx.cfg.server_pid.and_then(procfs::mem),
        ..Default::default()
    };
    if ctx.cfg.server_pid.is_some() && r.mem.is_none() {
        r.notes.push("the server process is gone".into());
    }
    let mut worst: Vec<(u32, Gap)> = Vec::new();
    let mut inconsistent = 0;
    for h in 0..w.shape.dims.sessions {
        let conn = &w.conns[h as usize];
        if !conn.up {
            r.sessions_down += 1;
        }
        if !w.active {
            continue;
        }
        let gap = w.ledger.verify(&w.shape, h);
        if gap != w.ledger.gap(h) {
            inconsistent += 1;
        }
        r.gap.missing += gap.missing;
        r.gap.stale += gap.stale;
        if gap != Gap::default() {
            r.sessions_off += 1;
            if worst.len() < 5 {
                worst.push((h, gap));
            }
        }
        r.expected_held += expected(&w, h);
    }
    if inconsistent > 0 {
        r.notes.push(format!(
            "mbbench bug: incremental counters differ from the bits for {inconsistent} sessions"
        ));
    }
    if !converged {
        r.notes.push(format!(
            "gave up after {:.1} s ({})",
            wall,
            if wall >= ctx.cfg.timeout.as_secs_f64() {
                "--timeout"
            } else {
                "--stall: nothing arrived"
            }
        ));
        for (h, g) in &worst {
            let c = &w.conns[*h as usize];
            r.notes.push(format!(
                "session {h}: {} missing, {} stale ({}, {} connections)",
                g.missing,
                g.stale,
                if c.up { "established" } else { "down" },
                c.gen
            ));
        }
    }
    let now = Instant::now();
    let silent = w
        .conns
        .iter()
        .filter(|c| {
            c.up && c
                .last_ka_rx
                .is_some_and(|t| now.duration_since(t) > c.interval * 5 / 2)
        })
        .count();
    if silent > 0 {
        r.notes.push(format!(
            "{silent} sessions have had no KEEPALIVE answer for over 2.5 x the interval"
        ));
    }
    let gens_moved = w
        .conns
        .iter()
        .zip(&snap.gens)
        .filter(|(c, &g)| c.gen != g)
        .count();
    if name != "connect" && name != "storm" && gens_moved > 0 {
        r.notes.push(format!("{gens_moved} sessions reconnected"));
    }
    let mut reasons = w.reasons.clone();
    reasons.sort_by_key(|r| std::cmp::Reverse(r.1));
    for (reason, n) in reasons.into_iter().take(5) {
        r.notes.push(format!("{n} x {reason}"));
    }
    r
}

/// Routes session `h` is expected to hold now.
fn expected(w: &World, h: u32) -> u64 {
    w.shape
        .subs_of(h)
        .iter()
        .map(|&k| {
            w.shape
                .routes_in(k)
                .iter()
                .filter(|&&g| w.shape.owner(g) != h && w.ledger.is_live(g))
                .count() as u64
        })
        .sum()
}

/// Churn: single-route withdraw/announce events by random sessions at
/// `--churn-rate` for `--churn-secs`, then wait for convergence.
async fn churn(ctx: &Ctx) -> PhaseResult {
    let cfg = &ctx.cfg;
    let snap = Snap::take(ctx);
    let mut rng = Rng::new(cfg.dims.seed, CHURN_STREAM);
    let n = (cfg.churn_rate * cfg.churn_secs).round().max(1.0) as u64;
    let step = Duration::from_secs_f64(1.0 / cfg.churn_rate);
    let h = u64::from(cfg.dims.sessions);
    let r = u64::from(cfg.dims.routes);
    // Withdrawn by this phase, waiting to be announced again.
    let mut withdrawn: Vec<u32> = Vec::new();
    for i in 0..n {
        tokio::time::sleep_until((snap.t0 + step.mul_f64(i as f64)).into()).await;
        let mut w = ctx.world.borrow_mut();
        let w = &mut *w;
        // Alternate: a random session withdraws one of its routes, then a
        // random withdrawn route comes back (a VM moving, in two events).
        let (g, live) = if i % 2 == 1 && !withdrawn.is_empty() {
            let at = rng.below(withdrawn.len() as u64) as usize;
            (withdrawn.swap_remove(at), true)
        } else {
            let g = (rng.below(h) * r + rng.below(r)) as u32;
            if w.ledger.is_live(g) {
                withdrawn.push(g);
                (g, false)
            } else {
                withdrawn.retain(|&x| x != g);
                (g, true)
            }
        };
        w.ledger.set_live(&w.shape, g, live);
        let owner = w.shape.owner(g);
        let c = &mut w.conns[owner as usize];
        // A session not yet announced on its connection sends the live set
        // when it does; the change is part of it.
        if c.up && c.announced {
            let action = if live { Action::Add } else { Action::Remove };
            encode_update(action, &w.shape.route(g), &mut c.out);
            ctx.wake[owner as usize].notify_one();
        }
    }
    let last = Instant::now();
    let (done, wall) = wait_converged(ctx, &snap, None).await;
    settle(ctx, done.is_some()).await;
    let converged_at = snap.t0 + Duration::from_secs_f64(wall);
    let mut res = finish(ctx, "churn", &snap, done, wall);
    res.churn_events = n;
    if res.converged {
        res.tail_s = Some(converged_at.saturating_duration_since(last).as_secs_f64());
    }
    res
}

/// Reconnect storm: every session drops its connection at a random moment
/// within `--storm-window` and reconnects at once (re-subscribes,
/// re-announces); wait until all have and the fleet has converged again.
async fn storm(ctx: &Ctx) -> PhaseResult {
    let snap = Snap::take(ctx);
    let mut rng = Rng::new(ctx.cfg.dims.seed, STORM_STREAM);
    let window = Duration::from_secs_f64(ctx.cfg.storm_window.max(0.0));
    {
        let mut w = ctx.world.borrow_mut();
        for c in w.conns.iter_mut() {
            c.drop_at = Some(snap.t0 + window.mul_f64(rng.unit()));
        }
    }
    for n in &ctx.wake {
        n.notify_one();
    }
    let (done, wall) = wait_converged(ctx, &snap, Some(&snap.gens)).await;
    settle(ctx, done.is_some()).await;
    finish(ctx, "storm", &snap, done, wall)
}

/// How a connection ended.
enum End {
    /// The run is over.
    Stop,
    /// We dropped it (reconnect storm): reconnect at once.
    Dropped,
    /// The server ended it, or it broke.
    Lost(String),
}

/// One hypervisor: connects, runs the connection, reconnects, until the end.
async fn session(h: u32, ctx: Rc<Ctx>) {
    let mut rng = Rng::new(ctx.cfg.dims.seed, RECONNECT_STREAM + u64::from(h));
    let mut delay: Option<Duration> = None;
    loop {
        if let Some(d) = delay.take() {
            tokio::time::sleep(d).await;
        }
        if ctx.stop.get() {
            return;
        }
        let attempt = {
            let _slot = ctx.connect_slots.acquire().await;
            tokio::time::timeout(
                ctx.cfg.timeout.min(Duration::from_secs(30)),
                handshake(&ctx.cfg),
            )
            .await
            .unwrap_or_else(|_| Err("handshake timed out".into()))
        };
        let jitter = ctx.cfg.reconnect_delay.mul_f64(0.5 + rng.unit());
        match attempt {
            Ok((stream, interval, pending)) => {
                match connection(h, &ctx, stream, interval, pending).await {
                    End::Stop => return,
                    End::Dropped => {}
                    End::Lost(reason) => {
                        let mut w = ctx.world.borrow_mut();
                        w.conns[h as usize].counters.resets += 1;
                        w.note_reason(format!("session ended: {reason}"));
                        delay = Some(jitter);
                    }
                }
            }
            Err(e) => {
                let mut w = ctx.world.borrow_mut();
                w.conns[h as usize].counters.connect_failures += 1;
                w.note_reason(format!("connect failed: {e}"));
                delay = Some(jitter);
            }
        }
    }
}

/// Connect, HELLO, HELLO, KEEPALIVE, KEEPALIVE. Returns the stream, the
/// negotiated interval and any bytes read past the handshake.
async fn handshake(cfg: &FleetConfig) -> Result<(TcpStream, Duration, Vec<u8>), String> {
    use tokio::io::AsyncWriteExt;
    let extensions = if cfg.offer_sync {
        Extensions::SYNC.0
    } else {
        0
    };
    let mut stream =
        crate::peer::connect_and_send_hello(cfg.server, cfg.keepalive, extensions).await?;
    let mut buf = Vec::with_capacity(64);
    let (t, payload) = read_frame(&mut stream, &mut buf).await?;
    let server_secs = match (t, decode_payload_of(t, &payload)) {
        (1, Some(Message::Hello(hello))) => hello.keepalive_secs,
        _ => return Err(format!("expected HELLO, got a frame of type {t}")),
    };
    let secs = match server_secs {
        0 => cfg.keepalive,
        s => s.min(cfg.keepalive),
    }
    .max(1);
    stream
        .write_all(&KEEPALIVE)
        .await
        .map_err(|e| format!("send KEEPALIVE: {e}"))?;
    let (t, _) = read_frame(&mut stream, &mut buf).await?;
    if t != 2 {
        return Err(format!("expected KEEPALIVE, got a frame of type {t}"));
    }
    Ok((stream, Duration::from_secs(secs.into()), buf))
}

fn decode_payload_of(t: u8, payload: &[u8]) -> Option<Message> {
    decode_payload(MessageType::from_u8(t)?, payload).ok()
}

/// Reads one whole frame of the handshake: (type, payload); bytes after it stay in `buf`.
async fn read_frame(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(u8, Vec<u8>), String> {
    use tokio::io::AsyncReadExt;
    loop {
        if buf.len() >= 4 {
            if buf[0] != 1 {
                return Err(format!("bad frame version {} during the handshake", buf[0]));
            }
            let len = usize::from(u16::from_be_bytes([buf[1], buf[2]]));
            if buf.len() >= 4 + len {
                let t = buf[3];
                let payload = buf[4..4 + len].to_vec();
                buf.drain(..4 + len);
                return Ok((t, payload));
            }
        }
        let mut chunk = [0u8; 512];
        match stream.read(&mut chunk).await {
            Ok(0) => return Err("closed by server during the handshake".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("read during the handshake: {e}")),
        }
    }
}

/// Keepalive bookkeeping of one connection.
struct Ka {
    interval: Duration,
    /// Send times of unanswered KEEPALIVEs (answers come in order).
    sent: VecDeque<Instant>,
    /// A timeout was counted for the current silence.
    timed_out: bool,
}

/// Runs one established connection until it ends.
async fn connection(
    h: u32,
    ctx: &Ctx,
    stream: TcpStream,
    interval: Duration,
    mut pending: Vec<u8>,
) -> End {
    let hu = h as usize;
    let start = Instant::now();
    {
        let mut w = ctx.world.borrow_mut();
        let w = &mut *w;
        w.ledger.reset(&w.shape, h);
        let c = &mut w.conns[hu];
        c.up = true;
        c.gen += 1;
        c.counters.connects += 1;
        c.announced = false;
        c.out.clear();
        c.last_ka_rx = Some(start);
        c.interval = interval;
        if w.active {
            w.announce(h);
        }
    }
    let mut ka = Ka {
        interval,
        sent: VecDeque::new(),
        timed_out: false,
    };
    let ka_timer = tokio::time::sleep_until((start + interval).into());
    tokio::pin!(ka_timer);
    let far = start + Duration::from_secs(86_400 * 365);
    let drop_timer = tokio::time::sleep_until(far.into());
    tokio::pin!(drop_timer);
    let end = loop {
        if let Err(e) = flush(ctx, hu, &stream) {
            break End::Lost(e);
        }
        let (want_write, drop_at) = {
            let w = ctx.world.borrow();
            (!w.conns[hu].out.is_empty(), w.conns[hu].drop_at)
        };
        if let Some(t) = drop_at {
            if drop_timer.deadline() != t.into() {
                drop_timer.as_mut().reset(t.into());
            }
        }
        tokio::select! {
            r = stream.readable() => {
                if let Err(e) = r {
                    break End::Lost(format!("read error: {e}"));
                }
                if let Err(e) = read(h, ctx, &stream, &mut pending, &mut ka) {
                    break End::Lost(e);
                }
            }
            r = stream.writable(), if want_write => {
                if let Err(e) = r {
                    break End::Lost(format!("write error: {e}"));
                }
            }
            () = ka_timer.as_mut() => {
                let now = Instant::now();
                let mut w = ctx.world.borrow_mut();
                let c = &mut w.conns[hu];
                c.out.put_slice(&KEEPALIVE);
                c.counters.ka_tx += 1;
                if ka.sent.len() == MAX_KA_IN_FLIGHT {
                    ka.sent.pop_front();
                }
                ka.sent.push_back(now);
                let silent = c.last_ka_rx.map_or(Duration::ZERO, |t| now.duration_since(t));
                if !ka.timed_out && silent > ka.interval * 5 / 2 {
                    c.counters.ka_timeouts += 1;
                    ka.timed_out = true;
                }
                let mut next = ka_timer.deadline() + ka.interval;
                if next <= now.into() {
                    next = (now + ka.interval).into();
                }
                ka_timer.as_mut().reset(next);
            }
            () = drop_timer.as_mut(), if drop_at.is_some() => break End::Dropped,
            () = ctx.wake[hu].notified() => {
                if ctx.stop.get() {
                    break End::Stop;
                }
                let mut w = ctx.world.borrow_mut();
                if w.active && !w.conns[hu].announced {
                    w.announce(h);
                }
            }
        }
    };
    let mut w = ctx.world.borrow_mut();
    let w = &mut *w;
    let c = &mut w.conns[hu];
    c.up = false;
    c.announced = false;
    c.out = BytesMut::new();
    c.last_ka_rx = None;
    if matches!(end, End::Dropped) {
        c.drop_at = None;
    }
    w.ledger.reset(&w.shape, h);
    end
}

/// Writes what is queued, as far as the socket takes it.
fn flush(ctx: &Ctx, hu: usize, stream: &TcpStream) -> Result<(), String> {
    let mut w = ctx.world.borrow_mut();
    let out = &mut w.conns[hu].out;
    while !out.is_empty() {
        match stream.try_write(out) {
            Ok(n) => out.advance(n),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => return Err(format!("write error: {e}")),
        }
    }
    if out.is_empty() && out.capacity() > 16 * 1024 {
        *out = BytesMut::new();
    }
    Ok(())
}

/// Reads what the socket has into the shared buffer and accounts for every
/// whole frame; a frame cut by the read is kept in `pending`.
fn read(
    h: u32,
    ctx: &Ctx,
    stream: &TcpStream,
    pending: &mut Vec<u8>,
    ka: &mut Ka,
) -> Result<(), String> {
    let mut w = ctx.world.borrow_mut();
    let World {
        shape,
        ledger,
        conns,
        buf,
        echo_max_us,
        echo_over_1s,
        offer_sync,
        ..
    } = &mut *w;
    let conn = &mut conns[h as usize];
    for _ in 0..READS_PER_WAKE {
        let plen = pending.len();
        buf[..plen].copy_from_slice(pending);
        let n = match stream.try_read(&mut buf[plen..plen + READ_BUF]) {
            Ok(0) => return Err("closed by server (EOF)".into()),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(format!("read error: {e}")),
        };
        let now = Instant::now();
        let data = &buf[..plen + n];
        let mut off = 0;
        while data.len() - off >= 4 {
            if data[off] != 1 {
                return Err(format!("invalid frame from server: version {}", data[off]));
            }
            let end = off + frame_len_at(data, off);
            if end > data.len() {
                break;
            }
            let payload = &data[off + 4..end];
            match data[off + 3] {
                2 => {
                    conn.counters.ka_rx += 1;
                    match ka.sent.pop_front() {
                        Some(t) => {
                            let us = now.duration_since(t).as_micros() as u64;
                            *echo_max_us = (*echo_max_us).max(us);
                            if us > 1_000_000 {
                                *echo_over_1s += 1;
                            }
                        }
                        None => conn.counters.ka_unsolicited += 1,
                    }
                    conn.last_ka_rx = Some(now);
                    ka.timed_out = false;
                }
                5 => match decode_payload(MessageType::Update, payload) {
                    Ok(Message::Update(u)) => ledger.on_update(shape, h, &u, conn.gen > 1),
                    Ok(_) => conn.counters.unexpected_frames += 1,
                    Err(e) => return Err(format!("invalid UPDATE from server: {e}")),
                },
                // What a session that offered SYNC gets after each dump.
                SYNC_TYPE if *offer_sync => conn.counters.syncs += 1,
                _ => conn.counters.unexpected_frames += 1,
            }
            off = end;
        }
        pending.clear();
        pending.extend_from_slice(&data[off..]);
    }
    Ok(())
}

/// The header line of a fleet run.
pub fn header(cfg: &FleetConfig, server: &str) -> String {
    let d = &cfg.dims;
    let shape = Shape::new(d.to_owned());
    format!(
        "mbbench fleet: server {server}, {} hypervisor sessions, {} VNIs (Zipf s = {}), {} subscriptions and {} routes per session, seed {}, keepalive {} s; {} deliveries for a full converge; churn {} events/s for {} s; storm window {} s{}{}",
        d.sessions,
        d.vnis,
        d.zipf_s,
        d.subs,
        d.routes,
        d.seed,
        cfg.keepalive,
        shape.full_deliveries(),
        cfg.churn_rate,
        cfg.churn_secs,
        if cfg.storm { cfg.storm_window.to_string() } else { "(no storm)".into() },
        match cfg.server_pid {
            Some(p) => format!(", server pid {p}"),
            None => String::new(),
        },
        if cfg.offer_sync {
            "; sessions offer SYNC"
        } else {
            ""
        }
    )
}
