//! The received-routes feed of the client role, end to end (issue 12, ADR
//! 0024): a real `metalbondd client` connected to two real `metalbondd
//! server`s over TCP, watched over its real Unix socket. The watch's view,
//! rebuilt from the snapshot and the deltas alone (every delta checked
//! against the view: an ADD of a route already there or a REMOVE of one
//! that is not fails), equals the received routes the servers hold at
//! every checkpoint of a run with more than 20,000 updates, a server loss
//! and its return; a watch that stops reading gets `lagged` and recovers
//! from the fresh snapshot that follows it.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::api::{api_route, connect, connect_small_windows, route_text};
use common::*;
use metalbond_proto::api as pb;
use pb::received_event::Event;
use tokio::sync::Notify;

/// How long a checkpoint may take to converge.
const CONVERGE: Duration = Duration::from_secs(60);

/// What a watch has seen, rebuilt from its events alone.
#[derive(Debug, Default)]
struct View {
    routes: BTreeSet<String>,
    synced: BTreeSet<u32>,
    /// The routes of a snapshot being received.
    pending: Option<BTreeSet<String>>,
    sequence: u64,
    snapshots: u32,
    lagged: u32,
    /// The first inconsistency seen (the test fails with it).
    error: Option<String>,
}

impl View {
    fn apply(&mut self, ev: pb::ReceivedEvent) {
        if self.error.is_some() {
            return;
        }
        if ev.sequence != self.sequence + 1 {
            self.error = Some(format!(
                "sequence {} after {}: a gap",
                ev.sequence, self.sequence
            ));
            return;
        }
        self.sequence = ev.sequence;
        let in_snapshot = self.pending.is_some();
        match ev.event.expect("an event") {
            Event::Snapshot(chunk) => {
                let pending = self.pending.get_or_insert_with(BTreeSet::new);
                pending.extend(chunk.routes.iter().map(route_text));
            }
            Event::SnapshotEnd(end) => {
                let routes = self.pending.take().unwrap_or_default();
                if routes.len() as u64 != end.routes {
                    self.error = Some(format!(
                        "snapshot_end says {} routes, {} came",
                        end.routes,
                        routes.len()
                    ));
                }
                // A snapshot replaces everything, the synced VNIs included
                // (they follow it again).
                self.routes = routes;
                self.synced.clear();
                self.snapshots += 1;
            }
            Event::Added(r) => {
                let r = route_text(&r);
                if in_snapshot || !self.routes.insert(r.clone()) {
                    self.error = Some(format!("added {r}, which the view has (or mid-snapshot)"));
                }
            }
            Event::Removed(r) => {
                let r = route_text(&r);
                if in_snapshot || !self.routes.remove(&r) {
                    self.error = Some(format!(
                        "removed {r}, which the view lacks (or mid-snapshot)"
                    ));
                }
            }
            Event::Synced(s) => {
                self.synced.insert(s.vni);
            }
            Event::Lagged(_) => self.lagged += 1,
        }
    }
}

/// A watch read by a background task into a shared [`View`].
struct Watch {
    view: Arc<Mutex<View>>,
    changed: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Watch {
    /// Reads `stream` into a new view until it ends.
    fn spawn(mut stream: tonic::Streaming<pb::ReceivedEvent>) -> Watch {
        let view = Arc::new(Mutex::new(View::default()));
        let changed = Arc::new(Notify::new());
        let (v, c) = (view.clone(), changed.clone());
        let task = tokio::spawn(async move {
            while let Ok(Some(ev)) = stream.message().await {
                v.lock().unwrap().apply(ev);
                c.notify_waiters();
            }
        });
        Watch {
            view,
            changed,
            task,
        }
    }

    /// Waits (bounded) until the view holds exactly `want` and has synced
    /// `synced`; panics with the difference otherwise.
    async fn converges(&self, want: &BTreeSet<String>, synced: &[u32], what: &str) {
        let synced: BTreeSet<u32> = synced.iter().copied().collect();
        let deadline = tokio::time::Instant::now() + CONVERGE;
        loop {
            let notified = self.changed.notified();
            {
                let v = self.view.lock().unwrap();
                assert!(v.error.is_none(), "{what}: {}", v.error.as_ref().unwrap());
                if v.pending.is_none() && v.routes == *want && v.synced.is_superset(&synced) {
                    return;
                }
                if tokio::time::Instant::now() > deadline {
                    let missing: Vec<_> = want.difference(&v.routes).take(5).collect();
                    let extra: Vec<_> = v.routes.difference(want).take(5).collect();
                    panic!(
                        "{what}: the watch has {} routes, want {} (missing {missing:?}, extra {extra:?}); synced {:?}, want {synced:?}",
                        v.routes.len(),
                        want.len(),
                        v.synced
                    );
                }
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), notified).await;
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Route `i` of a family: `VNI#A.B.C.0/24@2001:db8::HOP`.
fn routes(vni: u32, first_octet: u32, hop: u32, range: std::ops::Range<u32>) -> Vec<String> {
    range
        .map(|i| {
            format!(
                "{vni}#{first_octet}.{}.{}.0/24@2001:db8::{hop:x}",
                i / 256,
                i % 256
            )
        })
        .collect()
}

/// Starts `metalbondd server` on `addr` with its state in `dir` (the same
/// `dir` again is a restart that restores what the API injected).
fn start_server(dir: &Path, addr: SocketAddr) -> Daemon {
    Daemon::spawn(&[
        "server",
        "--listen",
        &addr.to_string(),
        "--api-socket",
        dir.join("api.sock").to_str().unwrap(),
        "--state-dir",
        dir.join("state").to_str().unwrap(),
    ])
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Injects `texts` into a server through its API (one call).
async fn inject(server_dir: &Path, texts: &[String]) {
    let mut api = connect(&server_dir.join("api.sock")).await;
    api.routes
        .announce_routes(pb::AnnounceRoutesRequest {
            routes: texts.iter().map(|t| api_route(t)).collect(),
            allow_existing: false,
        })
        .await
        .expect("AnnounceRoutes");
}

/// Withdraws `texts` from a server through its API (one call).
async fn withdraw(server_dir: &Path, texts: &[String]) {
    let mut api = connect(&server_dir.join("api.sock")).await;
    api.routes
        .withdraw_routes(pb::WithdrawRoutesRequest {
            routes: texts.iter().map(|t| api_route(t)).collect(),
            ..Default::default()
        })
        .await
        .expect("WithdrawRoutes");
}

/// The agent's received routes (ListReceivedRoutes), as text.
async fn listed(sock: &Path) -> BTreeSet<String> {
    let mut api = connect(sock).await;
    api.client
        .list_received_routes(pb::ListReceivedRoutesRequest { vni: None })
        .await
        .expect("ListReceivedRoutes")
        .into_inner()
        .routes
        .iter()
        .map(|r| route_text(r.route.as_ref().unwrap()))
        .collect()
}

async fn watch(
    sock: &Path,
    vnis: &[u32],
    small_windows: bool,
) -> tonic::Streaming<pb::ReceivedEvent> {
    let mut api = if small_windows {
        connect_small_windows(sock).await
    } else {
        connect(sock).await
    };
    api.client
        .watch_received(pb::WatchReceivedRequest {
            vnis: vnis.to_vec(),
        })
        .await
        .expect("WatchReceived")
        .into_inner()
}

/// Both the watch and the agent's listing hold exactly `want`.
async fn checkpoint(w: &Watch, sock: &Path, want: &BTreeSet<String>, synced: &[u32], what: &str) {
    w.converges(want, synced, what).await;
    assert_eq!(&listed(sock).await, want, "{what}: ListReceivedRoutes");
}

#[tokio::test]
async fn snapshot_synced_and_deltas_follow_the_received_routes_through_a_server_loss() {
    let dir = unique_temp_dir();
    let (dir_a, dir_b) = (dir.join("a"), dir.join("b"));
    let (addr_a, addr_b) = (free_addr(), free_addr());
    let server_a = start_server(&dir_a, addr_a);
    let server_b = start_server(&dir_b, addr_b);
    let (addr_a_text, addr_b_text) = (addr_a.to_string(), addr_b.to_string());
    let (_client, client_sock) = Daemon::start_client(
        &dir,
        &[
            "--server",
            &addr_a_text,
            "--server",
            &addr_b_text,
            "--subscribe",
            "100",
            "--subscribe",
            "200",
        ],
    );

    // A watch from the start, and one of VNI 200 only.
    let all = Watch::spawn(watch(&client_sock, &[], false).await);
    let only_200 = Watch::spawn(watch(&client_sock, &[200], false).await);

    // 5,000 routes of VNI 100 from both servers (10,000 updates), 2,000 of
    // VNI 200 from A only.
    let both = routes(100, 10, 1, 0..5000);
    let a_only = routes(200, 20, 2, 0..2000);
    inject(&dir_a, &both).await;
    inject(&dir_b, &both).await;
    inject(&dir_a, &a_only).await;
    let mut want: BTreeSet<String> = both.iter().chain(&a_only).cloned().collect();
    // Our servers negotiate SYNC: both VNIs sync without the hold time.
    checkpoint(&all, &client_sock, &want, &[100, 200], "first dumps").await;
    let want_200: BTreeSet<String> = a_only.iter().cloned().collect();
    only_200
        .converges(&want_200, &[200], "filtered watch")
        .await;
    assert!(!only_200.view.lock().unwrap().synced.contains(&100));

    // Withdrawn from A only: B still sends them, nothing changes. Then
    // from B too: gone (5,000 updates).
    let half: Vec<String> = both[..2500].to_vec();
    withdraw(&dir_a, &half).await;
    withdraw(&dir_b, &half).await;
    for r in &half {
        want.remove(r);
    }
    checkpoint(&all, &client_sock, &want, &[100, 200], "withdrawals").await;

    // Server A is lost: its own routes (VNI 200) go at once, B's stay.
    let _ = server_a.kill_hard();
    for r in &a_only {
        want.remove(r);
    }
    checkpoint(&all, &client_sock, &want, &[], "server A lost").await;
    only_200
        .converges(&BTreeSet::new(), &[200], "filtered watch, A lost")
        .await;

    // A returns with what was injected (its state store): its routes are
    // back (2,000 + 2,500 updates of its dump).
    let _server_a = start_server(&dir_a, addr_a);
    want.extend(a_only.iter().cloned());
    checkpoint(&all, &client_sock, &want, &[], "server A back").await;
    only_200
        .converges(&want_200, &[200], "filtered watch, A back")
        .await;

    let v = all.view.lock().unwrap();
    assert_eq!(v.snapshots, 1, "a watch that keeps up never restarts");
    assert_eq!(v.lagged, 0);
    drop(v);
    drop(server_b);
}

#[tokio::test]
async fn a_watch_that_stops_reading_gets_lagged_then_a_fresh_snapshot() {
    let dir = unique_temp_dir();
    let dir_a = dir.join("a");
    let addr_a = free_addr();
    let _server = start_server(&dir_a, addr_a);
    let addr_a_text = addr_a.to_string();
    let (_client, client_sock) =
        Daemon::start_client(&dir, &["--server", &addr_a_text, "--subscribe", "100"]);
    let first = routes(100, 10, 1, 0..1000);
    inject(&dir_a, &first).await;
    let fast = Watch::spawn(watch(&client_sock, &[], false).await);
    let mut want: BTreeSet<String> = first.iter().cloned().collect();
    fast.converges(&want, &[100], "before the burst").await;

    // The slow watch reads its first message, then nothing while 20,000
    // updates (20,000 feed events, more than the feed's ring holds) arrive.
    let mut slow = watch(&client_sock, &[], true).await;
    let first_message = slow.message().await.expect("read").expect("a message");
    assert_eq!(first_message.sequence, 1);
    let burst = routes(100, 11, 2, 0..20_000);
    inject(&dir_a, &burst).await;
    want.extend(burst.iter().cloned());
    fast.converges(&want, &[100], "after the burst (fast watch)")
        .await;

    // Now it reads: `lagged`, then a fresh snapshot that equals the table,
    // then deltas again.
    let slow = Watch::spawn(slow);
    slow.view.lock().unwrap().apply(first_message);
    slow.converges(&want, &[100], "slow watch after lagging")
        .await;
    {
        let v = slow.view.lock().unwrap();
        assert!(v.lagged >= 1, "the slow watch never lagged");
        assert!(v.snapshots >= 2, "no fresh snapshot after the lag");
    }
    let gone = burst[..100].to_vec();
    withdraw(&dir_a, &gone).await;
    for r in &gone {
        want.remove(r);
    }
    slow.converges(&want, &[100], "deltas after the fresh snapshot")
        .await;
    assert_eq!(listed(&client_sock).await, want);
}
