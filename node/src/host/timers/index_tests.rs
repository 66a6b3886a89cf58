use super::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

fn a(kind: &str, id: &str) -> ActorRef {
    ActorRef::new(kind, id)
}

#[test]
fn each_actor_is_held_once_at_its_latest_look_time() {
    let mut ix = LookIndex::default();
    assert_eq!(ix.set(&a("counter", "x"), Some(30)), 1);
    assert_eq!(ix.set(&a("order", "x"), Some(10)), 1);
    assert_eq!(ix.set(&a("counter", "x"), Some(20)), 0);
    assert_eq!((ix.len(), ix.next()), (2, Some(10)));
    assert_eq!(ix.look_of(&a("counter", "x")), Some(20));
    // Taken: moved to the retry time, set again when the look lands.
    let due = ix.take_due(25, 10, 1_000);
    assert_eq!(due, vec![a("order", "x"), a("counter", "x")]);
    assert_eq!((ix.len(), ix.next()), (2, Some(1_000)));
    assert!(ix.take_due(999, 10, 2_000).is_empty());
    assert_eq!(ix.set(&a("order", "x"), None), -1);
    assert_eq!(ix.set(&a("order", "x"), None), 0);
    assert_eq!((ix.len(), ix.next()), (1, Some(1_000)));
    assert_eq!(ix.take_due(1_000, 1, 5), vec![a("counter", "x")]);
}

#[test]
fn a_million_actors_take_at_most_64_bytes_each() {
    let mut ix = LookIndex::default();
    let n = 1_000_000u64;
    for i in 0..n {
        ix.set(&a("timer", &format!("t{i}")), Some(1_000 + i % 977));
    }
    let per = ix.bytes() as f64 / n as f64;
    println!("{per:.1} bytes per actor");
    assert!(per <= 64.0, "{per:.1} bytes per actor");
    // Half of them fire and go: the index shrinks with them, the rest are still found.
    for i in (0..n).step_by(2) {
        ix.set(&a("timer", &format!("t{i}")), None);
    }
    assert_eq!(ix.len(), (n / 2) as usize);
    assert_eq!(ix.look_of(&a("timer", "t1")), Some(1_001));
    assert_eq!(ix.look_of(&a("timer", "t0")), None);
}

#[derive(Debug, Clone)]
enum Op {
    Set(u8, Option<u16>),
    Take(u16, u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..40, proptest::option::weighted(0.8, 0u16..500)).prop_map(|(k, t)| Op::Set(k, t)),
        1 => (0u16..600, 1u8..8).prop_map(|(n, m)| Op::Take(n, m)),
    ]
}

fn actor(k: u8) -> ActorRef {
    // Two kinds, ids that share prefixes and repeat across kinds.
    a(
        if k.is_multiple_of(3) {
            "order"
        } else {
            "counter"
        },
        &"i".repeat(usize::from(k % 13) + 1),
    )
}

proptest! {
    /// The index against a map of actor to look time: the same actors, the same earliest time,
    /// and `take_due` hands out exactly the due actors, earliest first.
    #[test]
    fn the_index_is_a_map_of_look_times(ops in proptest::collection::vec(op(), 1..300)) {
        let mut ix = LookIndex::default();
        let mut model: BTreeMap<ActorRef, u64> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Set(k, t) => {
                    let actor = actor(k);
                    let before = model.len() as i64;
                    match t {
                        Some(t) => { model.insert(actor.clone(), u64::from(t)); }
                        None => { model.remove(&actor); }
                    }
                    let change = ix.set(&actor, t.map(u64::from));
                    prop_assert_eq!(change, model.len() as i64 - before);
                }
                Op::Take(now, max) => {
                    let now = u64::from(now);
                    let retry = now + 1_000;
                    let got = ix.take_due(now, usize::from(max), retry);
                    let mut due: Vec<(u64, ActorRef)> = model
                        .iter()
                        .filter(|(_, t)| **t <= now)
                        .map(|(a, t)| (*t, a.clone()))
                        .collect();
                    due.sort();
                    prop_assert_eq!(got.len(), due.len().min(usize::from(max)));
                    let times: Vec<u64> = got.iter().map(|a| model[a]).collect();
                    prop_assert!(times.windows(2).all(|w| w[0] <= w[1]));
                    // The earliest ones: nothing left behind is earlier than the last taken.
                    for g in &got {
                        prop_assert!(model[g] <= now);
                    }
                    if let Some(last) = times.last() {
                        let left_earlier = due
                            .iter()
                            .filter(|(t, a)| *t < *last && !got.contains(a))
                            .count();
                        prop_assert_eq!(left_earlier, 0);
                    }
                    for g in got {
                        model.insert(g, retry);
                    }
                }
            }
            prop_assert_eq!(ix.len(), model.len());
            prop_assert_eq!(ix.next(), model.values().min().copied());
            for (actor, t) in &model {
                prop_assert_eq!(ix.look_of(actor), Some(*t));
            }
        }
    }
}
