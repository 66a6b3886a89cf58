//! A kubelet for tests: one fake Node whose pods run as OS processes on this machine.
//!
//! No container runtime exists here, so an image is mapped to a host binary (`aether-node`,
//! `aether-operator`); a container of any other image "runs" without a process. For every pod the
//! scheduler binds to the node it does what a kubelet does, in small:
//! - resolves the container's environment (`value`, the downward API's `fieldRef`), and gives a pod with
//!   a service account a kubeconfig holding a token from the TokenRequest API (`KUBECONFIG`), so the
//!   process has exactly that account's permissions;
//! - gives each pod its own loopback address (127.0.0.x) as pod IP, in place of a network namespace: a
//!   listen address `0.0.0.0` in the args becomes the pod IP, and `AETHER_HTTP_ADDR` is set to the pod
//!   IP and the container's first port; `127.0.0.1:P` and `localhost:P` in args and environment, for a
//!   port P a container of the pod declares, become the pod IP's (the pod's own loopback);
//! - resolves `secretKeyRef` (an `optional` one that is missing is left out) and mounts `secret`
//!   volumes: the Secret's keys are written to a directory of the pod, and the mount path in the
//!   container's args and environment becomes that directory;
//! - refuses to start a container that a kubelet would refuse (`CreateContainerConfigError`): a
//!   Secret or key it needs is missing, or `runAsNonRoot` without a numeric `runAsUser`. This kubelet
//!   cannot read an image's user, so it takes every image's as non-numeric (a real kubelet refuses
//!   "image has non-numeric user ..., cannot verify user is non-root"), the strictest case; and
//!   `runAsUser: 0` with `runAsNonRoot` is refused too;
//! - restarts a process that exits (restartPolicy Always), probes `readinessProbe.httpGet` every 250 ms
//!   and writes phase, pod IP, the Ready condition and container statuses to the pod's status;
//! - when the pod is deleted: SIGTERM, waits up to the grace period, SIGKILL, then deletes the pod
//!   object (grace 0), as the kubelet does once the containers have stopped. A process that dies of
//!   SIGTERM's default action (it installed no handler) is counted ([`Kubelet::ignored_sigterm`])
//!   and the pod waits out its grace period: in a container the process is PID 1, and the kernel
//!   ignores a signal PID 1 has no handler for, so a real kubelet would wait and SIGKILL it (found
//!   on the real node: the bank app kept every deleted pod for its whole grace period);
//! - renews the node's Lease so the node lifecycle controller keeps it Ready.

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Container, Node, Pod, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client};
use serde_json::json;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const TICK: Duration = Duration::from_millis(250);
const RESTART_BACKOFF: Duration = Duration::from_millis(500);

/// How the kubelet runs pods.
#[derive(Debug, Clone)]
pub struct KubeletConfig {
    /// The Node's name.
    pub node: String,
    /// Image repository suffix -> host binary, e.g. `("aether-node", path)`.
    pub images: Vec<(String, PathBuf)>,
    /// Extra environment for every process (e.g. `RUST_LOG`).
    pub env: Vec<(String, String)>,
    /// API server URL written into the pods' kubeconfigs.
    pub api_server: String,
    /// Where pods' kubeconfigs and logs go.
    pub dir: PathBuf,
}

#[derive(Default)]
struct Registry {
    /// `namespace/name` -> process ids of the pod's running containers.
    pods: HashMap<String, Vec<u32>>,
    next_ip: u32,
    /// `namespace/pod/container` of each process that died of SIGTERM's default action.
    ignored_sigterm: Vec<String>,
}

/// The fake node and its pod runner; everything stops (processes killed) on drop.
pub struct Kubelet {
    tasks: Vec<JoinHandle<()>>,
    registry: Arc<Mutex<Registry>>,
}

impl std::fmt::Debug for Kubelet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kubelet").finish_non_exhaustive()
    }
}

impl Kubelet {
    /// Registers the Node (Ready, room for 110 pods) and starts running the pods bound to it.
    pub async fn start(client: Client, cfg: KubeletConfig) -> Self {
        register_node(&client, &cfg.node).await;
        let registry = Arc::new(Mutex::new(Registry::default()));
        let heartbeat = tokio::spawn(heartbeat(client.clone(), cfg.node.clone()));
        let runner = tokio::spawn(watch_pods(client, Arc::new(cfg), registry.clone()));
        Self {
            tasks: vec![heartbeat, runner],
            registry,
        }
    }

    /// Sends SIGKILL to every process of pod `namespace/name` (they restart, as containers do, unless
    /// the pod is being deleted). False when no process of that pod runs here.
    pub fn kill(&self, namespace: &str, name: &str) -> bool {
        self.signal(namespace, name, "KILL")
    }

    /// Sends `signal` (`KILL`, `STOP`, `CONT`, ...) to every process of pod `namespace/name`.
    pub fn signal(&self, namespace: &str, name: &str, signal: &str) -> bool {
        let pids = {
            let reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
            reg.pods
                .get(&format!("{namespace}/{name}"))
                .cloned()
                .unwrap_or_default()
        };
        let mut killed = false;
        for pid in pids {
            killed |= std::process::Command::new("kill")
                .args([&format!("-{signal}"), &pid.to_string()])
                .status()
                .is_ok_and(|s| s.success());
        }
        killed
    }

    /// The containers (`namespace/pod/container`) that installed no SIGTERM handler: each died of
    /// the signal's default action, which as a container's PID 1 would have been ignored.
    #[must_use]
    pub fn ignored_sigterm(&self) -> Vec<String> {
        let reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        reg.ignored_sigterm.clone()
    }

    /// Names of the pods running here, `namespace/name`.
    #[must_use]
    pub fn running(&self) -> Vec<String> {
        let reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<String> = reg.pods.keys().cloned().collect();
        v.sort();
        v
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn now() -> serde_json::Value {
    serde_json::to_value(Time(k8s_openapi::jiff::Timestamp::now())).unwrap_or_default()
}

async fn register_node(client: &Client, name: &str) {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}},
    }))
    .unwrap_or_else(|e| panic!("node object: {e}"));
    nodes
        .create(&PostParams::default(), &node)
        .await
        .unwrap_or_else(|e| panic!("create node {name}: {e}"));
    let status = json!({"status": {
        "capacity": {"cpu": "32", "memory": "64Gi", "pods": "110"},
        "allocatable": {"cpu": "32", "memory": "64Gi", "pods": "110"},
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": name}],
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "message": "aether test kubelet", "lastHeartbeatTime": now(), "lastTransitionTime": now()}],
        "nodeInfo": {"kubeletVersion": crate::k8s::K8S_VERSION, "operatingSystem": "linux", "architecture": "amd64",
                     "containerRuntimeVersion": "host://processes", "kernelVersion": "", "osImage": "", "kubeProxyVersion": "",
                     "bootID": "", "machineID": "", "systemUUID": ""}
    }});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap_or_else(|e| panic!("node status: {e}"));
}

/// Renews the node Lease every 10 s (the node lifecycle controller marks a node without one NotReady).
async fn heartbeat(client: Client, node: String) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let nodes: Api<Node> = Api::all(client);
    loop {
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": node},
            "spec": {"holderIdentity": node, "leaseDurationSeconds": 40,
                     "renewTime": MicroTime(k8s_openapi::jiff::Timestamp::now())}
        });
        let pp = PatchParams::apply("aether-test-kubelet").force();
        if let Err(e) = leases.patch(&node, &pp, &Patch::Apply(&lease)).await {
            eprintln!("kubelet: node lease: {e}");
        }
        let status = json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
            "message": "aether test kubelet", "lastHeartbeatTime": now()}]}});
        let _ = nodes
            .patch_status(&node, &PatchParams::default(), &Patch::Strategic(&status))
            .await;
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

/// Watches the pods bound to this node; one task per pod (by UID) gets every new version of it.
async fn watch_pods(client: Client, cfg: Arc<KubeletConfig>, registry: Arc<Mutex<Registry>>) {
    use futures::StreamExt;
    let pods: Api<Pod> = Api::all(client.clone());
    let wc = watcher::Config::default().fields(&format!("spec.nodeName={}", cfg.node));
    let mut stream = watcher(pods, wc).boxed();
    let mut running: HashMap<String, watch::Sender<Option<Pod>>> = HashMap::new();
    while let Some(ev) = stream.next().await {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                eprintln!("kubelet: pod watch: {e}");
                continue;
            }
        };
        match ev {
            watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                if let Some(tx) = running.get(&uid) {
                    let _ = tx.send(Some(pod));
                } else {
                    let (tx, rx) = watch::channel(Some(pod.clone()));
                    let ip = {
                        let mut reg = registry.lock().unwrap_or_else(|e| e.into_inner());
                        reg.next_ip += 1;
                        // 127.0.1.1, 127.0.1.2, ...: each pod its own address.
                        format!("127.0.{}.{}", 1 + reg.next_ip / 250, 1 + reg.next_ip % 250)
                    };
                    running.insert(uid, tx);
                    let run = PodRun {
                        client: client.clone(),
                        cfg: cfg.clone(),
                        ip,
                        registry: registry.clone(),
                    };
                    tokio::spawn(run.run(rx));
                }
            }
            watcher::Event::Delete(pod) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                if let Some(tx) = running.remove(&uid) {
                    let _ = tx.send(None);
                }
            }
            watcher::Event::Init | watcher::Event::InitDone => {}
        }
        running.retain(|_, tx| !tx.is_closed());
    }
}

struct PodRun {
    client: Client,
    cfg: Arc<KubeletConfig>,
    ip: String,
    registry: Arc<Mutex<Registry>>,
}

impl PodRun {
    async fn run(self, mut updates: watch::Receiver<Option<Pod>>) {
        let Some(pod) = updates.borrow_and_update().clone() else {
            return;
        };
        let key = pod_key(&pod).unwrap_or_default();
        let (ns, name) = (
            pod.metadata.namespace.clone().unwrap_or_default(),
            pod.metadata.name.clone().unwrap_or_default(),
        );
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let kubeconfig = self.kubeconfig_for(&pod).await;
        let spec = pod.spec.clone().unwrap_or_default();
        let secrets = self.secrets(&pod).await;
        let mounts = self.secret_volumes(&pod, &secrets);
        let mut procs: Vec<Proc> = spec
            .containers
            .iter()
            .map(|c| self.resolve(&pod, c, kubeconfig.as_ref(), &secrets, &mounts))
            .collect();
        for p in &procs {
            if let Some(why) = &p.refused {
                eprintln!(
                    "kubelet: {ns}/{name} container {}: CreateContainerConfigError: {why}",
                    p.name
                );
            }
        }
        let started = now();
        let mut last_ready = None;
        let mut deleting = pod.metadata.deletion_timestamp.is_some().then_some(pod);
        loop {
            if let Some(pod) = deleting.take() {
                let grace = pod
                    .metadata
                    .deletion_grace_period_seconds
                    .or(spec.termination_grace_period_seconds)
                    .unwrap_or(30);
                let ignored = stop_all(&mut procs, Duration::from_secs(grace.max(0) as u64)).await;
                for c in ignored {
                    eprintln!(
                        "kubelet: {ns}/{name} container {c} died of SIGTERM's default action: as a container's PID 1 it would ignore SIGTERM and be killed after the grace period ({grace} s); handle SIGTERM"
                    );
                    let mut reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
                    reg.ignored_sigterm.push(format!("{ns}/{name}/{c}"));
                }
                let dp =
                    DeleteParams {
                        grace_period_seconds: Some(0),
                        preconditions: pod.metadata.uid.clone().map(|uid| {
                            kube::api::Preconditions {
                                uid: Some(uid),
                                resource_version: None,
                            }
                        }),
                        ..DeleteParams::default()
                    };
                let _ = api.delete(&name, &dp).await;
                break;
            }
            for p in &mut procs {
                p.keep_running(&self.cfg.dir, &name);
            }
            {
                let pids = procs
                    .iter()
                    .filter_map(|p| p.child.as_ref().and_then(Child::id))
                    .collect();
                let mut reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
                reg.pods.insert(key.clone(), pids);
            }
            let mut ready = true;
            for p in &mut procs {
                ready &= p.ready(&self.ip).await;
            }
            let restarts: u32 = procs.iter().map(|p| p.restarts).sum();
            if last_ready != Some((ready, restarts)) {
                let status = pod_status(&procs, &self.ip, ready, &started);
                if api
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                    .await
                    .is_ok()
                {
                    last_ready = Some((ready, restarts));
                }
            }
            tokio::select! {
                changed = updates.changed() => {
                    let latest = if changed.is_ok() { updates.borrow_and_update().clone() } else { None };
                    match latest {
                        Some(pod) if pod.metadata.deletion_timestamp.is_some() => deleting = Some(pod),
                        Some(_) => {}
                        // The pod object is gone (force-deleted): stop at once.
                        None => {
                            stop_all(&mut procs, Duration::ZERO).await;
                            break;
                        }
                    }
                }
                () = tokio::time::sleep(TICK) => {}
            }
        }
        let mut reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        reg.pods.remove(&key);
    }

    /// A kubeconfig with a token of the pod's service account, when it has one and the account exists.
    async fn kubeconfig_for(&self, pod: &Pod) -> Option<PathBuf> {
        let spec = pod.spec.as_ref()?;
        if spec.automount_service_account_token == Some(false) {
            return None;
        }
        let sa = spec.service_account_name.clone()?;
        let ns = pod.metadata.namespace.clone()?;
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &ns);
        let req: TokenRequest = serde_json::from_value(json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"audiences": [], "expirationSeconds": 86400}
        }))
        .ok()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let token = loop {
            match accounts
                .create_subresource::<TokenRequest, TokenRequest>(
                    "token",
                    &sa,
                    &PostParams::default(),
                    &req,
                )
                .await
            {
                Ok(tr) => break tr.status?.token?,
                Err(e) if Instant::now() > deadline => {
                    eprintln!("kubelet: no token for service account {ns}/{sa}: {e}");
                    return None;
                }
                Err(_) => tokio::time::sleep(TICK).await,
            }
        };
        let name = pod.metadata.name.clone()?;
        let path = self.cfg.dir.join(format!("{ns}-{name}.kubeconfig"));
        let text = crate::k8s::kubeconfig_text(&self.cfg.api_server, &sa, &token, &ns);
        std::fs::write(&path, text).ok()?;
        Some(path)
    }

    /// The Secrets the pod's containers and volumes name (`None`: not found).
    async fn secrets(&self, pod: &Pod) -> HashMap<String, Option<Secret>> {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &ns);
        let spec = pod.spec.clone().unwrap_or_default();
        let from_env = spec
            .containers
            .iter()
            .flat_map(|c| c.env.iter().flatten())
            .filter_map(|e| e.value_from.as_ref()?.secret_key_ref.as_ref())
            .map(|r| r.name.clone());
        let from_volumes = spec
            .volumes
            .iter()
            .flatten()
            .filter_map(|v| v.secret.as_ref()?.secret_name.clone());
        let names: std::collections::BTreeSet<String> = from_env.chain(from_volumes).collect();
        let mut out = HashMap::new();
        for name in names {
            let s = api.get_opt(&name).await.ok().flatten();
            out.insert(name, s);
        }
        out
    }

    /// Writes each `secret` volume's keys into a directory of the pod: volume name -> directory
    /// (`None`: the Secret is missing).
    fn secret_volumes(
        &self,
        pod: &Pod,
        secrets: &HashMap<String, Option<Secret>>,
    ) -> HashMap<String, Option<PathBuf>> {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let mut out = HashMap::new();
        for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            let Some(secret) = v.secret.as_ref().and_then(|s| s.secret_name.clone()) else {
                continue;
            };
            let dir = self
                .cfg
                .dir
                .join(format!("{ns}-{name}-volumes"))
                .join(&v.name);
            let written = secrets.get(&secret).cloned().flatten().and_then(|s| {
                std::fs::create_dir_all(&dir).ok()?;
                for (key, value) in s.data.unwrap_or_default() {
                    std::fs::write(dir.join(key), value.0).ok()?;
                }
                Some(dir.clone())
            });
            out.insert(v.name.clone(), written);
        }
        out
    }

    fn resolve(
        &self,
        pod: &Pod,
        c: &Container,
        kubeconfig: Option<&PathBuf>,
        secrets: &HashMap<String, Option<Secret>>,
        mounts: &HashMap<String, Option<PathBuf>>,
    ) -> Proc {
        let mut refused = non_root_refusal(pod, c);
        let image = c.image.clone().unwrap_or_default();
        let repo = image.rsplit_once(':').map_or(image.as_str(), |(r, _)| r);
        let program = self
            .cfg
            .images
            .iter()
            .find(|(suffix, _)| repo.ends_with(suffix.as_str()))
            .map(|(_, p)| p.clone());
        let field = |path: &str| -> String {
            let m = &pod.metadata;
            let s = pod.spec.as_ref();
            match path {
                "metadata.name" => m.name.clone().unwrap_or_default(),
                "metadata.namespace" => m.namespace.clone().unwrap_or_default(),
                "metadata.uid" => m.uid.clone().unwrap_or_default(),
                "spec.nodeName" => self.cfg.node.clone(),
                "spec.serviceAccountName" => s
                    .and_then(|s| s.service_account_name.clone())
                    .unwrap_or_default(),
                "status.podIP" => self.ip.clone(),
                "status.hostIP" => "127.0.0.1".into(),
                other => {
                    eprintln!("kubelet: fieldRef {other} is not supported; empty");
                    String::new()
                }
            }
        };
        // A pod's own loopback: the ports its containers declare, on 127.0.0.1 or localhost, are
        // the pod IP's (containers of a pod share a network namespace; here all pods share one).
        let declared: Vec<i32> = pod
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| c.ports.iter().flatten())
            .map(|p| p.container_port)
            .collect();
        let unbind = |s: &str| {
            let mut s = s.replace("0.0.0.0", &self.ip);
            for port in &declared {
                for host in ["127.0.0.1", "localhost"] {
                    s = s.replace(&format!("{host}:{port}"), &format!("{}:{port}", self.ip));
                }
            }
            s
        };
        let mut env: Vec<(String, String)> = self.cfg.env.clone();
        let ports = c.ports.clone().unwrap_or_default();
        if let Some(p) = ports.first() {
            env.push((
                "AETHER_HTTP_ADDR".into(),
                format!("{}:{}", self.ip, p.container_port),
            ));
        }
        if let Some(k) = kubeconfig {
            env.push(("KUBECONFIG".into(), k.display().to_string()));
        }
        // A secret volume's mount path in args and environment becomes the pod's directory of it.
        let mut mounted: Vec<(String, String)> = Vec::new();
        for m in c.volume_mounts.iter().flatten() {
            match mounts.get(&m.name) {
                Some(Some(dir)) => mounted.push((m.mount_path.clone(), dir.display().to_string())),
                Some(None) => {
                    refused.get_or_insert(format!("the Secret of volume {:?} is missing", m.name));
                }
                None => {}
            }
        }
        // Longest mount path first, and only a whole path (followed by `/` or the end): `/a/b` is
        // not `/a`'s, nor `/etc/ssl2` `/etc/ssl`'s.
        mounted.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
        let remount = |s: String| {
            for (path, dir) in &mounted {
                if let Some(rest) = s.strip_prefix(path.as_str())
                    && (rest.is_empty() || rest.starts_with('/'))
                {
                    return format!("{dir}{rest}");
                }
            }
            s
        };
        for e in c.env.clone().unwrap_or_default() {
            let value = match (e.value, e.value_from) {
                (Some(v), _) => v,
                (None, Some(from)) => {
                    if let Some(r) = from.secret_key_ref {
                        let value = secrets
                            .get(&r.name)
                            .cloned()
                            .flatten()
                            .and_then(|s| s.data?.get(&r.key).cloned())
                            .map(|v| String::from_utf8_lossy(&v.0).into_owned());
                        match value {
                            Some(v) => v,
                            None if r.optional == Some(true) => continue,
                            None => {
                                refused.get_or_insert(format!(
                                    "secret {:?} or its key {:?} not found",
                                    r.name, r.key
                                ));
                                continue;
                            }
                        }
                    } else {
                        from.field_ref
                            .map(|f| field(&f.field_path))
                            .unwrap_or_default()
                    }
                }
                (None, None) => String::new(),
            };
            env.push((e.name, remount(unbind(&value))));
        }
        let mut args: Vec<String> = c.command.clone().unwrap_or_default();
        args.extend(c.args.clone().unwrap_or_default());
        let args = args.iter().map(|a| remount(unbind(a))).collect();
        let probe = c
            .readiness_probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .map(|h| {
                let port = match &h.port {
                    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n) => *n as u16,
                    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) => ports
                        .iter()
                        .find(|p| p.name.as_deref() == Some(s.as_str()))
                        .map_or(0, |p| p.container_port as u16),
                };
                (port, h.path.clone().unwrap_or_else(|| "/".into()))
            });
        Proc {
            name: c.name.clone(),
            image,
            program,
            args,
            env,
            probe,
            child: None,
            exited_at: None,
            restarts: 0,
            refused,
        }
    }
}

mod probe;
mod process;
use probe::{http_ok, non_root_refusal, pod_key, pod_status};
use process::{Proc, stop_all};
