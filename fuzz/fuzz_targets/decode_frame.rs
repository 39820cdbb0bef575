//! Fuzzes the frame decoder: arbitrary bytes are fed to `decode_frame` in a
//! loop, once all at once and once in small pieces. It must never panic or
//! stall, both feedings must give the same frames (and the same error), and
//! every decoded message must re-encode to a frame that decodes to itself.
//! Inputs of even length are decoded as by a session that negotiated SYNC
//! (type 100 is a message), odd ones as by a reference peer (an unknown
//! frame).

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use metalbondd::wire::{
    decode_frame_with, encode_message, DecodeError, Extensions, Frame, Message, HEADER_LEN,
    MAX_SEND_PAYLOAD,
};

/// Feeds `data` in pieces of `chunk` bytes and collects what comes out.
fn run(data: &[u8], chunk: usize, accept: Extensions) -> (Vec<Frame>, Option<DecodeError>) {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.len();
            match decode_frame_with(&mut buf, accept) {
                Ok(Some(frame)) => {
                    // Progress: a whole frame (header at least) was consumed.
                    assert!(before - buf.len() >= HEADER_LEN, "decoder made no progress");
                    frames.push(frame);
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "bytes consumed while waiting");
                    break;
                }
                Err(e) => {
                    assert_eq!(buf.len(), before, "bytes consumed by an error");
                    return (frames, Some(e));
                }
            }
        }
    }
    (frames, None)
}

/// Re-encodes `msg` and decodes it again: it must come back unchanged.
fn check_round_trip(msg: &Message, accept: Extensions) {
    let mut out = BytesMut::new();
    encode_message(msg, &mut out);
    let len = usize::from(u16::from_be_bytes([out[1], out[2]]));
    assert_eq!(out.len(), HEADER_LEN + len, "header length of {msg:?}");
    assert!(len <= MAX_SEND_PAYLOAD, "{msg:?} encodes to {len} bytes");
    let again = decode_frame_with(&mut out, accept);
    assert_eq!(
        again,
        Ok(Some(Frame::Message(*msg))),
        "round trip of {msg:?}"
    );
    assert!(out.is_empty(), "round trip of {msg:?} left bytes behind");
}

fuzz_target!(|data: &[u8]| {
    let accept = if data.len() % 2 == 0 {
        Extensions::SYNC
    } else {
        Extensions::NONE
    };
    let (frames, err) = run(data, data.len().max(1), accept);
    // Piece size 1 to 7, picked from the input so that it varies.
    let chunk = data.len() % 7 + 1;
    let (split_frames, split_err) = run(data, chunk, accept);
    assert_eq!(
        frames, split_frames,
        "frames depend on how the bytes were split"
    );
    assert_eq!(err, split_err, "error depends on how the bytes were split");
    for frame in &frames {
        if let Frame::Message(msg) = frame {
            check_round_trip(msg, accept);
        }
    }
});
