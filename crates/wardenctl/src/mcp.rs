//! `wardenctl mcp tools|call`: the MCP gateway as an agent sees it, with
//! rmcp's client over Streamable HTTP and the agent's key: the tools it
//! may use, and what a call answers (the tool's result, Warden's denial
//! with its reasons, or the approval a held call waits for).

use rmcp::model::{CallToolRequestParams, JsonObject, Tool};
use rmcp::service::RunningService;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{RoleClient, ServiceExt};

use crate::Failure;
use crate::remote::{RemoteArgs, print_json};

#[derive(Debug, clap::Subcommand)]
pub enum McpCommand {
    /// The tools the gateway lists to this agent (only those it could ever
    /// be allowed).
    Tools,
    /// Call a tool through the gateway, as an agent.
    Call(CallArgs),
}

#[derive(Debug, clap::Args)]
pub struct CallArgs {
    /// The tool, as listed (`support__lookup_order`).
    tool: String,
    /// An argument, `KEY=VALUE`, read as the tool's input schema says
    /// (text for a string property, JSON otherwise). Repeat for several.
    #[arg(long = "arg", value_name = "KEY=VALUE")]
    args: Vec<String>,
    /// All arguments as one JSON object (combined with --arg).
    #[arg(long, value_name = "JSON")]
    json: Option<String>,
    /// Ties the call's decision to a ticket, conversation or workflow (sent
    /// in the call's `_meta`).
    #[arg(long)]
    correlation_id: Option<String>,
}

type Client = RunningService<RoleClient, ()>;

async fn connect(args: &RemoteArgs) -> Result<Client, Failure> {
    // rmcp's HTTP client speaks TLS with the crypto the rest of Warden uses.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let url = args.mcp_addr();
    let mut config = StreamableHttpClientTransportConfig::with_uri(url);
    if let Some(key) = args.api_key() {
        config = config.auth_header(key.to_owned());
    }
    ().serve(StreamableHttpClientTransport::from_config(config)).await.map_err(|error| {
        let text = error.to_string();
        let hint = if text.to_lowercase().contains("auth") {
            "; give the agent's key with --api-key or WARDEN_API_KEY"
        } else {
            "; is the MCP gateway running there (--mcp-addr)?"
        };
        Failure::Failed(format!("cannot connect to {url}: {text}{hint}"))
    })
}

pub async fn run(args: &RemoteArgs, command: McpCommand) -> Result<(), Failure> {
    let client = connect(args).await?;
    let tools = client.peer().list_all_tools().await.map_err(|e| format!("tools/list: {e}"))?;
    let outcome = match command {
        McpCommand::Tools => {
            if args.json() {
                print_json(serde_json::to_value(&tools).expect("json"));
            } else {
                println!("{:<32} DESCRIPTION", "TOOL");
                for tool in &tools {
                    println!("{:<32} {}", tool.name, tool.description.as_deref().unwrap_or("").trim());
                }
            }
            Ok(())
        }
        McpCommand::Call(call) => {
            let arguments = arguments(&call, tools.iter().find(|t| t.name == call.tool))?;
            let mut params = CallToolRequestParams::new(call.tool.clone()).with_arguments(arguments);
            if let Some(id) = &call.correlation_id {
                let mut meta = rmcp::model::RequestMetaObject::new();
                meta.insert("warden.dev/correlation_id".to_owned(), serde_json::json!(id));
                params.meta = Some(meta);
            }
            let result = client.peer().call_tool(params).await.map_err(|e| format!("tools/call: {e}"))?;
            let text: Vec<String> = result.content.iter().filter_map(|c| c.as_text().map(|t| t.text.clone())).collect();
            let failed = result.is_error == Some(true);
            if args.json() {
                print_json(serde_json::to_value(&result).expect("json"));
            } else {
                for line in &text {
                    println!("{}{line}", if failed { "error: " } else { "" });
                }
            }
            if failed { Err(Failure::Failed(format!("{} did not run", call.tool))) } else { Ok(()) }
        }
    };
    let _ = client.cancel().await;
    outcome
}

/// The call's arguments: `--json`, then each `--arg` read as the tool's
/// schema says.
fn arguments(call: &CallArgs, tool: Option<&Tool>) -> Result<JsonObject, Failure> {
    let mut arguments = match &call.json {
        Some(text) => match serde_json::from_str(text) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => return Err(Failure::Failed(format!("--json {text:?} is not a JSON object"))),
        },
        None => JsonObject::new(),
    };
    for pair in &call.args {
        let (key, value) = pair.split_once('=').ok_or_else(|| format!("--arg {pair:?} is not KEY=VALUE"))?;
        if key.is_empty() {
            return Err(Failure::Failed(format!("--arg {pair:?} has no key")));
        }
        let declared = tool
            .and_then(|t| t.input_schema.get("properties"))
            .and_then(|p| p.get(key))
            .and_then(|p| p.get("type"))
            .and_then(|t| t.as_str());
        let value = match declared {
            Some("string") => serde_json::Value::String(value.to_owned()),
            Some(kind) => serde_json::from_str(value)
                .map_err(|_| format!("--arg {key}: {value:?} is not a {kind} (the tool's schema)"))?,
            None => serde_json::from_str(value).unwrap_or_else(|_| serde_json::Value::String(value.to_owned())),
        };
        arguments.insert(key.to_owned(), value);
    }
    Ok(arguments)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool() -> Tool {
        let schema = serde_json::json!({"type": "object", "properties": {
            "order_id": {"type": "string"}, "amount": {"type": "number"}}});
        Tool::new("refund", "", std::sync::Arc::new(schema.as_object().unwrap().clone()))
    }

    fn call(args: &[&str], json: Option<&str>) -> CallArgs {
        CallArgs {
            tool: "refund".into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            json: json.map(str::to_owned),
            correlation_id: None,
        }
    }

    #[test]
    fn arguments_follow_the_tool_s_schema() {
        let got = arguments(&call(&["order_id=1234", "amount=300", "note=5"], None), Some(&tool())).unwrap();
        assert_eq!(
            serde_json::Value::Object(got),
            serde_json::json!({"order_id": "1234", "amount": 300, "note": 5}),
            "a string property stays text; others are JSON"
        );
        let got = arguments(&call(&["amount=2"], Some(r#"{"order_id": "x", "amount": 1}"#)), Some(&tool())).unwrap();
        assert_eq!(serde_json::Value::Object(got), serde_json::json!({"order_id": "x", "amount": 2}));
        for (bad, why) in [
            (call(&["amount=lots"], None), "is not a number"),
            (call(&["amount"], None), "KEY=VALUE"),
            (call(&["=1"], None), "no key"),
            (call(&[], Some("[1]")), "not a JSON object"),
        ] {
            let Err(Failure::Failed(message)) = arguments(&bad, Some(&tool())) else { panic!("{bad:?}") };
            assert!(message.contains(why), "{message}");
        }
    }
}
