//! The runtime every Warden service shares besides its own logic.
//!
//! - [`runtime`]: a service binary's `main` ([`runtime::main`] over the
//!   [`Service`] trait), and the [`Runtime`] a service starts on: identity
//!   and access, background tasks, metrics, the database, the gRPC and
//!   HTTP listeners.
//! - [`dead_letters`]: the `warden.deadletter.v1` contract over a
//!   service's delivery queue: what a receiver refused for good waits
//!   there, listed, until an operator replays it.
//! - [`delivery`]: the outbox's delivery loop (claims, audit batches,
//!   dead letters, notifications with backoff), and the HTTP and SMTP
//!   sends notifiers share.
//! - [`webhook`]: outbound HTTP for notifications, safe by default (no
//!   redirects, no link-local destinations).

pub mod dead_letters;
pub mod delivery;
pub mod runtime;
pub mod webhook;

pub use runtime::{Runtime, RuntimeError, Service, Serving, StartError, now_micros};
