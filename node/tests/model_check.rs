//! An exhaustive model check of the ownership and migration protocol: 3 nodes, 2 shards (one actor
//! each), plans of 3 epochs (epoch 2 moves both shards at once, in a chain: app-0 -> app-1 -> app-2;
//! epoch 3 is the operator's retry of the moves not done, published once a move failed and none is
//! handed off without an outcome, or, with `replan`, a plan replacing epoch 2 at any moment while its
//! moves run, giving both shards to app-0, each moved from where the operator believes it is), each
//! node's `held` key (the plan it holds, read by the others when they choose), a network that
//! delivers in any order, loses
//! and duplicates messages, nodes that crash and restart, move deadlines, and writes by whoever
//! serves a shard. The nodes are the pure code the real node runs: its [`Ownership`] and its move
//! driver ([`SourceDriver`], [`driver::receive`]), whose effects the shells here carry out as
//! `moves.rs` and `control.rs` do, without NATS. Progress reports are durable (the progress stream), read by each node in order at its own
//! pace; a node that restarts reads, before its plan, what the stream keeps: the latest report of
//! each move. With the budget's switches, the operator plans its retry or replacement from the
//! reports it has read so far (it may list a move that is done), a destination's `Done` is stored
//! as a message of its own (late, or lost), and a source's copy round is a step of its own (it
//! serves the shard meanwhile).
//!
//! Every reachable state within the fault budget is visited once (breadth first, states keyed by a
//! canonical text). Checked in every state:
//! - at most one node serves a shard;
//! - a node that serves a shard holds the log's state of its actor (no stale read), so a committed
//!   move's destination holds what the source captured and an acknowledged write survives;
//! - no node pauses a shard for a move of a plan it no longer holds (that plan's moves are void:
//!   the pause would make the shard unavailable for nothing);
//!
//! and from every state, once the faults stop (dead nodes restart, every node reads the newest plan
//! and every report, messages are delivered, deadlines fire): the network settles, exactly one node
//! serves each shard and every node agrees which (every request is answered).
//!
//! The numbers of states and the depth are printed; `AETHER_MODEL_BUDGET=large` explores more faults.

use aether_core::plan::{MemberInput, Move, PlanSpec, plan, retry};
use aether_core::protocol::{
    ActorRef, ActorSnapshot, Bytes, ErrorReply, PlanMessage, Progress, Transfer, VERSION,
};
use aether_core::types::{MovePhase, Strategy as Placement};
use aether_node::driver::{self, Effect, Receive, SourceDriver};
use aether_node::migration::{Event, Phase, SourceMove};
use aether_node::ownership::Ownership;
use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};

const NODES: [&str; 3] = ["app-0", "app-1", "app-2"];
const SHARDS: u32 = 2;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Msg {
    /// Source -> destination: a chunk or the commit.
    Chunk { to: usize, t: TransferKey },
    /// Destination -> source: the answer.
    Reply {
        to: usize,
        shard: u32,
        epoch: u64,
        attempt: u64,
        chunk: u32,
        commit: bool,
        refused: Option<String>,
    },
    /// A destination's `Done` on its way to the progress stream (stored after the commit is
    /// taken, before it is confirmed, within a deadline: it may be lost, or stored late).
    Done {
        node: usize,
        epoch: u64,
        shard: u32,
        from: usize,
    },
}

/// A transfer, comparable (the model's chunks carry one actor's version or nothing).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct TransferKey {
    epoch: u64,
    attempt: u64,
    shard: u32,
    from: String,
    chunk: u32,
    version: Option<u64>,
    commit: bool,
}

impl TransferKey {
    fn transfer(&self) -> Transfer {
        Transfer {
            v: VERSION,
            epoch: self.epoch,
            attempt: self.attempt,
            shard: self.shard,
            from: self.from.clone(),
            chunk: self.chunk,
            last: true,
            commit: self.commit,
            actors: self
                .version
                .map(|v| ActorSnapshot {
                    actor: ActorRef::new("counter", format!("s{}", self.shard)),
                    version: v,
                    seq: v,
                    state: Bytes(v.to_le_bytes().to_vec()),
                })
                .into_iter()
                .collect(),
            copy: false,
        }
    }
}

#[derive(Clone, Debug)]
struct Attempt {
    id: u64,
    epoch: u64,
    to: String,
    /// The node's own move driver (`driver.rs`), as `moves.rs` runs it.
    driver: SourceDriver,
    captured: Option<u64>,
    /// Told that a newer plan came (`Event::Superseded`).
    told: bool,
}

#[derive(Clone, Debug)]
struct Node {
    own: Ownership,
    alive: bool,
    /// Source side: the move running per shard.
    attempts: BTreeMap<u32, Attempt>,
    /// Source side: moves listed by a plan, waiting for a move slot (their epoch and destination).
    waiting: BTreeMap<u32, (u64, String)>,
    /// Destination side: the actor's version staged per shard (installed, not served).
    staged: BTreeMap<u32, u64>,
    /// The actor's copy a worker holds per shard (loaded from the log when first needed).
    copy: BTreeMap<u32, u64>,
    /// Shards paused by a move.
    paused: BTreeSet<u32>,
    /// Reports read so far.
    read: usize,
}

impl Node {
    fn new(name: &str) -> Self {
        Self {
            own: Ownership::new(name),
            alive: true,
            attempts: BTreeMap::new(),
            waiting: BTreeMap::new(),
            staged: BTreeMap::new(),
            copy: BTreeMap::new(),
            paused: BTreeSet::new(),
            read: 0,
        }
    }

    fn key(&self, out: &mut String) {
        use std::fmt::Write as _;
        let attempts: Vec<_> = self
            .attempts
            .iter()
            .map(|(s, a)| {
                let m = &a.driver.machine.phase;
                (s, a.id, a.epoch, &a.to, m, a.captured, a.told)
            })
            .collect();
        let _ = write!(
            out,
            "[{} {} {attempts:?} {:?} {:?} {:?} {:?} {}]",
            self.alive,
            self.own.state_key(),
            self.waiting,
            self.staged,
            self.copy,
            self.paused,
            self.read
        );
    }
}

/// What may still go wrong.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct Budget {
    losses: u8,
    duplicates: u8,
    crashes: u8,
    deadlines: u8,
    writes: u8,
    retry: bool,
    /// The operator may replace epoch 2 while its moves run (instead of the retry): both shards
    /// go to `app-0`, each moved from where the operator believes it is (its source unless a Done
    /// report was stored), so a shard's owner may change without a hand-off.
    replan: bool,
    /// Nodes read reports when they choose (else each report reaches every live node at once).
    lazy_progress: bool,
    /// The operator reads reports when it chooses, so its retry or replacement plan may list a
    /// move that is done (else it reads each report as it is stored).
    lagging_operator: bool,
    /// A destination's `Done` is stored when the network chooses, or lost (else it is stored with
    /// the commit).
    late_done: bool,
    /// A source's copy round ends when the model chooses, the shard served meanwhile (else the
    /// pause follows the start at once).
    copy_round: bool,
    /// A move waits for a move slot as long as the model chooses before it starts (a plan may
    /// come meanwhile), as `moves.rs` waits for its permit (else it starts when listed).
    slots: bool,
    /// A running move learns of a newer plan when the model chooses ([`Step::Notice`]), as
    /// `moves.rs` carries out its effects in order and looks at the plan's watch only between
    /// them (else at once, with the plan).
    late_notice: bool,
}

impl Budget {
    /// Nothing may go wrong.
    fn none() -> Self {
        Self {
            losses: 0,
            duplicates: 0,
            crashes: 0,
            deadlines: 0,
            writes: 0,
            retry: false,
            replan: false,
            lazy_progress: false,
            lagging_operator: false,
            late_done: false,
            copy_round: false,
            slots: false,
            late_notice: false,
        }
    }
}

#[derive(Clone, Debug)]
struct World {
    plans: Vec<PlanMessage>,
    /// Plans published so far (a prefix of `plans`).
    published: usize,
    log: [u64; SHARDS as usize],
    nodes: Vec<Node>,
    net: Vec<Msg>,
    /// Every report stored, in order. The stream keeps only the latest of each move: a node that
    /// restarts reads those ([`World::retained`]); a live reader may have seen the others.
    durable: Vec<Progress>,
    /// Reports the operator has read: it plans its retry or its replacement from these, so it may
    /// list a move that is done (it has not read the `Done` yet), as the real operator may.
    op_read: usize,
    attempts: u64,
    budget: Budget,
    /// Each node's `held` key: the epoch it last took.
    held: [u64; 3],
    /// A shard paused for a move of a plan its node no longer holds (the shard unavailable for
    /// nothing: that plan's moves are void), if one was.
    stale_pause: Option<String>,
}

#[derive(Clone, Copy, Debug)]
enum Step {
    Deliver(usize),
    Lose(usize),
    Duplicate(usize),
    ReadPlan(usize),
    ReadProgress(usize),
    Deadline(usize, u32),
    Crash(usize),
    Restart(usize),
    Write(u32),
    Retry,
    Replan,
    ReadHeld(usize),
    /// The operator reads every report stored so far.
    OperatorReads,
    /// A source's copy round ends (it served the shard meanwhile); the pause comes next.
    Copied(usize, u32),
    /// A move waiting at node `n` gets its slot and starts.
    Slot(usize, u32),
    /// A move running at node `n` learns that its node holds a newer plan.
    Notice(usize, u32),
}

fn plans() -> Vec<PlanMessage> {
    let spec = PlanSpec {
        shards: SHARDS,
        capacity: 4,
        strategy: Placement::AnchorHash,
    };
    let members: Vec<MemberInput> = NODES.iter().map(|n| MemberInput::active(*n)).collect();
    let base = plan(None, &BTreeSet::new(), &members, &spec).expect("plan");
    let bucket = |name: &str| bucket_of(&base.members, name);
    let mut p1 = base.clone();
    p1.epoch = 1;
    p1.moves = Vec::new();
    p1.shard_map.set(0, bucket("app-0"));
    p1.shard_map.set(1, bucket("app-1"));
    let mut p2 = p1.clone();
    p2.epoch = 2;
    p2.shard_map.set(0, bucket("app-1"));
    p2.shard_map.set(1, bucket("app-2"));
    p2.moves = vec![
        aether_core::plan::Move {
            shard: 0,
            from: Some("app-0".into()),
            to: "app-1".into(),
        },
        aether_core::plan::Move {
            shard: 1,
            from: Some("app-1".into()),
            to: "app-2".into(),
        },
    ];
    let mut p3 = p2.clone();
    p3.epoch = 3;
    [p1, p2, p3]
        .iter()
        .map(|p| PlanMessage::new(p, 4, 30))
        .collect()
}

/// The bucket of member `name`.
fn bucket_of(members: &[aether_core::types::Member], name: &str) -> u16 {
    members
        .iter()
        .find(|m| m.name == name)
        .expect("a member")
        .bucket
}

fn index(name: &str) -> usize {
    NODES.iter().position(|n| *n == name).expect("a node")
}

impl World {
    fn new(budget: Budget) -> Self {
        let mut w = Self {
            plans: plans(),
            published: 2,
            log: [0; SHARDS as usize],
            nodes: NODES.iter().map(|n| Node::new(n)).collect(),
            net: Vec::new(),
            durable: Vec::new(),
            op_read: 0,
            attempts: 0,
            budget,
            held: [0; 3],
            stale_pause: None,
        };
        // Every node serves epoch 1; epoch 2 is published and read by each node when it chooses.
        for n in 0..NODES.len() {
            w.take_plan(n, 0);
        }
        for n in 0..NODES.len() {
            for m in 0..NODES.len() {
                w.read_held(n, m);
            }
        }
        w
    }

    fn key(&self) -> u64 {
        let mut s = String::with_capacity(2048);
        for n in &self.nodes {
            n.key(&mut s);
        }
        let mut net = self.net.clone();
        net.sort();
        let durable: Vec<_> = self
            .durable
            .iter()
            .map(|p| (p.epoch, p.shard, &p.node, p.phase))
            .collect();
        let mut h = DefaultHasher::new();
        (
            s,
            format!("{net:?}"),
            format!("{durable:?}"),
            self.published,
            // What the operator knows, not how many reports it read to know it, and what it
            // published (a retry or replacement depends on what it had read).
            format!("{:?}", self.latest()),
            format!(
                "{:?}",
                self.plans[..self.published]
                    .iter()
                    .map(|p| &p.moves)
                    .collect::<Vec<_>>()
            ),
            self.log,
            self.attempts,
            self.budget,
            self.held,
        )
            .hash(&mut h);
        h.finish()
    }

    /// Node `n` takes plan `k` and carries out the effects, as `node.rs` does.
    fn take_plan(&mut self, n: usize, k: usize) {
        let node = &mut self.nodes[n];
        let hosted: Vec<u32> = node
            .copy
            .keys()
            .chain(node.staged.keys())
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let Some(fx) = node.own.on_plan(self.plans[k].clone(), hosted) else {
            return;
        };
        for s in &fx.stop {
            node.copy.remove(s);
            node.staged.remove(s);
        }
        // Its moves of older plans learn of this one now (with `late_notice`, when the model
        // chooses).
        if !self.budget.late_notice {
            for s in self.unnoticed(n) {
                self.notice(n, s);
            }
        }
        for m in &fx.recommit {
            let (driver, first) = SourceDriver::recommit(m.clone(), fx.epoch);
            self.attempts += 1;
            self.nodes[n].attempts.insert(
                m.shard,
                Attempt {
                    id: self.attempts,
                    epoch: fx.epoch,
                    to: m.to.clone(),
                    driver,
                    captured: None,
                    told: false,
                },
            );
            self.source_effects(n, m.shard, first);
        }
        for m in &fx.start {
            self.start_attempt(n, m.shard, fx.epoch, &m.to);
        }
        for m in &fx.report_done {
            self.report(fx.epoch, m, n, MovePhase::Done);
        }
        // Its workers stopped at once: it says it holds the plan.
        self.held[n] = fx.epoch;
    }

    /// Node `n` reads node `m`'s `held` key; deferred moves start when that settles its plan.
    fn read_held(&mut self, n: usize, m: usize) {
        if let Some(settled) = self.nodes[n].own.on_held(NODES[m], self.held[m]) {
            for mv in settled.start {
                self.start_attempt(n, mv.shard, settled.epoch, &mv.to);
            }
        }
    }

    /// The nodes whose `held` key would change what node `n` waits for. (Keys that would not are
    /// not modelled as read: a node that has not read them waits longer, which is safe, and the
    /// explored states stay few.)
    fn held_unread(&self, n: usize) -> Vec<usize> {
        let own = &self.nodes[n].own;
        let awaiting = own.awaiting();
        (0..NODES.len())
            .filter(|&m| awaiting.contains(&NODES[m]) && self.held[m] >= own.epoch())
            .collect()
    }

    /// A move listed for node `n` as source: it starts now, or, with move slots, once
    /// [`Step::Slot`] gives it one.
    fn start_attempt(&mut self, n: usize, shard: u32, epoch: u64, to: &str) {
        if self.budget.slots {
            self.nodes[n].waiting.insert(shard, (epoch, to.to_owned()));
        } else {
            self.begin_attempt(n, shard, epoch, to);
        }
    }

    /// The move starts: the driver decides what it does under the plan the node holds now.
    fn begin_attempt(&mut self, n: usize, shard: u32, epoch: u64, to: &str) {
        let mv = Move {
            shard,
            from: Some(NODES[n].to_owned()),
            to: to.to_owned(),
        };
        let (driver, first) =
            SourceDriver::start(&self.nodes[n].own, mv, epoch, SourceMove::default());
        self.attempts += 1;
        self.nodes[n].attempts.insert(
            shard,
            Attempt {
                id: self.attempts,
                epoch,
                to: to.to_owned(),
                driver,
                captured: None,
                told: false,
            },
        );
        self.source_effects(n, shard, first);
    }

    fn report(&mut self, epoch: u64, m: &Move, n: usize, phase: MovePhase) {
        self.durable.push(Progress {
            v: VERSION,
            epoch,
            shard: m.shard,
            node: NODES[n].to_owned(),
            phase,
            actors: 0,
            duration_ms: 0,
            bytes: 0,
            error: None,
            from: m.from.clone(),
            to: Some(m.to.clone()),
        });
        if !self.budget.lagging_operator {
            self.op_read = self.durable.len();
        }
        if !self.budget.lazy_progress {
            for n in 0..NODES.len() {
                if self.nodes[n].alive {
                    while self.nodes[n].read < self.durable.len() {
                        self.read_progress(n);
                    }
                }
            }
        }
    }

    fn source_event(&mut self, n: usize, shard: u32, event: Event) {
        let node = &mut self.nodes[n];
        let Some(a) = node.attempts.get_mut(&shard) else {
            return;
        };
        let out = a.driver.on(&mut node.own, event);
        self.source_effects(n, shard, out);
    }

    /// Carries out a source's effects in order, as `moves.rs` does, feeding back the events they
    /// cause.
    fn source_effects(&mut self, n: usize, shard: u32, first: Vec<Effect>) {
        let mut todo: VecDeque<Effect> = first.into();
        while let Some(effect) = todo.pop_front() {
            let log = self.log[shard as usize];
            let node = &mut self.nodes[n];
            let Some(a) = node.attempts.get_mut(&shard) else {
                return;
            };
            let (epoch, id, to) = (a.epoch, a.id, a.to.clone());
            let mv = Move {
                shard,
                from: Some(NODES[n].to_owned()),
                to: to.clone(),
            };
            // A chunk (or the commit) of this attempt to its destination.
            let send = |chunk: u32, version: Option<u64>, commit: bool| Msg::Chunk {
                to: index(&to),
                t: TransferKey {
                    epoch,
                    attempt: id,
                    shard,
                    from: NODES[n].to_owned(),
                    chunk,
                    version,
                    commit,
                },
            };
            let mut next = Vec::new();
            match effect {
                // The copy round is checked by `move_sim.rs`; here it is one step
                // ([`Step::Copied`]), while the source still serves the shard, and the shard's one
                // value moves whole after the pause.
                Effect::Copy if self.budget.copy_round => {}
                Effect::Copy => next.push(Event::Copied { actors: 0 }),
                Effect::PauseAndCapture { .. } => {
                    if !node.own.is_current(epoch) {
                        self.stale_pause = Some(format!(
                            "{} paused shard {shard} for a move of epoch {epoch} while holding epoch {}",
                            NODES[n],
                            node.own.epoch()
                        ));
                    }
                    node.paused.insert(shard);
                    a.captured = Some(*node.copy.entry(shard).or_insert(log));
                    next.push(Event::Captured);
                }
                Effect::Produce { chunk } => {
                    self.net.push(send(chunk, a.captured, false));
                    next.push(Event::Produced { chunk, last: true });
                }
                Effect::Resend { chunk, .. } => self.net.push(send(chunk, a.captured, false)),
                // The driver recorded the hand-off in the ownership.
                Effect::StopServing => {
                    node.paused.remove(&shard);
                    node.copy.remove(&shard);
                }
                Effect::CommitAfter { .. } => todo.extend(a.driver.commit(&node.own)),
                Effect::SendCommit { chunk } => self.net.push(send(chunk, None, true)),
                Effect::Resume => {
                    node.paused.remove(&shard);
                }
                // `Transferring` says nothing a node or the operator acts on: not modelled.
                Effect::Report {
                    phase: MovePhase::Transferring,
                    ..
                }
                | Effect::Unconfirmed => {}
                Effect::Report { phase, .. } => self.report(epoch, &mv, n, phase),
            }
            let node = &mut self.nodes[n];
            for e in next {
                if let Some(a) = node.attempts.get_mut(&shard) {
                    todo.extend(a.driver.on(&mut node.own, e));
                }
            }
        }
        // Once every effect is carried out (a failure's report comes after its resume).
        let node = &mut self.nodes[n];
        if node
            .attempts
            .get(&shard)
            .is_some_and(|a| a.driver.finished())
            && let Some(a) = node.attempts.remove(&shard)
            && let Some((m, next, _)) = a.driver.next(&mut node.own)
        {
            self.start_attempt(n, shard, next, &m.to);
        }
    }

    fn deliver(&mut self, msg: Msg) {
        match msg {
            Msg::Chunk { to, t } => {
                if !self.nodes[to].alive {
                    return self.lost(&Msg::Chunk { to, t });
                }
                let transfer = t.transfer();
                let node = &mut self.nodes[to];
                let result = driver::check(&node.own, &transfer)
                    .and_then(|()| driver::receive(&mut node.own, &transfer));
                let refused = match result {
                    Ok(Receive::Stage { fresh }) => {
                        if fresh {
                            node.staged.remove(&t.shard);
                            node.copy.remove(&t.shard);
                        }
                        if let Some(v) = t.version {
                            node.staged.insert(t.shard, v);
                        }
                        None
                    }
                    Ok(Receive::Commit { fresh, done: _ }) => {
                        if fresh {
                            node.staged.remove(&t.shard);
                            node.copy.remove(&t.shard);
                        }
                        // The staged actor is served from now on; without one (a restart), the
                        // actor is loaded from the log when first needed.
                        if let Some(v) = node.staged.remove(&t.shard) {
                            node.copy.insert(t.shard, v);
                        }
                        // The destination stores Done before it confirms the commit, within a
                        // deadline: the store may be lost or land after the confirmation.
                        let done = Msg::Done {
                            node: to,
                            epoch: t.epoch,
                            shard: t.shard,
                            from: index(&t.from),
                        };
                        if self.budget.late_done {
                            self.net.push(done);
                        } else {
                            self.deliver(done);
                        }
                        None
                    }
                    Ok(Receive::Duplicate) => None,
                    Err(e) => Some(code(&e)),
                };
                let from = index(&t.from);
                self.net.push(Msg::Reply {
                    to: from,
                    shard: t.shard,
                    epoch: t.epoch,
                    attempt: t.attempt,
                    chunk: t.chunk,
                    commit: t.commit,
                    refused,
                });
            }
            Msg::Reply {
                to,
                shard,
                epoch,
                attempt,
                chunk,
                commit,
                refused,
            } => {
                if !self.matches(to, shard, epoch, attempt) {
                    return;
                }
                let event = match (commit, refused) {
                    (true, None) => Event::Committed,
                    (true, Some(c)) => Event::CommitRefused(error(&c)),
                    (false, None) => Event::Acked { chunk },
                    (false, Some(c)) => Event::Refused {
                        chunk,
                        error: error(&c),
                    },
                };
                self.source_event(to, shard, event);
            }
            Msg::Done {
                node,
                epoch,
                shard,
                from,
            } => {
                let m = Move {
                    shard,
                    from: Some(NODES[from].to_owned()),
                    to: NODES[node].to_owned(),
                };
                self.report(epoch, &m, node, MovePhase::Done);
            }
        }
    }

    fn matches(&self, n: usize, shard: u32, epoch: u64, attempt: u64) -> bool {
        self.nodes[n].alive
            && self.nodes[n]
                .attempts
                .get(&shard)
                .is_some_and(|a| a.epoch == epoch && a.id == attempt)
    }

    /// A message lost (or sent to a dead node): the source's request times out.
    fn lost(&mut self, msg: &Msg) {
        let (n, shard, epoch, attempt, chunk, commit) = match msg {
            Msg::Done { .. } => return,
            Msg::Chunk { t, .. } => (
                index(&t.from),
                t.shard,
                t.epoch,
                t.attempt,
                t.chunk,
                t.commit,
            ),
            Msg::Reply {
                to,
                shard,
                epoch,
                attempt,
                chunk,
                commit,
                ..
            } => (*to, *shard, *epoch, *attempt, *chunk, *commit),
        };
        if !self.matches(n, shard, epoch, attempt) {
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
        self.source_event(n, shard, event);
    }

    fn read_progress(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        let p = self.durable[node.read].clone();
        node.read += 1;
        if let Some(s) = node.own.on_progress(&p) {
            node.staged.remove(&s);
        }
    }

    fn restart(&mut self, n: usize) {
        self.nodes[n] = Node::new(NODES[n]);
        // A node reads every stored report before it acts on a plan: the latest of each move.
        for p in self.retained() {
            if let Some(s) = self.nodes[n].own.on_progress(&p) {
                self.nodes[n].staged.remove(&s);
            }
        }
        self.nodes[n].read = self.durable.len();
        self.take_plan(n, self.published - 1);
    }

    /// What the progress stream holds: the latest report of each move, in stream order.
    fn retained(&self) -> Vec<Progress> {
        let mut last = BTreeMap::new();
        for (i, p) in self.durable.iter().enumerate() {
            last.insert((p.epoch, p.shard), i);
        }
        let mut keep: Vec<usize> = last.into_values().collect();
        keep.sort_unstable();
        keep.into_iter().map(|i| self.durable[i].clone()).collect()
    }

    fn steps(&self) -> Vec<Step> {
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, m) in self.net.iter().enumerate() {
            if !seen.insert(m) {
                continue;
            }
            out.push(Step::Deliver(i));
            if self.budget.losses > 0 {
                out.push(Step::Lose(i));
            }
            if self.budget.duplicates > 0 {
                out.push(Step::Duplicate(i));
            }
        }
        for (n, node) in self.nodes.iter().enumerate() {
            if !node.alive {
                out.push(Step::Restart(n));
                continue;
            }
            if node.own.epoch() < self.plans[self.published - 1].epoch {
                out.push(Step::ReadPlan(n));
            }
            if !self.held_unread(n).is_empty() {
                out.push(Step::ReadHeld(n));
            }
            if node.read < self.durable.len() {
                out.push(Step::ReadProgress(n));
            }
            for (s, a) in &node.attempts {
                if a.driver.machine.phase == Phase::Copying {
                    out.push(Step::Copied(n, *s));
                }
            }
            for s in node.waiting.keys() {
                out.push(Step::Slot(n, *s));
            }
            for s in self.unnoticed(n) {
                out.push(Step::Notice(n, s));
            }
            if self.budget.deadlines > 0 {
                for (s, a) in &node.attempts {
                    if !a.driver.finished() {
                        out.push(Step::Deadline(n, *s));
                    }
                }
            }
            if self.budget.crashes > 0 {
                out.push(Step::Crash(n));
            }
        }
        if self.budget.writes > 0 {
            for s in 0..SHARDS {
                if self.server(s).is_some() {
                    out.push(Step::Write(s));
                }
            }
        }
        if (self.budget.retry || self.budget.replan) && self.operator_lags() {
            out.push(Step::OperatorReads);
        }
        if self.budget.retry && self.published < self.plans.len() && self.retry_due() {
            out.push(Step::Retry);
        }
        if self.budget.replan && self.published == 2 {
            out.push(Step::Replan);
        }
        out
    }

    /// True when the reports the operator has not read would change what it knows.
    fn operator_lags(&self) -> bool {
        self.latest_of(self.durable.len()) != self.latest()
    }

    /// The latest report of each move the operator has read.
    fn latest(&self) -> BTreeMap<(u64, u32), MovePhase> {
        self.latest_of(self.op_read)
    }

    /// The latest report of each move among the first `n` stored.
    fn latest_of(&self, n: usize) -> BTreeMap<(u64, u32), MovePhase> {
        self.durable[..n]
            .iter()
            .map(|p| ((p.epoch, p.shard), p.phase))
            .collect()
    }

    /// The operator retries once a move of the plan failed or was superseded and none is handed
    /// off without an outcome (it waits for the transfers in flight).
    fn retry_due(&self) -> bool {
        let epoch = self.plans[self.published - 1].epoch;
        let latest = self.latest();
        let phases: Vec<Option<&MovePhase>> = self.plans[self.published - 1]
            .moves
            .iter()
            .map(|m| latest.get(&(epoch, m.shard)))
            .collect();
        // The operator's rule (`aether_core::plan::retry`), as the real operator follows it.
        retry::retry_due(phases.into_iter().map(|p| p.copied()))
    }

    /// The node serving `shard` and not paused, if any.
    fn server(&self, shard: u32) -> Option<usize> {
        (0..NODES.len()).find(|&n| {
            let node = &self.nodes[n];
            node.alive && node.own.serves(shard) && !node.paused.contains(&shard)
        })
    }

    fn apply(&mut self, step: Step) {
        match step {
            Step::Deliver(i) => {
                let m = self.net.remove(i);
                self.deliver(m);
            }
            Step::Lose(i) => {
                self.budget.losses -= 1;
                let m = self.net.remove(i);
                self.lost(&m);
            }
            Step::Duplicate(i) => {
                self.budget.duplicates -= 1;
                self.net.push(self.net[i].clone());
            }
            Step::ReadPlan(n) => self.take_plan(n, self.published - 1),
            // A node's consumer catches up with every stored report (one step: the order in which a
            // node reads reports is the stream's, the interleaving with the other steps is kept).
            Step::ReadProgress(n) => {
                while self.nodes[n].read < self.durable.len() {
                    self.read_progress(n);
                }
            }
            Step::Deadline(n, s) => {
                self.budget.deadlines -= 1;
                self.source_event(n, s, Event::Deadline);
            }
            Step::Crash(n) => {
                self.budget.crashes -= 1;
                self.nodes[n].alive = false;
            }
            Step::Restart(n) => self.restart(n),
            Step::Write(s) => {
                self.budget.writes -= 1;
                let Some(n) = self.server(s) else { return };
                let log = &mut self.log[s as usize];
                let copy = self.nodes[n].copy.entry(s).or_insert(*log);
                if *copy == *log {
                    // The append carries the expected sequence: it lands, acknowledged.
                    *log += 1;
                    *copy += 1;
                } else {
                    // Fenced: a stale copy is refused by JetStream and reloaded.
                    *copy = *log;
                }
            }
            Step::Retry => {
                self.budget.retry = false;
                // What the operator read matters no more (states that differ only in it are one).
                self.op_read = 0;
                // The retry lists the moves not reported done, by the operator's rule.
                let latest = self.latest();
                let epoch = self.plans[self.published - 1].epoch;
                let keep = retry::unfinished(&self.plans[self.published].moves, |s| {
                    latest.get(&(epoch, s)).copied()
                });
                self.plans[self.published]
                    .moves
                    .retain(|m| keep.contains(&m.shard));
                self.published += 1;
            }
            Step::Replan => {
                self.budget.replan = false;
                self.budget.retry = false;
                let latest = self.latest();
                self.op_read = 0;
                let before = self.plans[self.published - 1].clone();
                let to = "app-0";
                let bucket = bucket_of(&before.members, to);
                let mut p = before.clone();
                p.epoch = before.epoch + 1;
                for s in 0..SHARDS {
                    p.shard_map.set(s, bucket);
                }
                p.moves = before
                    .moves
                    .iter()
                    .map(|m| {
                        let done = latest.get(&(before.epoch, m.shard)) == Some(&MovePhase::Done);
                        let from = if done {
                            Some(m.to.clone())
                        } else {
                            m.from.clone()
                        };
                        Move {
                            shard: m.shard,
                            from,
                            to: to.into(),
                        }
                    })
                    .filter(|m| m.from.as_deref() != Some(to))
                    .collect();
                self.plans[self.published] = p;
                self.published += 1;
            }
            Step::OperatorReads => self.op_read = self.durable.len(),
            Step::Copied(n, s) => self.source_event(n, s, Event::Copied { actors: 0 }),
            Step::Slot(n, s) => self.slot(n, s),
            Step::Notice(n, s) => self.notice(n, s),
            // A node's watch catches up with every `held` key (one step, like the reports).
            Step::ReadHeld(n) => {
                for m in self.held_unread(n) {
                    self.read_held(n, m);
                }
            }
        }
    }

    /// The moves running at node `n` under a plan older than the one it holds, not told yet.
    fn unnoticed(&self, n: usize) -> Vec<u32> {
        let node = &self.nodes[n];
        node.attempts
            .iter()
            .filter(|(_, a)| !a.told && a.epoch < node.own.epoch())
            .map(|(s, _)| *s)
            .collect()
    }

    /// The move of `shard` at node `n` learns that a newer plan came.
    fn notice(&mut self, n: usize, shard: u32) {
        if let Some(a) = self.nodes[n].attempts.get_mut(&shard) {
            a.told = true;
        }
        self.source_event(n, shard, Event::Superseded);
    }

    /// The move of `shard` waiting at node `n` gets its slot.
    fn slot(&mut self, n: usize, shard: u32) {
        if let Some((epoch, to)) = self.nodes[n].waiting.remove(&shard) {
            self.begin_attempt(n, shard, epoch, &to);
        }
    }

    /// The safety properties; `Err` says which failed. A node serves a shard when its ownership
    /// says so and the shard is not paused (a paused shard holds its requests: they are forwarded
    /// at the hand-off, or served after a resume, which then must find no other node serving).
    fn check(&self) -> Result<(), String> {
        if let Some(e) = &self.stale_pause {
            return Err(e.clone());
        }
        for s in 0..SHARDS {
            let serving: Vec<usize> = (0..NODES.len())
                .filter(|&n| {
                    let node = &self.nodes[n];
                    node.alive && node.own.serves(s) && !node.paused.contains(&s)
                })
                .collect();
            if serving.len() > 1 {
                return Err(format!("shard {s} served by {serving:?}"));
            }
            for n in serving {
                if let Some(v) = self.nodes[n].copy.get(&s)
                    && *v != self.log[s as usize]
                {
                    return Err(format!(
                        "{} serves shard {s} at version {v}, the log holds {}",
                        NODES[n], self.log[s as usize]
                    ));
                }
            }
        }
        Ok(())
    }

    /// The faults stop: dead nodes restart, every node reads the newest plan and every report,
    /// messages are delivered in order, deadlines fire. Then exactly one node serves each shard,
    /// every node agrees which, and nothing moves.
    fn heal(self, healed: &mut HashSet<u64>) -> Result<(), String> {
        // Healing is deterministic: a state met on an earlier healing that succeeded heals too.
        let mut met = Vec::new();
        let r = self.heal_from(healed, &mut met);
        if r.is_ok() {
            healed.extend(met);
        }
        r
    }

    fn heal_from(mut self, healed: &HashSet<u64>, met: &mut Vec<u64>) -> Result<(), String> {
        self.budget = Budget::none();
        for n in 0..NODES.len() {
            if !self.nodes[n].alive {
                self.restart(n);
            }
        }
        for round in 0..1_000 {
            let mut busy = false;
            for n in 0..NODES.len() {
                if self.nodes[n].own.epoch() < self.plans[self.published - 1].epoch {
                    self.take_plan(n, self.published - 1);
                    busy = true;
                }
                while self.nodes[n].read < self.durable.len() {
                    self.read_progress(n);
                    busy = true;
                }
                for m in self.held_unread(n) {
                    self.read_held(n, m);
                    busy = true;
                }
                let copying: Vec<u32> = self.nodes[n]
                    .attempts
                    .iter()
                    .filter(|(_, a)| a.driver.machine.phase == Phase::Copying)
                    .map(|(s, _)| *s)
                    .collect();
                for s in copying {
                    self.source_event(n, s, Event::Copied { actors: 0 });
                    busy = true;
                }
                let waiting: Vec<u32> = self.nodes[n].waiting.keys().copied().collect();
                for s in waiting {
                    self.slot(n, s);
                    busy = true;
                }
                for s in self.unnoticed(n) {
                    self.notice(n, s);
                    busy = true;
                }
            }
            if !self.net.is_empty() {
                let m = self.net.remove(0);
                self.deliver(m);
            } else if !busy {
                // Nothing in flight: a move still running waits for its deadline.
                let running: Vec<(usize, u32)> = (0..NODES.len())
                    .flat_map(|n| {
                        self.nodes[n]
                            .attempts
                            .iter()
                            .filter(|(_, a)| !a.driver.finished())
                            .map(move |(s, _)| (n, *s))
                    })
                    .collect();
                if running.is_empty() {
                    break;
                }
                for (n, s) in running {
                    self.source_event(n, s, Event::Deadline);
                }
            }
            self.check().map_err(|e| format!("while healing: {e}"))?;
            let key = self.key();
            if healed.contains(&key) {
                return Ok(());
            }
            met.push(key);
            if round == 999 {
                return Err("does not settle within 1,000 rounds".into());
            }
        }
        for s in 0..SHARDS {
            let serving: Vec<usize> = (0..NODES.len())
                .filter(|&n| self.nodes[n].own.serves(s))
                .collect();
            if serving.len() != 1 {
                return Err(format!("after healing shard {s} is served by {serving:?}"));
            }
            let owners: BTreeSet<Option<&str>> =
                self.nodes.iter().map(|n| n.own.owner(s)).collect();
            if owners.len() != 1 {
                return Err(format!(
                    "after healing the nodes disagree on shard {s}: {owners:?}"
                ));
            }
            if self.nodes[serving[0]].paused.contains(&s) {
                return Err(format!("after healing shard {s} stays paused"));
            }
            // Nothing left waiting: a move a node's ownership counts as running has an attempt.
            for (n, node) in self.nodes.iter().enumerate() {
                if node.alive && node.own.is_moving(s) && !node.attempts.contains_key(&s) {
                    return Err(format!(
                        "after healing a move of shard {s} waits at {} and nothing will start it",
                        NODES[n]
                    ));
                }
            }
        }
        Ok(())
    }
}

fn code(e: &ErrorReply) -> String {
    serde_json::to_value(e.code)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn error(code: &str) -> ErrorReply {
    let code = serde_json::from_value(serde_json::Value::String(code.to_owned()))
        .unwrap_or(aether_core::protocol::ErrorCode::Internal);
    ErrorReply {
        code,
        message: "refused".into(),
        owner: None,
        epoch: None,
        retry_after_ms: Some(20),
    }
}

/// Explores every state reachable within `budget`, depth first (memory bounded by the depth, each
/// state kept as a 64-bit key); returns (states, longest path) or the first violation with the
/// steps that lead to it. Healing is checked from every state.
fn explore(budget: Budget, limit: usize) -> Result<(usize, usize), String> {
    let start = World::new(budget);
    start.check()?;
    let mut seen = HashSet::new();
    seen.insert(start.key());
    let mut stack: Vec<(World, Vec<Step>)> = vec![(start, Vec::new())];
    let mut depth = 0;
    let mut next_report = 200_000;
    let mut healed = HashSet::new();
    while let Some((w, path)) = stack.pop() {
        depth = depth.max(path.len());
        w.clone()
            .heal(&mut healed)
            .map_err(|e| format!("{e}\nafter {path:?}"))?;
        for step in w.steps() {
            let mut v = w.clone();
            v.apply(step);
            if !seen.insert(v.key()) {
                continue;
            }
            let mut p = path.clone();
            p.push(step);
            v.check().map_err(|e| format!("{e}\nafter {p:?}"))?;
            stack.push((v, p));
        }
        if seen.len() >= next_report {
            eprintln!(
                "model check: {} states so far, stack {}",
                seen.len(),
                stack.len()
            );
            next_report += 200_000;
        }
        if seen.len() > limit {
            return Err(format!(
                "more than {limit} states: the budget is too large for this run"
            ));
        }
    }
    Ok((seen.len(), depth))
}

#[test]
fn every_state_within_the_fault_budget_is_safe_and_converges() {
    let size = std::env::var("AETHER_MODEL_BUDGET").unwrap_or_default();
    let budgets: Vec<Budget> = match size.as_str() {
        // The slice in `make test`: one loss, one crash, one write and the retry; then the plan
        // replaced mid-move with one loss and one write. Messages in any order; reports reach the
        // live nodes as they are stored.
        "" => vec![
            Budget {
                crashes: 1,
                writes: 1,
                retry: true,
                ..Budget::none()
            },
            // Moves wait for a slot while the plan is replaced (rule 2 of `driver.rs`).
            Budget {
                writes: 1,
                replan: true,
                slots: true,
                ..Budget::none()
            },
            // ... and a running move learns of the replacement late (rule 1).
            Budget {
                replan: true,
                slots: true,
                late_notice: true,
                ..Budget::none()
            },
            // A crash with the operator's retry planned from the reports it has read (a plan that
            // lists a move done already), the copy round a step (the source serves meanwhile), a
            // restarted node reading the reports as the stream keeps them: issue 27 finding 3b.
            Budget {
                crashes: 1,
                retry: true,
                lagging_operator: true,
                copy_round: true,
                ..Budget::none()
            },
        ],
        "small" => vec![Budget {
            losses: 1,
            crashes: 1,
            writes: 1,
            retry: true,
            replan: true,
            lazy_progress: true,
            lagging_operator: true,
            late_done: true,
            ..Budget::none()
        }],
        "large" => vec![Budget {
            losses: 2,
            duplicates: 1,
            crashes: 2,
            deadlines: 1,
            writes: 2,
            retry: true,
            replan: true,
            lazy_progress: true,
            lagging_operator: true,
            late_done: true,
            copy_round: true,
            slots: true,
            late_notice: true,
        }],
        // `AETHER_MODEL_BUDGET=faults` (`make model-check`): one of each fault, the retry or the
        // replacement plan, reports delivered to nodes at once; a crash with a lost or late
        // `Done`, the copy round and an operator planning from what it has read; a crash with
        // the replacement plan (issue 27 finding 3a).
        _ => vec![
            Budget {
                losses: 1,
                duplicates: 1,
                crashes: 1,
                deadlines: 1,
                writes: 1,
                retry: true,
                replan: true,
                ..Budget::none()
            },
            Budget {
                losses: 1,
                crashes: 1,
                writes: 1,
                retry: true,
                lagging_operator: true,
                late_done: true,
                copy_round: true,
                ..Budget::none()
            },
            Budget {
                crashes: 1,
                replan: true,
                lagging_operator: true,
                slots: true,
                late_notice: true,
                ..Budget::none()
            },
        ],
    };
    let only: Option<usize> = std::env::var("AETHER_MODEL_ONLY")
        .ok()
        .and_then(|v| v.parse().ok());
    for (i, budget) in budgets.into_iter().enumerate() {
        if only.is_some_and(|o| o != i) {
            continue;
        }
        let started = std::time::Instant::now();
        match explore(budget, 20_000_000) {
            Ok((states, depth)) => {
                eprintln!(
                    "model check: {states} states, depth {depth}, budget {budget:?}, {:.1} s",
                    started.elapsed().as_secs_f64()
                );
                assert!(
                    states > 1_000,
                    "the model explores the protocol ({states} states)"
                );
            }
            Err(e) => panic!("model check: {e}"),
        }
    }
}

#[test]
fn the_model_finds_a_stale_copy_served() {
    // The checker itself: a node serving a copy older than the log is caught.
    let mut w = World::new(Budget::none());
    w.nodes[0].copy.insert(0, 0);
    w.log[0] = 1;
    assert!(w.check().is_err(), "a stale copy served is found");
    let w = World::new(Budget::none());
    assert!(w.check().is_ok());
    assert!(w.clone().heal(&mut HashSet::new()).is_ok());
    assert!(matches!(
        w.nodes[0].attempts.get(&0).map(|a| &a.driver.machine.phase),
        None | Some(Phase::Idle)
    ));
}

/// Replays `path` from the start under `budget` as long as the model offers its steps (the code
/// that found it took them; fixed code may not reach the later ones): every state safe, and from
/// where it stops the model heals.
fn replay(budget: Budget, path: &[Step]) -> Result<(), String> {
    let mut w = World::new(budget);
    for (i, step) in path.iter().enumerate() {
        if !format!("{:?}", w.steps()).contains(&format!("{step:?}")) {
            break;
        }
        w.apply(*step);
        w.check()
            .map_err(|e| format!("{e} after step {i} ({step:?})"))?;
    }
    w.heal(&mut HashSet::new())
}

/// Issue 27 finding 3, as the model found it on the code before the fix. (a) app-1 restarts while
/// app-0, still on epoch 2, serves shard 0 it took by a commit; app-1's first plan (the
/// replacement, epoch 3) names it the source of shard 1's move and it served it at once. (b) app-1
/// handed shard 1 off and app-2 committed it; the operator, which had not read the `Done`,
/// listed the move again in its retry; app-1 restarted, read only the latest report of the move
/// (app-2's `Done`) and served shard 1 from the log beside app-2.
#[test]
fn the_restart_traces_the_model_found_stay_safe() {
    use Step::{Copied, Crash, Deliver, OperatorReads, ReadHeld, ReadPlan, Replan, Restart, Retry};
    let a = Budget {
        crashes: 1,
        replan: true,
        lagging_operator: true,
        ..Budget::none()
    };
    let a_path = [
        ReadPlan(2),
        ReadPlan(1),
        Replan,
        ReadPlan(0),
        Deliver(0),
        Deliver(0),
        Crash(1),
        Restart(1),
        ReadHeld(0),
        Deliver(1),
        Deliver(1),
        Deliver(1),
        Deliver(0),
    ];
    let b = Budget {
        crashes: 1,
        retry: true,
        lagging_operator: true,
        copy_round: true,
        ..Budget::none()
    };
    let b_path = [
        ReadPlan(2),
        ReadPlan(1),
        Copied(1, 1),
        ReadPlan(0),
        Copied(0, 0),
        Deliver(0),
        Deliver(1),
        OperatorReads,
        Crash(1),
        Deliver(1),
        OperatorReads,
        Deliver(1),
        Deliver(0),
        OperatorReads,
        Retry,
        Restart(1),
    ];
    for (budget, path) in [(a, &a_path[..]), (b, &b_path[..])] {
        if let Err(e) = replay(budget, path) {
            panic!("{e}\nafter {path:?}");
        }
    }
}
