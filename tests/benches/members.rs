//! Members at 65,536 shards (`make bench-scale`, issue 33): 3, 10 and 30 node processes and a
//! nats-server on loopback. A plan for them is published; the time from its publication until
//! each node holds it (its `held.{pod}` write, as a watcher of the plan bucket sees it). Then one
//! more node joins: the time until every node holds the join's plan, and until every move of it
//! is reported done (the shards are empty: this is the control path's cost, not data).
//!
//! Writes `target/members-bench.json` and the section "Members at 65,536 shards" of BENCHMARKS.md.

use aether_core::protocol::{Held, Names, decode};
use aether_core::types::MovePhase;
use aether_tests::cluster::{NodeProcess, next_plan, progress_log, publish};
use aether_tests::measure::run_bench;
use aether_tests::{NatsServer, wait_for};
use futures::StreamExt;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SHARDS: u32 = 65_536;
const SIZES: [usize; 3] = [3, 10, 30];
/// Most members a plan may have (the ShardPlan's `capacity`).
const CAPACITY: u32 = 64;
const T: Duration = Duration::from_secs(600);
/// Lean: few actors, no app API (the default in tests).
const FLAGS: &[&str] = &["--max-actors", "1000"];

fn main() {
    run_bench("members", run(), Some(section));
}

/// When each pod first said it holds each epoch.
type HeldLog = Arc<Mutex<HashMap<(String, u64), Instant>>>;

async fn held_log(nc: &async_nats::Client, prefix: &str) -> HeldLog {
    let log: HeldLog = Arc::default();
    let subject = format!("$KV.{}.held.*", Names::new(prefix).plan_bucket());
    let mut sub = nc.subscribe(subject).await.expect("subscribe");
    let sink = log.clone();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Ok(h) = decode::<Held>(&m.payload)
                && let Ok(mut log) = sink.lock()
            {
                log.entry((h.node, h.epoch)).or_insert_with(Instant::now);
            }
        }
    });
    log
}

/// Waits until every pod of `pods` holds `epoch`; the time each took from `from`, sorted.
async fn held_by_all(log: &HeldLog, pods: &[String], epoch: u64, from: Instant) -> Vec<Duration> {
    wait_for("every node holds the plan", T, || async {
        let log = log.lock().expect("lock");
        pods.iter().all(|p| log.contains_key(&(p.clone(), epoch)))
    })
    .await;
    let log = log.lock().expect("lock");
    let mut d: Vec<Duration> = pods
        .iter()
        .filter_map(|p| log.get(&(p.clone(), epoch)))
        .map(|t| t.saturating_duration_since(from))
        .collect();
    d.sort_unstable();
    d
}

fn ms(d: &[Duration], q: f64) -> f64 {
    d[((d.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1000.0
}

async fn members(nats: &NatsServer, n: usize) -> Value {
    let prefix = format!("m{n}");
    let nc = nats.connect().await;
    let held = held_log(&nc, &prefix).await;
    let progress = progress_log(&nc, &prefix).await;
    let names: Vec<&'static str> = (0..=n)
        .map(|i| &*Box::leak(format!("app-{i}").into_boxed_str()))
        .collect();
    let mut nodes: Vec<NodeProcess> = names[..n]
        .iter()
        .map(|m| NodeProcess::start_with(&nats.url(), &prefix, m, FLAGS))
        .collect();
    for node in &nodes {
        node.ready(T).await;
    }
    let pods: Vec<String> = names[..n].iter().map(|s| (*s).to_owned()).collect();
    let p1 = next_plan(None, &names[..n], SHARDS, CAPACITY);
    let published = Instant::now();
    publish(&nc, &prefix, &p1, 120).await;
    let first = held_by_all(&held, &pods, p1.epoch, published).await;

    nodes.push(NodeProcess::start_with(
        &nats.url(),
        &prefix,
        names[n],
        FLAGS,
    ));
    nodes[n].ready(T).await;
    let all: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
    let p2 = next_plan(Some(&p1), &names, SHARDS, CAPACITY);
    let published = Instant::now();
    publish(&nc, &prefix, &p2, 120).await;
    let join = held_by_all(&held, &all, p2.epoch, published).await;
    let moves = p2.moves.len();
    wait_for("every move of the join done", T, || async {
        let log = progress.lock().expect("lock");
        let done = log
            .iter()
            .filter(|p| p.epoch == p2.epoch && p.phase == MovePhase::Done)
            .map(|p| p.shard)
            .collect::<std::collections::HashSet<_>>();
        done.len() >= moves
    })
    .await;
    let moved = published.elapsed();
    drop(nodes);
    json!({
        "nodes": n,
        "plan_bytes": serde_json::to_vec(&aether_core::protocol::PlanMessage::new(&p2, 4, 120)).map_or(0, |v| v.len()),
        "held_p50_ms": ms(&first, 0.5),
        "held_p99_ms": ms(&first, 0.99),
        "join_held_p50_ms": ms(&join, 0.5),
        "join_held_p99_ms": ms(&join, 0.99),
        "join_moves": moves,
        "join_moves_done_ms": moved.as_secs_f64() * 1000.0,
    })
}

async fn run() -> Value {
    let nats = NatsServer::start();
    let mut sizes = Vec::new();
    for n in SIZES {
        let r = members(&nats, n).await;
        eprintln!("{r}");
        sizes.push(r);
    }
    json!({ "sizes": sizes })
}

fn section(r: &Value) -> String {
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    let mut rows = String::new();
    for s in r["sizes"].as_array().into_iter().flatten() {
        rows.push_str(&format!(
            "| {n} | {p50:.0} ms / {p99:.0} ms | {j50:.0} ms / {j99:.0} ms | {moves} moves done in {done:.1} s ({rate:.0}/s) | {kb:.0} KB |\n",
            n = s["nodes"],
            p50 = f(&s["held_p50_ms"]),
            p99 = f(&s["held_p99_ms"]),
            j50 = f(&s["join_held_p50_ms"]),
            j99 = f(&s["join_held_p99_ms"]),
            moves = s["join_moves"],
            done = f(&s["join_moves_done_ms"]) / 1000.0,
            rate = f(&s["join_moves"]) / (f(&s["join_moves_done_ms"]) / 1000.0).max(0.001),
            kb = f(&s["plan_bytes"]) / 1000.0,
        ));
    }
    format!(
        "## Members at 65,536 shards\n\n\
         Command: `make bench-scale` (`cargo bench -p aether-tests --bench members`): node processes \
         (`--max-actors 1000`, no app API) and one nats-server on loopback, all on this machine's 2 \
         cores; {SHARDS} shards. \"Holds\" is a node's `held.{{pod}}` write for the plan's epoch as a \
         watcher of the plan bucket sees it (the node took the plan and the workers it stopped \
         finished), timed from the plan's publication. Then one node joins: its plan moves about \
         1/(n+1) of the shards to it, 4 at a time per source; the shards are empty, so this is the \
         control path's cost (handshake, commit, reports), not data.\n\n\
         | nodes | plan held by each node, p50 / p99 | a join's plan held, p50 / p99 | the join's moves | the join's plan |\n\
         |---|---|---|---|---|\n{rows}\n\
         No baseline: the peers publish no such figure. Every process shares the 2 cores, so the \
         larger sizes measure the machine as much as the protocol.\n"
    )
}
