//! Unit tests of `driver.rs`: each rule the driver keeps, on the node's real ownership.

use super::*;
use aether_core::plan::{MemberInput, Plan, PlanSpec, plan};
use aether_core::protocol::{PlanMessage, VERSION};
use aether_core::types::Strategy;
use std::collections::BTreeSet;

fn plans(sizes: &[usize]) -> Vec<Plan> {
    let spec = PlanSpec {
        shards: 16,
        capacity: 8,
        strategy: Strategy::AnchorHash,
    };
    let mut out: Vec<Plan> = Vec::new();
    for &n in sizes {
        let members: Vec<MemberInput> = (0..n)
            .map(|i| MemberInput::active(format!("app-{i}")))
            .collect();
        let p = plan(out.last(), &BTreeSet::new(), &members, &spec).expect("plan");
        out.push(p);
    }
    out
}

/// A source holding plans 1 (two members) and 2 (a third joins), every member holding 2; and one
/// move of plan 2 away from it.
fn source() -> (Ownership, Vec<Plan>, Move) {
    let ps = plans(&[2, 3, 2]);
    let m = ps[1]
        .moves
        .iter()
        .find(|m| m.from.as_deref() == Some("app-0"))
        .cloned()
        .expect("a move away from app-0");
    let mut own = Ownership::new("app-0");
    for p in &ps[..2] {
        let _ = own.on_plan(PlanMessage::new(p, 4, 30), []);
        for n in 0..3 {
            let _ = own.on_held(&format!("app-{n}"), p.epoch);
        }
    }
    (own, ps, m)
}

/// Drives a small move (no copy round) to its last ack; returns the effects of that ack.
fn to_last_ack(own: &mut Ownership, d: &mut SourceDriver) -> Vec<Effect> {
    let fx = d.on(own, Event::Copied { actors: 0 });
    assert_eq!(
        fx,
        vec![Effect::PauseAndCapture {
            changed_only: false
        }]
    );
    assert_eq!(
        d.on(own, Event::Captured),
        vec![Effect::Produce { chunk: 0 }]
    );
    assert!(
        d.on(
            own,
            Event::Produced {
                chunk: 0,
                last: true
            }
        )
        .is_empty()
    );
    d.on(own, Event::Acked { chunk: 0 })
}

#[test]
fn a_move_whose_plan_was_replaced_while_it_waited_reports_superseded_and_does_nothing() {
    let (mut own, ps, m) = source();
    let _ = own.on_plan(PlanMessage::new(&ps[2], 4, 30), []);
    let (d, fx) = SourceDriver::start(&own, m, ps[1].epoch, SourceMove::default());
    assert!(d.finished(), "at its outcome already");
    assert!(matches!(
        fx.as_slice(),
        [Effect::Report {
            phase: MovePhase::Superseded,
            error: Some(_)
        }]
    ));
}

#[test]
fn the_hand_off_is_recorded_and_reported_before_the_commit_which_goes_out_while_the_plan_is_current()
 {
    let (mut own, ps, m) = source();
    let (mut d, fx) = SourceDriver::start(&own, m.clone(), ps[1].epoch, SourceMove::default());
    assert_eq!(
        fx,
        vec![
            Effect::Report {
                phase: MovePhase::Transferring,
                error: None
            },
            Effect::Copy
        ]
    );
    assert!(own.serves(m.shard));
    let fx = to_last_ack(&mut own, &mut d);
    assert_eq!(
        fx,
        vec![
            Effect::StopServing,
            Effect::Report {
                phase: MovePhase::HandedOff,
                error: None
            },
            Effect::CommitAfter { delay_ms: 0 }
        ]
    );
    assert!(!own.serves(m.shard), "handed off in the ownership");
    assert_eq!(d.commit(&own), vec![Effect::SendCommit { chunk: 1 }]);
    assert_eq!(
        d.on(&mut own, Event::Committed),
        vec![Effect::Report {
            phase: MovePhase::Done,
            error: None
        }]
    );
    assert!(d.finished());
    assert_eq!(d.next(&mut own), None, "no later move of the shard");
}

#[test]
fn a_newer_plan_before_the_commit_goes_out_leaves_it_unconfirmed() {
    let (mut own, ps, m) = source();
    let (mut d, _) = SourceDriver::start(&own, m, ps[1].epoch, SourceMove::default());
    let _ = to_last_ack(&mut own, &mut d);
    let _ = own.on_plan(PlanMessage::new(&ps[2], 4, 30), []);
    assert_eq!(d.commit(&own), vec![Effect::Unconfirmed]);
    assert!(d.finished());
}

#[test]
fn a_destination_taking_the_commit_names_the_done_it_stores_first() {
    let ps = plans(&[2, 3]);
    let m = ps[1]
        .moves
        .iter()
        .find(|m| m.to == "app-2")
        .cloned()
        .expect("a move to app-2");
    let mut own = Ownership::new("app-2");
    let _ = own.on_plan(PlanMessage::new(&ps[1], 4, 30), []);
    for n in 0..3 {
        let _ = own.on_held(&format!("app-{n}"), ps[1].epoch);
    }
    let from = m.from.clone().expect("a source");
    let chunk = |n: u32, commit: bool| Transfer {
        v: VERSION,
        epoch: ps[1].epoch,
        attempt: 1,
        shard: m.shard,
        from: from.clone(),
        chunk: n,
        last: true,
        actors: vec![],
        commit,
        copy: false,
    };
    check(&own, &chunk(0, false)).expect("taken");
    assert_eq!(
        receive(&mut own, &chunk(0, false)),
        Ok(Receive::Stage { fresh: true })
    );
    assert_eq!(
        receive(&mut own, &chunk(1, true)),
        Ok(Receive::Commit {
            fresh: false,
            done: m.clone()
        })
    );
    assert!(own.serves(m.shard));
}

#[test]
fn a_move_that_never_started_still_hands_the_shard_to_its_next_move() {
    // Plan 2 moves a shard away from app-0; plan 3 lists a later move of the same shard while the
    // first waits for its slot: once the first ends without starting, the later one is due.
    let mut ps = plans(&[2, 3]);
    // Plan 3 made while plan 2's moves are not done: their shards are still where they were.
    let pending: BTreeSet<u32> = ps[1].moves.iter().map(|m| m.shard).collect();
    let members: Vec<MemberInput> = (0..4)
        .map(|i| MemberInput::active(format!("app-{i}")))
        .collect();
    let spec = PlanSpec {
        shards: 16,
        capacity: 8,
        strategy: Strategy::AnchorHash,
    };
    ps.push(plan(ps.last(), &pending, &members, &spec).expect("plan 3"));
    let mut own = Ownership::new("app-0");
    let mut starts = Vec::new();
    for p in &ps {
        if let Some(fx) = own.on_plan(PlanMessage::new(p, 4, 30), []) {
            starts.extend(fx.start.into_iter().map(|m| (p.epoch, m)));
        }
        for n in 0..4 {
            if let Some(s) = own.on_held(&format!("app-{n}"), p.epoch) {
                starts.extend(s.start.into_iter().map(|m| (s.epoch, m)));
            }
        }
    }
    // A move of plan 2 whose shard plan 3 moves on from app-0 again.
    let first = starts
        .iter()
        .filter(|(e, _)| *e == ps[1].epoch)
        .map(|(_, m)| m.clone())
        .find(|m| {
            ps[2]
                .moves
                .iter()
                .any(|l| l.shard == m.shard && l.from.as_deref() == Some("app-0"))
        })
        .expect("plan 2 starts a move of a shard plan 3 moves again");
    let (d, _) = SourceDriver::start(&own, first.clone(), ps[1].epoch, SourceMove::default());
    assert!(d.finished(), "plan 3 came: it never starts");
    let later = ps[2]
        .moves
        .iter()
        .find(|m| m.shard == first.shard && m.from.as_deref() == Some("app-0"))
        .cloned();
    assert!(later.is_some());
    assert_eq!(
        d.next(&mut own).map(|(m, e, _)| (m, e)),
        later.map(|m| (m, ps[2].epoch)),
        "the shard's later move, held back while the first was pending, is due now"
    );
}
