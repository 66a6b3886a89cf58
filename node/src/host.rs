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

use crate::behaviour::{AppKind, Kind, Registry};
use crate::capture;
use crate::error::Error;
use crate::metrics::{AppFault, Failure, Metrics};
use crate::store::{EventStore, Loaded, Outgoing, Record, Snapshot, json_size};
use aether_core::protocol::app::{
    APPLY_BATCH, ApplyCall, DecideCall, Decision, is_send_id, send_id,
};
use aether_core::protocol::{
    ActorRef, ActorReply, ActorSnapshot, ErrorCode, ErrorReply, Op, Reply, Request, TransferWriter,
};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

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
    pub health: Arc<crate::node::Health>,
    /// Where actors' sends go to be delivered (the node's outbox task, `outbox.rs`).
    pub outbox: mpsc::UnboundedSender<Delivery>,
}

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
    /// Load the actor if it has pending work (its marker says so): its undelivered sends go out,
    /// the releases it owes are made; a marker with nothing behind it is removed.
    Touch(ActorRef),
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

/// The migration thread gives its core back (`sched_yield`) after writing or dropping this many
/// actors. At nice +10 it already gets little CPU while requests keep the cores busy, but once running
/// it keeps the core for its time slice (milliseconds): a request thread that wakes up meanwhile
/// waits. Yielding every ~20 us of work bounds that wait; the cost is one system call per 16 actors.
pub const YIELD_EVERY: usize = 16;

/// A paused shard's actors, lent to its move: serialised chunk by chunk as the move sends them
/// (off the worker, which only queues while paused), given back if the move rolls back, dropped
/// after the hand-off.
#[derive(Debug, Default)]
pub struct Lent {
    actors: Vec<(ActorRef, Actor)>,
    packed: Vec<(ActorRef, Packed)>,
    next: usize,
    /// Only the first `send.0` actors and `send.1` packed ones are sent (after a copy round: those
    /// that changed since); `None`: all.
    send: Option<(usize, usize)>,
    /// Copied actors not live any more: sent first, as drops (an empty state).
    drops: Vec<ActorRef>,
}

/// Each copied actor's sequence, to tell at the pause which changed since.
pub type Copied = HashMap<ActorRef, u64>;

impl Lent {
    /// Number of actors.
    #[must_use]
    pub fn len(&self) -> usize {
        self.actors.len() + self.packed.len()
    }

    /// Adds a batch of copies.
    pub fn extend(&mut self, more: Lent) {
        self.actors.extend(more.actors);
        self.packed.extend(more.packed);
    }

    /// Each actor's sequence.
    #[must_use]
    pub fn sequences(&self) -> Copied {
        let live = self.actors.iter().map(|(k, a)| (k.clone(), a.seq));
        let packed = self.packed.iter().map(|(k, p)| (k.clone(), p.seq));
        live.chain(packed).collect()
    }

    /// After a copy round: only the actors whose sequence differs from their copy's, or that were
    /// not copied, are sent, and a drop for each copied actor not among them. Returns how many
    /// are sent and how many dropped.
    pub fn changed_since(&mut self, mut copied: Copied) -> (usize, usize) {
        fn changed<T>(
            items: &mut [(ActorRef, T)],
            copied: &mut Copied,
            seq: impl Fn(&T) -> u64,
        ) -> usize {
            let mut n = 0;
            for i in 0..items.len() {
                let (k, item) = &items[i];
                if copied.remove(k) != Some(seq(item)) {
                    items.swap(i, n);
                    n += 1;
                }
            }
            n
        }
        let actors = changed(&mut self.actors, &mut copied, |a| a.seq);
        let packed = changed(&mut self.packed, &mut copied, |p| p.seq);
        self.send = Some((actors, packed));
        self.drops = copied.into_keys().collect();
        (actors + packed, self.drops.len())
    }

    /// True when the shard had no live actors.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes up to `max_actors` of the next actors into `chunk`, stopping once it holds at least
    /// `max_bytes`; true when none are left. An actor still packed as it arrived is copied as it
    /// is. An actor whose state cannot be written is left out: its new owner rebuilds it from the log.
    pub fn fill(
        &mut self,
        chunk: &mut TransferWriter,
        max_bytes: usize,
        max_actors: usize,
    ) -> bool {
        let (n_actors, n_packed) = self.send.unwrap_or((self.actors.len(), self.packed.len()));
        let n_drops = self.drops.len();
        let total = n_drops + n_actors + n_packed;
        let stop = self.next.saturating_add(max_actors).min(total);
        while self.next < stop && chunk.len() < max_bytes {
            let i = self.next;
            self.next += 1;
            if i % YIELD_EVERY == YIELD_EVERY - 1 {
                std::thread::yield_now();
            }
            let written = if i < n_drops {
                // An empty state: the destination drops its copy and reads the actor from the log.
                chunk.actor(&self.drops[i], 0, 0, |_| Ok::<(), Error>(()))
            } else if i < n_drops + n_actors {
                let (actor, a) = &self.actors[i - n_drops];
                chunk.actor(actor, a.version, a.seq, |out| {
                    capture::write(out, &a.snapshot, a.base)
                })
            } else {
                let (actor, p) = &self.packed[i - n_drops - n_actors];
                chunk.actor(actor, p.version, p.seq, |out| {
                    out.extend_from_slice(&p.state);
                    Ok::<(), Error>(())
                })
            };
            if let Err(e) = written {
                tracing::warn!(error = %e, "actor left out of a transfer: rebuilt from the log");
            }
        }
        self.next >= total
    }

    /// Drops the actors after a hand-off, a few at a time (see [`YIELD_EVERY`]): freeing ten
    /// thousand actors' states at once would hold the core for milliseconds.
    pub fn release(self) {
        let mut actors = self.actors.into_iter();
        while actors.by_ref().take(YIELD_EVERY).count() > 0 {
            std::thread::yield_now();
        }
        // A packed actor is one allocation.
        let mut packed = self.packed.into_iter();
        while packed.by_ref().take(YIELD_EVERY * 8).count() > 0 {
            std::thread::yield_now();
        }
    }
}

/// Migrated actors, ready to install: kept as they arrived and unpacked when first used, so a
/// move costs the destination a copy per actor, not a parse. `None`: a drop (an empty state: the
/// actor's copy staged earlier goes, and it is read from the log).
#[derive(Debug, Default)]
pub struct Staged(Vec<(ActorRef, Option<Packed>)>);

impl Staged {
    /// Adds captured actors. One of a kind this node lacks is left out and counted: such an actor
    /// is refused when used, as it would be had it never moved.
    pub fn add(&mut self, ctx: &HostContext, actors: impl IntoIterator<Item = ActorSnapshot>) {
        let now = Instant::now();
        let staged = actors.into_iter().filter_map(|snap| {
            if snap.state.0.is_empty() {
                return Some((snap.actor, None));
            }
            let Some(kind) = ctx.registry.get(&snap.actor.kind).cloned() else {
                ctx.metrics.failure(Failure::UnknownKind);
                return None;
            };
            let packed = Packed {
                kind,
                state: snap.state.0,
                version: snap.version,
                seq: snap.seq,
                since: now,
            };
            Some((snap.actor, Some(packed)))
        });
        self.0.extend(staged);
    }
}

/// A migrated actor not used since it arrived: its captured state, unparsed.
#[derive(Debug, Clone)]
pub struct Packed {
    kind: Kind,
    state: Vec<u8>,
    version: u64,
    seq: u64,
    since: Instant,
}

impl Packed {
    /// The live actor, or why its state does not read.
    fn unpack(self) -> Result<Actor, Error> {
        let (snapshot, base) = capture::read(&self.state)?;
        Ok(Actor {
            kind: self.kind,
            marked: snapshot.has_pending(),
            snapshot,
            version: self.version,
            seq: self.seq,
            base,
            last_used: Instant::now(),
        })
    }
}

/// An actor in memory.
#[derive(Debug, Clone)]
struct Actor {
    kind: Kind,
    /// Its pending-work marker is (believed) in the log: set before a record that sends, removed
    /// after the record that leaves nothing pending.
    marked: bool,
    snapshot: Snapshot,
    version: u64,
    seq: u64,
    base: u64,
    last_used: Instant,
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
    };
    // On the serving runtime even when a migration (on its own runtime) starts the worker.
    ctx.tasks.spawn_on(worker.run(rx), &ctx.serving);
    ShardHandle { tx }
}

struct Worker {
    ctx: Arc<HostContext>,
    shard: u32,
    actors: HashMap<ActorRef, Actor>,
    /// Migrated actors not used since they arrived (never also in `actors`).
    packed: HashMap<ActorRef, Packed>,
    paused: bool,
    queue: VecDeque<Pending>,
    /// Appends in flight, one per busy actor.
    inflight: FuturesUnordered<Pin<Box<dyn Future<Output = Appended> + Send>>>,
    /// Actors with an append in flight, and the requests waiting for it.
    busy: HashMap<ActorRef, VecDeque<Pending>>,
}

/// A command whose record was appended (or not).
struct Appended {
    req: Request,
    tx: oneshot::Sender<Reply>,
    attempt: u8,
    result: Result<u64, Error>,
    /// The actor's state once the append lands.
    next: serde_json::Value,
    /// The record (its events taken out); `None` when nothing was appended (the decision had no
    /// events), and `result` is then the old sequence.
    record: Option<Box<Record>>,
    /// An app kind's reply for the caller.
    reply: Option<serde_json::Value>,
    /// The actor's pending-work marker as this step left it (`None`: untouched).
    marked: Option<bool>,
}

impl Appended {
    fn new(req: Request, tx: oneshot::Sender<Reply>, attempt: u8, expected: u64) -> Self {
        Self {
            req,
            tx,
            attempt,
            result: Ok(expected),
            next: serde_json::Value::Null,
            record: None,
            reply: None,
            marked: None,
        }
    }
}

/// What a request needs after the decision.
enum Step {
    Reply(Reply),
    Append {
        subject: String,
        expected: u64,
        record: Box<Record>,
        next: serde_json::Value,
        /// Once it landed, the actor has nothing pending: its marker goes.
        clear_marker: bool,
    },
    /// An app kind's command: the app decides, then the record is appended, off the worker.
    Decide(Box<Deciding>),
}

/// What an app kind's decide call needs, taken from the actor before the call.
struct Deciding {
    kind: Arc<AppKind>,
    subject: String,
    expected: u64,
    state: serde_json::Value,
    version: u64,
    base: u64,
    /// Everything but the state, when the next record carries a snapshot.
    prev: Option<Snapshot>,
    /// The actor's shard, and whether its pending-work marker is set.
    shard: u32,
    marked: bool,
    /// Bytes of what the actor keeps besides its state (recent ids, outbox, inbox).
    extras: usize,
}

enum Next {
    Appended(Appended),
    Cmd(Option<Cmd>),
    Sweep,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Cmd>) {
        let mut sweep = tokio::time::interval(self.ctx.passivate_after.max(Duration::from_secs(1)));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stopped = None;
        loop {
            let next = tokio::select! {
                biased;
                Some(done) = self.inflight.next(), if !self.inflight.is_empty() => Next::Appended(done),
                cmd = rx.recv() => Next::Cmd(cmd),
                _ = sweep.tick() => Next::Sweep,
            };
            let cmd = match next {
                Next::Appended(done) => {
                    self.complete(done).await;
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
                Cmd::Touch(actor) if !self.paused => self.touch(&actor).await,
                Cmd::Touch(_) => {}
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
        self.packed.retain(|_, p| p.since.elapsed() < idle);
        self.ctx
            .metrics
            .actors
            .dec_by((before - self.hosted()) as i64);
    }

    /// Takes lent actors back (a move that rolled back).
    fn restore(&mut self, lent: Lent) {
        self.ctx.metrics.actors.inc_by(lent.len() as i64);
        self.actors.extend(lent.actors);
        self.packed.extend(lent.packed);
    }

    fn install(&mut self, staged: Staged) {
        for (actor, p) in staged.0 {
            let Some(p) = p else {
                self.drop_actor(&actor);
                continue;
            };
            let replaced = self.actors.remove(&actor).is_some();
            if self.packed.insert(actor, p).is_none() && !replaced {
                self.ctx.metrics.actors.inc();
            }
        }
    }

    /// Copies of up to `max` actors from the `from`-th on (live ones first, then packed ones), and
    /// whether they are the last.
    fn copy(&self, from: usize, max: usize) -> (Lent, bool) {
        let live = self.actors.len();
        let actors: Vec<_> = self
            .actors
            .iter()
            .skip(from)
            .take(max)
            .map(|(k, a)| (k.clone(), a.clone()))
            .collect();
        let rest = max - actors.len();
        let packed: Vec<_> = self
            .packed
            .iter()
            .skip(from.saturating_sub(live))
            .take(rest)
            .map(|(k, p)| (k.clone(), p.clone()))
            .collect();
        let end = from + actors.len() + packed.len() >= self.hosted();
        let lent = Lent {
            actors,
            packed,
            ..Lent::default()
        };
        (lent, end)
    }

    async fn load(&mut self, actor: &ActorRef) -> Result<(), Error> {
        if self.actors.contains_key(actor) {
            return Ok(());
        }
        if let Some(p) = self.packed.remove(actor) {
            match p.unpack() {
                Ok(a) => {
                    self.resend(actor, &a.snapshot.outbox);
                    self.actors.insert(actor.clone(), a);
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
        fold(
            &kind,
            actor,
            &mut snapshot.state,
            unfolded,
            self.ctx.max_state_bytes,
        )
        .await?;
        self.resend(actor, &snapshot.outbox);
        self.actors.insert(
            actor.clone(),
            Actor {
                kind,
                marked: snapshot.has_pending(),
                snapshot,
                version,
                seq,
                base,
                last_used: Instant::now(),
            },
        );
        self.ctx.metrics.actors.inc();
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
        })
    }

    /// Serves a request: at once, or by starting its append; behind the actor's append in flight.
    /// A request whose caller stopped waiting is dropped here, counted, before any work.
    async fn dispatch(&mut self, (req, tx): Pending, attempt: u8) {
        if req.deadline.is_some_and(|d| Instant::now() >= d) {
            self.ctx.metrics.failure(Failure::Expired);
            let e = ErrorReply::unavailable("the caller's deadline passed before it was served", 0);
            let _ = tx.send(Reply::error(e));
            return;
        }
        if let Some(waiting) = self.busy.get_mut(&req.actor) {
            waiting.push_back((req, tx));
            return;
        }
        match self.prepare(&req).await {
            Ok(Step::Reply(reply)) => {
                let _ = tx.send(reply);
            }
            Ok(Step::Append {
                subject,
                expected,
                mut record,
                next,
                clear_marker,
            }) => {
                self.busy.insert(req.actor.clone(), VecDeque::new());
                let shared = self.ctx.clone();
                let shard = self.shard;
                self.inflight.push(Box::pin(async move {
                    let mut done = Appended::new(req, tx, attempt, expected);
                    done.result = shared.store.append(&subject, expected, &record).await;
                    if clear_marker
                        && done.result.is_ok()
                        && shared
                            .store
                            .clear_pending(shard, &done.req.actor)
                            .await
                            .is_ok()
                    {
                        done.marked = Some(false);
                    }
                    record.events = Vec::new();
                    done.record = Some(record);
                    done.next = next;
                    done
                }));
            }
            Ok(Step::Decide(d)) => {
                self.busy.insert(req.actor.clone(), VecDeque::new());
                let ctx = self.ctx.clone();
                self.inflight
                    .push(Box::pin(decide_and_append(ctx, *d, req, tx, attempt)));
            }
            Err(e) => {
                self.ctx.metrics.failure(e.failure());
                if matches!(e, Error::Nats(_) | Error::Corrupt(_)) {
                    self.drop_actor(&req.actor);
                }
                let _ = tx.send(Reply::error(e.to_reply()));
            }
        }
    }

    /// An append finished: answer, then serve what waited for that actor, in order.
    async fn complete(&mut self, done: Appended) {
        let Appended {
            req,
            tx,
            attempt,
            result,
            next,
            record,
            reply,
            marked,
        } = done;
        if let (Some(m), Some(a)) = (marked, self.actors.get_mut(&req.actor)) {
            a.marked = m;
        }
        let mut retry = None;
        if result.is_ok() {
            self.ctx.health.set_store_full(None);
        }
        match result {
            Ok(seq) => {
                let reply = match self.actors.get_mut(&req.actor) {
                    Some(a) => {
                        if let Some(record) = record {
                            a.snapshot.state = next;
                            a.snapshot.absorb(&record, seq);
                            if !record.send.is_empty() {
                                let _ = self.ctx.outbox.send(Delivery {
                                    from: req.actor.clone(),
                                    sends: record.send,
                                });
                            }
                            a.version = record.version;
                            a.seq = seq;
                            if record.snapshot.is_some() {
                                a.base = seq;
                            }
                        }
                        self.ok(&self.actors[&req.actor], reply)
                    }
                    None => Reply::error(ErrorReply::new(
                        ErrorCode::Internal,
                        "actor vanished during append",
                    )),
                };
                let _ = tx.send(reply);
            }
            // The command is in the log already (a retry older than the ids the actor remembers):
            // not applied again; the caller gets the state as the log has it.
            Err(Error::Duplicate(at)) => {
                self.ctx.metrics.failure(Failure::Duplicate);
                tracing::info!(command = ?req.id, at, "a retry JetStream recognised: answered from the log");
                self.drop_actor(&req.actor);
                let subject = self.ctx.store.subject(self.shard, &req.actor);
                // The reply the command's first decide gave is in its record.
                let first = match self.ctx.store.record_at(at, &subject).await {
                    Ok(r) if r.cmd == req.id => r.reply,
                    _ => None,
                };
                let reply = match self.load(&req.actor).await {
                    Ok(()) => match self.actors.get(&req.actor) {
                        Some(a) => self.ok(a, first),
                        None => Reply::error(ErrorReply::new(
                            ErrorCode::Internal,
                            "actor vanished after load",
                        )),
                    },
                    Err(e) => Reply::error(e.to_reply()),
                };
                let _ = tx.send(reply);
            }
            Err(Error::StoreFull(why)) => {
                self.ctx.metrics.failure(Failure::StoreFull);
                tracing::warn!(%why, "the event stream is full: commands are refused");
                self.ctx
                    .health
                    .set_store_full(Some(format!("the event stream is full: {why}")));
                let e = Error::StoreFull(why);
                let _ = tx.send(Reply::error(e.to_reply()));
            }
            // The app kind refused the command: nothing appended; not a failure.
            Err(Error::Rejected(why)) => {
                let _ = tx.send(Reply::error(ErrorReply::new(ErrorCode::Rejected, why)));
            }
            // Another node wrote first: reload from the log and decide again, once.
            Err(Error::Fenced(_)) if attempt == 0 => {
                self.drop_actor(&req.actor);
                retry = Some((req.clone(), tx));
            }
            Err(e) => {
                self.ctx.metrics.failure(e.failure());
                if matches!(e, Error::Fenced(_) | Error::Nats(_) | Error::Corrupt(_)) {
                    self.drop_actor(&req.actor);
                }
                let _ = tx.send(Reply::error(e.to_reply()));
            }
        }
        let waiting = self.busy.remove(&req.actor).unwrap_or_default();
        if let Some(p) = retry {
            self.dispatch(p, 1).await;
        }
        for p in waiting {
            self.dispatch(p, 0).await;
        }
    }

    /// Finishes every append in flight (and what waits behind them).
    async fn drain(&mut self) {
        while let Some(done) = self.inflight.next().await {
            self.complete(done).await;
        }
    }

    fn drop_actor(&mut self, actor: &ActorRef) {
        if self.actors.remove(actor).is_some() || self.packed.remove(actor).is_some() {
            self.ctx.metrics.actors.dec();
        }
    }

    /// Loads the actor and decides: a reply now, or a record to append.
    async fn prepare(&mut self, req: &Request) -> Result<Step, Error> {
        self.load(&req.actor).await?;
        let subject = self.ctx.store.subject(self.shard, &req.actor);
        let Some(a) = self.actors.get_mut(&req.actor) else {
            return Err(Error::Internal("actor vanished after load".into()));
        };
        a.last_used = Instant::now();
        let command = match &req.op {
            Op::Read => return Ok(Step::Reply(self.ok(&self.actors[&req.actor], None))),
            Op::Release { ids } => return Ok(self.release(req, ids, subject)),
            Op::Command { command } => command,
        };
        if let Some(id) = &req.id
            && is_send_id(id)
            && let Some(applied) = a.snapshot.inbox.iter().find(|i| &i.id == id)
        {
            // A send applied here before (its sender has not released it yet): the same answer.
            let reply = applied.reply.clone();
            return Ok(Step::Reply(self.ok(&self.actors[&req.actor], reply)));
        }
        if let Some(id) = &req.id
            && let Some(at) = a.snapshot.recent_seq(id)
        {
            // A retry of a command already in the log: answered with the reply its record holds,
            // not applied twice.
            let reply = match (&a.kind, at) {
                (Kind::App(_), 1..) => self.ctx.store.record_at(at, &subject).await?.reply,
                _ => None,
            };
            return Ok(Step::Reply(self.ok(&self.actors[&req.actor], reply)));
        }
        if let Some(id) = &req.delivered
            && !a
                .snapshot
                .outbox
                .iter()
                .any(|o| &o.id == id && !o.delivered)
        {
            // The reply to a send already recorded (the send was delivered twice).
            return Ok(Step::Reply(self.ok(&self.actors[&req.actor], None)));
        }
        let every = a.kind.snapshot_every();
        let version = a.version + 1;
        let prev = snapshot_due(version, every).then(|| a.snapshot.clone_without_state());
        let behaviour = match &a.kind {
            Kind::Local(b) => b,
            Kind::App(kind) => {
                return Ok(Step::Decide(Box::new(Deciding {
                    extras: a.snapshot.extras_bytes(),
                    kind: kind.clone(),
                    subject,
                    expected: a.seq,
                    state: a.snapshot.state.clone(),
                    version: a.version,
                    base: a.base,
                    prev,
                    shard: self.shard,
                    marked: a.marked,
                })));
            }
        };
        let events = match behaviour.decide(&a.snapshot.state, command) {
            Ok(events) => events,
            Err(why) => {
                return Ok(Step::Reply(Reply::error(ErrorReply::new(
                    ErrorCode::Rejected,
                    why,
                ))));
            }
        };
        // The next state only: the recent command ids (up to 64 strings) are updated in place once
        // the append lands, and copied only into the records that carry a snapshot.
        let mut next = a.snapshot.state.clone();
        for e in &events {
            behaviour.apply(&mut next, e);
        }
        let extras = a.snapshot.extras_bytes() + inbound_bytes(req, None);
        if let Some(e) = over_limit(json_size(&next), extras, self.ctx.max_state_bytes) {
            // Refused before anything is appended: a state this large would not fit a reply, a
            // snapshot record or a transfer chunk.
            return Ok(Step::Reply(Reply::error(e)));
        }
        let mut record = Record::new(req.id.clone(), events, version, a.base);
        record.snapshot = prev.map(|p| p.after(&record, &next));
        Ok(Step::Append {
            subject,
            expected: a.seq,
            record: Box::new(record),
            next,
            clear_marker: false,
        })
    }

    /// A release of send ids: the ones this actor holds (applied, or delivered and owed a
    /// release) are forgotten by a record; the rest were forgotten before.
    fn release(&self, req: &Request, ids: &[String], subject: String) -> Step {
        let a = &self.actors[&req.actor];
        let held: Vec<String> = ids
            .iter()
            .filter(|id| {
                a.snapshot.inbox.iter().any(|i| &i.id == *id)
                    || a.snapshot
                        .outbox
                        .iter()
                        .any(|o| &o.id == *id && o.delivered)
            })
            .cloned()
            .collect();
        if held.is_empty() {
            return Step::Reply(self.ok(a, None));
        }
        let version = a.version + 1;
        let mut record = Record::new(None, Vec::new(), version, a.base);
        record.released = held;
        let next = a.snapshot.state.clone();
        if snapshot_due(version, a.kind.snapshot_every()) {
            record.snapshot = Some(a.snapshot.clone_without_state().after(&record, &next));
        }
        let clear_marker = a.marked
            && !a
                .snapshot
                .outbox
                .iter()
                .any(|o| !record.released.contains(&o.id));
        Step::Append {
            subject,
            expected: a.seq,
            record: Box::new(record),
            next,
            clear_marker,
        }
    }

    /// Loads `actor` for its pending work ([`Cmd::Touch`]); a marker with nothing behind it goes.
    async fn touch(&mut self, actor: &ActorRef) {
        if self.busy.contains_key(actor) {
            return;
        }
        if let Err(e) = self.load(actor).await {
            tracing::warn!(actor = %actor.id, kind = %actor.kind, error = %e, "could not load an actor with pending work");
            return;
        }
        let Some(a) = self.actors.get(actor) else {
            return;
        };
        if a.snapshot.has_pending() {
            return;
        }
        // Cleared as a step of the actor, so a record that sends meanwhile marks it after this.
        self.busy.insert(actor.clone(), VecDeque::new());
        let (ctx, shard, expected) = (self.ctx.clone(), self.shard, a.seq);
        let req = Request::new(actor.clone(), Op::Read, None);
        let (tx, _) = oneshot::channel();
        self.inflight.push(Box::pin(async move {
            let mut done = Appended::new(req, tx, 0, expected);
            if ctx
                .store
                .clear_pending(shard, &done.req.actor)
                .await
                .is_ok()
            {
                done.marked = Some(false);
            }
            done
        }));
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

/// An app kind's command, off the worker: the app decides, the answer is checked (shape by the
/// protocol, size here), the record is appended. Nothing is appended unless all of that holds.
async fn decide_and_append(
    ctx: Arc<HostContext>,
    d: Deciding,
    req: Request,
    tx: oneshot::Sender<Reply>,
    attempt: u8,
) -> Appended {
    let mut done = Appended::new(req, tx, attempt, d.expected);
    let Op::Command { command } = &done.req.op else {
        done.result = Err(Error::Internal("a read reached the decide call".into()));
        return done;
    };
    let call = DecideCall {
        kind: &done.req.actor.kind,
        id: &done.req.actor.id,
        version: d.version,
        state: &d.state,
        command,
        command_id: done.req.id.as_deref(),
    };
    let (events, state, reply, send) = match d.kind.app.decide(&call).await {
        Ok(Decision::Accept {
            events,
            state,
            reply,
            send,
        }) => (events, state, reply, send),
        // The reply to a send is recorded even when the app refuses it: the send is delivered.
        Ok(Decision::Reject(_)) if done.req.delivered.is_some() => {
            (Vec::new(), d.state.clone(), None, Vec::new())
        }
        Ok(Decision::Reject(why)) => {
            done.result = Err(Error::Rejected(why));
            return done;
        }
        Err(e) => {
            done.result = Err(e);
            return done;
        }
    };
    done.reply = reply;
    let delivered: Vec<String> = done.req.delivered.iter().cloned().collect();
    let (events, state, send) = if delivered.is_empty() {
        (events, state, send)
    } else {
        let sent: usize = send.iter().map(|s| json_size(&s.command) + 160).sum();
        match over_limit(json_size(&state), d.extras + sent, ctx.max_state_bytes) {
            None => (events, state, send),
            Some(e) => {
                // The answer to a send is recorded whatever: what the app decided on it would
                // leave the actor over its limit, so it is dropped, as if the app had refused it.
                tracing::warn!(actor = %done.req.actor.id, why = %e.message, "the decision on a send's answer is dropped: over the state limit");
                (Vec::new(), d.state.clone(), Vec::new())
            }
        }
    };
    if events.is_empty() && send.is_empty() && delivered.is_empty() {
        // Nothing to record: the state stays as it was, whatever the answer says.
        return done;
    }
    let size = json_size(&state);
    if size > ctx.max_state_bytes {
        done.result = Err(d.kind.app.fault(
            AppFault::TooLarge,
            format!(
                "decide: the state would be {size} bytes, over the limit of {} bytes",
                ctx.max_state_bytes
            ),
        ));
        return done;
    }
    let sent: usize = send.iter().map(|s| json_size(&s.command) + 160).sum();
    let extras = d.extras + sent + inbound_bytes(&done.req, done.reply.as_ref());
    if let Some(e) = over_limit(size, extras, ctx.max_state_bytes) {
        done.result = Err(Error::TooLarge(e.message));
        return done;
    }
    let version = d.version + 1;
    let mut record = Record::new(done.req.id.clone(), events, version, d.base);
    record.send = send
        .into_iter()
        .enumerate()
        .map(|(i, s)| Outgoing {
            id: send_id(&done.req.actor, version, i),
            actor: s.actor,
            command: s.command,
            delivered: false,
        })
        .collect();
    record.delivered = delivered;
    // The answer is kept with the record: a repeated delivery of a send is answered the same
    // (always kept), and so is a client's retry when the reply is small (a large one would make
    // the record, not only the reply, larger than the server takes).
    let keep = match (&done.req.id, &done.reply) {
        (Some(id), Some(_)) if is_send_id(id) => true,
        (Some(_), Some(r)) => json_size(r) <= KEPT_REPLY_BYTES,
        _ => false,
    };
    if keep {
        record.reply.clone_from(&done.reply);
    }
    record.snapshot = d.prev.map(|p| p.after(&record, &state));
    if !record.send.is_empty() && !d.marked {
        // Marked before the record lands: whoever serves the shard next finds the sends.
        if let Err(e) = ctx.store.mark_pending(d.shard, &done.req.actor).await {
            done.result = Err(e);
            return done;
        }
        done.marked = Some(true);
    }
    done.result = ctx.store.append(&d.subject, d.expected, &record).await;
    record.events = Vec::new();
    done.record = Some(Box::new(record));
    done.next = state;
    done
}

/// Largest reply (JSON bytes) of a client's command kept in its record for the command's retries.
pub const KEPT_REPLY_BYTES: usize = 16 * 1024;

/// True when record `version` carries the state: every `every`th, and the first, so that every
/// later record points at a snapshot and a replay reads from there, never from the stream's start
/// (which would make the server scan the log up to the actor's first record).
fn snapshot_due(version: u64, every: u64) -> bool {
    version == 1 || version.is_multiple_of(every)
}

/// Bytes a command adds to what its actor keeps besides the state: a send's id and reply, kept
/// until its sender releases it.
fn inbound_bytes(req: &Request, reply: Option<&serde_json::Value>) -> usize {
    match &req.id {
        Some(id) if is_send_id(id) => id.len() + 32 + reply.map_or(0, json_size),
        _ => 0,
    }
}

/// The `tooLarge` refusal of a decision whose state and extras (recent command ids, outbox,
/// inbox) together exceed `limit`: all of it travels in snapshot records and transfer chunks.
fn over_limit(state: usize, extras: usize, limit: usize) -> Option<ErrorReply> {
    (state + extras > limit).then(|| {
        ErrorReply::new(
            ErrorCode::TooLarge,
            format!(
                "the actor would keep {} bytes ({state} of state, {extras} of recent command ids, undelivered sends and unreleased received ones), over the limit of {limit} bytes",
                state + extras
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aether_core::protocol::decode_transfer;

    fn actor(id: &str, seq: u64) -> (ActorRef, Actor) {
        let kind = Registry::builtin()
            .get("counter")
            .cloned()
            .expect("built-in counter");
        let a = Actor {
            kind,
            marked: false,
            snapshot: Snapshot::initial(serde_json::json!({ "value": seq })),
            version: seq,
            seq,
            base: 0,
            last_used: Instant::now(),
        };
        (ActorRef::new("counter", id), a)
    }

    fn sent(lent: &mut Lent) -> Vec<(String, u64, bool)> {
        let mut w = TransferWriter::new(1, 1, 0, "app-0", 0, 4096).expect("writer");
        assert!(
            lent.fill(&mut w, usize::MAX, usize::MAX),
            "all in one chunk"
        );
        let t = decode_transfer(&w.finish(true, false)).expect("decodes");
        t.actors
            .into_iter()
            .map(|a| (a.actor.id, a.seq, a.state.0.is_empty()))
            .collect()
    }

    /// After a copy round the pause sends drops first (copied actors not held any more), then the
    /// actors whose sequence moved on or that were not copied; the rest stay lent, unsent.
    #[test]
    fn the_pause_after_a_copy_sends_only_what_changed_and_drops_what_went() {
        let copy = Lent {
            actors: vec![actor("same", 3), actor("written", 4), actor("gone", 7)],
            ..Lent::default()
        };
        let mut lent = Lent {
            actors: vec![actor("written", 5), actor("same", 3), actor("new", 1)],
            ..Lent::default()
        };
        assert_eq!(lent.changed_since(copy.sequences()), (2, 1));
        let mut got = sent(&mut lent);
        got[1..].sort();
        assert_eq!(
            got,
            vec![
                ("gone".to_owned(), 0, true),
                ("new".to_owned(), 1, false),
                ("written".to_owned(), 5, false),
            ]
        );
        assert_eq!(
            lent.len(),
            3,
            "every actor stays lent, to go back on a rollback"
        );
        // Without a copy round, all of them go.
        let mut all = Lent {
            actors: vec![actor("a", 1), actor("b", 2)],
            ..Lent::default()
        };
        assert_eq!(sent(&mut all).len(), 2);
    }
}
