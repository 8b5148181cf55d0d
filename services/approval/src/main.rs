//! `warden-approval`: loads config, initialises telemetry, serves until
//! Ctrl-C or SIGTERM.

use warden_approval::ApprovalServer;

warden_server::main!(ApprovalServer, "The Warden approval service.", {
    /// The approval routes file (YAML).
    routes,
    /// The audit service that records every step.
    audit_url,
    /// The web inbox's HTTP address (empty disables it).
    http_listen,
});
