//! `make bench-peers`: aether beside Dapr actors (v1.14.0, self-hosted: placement, one daprd per pod,
//! Redis as the actor state store, a counter actor app behind each daprd) on this machine, the same
//! workload against both, in one run; writes the "Peers" section of BENCHMARKS.md.
//!
//! - Steady state on 3 pods, interleaved, median of 3: adds through any pod's sidecar, reads, and adds
//!   all sent through the sidecar of pod 0 (most actors live on another pod, so both systems route
//!   them on). Throughput, p50, p99, and CPU seconds per 10,000 calls of each system's processes.
//! - Scale-out 2 -> 3 under load: per-actor unavailability, failed calls, how long until the new
//!   member serves its share, and every actor read at the end against its acknowledged adds.
//!
//! aether runs twice: with its built-in `counter` kind, and with the same counter as a Python app over
//! the app protocol (`tests/peers/aether_counter.py`), like for like with Dapr's Python counter.
//!
//! Needs `make tools-peers` (daprd and placement under $AETHER_TOOLS_DIR/dapr-v1.14.0, redis-server).

use aether_core::protocol::{ActorRef, Names, Op, Outcome, Request};
use aether_node::client::Client;
use aether_tests::cluster::{next_plan, publish, spawn_process, spawn_process_with};
use aether_tests::measure::{Call, Figure, figure, median, outage};
use aether_tests::{NatsServer, Process, free_port, http_get, wait_for, workspace_binary};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use rand::{RngExt, SeedableRng};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ACTORS: usize = 1_000;
const IN_FLIGHT: usize = 16;
const CALLS: usize = 6_000;
const RUNS: usize = 3;
const PREFIX: &str = "peers";
const SHARDS: u32 = 256;
const DAPR_VERSION: &str = "v1.14.0";
/// Load before the new member starts, and after it serves its share.
const AROUND: Duration = Duration::from_secs(3);

type Http = HttpClient<hyper_util::client::legacy::connect::HttpConnector, Full<bytes::Bytes>>;

/// A system under test: how to call an actor, which processes it runs.
trait System: Send + Sync {
    fn name(&self) -> &'static str;
    /// `add` of `n` (or a read when `None`) to `actor` through pod `entry`'s sidecar (`None`: any);
    /// the counter's value after it.
    fn call(
        &self,
        entry: Option<usize>,
        actor: usize,
        add: Option<i64>,
        seq: u64,
    ) -> impl std::future::Future<Output = Result<i64, String>> + Send;
    fn pids(&self) -> Vec<u32>;
}

// ---------------------------------------------------------------------------------------------
// aether: nats-server and node processes; the bench publishes plans as the operator does.

struct Aether {
    /// The counter as a Python app behind each node (else the built-in kind).
    app: bool,
    /// The app process of each node (with `app`).
    apps: Mutex<Vec<Process>>,
    /// The apps' logs.
    logs: tempfile::TempDir,
    nats: NatsServer,
    /// Name, process, HTTP port of each node; grows on scale-out.
    nodes: Mutex<Vec<(String, Process, u16)>>,
    client: Client,
    nc: async_nats::Client,
    plan: Mutex<aether_core::plan::Plan>,
}

/// A node process `name` with its HTTP port; with `app`, also its Python counter app.
fn spawn_node(url: &str, name: &str, app: bool, logs: &Path) -> (Process, u16, Option<Process>) {
    let (bin, port) = (workspace_binary("aether-node"), free_port());
    if !app {
        return (spawn_process(&bin, url, PREFIX, name, port), port, None);
    }
    let app_port = free_port();
    let log = logs.join(format!("{name}-app.log"));
    let app = spawn(
        Path::new("python3"),
        &[
            aether_tests::stack::repo()
                .join("tests/peers/aether_counter.py")
                .display()
                .to_string(),
            "--port".into(),
            app_port.to_string(),
        ],
        &log,
    );
    let app_url = format!("http://127.0.0.1:{app_port}");
    let node = spawn_process_with(&bin, url, PREFIX, name, port, &["--app-url", &app_url]);
    (node, port, Some(app))
}

impl Aether {
    async fn start(pods: usize, app: bool) -> Self {
        let nats = NatsServer::start();
        let nc = nats.connect().await;
        let logs = tempfile::tempdir().expect("temp dir");
        let mut nodes = Vec::new();
        let mut apps = Vec::new();
        for i in 0..pods {
            let name = format!("app-{i}");
            let (node, port, a) = spawn_node(&nats.url(), &name, app, logs.path());
            nodes.push((name, node, port));
            apps.extend(a);
        }
        for (name, _, port) in &nodes {
            wait_until(&format!("{name} healthy"), || async {
                matches!(http_get(*port, "/healthz").await, Some((200, _)))
            })
            .await;
        }
        let names: Vec<&str> = nodes.iter().map(|(n, _, _)| n.as_str()).collect();
        let plan = next_plan(None, &names, SHARDS, 8);
        publish(&nc, PREFIX, &plan, 30).await;
        for (name, _, port) in &nodes {
            wait_until(&format!("{name} ready"), || async {
                matches!(http_get(*port, "/readyz").await, Some((200, _)))
            })
            .await;
        }
        Self {
            app,
            apps: Mutex::new(apps),
            logs,
            client: Client::new(nc.clone(), PREFIX),
            nats,
            nodes: Mutex::new(nodes),
            nc,
            plan: Mutex::new(plan),
        }
    }

    /// Starts one more node, and once it is up, plans it in (what the operator does when its pod is
    /// Ready); returns when every move of that plan is done.
    async fn scale_out(&self) -> Duration {
        let started = Instant::now();
        let name = format!("app-{}", self.nodes.lock().expect("nodes").len());
        let (node, port, app) = spawn_node(&self.nats.url(), &name, self.app, self.logs.path());
        self.apps.lock().expect("apps").extend(app);
        self.nodes
            .lock()
            .expect("nodes")
            .push((name.clone(), node, port));
        // Ready, as the operator waits for a pod to be Ready before it makes it a member: the
        // node listens for transfers (with an app, once the app has told it its kinds).
        wait_until("the new node ready", || async {
            matches!(http_get(port, "/readyz").await, Some((200, _)))
        })
        .await;
        let names: Vec<String> = self
            .nodes
            .lock()
            .expect("nodes")
            .iter()
            .map(|(n, _, _)| n.clone())
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let next = {
            let previous = self.plan.lock().expect("plan").clone();
            next_plan(Some(&previous), &names, SHARDS, 8)
        };
        let moves = next.moves.len();
        let progress = aether_tests::cluster::progress_log(&self.nc, PREFIX).await;
        publish(&self.nc, PREFIX, &next, 30).await;
        let epoch = next.epoch;
        *self.plan.lock().expect("plan") = next;
        wait_until("every move of the scale-out done", || async {
            let log = progress.lock().expect("log");
            let done: std::collections::BTreeSet<u32> = log
                .iter()
                .filter(|p| p.epoch == epoch && p.phase == aether_core::crd::MovePhase::Done)
                .map(|p| p.shard)
                .collect();
            done.len() >= moves
        })
        .await;
        started.elapsed()
    }
}

impl System for Aether {
    fn name(&self) -> &'static str {
        if self.app {
            "aether, Python app"
        } else {
            "aether"
        }
    }

    async fn call(
        &self,
        entry: Option<usize>,
        actor: usize,
        add: Option<i64>,
        seq: u64,
    ) -> Result<i64, String> {
        let op = match add {
            Some(n) => Op::Command {
                command: serde_json::json!({ "add": n }),
            },
            None => Op::Read,
        };
        let req = Request::new(
            ActorRef::new("counter", format!("c{actor}")),
            op,
            add.map(|_| format!("peers-{seq}")),
        );
        let reply = match entry {
            None => self.client.send(&req).await,
            Some(i) => {
                let name = self.nodes.lock().expect("nodes")[i].0.clone();
                self.client
                    .request_once(Names::new(PREFIX).node_requests(&name), &req)
                    .await
            }
        }
        .map_err(|e| e.to_string())?;
        match reply.outcome {
            Outcome::Ok(ok) => Ok(ok.state["value"].as_i64().unwrap_or(0)),
            Outcome::Error(e) => Err(format!("{e:?}")),
        }
    }

    fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self
            .nodes
            .lock()
            .expect("nodes")
            .iter()
            .map(|(_, p, _)| p.child.id())
            .collect();
        pids.extend(self.apps.lock().expect("apps").iter().map(|p| p.child.id()));
        pids.extend(self.nats.pid());
        pids
    }
}

// ---------------------------------------------------------------------------------------------
// Dapr: redis-server, placement, and per pod a daprd and the counter app.

struct DaprPod {
    daprd: Process,
    app: Process,
    http_port: u16,
}

struct Dapr {
    tools: PathBuf,
    dir: tempfile::TempDir,
    redis: Process,
    placement: Process,
    placement_port: u16,
    /// Grows on scale-out.
    pods: Mutex<Vec<DaprPod>>,
    http: Http,
}

fn spawn(program: &Path, args: &[String], log: &Path) -> Process {
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(log).expect("log file"))
        .stderr(Stdio::from(
            std::fs::OpenOptions::new()
                .append(true)
                .open(log)
                .expect("log file"),
        ))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
    Process { child }
}

impl Dapr {
    async fn start(pods: usize) -> Self {
        let tools = PathBuf::from(
            std::env::var("AETHER_TOOLS_DIR").expect("AETHER_TOOLS_DIR (make bench-peers sets it)"),
        )
        .join(format!("dapr-{DAPR_VERSION}"));
        for bin in ["daprd", "placement"] {
            assert!(
                tools.join(bin).is_file(),
                "{} is missing: run `make tools-peers`",
                tools.join(bin).display()
            );
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let redis_port = free_port();
        let redis = spawn(
            Path::new(
                &std::env::var("AETHER_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into()),
            ),
            &[
                "--port".into(),
                redis_port.to_string(),
                "--bind".into(),
                "127.0.0.1".into(),
                "--save".into(),
                String::new(),
                "--appendonly".into(),
                "no".into(),
            ],
            &dir.path().join("redis.log"),
        );
        let components = dir.path().join("components");
        std::fs::create_dir_all(&components).expect("components dir");
        std::fs::write(
            components.join("actorstore.yaml"),
            format!(
                "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: actorstore\nspec:\n  type: state.redis\n  version: v1\n  metadata:\n  - name: redisHost\n    value: \"127.0.0.1:{redis_port}\"\n  - name: redisPassword\n    value: \"\"\n  - name: actorStateStore\n    value: \"true\"\n"
            ),
        )
        .expect("component");
        let (placement_port, healthz) = (free_port(), free_port());
        let placement = spawn(
            &tools.join("placement"),
            &[
                "--id=dapr-placement-0".into(),
                format!(
                    "--initial-cluster=dapr-placement-0=127.0.0.1:{}",
                    free_port()
                ),
                format!("--port={placement_port}"),
                format!("--healthz-port={healthz}"),
                "--enable-metrics=false".into(),
                "--inmem-store-enabled=true".into(),
                "--tls-enabled=false".into(),
                "--log-level=warn".into(),
            ],
            &dir.path().join("placement.log"),
        );
        wait_until("placement healthy", || async {
            matches!(http_get(healthz, "/healthz").await, Some((200, _)))
        })
        .await;
        let d = Self {
            tools,
            dir,
            redis,
            placement,
            placement_port,
            pods: Mutex::new(Vec::new()),
            http: HttpClient::builder(TokioExecutor::new())
                .pool_max_idle_per_host(IN_FLIGHT * 2)
                .build_http(),
        };
        for _ in 0..pods {
            d.add_pod().await;
        }
        d
    }

    /// Starts a daprd and its app, and waits until daprd says its actor runtime is connected.
    async fn add_pod(&self) {
        let i = self.pods.lock().expect("pods").len();
        let (app_port, http_port) = (free_port(), free_port());
        let app = spawn(
            Path::new("python3"),
            &[
                aether_tests::stack::repo()
                    .join("tests/peers/dapr_counter.py")
                    .display()
                    .to_string(),
                "--port".into(),
                app_port.to_string(),
                "--dapr-port".into(),
                http_port.to_string(),
            ],
            &self.dir.path().join(format!("app-{i}.log")),
        );
        let daprd = Command::new(self.tools.join("daprd"))
            .args([
                "--mode=standalone".to_owned(),
                "--app-id=peers".into(),
                format!("--app-port={app_port}"),
                "--app-protocol=http".into(),
                "--app-channel-address=127.0.0.1".into(),
                format!("--dapr-http-port={http_port}"),
                format!("--dapr-grpc-port={}", free_port()),
                format!("--dapr-internal-grpc-port={}", free_port()),
                "--dapr-internal-grpc-listen-address=127.0.0.1".into(),
                "--dapr-listen-addresses=127.0.0.1".into(),
                "--enable-metrics=false".into(),
                format!("--placement-host-address=127.0.0.1:{}", self.placement_port),
                format!(
                    "--resources-path={}",
                    self.dir.path().join("components").display()
                ),
                "--log-level=warn".into(),
                "--enable-mtls=false".into(),
            ])
            .env("DAPR_HOST_IP", "127.0.0.1")
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(self.dir.path().join(format!("daprd-{i}.log"))).expect("log"),
            )
            .spawn()
            .expect("start daprd");
        let daprd = Process { child: daprd };
        wait_until(&format!("daprd {i} connected to placement"), || async {
            http_get(http_port, "/v1.0/metadata")
                .await
                .is_some_and(|(s, body)| s == 200 && body.contains("placement: connected"))
        })
        .await;
        self.pods.lock().expect("pods").push(DaprPod {
            daprd,
            app,
            http_port,
        });
    }

    fn port(&self, i: usize) -> u16 {
        self.pods.lock().expect("pods")[i].http_port
    }

    /// Actors active on pod `i` (daprd's metadata).
    async fn active_on(&self, i: usize) -> u64 {
        let Some((200, body)) = http_get(self.port(i), "/v1.0/metadata").await else {
            return 0;
        };
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        v["actorRuntime"]["activeActors"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a["count"].as_u64())
            .sum()
    }

    /// Starts a third pod; returns when it serves its share: the actors active on it stopped
    /// growing (the same count for a second), or after a minute.
    async fn scale_out(&self) -> Duration {
        let started = Instant::now();
        self.add_pod().await;
        let i = self.pods.lock().expect("pods").len() - 1;
        let (mut last, mut since) = (0, Instant::now());
        while started.elapsed() < Duration::from_secs(60) {
            let now = self.active_on(i).await;
            if now != last {
                (last, since) = (now, Instant::now());
            } else if now > 0 && since.elapsed() >= Duration::from_secs(1) {
                return since - started;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!("Dapr: the new pod's actors still changing after 60 s ({last})");
        started.elapsed()
    }
}

impl System for Dapr {
    fn name(&self) -> &'static str {
        "Dapr"
    }

    async fn call(
        &self,
        entry: Option<usize>,
        actor: usize,
        add: Option<i64>,
        seq: u64,
    ) -> Result<i64, String> {
        // Any pod: the pods' sidecars in turn, as a Service would spread the calls (aether's
        // queue group spreads them over every node).
        let pods = self.pods.lock().expect("pods").len();
        let pod = entry.unwrap_or(seq as usize % pods);
        let (method, body) = match add {
            Some(n) => ("add", serde_json::json!({ "add": n }).to_string()),
            None => ("read", String::new()),
        };
        let uri = format!(
            "http://127.0.0.1:{}/v1.0/actors/Counter/c{actor}/method/{method}",
            self.port(pod)
        );
        let req = http::Request::put(uri)
            .header("content-type", "application/json")
            .body(Full::new(bytes::Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let exchange = async {
            let res = self.http.request(req).await.map_err(|e| e.to_string())?;
            let status = res.status();
            let bytes = res
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(Duration::from_secs(30), exchange)
            .await
            .map_err(|_| "timed out".to_owned())??;
        if !status.is_success() {
            return Err(format!("{status}: {}", String::from_utf8_lossy(&bytes)));
        }
        let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        Ok(v["value"].as_i64().unwrap_or(0))
    }

    fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.redis.child.id(), self.placement.child.id()];
        for p in self.pods.lock().expect("pods").iter() {
            pids.push(p.daprd.child.id());
            pids.push(p.app.child.id());
        }
        pids
    }
}

// ---------------------------------------------------------------------------------------------

/// Waits for `cond`, at most two minutes (a run that cannot go on stops with what it waited for).
async fn wait_until<F, Fut>(what: &str, cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_for(what, Duration::from_secs(120), cond).await;
}

/// CPU seconds (user + system) the processes `pids` have used so far.
fn cpu_seconds(pids: &[u32]) -> f64 {
    let ticks: f64 = pids
        .iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|s| {
            // Fields after the command (which may hold spaces) in parentheses.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
        })
        .sum();
    ticks / 100.0
}

/// Acknowledged adds per actor.
type Acked = Arc<Mutex<BTreeMap<usize, i64>>>;

/// `calls` calls, `IN_FLIGHT` at a time, on random actors (seeded); adds are counted in `acked`.
async fn steady<S: System + 'static>(
    sys: &Arc<S>,
    entry: Option<usize>,
    add: bool,
    calls: usize,
    seed: u64,
    acked: &Acked,
) -> (Figure, f64, usize) {
    let cpu = cpu_seconds(&sys.pids());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..IN_FLIGHT {
        let (sys, next, acked) = (sys.clone(), next.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed * 1000 + w as u64);
            let (mut lat, mut failed) = (Vec::new(), 0);
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= calls {
                    break;
                }
                let actor = rng.random_range(0..ACTORS);
                let t = Instant::now();
                let seq = seed * 10_000_000 + i as u64;
                match sys.call(entry, actor, add.then_some(1), seq).await {
                    Ok(_) => {
                        lat.push(t.elapsed().as_micros() as u64);
                        if add {
                            *acked.lock().expect("acked").entry(actor).or_default() += 1;
                        }
                    }
                    Err(_) => failed += 1,
                }
            }
            (lat, failed)
        }));
    }
    let (mut lat, mut failed) = (Vec::new(), 0);
    for t in tasks {
        let (l, f) = t.await.expect("worker");
        lat.extend(l);
        failed += f;
    }
    let fig = figure(lat, start.elapsed());
    let cpu = (cpu_seconds(&sys.pids()) - cpu) / calls as f64 * 10_000.0;
    (fig, cpu, failed)
}

/// One add to every actor, `IN_FLIGHT` at a time; returns how many failed.
async fn warm<S: System + 'static>(sys: &Arc<S>, acked: &Acked) -> usize {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..IN_FLIGHT {
        let (sys, next, acked) = (sys.clone(), next.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let mut failed = 0;
            loop {
                let actor = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if actor >= ACTORS {
                    break failed;
                }
                let seq = 900_000_000 + actor as u64;
                match sys.call(None, actor, Some(1), seq).await {
                    Ok(_) => *acked.lock().expect("acked").entry(actor).or_default() += 1,
                    Err(_) => failed += 1,
                }
            }
        }));
    }
    let mut failed = 0;
    for t in tasks {
        failed += t.await.expect("worker");
    }
    failed
}

/// Load until `stop`, recording every call.
fn load<S: System + 'static>(
    sys: &Arc<S>,
    stop: &Arc<std::sync::atomic::AtomicBool>,
    acked: &Acked,
    seed: u64,
) -> Vec<tokio::task::JoinHandle<Vec<Call>>> {
    (0..IN_FLIGHT)
        .map(|w| {
            let (sys, stop, acked) = (sys.clone(), stop.clone(), acked.clone());
            tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed * 1000 + w as u64);
                let mut calls = Vec::new();
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let actor = rng.random_range(0..ACTORS);
                    let start = Instant::now();
                    let seq = seed * 10_000_000 + w as u64 * 1_000_000 + i;
                    i += 1;
                    let ok = sys.call(None, actor, Some(1), seq).await.is_ok();
                    if ok {
                        *acked.lock().expect("acked").entry(actor).or_default() += 1;
                    }
                    calls.push(Call {
                        actor,
                        start,
                        end: Instant::now(),
                        ok,
                    });
                }
                calls
            })
        })
        .collect()
}

/// Scale-out figures from the recorded calls.
#[derive(Debug, Default, serde::Serialize)]
struct ScaleOut {
    calls: usize,
    failed: usize,
    unavailable_p50_ms: f64,
    unavailable_p99_ms: f64,
    unavailable_max_ms: f64,
    serves_share_s: f64,
    lost: usize,
}

/// Every actor read against its acknowledged adds: how many differ.
async fn lost<S: System>(sys: &S, acked: &Acked) -> usize {
    let acked = acked.lock().expect("acked").clone();
    let mut lost = 0;
    for (actor, sum) in acked {
        let mut value = None;
        for attempt in 0..5u64 {
            if let Ok(v) = sys.call(None, actor, None, attempt).await {
                value = Some(v);
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if value != Some(sum) {
            eprintln!(
                "{}: c{actor} read {value:?}, acknowledged {sum}",
                sys.name()
            );
            lost += 1;
        }
    }
    lost
}

async fn scale_out<S: System + 'static>(
    sys: &Arc<S>,
    acked: &Acked,
    seed: u64,
    grow: impl std::future::Future<Output = Duration>,
) -> ScaleOut {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers = load(sys, &stop, acked, seed);
    tokio::time::sleep(AROUND).await;
    let share = grow.await;
    tokio::time::sleep(AROUND).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut calls = Vec::new();
    for w in workers {
        calls.extend(w.await.expect("worker"));
    }
    let o = outage(calls, Instant::now());
    ScaleOut {
        calls: o.calls,
        failed: o.failed,
        unavailable_p50_ms: o.p50_ms,
        unavailable_p99_ms: o.p99_ms,
        unavailable_max_ms: o.max_ms,
        serves_share_s: share.as_secs_f64(),
        lost: 0,
    }
}

/// The steady-state figures of one system: per workload, the median run, and CPU per 10,000 calls.
#[derive(Debug, Default)]
struct Steady {
    runs: BTreeMap<&'static str, Vec<(Figure, f64, usize)>>,
}

impl Steady {
    fn median(&self, workload: &str) -> (Figure, f64, usize) {
        let mut runs = self.runs.get(workload).cloned().unwrap_or_default();
        runs.sort_by(|a, b| a.0.ops_per_s.total_cmp(&b.0.ops_per_s));
        let mut cpu: Vec<f64> = runs.iter().map(|r| r.1).collect();
        let failed = runs.iter().map(|r| r.2).sum();
        let mid = runs[runs.len() / 2].0.clone();
        (mid, median(&mut cpu), failed)
    }
}

const WORKLOADS: [(&str, Option<usize>, bool); 3] = [
    ("adds, any pod", None, true),
    ("reads, any pod", None, false),
    ("adds through pod 0", Some(0), true),
];

async fn run_steady<S: System + 'static>(
    sys: &Arc<S>,
    run: usize,
    acked: &Acked,
    out: &mut Steady,
) {
    for (i, (name, entry, add)) in WORKLOADS.iter().enumerate() {
        let r = steady(sys, *entry, *add, CALLS, (run * 10 + i) as u64 + 1, acked).await;
        eprintln!(
            "{} {name} run {run}: {:.0}/s p50 {} us p99 {} us, {:.2} CPU s per 10k, {} failed",
            sys.name(),
            r.0.ops_per_s,
            r.0.p50_us,
            r.0.p99_us,
            r.1,
            r.2
        );
        out.runs.entry(name).or_default().push(r);
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let started = Instant::now();
    eprintln!(
        "starting aether twice (nats-server, 2 nodes; built-in counter, then a Python app) and Dapr {DAPR_VERSION} (redis, placement, 2 daprd + apps)"
    );
    let a = Arc::new(Aether::start(2, false).await);
    let ap = Arc::new(Aether::start(2, true).await);
    let d = Arc::new(Dapr::start(2).await);
    let (a_acked, ap_acked, d_acked): (Acked, Acked, Acked) = Default::default();

    // Warm: every actor exists in each with a known value.
    eprintln!(
        "warm: aether {} failed, aether app {} failed, Dapr {} failed",
        warm(&a, &a_acked).await,
        warm(&ap, &ap_acked).await,
        warm(&d, &d_acked).await
    );

    // Scale-out 2 -> 3 under load (adds through any pod), one system at a time.
    let mut a_scale = scale_out(&a, &a_acked, 7, a.scale_out()).await;
    a_scale.lost = lost(a.as_ref(), &a_acked).await;
    let mut ap_scale = scale_out(&ap, &ap_acked, 7, ap.scale_out()).await;
    ap_scale.lost = lost(ap.as_ref(), &ap_acked).await;
    let mut d_scale = scale_out(&d, &d_acked, 7, d.scale_out()).await;
    d_scale.lost = lost(d.as_ref(), &d_acked).await;
    eprintln!(
        "scale-out: aether {a_scale:?}\nscale-out: aether app {ap_scale:?}\nscale-out: Dapr {d_scale:?}"
    );

    // Steady state on 3 pods, interleaved, 3 runs.
    let (mut a_steady, mut ap_steady, mut d_steady) =
        (Steady::default(), Steady::default(), Steady::default());
    for run in 0..RUNS {
        run_steady(&a, run, &a_acked, &mut a_steady).await;
        run_steady(&ap, run, &ap_acked, &mut ap_steady).await;
        run_steady(&d, run, &d_acked, &mut d_steady).await;
    }
    let a_lost = lost(a.as_ref(), &a_acked).await;
    let ap_lost = lost(ap.as_ref(), &ap_acked).await;
    let d_lost = lost(d.as_ref(), &d_acked).await;

    let report = report(
        &[
            Measured {
                name: "aether",
                steady: &a_steady,
                scale: &a_scale,
                lost: a_lost,
            },
            Measured {
                name: "aether, Python app",
                steady: &ap_steady,
                scale: &ap_scale,
                lost: ap_lost,
            },
            Measured {
                name: "Dapr",
                steady: &d_steady,
                scale: &d_scale,
                lost: d_lost,
            },
        ],
        started.elapsed(),
    );
    println!("{report}");
    let out = std::env::var("AETHER_PEERS_OUT").unwrap_or_else(|_| "BENCHMARKS.md".to_owned());
    let old = std::fs::read_to_string(&out).unwrap_or_default();
    let section = format!("<!-- peers:begin -->\n{report}<!-- peers:end -->");
    let new = match (
        old.find("<!-- peers:begin -->"),
        old.find("<!-- peers:end -->"),
    ) {
        (Some(b), Some(e)) => format!(
            "{}{section}{}",
            &old[..b],
            &old[e + "<!-- peers:end -->".len()..]
        ),
        _ => format!("{old}\n{section}\n"),
    };
    std::fs::write(&out, new).unwrap_or_else(|e| panic!("{out}: {e}"));
    eprintln!("wrote the Peers section of {out}");
}

/// What one system showed over the whole run.
struct Measured<'a> {
    name: &'static str,
    steady: &'a Steady,
    scale: &'a ScaleOut,
    /// Actors whose value differs from their acknowledged adds at the end.
    lost: usize,
}

/// The Peers section; `systems` are aether (built-in kind), aether with the Python app, and Dapr,
/// in that order.
fn report(systems: &[Measured<'_>; 3], took: Duration) -> String {
    let redis = Command::new(
        std::env::var("AETHER_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into()),
    )
    .arg("--version")
    .output()
    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    .unwrap_or_default();
    let python = Command::new("python3")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let [a, ap, d] = systems;
    let mut s = String::new();
    s.push_str("## Peers: aether beside Dapr actors\n\n");
    s.push_str(&format!(
        "One run of `make bench-peers` ({:.0} s), this machine (2 cores), everything on loopback. \
         aether: {} node processes (`aether-node run`), one nats-server v2.15.2 with JetStream (file \
         store); run twice: with the built-in `counter` kind (`aether`), and with the same counter as \
         a Python app behind each node over the app protocol (`aether, Python app`: \
         `tests/peers/aether_counter.py`, one decide call per add; reads are served from the state \
         the sidecar holds). Dapr v1.14.0 (daprd and placement built from the Go module, `-tags \
         stablecomponents`), self-hosted: one placement (in-memory raft), one daprd per pod \
         (`--app-id peers`, mTLS and metrics off), the counter actor as a Python app \
         (`tests/peers/dapr_counter.py`, its state read and written through daprd) behind each, \
         Redis as the actor state store ({redis}, no persistence). Both apps: {python}, standard \
         library HTTP servers. Same workload: {ACTORS} counter actors, {IN_FLIGHT} calls in flight, \
         {CALLS} calls per run, the systems interleaved, median of {RUNS} runs; a call adds 1 (or \
         reads). CPU: user + system seconds of each system's processes (aether: nodes, apps and \
         nats-server; Dapr: daprd, apps, placement, Redis) per 10,000 calls; the load generator \
         (this process) is not counted. `aether, Python app` against Dapr is like for like: the \
         same logic in the same language behind each sidecar.\n\n",
        took.as_secs_f64(),
        3
    ));
    s.push_str("| workload, 3 pods | system | calls/s | vs Dapr | p50 / p99 | p99 vs Dapr | CPU s / 10k | failed |\n|---|---|---|---|---|---|---|---|\n");
    for (workload, _, _) in WORKLOADS {
        let (df, _, _) = d.steady.median(workload);
        for m in systems {
            let (f, cpu, failed) = m.steady.median(workload);
            s.push_str(&format!(
                "| {workload} | {} | {:.0} | {:.2}x | {:.2} / {:.2} ms | {:.2}x | {cpu:.2} | {failed} |\n",
                m.name,
                f.ops_per_s,
                f.ops_per_s / df.ops_per_s.max(1e-9),
                f.p50_us as f64 / 1e3,
                f.p99_us as f64 / 1e3,
                f.p99_us as f64 / (df.p99_us as f64).max(1e-9),
            ));
        }
    }
    s.push_str("\n`failed`: calls without a final answer over the runs. Scale-out 2 -> 3 pods under load (adds, 16 in flight, through any pod: aether's queue group, Dapr's sidecars in turn): per actor, the longest it could not be used (a call's latency, or from a failed call to the actor's next success), over all actors called; calls failed; time from starting the new member's processes until it serves its share (aether: every move of the plan done; Dapr: the count of actors active on the new daprd stopped changing for a second); state lost (every actor read afterwards against its acknowledged adds).\n\n");
    s.push_str("| | calls | failed | unavailable p50 | p99 | max | serves its share after | actors lost or wrong |\n|---|---|---|---|---|---|---|---|\n");
    for m in systems {
        let sc = m.scale;
        s.push_str(&format!(
            "| {} | {} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} s | {} |\n",
            m.name,
            sc.calls,
            sc.failed,
            sc.unavailable_p50_ms,
            sc.unavailable_p99_ms,
            sc.unavailable_max_ms,
            sc.serves_share_s,
            sc.lost
        ));
    }
    s.push_str(&format!(
        "\nAt the end, after all runs: actors whose value differs from their acknowledged adds: aether {}, aether with the app {}, Dapr {}.\n\n",
        a.lost, ap.lost, d.lost
    ));
    let adds = "adds, any pod";
    let ratio = |m: &Measured<'_>| {
        (
            m.steady.median(adds).0.ops_per_s / d.steady.median(adds).0.ops_per_s.max(1e-9),
            m.steady.median(adds).0.p99_us as f64
                / (d.steady.median(adds).0.p99_us as f64).max(1e-9),
            m.scale.unavailable_p99_ms / d.scale.unavailable_p99_ms.max(1e-9),
        )
    };
    for m in [a, ap] {
        let (tput, p99, scale) = ratio(m);
        s.push_str(&format!(
            "Goals for `{}` (issue: >= 3x Dapr's throughput at <= 0.5x its p99; scale-out unavailability p99 <= 0.1x Dapr's, 0 failed, 0 lost): adds {tput:.2}x throughput, {p99:.2}x p99; scale-out p99 {scale:.2}x, failed {}, lost {}.\n\n",
            m.name, m.scale.failed, m.scale.lost
        ));
    }
    s
}
