//! The Warden MCP gateway: an enforcement point on the tool path. Agents
//! (any MCP client) connect to it instead of to their tools; it holds the
//! tools' credentials and forwards a `tools/call` only when Warden allows
//! it, with exactly the arguments that were decided on.
//!
//! - [`upstreams`]: the MCP servers behind it (Streamable HTTP, or commands
//!   it spawns and restarts), their credentials, timeouts and breakers.
//! - [`gateway`]: `tools/list` (only what the agent could be allowed) and
//!   `tools/call` (decide, hold for approval, forward, record).
//! - [`template`]: the resource of a call, from its arguments.
//! - [`http`]: MCP over Streamable HTTP behind Warden's auth, and the
//!   Protected Resource Metadata; [`server`]: startup and shutdown.
//! - [`stdio`]: `warden-mcp-gateway stdio`, MCP on stdin/stdout for one
//!   agent, for clients that spawn a command.
//!
//! The library is the service; `main.rs` only loads config and serves.
//! This crate must not depend on any other service crate: it meets the
//! policy engine, the approval service and the audit service through their
//! gRPC contracts only.

pub mod config;
pub mod gateway;
pub mod http;
pub mod metrics;
pub mod server;
pub mod stdio;
pub mod template;
pub mod upstreams;

pub use config::GatewayConfig;
pub use server::{GatewayServer, StartError};
