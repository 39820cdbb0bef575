//! The received-routes feed's fan-out (ADR 0024): the agent publishes the
//! planner's [`FeedEvent`]s after each step, and every watch reads them
//! from one broadcast ring of events.
//!
//! A watch starts from a [`WatchStart`]: the received routes and the
//! synced VNIs taken by the agent in the same step as the watch's
//! subscription to the ring, so the snapshot and the events that follow fit
//! exactly (no event is missed or applied twice). A watch that falls more
//! than [`FEED_CAPACITY`] events behind is told so by the ring
//! ([`broadcast::error::RecvError::Lagged`]) and starts again from a fresh
//! snapshot: a consumer never sees a silent gap. Publishing never waits for
//! a watch: the agent's work does not depend on how fast consumers read.
//! The ring exists from the first watch on (an agent nobody watches pays
//! one branch per step, and no memory).

use std::collections::BTreeSet;

use tokio::sync::broadcast;

pub use super::planner::FeedEvent;
use crate::wire::{Route, Vni};

/// Events a watch may fall behind before it lags (the ring holds them
/// inline: about 1.5 MiB).
pub const FEED_CAPACITY: usize = 16_384;

/// Where the agent publishes the feed.
#[derive(Debug, Default)]
pub struct Feed {
    /// Created by the first watch.
    tx: Option<broadcast::Sender<FeedEvent>>,
}

impl Feed {
    /// Publishes one step's events, in order (nothing when nobody watches).
    pub fn publish(&self, events: Vec<FeedEvent>) {
        let Some(tx) = &self.tx else {
            return;
        };
        if tx.receiver_count() == 0 {
            return;
        }
        for event in events {
            let _ = tx.send(event);
        }
    }

    /// A receiver of the events published from now on.
    pub fn subscribe(&mut self) -> broadcast::Receiver<FeedEvent> {
        self.tx
            .get_or_insert_with(|| broadcast::channel(FEED_CAPACITY).0)
            .subscribe()
    }
}

/// Which VNIs a watch wants.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FeedFilter {
    /// Only these VNIs (empty: all).
    pub vnis: BTreeSet<Vni>,
}

impl FeedFilter {
    /// Whether the watch wants `vni`.
    pub fn accepts(&self, vni: Vni) -> bool {
        self.vnis.is_empty() || self.vnis.contains(&vni)
    }

    /// Whether the watch wants `event`.
    pub fn wants(&self, event: &FeedEvent) -> bool {
        match event {
            FeedEvent::Added(r) | FeedEvent::Removed(r) => self.accepts(r.vni),
            FeedEvent::Synced(v) => self.accepts(*v),
        }
    }
}

/// The start of a watch: what is received now, and the events after it.
#[derive(Debug)]
pub struct WatchStart {
    /// The received routes the filter accepts, sorted.
    pub routes: Vec<Route>,
    /// The synced VNIs the filter accepts.
    pub synced: Vec<Vni>,
    /// The events published after the snapshot was taken.
    pub events: broadcast::Receiver<FeedEvent>,
}
