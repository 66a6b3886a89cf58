//! Unit tests of `ownership.rs`.

use super::*;
use aether_core::plan::{MemberInput, Plan, PlanSpec, plan};
use aether_core::protocol::VERSION;
use aether_core::types::Strategy;
use proptest::prelude::*;
use std::collections::BTreeSet;

fn spec() -> PlanSpec {
    PlanSpec {
        shards: 64,
        capacity: 8,
        strategy: Strategy::AnchorHash,
    }
}

fn members(n: usize) -> Vec<MemberInput> {
    (0..n)
        .map(|i| MemberInput::active(format!("app-{i}")))
        .collect()
}

fn plans(sizes: &[usize]) -> Vec<Plan> {
    let mut out: Vec<Plan> = Vec::new();
    for &n in sizes {
        let p = plan(out.last(), &BTreeSet::new(), &members(n), &spec()).expect("plan");
        out.push(p);
    }
    out
}

fn msg(p: &Plan) -> PlanMessage {
    PlanMessage::new(p, 4, 30)
}

fn done(epoch: u64, shard: u32, node: &str) -> Progress {
    Progress {
        v: VERSION,
        epoch,
        shard,
        node: node.into(),
        phase: MovePhase::Done,
        actors: 0,
        duration_ms: 0,
        bytes: 0,
        error: None,
        from: None,
        to: None,
    }
}

/// A report on move `m` by `node`, naming the move's ends as nodes do.
fn report(epoch: u64, m: &Move, node: &str, phase: MovePhase) -> Progress {
    Progress {
        phase,
        from: m.from.clone(),
        to: Some(m.to.clone()),
        ..done(epoch, m.shard, node)
    }
}

/// A process's first plan, then every member saying it holds it (as when a cluster starts):
/// its effects, with the moves that waited for that.
fn first_plan(
    o: &mut Ownership,
    p: PlanMessage,
    hosted: impl IntoIterator<Item = u32>,
) -> PlanEffects {
    let epoch = p.epoch;
    let names: Vec<String> = p.members.iter().map(|m| m.name.clone()).collect();
    let mut fx = o.on_plan(p, hosted).expect("a newer plan");
    for n in names {
        if let Some(s) = o.on_held(&n, epoch) {
            fx.start.extend(s.start);
        }
    }
    fx
}

#[test]
fn a_first_plan_serves_nothing_until_every_member_holds_it() {
    let ps = plans(&[2]);
    let mut o = Ownership::new("app-0");
    o.on_held("app-2", 0);
    o.on_plan(msg(&ps[0]), []).expect("first plan");
    let mine = (0..64)
        .find(|&s| o.owner(s) == Some("app-0"))
        .expect("a shard");
    assert!(!o.serves(mine), "an older holder may not have read it");
    assert_eq!(
        o.awaiting(),
        vec!["app-1", "app-2"],
        "members and known pods"
    );
    assert!(o.on_held("app-1", ps[0].epoch).is_none());
    assert!(o.stop_waiting_for_non_members(ps[0].epoch).is_some());
    assert!(o.serves(mine));
}

#[test]
fn pending_moves_stay_with_their_source_until_done() {
    let ps = plans(&[2, 3]);
    let mut o = Ownership::new("app-0");
    o.on_plan(msg(&ps[0]), []).expect("first plan");
    o.on_plan(msg(&ps[1]), []).expect("second plan");
    let m = ps[1].moves.first().expect("a move to app-2").clone();
    let from = m.from.clone().expect("a source");
    assert_eq!(o.owner(m.shard), Some(from.as_str()));
    assert_eq!(o.on_progress(&done(ps[1].epoch, m.shard, &from)), None);
    assert_eq!(o.owner(m.shard), Some("app-2"));
    assert!(o.on_plan(msg(&ps[1]), []).is_none(), "same epoch ignored");
}

/// Found by the model check: a source restarted after it sent its commit must never serve the
/// shard again in that epoch; its stored `HandedOff` report makes it send the commit again.
#[test]
fn a_source_that_reads_its_own_hand_off_after_a_restart_only_commits_again() {
    let ps = plans(&[2, 3]);
    let m = ps[1].moves.first().expect("a move").clone();
    let from = m.from.clone().expect("source");
    let mut o = Ownership::new(from.clone());
    let handed = report(ps[1].epoch, &m, &from, MovePhase::HandedOff);
    assert_eq!(o.on_progress(&handed), None);
    let fx = first_plan(&mut o, msg(&ps[1]), []);
    assert!(fx.recommit.iter().any(|r| r.shard == m.shard), "{fx:?}");
    assert!(
        !fx.start.iter().any(|s| s.shard == m.shard),
        "no second transfer"
    );
    assert!(!o.serves(m.shard), "never served again");
    // The destination's Done replaced the hand-off in the stream (the latest report of a move
    // is kept): it names the same move, and a later plan that lists it again (the operator had
    // not read the Done) gets its commit again too.
    for epoch in [ps[1].epoch, ps[1].epoch + 1] {
        let mut o = Ownership::new(from.clone());
        o.on_progress(&report(ps[1].epoch, &m, "app-2", MovePhase::Done));
        let mut again = msg(&ps[1]);
        again.epoch = epoch;
        let fx = first_plan(&mut o, again, []);
        if epoch == ps[1].epoch {
            assert!(!fx.recommit.iter().any(|r| r.shard == m.shard), "done");
        } else {
            assert!(fx.recommit.iter().any(|r| r.shard == m.shard), "{fx:?}");
        }
        assert!(!fx.start.iter().any(|s| s.shard == m.shard));
        assert!(!o.serves(m.shard), "never served again");
    }
    // Another move of the shard reported later (it came back to this node) is not a hand-off.
    let mut o = Ownership::new(from.clone());
    o.on_progress(&handed);
    let back = Move {
        shard: m.shard,
        from: Some("app-2".into()),
        to: from.clone(),
    };
    o.on_progress(&report(ps[1].epoch + 1, &back, "app-2", MovePhase::Done));
    let mut again = msg(&ps[1]);
    again.epoch += 2;
    let fx = first_plan(&mut o, again, []);
    assert!(fx.recommit.is_empty(), "{fx:?}");
    assert!(fx.start.iter().any(|s| s.shard == m.shard));
}

/// Found by the model check: a destination restarted after a commit learns from the Done report
/// that the move is done; a late chunk of it is refused with `redirect` (never staged again), a
/// late commit acked without change.
#[test]
fn a_move_done_here_refuses_late_chunks() {
    let ps = plans(&[2, 3]);
    let m = ps[1].moves.first().expect("a move").clone();
    let from = m.from.clone().expect("source");
    let mut dst = Ownership::new("app-2");
    dst.on_progress(&done(ps[1].epoch, m.shard, "app-2"));
    first_plan(&mut dst, msg(&ps[1]), []);
    assert!(dst.serves(m.shard));
    let chunk = |commit: bool| Transfer {
        v: VERSION,
        epoch: ps[1].epoch,
        attempt: 1,
        shard: m.shard,
        from: from.clone(),
        chunk: u32::from(commit),
        last: true,
        actors: vec![],
        commit,
        copy: false,
    };
    let refused = dst.check_chunk(&chunk(false)).expect_err("late chunk");
    assert_eq!(refused.code, aether_core::protocol::ErrorCode::Redirect);
    assert_eq!(refused.owner.as_deref(), Some("app-2"));
    assert!(dst.on_chunk(&chunk(false)).is_err());
    assert_eq!(dst.on_chunk(&chunk(true)), Ok(Accept::Duplicate));
    assert!(dst.serves(m.shard));
}

#[test]
fn routes_without_a_plan_locally_forwarded_and_redirected() {
    let ps = plans(&[2]);
    let mut o = Ownership::new("app-0");
    assert_eq!(o.route("x", 0), Route::Unavailable(Unavailable::NoPlan));
    first_plan(&mut o, msg(&ps[0]), []);
    let (mut local, mut remote) = (None, None);
    for i in 0..100 {
        let id = format!("a{i}");
        match o.route(&id, 0) {
            Route::Local { .. } => local = Some(id),
            Route::Forward { to, .. } => {
                assert_eq!(to, "app-1");
                remote = Some(id);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let (local, remote) = (local.expect("a local id"), remote.expect("a remote id"));
    assert!(matches!(
        o.route(&remote, 2),
        Route::Redirect { to: "app-1", .. }
    ));
    let shard = o.shard(&local).expect("shard");
    assert_eq!(
        o.route_again(shard),
        Route::Unavailable(Unavailable::ChangingOwner(shard))
    );
}

/// A source that took plans 1 and 2 (2 -> 3 members) and handed the first move's shard off to
/// app-2: the plans, that move, and the source.
fn handed_off_source(hosted: &[u32]) -> (Vec<Plan>, Move, Ownership) {
    let ps = plans(&[2, 3]);
    let m = ps[1].moves.first().expect("a move to app-2").clone();
    let from = m.from.clone().expect("a source");
    let mut o = Ownership::new(from);
    first_plan(&mut o, msg(&ps[0]), []);
    o.on_plan(msg(&ps[1]), hosted.iter().copied())
        .expect("second plan");
    o.hand_off(ps[1].epoch, m.shard, "app-2");
    (ps, m, o)
}

/// Found by the chaos suite (seed 1202): a plan that replaces one whose move was in flight gave
/// the shard back to its source (a member flap) after the source had handed it off; the source
/// served it from the log while the destination, still on the older plan, served it too, and
/// reads of one missed the other's appends. Such a shard now waits until every member and the
/// members that left hold the plan, and so does its move.
#[test]
fn a_shard_taken_back_without_a_hand_off_waits_until_every_member_holds_the_plan() {
    let first = plans(&[2, 3])[1].moves[0].shard;
    let (ps, m, mut o) = handed_off_source(&[first]);
    let from = m.from.clone().expect("a source");
    assert!(!o.serves(m.shard));
    // The operator had no Done report yet: the move is kept from its source, whose target
    // is the source again (app-2 flapped away): no move, the source owns the shard.
    let pending: BTreeSet<u32> = [m.shard].into();
    let back = plan(Some(&ps[1]), &pending, &members(2), &spec()).expect("plan");
    assert!(back.moves.iter().all(|mv| mv.shard != m.shard));
    let fx = o.on_plan(msg(&back), []).expect("third plan");
    assert!(fx.start.is_empty());
    assert_eq!(o.owner(m.shard), Some(from.as_str()));
    assert!(!o.serves(m.shard), "not before every member holds the plan");
    let kept = (0..64)
        .find(|&s| ps[1].owner(s) == Some(from.as_str()) && back.owner(s) == Some(from.as_str()))
        .expect("a shard the source keeps");
    assert!(
        o.serves(kept),
        "a shard served by the plan before never waits"
    );
    assert_eq!(
        o.route_again(m.shard).error().map(|e| e.code),
        Some(aether_core::protocol::ErrorCode::Unavailable)
    );
    let mut waits: Vec<&str> = o.awaiting();
    waits.sort_unstable();
    let other = if from == "app-0" { "app-1" } else { "app-0" };
    let mut expected = vec![other, "app-2"];
    expected.sort_unstable();
    assert_eq!(waits, expected, "the other member and the one that left");
    assert!(
        o.on_held(other, back.epoch - 1).is_none(),
        "an older epoch counts for nothing"
    );
    assert!(o.on_held(other, back.epoch).is_none());
    assert!(!o.serves(m.shard));
    let settled = o.on_held("app-2", back.epoch).expect("settled");
    assert_eq!(settled.epoch, back.epoch);
    assert!(o.serves(m.shard));
}

#[test]
fn the_move_of_a_shard_taken_without_a_hand_off_starts_once_the_plan_settles() {
    let (ps, m, mut o) = handed_off_source(&[]);
    let from = m.from.clone().expect("a source");
    // A plan that moves the shard from its source to the other old member instead (the
    // operator did not know the hand-off): the source does not hold it any more.
    let other = if from == "app-0" { "app-1" } else { "app-0" };
    let mut next = msg(&ps[1]);
    next.epoch += 1;
    let bucket = next
        .members
        .iter()
        .find(|mb| mb.name == other)
        .map(|mb| mb.bucket)
        .expect("member");
    next.shard_map.set(m.shard, bucket);
    next.moves = vec![Move {
        shard: m.shard,
        from: Some(from.clone()),
        to: other.into(),
    }];
    let fx = o.on_plan(next.clone(), []).expect("plan");
    assert!(fx.start.is_empty(), "its move of epoch 2 still runs");
    assert_eq!(
        o.move_finished(m.shard, ps[1].epoch),
        None,
        "deferred: app-2 may still serve it"
    );
    assert!(o.on_held(other, next.epoch).is_none());
    // app-2 left nothing to wait for once it is not a member... here it is one: it must say so.
    assert!(o.stop_waiting_for_non_members(next.epoch).is_none());
    let settled = o.on_held("app-2", next.epoch).expect("settled");
    assert_eq!(settled.start.len(), 1);
    assert_eq!(settled.start[0].shard, m.shard);
    assert!(o.serves(m.shard), "it serves until its hand-off");
}

#[test]
fn a_skipped_epoch_reloads_and_waits_and_consecutive_plans_do_not() {
    let ps = plans(&[2, 3, 4]);
    let mut a = Ownership::new("app-0");
    first_plan(&mut a, msg(&ps[0]), []);
    let mine = (0..64).find(|&s| a.serves(s)).expect("a shard of app-0");
    // Consecutive: nothing waits, its worker keeps its actors.
    let mut b = a.clone();
    let mut same = msg(&ps[0]);
    same.epoch += 1;
    let fx = b.on_plan(same.clone(), [mine]).expect("plan");
    assert!(fx.stop.is_empty());
    assert!(b.settled() && b.serves(mine));
    // An epoch skipped: another node may have served the shard meanwhile.
    let mut jump = same;
    jump.epoch += 1;
    let fx = a.on_plan(jump.clone(), [mine]).expect("plan");
    assert_eq!(fx.stop, vec![mine], "its copy may be older than the log");
    assert!(!a.serves(mine));
    assert!(
        a.on_held("app-1", jump.epoch)
            .expect("settled")
            .start
            .is_empty()
    );
    assert!(a.serves(mine));
}

#[test]
fn a_source_gives_up_at_hand_off_and_a_destination_serves_at_commit() {
    let ps = plans(&[2, 3]);
    let m = ps[1].moves.first().expect("a move").clone();
    let from = m.from.clone().expect("source");
    let (mut src, mut dst) = (Ownership::new(from.clone()), Ownership::new("app-2"));
    for o in [&mut src, &mut dst] {
        first_plan(o, msg(&ps[0]), []);
    }
    let fx = src.on_plan(msg(&ps[1]), []).expect("plan");
    assert!(fx.start.iter().any(|s| s.shard == m.shard));
    dst.on_plan(msg(&ps[1]), []);
    assert!(src.serves(m.shard) && !dst.serves(m.shard));
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
    let id = (0..100_000)
        .map(|i| format!("a{i}"))
        .find(|id| dst.shard(id) == Some(m.shard))
        .expect("an actor of the moving shard");
    assert!(matches!(dst.route(&id, 0), Route::Forward { .. }));
    assert_eq!(
        dst.on_chunk(&chunk(0, false)),
        Ok(Accept::Stage { fresh: true })
    );
    assert!(!dst.serves(m.shard), "staged, not served");
    // Its source paused it (the chunk is not a copy): a request here waits for the commit.
    assert_eq!(dst.route(&id, 1), Route::Arriving { shard: m.shard });
    assert!(matches!(
        dst.route_after_hold(m.shard, 2),
        Route::Redirect { .. }
    ));
    src.hand_off(ps[1].epoch, m.shard, "app-2");
    assert!(!src.serves(m.shard));
    assert_eq!(
        dst.on_chunk(&chunk(1, true)),
        Ok(Accept::Commit { fresh: false })
    );
    assert!(dst.serves(m.shard));
    assert!(matches!(dst.route(&id, 1), Route::Local { .. }));
    // The operator had not seen Done and lists the move again: the source commits again (it
    // does not know whether its commit arrived), the destination, which does, is done at once.
    let mut again = msg(&ps[1]);
    again.epoch += 1;
    let fx = src.on_plan(again.clone(), []).expect("newer plan");
    assert!(
        fx.recommit
            .iter()
            .any(|r| r.shard == m.shard && r.to == "app-2")
    );
    assert!(
        !fx.report_done.iter().any(|d| d.shard == m.shard),
        "not Done before it is confirmed"
    );
    assert!(!fx.start.iter().any(|s| s.shard == m.shard), "still moving");
    assert!(!src.serves(m.shard));
    let fx = dst.on_plan(again, [m.shard]).expect("newer plan");
    assert!(fx.report_done.iter().any(|d| d.shard == m.shard));
    assert!(
        fx.stop.contains(&m.shard),
        "its worker is reloaded from the log"
    );
    assert!(dst.serves(m.shard));
}

#[test]
fn a_failed_move_drops_what_the_destination_staged() {
    let ps = plans(&[2, 3]);
    let m = ps[1].moves.first().expect("a move").clone();
    let from = m.from.clone().expect("source");
    let mut dst = Ownership::new("app-2");
    dst.on_plan(msg(&ps[0]), []);
    dst.on_plan(msg(&ps[1]), []);
    let t = Transfer {
        v: VERSION,
        epoch: ps[1].epoch,
        attempt: 1,
        shard: m.shard,
        from: from.clone(),
        chunk: 0,
        last: true,
        actors: vec![],
        commit: false,
        copy: false,
    };
    assert!(dst.on_chunk(&t).is_ok());
    let mut failed = done(ps[1].epoch, m.shard, &from);
    failed.phase = MovePhase::Failed;
    failed.node = "app-9".into();
    assert_eq!(dst.on_progress(&failed), None, "only the move's source");
    failed.node = from;
    assert_eq!(dst.on_progress(&failed), Some(m.shard));
    assert!(!dst.serves(m.shard));
}

proptest! {
    /// Whatever order plans and Done reports arrive in, a node's view converges on the last
    /// plan's targets once every move of it is reported done; a report for a plan not held yet
    /// is kept until the plan comes; workers of shards that are not ours are stopped.
    #[test]
    fn views_converge_on_the_plan_whatever_the_order(
        sizes in prop::collection::vec(1usize..6, 1..5),
        me in 0usize..6,
        order in prop::collection::vec(any::<prop::sample::Index>(), 0..200),
    ) {
        let ps = plans(&sizes);
        let me = format!("app-{me}");
        let mut o = Ownership::new(me.clone());
        let mut events: Vec<Result<PlanMessage, Progress>> = Vec::new();
        for p in &ps {
            events.push(Ok(msg(p)));
            for m in &p.moves {
                events.push(Err(done(p.epoch, m.shard, m.from.as_deref().unwrap_or(""))));
            }
        }
        // Shuffle; then the plans go back in epoch order (the KV watch delivers them in order).
        for (i, ix) in order.iter().enumerate() {
            let n = events.len();
            let (a, b) = (i % n, ix.index(n));
            if events[a].is_err() || events[b].is_err() {
                events.swap(a, b);
            }
        }
        let slots: Vec<usize> = (0..events.len()).filter(|&i| events[i].is_ok()).collect();
        let mut in_order: Vec<PlanMessage> =
            slots.iter().filter_map(|&i| events[i].clone().ok()).collect();
        in_order.sort_by_key(|p| p.epoch);
        for (slot, p) in slots.into_iter().zip(in_order) {
            events[slot] = Ok(p);
        }
        let mut hosted: BTreeSet<u32> = BTreeSet::new();
        for e in events {
            match e {
                Ok(p) => {
                    let fx = o.on_plan(p, hosted.iter().copied()).expect("newer");
                    for s in &fx.stop {
                        hosted.remove(s);
                    }
                    for shard in &hosted {
                        prop_assert!(o.serves(*shard), "a worker left on a shard not ours");
                    }
                }
                Err(p) => { o.on_progress(&p); }
            }
            // Workers start on demand for shards this node serves.
            for shard in 0..64u32 {
                if o.serves(shard) {
                    hosted.insert(shard);
                }
            }
        }
        let last = ps.last().expect("a plan");
        prop_assert_eq!(o.pending_moves(), 0);
        let table = RouteTable::new(last.shards, &msg(last).members, &msg(last).shard_map);
        for shard in 0..64u32 {
            let target = table.owner_of_shard(shard).map(|i| msg(last).members[i as usize].name.clone());
            prop_assert_eq!(o.owner(shard).map(str::to_owned), target);
        }
    }
}
