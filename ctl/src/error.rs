//! Errors of `mbctl`, their exit codes and how they are printed.

use std::fmt;
use std::io;
use std::path::PathBuf;

use serde::Serialize;

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: the daemon answered with an error (a gRPC status), or a watch lagged.
pub const EXIT_DAEMON: u8 = 1;
/// Exit code: bad usage or an argument that does not parse.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the daemon's socket cannot be reached.
pub const EXIT_CONNECT: u8 = 3;

/// Everything that makes `mbctl` fail.
#[derive(Debug)]
pub enum CliError {
    /// A bad argument, found before anything was sent (exit 2).
    Usage(String),
    /// The socket cannot be connected to (exit 3).
    Connect {
        /// The socket path tried.
        socket: PathBuf,
        /// Why connecting failed.
        source: io::Error,
    },
    /// The daemon answered with a gRPC error status (exit 1).
    Status(tonic::Status),
    /// A call took longer than `--timeout` (exit 1).
    Timeout {
        /// What was being done.
        what: &'static str,
        /// The limit, in seconds.
        secs: f64,
    },
    /// A watch stream fell behind and was ended by the daemon (exit 1).
    Lagged(String),
    /// Anything else (exit 1), e.g. an answer that makes no sense.
    Other(String),
    /// Writing the output failed. A closed pipe (`mbctl routes | head`) ends
    /// `mbctl` quietly with exit 0; other write errors exit 1.
    Output(io::Error),
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => EXIT_USAGE,
            CliError::Connect { .. } => EXIT_CONNECT,
            CliError::Status(_)
            | CliError::Timeout { .. }
            | CliError::Lagged(_)
            | CliError::Other(_) => EXIT_DAEMON,
            CliError::Output(e) if e.kind() == io::ErrorKind::BrokenPipe => EXIT_OK,
            CliError::Output(_) => EXIT_DAEMON,
        }
    }

    /// The gRPC-style code name used in JSON error documents (`NOT_FOUND`, ...).
    pub fn code_name(&self) -> &'static str {
        match self {
            CliError::Usage(_) => "INVALID_ARGUMENT",
            CliError::Connect { .. } => "UNAVAILABLE",
            CliError::Status(s) => code_name(s.code()),
            CliError::Timeout { .. } => "DEADLINE_EXCEEDED",
            CliError::Lagged(_) => "ABORTED",
            CliError::Other(_) | CliError::Output(_) => "UNKNOWN",
        }
    }

    /// Whether the error is reported at all (a closed output pipe is not).
    pub fn is_silent(&self) -> bool {
        matches!(self, CliError::Output(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }

    /// The JSON error document: `{"error": {"code": "NOT_FOUND", "message": "..."}}`.
    pub fn to_json(&self) -> ErrorDocument {
        ErrorDocument {
            error: ErrorBody {
                code: self.code_name().to_string(),
                message: self.message(),
            },
        }
    }

    /// The message, one line. For a gRPC status this is the daemon's message
    /// alone (the code is reported separately); otherwise it is the text
    /// printed after `mbctl: `.
    pub fn message(&self) -> String {
        match self {
            CliError::Status(s) if !s.message().is_empty() => one_line(s.message()),
            _ => one_line(&self.to_string()),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(m) | CliError::Other(m) => f.write_str(m),
            CliError::Connect { socket, source } => {
                let hint = match source.kind() {
                    io::ErrorKind::PermissionDenied => "is your user in the socket's group?",
                    _ => "is the daemon running?",
                };
                write!(
                    f,
                    "cannot connect to metalbondd at {}: {} ({hint})",
                    socket.display(),
                    io_error_text(source)
                )
            }
            CliError::Status(s) => {
                if s.message().is_empty() {
                    write!(f, "{}", code_name(s.code()))
                } else {
                    write!(f, "{} ({})", one_line(s.message()), code_name(s.code()))
                }
            }
            CliError::Timeout { what, secs } => {
                write!(f, "{what} timed out after {secs}s (see --timeout)")
            }
            CliError::Output(e) => write!(f, "cannot write output: {}", io_error_text(e)),
            CliError::Lagged(reason) => write!(
                f,
                "watch lagged behind and was ended by the daemon: {reason} (watch again)"
            ),
        }
    }
}

impl std::error::Error for CliError {}

impl From<tonic::Status> for CliError {
    fn from(s: tonic::Status) -> Self {
        CliError::Status(s)
    }
}

/// `{"error": {...}}`.
#[derive(Debug, Serialize)]
pub struct ErrorDocument {
    /// The error.
    pub error: ErrorBody,
}

/// The body of an [`ErrorDocument`].
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    /// A gRPC code name (`NOT_FOUND`, `INVALID_ARGUMENT`, `UNAVAILABLE`, ...).
    pub code: String,
    /// What went wrong, one line.
    pub message: String,
}

/// The canonical upper-case name of a gRPC code.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// An I/O error as text without Rust's ` (os error 2)` suffix.
fn io_error_text(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Joins the lines of `s` so that an error is always printed on one line.
fn one_line(s: &str) -> String {
    s.split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        assert_eq!(CliError::Usage("x".into()).exit_code(), 2);
        let connect = CliError::Connect {
            socket: "/nope".into(),
            source: io::Error::from(io::ErrorKind::NotFound),
        };
        assert_eq!(connect.exit_code(), 3);
        assert_eq!(
            CliError::Status(tonic::Status::not_found("x")).exit_code(),
            1
        );
        assert_eq!(CliError::Lagged("x".into()).exit_code(), 1);
        assert_eq!(
            CliError::Timeout {
                what: "x",
                secs: 1.0
            }
            .exit_code(),
            1
        );
        assert_eq!(CliError::Other("x".into()).exit_code(), 1);
    }

    #[test]
    fn connect_error_is_one_clear_line() {
        let e = CliError::Connect {
            socket: "/run/metalbondd/api.sock".into(),
            source: io::Error::from_raw_os_error(2),
        };
        assert_eq!(
            e.to_string(),
            "cannot connect to metalbondd at /run/metalbondd/api.sock: \
             No such file or directory (is the daemon running?)"
        );
    }

    #[test]
    fn json_error_shape() {
        let e = CliError::Status(tonic::Status::not_found("no session 7\nsecond line"));
        let v = serde_json::to_value(e.to_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": {"code": "NOT_FOUND", "message": "no session 7 second line"}})
        );
        assert_eq!(e.to_string(), "no session 7 second line (NOT_FOUND)");
        let v = serde_json::to_value(CliError::Usage("bad".into()).to_json()).unwrap();
        assert_eq!(v["error"]["code"], "INVALID_ARGUMENT");
    }
}
