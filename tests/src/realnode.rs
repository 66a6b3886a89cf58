//! A real Kubernetes node on this machine, for `make e2e-node` (issue 34): Debian's containerd and
//! runc, pod networking through the CNI bridge with host-local addresses, a kubelet and kube-proxy
//! (iptables) built from the control plane's Go module (`tools/build-k8s.sh node`), and the images
//! of `make images` imported into containerd. Only loopback and the bridge's own addresses are used.
//!
//! The settings this machine needs, and why:
//! - containerd: its own root, state and socket under a temporary directory; `restrict_oom_score_adj`
//!   (root here lacks CAP_SYS_RESOURCE: lowering a sandbox's `oom_score_adj` to -998 is refused and
//!   every sandbox fails); runc, not crun (crun refuses this machine's hybrid cgroups); the sandbox
//!   image built here (`tools/node/pause.c`), since nothing can be pulled.
//! - kubelet: `cgroupDriver: cgroupfs` (no systemd), `failCgroupV1: false` (cgroup v1 is refused by
//!   default since 1.35 and this machine has v1 with a v2 hierarchy beside it),
//!   `localStorageCapacityIsolation: false` (cadvisor cannot read this VM's root device), the
//!   admin kubeconfig of the test control plane, its API and probes on the bridge address.
//! - the API server listens on the bridge address (`ControlPlane::start_on`), so pods reach it
//!   through the `kubernetes` Service (kube-proxy) and verify it with the CA the controller manager
//!   publishes (`kube-root-ca.crt`).

use crate::k8s::{ControlPlane, k8s_tool};
use crate::{Process, free_port};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The bridge pods are attached to.
pub const BRIDGE: &str = "aether0";
/// The bridge's (the host's) address on the pod network: the API server and NATS listen here.
pub const BRIDGE_IP: &str = "10.88.0.1";
const POD_CIDR: &str = "10.88.0.0/16";
/// The sandbox image containerd asks for (built here, `tools/node/pause.c`).
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.10";

/// Runs `program args`; panics with its output unless it succeeds.
fn must(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (run `make node-tools`)"));
    assert!(
        out.status.success(),
        "{program} {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The pod network's bridge with the host's address on it, made before anything listens there;
/// removed on drop.
#[derive(Debug)]
pub struct Bridge;

impl Bridge {
    /// Makes the bridge (replacing one left by an earlier run).
    #[must_use]
    pub fn up() -> Self {
        let _ = Command::new("ip").args(["link", "del", BRIDGE]).output();
        must("ip", &["link", "add", BRIDGE, "type", "bridge"]);
        must(
            "ip",
            &["addr", "add", &format!("{BRIDGE_IP}/16"), "dev", BRIDGE],
        );
        must("ip", &["link", "set", BRIDGE, "up"]);
        Self
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", BRIDGE]).output();
    }
}

/// A host binary the node needs, or a failure saying how to get it.
fn host_binary(name: &str) -> PathBuf {
    ["/usr/bin", "/usr/sbin", "/usr/lib/cni"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not found: run `make node-tools` (Debian packages)"))
}

/// The node: containerd, the kubelet and kube-proxy; stopped, with every container, on drop.
#[derive(Debug)]
pub struct RealNode {
    /// The Node's name.
    pub name: String,
    socket: PathBuf,
    containerd: Option<Process>,
    kubelet: Option<Process>,
    proxy: Option<Process>,
    kubeconfig: PathBuf,
    dir: tempfile::TempDir,
}

impl RealNode {
    /// Starts containerd, imports `images` (OCI archives, e.g. `target/images/*.tar`, the pause
    /// image among them), then the kubelet and kube-proxy joined to `cp`; returns once the Node is
    /// Ready.
    pub async fn start(cp: &ControlPlane, name: &str, images: &[PathBuf]) -> Self {
        for b in [
            "containerd",
            "runc",
            "bridge",
            "host-local",
            "portmap",
            "iptables",
        ] {
            host_binary(b);
        }
        let dir = tempfile::Builder::new()
            .prefix("aether-node-")
            .tempdir()
            .unwrap_or_else(|e| panic!("temp dir: {e}"));
        let d = dir.path();
        let socket = d.join("containerd.sock");
        std::fs::create_dir_all(d.join("cni")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(
            d.join("cni/10-aether.conflist"),
            format!(
                r#"{{"cniVersion": "1.0.0", "name": "aether", "plugins": [
  {{"type": "bridge", "bridge": "{BRIDGE}", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {{"type": "host-local", "ranges": [[{{"subnet": "{POD_CIDR}", "gateway": "{BRIDGE_IP}"}}]],
            "routes": [{{"dst": "0.0.0.0/0"}}], "dataDir": "{ipam}"}}}},
  {{"type": "portmap", "capabilities": {{"portMappings": true}}}}]}}"#,
                ipam = d.join("ipam").display()
            ),
        )
        .unwrap_or_else(|e| panic!("cni: {e}"));
        let config = d.join("containerd.toml");
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{sock}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
"#,
                root = d.join("root").display(),
                state = d.join("state").display(),
                sock = socket.display(),
                cni = d.join("cni").display()
            ),
        )
        .unwrap_or_else(|e| panic!("containerd.toml: {e}"));
        let containerd = Process {
            child: Command::new(host_binary("containerd"))
                .arg("--config")
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(log(d, "containerd"))
                .spawn()
                .unwrap_or_else(|e| panic!("containerd: {e}")),
        };
        let start = Instant::now();
        while !socket.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "containerd did not listen"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut node = Self {
            name: name.to_owned(),
            socket,
            containerd: Some(containerd),
            kubelet: None,
            proxy: None,
            kubeconfig: cp.kubeconfig(),
            dir,
        };
        for image in images {
            let path = image.to_str().unwrap_or_default().to_owned();
            node.ctr(&["images", "import", &path]);
        }
        node.kubelet = Some(node.spawn_kubelet());
        node.proxy = Some(node.spawn_proxy());
        node.wait_ready(cp).await;
        node
    }

    fn spawn_kubelet(&self) -> Process {
        let d = self.dir.path();
        let config = d.join("kubelet.yaml");
        std::fs::write(
            &config,
            format!(
                "apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://{sock}
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
address: {BRIDGE_IP}
port: {port}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {healthz}
authentication: {{anonymous: {{enabled: false}}, webhook: {{enabled: true}}}}
authorization: {{mode: Webhook}}
enforceNodeAllocatable: []
localStorageCapacityIsolation: false
evictionHard: {{memory.available: 1Mi}}
serializeImagePulls: false
resolvConf: /etc/resolv.conf
",
                sock = self.socket.display(),
                port = free_port(),
                healthz = free_port(),
            ),
        )
        .unwrap_or_else(|e| panic!("kubelet config: {e}"));
        Process {
            child: Command::new(k8s_tool("kubelet"))
                .arg("--config")
                .arg(&config)
                .arg("--root-dir")
                .arg(d.join("kubelet"))
                .arg("--kubeconfig")
                .arg(&self.kubeconfig)
                .args(["--hostname-override", &self.name, "--node-ip", BRIDGE_IP])
                .stdout(Stdio::null())
                .stderr(log(d, "kubelet"))
                .spawn()
                .unwrap_or_else(|e| panic!("kubelet: {e} (run `make node-tools`)")),
        }
    }

    fn spawn_proxy(&self) -> Process {
        let d = self.dir.path();
        Process {
            child: Command::new(k8s_tool("kube-proxy"))
                .arg("--kubeconfig")
                .arg(&self.kubeconfig)
                .args(["--hostname-override", &self.name])
                .args(["--proxy-mode", "iptables", "--cluster-cidr", POD_CIDR])
                .args(["--conntrack-max-per-core", "0"])
                .args([
                    "--metrics-bind-address",
                    &format!("127.0.0.1:{}", free_port()),
                ])
                .args([
                    "--healthz-bind-address",
                    &format!("127.0.0.1:{}", free_port()),
                ])
                .stdout(Stdio::null())
                .stderr(log(d, "kube-proxy"))
                .spawn()
                .unwrap_or_else(|e| panic!("kube-proxy: {e} (run `make node-tools`)")),
        }
    }

    async fn wait_ready(&self, cp: &ControlPlane) {
        use k8s_openapi::api::core::v1::Node;
        let nodes: kube::Api<Node> = kube::Api::all(cp.client().await);
        let start = Instant::now();
        loop {
            let ready = nodes
                .get_opt(&self.name)
                .await
                .ok()
                .flatten()
                .is_some_and(|n| {
                    n.status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                });
            if ready {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "Node {} not Ready within 120 s; kubelet log: {}",
                self.name,
                self.log("kubelet")
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The last lines of a component's log (`containerd`, `kubelet`, `kube-proxy`).
    #[must_use]
    pub fn log(&self, component: &str) -> String {
        let text = std::fs::read_to_string(self.dir.path().join(format!("{component}.log")))
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// `ctr -n k8s.io <args>` against this node's containerd; panics unless it succeeds.
    pub fn ctr(&self, args: &[&str]) -> String {
        let sock = self.socket.to_str().unwrap_or_default().to_owned();
        let mut all = vec!["-a", sock.as_str(), "-n", "k8s.io"];
        all.extend_from_slice(args);
        must("ctr", &all)
    }

    /// The host pid of container `container` of pod `pod`, while it runs.
    #[must_use]
    pub fn pid(&self, pod: &str, container: &str) -> Option<u32> {
        let tasks = self.ctr(&["tasks", "ls"]);
        tasks.lines().skip(1).find_map(|line| {
            let mut f = line.split_whitespace();
            let (id, pid, status) = (f.next()?, f.next()?, f.next()?);
            if status != "RUNNING" {
                return None;
            }
            let info: serde_json::Value =
                serde_json::from_str(&self.ctr(&["containers", "info", id])).ok()?;
            let labels = &info["Labels"];
            (labels["io.kubernetes.pod.name"] == pod
                && labels["io.kubernetes.container.name"] == container)
                .then(|| pid.parse().ok())
                .flatten()
        })
    }

    /// SIGKILLs container `container` of pod `pod` (its task, as a crash would); the kubelet
    /// restarts it. False when it was not running.
    pub fn kill(&self, pod: &str, container: &str) -> bool {
        let Some(pid) = self.pid(pod, container) else {
            return false;
        };
        Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for RealNode {
    fn drop(&mut self) {
        drop(self.kubelet.take());
        drop(self.proxy.take());
        let _ = Command::new(k8s_tool("kube-proxy"))
            .arg("--cleanup")
            .stderr(Stdio::null())
            .status();
        let sock = self.socket.to_str().unwrap_or_default().to_owned();
        let ctr = |args: &[&str]| {
            let mut all = vec!["-a", sock.as_str(), "-n", "k8s.io"];
            all.extend_from_slice(args);
            Command::new("ctr").args(&all).output().ok()
        };
        if let Some(out) = ctr(&["tasks", "ls", "-q"]) {
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
            }
        }
        std::thread::sleep(Duration::from_millis(500));
        drop(self.containerd.take());
        // The shims outlive containerd: each was started with this node's socket.
        let _ = Command::new("pkill")
            .args(["-KILL", "-f", &format!("containerd-shim.*{sock}")])
            .status();
        // Mounts the kubelet and containerd made under the directory, deepest first.
        let prefix = self.dir.path().to_string_lossy().into_owned();
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/mounts")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1).map(str::to_owned))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = Command::new("umount").args(["-l", &m]).status();
        }
    }
}

fn log(dir: &Path, name: &str) -> Stdio {
    std::fs::File::create(dir.join(format!("{name}.log")))
        .map_or_else(|_| Stdio::null(), Stdio::from)
}
