//! MetalBond v1 messages and the reasons a received frame is rejected.

use super::{Action, Destination, NextHop, Route, Vni};

/// Message type byte of the frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageType {
    /// HELLO (1).
    Hello = 1,
    /// KEEPALIVE (2), empty payload.
    Keepalive = 2,
    /// SUBSCRIBE (3).
    Subscribe = 3,
    /// UNSUBSCRIBE (4).
    Unsubscribe = 4,
    /// UPDATE (5).
    Update = 5,
    /// SYNC (100), negotiated extension bit 0 (PROTOCOL.md section 8): only
    /// a peer that negotiated [`Extensions::SYNC`] sends or decodes it.
    Sync = 100,
}

impl MessageType {
    /// Maps a header type byte; `None` for an unknown type.
    pub fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            1 => Self::Hello,
            2 => Self::Keepalive,
            3 => Self::Subscribe,
            4 => Self::Unsubscribe,
            5 => Self::Update,
            100 => Self::Sync,
            _ => return None,
        })
    }
}

/// HELLO payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Hello {
    /// Proposed (client) or negotiated (server) keepalive interval in seconds.
    pub keepalive_secs: u32,
    /// Set by servers; never read by anyone (PROTOCOL.md section 4).
    pub is_server: bool,
    /// Field 1001, the negotiated extensions (PROTOCOL.md section 8): the
    /// bits a client offers, the intersection a server accepts. Encoded
    /// only when non-zero, so a HELLO without extensions is byte-identical
    /// to a reference peer's; reference peers ignore the field.
    pub extensions: u64,
}

/// A set of negotiated extensions (PROTOCOL.md section 8), the bits of the
/// HELLO field 1001.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Extensions(pub u64);

impl Extensions {
    /// No extension: what a reference peer offers and accepts.
    pub const NONE: Extensions = Extensions(0);
    /// Bit 0: a SYNC (type 100) right after every SUBSCRIBE dump.
    pub const SYNC: Extensions = Extensions(1);
    /// Every extension this build implements.
    pub const SUPPORTED: Extensions = Extensions::SYNC;

    /// Whether every bit of `other` is in `self`.
    pub fn contains(self, other: Extensions) -> bool {
        self.0 & other.0 == other.0
    }

    /// The bits in both.
    pub fn intersection(self, other: Extensions) -> Extensions {
        Extensions(self.0 & other.0)
    }

    /// Whether no bit is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The names of the known bits that are set, in bit order (`"sync"`),
    /// as the control API, `mbctl` and the status page show them; unknown
    /// bits have no name (a negotiated set never has any: it is an
    /// intersection with [`Extensions::SUPPORTED`]).
    pub fn names(self) -> Vec<&'static str> {
        const NAMED: [(Extensions, &str); 1] = [(Extensions::SYNC, "sync")];
        NAMED
            .iter()
            .filter(|(bit, _)| self.contains(*bit))
            .map(|&(_, name)| name)
            .collect()
    }
}

/// UPDATE payload, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Update {
    /// ADD or REMOVE.
    pub action: Action,
    /// The route concerned.
    pub route: Route,
}

impl Update {
    /// Convenience constructor.
    pub fn new(action: Action, vni: Vni, dest: Destination, next_hop: NextHop) -> Self {
        Self {
            action,
            route: Route {
                vni,
                dest,
                next_hop,
            },
        }
    }
}

/// A decoded, validated MetalBond message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Message {
    /// Handshake.
    Hello(Hello),
    /// Liveness.
    Keepalive,
    /// Start receiving routes of a VNI.
    Subscribe(Vni),
    /// Stop receiving routes of a VNI.
    Unsubscribe(Vni),
    /// Announce or withdraw a route.
    Update(Update),
    /// Extension SYNC (type 100): the dump of this VNI is complete.
    Sync(Vni),
}

impl Message {
    /// The header type byte of this message.
    pub fn message_type(&self) -> MessageType {
        match self {
            Message::Hello(_) => MessageType::Hello,
            Message::Keepalive => MessageType::Keepalive,
            Message::Subscribe(_) => MessageType::Subscribe,
            Message::Unsubscribe(_) => MessageType::Unsubscribe,
            Message::Update(_) => MessageType::Update,
            Message::Sync(_) => MessageType::Sync,
        }
    }
}

/// Why a received frame was rejected. Every variant closes the session,
/// with this as the logged reason (PROTOCOL.md sections 1 and 2).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Header version byte other than 1.
    #[error("unsupported protocol version {0} (expected 1)")]
    BadVersion(u8),
    /// Payload is not a valid protobuf encoding of the expected message.
    #[error("cannot decode {msg} payload: {detail}")]
    Protobuf {
        /// Message being decoded.
        msg: &'static str,
        /// What was wrong.
        detail: &'static str,
    },
    /// KEEPALIVE with a non-empty payload is accepted; this is for UPDATE.
    #[error("UPDATE without destination")]
    MissingDestination,
    /// UPDATE without next hop.
    #[error("UPDATE without nextHop")]
    MissingNextHop,
    /// An address field that is not 4 or 16 bytes.
    #[error("{field} is {len} bytes (expected 4 or 16)")]
    BadAddressLength {
        /// `destination.prefix` or `nextHop.targetAddress`.
        field: &'static str,
        /// Length received.
        len: usize,
    },
    /// Prefix length larger than the address width.
    #[error("prefix length {len} exceeds {max} bits")]
    PrefixTooLong {
        /// Length received.
        len: u32,
        /// Address width.
        max: u8,
    },
    /// `ipVersion` does not match the address length.
    #[error("ipVersion {ip_version} does not match a {len}-byte address")]
    IpVersionMismatch {
        /// Value received.
        ip_version: i32,
        /// Address length.
        len: usize,
    },
    /// A NAT port above 65535.
    #[error("NAT port {0} above 65535")]
    PortOutOfRange(u32),
    /// NAT port range with from > to.
    #[error("NAT port range {from}-{to} is inverted")]
    PortRangeInverted {
        /// First port.
        from: u16,
        /// Last port.
        to: u16,
    },
    /// UPDATE action neither ADD nor REMOVE.
    #[error("unknown UPDATE action {0}")]
    UnknownAction(i32),
}

impl DecodeError {
    /// Short stable label for metrics (`reason` label).
    pub fn label(&self) -> &'static str {
        match self {
            DecodeError::BadVersion(_) => "bad_version",
            DecodeError::Protobuf { .. } => "bad_protobuf",
            DecodeError::MissingDestination => "missing_destination",
            DecodeError::MissingNextHop => "missing_next_hop",
            DecodeError::BadAddressLength { .. } => "bad_address_length",
            DecodeError::PrefixTooLong { .. } => "prefix_too_long",
            DecodeError::IpVersionMismatch { .. } => "ip_version_mismatch",
            DecodeError::PortOutOfRange(_) => "port_out_of_range",
            DecodeError::PortRangeInverted { .. } => "port_range_inverted",
            DecodeError::UnknownAction(_) => "unknown_action",
        }
    }
}
