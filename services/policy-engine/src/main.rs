//! `warden-policy-engine`: loads config, initialises telemetry, serves until
//! Ctrl-C or SIGTERM.

use warden_policy_engine::PolicyEngine;

warden_server::main!(PolicyEngine, "The Warden policy engine.", {
    /// Directory of *.yaml policy files.
    policies,
    /// Redis URL for limits shared by replicas (default: in memory).
    redis_url,
    /// The audit service that receives the decision log (default: none, decisions go to the log output only).
    audit_url,
    /// The approval service: decisions that require approval open requests there (default: none).
    approval_url,
});
