//! The app protocol: how a node sidecar calls the user's app container in the same pod (HTTP/1.1,
//! JSON, over loopback). The app is a set of pure functions; the state travels with every call, so the
//! app keeps nothing between calls and a shard moves without the app noticing.
//!
//! - `GET /v1/kinds` -> [`KindsAnswer`]: the kinds the app hosts, asked at start until answered;
//! - `POST /v1/decide` with [`DecideCall`] -> [`DecideAnswer`]: the events a command produces, the
//!   state after them and the reply for the caller, or `rejected` with a reason;
//! - `POST /v1/apply` with [`ApplyCall`] -> [`ApplyAnswer`]: events folded into a state, when an
//!   actor is rebuilt from the log;
//! - `POST /v1/decide-batch` with `{"calls": [DecideCall, ...]}` -> [`DecideBatchAnswer`]: several
//!   decide calls (of different actors) in one request, only to an app whose kinds answer offers
//!   it ([`KindsAnswer::decide_batch`]).
//!
//! The app is never trusted with sizes or shapes: [`DecideAnswer::check`] and [`ApplyAnswer::check`]
//! turn an answer into what the node may append, or say what is wrong with it. See docs/PROTOCOL.md.

use super::messages::{ActorRef, MAX_COMMAND_DEPTH, check_command, check_kind, json_depth};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Path of the kinds call.
pub const KINDS_PATH: &str = "/v1/kinds";
/// Path of the decide call.
pub const DECIDE_PATH: &str = "/v1/decide";
/// Path of the apply call.
pub const APPLY_PATH: &str = "/v1/apply";
/// Path of the batched decide call.
pub const DECIDE_BATCH_PATH: &str = "/v1/decide-batch";
/// Most decide calls an app may take in one batch (`decideBatch`).
pub const MAX_DECIDE_BATCH: usize = 1024;
/// Records between two snapshots, unless a kind says otherwise.
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 32;
/// Largest `snapshotEvery` a kind may ask for (a load replays at most this many records).
pub const MAX_SNAPSHOT_EVERY: u64 = 1024;
/// Most events one decision may produce.
pub const MAX_EVENTS: usize = 1024;
/// Most events in one apply call (a longer replay is split into several calls).
pub const APPLY_BATCH: usize = 256;
/// Most messages one decision may send.
pub const MAX_SENDS: usize = 64;
/// The command key under which an actor gets the reply to one of its sends.
pub const REPLY_KEY: &str = "$reply";
/// Longest rejection reason kept (longer ones are cut).
pub const MAX_REASON_BYTES: usize = 1024;

/// The app's answer to `GET /v1/kinds`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KindsAnswer {
    /// The kinds the app hosts.
    pub kinds: Vec<KindInfo>,
    /// The app takes `POST /v1/decide-batch` with up to this many calls (2 to
    /// [`MAX_DECIDE_BATCH`]); absent, 0 or 1: one decide call per request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decide_batch: Option<u64>,
}

/// One kind the app hosts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KindInfo {
    /// Kind name, `[a-z0-9-]{1,32}`.
    pub name: String,
    /// A record carries the whole state every this many records (1 to [`MAX_SNAPSHOT_EVERY`],
    /// default [`DEFAULT_SNAPSHOT_EVERY`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_every: Option<u64>,
    /// State of an actor with no events (default `null`).
    #[serde(default)]
    pub initial: Value,
}

impl KindsAnswer {
    /// The most decide calls the app takes in one request (1: no batches), or what is wrong with
    /// `decideBatch`.
    pub fn batch(&self) -> Result<usize, String> {
        match self.decide_batch {
            None | Some(0 | 1) => Ok(1),
            Some(n) => usize::try_from(n)
                .ok()
                .filter(|&n| n <= MAX_DECIDE_BATCH)
                .ok_or_else(|| format!("decideBatch {n} is over {MAX_DECIDE_BATCH}")),
        }
    }

    /// The kinds, or what is wrong with the answer: a name that is not a kind, a repeated name, a
    /// `snapshotEvery` out of range, an initial state nested too deep.
    pub fn check(self) -> Result<Vec<KindInfo>, String> {
        let mut seen = std::collections::BTreeSet::new();
        for k in &self.kinds {
            check_kind(&k.name).map_err(|e| e.to_string())?;
            if !seen.insert(k.name.as_str()) {
                return Err(format!("kind {:?} is listed twice", k.name));
            }
            if let Some(n) = k.snapshot_every
                && !(1..=MAX_SNAPSHOT_EVERY).contains(&n)
            {
                return Err(format!(
                    "kind {:?}: snapshotEvery {n} is outside 1..={MAX_SNAPSHOT_EVERY}",
                    k.name
                ));
            }
            if json_depth(&k.initial) > MAX_COMMAND_DEPTH {
                return Err(format!(
                    "kind {:?}: initial state nests deeper than {MAX_COMMAND_DEPTH}",
                    k.name
                ));
            }
        }
        Ok(self.kinds)
    }
}

/// `POST /v1/decide`: what a command meets.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DecideCall<'a> {
    /// The actor's kind.
    pub kind: &'a str,
    /// The actor's id.
    pub id: &'a str,
    /// Number of records of the actor so far.
    pub version: u64,
    /// The actor's state.
    pub state: &'a Value,
    /// The command.
    pub command: &'a Value,
    /// The caller's command id, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<&'a str>,
}

/// The app's answer to a decide call, as sent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DecideAnswer {
    /// The events to append (a list; empty appends nothing and only replies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Value>,
    /// The state after the events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<Value>,
    /// What the caller gets back (besides the state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<Value>,
    /// Messages to other actors, sent once the events are appended (a list of [`Send`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send: Option<Value>,
    /// The command is refused, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<Value>,
    /// Timers to set (a list of [`TimerSpec`]; a name set again replaces its timer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timers: Option<Value>,
    /// Names of timers to cancel (a list of strings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel: Option<Value>,
}

/// A message from one actor to another: a command, delivered after the sender's record landed,
/// with a command id made from the sender, its record and the message's index.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Send {
    /// The receiver.
    pub actor: ActorRef,
    /// The command it gets.
    pub command: Value,
}

/// A decide answer checked.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Append `events`; the actor's state becomes `state`; the caller gets `reply`.
    Accept {
        /// Events, at most [`MAX_EVENTS`].
        events: Vec<Value>,
        /// The next state.
        state: Value,
        /// The reply.
        reply: Option<Value>,
        /// Messages to send after the append.
        send: Vec<Send>,
        /// Timers to set, as answered (`null` or a list of [`super::timers::TimerSpec`]).
        timers: Value,
        /// Timer names to cancel, as answered (`null` or a list of names).
        cancel: Value,
    },
    /// Refused, with the reason (cut to [`MAX_REASON_BYTES`]).
    Reject(String),
}

impl DecideAnswer {
    /// The decision, or what is wrong with the answer.
    pub fn check(self) -> Result<Decision, String> {
        if let Some(why) = self.rejected {
            let why = match why {
                Value::String(s) => s,
                other => other.to_string(),
            };
            return Ok(Decision::Reject(cut(why, MAX_REASON_BYTES)));
        }
        let events = match self.events {
            Some(Value::Array(events)) => events,
            Some(_) => return Err("events is not a list".into()),
            None => return Err("the answer has neither events nor rejected".into()),
        };
        if events.len() > MAX_EVENTS {
            return Err(format!("{} events, more than {MAX_EVENTS}", events.len()));
        }
        let Some(state) = self.state else {
            return Err("the answer has events but no state".into());
        };
        if events.iter().any(|e| json_depth(e) > MAX_COMMAND_DEPTH) {
            return Err(format!("an event nests deeper than {MAX_COMMAND_DEPTH}"));
        }
        if json_depth(&state) > MAX_COMMAND_DEPTH {
            return Err(format!("the state nests deeper than {MAX_COMMAND_DEPTH}"));
        }
        if self
            .reply
            .as_ref()
            .is_some_and(|r| json_depth(r) > MAX_COMMAND_DEPTH)
        {
            return Err(format!("the reply nests deeper than {MAX_COMMAND_DEPTH}"));
        }
        let send: Vec<Send> = match self.send {
            None | Some(Value::Null) => Vec::new(),
            Some(v @ Value::Array(_)) => serde_json::from_value(v)
                .map_err(|e| format!("send is not a list of {{actor, command}}: {e}"))?,
            Some(_) => return Err("send is not a list".into()),
        };
        if send.len() > MAX_SENDS {
            return Err(format!("{} sends, more than {MAX_SENDS}", send.len()));
        }
        for s in &send {
            s.actor
                .validate()
                .and_then(|()| check_command(&s.command))
                .map_err(|e| format!("send to {}/{}: {e}", s.actor.kind, s.actor.id))?;
        }
        // Timers are checked by the node against the clock and the actor's other timers
        // ([`super::timers::parse`]): a bad one is the command's `malformed`, not an app error.
        let timers = self.timers.unwrap_or(Value::Null);
        let cancel = self.cancel.unwrap_or(Value::Null);
        Ok(Decision::Accept {
            events,
            state,
            reply: self.reply,
            send,
            timers,
            cancel,
        })
    }
}

/// The app's answer to `POST /v1/decide-batch`: one entry per call, in the calls' order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DecideBatchAnswer {
    /// The answers.
    pub answers: Vec<BatchEntry>,
}

/// One call's answer in a batch: a decide answer, or the app's failure on that call alone.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchEntry {
    /// The app's code failed on this call (the command's `appError`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
    /// The answer, when the app did not fail.
    #[serde(flatten)]
    pub answer: DecideAnswer,
}

/// `POST /v1/apply`: events to fold into a state, oldest first.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ApplyCall<'a> {
    /// The actor's kind.
    pub kind: &'a str,
    /// The actor's id.
    pub id: &'a str,
    /// The state before the events.
    pub state: &'a Value,
    /// The events, at most [`APPLY_BATCH`].
    pub events: &'a [Value],
}

/// The app's answer to an apply call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApplyAnswer {
    /// The state after the events.
    #[serde(default)]
    pub state: Option<Value>,
}

impl ApplyAnswer {
    /// The state, or what is wrong with the answer.
    pub fn check(self) -> Result<Value, String> {
        let state = self.state.ok_or("the answer has no state")?;
        if json_depth(&state) > MAX_COMMAND_DEPTH {
            return Err(format!("the state nests deeper than {MAX_COMMAND_DEPTH}"));
        }
        Ok(state)
    }
}

/// The command id of the `index`th message of the sender's record `version`:
/// `$send-{XXH3-64("kind/id") as 16 hex digits}-{version}-{index}`. The same wherever and however
/// often it is sent, so the receiver applies it once. Command ids starting with `$` are the nodes'
/// own: no client may use one.
#[must_use]
pub fn send_id(from: &ActorRef, version: u64, index: usize) -> String {
    let who = crate::hash::actor_hash(&format!("{}/{}", from.kind, from.id));
    format!("{SEND_ID_PREFIX}{who:016x}-{version}-{index}")
}

/// How every send id starts ([`send_id`]).
pub const SEND_ID_PREFIX: &str = "$send-";

/// True for a send's command id ([`send_id`]).
#[must_use]
pub fn is_send_id(id: &str) -> bool {
    id.starts_with(SEND_ID_PREFIX)
}

/// The command id of the `$reply` command that records the answer to send `id` at its sender:
/// `$reply-...` with the send id's rest.
#[must_use]
pub fn reply_id(send_id: &str) -> String {
    format!(
        "$reply-{}",
        send_id.strip_prefix(SEND_ID_PREFIX).unwrap_or(send_id)
    )
}

/// `s` cut to at most `max` bytes, on a character boundary.
#[must_use]
pub fn cut(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn answer(v: Value) -> Result<Decision, String> {
        serde_json::from_value::<DecideAnswer>(v)
            .map_err(|e| e.to_string())
            .and_then(DecideAnswer::check)
    }

    #[test]
    fn decisions_are_checked() {
        assert_eq!(
            answer(
                json!({"events": [{"deposited": 5}], "state": {"balance": 5}, "reply": {"ok": true}})
            ),
            Ok(Decision::Accept {
                events: vec![json!({"deposited": 5})],
                state: json!({"balance": 5}),
                reply: Some(json!({"ok": true})),
                send: vec![],
                timers: Value::Null,
                cancel: Value::Null,
            })
        );
        assert_eq!(
            answer(json!({"rejected": "insufficient funds"})),
            Ok(Decision::Reject("insufficient funds".into()))
        );
        assert!(answer(json!({"events": {"a": 1}, "state": 1})).is_err());
        assert!(answer(json!({"events": []})).is_err());
        let send = json!({"events": [], "state": 1, "send": [{"actor": {"kind": "account", "id": "b"}, "command": {"deposit": 1}}]});
        assert!(matches!(answer(send), Ok(Decision::Accept { send, .. }) if send.len() == 1));
        // A send may not forge a reply, nor go to a kind that cannot exist.
        assert!(answer(json!({"events": [], "state": 1, "send": [{"actor": {"kind": "a", "id": "b"}, "command": {"$reply": 1}}]})).is_err());
        assert!(answer(json!({"events": [], "state": 1, "send": [{"actor": {"kind": "A B", "id": "b"}, "command": {}}]})).is_err());
        assert!(answer(json!({"events": [], "state": 1, "send": {"x": 1}})).is_err());
        assert!(answer(json!({})).is_err());
        let mut deep = json!(1);
        for _ in 0..40 {
            deep = json!([deep]);
        }
        assert!(answer(json!({"events": [], "state": deep})).is_err());
        let long = "x".repeat(5000);
        assert_eq!(
            answer(json!({"rejected": long})),
            Ok(Decision::Reject("x".repeat(MAX_REASON_BYTES)))
        );
    }

    #[test]
    fn kinds_are_checked() {
        let ok: KindsAnswer =
            serde_json::from_value(json!({"kinds": [{"name": "account", "snapshotEvery": 8}]}))
                .expect("decodes");
        assert_eq!(ok.check().map(|k| k.len()), Ok(1));
        for bad in [
            json!({"kinds": [{"name": "Account"}]}),
            json!({"kinds": [{"name": "a"}, {"name": "a"}]}),
            json!({"kinds": [{"name": "a", "snapshotEvery": 0}]}),
            json!({"kinds": [{"name": "a", "snapshotEvery": 5000}]}),
        ] {
            let k: KindsAnswer = serde_json::from_value(bad).expect("decodes");
            assert!(k.check().is_err());
        }
    }

    #[test]
    fn decide_batches_are_offered_and_answered_as_documented() {
        let batch = |v: Value| {
            serde_json::from_value::<KindsAnswer>(json!({"kinds": [], "decideBatch": v}))
                .map_err(|e| e.to_string())
                .and_then(|k| k.batch())
        };
        assert_eq!(batch(json!(64)), Ok(64));
        assert_eq!(batch(json!(1)), Ok(1));
        assert_eq!(batch(json!(0)), Ok(1));
        assert_eq!(batch(Value::Null), Ok(1));
        assert!(batch(json!(1025)).is_err());
        // docs/PROTOCOL.md's example answer: a decision and a refusal, then an entry that failed.
        let answers: DecideBatchAnswer = serde_json::from_value(json!({"answers": [
            {"events": [{"deposited": 5}], "state": {"balance": 105}, "reply": {"balance": 105}},
            {"rejected": "insufficient funds: balance 100, transfer 150"},
            {"error": "KeyError: 'x'"}
        ]}))
        .expect("decodes");
        let [a, b, c] = <[BatchEntry; 3]>::try_from(answers.answers).expect("three");
        assert!(a.error.is_none() && matches!(a.answer.check(), Ok(Decision::Accept { .. })));
        assert!(matches!(b.answer.check(), Ok(Decision::Reject(_))));
        assert_eq!(c.error, Some(json!("KeyError: 'x'")));
    }
}
