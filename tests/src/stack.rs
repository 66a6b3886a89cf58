//! The whole stack a user runs, on loopback: the control plane, the test kubelet (pods as processes),
//! and nats-server; plus `helm` and `kubectl` against it. Used by the end-to-end test and `make demo`.
//! Everything stops on drop: the kubelet's processes first, then NATS, then the control plane.

use crate::k8s::{ControlPlane, helm, k8s_tool, run_tool};
use crate::kubelet::{Kubelet, KubeletConfig};
use crate::{NatsServer, workspace_binary};
use std::path::{Path, PathBuf};

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
