//! A real Kubernetes API server for tests: etcd and kube-apiserver built from Go modules
//! (`tools/build-k8s.sh`), on loopback ports, with a token for an admin user. No kubelet runs, so tests
//! create pods themselves and mark them Ready through the status subresource, as a kubelet would.

use crate::{Process, free_port};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Kubernetes version of the control plane (the k8s-openapi feature is `v1_36`).
pub const K8S_VERSION: &str = "v1.36.3";
/// etcd version.
pub const ETCD_VERSION: &str = "v3.6.16";
const TOKEN: &str = "aether-test-admin-token";

fn tool(name: &str, dir: &str, env: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let p = home.join(".cache/aether/tools").join(dir).join(name);
    assert!(
        p.is_file(),
        "{} is missing: run `make tools` (tools/build-k8s.sh) or set {env}",
        p.display()
    );
    p
}

/// etcd plus kube-apiserver, torn down on drop.
#[derive(Debug)]
pub struct ApiServer {
    _etcd: Process,
    _apiserver: Process,
    port: u16,
    dir: tempfile::TempDir,
}

impl ApiServer {
    /// Starts etcd and kube-apiserver and waits until the API server is ready.
    pub async fn start() -> Self {
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
        let apiserver = Command::new(tool(
            "kube-apiserver",
            &format!("kubernetes-{K8S_VERSION}"),
            "AETHER_KUBE_APISERVER",
        ))
        .args(["--etcd-servers", &format!("http://127.0.0.1:{client}")])
        .args([
            "--bind-address",
            "127.0.0.1",
            "--secure-port",
            &port.to_string(),
        ])
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
        .args([
            "--disable-admission-plugins",
            "ServiceAccount",
            "--advertise-address",
            "127.0.0.1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("kube-apiserver: {e}"));
        let s = Self {
            _etcd: etcd,
            _apiserver: Process { child: apiserver },
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

    /// A kubeconfig for the admin user, written next to the server's files.
    #[must_use]
    pub fn kubeconfig(&self) -> PathBuf {
        let path = self.dir.path().join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: https://127.0.0.1:{}\n    insecure-skip-tls-verify: true\nusers:\n- name: admin\n  user:\n    token: {TOKEN}\ncontexts:\n- name: test\n  context: {{cluster: test, user: admin, namespace: default}}\ncurrent-context: test\n",
            self.port
        );
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("kubeconfig: {e}"));
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

fn http_get(path: &str) -> http::Request<Vec<u8>> {
    http::Request::get(path)
        .body(Vec::new())
        .unwrap_or_else(|e| panic!("request: {e}"))
}
