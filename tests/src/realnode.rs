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
//! - Services between pods: kube-proxy's iptables rules send a pod's packet for a ClusterIP to the
//!   host (the pods' gateway), which rewrites it to a pod on the same bridge. So the host forwards
//!   (`net.ipv4.ip_forward`, set for the node's life and restored) and bridged replies pass
//!   iptables (`net.bridge.bridge-nf-call-iptables`, br_netfilter), or the reply would come from
//!   the pod's own address and the caller drop it.
//! - DNS: CoreDNS in a pod (`tools/node/coredns.yaml`) behind the Service `kube-dns` at
//!   [`CLUSTER_DNS`], the kubelet's `clusterDNS`; names outside the cluster do not resolve.

use crate::auth::{Certs, ROLE_PASSWORDS, roles_conf};
use crate::k8s::{ControlPlane, k8s_tool};
use crate::stack::{NS, PREFIX, create_secrets};
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
/// The image of `tools/node/coredns.Dockerfile` (`make e2e-node` builds it).
pub const COREDNS_IMAGE: &str = "aether.local/coredns:e2e";
/// The image of `tools/node/nats.Dockerfile` (`make e2e-node` builds it).
pub const NATS_IMAGE: &str = "aether.local/nats-server:e2e";
/// The Service `kube-dns`'s address (the control plane's Service range is 10.0.0.0/24).
pub const CLUSTER_DNS: &str = "10.0.0.10";
/// The Service `nats`'s address (`tools/node/nats.yaml`), for clients on the host.
pub const NATS_IP: &str = "10.0.0.42";
/// The names the NATS server's certificate must hold: the Service's address and names.
pub const NATS_NAMES: [&str; 4] = [
    NATS_IP,
    "nats",
    "nats.aether-system.svc",
    "nats.aether-system.svc.cluster.local",
];
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
const BRIDGE_NF: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";

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
    /// `net.ipv4.ip_forward` before the node set it.
    ip_forward: String,
    dir: tempfile::TempDir,
}

impl RealNode {
    /// Starts containerd, imports `images` (OCI archives, e.g. `target/images/*.tar`, the pause
    /// and CoreDNS images among them), then the kubelet and kube-proxy joined to `cp` and CoreDNS;
    /// returns once the Node is Ready and CoreDNS serves.
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
        assert!(
            Path::new(BRIDGE_NF).exists(),
            "{BRIDGE_NF} is missing: load br_netfilter (`modprobe br_netfilter`)"
        );
        must("sh", &["-c", &format!("echo 1 > {BRIDGE_NF}")]);
        let ip_forward = std::fs::read_to_string(IP_FORWARD).unwrap_or_else(|_| "0".into());
        must("sh", &["-c", &format!("echo 1 > {IP_FORWARD}")]);
        let mut node = Self {
            name: name.to_owned(),
            socket,
            containerd: Some(containerd),
            kubelet: None,
            proxy: None,
            kubeconfig: cp.kubeconfig(),
            ip_forward,
            dir,
        };
        for image in images {
            let path = image.to_str().unwrap_or_default().to_owned();
            node.ctr(&["images", "import", &path]);
        }
        node.kubelet = Some(node.spawn_kubelet());
        node.proxy = Some(node.spawn_proxy());
        node.wait_ready(cp).await;
        node.apply(
            "coredns.yaml",
            "kube-system",
            &[("IMAGE", COREDNS_IMAGE), ("CLUSTER_DNS", CLUSTER_DNS)],
        );
        node.wait_pods_ready(cp, "kube-system", "k8s-app=kube-dns")
            .await;
        node
    }

    /// NATS in a pod of its own in `namespace` (`tools/node/nats.yaml`; the namespace exists): TLS
    /// with `certs` (made for [`NATS_NAMES`]), the shipped per-role users for `prefix`; returns
    /// once it is Ready. Pods reach it as `tls://nats:4222`, the host at [`NATS_IP`].
    pub async fn start_nats(
        &self,
        cp: &ControlPlane,
        namespace: &str,
        certs: &Certs,
        prefix: &str,
    ) {
        use k8s_openapi::ByteString;
        use k8s_openapi::api::core::v1::{ConfigMap, Secret};
        use kube::api::PostParams;
        let client = cp.client().await;
        let file =
            |name: &str| std::fs::read(certs.path(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut tls = Secret::default();
        tls.metadata.name = Some("nats-server-tls".into());
        tls.data = Some(
            ["server.crt", "server.key"]
                .into_iter()
                .map(|k| (k.to_owned(), ByteString(file(k))))
                .collect(),
        );
        let mut passwords = Secret::default();
        passwords.metadata.name = Some("nats-passwords".into());
        passwords.string_data = Some(
            ROLE_PASSWORDS
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        let secrets: kube::Api<Secret> = kube::Api::namespaced(client.clone(), namespace);
        for s in [tls, passwords] {
            secrets
                .create(&PostParams::default(), &s)
                .await
                .unwrap_or_else(|e| panic!("create Secret {:?}: {e}", s.metadata.name));
        }
        let mut conf = ConfigMap::default();
        conf.metadata.name = Some("nats-authorization".into());
        conf.data = Some([("authorization.conf".to_owned(), roles_conf(prefix))].into());
        kube::Api::<ConfigMap>::namespaced(client, namespace)
            .create(&PostParams::default(), &conf)
            .await
            .unwrap_or_else(|e| panic!("create ConfigMap nats-authorization: {e}"));
        self.apply(
            "nats.yaml",
            namespace,
            &[("IMAGE", NATS_IMAGE), ("NATS_IP", NATS_IP)],
        );
        self.wait_pods_ready(cp, namespace, "app=nats").await;
    }

    /// `kubectl apply` of `tools/node/<file>` into `namespace`, each `${NAME}` of `vars` replaced.
    pub fn apply(&self, file: &str, namespace: &str, vars: &[(&str, &str)]) {
        let path = crate::stack::repo().join("tools/node").join(file);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let text = vars
            .iter()
            .fold(text, |t, (k, v)| t.replace(&format!("${{{k}}}"), v));
        let kubeconfig = self.kubeconfig.to_string_lossy().into_owned();
        let (ok, out) = crate::k8s::run_tool(
            &k8s_tool("kubectl"),
            &[
                "--kubeconfig",
                &kubeconfig,
                "-n",
                namespace,
                "apply",
                "-f",
                "-",
            ],
            Some(&text),
        );
        assert!(ok, "kubectl apply -f tools/node/{file}: {out}");
    }

    /// Waits until the pods labelled `selector` in `namespace` exist and are all Ready.
    pub async fn wait_pods_ready(&self, cp: &ControlPlane, namespace: &str, selector: &str) {
        use k8s_openapi::api::core::v1::Pod;
        let pods: kube::Api<Pod> = kube::Api::namespaced(cp.client().await, namespace);
        let params = kube::api::ListParams::default().labels(selector);
        let start = Instant::now();
        loop {
            let ready = pods.list(&params).await.is_ok_and(|l| {
                !l.items.is_empty()
                    && l.items.iter().all(|p| {
                        p.status
                            .as_ref()
                            .and_then(|s| s.conditions.as_ref())
                            .is_some_and(|c| {
                                c.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                            })
                    })
            });
            if ready {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "{namespace}/{selector} not Ready within 120 s; kubelet log: {}",
                self.log("kubelet")
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
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
clusterDNS: [{CLUSTER_DNS}]
clusterDomain: cluster.local
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
        let _ = std::fs::write(IP_FORWARD, self.ip_forward.as_bytes());
    }
}

fn log(dir: &Path, name: &str) -> Stdio {
    std::fs::File::create(dir.join(format!("{name}.log")))
        .map_or_else(|_| Stdio::null(), Stdio::from)
}

/// The images a real node runs (`target/images/<name>.tar`): `make images`'s three, and the pause,
/// CoreDNS and NATS images `make e2e-node` builds.
pub const IMAGES: [&str; 6] = [
    "pause",
    "coredns",
    "nats-server",
    "aether-node",
    "aether-operator",
    "aether-bank-example",
];

/// NATS's URL for pods: the Service `nats` (the chart's default host), with TLS.
pub const POD_NATS_URL: &str = "tls://nats:4222";

/// The archive of image `name` under the target directory's `images/`; fails saying how to make it.
#[must_use]
pub fn image_archive(name: &str) -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| crate::stack::repo().join("target"), PathBuf::from);
    let path = dir.join("images").join(format!("{name}.tar"));
    assert!(
        path.is_file(),
        "{} is missing: run `make e2e-node` (it builds the images first)",
        path.display()
    );
    path
}

/// What `make e2e-node` and `make demo-node` run on: the bridge, the control plane on it, the
/// node with every image of [`IMAGES`], NATS in a pod and the chart's Secrets. Stops in that
/// order's reverse on drop.
#[derive(Debug)]
pub struct RealCluster {
    /// containerd, the kubelet, kube-proxy and CoreDNS.
    pub node: RealNode,
    /// etcd, kube-apiserver (on the bridge), kube-controller-manager, kube-scheduler.
    pub cp: ControlPlane,
    /// NATS's certificates (`ca.crt` signed its server certificate, made for [`NATS_NAMES`]).
    pub certs: Certs,
    _bridge: Bridge,
}

impl RealCluster {
    /// Starts it all; says on stderr how long the node and NATS took.
    pub async fn start() -> Self {
        let bridge = Bridge::up();
        let cp = ControlPlane::start_on(BRIDGE_IP).await;
        let images: Vec<PathBuf> = IMAGES.iter().map(|i| image_archive(i)).collect();
        let t = Instant::now();
        let node = RealNode::start(&cp, "real-0", &images).await;
        eprintln!(
            "node Ready, CoreDNS serving in {:?} ({PAUSE_IMAGE}, {COREDNS_IMAGE}, {NATS_IMAGE} built here)",
            t.elapsed()
        );
        let certs = Certs::make_for(&NATS_NAMES);
        create_secrets(&cp, &certs).await;
        let t = Instant::now();
        node.start_nats(&cp, NS, &certs, PREFIX).await;
        eprintln!("NATS pod Ready in {:?}", t.elapsed());
        Self {
            node,
            cp,
            certs,
            _bridge: bridge,
        }
    }

    /// NATS's URL for this process (the Service's address, through kube-proxy), with TLS.
    #[must_use]
    pub fn host_nats_url() -> String {
        format!("tls://{NATS_IP}:4222")
    }
}
