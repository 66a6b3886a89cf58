//! The wire protocol: every message between clients, nodes and the operator, as versioned JSON.
//!
//! Each message carries `"v": 1`. [`decode`] turns bytes into a message or a typed [`Error`]
//! (`Malformed`, `UnsupportedVersion`), never a panic; receivers answer such bytes with an
//! [`ErrorReply`] and count them. Subjects, the KV bucket and the stream are named by [`Names`].
//! `docs/PROTOCOL.md` is the reference for other languages.

use crate::crd::MovePhase;
use crate::error::{Error, Result};
use crate::shardmap::ShardMap;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The protocol version this build speaks.
pub const VERSION: u16 = 1;

/// Messages that carry a version field.
pub trait Versioned {
    /// The message's `v` field.
    fn version(&self) -> u16;
}

macro_rules! versioned {
    ($($t:ty),*) => {$(
        impl Versioned for $t {
            fn version(&self) -> u16 {
                self.v
            }
        }
    )*};
}

versioned!(
    Request,
    Reply,
    Transfer,
    TransferAck,
    Progress,
    NodeEvent,
    PlanMessage
);

/// Serialises a message.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(msg).map_err(|e| Error::Malformed(e.to_string()))
}

/// Parses a message; any bytes give a message or a typed error.
pub fn decode<T: DeserializeOwned + Versioned>(bytes: &[u8]) -> Result<T> {
    match serde_json::from_slice::<T>(bytes) {
        Ok(msg) if msg.version() == VERSION => Ok(msg),
        Ok(msg) => Err(Error::UnsupportedVersion {
            got: msg.version().into(),
            supported: VERSION,
        }),
        Err(e) => {
            // A message of another version may not fit this version's shape: say so rather than
            // "malformed" when its version field is readable.
            #[derive(Deserialize)]
            struct Probe {
                v: u64,
            }
            match serde_json::from_slice::<Probe>(bytes) {
                Ok(p) if p.v != u64::from(VERSION) => Err(Error::UnsupportedVersion {
                    got: p.v,
                    supported: VERSION,
                }),
                _ => Err(Error::Malformed(e.to_string())),
            }
        }
    }
}

/// Opaque bytes, base64 in JSON.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Bytes(pub Vec<u8>);

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
        STANDARD
            .decode(text.as_bytes())
            .map(Bytes)
            .map_err(serde::de::Error::custom)
    }
}

/// Which actor: a kind (the behaviour) and an id (any UTF-8). The shard is `shard_of(id)`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ActorRef {
    /// Behaviour name, `[a-z0-9-]{1,32}`.
    pub kind: String,
    /// Actor id, any UTF-8.
    pub id: String,
}

impl ActorRef {
    /// An actor reference.
    pub fn new(kind: impl Into<String>, id: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            id: id.into(),
        }
    }

    /// Checks the kind's syntax (it becomes a subject token).
    pub fn validate(&self) -> Result<()> {
        let ok = !self.kind.is_empty()
            && self.kind.len() <= 32
            && self
                .kind
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(())
        } else {
            Err(Error::Malformed(format!(
                "actor kind {:?} must match [a-z0-9-]{{1,32}}",
                self.kind
            )))
        }
    }
}

/// What a request asks of an actor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Op {
    /// Return the state; appends nothing.
    Read,
    /// Run a command; the events it produces are in JetStream before the reply.
    Command {
        /// The command, in the behaviour's own JSON shape.
        command: serde_json::Value,
    },
}

/// A request to an actor, sent to any node (`{prefix}.req`) or to one node (`{prefix}.node.{pod}.req`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Protocol version.
    pub v: u16,
    /// Command id: a retry with the same id is answered from the log, not applied twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Target actor.
    pub actor: ActorRef,
    /// Operation.
    #[serde(flatten)]
    pub op: Op,
    /// Times the request was forwarded between nodes (at most once).
    #[serde(default)]
    pub hops: u8,
    /// Epoch of the sender's plan (0: unknown).
    #[serde(default)]
    pub epoch: u64,
}

impl Request {
    /// A request of the current version.
    pub fn new(actor: ActorRef, op: Op, id: Option<String>) -> Self {
        Self {
            v: VERSION,
            id,
            actor,
            op,
            hops: 0,
            epoch: 0,
        }
    }
}

/// The answer to a [`Request`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// Protocol version.
    pub v: u16,
    /// Success or an error the caller can act on.
    #[serde(flatten)]
    pub outcome: Outcome,
}

impl Reply {
    /// A success.
    pub fn ok(ok: ActorReply) -> Self {
        Self {
            v: VERSION,
            outcome: Outcome::Ok(ok),
        }
    }

    /// An error.
    pub fn error(err: ErrorReply) -> Self {
        Self {
            v: VERSION,
            outcome: Outcome::Error(err),
        }
    }
}

/// Success or error.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    /// The actor's answer.
    Ok(ActorReply),
    /// Why not.
    Error(ErrorReply),
}

/// An actor's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActorReply {
    /// Number of events of the actor after the request.
    pub version: u64,
    /// The actor's state after the request.
    pub state: serde_json::Value,
    /// Node that answered.
    pub node: String,
}

/// Error codes a caller can match on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ErrorCode {
    /// The bytes were not a message of the protocol.
    Malformed,
    /// The message's protocol version is not spoken here.
    UnsupportedVersion,
    /// Larger than the node accepts.
    TooLarge,
    /// No behaviour of that kind.
    UnknownKind,
    /// The actor's behaviour refused the command.
    Rejected,
    /// This node's plan says another node owns the actor: resend there (`owner`, `epoch`).
    Redirect,
    /// The actor is moving or its owner is unknown right now: retry after `retryAfterMs`.
    Unavailable,
    /// A message for an older plan epoch.
    StaleEpoch,
    /// Something failed inside the node; the request may be retried with the same command id.
    Internal,
}

/// An error reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorReply {
    /// What kind of error.
    pub code: ErrorCode,
    /// For people.
    pub message: String,
    /// Owner of the actor, for redirects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Epoch of the plan the answer is based on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// When to retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl ErrorReply {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            owner: None,
            epoch: None,
            retry_after_ms: None,
        }
    }

    /// The reply to a [`decode`] failure.
    #[must_use]
    pub fn from_decode(err: &Error) -> Self {
        let code = match err {
            Error::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            _ => ErrorCode::Malformed,
        };
        Self::new(code, err.to_string())
    }
}

/// One actor's captured state inside a [`Transfer`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorSnapshot {
    /// Which actor.
    pub actor: ActorRef,
    /// Number of events folded into `state`.
    pub version: u64,
    /// Stream sequence of the actor's last event (0: none): the destination's first append expects it.
    pub seq: u64,
    /// Serialised state.
    pub state: Bytes,
}

/// A chunk of a shard's actors, source -> destination (`{prefix}.node.{pod}.migrate`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// Protocol version.
    pub v: u16,
    /// Plan epoch the move belongs to; the destination refuses older ones.
    pub epoch: u64,
    /// Shard.
    pub shard: u32,
    /// Source pod.
    pub from: String,
    /// Chunk number, from 0.
    pub chunk: u32,
    /// True on the last chunk: the destination installs the actors, but does not serve them yet.
    pub last: bool,
    /// Actors in this chunk.
    pub actors: Vec<ActorSnapshot>,
    /// The commit, sent after the last chunk's ack (no actors): the source has given the shard up and
    /// the destination serves it from now on. Until then exactly one node, the source, serves it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub commit: bool,
}

/// First byte of a binary [`Transfer`]; JSON messages start with `{`.
pub const TRANSFER_MAGIC: u8 = 0xAE;

/// Fixed part of a binary [`Transfer`] before the source's name.
const TRANSFER_HEADER: usize = 1 + 1 + 1 + 8 + 4 + 4 + 2;

fn too_long(what: &str, len: usize) -> Error {
    Error::Malformed(format!("{what} too long: {len} bytes"))
}

/// Writes a binary [`Transfer`] actor by actor, each actor's state serialised straight into the
/// message (no copy per actor). Little-endian throughout (docs/PROTOCOL.md, "Binary transfer"):
/// `0xAE, v: u8, flags: u8 (1 last, 2 commit), epoch: u64, shard: u32, chunk: u32, from: u16 len +
/// UTF-8, actors: u32 count`, then per actor `kind: u8 len + UTF-8, id: u32 len + UTF-8, version: u64,
/// seq: u64, state: u32 len + bytes`.
#[derive(Debug)]
pub struct TransferWriter {
    out: Vec<u8>,
    count: u32,
}

impl TransferWriter {
    /// Offset of the flags byte.
    const FLAGS_AT: usize = 2;

    /// Starts a chunk; `capacity` is a hint of its final size in bytes.
    pub fn new(epoch: u64, shard: u32, from: &str, chunk: u32, capacity: usize) -> Result<Self> {
        let from_len =
            u16::try_from(from.len()).map_err(|_| too_long("source name", from.len()))?;
        let mut out = Vec::with_capacity(capacity.max(TRANSFER_HEADER + from.len() + 4));
        out.push(TRANSFER_MAGIC);
        // VERSION is 1: it fits the version byte.
        out.push(VERSION as u8);
        out.push(0);
        out.extend_from_slice(&epoch.to_le_bytes());
        out.extend_from_slice(&shard.to_le_bytes());
        out.extend_from_slice(&chunk.to_le_bytes());
        out.extend_from_slice(&from_len.to_le_bytes());
        out.extend_from_slice(from.as_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        Ok(Self { out, count: 0 })
    }

    /// Appends one actor; `state` writes its serialised state into the buffer it is given. When
    /// `state` fails, or a field is too long for the format, the actor is left out and the error
    /// returned.
    pub fn actor<E: std::fmt::Display>(
        &mut self,
        actor: &ActorRef,
        version: u64,
        seq: u64,
        state: impl FnOnce(&mut Vec<u8>) -> std::result::Result<(), E>,
    ) -> Result<()> {
        let kind =
            u8::try_from(actor.kind.len()).map_err(|_| too_long("actor kind", actor.kind.len()))?;
        let id = u32::try_from(actor.id.len()).map_err(|_| too_long("actor id", actor.id.len()))?;
        let start = self.out.len();
        self.out.push(kind);
        self.out.extend_from_slice(actor.kind.as_bytes());
        self.out.extend_from_slice(&id.to_le_bytes());
        self.out.extend_from_slice(actor.id.as_bytes());
        self.out.extend_from_slice(&version.to_le_bytes());
        self.out.extend_from_slice(&seq.to_le_bytes());
        let len_at = self.out.len();
        self.out.extend_from_slice(&0u32.to_le_bytes());
        if let Err(e) = state(&mut self.out) {
            self.out.truncate(start);
            return Err(Error::Malformed(format!(
                "state of {} {:?} not serialisable: {e}",
                actor.kind, actor.id
            )));
        }
        let len = self.out.len() - len_at - 4;
        let Ok(len32) = u32::try_from(len) else {
            self.out.truncate(start);
            return Err(too_long("actor state", len));
        };
        self.out[len_at..len_at + 4].copy_from_slice(&len32.to_le_bytes());
        self.count += 1;
        Ok(())
    }

    /// Bytes written so far.
    #[must_use]
    pub fn len(&self) -> usize {
        self.out.len()
    }

    /// True before anything is written (never: the header is written at once).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }

    /// Actors written so far.
    #[must_use]
    pub fn actors(&self) -> u32 {
        self.count
    }

    /// The finished message.
    #[must_use]
    pub fn finish(mut self, last: bool, commit: bool) -> Vec<u8> {
        self.out[Self::FLAGS_AT] = u8::from(last) | (u8::from(commit) << 1);
        let count_at = TRANSFER_HEADER + self.source_len();
        self.out[count_at..count_at + 4].copy_from_slice(&self.count.to_le_bytes());
        self.out
    }

    fn source_len(&self) -> usize {
        usize::from(u16::from_le_bytes([
            self.out[TRANSFER_HEADER - 2],
            self.out[TRANSFER_HEADER - 1],
        ]))
    }
}

/// A [`Transfer`] in its binary form (see [`TransferWriter`]).
pub fn encode_transfer(t: &Transfer) -> Result<Vec<u8>> {
    if t.v != VERSION {
        return Err(Error::UnsupportedVersion {
            got: t.v.into(),
            supported: VERSION,
        });
    }
    let size = TRANSFER_HEADER
        + t.from.len()
        + 4
        + t.actors
            .iter()
            .map(|a| 1 + a.actor.kind.len() + 4 + a.actor.id.len() + 16 + 4 + a.state.0.len())
            .sum::<usize>();
    let mut w = TransferWriter::new(t.epoch, t.shard, &t.from, t.chunk, size)?;
    for a in &t.actors {
        w.actor(&a.actor, a.version, a.seq, |out| {
            out.extend_from_slice(&a.state.0);
            Ok::<(), std::convert::Infallible>(())
        })?;
    }
    Ok(w.finish(t.last, t.commit))
}

/// Parses a [`Transfer`] in either form: binary (first byte [`TRANSFER_MAGIC`]) or JSON.
pub fn decode_transfer(bytes: &[u8]) -> Result<Transfer> {
    if bytes.first() != Some(&TRANSFER_MAGIC) {
        return decode(bytes);
    }
    let mut r = Reader { bytes, at: 1 };
    let v = r.u8()?;
    if u16::from(v) != VERSION {
        return Err(Error::UnsupportedVersion {
            got: v.into(),
            supported: VERSION,
        });
    }
    let flags = r.u8()?;
    if flags & !3 != 0 {
        return Err(Error::Malformed(format!(
            "binary transfer: unknown flags {flags:#04x}"
        )));
    }
    let epoch = r.u64()?;
    let shard = r.u32()?;
    let chunk = r.u32()?;
    let from_len = usize::from(r.u16()?);
    let from = r.text(from_len, "source name")?;
    let count = r.u32()? as usize;
    // Each actor takes at least 25 bytes: a count the rest cannot hold is refused before allocating.
    if count > (bytes.len() - r.at) / 25 {
        return Err(Error::Malformed(format!(
            "binary transfer: {count} actors do not fit in {} bytes",
            bytes.len() - r.at
        )));
    }
    let mut actors = Vec::with_capacity(count);
    for _ in 0..count {
        let kind_len = usize::from(r.u8()?);
        let kind = r.text(kind_len, "actor kind")?;
        let id_len = r.u32()? as usize;
        let id = r.text(id_len, "actor id")?;
        let version = r.u64()?;
        let seq = r.u64()?;
        let state_len = r.u32()? as usize;
        let state = r.take(state_len)?.to_vec();
        actors.push(ActorSnapshot {
            actor: ActorRef { kind, id },
            version,
            seq,
            state: Bytes(state),
        });
    }
    if r.at != bytes.len() {
        return Err(Error::Malformed(format!(
            "binary transfer: {} bytes after the last actor",
            bytes.len() - r.at
        )));
    }
    Ok(Transfer {
        v: VERSION,
        epoch,
        shard,
        from,
        chunk,
        last: flags & 1 != 0,
        actors,
        commit: flags & 2 != 0,
    })
}

/// A bounds-checked cursor over a binary message.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(Error::Malformed(format!(
                "binary transfer truncated: {n} bytes wanted at offset {}, {} there",
                self.at,
                self.bytes.len() - self.at
            )));
        };
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn text(&mut self, n: usize, what: &str) -> Result<String> {
        let at = self.at;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| {
            Error::Malformed(format!(
                "binary transfer: {what} at offset {at} is not UTF-8"
            ))
        })
    }
}

/// The destination's answer to a [`Transfer`] chunk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferAck {
    /// Protocol version.
    pub v: u16,
    /// Echo of the chunk's epoch.
    pub epoch: u64,
    /// Echo of the shard.
    pub shard: u32,
    /// Echo of the chunk number.
    pub chunk: u32,
    /// Installed actors, or why the chunk is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorReply>,
}

/// A node's report on one move, node -> operator (`{prefix}.progress`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// Protocol version.
    pub v: u16,
    /// Plan epoch.
    pub epoch: u64,
    /// Shard.
    pub shard: u32,
    /// Reporting pod.
    pub node: String,
    /// Transferring, Done or Failed.
    pub phase: MovePhase,
    /// Actors moved.
    #[serde(default)]
    pub actors: u32,
    /// Time the move took so far.
    #[serde(default)]
    pub duration_ms: u64,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Node lifecycle news, node -> operator (`{prefix}.nodes`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEvent {
    /// Protocol version.
    pub v: u16,
    /// Pod.
    pub node: String,
    /// What happened.
    pub event: NodeEventKind,
}

/// Node lifecycle events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum NodeEventKind {
    /// Joined NATS and read the plan.
    Up,
    /// Got SIGTERM: plan it out, it serves until its shards are gone.
    Leaving,
}

/// The plan as stored in the KV bucket (`{prefix}-plans`, key `plan`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanMessage {
    /// Protocol version.
    pub v: u16,
    /// Epoch; nodes ignore lower ones than they hold.
    pub epoch: u64,
    /// Number of shards.
    pub shards: u32,
    /// Members (pod and bucket).
    pub members: Vec<crate::plan::Member>,
    /// Owner bucket per shard.
    pub shard_map: ShardMap,
    /// Moves of this epoch.
    pub moves: Vec<crate::plan::Move>,
    /// Most moves in flight at once.
    pub max_concurrent: u32,
    /// Seconds a move may take.
    pub timeout_seconds: u32,
}

impl PlanMessage {
    /// The message for a plan.
    #[must_use]
    pub fn new(plan: &crate::plan::Plan, max_concurrent: u32, timeout_seconds: u32) -> Self {
        Self {
            v: VERSION,
            epoch: plan.epoch,
            shards: plan.shards,
            members: plan.members.clone(),
            shard_map: plan.shard_map.clone(),
            moves: plan.moves.clone(),
            max_concurrent,
            timeout_seconds,
        }
    }
}

/// Names of the NATS subjects, KV bucket and stream of one ShardPlan, from its subject prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    prefix: String,
}

impl Names {
    /// Names under `prefix` (`spec.nats.subjectPrefix`).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The KV bucket holding the plan.
    #[must_use]
    pub fn plan_bucket(&self) -> String {
        format!("{}-plans", self.prefix)
    }

    /// The key of the plan in [`Names::plan_bucket`].
    pub const PLAN_KEY: &'static str = "plan";

    /// The JetStream stream of actor events.
    #[must_use]
    pub fn event_stream(&self) -> String {
        format!("{}-events", self.prefix)
    }

    /// Subjects of the event stream.
    #[must_use]
    pub fn event_subjects(&self) -> String {
        format!("{}.ev.>", self.prefix)
    }

    /// Subject of one actor's events: `{prefix}.ev.{shard}.{kind}.{base64url(id)}`.
    #[must_use]
    pub fn actor_subject(&self, shard: u32, actor: &ActorRef) -> String {
        format!(
            "{}.ev.{shard}.{}.{}",
            self.prefix,
            actor.kind,
            encode_id(&actor.id)
        )
    }

    /// Filter for all events of a shard.
    #[must_use]
    pub fn shard_filter(&self, shard: u32) -> String {
        format!("{}.ev.{shard}.>", self.prefix)
    }

    /// Requests any node answers (queue group [`Names::NODE_QUEUE`]).
    #[must_use]
    pub fn any_node(&self) -> String {
        format!("{}.req", self.prefix)
    }

    /// Queue group of [`Names::any_node`].
    pub const NODE_QUEUE: &'static str = "nodes";

    /// Requests for one node.
    #[must_use]
    pub fn node_requests(&self, pod: &str) -> String {
        format!("{}.node.{pod}.req", self.prefix)
    }

    /// Migration transfers to one node.
    #[must_use]
    pub fn node_migrate(&self, pod: &str) -> String {
        format!("{}.node.{pod}.migrate", self.prefix)
    }

    /// Progress reports to the operator.
    #[must_use]
    pub fn progress(&self) -> String {
        format!("{}.progress", self.prefix)
    }

    /// Node lifecycle events to the operator.
    #[must_use]
    pub fn node_events(&self) -> String {
        format!("{}.nodes", self.prefix)
    }
}

/// Encodes an actor id as one subject token: base64url without padding of its UTF-8 bytes.
#[must_use]
pub fn encode_id(id: &str) -> String {
    if id.is_empty() {
        // An empty token is not a valid subject; "=" never appears in unpadded base64url.
        return "=".to_owned();
    }
    URL_SAFE_NO_PAD.encode(id.as_bytes())
}

/// Inverse of [`encode_id`].
pub fn decode_id(token: &str) -> Result<String> {
    if token == "=" {
        return Ok(String::new());
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|e| Error::Malformed(format!("actor id token {token:?}: {e}")))?;
    String::from_utf8(bytes).map_err(|e| Error::Malformed(format!("actor id is not UTF-8: {e}")))
}
