//! [`Shared`], the state every task of the node reads: who serves which shard ([`Ownership`],
//! under one lock with the shard workers), the NATS clients and the actor host's context; and the
//! reports every task sends (progress, node events). It starts no task: requests are handled in
//! `requests.rs`, plans and held keys in `control.rs`, moves in `moves.rs`, sends in `outbox.rs`.

use crate::app::AppClient;
use crate::behaviour::Registry;
use crate::config::NodeConfig;
use crate::error::{Error, Result};
use crate::health::Health;
use crate::host::{self, Cmd, HostContext, Pending, ShardHandle};
use crate::metrics::{Failure, Metrics};
use crate::ownership::Ownership;
use crate::store::EventStore;
use aether_core::plan::Move;
use aether_core::protocol::{Names, NodeEvent, NodeEventKind, Progress, VERSION, encode};
use aether_core::types::MovePhase;
use async_nats::jetstream;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{Semaphore, oneshot};
use tokio_util::task::TaskTracker;

/// Who serves which shard, and the workers of the shards hosted here: one lock, so no worker can
/// start on a shard that was just handed off, and a chunk staged after a fresh move's clean-up
/// cannot be overtaken by it.
#[derive(Debug)]
pub struct State {
    /// The pure ownership state.
    pub own: Ownership,
    workers: HashMap<u32, ShardHandle>,
    /// Shards whose worker stopped (or died) since the pending work was last resumed: their
    /// actors with pending work (sends, timers) are loaded again if the shard is still served.
    stopped: HashSet<u32>,
}

impl State {
    /// The worker of `shard`, started if needed.
    pub fn worker(&mut self, ctx: &Arc<HostContext>, shard: u32) -> ShardHandle {
        self.workers
            .entry(shard)
            .or_insert_with(|| host::spawn(ctx, shard))
            .clone()
    }

    /// The shards whose workers run here.
    #[must_use]
    pub fn hosted(&self) -> Vec<u32> {
        self.workers.keys().copied().collect()
    }

    /// The shards whose workers stopped since the last call (see `stopped`).
    pub fn take_stopped(&mut self) -> HashSet<u32> {
        std::mem::take(&mut self.stopped)
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
            self.stopped.insert(shard);
        }
        same
    }

    /// Stops the worker of `shard`; the requests it still held come back on the receiver.
    pub fn stop(&mut self, shard: u32) -> Option<oneshot::Receiver<Vec<Pending>>> {
        let h = self.workers.remove(&shard)?;
        self.stopped.insert(shard);
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
    /// The turn of a large reply on the bulk connection.
    pub large_replies: crate::large::Lane,
    /// Large read replies encoded once per state.
    pub encoded: crate::large::Encoded,
    /// Every task the node spawns (requests, transfers, moves, workers): joined on shutdown.
    pub tasks: TaskTracker,
    /// JetStream on the main connection: progress reports.
    pub js: jetstream::Context,
    /// The epoch held, for moves that stop at once when a newer plan comes.
    pub epochs: tokio::sync::watch::Sender<u64>,
    /// The epoch `held.{me}` says: a plan taken once the workers it stopped have finished.
    pub held_epoch: tokio::sync::watch::Sender<u64>,
    /// Told of each commit of a move to this node and each plan taken: wakes the requests held
    /// for a shard on its way here (`Route::Arriving`).
    pub arrivals: tokio::sync::watch::Sender<()>,
    /// When this node's lease on serving ends (`ownership::lease`); `None` before the first.
    lease: Mutex<Option<tokio::time::Instant>>,
    /// Replicas of the streams and buckets this node creates.
    replicas: usize,
    state: Mutex<State>,
    migrations: Mutex<Arc<Semaphore>>,
    /// The actors' sends, taken by the outbox task when the node serves.
    deliveries: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<crate::host::Delivery>>>,
    /// Plans taken, with the workers they stopped: once those finished, `held.{me}` says so.
    holds: tokio::sync::mpsc::UnboundedSender<Hold>,
    holds_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Hold>>>,
}

/// Longest a stopping node waits for its tasks (requests in flight, moves, workers) to finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A plan epoch taken and the tasks answering what its stopped workers held.
pub(crate) type Hold = (u64, Vec<tokio::task::JoinHandle<()>>);

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
            look_loads: Arc::new(Semaphore::new(crate::host::LOOK_LOADS)),
        });
        Arc::new(Self {
            me: cfg.pod_name.clone(),
            names: Names::new(cfg.nats.prefix.clone()),
            bulk,
            host,
            moves,
            max_request_bytes: cfg.max_request_bytes,
            inflight: Arc::new(Semaphore::new(cfg.max_inflight.max(1))),
            large_replies: crate::large::Lane::new(cfg.large_reply_rate),
            encoded: crate::large::Encoded::default(),
            tasks,
            js: jetstream::new(client.clone()),
            epochs: tokio::sync::watch::Sender::new(0),
            held_epoch: tokio::sync::watch::Sender::new(0),
            arrivals: tokio::sync::watch::Sender::new(()),
            lease: Mutex::new(None),
            replicas: cfg.stream_replicas,
            client,
            state: Mutex::new(State {
                own: Ownership::new(cfg.pod_name.clone()),
                workers: HashMap::new(),
                stopped: HashSet::new(),
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

    /// Moves of the plan just taken run at most `slots` at once.
    pub(crate) fn set_move_slots(&self, slots: usize) {
        *lock(&self.migrations) = Arc::new(Semaphore::new(slots));
    }

    /// Plan `epoch` is taken; once `answering` (what its stopped workers held) is done,
    /// `held.{me}` says so.
    pub(crate) fn hold(&self, epoch: u64, answering: Vec<tokio::task::JoinHandle<()>>) {
        let _ = self.holds.send((epoch, answering));
    }

    /// Whether this node's lease on serving runs (`ownership::lease`): without it, it serves nothing.
    #[must_use]
    pub fn serving_lease(&self) -> bool {
        crate::ownership::lease::serving(tokio::time::Instant::now(), self.lease_until())
    }

    pub(crate) fn lease_until(&self) -> Option<tokio::time::Instant> {
        *lock(&self.lease)
    }

    pub(crate) fn renew_lease(&self, until: tokio::time::Instant) {
        *lock(&self.lease) = Some(until);
        self.host.health.set_lease(None);
    }

    /// The plan bucket (`held.{pod}` keys, the plan).
    pub(crate) async fn plan_bucket(&self) -> Result<async_nats::jetstream::kv::Store> {
        aether_nats::plans::open_bucket(&self.js, &self.names, self.replicas)
            .await
            .map_err(|e| Error::Nats(e.to_string()))
    }

    /// The plans taken, for the one task that writes `held.{me}` (`None` once taken).
    pub(crate) fn take_holds(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Hold>> {
        lock(&self.holds_rx).take()
    }

    /// The actors' sends, for the one outbox task (`None` once taken).
    pub(crate) fn take_deliveries(
        &self,
    ) -> Option<tokio::sync::mpsc::UnboundedReceiver<crate::host::Delivery>> {
        lock(&self.deliveries).take()
    }

    /// Reports a move's progress to the operator (and every node), stored in the progress stream.
    pub async fn report(
        &self,
        epoch: u64,
        mv: &Move,
        phase: MovePhase,
        (actors, bytes): (u32, u64),
        duration_ms: u64,
        error: Option<String>,
    ) {
        let p = Progress {
            actors,
            bytes,
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
            bytes: 0,
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
}
