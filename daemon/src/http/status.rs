//! The status page, in the Go reference's (v0.5.0) shapes: `/routes.json`
//! and `/routes.yaml` hold `{date, vnet: {VNI: {DESTINATION: [NEXT HOP, ...]}},
//! metalbondVersion}`, where DESTINATION is the reference's text form of its
//! destination struct, `{"IPVersion":4,"Prefix":"10.0.23.0/24"}`, and a next
//! hop is an object with `TargetAddress`, `TargetVNI`, `Type` (the wire
//! number: 0 standard, 1 NAT, 2 load-balancer target), `NATPortRangeFrom` and
//! `NATPortRangeTo` (lower-case in YAML, as yaml.v2 writes field names). Keys
//! come in the order of Go's JSON encoder (map keys sorted as strings: VNI
//! `"100"` before `"23"`, IPv4 destinations before IPv6); next hops in the
//! reference's order (by their text, `ADDR` or `ADDR (VNI: N)`). `/` is a small
//! HTML page with the sessions and the routes per VNI.
//!
//! Rendering is pure (tested here, and against pages captured from the
//! reference in tests/vectors/go-status-page); gathering the data is in
//! [`super`].

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::{Duration, SystemTime};

use metalbond_types::civil::UtcDateTime;

use super::go_yaml;
use crate::wire::{Destination, NextHop, Route};

/// The next hops of one destination.
#[derive(Debug, PartialEq, Eq)]
struct DestHops {
    /// The prefix as text (`10.0.23.0/24`), for the HTML page.
    prefix: String,
    /// In the reference's order, see [`go_hop_order`].
    hops: Vec<NextHop>,
}

/// The routes of the status page: VNI -> destination key -> next hops.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RouteView {
    /// Destinations keyed by [`dest_key`], so that they iterate in the order
    /// of Go's encoders.
    vnet: BTreeMap<u32, BTreeMap<String, DestHops>>,
}

impl RouteView {
    /// Adds routes (duplicates are kept once); next hops stay in order.
    pub fn extend(&mut self, routes: impl IntoIterator<Item = Route>) {
        for r in routes {
            let entry = self
                .vnet
                .entry(r.vni.0)
                .or_default()
                .entry(dest_key(&r.dest))
                .or_insert_with(|| DestHops {
                    prefix: r.dest.to_string(),
                    hops: Vec::new(),
                });
            let hops = &mut entry.hops;
            if let Err(at) = hops.binary_search_by(|h| go_hop_order(h, &r.next_hop)) {
                hops.insert(at, r.next_hop);
            }
        }
    }

    /// Routes per VNI.
    pub fn counts(&self) -> Vec<(u32, usize)> {
        self.vnet
            .iter()
            .map(|(vni, p)| (*vni, p.values().map(|d| d.hops.len()).sum()))
            .collect()
    }

    /// The VNIs in the order the reference's JSON encoder writes them
    /// (map keys sorted as strings).
    fn vnis_as_go_json(&self) -> Vec<(String, &BTreeMap<String, DestHops>)> {
        let mut v: Vec<_> = self.vnet.iter().map(|(k, p)| (k.to_string(), p)).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// The reference's text form of a destination, its map key in both
/// documents: `{"IPVersion":4,"Prefix":"10.0.23.0/24"}` (the JSON of its
/// destination struct).
pub fn dest_key(dest: &Destination) -> String {
    let version = if dest.addr.is_ipv6() { 6 } else { 4 };
    format!(r#"{{"IPVersion":{version},"Prefix":"{dest}"}}"#)
}

/// A next hop as the reference prints it.
pub fn hop_text(hop: &NextHop) -> String {
    if hop.target_vni != 0 {
        format!("{} (VNI: {})", hop.addr, hop.target_vni)
    } else {
        hop.addr.to_string()
    }
}

/// [`hop_text`] without an allocation: the longest text, an IPv6 address
/// (45 bytes) and ` (VNI: 4294967295)`, fits in 64 bytes.
struct HopText {
    buf: [u8; 64],
    len: usize,
}

impl HopText {
    fn of(hop: &NextHop) -> Self {
        let mut t = Self {
            buf: [0; 64],
            len: 0,
        };
        let _ = if hop.target_vni != 0 {
            write!(t, "{} (VNI: {})", hop.addr, hop.target_vni)
        } else {
            write!(t, "{}", hop.addr)
        };
        t
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Write for HopText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        self.buf
            .get_mut(self.len..end)
            .ok_or(std::fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// The reference sorts a destination's next hops by their text
/// ([`hop_text`]); hops with the same text (same address and target VNI,
/// another type) are ordered by the rest, where the reference's unstable
/// sort leaves them in any order.
fn go_hop_order(a: &NextHop, b: &NextHop) -> Ordering {
    HopText::of(a)
        .as_bytes()
        .cmp(HopText::of(b).as_bytes())
        .then_with(|| a.cmp(b))
}

/// `YYYY-MM-DD HH:MM:SS` (UTC), the reference's date format.
pub fn date_text(now: SystemTime) -> String {
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let t = UtcDateTime::from_unix(i64::try_from(secs).unwrap_or(i64::MAX));
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// `/routes.json`: the reference's shape, indented like its `MarshalIndent`
/// (two spaces, every next hop an object over several lines, no newline at
/// the end).
pub fn routes_json(view: &RouteView, date: &str, version: &str) -> String {
    let hops: usize = view.counts().iter().map(|c| c.1).sum();
    let mut out = String::with_capacity(128 + hops * 192);
    out.push_str("{\n");
    let _ = writeln!(out, "  \"date\": {},", json_string(date));
    if view.vnet.is_empty() {
        out.push_str("  \"vnet\": {},\n");
    } else {
        out.push_str("  \"vnet\": {\n");
        let vnis = view.vnis_as_go_json();
        for (i, (vni, dests)) in vnis.iter().enumerate() {
            let _ = writeln!(out, "    {}: {{", json_string(vni));
            for (j, (key, dest)) in dests.iter().enumerate() {
                let _ = writeln!(out, "      {}: [", json_string(key));
                for (k, hop) in dest.hops.iter().enumerate() {
                    let comma = if k + 1 < dest.hops.len() { "," } else { "" };
                    let _ = writeln!(
                        out,
                        "        {{\n          \"TargetAddress\": {},\n          \"TargetVNI\": {},\n          \"Type\": {},\n          \"NATPortRangeFrom\": {},\n          \"NATPortRangeTo\": {}\n        }}{comma}",
                        json_string(&hop.addr.to_string()),
                        hop.target_vni,
                        hop.kind.0,
                        hop.nat_from,
                        hop.nat_to
                    );
                }
                let comma = if j + 1 < dests.len() { "," } else { "" };
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

/// `/routes.yaml`: the reference's shape as yaml.v2 writes it (field names
/// lower-cased, VNIs in numeric order, destination keys single-quoted).
/// yaml.v2 cannot sort the reference's struct keys and writes the
/// destinations of a VNI in Go's random map order; they are written here in
/// the JSON document's order.
pub fn routes_yaml(view: &RouteView, date: &str, version: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "date: {}", go_yaml::string(date));
    if view.vnet.is_empty() {
        out.push_str("vnet: {}\n");
    } else {
        out.push_str("vnet:\n");
        for (vni, dests) in &view.vnet {
            let _ = writeln!(out, "  {vni}:");
            for (key, dest) in dests {
                let _ = writeln!(out, "    {}:", go_yaml::string(key));
                for hop in &dest.hops {
                    let _ = writeln!(
                        out,
                        "    - targetaddress: {}\n      targetvni: {}\n      type: {}\n      natportrangefrom: {}\n      natportrangeto: {}",
                        go_yaml::string(&hop.addr.to_string()),
                        hop.target_vni,
                        hop.kind.0,
                        hop.nat_from,
                        hop.nat_to
                    );
                }
            }
        }
    }
    let _ = writeln!(out, "metalbondversion: {}", go_yaml::string(version));
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
    /// The negotiated extensions, by name, comma-separated ("" for none).
    pub extensions: String,
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
    h.push_str("<table><tr><th>role</th><th>peer</th><th>state</th><th>for</th><th>updates in</th><th>updates out</th><th>extensions</th><th>last error</th></tr>\n");
    for p in peers {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}s</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            p.role,
            esc(&p.remote),
            esc(&p.state),
            p.uptime.as_secs(),
            p.updates_in,
            p.updates_out,
            esc(&p.extensions),
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
        for dest in prefixes.values() {
            for hop in &dest.hops {
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
                    esc(&dest.prefix),
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

/// The fleet section of `/` (ADR 0030), after the sections the Go page
/// has: this server's digest of every VNI with routes, the members of the
/// fleet view and the VNIs they disagree on.
pub fn fleet_html(fleet: &crate::fleet::FleetView) -> String {
    let mut h = String::new();
    let Some(local) = fleet.members.first() else {
        return h;
    };
    let _ = writeln!(
        h,
        "<h2 id=\"digests\">Route digests ({} VNIs)</h2>",
        local.vnis.len()
    );
    h.push_str("<table><tr><th>VNI</th><th>routes</th><th>digest</th></tr>\n");
    for v in &local.vnis {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            v.vni,
            v.routes,
            esc(&v.digest)
        );
    }
    h.push_str("</table>\n");
    let _ = writeln!(
        h,
        "<h2 id=\"fleet\">Fleet ({} members, source {})</h2>",
        fleet.members.len(),
        esc(&fleet.source)
    );
    h.push_str(
        "<table><tr><th>name</th><th>sessions</th><th>routes</th><th>VNIs</th><th>API</th></tr>\n",
    );
    for m in &fleet.members {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            esc(&m.name),
            m.sessions,
            m.routes,
            m.vnis.len(),
            esc(&m.api_addresses.join(" "))
        );
    }
    h.push_str("</table>\n");
    if fleet.disagreements.is_empty() {
        h.push_str("<p>VNIs where members disagree: none.</p>\n");
        return h;
    }
    let settling = fleet.disagreements.len() - fleet.settled_count();
    let _ = writeln!(
        h,
        "<h3>VNIs where members disagree ({}, {settling} settling)</h3>",
        fleet.disagreements.len()
    );
    h.push_str(
        "<table><tr><th>VNI</th><th>for</th><th>member</th><th>routes</th><th>digest</th></tr>\n",
    );
    for (i, d) in fleet.disagreements.iter().enumerate() {
        let age = fleet.disagreeing_for_ms.get(i).copied().unwrap_or(0);
        let state = if fleet.settled(i) { "" } else { " (settling)" };
        for (member, v) in &d.members {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{:.1} s{state}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
                d.vni,
                age as f64 / 1000.0,
                esc(member),
                v.routes,
                metalbond_types::fleet::digest_hex(v.digest)
            );
        }
    }
    h.push_str("</table>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_section_lists_digests_members_and_disagreements() {
        use crate::fleet::{FleetView, MemberRecord, VniRecord};
        use metalbond_types::fleet::{Disagreement, VniDigest};
        let member = |name: &str, digest: &str| MemberRecord {
            schema: 1,
            name: name.into(),
            version: "v".into(),
            api_addresses: vec!["/a.sock".into()],
            listen_addresses: vec![],
            sessions: 1,
            routes: 1,
            vnis: vec![VniRecord {
                vni: 7,
                routes: 1,
                digest: digest.into(),
            }],
            updated_at_unix_ms: 0,
        };
        let mut fleet = FleetView {
            source: "self".into(),
            members: vec![member("<a>", "00000000000000aa")],
            disagreements: vec![],
            disagreeing_for_ms: vec![],
        };
        let h = fleet_html(&fleet);
        assert!(
            h.contains("<h2 id=\"digests\">Route digests (1 VNIs)</h2>"),
            "{h}"
        );
        assert!(h.contains("<tr><td>7</td><td>1</td><td><code>00000000000000aa</code></td></tr>"));
        assert!(h.contains("<td>&lt;a&gt;</td>") && h.contains("disagree: none"));
        fleet.members.push(member("b", "00000000000000bb"));
        fleet.disagreements = vec![Disagreement {
            vni: 7,
            members: vec![
                (
                    "<a>".into(),
                    VniDigest {
                        routes: 1,
                        digest: 0xaa,
                    },
                ),
                (
                    "b".into(),
                    VniDigest {
                        routes: 1,
                        digest: 0xbb,
                    },
                ),
            ],
        }];
        fleet.disagreeing_for_ms = vec![1_500];
        let h = fleet_html(&fleet);
        assert!(
            h.contains(
                "<tr><td>7</td><td>1.5 s (settling)</td><td>b</td><td>1</td><td><code>00000000000000bb</code></td></tr>"
            ),
            "{h}"
        );
    }

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

    /// A page captured from the Go reference with its date and version
    /// replaced by `date` and `version`.
    fn go_page(text: &str, date: &str, version: &str) -> String {
        text.replace("2026-12-06 05:20:36", date)
            .replace("0.5.0-6-g11ad382", version)
    }

    /// The routes the Go client announced for the captured pages
    /// (tests/vectors/go-status-page/README.md), in another order.
    fn go_fixture_view() -> RouteView {
        let mut v = RouteView::default();
        v.extend(
            [
                "100#10.1.0.0/16@2001:db8::1",
                "23#10.0.23.0/24@2001:db8::10",
                "23#2001:db8:5::/64@2001:db8::5#lb",
                "23#10.0.99.0/24@2001:db8::99#nat#1024#2047",
                "23#10.0.23.0/24@2001:db8::1",
            ]
            .map(|s| s.parse::<Route>().unwrap()),
        );
        v
    }

    #[test]
    fn json_is_byte_for_byte_the_references() {
        let ours = routes_json(&go_fixture_view(), "2026-11-21 03:49:05", "0.1.0");
        let go = include_str!("../../../tests/vectors/go-status-page/routes.json");
        assert_eq!(ours, go_page(go, "2026-11-21 03:49:05", "0.1.0"));
    }

    #[test]
    fn yaml_is_byte_for_byte_the_references() {
        let ours = routes_yaml(&go_fixture_view(), "2026-11-21 03:49:05", "0.1.0");
        let go = include_str!("../../../tests/vectors/go-status-page/routes.yaml");
        assert_eq!(ours, go_page(go, "2026-11-21 03:49:05", "0.1.0"));
    }

    #[test]
    fn the_client_role_page_has_the_same_shape() {
        // A Go client's page: the routes it received (VNI 23 only).
        let mut v = RouteView::default();
        v.extend(
            [
                "23#2001:db8:5::/64@2001:db8::5#lb",
                "23#10.0.99.0/24@2001:db8::99#nat#1024#2047",
                "23#10.0.23.0/24@2001:db8::10",
                "23#10.0.23.0/24@2001:db8::1",
            ]
            .map(|s| s.parse::<Route>().unwrap()),
        );
        let go = include_str!("../../../tests/vectors/go-status-page/client-routes.json");
        let go = go.replace("2026-12-06 05:21:11", "2026-12-06 05:20:36");
        assert_eq!(routes_json(&v, "d", "v"), go_page(&go, "d", "v"));
    }

    #[test]
    fn json_keys_sort_as_strings_and_hops_by_text() {
        let json = routes_json(&view(), "d", "v");
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        let v4 = r#"{"IPVersion":4,"Prefix":"10.0.1.0/24"}"#;
        let hops = &parsed["vnet"]["100"][v4];
        assert_eq!(hops[0]["TargetAddress"], "2001:db8::1");
        assert_eq!(hops[1]["TargetAddress"], "2001:db8::2");
        let nat = &parsed["vnet"]["100"][r#"{"IPVersion":4,"Prefix":"10.0.2.0/24"}"#][0];
        assert_eq!(
            (nat["Type"].as_u64(), nat["NATPortRangeFrom"].as_u64()),
            (Some(1), Some(1024))
        );
        assert_eq!(nat["NATPortRangeTo"], 2047);
        let lb = &parsed["vnet"]["20"][r#"{"IPVersion":6,"Prefix":"2001:db8:1::/64"}"#][0];
        assert_eq!(
            (lb["Type"].as_u64(), lb["TargetVNI"].as_u64()),
            (Some(2), Some(0))
        );
        // Go's encoder order: "100" before "20"; within a VNI, keys as strings.
        let at = |needle: &str| json.find(needle).unwrap();
        assert!(at("\"100\"") < at("\"20\""));
        let mut v = RouteView::default();
        v.extend(
            [
                "1#2001:db8::/64@2001:db8::9",
                "1#10.0.3.0/24@2001:db8::10",
                "1#10.0.3.0/24@2001:db8::9",
                "1#10.0.3.0/24@2001:db8::9#lb",
                "1#10.0.23.0/24@2001:db8::1",
            ]
            .map(|s| s.parse::<Route>().unwrap()),
        );
        let json = routes_json(&v, "d", "v");
        let at = |needle: &str| json.find(needle).unwrap();
        assert!(at("10.0.23.0/24") < at("10.0.3.0/24"));
        assert!(at("10.0.3.0/24") < at("IPVersion\\\":6"));
        // "2001:db8::10" < "2001:db8::9" as text; the lb hop follows the
        // standard one with the same address.
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        let hops = &parsed["vnet"]["1"][r#"{"IPVersion":4,"Prefix":"10.0.3.0/24"}"#];
        let got: Vec<_> = hops
            .as_array()
            .unwrap()
            .iter()
            .map(|h| format!("{}/{}", h["TargetAddress"].as_str().unwrap(), h["Type"]))
            .collect();
        assert_eq!(got, ["2001:db8::10/0", "2001:db8::9/0", "2001:db8::9/2"]);
    }

    #[test]
    fn empty_table_and_target_vni() {
        let json = routes_json(&RouteView::default(), "d", "v");
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed["vnet"], serde_json::json!({}));
        assert_eq!(
            routes_yaml(&RouteView::default(), "2026-11-21 03:49:05", "0.1.0"),
            "date: \"2026-11-21 03:49:05\"\nvnet: {}\nmetalbondversion: 0.1.0\n"
        );
        let mut hop = view().vnet[&100][r#"{"IPVersion":4,"Prefix":"10.0.1.0/24"}"#].hops[0];
        hop.target_vni = 7;
        assert_eq!(hop_text(&hop), "2001:db8::1 (VNI: 7)");
        hop.addr = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .into();
        hop.target_vni = u32::MAX;
        assert_eq!(HopText::of(&hop).as_bytes(), hop_text(&hop).as_bytes());
        let mut v = RouteView::default();
        v.extend(["1#10.0.0.0/8@2001:db8::1"].map(|s| s.parse::<Route>().unwrap()));
        let mut r: Route = "1#10.0.0.0/8@2001:db8::1".parse().unwrap();
        r.next_hop.target_vni = 7;
        v.extend([r]);
        let json = routes_json(&v, "d", "v");
        assert!(json.contains("\"TargetVNI\": 7"), "{json}");
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
            extensions: "sync".into(),
        }];
        let html = index_html(&peers, &view(), "d", "v");
        assert!(html.contains("&lt;script&gt;") && !html.contains("<script>"));
        assert!(html.contains("<h2>Routes (4 in 2 VNIs)</h2>"));
        assert!(html.contains("<tr><td><code>10.0.2.0/24</code></td><td><code>2001:db8::3</code></td><td>nat</td></tr>"));
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
