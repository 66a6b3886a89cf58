//! A shard's move, both ends, as the shell of the pure machines in `migration.rs`: the source runs a
//! [`SourceMove`] and carries out its actions (pause the worker and take its actors, make and send
//! chunks, hand off, commit, resume, report); the destination asks [`Ownership`] about each chunk
//! and stages its actors in the shard's worker. Both ends run on the [`MigrationRuntime`], over the
//! node's second NATS connection.
//!
//! [`Ownership`]: crate::ownership::Ownership

use crate::driver::{self, Effect, Receive, SourceDriver};
use crate::error::{Error, Result};
use crate::host::{self, Cmd};
use crate::metrics::{Malformed, MoveOutcome};
use crate::migration::{Event, SourceMove};
use crate::requests::FORWARD_TIMEOUT;
use crate::shared::Shared;
use aether_core::plan::Move;
use aether_core::protocol::{
    ErrorReply, Transfer, TransferAck, TransferWriter, VERSION, decode, decode_transfer,
    encode_transfer,
};
use aether_core::types::MovePhase;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tracing::Instrument;

/// Bytes of actor state per transfer chunk (NATS's default max payload is 1 MiB).
pub const CHUNK_BYTES: usize = 512 * 1024;

/// Actors copied per message to the shard's worker in a move's copy round: the worker serves
/// requests between batches, so none waits for more than a batch's copy (~0.1 ms).
pub const COPY_BATCH: usize = 256;

/// A chunk unanswered this long fails the move (its destination is gone or stuck), well before
/// the move's deadline: the source serves the shard again at once.
pub const CHUNK_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a destination tries to store its `Done` report before it confirms a commit anyway (the
/// source reports `Done` too once the commit is confirmed).
pub const DONE_STORE_TIMEOUT: Duration = Duration::from_secs(2);

/// A new attempt id: unique per process start (the clock) and per move (a counter).
fn next_attempt() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    if NEXT.load(Ordering::Relaxed) == 0 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        let _ = NEXT.compare_exchange(0, now.max(1), Ordering::Relaxed, Ordering::Relaxed);
    }
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl Shared {
    /// Runs a move of one shard, then any newer move of that shard that a plan listed meanwhile
    /// (its start was held back while this one ran).
    pub(crate) async fn run_moves(
        self: Arc<Self>,
        mut mv: Move,
        mut epoch: u64,
        mut timeout: Duration,
    ) {
        loop {
            let span =
                tracing::info_span!("move", epoch, shard = mv.shard, from = %self.me, to = %mv.to);
            let ended = self
                .clone()
                .migrate(mv, epoch, timeout, false)
                .instrument(span)
                .await;
            match ended.and_then(|d| d.next(&mut self.state().own)) {
                Some((m, e, t)) => (mv, epoch, timeout) = (m, e, t),
                None => return,
            }
        }
    }

    /// Sends the commit of a move this node handed off in an earlier epoch, listed again by plan
    /// `epoch`; reports it Done once the destination confirms it.
    pub(crate) async fn recommit(self: Arc<Self>, mv: Move, epoch: u64) {
        let span = tracing::info_span!("recommit", epoch, shard = mv.shard, to = %mv.to);
        self.migrate(mv, epoch, FORWARD_TIMEOUT, true)
            .instrument(span)
            .await;
    }

    /// Runs one source-side move: the [`SourceDriver`] decides, this carries out its effects in
    /// order (with `recommit`, only the commit). The shard's actors are serialised chunk by chunk
    /// as the driver asks for chunks; each chunk travels in its own task (up to
    /// [`crate::migration::WINDOW`] unacked), and their answers come back as events. A newer plan
    /// before the hand-off stops it at once. Returns the driver once the move is over (none when
    /// it never started).
    async fn migrate(
        self: Arc<Self>,
        mv: Move,
        epoch: u64,
        timeout: Duration,
        recommit: bool,
    ) -> Option<SourceDriver> {
        let shard = mv.shard;
        let (mut driver, first, _permit) = if recommit {
            let (d, fx) = SourceDriver::recommit(mv.clone(), epoch);
            (d, fx, None)
        } else {
            let permit = self.move_slots().acquire_owned().await.ok()?;
            let (d, fx) =
                SourceDriver::start(&self.state().own, mv.clone(), epoch, SourceMove::default());
            (d, fx, Some(permit))
        };
        let started = Instant::now();
        let deadline = tokio::time::Instant::from_std(started + timeout);
        let to = mv.to.clone();
        let attempt = next_attempt();
        let mut effects: VecDeque<Effect> = first.into();
        let mut lent = host::Lent::default();
        // The copy round's actors, taken while the shard is still served; `paused` once it is not.
        let mut copy = host::Lent::default();
        let mut paused = false;
        // When the pause began (new requests queue from then, while those in hand finish): until
        // the hand-off, callers of the shard wait.
        let mut paused_at: Option<Instant> = None;
        let mut chunks: Vec<bytes::Bytes> = Vec::new();
        let mut sends: JoinSet<Event> = JoinSet::new();
        let mut epochs = self.epochs.subscribe();
        loop {
            let Some(effect) = effects.pop_front() else {
                if driver.finished() || sends.is_empty() {
                    break;
                }
                let event = tokio::select! {
                    Some(Ok(event)) = sends.join_next() => event,
                    () = tokio::time::sleep_until(deadline) => Event::Deadline,
                    Ok(()) = epochs.changed() => {
                        if *epochs.borrow_and_update() <= epoch {
                            continue;
                        }
                        Event::Superseded
                    }
                };
                effects.extend(self.drive(&mut driver, event, &to));
                continue;
            };
            let next = match effect {
                Effect::Copy => {
                    let worker = self.state().worker(&self.host, shard);
                    loop {
                        let (tx, rx) = oneshot::channel();
                        let cmd = Cmd::Copy {
                            from: copy.len(),
                            max: COPY_BATCH,
                            tx,
                        };
                        if worker.tx.send(cmd).is_err() {
                            break;
                        }
                        let Ok((batch, end)) = rx.await else { break };
                        copy.extend(batch);
                        if end {
                            break;
                        }
                    }
                    self.drive(&mut driver, Event::Copied { actors: copy.len() }, &to)
                }
                Effect::PauseAndCapture { changed_only } => {
                    // Each copy's sequence, taken before the pause: the pause only compares.
                    let copied = changed_only.then(|| copy.sequences());
                    let (tx, rx) = oneshot::channel();
                    let worker = self.state().worker(&self.host, shard);
                    paused_at = Some(Instant::now());
                    let _ = worker.tx.send(Cmd::Pause(tx));
                    lent = rx.await.unwrap_or_default();
                    paused = true;
                    if let Some(copied) = copied {
                        let (changed, dropped) = lent.changed_since(copied);
                        tracing::debug!(
                            copied = copy.len(),
                            changed,
                            dropped,
                            "paused after the copy round"
                        );
                    }
                    self.drive(&mut driver, Event::Captured, &to)
                }
                Effect::Produce { chunk } => {
                    // Serialise the next actors straight into the chunk.
                    let made = TransferWriter::new(
                        epoch,
                        attempt,
                        shard,
                        &self.me,
                        chunk,
                        CHUNK_BYTES + 4096,
                    )
                    .map(|mut w| {
                        if paused {
                            let last = lent.fill(&mut w, CHUNK_BYTES, usize::MAX);
                            (bytes::Bytes::from(w.finish(last, false)), last)
                        } else {
                            let last = copy.fill(&mut w, CHUNK_BYTES, usize::MAX);
                            (bytes::Bytes::from(w.finish_copy(last)), last)
                        }
                    });
                    let event = match made {
                        Ok((body, last)) => {
                            chunks.push(body.clone());
                            self.send_in(&mut sends, &to, shard, chunk, body, 0, deadline);
                            Event::Produced { chunk, last }
                        }
                        Err(e) => Event::ProduceFailed {
                            chunk,
                            reason: e.to_string(),
                        },
                    };
                    self.drive(&mut driver, event, &to)
                }
                Effect::Resend { chunk, delay_ms } => {
                    let body = chunks.get(chunk as usize).cloned().unwrap_or_default();
                    self.send_in(&mut sends, &to, shard, chunk, body, delay_ms, deadline);
                    Vec::new()
                }
                // Carried out with the hand-off, under the same lock (see `drive`).
                Effect::StopServing => {
                    if let Some(at) = paused_at {
                        let pause = at.elapsed();
                        self.host
                            .metrics
                            .move_pause_seconds
                            .observe(pause.as_secs_f64());
                        tracing::debug!(shard, pause_ms = pause.as_millis() as u64, "handed off");
                    }
                    Vec::new()
                }
                Effect::Report { phase, error } => {
                    let (moved, ms) = (
                        lent.len().max(copy.len()) as u32,
                        started.elapsed().as_millis() as u64,
                    );
                    match phase {
                        MovePhase::Done => {
                            self.host
                                .metrics
                                .move_seconds
                                .observe(started.elapsed().as_secs_f64());
                            self.metrics().move_outcome(MoveOutcome::Done);
                        }
                        MovePhase::Failed => {
                            self.metrics().move_outcome(MoveOutcome::Failed);
                            tracing::warn!(
                                why = error.as_deref().unwrap_or_default(),
                                "move failed, shard kept"
                            );
                        }
                        MovePhase::Superseded => {
                            self.metrics().move_outcome(MoveOutcome::Superseded);
                            tracing::info!(
                                why = error.as_deref().unwrap_or_default(),
                                "move superseded: shard kept"
                            );
                        }
                        _ => {}
                    }
                    let done = phase == MovePhase::Done;
                    let moved = if done { moved } else { 0 };
                    let bytes = if done {
                        chunks.iter().map(|c| c.len() as u64).sum()
                    } else {
                        0
                    };
                    let ms = if phase == MovePhase::Transferring || phase == MovePhase::HandedOff {
                        0
                    } else {
                        ms
                    };
                    // Stored before the next effect: `HandedOff` before the commit is sent, so a
                    // process that dies after sending it reads that it handed off.
                    self.report(epoch, &mv, phase, (moved, bytes), ms, error)
                        .await;
                    Vec::new()
                }
                Effect::CommitAfter { delay_ms } => {
                    if delay_ms > 0 {
                        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                    }
                    let own = &self.state().own;
                    driver.commit(own)
                }
                Effect::SendCommit { chunk } => {
                    let event = self.commit(&to, epoch, attempt, shard, chunk).await;
                    self.drive(&mut driver, event, &to)
                }
                Effect::Resume => {
                    // To the worker that lent them; if a newer plan stopped it, the actors go.
                    // Before the pause there is nothing to give back (the copies are not).
                    let lent = std::mem::take(&mut lent);
                    if paused && let Some(h) = self.state().running(shard) {
                        let _ = h.tx.send(Cmd::Resume(lent));
                    }
                    Vec::new()
                }
                Effect::Unconfirmed => {
                    self.metrics().move_outcome(MoveOutcome::Superseded);
                    tracing::info!("handed off; a newer plan came before the commit was confirmed");
                    Vec::new()
                }
            };
            effects.extend(next);
        }
        // After the report: what the move still holds (nothing once rolled back) is freed slowly.
        lent.release();
        copy.release();
        Some(driver)
    }

    /// Feeds `event` to the driver under the state lock; a hand-off it decides stops the shard's
    /// worker under the same lock, and what the worker queued goes on to `to`.
    fn drive(self: &Arc<Self>, driver: &mut SourceDriver, event: Event, to: &str) -> Vec<Effect> {
        let (fx, leftovers) = {
            let mut st = self.state();
            let fx = driver.on(&mut st.own, event);
            let leftovers = if fx.contains(&Effect::StopServing) {
                st.stop(driver.mv.shard)
            } else {
                None
            };
            (fx, leftovers)
        };
        if let Some(rx) = leftovers {
            self.forward_leftovers(to.to_owned(), rx);
        }
        fx
    }

    /// Sends chunk `n` in its own task after `delay_ms`; its answer comes back as an event.
    #[allow(clippy::too_many_arguments)]
    fn send_in(
        self: &Arc<Self>,
        sends: &mut JoinSet<Event>,
        to: &str,
        shard: u32,
        n: u32,
        body: bytes::Bytes,
        delay_ms: u64,
        deadline: tokio::time::Instant,
    ) {
        let (this, to) = (self.clone(), to.to_owned());
        sends.spawn(
            async move {
                if delay_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                }
                this.send_chunk(&to, shard, n, body, deadline).await
            }
            .in_current_span(),
        );
    }

    /// Sends the commit once; its answer as an event.
    async fn commit(&self, to: &str, epoch: u64, attempt: u64, shard: u32, n: u32) -> Event {
        let commit = Transfer {
            v: VERSION,
            epoch,
            attempt,
            shard,
            from: self.me.clone(),
            chunk: n,
            last: true,
            actors: Vec::new(),
            commit: true,
            copy: false,
        };
        let body = encode_transfer(&commit).unwrap_or_default().into();
        let until = tokio::time::Instant::now() + FORWARD_TIMEOUT;
        match self.send_chunk(to, shard, n, body, until).await {
            Event::Acked { .. } => Event::Committed,
            Event::Refused { error, .. } => Event::CommitRefused(error),
            _ => Event::CommitUnanswered,
        }
    }

    /// Sends one encoded chunk (or the commit); its answer as an event.
    async fn send_chunk(
        &self,
        to: &str,
        shard: u32,
        n: u32,
        body: bytes::Bytes,
        deadline: tokio::time::Instant,
    ) -> Event {
        // A chunk carries the move's span: the destination's `receive` joins its trace.
        let mut headers = async_nats::HeaderMap::new();
        let current = aether_nats::telemetry::traceparent(&tracing::Span::current());
        aether_nats::telemetry::put(&mut headers, current);
        let request = self
            .bulk
            .request_with_headers(self.names.node_migrate(to), headers, body);
        let until = deadline.min(tokio::time::Instant::now() + CHUNK_TIMEOUT);
        match tokio::time::timeout_at(until, request).await {
            Err(_) if until < deadline => Event::NoAnswer {
                chunk: n,
                reason: format!("no answer within {CHUNK_TIMEOUT:?}"),
            },
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
    pub async fn on_transfer(
        self: &Arc<Self>,
        bytes: &[u8],
        traceparent: Option<&str>,
    ) -> TransferAck {
        let chunk = match decode_transfer(bytes) {
            Ok(c) => c,
            Err(e) => {
                self.metrics().malformed(Malformed::Transfer);
                return ack(0, 0, 0, Some(ErrorReply::from_decode(&e)));
            }
        };
        // The destination's side of the source's "move" span: one move reads as one story.
        let span = tracing::info_span!(
            "receive",
            epoch = chunk.epoch,
            shard = chunk.shard,
            from = %chunk.from,
            to = %self.me,
            chunk = chunk.chunk
        );
        aether_nats::telemetry::follow(&span, traceparent);
        self.receive(chunk).instrument(span).await
    }

    /// A decoded chunk: checked, staged, acknowledged (see [`Shared::on_transfer`]).
    async fn receive(self: &Arc<Self>, mut chunk: Transfer) -> TransferAck {
        let (epoch, shard, n) = (chunk.epoch, chunk.shard, chunk.chunk);
        if let Err(e) = driver::check(&self.state().own, &chunk) {
            // Refused before staging (a retry after the plan arrives stages it once).
            return ack(epoch, shard, n, Some(e));
        }
        // Staged before the decision, off the lock (and on the migration runtime).
        let mut staged = host::Staged::default();
        staged.add(&self.host, std::mem::take(&mut chunk.actors));
        let mut done = None;
        let (installed, stopped) = {
            // Acted on under the lock, so a fresh move's clean-up cannot overtake a chunk staged
            // after it.
            let mut st = self.state();
            match driver::receive(&mut st.own, &chunk) {
                Ok(Receive::Stage { fresh }) => {
                    let stopped = if fresh { st.stop(shard) } else { None };
                    let (tx, rx) = oneshot::channel();
                    let cmd = Cmd::Install(std::mem::take(&mut staged), tx);
                    let _ = st.worker(&self.host, shard).tx.send(cmd);
                    (Ok(Some(rx)), stopped)
                }
                Ok(Receive::Duplicate) => (Ok(None), None),
                Ok(Receive::Commit { fresh, done: mv }) => {
                    done = Some(mv);
                    (Ok(None), if fresh { st.stop(shard) } else { None })
                }
                Err(e) => (Err(e), None),
            }
        };
        if done.is_some() {
            self.arrivals.send_replace(());
        }
        if let Some(mv) = done {
            // Done means the destination serves the shard: stored before the commit is confirmed,
            // so whoever starts later reads it.
            self.report_within(epoch, &mv, MovePhase::Done, DONE_STORE_TIMEOUT)
                .await;
        }
        if let Some(rx) = stopped {
            drop(self.answer_leftovers(shard, rx));
        }
        match installed {
            Ok(Some(rx)) => {
                let _ = rx.await;
                ack(epoch, shard, n, None)
            }
            Ok(None) => ack(epoch, shard, n, None),
            Err(e) => ack(epoch, shard, n, Some(e)),
        }
    }
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
