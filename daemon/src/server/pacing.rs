//! Pacing of route data so that a peer never has 64 KiB or more unread
//! (PROTOCOL.md section 6).
//!
//! A Go reference peer reads into a fresh 65,535-byte buffer with no
//! carry-over: a read that fills the buffer, or ends inside a frame, resets
//! the session. Peers do not say what they are, so we watch the socket: what
//! we have written but the peer has not acknowledged (`SIOCOUTQ`), plus how
//! far the peer's advertised receive window (`TCP_INFO.tcpi_snd_wnd`) has
//! shrunk from the largest we have seen, bounds what sits unread on its side.
//! We write only as much as keeps that estimate under a limit.
//!
//! A fast reader keeps both terms near zero and is never held back. A slow
//! reader is fed at its own pace. The window can look smaller than it is
//! (Linux does not always advertise a window that reopened after a read), so
//! after a short stall one small batch is sent as a probe: its ACK carries a
//! fresh window. Probes stop before the estimate could reach the hard limit.

use std::time::{Duration, Instant};

/// Largest whole frame (header + the largest payload we ever send).
pub const MAX_FRAME: usize = crate::wire::HEADER_LEN + crate::wire::MAX_SEND_PAYLOAD;
/// Never let the estimate of unread bytes at the peer reach this.
const HARD_LIMIT: usize = 60 * 1024;
/// How long to wait before re-checking a peer that has too much unread.
pub const RECHECK: Duration = Duration::from_millis(1);
/// After this long without sending route data, send a probe batch.
const PROBE_AFTER: Duration = Duration::from_millis(10);
/// Size of a probe batch.
const PROBE_BYTES: usize = 2 * 1024;

/// What the kernel says about a socket's send side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketProbe {
    /// Bytes written but not yet acknowledged by the peer (`SIOCOUTQ`).
    pub unacked: usize,
    /// Receive window the peer advertised last (`tcpi_snd_wnd`), if the kernel reports it.
    pub peer_window: Option<u32>,
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
    /// Current batch size: grows while the peer acknowledges quickly, halves
    /// when an ACK is slow (a slow reader, or the peer's delayed-ACK timer
    /// acknowledging data its application has not read yet).
    batch: usize,
    max_window: u32,
    /// When the last batch went out, until it is acknowledged.
    awaiting_ack: Option<Instant>,
    stalled_since: Option<Instant>,
}

/// Smallest batch.
const MIN_BATCH: usize = 2 * 1024;
/// Additive batch increase per quick ACK.
const BATCH_STEP: usize = 2 * 1024;
/// An ACK slower than this halves the batch. Linux's delayed-ACK timer is at
/// least 40 ms, so quicker ACKs are sent because the peer read the data.
const SLOW_ACK: Duration = Duration::from_millis(20);

impl Pacer {
    /// A pacer that keeps the estimated unread bytes under `limit`; 0 disables pacing.
    pub fn new(limit: usize) -> Self {
        let limit = if limit == 0 {
            0
        } else {
            limit.clamp(MAX_FRAME, HARD_LIMIT)
        };
        Self {
            limit,
            batch: limit,
            max_window: 0,
            awaiting_ack: None,
            stalled_since: None,
        }
    }

    /// True when pacing is switched off.
    pub fn is_disabled(&self) -> bool {
        self.limit == 0
    }

    /// Current batch size.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Estimated bytes the peer has not read yet (an upper bound as far as
    /// the window can tell).
    ///
    /// The window also moves for reasons of its own (receive-buffer
    /// autotuning grows it, memory pressure shrinks it). A shrink beyond
    /// [`HARD_LIMIT`] cannot be a Go peer's unread data (it would have reset
    /// already), so it is taken as a new baseline instead of stalling forever.
    pub fn estimate_unread(&mut self, probe: SocketProbe) -> usize {
        let shrink = match probe.peer_window {
            Some(w) => {
                if w > self.max_window || (self.max_window - w) as usize > HARD_LIMIT {
                    self.max_window = w;
                }
                (self.max_window - w) as usize
            }
            None => 0,
        };
        probe.unacked + shrink
    }

    /// Records that `bytes` of route data were written at `now`.
    pub fn on_sent(&mut self, bytes: usize, now: Instant) {
        if bytes > 0 && !self.is_disabled() {
            self.awaiting_ack.get_or_insert(now);
        }
    }

    /// Decides how much route data may be written now.
    ///
    /// At most one batch is unacknowledged at a time: outside quick-ACK mode
    /// a Linux receiver acknowledges when its application reads, so a quick
    /// ACK is the best sign we get that the peer consumed what we sent. The
    /// window shrink covers peers whose kernel buffer is nearly full.
    pub fn decide(&mut self, probe: SocketProbe, now: Instant) -> Decision {
        if self.is_disabled() {
            return Decision::Send(usize::MAX);
        }
        if probe.unacked == 0 {
            if let Some(sent) = self.awaiting_ack.take() {
                self.batch = if now.duration_since(sent) >= SLOW_ACK {
                    (self.batch / 2).max(MIN_BATCH)
                } else {
                    (self.batch + BATCH_STEP).min(self.limit)
                };
            }
        }
        let unread = self.estimate_unread(probe);
        if unread + MAX_FRAME <= self.batch {
            self.stalled_since = None;
            return Decision::Send(self.batch - unread);
        }
        if probe.unacked > 0 {
            // The ACK will come: on the peer's next read or its delayed-ACK timer.
            return Decision::Wait(RECHECK);
        }
        // Everything is acknowledged but the window says the peer is full. It
        // may be stale (a reopened window is not always advertised): after a
        // while, a small probe batch fetches a fresh one.
        let since = *self.stalled_since.get_or_insert(now);
        if now.duration_since(since) >= PROBE_AFTER && unread + PROBE_BYTES <= HARD_LIMIT {
            self.stalled_since = Some(now);
            return Decision::Send(PROBE_BYTES);
        }
        Decision::Wait(RECHECK)
    }
}

/// Reads `SIOCOUTQ` and `TCP_INFO` of a connected TCP socket.
#[cfg(target_os = "linux")]
pub fn probe_socket(fd: std::os::fd::RawFd) -> std::io::Result<SocketProbe> {
    let mut unacked: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one c_int through the pointer, which
    // points to a live local; `fd` is a socket owned by the caller.
    if unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut unacked) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
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
    let peer_window = (len as usize >= snd_wnd_end).then_some(info.tcpi_snd_wnd);
    Ok(SocketProbe {
        unacked: unacked.max(0) as usize,
        peer_window,
    })
}

/// Elsewhere nothing is known: pace on nothing (never hold data back).
#[cfg(not(target_os = "linux"))]
pub fn probe_socket(_fd: i32) -> std::io::Result<SocketProbe> {
    Ok(SocketProbe {
        unacked: 0,
        peer_window: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(unacked: usize, window: u32) -> SocketProbe {
        SocketProbe {
            unacked,
            peer_window: Some(window),
        }
    }

    const LIMIT: usize = 16 * 1024;

    /// Sends what the pacer allows and lets the peer acknowledge after `ack_after`.
    fn cycle(pacer: &mut Pacer, now: &mut Instant, ack_after: Duration) -> usize {
        let Decision::Send(n) = pacer.decide(p(0, 100_000), *now) else {
            panic!("expected to send")
        };
        pacer.on_sent(n, *now);
        assert_eq!(pacer.decide(p(n, 100_000), *now), Decision::Wait(RECHECK));
        // Half acknowledged: only the acknowledged part may be topped up.
        assert_eq!(pacer.decide(p(n / 2, 100_000), *now), {
            if n - n / 2 >= MAX_FRAME {
                Decision::Send(n - n / 2)
            } else {
                Decision::Wait(RECHECK)
            }
        });
        *now += ack_after;
        n
    }

    #[test]
    fn a_fast_reader_gets_the_whole_limit_every_round_trip() {
        let mut pacer = Pacer::new(LIMIT);
        let mut now = Instant::now();
        for _ in 0..100 {
            assert_eq!(
                cycle(&mut pacer, &mut now, Duration::from_micros(50)),
                LIMIT
            );
        }
    }

    #[test]
    fn unacknowledged_bytes_never_exceed_one_batch() {
        let mut pacer = Pacer::new(LIMIT);
        let t = Instant::now();
        assert_eq!(pacer.decide(p(0, 100_000), t), Decision::Send(LIMIT));
        pacer.on_sent(LIMIT, t);
        for ms in 0..500 {
            let now = t + Duration::from_millis(ms);
            assert_eq!(
                pacer.decide(p(LIMIT - 100, 100_000), now),
                Decision::Wait(RECHECK)
            );
        }
        // A small update can go while a little is unacknowledged.
        assert_eq!(
            pacer.decide(p(100, 100_000), t),
            Decision::Send(LIMIT - 100)
        );
    }

    #[test]
    fn slow_acks_shrink_the_batch_and_quick_ones_grow_it_back() {
        let mut pacer = Pacer::new(LIMIT);
        let mut now = Instant::now();
        let sizes: Vec<usize> = (0..6)
            .map(|_| cycle(&mut pacer, &mut now, Duration::from_millis(45)))
            .collect();
        assert_eq!(sizes[0], LIMIT);
        assert!(sizes.windows(2).all(|w| w[1] <= w[0]), "{sizes:?}");
        assert_eq!(*sizes.last().unwrap(), MIN_BATCH);
        let grown: Vec<usize> = (0..20)
            .map(|_| cycle(&mut pacer, &mut now, Duration::from_micros(100)))
            .collect();
        assert_eq!(*grown.last().unwrap(), LIMIT);
    }

    #[test]
    fn window_shrink_counts_as_unread() {
        let mut pacer = Pacer::new(LIMIT);
        let t = Instant::now();
        pacer.decide(p(0, 100_000), t);
        assert_eq!(
            pacer.decide(p(0, 90_000), t),
            Decision::Send(LIMIT - 10_000)
        );
        assert_eq!(pacer.decide(p(0, 80_000), t), Decision::Wait(RECHECK));
        // A reopened window resumes at once.
        assert_eq!(pacer.decide(p(0, 100_000), t), Decision::Send(LIMIT));
    }

    #[test]
    fn a_stale_window_is_probed_but_never_pushed_to_the_hard_limit() {
        let mut pacer = Pacer::new(LIMIT);
        let t = Instant::now();
        pacer.decide(p(0, 100_000), t);
        let mut unread = 40 * 1024;
        let mut now = t;
        let mut probes = 0;
        for _ in 0..200 {
            now += PROBE_AFTER;
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
    fn a_window_shrink_beyond_the_hard_limit_becomes_the_new_baseline() {
        let mut pacer = Pacer::new(LIMIT);
        let t = Instant::now();
        pacer.decide(p(0, 4_000_000), t);
        assert_eq!(
            pacer.decide(p(0, 4_000_000 - 16_000), t),
            Decision::Wait(RECHECK)
        );
        assert_eq!(pacer.decide(p(0, 1_000_000), t), Decision::Send(LIMIT));
        assert_eq!(
            pacer.decide(p(0, 1_000_000 - 4_000), t),
            Decision::Send(LIMIT - 4_000)
        );
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
        assert!(probe.peer_window.unwrap_or(1) > 0);
    }
}
