//! What every command's append shares, whoever decided it (in process or the app): the appended
//! record's outcome for the worker, the marker's writes around the append, and the limits a
//! decision must keep before anything is appended.

use super::HostContext;
use super::marker::{After, Marker, Writes};
use crate::error::Error;
use crate::store::{Record, json_size};
use aether_core::protocol::app::is_send_id;
use aether_core::protocol::{ErrorCode, ErrorReply, Reply, Request, SharedJson};
use tokio::sync::oneshot;

/// A command whose record was appended (or not).
pub(super) struct Appended {
    pub(super) req: Request,
    pub(super) tx: oneshot::Sender<Reply>,
    pub(super) attempt: u8,
    pub(super) result: Result<u64, Error>,
    /// The actor's state once the append lands.
    pub(super) next: SharedJson,
    /// The record (its events taken out); `None` when nothing was appended (the decision had no
    /// events), and `result` is then the old sequence.
    pub(super) record: Option<Box<Record>>,
    /// An app kind's reply for the caller.
    pub(super) reply: Option<serde_json::Value>,
    /// The actor's pending-work marker as this step left it (`None`: untouched).
    pub(super) marked: Option<Marker>,
}

impl Appended {
    pub(super) fn new(
        req: Request,
        tx: oneshot::Sender<Reply>,
        attempt: u8,
        expected: u64,
    ) -> Self {
        Self {
            req,
            tx,
            attempt,
            result: Ok(expected),
            next: SharedJson::default(),
            record: None,
            reply: None,
            marked: None,
        }
    }
}

/// Appends `record` with the marker's writes around it: the first before (a failure to write
/// it fails the command, nothing appended), the second once the record landed (a failure there
/// leaves a marker earlier than needed, which costs a look, never a firing).
pub(super) async fn append_marked(
    ctx: &HostContext,
    shard: u32,
    had: Marker,
    writes: Writes,
    (subject, expected): (&str, u64),
    record: &Record,
    done: &mut Appended,
) {
    let actor = &done.req.actor;
    if let Some(t) = writes.before {
        // Before the record lands: whoever serves the shard next finds the sends and timers.
        if let Err(e) = ctx.store.mark_pending(shard, actor, t, had.is_some()).await {
            done.result = Err(e);
            return;
        }
        done.marked = Some(Some(t));
    }
    done.result = ctx.store.append(subject, expected, record).await;
    if done.result.is_err() {
        return;
    }
    match writes.after {
        After::Keep => {}
        After::Clear => {
            if ctx.store.clear_pending(shard, actor).await.is_ok() {
                done.marked = Some(None);
            }
        }
        After::Set(t) => {
            if ctx.store.mark_pending(shard, actor, t, true).await.is_ok() {
                done.marked = Some(Some(t));
            }
        }
    }
}

/// The refusal of a decision's timers (nothing appended).
pub(super) fn malformed_timers(why: String) -> ErrorReply {
    ErrorReply::new(ErrorCode::Malformed, why)
}

/// Largest reply (JSON bytes) of a client's command kept in its record for the command's retries.
pub const KEPT_REPLY_BYTES: usize = 16 * 1024;

/// True when record `version` carries the state: every `every`th, and the first, so that every
/// later record points at a snapshot and a replay reads from there, never from the stream's start
/// (which would make the server scan the log up to the actor's first record).
pub(super) fn snapshot_due(version: u64, every: u64) -> bool {
    version == 1 || version.is_multiple_of(every)
}

/// Bytes a command adds to what its actor keeps besides the state: a send's id and reply, kept
/// until its sender releases it.
pub(super) fn inbound_bytes(req: &Request, reply: Option<&serde_json::Value>) -> usize {
    match &req.id {
        Some(id) if is_send_id(id) => id.len() + 32 + reply.map_or(0, json_size),
        _ => 0,
    }
}

/// The `tooLarge` refusal of a decision whose state and extras (recent command ids, outbox,
/// inbox) together exceed `limit`: all of it travels in snapshot records and transfer chunks.
pub(super) fn over_limit(state: usize, extras: usize, limit: usize) -> Option<ErrorReply> {
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
