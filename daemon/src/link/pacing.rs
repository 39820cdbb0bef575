//! Pacing of route data so that a peer never has 64 KiB or more unread
//! (PROTOCOL.md section 6).
//!
//! A Go reference peer reads into a fresh 65,535-byte buffer with no
//! carry-over: a read that fills the buffer, or ends inside a frame, resets
//! the session. Peers do not say what they are, so we watch the socket.
//!
//! * **ACK gating.** At most one batch is unacknowledged (`SIOCOUTQ`) at a
//!   time. Outside quick-ACK mode a Linux receiver acknowledges when its
//!   application reads, so an acknowledged batch has normally been read.
//! * **Batch size by ACK delay (AIMD).** A session starts with small batches,
//!   because the receiver's first segments are acknowledged at once whether
//!   read or not. Quick ACKs grow the batch step by step up to the limit; an
//!   ACK slower than [`SLOW_ACK`] (a slow reader, or the receiver's
//!   delayed-ACK timer acknowledging unread data) halves it. An ACK is
//!   timed by when it arrived (`tcpi_last_ack_recv`), not by when a busy
//!   sender looked.
//! * **Window shrink.** How far the peer's advertised window
//!   (`TCP_INFO.tcpi_snd_wnd`) has shrunk from its recent maximum counts as
//!   unread data too; it catches peers whose receive buffer is nearly full.
//!   The window also moves for its own reasons (buffer autotuning, a reopened
//!   window that is not re-advertised), so the baseline is the largest window
//!   of the last [`WINDOW_EPOCH`]s, a shrink beyond [`HARD_LIMIT`] becomes
//!   the new baseline at once, and when only the window holds data back a
//!   small probe batch fetches a fresh one.
//!
//! * **Fast readers go unpaced.** Linux grows a receiver's buffer (and so the
//!   window it advertises) only while its application reads more per
//!   round trip than the buffer holds. A peer whose window has passed
//!   [`FAST_READER_WINDOW`] has shown that it reads fast; from then on it gets
//!   data as fast as TCP takes it. A Go peer, fed paced batches and reading
//!   slowly, keeps a window of around 100 KiB.
//!
//! A slow reader is fed at its own pace.

use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// Largest whole frame (header + the largest payload we ever send).
pub const MAX_FRAME: usize = crate::wire::HEADER_LEN + crate::wire::MAX_SEND_PAYLOAD;
/// A peer that advertised a window this large reads fast: pacing stops.
pub const FAST_READER_WINDOW: u32 = 1 << 20;
/// Upper bound of the configurable limit, below the Go reader's 65,535 bytes.
const HARD_LIMIT: usize = 60 * 1024;
/// How long to wait before re-checking a peer that has too much unread.
pub const RECHECK: Duration = Duration::from_millis(1);
/// First batch of a session (and the most it may grow by per quick ACK, see
/// [`BATCH_STEP`]).
const INITIAL_BATCH: usize = 16 * 1024;
/// Smallest batch.
const MIN_BATCH: usize = 2 * 1024;
/// Additive batch increase per quick ACK.
const BATCH_STEP: usize = 2 * 1024;
/// An ACK slower than this halves the batch. Linux's delayed-ACK timer is at
/// least 40 ms, so quicker ACKs are sent because the peer read the data.
const SLOW_ACK: Duration = Duration::from_millis(20);
/// After this long with everything acknowledged but the window still
/// shrunk, send a small probe batch: its ACK carries a fresh window.
const PROBE_AFTER: Duration = Duration::from_millis(10);
/// Size of a probe batch.
const PROBE_BYTES: usize = 2 * 1024;
/// The window baseline is the largest window of the last two epochs, so a
/// baseline from a moment the window was briefly larger ages out.
const WINDOW_EPOCH: Duration = Duration::from_millis(250);

/// What the kernel says about a socket's send side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketProbe {
    /// Bytes written but not yet acknowledged by the peer (`SIOCOUTQ`).
    pub unacked: usize,
    /// What `TCP_INFO` says about the peer.
    pub peer: PeerInfo,
}

/// What `TCP_INFO` says about the peer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerInfo {
    /// Receive window the peer advertised last (`tcpi_snd_wnd`), if the kernel reports it.
    pub window: Option<u32>,
    /// How long ago the last acknowledgement arrived (`tcpi_last_ack_recv`,
    /// counted in the kernel's clock ticks, so up to a few milliseconds
    /// short), if known.
    pub acked_ago: Option<Duration>,
}

/// What to do with queued route data now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Write at most this many bytes of whole frames.
    Send(usize),
    /// Hold route data; look again after this long.
    Wait(Duration),
}

/// Per-session pacing state. Pure logic: the caller supplies socket probes and time.
#[derive(Clone, Debug)]
pub struct Pacer {
    limit: usize,
    batch: usize,
    /// Largest window seen in the current and the previous epoch.
    max_window: [u32; 2],
    epoch_start: Option<Instant>,
    /// When the oldest unacknowledged batch went out.
    awaiting_ack: Option<Instant>,
    /// Since when a window shrink alone holds data back.
    window_stall: Option<Instant>,
    /// The peer has shown that it reads fast (see [`FAST_READER_WINDOW`]).
    fast_reader: bool,
    /// Position in the session's outbound stream (every byte written,
    /// control frames too) up to which the last [`Decision::Send`] allowed
    /// writing: see [`Pacer::allowance`].
    allowed_until: u64,
}

impl Pacer {
    /// A pacer whose batches grow up to `limit` bytes; 0 disables pacing.
    pub fn new(limit: usize) -> Self {
        let limit = if limit == 0 {
            0
        } else {
            limit.clamp(MAX_FRAME + MIN_BATCH, HARD_LIMIT)
        };
        Self {
            limit,
            batch: INITIAL_BATCH.min(limit),
            max_window: [0; 2],
            epoch_start: None,
            awaiting_ack: None,
            window_stall: None,
            fast_reader: false,
            allowed_until: 0,
        }
    }

    /// True when pacing is switched off, or no longer needed for this peer.
    pub fn is_disabled(&self) -> bool {
        self.limit == 0 || self.fast_reader
    }

    /// The peer is known not to read like a Go reference peer (it
    /// negotiated a metalbondd extension): it gets data as fast as TCP
    /// takes it from now on, like a proven fast reader, and costs no
    /// probes. Route data may already be queued: nothing of it was
    /// written past a frame boundary, so stopping here is safe.
    pub fn peer_reads_streams(&mut self) {
        self.fast_reader = true;
    }

    /// Current batch size.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// How far the peer's window has shrunk from its recent maximum.
    fn window_shrink(&mut self, window: Option<u32>, now: Instant) -> usize {
        let Some(w) = window else {
            return 0;
        };
        let start = *self.epoch_start.get_or_insert(now);
        if now.duration_since(start) >= WINDOW_EPOCH {
            self.max_window = [0, self.max_window[0]];
            self.epoch_start = Some(now);
        }
        let mut baseline = self.max_window[0].max(self.max_window[1]);
        if w > baseline || (baseline - w) as usize > HARD_LIMIT {
            // A shrink beyond the hard limit cannot be a Go peer's unread
            // data (it would have reset already): the window moved by itself.
            self.max_window = [w, 0];
            baseline = w;
        }
        self.max_window[0] = self.max_window[0].max(w);
        (baseline - w) as usize
    }

    /// Records that `bytes` of route data were written at `now`.
    pub fn on_sent(&mut self, bytes: usize, now: Instant) {
        if bytes > 0 && !self.is_disabled() {
            self.awaiting_ack.get_or_insert(now);
        }
    }

    /// What the last [`Pacer::decide_at`] still allows without a new probe:
    /// `Some(bytes)` when `queued` bytes fit in it, `written` being the
    /// session's outbound position (every byte written so far). The peer's
    /// unread data is at most what the probe saw plus what was written since,
    /// so staying within that decision keeps the bound without asking the
    /// kernel again. Small updates to an idle peer then cost no probe (two
    /// syscalls, a tenth of the kernel time of the fleet benchmark's churn);
    /// bulk data uses up an allowance in one write and is probed each time.
    pub fn allowance(&self, written: u64, queued: usize) -> Option<usize> {
        let left = self.allowed_until.checked_sub(written)?;
        (queued as u64 <= left).then_some(left as usize)
    }

    /// [`Pacer::decide`] for a session whose outbound position is `written`,
    /// remembered for [`Pacer::allowance`].
    pub fn decide_at(&mut self, probe: SocketProbe, now: Instant, written: u64) -> Decision {
        let decision = self.decide(probe, now);
        self.allowed_until = match decision {
            Decision::Send(n) => written.saturating_add(n as u64),
            Decision::Wait(_) => 0,
        };
        decision
    }

    /// Whether route data has to wait for acknowledgements whatever the
    /// peer's window says: more than a batch is still unacknowledged. Then
    /// the caller need not read the window (`TCP_INFO`, the dearer half of
    /// a probe) and waits as [`Pacer::decide`] would have told it; like a
    /// wait from [`Pacer::decide_at`], it leaves no allowance. A session
    /// waiting for an ACK asks this on each re-check (half of the probes of a
    /// reconnect storm); a peer turning into a fast reader is noticed at the
    /// next full probe.
    pub fn must_wait(&mut self, unacked: usize) -> bool {
        let wait = !self.is_disabled() && unacked > 0 && unacked + MAX_FRAME > self.batch;
        if wait {
            self.allowed_until = 0;
        }
        wait
    }

    /// Decides how much route data may be written now.
    pub fn decide(&mut self, probe: SocketProbe, now: Instant) -> Decision {
        if probe.peer.window.is_some_and(|w| w >= FAST_READER_WINDOW) {
            self.fast_reader = true;
        }
        if self.is_disabled() {
            return Decision::Send(usize::MAX);
        }
        if probe.unacked == 0 {
            if let Some(sent) = self.awaiting_ack.take() {
                // When the ACK arrived, not when we looked: a busy server
                // looks late, and an ACK it noticed late is no sign of a
                // slow reader. Never earlier than the batch went out (the
                // tick count may be short).
                let acked = probe
                    .peer
                    .acked_ago
                    .and_then(|ago| now.checked_sub(ago))
                    .map_or(now, |at| at.clamp(sent, now));
                self.batch = if acked.duration_since(sent) >= SLOW_ACK {
                    (self.batch / 2).max(MIN_BATCH)
                } else {
                    (self.batch + BATCH_STEP).min(self.limit)
                };
            }
        }
        let shrink = self.window_shrink(probe.peer.window, now);
        let unread = probe.unacked + shrink;
        if unread + MAX_FRAME <= self.batch {
            self.window_stall = None;
            return Decision::Send(self.batch - unread);
        }
        if probe.unacked == 0 {
            // Only the window holds us back; it may be stale (a reopened
            // window is not always advertised). A probe fetches a fresh one.
            let since = *self.window_stall.get_or_insert(now);
            if now.duration_since(since) >= PROBE_AFTER && unread + PROBE_BYTES <= HARD_LIMIT {
                self.window_stall = Some(now);
                return Decision::Send(PROBE_BYTES);
            }
        }
        // Otherwise the ACK will come: on the peer's next read or its delayed-ACK timer.
        Decision::Wait(RECHECK)
    }
}

/// Reads `SIOCOUTQ` and `TCP_INFO` of a connected TCP socket.
pub fn probe_socket(fd: RawFd) -> std::io::Result<SocketProbe> {
    Ok(SocketProbe {
        unacked: unacked_bytes(fd)?,
        peer: peer_info(fd)?,
    })
}

/// Bytes written to a connected TCP socket and not yet acknowledged
/// (`SIOCOUTQ`).
#[cfg(target_os = "linux")]
pub fn unacked_bytes(fd: RawFd) -> std::io::Result<usize> {
    let mut unacked: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one c_int through the pointer, which
    // points to a live local; `fd` is a socket owned by the caller.
    if unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut unacked) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(unacked.max(0) as usize)
}

/// The receive window the peer advertised last (`TCP_INFO.tcpi_snd_wnd`)
/// and how long ago its last acknowledgement arrived
/// (`tcpi_last_ack_recv`), as far as the kernel reports them.
#[cfg(target_os = "linux")]
pub fn peer_info(fd: RawFd) -> std::io::Result<PeerInfo> {
    // SAFETY: tcp_info is plain old data; all-zero is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info` and updates `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // Kernels before 5.4 return a shorter struct without tcpi_snd_wnd.
    let snd_wnd_end = std::mem::offset_of!(libc::tcp_info, tcpi_snd_wnd) + 4;
    let last_ack_end = std::mem::offset_of!(libc::tcp_info, tcpi_last_ack_recv) + 4;
    Ok(PeerInfo {
        window: (len as usize >= snd_wnd_end).then_some(info.tcpi_snd_wnd),
        acked_ago: (len as usize >= last_ack_end)
            .then(|| Duration::from_millis(info.tcpi_last_ack_recv.into())),
    })
}

/// Elsewhere nothing is known: pace on nothing (never hold data back).
#[cfg(not(target_os = "linux"))]
pub fn unacked_bytes(_fd: RawFd) -> std::io::Result<usize> {
    Ok(0)
}

/// Elsewhere nothing is known.
#[cfg(not(target_os = "linux"))]
pub fn peer_info(_fd: RawFd) -> std::io::Result<PeerInfo> {
    Ok(PeerInfo::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(unacked: usize, window: u32) -> SocketProbe {
        SocketProbe {
            unacked,
            peer: PeerInfo {
                window: Some(window),
                acked_ago: None,
            },
        }
    }

    /// `probe` with its last ACK `ago`.
    fn acked(mut probe: SocketProbe, ago: Duration) -> SocketProbe {
        probe.peer.acked_ago = Some(ago);
        probe
    }

    const LIMIT: usize = 48 * 1024;

    /// Sends what the pacer allows and lets the peer acknowledge after `ack_after`.
    fn cycle(pacer: &mut Pacer, now: &mut Instant, ack_after: Duration) -> usize {
        let Decision::Send(n) = pacer.decide(p(0, 100_000), *now) else {
            panic!("expected to send")
        };
        pacer.on_sent(n, *now);
        assert_eq!(pacer.decide(p(n, 100_000), *now), Decision::Wait(RECHECK));
        *now += ack_after;
        n
    }

    #[test]
    fn must_wait_only_where_any_window_would_wait_too() {
        let mut now = Instant::now();
        let mut waited = 0;
        // Pacers in different states: fresh, grown by quick ACKs, shrunk by slow ones.
        for ack_after in [
            None,
            Some(Duration::from_micros(50)),
            Some(Duration::from_millis(30)),
        ] {
            let mut pacer = Pacer::new(LIMIT);
            if let Some(after) = ack_after {
                for _ in 0..10 {
                    cycle(&mut pacer, &mut now, after);
                }
            }
            for unacked in (0..=LIMIT + MAX_FRAME).step_by(512) {
                let mut asked = pacer.clone();
                if !asked.must_wait(unacked) {
                    continue;
                }
                waited += 1;
                assert_eq!(asked.allowance(0, 1), None, "a wait leaves no allowance");
                for window in [0, 1_000, 65_535, 200_000, FAST_READER_WINDOW - 1] {
                    let decision = pacer.clone().decide(p(unacked, window), now);
                    assert_eq!(
                        decision,
                        Decision::Wait(RECHECK),
                        "unacked {unacked}, window {window}"
                    );
                }
            }
        }
        assert!(waited > 0);
        assert!(!Pacer::new(0).must_wait(LIMIT), "unpaced never waits");
    }

    #[test]
    fn a_fast_reader_gets_batches_growing_to_the_limit() {
        let mut pacer = Pacer::new(LIMIT);
        let mut now = Instant::now();
        let sizes: Vec<usize> = (0..40)
            .map(|_| cycle(&mut pacer, &mut now, Duration::from_micros(50)))
            .collect();
        assert_eq!(sizes[0], INITIAL_BATCH);
        assert!(sizes.windows(2).all(|w| w[1] >= w[0]), "{sizes:?}");
        assert_eq!(*sizes.last().unwrap(), LIMIT);
    }

    #[test]
    fn unacknowledged_bytes_never_exceed_one_batch() {
        let mut pacer = Pacer::new(LIMIT);
        let t = Instant::now();
        assert_eq!(
            pacer.decide(p(0, 100_000), t),
            Decision::Send(INITIAL_BATCH)
        );
        pacer.on_sent(INITIAL_BATCH, t);
        for ms in 0..500 {
            let now = t + Duration::from_millis(ms);
            assert_eq!(
                pacer.decide(p(INITIAL_BATCH - 100, 100_000), now),
                Decision::Wait(RECHECK)
            );
        }
        // A small update can go while a little is unacknowledged.
        assert_eq!(
            pacer.decide(p(100, 100_000), t),
            Decision::Send(INITIAL_BATCH - 100)
        );
    }

    #[test]
    fn slow_acks_shrink_the_batch_and_quick_ones_grow_it_back() {
        let mut pacer = Pacer::new(LIMIT);
        let mut now = Instant::now();
        let sizes: Vec<usize> = (0..6)
            .map(|_| cycle(&mut pacer, &mut now, Duration::from_millis(45)))
            .collect();
        assert_eq!(sizes[0], INITIAL_BATCH);
        assert!(sizes.windows(2).all(|w| w[1] <= w[0]), "{sizes:?}");
        assert_eq!(*sizes.last().unwrap(), MIN_BATCH);
        let grown: Vec<usize> = (0..40)
            .map(|_| cycle(&mut pacer, &mut now, Duration::from_micros(100)))
            .collect();
        assert_eq!(*grown.last().unwrap(), LIMIT);
    }

    /// Sends a batch; `acked_after` later the ACK arrives, and the pacer
    /// looks `noticed_after` after sending. Returns the next batch.
    fn ack_seen_late(pacer: &mut Pacer, acked_after: Duration, noticed_after: Duration) -> usize {
        let t = Instant::now();
        let Decision::Send(n) = pacer.decide(p(0, 100_000), t) else {
            panic!("expected to send")
        };
        pacer.on_sent(n, t);
        let probe = acked(p(0, 100_000), noticed_after.saturating_sub(acked_after));
        let Decision::Send(next) = pacer.decide(probe, t + noticed_after) else {
            panic!("expected to send")
        };
        next
    }

    #[test]
    fn an_ack_is_timed_by_its_arrival_not_by_when_it_was_noticed() {
        let late = Duration::from_millis(45);
        // A quick ACK that a busy sender noticed late grows the batch.
        let mut pacer = Pacer::new(LIMIT);
        let grown = ack_seen_late(&mut pacer, Duration::from_micros(200), late);
        assert_eq!(grown, INITIAL_BATCH + BATCH_STEP);
        // A slow one halves it, however soon it was noticed.
        let mut pacer = Pacer::new(LIMIT);
        let slow = Duration::from_millis(30);
        assert_eq!(ack_seen_late(&mut pacer, slow, slow), INITIAL_BATCH / 2);
        // An arrival reported before the batch went out (the kernel's tick
        // count is coarse) counts as at once, never earlier.
        let mut pacer = Pacer::new(LIMIT);
        let t = Instant::now();
        pacer.decide(p(0, 100_000), t);
        pacer.on_sent(INITIAL_BATCH, t);
        let probe = acked(p(0, 100_000), late + Duration::from_millis(15));
        assert_eq!(
            pacer.decide(probe, t + late),
            Decision::Send(INITIAL_BATCH + BATCH_STEP)
        );
    }

    #[test]
    fn window_shrink_counts_as_unread() {
        let mut pacer = Pacer::new(LIMIT);
        let t = Instant::now();
        pacer.decide(p(0, 100_000), t);
        assert_eq!(
            pacer.decide(p(0, 90_000), t),
            Decision::Send(INITIAL_BATCH - 10_000)
        );
        assert_eq!(pacer.decide(p(0, 80_000), t), Decision::Wait(RECHECK));
        // A reopened window resumes at once.
        assert_eq!(
            pacer.decide(p(0, 100_000), t),
            Decision::Send(INITIAL_BATCH)
        );
    }

    #[test]
    fn a_stale_window_is_probed_but_never_pushed_to_the_hard_limit() {
        let mut pacer = Pacer::new(LIMIT);
        let t = Instant::now();
        pacer.decide(p(0, 100_000), t);
        let mut unread = 40 * 1024;
        let mut now = t;
        let mut probes = 0;
        // Within one epoch the baseline stays: only probes go out.
        for _ in 0..20 {
            now += PROBE_AFTER / 2;
            if let Decision::Send(n) = pacer.decide(p(0, 100_000 - unread as u32), now) {
                assert_eq!(n, PROBE_BYTES);
                unread += n;
                probes += 1;
            }
        }
        assert!(probes > 0);
        assert!(unread <= HARD_LIMIT, "{unread}");
    }

    #[test]
    fn an_old_window_maximum_ages_out() {
        let mut pacer = Pacer::new(LIMIT);
        let t = Instant::now();
        pacer.decide(p(0, 200_000), t);
        // The window settles 40 KB lower: held back at first...
        assert_eq!(pacer.decide(p(0, 160_000), t), Decision::Wait(RECHECK));
        // ...and free again once the old maximum is two epochs old.
        let later = t + WINDOW_EPOCH * 2;
        pacer.decide(p(0, 160_000), t + WINDOW_EPOCH);
        assert_eq!(
            pacer.decide(p(0, 160_000), later),
            Decision::Send(INITIAL_BATCH)
        );
    }

    #[test]
    fn a_window_shrink_beyond_the_hard_limit_becomes_the_new_baseline() {
        let mut pacer = Pacer::new(LIMIT);
        let t = Instant::now();
        pacer.decide(p(0, 900_000), t);
        assert_eq!(
            pacer.decide(p(0, 900_000 - 16_000), t),
            Decision::Wait(RECHECK)
        );
        assert_eq!(
            pacer.decide(p(0, 500_000), t),
            Decision::Send(INITIAL_BATCH)
        );
        assert_eq!(
            pacer.decide(p(0, 500_000 - 4_000), t),
            Decision::Send(INITIAL_BATCH - 4_000)
        );
    }

    #[test]
    fn waiting_for_an_ack_never_gives_up() {
        // The ACK always comes (the peer's delayed-ACK timer at the latest);
        // until then nothing more than one batch is outstanding.
        let mut pacer = Pacer::new(LIMIT);
        let t = Instant::now();
        pacer.decide(p(0, 100_000), t);
        pacer.on_sent(INITIAL_BATCH, t);
        for s in 0..100 {
            let now = t + Duration::from_millis(s * 50);
            assert_eq!(
                pacer.decide(p(INITIAL_BATCH, 100_000 - INITIAL_BATCH as u32), now),
                Decision::Wait(RECHECK)
            );
        }
    }

    #[test]
    fn a_peer_whose_window_grew_past_the_fast_reader_mark_is_no_longer_paced() {
        let mut pacer = Pacer::new(LIMIT);
        let t = Instant::now();
        assert_eq!(
            pacer.decide(p(0, 900_000), t),
            Decision::Send(INITIAL_BATCH)
        );
        pacer.on_sent(INITIAL_BATCH, t);
        assert_eq!(
            pacer.decide(p(INITIAL_BATCH, 900_000), t),
            Decision::Wait(RECHECK)
        );
        assert_eq!(
            pacer.decide(p(INITIAL_BATCH, FAST_READER_WINDOW), t),
            Decision::Send(usize::MAX)
        );
        // For good, whatever the window does later.
        assert_eq!(
            pacer.decide(p(1 << 20, 1000), t),
            Decision::Send(usize::MAX)
        );
        assert!(pacer.is_disabled());
    }

    #[test]
    fn a_peer_that_reads_streams_is_not_paced_whatever_it_shows() {
        let mut pacer = Pacer::new(LIMIT);
        let t = Instant::now();
        pacer.on_sent(INITIAL_BATCH, t);
        // A batch unacknowledged and a shrunk window: a paced peer waits.
        assert_eq!(
            pacer.decide(p(INITIAL_BATCH, 1000), t),
            Decision::Wait(RECHECK)
        );
        pacer.peer_reads_streams();
        assert!(pacer.is_disabled());
        assert!(!pacer.must_wait(1 << 20), "no probe asks it to wait");
        assert_eq!(
            pacer.decide(p(1 << 20, 1000), t),
            Decision::Send(usize::MAX)
        );
    }

    #[test]
    fn an_allowance_covers_what_fits_in_the_last_decision() {
        let mut pacer = Pacer::new(60 * 1024);
        let now = Instant::now();
        assert_eq!(
            pacer.allowance(0, 100),
            None,
            "nothing allowed before a probe"
        );
        let Decision::Send(n) = pacer.decide_at(p(0, 64 * 1024), now, 1000) else {
            panic!("an idle socket may be written");
        };
        // Writes within the decision need no probe; the allowance shrinks
        // by what was written (control bytes count too).
        assert_eq!(pacer.allowance(1000, 100), Some(n));
        assert_eq!(pacer.allowance(1000 + 300, 100), Some(n - 300));
        assert_eq!(pacer.allowance(1000 + n as u64 - 50, 50), Some(50));
        assert_eq!(pacer.allowance(1000 + n as u64 - 50, 51), None);
        assert_eq!(pacer.allowance(1000 + n as u64 + 4, 0), None);
        // A decision to wait allows nothing.
        assert!(matches!(
            pacer.decide_at(p(HARD_LIMIT, 64 * 1024), now, 5000),
            Decision::Wait(_)
        ));
        assert_eq!(pacer.allowance(5000, 1), None);
    }

    #[test]
    fn writing_within_allowances_never_exceeds_one_batch_unread() {
        // A peer that reads nothing: every byte written stays unacked.
        // Whatever mix of probed and unprobed writes, unread data stays
        // within the batch limit.
        let limit = 60 * 1024;
        let mut pacer = Pacer::new(limit);
        let now = Instant::now();
        let mut written = 0u64;
        for step in 0..10_000u64 {
            let queued = 40 + (step * 7919 % 2000) as usize;
            let budget = match pacer.allowance(written, queued) {
                Some(b) => b,
                None => match pacer.decide_at(p(written as usize, 64 * 1024), now, written) {
                    Decision::Send(b) => b,
                    Decision::Wait(_) => break,
                },
            };
            written += queued.min(budget) as u64;
            assert!(written as usize <= limit, "unread {written} over {limit}");
        }
        assert!(written > 0);
    }

    #[test]
    fn zero_disables_pacing() {
        let mut pacer = Pacer::new(0);
        assert_eq!(
            pacer.decide(p(1 << 20, 0), Instant::now()),
            Decision::Send(usize::MAX)
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn probes_a_real_socket() {
        use std::os::fd::AsRawFd;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let probe = probe_socket(client.as_raw_fd()).unwrap();
        assert_eq!(probe.unacked, 0);
        assert!(probe.peer.window.unwrap_or(1) > 0);
    }
}
