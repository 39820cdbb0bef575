//! Kernel route installation over rtnetlink (client role, PROTOCOL.md section 5).
//!
//! # Kernel layout
//!
//! Each VNI is mapped to a routing table (never table 0). In that table every destination prefix
//! is **one** route with protocol number [`RTPROT_METALBOND`] (254), type unicast, scope universe,
//! leaving through the tunnel device (an `ip6tnl` in `mode any external` in production), with
//! one lightweight-tunnel encapsulation per next hop:
//!
//! - one next hop: a plain route `encap ip6 dst <next hop> dev <tun>`;
//! - several next hops: an `RTA_MULTIPATH` route, one `nexthop encap ip6 dst <nh> dev <tun>`
//!   per next hop, sorted by address (the kernel keeps the order it is given).
//!
//! IPv6 destinations with several next hops are the one exception: the kernel refuses
//! device-only IPv6 multipath routes ("Device only routes can not be added for IPv6 using the
//! multipath API"), so each IPv6 next hop also carries `via <next hop> onlink`. The gateway is
//! the tunnel's underlay destination itself; an `ip6tnl` device is `NOARP`, so the gateway causes
//! no neighbour resolution, and the encapsulation alone decides where packets go.
//!
//! `ip -d route show table 100` then shows, for example:
//!
//! ```text
//! unicast 10.0.1.0/24  encap ip6 id 0 src :: dst 2001:db8::1 hoplimit 0 tc 0 dev mbt0 proto 254 scope global
//! unicast 10.0.2.0/24 proto 254 scope global
//!     nexthop  encap ip6 id 0 src :: dst 2001:db8::1 hoplimit 0 tc 0 dev mbt0 weight 1
//!     nexthop  encap ip6 id 0 src :: dst 2001:db8::3 hoplimit 0 tc 0 dev mbt0 weight 1
//! ```
//!
//! Every change is an `RTM_NEWROUTE` with `NLM_F_CREATE | NLM_F_REPLACE`, so the whole
//! next-hop set of a (table, prefix) is replaced atomically; when the last next hop is gone the
//! caller calls [`Installer::delete`]. Deletion names protocol 254, so a route of another
//! protocol with the same prefix is never removed.
//!
//! # Errors and retries (the caller's policy)
//!
//! This module does not retry, log or count. Every failure is a [`KernelError`] whose `Display`
//! names the operation, the table and the prefix. [`KernelError::is_retryable`] tells whether the
//! same call may succeed later (out of memory, no buffer space, busy, the tunnel device missing
//! or down, a lost netlink connection); invalid input (table 0, a bad prefix, no next hop) and
//! errors the kernel will repeat (`EINVAL`, `EOPNOTSUPP`, `EPERM`, ...) are not. The client role is
//! expected to log and count every error, retry the retryable ones with a bounded backoff and
//! reconcile with [`Installer::dump`]; a kernel error is never fatal after start.
//!
//! Table 0 (`RT_TABLE_UNSPEC`) is rejected by every call: the kernel would read it as "the main
//! table" on add and "all tables" on dump or delete.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use rtnetlink::packet_core::{DefaultNla, Nla};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteIp6Tunnel, RouteLwEnCapType,
    RouteLwTunnelEncap, RouteMessage, RouteNextHop, RouteNextHopFlags, RouteProtocol, RouteScope,
    RouteType,
};
use rtnetlink::packet_route::AddressFamily;
use tokio_stream::StreamExt;

mod batch;

/// Routing protocol number of routes metalbondd installs.
pub const RTPROT_METALBOND: u8 = 254;

/// `LWTUNNEL_IP6_DST`, the attribute of an `encap ip6` that holds the destination.
const LWTUNNEL_IP6_DST: u16 = 2;

/// Most routes a single [`Installer::dump`] returns; a bound, not an expected size.
const MAX_DUMP_ROUTES: usize = 4_000_000;

/// A destination prefix: an address and a prefix length, host bits zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    /// The network address (host bits must be zero).
    pub addr: IpAddr,
    /// The prefix length: at most 32 for IPv4, 128 for IPv6.
    pub len: u8,
}

impl Prefix {
    /// A prefix from an address and a length (not validated; every [`Installer`] call validates).
    pub fn new(addr: IpAddr, len: u8) -> Prefix {
        Prefix { addr, len }
    }

    /// Why this prefix cannot be installed, if it cannot.
    fn invalid_reason(&self) -> Option<&'static str> {
        let (bits, max) = match self.addr {
            IpAddr::V4(a) => (u128::from(u32::from(a)) << 96, 32),
            IpAddr::V6(a) => (u128::from(a), 128),
        };
        if self.len > max {
            return Some("prefix length too long");
        }
        let host_mask = u128::MAX.checked_shr(u32::from(self.len)).unwrap_or(0);
        if bits & host_mask != 0 {
            return Some("host bits set in prefix");
        }
        None
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// One route as metalbondd installs it: a (table, prefix) and its next hops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelRoute {
    /// The routing table (1..=u32::MAX; 0 is rejected).
    pub table: u32,
    /// The destination prefix.
    pub dest: Prefix,
    /// The underlay next hops (`encap ip6 dst`), sorted and deduplicated. [`Installer::replace`]
    /// sorts and deduplicates a copy itself; [`Installer::dump`] returns them sorted.
    pub next_hops: Vec<Ipv6Addr>,
}

/// The kernel operation that failed, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelOp {
    /// Opening the netlink socket or resolving the tunnel device.
    Open,
    /// Installing or replacing a route.
    Replace,
    /// Deleting a route.
    Delete,
    /// Listing the routes of a table.
    Dump,
}

impl fmt::Display for KernelOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KernelOp::Open => "open",
            KernelOp::Replace => "replace route",
            KernelOp::Delete => "delete route",
            KernelOp::Dump => "dump routes",
        })
    }
}

/// Where an operation was aimed: a table and, except for dumps, a prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// The routing table.
    pub table: u32,
    /// The destination prefix, if the operation concerns one.
    pub prefix: Option<Prefix>,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.prefix {
            Some(p) => write!(f, "{p} in table {}", self.table),
            None => write!(f, "table {}", self.table),
        }
    }
}

/// A kernel installation error. `Display` names the operation, the table and the prefix.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// Table 0 (`RT_TABLE_UNSPEC`) was given; it is never a valid table here.
    #[error("kernel: {op} {target}: table 0 is not a valid routing table")]
    InvalidTable {
        /// The operation.
        op: KernelOp,
        /// The table and prefix.
        target: Target,
    },
    /// The route itself is invalid (bad prefix, no next hop).
    #[error("kernel: {op} {target}: {reason}")]
    InvalidRoute {
        /// The operation.
        op: KernelOp,
        /// The table and prefix.
        target: Target,
        /// What is wrong.
        reason: &'static str,
    },
    /// The tunnel device does not exist (at [`Installer::new`]).
    #[error("kernel: tunnel device {name:?} does not exist")]
    NoSuchDevice {
        /// The device name.
        name: String,
    },
    /// The netlink socket could not be opened.
    #[error("kernel: cannot open a netlink route socket: {0}")]
    Socket(#[source] std::io::Error),
    /// The kernel answered with an error.
    #[error("kernel: {op} {target}: {message} (errno {errno})")]
    Netlink {
        /// The operation.
        op: KernelOp,
        /// The table and prefix (table 0 when not applicable).
        target: Target,
        /// The positive errno.
        errno: i32,
        /// The errno's text.
        message: String,
    },
    /// Another netlink failure (connection lost, unexpected or undecodable message).
    #[error("kernel: {op} {target}: {message}")]
    Transport {
        /// The operation.
        op: KernelOp,
        /// The table and prefix (table 0 when not applicable).
        target: Target,
        /// What happened.
        message: String,
    },
}

impl KernelError {
    /// Whether the same call may succeed later, so the caller should retry it with a backoff.
    pub fn is_retryable(&self) -> bool {
        match self {
            KernelError::InvalidTable { .. } | KernelError::InvalidRoute { .. } => false,
            // The device may be created later (the caller retries `Installer::new`).
            KernelError::NoSuchDevice { .. } => true,
            KernelError::Socket(_) => true,
            KernelError::Transport { .. } => true,
            KernelError::Netlink { errno, .. } => matches!(
                *errno,
                libc::ENOMEM
                    | libc::ENOBUFS
                    | libc::EBUSY
                    | libc::EAGAIN
                    | libc::EINTR
                    | libc::ENODEV
                    | libc::ENETDOWN
                    | libc::ENETUNREACH
                    | libc::ETIMEDOUT
            ),
        }
    }

    /// The errno the kernel answered with, if it did.
    pub fn errno(&self) -> Option<i32> {
        match self {
            KernelError::Netlink { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

fn netlink_error(op: KernelOp, target: Target, err: rtnetlink::Error) -> KernelError {
    match err {
        rtnetlink::Error::NetlinkError(msg) => {
            let io = msg.to_io();
            KernelError::Netlink {
                op,
                target,
                errno: io.raw_os_error().unwrap_or(0),
                message: io.to_string(),
            }
        }
        other => KernelError::Transport {
            op,
            target,
            message: other.to_string(),
        },
    }
}

/// Installs metalbondd's routes into the kernel through one rtnetlink connection.
///
/// The connection runs as a task on the tokio runtime current at [`Installer::new`] and lives
/// as long as the `Installer`. The netlink socket belongs to the network namespace of the thread
/// that called `new`.
pub struct Installer {
    handle: rtnetlink::Handle,
    /// Route changes: the batched writer thread (see [`batch`]).
    writer: batch::Writer,
    connection: tokio::task::JoinHandle<()>,
    tun_name: String,
    tun_index: u32,
}

impl fmt::Debug for Installer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Installer")
            .field("tun_name", &self.tun_name)
            .field("tun_index", &self.tun_index)
            .finish_non_exhaustive()
    }
}

impl Drop for Installer {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl Installer {
    /// Opens a netlink connection and resolves the tunnel device's interface index.
    ///
    /// Fails with [`KernelError::NoSuchDevice`] if `tun_device` does not exist.
    pub async fn new(tun_device: &str) -> Result<Installer, KernelError> {
        let target = Target {
            table: 0,
            prefix: None,
        };
        if tun_device.is_empty() || tun_device.len() >= libc::IFNAMSIZ || tun_device.contains('/') {
            return Err(KernelError::NoSuchDevice {
                name: tun_device.to_owned(),
            });
        }
        let (conn, handle, _messages) = rtnetlink::new_connection().map_err(KernelError::Socket)?;
        let connection = tokio::spawn(conn);
        let mut links = handle
            .link()
            .get()
            .match_name(tun_device.to_owned())
            .execute();
        let tun_index = match links.next().await {
            Some(Ok(link)) => link.header.index,
            Some(Err(rtnetlink::Error::NetlinkError(e)))
                if e.to_io().raw_os_error() == Some(libc::ENODEV) =>
            {
                connection.abort();
                return Err(KernelError::NoSuchDevice {
                    name: tun_device.to_owned(),
                });
            }
            Some(Err(e)) => {
                connection.abort();
                return Err(netlink_error(KernelOp::Open, target, e));
            }
            None => {
                connection.abort();
                return Err(KernelError::NoSuchDevice {
                    name: tun_device.to_owned(),
                });
            }
        };
        // Drain the (single-message) answer so the request completes.
        while links.next().await.is_some() {}
        let writer = match batch::Writer::start(tun_index) {
            Ok(w) => w,
            Err(e) => {
                connection.abort();
                return Err(e);
            }
        };
        Ok(Installer {
            handle,
            writer,
            connection,
            tun_name: tun_device.to_owned(),
            tun_index,
        })
    }

    /// The tunnel device's name.
    pub fn tun_device(&self) -> &str {
        &self.tun_name
    }

    /// The tunnel device's interface index, resolved at [`Installer::new`].
    pub fn tun_index(&self) -> u32 {
        self.tun_index
    }

    /// Installs `route`, replacing whatever route of (table, prefix) the kernel had
    /// (`NLM_F_CREATE | NLM_F_REPLACE`): protocol 254, device the tunnel, one `encap ip6 dst` per
    /// next hop, several next hops as `RTA_MULTIPATH` sorted by address.
    ///
    /// An empty next-hop list is an error: delete the route instead.
    pub async fn replace(&self, route: &KernelRoute) -> Result<(), KernelError> {
        self.replace_owned(route.clone()).await
    }

    /// [`Installer::replace`] of a route the caller gives away (no copy of its next hops); the
    /// request is queued at once, the future only waits for the outcome.
    pub fn replace_owned(
        &self,
        mut route: KernelRoute,
    ) -> impl std::future::Future<Output = Result<(), KernelError>> + Send + 'static {
        let op = KernelOp::Replace;
        let target = Target {
            table: route.table,
            prefix: Some(route.dest),
        };
        let queued = validate(op, target).and_then(|()| {
            route.next_hops.sort_unstable();
            route.next_hops.dedup();
            if route.next_hops.is_empty() {
                return Err(KernelError::InvalidRoute {
                    op,
                    target,
                    reason: "no next hop (delete the route instead)",
                });
            }
            Ok(self.writer.submit(batch::Change::Replace(route)))
        });
        async move {
            match queued?.await {
                Ok(outcome) => outcome.map(|_| ()),
                Err(_) => Err(batch::gone(op, target)),
            }
        }
    }

    /// Deletes metalbondd's route (protocol 254) of (table, prefix), with all its next hops.
    /// Returns whether it existed; a route of another protocol is left alone.
    pub async fn delete(&self, table: u32, dest: Prefix) -> Result<bool, KernelError> {
        self.delete_queued(table, dest).await
    }

    /// [`Installer::delete`], queued at once; the future only waits for the outcome.
    pub fn delete_queued(
        &self,
        table: u32,
        dest: Prefix,
    ) -> impl std::future::Future<Output = Result<bool, KernelError>> + Send + 'static {
        let op = KernelOp::Delete;
        let target = Target {
            table,
            prefix: Some(dest),
        };
        let queued =
            validate(op, target).map(|()| self.writer.submit(batch::Change::Delete(table, dest)));
        async move {
            match queued?.await {
                Ok(outcome) => outcome,
                Err(_) => Err(batch::gone(op, target)),
            }
        }
    }

    /// Lists metalbondd's routes (protocol 254) of `table`, IPv4 then IPv6, with their next hops
    /// read back from the kernel (single and multipath `encap ip6 dst`), sorted by address.
    ///
    /// A protocol-254 route without any `encap ip6` destination (not one of ours, or damaged) is
    /// returned with no next hops, so that a reconciliation deletes it.
    pub async fn dump(&self, table: u32) -> Result<Vec<KernelRoute>, KernelError> {
        let op = KernelOp::Dump;
        let target = Target {
            table,
            prefix: None,
        };
        validate(op, target)?;
        let mut routes = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut req = RouteMessage::default();
            req.header.address_family = family;
            let mut stream = self.handle.route().get(req).execute();
            while let Some(item) = stream.next().await {
                let msg = item.map_err(|e| netlink_error(op, target, e))?;
                if routes.len() >= MAX_DUMP_ROUTES {
                    // Keep reading so the dump completes, but stop collecting.
                    continue;
                }
                if let Some(route) = parse_route(&msg, table) {
                    routes.push(route);
                }
            }
        }
        Ok(routes)
    }
}

/// Rejects table 0 and invalid prefixes.
fn validate(op: KernelOp, target: Target) -> Result<(), KernelError> {
    if target.table == u32::from(RouteHeader::RT_TABLE_UNSPEC) {
        return Err(KernelError::InvalidTable { op, target });
    }
    if let Some(reason) = target.prefix.and_then(|p| p.invalid_reason()) {
        return Err(KernelError::InvalidRoute { op, target, reason });
    }
    Ok(())
}

/// The header and destination shared by replace and delete. The table is always given as
/// `RTA_TABLE` (needed above 255) and, when it fits, in the header too.
fn base_message(table: u32, dest: Prefix) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = match dest.addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    msg.header.destination_prefix_length = dest.len;
    msg.header.table = u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
    msg.header.protocol = RouteProtocol::from(RTPROT_METALBOND);
    msg.header.scope = RouteScope::Universe;
    msg.header.kind = RouteType::Unicast;
    msg.attributes.push(RouteAttribute::Table(table));
    msg.attributes
        .push(RouteAttribute::Destination(RouteAddress::from(dest.addr)));
    msg
}

/// The `RTM_NEWROUTE` message of `route` (next hops sorted, deduplicated and not empty):
/// protocol 254, device the tunnel, one `encap ip6 dst` per next hop, several next hops as
/// `RTA_MULTIPATH` in the given order.
fn route_message(route: &KernelRoute, tun_index: u32) -> RouteMessage {
    let mut msg = base_message(route.table, route.dest);
    if let [hop] = route.next_hops[..] {
        msg.attributes.push(RouteAttribute::Oif(tun_index));
        msg.attributes.extend(encap_ip6(hop));
    } else {
        let with_gateway = route.dest.addr.is_ipv6();
        let next_hops = route
            .next_hops
            .iter()
            .map(|&hop| {
                let mut nh = RouteNextHop::default();
                nh.interface_index = tun_index;
                if with_gateway {
                    nh.flags = RouteNextHopFlags::Onlink;
                    nh.attributes
                        .push(RouteAttribute::Gateway(RouteAddress::Inet6(hop)));
                }
                nh.attributes.extend(encap_ip6(hop));
                nh
            })
            .collect();
        msg.attributes.push(RouteAttribute::MultiPath(next_hops));
    }
    msg
}

/// `encap ip6 dst <hop>`: the `RTA_ENCAP_TYPE` and `RTA_ENCAP` attributes.
fn encap_ip6(hop: Ipv6Addr) -> [RouteAttribute; 2] {
    [
        RouteAttribute::EncapType(RouteLwEnCapType::Ip6),
        RouteAttribute::Encap(vec![RouteLwTunnelEncap::Ip6(RouteIp6Tunnel::Destination(
            hop,
        ))]),
    ]
}

/// The `encap ip6 dst` of a list of attributes (a route's or a multipath next hop's).
///
/// netlink-packet-route decodes the `RTA_ENCAP` of a multipath next hop with the *route's*
/// encapsulation type (none), so there it arrives as raw attributes; both forms are read.
fn encap_dst(attributes: &[RouteAttribute]) -> Option<Ipv6Addr> {
    let is_ip6 = attributes
        .iter()
        .any(|a| matches!(a, RouteAttribute::EncapType(RouteLwEnCapType::Ip6)));
    if !is_ip6 {
        return None;
    }
    attributes.iter().find_map(|a| match a {
        RouteAttribute::Encap(encaps) => encaps.iter().find_map(|e| match e {
            RouteLwTunnelEncap::Ip6(RouteIp6Tunnel::Destination(d)) => Some(*d),
            RouteLwTunnelEncap::Other(nla) => raw_ip6_dst(nla),
            _ => None,
        }),
        _ => None,
    })
}

fn raw_ip6_dst(nla: &DefaultNla) -> Option<Ipv6Addr> {
    if nla.kind() != LWTUNNEL_IP6_DST || nla.value_len() != 16 {
        return None;
    }
    let mut buf = [0u8; 16];
    nla.emit_value(&mut buf);
    Some(Ipv6Addr::from(buf))
}

/// Reads one dumped route back, if it is ours (protocol 254) and in `table`.
fn parse_route(msg: &RouteMessage, table: u32) -> Option<KernelRoute> {
    if msg.header.protocol != RouteProtocol::from(RTPROT_METALBOND) {
        return None;
    }
    let msg_table = msg
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(msg.header.table));
    if msg_table != table {
        return None;
    }
    let addr = msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(a)) => Some(IpAddr::V4(*a)),
        RouteAttribute::Destination(RouteAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
        _ => None,
    });
    let addr = match (addr, msg.header.address_family) {
        (Some(a), _) => a,
        (None, AddressFamily::Inet) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        (None, AddressFamily::Inet6) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        (None, _) => return None,
    };
    let mut next_hops: Vec<Ipv6Addr> = Vec::new();
    next_hops.extend(encap_dst(&msg.attributes));
    for a in &msg.attributes {
        if let RouteAttribute::MultiPath(hops) = a {
            next_hops.extend(hops.iter().filter_map(|nh| encap_dst(&nh.attributes)));
        }
    }
    next_hops.sort_unstable();
    next_hops.dedup();
    Some(KernelRoute {
        table,
        dest: Prefix::new(addr, msg.header.destination_prefix_length),
        next_hops,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_validation() {
        let p = |s: &str, l| Prefix::new(s.parse().unwrap(), l);
        assert_eq!(p("10.0.1.0", 24).invalid_reason(), None);
        assert_eq!(p("0.0.0.0", 0).invalid_reason(), None);
        assert_eq!(p("10.0.1.1", 32).invalid_reason(), None);
        assert!(p("10.0.1.1", 24).invalid_reason().is_some());
        assert!(p("10.0.1.0", 33).invalid_reason().is_some());
        assert_eq!(p("2001:db8::", 32).invalid_reason(), None);
        assert_eq!(p("::", 0).invalid_reason(), None);
        assert!(p("2001:db8::1", 64).invalid_reason().is_some());
        assert!(p("2001:db8::", 129).invalid_reason().is_some());
    }

    #[test]
    fn table_zero_is_rejected_before_any_io() {
        let target = Target {
            table: 0,
            prefix: Some(Prefix::new("10.0.0.0".parse().unwrap(), 8)),
        };
        let err = validate(KernelOp::Delete, target).unwrap_err();
        assert!(!err.is_retryable());
        assert_eq!(
            err.to_string(),
            "kernel: delete route 10.0.0.0/8 in table 0: table 0 is not a valid routing table"
        );
    }

    #[test]
    fn message_for_big_table_uses_rta_table() {
        let msg = base_message(1000, Prefix::new("2001:db8::".parse().unwrap(), 64));
        assert_eq!(msg.header.table, 0);
        assert!(msg.attributes.contains(&RouteAttribute::Table(1000)));
        let msg = base_message(100, Prefix::new("10.0.0.0".parse().unwrap(), 8));
        assert_eq!(msg.header.table, 100);
    }

    #[test]
    fn raw_encap_is_decoded() {
        let dst: Ipv6Addr = "2001:db8::7".parse().unwrap();
        let raw = DefaultNla::new(LWTUNNEL_IP6_DST, dst.octets().to_vec());
        let attrs = [
            RouteAttribute::Encap(vec![RouteLwTunnelEncap::Other(raw)]),
            RouteAttribute::EncapType(RouteLwEnCapType::Ip6),
        ];
        assert_eq!(encap_dst(&attrs), Some(dst));
    }
}
