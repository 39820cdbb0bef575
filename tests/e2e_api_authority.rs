//! Any `:authority` on the API listeners (issue 10, docs/adr/0012): stock
//! gRPC clients on a Unix socket (gRPC core: Python, C++, Ruby, ...; and
//! grpc-java) send the socket path as the HTTP/2 `:authority`, which stock h2
//! answers with RST_STREAM PROTOCOL_ERROR on every stream.
//!
//! - A hand-built HTTP/2 client (tonic and h2 cannot send such an authority)
//!   calls health Check and DaemonService GetStatus with path-like
//!   authorities, over the Unix socket and the TCP API listener.
//! - An independent client, Python `grpcio` with its default authority,
//!   lists the services over reflection v1 and v1alpha, calls health and
//!   real RPCs (tests/python/grpc_unix_client.py). Its venv is prepared by
//!   `.ci/run` and found through `METALBONDD_TEST_PYTHON`; without it the
//!   test prints `SKIPPED` and passes, unless `CI=true`, where it fails.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use metalbond_proto::api as pb;
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

// --- a minimal HTTP/2 client: literal HPACK headers, frames by hand --------

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 section 5.1).
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// Header fields as "literal without indexing, new name", no Huffman coding:
/// the value goes on the wire exactly as given.
fn hpack_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        hpack_int(&mut out, 0, 7, name.len());
        out.extend(name.as_bytes());
        hpack_int(&mut out, 0, 7, value.len());
        out.extend(value.as_bytes());
    }
    out
}

/// The outcome of one call: the response message bytes, or how the stream
/// ended without one.
type CallResult = Result<Vec<u8>, String>;

/// Sends unary gRPC calls `(path, request)` on one HTTP/2 connection with the
/// given `:authority`, and returns each call's response message (the first
/// message of the DATA frames) or the reset that ended it.
async fn grpc_calls<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    authority: &str,
    calls: &[(&str, Vec<u8>)],
) -> Vec<CallResult> {
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    for (i, (path, request)) in calls.iter().enumerate() {
        let stream = 1 + 2 * i as u32;
        let block = hpack_block(&[
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]);
        out.extend(frame(HEADERS, END_HEADERS, stream, &block));
        let mut message = vec![0];
        message.extend((request.len() as u32).to_be_bytes());
        message.extend(request);
        out.extend(frame(DATA, END_STREAM, stream, &message));
    }
    io.write_all(&out).await.unwrap();

    let mut data: Vec<Vec<u8>> = vec![Vec::new(); calls.len()];
    let mut results: Vec<Option<CallResult>> = vec![None; calls.len()];
    let read_all = async {
        while results.iter().any(Option::is_none) {
            let mut head = [0u8; 9];
            if let Err(e) = io.read_exact(&mut head).await {
                for r in results.iter_mut().filter(|r| r.is_none()) {
                    *r = Some(Err(format!("connection ended: {e}")));
                }
                break;
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let (kind, flags) = (head[3], head[4]);
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let mut payload = vec![0u8; len];
            io.read_exact(&mut payload).await.unwrap();
            let call = (stream % 2 == 1)
                .then(|| (stream as usize - 1) / 2)
                .filter(|c| *c < calls.len());
            match (kind, call) {
                (SETTINGS, _) if flags & ACK == 0 => {
                    io.write_all(&frame(SETTINGS, ACK, 0, &[])).await.unwrap()
                }
                (PING, _) if flags & ACK == 0 => {
                    io.write_all(&frame(PING, ACK, 0, &payload)).await.unwrap()
                }
                (GOAWAY, _) => {
                    let code = u32::from_be_bytes(payload[4..8].try_into().unwrap());
                    for r in results.iter_mut().filter(|r| r.is_none()) {
                        *r = Some(Err(format!("GOAWAY {code}")));
                    }
                }
                (RST_STREAM, Some(c)) => {
                    let code = u32::from_be_bytes(payload[..4].try_into().unwrap());
                    results[c] = Some(Err(format!("RST_STREAM {code}")));
                }
                (DATA | HEADERS, Some(c)) => {
                    if kind == DATA {
                        data[c].extend(&payload);
                    }
                    if flags & END_STREAM != 0 {
                        // A gRPC message: compressed flag, length, bytes. An
                        // error answer is trailers only, without one.
                        results[c] = Some(match data[c].get(5..) {
                            Some(m) => Ok(m.to_vec()),
                            None => Err("no response message".to_string()),
                        });
                    }
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(T, read_all)
        .await
        .expect("the calls did not end in time");
    results.into_iter().map(Option::unwrap).collect()
}

/// Health Check and GetStatus with `authority`; both must answer.
async fn check_answers<S: AsyncRead + AsyncWrite + Unpin>(io: &mut S, authority: &str) {
    let health = tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    };
    let results = grpc_calls(
        io,
        authority,
        &[
            ("/grpc.health.v1.Health/Check", health.encode_to_vec()),
            (
                "/metalbondd.v1.DaemonService/GetStatus",
                pb::GetStatusRequest {}.encode_to_vec(),
            ),
        ],
    )
    .await;
    let health = results[0]
        .as_ref()
        .unwrap_or_else(|e| panic!("health Check with :authority {authority:?}: {e}"));
    let health = tonic_health::pb::HealthCheckResponse::decode(&health[..]).unwrap();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let status = results[1]
        .as_ref()
        .unwrap_or_else(|e| panic!("GetStatus with :authority {authority:?}: {e}"));
    let status = pb::Status::decode(&status[..]).unwrap();
    assert_eq!(status.version, env!("CARGO_PKG_VERSION"));
}

/// What gRPC core and grpc-java send for a Unix socket, and a name.
fn authorities(socket: &Path) -> Vec<String> {
    let path = socket.display().to_string();
    vec![
        path.clone(),
        format!("unix:{path}"),
        format!("unix://{path}"),
        path.replace('/', "%2F"),
        "localhost".to_string(),
    ]
}

#[tokio::test]
async fn a_socket_path_authority_gets_answers_on_both_listeners() {
    let (d, port) = common::api::start_with_tcp_api("").await;
    let socket = d.api_socket();
    for authority in authorities(&socket) {
        let mut unix = tokio::net::UnixStream::connect(&socket).await.unwrap();
        check_answers(&mut unix, &authority).await;
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        check_answers(&mut tcp, &authority).await;
    }
    assert!(d.is_alive());
}

// --- Python grpcio ----------------------------------------------------------

/// The venv's python (`METALBONDD_TEST_PYTHON`), or None after printing why
/// the test is skipped; under `CI=true` a missing venv fails the test.
fn grpcio_python(test: &str) -> Option<String> {
    let reason = match std::env::var("METALBONDD_TEST_PYTHON") {
        Ok(p) if !p.is_empty() => {
            let ok = Command::new(&p)
                .args(["-c", "import grpc, grpc_health.v1, grpc_reflection.v1alpha"])
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Some(p);
            }
            format!("METALBONDD_TEST_PYTHON={p} cannot import grpc, grpc_health, grpc_reflection")
        }
        _ => "METALBONDD_TEST_PYTHON is not set (.ci/run prepares the grpcio venv)".to_string(),
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: cannot run with CI=true: {reason}");
    }
    // Past the test harness's output capture, so that it shows in a passing run.
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
    None
}

#[tokio::test]
async fn python_grpcio_with_its_default_authority() {
    let Some(python) = grpcio_python("python_grpcio_with_its_default_authority") else {
        return;
    };
    let d = Daemon::start(&[]);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/python/grpc_unix_client.py"
    );
    let socket = d.api_socket();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .arg(&socket)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .output()
            .unwrap()
    });
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), out)
        .await
        .expect("the Python client did not finish in 60 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the Python client failed ({}):\n{stdout}\n{stderr}\ndaemon log:\n{}",
        out.status,
        d.logs()
    );
    let lines: Vec<&str> = stdout.lines().collect();
    for version in ["v1", "v1alpha"] {
        let line = lines
            .iter()
            .find(|l| l.starts_with(&format!("reflection {version}: ")))
            .unwrap_or_else(|| panic!("no reflection {version} line:\n{stdout}"));
        for service in [
            "grpc.health.v1.Health",
            "metalbondd.v1.ClientService",
            "metalbondd.v1.DaemonService",
            "metalbondd.v1.FleetService",
            "metalbondd.v1.PeerService",
            "metalbondd.v1.RouteService",
            "metalbondd.v1.VniService",
        ] {
            assert!(line.split(' ').any(|s| s == service), "{line}");
        }
    }
    for expected in [
        "health (server): SERVING",
        "health metalbondd.v1.RouteService: SERVING",
        "announce: added=1",
        // ROUTE_TYPE_NAT = 2 in the API's enum.
        "route: 23#10.0.99.0/24@2001:db8::99 type=2 nat=1024-2047",
        &format!("status: version={} routes=1", env!("CARGO_PKG_VERSION")),
    ] {
        assert!(lines.contains(&expected), "no {expected:?} in:\n{stdout}");
    }
    // The route is really in the daemon.
    let mut api = common::api::connect(&d.api_socket()).await;
    let routes = common::api::list_all(&mut api, None, 0).await;
    let texts: Vec<String> = routes
        .iter()
        .map(|e| common::api::route_text(e.route.as_ref().unwrap()))
        .collect();
    assert_eq!(texts, ["23#10.0.99.0/24@2001:db8::99#nat#1024#2047"]);
    // The fleet view through Python: this server alone, its digest of VNI
    // 23 the one VniService gives.
    let vni = api
        .vnis
        .get_vni(metalbond_proto::api::GetVniRequest { vni: 23 })
        .await
        .unwrap()
        .into_inner();
    let want = format!(
        "fleet: source=self members=1 disagreeing=0 digests 23=1/{}",
        vni.digest
    );
    assert!(lines.contains(&want.as_str()), "no {want:?} in:\n{stdout}");
}
