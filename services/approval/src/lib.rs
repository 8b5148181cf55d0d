//! The Warden approval service: when a decision requires approval, a
//! person decides, the agent waits, and the approval is spent exactly once
//! for exactly the action that was reviewed.
//!
//! - [`store`]: requests, reviews and the outbox; every transition a
//!   conditional update under a row lock.
//! - [`approvals`]: the workflow (routes, quorum, separation of duties,
//!   expiry, escalation, reminders, redemption) and its audit events and
//!   notifications.
//! - [`routes`]: the routes file (reviewers, thresholds, clocks, receivers).
//! - [`worker`]: the clocks and the outbox shipper.
//! - [`service`]: gRPC handlers; [`inbox`]: the web inbox; [`server`]:
//!   startup and shutdown.
//!
//! The library is the service; `main.rs` only loads config and serves.
//! This crate must not depend on any other service crate.

pub mod approvals;
pub mod config;
pub mod inbox;
pub mod metrics;
pub mod routes;
pub mod server;
pub mod service;
pub mod store;
pub mod worker;

pub use config::ApprovalConfig;
pub use server::{ApprovalServer, StartError};

#[cfg(test)]
mod tests;
