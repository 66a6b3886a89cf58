//! The whole stack a user runs, on loopback: the control plane, the test kubelet (pods as processes),
//! and nats-server; plus `helm` and `kubectl` against it. Used by the end-to-end test and `make demo`.
//! Everything stops on drop: the kubelet's processes first, then NATS, then the control plane.

use crate::k8s::{ControlPlane, helm, k8s_tool, run_tool};
use crate::kubelet::{Kubelet, KubeletConfig};
use crate::{NatsServer, workspace_binary};
use aether_core::crd::ShardPlan;
use kube::Api;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Namespace the chart is installed into.
pub const NS: &str = "aether-system";

/// The running stack.
#[derive(Debug)]
pub struct Stack {
    /// Runs the pods.
    pub kubelet: Kubelet,
    /// The NATS server the sidecars and the operator use.
    pub nats: NatsServer,
    /// etcd, kube-apiserver, kube-controller-manager, kube-scheduler.
    pub cp: ControlPlane,
    /// Pods' logs and kubeconfigs.
    pub logs: PathBuf,
    _tmp: tempfile::TempDir,
}

/// The repository's root.
#[must_use]
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

impl Stack {
    /// Starts everything. Pods' logs go to `$AETHER_TEST_LOGS` when set (kept), else a temporary
    /// directory; their `RUST_LOG` is `$AETHER_POD_RUST_LOG` (default `warn`).
    pub async fn start() -> Self {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let logs = std::env::var_os("AETHER_TEST_LOGS")
            .map_or_else(|| tmp.path().to_path_buf(), PathBuf::from);
        std::fs::create_dir_all(&logs).unwrap_or_else(|e| panic!("{}: {e}", logs.display()));
        let rust_log = std::env::var("AETHER_POD_RUST_LOG").unwrap_or_else(|_| "warn".into());
        let cp = ControlPlane::start().await;
        let nats = NatsServer::start();
        let kubelet = Kubelet::start(
            cp.client().await,
            KubeletConfig {
                node: "node-0".into(),
                images: vec![
                    ("aether-node".into(), workspace_binary("aether-node")),
                    (
                        "aether-operator".into(),
                        workspace_binary("aether-operator"),
                    ),
                    // The example app: a Python script (its shebang runs python3).
                    (
                        "aether-bank-example".into(),
                        crate::app::repo_file("examples/bank/app.py"),
                    ),
                ],
                env: vec![("RUST_LOG".into(), rust_log)],
                api_server: cp.api.url(),
                dir: logs.clone(),
            },
        )
        .await;
        Self {
            kubelet,
            nats,
            cp,
            logs,
            _tmp: tmp,
        }
    }

    /// `kubectl -n aether-system <args>` with the admin kubeconfig; success and output.
    #[must_use]
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> (bool, String) {
        let kubeconfig = self.cp.kubeconfig();
        let mut all = vec!["--kubeconfig", path_str(&kubeconfig), "-n", NS];
        all.extend_from_slice(args);
        run_tool(&k8s_tool("kubectl"), &all, stdin)
    }

    /// `helm install aether charts/aether` into `aether-system`, NATS set to this stack's server, the
    /// example StatefulSet (3 sidecar pods) and its ShardPlan on, plus `--set` of each of `sets`.
    #[must_use]
    pub fn helm_install(&self, sets: &[&str]) -> (bool, String) {
        let kubeconfig = self.cp.kubeconfig();
        let chart = repo().join("charts/aether");
        let nats_url = format!("nats.url={}", self.nats.url());
        let mut args = vec![
            "install",
            "aether",
            path_str(&chart),
            "--kubeconfig",
            path_str(&kubeconfig),
            "--namespace",
            NS,
            "--create-namespace",
            "--set",
            &nats_url,
            "--set",
            "example.enabled=true",
        ];
        for s in sets {
            args.extend(["--set", s]);
        }
        run_tool(&helm(), &args, None)
    }

    /// The README's ShardPlan (`examples/shardplan.yaml`), pointed at this stack's NATS server.
    #[must_use]
    pub fn example_shardplan(&self) -> String {
        std::fs::read_to_string(repo().join("examples/shardplan.yaml"))
            .unwrap_or_else(|e| panic!("examples/shardplan.yaml: {e}"))
            .replace("nats://nats:4222", &self.nats.url())
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str()
        .unwrap_or_else(|| panic!("{} is not UTF-8", p.display()))
}

/// True when the ShardPlan settled on `members` members at an epoch after `after_epoch`: every
/// move done, Ready, its latest generation observed.
#[must_use]
pub fn settled(sp: &ShardPlan, members: u32, after_epoch: u64) -> bool {
    let s = sp.status.clone().unwrap_or_default();
    s.epoch > after_epoch
        && s.member_count == members
        && s.moving == 0
        && s.observed_generation == sp.metadata.generation
        && s.is("Ready")
}

/// Polls ShardPlan `name` until it [`settled`]; after `timeout`, says where it stands.
pub async fn wait_settled(
    plans: &Api<ShardPlan>,
    name: &str,
    members: u32,
    after_epoch: u64,
    timeout: Duration,
) -> Result<ShardPlan, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let sp = plans.get(name).await;
        if let Ok(sp) = &sp
            && settled(sp, members, after_epoch)
        {
            return Ok(sp.clone());
        }
        if Instant::now() >= deadline {
            let now = sp.map_or_else(|e| e.to_string(), |sp| brief(&sp));
            return Err(format!(
                "ShardPlan {name} not settled on {members} members after epoch {after_epoch} within {timeout:?}: {now}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Owner pod of every shard, from the status (the plan it describes).
#[must_use]
pub fn owners(sp: &ShardPlan) -> Vec<String> {
    let plan = sp
        .status
        .as_ref()
        .and_then(aether_core::crd::ShardPlanStatus::plan)
        .unwrap_or_else(|| panic!("the status describes no plan"));
    (0..plan.shards)
        .map(|shard| plan.owner(shard).unwrap_or_default().to_owned())
        .collect()
}

/// The status in a few lines: epoch, members, conditions and the first moves.
pub fn brief(sp: &ShardPlan) -> String {
    let s = sp.status.clone().unwrap_or_default();
    let conditions: Vec<String> = s
        .conditions
        .iter()
        .map(|c| format!("{}={} {} {}", c.type_, c.status, c.reason, c.message))
        .collect();
    let moves: Vec<String> = s
        .moves
        .iter()
        .take(5)
        .map(|m| {
            format!(
                "shard {} {:?}->{} {:?} attempts {} {}",
                m.shard,
                m.from,
                m.to,
                m.phase,
                m.attempts,
                m.last_error.clone().unwrap_or_default()
            )
        })
        .collect();
    format!(
        "epoch {} generation {:?}/{:?} members {:?} moving {} conditions {conditions:?} moves {moves:?}",
        s.epoch,
        s.observed_generation,
        sp.metadata.generation,
        s.members
            .iter()
            .map(|m| (&m.pod, m.bucket, &m.state))
            .collect::<Vec<_>>(),
        s.moving
    )
}
