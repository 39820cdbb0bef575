//! Frame marks: where frames start in a long buffer of back-to-back frames,
//! one every [`MARK_STEP`] bytes or so.
//!
//! A paced session writes a buffer in pieces that end at a frame boundary,
//! and finding the last boundary within a budget means walking the frame
//! headers before it: about 1,400 of them for a 48 KiB batch of IPv4
//! updates. Every subscriber of a VNI did that walk over the same sealed
//! buffer, twice (once to cut a write, once to account for it). With marks,
//! computed once per sealed buffer and shared like the buffer, a writer
//! starts walking at the last mark before the cut: at most [`MARK_STEP`]
//! bytes of headers per write.

use std::sync::Arc;

use super::codec::{frame_len_at, HEADER_LEN};

/// Bytes between two marks, at least (the last frame start at or after it).
/// The walk is latency-bound (each header's load waits for the previous
/// one, and most miss the cache), so the step is small: a mark per 512
/// bytes costs 0.8 % of the buffer's size, once for all its readers.
pub const MARK_STEP: usize = 512;
/// Buffers shorter than this get no marks: a cut walks little of them anyway.
const MIN_MARKED: usize = 8 * 1024;

/// Frame starts of one buffer, ascending, at least [`MARK_STEP`] apart.
/// Cheap to clone: the buffer's readers share one list. A thin pointer (an
/// `Arc<[u32]>` is two words), so that a mail stays small.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameMarks(Arc<Vec<u32>>);

impl FrameMarks {
    /// The marks of `frames` (whole frames back to back), or `None` when it
    /// is too short for marks to save anything.
    pub fn of(frames: &[u8]) -> Option<Self> {
        if frames.len() < MIN_MARKED {
            return None;
        }
        let mut marks = Vec::with_capacity(frames.len() / MARK_STEP + 1);
        let mut next_mark = MARK_STEP;
        let mut at = 0;
        while at + HEADER_LEN <= frames.len() {
            if at >= next_mark {
                marks.push(at as u32);
                next_mark = at + MARK_STEP;
            }
            at += frame_len_at(frames, at);
        }
        Some(Self(Arc::new(marks)))
    }

    /// The last marked frame start at or before `pos` (0, the first frame's
    /// start, if there is none).
    pub fn start_at_or_before(&self, pos: usize) -> usize {
        let n = self.0.partition_point(|&m| m as usize <= pos);
        n.checked_sub(1).map_or(0, |i| self.0[i] as usize)
    }
}

/// End of the longest run of whole frames in `buf` that starts at `from` (a
/// frame start) and is at most `max` bytes long. With `marks` (the marks of
/// `buf`) the walk starts at the last mark within reach rather than at `from`.
pub fn whole_frames_end(buf: &[u8], from: usize, max: usize, marks: Option<&FrameMarks>) -> usize {
    let limit = from.saturating_add(max).min(buf.len());
    last_frame_end(buf, walk_start(from, limit, marks), limit)
}

/// The last frame boundary at or before `limit` in `buf`, walking the frame
/// headers from `start` (a frame start at or before `limit`).
pub fn last_frame_end(buf: &[u8], start: usize, limit: usize) -> usize {
    let mut end = start;
    while end + HEADER_LEN <= limit {
        let next = end + frame_len_at(buf, end);
        if next > limit {
            break;
        }
        #[cfg(test)]
        WALKED.with(|w| w.set(w.get() + 1));
        end = next;
    }
    end
}

#[cfg(test)]
thread_local! {
    /// Frame headers [`last_frame_end`] stepped over on this thread: tests
    /// count the walking that marks save.
    pub static WALKED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The last frame start at or before `limit` known without walking: `from`,
/// or a later mark.
pub fn walk_start(from: usize, limit: usize, marks: Option<&FrameMarks>) -> usize {
    marks.map_or(from, |m| m.start_at_or_before(limit).max(from))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{encode_message, Message, Vni};
    use bytes::BytesMut;
    use proptest::prelude::*;

    /// Back-to-back frames of the given payload lengths (SUBSCRIBEs and
    /// KEEPALIVEs stand for any frame: only the header counts here).
    fn frames(sizes: &[u8]) -> (Vec<u8>, Vec<usize>) {
        let mut buf = BytesMut::new();
        let mut starts = Vec::new();
        for &s in sizes {
            starts.push(buf.len());
            if s == 0 {
                buf.extend_from_slice(&crate::wire::KEEPALIVE_FRAME);
            } else {
                encode_message(
                    &Message::Subscribe(Vni(u32::from(s) << (7 * u32::from(s)))),
                    &mut buf,
                );
            }
        }
        (buf.to_vec(), starts)
    }

    #[test]
    fn short_buffers_get_no_marks() {
        let (buf, _) = frames(&[1; 100]);
        assert!(buf.len() < MIN_MARKED);
        assert_eq!(FrameMarks::of(&buf), None);
    }

    #[test]
    fn marks_are_frame_starts_a_step_apart() {
        let (buf, starts) = frames(&[1; 20_000]);
        let marks = FrameMarks::of(&buf).expect("long enough");
        assert!(marks.0.len() >= buf.len() / (MARK_STEP + 16) - 1);
        let mut last = 0;
        for &m in marks.0.iter() {
            let m = m as usize;
            assert!(starts.binary_search(&m).is_ok(), "{m} is a frame start");
            assert!(m - last >= MARK_STEP && m - last < MARK_STEP + 16);
            last = m;
        }
    }

    #[test]
    fn a_cut_walks_at_most_a_step_of_headers() {
        let (buf, _) = frames(&[1; 20_000]);
        let marks = FrameMarks::of(&buf).expect("long enough");
        for (from, max) in [(0, 48 * 1024), (6 * 1000, 60 * 1024), (30_000, 100)] {
            let limit = (from + max).min(buf.len());
            let start = walk_start(from, limit, Some(&marks));
            assert!(limit - start <= MARK_STEP + 16, "walks {}", limit - start);
            assert_eq!(walk_start(from, limit, None), from);
        }
    }

    proptest! {
        /// With or without marks, a cut ends at the same frame boundary: the
        /// last one within reach.
        #[test]
        fn marks_never_change_where_a_cut_ends(
            sizes in proptest::collection::vec(0u8..=3, 2_000..6_000),
            from_frame in 0usize..2_000,
            max in 0usize..70_000,
        ) {
            let (buf, starts) = frames(&sizes);
            let marks = FrameMarks::of(&buf);
            let from = starts[from_frame.min(starts.len() - 1)];
            let end = whole_frames_end(&buf, from, max, marks.as_ref());
            prop_assert_eq!(end, whole_frames_end(&buf, from, max, None));
            let limit = (from + max).min(buf.len());
            prop_assert!(end <= limit);
            prop_assert!(end == buf.len() || starts.binary_search(&end).is_ok());
            // The next frame would not fit.
            if end < buf.len() {
                prop_assert!(end + frame_len_at(&buf, end) > limit);
            }
            let mark = marks.as_ref().map_or(0, |m| m.start_at_or_before(end));
            prop_assert!(mark == 0 || starts.binary_search(&mark).is_ok());
        }
    }
}
