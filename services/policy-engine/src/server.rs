//! Starting and stopping a policy engine: storage, policies, limit store,
//! background tasks (policy watcher, kill switch refresh), the gRPC server
//! with health and reflection, and the metrics listener.
//!
//! `main.rs`, `cargo xtask dev` and the tests all start the engine through
//! [`PolicyEngine::start`].

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use warden_proto::policy::v1::policy_service_server::PolicyServiceServer;
use warden_server::{Runtime, RuntimeError, Serving};

use crate::approval_client::ApprovalClient;
use crate::config::PolicyEngineConfig;
use crate::decision_log::DecisionLog;
use crate::engine::{Clock, Engine};
use crate::kill_switch::KillSwitchStore;
use crate::limits::{LimitStore, MemoryLimitStore, RedisLimitStore};
use crate::metrics::METRICS;
use crate::policy::{self, PolicyError};
use crate::service::{PolicyServiceImpl, Reloader, set_gauges};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("storage: {0}")]
    Store(#[from] warden_store::StoreError),
    #[error("policies in {dir} are invalid:\n{}", .errors.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Policies { dir: String, errors: Vec<PolicyError> },
    #[error("limit store: {0}")]
    Limits(#[from] crate::limits::LimitError),
    #[error("cannot create {0}: {1}")]
    DataDir(String, std::io::Error),
    #[error("decision log: {0}")]
    DecisionLog(#[from] crate::decision_log::DecisionLogError),
    #[error("cannot watch {0}: {1}")]
    Watch(String, notify::Error),
    #[error("outbound identity: {0}")]
    Outbound(String),
}

/// A running policy engine.
pub struct PolicyEngine {
    /// Its addresses (through `Deref`) and its handle.
    pub serving: Serving,
    pub engine: Arc<Engine>,
    pub reloader: Arc<Reloader>,
    pub decision_log: Option<Arc<DecisionLog>>,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl PolicyEngine {
    pub async fn start(config: PolicyEngineConfig) -> Result<PolicyEngine, StartError> {
        let mut runtime =
            Runtime::start("policy-engine", &config.auth, &config.data_dir, &config.metrics_listen).await?;
        let database = runtime.database(&config.database_url, &config.data_dir).await?;
        let kill_switch_store = KillSwitchStore::new(database.clone());

        let dir = config.policies.clone();
        let policies = {
            let dir = dir.clone();
            let options = config.load_options();
            tokio::task::spawn_blocking(move || policy::load_dir_with(&dir, &options)).await.expect("policy load task")
        }
        .map_err(|errors| StartError::Policies { dir: dir.display().to_string(), errors })?;
        set_gauges(&policies);
        tracing::info!(version = %policies.version, rules = policies.rules.len(), limits = policies.limits.len(), dir = %dir.display(), "policies loaded");

        let limits: Arc<dyn LimitStore> = if config.redis_url.is_empty() {
            Arc::new(MemoryLimitStore::new())
        } else {
            Arc::new(RedisLimitStore::new(&config.redis_url, "warden:limits:", config.redis_timeout)?)
        };
        let engine = Arc::new(Engine::new(policies, limits, Clock::system()));
        let switches = kill_switch_store.load().await?;
        METRICS.kill_switches_engaged.set(switches.engaged_count() as i64);
        engine.set_kill_switches(switches);
        let reloader = Arc::new(Reloader::new(dir.clone(), config.load_options(), engine.clone()));

        runtime.spawn(refresh_kill_switches(engine.clone(), kill_switch_store.clone(), config.kill_switch_refresh));
        let watcher = if config.watch_policies {
            let (watcher, task) = watch_policies(&dir, reloader.clone())?;
            runtime.adopt(task);
            Some(watcher)
        } else {
            None
        };
        runtime.serving::<PolicyServiceServer<PolicyServiceImpl>>().await;
        let identity = config.outbound.resolve(&runtime.secrets).await.map_err(StartError::Outbound)?;
        let approvals = if config.approval_url.is_empty() {
            None
        } else {
            Some(ApprovalClient::new(&config.approval_url, &identity).map_err(StartError::Outbound)?)
        };
        let decision_log = if config.audit_url.is_empty() {
            None
        } else {
            std::fs::create_dir_all(&config.data_dir)
                .map_err(|e| StartError::DataDir(config.data_dir.display().to_string(), e))?;
            let log =
                DecisionLog::start(&config.audit_url, &identity, &config.data_dir, config.decision_log.clone()).await?;
            runtime.auth.set_denial_sink(log.clone());
            Some(log)
        };
        let service = PolicyServiceImpl::new(
            engine.clone(),
            reloader.clone(),
            kill_switch_store,
            decision_log.clone(),
            runtime.auth.clone(),
            approvals,
        )
        .with_max_clock_skew(config.max_clock_skew);
        let mut routes = tonic::service::Routes::new(
            PolicyServiceServer::new(service).max_decoding_message_size(warden_contract::bounds::MESSAGE_BYTES),
        );
        if let Some(log) = &decision_log {
            routes = routes.add_service(warden_server::dead_letters::service(log.dead_letters()));
        }
        let serving = runtime.serve(&config.listen, routes).await?;
        Ok(PolicyEngine { serving, engine, reloader, decision_log, _watcher: watcher })
    }

    /// Stops accepting requests, lets in-flight ones finish, and stops the
    /// background tasks.
    pub async fn shutdown(self) {
        self.serving.stop().await;
    }
}

warden_server::service!(PolicyEngine, PolicyEngineConfig, "warden-policy-engine", StartError);

/// Re-reads kill switches so a switch set through another replica applies
/// here within one refresh interval.
async fn refresh_kill_switches(engine: Arc<Engine>, store: KillSwitchStore, every: Duration) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        match store.load().await {
            Ok(state) => {
                if *engine.kill_switches() != state {
                    tracing::info!(engaged = state.engaged_count(), "kill switches refreshed");
                    METRICS.kill_switches_engaged.set(state.engaged_count() as i64);
                    engine.set_kill_switches(state);
                }
            }
            // Keep the last known state: switches that were engaged stay engaged.
            Err(error) => tracing::warn!(%error, "cannot refresh kill switches"),
        }
    }
}

/// Watches the policy directory and reloads after changes settle.
fn watch_policies(
    dir: &std::path::Path,
    reloader: Arc<Reloader>,
) -> Result<(notify::RecommendedWatcher, JoinHandle<()>), StartError> {
    use notify::Watcher;
    let (tx, mut rx) = mpsc::channel::<()>(16);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && !event.kind.is_access()
        {
            let _ = tx.try_send(());
        }
    })
    .map_err(|e| StartError::Watch(dir.display().to_string(), e))?;
    watcher
        .watch(dir, notify::RecursiveMode::NonRecursive)
        .map_err(|e| StartError::Watch(dir.display().to_string(), e))?;
    let task = tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Editors write in several steps; wait for the burst to end.
            tokio::time::sleep(Duration::from_millis(200)).await;
            while rx.try_recv().is_ok() {}
            let _ = reloader.reload().await;
        }
    });
    Ok((watcher, task))
}
