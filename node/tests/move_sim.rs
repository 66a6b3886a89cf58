//! A source and a destination node run one shard's move against each other through a simulated
//! network that loses, duplicates and reorders messages, while either side may crash (the
//! destination restarts with nothing staged; the source stops for good) and the source serves
//! writes whenever it owns the shard. The nodes are the pure code the real node runs: its
//! [`Ownership`] and its move driver ([`SourceDriver`], [`driver::receive`]), whose effects the
//! shells here carry out as `moves.rs` does, without NATS. Progress reports are durable, as the progress stream makes them:
//! never lost, read again by a destination that restarts (before its plans, as the node does).
//! Checked at every step: at most one side serves the shard; what the destination serves is what the
//! log holds (it holds exactly what the source captured); a move rolled back leaves the source
//! serving; once the faults stop, exactly one side serves.

use aether_core::plan::{MemberInput, Move, Plan, PlanSpec, plan};
use aether_core::protocol::{
    ActorRef, ActorSnapshot, Bytes, ErrorReply, PlanMessage, Progress, Transfer, VERSION,
};
use aether_core::types::{MovePhase, Strategy as Placement};
use aether_node::driver::{self, Effect, Receive, SourceDriver};
use aether_node::migration::{Event, SourceMove};
use aether_node::ownership::Ownership;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

const DEST: &str = "app-2";
/// Actors per chunk in the simulation.
const PER_CHUNK: usize = 2;

#[derive(Clone, Debug)]
enum Msg {
    /// Source -> destination: a chunk or the commit.
    Chunk(Transfer),
    /// Destination -> source: the answer to chunk `chunk` of epoch `epoch`.
    Reply {
        epoch: u64,
        chunk: u32,
        commit: bool,
        result: Result<(), ErrorReply>,
    },
    /// Source -> everyone: a progress report.
    Progress(Progress),
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Deliver(prop::sample::Index),
    Duplicate(prop::sample::Index),
    Lose(prop::sample::Index),
    Deadline,
    CrashDestination,
    CrashSource,
    Write(u8),
    RetryPlan,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => any::<prop::sample::Index>().prop_map(Op::Deliver),
        1 => any::<prop::sample::Index>().prop_map(Op::Duplicate),
        1 => any::<prop::sample::Index>().prop_map(Op::Lose),
        1 => Just(Op::Deadline),
        1 => Just(Op::CrashDestination),
        1 => Just(Op::CrashSource),
        2 => any::<u8>().prop_map(Op::Write),
        1 => Just(Op::RetryPlan),
    ]
}

struct Source {
    own: Ownership,
    alive: bool,
    /// The attempt running: its epoch, machine, captured actors and chunks made.
    attempt: Option<Attempt>,
    /// Live state while serving (the log's values; dropped at the hand-off).
    paused: bool,
}

struct Attempt {
    id: u64,
    /// Only the commit, in a newer epoch, of a move handed off before.
    recommit: bool,
    epoch: u64,
    /// The node's own move driver (`driver.rs`), as `moves.rs` runs it.
    driver: SourceDriver,
    /// The copy round's values (taken while the source serves).
    copied: Vec<(String, u64)>,
    /// The values at the pause (what the destination must end up holding), and the ones of them
    /// sent after it (those that changed since the copy).
    captured: Vec<(String, u64)>,
    changed: Vec<(String, u64)>,
    /// Chunks of the copy round.
    first: u32,
    paused: bool,
    chunks: Vec<Transfer>,
}

struct Destination {
    own: Ownership,
    /// The shard's worker: actors installed by chunks (served once the commit came).
    staged: BTreeMap<String, u64>,
    /// Restarted since the first chunk of the move being staged arrived.
    crashed_since_first_chunk: bool,
}

struct World {
    shard: u32,
    /// Moves copy first from this many actors on.
    copy_from: usize,
    from: String,
    plans: Vec<PlanMessage>,
    /// The event log: each actor's value.
    log: BTreeMap<String, u64>,
    src: Source,
    dst: Destination,
    net: Vec<Msg>,
    retry_sent: bool,
    /// Every progress report sent (the progress stream).
    durable: Vec<Progress>,
    /// Attempts started.
    attempts: u64,
}

fn spec() -> PlanSpec {
    PlanSpec {
        shards: 16,
        capacity: 4,
        strategy: Placement::AnchorHash,
    }
}

fn members(n: usize) -> Vec<MemberInput> {
    (0..n)
        .map(|i| MemberInput::active(format!("app-{i}")))
        .collect()
}

/// Every member of `plan` says it holds it (the members not simulated take each plan at once).
/// A process's first plan serves nothing before that; the moves that waited are not simulated.
fn held_by_all(own: &mut Ownership, plan: &PlanMessage) {
    for m in &plan.members {
        own.on_held(&m.name, plan.epoch);
    }
}

impl World {
    fn new(actors: usize, copy_from: usize) -> Self {
        let p1: Plan = plan(None, &BTreeSet::new(), &members(2), &spec()).expect("plan");
        let p2 = plan(Some(&p1), &BTreeSet::new(), &members(3), &spec()).expect("plan");
        let mv = p2.moves.first().expect("a move to app-2").clone();
        let from = mv.from.clone().expect("a source");
        let plans = vec![PlanMessage::new(&p1, 4, 30), PlanMessage::new(&p2, 4, 30)];
        let src = Source {
            own: Ownership::new(from.clone()),
            alive: true,
            attempt: None,
            paused: false,
        };
        let mut dst = Destination {
            own: Ownership::new(DEST),
            staged: BTreeMap::new(),
            crashed_since_first_chunk: false,
        };
        for p in &plans {
            dst.own.on_plan(p.clone(), []);
            held_by_all(&mut dst.own, p);
        }
        let mut w = Self {
            shard: mv.shard,
            copy_from,
            from,
            plans,
            log: (0..actors).map(|i| (format!("a{i}"), 0)).collect(),
            src,
            dst,
            net: Vec::new(),
            retry_sent: false,
            durable: Vec::new(),
            attempts: 0,
        };
        w.source_plan(0);
        held_by_all(&mut w.src.own, &w.plans[0]);
        w.source_plan(1);
        w
    }

    fn src_serves(&self) -> bool {
        self.src.alive && self.src.own.serves(self.shard)
    }

    fn dst_serves(&self) -> bool {
        self.dst.own.serves(self.shard)
    }

    /// The source takes plan `i` and starts the moves it says.
    fn source_plan(&mut self, i: usize) {
        let Some(fx) = self.src.own.on_plan(self.plans[i].clone(), []) else {
            return;
        };
        // Only the simulated shard's move runs; the source's other moves are not simulated. A
        // move running stops at once (before its hand-off) or stops committing (after it).
        if self
            .src
            .attempt
            .as_ref()
            .is_some_and(|a| a.epoch < fx.epoch)
        {
            self.source_event(Event::Superseded);
        }
        if let Some(m) = fx.recommit.iter().find(|m| m.shard == self.shard) {
            let (driver, first) = SourceDriver::recommit(m.clone(), fx.epoch);
            self.attempts += 1;
            self.src.attempt = Some(Attempt {
                id: self.attempts,
                recommit: true,
                epoch: fx.epoch,
                driver,
                copied: Vec::new(),
                captured: Vec::new(),
                changed: Vec::new(),
                first: 0,
                paused: false,
                chunks: Vec::new(),
            });
            self.source_effects(first);
        }
        if fx.start.iter().any(|m| m.shard == self.shard) {
            self.start_attempt(fx.epoch);
        }
    }

    /// The simulated shard's move from the source to the destination.
    fn the_move(&self) -> Move {
        Move {
            shard: self.shard,
            from: Some(self.from.clone()),
            to: DEST.to_owned(),
        }
    }

    fn start_attempt(&mut self, epoch: u64) {
        self.dst.crashed_since_first_chunk = false;
        let machine = SourceMove {
            copy_from: self.copy_from,
            ..SourceMove::default()
        };
        let (driver, first) = SourceDriver::start(&self.src.own, self.the_move(), epoch, machine);
        self.attempts += 1;
        self.src.attempt = Some(Attempt {
            id: self.attempts,
            recommit: false,
            epoch,
            driver,
            copied: Vec::new(),
            captured: Vec::new(),
            changed: Vec::new(),
            first: 0,
            paused: false,
            chunks: Vec::new(),
        });
        self.source_effects(first);
    }

    /// Reports progress: stored, and delivered to the destination.
    fn report(&mut self, p: Progress) {
        self.durable.push(p.clone());
        self.net.push(Msg::Progress(p));
    }

    /// Feeds the source's driver and carries out its effects, as `moves.rs` does.
    fn source_event(&mut self, event: Event) {
        let Some(a) = self.src.attempt.as_mut() else {
            return;
        };
        let out = a.driver.on(&mut self.src.own, event);
        self.source_effects(out);
    }

    /// Carries out the source's effects in order, feeding back the events they cause.
    fn source_effects(&mut self, first: Vec<Effect>) {
        let mut todo: VecDeque<Effect> = first.into();
        while let Some(effect) = todo.pop_front() {
            let Some(a) = self.src.attempt.as_mut() else {
                return;
            };
            let epoch = a.epoch;
            let mut next = Vec::new();
            match effect {
                Effect::Copy => {
                    a.copied = self.log.iter().map(|(k, v)| (k.clone(), *v)).collect();
                    next.push(Event::Copied {
                        actors: a.copied.len(),
                    });
                }
                Effect::PauseAndCapture { changed_only } => {
                    self.src.paused = true;
                    a.paused = true;
                    a.first = a.chunks.len() as u32;
                    a.captured = self.log.iter().map(|(k, v)| (k.clone(), *v)).collect();
                    // Only what changed since the copy round (all of it without one).
                    a.changed = a
                        .captured
                        .iter()
                        .filter(|c| !changed_only || !a.copied.contains(c))
                        .cloned()
                        .collect();
                    next.push(Event::Captured);
                }
                Effect::Produce { chunk } => {
                    assert_eq!(chunk as usize, a.chunks.len(), "chunks are made in order");
                    let (list, n) = if a.paused {
                        (&a.changed, chunk - a.first)
                    } else {
                        (&a.copied, chunk)
                    };
                    let start = n as usize * PER_CHUNK;
                    let end = (start + PER_CHUNK).min(list.len());
                    let last = end >= list.len();
                    let actors = list[start.min(end)..end]
                        .iter()
                        .map(|(k, v)| ActorSnapshot {
                            actor: ActorRef::new("counter", k.clone()),
                            version: *v,
                            seq: *v,
                            state: Bytes(v.to_le_bytes().to_vec()),
                        })
                        .collect();
                    let t = Transfer {
                        v: VERSION,
                        epoch,
                        attempt: a.id,
                        shard: self.shard,
                        from: self.from.clone(),
                        chunk,
                        last: last && a.paused,
                        actors,
                        commit: false,
                        copy: !a.paused,
                    };
                    a.chunks.push(t.clone());
                    self.net.push(Msg::Chunk(t));
                    next.push(Event::Produced { chunk, last });
                }
                Effect::Resend { chunk, .. } => {
                    let t = a.chunks[chunk as usize].clone();
                    self.net.push(Msg::Chunk(t));
                }
                // The driver recorded the hand-off in the ownership.
                Effect::StopServing => self.src.paused = false,
                Effect::CommitAfter { .. } => {
                    todo.extend(a.driver.commit(&self.src.own));
                }
                Effect::SendCommit { chunk } => {
                    let id = a.id;
                    self.net.push(Msg::Chunk(Transfer {
                        v: VERSION,
                        epoch,
                        attempt: id,
                        shard: self.shard,
                        from: self.from.clone(),
                        chunk,
                        last: true,
                        actors: Vec::new(),
                        commit: true,
                        copy: false,
                    }));
                }
                Effect::Resume => self.src.paused = false,
                // `Transferring` says nothing the destination acts on.
                Effect::Report {
                    phase: MovePhase::Transferring,
                    ..
                }
                | Effect::Unconfirmed => {}
                Effect::Report { phase, .. } => {
                    let p = self.progress(epoch, self.shard, phase);
                    self.report(p);
                }
            }
            for event in next {
                if let Some(a) = self.src.attempt.as_mut() {
                    todo.extend(a.driver.on(&mut self.src.own, event));
                }
            }
            if todo.is_empty()
                && self
                    .src
                    .attempt
                    .as_ref()
                    .is_some_and(|a| a.driver.finished())
                && let Some(a) = self.src.attempt.take()
                && let Some((_, next, _)) = a.driver.next(&mut self.src.own)
            {
                self.start_attempt(next);
            }
        }
    }

    fn progress(&self, epoch: u64, shard: u32, phase: MovePhase) -> Progress {
        Progress {
            v: VERSION,
            epoch,
            shard,
            node: self.from.clone(),
            phase,
            actors: 0,
            duration_ms: 0,
            bytes: 0,
            error: None,
            from: None,
            to: None,
        }
    }

    fn deliver(&mut self, msg: Msg) {
        match msg {
            Msg::Chunk(t) => {
                let (epoch, chunk, commit) = (t.epoch, t.chunk, t.commit);
                let result = driver::check(&self.dst.own, &t)
                    .and_then(|()| driver::receive(&mut self.dst.own, &t));
                let result = match result {
                    Ok(Receive::Stage { fresh }) => {
                        if fresh {
                            self.dst.staged.clear();
                        }
                        for a in t.actors {
                            let v = u64::from_le_bytes(a.state.0.try_into().expect("8 bytes"));
                            self.dst.staged.insert(a.actor.id, v);
                        }
                        Ok(())
                    }
                    Ok(Receive::Commit { fresh, done }) => {
                        if fresh {
                            self.dst.staged.clear();
                        }
                        // The destination stores Done before it confirms the commit.
                        let mut p = self.progress(t.epoch, self.shard, MovePhase::Done);
                        p.node = DEST.into();
                        p.from = done.from;
                        p.to = Some(done.to);
                        self.report(p);
                        // The destination holds exactly what the source captured (when it
                        // restarted meanwhile, what it holds is captured and the rest comes from
                        // the log).
                        if let Some(a) = self.src.attempt.as_ref() {
                            let staged: Vec<(String, u64)> = self
                                .dst
                                .staged
                                .iter()
                                .map(|(k, v)| (k.clone(), *v))
                                .collect();
                            if a.recommit {
                                // What it holds, if anything, came before the hand-off: the log's.
                                for (k, v) in &staged {
                                    assert_eq!(self.log.get(k), Some(v), "recommit of a stale {k}");
                                }
                            } else if self.dst.crashed_since_first_chunk {
                                assert!(
                                    staged.iter().all(|s| a.captured.contains(s)),
                                    "commit of a stale copy"
                                );
                            } else {
                                assert_eq!(staged, a.captured, "commit of a partial or stale copy");
                            }
                        }
                        Ok(())
                    }
                    Ok(Receive::Duplicate) => Ok(()),
                    Err(e) => Err(e),
                };
                self.net.push(Msg::Reply {
                    epoch,
                    chunk,
                    commit,
                    result,
                });
            }
            Msg::Reply {
                epoch,
                chunk,
                commit,
                result,
            } => {
                if !self.src.alive || self.src.attempt.as_ref().is_none_or(|a| a.epoch != epoch) {
                    return;
                }
                let event = match (commit, result) {
                    (true, Ok(())) => Event::Committed,
                    (true, Err(e)) => Event::CommitRefused(e),
                    (false, Ok(())) => Event::Acked { chunk },
                    (false, Err(error)) => Event::Refused { chunk, error },
                };
                self.source_event(event);
            }
            Msg::Progress(p) => {
                if self.dst.own.on_progress(&p).is_some() {
                    self.dst.staged.clear();
                }
            }
        }
    }

    /// A message lost: the source's request times out.
    fn lose(&mut self, msg: &Msg) {
        let (epoch, chunk, commit) = match msg {
            Msg::Chunk(t) => (t.epoch, t.chunk, t.commit),
            Msg::Reply {
                epoch,
                chunk,
                commit,
                ..
            } => (*epoch, *chunk, *commit),
            Msg::Progress(p) => {
                // Stored: a consumer that misses it gets it again.
                self.net.push(Msg::Progress(p.clone()));
                return;
            }
        };
        if !self.src.alive || self.src.attempt.as_ref().is_none_or(|a| a.epoch != epoch) {
            return;
        }
        let event = if commit {
            Event::CommitUnanswered
        } else {
            Event::NoAnswer {
                chunk,
                reason: "lost".into(),
            }
        };
        self.source_event(event);
    }

    fn step(&mut self, op: Op) {
        match op {
            Op::Deliver(i) if !self.net.is_empty() => {
                let msg = self.net.remove(i.index(self.net.len()));
                self.deliver(msg);
            }
            Op::Duplicate(i) if !self.net.is_empty() => {
                let msg = self.net[i.index(self.net.len())].clone();
                self.net.push(msg);
            }
            Op::Lose(i) if !self.net.is_empty() => {
                let msg = self.net.remove(i.index(self.net.len()));
                self.lose(&msg);
            }
            Op::Deadline if self.src.alive => self.source_event(Event::Deadline),
            Op::CrashDestination => {
                self.dst.own = Ownership::new(DEST);
                self.dst.staged.clear();
                self.dst.crashed_since_first_chunk = true;
                // The node reads the stored reports before it acts on a plan.
                for p in &self.durable {
                    self.dst.own.on_progress(p);
                }
                // Its plan watch delivers the latest plan only.
                let n = if self.retry_sent { 3 } else { 2 };
                self.dst.own.on_plan(self.plans[n - 1].clone(), []);
                // The source holds it already (it takes each plan as it comes); the members not
                // simulated do too.
                held_by_all(&mut self.dst.own, &self.plans[n - 1]);
            }
            Op::CrashSource => {
                self.src.alive = false;
                self.src.attempt = None;
            }
            Op::Write(k) if self.src_serves() && !self.src.paused => {
                let key = format!("a{}", usize::from(k) % self.log.len().max(1));
                if let Some(v) = self.log.get_mut(&key) {
                    *v += 1;
                }
            }
            // A newer plan with the same move: the operator's retry after a Failed report, or one
            // that came for another reason while the move ran.
            Op::RetryPlan if !self.retry_sent && self.src.alive => {
                let mut p = self.plans[1].clone();
                p.epoch += 1;
                self.plans.push(p.clone());
                self.retry_sent = true;
                let hosting = !self.dst.staged.is_empty() || self.dst_serves();
                let hosted: Vec<u32> = hosting.then_some(self.shard).into_iter().collect();
                if let Some(fx) = self.dst.own.on_plan(p, hosted)
                    && fx.stop.contains(&self.shard)
                {
                    self.dst.staged.clear();
                }
                self.source_plan(2);
            }
            _ => {}
        }
    }

    fn check(&self) {
        assert!(
            !(self.src_serves() && self.dst_serves()),
            "both sides serve shard {}",
            self.shard
        );
        if self.dst_serves() {
            for (k, v) in &self.dst.staged {
                assert_eq!(
                    self.log.get(k),
                    Some(v),
                    "the destination serves a stale {k}"
                );
            }
        }
        if self.src.alive
            && self.src.attempt.as_ref().is_some_and(|a| {
                matches!(
                    a.driver.machine.phase,
                    aether_node::migration::Phase::RolledBack(_)
                )
            })
        {
            assert!(
                self.src_serves(),
                "a rolled-back move left the source not serving"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn at_most_one_side_serves_whatever_the_network_does(
        actors in 0usize..7,
        copy_from in 0usize..8,
        ops in prop::collection::vec(op(), 0..80),
    ) {
        let mut w = World::new(actors, copy_from);
        w.check();
        for op in ops {
            w.step(op);
            w.check();
        }
        // The faults stop: every message is delivered, late timeouts fire, the operator retries.
        for _ in 0..10_000 {
            if w.net.is_empty() {
                if w.src.alive && w.src.attempt.is_some() {
                    w.source_event(Event::Deadline);
                    if w.net.is_empty() {
                        break;
                    }
                    continue;
                }
                break;
            }
            let msg = w.net.remove(0);
            w.deliver(msg);
            w.check();
        }
        prop_assert!(w.net.is_empty(), "the network settles");
        // Who serves after a hand-off is learnt from the durable Done reports, so a destination
        // that restarts after the commit serves again; liveness holds whenever the source lives.
        if w.src.alive {
            prop_assert!(
                w.src_serves() != w.dst_serves(),
                "after the faults exactly one side serves (source {}, destination {})",
                w.src_serves(),
                w.dst_serves()
            );
            // Nothing is left waiting: a move the ownership still counts as running has an
            // attempt (a newer plan's move of the shard, held back while one ran, starts when that
            // one ends).
            prop_assert!(
                w.src.attempt.is_some() || !w.src.own.is_moving(w.shard),
                "a move of shard {} waits at the source and nothing will start it",
                w.shard
            );
        }
    }
}

impl World {
    /// Delivers the first message in the network that `pick` matches.
    fn deliver_first(&mut self, pick: impl Fn(&Msg) -> bool) {
        let i = self
            .net
            .iter()
            .position(pick)
            .expect("such a message in the network");
        let msg = self.net.remove(i);
        self.deliver(msg);
        self.check();
    }
}

fn chunk_no(n: u32) -> impl Fn(&Msg) -> bool {
    move |m| matches!(m, Msg::Chunk(t) if t.chunk == n && !t.commit)
}

fn reply_to(n: u32) -> impl Fn(&Msg) -> bool {
    move |m| matches!(m, Msg::Reply { chunk, .. } if *chunk == n)
}

fn commit() -> impl Fn(&Msg) -> bool {
    |m| matches!(m, Msg::Chunk(t) if t.commit)
}

/// A copy round of one actor, written to while it travels; the changed actor goes again after the
/// pause, and the hand-off and commit follow. The copy's chunk is also duplicated on the way and
/// kept in the network. Returns the world with the commit in flight.
fn copied_then_written() -> World {
    let mut w = World::new(1, 1);
    let copy = w.net[0].clone();
    assert!(matches!(&copy, Msg::Chunk(t) if t.copy), "a copy round");
    w.net.push(copy);
    w.step(Op::Write(0));
    w.deliver_first(chunk_no(0));
    w.deliver_first(reply_to(0));
    w.deliver_first(chunk_no(1));
    assert!(
        matches!(w.net.last(), Some(Msg::Reply { chunk: 1, .. })),
        "the chunk after the pause holds the actor written during the copy"
    );
    w.deliver_first(reply_to(1));
    assert!(!w.src_serves(), "handed off");
    w
}

/// Found while building the copy round: a destination that restarts after the last chunk and then
/// receives only a late copy must not serve it (the chunk that replaced it is gone with the
/// restart): a commit over a partial staging drops it, and the actor comes from the log.
#[test]
fn a_restarted_destination_never_serves_a_late_copy_alone() {
    let mut w = copied_then_written();
    w.step(Op::CrashDestination);
    w.deliver_first(chunk_no(0));
    w.deliver_first(commit());
    assert!(w.dst_serves());
    assert!(w.dst.staged.is_empty(), "{:?}", w.dst.staged);
}

/// The same, when the late copy comes after a late copy of the chunk that replaced it: the staging
/// is whole again, but the copy is not staged over the newer state.
#[test]
fn a_late_copy_never_replaces_the_state_sent_after_the_pause() {
    let mut w = copied_then_written();
    let late = w
        .src
        .attempt
        .as_ref()
        .expect("attempt")
        .chunks
        .get(1)
        .cloned()
        .expect("chunk 1");
    w.step(Op::CrashDestination);
    w.net.push(Msg::Chunk(late));
    w.deliver_first(chunk_no(1));
    w.deliver_first(chunk_no(0));
    w.deliver_first(commit());
    assert!(w.dst_serves());
    assert_eq!(w.dst.staged.get("a0"), w.log.get("a0"));
}
