//! The session's attention signal: the shutdown, an operator's reset and a
//! reload reach an idle, established session at once, though it waits on no
//! broadcast channel (ADR 0011, addendum of stop 14). Without the wake-up
//! the session would sit until its keepalive deadline (2.5 x 5 s).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{RawPeer, Recv};
use metalbondd::server::{Server, ServerConfig, SessionSettings};
use metalbondd::wire::{Frame, Message};

/// Well below the keepalive deadline that would close an idle session anyway.
const PROMPTLY: Duration = Duration::from_secs(3);

fn settings() -> SessionSettings {
    SessionSettings {
        keepalive_secs: 5,
        write_timeout: Duration::from_secs(30),
        max_lag_bytes: 1 << 20,
        pace_limit: 0,
        withdraw_delay: Duration::ZERO,
        policy: None,
    }
}

async fn start() -> Server {
    let config = ServerConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        session: settings(),
        max_sessions: 16,
        tls_listen: Vec::new(),
        tls: None,
    };
    Server::start(config, metalbondd::table_task::spawn())
        .await
        .unwrap()
}

async fn established(server: &Server) -> RawPeer {
    let mut peer = RawPeer::connect(server.local_addrs[0]).await;
    peer.handshake(5).await;
    peer
}

#[tokio::test]
async fn shutdown_closes_an_idle_session_at_once() {
    let server = start().await;
    let mut peer = established(&server).await;
    server.shutdown();
    assert!(matches!(peer.recv(PROMPTLY).await, Recv::Closed));
}

#[tokio::test]
async fn a_reset_closes_that_session_only() {
    let server = start().await;
    let mut reset = established(&server).await;
    let mut other = established(&server).await;
    let info = server
        .registry
        .all()
        .into_iter()
        .find(|s| s.remote == reset.local)
        .expect("the session in the registry");
    info.request_reset();
    assert!(matches!(reset.recv(PROMPTLY).await, Recv::Closed));
    // The other session still answers.
    other.send(&Message::Keepalive).await;
    assert!(matches!(
        other.recv(PROMPTLY).await,
        Recv::Frame(Frame::Message(Message::Keepalive))
    ));
}

#[tokio::test]
async fn a_reload_reaches_an_idle_session() {
    let server = start().await;
    let _peer = established(&server).await;
    let info = server.registry.all().pop().unwrap();
    assert_eq!(info.policy_class(), "");
    // A policy with one class for everyone: the session takes it (its class
    // is shown) without any traffic of its own.
    let config = metalbondd_config::Config::parse(
        "[[policy.class]]\nname = \"everyone\"\nmatch = [\"0.0.0.0/0\"]\n",
        "test.toml",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let policy = metalbondd::policy::Policy::new(&config.policy.expect("policy"));
    server.set_session_settings(SessionSettings {
        policy: Some(Arc::new(policy)),
        ..settings()
    });
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    while info.policy_class() != "everyone" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the reload did not reach the session"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
