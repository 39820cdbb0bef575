//! Plain MetalBond types shared by the daemon (`metalbondd`) and its
//! command-line client (`mbctl`): the value types of the data model
//! (PROTOCOL.md section 2), the route text format (section 7) and civil UTC
//! dates. std only, no I/O; see docs/adr/0018-mbctl-layout-and-shared-types.md.

pub mod civil;
pub mod route;
pub mod text;

pub use route::{Action, Address, Destination, NextHop, NextHopType, Route, Vni};
pub use text::{ParseRouteError, PrefixError};
