//! Live sessions and their counters, for the control API.
//!
//! Each session task owns an [`Arc<SessionInfo>`] and updates its atomics as
//! it goes; the registry only maps ids to them and announces sessions coming
//! up and going down. Routing state is not here (it lives in the table task).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use tokio::sync::broadcast;

use crate::session::{Role, State};
use crate::table::SessionId;

/// Capacity of the peer event channel; a watcher further behind is told it lagged.
const EVENT_QUEUE: usize = 1024;

/// What the API can see of one session.
#[derive(Debug)]
pub struct SessionInfo {
    /// Session id.
    pub id: SessionId,
    /// Peer address.
    pub remote: SocketAddr,
    /// Our address.
    pub local: SocketAddr,
    /// Which side we are.
    pub role: Role,
    /// Wall-clock time of the connection.
    pub connected_at: SystemTime,
    /// Monotonic time of the connection (for uptime).
    pub started: Instant,
    state: AtomicU8,
    /// Negotiated keepalive interval (0 before the handshake).
    pub keepalive_secs: AtomicU32,
    /// Negotiated extensions (PROTOCOL.md section 8), the bits of
    /// [`crate::wire::Extensions`]: 0 with a reference peer and before the
    /// peer's HELLO.
    pub extensions: AtomicU64,
    /// Frames received.
    pub messages_in: AtomicU64,
    /// Frames queued for sending (control frames and updates).
    pub messages_out: AtomicU64,
    /// Bytes received.
    pub bytes_in: AtomicU64,
    /// Bytes written to the socket.
    pub bytes_out: AtomicU64,
    /// UPDATEs received.
    pub updates_in: AtomicU64,
    /// UPDATEs queued for the peer (dumps and live updates).
    pub updates_out: AtomicU64,
    /// Bytes waiting in the outbound queue.
    pub queue_bytes: AtomicU64,
    /// Bytes of the update log not read yet.
    pub lag_bytes: AtomicU64,
    /// Route data to the peer is paced (ADR 0006).
    pub paced: AtomicBool,
    /// Peer policy class ("" without a policy), set when the session starts.
    policy_class: Mutex<String>,
    /// The TLS client certificate's identity ("" for plaintext), set
    /// when the session starts.
    tls_identity: Mutex<String>,
    /// UPDATE ADDs the policy refused.
    pub routes_refused: AtomicU64,
    /// SUBSCRIBEs the policy refused.
    pub subscribes_refused: AtomicU64,
    /// Last refusal: reason number + 1 (0: none) and when (Unix
    /// milliseconds); atomics, so a flood of refusals takes no lock.
    last_refusal_reason: AtomicU8,
    last_refusal_ms: AtomicU64,
    last_error: Mutex<String>,
    /// An operator asked for the session to be closed.
    reset: AtomicBool,
    /// Wakes the session task to look at what changed outside it: a reset,
    /// a reload, the server's shutdown. One per-session signal instead of
    /// a wait on each of the server's broadcast channels every turn: those
    /// link a waiter into a shared list and unlink it again, a cost every
    /// turn of every session paid for an event that comes once in a
    /// session's life (ADR 0011, addendum of stop 14).
    attention: crate::signal::Signal,
}

impl SessionInfo {
    /// A new session's info, in state CONNECTING.
    pub fn new(id: SessionId, remote: SocketAddr, local: SocketAddr, role: Role) -> Self {
        Self {
            id,
            remote,
            local,
            role,
            connected_at: SystemTime::now(),
            started: Instant::now(),
            state: AtomicU8::new(state_to_u8(State::Connecting)),
            keepalive_secs: AtomicU32::new(0),
            extensions: AtomicU64::new(0),
            messages_in: AtomicU64::new(0),
            messages_out: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            updates_in: AtomicU64::new(0),
            updates_out: AtomicU64::new(0),
            queue_bytes: AtomicU64::new(0),
            lag_bytes: AtomicU64::new(0),
            paced: AtomicBool::new(false),
            policy_class: Mutex::new(String::new()),
            tls_identity: Mutex::new(String::new()),
            routes_refused: AtomicU64::new(0),
            subscribes_refused: AtomicU64::new(0),
            last_refusal_reason: AtomicU8::new(0),
            last_refusal_ms: AtomicU64::new(0),
            last_error: Mutex::new(String::new()),
            reset: AtomicBool::new(false),
            attention: crate::signal::Signal::new(),
        }
    }

    /// Current session state.
    pub fn state(&self) -> State {
        state_from_u8(self.state.load(Relaxed))
    }

    /// Records the session state.
    pub fn set_state(&self, state: State) {
        self.state.store(state_to_u8(state), Relaxed);
    }

    /// Last error or close reason ("" if none).
    pub fn last_error(&self) -> String {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records an error or close reason.
    pub fn set_last_error(&self, reason: String) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = reason;
    }

    /// The peer policy class of the session ("" without a policy).
    pub fn policy_class(&self) -> String {
        self.policy_class
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records the session's policy class.
    pub fn set_policy_class(&self, class: &str) {
        *self.policy_class.lock().unwrap_or_else(|e| e.into_inner()) = class.to_string();
    }

    /// The TLS client certificate's identity ("" for plaintext or a
    /// client without a certificate).
    pub fn tls_identity(&self) -> String {
        self.tls_identity
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records the session's TLS identity.
    pub fn set_tls_identity(&self, identity: &str) {
        *self.tls_identity.lock().unwrap_or_else(|e| e.into_inner()) = identity.to_string();
    }

    /// Counts a refusal for `reason` at `at`.
    pub fn refused(&self, reason: crate::policy::Reason, at: SystemTime) {
        match reason {
            crate::policy::Reason::SubscribeVni => &self.subscribes_refused,
            _ => &self.routes_refused,
        }
        .fetch_add(1, Relaxed);
        let ms = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.last_refusal_ms.store(ms, Relaxed);
        self.last_refusal_reason.store(reason as u8 + 1, Relaxed);
    }

    /// Counts `n` refusals for `reason` at `at` (a reload's re-check).
    pub fn refused_many(&self, reason: crate::policy::Reason, n: u64, at: SystemTime) {
        if n == 0 {
            return;
        }
        self.refused(reason, at);
        match reason {
            crate::policy::Reason::SubscribeVni => &self.subscribes_refused,
            _ => &self.routes_refused,
        }
        .fetch_add(n - 1, Relaxed);
    }

    /// The last refusal's reason and time, if any.
    pub fn last_refusal(&self) -> Option<(crate::policy::Reason, SystemTime)> {
        let reason = self.last_refusal_reason.load(Relaxed).checked_sub(1)?;
        let at = SystemTime::UNIX_EPOCH
            + std::time::Duration::from_millis(self.last_refusal_ms.load(Relaxed));
        Some((crate::policy::Reason::from_u8(reason)?, at))
    }

    /// Asks the session task to close the session.
    pub fn request_reset(&self) {
        self.reset.store(true, Relaxed);
        self.attention.notify();
    }

    /// True when a reset was requested.
    pub fn reset_requested(&self) -> bool {
        self.reset.load(Relaxed)
    }

    /// Wakes the session task to look at the server's state (a reload, a
    /// shutdown): see [`SessionInfo::attention`].
    pub fn wake(&self) {
        self.attention.notify();
    }

    /// Completes when the session task was woken by [`SessionInfo::wake`]
    /// or [`SessionInfo::request_reset`]. Cancel safe.
    pub async fn attention(&self) {
        self.attention.wait().await;
    }
}

fn state_to_u8(s: State) -> u8 {
    match s {
        State::Connecting => 0,
        State::HelloSent => 1,
        State::HelloReceived => 2,
        State::Established => 3,
        State::Retry => 4,
        State::Closed => 5,
    }
}

fn state_from_u8(v: u8) -> State {
    match v {
        0 => State::Connecting,
        1 => State::HelloSent,
        2 => State::HelloReceived,
        3 => State::Established,
        4 => State::Retry,
        _ => State::Closed,
    }
}

/// A session came up, completed its handshake, or went down.
#[derive(Clone, Debug)]
pub enum PeerEvent {
    /// Accepted (or connected): the TCP connection exists, the handshake
    /// has not happened yet.
    Up(Arc<SessionInfo>),
    /// The handshake completed: the session is ESTABLISHED.
    Established(Arc<SessionInfo>),
    /// Closed, with the reason.
    Down(Arc<SessionInfo>, String),
}

/// All live sessions.
#[derive(Debug)]
pub struct Registry {
    sessions: Mutex<HashMap<SessionId, Arc<SessionInfo>>>,
    events: broadcast::Sender<PeerEvent>,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            sessions: Mutex::new(HashMap::new()),
            events: broadcast::channel(EVENT_QUEUE).0,
        }
    }
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Arc<SessionInfo>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a session and announces it.
    pub fn insert(&self, info: Arc<SessionInfo>) {
        self.lock().insert(info.id, info.clone());
        let _ = self.events.send(PeerEvent::Up(info));
    }

    /// Announces that a session completed its handshake (the session task
    /// has set its state to ESTABLISHED).
    pub fn established(&self, info: Arc<SessionInfo>) {
        let _ = self.events.send(PeerEvent::Established(info));
    }

    /// Removes a session and announces why it ended.
    pub fn remove(&self, id: SessionId, reason: String) {
        if let Some(info) = self.lock().remove(&id) {
            info.set_state(State::Closed);
            info.set_last_error(reason.clone());
            let _ = self.events.send(PeerEvent::Down(info, reason));
        }
    }

    /// One session.
    pub fn get(&self, id: SessionId) -> Option<Arc<SessionInfo>> {
        self.lock().get(&id).cloned()
    }

    /// All sessions, by id.
    pub fn all(&self) -> Vec<Arc<SessionInfo>> {
        let mut all: Vec<_> = self.lock().values().cloned().collect();
        all.sort_by_key(|s| s.id);
        all
    }

    /// Wakes every session task to look at the server's state (after a
    /// reload or at shutdown). A session that starts after this looks at
    /// that state once before its first wait, so none is missed.
    pub fn wake_all(&self) {
        for info in self.lock().values() {
            info.wake();
        }
    }

    /// Number of sessions.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no session is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sessions coming up and going down from now on. Subscribe before
    /// listing to see every change after the listing.
    pub fn subscribe(&self) -> broadcast::Receiver<PeerEvent> {
        self.events.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: SessionId) -> Arc<SessionInfo> {
        Arc::new(SessionInfo::new(
            id,
            "[::1]:1000".parse().unwrap(),
            "[::1]:4711".parse().unwrap(),
            Role::Server,
        ))
    }

    #[test]
    fn sessions_come_and_go_with_events() {
        let r = Registry::default();
        let mut events = r.subscribe();
        r.insert(info(20));
        r.insert(info(17));
        assert_eq!(
            r.all().iter().map(|s| s.id).collect::<Vec<_>>(),
            vec![17, 20]
        );
        let twenty = r.get(20).unwrap();
        twenty.set_state(State::Established);
        r.established(twenty);
        r.remove(20, "peer closed".into());
        assert!(r.get(20).is_none());
        assert!(matches!(events.try_recv().unwrap(), PeerEvent::Up(s) if s.id == 20));
        assert!(matches!(events.try_recv().unwrap(), PeerEvent::Up(s) if s.id == 17));
        assert!(matches!(events.try_recv().unwrap(), PeerEvent::Established(s) if s.id == 20));
        match events.try_recv().unwrap() {
            PeerEvent::Down(s, why) => {
                assert_eq!((s.id, why.as_str()), (20, "peer closed"));
                assert_eq!(s.state(), State::Closed);
                assert_eq!(s.last_error(), "peer closed");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn state_round_trips() {
        let s = info(16);
        for st in [
            State::Connecting,
            State::HelloSent,
            State::HelloReceived,
            State::Established,
            State::Retry,
            State::Closed,
        ] {
            s.set_state(st);
            assert_eq!(s.state(), st);
        }
    }
}
