//! `warden-audit`: loads config, initialises telemetry, serves until Ctrl-C
//! or SIGTERM.

use warden_audit::AuditServer;

warden_server::main!(AuditServer, "The Warden audit service.", {});
