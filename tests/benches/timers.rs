//! Timer benchmarks (`make bench`, issue 29), each beside its baseline in the same run, one node
//! process and a nats-server on loopback, bounded and stopping by themselves:
//! 1. firing throughput: `BURST` one-shot timers on as many counters, all due at one instant,
//!    until every firing is applied, beside `BURST` routed `add` commands on the same counters;
//! 2. lateness with nothing moving: `STEADY` timers due at a steady `RATE` per second, from each
//!    due time to its record stored, beside the latency of routed commands at the same rate;
//! 3. lateness during a rebalance: `STEADY` more timers due at `RATE` per second while a second
//!    node joins and half the shards move to it (their timers with them).
//!
//! Writes `target/timers-bench.json` and the section "Timers" of BENCHMARKS.md (between its
//! markers; the rest of the file is left as it is).

use aether_core::hash::shard_of;
use aether_core::protocol::{ActorRef, Names, Op, Outcome, Request};
use aether_core::timers::epoch_ms;
use aether_node::client::Client;
use aether_node::store::{EventStore, Record};
use aether_tests::cluster::{metric, next_plan, node_process, publish};
use aether_tests::measure::{Figure, drive, figure, run_bench};
use aether_tests::{NatsServer, free_port, http_get, wait_for};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

const SHARDS: u32 = 64;
const IN_FLIGHT: usize = 256;
const BURST: usize = 20_000;
const STEADY: usize = 5_000;
const RATE: u64 = 1_000;
const T: Duration = Duration::from_secs(300);
const PREFIX: &str = "tbench";

fn main() {
    run_bench("timers", run(), Some(section));
}

fn now_ms() -> u64 {
    epoch_ms(SystemTime::now())
}

async fn firings(port: u16) -> u64 {
    metric(port, "aether_node_timer_firings_total")
        .await
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0)
}

fn schedule(id: &str, name: &str, at: u64) -> Request {
    Request::new(
        ActorRef::new("counter", id),
        Op::Command {
            command: json!({"schedule": {"name": name, "at": at, "command": {"add": 1}}}),
        },
        Some(format!("s-{name}-{id}")),
    )
}

async fn run() -> serde_json::Value {
    let nats = NatsServer::start();
    let nc = nats.connect().await;
    let port = free_port();
    let _node = node_process(&nats, PREFIX, "app-0", port, &[]);
    let port1 = free_port();
    let _joiner = node_process(&nats, PREFIX, "app-1", port1, &[]);
    wait_for("the node Ready", T, || async {
        http_get(port, "/readyz")
            .await
            .is_some_and(|(s, _)| s == 200)
    })
    .await;
    let p1 = next_plan(None, &["app-0"], SHARDS, 4);
    publish(&nc, PREFIX, &p1, 10).await;
    let client = Client::new(nc.clone(), PREFIX);

    // Baseline: routed adds on the counters the timers then use.
    let c = client.clone();
    let adds = drive(BURST, IN_FLIGHT, move |i| {
        let c = c.clone();
        async move {
            c.add(&format!("b-{i}"), 1, format!("add-{i}"))
                .await
                .is_ok_and(|r| matches!(r.outcome, Outcome::Ok(_)))
        }
    })
    .await;

    // 1. A burst: every timer due at one instant, set well before it.
    let due = now_ms() + 20_000;
    let c = client.clone();
    let set = drive(BURST, IN_FLIGHT, move |i| {
        let c = c.clone();
        async move {
            c.send(&schedule(&format!("b-{i}"), "burst", due))
                .await
                .is_ok_and(|r| matches!(r.outcome, Outcome::Ok(_)))
        }
    })
    .await;
    let lead = Duration::from_millis(due.saturating_sub(now_ms()));
    let due_at = Instant::now() + lead;
    tokio::time::sleep_until(due_at.into()).await;
    wait_for("every burst firing applied", T, || async {
        firings(port).await >= BURST as u64
    })
    .await;
    let burst_s = due_at.elapsed().as_secs_f64();
    let burst_rate = BURST as f64 / burst_s;

    // 2. Steady: STEADY timers due RATE per second, starting 5 s after they are all set.
    let ids: Arc<Vec<String>> = Arc::new((0..STEADY).map(|i| format!("s-{i}")).collect());
    let start = now_ms() + 15_000;
    let c = client.clone();
    let ids2 = ids.clone();
    drive(STEADY, IN_FLIGHT, move |i| {
        let (c, ids) = (c.clone(), ids2.clone());
        async move {
            let at = start + i as u64 * 1000 / RATE;
            c.send(&schedule(&ids[i], "steady", at))
                .await
                .is_ok_and(|r| matches!(r.outcome, Outcome::Ok(_)))
        }
    })
    .await;
    // The same rate of routed commands meanwhile (on other counters): the latency baseline.
    let paced = paced_adds(&client, STEADY, RATE).await;
    wait_for("every steady firing applied", T, || async {
        firings(port).await >= (BURST + STEADY) as u64
    })
    .await;
    let idle = lateness(&nc, &ids).await;

    // 3. The same rate of firings while half the shards move to a joining node.
    let moving: Arc<Vec<String>> = Arc::new((0..STEADY).map(|i| format!("m-{i}")).collect());
    let start = now_ms() + 10_000;
    let c = client.clone();
    let ids3 = moving.clone();
    drive(STEADY, IN_FLIGHT, move |i| {
        let (c, ids) = (c.clone(), ids3.clone());
        async move {
            let at = start + i as u64 * 1000 / RATE;
            c.send(&schedule(&ids[i], "rebalance", at))
                .await
                .is_ok_and(|r| matches!(r.outcome, Outcome::Ok(_)))
        }
    })
    .await;
    let p2 = next_plan(Some(&p1), &["app-0", "app-1"], SHARDS, 4);
    let moved: std::collections::HashSet<u32> = p2.moves.iter().map(|m| m.shard).collect();
    // A second into the firings, the plan that moves half the shards.
    let publish_at = Duration::from_millis((start + 1_000).saturating_sub(now_ms()));
    tokio::time::sleep(publish_at).await;
    publish(&nc, PREFIX, &p2, 10).await;
    let fired = || async { firings(port).await + firings(port1).await };
    wait_for("every rebalance firing applied", T, || async {
        fired().await >= (BURST + 2 * STEADY) as u64
    })
    .await;
    let during = lateness(&nc, &moving).await;
    let on_moved: Vec<String> = moving
        .iter()
        .filter(|id| moved.contains(&shard_of(id, SHARDS)))
        .cloned()
        .collect();
    let during_moved = lateness(&nc, &on_moved).await;
    json!({
        "burst": {
            "timers": BURST,
            "routed_adds": adds,
            "schedule_commands": set,
            "firing_s": burst_s,
            "firings_per_s": burst_rate,
            "ratio": burst_rate / adds.ops_per_s,
        },
        "steady": {
            "timers": STEADY,
            "rate_per_s": RATE,
            "lateness": idle,
            "routed_adds_at_rate": paced,
        },
        "rebalance": {
            "timers": STEADY,
            "rate_per_s": RATE,
            "shards_moved": moved.len(),
            "lateness": during,
            "timers_on_moved_shards": on_moved.len(),
            "lateness_on_moved_shards": during_moved,
        },
    })
}

/// `n` routed adds started `rate` per second (each on its own counter); their latency.
async fn paced_adds(client: &Client, n: usize, rate: u64) -> Figure {
    let started = Instant::now();
    let mut calls = Vec::new();
    for i in 0..n {
        let at = started + Duration::from_micros(i as u64 * 1_000_000 / rate);
        tokio::time::sleep_until(at.into()).await;
        let c = client.clone();
        calls.push(tokio::spawn(async move {
            let t = Instant::now();
            let ok = c
                .add(&format!("p-{i}"), 1, format!("p-{i}"))
                .await
                .is_ok_and(|r| matches!(r.outcome, Outcome::Ok(_)));
            assert!(ok, "a paced add failed");
            u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX)
        }));
    }
    let mut lat = Vec::new();
    for c in calls {
        lat.push(c.await.expect("add task"));
    }
    figure(lat, started.elapsed())
}

/// From each steady timer's due time to its firing's record stored: p50, p99, max (ms).
async fn lateness(nc: &async_nats::Client, ids: &[String]) -> serde_json::Value {
    let js = async_nats::jetstream::new(nc.clone());
    let store = EventStore::open(js.clone(), Names::new(PREFIX), 1)
        .await
        .expect("store");
    let stream = js
        .get_stream(Names::new(PREFIX).event_stream())
        .await
        .expect("stream");
    let mut late = Vec::new();
    for id in ids {
        let actor = ActorRef::new("counter", id.as_str());
        let subject = store.subject(shard_of(id, SHARDS), &actor);
        let msg = stream
            .get_last_raw_message_by_subject(&subject)
            .await
            .expect("the firing's record");
        let r: Record = serde_json::from_slice(&msg.payload).expect("a record");
        let due: u64 = r
            .cmd
            .as_deref()
            .and_then(|c| c.rsplit('-').nth(1)?.parse().ok())
            .expect("a firing's command id");
        let stored = u64::try_from(msg.time.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        late.push(stored.saturating_sub(due));
    }
    late.sort_unstable();
    let pick = |q: f64| late[((late.len() as f64 - 1.0) * q) as usize];
    json!({ "p50_ms": pick(0.5), "p99_ms": pick(0.99), "max_ms": late[late.len() - 1] })
}

fn section(r: &serde_json::Value) -> String {
    let b = &r["burst"];
    let s = &r["steady"];
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
    format!(
        "## Timers\n\n\
         Command: `cargo bench -p aether-tests --bench timers` (part of `make bench`): one node process \
         and a nats-server on loopback, {shards} shards, built-in counters whose timers each add 1. A firing \
         is a command to the actor (its decide, one fenced append); the baseline is a routed `add` command, \
         the same work asked by a client. Machine: see \"Machine\" above; the bench client built with \
         `--profile release` in the recorded run.\n\n\
         | figure | aether | baseline | ratio | goal |\n|---|---|---|---|---|\n\
         | firing throughput: {timers} one-shot timers on as many counters, all due at one instant, until every firing is applied | {rate:.0}/s ({secs:.1} s) | {timers} routed adds on the same counters, {inflight} in flight: {adds:.0}/s | {ratio:.2}x | >= 0.9x |\n\
         | lateness, nothing moving: {steady} timers due {per_s}/s, due time to the firing's record stored | p50 {l50} ms, p99 {l99} ms, max {lmax} ms | routed adds started {per_s}/s on other counters (before the timers come due): p50 {a50:.1} ms, p99 {a99:.1} ms | - | p99 <= 25 ms |\n\
         | lateness during a rebalance: {steady} timers due {per_s}/s while a second node joins and {moved} of {shards} shards move to it | all: p50 {r50} ms, p99 {r99} ms, max {rmax} ms; the {on_moved} on moved shards: p50 {m50} ms, p99 {m99} ms, max {mmax} ms | the same rate with nothing moving (above): p99 {l99} ms | - | p99 <= 100 ms, max <= 1 s |\n\n\
         A moved shard's timers fire on its new owner once it has read the shard's pending-work \
         markers (within 250 ms of the commit; each says when its actor next needs a look, so no actor \
         is loaded before its timer is due); a firing due while its shard is paused for the move waits \
         for that. A million pending timers and the catch-up after an outage: \"Timers at scale\" below.\n",
        shards = SHARDS,
        timers = b["timers"],
        rate = f(&b["firings_per_s"]),
        secs = f(&b["firing_s"]),
        inflight = IN_FLIGHT,
        adds = f(&b["routed_adds"]["ops_per_s"]),
        ratio = f(&b["ratio"]),
        steady = s["timers"],
        per_s = s["rate_per_s"],
        l50 = s["lateness"]["p50_ms"],
        l99 = s["lateness"]["p99_ms"],
        lmax = s["lateness"]["max_ms"],
        a50 = f(&s["routed_adds_at_rate"]["p50_us"]) / 1000.0,
        a99 = f(&s["routed_adds_at_rate"]["p99_us"]) / 1000.0,
        moved = r["rebalance"]["shards_moved"],
        r50 = r["rebalance"]["lateness"]["p50_ms"],
        r99 = r["rebalance"]["lateness"]["p99_ms"],
        rmax = r["rebalance"]["lateness"]["max_ms"],
        on_moved = r["rebalance"]["timers_on_moved_shards"],
        m50 = r["rebalance"]["lateness_on_moved_shards"]["p50_ms"],
        m99 = r["rebalance"]["lateness_on_moved_shards"]["p99_ms"],
        mmax = r["rebalance"]["lateness_on_moved_shards"]["max_ms"],
    )
}
