//! The chart on a real node (issue 34; `make e2e-node`, not part of `make test`): a kubelet,
//! containerd and runc run the images `make images` built, joined to the test control plane
//! (`aether_tests::realnode`). As a user would: `helm install` (only the images' pull policy set),
//! NATS with TLS and the shipped per-role users, the example StatefulSet with the bank app beside
//! each sidecar; then `kubectl scale` 3 -> 5 -> 2 with a sidecar's container killed during the
//! scale-in, back to 3 and a `kubectl rollout restart` under load. Asserts every pod Ready through
//! its real probes, the runtime enforcing the chart's security context (read from the containers'
//! processes), every counter exact after each step, and no call failed during the rollout.
//!
//! Needs root, `make node-tools` and `make images` (the `make e2e-node` target runs both).

use aether_core::crd::ShardPlan;
use aether_core::protocol::Outcome;
use aether_node::client::Client;
use aether_tests::auth::{Certs, ROLE_PASSWORDS, Role, roles_conf};
use aether_tests::k8s::{ControlPlane, k8s_tool, run_tool};
use aether_tests::realnode::{BRIDGE_IP, Bridge, PAUSE_IMAGE, RealNode};
use aether_tests::rollout::rollout_under_load;
use aether_tests::stack::{NS, PREFIX, brief, create_secrets, helm_install, wait_settled};
use aether_tests::{NatsServer, wait_for};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(300);
const COUNTERS: usize = 300;

fn image(name: &str) -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| aether_tests::stack::repo().join("target"), PathBuf::from);
    let path = dir.join("images").join(format!("{name}.tar"));
    assert!(
        path.is_file(),
        "{} is missing: run `make images` (and `make e2e-node` builds the pause image)",
        path.display()
    );
    path
}

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

/// `kubectl -n aether-system <args>` with the admin kubeconfig: success and output.
fn kubectl_ns(cp: &ControlPlane, args: &[&str]) -> (bool, String) {
    let kubeconfig = cp.kubeconfig();
    let mut all = vec![
        "--kubeconfig",
        kubeconfig.to_str().unwrap_or_default(),
        "-n",
        NS,
    ];
    all.extend_from_slice(args);
    run_tool(&k8s_tool("kubectl"), &all, None)
}

fn kubectl(cp: &ControlPlane, args: &[&str]) -> String {
    let (ok, out) = kubectl_ns(cp, args);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_on_a_real_node_scales_and_survives_a_killed_sidecar() {
    let _bridge = Bridge::up();
    let cp = ControlPlane::start_on(BRIDGE_IP).await;
    let images: Vec<PathBuf> = [
        "pause",
        "aether-node",
        "aether-operator",
        "aether-bank-example",
    ]
    .iter()
    .map(|i| image(i))
    .collect();
    let t = Instant::now();
    let node = RealNode::start(&cp, "real-0", &images).await;
    eprintln!("node Ready in {:?} ({PAUSE_IMAGE} built here)", t.elapsed());

    // NATS as a user runs it: TLS, the shipped per-role users; on the bridge, where pods reach it.
    let certs = Certs::make_for(&[BRIDGE_IP]);
    let conf = certs.path("authorization.conf");
    std::fs::write(&conf, roles_conf(PREFIX)).expect("authorization.conf");
    let mut args = vec!["-c".to_owned(), conf.display().to_string()];
    args.extend(certs.server_args(false));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let nats = NatsServer::start_on(BRIDGE_IP, &args, &ROLE_PASSWORDS);
    let nats_url = nats.url().replace("nats://", "tls://");
    create_secrets(&cp, &certs).await;

    let (ok, out) = helm_install(&cp.kubeconfig(), &nats_url, &["image.pullPolicy=Never"]);
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
    assert_confined(&node, "actors-0", "aether-node", "65532");
    assert_confined(&node, "actors-0", "app", "65534");
    for op in &operators {
        assert_confined(&node, op, "operator", "65532");
    }

    let (user, password) = Role::Client.user(PREFIX);
    let nc = async_nats::ConnectOptions::with_user_and_password(user, password)
        .custom_inbox_prefix(Role::Client.inbox(PREFIX))
        .add_root_certificates(certs.path("ca.crt"))
        .require_tls(true)
        .connect(nats_url.as_str())
        .await
        .expect("the client user connects");
    let client_nats = Client::new(nc, PREFIX);
    let mut acked = BTreeMap::new();
    add_all(&client_nats, 0, &mut acked).await;
    assert_exact(&client_nats, &acked, "3 pods").await;

    kubectl(&cp, &["scale", "statefulset", "actors", "--replicas", "5"]);
    let t = Instant::now();
    let sp = settle(&plans, 5, &sp).await;
    eprintln!("kubectl scale 3 -> 5: settled in {:?}", t.elapsed());
    add_all(&client_nats, 1, &mut acked).await;
    assert_exact(&client_nats, &acked, "5 pods").await;

    // Scale in, and a sidecar's container killed while its shards move.
    kubectl(&cp, &["scale", "statefulset", "actors", "--replicas", "2"]);
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
        "kubectl scale 5 -> 2 with a killed sidecar: settled in {:?}",
        t.elapsed()
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
    kubectl(&cp, &["scale", "statefulset", "actors", "--replicas", "3"]);
    settle(&plans, 3, &sp).await;
    let rolled = rollout_under_load(|a| kubectl_ns(&cp, a), &plans, &client_nats, 1).await;
    let o = &rolled.outage;
    eprintln!(
        "rollout restart under load on the real node: {:?}, {} calls, {} failed, per-actor unavailability p50 {:.1} ms p99 {:.1} ms max {:.1} ms",
        rolled.took, o.calls, o.failed, o.p50_ms, o.p99_ms, o.max_ms
    );
    assert!(o.calls > 0, "the load ran during the rollout");
    assert_eq!(o.failed, 0, "calls failed during the rollout");
    assert_exact(&client_nats, &rolled.acked, "after the rollout").await;
    assert_exact(&client_nats, &acked, "after the rollout").await;
}
