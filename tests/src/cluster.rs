//! Nodes for tests: in-process nodes (fast, inspectable) and OS-process nodes (real signals), plus
//! plan publishing exactly as the operator does it (core planner -> `PlanMessage` -> KV).

use crate::Process;
use aether_core::crd::Strategy;
use aether_core::plan::{MemberInput, Plan, PlanSpec, plan};
use aether_core::protocol::{ActorRef, Names, Outcome, PlanMessage};
use aether_node::client::Client;
use aether_node::config::{NatsArgs, NodeConfig};
use aether_node::metrics::Metrics;
use aether_node::node::{Health, Node, Shared};
use aether_node::store::EventStore;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// NATS settings for a test node.
#[must_use]
pub fn nats_args(url: &str, prefix: &str) -> NatsArgs {
    NatsArgs {
        nats_url: url.to_owned(),
        nats_user: None,
        nats_password: None,
        nats_token: None,
        nats_nkey: None,
        nats_creds: None,
        nats_creds_data: None,
        nats_tls_ca: None,
        nats_tls_cert: None,
        nats_tls_key: None,
        prefix: prefix.to_owned(),
    }
}

/// Settings of a test node.
#[must_use]
pub fn node_config(url: &str, prefix: &str, name: &str) -> NodeConfig {
    NodeConfig {
        nats: nats_args(url, prefix),
        pod_name: name.to_owned(),
        http_addr: "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")),
        stream_replicas: 1,
        passivate_after: Duration::from_secs(300),
        drain_timeout: Duration::from_secs(20),
        max_request_bytes: 64 * 1024,
        queue_limit: 10_000,
        max_state_bytes: 256 * 1024,
        max_inflight: 10_000,
        large_reply_rate: 200_000_000,
        max_actors: 100_000,
        compact_events: false,
        app_url: None,
        app_timeout: Duration::from_secs(2),
        api_addr: aether_node::config::ApiAddr(None),
        log_json: false,
    }
}

/// Every progress report published, in arrival order (see [`progress_log`]).
pub type ProgressLog = Arc<std::sync::Mutex<Vec<aether_core::protocol::Progress>>>;

/// A node running in this process.
#[derive(Debug)]
pub struct TestNode {
    /// Pod name.
    pub name: String,
    /// Its state.
    pub shared: Arc<Shared>,
    /// Its health.
    pub health: Arc<Health>,
    /// Its metrics.
    pub metrics: Arc<Metrics>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<aether_node::Result<()>>>,
}

impl TestNode {
    /// Starts a node and waits until it is subscribed.
    pub async fn start(url: &str, prefix: &str, name: &str) -> Self {
        Self::start_with(node_config(url, prefix, name)).await
    }

    /// Starts a node with these settings.
    pub async fn start_with(cfg: NodeConfig) -> Self {
        Self::start_with_health(cfg, Arc::new(Health::default())).await
    }

    /// Starts a node with these settings, reporting its readiness in `health` from the start.
    pub async fn start_with_health(cfg: NodeConfig, health: Arc<Health>) -> Self {
        Self::start_full(cfg, aether_node::behaviour::Registry::builtin(), health).await
    }

    /// Starts a node hosting the kinds of `registry` (and the app's, with `--app-url`).
    pub async fn start_full(
        cfg: NodeConfig,
        registry: aether_node::behaviour::Registry,
        health: Arc<Health>,
    ) -> Self {
        let name = cfg.pod_name.clone();
        let metrics = Arc::new(Metrics::default());
        let node = Node::connect_with(cfg, registry, health.clone(), metrics.clone())
            .await
            .unwrap_or_else(|e| panic!("node {name} did not start: {e}"));
        let shared = node.shared();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(node.serve(async move {
            let _ = stopped.await;
        }));
        Self {
            name,
            shared,
            health,
            metrics,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Delivers "SIGTERM": the node drains.
    pub fn terminate(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits until the node has exited (after [`TestNode::terminate`]).
    pub async fn exited(&mut self, timeout: Duration) -> aether_node::Result<()> {
        let task = self
            .task
            .take()
            .unwrap_or_else(|| panic!("{} already joined", self.name));
        tokio::time::timeout(timeout, task)
            .await
            .unwrap_or_else(|_| panic!("{} did not exit within {timeout:?}", self.name))
            .unwrap_or_else(|e| panic!("{} panicked: {e}", self.name))
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        self.shared.stop_all_workers();
    }
}

/// A node as a separate OS process (`aether-node run`).
pub fn spawn_process(bin: &Path, url: &str, prefix: &str, name: &str, http_port: u16) -> Process {
    spawn_process_with(bin, url, prefix, name, http_port, &[])
}

/// A node as a separate OS process, with `extra` arguments.
pub fn spawn_process_with(
    bin: &Path,
    url: &str,
    prefix: &str,
    name: &str,
    http_port: u16,
    extra: &[&str],
) -> Process {
    spawn_process_env(bin, url, prefix, name, http_port, extra, &[])
}

/// As [`spawn_process_with`], with `env` set in the process's environment.
pub fn spawn_process_env(
    bin: &Path,
    url: &str,
    prefix: &str,
    name: &str,
    http_port: u16,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Process {
    let child = Command::new(bin)
        .args([
            "run",
            "--pod-name",
            name,
            "--nats-url",
            url,
            "--prefix",
            prefix,
        ])
        .args([
            "--http-addr",
            &format!("127.0.0.1:{http_port}"),
            "--drain-timeout",
            "20",
        ])
        // No app API unless `extra` asks for one.
        .args(
            (!extra.contains(&"--api-addr"))
                .then_some(["--api-addr", "off"])
                .into_iter()
                .flatten(),
        )
        .args(extra)
        .envs(env.iter().copied())
        // `AETHER_NODE_LOG` (a `RUST_LOG` filter) shows more of the nodes when diagnosing a run.
        .env(
            "RUST_LOG",
            std::env::var("AETHER_NODE_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    Process { child }
}

/// The workspace's node binary as a process `name` of `prefix` on `nats`, its HTTP on `port`,
/// with `extra` flags.
pub fn node_process(
    nats: &crate::NatsServer,
    prefix: &str,
    name: &str,
    port: u16,
    extra: &[&str],
) -> Process {
    spawn_process_with(
        &crate::workspace_binary("aether-node"),
        &nats.url(),
        prefix,
        name,
        port,
        extra,
    )
}

/// A node as an OS process with its HTTP port, started again under the same name and port.
#[derive(Debug)]
pub struct NodeProcess {
    /// The pod name.
    pub name: &'static str,
    /// Its `/healthz`, `/readyz` and `/metrics` port.
    pub port: u16,
    extra: &'static [&'static str],
    process: Option<Process>,
}

impl NodeProcess {
    /// Starts `name` of `prefix` on the NATS at `url`.
    #[must_use]
    pub fn start(url: &str, prefix: &str, name: &'static str) -> Self {
        Self::start_with(url, prefix, name, &[])
    }

    /// Starts `name` with `extra` flags (kept for its restarts).
    #[must_use]
    pub fn start_with(
        url: &str,
        prefix: &str,
        name: &'static str,
        extra: &'static [&'static str],
    ) -> Self {
        let mut p = Self {
            name,
            port: crate::free_port(),
            extra,
            process: None,
        };
        p.restart(url, prefix);
        p
    }

    /// Starts the process again (after [`NodeProcess::kill`]).
    pub fn restart(&mut self, url: &str, prefix: &str) {
        let bin = crate::workspace_binary("aether-node");
        self.process = Some(spawn_process_with(
            &bin, url, prefix, self.name, self.port, self.extra,
        ));
    }

    /// SIGKILLs the process.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// Waits until `/readyz` answers 200.
    pub async fn ready(&self, timeout: Duration) {
        wait_ready(self.name, self.port, timeout).await;
    }

    /// A metric's value on `/metrics` (a counter or gauge without labels).
    pub async fn metric(&self, name: &str) -> Option<i64> {
        metric(self.port, name).await
    }

    /// The plan epoch the node serves settled (`aether_node_plan_settled_epoch`), 0 before one.
    pub async fn settled_epoch(&self) -> u64 {
        self.metric("aether_node_plan_settled_epoch")
            .await
            .and_then(|e| u64::try_from(e).ok())
            .unwrap_or(0)
    }
}

/// Waits until a read of the counter `id` through `client` answers: the node serves by a plan.
pub async fn wait_serving(client: &aether_node::client::Client, id: &str, timeout: Duration) {
    crate::wait_for("the node serving", timeout, || async {
        client
            .read("counter", id)
            .await
            .is_ok_and(|r| matches!(r.outcome, aether_core::protocol::Outcome::Ok(_)))
    })
    .await;
}

/// Waits until the `/readyz` of the node `name` at `port` answers 200.
pub async fn wait_ready(name: &str, port: u16, timeout: Duration) {
    crate::wait_for(&format!("{name} ready"), timeout, || async {
        matches!(crate::http_get(port, "/readyz").await, Some((200, _)))
    })
    .await;
}

/// A counter or gauge (without labels) of the node at `port` that cannot be negative; 0 when it
/// is not there yet.
pub async fn count(port: u16, name: &str) -> u64 {
    metric(port, name)
        .await
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0)
}

/// The value of metric `name` (without labels) on the `/metrics` of the node at `port`.
pub async fn metric(port: u16, name: &str) -> Option<i64> {
    let (_, text) = crate::http_get(port, "/metrics").await?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// The next plan for `members` (active pod names), as the operator computes it.
#[must_use]
pub fn next_plan(previous: Option<&Plan>, members: &[&str], shards: u32, capacity: u32) -> Plan {
    let members: Vec<MemberInput> = members.iter().map(|m| MemberInput::active(*m)).collect();
    let spec = PlanSpec {
        shards,
        capacity,
        strategy: Strategy::AnchorHash,
    };
    plan(previous, &BTreeSet::new(), &members, &spec).unwrap_or_else(|e| panic!("plan: {e}"))
}

/// The plan after `plan` in which only `shard` moves, from its owner to the member `to` (a plan made
/// by hand, to move exactly one shard).
#[must_use]
pub fn move_one_shard(plan: &Plan, shard: u32, to: &str) -> Plan {
    let from = plan
        .owner(shard)
        .expect("the shard has an owner")
        .to_owned();
    let bucket = plan
        .members
        .iter()
        .find(|m| m.name == to)
        .expect("`to` is a member")
        .bucket;
    let mut next = plan.clone();
    next.epoch += 1;
    next.shard_map.set(shard, bucket);
    next.moves = vec![aether_core::plan::Move {
        shard,
        from: Some(from),
        to: to.to_owned(),
    }];
    next
}

/// Publishes a plan to the KV bucket the way the operator does.
pub async fn publish(client: &async_nats::Client, prefix: &str, plan: &Plan, timeout_seconds: u32) {
    publish_message(client, prefix, &PlanMessage::new(plan, 4, timeout_seconds)).await;
}

/// Publishes a plan message as it is (the operator's fields included).
pub async fn publish_message(client: &async_nats::Client, prefix: &str, msg: &PlanMessage) {
    let js = async_nats::jetstream::new(client.clone());
    let bucket = aether_nats::plans::open_bucket(&js, &Names::new(prefix), 1)
        .await
        .unwrap_or_else(|e| panic!("plan bucket: {e}"));
    aether_nats::plans::publish(&bucket, msg)
        .await
        .unwrap_or_else(|e| panic!("publish plan: {e}"));
}

/// Starts in-process nodes named `names`, publishes the first plan for them and waits until every node
/// holds it.
pub async fn start_cluster(
    nats_url: &str,
    client: &async_nats::Client,
    prefix: &str,
    names: &[&str],
    shards: u32,
    capacity: u32,
    timeout_seconds: u32,
) -> (Vec<TestNode>, Plan) {
    let mut nodes = Vec::new();
    for name in names {
        nodes.push(TestNode::start(nats_url, prefix, name).await);
    }
    let plan = next_plan(None, names, shards, capacity);
    publish(client, prefix, &plan, timeout_seconds).await;
    for n in &nodes {
        crate::wait_for(
            "every node to hold the first plan",
            Duration::from_secs(30),
            || async { n.shared.settled_at(plan.epoch) },
        )
        .await;
    }
    (nodes, plan)
}

/// One request to any node of `prefix`, answered (never silence) within 20 s.
pub async fn ask(
    nc: &async_nats::Client,
    prefix: &str,
    req: &aether_core::protocol::Request,
) -> aether_core::protocol::Reply {
    // "No responders" (no node in the queue group: none started yet, or one restarting) is
    // retried, as PROTOCOL.md tells a client to.
    let body: bytes::Bytes = aether_core::protocol::encode(req).expect("encodes").into();
    let subject = Names::new(prefix).any_node();
    let msg = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match nc.request(subject.clone(), body.clone()).await {
                Err(e) if e.kind() == async_nats::client::RequestErrorKind::NoResponders => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
    })
    .await
    .expect("answered in time")
    .expect("a reply, not silence");
    aether_core::protocol::decode(&msg.payload).expect("a protocol reply")
}

/// [`ask`], with `unavailable` answers retried after their `retryAfterMs` as PROTOCOL.md tells a
/// client to (a node on a loaded machine may have let its lease lapse for a moment): the first
/// other answer, within 20 s.
pub async fn ask_served(
    nc: &async_nats::Client,
    prefix: &str,
    req: &aether_core::protocol::Request,
) -> aether_core::protocol::Reply {
    let start = std::time::Instant::now();
    loop {
        let r = ask(nc, prefix, req).await;
        match &r.outcome {
            Outcome::Error(e)
                if e.code == aether_core::protocol::ErrorCode::Unavailable
                    && start.elapsed() < Duration::from_secs(20) =>
            {
                let wait = e.retry_after_ms.unwrap_or(100);
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            _ => return r,
        }
    }
}

/// A counter's (value, version) from a reply; panics on an error reply.
#[must_use]
pub fn counter_value(reply: &aether_core::protocol::Reply) -> (i64, u64) {
    match &reply.outcome {
        Outcome::Ok(ok) => (ok.state["value"].as_i64().unwrap_or(i64::MIN), ok.version),
        Outcome::Error(e) => panic!("error reply: {e:?}"),
    }
}

/// Every acknowledged add is in the state, and the version counts exactly the applied adds.
pub async fn assert_nothing_acked_lost(
    shards: u32,
    nc: &async_nats::Client,
    prefix: &str,
    client: &Client,
    acked: &BTreeMap<String, i64>,
    exact: bool,
) {
    let store = EventStore::open(
        async_nats::jetstream::new(nc.clone()),
        Names::new(prefix),
        1,
    )
    .await
    .expect("store");
    for (actor, sum) in acked {
        let reply = client.read("counter", actor).await.expect("read");
        let (value, version) = counter_value(&reply);
        if value != *sum {
            let subject = store.subject(
                aether_core::hash::shard_of(actor, shards),
                &ActorRef::new("counter", actor.as_str()),
            );
            let last = store.last(&subject).await.expect("log readable");
            eprintln!(
                "{actor}: read {value} (v{version}), acked {sum}, log's last record: {last:?}"
            );
        }
        if exact {
            assert_eq!(
                value, *sum,
                "{actor}: state equals its acknowledged commands (reply {reply:?})"
            );
        } else {
            assert!(value >= *sum, "{actor}: {value} < {sum} acknowledged");
        }
        assert_eq!(
            value as u64, version,
            "{actor}: every add is one record, versions have no gaps"
        );
    }
}

/// Every progress report published under `prefix` (`{prefix}.progress.>`), as it arrives.
pub async fn progress_log(nc: &async_nats::Client, prefix: &str) -> ProgressLog {
    use futures::StreamExt;
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut sub = nc
        .subscribe(Names::new(prefix).progress_subjects())
        .await
        .unwrap_or_else(|e| panic!("subscribe: {e}"));
    let sink = log.clone();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Ok(p) = aether_core::protocol::decode(&m.payload)
                && let Ok(mut log) = sink.lock()
            {
                log.push(p);
            }
        }
    });
    log
}

/// An actor as its log has it (`shards` of the plan), read straight from the event stream: its last
/// snapshot and the events after it, not folded; no node loads it.
pub async fn log_of(
    nc: &async_nats::Client,
    prefix: &str,
    shards: u32,
    kind: &str,
    id: &str,
) -> aether_node::store::Loaded {
    let store = EventStore::open(
        async_nats::jetstream::new(nc.clone()),
        Names::new(prefix),
        1,
    )
    .await
    .expect("store");
    let actor = ActorRef::new(kind, id);
    let subject = store.subject(aether_core::hash::shard_of(id, shards), &actor);
    store
        .load(&subject, serde_json::Value::Null)
        .await
        .expect("load")
}
