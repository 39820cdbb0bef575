//! DaemonService: status, reload, shutdown.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use metalbond_proto::api as pb;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

use super::convert::{duration, timestamp};
use super::{blocking, shutting_down, ApiState, ControlRequest};
use crate::client::AgentRequest;

/// The DaemonService implementation.
pub struct Daemon {
    state: Arc<ApiState>,
}

impl Daemon {
    /// Serves the daemon's status and lifecycle from `state`.
    pub fn new(state: Arc<ApiState>) -> Self {
        Self { state }
    }

    /// The client role's counters (`None` when it does not run): gauges and
    /// counters from its atomics, subscriptions and mappings from the agent.
    async fn client_status(&self) -> Option<pb::ClientStatus> {
        let stats = self.state.client_stats.as_ref()?;
        let agent = self.state.client.as_ref()?;
        let subscriptions = agent
            .ask(AgentRequest::Subscriptions)
            .await
            .map_or(0, |s| s.len());
        let mapped_vnis = agent
            .ask(AgentRequest::Mappings)
            .await
            .map_or(0, |m| m.len());
        Some(pb::ClientStatus {
            servers: stats.servers_configured.load(Relaxed),
            servers_established: stats.servers_up.load(Relaxed),
            subscriptions: subscriptions as u64,
            mapped_vnis: mapped_vnis as u64,
            received_routes: stats.received_routes.load(Relaxed),
            installed_routes: stats.installed_routes().values().sum(),
            updates_received: stats.updates_in.load(Relaxed),
            updates_sent: stats.updates_out.load(Relaxed),
        })
    }
}

#[tonic::async_trait]
impl pb::daemon_service_server::DaemonService for Daemon {
    async fn get_status(
        &self,
        _request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::Status>, Status> {
        let stats = self.state.table.stats().await.ok_or_else(shutting_down)?;
        let store = self.state.store.clone();
        let injected = blocking(move || store.routes().map(|r| r.len())).await?;
        Ok(Response::new(pb::Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: Some(timestamp(self.state.started_at)),
            uptime: Some(duration(self.state.started.elapsed())),
            listen_addresses: self.state.listen.iter().map(|a| a.to_string()).collect(),
            metrics_address: addr_text(self.state.metrics_addr),
            http_address: addr_text(self.state.http_addr),
            api_socket: self.state.api_socket.display().to_string(),
            state_dir: self
                .state
                .store
                .path()
                .parent()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            sessions: self.state.registry.len() as u64,
            routes: stats.routes as u64,
            vnis: stats.vnis as u64,
            next_hops: stats.next_hops as u64,
            injected_routes: injected as u64,
            static_routes: self.state.static_routes.load(Relaxed) as u64,
            overrides: self
                .state
                .overrides
                .iter()
                .map(|o| pb::SettingOverride {
                    setting: o.setting.clone(),
                    replaced_by: o.replaced_by.clone(),
                })
                .collect(),
            client: self.client_status().await,
        }))
    }

    async fn reload(
        &self,
        _request: Request<pb::ReloadRequest>,
    ) -> Result<Response<pb::ReloadResponse>, Status> {
        let (reply, rx) = oneshot::channel();
        self.state
            .control
            .send(ControlRequest::Reload(reply))
            .await
            .map_err(|_| shutting_down())?;
        match rx.await.map_err(|_| shutting_down())? {
            Ok(response) => Ok(Response::new(response)),
            Err(e) => Err(Status::failed_precondition(e.to_string())),
        }
    }

    async fn shutdown(
        &self,
        _request: Request<pb::ShutdownRequest>,
    ) -> Result<Response<pb::ShutdownResponse>, Status> {
        self.state
            .control
            .send(ControlRequest::Shutdown)
            .await
            .map_err(|_| shutting_down())?;
        Ok(Response::new(pb::ShutdownResponse {}))
    }
}

/// An optional address as text ("" when absent).
fn addr_text(addr: Option<std::net::SocketAddr>) -> String {
    addr.map(|a| a.to_string()).unwrap_or_default()
}
