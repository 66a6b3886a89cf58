//! A request on its worker: a read served from memory, a command decided (in process, or by the
//! app container off the worker) and its record appended, fenced by the actor's sequence; the
//! reply once the append landed, and the limits a decision must keep.

use super::append::{
    Appended, append_marked, inbound_bytes, malformed_timers, over_limit, snapshot_due,
};
use super::deciding::{Deciding, decide_and_append};
use super::marker::{self, Marker, Writes};
use super::timers::{FiringRequest, fire, fired_ticks, unfire};
use super::{Delivery, Pending, Worker};
use crate::behaviour::{Decided, Kind};
use crate::error::Error;
use crate::metrics::Failure;
use crate::store::{Record, compact_small};
use aether_core::protocol::app::is_send_id;
use aether_core::protocol::{ActorRef, ErrorCode, ErrorReply, Op, Reply, Request, SharedJson};
use aether_core::timers;
use futures::StreamExt;
use std::collections::VecDeque;
use std::time::Instant;
use tokio::sync::oneshot;

/// What a request needs after the decision.
pub(super) enum Step {
    Reply(Reply),
    Append {
        subject: String,
        expected: u64,
        record: Box<Record>,
        next: SharedJson,
        /// The marker's writes around the append.
        marker: Writes,
    },
    /// An app kind's command: the app decides, then the record is appended, off the worker.
    Decide(Box<Deciding>),
}

impl Worker {
    /// Serves a request: at once, or by starting its append; behind the actor's append in flight.
    /// A request whose caller stopped waiting is dropped here, counted, before any work.
    pub(super) async fn dispatch(&mut self, (mut req, tx): Pending, attempt: u8) {
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
        match self.prepare(&mut req).await {
            Ok(Step::Reply(reply)) => {
                let _ = tx.send(reply);
            }
            Ok(Step::Append {
                subject,
                expected,
                mut record,
                next,
                marker,
            }) => {
                self.busy.insert(req.actor.clone(), VecDeque::new());
                let shared = self.ctx.clone();
                let (shard, had) = (self.shard, self.marker_of(&req.actor));
                self.inflight.push(Box::pin(async move {
                    let mut done = Appended::new(req, tx, attempt, expected);
                    append_marked(
                        &shared,
                        shard,
                        had,
                        marker,
                        (&subject, expected),
                        &record,
                        &mut done,
                    )
                    .await;
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
    pub(super) async fn complete(&mut self, done: Appended) {
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
            a.marker = m;
        }
        let mut retry = None;
        if result.is_ok() {
            self.ctx.health.set_store_full(None);
        }
        match result {
            Ok(seq) => {
                let mut reindex = false;
                let reply = match self.actors.get_mut(&req.actor) {
                    Some(a) => {
                        if let Some(record) = record {
                            reindex = !record.timers.is_empty() || !record.cancel.is_empty();
                            a.snapshot.state = next;
                            if let Some(id) = a.snapshot.absorb(&record, seq)
                                && matches!(a.kind, Kind::App(_))
                            {
                                let window = self.ctx.store.duplicate_window();
                                a.forgotten.get_or_insert_default().forgot(
                                    &id,
                                    Instant::now(),
                                    window,
                                );
                            }
                            if let Some(t) = fired_ticks(&req) {
                                self.ctx.metrics.timer_firings.inc();
                                self.ctx.metrics.timer_missed.inc_by(t);
                            }
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
                if reindex {
                    self.index_timers(&req.actor);
                }
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
                // A firing is decided again from the actor's timers as the log has them.
                retry = Some((unfire(req.clone()), tx));
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
    pub(super) async fn drain(&mut self) {
        while let Some(done) = self.inflight.next().await {
            self.complete(done).await;
        }
    }

    pub(super) fn drop_actor(&mut self, actor: &ActorRef) {
        if self.actors.remove(actor).is_some() || self.packed.remove(actor).is_some() {
            self.ctx.metrics.actors.dec();
        }
    }

    /// Loads the actor and decides: a reply now, or a record to append.
    pub(super) async fn prepare(&mut self, req: &mut Request) -> Result<Step, Error> {
        self.load(&req.actor).await?;
        let subject = self.ctx.store.subject(self.shard, &req.actor);
        let Some(a) = self.actors.get_mut(&req.actor) else {
            return Err(Error::Internal("actor vanished after load".into()));
        };
        a.last_used = Instant::now();
        let now = timers::epoch_ms(std::time::SystemTime::now());
        let fired = match fire(req, &a.snapshot.timers, now) {
            FiringRequest::NotTimer => None,
            // Fired already, cancelled or replaced: the index was behind the actor.
            FiringRequest::NotDue => {
                self.index_timers(&req.actor);
                return Ok(Step::Reply(self.ok(&self.actors[&req.actor], None)));
            }
            FiringRequest::Due(t, f) => Some((t, f)),
        };
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
        // An app kind's command the actor does not remember, but JetStream's duplicate window may:
        // asked of the stream before the app is called.
        let ask_stream = req.id.as_deref().is_some_and(|id| {
            !is_send_id(id)
                && a.forgotten
                    .as_ref()
                    .is_some_and(|f| f.may_hold(id, Instant::now()))
        });
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
                    marker: a.marker,
                    outbox: !a.snapshot.outbox.is_empty(),
                    timers: a.snapshot.timers.clone(),
                    fired,
                    now,
                    ask_stream,
                })));
            }
        };
        let decided = match behaviour.decide_with_timers(&a.snapshot.state, command) {
            Ok(d) => d,
            // A firing refused still moves its timer on (else it would fire for ever).
            Err(_) if fired.is_some() => Decided::default(),
            Err(why) => {
                return Ok(Step::Reply(Reply::error(ErrorReply::new(
                    ErrorCode::Rejected,
                    why,
                ))));
            }
        };
        let fired_ref = fired.as_ref().map(|(t, f)| (t, f));
        let (set, cancel) = match timers::changes(
            &a.snapshot.timers,
            fired_ref,
            &decided.timers,
            decided.cancel,
            now,
        ) {
            Ok(c) => c,
            Err(why) => return Ok(Step::Reply(Reply::error(malformed_timers(why)))),
        };
        let events = decided.events;
        // The next state only: the recent command ids (up to 64 strings) are updated in place once
        // the append lands, and copied only into the records that carry a snapshot.
        // Shared with the actor until an event changes it: a command without events copies nothing.
        let mut next = a.snapshot.state.clone();
        for e in &events {
            behaviour.apply(next.make_mut(), e);
        }
        let extras = a.snapshot.extras_bytes() + inbound_bytes(req, None);
        if let Some(e) = over_limit(compact_small(&mut next), extras, self.ctx.max_state_bytes) {
            // Refused before anything is appended: a state this large would not fit a reply, a
            // snapshot record or a transfer chunk.
            return Ok(Step::Reply(Reply::error(e)));
        }
        let mut record = Record::new(req.id.clone(), events, version, a.base);
        record.timers = set;
        record.cancel = cancel;
        record.snapshot = prev.map(|p| p.after(&record, &next));
        let outbox = !a.snapshot.outbox.is_empty();
        Ok(Step::Append {
            subject,
            expected: a.seq,
            marker: marker::writes(
                a.marker,
                marker::look(outbox, &a.snapshot.timers),
                marker::look_after(outbox, &a.snapshot.timers, &record),
                now,
            ),
            record: Box::new(record),
            next,
        })
    }

    /// A release of send ids: the ones this actor holds (applied, or delivered and owed a
    /// release) are forgotten by a record; the rest were forgotten before.
    pub(super) fn release(&self, req: &Request, ids: &[String], subject: String) -> Step {
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
        let outbox = !a.snapshot.outbox.is_empty();
        let left = a
            .snapshot
            .outbox
            .iter()
            .any(|o| !record.released.contains(&o.id));
        let marker = marker::writes(
            a.marker,
            marker::look(outbox, &a.snapshot.timers),
            marker::look_after(left, &a.snapshot.timers, &record),
            timers::epoch_ms(std::time::SystemTime::now()),
        );
        Step::Append {
            subject,
            expected: a.seq,
            record: Box::new(record),
            next,
            marker,
        }
    }

    /// The actor's pending-work marker as the worker knows it.
    fn marker_of(&self, actor: &ActorRef) -> Marker {
        self.actors.get(actor).and_then(|a| a.marker)
    }

    /// Loads `actor` for its pending work (its look came); a marker with nothing behind it goes.
    pub(super) async fn touch(&mut self, actor: &ActorRef) {
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
                done.marked = Some(None);
            }
            done
        }));
    }
}
