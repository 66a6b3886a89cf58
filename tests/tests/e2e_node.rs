//! The chart on a real node (issue 34; `make e2e-node`, not part of `make test`): a kubelet,
//! containerd and runc run the images `make images` built, joined to the test control plane
//! (`aether_tests::realnode`), with kube-proxy and CoreDNS. As a user would: NATS in a pod of its
//! own (TLS, the shipped per-role users, the Service `nats`), `helm install` (only the images' pull
//! policy and NATS's `tls://` set), the example StatefulSet with the bank app beside each sidecar;
//! then `kubectl scale` 3 -> 5 -> 2 with the bank's transfers running and a sidecar's container
//! killed during the scale-in, back to 3 and a `kubectl rollout restart` under load. Asserts every
//! pod Ready through its real probes, the runtime enforcing the chart's security context (read from
//! the containers' processes), every counter exact and the bank's money conserved after each step,
//! and no call failed during the rollout. A second test runs the same scale-out on the test kubelet
//! of `make test`, for its time beside the real node's (run one at a time: `--test-threads=1`).
//!
//! Needs root, `make node-tools` and `make node-images` (the `make e2e-node` target runs both).

use aether_core::crd::ShardPlan;
use aether_core::protocol::Outcome;
use aether_node::client::Client;
use aether_tests::auth::Role;
use aether_tests::bank;
use aether_tests::k8s::ControlPlane;
use aether_tests::realnode::{POD_NATS_URL, RealCluster, RealNode};
use aether_tests::rollout::rollout_under_load;
use aether_tests::stack::{self, NS, PREFIX, Stack, brief, helm_install, wait_settled};
use aether_tests::wait_for;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(300);
const COUNTERS: usize = 300;
const ACCOUNTS: usize = 100;

/// Uid, CapEff, NoNewPrivs and Seccomp of a process, from `/proc/<pid>/status`.
fn status_of(pid: u32) -> BTreeMap<String, String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| ["Uid", "CapEff", "NoNewPrivs", "Seccomp"].contains(k))
        .map(|(k, v)| {
            (
                k.to_owned(),
                v.split_whitespace().next().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// The chart's security context, as the runtime applied it to container `c` of `pod`.
fn assert_confined(node: &RealNode, pod: &str, c: &str, uid: &str) {
    let pid = node
        .pid(pod, c)
        .unwrap_or_else(|| panic!("{pod}/{c} is not running"));
    let s = status_of(pid);
    let want: BTreeMap<String, String> = [
        ("CapEff", "0000000000000000"),
        ("NoNewPrivs", "1"),
        ("Seccomp", "2"),
        ("Uid", uid),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(s, want, "{pod}/{c} (pid {pid})");
    let write = std::fs::write(format!("/proc/{pid}/root/probe"), b"x");
    assert!(
        write.is_err_and(|e| e.raw_os_error() == Some(30)),
        "{pod}/{c}: its root filesystem is read-only (EROFS)"
    );
}

fn kubectl(cp: &ControlPlane, args: &[&str]) -> String {
    let (ok, out) = stack::kubectl(cp, args, None);
    assert!(ok, "kubectl {}: {out}", args.join(" "));
    out
}

/// Waits until the ShardPlan settled on `members` after the epoch of `before`.
async fn settle(plans: &Api<ShardPlan>, members: u32, before: &ShardPlan) -> ShardPlan {
    let epoch = before.status.clone().unwrap_or_default().epoch;
    wait_settled(plans, "actors", members, epoch, T)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Adds 1 to each counter, the number of times in `rounds`; returns what was acknowledged.
async fn add_all(client: &Client, round: usize, acked: &mut BTreeMap<String, i64>) {
    for i in 0..COUNTERS {
        let id = format!("c-{i}");
        let r = client.add(&id, 1, format!("r{round}-{i}")).await;
        if r.is_ok_and(|r| matches!(r.outcome, Outcome::Ok(_))) {
            *acked.entry(id).or_default() += 1;
        }
    }
}

/// Every counter holds exactly what was acknowledged.
async fn assert_exact(client: &Client, acked: &BTreeMap<String, i64>, step: &str) {
    for (id, n) in acked {
        let deadline = Instant::now() + T;
        let got = loop {
            let r = client.read("counter", id).await;
            if let Ok(Outcome::Ok(ok)) = r.map(|r| r.outcome) {
                break ok.state["value"].as_i64();
            }
            assert!(Instant::now() < deadline, "{step}: {id} not read");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(got, Some(*n), "{step}: counter {id}");
    }
}

/// Transfers between the bank's accounts (the app container's `account` kind) while `step` runs;
/// the acknowledged ones join `done`, then every account holds exactly what they say (the money
/// conserved, nothing applied twice).
async fn with_transfers<F: std::future::Future>(
    client: &Client,
    lane: u64,
    done: &mut Vec<bank::Transfer>,
    step: F,
) -> F::Output {
    let stop = Arc::new(AtomicBool::new(false));
    let lane = bank::transfers(client.clone(), ACCOUNTS, stop.clone(), lane, T);
    let out = step.await;
    stop.store(true, Ordering::Relaxed);
    let acked = lane
        .await
        .expect("transfers")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!acked.is_empty(), "transfers ran during the step");
    done.extend(acked);
    bank::settle(client, &bank::expected(ACCOUNTS, done), T)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_on_a_real_node_scales_and_survives_a_killed_sidecar() {
    let real = RealCluster::start().await;
    let (cp, node) = (&real.cp, &real.node);

    let (ok, out) = helm_install(&cp.kubeconfig(), POD_NATS_URL, &["image.pullPolicy=Never"]);
    assert!(ok, "helm install: {out}");
    let client = cp.client().await;
    let plans: Api<ShardPlan> = Api::namespaced(client.clone(), NS);
    let t = Instant::now();
    let sp = wait_settled(&plans, "actors", 3, 0, T)
        .await
        .unwrap_or_else(|e| panic!("{e}\nkubelet: {}", node.log("kubelet")));
    eprintln!("helm install -> 3 members Ready in {:?}", t.elapsed());

    // The runtime enforces the chart's security context.
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let operators: Vec<String> = pods
        .list(&kube::api::ListParams::default().labels("app.kubernetes.io/name=aether"))
        .await
        .expect("pods")
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    assert!(!operators.is_empty(), "the operator's pods");
    assert_confined(node, "actors-0", "aether-node", "65532");
    assert_confined(node, "actors-0", "app", "65534");
    for op in &operators {
        assert_confined(node, op, "operator", "65532");
    }

    let nc = stack::connect_as(&RealCluster::host_nats_url(), &real.certs, Role::Client).await;
    let client_nats = Client::new(nc, PREFIX);
    let mut acked = BTreeMap::new();
    add_all(&client_nats, 0, &mut acked).await;
    assert_exact(&client_nats, &acked, "3 pods").await;
    bank::open(&client_nats, ACCOUNTS, T)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut transfers = Vec::new();

    let sp = with_transfers(&client_nats, 0, &mut transfers, async {
        kubectl(cp, &["scale", "statefulset", "actors", "--replicas", "5"]);
        let t = Instant::now();
        let sp = settle(&plans, 5, &sp).await;
        eprintln!(
            "real node: kubectl scale 3 -> 5: every new pod Ready and serving its share in {:?}",
            t.elapsed()
        );
        sp
    })
    .await;
    add_all(&client_nats, 1, &mut acked).await;
    assert_exact(&client_nats, &acked, "5 pods").await;

    // Scale in, and a sidecar's container killed while its shards move.
    let sp = with_transfers(&client_nats, 1, &mut transfers, async {
        kubectl(cp, &["scale", "statefulset", "actors", "--replicas", "2"]);
        let t = Instant::now();
        wait_for("a move under way", T, || async {
            plans
                .get("actors")
                .await
                .is_ok_and(|sp| sp.status.unwrap_or_default().moving > 0)
        })
        .await;
        assert!(
            node.kill("actors-0", "aether-node"),
            "actors-0's sidecar killed"
        );
        let sp = settle(&plans, 2, &sp).await;
        eprintln!(
            "real node: kubectl scale 5 -> 2 with a killed sidecar: settled in {:?}",
            t.elapsed()
        );
        sp
    })
    .await;
    eprintln!(
        "bank: {} transfers acknowledged, money conserved",
        transfers.len()
    );
    wait_for("2 pods left", T, || async {
        pods.list(&kube::api::ListParams::default().labels("app=actors"))
            .await
            .is_ok_and(|l| l.items.len() == 2)
    })
    .await;
    add_all(&client_nats, 2, &mut acked).await;
    assert_exact(&client_nats, &acked, "2 pods").await;
    eprintln!("{}", brief(&sp));

    // Back to 3, then `kubectl rollout restart` under load: every pod replaced by the real
    // kubelet (SIGTERM, the sidecar drains, a new container), no call failed, nothing lost.
    kubectl(cp, &["scale", "statefulset", "actors", "--replicas", "3"]);
    settle(&plans, 3, &sp).await;
    let rolled = rollout_under_load(|a| stack::kubectl(cp, a, None), &plans, &client_nats, 1).await;
    let o = &rolled.outage;
    eprintln!(
        "rollout restart under load on the real node: {:?}, {} calls, {} failed, per-actor unavailability p50 {:.1} ms p99 {:.1} ms max {:.1} ms",
        rolled.took, o.calls, o.failed, o.p50_ms, o.p99_ms, o.max_ms
    );
    assert!(o.calls > 0, "the load ran during the rollout");
    assert_eq!(o.failed, 0, "calls failed during the rollout");
    assert_exact(&client_nats, &rolled.acked, "after the rollout").await;
    assert_exact(&client_nats, &acked, "after the rollout").await;
    // Every account moved twice with its shard and still holds what the transfers say.
    bank::settle(&client_nats, &bank::expected(ACCOUNTS, &transfers), T)
        .await
        .unwrap_or_else(|e| panic!("after the rollout: {e}"));
}

/// The same scale-out on the test kubelet of `make test` (pods as processes of the workspace's
/// binaries), in the same run: its time beside the real node's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_scale_out_on_the_test_kubelet() {
    let stack = Stack::start().await;
    let (ok, out) = stack.helm_install(&[]);
    assert!(ok, "helm install: {out}");
    let plans: Api<ShardPlan> = Api::namespaced(stack.cp.client().await, NS);
    let sp = wait_settled(&plans, "actors", 3, 0, T)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let client = Client::new(stack.connect_as(Role::Client).await, PREFIX);
    let mut acked = BTreeMap::new();
    add_all(&client, 0, &mut acked).await;
    let (ok, out) = stack.kubectl(&["scale", "statefulset", "actors", "--replicas", "5"], None);
    assert!(ok, "kubectl scale: {out}");
    let t = Instant::now();
    settle(&plans, 5, &sp).await;
    eprintln!(
        "test kubelet: kubectl scale 3 -> 5: every new pod Ready and serving its share in {:?}",
        t.elapsed()
    );
    add_all(&client, 1, &mut acked).await;
    assert_exact(&client, &acked, "5 pods on the test kubelet").await;
}
