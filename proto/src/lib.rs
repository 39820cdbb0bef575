//! Generated protobuf types.
//!
//! * [`wire`]: the MetalBond v1 wire messages (package `metalbond`), byte-compatible
//!   with the Go reference and `rustbond`.
//! * [`api`]: the metalbondd control API (package `metalbondd.v1`): messages,
//!   tonic clients and servers, and [`api::FILE_DESCRIPTOR_SET`] for reflection.
//!
//! * [`etcd`]: etcd's v3 API (KV, Watch, Lease, Auth, Maintenance clients),
//!   compiled from etcd's own `.proto` files for the shared-state backend.
//!
//! This crate depends on nothing of ours; it is the contract.

/// MetalBond v1 wire messages (package `metalbond`).
pub mod wire {
    #![allow(missing_docs, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/metalbond.rs"));
}

/// The metalbondd control API (package `metalbondd.v1`).
pub mod api {
    #![allow(missing_docs, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/metalbondd.v1.rs"));

    /// Encoded `FileDescriptorSet` of the API, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/metalbondd_v1_descriptor.bin"));
}

/// etcd's v3 API, compiled from etcd's `.proto` files (`proto/etcd/`):
/// tonic clients only.
pub mod etcd {
    /// `etcdserverpb`: the KV, Watch, Lease, Auth and Maintenance services.
    pub mod etcdserverpb {
        #![allow(missing_docs, clippy::all)]
        include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
    }
    /// `mvccpb`: stored key-values and watch events.
    pub mod mvccpb {
        #![allow(missing_docs, clippy::all)]
        include!(concat!(env!("OUT_DIR"), "/mvccpb.rs"));
    }
    /// `authpb`: users and roles.
    pub mod authpb {
        #![allow(missing_docs, clippy::all)]
        include!(concat!(env!("OUT_DIR"), "/authpb.rs"));
    }
}
