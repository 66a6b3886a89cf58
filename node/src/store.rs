//! The event log: one JetStream subject per actor (`{prefix}.ev.{shard}.{kind}.{token}`), the only
//! durable state of an actor. Every append carries the expected last sequence of the actor's subject, so
//! a stale owner's write is refused by JetStream (at most one writer per actor). Every
//! [`SNAPSHOT_EVERY`]th record also carries the folded state, and every record points at the last one
//! that did, so loading an actor reads its last record and replays at most that many records.

use crate::error::{Error, Result};
use aether_core::protocol::{ActorRef, Names};
use aether_core::timers::Timer;
use async_nats::jetstream::{self, stream};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

mod markers;
mod size;
pub use markers::MARKER_BATCH;
pub use size::{COMPACT_STATE_BYTES, compact_small, json_size, state_size};

/// A record carries a snapshot of the state every this many records (unless an app kind says
/// otherwise).
pub const SNAPSHOT_EVERY: u64 = aether_core::protocol::app::DEFAULT_SNAPSHOT_EVERY;
/// Longest an actor's replay may take before the request fails (and may be retried).
pub const REPLAY_TIMEOUT: Duration = Duration::from_secs(10);
/// Command ids an actor remembers for idempotent retries.
pub const RECENT_COMMANDS: usize = 64;
/// In a record's own snapshot, the sequence of that record (not known before it lands).
pub const THIS_RECORD: u64 = u64::MAX;
/// Records read per direct-get request when an actor is rebuilt from the log.
pub const REPLAY_BATCH: usize = 256;
/// Up to this many records to replay are read one direct get each (no subscription of their own).
const FEW_RECORDS: u64 = 4;

/// JetStream's "rollup failed" (10111): the answer to [`EventStore::seen`] when the id is new.
fn refused_rollup(e: &jetstream::context::PublishError) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<jetstream::Error>())
        .is_some_and(|j| j.error_code() == jetstream::ErrorCode::STREAM_ROLLUP_FAILED)
}

/// One record on an actor's subject: the events of one command.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Record format version.
    pub v: u16,
    /// Command id, when the caller gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<String>,
    /// The command's events.
    pub events: Vec<Value>,
    /// Number of records of the actor including this one.
    pub version: u64,
    /// Stream sequence of the last record that carries a snapshot (0: none, replay from the start).
    #[serde(default)]
    pub base: u64,
    /// The state after this record, every [`SNAPSHOT_EVERY`] records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<Snapshot>,
    /// Messages to other actors, sent once this record landed (the outbox).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub send: Vec<Outgoing>,
    /// Sends of earlier records whose reply this record holds: delivered, not sent again; each
    /// stays in the outbox, marked, until its receiver has released it ([`Record::released`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delivered: Vec<String>,
    /// What the command's decide answered for its caller (app kinds): kept so that a send applied
    /// here is answered the same however often it arrives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<Value>,
    /// Send ids this actor forgets: as a receiver, sends whose sender has recorded their delivery
    /// (out of [`Snapshot::inbox`]); as a sender, delivered sends their receiver has released (out
    /// of [`Snapshot::outbox`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub released: Vec<String>,
    /// Timers this record sets (replacing any of the same name), after [`Record::cancel`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timers: Vec<Timer>,
    /// Names of timers this record removes (cancelled, or a one-shot timer fired).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cancel: Vec<String>,
}

impl Record {
    /// A record of the current format.
    #[must_use]
    pub fn new(cmd: Option<String>, events: Vec<Value>, version: u64, base: u64) -> Self {
        Self {
            v: 1,
            cmd,
            events,
            version,
            base,
            snapshot: None,
            send: Vec::new(),
            delivered: Vec::new(),
            reply: None,
            released: Vec::new(),
            timers: Vec::new(),
            cancel: Vec::new(),
        }
    }
}

/// A message in an actor's outbox, from the record that sent it until the record that holds its reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outgoing {
    /// Its command id at the receiver: [`aether_core::protocol::app::send_id`].
    pub id: String,
    /// The receiver.
    pub actor: ActorRef,
    /// The command.
    pub command: Value,
    /// Its reply is recorded; kept until the receiver has released it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delivered: bool,
    /// The W3C `traceparent` of the decision that sent it (traces on): its delivery joins that
    /// trace, also after a crash or a move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

/// A send this actor applied, kept until its sender has recorded the delivery and released it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Inbound {
    /// The send's command id.
    pub id: String,
    /// What the decide answered, given again to a repeated delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<Value>,
}

/// Folded state inside a record, and inside migration transfers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The behaviour's state, shared with the replies that carry it; read from a record as its
    /// text (parsed when first used).
    #[serde(deserialize_with = "aether_core::protocol::SharedJson::deserialize_text")]
    pub state: aether_core::protocol::SharedJson,
    /// Recent command ids, oldest first.
    #[serde(default)]
    pub recent: Vec<String>,
    /// The stream sequence of each recent command's record (same order; 0: not known), where a
    /// retry finds the reply it is answered with. [`THIS_RECORD`] in a record's own snapshot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_at: Vec<u64>,
    /// Sent messages not released by their receivers yet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outbox: Vec<Outgoing>,
    /// Sends applied here and not released by their senders yet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inbox: Vec<Inbound>,
    /// The actor's timers, sorted by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timers: Vec<Timer>,
}

impl Snapshot {
    /// The state of an actor with no records.
    #[must_use]
    pub fn initial(state: Value) -> Self {
        Self {
            state: state.into(),
            recent: Vec::new(),
            recent_at: Vec::new(),
            outbox: Vec::new(),
            inbox: Vec::new(),
            timers: Vec::new(),
        }
    }

    /// Remembers a command id and its record's sequence, forgetting the oldest beyond
    /// [`RECENT_COMMANDS`]: returns the id forgotten.
    pub fn remember(&mut self, cmd: String, seq: u64) -> Option<String> {
        self.recent_at.resize(self.recent.len(), 0);
        let forgotten = (self.recent.len() >= RECENT_COMMANDS).then(|| {
            self.recent_at.remove(0);
            self.recent.remove(0)
        });
        self.recent.push(cmd);
        self.recent_at.push(seq);
        forgotten
    }

    /// The sequence of the record of recent command `id`: `None` when not recent, `Some(0)` when
    /// not known.
    #[must_use]
    pub fn recent_seq(&self, id: &str) -> Option<u64> {
        let i = self.recent.iter().position(|c| c == id)?;
        Some(self.recent_at.get(i).copied().unwrap_or(0))
    }

    /// A snapshot read from the record at `seq`: its own command's entry names that record.
    #[must_use]
    fn read_at(mut self, seq: u64) -> Self {
        for at in &mut self.recent_at {
            if *at == THIS_RECORD {
                *at = seq;
            }
        }
        self
    }

    /// A copy of everything but the state (which is `null`): the start of a record's snapshot.
    #[must_use]
    pub fn clone_without_state(&self) -> Self {
        Self {
            state: Value::Null.into(),
            recent: self.recent.clone(),
            recent_at: self.recent_at.clone(),
            outbox: self.outbox.clone(),
            inbox: self.inbox.clone(),
            timers: self.timers.clone(),
        }
    }

    /// This snapshot (as before `record`) after `record`, with the state `next`: what `record`
    /// carries when it is one of the records with a snapshot.
    #[must_use]
    pub fn after(mut self, record: &Record, next: &aether_core::protocol::SharedJson) -> Self {
        let _ = self.absorb(record, THIS_RECORD);
        self.state = next.clone();
        self
    }

    /// Bytes (JSON) of what the actor keeps besides its state: recent command ids, outbox, inbox.
    /// They count against the state limit, since snapshot records and transfers carry them.
    #[must_use]
    pub fn extras_bytes(&self) -> usize {
        let ids: usize = self.recent.iter().map(|r| r.len() + 3 + 12).sum();
        let out: usize = self
            .outbox
            .iter()
            .map(|o| {
                o.id.len()
                    + o.actor.id.len()
                    + o.actor.kind.len()
                    + 64
                    + o.trace.as_ref().map_or(0, |t| t.len() + 12)
                    + json_size(&o.command)
            })
            .sum();
        let inb: usize = self
            .inbox
            .iter()
            .map(|i| i.id.len() + 32 + i.reply.as_ref().map_or(0, json_size))
            .sum();
        let timers: usize = self
            .timers
            .iter()
            .map(|t| t.name.len() + 64 + json_size(&t.command))
            .sum();
        ids + out + inb + timers
    }

    /// True when the actor has work nobody will ask for: sends to deliver, releases owed, timers.
    #[must_use]
    pub fn has_pending(&self) -> bool {
        !self.outbox.is_empty() || !self.timers.is_empty()
    }

    /// Folds what a record (that landed at `seq`) changes besides the state: its command id, its
    /// sends, the deliveries and releases it records. Returns the command id it forgot, if any.
    pub fn absorb(&mut self, r: &Record, seq: u64) -> Option<String> {
        self.outbox.extend(r.send.iter().cloned());
        for o in &mut self.outbox {
            if r.delivered.contains(&o.id) {
                o.delivered = true;
            }
        }
        if !r.released.is_empty() {
            self.outbox.retain(|o| !r.released.contains(&o.id));
            self.inbox.retain(|i| !r.released.contains(&i.id));
        }
        if !r.timers.is_empty() || !r.cancel.is_empty() {
            aether_core::timers::apply(&mut self.timers, &r.timers, &r.cancel);
        }
        if let Some(cmd) = &r.cmd {
            if aether_core::protocol::app::is_send_id(cmd) {
                if !self.inbox.iter().any(|i| &i.id == cmd) {
                    self.inbox.push(Inbound {
                        id: cmd.clone(),
                        reply: r.reply.clone(),
                    });
                }
            } else {
                return self.remember(cmd.clone(), seq);
            }
        }
        None
    }
}

/// An actor's log position and state, as loaded: the last snapshot and the events after it, which
/// the caller folds with the actor's kind (in process, or by the app container).
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded {
    /// The last snapshot's state (or the initial state) and the recent commands up to the end.
    pub snapshot: Snapshot,
    /// Number of records.
    pub version: u64,
    /// Stream sequence of the last record (0: none).
    pub seq: u64,
    /// Stream sequence of the last record carrying a snapshot.
    pub base: u64,
    /// Events of the records after the snapshot, oldest first, not folded into `snapshot.state`.
    pub unfolded: Vec<Value>,
}

/// Handle on the event stream.
#[derive(Clone, Debug)]
pub struct EventStore {
    js: jetstream::Context,
    stream: stream::Stream,
    names: Names,
    compact: bool,
}

impl EventStore {
    /// Opens (creating if needed) the event stream of `names`.
    pub async fn open(js: jetstream::Context, names: Names, replicas: usize) -> Result<Self> {
        let stream = js
            .get_or_create_stream(stream::Config {
                name: names.event_stream(),
                subjects: vec![names.event_subjects()],
                allow_direct: true,
                num_replicas: replicas,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .map_err(|e| Error::Nats(format!("event stream {}: {e}", names.event_stream())))?;
        Ok(Self {
            js,
            stream,
            names,
            compact: false,
        })
    }

    /// The event stream of `names` as it is: an error when it does not exist (read-only tools
    /// never create it).
    pub async fn existing(js: jetstream::Context, names: Names) -> Result<Self> {
        let stream = js.get_stream(names.event_stream()).await.map_err(|e| {
            Error::Config(format!(
                "no event stream {} on this NATS ({e}): is the subject prefix right?",
                names.event_stream()
            ))
        })?;
        Ok(Self {
            js,
            stream,
            names,
            compact: false,
        })
    }

    /// The stream.
    #[must_use]
    pub fn stream(&self) -> &stream::Stream {
        &self.stream
    }

    /// Every record of `subject` the stream still holds, oldest first, with its sequence.
    pub async fn log(&self, subject: &str) -> Result<Vec<(u64, Record)>> {
        let Some((seq, last)) = self.last(subject).await? else {
            return Ok(Vec::new());
        };
        let mut out = self
            .records(subject, 1, seq.saturating_sub(1), last.version)
            .await?;
        out.push((seq, last));
        Ok(out)
    }

    /// With `on`, every record that carries a snapshot purges the actor's records before it
    /// (`--compact-events`): the log keeps each actor's last snapshot and what follows.
    #[must_use]
    pub fn compacting(mut self, on: bool) -> Self {
        self.compact = on;
        self
    }

    /// The subject of an actor.
    #[must_use]
    pub fn subject(&self, shard: u32, actor: &ActorRef) -> String {
        self.names.actor_subject(shard, actor)
    }

    /// Appends a record if the actor's last sequence is still `expected`; returns the new sequence.
    /// `Err(Error::Fenced)` when another writer got there first; `Err(Error::Duplicate)` when the
    /// stream already holds a record of this command id (JetStream's duplicate window): nothing was
    /// appended, the command's effect is in the log already.
    pub async fn append(&self, subject: &str, expected: u64, record: &Record) -> Result<u64> {
        let appended = self.append_only(subject, expected, record).await;
        if let Ok(seq) = appended
            && self.compact
            && record.snapshot.is_some()
        {
            // Off the request's path: a purge that fails leaves more log than needed, nothing else.
            let (stream, subject) = (self.stream.clone(), subject.to_owned());
            tokio::spawn(async move {
                if let Err(e) = stream.purge().filter(&subject).sequence(seq).await {
                    tracing::warn!(%subject, error = %e, "compaction failed");
                }
            });
        }
        appended
    }

    async fn append_only(&self, subject: &str, expected: u64, record: &Record) -> Result<u64> {
        let payload = serde_json::to_vec(record).map_err(|e| Error::Internal(e.to_string()))?;
        let mut msg = jetstream::message::PublishMessage::build()
            .payload(payload.into())
            .expected_last_subject_sequence(expected);
        if let Some(cmd) = &record.cmd {
            msg = msg.message_id(format!("{subject}:{cmd}"));
        }
        let ack = async { self.js.send_publish(subject.to_owned(), msg).await?.await }.await;
        match ack {
            Ok(ack) if ack.duplicate => Err(Error::Duplicate(ack.sequence)),
            Ok(ack) => Ok(ack.sequence),
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                Err(Error::Fenced(format!("{subject}: {e}")))
            }
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::MaxPayloadExceeded => {
                Err(Error::TooLarge(e.to_string()))
            }
            Err(e) if is_full(&e.to_string()) => Err(Error::StoreFull(e.to_string())),
            Err(e) => {
                // The write may have landed before the ack was lost: the log is the truth.
                match self.last(subject).await {
                    Ok(Some((seq, last))) if last.cmd.is_some() && last.cmd == record.cmd => {
                        Ok(seq)
                    }
                    _ => Err(Error::Nats(format!("append to {subject}: {e}"))),
                }
            }
        }
    }

    /// JetStream's duplicate window of the event stream (whoever created it chose it).
    #[must_use]
    pub fn duplicate_window(&self) -> Duration {
        self.stream.cached_info().config.duplicate_window
    }

    /// Whether the stream's duplicate window still holds a record of command `cmd` on `subject`:
    /// its sequence, or `None`. Asked by a publish that nothing stores: it carries the command's
    /// message id and a `Nats-Rollup` header the stream refuses. nats-server looks the id up first
    /// (a duplicate is acknowledged with the first record's sequence) and refuses the rollup after
    /// (10111) before anything is stored or the id staged, alone or clustered (2.15; the
    /// `store_seen` test checks both).
    pub async fn seen(&self, subject: &str, cmd: &str) -> Result<Option<u64>> {
        let msg = jetstream::message::PublishMessage::build()
            .message_id(format!("{subject}:{cmd}"))
            .header("Nats-Rollup", "aether-seen");
        let ack = async { self.js.send_publish(subject.to_owned(), msg).await?.await }.await;
        match ack {
            Ok(ack) if ack.duplicate => Ok(Some(ack.sequence)),
            Ok(ack) => Err(Error::Internal(format!(
                "{subject}: the stream stored a probe for {cmd} at {} (it must refuse rollups)",
                ack.sequence
            ))),
            Err(e) if refused_rollup(&e) => Ok(None),
            Err(e) => Err(Error::Nats(format!("ask the stream about {cmd}: {e}"))),
        }
    }

    /// The last record of a subject and its sequence.
    pub async fn last(&self, subject: &str) -> Result<Option<(u64, Record)>> {
        match self.stream.direct_get_last_for_subject(subject).await {
            Ok(m) => {
                let r: Record = serde_json::from_slice(&m.payload)
                    .map_err(|e| Error::Corrupt(format!("{subject}@{}: {e}", m.sequence)))?;
                Ok(Some((m.sequence, r)))
            }
            Err(e) if matches!(e.kind(), stream::DirectGetErrorKind::NotFound) => Ok(None),
            Err(e) => Err(Error::Nats(format!("last record of {subject}: {e}"))),
        }
    }

    /// Loads an actor: its last snapshot, then the records after it (read in batches by direct
    /// get: no consumer, so no server limit on consumers is ever met however many actors load).
    pub async fn load(&self, subject: &str, initial: Value) -> Result<Loaded> {
        let Some((seq, last)) = self.last(subject).await? else {
            return Ok(Loaded {
                snapshot: Snapshot::initial(initial),
                version: 0,
                seq: 0,
                base: 0,
                unfolded: Vec::new(),
            });
        };
        if let Some(snapshot) = last.snapshot {
            return Ok(Loaded {
                snapshot: snapshot.read_at(seq),
                version: last.version,
                seq,
                base: seq,
                unfolded: Vec::new(),
            });
        }
        let (mut snapshot, mut version, start) = if last.base == 0 {
            (Snapshot::initial(initial), 0, 1)
        } else {
            let base = self.record_at(last.base, subject).await?;
            let snap = base.snapshot.ok_or_else(|| {
                Error::Corrupt(format!(
                    "{subject}@{}: base record has no snapshot",
                    last.base
                ))
            })?;
            (snap.read_at(last.base), base.version, last.base + 1)
        };
        let mut unfolded = Vec::new();
        // The records between the snapshot and the last one (which is read already).
        let between = last.version.saturating_sub(version + 1);
        let records = if between == 0 {
            Vec::new()
        } else {
            // A replay that stalls (a server going away) must not hold the shard forever.
            tokio::time::timeout(
                REPLAY_TIMEOUT,
                self.records(subject, start, seq - 1, between),
            )
            .await
            .map_err(|_| {
                Error::Nats(format!(
                    "replay of {subject} took longer than {REPLAY_TIMEOUT:?}"
                ))
            })??
        };
        let last_base = last.base;
        for (at, r) in records.into_iter().chain([(seq, last)]) {
            if r.version != version + 1 {
                // A record missing (purged, deleted): folding on would give a wrong state.
                return Err(Error::Corrupt(format!(
                    "{subject}@{at}: record {} follows record {version}: the log has a gap",
                    r.version
                )));
            }
            let _ = snapshot.absorb(&r, at);
            unfolded.extend(r.events);
            version = r.version;
        }
        Ok(Loaded {
            snapshot,
            version,
            seq,
            base: last_base,
            unfolded,
        })
    }

    /// The records of `subject` from stream sequence `from` through `to` (`expected` of them):
    /// a few by one direct get each, more by batched direct get (nats-server 2.11+), where each
    /// request answers up to [`REPLAY_BATCH`] messages, then an end-of-batch status (204).
    async fn records(
        &self,
        subject: &str,
        from: u64,
        to: u64,
        expected: u64,
    ) -> Result<Vec<(u64, Record)>> {
        if expected <= FEW_RECORDS {
            let mut out = Vec::new();
            let mut next = from;
            while next <= to {
                let m = match self
                    .stream
                    .direct_get_next_for_subject(subject, Some(next))
                    .await
                {
                    Ok(m) => m,
                    Err(e) if matches!(e.kind(), stream::DirectGetErrorKind::NotFound) => break,
                    Err(e) => return Err(Error::Nats(format!("replay {subject}: {e}"))),
                };
                if m.sequence > to {
                    break;
                }
                let r: Record = serde_json::from_slice(&m.payload)
                    .map_err(|e| Error::Corrupt(format!("{subject}@{}: {e}", m.sequence)))?;
                out.push((m.sequence, r));
                next = m.sequence + 1;
            }
            return Ok(out);
        }
        let client = self.js.client();
        let api = format!("$JS.API.DIRECT.GET.{}", self.names.event_stream());
        let mut out = Vec::new();
        let mut next = from;
        while next <= to {
            let inbox = client.new_inbox();
            let mut answers = client
                .subscribe(inbox.clone())
                .await
                .map_err(|e| Error::Nats(format!("replay {subject}: {e}")))?;
            let ask =
                serde_json::json!({ "seq": next, "next_by_subj": subject, "batch": REPLAY_BATCH });
            client
                .publish_with_reply(api.clone(), inbox, ask.to_string().into())
                .await
                .map_err(|e| Error::Nats(format!("replay {subject}: {e}")))?;
            let mut got = 0;
            while let Some(msg) = answers.next().await {
                if let Some(status) = msg.status {
                    match status.as_u16() {
                        204 => break,
                        404 => break,
                        code => {
                            return Err(Error::Nats(format!(
                                "replay {subject}: direct get answered {code} {}",
                                msg.description.unwrap_or_default()
                            )));
                        }
                    }
                }
                let at = msg
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Nats-Sequence"))
                    .and_then(|v| v.as_str().parse::<u64>().ok())
                    .ok_or_else(|| {
                        Error::Nats(format!("replay {subject}: an answer without a sequence"))
                    })?;
                got += 1;
                next = at + 1;
                if at > to {
                    next = to + 1;
                    break;
                }
                let r: Record = serde_json::from_slice(&msg.payload)
                    .map_err(|e| Error::Corrupt(format!("{subject}@{at}: {e}")))?;
                out.push((at, r));
                if at == to {
                    break;
                }
            }
            // Unsubscribes: nothing of this request is wanted any more.
            drop(answers);
            if got == 0 {
                // Nothing more on the subject (the caller finds any gap).
                break;
            }
        }
        Ok(out)
    }

    /// The record at stream sequence `seq` of `subject`.
    pub async fn record_at(&self, seq: u64, subject: &str) -> Result<Record> {
        let m = self
            .stream
            .direct_get(seq)
            .await
            .map_err(|e| Error::Nats(format!("{subject}@{seq}: {e}")))?;
        serde_json::from_slice(&m.payload)
            .map_err(|e| Error::Corrupt(format!("{subject}@{seq}: {e}")))
    }
}

/// True for JetStream's answers to an append the stream or account has no room for: the stream's
/// `max_bytes`/`max_msgs` with discard-new, or the account's or server's storage limit.
fn is_full(error: &str) -> bool {
    let e = error.to_lowercase();
    [
        "maximum bytes exceeded",
        "maximum messages exceeded",
        "insufficient resources",
        "resource limits exceeded",
    ]
    .iter()
    .any(|m| e.contains(m))
}
