//! The node's wiring: connects, opens the streams, starts every task (requests, transfers, the
//! plan, progress and held watches, the outbox, the app API, health) and drains on shutdown. The
//! state the tasks share is [`Shared`] (`shared.rs`); each task lives in its own module.

use crate::app::AppClient;
use crate::behaviour::Registry;
use crate::config::NodeConfig;
use crate::control::{keep_lease, publish_held, take_published_plan, watch_held, watch_plans};
use crate::error::{Error, Result};
use crate::metrics::{Failure, Malformed, Metrics};
use crate::moves::MigrationRuntime;
use crate::requests::{Messages, finish_requests, join_any_node, subscribe_requests, take_request};
use crate::store::EventStore;
use aether_core::protocol::{Names, NodeEventKind, encode};
use async_nats::jetstream;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;

pub use crate::connect::connect;
pub use crate::control::{HELD_POLL_EVERY, LEAVERS_WAIT, PLAN_POLL_EVERY};
pub use crate::health::Health;
pub use crate::moves::CHUNK_BYTES;
pub use crate::ownership::MAX_HOPS;
pub use crate::shared::{SHUTDOWN_GRACE, Shared, State};

/// Runs the node until `shutdown` resolves; see [`Node::serve`].
pub async fn run(
    cfg: NodeConfig,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    Node::connect(cfg, health, metrics)
        .await?
        .serve(shutdown)
        .await
}

/// A connected node, subscribed and ready to serve.
pub struct Node {
    moves: MigrationRuntime,
    cfg: NodeConfig,
    health: Arc<Health>,
    shared: Arc<Shared>,
    js: jetstream::Context,
    requests: Messages,
    /// The app API's server (`--api-addr`).
    api_task: Option<tokio::task::JoinHandle<()>>,
    transfers: async_nats::Subscriber,
    progress: jetstream::consumer::pull::Ordered,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("pod", &self.shared.me)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Connects to NATS (waiting while it is unreachable, saying so in `health`), opens the event
    /// stream and subscribes; hosts the built-in kinds and, with `--app-url`, the app's.
    pub async fn connect(
        cfg: NodeConfig,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
    ) -> Result<Self> {
        Self::connect_with(cfg, Registry::builtin(), health, metrics).await
    }

    /// As [`Node::connect`], hosting the kinds of `registry` (a node embedded as a library, with
    /// its own [`crate::behaviour::Behaviour`]s) and, with `--app-url`, the app's.
    pub async fn connect_with(
        cfg: NodeConfig,
        registry: Registry,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
    ) -> Result<Self> {
        health.set(Some(format!("connecting to NATS at {}", cfg.nats.nats_url)));
        health.set_plan(Some("reading the plan bucket".to_owned()));
        health.set_lease(Some("no lease yet: held.{pod} not written".to_owned()));
        let client = connect(&cfg.nats, &cfg.pod_name, Some(&health), Some(&metrics)).await?;
        let names = Names::new(cfg.nats.prefix.clone());
        let js = jetstream::new(client.clone());
        let (store, reports) = loop {
            let opened = async {
                let store = EventStore::open(js.clone(), names.clone(), cfg.stream_replicas)
                    .await?
                    .compacting(cfg.compact_events);
                let reports =
                    aether_nats::progress::open_stream(&js, &names, cfg.stream_replicas).await?;
                Ok::<_, Error>((store, reports))
            };
            match opened.await {
                Ok(s) => break s,
                Err(e) => {
                    health.set(Some(format!(
                        "NATS at {} not usable: {e}",
                        cfg.nats.nats_url
                    )));
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        let registry = app_kinds(registry, &cfg, &health, &metrics).await?;
        let moves = MigrationRuntime::start()?;
        // Connected from the migration runtime, so the transfers' socket work runs there too.
        let (nats, name) = (cfg.nats.clone(), format!("{}/migrations", cfg.pod_name));
        let waiting = health.clone();
        let bulk = moves
            .handle()
            .spawn(async move { connect(&nats, &name, Some(&waiting), None).await })
            .await
            .map_err(|e| Error::Internal(format!("migration runtime: {e}")))??;
        let shared = Shared::new(
            &cfg,
            registry,
            client.clone(),
            bulk.clone(),
            store,
            moves.handle(),
            metrics,
            health.clone(),
        );
        let mut requests = subscribe_requests(&shared).await?;
        let transfers = bulk
            .subscribe(names.node_migrate(&shared.me))
            .await
            .map_err(|e| Error::Nats(e.to_string()))?;
        // The subscription is in place at the server before anyone learns this node is up.
        bulk.flush().await.map_err(|e| Error::Nats(e.to_string()))?;
        // Every stored report is read before the first plan is acted on: a node that restarts
        // knows which moves of its plan committed, and never serves a shard handed on.
        health.set(Some("reading the progress of moves".into()));
        let (mut progress, stored) = aether_nats::progress::follow(&reports).await?;
        let mut read = 0u64;
        while read < stored {
            match tokio::time::timeout(Duration::from_secs(10), progress.next()).await {
                Ok(Some(Ok(msg))) => {
                    read += 1;
                    shared.on_progress(&msg.payload);
                    if msg.info().is_ok_and(|i| i.pending == 0) {
                        break;
                    }
                }
                Ok(Some(Err(e))) => {
                    return Err(Error::Nats(format!("reading the progress stream: {e}")));
                }
                Ok(None) | Err(_) => {
                    tracing::warn!(read, stored, "progress stream: fewer reports than it held");
                    break;
                }
            }
        }
        tracing::debug!(read, "progress read");
        // The plan published now is taken before this node joins the any-node queue group: a
        // restarted pod takes no request it could only answer "no plan yet" (callers of a
        // ShardPlan with no plan published yet still hear that).
        take_published_plan(&shared, &js, &names, cfg.stream_replicas).await;
        requests.push(join_any_node(&shared).await?);
        // The app API listens once the plan is taken, as the NATS subjects do.
        let api_task = match cfg.api_addr.0 {
            Some(addr) => Some(crate::api::serve(addr, shared.clone()).await?),
            None => None,
        };
        Ok(Self {
            moves,
            cfg,
            health,
            shared,
            js,
            requests,
            api_task,
            transfers,
            progress,
        })
    }

    /// The node's shared state (for tests and embedding).
    #[must_use]
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Serves until `shutdown` resolves, then drains: announces it is leaving, serves until a plan
    /// without it arrives and its outgoing moves are done (at most `drain_timeout`), and returns.
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
        let Self {
            moves,
            cfg,
            health,
            shared,
            js,
            mut requests,
            api_task,
            mut transfers,
            mut progress,
        } = self;
        let client = shared.client.clone();
        let watcher = shared.tasks.spawn(watch_plans(
            shared.clone(),
            js,
            shared.names.clone(),
            cfg.stream_replicas,
        ));
        let health_task = shared
            .tasks
            .spawn(watch_health(shared.clone(), health.clone()));
        let held_tasks = [
            shared.tasks.spawn(watch_held(shared.clone())),
            shared
                .tasks
                .spawn(publish_held(shared.clone(), shared.take_holds())),
            shared.tasks.spawn(keep_lease(shared.clone())),
        ];
        let app_task = shared
            .app()
            .map(|app| shared.tasks.spawn(watch_app(app, health.clone())));
        let outbox_task = shared
            .take_deliveries()
            .map(|rx| tokio::spawn(crate::outbox::run(shared.clone(), rx)));
        let resume_task = tokio::spawn(crate::outbox::resume_pending(shared.clone()));
        if let Err(e) = shared.announce(NodeEventKind::Up).await {
            tracing::warn!(error = %e, "could not announce up");
        }
        tracing::info!(pod = %shared.me, prefix = %cfg.nats.prefix, "node serving");

        tokio::pin!(shutdown);
        let mut drain_deadline: Option<tokio::time::Instant> = None;
        let mut check = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                Some(msg) = requests.next() => take_request(&shared, msg).await,
                Some(msg) = transfers.next() => {
                    if msg.reply.as_ref().is_some_and(|to| !shared.names.is_reply_subject(to)) {
                        shared.metrics().malformed(Malformed::ReplySubject);
                        continue;
                    }
                    let (shared, tasks) = (shared.clone(), shared.tasks.clone());
                    tasks.spawn_on(async move {
                        let parent = aether_nats::telemetry::parent_in(msg.headers.as_ref()).map(str::to_owned);
                        let ack = shared.on_transfer(&msg.payload, parent.as_deref()).await;
                        if let (Some(to), Ok(bytes)) = (msg.reply, encode(&ack))
                            && let Err(e) = shared.bulk.publish(to, bytes.into()).await
                        {
                            tracing::warn!(error = %e, "transfer ack not sent");
                            shared.metrics().failure(Failure::Reply);
                        }
                    }, &moves.handle());
                }
                Some(msg) = progress.next() => match msg {
                    Ok(msg) => shared.on_progress(&msg.payload),
                    Err(e) => tracing::warn!(error = %e, "progress stream"),
                },
                () = &mut shutdown, if drain_deadline.is_none() => {
                    tracing::info!("SIGTERM: draining");
                    health.set(Some("draining: shards are moving away".into()));
                    if let Err(e) = shared.announce(NodeEventKind::Leaving).await {
                        tracing::warn!(error = %e, "could not announce leaving");
                    }
                    drain_deadline = Some(tokio::time::Instant::now() + cfg.drain_timeout);
                }
                _ = check.tick() => {
                    if let Some(d) = drain_deadline {
                        if shared.drained() {
                            tracing::info!("drained: exiting");
                            break;
                        }
                        if tokio::time::Instant::now() >= d {
                            tracing::warn!("drain timeout: exiting with shards still assigned; their next owner rebuilds them from the log");
                            break;
                        }
                    }
                }
            }
        }
        finish_requests(&shared, requests).await;
        watcher.abort();
        health_task.abort();
        for task in held_tasks {
            task.abort();
        }
        resume_task.abort();
        for task in app_task.into_iter().chain(api_task).chain(outbox_task) {
            task.abort();
        }
        shared.stop_all_workers();
        // Every task the node spawned ends (requests in flight are answered, workers finish their
        // appends) before the connections drain; a move still waiting on a peer is cut off.
        shared.tasks.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, shared.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = shared.tasks.len(),
                "tasks still running at exit (moves waiting on a peer)"
            );
        }
        let _ = client.drain().await;
        let _ = shared.bulk.drain().await;
        drop(moves);
        Ok(())
    }
}

/// `registry`'s kinds and, with `--app-url`, the app container's: asked until the app answers, the
/// node not Ready meanwhile and saying why.
async fn app_kinds(
    mut registry: Registry,
    cfg: &NodeConfig,
    health: &Health,
    metrics: &Arc<Metrics>,
) -> Result<Registry> {
    let Some(url) = &cfg.app_url else {
        return Ok(registry);
    };
    // An answer holds a state, events and a reply: room for the largest state several times.
    let max_answer = cfg.max_state_bytes.saturating_mul(4).max(64 * 1024);
    let app = Arc::new(AppClient::new(
        url,
        cfg.app_timeout,
        max_answer,
        metrics.clone(),
    )?);
    let kinds = loop {
        match app.kinds().await {
            Ok(kinds) => break kinds,
            Err(e) => {
                health.set(Some(format!("waiting for the app's kinds: {e}")));
                tokio::time::sleep(APP_PROBE_EVERY).await;
            }
        }
    };
    tracing::info!(app = %url, kinds = ?kinds.iter().map(|k| &k.name).collect::<Vec<_>>(), "app kinds");
    registry.register_app(&app, kinds);
    Ok(registry)
}

/// How often the app container is asked whether it answers.
pub const APP_PROBE_EVERY: Duration = Duration::from_millis(500);

/// Keeps `/readyz` saying whether the app container answers.
async fn watch_app(app: Arc<AppClient>, health: Arc<Health>) {
    let mut tick = tokio::time::interval(APP_PROBE_EVERY);
    loop {
        tick.tick().await;
        match app.kinds().await {
            Ok(_) => health.set_app(None),
            Err(e) => health.set_app(Some(format!(
                "the app at {} does not answer: {e}",
                app.url()
            ))),
        }
    }
}

/// Keeps `/readyz` saying whether the node can serve: both NATS connections up, JetStream
/// answering (asked every [`JETSTREAM_PROBE_EVERY`]); the plan watch says when the plan bucket is
/// read.
async fn watch_health(shared: Arc<Shared>, health: Arc<Health>) {
    use async_nats::connection::State;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut jetstream: Option<String> = None;
    let mut probed: Option<tokio::time::Instant> = None;
    loop {
        tick.tick().await;
        let draining = health.problem().is_some_and(|p| p.starts_with("draining"));
        if draining {
            continue;
        }
        if probed.is_none_or(|t| t.elapsed() >= JETSTREAM_PROBE_EVERY) {
            probed = Some(tokio::time::Instant::now());
            let asked = tokio::time::timeout(JETSTREAM_PROBE_EVERY, shared.js.query_account());
            jetstream = match asked.await {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(format!("JetStream does not answer: {e}")),
                Err(_) => Some("JetStream does not answer in time".to_owned()),
            };
        }
        let problem = match (
            shared.client.connection_state(),
            shared.bulk.connection_state(),
        ) {
            (State::Connected, State::Connected) => jetstream.clone(),
            (State::Connected, other) => Some(format!(
                "NATS migration connection is {other:?}: not serving"
            )),
            (other, _) => Some(format!("NATS connection is {other:?}: not serving")),
        };
        health.set(problem);
    }
}

/// How often a node asks whether JetStream answers.
pub const JETSTREAM_PROBE_EVERY: Duration = Duration::from_secs(2);
