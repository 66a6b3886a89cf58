//! The timers' hand-off, simulated on the pure code the worker runs: a shard's actors set, cancel
//! and fire timers while the node serving the shard crashes at any step of a record (its marker
//! written, the record not; the record landed, its marker not moved on), stops serving for a
//! while, or hands the shard to another node. A node that starts serving the shard knows nothing
//! but the log and the pending-work markers: it indexes the markers ([`Worker::index_markers`]'s
//! rule), loads an actor when its look comes and fires its earliest due timer ([`super::fire`]),
//! writing the marker around each record as [`marker::writes`] says and `append.rs` does.
//!
//! Actors that travel in a move's chunks are loaded on the destination and index their own
//! timers; the simulation takes the harder path, every actor from the log.
//!
//! Checked at every step: every actor with a timer in the log is in the serving node's index no
//! later than its earliest due time (so nothing is lost or late by the hand-off); no firing before
//! its due time; each firing applied once. Once the faults stop and time passes, every timer due
//! has fired.

use super::super::marker::{self, After, Marker, UNKNOWN};
use super::{FiringRequest, LookIndex, fire, firing_request};
use crate::store::Record;
use aether_core::protocol::ActorRef;
use aether_core::timers::{self, Timer};
use proptest::prelude::*;
use std::collections::{BTreeMap, HashMap, HashSet};

const ACTORS: usize = 4;
const NAMES: [&str; 2] = ["x", "y"];
/// How long a look waits after it was taken, until it lands ([`super::RETRY_FIRING_AFTER`]).
const RETRY_MS: u64 = 1_000;

/// Where the next record's writes stop, the node crashing there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Crash {
    /// After the marker written before the record: the record never lands.
    BeforeAppend,
    /// After the record landed: the marker is not moved on or cleared.
    AfterAppend,
}

#[derive(Clone, Debug)]
enum Op {
    Schedule {
        actor: usize,
        name: usize,
        after: u64,
        every: Option<u64>,
    },
    Cancel {
        actor: usize,
        name: usize,
    },
    /// Time passes; the serving node fires what is due.
    Advance(u64),
    /// The next record stops there and the node dies.
    CrashAt(Crash),
    /// Nobody serves the shard until the next [`Op::Serve`].
    Down,
    /// A node (another, or the same restarted) starts serving the shard.
    Serve,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        // Timers close by and far (a marker moved on only past `MARKER_SLACK_MS`).
        4 => (
            0..ACTORS,
            0..NAMES.len(),
            prop_oneof![1..4_000u64, 60_000..200_000u64],
            proptest::option::of(prop_oneof![1_000..3_000u64, 60_000..120_000u64]),
        )
            .prop_map(|(actor, name, after, every)| Op::Schedule { actor, name, after, every }),
        1 => (0..ACTORS, 0..NAMES.len()).prop_map(|(actor, name)| Op::Cancel { actor, name }),
        4 => prop_oneof![3 => 0..2_500u64, 1 => 50_000..150_000u64].prop_map(Op::Advance),
        1 => prop_oneof![Just(Crash::BeforeAppend), Just(Crash::AfterAppend)].prop_map(Op::CrashAt),
        1 => Just(Op::Down),
        1 => Just(Op::Serve),
    ]
}

/// The node serving the shard: what a worker holds in memory.
#[derive(Default)]
struct Node {
    index: LookIndex,
    /// Actors loaded: their marker as the worker knows it.
    loaded: HashMap<usize, Marker>,
}

#[derive(Default)]
struct World {
    now: u64,
    /// Each actor's timers as its last landed record leaves them (the log).
    log: BTreeMap<usize, Vec<Timer>>,
    /// Each actor's firing ids applied (from the log's records).
    applied: HashSet<String>,
    /// The marker subject of each actor: the values stored, oldest first.
    markers: BTreeMap<usize, Vec<u64>>,
    node: Option<Node>,
    crash: Option<Crash>,
}

fn actor_ref(i: usize) -> ActorRef {
    ActorRef::new("counter", format!("a{i}"))
}

fn id_of(actor: &ActorRef) -> usize {
    actor.id[1..].parse().expect("a sim actor")
}

impl World {
    /// A node starts serving the shard: it indexes every marker (the earliest per actor).
    fn serve(&mut self) {
        let mut node = Node::default();
        for (&a, values) in &self.markers {
            for &look in values {
                let actor = actor_ref(a);
                let look = node.index.look_of(&actor).map_or(look, |t| t.min(look));
                node.index.set(&actor, Some(look));
            }
        }
        self.node = Some(node);
    }

    fn timers_of(&self, a: usize) -> Vec<Timer> {
        self.log.get(&a).cloned().unwrap_or_default()
    }

    /// Loads `a` into the serving node (its marker: there, time unknown, when it has timers), and
    /// indexes its own timers.
    fn load(&mut self, a: usize) {
        let timers = self.timers_of(a);
        let Some(node) = self.node.as_mut() else {
            return;
        };
        node.loaded
            .entry(a)
            .or_insert_with(|| (!timers.is_empty()).then_some(UNKNOWN));
        let look = timers.iter().map(|t| t.due).min();
        node.index.set(&actor_ref(a), look);
    }

    fn mark(&mut self, a: usize, t: u64, replace: bool) {
        let values = self.markers.entry(a).or_default();
        values.push(t);
        if replace {
            values.drain(..values.len() - 1);
        }
    }

    /// One record of `a` setting `set` and cancelling `cancel`, with its marker's writes, as the
    /// worker and `append.rs` make them; stops where a crash was asked for (the node dies).
    fn record(&mut self, a: usize, cmd: Option<String>, set: Vec<Timer>, cancel: Vec<String>) {
        self.load(a);
        let Some(node) = self.node.as_ref() else {
            return;
        };
        let had = node.loaded.get(&a).copied().flatten();
        let before = self.timers_of(a);
        let mut rec = Record::new(cmd.clone(), Vec::new(), 0, 0);
        rec.timers = set;
        rec.cancel = cancel;
        let w = marker::writes(
            had,
            marker::look(false, &before),
            marker::look_after(false, &before, &rec),
            self.now,
        );
        let mut known = had;
        if let Some(t) = w.before {
            self.mark(a, t, had.is_some());
            known = Some(t);
        }
        if self.crash == Some(Crash::BeforeAppend) {
            self.crash = None;
            self.node = None;
            return;
        }
        let mut after = before;
        timers::apply(&mut after, &rec.timers, &rec.cancel);
        self.log.insert(a, after.clone());
        if let Some(id) = cmd {
            assert!(self.applied.insert(id.clone()), "{id} applied twice");
        }
        if self.crash == Some(Crash::AfterAppend) {
            self.crash = None;
            self.node = None;
            return;
        }
        match w.after {
            After::Keep => {}
            After::Clear => {
                self.markers.remove(&a);
                known = None;
            }
            After::Set(t) => {
                self.mark(a, t, true);
                known = Some(t);
            }
        }
        if let Some(node) = self.node.as_mut() {
            node.loaded.insert(a, known);
            node.index
                .set(&actor_ref(a), after.iter().map(|t| t.due).min());
        }
    }

    /// The serving node's looks due by now, as `fire_due` takes them: each actor loaded, its
    /// earliest due timer fired (or its look moved to its next due time).
    fn fire_due(&mut self) {
        for _ in 0..1_000 {
            let now = self.now;
            let Some(node) = self.node.as_mut() else {
                return;
            };
            let Some(actor) = node.index.take_next(now, now + RETRY_MS) else {
                return;
            };
            let a = id_of(&actor);
            if !node.loaded.contains_key(&a) {
                self.load(a);
                // `touch`: a marker with nothing behind it goes.
                if self.timers_of(a).is_empty() {
                    self.markers.remove(&a);
                    if let Some(node) = self.node.as_mut() {
                        node.loaded.insert(a, None);
                    }
                }
            }
            let current = self.timers_of(a);
            let mut req = firing_request(actor.clone());
            match fire(&mut req, &current, now) {
                FiringRequest::Due(t, f) => {
                    assert!(f.due <= now, "{} fired at {now}, due {}", t.name, f.due);
                    let (set, cancel) = timers::merge(Some((&t, &f)), Vec::new(), Vec::new());
                    self.record(a, req.id, set, cancel);
                }
                FiringRequest::NotDue | FiringRequest::NotTimer => {
                    if let Some(node) = self.node.as_mut() {
                        node.index.set(&actor, current.iter().map(|t| t.due).min());
                    }
                }
            }
        }
        panic!("the looks due never end");
    }

    fn step(&mut self, op: Op) {
        match op {
            Op::Schedule {
                actor,
                name,
                after,
                every,
            } => {
                let t = Timer {
                    name: NAMES[name].into(),
                    due: self.now + after,
                    every,
                    command: serde_json::Value::Null,
                    catch_up: 0,
                };
                self.record(actor, None, vec![t], Vec::new());
            }
            Op::Cancel { actor, name } => {
                self.record(actor, None, Vec::new(), vec![NAMES[name].into()]);
            }
            Op::Advance(dt) => {
                self.now += dt;
                self.fire_due();
            }
            Op::CrashAt(c) => self.crash = Some(c),
            Op::Down => self.node = None,
            Op::Serve => {
                self.serve();
                self.fire_due();
            }
        }
    }

    /// Every actor with a timer in the log is indexed by the serving node no later than its
    /// earliest due time.
    fn check(&self) {
        let Some(node) = self.node.as_ref() else {
            return;
        };
        for (&a, timers) in &self.log {
            let Some(due) = timers.iter().map(|t| t.due).min() else {
                continue;
            };
            let look = node.index.look_of(&actor_ref(a));
            assert!(
                look.is_some_and(|l| l <= due),
                "a{a}: due {due}, indexed {look:?} at {}",
                self.now
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn timers_survive_crashes_and_hand_offs(ops in prop::collection::vec(op(), 0..60)) {
        let mut w = World::default();
        w.serve();
        for op in ops {
            w.step(op);
            w.check();
        }
        // The faults stop: a node serves, time passes, and every timer due has fired.
        w.crash = None;
        if w.node.is_none() {
            w.serve();
        }
        for _ in 0..20 {
            w.step(Op::Advance(RETRY_MS + 500));
            w.check();
        }
        for (a, timers) in &w.log {
            for t in timers {
                prop_assert!(t.due > w.now - RETRY_MS - 500, "a{a}'s {} due {} never fired (now {})", t.name, t.due, w.now);
            }
        }
    }
}
