//! The actor host: one task per local shard, owning that shard's actors in memory. An actor's requests
//! run one at a time, in arrival order, which is what makes it single-writer inside the node; the log's
//! expected-sequence check makes it single-writer across nodes. Appends of different actors of a shard
//! overlap: a command's append is in flight while the worker serves other actors, and requests for an
//! actor with an append in flight wait behind it.
//!
//! While its shard moves, a worker is paused: requests queue (never dropped; beyond the queue limit the
//! caller is told to retry). On resume it serves the queue; when stopped (hand-off, or the shard is
//! no longer this node's) it finishes its appends and hands every request it still holds back to
//! whoever stopped it, which forwards them or tells their callers where to go. A worker knows nothing
//! of routing: it gets a [`HostContext`] and never calls back into the node.

use crate::behaviour::{Kind, Registry};
use crate::error::Error;
use crate::metrics::{AppFault, Failure, Metrics};
use crate::store::{EventStore, Loaded, Outgoing, Snapshot, json_size};
use aether_core::protocol::app::{APPLY_BATCH, ApplyCall};
use aether_core::protocol::{ActorRef, ActorReply, ErrorCode, ErrorReply, Reply, Request};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

mod append;
mod commands;
mod deciding;
mod forgotten;
mod lending;
mod marker;
#[cfg(test)]
mod tests;
mod timers;

use append::Appended;
pub use append::KEPT_REPLY_BYTES;
pub use lending::{Copied, Lent, Packed, Staged, YIELD_EVERY};

/// A request waiting for its reply.
pub type Pending = (Request, oneshot::Sender<Reply>);

/// What a shard worker needs from its node: nothing about routing.
#[derive(Debug)]
pub struct HostContext {
    /// This pod (named in replies).
    pub me: String,
    /// Actor kinds.
    pub registry: Registry,
    /// The event log.
    pub store: EventStore,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Idle time before an actor is passivated.
    pub passivate_after: Duration,
    /// Queue limit of a paused (moving) shard.
    pub queue_limit: usize,
    /// Largest actor state (bytes of JSON) a command may leave.
    pub max_state_bytes: usize,
    /// Most actors the node holds in memory (see [`Worker::evict`]).
    pub max_actors: usize,
    /// The runtime that serves requests: workers run there even when a migration starts them.
    pub serving: tokio::runtime::Handle,
    /// Every worker task, joined on shutdown.
    pub tasks: tokio_util::task::TaskTracker,
    /// Readiness: a full event stream makes the node not Ready, with the reason.
    pub health: Arc<crate::health::Health>,
    /// Where actors' sends go to be delivered (the node's outbox task, `outbox.rs`).
    pub outbox: mpsc::UnboundedSender<Delivery>,
    /// Loads for looks (timers, sends to resume) in progress on the node, at most
    /// [`LOOK_LOADS`]: a catch-up after an outage leaves the store room for requests.
    pub look_loads: Arc<tokio::sync::Semaphore>,
}

/// Most actors the node's workers load at once for their looks (see [`HostContext::look_loads`]).
pub const LOOK_LOADS: usize = 16;

/// Messages of one actor to deliver: sent by a record that just landed, or found undelivered when
/// the actor was loaded.
#[derive(Debug)]
pub struct Delivery {
    /// The sender.
    pub from: ActorRef,
    /// Its messages.
    pub sends: Vec<Outgoing>,
}

/// What a shard worker is asked to do.
#[derive(Debug)]
pub enum Cmd {
    /// Serve a request.
    Request(Pending),
    /// Copy up to `max` live actors from the `from`-th on (in the worker's order), without pausing:
    /// a move's copy round, a batch at a time so requests are served in between. `true` with the
    /// batch when no actors are left. Actors loaded, dropped or reordered meanwhile are no harm:
    /// the pause sends every actor whose sequence differs from its copy's, or that was not copied.
    Copy {
        /// Position of the first actor.
        from: usize,
        /// Most actors in the batch.
        max: usize,
        /// The copies, and whether they were the last.
        tx: oneshot::Sender<(Lent, bool)>,
    },
    /// Pause, and lend the live actors to the move.
    Pause(oneshot::Sender<Lent>),
    /// Take the lent actors back, unpause and serve the queue.
    Resume(Lent),
    /// What the shard's pending-work markers say, read when the node started serving it: when
    /// to look at each actor (`0`: at once, for its sends). The actor is loaded then: its
    /// undelivered sends go out, its due timers fire; a marker with nothing behind it is removed.
    Look(Vec<(ActorRef, u64)>),
    /// Install migrated actors (destination side), then answer.
    Install(Staged, oneshot::Sender<()>),
    /// Finish the appends in flight, drop the actors and stop; the requests still held (queued
    /// while paused, or sent meanwhile) go back on the channel, for the stopper to route.
    Stop(oneshot::Sender<Vec<Pending>>),
}

/// Handle on a shard worker.
#[derive(Debug, Clone)]
pub struct ShardHandle {
    /// Its queue.
    pub tx: mpsc::UnboundedSender<Cmd>,
}

/// An actor in memory.
#[derive(Debug, Clone)]
struct Actor {
    kind: Kind,
    /// Its pending-work marker as the worker knows it ([`marker::Marker`]): written before a
    /// record that sends or sets an earlier timer, removed after the record that leaves nothing
    /// pending.
    marker: marker::Marker,
    snapshot: Snapshot,
    version: u64,
    seq: u64,
    base: u64,
    last_used: Instant,
    /// An app actor's command ids forgotten while JetStream's duplicate window may hold them.
    forgotten: Option<Box<forgotten::Forgotten>>,
}

impl Actor {
    /// The forgotten ids of an app actor just loaded, remembering `recent` ids.
    fn forgotten_at_load(
        kind: &Kind,
        recent: usize,
        window: Duration,
    ) -> Option<Box<forgotten::Forgotten>> {
        match kind {
            Kind::App(_) => forgotten::Forgotten::loaded(
                recent,
                crate::store::RECENT_COMMANDS,
                Instant::now(),
                window,
            ),
            Kind::Local(_) => None,
        }
    }
}

/// Starts the worker of `shard`.
pub fn spawn(ctx: &Arc<HostContext>, shard: u32) -> ShardHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let worker = Worker {
        ctx: ctx.clone(),
        shard,
        actors: HashMap::new(),
        packed: HashMap::new(),
        paused: false,
        queue: VecDeque::new(),
        inflight: FuturesUnordered::new(),
        busy: HashMap::new(),
        timers: timers::LookIndex::default(),
        index_bytes: 0,
    };
    // On the serving runtime even when a migration (on its own runtime) starts the worker.
    ctx.tasks.spawn_on(worker.run(rx), &ctx.serving);
    ShardHandle { tx }
}

struct Worker {
    ctx: Arc<HostContext>,
    shard: u32,
    /// Boxed: the table holds a key and a pointer per actor, so its growth (to twice its
    /// length at worst) copies and reserves 56 bytes per actor, not 256.
    actors: HashMap<ActorRef, Box<Actor>>,
    /// Migrated actors not used since they arrived (never also in `actors`).
    packed: HashMap<ActorRef, Packed>,
    paused: bool,
    queue: VecDeque<Pending>,
    /// Appends in flight, one per busy actor.
    inflight: FuturesUnordered<Pin<Box<dyn Future<Output = Appended> + Send>>>,
    /// Actors with an append in flight, and the requests waiting for it.
    busy: HashMap<ActorRef, VecDeque<Pending>>,
    /// When to look at the shard's actors with timers (or sends to resume), in memory or not.
    timers: timers::LookIndex,
    /// Bytes of `timers` counted in the node's gauge.
    index_bytes: i64,
}

enum Next {
    Appended(Appended),
    Timers,
    Cmd(Option<Cmd>),
    Sweep,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Cmd>) {
        let mut sweep = tokio::time::interval(self.ctx.passivate_after.max(Duration::from_secs(1)));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stopped = None;
        // The earliest due time of the shard's timers, and an alarm set for it.
        let mut alarm = Box::pin(tokio::time::sleep(Duration::from_secs(3600)));
        let mut armed: Option<u64> = None;
        loop {
            let next_due = self.timers.next();
            if next_due != armed {
                armed = next_due;
                if let Some(due) = next_due {
                    alarm.as_mut().reset(timers::instant_of(due).into());
                }
            }
            let next = tokio::select! {
                biased;
                Some(done) = self.inflight.next(), if !self.inflight.is_empty() => Next::Appended(done),
                cmd = rx.recv() => Next::Cmd(cmd),
                () = &mut alarm, if armed.is_some() && !self.paused => Next::Timers,
                _ = sweep.tick() => Next::Sweep,
            };
            let cmd = match next {
                Next::Appended(done) => {
                    self.complete(done).await;
                    continue;
                }
                Next::Timers => {
                    armed = None;
                    self.fire_due().await;
                    continue;
                }
                Next::Sweep => {
                    self.passivate();
                    continue;
                }
                Next::Cmd(None) => break,
                Next::Cmd(Some(cmd)) => cmd,
            };
            match cmd {
                Cmd::Request(p) if self.paused => self.enqueue(p),
                Cmd::Request(p) => self.dispatch(p, 0).await,
                Cmd::Copy { from, max, tx } => {
                    let _ = tx.send(self.copy(from, max));
                }
                Cmd::Pause(tx) => {
                    self.paused = true;
                    // Appends in flight, and the requests that arrived before the pause, finish first.
                    self.drain().await;
                    let lent = Lent {
                        actors: std::mem::take(&mut self.actors).into_iter().collect(),
                        packed: std::mem::take(&mut self.packed).into_iter().collect(),
                        ..Lent::default()
                    };
                    self.ctx.metrics.actors.dec_by(lent.len() as i64);
                    if let Err(lent) = tx.send(lent) {
                        self.restore(lent);
                    }
                }
                Cmd::Resume(lent) => {
                    self.restore(lent);
                    self.paused = false;
                    let queued = std::mem::take(&mut self.queue);
                    for p in queued {
                        self.ctx.metrics.queued.dec();
                        self.dispatch(p, 0).await;
                    }
                }
                Cmd::Look(marked) => self.index_markers(marked),
                Cmd::Install(actors, done) => {
                    self.install(actors);
                    let _ = done.send(());
                }
                Cmd::Stop(back) => {
                    stopped = Some(back);
                    break;
                }
            }
        }
        self.drain().await;
        // Requests that raced the stop go back too, never dropped: the stopper routes them.
        rx.close();
        let mut leftovers: Vec<Pending> = self.queue.drain(..).collect();
        self.ctx.metrics.queued.dec_by(leftovers.len() as i64);
        while let Ok(cmd) = rx.try_recv() {
            match cmd {
                Cmd::Request(p) => leftovers.push(p),
                Cmd::Stop(back) if stopped.is_none() => stopped = Some(back),
                _ => {}
            }
        }
        self.ctx.metrics.actors.dec_by(self.hosted() as i64);
        self.ctx
            .metrics
            .timers_pending
            .dec_by(self.timers.len() as i64);
        self.ctx.metrics.timer_index_bytes.dec_by(self.index_bytes);
        if let Some(back) = stopped {
            // If the stopper is gone, the callers' reply channels close and they are told so.
            let _ = back.send(leftovers);
        }
    }

    /// Actors in memory, live or packed.
    fn hosted(&self) -> usize {
        self.actors.len() + self.packed.len()
    }

    fn enqueue(&mut self, pending: Pending) {
        if self.queue.len() >= self.ctx.queue_limit {
            let mut e = ErrorReply::new(
                ErrorCode::Unavailable,
                format!("shard {} is moving and its queue is full", self.shard),
            );
            e.retry_after_ms = Some(50);
            let _ = pending.1.send(Reply::error(e));
            return;
        }
        self.ctx.metrics.queued.inc();
        self.queue.push_back(pending);
    }

    fn passivate(&mut self) {
        if self.paused {
            return;
        }
        let idle = self.ctx.passivate_after;
        let before = self.hosted();
        let busy = &self.busy;
        self.actors
            .retain(|k, a| busy.contains_key(k) || a.last_used.elapsed() < idle);
        let now = Instant::now();
        for a in self.actors.values_mut() {
            if a.forgotten.as_mut().is_some_and(|f| f.expire(now)) {
                a.forgotten = None;
            }
        }
        self.packed.retain(|_, p| p.since.elapsed() < idle);
        self.ctx
            .metrics
            .actors
            .dec_by((before - self.hosted()) as i64);
    }

    async fn load(&mut self, actor: &ActorRef) -> Result<(), Error> {
        if self.actors.contains_key(actor) {
            return Ok(());
        }
        if let Some(p) = self.packed.remove(actor) {
            match p.unpack(self.ctx.store.duplicate_window()) {
                Ok(a) => {
                    self.resend(actor, &a.snapshot.outbox);
                    self.actors.insert(actor.clone(), a);
                    self.index_timers(actor);
                    self.evict(actor);
                    return Ok(());
                }
                Err(e) => {
                    // Rebuilt from the log below, as if it had not moved with its state.
                    tracing::warn!(error = %e, "migrated state unreadable: replaying the log");
                    self.ctx.metrics.failure(Failure::BadSnapshot);
                    self.ctx.metrics.actors.dec();
                }
            }
        }
        let kind = self
            .ctx
            .registry
            .get(&actor.kind)
            .cloned()
            .ok_or_else(|| Error::Internal(format!("no behaviour {}", actor.kind)))?;
        let subject = self.ctx.store.subject(self.shard, actor);
        let Loaded {
            mut snapshot,
            version,
            seq,
            base,
            unfolded,
        } = self.ctx.store.load(&subject, kind.initial()).await?;
        if !unfolded.is_empty() {
            fold(
                &kind,
                actor,
                snapshot.state.make_mut(),
                unfolded,
                self.ctx.max_state_bytes,
            )
            .await?;
        }
        // Kept as text until a command needs it: a state read from a snapshot record is text
        // already, one folded from events is written once.
        snapshot.state.compact();
        // Grown one id at a time by the records folded: held at their length from now on.
        snapshot.recent.shrink_to_fit();
        snapshot.recent_at.shrink_to_fit();
        self.resend(actor, &snapshot.outbox);
        let window = self.ctx.store.duplicate_window();
        self.actors.insert(
            actor.clone(),
            Box::new(Actor {
                forgotten: Actor::forgotten_at_load(&kind, snapshot.recent.len(), window),
                kind,
                marker: snapshot.has_pending().then_some(marker::UNKNOWN),
                snapshot,
                version,
                seq,
                base,
                last_used: Instant::now(),
            }),
        );
        self.ctx.metrics.actors.inc();
        self.index_timers(actor);
        self.evict(actor);
        Ok(())
    }

    /// Keeps the node within `max_actors`: when it holds more, this worker passivates its least
    /// recently used idle actors (never `keep`, never one with an append in flight), migrated ones
    /// not used since they arrived first, and a sixteenth of its actors beyond the excess, so the
    /// sort is paid once per many loads.
    fn evict(&mut self, keep: &ActorRef) {
        let held = usize::try_from(self.ctx.metrics.actors.get()).unwrap_or(0);
        let Some(excess) = held.checked_sub(self.ctx.max_actors).filter(|e| *e > 0) else {
            return;
        };
        let mut want = excess + self.hosted() / 16;
        let mut packed: Vec<(Instant, ActorRef)> = self
            .packed
            .iter()
            .map(|(k, p)| (p.since, k.clone()))
            .collect();
        packed.sort_unstable_by_key(|(t, _)| *t);
        for (_, k) in packed.into_iter().take(want) {
            self.packed.remove(&k);
            want -= 1;
            self.ctx.metrics.actors.dec();
            self.ctx.metrics.evicted.inc();
        }
        if want == 0 {
            return;
        }
        let mut idle: Vec<(Instant, ActorRef)> = self
            .actors
            .iter()
            .filter(|(k, _)| *k != keep && !self.busy.contains_key(*k))
            .map(|(k, a)| (a.last_used, k.clone()))
            .collect();
        if idle.len() > want {
            idle.select_nth_unstable_by_key(want, |(t, _)| *t);
            idle.truncate(want);
        }
        for (_, k) in idle {
            self.actors.remove(&k);
            self.ctx.metrics.actors.dec();
            self.ctx.metrics.evicted.inc();
        }
    }

    /// Hands a loaded actor's undelivered messages to the outbox task: the receiver applies each
    /// once whoever sends it how often (its command id is the same), and the reply is recorded once.
    fn resend(&self, actor: &ActorRef, outbox: &[Outgoing]) {
        if !outbox.is_empty() {
            let _ = self.ctx.outbox.send(Delivery {
                from: actor.clone(),
                sends: outbox.to_vec(),
            });
        }
    }

    fn ok(&self, a: &Actor, reply: Option<serde_json::Value>) -> Reply {
        Reply::ok(ActorReply {
            version: a.version,
            state: a.snapshot.state.clone(),
            node: self.ctx.me.clone(),
            reply,
            timers: a.snapshot.timers.clone(),
        })
    }
}

/// Folds the events loaded after an actor's snapshot into its state: in process, or by the app
/// container in batches of [`APPLY_BATCH`].
async fn fold(
    kind: &Kind,
    actor: &ActorRef,
    state: &mut serde_json::Value,
    events: Vec<serde_json::Value>,
    max_state_bytes: usize,
) -> Result<(), Error> {
    match kind {
        Kind::Local(b) => {
            for e in &events {
                b.apply(state, e);
            }
        }
        Kind::App(k) => {
            for batch in events.chunks(APPLY_BATCH) {
                let call = ApplyCall {
                    kind: &actor.kind,
                    id: &actor.id,
                    state,
                    events: batch,
                };
                let next = k.app.apply(&call).await?;
                let size = json_size(&next);
                if size > max_state_bytes {
                    return Err(k.app.fault(
                        AppFault::TooLarge,
                        format!(
                            "apply: a state of {size} bytes, over the limit of {max_state_bytes}"
                        ),
                    ));
                }
                *state = next;
            }
        }
    }
    Ok(())
}
