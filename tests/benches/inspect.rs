//! `kubectl aether` at scale (`make bench-scale`, issue 31): 1,000,000 counters' logs written as a
//! node writes them (one counter's first record, made by a node, copied to the others' subjects),
//! the plan published; then `where` and `get` run as a user runs them (a process each: start, NATS
//! connect, the plan, the actor's log) on actors spread over the stream, beside the one round trip
//! a client on an open connection needs for the actor's last record (a direct get) and the
//! plugin's start alone (`--version`); and `actors` listing ids a page at a time and all of them,
//! its time and the process's peak memory. One nats-server on loopback, no node running.
//!
//! Writes `target/inspect-bench.json` and the section "kubectl aether at scale" of BENCHMARKS.md.
//! Smaller for a quick look: `AETHER_BENCH_INSPECT`.

use aether_core::hash::shard_of;
use aether_core::protocol::{ActorRef, Names};
use aether_tests::logs::{template, write_logs};
use aether_tests::measure::run_bench;
use aether_tests::{NatsServer, workspace_binary};
use serde_json::{Value, json};
use std::process::Command;
use std::time::Instant;

const ACTORS: usize = 1_000_000;
const SHARDS: u32 = 64;
/// Invocations of each subcommand timed.
const CALLS: usize = 100;
const PREFIX: &str = "inspect";

fn main() {
    run_bench("inspect", run(), Some(section));
}

/// Runs the plugin with `args` on `url`: its stdout, and the wall time in ms.
fn plugin(url: &str, args: &[&str]) -> (String, f64) {
    let started = Instant::now();
    let out = Command::new(workspace_binary("kubectl-aether"))
        .args(["--nats-url", url, "--prefix", PREFIX])
        .args(args)
        .output()
        .expect("kubectl-aether runs");
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    assert!(
        out.status.success(),
        "kubectl aether {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (String::from_utf8_lossy(&out.stdout).into_owned(), ms)
}

/// p50, p99 and max of `ms`.
fn percentiles(mut ms: Vec<f64>) -> Value {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() as f64 * q) as usize).min(ms.len() - 1)];
    json!({"p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": ms[ms.len() - 1]})
}

/// The actors asked about: spread over the whole stream.
fn ids(n: usize) -> Vec<String> {
    (0..CALLS)
        .map(|i| format!("c{}", (i * 7_919 + 13) % n))
        .collect()
}

async fn run() -> Value {
    let n = aether_tests::measure::env_size("AETHER_BENCH_INSPECT", ACTORS);
    let nats = NatsServer::start();
    let nc = nats.connect().await;
    let url = nats.url();
    let (record, _) = template(&nats, PREFIX, SHARDS, json!({"add": 1}), None).await;
    // The plan `template` published (app-0 owns every shard) stays.
    let write_s = write_logs(&nc, PREFIX, SHARDS, ("c", n), &record, None).await;

    let mut wheres = Vec::new();
    let mut gets = Vec::new();
    for id in ids(n) {
        let actor = format!("counter/{id}");
        let (out, ms) = plugin(&url, &["where", &actor, "-o", "json"]);
        let v: Value = serde_json::from_str(&out).expect("where: JSON");
        assert_eq!(v["owner"], "app-0", "{actor}: {v}");
        wheres.push(ms);
        let (out, ms) = plugin(&url, &["get", &actor, "-o", "json"]);
        let v: Value = serde_json::from_str(&out).expect("get: JSON");
        assert_eq!(v["version"], 1, "{actor}: {v}");
        gets.push(ms);
    }
    // Baselines: one direct get on an open connection; the plugin's start alone.
    let js = async_nats::jetstream::new(nc.clone());
    let names = Names::new(PREFIX);
    let stream = js.get_stream(names.event_stream()).await.expect("stream");
    let mut direct = Vec::new();
    for id in ids(n) {
        let actor = ActorRef::new("counter", id);
        let subject = names.actor_subject(shard_of(&actor.id, SHARDS), &actor);
        let started = Instant::now();
        stream
            .get_last_raw_message_by_subject(&subject)
            .await
            .expect("the actor's record");
        direct.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let starts: Vec<f64> = (0..20)
        .map(|_| {
            let started = Instant::now();
            let out = Command::new(workspace_binary("kubectl-aether"))
                .arg("--version")
                .output()
                .expect("kubectl-aether --version");
            assert!(out.status.success());
            started.elapsed().as_secs_f64() * 1000.0
        })
        .collect();

    // `actors`: a page, then every id, with the process's peak memory.
    let (page, page_ms) = plugin(&url, &["actors", "--limit", "1000", "-o", "json"]);
    let page: Value = serde_json::from_str(&page).expect("actors: JSON");
    assert_eq!(page["actors"].as_array().map(Vec::len), Some(1000));
    let all = n + 1;
    let started = Instant::now();
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%M"])
        .arg(workspace_binary("kubectl-aether"))
        .args(["--nats-url", &url, "--prefix", PREFIX])
        .args(["actors", "--limit", &all.to_string(), "-o", "json"])
        .output()
        .expect("/usr/bin/time kubectl-aether actors");
    let all_ms = started.elapsed().as_secs_f64() * 1000.0;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Value = serde_json::from_slice(&out.stdout).expect("actors: JSON");
    // Every counter, and the template the node wrote.
    assert_eq!(listed["actors"].as_array().map(Vec::len), Some(n + 1));
    assert_eq!(listed["more"], false);
    let peak_kb: u64 = String::from_utf8_lossy(&out.stderr)
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .expect("peak memory from /usr/bin/time");
    json!({
        "actors": n,
        "write_s": write_s,
        "calls": CALLS,
        "where": percentiles(wheres),
        "get": percentiles(gets),
        "direct_get": percentiles(direct),
        "plugin_start": percentiles(starts),
        "actors_page_ms": page_ms,
        "actors_all_ms": all_ms,
        "actors_all_peak_mb": peak_kb as f64 / 1024.0,
    })
}

fn section(r: &Value) -> String {
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    let p = |k: &str| {
        format!(
            "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            f(&r[k]["p50_ms"]),
            f(&r[k]["p99_ms"]),
            f(&r[k]["max_ms"])
        )
    };
    let goal = |k: &str| {
        if f(&r[k]["p99_ms"]) <= 50.0 {
            "p99 <= 50 ms: met".to_owned()
        } else {
            format!(
                "p99 <= 50 ms: **missed** by {:.1}x",
                f(&r[k]["p99_ms"]) / 50.0
            )
        }
    };
    let n = f(&r["actors"]);
    format!(
        "## kubectl aether at scale\n\n\
         Command: `cargo bench -p aether-tests --bench inspect` (part of `make bench-scale`): {n:.0} \
         counters' logs written as a node writes them ({w:.0} s), the plan published, one nats-server \
         on loopback, no node running. Each figure over {calls} actors spread over the stream, each \
         call a process as a user runs it (start, NATS connect, the plan, the actor's log). Machine: \
         see \"Machine\" above.\n\n\
         | figure | kubectl aether | baseline | goal |\n|---|---|---|---|\n\
         | `where KIND/ID -o json` | {where_} | the plugin's start alone (`--version`): {start} | {gw} |\n\
         | `get KIND/ID -o json` | {get} | the actor's last record by one direct get on an open connection: {direct} | {gg} |\n\
         | `actors --limit 1000` | {page:.0} ms | - | - |\n\
         | `actors` listing all {all:.0} ids | {allms:.1} s, peak memory {mb:.0} MB | - | - |\n\n\
         A call costs the process's start and its NATS connection besides its one or two round trips \
         (`where` reads the plan; `get` the plan and the actor's records by direct get). `actors` \
         reads the stream's subjects from the server's stream info a shard at a time, loading no \
         actor (one request over the whole stream took 1.25 s for a first page of 1,000 here: the \
         server lists a filter's subjects in full for every page). Listing every id at once holds \
         them all in the plugin before it prints ({per:.0} bytes each at the peak; 1,676 when it \
         held them as JSON values, 1.6 GB for a million): page with `--shard S` (a shard's ids, \
         {shard_ids:.0} here) or `--limit`.\n",
        w = f(&r["write_s"]),
        calls = r["calls"],
        where_ = p("where"),
        start = p("plugin_start"),
        gw = goal("where"),
        get = p("get"),
        direct = p("direct_get"),
        gg = goal("get"),
        page = f(&r["actors_page_ms"]),
        all = n + 1.0,
        allms = f(&r["actors_all_ms"]) / 1000.0,
        mb = f(&r["actors_all_peak_mb"]),
        per = f(&r["actors_all_peak_mb"]) * 1024.0 * 1024.0 / n.max(1.0),
        shard_ids = n / f64::from(SHARDS),
    )
}
