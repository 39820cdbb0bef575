//! Memory and CPU readings of the server process (from `/proc/PID`) and CPU
//! time of mbbench itself.

/// Memory of a process, in KiB.
#[derive(Clone, Copy, Debug, Default)]
pub struct Mem {
    /// Current resident set (VmRSS).
    pub rss_kib: u64,
    /// Peak resident set (VmHWM).
    pub hwm_kib: u64,
}

/// Reads VmRSS and VmHWM of `pid`; `None` if the process is gone.
pub fn mem(pid: u32) -> Option<Mem> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line[name.len()..].split_whitespace().next()?.parse().ok()
    };
    Some(Mem {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

/// CPU seconds a process has used, split into user and kernel (system)
/// time.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcCpu {
    /// In user space.
    pub user: f64,
    /// In the kernel: system calls, and on loopback also the receiving
    /// side's TCP work that runs inside the sender's `sendto`.
    pub system: f64,
}

impl ProcCpu {
    /// User + system seconds.
    pub fn total(self) -> f64 {
        self.user + self.system
    }

    /// What was used between `earlier` and `self`.
    pub fn since(self, earlier: ProcCpu) -> ProcCpu {
        ProcCpu {
            user: self.user - earlier.user,
            system: self.system - earlier.system,
        }
    }
}

/// As mbbench prints a server's CPU: `1.23 s (0.80 s of it in the kernel)`.
impl std::fmt::Display for ProcCpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.2} s ({:.2} s of it in the kernel)",
            self.total(),
            self.system
        )
    }
}

/// CPU seconds consumed by `pid` so far (all its threads, live and ended).
///
/// The kernel keeps the total exact (the scheduler's runtime) and splits it
/// between user and system in proportion to its tick samples, so the split
/// of a short phase is an estimate; the total is not.
pub fn cpu(pid: u32) -> Option<ProcCpu> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    Some(ProcCpu {
        user: utime as f64 / hz,
        system: stime as f64 / hz,
    })
}

/// User + system CPU seconds of this process so far.
pub fn self_cpu_secs() -> f64 {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_of_a_live_process_is_read_and_of_a_gone_one_is_none() {
        let start = cpu(std::process::id()).expect("our own /proc/PID/stat");
        // 50 ms of CPU (not of wall time: a loaded machine may give us
        // little), of both kinds: a busy loop and system calls.
        let (t, own) = (std::time::Instant::now(), self_cpu_secs());
        let mut x = 0u64;
        while self_cpu_secs() - own < 0.05 && t.elapsed() < std::time::Duration::from_secs(10) {
            x = x.wrapping_add(std::hint::black_box(1));
            let _ = std::fs::metadata("/proc/self");
        }
        std::hint::black_box(x);
        let used = cpu(std::process::id()).unwrap().since(start);
        assert!(used.user >= 0.0 && used.system >= 0.0, "{used:?}");
        assert!(used.total() > 0.0, "50 ms of work read as {used:?}");
        // PIDs never reach u32::MAX (the kernel's limit is 2^22).
        assert_eq!(cpu(u32::MAX), None);
    }

    #[test]
    fn since_subtracts_each_part_and_total_adds_them() {
        let a = ProcCpu {
            user: 1.5,
            system: 0.25,
        };
        let b = ProcCpu {
            user: 2.0,
            system: 1.0,
        };
        assert_eq!(
            b.since(a),
            ProcCpu {
                user: 0.5,
                system: 0.75
            }
        );
        assert_eq!(b.since(a).total(), 1.25);
        assert_eq!(
            b.since(a).to_string(),
            "1.25 s (0.75 s of it in the kernel)"
        );
    }
}
