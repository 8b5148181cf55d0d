//! Starting and stopping the alerting service: storage, the rule and
//! routing files (watched for changes), the audit follower, the evaluation
//! and dispatch clock, the outbox shipper, the gRPC server behind the
//! shared auth layer, Alertmanager's HTTP API and the metrics listener.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use warden_proto::alerting::v1::alerting_service_server::AlertingServiceServer;
use warden_proto::audit::v1::audit_service_client::AuditServiceClient;
use warden_server::delivery::Outbound;
use warden_server::{Runtime, Serving};

use crate::config::AlertingConfig;
use crate::engine::{Clock, Engine, Loaded};
use crate::notify::{Notifications, deliveries};
use crate::routing;
use crate::rules::{self, RuleSet};
use crate::series::Derived;
use crate::service::{AlertingServiceImpl, Reload};
use crate::store::AlertingStore;

pub use warden_server::StartError;

/// A running alerting service (its addresses through `Deref`;
/// Alertmanager's API is `http_addr`).
pub struct AlertingServer {
    pub serving: Serving,
    pub engine: Arc<Engine>,
    _watcher: Option<notify::RecommendedWatcher>,
}

/// Reads the rule and routing files.
fn load(config: &AlertingConfig) -> Result<(Loaded, String), String> {
    let rules = RuleSet::load(&rules::expand(&config.rule_paths()), config.evaluation_interval)?;
    let (routing, text) = if config.routing.as_os_str().is_empty() {
        (routing::Config::default_config(), routing::DEFAULT_CONFIG.to_owned())
    } else {
        let text =
            std::fs::read_to_string(&config.routing).map_err(|e| format!("{}: {e}", config.routing.display()))?;
        (routing::Config::parse(&text, &config.routing.display().to_string())?, text)
    };
    Ok((Loaded { rules, routing }, text))
}

impl AlertingServer {
    pub async fn start(config: AlertingConfig) -> Result<AlertingServer, StartError> {
        AlertingServer::start_with_clock(config, Clock::system()).await
    }

    /// Starts with a given clock (tests pass one on tokio's paused time).
    pub async fn start_with_clock(config: AlertingConfig, clock: Clock) -> Result<AlertingServer, StartError> {
        let (loaded, routing_text) = load(&config).map_err(StartError::Config)?;
        let mut runtime = Runtime::start("alerting", &config.auth, &config.data_dir, &config.metrics_listen).await?;
        let database = runtime.database(&config.database_url, &config.data_dir).await?;
        let store = AlertingStore::new(database.clone());
        let retention =
            (loaded.rules.lookback_ms() + 4 * config.scrape_interval.as_millis() as i64).max(15 * 60 * 1000);
        let derived = match store.load_snapshot().await? {
            Some(bytes) => match serde_json::from_slice::<Derived>(&bytes) {
                Ok(mut derived) => {
                    derived.retention_ms = retention;
                    derived.scrape_ms = config.scrape_interval.as_millis() as i64;
                    derived
                }
                Err(error) => {
                    tracing::error!(%error, "the saved derived series are unreadable; starting from the log's beginning");
                    Derived::new(config.scrape_interval.as_millis() as i64, retention)
                }
            },
            None => Derived::new(config.scrape_interval.as_millis() as i64, retention),
        };
        tracing::info!(position = derived.position, rules = loaded.rules.rule_count(), "alerting state loaded");
        let alerts = store.load_alerts().await?;
        let (audit, follower) = if config.audit_url.is_empty() {
            (None, None)
        } else {
            let identity = config.outbound.resolve(&runtime.secrets).await.map_err(StartError::Outbound)?;
            let appender = warden_client::audit_client(&warden_client::ClientConfig::for_service(
                &config.audit_url,
                identity.clone(),
            ))
            .map_err(|e| StartError::Outbound(e.to_string()))?;
            let channel = identity
                .endpoint(&config.audit_url)
                .map_err(StartError::Outbound)?
                .connect_timeout(Duration::from_secs(1))
                .tcp_nodelay(true)
                .connect_lazy();
            let credentials = identity.credentials().map_err(StartError::Outbound)?;
            // The subscription is a long stream: no per-call timeout.
            let subscriber =
                AuditServiceClient::new(tonic::service::interceptor::InterceptedService::new(channel, credentials))
                    .max_decoding_message_size(64 * 1024 * 1024);
            (Some(appender), Some(subscriber))
        };
        if audit.is_some() {
            // Refusals (gRPC and Alertmanager's API) go to the audit log
            // through the outbox.
            runtime.auth.set_denial_sink(Arc::new(store.outbox_table()));
        }
        let engine = Engine::new(store, loaded, derived, alerts, clock, audit.is_some(), config.external_url.clone());
        engine.refresh_silences().await?;
        let config_text = Arc::new(arc_swap::ArcSwap::from_pointee(routing_text));
        let reload: Reload = {
            let engine = engine.clone();
            let config = config.clone();
            let config_text = config_text.clone();
            Arc::new(move || match load(&config) {
                Ok((loaded, text)) => {
                    let counts = (loaded.rules.rule_count(), loaded.routing.receivers.len());
                    engine.replace(loaded);
                    config_text.store(Arc::new(text));
                    tracing::info!(rules = counts.0, receivers = counts.1, "alerting configuration reloaded");
                    Ok(counts)
                }
                Err(error) => {
                    tracing::error!(%error, "alerting configuration refused; the last good one stays");
                    Err(error)
                }
            })
        };
        let watcher = if config.watch {
            let mut paths: Vec<PathBuf> = config.rule_paths();
            if !config.routing.as_os_str().is_empty() {
                paths.push(config.routing.clone());
            }
            let (watcher, task) = watch(&paths, reload.clone()).map_err(StartError::Config)?;
            runtime.adopt(task);
            watcher
        } else {
            None
        };
        if let Some(client) = follower {
            runtime.spawn(crate::follow::follow(engine.clone(), client));
        }
        runtime.spawn(run_clock(engine.clone(), config.tick_interval));
        runtime.spawn(save_periodically(engine.clone(), config.snapshot_interval));
        let timeout = (config.delivery_lease / 2).min(Duration::from_secs(30));
        let outbound = Outbound::new(&config.webhooks, timeout, runtime.secrets.clone());
        let deliveries = deliveries(Notifications { engine: engine.clone(), outbound }, audit, config.delivery_lease);
        runtime.spawn(deliveries.run(config.outbox_interval, Some(engine.wake_shipper.clone())));
        if !config.http_listen.is_empty() {
            let api = crate::api::Api {
                engine: engine.clone(),
                auth: runtime.auth.clone(),
                config_text,
                started_ms: engine.clock.now_ms(),
            };
            let addr = runtime.serve_http("alertmanager", &config.http_listen, api.router()).await?;
            if config.external_url.is_empty() {
                engine.set_external_url(&default_external_url(addr));
            }
        }
        runtime.serving::<AlertingServiceServer<AlertingServiceImpl>>().await;
        let service = AlertingServiceServer::new(AlertingServiceImpl::new(engine.clone(), reload))
            .max_decoding_message_size(warden_contract::bounds::MESSAGE_BYTES);
        let dead_letters = warden_server::dead_letters::service(Arc::new(engine.store.outbox_table()));
        let routes = tonic::service::Routes::new(service).add_service(dead_letters);
        let serving = runtime.serve(&config.listen, routes).await?;
        Ok(AlertingServer { serving, engine, _watcher: watcher })
    }

    /// Saves the derived series, then stops.
    pub async fn shutdown(self) {
        if let Err(error) = self.engine.save_derived().await {
            tracing::warn!(%error, "cannot save the derived series at shutdown; they will be rebuilt from the log");
        }
        self.serving.stop().await;
    }
}

warden_server::service!(AlertingServer, AlertingConfig, "warden-alerting", StartError);

/// Evaluates due rule groups and dispatches, every `every`.
pub async fn run_clock(engine: Arc<Engine>, every: Duration) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = engine.wake_dispatch.notified() => {}
        }
        if let Err(error) = engine.tick().await {
            tracing::warn!(%error, "alerting pass failed; will retry");
        }
    }
}

async fn save_periodically(engine: Arc<Engine>, every: Duration) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    loop {
        interval.tick().await;
        if let Err(error) = engine.save_derived().await {
            tracing::warn!(%error, "cannot save the derived series; will retry");
        }
    }
}

/// Watches the files' directories and reloads after changes settle.
fn watch(
    paths: &[PathBuf],
    reload: Reload,
) -> Result<(Option<notify::RecommendedWatcher>, tokio::task::JoinHandle<()>), String> {
    use notify::Watcher;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(16);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && !event.kind.is_access()
        {
            let _ = tx.try_send(());
        }
    })
    .map_err(|e| format!("cannot watch the alerting files: {e}"))?;
    let mut watched = std::collections::BTreeSet::new();
    for path in paths {
        let dir = if path.is_dir() { path.clone() } else { path.parent().map(PathBuf::from).unwrap_or_default() };
        let dir = if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir };
        if watched.insert(dir.clone()) {
            watcher
                .watch(&dir, notify::RecursiveMode::NonRecursive)
                .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
        }
    }
    let task = tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Editors write in several steps; wait for the burst to end.
            tokio::time::sleep(Duration::from_millis(200)).await;
            while rx.try_recv().is_ok() {}
            let _ = reload();
        }
    });
    Ok((Some(watcher), task))
}

/// `externalURL` when none is configured: the Alertmanager API's own
/// address, with the machine's host name when it listens on every
/// interface (as Alertmanager defaults to `http://HOSTNAME:9093`).
fn default_external_url(addr: std::net::SocketAddr) -> String {
    if !addr.ip().is_unspecified() {
        return format!("http://{addr}");
    }
    let host = hostname::get().ok().and_then(|h| h.into_string().ok()).filter(|h| !h.is_empty());
    format!("http://{}:{}", host.unwrap_or_else(|| "localhost".into()), addr.port())
}
