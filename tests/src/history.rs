//! A history of operations on `list` actors and its checker: linearizability of each actor's list
//! (appends and reads), which implies no acknowledged append lost, none applied twice, no stale read,
//! nothing read that was never invoked, and versions without gaps.
//!
//! Each append adds a value that is unique in the whole history, so the final list says where every
//! append that took effect was linearized. A read that returned `k` items sits between the `k`-th and
//! the `k+1`-th append. The history is linearizable exactly when every observed list is a prefix of the
//! final one, no value is in it twice, every value in it was invoked and not definitely refused, every
//! acknowledged append is in it, and no operation that completed before another began is ordered after
//! it. Appends whose outcome is unknown (timeout, internal error) may or may not have taken effect; they
//! never complete, so they only constrain by their start.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Instant;

/// What an operation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// Appended a unique value.
    Append(String),
    /// Read the list.
    Read,
    /// Sent an append again with the same command id after it was acknowledged (a client's retry):
    /// must be answered with the value in the list, and never applied again.
    Retry(String),
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answered: the list (an append's reply carries the list after it) and the version.
    Ok {
        /// The items, as strings.
        items: Vec<String>,
        /// The actor's version.
        version: u64,
        /// The node that answered.
        node: String,
    },
    /// Refused for certain: nothing took effect (the error code).
    Refused(String),
    /// No final answer (timeout, transport error, `internal`): may or may not have taken effect.
    Unknown(String),
}

/// One operation: its actor, what it did, when it began and ended (nanoseconds since the history
/// began) and its outcome.
#[derive(Clone, Debug)]
pub struct Op {
    /// Actor id.
    pub actor: String,
    /// What it did.
    pub kind: OpKind,
    /// Invocation time.
    pub invoke: u64,
    /// Completion time.
    pub complete: u64,
    /// Outcome.
    pub outcome: Outcome,
}

/// Operations recorded by many tasks.
#[derive(Debug)]
pub struct History {
    start: Instant,
    ops: Mutex<Vec<Op>>,
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

impl History {
    /// An empty history starting now.
    #[must_use]
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            ops: Mutex::new(Vec::new()),
        }
    }

    /// Nanoseconds since the history began.
    #[must_use]
    pub fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Records a finished operation.
    pub fn record(&self, op: Op) {
        if let Ok(mut ops) = self.ops.lock() {
            ops.push(op);
        }
    }

    /// Every operation recorded so far.
    #[must_use]
    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().map(|o| o.clone()).unwrap_or_default()
    }
}

/// What the checker found.
#[derive(Clone, Debug, Default)]
pub struct Verdict {
    /// Operations checked.
    pub ops: usize,
    /// Acknowledged operations (ok replies).
    pub acknowledged: usize,
    /// Non-ok outcomes by code.
    pub errors: BTreeMap<String, usize>,
    /// Acknowledged appends missing from the final list.
    pub lost: usize,
    /// Values present more than once.
    pub duplicated: usize,
    /// Reads that missed an append acknowledged before they began, or that saw less than a read that
    /// ended before they began, or a list that is not a prefix of the final one.
    pub stale_reads: usize,
    /// Values read that were never invoked, invoked after the read ended, or refused.
    pub phantoms: usize,
    /// Observations whose version differs from their length.
    pub version_gaps: usize,
    /// Appends ordered against real time (one acknowledged before another began, applied after it).
    pub misordered: usize,
    /// The first violations, for people.
    pub examples: Vec<String>,
}

impl Verdict {
    /// No violation of any kind.
    #[must_use]
    pub fn linearizable(&self) -> bool {
        self.lost
            + self.duplicated
            + self.stale_reads
            + self.phantoms
            + self.version_gaps
            + self.misordered
            == 0
    }

    fn note(&mut self, what: String) {
        if self.examples.len() < 20 {
            self.examples.push(what);
        }
    }
}

/// Checks a history. Each actor's longest observed list is taken as its final list (end the history
/// with a read of every actor once the faults are over, so that it is the last word on which appends
/// took effect); every other observation must be a prefix of it.
#[must_use]
pub fn check(ops: &[Op]) -> Verdict {
    let mut v = Verdict {
        ops: ops.len(),
        ..Verdict::default()
    };
    let mut by_actor: HashMap<&str, Vec<&Op>> = HashMap::new();
    for op in ops {
        match &op.outcome {
            Outcome::Ok { .. } => v.acknowledged += 1,
            Outcome::Refused(c) | Outcome::Unknown(c) => {
                *v.errors.entry(c.clone()).or_default() += 1
            }
        }
        by_actor.entry(op.actor.as_str()).or_default().push(op);
    }
    let mut actors: Vec<_> = by_actor.into_iter().collect();
    actors.sort_by(|a, b| a.0.cmp(b.0));
    for (actor, ops) in actors {
        check_actor(actor, &ops, &mut v);
    }
    v
}

fn check_actor(actor: &str, ops: &[&Op], v: &mut Verdict) {
    // The final list: the longest observation; every other must be its prefix.
    let longest = ops
        .iter()
        .filter_map(|o| match &o.outcome {
            Outcome::Ok { items, .. } => Some(items),
            _ => None,
        })
        .max_by_key(|i| i.len());
    let empty = Vec::new();
    let fin: &Vec<String> = longest.unwrap_or(&empty);
    let mut seen = HashSet::new();
    let mut position: HashMap<&str, usize> = HashMap::new();
    for (i, item) in fin.iter().enumerate() {
        if !seen.insert(item.as_str()) {
            v.duplicated += 1;
            v.note(format!(
                "{actor}: {item} applied twice ({} items)",
                fin.len()
            ));
        } else {
            position.insert(item.as_str(), i);
        }
    }
    let appends: HashMap<&str, &Op> = ops
        .iter()
        .filter_map(|o| match &o.kind {
            OpKind::Append(val) => Some((val.as_str(), *o)),
            OpKind::Read | OpKind::Retry(_) => None,
        })
        .collect();
    for item in fin {
        match appends.get(item.as_str()) {
            None => {
                v.phantoms += 1;
                v.note(format!("{actor}: {item} was never appended"));
            }
            Some(op) if matches!(op.outcome, Outcome::Refused(_)) => {
                v.phantoms += 1;
                v.note(format!(
                    "{actor}: {item} took effect although refused ({:?})",
                    op.outcome
                ));
            }
            Some(_) => {}
        }
    }
    // Every observation: a prefix of the final list, its version its length, an append's list holds
    // the append's value.
    let mut bad_read = HashSet::new();
    for (n, op) in ops.iter().enumerate() {
        let Outcome::Ok { items, version, .. } = &op.outcome else {
            continue;
        };
        if items.len() > fin.len() || items[..] != fin[..items.len()] {
            v.stale_reads += 1;
            bad_read.insert(n);
            v.note(format!(
                "{actor}: observed {} items, not a prefix of the final list of {}",
                items.len(),
                fin.len()
            ));
        }
        if *version != items.len() as u64 {
            v.version_gaps += 1;
            v.note(format!(
                "{actor}: version {version} for {} items",
                items.len()
            ));
        }
        if let OpKind::Append(val) | OpKind::Retry(val) = &op.kind
            && !items.contains(val)
        {
            v.lost += 1;
            v.note(format!(
                "{actor}: the reply to append {val} lacks it ({} items)",
                items.len()
            ));
        }
    }
    // Acknowledged appends all took effect.
    for (val, op) in &appends {
        if matches!(op.outcome, Outcome::Ok { .. }) && !position.contains_key(val) {
            v.lost += 1;
            v.note(format!(
                "{actor}: acknowledged append {val} is not in the final list"
            ));
        }
    }
    // Real time: place each operation at its linearization point and look for one that ended before
    // another began but sits after it. Appends at 2i+1 (i: index in the final list), reads of k items
    // at 2k; appends that took no effect are left out; unknown outcomes never end.
    struct Placed {
        pos: u64,
        invoke: u64,
        complete: u64,
        read: bool,
        n: usize,
    }
    let mut placed = Vec::new();
    for (n, op) in ops.iter().enumerate() {
        let (pos, read) = match (&op.kind, &op.outcome) {
            (OpKind::Read, Outcome::Ok { items, .. }) => (2 * items.len() as u64, true),
            (OpKind::Read | OpKind::Retry(_), _) => continue,
            (OpKind::Append(val), _) => match position.get(val.as_str()) {
                Some(i) => (2 * *i as u64 + 1, false),
                None => continue,
            },
        };
        let complete = match op.outcome {
            Outcome::Ok { .. } => op.complete,
            _ => u64::MAX,
        };
        placed.push(Placed {
            pos,
            invoke: op.invoke,
            complete,
            read,
            n,
        });
    }
    placed.sort_by_key(|p| std::cmp::Reverse(p.pos));
    // Walking from the highest position down: the earliest completion among strictly higher positions.
    let mut earliest: Option<(u64, usize)> = None;
    let mut i = 0;
    while i < placed.len() {
        let mut j = i;
        while j < placed.len() && placed[j].pos == placed[i].pos {
            j += 1;
        }
        for p in &placed[i..j] {
            if let Some((done, by)) = earliest
                && done < p.invoke
            {
                let later = placed.iter().any(|q| q.n == by && q.read);
                let (a, b) = (ops[by], ops[p.n]);
                if p.read {
                    if bad_read.insert(p.n) {
                        v.stale_reads += 1;
                    }
                    v.note(format!(
                        "{actor}: stale read of {} at {} ms began after {:?} ({}) ended at {} ms",
                        brief(&b.outcome),
                        b.invoke / 1_000_000,
                        a.kind,
                        brief(&a.outcome),
                        a.complete / 1_000_000
                    ));
                } else if later {
                    v.phantoms += 1;
                    v.note(format!(
                        "{actor}: a read ended before {:?} began but saw it ({})",
                        b.kind,
                        brief(&a.outcome)
                    ));
                } else {
                    v.misordered += 1;
                    v.note(format!(
                        "{actor}: {:?} was acknowledged before {:?} began but applied after it",
                        a.kind, b.kind
                    ));
                }
            }
        }
        for p in &placed[i..j] {
            if earliest.is_none_or(|(done, _)| p.complete < done) {
                earliest = Some((p.complete, p.n));
            }
        }
        i = j;
    }
}

/// An outcome in a few words.
fn brief(o: &Outcome) -> String {
    match o {
        Outcome::Ok {
            items,
            version,
            node,
        } => format!("ok from {node}: {} items, version {version}", items.len()),
        Outcome::Refused(c) => format!("refused {c}"),
        Outcome::Unknown(c) => format!("unknown: {c}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(actor: &str, kind: OpKind, invoke: u64, complete: u64, outcome: Outcome) -> Op {
        Op {
            actor: actor.to_owned(),
            kind,
            invoke,
            complete,
            outcome,
        }
    }

    fn ok(items: &[&str]) -> Outcome {
        Outcome::Ok {
            items: items.iter().map(|s| (*s).to_owned()).collect(),
            version: items.len() as u64,
            node: "n".into(),
        }
    }

    fn app(v: &str) -> OpKind {
        OpKind::Append(v.to_owned())
    }

    #[test]
    fn a_sequential_history_is_linearizable() {
        let h = vec![
            op("a", app("x"), 0, 1, ok(&["x"])),
            op("a", OpKind::Read, 2, 3, ok(&["x"])),
            op("a", app("y"), 4, 5, ok(&["x", "y"])),
            op("a", OpKind::Read, 6, 7, ok(&["x", "y"])),
        ];
        let v = check(&h);
        assert!(v.linearizable(), "{v:?}");
        assert_eq!(v.acknowledged, 4);
    }

    #[test]
    fn a_read_missing_an_acknowledged_append_is_stale() {
        let h = vec![
            op("a", app("x"), 0, 1, ok(&["x"])),
            op("a", app("y"), 2, 3, ok(&["x", "y"])),
            op("a", OpKind::Read, 4, 5, ok(&["x"])),
        ];
        let v = check(&h);
        assert_eq!(v.stale_reads, 1, "{v:?}");
        assert_eq!(v.lost, 0);
    }

    #[test]
    fn a_concurrent_read_may_see_either() {
        let h = vec![
            op("a", app("x"), 0, 10, ok(&["x"])),
            op("a", OpKind::Read, 1, 2, ok(&[])),
            op("a", OpKind::Read, 3, 4, ok(&["x"])),
        ];
        assert!(check(&h).linearizable());
        // ...but not go back.
        let h = vec![
            op("a", app("x"), 0, 10, ok(&["x"])),
            op("a", OpKind::Read, 1, 2, ok(&["x"])),
            op("a", OpKind::Read, 3, 4, ok(&[])),
        ];
        assert_eq!(check(&h).stale_reads, 1);
    }

    #[test]
    fn lost_duplicated_and_phantom_values_are_found() {
        let lost = vec![
            op("a", app("x"), 0, 1, ok(&["x"])),
            op("a", app("y"), 2, 3, ok(&["y"])),
        ];
        let v = check(&lost);
        assert!(v.lost + v.stale_reads >= 1, "{v:?}");
        let twice = vec![
            op("a", app("x"), 0, 1, ok(&["x"])),
            op("a", OpKind::Read, 2, 3, ok(&["x", "x"])),
        ];
        let v = check(&twice);
        assert_eq!(v.duplicated, 1, "{v:?}");
        assert_eq!(v.version_gaps, 0);
        let phantom = vec![op("a", OpKind::Read, 0, 1, ok(&["z"]))];
        assert_eq!(check(&phantom).phantoms, 1);
        let refused = vec![
            op("a", app("x"), 0, 1, Outcome::Refused("rejected".into())),
            op("a", OpKind::Read, 2, 3, ok(&["x"])),
        ];
        assert_eq!(check(&refused).phantoms, 1);
        let future = vec![
            op("a", OpKind::Read, 0, 1, ok(&["x"])),
            op("a", app("x"), 2, 3, ok(&["x"])),
        ];
        assert_eq!(check(&future).phantoms, 1);
    }

    #[test]
    fn an_unknown_append_may_land_or_not() {
        let landed = vec![
            op("a", app("x"), 0, 1, Outcome::Unknown("timeout".into())),
            op("a", OpKind::Read, 5, 6, ok(&["x"])),
        ];
        assert!(check(&landed).linearizable());
        let not = vec![
            op("a", app("x"), 0, 1, Outcome::Unknown("timeout".into())),
            op("a", OpKind::Read, 5, 6, ok(&[])),
        ];
        assert!(check(&not).linearizable());
    }

    #[test]
    fn appends_out_of_real_time_order_are_found() {
        let h = vec![
            op("a", app("x"), 0, 1, ok(&["y", "x"])),
            op("a", app("y"), 2, 3, ok(&["y"])),
        ];
        let v = check(&h);
        assert!(!v.linearizable(), "{v:?}");
    }

    #[test]
    fn a_version_that_skips_is_a_gap() {
        let h = vec![op(
            "a",
            app("x"),
            0,
            1,
            Outcome::Ok {
                items: vec!["x".into()],
                version: 2,
                node: "n".into(),
            },
        )];
        assert_eq!(check(&h).version_gaps, 1);
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        /// A history produced by a linearizable list: each op takes effect at a point inside its
        /// interval; some outcomes are lost (unknown), some appends never take effect.
        fn linearizable() -> impl Strategy<Value = Vec<Op>> {
            proptest::collection::vec((any::<bool>(), 0u64..50, 1u64..50, 0u8..10), 1..40).prop_map(
                |spec| {
                    let mut points: Vec<(u64, usize)> = Vec::new();
                    let mut intervals = Vec::new();
                    let mut t = 0;
                    for (n, (_, gap, len, _)) in spec.iter().enumerate() {
                        t += gap;
                        let invoke = t;
                        let complete = t + len;
                        // The effect at a point inside [invoke, complete], distinct per op.
                        points.push((invoke * 1000 + (len * 1000 / 2) + n as u64, n));
                        intervals.push((invoke * 1000, complete * 1000 + 999));
                    }
                    points.sort_unstable();
                    let mut list: Vec<String> = Vec::new();
                    let mut ops = vec![None; spec.len()];
                    for (_, n) in points {
                        let (is_append, _, _, fate) = spec[n];
                        let (invoke, complete) = intervals[n];
                        let (kind, outcome) = if is_append {
                            let val = format!("v{n}");
                            let landed = fate != 0;
                            if landed {
                                list.push(val.clone());
                            }
                            let outcome = match fate {
                                0 => Outcome::Refused("rejected".into()),
                                1 => Outcome::Unknown("timeout".into()),
                                _ => Outcome::Ok {
                                    items: list.clone(),
                                    version: list.len() as u64,
                                    node: "n".into(),
                                },
                            };
                            (OpKind::Append(val), outcome)
                        } else {
                            let outcome = if fate == 1 {
                                Outcome::Unknown("timeout".into())
                            } else {
                                Outcome::Ok {
                                    items: list.clone(),
                                    version: list.len() as u64,
                                    node: "n".into(),
                                }
                            };
                            (OpKind::Read, outcome)
                        };
                        ops[n] = Some(Op {
                            actor: "a".into(),
                            kind,
                            invoke,
                            complete,
                            outcome,
                        });
                    }
                    // A final read after everything.
                    let mut ops: Vec<Op> = ops.into_iter().flatten().collect();
                    let end = t * 1000 + 100_000;
                    ops.push(Op {
                        actor: "a".into(),
                        kind: OpKind::Read,
                        invoke: end,
                        complete: end + 1,
                        outcome: Outcome::Ok {
                            version: list.len() as u64,
                            items: list,
                            node: "n".into(),
                        },
                    });
                    ops
                },
            )
        }

        proptest! {
            #[test]
            fn every_linearizable_history_passes(h in linearizable()) {
                let v = check(&h);
                prop_assert!(v.linearizable(), "{:?}", v);
            }

            #[test]
            fn dropping_an_acknowledged_append_from_the_final_read_is_found(h in linearizable()) {
                let mut h = h;
                let last = h.len() - 1;
                let acked: Vec<String> = h.iter().filter_map(|o| match (&o.kind, &o.outcome) {
                    (OpKind::Append(v), Outcome::Ok { .. }) => Some(v.clone()),
                    _ => None,
                }).collect();
                prop_assume!(!acked.is_empty());
                if let Outcome::Ok { items, version, .. } = &mut h[last].outcome {
                    items.retain(|i| i != &acked[0]);
                    *version = items.len() as u64;
                }
                prop_assert!(!check(&h).linearizable());
            }

            #[test]
            fn applying_an_append_twice_is_found(h in linearizable()) {
                let mut h = h;
                let last = h.len() - 1;
                if let Outcome::Ok { items, version, .. } = &mut h[last].outcome {
                    prop_assume!(!items.is_empty());
                    let first = items[0].clone();
                    items.push(first);
                    *version = items.len() as u64;
                }
                let v = check(&h);
                prop_assert!(v.duplicated >= 1, "{:?}", v);
            }
        }
    }
}
