//! `warden-audit --healthcheck`: the container health check asks the
//! running service over grpc.health.v1 (every service binary shares it).

use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_healthcheck_flag_asks_the_running_service() {
    let data = tempfile::tempdir().unwrap();
    let server = warden_audit::AuditServer::start(warden_audit::AuditConfig::for_tests(data.path())).await.unwrap();
    let check = |listen: String| {
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_warden-audit"))
                .args(["--healthcheck", "--listen", &listen, "--metrics-listen", ""])
                .env("WARDEN__TELEMETRY__LOG_LEVEL", "error")
                .output()
                .unwrap()
        })
    };
    let serving = check(server.addr.to_string()).await.unwrap();
    assert!(serving.status.success(), "{}", String::from_utf8_lossy(&serving.stderr));
    assert!(String::from_utf8_lossy(&serving.stdout).contains("serving"));
    let port = server.addr.port();
    server.shutdown().await;
    let gone = check(format!("127.0.0.1:{port}")).await.unwrap();
    assert_eq!(gone.status.code(), Some(1), "{}", String::from_utf8_lossy(&gone.stderr));
}
