//! A real Kubernetes control plane for tests: etcd, kube-apiserver, kube-controller-manager and
//! kube-scheduler built from Go modules (`tools/build-k8s.sh`), on loopback ports, with a token for an
//! admin user. [`ApiServer`] is etcd and the API server alone (tests then create pods themselves);
//! [`ControlPlane`] adds the controllers and the scheduler, and `crate::kubelet` plays the kubelet.

use crate::{Process, free_port};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Kubernetes version of the control plane (the k8s-openapi feature is `v1_36`).
pub const K8S_VERSION: &str = "v1.36.3";
/// etcd version.
pub const ETCD_VERSION: &str = "v3.6.16";
const TOKEN: &str = "aether-test-admin-token";

/// Helm version (`make tools`).
pub const HELM_VERSION: &str = "v3.22.0";

/// A tool built by `make tools`: `$env` if set, else `$AETHER_TOOLS_DIR` (default
/// `~/.cache/aether/tools`)`/<dir>/<name>`. Panics (the test fails) naming what to run when it is missing.
#[must_use]
pub fn tool(name: &str, dir: &str, env: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let tools = std::env::var_os("AETHER_TOOLS_DIR").map_or_else(
        || {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default()
                .join(".cache/aether/tools")
        },
        PathBuf::from,
    );
    let p = tools.join(dir).join(name);
    assert!(
        p.is_file(),
        "{} is missing: run `make tools` or set {env}",
        p.display()
    );
    p
}

/// A Kubernetes binary of [`K8S_VERSION`] (kube-apiserver, kubectl, ...).
#[must_use]
pub fn k8s_tool(name: &str) -> PathBuf {
    let env = format!("AETHER_{}", name.to_uppercase().replace('-', "_"));
    tool(name, &format!("kubernetes-{K8S_VERSION}"), &env)
}

/// The helm binary.
#[must_use]
pub fn helm() -> PathBuf {
    tool("helm", &format!("helm-{HELM_VERSION}"), "AETHER_HELM")
}

/// etcd plus kube-apiserver, torn down on drop.
#[derive(Debug)]
pub struct ApiServer {
    _etcd: Process,
    _apiserver: Process,
    addr: String,
    port: u16,
    dir: tempfile::TempDir,
}

impl ApiServer {
    /// Starts etcd and kube-apiserver on loopback and waits until the API server is ready.
    pub async fn start() -> Self {
        Self::start_with("127.0.0.1", false).await
    }

    /// [`ApiServer::start`] with the API server listening on, and advertising, `addr` (the real
    /// node's bridge address, which its pods reach through the `kubernetes` Service), and the
    /// `ServiceAccount` admission plugin on: a real kubelet mounts the service account token it
    /// adds to each pod (the test kubelet gives pods a kubeconfig instead).
    pub async fn start_on(addr: &str) -> Self {
        Self::start_with(addr, true).await
    }

    async fn start_with(addr: &str, service_accounts: bool) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let (client, peer) = (free_port(), free_port());
        let etcd = Command::new(tool("etcd", &format!("etcd-{ETCD_VERSION}"), "AETHER_ETCD"))
            .args(["--data-dir"])
            .arg(dir.path().join("etcd"))
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{client}"),
            ])
            .args([
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{client}"),
            ])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
            ])
            .args([
                "--initial-cluster",
                &format!("default=http://127.0.0.1:{peer}"),
            ])
            .args(["--unsafe-no-fsync", "--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("etcd: {e}"));
        let etcd = Process { child: etcd };
        let key = dir.path().join("sa.key");
        let ok = Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(&key)
            .arg("2048")
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "openssl genrsa failed: the API server needs a service-account key"
        );
        let tokens = dir.path().join("tokens.csv");
        std::fs::write(&tokens, format!("{TOKEN},admin,admin,system:masters\n"))
            .unwrap_or_else(|e| panic!("token file: {e}"));
        let port = free_port();
        let apiserver = Command::new(k8s_tool("kube-apiserver"))
            .args(["--etcd-servers", &format!("http://127.0.0.1:{client}")])
            .args(["--bind-address", addr, "--secure-port", &port.to_string()])
            .arg("--cert-dir")
            .arg(dir.path().join("certs"))
            .arg("--token-auth-file")
            .arg(&tokens)
            .arg("--service-account-key-file")
            .arg(&key)
            .arg("--service-account-signing-key-file")
            .arg(&key)
            .args(["--service-account-issuer", "https://kubernetes.default.svc"])
            .args([
                "--authorization-mode",
                "RBAC",
                "--service-cluster-ip-range",
                "10.0.0.0/24",
            ])
            .args(if service_accounts {
                ["--enable-admission-plugins", "ServiceAccount"]
            } else {
                ["--disable-admission-plugins", "ServiceAccount"]
            })
            .args(["--advertise-address", addr])
            // Logs and exec reach a kubelet at its Node's address, not its name.
            .args(["--kubelet-preferred-address-types", "InternalIP"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("kube-apiserver: {e}"));
        let s = Self {
            _etcd: etcd,
            _apiserver: Process { child: apiserver },
            addr: addr.to_owned(),
            port,
            dir,
        };
        let client = s.client().await;
        let start = Instant::now();
        loop {
            let ready = client
                .request_text(http_get("/readyz"))
                .await
                .is_ok_and(|t| t.trim() == "ok");
            if ready {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "kube-apiserver not ready within 90s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        s
    }

    /// `https://<addr>:<port>`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("https://{}:{}", self.addr, self.port)
    }

    /// The CA of the API server's own (self-signed) serving certificate: what pods verify it with
    /// (`kube-root-ca.crt`).
    #[must_use]
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("certs").join("apiserver.crt")
    }

    /// The directory of this server's files (etcd data, keys, kubeconfigs).
    #[must_use]
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Writes a kubeconfig for `token` at `path`.
    pub fn write_kubeconfig(&self, path: &std::path::Path, user: &str, token: &str) {
        std::fs::write(path, kubeconfig_text(&self.url(), user, token, "default"))
            .unwrap_or_else(|e| panic!("kubeconfig: {e}"));
    }

    /// A kubeconfig for the admin user, written next to the server's files.
    #[must_use]
    pub fn kubeconfig(&self) -> PathBuf {
        let path = self.dir.path().join("kubeconfig");
        self.write_kubeconfig(&path, "admin", TOKEN);
        path
    }

    /// An admin client.
    pub async fn client(&self) -> kube::Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(self.kubeconfig())
            .unwrap_or_else(|e| panic!("kubeconfig: {e}"));
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("kube config: {e}"));
        kube::Client::try_from(config).unwrap_or_else(|e| panic!("kube client: {e}"))
    }
}

/// The whole control plane: etcd, kube-apiserver, kube-controller-manager and kube-scheduler. Nodes and
/// pods are played by `crate::kubelet::Kubelet`.
#[derive(Debug)]
pub struct ControlPlane {
    _controller_manager: Process,
    _scheduler: Process,
    /// The API server (and etcd).
    pub api: ApiServer,
}

impl ControlPlane {
    /// Starts etcd and the API server, then the controller manager and the scheduler.
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1").await
    }

    /// [`ControlPlane::start`] with the API server on `addr` (see [`ApiServer::start_on`]).
    pub async fn start_on(addr: &str) -> Self {
        let api = ApiServer::start_on(addr).await;
        let kubeconfig = api.kubeconfig();
        let key = api.dir().join("sa.key");
        let controller_manager = component("kube-controller-manager", &kubeconfig)
            .arg("--service-account-private-key-file")
            .arg(&key)
            .arg("--root-ca-file")
            .arg(api.ca())
            .arg("--use-service-account-credentials=false")
            .args(["--controllers", "*"])
            .spawn()
            .unwrap_or_else(|e| panic!("kube-controller-manager: {e}"));
        let scheduler = component("kube-scheduler", &kubeconfig)
            .spawn()
            .unwrap_or_else(|e| panic!("kube-scheduler: {e}"));
        Self {
            _controller_manager: Process {
                child: controller_manager,
            },
            _scheduler: Process { child: scheduler },
            api,
        }
    }

    /// An admin client.
    pub async fn client(&self) -> kube::Client {
        self.api.client().await
    }

    /// The admin kubeconfig.
    #[must_use]
    pub fn kubeconfig(&self) -> PathBuf {
        self.api.kubeconfig()
    }
}

/// A controller-manager or scheduler command: the admin kubeconfig for everything, loopback on a free
/// port, no leader election, quiet.
fn component(name: &str, kubeconfig: &std::path::Path) -> Command {
    let mut cmd = Command::new(k8s_tool(name));
    for flag in [
        "--kubeconfig",
        "--authentication-kubeconfig",
        "--authorization-kubeconfig",
    ] {
        cmd.arg(flag).arg(kubeconfig);
    }
    cmd.args(["--bind-address", "127.0.0.1", "--secure-port"])
        .arg(free_port().to_string())
        .args(["--leader-elect=false", "-v", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// A kubeconfig for `server` with a bearer `token` of `user`, default namespace `namespace`.
#[must_use]
pub fn kubeconfig_text(server: &str, user: &str, token: &str, namespace: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    insecure-skip-tls-verify: true\nusers:\n- name: {user}\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context: {{cluster: test, user: {user}, namespace: {namespace}}}\ncurrent-context: test\n"
    )
}

/// Runs a command-line tool (helm, kubectl) with `stdin`; returns success and stdout+stderr.
#[must_use]
pub fn run_tool(program: &std::path::Path, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
    if let Some(mut pipe) = child.stdin.take() {
        let _ = pipe.write_all(stdin.unwrap_or_default().as_bytes());
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn http_get(path: &str) -> http::Request<Vec<u8>> {
    http::Request::get(path)
        .body(Vec::new())
        .unwrap_or_else(|e| panic!("request: {e}"))
}

/// Creates pod `name` of StatefulSet `sts` (labels `app: app`) and reports it Running and Ready, as a
/// kubelet would once its containers pass their readiness probe.
pub async fn add_ready_pod(
    pods: &kube::Api<k8s_openapi::api::core::v1::Pod>,
    sts: &k8s_openapi::api::apps::v1::StatefulSet,
    name: &str,
) {
    use kube::api::{Patch, PatchParams, PostParams};
    let uid = sts.metadata.uid.clone().unwrap_or_default();
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "app"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "app", "uid": uid, "controller": true}]},
        "spec": {"containers": [{"name": "app", "image": "app"}]}
    }))
    .unwrap_or_else(|e| panic!("pod: {e}"));
    pods.create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("create pod {name}: {e}"));
    let status = serde_json::json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap_or_else(|e| panic!("pod status {name}: {e}"));
}
