//! What `kubectl aether` shows of a running aether, read-only from NATS: where an actor lives, its
//! state and pending work, its history from the log, the actors of a kind or shard. Each view is
//! built by pure functions from what was read (the plan, the records) and folded by the node's
//! own code (`store.rs`'s load, the built-in kinds' apply), so it shows what a node would serve.
//! Nothing here writes: no stream is created, no actor loaded on a node, no consumer left behind.

use crate::behaviour::{Kind, Registry};
use crate::error::{Error, Result};
use crate::store::{EventStore, Record, Snapshot};
use aether_core::hash::shard_of;
use aether_core::plan::{loads, member_of_bucket};
use aether_core::protocol::{ActorRef, Held, Names, PlanMessage, Progress, decode};
use futures::StreamExt;
use serde_json::{Value, json};
use std::collections::BTreeMap;

mod render;
pub use render::{Output, actors as render_actors, render};

/// Parses `KIND/ID` (the id may hold further slashes).
pub fn parse_actor(text: &str) -> Result<ActorRef> {
    match text.split_once('/') {
        Some((kind, id)) if !kind.is_empty() => Ok(ActorRef::new(kind, id)),
        _ => Err(Error::Config(format!(
            "expected KIND/ID (for example counter/user-42), got {text:?}"
        ))),
    }
}

/// Where `actor` lives by `plan`: its shard, the pod that owns it, the move it is in.
#[must_use]
pub fn whereabouts(plan: &PlanMessage, actor: &ActorRef) -> Value {
    let shard = shard_of(&actor.id, plan.shards);
    let owner = plan
        .shard_map
        .bucket(shard)
        .and_then(|b| member_of_bucket(&plan.members, b));
    let moving = plan
        .moves
        .iter()
        .find(|m| m.shard == shard)
        .map(|m| json!({"from": m.from, "to": m.to}));
    json!({
        "actor": format!("{}/{}", actor.kind, actor.id),
        "shard": shard,
        "shards": plan.shards,
        "owner": owner,
        "epoch": plan.epoch,
        "moving": moving,
    })
}

/// An actor's state as its log has it: folded with the built-in kind's apply when `kind` is one;
/// for an app kind, its last snapshot and the events after it (only the app can fold those).
#[must_use]
pub fn actor_view(
    actor: &ActorRef,
    kind: Option<&Kind>,
    snapshot: &Snapshot,
    version: u64,
    unfolded: &[Value],
) -> Value {
    let mut state = (*snapshot.state).clone();
    let mut after = Vec::new();
    match kind {
        Some(Kind::Local(b)) => unfolded.iter().for_each(|e| b.apply(&mut state, e)),
        _ => after = unfolded.to_vec(),
    }
    let pending: Vec<Value> = snapshot
        .outbox
        .iter()
        .map(|o| {
            json!({
                "id": o.id,
                "to": format!("{}/{}", o.actor.kind, o.actor.id),
                "delivered": o.delivered,
            })
        })
        .collect();
    json!({
        "actor": format!("{}/{}", actor.kind, actor.id),
        "version": version,
        "state": state,
        "eventsNotFolded": after,
        "timers": snapshot.timers,
        "pendingSends": pending,
        "unreleasedReceived": snapshot.inbox.len(),
        "recentCommandIds": snapshot.recent.len(),
    })
}

/// One row of an actor's history.
#[must_use]
pub fn history_row(seq: u64, r: &Record) -> Value {
    json!({
        "version": r.version,
        "seq": seq,
        "command": r.cmd,
        "events": r.events,
        "sends": r.send.iter().map(|s| json!({"id": s.id, "to": format!("{}/{}", s.actor.kind, s.actor.id), "command": s.command})).collect::<Vec<_>>(),
        "delivered": r.delivered,
        "released": r.released,
        "timersSet": r.timers.iter().map(|t| &t.name).collect::<Vec<_>>(),
        "timersCancelled": r.cancel,
        "snapshot": r.snapshot.is_some(),
    })
}

/// The state after version `at`, folded from the log's `records` (oldest first) by the built-in
/// kind `kind`: from the last snapshot at or before `at`, else from the kind's initial state
/// when the log starts at version 1. `None` when the log cannot give it (purged before, or an
/// app kind without a snapshot there).
#[must_use]
pub fn state_at(kind: Option<&Kind>, records: &[(u64, Record)], at: u64) -> Option<Value> {
    let upto: Vec<&Record> = records
        .iter()
        .map(|(_, r)| r)
        .filter(|r| r.version <= at)
        .collect();
    let start = upto.iter().rposition(|r| r.snapshot.is_some());
    let (mut state, rest) = match start {
        Some(i) => ((*upto[i].snapshot.as_ref()?.state).clone(), &upto[i + 1..]),
        None if upto.first().is_some_and(|r| r.version == 1) => (kind?.initial(), &upto[..]),
        None => return None,
    };
    if upto.last()?.version != at {
        return None;
    }
    for r in rest {
        match kind {
            Some(Kind::Local(b)) => r.events.iter().for_each(|e| b.apply(&mut state, e)),
            _ if r.events.is_empty() => {}
            _ => return None,
        }
    }
    Some(state)
}

/// The moves of `plan` with the latest report of each (`reports`, by shard).
#[must_use]
pub fn moves_view(plan: &PlanMessage, reports: &BTreeMap<u32, Progress>) -> Value {
    let moves: Vec<Value> = plan
        .moves
        .iter()
        .map(|m| {
            let r = reports.get(&m.shard);
            json!({
                "shard": m.shard,
                "from": m.from,
                "to": m.to,
                "phase": r.map_or(json!("Pending"), |r| json!(r.phase)),
                "attempts": plan.attempts.get(&m.shard).copied().unwrap_or(0),
                "actors": r.map(|r| r.actors),
                "bytes": r.map(|r| r.bytes).filter(|b| *b > 0),
                "durationMs": r.map(|r| r.duration_ms),
                "error": r.and_then(|r| r.error.clone()),
            })
        })
        .collect();
    json!({"epoch": plan.epoch, "moves": moves})
}

/// The cluster at a glance: the plan's epoch and members (shards each, the plan each holds),
/// the balance, the moves by phase with the failed ones' errors, the pods not holding the plan,
/// the streams' sizes.
#[must_use]
pub fn status_view(
    plan: &PlanMessage,
    held: &BTreeMap<String, Option<u64>>,
    reports: &BTreeMap<u32, Progress>,
    streams: Value,
) -> Value {
    let shards = loads(&plan.members, &plan.shard_map);
    let members: Vec<Value> = plan
        .members
        .iter()
        .map(|m| {
            json!({
                "pod": m.name,
                "shards": shards.get(m.name.as_str()).copied().unwrap_or(0),
                "holds": held.get(&m.name).copied().flatten(),
            })
        })
        .collect();
    let mean = f64::from(plan.shards) / plan.members.len().max(1) as f64;
    let max = shards.values().copied().max().unwrap_or(0);
    let moves = moves_view(plan, reports);
    let mut by_phase: BTreeMap<String, usize> = BTreeMap::new();
    for m in moves["moves"].as_array().into_iter().flatten() {
        *by_phase
            .entry(m["phase"].as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
    }
    let failed: Vec<&Value> = moves["moves"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["phase"] == "Failed")
        .collect();
    let behind: Vec<&String> = plan
        .members
        .iter()
        .map(|m| &m.name)
        .filter(|p| {
            held.get(*p)
                .copied()
                .flatten()
                .is_none_or(|e| e < plan.epoch)
        })
        .collect();
    json!({
        "epoch": plan.epoch,
        "shards": plan.shards,
        "members": members,
        "balance": {"maxShards": max, "meanShards": mean, "maxOverMean": if mean > 0.0 { max as f64 / mean } else { 0.0 }},
        "moves": by_phase,
        "failedMoves": failed,
        "notHoldingPlan": behind,
        "streams": streams,
    })
}

/// The read-only view of one prefix on one NATS.
#[allow(missing_debug_implementations)] // holds a JetStream context and the kinds, nothing to show
pub struct Inspector {
    names: Names,
    js: async_nats::jetstream::Context,
    store: EventStore,
    kinds: Registry,
}

impl Inspector {
    /// Opens the prefix's event stream (never creating it: a missing one is an error).
    pub async fn open(nats: async_nats::Client, prefix: &str) -> Result<Self> {
        let names = Names::new(prefix);
        let js = async_nats::jetstream::new(nats);
        let store = EventStore::existing(js.clone(), names.clone()).await?;
        Ok(Self {
            names,
            js,
            store,
            kinds: Registry::builtin(),
        })
    }

    /// The plan the nodes follow.
    pub async fn plan(&self) -> Result<PlanMessage> {
        let bucket = self.names.plan_bucket();
        let missing = || {
            Error::Config(format!(
                "no plan in bucket {bucket}: no ShardPlan has published one for this prefix"
            ))
        };
        let kv = self
            .js
            .get_key_value(&bucket)
            .await
            .map_err(|_| missing())?;
        let value = kv
            .get("plan")
            .await
            .map_err(|e| Error::Nats(format!("plan: {e}")))?
            .ok_or_else(missing)?;
        Ok(decode::<PlanMessage>(&value)?)
    }

    /// The latest report of each move of `plan`.
    async fn reports(&self, plan: &PlanMessage) -> Result<BTreeMap<u32, Progress>> {
        let mut out = BTreeMap::new();
        if plan.moves.is_empty() {
            return Ok(out);
        }
        let stream = self
            .js
            .get_stream(self.names.progress_stream())
            .await
            .map_err(|e| Error::Nats(format!("progress stream: {e}")))?;
        for m in &plan.moves {
            let subject = self.names.progress(plan.epoch, m.shard);
            match stream.get_last_raw_message_by_subject(&subject).await {
                Ok(msg) => {
                    if let Ok(p) = decode::<Progress>(&msg.payload) {
                        out.insert(m.shard, p);
                    }
                }
                Err(e)
                    if e.kind()
                        == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {}
                Err(e) => return Err(Error::Nats(format!("progress of shard {}: {e}", m.shard))),
            }
        }
        Ok(out)
    }

    /// `moves`.
    pub async fn moves(&self) -> Result<Value> {
        let plan = self.plan().await?;
        let reports = self.reports(&plan).await?;
        Ok(moves_view(&plan, &reports))
    }

    /// `status`.
    pub async fn status(&self) -> Result<Value> {
        let plan = self.plan().await?;
        let reports = self.reports(&plan).await?;
        let kv = self
            .js
            .get_key_value(self.names.plan_bucket())
            .await
            .map_err(|e| Error::Nats(format!("plan bucket: {e}")))?;
        let mut held = BTreeMap::new();
        for m in &plan.members {
            let epoch = match kv.get(Names::held_key(&m.name)).await {
                Ok(Some(v)) => decode::<Held>(&v).ok().map(|h| h.epoch),
                Ok(None) => None,
                Err(e) => return Err(Error::Nats(format!("held.{}: {e}", m.name))),
            };
            held.insert(m.name.clone(), epoch);
        }
        let mut events = self.store.stream().clone();
        let info = events
            .info()
            .await
            .map_err(|e| Error::Nats(format!("event stream: {e}")))?;
        let streams = json!({
            "events": {"messages": info.state.messages, "bytes": info.state.bytes, "subjects": info.state.subjects_count},
        });
        Ok(status_view(&plan, &held, &reports, streams))
    }

    /// `where`.
    pub async fn where_is(&self, actor: &ActorRef) -> Result<Value> {
        Ok(whereabouts(&self.plan().await?, actor))
    }

    /// `get`: the actor from its log, and where it lives.
    pub async fn get(&self, actor: &ActorRef) -> Result<Value> {
        let plan = self.plan().await?;
        let shard = shard_of(&actor.id, plan.shards);
        let subject = self.names.actor_subject(shard, actor);
        let kind = self.kinds.get(&actor.kind);
        let initial = kind.map_or(Value::Null, Kind::initial);
        let loaded = self.store.load(&subject, initial).await?;
        if loaded.version == 0 {
            return Err(unknown(actor, &self.names));
        }
        let mut view = actor_view(
            actor,
            kind,
            &loaded.snapshot,
            loaded.version,
            &loaded.unfolded,
        );
        view["where"] = whereabouts(&plan, actor);
        Ok(view)
    }

    /// `history`: the records from version `since` on, and with `at`, the state after it.
    pub async fn history(&self, actor: &ActorRef, since: u64, at: Option<u64>) -> Result<Value> {
        let plan = self.plan().await?;
        let subject = self
            .names
            .actor_subject(shard_of(&actor.id, plan.shards), actor);
        let records = self.store.log(&subject).await?;
        if records.is_empty() {
            return Err(unknown(actor, &self.names));
        }
        let kind = self.kinds.get(&actor.kind);
        let rows: Vec<Value> = records
            .iter()
            .filter(|(_, r)| r.version >= since)
            .map(|(seq, r)| history_row(*seq, r))
            .collect();
        let mut out = json!({
            "actor": format!("{}/{}", actor.kind, actor.id),
            "records": rows,
        });
        if let Some(v) = at {
            out["at"] = json!(v);
            out["stateAt"] = state_at(kind, &records, v).ok_or_else(|| {
                Error::Config(format!(
                    "the state after version {v} cannot be folded from this log (no such version, purged before it, or an app kind's events with no snapshot at or before it)"
                ))
            })?;
        }
        Ok(out)
    }

    /// `actors`: ids from the event stream's subjects (no actor is loaded), at most `limit`. Read a
    /// shard at a time (the server lists a filter's subjects in full for each page it answers, so
    /// a first page of a million actors would cost the whole list), in shard order; the whole
    /// stream at once when no plan says the number of shards.
    pub async fn actors(
        &self,
        kind: Option<&str>,
        shard: Option<u32>,
        limit: usize,
        after: Option<&Cursor>,
    ) -> Result<ActorList> {
        let filter = |s: Option<u32>| {
            format!(
                "{}.ev.{}.{}.*",
                self.names.prefix(),
                s.map_or("*".to_owned(), |s| s.to_string()),
                kind.unwrap_or("*")
            )
        };
        let shards: Vec<Option<u32>> = match (shard, self.plan().await) {
            (Some(s), _) => vec![Some(s)],
            (None, Ok(plan)) => (0..plan.shards).map(Some).collect(),
            (None, Err(_)) => vec![None],
        };
        let mut out = Vec::new();
        let mut more = false;
        'shards: for s in shards {
            // Past the cursor's shard only (shards in order; a cursor's shard was read in part).
            if let (Some(c), Some(s)) = (after, s)
                && s < c.shard
            {
                continue;
            }
            let mut subjects = self
                .store
                .stream()
                .info_with_subjects(filter(s))
                .await
                .map_err(|e| Error::Nats(format!("actors: {e}")))?;
            // One shard's subjects, sorted: a page ends at a place the next can start from.
            let mut rows = Vec::new();
            while let Some(entry) = subjects.next().await {
                let (subject, records) = entry.map_err(|e| Error::Nats(format!("actors: {e}")))?;
                let Some((shard, actor)) = self.names.actor_of(&subject) else {
                    continue;
                };
                let actor = format!("{}/{}", actor.kind, actor.id);
                if after.is_some_and(|c| (shard, actor.as_str()) <= (c.shard, c.actor.as_str())) {
                    continue;
                }
                rows.push(ActorRow {
                    actor,
                    records,
                    shard,
                });
            }
            rows.sort_unstable_by(|a, b| (a.shard, &a.actor).cmp(&(b.shard, &b.actor)));
            for row in rows {
                if out.len() == limit {
                    more = true;
                    break 'shards;
                }
                out.push(row);
            }
        }
        let next = more
            .then(|| out.last().map(|r| format!("{}/{}", r.shard, r.actor)))
            .flatten();
        Ok(ActorList {
            actors: out,
            more,
            next,
        })
    }
}

/// What `actors` lists: rows kept compact (a million of them printed as JSON values first took
/// over a kilobyte each), printed by [`render::actors`]. Fields in the order JSON output had them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ActorList {
    /// The actors found, at most the limit.
    pub actors: Vec<ActorRow>,
    /// True when there are more than the limit.
    pub more: bool,
    /// With `more`: the cursor (`SHARD/KIND/ID` of the last row) `--after` takes for the next page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// Where a page of `actors` starts: after this actor of this shard (shards in order, each
/// shard's actors sorted by `KIND/ID`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// The shard.
    pub shard: u32,
    /// `KIND/ID`.
    pub actor: String,
}

impl std::str::FromStr for Cursor {
    type Err = Error;

    /// `SHARD/KIND/ID`, as `next` gives it.
    fn from_str(text: &str) -> Result<Self> {
        let bad = || {
            Error::Config(format!(
                "--after {text:?}: expected SHARD/KIND/ID, as a page's `next` gives it"
            ))
        };
        let (shard, actor) = text.split_once('/').ok_or_else(bad)?;
        let shard = shard.parse().map_err(|_| bad())?;
        parse_actor(actor).map_err(|_| bad())?;
        Ok(Self {
            shard,
            actor: actor.to_owned(),
        })
    }
}

/// One actor of [`ActorList`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ActorRow {
    /// `KIND/ID`.
    pub actor: String,
    /// Records on its subject.
    pub records: usize,
    /// Its shard.
    pub shard: u32,
}

fn unknown(actor: &ActorRef, names: &Names) -> Error {
    Error::Config(format!(
        "no actor {}/{} in the event stream {}: it has no record (never commanded, or another prefix)",
        actor.kind,
        actor.id,
        names.event_stream()
    ))
}

#[cfg(test)]
#[path = "inspect/tests.rs"]
mod tests;
