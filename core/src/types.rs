//! The few types every part of aether names: placement strategy, members, moves and their phases.
//! Pure data; the CRD (`crd.rs`), the planner (`plan.rs`) and the wire protocol (`protocol.rs`) all
//! use them, so none of those needs another.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Placement strategy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema, Hash)]
pub enum Strategy {
    /// Consistent hashing (AnchorHash): minimal disruption, near-even load.
    #[default]
    AnchorHash,
    /// Every member within one shard of the others, moving the fewest shards.
    Balanced,
}

/// A member of a plan and its AnchorHash bucket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Hash)]
pub struct Member {
    /// Pod name.
    pub name: String,
    /// Stable bucket id.
    pub bucket: u16,
}

/// One shard changing owner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Hash)]
pub struct Move {
    /// Shard number.
    pub shard: u32,
    /// Current owner; `None` when it is gone and the destination rebuilds from the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// New owner.
    pub to: String,
}

/// Phase of a shard move.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Hash)]
pub enum MovePhase {
    /// Waiting for a migration slot.
    Pending,
    /// The source is sending the shard.
    Transferring,
    /// The destination owns the shard.
    Done,
    /// The last attempt failed; it is retried with backoff until `maxRetries`.
    Failed,
    /// A later plan replaced the move before it ended; that plan decides who serves the shard.
    Superseded,
}
