//! Compiles the `.proto` files with `protox` (a pure-Rust protobuf compiler),
//! so building needs no `protoc` on the machine.
//!
//! * `metalbond.proto`: the wire messages (prost only).
//! * `metalbondd/v1/api.proto`: the control API (prost + tonic client and
//!   server), plus its encoded descriptor set for gRPC server reflection.
//! * `etcd/`: etcd's v3 API (`etcdserverpb`, `mvccpb`, `authpb`), vendored
//!   unchanged from etcd (Apache-2.0, `etcd/LICENSE`); tonic clients only,
//!   for the shared-state backend (ADR 0031).

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let wire = ["proto/metalbond.proto"];
    let api = ["proto/metalbondd/v1/api.proto"];
    for p in wire.iter().chain(&api) {
        println!("cargo:rerun-if-changed={p}");
    }
    let out = PathBuf::from(std::env::var("OUT_DIR")?);

    let fds = protox::compile(wire, ["proto"])?;
    prost_build::Config::new().compile_fds(fds)?;

    let fds = protox::compile(api, ["proto"])?;
    std::fs::write(
        out.join("metalbondd_v1_descriptor.bin"),
        fds.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;

    let etcd = ["etcd/etcd/api/etcdserverpb/rpc.proto"];
    println!("cargo:rerun-if-changed=etcd");
    let fds = protox::compile(etcd, ["etcd"])?;
    // `bytes` fields as `Bytes`: keys and values of watch events are then
    // slices of the received buffer, not one allocation each.
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}
