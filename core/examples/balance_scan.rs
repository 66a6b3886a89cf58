//! Scans AnchorHash balance against the goal bound over many configurations and prints the worst ratios
//! and the share of configurations over the bound: `cargo run --release -p aether-core --example balance_scan`.

use aether_core::anchor::Anchor;
use aether_core::plan::anchor_map;

fn main() {
    let mut rng = 0x1234_5678_u64;
    let mut next = || {
        rng = aether_core::hash::mix64(rng.wrapping_add(0x9e37_79b9_7f4a_7c15));
        rng
    };
    println!("shards members capacity/members  worst(max/mean - bound)  over-bound share");
    for &shards in &[1024u32, 4096, 65536] {
        for &n in &[3u32, 10, 30, 100, 300, 1000] {
            if n * 4 > shards {
                continue;
            }
            for &ratio in &[1u32, 2, 4, 10] {
                let cap = (n * ratio).min(65535);
                let trials = 40;
                let mut over = 0;
                let mut worst = f64::MIN;
                for _ in 0..trials {
                    // random history: fill to cap, then remove random buckets down to n
                    let mut t = Anchor::new(cap).expect("cap");
                    let fresh = std::env::args().any(|a| a == "--fresh");
                    let fill = if fresh {
                        (n + next() as u32 % (n / 3 + 1)).min(cap)
                    } else {
                        cap
                    };
                    for _ in 0..fill {
                        t.add();
                    }
                    let mut working: Vec<u32> = (0..fill).collect();
                    while working.len() > n as usize {
                        let i = (next() % working.len() as u64) as usize;
                        let b = working.swap_remove(i);
                        t.remove(b);
                    }
                    let map = anchor_map(&t, shards);
                    let mut loads = vec![0u32; cap as usize];
                    for &b in map.buckets() {
                        loads[b as usize] += 1;
                    }
                    let max = *loads.iter().max().expect("loads") as f64;
                    let mean = shards as f64 / n as f64;
                    let bound = 1.0 + 3.0 * (n as f64 / shards as f64).sqrt() + 0.01;
                    let d = max / mean - bound;
                    worst = worst.max(d);
                    if d > 0.0 {
                        over += 1;
                    }
                }
                println!(
                    "{shards:6} {n:7} {ratio:3} {worst:+.4} {:.2}",
                    over as f64 / trials as f64
                );
            }
        }
    }
}
