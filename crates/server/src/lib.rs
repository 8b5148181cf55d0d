//! The runtime every Warden service shares besides its own logic.
//!
//! - [`dead_letters`]: the `warden.deadletter.v1` contract over a
//!   service's delivery queue: what a receiver refused for good waits
//!   there, listed, until an operator replays it.
//! - [`webhook`]: outbound HTTP for notifications, safe by default (no
//!   redirects, no link-local destinations).

pub mod dead_letters;
pub mod webhook;
