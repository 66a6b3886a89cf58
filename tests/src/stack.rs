//! The whole stack a user runs, on loopback: the control plane, the test kubelet (pods as processes),
//! and nats-server; plus `helm` and `kubectl` against it. Used by the end-to-end test and `make demo`.
//! Everything stops on drop: the kubelet's processes first, then NATS, then the control plane.
//!
//! NATS runs as a user should run it: TLS only (certificates of a test CA), and the shipped per-role
//! users and permissions (examples/nats/authorization.conf for the prefix `actors`). The chart gets
//! the nodes' user (Secret `nats-node`), the operator's (Secret `nats-operator`, labelled to opt in,
//! with the CA) and the CA for the sidecars (Secret `nats-tls`).

pub use crate::auth::repo;
use crate::auth::{Certs, ROLE_PASSWORDS, Role, roles_conf};
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
    /// The NATS server the sidecars and the operator use (TLS, per-role users).
    pub nats: NatsServer,
    /// Its URL, `tls://127.0.0.1:<port>`.
    pub nats_url: String,
    /// The certificates NATS uses (`ca.crt` signed its server certificate).
    pub certs: Certs,
    nats_log: PathBuf,
    /// etcd, kube-apiserver, kube-controller-manager, kube-scheduler.
    pub cp: ControlPlane,
    /// Pods' logs and kubeconfigs.
    pub logs: PathBuf,
    _tmp: tempfile::TempDir,
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
        let certs = Certs::make();
        let conf = tmp.path().join("nats-authorization.conf");
        std::fs::write(&conf, roles_conf(PREFIX)).unwrap_or_else(|e| panic!("{e}"));
        let nats_log = tmp.path().join("nats.log");
        let mut args = vec![
            "-c".to_owned(),
            conf.display().to_string(),
            "-l".to_owned(),
            nats_log.display().to_string(),
        ];
        args.extend(certs.server_args(false));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let nats = NatsServer::start_with_env(&args, &ROLE_PASSWORDS);
        let nats_url = nats.url().replace("nats://", "tls://");
        create_secrets(&cp, &certs).await;
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
            nats_url,
            certs,
            nats_log,
            cp,
            logs,
            _tmp: tmp,
        }
    }

    /// `kubectl -n aether-system <args>` with the admin kubeconfig; success and output.
    #[must_use]
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> (bool, String) {
        kubectl(&self.cp, args, stdin)
    }

    /// `helm install aether charts/aether` into `aether-system`, NATS set to this stack's server, the
    /// example StatefulSet (3 sidecar pods) and its ShardPlan on, plus `--set` of each of `sets`.
    #[must_use]
    pub fn helm_install(&self, sets: &[&str]) -> (bool, String) {
        helm_install(&self.cp.kubeconfig(), &self.nats_url, sets)
    }

    /// The README's ShardPlan (`examples/shardplan.yaml`), pointed at this stack's NATS server.
    #[must_use]
    pub fn example_shardplan(&self) -> String {
        example_shardplan(&self.nats_url)
    }

    /// A connection to NATS as `role` (TLS verified against the test CA).
    pub async fn connect_as(&self, role: Role) -> async_nats::Client {
        connect_as(&self.nats_url, &self.certs, role).await
    }

    /// The last lines of the logs of every container whose pod's name starts with `pod_prefix`
    /// (e.g. `aether-operator`), for a failure's message.
    #[must_use]
    pub fn log_tails(&self, pod_prefix: &str) -> String {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.logs)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.retain(|p| {
            p.extension().is_some_and(|e| e == "log")
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(pod_prefix))
        });
        files.sort();
        files
            .iter()
            .map(|p| {
                let text = std::fs::read_to_string(p).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                format!(
                    "--- {}:\n{}",
                    p.display(),
                    lines[lines.len().saturating_sub(20)..].join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The lines of the NATS server's log that say it refused something.
    #[must_use]
    pub fn nats_violations(&self) -> Vec<String> {
        crate::nats_violations(&self.nats_log)
    }
}

/// The example's subject prefix (the chart's `example.subjectPrefix`).
pub const PREFIX: &str = "actors";

/// `kubectl -n aether-system <args>` against `cp` with the admin kubeconfig; success and output.
#[must_use]
pub fn kubectl(cp: &ControlPlane, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let kubeconfig = cp.kubeconfig();
    let mut all = vec!["--kubeconfig", path_str(&kubeconfig), "-n", NS];
    all.extend_from_slice(args);
    run_tool(&k8s_tool("kubectl"), &all, stdin)
}

/// The README's ShardPlan (`examples/shardplan.yaml`), pointed at NATS at `nats_url` with the
/// operator's Secret of [`create_secrets`].
#[must_use]
pub fn example_shardplan(nats_url: &str) -> String {
    std::fs::read_to_string(repo().join("examples/shardplan.yaml"))
        .unwrap_or_else(|e| panic!("examples/shardplan.yaml: {e}"))
        .replace("nats://nats:4222", nats_url)
        .replace(
            "    subjectPrefix: actors\n",
            "    subjectPrefix: actors\n    credentialsSecret: nats-operator\n",
        )
}

/// A connection to NATS at `url` as `role` (TLS verified against `certs`' CA).
pub async fn connect_as(url: &str, certs: &Certs, role: Role) -> async_nats::Client {
    let (user, password) = role.user(PREFIX);
    async_nats::ConnectOptions::with_user_and_password(user, password)
        .custom_inbox_prefix(role.inbox(PREFIX))
        .add_root_certificates(certs.path("ca.crt"))
        .require_tls(true)
        .retry_on_initial_connect()
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect to {url} as {role:?}: {e}"))
}

/// `helm install aether charts/aether` into `aether-system` as a user would: NATS at `nats_url`
/// (TLS, the Secrets of [`create_secrets`]), the example StatefulSet (3 sidecar pods) and its
/// ShardPlan on, plus `--set` of each of `sets`.
#[must_use]
pub fn helm_install(kubeconfig: &Path, nats_url: &str, sets: &[&str]) -> (bool, String) {
    let chart = repo().join("charts/aether");
    let nats_url = format!("nats.url={nats_url}");
    let mut args = vec![
        "install",
        "aether",
        path_str(&chart),
        "--kubeconfig",
        path_str(kubeconfig),
        "--namespace",
        NS,
        "--create-namespace",
        "--set",
        &nats_url,
        "--set",
        "example.enabled=true",
        "--set",
        "nats.credentialsSecret=nats-node",
        "--set",
        "nats.operatorCredentialsSecret=nats-operator",
        "--set",
        "nats.tlsSecret=nats-tls",
    ];
    for s in sets {
        args.extend(["--set", s]);
    }
    run_tool(&helm(), &args, None)
}

/// The namespace and the Secrets the chart is installed with: the nodes' user, the operator's
/// (labelled to opt in, with the CA), the CA for the sidecars.
pub async fn create_secrets(cp: &ControlPlane, certs: &Certs) {
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::{Namespace, Secret};
    use kube::api::PostParams;
    let client = cp.client().await;
    let mut ns = Namespace::default();
    ns.metadata.name = Some(NS.into());
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("create namespace {NS}: {e}"));
    let ca = std::fs::read(certs.path("ca.crt")).unwrap_or_else(|e| panic!("ca.crt: {e}"));
    let secret = |name: &str, labelled: bool, data: Vec<(&str, Vec<u8>)>| {
        let mut s = Secret::default();
        s.metadata.name = Some(name.into());
        if labelled {
            s.metadata.labels = Some(
                [(
                    aether_operator::credentials::OPT_IN_LABEL.to_owned(),
                    "true".to_owned(),
                )]
                .into(),
            );
        }
        s.data = Some(
            data.into_iter()
                .map(|(k, v)| (k.to_owned(), ByteString(v)))
                .collect(),
        );
        s
    };
    let (node_user, node_password) = Role::Node.user(PREFIX);
    let (op_user, op_password) = Role::Operator.user(PREFIX);
    let secrets = [
        secret(
            "nats-node",
            false,
            vec![
                ("user", node_user.into_bytes()),
                ("password", node_password.into_bytes()),
            ],
        ),
        secret(
            "nats-operator",
            true,
            vec![
                ("user", op_user.into_bytes()),
                ("password", op_password.into_bytes()),
                ("ca.crt", ca.clone()),
            ],
        ),
        secret("nats-tls", false, vec![("ca.crt", ca)]),
    ];
    let api: Api<Secret> = Api::namespaced(client, NS);
    for s in secrets {
        api.create(&PostParams::default(), &s)
            .await
            .unwrap_or_else(|e| panic!("create Secret {:?}: {e}", s.metadata.name));
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
