//! Delivery of actors' sends, exactly once in effect with no time window. An app kind's decision
//! may send commands to other actors; they are written in the sender's record (its outbox) and
//! delivered only after it landed, here, through normal routing, with a command id made from the
//! sender, the record and the index (`aether_core::protocol::app::send_id`). Each send goes
//! through four steps, one send of a sender at a time, in the order the sender recorded them:
//!
//! 1. delivered to the receiver, which records it and keeps its id and reply (its inbox): a
//!    repeated delivery gets the same reply and is not applied again, however late it comes;
//! 2. the reply recorded at the sender (a `$reply` decide call): the send is marked delivered;
//! 3. released at the receiver: it forgets the id (a record);
//! 4. released at the sender: it forgets the send (a record), and with nothing else pending its
//!    pending-work marker goes.
//!
//! Whoever loads the sender (after a crash, a move, a passivation) goes on from where its log
//! says; a node that takes a shard loads the actors its pending-work markers name
//! ([`resume_pending`]), so no send waits for a client to touch its sender.

use crate::host::{Cmd, Delivery};
use crate::ownership::{MAX_HOPS, Route};
use crate::shared::{Shared, lock};
use crate::store::Outgoing;
use aether_core::protocol::app::{REPLY_KEY, reply_id};
use aether_core::protocol::{ActorRef, ErrorCode, ErrorReply, Op, Outcome, Reply, Request};
use serde_json::json;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::Instrument;

/// Longest wait between two attempts at a delivery.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long one attempt at a step waits for its answer (its `timeoutMs`): a delivery still on its
/// way after that is dropped unapplied by the receiver's node.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Most senders whose sends are being delivered at once on one node; the others wait their turn.
pub const MAX_SENDERS: usize = 256;
/// How often a node looks for shards it newly serves, to resume their pending work.
pub const RESUME_EVERY: Duration = Duration::from_millis(250);

type Queues = Arc<Mutex<HashMap<ActorRef, VecDeque<Outgoing>>>>;

/// Delivers every send handed over by the shard workers, one task per sender, until the node
/// stops (what is not delivered by then stays in the senders' outboxes).
pub async fn run(shared: Arc<Shared>, mut deliveries: mpsc::UnboundedReceiver<Delivery>) {
    let queues: Queues = Arc::default();
    let slots = Arc::new(Semaphore::new(MAX_SENDERS));
    while let Some(d) = deliveries.recv().await {
        let start = {
            let mut q = lock(&queues);
            match q.get_mut(&d.from) {
                Some(queue) => {
                    for send in d.sends {
                        if !queue.iter().any(|o| o.id == send.id) {
                            queue.push_back(send);
                        }
                    }
                    false
                }
                None => {
                    q.insert(d.from.clone(), d.sends.into());
                    true
                }
            }
        };
        if start {
            let (shared, queues, slots, from) =
                (shared.clone(), queues.clone(), slots.clone(), d.from);
            shared.tasks.clone().spawn(async move {
                let Ok(_slot) = slots.acquire_owned().await else {
                    return;
                };
                // A sender at work counts against `--max-inflight` like a request: it waits
                // while the node is at its bound (requests are answered `overloaded` instead).
                let Ok(_inflight) = shared.inflight.clone().acquire_owned().await else {
                    return;
                };
                sender(&shared, &queues, from).await;
            });
        }
    }
}

/// Works through one sender's queue, a send at a time; forgets the queue when it is empty or the
/// sender is no longer served here (its new owner goes on).
async fn sender(shared: &Arc<Shared>, queues: &Queues, from: ActorRef) {
    loop {
        let Some(send) = lock(queues).get(&from).and_then(|q| q.front().cloned()) else {
            lock(queues).remove(&from);
            return;
        };
        let finished = one(shared, &from, &send).instrument(send_span(&send)).await;
        let mut q = lock(queues);
        match q.get_mut(&from) {
            Some(queue) if finished => {
                queue.retain(|o| o.id != send.id);
            }
            _ => {
                q.remove(&from);
                return;
            }
        }
    }
}

/// The span of one send's steps (traces on): a child of the decision that sent it, so the
/// receiver's request and the sender's `$reply` join that trace.
fn send_span(send: &Outgoing) -> tracing::Span {
    aether_nats::telemetry::child_of(
        send.trace.as_deref(),
        || tracing::info_span!("send", id = %send.id, to = %send.actor.kind),
    )
}

/// The steps of one send from where the sender's outbox says it is; false when they cannot go on
/// here (the node stops, the sender is not served here any more).
async fn one(shared: &Arc<Shared>, from: &ActorRef, send: &Outgoing) -> bool {
    if !send.delivered {
        let Some(outcome) = deliver(shared, from, send).await else {
            return false;
        };
        let command = json!({ REPLY_KEY: {
            "id": send.id,
            "to": send.actor,
            "command": send.command,
            "outcome": outcome,
        }});
        let mut back = Request::new(
            from.clone(),
            Op::Command { command },
            Some(reply_id(&send.id)),
        );
        back.delivered = Some(send.id.clone());
        // Only at the sender here: if it moved meanwhile, its new owner sends again and gets the
        // same reply. Retried until recorded (an app that is down answers later).
        if !recorded(shared, back).await {
            return false;
        }
    }
    let release = release_of(&send.actor, &send.id);
    // A receiver whose kind no node hosts never applied it: nothing to release.
    if shared.host.registry.get(&send.actor.kind).is_some()
        && until_answered(shared, || async {
            Some(shared.dispatch(timed(release.clone())).await.into_reply())
        })
        .await
        .is_none()
    {
        return false;
    }
    recorded(shared, release_of(from, &send.id)).await
}

/// A release of send `id` at `actor` (steps 3 and 4).
fn release_of(actor: &ActorRef, id: &str) -> Request {
    let ids = vec![id.to_owned()];
    Request::new(actor.clone(), Op::Release { ids }, None)
}

/// Step 1: the receiver's answer, as a client would get it. Each attempt only while this node
/// serves the sender: once its new owner goes on (and may release the send), no attempt of ours
/// is left to arrive later.
async fn deliver(shared: &Arc<Shared>, from: &ActorRef, send: &Outgoing) -> Option<Outcome> {
    let req = Request::new(
        send.actor.clone(),
        Op::Command {
            command: send.command.clone(),
        },
        Some(send.id.clone()),
    );
    // The receiver's owner judges its kind: `unknownKind` from it is a final answer.
    until_answered(shared, || async {
        if !shared.serves_actor(from) {
            return None;
        }
        Some(shared.dispatch(timed(req.clone())).await.into_reply())
    })
    .await
}

/// `req` recorded by the sender's worker here, retried (with backoff) until it is; false when
/// the sender is not served here or the node stops.
async fn recorded(shared: &Arc<Shared>, req: Request) -> bool {
    let mut backoff = Duration::from_millis(20);
    loop {
        if shared.tasks.is_closed() {
            return false;
        }
        match shared.dispatch_local(timed(req.clone())).await {
            None => return false,
            Some(Reply {
                outcome: Outcome::Ok(_),
                ..
            }) => return true,
            Some(Reply {
                outcome: Outcome::Error(e),
                ..
            }) => {
                tracing::debug!(error = %e.message, "recording a send's step failed: retried");
                let hint = Duration::from_millis(e.retry_after_ms.unwrap_or(0));
                tokio::time::sleep(backoff.max(hint).min(MAX_BACKOFF)).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// `req` with a deadline: an attempt that is still on its way when its sender retries is dropped.
fn timed(mut req: Request) -> Request {
    req.timeout_ms = Some(u64::try_from(ATTEMPT_TIMEOUT.as_millis()).unwrap_or(u64::MAX));
    req.deadline = Some(Instant::now() + ATTEMPT_TIMEOUT);
    req
}

/// Tries until the answer is not one to retry (`redirect`, `unavailable`, `staleEpoch`,
/// `internal`), `attempt` gives up (`None`), or the node stops.
async fn until_answered<F, Fut>(shared: &Shared, mut attempt: F) -> Option<Outcome>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<Reply>>,
{
    let mut backoff = Duration::from_millis(20);
    loop {
        if shared.tasks.is_closed() {
            return None;
        }
        let reply = attempt().await?;
        match reply.outcome {
            Outcome::Error(e)
                if matches!(
                    e.code,
                    ErrorCode::Redirect
                        | ErrorCode::Unavailable
                        | ErrorCode::StaleEpoch
                        | ErrorCode::Internal
                ) =>
            {
                let hint = Duration::from_millis(e.retry_after_ms.unwrap_or(0));
                tokio::time::sleep(backoff.max(hint).min(MAX_BACKOFF)).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            outcome => return Some(outcome),
        }
    }
}

/// Resumes the pending work of every shard this node starts serving (by a plan, a move, a
/// restart), or whose worker stopped while it stays served: what its pending-work markers say goes
/// into the shard's index, and each actor is loaded when its look comes (at once for sends, which
/// hands them to [`run`]; at its earliest timer otherwise), not before.
/// Checks every [`RESUME_EVERY`]; a shard it could not read is tried again.
pub async fn resume_pending(shared: Arc<Shared>) {
    let mut resumed: HashSet<u32> = HashSet::new();
    let mut tick = tokio::time::interval(RESUME_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if shared.tasks.is_closed() {
            return;
        }
        let fresh: HashSet<u32> = {
            let mut st = shared.state();
            let shards = st.own.plan().map_or(0, |p| p.shards);
            let served: HashSet<u32> = (0..shards).filter(|&s| st.own.serves(s)).collect();
            // A shard whose worker stopped lost what its worker held (timer index, sends in
            // flight): resumed again if it is still served.
            let stopped = st.take_stopped();
            resumed.retain(|s| served.contains(s) && !stopped.contains(s));
            served.difference(&resumed).copied().collect()
        };
        if fresh.is_empty() {
            continue;
        }
        let found = shared.host.store.pending(
            |s| fresh.contains(&s),
            |batch| {
                let mut by_shard: HashMap<u32, Vec<(ActorRef, u64)>> = HashMap::new();
                for (shard, actor, look) in batch {
                    by_shard.entry(shard).or_default().push((actor, look));
                }
                let mut st = shared.state();
                for (shard, marked) in by_shard {
                    if st.own.serves(shard) {
                        let _ = st.worker(&shared.host, shard).tx.send(Cmd::Look(marked));
                    }
                }
            },
        );
        match found.await {
            Ok(actors) => {
                if actors > 0 {
                    tracing::info!(actors, shards = fresh.len(), "indexed pending work");
                }
                resumed.extend(fresh);
            }
            Err(e) => tracing::warn!(error = %e, "could not read the pending-work markers"),
        }
    }
}

impl Shared {
    /// True while this node serves `actor`.
    #[must_use]
    pub fn serves_actor(&self, actor: &ActorRef) -> bool {
        matches!(
            self.state().own.route(&actor.id, MAX_HOPS),
            Route::Local { .. }
        )
    }

    /// Serves `req` only if its actor is this node's: `None` when another node owns it.
    pub async fn dispatch_local(self: &Arc<Self>, req: Request) -> Option<Reply> {
        let worker = {
            let mut st = self.state();
            match st.own.route(&req.actor.id, MAX_HOPS) {
                Route::Local { shard } => st.worker(&self.host, shard),
                Route::Forward { .. } | Route::Redirect { .. } | Route::Arriving { .. } => {
                    return None;
                }
                other => {
                    return Some(Reply::error(other.error().unwrap_or_else(|| {
                        ErrorReply::unavailable("no route for the reply", 100)
                    })));
                }
            }
        };
        let (tx, rx) = oneshot::channel();
        worker.tx.send(Cmd::Request((req, tx))).ok()?;
        rx.await.ok()
    }
}
