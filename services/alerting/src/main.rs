//! `warden-alerting`: loads config, initialises telemetry, serves until
//! Ctrl-C or SIGTERM.

use warden_alerting::AlertingServer;

warden_server::main!(AlertingServer, "The Warden alerting service.", {
    /// Rule files or directories (Prometheus' rule-file shape), comma-separated.
    rules,
    /// The routing file (Alertmanager's configuration shape).
    routing,
    /// The audit service to follow and to record in.
    audit_url,
    /// Alertmanager's HTTP API address (empty disables it).
    http_listen,
});
