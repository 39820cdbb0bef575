//! DaemonService: status, reload, shutdown.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use metalbond_proto::api as pb;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

use super::convert::{duration, timestamp};
use super::{blocking, shutting_down, ApiState, ControlRequest};
use crate::client::AgentRequest;
use crate::session::Role;
use crate::table_task::Query;

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
        let injected = match &self.state.shared {
            Some(shared) => shared.status().routes as usize,
            None => {
                let store = self.state.store.clone();
                blocking(move || store.route_count()).await? as usize
            }
        };
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
            shared_state: Some(shared_state_status(self.state.shared.as_deref())),
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

    async fn get_policy(
        &self,
        _request: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::Policy>, Status> {
        let policy = self.state.session_settings.borrow().policy.clone();
        let Some(policy) = policy else {
            return Ok(Response::new(pb::Policy::default()));
        };
        let sessions: Vec<_> = self
            .state
            .registry
            .all()
            .into_iter()
            .filter(|s| s.role == Role::Server)
            .collect();
        let ids = sessions.iter().map(|s| s.id).collect();
        let held = self
            .state
            .table
            .query(|reply| Query::Sessions { ids, reply })
            .await
            .ok_or_else(shutting_down)?;
        // Each session with its class's name (a session whose re-check is
        // still running shows the class it had).
        let live: Vec<(String, pb::PolicySession)> = sessions
            .iter()
            .zip(held)
            .map(|(s, (routes, _))| {
                (
                    s.policy_class(),
                    pb::PolicySession {
                        session_id: u64::from(s.id),
                        remote_address: s.remote.to_string(),
                        routes_announced: routes as u64,
                        routes_refused: s.routes_refused.load(Relaxed),
                        subscribes_refused: s.subscribes_refused.load(Relaxed),
                        last_refusal_reason: s
                            .last_refusal()
                            .map(|(r, _)| r.label().to_string())
                            .unwrap_or_default(),
                    },
                )
            })
            .collect();
        let classes: Vec<_> = policy.classes().collect();
        let last = classes.len() - 1;
        let classes = classes
            .into_iter()
            .enumerate()
            .map(|(i, c)| pb::PolicyClass {
                name: c.name.clone(),
                match_prefixes: c.match_prefixes().iter().map(|p| p.to_string()).collect(),
                is_default: i == last,
                rules: c.rules(),
                max_routes: c.limit.map_or(0, |l| l.max as u64),
                max_routes_action: c
                    .limit
                    .map(|l| match l.action {
                        metalbondd_config::MaxRoutesAction::Refuse => "refuse",
                        metalbondd_config::MaxRoutesAction::Close => "close",
                    })
                    .unwrap_or_default()
                    .to_string(),
                max_routes_warn: c.limit.map_or(0, |l| l.warn_at as u64),
                sessions: live
                    .iter()
                    .filter(|(class, _)| *class == c.name)
                    .map(|(_, s)| s.clone())
                    .collect(),
            })
            .collect();
        Ok(Response::new(pb::Policy {
            enabled: true,
            classes,
        }))
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

/// `Status.shared_state`: the backend and, with etcd, its health.
fn shared_state_status(shared: Option<&crate::etcd::shared::SharedState>) -> pb::SharedStateStatus {
    let Some(shared) = shared else {
        return pb::SharedStateStatus {
            backend: "redb".into(),
            ..Default::default()
        };
    };
    let status = shared.status();
    pb::SharedStateStatus {
        backend: "etcd".into(),
        endpoints: shared.settings().endpoints.clone(),
        prefix: shared.settings().prefix.clone(),
        degraded: status.degraded,
        reason: status.reason,
        revision: status.revision,
        routes: status.routes,
        resyncs: shared.resyncs.load(Relaxed),
        skipped_keys: shared.skipped_keys.load(Relaxed),
    }
}
