//! The MetalBond v1 wire protocol: messages, framing and the protobuf codec.
//! No I/O here. The value types and the announcement text format are the
//! `metalbond-types` crate's (shared with mbctl), re-exported here.

pub mod codec;
pub mod marks;
pub mod message;
pub mod protobuf;

pub use codec::{
    decode_frame, decode_frame_with, decode_updates, encode_message, encode_update, Frame,
    HEADER_LEN, KEEPALIVE_FRAME, MAX_SEND_PAYLOAD,
};
pub use marks::FrameMarks;
pub use message::{DecodeError, Extensions, Hello, Message, MessageType, Update};
pub use metalbond_types::text;
pub use metalbond_types::{
    Action, Address, Destination, NextHop, NextHopType, ParseRouteError, Route, Vni,
};

#[cfg(test)]
mod codec_proptests;
#[cfg(test)]
mod codec_tests;
