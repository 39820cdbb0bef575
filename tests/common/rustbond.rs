//! A `rustbond` 0.1.3 client (an implementation we did not write) as a
//! test peer: its route events go into a channel that tests await with
//! bounded timeouts. Used by the interop suites (`--features interop`).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use rustbond::{Destination, MetalBondClient, NextHop, Route, RouteHandler, Vni};
use tokio::sync::mpsc;

use super::{QUIET, T};

/// A route event as the rustbond client's handler saw it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Ev {
    Add(u32, Destination, NextHop),
    Remove(u32, Destination, NextHop),
}

/// A route as (VNI, destination, next hop).
#[derive(Clone, Debug)]
pub struct R(pub u32, pub Destination, pub NextHop);

/// Forwards the client's route callbacks into a channel.
pub struct ChannelHandler(pub mpsc::UnboundedSender<Ev>);

impl RouteHandler for ChannelHandler {
    fn add_route(&self, vni: Vni, route: Route) {
        let _ = self
            .0
            .send(Ev::Add(vni.0, route.destination, route.next_hop));
    }

    fn remove_route(&self, vni: Vni, route: Route) {
        let _ = self
            .0
            .send(Ev::Remove(vni.0, route.destination, route.next_hop));
    }
}

/// A rustbond client connected to one server, with its route events.
pub struct Peer {
    client: Option<MetalBondClient<ChannelHandler>>,
    events: mpsc::UnboundedReceiver<Ev>,
    name: &'static str,
}

impl Peer {
    /// Connects to `server` and waits (bounded) until the session is
    /// established; the error names the peer and the server.
    pub async fn connect(server: SocketAddr, name: &'static str) -> Result<Peer, String> {
        let (tx, events) = mpsc::unbounded_channel();
        let addr = server.to_string();
        let client = MetalBondClient::connect(&[addr.as_str()], ChannelHandler(tx));
        client
            .wait_established_timeout(Duration::from_secs(10))
            .await
            .map_err(|e| format!("{name}: rustbond client not established with {addr}: {e}"))?;
        Ok(Peer {
            client: Some(client),
            events,
            name,
        })
    }

    fn client(&self) -> &MetalBondClient<ChannelHandler> {
        self.client.as_ref().expect("client shut down")
    }

    pub async fn subscribe(&self, vni: u32) {
        self.client()
            .subscribe(Vni(vni))
            .await
            .unwrap_or_else(|e| panic!("{}: subscribe {vni}: {e}", self.name));
    }

    pub async fn announce(&self, r: &R) {
        self.client()
            .announce(Vni(r.0), r.1.clone(), r.2.clone())
            .await
            .unwrap_or_else(|e| panic!("{}: announce {r:?}: {e}", self.name));
    }

    pub async fn withdraw(&self, r: &R) {
        self.client()
            .withdraw(Vni(r.0), r.1.clone(), r.2.clone())
            .await
            .unwrap_or_else(|e| panic!("{}: withdraw {r:?}: {e}", self.name));
    }

    /// Closes the connection (the rustbond client stops its peer task,
    /// which drops the socket).
    pub async fn disconnect(&mut self) -> Result<(), String> {
        match self.client.take() {
            Some(c) => c
                .shutdown()
                .await
                .map_err(|e| format!("{}: shutdown: {e}", self.name)),
            None => Ok(()),
        }
    }

    /// Waits (bounded) for `want`; other events are skipped.
    pub async fn expect(&mut self, want: &Ev) {
        let deadline = tokio::time::Instant::now() + T;
        let mut seen = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(ev)) if ev == *want => return,
                Ok(Some(ev)) => seen.push(ev),
                Ok(None) => panic!("{}: handler channel closed", self.name),
                Err(_) => panic!("{}: no {want:?} within {T:?}; saw {seen:?}", self.name),
            }
        }
    }

    /// Exactly these events, in any order, then nothing for [`QUIET`].
    pub async fn expect_exactly(&mut self, want: &[Ev], what: &str) {
        let deadline = tokio::time::Instant::now() + T;
        let mut got = Vec::new();
        while got.len() < want.len() {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(ev)) => got.push(ev),
                Ok(None) => panic!("{}: handler channel closed", self.name),
                Err(_) => panic!(
                    "{}: {what}: got {got:?} within {T:?}, expected {want:?}",
                    self.name
                ),
            }
        }
        let g: HashSet<_> = got.iter().cloned().collect();
        let w: HashSet<_> = want.iter().cloned().collect();
        assert_eq!(
            g.len(),
            got.len(),
            "{}: {what}: duplicates in {got:?}",
            self.name
        );
        assert_eq!(g, w, "{}: {what}: got (left), expected (right)", self.name);
        self.expect_nothing(what).await;
    }

    /// No event for [`QUIET`].
    pub async fn expect_nothing(&mut self, what: &str) {
        if let Ok(ev) = tokio::time::timeout(QUIET, self.events.recv()).await {
            panic!("{}: {what}: unexpected event {ev:?}", self.name);
        }
    }
}
