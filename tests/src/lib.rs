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

    /// The engine's config with auth on (these keys), calling the audit and
    /// approval services at these URLs (empty: none) with the service key.
    pub fn secured_config(&self, keys: &identity::Keys, audit_url: &str, approval_url: &str) -> PolicyEngineConfig {
        let mut config = self.config();
        config.auth = keys.auth();
        config.audit_url = audit_url.to_owned();
        config.approval_url = approval_url.to_owned();
        config.outbound.credential = keys.token("service").to_owned();
        config
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
        approval_id: String::new(),
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

/// Credentials for tests of identity and access: a keys file with one key
/// per role, plus a revoked and an expired one.
/// Spans finished in this test process, kept in memory: the global
/// subscriber exports every span at INFO and above to the exporter, and
/// trace context is propagated as W3C `traceparent`. Once per test binary.
pub fn capture_spans() -> (opentelemetry_sdk::trace::InMemorySpanExporter, opentelemetry_sdk::trace::SdkTracerProvider)
{
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt;
    let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
    let provider =
        opentelemetry_sdk::trace::SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::filter::LevelFilter::INFO)
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    tracing::subscriber::set_global_default(subscriber).expect("the first subscriber of this test binary");
    warden_telemetry::install_propagator();
    (exporter, provider)
}

pub mod identity {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    use warden_auth::api_key::{KeyFile, create_key};
    use warden_auth::{AuthConfig, Kind};

    pub struct Keys {
        pub path: PathBuf,
        /// Token by name: a role name, `revoked`, `expired`, `alerting`.
        pub tokens: BTreeMap<&'static str, String>,
        pub file: KeyFile,
    }

    /// Roles that get one key each, principal id = role name (the agent key
    /// is `support-bot`).
    pub const ROLES: &[&str] = &["agent", "approver", "admin", "auditor", "service", "operator"];

    pub fn keys(dir: &Path) -> Keys {
        let mut tokens = BTreeMap::new();
        let mut file = KeyFile::default();
        for role in ROLES {
            let (principal, kind) = match *role {
                "agent" => ("support-bot", Kind::Agent),
                "service" => ("policy-engine", Kind::Service),
                other => (other, Kind::Human),
            };
            let key = create_key(principal, kind, vec![(*role).into()], vec![], None, None);
            tokens.insert(*role, key.token.expose().to_owned());
            file.keys.push(key.entry);
        }
        // The alerting service reads the log (auditor) and records in it
        // (service).
        let alerting =
            create_key("alerting", Kind::Service, vec!["service".into(), "auditor".into()], vec![], None, None);
        tokens.insert("alerting", alerting.token.expose().to_owned());
        file.keys.push(alerting.entry);
        let mut revoked = create_key("admin", Kind::Human, vec!["admin".into()], vec![], None, None);
        revoked.entry.revoked = true;
        tokens.insert("revoked", revoked.token.expose().to_owned());
        file.keys.push(revoked.entry);
        let expired = create_key(
            "admin",
            Kind::Human,
            vec!["admin".into()],
            vec![],
            Some(chrono::Utc::now() - chrono::Duration::minutes(1)),
            None,
        );
        tokens.insert("expired", expired.token.expose().to_owned());
        file.keys.push(expired.entry);
        let path = dir.join("keys.toml");
        std::fs::write(&path, file.to_toml()).unwrap();
        Keys { path, tokens, file }
    }

    impl Keys {
        pub fn token(&self, name: &str) -> &str {
            &self.tokens[name]
        }

        /// Auth on, reading this keys file every 100 ms. Bad credentials
        /// are throttled only past 1,000 a minute: the tests that present
        /// many on purpose (the authorization matrices) are not about the
        /// throttle, which `surfaces.rs` tests with a budget of its own.
        pub fn auth(&self) -> AuthConfig {
            AuthConfig {
                keys_file: self.path.clone(),
                reload_interval: std::time::Duration::from_millis(100),
                bad_credentials_per_minute: 1000,
                ..AuthConfig::default()
            }
        }

        /// Adds a key for `principal` (its token under `name`); call
        /// [`Keys::save`] after the last one.
        pub fn add(&mut self, name: &'static str, principal: &str, kind: Kind, roles: &[&str], agents: &[&str]) {
            let strings = |list: &[&str]| list.iter().map(|s| s.to_string()).collect();
            let key = create_key(principal, kind, strings(roles), strings(agents), None, None);
            self.tokens.insert(name, key.token.expose().to_owned());
            self.file.keys.push(key.entry);
        }

        /// An audit service on SQLite in `dir`, auth on with these keys.
        pub async fn audit(&self, dir: &Path) -> warden_audit::AuditServer {
            let mut config = warden_audit::AuditConfig::for_tests(dir);
            config.auth = self.auth();
            warden_audit::AuditServer::start(config).await.unwrap_or_else(|e| panic!("audit did not start: {e}"))
        }

        /// Rewrites the file atomically, as `wardenctl keys` does.
        pub fn save(&self) {
            let tmp = self.path.with_extension("tmp");
            std::fs::write(&tmp, self.file.to_toml()).unwrap();
            std::fs::rename(&tmp, &self.path).unwrap();
        }
    }

    /// `authorization: Bearer <token>` on a request.
    pub fn bearer<T>(mut request: tonic::Request<T>, token: &str) -> tonic::Request<T> {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        request
    }
}

/// A throwaway PKI for TLS tests: two CAs, a server certificate for
/// 127.0.0.1, and client certificates with SPIFFE URI SANs.
pub mod pki {
    use std::path::{Path, PathBuf};

    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
    };

    pub struct Ca {
        issuer: CertifiedIssuer<'static, KeyPair>,
        pub pem: String,
    }

    pub struct Leaf {
        pub cert: PathBuf,
        pub key: PathBuf,
        pub cert_pem: String,
        pub key_pem: String,
    }

    pub fn ca(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let pem = issuer.pem();
        Ca { issuer, pem }
    }

    impl Ca {
        pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
            let path = dir.join(name);
            std::fs::write(&path, &self.pem).unwrap();
            path
        }

        /// A server certificate for 127.0.0.1 and localhost.
        pub fn server(&self, dir: &Path, name: &str) -> Leaf {
            let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
            params.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            self.leaf(dir, name, params)
        }

        /// A client certificate whose identity is `uri` (a SPIFFE id).
        pub fn client(&self, dir: &Path, name: &str, uri: &str) -> Leaf {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.subject_alt_names.push(SanType::URI(uri.try_into().unwrap()));
            params.distinguished_name.push(DnType::CommonName, name);
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            self.leaf(dir, name, params)
        }

        fn leaf(&self, dir: &Path, name: &str, params: CertificateParams) -> Leaf {
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
            let leaf =
                Leaf { cert: dir.join(format!("{name}.crt")), key: dir.join(format!("{name}.key")), cert_pem, key_pem };
            std::fs::write(&leaf.cert, &leaf.cert_pem).unwrap();
            std::fs::write(&leaf.key, &leaf.key_pem).unwrap();
            leaf
        }
    }
}

/// Runs the `wardenctl` binary as an operator does.
pub mod wardenctl {
    use std::path::PathBuf;
    use std::process::Command;

    /// The `wardenctl` binary next to this test's (built by `cargo test
    /// --workspace`; built here when a narrower command skipped it).
    pub fn path() -> PathBuf {
        let dir = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().to_owned();
        let path = dir.join("wardenctl");
        if !path.exists() {
            let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args(["build", "--quiet", "-p", "wardenctl"])
                .status()
                .unwrap();
            assert!(status.success());
        }
        path
    }

    /// Runs `wardenctl args`: the exit code, stdout and stderr.
    pub async fn run(args: Vec<String>) -> (i32, String, String) {
        let path = path();
        let output =
            tokio::task::spawn_blocking(move || Command::new(path).args(args).output().unwrap()).await.unwrap();
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

/// The approval inbox's forms, driven over plain HTTP as a browser would.
pub mod inbox {
    /// The `warden_session=...` cookie a sign-in's answer sets.
    pub fn session_set_cookie(login: &reqwest::Response) -> String {
        login
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .find(|c| c.starts_with("warden_session="))
            .expect("a session cookie")
    }

    /// Signs in as a browser does: the sign-in form first (its CSRF token
    /// and the cookie that goes with it), then the post.
    pub async fn sign_in(http: &reqwest::Client, inbox: &str, token: &str) -> reqwest::Response {
        let form = http.get(format!("{inbox}/login")).send().await.unwrap();
        let cookie = form.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
        assert!(cookie.starts_with("warden_login="), "{cookie}");
        let csrf = csrf_of(&form.text().await.unwrap());
        http.post(format!("{inbox}/login"))
            .header("cookie", cookie)
            .form(&[("token", token), ("csrf", csrf.as_str())])
            .send()
            .await
            .unwrap()
    }

    /// `GET path` with a session cookie, not following redirects.
    pub async fn get(http: &reqwest::Client, inbox: &str, path: &str, session: &str) -> reqwest::Response {
        http.get(format!("{inbox}{path}")).header("cookie", session).send().await.unwrap()
    }

    /// The CSRF token in a page's forms.
    pub fn csrf_of(html: &str) -> String {
        html.split("name=\"csrf\" value=\"").nth(1).expect("a csrf field").split('"').next().unwrap().to_owned()
    }

    /// A client that does not follow redirects (the tests look at them).
    pub fn client() -> reqwest::Client {
        reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
    }
}

/// The Python client's side: CI's interpreter (`WARDEN_TEST_PYTHON`, with
/// `examples/python/requirements.txt`) and stubs generated from `proto/`.
pub mod python {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// The interpreter, or `None` (with a notice) when it is not set up;
    /// with `WARDEN_REQUIRE_EXTERNAL=1` a missing one fails the test.
    pub fn interpreter() -> Option<String> {
        match std::env::var("WARDEN_TEST_PYTHON") {
            Ok(python) => Some(python),
            Err(_) => {
                assert!(
                    std::env::var("WARDEN_REQUIRE_EXTERNAL").as_deref() != Ok("1"),
                    "WARDEN_TEST_PYTHON (a Python with examples/python/requirements.txt) is not set and WARDEN_REQUIRE_EXTERNAL=1"
                );
                eprintln!("skipping the Python part: WARDEN_TEST_PYTHON is not set");
                None
            }
        }
    }

    /// Stubs for every contract, generated by `python` into a directory
    /// that lives as long as the test process.
    pub fn stubs(python: &str) -> PathBuf {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let dir = tempfile::tempdir().unwrap().keep();
        let protos: Vec<String> = ["policy", "approval", "audit", "alerting", "deadletter"]
            .iter()
            .map(|name| format!("proto/warden/{name}/v1/{name}.proto"))
            .collect();
        let generated = Command::new(python)
            .current_dir(&root)
            .args(["-m", "grpc_tools.protoc", "-I", "proto"])
            .arg(format!("--python_out={}", dir.display()))
            .arg(format!("--grpc_python_out={}", dir.display()))
            .args(&protos)
            .status()
            .unwrap();
        assert!(generated.success());
        dir
    }

    /// The start of a Python script that reads the audit service at `addr`
    /// through the stubs: `audit_pb2` imported and `stub` connected.
    pub fn audit_stub(stubs: &Path, addr: &str) -> String {
        format!(
            "import grpc, sys\nsys.path.insert(0, {stubs:?})\nfrom warden.audit.v1 import audit_pb2, audit_pb2_grpc\n\
             stub = audit_pb2_grpc.AuditServiceStub(grpc.insecure_channel({addr:?}))\n"
        )
    }
}
