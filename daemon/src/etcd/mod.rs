//! Shared operator state on etcd (ADR 0031): the etcd client
//! ([`client`], shell), the pure reconciliation of etcd's routes with the
//! table ([`reconcile`]) and the watcher task with the API's write path
//! ([`shared`], shell).

pub mod client;
pub mod reconcile;
pub mod shared;
