//! End to end on a real control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler)
//! with the test kubelet running pods as processes and a real nats-server: what a user does.
//!
//! `helm install` the chart (the operator Deployment runs with its ServiceAccount's token, so the
//! chart's RBAC is what it has), `kubectl apply` the README's ShardPlan and a bad one, write a few
//! thousand actors, `kubectl scale` the StatefulSet 3 -> 5 -> 2 with a client writing throughout, and
//! SIGKILL a node process during the scale-down. Beside the counters, the chart's example app (the
//! Python bank, `examples/bank/app.py`, a container of every pod) runs a thousand accounts with random
//! transfers throughout: at the end every account holds exactly what the acknowledged operations say,
//! so the money adds up, no transfer was applied twice and none was lost.
//!
//! NATS requires TLS and runs the shipped per-role users and permissions: the operator, the sidecars
//! and this test's client each connect as their role, and nats-server refuses none of them anything.
//!
//! A second test runs `kubectl rollout restart statefulset` under load: every pod replaced one at a
//! time, each draining its shards before it exits; no call fails and nothing acknowledged is lost,
//! and no actor is unavailable long (p99 and max of each actor's longest call, against the same
//! load with nothing changing). Then the same rollout without the drain (the sidecars run with `--drain-timeout 0`: each stops at
//! once on SIGTERM, its shards rebuilt from the log by the others) as the baseline; both print their
//! figures.

use aether_core::crd::ShardPlan;
use aether_node::client::{Client, LoadReport, run_load};
use aether_tests::auth::Role;
use aether_tests::bank;
use aether_tests::cluster::assert_nothing_acked_lost;
use aether_tests::rollout::{ROLL_ACTORS, rollout_under_load, slow_calls, steady_load};
use aether_tests::stack::{NS, Stack, brief, owners, settled, wait_settled};
use aether_tests::wait_for;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const PREFIX: &str = "actors";
const SHARDS: u32 = 1024;
const ACTORS: usize = 2000;
const T: Duration = Duration::from_secs(120);

/// Writes adds of 1 over the actors until `stop`, in bounded batches.
fn writer(client: Client, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<LoadReport> {
    tokio::spawn(async move {
        let mut total = LoadReport::default();
        while !stop.load(Ordering::Relaxed) {
            let r = run_load(&client, "acct", ACTORS, 200, 8, T).await;
            total.absorb(r);
        }
        total
    })
}

const ACCOUNTS: usize = 1000;

/// Each test runs a control plane and a cluster of processes: on 2 cores, one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_apply_and_scale_3_5_2_with_a_killed_node() {
    let _one = ONE_AT_A_TIME.lock().await;
    let stack = Stack::start().await;
    let client = stack.cp.client().await;
    // The client sends requests as the client role; the log check reads the event stream as a node.
    let nc = stack.connect_as(Role::Client).await;
    let node_nc = stack.connect_as(Role::Node).await;
    let kubelet = &stack.kubelet;

    // helm install: CRD, RBAC, the operator (2 replicas, one leader) and the example StatefulSet with
    // its sidecars, PDB and ShardPlan.
    let (ok, out) = stack.helm_install(&["example.terminationGracePeriodSeconds=40"]);
    assert!(ok, "helm install failed: {out}");

    let plans: Api<ShardPlan> = Api::namespaced(client.clone(), NS);
    let first = wait_settled(&plans, "actors", 3, 0, T)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", stack.log_tails("aether-operator")));
    let leases: Api<Lease> = Api::namespaced(client.clone(), NS);
    let holder = leases
        .get("aether-operator")
        .await
        .expect("the leader Lease exists (RBAC lets the operator write it)")
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap_or_default();
    assert!(
        holder.starts_with("aether-"),
        "an operator pod leads: {holder:?}"
    );

    // A kubelet refuses runAsNonRoot when it cannot verify the user is not root (no numeric
    // runAsUser, as the chart's containers have): the pod never runs.
    let rootless = serde_json::from_value::<Pod>(serde_json::json!({
        "metadata": {"name": "unverified-user"},
        "spec": {
            "securityContext": {"runAsNonRoot": true},
            "containers": [{"name": "node", "image": "ghcr.io/aether-dev/aether-node:test", "args": ["run"]}]
        }
    }))
    .expect("a pod");
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    pods.create(&Default::default(), &rootless)
        .await
        .expect("the pod is created");
    wait_for("the kubelet to refuse the container", T, || async {
        pods.get("unverified-user").await.is_ok_and(|p| {
            p.status
                .and_then(|s| s.container_statuses)
                .into_iter()
                .flatten()
                .any(|c| {
                    c.state.and_then(|s| s.waiting).is_some_and(|w| {
                        w.reason.as_deref() == Some("CreateContainerConfigError")
                            && w.message
                                .is_some_and(|m| m.contains("cannot verify user is non-root"))
                    })
                })
        })
    })
    .await;
    assert!(
        !kubelet.signal(NS, "unverified-user", "0"),
        "no process runs for it"
    );
    pods.delete("unverified-user", &Default::default())
        .await
        .expect("deleted");

    // kubectl apply the README's ShardPlan (same name: it adds the migration limits), and bad ones.
    let example = stack.example_shardplan();
    let (ok, out) = stack.kubectl(&["apply", "-f", "-"], Some(&example));
    assert!(ok, "kubectl apply of the example failed: {out}");
    assert!(out.contains("shardplan.aether.dev/actors"), "{out}");
    let (ok, out) = stack.kubectl(
        &["apply", "-f", "-"],
        Some(&example.replace("shards: 1024", "shards: 512")),
    );
    assert!(!ok && out.contains("shards is immutable"), "{out}");
    let zero = example
        .replace("name: actors", "name: bad")
        .replace("shards: 1024", "shards: 0");
    let (ok, out) = stack.kubectl(&["apply", "-f", "-"], Some(&zero));
    assert!(!ok && out.contains("spec.shards"), "{out}");
    let applied = wait_settled(&plans, "actors", 3, 0, T)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        applied.spec.migration.max_concurrent, 4,
        "the applied limits are in the spec"
    );

    // A few thousand actors with known state.
    let app = Client::new(nc.clone(), PREFIX);
    let warm = run_load(&app, "acct", ACTORS, ACTORS, 16, T).await;
    assert_eq!(warm.errors, 0, "warm-up commands failed");
    bank::open(&app, ACCOUNTS, T)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let stop = Arc::new(AtomicBool::new(false));
    let load = writer(app.clone(), stop.clone());
    let money: Vec<_> = (0..2)
        .map(|lane| bank::transfers(app.clone(), ACCOUNTS, stop.clone(), lane, T))
        .collect();
    let holding = bank::holds(app.clone(), ACCOUNTS, stop.clone(), 0, T);

    // 3 -> 5: only shards that now belong to a new pod moved.
    let before = owners(&first);
    let epoch = first.status.clone().unwrap_or_default().epoch;
    let (ok, out) = stack.kubectl(&["scale", "statefulset", "actors", "--replicas=5"], None);
    assert!(ok, "{out}");
    let five = wait_settled(&plans, "actors", 5, epoch, T)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let after = owners(&five);
    let mut moved = 0;
    for (shard, (a, b)) in before.iter().zip(&after).enumerate() {
        if a != b {
            moved += 1;
            assert!(
                b == "actors-3" || b == "actors-4",
                "shard {shard} moved between survivors: {a} -> {b}"
            );
        }
    }
    let joiners = after
        .iter()
        .filter(|o| *o == "actors-3" || *o == "actors-4")
        .count();
    assert_eq!(
        moved, joiners,
        "every shard of a joiner moved, nothing else"
    );
    eprintln!("3 -> 5: {moved} of {SHARDS} shards moved");

    // 5 -> 2, and SIGKILL the node of a leaving pod while its shards move away.
    let epoch = five.status.clone().unwrap_or_default().epoch;
    let (ok, out) = stack.kubectl(&["scale", "statefulset", "actors", "--replicas=2"], None);
    assert!(ok, "{out}");
    // actors-4 hangs (SIGSTOP) as soon as it is told to go, so moves from it are planned and cannot
    // finish; then it dies (SIGKILL) and the kubelet removes its pod.
    wait_for("actors-4 terminating", T, || async {
        pods.get("actors-4")
            .await
            .is_ok_and(|p| p.metadata.deletion_timestamp.is_some())
    })
    .await;
    assert!(
        kubelet.signal(NS, "actors-4", "STOP"),
        "actors-4 has a node process"
    );
    wait_for("moves from actors-4 planned", T, || async {
        plans.get("actors").await.is_ok_and(|sp| {
            let s = sp.status.clone().unwrap_or_default();
            s.epoch > epoch
                && s.moves
                    .iter()
                    .any(|m| m.from.as_deref() == Some("actors-4"))
        })
    })
    .await;
    assert!(kubelet.kill(NS, "actors-4"), "actors-4 has a node process");
    let mut seen = Vec::new();
    let two = {
        let deadline = std::time::Instant::now() + T;
        loop {
            let sp = plans.get("actors").await.expect("get");
            let s = sp.status.clone().unwrap_or_default();
            for m in &s.moves {
                let line = format!(
                    "{:?} from {:?} attempts {} {}",
                    m.phase,
                    m.from,
                    m.attempts,
                    m.last_error.clone().unwrap_or_default()
                );
                if !seen.contains(&line) {
                    seen.push(line);
                }
            }
            if settled(&sp, 2, epoch) && kubelet.running().len() == 4 {
                break sp;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "not settled on 2 members: {}",
                brief(&sp)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    eprintln!("5 -> 2 with actors-4 killed, moves seen: {seen:#?}");
    let events: Api<Event> = Api::namespaced(client.clone(), NS);
    let warnings: Vec<String> = events
        .list(&Default::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .map(|e| {
            format!(
                "{}: {}",
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default()
            )
        })
        .collect();
    eprintln!("warning events: {warnings:#?}");
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("SourceGone") && w.contains("actors-4")),
        "the ShardPlan's events say actors-4 left before handing over its shards"
    );
    let last = owners(&two);
    for (shard, (a, b)) in after.iter().zip(&last).enumerate() {
        if a == "actors-0" || a == "actors-1" {
            assert_eq!(a, b, "shard {shard} of a survivor moved");
        }
    }

    stop.store(true, Ordering::Relaxed);
    let report = load.await.expect("writer");
    eprintln!(
        "writer: {} acknowledged, {} failed during the scaling",
        report.ok, report.errors
    );
    assert!(report.ok > 0, "the writer wrote during the scaling");
    let mut acked = warm.acked;
    for (k, v) in report.acked {
        *acked.entry(k).or_default() += v;
    }
    assert_nothing_acked_lost(SHARDS, &node_nc, PREFIX, &app, &acked, report.errors == 0).await;

    // The bank: each account holds its opening deposit, minus what it sent, plus what it received,
    // by the acknowledged transfers alone. Deposits still in an outbox (a sender whose pod died)
    // are sent when the sender is loaded; reading every account loads them.
    let mut acked_transfers = Vec::new();
    for lane in money {
        let done = lane
            .await
            .expect("transfers")
            .unwrap_or_else(|e| panic!("{e}"));
        acked_transfers.extend(done);
    }
    eprintln!(
        "bank: {} transfers acknowledged during the scaling",
        acked_transfers.len()
    );
    assert!(
        !acked_transfers.is_empty(),
        "transfers ran during the scaling"
    );
    // Holds: a captured one is paid out; one left alone comes back when its timer fires, through
    // the scaling and the killed pod, once.
    let holds = holding
        .await
        .expect("holds")
        .unwrap_or_else(|e| panic!("{e}"));
    let captured: i64 = holds.iter().filter(|h| h.2).map(|h| h.1).sum();
    eprintln!(
        "bank: {} holds acknowledged, {} captured, {} left to their timers",
        holds.len(),
        holds.iter().filter(|h| h.2).count(),
        holds.iter().filter(|h| !h.2).count()
    );
    assert!(
        holds.iter().any(|h| !h.2),
        "holds were left to their timers"
    );
    let expected = bank::expected_with(ACCOUNTS, &acked_transfers, &holds);
    assert_eq!(
        expected.iter().sum::<i64>(),
        bank::OPENING * ACCOUNTS as i64 - captured
    );
    bank::settle(&app, &expected, T)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    // Over TLS, with each role's permissions, nobody was refused anything.
    let violations = stack.nats_violations();
    assert!(
        violations.is_empty(),
        "nats-server refused: {violations:#?}"
    );
    // Every container of every deleted pod stopped by its own SIGTERM handler (as a container's
    // PID 1, one without a handler would hold its pod for the whole grace period).
    let ignored = stack.kubelet.ignored_sigterm();
    assert!(ignored.is_empty(), "no SIGTERM handler: {ignored:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_restart_under_load_fails_nothing_and_loses_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let stack = Stack::start().await;
    let client = stack.cp.client().await;
    let nc = stack.connect_as(Role::Client).await;
    let node_nc = stack.connect_as(Role::Node).await;
    let (ok, out) = stack.helm_install(&["example.terminationGracePeriodSeconds=40"]);
    assert!(ok, "helm install failed: {out}");
    let plans: Api<ShardPlan> = Api::namespaced(client.clone(), NS);
    wait_settled(&plans, "actors", 3, 0, T)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", stack.log_tails("aether-operator")));
    let app = Client::new(nc.clone(), PREFIX);
    let warm = run_load(&app, "roll", ROLL_ACTORS, ROLL_ACTORS, 16, T).await;
    assert_eq!(warm.errors, 0, "warm-up commands failed");
    let mut acked = warm.acked;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let uids = || async {
        pods.list(&Default::default())
            .await
            .expect("pods")
            .items
            .into_iter()
            .filter(|p| {
                p.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.starts_with("actors-"))
            })
            .filter_map(|p| p.metadata.uid)
            .collect::<std::collections::BTreeSet<_>>()
    };

    // With the drain: each pod's node hands its shards over before it exits.
    let before = uids().await;
    let drained = rollout_under_load(|a| stack.kubectl(a, None), &plans, &app, 1).await;
    let o = drained.outage;
    eprintln!(
        "rollout with drain: {} calls, {} failed, unavailable p50 {:.1} ms p99 {:.1} ms max {:.1} ms, took {:.1} s",
        o.calls,
        o.failed,
        o.p50_ms,
        o.p99_ms,
        o.max_ms,
        drained.took.as_secs_f64()
    );
    eprintln!("{}", slow_calls(&drained.slow, 20));
    // The baseline: the same load as long with nothing changing.
    let steady = steady_load(&app, 3, drained.took + Duration::from_secs(2)).await;
    let s = steady.outage;
    eprintln!(
        "steady load: {} calls, {} failed, unavailable p50 {:.1} ms p99 {:.1} ms max {:.1} ms over {:.1} s",
        s.calls,
        s.failed,
        s.p50_ms,
        s.p99_ms,
        s.max_ms,
        steady.took.as_secs_f64()
    );
    eprintln!("{}", slow_calls(&steady.slow, 5));
    // Issue 33's goal: per-actor unavailability p99 <= 20 ms and max <= 100 ms. This machine's
    // calls take up to ~20 ms with nothing changing (2 cores for the control plane, nine processes
    // and the load), so each bound allows for what the steady load shows: p99 at most 20 ms or
    // twice the steady p99, max at most 100 ms beyond the steady max. BENCHMARKS.md has the runs
    // against the bare goal.
    assert!(
        o.p99_ms <= 20.0_f64.max(2.0 * s.p99_ms),
        "rollout p99 {:.1} ms over 20 ms and over 2x the steady load's {:.1} ms\n{}",
        o.p99_ms,
        s.p99_ms,
        slow_calls(&drained.slow, 20)
    );
    assert!(
        o.max_ms <= 100.0 + s.max_ms,
        "an actor was unavailable {:.1} ms in the rollout (goal <= 100 ms; steady max {:.1} ms)\n{}",
        o.max_ms,
        s.max_ms,
        slow_calls(&drained.slow, 20)
    );
    for (k, v) in steady.acked {
        *acked.entry(k).or_default() += v;
    }
    assert!(uids().await.is_disjoint(&before), "every pod was replaced");
    assert!(o.calls > 0, "the load ran during the rollout");
    assert_eq!(o.failed, 0, "calls failed during the rollout");
    for (k, v) in drained.acked {
        *acked.entry(k).or_default() += v;
    }
    assert_nothing_acked_lost(SHARDS, &node_nc, PREFIX, &app, &acked, true).await;

    // The baseline: the same rollout with sidecars that do not drain (`--drain-timeout 0`: on
    // SIGTERM the node stops at once and the others rebuild its shards from the log). The patch
    // itself rolls the pods (the old ones still drain); the next rollout is the one measured.
    let (ok, out) = stack.kubectl(
        &[
            "patch",
            "statefulset",
            "actors",
            "--type=json",
            "-p",
            r#"[{"op":"test","path":"/spec/template/spec/containers/0/name","value":"aether-node"},
                {"op":"replace","path":"/spec/template/spec/containers/0/args","value":["run","--log-json","--drain-timeout","0"]}]"#,
        ],
        None,
    );
    assert!(ok, "{out}");
    let (ok, out) = tokio::task::block_in_place(|| {
        stack.kubectl(
            &[
                "rollout",
                "status",
                "statefulset",
                "actors",
                "--timeout=300s",
            ],
            None,
        )
    });
    assert!(ok, "the patch's rollout did not finish: {out}");
    wait_settled(&plans, "actors", 3, 0, T)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", stack.log_tails("aether-operator")));
    let killed = rollout_under_load(|a| stack.kubectl(a, None), &plans, &app, 2).await;
    let k = killed.outage;
    eprintln!(
        "rollout without drain: {} calls, {} failed, unavailable p50 {:.1} ms p99 {:.1} ms max {:.1} ms, took {:.1} s",
        k.calls,
        k.failed,
        k.p50_ms,
        k.p99_ms,
        k.max_ms,
        killed.took.as_secs_f64()
    );
    for (k, v) in killed.acked {
        *acked.entry(k).or_default() += v;
    }
    // Nodes that stop without draining lose no acknowledged command either: each was in the log
    // before its reply.
    assert_nothing_acked_lost(SHARDS, &node_nc, PREFIX, &app, &acked, k.failed == 0).await;
    let violations = stack.nats_violations();
    assert!(
        violations.is_empty(),
        "nats-server refused: {violations:#?}"
    );
    // Every container of every deleted pod stopped by its own SIGTERM handler (as a container's
    // PID 1, one without a handler would hold its pod for the whole grace period).
    let ignored = stack.kubelet.ignored_sigterm();
    assert!(ignored.is_empty(), "no SIGTERM handler: {ignored:?}");
}
