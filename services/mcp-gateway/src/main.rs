//! `warden-mcp-gateway`: loads config, initialises telemetry, serves until
//! Ctrl-C or SIGTERM; `warden-mcp-gateway stdio ...` serves one agent on
//! stdin/stdout instead.

use warden_mcp_gateway::GatewayServer;

warden_server::main!(GatewayServer, "The Warden MCP gateway: Warden's decisions enforced on every tool call.", {
    /// The upstream MCP servers file (YAML).
    upstreams,
    /// Where agents reach MCP over Streamable HTTP.
    mcp_listen,
    /// The policy engine that decides every call.
    policy_engine_url,
    /// The approval service held calls wait on.
    approval_url,
    /// The audit service that records what each call did.
    audit_url,
}, before = warden_mcp_gateway::stdio::subcommand);
