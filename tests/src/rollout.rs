//! A `kubectl rollout restart` of the example StatefulSet under load, recorded call by call: the
//! end-to-end tests on the test kubelet and on the real node run the same one.

use crate::measure::{Call, Outage, outage};
use crate::stack::wait_settled;
use aether_core::crd::ShardPlan;
use aether_core::protocol::{ActorRef, Op, Outcome, Reply, Request};
use aether_node::client::{Attempt, Client};
use kube::Api;
use rand::{RngExt, SeedableRng};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(120);

/// Calls of the rollout test's load: each worker adds 1 to a random one of `ROLL_ACTORS` counters.
pub const ROLL_ACTORS: usize = 1000;
const ROLL_IN_FLIGHT: usize = 16;

/// A call slower than this (the per-actor goal) keeps its attempts, to say where the time went.
const SLOW: Duration = Duration::from_millis(20);

/// A slow call: how long it took and each attempt it made.
pub type Slow = (Duration, Vec<Attempt>);

/// What one load worker saw: each call, the acknowledged sum per counter, the slow calls.
type Recorded = (Vec<Call>, BTreeMap<String, i64>, Vec<Slow>);

/// Adds until `stop`, recording each call and the acknowledged sum per counter.
fn recorded_load(
    client: &Client,
    stop: &Arc<AtomicBool>,
    seed: u64,
) -> Vec<tokio::task::JoinHandle<Recorded>> {
    (0..ROLL_IN_FLIGHT as u64)
        .map(|w| {
            let (client, stop) = (client.clone(), stop.clone());
            tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed * 1000 + w);
                let (mut calls, mut acked, mut slow) = (Vec::new(), BTreeMap::new(), Vec::new());
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let actor = rng.random_range(0..ROLL_ACTORS);
                    let name = format!("roll-{actor}");
                    let req = Request::new(
                        ActorRef::new("counter", &name),
                        Op::Command {
                            command: serde_json::json!({ "add": 1 }),
                        },
                        Some(format!("roll-{seed}-{w}-{i}")),
                    );
                    let start = Instant::now();
                    let mut attempts = Vec::new();
                    let reply = client.send_observed(&req, |a| attempts.push(a)).await;
                    let ok = matches!(
                        reply,
                        Ok(Reply {
                            outcome: Outcome::Ok(_),
                            ..
                        })
                    );
                    i += 1;
                    if ok {
                        *acked.entry(name).or_default() += 1;
                    }
                    if start.elapsed() > SLOW {
                        slow.push((start.elapsed(), attempts));
                    }
                    calls.push(Call {
                        actor,
                        start,
                        end: Instant::now(),
                        ok,
                    });
                }
                (calls, acked, slow)
            })
        })
        .collect()
}

/// What one rollout under load showed.
#[derive(Debug)]
pub struct Rollout {
    pub outage: Outage,
    /// From `kubectl rollout restart` to the plan settled on every new pod.
    pub took: Duration,
    pub acked: BTreeMap<String, i64>,
    /// The calls slower than 20 ms, slowest first, with their attempts.
    pub slow: Vec<Slow>,
}

/// `kubectl rollout restart statefulset actors` under load; returns when every pod is new and the
/// plan settled on all three again.
pub async fn rollout_under_load(
    kubectl: impl Fn(&[&str]) -> (bool, String),
    plans: &Api<ShardPlan>,
    app: &Client,
    seed: u64,
) -> Rollout {
    let epoch = plans
        .get("actors")
        .await
        .expect("get")
        .status
        .unwrap_or_default()
        .epoch;
    let stop = Arc::new(AtomicBool::new(false));
    let workers = recorded_load(app, &stop, seed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start = Instant::now();
    let (ok, out) = kubectl(&["rollout", "restart", "statefulset", "actors"]);
    assert!(ok, "{out}");
    let (ok, out) = tokio::task::block_in_place(|| {
        kubectl(&[
            "rollout",
            "status",
            "statefulset",
            "actors",
            "--timeout=300s",
        ])
    });
    assert!(ok, "the rollout did not finish: {out}");
    wait_settled(plans, "actors", 3, epoch, T)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let took = start.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    collect(workers, took).await
}

/// The same load for `took` with nothing changing: the baseline of [`rollout_under_load`]'s
/// figures (how long calls take on this machine anyway).
pub async fn steady_load(app: &Client, seed: u64, took: Duration) -> Rollout {
    let stop = Arc::new(AtomicBool::new(false));
    let workers = recorded_load(app, &stop, seed);
    tokio::time::sleep(took).await;
    stop.store(true, Ordering::Relaxed);
    collect(workers, took).await
}

async fn collect(workers: Vec<tokio::task::JoinHandle<Recorded>>, took: Duration) -> Rollout {
    let (mut calls, mut acked, mut slow) = (Vec::new(), BTreeMap::new(), Vec::new());
    for w in workers {
        let (c, a, s) = w.await.expect("load worker");
        calls.extend(c);
        slow.extend(s);
        for (k, v) in a {
            *acked.entry(k).or_default() += v;
        }
    }
    slow.sort_by_key(|s| std::cmp::Reverse(s.0));
    Rollout {
        outage: outage(calls, Instant::now()),
        took,
        acked,
        slow,
    }
}

/// The slowest calls of a rollout, one line per attempt, for the test's output.
#[must_use]
pub fn slow_calls(slow: &[Slow], n: usize) -> String {
    // Calls by the answers they got (digits left out: shard numbers and epochs differ).
    let mut shapes: BTreeMap<String, usize> = BTreeMap::new();
    for (_, attempts) in slow {
        let shape: Vec<String> = attempts
            .iter()
            .map(|a| a.answer.chars().filter(|c| !c.is_ascii_digit()).collect())
            .collect();
        *shapes.entry(shape.join(" -> ")).or_default() += 1;
    }
    let mut out = format!("{} calls over {SLOW:?}, by their answers:\n", slow.len());
    for (shape, n) in &shapes {
        out += &format!("  {n:>6}  {shape}\n");
    }
    out += "the slowest:\n";
    for (took, attempts) in slow.iter().take(n) {
        out += &format!("  {:.1} ms\n", took.as_secs_f64() * 1e3);
        for a in attempts {
            out += &format!(
                "    +{:.1} ms {} took {:.1} ms: {}\n",
                a.sent.as_secs_f64() * 1e3,
                a.subject,
                a.took.as_secs_f64() * 1e3,
                a.answer
            );
        }
    }
    out
}
