//! The batched netlink writer behind [`super::Installer::replace`] and
//! [`super::Installer::delete`] (ADR 0022).
//!
//! Route changes do not go through rtnetlink's per-request machinery (a
//! channel, a stream and a `send` per request, one ACK message and one
//! `recv` per request). A dedicated thread owns a blocking `NETLINK_ROUTE`
//! socket; callers queue requests on a channel, and the thread takes
//! everything queued (up to [`MAX_BATCH`]) as one batch: it encodes the
//! batch into one buffer, writes it with **one** `send`, and asks for an ACK
//! on the **last** message only. The kernel processes the messages of one
//! write in order and answers an error for each failed message (always, ACK
//! asked or not) and the ACK of the last one after them, on the same socket
//! and in order; so once the last message's answer is read, every message
//! without an error message succeeded, and each error names its message by
//! sequence number. Errors are therefore still per route.
//!
//! While the thread writes one batch the next one gathers in the channel, so
//! the batch size follows the load by itself (one route when idle, hundreds
//! under a burst).
//!
//! If the kernel could not queue an answer (`ENOBUFS`: the receive buffer
//! overflowed), the messages of the batch whose outcome is unknown fail with
//! `ENOBUFS`, which is retryable: the caller retries them (a replace and a
//! delete are idempotent).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc;

use rtnetlink::packet_core::Emitable;
use rtnetlink::packet_route::route::RouteScope;
use tokio::sync::oneshot;

use super::{base_message, route_message, KernelError, KernelOp, KernelRoute, Prefix, Target};

/// Most messages in one write (and so error answers the receive buffer
/// must hold at once).
const MAX_BATCH: usize = 1024;

/// `RTM_NEWROUTE`, `RTM_DELROUTE`, `NLMSG_ERROR`, `NLMSG_DONE`.
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const NLMSG_ERROR: u16 = 2;

const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;

/// The netlink message header's length.
const NLMSG_HDRLEN: usize = 16;

/// The receive buffer asked for: room for the error answers of a whole
/// batch even if every message fails.
const RCVBUF: libc::c_int = 8 << 20;

/// How long the thread waits for the kernel's answer to a batch before
/// failing it (a safety net: the kernel answers within the write).
const ANSWER_TIMEOUT_SECS: libc::time_t = 10;

/// One route change, as queued to the writer thread.
pub(super) enum Change {
    /// Install or replace this route (validated, next hops sorted,
    /// deduplicated, not empty).
    Replace(KernelRoute),
    /// Delete the protocol-254 route of (table, prefix) (validated).
    Delete(u32, Prefix),
}

impl Change {
    fn op(&self) -> KernelOp {
        match self {
            Change::Replace(_) => KernelOp::Replace,
            Change::Delete(..) => KernelOp::Delete,
        }
    }

    fn target(&self) -> Target {
        match self {
            Change::Replace(r) => Target {
                table: r.table,
                prefix: Some(r.dest),
            },
            Change::Delete(table, prefix) => Target {
                table: *table,
                prefix: Some(*prefix),
            },
        }
    }
}

/// The outcome of a change: for a delete, whether the route existed.
pub(super) type Outcome = Result<bool, KernelError>;

struct Request {
    change: Change,
    reply: oneshot::Sender<Outcome>,
}

/// The handle of the writer thread; the thread ends when it is dropped.
pub(super) struct Writer {
    tx: mpsc::Sender<Request>,
}

impl Writer {
    /// Opens the netlink socket (in the network namespace of the calling
    /// thread) and starts the writer thread.
    pub(super) fn start(tun_index: u32) -> Result<Writer, KernelError> {
        let sock = open_socket().map_err(KernelError::Socket)?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("netlink-writer".into())
            .spawn(move || run(sock, tun_index, rx))
            .map_err(KernelError::Socket)?;
        Ok(Writer { tx })
    }

    /// Queues `change`; the receiver gets its outcome.
    pub(super) fn submit(&self, change: Change) -> oneshot::Receiver<Outcome> {
        let (reply, rx) = oneshot::channel();
        let target = change.target();
        let op = change.op();
        if let Err(mpsc::SendError(req)) = self.tx.send(Request { change, reply }) {
            let _ = req.reply.send(Err(gone(op, target)));
        }
        rx
    }
}

/// The error of a change whose writer thread is gone.
pub(super) fn gone(op: KernelOp, target: Target) -> KernelError {
    KernelError::Transport {
        op,
        target,
        message: "the netlink writer stopped".into(),
    }
}

fn open_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: a zeroed sockaddr_nl is valid (port 0: the kernel picks one).
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: `addr` is a valid sockaddr_nl of the given size.
    let r = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&raw const addr).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // Error answers without a copy of the request: smaller, so more fit.
    let _ = setsockopt(&sock, libc::SOL_NETLINK, libc::NETLINK_CAP_ACK, 1);
    // A big receive buffer (FORCE works for root, else the plain option up
    // to the system's maximum).
    if setsockopt(&sock, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, RCVBUF).is_err() {
        let _ = setsockopt(&sock, libc::SOL_SOCKET, libc::SO_RCVBUF, RCVBUF);
    }
    let timeout = libc::timeval {
        tv_sec: ANSWER_TIMEOUT_SECS,
        tv_usec: 0,
    };
    // SAFETY: `timeout` is a valid timeval of the given size.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sock)
}

fn setsockopt(
    sock: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `value` is a valid c_int of the given size.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The writer thread: batches of what is queued, until the [`Writer`] is
/// dropped.
fn run(sock: OwnedFd, tun_index: u32, rx: mpsc::Receiver<Request>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut out = Vec::with_capacity(64 * 1024);
    let mut answers = vec![0u8; 64 * 1024];
    let mut seq: u32 = 0;
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(req) => batch.push(req),
                Err(_) => break,
            }
        }
        let outcomes = write_batch(&sock, tun_index, &batch, &mut seq, &mut out, &mut answers);
        for (req, outcome) in batch.drain(..).zip(outcomes) {
            let _ = req.reply.send(outcome);
        }
    }
}

/// Encodes, writes and reads back one batch; one outcome per request.
fn write_batch(
    sock: &OwnedFd,
    tun_index: u32,
    batch: &[Request],
    seq: &mut u32,
    out: &mut Vec<u8>,
    answers: &mut [u8],
) -> Vec<Outcome> {
    let first_seq = seq.wrapping_add(1);
    let n = batch.len();
    out.clear();
    for (i, req) in batch.iter().enumerate() {
        let this_seq = first_seq.wrapping_add(i as u32);
        let mut flags = NLM_F_REQUEST;
        if i + 1 == n {
            flags |= NLM_F_ACK;
        }
        let (kind, msg) = match &req.change {
            Change::Replace(route) => {
                flags |= NLM_F_CREATE | NLM_F_REPLACE;
                (RTM_NEWROUTE, route_message(route, tun_index))
            }
            Change::Delete(table, prefix) => {
                let mut msg = base_message(*table, *prefix);
                // Scope "nowhere" lets IPv4 deletion match a route of any scope.
                msg.header.scope = RouteScope::NoWhere;
                (RTM_DELROUTE, msg)
            }
        };
        let len = NLMSG_HDRLEN + msg.buffer_len();
        let start = out.len();
        out.resize(start + len, 0);
        let hdr = &mut out[start..start + NLMSG_HDRLEN];
        hdr[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
        hdr[4..6].copy_from_slice(&kind.to_ne_bytes());
        hdr[6..8].copy_from_slice(&flags.to_ne_bytes());
        hdr[8..12].copy_from_slice(&this_seq.to_ne_bytes());
        hdr[12..16].copy_from_slice(&0u32.to_ne_bytes());
        msg.emit(&mut out[start + NLMSG_HDRLEN..start + len]);
    }
    *seq = first_seq.wrapping_add(n as u32 - 1);
    let last_seq = *seq;

    // Per request: None = no error seen (yet), Some(errno).
    let mut errors: Vec<Option<i32>> = vec![None; n];
    let fail_all = |message: String| -> Vec<Outcome> {
        batch
            .iter()
            .map(|r| {
                Err(KernelError::Transport {
                    op: r.change.op(),
                    target: r.change.target(),
                    message: message.clone(),
                })
            })
            .collect()
    };
    // SAFETY: `out` is a valid buffer of `out.len()` bytes.
    let sent = unsafe { libc::send(sock.as_raw_fd(), out.as_ptr().cast(), out.len(), 0) };
    if sent < 0 {
        let err = io::Error::last_os_error();
        let errno = err.raw_os_error().unwrap_or(libc::EIO);
        return batch
            .iter()
            .map(|r| Err(netlink_errno(r.change.op(), r.change.target(), errno)))
            .collect();
    }
    if sent as usize != out.len() {
        return fail_all(format!("short netlink write ({sent} of {})", out.len()));
    }
    let mut lost = None;
    'read: loop {
        // SAFETY: `answers` is a valid, writable buffer of its length.
        let got = unsafe {
            libc::recv(
                sock.as_raw_fd(),
                answers.as_mut_ptr().cast(),
                answers.len(),
                0,
            )
        };
        if got < 0 {
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                // Answers were dropped: the outcome of the messages without
                // an answer is unknown.
                Some(libc::ENOBUFS) => {
                    lost = Some(libc::ENOBUFS);
                    break;
                }
                Some(libc::EAGAIN) => {
                    return fail_all("no netlink answer within the timeout".into());
                }
                _ => return fail_all(format!("netlink receive: {err}")),
            }
        }
        let mut rest = &answers[..got as usize];
        while rest.len() >= NLMSG_HDRLEN {
            let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
            if len < NLMSG_HDRLEN || len > rest.len() {
                break;
            }
            let kind = u16::from_ne_bytes(rest[4..6].try_into().expect("2 bytes"));
            let mseq = u32::from_ne_bytes(rest[8..12].try_into().expect("4 bytes"));
            let idx = mseq.wrapping_sub(first_seq) as usize;
            if kind == NLMSG_ERROR && idx < n && len >= NLMSG_HDRLEN + 4 {
                let code = i32::from_ne_bytes(
                    rest[NLMSG_HDRLEN..NLMSG_HDRLEN + 4]
                        .try_into()
                        .expect("4 bytes"),
                );
                if code != 0 {
                    errors[idx] = Some(code.saturating_neg());
                }
                if mseq == last_seq {
                    break 'read;
                }
            }
            // Messages are aligned to 4 bytes.
            let step = (len + 3) & !3;
            rest = &rest[step.min(rest.len())..];
        }
    }
    batch
        .iter()
        .zip(errors)
        .map(|(req, error)| {
            let (op, target) = (req.change.op(), req.change.target());
            match (error.or(lost), &req.change) {
                (None, _) => Ok(true),
                (Some(libc::ESRCH), Change::Delete(..)) => Ok(false),
                (Some(errno), _) => Err(netlink_errno(op, target, errno)),
            }
        })
        .collect()
}

fn netlink_errno(op: KernelOp, target: Target, errno: i32) -> KernelError {
    KernelError::Netlink {
        op,
        target,
        errno,
        message: io::Error::from_raw_os_error(errno).to_string(),
    }
}
