//! The wire protocol: every message between clients, nodes and the operator. Split along the
//! sections of `docs/PROTOCOL.md`, which is the reference for other languages:
//!
//! - [`names`]: subjects, the KV bucket and the stream of a ShardPlan ("Names").
//! - [`messages`]: requests and replies, with one constructor per error reply ("Request", "Reply").
//! - [`transfer`]: migration chunks and their acks, JSON or binary ("Transfer").
//! - [`control`]: plans, progress reports and node lifecycle events.
//! - [`shared`]: an actor's state shared by its replies and records instead of copied.
//!
//! Every JSON message carries `"v": 1`. [`decode`] turns bytes into a message or a typed [`Error`]
//! (`Malformed`, `UnsupportedVersion`), never a panic; receivers answer such bytes with an
//! [`ErrorReply`] and count them. Transfers also travel in a binary form ([`decode_transfer`] reads
//! both).

pub mod app;
pub mod control;
pub mod messages;
pub mod names;
pub mod shared;
pub mod timers;
pub mod transfer;

pub use control::{Held, NodeEvent, NodeEventKind, PlanMessage, Progress};
pub use messages::{
    ActorRef, ActorReply, ErrorCode, ErrorReply, MAX_ACTOR_ID_BYTES, MAX_COMMAND_DEPTH,
    MAX_COMMAND_ID_BYTES, Op, Outcome, RESERVED_PREFIX, Reply, Request, check_command, json_depth,
};
pub use names::{Names, decode_id, encode_id};
pub use shared::SharedJson;
pub use transfer::{
    ActorSnapshot, TRANSFER_MAGIC, Transfer, TransferAck, TransferWriter, decode_transfer,
    encode_transfer,
};

use crate::error::{Error, Result};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
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
    Held,
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
