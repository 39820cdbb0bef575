//! TLS on MetalBond sessions (issue 13, ADR 0026) with the real binaries:
//! a `metalbondd client` with a valid certificate on a server's TLS
//! listener, its identity selecting the policy class; a certificate from
//! another CA, an expired one and a plaintext HELLO on the TLS port
//! refused (and logged and counted) while the TLS session and a plaintext
//! peer on the plaintext listener keep getting updates; certificates
//! replaced by a reload, a bad file refused by it; the client role's
//! certificate renewed by a reload, presented on its next session.

mod common;

use std::path::Path;
use std::time::Duration;

use common::api::{connect, inject, Api};
use common::http::{get, value_or_zero};
use common::tls::{server_tls_toml, tls_client, tls_connect, Ca, Issued};
use common::*;
use metalbond_proto::api as pb;
use metalbondd::wire::{Hello, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CLIENT_ROUTE: &str = "100#10.17.0.0/24@2001:db8::17";
const IDENTITY: &str = "hv-17.hv.example.net";

fn server_config(dir: &Path, server: &Issued, ca: &Path) -> std::path::PathBuf {
    let path = dir.join("server.toml");
    let policy = r#"
[[policy.class]]
name = "hv-tls"
match_identity = ["*.hv.example.net"]
announce_vnis = ["100"]
"#;
    std::fs::write(&path, server_tls_toml(server, ca) + policy).unwrap();
    path
}

/// The TLS session's `Peer` on the server, once it is there (bounded).
async fn tls_peer(api: &mut Api) -> pb::Peer {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let peers = api::list_peers(api).await;
        if let Some(p) = peers.into_iter().find(|p| !p.tls_identity.is_empty()) {
            return p;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no TLS session listed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (bounded) until the client role has received `text`.
async fn client_received(api: &mut Api, text: &str) {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let routes = api
            .client
            .list_received_routes(pb::ListReceivedRoutesRequest { vni: Some(100) })
            .await
            .unwrap()
            .into_inner()
            .routes;
        if routes
            .iter()
            .any(|r| r.route.as_ref().map(common::api::route_text).as_deref() == Some(text))
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the TLS client never received {text}: {routes:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The server's log line of a failed handshake from `local`, with `reason`.
async fn handshake_refused(d: &Daemon, local: std::net::SocketAddr, reason: &str) -> String {
    let peer = format!("peer={local}");
    d.wait_for_line(
        |l| l.contains("TLS handshake failed") && l.contains(&peer) && l.contains(reason),
        T,
    )
    .await
    .unwrap_or_else(|| panic!("no refusal ({reason}) of {local}; log:\n{}", d.logs()))
}

/// A refused client: its first read ends (alert or close) instead of
/// bringing data.
async fn expect_refused(
    stream: std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
) {
    let Ok(mut s) = stream else { return };
    let mut buf = [0u8; 64];
    match tokio::time::timeout(T, s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!("a refused client read {n} bytes"),
        Err(_) => panic!("a refused client was neither closed nor alerted"),
    }
}

#[tokio::test]
async fn tls_sessions_identity_refusals_and_certificate_reload() {
    let dir = unique_temp_dir();
    let ca = Ca::new("metalbond test CA");
    let ca_file = ca.write(&dir.join("ca.pem"));
    let other_ca = Ca::new("some other CA");
    let server_cert = ca.issue(&dir, "server", &["127.0.0.1", "localhost"], false);
    let client_cert = ca.issue(&dir, "client", &[IDENTITY], false);
    let foreign = other_ca.issue(&dir, "foreign", &["hv-9.hv.example.net"], false);
    let expired = ca.issue(&dir, "expired", &["hv-8.hv.example.net"], true);

    let config = server_config(&dir, &server_cert, &ca_file);
    let d = Daemon::start(&[
        "--config",
        config.to_str().unwrap(),
        "--metrics",
        "127.0.0.1:0",
    ]);
    let tls_addr = d
        .wait_for_line(|l| l.contains("listening (TLS)"), T)
        .await
        .and_then(|l| parse_addr_field(&l))
        .unwrap_or_else(|| panic!("no TLS listener; log:\n{}", d.logs()));
    let metrics = d.http_addr("metrics").await;

    // A reference-style peer on the plaintext listener.
    let mut plain = RawPeer::established(d.addr).await;
    plain.subscribe(100).await;

    // Our client role over TLS, with a client certificate.
    let (client, _) = tls_client(&dir, tls_addr, &ca_file, &client_cert, 100, CLIENT_ROUTE);

    // Its route reaches the plaintext peer through the server; its
    // certificate's identity chose the class.
    plain
        .expect_exactly(&[add(route(CLIENT_ROUTE))], "the TLS client's route")
        .await;
    let mut api = connect(&d.api_socket()).await;
    let session = tls_peer(&mut api).await;
    assert_eq!(session.tls_identity, IDENTITY);
    assert_eq!(session.policy_class, "hv-tls");
    let plain_peer = api
        .peers
        .get_peer(pb::GetPeerRequest {
            peer: Some(pb::get_peer_request::Peer::Address(plain.local.to_string())),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(plain_peer.tls_identity, "");
    assert_eq!(plain_peer.policy_class, "default");

    // Refused: a certificate of another CA, an expired one, none at all,
    // and a plaintext HELLO.
    for (who, reason) in [(&foreign, "unknown_ca"), (&expired, "expired")] {
        let s = tls_connect(tls_addr, &ca_file, Some(who)).await;
        let local = match &s {
            Ok(s) => s.get_ref().0.local_addr().unwrap(),
            Err(e) => panic!("handshake of the {reason} client failed on the client side: {e}"),
        };
        expect_refused(s).await;
        handshake_refused(&d, local, reason).await;
    }
    let s = tls_connect(tls_addr, &ca_file, None).await;
    let local = s.as_ref().unwrap().get_ref().0.local_addr().unwrap();
    expect_refused(s).await;
    handshake_refused(&d, local, "no_certificate").await;
    // A plaintext peer on the TLS port gets a TLS alert record (content
    // type 21), then the connection closes.
    let mut raw = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
    let raw_local = raw.local_addr().unwrap();
    raw.write_all(&frame(&Message::Hello(Hello {
        keepalive_secs: 5,
        is_server: false,
        extensions: 0,
    })))
    .await
    .unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(T, raw.read_to_end(&mut reply))
        .await
        .expect("the TLS port did not close a plaintext peer")
        .unwrap();
    assert_eq!(reply.first(), Some(&21), "{reply:?}");
    handshake_refused(&d, raw_local, "not_tls").await;
    let text = get(metrics, "/metrics").await.body;
    for reason in ["unknown_ca", "expired", "no_certificate", "not_tls"] {
        assert_eq!(
            value_or_zero(
                &text,
                "metalbondd_tls_handshake_failures_total",
                &[("reason", reason)]
            ),
            1.0,
            "{reason}"
        );
    }

    // Neither the TLS session nor the plaintext peer noticed.
    inject(&d.api_socket(), &["100#10.99.0.0/24@2001:db8::99"]).await;
    plain
        .expect_exactly(
            &[add(route("100#10.99.0.0/24@2001:db8::99"))],
            "an update after the refusals",
        )
        .await;
    let mut client_api = connect(&dir.join("client.sock")).await;
    client_received(&mut client_api, "100#10.99.0.0/24@2001:db8::99").await;
    assert_eq!(tls_peer(&mut api).await.session_id, session.session_id);

    // Reload with a broken certificate file: refused, the old one stays.
    let first = tls_connect(tls_addr, &ca_file, Some(&client_cert))
        .await
        .unwrap();
    assert_eq!(
        first.get_ref().1.peer_certificates().unwrap()[0].as_ref(),
        server_cert.der.as_slice()
    );
    drop(first);
    let good_pem = std::fs::read(&server_cert.cert).unwrap();
    std::fs::write(&server_cert.cert, "not a certificate\n").unwrap();
    let refused = api.daemon.reload(pb::ReloadRequest {}).await;
    let err = refused.expect_err("a reload with a bad certificate file");
    assert!(
        err.message()
            .contains(&server_cert.cert.display().to_string()),
        "{}",
        err.message()
    );
    let still = tls_connect(tls_addr, &ca_file, Some(&client_cert))
        .await
        .unwrap();
    assert_eq!(
        still.get_ref().1.peer_certificates().unwrap()[0].as_ref(),
        server_cert.der.as_slice()
    );
    drop(still);
    std::fs::write(&server_cert.cert, good_pem).unwrap();

    // Replace the certificate files and reload: new handshakes see the new
    // certificate, the established session stays.
    let renewed = ca.issue(&dir, "renewed", &["127.0.0.1"], false);
    std::fs::copy(&renewed.cert, &server_cert.cert).unwrap();
    std::fs::copy(&renewed.key, &server_cert.key).unwrap();
    let reply = api
        .daemon
        .reload(pb::ReloadRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        reply.applied.iter().any(|a| a.contains("TLS certificates")),
        "{reply:?}"
    );
    let after = tls_connect(tls_addr, &ca_file, Some(&client_cert))
        .await
        .unwrap();
    assert_eq!(
        after.get_ref().1.peer_certificates().unwrap()[0].as_ref(),
        renewed.der.as_slice()
    );
    drop(after);
    inject(&d.api_socket(), &["100#10.98.0.0/24@2001:db8::98"]).await;
    client_received(&mut client_api, "100#10.98.0.0/24@2001:db8::98").await;
    assert_eq!(tls_peer(&mut api).await.session_id, session.session_id);

    // The client role's certificate renewed and reloaded: its session
    // stays; its next session presents the new certificate (identity).
    let renewed_client = ca.issue(&dir, "client-renewed", &["hv-18.hv.example.net"], false);
    std::fs::copy(&renewed_client.cert, &client_cert.cert).unwrap();
    std::fs::copy(&renewed_client.key, &client_cert.key).unwrap();
    client_api
        .daemon
        .reload(pb::ReloadRequest {})
        .await
        .unwrap_or_else(|e| panic!("client reload: {e}"));
    assert_eq!(tls_peer(&mut api).await.session_id, session.session_id);
    api.peers
        .reset_peer(pb::ResetPeerRequest {
            peer: Some(pb::reset_peer_request::Peer::SessionId(session.session_id)),
        })
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + T;
    let again = loop {
        let p = tls_peer(&mut api).await;
        if p.session_id != session.session_id {
            break p;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the client did not come back; log:\n{}",
            client.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(again.tls_identity, "hv-18.hv.example.net");
    assert_eq!(again.policy_class, "hv-tls");
    drop(client);
}

#[tokio::test]
async fn bad_tls_files_are_start_errors_naming_the_file() {
    let dir = unique_temp_dir();
    let ca = Ca::new("metalbond test CA");
    let ca_file = ca.write(&dir.join("ca.pem"));
    let server_cert = ca.issue(&dir, "server", &["127.0.0.1"], false);
    let missing = dir.join("missing.pem");
    let config = server_config(
        &dir,
        &Issued {
            cert: missing.clone(),
            key: server_cert.key.clone(),
            der: Vec::new(),
        },
        &ca_file,
    );
    let (code, _, stderr) = run_to_exit(&["check-config", config.to_str().unwrap()]);
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains(&missing.display().to_string()) && stderr.contains("server.tls"),
        "{stderr}"
    );
    // A key file that holds a certificate.
    let config = server_config(
        &dir,
        &Issued {
            cert: server_cert.cert.clone(),
            key: server_cert.cert.clone(),
            der: Vec::new(),
        },
        &ca_file,
    );
    let (code, _, stderr) = run_to_exit(&["check-config", config.to_str().unwrap()]);
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("no usable private key")
            && stderr.contains(&server_cert.cert.display().to_string()),
        "{stderr}"
    );
}

/// mbbench's fan-out and dump over a TLS listener (the benchmark's TLS
/// mode): every route reaches every subscriber, exactly once.
#[tokio::test]
async fn mbbench_fanout_and_dump_over_tls_are_exact() {
    let dir = unique_temp_dir();
    let ca = Ca::new("metalbond test CA");
    let ca_file = ca.write(&dir.join("ca.pem"));
    let server_cert = ca.issue(&dir, "server", &["127.0.0.1"], false);
    let client_cert = ca.issue(&dir, "bench", &["bench.hv.example.net"], false);
    let config = server_config(&dir, &server_cert, &ca_file);
    let d = Daemon::start(&["--config", config.to_str().unwrap()]);
    let tls_addr = d
        .wait_for_line(|l| l.contains("listening (TLS)"), T)
        .await
        .and_then(|l| parse_addr_field(&l))
        .unwrap_or_else(|| panic!("no TLS listener; log:\n{}", d.logs()));
    for scenario in ["fanout", "dump"] {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mbbench"));
        cmd.args([
            "--server",
            &tls_addr.to_string(),
            "--tls-ca",
            ca_file.to_str().unwrap(),
            "--tls-cert",
            client_cert.cert.to_str().unwrap(),
            "--tls-key",
            client_cert.key.to_str().unwrap(),
            "--scenario",
            scenario,
            "--routes",
            "20000",
            "--subscribers",
            "3",
            "--timeout",
            "20",
            "--json",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
        let out = tokio::task::spawn_blocking(move || common::mbctl::run_blocking(cmd))
            .await
            .unwrap();
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        let phases: Vec<serde_json::Value> = out
            .stdout
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(phases.len(), 1, "{}", out.stdout);
        let p = &phases[0];
        assert_eq!(p["scenario"], scenario, "{p}");
        assert_eq!(p["completed"], true, "{p}");
        assert_eq!(p["loss"], 0.0, "{p}");
        assert_eq!(p["duplicates"], 0.0, "{p}");
        assert_eq!(
            p["expected"],
            20000.0 * if scenario == "fanout" { 3.0 } else { 1.0 },
            "{p}"
        );
        assert_eq!(p["received"], p["expected"], "{p}");
    }
    // The bench's sessions were TLS sessions: the server saw their identity.
    assert!(
        d.logs().contains("identity=\"bench.hv.example.net\""),
        "{}",
        d.logs()
    );
}
