//! ClientService: runtime management of the client (hypervisor) role.
//!
//! Every change is checked against the agent's current state, written to
//! the state store ([`crate::client::operator`]) and only then applied to
//! the agent, all under one lock, so that the reply means "durable and
//! applied". Without the client role every method is FAILED_PRECONDITION.

use std::sync::Arc;

use metalbond_proto::api as pb;
use tonic::{Request, Response, Status};

use super::convert::{invalid, route_to_api, timestamp, vni_from_api};
use super::{blocking, shutting_down, ApiState};
use crate::client::operator::{record_mapping, record_server, record_subscription};
use crate::client::{AgentHandle, AgentRequest, Refused, ServerAddr};
use crate::wire::Vni;

/// The ClientService implementation.
pub struct ClientApi {
    state: Arc<ApiState>,
}

impl ClientApi {
    /// Serves the client role of `state`.
    pub fn new(state: Arc<ApiState>) -> Self {
        Self { state }
    }

    fn agent(&self) -> Result<&AgentHandle, Status> {
        self.state.client.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "the client role is not running (start with `metalbondd client` or a [client] section)",
            )
        })
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(tokio::sync::oneshot::Sender<T>) -> AgentRequest,
    ) -> Result<T, Status> {
        self.agent()?.ask(make).await.ok_or_else(shutting_down)
    }
}

fn refused(r: Refused) -> Status {
    match r {
        Refused::AlreadyExists(m) => Status::already_exists(m),
        Refused::NotFound(m) => Status::not_found(m),
        Refused::Precondition(m) => Status::failed_precondition(m),
    }
}

/// Parses a server address (`HOST:PORT`, HOST an IP address or a name).
fn server_from_api(field: &str, address: &str) -> Result<ServerAddr, Status> {
    if address.is_empty() {
        return Err(invalid(
            field,
            "required (e.g. [2001:db8::1]:4711 or metalbond.example:4711)",
        ));
    }
    address.parse().map_err(|e: String| invalid(field, e))
}

fn table_from_api(table: u32) -> Result<u32, Status> {
    if table == 0 {
        return Err(invalid("table", "0 is not a valid routing table"));
    }
    Ok(table)
}

#[tonic::async_trait]
impl pb::client_service_server::ClientService for ClientApi {
    async fn list_servers(
        &self,
        _request: Request<pb::ListServersRequest>,
    ) -> Result<Response<pb::ListServersResponse>, Status> {
        let mut servers = self.ask(AgentRequest::Servers).await?;
        servers.sort_by(|a, b| a.addr.cmp(&b.addr));
        Ok(Response::new(pb::ListServersResponse {
            servers: servers
                .into_iter()
                .map(|s| pb::ClientServer {
                    address: s.addr.to_string(),
                    state: if s.up {
                        pb::ClientServerState::Up
                    } else {
                        pb::ClientServerState::Down
                    } as i32,
                    last_error: s.last_error,
                    since: Some(timestamp(s.since)),
                    resolved: s.resolved.iter().map(ToString::to_string).collect(),
                    connected: s.connected.map(|a| a.to_string()).unwrap_or_default(),
                    updates_received: s.updates_in,
                    updates_sent: s.updates_out,
                })
                .collect(),
        }))
    }

    async fn add_server(
        &self,
        request: Request<pb::AddServerRequest>,
    ) -> Result<Response<pb::AddServerResponse>, Status> {
        let addr = server_from_api("address", &request.into_inner().address)?;
        self.agent()?;
        let _guard = self.state.client_lock.lock().await;
        let servers = self.ask(AgentRequest::Servers).await?;
        if servers.iter().any(|s| s.addr == addr) {
            return Err(Status::already_exists(format!(
                "address: server {addr} is configured already"
            )));
        }
        let store = self.state.store.clone();
        let record = addr.clone();
        blocking(move || record_server(&store, &record, true)).await?;
        self.ask(|r| AgentRequest::AddServer(addr, r))
            .await?
            .map_err(refused)?;
        Ok(Response::new(pb::AddServerResponse {}))
    }

    async fn remove_server(
        &self,
        request: Request<pb::RemoveServerRequest>,
    ) -> Result<Response<pb::RemoveServerResponse>, Status> {
        let addr = server_from_api("address", &request.into_inner().address)?;
        self.agent()?;
        let _guard = self.state.client_lock.lock().await;
        let servers = self.ask(AgentRequest::Servers).await?;
        if !servers.iter().any(|s| s.addr == addr) {
            return Err(Status::not_found(format!(
                "address: server {addr} is not configured"
            )));
        }
        let store = self.state.store.clone();
        let record = addr.clone();
        blocking(move || record_server(&store, &record, false)).await?;
        self.ask(|r| AgentRequest::RemoveServer(addr, r))
            .await?
            .map_err(refused)?;
        Ok(Response::new(pb::RemoveServerResponse {}))
    }

    async fn list_subscriptions(
        &self,
        _request: Request<pb::ListSubscriptionsRequest>,
    ) -> Result<Response<pb::ListSubscriptionsResponse>, Status> {
        let mut vnis: Vec<u32> = self
            .ask(AgentRequest::Subscriptions)
            .await?
            .into_iter()
            .map(|v| v.0)
            .collect();
        vnis.sort_unstable();
        Ok(Response::new(pb::ListSubscriptionsResponse { vnis }))
    }

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<pb::SubscribeResponse>, Status> {
        let vni = vni_from_api("vni", request.into_inner().vni)?;
        self.agent()?;
        let _guard = self.state.client_lock.lock().await;
        let subscribed = self.ask(AgentRequest::Subscriptions).await?;
        if subscribed.contains(&vni) {
            return Err(Status::already_exists(format!(
                "vni: {vni} is subscribed already"
            )));
        }
        let store = self.state.store.clone();
        blocking(move || record_subscription(&store, vni, true)).await?;
        self.ask(|r| AgentRequest::Subscribe(vni, r))
            .await?
            .map_err(refused)?;
        Ok(Response::new(pb::SubscribeResponse {}))
    }

    async fn unsubscribe(
        &self,
        request: Request<pb::UnsubscribeRequest>,
    ) -> Result<Response<pb::UnsubscribeResponse>, Status> {
        let vni = vni_from_api("vni", request.into_inner().vni)?;
        self.agent()?;
        let _guard = self.state.client_lock.lock().await;
        let subscribed = self.ask(AgentRequest::Subscriptions).await?;
        if !subscribed.contains(&vni) {
            return Err(Status::not_found(format!("vni: {vni} is not subscribed")));
        }
        let store = self.state.store.clone();
        blocking(move || record_subscription(&store, vni, false)).await?;
        self.ask(|r| AgentRequest::Unsubscribe(vni, r))
            .await?
            .map_err(refused)?;
        Ok(Response::new(pb::UnsubscribeResponse {}))
    }

    async fn list_table_mappings(
        &self,
        _request: Request<pb::ListTableMappingsRequest>,
    ) -> Result<Response<pb::ListTableMappingsResponse>, Status> {
        let tables = self.ask(AgentRequest::Mappings).await?;
        let mappings = tables
            .into_iter()
            .flat_map(|(vni, tables)| {
                tables
                    .into_iter()
                    .map(move |table| pb::TableMapping { vni: vni.0, table })
            })
            .collect();
        Ok(Response::new(pb::ListTableMappingsResponse { mappings }))
    }

    async fn set_table_mapping(
        &self,
        request: Request<pb::SetTableMappingRequest>,
    ) -> Result<Response<pb::SetTableMappingResponse>, Status> {
        let req = request.into_inner();
        let vni = vni_from_api("vni", req.vni)?;
        let table = table_from_api(req.table)?;
        self.agent()?;
        let _guard = self.state.client_lock.lock().await;
        let store = self.state.store.clone();
        blocking(move || record_mapping(&store, vni, Some(table))).await?;
        let applied = self
            .ask(|r| AgentRequest::SetMapping(vni, table, r))
            .await?;
        if let Err(why) = applied {
            // Not applied (no tunnel device): nor kept.
            let store = self.state.store.clone();
            let old = self.ask(AgentRequest::Mappings).await?.remove(&vni);
            let old = old.and_then(|t| t.into_iter().next());
            // Best effort: the store said yes a moment ago.
            let _ = blocking(move || undo_mapping(&store, vni, old)).await;
            return Err(refused(why));
        }
        Ok(Response::new(pb::SetTableMappingResponse {}))
    }

    async fn remove_table_mapping(
        &self,
        request: Request<pb::RemoveTableMappingRequest>,
    ) -> Result<Response<pb::RemoveTableMappingResponse>, Status> {
        let vni = vni_from_api("vni", request.into_inner().vni)?;
        self.agent()?;
        let _guard = self.state.client_lock.lock().await;
        let mappings = self.ask(AgentRequest::Mappings).await?;
        if !mappings.contains_key(&vni) {
            return Err(Status::not_found(format!("vni: {vni} is not mapped")));
        }
        let store = self.state.store.clone();
        blocking(move || record_mapping(&store, vni, None)).await?;
        self.ask(|r| AgentRequest::RemoveMapping(vni, r))
            .await?
            .map_err(refused)?;
        Ok(Response::new(pb::RemoveTableMappingResponse {}))
    }

    async fn list_received_routes(
        &self,
        request: Request<pb::ListReceivedRoutesRequest>,
    ) -> Result<Response<pb::ListReceivedRoutesResponse>, Status> {
        // Peers may use any 32-bit VNI: a listing filter accepts them all.
        let vni = request.into_inner().vni.map(Vni);
        let entries = self.ask(|r| AgentRequest::Received(vni, r)).await?;
        Ok(Response::new(pb::ListReceivedRoutesResponse {
            routes: entries
                .into_iter()
                .map(|e| pb::ReceivedRoute {
                    route: Some(route_to_api(&e.route)),
                    servers: e.servers.iter().map(|s| s.to_string()).collect(),
                    installed_tables: e.installed_tables,
                })
                .collect(),
        }))
    }
}

/// Puts back the stored record of `vni`'s mapping after a refused change:
/// the table it still has, or no record at all.
fn undo_mapping(
    store: &crate::store::Store,
    vni: Vni,
    table: Option<u32>,
) -> Result<(), crate::store::StoreError> {
    match table {
        Some(t) => record_mapping(store, vni, Some(t)),
        None => store
            .delete(crate::client::operator::MAPPINGS, &vni.0.to_string())
            .map(|_| ()),
    }
}
