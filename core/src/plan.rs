//! The planner: `plan(previous, members, spec) -> Plan`. It runs in the operator on every membership
//! change; its output goes to `ShardPlan.status` and to the NATS KV bucket the nodes watch.
//!
//! Properties (each is a property test in `tests/plan_props.rs`):
//! - deterministic: the same inputs give the same plan, in any process;
//! - minimal: a join moves shards only to the joiner, a leave moves only the leaver's shards, no shard
//!   ever moves between two members that stay;
//! - balanced: AnchorHash within `1 + 3 sqrt(members/shards) + 0.01` of the mean (up to 100 members),
//!   `Balanced` within one shard;
//! - epochs only grow.
//!
//! Membership changes are applied in a fixed order: leavers and draining members are removed first (in
//! descending name order), then joiners are added (in ascending name order). AnchorHash re-adds the most
//! recently removed bucket first, so a StatefulSet scaled 5 -> 3 -> 5 gets back exactly its old placement.
//!
//! Re-planning while moves are in flight: the new plan starts from who *actually* owns each shard: the
//! previous target for shards whose move is done, the move's source for shards whose move is pending.
//! A pending move whose destination left becomes a move from its source to the new target (or nothing,
//! when the source is the new target); a shard whose actual owner is gone has no source (`from: None`):
//! its new owner takes it at once and rebuilds its actors from the JetStream log.

use crate::anchor::{Anchor, AnchorState};
use crate::error::{Error, Result};
use crate::hash::MAX_SHARDS;
use crate::shardmap::{PackedU16, ShardMap, UNASSIGNED};
pub use crate::types::{Member, Move, Strategy};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

pub mod retry;

/// What the planner needs from the spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanSpec {
    /// Number of shards (immutable).
    pub shards: u32,
    /// AnchorHash buckets (immutable).
    pub capacity: u32,
    /// Placement strategy.
    pub strategy: Strategy,
}

/// A pod the planner sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInput {
    /// Pod name.
    pub name: String,
    /// True while the pod is being deleted: it keeps serving until its shards are moved away.
    pub draining: bool,
}

impl MemberInput {
    /// An active member.
    pub fn active(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            draining: false,
        }
    }

    /// A draining member.
    pub fn draining(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            draining: true,
        }
    }
}

/// A placement with its epoch: what the nodes execute.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// Grows by one with every plan.
    pub epoch: u64,
    /// Number of shards.
    pub shards: u32,
    /// Members that own shards in this plan, ordered by bucket.
    pub members: Vec<Member>,
    /// Target owner bucket of every shard.
    pub shard_map: ShardMap,
    /// Shards whose actual owner differs from the target.
    pub moves: Vec<Move>,
    /// AnchorHash state, so a restarted operator computes exactly the same next plan.
    pub placement: AnchorState,
}

impl Plan {
    /// Name of the member that owns `shard` in this plan.
    #[must_use]
    pub fn owner(&self, shard: u32) -> Option<&str> {
        let bucket = self.shard_map.bucket(shard)?;
        self.member_of_bucket(bucket)
    }

    /// Name of the member holding `bucket`.
    #[must_use]
    pub fn member_of_bucket(&self, bucket: u16) -> Option<&str> {
        member_of_bucket(&self.members, bucket)
    }

    /// Number of shards each member owns, by member name.
    #[must_use]
    pub fn loads(&self) -> BTreeMap<&str, usize> {
        loads(&self.members, &self.shard_map)
    }
}

/// Name of the member of `members` (sorted by bucket, as plans list them) holding `bucket`.
#[must_use]
pub fn member_of_bucket(members: &[Member], bucket: u16) -> Option<&str> {
    members
        .binary_search_by_key(&bucket, |m| m.bucket)
        .ok()
        .map(|i| members[i].name.as_str())
}

/// Number of shards each of `members` owns by `shard_map`, by member name.
#[must_use]
pub fn loads<'a>(members: &'a [Member], shard_map: &ShardMap) -> BTreeMap<&'a str, usize> {
    let mut per_bucket: BTreeMap<u16, usize> = members.iter().map(|m| (m.bucket, 0)).collect();
    for &b in shard_map.buckets() {
        if let Some(c) = per_bucket.get_mut(&b) {
            *c += 1;
        }
    }
    per_bucket
        .into_iter()
        .filter_map(|(b, c)| Some((member_of_bucket(members, b)?, c)))
        .collect()
}

/// Orders pod names naturally: `app-2` before `app-10`.
#[must_use]
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let split = |s: &str| {
        let digits = s.bytes().rev().take_while(u8::is_ascii_digit).count();
        let (head, tail) = s.split_at(s.len() - digits);
        (
            head.to_owned(),
            tail.trim_start_matches('0').len(),
            tail.to_owned(),
        )
    };
    split(a).cmp(&split(b)).then_with(|| a.cmp(b))
}

/// Computes the next plan.
///
/// `previous` is the last plan made (its `moves` are the ones that may still be in flight) and `pending`
/// the shards of those moves that are not done yet. `members` is every pod the ShardPlan selects that
/// is Ready (active) or being deleted (draining); pods not listed are gone.
pub fn plan(
    previous: Option<&Plan>,
    pending: &BTreeSet<u32>,
    members: &[MemberInput],
    spec: &PlanSpec,
) -> Result<Plan> {
    validate_spec(previous, spec)?;
    let active = active_members(members, spec)?;

    let mut anchor = match previous {
        Some(p) => Anchor::restore(&p.placement)?,
        None => Anchor::new(spec.capacity)?,
    };
    let mut buckets: BTreeMap<String, u16> = previous
        .map(|p| {
            p.members
                .iter()
                .map(|m| (m.name.clone(), m.bucket))
                .collect()
        })
        .unwrap_or_default();

    // Leavers first, descending, so that re-adding in ascending order restores each one's bucket.
    let mut leavers: Vec<String> = buckets
        .keys()
        .filter(|n| !active.contains(n.as_str()))
        .cloned()
        .collect();
    leavers.sort_by(|a, b| natural_cmp(b, a));
    for name in leavers {
        if let Some(b) = buckets.remove(&name) {
            anchor.remove(u32::from(b));
        }
    }
    let mut joiners: Vec<&str> = active
        .iter()
        .copied()
        .filter(|n| !buckets.contains_key(*n))
        .collect();
    joiners.sort_by(|a, b| natural_cmp(a, b));
    for name in joiners {
        let b = anchor.add().ok_or(Error::TooManyMembers {
            members: active.len(),
            capacity: spec.capacity,
        })?;
        buckets.insert(name.to_owned(), b as u16);
    }

    let mut plan_members: Vec<Member> = buckets
        .into_iter()
        .map(|(name, bucket)| Member { name, bucket })
        .collect();
    plan_members.sort_by_key(|m| m.bucket);

    let shard_map = match spec.strategy {
        Strategy::AnchorHash => anchor_map(&anchor, spec.shards),
        Strategy::Balanced => balanced_map(previous, &plan_members, spec.shards),
    };

    let mut next = Plan {
        epoch: previous.map_or(1, |p| p.epoch + 1),
        shards: spec.shards,
        members: plan_members,
        shard_map,
        moves: Vec::new(),
        placement: anchor.state(),
    };
    if let Some(p) = previous {
        next.moves = moves_between(p, pending, &next, members);
    }
    Ok(next)
}

fn validate_spec(previous: Option<&Plan>, spec: &PlanSpec) -> Result<()> {
    if spec.shards == 0 || spec.shards > MAX_SHARDS {
        return Err(Error::InvalidShards {
            got: spec.shards.into(),
            max: MAX_SHARDS,
        });
    }
    if spec.capacity == 0 || spec.capacity > crate::anchor::MAX_CAPACITY {
        return Err(Error::InvalidCapacity {
            got: spec.capacity.into(),
            max: crate::anchor::MAX_CAPACITY,
        });
    }
    if let Some(p) = previous {
        if p.shards != spec.shards {
            return Err(Error::Immutable {
                field: "shards",
                previous: p.shards.into(),
                requested: spec.shards.into(),
            });
        }
        if p.placement.capacity != spec.capacity {
            return Err(Error::Immutable {
                field: "capacity",
                previous: p.placement.capacity.into(),
                requested: spec.capacity.into(),
            });
        }
    }
    Ok(())
}

fn active_members<'a>(members: &'a [MemberInput], spec: &PlanSpec) -> Result<BTreeSet<&'a str>> {
    let mut seen = BTreeSet::new();
    let mut active = BTreeSet::new();
    for m in members {
        if m.name.is_empty() {
            return Err(Error::InvalidMember {
                name: m.name.clone(),
                reason: "empty name",
            });
        }
        if !seen.insert(m.name.as_str()) {
            return Err(Error::InvalidMember {
                name: m.name.clone(),
                reason: "listed twice",
            });
        }
        if !m.draining {
            active.insert(m.name.as_str());
        }
    }
    if active.len() > spec.capacity as usize {
        return Err(Error::TooManyMembers {
            members: active.len(),
            capacity: spec.capacity,
        });
    }
    Ok(active)
}

/// The shard map of an AnchorHash table.
#[must_use]
pub fn anchor_map(anchor: &Anchor, shards: u32) -> ShardMap {
    ShardMap(PackedU16(
        (0..shards)
            .map(|s| anchor.bucket_of(s).map_or(UNASSIGNED, |b| b as u16))
            .collect(),
    ))
}

/// Balanced: every member within one shard of the others, moving the fewest shards.
///
/// Members that already hold the most shards keep the `ceil` targets; each member above its target
/// releases its highest shards; released and orphaned shards go, lowest first, to the members below
/// their target, in bucket order.
fn balanced_map(previous: Option<&Plan>, members: &[Member], shards: u32) -> ShardMap {
    let mut map = ShardMap::unassigned(shards);
    if members.is_empty() {
        return map;
    }
    // Dense per-bucket tables: this runs over every shard.
    let slots = usize::from(UNASSIGNED) + 1;
    let mut live = vec![false; slots];
    for m in members {
        live[usize::from(m.bucket)] = true;
    }
    let mut held: Vec<Vec<u32>> = vec![Vec::new(); slots];
    let mut pool = Vec::new();
    for s in 0..shards {
        match previous.and_then(|p| p.shard_map.bucket(s)) {
            Some(b) if live[usize::from(b)] => held[usize::from(b)].push(s),
            _ => pool.push(s),
        }
    }
    let n = members.len() as u32;
    let (q, r) = (shards / n, shards % n);
    let mut by_load: Vec<(u16, usize)> = members
        .iter()
        .map(|m| (m.bucket, held[usize::from(m.bucket)].len()))
        .collect();
    // Most loaded first; ties by bucket, so the choice is deterministic.
    by_load.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(&y.0)));
    let mut target = vec![0usize; slots];
    for (i, &(b, _)) in by_load.iter().enumerate() {
        target[usize::from(b)] = (q + u32::from((i as u32) < r)) as usize;
    }
    for m in members {
        let (list, t) = (
            &mut held[usize::from(m.bucket)],
            target[usize::from(m.bucket)],
        );
        if list.len() > t {
            pool.extend(list.drain(t..));
        }
    }
    pool.sort_unstable();
    let mut pool = pool.into_iter();
    for m in members {
        let b = usize::from(m.bucket);
        let missing = target[b].saturating_sub(held[b].len());
        held[b].extend(pool.by_ref().take(missing));
        for &s in &held[b] {
            map.set(s, m.bucket);
        }
    }
    map
}

/// Moves from the actual owners (previous targets, minus pending moves) to the new targets.
///
/// Runs once per shard, so names are turned into small integers first and the loop compares those.
fn moves_between(
    previous: &Plan,
    pending: &BTreeSet<u32>,
    next: &Plan,
    members: &[MemberInput],
) -> Vec<Move> {
    const NOBODY: u32 = u32::MAX;
    let present: BTreeSet<&str> = members.iter().map(|m| m.name.as_str()).collect();
    // Ids: a name's index in `names`; only present members get one, so a gone owner is NOBODY.
    let names: Vec<&str> = present.iter().copied().collect();
    let id_of = |name: &str| names.binary_search(&name).map_or(NOBODY, |i| i as u32);
    let by_bucket = |plan: &Plan| {
        let mut table = vec![NOBODY; usize::from(UNASSIGNED) + 1];
        for m in &plan.members {
            table[usize::from(m.bucket)] = id_of(&m.name);
        }
        table
    };
    let (prev_ids, next_ids) = (by_bucket(previous), by_bucket(next));
    let mut actual: Vec<u32> = previous
        .shard_map
        .buckets()
        .iter()
        .map(|&b| prev_ids[usize::from(b)])
        .collect();
    actual.resize(next.shards as usize, NOBODY);
    for m in previous.moves.iter().filter(|m| pending.contains(&m.shard)) {
        if let Some(slot) = actual.get_mut(m.shard as usize) {
            *slot = m.from.as_deref().map_or(NOBODY, id_of);
        }
    }
    let mut moves = Vec::new();
    for (s, (&from, &to_bucket)) in actual.iter().zip(next.shard_map.buckets()).enumerate() {
        let to = next_ids[usize::from(to_bucket)];
        if to != NOBODY && from != to {
            moves.push(Move {
                shard: s as u32,
                from: (from != NOBODY).then(|| names[from as usize].to_owned()),
                to: names[to as usize].to_owned(),
            });
        }
    }
    moves
}
