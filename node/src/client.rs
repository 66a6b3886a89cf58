//! A small client: send a request to the actor's owner (one hop, by the plan it follows) or to any
//! node, follow redirects and retry-afters until a final answer; and a bounded load generator that
//! records every acknowledged command. The plan is followed by reading the bucket's `plan` key
//! (a JetStream direct get), every [`PLAN_READ_EVERY`] and at once after a redirect: no consumer,
//! so the client role needs no right to create one.

use crate::error::{Error, Result};
use aether_core::protocol::{
    ActorRef, ErrorCode, Names, Op, Outcome, PlanMessage, Reply, Request, decode, encode,
};
use aether_core::route::RouteTable;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// How often a client that follows the plan reads it.
pub const PLAN_READ_EVERY: Duration = Duration::from_secs(2);

/// The least time between two reads of the plan (a burst of redirects reads it once).
const PLAN_READ_GAP: Duration = Duration::from_millis(100);

/// A client of one ShardPlan's nodes.
#[derive(Clone, Debug)]
pub struct Client {
    nats: async_nats::Client,
    names: Names,
    /// The plan it routes by, when it watches one.
    plan: Option<Arc<PlanWatch>>,
    /// Longest one `send` keeps retrying.
    pub deadline: Duration,
}

/// One attempt of a request: where it went and what came back.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// The subject it was sent to.
    pub subject: String,
    /// When it was sent, from the start of the call.
    pub sent: Duration,
    /// How long its answer took.
    pub took: Duration,
    /// `ok`, or the error's code and message.
    pub answer: String,
}

/// The owners by the newest plan a client has seen.
#[derive(Debug, Default)]
struct Routes {
    epoch: u64,
    table: Option<RouteTable>,
    /// Request subject of each member, by the table's member index.
    subjects: Vec<String>,
}

impl Routes {
    /// The routes of `plan`.
    fn of(plan: &PlanMessage, names: &Names) -> Self {
        Self {
            epoch: plan.epoch,
            table: Some(RouteTable::new(plan.shards, &plan.members, &plan.shard_map)),
            subjects: plan
                .members
                .iter()
                .map(|m| names.node_requests(&m.name))
                .collect(),
        }
    }

    /// The request subject of `actor_id`'s owner, if the plan names one.
    fn owner_subject(&self, actor_id: &str) -> Option<&str> {
        let i = self.table.as_ref()?.owner(actor_id)?;
        self.subjects.get(i as usize).map(String::as_str)
    }
}

/// The plan a client follows, ended when the last client holding it goes.
#[derive(Debug)]
struct PlanWatch {
    routes: Arc<RwLock<Routes>>,
    /// The epoch of `routes`, for waiting on the first plan.
    epochs: tokio::sync::watch::Receiver<u64>,
    /// Asks for a read now (a node said the plan moved on).
    stale: Arc<tokio::sync::Notify>,
    task: tokio::task::AbortHandle,
}

impl Drop for PlanWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Client {
    /// A client over a NATS connection that sends every request to any node (`P.req`).
    #[must_use]
    pub fn new(nats: async_nats::Client, prefix: &str) -> Self {
        Self {
            nats,
            names: Names::new(prefix),
            plan: None,
            deadline: Duration::from_secs(30),
        }
    }

    /// A client that follows the plan (reads the bucket's `plan` key every [`PLAN_READ_EVERY`] and
    /// after a redirect) and sends each request straight to its actor's owner (`P.node.{pod}.req`,
    /// one hop); to any node while it has no plan, after a redirect without an owner, or when the
    /// owner does not answer. Needs a Tokio runtime (the reads are a task).
    #[must_use]
    pub fn watching_plan(nats: async_nats::Client, prefix: &str) -> Self {
        let names = Names::new(prefix);
        let routes = Arc::new(RwLock::new(Routes::default()));
        let (tx, epochs) = tokio::sync::watch::channel(0);
        let stale = Arc::new(tokio::sync::Notify::new());
        let task = tokio::spawn(follow_plan(
            async_nats::jetstream::new(nats.clone()),
            names.clone(),
            routes.clone(),
            tx,
            stale.clone(),
        ))
        .abort_handle();
        Self {
            nats,
            names,
            plan: Some(Arc::new(PlanWatch {
                routes,
                epochs,
                stale,
                task,
            })),
            deadline: Duration::from_secs(30),
        }
    }

    /// The epoch of the plan this client routes by (0: none, or it does not watch one).
    #[must_use]
    pub fn plan_epoch(&self) -> u64 {
        self.plan
            .as_ref()
            .map_or(0, |w| w.routes.read().map_or(0, |r| r.epoch))
    }

    /// Waits up to `timeout` for the first plan; false when none came (or this client watches none).
    pub async fn wait_for_plan(&self, timeout: Duration) -> bool {
        let Some(w) = &self.plan else { return false };
        let mut epochs = w.epochs.clone();
        tokio::time::timeout(timeout, epochs.wait_for(|e| *e > 0))
            .await
            .is_ok_and(|seen| seen.is_ok())
    }

    /// Where a request for `actor_id` goes first: its owner by the plan, or any node.
    fn first_subject(&self, actor_id: &str) -> String {
        self.plan
            .as_ref()
            .and_then(|w| {
                let routes = w.routes.read().ok()?;
                routes.owner_subject(actor_id).map(str::to_owned)
            })
            .unwrap_or_else(|| self.names.any_node())
    }

    /// One attempt at `subject`.
    pub async fn request_once(&self, subject: String, req: &Request) -> Result<Reply> {
        let bytes = encode(req)?;
        let msg = tokio::time::timeout(
            Duration::from_secs(10),
            self.nats.request(subject, bytes.into()),
        )
        .await
        .map_err(|_| Error::Nats("request timed out".into()))?
        .map_err(|e| Error::Nats(e.to_string()))?;
        Ok(decode::<Reply>(&msg.payload)?)
    }

    /// Sends a request to any node; follows redirects and waits out `unavailable` until a final answer
    /// or the deadline. Transport errors are retried too: give commands an id, so a retry of a command
    /// that did land is answered from the log, not applied twice.
    pub async fn send(&self, req: &Request) -> Result<Reply> {
        self.send_observed(req, |_| {}).await
    }

    /// [`Client::send`], telling `seen` of each attempt as it ends (where a slow call spent its
    /// time: which node, and what it answered).
    pub async fn send_observed(
        &self,
        req: &Request,
        mut seen: impl FnMut(Attempt),
    ) -> Result<Reply> {
        let start = Instant::now();
        let mut subject = self.first_subject(&req.actor.id);
        let mut last = String::new();
        while start.elapsed() < self.deadline {
            let sent = Instant::now();
            let answer = self.request_once(subject.clone(), req).await;
            seen(Attempt {
                subject: subject.clone(),
                sent: sent - start,
                took: sent.elapsed(),
                answer: match &answer {
                    Ok(Reply {
                        outcome: Outcome::Error(e),
                        ..
                    }) => format!("{:?}: {}", e.code, e.message),
                    Ok(_) => "ok".into(),
                    Err(e) => e.to_string(),
                },
            });
            match answer {
                Ok(reply) => match &reply.outcome {
                    Outcome::Error(e) if e.code == ErrorCode::Redirect => {
                        if let Some(w) = &self.plan {
                            w.stale.notify_one();
                        }
                        subject = e
                            .owner
                            .as_deref()
                            .map_or_else(|| self.names.any_node(), |o| self.names.node_requests(o));
                        last = e.message.clone();
                    }
                    Outcome::Error(e)
                        if matches!(e.code, ErrorCode::Unavailable | ErrorCode::Internal) =>
                    {
                        last = e.message.clone();
                        subject = self.first_subject(&req.actor.id);
                        tokio::time::sleep(Duration::from_millis(
                            e.retry_after_ms.unwrap_or(50).min(1000),
                        ))
                        .await;
                    }
                    _ => return Ok(reply),
                },
                Err(e) => {
                    last = e.to_string();
                    subject = self.names.any_node();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        Err(Error::Nats(format!(
            "no final answer within {:?}: {last}",
            self.deadline
        )))
    }

    /// Adds `n` to a counter with command id `id`; returns the reply.
    pub async fn add(&self, actor: &str, n: i64, id: String) -> Result<Reply> {
        let req = Request::new(
            ActorRef::new("counter", actor),
            Op::Command {
                command: serde_json::json!({ "add": n }),
            },
            Some(id),
        );
        self.send(&req).await
    }

    /// Reads an actor.
    pub async fn read(&self, kind: &str, actor: &str) -> Result<Reply> {
        self.send(&Request::new(ActorRef::new(kind, actor), Op::Read, None))
            .await
    }
}

/// Keeps `routes` at the newest valid plan in the bucket of `names`: reads its `plan` key every
/// [`PLAN_READ_EVERY`] and when `stale` is notified; retries when the bucket is missing (a client
/// may start before the operator created it).
async fn follow_plan(
    js: async_nats::jetstream::Context,
    names: Names,
    routes: Arc<RwLock<Routes>>,
    epochs: tokio::sync::watch::Sender<u64>,
    stale: Arc<tokio::sync::Notify>,
) {
    let take = |value: &[u8]| {
        let Ok(plan) = decode::<PlanMessage>(value).and_then(|p| p.validate().map(|()| p)) else {
            return;
        };
        if let Ok(mut held) = routes.write()
            && plan.epoch > held.epoch
        {
            *held = Routes::of(&plan, &names);
            epochs.send_replace(plan.epoch);
        }
    };
    let mut bucket = None;
    loop {
        let store = match &bucket {
            Some(b) => b,
            None => match js.get_key_value(names.plan_bucket()).await {
                Ok(b) => bucket.insert(b),
                Err(e) => {
                    tracing::debug!(error = %e, "plan bucket not readable yet");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            },
        };
        match store.get(Names::PLAN_KEY).await {
            Ok(Some(value)) => take(&value),
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "plan not read"),
        }
        let _ = tokio::time::timeout(PLAN_READ_EVERY, stale.notified()).await;
        tokio::time::sleep(PLAN_READ_GAP).await;
    }
}

/// What a load run saw.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    /// Sum of acknowledged adds per counter actor.
    pub acked: BTreeMap<String, i64>,
    /// Acknowledged commands.
    pub ok: usize,
    /// Commands answered with a final error (never acknowledged).
    pub errors: usize,
    /// Latencies of acknowledged commands, microseconds.
    pub latencies_us: Vec<u64>,
}

impl LoadReport {
    /// Adds another run's figures to these.
    pub fn absorb(&mut self, other: Self) {
        self.ok += other.ok;
        self.errors += other.errors;
        self.latencies_us.extend(other.latencies_us);
        for (k, v) in other.acked {
            *self.acked.entry(k).or_default() += v;
        }
    }
}

/// Sends `requests` adds of 1 over `actors` counters (`{prefix}-{i}`), `concurrency` at a time, for
/// at most `max` time. Every command has a unique id, so retries are safe.
pub async fn run_load(
    client: &Client,
    actor_prefix: &str,
    actors: usize,
    requests: usize,
    concurrency: usize,
    max: Duration,
) -> LoadReport {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    // Command ids must be unique across runs, or a run's commands are answered as retries of another's.
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let run_id = format!(
        "{now:x}-{}-{}",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    );
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (client, next, prefix, run_id) = (
            client.clone(),
            next.clone(),
            actor_prefix.to_owned(),
            run_id.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut report = LoadReport::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests || start.elapsed() >= max {
                    break;
                }
                let actor = format!("{prefix}-{}", i % actors.max(1));
                let t = Instant::now();
                match client.add(&actor, 1, format!("{run_id}-{i}")).await {
                    Ok(Reply {
                        outcome: Outcome::Ok(_),
                        ..
                    }) => {
                        report.ok += 1;
                        report.latencies_us.push(t.elapsed().as_micros() as u64);
                        *report.acked.entry(actor).or_default() += 1;
                    }
                    _ => report.errors += 1,
                }
            }
            report
        }));
    }
    let mut total = LoadReport::default();
    for t in tasks {
        if let Ok(r) = t.await {
            total.absorb(r);
        }
    }
    total
}
