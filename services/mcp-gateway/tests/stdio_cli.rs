//! `warden-mcp-gateway stdio` as a local MCP client spawns it: without the
//! identity the MCP specification says a stdio server takes from its
//! environment, it stops at once with a line that names what is missing,
//! before it reads a file or opens a connection. (The served path, against
//! real services, is in `tests/tests/mcp_gateway.rs`, which runs this
//! binary; being an integration test of this package, this file is also
//! what makes `cargo test --workspace` build it.)

use std::process::Command;

fn stdio(env: &[(&str, &str)]) -> std::process::Output {
    let data = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_warden-mcp-gateway"));
    command
        .arg("stdio")
        .arg("--upstreams")
        .arg(data.path().join("absent.yaml"))
        .arg("--data-dir")
        .arg(data.path())
        .env_remove("WARDEN_API_KEY")
        .env_remove("WARDEN_AGENT_ID")
        .env("WARDEN__TELEMETRY__LOG_LEVEL", "error");
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().unwrap()
}

#[test]
fn without_an_identity_the_stdio_gateway_refuses_to_start() {
    for env in [&[][..], &[("WARDEN_AGENT_ID", "support-bot")][..], &[("WARDEN_API_KEY", "wk_test")][..]] {
        let out = stdio(env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{env:?}: {stderr}");
        assert!(stderr.contains("WARDEN_AGENT_ID and WARDEN_API_KEY are required"), "{env:?}: {stderr}");
        assert!(out.stdout.is_empty(), "nothing may reach the MCP channel: {:?}", out.stdout);
    }
}

#[test]
fn with_an_identity_a_missing_upstreams_file_is_named() {
    let out = stdio(&[("WARDEN_AGENT_ID", "support-bot"), ("WARDEN_API_KEY", "wk_test")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("absent.yaml"), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing may reach the MCP channel: {:?}", out.stdout);
}
