//! Property tests of the framing codec:
//!
//! * (a) every valid message survives encode + [`decode_frame`], which takes
//!   exactly its frame off the buffer;
//! * (b) our payload bytes are identical to prost's encoding of the same
//!   `metalbond_proto::wire` message;
//! * (c) on arbitrary prost-encoded UPDATEs (and on arbitrary protobuf field
//!   soups) our decoder agrees with prost + the validation rules of
//!   PROTOCOL.md section 2;
//! * (d) arbitrary bytes, split at arbitrary points, never panic, never loop,
//!   and decode the same however they are split.

use bytes::{BufMut, BytesMut};
use metalbond_proto::wire as pb;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use prost::Message as _;

use super::codec::{
    decode_frame, decode_frame_with, encode_message, Frame, HEADER_LEN, MAX_SEND_PAYLOAD,
};
use super::message::{DecodeError, Extensions, Hello, Message, Update};
use super::{Action, Address, Destination, NextHop, NextHopType, Vni};

// ---------------------------------------------------------------------------
// Strategies for valid messages
// ---------------------------------------------------------------------------

/// A u32 biased towards zero (omitted on the wire) and the varint length edges.
fn arb_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        2 => Just(0u32),
        1 => Just(u32::MAX),
        1 => prop::sample::select(vec![1u32, 127, 128, 16383, 16384, (1 << 21) - 1, 1 << 21, (1 << 28) - 1, 1 << 28]),
        3 => 0u32..300,
        3 => any::<u32>(),
    ]
}

fn arb_address() -> impl Strategy<Value = Address> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|b| Address::from_slice(&b).unwrap()),
        any::<[u8; 16]>().prop_map(|b| Address::from_slice(&b).unwrap()),
    ]
}

fn arb_destination() -> impl Strategy<Value = Destination> {
    prop_oneof![
        (any::<[u8; 4]>(), 0u8..=32).prop_map(|(b, l)| Destination::new(
            Address::from_slice(&b).unwrap(),
            l
        )
        .unwrap()),
        (any::<[u8; 16]>(), 0u8..=128).prop_map(|(b, l)| Destination::new(
            Address::from_slice(&b).unwrap(),
            l
        )
        .unwrap()),
    ]
}

fn arb_kind() -> impl Strategy<Value = NextHopType> {
    prop_oneof![
        3 => Just(NextHopType::STANDARD),
        3 => Just(NextHopType::NAT),
        2 => Just(NextHopType::LOADBALANCER_TARGET),
        1 => Just(NextHopType(-1)),
        2 => any::<i32>().prop_map(NextHopType),
    ]
}

fn arb_port() -> impl Strategy<Value = u16> {
    prop_oneof![Just(0u16), Just(u16::MAX), any::<u16>()]
}

fn arb_next_hop() -> impl Strategy<Value = NextHop> {
    (arb_address(), arb_u32(), arb_kind(), arb_port(), arb_port()).prop_map(
        |(addr, target_vni, kind, a, b)| {
            // Only NAT ranges must be ordered; other types keep what was sent.
            let (nat_from, nat_to) = if kind == NextHopType::NAT {
                (a.min(b), a.max(b))
            } else {
                (a, b)
            };
            NextHop {
                addr,
                target_vni,
                kind,
                nat_from,
                nat_to,
            }
        },
    )
}

fn arb_update() -> impl Strategy<Value = Update> {
    (any::<bool>(), arb_u32(), arb_destination(), arb_next_hop()).prop_map(
        |(remove, vni, dest, hop)| {
            let action = if remove { Action::Remove } else { Action::Add };
            Update::new(action, Vni(vni), dest, hop)
        },
    )
}

/// Any valid message.
fn arb_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        1 => (arb_u32(), any::<bool>(), prop_oneof![3 => Just(0u64), 1 => any::<u64>()]).prop_map(
            |(keepalive_secs, is_server, extensions)| Message::Hello(Hello {
                keepalive_secs,
                is_server,
                extensions,
            })
        ),
        1 => Just(Message::Keepalive),
        1 => arb_u32().prop_map(|v| Message::Subscribe(Vni(v))),
        1 => arb_u32().prop_map(|v| Message::Unsubscribe(Vni(v))),
        4 => arb_update().prop_map(Message::Update),
    ]
}

fn encode(msg: &Message) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_message(msg, &mut out);
    out.to_vec()
}

fn frame(msg_type: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![1u8];
    out.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
    out.push(msg_type);
    out.extend_from_slice(payload);
    out
}

/// Decodes one frame that fills all of `bytes`.
fn decode_one(bytes: &[u8]) -> Result<Message, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let r = decode_frame(&mut buf);
    match r {
        Ok(Some(Frame::Message(m))) => {
            assert!(buf.is_empty());
            Ok(m)
        }
        Err(e) => {
            assert_eq!(&buf[..], bytes, "an error leaves the buffer as it was");
            Err(e)
        }
        other => panic!("unexpected {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Our types <-> prost types
// ---------------------------------------------------------------------------

fn to_pb_update(u: &Update) -> pb::Update {
    let r = &u.route;
    pb::Update {
        action: match u.action {
            Action::Add => 0,
            Action::Remove => 1,
        },
        vni: r.vni.0,
        destination: Some(pb::Destination {
            ip_version: i32::from(r.dest.addr.is_ipv6()),
            prefix: r.dest.addr.as_bytes().to_vec(),
            prefix_length: u32::from(r.dest.prefix_len),
        }),
        next_hop: Some(pb::NextHop {
            target_address: r.next_hop.addr.as_bytes().to_vec(),
            target_vni: r.next_hop.target_vni,
            r#type: r.next_hop.kind.0,
            nat_port_range_from: u32::from(r.next_hop.nat_from),
            nat_port_range_to: u32::from(r.next_hop.nat_to),
        }),
    }
}

/// HELLO with the extensions field of PROTOCOL.md section 8, as prost sees
/// it (the wire `.proto` stays the reference's, without field 1001).
#[derive(Clone, PartialEq, prost::Message)]
struct HelloExt {
    #[prost(uint32, tag = "1")]
    keepalive_interval: u32,
    #[prost(bool, tag = "2")]
    is_server: bool,
    #[prost(uint64, tag = "1001")]
    extensions: u64,
}

/// prost's encoding of the payload of `msg`.
fn prost_payload(msg: &Message) -> Vec<u8> {
    match msg {
        Message::Hello(h) => HelloExt {
            keepalive_interval: h.keepalive_secs,
            is_server: h.is_server,
            extensions: h.extensions,
        }
        .encode_to_vec(),
        Message::Keepalive => Vec::new(),
        Message::Subscribe(v) | Message::Unsubscribe(v) | Message::Sync(v) => {
            pb::Subscription { vni: v.0 }.encode_to_vec()
        }
        Message::Update(u) => to_pb_update(u).encode_to_vec(),
    }
}

/// The reference model of UPDATE validation (PROTOCOL.md section 2), written
/// independently of the codec: the decoded UPDATE when `u` is valid, or
/// every rule it breaks. The codec may report any one of them.
fn model(u: &pb::Update) -> Result<Update, Vec<DecodeError>> {
    let mut broken = Vec::new();
    let action = match u.action {
        0 => Some(Action::Add),
        1 => Some(Action::Remove),
        other => {
            broken.push(DecodeError::UnknownAction(other));
            None
        }
    };
    let dest = match &u.destination {
        None => {
            broken.push(DecodeError::MissingDestination);
            None
        }
        Some(d) => match Address::from_slice(&d.prefix) {
            None => {
                broken.push(DecodeError::BadAddressLength {
                    field: "destination.prefix",
                    len: d.prefix.len(),
                });
                None
            }
            Some(addr) => {
                let width = if d.prefix.len() == 16 { 128u8 } else { 32 };
                let version_ok = d.ip_version == if d.prefix.len() == 16 { 1 } else { 0 };
                if !version_ok {
                    broken.push(DecodeError::IpVersionMismatch {
                        ip_version: d.ip_version,
                        len: d.prefix.len(),
                    });
                }
                if d.prefix_length > u32::from(width) {
                    broken.push(DecodeError::PrefixTooLong {
                        len: d.prefix_length,
                        max: width,
                    });
                    None
                } else if version_ok {
                    Some(Destination {
                        addr,
                        prefix_len: d.prefix_length as u8,
                    })
                } else {
                    None
                }
            }
        },
    };
    let hop = match &u.next_hop {
        None => {
            broken.push(DecodeError::MissingNextHop);
            None
        }
        Some(h) => {
            let addr = Address::from_slice(&h.target_address);
            if addr.is_none() {
                broken.push(DecodeError::BadAddressLength {
                    field: "nextHop.targetAddress",
                    len: h.target_address.len(),
                });
            }
            let (from, to) = (h.nat_port_range_from, h.nat_port_range_to);
            for p in [from, to] {
                if p > 65535 {
                    broken.push(DecodeError::PortOutOfRange(p));
                }
            }
            let ports_ok = from <= 65535 && to <= 65535;
            let inverted = ports_ok && h.r#type == 1 && from > to;
            if inverted {
                broken.push(DecodeError::PortRangeInverted {
                    from: from as u16,
                    to: to as u16,
                });
            }
            match addr {
                Some(addr) if ports_ok && !inverted => Some(NextHop {
                    addr,
                    target_vni: h.target_vni,
                    kind: NextHopType(h.r#type),
                    nat_from: from as u16,
                    nat_to: to as u16,
                }),
                _ => None,
            }
        }
    };
    match (action, dest, hop) {
        (Some(action), Some(dest), Some(hop)) if broken.is_empty() => {
            Ok(Update::new(action, Vni(u.vni), dest, hop))
        }
        _ => {
            assert!(!broken.is_empty(), "model rejected {u:?} without a reason");
            Err(broken)
        }
    }
}

/// Checks our decoding of an UPDATE payload against prost + the model.
fn check_update_against_prost(payload: &[u8]) -> Result<(), TestCaseError> {
    let ours = decode_one(&frame(5, payload));
    match pb::Update::decode(payload) {
        Err(prost_err) => {
            prop_assert!(
                matches!(ours, Err(DecodeError::Protobuf { .. })),
                "prost rejects ({prost_err}) but we give {ours:?}"
            );
        }
        Ok(u) => match (model(&u), ours) {
            (Ok(expected), Ok(got)) => {
                prop_assert_eq!(got, Message::Update(expected));
            }
            (Err(broken), Err(e)) => {
                prop_assert!(
                    broken.contains(&e),
                    "we reject with {e:?}, the rules broken are {broken:?}"
                );
            }
            (Ok(expected), Err(e)) => {
                prop_assert!(false, "valid UPDATE {expected:?} ({u:?}) rejected: {e:?}");
            }
            (Err(broken), Ok(got)) => {
                prop_assert!(
                    false,
                    "invalid UPDATE {u:?} (breaks {broken:?}) accepted as {got:?}"
                );
            }
        },
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Strategies for arbitrary prost messages and raw protobuf
// ---------------------------------------------------------------------------

fn arb_enum() -> impl Strategy<Value = i32> {
    prop_oneof![4 => Just(0), 3 => Just(1), 1 => Just(2), 1 => Just(-1), 2 => any::<i32>()]
}

fn arb_raw_address() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => vec(any::<u8>(), 4),
        3 => vec(any::<u8>(), 16),
        2 => vec(any::<u8>(), 0..40),
    ]
}

fn arb_raw_port() -> impl Strategy<Value = u32> {
    prop_oneof![3 => 0u32..=65535, 2 => 65530u32..=65540, 1 => any::<u32>()]
}

fn arb_pb_update() -> impl Strategy<Value = pb::Update> {
    let dest = (
        arb_enum(),
        arb_raw_address(),
        prop_oneof![0u32..=32, 0u32..=128, 120u32..140, any::<u32>()],
    )
        .prop_map(|(ip_version, prefix, prefix_length)| pb::Destination {
            ip_version,
            prefix,
            prefix_length,
        });
    let hop = (
        arb_raw_address(),
        arb_u32(),
        arb_enum(),
        arb_raw_port(),
        arb_raw_port(),
    )
        .prop_map(
            |(target_address, target_vni, r#type, from, to)| pb::NextHop {
                target_address,
                target_vni,
                r#type,
                nat_port_range_from: from,
                nat_port_range_to: to,
            },
        );
    (
        arb_enum(),
        arb_u32(),
        prop::option::weighted(0.9, dest),
        prop::option::weighted(0.9, hop),
    )
        .prop_map(|(action, vni, destination, next_hop)| pb::Update {
            action,
            vni,
            destination,
            next_hop,
        })
}

/// One raw protobuf field, well-formed or not.
#[derive(Clone, Debug)]
enum Raw {
    Varint(u32, u64),
    Fixed64(u32, u64),
    Fixed32(u32, u32),
    Bytes(u32, Vec<u8>),
    Group(u32, Vec<Raw>),
    /// A stray end-group tag.
    EndGroup(u32),
    /// Anything.
    Garbage(Vec<u8>),
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, field: u32, wire_type: u32) {
    put_varint(out, u64::from(field) << 3 | u64::from(wire_type));
}

fn encode_raw(fields: &[Raw], out: &mut Vec<u8>) {
    for f in fields {
        match f {
            Raw::Varint(n, v) => {
                put_key(out, *n, 0);
                put_varint(out, *v);
            }
            Raw::Fixed64(n, v) => {
                put_key(out, *n, 1);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Raw::Fixed32(n, v) => {
                put_key(out, *n, 5);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Raw::Bytes(n, b) => {
                put_key(out, *n, 2);
                put_varint(out, b.len() as u64);
                out.extend_from_slice(b);
            }
            Raw::Group(n, inner) => {
                put_key(out, *n, 3);
                encode_raw(inner, out);
                put_key(out, *n, 4);
            }
            Raw::EndGroup(n) => put_key(out, *n, 4),
            Raw::Garbage(b) => out.extend_from_slice(b),
        }
    }
}

/// Field numbers: mostly the known ones (1 to 5), some unknown, some huge
/// (up to 2^32 - 1, beyond the protobuf maximum field number).
fn arb_field_number() -> impl Strategy<Value = u32> {
    prop_oneof![6 => 1u32..=5, 2 => 6u32..=20, 1 => 1u32..(1 << 29), 1 => prop::sample::select(vec![0u32, (1 << 29) - 1, 1 << 29, u32::MAX])]
}

/// A soup of raw fields; bytes fields often hold a nested soup, so that
/// UPDATE.destination and UPDATE.nextHop get interesting contents. Groups
/// nest at most a few levels (far below either decoder's depth limit).
fn arb_raw_fields() -> impl Strategy<Value = Vec<Raw>> {
    let leaf = prop_oneof![
        4 => (arb_field_number(), prop_oneof![any::<u64>(), 0u64..300, Just(u64::MAX)]).prop_map(|(n, v)| Raw::Varint(n, v)),
        1 => (arb_field_number(), any::<u64>()).prop_map(|(n, v)| Raw::Fixed64(n, v)),
        1 => (arb_field_number(), any::<u32>()).prop_map(|(n, v)| Raw::Fixed32(n, v)),
        3 => (arb_field_number(), arb_raw_address()).prop_map(|(n, b)| Raw::Bytes(n, b)),
        1 => arb_field_number().prop_map(Raw::EndGroup),
        1 => vec(any::<u8>(), 0..6).prop_map(Raw::Garbage),
    ];
    let field = leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            3 => (arb_field_number(), vec(inner.clone(), 0..6)).prop_map(|(n, fs)| {
                let mut b = Vec::new();
                encode_raw(&fs, &mut b);
                Raw::Bytes(n, b)
            }),
            1 => (arb_field_number(), vec(inner, 0..4)).prop_map(|(n, fs)| Raw::Group(n, fs)),
        ]
    });
    vec(field, 0..8)
}

/// UPDATE payloads: a valid-ish prost UPDATE with raw fields before and after.
fn arb_update_soup() -> impl Strategy<Value = Vec<u8>> {
    (
        arb_raw_fields(),
        arb_pb_update(),
        any::<bool>(),
        arb_raw_fields(),
    )
        .prop_map(|(before, u, include, after)| {
            let mut out = Vec::new();
            encode_raw(&before, &mut out);
            if include {
                out.extend(u.encode_to_vec());
            }
            encode_raw(&after, &mut out);
            out
        })
}

// ---------------------------------------------------------------------------
// Stream decoding
// ---------------------------------------------------------------------------

/// What a reader makes of a byte stream arriving in `chunks`: the frames in
/// order, then the error that closed the session (if any), then what was
/// left in the buffer. Asserts that the decoder always makes progress.
fn run_stream(chunks: &[&[u8]]) -> (Vec<Frame>, Option<DecodeError>, Vec<u8>) {
    let total: usize = chunks.iter().map(|c| c.len()).sum();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut calls = 0usize;
    for chunk in chunks {
        buf.put_slice(chunk);
        loop {
            calls += 1;
            // Each call either consumes a whole frame (4 bytes at least) or
            // stops the inner loop, so this bounds the work.
            assert!(
                calls <= total / HEADER_LEN + chunks.len() + 1,
                "decoder does not make progress"
            );
            let before = buf.clone();
            match decode_frame(&mut buf) {
                Ok(Some(f)) => {
                    let used = before.len() - buf.len();
                    assert!(
                        (HEADER_LEN..=HEADER_LEN + 65535).contains(&used),
                        "consumed {used} bytes"
                    );
                    assert_eq!(&buf[..], &before[used..], "only the front is consumed");
                    let declared = usize::from(u16::from_be_bytes([before[1], before[2]]));
                    assert_eq!(used, HEADER_LEN + declared, "exactly one frame is consumed");
                    frames.push(f);
                }
                Ok(None) => {
                    assert_eq!(buf, before, "nothing is consumed while waiting");
                    assert!(
                        buf.len() < HEADER_LEN
                            || buf.len()
                                < HEADER_LEN + usize::from(u16::from_be_bytes([buf[1], buf[2]])),
                        "a whole frame is buffered but not decoded"
                    );
                    break;
                }
                Err(e) => {
                    assert_eq!(buf, before, "an error leaves the buffer as it was");
                    return (frames, Some(e), buf.to_vec());
                }
            }
        }
    }
    (frames, None, buf.to_vec())
}

/// Splits `data` at the given points.
fn split_at_points<'a>(data: &'a [u8], points: &[Index]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = points.iter().map(|i| i.index(data.len() + 1)).collect();
    cuts.push(0);
    cuts.push(data.len());
    cuts.sort_unstable();
    cuts.windows(2).map(|w| &data[w[0]..w[1]]).collect()
}

/// Bytes that look like frames often enough to reach the payload decoders.
fn arb_stream() -> impl Strategy<Value = Vec<u8>> {
    let payload = prop_oneof![
        2 => vec(any::<u8>(), 0..48),
        3 => arb_update_soup(),
        2 => arb_message().prop_map(|m| encode(&m)[HEADER_LEN..].to_vec()),
    ];
    let piece = (
        prop_oneof![20 => Just(1u8), 1 => any::<u8>()],
        prop_oneof![10 => 1u8..=5, 1 => any::<u8>()],
        payload,
        prop_oneof![10 => Just(None), 1 => any::<u16>().prop_map(Some)],
    )
        .prop_map(|(version, t, p, len)| {
            let len = len.unwrap_or(p.len() as u16);
            let mut out = vec![version];
            out.extend_from_slice(&len.to_be_bytes());
            out.push(t);
            out.extend_from_slice(&p);
            out
        });
    prop_oneof![
        1 => vec(any::<u8>(), 0..256),
        4 => vec(piece, 0..12).prop_map(|ps| ps.concat()),
    ]
}

// ---------------------------------------------------------------------------
// The properties
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// (a) Encode then decode gives the same message and consumes exactly the frame.
    #[test]
    fn encode_then_decode_round_trips(msg in arb_message(), trailing in vec(any::<u8>(), 0..8)) {
        let mut buf = BytesMut::new();
        encode_message(&msg, &mut buf);
        let len = usize::from(u16::from_be_bytes([buf[1], buf[2]]));
        prop_assert_eq!(buf.len(), HEADER_LEN + len, "header length");
        prop_assert!(len <= MAX_SEND_PAYLOAD, "payload of {} bytes", len);
        prop_assert_eq!(buf[3], msg.message_type() as u8);
        buf.put_slice(&trailing);
        let got = decode_frame(&mut buf);
        prop_assert_eq!(got, Ok(Some(Frame::Message(msg))));
        prop_assert_eq!(&buf[..], &trailing[..], "exactly the frame is consumed");
    }

    /// (a) A batch of frames in one buffer, arriving in arbitrary pieces, comes out whole and in order.
    #[test]
    fn batches_survive_arbitrary_splits(msgs in vec(arb_message(), 1..24), points in vec(any::<Index>(), 0..12)) {
        let mut data = BytesMut::new();
        for m in &msgs {
            encode_message(m, &mut data);
        }
        let (frames, err, rest) = run_stream(&split_at_points(&data, &points));
        prop_assert_eq!(err, None);
        prop_assert!(rest.is_empty());
        let expected: Vec<Frame> = msgs.into_iter().map(Frame::Message).collect();
        prop_assert_eq!(frames, expected);
    }

    /// (b) Our payload encoding is byte-identical to prost's.
    #[test]
    fn payload_encoding_matches_prost(msg in arb_message()) {
        let ours = encode(&msg);
        prop_assert_eq!(&ours[HEADER_LEN..], &prost_payload(&msg)[..], "{:?}", msg);
    }

    /// (b) Whatever prost encodes as HELLO or Subscription, we decode to the same values.
    #[test]
    fn hello_and_subscription_decode_like_prost(ka in arb_u32(), is_server in any::<bool>(), vni in arb_u32()) {
        let h = pb::Hello { keepalive_interval: ka, is_server };
        prop_assert_eq!(
            decode_one(&frame(1, &h.encode_to_vec())),
            Ok(Message::Hello(Hello { keepalive_secs: ka, is_server, extensions: 0 }))
        );
        let s = pb::Subscription { vni }.encode_to_vec();
        prop_assert_eq!(decode_one(&frame(3, &s)), Ok(Message::Subscribe(Vni(vni))));
        prop_assert_eq!(decode_one(&frame(4, &s)), Ok(Message::Unsubscribe(Vni(vni))));
    }

    /// (c) On any prost-encoded UPDATE, we accept exactly what prost decodes and
    /// the rules allow, with the same values, and re-encode it byte for byte.
    #[test]
    fn prost_encoded_updates_decode_like_prost_plus_rules(u in arb_pb_update()) {
        let payload = u.encode_to_vec();
        check_update_against_prost(&payload)?;
        if let Ok(msg) = decode_one(&frame(5, &payload)) {
            prop_assert_eq!(&encode(&msg)[HEADER_LEN..], &payload[..], "re-encoding differs");
        }
    }

    /// (c) The same on raw protobuf soups: unknown fields of every wire type,
    /// groups, repeated and merged fields, wrong wire types, garbage.
    #[test]
    fn update_soups_decode_like_prost_plus_rules(payload in arb_update_soup()) {
        check_update_against_prost(&payload)?;
    }

    /// (c) HELLO and SUBSCRIBE soups: we accept what prost accepts, with its values.
    #[test]
    fn hello_and_subscription_soups_decode_like_prost(fields in arb_raw_fields()) {
        let mut payload = Vec::new();
        encode_raw(&fields, &mut payload);
        let ours = decode_one(&frame(1, &payload));
        match HelloExt::decode(&payload[..]) {
            Ok(h) => prop_assert_eq!(ours, Ok(Message::Hello(Hello {
                keepalive_secs: h.keepalive_interval,
                is_server: h.is_server,
                extensions: h.extensions,
            }))),
            Err(_) => prop_assert!(matches!(ours, Err(DecodeError::Protobuf { .. })), "{:?}", ours),
        }
        let ours = decode_one(&frame(3, &payload));
        match pb::Subscription::decode(&payload[..]) {
            Ok(s) => prop_assert_eq!(ours, Ok(Message::Subscribe(Vni(s.vni)))),
            Err(_) => prop_assert!(matches!(ours, Err(DecodeError::Protobuf { .. })), "{:?}", ours),
        }
    }

    /// (b) A HELLO without extensions is byte-identical to the reference's
    /// (prost with the reference `.proto`); with extensions, a reference
    /// decoder reads the same interval and flag and ignores field 1001.
    #[test]
    fn hello_extensions_are_invisible_to_reference_decoders(ka in arb_u32(), is_server in any::<bool>(), ext in any::<u64>()) {
        let plain = encode(&Message::Hello(Hello { keepalive_secs: ka, is_server, extensions: 0 }));
        let reference = pb::Hello { keepalive_interval: ka, is_server }.encode_to_vec();
        prop_assert_eq!(&plain[HEADER_LEN..], &reference[..]);
        let offered = encode(&Message::Hello(Hello { keepalive_secs: ka, is_server, extensions: ext }));
        let seen = pb::Hello::decode(&offered[HEADER_LEN..]).unwrap();
        prop_assert_eq!(seen, pb::Hello { keepalive_interval: ka, is_server });
    }

    /// SYNC (type 100) decodes only where negotiated; elsewhere, whatever
    /// its payload, it is an unknown frame skipped by its length.
    #[test]
    fn sync_frames_are_unknown_unless_negotiated(vni in arb_u32(), payload in vec(any::<u8>(), 0..40)) {
        let sync = encode(&Message::Sync(Vni(vni)));
        prop_assert_eq!(sync[3], 100);
        prop_assert_eq!(&sync[HEADER_LEN..], &pb::Subscription { vni }.encode_to_vec()[..]);
        let mut buf = BytesMut::from(&sync[..]);
        prop_assert_eq!(
            decode_frame_with(&mut buf, Extensions::SYNC),
            Ok(Some(Frame::Message(Message::Sync(Vni(vni)))))
        );
        for bytes in [sync.clone(), frame(100, &payload)] {
            let mut buf = BytesMut::from(&bytes[..]);
            prop_assert_eq!(
                decode_frame(&mut buf),
                Ok(Some(Frame::Unknown { msg_type: 100, len: bytes.len() - HEADER_LEN }))
            );
            prop_assert!(buf.is_empty());
        }
    }

    /// (d) Arbitrary bytes never panic or stall, and decode the same however they are split.
    #[test]
    fn arbitrary_streams_decode_the_same_however_split(data in arb_stream(), points in vec(any::<Index>(), 0..16)) {
        let whole = run_stream(&[&data[..]]);
        let split = run_stream(&split_at_points(&data, &points));
        prop_assert_eq!(&split.0, &whole.0, "frames");
        prop_assert_eq!(&split.1, &whole.1, "error");
        if whole.1.is_none() {
            prop_assert_eq!(&split.2, &whole.2, "leftover");
        }
        // Byte by byte, too.
        let bytes: Vec<&[u8]> = data.chunks(1).collect();
        let single = run_stream(&bytes);
        prop_assert_eq!(&single.0, &whole.0);
        prop_assert_eq!(&single.1, &whole.1);
        // Every decoded message re-encodes to something that decodes to itself.
        for f in &whole.0 {
            if let Frame::Message(m) = f {
                prop_assert_eq!(decode_one(&encode(m)), Ok(*m));
            }
        }
    }
}
