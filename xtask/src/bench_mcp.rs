//! `cargo xtask bench mcp`: the same `tools/call` straight to an MCP
//! server and through the MCP gateway (one `Evaluate` per call, every
//! decision recorded by the audit service, authentication on), in
//! alternating rounds in one run, at each concurrency asked for; and
//! `Evaluate` alone at the same concurrency, for what one decision's round
//! trip costs. Reports calls per second and p50/p99 each way.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rmcp::model::CallToolRequestParams;
use rmcp::service::RunningService;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{RoleClient, ServiceExt};
use warden_client::{ClientConfig, PolicyClient, Request, Source};

#[derive(Debug, clap::Args)]
pub struct McpArgs {
    /// Calls in flight (one MCP session each), comma separated: each level
    /// is measured.
    #[arg(long, value_delimiter = ',', default_value = "1,32")]
    concurrency: Vec<usize>,
    /// Seconds per phase.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Rounds of (direct, gateway, Evaluate) per level.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

#[derive(Debug, Default)]
struct Phase {
    calls: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    errors: usize,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn percentile(&mut self, p: f64) -> Duration {
        self.latencies.sort_unstable();
        let at = ((self.latencies.len().max(1) - 1) as f64 * p) as usize;
        self.latencies.get(at).copied().unwrap_or_default()
    }
}

type Client = RunningService<RoleClient, ()>;

async fn sessions(url: &str, token: Option<&str>, n: usize) -> Result<Vec<Arc<Client>>, String> {
    let mut clients = Vec::new();
    for _ in 0..n {
        let mut config = StreamableHttpClientTransportConfig::with_uri(url);
        if let Some(token) = token {
            config = config.auth_header(token.to_owned());
        }
        let client = ().serve(StreamableHttpClientTransport::from_config(config)).await.map_err(|e| e.to_string())?;
        clients.push(Arc::new(client));
    }
    Ok(clients)
}

/// `n` workers, each calling `call(worker, i)` back to back for `seconds`;
/// a call answers whether it succeeded.
async fn load<F, Fut>(n: usize, seconds: u64, call: F) -> Phase
where
    F: Fn(usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..n {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let (mut latencies, mut errors, mut i) = (Vec::new(), 0, 0u64);
            while Instant::now() < deadline {
                let begin = Instant::now();
                if call(worker, i).await {
                    latencies.push(begin.elapsed());
                } else {
                    errors += 1;
                }
                i += 1;
            }
            (latencies, errors)
        }));
    }
    let mut phase = Phase::default();
    for task in tasks {
        if let Ok((latencies, errors)) = task.await {
            phase.calls += latencies.len();
            phase.latencies.extend(latencies);
            phase.errors += errors;
        }
    }
    phase.elapsed = started.elapsed();
    phase
}

/// One `lookup_order` call of `order` as `tool`: whether it succeeded.
async fn lookup(client: &Client, tool: &str, order: &str) -> bool {
    let arguments = serde_json::json!({"order_id": order});
    let params =
        CallToolRequestParams::new(tool.to_owned()).with_arguments(arguments.as_object().expect("an object").clone());
    matches!(client.peer().call_tool(params).await, Ok(result) if result.is_error != Some(true))
}

/// `Evaluate` for `agent` looking up `order`: whether the engine allowed it.
async fn allowed(policy: &PolicyClient, agent: &str, order: &str) -> bool {
    let request = Request::new(agent, "support.lookup_order")
        .resource(format!("order/{order}"))
        .param("order_id", order.to_owned());
    matches!(policy.evaluate(request).await, Ok(d) if d.source == Source::PolicyEngine && d.is_allowed())
}

/// Each client calls `tool` back to back for `seconds`.
async fn drive(clients: &[Arc<Client>], tool: &str, seconds: u64) -> Phase {
    let (clients, tool) = (Arc::new(clients.to_vec()), tool.to_owned());
    load(clients.len(), seconds, move |n, i| {
        let (client, tool) = (clients[n].clone(), tool.clone());
        async move { lookup(&client, &tool, &format!("{n}-{i}")).await }
    })
    .await
}

/// What an agent does without the gateway: asks Warden (`Evaluate`), then
/// calls the tool itself when allowed; each client back to back.
async fn advised(clients: &[Arc<Client>], policy: &PolicyClient, seconds: u64) -> Phase {
    let (clients, policy) = (Arc::new(clients.to_vec()), policy.clone());
    load(clients.len(), seconds, move |n, i| {
        let (client, policy) = (clients[n].clone(), policy.clone());
        async move {
            let order = format!("{n}-{i}");
            allowed(&policy, "bench-agent", &order).await && lookup(&client, "lookup_order", &order).await
        }
    })
    .await
}

/// `Evaluate` alone: `n` callers, back to back, for `seconds`.
async fn evaluate(policy: &PolicyClient, agent: &str, n: usize, seconds: u64) -> Phase {
    let (policy, agent) = (policy.clone(), agent.to_owned());
    load(n, seconds, move |worker, i| {
        let (policy, agent) = (policy.clone(), agent.clone());
        async move { allowed(&policy, &agent, &format!("{worker}-{i}")).await }
    })
    .await
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The gateway's own histograms (sum of seconds, count) for allowed calls
/// to upstream `support`: whole calls inside the gateway's handler, their
/// `Evaluate` round trips, their upstream calls.
#[derive(Debug, Default, Clone, Copy)]
struct Inside {
    handler: (f64, u64),
    decision: (f64, u64),
    upstream: (f64, u64),
}

impl Inside {
    fn now() -> Inside {
        let m = &warden_mcp_gateway::metrics::METRICS;
        let read = |h: prometheus::Histogram| (h.get_sample_sum(), h.get_sample_count());
        Inside {
            handler: read(m.duration.with_label_values(&["support", "allow"])),
            decision: read(m.decision_duration.with_label_values(&["support"])),
            upstream: read(m.upstream_duration.with_label_values(&["support"])),
        }
    }

    /// Mean milliseconds of each part between `self` and `later`.
    fn means(self, later: Inside) -> [f64; 3] {
        let mean = |a: (f64, u64), b: (f64, u64)| (b.0 - a.0) * 1000.0 / (b.1.saturating_sub(a.1)).max(1) as f64;
        [mean(self.handler, later.handler), mean(self.decision, later.decision), mean(self.upstream, later.upstream)]
    }
}

fn mean_ms(phase: &Phase) -> f64 {
    phase.latencies.iter().map(|d| ms(*d)).sum::<f64>() / phase.latencies.len().max(1) as f64
}

pub async fn run(args: McpArgs) -> Result<(), String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let stack = Stack::start(dir.path()).await?;
    println!(
        "bench mcp: tools/call lookup_order straight to the MCP server vs through the gateway \
         (Evaluate per call, decision log sync to the audit service, auth on); {} s phases, {} rounds",
        args.seconds, args.rounds
    );
    for &n in &args.concurrency {
        let direct_clients = sessions(&stack.tools_url, None, n).await?;
        let gateway_clients = sessions(&stack.gateway.mcp_url(), Some(&stack.agent_token), n).await?;
        let (mut direct, mut gateway, mut decide, mut advice) =
            (Phase::default(), Phase::default(), Phase::default(), Phase::default());
        let mut parts = [0.0; 3];
        for round in 0..args.rounds {
            let mut d = drive(&direct_clients, "lookup_order", args.seconds).await;
            let before = Inside::now();
            let mut g = drive(&gateway_clients, "support__lookup_order", args.seconds).await;
            let inside = before.means(Inside::now());
            for (total, part) in parts.iter_mut().zip(inside) {
                *total += part / args.rounds as f64;
            }
            let mut e = evaluate(&stack.policy, "bench-agent", n, args.seconds).await;
            let mut a = advised(&direct_clients, &stack.policy, args.seconds).await;
            println!(
                "  {n:>3} in flight, round {}: direct {:>7.0}/s p50 {:.2} ms | gateway {:>7.0}/s p50 {:.2} ms ({:.2}x) \
                 | Evaluate {:>7.0}/s p50 {:.2} ms | Evaluate then direct {:>7.0}/s p50 {:.2} ms",
                round + 1,
                d.rate(),
                ms(d.percentile(0.5)),
                g.rate(),
                ms(g.percentile(0.5)),
                g.rate() / d.rate().max(1e-9),
                e.rate(),
                ms(e.percentile(0.5)),
                a.rate(),
                ms(a.percentile(0.5)),
            );
            for (total, phase) in [(&mut direct, d), (&mut gateway, g), (&mut decide, e), (&mut advice, a)] {
                total.calls += phase.calls;
                total.elapsed += phase.elapsed;
                total.latencies.extend(phase.latencies);
                total.errors += phase.errors;
            }
        }
        let (dp50, dp99, gp50, gp99, ep50) = (
            direct.percentile(0.5),
            direct.percentile(0.99),
            gateway.percentile(0.5),
            gateway.percentile(0.99),
            decide.percentile(0.5),
        );
        println!(
            "  {n:>3} in flight: direct {:.0}/s p50 {:.2} ms p99 {:.2} ms; gateway {:.0}/s p50 {:.2} ms p99 {:.2} ms; \
             throughput {:.2}x of direct; p50 added {:.2} ms = Evaluate p50 {:.2} ms + {:.2} ms; errors {}/{}",
            direct.rate(),
            ms(dp50),
            ms(dp99),
            gateway.rate(),
            ms(gp50),
            ms(gp99),
            gateway.rate() / direct.rate().max(1e-9),
            ms(gp50.saturating_sub(dp50)),
            ms(ep50),
            ms(gp50.saturating_sub(dp50)) - ms(ep50),
            direct.errors,
            gateway.errors + decide.errors,
        );
        // Against what an agent does without the gateway (ask, then act
        // itself): what enforcing the decision costs.
        let ap50 = advice.percentile(0.5);
        println!(
            "  {n:>3} in flight: Evaluate then direct {:.0}/s p50 {:.2} ms p99 {:.2} ms; gateway throughput {:.2}x of it, \
             p50 {:+.2} ms; errors {}",
            advice.rate(),
            ms(ap50),
            ms(advice.percentile(0.99)),
            gateway.rate() / advice.rate().max(1e-9),
            ms(gp50) - ms(ap50),
            advice.errors,
        );
        // Where a gateway call's time goes, in means (ms): the agent's view,
        // the gateway's handler (the rest is HTTP, authentication and the
        // MCP session on the agents' side), its Evaluate and its upstream
        // call (the rest of the handler is preparing and recording).
        let [handler, decision, upstream] = parts;
        println!(
            "  {n:>3} in flight, gateway call means: agent sees {:.3} ms = outside the handler {:.3} + handler {:.3} \
             (Evaluate {:.3} + upstream {:.3} + own work {:.3}); direct call {:.3} ms, Evaluate alone {:.3} ms",
            mean_ms(&gateway),
            mean_ms(&gateway) - handler,
            handler,
            decision,
            upstream,
            handler - decision - upstream,
            mean_ms(&direct),
            mean_ms(&decide),
        );
        for client in direct_clients.into_iter().chain(gateway_clients) {
            if let Ok(client) = Arc::try_unwrap(client) {
                let _ = client.cancel().await;
            }
        }
    }
    stack.stop().await;
    Ok(())
}

/// Audit, the policy engine (recording every decision), the example tools
/// and the gateway in front of them, with keys.
struct Stack {
    audit: warden_audit::AuditServer,
    engine: warden_policy_engine::PolicyEngine,
    gateway: warden_mcp_gateway::GatewayServer,
    tools_url: String,
    agent_token: String,
    policy: PolicyClient,
    stop_tools: tokio_util::sync::CancellationToken,
}

impl Stack {
    async fn start(dir: &std::path::Path) -> Result<Stack, String> {
        use warden_auth::Kind;
        let mut keys = warden_auth::KeyFile::default();
        let mut token = |principal: &str, kind: Kind, roles: &[&str], agents: &[&str]| {
            let roles = roles.iter().map(|r| (*r).to_owned()).collect();
            let agents = agents.iter().map(|a| (*a).to_owned()).collect();
            let key = warden_auth::api_key::create_key(principal, kind, roles, agents, None, None);
            keys.keys.push(key.entry);
            key.token.expose().to_owned()
        };
        let service = token("engine", Kind::Service, &["service"], &[]);
        let gateway_key = token("gateway", Kind::Service, &["service"], &["*"]);
        let agent_token = token("bench-agent", Kind::Agent, &["agent"], &[]);
        let keys_file = dir.join("keys.toml");
        std::fs::write(&keys_file, keys.to_toml()).map_err(|e| e.to_string())?;
        let auth = warden_auth::AuthConfig { keys_file, ..Default::default() };

        let mut config = warden_audit::AuditConfig::for_tests(dir.join("audit"));
        config.auth = auth.clone();
        let audit = warden_audit::AuditServer::start(config).await.map_err(|e| format!("audit: {e}"))?;
        let policies = dir.join("policies");
        std::fs::create_dir_all(&policies).map_err(|e| e.to_string())?;
        std::fs::write(
            policies.join("tools.yaml"),
            "rules:\n  - name: no-deleting\n    actions: [\"support.delete_customer\"]\n    effect: deny\n    reason: \"no\"\n  - name: work\n    effect: allow\n",
        )
        .map_err(|e| e.to_string())?;
        let mut config = warden_policy_engine::PolicyEngineConfig::for_tests(&policies, dir.join("engine"));
        config.auth = auth.clone();
        config.audit_url = audit.url();
        config.outbound.credential = service;
        let engine =
            warden_policy_engine::PolicyEngine::start(config).await.map_err(|e| format!("policy engine: {e}"))?;

        let stop_tools = tokio_util::sync::CancellationToken::new();
        let (tools, _) = xtask::example_tools::serve("127.0.0.1:0", stop_tools.clone()).await?;
        let tools_url = format!("http://{tools}/mcp");
        let upstreams = dir.join("upstreams.yaml");
        std::fs::write(
            &upstreams,
            format!("upstreams:\n  - name: support\n    url: {tools_url}\n    keep_alive: true\n"),
        )
        .map_err(|e| e.to_string())?;
        let mut config = warden_mcp_gateway::GatewayConfig::for_tests(dir.join("gateway"), &upstreams, &engine.url());
        config.auth = auth;
        config.audit_url = audit.url();
        config.outbound.credential = gateway_key.clone();
        let gateway = warden_mcp_gateway::GatewayServer::start(config).await.map_err(|e| format!("gateway: {e}"))?;
        // Evaluate alone, as the gateway asks: its key, for the agent.
        let policy =
            PolicyClient::new(ClientConfig::new(engine.url()).api_key(gateway_key)).map_err(|e| e.to_string())?;
        Ok(Stack { audit, engine, gateway, tools_url, agent_token, policy, stop_tools })
    }

    async fn stop(self) {
        self.gateway.shutdown().await;
        self.stop_tools.cancel();
        self.engine.shutdown().await;
        self.audit.shutdown().await;
    }
}
