//! The node's wiring: connections, subscriptions, the plan watch, health, shutdown; and [`Shared`],
//! the state every task of the node reads: who serves which shard ([`Ownership`], under one lock
//! with the shard workers), the NATS clients and the actor host's context. Requests are handled in
//! `requests.rs`, moves in `moves.rs`; the decisions about ownership are in `ownership.rs` and
//! `migration.rs`, which do no I/O.

use crate::app::AppClient;
use crate::behaviour::Registry;
use crate::config::NodeConfig;
use crate::error::{Error, Result};
use crate::host::{self, Cmd, HostContext, Pending, ShardHandle};
use crate::metrics::{Failure, Malformed, Metrics, Route};
use crate::moves::MigrationRuntime;
use crate::ownership::{Ownership, Settled};
use crate::requests::Answer;
use crate::store::EventStore;
use aether_core::plan::Move;
use aether_core::protocol::{
    ErrorCode, ErrorReply, Held, Names, NodeEvent, NodeEventKind, PlanMessage, Progress, Reply,
    VERSION, decode, encode,
};
use aether_core::types::MovePhase;
use async_nats::jetstream;
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{Semaphore, oneshot};
use tokio_util::task::TaskTracker;

pub use crate::moves::CHUNK_BYTES;
pub use crate::ownership::MAX_HOPS;

/// Longest a stopping node waits for its tasks (requests in flight, moves, workers) to finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Health as `/readyz` reports it, available before NATS is.
#[derive(Debug, Default)]
pub struct Health {
    /// Why the node is not ready; `None` when it is.
    pub problem: Mutex<Option<String>>,
    /// The event stream refused an append for lack of space (cleared by the next append that lands).
    store_full: Mutex<Option<String>>,
    full: std::sync::atomic::AtomicBool,
    /// The app container does not answer (`None` when it does, or when there is no app).
    app: Mutex<Option<String>>,
    /// The plan bucket is not read yet (`None` once it is).
    plan: Mutex<Option<String>>,
}

impl Health {
    /// The event stream is full (`Some(why)`), or takes appends again (`None`). Cheap when nothing
    /// changes: an append that lands only reads a flag.
    pub fn set_store_full(&self, why: Option<String>) {
        use std::sync::atomic::Ordering;
        if why.is_none() && !self.full.load(Ordering::Relaxed) {
            return;
        }
        self.full.store(why.is_some(), Ordering::Relaxed);
        if let Ok(mut p) = self.store_full.lock() {
            *p = why;
        }
    }

    /// Sets or clears the problem.
    pub fn set(&self, problem: Option<String>) {
        if let Ok(mut p) = self.problem.lock() {
            *p = problem;
        }
    }

    /// The app container does not answer (`Some(why)`), or does again (`None`).
    pub fn set_app(&self, why: Option<String>) {
        if let Ok(mut p) = self.app.lock() {
            *p = why;
        }
    }

    /// The current problem: the connection's, else a full event stream, else the app's.
    #[must_use]
    pub fn problem(&self) -> Option<String> {
        let main = self
            .problem
            .lock()
            .map_or_else(|_| Some("health lock poisoned".into()), |p| p.clone());
        main.or_else(|| self.store_full.lock().ok().and_then(|p| p.clone()))
            .or_else(|| self.app.lock().ok().and_then(|p| p.clone()))
            .or_else(|| self.plan.lock().ok().and_then(|p| p.clone()))
    }

    /// The plan bucket is not read yet (`Some(why)`), or it is (`None`).
    pub fn set_plan(&self, why: Option<String>) {
        if let Ok(mut p) = self.plan.lock() {
            *p = why;
        }
    }
}

/// Who serves which shard, and the workers of the shards hosted here: one lock, so no worker can
/// start on a shard that was just handed off, and a chunk staged after a fresh move's clean-up
/// cannot be overtaken by it.
#[derive(Debug)]
pub struct State {
    /// The pure ownership state.
    pub own: Ownership,
    workers: HashMap<u32, ShardHandle>,
}

impl State {
    /// The worker of `shard`, started if needed.
    pub fn worker(&mut self, ctx: &Arc<HostContext>, shard: u32) -> ShardHandle {
        self.workers
            .entry(shard)
            .or_insert_with(|| host::spawn(ctx, shard))
            .clone()
    }

    /// The worker of `shard`, if it runs.
    #[must_use]
    pub fn running(&self, shard: u32) -> Option<&ShardHandle> {
        self.workers.get(&shard)
    }

    /// Forgets the worker of `shard` if it is still `dead` (its task ended without being stopped);
    /// true when it was.
    pub fn forget_dead(&mut self, shard: u32, dead: &ShardHandle) -> bool {
        let same = self
            .workers
            .get(&shard)
            .is_some_and(|h| h.tx.same_channel(&dead.tx));
        if same {
            self.workers.remove(&shard);
        }
        same
    }

    /// Stops the worker of `shard`; the requests it still held come back on the receiver.
    pub fn stop(&mut self, shard: u32) -> Option<oneshot::Receiver<Vec<Pending>>> {
        let h = self.workers.remove(&shard)?;
        let (tx, rx) = oneshot::channel();
        h.tx.send(Cmd::Stop(tx)).ok()?;
        Some(rx)
    }
}

/// State shared by the node's tasks.
#[derive(Debug)]
pub struct Shared {
    /// This pod.
    pub me: String,
    /// Subjects and buckets.
    pub names: Names,
    /// NATS: requests, appends, plans, progress.
    pub client: async_nats::Client,
    /// A second NATS connection for migration transfers, so a shard's megabytes never sit in front
    /// of a request's reply in one socket.
    pub bulk: async_nats::Client,
    /// What the shard workers get.
    pub host: Arc<HostContext>,
    /// The runtime that runs migrations ([`MigrationRuntime`]).
    pub moves: tokio::runtime::Handle,
    /// Largest request accepted.
    pub max_request_bytes: usize,
    /// Requests in flight on this node (each holds a permit until it is answered): bounds every
    /// queue on the request path (worker channels, requests waiting behind an append, forwards).
    pub inflight: Arc<Semaphore>,
    /// Every task the node spawns (requests, transfers, moves, workers): joined on shutdown.
    pub tasks: TaskTracker,
    /// JetStream on the main connection: progress reports.
    pub js: jetstream::Context,
    /// The epoch held, for moves that stop at once when a newer plan comes.
    pub epochs: tokio::sync::watch::Sender<u64>,
    state: Mutex<State>,
    migrations: Mutex<Arc<Semaphore>>,
    /// The actors' sends, taken by the outbox task when the node serves.
    deliveries: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<crate::host::Delivery>>>,
    /// Plans taken, with the workers they stopped: once those finished, `held.{me}` says so.
    holds: tokio::sync::mpsc::UnboundedSender<Hold>,
    holds_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Hold>>>,
}

/// A plan epoch taken and the tasks answering what its stopped workers held.
type Hold = (u64, Vec<tokio::task::JoinHandle<()>>);

/// How long a plan that takes shards without a hand-off waits for the members of the plan before
/// that left it to say they hold it (a live node reads the plan at least every
/// [`PLAN_POLL_EVERY`]); members are waited for until they do.
pub const LEAVERS_WAIT: Duration = Duration::from_secs(6);

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock means a panic elsewhere; the data (maps of handles) is still consistent.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    /// Connects the pieces; does not start any task.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: &NodeConfig,
        registry: Registry,
        client: async_nats::Client,
        bulk: async_nats::Client,
        store: EventStore,
        moves: tokio::runtime::Handle,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Arc<Self> {
        let tasks = TaskTracker::new();
        let (outbox, deliveries) = tokio::sync::mpsc::unbounded_channel();
        let (holds, holds_rx) = tokio::sync::mpsc::unbounded_channel();
        let host = Arc::new(HostContext {
            me: cfg.pod_name.clone(),
            registry,
            store,
            metrics,
            passivate_after: cfg.passivate_after,
            queue_limit: cfg.queue_limit,
            max_state_bytes: cfg.max_state_bytes,
            max_actors: cfg.max_actors.max(1),
            serving: tokio::runtime::Handle::current(),
            tasks: tasks.clone(),
            health,
            outbox,
        });
        Arc::new(Self {
            me: cfg.pod_name.clone(),
            names: Names::new(cfg.nats.prefix.clone()),
            bulk,
            host,
            moves,
            max_request_bytes: cfg.max_request_bytes,
            inflight: Arc::new(Semaphore::new(cfg.max_inflight.max(1))),
            tasks,
            js: jetstream::new(client.clone()),
            epochs: tokio::sync::watch::Sender::new(0),
            client,
            state: Mutex::new(State {
                own: Ownership::new(cfg.pod_name.clone()),
                workers: HashMap::new(),
            }),
            migrations: Mutex::new(Arc::new(Semaphore::new(4))),
            deliveries: Mutex::new(Some(deliveries)),
            holds,
            holds_rx: Mutex::new(Some(holds_rx)),
        })
    }

    /// The app container's client, when the node has one.
    #[must_use]
    pub fn app(&self) -> Option<Arc<AppClient>> {
        self.host.registry.app()
    }

    /// The node's metrics.
    #[must_use]
    pub fn metrics(&self) -> &Metrics {
        &self.host.metrics
    }

    /// Ownership and workers, locked. Never held across an await.
    pub fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The epoch held, 0 before the first plan.
    #[must_use]
    pub fn epoch(&self) -> u64 {
        self.state().own.epoch()
    }

    /// True once this node holds plan `epoch` and every pod it waits for holds it too (the shards
    /// it takes without a hand-off are served).
    #[must_use]
    pub fn settled_at(&self, epoch: u64) -> bool {
        let st = self.state();
        st.own.epoch() == epoch && st.own.settled()
    }

    /// Number of moves of the current plan not done yet.
    #[must_use]
    pub fn pending_moves(&self) -> usize {
        self.state().own.pending_moves()
    }

    /// True while the current plan lists this pod as a member.
    #[must_use]
    pub fn is_member(&self) -> bool {
        self.state().own.is_member()
    }

    /// True once this node may exit while draining: not a member, nothing leaving from it.
    #[must_use]
    pub fn drained(&self) -> bool {
        self.state().own.drained()
    }

    /// The move slots of the current plan (`maxConcurrent`).
    #[must_use]
    pub fn move_slots(&self) -> Arc<Semaphore> {
        lock(&self.migrations).clone()
    }

    /// Stops every shard worker (on exit); what they held is answered with where to go.
    pub fn stop_all_workers(self: &Arc<Self>) {
        let stopped: Vec<_> = {
            let mut st = self.state();
            let shards: Vec<u32> = st.workers.keys().copied().collect();
            shards
                .into_iter()
                .filter_map(|s| Some((s, st.stop(s)?)))
                .collect()
        };
        for (shard, rx) in stopped {
            drop(self.answer_leftovers(shard, rx));
        }
    }

    /// Takes a new plan: ignored unless its epoch is higher; then local shards follow it.
    pub fn on_plan(self: &Arc<Self>, plan: PlanMessage) {
        let (fx, stopped, timeout, awaiting) = {
            let mut st = self.state();
            let held = st.own.epoch();
            let hosted: Vec<u32> = st.workers.keys().copied().collect();
            let got = plan.epoch;
            let slots = plan.max_concurrent.max(1) as usize;
            let Some(fx) = st.own.on_plan(plan, hosted) else {
                drop(st);
                self.metrics().stale_plans.inc();
                tracing::info!(held, got, "ignoring a plan that is not newer");
                return;
            };
            *lock(&self.migrations) = Arc::new(Semaphore::new(slots));
            let stopped: Vec<_> = fx
                .stop
                .iter()
                .filter_map(|&s| Some((s, st.stop(s)?)))
                .collect();
            let awaiting: Vec<String> = st.own.awaiting().into_iter().map(str::to_owned).collect();
            (fx, stopped, st.own.timeout(), awaiting)
        };
        self.metrics().epoch.set(fx.epoch as i64);
        self.epochs.send_replace(fx.epoch);
        tracing::info!(epoch = fx.epoch, moves = fx.start.len(), "new plan");
        let answering = stopped
            .into_iter()
            .map(|(shard, rx)| self.answer_leftovers(shard, rx))
            .collect();
        let _ = self.holds.send((fx.epoch, answering));
        let epoch = fx.epoch;
        if awaiting.is_empty() {
            self.metrics().settled.set(epoch as i64);
        } else {
            tracing::info!(
                epoch,
                awaiting = %awaiting.join(","),
                "shards taken without a hand-off wait until these pods hold the plan"
            );
            let this = self.clone();
            self.tasks.spawn(async move {
                tokio::time::sleep(LEAVERS_WAIT).await;
                let settled = this.state().own.stop_waiting_for_non_members(epoch);
                this.start_settled(settled);
            });
        }
        if !fx.report_done.is_empty() {
            let this = self.clone();
            self.tasks.spawn(async move {
                for mv in fx.report_done {
                    this.report(epoch, &mv, MovePhase::Done, 0, 0, None).await;
                }
            });
        }
        for mv in fx.recommit {
            self.tasks
                .spawn_on(self.clone().recommit(mv, epoch), &self.moves);
        }
        for mv in fx.start {
            self.tasks
                .spawn_on(self.clone().run_moves(mv, epoch, timeout), &self.moves);
        }
    }

    /// `pod` says it holds plan `epoch`; when that settles the plan, its deferred moves start.
    pub fn on_held(self: &Arc<Self>, pod: &str, epoch: u64) {
        let settled = self.state().own.on_held(pod, epoch);
        self.start_settled(settled);
    }

    fn start_settled(self: &Arc<Self>, settled: Option<Settled>) {
        let Some(s) = settled else { return };
        tracing::info!(epoch = s.epoch, moves = s.start.len(), "plan settled");
        self.metrics().settled.set(s.epoch as i64);
        for mv in s.start {
            self.tasks
                .spawn_on(self.clone().run_moves(mv, s.epoch, s.timeout), &self.moves);
        }
    }

    /// A progress report from any node: done moves change the owner; a failed move to this node
    /// drops what it staged.
    pub fn on_progress(self: &Arc<Self>, bytes: &[u8]) {
        let Ok(p) = decode::<Progress>(bytes) else {
            self.metrics().malformed(Malformed::Progress);
            return;
        };
        let stopped = {
            let mut st = self.state();
            st.own
                .on_progress(&p)
                .and_then(|shard| Some((shard, st.stop(shard)?)))
        };
        if let Some((shard, rx)) = stopped {
            drop(self.answer_leftovers(shard, rx));
        }
    }

    /// Reports a move's progress to the operator (and every node), stored in the progress stream.
    pub async fn report(
        &self,
        epoch: u64,
        mv: &Move,
        phase: MovePhase,
        actors: u32,
        duration_ms: u64,
        error: Option<String>,
    ) {
        let p = Progress {
            actors,
            duration_ms,
            error,
            ..self.progress(epoch, mv, phase)
        };
        self.store_report(&p, aether_nats::progress::REPORT_FOR)
            .await;
    }

    /// Reports a move's phase (no figures), giving up after `within`.
    pub async fn report_within(&self, epoch: u64, mv: &Move, phase: MovePhase, within: Duration) {
        self.store_report(&self.progress(epoch, mv, phase), within)
            .await;
    }

    /// A report on move `mv` of plan `epoch`, naming its ends (a source that restarts recognises
    /// its own hand-off by them, whoever reported last).
    fn progress(&self, epoch: u64, mv: &Move, phase: MovePhase) -> Progress {
        Progress {
            v: VERSION,
            epoch,
            shard: mv.shard,
            node: self.me.clone(),
            phase,
            actors: 0,
            duration_ms: 0,
            error: None,
            from: mv.from.clone(),
            to: Some(mv.to.clone()),
        }
    }

    async fn store_report(&self, p: &Progress, within: Duration) {
        if let Err(e) = aether_nats::progress::report(&self.js, &self.names, p, within).await {
            tracing::warn!(error = %e, "progress report not stored");
            self.metrics().failure(Failure::Progress);
        }
    }

    /// Tells the operator this node is leaving.
    pub async fn announce(&self, event: NodeEventKind) -> Result<()> {
        let ev = NodeEvent {
            v: VERSION,
            node: self.me.clone(),
            event,
        };
        self.client
            .publish(self.names.node_events(), encode(&ev)?.into())
            .await
            .map_err(|e| Error::Nats(e.to_string()))?;
        self.client
            .flush()
            .await
            .map_err(|e| Error::Nats(e.to_string()))
    }

    /// Publishes a reply; a reply that cannot be sent is counted (the caller times out and retries).
    pub async fn send_reply(&self, to: async_nats::Subject, answer: Answer) {
        let bytes = match answer.into_bytes() {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "reply not encodable");
                self.metrics().failure(Failure::Reply);
                return;
            }
        };
        let len = bytes.len();
        if let Err(e) = self.client.publish(to.clone(), bytes).await {
            tracing::warn!(error = %e, "reply not sent");
            self.metrics().failure(Failure::Reply);
            if e.kind() == async_nats::client::PublishErrorKind::MaxPayloadExceeded {
                // The caller gets an answer it can act on instead of its own timeout.
                let limit = self.client.server_info().max_payload;
                let e = ErrorReply::new(
                    ErrorCode::TooLarge,
                    format!("the reply of {len} bytes exceeds the server's max payload of {limit}"),
                );
                if let Ok(b) = encode(&Reply::error(e)) {
                    let _ = self.client.publish(to, b.into()).await;
                }
            }
        }
    }
}

/// Connects to NATS with the configured credentials and TLS. With `node` (a node process: its
/// health), as a node: with the nodes' inbox prefix ([`Names::node_inbox`]), trying again every
/// second until it is connected, saying why it is not in one log line per distinct reason and in
/// `health` (so /readyz gives the reason: a wrong CA, password or URL). Without (the CLI, a client),
/// the first failure is the error.
pub async fn connect(
    args: &crate::config::NatsArgs,
    name: &str,
    node: Option<&Health>,
) -> Result<async_nats::Client> {
    let urls = aether_nats::process::nats_urls(&args.nats_url, "--nats-url")?;
    let inbox = node.map(|_| Names::new(args.prefix.clone()).node_inbox());
    let mut said = std::collections::BTreeSet::new();
    loop {
        let e = match options(args, name, inbox.clone())
            .await?
            .connect(urls.clone())
            .await
        {
            Ok(client) => {
                if let (Some(health), false) = (node, said.is_empty()) {
                    health.set(Some(format!(
                        "connected to NATS at {}; opening the streams",
                        args.nats_url
                    )));
                }
                return Ok(client);
            }
            Err(e) => e,
        };
        let why = format!("cannot connect to NATS at {}: {e}", args.nats_url);
        let Some(health) = node else {
            return Err(Error::Nats(why));
        };
        // With several servers the reasons can alternate: each is said once.
        if said.insert(why.clone()) {
            tracing::error!("{why}");
        }
        health.set(Some(why));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The connection options of `args`: credentials, TLS, reconnecting for ever once connected.
async fn options(
    args: &crate::config::NatsArgs,
    name: &str,
    inbox: Option<String>,
) -> Result<async_nats::ConnectOptions> {
    // The reason a reconnect fails is said once, until the connection is back.
    let said = Arc::new(Mutex::new(String::new()));
    let mut opts = async_nats::ConnectOptions::new()
        .name(name)
        .max_reconnects(None)
        // What the server refuses once connected (a permission the node's NATS user lacks) is
        // said in the log; the request or append it concerned fails on its own.
        .event_callback(move |event| {
            let said = said.clone();
            async move {
                match event {
                    async_nats::Event::ServerError(e) => tracing::error!("NATS server: {e}"),
                    async_nats::Event::Disconnected => tracing::warn!("NATS: disconnected"),
                    async_nats::Event::Connected => {
                        if let Ok(mut s) = said.lock() {
                            s.clear();
                        }
                    }
                    async_nats::Event::ClientError(e) => {
                        let e = e.to_string();
                        if let Ok(mut s) = said.lock()
                            && *s != e
                        {
                            tracing::warn!("NATS: {e}");
                            *s = e;
                        }
                    }
                    _ => {}
                }
            }
        });
    if let Some(inbox) = inbox {
        opts = opts.custom_inbox_prefix(inbox);
    }
    // A value from a Secret made from a file may end with a line end: not part of it.
    let value = |v: &String| v.trim_end_matches(['\r', '\n']).to_owned();
    if let (Some(user), Some(pass)) = (&args.nats_user, &args.nats_password) {
        opts = opts.user_and_password(value(user), value(pass));
    }
    if let Some(token) = &args.nats_token {
        opts = opts.token(value(token));
    }
    if let Some(seed) = &args.nats_nkey {
        opts = opts.nkey(value(seed));
    }
    if let Some(path) = &args.nats_creds {
        opts = opts
            .credentials_file(path)
            .await
            .map_err(|e| Error::Config(format!("--nats-creds {}: {e}", path.display())))?;
    }
    if let Some(creds) = &args.nats_creds_data {
        opts = opts
            .credentials(creds)
            .map_err(|e| Error::Config(format!("--nats-creds-data: {e}")))?;
    }
    if let Some(ca) = &args.nats_tls_ca {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&args.nats_tls_cert, &args.nats_tls_key) {
        opts = opts
            .add_client_certificate(cert.clone(), key.clone())
            .require_tls(true);
    }
    Ok(opts)
}

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
        let client = connect(&cfg.nats, &cfg.pod_name, Some(&health)).await?;
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
            .spawn(async move { connect(&nats, &name, Some(&waiting)).await })
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
        let requests = subscribe_requests(&shared).await?;
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
        Ok(Self {
            moves,
            cfg,
            health,
            shared,
            js,
            requests,
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
            shared.tasks.spawn(watch_held(
                shared.clone(),
                shared.js.clone(),
                cfg.stream_replicas,
            )),
            shared.tasks.spawn(publish_held(
                shared.clone(),
                lock(&shared.holds_rx).take(),
                cfg.stream_replicas,
            )),
        ];
        let app_task = shared
            .app()
            .map(|app| shared.tasks.spawn(watch_app(app, health.clone())));
        let outbox_task = lock(&shared.deliveries)
            .take()
            .map(|rx| tokio::spawn(crate::outbox::run(shared.clone(), rx)));
        let resume_task = tokio::spawn(crate::outbox::resume_pending(shared.clone()));
        let api_task = match cfg.api_addr.0 {
            Some(addr) => Some(crate::api::serve(addr, shared.clone()).await?),
            None => None,
        };
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
                        let ack = shared.on_transfer(&msg.payload).await;
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
        // Stop taking requests, and answer every one NATS already sent here, so none is left for
        // its caller's timeout. This node serves no shard now (or its workers stop next): each is
        // forwarded or answered with where to go. See `RequestSubscription::end_after` for why
        // this is not async-nats's `drain`.
        for sub in requests.iter_mut() {
            if let Err(e) = sub.end_after(END_AFTER).await {
                tracing::warn!(error = %e, "could not end a request subscription");
            }
        }
        let left = async {
            // Until every subscription ended, or none took a request for QUIET_AT_EXIT (nobody
            // sends here any more: the plan names other owners, the queue group has other members).
            while let Ok(Some(msg)) = tokio::time::timeout(QUIET_AT_EXIT, requests.next()).await {
                take_request(&shared, msg).await;
            }
        };
        if tokio::time::timeout(SHUTDOWN_GRACE, left).await.is_err() {
            tracing::warn!("requests still arriving at exit");
        }
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

type Messages = futures::stream::SelectAll<RequestSubscription>;

/// How many more requests a subscription takes once the node asks it to end (see `end_after`):
/// more than can be on their way to one node (each caller has a few in flight), few enough that a
/// loaded queue group hands them out within a second.
const END_AFTER: u64 = 256;
/// A stopping node whose request subscriptions took nothing for this long takes it that no more
/// requests are on their way.
const QUIET_AT_EXIT: Duration = Duration::from_millis(200);

/// A request subscription that counts the messages it took, so that it can end without losing one.
struct RequestSubscription {
    sub: async_nats::Subscriber,
    taken: u64,
}

impl RequestSubscription {
    fn new(sub: async_nats::Subscriber) -> Self {
        Self { sub, taken: 0 }
    }

    /// Ends the subscription after `more` further messages, losing none on the way.
    ///
    /// async-nats's `drain` (and `unsubscribe`) forget the subscription as soon as its UNSUB is
    /// written, so a request the server sent before it read the UNSUB is dropped unseen and its
    /// caller waits out its timeout (the rolling-update test saw one such 10 s wait per rollout).
    /// `UNSUB <sid> <max>` has no such gap: the server stops delivering at exactly `max` messages
    /// and the client keeps the subscription until it has received that many. `more` must exceed
    /// what can be buffered or in flight (else the server stops at once and the client forgets the
    /// subscription before the surplus arrives); a subscription that does not reach its count ends
    /// when the node, finding it quiet, closes the connection.
    async fn end_after(
        &mut self,
        more: u64,
    ) -> std::result::Result<(), async_nats::UnsubscribeError> {
        self.sub.unsubscribe_after(self.taken + more).await
    }
}

impl futures::Stream for RequestSubscription {
    type Item = async_nats::Message;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let next = std::pin::Pin::new(&mut self.sub).poll_next(cx);
        if let std::task::Poll::Ready(Some(_)) = &next {
            self.taken += 1;
        }
        next
    }
}

/// Takes one request from NATS: refused when its reply subject is the ShardPlan's own (or, from a
/// client, a node's or the operator's inbox), answered
/// `overloaded` at once when the node is full, else served on a task of its own.
async fn take_request(shared: &Arc<Shared>, msg: async_nats::Message) {
    // Only a peer (on the nodes' own subject) may have its answer sent to a node's inbox.
    let from_node = msg.subject.as_str() == shared.names.node_sends(&shared.me);
    if msg.reply.as_ref().is_some_and(|to| {
        if from_node {
            !shared.names.is_reply_subject(to)
        } else {
            !shared.names.is_client_reply_subject(to)
        }
    }) {
        shared.metrics().malformed(Malformed::ReplySubject);
        return;
    }
    let Ok(permit) = shared.inflight.clone().try_acquire_owned() else {
        // Full: answered at once, here (the answer is the back-pressure).
        shared.metrics().route(Route::Overloaded);
        if let Some(to) = msg.reply {
            let e = ErrorReply::unavailable("this node is overloaded", 50);
            shared.send_reply(to, Answer::Reply(Reply::error(e))).await;
        }
        return;
    };
    let shared = shared.clone();
    shared.tasks.clone().spawn(async move {
        let answer = shared
            .handle_request_bytes(msg.payload, msg.headers.as_ref(), from_node)
            .await;
        if let Some(to) = msg.reply {
            shared.send_reply(to, answer).await;
        }
        drop(permit);
    });
}

async fn subscribe_requests(shared: &Arc<Shared>) -> Result<Messages> {
    let any = shared
        .client
        .queue_subscribe(shared.names.any_node(), Names::NODE_QUEUE.to_owned())
        .await
        .map_err(|e| Error::Nats(e.to_string()))?;
    let mine = shared
        .client
        .subscribe(shared.names.node_requests(&shared.me))
        .await
        .map_err(|e| Error::Nats(e.to_string()))?;
    let sends = shared
        .client
        .subscribe(shared.names.node_sends(&shared.me))
        .await
        .map_err(|e| Error::Nats(e.to_string()))?;
    Ok(futures::stream::select_all([
        RequestSubscription::new(any),
        RequestSubscription::new(mine),
        RequestSubscription::new(sends),
    ]))
}

async fn watch_plans(shared: Arc<Shared>, js: jetstream::Context, names: Names, replicas: usize) {
    loop {
        let result: Result<()> = async {
            let bucket = aether_nats::plans::open_bucket(&js, &names, replicas).await?;
            // The plan held when the watch starts is read before the node says it is Ready.
            let initial = bucket
                .entry(Names::PLAN_KEY)
                .await
                .map_err(|e| Error::Nats(format!("read plan: {e}")))?
                .map(|e| e.revision);
            let mut watch = bucket
                .watch_with_history(Names::PLAN_KEY)
                .await
                .map_err(|e| Error::Nats(format!("watch plans: {e}")))?;
            if initial.is_none() {
                shared.host.health.set_plan(None);
            }
            let mut seen = 0u64;
            let mut poll = tokio::time::interval(PLAN_POLL_EVERY);
            poll.tick().await;
            loop {
                let entry = tokio::select! {
                    next = watch.next() => match next {
                        Some(entry) => entry.map_err(|e| Error::Nats(format!("watch plans: {e}")))?,
                        None => break,
                    },
                    _ = poll.tick() => {
                        // A watch can stall without an error when its consumer went with a
                        // server; the plan is read directly now and then, so it never goes unseen.
                        match bucket.entry(Names::PLAN_KEY).await {
                            Ok(Some(entry)) if entry.revision > seen => {
                                tracing::warn!(revision = entry.revision, "the plan watch was behind");
                                entry
                            }
                            _ => continue,
                        }
                    }
                };
                let read = initial.is_some_and(|r| entry.revision >= r);
                if entry.revision <= seen {
                    continue;
                }
                seen = entry.revision;
                if entry.operation != jetstream::kv::Operation::Put {
                    continue;
                }
                match decode::<PlanMessage>(&entry.value).and_then(|p| p.validate().map(|()| p)) {
                    Ok(plan) => shared.on_plan(plan),
                    Err(e) => {
                        shared.metrics().malformed(Malformed::Plan);
                        tracing::warn!(error = %e, "ignoring a plan that is malformed or contradicts itself");
                    }
                }
                if read {
                    // After the plan is taken: Ready means it serves by that plan.
                    shared.host.health.set_plan(None);
                }
            }
            Err(Error::Nats("plan watch ended".into()))
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "plan watch interrupted; resuming");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Writes `held.{me}` for each plan taken, once the workers that plan stopped have finished (their
/// appends landed, what they held answered): from then on this node serves nothing by an older plan.
async fn publish_held(
    shared: Arc<Shared>,
    holds: Option<tokio::sync::mpsc::UnboundedReceiver<Hold>>,
    replicas: usize,
) {
    let Some(mut holds) = holds else { return };
    let key = Names::held_key(&shared.me);
    let mut bucket = None;
    while let Some((epoch, answering)) = holds.recv().await {
        for task in answering {
            let _ = task.await;
        }
        let Ok(body) = encode(&Held {
            v: VERSION,
            node: shared.me.clone(),
            epoch,
        }) else {
            continue;
        };
        loop {
            let store = match &bucket {
                Some(b) => b,
                None => match aether_nats::plans::open_bucket(&shared.js, &shared.names, replicas)
                    .await
                {
                    Ok(b) => bucket.insert(b),
                    Err(e) => {
                        tracing::warn!(error = %e, "plan bucket, to say which plan this node holds");
                        tokio::time::sleep(Duration::from_millis(250)).await;
                        continue;
                    }
                },
            };
            match store.put(&key, body.clone().into()).await {
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, epoch, "could not say which plan this node holds; retrying");
                    bucket = None;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }
}

/// Follows the other nodes' `held.{pod}` keys; while the plan waits for some, also reads theirs
/// directly every [`HELD_POLL_EVERY`] (a watch can stall silently with its server).
async fn watch_held(shared: Arc<Shared>, js: jetstream::Context, replicas: usize) {
    loop {
        let result: Result<()> = async {
            let bucket = aether_nats::plans::open_bucket(&js, &shared.names, replicas).await?;
            let mut watch = bucket
                .watch_with_history(Names::HELD_KEYS)
                .await
                .map_err(|e| Error::Nats(format!("watch held: {e}")))?;
            let mut poll = tokio::time::interval(HELD_POLL_EVERY);
            loop {
                let entries = tokio::select! {
                    next = watch.next() => match next {
                        Some(entry) => vec![entry.map_err(|e| Error::Nats(format!("watch held: {e}")))?],
                        None => break,
                    },
                    _ = poll.tick() => {
                        let awaiting: Vec<String> = shared.state().own.awaiting().into_iter().map(str::to_owned).collect();
                        let mut read = Vec::new();
                        for pod in awaiting {
                            if let Ok(Some(e)) = bucket.entry(Names::held_key(&pod)).await {
                                read.push(e);
                            }
                        }
                        read
                    }
                };
                for entry in entries {
                    if entry.operation != jetstream::kv::Operation::Put {
                        continue;
                    }
                    let Some(pod) = entry.key.strip_prefix("held.") else {
                        continue;
                    };
                    match decode::<Held>(&entry.value) {
                        Ok(h) => shared.on_held(pod, h.epoch),
                        Err(e) => {
                            shared.metrics().malformed(Malformed::Held);
                            tracing::warn!(error = %e, key = %entry.key, "ignoring a malformed held key");
                        }
                    }
                }
            }
            Err(Error::Nats("held watch ended".into()))
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "held watch interrupted; resuming");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// How often a node whose plan waits for other pods reads their `held.{pod}` keys directly.
pub const HELD_POLL_EVERY: Duration = Duration::from_secs(1);

/// How often a node reads the plan directly, besides watching it.
pub const PLAN_POLL_EVERY: Duration = Duration::from_secs(5);

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
