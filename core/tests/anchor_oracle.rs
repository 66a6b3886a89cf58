//! The `anchorhash` crate as an oracle for minimal disruption: the same join/leave history applied to
//! the crate and to core's AnchorHash must disturb the same *kind* and about the same *amount* of keys.
//! (Their hashes differ by design, so individual placements are not compared.)

use aether_core::anchor::Anchor;
use proptest::prelude::*;
use std::collections::BTreeSet;
use std::hash::BuildHasherDefault;

type Oracle = anchorhash::AnchorHash<u32, u32, BuildHasherDefault<std::hash::DefaultHasher>>;

const KEYS: u32 = 4096;

#[derive(Debug, Clone)]
enum Step {
    Join,
    Leave(prop::sample::Index),
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        prop_oneof![
            Just(Step::Join),
            any::<prop::sample::Index>().prop_map(Step::Leave)
        ],
        1..40,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn same_history_same_disruption(capacity in 2u16..64, history in steps()) {
        let mut ours = Anchor::new(u32::from(capacity)).expect("valid");
        let mut oracle: Oracle = anchorhash::Builder::with_hasher(BuildHasherDefault::default()).build(capacity);
        // Resources of the oracle are our bucket ids, so both sides name members alike.
        let mut members: Vec<u32> = Vec::new();
        let ours_map = |t: &Anchor| (0..KEYS).map(|k| t.bucket_of(k)).collect::<Vec<_>>();
        let oracle_map = |o: &Oracle| (0..KEYS).map(|k| o.get_resource(k).copied()).collect::<Vec<_>>();
        for step in history {
            let count_before = members.len();
            let (before_ours, before_oracle) = (ours_map(&ours), oracle_map(&oracle));
            let changed = match step {
                Step::Join => {
                    let Some(b) = ours.add() else { continue };
                    oracle.add_resource(b).expect("oracle has room too");
                    members.push(b);
                    b
                }
                Step::Leave(i) => {
                    if members.len() < 2 { continue; }
                    let b = members.swap_remove(i.index(members.len()));
                    prop_assert!(ours.remove(b));
                    oracle.remove_resource(&b).expect("oracle knows it");
                    b
                }
            };
            let (after_ours, after_oracle) = (ours_map(&ours), oracle_map(&oracle));
            let moved = |a: &[Option<u32>], b: &[Option<u32>]| {
                a.iter().zip(b).filter(|(x, y)| x != y).map(|(x, y)| (*x, *y)).collect::<Vec<_>>()
            };
            let (mo, mr) = (moved(&before_ours, &after_ours), moved(&before_oracle, &after_oracle));
            // Both: every moved key moved to or from the changed member only.
            for (x, y) in mo.iter().chain(mr.iter()) {
                prop_assert!(*x == Some(changed) || *y == Some(changed) || x.is_none(), "{x:?} -> {y:?}");
            }
            // Ours moves about the ideal share (the member's share of the keys); the oracle's FNV
            // second level is too uneven at small capacities to hold to the same tolerance.
            let larger = count_before.max(members.len());
            if count_before >= 1 {
                let ideal = f64::from(KEYS) / larger as f64;
                let tolerance = 6.0 * ideal.sqrt() + 2.0;
                prop_assert!((mo.len() as f64 - ideal).abs() <= tolerance, "we moved {} (ideal {ideal}, oracle {})", mo.len(), mr.len());
            }
            let live: BTreeSet<u32> = members.iter().copied().collect();
            prop_assert!(after_ours.iter().all(|b| b.is_some_and(|b| live.contains(&b))));
        }
    }
}
