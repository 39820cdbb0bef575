//! ClientService.WatchReceived: streams the agent's received-routes feed
//! (ADR 0024) to one API client.
//!
//! The stream is the snapshot in chunks, `snapshot_end`, the VNIs synced
//! already, then the feed's deltas and synced events, each message numbered
//! (1, 2, 3, ...). The agent never waits for a watch: when this one falls
//! more than [`crate::client::feed::FEED_CAPACITY`] events behind (its
//! client reads slowly, or a burst outran it), the stream says `lagged` and
//! continues with a fresh snapshot taken by the agent, so the consumer
//! replaces its view and misses nothing.

use metalbond_proto::api as pb;
use pb::received_event::Event;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tonic::Status;

use super::convert::route_to_api;
use crate::client::feed::{FeedEvent, FeedFilter, WatchStart};
use crate::client::{AgentHandle, AgentRequest};

/// Routes per snapshot message: large enough that a 1M-route snapshot is a
/// few hundred messages, small enough to stay far below the 4 MiB message
/// limit of gRPC clients (about 100 bytes per route).
const SNAPSHOT_CHUNK: usize = 4096;

/// Messages buffered between this watch and the HTTP/2 stream.
pub(super) const WATCH_BUFFER: usize = 64;

/// Why a watch's current pass ended.
enum Stop {
    /// The client went away, or the agent stopped.
    Closed,
    /// The watch missed this many events.
    Lagged(u64),
}

/// Feeds one WatchReceived stream.
pub(super) struct ReceivedWatcher {
    /// Where fresh snapshots come from after a lag.
    pub(super) agent: AgentHandle,
    pub(super) filter: FeedFilter,
    pub(super) tx: mpsc::Sender<Result<pb::ReceivedEvent, Status>>,
    /// The last sequence number sent.
    pub(super) sequence: u64,
}

impl ReceivedWatcher {
    /// Streams from `start` until the client or the agent goes away.
    pub(super) async fn run(mut self, mut start: WatchStart) {
        loop {
            match self.pass(start).await {
                Stop::Closed => return,
                Stop::Lagged(missed) => {
                    tracing::info!(
                        missed,
                        "received-routes watcher lagged; sending a fresh snapshot"
                    );
                    let lagged = Event::Lagged(pb::Lagged {
                        reason: format!(
                            "this watch fell behind and missed {missed} events; a fresh snapshot follows"
                        ),
                    });
                    if self.send(lagged).await.is_err() {
                        return;
                    }
                    let filter = self.filter.clone();
                    match self
                        .agent
                        .ask(|r| AgentRequest::WatchReceived(filter, r))
                        .await
                    {
                        Some(fresh) => start = fresh,
                        None => return,
                    }
                }
            }
        }
    }

    /// One snapshot and the events after it.
    async fn pass(&mut self, start: WatchStart) -> Stop {
        let WatchStart {
            routes,
            synced,
            mut events,
        } = start;
        let total = routes.len() as u64;
        for chunk in routes.chunks(SNAPSHOT_CHUNK) {
            let routes = chunk.iter().map(route_to_api).collect();
            if self
                .send(Event::Snapshot(pb::RouteChunk { routes }))
                .await
                .is_err()
            {
                return Stop::Closed;
            }
        }
        drop(routes);
        if self
            .send(Event::SnapshotEnd(pb::SnapshotEnd { routes: total }))
            .await
            .is_err()
        {
            return Stop::Closed;
        }
        for vni in synced {
            if self
                .send(Event::Synced(pb::VniSynced { vni: vni.0 }))
                .await
                .is_err()
            {
                return Stop::Closed;
            }
        }
        loop {
            let event = match events.recv().await {
                Ok(event) => event,
                Err(RecvError::Lagged(missed)) => return Stop::Lagged(missed),
                Err(RecvError::Closed) => return Stop::Closed,
            };
            if !self.filter.wants(&event) {
                continue;
            }
            let event = match event {
                FeedEvent::Added(r) => Event::Added(route_to_api(&r)),
                FeedEvent::Removed(r) => Event::Removed(route_to_api(&r)),
                FeedEvent::Synced(v) => Event::Synced(pb::VniSynced { vni: v.0 }),
            };
            if self.send(event).await.is_err() {
                return Stop::Closed;
            }
        }
    }

    /// Sends the next message (waits while the client is slow; `Err` once
    /// it is gone).
    async fn send(&mut self, event: Event) -> Result<(), ()> {
        self.sequence += 1;
        let message = pb::ReceivedEvent {
            sequence: self.sequence,
            event: Some(event),
        };
        self.tx.send(Ok(message)).await.map_err(drop)
    }
}
