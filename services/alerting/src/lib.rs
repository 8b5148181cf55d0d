//! The Warden alerting service: agent-aware alert rules over the audit
//! stream, routed like Alertmanager routes them, with nothing lost and
//! nothing sent twice.

pub mod promql;
pub mod routing;
pub mod rules;
pub mod series;
pub mod template;
