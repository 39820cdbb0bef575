//! Connecting to metalbondd's API socket, and calls with a time limit.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::error::CliError;

/// Which daemon `mbctl` talks to when no socket is given: the route server
/// (also a daemon running both roles) or the client (hypervisor) role
/// alone, which has its own default paths (`metalbondd-client`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// `metalbondd` / `metalbondd server`: `/run/metalbondd/api.sock`.
    Server,
    /// `metalbondd client`: `/run/metalbondd-client/api.sock`.
    Client,
}

impl Role {
    /// The directory name the daemon uses for this role.
    fn dir_name(self) -> &'static str {
        match self {
            Role::Server => "metalbondd",
            Role::Client => "metalbondd-client",
        }
    }
}

/// What is at a candidate socket path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// Nothing.
    Missing,
    /// A file this user may not write (another user's daemon).
    Present,
    /// A file this user may write: a socket it can connect to.
    Usable,
}

/// The default socket path, as the daemon picks it (see
/// [`resolve_default_socket`]).
pub fn default_socket(role: Option<Role>) -> PathBuf {
    resolve_default_socket(
        role,
        probe,
        std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from),
        current_uid(),
    )
}

fn probe(path: &Path) -> Probe {
    use std::os::unix::ffi::OsStrExt;
    if !path.exists() {
        return Probe::Missing;
    }
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return Probe::Present;
    };
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let writable =
        unsafe { libc::faccessat(libc::AT_FDCWD, c.as_ptr(), libc::W_OK, libc::AT_EACCESS) } == 0;
    if writable {
        Probe::Usable
    } else {
        Probe::Present
    }
}

/// Where the daemon of `role` puts its socket, in its order of preference:
/// `/run/NAME/api.sock`, `$XDG_RUNTIME_DIR/NAME/api.sock`,
/// `/tmp/NAME-UID/api.sock` (NAME `metalbondd` or `metalbondd-client`).
fn candidates(role: Role, xdg_runtime_dir: Option<&Path>, uid: u32) -> Vec<PathBuf> {
    let name = role.dir_name();
    let mut out = vec![Path::new("/run").join(name).join("api.sock")];
    if let Some(dir) = xdg_runtime_dir.filter(|d| d.is_absolute()) {
        out.push(dir.join(name).join("api.sock"));
    }
    out.push(PathBuf::from(format!("/tmp/{name}-{uid}/api.sock")));
    out
}

/// The rule of [`default_socket`], without looking at the machine (`probe`
/// says what is at a path): the first socket of `role` this user may
/// write; with no role given, of the server, else of the client role (so a
/// host running only `metalbondd client` needs no option). Failing that,
/// the first one there at all (connecting then says "permission denied"
/// and how to fix it); with none there, where the daemon of that role (the
/// server's if none given) would put it: `/run/...` for root, else under
/// `$XDG_RUNTIME_DIR`, else under `/tmp`.
pub fn resolve_default_socket(
    role: Option<Role>,
    probe: impl Fn(&Path) -> Probe,
    xdg_runtime_dir: Option<PathBuf>,
    uid: u32,
) -> PathBuf {
    let xdg = xdg_runtime_dir.as_deref();
    let roles: &[Role] = match role {
        Some(Role::Server) => &[Role::Server],
        Some(Role::Client) => &[Role::Client],
        None => &[Role::Server, Role::Client],
    };
    let all: Vec<PathBuf> = roles
        .iter()
        .flat_map(|&r| candidates(r, xdg, uid))
        .collect();
    for wanted in [Probe::Usable, Probe::Present] {
        if let Some(found) = all.iter().find(|p| probe(p) == wanted) {
            return found.clone();
        }
    }
    let mut expected = candidates(roles[0], xdg, uid);
    if uid == 0 {
        expected.swap_remove(0)
    } else {
        expected.remove(1)
    }
}

/// The real user id of this process (the owner of `/proc/self`).
fn current_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(0)
}

/// Opens a gRPC channel over the Unix socket at `path`.
///
/// The socket is connected here, eagerly, so that a daemon that is not
/// running is reported precisely (exit 3); the HTTP/2 handshake then runs
/// over that connection. Should the channel need to reconnect later, it
/// connects to the same path again.
pub async fn connect(path: &Path, timeout: Duration) -> Result<Channel, CliError> {
    let connect_error = |source| CliError::Connect {
        socket: path.to_path_buf(),
        source,
    };
    let stream = match tokio::time::timeout(timeout, UnixStream::connect(path)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(connect_error(e)),
        Err(_) => {
            return Err(connect_error(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connection timed out",
            )))
        }
    };
    let first = Arc::new(Mutex::new(Some(stream)));
    let socket = path.to_path_buf();
    let connector = tower::service_fn(move |_: Uri| {
        let first = first.lock().ok().and_then(|mut s| s.take());
        let socket = socket.clone();
        async move {
            let stream = match first {
                Some(s) => s,
                None => UnixStream::connect(&socket).await?,
            };
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    // The URI is not used to connect; it only sets `:authority`.
    let endpoint = Endpoint::from_static("http://localhost").connect_timeout(timeout);
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| CliError::Connect {
            socket: path.to_path_buf(),
            source: std::io::Error::other(error_chain(&e)),
        })
}

/// Opens a gRPC channel to a TCP API listener at `addr` (`HOST:PORT`),
/// connected eagerly like [`connect`] (a failure is exit 3).
pub async fn connect_tcp(addr: &str, timeout: Duration) -> Result<Channel, CliError> {
    let connect_error = |source| CliError::Connect {
        socket: PathBuf::from(format!("tcp://{addr}")),
        source,
    };
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| connect_error(std::io::Error::other(error_chain(&e))))?
        .connect_timeout(timeout);
    match tokio::time::timeout(timeout, endpoint.connect()).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(e)) => Err(connect_error(std::io::Error::other(error_chain(&e)))),
        Err(_) => Err(connect_error(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connection timed out",
        ))),
    }
}

/// Runs one call with the `--timeout` limit (the limit covers the answer's
/// arrival; a watch stream itself may then run for ever).
pub async fn call<T, F>(what: &'static str, timeout: Duration, fut: F) -> Result<T, CliError>
where
    F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(resp)) => Ok(resp.into_inner()),
        Ok(Err(status)) => Err(CliError::Status(status)),
        Err(_) => Err(CliError::Timeout {
            what,
            secs: timeout.as_secs_f64(),
        }),
    }
}

/// An error and its sources as one line (`a: b: c`), without repeats.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut src = e.source();
    while let Some(s) = src {
        let t = s.to_string();
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        src = s.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_socket_rule() {
        let p = PathBuf::from;
        let xdg = || Some(p("/run/user/1000"));
        let only = |there: &[&str]| {
            let there: Vec<PathBuf> = there.iter().map(PathBuf::from).collect();
            move |x: &Path| {
                if there.iter().any(|t| t == x) {
                    Probe::Usable
                } else {
                    Probe::Missing
                }
            }
        };
        let server = "/run/metalbondd/api.sock";
        let client = "/run/metalbondd-client/api.sock";
        let user_server = "/run/user/1000/metalbondd/api.sock";
        let user_client = "/run/user/1000/metalbondd-client/api.sock";
        // The system daemon first, then the user's; the server's first.
        assert_eq!(
            resolve_default_socket(None, only(&[server, user_server]), xdg(), 1000),
            p(server)
        );
        assert_eq!(
            resolve_default_socket(None, only(&[user_server, client]), xdg(), 1000),
            p(user_server)
        );
        // Only a client-role daemon: found without naming the role.
        assert_eq!(
            resolve_default_socket(None, only(&[user_client]), xdg(), 1000),
            p(user_client)
        );
        assert_eq!(
            resolve_default_socket(None, only(&["/tmp/metalbondd-client-7/api.sock"]), None, 7),
            p("/tmp/metalbondd-client-7/api.sock")
        );
        // Both there: the role picks.
        assert_eq!(
            resolve_default_socket(Some(Role::Client), only(&[server, client]), xdg(), 0),
            p(client)
        );
        assert_eq!(
            resolve_default_socket(Some(Role::Server), only(&[server, client]), xdg(), 0),
            p(server)
        );
        // Nothing there: where that role's daemon would be.
        assert_eq!(
            resolve_default_socket(None, only(&[]), xdg(), 1000),
            p(user_server)
        );
        assert_eq!(
            resolve_default_socket(Some(Role::Client), only(&[]), xdg(), 1000),
            p(user_client)
        );
        assert_eq!(
            resolve_default_socket(None, only(&[]), None, 1000),
            p("/tmp/metalbondd-1000/api.sock")
        );
        assert_eq!(
            resolve_default_socket(None, only(&[]), Some(p("")), 7),
            p("/tmp/metalbondd-7/api.sock")
        );
        assert_eq!(
            resolve_default_socket(Some(Role::Client), only(&[]), xdg(), 0),
            p(client)
        );
        // Another user's socket comes after this user's, but before none.
        let root_server = |x: &Path| match x.to_str() {
            Some("/run/metalbondd/api.sock") => Probe::Present,
            Some("/run/user/1000/metalbondd-client/api.sock") => Probe::Usable,
            _ => Probe::Missing,
        };
        assert_eq!(
            resolve_default_socket(None, root_server, xdg(), 1000),
            p(user_client)
        );
        assert_eq!(
            resolve_default_socket(Some(Role::Server), root_server, xdg(), 1000),
            p(server)
        );
        // Only the client role's: not taken when the server is asked for.
        assert_eq!(
            resolve_default_socket(Some(Role::Server), only(&[client]), None, 0),
            p(server)
        );
    }

    #[tokio::test]
    async fn missing_socket_is_a_connect_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nothing.sock");
        let err = connect(&path, Duration::from_secs(1)).await.unwrap_err();
        assert_eq!(err.exit_code(), crate::error::EXIT_CONNECT);
        assert!(
            err.to_string()
                .ends_with("No such file or directory (is the daemon running?)"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn refused_socket_is_a_connect_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stale.sock");
        // A socket file nobody listens on (a daemon that died).
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let err = connect(&path, Duration::from_secs(1)).await.unwrap_err();
        assert_eq!(err.exit_code(), crate::error::EXIT_CONNECT);
        assert!(err.to_string().contains("Connection refused"), "{err}");
    }
}
