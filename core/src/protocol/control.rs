//! Control messages: the plan in the KV bucket (operator -> nodes), progress reports and node
//! lifecycle events (node -> operator); docs/PROTOCOL.md, "PlanMessage", "Progress", "NodeEvent".

use super::VERSION;
use crate::error::{Error, Result};
use crate::hash::MAX_SHARDS;
use crate::shardmap::ShardMap;
use crate::types::MovePhase;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

fn is_zero(n: &u64) -> bool {
    *n == 0
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
    /// Transferring, Done, Failed or Superseded.
    pub phase: MovePhase,
    /// Actors moved.
    #[serde(default)]
    pub actors: u32,
    /// Time the move took so far.
    #[serde(default)]
    pub duration_ms: u64,
    /// Bytes of the transfer chunks the source made (its `Done` report; 0 otherwise).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bytes: u64,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The move's source (`None`: a move without a source, or a report that does not say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The move's destination (`None` in a report that does not say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
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

/// A node's word that it holds a plan (key `held.{pod}` of the plan bucket, node -> nodes): it
/// serves nothing by an older plan any more, and every request it answered by one is answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    /// Protocol version.
    pub v: u16,
    /// Pod.
    pub node: String,
    /// The plan epoch it holds.
    pub epoch: u64,
    /// How long, in ms, the node serves after sending this write (it rewrites the key well within
    /// that); a node of a version without leases leaves it out.
    #[serde(rename = "leaseMs", default, skip_serializing_if = "Option::is_none")]
    pub lease_ms: Option<u64>,
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
    pub members: Vec<crate::types::Member>,
    /// Owner bucket per shard.
    pub shard_map: ShardMap,
    /// Moves of this epoch; on the wire grouped by (source, destination), see
    /// [`crate::types::MoveGroup`].
    #[serde(with = "crate::types::grouped_moves")]
    pub moves: Vec<crate::types::Move>,
    /// Most moves in flight at once.
    pub max_concurrent: u32,
    /// Seconds a move may take.
    pub timeout_seconds: u32,
    /// The ShardPlan that published it (`namespace/name/uid`), so an operator can tell a plan of
    /// another ShardPlan (or of another writer) on the same prefix from its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Attempts each listed move had before this plan (shard -> count; the operator's
    /// `status.moves[].attempts`), for people (`kubectl aether moves`): nodes do not use it.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub attempts: std::collections::BTreeMap<u32, u32>,
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
            owner: None,
            attempts: std::collections::BTreeMap::new(),
        }
    }

    /// Checks the plan for meaning, not only for shape: `shards` within `1..=65536` and equal to
    /// the shard map's length, member names and buckets unique, every move of a shard below
    /// `shards`, at most one move per shard, to a member, from another node. A node ignores (and
    /// counts) a plan that fails.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| {
            Err(Error::Malformed(format!(
                "plan epoch {}: {why}",
                self.epoch
            )))
        };
        if self.shards == 0 || self.shards > MAX_SHARDS {
            return bad(format!("shards {} outside 1..={MAX_SHARDS}", self.shards));
        }
        if self.shard_map.len() != self.shards as usize {
            return bad(format!(
                "shardMap holds {} shards, shards says {}",
                self.shard_map.len(),
                self.shards
            ));
        }
        let mut names = BTreeSet::new();
        let mut buckets = BTreeSet::new();
        for m in &self.members {
            if !names.insert(m.name.as_str()) || !buckets.insert(m.bucket) {
                return bad(format!(
                    "member {} or bucket {} listed twice",
                    m.name, m.bucket
                ));
            }
        }
        let mut moved = BTreeSet::new();
        for m in &self.moves {
            if m.shard >= self.shards {
                return bad(format!("a move of shard {} of {}", m.shard, self.shards));
            }
            if !moved.insert(m.shard) {
                return bad(format!("shard {} moves twice", m.shard));
            }
            if !names.contains(m.to.as_str()) {
                return bad(format!("shard {} moves to {}, not a member", m.shard, m.to));
            }
            if m.from.as_deref() == Some(m.to.as_str()) {
                return bad(format!("shard {} moves from {} to itself", m.shard, m.to));
            }
        }
        Ok(())
    }
}
