//! JWT / OIDC bearer tokens, for people signing in through SSO and for
//! workloads with an identity provider.
//!
//! Tokens are verified against a JWKS read from a file or URL. The set is
//! cached; a token naming an unknown `kid` makes one refetch (at most one
//! per `jwks_min_refetch`, so a flood of forged kids cannot hammer the
//! provider), and the set is also refreshed every `jwks_refresh`, so a
//! provider's key rotation is accepted without a restart and a removed key
//! stops working.
//!
//! Checked on every token: the signature; the algorithm against the key's
//! type (an RSA or EC public key never verifies an HMAC token, which defeats
//! the HS/RS confusion attack; `alg: none` never parses); `iss` equal to
//! the configured issuer; `aud` containing a configured audience; `exp`
//! required; `nbf` when present. HMAC tokens are accepted only when an
//! `hs256_secret` is configured, and then only against that secret.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::principal::{Kind, Principal};
use crate::secret::Secret;

/// The `[auth.jwt]` section. Off when `issuer` is empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// The required `iss`.
    pub issuer: String,
    /// `aud` must contain one of these (required when `issuer` is set).
    pub audiences: Vec<String>,
    /// JWKS URL (`https://idp/.well-known/jwks.json`).
    pub jwks_url: String,
    /// JWKS file, re-read like the URL.
    pub jwks_file: String,
    #[serde(with = "humantime_serde")]
    pub jwks_refresh: Duration,
    /// Least time between two refetches caused by unknown `kid`s.
    #[serde(with = "humantime_serde")]
    pub jwks_min_refetch: Duration,
    /// A secret reference (`env:`, `file:`, `vault:`) for HS256 tokens;
    /// empty refuses every HMAC-signed token.
    pub hs256_secret: String,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// The claim naming the principal.
    pub principal_claim: String,
    /// The claim holding roles: an array of strings or a space-separated string.
    pub roles_claim: String,
    /// The claim holding the kind (`agent`, `human`, `service`); empty uses `default_kind`.
    pub kind_claim: String,
    pub default_kind: Kind,
    /// The claim holding the agent id globs an agent may act as.
    pub agents_claim: String,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            issuer: String::new(),
            audiences: Vec::new(),
            jwks_url: String::new(),
            jwks_file: String::new(),
            jwks_refresh: Duration::from_secs(300),
            jwks_min_refetch: Duration::from_secs(10),
            hs256_secret: String::new(),
            leeway: Duration::from_secs(30),
            principal_claim: "sub".into(),
            roles_claim: "roles".into(),
            kind_claim: String::new(),
            default_kind: Kind::Human,
            agents_claim: "agents".into(),
        }
    }
}

impl JwtConfig {
    pub fn enabled(&self) -> bool {
        !self.issuer.is_empty()
    }

    pub fn validate(&self) -> Result<(), warden_config::ConfigError> {
        use warden_config::ConfigError;
        if !self.enabled() {
            return Ok(());
        }
        if self.audiences.is_empty() {
            return Err(ConfigError::invalid(
                "auth.jwt.audiences",
                "[]",
                "at least one audience is required: a token for another service must not be accepted",
            ));
        }
        if self.jwks_url.is_empty() && self.jwks_file.is_empty() && self.hs256_secret.is_empty() {
            return Err(ConfigError::invalid("auth.jwt.jwks_url", "", "set jwks_url, jwks_file or hs256_secret"));
        }
        if !self.jwks_url.is_empty() && !self.jwks_url.starts_with("http://") && !self.jwks_url.starts_with("https://")
        {
            return Err(ConfigError::invalid("auth.jwt.jwks_url", &self.jwks_url, "expected an http(s) URL"));
        }
        if self.principal_claim.is_empty() {
            return Err(ConfigError::invalid("auth.jwt.principal_claim", "", "must name a claim"));
        }
        Ok(())
    }
}

/// Why a token was refused. Never contains the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid token: {0}")]
pub struct TokenRejection(pub String);

struct JwksKey {
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
}

#[derive(Default)]
struct Jwks {
    by_kid: HashMap<String, Arc<JwksKey>>,
    /// Keys without a `kid`, tried for tokens without one.
    anonymous: Vec<Arc<JwksKey>>,
}

/// Algorithms a JWK's key type can verify (and only those).
fn algorithms_for(jwk: &Jwk) -> Vec<Algorithm> {
    use Algorithm::*;
    let by_type: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![RS256, RS384, RS512, PS256, PS384, PS512],
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            jsonwebtoken::jwk::EllipticCurve::P256 => vec![ES256],
            jsonwebtoken::jwk::EllipticCurve::P384 => vec![ES384],
            _ => vec![],
        },
        AlgorithmParameters::OctetKeyPair(_) => vec![EdDSA],
        // Symmetric keys in a JWKS are never trusted: anyone who can read
        // the set could sign with them.
        AlgorithmParameters::OctetKey(_) => vec![],
    };
    match jwk.common.key_algorithm.and_then(|alg| alg.to_string().parse::<Algorithm>().ok()) {
        Some(declared) => by_type.into_iter().filter(|a| *a == declared).collect(),
        None => by_type,
    }
}

fn parse_jwks(text: &str) -> Result<Jwks, String> {
    let set: JwkSet = serde_json::from_str(text).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut jwks = Jwks::default();
    for jwk in &set.keys {
        let algorithms = algorithms_for(jwk);
        if algorithms.is_empty() {
            continue;
        }
        let Ok(key) = DecodingKey::from_jwk(jwk) else { continue };
        let key = Arc::new(JwksKey { key, algorithms });
        match &jwk.common.key_id {
            Some(kid) => {
                jwks.by_kid.insert(kid.clone(), key);
            }
            None => jwks.anonymous.push(key),
        }
    }
    Ok(jwks)
}

/// Verifies tokens and maps their claims to principals.
pub struct JwtVerifier {
    config: JwtConfig,
    hs256: Option<DecodingKey>,
    jwks: ArcSwap<Jwks>,
    last_fetch: Mutex<Option<tokio::time::Instant>>,
    http: reqwest::Client,
    /// Verified tokens, until they expire or the key set changes.
    verified: moka::sync::Cache<String, (Arc<Principal>, i64)>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier").field("issuer", &self.config.issuer).finish()
    }
}

impl JwtVerifier {
    /// Builds the verifier and loads the key set once; a set that cannot be
    /// fetched now is retried on the first token and on every refresh.
    pub async fn new(config: JwtConfig, hs256_secret: Option<Secret>) -> Arc<JwtVerifier> {
        let verifier = Arc::new(JwtVerifier {
            hs256: hs256_secret.map(|secret| DecodingKey::from_secret(secret.expose().as_bytes())),
            jwks: ArcSwap::from_pointee(Jwks::default()),
            last_fetch: Mutex::new(None),
            http: reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap_or_default(),
            verified: moka::sync::Cache::builder().max_capacity(10_000).time_to_live(Duration::from_secs(60)).build(),
            config,
        });
        if let Err(error) = verifier.refresh().await {
            tracing::warn!(%error, "cannot load the JWKS; will retry");
        }
        verifier
    }

    fn has_jwks_source(&self) -> bool {
        !self.config.jwks_url.is_empty() || !self.config.jwks_file.is_empty()
    }

    /// Reads the key set again and swaps it in.
    pub async fn refresh(&self) -> Result<usize, String> {
        if !self.has_jwks_source() {
            return Ok(0);
        }
        *self.last_fetch.lock().await = Some(tokio::time::Instant::now());
        let text = if !self.config.jwks_url.is_empty() {
            let response = self
                .http
                .get(&self.config.jwks_url)
                .send()
                .await
                .map_err(|e| format!("cannot fetch {}: {e}", self.config.jwks_url))?;
            if !response.status().is_success() {
                return Err(format!("{} answered {}", self.config.jwks_url, response.status()));
            }
            response.text().await.map_err(|e| format!("cannot read {}: {e}", self.config.jwks_url))?
        } else {
            // A small file read synchronously: no blocking-pool hop, so a
            // paused test clock cannot run ahead of it.
            std::fs::read_to_string(&self.config.jwks_file)
                .map_err(|e| format!("cannot read {}: {e}", self.config.jwks_file))?
        };
        let jwks = parse_jwks(&text)?;
        let count = jwks.by_kid.len() + jwks.anonymous.len();
        self.jwks.store(Arc::new(jwks));
        // A key that left the set must stop vouching for cached tokens.
        self.verified.invalidate_all();
        Ok(count)
    }

    /// Refetches for an unknown kid unless the last fetch was too recent.
    async fn refetch_for_unknown_kid(&self) -> bool {
        if !self.has_jwks_source() {
            return false;
        }
        {
            let last = self.last_fetch.lock().await;
            if last.is_some_and(|at| at.elapsed() < self.config.jwks_min_refetch) {
                return false;
            }
        }
        match self.refresh().await {
            Ok(_) => true,
            Err(error) => {
                tracing::warn!(%error, "cannot refetch the JWKS");
                false
            }
        }
    }

    /// Runs the periodic refresh until the task is aborted.
    pub fn spawn_refresh(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        if !self.has_jwks_source() {
            return None;
        }
        let verifier = self.clone();
        Some(tokio::spawn(async move {
            let mut interval = tokio::time::interval(verifier.config.jwks_refresh);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval.tick().await;
            loop {
                interval.tick().await;
                if let Err(error) = verifier.refresh().await {
                    tracing::warn!(%error, "cannot refresh the JWKS; keeping the last one");
                }
            }
        }))
    }

    pub async fn verify(&self, token: &str) -> Result<Arc<Principal>, TokenRejection> {
        let now = chrono::Utc::now().timestamp();
        if let Some((principal, exp)) = self.verified.get(token)
            && now <= exp
        {
            return Ok(principal);
        }
        let reject = |message: String| TokenRejection(message);
        let header = jsonwebtoken::decode_header(token).map_err(|e| reject(format!("malformed token ({e})")))?;
        let key: Arc<JwksKey> = if matches!(header.alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
            match &self.hs256 {
                Some(key) if header.alg == Algorithm::HS256 => {
                    Arc::new(JwksKey { key: key.clone(), algorithms: vec![Algorithm::HS256] })
                }
                _ => return Err(reject(format!("{:?} tokens are not accepted", header.alg))),
            }
        } else {
            let find = |jwks: &Jwks| match &header.kid {
                Some(kid) => jwks.by_kid.get(kid).cloned(),
                None => jwks.anonymous.iter().find(|k| k.algorithms.contains(&header.alg)).cloned(),
            };
            match find(&self.jwks.load()) {
                Some(key) => key,
                None => {
                    let found = if self.refetch_for_unknown_kid().await { find(&self.jwks.load()) } else { None };
                    found.ok_or_else(|| {
                        reject(format!("unknown signing key {:?}", header.kid.as_deref().unwrap_or("")))
                    })?
                }
            }
        };
        if !key.algorithms.contains(&header.alg) {
            return Err(reject(format!("algorithm {:?} does not fit the signing key", header.alg)));
        }
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&self.config.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = self.config.leeway.as_secs();
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key.key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            reject(match e.kind() {
                ErrorKind::ExpiredSignature => "token expired".into(),
                ErrorKind::ImmatureSignature => "token not yet valid (nbf)".into(),
                ErrorKind::InvalidAudience => "token is for another audience".into(),
                ErrorKind::InvalidIssuer => "token from another issuer".into(),
                ErrorKind::InvalidSignature => "bad signature".into(),
                ErrorKind::MissingRequiredClaim(claim) => format!("missing claim {claim}"),
                other => format!("{other:?}"),
            })
        })?;
        let principal = Arc::new(self.principal(&data.claims)?);
        let exp = data.claims["exp"].as_i64().unwrap_or(now);
        self.verified.insert(token.to_owned(), (principal.clone(), exp));
        Ok(principal)
    }

    fn principal(&self, claims: &serde_json::Value) -> Result<Principal, TokenRejection> {
        let config = &self.config;
        let id = claims[config.principal_claim.as_str()]
            .as_str()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| TokenRejection(format!("claim {} is missing", config.principal_claim)))?;
        let strings = |claim: &str| -> Vec<String> {
            match &claims[claim] {
                serde_json::Value::Array(items) => items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
                serde_json::Value::String(text) => text.split_whitespace().map(str::to_owned).collect(),
                _ => Vec::new(),
            }
        };
        let kind = if config.kind_claim.is_empty() {
            config.default_kind
        } else {
            claims[config.kind_claim.as_str()]
                .as_str()
                .and_then(Kind::parse)
                .ok_or_else(|| TokenRejection(format!("claim {} must be agent, human or service", config.kind_claim)))?
        };
        Ok(Principal::new(
            kind,
            id,
            strings(&config.roles_claim),
            &strings(&config.agents_claim),
            format!("jwt:{}", config.issuer),
        ))
    }
}
