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
    max_window: u32,
    stalled_since: Option<Instant>,
}

impl Pacer {
    /// A pacer that keeps the estimated unread bytes under `limit`; 0 disables pacing.
    pub fn new(limit: usize) -> Self {
        Self {
            limit: if limit == 0 { 0 } else { limit.clamp(MAX_FRAME, HARD_LIMIT) },
            max_window: 0,
            stalled_since: None,
        }
    }

    /// True when pacing is switched off.
    pub fn is_disabled(&self) -> bool {
        self.limit == 0
    }

    /// Estimated bytes the peer has not read yet (an upper bound).
    pub fn estimate_unread(&mut self, probe: SocketProbe) -> usize {
        let shrink = match probe.peer_window {
            Some(w) => {
                self.max_window = self.max_window.max(w);
                (self.max_window - w) as usize
            }
            None => 0,
        };
        probe.unacked + shrink
    }

    /// Decides how much route data may be written now.
    pub fn decide(&mut self, probe: SocketProbe, now: Instant) -> Decision {
        if self.is_disabled() {
            return Decision::Send(usize::MAX);
        }
        let unread = self.estimate_unread(probe);
        if unread + MAX_FRAME <= self.limit {
            self.stalled_since = None;
            return Decision::Send(self.limit - unread);
        }
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

    #[test]
    fn a_fast_reader_gets_the_whole_budget_every_time() {
        let mut pacer = Pacer::new(48 * 1024);
        let t = Instant::now();
        for i in 0..100 {
            assert_eq!(pacer.decide(p(0, 100_000), t + RECHECK * i), Decision::Send(48 * 1024));
        }
    }

    #[test]
    fn unacked_bytes_and_window_shrink_both_count_as_unread() {
        let mut pacer = Pacer::new(48 * 1024);
        let t = Instant::now();
        pacer.decide(p(0, 100_000), t);
        assert_eq!(pacer.decide(p(10_000, 100_000), t), Decision::Send(48 * 1024 - 10_000));
        assert_eq!(pacer.decide(p(0, 90_000), t), Decision::Send(48 * 1024 - 10_000));
        assert_eq!(pacer.decide(p(5_000, 90_000), t), Decision::Send(48 * 1024 - 15_000));
    }

    #[test]
    fn a_slow_reader_is_held_then_probed_and_never_pushed_to_the_hard_limit() {
        let mut pacer = Pacer::new(48 * 1024);
        let t = Instant::now();
        pacer.decide(p(0, 100_000), t);
        // 48 KiB unread (window shrank): hold.
        let full = p(0, 100_000 - 48 * 1024);
        assert_eq!(pacer.decide(full, t), Decision::Wait(RECHECK));
        assert_eq!(pacer.decide(full, t + PROBE_AFTER / 2), Decision::Wait(RECHECK));
        // Stalled long enough: one probe batch, then hold again.
        assert_eq!(pacer.decide(full, t + PROBE_AFTER), Decision::Send(PROBE_BYTES));
        assert_eq!(pacer.decide(full, t + PROBE_AFTER), Decision::Wait(RECHECK));
        // A peer that really stops reading: probes stop short of the hard limit.
        let mut now = t + PROBE_AFTER;
        let mut unread = 48 * 1024;
        for _ in 0..100 {
            now += PROBE_AFTER;
            if let Decision::Send(n) = pacer.decide(p(0, 100_000 - unread as u32), now) {
                unread += n;
            }
        }
        assert!(unread <= HARD_LIMIT, "{unread}");
        assert!(unread + PROBE_BYTES > HARD_LIMIT);
    }

    #[test]
    fn a_reopened_window_resumes_at_once() {
        let mut pacer = Pacer::new(48 * 1024);
        let t = Instant::now();
        pacer.decide(p(0, 100_000), t);
        assert_eq!(pacer.decide(p(0, 50_000), t), Decision::Wait(RECHECK));
        assert_eq!(pacer.decide(p(0, 100_000), t), Decision::Send(48 * 1024));
    }

    #[test]
    fn zero_disables_pacing() {
        let mut pacer = Pacer::new(0);
        assert_eq!(pacer.decide(p(1 << 20, 0), Instant::now()), Decision::Send(usize::MAX));
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
