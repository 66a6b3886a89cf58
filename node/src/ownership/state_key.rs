//! [`Ownership::state_key`]: what a node knows, as one canonical text, for the model check.

use super::Ownership;

impl Ownership {
    /// Everything this node knows, in one canonical text (maps sorted): two values with the same key
    /// behave the same. For model checkers that keep each state they explored once.
    #[must_use]
    pub fn state_key(&self) -> String {
        use std::collections::{BTreeMap, BTreeSet};
        let view = self
            .view
            .as_ref()
            .map(|v| (v.plan.epoch, v.pending.iter().collect::<BTreeMap<_, _>>()));
        let mut deferred: Vec<u32> = self.deferred.iter().map(|m| m.shard).collect();
        deferred.sort_unstable();
        format!(
            "{view:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?}",
            self.handed_off.iter().collect::<BTreeMap<_, _>>(),
            self.received.iter().collect::<BTreeMap<_, _>>(),
            (
                &self.early_done,
                self.last_moves
                    .iter()
                    .map(|(s, l)| (s, l.epoch, &l.from, &l.to))
                    .collect::<BTreeSet<_>>()
            ),
            self.incoming.iter().collect::<BTreeMap<_, _>>(),
            self.moving.iter().collect::<BTreeSet<_>>(),
            self.held.iter().collect::<BTreeMap<_, _>>(),
            (
                self.unconfirmed.iter().collect::<BTreeSet<_>>(),
                &self.awaiting,
                deferred
            ),
        )
    }
}
