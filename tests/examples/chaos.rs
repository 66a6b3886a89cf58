//! `make chaos`: the long chaos runs (one nats-server, then a 3-server cluster), each with at least
//! 100 faults and 100,000 operations, then a run whose plans the operator process makes (two
//! replicas on a kube-apiserver, its leader SIGKILLed, SIGSTOPped and failed over among 40 faults),
//! written to RELIABILITY.md. Seeds: `AETHER_CHAOS_SEEDS=1,2` (default: the pair below) and
//! `AETHER_CHAOS_OPERATOR_SEED`; a failing seed replays the same schedule. Exits 1 when a run found
//! anything.

use aether_tests::chaos::{Config, markdown, run};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let seeds: Vec<u64> = std::env::var("AETHER_CHAOS_SEEDS")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_202, 1_203]);
    let out = std::env::var("AETHER_CHAOS_OUT").unwrap_or_else(|_| "RELIABILITY.md".to_owned());
    let mut reports = Vec::new();
    // Then the operator process planning, its leader among the faults (AETHER_CHAOS_OPERATOR_SEED).
    let operator_seed: u64 = std::env::var("AETHER_CHAOS_OPERATOR_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1_204);
    let mut runs: Vec<Config> = seeds
        .iter()
        .enumerate()
        .map(|(i, seed)| Config::long(*seed, i % 2 == 1))
        .collect();
    runs.push(Config::with_operator(operator_seed));
    for cfg in runs {
        let seed = cfg.seed;
        eprintln!(
            "chaos: seed {seed}, {}",
            match (cfg.cluster, cfg.operator) {
                (true, _) => "3-server cluster",
                (false, false) => "one server",
                (false, true) => "one server, the operator process planning",
            }
        );
        let r = run(cfg).await;
        for line in &r.schedule {
            eprintln!("  {line}");
        }
        eprintln!(
            "chaos: seed {seed}: {} ops, linearizable {}, not converged {}",
            r.verdict.ops,
            r.verdict.linearizable(),
            r.not_converged.len()
        );
        if !r.passed() {
            eprintln!("{:#?}\n{:#?}", r.verdict, r.not_converged);
        }
        reports.push(r);
    }
    // The chaos section replaces the one between the markers; the rest of the file is kept.
    let section = format!(
        "<!-- chaos:begin -->\n{}<!-- chaos:end -->",
        markdown(&reports, "make chaos")
    );
    let text = match std::fs::read_to_string(&out) {
        Ok(old) => match (
            old.find("<!-- chaos:begin -->"),
            old.find("<!-- chaos:end -->"),
        ) {
            (Some(a), Some(b)) if a < b => format!(
                "{}{section}{}",
                &old[..a],
                &old[b + "<!-- chaos:end -->".len()..]
            ),
            _ => format!("{old}\n{section}\n"),
        },
        Err(_) => format!("# Reliability\n\n{section}\n"),
    };
    if let Err(e) = std::fs::write(&out, text) {
        eprintln!("cannot write {out}: {e}");
        std::process::exit(2);
    }
    eprintln!("chaos: wrote {out}");
    if !reports.iter().all(|r| r.passed()) {
        std::process::exit(1);
    }
}
