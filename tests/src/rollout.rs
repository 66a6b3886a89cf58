//! A `kubectl rollout restart` of the example StatefulSet under load, recorded call by call: the
//! end-to-end tests on the test kubelet and on the real node run the same one.

use crate::measure::{Call, Outage, outage};
use crate::stack::wait_settled;
use aether_core::crd::ShardPlan;
use aether_node::client::Client;
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

/// What one load worker saw: each call, and the acknowledged sum per counter.
type Recorded = (Vec<Call>, BTreeMap<String, i64>);

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
                let (mut calls, mut acked) = (Vec::new(), BTreeMap::new());
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let actor = rng.random_range(0..ROLL_ACTORS);
                    let name = format!("roll-{actor}");
                    let start = Instant::now();
                    let ok = matches!(
                        client.add(&name, 1, format!("roll-{seed}-{w}-{i}")).await,
                        Ok(aether_core::protocol::Reply {
                            outcome: aether_core::protocol::Outcome::Ok(_),
                            ..
                        })
                    );
                    i += 1;
                    if ok {
                        *acked.entry(name).or_default() += 1;
                    }
                    calls.push(Call {
                        actor,
                        start,
                        end: Instant::now(),
                        ok,
                    });
                }
                (calls, acked)
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
    let (mut calls, mut acked) = (Vec::new(), BTreeMap::new());
    for w in workers {
        let (c, a) = w.await.expect("load worker");
        calls.extend(c);
        for (k, v) in a {
            *acked.entry(k).or_default() += v;
        }
    }
    Rollout {
        outage: outage(calls, Instant::now()),
        took,
        acked,
    }
}
