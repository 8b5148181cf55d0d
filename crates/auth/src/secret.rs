//! Secret settings: where a secret comes from, and a type that never prints
//! it.
//!
//! Every secret setting (the keys file's pepper, JWT secrets, TLS private
//! keys, the audit service's signing and master keys, outbound credentials)
//! takes a reference:
//!
//! - `env:NAME`: the environment variable `NAME`;
//! - `file:PATH`: the file's content, trailing newline removed;
//! - `vault:MOUNT/PATH#FIELD`: a field of a HashiCorp Vault KV v2 secret,
//!   read over HTTP with a token (`VAULT_TOKEN`) or AppRole
//!   (`VAULT_ROLE_ID`, `VAULT_SECRET_ID`) from `VAULT_ADDR`;
//! - anything else: the value itself (for development).
//!
//! [`SecretResolver`] caches resolved values for a TTL (moka), so a rotated
//! secret is picked up by callers that resolve again, and Vault is asked at
//! most once per TTL.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::Mutex;

/// A secret value. `Debug` and `Display` print `***`, so it never reaches a
/// log line, an error message or a metric by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(value: impl Into<Arc<str>>) -> Secret {
        Secret(value.into())
    }

    /// The value. Call only where the secret is used, never to print it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Where a secret setting's value comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretRef {
    Env(String),
    File(PathBuf),
    Vault { mount: String, path: String, field: String },
    Literal(Secret),
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Prints the reference, never a literal value.
impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(name) => write!(f, "env:{name}"),
            SecretRef::File(path) => write!(f, "file:{}", path.display()),
            SecretRef::Vault { mount, path, field } => write!(f, "vault:{mount}/{path}#{field}"),
            SecretRef::Literal(_) => f.write_str("(inline value)"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret {0}: the environment variable is not set")]
    MissingEnv(String),
    #[error("secret {0}: {1}")]
    File(String, std::io::Error),
    #[error("secret {reference}: {message}")]
    Vault { reference: String, message: String },
    #[error("secret reference {0:?} is malformed: {1}")]
    Malformed(String, &'static str),
}

impl SecretRef {
    /// Parses a setting's value; an empty string is `None`.
    pub fn parse(text: &str) -> Result<Option<SecretRef>, SecretError> {
        if text.is_empty() {
            return Ok(None);
        }
        Ok(Some(if let Some(name) = text.strip_prefix("env:") {
            if name.is_empty() {
                return Err(SecretError::Malformed("env:".into(), "expected env:NAME"));
            }
            SecretRef::Env(name.to_owned())
        } else if let Some(path) = text.strip_prefix("file:") {
            if path.is_empty() {
                return Err(SecretError::Malformed("file:".into(), "expected file:PATH"));
            }
            SecretRef::File(PathBuf::from(path))
        } else if let Some(rest) = text.strip_prefix("vault:") {
            let malformed = || SecretError::Malformed(format!("vault:{rest}"), "expected vault:MOUNT/PATH#FIELD");
            let (location, field) = rest.split_once('#').ok_or_else(malformed)?;
            let (mount, path) = location.split_once('/').ok_or_else(malformed)?;
            if mount.is_empty() || path.is_empty() || field.is_empty() {
                return Err(malformed());
            }
            SecretRef::Vault { mount: mount.to_owned(), path: path.to_owned(), field: field.to_owned() }
        } else {
            SecretRef::Literal(Secret::new(text))
        }))
    }
}

/// How to reach Vault. Read from the process environment by default.
#[derive(Clone, Default)]
pub struct VaultSettings {
    /// e.g. `http://127.0.0.1:8200`.
    pub addr: String,
    pub token: Option<Secret>,
    pub role_id: Option<Secret>,
    pub secret_id: Option<Secret>,
}

impl fmt::Debug for VaultSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultSettings")
            .field("addr", &self.addr)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("approle", &self.role_id.is_some())
            .finish()
    }
}

impl VaultSettings {
    pub fn from_env(env: &HashMap<String, String>) -> VaultSettings {
        let secret = |name: &str| env.get(name).filter(|v| !v.is_empty()).map(|v| Secret::new(v.as_str()));
        VaultSettings {
            addr: env.get("VAULT_ADDR").cloned().unwrap_or_default(),
            token: secret("VAULT_TOKEN"),
            role_id: secret("VAULT_ROLE_ID"),
            secret_id: secret("VAULT_SECRET_ID"),
        }
    }
}

/// Resolves secret references, caching each value for `ttl`.
#[derive(Clone)]
pub struct SecretResolver {
    env: Arc<HashMap<String, String>>,
    vault: VaultSettings,
    http: reqwest::Client,
    cache: moka::future::Cache<String, Secret>,
    /// The AppRole login's token, reused until Vault refuses it.
    approle_token: Arc<Mutex<Option<Secret>>>,
}

impl fmt::Debug for SecretResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretResolver").field("vault", &self.vault).finish()
    }
}

impl SecretResolver {
    /// A resolver over the process environment.
    pub fn from_process_env(ttl: Duration) -> SecretResolver {
        SecretResolver::new(std::env::vars().collect(), ttl)
    }

    pub fn new(env: HashMap<String, String>, ttl: Duration) -> SecretResolver {
        let vault = VaultSettings::from_env(&env);
        SecretResolver::with_vault(env, vault, ttl)
    }

    pub fn with_vault(env: HashMap<String, String>, vault: VaultSettings, ttl: Duration) -> SecretResolver {
        SecretResolver {
            env: Arc::new(env),
            vault,
            http: reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap_or_default(),
            cache: moka::future::Cache::builder().time_to_live(ttl.max(Duration::from_millis(1))).build(),
            approle_token: Arc::new(Mutex::new(None)),
        }
    }

    /// Resolves a setting's value (see the module docs); `None` when empty.
    pub async fn resolve_setting(&self, text: &str) -> Result<Option<Secret>, SecretError> {
        match SecretRef::parse(text)? {
            None => Ok(None),
            Some(reference) => self.resolve(&reference).await.map(Some),
        }
    }

    pub async fn resolve(&self, reference: &SecretRef) -> Result<Secret, SecretError> {
        if let SecretRef::Literal(secret) = reference {
            return Ok(secret.clone());
        }
        let key = reference.to_string();
        if let Some(secret) = self.cache.get(&key).await {
            return Ok(secret);
        }
        let secret = match reference {
            SecretRef::Env(name) => Secret::new(
                self.env
                    .get(name)
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| SecretError::MissingEnv(key.clone()))?
                    .as_str(),
            ),
            SecretRef::File(path) => {
                let text = tokio::fs::read_to_string(path).await.map_err(|e| SecretError::File(key.clone(), e))?;
                Secret::new(text.trim_end_matches(['\n', '\r']))
            }
            SecretRef::Vault { mount, path, field } => self.read_vault(&key, mount, path, field).await?,
            SecretRef::Literal(secret) => secret.clone(),
        };
        self.cache.insert(key, secret.clone()).await;
        Ok(secret)
    }

    /// Forgets cached values, so the next resolve reads the source again.
    pub fn invalidate(&self) {
        self.cache.invalidate_all();
    }

    async fn read_vault(&self, key: &str, mount: &str, path: &str, field: &str) -> Result<Secret, SecretError> {
        let fail = |message: String| SecretError::Vault { reference: key.to_owned(), message };
        if self.vault.addr.is_empty() {
            return Err(fail("VAULT_ADDR is not set".into()));
        }
        let url = format!("{}/v1/{mount}/data/{path}", self.vault.addr.trim_end_matches('/'));
        // One retry after a fresh AppRole login: the token may have expired.
        for attempt in 0..2 {
            let token = self.vault_token(attempt > 0).await.map_err(fail)?;
            let response = self
                .http
                .get(&url)
                .header("X-Vault-Token", token.expose())
                .send()
                .await
                .map_err(|e| fail(format!("cannot reach Vault: {e}")))?;
            let status = response.status();
            if status == reqwest::StatusCode::FORBIDDEN && attempt == 0 && self.vault.token.is_none() {
                continue;
            }
            if !status.is_success() {
                return Err(fail(format!("Vault answered {status}")));
            }
            #[derive(Deserialize)]
            struct KvResponse {
                data: KvData,
            }
            #[derive(Deserialize)]
            struct KvData {
                data: HashMap<String, serde_json::Value>,
            }
            let body: KvResponse =
                response.json().await.map_err(|e| fail(format!("unexpected Vault response: {e}")))?;
            return match body.data.data.get(field) {
                Some(serde_json::Value::String(value)) => Ok(Secret::new(value.as_str())),
                Some(_) => Err(fail(format!("field {field:?} is not a string"))),
                None => Err(fail(format!("field {field:?} is not in the secret"))),
            };
        }
        Err(fail("Vault refused the token".into()))
    }

    async fn vault_token(&self, fresh: bool) -> Result<Secret, String> {
        if let Some(token) = &self.vault.token {
            return Ok(token.clone());
        }
        let (Some(role_id), Some(secret_id)) = (&self.vault.role_id, &self.vault.secret_id) else {
            return Err("no Vault credentials: set VAULT_TOKEN, or VAULT_ROLE_ID and VAULT_SECRET_ID".into());
        };
        let mut cached = self.approle_token.lock().await;
        if !fresh && let Some(token) = cached.as_ref() {
            return Ok(token.clone());
        }
        let url = format!("{}/v1/auth/approle/login", self.vault.addr.trim_end_matches('/'));
        let response = self
            .http
            .post(&url)
            .json(&serde_json::json!({ "role_id": role_id.expose(), "secret_id": secret_id.expose() }))
            .send()
            .await
            .map_err(|e| format!("cannot reach Vault: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("AppRole login refused: {}", response.status()));
        }
        let body: serde_json::Value = response.json().await.map_err(|e| format!("unexpected Vault response: {e}"))?;
        let token = body["auth"]["client_token"]
            .as_str()
            .ok_or_else(|| "AppRole login response has no auth.client_token".to_string())?;
        let token = Secret::new(token);
        *cached = Some(token.clone());
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn secrets_never_print() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret} {secret:?}"), "*** ***");
        let reference = SecretRef::parse("hunter2").unwrap().unwrap();
        assert!(!format!("{reference} {reference:?}").contains("hunter2"));
        let error = SecretRef::parse("vault:nope").unwrap_err().to_string();
        assert!(error.contains("vault:MOUNT/PATH#FIELD"), "{error}");
    }

    #[tokio::test]
    async fn env_file_and_literal_references_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pepper");
        std::fs::write(&file, "from-file\n").unwrap();
        let resolver =
            SecretResolver::new([("PEPPER".to_string(), "from-env".to_string())].into(), Duration::from_secs(60));
        let get = |text: String| {
            let resolver = resolver.clone();
            async move { resolver.resolve_setting(&text).await.unwrap().unwrap().expose().to_owned() }
        };
        assert_eq!(get("env:PEPPER".into()).await, "from-env");
        assert_eq!(get(format!("file:{}", file.display())).await, "from-file");
        assert_eq!(get("plain".into()).await, "plain");
        assert!(resolver.resolve_setting("").await.unwrap().is_none());
        let missing = resolver.resolve_setting("env:NOPE").await.unwrap_err().to_string();
        assert!(missing.contains("env:NOPE"), "{missing}");

        // Cached for the TTL; read again after invalidation (rotation).
        std::fs::write(&file, "rotated\n").unwrap();
        assert_eq!(get(format!("file:{}", file.display())).await, "from-file");
        resolver.invalidate();
        assert_eq!(get(format!("file:{}", file.display())).await, "rotated");
    }

    /// A small HTTP server that speaks Vault's KV v2 read and AppRole login.
    async fn fake_vault(reads: Arc<AtomicUsize>) -> String {
        use axum::routing::{get, post};
        let app = axum::Router::new()
            .route(
                "/v1/auth/approle/login",
                post(|axum::Json(body): axum::Json<serde_json::Value>| async move {
                    if body["role_id"] == "role" && body["secret_id"] == "s3cret" {
                        (http::StatusCode::OK, axum::Json(serde_json::json!({"auth": {"client_token": "t-approle"}})))
                    } else {
                        (http::StatusCode::BAD_REQUEST, axum::Json(serde_json::json!({"errors": ["invalid"]})))
                    }
                }),
            )
            .route(
                "/v1/secret/data/warden/jwt",
                get(move |headers: http::HeaderMap| {
                    let reads = reads.clone();
                    async move {
                        let token = headers.get("x-vault-token").and_then(|v| v.to_str().ok()).unwrap_or("");
                        if token != "t-root" && token != "t-approle" {
                            return (
                                http::StatusCode::FORBIDDEN,
                                axum::Json(serde_json::json!({"errors": ["permission denied"]})),
                            );
                        }
                        reads.fetch_add(1, Ordering::SeqCst);
                        (
                            http::StatusCode::OK,
                            axum::Json(serde_json::json!({
                                "data": {"data": {"secret": "vault-value", "count": 3}, "metadata": {"version": 2}}
                            })),
                        )
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn vault_kv2_with_token_and_approle() {
        let reads = Arc::new(AtomicUsize::new(0));
        let addr = fake_vault(reads.clone()).await;
        let token = SecretResolver::new(
            [("VAULT_ADDR".to_string(), addr.clone()), ("VAULT_TOKEN".to_string(), "t-root".to_string())].into(),
            Duration::from_secs(60),
        );
        let value = token.resolve_setting("vault:secret/warden/jwt#secret").await.unwrap().unwrap();
        assert_eq!(value.expose(), "vault-value");
        // Cached: a second resolve does not ask Vault.
        token.resolve_setting("vault:secret/warden/jwt#secret").await.unwrap();
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        let error = token.resolve_setting("vault:secret/warden/jwt#missing").await.unwrap_err().to_string();
        assert!(error.contains("\"missing\" is not in the secret") && !error.contains("vault-value"), "{error}");
        let error = token.resolve_setting("vault:secret/warden/jwt#count").await.unwrap_err().to_string();
        assert!(error.contains("not a string"), "{error}");

        let approle = SecretResolver::new(
            [
                ("VAULT_ADDR".to_string(), addr.clone()),
                ("VAULT_ROLE_ID".to_string(), "role".to_string()),
                ("VAULT_SECRET_ID".to_string(), "s3cret".to_string()),
            ]
            .into(),
            Duration::from_secs(60),
        );
        assert_eq!(
            approle.resolve_setting("vault:secret/warden/jwt#secret").await.unwrap().unwrap().expose(),
            "vault-value"
        );

        let wrong = SecretResolver::new(
            [("VAULT_ADDR".to_string(), addr), ("VAULT_TOKEN".to_string(), "wrong".to_string())].into(),
            Duration::from_secs(60),
        );
        let error = wrong.resolve_setting("vault:secret/warden/jwt#secret").await.unwrap_err().to_string();
        assert!(error.contains("403"), "{error}");
    }
}
