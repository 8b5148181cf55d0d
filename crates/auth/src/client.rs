//! What a caller presents: a bearer credential (API key or token) on every
//! call, and TLS settings (a CA to trust, a client certificate for mTLS).
//! Used by the client SDK and by services calling each other.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::secret::{Secret, SecretResolver};

/// The `[outbound]` section: how a service authenticates to the other
/// Warden services it calls.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundConfig {
    /// A secret reference (`env:`, `file:`, `vault:`) to the API key or
    /// token sent as `authorization: Bearer ...`.
    pub credential: String,
    /// PEM CA that signed the other services' certificates (for `https://` URLs).
    pub tls_ca: PathBuf,
    /// This service's client certificate, for mTLS.
    pub tls_cert: PathBuf,
    /// Its private key: a path or a secret reference.
    pub tls_key: String,
    /// The name to check in the server's certificate; default: the URL's host.
    pub tls_domain: String,
}

impl OutboundConfig {
    pub fn validate(&self) -> Result<(), warden_config::ConfigError> {
        if self.tls_cert.as_os_str().is_empty() != self.tls_key.is_empty() {
            return Err(warden_config::ConfigError::invalid(
                "outbound.tls_key",
                "(hidden)",
                "tls_cert and tls_key go together",
            ));
        }
        crate::SecretRef::parse(&self.credential)
            .map_err(|e| warden_config::ConfigError::invalid("outbound.credential", "(hidden)", e.to_string()))?;
        Ok(())
    }

    /// Reads the credential and certificates.
    pub async fn resolve(&self, resolver: &SecretResolver) -> Result<ClientIdentity, String> {
        let bearer = resolver.resolve_setting(&self.credential).await.map_err(|e| e.to_string())?;
        let mut identity = ClientIdentity { bearer, ..ClientIdentity::default() };
        if !self.tls_ca.as_os_str().is_empty() {
            let ca = std::fs::read(&self.tls_ca).map_err(|e| format!("{}: {e}", self.tls_ca.display()))?;
            let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
            if !self.tls_cert.as_os_str().is_empty() {
                let cert = std::fs::read(&self.tls_cert).map_err(|e| format!("{}: {e}", self.tls_cert.display()))?;
                let key = crate::tls_key_pem(resolver, &self.tls_key).await.map_err(|e| e.to_string())?;
                tls = tls.identity(Identity::from_pem(cert, key.expose().as_bytes()));
            }
            if !self.tls_domain.is_empty() {
                tls = tls.domain_name(self.tls_domain.clone());
            }
            identity.tls = Some(tls);
        }
        Ok(identity)
    }
}

/// A resolved outbound identity.
#[derive(Debug, Clone, Default)]
pub struct ClientIdentity {
    pub bearer: Option<Secret>,
    pub tls: Option<ClientTlsConfig>,
}

impl ClientIdentity {
    /// A bearer credential only.
    pub fn bearer(token: impl Into<String>) -> ClientIdentity {
        ClientIdentity { bearer: Some(Secret::new(token.into())), tls: None }
    }

    /// An endpoint for `url` with these TLS settings applied.
    pub fn endpoint(&self, url: &str) -> Result<Endpoint, String> {
        let endpoint = Endpoint::from_shared(url.to_owned()).map_err(|e| e.to_string())?;
        match &self.tls {
            Some(tls) => endpoint.tls_config(tls.clone()).map_err(|e| e.to_string()),
            None => Ok(endpoint),
        }
    }

    /// The interceptor that adds the credential (and trace context) to calls.
    pub fn credentials(&self) -> Result<CallCredentials, String> {
        let authorization = match &self.bearer {
            None => None,
            Some(token) => Some(
                MetadataValue::try_from(format!("Bearer {}", token.expose()))
                    .map_err(|_| "the credential has characters a header cannot carry".to_string())?,
            ),
        };
        Ok(CallCredentials { authorization })
    }
}

/// Adds `authorization: Bearer ...` and the W3C trace context to every call.
#[derive(Clone, Default)]
pub struct CallCredentials {
    authorization: Option<AsciiMetadataValue>,
}

impl std::fmt::Debug for CallCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallCredentials").field("bearer", &self.authorization.as_ref().map(|_| "***")).finish()
    }
}

impl tonic::service::Interceptor for CallCredentials {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let mut request = warden_telemetry::TraceContextInterceptor.call(request)?;
        if let Some(value) = &self.authorization {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}
