//! The framed session driver both roles share: one TCP connection with its
//! sans-I/O [`crate::session::Session`]. [`Link`] reads and decodes frames
//! (reassembling across reads), drives the session, encodes what it sends,
//! writes through the two-lane [`outbound::Outbound`] queue (paced where
//! wanted, [`pacing`]) and keeps the session's timers; a [`LinkRole`] adds
//! what one role needs. Every end, of a session or of a client's connection
//! attempt, is a [`SessionEnd`] with one label and one [`EndClass`].
//!
//! `server::connection` and `client::connection` configure it; this module
//! imports neither (ADR 0015).

mod driver;
pub mod end;
pub mod outbound;
pub mod pacing;

pub use driver::{Link, LinkRole, LinkSettings};
pub use end::{EndClass, SessionEnd};
