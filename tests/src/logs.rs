//! Logs written as a node writes them, at sizes a benchmark cannot reach by commands in its time:
//! one template actor's first record (and pending-work marker), made by a real node, copied to
//! many actors' subjects by raw JetStream publishes. Used by the timer and scale benchmarks.

use crate::cluster::{next_plan, node_process, publish};
use crate::{NatsServer, free_port, wait_for};
use aether_core::hash::shard_of;
use aether_core::protocol::{ActorRef, Names, Op, Outcome, Request};
use aether_node::client::Client;
use futures::StreamExt;
use serde_json::{Value, json};
use std::future::IntoFuture;
use std::time::{Duration, Instant};

/// Raw publishes in flight while logs are written.
const WINDOW: usize = 4096;

/// Runs `command` on the counter `template` through a node of `prefix` (started, given a plan of
/// `shards` shards, and stopped here) and returns its first record, and its pending-work marker
/// (`None` without one), as the node wrote them; then `undo`, when given, runs on the template
/// (its timer cancelled, so that the template fires nothing).
pub async fn template(
    nats: &NatsServer,
    prefix: &str,
    shards: u32,
    command: Value,
    undo: Option<Value>,
) -> (Value, Option<String>) {
    template_of(nats, prefix, shards, "counter", command, undo).await
}

/// [`template`] for an actor of the built-in `kind`.
pub async fn template_of(
    nats: &NatsServer,
    prefix: &str,
    shards: u32,
    kind: &str,
    command: Value,
    undo: Option<Value>,
) -> (Value, Option<String>) {
    let nc = nats.connect().await;
    let mut node = node_process(nats, prefix, "app-0", free_port(), &[]);
    publish(&nc, prefix, &next_plan(None, &["app-0"], shards, 4), 10).await;
    let client = Client::new(nc.clone(), prefix);
    let actor = ActorRef::new(kind, "template");
    let req = Request::new(actor.clone(), Op::Command { command }, Some("set".into()));
    wait_for("the template written", Duration::from_secs(60), || async {
        client
            .send(&req)
            .await
            .is_ok_and(|r| matches!(r.outcome, Outcome::Ok(_)))
    })
    .await;
    let names = Names::new(prefix);
    let js = async_nats::jetstream::new(nc.clone());
    let stream = js.get_stream(names.event_stream()).await.expect("stream");
    let shard = shard_of(&actor.id, shards);
    let record = stream
        .get_last_raw_message_by_subject(&names.actor_subject(shard, &actor))
        .await
        .expect("the template's record");
    let marker = stream
        .get_last_raw_message_by_subject(&names.pending_subject(shard, &actor))
        .await
        .ok()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned());
    if let Some(undo) = undo {
        let req = Request::new(actor, Op::Command { command: undo }, Some("undo".into()));
        let r = client.send(&req).await.expect("undone");
        assert!(matches!(r.outcome, Outcome::Ok(_)), "{r:?}");
    }
    node.kill();
    (
        serde_json::from_slice(&record.payload).expect("a record"),
        marker,
    )
}

/// Every `due` in a record (its timers, its snapshot's) set to `due`.
pub fn with_due(v: &mut Value, due: u64) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if k == "due" {
                    *x = json!(due);
                } else {
                    with_due(x, due);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| with_due(x, due)),
        _ => {}
    }
}

/// Writes `n` counters `{tag}{i}` of `prefix` (`shards` shards): each `record` and, when given,
/// a marker saying `marker`; returns the seconds it took.
pub async fn write_logs(
    nc: &async_nats::Client,
    prefix: &str,
    shards: u32,
    actors: (&str, usize),
    record: &Value,
    marker: Option<&str>,
) -> f64 {
    write_logs_of(nc, prefix, shards, "counter", actors, record, marker).await
}

/// [`write_logs`] for actors of `kind`.
pub async fn write_logs_of(
    nc: &async_nats::Client,
    prefix: &str,
    shards: u32,
    kind: &str,
    (tag, n): (&str, usize),
    record: &Value,
    marker: Option<&str>,
) -> f64 {
    let js = async_nats::jetstream::new(nc.clone());
    let names = Names::new(prefix);
    let record = bytes::Bytes::from(serde_json::to_vec(record).expect("json"));
    let marker = marker.map(|m| bytes::Bytes::from(m.to_owned()));
    let started = Instant::now();
    let mut acks = futures::stream::FuturesUnordered::new();
    for i in 0..n {
        let actor = ActorRef::new(kind, format!("{tag}{i}"));
        let shard = shard_of(&actor.id, shards);
        let mut writes = vec![(names.actor_subject(shard, &actor), record.clone())];
        if let Some(m) = &marker {
            writes.push((names.pending_subject(shard, &actor), m.clone()));
        }
        for (subject, payload) in writes {
            let ack = js.publish(subject, payload).await.expect("publish");
            acks.push(ack.into_future());
            while acks.len() >= WINDOW {
                acks.next().await.expect("an ack").expect("stored");
            }
        }
    }
    while let Some(ack) = acks.next().await {
        ack.expect("stored");
    }
    started.elapsed().as_secs_f64()
}

/// Resident memory of process `pid`, bytes (0 when it cannot be read).
#[must_use]
pub fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
