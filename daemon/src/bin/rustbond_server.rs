//! `rustbond-server`: the `rustbond` crate's MetalBond server behind a tiny
//! CLI, so that `mbbench` and `scripts/bench.sh` can compare it with
//! metalbondd side by side.
//!
//! ```text
//! rustbond-server --listen [::1]:4711 --keepalive 5
//! ```
//!
//! It logs nothing unless `RUST_LOG` is set (logging every route would make
//! the comparison unfair), and stops on ctrl-c or SIGTERM.

use clap::Parser;

/// Runs the rustbond reference server.
#[derive(Parser, Debug)]
#[command(name = "rustbond-server", version, about)]
struct Args {
    /// Address to listen on, e.g. `[::1]:4711` or `127.0.0.1:4711`.
    #[arg(long, short, default_value = "[::1]:4711")]
    listen: String,
    /// Keepalive interval in seconds offered to clients.
    #[arg(long, default_value_t = 5)]
    keepalive: u32,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .compact()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let config = rustbond::ServerConfig {
        keepalive_interval: if args.keepalive == 0 {
            5
        } else {
            args.keepalive
        },
    };
    let server = rustbond::MetalBondServer::start(&args.listen, config).await?;
    eprintln!(
        "rustbond-server listening on {} (pid {})",
        args.listen,
        std::process::id()
    );

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    eprintln!("rustbond-server shutting down");
    server.shutdown().await?;
    Ok(())
}
