//! Delivery timing: how long until what was queued up to a point of a
//! session's route data stream has been written to its socket.
//!
//! A session registers a timer at the stream position just past some queued
//! data (a SUBSCRIBE dump, or the updates pulled from the log in one go) with
//! the instant the data's cause arrived. As writes advance the written
//! position, the timers at or before it complete and their elapsed time is
//! observed. That costs one timer per dump and at most one per log pull,
//! never one per route.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Update timers kept before new ones are merged into the newest: a session
/// that cannot write keeps a bounded list (merging keeps the oldest start,
/// so the observed latency never looks better than it was).
const MAX_UPDATE_TIMERS: usize = 32;

/// What a timer measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Live updates: from their arrival to written.
    Updates,
    /// A SUBSCRIBE dump: from the SUBSCRIBE's arrival to its last byte written.
    Dump,
}

#[derive(Debug)]
struct Timer {
    end: u64,
    since: Instant,
    kind: Delivery,
}

/// Pending timers of one session, in stream order.
#[derive(Debug, Default)]
pub struct DeliveryTimers {
    pending: VecDeque<Timer>,
}

impl DeliveryTimers {
    /// Starts a timer that completes once the stream is written up to `end`.
    pub fn start(&mut self, end: u64, since: Instant, kind: Delivery) {
        if kind == Delivery::Updates && self.pending.len() >= MAX_UPDATE_TIMERS {
            if let Some(last) = self.pending.back_mut() {
                if last.kind == Delivery::Updates {
                    last.end = last.end.max(end);
                    last.since = last.since.min(since);
                    return;
                }
            }
        }
        self.pending.push_back(Timer { end, since, kind });
    }

    /// Completes every timer at or before `written`, calling `observe` with
    /// its kind and elapsed time.
    pub fn complete(
        &mut self,
        written: u64,
        now: Instant,
        mut observe: impl FnMut(Delivery, Duration),
    ) {
        while let Some(front) = self.pending.front() {
            if front.end > written {
                break;
            }
            observe(front.kind, now.saturating_duration_since(front.since));
            self.pending.pop_front();
        }
    }

    /// True when a timer completes once the stream is written up to
    /// `written` (a clock read is needed only then).
    pub fn any_due(&self, written: u64) -> bool {
        self.pending.front().is_some_and(|t| t.end <= written)
    }

    /// Timers pending.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// True when no timer is pending.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn timers_complete_in_order_as_the_stream_is_written() {
        let t0 = Instant::now();
        let mut timers = DeliveryTimers::default();
        timers.start(100, t0, Delivery::Dump);
        timers.start(150, t0 + ms(5), Delivery::Updates);
        let mut seen = Vec::new();
        assert!(!timers.any_due(99));
        assert!(timers.any_due(100));
        timers.complete(99, t0 + ms(10), |k, d| seen.push((k, d)));
        assert!(seen.is_empty());
        timers.complete(120, t0 + ms(10), |k, d| seen.push((k, d)));
        assert_eq!(seen, vec![(Delivery::Dump, ms(10))]);
        timers.complete(150, t0 + ms(20), |k, d| seen.push((k, d)));
        assert_eq!(seen[1], (Delivery::Updates, ms(15)));
        assert!(timers.is_empty());
    }

    #[test]
    fn an_empty_dump_completes_at_once() {
        let t0 = Instant::now();
        let mut timers = DeliveryTimers::default();
        timers.start(0, t0, Delivery::Dump);
        assert!(timers.any_due(0), "due as soon as queued");
        let mut seen = 0;
        timers.complete(0, t0, |_, _| seen += 1);
        assert_eq!(seen, 1);
    }

    #[test]
    fn update_timers_are_bounded_and_merging_keeps_the_oldest_start() {
        let t0 = Instant::now();
        let mut timers = DeliveryTimers::default();
        for i in 0..1000u64 {
            timers.start(i + 1, t0 + ms(i), Delivery::Updates);
        }
        assert_eq!(timers.len(), MAX_UPDATE_TIMERS);
        // Dumps are never merged away.
        timers.start(2000, t0, Delivery::Dump);
        assert_eq!(timers.len(), MAX_UPDATE_TIMERS + 1);
        let mut seen = Vec::new();
        timers.complete(1000, t0 + ms(2000), |k, d| seen.push((k, d)));
        assert_eq!(seen.len(), MAX_UPDATE_TIMERS);
        // The merged timer started with its oldest update.
        let merged = seen.last().unwrap();
        assert_eq!(
            *merged,
            (Delivery::Updates, ms(2000 - (MAX_UPDATE_TIMERS as u64 - 1)))
        );
        timers.complete(2000, t0 + ms(2000), |k, d| seen.push((k, d)));
        assert_eq!(seen.last().unwrap().0, Delivery::Dump);
    }
}
