//! Outbound HTTP for notifications (webhooks, Slack, PagerDuty), safe by
//! default: redirects are not followed (a receiver that answers 3xx cannot
//! send the body, with its signature and its data, somewhere else), and
//! destinations in link-local ranges, where clouds serve instance metadata
//! and credentials (169.254.0.0/16, fe80::/10, fd00:ec2::254), are refused,
//! whether the URL names the address or a name resolves to it, unless the
//! configuration allows them.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Whether redirects are followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Redirects {
    /// A 3xx answer is the receiver's answer (a failed delivery).
    #[default]
    None,
    /// Followed (at most 5) while they stay on the same scheme, host and port.
    SameOrigin,
}

/// What notifications may reach (the `[webhooks]` section).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookPolicy {
    pub follow_redirects: Redirects,
    /// Allows destinations in link-local ranges (cloud metadata services).
    pub allow_link_local: bool,
}

/// Whether `ip` is link-local or a cloud metadata address.
pub fn link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return v4.is_link_local();
            }
            // fe80::/10, and AWS's IPv6 metadata address.
            (v6.segments()[0] & 0xffc0) == 0xfe80 || v6 == "fd00:ec2::254".parse::<std::net::Ipv6Addr>().expect("ip")
        }
    }
}

/// Refuses a URL whose host is a forbidden address (names are checked
/// when they resolve, by the client's resolver).
pub fn check_url(policy: &WebhookPolicy, url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("invalid URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("{} URLs are not delivered to (http or https only)", parsed.scheme()));
    }
    let ip = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
        _ => None,
    };
    match ip {
        Some(ip) if !policy.allow_link_local && link_local(ip) => Err(format!(
            "{ip} is a link-local address (cloud metadata lives there); set webhooks.allow_link_local to deliver to it"
        )),
        _ => Ok(()),
    }
}

/// A resolver that drops forbidden addresses, so a name pointing at one
/// (a DNS rebinding) fails to connect instead of reaching it.
struct Resolver {
    policy: WebhookPolicy,
}

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> =
                found.iter().copied().filter(|a| policy.allow_link_local || !link_local(a.ip())).collect();
            if allowed.is_empty() && !found.is_empty() {
                return Err(format!(
                    "{host} resolves only to link-local addresses (cloud metadata lives there); \
                     set webhooks.allow_link_local to deliver to it"
                )
                .into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The HTTP client deliveries use.
pub fn http_client(policy: &WebhookPolicy, timeout: Duration) -> reqwest::Client {
    builder(policy, timeout, true).build().unwrap_or_default()
}

/// A receiver's own TLS and redirect settings (Alertmanager's
/// `http_config`), on top of the service's policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// PEM CA certificates to trust, beside the system's.
    pub ca_pem: Option<Vec<u8>>,
    /// PEM client certificate followed by its private key.
    pub identity_pem: Option<Vec<u8>>,
    pub insecure_skip_verify: bool,
    pub min_version: Option<reqwest::tls::Version>,
    pub max_version: Option<reqwest::tls::Version>,
    /// `false` never follows a redirect; `true` follows as far as the
    /// policy allows.
    pub follow_redirects: bool,
}

/// A client for one receiver: the policy's resolver and redirect rule,
/// with the receiver's TLS settings.
pub fn http_client_with(policy: &WebhookPolicy, timeout: Duration, tls: &ClientTls) -> Result<reqwest::Client, String> {
    let mut builder = builder(policy, timeout, tls.follow_redirects);
    if let Some(ca) = &tls.ca_pem {
        for certificate in reqwest::Certificate::from_pem_bundle(ca).map_err(|e| format!("tls_config CA: {e}"))? {
            builder = builder.add_root_certificate(certificate);
        }
    }
    if let Some(identity) = &tls.identity_pem {
        builder = builder.identity(
            reqwest::Identity::from_pem(identity).map_err(|e| format!("tls_config client certificate: {e}"))?,
        );
    }
    if let Some(min) = tls.min_version {
        builder = builder.min_tls_version(min);
    }
    if let Some(max) = tls.max_version {
        builder = builder.max_tls_version(max);
    }
    builder.danger_accept_invalid_certs(tls.insecure_skip_verify).build().map_err(|e| e.to_string())
}

fn builder(policy: &WebhookPolicy, timeout: Duration, follow_redirects: bool) -> reqwest::ClientBuilder {
    let redirect = match policy.follow_redirects {
        _ if !follow_redirects => reqwest::redirect::Policy::none(),
        Redirects::None => reqwest::redirect::Policy::none(),
        Redirects::SameOrigin => {
            let policy = *policy;
            reqwest::redirect::Policy::custom(move |attempt| {
                let same = attempt.previous().first().is_some_and(|first| {
                    first.scheme() == attempt.url().scheme()
                        && first.host_str() == attempt.url().host_str()
                        && first.port_or_known_default() == attempt.url().port_or_known_default()
                });
                if attempt.previous().len() > 5 {
                    attempt.error("too many redirects")
                } else if !same {
                    attempt.error("redirect to another origin")
                } else if let Err(refused) = check_url(&policy, attempt.url().as_str()) {
                    attempt.error(refused)
                } else {
                    attempt.follow()
                }
            })
        }
    };
    reqwest::Client::builder().timeout(timeout).redirect(redirect).dns_resolver(Arc::new(Resolver { policy: *policy }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_and_link_local_addresses_are_refused_by_default() {
        let strict = WebhookPolicy::default();
        for url in [
            "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
            "http://[fe80::1]/hook",
            "http://[fd00:ec2::254]/latest",
            "http://[::ffff:169.254.169.254]/",
        ] {
            assert!(check_url(&strict, url).unwrap_err().contains("link-local"), "{url}");
            let open = WebhookPolicy { allow_link_local: true, ..strict };
            assert!(check_url(&open, url).is_ok(), "{url}");
        }
        for url in ["http://127.0.0.1:9000/hook", "https://hooks.slack.com/services/x", "http://10.0.0.5/hook"] {
            assert!(check_url(&strict, url).is_ok(), "{url}");
        }
        assert!(check_url(&strict, "file:///etc/passwd").is_err());
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_metadata_does_not_connect() {
        use reqwest::dns::Resolve;
        let resolver = Resolver { policy: WebhookPolicy::default() };
        // `localhost` resolves (to loopback): allowed.
        assert!(resolver.resolve("localhost".parse().unwrap()).await.is_ok());
        // A literal link-local name resolves to itself: refused.
        let refused = resolver.resolve("169.254.169.254".parse().unwrap()).await;
        assert!(refused.is_err());
    }
}
