//! The status page, in the Go reference's shapes: `/routes.json` and
//! `/routes.yaml` hold `{date, vnet: {VNI: {prefix: [next hop, ...]}},
//! metalbondVersion}` with next hops written as the reference writes them
//! (`ADDR`, or `ADDR (VNI: N)` when the next hop has a target VNI); `/` is a
//! small HTML page with the sessions and the routes per VNI.
//!
//! Rendering is pure (tested here); gathering the data is in [`super`].

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::{Duration, SystemTime};

use crate::wire::{NextHop, Route};

/// The routes of the status page: VNI -> prefix -> next hops, sorted.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RouteView {
    vnet: BTreeMap<u32, BTreeMap<String, Vec<NextHop>>>,
}

impl RouteView {
    /// Adds routes (duplicates are kept once); next hops stay sorted.
    pub fn extend(&mut self, routes: impl IntoIterator<Item = Route>) {
        for r in routes {
            let hops = self
                .vnet
                .entry(r.vni.0)
                .or_default()
                .entry(r.dest.to_string())
                .or_default();
            if let Err(at) = hops.binary_search(&r.next_hop) {
                hops.insert(at, r.next_hop);
            }
        }
    }

    /// Routes per VNI.
    pub fn counts(&self) -> Vec<(u32, usize)> {
        self.vnet
            .iter()
            .map(|(vni, p)| (*vni, p.values().map(Vec::len).sum()))
            .collect()
    }

    /// The VNIs in the order the reference's JSON encoder writes them
    /// (map keys sorted as strings).
    fn vnis_as_go_json(&self) -> Vec<(String, &BTreeMap<String, Vec<NextHop>>)> {
        let mut v: Vec<_> = self.vnet.iter().map(|(k, p)| (k.to_string(), p)).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// A next hop as the reference prints it.
pub fn hop_text(hop: &NextHop) -> String {
    if hop.target_vni != 0 {
        format!("{} (VNI: {})", hop.addr, hop.target_vni)
    } else {
        hop.addr.to_string()
    }
}

/// `YYYY-MM-DD HH:MM:SS` (UTC), the reference's date format.
pub fn date_text(now: SystemTime) -> String {
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// `/routes.json`: the reference's shape, indented like its `MarshalIndent`.
pub fn routes_json(view: &RouteView, date: &str, version: &str) -> String {
    let mut out = String::with_capacity(64 + view.vnet.len() * 64);
    out.push_str("{\n");
    let _ = writeln!(out, "  \"date\": {},", json_string(date));
    if view.vnet.is_empty() {
        out.push_str("  \"vnet\": {},\n");
    } else {
        out.push_str("  \"vnet\": {\n");
        let vnis = view.vnis_as_go_json();
        for (i, (vni, prefixes)) in vnis.iter().enumerate() {
            let _ = writeln!(out, "    {}: {{", json_string(vni));
            for (j, (prefix, hops)) in prefixes.iter().enumerate() {
                let _ = writeln!(out, "      {}: [", json_string(prefix));
                for (k, hop) in hops.iter().enumerate() {
                    let comma = if k + 1 < hops.len() { "," } else { "" };
                    let _ = writeln!(out, "        {}{comma}", json_string(&hop_text(hop)));
                }
                let comma = if j + 1 < prefixes.len() { "," } else { "" };
                let _ = writeln!(out, "      ]{comma}");
            }
            let comma = if i + 1 < vnis.len() { "," } else { "" };
            let _ = writeln!(out, "    }}{comma}");
        }
        out.push_str("  },\n");
    }
    let _ = writeln!(out, "  \"metalbondVersion\": {}", json_string(version));
    out.push('}');
    out
}

/// A YAML scalar: plain when that cannot be misread (letters, digits and
/// `./-_`, not starting with a digit that could make it a number), quoted
/// otherwise (IPv6 addresses, dates, next hops with a VNI).
fn yaml_scalar(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '/' | '-' | '_'))
        && s.contains('/');
    if plain {
        s.to_string()
    } else {
        json_string(s)
    }
}

/// `/routes.yaml`: the reference's shape (its YAML encoder lower-cases the
/// field names: `date`, `vnet`, `metalbondversion`).
pub fn routes_yaml(view: &RouteView, date: &str, version: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "date: {}", json_string(date));
    if view.vnet.is_empty() {
        out.push_str("vnet: {}\n");
    } else {
        out.push_str("vnet:\n");
        for (vni, prefixes) in &view.vnet {
            let _ = writeln!(out, "  {vni}:");
            for (prefix, hops) in prefixes {
                let _ = writeln!(out, "    {}:", yaml_scalar(prefix));
                for hop in hops {
                    let _ = writeln!(out, "    - {}", yaml_scalar(&hop_text(hop)));
                }
            }
        }
    }
    let _ = writeln!(out, "metalbondversion: {}", json_string(version));
    out
}

/// One row of the sessions table of the HTML page.
#[derive(Debug, Clone)]
pub struct PeerRow {
    /// The role of this daemon in the session: `server` (a session it
    /// accepted) or `client` (a route server it uses).
    pub role: &'static str,
    /// Peer address.
    pub remote: String,
    /// Session state.
    pub state: String,
    /// How long in this state (or since connected).
    pub uptime: Duration,
    /// UPDATEs received.
    pub updates_in: u64,
    /// UPDATEs sent.
    pub updates_out: u64,
    /// Last error or close reason.
    pub last_error: String,
}

/// Most routes the HTML page lists (all VNI counts are always shown).
pub const HTML_ROUTE_LIMIT: usize = 5000;

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `/`: sessions and routes per VNI.
pub fn index_html(peers: &[PeerRow], view: &RouteView, date: &str, version: &str) -> String {
    let mut h = String::new();
    h.push_str("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>metalbondd</title>\n");
    h.push_str("<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin-bottom:1.5em}td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}th{background:#eee}code{font-size:95%}</style>\n");
    h.push_str("</head><body>\n");
    let _ = writeln!(
        h,
        "<h1>metalbondd {}</h1>\n<p>{} UTC &middot; <a href=\"routes.json\">routes.json</a> &middot; <a href=\"routes.yaml\">routes.yaml</a> &middot; <a href=\"metrics\">metrics</a></p>",
        esc(version),
        esc(date)
    );
    let _ = writeln!(h, "<h2>Sessions ({})</h2>", peers.len());
    h.push_str("<table><tr><th>role</th><th>peer</th><th>state</th><th>for</th><th>updates in</th><th>updates out</th><th>last error</th></tr>\n");
    for p in peers {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}s</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            p.role,
            esc(&p.remote),
            esc(&p.state),
            p.uptime.as_secs(),
            p.updates_in,
            p.updates_out,
            esc(&p.last_error)
        );
    }
    h.push_str("</table>\n");
    let counts = view.counts();
    let total: usize = counts.iter().map(|c| c.1).sum();
    let _ = writeln!(h, "<h2>Routes ({total} in {} VNIs)</h2>", counts.len());
    h.push_str("<table><tr><th>VNI</th><th>routes</th></tr>\n");
    for (vni, n) in &counts {
        let _ = writeln!(
            h,
            "<tr><td><a href=\"#vni-{vni}\">{vni}</a></td><td>{n}</td></tr>"
        );
    }
    h.push_str("</table>\n");
    let mut listed = 0;
    'vnis: for (vni, prefixes) in &view.vnet {
        let _ = writeln!(h, "<h3 id=\"vni-{vni}\">VNI {vni}</h3>");
        h.push_str("<table><tr><th>prefix</th><th>next hop</th><th>type</th></tr>\n");
        for (prefix, hops) in prefixes {
            for hop in hops {
                if listed == HTML_ROUTE_LIMIT {
                    h.push_str("</table>\n");
                    let _ = writeln!(
                        h,
                        "<p>Only the first {HTML_ROUTE_LIMIT} routes are listed; see <a href=\"routes.json\">routes.json</a>.</p>"
                    );
                    break 'vnis;
                }
                listed += 1;
                let _ = writeln!(
                    h,
                    "<tr><td><code>{}</code></td><td><code>{}</code></td><td>{}</td></tr>",
                    esc(prefix),
                    esc(&hop_text(hop)),
                    esc(&hop.kind.to_string())
                );
            }
        }
        h.push_str("</table>\n");
    }
    h.push_str("</body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> RouteView {
        let mut v = RouteView::default();
        v.extend(
            [
                "100#10.0.1.0/24@2001:db8::2",
                "100#10.0.1.0/24@2001:db8::1",
                "100#10.0.1.0/24@2001:db8::1",
                "20#2001:db8:1::/64@2001:db8::9#lb",
                "100#10.0.2.0/24@2001:db8::3#nat#1024#2047",
            ]
            .map(|s| s.parse::<Route>().unwrap()),
        );
        v
    }

    #[test]
    fn json_has_the_reference_shape_and_key_order() {
        let json = routes_json(&view(), "2026-11-21 03:49:05", "0.1.0");
        let expected = r#"{
  "date": "2026-11-21 03:49:05",
  "vnet": {
    "100": {
      "10.0.1.0/24": [
        "2001:db8::1",
        "2001:db8::2"
      ],
      "10.0.2.0/24": [
        "2001:db8::3"
      ]
    },
    "20": {
      "2001:db8:1::/64": [
        "2001:db8::9"
      ]
    }
  },
  "metalbondVersion": "0.1.0"
}"#;
        assert_eq!(json, expected);
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed["vnet"]["100"]["10.0.1.0/24"][1], "2001:db8::2");
    }

    #[test]
    fn empty_table_and_target_vni() {
        let json = routes_json(&RouteView::default(), "d", "v");
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed["vnet"], serde_json::json!({}));
        let mut hop = view().vnet[&100]["10.0.1.0/24"][0];
        hop.target_vni = 7;
        assert_eq!(hop_text(&hop), "2001:db8::1 (VNI: 7)");
    }

    #[test]
    fn yaml_has_the_reference_shape() {
        let yaml = routes_yaml(&view(), "2026-11-21 03:49:05", "0.1.0");
        let expected = "date: \"2026-11-21 03:49:05\"
vnet:
  20:
    \"2001:db8:1::/64\":
    - \"2001:db8::9\"
  100:
    10.0.1.0/24:
    - \"2001:db8::1\"
    - \"2001:db8::2\"
    10.0.2.0/24:
    - \"2001:db8::3\"
metalbondversion: \"0.1.0\"
";
        assert_eq!(yaml, expected);
    }

    #[test]
    fn dates_are_civil_utc() {
        let at = |s: u64| date_text(SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01 00:00:00");
        assert_eq!(at(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(at(1_795_225_745), "2026-11-21 01:49:05");
    }

    #[test]
    fn html_escapes_and_caps_the_listing() {
        let peers = [PeerRow {
            role: "server",
            remote: "[::1]:1234".into(),
            state: "ESTABLISHED".into(),
            uptime: Duration::from_secs(3),
            updates_in: 1,
            updates_out: 2,
            last_error: "<script>".into(),
        }];
        let html = index_html(&peers, &view(), "d", "v");
        assert!(html.contains("&lt;script&gt;") && !html.contains("<script>"));
        assert!(html.contains("<h2>Routes (4 in 2 VNIs)</h2>"));
        assert!(html.contains("id=\"vni-20\""));
        let mut big = RouteView::default();
        big.extend((0..HTML_ROUTE_LIMIT as u32 + 10).map(|i| {
            format!("1#10.{}.{}.0/24@2001:db8::1", i / 256, i % 256)
                .parse::<Route>()
                .unwrap()
        }));
        let html = index_html(&[], &big, "d", "v");
        assert!(html.contains("Only the first 5000 routes"));
        assert_eq!(html.matches("<tr><td><code>").count(), HTML_ROUTE_LIMIT);
    }
}
