//! Plain MetalBond types shared by the daemon (`metalbondd`) and its
//! command-line client (`mbctl`): the value types of the data model
//! (PROTOCOL.md section 2), the route text format (section 7) and civil UTC
//! dates, and the fleet comparison of per-VNI digests (`fleet`). std only, no
//! I/O; see docs/adr/0018-mbctl-layout-and-shared-types.md.

pub mod civil;
pub mod fleet;
pub mod route;
pub mod text;
pub mod usage;

pub use route::{Action, Address, Destination, NextHop, NextHopType, Route, Vni};
pub use text::{ParseRouteError, PrefixError};
