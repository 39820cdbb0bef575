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

use bytes::Bytes;

use crate::wire::codec::frame_len_at;
use crate::wire::marks::{last_frame_end, walk_start, whole_frames_end};
use crate::wire::FrameMarks;

/// Most buffers handed to one vectored write.
const MAX_IOVECS: usize = 64;
/// Most buffers whose room the data queue keeps once drained (2 KiB).
const KEEP_DATA_QUEUE: usize = 64;
/// Room the queues of an idle session keep (an echo, a few updates): churn
/// then allocates nothing per delivery.
const IDLE_CONTROL_QUEUE: usize = 4;
const IDLE_DATA_QUEUE: usize = 8;

/// See the module documentation.
#[derive(Default)]
pub struct Outbound {
    control: VecDeque<Bytes>,
    /// Bytes of `control.front()` already written.
    control_off: usize,
    data: VecDeque<Bytes>,
    /// The frame marks of the buffers in `data` that have them, each with
    /// the buffer's start in the route data stream. A queue of its own, so
    /// that the many buffers without marks (churn, a fleet's small slices)
    /// cost no room in every session's queue.
    marks: VecDeque<(u64, FrameMarks)>,
    /// Bytes of `data.front()` already written.
    data_off: usize,
    /// Start of the frame of `data.front()` that contains `data_off`.
    data_frame_start: usize,
    bytes: usize,
    /// Route data bytes ever queued.
    data_pushed: u64,
    /// Route data bytes ever written.
    data_written: u64,
    /// Control bytes ever queued.
    control_pushed: u64,
    /// Control bytes ever written.
    control_written: u64,
}

impl Outbound {
    /// Queues a control frame (overtakes queued route data).
    pub fn push_control(&mut self, frame: Bytes) {
        self.bytes += frame.len();
        self.control_pushed += frame.len() as u64;
        self.control.push_back(frame);
    }

    /// Queues route data (whole frames).
    pub fn push_data(&mut self, frames: Bytes) {
        self.push_data_marked(frames, None);
    }

    /// Queues route data (whole frames) with the marks of exactly these
    /// frames, if it has any: cutting it into paced writes then walks few
    /// frame headers.
    pub fn push_data_marked(&mut self, frames: Bytes, marks: Option<FrameMarks>) {
        if !frames.is_empty() {
            if let Some(marks) = marks {
                self.marks.push_back((self.data_pushed, marks));
            }
            self.bytes += frames.len();
            self.data_pushed += frames.len() as u64;
            self.data.push_back(frames);
        }
    }

    /// The marks of the buffer that starts at `start` in the route data
    /// stream, if it has any. Marks are queued in stream order, and only
    /// the front ones belong to buffers being written.
    fn marks_of(&self, start: u64) -> Option<&FrameMarks> {
        self.marks
            .iter()
            .take_while(|(at, _)| *at <= start)
            .find(|(at, _)| *at == start)
            .map(|(_, marks)| marks)
    }

    /// Makes room for `n` more pushes of route data: one allocation for a
    /// mailbox's worth of items instead of growing step by step.
    pub fn reserve_data(&mut self, n: usize) {
        self.data.reserve(n);
    }

    /// Route data bytes queued since the queue was created: the position,
    /// in the session's route data stream, of the end of what is queued.
    pub fn data_pushed(&self) -> u64 {
        self.data_pushed
    }

    /// Route data bytes written since the queue was created.
    pub fn data_written(&self) -> u64 {
        self.data_written
    }

    /// Control bytes queued since the queue was created: the position, in
    /// the session's control stream, of the end of what is queued.
    pub fn control_pushed(&self) -> u64 {
        self.control_pushed
    }

    /// Control bytes written since the queue was created.
    pub fn control_written(&self) -> u64 {
        self.control_written
    }

    /// Bytes waiting.
    pub fn len(&self) -> usize {
        self.bytes
    }

    /// Nothing waiting.
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// True when a control frame waits, or a frame was cut by a short
    /// write: both must go out whatever the pacing says.
    pub fn has_urgent(&self) -> bool {
        !self.control.is_empty() || self.data_cut_end().is_some()
    }

    /// True when route data waits.
    pub fn has_data(&self) -> bool {
        !self.data.is_empty()
    }

    /// If a short write cut a frame of the front data buffer: where that frame ends.
    fn data_cut_end(&self) -> Option<usize> {
        let front = self.data.front()?;
        if self.data_off == self.data_frame_start {
            return None;
        }
        Some(self.data_frame_start + frame_len_at(front, self.data_frame_start))
    }

    /// The buffers to write next, in wire order: the rest of a cut frame,
    /// control frames, then at most `data_limit` bytes of route data cut at
    /// a frame boundary.
    pub fn slices(&self, data_limit: usize) -> Vec<IoSlice<'_>> {
        self.slices_cut(data_limit, true)
    }

    /// [`Self::slices`] with route data cut at exactly `data_limit` bytes,
    /// inside a frame if need be: for a writer that takes a prefix of what
    /// it is given anyway (rustls), where finding the last frame boundary
    /// would walk every frame header a second time ([`Self::advance`]
    /// walks them too). A frame cut this way is finished before any control
    /// frame, as after a partial write.
    pub fn slices_bytes(&self, data_limit: usize) -> Vec<IoSlice<'_>> {
        self.slices_cut(data_limit, false)
    }

    fn slices_cut(&self, data_limit: usize, whole_frames: bool) -> Vec<IoSlice<'_>> {
        let mut out = Vec::with_capacity(MAX_IOVECS.min(self.control.len() + self.data.len() + 1));
        let mut data_from = self.data_off;
        if let Some(end) = self.data_cut_end() {
            out.push(IoSlice::new(&self.data[0][self.data_off..end]));
            data_from = end;
        }
        for (i, b) in self.control.iter().enumerate() {
            if out.len() == MAX_IOVECS {
                return out;
            }
            let from = if i == 0 { self.control_off } else { 0 };
            out.push(IoSlice::new(&b[from..]));
        }
        let mut budget = data_limit;
        // Where the current buffer starts in the route data stream.
        let mut buf_start = self.data_written - self.data_off as u64;
        for (i, buf) in self.data.iter().enumerate() {
            let from = if i == 0 { data_from } else { 0 };
            let b = &buf[from..];
            if out.len() == MAX_IOVECS || budget == 0 {
                break;
            }
            if b.is_empty() {
                continue;
            }
            if b.len() <= budget {
                out.push(IoSlice::new(b));
                budget -= b.len();
                buf_start += buf.len() as u64;
            } else {
                let end = if whole_frames {
                    whole_frames_end(buf, from, budget, self.marks_of(buf_start))
                } else {
                    from + budget
                };
                if end > from {
                    out.push(IoSlice::new(&buf[from..end]));
                }
                break;
            }
        }
        out
    }

    /// Drops `n` written bytes from the front, in the order of [`Self::slices`].
    pub fn advance(&mut self, mut n: usize) {
        self.bytes -= n;
        if let Some(end) = self.data_cut_end() {
            let take = n.min(end - self.data_off);
            self.advance_data(take);
            n -= take;
        }
        while n > 0 {
            let Some(front) = self.control.front() else {
                break;
            };
            let take = n.min(front.len() - self.control_off);
            self.control_off += take;
            self.control_written += take as u64;
            n -= take;
            if self.control_off == front.len() {
                self.control.pop_front();
                self.control_off = 0;
            }
        }
        self.advance_data(n);
        // The memory of a drained queue stays for the next burst unless it
        // grew past what a burst of updates needs (a big dump's).
        if self.data.is_empty() && self.data.capacity() > KEEP_DATA_QUEUE {
            self.data = VecDeque::new();
        }
    }

    /// Releases what a burst made drained queues grow to: the driver calls
    /// it once per keepalive interval, so that an idle session holds little
    /// (ADR 0011) while a busy one does not regrow its queues for every burst.
    pub fn release_if_drained(&mut self) {
        if self.control.is_empty() && self.control.capacity() > IDLE_CONTROL_QUEUE {
            self.control = VecDeque::new();
        }
        if self.data.is_empty() && self.data.capacity() > IDLE_DATA_QUEUE {
            self.data = VecDeque::new();
        }
        if self.marks.is_empty() && self.marks.capacity() > 0 {
            self.marks = VecDeque::new();
        }
    }

    /// Consumes `n` bytes of route data, keeping track of frame boundaries.
    fn advance_data(&mut self, mut n: usize) {
        self.data_written += n as u64;
        while n > 0 {
            let front = self.data.front().expect("advance past queued data");
            let take = n.min(front.len() - self.data_off);
            self.data_off += take;
            n -= take;
            let front_start = self.data_written - n as u64 - self.data_off as u64;
            if self.data_off == front.len() {
                // All written: no frame of it is cut, nothing to walk.
                if self.marks.front().is_some_and(|(at, _)| *at == front_start) {
                    self.marks.pop_front();
                }
                self.data.pop_front();
                self.data_off = 0;
                self.data_frame_start = 0;
                continue;
            }
            // Move the frame start up to the last boundary at or before
            // data_off (only the buffer a write ended in is walked, from
            // its last mark before data_off if it has marks).
            let marks = self.marks_of(front_start);
            let start = walk_start(self.data_frame_start, self.data_off, marks);
            self.data_frame_start = last_frame_end(front, start, self.data_off);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{encode_message, Message, Vni};
    use bytes::BytesMut;

    /// A SUBSCRIBE frame (6 bytes for small VNIs): stands for route data.
    fn f(vni: u32) -> Vec<u8> {
        let mut buf = BytesMut::new();
        encode_message(&Message::Subscribe(Vni(vni)), &mut buf);
        buf.to_vec()
    }

    fn k() -> Vec<u8> {
        crate::wire::codec::KEEPALIVE_FRAME.to_vec()
    }

    fn cat(parts: &[Vec<u8>]) -> Bytes {
        Bytes::from(parts.concat())
    }

    /// Writes everything with writes of at most `step` bytes.
    fn drain_all(o: &mut Outbound, step: usize) -> Vec<u8> {
        let mut wire = Vec::new();
        while !o.is_empty() {
            let flat: Vec<u8> = o
                .slices(usize::MAX)
                .iter()
                .flat_map(|s| s.to_vec())
                .collect();
            let n = step.min(flat.len());
            wire.extend_from_slice(&flat[..n]);
            o.advance(n);
        }
        wire
    }

    fn total(o: &Outbound, limit: usize) -> usize {
        o.slices(limit).iter().map(|s| s.len()).sum()
    }

    #[test]
    fn a_drained_queue_keeps_its_room_until_released_while_idle() {
        let mut o = Outbound::default();
        for vni in 0..20 {
            o.push_data(Bytes::from(f(vni)));
        }
        drain_all(&mut o, usize::MAX);
        let burst = o.data.capacity();
        assert!(burst >= 20, "the next burst does not regrow the queue");
        o.release_if_drained();
        assert_eq!(o.data.capacity(), 0, "an idle session holds none of it");
        // A single update's room stays: churn allocates nothing per delivery.
        o.push_data(Bytes::from(f(1)));
        drain_all(&mut o, usize::MAX);
        let single = o.data.capacity();
        o.release_if_drained();
        assert_eq!(o.data.capacity(), single);
        // Queued data is never released.
        o.push_data(Bytes::from(f(2)));
        o.release_if_drained();
        assert_eq!(drain_all(&mut o, usize::MAX), f(2));
    }

    #[test]
    fn control_overtakes_data_at_the_next_frame_boundary() {
        let mut o = Outbound::default();
        o.push_data(cat(&[f(1), f(2), f(3)]));
        o.advance(2); // a short write cut frame 1
        o.push_control(Bytes::from(k()));
        let mut wire = f(1)[..2].to_vec();
        wire.extend(drain_all(&mut o, 3));
        assert_eq!(wire, [f(1), k(), f(2), f(3)].concat());
    }

    #[test]
    fn data_positions_count_route_data_only() {
        let mut o = Outbound::default();
        o.push_data(cat(&[f(1), f(2)]));
        o.advance(2); // cuts frame 1
        o.push_control(Bytes::from(k()));
        o.push_data(cat(&[f(3)]));
        assert_eq!((o.data_pushed(), o.data_written()), (18, 2));
        // The rest of frame 1 (4), the keepalive (4) and frame 2 (6).
        o.advance(4 + 4 + 6);
        assert_eq!(o.data_written(), 12);
        o.advance(6);
        assert_eq!((o.data_pushed(), o.data_written()), (18, 18));
        assert!(o.is_empty());
    }

    #[test]
    fn control_goes_first_when_no_frame_is_cut() {
        let mut o = Outbound::default();
        o.push_data(cat(&[f(1), f(2)]));
        o.push_control(Bytes::from(k()));
        o.push_control(Bytes::from(k()));
        assert_eq!(drain_all(&mut o, 1), [k(), k(), f(1), f(2)].concat());
    }

    #[test]
    fn a_cut_control_frame_is_finished_before_anything_else() {
        let mut o = Outbound::default();
        o.push_control(Bytes::from(k()));
        o.push_data(cat(&[f(1)]));
        o.advance(2);
        o.push_control(Bytes::from(f(9)));
        let mut wire = k()[..2].to_vec();
        wire.extend(drain_all(&mut o, 5));
        assert_eq!(wire, [k(), f(9), f(1)].concat());
    }

    #[test]
    fn byte_cut_data_is_finished_before_a_control_frame() {
        let mut o = Outbound::default();
        o.push_data(cat(&[f(1), f(2), f(3)]));
        o.push_data(cat(&[f(4)]));
        let bytes =
            |o: &Outbound, limit| -> usize { o.slices_bytes(limit).iter().map(|s| s.len()).sum() };
        // Exactly the limit, inside frame 2 and across the two buffers.
        assert_eq!(bytes(&o, 9), 9);
        assert_eq!(bytes(&o, 20), 20);
        o.advance(9);
        // The rest of frame 2 is owed first; a keepalive queued now follows it.
        assert!(o.has_urgent());
        o.push_control(Bytes::from(k()));
        let mut wire = [f(1), f(2)[..3].to_vec()].concat();
        wire.extend(drain_all(&mut o, 4));
        assert_eq!(wire, [f(1), f(2), k(), f(3), f(4)].concat());
    }

    #[test]
    fn data_is_limited_at_frame_boundaries_and_a_deliberate_cut_is_not_urgent() {
        let mut o = Outbound::default();
        o.push_data(cat(&[f(1), f(2), f(3)]));
        o.push_data(cat(&[f(4), f(5)]));
        assert_eq!(o.len(), 30);
        assert_eq!(total(&o, 0), 0);
        assert_eq!(total(&o, 5), 0);
        assert_eq!(total(&o, 13), 12);
        assert_eq!(total(&o, 20), 18);
        assert_eq!(total(&o, 24), 24);
        assert_eq!(total(&o, usize::MAX), 30);
        // Write exactly the two frames offered: nothing is cut.
        o.advance(12);
        assert!(!o.has_urgent());
        assert_eq!(total(&o, 0), 0);
        assert_eq!(total(&o, 6), 6);
        // A short write inside frame 3: its rest must go, whatever the limit.
        o.advance(1);
        assert!(o.has_urgent());
        assert_eq!(total(&o, 0), 5);
        assert_eq!(total(&o, 6), 11);
        o.advance(5);
        assert!(!o.has_urgent());
        assert_eq!(o.len(), 12);
    }

    #[test]
    fn length_accounting() {
        let mut o = Outbound::default();
        o.push_data(cat(&[f(1)]));
        o.push_data(Bytes::new());
        o.push_control(Bytes::from(k()));
        assert_eq!(o.len(), 10);
        o.advance(10);
        assert!(o.is_empty());
        assert!(o.slices(usize::MAX).is_empty());
    }

    /// Route data of `n` frames (6 to 8 bytes each), VNIs `v * 13` (the
    /// lengths, and so the frame starts, differ from [`other_long_data`]'s).
    fn long_data(n: u32) -> Bytes {
        cat(&(1..=n).map(|v| f(v * 13 % 99_991)).collect::<Vec<_>>())
    }

    /// Route data of `n` frames, VNIs `v * 7`.
    fn other_long_data(n: u32) -> Bytes {
        cat(&(1..=n).map(|v| f(v * 7 % 99_991)).collect::<Vec<_>>())
    }

    /// Writes everything in paced writes of at most `batch` bytes; returns
    /// the wire and the most frame headers walked for one write.
    fn drain_paced(o: &mut Outbound, batch: usize) -> (Vec<u8>, usize) {
        let mut wire = Vec::new();
        let mut most_walked = 0;
        while !o.is_empty() {
            crate::wire::marks::WALKED.with(|w| w.set(0));
            let flat: Vec<u8> = o.slices(batch).iter().flat_map(|s| s.to_vec()).collect();
            wire.extend_from_slice(&flat);
            o.advance(flat.len());
            most_walked = most_walked.max(crate::wire::marks::WALKED.with(|w| w.get()));
        }
        (wire, most_walked)
    }

    #[test]
    fn paced_writes_of_a_marked_buffer_walk_few_frame_headers() {
        let frames = long_data(30_000);
        let other = long_data(20_000);
        let batch = 48 * 1024;
        let mut marked = Outbound::default();
        marked.push_data_marked(frames.clone(), FrameMarks::of(&frames));
        marked.push_control(Bytes::from(k()));
        marked.push_data(cat(&[f(1), f(2)]));
        marked.push_data_marked(other.clone(), FrameMarks::of(&other));
        let (wire, walked) = drain_paced(&mut marked, batch);
        assert!(marked.marks.is_empty(), "marks go with their buffers");
        let mut plain = Outbound::default();
        plain.push_data(frames.clone());
        plain.push_control(Bytes::from(k()));
        plain.push_data(cat(&[f(1), f(2)]));
        plain.push_data(other.clone());
        let (plain_wire, plain_walked) = drain_paced(&mut plain, batch);
        assert_eq!(wire, plain_wire, "marks never change what is written");
        // A cut and its accounting each walk at most a mark step of
        // 6-byte frames; without marks a write walks its whole batch.
        let step_frames = crate::wire::marks::MARK_STEP / 6 + 1;
        assert!(walked <= 2 * step_frames, "walked {walked}");
        assert!(plain_walked > batch / 8, "walked {plain_walked}");
    }

    mod properties {
        use super::*;
        use crate::wire::{decode_frame, Frame};
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Step {
            Data(Vec<u32>),
            /// Thousands of frames with their marks, as a seal sends them.
            MarkedData(u32),
            /// As many without marks, as a dump sends them.
            LongData(u32),
            Control(u32),
            Write {
                limit: usize,
                max: usize,
            },
        }

        fn step() -> impl Strategy<Value = Step> {
            prop_oneof![
                (proptest::collection::vec(1u32..100_000, 1..5)).prop_map(Step::Data),
                (1_600u32..3_000).prop_map(Step::MarkedData),
                (1_600u32..3_000).prop_map(Step::LongData),
                (100_000u32..200_000).prop_map(Step::Control),
                (0usize..40, 0usize..40).prop_map(|(limit, max)| Step::Write { limit, max }),
                (0usize..20_000, 0usize..20_000)
                    .prop_map(|(limit, max)| Step::Write { limit, max }),
            ]
        }

        proptest! {
            /// Whatever the write sizes and pacing limits, the wire carries
            /// whole frames only, route data in order, control frames in order.
            #[test]
            fn the_wire_is_always_a_sequence_of_whole_frames(steps in proptest::collection::vec(step(), 0..60)) {
                let mut o = Outbound::default();
                let mut wire = Vec::new();
                let (mut data_in, mut control_in) = (Vec::new(), Vec::new());
                let write = |o: &mut Outbound, wire: &mut Vec<u8>, limit: usize, max: usize| {
                    let flat: Vec<u8> = o.slices(limit).iter().flat_map(|s| s.to_vec()).collect();
                    let n = max.min(flat.len());
                    wire.extend_from_slice(&flat[..n]);
                    o.advance(n);
                };
                for s in steps {
                    match s {
                        Step::Data(vnis) => {
                            data_in.extend(vnis.iter().copied());
                            o.push_data(cat(&vnis.iter().map(|&v| f(v)).collect::<Vec<_>>()));
                        }
                        Step::MarkedData(n) => {
                            data_in.extend((1..=n).map(|v| v * 13 % 99_991));
                            let frames = long_data(n);
                            let marks = FrameMarks::of(&frames);
                            prop_assert!(marks.is_some());
                            o.push_data_marked(frames, marks);
                        }
                        Step::LongData(n) => {
                            data_in.extend((1..=n).map(|v| v * 7 % 99_991));
                            o.push_data(other_long_data(n));
                        }
                        Step::Control(v) => {
                            control_in.push(v);
                            o.push_control(Bytes::from(f(v)));
                        }
                        Step::Write { limit, max } => write(&mut o, &mut wire, limit, max),
                    }
                }
                while !o.is_empty() {
                    // Odd sizes cut frames; big ones keep long data quick.
                    let (limit, max) = if o.len() > 1_000 { (4096, 997) } else { (usize::MAX, 7) };
                    write(&mut o, &mut wire, limit, max);
                }
                let mut buf = BytesMut::from(&wire[..]);
                let (mut data_out, mut control_out) = (Vec::new(), Vec::new());
                while let Some(frame) = decode_frame(&mut buf).unwrap() {
                    let Frame::Message(Message::Subscribe(Vni(v))) = frame else { panic!("{frame:?}") };
                    if v >= 100_000 { control_out.push(v) } else { data_out.push(v) }
                }
                prop_assert!(buf.is_empty());
                prop_assert_eq!(data_out, data_in);
                prop_assert_eq!(control_out, control_in);
            }
        }
    }
}
