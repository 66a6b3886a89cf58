//! How cost grows (`make bench-scale`, issue 33): a node's memory per live actor at 10,000,
//! 100,000 and 1,000,000 counters, and what stays once they are passivated, beside the actor's
//! state size; one node process and a nats-server on loopback, bounded, stopping by itself.
//!
//! The counters' logs are written as a node writes them (`aether_tests::logs`), then every counter
//! is read once through the node (each loaded from its log and kept: the node's cache holds them
//! all), and the node's resident memory is sampled before and after; then the node passivates
//! them (`--passivate-after 1`) and is sampled again.
//!
//! Writes `target/scale-bench.json` and the section "How cost grows" of BENCHMARKS.md.

use aether_core::protocol::{ActorRef, Op, Outcome, Request};
use aether_node::client::Client;
use aether_tests::cluster::{count, node_process, wait_ready, wait_serving};
use aether_tests::logs::{rss, template, write_logs};
use aether_tests::measure::{drive, run_bench};
use aether_tests::{NatsServer, free_port, wait_for};
use serde_json::{Value, json};
use std::time::Duration;

const SHARDS: u32 = 64;
const SIZES: [usize; 3] = [10_000, 100_000, 1_000_000];
const IN_FLIGHT: usize = 256;
const T: Duration = Duration::from_secs(900);

fn main() {
    run_bench("scale", run(), Some(section));
}

/// One size: `n` counters written, a fresh node, each read once; memory before, after, and
/// once passivated.
async fn live(nats: &NatsServer, n: usize) -> Value {
    let prefix = format!("scale{n}");
    let (record, _) = template(nats, &prefix, SHARDS, json!({"add": 1}), None).await;
    let nc = nats.connect().await;
    write_logs(&nc, &prefix, SHARDS, ("c", n), &record, None).await;
    let port = free_port();
    let max = (2 * n).to_string();
    // Long enough that no counter is passivated while the others are read; the largest size is
    // not waited for (its passivation would take longer than the rest of the run).
    let passivates = n <= 100_000;
    let idle = if passivates { 20 + n / 4_000 } else { 3_600 }.to_string();
    let node = node_process(
        nats,
        &prefix,
        "app-0",
        port,
        &["--max-actors", &max, "--passivate-after", &idle],
    );
    let pid = node.child.id();
    wait_ready("app-0", port, T).await;
    // The plan the template's node was given (one member, app-0) is in the bucket already.
    let client = Client::new(nc.clone(), &prefix);
    // The template's own counter, read once: the node is serving.
    wait_serving(&client, "template", T).await;
    let before = rss(pid);
    let c = client.clone();
    let reads = drive(n, IN_FLIGHT, move |i| {
        let c = c.clone();
        async move {
            let req = Request::new(ActorRef::new("counter", format!("c{i}")), Op::Read, None);
            c.send(&req).await.is_ok_and(|r| match r.outcome {
                Outcome::Ok(ok) => ok.state == json!({"value": 1}),
                Outcome::Error(_) => false,
            })
        }
    })
    .await;
    let hosted = count(port, "aether_node_actors_hosted").await;
    let after = rss(pid);
    // Idle past --passivate-after: every counter dropped from memory.
    let passivated = if passivates {
        wait_for("every counter passivated", T, || async {
            count(port, "aether_node_actors_hosted").await == 0
        })
        .await;
        Some(rss(pid))
    } else {
        None
    };
    let state_bytes = serde_json::to_vec(&json!({"value": 1})).map_or(0, |v| v.len());
    json!({
        "actors": n,
        "hosted": hosted,
        "read_per_s": reads.ops_per_s,
        "rss_before": before,
        "rss_live": after,
        "rss_passivated": passivated,
        "bytes_per_live_actor": after.saturating_sub(before) as f64 / n as f64,
        "bytes_left_per_passivated_actor": passivated.map(|p| p.saturating_sub(before) as f64 / n as f64),
        "state_bytes": state_bytes,
    })
}

async fn run() -> Value {
    let nats = NatsServer::start();
    let mut sizes = Vec::new();
    for n in SIZES {
        let r = live(&nats, n).await;
        eprintln!("{r}");
        sizes.push(r);
    }
    json!({ "live": sizes })
}

/// Why the memory goal is missed (kept with the code that measures it; rewritten when a run meets
/// the goal).
const WHY: &str = "Why the goal is missed, estimated from the types' sizes (not yet measured piece by piece): a counter's state `{\"value\":1}` is a serde_json object, whose BTreeMap allocates a whole leaf node (room for 11 keys and values, about 630 bytes) for its one key, behind the `Arc` that replies share (about 50 bytes more); the actor's entry in its shard's `HashMap` (the `ActorRef` key with its two strings, the `Actor` with its snapshot's vectors, about 300 bytes with the heap strings, up to twice while the table grows), its recent command ids (a vector and a string), and the allocator's overhead per allocation make the rest. What would meet it: states kept as their JSON bytes until a command needs them parsed (a counter would then take its 11 bytes), and the rarely used parts of the snapshot (recent ids, outbox, inbox, timers) in one optional box. ";

fn section(r: &Value) -> String {
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    let mut rows = String::new();
    for s in r["live"].as_array().into_iter().flatten() {
        let goal = 2.0 * f(&s["state_bytes"]) + 200.0;
        let per = f(&s["bytes_per_live_actor"]);
        rows.push_str(&format!(
            "| {n} counters, each read once (all in memory: {hosted}) | {per:.0} bytes per live actor (RSS {live:.0} MB, {before:.0} MB before; loaded at {rate:.0}/s) | the state: {sb} bytes of JSON; goal 2x + 200 = {goal:.0} bytes | {ratio:.2}x the goal | {verdict} |\n\
             | the same once passivated (idle past `--passivate-after`) | {left} | - | - | - |\n",
            n = s["actors"],
            hosted = s["hosted"],
            live = f(&s["rss_live"]) / 1e6,
            before = f(&s["rss_before"]) / 1e6,
            rate = f(&s["read_per_s"]),
            sb = s["state_bytes"],
            ratio = per / goal,
            verdict = if per <= goal { "met" } else { "missed" },
            left = if s["rss_passivated"].is_null() {
                "not waited for at this size".to_owned()
            } else {
                format!(
                    "{:.0} bytes per actor still resident (RSS {:.0} MB)",
                    f(&s["bytes_left_per_passivated_actor"]),
                    f(&s["rss_passivated"]) / 1e6
                )
            },
        ));
    }
    let met = r["live"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|s| f(&s["bytes_per_live_actor"]) <= 2.0 * f(&s["state_bytes"]) + 200.0);
    let why = if met { "" } else { WHY };
    format!(
        "## How cost grows\n\n\
         Command: `make bench-scale` (`cargo bench -p aether-tests --bench scale`): one node process \
         and a nats-server on loopback, {SHARDS} shards, built-in counters; their logs written as a \
         node writes them, then each counter read once through the node, which keeps them all \
         (`--max-actors` twice their number). Memory is the node process's resident set, sampled \
         before the reads, after them, and once every counter is passivated. Machine: see \
         \"Machine\" above. Not measured yet (issue 33): 3 nodes, a 1 KB doc, scale-out, \
         the soak (node loss, stream size and members at 65,536 shards: their own sections below).\n\n\
         | figure | aether | baseline | ratio | goal |\n|---|---|---|---|---|\n{rows}\n\
         {why}Resident memory after passivation is what the allocator keeps, not what the node holds: \
         the node drops every passivated actor (`aether_node_actors_hosted` 0).\n"
    )
}
