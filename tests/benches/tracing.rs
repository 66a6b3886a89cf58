//! What traces cost (`make bench`, issue 31): the routed command (a client's `add` to the owning
//! node process through a nats-server, built-in counter) with the node's traces off, exporting
//! every trace, and exporting one in ten (`OTEL_TRACES_SAMPLER=traceidratio`), in one run, rounds
//! interleaved. The node exports over OTLP/HTTP to a receiver in this process that reads each
//! request and discards it (the node's cost, not a tracing backend's, on these 2 cores); it counts
//! what arrives, so a traced run that exported nothing fails.
//!
//! Writes `target/tracing-bench.json` and the section "Tracing overhead" of BENCHMARKS.md.

use aether_core::protocol::Outcome;
use aether_node::client::Client;
use aether_tests::cluster::{next_plan, publish, spawn_process_env, wait_serving};
use aether_tests::measure::{Figure, drive, env_size, middle, ops, run_bench};
use aether_tests::{NatsServer, free_port, http_get, wait_for, workspace_binary};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const SHARDS: u32 = 64;
const ACTORS: usize = 1000;
const IN_FLIGHT: usize = 32;
const ROUNDS: usize = 5;
const T: Duration = Duration::from_secs(120);

fn main() {
    run_bench("tracing", run(), Some(section));
}

/// An OTLP/HTTP receiver that answers every request 200 and keeps nothing; counts the requests.
async fn sink() -> (u16, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let got = Arc::new(AtomicU64::new(0));
    let counted = got.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let got = counted.clone();
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut read = BufReader::new(read);
                loop {
                    let mut length = 0usize;
                    loop {
                        let mut line = String::new();
                        match read.read_line(&mut line).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some((k, v)) = line.split_once(':')
                            && k.eq_ignore_ascii_case("content-length")
                        {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    if read.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    got.fetch_add(1, Ordering::Relaxed);
                    let ok = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n";
                    if write.write_all(ok).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, got)
}

/// One round of `n` routed adds against a fresh node with `env`.
async fn round(nats: &NatsServer, prefix: &str, env: &[(&str, &str)], n: usize) -> Figure {
    let nc = nats.connect().await;
    let port = free_port();
    let _node = spawn_process_env(
        &workspace_binary("aether-node"),
        &nats.url(),
        prefix,
        "app-0",
        port,
        &[],
        env,
    );
    wait_for("the node Ready", T, || async {
        http_get(port, "/readyz")
            .await
            .is_some_and(|(s, _)| s == 200)
    })
    .await;
    publish(&nc, prefix, &next_plan(None, &["app-0"], SHARDS, 4), 10).await;
    let client = Client::new(nc, prefix);
    wait_serving(&client, "warm-up", T).await;
    // Every actor loaded first: the rounds measure commands, not cold loads.
    let c = client.clone();
    drive(ACTORS, IN_FLIGHT, move |i| {
        let c = c.clone();
        async move { c.read("counter", &format!("c-{i}")).await.is_ok() }
    })
    .await;
    let c = client.clone();
    drive(n, IN_FLIGHT, move |i| {
        let c = c.clone();
        async move {
            c.add(&format!("c-{}", i % ACTORS), 1, format!("add-{i}"))
                .await
                .is_ok_and(|r| matches!(r.outcome, Outcome::Ok(_)))
        }
    })
    .await
}

async fn run() -> serde_json::Value {
    let n = env_size("AETHER_BENCH_TRACING", 40_000);
    let nats = NatsServer::start();
    let (sink, received) = sink().await;
    let endpoint = format!("http://127.0.0.1:{sink}");
    let traced = |ratio: &'static str| {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()),
            ("OTEL_TRACES_SAMPLER", "traceidratio".to_owned()),
            ("OTEL_TRACES_SAMPLER_ARG", ratio.to_owned()),
        ]
    };
    let modes: [(&str, Vec<(&str, String)>); 3] = [
        ("off", Vec::new()),
        ("all", traced("1.0")),
        ("tenth", traced("0.1")),
    ];
    let mut runs: [Vec<Figure>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    let mut exports = [0u64; 3];
    for r in 0..ROUNDS {
        for (m, (name, env)) in modes.iter().enumerate() {
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let before = received.load(Ordering::Relaxed);
            runs[m].push(round(&nats, &format!("tr{r}{name}"), &env, n).await);
            // The node exports its last batch when it stops (dropped at the round's end).
            exports[m] += received.load(Ordering::Relaxed) - before;
        }
    }
    let mid: Vec<Figure> = runs.iter().map(|r| middle(r)).collect();
    assert!(exports[1] > 0, "the traced node exported nothing");
    json!({
        "commands": n,
        "in_flight": IN_FLIGHT,
        "rounds": ROUNDS,
        "off": mid[0], "off_runs": ops(&runs[0]),
        "all": mid[1], "all_runs": ops(&runs[1]),
        "tenth": mid[2], "tenth_runs": ops(&runs[2]),
        "export_requests": {"off": exports[0], "all": exports[1], "tenth": exports[2]},
        "overhead_all": 1.0 - mid[1].ops_per_s / mid[0].ops_per_s,
        "overhead_tenth": 1.0 - mid[2].ops_per_s / mid[0].ops_per_s,
    })
}

fn section(r: &serde_json::Value) -> String {
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
    let row = |name: &str, what: &str| {
        let m = &r[name];
        format!(
            "| {what} | {:.0}/s (p50 {:.2} ms, p99 {:.2} ms; runs {}) | {:.2}x |\n",
            f(&m["ops_per_s"]),
            f(&m["p50_us"]) / 1000.0,
            f(&m["p99_us"]) / 1000.0,
            r[format!("{name}_runs")],
            f(&m["ops_per_s"]) / f(&r["off"]["ops_per_s"]).max(1.0),
        )
    };
    let pct = |k: &str| f(&r[k]) * 100.0;
    let verdict = |k: &str, goal: f64| {
        if pct(k) <= goal {
            format!("met ({:.1}% <= {goal}%)", pct(k))
        } else {
            format!(
                "missed by {:.1} points ({:.1}%, goal {goal}%)",
                pct(k) - goal,
                pct(k)
            )
        }
    };
    format!(
        "## Tracing overhead\n\n\
         Command: `cargo bench -p aether-tests --bench tracing` (part of `make bench`): one node process \
         and a nats-server on loopback, {shards} shards, {actors} built-in counters loaded, {n} routed `add` \
         commands {inflight} in flight per round, {rounds} rounds of each mode interleaved, the median \
         round shown. Traced nodes export over OTLP/HTTP to a receiver that discards what it gets \
         ({reqs} export requests in the traced rounds). The baseline is the same node with traces off.\n\n\
         | traces | routed command | vs off |\n|---|---|---|\n{off}{all}{tenth}\n\
         Overhead at 100% sampling: {va}; at 10%: {vt}. A traced request makes a \
         `request` span (and a sampled one is exported in a batch); with traces off no span is made. Why \
         the 10% figure is close to the 100% one: a span is made for every request and the sampler decides \
         only when it ends, so sampling saves the export, not the span; making no span for a request \
         the sampler will drop (deciding at the root, and passing the decision on in `traceparent`) is \
         what is left to do. The rounds of one mode differ by up to {spread:.0}% on these 2 shared cores \
         (fastest over slowest, the runs column), more than the modes differ: the figures are the \
         median round of each.\n",
        spread = ["off_runs", "all_runs", "tenth_runs"]
            .iter()
            .filter_map(|k| r[*k].as_array())
            .map(|runs| {
                let each: Vec<f64> = runs.iter().filter_map(serde_json::Value::as_f64).collect();
                let (lo, hi) = each
                    .iter()
                    .fold((f64::MAX, 0.0_f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
                (hi / lo.max(1.0) - 1.0) * 100.0
            })
            .fold(0.0_f64, f64::max),
        shards = SHARDS,
        actors = ACTORS,
        n = r["commands"],
        inflight = r["in_flight"],
        rounds = r["rounds"],
        reqs = r["export_requests"]["all"].as_u64().unwrap_or(0)
            + r["export_requests"]["tenth"].as_u64().unwrap_or(0),
        off = row("off", "off"),
        all = row("all", "every trace exported (`traceidratio` 1.0)"),
        tenth = row("tenth", "one in ten (`traceidratio` 0.1)"),
        va = verdict("overhead_all", 5.0),
        vt = verdict("overhead_tenth", 1.0),
    )
}
