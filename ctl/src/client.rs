//! Connecting to metalbondd's API socket, and calls with a time limit.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::error::CliError;

/// The socket of a system daemon.
pub const SYSTEM_SOCKET: &str = "/run/metalbondd/api.sock";

/// The default socket path: `/run/metalbondd/api.sock` if it exists, else
/// `$XDG_RUNTIME_DIR/metalbondd/api.sock`, else `/tmp/metalbondd-<uid>/api.sock`.
pub fn default_socket() -> PathBuf {
    resolve_default_socket(
        Path::new(SYSTEM_SOCKET).exists(),
        std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from),
        current_uid(),
    )
}

/// The rule of [`default_socket`], without looking at the machine.
pub fn resolve_default_socket(
    system_exists: bool,
    xdg_runtime_dir: Option<PathBuf>,
    uid: u32,
) -> PathBuf {
    if system_exists {
        return PathBuf::from(SYSTEM_SOCKET);
    }
    match xdg_runtime_dir {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join("metalbondd").join("api.sock"),
        _ => PathBuf::from(format!("/tmp/metalbondd-{uid}/api.sock")),
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
        assert_eq!(
            resolve_default_socket(true, Some("/run/user/1000".into()), 1000),
            PathBuf::from("/run/metalbondd/api.sock")
        );
        assert_eq!(
            resolve_default_socket(false, Some("/run/user/1000".into()), 1000),
            PathBuf::from("/run/user/1000/metalbondd/api.sock")
        );
        assert_eq!(
            resolve_default_socket(false, None, 1000),
            PathBuf::from("/tmp/metalbondd-1000/api.sock")
        );
        assert_eq!(
            resolve_default_socket(false, Some("".into()), 7),
            PathBuf::from("/tmp/metalbondd-7/api.sock")
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
