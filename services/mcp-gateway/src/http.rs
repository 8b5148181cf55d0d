//! The agents' side: MCP over Streamable HTTP at `/mcp` (the official SDK's
//! transport), behind the same credentials, role table, rate limits and
//! bad-credential throttle as every Warden surface, and the Protected
//! Resource Metadata (RFC 9728) the MCP authorization chapter points
//! clients to when they present no or a bad credential.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;
use warden_auth::web::Denial;
use warden_auth::{Auth, Caller};

use crate::gateway::{AgentId, Gateway, Handler};

/// The agent id of calls when authentication is off (`insecure_no_auth`).
pub const ANONYMOUS_AGENT: &str = "anonymous";

/// The surface's name in the role table.
pub const SURFACE: &str = "mcp";

struct Surface {
    auth: Arc<Auth>,
    /// `resource_metadata` in `WWW-Authenticate`.
    metadata_url: String,
    metadata: serde_json::Value,
}

/// Where the metadata of `public_url` (`https://host/mcp`) is served:
/// RFC 9728's well-known path with the resource's path appended.
pub fn metadata_url(public_url: &str) -> String {
    let (origin, path) = match public_url.find("://").map(|i| i + 3) {
        Some(start) => match public_url[start..].find('/') {
            Some(slash) => public_url.split_at(start + slash),
            None => (public_url, ""),
        },
        None => (public_url, ""),
    };
    format!("{origin}/.well-known/oauth-protected-resource{path}")
}

/// The MCP endpoint and its metadata. `public_url` is the resource agents
/// address; `issuer` the JWT issuer agents get tokens from (none: API keys
/// only); `allowed_hosts` the `Host` values accepted besides loopback.
pub fn router(
    gateway: Arc<Gateway>,
    auth: Arc<Auth>,
    public_url: &str,
    allowed_hosts: &[String],
    stop: CancellationToken,
) -> axum::Router {
    let mut hosts: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    hosts.extend(allowed_hosts.iter().cloned());
    if let Some(host) = public_url.split("://").nth(1).and_then(|rest| rest.split('/').next()) {
        hosts.push(host.to_owned());
    }
    let config = StreamableHttpServerConfig::default().with_allowed_hosts(hosts).with_cancellation_token(stop);
    let handler = Handler { gateway, agent: None };
    let service =
        StreamableHttpService::new(move || Ok(handler.clone()), LocalSessionManager::default().into(), config);
    let issuer = &auth.config().jwt.issuer;
    let metadata = serde_json::json!({
        "resource": public_url,
        "authorization_servers": if issuer.is_empty() { vec![] } else { vec![issuer.clone()] },
        "bearer_methods_supported": ["header"],
        "resource_name": "Warden MCP gateway",
    });
    let surface = Arc::new(Surface { auth, metadata_url: metadata_url(public_url), metadata });
    let mcp = axum::Router::new()
        .nest_service("/mcp", service)
        .layer(axum::middleware::from_fn_with_state(surface.clone(), admit));
    axum::Router::new()
        .route("/.well-known/oauth-protected-resource", get(protected_resource))
        .route("/.well-known/oauth-protected-resource/mcp", get(protected_resource))
        .route("/-/healthy", get(|| async { "OK" }))
        .with_state(surface)
        .merge(mcp)
}

async fn protected_resource(State(surface): State<Arc<Surface>>) -> Response {
    axum::Json(surface.metadata.clone()).into_response()
}

/// Admits a request by the role table (`mcp` surface): the authenticated
/// principal becomes the request's agent.
async fn admit(State(surface): State<Arc<Surface>>, mut request: Request, next: Next) -> Response {
    let method = request.method().as_str().to_owned();
    if !matches!(method.as_str(), "GET" | "POST" | "DELETE") {
        return (http::StatusCode::METHOD_NOT_ALLOWED, [(http::header::ALLOW, "GET, POST, DELETE")]).into_response();
    }
    let remote = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| *addr);
    match surface.auth.admit_http(SURFACE, &method, "/mcp", request.headers(), remote).await {
        Ok(Caller::Principal(principal)) => {
            request.extensions_mut().insert(AgentId(principal.id.clone()));
        }
        Ok(Caller::Anonymous) => {
            request.extensions_mut().insert(AgentId(ANONYMOUS_AGENT.to_owned()));
        }
        Err(denial) => return refused(&surface, &request, denial),
    }
    next.run(request).await
}

/// A refusal as the MCP authorization chapter describes it: `401` with a
/// `WWW-Authenticate` challenge naming the resource metadata, `403` for a
/// credential without the role, `429` with `Retry-After`.
fn refused(surface: &Surface, request: &Request, denial: Denial) -> Response {
    let status = denial.status();
    let mut response = (status, axum::Json(serde_json::json!({ "error": denial.message }))).into_response();
    let headers = response.headers_mut();
    let presented = request.headers().contains_key(http::header::AUTHORIZATION);
    let challenge = match status {
        http::StatusCode::UNAUTHORIZED if presented => {
            Some(format!("Bearer error=\"invalid_token\", resource_metadata=\"{}\"", surface.metadata_url))
        }
        http::StatusCode::UNAUTHORIZED => Some(format!("Bearer resource_metadata=\"{}\"", surface.metadata_url)),
        http::StatusCode::FORBIDDEN => {
            Some(format!("Bearer error=\"insufficient_scope\", resource_metadata=\"{}\"", surface.metadata_url))
        }
        _ => None,
    };
    if let Some(value) = challenge.and_then(|c| http::HeaderValue::from_str(&c).ok()) {
        headers.insert(http::header::WWW_AUTHENTICATE, value);
    }
    if let Some(retry_after) = denial.retry_after_header() {
        headers.insert(http::header::RETRY_AFTER, retry_after);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_lives_at_the_well_known_path_of_the_resource() {
        assert_eq!(
            metadata_url("https://tools.example.com/mcp"),
            "https://tools.example.com/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(metadata_url("http://127.0.0.1:8095"), "http://127.0.0.1:8095/.well-known/oauth-protected-resource");
    }
}
