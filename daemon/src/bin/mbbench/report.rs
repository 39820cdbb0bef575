//! Scenario results: a human report and one JSON object per scenario.

use std::fmt::Write as _;

use crate::procfs::{Mem, ProcCpu};

/// Server memory around a scenario.
#[derive(Clone, Copy, Debug, Default)]
pub struct MemReport {
    /// Before the scenario (or at the start of the run for the loading scenario).
    pub before: Mem,
    /// After the scenario, all deliveries done.
    pub after: Mem,
    /// (RSS after loading N routes - RSS at start) / N, for the scenario that loads the table.
    pub bytes_per_route: Option<f64>,
}

/// Latency percentiles in microseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest sample.
    pub max: f64,
    /// Mean.
    pub mean: f64,
    /// Samples measured.
    pub samples: u64,
}

/// Outcome of one scenario.
#[derive(Clone, Debug, Default)]
pub struct ScenarioResult {
    /// fanout, preload, dump, session-end, withdraw, latency or scrape.
    pub name: &'static str,
    /// Routes (N); samples for latency.
    pub routes: u64,
    /// Receiving sessions measured.
    pub receivers: u64,
    /// Everything expected arrived before the timeout.
    pub completed: bool,
    /// Seconds measured (until the last delivery, or until giving up).
    pub elapsed_s: f64,
    /// Distinct deliveries expected (routes x receivers).
    pub expected: u64,
    /// Distinct deliveries received.
    pub received: u64,
    /// Deliveries of something already delivered.
    pub duplicates: u64,
    /// Messages that were not expected (foreign routes, wrong message types).
    pub unexpected: u64,
    /// Sessions the server closed (or broke) during the scenario.
    pub closed_by_server: u64,
    /// Keepalive answers that came later than 2.5 x the interval.
    pub keepalive_late: u64,
    /// Seconds until the announcer's socket took the last byte (fanout).
    pub announce_s: Option<f64>,
    /// Latency percentiles (latency scenario).
    pub latency: Option<Latency>,
    /// Server memory, with --server-pid.
    pub mem: Option<MemReport>,
    /// Server CPU used during the scenario, with --server-pid.
    pub server_cpu: Option<ProcCpu>,
    /// mbbench CPU seconds used during the scenario.
    pub client_cpu_s: f64,
    /// Incidents worth reading (timeouts, close reasons).
    pub notes: Vec<String>,
}

impl ScenarioResult {
    /// Expected minus received distinct deliveries.
    pub fn loss(&self) -> u64 {
        self.expected.saturating_sub(self.received)
    }

    /// Distinct routes per second delivered to one receiver (or to the
    /// average receiver: received / receivers / elapsed).
    pub fn routes_per_s(&self) -> f64 {
        if self.elapsed_s <= 0.0 || self.receivers == 0 {
            return 0.0;
        }
        self.received as f64 / self.receivers as f64 / self.elapsed_s
    }

    /// Route deliveries per second over all receivers.
    pub fn deliveries_per_s(&self) -> f64 {
        if self.elapsed_s <= 0.0 {
            return 0.0;
        }
        self.received as f64 / self.elapsed_s
    }

    /// What a latency sample is.
    fn sample_noun(&self) -> &'static str {
        if self.name == "scrape" {
            "scrapes"
        } else {
            "updates"
        }
    }

    /// The human report of this scenario (several lines).
    pub fn human(&self) -> String {
        let mut s = String::new();
        let status = if self.completed { "" } else { "  [INCOMPLETE]" };
        if self.latency.is_some_and(|l| l.samples == 0) {
            let _ = writeln!(
                s,
                "{:<9} {} updates: no sample arrived, {:.3} s{status}",
                self.name, self.routes, self.elapsed_s
            );
        } else if let Some(l) = &self.latency {
            let _ = writeln!(
                s,
                "{:<9} {} {}: p50 {:.0} us, p90 {:.0} us, p99 {:.0} us, max {:.0} us (mean {:.0} us), {:.3} s{status}",
                self.name, self.routes, self.sample_noun(), l.p50, l.p90, l.p99, l.max, l.mean, self.elapsed_s
            );
        } else {
            let _ = write!(
                s,
                "{:<9} {} routes x {} receiver(s) in {:.3} s: {} routes/s",
                self.name,
                self.routes,
                self.receivers,
                self.elapsed_s,
                si(self.routes_per_s())
            );
            if self.receivers > 1 {
                let _ = write!(s, ", {} deliveries/s", si(self.deliveries_per_s()));
            }
            let _ = writeln!(s, "{status}");
        }
        let _ = write!(
            s,
            "          loss {}{}, duplicates {}, unexpected {}, closed by server {}, late keepalives {}",
            self.loss(),
            if self.loss() > 0 { " (!)" } else { "" },
            self.duplicates,
            self.unexpected,
            self.closed_by_server,
            self.keepalive_late
        );
        if let Some(a) = self.announce_s {
            let _ = write!(s, ", announcer done writing after {a:.3} s");
        }
        s.push('\n');
        let _ = write!(s, "          CPU: mbbench {:.2} s", self.client_cpu_s);
        if let Some(c) = self.server_cpu {
            let _ = write!(s, ", server {c}");
        }
        if let Some(m) = &self.mem {
            let _ = write!(
                s,
                "; server RSS {} -> {} (peak {})",
                mib(m.before.rss_kib),
                mib(m.after.rss_kib),
                mib(m.after.hwm_kib)
            );
            if let Some(b) = m.bytes_per_route {
                let _ = write!(s, ", {b:.0} bytes/route");
            }
        }
        s.push('\n');
        for n in &self.notes {
            let _ = writeln!(s, "          note: {n}");
        }
        s
    }

    /// One JSON object (a single line).
    pub fn json(&self, server: &str, label: &str) -> String {
        let mut o = JsonObject::default();
        o.str("scenario", self.name);
        o.str("server", server);
        if !label.is_empty() {
            o.str("label", label);
        }
        o.num("routes", self.routes as f64);
        o.num("receivers", self.receivers as f64);
        o.raw("completed", if self.completed { "true" } else { "false" });
        o.num("elapsed_s", self.elapsed_s);
        if let Some(l) = &self.latency {
            o.num("samples", l.samples as f64);
            let l = if l.samples == 0 {
                // No percentiles without samples.
                Latency {
                    p50: f64::NAN,
                    p90: f64::NAN,
                    p99: f64::NAN,
                    max: f64::NAN,
                    mean: f64::NAN,
                    samples: 0,
                }
            } else {
                *l
            };
            o.num("p50_us", l.p50);
            o.num("p90_us", l.p90);
            o.num("p99_us", l.p99);
            o.num("max_us", l.max);
            o.num("mean_us", l.mean);
        } else {
            o.num("routes_per_s", self.routes_per_s());
            o.num("deliveries_per_s", self.deliveries_per_s());
        }
        o.num("expected", self.expected as f64);
        o.num("received", self.received as f64);
        o.num("loss", self.loss() as f64);
        o.num("duplicates", self.duplicates as f64);
        o.num("unexpected", self.unexpected as f64);
        o.num("closed_by_server", self.closed_by_server as f64);
        o.num("keepalive_late", self.keepalive_late as f64);
        if let Some(a) = self.announce_s {
            o.num("announce_s", a);
        }
        o.num("client_cpu_s", self.client_cpu_s);
        o.server_cpu(self.server_cpu);
        if let Some(m) = &self.mem {
            o.num("server_rss_before_kib", m.before.rss_kib as f64);
            o.num("server_rss_after_kib", m.after.rss_kib as f64);
            o.num("server_hwm_before_kib", m.before.hwm_kib as f64);
            o.num("server_hwm_after_kib", m.after.hwm_kib as f64);
            if let Some(b) = m.bytes_per_route {
                o.num("bytes_per_route", b);
            }
        }
        o.strings("notes", &self.notes);
        o.finish()
    }
}

/// A number with a k/M suffix.
pub fn si(v: f64) -> String {
    if v >= 10e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 10e3 {
        format!("{:.0}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// A JSON object written field by field (one line, no dependency).
#[derive(Default)]
pub struct JsonObject {
    out: String,
}

impl JsonObject {
    fn key(&mut self, k: &str) {
        self.out.push(if self.out.is_empty() { '{' } else { ',' });
        self.out.push_str(&json_string(k));
        self.out.push(':');
    }
    /// Adds a field.
    pub fn str(&mut self, k: &str, v: &str) {
        self.key(k);
        self.out.push_str(&json_string(v));
    }
    /// Adds a field.
    pub fn num(&mut self, k: &str, v: f64) {
        self.key(k);
        if !v.is_finite() {
            self.out.push_str("null");
        } else if v.fract() == 0.0 && v.abs() < 1e15 {
            let _ = write!(self.out, "{}", v as i64);
        } else {
            let _ = write!(self.out, "{v:.6}");
        }
    }
    /// Adds a field.
    pub fn raw(&mut self, k: &str, v: &str) {
        self.key(k);
        self.out.push_str(v);
    }
    /// Adds a server's CPU, if read: `server_cpu_s` (the total) and
    /// `server_kernel_cpu_s` (the kernel's part).
    pub fn server_cpu(&mut self, cpu: Option<ProcCpu>) {
        if let Some(c) = cpu {
            self.num("server_cpu_s", c.total());
            self.num("server_kernel_cpu_s", c.system);
        }
    }
    /// Adds an array of strings.
    pub fn strings(&mut self, k: &str, v: &[String]) {
        let items: Vec<String> = v.iter().map(|n| json_string(n)).collect();
        self.raw(k, &format!("[{}]", items.join(",")));
    }
    /// The object's text.
    pub fn finish(mut self) -> String {
        if self.out.is_empty() {
            self.out.push('{');
        }
        self.out.push('}');
        self.out
    }
}

fn json_string(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_well_formed() {
        let r = ScenarioResult {
            name: "fanout",
            routes: 10,
            receivers: 2,
            completed: true,
            elapsed_s: 0.5,
            expected: 20,
            received: 19,
            notes: vec!["a \"quoted\"\nnote".into()],
            ..Default::default()
        };
        let j = r.json("[::1]:4711", "x");
        assert!(j.starts_with("{\"scenario\":\"fanout\",\"server\":\"[::1]:4711\",\"label\":\"x\""));
        assert!(j.contains("\"loss\":1,"));
        assert!(j.contains("\"deliveries_per_s\":38,"));
        assert!(j.ends_with("\"notes\":[\"a \\\"quoted\\\"\\nnote\"]}"));
    }
}
