//! What a chaos run reports, and the runs' figures as RELIABILITY.md shows them.

use super::*;

/// What a run saw.
#[derive(Clone, Debug)]
pub struct Report {
    /// The config.
    pub config: Config,
    /// Faults injected, by kind.
    pub faults: BTreeMap<Fault, usize>,
    /// The schedule, one line per fault (for a replay's comparison).
    pub schedule: Vec<String>,
    /// Time from each fault's end until every probed actor answered, milliseconds.
    pub converge_ms: Vec<u64>,
    /// Faults after which the system did not converge within a minute.
    pub not_converged: Vec<String>,
    /// The checker's verdict.
    pub verdict: Verdict,
    /// The timers' verdict.
    pub timers: super::TimerVerdict,
    /// The sends' verdict.
    pub sends: super::SendVerdict,
    /// Plans published.
    pub plans: u64,
    /// The run's length.
    pub elapsed: Duration,
}

impl Report {
    /// Nothing lost, duplicated or stale, and every fault healed.
    #[must_use]
    pub fn passed(&self) -> bool {
        self.verdict.linearizable()
            && self.not_converged.is_empty()
            && self.timers.violations.is_empty()
            && self.sends.violations.is_empty()
    }

    /// Percentile of the convergence times.
    #[must_use]
    pub fn converge_percentile(&self, p: f64) -> u64 {
        let mut v = self.converge_ms.clone();
        v.sort_unstable();
        if v.is_empty() {
            return 0;
        }
        let i = ((v.len() - 1) as f64 * p).round() as usize;
        v[i.min(v.len() - 1)]
    }
}

/// The figures of runs as a Markdown section (RELIABILITY.md).
#[must_use]
pub fn markdown(reports: &[Report], command: &str) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "## Chaos runs\n");
    let _ = writeln!(
        s,
        "Written by `{command}`: the chaos runner (`tests/src/chaos.rs`) against real processes on loopback; \
         the history checker (`tests/src/history.rs`) checks each `list` actor's history for \
         linearizability (every read sees every append acknowledged before it began and nothing never \
         invoked, no append applied twice, no acknowledged append lost, versions without gaps); \
         `counter` actors with a periodic timer through the whole run have their logs checked \
         (`tests/src/timers.rs`: every firing once, never early, on its grid, none after its cancel); \
         the example bank's accounts (`examples/bank/app.py` as every node's app) move money by \
         actor-to-actor sends through the run and each must hold exactly what the transfers applied \
         say (acknowledged, or unanswered and found in the log; a send applied twice or lost is a \
         balance off). The event stream's \
         duplicate window is {} s, and the fault \"{}\" outlasts it. In a run with the operator \
         process planning (`tests/src/chaos/kube.rs`), a kube-apiserver holds a Pod object per node \
         process and two operator replicas elect a leader by their Lease; a membership change is a \
         pod's Ready condition turned off or on, the operator plans and retries on its own, and its \
         leader is SIGKILLed (started again 0.3-3 s later), SIGSTOPped (0.3-3 s) or failed over \
         (SIGKILLed until the standby holds the Lease) among the other faults.\n",
        super::WINDOW.as_secs(),
        super::Fault::StopAll.name()
    );
    for r in reports {
        let v = &r.verdict;
        let _ = writeln!(
            s,
            "### Seed {} on {}\n",
            r.config.seed,
            match (r.config.cluster, r.config.operator) {
                (true, _) => "a 3-server NATS cluster, 3 replicas",
                (false, false) => "one nats-server",
                (false, true) =>
                    "one nats-server, the operator process planning (two replicas, a kube-apiserver)",
            }
        );
        let _ = writeln!(s, "| figure | value |\n|---|---|");
        let total: usize = r.faults.values().sum();
        let _ = writeln!(s, "| faults injected | {total} |");
        for (f, c) in &r.faults {
            let _ = writeln!(s, "| - {} | {c} |", f.name());
        }
        let _ = writeln!(s, "| plans published | {} |", r.plans);
        let _ = writeln!(s, "| operations | {} |", v.ops);
        let _ = writeln!(s, "| acknowledged | {} |", v.acknowledged);
        for (code, c) in &v.errors {
            let _ = writeln!(s, "| errors `{code}` | {c} |");
        }
        let _ = writeln!(s, "| lost | {} |", v.lost);
        let _ = writeln!(s, "| duplicated | {} |", v.duplicated);
        let _ = writeln!(s, "| stale reads | {} |", v.stale_reads);
        let _ = writeln!(s, "| phantom reads | {} |", v.phantoms);
        let _ = writeln!(s, "| version gaps | {} |", v.version_gaps);
        let _ = writeln!(s, "| misordered appends | {} |", v.misordered);
        let _ = writeln!(
            s,
            "| timers: actors with a periodic timer, firings checked | {}, {} |",
            r.timers.actors, r.timers.firings
        );
        let _ = writeln!(
            s,
            "| timer firings applied twice, early, off their grid or after their cancel | {} |",
            r.timers.violations.len()
        );
        let _ = writeln!(
            s,
            "| sends: accounts, transfers applied (acknowledged, or found in the log) | {}, {} |",
            r.sends.accounts, r.sends.transfers
        );
        let _ = writeln!(
            s,
            "| transfers unanswered, accounts off their due (sends lost or applied twice) | {} |",
            r.sends.violations.len()
        );
        let _ = writeln!(
            s,
            "| time to converge after a fault, p50 / max | {} ms / {} ms |",
            r.converge_percentile(0.5),
            r.converge_percentile(1.0)
        );
        let _ = writeln!(
            s,
            "| not converged within 60 s | {} |",
            r.not_converged.len()
        );
        let _ = writeln!(s, "| run time | {:.0} s |\n", r.elapsed.as_secs_f64());
    }
    s
}
