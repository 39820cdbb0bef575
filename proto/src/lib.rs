//! Generated protobuf types.
//!
//! * [`wire`]: the MetalBond v1 wire messages (package `metalbond`), byte-compatible
//!   with the Go reference and `rustbond`.
//!
//! This crate depends on nothing of ours; it is the contract.

/// MetalBond v1 wire messages (package `metalbond`).
pub mod wire {
    #![allow(missing_docs, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/metalbond.rs"));
}
