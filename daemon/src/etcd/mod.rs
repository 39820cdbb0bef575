//! Shared operator state on etcd (ADR 0031): the etcd client
//! ([`client`], shell), the pure reconciliation of etcd's routes with the
//! table ([`reconcile`]) and the watcher task with the API's write path
//! ([`shared`], shell); the fleet registration under a lease
//! ([`registration`], shell, ADR 0030).

pub mod client;
pub mod reconcile;
pub mod registration;
pub mod shared;
