//! Prints the placement balance section of BENCHMARKS.md (`make bench` runs it):
//! `cargo run --release -p aether-core --example balance_report`.
//!
//! For each configuration: AnchorHash max/mean load beside the goal bound
//! `1 + 3 sqrt(members/shards) + 0.01`, for a StatefulSet scaled up from zero ("fresh") and, over 200 random join/leave histories
//! ("churn"), the worst ratio and the share of histories over the bound; Balanced's max - min.

use aether_core::anchor::Anchor;
use aether_core::crd::Strategy;
use aether_core::plan::{MemberInput, PlanSpec, anchor_map, plan};
use std::collections::BTreeSet;

fn max_over_mean(t: &Anchor, shards: u32, n: u32) -> f64 {
    let mut loads = vec![0u32; t.capacity() as usize];
    for &b in anchor_map(t, shards).buckets() {
        loads[usize::from(b)] += 1;
    }
    f64::from(loads.into_iter().max().unwrap_or(0)) / (f64::from(shards) / f64::from(n))
}

fn main() {
    let mut x = 0x5eed_u64;
    let mut next = move || {
        x = aether_core::hash::mix64(x.wrapping_add(0x9e37_79b9_7f4a_7c15));
        x
    };
    println!(
        "| shards | members | capacity | bound | AnchorHash fresh | churn worst | churn over bound | Balanced max-min |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let configs = [
        (65_536u32, 10u32, 20u32),
        (65_536, 100, 200),
        (65_536, 1000, 2000),
        (65_536, 1000, 10_000),
        (1024, 3, 256),
        (1024, 10, 256),
        (1024, 30, 256),
        (1024, 100, 256),
        (4096, 300, 600),
    ];
    for (shards, n, cap) in configs {
        let bound = 1.0 + 3.0 * (f64::from(n) / f64::from(shards)).sqrt() + 0.01;
        let mut fresh = Anchor::new(cap).unwrap_or_else(|e| panic!("{e}"));
        for _ in 0..n {
            fresh.add();
        }
        let fresh_ratio = max_over_mean(&fresh, shards, n);
        let (mut worst, mut over) = (0.0f64, 0);
        let histories = 200;
        for _ in 0..histories {
            let mut t = Anchor::new(cap).unwrap_or_else(|e| panic!("{e}"));
            let fill = (n + (next() % u64::from(n)) as u32).min(cap);
            for _ in 0..fill {
                t.add();
            }
            let mut working: Vec<u32> = (0..fill).collect();
            while working.len() > n as usize {
                let i = (next() % working.len() as u64) as usize;
                t.remove(working.swap_remove(i));
            }
            let r = max_over_mean(&t, shards, n);
            worst = worst.max(r);
            over += u32::from(r > bound);
        }
        let spec = PlanSpec {
            shards,
            capacity: cap,
            strategy: Strategy::Balanced,
        };
        let members: Vec<_> = (0..n)
            .map(|i| MemberInput::active(format!("app-{i}")))
            .collect();
        let balanced =
            plan(None, &BTreeSet::new(), &members, &spec).unwrap_or_else(|e| panic!("{e}"));
        let loads: Vec<usize> = balanced.loads().into_values().collect();
        let spread = loads.iter().max().unwrap_or(&0) - loads.iter().min().unwrap_or(&0);
        println!(
            "| {shards} | {n} | {cap} | {bound:.3} | {fresh_ratio:.3}{} | {worst:.3} | {:.1}% | {spread} |",
            if fresh_ratio <= bound { "" } else { " (over)" },
            100.0 * f64::from(over) / f64::from(histories),
        );
    }
}
