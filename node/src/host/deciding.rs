//! An app kind's command, off the worker: the app decides (over loopback), the answer is checked
//! (its shape by the protocol, its size and timers here), and the record is appended with its
//! marker writes. Nothing is appended unless all of that holds.

use super::HostContext;
use super::append::{Appended, KEPT_REPLY_BYTES, append_marked, inbound_bytes, over_limit};
use super::marker::{self, Marker};
use crate::behaviour::AppKind;
use crate::error::Error;
use crate::metrics::AppFault;
use crate::store::{Outgoing, Record, Snapshot, compact_small, json_size, state_size};
use aether_core::protocol::app::{DecideCall, Decision, is_send_id, send_id};
use aether_core::protocol::{Op, Reply, Request, SharedJson};
use aether_core::timers::{self, Timer};
use std::sync::Arc;
use tokio::sync::oneshot;
use tracing::Instrument;

/// What an app kind's decide call needs, taken from the actor before the call.
pub(super) struct Deciding {
    pub(super) kind: Arc<AppKind>,
    pub(super) subject: String,
    pub(super) expected: u64,
    pub(super) state: SharedJson,
    pub(super) version: u64,
    pub(super) base: u64,
    /// Everything but the state, when the next record carries a snapshot.
    pub(super) prev: Option<Snapshot>,
    /// The actor's shard, and its pending-work marker.
    pub(super) shard: u32,
    pub(super) marker: Marker,
    /// Whether the actor's outbox holds anything (sends to deliver, releases owed).
    pub(super) outbox: bool,
    /// Bytes of what the actor keeps besides its state (recent ids, outbox, inbox).
    pub(super) extras: usize,
    /// The actor's timers before the decision, and the firing decided (if it is one).
    pub(super) timers: Vec<Timer>,
    pub(super) fired: Option<(Timer, timers::Firing)>,
    /// The wall clock of the decision (ms since the Unix epoch): timers' `after` counts from it.
    pub(super) now: u64,
    /// Whether to ask the event stream whether it holds the command already (an id the actor
    /// forgot that JetStream's duplicate window may hold): then the app is not called.
    pub(super) ask_stream: bool,
}

/// An app kind's command, off the worker: the app decides, the answer is checked (shape by the
/// protocol, size here), the record is appended. Nothing is appended unless all of that holds.
pub(super) async fn decide_and_append(
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
    if d.ask_stream
        && let Some(id) = &done.req.id
    {
        match ctx.store.seen(&d.subject, id).await {
            Ok(None) => {}
            // Answered as a duplicate append is: from the log, the first reply.
            Ok(Some(at)) => {
                done.result = Err(Error::Duplicate(at));
                return done;
            }
            Err(e) => {
                done.result = Err(e);
                return done;
            }
        }
    }
    let call = DecideCall {
        kind: &done.req.actor.kind,
        id: &done.req.actor.id,
        version: d.version,
        state: &d.state,
        command,
        command_id: done.req.id.as_deref(),
    };
    // The app's decide as a span of the request's trace (traces on); the call carries it as
    // `traceparent`, and so do the sends it makes.
    let span = aether_nats::telemetry::child_of(
        done.req.trace.as_deref(),
        || tracing::info_span!("decide", otel.kind = "client", kind = %done.req.actor.kind),
    );
    let trace = aether_nats::telemetry::traceparent(&span);
    let decided = d.kind.app.decide(&call).instrument(span).await;
    let (events, state, reply, send, specs, cancel) = match decided {
        Ok(Decision::Accept {
            events,
            state,
            reply,
            send,
            timers,
            cancel,
        }) => (events, state.into(), reply, send, timers, cancel),
        // The reply to a send is recorded even when the app refuses it: the send is delivered;
        // a firing refused still moves its timer on.
        Ok(Decision::Reject(_)) if done.req.delivered.is_some() || d.fired.is_some() => (
            Vec::new(),
            d.state.clone(),
            None,
            Vec::new(),
            serde_json::Value::Null,
            serde_json::Value::Null,
        ),
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
    let fired = d.fired.as_ref().map(|(t, f)| (t, f));
    let changed = timers::parse(specs, cancel)
        .and_then(|(specs, cancel)| timers::changes(&d.timers, fired, &specs, cancel, d.now));
    let (set, cancel) = match changed {
        Ok(c) => c,
        Err(why) => {
            done.result = Err(Error::Protocol(aether_core::Error::Malformed(why)));
            return done;
        }
    };
    let delivered: Vec<String> = done.req.delivered.iter().cloned().collect();
    let (events, state, send) = if delivered.is_empty() {
        (events, state, send)
    } else {
        let sent: usize = send.iter().map(|s| json_size(&s.command) + 160).sum();
        match over_limit(state_size(&state), d.extras + sent, ctx.max_state_bytes) {
            None => (events, state, send),
            Some(e) => {
                // The answer to a send is recorded whatever: what the app decided on it would
                // leave the actor over its limit, so it is dropped, as if the app had refused it.
                tracing::warn!(actor = %done.req.actor.id, why = %e.message, "the decision on a send's answer is dropped: over the state limit");
                (Vec::new(), d.state.clone(), Vec::new())
            }
        }
    };
    if events.is_empty()
        && send.is_empty()
        && delivered.is_empty()
        && set.is_empty()
        && cancel.is_empty()
    {
        // Nothing to record: the state stays as it was, whatever the answer says.
        return done;
    }
    let mut state = state;
    let size = compact_small(&mut state);
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
            trace: trace.clone(),
        })
        .collect();
    record.delivered = delivered;
    record.timers = set;
    record.cancel = cancel;
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
    let writes = marker::writes(
        d.marker,
        marker::look(d.outbox, &d.timers),
        marker::look_after(d.outbox, &d.timers, &record),
        d.now,
    );
    append_marked(
        &ctx,
        d.shard,
        d.marker,
        writes,
        (&d.subject, d.expected),
        &record,
        &mut done,
    )
    .await;
    record.events = Vec::new();
    done.record = Some(Box::new(record));
    done.next = state;
    done
}
