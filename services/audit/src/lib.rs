//! The Warden audit service: the append-only, tamper-evident record of
//! everything agents and people did.
//!
//! Events are leaves of an RFC 9162 Merkle tree stored in SQLite or
//! PostgreSQL; checkpoints are Ed25519-signed C2SP notes; inclusion and
//! consistency proofs let anyone check the log against a checkpoint they
//! hold; `Verify` recomputes everything from stored data. Sensitive fields
//! are encrypted under per-subject keys that can be destroyed (GDPR
//! erasure) without breaking a single hash.
//!
//! The library is the service; `main.rs` only loads config and serves.
//! This crate must not depend on any other service crate.

pub mod config;
pub mod keys;
pub mod leaf;
pub mod log;
pub mod metrics;
pub mod server;
pub mod service;
pub mod store;

pub use config::AuditConfig;
pub use server::{AuditServer, StartError};

#[cfg(test)]
mod tests;
