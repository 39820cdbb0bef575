//! The MetalBond v1 wire protocol: value types, messages, framing and the
//! announcement text format. No I/O here.

pub mod codec;
pub mod message;
pub mod protobuf;
pub mod text;
pub mod types;

pub use codec::{
    decode_frame, decode_updates, encode_message, encode_update, Frame, HEADER_LEN,
    MAX_SEND_PAYLOAD,
};
pub use message::{DecodeError, Hello, Message, MessageType, Update};
pub use text::ParseRouteError;
pub use types::{Action, Address, Destination, NextHop, NextHopType, Route, Vni};

#[cfg(test)]
mod codec_proptests;
#[cfg(test)]
mod codec_tests;
