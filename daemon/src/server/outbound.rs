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

    /// The buffers to write next, in wire order.
    pub fn slices(&self) -> Vec<IoSlice<'_>> {
        let mut out = Vec::with_capacity(MAX_IOVECS.min(self.control.len() + self.data.len()));
        let mut data = self.data.iter();
        if self.data_front_started {
            if let Some(front) = data.next() {
                out.push(IoSlice::new(front));
            }
        }
        for b in self.control.iter().chain(data) {
            if out.len() == MAX_IOVECS {
                break;
            }
            out.push(IoSlice::new(b));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn drain_all(o: &mut Outbound, step: usize) -> Vec<u8> {
        let mut wire = Vec::new();
        while !o.is_empty() {
            let flat: Vec<u8> = o.slices().iter().flat_map(|s| s.to_vec()).collect();
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
        assert!(o.slices().is_empty());
    }
}
