//! RouteService: listing, injected routes, watches.

use std::sync::Arc;

use metalbond_proto::api as pb;
use pb::route_event::Event;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::convert::{
    address_from_api, announcer_to_api, invalid, kind_from_api, prefix_from_api, route_to_api,
    routes_from_api, vni_from_api,
};
use super::{blocking, shutting_down, ApiState};
use crate::etcd::client::{EtcdError, TxnOp};
use crate::etcd::shared::{SharedState, WriteError};
use crate::store::{Store, StoreError};
use crate::table::log::Mailbox;
use crate::table::{PageCursor, SessionId, LOCAL_API};
use crate::table_task::{AnnouncerQuery, Op, Query, RouteQuery};
use crate::wire::{Action, Route, Vni};

/// Default and largest page size.
const DEFAULT_PAGE: usize = 1000;
const MAX_PAGE: usize = 10_000;
/// Events buffered per watch stream.
const WATCH_BUFFER: usize = 1024;

/// The RouteService implementation.
pub struct Routes {
    state: Arc<ApiState>,
}

impl Routes {
    /// Serves routes from `state`.
    pub fn new(state: Arc<ApiState>) -> Self {
        Self { state }
    }

    fn query_from_filter(&self, filter: Option<&pb::RouteFilter>) -> Result<RouteQuery, Status> {
        let Some(f) = filter else {
            return Ok(RouteQuery::default());
        };
        use pb::route_filter::Origin;
        let announcer = match &f.origin {
            None => None,
            Some(Origin::Local(true)) => Some(AnnouncerQuery::Local),
            Some(Origin::Local(false)) => None,
            Some(Origin::SessionId(id)) => Some(AnnouncerQuery::Session(
                SessionId::try_from(*id)
                    .map_err(|_| invalid("filter.session_id", "no such session"))?,
            )),
            Some(Origin::PeerAddress(addr)) => {
                let info =
                    super::peer_service::find_by_address(&self.state, addr).map_err(|e| {
                        Status::new(e.code(), format!("filter.peer_address: {}", e.message()))
                    })?;
                Some(AnnouncerQuery::Session(info.id))
            }
        };
        Ok(RouteQuery {
            // Peers may use any 32-bit VNI: a listing filter accepts them all.
            vni: f.vni.map(Vni),
            dest: (!f.prefix.is_empty())
                .then(|| prefix_from_api("filter.prefix", &f.prefix))
                .transpose()?,
            next_hop: (!f.next_hop.is_empty())
                .then(|| address_from_api("filter.next_hop", &f.next_hop))
                .transpose()?,
            kind: kind_from_api("filter.type", f.r#type, 0)?,
            announcer,
        })
    }

    /// Per route: whether it is injected (in the state store) now.
    async fn injected(&self, routes: &[Route]) -> Result<Vec<bool>, Status> {
        let store = self.state.store.clone();
        let routes = routes.to_vec();
        blocking(move || routes.iter().map(|r| store.contains_route(r)).collect()).await
    }

    /// Makes an injected-route change durable first (once stored, a crash
    /// still applies it on restart), then hands `routes` to the table as
    /// `op`; answers how many routes the store changed.
    async fn store_then_apply(
        &self,
        routes: Vec<Route>,
        store_change: fn(&Store, &[Route]) -> Result<Vec<bool>, StoreError>,
        op: fn(Route) -> Op,
    ) -> Result<u32, Status> {
        let store = self.state.store.clone();
        let to_store = routes.clone();
        let changed = blocking(move || store_change(&store, &to_store)).await?;
        self.state
            .table
            .local_ops(LOCAL_API, routes.into_iter().map(op).collect())
            .await
            .ok_or_else(shutting_down)?;
        Ok(changed.iter().filter(|&&c| c).count() as u32)
    }

    fn remote_of(&self, id: SessionId) -> String {
        self.state
            .registry
            .get(id)
            .map(|s| s.remote.to_string())
            .unwrap_or_default()
    }
}

/// The NOT_FOUND message of a withdrawal of `route` (at `routes[i]`) that
/// is not injected. When the API injected the same destination and next-hop
/// address with another type (or NAT port range, or target VNI), the
/// message says so and names what is announced, so the operator sees which
/// form to withdraw instead of a bare "not announced".
fn not_injected_message(i: usize, route: &Route, injected: &[Route]) -> String {
    let others: Vec<String> = injected
        .iter()
        .filter(|r| {
            r.vni == route.vni && r.dest == route.dest && r.next_hop.addr == route.next_hop.addr
        })
        .map(|r| {
            let nh = &r.next_hop;
            let mut what = format!("{r} (type {}", nh.kind);
            if nh.kind == crate::wire::NextHopType::NAT || nh.nat_from != 0 || nh.nat_to != 0 {
                what.push_str(&format!(", ports {}-{}", nh.nat_from, nh.nat_to));
            }
            if nh.target_vni != 0 {
                what.push_str(&format!(", target vni {}", nh.target_vni));
            }
            what + ")"
        })
        .collect();
    if others.is_empty() {
        return format!("routes[{i}]: {route} was not announced through the API");
    }
    let same_kind = injected.iter().any(|r| {
        r.vni == route.vni
            && r.dest == route.dest
            && r.next_hop.addr == route.next_hop.addr
            && r.next_hop.kind == route.next_hop.kind
    });
    let how = if same_kind {
        "with another NAT port range or target VNI"
    } else {
        "with another type"
    };
    format!(
        "routes[{i}]: {route} (type {}) was not announced through the API; it exists {how}: {}",
        route.next_hop.kind,
        others.join(", ")
    )
}

/// The gRPC status of a failed shared-state write.
fn shared_write_error(e: WriteError, verb: &str) -> Status {
    let what = if e.committed == 0 {
        format!("the route was not {verb}")
    } else {
        format!(
            "{} of {} routes were {verb} (committed in etcd, they reach every server), the rest were not",
            e.committed, e.total
        )
    };
    match e.error {
        EtcdError::Unreachable(_) => Status::unavailable(format!(
            "shared state (etcd) unreachable: {}; {what}",
            e.error
        )),
        other => Status::unavailable(format!("shared state (etcd): {other}; {what}")),
    }
}

/// Writes one operation per distinct route of a request (a key may appear
/// only once in an etcd transaction) and returns once committed and
/// applied here; the number of distinct routes whose presence in the shared
/// state (`existing`, per route of the request) was `counted`: the routes
/// the call adds or removes.
async fn shared_write(
    shared: &SharedState,
    routes: &[Route],
    existing: &[bool],
    counted: bool,
    op: fn(Vec<u8>) -> TxnOp,
    verb: &str,
) -> Result<u32, Status> {
    let keys = shared
        .keys(routes)
        .map_err(|(i, e)| invalid(&format!("routes[{i}]"), &e))?;
    let mut seen = hashbrown::HashSet::with_capacity(routes.len());
    let mut changed = 0;
    let mut ops = Vec::with_capacity(routes.len());
    for ((route, key), &exists) in routes.iter().zip(keys).zip(existing) {
        if seen.insert(*route) {
            changed += u32::from(exists == counted);
            ops.push(op(key));
        }
    }
    shared
        .write(ops)
        .await
        .map_err(|e| shared_write_error(e, verb))?;
    Ok(changed)
}

/// AnnounceRoutes with the etcd backend: check against the shared state as
/// applied here, write the keys, return once committed and applied.
async fn shared_announce(
    shared: &SharedState,
    routes: Vec<Route>,
    allow_existing: bool,
) -> Result<u32, Status> {
    let existing = shared.contains(&routes);
    if !allow_existing {
        if let Some(i) = existing.iter().position(|&e| e) {
            return Err(Status::already_exists(format!(
                "routes[{i}]: {} is already announced through the API",
                routes[i]
            )));
        }
    }
    let put = |key: Vec<u8>| TxnOp::Put(key.into(), bytes::Bytes::new(), 0);
    shared_write(shared, &routes, &existing, false, put, "announced").await
}

/// WithdrawRoutes with the etcd backend.
async fn shared_withdraw(
    shared: &SharedState,
    routes: Vec<Route>,
    allow_missing: bool,
) -> Result<u32, Status> {
    let existing = shared.contains(&routes);
    if !allow_missing {
        if let Some(i) = existing.iter().position(|&e| !e) {
            return Err(Status::not_found(not_injected_message(
                i,
                &routes[i],
                &shared.routes(),
            )));
        }
    }
    let delete = |key: Vec<u8>| TxnOp::Delete(key.into());
    shared_write(shared, &routes, &existing, true, delete, "withdrawn").await
}

fn encode_token(cursor: PageCursor) -> String {
    format!("{}.{}", cursor.0 .0, cursor.1)
}

fn decode_token(token: &str) -> Result<Option<PageCursor>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || {
        invalid(
            "page_token",
            "not a token from a previous ListRoutes response",
        )
    };
    let (vni, slot) = token.split_once('.').ok_or_else(bad)?;
    Ok(Some((
        Vni(vni.parse().map_err(|_| bad())?),
        slot.parse().map_err(|_| bad())?,
    )))
}

#[tonic::async_trait]
impl pb::route_service_server::RouteService for Routes {
    async fn list_routes(
        &self,
        request: Request<pb::ListRoutesRequest>,
    ) -> Result<Response<pb::ListRoutesResponse>, Status> {
        let req = request.into_inner();
        let query = self.query_from_filter(req.filter.as_ref())?;
        let after = decode_token(&req.page_token)?;
        let limit = match req.page_size as usize {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let (page, next) = self
            .state
            .table
            .query(|reply| Query::Routes {
                query,
                after,
                limit,
                reply,
            })
            .await
            .ok_or_else(shutting_down)?;
        let routes = page
            .iter()
            .map(|(route, announcers)| pb::RouteEntry {
                route: Some(route_to_api(route)),
                announcers: announcers
                    .iter()
                    .map(|&a| announcer_to_api(a, |id| self.remote_of(id)))
                    .collect(),
            })
            .collect();
        Ok(Response::new(pb::ListRoutesResponse {
            routes,
            next_page_token: next.map(encode_token).unwrap_or_default(),
        }))
    }

    async fn announce_routes(
        &self,
        request: Request<pb::AnnounceRoutesRequest>,
    ) -> Result<Response<pb::AnnounceRoutesResponse>, Status> {
        if self.state.listen.is_empty() {
            // A client-only daemon: its table has no subscriber, ever.
            return Err(Status::failed_precondition(
                "this daemon has no route-server listener, so no peer reads its route table: \
                 announce to the route servers with ClientService.Announce \
                 (mbctl announce does so in a client-role daemon)",
            ));
        }
        let req = request.into_inner();
        let routes = routes_from_api(&req.routes)?;
        if let Some(shared) = &self.state.shared {
            return shared_announce(shared, routes, req.allow_existing)
                .await
                .map(|added| Response::new(pb::AnnounceRoutesResponse { added }));
        }
        let _guard = self.state.inject_lock.lock().await;
        let existing = self.injected(&routes).await?;
        if !req.allow_existing {
            if let Some(i) = existing.iter().position(|&e| e) {
                return Err(Status::already_exists(format!(
                    "routes[{i}]: {} is already announced through the API",
                    routes[i]
                )));
            }
        }
        let added = self
            .store_then_apply(routes, Store::add_routes, Op::Announce)
            .await?;
        Ok(Response::new(pb::AnnounceRoutesResponse { added }))
    }

    async fn withdraw_routes(
        &self,
        request: Request<pb::WithdrawRoutesRequest>,
    ) -> Result<Response<pb::WithdrawRoutesResponse>, Status> {
        let req = request.into_inner();
        let routes = routes_from_api(&req.routes)?;
        if let Some(shared) = &self.state.shared {
            return shared_withdraw(shared, routes, req.allow_missing)
                .await
                .map(|removed| Response::new(pb::WithdrawRoutesResponse { removed }));
        }
        let _guard = self.state.inject_lock.lock().await;
        let existing = self.injected(&routes).await?;
        if !req.allow_missing {
            if let Some(i) = existing.iter().position(|&e| !e) {
                let route = routes[i];
                let store = self.state.store.clone();
                let injected = blocking(move || store.routes()).await?;
                return Err(Status::not_found(not_injected_message(
                    i, &route, &injected,
                )));
            }
        }
        let removed = self
            .store_then_apply(routes, Store::remove_routes, Op::Withdraw)
            .await?;
        Ok(Response::new(pb::WithdrawRoutesResponse { removed }))
    }

    type WatchRoutesStream = ReceiverStream<Result<pb::RouteEvent, Status>>;

    async fn watch_routes(
        &self,
        request: Request<pb::WatchRoutesRequest>,
    ) -> Result<Response<Self::WatchRoutesStream>, Status> {
        let req = request.into_inner();
        let mut query = self.query_from_filter(req.filter.as_ref())?;
        if let Some(vni) = query.vni {
            vni_from_api("filter.vni", vni.0).ok();
        }
        query.announcer = None;
        let (snapshot, cursor) = self
            .state
            .table
            .query(|reply| Query::Watch {
                query: query.clone(),
                max_lag_bytes: self.state.watch_max_lag_bytes,
                reply,
            })
            .await
            .ok_or_else(shutting_down)?;
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let watcher = Watcher {
            tx,
            query,
            sequence: 0,
            max_lag: self.state.watch_max_lag_bytes,
        };
        tokio::spawn(watcher.run(snapshot, cursor));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Feeds one watch stream: snapshot, end marker, then changes from the log.
struct Watcher {
    tx: mpsc::Sender<Result<pb::RouteEvent, Status>>,
    query: RouteQuery,
    sequence: u64,
    max_lag: u64,
}

/// Why a watch stream ends.
enum Stop {
    /// The client went away.
    Closed,
    /// The watcher fell too far behind the log.
    Lagged(u64),
}

/// How often a watcher blocked on a slow client checks its lag.
const LAG_CHECK: std::time::Duration = std::time::Duration::from_millis(100);
/// A watcher that keeps sending also checks its lag every this many events
/// (a client that reads, but slower than the log grows).
const LAG_CHECK_EVENTS: u64 = 256;

impl Watcher {
    async fn run(mut self, snapshot: Vec<Route>, mailbox: Arc<Mailbox>) {
        let stop = self.stream(snapshot, &mailbox).await;
        // The table forgets a closed mailbox at its next delivery.
        mailbox.close();
        match stop {
            Stop::Closed => {}
            Stop::Lagged(lag) => {
                tracing::warn!(lag_bytes = lag, "route watcher lagged; its stream ends");
                self.sequence += 1;
                let event = pb::RouteEvent {
                    sequence: self.sequence,
                    event: Some(Event::Lagged(pb::Lagged {
                        reason: format!(
                            "this watcher fell {lag} bytes behind the update log; watch again for a new snapshot"
                        ),
                    })),
                };
                // A slot is always free for it (see `send`).
                let _ = self.tx.try_send(Ok(event));
            }
        }
    }

    async fn stream(&mut self, snapshot: Vec<Route>, cursor: &Mailbox) -> Stop {
        let total = snapshot.len() as u64;
        for route in snapshot {
            if let Err(stop) = self
                .send(Event::Snapshot(route_to_api(&route)), cursor)
                .await
            {
                return stop;
            }
        }
        if let Err(stop) = self
            .send(
                Event::SnapshotEnd(pb::SnapshotEnd { routes: total }),
                cursor,
            )
            .await
        {
            return stop;
        }
        let mut pending = Vec::new();
        loop {
            if let Some(lag) = cursor.overflowed() {
                return Stop::Lagged(lag);
            }
            if !cursor.has_mail() {
                tokio::select! {
                    _ = cursor.notified() => {}
                    _ = self.tx.closed() => return Stop::Closed,
                }
                continue;
            }
            // One item at a time, decoded outside the mailbox's lock.
            let mut taken = None;
            cursor.take_while(|mail| match taken {
                None => {
                    taken = Some(mail);
                    Ok(())
                }
                Some(_) => Err(mail),
            });
            if let Some(mail) = taken {
                pending.extend(
                    mail.updates()
                        .filter(|u| self.query.matches_route(&u.route)),
                );
            }
            for u in pending.drain(..) {
                let event = match u.action {
                    Action::Add => Event::Added(route_to_api(&u.route)),
                    Action::Remove => Event::Removed(route_to_api(&u.route)),
                };
                if let Err(stop) = self.send(event, cursor).await {
                    return stop;
                }
            }
        }
    }

    /// Sends the next event. Checks how far behind the log this watcher is
    /// every [`LAG_CHECK_EVENTS`] events, and every [`LAG_CHECK`] while the
    /// client is slow to take one: the log never waits for it, so a watcher
    /// too far behind ends with a `lagged` event instead of a gap.
    async fn send(&mut self, event: Event, cursor: &Mailbox) -> Result<(), Stop> {
        if self.sequence % LAG_CHECK_EVENTS == 0 {
            if let Some(lag) = cursor.overflowed() {
                return Err(Stop::Lagged(lag));
            }
        }
        loop {
            tokio::select! {
                // Two slots, one used: the last slot stays free for `lagged`,
                // so that event always fits, however slow the client.
                permits = self.tx.reserve_many(2) => {
                    let mut permits = permits.map_err(|_| Stop::Closed)?;
                    let permit = permits.next().expect("two permits");
                    self.sequence += 1;
                    permit.send(Ok(pb::RouteEvent {
                        sequence: self.sequence,
                        event: Some(event),
                    }));
                    return Ok(());
                }
                _ = tokio::time::sleep(LAG_CHECK) => {
                    let lag = cursor.queued_bytes();
                    tracing::debug!(lag, max = self.max_lag, "watcher waiting for its client");
                    if let Some(lag) = cursor.overflowed() {
                        return Err(Stop::Lagged(lag));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_write_failures_say_what_was_committed() {
        let none = shared_write_error(
            WriteError {
                committed: 0,
                total: 1,
                error: EtcdError::Unreachable("connection refused".into()),
            },
            "announced",
        );
        assert_eq!(none.code(), tonic::Code::Unavailable);
        assert!(
            none.message()
                .starts_with("shared state (etcd) unreachable: ")
                && none.message().ends_with("the route was not announced"),
            "{}",
            none.message()
        );
        let partial = shared_write_error(
            WriteError {
                committed: 256,
                total: 1000,
                error: EtcdError::Unreachable("timed out".into()),
            },
            "withdrawn",
        );
        assert!(
            partial
                .message()
                .contains("256 of 1000 routes were withdrawn"),
            "{}",
            partial.message()
        );
    }

    #[test]
    fn page_tokens_round_trip_and_garbage_is_rejected() {
        let c = (Vni(77), 1234);
        assert_eq!(decode_token(&encode_token(c)).unwrap(), Some(c));
        assert_eq!(decode_token("").unwrap(), None);
        for bad in ["x", "1.", ".2", "1.2.3", "-1.2"] {
            let err = decode_token(bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad}");
            assert!(err.message().starts_with("page_token"));
        }
    }
}
