//! A small client: send a request to any node and follow redirects and retry-afters until a final
//! answer, and a bounded load generator that records every acknowledged command.

use crate::error::{Error, Result};
use aether_core::protocol::{
    ActorRef, ErrorCode, Names, Op, Outcome, Reply, Request, decode, encode,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A client of one ShardPlan's nodes.
#[derive(Clone, Debug)]
pub struct Client {
    nats: async_nats::Client,
    names: Names,
    /// Longest one `send` keeps retrying.
    pub deadline: Duration,
}

impl Client {
    /// A client over a NATS connection.
    #[must_use]
    pub fn new(nats: async_nats::Client, prefix: &str) -> Self {
        Self {
            nats,
            names: Names::new(prefix),
            deadline: Duration::from_secs(30),
        }
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
        let start = Instant::now();
        let mut subject = self.names.any_node();
        let mut last = String::new();
        while start.elapsed() < self.deadline {
            match self.request_once(subject.clone(), req).await {
                Ok(reply) => match &reply.outcome {
                    Outcome::Error(e) if e.code == ErrorCode::Redirect => {
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
                        subject = self.names.any_node();
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
