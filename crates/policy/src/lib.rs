//! Warden's policy language: CEL conditions ([`cel`]), the YAML policy
//! format with its load-time checks ([`policy`]), and how rule outcomes
//! combine into a decision ([`decision`]); policy test files run offline
//! ([`testing`]); the agent registry ([`registry`]) says what each agent
//! is, so a request's claims about itself decide nothing.
//!
//! The policy engine service evaluates with it (adding kill switches,
//! limits and the decision log), and `wardenctl policy test` runs policy
//! test files offline through the same code. No I/O but reading a policy
//! directory.

pub mod cel;
pub mod decision;
pub mod fixtures;
pub mod policy;
pub mod registry;
pub mod testing;
