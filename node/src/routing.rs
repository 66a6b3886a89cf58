//! Who owns each shard right now, as this node knows it: the plan's target owner, except for shards
//! whose move is not done yet, which stay with the move's source. Pure; `node.rs` swaps a new
//! [`Routing`] in on every plan and marks moves done as progress reports arrive.

use aether_core::plan::Move;
use aether_core::protocol::PlanMessage;
use aether_core::route::RouteTable;
use std::collections::HashMap;

/// The routing view of one plan.
#[derive(Clone, Debug)]
pub struct Routing {
    /// The plan.
    pub plan: PlanMessage,
    table: RouteTable,
    /// Shards whose move is pending, with their actual (source) owner.
    pending: HashMap<u32, String>,
}

impl Routing {
    /// The routing of a plan: every move with a source is pending; a move without one is owned by its
    /// destination at once (it rebuilds from the log).
    #[must_use]
    pub fn new(plan: PlanMessage) -> Self {
        let table = RouteTable::new(plan.shards, &plan.members, &plan.shard_map);
        let pending = plan
            .moves
            .iter()
            .filter_map(|m| Some((m.shard, m.from.clone()?)))
            .collect();
        Self {
            plan,
            table,
            pending,
        }
    }

    /// Plan epoch.
    #[must_use]
    pub fn epoch(&self) -> u64 {
        self.plan.epoch
    }

    /// The shard of an actor id.
    #[must_use]
    pub fn shard(&self, actor_id: &str) -> u32 {
        self.table.shard(actor_id)
    }

    /// The pod that owns `shard` now.
    #[must_use]
    pub fn owner(&self, shard: u32) -> Option<&str> {
        if let Some(from) = self.pending.get(&shard) {
            return Some(from);
        }
        let i = self.table.owner_of_shard(shard)?;
        self.plan.members.get(i as usize).map(|m| m.name.as_str())
    }

    /// The plan's target owner of `shard`.
    #[must_use]
    pub fn target(&self, shard: u32) -> Option<&str> {
        let i = self.table.owner_of_shard(shard)?;
        self.plan.members.get(i as usize).map(|m| m.name.as_str())
    }

    /// Marks a shard's move done: its destination owns it. Returns false when it was not pending.
    pub fn move_done(&mut self, shard: u32) -> bool {
        self.pending.remove(&shard).is_some()
    }

    /// Number of moves still pending.
    #[must_use]
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// The move of `shard` in this plan.
    #[must_use]
    pub fn move_of(&self, shard: u32) -> Option<&Move> {
        self.plan.moves.iter().find(|m| m.shard == shard)
    }

    /// The pending moves whose source is `pod`.
    #[must_use]
    pub fn moves_from(&self, pod: &str) -> Vec<Move> {
        self.plan
            .moves
            .iter()
            .filter(|m| m.from.as_deref() == Some(pod) && self.pending.contains_key(&m.shard))
            .cloned()
            .collect()
    }

    /// True when `pod` is a member of the plan.
    #[must_use]
    pub fn is_member(&self, pod: &str) -> bool {
        self.plan.members.iter().any(|m| m.name == pod)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aether_core::crd::Strategy;
    use aether_core::plan::{MemberInput, PlanSpec, plan};
    use std::collections::BTreeSet;

    #[test]
    fn pending_moves_stay_with_their_source_until_done() {
        let spec = PlanSpec {
            shards: 64,
            capacity: 8,
            strategy: Strategy::AnchorHash,
        };
        let two: Vec<_> = (0..2)
            .map(|i| MemberInput::active(format!("app-{i}")))
            .collect();
        let three: Vec<_> = (0..3)
            .map(|i| MemberInput::active(format!("app-{i}")))
            .collect();
        let p1 = plan(None, &BTreeSet::new(), &two, &spec).expect("plan");
        let p2 = plan(Some(&p1), &BTreeSet::new(), &three, &spec).expect("plan");
        let mut r = Routing::new(PlanMessage::new(&p2, 4, 30));
        let m = p2.moves.first().expect("a move to app-2").clone();
        assert_eq!(r.owner(m.shard), m.from.as_deref());
        assert_eq!(r.target(m.shard), Some("app-2"));
        assert!(!r.moves_from(m.from.as_deref().unwrap_or("")).is_empty());
        assert!(r.move_done(m.shard));
        assert_eq!(r.owner(m.shard), Some("app-2"));
        assert!(!r.move_done(m.shard));
    }
}
