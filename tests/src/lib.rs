//! Helpers for Warden's cross-service tests: start services in-process on
//! `127.0.0.1:0`, write policy directories, and wait for conditions without
//! fixed sleeps.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempDir;
use tonic::transport::Channel;
use warden_audit::{AuditConfig, AuditServer};
use warden_policy_engine::{PolicyEngine, PolicyEngineConfig};
use warden_proto::policy::v1 as pb;
use warden_proto::policy::v1::policy_service_client::PolicyServiceClient;

/// A policy directory and a data directory that live as long as the value.
#[derive(Debug)]
pub struct Sandbox {
    pub policies: TempDir,
    pub data: TempDir,
}

impl Sandbox {
    pub fn new(files: &[(&str, &str)]) -> Sandbox {
        let sandbox = Sandbox { policies: tempfile::tempdir().unwrap(), data: tempfile::tempdir().unwrap() };
        for (name, content) in files {
            sandbox.write(name, content);
        }
        sandbox
    }

    pub fn policies_dir(&self) -> PathBuf {
        self.policies.path().to_owned()
    }

    /// Writes a policy file atomically (write, then rename), as deployment
    /// tools do.
    pub fn write(&self, name: &str, content: &str) {
        let tmp = self.policies.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(&tmp, self.policies.path().join(name)).unwrap();
    }

    pub fn config(&self) -> PolicyEngineConfig {
        PolicyEngineConfig::for_tests(self.policies.path(), self.data.path())
    }

    pub async fn start(&self) -> PolicyEngine {
        start(self.config()).await
    }
}

pub async fn start(config: PolicyEngineConfig) -> PolicyEngine {
    PolicyEngine::start(config).await.unwrap_or_else(|e| panic!("policy engine did not start: {e}"))
}

pub async fn channel(url: &str) -> Channel {
    Channel::from_shared(url.to_owned()).unwrap().connect().await.unwrap()
}

pub async fn policy_client(engine: &PolicyEngine) -> PolicyServiceClient<Channel> {
    PolicyServiceClient::new(channel(&engine.url()).await)
}

/// Polls `check` until it returns `Some`, for at most `timeout` of real time.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(std::time::Instant::now() < deadline, "condition not met within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A request with the fields most tests vary.
pub fn request(agent_id: &str, confidence: f64, action: &str, cost: f64) -> pb::EvaluateRequest {
    pb::EvaluateRequest {
        agent: Some(pb::Agent { id: agent_id.into(), confidence, ..Default::default() }),
        action: Some(pb::Action { r#type: action.into(), estimated_cost: cost, ..Default::default() }),
        time: None,
        correlation_id: String::new(),
    }
}

/// The example policies shipped in `examples/policies`.
pub fn example_policies() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policies")
}

/// Starts an audit service on `data` (SQLite inside it), on `listen`
/// (`127.0.0.1:0` for any port).
pub async fn start_audit(data: &Path, listen: &str) -> AuditServer {
    let mut config = AuditConfig::for_tests(data);
    config.listen = listen.to_owned();
    AuditServer::start(config).await.unwrap_or_else(|e| panic!("audit service did not start: {e}"))
}
