//! A session's outbound queue: whole frames waiting to be written, sent with
//! vectored writes (one syscall for many buffers).
//!
//! Two lanes: `control` (the session's own frames: HELLO, KEEPALIVE echoes)
//! and `data` (routes: dumps and log slices). Control frames overtake queued
//! route data at the next frame boundary, so a keepalive echo is never stuck
//! behind a long dump. Every buffer holds whole frames only, and a buffer
//! that was partly written is always finished before anything else.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes};

use crate::wire::HEADER_LEN;

/// Most buffers handed to one vectored write.
const MAX_IOVECS: usize = 64;

/// See the module documentation.
#[derive(Default)]
pub struct Outbound {
    control: VecDeque<Bytes>,
    data: VecDeque<Bytes>,
    /// True when the front of `data` has been partly written.
    data_front_started: bool,
    bytes: usize,
}

impl Outbound {
    /// Queues a control frame (overtakes queued route data).
    pub fn push_control(&mut self, frame: Bytes) {
        self.bytes += frame.len();
        self.control.push_back(frame);
    }

    /// Queues route data (whole frames).
    pub fn push_data(&mut self, frames: Bytes) {
        if !frames.is_empty() {
            self.bytes += frames.len();
            self.data.push_back(frames);
        }
    }

    /// Bytes waiting.
    pub fn len(&self) -> usize {
        self.bytes
    }

    /// Nothing waiting.
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// True when a control frame waits, or a buffer was partly written:
    /// both must go out whatever the pacing says.
    pub fn has_urgent(&self) -> bool {
        !self.control.is_empty() || self.data_front_started
    }

    /// True when route data waits.
    pub fn has_data(&self) -> bool {
        !self.data.is_empty()
    }

    /// The buffers to write next, in wire order, with at most `data_limit`
    /// bytes of route data that was not started yet, cut at a frame boundary.
    pub fn slices(&self, data_limit: usize) -> Vec<IoSlice<'_>> {
        let mut out = Vec::with_capacity(MAX_IOVECS.min(self.control.len() + self.data.len()));
        let mut data = self.data.iter();
        if self.data_front_started {
            if let Some(front) = data.next() {
                out.push(IoSlice::new(front));
            }
        }
        for b in &self.control {
            if out.len() == MAX_IOVECS {
                return out;
            }
            out.push(IoSlice::new(b));
        }
        let mut budget = data_limit;
        for b in data {
            if out.len() == MAX_IOVECS || budget == 0 {
                break;
            }
            if b.len() <= budget {
                out.push(IoSlice::new(b));
                budget -= b.len();
            } else {
                let cut = whole_frames_prefix(b, budget);
                if cut > 0 {
                    out.push(IoSlice::new(&b[..cut]));
                }
                break;
            }
        }
        out
    }

    /// Drops `n` written bytes from the front, in the order of [`Self::slices`].
    pub fn advance(&mut self, mut n: usize) {
        self.bytes -= n;
        if self.data_front_started {
            let front = self.data.front_mut().expect("partly written front");
            if n < front.len() {
                front.advance(n);
                return;
            }
            n -= front.len();
            self.data.pop_front();
            self.data_front_started = false;
        }
        let mut control_cut = false;
        n = Self::consume(&mut self.control, n, &mut control_cut);
        if control_cut {
            // Keep the rest of a cut control frame in front of everything by
            // moving it to the data lane's partly-written front.
            let rest = self.control.pop_front().expect("cut control frame");
            self.data.push_front(rest);
            self.data_front_started = true;
            return;
        }
        Self::consume(&mut self.data, n, &mut self.data_front_started);
    }

    /// Consumes up to `n` bytes from `queue`; returns what is left of `n`.
    /// Sets `started` if the new front was partly consumed.
    fn consume(queue: &mut VecDeque<Bytes>, mut n: usize, started: &mut bool) -> usize {
        *started = false;
        while n > 0 {
            let Some(front) = queue.front_mut() else {
                break;
            };
            if n < front.len() {
                front.advance(n);
                *started = true;
                return 0;
            }
            n -= front.len();
            queue.pop_front();
        }
        n
    }
}

/// Length of the longest prefix of `frames` (back-to-back whole frames) that
/// is made of whole frames and is at most `max` bytes long.
fn whole_frames_prefix(frames: &[u8], max: usize) -> usize {
    let mut end = 0;
    while end + HEADER_LEN <= frames.len() {
        let len = usize::from(u16::from_be_bytes([frames[end + 1], frames[end + 2]]));
        let next = end + HEADER_LEN + len;
        if next > max || next > frames.len() {
            break;
        }
        end = next;
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain_all(o: &mut Outbound, step: usize) -> Vec<u8> {
        let mut wire = Vec::new();
        while !o.is_empty() {
            let flat: Vec<u8> = o.slices(usize::MAX).iter().flat_map(|s| s.to_vec()).collect();
            let n = step.min(flat.len());
            wire.extend_from_slice(&flat[..n]);
            o.advance(n);
        }
        wire
    }

    #[test]
    fn control_overtakes_data_only_at_buffer_boundaries() {
        let mut o = Outbound::default();
        o.push_data(Bytes::from_static(b"AAAA"));
        o.push_data(Bytes::from_static(b"BBBB"));
        // Write 2 bytes of the first data buffer, then a control frame arrives.
        o.advance(2);
        o.push_control(Bytes::from_static(b"k"));
        assert_eq!(drain_all(&mut o, 3), b"AAkBBBB");
    }

    #[test]
    fn control_goes_first_when_nothing_is_partly_written() {
        let mut o = Outbound::default();
        o.push_data(Bytes::from_static(b"AAAA"));
        o.push_control(Bytes::from_static(b"kk"));
        o.push_control(Bytes::from_static(b"ll"));
        assert_eq!(drain_all(&mut o, 1), b"kkllAAAA");
    }

    #[test]
    fn a_cut_control_frame_is_finished_before_anything_else() {
        let mut o = Outbound::default();
        o.push_control(Bytes::from_static(b"kkkk"));
        o.push_data(Bytes::from_static(b"AA"));
        o.advance(2);
        o.push_control(Bytes::from_static(b"m"));
        assert_eq!(drain_all(&mut o, 5), b"kkmAA");
    }

    #[test]
    fn length_accounting() {
        let mut o = Outbound::default();
        o.push_data(Bytes::from_static(b"AAAA"));
        o.push_data(Bytes::new());
        o.push_control(Bytes::from_static(b"k"));
        assert_eq!(o.len(), 5);
        o.advance(5);
        assert!(o.is_empty());
        assert!(o.slices(usize::MAX).is_empty());
    }

    fn frames(n: usize) -> Bytes {
        let mut buf = bytes::BytesMut::new();
        for i in 0..n {
            crate::wire::encode_message(&crate::wire::Message::Subscribe(crate::wire::Vni(i as u32 + 1)), &mut buf);
        }
        buf.freeze()
    }

    #[test]
    fn data_is_limited_at_frame_boundaries_but_control_and_started_buffers_are_not() {
        let mut o = Outbound::default();
        let three = frames(3); // 6 bytes each
        assert_eq!(three.len(), 18);
        o.push_data(three.clone());
        o.push_data(frames(2));
        let total = |o: &Outbound, limit| o.slices(limit).iter().map(|s| s.len()).sum::<usize>();
        assert_eq!(total(&o, 0), 0);
        assert_eq!(total(&o, 5), 0);
        assert_eq!(total(&o, 13), 12);
        assert_eq!(total(&o, 18), 18);
        assert_eq!(total(&o, 20), 18);
        assert_eq!(total(&o, 24), 24);
        assert_eq!(total(&o, usize::MAX), 30);
        o.push_control(Bytes::from_static(&crate::wire::codec::KEEPALIVE_FRAME));
        assert!(o.has_urgent());
        assert_eq!(total(&o, 0), 4);
        o.advance(4 + 7); // control + a frame and a byte: the front is started
        assert!(o.has_urgent());
        assert_eq!(total(&o, 0), 11);
    }
}
