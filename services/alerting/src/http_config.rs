//! Alertmanager's `http_config` on a webhook, Slack or PagerDuty receiver:
//! credentials sent with each notification (`authorization`,
//! `basic_auth`, `bearer_token`, `bearer_token_file`), TLS towards the
//! receiver (`tls_config`: a CA, a client certificate, the protocol
//! versions, skipping verification) and `follow_redirects`.
//!
//! Credentials take Warden's secret references as well as values
//! (`env:NAME`, `file:PATH`, `vault:...`); the `*_file` fields read the
//! file at each delivery, as Alertmanager does, so a rotated credential
//! needs no reload. Redirects are followed only as far as the service's
//! `[webhooks] follow_redirects` allows: `follow_redirects: false` turns
//! them off for one receiver, `true` (Alertmanager's default) cannot turn
//! them on past the service's policy.

use serde::{Deserialize, Serialize};
use warden_server::delivery::Notified;
use warden_server::webhook::ClientTls;

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    #[serde(default)]
    pub authorization: Option<Authorization>,
    #[serde(default)]
    pub basic_auth: Option<BasicAuth>,
    #[serde(default)]
    pub bearer_token: String,
    #[serde(default)]
    pub bearer_token_file: String,
    #[serde(default)]
    pub tls_config: TlsConfig,
    #[serde(default = "yes")]
    pub follow_redirects: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            authorization: None,
            basic_auth: None,
            bearer_token: String::new(),
            bearer_token_file: String::new(),
            tls_config: TlsConfig::default(),
            follow_redirects: true,
        }
    }
}

/// `authorization`: a header `Authorization: TYPE CREDENTIALS`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Authorization {
    /// `Bearer` when empty.
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub credentials: String,
    #[serde(default)]
    pub credentials_file: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub username_file: String,
    #[serde(default)]
    pub password: String,
    #[serde(default)]
    pub password_file: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM: the CA certificates that sign the receiver's certificate, inline
    /// or from a file.
    #[serde(default)]
    pub ca: String,
    #[serde(default)]
    pub ca_file: String,
    /// PEM: the client certificate and its key, inline or from files.
    #[serde(default)]
    pub cert: String,
    #[serde(default)]
    pub cert_file: String,
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub key_file: String,
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// `TLS12` or `TLS13` (Alertmanager's names; TLS 1.0 and 1.1 are not
    /// offered).
    #[serde(default)]
    pub min_version: String,
    #[serde(default)]
    pub max_version: String,
}

fn tls_version(field: &str, text: &str) -> Result<Option<reqwest::tls::Version>, String> {
    match text {
        "" => Ok(None),
        "TLS12" => Ok(Some(reqwest::tls::Version::TLS_1_2)),
        "TLS13" => Ok(Some(reqwest::tls::Version::TLS_1_3)),
        "TLS10" | "TLS11" => Err(format!("{field}: {text} is not offered (TLS12 or TLS13)")),
        other => Err(format!("{field}: unknown TLS version {other:?} (TLS12 or TLS13)")),
    }
}

/// At most one of a pair of fields (`url` or `url_file`, ...) is set.
pub(crate) fn one_of(path: &str, a: (&str, &str), b: (&str, &str)) -> Result<(), String> {
    if !a.1.is_empty() && !b.1.is_empty() {
        return Err(format!("{path}: at most one of {} and {} may be set", a.0, b.0));
    }
    Ok(())
}

impl HttpConfig {
    /// The checks Alertmanager makes at load, with the field's path.
    pub fn validate(&self, path: &str) -> Result<(), String> {
        let schemes = [
            self.authorization.is_some(),
            self.basic_auth.is_some(),
            !self.bearer_token.is_empty() || !self.bearer_token_file.is_empty(),
        ];
        if schemes.iter().filter(|set| **set).count() > 1 {
            return Err(format!(
                "{path}: at most one of authorization, basic_auth and bearer_token/bearer_token_file may be set"
            ));
        }
        one_of(path, ("bearer_token", &self.bearer_token), ("bearer_token_file", &self.bearer_token_file))?;
        if let Some(authorization) = &self.authorization {
            let path = format!("{path}.authorization");
            if authorization.kind.eq_ignore_ascii_case("basic") {
                return Err(format!("{path}: type Basic is basic_auth's job (use basic_auth)"));
            }
            if authorization.kind.contains(char::is_whitespace) {
                return Err(format!("{path}.type: {:?} is not a single word", authorization.kind));
            }
            one_of(
                &path,
                ("credentials", &authorization.credentials),
                ("credentials_file", &authorization.credentials_file),
            )?;
        }
        if let Some(basic) = &self.basic_auth {
            let path = format!("{path}.basic_auth");
            one_of(&path, ("username", &basic.username), ("username_file", &basic.username_file))?;
            one_of(&path, ("password", &basic.password), ("password_file", &basic.password_file))?;
        }
        let tls = &self.tls_config;
        let path = format!("{path}.tls_config");
        one_of(&path, ("ca", &tls.ca), ("ca_file", &tls.ca_file))?;
        one_of(&path, ("cert", &tls.cert), ("cert_file", &tls.cert_file))?;
        one_of(&path, ("key", &tls.key), ("key_file", &tls.key_file))?;
        let has_cert = !tls.cert.is_empty() || !tls.cert_file.is_empty();
        let has_key = !tls.key.is_empty() || !tls.key_file.is_empty();
        if has_cert != has_key {
            return Err(format!("{path}: a client certificate needs its key, and a key its certificate"));
        }
        let min = tls_version(&format!("{path}.min_version"), &tls.min_version)?;
        let max = tls_version(&format!("{path}.max_version"), &tls.max_version)?;
        if let (Some(min), Some(max)) = (min, max)
            && min > max
        {
            return Err(format!("{path}: min_version is above max_version"));
        }
        Ok(())
    }

    /// Whether notifications need a client of their own (TLS settings, or
    /// redirects turned off); otherwise the service's shared client serves.
    pub fn needs_own_client(&self) -> bool {
        self.tls_config != TlsConfig::default() || !self.follow_redirects
    }

    /// The client settings, with the PEM files read.
    pub fn client_tls(&self) -> Result<ClientTls, String> {
        let tls = &self.tls_config;
        let pem = |inline: &str, file: &str, what: &str| -> Result<Option<Vec<u8>>, String> {
            if !inline.is_empty() {
                return Ok(Some(inline.as_bytes().to_vec()));
            }
            if file.is_empty() {
                return Ok(None);
            }
            std::fs::read(file).map(Some).map_err(|e| format!("tls_config.{what}_file {file}: {e}"))
        };
        let identity = match (pem(&tls.cert, &tls.cert_file, "cert")?, pem(&tls.key, &tls.key_file, "key")?) {
            (Some(mut cert), Some(key)) => {
                cert.push(b'\n');
                cert.extend_from_slice(&key);
                Some(cert)
            }
            _ => None,
        };
        Ok(ClientTls {
            ca_pem: pem(&tls.ca, &tls.ca_file, "ca")?,
            identity_pem: identity,
            insecure_skip_verify: tls.insecure_skip_verify,
            min_version: tls_version("tls_config.min_version", &tls.min_version)?,
            max_version: tls_version("tls_config.max_version", &tls.max_version)?,
            follow_redirects: self.follow_redirects,
        })
    }

    /// The `Authorization` header to send, if any; `resolve` reads a
    /// setting (a value or a secret reference).
    pub async fn authorization<F, Fut>(&self, resolve: F) -> Result<Option<String>, Notified>
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = Result<String, Notified>>,
    {
        let value_or_file = |value: &str, file: &str| {
            if file.is_empty() { value.to_owned() } else { format!("file:{file}") }
        };
        if let Some(authorization) = &self.authorization {
            let kind = if authorization.kind.is_empty() { "Bearer" } else { authorization.kind.as_str() };
            let setting = value_or_file(&authorization.credentials, &authorization.credentials_file);
            let credentials = if setting.is_empty() { String::new() } else { resolve(setting).await? };
            return Ok(Some(format!("{kind} {credentials}").trim_end().to_owned()));
        }
        if let Some(basic) = &self.basic_auth {
            use base64::Engine;
            let username = match value_or_file(&basic.username, &basic.username_file) {
                setting if setting.is_empty() => String::new(),
                setting => resolve(setting).await?,
            };
            let password = match value_or_file(&basic.password, &basic.password_file) {
                setting if setting.is_empty() => String::new(),
                setting => resolve(setting).await?,
            };
            let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
            return Ok(Some(format!("Basic {encoded}")));
        }
        let setting = value_or_file(&self.bearer_token, &self.bearer_token_file);
        if setting.is_empty() {
            return Ok(None);
        }
        Ok(Some(format!("Bearer {}", resolve(setting).await?)))
    }
}
