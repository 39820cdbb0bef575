//! Framing: `version (1) | payload length (u16 BE) | type (u8)` + protobuf payload.
//!
//! [`decode_frame`] takes whole frames off the front of a read buffer: it
//! waits for more bytes when a frame is split across reads, and callers loop
//! to process many frames from one read. [`encode_message`] appends one whole
//! frame to an output buffer, so a batch of frames goes out in one write.

use bytes::{Buf, BufMut, BytesMut};

use super::message::{DecodeError, Extensions, Hello, Message, MessageType, Update};
use super::protobuf::{
    enum_to_varint, len_field_len, put_len_prefix, put_varint_field, varint_field_len, varint_len,
    Reader,
};
use super::{Action, Address, Destination, NextHop, NextHopType, Route, Vni};

/// The only protocol version.
pub const PROTOCOL_VERSION: u8 = 1;
/// Frame header size.
pub const HEADER_LEN: usize = 4;
/// Largest payload we ever send (1280-byte IPv6 minimum MTU minus headers).
pub const MAX_SEND_PAYLOAD: usize = 1188;
/// The whole KEEPALIVE frame.
pub const KEEPALIVE_FRAME: [u8; 4] = [PROTOCOL_VERSION, 0, 0, MessageType::Keepalive as u8];

/// One frame taken off the read buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A known, valid message.
    Message(Message),
    /// A frame of unknown type, skipped using its length (PROTOCOL.md section 1).
    Unknown {
        /// Header type byte.
        msg_type: u8,
        /// Payload length skipped.
        len: usize,
    },
}

/// Field number of `Hello.extensions` (PROTOCOL.md section 8).
pub const HELLO_EXTENSIONS_FIELD: u32 = 1001;

/// Size of field 1001 as a varint field: its tag takes 2 bytes, not 1.
fn field_1001_len(value: u64) -> usize {
    if value == 0 {
        0
    } else {
        2 + varint_len(value)
    }
}

/// Takes the next whole frame off the front of `buf`.
///
/// `Ok(None)` means more bytes are needed (nothing is consumed). An error
/// means the session must close; the buffer is then left as it was.
/// Messages of negotiated extensions are unknown frames here: see
/// [`decode_frame_with`].
pub fn decode_frame(buf: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
    decode_frame_with(buf, Extensions::NONE)
}

/// [`decode_frame`] for a session that negotiated `accept`: a message type
/// of an extension outside `accept` (SYNC, type 100, without
/// [`Extensions::SYNC`]) is an unknown frame, skipped and counted like any
/// other and never trusted (PROTOCOL.md section 8).
pub fn decode_frame_with(
    buf: &mut BytesMut,
    accept: Extensions,
) -> Result<Option<Frame>, DecodeError> {
    // Check the version as soon as its byte is here: a peer speaking another
    // protocol is closed at once instead of waiting for a "frame" that never ends.
    match buf.first() {
        None => return Ok(None),
        Some(&v) if v != PROTOCOL_VERSION => return Err(DecodeError::BadVersion(v)),
        Some(_) => {}
    }
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = usize::from(u16::from_be_bytes([buf[1], buf[2]]));
    if buf.len() < HEADER_LEN + len {
        return Ok(None);
    }
    let msg_type = buf[3];
    let payload = &buf[HEADER_LEN..HEADER_LEN + len];
    let frame = match MessageType::from_u8(msg_type) {
        Some(MessageType::Sync) if !accept.contains(Extensions::SYNC) => {
            Frame::Unknown { msg_type, len }
        }
        Some(t) => Frame::Message(decode_payload(t, payload)?),
        None => Frame::Unknown { msg_type, len },
    };
    buf.advance(HEADER_LEN + len);
    Ok(Some(frame))
}

/// Length of the whole frame starting at `at` in `buf` (its header must be
/// there): for walking buffers of frames the daemon encoded itself.
#[inline]
pub fn frame_len_at(buf: &[u8], at: usize) -> usize {
    HEADER_LEN + usize::from(u16::from_be_bytes([buf[at + 1], buf[at + 2]]))
}

/// The UPDATEs of a buffer of whole frames back to back (what the table's
/// update log and SUBSCRIBE dumps hold), decoded in order, without copying
/// or consuming the buffer.
///
/// Frames of other types and frames that do not decode are skipped, and a
/// partial frame at the end ends the iteration: the log only holds whole
/// UPDATE frames the daemon encoded itself, so neither happens there.
pub fn decode_updates(frames: &[u8]) -> Updates<'_> {
    Updates { rest: frames }
}

/// Iterator returned by [`decode_updates`].
#[derive(Clone, Debug)]
pub struct Updates<'a> {
    /// The frames not read yet.
    rest: &'a [u8],
}

impl Iterator for Updates<'_> {
    type Item = Update;

    fn next(&mut self) -> Option<Update> {
        loop {
            if self.rest.len() < HEADER_LEN {
                return None;
            }
            let end = frame_len_at(self.rest, 0);
            let Some((frame, rest)) = self.rest.split_at_checked(end) else {
                self.rest = &[];
                return None;
            };
            self.rest = rest;
            if frame[3] == MessageType::Update as u8 {
                if let Ok(update) = decode_update(&frame[HEADER_LEN..]) {
                    return Some(update);
                }
            }
        }
    }
}

/// Decodes and validates the payload of a message of type `t`.
pub fn decode_payload(t: MessageType, payload: &[u8]) -> Result<Message, DecodeError> {
    match t {
        MessageType::Hello => decode_hello(payload).map(Message::Hello),
        // KEEPALIVE is defined as empty; a payload is ignored, as the Go reader does.
        MessageType::Keepalive => Ok(Message::Keepalive),
        MessageType::Subscribe => decode_subscription(payload, "SUBSCRIBE").map(Message::Subscribe),
        MessageType::Unsubscribe => {
            decode_subscription(payload, "UNSUBSCRIBE").map(Message::Unsubscribe)
        }
        MessageType::Update => decode_update(payload).map(Message::Update),
        MessageType::Sync => decode_subscription(payload, "SYNC").map(Message::Sync),
    }
}

fn pb(msg: &'static str) -> impl Fn(&'static str) -> DecodeError {
    move |detail| DecodeError::Protobuf { msg, detail }
}

fn decode_hello(payload: &[u8]) -> Result<Hello, DecodeError> {
    let err = pb("HELLO");
    let mut hello = Hello {
        keepalive_secs: 0,
        is_server: false,
        extensions: 0,
    };
    let mut r = Reader::new(payload);
    while let Some((field, value)) = r.next_field().map_err(&err)? {
        match field {
            1 => hello.keepalive_secs = value.varint().map_err(&err)? as u32,
            2 => hello.is_server = value.varint().map_err(&err)? != 0,
            HELLO_EXTENSIONS_FIELD => hello.extensions = value.varint().map_err(&err)?,
            _ => {}
        }
    }
    Ok(hello)
}

fn decode_subscription(payload: &[u8], msg: &'static str) -> Result<Vni, DecodeError> {
    let err = pb(msg);
    let mut vni = 0u32;
    let mut r = Reader::new(payload);
    while let Some((field, value)) = r.next_field().map_err(&err)? {
        if field == 1 {
            vni = value.varint().map_err(&err)? as u32;
        }
    }
    Ok(Vni(vni))
}

/// Raw destination fields, merged across repeated occurrences like protobuf does.
#[derive(Default)]
struct RawDestination<'a> {
    ip_version: i32,
    prefix: &'a [u8],
    prefix_len: u32,
}

#[derive(Default)]
struct RawNextHop<'a> {
    addr: &'a [u8],
    target_vni: u32,
    kind: i32,
    nat_from: u32,
    nat_to: u32,
}

fn decode_update(payload: &[u8]) -> Result<Update, DecodeError> {
    let err = pb("UPDATE");
    let mut action = 0i32;
    let mut vni = 0u32;
    let mut dest: Option<RawDestination> = None;
    let mut hop: Option<RawNextHop> = None;
    let mut r = Reader::new(payload);
    while let Some((field, value)) = r.next_field().map_err(&err)? {
        match field {
            1 => action = value.varint().map_err(&err)? as i32,
            2 => vni = value.varint().map_err(&err)? as u32,
            3 => merge_destination(
                dest.get_or_insert_with(Default::default),
                value.bytes().map_err(&err)?,
            )?,
            4 => merge_next_hop(
                hop.get_or_insert_with(Default::default),
                value.bytes().map_err(&err)?,
            )?,
            _ => {}
        }
    }
    let action = match action {
        0 => Action::Add,
        1 => Action::Remove,
        other => return Err(DecodeError::UnknownAction(other)),
    };
    let dest = validate_destination(dest.ok_or(DecodeError::MissingDestination)?)?;
    let next_hop = validate_next_hop(hop.ok_or(DecodeError::MissingNextHop)?)?;
    Ok(Update {
        action,
        route: Route {
            vni: Vni(vni),
            dest,
            next_hop,
        },
    })
}

fn merge_destination<'a>(d: &mut RawDestination<'a>, payload: &'a [u8]) -> Result<(), DecodeError> {
    let err = pb("UPDATE.destination");
    let mut r = Reader::new(payload);
    while let Some((field, value)) = r.next_field().map_err(&err)? {
        match field {
            1 => d.ip_version = value.varint().map_err(&err)? as i32,
            2 => d.prefix = value.bytes().map_err(&err)?,
            3 => d.prefix_len = value.varint().map_err(&err)? as u32,
            _ => {}
        }
    }
    Ok(())
}

fn merge_next_hop<'a>(h: &mut RawNextHop<'a>, payload: &'a [u8]) -> Result<(), DecodeError> {
    let err = pb("UPDATE.nextHop");
    let mut r = Reader::new(payload);
    while let Some((field, value)) = r.next_field().map_err(&err)? {
        match field {
            1 => h.addr = value.bytes().map_err(&err)?,
            2 => h.target_vni = value.varint().map_err(&err)? as u32,
            3 => h.kind = value.varint().map_err(&err)? as i32,
            4 => h.nat_from = value.varint().map_err(&err)? as u32,
            5 => h.nat_to = value.varint().map_err(&err)? as u32,
            _ => {}
        }
    }
    Ok(())
}

fn validate_destination(d: RawDestination) -> Result<Destination, DecodeError> {
    let addr = Address::from_slice(d.prefix).ok_or(DecodeError::BadAddressLength {
        field: "destination.prefix",
        len: d.prefix.len(),
    })?;
    let expected_version = i32::from(addr.is_ipv6());
    if d.ip_version != expected_version {
        return Err(DecodeError::IpVersionMismatch {
            ip_version: d.ip_version,
            len: d.prefix.len(),
        });
    }
    if d.prefix_len > u32::from(addr.bit_width()) {
        return Err(DecodeError::PrefixTooLong {
            len: d.prefix_len,
            max: addr.bit_width(),
        });
    }
    Ok(Destination {
        addr,
        prefix_len: d.prefix_len as u8,
    })
}

fn validate_next_hop(h: RawNextHop) -> Result<NextHop, DecodeError> {
    let addr = Address::from_slice(h.addr).ok_or(DecodeError::BadAddressLength {
        field: "nextHop.targetAddress",
        len: h.addr.len(),
    })?;
    let port = |p: u32| u16::try_from(p).map_err(|_| DecodeError::PortOutOfRange(p));
    let (nat_from, nat_to) = (port(h.nat_from)?, port(h.nat_to)?);
    let kind = NextHopType(h.kind);
    if kind == NextHopType::NAT && nat_from > nat_to {
        return Err(DecodeError::PortRangeInverted {
            from: nat_from,
            to: nat_to,
        });
    }
    Ok(NextHop {
        addr,
        target_vni: h.target_vni,
        kind,
        nat_from,
        nat_to,
    })
}

/// Appends one whole frame carrying `msg` to `out`.
pub fn encode_message(msg: &Message, out: &mut BytesMut) {
    match msg {
        Message::Hello(h) => {
            // The extensions field is omitted when zero (proto3), so a HELLO
            // without extensions is byte-identical to a reference peer's.
            let len = varint_field_len(u64::from(h.keepalive_secs))
                + varint_field_len(u64::from(h.is_server))
                + field_1001_len(h.extensions);
            put_header(out, MessageType::Hello, len);
            put_varint_field(out, 1, u64::from(h.keepalive_secs));
            put_varint_field(out, 2, u64::from(h.is_server));
            put_varint_field(out, HELLO_EXTENSIONS_FIELD, h.extensions);
        }
        Message::Keepalive => out.put_slice(&KEEPALIVE_FRAME),
        Message::Subscribe(vni) | Message::Unsubscribe(vni) | Message::Sync(vni) => {
            put_header(out, msg.message_type(), varint_field_len(u64::from(vni.0)));
            put_varint_field(out, 1, u64::from(vni.0));
        }
        Message::Update(u) => encode_update(u.action, &u.route, out),
    }
}

/// Appends one UPDATE frame to `out`. This is the hot path of dumps and fan-out.
pub fn encode_update(action: Action, route: &Route, out: &mut BytesMut) {
    let dest_len = destination_len(&route.dest);
    let hop_len = next_hop_len(&route.next_hop);
    let action_value = match action {
        Action::Add => 0,
        Action::Remove => 1,
    };
    let len = varint_field_len(action_value)
        + varint_field_len(u64::from(route.vni.0))
        + len_field_len(dest_len)
        + len_field_len(hop_len);
    debug_assert!(len <= MAX_SEND_PAYLOAD);
    out.reserve(HEADER_LEN + len);
    put_header(out, MessageType::Update, len);
    put_varint_field(out, 1, action_value);
    put_varint_field(out, 2, u64::from(route.vni.0));
    put_len_prefix(out, 3, dest_len);
    put_varint_field(out, 1, u64::from(route.dest.addr.is_ipv6()));
    put_len_prefix(out, 2, route.dest.addr.as_bytes().len());
    out.put_slice(route.dest.addr.as_bytes());
    put_varint_field(out, 3, u64::from(route.dest.prefix_len));
    put_len_prefix(out, 4, hop_len);
    let h = &route.next_hop;
    put_len_prefix(out, 1, h.addr.as_bytes().len());
    out.put_slice(h.addr.as_bytes());
    put_varint_field(out, 2, u64::from(h.target_vni));
    put_varint_field(out, 3, enum_to_varint(h.kind.0));
    put_varint_field(out, 4, u64::from(h.nat_from));
    put_varint_field(out, 5, u64::from(h.nat_to));
}

fn destination_len(d: &Destination) -> usize {
    varint_field_len(u64::from(d.addr.is_ipv6()))
        + len_field_len(d.addr.as_bytes().len())
        + varint_field_len(u64::from(d.prefix_len))
}

fn next_hop_len(h: &NextHop) -> usize {
    len_field_len(h.addr.as_bytes().len())
        + varint_field_len(u64::from(h.target_vni))
        + varint_field_len(enum_to_varint(h.kind.0))
        + varint_field_len(u64::from(h.nat_from))
        + varint_field_len(u64::from(h.nat_to))
}

fn put_header(out: &mut BytesMut, t: MessageType, len: usize) {
    debug_assert!(len <= MAX_SEND_PAYLOAD, "payload of {len} bytes");
    out.put_u8(PROTOCOL_VERSION);
    out.put_u16(len as u16);
    out.put_u8(t as u8);
}
