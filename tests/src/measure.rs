//! Measuring request paths for the benchmarks: throughput and latency of `n` operations run a fixed
//! number at a time, and the median of several runs.

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
