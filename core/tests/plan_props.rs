//! Property tests of the planner: determinism, rebuild from status, minimal disruption, balance, epochs.

use aether_core::anchor::Anchor;
use aether_core::crd::Strategy as Placement;
use aether_core::plan::{MemberInput, Plan, PlanSpec, anchor_map, plan};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

fn pod(i: u32) -> String {
    format!("app-{i}")
}

fn members(ids: &BTreeSet<u32>) -> Vec<MemberInput> {
    ids.iter().map(|&i| MemberInput::active(pod(i))).collect()
}

/// Replays a history of member sets, returning every plan.
fn replay(history: &[BTreeSet<u32>], spec: &PlanSpec) -> Vec<Plan> {
    let mut plans: Vec<Plan> = Vec::new();
    for set in history {
        let next = plan(plans.last(), &BTreeSet::new(), &members(set), spec).expect("plans");
        plans.push(next);
    }
    plans
}

fn owners(p: &Plan) -> Vec<Option<String>> {
    (0..p.shards)
        .map(|s| p.owner(s).map(str::to_owned))
        .collect()
}

fn spec_strategy() -> impl Strategy<Value = PlanSpec> {
    (
        prop::sample::select(vec![1u32, 7, 64, 1024, 4096]),
        1u32..64,
        prop::bool::ANY,
    )
        .prop_map(|(shards, capacity, balanced)| PlanSpec {
            shards,
            capacity,
            strategy: if balanced {
                Placement::Balanced
            } else {
                Placement::AnchorHash
            },
        })
}

/// A history of member sets (ordinals below 64), each within capacity.
fn history_strategy(capacity: u32) -> impl Strategy<Value = Vec<BTreeSet<u32>>> {
    prop::collection::vec(
        prop::collection::btree_set(0u32..64, 0..=capacity.min(24) as usize),
        1..6,
    )
}

fn spec_and_history() -> impl Strategy<Value = (PlanSpec, Vec<BTreeSet<u32>>)> {
    spec_strategy().prop_flat_map(|spec| (Just(spec), history_strategy(spec.capacity)))
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 128,
        // Shrunk failures are kept next to this file and replayed first on every run.
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("regressions"),
        )),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn same_inputs_same_plan((spec, history) in spec_and_history()) {
        prop_assert_eq!(replay(&history, &spec), replay(&history, &spec));
    }

    #[test]
    fn placement_rebuilt_from_status_is_the_same((spec, history) in spec_and_history()) {
        let spec = PlanSpec { strategy: Placement::AnchorHash, ..spec };
        for p in replay(&history, &spec) {
            // Round-trip through JSON as the status does.
            let json = serde_json::to_string(&p.placement).expect("serialises");
            let state = serde_json::from_str(&json).expect("parses");
            let anchor = Anchor::restore(&state).expect("restores");
            prop_assert_eq!(anchor_map(&anchor, spec.shards), p.shard_map.clone());
        }
    }

    #[test]
    fn epochs_only_grow((spec, history) in spec_and_history()) {
        let plans = replay(&history, &spec);
        for w in plans.windows(2) {
            prop_assert!(w[1].epoch > w[0].epoch);
        }
    }

    #[test]
    fn no_shard_moves_between_two_survivors((spec, history) in spec_and_history()) {
        let plans = replay(&history, &spec);
        for w in plans.windows(2) {
            let (before, after) = (&w[0], &w[1]);
            let old: BTreeSet<&str> = before.members.iter().map(|m| m.name.as_str()).collect();
            let new: BTreeSet<&str> = after.members.iter().map(|m| m.name.as_str()).collect();
            for s in 0..after.shards {
                let (o, n) = (before.owner(s), after.owner(s));
                if o != n {
                    let left = o.is_none_or(|o| !new.contains(o));
                    let joined = n.is_none_or(|n| !old.contains(n));
                    prop_assert!(left || joined, "shard {} moved {:?} -> {:?} between survivors", s, o, n);
                }
            }
            // The moves are exactly the changed shards (no pending moves here).
            let changed: BTreeSet<u32> = (0..after.shards)
                .filter(|&s| before.owner(s) != after.owner(s) && after.owner(s).is_some())
                .collect();
            let moved: BTreeSet<u32> = after.moves.iter().map(|m| m.shard).collect();
            prop_assert_eq!(changed, moved);
        }
    }

    #[test]
    fn a_join_moves_only_to_the_joiner(spec in spec_strategy(), base in prop::collection::btree_set(0u32..64, 1..24), joiner in 64u32..80) {
        let spec = PlanSpec { capacity: spec.capacity.max(base.len() as u32 + 1), ..spec };
        // Balanced guarantees this from a balanced start, which replay gives.
        let mut with = base.clone();
        with.insert(joiner);
        let plans = replay(&[base, with], &spec);
        let (before, after) = (&plans[0], &plans[1]);
        let name = pod(joiner);
        for s in 0..spec.shards {
            if before.owner(s) != after.owner(s) {
                prop_assert_eq!(after.owner(s), Some(name.as_str()));
            }
        }
        for m in &after.moves {
            prop_assert_eq!(&m.to, &pod(joiner));
        }
    }

    #[test]
    fn a_leave_moves_only_the_leavers_shards(spec in spec_strategy(), base in prop::collection::btree_set(0u32..64, 2..24), pick in any::<prop::sample::Index>()) {
        let spec = PlanSpec { capacity: spec.capacity.max(base.len() as u32), ..spec };
        let leaver = *pick.get(&base.iter().copied().collect::<Vec<_>>());
        let mut without = base.clone();
        without.remove(&leaver);
        let plans = replay(&[base, without], &spec);
        let (before, after) = (&plans[0], &plans[1]);
        let name = pod(leaver);
        for s in 0..spec.shards {
            if before.owner(s) != after.owner(s) {
                prop_assert_eq!(before.owner(s), Some(name.as_str()));
            }
        }
    }

    #[test]
    fn rejoining_restores_the_placement(spec in spec_strategy(), base in prop::collection::btree_set(0u32..64, 2..24), pick in any::<prop::sample::Index>()) {
        let spec = PlanSpec { strategy: Placement::AnchorHash, capacity: spec.capacity.max(base.len() as u32), ..spec };
        let leaver = *pick.get(&base.iter().copied().collect::<Vec<_>>());
        let mut without = base.clone();
        without.remove(&leaver);
        let plans = replay(&[base.clone(), without, base], &spec);
        prop_assert_eq!(owners(&plans[0]), owners(&plans[2]));
    }

    #[test]
    fn balanced_is_within_one_shard((spec, history) in spec_and_history()) {
        let spec = PlanSpec { strategy: Placement::Balanced, ..spec };
        for p in replay(&history, &spec) {
            let loads: Vec<usize> = p.loads().into_values().collect();
            if let (Some(max), Some(min)) = (loads.iter().max(), loads.iter().min()) {
                prop_assert!(max - min <= 1, "loads {:?}", loads);
            }
            if !p.members.is_empty() {
                prop_assert!((0..p.shards).all(|s| p.owner(s).is_some()), "every shard owned");
            }
        }
    }

    /// The AnchorHash balance goal, `max/mean <= 1 + 3 sqrt(members/shards) + 0.01`, where
    /// README.md says it holds: at most 100 members, capacity at most twice the members and at least
    /// 64 shards per member. Histories are random joins and leaves, so removed buckets sit anywhere.
    /// (Above ~200 members the worst load of random-like placement passes 3 standard deviations in
    /// about 0.1-1% of histories, as the maximum of that many loads does; BENCHMARKS.md has the shares.)
    #[test]
    fn anchorhash_load_is_within_the_bound(
        shards in prop::sample::select(vec![1024u32, 4096, 16384, 65536]),
        n in 1u32..=100,
        extra in 0u32..=100,
        seed in any::<u64>(),
    ) {
        let n = n.min(shards / 64);
        let capacity = n + n * extra / 100;
        let mut t = Anchor::new(capacity).expect("valid capacity");
        while t.add().is_some() {}
        let mut working: Vec<u32> = (0..capacity).collect();
        let mut x = seed;
        while working.len() > n as usize {
            x = aether_core::hash::mix64(x.wrapping_add(1));
            let b = working.swap_remove((x % working.len() as u64) as usize);
            t.remove(b);
        }
        let mut loads = BTreeMap::<u16, u32>::new();
        for &b in anchor_map(&t, shards).buckets() {
            *loads.entry(b).or_default() += 1;
        }
        prop_assert_eq!(loads.len(), n as usize);
        let max = f64::from(*loads.values().max().expect("members"));
        let mean = f64::from(shards) / f64::from(n);
        let bound = 1.0 + 3.0 * (f64::from(n) / f64::from(shards)).sqrt() + 0.01;
        prop_assert!(max / mean <= bound, "max/mean {} > bound {}", max / mean, bound);
    }
}

#[test]
fn replanning_with_moves_in_flight() {
    let spec = PlanSpec {
        shards: 256,
        capacity: 16,
        strategy: Placement::AnchorHash,
    };
    let three: Vec<_> = (0..3).map(|i| MemberInput::active(pod(i))).collect();
    let p1 = plan(None, &BTreeSet::new(), &three, &spec).expect("plan 1");
    let four: Vec<_> = (0..4).map(|i| MemberInput::active(pod(i))).collect();
    let p2 = plan(Some(&p1), &BTreeSet::new(), &four, &spec).expect("plan 2");
    assert!(!p2.moves.is_empty());
    assert!(p2.moves.iter().all(|m| m.to == pod(3)));
    // app-3 leaves again before any move is done: every pending move's shard is still with its
    // source, which is also its new target, so nothing moves.
    let pending: BTreeSet<u32> = p2.moves.iter().map(|m| m.shard).collect();
    let p3 = plan(Some(&p2), &pending, &three, &spec).expect("plan 3");
    assert!(p3.moves.is_empty(), "{:?}", p3.moves);
    assert_eq!(owners(&p3), owners(&p1));
    // If half of the moves were done, exactly those come back from app-3 ... but app-3 is gone, so
    // their new owners rebuild them from the log (no source).
    let half: BTreeSet<u32> = pending.iter().copied().step_by(2).collect();
    let p3b = plan(Some(&p2), &half, &three, &spec).expect("plan 3b");
    let back: BTreeSet<u32> = pending.difference(&half).copied().collect();
    let moved: BTreeSet<u32> = p3b.moves.iter().map(|m| m.shard).collect();
    assert_eq!(moved, back);
    assert!(p3b.moves.iter().all(|m| m.from.is_none()));
}

#[test]
fn a_draining_member_is_planned_out_and_stays_the_source() {
    let spec = PlanSpec {
        shards: 128,
        capacity: 8,
        strategy: Placement::AnchorHash,
    };
    let three: Vec<_> = (0..3).map(|i| MemberInput::active(pod(i))).collect();
    let p1 = plan(None, &BTreeSet::new(), &three, &spec).expect("plan 1");
    let mut draining = three.clone();
    draining[2] = MemberInput::draining(pod(2));
    let p2 = plan(Some(&p1), &BTreeSet::new(), &draining, &spec).expect("plan 2");
    assert!(p2.members.iter().all(|m| m.name != pod(2)));
    let theirs = (0..128).filter(|&s| p1.owner(s) == Some("app-2")).count();
    assert_eq!(p2.moves.len(), theirs);
    assert!(p2.moves.iter().all(|m| m.from.as_deref() == Some("app-2")));
}

#[test]
fn bad_input_is_refused_with_a_reason() {
    use aether_core::Error;
    let spec = PlanSpec {
        shards: 16,
        capacity: 2,
        strategy: Placement::AnchorHash,
    };
    let three: Vec<_> = (0..3).map(|i| MemberInput::active(pod(i))).collect();
    let err = plan(None, &BTreeSet::new(), &three, &spec).expect_err("over capacity");
    assert!(matches!(
        err,
        Error::TooManyMembers {
            members: 3,
            capacity: 2
        }
    ));
    assert!(err.to_string().contains("capacity"));
    let twice = vec![MemberInput::active("a"), MemberInput::active("a")];
    assert!(matches!(
        plan(None, &BTreeSet::new(), &twice, &spec),
        Err(Error::InvalidMember { .. })
    ));
    let p = plan(None, &BTreeSet::new(), &three[..2], &spec).expect("fits");
    let changed = PlanSpec { shards: 32, ..spec };
    assert!(matches!(
        plan(Some(&p), &BTreeSet::new(), &three[..2], &changed),
        Err(Error::Immutable {
            field: "shards",
            ..
        })
    ));
    let zero = PlanSpec { shards: 0, ..spec };
    assert!(matches!(
        plan(None, &BTreeSet::new(), &three[..1], &zero),
        Err(Error::InvalidShards { .. })
    ));
}
