//! `mbctl` end to end: the real `mbctl` binary against the real `metalbondd`
//! over its real Unix socket, with raw MetalBond peers over TCP seeing the
//! effect of every command.
//!
//! # Where the `mbctl` binary comes from
//!
//! These tests belong to the `metalbondd` package, so Cargo gives them
//! `CARGO_BIN_EXE_metalbondd` but not the binary of the `mbctl` package (a
//! binary-only crate cannot be a dependency, and artifact dependencies are
//! unstable). `common::mbctl::mbctl_bin` therefore looks for it next to the daemon's
//! binaries: a test executable is `<target-dir>/<profile>/deps/e2e_mbctl-HASH`,
//! so `mbctl` is `<target-dir>/<profile>/mbctl`, whatever `CARGO_TARGET_DIR`
//! (or `--target`) is.
//!
//! `cargo test --workspace` (and a plain `cargo test` at the workspace root,
//! whose default members include `ctl`) always builds it before any test
//! runs: Cargo builds a package's binaries whenever it builds that package's
//! integration tests (to provide `CARGO_BIN_EXE_*`), `ctl` has integration
//! tests (`ctl/tests/`), and `cargo test` finishes compiling everything
//! before it runs the first test. Checked with `cargo clean -p mbctl` then
//! `cargo test --workspace --no-run`: `<target-dir>/debug/mbctl` exists
//! afterwards. (Should `ctl/tests/` ever be removed, this no longer holds.)
//!
//! `cargo test -p metalbondd` alone does not build `mbctl`; then the binary
//! may be missing or older than its sources, and every test here fails at
//! once saying to run `cargo build -p mbctl` first, instead of testing a
//! stale client.
//!
//! Rules kept here as in the rest of the harness: every wait is bounded,
//! waits are event based (a line on a pipe, an UPDATE on a socket), and every
//! process started is stopped by its PID.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use ::mbctl::contract::{self, columns, fields, sorted};
use common::mbctl::{mbctl_bin, run, Out};
use common::*;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------
// Running mbctl
// ---------------------------------------------------------------------------

impl Out {
    /// Asserts a table-mode failure: exit `code`, nothing on stdout and one
    /// `mbctl: ...` line on stderr. Returns that line without the prefix.
    #[track_caller]
    fn fails(&self, code: i32) -> String {
        assert_eq!(self.code, Some(code), "{self:?}");
        assert_eq!(self.stdout, "", "{self:?}");
        assert!(self.stderr.ends_with('\n'), "{self:?}");
        assert_eq!(self.stderr.lines().count(), 1, "not one line: {self:?}");
        self.stderr
            .trim_end()
            .strip_prefix("mbctl: ")
            .unwrap_or_else(|| panic!("no `mbctl: ` prefix: {self:?}"))
            .to_string()
    }

    /// Asserts a JSON-mode failure: exit `code`, nothing on stderr and one
    /// line on stdout, `{"error": {"code": CODE, "message": ...}}`. Returns
    /// the message.
    #[track_caller]
    fn fails_json(&self, code: i32, grpc_code: &str) -> String {
        assert_eq!(self.code, Some(code), "{self:?}");
        assert_eq!(self.stderr, "", "{self:?}");
        assert_eq!(self.stdout.lines().count(), 1, "not one line: {self:?}");
        let v: Value = serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"));
        assert_eq!(keys(&v), sorted(fields::ERROR), "{v}");
        assert_eq!(keys(&v["error"]), sorted(fields::ERROR_BODY), "{v}");
        assert_eq!(v["error"]["code"], grpc_code, "{v}");
        let message = v["error"]["message"]
            .as_str()
            .expect("a message")
            .to_string();
        assert!(!message.is_empty() && !message.contains('\n'), "{v}");
        message
    }
}

/// `mbctl ARGS` with the environment cleared of `MBCTL_SOCKET`.
fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(mbctl_bin());
    cmd.args(args)
        .env_remove("MBCTL_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// `mbctl --socket SOCKET ARGS`.
async fn mbctl(socket: &Path, args: &[&str]) -> Out {
    let mut full = vec!["--socket", socket.to_str().unwrap()];
    full.extend_from_slice(args);
    run(command(&full)).await
}

/// The sorted keys of a JSON object.
fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect();
    k.sort();
    k
}

/// Checks the shape of a route object and returns its text form
/// (`100#10.0.1.0/24@2001:db8::1#nat#1#2`, as the test helpers write it).
#[track_caller]
fn route_of(v: &Value) -> String {
    assert_eq!(keys(v), sorted(fields::ROUTE), "{v}");
    let nh = &v["next_hop"];
    assert_eq!(keys(nh), sorted(fields::NEXT_HOP), "{v}");
    let mut s = format!(
        "{}#{}@{}",
        v["vni"].as_u64().expect("vni"),
        v["prefix"].as_str().expect("prefix"),
        nh["address"].as_str().expect("address")
    );
    let (from, to) = (&nh["nat_port_from"], &nh["nat_port_to"]);
    match (nh["type"].as_str().expect("type"), nh["wire_type"].as_i64()) {
        ("std", Some(0)) => assert_eq!((from, to), (&json!(0), &json!(0)), "{v}"),
        ("nat", Some(1)) => s.push_str(&format!("#nat#{from}#{to}")),
        ("lb", Some(2)) => {
            assert_eq!((from, to), (&json!(0), &json!(0)), "{v}");
            s.push_str("#lb")
        }
        other => panic!("unexpected type/wire_type {other:?}: {v}"),
    }
    assert_eq!(nh["target_vni"], 0, "{v}");
    s
}

/// The routes of a `{"routes": [...]}` document: text form -> announcers
/// (each `api`, `config` or `peer <remote address>`). Checks the shape of
/// every entry and that no route is listed twice.
#[track_caller]
fn routes_of(doc: &Value) -> BTreeMap<String, BTreeSet<String>> {
    assert_eq!(keys(doc), ["routes"], "{doc}");
    let mut out = BTreeMap::new();
    for e in doc["routes"].as_array().expect("a routes array") {
        assert_eq!(keys(e), sorted(fields::ROUTE_ENTRY), "{e}");
        let announcers = e["announcers"]
            .as_array()
            .expect("announcers")
            .iter()
            .map(|a| match a["kind"].as_str() {
                Some("peer") => {
                    assert_eq!(keys(a), sorted(fields::PEER_ANNOUNCER), "{a}");
                    assert!(a["session_id"].as_u64().is_some_and(|id| id > 0), "{a}");
                    format!("peer {}", a["remote_address"].as_str().unwrap())
                }
                Some(kind @ ("api" | "config")) => {
                    assert_eq!(keys(a), ["kind"], "{a}");
                    kind.to_string()
                }
                _ => panic!("unexpected announcer {a}"),
            })
            .collect();
        let text = route_of(&e["route"]);
        assert!(
            out.insert(text.clone(), announcers).is_none(),
            "{text} listed twice"
        );
    }
    out
}

/// Parses an aligned table whose header must be exactly `columns`; returns
/// each row as column name -> cell. Cells are cut at the header's column
/// offsets, so a misaligned row shows up as garbled cells.
#[track_caller]
fn parse_table(text: &str, columns: &[&str]) -> Vec<BTreeMap<String, String>> {
    let mut lines = text.lines();
    let header = lines
        .next()
        .unwrap_or_else(|| panic!("no header: {text:?}"));
    let names: Vec<&str> = header
        .split("  ")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(names, columns, "header of\n{text}");
    let mut starts = Vec::new();
    let mut from = 0;
    for c in columns {
        let at = from + header[from..].find(c).unwrap();
        starts.push(at);
        from = at + c.len();
    }
    lines
        .map(|line| {
            assert_eq!(line, line.trim_end(), "trailing whitespace in {line:?}");
            columns
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let end = starts.get(i + 1).copied().unwrap_or(usize::MAX);
                    let cell = line
                        .get(starts[i].min(line.len())..end.min(line.len()))
                        .unwrap_or_else(|| panic!("cannot cut {line:?}"));
                    if i > 0 && starts[i] < line.len() {
                        assert!(
                            line[..starts[i]].ends_with("  "),
                            "column {c} misaligned in {line:?}"
                        );
                    }
                    (c.to_string(), cell.trim().to_string())
                })
                .collect()
        })
        .collect()
}

/// Parses `key: value` lines with aligned values.
#[track_caller]
fn parse_key_values(text: &str) -> BTreeMap<String, String> {
    let mut column = None;
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let (key, rest) = line
            .split_once(':')
            .unwrap_or_else(|| panic!("not `key: value`: {line:?}"));
        let value = rest.trim_start();
        let at = line.len() - value.len();
        if !value.is_empty() {
            assert_eq!(*column.get_or_insert(at), at, "value misaligned: {text}");
        }
        assert!(
            out.insert(key.to_string(), value.to_string()).is_none(),
            "{key} twice"
        );
    }
    out
}

/// The one row of `rows` whose `column` is `value`.
#[track_caller]
fn row<'a>(
    rows: &'a [BTreeMap<String, String>],
    column: &str,
    value: &str,
) -> &'a BTreeMap<String, String> {
    let found: Vec<_> = rows.iter().filter(|r| r[column] == value).collect();
    assert_eq!(found.len(), 1, "rows with {column} = {value}: {rows:?}");
    found[0]
}

/// `VNI#PREFIX@NEXTHOP` of a route's text form (without type and ports).
fn without_type(text: &str) -> String {
    let (head, hop) = text.split_once('@').unwrap();
    format!("{head}@{}", hop.split('#').next().unwrap())
}

/// The map of a table row with these (column, cell) pairs.
fn cells(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `mbctl routes -o json` as text form -> announcers.
async fn listed_routes(socket: &Path) -> BTreeMap<String, BTreeSet<String>> {
    routes_of(&mbctl(socket, &["-o", "json", "routes"]).await.json())
}

/// Waits (bounded) for the daemon process to exit. Process exit has no
/// event we can wait on here, so this polls briefly, like the harness.
async fn wait_exit(d: &Daemon, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while d.is_alive() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

// ---------------------------------------------------------------------------
// A running `mbctl watch`
// ---------------------------------------------------------------------------

/// A `mbctl watch ...` child whose stdout lines arrive on a channel as they
/// are printed. Killed by its PID on drop.
struct Watch {
    child: Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Watch {
    fn spawn(socket: &Path, args: &[&str]) -> Watch {
        let mut full = vec!["--socket", socket.to_str().unwrap()];
        full.extend_from_slice(args);
        let mut child = command(&full).spawn().expect("start mbctl watch");
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().unwrap();
        let err_text = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = err_pipe.read_to_end(&mut buf);
            *err_text.lock().unwrap() = String::from_utf8_lossy(&buf).into_owned();
        });
        Watch {
            child,
            lines,
            stderr,
        }
    }

    /// The next stdout line, or `None` if none comes within `timeout`
    /// (panics if stdout ended).
    async fn line_within(&mut self, timeout: Duration) -> Option<String> {
        match tokio::time::timeout(timeout, self.lines.recv()).await {
            Ok(Some(line)) => Some(line),
            Ok(None) => panic!(
                "mbctl watch ended its output; status {:?}, stderr {:?}",
                self.child.try_wait(),
                self.stderr.lock().unwrap()
            ),
            Err(_) => None,
        }
    }

    /// The next event (one JSON object per line); panics if none comes
    /// within [`T`].
    async fn event(&mut self) -> Value {
        let line = self
            .line_within(T)
            .await
            .unwrap_or_else(|| panic!("no event from mbctl watch within {T:?}"));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
    }

    /// Sends SIGINT (Ctrl-C) to the child's PID and waits (bounded) for it
    /// to end its output and exit.
    async fn interrupt(mut self) -> ExitStatus {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) with our own, not yet reaped child's PID.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
        match tokio::time::timeout(T, self.lines.recv()).await {
            Ok(None) => {}
            Ok(Some(line)) => panic!("unexpected output after Ctrl-C: {line}"),
            Err(_) => panic!("mbctl watch still running {T:?} after SIGINT"),
        }
        // Its stdout is closed: it has exited or is about to.
        self.child.wait().expect("wait for mbctl watch")
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        // `Child::kill` signals exactly this PID; harmless once it exited.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// Listings
// ---------------------------------------------------------------------------

#[tokio::test]
async fn peers_and_peer_in_table_and_json() {
    let d = Daemon::start(&[]);
    let sock = d.api_socket();
    let mut a = RawPeer::established(d.addr).await;
    let mut b = RawPeer::established(d.addr).await;
    a.subscribe(100).await;
    a.subscribe(200).await;
    let r = route("100#10.0.1.0/24@2001:db8::1");
    b.announce(r).await;
    // a has the route: its subscriptions and the announcement are processed.
    a.expect_exactly(&[add(r)], "b's route").await;

    let rows = parse_table(mbctl(&sock, &["peers"]).await.ok(), columns::PEERS);
    assert_eq!(rows.len(), 2, "{rows:?}");
    let (a_local, b_local) = (a.local.to_string(), b.local.to_string());
    let ra = row(&rows, "REMOTE", &a_local);
    let rb = row(&rows, "REMOTE", &b_local);
    for (r, vnis, in_out) in [(ra, "100,200", "0/1"), (rb, "-", "1/0")] {
        assert_eq!(r["ROLE"], "server", "{r:?}");
        assert_eq!(r["STATE"], "established", "{r:?}");
        assert_eq!(r["KEEPALIVE"], format!("{DEFAULT_KEEPALIVE}s"), "{r:?}");
        assert!(r["UPTIME"].ends_with('s'), "{r:?}");
        assert_eq!(r["VNIS"], vnis, "{r:?}");
        assert_eq!(r["IN/OUT"], in_out, "{r:?}");
        assert_eq!(r["QUEUE"], "0B", "{r:?}");
        assert_eq!(r["LAST ERROR"], "-", "{r:?}");
    }
    assert_eq!(ra["ANNOUNCED"], "0");
    assert_eq!(rb["ANNOUNCED"], "1");
    let (a_id, b_id) = (ra["ID"].clone(), rb["ID"].clone());
    assert_ne!(a_id, b_id);

    let doc = mbctl(&sock, &["-o", "json", "peers"]).await.json();
    assert_eq!(keys(&doc), ["peers"]);
    let peers = doc["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 2);
    for p in peers {
        assert_eq!(keys(p), sorted(fields::PEER), "{p}");
        assert_eq!(p["role"], "server");
        assert_eq!(p["state"], "established");
        assert_eq!(p["keepalive_seconds"], DEFAULT_KEEPALIVE);
        assert_eq!(p["local_address"], d.addr.to_string());
        assert_eq!(p["last_error"], "");
        assert!(p["connected_at"].as_str().unwrap().ends_with('Z'), "{p}");
        assert!(p["uptime_seconds"].is_u64(), "{p}");
    }
    let pa = peers
        .iter()
        .find(|p| p["remote_address"] == a_local)
        .unwrap();
    let pb = peers
        .iter()
        .find(|p| p["remote_address"] == b_local)
        .unwrap();
    assert_eq!(pa["session_id"].to_string(), a_id);
    assert_eq!(pb["session_id"].to_string(), b_id);
    assert_eq!(pa["subscribed_vnis"], json!([100, 200]));
    assert_eq!(pb["subscribed_vnis"], json!([]));
    assert_eq!(
        (&pa["routes_announced"], &pa["updates_sent"]),
        (&json!(0), &json!(1))
    );
    assert_eq!(
        (&pb["routes_announced"], &pb["updates_received"]),
        (&json!(1), &json!(1))
    );

    // One peer by remote address, in table form, and by session id in JSON.
    let kv = parse_key_values(mbctl(&sock, &["peer", &b_local]).await.ok());
    assert_eq!(
        kv.keys().map(String::as_str).collect::<Vec<_>>(),
        sorted(contract::keys::PEER)
    );
    assert_eq!(kv["session_id"], b_id);
    assert_eq!(kv["remote_address"], b_local);
    assert_eq!(kv["local_address"], d.addr.to_string());
    assert_eq!(kv["role"], "server");
    assert_eq!(kv["state"], "established");
    assert_eq!(kv["routes_announced"], "1");
    assert_eq!(kv["updates_received"], "1");
    assert_eq!(kv["subscribed_vnis"], "-");
    assert_eq!(kv["last_error"], "-");

    let pa_one = mbctl(&sock, &["-o", "json", "peer", &a_id]).await.json();
    assert_eq!(keys(&pa_one), sorted(fields::PEER));
    assert_eq!(pa_one["remote_address"], a_local);
    assert_eq!(pa_one["subscribed_vnis"], json!([100, 200]));

    // Both sessions come from ::1: a bare IP is ambiguous. Unknown ids are NOT_FOUND.
    let msg = mbctl(&sock, &["peer", "::1"]).await.fails(1);
    assert!(msg.ends_with("(FAILED_PRECONDITION)"), "{msg}");
    let msg = mbctl(&sock, &["-o", "json", "peer", "999999"])
        .await
        .fails_json(1, "NOT_FOUND");
    assert!(msg.contains("999999"), "{msg}");
}

#[tokio::test]
async fn vnis_routes_and_filters_in_table_and_json() {
    let d = Daemon::start(&[]);
    let sock = d.api_socket();
    let mut a = RawPeer::established(d.addr).await;
    let mut b = RawPeer::established(d.addr).await;
    a.subscribe(100).await;
    a.subscribe(200).await;
    let std_route = "100#10.0.1.0/24@2001:db8::1";
    let nat_route = "200#10.0.2.0/24@2001:db8::2#nat#1024#2048";
    let lb_route = "100#10.0.3.0/24@2001:db8::3#lb";
    b.announce(route(std_route)).await;
    b.announce(route(nat_route)).await;
    a.expect_exactly(
        &[add(route(std_route)), add(route(nat_route))],
        "b's routes",
    )
    .await;
    // The NAT route is announced by b and through the API: one ADD only.
    let out = mbctl(&sock, &["announce", lb_route, nat_route]).await;
    assert_eq!(out.ok(), "announced 2 routes, 2 new\n");
    a.expect_exactly(&[add(route(lb_route))], "the API's new route")
        .await;
    let b_peer = format!("peer {}", b.local);
    let b_local = b.local.to_string();

    // VNIs. The digests (ADR 0029) depend on the routes: the table shows
    // those of the JSON document, 16 hex digits, one per VNI.
    let mut doc = mbctl(&sock, &["-o", "json", "vnis"]).await.json();
    let mut digests = Vec::new();
    for v in doc["vnis"].as_array_mut().unwrap() {
        let v = v.as_object_mut().unwrap();
        assert_eq!(v.remove("digest_routes"), v.get("routes").cloned());
        let digest = v.remove("digest").unwrap().as_str().unwrap().to_string();
        assert!(
            digest.len() == 16 && digest.chars().all(|c| c.is_ascii_hexdigit()),
            "{digest:?}"
        );
        digests.push(digest);
    }
    assert_ne!(digests[0], digests[1]);
    assert_eq!(
        doc,
        json!({"vnis": [
            {"vni": 100, "routes": 2, "announcers": 2, "subscribers": 1},
            {"vni": 200, "routes": 1, "announcers": 2, "subscribers": 1},
        ]})
    );
    let rows = parse_table(mbctl(&sock, &["vnis"]).await.ok(), columns::VNIS);
    assert_eq!(
        rows,
        [
            cells(&[
                ("VNI", "100"),
                ("ROUTES", "2"),
                ("ANNOUNCERS", "2"),
                ("SUBSCRIBERS", "1"),
                ("DIGEST", &digests[0]),
            ]),
            cells(&[
                ("VNI", "200"),
                ("ROUTES", "1"),
                ("ANNOUNCERS", "2"),
                ("SUBSCRIBERS", "1"),
                ("DIGEST", &digests[1]),
            ]),
        ]
    );

    // Routes, table.
    let rows = parse_table(mbctl(&sock, &["routes"]).await.ok(), columns::ROUTES);
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(
        row(&rows, "PREFIX", "10.0.1.0/24"),
        &cells(&[
            ("VNI", "100"),
            ("PREFIX", "10.0.1.0/24"),
            ("NEXT HOP", "2001:db8::1"),
            ("TYPE", "std"),
            ("PORTS", "-"),
            ("ANNOUNCERS", &b_local),
        ])
    );
    assert_eq!(
        row(&rows, "PREFIX", "10.0.3.0/24"),
        &cells(&[
            ("VNI", "100"),
            ("PREFIX", "10.0.3.0/24"),
            ("NEXT HOP", "2001:db8::3"),
            ("TYPE", "lb"),
            ("PORTS", "-"),
            ("ANNOUNCERS", "api"),
        ])
    );
    let nat = row(&rows, "PREFIX", "10.0.2.0/24");
    assert_eq!(
        (&nat["VNI"], &nat["NEXT HOP"], &nat["TYPE"], &nat["PORTS"]),
        (
            &"200".to_string(),
            &"2001:db8::2".to_string(),
            &"nat".to_string(),
            &"1024-2048".to_string()
        )
    );
    let announcers: BTreeSet<&str> = nat["ANNOUNCERS"].split(',').collect();
    assert_eq!(announcers, BTreeSet::from([b_local.as_str(), "api"]));

    // Routes, JSON.
    let all = listed_routes(&sock).await;
    let want: BTreeMap<String, BTreeSet<String>> = [
        (std_route, vec![b_peer.as_str()]),
        (nat_route, vec![b_peer.as_str(), "api"]),
        (lb_route, vec!["api"]),
    ]
    .into_iter()
    .map(|(r, a)| (r.to_string(), a.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(all, want);
    let doc = mbctl(&sock, &["-o", "json", "routes", "--prefix", "10.0.2.0/24"])
        .await
        .json();
    let entry = &doc["routes"][0];
    assert_eq!(
        entry["route"]["next_hop"],
        json!({"address": "2001:db8::2", "type": "nat", "nat_port_from": 1024,
               "nat_port_to": 2048, "target_vni": 0, "wire_type": 1})
    );
    let b_id = parse_table(mbctl(&sock, &["peers"]).await.ok(), columns::PEERS)
        .iter()
        .find(|r| r["REMOTE"] == b_local)
        .unwrap()["ID"]
        .parse::<u64>()
        .unwrap();
    assert!(
        entry["announcers"]
            .as_array()
            .unwrap()
            .contains(&json!({"kind": "peer", "session_id": b_id, "remote_address": b_local})),
        "{entry}"
    );

    // Filters, in both output forms.
    let b_id_text = b_id.to_string();
    for (filter, want) in [
        (vec!["--vni", "100"], vec![std_route, lb_route]),
        (vec!["--vni", "200"], vec![nat_route]),
        (vec!["--vni", "300"], vec![]),
        (vec!["--prefix", "10.0.2.0/24"], vec![nat_route]),
        (vec!["--vni", "100", "--prefix", "10.0.2.0/24"], vec![]),
        (vec!["--next-hop", "2001:db8::3"], vec![lb_route]),
        (vec!["--type", "nat"], vec![nat_route]),
        (vec!["--type", "LB"], vec![lb_route]),
        (vec!["--origin", "local"], vec![nat_route, lb_route]),
        (vec!["--origin", &b_local], vec![std_route, nat_route]),
        (vec!["--origin", &b_id_text], vec![std_route, nat_route]),
    ] {
        let want: BTreeSet<String> = want.into_iter().map(String::from).collect();
        let mut args = vec!["-o", "json", "routes"];
        args.extend(&filter);
        let got = routes_of(&mbctl(&sock, &args).await.json());
        assert_eq!(
            got.keys().cloned().collect::<BTreeSet<_>>(),
            want,
            "{filter:?}"
        );
        let mut args = vec!["routes"];
        args.extend(&filter);
        let rows = parse_table(mbctl(&sock, &args).await.ok(), columns::ROUTES);
        let got: BTreeSet<String> = rows
            .iter()
            .map(|r| format!("{}#{}@{}", r["VNI"], r["PREFIX"], r["NEXT HOP"]))
            .collect();
        let want_short: BTreeSet<String> = want.iter().map(|t| without_type(t)).collect();
        assert_eq!(got, want_short, "table {filter:?}");
    }
}

#[tokio::test]
async fn routes_lists_all_pages_exactly_once() {
    const N: usize = 2500;
    let d = Daemon::start(&[]);
    let sock = d.api_socket();
    let texts: Vec<String> = (0..N)
        .map(|i| format!("{}#10.{}.{}.0/24@2001:db8::1", i % 3, i / 256, i % 256))
        .collect();
    let mut args = vec!["announce"];
    args.extend(texts.iter().map(String::as_str));
    assert_eq!(
        mbctl(&sock, &args).await.ok(),
        format!("announced {N} routes, {N} new\n")
    );

    // The daemon pages by 1000: three pages, every route exactly once.
    let all = listed_routes(&sock).await;
    assert_eq!(all.len(), N);
    assert_eq!(
        all.keys().cloned().collect::<BTreeSet<_>>(),
        texts.iter().cloned().collect::<BTreeSet<_>>()
    );
    assert!(all.values().all(|a| a.len() == 1 && a.contains("api")));

    let table = mbctl(&sock, &["routes"]).await;
    let rows = parse_table(table.ok(), columns::ROUTES);
    assert_eq!(rows.len(), N);
    let distinct: BTreeSet<String> = rows
        .iter()
        .map(|r| format!("{}#{}@{}", r["VNI"], r["PREFIX"], r["NEXT HOP"]))
        .collect();
    assert_eq!(distinct, texts.iter().cloned().collect::<BTreeSet<_>>());

    let vni1 = routes_of(
        &mbctl(&sock, &["-o", "json", "routes", "--vni", "1"])
            .await
            .json(),
    );
    assert_eq!(vni1.len(), (0..N).filter(|i| i % 3 == 1).count());
    assert!(vni1.keys().all(|t| t.starts_with("1#")));
}

#[tokio::test]
async fn status_and_health() {
    let d = Daemon::start(&[]);
    let sock = d.api_socket();
    let mut a = RawPeer::established(d.addr).await;
    let mut sub = RawPeer::established(d.addr).await;
    sub.subscribe(7).await;
    a.announce(route("7#10.0.1.0/24@2001:db8::1")).await;
    sub.expect_updates(1, T).await;
    mbctl(
        &sock,
        &[
            "announce",
            "7#10.0.2.0/24@2001:db8::2",
            "8#10.0.3.0/24@2001:db8::3",
        ],
    )
    .await
    .ok();
    sub.expect_updates(1, T).await;

    let version = env!("CARGO_PKG_VERSION");
    let addr = d.addr.to_string();
    let api_socket = sock.display().to_string();
    let state_dir = d.state_dir().display().to_string();
    let kv = parse_key_values(mbctl(&sock, &["status"]).await.ok());
    let mut fixed = kv.clone();
    let uptime = fixed.remove("uptime").unwrap();
    assert!(uptime.ends_with('s'), "{uptime}");
    let started = fixed.remove("started_at").unwrap();
    assert!(started.ends_with('Z'), "{started}");
    assert_eq!(
        fixed,
        cells(&[
            ("version", version),
            ("listen_addresses", &addr),
            ("metrics_address", "-"),
            ("http_address", "-"),
            ("api_socket", &api_socket),
            ("state_dir", &state_dir),
            ("sessions", "2"),
            ("routes", "3"),
            ("vnis", "2"),
            ("next_hops", "3"),
            ("injected_routes", "2"),
            ("static_routes", "0"),
            ("shared_state", "redb"),
        ])
    );

    let mut doc = mbctl(&sock, &["-o", "json", "status"]).await.json();
    let obj = doc.as_object_mut().unwrap();
    let uptime = obj.remove("uptime_seconds").unwrap();
    assert!(uptime.is_u64(), "{uptime}");
    assert_eq!(obj.remove("started_at").unwrap(), started);
    assert_eq!(
        doc,
        json!({
            "version": version,
            "listen_addresses": [addr],
            "metrics_address": null,
            "http_address": null,
            "api_socket": api_socket,
            "state_dir": state_dir,
            "sessions": 2,
            "routes": 3,
            "vnis": 2,
            "next_hops": 3,
            "injected_routes": 2,
            "static_routes": 0,
            "overrides": [],
            "client": null,
            "shared_state": {
                "backend": "redb",
                "endpoints": [],
                "prefix": "",
                "degraded": false,
                "reason": null,
                "revision": 0,
                "routes": 0,
                "resyncs": 0,
                "skipped_keys": 0,
            },
        })
    );

    assert_eq!(mbctl(&sock, &["health"]).await.ok(), "SERVING\n");
    assert_eq!(
        mbctl(&sock, &["-o", "json", "health"]).await.json(),
        json!({"status": "SERVING"})
    );
}

// ---------------------------------------------------------------------------
// Announcing and withdrawing
// ---------------------------------------------------------------------------

#[tokio::test]
async fn announce_std_nat_lb_in_both_forms_and_withdraw() {
    let d = Daemon::start(&[]);
    let sock = d.api_socket();
    let mut sub = RawPeer::established(d.addr).await;
    sub.subscribe(100).await;
    sub.subscribe(200).await;

    // The rustbond form, table output.
    let out = mbctl(
        &sock,
        &[
            "announce",
            "100#10.0.1.0/24@2001:db8::1",
            "200#10.0.2.0/24@2001:db8::2#nat#1024#2048",
            "100#10.0.3.0/24@2001:db8::3#lb",
        ],
    )
    .await;
    assert_eq!(out.ok(), "announced 3 routes, 3 new\n");
    let first = [
        route("100#10.0.1.0/24@2001:db8::1"),
        route("200#10.0.2.0/24@2001:db8::2#nat#1024#2048"),
        route("100#10.0.3.0/24@2001:db8::3#lb"),
    ];
    sub.expect_exactly(&first.map(add), "rustbond form").await;

    // The Go form (types in any case), JSON output.
    let out = mbctl(
        &sock,
        &[
            "-o",
            "json",
            "announce",
            "100#10.0.4.0/24#2001:db8::4",
            "200#10.0.5.0/24#2001:db8::5#NAT#80#90",
            "100#10.0.6.0/24#2001:db8::6#LB",
            "200#10.0.7.0/24#2001:db8::7#Std",
        ],
    )
    .await;
    assert_eq!(out.json(), json!({"added": 4}));
    let second = [
        route("100#10.0.4.0/24@2001:db8::4"),
        route("200#10.0.5.0/24@2001:db8::5#nat#80#90"),
        route("100#10.0.6.0/24@2001:db8::6#lb"),
        route("200#10.0.7.0/24@2001:db8::7"),
    ];
    sub.expect_exactly(&second.map(add), "Go form").await;

    let want: BTreeSet<String> = [
        "100#10.0.1.0/24@2001:db8::1",
        "200#10.0.2.0/24@2001:db8::2#nat#1024#2048",
        "100#10.0.3.0/24@2001:db8::3#lb",
        "100#10.0.4.0/24@2001:db8::4",
        "200#10.0.5.0/24@2001:db8::5#nat#80#90",
        "100#10.0.6.0/24@2001:db8::6#lb",
        "200#10.0.7.0/24@2001:db8::7",
    ]
    .map(String::from)
    .into();
    let listed = listed_routes(&sock).await;
    assert_eq!(listed.keys().cloned().collect::<BTreeSet<_>>(), want);
    assert!(listed
        .values()
        .all(|a| a == &BTreeSet::from(["api".to_string()])));

    // Withdraw in both forms.
    let out = mbctl(
        &sock,
        &[
            "withdraw",
            "200#10.0.2.0/24#2001:db8::2#nat#1024#2048",
            "100#10.0.6.0/24@2001:db8::6#lb",
        ],
    )
    .await;
    assert_eq!(out.ok(), "withdrew 2 routes, 2 removed\n");
    sub.expect_exactly(&[rem(first[1]), rem(second[2])], "withdrawn")
        .await;
    let out = mbctl(
        &sock,
        &["-o", "json", "withdraw", "100#10.0.1.0/24@2001:db8::1"],
    )
    .await;
    assert_eq!(out.json(), json!({"removed": 1}));
    sub.expect_exactly(&[rem(first[0])], "withdrawn (JSON)")
        .await;

    // --allow-existing and --allow-missing make no-ops of repeats.
    let out = mbctl(
        &sock,
        &[
            "announce",
            "--allow-existing",
            "100#10.0.3.0/24@2001:db8::3#lb",
        ],
    )
    .await;
    assert_eq!(out.ok(), "announced 1 route, 0 new\n");
    let out = mbctl(
        &sock,
        &["withdraw", "--allow-missing", "100#10.0.1.0/24@2001:db8::1"],
    )
    .await;
    assert_eq!(out.ok(), "withdrew 1 route, 0 removed\n");
    sub.expect_no_update(QUIET).await;
    let listed = listed_routes(&sock).await;
    assert_eq!(
        listed.keys().cloned().collect::<BTreeSet<_>>(),
        [
            "100#10.0.3.0/24@2001:db8::3#lb",
            "100#10.0.4.0/24@2001:db8::4",
            "200#10.0.5.0/24@2001:db8::5#nat#80#90",
            "200#10.0.7.0/24@2001:db8::7",
        ]
        .map(String::from)
        .into()
    );
}

#[tokio::test]
async fn bad_input_fails_with_the_right_code_and_changes_nothing() {
    let d = Daemon::start(&[]);
    let sock = d.api_socket();
    let mut sub = RawPeer::established(d.addr).await;
    sub.subscribe(100).await;
    let existing = "100#10.9.0.0/24@2001:db8::9";
    mbctl(&sock, &["announce", existing]).await.ok();
    sub.expect_exactly(&[add(route(existing))], "the seed route")
        .await;
    let before = mbctl(&sock, &["-o", "json", "routes"]).await.json();
    assert_eq!(routes_of(&before).len(), 1);

    let good = "100#10.0.1.0/24@2001:db8::1";
    let bad_prefix = "100#10.0.0.0/33@2001:db8::1";
    let bad_vni = "16777216#10.0.0.0/24@2001:db8::1";
    let nat_without_ports = "100#10.0.0.0/24@2001:db8::1#nat";
    // (arguments, exit code, gRPC code, what the message must contain)
    let cases: Vec<(Vec<&str>, i32, &str, String)> = vec![
        (
            vec!["announce", good, bad_prefix],
            2,
            "INVALID_ARGUMENT",
            format!(
                "invalid route {bad_prefix:?}: prefix \"10.0.0.0/33\": length 33 exceeds 32 bits"
            ),
        ),
        (
            vec!["announce", bad_vni],
            2,
            "INVALID_ARGUMENT",
            format!(
                "invalid route {bad_vni:?}: VNI \"16777216\" is not a number from 0 to 16777215"
            ),
        ),
        (
            vec!["announce", nat_without_ports],
            2,
            "INVALID_ARGUMENT",
            format!("invalid route {nat_without_ports:?}: NAT needs a port range #FROM#TO"),
        ),
        (
            vec!["withdraw", bad_prefix],
            2,
            "INVALID_ARGUMENT",
            format!("invalid route {bad_prefix:?}"),
        ),
        (
            vec!["withdraw", good],
            1,
            "NOT_FOUND",
            "10.0.1.0/24".to_string(),
        ),
        // All or none: the existing route is not withdrawn with the missing one.
        (
            vec!["withdraw", existing, good],
            1,
            "NOT_FOUND",
            "10.0.1.0/24".to_string(),
        ),
        (
            vec!["announce", existing],
            1,
            "ALREADY_EXISTS",
            "10.9.0.0/24".to_string(),
        ),
        // All or none: the new route is not announced with the duplicate.
        (
            vec!["announce", good, existing],
            1,
            "ALREADY_EXISTS",
            "10.9.0.0/24".to_string(),
        ),
    ];
    for (args, exit, code, needle) in &cases {
        // Table mode: one `mbctl: ...` line on stderr.
        let msg = mbctl(&sock, args).await.fails(*exit);
        assert!(msg.contains(needle.as_str()), "{args:?}: {msg}");
        if *exit == 1 {
            assert!(msg.ends_with(&format!("({code})")), "{args:?}: {msg}");
        } else {
            assert!(msg.starts_with("invalid route "), "{args:?}: {msg}");
        }
        // JSON mode: the error document on stdout.
        let mut json_args = vec!["-o", "json"];
        json_args.extend(args);
        let msg = mbctl(&sock, &json_args).await.fails_json(*exit, code);
        assert!(msg.contains(needle.as_str()), "{args:?}: {msg}");

        assert_eq!(
            mbctl(&sock, &["-o", "json", "routes"]).await.json(),
            before,
            "{args:?} changed the table"
        );
        sub.expect_no_update(QUIET).await;
    }
    assert!(d.is_alive());
}

// ---------------------------------------------------------------------------
// Watching
// ---------------------------------------------------------------------------

/// Checks a route event: its sequence, kind and route.
#[track_caller]
fn check_route_event(ev: &Value, sequence: u64, kind: &str, route_text: &str) {
    assert_eq!(keys(ev), ["kind", "route", "sequence"], "{ev}");
    assert_eq!(
        (&ev["sequence"], &ev["kind"]),
        (&json!(sequence), &json!(kind)),
        "{ev}"
    );
    assert_eq!(route_of(&ev["route"]), route_text, "{ev}");
}

#[tokio::test]
async fn watch_routes_json_streams_the_snapshot_then_changes() {
    let d = Daemon::start(&[]);
    let sock = d.api_socket();
    let before = "100#10.0.1.0/24@2001:db8::1";
    mbctl(&sock, &["announce", before, "101#10.1.0.0/24@2001:db8::1"])
        .await
        .ok();

    let mut watch = Watch::spawn(&sock, &["-o", "json", "watch", "routes", "--vni", "100"]);
    check_route_event(&watch.event().await, 1, "snapshot", before);
    let end = watch.event().await;
    assert_eq!(
        end,
        json!({"sequence": 2, "kind": "snapshot_end", "routes": 1})
    );

    // A peer's route; one in another VNI first, which must not show.
    let mut peer = RawPeer::established(d.addr).await;
    peer.announce(route("101#10.1.1.0/24@2001:db8::5")).await;
    let from_peer = "100#10.0.2.0/24@2001:db8::2#nat#1#2";
    peer.announce(route(from_peer)).await;
    check_route_event(&watch.event().await, 3, "added", from_peer);

    // Routes announced and withdrawn with mbctl.
    let from_api = "100#10.0.3.0/24@2001:db8::3#lb";
    mbctl(
        &sock,
        &["announce", "101#10.1.2.0/24@2001:db8::1", from_api],
    )
    .await
    .ok();
    check_route_event(&watch.event().await, 4, "added", from_api);
    mbctl(&sock, &["withdraw", before]).await.ok();
    check_route_event(&watch.event().await, 5, "removed", before);
    peer.withdraw(route(from_peer)).await;
    check_route_event(&watch.event().await, 6, "removed", from_peer);
    // A route announced by the peer too leaves only with its last announcer.
    peer.announce(route(from_api)).await;
    let mut other = RawPeer::established(d.addr).await;
    barrier(&mut other, &mut peer, 99).await;
    mbctl(&sock, &["withdraw", from_api]).await.ok();
    drop(peer);
    check_route_event(&watch.event().await, 7, "removed", from_api);

    assert_eq!(watch.line_within(QUIET).await, None, "unexpected event");
    // Ctrl-C ends a watch with exit 0.
    let status = watch.interrupt().await;
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[tokio::test]
async fn watch_peers_json_shows_up_and_down() {
    let d = Daemon::start(&[]);
    let sock = d.api_socket();
    let mut watch = Watch::spawn(&sock, &["-o", "json", "watch", "peers"]);

    // WatchPeers sends no snapshot, so nothing shows when the watch is
    // live: connect probe peers until one shows up (bounded). Probes stay
    // connected until the end, so none of them goes down during the test.
    let mut probes: Vec<RawPeer> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    let first = loop {
        assert!(
            Instant::now() < deadline,
            "mbctl watch peers showed none of {} probe peers",
            probes.len()
        );
        probes.push(RawPeer::established(d.addr).await);
        if let Some(line) = watch.line_within(Duration::from_millis(300)).await {
            break line;
        }
    };
    let probe_addrs: BTreeSet<String> = probes.iter().map(|p| p.local.to_string()).collect();
    let mut ev: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(ev["sequence"], 1, "{ev}");
    let mut sequence = 1;

    let peer = RawPeer::established(d.addr).await;
    let me = peer.local.to_string();
    // Each session: `up` when accepted, `established` when its handshake
    // completed. Events of probes that were slow to show may come first.
    let mut my_up: Option<u64> = None;
    loop {
        assert_eq!(keys(&ev), ["kind", "peer", "sequence"], "{ev}");
        assert_eq!(keys(&ev["peer"]), sorted(fields::PEER), "{ev}");
        assert_eq!(ev["peer"]["role"], "server", "{ev}");
        assert_eq!(ev["peer"]["local_address"], d.addr.to_string(), "{ev}");
        let remote = ev["peer"]["remote_address"].as_str().unwrap();
        let id = ev["peer"]["session_id"].as_u64().unwrap();
        match (ev["kind"].as_str().unwrap(), remote == me) {
            ("up", true) => {
                assert_eq!(my_up, None, "two ups: {ev}");
                my_up = Some(id);
            }
            ("established", true) => {
                assert_eq!(my_up, Some(id), "established before up: {ev}");
                assert_eq!(ev["peer"]["state"], "established", "{ev}");
                assert_eq!(ev["peer"]["keepalive_seconds"], DEFAULT_KEEPALIVE, "{ev}");
                break;
            }
            ("up" | "established", false) => {
                assert!(
                    probe_addrs.contains(remote),
                    "event of an unknown peer: {ev}"
                )
            }
            _ => panic!("unexpected event: {ev}"),
        }
        ev = watch.event().await;
        sequence += 1;
        assert_eq!(ev["sequence"], sequence, "{ev}");
    }
    let id = my_up.unwrap();
    assert!(id >= 16, "session ids start at 16: {id}");

    drop(peer);
    // A probe's handshake may complete on the server after ours did.
    let down = loop {
        let e = watch.event().await;
        sequence += 1;
        assert_eq!(e["sequence"], sequence, "{e}");
        let remote = e["peer"]["remote_address"].as_str().unwrap_or_default();
        if e["kind"] == "established" && probe_addrs.contains(remote) {
            continue;
        }
        break e;
    };
    assert_eq!(
        keys(&down),
        ["kind", "peer", "reason", "sequence"],
        "{down}"
    );
    assert_eq!(down["kind"], "down", "{down}");
    assert_eq!(down["peer"]["session_id"], id, "{down}");
    assert_eq!(down["peer"]["remote_address"], me, "{down}");
    assert_eq!(down["peer"]["state"], "closed", "{down}");
    let reason = down["reason"].as_str().unwrap();
    assert!(reason.contains("closed"), "{reason}");
    assert_eq!(down["peer"]["last_error"], reason, "{down}");

    assert_eq!(watch.line_within(QUIET).await, None, "unexpected event");
    drop(probes);
    drop(watch);
}

// ---------------------------------------------------------------------------
// The daemon, the socket
// ---------------------------------------------------------------------------

#[tokio::test]
async fn reload_without_config_fails_and_shutdown_stops_the_daemon() {
    let d = Daemon::start(&[]);
    let sock = d.api_socket();
    let msg = mbctl(&sock, &["reload"]).await.fails(1);
    assert_eq!(
        msg,
        "no configuration file to reload: started without --config (FAILED_PRECONDITION)"
    );
    let msg = mbctl(&sock, &["-o", "json", "reload"])
        .await
        .fails_json(1, "FAILED_PRECONDITION");
    assert_eq!(
        msg,
        "no configuration file to reload: started without --config"
    );
    assert!(d.is_alive());
    // Not a failure of the daemon: a WARN, never an ERROR.
    let line = d
        .wait_for_line(|l| l.contains("no configuration file to reload"), T)
        .await
        .unwrap_or_else(|| panic!("not logged: {}", d.logs()));
    assert!(line.contains(" WARN "), "{line}");
    assert!(!d.logs().contains(" ERROR "), "{}", d.logs());
    assert_eq!(mbctl(&sock, &["health"]).await.ok(), "SERVING\n");

    assert_eq!(
        mbctl(&sock, &["shutdown"]).await.ok(),
        "metalbondd is shutting down\n"
    );
    assert!(
        wait_exit(&d, Duration::from_secs(10)).await,
        "metalbondd still running 10 s after `mbctl shutdown`; log:\n{}",
        d.logs()
    );
    // Nobody listens any more.
    let msg = mbctl(&sock, &["status"]).await.fails(3);
    assert!(
        msg.starts_with(&format!(
            "cannot connect to metalbondd at {}: ",
            sock.display()
        )),
        "{msg}"
    );
}

#[tokio::test]
async fn socket_from_the_environment_and_no_daemon() {
    let d = Daemon::start(&[]);
    let sock = d.api_socket();

    let mut cmd = command(&["-o", "json", "status"]);
    cmd.env("MBCTL_SOCKET", &sock);
    let doc = run(cmd).await.json();
    assert_eq!(doc["api_socket"], sock.display().to_string());
    assert_eq!(doc["listen_addresses"], json!([d.addr.to_string()]));

    let mut cmd = command(&["health"]);
    cmd.env("MBCTL_SOCKET", &sock);
    assert_eq!(run(cmd).await.ok(), "SERVING\n");

    // --socket wins over the environment.
    let missing = unique_temp_dir().join("nothing.sock");
    let mut cmd = command(&["--socket", sock.to_str().unwrap(), "health"]);
    cmd.env("MBCTL_SOCKET", &missing);
    assert_eq!(run(cmd).await.ok(), "SERVING\n");

    // Nothing listening there: exit 3 and one line.
    for args in [
        &["status"][..],
        &["routes"],
        &["announce", "1#10.0.0.0/8@::1"],
    ] {
        let mut cmd = command(args);
        cmd.env("MBCTL_SOCKET", &missing);
        let out = run(cmd).await;
        assert_eq!(
            out.fails(3),
            format!(
                "cannot connect to metalbondd at {}: No such file or directory (is the daemon running?)",
                missing.display()
            ),
            "{args:?}"
        );
    }
    let mut cmd = command(&["-o", "json", "peers"]);
    cmd.env("MBCTL_SOCKET", &missing);
    let msg = run(cmd).await.fails_json(3, "UNAVAILABLE");
    assert!(msg.starts_with("cannot connect to metalbondd at "), "{msg}");
    let _ = std::fs::remove_dir_all(missing.parent().unwrap());
}

// ---------------------------------------------------------------------------
// Operator surprises (issue 10)
// ---------------------------------------------------------------------------

#[tokio::test]
async fn withdraw_of_a_route_announced_with_another_type_names_that_type() {
    let d = Daemon::start(&[]);
    let sock = d.api_socket();
    mbctl(&sock, &["announce", "100#10.0.3.0/24@2001:db8::3#lb"])
        .await
        .ok();
    // The same destination and next hop, withdrawn as a standard route.
    let msg = mbctl(&sock, &["withdraw", "100#10.0.3.0/24@2001:db8::3"])
        .await
        .fails(1);
    assert!(msg.ends_with("(NOT_FOUND)"), "{msg}");
    assert!(msg.contains("exists with another type"), "{msg}");
    assert!(
        msg.contains("100#10.0.3.0/24@2001:db8::3#lb (type lb)"),
        "{msg}"
    );
    let msg = mbctl(
        &sock,
        &["-o", "json", "withdraw", "100#10.0.3.0/24@2001:db8::3"],
    )
    .await
    .fails_json(1, "NOT_FOUND");
    assert!(msg.contains("type lb"), "{msg}");
    // Nothing was withdrawn; a route with nothing like it keeps the plain message.
    let listed = listed_routes(&sock).await;
    assert!(
        listed.contains_key("100#10.0.3.0/24@2001:db8::3#lb"),
        "{listed:?}"
    );
    let msg = mbctl(&sock, &["withdraw", "100#10.0.9.0/24@2001:db8::3"])
        .await
        .fails(1);
    assert!(msg.contains("was not announced through the API"), "{msg}");
    assert!(!msg.contains("another"), "{msg}");
    // The right type withdraws it.
    mbctl(&sock, &["withdraw", "100#10.0.3.0/24@2001:db8::3#lb"])
        .await
        .ok();
}

#[tokio::test]
async fn peer_reset_and_vni_against_the_daemon() {
    let d = Daemon::start(&[]);
    let sock = d.api_socket();
    let mut peer = RawPeer::established(d.addr).await;
    peer.announce(route("100#10.0.1.0/24@2001:db8::1")).await;
    // The announcement and the subscription are in the table once the
    // helper's marker came back in the dump.
    let mut helper = RawPeer::established(d.addr).await;
    barrier(&mut peer, &mut helper, 100).await;

    let v = mbctl(&sock, &["-o", "json", "vni", "100"]).await.json();
    assert_eq!(keys(&v), sorted(fields::VNI));
    assert_eq!(v["vni"], 100);
    let kv = parse_key_values(mbctl(&sock, &["vni", "100"]).await.ok());
    assert_eq!(
        kv,
        cells(&[
            ("vni", "100"),
            ("routes", "2"),
            ("announcers", "2"),
            ("subscribers", "1"),
            ("digest_routes", "2"),
            ("digest", v["digest"].as_str().unwrap()),
        ])
    );
    let msg = mbctl(&sock, &["vni", "4242"]).await.fails(1);
    assert!(msg.ends_with("(NOT_FOUND)"), "{msg}");

    let me = peer.local.to_string();
    let id = mbctl(&sock, &["-o", "json", "peer", &me]).await.json()["session_id"]
        .as_u64()
        .unwrap();
    assert!(id >= 16, "session ids start at 16: {id}");
    assert_eq!(
        mbctl(&sock, &["peer", "reset", &id.to_string()]).await.ok(),
        format!("reset session {id} (its client reconnects)\n")
    );
    // The daemon closes that session: the peer sees its socket closed.
    peer.expect_closed(T).await;
    let msg = mbctl(&sock, &["peer", "reset", &id.to_string()])
        .await
        .fails(1);
    assert!(msg.ends_with("(NOT_FOUND)"), "{msg}");
    let other = helper.local.to_string();
    assert_eq!(
        mbctl(&sock, &["-o", "json", "peer", "reset", &other])
            .await
            .json(),
        json!({"peer": other, "reset": true})
    );
    helper.expect_closed(T).await;
}

/// Starts `metalbondd client ARGS` with its own API socket and state
/// directory in `dir`.
fn start_client(dir: &Path, args: &[&str]) -> Daemon {
    let sock = dir.join("api.sock");
    let state = dir.join("state");
    let mut full = vec![
        "client",
        "--api-socket",
        sock.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
    ];
    full.extend_from_slice(args);
    Daemon::spawn_running(&full).unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn client_role_status_servers_and_status_page_show_its_counters() {
    let port = free_port();
    let server_addr = format!("[::1]:{port}");
    let dir = unique_temp_dir();
    let csock = dir.join("api.sock");
    // The server is not there yet: the first attempts fail.
    let client = start_client(
        &dir,
        &[
            "--server",
            &server_addr,
            "--subscribe",
            "100",
            "--announce",
            "100#10.0.9.0/24@2001:db8::9",
            "--reconnect-min",
            "0",
            "--reconnect-max",
            "1",
            "--http",
            "127.0.0.1:0",
            "--verbose",
        ],
    );
    assert!(
        client.wait_for_log("route server unreachable", T).await,
        "{}",
        client.logs()
    );
    let down = mbctl(&csock, &["-o", "json", "servers"]).await.json();
    assert_eq!(down["servers"][0]["state"], "down", "{down}");
    assert_ne!(down["servers"][0]["last_error"], "", "{down}");
    assert_eq!(down["servers"][0]["extensions"], json!([]), "{down}");

    let sdir = unique_temp_dir();
    let ssock = sdir.join("api.sock");
    let server = Daemon::spawn(&[
        "server",
        "--listen",
        &server_addr,
        "--api-socket",
        ssock.to_str().unwrap(),
        "--state-dir",
        sdir.join("state").to_str().unwrap(),
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    mbctl(
        &ssock,
        &[
            "announce",
            "100#10.0.1.0/24@2001:db8::1",
            "100#10.0.2.0/24@2001:db8::2",
        ],
    )
    .await
    .ok();
    for prefix in ["10.0.1.0/24", "10.0.2.0/24"] {
        assert!(
            client
                .wait_for_line(
                    |l| l.contains("received") && l.contains(prefix),
                    Duration::from_secs(15)
                )
                .await
                .is_some(),
            "{}",
            client.logs()
        );
    }

    // mbctl servers: up, the old failure gone, the UPDATE counters.
    let rows = parse_table(mbctl(&csock, &["servers"]).await.ok(), columns::SERVERS);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["ADDRESS"], server_addr);
    assert_eq!(rows[0]["STATE"], "up");
    assert_eq!(
        rows[0]["LAST ERROR"], "-",
        "an old error next to up: {rows:?}"
    );
    assert_eq!(rows[0]["IN/OUT"], "2/1", "{rows:?}");
    // Our server: the session negotiated SYNC (PROTOCOL.md section 8).
    assert_eq!(rows[0]["EXTENSIONS"], "sync", "{rows:?}");
    let up = mbctl(&csock, &["-o", "json", "servers"]).await.json();
    assert_eq!(up["servers"][0]["extensions"], json!(["sync"]), "{up}");
    // The server side shows it for the agent's session too.
    let peers = parse_table(mbctl(&ssock, &["peers"]).await.ok(), columns::PEERS);
    assert_eq!(peers.len(), 1, "{peers:?}");
    assert_eq!(peers[0]["EXTENSIONS"], "sync", "{peers:?}");
    let peers = mbctl(&ssock, &["-o", "json", "peers"]).await.json();
    assert_eq!(peers["peers"][0]["extensions"], json!(["sync"]), "{peers}");
    assert_eq!(up["servers"][0]["last_error"], "", "{up}");
    assert_eq!(up["servers"][0]["updates_received"], 2, "{up}");
    assert_eq!(up["servers"][0]["updates_sent"], 1, "{up}");

    // mbctl status: the client role's counters.
    let kv = parse_key_values(mbctl(&csock, &["status"]).await.ok());
    assert_eq!(kv["client_servers"], "1 (1 established)", "{kv:?}");
    assert_eq!(kv["client_subscriptions"], "1", "{kv:?}");
    assert_eq!(kv["client_received_routes"], "2", "{kv:?}");
    assert_eq!(kv["client_installed_routes"], "0", "{kv:?}");
    assert_eq!(kv["client_updates_in/out"], "2/1", "{kv:?}");
    assert!(!kv.contains_key("overridden"), "{kv:?}");
    let st = mbctl(&csock, &["-o", "json", "status"]).await.json();
    assert_eq!(st["client"]["servers_established"], 1, "{st}");
    assert_eq!(st["client"]["received_routes"], 2, "{st}");
    // A server-only daemon has no client part.
    let st = mbctl(&ssock, &["-o", "json", "status"]).await.json();
    assert_eq!(st["client"], Value::Null, "{st}");

    // The status page: the real counters of the session with the server.
    let http = client.http_addr("/routes.json").await;
    let page = common::http::get(http, "/").await.body;
    let row = page
        .lines()
        .find(|l| {
            l.starts_with(&format!(
                "<tr><td>client</td><td><code>{server_addr}</code>"
            ))
        })
        .unwrap_or_else(|| panic!("no row of the server: {page}"));
    let cells: Vec<&str> = row
        .split("<td>")
        .skip(1)
        .map(|c| c.split('<').next().unwrap_or_default())
        .collect();
    // role, peer (in <code>), state, for, updates in, updates out,
    // extensions, last error
    assert_eq!(cells[2], "Established", "{row}");
    assert_eq!(cells[4..], ["2", "1", "sync", ""][..], "{row}");
    drop(server);
}

#[tokio::test]
async fn an_agent_with_no_sync_negotiates_nothing_and_both_sides_show_it() {
    let server = Daemon::start(&[]);
    let server_addr = server.addr.to_string();
    let dir = unique_temp_dir();
    let csock = dir.join("api.sock");
    let client = start_client(
        &dir,
        &["--server", &server_addr, "--subscribe", "100", "--no-sync"],
    );
    // Bounded polling of the observable state: the session comes up.
    let deadline = std::time::Instant::now() + T;
    let up = loop {
        let v = mbctl(&csock, &["-o", "json", "servers"]).await.json();
        if v["servers"][0]["state"] == "up" {
            break v;
        }
        assert!(std::time::Instant::now() < deadline, "never up: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(up["servers"][0]["extensions"], json!([]), "{up}");
    let rows = parse_table(mbctl(&csock, &["servers"]).await.ok(), columns::SERVERS);
    assert_eq!(rows[0]["EXTENSIONS"], "-", "{rows:?}");
    // The server saw no offer: nothing negotiated for that session.
    let peers = mbctl(&server.api_socket(), &["-o", "json", "peers"])
        .await
        .json();
    assert_eq!(peers["peers"].as_array().map(Vec::len), Some(1), "{peers}");
    assert_eq!(peers["peers"][0]["state"], "established", "{peers}");
    assert_eq!(peers["peers"][0]["extensions"], json!([]), "{peers}");
    let detail = mbctl(
        &server.api_socket(),
        &["peer", &peers["peers"][0]["session_id"].to_string()],
    )
    .await;
    let kv = parse_key_values(detail.ok());
    assert_eq!(kv["extensions"], "-", "{kv:?}");
    drop(client);
}

#[tokio::test]
async fn api_changes_that_override_flags_are_warned_and_shown() {
    let server = Daemon::start(&[]);
    let server_addr = server.addr.to_string();
    let dir = unique_temp_dir();
    let csock = dir.join("api.sock");
    let args = [
        "--server",
        &server_addr,
        "--subscribe",
        "100",
        "--subscribe",
        "200",
    ];
    let client = start_client(&dir, &args);
    assert_eq!(
        mbctl(&csock, &["unsubscribe", "200"]).await.ok(),
        "unsubscribed from VNI 200\n"
    );
    assert!(
        client.logs().lines().all(|l| !l.contains(" WARN ")),
        "{}",
        client.logs()
    );
    let status = client.terminate(T);
    assert!(status.is_some_and(|s| s.success()), "{status:?}");

    // The same command line again: the stored unsubscribe wins, loudly.
    let client = start_client(&dir, &args);
    let warn = client
        .wait_for_line(|l| l.contains(" WARN ") && l.contains("--subscribe 200"), T)
        .await
        .unwrap_or_else(|| panic!("no WARN naming --subscribe 200: {}", client.logs()));
    assert!(
        warn.contains("VNI 200 unsubscribed through the API"),
        "{warn}"
    );
    assert!(
        !client.logs().contains("--subscribe 100"),
        "{}",
        client.logs()
    );
    let kv = parse_key_values(mbctl(&csock, &["status"]).await.ok());
    assert_eq!(
        kv["overridden"],
        "--subscribe 200 (client.subscribe) -> VNI 200 unsubscribed through the API"
    );
    assert_eq!(kv["client_subscriptions"], "1");
    let st = mbctl(&csock, &["-o", "json", "status"]).await.json();
    assert_eq!(
        st["overrides"],
        json!([{
            "setting": "--subscribe 200 (client.subscribe)",
            "replaced_by": "VNI 200 unsubscribed through the API"
        }])
    );
    // Subscribing again through the API returns it to the configuration:
    // the next start has nothing to override.
    mbctl(&csock, &["subscribe", "200"]).await.ok();
    assert!(client.terminate(T).is_some_and(|s| s.success()));
    let client = start_client(&dir, &args);
    let st = mbctl(&csock, &["-o", "json", "status"]).await.json();
    assert_eq!(st["overrides"], json!([]), "{st}");
    assert!(
        client.logs().lines().all(|l| !l.contains(" WARN ")),
        "{}",
        client.logs()
    );
}

#[tokio::test]
async fn announce_and_withdraw_in_a_client_role_daemon_go_to_the_route_servers() {
    let server = Daemon::start(&[]);
    let server_addr = server.addr.to_string();
    let mut sub = RawPeer::established(server.addr).await;
    sub.subscribe(100).await;
    let dir = unique_temp_dir();
    let csock = dir.join("api.sock");
    let _client = start_client(
        &dir,
        &[
            "--server",
            &server_addr,
            "--announce",
            "100#10.9.9.0/24@2001:db8::9",
        ],
    );
    sub.expect_exactly(&[add(route("100#10.9.9.0/24@2001:db8::9"))], "--announce")
        .await;

    // announce/withdraw: to the route servers, owner `api` by default.
    let a = "100#10.0.1.0/24@2001:db8::1";
    let b = "100#10.0.2.0/24@2001:db8::2";
    assert_eq!(
        mbctl(&csock, &["announce", a]).await.ok(),
        "announced 1 route to the route servers (owner api), 1 new\n"
    );
    sub.expect_exactly(&[add(route(a))], "mbctl announce").await;
    let v = mbctl(
        &csock,
        &["-o", "json", "announce", "--allow-existing", a, b],
    )
    .await
    .json();
    assert_eq!(keys(&v), sorted(fields::CLIENT_ANNOUNCE), "{v}");
    assert_eq!(v, json!({"owner": "api", "added": 1, "unchanged": 1}));
    sub.expect_exactly(&[add(route(b))], "only the new one")
        .await;
    // Typed errors, exit 1, nothing on the wire.
    let m = mbctl(&csock, &["announce", a]).await.fails(1);
    assert!(m.contains("routes[0]:") && m.contains("already"), "{m}");
    let m = mbctl(&csock, &["-o", "json", "withdraw", "100#10.0.3.0/24@::3"])
        .await
        .fails_json(1, "NOT_FOUND");
    assert!(m.contains("routes[0]:"), "{m}");
    let m = mbctl(&csock, &["announce", "--owner", "config", a])
        .await
        .fails(1);
    assert!(m.contains("owner:") && m.contains("reserved"), "{m}");
    let m = mbctl(&csock, &["announce", "--owner", "bad owner", a])
        .await
        .fails(2);
    assert!(m.contains("--owner"), "{m}");
    sub.expect_no_update(QUIET).await;

    // Declarative: only the difference goes out; the same set again, nothing.
    let c = "100#10.0.3.0/24@2001:db8::3";
    let v = mbctl(
        &csock,
        &["-o", "json", "announce", "--owner", "vm-7", "--exact", a, c],
    )
    .await
    .json();
    assert_eq!(keys(&v), sorted(fields::SET_ANNOUNCEMENTS), "{v}");
    assert_eq!(
        v,
        json!({"owner": "vm-7", "added": 2, "removed": 0, "unchanged": 0})
    );
    sub.expect_exactly(&[add(route(c))], "vm-7's new route")
        .await;
    assert_eq!(
        mbctl(&csock, &["announce", "--owner", "vm-7", "--exact", a, c])
            .await
            .ok(),
        "owner vm-7 announces exactly 2 routes: 0 added, 0 removed\n"
    );
    sub.expect_no_update(QUIET).await;

    // mbctl announcements: every route with its owners.
    let rows = parse_table(
        mbctl(&csock, &["announcements"]).await.ok(),
        columns::ANNOUNCEMENTS,
    );
    let owners: BTreeMap<String, String> = rows
        .iter()
        .map(|r| (r["PREFIX"].clone(), r["OWNERS"].clone()))
        .collect();
    assert_eq!(
        owners,
        BTreeMap::from([
            ("10.0.1.0/24".to_string(), "api,vm-7".to_string()),
            ("10.0.2.0/24".to_string(), "api".to_string()),
            ("10.0.3.0/24".to_string(), "vm-7".to_string()),
            ("10.9.9.0/24".to_string(), "config".to_string()),
        ])
    );
    let v = mbctl(&csock, &["-o", "json", "announcements"]).await.json();
    assert_eq!(keys(&v), sorted(fields::ANNOUNCEMENT_LIST), "{v}");
    assert_eq!(keys(&v["announcements"][0]), sorted(fields::ANNOUNCEMENT));

    // withdraw: a route vm-7 still announces stays on the wire.
    let v = mbctl(&csock, &["-o", "json", "withdraw", a, b])
        .await
        .json();
    assert_eq!(keys(&v), sorted(fields::CLIENT_WITHDRAW), "{v}");
    assert_eq!(v, json!({"owner": "api", "removed": 2, "unchanged": 0}));
    sub.expect_exactly(&[rem(route(b))], "only the unshared route")
        .await;
    assert_eq!(
        mbctl(&csock, &["announce", "--owner", "vm-7", "--exact"])
            .await
            .ok(),
        "owner vm-7 announces exactly 0 routes: 0 added, 2 removed\n"
    );
    sub.expect_exactly(&[rem(route(a)), rem(route(c))], "vm-7 emptied")
        .await;

    // The server's own `mbctl announce` is unchanged: its table.
    let ssock = server.api_socket();
    let v = mbctl(&ssock, &["-o", "json", "announce", "100#10.0.4.0/24@::4"])
        .await
        .json();
    assert_eq!(v, json!({"added": 1}));
    sub.expect_exactly(&[add(route("100#10.0.4.0/24@::4"))], "server table")
        .await;
}

#[tokio::test]
async fn watch_received_follows_a_real_agent_with_synced_and_deltas() {
    let server = Daemon::start(&[]);
    let ssock = server.api_socket();
    let first = "100#10.0.1.0/24@2001:db8::1";
    mbctl(&ssock, &["announce", first, "200#10.2.0.0/24@2001:db8::2"])
        .await
        .ok();
    let dir = unique_temp_dir();
    let csock = dir.join("api.sock");
    let _client = start_client(
        &dir,
        &[
            "--server",
            &server.addr.to_string(),
            "--subscribe",
            "100",
            "--subscribe",
            "200",
        ],
    );
    // Wait for the dump, so that the snapshot is deterministic.
    for _ in 0..200 {
        let v = mbctl(&csock, &["-o", "json", "received"]).await.json();
        if v["routes"].as_array().is_some_and(|r| r.len() == 2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let mut watch = Watch::spawn(&csock, &["-o", "json", "watch", "received", "--vni", "100"]);
    let snap = watch.event().await;
    assert_eq!(
        (&snap["sequence"], &snap["kind"]),
        (&json!(1), &json!("snapshot")),
        "{snap}"
    );
    let routes = snap["routes"].as_array().unwrap();
    assert_eq!(routes.len(), 1, "only VNI 100: {snap}");
    assert_eq!(route_of(&routes[0]), first);
    assert_eq!(
        watch.event().await,
        json!({"sequence": 2, "kind": "snapshot_end", "routes": 1})
    );
    // Our server negotiated SYNC: VNI 100 is synced (and 200 filtered out).
    assert_eq!(
        watch.event().await,
        json!({"sequence": 3, "kind": "synced", "vni": 100})
    );
    let second = "100#10.0.2.0/24@2001:db8::3#nat#1#2";
    mbctl(&ssock, &["announce", "200#10.2.1.0/24@2001:db8::2", second])
        .await
        .ok();
    check_route_event(&watch.event().await, 4, "added", second);
    mbctl(&ssock, &["withdraw", first]).await.ok();
    check_route_event(&watch.event().await, 5, "removed", first);
    assert!(watch.interrupt().await.success());
}
