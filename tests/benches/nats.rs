//! NATS-side benchmarks (`make bench`): each figure beside its raw NATS / JetStream baseline, measured
//! in the same run on loopback, bounded in count and time. Writes `target/nats-bench.json`, which
//! scripts/bench-report.py turns into sections of BENCHMARKS.md.

use aether_core::crd::MovePhase;
use aether_core::hash::shard_of;
use aether_core::plan::Plan;
use aether_core::protocol::{ActorRef, Names, Op, Outcome, Progress, Request, decode, encode};
use aether_node::client::Client;
use aether_tests::cluster::{TestNode, move_one_shard, next_plan, publish};
use aether_tests::measure::{Figure, figure, median, middle, ops, run_bench};
use aether_tests::{NatsServer, wait_for};
use futures::StreamExt;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SHARDS: u32 = 64;
const IN_FLIGHT: usize = 16;
const T: Duration = Duration::from_secs(60);
/// Moves per shard size measured alone (throughput), and under readers (latencies, pooled).
const QUIET_MOVES: usize = 5;
/// Runs of each request/reply figure, interleaved with its baseline.
const ROUNDS: usize = 3;
const LOADED_MOVES: usize = 3;

/// Publishes `payload` to the raw stream (one of 100 subjects) and waits for its ack.
async fn js_store(js: &async_nats::jetstream::Context, i: usize, payload: bytes::Bytes) -> bool {
    match js.publish(format!("raw.js.{}", i % 100), payload).await {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    }
}

/// Reads every actor of `ids` once (16 at a time).
async fn read_all(nc: &async_nats::Client, prefix: &str, ids: &Arc<Vec<String>>) {
    let (client, ids) = (Client::new(nc.clone(), prefix), ids.clone());
    drive(IN_FLIGHT, ids.len(), move |i| {
        let (client, ids) = (client.clone(), ids.clone());
        async move {
            client
                .read("doc", &ids[i])
                .await
                .is_ok_and(|r| matches!(r.outcome, Outcome::Ok(_)))
        }
    })
    .await;
}

/// Moves `shard` to the other node (a plan made by hand: only it moves) and waits for the source's
/// final report; the new plan and that report.
async fn move_shard(
    nc: &async_nats::Client,
    prefix: &str,
    plan: &Plan,
    shard: u32,
) -> (Plan, Progress) {
    let names = Names::new(prefix);
    let to = if plan.owner(shard) == Some("app-0") {
        "app-1"
    } else {
        "app-0"
    };
    let next = move_one_shard(plan, shard, to);
    let mut progress = nc.subscribe(names.progress_subjects()).await.expect("sub");
    publish(nc, prefix, &next, 60).await;
    let done = tokio::time::timeout(T, async {
        while let Some(m) = progress.next().await {
            if let Ok(p) = decode::<Progress>(&m.payload)
                && p.shard == shard
                && p.epoch == next.epoch
                && matches!(p.phase, MovePhase::Done | MovePhase::Failed)
                // The source's report carries the figures (the destination reports Done too).
                && p.node != to
            {
                return p;
            }
        }
        panic!("progress stream ended");
    })
    .await
    .expect("the move finishes");
    assert_eq!(done.phase, MovePhase::Done, "{done:?}");
    (next, done)
}

fn main() {
    run_bench("nats", run(), None);
}

async fn run() -> serde_json::Value {
    let nats = NatsServer::start();
    let nc = nats.connect().await;
    let prefix = "bench";
    let mut nodes = Vec::new();
    for name in ["app-0", "app-1"] {
        nodes.push(TestNode::start(&nats.url(), prefix, name).await);
    }
    let p1 = next_plan(None, &["app-0", "app-1"], SHARDS, 4);
    publish(&nc, prefix, &p1, 60).await;
    for n in &nodes {
        wait_for("plan", T, || async { n.shared.settled_at(1) }).await;
    }
    let names = Names::new(prefix);
    let n = 20_000;

    // 1. Routed read vs raw request/reply (100-byte payloads both).
    let mut responder = nc.subscribe("raw.echo").await.expect("sub");
    let echo = nc.clone();
    tokio::spawn(async move {
        while let Some(m) = responder.next().await {
            if let Some(r) = m.reply {
                let _ = echo.publish(r, m.payload).await;
            }
        }
    });
    let raw_payload = bytes::Bytes::from(vec![b'x'; 100]);
    let raw_rr = || {
        let (c, p) = (nc.clone(), raw_payload.clone());
        move |_: usize| {
            let (c, p) = (c.clone(), p.clone());
            async move { c.request("raw.echo", p).await.is_ok() }
        }
    };
    // Actors owned by app-0; requests sent to app-1 (forwarded) and to app-0 directly (local).
    let owned: Vec<String> = (0..)
        .map(|i| format!("reader-{i}"))
        .filter(|a| p1.owner(shard_of(a, SHARDS)) == Some("app-0"))
        .take(100)
        .collect();
    let client = Client::new(nc.clone(), prefix);
    for a in &owned {
        client.add(a, 1, format!("warm-{a}")).await.expect("warm");
    }
    let read_req = |a: &str| {
        encode(&Request::new(ActorRef::new("counter", a), Op::Read, None)).expect("encode")
    };
    let reads: Arc<Vec<bytes::Bytes>> =
        Arc::new(owned.iter().map(|a| read_req(a).into()).collect());
    let routed_read = |subject: String| {
        let (c, reads) = (nc.clone(), reads.clone());
        move |i: usize| {
            let (c, subject, body) = (c.clone(), subject.clone(), reads[i % reads.len()].clone());
            async move { c.request(subject, body).await.is_ok() }
        }
    };
    // Through aether's client (encodes the request, decodes the reply): sent to any node (`P.req`,
    // half of them forwarded), or to the owner by the plan it watches (one hop).
    let one_hop = Client::watching_plan(nc.clone(), prefix);
    assert!(one_hop.wait_for_plan(T).await, "the client reads the plan");
    let client_read = |client: Client| {
        let owned = Arc::new(owned.clone());
        move |i: usize| {
            let (client, owned) = (client.clone(), owned.clone());
            async move {
                client
                    .read("counter", &owned[i % owned.len()])
                    .await
                    .is_ok_and(|r| matches!(r.outcome, Outcome::Ok(_)))
            }
        }
    };
    // Each path runs ROUNDS times, interleaved with its baseline; the medians are compared.
    let (mut raw_rr_runs, mut forwarded_runs, mut local_runs) =
        (Vec::new(), Vec::new(), Vec::new());
    let (mut any_runs, mut one_hop_runs) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        raw_rr_runs.push(drive(IN_FLIGHT, n, raw_rr()).await);
        forwarded_runs.push(drive(IN_FLIGHT, n, routed_read(names.node_requests("app-1"))).await);
        local_runs.push(drive(IN_FLIGHT, n, routed_read(names.node_requests("app-0"))).await);
        any_runs.push(drive(IN_FLIGHT, n, client_read(client.clone())).await);
        one_hop_runs.push(drive(IN_FLIGHT, n, client_read(one_hop.clone())).await);
    }

    // 2. Routed command (appends one record) vs raw JetStream publish+ack of the same size; and, to
    // show what the extra hop costs by itself, a plain responder that publishes each request's
    // payload to JetStream and replies after the ack.
    let js = async_nats::jetstream::new(nc.clone());
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: "raw".into(),
        subjects: vec!["raw.js.>".into()],
        ..Default::default()
    })
    .await
    .expect("raw stream");
    let record_size = 120;
    let raw_js = || {
        let js = js.clone();
        move |i: usize| {
            let js = js.clone();
            async move { js_store(&js, i, bytes::Bytes::from(vec![b'y'; record_size])).await }
        }
    };
    let mut relay = nc.subscribe("raw.relay").await.expect("sub");
    let (relay_nc, relay_js) = (nc.clone(), js.clone());
    tokio::spawn(async move {
        let mut i = 0usize;
        while let Some(m) = relay.next().await {
            let (nc, js) = (relay_nc.clone(), relay_js.clone());
            i += 1;
            tokio::spawn(async move {
                if let (true, Some(r)) = (js_store(&js, i, m.payload).await, m.reply) {
                    let _ = nc.publish(r, bytes::Bytes::from_static(b"ok")).await;
                }
            });
        }
    });
    let raw_relay = || {
        let c = nc.clone();
        move |_: usize| {
            let c = c.clone();
            async move {
                let payload = bytes::Bytes::from(vec![b'y'; record_size]);
                c.request("raw.relay", payload).await.is_ok()
            }
        }
    };
    let cmds: Arc<Vec<String>> = Arc::new(owned.clone());
    let command = |round: usize| {
        let (c, cmds, subject) = (nc.clone(), cmds.clone(), names.node_requests("app-0"));
        move |i: usize| {
            let (c, cmds, subject) = (c.clone(), cmds.clone(), subject.clone());
            async move {
                let req = Request::new(
                    ActorRef::new("counter", cmds[i % cmds.len()].as_str()),
                    Op::Command {
                        command: json!({"add": 1}),
                    },
                    // Unique per round: a repeated id would be answered as a retry.
                    Some(format!("bench-{round}-{i}")),
                );
                c.request(subject, encode(&req).expect("encode").into())
                    .await
                    .is_ok()
            }
        }
    };
    let (mut raw_js_runs, mut relay_runs, mut command_runs) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        raw_js_runs.push(drive(IN_FLIGHT, n, raw_js()).await);
        relay_runs.push(drive(IN_FLIGHT, n, raw_relay()).await);
        command_runs.push(drive(IN_FLIGHT, n, command(round)).await);
    }

    // 3, 4 and 5. Migration of one shard with 1,000 and 10,000 actors of 1 KB. Throughput: QUIET_MOVES
    // moves with nothing else running, each beside a raw bulk transfer of the same bytes in 512 KiB
    // request/replies, medians compared. Then LOADED_MOVES moves while readers keep reading the moving
    // actors (unavailability) and actors of other shards (latency of actors that stay), samples pooled.
    let mut migrations = Vec::new();
    let mut epoch_plan = p1.clone();
    let echo = nc.clone();
    for (round, actors) in [(0usize, 1000usize), (1, 10_000)] {
        let shard = (round as u32) * 7 + 3;
        let from = epoch_plan.owner(shard).expect("owner").to_owned();
        let ids: Vec<String> = (0..)
            .map(|i| format!("m{round}-{i}"))
            .filter(|a| shard_of(a, SHARDS) == shard)
            .take(actors)
            .collect();
        let value = "v".repeat(1000);
        let ids = Arc::new(ids);
        let (c2, ids2, subject) = (nc.clone(), ids.clone(), names.node_requests(&from));
        drive(IN_FLIGHT, ids.len(), move |i| {
            let (c, ids, subject, value) =
                (c2.clone(), ids2.clone(), subject.clone(), value.clone());
            async move {
                let req = Request::new(
                    ActorRef::new("doc", ids[i].as_str()),
                    Op::Command {
                        command: json!({"put": {"key": "data", "value": value}}),
                    },
                    Some(format!("fill-{i}")),
                );
                c.request(subject, encode(&req).expect("encode").into())
                    .await
                    .is_ok()
            }
        })
        .await;
        let bytes_moved = ids.len() * 1100;
        let raw_ms = || {
            let (nc, chunk) = (echo.clone(), bytes::Bytes::from(vec![b'z'; 512 * 1024]));
            async move {
                let t = Instant::now();
                for _ in 0..bytes_moved.div_ceil(512 * 1024) {
                    nc.request("raw.echo", chunk.clone())
                        .await
                        .expect("raw chunk");
                }
                t.elapsed().as_secs_f64() * 1000.0
            }
        };
        let (mut quiet_ms, mut raw, mut moved) = (Vec::new(), Vec::new(), 0);
        for _ in 0..QUIET_MOVES {
            // Every actor is used first, so each move captures live actors (an actor moved on
            // unused is copied as it arrived, which would flatter the figure).
            read_all(&nc, prefix, &ids).await;
            let (next, done) = move_shard(&nc, prefix, &epoch_plan, shard).await;
            // The shard also holds a few of the read benchmark's counters.
            assert!(done.actors as usize >= actors, "{done:?}");
            moved = done.actors as usize;
            quiet_ms.push(done.duration_ms as f64);
            raw.push(raw_ms().await);
            epoch_plan = next;
        }
        let (mut lat, mut before, mut during, mut loaded_ms) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..LOADED_MOVES {
            read_all(&nc, prefix, &ids).await;
            // Readers hammer the moving actors through the move; their latencies are the unavailability.
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let mut readers = Vec::new();
            for r in 0..8 {
                let (client, ids, stop) =
                    (Client::new(nc.clone(), prefix), ids.clone(), stop.clone());
                readers.push(tokio::spawn(async move {
                    let mut lat = Vec::new();
                    let mut i = r;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let t = Instant::now();
                        let _ = client.read("doc", &ids[i % ids.len()]).await;
                        lat.push(t.elapsed().as_micros() as u64);
                        i += 8;
                    }
                    lat
                }));
            }
            // Readers of actors that do not move: their latency before the move (baseline) and during it.
            let phase = Arc::new(std::sync::atomic::AtomicU8::new(0));
            let stable: Arc<Vec<String>> = Arc::new(
                owned
                    .iter()
                    .filter(|a| shard_of(a, SHARDS) != shard)
                    .cloned()
                    .collect(),
            );
            let mut steady = Vec::new();
            for r in 0..4 {
                let (client, ids, phase) = (
                    Client::new(nc.clone(), prefix),
                    stable.clone(),
                    phase.clone(),
                );
                steady.push(tokio::spawn(async move {
                    let (mut before, mut during) = (Vec::new(), Vec::new());
                    let mut i = r;
                    loop {
                        let p = phase.load(std::sync::atomic::Ordering::Relaxed);
                        if p == 2 {
                            break;
                        }
                        let t = Instant::now();
                        let _ = client.read("counter", &ids[i % ids.len()]).await;
                        let us = t.elapsed().as_micros() as u64;
                        if p == 0 {
                            before.push(us)
                        } else {
                            during.push(us)
                        }
                        i += 4;
                    }
                    (before, during)
                }));
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            phase.store(1, std::sync::atomic::Ordering::Relaxed);
            let (next, done) = move_shard(&nc, prefix, &epoch_plan, shard).await;
            phase.store(2, std::sync::atomic::Ordering::Relaxed);
            assert!(done.actors as usize >= actors, "{done:?}");
            loaded_ms.push(done.duration_ms as f64);
            epoch_plan = next;
            for t in steady {
                let (b, d) = t.await.expect("steady reader");
                before.extend(b);
                during.extend(d);
            }
            // The readers go on a little after the move: reads redirected to the new owner count too.
            tokio::time::sleep(Duration::from_millis(200)).await;
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            for r in readers {
                lat.extend(r.await.expect("reader"));
            }
        }
        lat.sort_unstable();
        let (samples_during, before, during) = (
            during.len(),
            figure(before, Duration::from_secs(1)),
            figure(during, Duration::from_secs(1)),
        );
        let (move_ms, raw_ms) = (median(&mut quiet_ms), median(&mut raw));
        migrations.push(json!({
            "actors": moved,
            "quiet_moves": QUIET_MOVES,
            "move_ms": move_ms,
            "moves_ms": quiet_ms,
            "raw_ms": raw,
            "actors_per_s": moved as f64 * 1000.0 / move_ms.max(1.0),
            "bytes_per_s": bytes_moved as f64 * 1000.0 / move_ms.max(1.0),
            "raw_bytes_per_s": bytes_moved as f64 * 1000.0 / raw_ms.max(0.001),
            "loaded_moves": LOADED_MOVES,
            "loaded_move_ms": median(&mut loaded_ms),
            "read_during_move_p50_us": lat.get(lat.len() / 2).copied().unwrap_or(0),
            "read_during_move_p99_us": lat.get(lat.len() * 99 / 100).copied().unwrap_or(0),
            "read_during_move_max_us": lat.last().copied().unwrap_or(0),
            "steady_before_p50_us": before.p50_us,
            "steady_before_p99_us": before.p99_us,
            "steady_during_p50_us": during.p50_us,
            "steady_during_p99_us": during.p99_us,
            "steady_during_samples": samples_during,
        }));
    }

    json!({
        "in_flight": IN_FLIGHT,
        "requests": n,
        "rounds": ROUNDS,
        "raw_request_reply": middle(&raw_rr_runs),
        "read_forwarded": middle(&forwarded_runs),
        "read_local": middle(&local_runs),
        "client_any_node": middle(&any_runs),
        "client_one_hop": middle(&one_hop_runs),
        "raw_jetstream_publish": middle(&raw_js_runs),
        "raw_relay_jetstream": middle(&relay_runs),
        "command_local": middle(&command_runs),
        "runs_ops_per_s": {
            "raw_request_reply": ops(&raw_rr_runs),
            "read_forwarded": ops(&forwarded_runs),
            "read_local": ops(&local_runs),
            "client_any_node": ops(&any_runs),
            "client_one_hop": ops(&one_hop_runs),
            "raw_jetstream_publish": ops(&raw_js_runs),
            "raw_relay_jetstream": ops(&relay_runs),
            "command_local": ops(&command_runs),
        },
        "migrations": migrations,
    })
}

/// [`aether_tests::measure::drive`] at `IN_FLIGHT`.
async fn drive<F, Fut>(in_flight: usize, n: usize, op: F) -> Figure
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    aether_tests::measure::drive(n, in_flight, op).await
}
