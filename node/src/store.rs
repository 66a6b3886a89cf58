//! The event log: one JetStream subject per actor (`{prefix}.ev.{shard}.{kind}.{token}`), the only
//! durable state of an actor. Every append carries the expected last sequence of the actor's subject, so
//! a stale owner's write is refused by JetStream (at most one writer per actor). Every
//! [`SNAPSHOT_EVERY`]th record also carries the folded state, and every record points at the last one
//! that did, so loading an actor reads its last record and replays at most that many records.

use crate::error::{Error, Result};
use aether_core::protocol::{ActorRef, Names};
use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

/// A record carries a snapshot of the state every this many records (unless an app kind says
/// otherwise).
pub const SNAPSHOT_EVERY: u64 = aether_core::protocol::app::DEFAULT_SNAPSHOT_EVERY;
/// Longest an actor's replay may take before the request fails (and may be retried).
pub const REPLAY_TIMEOUT: Duration = Duration::from_secs(10);
/// Command ids an actor remembers for idempotent retries.
pub const RECENT_COMMANDS: usize = 64;

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
    /// Sends of earlier records whose reply this record holds: delivered, not sent again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delivered: Vec<String>,
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
}

/// Folded state inside a record, and inside migration transfers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The behaviour's state.
    pub state: Value,
    /// Recent command ids, oldest first.
    #[serde(default)]
    pub recent: Vec<String>,
    /// Sent messages whose reply is not recorded yet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outbox: Vec<Outgoing>,
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

    /// Loads an actor: its last snapshot, then the records after it, folded with `apply`.
    pub async fn load(&self, subject: &str, initial: Value) -> Result<Loaded> {
        let Some((seq, last)) = self.last(subject).await? else {
            return Ok(Loaded {
                snapshot: Snapshot {
                    state: initial,
                    recent: Vec::new(),
                    outbox: Vec::new(),
                },
                version: 0,
                seq: 0,
                base: 0,
                unfolded: Vec::new(),
            });
        };
        if let Some(snapshot) = last.snapshot {
            return Ok(Loaded {
                snapshot,
                version: last.version,
                seq,
                base: seq,
                unfolded: Vec::new(),
            });
        }
        let (mut snapshot, mut version, start) = if last.base == 0 {
            (
                Snapshot {
                    state: initial,
                    recent: Vec::new(),
                    outbox: Vec::new(),
                },
                0,
                1,
            )
        } else {
            let base = self.record_at(last.base, subject).await?;
            let snap = base.snapshot.ok_or_else(|| {
                Error::Corrupt(format!(
                    "{subject}@{}: base record has no snapshot",
                    last.base
                ))
            })?;
            (snap, base.version, last.base + 1)
        };
        let consumer = self
            .stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: subject.to_owned(),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| Error::Nats(format!("replay {subject}: {e}")))?;
        let mut unfolded = Vec::new();
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| Error::Nats(format!("replay {subject}: {e}")))?;
        // A replay that stalls (a lost consumer, a server going away) must not hold the shard forever.
        let replay_deadline = tokio::time::Instant::now() + REPLAY_TIMEOUT;
        while let Some(msg) = tokio::time::timeout_at(replay_deadline, messages.next())
            .await
            .map_err(|_| {
                Error::Nats(format!(
                    "replay of {subject} took longer than {REPLAY_TIMEOUT:?}"
                ))
            })?
        {
            let msg = msg.map_err(|e| Error::Nats(format!("replay {subject}: {e}")))?;
            let info = msg
                .info()
                .map_err(|e| Error::Nats(format!("replay {subject}: {e}")))?;
            let at = info.stream_sequence;
            if at > seq {
                break;
            }
            let r: Record = serde_json::from_slice(&msg.payload)
                .map_err(|e| Error::Corrupt(format!("{subject}@{at}: {e}")))?;
            if r.version != version + 1 {
                // A record missing (purged, deleted): folding on would give a wrong state.
                return Err(Error::Corrupt(format!(
                    "{subject}@{at}: record {} follows record {version}: the log has a gap",
                    r.version
                )));
            }
            unfolded.extend(r.events);
            snapshot.outbox.extend(r.send);
            if !r.delivered.is_empty() {
                snapshot.outbox.retain(|o| !r.delivered.contains(&o.id));
            }
            if let Some(cmd) = r.cmd {
                remember(&mut snapshot.recent, cmd);
            }
            version = r.version;
            if at == seq {
                break;
            }
        }
        if version != last.version {
            return Err(Error::Corrupt(format!(
                "{subject}: replay reached record {version}, the last is {}: the log has a gap",
                last.version
            )));
        }
        Ok(Loaded {
            snapshot,
            version,
            seq,
            base: last.base,
            unfolded,
        })
    }

    async fn record_at(&self, seq: u64, subject: &str) -> Result<Record> {
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

/// Remembers a command id, forgetting the oldest beyond [`RECENT_COMMANDS`].
pub fn remember(recent: &mut Vec<String>, cmd: String) {
    if recent.len() >= RECENT_COMMANDS {
        recent.remove(0);
    }
    recent.push(cmd);
}
