//! Measuring request paths for the benchmarks: throughput and latency of `n` operations run a fixed
//! number at a time, and the median of several runs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Throughput and latency of one run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Figure {
    /// Operations per second.
    pub ops_per_s: f64,
    /// Median latency, microseconds.
    pub p50_us: u64,
    /// 99th percentile latency, microseconds.
    pub p99_us: u64,
}

/// The figure of latencies `lat` (microseconds) measured over `elapsed`.
#[must_use]
pub fn figure(mut lat: Vec<u64>, elapsed: Duration) -> Figure {
    lat.sort_unstable();
    let pick = |q: f64| {
        lat.get(((lat.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(0)
    };
    Figure {
        ops_per_s: lat.len() as f64 / elapsed.as_secs_f64(),
        p50_us: pick(0.5),
        p99_us: pick(0.99),
    }
}

/// The run of median throughput.
#[must_use]
pub fn middle(runs: &[Figure]) -> Figure {
    let mut sorted = runs.to_vec();
    sorted.sort_by(|a, b| a.ops_per_s.total_cmp(&b.ops_per_s));
    sorted[sorted.len() / 2].clone()
}

/// Throughput of each run, in order.
#[must_use]
pub fn ops(runs: &[Figure]) -> Vec<f64> {
    runs.iter().map(|f| f.ops_per_s.round()).collect()
}

/// The middle of `v` (sorted in place).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Runs `n` calls of `op`, `in_flight` at a time; panics on a failed call.
pub async fn drive<F, Fut>(n: usize, in_flight: usize, op: F) -> Figure
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..in_flight {
        let (op, next) = (op.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let t = Instant::now();
                assert!(op(i).await, "operation {i} failed");
                lat.push(t.elapsed().as_micros() as u64);
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("task"));
    }
    figure(lat, start.elapsed())
}

/// One call's outcome under a change (scale-out, rolling update), for [`outage`].
#[derive(Clone, Copy, Debug)]
pub struct Call {
    /// Which actor.
    pub actor: usize,
    /// When the call was sent.
    pub start: Instant,
    /// When its answer came.
    pub end: Instant,
    /// Whether it was acknowledged.
    pub ok: bool,
}

/// Per-actor unavailability over a set of calls.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Outage {
    /// Calls made.
    pub calls: usize,
    /// Calls that failed.
    pub failed: usize,
    /// Median over actors of each actor's longest unavailability, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile of the same.
    pub p99_ms: f64,
    /// The longest any actor was unavailable.
    pub max_ms: f64,
}

/// Per actor, the longest it could not be used: a call's latency, or for a failed call, the time
/// from its start to the end of the actor's next successful call (or to `stopped`, without one).
#[must_use]
pub fn outage(mut calls: Vec<Call>, stopped: Instant) -> Outage {
    calls.sort_by_key(|c| (c.actor, c.start));
    let failed = calls.iter().filter(|c| !c.ok).count();
    let mut worst: BTreeMap<usize, f64> = BTreeMap::new();
    for (i, c) in calls.iter().enumerate() {
        let until = if c.ok {
            c.end
        } else {
            calls[i + 1..]
                .iter()
                .take_while(|n| n.actor == c.actor)
                .find(|n| n.ok)
                .map_or(stopped, |n| n.end)
        };
        let ms = (until - c.start).as_secs_f64() * 1e3;
        let w = worst.entry(c.actor).or_default();
        *w = w.max(ms);
    }
    let mut v: Vec<f64> = worst.into_values().collect();
    v.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        v.get(((v.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(0.0)
    };
    Outage {
        calls: calls.len(),
        failed,
        p50_ms: pick(0.5),
        p99_ms: pick(0.99),
        max_ms: v.last().copied().unwrap_or(0.0),
    }
}

/// `doc` (BENCHMARKS.md) with `section` between the markers `<!-- {name}:begin -->` and
/// `<!-- {name}:end -->` (appended with them when they are missing); the rest is left as it is.
#[must_use]
pub fn with_section(doc: &str, name: &str, section: &str) -> String {
    let (b, e) = (
        format!("<!-- {name}:begin -->"),
        format!("<!-- {name}:end -->"),
    );
    let block = format!("{b}\n{section}{e}\n");
    match (doc.find(&b), doc.find(&e)) {
        (Some(i), Some(j)) if j > i => format!(
            "{}{block}{}",
            &doc[..i],
            &doc[j + e.len()..].trim_start_matches('\n')
        ),
        _ => format!("{}\n{block}", doc.trim_end()),
    }
}

/// A size from the environment variable `var` (a bench made smaller for a quick look), else
/// `default` (the recorded run's).
#[must_use]
pub fn env_size(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs a benchmark's `run` on a multi-threaded runtime; writes its report to
/// `target/{name}-bench.json` and standard output, and, with `section`, the report's section of
/// BENCHMARKS.md (between the markers `name`, see [`with_section`]). With
/// `AETHER_BENCH_FROM_REPORT` set it runs nothing: the section is written again from the last run's
/// report (after its text changed).
pub fn run_bench<F: std::future::Future<Output = serde_json::Value>>(
    name: &str,
    run: F,
    section: Option<fn(&serde_json::Value) -> String>,
) {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let saved = format!("{root}/target/{name}-bench.json");
    let report = if std::env::var_os("AETHER_BENCH_FROM_REPORT").is_some() {
        let text = std::fs::read(&saved).unwrap_or_else(|e| panic!("{saved}: {e}"));
        serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{saved}: {e}"))
    } else {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let report = rt.block_on(run);
        std::fs::write(&saved, serde_json::to_vec_pretty(&report).expect("json"))
            .expect("write report");
        report
    };
    println!("{}", serde_json::to_string_pretty(&report).expect("json"));
    if let Some(section) = section {
        let path = format!("{root}/BENCHMARKS.md");
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        std::fs::write(&path, with_section(&old, name, &section(&report)))
            .expect("write BENCHMARKS.md");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_call_counts_until_the_actors_next_success() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let call = |actor, start, end, ok| Call {
            actor,
            start: at(start),
            end: at(end),
            ok,
        };
        let calls = vec![
            // Actor 0: a 5 ms call, then a failure at 10 ms, its next success ends at 40 ms.
            call(0, 0, 5, true),
            call(0, 10, 12, false),
            call(0, 20, 40, true),
            // Actor 1: only a failure at 50 ms; nothing after it until the end (100 ms).
            call(1, 50, 51, false),
            // Actor 2: 2 ms.
            call(2, 0, 2, true),
        ];
        let o = outage(calls, at(100));
        assert_eq!((o.calls, o.failed), (5, 2));
        assert!((o.max_ms - 50.0).abs() < 1e-6, "{o:?}");
        assert!((o.p50_ms - 30.0).abs() < 1e-6, "{o:?}");
    }
}
