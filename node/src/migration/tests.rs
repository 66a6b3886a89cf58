//! Unit tests of `migration.rs`.

use super::*;
use aether_core::protocol::{ActorRef, ActorSnapshot, Bytes, VERSION};
use proptest::prelude::*;

fn chunk(epoch: u64, n: u32, last: bool) -> Transfer {
    Transfer {
        v: VERSION,
        epoch,
        attempt: 1,
        shard: 3,
        from: "app-0".into(),
        chunk: n,
        last,
        commit: false,
        actors: vec![ActorSnapshot {
            actor: ActorRef::new("counter", format!("a{n}")),
            version: 1,
            seq: 1,
            state: Bytes(vec![]),
        }],
        copy: false,
    }
}

fn send(chunk: u32) -> Action {
    Action::Produce { chunk }
}

fn commit(chunk: u32, delay_ms: u64) -> Action {
    Action::Commit { chunk, delay_ms }
}

/// The shell's part: every new chunk asked for is produced at once; `chunks` exist in all.
/// Returns the actions that are not about producing.
fn produce(m: &mut SourceMove, actions: Vec<Action>, chunks: u32, made: &mut u32) -> Vec<Action> {
    let mut out = Vec::new();
    let mut todo: std::collections::VecDeque<Action> = actions.into();
    while let Some(a) = todo.pop_front() {
        if let Action::Produce { chunk } = a {
            assert_eq!(chunk, *made, "chunks are made in order");
            *made += 1;
            todo.extend(m.on(Event::Produced {
                chunk,
                last: chunk + 1 == chunks,
            }));
        }
        out.push(a);
    }
    out
}

/// A move of a shard too small for a copy round: paused at once.
fn paused() -> SourceMove {
    let mut m = SourceMove::default();
    assert_eq!(m.on(Event::Start), vec![Action::Copy]);
    assert_eq!(
        m.on(Event::Copied {
            actors: COPY_FROM_ACTORS - 1
        }),
        vec![Action::PauseAndCapture {
            changed_only: false
        }]
    );
    m
}

fn started(chunks: u32) -> (SourceMove, Vec<Action>, u32) {
    let mut m = paused();
    let mut made = 0;
    let first = m.on(Event::Captured);
    let actions = produce(&mut m, first, chunks, &mut made);
    (m, actions, made)
}

#[test]
fn happy_path() {
    let (mut m, first, _) = started(2);
    assert_eq!(first, vec![send(0), send(1)]);
    assert!(
        m.on(Event::Acked { chunk: 1 }).is_empty(),
        "acks in any order"
    );
    assert!(
        m.on(Event::Acked { chunk: 1 }).is_empty(),
        "a duplicate ack"
    );
    assert_eq!(
        m.on(Event::Acked { chunk: 0 }),
        vec![Action::HandOff, commit(2, 0)]
    );
    assert!(
        m.on(Event::Deadline).is_empty(),
        "no rollback after the hand-off"
    );
    assert_eq!(
        m.on(Event::CommitUnanswered),
        vec![commit(2, RETRY_DELAY_MS)]
    );
    assert_eq!(m.on(Event::Committed), vec![Action::ReportDone]);
    assert!(m.finished());
}

#[test]
fn a_newer_plan_before_the_commit_is_confirmed_reports_nothing() {
    let (mut m, _, _) = started(1);
    assert_eq!(m.on(Event::Acked { chunk: 0 })[0], Action::HandOff);
    assert_eq!(m.on(Event::Superseded), vec![Action::CommitUnconfirmed]);
    assert!(m.finished());
    assert!(m.on(Event::Committed).is_empty(), "a late confirmation");
    let (mut m, _, _) = started(1);
    m.on(Event::Acked { chunk: 0 });
    let behind = ErrorReply::unavailable("no plan yet", 7);
    assert_eq!(m.on(Event::CommitRefused(behind)), vec![commit(1, 7)]);
    let newer = ErrorReply::stale_epoch("newer", 9);
    assert_eq!(
        m.on(Event::CommitRefused(newer)),
        vec![Action::CommitUnconfirmed]
    );
}

#[test]
fn a_newer_plan_before_the_hand_off_stops_the_move_at_once() {
    let (mut m, _, _) = started(2);
    assert_eq!(
        m.on(Event::Superseded),
        vec![Action::Resume, Action::ReportSuperseded]
    );
    assert!(m.finished());
    assert!(m.on(Event::Acked { chunk: 0 }).is_empty(), "a late ack");
}

#[test]
fn another_attempt_of_a_move_restages_and_never_replaces_a_commit() {
    let mut inc = None;
    assert_eq!(
        accept_chunk(&mut inc, 5, Some("app-0"), &chunk(5, 0, true)),
        Ok(Accept::Stage { fresh: true })
    );
    // The source restarted before its commit and moves the shard again.
    let mut again = chunk(5, 0, true);
    again.attempt = 2;
    assert_eq!(
        accept_chunk(&mut inc, 5, Some("app-0"), &again),
        Ok(Accept::Stage { fresh: true }),
        "the earlier attempt's staging goes"
    );
    let mut commit = chunk(5, 1, true);
    commit.attempt = 2;
    commit.commit = true;
    assert_eq!(
        accept_chunk(&mut inc, 5, Some("app-0"), &commit),
        Ok(Accept::Commit { fresh: false })
    );
    let mut third = chunk(5, 0, true);
    third.attempt = 3;
    let refused = accept_chunk(&mut inc, 5, Some("app-0"), &third).expect_err("committed");
    assert_eq!(
        refused.code,
        ErrorCode::Redirect,
        "the move is done: the source lets go"
    );
    assert!(inc.is_some_and(|i| i.committed && i.attempt == 2));
}

/// Found by the model check (`tests/model_check.rs`): a late chunk of an attempt that failed
/// (its source rolled back, took writes, restarted and moved the shard again) must not replace
/// the newer attempt's staging, or the newer commit would serve the older copy.
#[test]
fn an_older_attempt_never_replaces_a_newer_one() {
    let mut inc = None;
    let mut newer = chunk(5, 0, true);
    newer.attempt = 9;
    assert_eq!(
        accept_chunk(&mut inc, 5, Some("app-0"), &newer),
        Ok(Accept::Stage { fresh: true })
    );
    let mut late = chunk(5, 0, true);
    late.attempt = 4;
    let refused = accept_chunk(&mut inc, 5, Some("app-0"), &late).expect_err("older");
    assert_eq!(refused.code, ErrorCode::StaleEpoch);
    let mut old_commit = late.clone();
    old_commit.commit = true;
    old_commit.chunk = 1;
    assert!(accept_chunk(&mut inc, 5, Some("app-0"), &old_commit).is_err());
    assert!(inc.as_ref().is_some_and(|i| i.attempt == 9 && !i.committed));
    // A newer attempt's commit over an older staging (kept across a restart) drops it.
    let mut inc = None;
    assert!(accept_chunk(&mut inc, 5, Some("app-0"), &late).is_ok());
    let mut commit = newer.clone();
    commit.commit = true;
    commit.chunk = 1;
    assert_eq!(
        accept_chunk(&mut inc, 5, Some("app-0"), &commit),
        Ok(Accept::Commit { fresh: true })
    );
}

#[test]
fn a_commit_must_follow_the_last_chunk() {
    let mut inc = None;
    assert!(accept_chunk(&mut inc, 5, Some("app-0"), &chunk(5, 1, true)).is_ok());
    let mut commit = chunk(5, 3, true);
    commit.commit = true;
    let wrong = accept_chunk(&mut inc, 5, Some("app-0"), &commit).expect_err("numbered 3");
    assert_eq!(wrong.code, ErrorCode::Malformed);
    commit.chunk = 2;
    assert_eq!(
        accept_chunk(&mut inc, 5, Some("app-0"), &commit),
        Ok(Accept::Commit { fresh: true }),
        "chunk 0 never came: what is staged goes, the log has it all"
    );
}

#[test]
fn an_empty_shard_sends_one_empty_chunk() {
    let (mut m, first, _) = started(1);
    assert_eq!(first, vec![send(0)]);
    assert_eq!(m.on(Event::Acked { chunk: 0 })[0], Action::HandOff);
}

#[test]
fn at_most_a_window_of_chunks_is_unacked() {
    let (mut m, first, mut made) = started(10);
    assert_eq!(first, (0..WINDOW).map(send).collect::<Vec<_>>());
    // Each ack lets exactly one more chunk go, in order.
    for n in 0..(10 - WINDOW) {
        let next = m.on(Event::Acked { chunk: n });
        assert_eq!(produce(&mut m, next, 10, &mut made), vec![send(WINDOW + n)]);
    }
    for n in (10 - WINDOW)..9 {
        assert!(m.on(Event::Acked { chunk: n }).is_empty());
    }
    assert!(
        m.on(Event::Acked { chunk: 42 }).is_empty(),
        "an ack for a chunk never sent"
    );
    assert_eq!(m.on(Event::Acked { chunk: 9 })[0], Action::HandOff);
}

#[test]
fn no_hand_off_before_the_last_chunk_is_known() {
    let mut m = paused();
    assert_eq!(m.on(Event::Captured), vec![send(0)]);
    // Chunk 0 was asked for but not produced yet: its ack cannot count.
    assert!(m.on(Event::Acked { chunk: 0 }).is_empty());
    assert_eq!(
        m.on(Event::Produced {
            chunk: 0,
            last: false
        }),
        vec![send(1)]
    );
    assert_eq!(m.on(Event::Acked { chunk: 0 }), Vec::new());
    assert!(
        m.on(Event::Produced {
            chunk: 1,
            last: true
        })
        .is_empty()
    );
    assert_eq!(m.on(Event::Acked { chunk: 1 })[0], Action::HandOff);
}

#[test]
fn a_chunk_that_cannot_be_produced_rolls_back() {
    let mut m = paused();
    m.on(Event::Captured);
    let actions = m.on(Event::ProduceFailed {
        chunk: 0,
        reason: "not encodable".into(),
    });
    assert_eq!(actions[0], Action::Resume);
    assert!(m.finished());
}

/// A shard of many actors is copied while served, then paused: the chunks after the pause are
/// numbered on from the copies', and the hand-off waits for all of them.
#[test]
fn a_copy_round_comes_before_the_pause() {
    let mut m = SourceMove::default();
    assert_eq!(m.on(Event::Start), vec![Action::Copy]);
    assert!(
        m.on(Event::Captured).is_empty(),
        "no capture before the copy"
    );
    let first = m.on(Event::Copied {
        actors: COPY_FROM_ACTORS,
    });
    let mut made = 0;
    assert_eq!(produce(&mut m, first, 2, &mut made), vec![send(0), send(1)]);
    assert!(m.on(Event::Acked { chunk: 1 }).is_empty());
    assert_eq!(
        m.on(Event::Acked { chunk: 0 }),
        vec![Action::PauseAndCapture { changed_only: true }],
        "every copy staged: pause"
    );
    assert!(m.on(Event::Acked { chunk: 0 }).is_empty(), "a late ack");
    assert_eq!(m.on(Event::Captured), vec![send(2)]);
    assert!(
        m.on(Event::Produced {
            chunk: 2,
            last: true
        })
        .is_empty()
    );
    assert_eq!(
        m.on(Event::Acked { chunk: 2 }),
        vec![Action::HandOff, commit(3, 0)]
    );
    assert_eq!(m.on(Event::Committed), vec![Action::ReportDone]);
}

#[test]
fn a_failure_in_the_copy_round_keeps_the_shard() {
    for event in [
        Event::Deadline,
        Event::NoAnswer {
            chunk: 0,
            reason: "gone".into(),
        },
    ] {
        let mut m = SourceMove::default();
        m.on(Event::Start);
        m.on(Event::Copied { actors: 1_000 });
        m.on(Event::Produced {
            chunk: 0,
            last: true,
        });
        let actions = m.on(event);
        assert_eq!(actions[0], Action::Resume);
        assert!(matches!(m.phase, Phase::RolledBack(_)));
    }
    let mut m = SourceMove::default();
    m.on(Event::Start);
    assert_eq!(
        m.on(Event::Superseded),
        vec![Action::Resume, Action::ReportSuperseded]
    );
}

/// A copy that arrives after a chunk sent after the pause is late (that chunk holds newer
/// states) and is not staged; a commit over a partial staging (a restart lost some chunks)
/// drops it, so a copy whose replacement never arrived is never served.
#[test]
fn a_late_copy_is_not_staged_and_a_partial_staging_is_never_served() {
    let copy = |n: u32| {
        let mut c = chunk(5, n, false);
        c.copy = true;
        c
    };
    let mut inc = None;
    let accept = |inc: &mut Option<Incoming>, c: &Transfer| accept_chunk(inc, 5, Some("app-0"), c);
    assert_eq!(
        accept(&mut inc, &copy(0)),
        Ok(Accept::Stage { fresh: true })
    );
    assert_eq!(
        accept(&mut inc, &chunk(5, 2, true)),
        Ok(Accept::Stage { fresh: false })
    );
    assert_eq!(
        accept(&mut inc, &copy(1)),
        Ok(Accept::Duplicate),
        "late copy"
    );
    let mut commit = chunk(5, 3, true);
    commit.commit = true;
    assert_eq!(
        accept(&mut inc, &commit),
        Ok(Accept::Commit { fresh: false })
    );
    // After a restart, only the copy and the last chunk came: the staging is partial.
    let mut inc = None;
    assert!(accept(&mut inc, &copy(0)).is_ok());
    assert!(accept(&mut inc, &chunk(5, 2, true)).is_ok());
    assert_eq!(
        accept(&mut inc, &commit),
        Ok(Accept::Commit { fresh: true })
    );
}

#[test]
fn a_dead_destination_rolls_back() {
    let (mut m, _, _) = started(1);
    let actions = m.on(Event::NoAnswer {
        chunk: 0,
        reason: "timed out".into(),
    });
    assert_eq!(actions[0], Action::Resume);
    assert!(matches!(&actions[1], Action::ReportFailed(r) if r.contains("timed out")));
}

/// Found by the model check (`tests/model_check.rs`): a source restarted after it sent the
/// commit moves the shard again; the destination, committed already, refuses the new attempt.
/// Rolling back would make the source serve beside the destination: it hands off instead.
#[test]
fn a_destination_committed_already_takes_the_shard_and_the_source_never_resumes() {
    let (mut m, _, _) = started(1);
    let mut error = ErrorReply::new(ErrorCode::Redirect, "committed already");
    error.owner = Some("app-1".into());
    let actions = m.on(Event::Refused { chunk: 0, error });
    assert_eq!(actions, vec![Action::HandOff, Action::ReportDone]);
    assert_eq!(m.phase, Phase::Done);
    assert!(!actions.contains(&Action::Resume));
}

#[test]
fn a_destination_behind_is_retried_until_the_deadline() {
    let (mut m, _, _) = started(1);
    let mut e = ErrorReply::new(ErrorCode::Unavailable, "not yet");
    e.retry_after_ms = Some(5);
    assert_eq!(
        m.on(Event::Refused { chunk: 0, error: e }),
        vec![Action::Resend {
            chunk: 0,
            delay_ms: 5
        }]
    );
    assert_eq!(m.on(Event::Deadline)[0], Action::Resume);
}

#[test]
fn destination_checks_epochs_and_sources() {
    let mut inc = None;
    let stale = accept_chunk(&mut inc, 5, Some("app-0"), &chunk(4, 0, true)).expect_err("stale");
    assert_eq!(stale.code, ErrorCode::StaleEpoch);
    let ahead = accept_chunk(&mut inc, 5, Some("app-0"), &chunk(6, 0, true)).expect_err("ahead");
    assert_eq!(ahead.code, ErrorCode::Unavailable);
    let wrong = accept_chunk(&mut inc, 5, Some("app-9"), &chunk(5, 0, true)).expect_err("source");
    assert_eq!(wrong.code, ErrorCode::StaleEpoch);
    assert!(inc.is_none(), "nothing refused is remembered");
}

#[test]
fn destination_stages_chunks_in_any_order_once() {
    let mut inc = None;
    let accept = |inc: &mut Option<Incoming>, c: &Transfer| accept_chunk(inc, 5, Some("app-0"), c);
    assert_eq!(
        accept(&mut inc, &chunk(5, 1, false)),
        Ok(Accept::Stage { fresh: true })
    );
    assert_eq!(
        accept(&mut inc, &chunk(5, 2, true)),
        Ok(Accept::Stage { fresh: false })
    );
    assert_eq!(accept(&mut inc, &chunk(5, 1, false)), Ok(Accept::Duplicate));
    assert_eq!(
        accept(&mut inc, &chunk(5, 0, false)),
        Ok(Accept::Stage { fresh: false })
    );
    let mut commit = chunk(5, 3, true);
    commit.commit = true;
    commit.actors.clear();
    assert_eq!(
        accept(&mut inc, &commit),
        Ok(Accept::Commit { fresh: false })
    );
    assert_eq!(
        accept(&mut inc, &chunk(5, 0, false)),
        Ok(Accept::Duplicate),
        "a late copy after the commit changes nothing"
    );
    commit.epoch = 4;
    assert!(
        accept_chunk(&mut inc, 5, Some("app-0"), &commit).is_err(),
        "an old commit is refused"
    );
}

proptest! {
    /// Whatever the events, a move ends with exactly one of hand-off or resume, never both, never
    /// hands off before every chunk was acked, and never has more than a window of chunks unacked.
    #[test]
    fn outcome_is_exclusive(chunks in 1u32..8, events in prop::collection::vec((0u8..9, 0u32..10), 0..40)) {
        let (mut m, mut actions, mut made) = started(chunks);
        let mut acked = BTreeSet::new();
        for (e, chunk) in events {
            let ev = match e {
                0 => {
                    if chunk < made && matches!(m.phase, Phase::Sending { .. }) {
                        acked.insert(chunk);
                    }
                    Event::Acked { chunk }
                }
                1 => Event::NoAnswer { chunk, reason: "x".into() },
                2 => Event::Refused { chunk, error: ErrorReply::new(ErrorCode::Unavailable, "later") },
                3 => Event::Deadline,
                4 => Event::CommitUnanswered,
                5 => Event::Committed,
                7 => Event::Superseded,
                8 => Event::CommitRefused(ErrorReply::new(ErrorCode::StaleEpoch, "newer")),
                _ => Event::Refused { chunk, error: ErrorReply::new(ErrorCode::StaleEpoch, "no") },
            };
            let out = m.on(ev);
            let out = produce(&mut m, out, chunks, &mut made);
            if out.contains(&Action::HandOff) {
                prop_assert_eq!(acked.len() as u32, chunks);
            }
            if let Phase::Sending { sent, acked, .. } = &m.phase {
                prop_assert!(*sent - acked.len() as u32 <= WINDOW);
            }
            prop_assert!(made <= chunks, "never a chunk past the last");
            actions.extend(out);
        }
        let handoffs = actions.iter().filter(|a| **a == Action::HandOff).count();
        let resumes = actions.iter().filter(|a| **a == Action::Resume).count();
        prop_assert!(handoffs + resumes <= 1);
        // Finished: rolled back, or handed off and committed; never Done without the commit.
        let reported_done = actions.contains(&Action::ReportDone);
        prop_assert_eq!(reported_done, m.phase == Phase::Done);
        let unconfirmed = actions.contains(&Action::CommitUnconfirmed);
        prop_assert!(!unconfirmed || handoffs == 1, "unconfirmed only after a hand-off");
        let superseded = actions.contains(&Action::ReportSuperseded);
        prop_assert!(!superseded || resumes == 1, "superseded before the hand-off resumes");
        prop_assert_eq!(m.finished(), resumes == 1 || reported_done || unconfirmed);
    }
}

proptest! {
    /// The destination machine, whatever chunks arrive (any epoch, source, number, commit flag,
    /// repeated and out of order): it stages a chunk of a move at most once, stages nothing and
    /// commits nothing it refused, commits only a move of the epoch and source it holds, and
    /// after a commit takes every further chunk of that move as a duplicate.
    #[test]
    fn a_destination_stages_each_chunk_once_and_commits_only_its_move(
        chunks in prop::collection::vec((4u64..7, any::<bool>(), 0u32..4, 0u8..4), 0..40),
    ) {
        let mut inc: Option<Incoming> = None;
        let mut staged: BTreeSet<(u64, String, u32)> = BTreeSet::new();
        let mut committed: Option<(u64, String)> = None;
        for (epoch, from_zero, n, kind) in chunks {
            let mut c = chunk(epoch, n, kind == 1);
            c.from = if from_zero { "app-0".into() } else { "app-9".into() };
            c.commit = kind == 3;
            let before = inc.clone();
            match accept_chunk(&mut inc, 5, Some("app-0"), &c) {
                Err(_) => {
                    prop_assert!(epoch != 5 || !from_zero || c.commit, "refused a chunk of its own move");
                    prop_assert_eq!(&inc, &before, "a refusal changes nothing");
                }
                Ok(a) => {
                    prop_assert_eq!(epoch, 5);
                    prop_assert!(from_zero);
                    match a {
                        Accept::Stage { .. } => {
                            prop_assert!(committed.is_none(), "staged after the commit");
                            prop_assert!(staged.insert((epoch, c.from.clone(), n)), "chunk {} staged twice", n);
                        }
                        Accept::Commit { .. } => committed = Some((epoch, c.from.clone())),
                        Accept::Duplicate => {}
                    }
                }
            }
        }
        if let (Some(inc), Some(_)) = (&inc, &committed) {
            prop_assert!(inc.committed);
        }
    }
}
