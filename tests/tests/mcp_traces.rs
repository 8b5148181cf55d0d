//! One trace from an MCP client's tool call through the MCP gateway to the
//! policy engine's Evaluate, and on to the upstream: the agent's
//! `traceparent` (in the call's `_meta`) is continued, checked span by
//! span with an in-memory exporter.

use std::sync::{Arc, Mutex};

use opentelemetry_sdk::trace::SpanData;
use rmcp::model::{CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, RequestMetaObject};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{RoleServer, ServerHandler, ServiceExt};
use warden_mcp_gateway::{GatewayConfig, GatewayServer};
use warden_policy_engine::{PolicyEngine, PolicyEngineConfig};
use warden_tests::Sandbox;

fn method(span: &SpanData) -> String {
    span.attributes.iter().find(|kv| kv.key.as_str() == "rpc.method").map(|kv| kv.value.to_string()).unwrap_or_default()
}

/// An upstream that keeps the `_meta` of the calls it receives.
#[derive(Clone, Default)]
struct Upstream {
    metas: Arc<Mutex<Vec<RequestMetaObject>>>,
}

impl ServerHandler for Upstream {
    fn get_info(&self) -> rmcp::model::InitializeResult {
        rmcp::model::InitializeResult::new(rmcp::model::ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _request: Option<rmcp::model::PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ListToolsResult, rmcp::ErrorData> {
        let schema = serde_json::json!({"type": "object"}).as_object().unwrap().clone();
        Ok(rmcp::model::ListToolsResult::with_all_items(vec![rmcp::model::Tool::new("ping", "", Arc::new(schema))]))
    }

    async fn call_tool(
        &self,
        _request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, rmcp::ErrorData> {
        self.metas.lock().unwrap().push(context.meta.clone());
        Ok(CallToolResult::success(vec![ContentBlock::text("pong")]).into())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_spans_the_mcp_call_the_decision_and_the_upstream_call() {
    let (exporter, provider) = warden_tests::capture_spans();

    let sandbox = Sandbox::new(&[("p.yaml", "rules:\n  - name: rest\n    effect: allow\n")]);
    let engine =
        PolicyEngine::start(PolicyEngineConfig::for_tests(sandbox.policies_dir(), sandbox.data.path())).await.unwrap();
    let upstream = Upstream::default();
    let handler = upstream.clone();
    let service = StreamableHttpService::new(
        move || Ok(handler.clone()),
        LocalSessionManager::default().into(),
        StreamableHttpServerConfig::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tools = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, axum::Router::new().nest_service("/mcp", service)).await });
    let upstreams = sandbox.data.path().join("upstreams.yaml");
    std::fs::write(&upstreams, format!("upstreams:\n  - name: t\n    url: http://{tools}/mcp\n")).unwrap();
    let gateway =
        GatewayServer::start(GatewayConfig::for_tests(sandbox.data.path().join("gw"), &upstreams, &engine.url()))
            .await
            .unwrap();

    let transport = rmcp::transport::StreamableHttpClientTransport::from_uri(gateway.mcp_url());
    let client = ().serve(transport).await.unwrap();
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let mut params = CallToolRequestParams::new("t__ping");
    let mut meta = RequestMetaObject::new();
    meta.insert("traceparent".into(), serde_json::json!(format!("00-{trace}-b7ad6b7169203331-01")));
    params.meta = Some(meta);
    let answer = client.peer().call_tool(params).await.unwrap();
    assert_ne!(answer.is_error, Some(true), "{answer:?}");

    let _ = provider.force_flush();
    let spans = exporter.get_finished_spans().unwrap();
    let call = spans.iter().find(|s| s.name == "mcp.tools_call").expect("the gateway's span");
    assert_eq!(call.span_context.trace_id().to_string(), trace, "the agent's trace is continued");
    let evaluate = spans
        .iter()
        .find(|s| method(s) == "/warden.policy.v1.PolicyService/Evaluate")
        .unwrap_or_else(|| panic!("{:#?}", spans.iter().map(|s| (&s.name, method(s))).collect::<Vec<_>>()));
    assert_eq!(evaluate.span_context.trace_id().to_string(), trace, "the decision is in the agent's trace");
    // The upstream got the trace in the call's _meta.
    let metas = upstream.metas.lock().unwrap().clone();
    let traceparent = metas[0].get("traceparent").and_then(|v| v.as_str()).unwrap_or_default().to_owned();
    assert!(traceparent.starts_with(&format!("00-{trace}-")), "{metas:?}");
    let _ = client.cancel().await;
    gateway.shutdown().await;
    engine.shutdown().await;
}
