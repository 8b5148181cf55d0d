//! The Warden alerting service: agent-aware alert rules over the audit
//! stream, routed like Alertmanager routes them, with nothing lost and
//! nothing sent twice.
//!
//! - [`series`]: the series derived from audit events, scraped in event
//!   time; [`promql`]: PromQL evaluated over them.
//! - [`rules`] and [`template`]: Prometheus rule files and annotation
//!   templates; [`routing`]: Alertmanager's configuration shape.
//! - [`engine`]: the alert lifecycle, silences, inhibition and the
//!   dispatcher; [`store`]: its tables and outbox.
//! - [`notify`]: delivery to webhooks, Slack, PagerDuty, email and the
//!   audit log, with [`receivers`]' messages and templates and
//!   [`http_config`]'s credentials and TLS; [`follow`]: following the
//!   audit log.
//! - [`compat`]: Alertmanager's configuration fields Warden reads, and the
//!   ones it refuses by name.
//! - [`api`]: Alertmanager's HTTP API; [`service`]: the gRPC contract;
//!   [`server`]: startup and shutdown.
//!
//! The library is the service; `main.rs` only loads config and serves.
//! This crate must not depend on any other service crate.

pub mod api;
pub mod compat;
pub mod config;
pub mod engine;
pub mod follow;
pub mod http_config;
pub mod metrics;
pub mod notify;
pub mod promql;
pub mod receivers;
pub mod routing;
pub mod rules;
pub mod series;
pub mod server;
pub mod service;
pub mod store;
pub mod template;

pub use config::AlertingConfig;
pub use server::{AlertingServer, StartError};

#[cfg(test)]
mod promtool_tests;
#[cfg(test)]
mod tests;
