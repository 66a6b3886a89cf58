//! Stream size per actor (`make bench-scale`, issue 33): 1,000 counters take 100 `add` commands
//! each through a node process, once with the default flags and once with `--compact-events` (two
//! prefixes, one nats-server on loopback); then the event stream's bytes and messages per actor,
//! beside a plain JetStream stream holding the same events (one message of `{"added":1}` per
//! command on a subject per actor, the floor of an event log without aether's record).
//!
//! Writes `target/stream_size-bench.json` and the section "Stream size per actor" of BENCHMARKS.md.

use aether_core::protocol::{ActorRef, Names, Op, Outcome, Request};
use aether_node::client::Client;
use aether_tests::cluster::{next_plan, node_process, publish, wait_ready, wait_serving};
use aether_tests::measure::{drive, run_bench};
use aether_tests::{NatsServer, free_port};
use serde_json::{Value, json};
use std::time::Duration;

const ACTORS: usize = 1_000;
const COMMANDS: usize = 100;
const SHARDS: u32 = 64;
const IN_FLIGHT: usize = 256;
const T: Duration = Duration::from_secs(300);

fn main() {
    run_bench("stream_size", run(), Some(section));
}

/// Bytes and messages of a stream.
async fn size(js: &async_nats::jetstream::Context, stream: &str) -> (u64, u64) {
    let mut s = js.get_stream(stream).await.expect("stream");
    let info = s.info().await.expect("stream info");
    (info.state.bytes, info.state.messages)
}

/// `ACTORS` counters of `prefix` given `COMMANDS` adds each through a node with `flags`; the
/// event stream's (bytes, messages) after.
async fn through_node(nats: &NatsServer, prefix: &'static str, flags: &[&str]) -> (u64, u64) {
    let nc = nats.connect().await;
    let port = free_port();
    let _node = node_process(nats, prefix, "app-0", port, flags);
    wait_ready("app-0", port, T).await;
    publish(&nc, prefix, &next_plan(None, &["app-0"], SHARDS, 4), 30).await;
    let client = Client::new(nc.clone(), prefix);
    wait_serving(&client, "c0", T).await;
    let c = client.clone();
    drive(ACTORS * COMMANDS, IN_FLIGHT, move |i| {
        let c = c.clone();
        // Command k of every actor before command k + 1 of any: each actor's commands in order.
        let (actor, k) = (i % ACTORS, i / ACTORS);
        async move {
            let req = Request::new(
                ActorRef::new("counter", format!("c{actor}")),
                Op::Command {
                    command: json!({"add": 1}),
                },
                Some(format!("a{k}")),
            );
            c.send(&req)
                .await
                .is_ok_and(|r| matches!(r.outcome, Outcome::Ok(_)))
        }
    })
    .await;
    // Every command landed: each counter reads COMMANDS.
    for a in [0, ACTORS / 2, ACTORS - 1] {
        let r = client
            .read("counter", &format!("c{a}"))
            .await
            .expect("read");
        match r.outcome {
            Outcome::Ok(ok) => assert_eq!(ok.state, json!({"value": COMMANDS})),
            Outcome::Error(e) => panic!("{e:?}"),
        }
    }
    let js = async_nats::jetstream::new(nc);
    // Compaction purges after each snapshot record lands: wait until the stream stops shrinking.
    let stream = Names::new(prefix).event_stream();
    let mut last = size(&js, &stream).await;
    for _ in 0..600 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = size(&js, &stream).await;
        if std::mem::replace(&mut last, now) == now {
            break;
        }
    }
    last
}

/// The same events in a plain stream: (bytes, messages).
async fn plain(nats: &NatsServer) -> (u64, u64) {
    let nc = nats.connect().await;
    let js = async_nats::jetstream::new(nc);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "plain".into(),
        subjects: vec!["plain.>".into()],
        ..Default::default()
    })
    .await
    .expect("plain stream");
    let mut acks = Vec::new();
    for _ in 0..COMMANDS {
        for a in 0..ACTORS {
            let ack = js
                .publish(format!("plain.c{a}"), r#"{"added":1}"#.into())
                .await
                .expect("publish");
            acks.push(ack);
            if acks.len() >= 4096 {
                for ack in acks.drain(..) {
                    ack.await.expect("stored");
                }
            }
        }
    }
    for ack in acks {
        ack.await.expect("stored");
    }
    size(&js, "plain").await
}

async fn run() -> Value {
    let nats = NatsServer::start();
    let full = through_node(&nats, "full", &[]).await;
    let compact = through_node(&nats, "compact", &["--compact-events"]).await;
    let raw = plain(&nats).await;
    let per = |(b, m): (u64, u64)| json!({"bytes": b / ACTORS as u64, "messages": m as f64 / ACTORS as f64});
    json!({
        "actors": ACTORS,
        "commands": COMMANDS,
        "full": per(full),
        "compact": per(compact),
        "plain": per(raw),
    })
}

fn section(r: &Value) -> String {
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    let raw = f(&r["plain"]["bytes"]).max(1.0);
    let row = |name: &str, v: &Value| {
        format!(
            "| {name} | {b:.0} bytes, {m:.1} messages per actor | {raw:.0} bytes, {rm:.1} messages | {ratio:.2}x |\n",
            b = f(&v["bytes"]),
            m = f(&v["messages"]),
            rm = f(&r["plain"]["messages"]),
            ratio = f(&v["bytes"]) / raw,
        )
    };
    format!(
        "## Stream size per actor\n\n\
         Command: `make bench-scale` (`cargo bench -p aether-tests --bench stream_size`): one node \
         process and a nats-server on loopback, {SHARDS} shards; {actors} built-in counters take \
         {commands} `add` commands each (each with its own command id), with the default flags and \
         with `--compact-events`; the event stream's bytes (as nats-server counts them: payload, \
         subject, headers and its per-message overhead) per actor once it stops changing. The \
         baseline is a plain JetStream stream holding one message `{{\"added\":1}}` per command on a \
         subject per actor: the floor of an event log.\n\n\
         | event stream after {commands} commands per actor | aether | plain stream, same events | ratio |\n\
         |---|---|---|---|\n{full}{compact}\n\
         A record carries more than its events: the command id (its `Nats-Msg-Id` header too), the \
         version, the base sequence, and every 32nd record a snapshot (the state, the last 64 command \
         ids, the outbox and inbox): that is what lets an actor load by one or two direct gets. With \
         `--compact-events` each snapshot record purges the records before it, so an actor keeps at \
         most 32 records whatever its age (its history is gone).\n",
        actors = r["actors"],
        commands = r["commands"],
        full = row("default", &r["full"]),
        compact = row("`--compact-events`", &r["compact"]),
    )
}
