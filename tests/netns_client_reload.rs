//! VNI -> table mappings of the `[client]` section changed by a reload
//! (issue 12, ADR 0023): a `metalbondd server` and a `metalbondd client
//! --config FILE` in a network namespace; the file first maps nothing (the
//! reload opens the kernel installer), then two VNIs, then moves one to
//! another table and drops the other; each step is checked in the kernel
//! (`ip route`) while the client's session stays the same.
//!
//! Needs root and `ip` (iproute2); skipped with a message otherwise, unless
//! `CI=true`. Every wait is bounded.

mod common;

use std::path::Path;

use common::api::inject;
use common::netns::{NetnsEnv, TUN};
use common::{contains_field, strip_ansi, Daemon, T};

fn client_file(server: std::net::SocketAddr, install_routes: &[&str]) -> String {
    let maps: Vec<String> = install_routes.iter().map(|m| format!("\"{m}\"")).collect();
    format!(
        "[client]\nservers = [\"{server}\"]\nsubscribe = [100, 200]\ntun = \"{TUN}\"\ninstall_routes = [{}]\n",
        maps.join(", ")
    )
}

fn sighup(d: &Daemon) {
    // SAFETY: kill(2) with our own child's PID and a valid signal number.
    unsafe {
        libc::kill(d.pid() as libc::pid_t, libc::SIGHUP);
    }
}

/// Waits until the client logged its `n`th `configuration reloaded`.
async fn reloaded(client: &Daemon, n: usize) {
    let deadline = tokio::time::Instant::now() + T;
    while client.logs().matches("configuration reloaded").count() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "reload {n} not logged:\n{}",
            client.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_maps_moves_and_unmaps_vnis_in_the_kernel() {
    let Some(env) = NetnsEnv::for_test("a_reload_maps_moves_and_unmaps_vnis_in_the_kernel") else {
        return;
    };
    let server = env.server("s");
    inject(
        &env.sock("s"),
        &["100#10.0.1.0/24@2001:db8::1", "200#10.0.2.0/24@2001:db8::2"],
    )
    .await;
    let file = env.dir.join("client.toml");
    std::fs::write(&file, client_file(server.addr, &[])).unwrap();
    let sock = env.sock("c").display().to_string();
    let state = env.dir.join("c").display().to_string();
    let client = Daemon::spawn_in_netns(
        &env.ns,
        &[
            "client",
            "--config",
            path(&file),
            "--api-socket",
            &sock,
            "--state-dir",
            &state,
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(client.wait_for_log("route server up", T).await);

    // A first mapping: the reload opens the kernel installer.
    std::fs::write(&file, client_file(server.addr, &["100#100", "200#200"])).unwrap();
    sighup(&client);
    env.wait_table(100, &[("10.0.1.0/24", &["2001:db8::1"])], &[])
        .await;
    env.wait_table(200, &[("10.0.2.0/24", &["2001:db8::2"])], &[])
        .await;
    reloaded(&client, 1).await;

    // VNI 100 moves to table 101, VNI 200 is no longer mapped.
    std::fs::write(&file, client_file(server.addr, &["100#101"])).unwrap();
    sighup(&client);
    env.wait_table(101, &[("10.0.1.0/24", &["2001:db8::1"])], &[])
        .await;
    env.wait_table(100, &[], &[]).await;
    env.wait_table(200, &[], &[]).await;
    reloaded(&client, 2).await;
    let line = strip_ansi(&client.logs())
        .lines()
        .rfind(|l| l.contains("configuration reloaded"))
        .unwrap()
        .to_string();
    assert!(
        line.contains("client.install_routes: VNI 100, 200 remapped"),
        "{line}"
    );
    // One session all along.
    let ups = strip_ansi(&client.logs())
        .lines()
        .filter(|l| {
            l.contains("route server up") && contains_field(l, &format!("addr={}", server.addr))
        })
        .count();
    assert_eq!(ups, 1, "{}", client.logs());
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}
