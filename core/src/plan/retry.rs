//! When the operator plans again for the same members, and what the new plan keeps from the moves
//! of the current one, from each move's latest progress report: one rule, used by the operator's
//! `decide`, the chaos suite's planner and the model check's operator.

use crate::types::{Move, MovePhase};
use std::collections::BTreeSet;

/// The shards of `moves` not reported `Done` (`latest`: the latest report of a shard's move, if
/// any): the next plan keeps each with its actual owner, the move's source ([`super::plan`]'s
/// `pending`).
#[must_use]
pub fn unfinished(moves: &[Move], latest: impl Fn(u32) -> Option<MovePhase>) -> BTreeSet<u32> {
    moves
        .iter()
        .filter(|m| latest(m.shard) != Some(MovePhase::Done))
        .map(|m| m.shard)
        .collect()
}

/// Whether the moves' latest reports call for a retry now: one failed or was superseded, and none
/// is in flight (reported `Transferring` or `HandedOff` without an outcome). A retry is a new plan,
/// which stops every transfer not handed off yet, so it waits for them: one failure never rolls
/// the others back. Moves never reported (`None`) do not hold it back (their deadline does).
#[must_use]
pub fn retry_due(latest: impl IntoIterator<Item = Option<MovePhase>>) -> bool {
    let (mut ended_badly, mut in_flight) = (false, false);
    for p in latest {
        match p {
            Some(MovePhase::Failed | MovePhase::Superseded) => ended_badly = true,
            Some(MovePhase::Transferring | MovePhase::HandedOff) => in_flight = true,
            _ => {}
        }
    }
    ended_badly && !in_flight
}

#[cfg(test)]
mod tests {
    use super::*;
    use MovePhase::{Done, Failed, HandedOff, Superseded, Transferring};

    fn mv(shard: u32) -> Move {
        Move {
            shard,
            from: Some("a".into()),
            to: "b".into(),
        }
    }

    #[test]
    fn a_retry_waits_for_the_moves_in_flight_and_keeps_what_is_not_done() {
        assert!(retry_due([Some(Failed), Some(Done), None]));
        assert!(retry_due([Some(Superseded)]));
        assert!(!retry_due([Some(Failed), Some(Transferring)]));
        assert!(!retry_due([Some(Failed), Some(HandedOff)]));
        assert!(!retry_due([Some(Done), None]));
        let moves = [mv(1), mv(2), mv(3)];
        let latest = |s| match s {
            1 => Some(Done),
            2 => Some(Failed),
            _ => None,
        };
        assert_eq!(unfinished(&moves, latest), BTreeSet::from([2, 3]));
    }
}
