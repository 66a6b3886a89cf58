//! The node: NATS in, actors and migrations out. It watches the plan, serves requests for any actor
//! (locally, by forwarding once to the owner, or with a redirect), runs the moves it is the source of,
//! accepts the ones it is the destination of, and reports progress to the operator.

use crate::behaviour::Registry;
use crate::config::NodeConfig;
use crate::error::{Error, Result};
use crate::host::{self, Cmd, ShardHandle};
use crate::metrics::Metrics;
use crate::migration::{self, Accept, Action, Event, Incoming, SourceMove};
use crate::routing::Routing;
use crate::store::EventStore;
use aether_core::crd::MovePhase;
use aether_core::plan::Move;
use aether_core::protocol::{
    ErrorCode, ErrorReply, Names, NodeEvent, NodeEventKind, PlanMessage, Progress, Reply, Request,
    Transfer, TransferAck, TransferWriter, VERSION, decode, decode_transfer, encode,
    encode_transfer,
};
use async_nats::jetstream;
use futures::StreamExt;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinSet;

/// Hops a request may take between nodes: one forward from the node it reached, and one more from a
/// source that just handed its shard off.
pub const MAX_HOPS: u8 = 2;
/// Bytes of actor state per transfer chunk (NATS's default max payload is 1 MiB).
pub const CHUNK_BYTES: usize = 512 * 1024;
/// Time to wait for a forwarded request's reply.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// Health as `/readyz` reports it, available before NATS is.
#[derive(Debug, Default)]
pub struct Health {
    /// Why the node is not ready; `None` when it is.
    pub problem: Mutex<Option<String>>,
}

impl Health {
    /// Sets or clears the problem.
    pub fn set(&self, problem: Option<String>) {
        if let Ok(mut p) = self.problem.lock() {
            *p = problem;
        }
    }

    /// The current problem.
    #[must_use]
    pub fn problem(&self) -> Option<String> {
        self.problem
            .lock()
            .map_or_else(|_| Some("health lock poisoned".into()), |p| p.clone())
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
    /// The event log.
    pub store: EventStore,
    /// The runtime that serves requests and runs the shard workers.
    pub serving: tokio::runtime::Handle,
    /// The runtime that runs migrations ([`MigrationRuntime`]).
    pub moves: tokio::runtime::Handle,
    /// Actor kinds.
    pub registry: Registry,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Idle time before an actor is passivated.
    pub passivate_after: Duration,
    /// Queue limit per moving shard.
    pub queue_limit: usize,
    /// Largest request accepted.
    pub max_request_bytes: usize,
    routing: RwLock<Option<Routing>>,
    shards: Mutex<HashMap<u32, ShardHandle>>,
    incoming: Mutex<HashMap<u32, Incoming>>,
    moving: Mutex<HashSet<u32>>,
    migrations: Mutex<Arc<Semaphore>>,
    /// Shards this node handed off, and to whom: a later plan that lists the same move again (its
    /// operator had not seen the Done report yet) is answered Done at once, without a second transfer.
    handed_off: Mutex<HashMap<u32, String>>,
    /// Done reports of a plan this node does not hold yet (progress and plans travel separately).
    early_done: Mutex<Vec<(u64, u32)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock means a panic elsewhere; the data (maps of handles) is still consistent.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    /// Connects the pieces; does not start any task.
    pub fn new(
        cfg: &NodeConfig,
        client: async_nats::Client,
        bulk: async_nats::Client,
        store: EventStore,
        moves: tokio::runtime::Handle,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            me: cfg.pod_name.clone(),
            names: Names::new(cfg.nats.prefix.clone()),
            client,
            bulk,
            serving: tokio::runtime::Handle::current(),
            moves,
            store,
            registry: Registry::builtin(),
            metrics,
            passivate_after: cfg.passivate_after,
            queue_limit: cfg.queue_limit,
            max_request_bytes: cfg.max_request_bytes,
            routing: RwLock::new(None),
            shards: Mutex::new(HashMap::new()),
            incoming: Mutex::new(HashMap::new()),
            moving: Mutex::new(HashSet::new()),
            migrations: Mutex::new(Arc::new(Semaphore::new(4))),
            handed_off: Mutex::new(HashMap::new()),
            early_done: Mutex::new(Vec::new()),
        })
    }

    /// Counts a failure by reason.
    pub fn count_failure(&self, reason: &'static str) {
        Metrics::inc(&self.metrics.failures, reason);
    }

    fn routing(&self) -> Option<Routing> {
        self.routing.read().ok().and_then(|r| r.clone())
    }

    fn with_routing<T>(&self, f: impl FnOnce(&mut Routing) -> T) -> Option<T> {
        let mut guard = self.routing.write().ok()?;
        guard.as_mut().map(f)
    }

    /// The epoch held, 0 before the first plan.
    #[must_use]
    pub fn epoch(&self) -> u64 {
        self.routing
            .read()
            .ok()
            .and_then(|r| r.as_ref().map(Routing::epoch))
            .unwrap_or(0)
    }

    /// Number of moves of the current plan not done yet.
    #[must_use]
    pub fn pending_moves(&self) -> usize {
        self.routing
            .read()
            .ok()
            .and_then(|r| r.as_ref().map(Routing::pending_count))
            .unwrap_or(0)
    }

    /// True while the current plan lists this pod as a member.
    #[must_use]
    pub fn is_member(&self) -> bool {
        self.routing
            .read()
            .ok()
            .and_then(|r| r.as_ref().map(|r| r.is_member(&self.me)))
            .unwrap_or(false)
    }

    /// The worker of a shard this node owns now, started if needed; `None` when the shard is not ours.
    /// The ownership check and the start happen under the shard lock, which hand-offs also take, so
    /// no worker can start on a shard that was just handed off (it would serve stale reads).
    fn owned_worker(self: &Arc<Self>, shard: u32) -> Option<ShardHandle> {
        let mut shards = lock(&self.shards);
        // Checked even when a worker exists: a destination holds installed actors before the commit.
        let mine = self.routing.read().ok().is_some_and(|r| {
            r.as_ref()
                .is_some_and(|r| r.owner(shard) == Some(self.me.as_str()))
        });
        if !mine {
            return None;
        }
        if let Some(h) = shards.get(&shard) {
            return Some(h.clone());
        }
        let h = host::spawn(self.clone(), shard);
        shards.insert(shard, h.clone());
        Some(h)
    }

    fn worker(self: &Arc<Self>, shard: u32) -> ShardHandle {
        lock(&self.shards)
            .entry(shard)
            .or_insert_with(|| host::spawn(self.clone(), shard))
            .clone()
    }

    /// Stops every shard worker (on exit).
    pub fn stop_all_workers(&self) {
        for (_, h) in lock(&self.shards).drain() {
            let _ = h.tx.send(Cmd::Stop);
        }
    }

    fn stop_worker(&self, shard: u32) {
        if let Some(h) = lock(&self.shards).remove(&shard) {
            let _ = h.tx.send(Cmd::Stop);
        }
    }

    /// The answer for a request a stopped worker still held: where to go now.
    #[must_use]
    pub fn route_again(&self, req: Request) -> Reply {
        let Some(r) = self.routing() else {
            return Reply::error(unavailable("no plan yet", 100));
        };
        let shard = r.shard(&req.actor.id);
        match r.owner(shard) {
            Some(owner) if owner != self.me => Reply::error(redirect(owner, r.epoch(), shard)),
            _ => Reply::error(unavailable(&format!("shard {shard} is changing owner"), 20)),
        }
    }

    /// Serves a decoded request: here, by forwarding, or with a redirect.
    pub async fn dispatch(self: &Arc<Self>, req: Request) -> Answer {
        let Some(r) = self.routing() else {
            Metrics::inc(&self.metrics.messages, "unavailable");
            return Answer::Reply(Reply::error(unavailable("this node has no plan yet", 100)));
        };
        let shard = r.shard(&req.actor.id);
        match r.owner(shard) {
            Some(owner) if owner == self.me => {
                Metrics::inc(&self.metrics.messages, "local");
                let (tx, rx) = oneshot::channel();
                let Some(worker) = self.owned_worker(shard) else {
                    return Answer::Reply(self.route_again(req));
                };
                if worker.tx.send(Cmd::Request((req, tx))).is_err() {
                    return Answer::Reply(Reply::error(unavailable("shard worker stopped", 20)));
                }
                Answer::Reply(
                    rx.await
                        .unwrap_or_else(|_| Reply::error(unavailable("shard worker stopped", 20))),
                )
            }
            Some(owner) if req.hops < MAX_HOPS => {
                Metrics::inc(&self.metrics.messages, "forwarded");
                let owner = owner.to_owned();
                self.relay(&owner, req).await
            }
            Some(owner) => {
                Metrics::inc(&self.metrics.messages, "redirected");
                Answer::Reply(Reply::error(redirect(owner, r.epoch(), shard)))
            }
            None => {
                Metrics::inc(&self.metrics.messages, "unavailable");
                Answer::Reply(Reply::error(unavailable("the plan has no members", 500)))
            }
        }
    }

    /// Sends a request on to its owner `to` and relays the owner's reply bytes as they are (no
    /// decode and encode). Relayed rather than passed on with the caller's reply subject, which
    /// saves a hop: an owner that is gone would then leave the caller waiting for its own timeout,
    /// where a relay answers `unavailable` at once (NATS's "no responders").
    async fn relay(&self, to: &str, mut req: Request) -> Answer {
        req.hops = req.hops.saturating_add(1);
        req.epoch = self.epoch();
        let bytes = match encode(&req) {
            Ok(b) => b,
            Err(e) => {
                return Answer::Reply(Reply::error(ErrorReply::new(
                    ErrorCode::Internal,
                    e.to_string(),
                )));
            }
        };
        let sent = tokio::time::timeout(
            FORWARD_TIMEOUT,
            self.client
                .request(self.names.node_requests(to), bytes.into()),
        )
        .await;
        match sent {
            Ok(Ok(msg)) => Answer::Relayed(msg.payload),
            Ok(Err(e)) => Answer::Reply(Reply::error(unavailable(
                &format!("owner {to} did not answer: {e}"),
                100,
            ))),
            Err(_) => Answer::Reply(Reply::error(unavailable(
                &format!("owner {to} timed out"),
                100,
            ))),
        }
    }

    /// Sends a request on to `to` and returns its reply (decoded, for a caller inside the node).
    pub async fn forward(&self, to: &str, req: Request) -> Reply {
        match self.relay(to, req).await {
            Answer::Reply(reply) => reply,
            Answer::Relayed(bytes) => decode::<Reply>(&bytes).unwrap_or_else(|e| {
                Reply::error(ErrorReply::new(
                    ErrorCode::Internal,
                    format!("{to} answered: {e}"),
                ))
            }),
        }
    }

    /// Handles raw request bytes: size check, decode, dispatch. Never panics on bad bytes.
    pub async fn handle_request_bytes(self: &Arc<Self>, bytes: &[u8]) -> Answer {
        if bytes.len() > self.max_request_bytes {
            Metrics::inc(&self.metrics.malformed, "too_large");
            return Answer::Reply(Reply::error(ErrorReply::new(
                ErrorCode::TooLarge,
                format!(
                    "request of {} bytes exceeds {} bytes",
                    bytes.len(),
                    self.max_request_bytes
                ),
            )));
        }
        let req = match decode::<Request>(bytes) {
            Ok(r) => r,
            Err(e) => {
                Metrics::inc(&self.metrics.malformed, "request");
                return Answer::Reply(Reply::error(ErrorReply::from_decode(&e)));
            }
        };
        if let Err(e) = req.actor.validate() {
            Metrics::inc(&self.metrics.malformed, "request");
            return Answer::Reply(Reply::error(ErrorReply::from_decode(&e)));
        }
        if self.registry.get(&req.actor.kind).is_none() {
            return Answer::Reply(Reply::error(ErrorReply::new(
                ErrorCode::UnknownKind,
                format!(
                    "no actor kind {:?} (this node hosts counter, doc)",
                    req.actor.kind
                ),
            )));
        }
        self.dispatch(req).await
    }

    /// Takes a new plan: ignored unless its epoch is higher; then local shards follow it.
    pub fn on_plan(self: &Arc<Self>, plan: PlanMessage) {
        let previous;
        let already_done: Vec<u32>;
        {
            let Ok(mut guard) = self.routing.write() else {
                return;
            };
            if let Some(cur) = guard.as_ref()
                && plan.epoch <= cur.epoch()
            {
                self.metrics.stale_plans.inc();
                tracing::info!(
                    held = cur.epoch(),
                    got = plan.epoch,
                    "ignoring a plan that is not newer"
                );
                return;
            }
            *lock(&self.migrations) = Arc::new(Semaphore::new(plan.max_concurrent.max(1) as usize));
            let mut routing = Routing::new(plan);
            {
                let listed: HashMap<u32, String> = routing
                    .moves_from(&self.me)
                    .into_iter()
                    .map(|m| (m.shard, m.to))
                    .collect();
                let mut handed = lock(&self.handed_off);
                handed.retain(|shard, to| listed.get(shard) == Some(to));
                already_done = handed.keys().copied().collect();
            }
            // Done before anyone sees this plan, so this node never serves those shards again.
            for shard in &already_done {
                routing.move_done(*shard);
            }
            // Moves reported done before this plan reached this node.
            let epoch = routing.epoch();
            let mut early = lock(&self.early_done);
            early.retain(|(e, shard)| {
                if *e == epoch {
                    routing.move_done(*shard);
                }
                *e > epoch
            });
            drop(early);
            previous = guard.replace(routing);
        }
        let Some(r) = self.routing() else { return };
        self.metrics.epoch.set(r.epoch() as i64);
        tracing::info!(epoch = r.epoch(), moves = r.plan.moves.len(), "new plan");
        let hosted: Vec<u32> = lock(&self.shards).keys().copied().collect();
        let me = Some(self.me.as_str());
        for shard in hosted {
            let owned_before = previous.as_ref().is_some_and(|p| p.owner(shard) == me);
            if r.owner(shard) != me || !owned_before {
                // Not ours (whoever owns it rebuilds from the log), or actors installed by a move that
                // was never committed: they may be older than the log, so they go and are reloaded.
                self.stop_worker(shard);
            }
        }
        lock(&self.incoming).retain(|_, inc| inc.epoch >= r.epoch());
        let timeout = Duration::from_secs(u64::from(r.plan.timeout_seconds.max(1)));
        let epoch = r.epoch();
        if !already_done.is_empty() {
            let this = self.clone();
            tokio::spawn(async move {
                for shard in already_done {
                    this.report(epoch, shard, MovePhase::Done, 0, 0, None).await;
                }
            });
        }
        for mv in r.moves_from(&self.me) {
            if lock(&self.moving).insert(mv.shard) {
                self.moves.spawn(self.clone().run_moves(mv, epoch, timeout));
            }
        }
    }

    /// Runs a move of one shard, then any newer move of that shard that a plan listed meanwhile (its
    /// own spawn was skipped while this one was in `moving`).
    async fn run_moves(self: Arc<Self>, mut mv: Move, mut epoch: u64, mut timeout: Duration) {
        let shard = mv.shard;
        loop {
            self.clone().migrate(mv, epoch, timeout).await;
            let next = {
                let mut moving = lock(&self.moving);
                let next = self.routing().filter(|r| r.epoch() > epoch).and_then(|r| {
                    let m = r
                        .moves_from(&self.me)
                        .into_iter()
                        .find(|m| m.shard == shard)?;
                    let t = Duration::from_secs(u64::from(r.plan.timeout_seconds.max(1)));
                    Some((m, r.epoch(), t))
                });
                if next.is_none() {
                    moving.remove(&shard);
                }
                next
            };
            match next {
                Some((m, e, t)) => (mv, epoch, timeout) = (m, e, t),
                None => return,
            }
        }
    }

    /// Runs one source-side move through the [`SourceMove`] state machine. The shard's actors are
    /// serialised chunk by chunk as the machine asks for chunks; each chunk travels in its own task
    /// (up to [`migration::WINDOW`] unacked), and their answers come back as events.
    async fn migrate(self: Arc<Self>, mv: Move, epoch: u64, timeout: Duration) {
        let permits = lock(&self.migrations).clone();
        let Ok(_permit) = permits.acquire_owned().await else {
            return;
        };
        if self.epoch() != epoch {
            // A newer plan arrived while this move waited; it decides anew.
            return;
        }
        let started = Instant::now();
        let deadline = tokio::time::Instant::from_std(started + timeout);
        let shard = mv.shard;
        let to = mv.to.clone();
        let mut machine = SourceMove::default();
        let mut actions: VecDeque<Action> = machine.on(Event::Start).into();
        let mut lent = host::Lent::default();
        let mut chunks: Vec<bytes::Bytes> = Vec::new();
        let mut sends: JoinSet<Event> = JoinSet::new();
        self.report(epoch, shard, MovePhase::Transferring, 0, 0, None)
            .await;
        loop {
            let Some(action) = actions.pop_front() else {
                if machine.finished() || sends.is_empty() {
                    break;
                }
                let event = tokio::select! {
                    Some(Ok(event)) = sends.join_next() => event,
                    () = tokio::time::sleep_until(deadline) => Event::Deadline,
                };
                actions.extend(machine.on(event));
                continue;
            };
            let next = match action {
                Action::PauseAndCapture => {
                    let (tx, rx) = oneshot::channel();
                    let _ = self.worker(shard).tx.send(Cmd::Pause(tx));
                    lent = rx.await.unwrap_or_default();
                    machine.on(Event::Captured)
                }
                Action::Send { chunk, delay_ms } => {
                    let mut produced = None;
                    if chunk as usize == chunks.len() {
                        // A new chunk: serialise the next actors straight into it.
                        match TransferWriter::new(epoch, shard, &self.me, chunk, CHUNK_BYTES + 4096)
                        {
                            Ok(mut w) => {
                                let last = lent.fill(&mut w, CHUNK_BYTES, usize::MAX);
                                chunks.push(w.finish(last, false).into());
                                produced = Some(last);
                            }
                            Err(e) => {
                                actions.extend(machine.on(Event::NoAnswer {
                                    chunk,
                                    reason: e.to_string(),
                                }));
                                continue;
                            }
                        }
                    }
                    let body = chunks.get(chunk as usize).cloned().unwrap_or_default();
                    let (this, to) = (self.clone(), to.clone());
                    let delay = Duration::from_millis(delay_ms);
                    sends.spawn(async move {
                        this.send_chunk(&to, shard, chunk, body, delay, deadline)
                            .await
                    });
                    match produced {
                        Some(last) => machine.on(Event::Produced { chunk, last }),
                        None => Vec::new(),
                    }
                }
                Action::HandOff => {
                    // Routing first, under the shard lock: see `owned_worker`.
                    let mut shards = lock(&self.shards);
                    lock(&self.handed_off).insert(shard, to.clone());
                    self.with_routing(|r| r.epoch() == epoch && r.move_done(shard));
                    if let Some(h) = shards.remove(&shard) {
                        let _ = h.tx.send(Cmd::HandOff { to: to.clone() });
                    }
                    Vec::new()
                }
                Action::Commit { delay_ms } => {
                    if delay_ms > 0 {
                        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                    }
                    if self.epoch() != epoch {
                        // A newer plan decides who owns the shard now.
                        machine.on(Event::Committed)
                    } else {
                        let n = chunks.len() as u32;
                        let commit = Transfer {
                            v: VERSION,
                            epoch,
                            shard,
                            from: self.me.clone(),
                            chunk: n,
                            last: true,
                            actors: Vec::new(),
                            commit: true,
                        };
                        let body = encode_transfer(&commit).unwrap_or_default().into();
                        let until = tokio::time::Instant::now() + FORWARD_TIMEOUT;
                        let event = match self
                            .send_chunk(&to, shard, n, body, Duration::ZERO, until)
                            .await
                        {
                            Event::NoAnswer { .. } | Event::Deadline => Event::CommitUnanswered,
                            _ => Event::Committed,
                        };
                        machine.on(event)
                    }
                }
                Action::Resume => {
                    // To the worker that lent them; if a newer plan stopped it, the actors go.
                    let lent = std::mem::take(&mut lent);
                    if let Some(h) = lock(&self.shards).get(&shard) {
                        let _ = h.tx.send(Cmd::Resume(lent));
                    }
                    Vec::new()
                }
                Action::ReportDone => {
                    let took = started.elapsed();
                    let moved = lent.len() as u32;
                    self.metrics.move_seconds.observe(took.as_secs_f64());
                    Metrics::inc(&self.metrics.moves, "done");
                    self.report(
                        epoch,
                        shard,
                        MovePhase::Done,
                        moved,
                        took.as_millis() as u64,
                        None,
                    )
                    .await;
                    Vec::new()
                }
                Action::ReportFailed(why) => {
                    Metrics::inc(&self.metrics.moves, "failed");
                    tracing::warn!(shard, to = %to, %why, "move failed, shard kept");
                    let took = started.elapsed().as_millis() as u64;
                    self.report(epoch, shard, MovePhase::Failed, 0, took, Some(why))
                        .await;
                    Vec::new()
                }
            };
            actions.extend(next);
        }
        // After the report: what the move still holds (nothing once rolled back) is freed slowly.
        lent.release();
    }

    /// Sends one encoded chunk (or the commit) after `delay`; its answer as an event.
    async fn send_chunk(
        &self,
        to: &str,
        shard: u32,
        n: u32,
        body: bytes::Bytes,
        delay: Duration,
        deadline: tokio::time::Instant,
    ) -> Event {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let request = self.bulk.request(self.names.node_migrate(to), body);
        match tokio::time::timeout_at(deadline, request).await {
            Err(_) => Event::Deadline,
            Ok(Err(e)) => Event::NoAnswer {
                chunk: n,
                reason: e.to_string(),
            },
            Ok(Ok(msg)) => match decode::<TransferAck>(&msg.payload) {
                Ok(TransferAck {
                    error: Some(error), ..
                }) => Event::Refused { chunk: n, error },
                Ok(ack) if ack.chunk == n && ack.shard == shard => Event::Acked { chunk: n },
                Ok(_) => Event::NoAnswer {
                    chunk: n,
                    reason: "ack for another chunk".into(),
                },
                Err(e) => Event::NoAnswer {
                    chunk: n,
                    reason: format!("bad ack: {e}"),
                },
            },
        }
    }

    /// Destination side of a transfer chunk. Chunks of one move arrive concurrently: each is
    /// decoded in its own task, then its actors are staged, packed, in the shard's worker
    /// (installed, not served) before its ack; the commit makes the shard served here.
    pub async fn on_transfer(self: &Arc<Self>, bytes: &[u8]) -> TransferAck {
        let mut chunk = match decode_transfer(bytes) {
            Ok(c) => c,
            Err(e) => {
                Metrics::inc(&self.metrics.malformed, "transfer");
                return ack(0, 0, 0, Some(ErrorReply::from_decode(&e)));
            }
        };
        let (epoch, shard, n) = (chunk.epoch, chunk.shard, chunk.chunk);
        let Some(r) = self.routing() else {
            return ack(epoch, shard, n, Some(unavailable("no plan yet", 50)));
        };
        let source = r
            .move_of(shard)
            .filter(|m| m.to == self.me)
            .and_then(|m| m.from.clone());
        if let Err(e) = migration::check_chunk(r.epoch(), source.as_deref(), &chunk) {
            // Refused before any parsing (a retry after the plan arrives parses it once).
            return ack(epoch, shard, n, Some(e));
        }
        // Staged before the decision, off any lock (and on the migration runtime).
        let mut staged = host::Staged::default();
        staged.add(self, std::mem::take(&mut chunk.actors));
        let installed = {
            let mut incoming = lock(&self.incoming);
            let mut slot = incoming.remove(&shard);
            let decision = migration::accept_chunk(&mut slot, r.epoch(), source.as_deref(), &chunk);
            if let Some(s) = slot {
                incoming.insert(shard, s);
            }
            // Acted on under the lock, so a fresh move's clean-up cannot overtake a chunk staged
            // after it.
            match decision {
                Ok(Accept::Stage { fresh }) => {
                    if fresh {
                        lock(&self.handed_off).remove(&shard);
                        self.stop_worker(shard);
                    }
                    let (tx, rx) = oneshot::channel();
                    let cmd = Cmd::Install(std::mem::take(&mut staged), tx);
                    let _ = self.worker(shard).tx.send(cmd);
                    Ok(Some(rx))
                }
                Ok(Accept::Duplicate) => Ok(None),
                Ok(Accept::Commit) => {
                    self.with_routing(|r| r.epoch() == epoch && r.move_done(shard));
                    Ok(None)
                }
                Err(e) => Err(e),
            }
        };
        match installed {
            Ok(Some(rx)) => {
                let _ = rx.await;
                ack(epoch, shard, n, None)
            }
            Ok(None) => ack(epoch, shard, n, None),
            Err(e) => ack(epoch, shard, n, Some(e)),
        }
    }

    /// A progress report from any node: done moves change the owner.
    pub fn on_progress(self: &Arc<Self>, bytes: &[u8]) {
        let Ok(p) = decode::<Progress>(bytes) else {
            Metrics::inc(&self.metrics.malformed, "progress");
            return;
        };
        match p.phase {
            MovePhase::Done => {
                // Under the routing lock, so a plan installed meanwhile cannot miss it.
                let Ok(mut guard) = self.routing.write() else {
                    return;
                };
                let held = guard.as_ref().map_or(0, Routing::epoch);
                if p.epoch == held {
                    if let Some(r) = guard.as_mut() {
                        r.move_done(p.shard);
                    }
                } else if p.epoch > held {
                    let mut early = lock(&self.early_done);
                    // Bounded: a plan has at most 65,536 moves.
                    if early.len() < 1 << 16 {
                        early.push((p.epoch, p.shard));
                    }
                }
            }
            _ if p.epoch != self.epoch() => {}
            MovePhase::Failed => {
                // If this node installed the shard but the source never saw the ack, the source kept
                // it: drop the copy so there is one owner.
                let mine = self
                    .routing()
                    .and_then(|r| r.move_of(p.shard).cloned())
                    .is_some_and(|m| m.to == self.me);
                if mine {
                    self.stop_worker(p.shard);
                    lock(&self.incoming).remove(&p.shard);
                }
            }
            _ => {}
        }
    }

    async fn report(
        &self,
        epoch: u64,
        shard: u32,
        phase: MovePhase,
        actors: u32,
        duration_ms: u64,
        error: Option<String>,
    ) {
        let p = Progress {
            v: VERSION,
            epoch,
            shard,
            node: self.me.clone(),
            phase,
            actors,
            duration_ms,
            error,
        };
        if let Ok(bytes) = encode(&p)
            && let Err(e) = self
                .client
                .publish(self.names.progress(), bytes.into())
                .await
        {
            tracing::warn!(error = %e, "progress report not sent");
            self.count_failure("progress");
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

    /// True once this node may exit while draining: not a member, nothing leaving from it.
    #[must_use]
    pub fn drained(&self) -> bool {
        let Some(r) = self.routing() else { return true };
        !r.is_member(&self.me) && r.moves_from(&self.me).is_empty() && lock(&self.moving).is_empty()
    }
}

/// What a node answers a request with.
#[derive(Debug)]
pub enum Answer {
    /// Its own reply.
    Reply(Reply),
    /// The owner's reply to a forwarded request, as the owner encoded it.
    Relayed(bytes::Bytes),
}

fn ack(epoch: u64, shard: u32, chunk: u32, error: Option<ErrorReply>) -> TransferAck {
    TransferAck {
        v: VERSION,
        epoch,
        shard,
        chunk,
        error,
    }
}

fn unavailable(msg: &str, retry_ms: u64) -> ErrorReply {
    let mut e = ErrorReply::new(ErrorCode::Unavailable, msg);
    e.retry_after_ms = Some(retry_ms);
    e
}

fn redirect(owner: &str, epoch: u64, shard: u32) -> ErrorReply {
    let mut e = ErrorReply::new(ErrorCode::Redirect, format!("{owner} owns shard {shard}"));
    e.owner = Some(owner.to_owned());
    e.epoch = Some(epoch);
    e
}

/// Connects to NATS with the configured credentials and TLS.
pub async fn connect(args: &crate::config::NatsArgs, name: &str) -> Result<async_nats::Client> {
    let mut opts = async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None);
    if let (Some(user), Some(pass)) = (&args.nats_user, &args.nats_password) {
        opts = opts.user_and_password(user.clone(), pass.clone());
    }
    if let Some(token) = &args.nats_token {
        opts = opts.token(token.clone());
    }
    if let Some(seed) = &args.nats_nkey {
        opts = opts.nkey(seed.clone());
    }
    if let Some(path) = &args.nats_creds {
        opts = opts
            .credentials_file(path)
            .await
            .map_err(|e| Error::Config(format!("--nats-creds {}: {e}", path.display())))?;
    }
    if let Some(ca) = &args.nats_tls_ca {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&args.nats_tls_cert, &args.nats_tls_key) {
        opts = opts
            .add_client_certificate(cert.clone(), key.clone())
            .require_tls(true);
    }
    let urls = crate::process::nats_urls(&args.nats_url, "--nats-url")?;
    opts.connect(urls)
        .await
        .map_err(|e| Error::Nats(format!("connect {}: {e}", args.nats_url)))
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
#[derive(Debug)]
pub struct Node {
    moves: MigrationRuntime,
    cfg: NodeConfig,
    health: Arc<Health>,
    shared: Arc<Shared>,
    js: jetstream::Context,
    requests: Messages,
    transfers: async_nats::Subscriber,
    progress: async_nats::Subscriber,
}

impl Node {
    /// Connects to NATS (waiting while it is unreachable, saying so in `health`), opens the event
    /// stream and subscribes.
    pub async fn connect(
        cfg: NodeConfig,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
    ) -> Result<Self> {
        health.set(Some(format!("connecting to NATS at {}", cfg.nats.nats_url)));
        let client = connect(&cfg.nats, &cfg.pod_name).await?;
        let names = Names::new(cfg.nats.prefix.clone());
        let js = jetstream::new(client.clone());
        let store = loop {
            match EventStore::open(js.clone(), names.clone(), cfg.stream_replicas).await {
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
        let moves = MigrationRuntime::start()?;
        // Connected from the migration runtime, so the transfers' socket work runs there too.
        let (nats, name) = (cfg.nats.clone(), format!("{}/migrations", cfg.pod_name));
        let bulk = moves
            .handle()
            .spawn(async move { connect(&nats, &name).await })
            .await
            .map_err(|e| Error::Internal(format!("migration runtime: {e}")))??;
        let shared = Shared::new(
            &cfg,
            client.clone(),
            bulk.clone(),
            store,
            moves.handle(),
            metrics,
        );
        let requests = subscribe_requests(&shared).await?;
        let transfers = bulk
            .subscribe(names.node_migrate(&shared.me))
            .await
            .map_err(|e| Error::Nats(e.to_string()))?;
        // The subscription is in place at the server before anyone learns this node is up.
        bulk.flush().await.map_err(|e| Error::Nats(e.to_string()))?;
        let progress = client
            .subscribe(names.progress())
            .await
            .map_err(|e| Error::Nats(e.to_string()))?;
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
        let watcher = tokio::spawn(watch_plans(
            shared.clone(),
            js,
            shared.names.clone(),
            cfg.stream_replicas,
        ));
        let health_task = tokio::spawn(watch_health(client.clone(), health.clone()));
        let _ = shared.announce(NodeEventKind::Up).await;
        tracing::info!(pod = %shared.me, prefix = %cfg.nats.prefix, "node serving");

        tokio::pin!(shutdown);
        let mut drain_deadline: Option<tokio::time::Instant> = None;
        let mut check = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                Some(msg) = requests.next() => {
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let answer = shared.handle_request_bytes(&msg.payload).await;
                        if let Some(to) = msg.reply {
                            let bytes = match answer {
                                Answer::Reply(reply) => match encode(&reply) {
                                    Ok(bytes) => bytes.into(),
                                    Err(e) => {
                                        tracing::error!(error = %e, "reply not encodable");
                                        return;
                                    }
                                },
                                Answer::Relayed(bytes) => bytes,
                            };
                            let _ = shared.client.publish(to, bytes).await;
                        }
                    });
                }
                Some(msg) = transfers.next() => {
                    let shared = shared.clone();
                    shared.moves.clone().spawn(async move {
                        let ack = shared.on_transfer(&msg.payload).await;
                        if let (Some(to), Ok(bytes)) = (msg.reply, encode(&ack)) {
                            let _ = shared.bulk.publish(to, bytes.into()).await;
                        }
                    });
                }
                Some(msg) = progress.next() => shared.on_progress(&msg.payload),
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
        watcher.abort();
        health_task.abort();
        shared.stop_all_workers();
        let _ = client.drain().await;
        let _ = shared.bulk.drain().await;
        drop(moves);
        Ok(())
    }
}

type Messages = futures::stream::SelectAll<async_nats::Subscriber>;

/// The runtime that runs migrations, both ends: one thread at a lower CPU priority than request
/// serving (nice +10 on Linux: about a tenth of a core when serving keeps every core busy, all the
/// idle CPU otherwise), which gives its core back every few actors ([`host::YIELD_EVERY`]), so
/// moving a shard's megabytes does not stretch the latency of actors that stay. SCHED_IDLE would
/// disturb them even less, but a thread cannot leave it without privileges, so moves off a saturated
/// node (when scaling out matters most) would nearly stop. Shut down without blocking when dropped.
#[derive(Debug)]
pub struct MigrationRuntime(Option<tokio::runtime::Runtime>);

/// Niceness of the migration thread (0 is the default, 19 the lowest priority).
pub const MIGRATION_NICENESS: i32 = 10;

impl MigrationRuntime {
    /// Starts its thread.
    pub fn start() -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(1)
            .thread_name("aether-moves")
            .on_thread_start(lower_priority)
            .enable_all()
            .build()
            .map_err(|e| Error::Internal(format!("migration runtime: {e}")))?;
        Ok(Self(Some(rt)))
    }

    /// Where to spawn migration work.
    #[must_use]
    pub fn handle(&self) -> tokio::runtime::Handle {
        match &self.0 {
            Some(rt) => rt.handle().clone(),
            None => tokio::runtime::Handle::current(),
        }
    }
}

impl Drop for MigrationRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(target_os = "linux")]
fn lower_priority() {
    // A thread's own niceness: setpriority(PRIO_PROCESS, tid) applies to that thread on Linux.
    let tid = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(tid), MIGRATION_NICENESS) {
        tracing::warn!(error = %e, "migration thread keeps the default CPU priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

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
    Ok(futures::stream::select_all([any, mine]))
}

async fn watch_plans(shared: Arc<Shared>, js: jetstream::Context, names: Names, replicas: usize) {
    loop {
        let result: Result<()> = async {
            let bucket = crate::plans::open_bucket(&js, &names, replicas).await?;
            let mut watch = bucket
                .watch_with_history(Names::PLAN_KEY)
                .await
                .map_err(|e| Error::Nats(format!("watch plans: {e}")))?;
            while let Some(entry) = watch.next().await {
                let entry = entry.map_err(|e| Error::Nats(format!("watch plans: {e}")))?;
                if entry.operation != jetstream::kv::Operation::Put {
                    continue;
                }
                match decode::<PlanMessage>(&entry.value) {
                    Ok(plan) => shared.on_plan(plan),
                    Err(e) => {
                        Metrics::inc(&shared.metrics.malformed, "plan");
                        tracing::warn!(error = %e, "ignoring a malformed plan");
                    }
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

async fn watch_health(client: async_nats::Client, health: Arc<Health>) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        let draining = health.problem().is_some_and(|p| p.starts_with("draining"));
        if draining {
            continue;
        }
        match client.connection_state() {
            async_nats::connection::State::Connected => health.set(None),
            other => health.set(Some(format!("NATS connection is {other:?}: not serving"))),
        }
    }
}
