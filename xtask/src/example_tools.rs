//! The example MCP server behind the MCP gateway in `cargo xtask dev` (and
//! the upstream of `cargo xtask bench mcp`): a support desk's tools,
//! answering from memory, served over Streamable HTTP with rmcp. It
//! checks nothing itself; the gateway in front of it decides.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation, InitializeResult,
    JsonObject, ListToolsResult, PaginatedRequestParams, ServerCapabilities, Tool, ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use tokio_util::sync::CancellationToken;

/// The tools, and how many calls they answered.
#[derive(Clone, Default)]
pub struct ExampleTools {
    pub calls: Arc<AtomicU64>,
}

fn schema(properties: serde_json::Value, required: &[&str]) -> Arc<JsonObject> {
    let schema = serde_json::json!({"type": "object", "properties": properties, "required": required});
    Arc::new(schema.as_object().expect("an object").clone())
}

/// What the tools are.
pub fn tools() -> Vec<Tool> {
    vec![
        Tool::new(
            "issue_refund",
            "Refunds an amount on an order.",
            schema(
                serde_json::json!({"order_id": {"type": "string"}, "amount": {"type": "number"}}),
                &["order_id", "amount"],
            ),
        ),
        Tool::new(
            "lookup_order",
            "Looks an order up.",
            schema(serde_json::json!({"order_id": {"type": "string"}}), &["order_id"]),
        )
        .with_annotations(ToolAnnotations::new().read_only(true)),
        Tool::new(
            "send_email",
            "Emails a customer.",
            schema(serde_json::json!({"to": {"type": "string"}, "subject": {"type": "string"}}), &["to", "subject"]),
        ),
        Tool::new(
            "delete_customer",
            "Deletes a customer for good.",
            schema(serde_json::json!({"customer_id": {"type": "string"}}), &["customer_id"]),
        ),
    ]
}

fn arg(arguments: &Option<JsonObject>, name: &str) -> String {
    match arguments.as_ref().and_then(|a| a.get(name)) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

impl ServerHandler for ExampleTools {
    fn get_info(&self) -> InitializeResult {
        InitializeResult::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("warden-example-tools", env!("CARGO_PKG_VERSION")))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let a = &request.arguments;
        let text = match request.name.as_ref() {
            "issue_refund" => format!("refunded {} on order {}", arg(a, "amount"), arg(a, "order_id")),
            "lookup_order" => format!("order {}: shipped", arg(a, "order_id")),
            "send_email" => format!("sent {:?} to {}", arg(a, "subject"), arg(a, "to")),
            "delete_customer" => format!("deleted customer {}", arg(a, "customer_id")),
            other => return Ok(CallToolResult::error(vec![ContentBlock::text(format!("no tool {other}"))]).into()),
        };
        Ok(CallToolResult::success(vec![ContentBlock::text(text)]).into())
    }
}

/// Serves the tools at `http://<listen>/mcp` until `stop` is cancelled.
pub async fn serve(listen: &str, stop: CancellationToken) -> Result<(SocketAddr, ExampleTools), String> {
    let tools = ExampleTools::default();
    let handler = tools.clone();
    let config = StreamableHttpServerConfig::default().with_cancellation_token(stop.clone());
    let service =
        StreamableHttpService::new(move || Ok(handler.clone()), LocalSessionManager::default().into(), config);
    let router = axum::Router::new().nest_service("/mcp", service);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("example tools: cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    // Answers go out as written, as Python's, Node's and Go's servers do.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned()).await;
    });
    Ok((addr, tools))
}
