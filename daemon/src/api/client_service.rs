//! ClientService: runtime management of the client (hypervisor) role.
//!
//! Every change is one request to the agent, which checks it, writes it to
//! the state store ([`crate::client::operator`]) and only then applies it,
//! so that the reply means "durable and applied"; this service parses the
//! input and maps the agent's typed refusal to a status. Without the client
//! role every method is FAILED_PRECONDITION.

use std::sync::Arc;

use metalbond_proto::api as pb;
use tonic::{Request, Response, Status};

use super::convert::{
    extension_names, invalid, route_from_api, route_to_api, routes_from_api, timestamp,
    vni_from_api,
};
use super::received_watch::{ReceivedWatcher, WATCH_BUFFER};
use super::{shutting_down, ApiState};
use crate::client::feed::FeedFilter;
use crate::client::planner::{check_owner, check_table};
use crate::client::{AgentHandle, AgentRequest, Applied, ClientChange, Refused, ServerAddr};
use crate::wire::Route;
use crate::wire::Vni;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

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

    /// Asks the agent to make `change` (it checks, stores and applies it);
    /// once made, answers the RPC's empty response.
    async fn change<Answer: Default>(
        &self,
        change: ClientChange,
    ) -> Result<Response<Answer>, Status> {
        self.apply(change).await?;
        Ok(Response::new(Answer::default()))
    }

    /// Asks the agent to make `change`; answers what it did.
    async fn apply(&self, change: ClientChange) -> Result<Applied, Status> {
        self.ask(|r| AgentRequest::Change(change, r))
            .await?
            .map_err(refused)
    }
}

/// Validates routes of an announcement call (`routes[i]` in errors); an
/// empty list is allowed where `allow_empty` (a declarative empty set).
fn announced_routes(routes: &[pb::Route], allow_empty: bool) -> Result<Vec<Route>, Status> {
    if allow_empty && routes.is_empty() {
        return Ok(Vec::new());
    }
    if allow_empty {
        return routes
            .iter()
            .enumerate()
            .map(|(i, r)| route_from_api(&format!("routes[{i}]"), r))
            .collect();
    }
    routes_from_api(routes)
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn refused(r: Refused) -> Status {
    match r {
        Refused::Invalid(m) => Status::invalid_argument(m),
        Refused::AlreadyExists(m) => Status::already_exists(m),
        Refused::NotFound(m) => Status::not_found(m),
        Refused::Precondition(m) => Status::failed_precondition(m),
        Refused::Unavailable(m) => Status::unavailable(m),
        Refused::Internal(m) => Status::internal(m),
    }
}

/// Checks an owner name (empty: the implicit owner of incremental calls).
fn owner_from_api(owner: &str) -> Result<String, Status> {
    check_owner(owner)
        .map(str::to_string)
        .map_err(|why| invalid("owner", why))
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
                    extensions: extension_names(s.extensions),
                })
                .collect(),
        }))
    }

    async fn add_server(
        &self,
        request: Request<pb::AddServerRequest>,
    ) -> Result<Response<pb::AddServerResponse>, Status> {
        let addr = server_from_api("address", &request.into_inner().address)?;
        self.change(ClientChange::AddServer(addr)).await
    }

    async fn remove_server(
        &self,
        request: Request<pb::RemoveServerRequest>,
    ) -> Result<Response<pb::RemoveServerResponse>, Status> {
        let addr = server_from_api("address", &request.into_inner().address)?;
        self.change(ClientChange::RemoveServer(addr)).await
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
        self.change(ClientChange::Subscribe(vni)).await
    }

    async fn unsubscribe(
        &self,
        request: Request<pb::UnsubscribeRequest>,
    ) -> Result<Response<pb::UnsubscribeResponse>, Status> {
        let vni = vni_from_api("vni", request.into_inner().vni)?;
        self.change(ClientChange::Unsubscribe(vni)).await
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
        let table = check_table(req.table).map_err(|why| invalid("table", why))?;
        self.change(ClientChange::SetMapping(vni, table)).await
    }

    async fn remove_table_mapping(
        &self,
        request: Request<pb::RemoveTableMappingRequest>,
    ) -> Result<Response<pb::RemoveTableMappingResponse>, Status> {
        let vni = vni_from_api("vni", request.into_inner().vni)?;
        self.change(ClientChange::RemoveMapping(vni)).await
    }

    async fn announce(
        &self,
        request: Request<pb::ClientAnnounceRequest>,
    ) -> Result<Response<pb::ClientAnnounceResponse>, Status> {
        let req = request.into_inner();
        let routes = announced_routes(&req.routes, false)?;
        let applied = self
            .apply(ClientChange::Announce {
                owner: owner_from_api(&req.owner)?,
                routes,
                allow_existing: req.allow_existing,
            })
            .await?;
        Ok(Response::new(pb::ClientAnnounceResponse {
            added: count(applied.added),
            unchanged: count(applied.unchanged),
        }))
    }

    async fn withdraw(
        &self,
        request: Request<pb::ClientWithdrawRequest>,
    ) -> Result<Response<pb::ClientWithdrawResponse>, Status> {
        let req = request.into_inner();
        let routes = announced_routes(&req.routes, false)?;
        let applied = self
            .apply(ClientChange::Withdraw {
                owner: owner_from_api(&req.owner)?,
                routes,
                allow_missing: req.allow_missing,
            })
            .await?;
        Ok(Response::new(pb::ClientWithdrawResponse {
            removed: count(applied.removed),
            unchanged: count(applied.unchanged),
        }))
    }

    async fn set_announcements(
        &self,
        request: Request<pb::SetAnnouncementsRequest>,
    ) -> Result<Response<pb::SetAnnouncementsResponse>, Status> {
        let req = request.into_inner();
        if req.owner.is_empty() {
            return Err(invalid(
                "owner",
                "required: the name of the program whose complete set this is",
            ));
        }
        let owner = owner_from_api(&req.owner)?;
        let routes = announced_routes(&req.routes, true)?;
        let applied = self
            .apply(ClientChange::SetAnnouncements { owner, routes })
            .await?;
        Ok(Response::new(pb::SetAnnouncementsResponse {
            added: count(applied.added),
            removed: count(applied.removed),
            unchanged: count(applied.unchanged),
        }))
    }

    async fn list_announcements(
        &self,
        _request: Request<pb::ListAnnouncementsRequest>,
    ) -> Result<Response<pb::ListAnnouncementsResponse>, Status> {
        let list = self.ask(AgentRequest::Announcements).await?;
        Ok(Response::new(pb::ListAnnouncementsResponse {
            announcements: list
                .into_iter()
                .map(|(route, owners)| pb::Announcement {
                    route: Some(route_to_api(&route)),
                    owners,
                })
                .collect(),
        }))
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

    type WatchReceivedStream = ReceiverStream<Result<pb::ReceivedEvent, Status>>;

    async fn watch_received(
        &self,
        request: Request<pb::WatchReceivedRequest>,
    ) -> Result<Response<Self::WatchReceivedStream>, Status> {
        // Peers may use any 32-bit VNI: a filter accepts them all.
        let filter = FeedFilter {
            vnis: request.into_inner().vnis.into_iter().map(Vni).collect(),
        };
        let agent = self.agent()?.clone();
        let f = filter.clone();
        let start = self.ask(|r| AgentRequest::WatchReceived(f, r)).await?;
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let watcher = ReceivedWatcher {
            agent,
            filter,
            tx,
            sequence: 0,
        };
        tokio::spawn(watcher.run(start));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
