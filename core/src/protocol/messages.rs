//! Requests (client -> node) and replies (node -> client); docs/PROTOCOL.md, "Request" and "Reply".

use super::VERSION;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Longest actor id, in bytes. An id travels base64url-encoded in its event subject
/// (`P.ev.{shard}.{kind}.{token}`, 4/3 of the id) and in the direct-get request that reads it: at
/// 1,024 bytes both stay under 1,600 bytes, far from nats-server's 4,096-byte control line, which
/// closes the connection of anyone who exceeds it.
pub const MAX_ACTOR_ID_BYTES: usize = 1024;
/// Longest command id, in bytes. It becomes part of the append's `Nats-Msg-Id` header.
pub const MAX_COMMAND_ID_BYTES: usize = 128;
/// Deepest nesting of a command's JSON value (arrays and objects, the command itself counting
/// one). The log record wraps a command's data a few levels deeper, and JSON readers (serde_json:
/// 128) refuse nesting past their limit: a limit well below keeps every record readable.
pub const MAX_COMMAND_DEPTH: usize = 32;

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

    /// Checks the kind's syntax (it becomes a subject token) and the id's length.
    pub fn validate(&self) -> Result<()> {
        if self.id.len() > MAX_ACTOR_ID_BYTES {
            return Err(Error::TooLarge(format!(
                "actor id of {} bytes exceeds {MAX_ACTOR_ID_BYTES} bytes",
                self.id.len()
            )));
        }
        check_kind(&self.kind)
    }
}

/// Checks a kind name's syntax, `[a-z0-9-]{1,32}` (it becomes a subject token).
pub fn check_kind(kind: &str) -> Result<()> {
    let ok = !kind.is_empty()
        && kind.len() <= 32
        && kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::Malformed(format!(
            "actor kind {kind:?} must match [a-z0-9-]{{1,32}}"
        )))
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
    /// Nodes only (`{prefix}.node.{pod}.send`): forget these send ids, recorded. At a receiver the
    /// sender has recorded their delivery; at the sender the receiver has forgotten them.
    Release {
        /// Send ids ([`crate::protocol::app::send_id`]).
        ids: Vec<String>,
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
    /// Inside a node only, never on the wire: this command carries the reply to the actor's send
    /// with this id (`$reply`), and its record marks that send delivered.
    #[serde(skip)]
    pub delivered: Option<String>,
    /// How long the caller waits for the answer, milliseconds (absent: no limit). A request still
    /// waiting (queued behind a moving shard or another command of its actor) when that time is
    /// over is dropped, answered `unavailable` and counted; a forwarded request carries what is left.
    #[serde(default, rename = "timeoutMs", skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Inside a node only: when the caller stops waiting (from `timeoutMs` on arrival).
    #[serde(skip)]
    pub deadline: Option<std::time::Instant>,
    /// Inside a node only: the W3C `traceparent` of the span serving the request (traces on).
    #[serde(skip)]
    pub trace: Option<String>,
}

/// Top-level command keys and command ids starting with this are the nodes' own (`$reply`, send
/// ids): refused from clients.
pub const RESERVED_PREFIX: char = '$';

/// Most send ids one release names.
pub const MAX_RELEASE_IDS: usize = 64;

impl Request {
    /// [`Request::validate`], and what only nodes may send refused: a command id starting with
    /// [`RESERVED_PREFIX`] (sends' ids) and `release`.
    pub fn validate_from_client(&self) -> Result<()> {
        self.validate()?;
        if let Some(id) = &self.id
            && id.starts_with(RESERVED_PREFIX)
        {
            return Err(Error::Malformed(format!(
                "command id {id:?}: ids starting with {RESERVED_PREFIX:?} are the nodes' own"
            )));
        }
        if matches!(self.op, Op::Release { .. }) {
            return Err(Error::Malformed(
                "op \"release\" is the nodes' own".to_owned(),
            ));
        }
        Ok(())
    }

    /// Checks what the node will put into subjects, headers and the log: the actor (kind syntax,
    /// id length), the command id (1 to [`MAX_COMMAND_ID_BYTES`] bytes, no control characters) and
    /// the command's nesting (at most [`MAX_COMMAND_DEPTH`]).
    pub fn validate(&self) -> Result<()> {
        self.actor.validate()?;
        if let Some(id) = &self.id {
            if id.len() > MAX_COMMAND_ID_BYTES {
                return Err(Error::TooLarge(format!(
                    "command id of {} bytes exceeds {MAX_COMMAND_ID_BYTES} bytes",
                    id.len()
                )));
            }
            if id.is_empty() || id.chars().any(char::is_control) {
                return Err(Error::Malformed(format!(
                    "command id {id:?} must be 1 to {MAX_COMMAND_ID_BYTES} bytes without control characters"
                )));
            }
        }
        match &self.op {
            Op::Command { command } => check_command(command)?,
            Op::Release { ids } => {
                if ids.len() > MAX_RELEASE_IDS
                    || ids
                        .iter()
                        .any(|i| i.len() > MAX_COMMAND_ID_BYTES || !i.starts_with(RESERVED_PREFIX))
                {
                    return Err(Error::Malformed(format!(
                        "a release names 1 to {MAX_RELEASE_IDS} send ids"
                    )));
                }
            }
            Op::Read => {}
        }
        Ok(())
    }

    /// A request of the current version.
    pub fn new(actor: ActorRef, op: Op, id: Option<String>) -> Self {
        Self {
            v: VERSION,
            id,
            actor,
            op,
            hops: 0,
            epoch: 0,
            delivered: None,
            timeout_ms: None,
            deadline: None,
            trace: None,
        }
    }
}

/// Checks a command from outside the node (a client's, or an actor's send): nested at most
/// [`MAX_COMMAND_DEPTH`], no top-level key starting with [`RESERVED_PREFIX`].
pub fn check_command(command: &serde_json::Value) -> Result<()> {
    let depth = json_depth(command);
    if depth > MAX_COMMAND_DEPTH {
        return Err(Error::Malformed(format!(
            "command nested {depth} levels deep; at most {MAX_COMMAND_DEPTH}"
        )));
    }
    if let Some(key) = command
        .as_object()
        .and_then(|m| m.keys().find(|k| k.starts_with(RESERVED_PREFIX)))
    {
        return Err(Error::Malformed(format!(
            "command key {key:?}: keys starting with {RESERVED_PREFIX:?} are reserved"
        )));
    }
    Ok(())
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
    /// The actor's state after the request (shared with the actor that answered, not copied).
    pub state: super::SharedJson,
    /// Node that answered.
    pub node: String,
    /// What an app kind's decide answered for the caller, besides the state (app kinds only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<serde_json::Value>,
    /// The actor's timers after the request, sorted by name (absent when it has none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timers: Vec<super::timers::Timer>,
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
    /// The app container answered something the node cannot use (not JSON, a wrong shape, a state
    /// over the size limit, an error status); nothing was appended.
    AppError,
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

    /// `unavailable`: retry after `retry_after_ms` (the one constructor of this reply).
    pub fn unavailable(message: impl Into<String>, retry_after_ms: u64) -> Self {
        let mut e = Self::new(ErrorCode::Unavailable, message);
        e.retry_after_ms = Some(retry_after_ms);
        e
    }

    /// `redirect`: `owner` serves `shard` in plan `epoch`.
    pub fn redirect(owner: &str, epoch: u64, shard: u32) -> Self {
        let mut e = Self::new(ErrorCode::Redirect, format!("{owner} owns shard {shard}"));
        e.owner = Some(owner.to_owned());
        e.epoch = Some(epoch);
        e
    }

    /// `staleEpoch`: the message is for another epoch than `holding`.
    pub fn stale_epoch(message: impl Into<String>, holding: u64) -> Self {
        let mut e = Self::new(ErrorCode::StaleEpoch, message);
        e.epoch = Some(holding);
        e
    }

    /// The reply to a [`decode`] failure.
    #[must_use]
    pub fn from_decode(err: &Error) -> Self {
        let code = match err {
            Error::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            Error::TooLarge(_) => ErrorCode::TooLarge,
            _ => ErrorCode::Malformed,
        };
        Self::new(code, err.to_string())
    }
}

/// Nesting depth of a JSON value: 0 for a scalar, 1 for an array or object of scalars. Iterative, so
/// any depth serde_json accepted is measured without recursion.
#[must_use]
pub fn json_depth(v: &serde_json::Value) -> usize {
    let mut deepest = 0;
    let mut todo = vec![(v, 0usize)];
    while let Some((v, d)) = todo.pop() {
        match v {
            serde_json::Value::Array(items) => todo.extend(items.iter().map(|i| (i, d + 1))),
            serde_json::Value::Object(map) => todo.extend(map.values().map(|i| (i, d + 1))),
            _ => {}
        }
        deepest = deepest.max(d + usize::from(v.is_array() || v.is_object()));
    }
    deepest
}
