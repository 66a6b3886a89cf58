//! The chaos runner: node processes on a real nats-server (or a 3-server cluster), a workload of
//! appends, retries and reads on `list` actors recorded as a [`History`], and a seeded random schedule
//! of faults: nodes SIGKILLed or SIGSTOPped (also while they are sources of moves), nats-servers killed,
//! plans changed while moves run, members flapping. The same seed gives the same schedule; the
//! history is checked for linearizability per actor at the end ([`crate::history::check`]). Beside
//! them, `counter` actors carry a periodic timer through the whole run, checked from their logs at
//! the end (`chaos/timers.rs`), and the example bank's accounts move money by actor-to-actor sends
//! (`chaos/sends.rs`: every acknowledged transfer applied once). The event stream's duplicate
//! window is [`WINDOW`], and one kind of fault stops every process for longer than that.
//!
//! Plans are made by the operator's own reconcile decision (`chaos/planner.rs` runs
//! `aether_operator::decide`); after every fault the runner reconciles as the operator does until
//! every move is done or the operator publishes a retry (a failure's backoff, a move's deadline).
//! With `Config::operator` the operator process plans instead (`chaos/kube.rs`), and its leader is
//! SIGKILLed, SIGSTOPped and failed over among the faults.

use crate::history::{self, History, Op, OpKind, Outcome, Verdict};
use crate::{NatsCluster, NatsServer, Process, free_port, workspace_binary};
use aether_core::protocol::{self, ActorRef, ErrorCode, Names, Op as ReqOp, Request};
use aether_node::client::Client;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::json;
use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How big a run is.
#[derive(Clone, Debug)]
pub struct Config {
    /// Seed of the fault schedule and of the workload's choices.
    pub seed: u64,
    /// Faults to inject.
    pub faults: usize,
    /// Operations to record at least (the run goes on after the last fault until it has them).
    pub min_ops: u64,
    /// Node processes (the plan has 2 to all of them as members).
    pub pods: usize,
    /// `list` actors the workload uses.
    pub actors: usize,
    /// Concurrent clients.
    pub workers: usize,
    /// Shards of the plan.
    pub shards: u32,
    /// A 3-server NATS cluster with 3 replicas (else one server).
    pub cluster: bool,
    /// The longest the whole run may take.
    pub limit: Duration,
    /// The kinds of fault drawn from.
    pub kinds: &'static [Fault],
    /// `counter` actors with a periodic timer through the run.
    pub timer_actors: usize,
    /// Bank accounts moving money by sends through the run (0: no app, no sends).
    pub accounts: usize,
    /// Plans by the operator process on a kube-apiserver, from pods' readiness (`chaos/kube.rs`).
    pub operator: bool,
}

/// JetStream's duplicate window of the run's event stream (the node's default is 120 s): short, so
/// that faults outlast it and only the nodes' own bookkeeping keeps sends and retries once.
pub const WINDOW: Duration = Duration::from_secs(10);

/// How long the runner reconciles after a fault before it moves on: past the operator's deadline
/// of a move that got no outcome (its share of the 10 s timeout plus the 30 s grace).
const RETRY_LIMIT: Duration = Duration::from_secs(90);

impl Config {
    /// The slice inside `make test`.
    #[must_use]
    pub fn short(seed: u64, cluster: bool) -> Self {
        Self {
            seed,
            faults: 12,
            min_ops: 5_000,
            pods: 4,
            actors: 64,
            workers: 8,
            shards: 16,
            cluster,
            limit: Duration::from_secs(240),
            kinds: Fault::ALL,
            timer_actors: 8,
            accounts: 8,
            operator: false,
        }
    }

    /// `make chaos`.
    #[must_use]
    pub fn long(seed: u64, cluster: bool) -> Self {
        Self {
            seed,
            faults: 100,
            min_ops: 100_000,
            pods: 4,
            actors: 256,
            workers: 16,
            shards: 32,
            cluster,
            limit: Duration::from_secs(1200),
            kinds: Fault::ALL,
            timer_actors: 32,
            accounts: 32,
            operator: false,
        }
    }

    /// `make chaos`'s third run: the operator process plans, and is itself among the faults.
    #[must_use]
    pub fn with_operator(seed: u64) -> Self {
        Self {
            faults: 40,
            min_ops: 40_000,
            kinds: &Fault::WITH_OPERATOR,
            operator: true,
            ..Self::long(seed, false)
        }
    }
}

enum Nats {
    Single(NatsServer),
    Cluster(NatsCluster),
}

impl Nats {
    fn url(&self) -> String {
        match self {
            Self::Single(s) => s.url(),
            Self::Cluster(c) => c.urls(),
        }
    }

    async fn connect(&self) -> async_nats::Client {
        match self {
            Self::Single(s) => s.connect().await,
            Self::Cluster(c) => c.connect().await,
        }
    }

    fn kill(&mut self, i: usize) {
        match self {
            Self::Single(s) => s.kill(),
            Self::Cluster(c) => c.kill(i % 3),
        }
    }

    fn start(&mut self, i: usize) {
        match self {
            Self::Single(s) => s.restart(),
            Self::Cluster(c) => c.restart(i % 3),
        }
    }

    fn servers(&self) -> usize {
        match self {
            Self::Single(_) => 1,
            Self::Cluster(_) => 3,
        }
    }
}

struct Pod {
    name: String,
    port: u16,
    proc: Option<Process>,
    app_url: Option<String>,
}

impl Pod {
    fn start(&mut self, url: &str, prefix: &str, replicas: &str) {
        let mut args = vec!["--stream-replicas", replicas];
        if let Some(app) = &self.app_url {
            args.extend(["--app-url", app.as_str()]);
        }
        self.proc = Some(crate::cluster::spawn_process_with(
            &workspace_binary("aether-node"),
            url,
            prefix,
            &self.name,
            self.port,
            &args,
        ));
    }

    fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    fn signal(&self, sig: &str) {
        if let Some(p) = &self.proc {
            let ok = Command::new("kill")
                .args([sig, &p.child.id().to_string()])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "kill {sig} {}", self.name);
        }
    }
}

/// Runs the workload and the fault schedule; returns what happened. Panics only on harness failures.
pub async fn run(cfg: Config) -> Report {
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut nats = if cfg.cluster {
        Nats::Cluster(NatsCluster::start(3).await)
    } else {
        Nats::Single(NatsServer::start())
    };
    let replicas = if cfg.cluster { "3" } else { "1" };
    let prefix = format!("chaos{}", cfg.seed % 1000);
    let names = Names::new(prefix.as_str());
    let nc = nats.connect().await;
    let js = async_nats::jetstream::new(nc.clone());
    let copies = if cfg.cluster { 3 } else { 1 };
    let bucket = aether_nats::plans::open_bucket(&js, &names, copies)
        .await
        .unwrap_or_else(|e| panic!("plan bucket: {e}"));
    // Created before any node, so its duplicate window is this run's.
    js.create_stream(async_nats::jetstream::stream::Config {
        name: names.event_stream(),
        subjects: vec![names.event_subjects()],
        allow_direct: true,
        num_replicas: copies,
        duplicate_window: WINDOW,
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("event stream: {e}"));
    let app = if cfg.accounts > 0 {
        Some(sends::app().await)
    } else {
        None
    };
    let url = nats.url();
    let mut pods: Vec<Pod> = (0..cfg.pods)
        .map(|i| Pod {
            name: format!("pod-{i}"),
            port: free_port(),
            proc: None,
            app_url: app.as_ref().map(crate::app::App::url),
        })
        .collect();
    for p in &mut pods {
        p.start(&url, &prefix, replicas);
    }
    let first: Vec<String> = pods.iter().take(3).map(|p| p.name.clone()).collect();
    let mut planner = if cfg.operator {
        let all: Vec<String> = pods.iter().map(|p| p.name.clone()).collect();
        let (k, _) = KubePlanner::start(first.clone(), &all, cfg.shards, &url, &prefix).await;
        Plans::Kube(Box::new(k))
    } else {
        let (p, _) =
            Planner::start(first.clone(), cfg.shards, bucket, js.clone(), names.clone()).await;
        Plans::Own(Box::new(p))
    };
    let mut client = Client::new(nc.clone(), &prefix);
    // A client retries a command with its id within the duplicate window, as PROTOCOL.md asks
    // ("retry with the same id, soon"); after it, the outcome stays unknown to the history.
    client.deadline = WINDOW - Duration::from_secs(2);
    let actors: Vec<String> = (0..cfg.actors).map(|i| format!("a{i}")).collect();
    converge(&client, &actors, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("the first plan never served: {e}"));
    let timed = timers::start(&client, cfg.timer_actors)
        .await
        .unwrap_or_else(|e| panic!("timers not set: {e}"));
    let transfers = sends::start(&client, cfg.accounts, 2)
        .await
        .unwrap_or_else(|e| panic!("accounts not opened: {e}"));

    let history = Arc::new(History::new());
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for w in 0..cfg.workers {
        let wrng = StdRng::seed_from_u64(cfg.seed.wrapping_mul(31).wrapping_add(w as u64));
        workers.push(tokio::spawn(worker(
            w,
            wrng,
            client.clone(),
            actors.clone(),
            history.clone(),
            stop.clone(),
            count.clone(),
        )));
    }

    let mut report = Report {
        config: cfg.clone(),
        faults: BTreeMap::new(),
        schedule: Vec::new(),
        converge_ms: Vec::new(),
        not_converged: Vec::new(),
        verdict: Verdict::default(),
        timers: TimerVerdict::default(),
        sends: SendVerdict::default(),
        plans: 0,
        elapsed: Duration::ZERO,
    };
    let mut n = 0;
    while n < cfg.faults || count.load(Ordering::Relaxed) < cfg.min_ops {
        if started.elapsed() > cfg.limit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..1200))).await;
        if n >= cfg.faults {
            continue;
        }
        let fault = cfg.kinds[rng.random_range(0..cfg.kinds.len())];
        let at = history.now() / 1_000_000;
        let line = inject(
            fault,
            &mut rng,
            &mut pods,
            &mut nats,
            &mut planner,
            &url,
            &prefix,
            replicas,
        )
        .await;
        let took = history.now() / 1_000_000 - at;
        report
            .schedule
            .push(format!("{n}: at {at} ms for {took} ms: {line}"));
        *report.faults.entry(fault).or_default() += 1;
        n += 1;
        let healed = Instant::now();
        planner.retry(RETRY_LIMIT).await;
        match converge(&client, &actors, Duration::from_secs(60)).await {
            Ok(()) => report
                .converge_ms
                .push(u64::try_from(healed.elapsed().as_millis()).unwrap_or(u64::MAX)),
            Err(e) => report.not_converged.push(format!("{line}: {e}")),
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    // The last word: every actor read once the faults are over.
    for a in &actors {
        read(&client, a, &history).await;
    }
    report.verdict = history::check(&history.ops());
    report.timers = timers::finish(&client, &js, &prefix, cfg.shards, &timed).await;
    report.sends = sends::finish(&client, &js, &prefix, cfg.shards, transfers).await;
    report.plans = planner.published().await;
    report.elapsed = started.elapsed();
    for p in &mut pods {
        p.kill();
    }
    report
}

#[allow(clippy::too_many_arguments)]
async fn inject(
    fault: Fault,
    rng: &mut StdRng,
    pods: &mut [Pod],
    nats: &mut Nats,
    planner: &mut Plans,
    url: &str,
    prefix: &str,
    replicas: &str,
) -> String {
    let pause = Duration::from_millis(rng.random_range(300..3000));
    let victim = rng.random_range(0..pods.len());
    let all: Vec<String> = pods.iter().map(|p| p.name.clone()).collect();
    let changed = |rng: &mut StdRng, planner: &Plans| changed(rng, planner.members(), &all);
    match fault {
        Fault::KillNode => {
            pods[victim].kill();
            tokio::time::sleep(pause).await;
            pods[victim].start(url, prefix, replicas);
            format!("{} {} for {pause:?}", fault.name(), pods[victim].name)
        }
        Fault::StopNode => {
            pods[victim].signal("-STOP");
            tokio::time::sleep(pause).await;
            pods[victim].signal("-CONT");
            format!("{} {} for {pause:?}", fault.name(), pods[victim].name)
        }
        Fault::KillSourceMidMove | Fault::StopSourceMidMove | Fault::KillDestinationMidMove => {
            let members = changed(rng, planner);
            let plan = planner.publish(members).await;
            let ends: Vec<String> = plan
                .moves
                .iter()
                .filter_map(|m| match fault {
                    Fault::KillDestinationMidMove => Some(m.to.clone()),
                    _ => m.from.clone(),
                })
                .collect();
            let Some(name) = ends.get(rng.random_range(0..ends.len().max(1))) else {
                return format!("{}: epoch {} moved nothing", fault.name(), plan.epoch);
            };
            let Some(i) = pods.iter().position(|p| &p.name == name) else {
                return format!("{}: {name} is no pod", fault.name());
            };
            if fault == Fault::StopSourceMidMove {
                pods[i].signal("-STOP");
                tokio::time::sleep(pause).await;
                pods[i].signal("-CONT");
            } else {
                pods[i].kill();
                tokio::time::sleep(pause).await;
                pods[i].start(url, prefix, replicas);
            }
            format!(
                "{} {name} at epoch {} ({} moves) for {pause:?}",
                fault.name(),
                plan.epoch,
                plan.moves.len()
            )
        }
        Fault::StopThenReplan => {
            let name = pods[victim].name.clone();
            pods[victim].signal("-STOP");
            let mut members = planner.members().to_vec();
            members.retain(|m| m != &name);
            if members.len() < 2 {
                members = changed(rng, planner);
            }
            let plan = planner.publish(members).await;
            tokio::time::sleep(pause).await;
            pods[victim].signal("-CONT");
            format!(
                "{} {name}, epoch {} ({} moves), for {pause:?}",
                fault.name(),
                plan.epoch,
                plan.moves.len()
            )
        }
        Fault::StopAll => {
            for p in pods.iter_mut() {
                p.kill();
            }
            for i in 0..nats.servers() {
                nats.kill(i);
            }
            let down = WINDOW + pause;
            tokio::time::sleep(down).await;
            for i in 0..nats.servers() {
                nats.start(i);
            }
            for p in pods.iter_mut() {
                p.start(url, prefix, replicas);
            }
            format!(
                "{}: {} nodes and {} nats-servers down for {down:?}",
                fault.name(),
                pods.len(),
                nats.servers()
            )
        }
        Fault::RestartNats => {
            let i = rng.random_range(0..3);
            nats.kill(i);
            tokio::time::sleep(pause).await;
            nats.start(i);
            format!("{} s{i} down for {pause:?}", fault.name())
        }
        Fault::PlanChange => {
            let members = changed(rng, planner);
            let a = planner.publish(members).await;
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
            let members = changed(rng, planner);
            let b = planner.publish(members.clone()).await;
            format!(
                "{}: epoch {} ({} moves) then {} ({} moves) for {members:?}",
                fault.name(),
                a.epoch,
                a.moves.len(),
                b.epoch,
                b.moves.len()
            )
        }
        Fault::KillOperator | Fault::StopOperator | Fault::OperatorFailover => {
            let what = planner.operator_fault(fault, pause).await;
            format!("{}: {what}", fault.name())
        }
        Fault::Flap => {
            let before = planner.members().to_vec();
            let members = changed(rng, planner);
            planner.publish(members).await;
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..500))).await;
            let plan = planner.publish(before.clone()).await;
            format!(
                "{}: back to {before:?} at epoch {}",
                fault.name(),
                plan.epoch
            )
        }
    }
}

/// A member set with one pod in or out (2 to all members).
fn changed(rng: &mut StdRng, members: &[String], all: &[String]) -> Vec<String> {
    let mut m = members.to_vec();
    let out: Vec<&String> = all.iter().filter(|p| !m.contains(p)).collect();
    if (m.len() > 2 && rng.random_bool(0.5)) || out.is_empty() {
        let i = rng.random_range(0..m.len());
        m.remove(i);
    } else {
        let p = out[rng.random_range(0..out.len())].clone();
        m.push(p);
    }
    m.sort();
    m
}

/// Every actor answers a read (within `within`).
async fn converge(client: &Client, actors: &[String], within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    let mut c = client.clone();
    c.deadline = Duration::from_secs(2);
    for a in actors.iter().step_by((actors.len() / 16).max(1)) {
        loop {
            let req = Request::new(ActorRef::new("list", a.as_str()), ReqOp::Read, None);
            match c.send(&req).await {
                Ok(r) if matches!(r.outcome, protocol::Outcome::Ok(_)) => break,
                other => {
                    if Instant::now() > deadline {
                        return Err(format!("{a} unanswered: {other:?}"));
                    }
                }
            }
        }
    }
    Ok(())
}

fn outcome(reply: aether_node::Result<protocol::Reply>) -> Outcome {
    match reply {
        Ok(r) => match r.outcome {
            protocol::Outcome::Ok(ok) => Outcome::Ok {
                items: ok.state["items"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default(),
                version: ok.version,
                node: ok.node,
            },
            protocol::Outcome::Error(e) => {
                let code = serde_json::to_value(e.code)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_else(|| format!("{:?}", e.code));
                match e.code {
                    ErrorCode::Unavailable | ErrorCode::Internal | ErrorCode::Redirect => {
                        Outcome::Unknown(code)
                    }
                    _ => Outcome::Refused(code),
                }
            }
        },
        Err(_) => Outcome::Unknown("no answer".to_owned()),
    }
}

async fn read(client: &Client, actor: &str, history: &History) {
    let req = Request::new(ActorRef::new("list", actor), ReqOp::Read, None);
    let invoke = history.now();
    let reply = client.send(&req).await;
    history.record(Op {
        actor: actor.to_owned(),
        kind: OpKind::Read,
        invoke,
        complete: history.now(),
        outcome: outcome(reply),
    });
}

async fn worker(
    w: usize,
    mut rng: StdRng,
    client: Client,
    actors: Vec<String>,
    history: Arc<History>,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let actor = &actors[rng.random_range(0..actors.len())];
        count.fetch_add(1, Ordering::Relaxed);
        if rng.random_bool(0.25) {
            read(&client, actor, &history).await;
            continue;
        }
        n += 1;
        let value = format!("w{w}-{n}");
        let req = Request::new(
            ActorRef::new("list", actor.as_str()),
            ReqOp::Command {
                command: json!({ "append": value }),
            },
            Some(format!("c-{value}")),
        );
        let invoke = history.now();
        let reply = outcome(client.send(&req).await);
        let acked = matches!(reply, Outcome::Ok { .. });
        history.record(Op {
            actor: actor.clone(),
            kind: OpKind::Append(value.clone()),
            invoke,
            complete: history.now(),
            outcome: reply,
        });
        // A client that did not see the answer sends the same command again.
        if acked && rng.random_bool(0.05) {
            count.fetch_add(1, Ordering::Relaxed);
            let invoke = history.now();
            let reply = outcome(client.send(&req).await);
            history.record(Op {
                actor: actor.clone(),
                kind: OpKind::Retry(value),
                invoke,
                complete: history.now(),
                outcome: reply,
            });
        }
    }
}

mod fault;
mod kube;
pub mod planner;
mod report;
mod sends;
mod timers;
pub use fault::Fault;
use kube::KubePlanner;
use planner::{Planner, Plans};
pub use report::{Report, markdown};
pub use sends::SendVerdict;
pub use timers::TimerVerdict;
