//! Why a session (or, in the client role, a connection attempt) ended, and
//! what that means to an operator: one type for both roles, one
//! classification for the log level, the client's protocol-error count and
//! the metrics (ADR 0010, ADR 0015).

use std::time::Duration;

use crate::session::{CloseReason, Role};
use crate::wire::DecodeError;

/// Why a session or a connection attempt ended. The metric label is
/// [`SessionEnd::label`], its meaning [`SessionEnd::class`], the log and API
/// text [`SessionEnd::describe`].
#[derive(Debug)]
pub enum SessionEnd {
    /// Client: the server's name did not resolve.
    Resolve(String),
    /// Client: the TCP connect failed (to every resolved address).
    ConnectFailed(std::io::Error),
    /// Client: the TCP connect did not complete within the connect timeout.
    ConnectTimeout(Duration),
    /// The session state machine closed the session (a protocol violation
    /// or a timeout).
    Protocol(CloseReason),
    /// The peer sent a malformed frame.
    Decode(DecodeError),
    /// The peer closed the connection at a frame boundary.
    PeerClosed,
    /// The peer closed the connection after this many bytes of a frame
    /// (they are discarded).
    TruncatedFrame(usize),
    /// Reading or writing the socket failed.
    Io(std::io::Error),
    /// Server: the peer stopped reading (no write progress for the write
    /// timeout).
    WriteTimeout,
    /// Server: the session fell this many bytes behind the update log.
    Lagging(u64),
    /// Server: an operator reset the session.
    Reset,
    /// Server: the peer announced more routes than its policy class's
    /// `max_routes` (`class`, `max`) with `max_routes_action = "close"`.
    PolicyMaxRoutes {
        /// The policy class.
        class: String,
        /// Its `max_routes`.
        max: usize,
    },
    /// Server: the peer announced more routes into one VNI than its policy
    /// class's `max_routes_per_vni` with `max_routes_action = "close"`.
    PolicyMaxRoutesPerVni {
        /// The policy class.
        class: String,
        /// Its `max_routes_per_vni`.
        max: usize,
        /// The VNI.
        vni: u32,
    },
    /// The TLS layer failed after the handshake: the peer sent a fatal
    /// alert (e.g. it refused our certificate) or a malformed record.
    Tls(rustls::Error),
    /// Client: the TLS handshake with the server failed or timed out.
    TlsHandshake(String),
    /// This side stops: the daemon shuts down (or, in the client role, the
    /// server was removed or nobody listens to the connection's events).
    /// Not counted as a session down by the client.
    Shutdown,
}

/// What a session end means to an operator; the metrics families derived
/// from the ends by reason follow it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndClass {
    /// An ordinary end: the peer or an operator closed it, a socket error,
    /// a connection could not be made, the daemon stopped.
    Normal,
    /// The peer sent something malformed (a truncated frame included) or
    /// broke the protocol.
    ProtocolError,
    /// The peer did not complete the handshake in time.
    HandshakeTimeout,
    /// The peer stopped sending keepalives.
    KeepaliveTimeout,
    /// The peer did not read fast enough (write timeout, update-log lag).
    SlowConsumer,
    /// The peer broke its peer policy's limits (docs/POLICY.md).
    Policy,
}

impl EndClass {
    /// Classifies a session end by its reason label ([`SessionEnd::label`],
    /// which includes [`CloseReason::label`] and [`DecodeError::label`]).
    /// The one classification: the session end itself, the client's
    /// protocol-error count and the metrics (which count ends by label)
    /// all use it. Labels not listed are protocol errors: every other label
    /// comes from the decoder or from a protocol violation.
    pub fn of_label(label: &str) -> EndClass {
        match label {
            "handshake_timeout_hello" | "handshake_timeout_keepalive" => EndClass::HandshakeTimeout,
            "keepalive_timeout" => EndClass::KeepaliveTimeout,
            "write_timeout" | "lagging" => EndClass::SlowConsumer,
            "policy_max_routes" | "policy_max_routes_per_vni" => EndClass::Policy,
            "peer_closed" | "io_error" | "reset" | "shutdown" | "connect_failed"
            | "connect_timeout" | "resolve_failed" => EndClass::Normal,
            _ => EndClass::ProtocolError,
        }
    }

    /// Anything but a normal end is the peer's fault (logged as a warning
    /// by the server).
    pub fn is_fault(self) -> bool {
        self != EndClass::Normal
    }
}

impl SessionEnd {
    /// Short stable snake_case label, the `reason` of the metrics (the same
    /// in both roles where the same thing happens).
    pub fn label(&self) -> &'static str {
        match self {
            SessionEnd::Resolve(_) => "resolve_failed",
            SessionEnd::ConnectFailed(_) => "connect_failed",
            SessionEnd::ConnectTimeout(_) => "connect_timeout",
            SessionEnd::Protocol(r) => r.label(),
            SessionEnd::Decode(e) => e.label(),
            SessionEnd::PeerClosed => "peer_closed",
            SessionEnd::TruncatedFrame(_) => "truncated_frame",
            SessionEnd::Io(_) => "io_error",
            SessionEnd::WriteTimeout => "write_timeout",
            SessionEnd::Lagging(_) => "lagging",
            SessionEnd::Reset => "reset",
            SessionEnd::PolicyMaxRoutes { .. } => "policy_max_routes",
            SessionEnd::PolicyMaxRoutesPerVni { .. } => "policy_max_routes_per_vni",
            SessionEnd::Tls(_) => "tls_error",
            SessionEnd::TlsHandshake(_) => "tls_handshake_failed",
            SessionEnd::Shutdown => "shutdown",
        }
    }

    /// What this end means ([`EndClass::of_label`] of its label).
    pub fn class(&self) -> EndClass {
        EndClass::of_label(self.label())
    }

    /// The log and API text, as seen from `role`: the server speaks of its
    /// "peer", the client of its "server".
    pub fn describe(&self, role: Role) -> String {
        let peer = match role {
            Role::Server => "peer",
            Role::Client => "server",
        };
        match self {
            SessionEnd::Resolve(e) => format!("cannot resolve: {e}"),
            SessionEnd::ConnectFailed(e) => format!("connect failed: {e}"),
            SessionEnd::ConnectTimeout(t) => format!("connect timed out after {t:?}"),
            SessionEnd::Protocol(r) => r.to_string(),
            SessionEnd::Decode(e) => format!("malformed frame: {e}"),
            SessionEnd::PeerClosed => format!("{peer} closed the connection"),
            SessionEnd::TruncatedFrame(n) => match role {
                Role::Server => format!(
                    "peer closed the connection in the middle of a frame ({n} bytes of it discarded)"
                ),
                Role::Client => {
                    format!("server closed the connection in the middle of a frame ({n} bytes)")
                }
            },
            SessionEnd::Io(e) => format!("socket error: {e}"),
            SessionEnd::WriteTimeout => "peer stopped reading (write timeout)".into(),
            SessionEnd::Lagging(bytes) => format!(
                "fell {bytes} bytes behind the update log; closing so the client reconnects and resyncs"
            ),
            SessionEnd::Reset => "reset by an operator".into(),
            SessionEnd::PolicyMaxRoutes { class, max } => format!(
                "announced more than max_routes = {max} of policy class {class:?} (max_routes_action = \"close\")"
            ),
            SessionEnd::PolicyMaxRoutesPerVni { class, max, vni } => format!(
                "announced more than max_routes_per_vni = {max} into VNI {vni} of policy class {class:?} (max_routes_action = \"close\")"
            ),
            SessionEnd::Tls(e) => format!("TLS error: {e}"),
            SessionEnd::TlsHandshake(e) => format!("TLS handshake failed: {e}"),
            SessionEnd::Shutdown => "server shutting down".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io() -> std::io::Error {
        std::io::Error::from(std::io::ErrorKind::ConnectionRefused)
    }

    /// Every reason there is: the ends of the shell, every close of the
    /// state machine and every decode error, with its label and class.
    fn every_end() -> Vec<(SessionEnd, &'static str, EndClass)> {
        use EndClass::*;
        let w = Duration::from_millis(12500);
        vec![
            (SessionEnd::Resolve("x".into()), "resolve_failed", Normal),
            (SessionEnd::ConnectFailed(io()), "connect_failed", Normal),
            (
                SessionEnd::ConnectTimeout(Duration::from_secs(2)),
                "connect_timeout",
                Normal,
            ),
            (SessionEnd::PeerClosed, "peer_closed", Normal),
            (
                SessionEnd::TruncatedFrame(7),
                "truncated_frame",
                ProtocolError,
            ),
            (SessionEnd::Io(io()), "io_error", Normal),
            (SessionEnd::WriteTimeout, "write_timeout", SlowConsumer),
            (SessionEnd::Lagging(9), "lagging", SlowConsumer),
            (SessionEnd::Reset, "reset", Normal),
            (
                SessionEnd::PolicyMaxRoutes {
                    class: "c".into(),
                    max: 3,
                },
                "policy_max_routes",
                Policy,
            ),
            (
                SessionEnd::PolicyMaxRoutesPerVni {
                    class: "c".into(),
                    max: 3,
                    vni: 100,
                },
                "policy_max_routes_per_vni",
                Policy,
            ),
            (SessionEnd::Shutdown, "shutdown", Normal),
            (
                SessionEnd::Tls(rustls::Error::DecryptError),
                "tls_error",
                ProtocolError,
            ),
            (
                SessionEnd::TlsHandshake("x".into()),
                "tls_handshake_failed",
                ProtocolError,
            ),
            (
                SessionEnd::Protocol(CloseReason::ZeroKeepaliveInterval),
                "zero_keepalive_interval",
                ProtocolError,
            ),
            (
                SessionEnd::Protocol(CloseReason::DuplicateHello),
                "duplicate_hello",
                ProtocolError,
            ),
            (
                SessionEnd::Protocol(CloseReason::KeepaliveBeforeHello),
                "keepalive_before_hello",
                ProtocolError,
            ),
            (
                SessionEnd::Protocol(CloseReason::HandshakeNoHello { waited: w }),
                "handshake_timeout_hello",
                HandshakeTimeout,
            ),
            (
                SessionEnd::Protocol(CloseReason::HandshakeNoKeepalive { waited: w }),
                "handshake_timeout_keepalive",
                HandshakeTimeout,
            ),
            (
                SessionEnd::Protocol(CloseReason::KeepaliveTimeout { waited: w }),
                "keepalive_timeout",
                KeepaliveTimeout,
            ),
            (
                SessionEnd::Decode(DecodeError::BadVersion(2)),
                "bad_version",
                ProtocolError,
            ),
            (
                SessionEnd::Decode(DecodeError::Protobuf {
                    msg: "UPDATE",
                    detail: "x",
                }),
                "bad_protobuf",
                ProtocolError,
            ),
            (
                SessionEnd::Decode(DecodeError::MissingDestination),
                "missing_destination",
                ProtocolError,
            ),
            (
                SessionEnd::Decode(DecodeError::MissingNextHop),
                "missing_next_hop",
                ProtocolError,
            ),
            (
                SessionEnd::Decode(DecodeError::BadAddressLength {
                    field: "destination",
                    len: 3,
                }),
                "bad_address_length",
                ProtocolError,
            ),
            (
                SessionEnd::Decode(DecodeError::PrefixTooLong { len: 33, max: 32 }),
                "prefix_too_long",
                ProtocolError,
            ),
            (
                SessionEnd::Decode(DecodeError::IpVersionMismatch {
                    ip_version: 4,
                    len: 16,
                }),
                "ip_version_mismatch",
                ProtocolError,
            ),
            (
                SessionEnd::Decode(DecodeError::PortOutOfRange(70000)),
                "port_out_of_range",
                ProtocolError,
            ),
            (
                SessionEnd::Decode(DecodeError::PortRangeInverted { from: 9, to: 1 }),
                "port_range_inverted",
                ProtocolError,
            ),
            (
                SessionEnd::Decode(DecodeError::UnknownAction(7)),
                "unknown_action",
                ProtocolError,
            ),
        ]
    }

    #[test]
    fn every_reason_has_its_label_and_class() {
        for (end, label, class) in every_end() {
            assert_eq!(end.label(), label, "{end:?}");
            assert_eq!(end.class(), class, "{end:?}");
            assert_eq!(EndClass::of_label(label), class, "{label}");
            // A server logs anything but a normal end as a warning.
            assert_eq!(end.class().is_fault(), class != EndClass::Normal);
        }
    }

    #[test]
    fn the_server_speaks_of_its_peer_and_the_client_of_its_server() {
        let w = Duration::from_millis(12500);
        let both = |end: SessionEnd, text: String| {
            assert_eq!(end.describe(Role::Server), text, "{end:?}");
            assert_eq!(end.describe(Role::Client), text, "{end:?}");
        };
        both(
            SessionEnd::ConnectFailed(io()),
            format!("connect failed: {}", io()),
        );
        both(
            SessionEnd::ConnectTimeout(Duration::from_secs(2)),
            "connect timed out after 2s".into(),
        );
        both(
            SessionEnd::Resolve("h: no address".into()),
            "cannot resolve: h: no address".into(),
        );
        both(SessionEnd::Io(io()), format!("socket error: {}", io()));
        for e in [DecodeError::BadVersion(2), DecodeError::MissingNextHop] {
            let text = format!("malformed frame: {e}");
            both(SessionEnd::Decode(e), text);
        }
        for r in [
            CloseReason::ZeroKeepaliveInterval,
            CloseReason::DuplicateHello,
            CloseReason::KeepaliveBeforeHello,
            CloseReason::HandshakeNoHello { waited: w },
            CloseReason::HandshakeNoKeepalive { waited: w },
            CloseReason::KeepaliveTimeout { waited: w },
        ] {
            let text = r.to_string();
            both(SessionEnd::Protocol(r), text);
        }
        let server = |end: SessionEnd, text: &str| {
            assert_eq!(end.describe(Role::Server), text, "{end:?}");
        };
        server(SessionEnd::PeerClosed, "peer closed the connection");
        server(
            SessionEnd::TruncatedFrame(7),
            "peer closed the connection in the middle of a frame (7 bytes of it discarded)",
        );
        server(
            SessionEnd::WriteTimeout,
            "peer stopped reading (write timeout)",
        );
        server(
            SessionEnd::Lagging(9),
            "fell 9 bytes behind the update log; closing so the client reconnects and resyncs",
        );
        server(SessionEnd::Reset, "reset by an operator");
        server(SessionEnd::Shutdown, "server shutting down");
        let client = |end: SessionEnd, text: &str| {
            assert_eq!(end.describe(Role::Client), text, "{end:?}");
        };
        client(SessionEnd::PeerClosed, "server closed the connection");
        client(
            SessionEnd::TruncatedFrame(7),
            "server closed the connection in the middle of a frame (7 bytes)",
        );
    }
}
