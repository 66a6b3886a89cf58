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

/// Moves as they travel (`PlanMessage.moves`): one entry per (source, destination) with the
/// shards it moves, so a plan moving a third of 65,536 shards stays far below NATS's 1 MiB payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct MoveGroup {
    /// Current owner; absent when it is gone and the destination rebuilds from the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// New owner.
    pub to: String,
    /// The shards, ascending.
    pub shards: Vec<u32>,
}

/// Serde for `Vec<Move>` in the grouped form ([`MoveGroup`]); read back ordered by shard.
pub mod grouped_moves {
    use super::{Move, MoveGroup};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::collections::BTreeMap;

    /// The groups of `moves`, ordered by (source, destination).
    #[must_use]
    pub fn group(moves: &[Move]) -> Vec<MoveGroup> {
        let mut groups: BTreeMap<(Option<&str>, &str), Vec<u32>> = BTreeMap::new();
        for m in moves {
            groups
                .entry((m.from.as_deref(), m.to.as_str()))
                .or_default()
                .push(m.shard);
        }
        groups
            .into_iter()
            .map(|((from, to), mut shards)| {
                shards.sort_unstable();
                MoveGroup {
                    from: from.map(str::to_owned),
                    to: to.to_owned(),
                    shards,
                }
            })
            .collect()
    }

    /// The moves of `groups`, ordered by shard.
    #[must_use]
    pub fn ungroup(groups: Vec<MoveGroup>) -> Vec<Move> {
        let mut moves: Vec<Move> = groups
            .into_iter()
            .flat_map(|g| {
                let (from, to) = (g.from, g.to);
                g.shards.into_iter().map(move |shard| Move {
                    shard,
                    from: from.clone(),
                    to: to.clone(),
                })
            })
            .collect();
        moves.sort_by_key(|m| m.shard);
        moves
    }

    /// Serialises moves grouped.
    pub fn serialize<S: Serializer>(moves: &[Move], s: S) -> Result<S::Ok, S::Error> {
        group(moves).serialize(s)
    }

    /// Reads grouped moves.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Move>, D::Error> {
        Vec::<MoveGroup>::deserialize(d).map(ungroup)
    }
}

/// Phase of a shard move.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Hash)]
pub enum MovePhase {
    /// Waiting for a migration slot.
    Pending,
    /// The source is sending the shard.
    Transferring,
    /// Progress reports only (a move's status shows `Transferring`): the source gave the shard up
    /// and is about to send the commit. Stored before the commit is sent, so a source that restarts
    /// knows it must never serve the shard again in that epoch, only send the commit again.
    HandedOff,
    /// The destination owns the shard.
    Done,
    /// The last attempt failed; it is retried with backoff until `maxRetries`.
    Failed,
    /// A later plan replaced the move before it ended; that plan decides who serves the shard.
    Superseded,
}
