//! `make soak` (issue 33): a long run of the bank on 4 node processes (3 members at first), each
//! with its own bank app (`examples/bank/app.py`), one nats-server; transfers between accounts by
//! sends from a few sequential lanes the whole time, and every minute a plan change (a fourth node
//! joins, it leaves, a member leaves, it comes back), planned by the operator's own decision
//! (`chaos::planner`). Each minute: the resident memory and open file descriptors of every process,
//! and the transfers' p99. At the end: every account holds exactly what the acknowledged transfers
//! say (nothing lost, nothing applied twice, the money conserved).
//!
//! Minutes: `AETHER_SOAK_MINUTES` (default 60); `AETHER_SOAK_REPORT_ONLY=1` writes the report again
//! from the last run without running. Writes `target/soak.json`, `docs/soak.svg` (memory
//! and p99 over time) and the section "Soak" of RELIABILITY.md.

use aether_core::protocol::Names;
use aether_node::client::Client;
use aether_tests::app::App;
use aether_tests::bank;
use aether_tests::chaos::planner::Planner;
use aether_tests::cluster::{node_process, wait_ready};
use aether_tests::{NatsServer, free_port};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PREFIX: &str = "soak";
const SHARDS: u32 = 64;
const ACCOUNTS: usize = 200;
const LANES: u64 = 4;
const PODS: usize = 4;
const T: Duration = Duration::from_secs(120);

/// Resident memory (bytes) and open file descriptors of process `pid`.
fn sample(pid: u32) -> (u64, u64) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64);
    (rss, fds)
}

fn p99(ms: &mut [f64]) -> f64 {
    if ms.is_empty() {
        return 0.0;
    }
    ms.sort_by(f64::total_cmp);
    ms[((ms.len() as f64 * 0.99) as usize).min(ms.len() - 1)]
}

/// The plan change of minute `m`: the members after it.
fn members_at(m: usize) -> Vec<String> {
    let names = |ids: &[usize]| ids.iter().map(|i| format!("app-{i}")).collect();
    match m % 4 {
        0 => names(&[0, 1, 2, 3]), // app-3 joins
        1 => names(&[0, 1, 2]),    // app-3 leaves
        2 => names(&[0, 2]),       // app-1 leaves (a flap)
        _ => names(&[0, 1, 2]),    // app-1 back
    }
}

/// Writes the plot and the section of RELIABILITY.md from `report`.
fn write_report(report: &Value) {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    std::fs::write(
        format!("{root}/docs/soak.svg"),
        aether_tests::soak::svg(report),
    )
    .expect("write docs/soak.svg");
    let path = format!("{root}/RELIABILITY.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    std::fs::write(
        &path,
        aether_tests::measure::with_section(&old, "soak", &aether_tests::soak::section(report)),
    )
    .expect("write RELIABILITY.md");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `AETHER_SOAK_REPORT_ONLY=1`: the plot and the section again from the last run's
    // `target/soak.json` (after a change of the report), without running.
    if std::env::var("AETHER_SOAK_REPORT_ONLY").is_ok_and(|v| v == "1") {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        let report: Value = serde_json::from_slice(
            &std::fs::read(format!("{root}/target/soak.json")).expect("target/soak.json"),
        )
        .expect("target/soak.json is a report");
        write_report(&report);
        return;
    }
    let minutes: usize = std::env::var("AETHER_SOAK_MINUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let nats = NatsServer::start();
    let nc = nats.connect().await;
    let names = Names::new(PREFIX);
    let js = async_nats::jetstream::new(nc.clone());
    let bucket = aether_nats::plans::open_bucket(&js, &names, 1)
        .await
        .expect("plan bucket");
    let mut apps = Vec::new();
    let mut nodes = Vec::new();
    for i in 0..PODS {
        let app = App::start("examples/bank/app.py").await;
        let port = free_port();
        let url = app.url();
        let node = node_process(
            &nats,
            PREFIX,
            &format!("app-{i}"),
            port,
            &["--app-url", &url],
        );
        wait_ready(&format!("app-{i}"), port, T).await;
        apps.push(app);
        nodes.push(node);
    }
    let first = members_at(1);
    let events = js
        .get_stream(names.event_stream())
        .await
        .expect("the event stream");
    let (mut planner, _) = Planner::start(first, SHARDS, bucket, js, names).await;
    let client = Client::new(nc.clone(), PREFIX);
    bank::open(&client, ACCOUNTS, T)
        .await
        .expect("accounts opened");

    // The load: sequential lanes of transfers, each timed into the minute it ended in.
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let latencies: Arc<Mutex<Vec<Vec<f64>>>> = Arc::new(Mutex::new(vec![Vec::new(); minutes + 2]));
    let lanes: Vec<_> = (0..LANES)
        .map(|lane| {
            let latencies = latencies.clone();
            bank::transfers_timed(
                client.clone(),
                ACCOUNTS,
                stop.clone(),
                lane,
                T,
                move |took| {
                    let minute = (started.elapsed().as_secs() / 60) as usize;
                    if let Some(v) = latencies.lock().expect("lock").get_mut(minute) {
                        v.push(took.as_secs_f64() * 1000.0);
                    }
                },
            )
        })
        .collect();

    let pids = |nodes: &[aether_tests::Process], apps: &[App]| {
        let mut out = vec![("nats-server".to_owned(), nats.pid().unwrap_or(0))];
        out.extend(
            nodes
                .iter()
                .enumerate()
                .map(|(i, n)| (format!("app-{i} node"), n.child.id())),
        );
        out.extend(
            apps.iter()
                .enumerate()
                .map(|(i, a)| (format!("app-{i} app"), a.process.child.id())),
        );
        out
    };
    let mut samples = Vec::new();
    for m in 0..minutes {
        let next = started + Duration::from_secs(60 * (m as u64 + 1));
        tokio::time::sleep_until(next.into()).await;
        let procs: Vec<Value> = pids(&nodes, &apps)
            .into_iter()
            .map(|(name, pid)| {
                let (rss, fds) = sample(pid);
                json!({"process": name, "rss": rss, "fds": fds})
            })
            .collect();
        // What nats-server stores, beside its memory.
        let stored = events
            .get_info()
            .await
            .expect("the event stream's info")
            .state;
        let (count, late) = {
            let mut l = latencies.lock().expect("lock");
            let v = &mut l[m];
            (v.len(), p99(v))
        };
        let members = members_at(m);
        planner.publish(members.clone()).await;
        println!(
            "minute {}: {count} transfers, p99 {late:.1} ms, members {members:?}",
            m + 1
        );
        samples.push(
            json!({"minute": m + 1, "transfers": count, "p99_ms": late, "processes": procs,
                "stream_bytes": stored.bytes, "stream_messages": stored.messages}),
        );
    }
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = Vec::new();
    for lane in lanes {
        acknowledged.extend(lane.await.expect("lane").expect("transfers"));
    }
    // The last plan's moves finish (retried as the operator would), then every account is exact.
    while planner.retry(Duration::from_secs(120)).await.is_some() {}
    let expected = bank::expected(ACCOUNTS, &acknowledged);
    let settled = bank::settle(&client, &expected, T).await;
    let report = json!({
        "minutes": minutes,
        "accounts": ACCOUNTS,
        "lanes": LANES,
        "transfers": acknowledged.len(),
        "plans": planner.published,
        "settled": settled.clone().err(),
        "samples": samples,
    });
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    std::fs::write(
        format!("{root}/target/soak.json"),
        serde_json::to_vec_pretty(&report).expect("json"),
    )
    .expect("write target/soak.json");
    write_report(&report);
    settled.expect("every account holds what the acknowledged transfers say");
}
