//! Unit tests of the framing codec: the captured Go-reference frames, frame
//! reassembly, and every validation rule of PROTOCOL.md sections 1 and 2.

use std::net::{Ipv4Addr, Ipv6Addr};

use bytes::{BufMut, BytesMut};
use metalbond_proto::wire as pb;
use prost::Message as _;

use super::codec::{
    decode_frame, decode_updates, encode_message, encode_update, Frame, HEADER_LEN,
    MAX_SEND_PAYLOAD,
};
use super::message::{DecodeError, Hello, Message, MessageType, Update};
use super::{Action, Address, Destination, NextHop, NextHopType, Vni};

/// The Go-reference capture, copied into the repository so a fresh clone
/// tests it; [`vectors_are_the_shared_capture`] keeps the copy honest.
const VECTORS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/vectors/go-reference-frames.txt"
);

/// The original capture in the project's shared folder (beside the repository).
const SHARED_VECTORS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/vectors/go-reference-frames.txt"
);

#[test]
fn vectors_are_the_shared_capture() {
    // Where the shared folder is present (CI, the project's machines), the
    // copy must be identical to it.
    if let Ok(shared) = std::fs::read_to_string(SHARED_VECTORS) {
        let copy = std::fs::read_to_string(VECTORS).expect("the in-repo copy of the vectors");
        assert_eq!(
            copy, shared,
            "tests/vectors/go-reference-frames.txt differs from {SHARED_VECTORS}"
        );
    }
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len() % 2 == 0, "odd-length hex {s:?}");
    (0..s.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&s[i..i + 2], 16).unwrap_or_else(|e| panic!("bad hex {s:?}: {e}"))
        })
        .collect()
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> Address {
    Address::from(Ipv4Addr::new(a, b, c, d))
}

fn v6(s: &str) -> Address {
    Address::from(s.parse::<Ipv6Addr>().unwrap())
}

fn dest(addr: Address, len: u8) -> Destination {
    Destination::new(addr, len).expect("valid test destination")
}

fn hop(addr: Address, kind: NextHopType, nat_from: u16, nat_to: u16) -> NextHop {
    NextHop {
        addr,
        target_vni: 0,
        kind,
        nat_from,
        nat_to,
    }
}

fn update(action: Action, vni: u32, d: Destination, h: NextHop) -> Message {
    Message::Update(Update::new(action, Vni(vni), d, h))
}

fn hello(keepalive_secs: u32, is_server: bool) -> Message {
    Message::Hello(Hello {
        keepalive_secs,
        is_server,
        extensions: 0,
    })
}

/// A whole frame around `payload`.
fn frame(msg_type: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![1u8];
    out.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
    out.push(msg_type);
    out.extend_from_slice(payload);
    out
}

fn encode(msg: &Message) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_message(msg, &mut out);
    out.to_vec()
}

/// Decodes exactly one frame that fills all of `bytes`.
fn decode_one(bytes: &[u8]) -> Result<Frame, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    match decode_frame(&mut buf) {
        Ok(Some(f)) => {
            assert!(buf.is_empty(), "frame left {} bytes behind", buf.len());
            Ok(f)
        }
        Ok(None) => panic!("complete frame reported as incomplete: {bytes:02x?}"),
        Err(e) => {
            assert_eq!(&buf[..], bytes, "an error must leave the buffer untouched");
            Err(e)
        }
    }
}

fn decode_msg(bytes: &[u8]) -> Result<Message, DecodeError> {
    match decode_one(bytes)? {
        Frame::Message(m) => Ok(m),
        other => panic!("expected a message, got {other:?}"),
    }
}

/// Decodes an UPDATE payload given as a prost message.
fn decode_pb_update(u: &pb::Update) -> Result<Message, DecodeError> {
    decode_msg(&frame(5, &u.encode_to_vec()))
}

/// A valid prost UPDATE to derive invalid ones from: ADD vni 7
/// 10.0.0.0/8 via 2001:db8::1, NAT 100-200.
fn base_update() -> pb::Update {
    pb::Update {
        action: 0,
        vni: 7,
        destination: Some(pb::Destination {
            ip_version: 0,
            prefix: vec![10, 0, 0, 0],
            prefix_length: 8,
        }),
        next_hop: Some(pb::NextHop {
            target_address: v6("2001:db8::1").as_bytes().to_vec(),
            target_vni: 0,
            r#type: 1,
            nat_port_range_from: 100,
            nat_port_range_to: 200,
        }),
    }
}

fn base_message() -> Message {
    update(
        Action::Add,
        7,
        dest(v4(10, 0, 0, 0), 8),
        hop(v6("2001:db8::1"), NextHopType::NAT, 100, 200),
    )
}

fn with_dest(f: impl FnOnce(&mut pb::Destination)) -> pb::Update {
    let mut u = base_update();
    f(u.destination.as_mut().unwrap());
    u
}

fn with_hop(f: impl FnOnce(&mut pb::NextHop)) -> pb::Update {
    let mut u = base_update();
    f(u.next_hop.as_mut().unwrap());
    u
}

// ---------------------------------------------------------------------------
// Go-reference vectors
// ---------------------------------------------------------------------------

/// One data line of the vectors file, split into its four columns.
struct Vector {
    line_no: usize,
    direction: String,
    name: String,
    bytes: Vec<u8>,
    meaning: String,
}

fn load_vectors() -> Vec<Vector> {
    let text = std::fs::read_to_string(VECTORS).unwrap_or_else(|e| {
        panic!(
            "cannot read the Go-reference vectors at {VECTORS}: {e} (tests/vectors/ in the \
             repository); this test does not skip when it is missing"
        )
    });
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|(i, l)| {
            let cols: Vec<&str> = l.split('\t').collect();
            assert_eq!(
                cols.len(),
                4,
                "line {}: expected 4 tab-separated columns: {l:?}",
                i + 1
            );
            Vector {
                line_no: i + 1,
                direction: cols[0].to_string(),
                name: cols[1].to_string(),
                bytes: unhex(cols[2]),
                meaning: cols[3].to_string(),
            }
        })
        .collect()
}

/// What each captured frame means, written out by hand from the meaning
/// column, in file order: (direction, name, meaning, decoded message).
fn expected_vectors() -> Vec<(&'static str, &'static str, &'static str, Message)> {
    vec![
        ("c2s", "HELLO", "keepaliveInterval=3", hello(3, false)),
        ("s2c", "HELLO", "keepaliveInterval=3 isServer=true", hello(3, true)),
        ("c2s", "HELLO", "keepaliveInterval=5", hello(5, false)),
        ("s2c", "HELLO", "keepaliveInterval=5 isServer=true", hello(5, true)),
        ("c2s", "KEEPALIVE", "empty payload", Message::Keepalive),
        (
            "s2c",
            "KEEPALIVE",
            "empty payload (the server only ever echoes)",
            Message::Keepalive,
        ),
        ("c2s", "SUBSCRIBE", "vni=42", Message::Subscribe(Vni(42))),
        ("c2s", "SUBSCRIBE", "vni=23", Message::Subscribe(Vni(23))),
        (
            "c2s",
            "UPDATE",
            "ADD vni=42 dest=192.168.42.0/24 nexthop=2001:db8::42 type=STANDARD",
            update(
                Action::Add,
                42,
                dest(v4(192, 168, 42, 0), 24),
                hop(v6("2001:db8::42"), NextHopType::STANDARD, 0, 0),
            ),
        ),
        (
            "s2c",
            "UPDATE",
            "ADD vni=23 dest=10.0.98.1/32 nexthop=2001:db8::98 type=LOADBALANCER_TARGET",
            update(
                Action::Add,
                23,
                dest(v4(10, 0, 98, 1), 32),
                hop(v6("2001:db8::98"), NextHopType::LOADBALANCER_TARGET, 0, 0),
            ),
        ),
        (
            "s2c",
            "UPDATE",
            "ADD vni=23 dest=10.0.99.0/24 nexthop=2001:db8::99 type=NAT ports=1024-2047",
            update(
                Action::Add,
                23,
                dest(v4(10, 0, 99, 0), 24),
                hop(v6("2001:db8::99"), NextHopType::NAT, 1024, 2047),
            ),
        ),
        (
            "s2c",
            "UPDATE",
            "ADD vni=42 dest=2001:db8:42::/48 (ipVersion=IPv6) nexthop=2001:db8::4242 type=STANDARD",
            update(
                Action::Add,
                42,
                dest(v6("2001:db8:42::"), 48),
                hop(v6("2001:db8::4242"), NextHopType::STANDARD, 0, 0),
            ),
        ),
        (
            "s2c",
            "UPDATE",
            "REMOVE vni=42 dest=2001:db8:42::/48 nexthop=2001:db8::4242 type=STANDARD",
            update(
                Action::Remove,
                42,
                dest(v6("2001:db8:42::"), 48),
                hop(v6("2001:db8::4242"), NextHopType::STANDARD, 0, 0),
            ),
        ),
    ]
}

#[test]
fn go_reference_vectors_decode_and_reencode_byte_for_byte() {
    let vectors = load_vectors();
    let expected = expected_vectors();
    assert_eq!(
        vectors.len(),
        expected.len(),
        "{VECTORS} has {} frames, the test expects {}",
        vectors.len(),
        expected.len()
    );
    for (v, (direction, name, meaning, msg)) in vectors.iter().zip(expected) {
        let at = format!("{VECTORS}:{} ({} {})", v.line_no, v.name, v.meaning);
        assert_eq!(v.direction, direction, "{at}: direction");
        assert_eq!(v.name, name, "{at}: message name");
        assert_eq!(
            v.meaning, meaning,
            "{at}: meaning column changed; update the expectation"
        );

        // The header is self-consistent.
        assert_eq!(v.bytes[0], 1, "{at}: version");
        let len = usize::from(u16::from_be_bytes([v.bytes[1], v.bytes[2]]));
        assert_eq!(HEADER_LEN + len, v.bytes.len(), "{at}: header length");
        assert_eq!(v.bytes[3], msg.message_type() as u8, "{at}: type byte");

        let decoded = decode_msg(&v.bytes).unwrap_or_else(|e| panic!("{at}: {e}"));
        assert_eq!(decoded, msg, "{at}: decoded fields");
        assert_eq!(encode(&decoded), v.bytes, "{at}: re-encoding differs");
        assert_eq!(
            encode(&msg),
            v.bytes,
            "{at}: encoding the expectation differs"
        );
    }
}

#[test]
fn all_vectors_in_one_buffer_come_out_in_order() {
    let vectors = load_vectors();
    let mut buf = BytesMut::new();
    for v in &vectors {
        buf.put_slice(&v.bytes);
    }
    for (v, (_, _, _, msg)) in vectors.iter().zip(expected_vectors()) {
        let f = decode_frame(&mut buf)
            .unwrap()
            .expect("a whole frame is buffered");
        assert_eq!(f, Frame::Message(msg), "line {}", v.line_no);
    }
    assert!(buf.is_empty());
    assert_eq!(decode_frame(&mut buf), Ok(None));
}

// ---------------------------------------------------------------------------
// Framing
// ---------------------------------------------------------------------------

/// A few frames of every kind, including the largest UPDATE.
fn sample_frames() -> Vec<(Vec<u8>, Message)> {
    let msgs = vec![
        hello(5, false),
        Message::Keepalive,
        Message::Subscribe(Vni(0)),
        Message::Unsubscribe(Vni(u32::MAX)),
        base_message(),
        largest_update(),
    ];
    msgs.into_iter().map(|m| (encode(&m), m)).collect()
}

#[test]
fn frame_fed_one_byte_at_a_time_yields_one_frame_at_the_end() {
    for (bytes, msg) in sample_frames() {
        let mut buf = BytesMut::new();
        for (i, &b) in bytes.iter().enumerate() {
            buf.put_u8(b);
            let got = decode_frame(&mut buf).unwrap();
            if i + 1 < bytes.len() {
                assert_eq!(
                    got,
                    None,
                    "{msg:?}: frame after {} of {} bytes",
                    i + 1,
                    bytes.len()
                );
                assert_eq!(
                    &buf[..],
                    &bytes[..=i],
                    "an incomplete frame must not be consumed"
                );
            } else {
                assert_eq!(got, Some(Frame::Message(msg)));
                assert!(buf.is_empty());
            }
        }
        assert_eq!(decode_frame(&mut buf), Ok(None));
    }
}

#[test]
fn many_frames_in_one_buffer_come_out_in_order() {
    let frames = sample_frames();
    let mut buf = BytesMut::new();
    // Twice over, so that identical frames follow each other too.
    for _ in 0..2 {
        for (bytes, _) in &frames {
            buf.put_slice(bytes);
        }
    }
    for _ in 0..2 {
        for (_, msg) in &frames {
            assert_eq!(decode_frame(&mut buf), Ok(Some(Frame::Message(*msg))));
        }
    }
    assert!(buf.is_empty());
}

#[test]
fn partial_trailing_frame_stays_in_the_buffer() {
    let frames = sample_frames();
    let (last, last_msg) = frames.last().unwrap().clone();
    for cut in 1..last.len() {
        let mut buf = BytesMut::new();
        for (bytes, _) in &frames[..2] {
            buf.put_slice(bytes);
        }
        buf.put_slice(&last[..cut]);
        assert_eq!(
            decode_frame(&mut buf),
            Ok(Some(Frame::Message(frames[0].1)))
        );
        assert_eq!(
            decode_frame(&mut buf),
            Ok(Some(Frame::Message(frames[1].1)))
        );
        assert_eq!(decode_frame(&mut buf), Ok(None), "cut at {cut}");
        assert_eq!(
            decode_frame(&mut buf),
            Ok(None),
            "asking again changes nothing"
        );
        assert_eq!(&buf[..], &last[..cut], "the partial frame is kept as is");
        // The rest arrives: the frame completes.
        buf.put_slice(&last[cut..]);
        assert_eq!(decode_frame(&mut buf), Ok(Some(Frame::Message(last_msg))));
        assert!(buf.is_empty());
    }
}

#[test]
fn empty_buffer_needs_more() {
    let mut buf = BytesMut::new();
    assert_eq!(decode_frame(&mut buf), Ok(None));
}

#[test]
fn bad_version_is_rejected_on_its_first_byte() {
    for version in [0u8, 2, 3, 0x7f, 0x80, 0xff] {
        // The version byte alone is enough.
        let mut buf = BytesMut::from(&[version][..]);
        assert_eq!(
            decode_frame(&mut buf),
            Err(DecodeError::BadVersion(version))
        );
        assert_eq!(&buf[..], &[version], "the buffer is left as it was");
        // Also with a plausible rest of a header and payload.
        let mut whole = frame(2, &[]);
        whole[0] = version;
        let mut buf = BytesMut::from(&whole[..]);
        assert_eq!(
            decode_frame(&mut buf),
            Err(DecodeError::BadVersion(version))
        );
        // And after a good frame: the good frame comes out first.
        let mut buf = BytesMut::from(&encode(&Message::Keepalive)[..]);
        buf.put_u8(version);
        assert_eq!(
            decode_frame(&mut buf),
            Ok(Some(Frame::Message(Message::Keepalive)))
        );
        assert_eq!(
            decode_frame(&mut buf),
            Err(DecodeError::BadVersion(version))
        );
        assert_eq!(DecodeError::BadVersion(version).label(), "bad_version");
    }
}

#[test]
fn unknown_message_type_is_skipped_using_its_length() {
    for msg_type in [0u8, 6, 7, 42, 0xff] {
        for len in [0usize, 1, 3, 300, 65535] {
            // The payload would be garbage (and an invalid UPDATE) if parsed.
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8 | 0x80).collect();
            let mut buf = BytesMut::from(&frame(msg_type, &payload)[..]);
            buf.put_slice(&encode(&Message::Subscribe(Vni(9))));
            assert_eq!(
                decode_frame(&mut buf),
                Ok(Some(Frame::Unknown { msg_type, len })),
                "type {msg_type} len {len}"
            );
            assert_eq!(
                decode_frame(&mut buf),
                Ok(Some(Frame::Message(Message::Subscribe(Vni(9))))),
                "the next frame follows the skipped one"
            );
            assert!(buf.is_empty());
        }
        // An incomplete unknown frame waits for the rest like any other.
        let whole = frame(msg_type, &[0xaa; 10]);
        let mut buf = BytesMut::from(&whole[..9]);
        assert_eq!(decode_frame(&mut buf), Ok(None));
        assert_eq!(buf.len(), 9);
    }
}

#[test]
fn payloads_up_to_65535_bytes_are_accepted() {
    // An UPDATE padded with an unknown bytes field up to the largest payload.
    let mut payload = base_update().encode_to_vec();
    let pad = 65535 - payload.len() - 1 - 3; // tag (1 byte) + length varint (3 bytes)
    payload.push(15 << 3 | 2);
    put_varint(&mut payload, pad as u64);
    payload.resize(65535, 0xee);
    assert_eq!(payload.len(), 65535);
    assert_eq!(decode_msg(&frame(5, &payload)), Ok(base_message()));
}

#[test]
fn keepalive_with_a_payload_is_accepted_and_consumed() {
    let mut buf = BytesMut::from(&frame(2, &[1, 2, 3])[..]);
    buf.put_slice(&encode(&Message::Keepalive));
    assert_eq!(
        decode_frame(&mut buf),
        Ok(Some(Frame::Message(Message::Keepalive)))
    );
    assert_eq!(
        decode_frame(&mut buf),
        Ok(Some(Frame::Message(Message::Keepalive)))
    );
    assert!(buf.is_empty());
}

// ---------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------

#[test]
fn hello_with_keepalive_zero_decodes() {
    // Canonical (field omitted), explicit zero, and with isServer.
    assert_eq!(decode_msg(&frame(1, &[])), Ok(hello(0, false)));
    assert_eq!(decode_msg(&frame(1, &[0x08, 0x00])), Ok(hello(0, false)));
    assert_eq!(decode_msg(&frame(1, &[0x10, 0x01])), Ok(hello(0, true)));
    assert_eq!(encode(&hello(0, false)), frame(1, &[]));
}

#[test]
fn hello_fields_follow_protobuf_semantics() {
    // Any non-zero bool varint is true; uint32 keeps the low 32 bits; the last occurrence wins.
    assert_eq!(decode_msg(&frame(1, &[0x10, 0x02])), Ok(hello(0, true)));
    assert_eq!(
        decode_msg(&frame(1, &[0x08, 0x80, 0x80, 0x80, 0x80, 0x10])),
        Ok(hello(0, false)),
        "2^32 truncates to 0"
    );
    assert_eq!(
        decode_msg(&frame(1, &[0x08, 0x05, 0x08, 0x07])),
        Ok(hello(7, false))
    );
    assert_eq!(
        encode(&hello(u32::MAX, true)),
        frame(1, &[0x08, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x10, 0x01])
    );
}

#[test]
fn empty_subscribe_payload_is_vni_zero() {
    assert_eq!(decode_msg(&frame(3, &[])), Ok(Message::Subscribe(Vni(0))));
    assert_eq!(decode_msg(&frame(4, &[])), Ok(Message::Unsubscribe(Vni(0))));
    assert_eq!(encode(&Message::Subscribe(Vni(0))), [1, 0, 0, 3]);
    assert_eq!(encode(&Message::Unsubscribe(Vni(0))), [1, 0, 0, 4]);
    assert_eq!(
        decode_msg(&frame(4, &[0x08, 0x2a])),
        Ok(Message::Unsubscribe(Vni(42)))
    );
}

#[test]
fn keepalive_is_the_four_byte_frame() {
    assert_eq!(encode(&Message::Keepalive), [1, 0, 0, 2]);
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Unknown fields of every wire type (varint, fixed64, bytes, group, fixed32).
fn unknown_fields(field: u32) -> Vec<u8> {
    let tag = |wt: u32| {
        let mut out = Vec::new();
        put_varint(&mut out, u64::from(field << 3 | wt));
        out
    };
    let mut out = Vec::new();
    out.extend(tag(0));
    out.extend([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
    out.extend(tag(1));
    out.extend([8u8; 8]);
    out.extend(tag(2));
    out.extend([3, 0x08, 0x01, 0xff]);
    // A group holding a varint and a nested empty group, then its end tag.
    out.extend(tag(3));
    out.extend([0x08, 0x01, 0x13, 0x14]);
    out.extend(tag(4));
    out.extend(tag(5));
    out.extend([5u8; 4]);
    out
}

#[test]
fn unknown_protobuf_fields_are_ignored() {
    for field in [6u32, 15, 16, 2047, 1 << 28, (1 << 29) - 1] {
        let junk = unknown_fields(field);
        // HELLO, SUBSCRIBE, UNSUBSCRIBE: junk before and after the known fields.
        let p = [&junk[..], &[0x08, 0x05, 0x10, 0x01], &junk[..]].concat();
        assert_eq!(
            decode_msg(&frame(1, &p)),
            Ok(hello(5, true)),
            "field {field}"
        );
        let p = [&junk[..], &[0x08, 0x2a], &junk[..]].concat();
        assert_eq!(decode_msg(&frame(3, &p)), Ok(Message::Subscribe(Vni(42))));
        assert_eq!(decode_msg(&frame(4, &p)), Ok(Message::Unsubscribe(Vni(42))));

        // UPDATE: junk at the top level, inside destination and inside nextHop.
        let u = base_update();
        let d = u.destination.as_ref().unwrap().encode_to_vec();
        let h = u.next_hop.as_ref().unwrap().encode_to_vec();
        let d = [&junk[..], &d, &junk[..]].concat();
        let h = [&junk[..], &h, &junk[..]].concat();
        let mut p = junk.clone();
        p.extend([0x10, 7]); // vni
        p.push(0x1a);
        put_varint(&mut p, d.len() as u64);
        p.extend(&d);
        p.extend(&junk);
        p.push(0x22);
        put_varint(&mut p, h.len() as u64);
        p.extend(&h);
        p.extend(&junk);
        assert_eq!(
            decode_msg(&frame(5, &p)),
            Ok(base_message()),
            "field {field}"
        );
    }
}

#[test]
fn malformed_groups_are_protobuf_errors() {
    let bad: [&[u8]; 5] = [
        &[0x34],             // end-group without a start
        &[0x33],             // unterminated group
        &[0x33, 0x08],       // unterminated group, truncated inner field
        &[0x33, 0x3c],       // end-group of another field
        &[0x33, 0x33, 0x34], // inner group closed, outer not
    ];
    for p in bad {
        for t in [1u8, 3, 4, 5] {
            let e = decode_msg(&frame(t, p)).unwrap_err();
            assert!(
                matches!(e, DecodeError::Protobuf { .. }),
                "{p:02x?} type {t}: {e:?}"
            );
        }
    }
    // Groups nested 32 deep are skipped (prost agrees); one more level is refused.
    let nested = |depth: usize| [vec![0x33u8; depth], vec![0x34u8; depth]].concat();
    let p = [&nested(32)[..], &[0x08, 0x2a]].concat();
    assert_eq!(pb::Subscription::decode(&p[..]).map(|s| s.vni), Ok(42));
    assert_eq!(decode_msg(&frame(3, &p)), Ok(Message::Subscribe(Vni(42))));
    let e = decode_msg(&frame(3, &nested(33))).unwrap_err();
    assert!(matches!(e, DecodeError::Protobuf { .. }), "{e:?}");
    // Nesting deep enough to matter is refused rather than recursed into without end.
    let deep = [vec![0x33u8; 10_000], vec![0x34u8; 10_000]].concat();
    let e = decode_msg(&frame(5, &deep)).unwrap_err();
    assert!(matches!(e, DecodeError::Protobuf { .. }), "{e:?}");
}

#[test]
fn protobuf_decode_errors_close_the_session() {
    let valid = base_update().encode_to_vec();
    // Every strict prefix of the UPDATE payload that cuts a field is a decode error
    // (a prefix that ends between fields is a valid but incomplete UPDATE).
    let mut decode_errors = 0;
    for cut in 1..valid.len() {
        match decode_msg(&frame(5, &valid[..cut])) {
            Err(DecodeError::Protobuf { msg, .. }) => {
                decode_errors += 1;
                assert!(msg.starts_with("UPDATE"), "{msg}");
            }
            Err(_) => {}
            Ok(m) => panic!("truncated UPDATE accepted at {cut}: {m:?}"),
        }
    }
    assert!(
        decode_errors > 10,
        "only {decode_errors} truncations were decode errors"
    );

    let cases: [(u8, &[u8]); 12] = [
        (1, &[0x08]),                               // truncated varint
        (1, &[0x0a, 0x00]),                         // keepaliveInterval as bytes
        (1, &[0x15, 0, 0, 0, 0]),                   // isServer as fixed32
        (3, &[0x0a, 0x01, 0x00]),                   // vni as bytes
        (4, &[0x09, 0, 0, 0, 0, 0, 0, 0, 0]),       // vni as fixed64
        (3, &[0x00, 0x01]),                         // field number 0
        (3, &[0x0e]),                               // wire type 6
        (3, &[0x0f]),                               // wire type 7
        (5, &[0x08, 0x80, 0x80]),                   // truncated action varint
        (5, &[0x1a, 0x05, 0x12, 0x04]),             // destination runs past the end
        (5, &[0x18, 0x01]),                         // destination as varint
        (5, &[0x80, 0x80, 0x80, 0x80, 0x80, 0x01]), // tag above u32::MAX
    ];
    for (t, p) in cases {
        let e = decode_msg(&frame(t, p)).unwrap_err();
        assert!(
            matches!(e, DecodeError::Protobuf { .. }),
            "type {t} {p:02x?}: {e:?}"
        );
        assert_eq!(e.label(), "bad_protobuf");
    }
    // Nested messages report where the error is.
    let e = decode_msg(&frame(5, &[0x1a, 0x01, 0x08])).unwrap_err();
    assert!(
        matches!(
            e,
            DecodeError::Protobuf {
                msg: "UPDATE.destination",
                ..
            }
        ),
        "{e:?}"
    );
    let e = decode_msg(&frame(5, &[0x22, 0x02, 0x0a, 0x05])).unwrap_err();
    assert!(
        matches!(
            e,
            DecodeError::Protobuf {
                msg: "UPDATE.nextHop",
                ..
            }
        ),
        "{e:?}"
    );
}

// ---------------------------------------------------------------------------
// UPDATE validation (PROTOCOL.md section 2)
// ---------------------------------------------------------------------------

#[test]
fn base_update_is_valid() {
    assert_eq!(decode_pb_update(&base_update()), Ok(base_message()));
}

#[test]
fn update_without_destination_is_rejected() {
    let mut u = base_update();
    u.destination = None;
    assert_eq!(decode_pb_update(&u), Err(DecodeError::MissingDestination));
    assert_eq!(
        DecodeError::MissingDestination.label(),
        "missing_destination"
    );
    // An empty UPDATE lacks both; the destination is reported.
    assert_eq!(
        decode_msg(&frame(5, &[])),
        Err(DecodeError::MissingDestination)
    );
}

#[test]
fn update_without_next_hop_is_rejected() {
    let mut u = base_update();
    u.next_hop = None;
    assert_eq!(decode_pb_update(&u), Err(DecodeError::MissingNextHop));
    assert_eq!(DecodeError::MissingNextHop.label(), "missing_next_hop");
}

#[test]
fn present_but_empty_destination_and_next_hop_have_no_address() {
    // `1a 00` is a destination that is present with every field at its default.
    let mut u = base_update();
    u.destination = Some(pb::Destination::default());
    assert_eq!(
        decode_pb_update(&u),
        Err(DecodeError::BadAddressLength {
            field: "destination.prefix",
            len: 0
        })
    );
    let mut u = base_update();
    u.next_hop = Some(pb::NextHop::default());
    assert_eq!(
        decode_pb_update(&u),
        Err(DecodeError::BadAddressLength {
            field: "nextHop.targetAddress",
            len: 0
        })
    );
}

#[test]
fn address_lengths_other_than_4_or_16_are_rejected() {
    for len in [0usize, 1, 3, 5, 8, 15, 17, 32] {
        // The ipVersion is set to match a would-be IPv6 address when long, so
        // that only the length is wrong.
        let u = with_dest(|d| {
            d.prefix = vec![0x20; len];
            d.ip_version = i32::from(len > 4);
            d.prefix_length = 0;
        });
        let e = DecodeError::BadAddressLength {
            field: "destination.prefix",
            len,
        };
        assert_eq!(
            decode_pb_update(&u),
            Err(e.clone()),
            "prefix of {len} bytes"
        );
        assert_eq!(e.label(), "bad_address_length");

        let u = with_hop(|h| h.target_address = vec![0x20; len]);
        assert_eq!(
            decode_pb_update(&u),
            Err(DecodeError::BadAddressLength {
                field: "nextHop.targetAddress",
                len
            }),
            "targetAddress of {len} bytes"
        );
    }
    // 4 and 16 are fine in both places.
    for len in [4usize, 16] {
        let u = with_dest(|d| {
            d.prefix = vec![1; len];
            d.ip_version = i32::from(len == 16);
        });
        assert!(decode_pb_update(&u).is_ok(), "prefix of {len} bytes");
        let u = with_hop(|h| h.target_address = vec![1; len]);
        assert!(decode_pb_update(&u).is_ok(), "targetAddress of {len} bytes");
    }
}

#[test]
fn prefix_length_above_the_address_width_is_rejected() {
    let ok4 = with_dest(|d| d.prefix_length = 32);
    assert!(decode_pb_update(&ok4).is_ok());
    for len in [33u32, 64, 128, 129, u32::MAX] {
        let u = with_dest(|d| d.prefix_length = len);
        let e = DecodeError::PrefixTooLong { len, max: 32 };
        assert_eq!(decode_pb_update(&u), Err(e.clone()), "v4 /{len}");
        assert_eq!(e.label(), "prefix_too_long");
    }
    let v6dest = |len| {
        with_dest(|d| {
            d.ip_version = 1;
            d.prefix = v6("2001:db8::").as_bytes().to_vec();
            d.prefix_length = len;
        })
    };
    assert!(decode_pb_update(&v6dest(128)).is_ok());
    for len in [129u32, 255, 256, u32::MAX] {
        assert_eq!(
            decode_pb_update(&v6dest(len)),
            Err(DecodeError::PrefixTooLong { len, max: 128 }),
            "v6 /{len}"
        );
    }
}

#[test]
fn ip_version_must_match_the_address_length() {
    // IPv6 claimed, 4 bytes sent.
    let u = with_dest(|d| d.ip_version = 1);
    let e = DecodeError::IpVersionMismatch {
        ip_version: 1,
        len: 4,
    };
    assert_eq!(decode_pb_update(&u), Err(e.clone()));
    assert_eq!(e.label(), "ip_version_mismatch");
    // IPv4 (the default, so absent on the wire) with 16 bytes.
    let u = with_dest(|d| {
        d.ip_version = 0;
        d.prefix = vec![0x20; 16];
    });
    assert_eq!(
        decode_pb_update(&u),
        Err(DecodeError::IpVersionMismatch {
            ip_version: 0,
            len: 16
        })
    );
    // Values that are neither IPv4 nor IPv6.
    for ip_version in [2, -1, i32::MAX, i32::MIN] {
        for len in [4usize, 16] {
            let u = with_dest(|d| {
                d.ip_version = ip_version;
                d.prefix = vec![0x20; len];
            });
            assert_eq!(
                decode_pb_update(&u),
                Err(DecodeError::IpVersionMismatch { ip_version, len }),
                "ipVersion {ip_version} with {len} bytes"
            );
        }
    }
}

#[test]
fn nat_ports_above_65535_are_rejected() {
    for (from, to, bad) in [
        (65536u32, 65536u32, 65536u32),
        (100, 65536, 65536),
        (65536, 200, 65536),
        (0, u32::MAX, u32::MAX),
    ] {
        let u = with_hop(|h| {
            h.nat_port_range_from = from;
            h.nat_port_range_to = to;
        });
        let e = DecodeError::PortOutOfRange(bad);
        assert_eq!(decode_pb_update(&u), Err(e.clone()), "{from}-{to}");
        assert_eq!(e.label(), "port_out_of_range");
    }
    // The limit itself is fine.
    let u = with_hop(|h| {
        h.nat_port_range_from = 65535;
        h.nat_port_range_to = 65535;
    });
    let Ok(Message::Update(up)) = decode_pb_update(&u) else {
        panic!("65535-65535 rejected")
    };
    assert_eq!(
        (up.route.next_hop.nat_from, up.route.next_hop.nat_to),
        (65535, 65535)
    );
}

#[test]
fn inverted_nat_port_range_is_rejected() {
    let u = with_hop(|h| {
        h.nat_port_range_from = 2048;
        h.nat_port_range_to = 1024;
    });
    let e = DecodeError::PortRangeInverted {
        from: 2048,
        to: 1024,
    };
    assert_eq!(decode_pb_update(&u), Err(e.clone()));
    assert_eq!(e.label(), "port_range_inverted");
    // A single port (from == to) is a range.
    let u = with_hop(|h| {
        h.nat_port_range_from = 1024;
        h.nat_port_range_to = 1024;
    });
    assert!(decode_pb_update(&u).is_ok());
}

#[test]
fn unknown_action_is_rejected() {
    for action in [2, 3, -1, i32::MAX, i32::MIN] {
        let mut u = base_update();
        u.action = action;
        let e = DecodeError::UnknownAction(action);
        assert_eq!(decode_pb_update(&u), Err(e.clone()), "action {action}");
        assert_eq!(e.label(), "unknown_action");
    }
    let mut u = base_update();
    u.action = 1;
    let Ok(Message::Update(up)) = decode_pb_update(&u) else {
        panic!("REMOVE rejected")
    };
    assert_eq!(up.action, Action::Remove);
}

#[test]
fn repeated_nested_messages_merge_like_protobuf() {
    // Two destination fields: the second sets only the prefix length, the
    // first's address stays (protobuf merges repeated embedded messages).
    let u = base_update();
    let mut p = u.encode_to_vec();
    p.extend([0x1a, 0x02, 0x18, 0x10]); // destination { prefixLength: 16 }
    p.extend([0x22, 0x02, 0x10, 0x05]); // nextHop { targetVNI: 5 }
    let Ok(Message::Update(up)) = decode_msg(&frame(5, &p)) else {
        panic!("merged UPDATE rejected")
    };
    assert_eq!(up.route.dest, dest(v4(10, 0, 0, 0), 16));
    assert_eq!(up.route.next_hop.target_vni, 5);
    assert_eq!(up.route.next_hop.nat_from, 100);
    assert_eq!(
        pb::Update::decode(&p[..])
            .unwrap()
            .destination
            .unwrap()
            .prefix_length,
        16
    );
}

// ---------------------------------------------------------------------------
// Next-hop types
// ---------------------------------------------------------------------------

#[test]
fn unknown_next_hop_types_are_kept_and_reencoded_unchanged() {
    for kind in [3, 7, 127, 128, i32::MAX, -1, -2, i32::MIN] {
        // Port ranges other than NAT's are kept as sent, even inverted ones.
        let u = with_hop(|h| {
            h.r#type = kind;
            h.nat_port_range_from = 9;
            h.nat_port_range_to = 3;
            h.target_vni = 77;
        });
        let bytes = frame(5, &u.encode_to_vec());
        let msg = decode_msg(&bytes).unwrap_or_else(|e| panic!("type {kind}: {e}"));
        let Message::Update(up) = msg else {
            unreachable!()
        };
        assert_eq!(up.route.next_hop.kind, NextHopType(kind));
        assert_eq!(
            (
                up.route.next_hop.nat_from,
                up.route.next_hop.nat_to,
                up.route.next_hop.target_vni
            ),
            (9, 3, 77)
        );
        assert_eq!(encode(&msg), bytes, "type {kind} re-encoded differently");
    }
    // A negative enum is a sign-extended ten-byte varint on the wire.
    let u = with_hop(|h| h.r#type = -1);
    let p = u.encode_to_vec();
    let needle = [
        0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
    ];
    assert!(p.windows(needle.len()).any(|w| w == needle), "{p:02x?}");
}

#[test]
fn known_next_hop_types_round_trip() {
    for kind in [
        NextHopType::STANDARD,
        NextHopType::NAT,
        NextHopType::LOADBALANCER_TARGET,
    ] {
        let (from, to) = if kind == NextHopType::NAT {
            (1, 65535)
        } else {
            (0, 0)
        };
        let m = update(
            Action::Remove,
            1,
            dest(v6("::"), 0),
            hop(v4(1, 2, 3, 4), kind, from, to),
        );
        assert_eq!(decode_msg(&encode(&m)), Ok(m));
    }
}

// ---------------------------------------------------------------------------
// Encoding limits
// ---------------------------------------------------------------------------

/// The UPDATE with every field at its longest encoding.
fn largest_update() -> Message {
    Message::Update(Update::new(
        Action::Remove,
        Vni(u32::MAX),
        dest(v6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), 128),
        NextHop {
            addr: v6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
            target_vni: u32::MAX,
            kind: NextHopType(i32::MIN),
            nat_from: u16::MAX,
            nat_to: u16::MAX,
        },
    ))
}

#[test]
fn encoding_never_exceeds_the_send_limit_and_the_header_is_exact() {
    let msgs = [
        largest_update(),
        hello(u32::MAX, true),
        Message::Subscribe(Vni(u32::MAX)),
        Message::Unsubscribe(Vni(u32::MAX)),
        Message::Keepalive,
    ];
    for m in msgs {
        let bytes = encode(&m);
        let len = usize::from(u16::from_be_bytes([bytes[1], bytes[2]]));
        assert_eq!(bytes.len(), HEADER_LEN + len, "{m:?}: header length");
        assert!(len <= MAX_SEND_PAYLOAD, "{m:?}: {len} bytes");
        assert_eq!(decode_msg(&bytes), Ok(m));
    }
    // The largest UPDATE is still far below the limit (PROTOCOL.md: real ones are under 80 bytes).
    assert_eq!(encode(&largest_update()).len() - HEADER_LEN, 78);
}

#[test]
fn encoding_appends_to_the_buffer() {
    let mut out = BytesMut::from(&b"xyz"[..]);
    encode_message(&Message::Subscribe(Vni(42)), &mut out);
    encode_message(&Message::Keepalive, &mut out);
    assert_eq!(
        &out[..],
        &[b'x', b'y', b'z', 1, 0, 2, 3, 0x08, 0x2a, 1, 0, 0, 2]
    );
}

// ---------------------------------------------------------------------------
// Decoding a buffer of frames (the update log's mail)
// ---------------------------------------------------------------------------

#[test]
fn decode_updates_yields_every_update_of_a_frame_buffer_in_order() {
    let updates = [
        Update::new(
            Action::Add,
            Vni(7),
            dest(v4(10, 0, 1, 0), 24),
            hop(v6("2001:db8::1"), NextHopType::STANDARD, 0, 0),
        ),
        Update::new(
            Action::Remove,
            Vni(u32::MAX),
            dest(v6("2001:db8:5::"), 64),
            hop(v6("2001:db8::2"), NextHopType::NAT, 1024, 2047),
        ),
        Update::new(
            Action::Add,
            Vni(0),
            dest(v4(0, 0, 0, 0), 0),
            hop(v4(192, 0, 2, 1), NextHopType::LOADBALANCER_TARGET, 0, 0),
        ),
    ];
    let mut buf = BytesMut::new();
    for u in &updates {
        encode_update(u.action, &u.route, &mut buf);
    }
    assert_eq!(decode_updates(&buf).collect::<Vec<_>>(), updates);
    assert_eq!(decode_updates(&[]).count(), 0);
}

#[test]
fn decode_updates_skips_other_frames_and_stops_at_a_partial_frame() {
    let add = Update::new(
        Action::Add,
        Vni(3),
        dest(v4(10, 3, 0, 0), 16),
        hop(v6("2001:db8::3"), NextHopType::STANDARD, 0, 0),
    );
    let mut buf = BytesMut::new();
    encode_message(&Message::Keepalive, &mut buf);
    encode_update(add.action, &add.route, &mut buf);
    // An UPDATE whose payload does not decode, then a SUBSCRIBE.
    buf.extend_from_slice(&frame(MessageType::Update as u8, &[0xff]));
    encode_message(&Message::Subscribe(Vni(3)), &mut buf);
    encode_update(add.action, &add.route, &mut buf);
    let whole = buf.len();
    encode_update(Action::Remove, &add.route, &mut buf);
    for cut in whole..buf.len() {
        assert_eq!(
            decode_updates(&buf[..cut]).collect::<Vec<_>>(),
            vec![add, add],
            "cut at {cut}"
        );
    }
    assert_eq!(decode_updates(&buf).count(), 3);
}
