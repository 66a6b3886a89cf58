//! A short, fixed-seed slice of the chaos suite (`make chaos` runs the long one): a random schedule of
//! node, NATS and plan faults under a workload, its history checked for linearizability per actor,
//! periodic timers through it checked from their logs, and bank transfers by actor-to-actor sends
//! checked against every account's balance.

use aether_tests::chaos::{Config, run};

/// The seeds `make test` runs; a failing seed replays the same schedule
/// (`AETHER_CHAOS_SEED=<seed> cargo test --release -p aether-tests --test it chaos::`).
fn seed(default: u64) -> u64 {
    std::env::var("AETHER_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

async fn check(cfg: Config) {
    let seed = cfg.seed;
    eprintln!("chaos seed {seed}");
    let report = run(cfg).await;
    for line in &report.schedule {
        eprintln!("  {line}");
    }
    let total: usize = report.faults.values().sum();
    eprintln!(
        "seed {seed}: {total} faults, {} ops, {} acknowledged, errors {:?}, converge p50 {} ms max {} ms, {} timer firings checked, {} transfers",
        report.verdict.ops,
        report.verdict.acknowledged,
        report.verdict.errors,
        report.converge_percentile(0.5),
        report.converge_percentile(1.0),
        report.timers.firings,
        report.sends.transfers
    );
    assert!(
        report.verdict.linearizable(),
        "seed {seed}: the history is not linearizable: {:#?}",
        report.verdict
    );
    assert!(
        report.not_converged.is_empty(),
        "seed {seed}: not converged after {:?}",
        report.not_converged
    );
    assert_eq!(
        total, report.config.faults,
        "seed {seed}: every fault injected"
    );
    assert!(
        report.verdict.ops as u64 >= report.config.min_ops,
        "seed {seed}: enough operations"
    );
    assert!(report.verdict.acknowledged > 0);
    assert!(
        report.timers.violations.is_empty(),
        "seed {seed}: timers broke a promise: {:#?}",
        report.timers.violations
    );
    assert!(
        report.sends.violations.is_empty(),
        "seed {seed}: sends broke a promise: {:#?}",
        report.sends.violations
    );
    assert!(
        report.sends.transfers > 0,
        "seed {seed}: transfers were acknowledged through the run: {:?}",
        report.sends
    );
    assert!(
        report.timers.firings >= report.timers.actors,
        "seed {seed}: the timers fired through the run: {:?}",
        report.timers
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_seed_schedule_of_faults_on_one_nats_server_keeps_every_list_linearizable() {
    check(Config::short(seed(20_261_202), false)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_seed_schedule_of_faults_on_a_nats_cluster_keeps_every_list_linearizable() {
    check(Config::short(seed(20_261_203), true)).await;
}
