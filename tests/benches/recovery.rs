//! Recovery benchmarks (`make bench`, issue 27), each beside its baseline in the same run, node
//! processes and a nats-server on loopback, bounded and stopping by themselves:
//! 1. cold loads after a restart: a node restarted with 100,000 counters (two records each) reads
//!    every one back, beside a raw JetStream direct get of each actor's last record;
//! 2. pending sends after a restart: 10,000 sends recorded while their receivers were down, then
//!    every node killed and restarted: the time until every send is applied, answered and
//!    released, beside the time the same 10,000 sends take with nothing down.
//!
//! Writes `target/recovery-bench.json` and the section "Recovery after a restart" of BENCHMARKS.md
//! (between its markers; the rest of the file is left as it is).

use aether_core::hash::shard_of;
use aether_core::protocol::{ActorRef, Names, Op, Outcome, Request};
use aether_node::client::Client;
use aether_tests::app::App;
use aether_tests::cluster::{next_plan, node_process, publish, wait_serving};
use aether_tests::measure::{Figure, drive, run_bench};
use aether_tests::{NatsServer, free_port, http_get, wait_for};
use futures::StreamExt;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SHARDS: u32 = 64;
const IN_FLIGHT: usize = 256;
const T: Duration = Duration::from_secs(300);

fn main() {
    let run = async {
        let loads = cold_loads().await;
        let sends = pending_sends().await;
        json!({ "cold_loads": loads, "pending_sends": sends })
    };
    run_bench("recovery", run, Some(section));
}

async fn ready(port: u16) -> bool {
    http_get(port, "/readyz")
        .await
        .is_some_and(|(s, _)| s == 200)
}

/// 1. A node restarted with `n` counters reads every one back cold, beside raw direct gets.
async fn cold_loads() -> serde_json::Value {
    let n = 100_000;
    let nats = NatsServer::start();
    let nc = nats.connect().await;
    let port = free_port();
    let mut p = node_process(&nats, "cold", "app-0", port, &["--max-actors", "200000"]);
    wait_for("the node Ready", T, || ready(port)).await;
    publish(&nc, "cold", &next_plan(None, &["app-0"], SHARDS, 4), 10).await;
    let client = Client::new(nc.clone(), "cold");
    for k in 0..2 {
        let c = client.clone();
        drive(n, IN_FLIGHT, move |i| {
            let c = c.clone();
            async move {
                c.add(&format!("c-{i}"), 1, format!("add-{i}-{k}"))
                    .await
                    .is_ok_and(|r| matches!(r.outcome, Outcome::Ok(_)))
            }
        })
        .await;
    }
    p.kill();
    let _p = node_process(&nats, "cold", "app-0", port, &["--max-actors", "200000"]);
    wait_for("the node Ready again", T, || ready(port)).await;
    wait_serving(&client, "warm-up", T).await;
    let c = client.clone();
    let cold: Figure = drive(n, IN_FLIGHT, move |i| {
        let c = c.clone();
        async move {
            c.read("counter", &format!("c-{i}")).await.is_ok_and(
                |r| matches!(&r.outcome, Outcome::Ok(ok) if ok.state["value"] == json!(2)),
            )
        }
    })
    .await;
    // The baseline: each actor's last record by a raw direct get, as many at once.
    let names = Names::new("cold");
    let stream = Arc::new(
        async_nats::jetstream::new(nc.clone())
            .get_stream(names.event_stream())
            .await
            .expect("stream"),
    );
    let subjects: Arc<Vec<String>> = Arc::new(
        (0..n)
            .map(|i| {
                let id = format!("c-{i}");
                names.actor_subject(shard_of(&id, SHARDS), &ActorRef::new("counter", id))
            })
            .collect(),
    );
    let raw: Figure = drive(n, IN_FLIGHT, move |i| {
        let (stream, subjects) = (stream.clone(), subjects.clone());
        async move {
            stream
                .direct_get_last_for_subject(subjects[i].clone())
                .await
                .is_ok()
        }
    })
    .await;
    json!({
        "actors": n,
        "in_flight": IN_FLIGHT,
        "cold_reads": cold,
        "raw_direct_get_last": raw,
        "ratio": cold.ops_per_s / raw.ops_per_s,
    })
}

/// Orders on app-0 that each reserve at a stock on app-1.
fn saga_ids(n: usize) -> Vec<(String, String)> {
    let plan = next_plan(None, &["app-0", "app-1"], SHARDS, 4);
    let on = |prefix: &str, owner: &str| -> Vec<String> {
        (0..)
            .map(|i| format!("{prefix}-{i}"))
            .filter(|id| plan.owner(shard_of(id, SHARDS)) == Some(owner))
            .take(n)
            .collect()
    };
    let (orders, stocks) = (on("order", "app-0"), on("stock", "app-1"));
    orders
        .into_iter()
        .enumerate()
        .map(|(i, o)| (o, stocks[i % 100].clone()))
        .collect()
}

async fn place(client: &Client, ids: &Arc<Vec<(String, String)>>) {
    let (c, ids2) = (client.clone(), ids.clone());
    drive(ids.len(), 64, move |i| {
        let (c, ids) = (c.clone(), ids2.clone());
        async move {
            let (o, s) = &ids[i];
            let req = Request::new(
                ActorRef::new("order", o),
                Op::Command {
                    command: json!({"place": {"stock": s, "qty": 1}}),
                },
                Some(format!("place-{o}")),
            );
            // A client retries with the same command id (PROTOCOL.md): under this load the Python
            // app can answer a decide after the node's app timeout, and the order is then
            // answered `unavailable` without being applied.
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let r = c.send(&req).await;
                let ok = r
                    .as_ref()
                    .is_ok_and(|r| matches!(r.outcome, Outcome::Ok(_)));
                if ok || Instant::now() > deadline {
                    if !ok {
                        eprintln!("order {o} not placed: {r:?}");
                    }
                    break ok;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    })
    .await;
}

/// Actors with pending work (undelivered or unreleased sends), from their markers.
async fn pending(nc: &async_nats::Client, prefix: &str) -> usize {
    let names = Names::new(prefix);
    let stream = async_nats::jetstream::new(nc.clone())
        .get_stream(names.event_stream())
        .await
        .expect("stream");
    let mut subjects = stream
        .info_with_subjects(names.pending_filter())
        .await
        .expect("info");
    let mut n = 0;
    while let Some(Ok((_, count))) = subjects.next().await {
        n += usize::from(count > 0);
    }
    n
}

/// 2. The time from a restart to every pending send done, beside the same sends with nothing down.
async fn pending_sends() -> serde_json::Value {
    let n = 10_000;
    let nats = NatsServer::start();
    let nc = nats.connect().await;
    let app = App::start("tests/apps/saga.py").await;
    let ports = [free_port(), free_port()];
    let args = ["--app-url", &app.url()];
    let start =
        |prefix: &str, i: usize| node_process(&nats, prefix, &format!("app-{i}"), ports[i], &args);
    let ids = Arc::new(saga_ids(n));
    let plan = next_plan(None, &["app-0", "app-1"], SHARDS, 4);

    // Baseline: nothing down; from the first order placed to every send released.
    let (_a, _b) = (start("live", 0), start("live", 1));
    wait_for("both Ready", T, || async {
        ready(ports[0]).await && ready(ports[1]).await
    })
    .await;
    publish(&nc, "live", &plan, 10).await;
    let client = Client::new(nc.clone(), "live");
    let t = Instant::now();
    place(&client, &ids).await;
    wait_for("every send done", T, || async {
        pending(&nc, "live").await == 0
    })
    .await;
    let live = t.elapsed();
    drop((_a, _b));

    // Receivers down while the orders are placed; then every node killed and restarted.
    // Both take the plan first: a node serves its first plan's shards only once every member holds
    // that epoch (so a node that restarted alone cannot serve beside an old holder); then the
    // receivers' node goes down.
    let (ports2, mut a, mut b) = (ports, start("down", 0), start("down", 1));
    wait_for("both Ready", T, || async {
        ready(ports2[0]).await && ready(ports2[1]).await
    })
    .await;
    publish(&nc, "down", &plan, 10).await;
    let client = Client::new(nc.clone(), "down");
    wait_for("app-0 serving", T, || async {
        client
            .read("order", &ids[0].0)
            .await
            .is_ok_and(|r| matches!(r.outcome, Outcome::Ok(_)))
    })
    .await;
    b.kill();
    place(&client, &ids).await;
    wait_for("every order marked pending", T, || async {
        pending(&nc, "down").await == n
    })
    .await;
    a.kill();
    let t = Instant::now();
    let (_a, _b) = (start("down", 0), start("down", 1));
    wait_for("every send done after the restart", T, || async {
        pending(&nc, "down").await == 0
    })
    .await;
    let recovered = t.elapsed();
    json!({
        "sends": n,
        "restart_to_all_done_s": recovered.as_secs_f64(),
        "live_all_done_s": live.as_secs_f64(),
        "ratio": recovered.as_secs_f64() / live.as_secs_f64(),
    })
}

fn section(r: &serde_json::Value) -> String {
    let c = &r["cold_loads"];
    let s = &r["pending_sends"];
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
    format!(
        "## Recovery after a restart\n\n\
         Command: `cargo bench -p aether-tests --bench recovery` (part of `make bench`): node processes and \
         a nats-server on loopback, {shards} shards. A cold load is a request routed through the node plus \
         two direct gets; the baseline is one direct get from the client.\n\n\
         | figure | aether | baseline | ratio |\n|---|---|---|---|\n\
         | cold loads after a restart, {actors} counters of 2 records, {inflight} reads in flight | {cold:.0}/s (p99 {cp99:.1} ms) | raw JetStream direct get of each actor's last record: {raw:.0}/s (p99 {rp99:.1} ms) | {ratio:.2}x |\n\
         | {sends} sends recorded while their receivers were down, every node restarted: until all applied, answered and released | {rec:.1} s | the same sends with nothing down: {live:.1} s | {sratio:.2}x |\n\n\
         An actor is rebuilt from its last record and its last snapshot record (the first record of an actor \
         carries one), by direct get; no consumer is created per load. Every load is at least two direct gets \
         where the baseline is one. A send takes four records (the receiver's, the sender's answer, two \
         releases) and two decide calls of the Python app.\n",
        shards = SHARDS,
        actors = c["actors"],
        inflight = c["in_flight"],
        cold = f(&c["cold_reads"]["ops_per_s"]),
        cp99 = f(&c["cold_reads"]["p99_us"]) / 1000.0,
        raw = f(&c["raw_direct_get_last"]["ops_per_s"]),
        rp99 = f(&c["raw_direct_get_last"]["p99_us"]) / 1000.0,
        ratio = f(&c["ratio"]),
        sends = s["sends"],
        rec = f(&s["restart_to_all_done_s"]),
        live = f(&s["live_all_done_s"]),
        sratio = f(&s["ratio"]),
    )
}
