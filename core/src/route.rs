//! The routing table a node builds from each plan: `actor id -> shard -> owner` in O(1), without
//! allocating, on every message's hot path.

use crate::hash::actor_hash;
use crate::plan::Member;
use crate::shardmap::ShardMap;
use strength_reduce::StrengthReducedU64;

/// Index of "no member" in [`RouteTable`]'s bucket table.
const NONE: u32 = u32::MAX;

/// Owner lookups for one plan.
#[derive(Clone, Debug)]
pub struct RouteTable {
    shards: u32,
    /// `shards` as a precomputed reciprocal: `hash mod shards` without a hardware divide.
    modulus: StrengthReducedU64,
    /// Bucket per shard.
    map: Vec<u16>,
    /// Member index per bucket (dense, `NONE` when no member holds it).
    member_of_bucket: Vec<u32>,
}

impl RouteTable {
    /// The table for `members` (indices refer to this slice) and `shard_map`.
    #[must_use]
    pub fn new(shards: u32, members: &[Member], shard_map: &ShardMap) -> Self {
        let top = members
            .iter()
            .map(|m| usize::from(m.bucket) + 1)
            .max()
            .unwrap_or(0);
        let mut member_of_bucket = vec![NONE; top];
        for (i, m) in members.iter().enumerate() {
            member_of_bucket[usize::from(m.bucket)] = i as u32;
        }
        Self {
            shards,
            modulus: StrengthReducedU64::new(u64::from(shards.max(1))),
            map: shard_map.buckets().to_vec(),
            member_of_bucket,
        }
    }

    /// Number of shards.
    #[must_use]
    pub fn shards(&self) -> u32 {
        self.shards
    }

    /// The shard of an actor id.
    #[inline]
    #[must_use]
    pub fn shard(&self, actor_id: &str) -> u32 {
        (actor_hash(actor_id) % self.modulus) as u32
    }

    /// Index of the member owning `shard`, if any.
    #[inline]
    #[must_use]
    pub fn owner_of_shard(&self, shard: u32) -> Option<u32> {
        let bucket = *self.map.get(shard as usize)?;
        match self.member_of_bucket.get(usize::from(bucket)) {
            Some(&i) if i != NONE => Some(i),
            _ => None,
        }
    }

    /// Index of the member owning `actor_id`, if any.
    #[inline]
    #[must_use]
    pub fn owner(&self, actor_id: &str) -> Option<u32> {
        self.owner_of_shard(self.shard(actor_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{MemberInput, PlanSpec, plan};
    use crate::types::Strategy;
    use std::collections::BTreeSet;

    #[test]
    fn agrees_with_the_plan() {
        let spec = PlanSpec {
            shards: 64,
            capacity: 8,
            strategy: Strategy::AnchorHash,
        };
        let members: Vec<_> = (0..3)
            .map(|i| MemberInput::active(format!("app-{i}")))
            .collect();
        let p = plan(None, &BTreeSet::new(), &members, &spec).expect("plans");
        let table = RouteTable::new(p.shards, &p.members, &p.shard_map);
        for id in ["a", "b", "counter/9", "ü"] {
            let shard = table.shard(id);
            let idx = table.owner(id).expect("owned") as usize;
            assert_eq!(Some(p.members[idx].name.as_str()), p.owner(shard));
        }
        for id in ["x", "counter/1", ""] {
            assert_eq!(table.shard(id), crate::hash::shard_of(id, 64));
        }
        let empty = RouteTable::new(64, &[], &ShardMap::unassigned(64));
        assert_eq!(empty.owner("a"), None);
    }
}
