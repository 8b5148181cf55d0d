//! The Warden policy engine: the service an agent asks before every action.
//!
//! It loads YAML policy files (rules with CEL conditions, and limits),
//! compiles them into an indexed [`policy::PolicySet`], and answers
//! `warden.policy.v1.PolicyService/Evaluate` with allow, deny or
//! require-approval and the reasons. Kill switches are stored in SQLite or
//! PostgreSQL; limits are counted in memory or in Redis.
//!
//! The library is the service; `main.rs` only loads config and serves.
//! This crate must not depend on any other service crate.

pub mod approval_client;
pub mod config;
pub mod decision_log;
pub mod decision_record;
pub mod engine;
pub mod kill_switch;
pub mod limits;
pub mod metrics;
pub mod server;
pub mod service;

/// The policy language, re-exported: the engine evaluates with it.
pub use warden_policy::{cel, fixtures, policy};

pub use config::PolicyEngineConfig;
pub use server::{PolicyEngine, StartError};
