//! One task per TCP session: the route server's configuration of the
//! shared session driver ([`crate::link`]).
//!
//! The driver reads, decodes, runs the session and writes; this role
//! forwards table operations to the table task in one batch per read
//! (never waiting for the table), and queues the routes the session should
//! hear, read from its mailbox at its own pace, paced for Go peers. It
//! times dump and update deliveries and KEEPALIVE echoes.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::delivery::{Delivery, DeliveryTimers};
use super::metrics::{Metrics, PolicyCounters};
use super::registry::{Registry, SessionInfo};
use crate::link::outbound::Outbound;
use crate::link::{Link, LinkRole, LinkSettings, SessionEnd};
use crate::policy::{Class, Policy, Reason, SessionPolicy, Verdict};
use crate::session::{self, Event, Role, Session, State};
use crate::table::log::{CauseTime, Mail, Mailbox};
use crate::table::SessionId;
use crate::table_task::{Command, Op, Query, TableHandle};
use crate::wire::{Action, Extensions, Frame, Message, Route, Vni};

/// Re-checks of more routes than this (a policy reload) run on a blocking
/// thread: sorting and checking 1M routes must not hold an async worker
/// (and the other sessions on it).
const INLINE_RECHECK_ROUTES: usize = 4096;
/// A re-check's withdrawals go to the table in commands of at most this
/// many operations, so other sessions' batches are applied between them
/// (the fan-out is not held up by 1M withdrawals in one command).
const RECHECK_OPS_PER_COMMAND: usize = 1024;
/// Stop pulling from the log while this much is queued for the socket.
const OUTBOUND_HIGH_WATER: usize = 256 * 1024;
/// Operations read but not yet taken by the table task above which the
/// session stops reading (TCP then pushes back on the peer). Below it,
/// reading (and answering KEEPALIVEs) goes on while the table is busy.
const MAX_WAITING_OPS: usize = 4096;
/// KEEPALIVE echoes timed at once (a peer that sends many without reading
/// keeps a bounded list).
const MAX_ECHO_TIMERS: usize = 16;

/// Settings every session shares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionSettings {
    /// Configured keepalive interval in seconds (0 means 5).
    pub keepalive_secs: u32,
    /// Close a session whose writes make no progress for this long.
    pub write_timeout: Duration,
    /// Close a session that falls this many bytes behind the update log.
    pub max_lag_bytes: u64,
    /// Keep the estimate of bytes a peer has not read under this (0: no pacing).
    pub pace_limit: usize,
    /// Keep an ended session's routes this long before withdrawing them
    /// (0: at once, PROTOCOL.md section 4); a reconnecting successor that
    /// re-announces them in time takes them over silently (ADR 0011).
    pub withdraw_delay: Duration,
    /// Peer policy (docs/POLICY.md); `None`: everything allowed, as in the
    /// reference implementation, at the cost of one branch per message.
    pub policy: Option<Arc<crate::policy::Policy>>,
}

/// What every session task shares with the server.
#[derive(Clone)]
pub struct SessionContext {
    /// The table task.
    pub table: TableHandle,
    /// Session settings.
    pub settings: SessionSettings,
    /// Server counters.
    pub metrics: Arc<Metrics>,
    /// Becomes true when the server shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// Live sessions.
    pub registry: Arc<Registry>,
    /// The settings a reload changes; a session takes the policy from it
    /// (a changed policy is re-applied to the live session, ADR 0028).
    pub live: watch::Receiver<SessionSettings>,
}

/// The class of the session `info` (with the TLS client certificate's
/// `identities`) under `policy`: the one place a session's class is chosen,
/// at accept and at every reload.
fn class_of(policy: &Policy, info: &SessionInfo, identities: &[String]) -> Arc<Class> {
    policy.class_for_peer(info.remote.ip(), identities).clone()
}

/// Runs one accepted session to its end. Log lines carry the peer address
/// through the caller's span.
pub async fn run(
    stream: TcpStream,
    tls: Option<(rustls::Connection, Vec<String>)>,
    info: Arc<SessionInfo>,
    ctx: SessionContext,
    slot: super::SessionSlot,
) {
    let SessionContext {
        table,
        settings,
        metrics,
        shutdown,
        registry,
        live,
    } = ctx;
    let id = info.id;
    // The class is chosen at accept by the source address and the TLS
    // client certificate's identities, and again at every reload that
    // changes the policy (`Connection::policy_changed`).
    let (tls, identities) = tls.map_or((None, Vec::new()), |(c, ids)| (Some(c), ids));
    let policy = settings.policy.as_ref().map(|p| {
        let class = class_of(p, &info, &identities);
        info.set_policy_class(&class.name);
        debug!(class = %class.name, "policy class");
        Checker {
            counters: metrics.policy_counters(&class.name),
            policy: SessionPolicy::new(class, info.remote.ip()),
        }
    });
    let link = Link::new(
        stream,
        Session::new(
            session::Config {
                role: Role::Server,
                keepalive_secs: settings.keepalive_secs,
                extensions: Extensions::SUPPORTED,
            },
            Instant::now().into_std(),
        ),
        LinkSettings {
            write_timeout: Some(settings.write_timeout),
            pace_limit: settings.pace_limit,
        },
    );
    let mut link = match tls {
        Some(tls) => link.with_tls(tls),
        None => link,
    };
    let mut conn = Connection {
        id,
        info,
        mailbox: Mailbox::new(settings.max_lag_bytes),
        table,
        established: false,
        sync: false,
        ops: Vec::new(),
        waiting: VecDeque::new(),
        waiting_ops: 0,
        echoes: VecDeque::new(),
        timers: DeliveryTimers::default(),
        metrics,
        settings,
        registry: registry.clone(),
        policy,
        close: None,
        live,
        live_closed: false,
        shutdown,
        recheck: None,
        identities,
    };
    let started = Instant::now();
    let ended = link.run(&mut conn).await;
    // The table stops delivering to it at once, before it hears of the end.
    conn.mailbox.close();
    let duration = format!("{:.1?}", started.elapsed());
    if !matches!(ended, SessionEnd::Shutdown) {
        // Operations read before the end still count, in order; then
        // withdraw everything it announced.
        for command in conn.waiting.drain(..) {
            let _ = conn.table.commands.send(command).await;
        }
        // If the table is gone we are shutting down and nobody is left to tell.
        let _ = conn
            .table
            .commands
            .send(Command::Disconnect {
                withdraw_delay: conn.settings.withdraw_delay,
                session: id,
                at: std::time::Instant::now(),
            })
            .await;
    }
    // The socket closes only once the table has the withdrawal queued:
    // whoever saw this session close (the peer, an operator who reset it)
    // and then asks the table anything is answered after the withdrawal.
    drop(link);
    let label = ended.label();
    let reason = ended.describe(Role::Server);
    conn.metrics.session_closed(label);
    conn.metrics.sessions_active.fetch_sub(1, Relaxed);
    // Free the session slot before saying so: once the log says a session
    // closed, a new connection can take its place.
    drop(slot);
    registry.remove(id, reason.clone());
    let updates_in = conn.info.updates_in.load(Relaxed);
    if ended.class().is_fault() {
        warn!(%reason, label, %duration, updates_in, "session closed");
    } else {
        info!(%reason, %duration, updates_in, "session closed");
    }
}

/// The route server's side of one session (the driver holds the socket,
/// the session and the outbound queue).
struct Connection {
    id: SessionId,
    /// Counters and state the control API sees.
    info: Arc<SessionInfo>,
    /// Where the table task puts this session's dumps and updates.
    mailbox: Arc<Mailbox>,
    table: TableHandle,
    established: bool,
    /// The session negotiated SYNC: every dump is followed by a SYNC frame.
    sync: bool,
    /// Table operations decoded from the current read.
    ops: Vec<Op>,
    /// Commands the table channel had no room for yet, in order.
    waiting: VecDeque<Command>,
    /// Operations in `waiting`; reading pauses above [`MAX_WAITING_OPS`].
    waiting_ops: usize,
    /// KEEPALIVE echoes queued: (end of the echo in the control stream,
    /// when the KEEPALIVE was read), for the echo latency histogram.
    echoes: VecDeque<(u64, std::time::Instant)>,
    /// Dumps and updates queued whose delivery is being timed.
    timers: DeliveryTimers,
    metrics: Arc<Metrics>,
    settings: SessionSettings,
    /// Told when the handshake completes (peer watchers see it).
    registry: Arc<Registry>,
    /// The peer policy's checks; `None` without a policy (one branch per
    /// message, nothing else).
    policy: Option<Checker>,
    /// The policy closes the session at the next turn.
    close: Option<SessionEnd>,
    /// Where reloaded settings arrive (only the policy is re-applied).
    live: watch::Receiver<SessionSettings>,
    /// The server dropped the settings channel: stop watching it.
    live_closed: bool,
    /// Becomes true when the server shuts down.
    shutdown: watch::Receiver<bool>,
    /// A reload moved the session into a class with rules: its routes and
    /// subscriptions were asked of the table; reading pauses until they are
    /// re-checked, so nothing the peer sends meanwhile races the check.
    recheck: Option<Pending>,
    /// The TLS client certificate's identities (none for plaintext): with
    /// the address, what selects the class, at accept and at each reload.
    identities: Vec<String>,
}

/// A re-check under way.
enum Pending {
    /// Waiting for the table's list of the session's routes.
    Listing {
        reply: oneshot::Receiver<(Vec<Route>, Vec<Vni>)>,
        class: Arc<Class>,
        counters: Arc<PolicyCounters>,
    },
    /// A large list being checked on a blocking thread.
    Checking {
        job: tokio::task::JoinHandle<Checked>,
        class: Arc<Class>,
        counters: Arc<PolicyCounters>,
    },
}

/// A finished check: the session's checker under its new class, what to
/// withdraw and drop, and how many routes it held before.
type Checked = (SessionPolicy, crate::policy::Recheck, usize);

/// What woke a session waiting in [`LinkRole::wait`].
enum Woke {
    /// Nothing more to do here (the driver looks at the mailbox, reads).
    Turn,
    /// The table listed the session's routes (None: it is gone, shutting
    /// down).
    Listed(Option<(Vec<Route>, Vec<Vni>)>),
    /// A blocking check finished (Err: it panicked).
    Checked(Result<Checked, tokio::task::JoinError>),
}

/// A session's policy checker and its class's refusal counters.
struct Checker {
    policy: SessionPolicy,
    counters: Arc<PolicyCounters>,
}

impl LinkRole for Connection {
    fn bytes_in(&mut self, n: usize) {
        self.metrics.bytes_in.fetch_add(n as u64, Relaxed);
        self.info.bytes_in.fetch_add(n as u64, Relaxed);
    }

    fn frame_in(&mut self, frame: &Frame) {
        Metrics::inc(&self.metrics.frames_in);
        self.info.messages_in.fetch_add(1, Relaxed);
        match frame {
            Frame::Message(Message::Update(_)) => {
                Metrics::inc(&self.metrics.updates_in);
                self.info.updates_in.fetch_add(1, Relaxed);
            }
            Frame::Unknown { .. } => Metrics::inc(&self.metrics.unknown_frames),
            Frame::Message(_) => {}
        }
    }

    fn state(&mut self, state: State) {
        self.info.set_state(state);
    }

    fn yield_after_full_read(&self) -> bool {
        // Refused routes never wait for the table (see the trait).
        self.policy.is_some()
    }

    fn message_out(&mut self, msg: &Message, control_end: u64, read_at: std::time::Instant) {
        self.info.messages_out.fetch_add(1, Relaxed);
        if matches!(msg, Message::Keepalive) {
            if self.echoes.len() >= MAX_ECHO_TIMERS {
                // Keep the oldest start: the latency never looks better.
                self.echoes.pop_back();
            }
            self.echoes.push_back((control_end, read_at));
        }
    }

    fn event(&mut self, event: Event, _out: &mut Outbound) {
        match event {
            Event::Established { keepalive } => {
                // A metalbondd peer (extensions negotiated, which come
                // first) is not paced: worth seeing when a dump looks slow.
                let extensions = Extensions(self.info.extensions.load(Relaxed));
                if extensions.is_empty() {
                    info!(keepalive_secs = keepalive.as_secs(), "session established");
                } else {
                    info!(
                        keepalive_secs = keepalive.as_secs(),
                        extensions = %extensions.names().join(","),
                        "session established"
                    );
                }
                Metrics::inc(&self.metrics.sessions_established);
                self.established = true;
                self.info
                    .keepalive_secs
                    .store(keepalive.as_secs() as u32, Relaxed);
                // The state is already ESTABLISHED: a watcher sees the
                // session as it now is.
                self.registry.established(self.info.clone());
            }
            Event::Negotiated(extensions) => {
                debug!(extensions = extensions.0, "extensions negotiated");
                self.sync = extensions.contains(Extensions::SYNC);
                self.info.extensions.store(extensions.0, Relaxed);
            }
            Event::Subscribe(vni) => {
                if let Some(c) = &mut self.policy {
                    if let Err(reason) = c.policy.vni_allowed(vni) {
                        refuse(c, &self.info, reason, || format!("vni {vni}"));
                        return;
                    }
                }
                self.ops.push(Op::Subscribe {
                    vni,
                    sync: self.sync,
                })
            }
            Event::Unsubscribe(vni) => {
                // Of a refused VNI: nothing to undo, and no second refusal.
                if let Some(c) = &self.policy {
                    if c.policy.vni_allowed(vni).is_err() {
                        return;
                    }
                }
                self.ops.push(Op::Unsubscribe(vni))
            }
            // A client never sends SYNC (the session drops it).
            Event::Sync(_) => {}
            Event::Update(u) => {
                if let Some(c) = &mut self.policy {
                    if self.close.is_some() {
                        return;
                    }
                    match c.policy.route(&u.route, u.action) {
                        Verdict::Forward => {}
                        Verdict::ForwardAndWarn => {
                            let limit = c.policy.class().limit.map_or(0, |l| l.max);
                            warn!(
                                class = %c.policy.class().name,
                                routes = c.policy.held(),
                                max_routes = limit,
                                "session near its policy's max_routes"
                            );
                        }
                        Verdict::ForwardAndWarnVni(vni) => {
                            let limit = c.policy.class().vni_limit.map_or(0, |l| l.max);
                            warn!(
                                class = %c.policy.class().name,
                                %vni,
                                routes = c.policy.held_in(vni),
                                max_routes_per_vni = limit,
                                "session near its policy's max_routes_per_vni in a VNI"
                            );
                        }
                        Verdict::Ignore => return,
                        Verdict::Refuse(reason) => {
                            refuse(c, &self.info, reason, || u.route.to_string());
                            return;
                        }
                        Verdict::Close => {
                            refuse(c, &self.info, Reason::MaxRoutes, || u.route.to_string());
                            self.close = Some(SessionEnd::PolicyMaxRoutes {
                                class: c.policy.class().name.clone(),
                                max: c.policy.class().limit.map_or(0, |l| l.max),
                            });
                            return;
                        }
                        Verdict::CloseVni(vni) => {
                            refuse(c, &self.info, Reason::MaxRoutesPerVni, || {
                                u.route.to_string()
                            });
                            self.close = Some(SessionEnd::PolicyMaxRoutesPerVni {
                                class: c.policy.class().name.clone(),
                                max: c.policy.class().vni_limit.map_or(0, |l| l.max),
                                vni: vni.0,
                            });
                            return;
                        }
                    }
                }
                self.push_update(u)
            }
        }
    }

    /// Hands the table the operations of one read in one batch. Never
    /// waits: if the table channel is full the batch waits in `waiting`
    /// while keepalives go on being answered.
    fn read_done(&mut self, received: std::time::Instant) {
        self.flush_ops(received);
    }

    fn written(&mut self, n: usize, out: &Outbound, now: std::time::Instant) {
        self.metrics.bytes_out.fetch_add(n as u64, Relaxed);
        self.info.bytes_out.fetch_add(n as u64, Relaxed);
        self.complete_deliveries(out, now);
        self.complete_echoes(out, now);
    }

    fn prepare(&mut self, out: &mut Outbound) -> Result<bool, SessionEnd> {
        if let Some(end) = self.close.take() {
            return Err(end);
        }
        if self.established && out.len() < OUTBOUND_HIGH_WATER {
            self.pull_from_mailbox(out);
        }
        if let Some(lag) = self.mailbox.overflowed() {
            return Err(SessionEnd::Lagging(lag));
        }
        self.info
            .lag_bytes
            .store(self.mailbox.queued_bytes(), Relaxed);
        Ok(self.waiting_ops < MAX_WAITING_OPS && self.recheck.is_none())
    }

    fn turn_done(&mut self, out: &Outbound) {
        self.info.queue_bytes.store(out.len() as u64, Relaxed);
    }

    fn pacing_changed(&mut self, paced: bool) {
        self.info.paced.store(paced, Relaxed);
    }

    fn release_if_idle(&mut self) {
        self.mailbox.release_if_empty();
    }

    async fn wait(
        &mut self,
        _session: &mut Session,
        _out: &mut Outbound,
    ) -> Result<(), SessionEnd> {
        // What changes outside the session wakes it through its attention
        // signal (`SessionInfo::wake`); here, before waiting, is where it
        // looks. Each look is an atomic load.
        if self.shutdown.has_changed().unwrap_or(true) {
            return Err(SessionEnd::Shutdown);
        }
        if self.info.reset_requested() {
            return Err(SessionEnd::Reset);
        }
        if !self.live_closed && self.recheck.is_none() {
            match self.live.has_changed() {
                Ok(true) => {
                    self.policy_changed();
                    return Ok(());
                }
                Ok(false) => {}
                Err(_) => self.live_closed = true,
            }
        }
        // Only while commands wait for room in the table's channel.
        let commands = (!self.waiting.is_empty()).then(|| self.table.commands.clone());
        let woke = tokio::select! {
            permit = reserve(commands.as_ref()), if commands.is_some() => {
                match permit {
                    Ok(permit) => {
                        if let Some(command) = self.waiting.pop_front() {
                            self.waiting_ops -= command_ops(&command);
                            permit.send(command);
                        }
                    }
                    // The table is gone: shutting down.
                    Err(_) => {
                        self.waiting.clear();
                        self.waiting_ops = 0;
                    }
                }
                Woke::Turn
            }
            // Woken once per batch of mail (the table coalesces), or when
            // the mailbox overflowed. With a full queue, the wake-up is only
            // used to look at the overflow.
            _ = self.mailbox.notified(), if self.established => Woke::Turn,
            // A reset, a reload or the shutdown: looked at above, next turn.
            _ = self.info.attention() => Woke::Turn,
            woke = pending_done(self.recheck.as_mut()), if self.recheck.is_some() => woke,
        };
        match woke {
            Woke::Turn => {}
            Woke::Listed(answer) => {
                if let Some(Pending::Listing {
                    class, counters, ..
                }) = self.recheck.take()
                {
                    self.check_listed(class, counters, answer);
                }
            }
            Woke::Checked(done) => {
                if let Some(Pending::Checking {
                    class, counters, ..
                }) = self.recheck.take()
                {
                    let (policy, result, held_before) = done.unwrap_or_else(|e| {
                        // Nothing withdrawn; the class holds from now on.
                        warn!(error = %e, "policy re-check failed");
                        let policy = SessionPolicy::new(class, self.info.remote.ip());
                        (policy, crate::policy::Recheck::default(), 0)
                    });
                    self.apply_recheck(policy, counters, result, held_before);
                }
            }
        }
        Ok(())
    }
}

impl Connection {
    /// A reload changed the settings: re-match the session's class (same
    /// function as at accept). The same class: nothing happens (nothing on
    /// the wire). A class that refuses nothing: taken at once. Otherwise its
    /// routes and subscriptions are asked of the table, behind the
    /// operations already sent, and re-checked when the answer comes.
    fn policy_changed(&mut self) {
        let policy = self.live.borrow_and_update().policy.clone();
        let Some(policy) = policy else {
            if self.policy.take().is_some() {
                self.info.set_policy_class("");
                info!("policy removed by a reload: everything is allowed");
            }
            return;
        };
        let class = class_of(&policy, &self.info, &self.identities);
        if let Some(c) = &self.policy {
            if **c.policy.class() == *class {
                return;
            }
        }
        let counters = self.metrics.policy_counters(&class.name);
        if !class.restricts() {
            // Nothing it holds can be refused: no need to ask the table.
            info!(class = %class.name, "policy reload: new class refuses nothing");
            self.info.set_policy_class(&class.name);
            self.policy = Some(Checker {
                policy: SessionPolicy::new(class, self.info.remote.ip()),
                counters,
            });
            return;
        }
        let (reply, rx) = oneshot::channel();
        self.send_command(Command::Query(Query::SessionRoutes {
            session: self.id,
            reply,
        }));
        self.recheck = Some(Pending::Listing {
            reply: rx,
            class,
            counters,
        });
    }

    /// The table listed the session's routes: checks them under the new
    /// class, here for a few, on a blocking thread for many (reading stays
    /// paused until then).
    fn check_listed(
        &mut self,
        class: Arc<Class>,
        counters: Arc<PolicyCounters>,
        answer: Option<(Vec<Route>, Vec<Vni>)>,
    ) {
        let (routes, subscribed) = answer.unwrap_or_default();
        let ip = self.info.remote.ip();
        let mut policy = self
            .policy
            .take()
            .map_or_else(|| SessionPolicy::new(class.clone(), ip), |c| c.policy);
        let held_before = routes.len();
        if held_before <= INLINE_RECHECK_ROUTES {
            let result = policy.reclassify(class, routes, &subscribed);
            self.apply_recheck(policy, counters, result, held_before);
            return;
        }
        let for_job = class.clone();
        let job = tokio::task::spawn_blocking(move || {
            let result = policy.reclassify(for_job, routes, &subscribed);
            (policy, result, held_before)
        });
        self.recheck = Some(Pending::Checking {
            job,
            class,
            counters,
        });
    }

    /// Applies a re-check: the session's routes the new class refuses are
    /// withdrawn exactly as the peer's REMOVE would withdraw them, the
    /// subscriptions it no longer allows are dropped as an UNSUBSCRIBE
    /// would; each counts as a refusal, and one log line says what happened.
    fn apply_recheck(
        &mut self,
        policy: SessionPolicy,
        counters: Arc<PolicyCounters>,
        result: crate::policy::Recheck,
        held_before: usize,
    ) {
        let checker = Checker { policy, counters };
        self.info.set_policy_class(&checker.policy.class().name);
        let now = std::time::SystemTime::now();
        let mut by_reason = [0u64; Reason::ALL.len()];
        let received = std::time::Instant::now();
        for &(route, reason) in &result.withdraw {
            by_reason[reason as usize] += 1;
            self.ops.push(Op::Withdraw(route));
            if self.ops.len() >= RECHECK_OPS_PER_COMMAND {
                self.flush_ops(received);
            }
        }
        for &vni in &result.unsubscribe {
            by_reason[Reason::SubscribeVni as usize] += 1;
            self.ops.push(Op::Unsubscribe(vni));
        }
        for reason in Reason::ALL {
            let n = by_reason[reason as usize];
            if n > 0 {
                checker.counters.0[reason as usize].fetch_add(n, Relaxed);
                self.info.refused_many(reason, n, now);
            }
        }
        let class_name = checker.policy.class().name.clone();
        if result.withdraw.is_empty() && result.unsubscribe.is_empty() && !result.close {
            info!(class = %class_name, routes = held_before, "policy reload: session within its new class");
        } else {
            let reasons: Vec<String> = Reason::ALL
                .iter()
                .filter(|r| by_reason[**r as usize] > 0)
                .map(|r| format!("{}:{}", r.label(), by_reason[*r as usize]))
                .collect();
            let dropped: Vec<String> = result.unsubscribe.iter().map(|v| v.to_string()).collect();
            warn!(
                class = %class_name,
                routes = held_before,
                withdrawn = result.withdraw.len(),
                unsubscribed = %dropped.join(","),
                reasons = %reasons.join(","),
                close = result.close,
                "policy reload: the new class refuses some of what the session holds; withdrawn from every peer and dropped"
            );
        }
        if result.close {
            self.close = Some(SessionEnd::PolicyMaxRoutes {
                class: class_name,
                max: checker.policy.class().limit.map_or(0, |l| l.max),
            });
        }
        self.policy = Some(checker);
        self.flush_ops(received);
    }

    /// Queues an UPDATE the policy let through (or any, without a policy).
    #[inline]
    fn push_update(&mut self, u: crate::wire::Update) {
        self.ops.push(match u.action {
            Action::Add => Op::Announce(u.route),
            Action::Remove => Op::Withdraw(u.route),
        })
    }

    /// Observes the delivery times of what has been written completely.
    fn complete_deliveries(&mut self, out: &Outbound, now: std::time::Instant) {
        if self.timers.is_empty() {
            return;
        }
        let metrics = &self.metrics;
        self.timers
            .complete(out.data_written(), now, |kind, took| match kind {
                Delivery::Updates => metrics.propagation.observe(took.as_secs_f64()),
                Delivery::Dump => metrics.dump_duration.observe(took.as_secs_f64()),
            });
    }

    /// Observes the latency of every KEEPALIVE echo written completely.
    fn complete_echoes(&mut self, out: &Outbound, now: std::time::Instant) {
        let written = out.control_written();
        while let Some(&(end, read_at)) = self.echoes.front() {
            if end > written {
                break;
            }
            self.metrics
                .keepalive_echo
                .observe(now.saturating_duration_since(read_at).as_secs_f64());
            self.echoes.pop_front();
        }
        if self.echoes.is_empty() && self.echoes.capacity() > 4 {
            self.echoes = VecDeque::new();
        }
    }

    /// Sends the operations of the current read to the table, or queues
    /// them behind earlier ones the channel had no room for.
    fn flush_ops(&mut self, received: std::time::Instant) {
        if self.ops.is_empty() {
            return;
        }
        let command = Command::Ops {
            session: self.id,
            ops: std::mem::take(&mut self.ops),
            received,
            mailbox: self.mailbox.clone(),
        };
        self.send_command(command);
    }

    /// Sends a command to the table without waiting, behind any still
    /// waiting for room (the table sees a session's commands in order).
    fn send_command(&mut self, command: Command) {
        if !self.waiting.is_empty() {
            self.waiting_ops += command_ops(&command);
            self.waiting.push_back(command);
            return;
        }
        match self.table.commands.try_send(command) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(command)) => {
                self.waiting_ops += command_ops(&command);
                self.waiting.push_back(command);
            }
            // The table is gone: shutting down.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Queues the mail the table left for this session, up to the high
    /// water mark. Each item is a zero-copy slice (or a dump's buffers).
    fn pull_from_mailbox(&mut self, out: &mut Outbound) {
        let timers = &mut self.timers;
        let metrics = &self.metrics;
        // When the oldest cause of the updates queued now arrived.
        let mut oldest: Option<std::time::Instant> = None;
        let mut queued = 0u64;
        // The VNIs whose dumps are queued now, for one log line: a session
        // subscribes to its VNIs in one read, and a reconnect storm's line
        // per VNI was 3 % of its CPU.
        let mut subscribed = String::new();
        let mut dump_routes = 0usize;
        self.mailbox.take_while_counted(|mail, behind| {
            if out.len() >= OUTBOUND_HIGH_WATER {
                return Err(mail);
            }
            // Room for the rest at once (a no-op once it is there).
            out.reserve_data(behind + 1);
            match mail {
                Mail::Updates {
                    frames,
                    marks,
                    count,
                    since,
                } => {
                    out.push_data_marked(frames, marks);
                    queued += u64::from(count);
                    if let Some(t) = since.map(CauseTime::instant) {
                        oldest = Some(oldest.map_or(t, |o| o.min(t)));
                    }
                }
                Mail::Dump {
                    vni,
                    frames,
                    routes,
                    requested_at,
                } => {
                    // Updates queued before the dump are timed up to here.
                    if let Some(t) = oldest.take() {
                        timers.start(out.data_pushed(), t, Delivery::Updates);
                    }
                    if !subscribed.is_empty() {
                        subscribed.push(',');
                    }
                    let _ = write!(subscribed, "{vni}");
                    dump_routes += routes;
                    for buf in frames {
                        out.push_data(buf);
                    }
                    timers.start(out.data_pushed(), requested_at, Delivery::Dump);
                    Metrics::inc(&metrics.dumps);
                    metrics.dump_routes.fetch_add(routes as u64, Relaxed);
                    queued += routes as u64;
                }
            }
            Ok(())
        });
        if let Some(t) = oldest {
            timers.start(out.data_pushed(), t, Delivery::Updates);
        }
        if !subscribed.is_empty() {
            info!(vni = %subscribed, dump_routes, "subscribed");
        }
        if queued == 0 {
            return;
        }
        self.metrics.updates_out.fetch_add(queued, Relaxed);
        self.info.updates_out.fetch_add(queued, Relaxed);
        // A dump with no routes is delivered as soon as it is queued.
        if self.timers.any_due(out.data_written()) {
            self.complete_deliveries(out, std::time::Instant::now());
        }
        self.info.messages_out.fetch_add(queued, Relaxed);
    }
}

/// Counts a refusal (class metric, the session's API counters) and logs the
/// first one of each reason in this session; `what` names the refused item
/// for that one log line.
fn refuse(c: &mut Checker, info: &SessionInfo, reason: Reason, what: impl FnOnce() -> String) {
    c.counters.0[reason as usize].fetch_add(1, Relaxed);
    info.refused(reason, std::time::SystemTime::now());
    if c.policy.first_time(reason) {
        warn!(
            class = %c.policy.class().name,
            reason = %reason.label(),
            refused = %what(),
            "policy refused a {}; further refusals of this kind in this session are counted, not logged",
            reason.describe()
        );
    }
}

/// Operations in a command (for the bound on commands waiting for the table).
fn command_ops(command: &Command) -> usize {
    match command {
        Command::Ops { ops, .. } => ops.len(),
        _ => 1,
    }
}

/// The next step of a pending re-check (never ready without one).
async fn pending_done(pending: Option<&mut Pending>) -> Woke {
    match pending {
        Some(Pending::Listing { reply, .. }) => Woke::Listed(reply.await.ok()),
        Some(Pending::Checking { job, .. }) => Woke::Checked(job.await),
        None => std::future::pending().await,
    }
}

/// A permit of `commands`' channel (never ready without a channel).
async fn reserve(
    commands: Option<&mpsc::Sender<Command>>,
) -> Result<mpsc::Permit<'_, Command>, mpsc::error::SendError<()>> {
    match commands {
        Some(c) => c.reserve().await,
        None => std::future::pending().await,
    }
}
