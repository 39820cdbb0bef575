//! The planner's side of the received-routes feed (ADR 0024): which route
//! changes happened, and when each subscribed VNI counts as synced.
//!
//! A VNI is synced once every established server has sent SYNC for it
//! (PROTOCOL.md section 8), or once the hold time has passed since the
//! planner started waiting for it (its subscription, or the start): a
//! server without the extension (a reference server) cannot say when its
//! dump is complete, so the hold time is the bound, never a guess. A synced
//! VNI stays synced until it is unsubscribed; routes that arrive later (a
//! server that comes up late, a server that returns) are deltas.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::client::received::RouteDelta;
use crate::wire::{Route, Vni};

/// One event of the received-routes feed, in the order the agent publishes
/// them (it numbers them per watch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedEvent {
    /// A route is received now (its first server sent it).
    Added(Route),
    /// A route is no longer received (its last server withdrew it, went
    /// away, or its VNI was unsubscribed).
    Removed(Route),
    /// Every established server has delivered the VNI's routes (or its hold
    /// time passed): the routes received so far are complete.
    Synced(Vni),
}

impl From<RouteDelta> for FeedEvent {
    fn from(d: RouteDelta) -> Self {
        match d {
            RouteDelta::Added(r) => FeedEvent::Added(r),
            RouteDelta::Removed(r) => FeedEvent::Removed(r),
        }
    }
}

/// Which subscribed VNIs are synced, and since when the others wait.
#[derive(Debug, Default)]
pub(super) struct FeedSync {
    synced: BTreeSet<Vni>,
    /// Subscribed VNIs not synced yet, and since when each waits (`None`:
    /// since the next moment the planner is given, as it reads no clock).
    waiting: BTreeMap<Vni, Option<Instant>>,
    /// Synced events not yet taken.
    events: Vec<FeedEvent>,
}

impl FeedSync {
    /// Waits for the VNIs of a new planner.
    pub(super) fn new(subscriptions: &[Vni]) -> Self {
        FeedSync {
            waiting: subscriptions.iter().map(|v| (*v, None)).collect(),
            ..FeedSync::default()
        }
    }

    /// `vni` was subscribed: it waits from `now` (or the next moment known).
    pub(super) fn subscribed(&mut self, vni: Vni) {
        self.synced.remove(&vni);
        self.waiting.insert(vni, None);
    }

    /// `vni` was unsubscribed: neither synced nor waiting.
    pub(super) fn unsubscribed(&mut self, vni: Vni) {
        self.synced.remove(&vni);
        self.waiting.remove(&vni);
    }

    /// The synced VNIs.
    pub(super) fn synced(&self) -> &BTreeSet<Vni> {
        &self.synced
    }

    /// When the first waiting VNI's hold time ends.
    pub(super) fn deadline(&self, hold_time: Duration) -> Option<Instant> {
        self.waiting
            .values()
            .flatten()
            .min()
            .map(|t| *t + hold_time)
    }

    /// Declares synced every waiting VNI that `is_synced` accepts or whose
    /// hold time has passed at `now`.
    pub(super) fn check(
        &mut self,
        now: Instant,
        hold_time: Duration,
        is_synced: impl Fn(Vni) -> bool,
    ) {
        if self.waiting.is_empty() {
            return;
        }
        let mut done = Vec::new();
        for (vni, since) in &mut self.waiting {
            let since = *since.get_or_insert(now);
            if now >= since + hold_time || is_synced(*vni) {
                done.push(*vni);
            }
        }
        for vni in done {
            self.waiting.remove(&vni);
            self.synced.insert(vni);
            self.events.push(FeedEvent::Synced(vni));
        }
    }

    /// The synced events since the last call.
    pub(super) fn take_events(&mut self) -> Vec<FeedEvent> {
        std::mem::take(&mut self.events)
    }
}
