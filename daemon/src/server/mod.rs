//! The route server: TCP listeners and one task per session; the sessions
//! reach the route table through [`crate::table_task`].

pub mod connection;
pub mod delivery;
pub mod metrics;
pub mod registry;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{error, info, warn, Instrument};

pub use connection::{SessionContext, SessionSettings};
use metrics::Metrics;
use registry::{Registry, SessionInfo};

use crate::policy::admission::{self, AddressTable, Admission};
use crate::table::SessionId;
use crate::table_task::TableHandle;
use crate::tls::Current;

/// Server configuration.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Addresses to listen on.
    pub listen: Vec<SocketAddr>,
    /// Per-session settings.
    pub session: SessionSettings,
    /// Most sessions open at once; further connections are closed at accept.
    pub max_sessions: usize,
    /// Addresses of TLS listeners (ADR 0026); they need `tls`.
    pub tls_listen: Vec<SocketAddr>,
    /// The TLS listeners' certificates, loaded.
    pub tls: Option<crate::tls::ServerTls>,
}

/// A running server.
pub struct Server {
    /// Bound listener addresses (with real ports when 0 was asked for).
    pub local_addrs: Vec<SocketAddr>,
    /// Bound TLS listener addresses.
    pub tls_local_addrs: Vec<SocketAddr>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// The table the sessions read and write (given at start), for status
    /// queries and the daemon's own routes.
    pub table: TableHandle,
    /// Live sessions.
    pub registry: Arc<Registry>,
    shutdown: watch::Sender<bool>,
    settings: watch::Sender<SessionSettings>,
    limit: Arc<SessionLimit>,
}

/// The limit on concurrent sessions, changeable at runtime.
#[derive(Debug)]
pub struct SessionLimit {
    active: AtomicUsize,
    max: AtomicUsize,
}

impl SessionLimit {
    fn new(max: usize) -> Self {
        Self {
            active: AtomicUsize::new(0),
            max: AtomicUsize::new(max),
        }
    }

    /// A slot for one more session, unless the limit is reached.
    fn try_acquire(self: &Arc<Self>) -> Option<SessionSlot> {
        let max = self.max.load(Relaxed);
        self.active
            .fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| SessionSlot {
                limit: self.clone(),
                address: None,
            })
    }
}

/// One session's place under the limit (and, if its policy class limits
/// sessions per address, under that); released when dropped.
#[derive(Debug)]
pub struct SessionSlot {
    limit: Arc<SessionLimit>,
    address: Option<AddressSlot>,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.limit.active.fetch_sub(1, Relaxed);
    }
}

/// A session counted for its source address in the [`AddressTable`]; the
/// count is released when dropped (once per session end: no lock while the
/// session runs).
#[derive(Debug)]
struct AddressSlot {
    table: Arc<Mutex<AddressTable>>,
    peer: std::net::IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        self.table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .release(self.peer);
    }
}

impl Server {
    /// Binds every listen address and starts serving sessions on `table`.
    pub async fn start(config: ServerConfig, table: TableHandle) -> io::Result<Self> {
        let metrics = Arc::new(Metrics::default());
        let registry = Arc::new(Registry::default());
        let (shutdown, _) = watch::channel(false);
        let (settings, _) = watch::channel(config.session.clone());
        let limit = Arc::new(SessionLimit::new(config.max_sessions));
        let addresses = Arc::new(Mutex::new(AddressTable::default()));
        let ids = Arc::new(std::sync::atomic::AtomicU32::new(
            crate::table::FIRST_SESSION,
        ));
        if !config.tls_listen.is_empty() && config.tls.is_none() {
            return Err(io::Error::other("TLS listeners need [server.tls]"));
        }
        let tls = config.tls.as_ref().map(|t| t.current.clone());
        let mut local_addrs = Vec::new();
        let mut tls_local_addrs = Vec::new();
        let listeners = config
            .listen
            .iter()
            .map(|a| (a, None))
            .chain(config.tls_listen.iter().map(|a| (a, tls.clone())));
        for (addr, tls) in listeners {
            let listener = bind(*addr)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
            let local = listener.local_addr()?;
            if tls.is_some() {
                info!(addr = %local, "listening (TLS)");
                tls_local_addrs.push(local);
            } else {
                info!(addr = %local, "listening");
                local_addrs.push(local);
            }
            let acceptor = Acceptor {
                listener,
                ctx: SessionContext {
                    table: table.clone(),
                    settings: config.session.clone(),
                    metrics: metrics.clone(),
                    shutdown: shutdown.subscribe(),
                    registry: registry.clone(),
                    live: settings.subscribe(),
                },
                limit: limit.clone(),
                addresses: addresses.clone(),
                ids: ids.clone(),
                settings: settings.subscribe(),
                tls,
            };
            tokio::spawn(acceptor.run());
        }
        Ok(Self {
            local_addrs,
            tls_local_addrs,
            metrics,
            table,
            registry,
            shutdown,
            settings,
            limit,
        })
    }

    /// The session settings in force (the policy among them), as they
    /// change with reloads.
    pub fn settings_watch(&self) -> watch::Receiver<SessionSettings> {
        self.settings.subscribe()
    }

    /// New settings for sessions accepted from now on; open sessions take
    /// only the policy from them (re-checked against what they hold, ADR 0028).
    pub fn set_session_settings(&self, settings: SessionSettings) {
        self.settings.send_replace(settings);
        self.registry.wake_all();
    }

    /// A new limit on concurrent sessions; sessions over it are not closed,
    /// new ones are refused until the count is below it.
    pub fn set_max_sessions(&self, max: usize) {
        self.limit.max.store(max, Relaxed);
    }

    /// Stops accepting and closes every session without withdrawing routes
    /// (no storm of REMOVEs: PROTOCOL.md section 4).
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
        self.registry.wake_all();
    }
}

impl Drop for Server {
    /// A server dropped without [`Server::shutdown`] closes its sessions
    /// all the same.
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct Acceptor {
    listener: TcpListener,
    ctx: SessionContext,
    limit: Arc<SessionLimit>,
    addresses: Arc<Mutex<AddressTable>>,
    ids: Arc<std::sync::atomic::AtomicU32>,
    settings: watch::Receiver<SessionSettings>,
    /// A TLS listener: what its handshakes use.
    tls: Option<Arc<Current<rustls::ServerConfig>>>,
}

impl Acceptor {
    async fn run(mut self) {
        let mut backoff = Duration::ZERO;
        loop {
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                _ = self.ctx.shutdown.changed() => return,
            };
            match accepted {
                Ok((stream, peer)) => {
                    backoff = Duration::ZERO;
                    self.spawn_session(stream, peer);
                }
                Err(e) => {
                    Metrics::inc(&self.ctx.metrics.accept_errors);
                    // Out of file descriptors or memory: back off and keep
                    // serving the sessions we have. Other errors (a peer that
                    // reset before accept) are per-connection: retry at once.
                    if is_resource_exhaustion(&e) {
                        backoff =
                            (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                        error!(error = %e, retry_in_ms = backoff.as_millis() as u64, "accept failed");
                        tokio::time::sleep(backoff).await;
                    } else {
                        warn!(error = %e, "accept failed");
                    }
                }
            }
        }
    }

    fn spawn_session(&self, stream: TcpStream, peer: SocketAddr) {
        let Some(mut slot) = self.limit.try_acquire() else {
            Metrics::inc(&self.ctx.metrics.sessions_rejected);
            warn!(%peer, "session limit reached; connection closed");
            return;
        };
        // Settings taken and marked seen at once, for the admission check
        // and the session alike: a reload after this is seen by the session
        // (its policy re-applied), none is missed.
        let mut live = self.settings.clone();
        let settings = live.borrow_and_update().clone();
        // The per-address limits of the peer's class, by its address alone:
        // before any task, buffer or (later) TLS handshake for it.
        if let Some(policy) = &settings.policy {
            match self.admit(policy, peer) {
                Some(address) => slot.address = address,
                // Dropping the stream closes it: the peer sees its
                // connection closed before any HELLO.
                None => return,
            }
        }
        if let Err(e) = stream.set_nodelay(true) {
            warn!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        let start = SessionStart {
            ctx: SessionContext {
                settings,
                live,
                ..self.ctx.clone()
            },
            ids: self.ids.clone(),
            slot,
        };
        let Some(tls) = &self.tls else {
            start.spawn(stream, peer, None);
            return;
        };
        // The handshake runs on its own task: a slow or silent peer holds
        // its session slot for at most the handshake timeout, never the
        // acceptor.
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.get());
        let metrics = self.ctx.metrics.clone();
        let mut shutdown = self.ctx.shutdown.clone();
        tokio::spawn(async move {
            let handshake = tokio::select! {
                r = tokio::time::timeout(crate::tls::HANDSHAKE_TIMEOUT, acceptor.accept(stream)) => r,
                // A shutdown drops the connection mid-handshake.
                _ = shutdown.changed() => return,
            };
            let handshake = handshake.unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "handshake timed out",
                ))
            });
            match handshake {
                Ok(tls) => {
                    let (stream, conn) = tls.into_inner();
                    let identities = conn
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(crate::tls::identities)
                        .unwrap_or_default();
                    start.spawn(
                        stream,
                        peer,
                        Some((rustls::Connection::Server(conn), identities)),
                    );
                }
                Err(e) => {
                    let reason = crate::tls::failure_reason(&e);
                    metrics.tls_handshake_failed(reason);
                    warn!(%peer, reason, error = %e, "TLS handshake failed; connection closed");
                }
            }
        });
    }

    /// Asks the address table about a connection from `peer`: `None` if the
    /// policy refuses it (counted, and logged a few lines at a time), else
    /// the address's session count to hold, if its class counts sessions.
    fn admit(
        &self,
        policy: &crate::policy::Policy,
        peer: SocketAddr,
    ) -> Option<Option<AddressSlot>> {
        let class = policy.class_for(peer.ip());
        if class.address.is_open() {
            return Some(None);
        }
        let verdict = self
            .addresses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(peer.ip(), &class.address, std::time::Instant::now());
        let (reason, log) = match verdict {
            Admission::Admit { counted: false } => return Some(None),
            Admission::Admit { counted: true } => {
                return Some(Some(AddressSlot {
                    table: self.addresses.clone(),
                    peer: peer.ip(),
                }))
            }
            Admission::Refuse { reason, log } => (reason, log),
        };
        let m = &self.ctx.metrics;
        m.policy_counters(&class.name).0[reason as usize].fetch_add(1, Relaxed);
        Metrics::inc(if reason == crate::policy::Reason::ConnectRate {
            &m.rejected_connect_rate
        } else {
            &m.rejected_sessions_per_address
        });
        if let Some(refused) = log {
            warn!(
                address = %metalbondd_config::canonical(peer.ip()),
                class = %class.name,
                reason = %reason.label(),
                refused,
                "policy refused a {}; further refusals from this address in the next {} s are counted and logged as one line",
                reason.describe(),
                admission::LOG_INTERVAL.as_secs()
            );
        }
        None
    }
}

/// What an accepted connection needs to become a session.
struct SessionStart {
    ctx: SessionContext,
    ids: Arc<std::sync::atomic::AtomicU32>,
    slot: SessionSlot,
}

impl SessionStart {
    /// Registers the session and spawns its task; `tls`: the connection
    /// after its handshake and the client certificate's identities.
    fn spawn(
        self,
        stream: TcpStream,
        peer: SocketAddr,
        tls: Option<(rustls::Connection, Vec<String>)>,
    ) {
        let id: SessionId = self.ids.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Metrics::inc(&self.ctx.metrics.sessions_accepted);
        self.ctx
            .metrics
            .sessions_active
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let local = stream.local_addr().unwrap_or(peer);
        let info = Arc::new(SessionInfo::new(
            id,
            peer,
            local,
            crate::session::Role::Server,
        ));
        match &tls {
            Some((conn, names)) => {
                let identity = names.first().map(String::as_str).unwrap_or("");
                let suite = conn
                    .negotiated_cipher_suite()
                    .and_then(|s| s.suite().as_str())
                    .unwrap_or("?");
                info!(%peer, session = id, identity, suite, "session accepted (TLS)");
                info.set_tls_identity(identity);
            }
            None => info!(%peer, session = id, "session accepted"),
        }
        self.ctx.registry.insert(info.clone());
        let span = tracing::info_span!("session", %peer, id);
        tokio::spawn(connection::run(stream, tls, info, self.ctx, self.slot).instrument(span));
    }
}

/// Listen backlog: every hypervisor reconnects at once after a server
/// restart (the kernel caps it at `net.core.somaxconn`).
const LISTEN_BACKLOG: i32 = 4096;

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if addr.ip() == std::net::Ipv6Addr::UNSPECIFIED {
        // `[::]` (and `:PORT`) means every address, IPv4 too, as in Go's
        // net.Listen, whatever the host's net.ipv6.bindv6only says.
        socket.set_only_v6(false)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    TcpListener::from_std(socket.into())
}

fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}
