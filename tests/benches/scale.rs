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
use aether_tests::logs::{rss, template_of, write_logs_of};
use aether_tests::measure::{drive, run_bench};
use aether_tests::{NatsServer, free_port, wait_for};
use serde_json::{Value, json};
use std::time::Duration;

const SHARDS: u32 = 64;
const IN_FLIGHT: usize = 256;
const T: Duration = Duration::from_secs(900);

/// What is measured: built-in `kind` actors `{tag}{i}`, each with the state one `command` makes.
struct Sample {
    kind: &'static str,
    tag: &'static str,
    sizes: &'static [usize],
    command: fn() -> Value,
    state: fn() -> Value,
}

/// A 1 KB document: one key holding 1,000 bytes of text.
fn doc_text() -> String {
    "x".repeat(1000)
}

const SAMPLES: [Sample; 2] = [
    Sample {
        kind: "counter",
        tag: "c",
        sizes: &[10_000, 100_000, 1_000_000],
        command: || json!({"add": 1}),
        state: || json!({"value": 1}),
    },
    Sample {
        kind: "doc",
        tag: "d",
        sizes: &[10_000, 100_000],
        command: || json!({"put": {"key": "text", "value": doc_text()}}),
        state: || json!({"text": doc_text()}),
    },
];

fn main() {
    run_bench("scale", run(), Some(section));
}

/// One size: `n` actors written, a fresh node, each read once; memory before, after, and
/// once passivated.
async fn live(nats: &NatsServer, sample: &Sample, n: usize) -> Value {
    let prefix = format!("scale{}{n}", sample.tag);
    let (record, _) =
        template_of(nats, &prefix, SHARDS, sample.kind, (sample.command)(), None).await;
    let nc = nats.connect().await;
    write_logs_of(
        &nc,
        &prefix,
        SHARDS,
        sample.kind,
        (sample.tag, n),
        &record,
        None,
    )
    .await;
    let port = free_port();
    let max = (2 * n).to_string();
    // Long enough that no actor is passivated while the others are read; the largest size is
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
    // A counter never written, read once: the node is serving.
    wait_serving(&client, "template", T).await;
    let before = rss(pid);
    let c = client.clone();
    let (kind, tag, state) = (sample.kind, sample.tag, (sample.state)());
    let reads = drive(n, IN_FLIGHT, move |i| {
        let (c, state) = (c.clone(), state.clone());
        async move {
            let req = Request::new(ActorRef::new(kind, format!("{tag}{i}")), Op::Read, None);
            c.send(&req).await.is_ok_and(|r| match r.outcome {
                Outcome::Ok(ok) => ok.state == state,
                Outcome::Error(_) => false,
            })
        }
    })
    .await;
    let hosted = count(port, "aether_node_actors_hosted").await;
    let after = rss(pid);
    // Idle past --passivate-after: every actor dropped from memory.
    let passivated = if passivates {
        wait_for("every actor passivated", T, || async {
            count(port, "aether_node_actors_hosted").await == 0
        })
        .await;
        Some(rss(pid))
    } else {
        None
    };
    let state_bytes = serde_json::to_vec(&(sample.state)()).map_or(0, |v| v.len());
    json!({
        "kind": kind,
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
    for sample in &SAMPLES {
        for &n in sample.sizes {
            let r = live(&nats, sample, n).await;
            eprintln!("{r}");
            sizes.push(r);
        }
    }
    json!({ "live": sizes })
}

/// Why the memory goal is missed (kept with the code that measures it; rewritten when a run meets
/// the goal).
const WHY: &str = "Where a counter's bytes go (sizes from the types, `size_of`, and mimalloc's size classes): the actor itself, boxed, 208 bytes (its snapshot's six fields 128: the state's pointer and five vectors, three of them, outbox, inbox and timers, empty for most actors; kind, pending-work marker, version, sequence, base, last use, forgotten ids 80); its entry in its shard's table, the `ActorRef` key and the box's pointer, 56 bytes times the table's spare room (1.14x to 2.3x: a table doubles when 7/8 full) plus the key's two strings (kind and id, 16 bytes each); the state 96 bytes (the shared cell 80: a reference count, the text and a parsed value's slot; the text `{\"value\":1}` 16); the recent command ids 40 (`set`, its vector and its sequence). What would meet it: the rarely used parts of the snapshot in one optional box and the shared cell without a parsed slot (about 200 bytes less), or idle actors kept packed as the bytes a migration carries (about 60 bytes for a counter), unpacked on their next use. ";

fn section(r: &Value) -> String {
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    let mut rows = String::new();
    for s in r["live"].as_array().into_iter().flatten() {
        let goal = 2.0 * f(&s["state_bytes"]) + 200.0;
        let per = f(&s["bytes_per_live_actor"]);
        let kind = s["kind"].as_str().unwrap_or("counter");
        let what = if kind == "doc" {
            "1 KB docs"
        } else {
            "counters"
        };
        rows.push_str(&format!(
            "| {n} {what}, each read once (all in memory: {hosted}) | {per:.0} bytes per live actor (RSS {live:.0} MB, {before:.0} MB before; loaded at {rate:.0}/s) | the state: {sb} bytes of JSON; goal 2x + 200 = {goal:.0} bytes | {ratio:.2}x the goal | {verdict} |\n\
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
         and a nats-server on loopback, {SHARDS} shards, built-in counters and `doc` actors of \
         1 KB (one key, 1,000 bytes of text); their logs written as a node writes them, then each \
         actor read once through the node, which keeps them all (`--max-actors` twice their \
         number). Memory is the node process's resident set, sampled before the reads, after them, \
         and once every actor is passivated. Machine: see \"Machine\" above. 3 nodes, scale-out \
         and node loss: \"Scale-out and node loss\" below.\n\n\
         | figure | aether | baseline | ratio | goal |\n|---|---|---|---|---|\n{rows}\n\
         A state is kept as its JSON text while no command is changing it (parsed on a command's \
         first use, written back as text after it when 2 KiB or less; replies and records \
         are unchanged, a migration carries such a state as `state_json`: docs/PROTOCOL.md), the \
         shard's table holds a pointer per actor, and \
         the node allocates with mimalloc (2026-12-06; before them: 1,368 bytes per counter at \
         100,000 and 1,519 at 1,000,000).\n\n\
         {why}Resident memory after passivation is what the allocator keeps, not what the node holds: \
         the node drops every passivated actor (`aether_node_actors_hosted` 0).\n"
    )
}
