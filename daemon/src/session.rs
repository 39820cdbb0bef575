//! Sans-I/O MetalBond v1 session state machine (PROTOCOL.md section 3).
//!
//! Modelled on quinn-proto: a [`Session`] never touches a socket, a clock or a
//! channel. The shell feeds it decoded messages ([`Session::handle_message`]),
//! timer expiries ([`Session::handle_timeout`]) and, in the client role, local
//! subscription commands, always together with the current [`Instant`]. It
//! then drains the outputs: frames to send ([`Session::poll_transmit`]),
//! events for the route table or client logic ([`Session::poll_event`]) and
//! the next deadline to wake up at ([`Session::poll_timeout`]). Because time
//! only enters as an argument, the whole handshake and keepalive logic is
//! deterministic and tested with plain unit and property tests.
//!
//! One `Session` lives for one TCP connection. Reconnecting (the RETRY state)
//! is the job of the client connection manager, which builds a fresh
//! `Session` for every connection.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use crate::wire::{Extensions, Hello, Message, Update, Vni};

#[cfg(test)]
mod tests;

/// Keepalive interval used when the configuration says 0 (PROTOCOL.md section 3).
pub const DEFAULT_KEEPALIVE_SECS: u32 = 5;

/// Which side of the connection this session is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Accepted connection: waits for the client's HELLO and echoes keepalives.
    Server,
    /// Outgoing connection: speaks first and drives the keepalive cadence.
    Client,
}

/// Session states, named as in PROTOCOL.md section 3.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Server: connection accepted, waiting for the client's HELLO.
    Connecting,
    /// Client: own HELLO queued, waiting for the server's HELLO.
    HelloSent,
    /// HELLOs exchanged, waiting for the first KEEPALIVE from the peer.
    HelloReceived,
    /// Handshake complete; the keepalive timeout is armed.
    Established,
    /// Between two connections of a client. A [`Session`] never enters this
    /// state itself; it exists so that the client connection manager can
    /// report the reference's state names.
    Retry,
    /// Closed with a [`CloseReason`]; the session does nothing any more.
    Closed,
}

impl State {
    /// The upper-case name the reference uses (`ESTABLISHED`, ...), for logs.
    pub fn name(&self) -> &'static str {
        match self {
            State::Connecting => "CONNECTING",
            State::HelloSent => "HELLO_SENT",
            State::HelloReceived => "HELLO_RECEIVED",
            State::Established => "ESTABLISHED",
            State::Retry => "RETRY",
            State::Closed => "CLOSED",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Per-session configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Config {
    /// Server or client side.
    pub role: Role,
    /// Configured keepalive interval in seconds; 0 means the default 5 s.
    pub keepalive_secs: u32,
    /// Extensions this side supports (PROTOCOL.md section 8): a client
    /// offers them in its HELLO, a server accepts the intersection with the
    /// client's offer. [`Extensions::NONE`] behaves exactly like a
    /// reference peer.
    pub extensions: Extensions,
}

impl Config {
    /// The configured interval with 0 replaced by the default, in seconds.
    /// This is what a client proposes and the upper bound a server accepts.
    pub fn effective_keepalive_secs(&self) -> u32 {
        if self.keepalive_secs == 0 {
            DEFAULT_KEEPALIVE_SECS
        } else {
            self.keepalive_secs
        }
    }

    /// [`Config::effective_keepalive_secs`] as a [`Duration`].
    pub fn effective_keepalive(&self) -> Duration {
        Duration::from_secs(u64::from(self.effective_keepalive_secs()))
    }
}

/// What happened on the session that the layer above must act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The handshake completed; `keepalive` is the negotiated interval.
    Established {
        /// Negotiated keepalive interval.
        keepalive: Duration,
    },
    /// The peer subscribed to a VNI. Duplicates are passed on unfiltered.
    Subscribe(Vni),
    /// The peer unsubscribed from a VNI.
    Unsubscribe(Vni),
    /// The peer announced or withdrew a route.
    Update(Update),
    /// The peer's HELLO was accepted and the session negotiated these
    /// extensions (PROTOCOL.md section 8). Only emitted when the set is not
    /// empty: a session with a reference peer emits exactly what it did
    /// before extensions existed. Comes before any event that depends on it.
    Negotiated(Extensions),
    /// Client role, extension SYNC: the server's dump of this VNI is
    /// complete (everything before it in the session is what the server
    /// holds for the VNI). Only on a session that negotiated SYNC.
    Sync(Vni),
}

/// Why the state machine closed a session: the log text is its
/// [`fmt::Display`], the metric label [`CloseReason::label`]. Closes found by
/// the I/O shell (decode errors, EOF, socket errors) are the shell's own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer's HELLO carried keepalive interval 0 (or left it out, which
    /// proto3 encodes the same way).
    ZeroKeepaliveInterval,
    /// A second HELLO on a session that already received one.
    DuplicateHello,
    /// A KEEPALIVE arrived before the peer's HELLO.
    KeepaliveBeforeHello,
    /// No HELLO from the peer within 2.5 x the configured interval.
    HandshakeNoHello {
        /// How long the session waited.
        waited: Duration,
    },
    /// HELLOs were exchanged but the first KEEPALIVE did not arrive within
    /// 2.5 x the configured interval of the session's start.
    HandshakeNoKeepalive {
        /// How long the session waited.
        waited: Duration,
    },
    /// Established, but no KEEPALIVE arrived for 2.5 x the negotiated interval.
    KeepaliveTimeout {
        /// How long the session waited since the last KEEPALIVE.
        waited: Duration,
    },
}

impl CloseReason {
    /// Short stable label for metrics (`reason` label).
    pub fn label(&self) -> &'static str {
        match self {
            CloseReason::ZeroKeepaliveInterval => "zero_keepalive_interval",
            CloseReason::DuplicateHello => "duplicate_hello",
            CloseReason::KeepaliveBeforeHello => "keepalive_before_hello",
            CloseReason::HandshakeNoHello { .. } => "handshake_timeout_hello",
            CloseReason::HandshakeNoKeepalive { .. } => "handshake_timeout_keepalive",
            CloseReason::KeepaliveTimeout { .. } => "keepalive_timeout",
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::ZeroKeepaliveInterval => {
                f.write_str("peer sent HELLO with keepalive interval 0")
            }
            CloseReason::DuplicateHello => f.write_str("peer sent a second HELLO"),
            CloseReason::KeepaliveBeforeHello => f.write_str("peer sent KEEPALIVE before HELLO"),
            CloseReason::HandshakeNoHello { waited } => {
                write!(f, "handshake timeout: no HELLO from peer within {waited:?}")
            }
            CloseReason::HandshakeNoKeepalive { waited } => write!(
                f,
                "handshake timeout: no first KEEPALIVE from peer within {waited:?}"
            ),
            CloseReason::KeepaliveTimeout { waited } => {
                write!(
                    f,
                    "keepalive timeout: no KEEPALIVE from peer for {waited:?}"
                )
            }
        }
    }
}

/// The timeout after which a silent peer is dropped: 2.5 x `interval`.
/// Multiplying before dividing keeps it exact (no float rounding), so the
/// deadline of a whole-second interval lands on an exact half second.
fn timeout_for(interval: Duration) -> Duration {
    interval * 5 / 2
}

/// One MetalBond session (one TCP connection), without any I/O.
#[derive(Debug)]
pub struct Session {
    config: Config,
    state: State,
    /// Negotiated interval, known once the peer's HELLO was accepted.
    negotiated: Option<Duration>,
    /// Negotiated extensions, known once the peer's HELLO was accepted.
    extensions: Extensions,
    /// End of the handshake window; `None` only if it overflows `Instant`,
    /// which means "never".
    handshake_deadline: Option<Instant>,
    /// Established only: when the peer's silence closes the session.
    keepalive_deadline: Option<Instant>,
    /// Client only, from the server's HELLO on: when to send the next KEEPALIVE.
    next_keepalive: Option<Instant>,
    transmit: VecDeque<Message>,
    events: VecDeque<Event>,
    /// Client only: remembered subscriptions in the order they were made, so
    /// that SUBSCRIBEs go out in a predictable order. `subscribed` holds the
    /// same VNIs for O(1) membership checks.
    subscription_order: Vec<Vni>,
    subscribed: HashSet<Vni>,
    close_reason: Option<CloseReason>,
}

impl Session {
    /// Starts a session at `now`. A client queues its HELLO at once (state
    /// `HelloSent`); a server sends nothing and waits for the client's HELLO
    /// (state `Connecting`). The handshake window (2.5 x the configured
    /// interval) starts now.
    pub fn new(config: Config, now: Instant) -> Self {
        let handshake_deadline = now.checked_add(timeout_for(config.effective_keepalive()));
        let mut session = Session {
            config,
            state: State::Connecting,
            negotiated: None,
            extensions: Extensions::NONE,
            handshake_deadline,
            keepalive_deadline: None,
            next_keepalive: None,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            subscription_order: Vec::new(),
            subscribed: HashSet::new(),
            close_reason: None,
        };
        if config.role == Role::Client {
            session.transmit.push_back(Message::Hello(Hello {
                keepalive_secs: config.effective_keepalive_secs(),
                is_server: false,
                extensions: config.extensions.0,
            }));
            session.state = State::HelloSent;
        }
        session
    }

    /// Processes one message received from the peer.
    ///
    /// Deadlines are not evaluated here, only in [`Session::handle_timeout`]:
    /// a KEEPALIVE that was already read is credited even if the shell gets
    /// to it late, so a busy daemon does not drop a live peer.
    ///
    /// On `Err` the session is closed and the reason is final; the shell
    /// should close the connection. Every call on a closed session returns
    /// the same reason again.
    pub fn handle_message(&mut self, msg: Message, now: Instant) -> Result<(), CloseReason> {
        self.check_open()?;
        let result = match msg {
            Message::Hello(hello) => self.on_hello(hello, now),
            Message::Keepalive => self.on_keepalive(now),
            // Accepted in every state, the handshake included (PROTOCOL.md
            // DECISION), and never de-duplicated here: the route table owns
            // subscription state and makes duplicates harmless.
            Message::Subscribe(vni) => {
                self.events.push_back(Event::Subscribe(vni));
                Ok(())
            }
            Message::Unsubscribe(vni) => {
                self.events.push_back(Event::Unsubscribe(vni));
                Ok(())
            }
            Message::Update(update) => {
                self.events.push_back(Event::Update(update));
                Ok(())
            }
            // Only a server sends SYNC, and only on a session that
            // negotiated it; anything else is ignored, never trusted (the
            // decoder already skips it as an unknown frame, see
            // `Session::accepted_extensions`).
            Message::Sync(vni) => {
                if self.config.role == Role::Client && self.extensions.contains(Extensions::SYNC) {
                    self.events.push_back(Event::Sync(vni));
                }
                Ok(())
            }
        };
        result.map_err(|reason| self.fail(reason))
    }

    /// Processes the passage of time. Call it at or after
    /// [`Session::poll_timeout`]; calling it early is harmless and does
    /// nothing. A client queues its periodic KEEPALIVE here; both roles
    /// close on a handshake or keepalive timeout. A deadline is reached when
    /// `now >= deadline`.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), CloseReason> {
        self.check_open()?;
        let waited = |deadline: Option<Instant>| deadline.is_some_and(|d| now >= d);
        if self.state == State::Established {
            if waited(self.keepalive_deadline) {
                let interval = self.negotiated.unwrap_or(self.config.effective_keepalive());
                return Err(self.fail(CloseReason::KeepaliveTimeout {
                    waited: timeout_for(interval),
                }));
            }
        } else if waited(self.handshake_deadline) {
            let waited = timeout_for(self.config.effective_keepalive());
            let reason = if self.negotiated.is_none() {
                CloseReason::HandshakeNoHello { waited }
            } else {
                CloseReason::HandshakeNoKeepalive { waited }
            };
            return Err(self.fail(reason));
        }
        if let (Some(next), Some(interval)) = (self.next_keepalive, self.negotiated) {
            if now >= next {
                self.transmit.push_back(Message::Keepalive);
                // Keep the cadence anchored to the schedule, but if the shell
                // was stalled for more than an interval send just one
                // KEEPALIVE rather than a burst to catch up.
                let mut following = next.checked_add(interval);
                if following.is_some_and(|f| f <= now) {
                    following = now.checked_add(interval);
                }
                self.next_keepalive = following;
            }
        }
        Ok(())
    }

    /// The next instant at which [`Session::handle_timeout`] must be called,
    /// or `None` if there is none (closed session).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == State::Closed {
            return None;
        }
        let expiry = if self.state == State::Established {
            self.keepalive_deadline
        } else {
            self.handshake_deadline
        };
        match (expiry, self.next_keepalive) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next frame to send to the peer, in order. Empty once closed:
    /// frames still queued at the close are dropped.
    pub fn poll_transmit(&mut self) -> Option<Message> {
        self.transmit.pop_front()
    }

    /// The next event for the layer above, in the order the messages arrived.
    /// Empty once closed: the table drops all state of a closed session
    /// anyway, so events still queued at the close are discarded.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// True in state `Established`.
    pub fn is_established(&self) -> bool {
        self.state == State::Established
    }

    /// True once the session closed, for whatever reason.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Why the session closed, once it has.
    pub fn close_reason(&self) -> Option<&CloseReason> {
        self.close_reason.as_ref()
    }

    /// The negotiated keepalive interval, once the peer's HELLO was accepted.
    pub fn keepalive(&self) -> Option<Duration> {
        self.negotiated
    }

    /// The extensions negotiated with the peer: empty until its HELLO was
    /// accepted, and always with a reference peer (PROTOCOL.md section 8).
    pub fn extensions(&self) -> Extensions {
        self.extensions
    }

    /// The extensions whose messages this side may receive, for
    /// [`crate::wire::decode_frame_with`]: a client receives SYNC when it
    /// negotiated it; a server receives no extension message.
    pub fn accepted_extensions(&self) -> Extensions {
        match self.config.role {
            Role::Client => self.extensions,
            Role::Server => Extensions::NONE,
        }
    }

    /// This session's role.
    pub fn role(&self) -> Role {
        self.config.role
    }

    /// The configuration the session was started with.
    pub fn config(&self) -> Config {
        self.config
    }

    /// Client role: subscribes to `vni` on this session. The SUBSCRIBE goes
    /// out at once if the session is established, otherwise right when it
    /// becomes established (the reference sends nothing before that).
    /// Returns false, and queues nothing, if `vni` is already subscribed, the
    /// session is closed, or this is a server session: the same SUBSCRIBE is
    /// never sent twice on one session (it wedges the Go server).
    pub fn subscribe(&mut self, vni: Vni) -> bool {
        if self.config.role != Role::Client
            || self.state == State::Closed
            || !self.subscribed.insert(vni)
        {
            return false;
        }
        self.subscription_order.push(vni);
        if self.state == State::Established {
            self.transmit.push_back(Message::Subscribe(vni));
        }
        true
    }

    /// Client role: unsubscribes from `vni`. An UNSUBSCRIBE is queued only if
    /// the SUBSCRIBE had gone out (the session is established); before that
    /// the subscription is just forgotten. Returns false if `vni` was not
    /// subscribed, the session is closed, or this is a server session.
    /// Subscribing again later sends a fresh SUBSCRIBE, which is not a
    /// duplicate since the server dropped the subscription.
    pub fn unsubscribe(&mut self, vni: Vni) -> bool {
        if self.config.role != Role::Client
            || self.state == State::Closed
            || !self.subscribed.remove(&vni)
        {
            return false;
        }
        self.subscription_order.retain(|&v| v != vni);
        if self.state == State::Established {
            self.transmit.push_back(Message::Unsubscribe(vni));
        }
        true
    }

    /// Client role: true if `vni` is currently subscribed on this session.
    pub fn is_subscribed(&self, vni: Vni) -> bool {
        self.subscribed.contains(&vni)
    }

    /// Client role: the subscribed VNIs, in the order they were subscribed.
    pub fn subscriptions(&self) -> impl Iterator<Item = Vni> + '_ {
        self.subscription_order.iter().copied()
    }

    fn check_open(&self) -> Result<(), CloseReason> {
        match &self.close_reason {
            Some(reason) => Err(reason.clone()),
            None => Ok(()),
        }
    }

    /// Moves to `Closed` and drops everything pending, so that a closed
    /// session can never emit anything again. Returns the reason for `Err`.
    fn fail(&mut self, reason: CloseReason) -> CloseReason {
        self.state = State::Closed;
        self.transmit.clear();
        self.events.clear();
        self.handshake_deadline = None;
        self.keepalive_deadline = None;
        self.next_keepalive = None;
        self.close_reason = Some(reason.clone());
        reason
    }

    fn on_hello(&mut self, hello: Hello, now: Instant) -> Result<(), CloseReason> {
        let awaiting_hello = match self.config.role {
            Role::Server => self.state == State::Connecting,
            Role::Client => self.state == State::HelloSent,
        };
        if !awaiting_hello {
            return Err(CloseReason::DuplicateHello);
        }
        if hello.keepalive_secs == 0 {
            return Err(CloseReason::ZeroKeepaliveInterval);
        }
        // `is_server` is never read, as in the reference: servers do not
        // talk to each other, so there is nothing to decide on it.
        let secs = hello
            .keepalive_secs
            .min(self.config.effective_keepalive_secs());
        let interval = Duration::from_secs(u64::from(secs));
        self.negotiated = Some(interval);
        self.state = State::HelloReceived;
        // Server: the intersection of the offer with what it supports (the
        // answer). Client: bits the server answers that the client did not
        // offer are ignored.
        self.extensions = Extensions(hello.extensions).intersection(self.config.extensions);
        if !self.extensions.is_empty() {
            self.events.push_back(Event::Negotiated(self.extensions));
        }
        match self.config.role {
            Role::Server => self.transmit.push_back(Message::Hello(Hello {
                keepalive_secs: secs,
                is_server: true,
                extensions: self.extensions.0,
            })),
            Role::Client => {
                self.transmit.push_back(Message::Keepalive);
                self.next_keepalive = now.checked_add(interval);
            }
        }
        Ok(())
    }

    fn on_keepalive(&mut self, now: Instant) -> Result<(), CloseReason> {
        let interval = match (self.state, self.negotiated) {
            (State::HelloReceived | State::Established, Some(interval)) => interval,
            _ => return Err(CloseReason::KeepaliveBeforeHello),
        };
        self.keepalive_deadline = now.checked_add(timeout_for(interval));
        if self.state == State::HelloReceived {
            self.state = State::Established;
            self.events.push_back(Event::Established {
                keepalive: interval,
            });
            if self.config.role == Role::Client {
                self.transmit.extend(
                    self.subscription_order
                        .iter()
                        .map(|&vni| Message::Subscribe(vni)),
                );
            }
        }
        // The server answers every KEEPALIVE with exactly one and never sends
        // one on its own: a Go client that sees a KEEPALIVE before it has
        // processed the server's HELLO resets.
        if self.config.role == Role::Server {
            self.transmit.push_back(Message::Keepalive);
        }
        Ok(())
    }
}
