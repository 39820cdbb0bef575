//! A small etcd v3 client over tonic (shell): several endpoints with
//! failover, optional TLS and user/password authentication (ADR 0031).
//!
//! Each endpoint gets its own lazily connected [`Channel`]. A call goes to
//! the endpoint that answered last; a transport failure, a timeout or an
//! `UNAVAILABLE` answer (a member without a leader says so) moves it to the
//! next endpoint, so a dead member costs one failed attempt, not an error.
//! Only when every endpoint failed does the caller see
//! [`EtcdError::Unreachable`]. Every operation used here is idempotent
//! (range, puts and deletes of given keys), so retrying one elsewhere is safe.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use metalbond_proto::etcd::etcdserverpb as pb;
use metalbond_proto::etcd::mvccpb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

pub use super::reconcile::KeyEvent;

/// Largest response the client decodes (a page of a range is far smaller).
const MAX_MESSAGE: usize = 64 << 20;
/// Keys per page of a range.
const RANGE_PAGE: i64 = 10_000;

/// How to reach the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdSettings {
    /// Client URLs of the members.
    pub endpoints: Vec<String>,
    /// Key prefix of this fleet (ends with `/`).
    pub prefix: String,
    /// CA (PEM file) of the members' certificates, for `https://`.
    pub ca: Option<PathBuf>,
    /// Client certificate and key (PEM files).
    pub identity: Option<(PathBuf, PathBuf)>,
    /// User name and the file holding its password.
    pub credentials: Option<(String, PathBuf)>,
    /// Time to connect to one member.
    pub dial_timeout: Duration,
    /// Time one request may take.
    pub request_timeout: Duration,
    /// Most operations per transaction.
    pub max_txn_ops: usize,
}

/// Why an etcd operation failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint answered (each was tried).
    #[error("no etcd endpoint answered ({0})")]
    Unreachable(String),
    /// The cluster answered with an error.
    #[error("etcd refused the request: {0}")]
    Refused(String),
    /// A transaction had more operations than the cluster accepts (etcd's
    /// `--max-txn-ops`); nothing of it was applied.
    #[error("etcd refused a transaction of more operations than its --max-txn-ops")]
    TooManyOps,
    /// The requested revision was compacted away; resync from a snapshot.
    #[error("etcd revision compacted (compact revision {0})")]
    Compacted(i64),
    /// The client could not be set up (a certificate file, a password file).
    #[error("{0}")]
    Setup(String),
}

/// One operation of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOp {
    /// Puts key = value, attached to a lease (0: none).
    Put(Bytes, Bytes, i64),
    /// Deletes the key.
    Delete(Bytes),
}

/// A cheap-to-clone etcd client (see the module documentation).
#[derive(Clone)]
pub struct EtcdClient {
    inner: Arc<Inner>,
}

struct Inner {
    endpoints: Vec<(String, Channel)>,
    current: AtomicUsize,
    credentials: Option<(String, String)>,
    token: Mutex<Option<String>>,
    request_timeout: Duration,
}

impl std::fmt::Debug for EtcdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self
            .inner
            .endpoints
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        f.debug_struct("EtcdClient")
            .field("endpoints", &names)
            .finish()
    }
}

/// Whether a failed call should be tried on the next endpoint.
fn is_transport(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled
    ) || (status.code() == Code::Unknown
        && (status.message().contains("transport") || status.message().contains("connect")))
        // etcd's own "no leader" / "leader changed" / "request timed out".
        || status.message().contains("etcdserver: no leader")
        || status.message().contains("etcdserver: leader changed")
        || status.message().contains("etcdserver: request timed out")
}

/// Whether a call failed because the connection it was sent on broke (a
/// member that restarted), not because the member is down: a new connection
/// may well work.
/// A status's message with the chain of errors under it (tonic's bare
/// "transport error" says nothing without its source).
fn status_text(status: &Status) -> String {
    let mut text = status.message().to_string();
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        let more = e.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = e.source();
    }
    text
}

fn is_broken_connection(status: &Status) -> bool {
    let m = status.message();
    m.contains("operation was canceled")
        || m.contains("connection reset")
        || m.contains("broken pipe")
        || m.contains("h2 protocol error")
}

/// Whether the auth token needs renewing.
fn is_bad_token(status: &Status) -> bool {
    status.code() == Code::Unauthenticated
        || status.message().contains("invalid auth token")
        || status.message().contains("auth token")
}

/// Reads a file for the client's setup, naming it in the error.
fn read(path: &PathBuf, what: &str) -> Result<Vec<u8>, EtcdError> {
    std::fs::read(path)
        .map_err(|e| EtcdError::Setup(format!("cannot read etcd {what} {}: {e}", path.display())))
}

impl EtcdClient {
    /// A client for `settings` (reads certificate and password files; no
    /// connection is made yet).
    pub fn new(settings: &EtcdSettings) -> Result<EtcdClient, EtcdError> {
        let tls = match &settings.ca {
            None => None,
            Some(ca) => {
                let mut tls =
                    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca, "CA")?));
                if let Some((cert, key)) = &settings.identity {
                    tls = tls.identity(Identity::from_pem(
                        read(cert, "client certificate")?,
                        read(key, "client key")?,
                    ));
                }
                Some(tls)
            }
        };
        let mut endpoints = Vec::new();
        for url in &settings.endpoints {
            let mut endpoint = Endpoint::from_shared(url.clone())
                .map_err(|e| EtcdError::Setup(format!("etcd endpoint {url:?}: {e}")))?
                .connect_timeout(settings.dial_timeout)
                .tcp_nodelay(true)
                // A dead member under an idle watch is noticed by HTTP/2 pings.
                .http2_keep_alive_interval(Duration::from_secs(2))
                .keep_alive_timeout(settings.dial_timeout)
                .keep_alive_while_idle(true);
            if let Some(tls) = &tls {
                endpoint = endpoint
                    .tls_config(tls.clone())
                    .map_err(|e| EtcdError::Setup(format!("etcd TLS for {url}: {e}")))?;
            }
            endpoints.push((url.clone(), endpoint.connect_lazy()));
        }
        if endpoints.is_empty() {
            return Err(EtcdError::Setup("no etcd endpoint given".into()));
        }
        let credentials = match &settings.credentials {
            None => None,
            Some((user, file)) => {
                let pw = String::from_utf8(read(file, "password file")?).map_err(|_| {
                    EtcdError::Setup(format!(
                        "etcd password file {} is not UTF-8",
                        file.display()
                    ))
                })?;
                Some((user.clone(), pw.trim_end_matches(['\n', '\r']).to_string()))
            }
        };
        Ok(EtcdClient {
            inner: Arc::new(Inner {
                endpoints,
                current: AtomicUsize::new(0),
                credentials,
                token: Mutex::new(None),
                request_timeout: settings.request_timeout,
            }),
        })
    }

    /// The endpoint URLs.
    pub fn endpoints(&self) -> Vec<String> {
        self.inner
            .endpoints
            .iter()
            .map(|(u, _)| u.clone())
            .collect()
    }

    fn request<T>(&self, message: T, watch: bool) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = self.inner.token.lock().expect("token lock").clone() {
            if let Ok(v) = MetadataValue::try_from(token.as_str()) {
                request.metadata_mut().insert("token", v);
            }
        }
        if watch {
            // etcd cancels the watch when this member loses its leader, so
            // a partitioned member does not keep us silently behind.
            request
                .metadata_mut()
                .insert("hasleader", MetadataValue::from_static("true"));
        }
        request
    }

    async fn authenticate(&self, channel: Channel) -> Result<(), Status> {
        let Some((name, password)) = self.inner.credentials.clone() else {
            return Ok(());
        };
        let mut auth = pb::auth_client::AuthClient::new(channel);
        let reply = tokio::time::timeout(
            self.inner.request_timeout,
            auth.authenticate(pb::AuthenticateRequest { name, password }),
        )
        .await
        .map_err(|_| Status::deadline_exceeded("authenticate timed out"))??;
        *self.inner.token.lock().expect("token lock") = Some(reply.into_inner().token);
        Ok(())
    }

    /// Runs `call` on one endpoint after another until one answers.
    async fn call<T, F, Fut>(&self, what: &str, call: F) -> Result<T, EtcdError>
    where
        F: Fn(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let n = self.inner.endpoints.len();
        let start = self.inner.current.load(Relaxed);
        let mut last = String::new();
        let mut reauthenticated = false;
        let mut retried_here = false;
        let mut i = 0;
        while i < n {
            let index = (start + i) % n;
            let (url, channel) = &self.inner.endpoints[index];
            if self.inner.credentials.is_some()
                && self.inner.token.lock().expect("token lock").is_none()
            {
                if let Err(e) = self.authenticate(channel.clone()).await {
                    last = format!("{url}: authenticate: {}", e.message());
                    if is_transport(&e) {
                        i += 1;
                        continue;
                    }
                    return Err(EtcdError::Refused(last));
                }
            }
            let outcome =
                tokio::time::timeout(self.inner.request_timeout, call(channel.clone())).await;
            match outcome {
                Ok(Ok(value)) => {
                    self.inner.current.store(index, Relaxed);
                    return Ok(value);
                }
                Ok(Err(status))
                    if is_bad_token(&status)
                        && !reauthenticated
                        && self.inner.credentials.is_some() =>
                {
                    reauthenticated = true;
                    *self.inner.token.lock().expect("token lock") = None;
                    continue;
                }
                Ok(Err(status)) if is_broken_connection(&status) && !retried_here => {
                    // The member's old connection broke (it restarted): the
                    // channel connects again on the next call, so ask the same
                    // member once more before calling it failed.
                    retried_here = true;
                    last = format!("{url}: {}", status_text(&status));
                    continue;
                }
                Ok(Err(status)) if is_transport(&status) => {
                    last = format!("{url}: {}", status_text(&status));
                }
                Ok(Err(status))
                    if status.code() == Code::InvalidArgument
                        && status.message().contains("too many operations") =>
                {
                    return Err(EtcdError::TooManyOps);
                }
                Ok(Err(status)) => {
                    return Err(EtcdError::Refused(format!("{what}: {}", status.message())))
                }
                Err(_) => {
                    last = format!(
                        "{url}: {what} timed out after {:?}",
                        self.inner.request_timeout
                    );
                }
            }
            tracing::debug!(endpoint = %url, error = %last, "etcd endpoint failed; trying the next");
            retried_here = false;
            i += 1;
        }
        Err(EtcdError::Unreachable(last))
    }

    fn kv(&self, channel: Channel) -> pb::kv_client::KvClient<Channel> {
        pb::kv_client::KvClient::new(channel).max_decoding_message_size(MAX_MESSAGE)
    }

    /// Sends the following calls to the raft leader, when one endpoint is
    /// it (a follower forwards every write to the leader: a large batch
    /// commits faster there). Asks every endpoint for its status; an
    /// endpoint that does not answer is skipped. True if the leader was
    /// found.
    pub async fn prefer_leader(&self) -> bool {
        let probes = self
            .inner
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, (_, channel))| {
                let mut m = pb::maintenance_client::MaintenanceClient::new(channel.clone());
                let request = self.request(pb::StatusRequest {}, false);
                async move {
                    let reply = tokio::time::timeout(self.inner.request_timeout, m.status(request))
                        .await
                        .ok()?
                        .ok()?
                        .into_inner();
                    let me = reply.header.as_ref()?.member_id;
                    Some((i, me == reply.leader && reply.leader != 0))
                }
            });
        let answers = futures_util::future::join_all(probes).await;
        match answers.into_iter().flatten().find(|&(_, leader)| leader) {
            Some((i, _)) => {
                self.inner.current.store(i, Relaxed);
                true
            }
            None => false,
        }
    }

    /// Every key-value under `prefix` at one revision (paged), and that revision.
    pub async fn range_prefix(
        &self,
        prefix: &[u8],
    ) -> Result<(Vec<mvccpb::KeyValue>, i64), EtcdError> {
        let end = Bytes::from(prefix_end(prefix));
        let mut out = Vec::new();
        let mut from = prefix.to_vec();
        let mut revision = 0;
        loop {
            let request = pb::RangeRequest {
                key: Bytes::from(from.clone()),
                range_end: end.clone(),
                limit: RANGE_PAGE,
                revision,
                ..Default::default()
            };
            let reply = self
                .call("range", |ch| {
                    let mut kv = self.kv(ch);
                    let request = self.request(request.clone(), false);
                    async move { kv.range(request).await.map(|r| r.into_inner()) }
                })
                .await?;
            if revision == 0 {
                revision = reply.header.as_ref().map(|h| h.revision).unwrap_or(0);
            }
            let more = reply.more;
            if let Some(last) = reply.kvs.last() {
                from = last.key.to_vec();
                from.push(0);
            }
            out.extend(reply.kvs);
            if !more {
                return Ok((out, revision));
            }
        }
    }

    /// Commits `ops` in one transaction; the revision it created.
    pub async fn txn(&self, ops: &[TxnOp]) -> Result<i64, EtcdError> {
        let success: Vec<pb::RequestOp> = ops
            .iter()
            .map(|op| pb::RequestOp {
                request: Some(match op {
                    TxnOp::Put(k, v, lease) => {
                        pb::request_op::Request::RequestPut(pb::PutRequest {
                            key: k.clone(),
                            value: v.clone(),
                            lease: *lease,
                            ..Default::default()
                        })
                    }
                    TxnOp::Delete(k) => {
                        pb::request_op::Request::RequestDeleteRange(pb::DeleteRangeRequest {
                            key: k.clone(),
                            ..Default::default()
                        })
                    }
                }),
            })
            .collect();
        let request = pb::TxnRequest {
            success,
            ..Default::default()
        };
        let reply = self
            .call("txn", |ch| {
                let mut kv = self.kv(ch);
                let request = self.request(request.clone(), false);
                async move { kv.txn(request).await.map(|r| r.into_inner()) }
            })
            .await?;
        Ok(reply.header.map(|h| h.revision).unwrap_or(0))
    }

    /// Puts one key attached to `lease` (see [`EtcdClient::grant_lease`]).
    pub async fn put_with_lease(
        &self,
        key: &[u8],
        value: &[u8],
        lease: i64,
    ) -> Result<i64, EtcdError> {
        self.txn(&[TxnOp::Put(
            Bytes::copy_from_slice(key),
            Bytes::copy_from_slice(value),
            lease,
        )])
        .await
    }

    /// Grants a lease of `ttl` seconds; its id.
    pub async fn grant_lease(&self, ttl: i64) -> Result<i64, EtcdError> {
        let reply = self
            .call("lease grant", |ch| {
                let mut lease = pb::lease_client::LeaseClient::new(ch);
                let request = self.request(pb::LeaseGrantRequest { ttl, id: 0 }, false);
                async move { lease.lease_grant(request).await.map(|r| r.into_inner()) }
            })
            .await?;
        Ok(reply.id)
    }

    /// Renews a lease once; its remaining TTL (0 or less: it expired).
    pub async fn keep_alive_once(&self, id: i64) -> Result<i64, EtcdError> {
        self.call("lease keepalive", |ch| {
            let mut lease = pb::lease_client::LeaseClient::new(ch);
            let request = self.request(tokio_stream::once(pb::LeaseKeepAliveRequest { id }), false);
            async move {
                let mut stream = lease.lease_keep_alive(request).await?.into_inner();
                match stream.message().await? {
                    Some(reply) => Ok(reply.ttl),
                    None => Err(Status::unavailable("lease keepalive stream ended")),
                }
            }
        })
        .await
    }

    /// Revokes a lease (its keys are deleted).
    pub async fn revoke_lease(&self, id: i64) -> Result<(), EtcdError> {
        self.call("lease revoke", |ch| {
            let mut lease = pb::lease_client::LeaseClient::new(ch);
            let request = self.request(pb::LeaseRevokeRequest { id }, false);
            async move { lease.lease_revoke(request).await.map(|_| ()) }
        })
        .await
    }

    /// Watches every key under `prefix` from revision `from` (inclusive).
    pub async fn watch_prefix(&self, prefix: &[u8], from: i64) -> Result<Watch, EtcdError> {
        let create = pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key: Bytes::copy_from_slice(prefix),
                    range_end: prefix_end(prefix).into(),
                    start_revision: from,
                    progress_notify: true,
                    ..Default::default()
                },
            )),
        };
        self.call("watch", |ch| {
            let mut client =
                pb::watch_client::WatchClient::new(ch).max_decoding_message_size(MAX_MESSAGE);
            let create = create.clone();
            let (tx, rx) = mpsc::channel(4);
            let request = self.request(ReceiverStream::new(rx), true);
            async move {
                tx.send(create)
                    .await
                    .map_err(|_| Status::internal("watch request channel closed"))?;
                let mut stream = client.watch(request).await?.into_inner();
                // The first answer says whether the watch exists.
                match stream.message().await? {
                    Some(first) if first.created && !first.canceled => Ok(Watch {
                        stream,
                        _requests: tx,
                    }),
                    Some(first) if first.compact_revision > 0 => Err(Status::out_of_range(
                        format!("compacted:{}", first.compact_revision),
                    )),
                    Some(first) => Err(Status::failed_precondition(format!(
                        "watch not created: {}",
                        first.cancel_reason
                    ))),
                    None => Err(Status::unavailable(
                        "watch stream ended before it was created",
                    )),
                }
            }
        })
        .await
        .map_err(|e| match &e {
            EtcdError::Refused(m) => match m.split_once("compacted:") {
                Some((_, rev)) => EtcdError::Compacted(rev.trim().parse().unwrap_or(0)),
                None => e,
            },
            _ => e,
        })
    }
}

/// A live watch (see [`EtcdClient::watch_prefix`]).
pub struct Watch {
    stream: tonic::Streaming<pb::WatchResponse>,
    /// Kept so that the request stream (and so the watch) stays open.
    _requests: mpsc::Sender<pb::WatchRequest>,
}

/// What a watch delivered next.
#[derive(Debug)]
pub enum WatchItem {
    /// Changes, all of one or more revisions; `revision` is the header's.
    Events(Vec<KeyEvent>, i64),
    /// Nothing changed up to `revision`.
    Progress(i64),
}

impl Watch {
    /// The next changes; an error ends the watch (resync: re-range, then
    /// watch again).
    pub async fn next(&mut self) -> Result<WatchItem, EtcdError> {
        let reply = match self.stream.message().await {
            Ok(Some(reply)) => reply,
            Ok(None) => return Err(EtcdError::Unreachable("the etcd watch stream ended".into())),
            Err(status) => {
                return Err(EtcdError::Unreachable(format!(
                    "etcd watch: {}",
                    status.message()
                )))
            }
        };
        if reply.compact_revision > 0 {
            return Err(EtcdError::Compacted(reply.compact_revision));
        }
        if reply.canceled {
            return Err(EtcdError::Unreachable(format!(
                "etcd canceled the watch: {}",
                reply.cancel_reason
            )));
        }
        let revision = reply.header.as_ref().map(|h| h.revision).unwrap_or(0);
        if reply.events.is_empty() {
            return Ok(WatchItem::Progress(revision));
        }
        let events = reply
            .events
            .into_iter()
            .filter_map(|e| {
                let put = e.r#type == mvccpb::event::EventType::Put as i32;
                e.kv.map(|kv| KeyEvent {
                    put,
                    key: kv.key,
                    value: kv.value,
                    revision: kv.mod_revision,
                })
            })
            .collect();
        Ok(WatchItem::Events(events, revision))
    }
}

/// The end of the key range of every key that starts with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): every key from `prefix` on.
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key_after_every_key_with_the_prefix() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }

    #[test]
    fn transport_failures_fail_over_and_answers_do_not() {
        assert!(is_transport(&Status::unavailable("connection refused")));
        assert!(is_transport(&Status::unknown("etcdserver: no leader")));
        assert!(!is_transport(&Status::invalid_argument(
            "etcdserver: too many operations in txn request"
        )));
        assert!(is_bad_token(&Status::unauthenticated(
            "etcdserver: invalid auth token"
        )));
    }
}
