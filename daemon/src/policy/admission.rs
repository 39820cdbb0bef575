//! Admission at accept, per source address: the sessions a class lets one
//! address hold open (`max_sessions_per_address`) and a token bucket of new
//! connections (`connect_rate`, `connect_burst`). The acceptor asks
//! [`AddressTable::admit`] before it spawns anything for a connection (and,
//! later, before any TLS handshake: the limits are by address only), and a
//! refused connection is closed at once.
//!
//! Pure: the acceptor passes `now`. The table is bounded: an address with no
//! open session whose bucket has refilled is the same as an absent one and is
//! swept away; if an attacker's many addresses still fill the table, the
//! buckets of addresses without sessions are forgotten (they start full
//! again), never the session counts, so the per-address session limit always
//! holds. Log lines are rate-limited per address and overall: a storm of
//! refusals is counted, and logged a few lines at a time.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use hashbrown::HashMap;
use metalbondd_config::canonical;

use super::Reason;

/// A class's limits at accept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddressLimits {
    /// Most sessions open at once from one address.
    pub max_sessions: Option<u32>,
    /// New connections per address.
    pub rate: Option<ConnectLimit>,
}

impl AddressLimits {
    /// True if the class limits nothing at accept (no table entry is made).
    pub fn is_open(&self) -> bool {
        self.max_sessions.is_none() && self.rate.is_none()
    }
}

/// A token bucket: `count` tokens per `per`, holding at most `burst`; every
/// connection attempt takes one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectLimit {
    /// Tokens added per `per`.
    pub count: u32,
    /// The refill period.
    pub per: Duration,
    /// The bucket's size (connections at once after a quiet time).
    pub burst: u32,
}

impl ConnectLimit {
    fn per_sec(&self) -> f64 {
        f64::from(self.count) / self.per.as_secs_f64().max(1e-9)
    }

    /// How long an empty bucket takes to hold `tokens` more.
    fn time_for(&self, tokens: f64) -> Duration {
        Duration::try_from_secs_f64((tokens / self.per_sec()).max(0.0)).unwrap_or(Duration::MAX)
    }
}

/// At most one log line per address per this interval.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Log lines at once over all addresses (the global bucket's size) ...
const LOG_BURST: f64 = 10.0;
/// ... refilled at this many lines per second.
const LOG_PER_SEC: f64 = 1.0;
/// The table is swept when it reaches this many entries (or twice what the
/// last sweep left, if more).
const FIRST_SWEEP: usize = 1024;
/// Most entries without an open session; above it their buckets are
/// forgotten.
pub const MAX_ENTRIES: usize = 16_384;

/// What the acceptor does with a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Serve it. `counted`: a session was counted for the address; call
    /// [`AddressTable::release`] when it ends.
    Admit {
        /// A session was counted.
        counted: bool,
    },
    /// Close it at once.
    Refuse {
        /// `SessionsPerAddress` or `ConnectRate`.
        reason: Reason,
        /// Log one line now, saying it stands for this many refusals of the
        /// address (itself included); `None`: counted, not logged.
        log: Option<u64>,
    },
}

/// One address's state.
#[derive(Clone, Copy, Debug)]
struct Entry {
    sessions: u32,
    /// Tokens at `refilled`.
    tokens: f64,
    refilled: Instant,
    /// When the bucket is full again (the entry is then idle if it has no
    /// session and nothing to log).
    full_at: Instant,
    /// Refusals not logged yet.
    unlogged: u64,
    /// The last log line of this address.
    logged: Option<Instant>,
}

/// Per-address admission state of the route server (one for all its
/// listeners, behind a mutex taken once per accepted connection and once per
/// session end).
#[derive(Debug)]
pub struct AddressTable {
    entries: HashMap<IpAddr, Entry>,
    next_sweep: usize,
    log_tokens: f64,
    log_refilled: Option<Instant>,
}

impl Default for AddressTable {
    fn default() -> Self {
        AddressTable {
            entries: HashMap::new(),
            next_sweep: FIRST_SWEEP,
            log_tokens: LOG_BURST,
            log_refilled: None,
        }
    }
}

impl AddressTable {
    /// Addresses tracked (for tests and metrics).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if no address is tracked.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A new connection from `peer` under `limits`: take a token, then count
    /// a session, or refuse.
    pub fn admit(&mut self, peer: IpAddr, limits: &AddressLimits, now: Instant) -> Admission {
        if limits.is_open() {
            return Admission::Admit { counted: false };
        }
        let peer = canonical(peer);
        if !self.entries.contains_key(&peer) && self.entries.len() >= self.next_sweep {
            self.sweep(now);
        }
        let e = self.entries.entry(peer).or_insert_with(|| Entry {
            sessions: 0,
            tokens: limits.rate.map_or(0.0, |r| f64::from(r.burst)),
            refilled: now,
            full_at: now,
            unlogged: 0,
            logged: None,
        });
        let mut refused = None;
        if let Some(rate) = limits.rate {
            let burst = f64::from(rate.burst);
            let elapsed = now.saturating_duration_since(e.refilled).as_secs_f64();
            e.tokens = (e.tokens + elapsed * rate.per_sec()).min(burst);
            e.refilled = now;
            // Every attempt takes a token: a storm of refused connections
            // keeps the bucket empty.
            if e.tokens >= 1.0 {
                e.tokens -= 1.0;
            } else {
                refused = Some(Reason::ConnectRate);
            }
            e.full_at = now + rate.time_for(burst - e.tokens);
        }
        if refused.is_none() {
            match limits.max_sessions {
                Some(max) if e.sessions >= max => refused = Some(Reason::SessionsPerAddress),
                Some(_) => {
                    e.sessions += 1;
                    return Admission::Admit { counted: true };
                }
                None => return Admission::Admit { counted: false },
            }
        }
        let reason = refused.expect("set above");
        e.unlogged += 1;
        let due = e
            .logged
            .is_none_or(|at| now.saturating_duration_since(at) >= LOG_INTERVAL);
        let mut log = None;
        if due && self.take_log_token(now) {
            let e = self.entries.get_mut(&peer).expect("inserted above");
            log = Some(e.unlogged);
            e.unlogged = 0;
            e.logged = Some(now);
        }
        Admission::Refuse { reason, log }
    }

    /// A session counted by [`AddressTable::admit`] ended.
    pub fn release(&mut self, peer: IpAddr) {
        if let Some(e) = self.entries.get_mut(&canonical(peer)) {
            e.sessions = e.sessions.saturating_sub(1);
        }
    }

    /// Sessions counted for `peer`.
    pub fn sessions(&self, peer: IpAddr) -> u32 {
        self.entries.get(&canonical(peer)).map_or(0, |e| e.sessions)
    }

    /// One token of the global log bucket, if there is one.
    fn take_log_token(&mut self, now: Instant) -> bool {
        if let Some(at) = self.log_refilled {
            let elapsed = now.saturating_duration_since(at).as_secs_f64();
            self.log_tokens = (self.log_tokens + elapsed * LOG_PER_SEC).min(LOG_BURST);
        }
        self.log_refilled = Some(now);
        if self.log_tokens >= 1.0 {
            self.log_tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Drops idle entries (no session, bucket full, nothing left to log);
    /// if the entries without a session are still too many, drops them all
    /// (their buckets start full again). Entries with sessions always stay.
    fn sweep(&mut self, now: Instant) {
        self.entries.retain(|_, e| {
            e.sessions > 0
                || now < e.full_at
                || (e.unlogged > 0 && e.logged.is_some_and(|at| now < at + LOG_INTERVAL))
        });
        let idle = self.entries.values().filter(|e| e.sessions == 0).count();
        if idle >= MAX_ENTRIES {
            self.entries.retain(|_, e| e.sessions > 0);
        }
        if self.entries.capacity() > 4 * self.entries.len().max(FIRST_SWEEP) {
            self.entries.shrink_to(2 * self.entries.len());
        }
        self.next_sweep = (2 * self.entries.len()).max(FIRST_SWEEP);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const SESSIONS_AND_RATE: AddressLimits = AddressLimits {
        max_sessions: Some(2),
        rate: Some(ConnectLimit {
            count: 10,
            per: Duration::from_secs(1),
            burst: 4,
        }),
    };

    fn refused(a: Admission) -> Option<Reason> {
        match a {
            Admission::Refuse { reason, .. } => Some(reason),
            Admission::Admit { .. } => None,
        }
    }

    #[test]
    fn open_limits_track_nothing() {
        let mut t = AddressTable::default();
        let t0 = Instant::now();
        for _ in 0..100 {
            assert_eq!(
                t.admit(ip("10.0.0.1"), &AddressLimits::default(), t0),
                Admission::Admit { counted: false }
            );
        }
        assert!(t.is_empty());
    }

    #[test]
    fn sessions_per_address_then_rate() {
        let mut t = AddressTable::default();
        let t0 = Instant::now();
        let a = ip("10.0.0.1");
        let l = &SESSIONS_AND_RATE;
        assert_eq!(t.admit(a, l, t0), Admission::Admit { counted: true });
        // IPv4-mapped is the same address.
        assert_eq!(
            t.admit(ip("::ffff:10.0.0.1"), l, t0),
            Admission::Admit { counted: true }
        );
        assert_eq!(t.sessions(a), 2);
        // Tokens 3 and 4 are taken by connections over the session limit.
        assert_eq!(refused(t.admit(a, l, t0)), Some(Reason::SessionsPerAddress));
        assert_eq!(refused(t.admit(a, l, t0)), Some(Reason::SessionsPerAddress));
        // The bucket is empty: the rate refuses even after a session ended.
        t.release(a);
        assert_eq!(refused(t.admit(a, l, t0)), Some(Reason::ConnectRate));
        // 10/s: one token after 100 ms.
        assert_eq!(
            refused(t.admit(a, l, t0 + Duration::from_millis(99))),
            Some(Reason::ConnectRate)
        );
        assert_eq!(
            t.admit(a, l, t0 + Duration::from_millis(200)),
            Admission::Admit { counted: true }
        );
        // Another address has its own bucket and count.
        assert_eq!(
            t.admit(ip("10.0.0.2"), l, t0),
            Admission::Admit { counted: true }
        );
        // Refilled, never above the burst: after a long quiet time, 4
        // attempts pass the rate, then the 5th is refused by it.
        let later = t0 + Duration::from_secs(60);
        t.release(a);
        t.release(a);
        let mut reasons = Vec::new();
        for _ in 0..5 {
            reasons.push(refused(t.admit(a, l, later)));
        }
        assert_eq!(
            reasons,
            [
                None,
                None,
                Some(Reason::SessionsPerAddress),
                Some(Reason::SessionsPerAddress),
                Some(Reason::ConnectRate)
            ]
        );
    }

    #[test]
    fn rate_only_counts_no_sessions() {
        let mut t = AddressTable::default();
        let t0 = Instant::now();
        let l = AddressLimits {
            max_sessions: None,
            rate: Some(ConnectLimit {
                count: 1,
                per: Duration::from_secs(60),
                burst: 2,
            }),
        };
        let a = ip("2001:db8::1");
        assert_eq!(t.admit(a, &l, t0), Admission::Admit { counted: false });
        assert_eq!(t.admit(a, &l, t0), Admission::Admit { counted: false });
        assert_eq!(refused(t.admit(a, &l, t0)), Some(Reason::ConnectRate));
        // 1/m: 59 s is not enough, 60 s is.
        assert_eq!(
            refused(t.admit(a, &l, t0 + Duration::from_secs(59))),
            Some(Reason::ConnectRate)
        );
        assert_eq!(t.sessions(a), 0);
    }

    #[test]
    fn log_lines_per_address_interval_and_global_budget() {
        let mut t = AddressTable::default();
        let t0 = Instant::now();
        let a = ip("10.0.0.1");
        let l = AddressLimits {
            max_sessions: Some(1),
            rate: None,
        };
        assert_eq!(t.admit(a, &l, t0), Admission::Admit { counted: true });
        // A storm of 1,000 refusals within the interval: one line.
        let mut lines = Vec::new();
        for i in 0..1000u64 {
            if let Admission::Refuse { log: Some(n), .. } =
                t.admit(a, &l, t0 + Duration::from_millis(i))
            {
                lines.push(n);
            }
        }
        assert_eq!(lines, [1]);
        // The next line, an interval later, reports the suppressed ones.
        match t.admit(a, &l, t0 + LOG_INTERVAL) {
            Admission::Refuse {
                reason: Reason::SessionsPerAddress,
                log: Some(n),
            } => assert_eq!(n, 1000),
            other => panic!("{other:?}"),
        }
        // Many addresses at once: at most the global burst of lines.
        let mut t = AddressTable::default();
        let mut logged = 0;
        for i in 0..500u32 {
            let a = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            t.admit(a, &l, t0);
            if let Admission::Refuse { log: Some(_), .. } = t.admit(a, &l, t0) {
                logged += 1;
            }
        }
        assert_eq!(logged, LOG_BURST as usize);
    }

    #[test]
    fn idle_entries_are_swept_and_the_table_is_bounded() {
        let mut t = AddressTable::default();
        let t0 = Instant::now();
        let l = AddressLimits {
            max_sessions: None,
            rate: Some(ConnectLimit {
                count: 1,
                per: Duration::from_secs(1),
                burst: 1,
            }),
        };
        let v4 = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        // One connection from each of many addresses: their buckets refill
        // after 1 s, so a later burst of new addresses sweeps them.
        for i in 0..FIRST_SWEEP as u32 {
            t.admit(v4(i), &l, t0);
        }
        assert_eq!(t.len(), FIRST_SWEEP);
        let later = t0 + Duration::from_secs(2);
        t.admit(v4(1_000_000), &l, later);
        assert_eq!(t.len(), 1);
        // Addresses that never go idle (attack from 200,000 addresses within
        // one refill time): the table stays bounded.
        let s = AddressLimits {
            max_sessions: Some(1),
            rate: l.rate,
        };
        let mut held = Vec::new();
        for i in 0..200_000u32 {
            let a = v4(2_000_000 + i);
            if i % 10_000 == 0 {
                assert_eq!(t.admit(a, &s, later), Admission::Admit { counted: true });
                held.push(a);
            } else {
                t.admit(a, &l, later);
            }
            assert!(t.len() <= 2 * MAX_ENTRIES + 2, "{} entries", t.len());
        }
        // Session counts are never forgotten.
        for a in held {
            assert_eq!(t.sessions(a), 1);
            assert_eq!(
                refused(t.admit(a, &s, later + Duration::from_secs(5))),
                Some(Reason::SessionsPerAddress)
            );
        }
    }
}
