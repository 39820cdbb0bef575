//! PeerService: sessions, their counters, reset, watch.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use metalbond_proto::api as pb;
use pb::peer_event::Event;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::convert::{duration, extension_names, invalid, timestamp};
use super::{shutting_down, ApiState};
use crate::server::registry::{PeerEvent, SessionInfo};
use crate::session::{Role, State};
use crate::table::SessionId;
use crate::table_task::Query;
use crate::wire::{Extensions, Vni};

/// The PeerService implementation.
pub struct Peers {
    state: Arc<ApiState>,
}

impl Peers {
    /// Serves peers from `state`.
    pub fn new(state: Arc<ApiState>) -> Self {
        Self { state }
    }

    /// The API form of sessions, with what the table knows of them.
    async fn describe(&self, sessions: &[Arc<SessionInfo>]) -> Result<Vec<pb::Peer>, Status> {
        let ids = sessions.iter().map(|s| s.id).collect();
        let table = self
            .state
            .table
            .query(|reply| Query::Sessions { ids, reply })
            .await
            .ok_or_else(shutting_down)?;
        Ok(sessions
            .iter()
            .zip(table)
            .map(|(s, (announced, vnis))| peer_to_api(s, announced, &vnis))
            .collect())
    }

    fn find(&self, which: Option<&pb::get_peer_request::Peer>) -> Result<Arc<SessionInfo>, Status> {
        use pb::get_peer_request::Peer as Which;
        match which {
            None => Err(invalid("peer", "give a session_id or an address")),
            Some(Which::SessionId(id)) => SessionId::try_from(*id)
                .ok()
                .and_then(|id| self.state.registry.get(id))
                .ok_or_else(|| Status::not_found(format!("no session {id}"))),
            Some(Which::Address(addr)) => find_by_address(&self.state, addr),
        }
    }
}

/// Finds the session with this remote address; a bare IP matches if exactly
/// one session comes from it.
pub fn find_by_address(state: &ApiState, addr: &str) -> Result<Arc<SessionInfo>, Status> {
    let sessions = state.registry.all();
    if let Ok(sock) = addr.parse::<SocketAddr>() {
        return sessions
            .into_iter()
            .find(|s| s.remote == sock)
            .ok_or_else(|| Status::not_found(format!("no session with remote address {sock}")));
    }
    let ip: IpAddr = addr
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| {
            invalid(
                "address",
                format!("{addr:?} is not an IP address or IP:port"),
            )
        })?;
    let mut matching: Vec<_> = sessions
        .into_iter()
        .filter(|s| s.remote.ip() == ip)
        .collect();
    match matching.len() {
        0 => Err(Status::not_found(format!("no session from {ip}"))),
        1 => Ok(matching.remove(0)),
        n => Err(Status::failed_precondition(format!(
            "{n} sessions come from {ip}; give IP:port or the session id"
        ))),
    }
}

fn state_to_api(state: State) -> pb::SessionState {
    match state {
        State::Connecting => pb::SessionState::Connecting,
        State::HelloSent => pb::SessionState::HelloSent,
        State::HelloReceived => pb::SessionState::HelloReceived,
        State::Established => pb::SessionState::Established,
        State::Retry => pb::SessionState::Retry,
        State::Closed => pb::SessionState::Closed,
    }
}

/// The API form of one session.
pub fn peer_to_api(s: &SessionInfo, routes_announced: usize, vnis: &[Vni]) -> pb::Peer {
    pb::Peer {
        session_id: u64::from(s.id),
        remote_address: s.remote.to_string(),
        local_address: s.local.to_string(),
        // The role of this daemon in the session, as in the metrics' `role`
        // label and on the status page (docs/adr/0014).
        role: match s.role {
            Role::Server => pb::PeerRole::Server,
            Role::Client => pb::PeerRole::Client,
        } as i32,
        state: state_to_api(s.state()) as i32,
        keepalive_seconds: s.keepalive_secs.load(Relaxed),
        connected_at: Some(timestamp(s.connected_at)),
        uptime: Some(duration(s.started.elapsed())),
        subscribed_vnis: vnis.iter().map(|v| v.0).collect(),
        routes_announced: routes_announced as u64,
        updates_received: s.updates_in.load(Relaxed),
        updates_sent: s.updates_out.load(Relaxed),
        messages_in: s.messages_in.load(Relaxed),
        messages_out: s.messages_out.load(Relaxed),
        bytes_in: s.bytes_in.load(Relaxed),
        bytes_out: s.bytes_out.load(Relaxed),
        queue_bytes: s.queue_bytes.load(Relaxed),
        last_error: s.last_error(),
        extensions: extension_names(Extensions(s.extensions.load(Relaxed))),
        policy_class: s.policy_class(),
        routes_refused: s.routes_refused.load(Relaxed),
        subscribes_refused: s.subscribes_refused.load(Relaxed),
        last_refusal_reason: s
            .last_refusal()
            .map(|(r, _)| r.label().to_string())
            .unwrap_or_default(),
        last_refusal_at: s.last_refusal().map(|(_, at)| timestamp(at)),
        tls_identity: s.tls_identity(),
        paced: s.paced.load(Relaxed),
    }
}

#[tonic::async_trait]
impl pb::peer_service_server::PeerService for Peers {
    async fn list_peers(
        &self,
        _request: Request<pb::ListPeersRequest>,
    ) -> Result<Response<pb::ListPeersResponse>, Status> {
        let sessions = self.state.registry.all();
        Ok(Response::new(pb::ListPeersResponse {
            peers: self.describe(&sessions).await?,
        }))
    }

    async fn get_peer(
        &self,
        request: Request<pb::GetPeerRequest>,
    ) -> Result<Response<pb::Peer>, Status> {
        let session = self.find(request.get_ref().peer.as_ref())?;
        let mut peers = self.describe(&[session]).await?;
        Ok(Response::new(peers.remove(0)))
    }

    async fn reset_peer(
        &self,
        request: Request<pb::ResetPeerRequest>,
    ) -> Result<Response<pb::ResetPeerResponse>, Status> {
        use pb::reset_peer_request::Peer as Which;
        let which = request.into_inner().peer.map(|p| match p {
            Which::SessionId(id) => pb::get_peer_request::Peer::SessionId(id),
            Which::Address(a) => pb::get_peer_request::Peer::Address(a),
        });
        let session = self.find(which.as_ref())?;
        session.request_reset();
        Ok(Response::new(pb::ResetPeerResponse {}))
    }

    type WatchPeersStream = ReceiverStream<Result<pb::PeerEvent, Status>>;

    async fn watch_peers(
        &self,
        _request: Request<pb::WatchPeersRequest>,
    ) -> Result<Response<Self::WatchPeersStream>, Status> {
        let mut events = self.state.registry.subscribe();
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            let mut sequence = 0u64;
            loop {
                let event = match events.recv().await {
                    Ok(PeerEvent::Up(s)) => Event::Up(peer_to_api(&s, 0, &[])),
                    Ok(PeerEvent::Established(s)) => Event::Established(peer_to_api(&s, 0, &[])),
                    Ok(PeerEvent::Down(s, reason)) => Event::Down(pb::PeerDown {
                        peer: Some(peer_to_api(&s, 0, &[])),
                        reason,
                    }),
                    Err(broadcast::error::RecvError::Lagged(n)) => Event::Lagged(pb::Lagged {
                        reason: format!("{n} peer events were missed; watch again"),
                    }),
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let last = matches!(event, Event::Lagged(_));
                sequence += 1;
                let sent = tx
                    .send(Ok(pb::PeerEvent {
                        sequence,
                        event: Some(event),
                    }))
                    .await;
                if sent.is_err() || last {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
