//! Bad input never harms (issue 13): each input is sent to nodes on a real nats-server, and the test
//! shows the reply code, the counter, every other actor of the same shard still served by the same
//! node, the node's connection not dropped, and nothing acknowledged lost.

use aether_core::hash::shard_of;
use aether_core::protocol::{
    ActorRef, ErrorCode, MAX_ACTOR_ID_BYTES, MAX_COMMAND_DEPTH, MAX_COMMAND_ID_BYTES, Names, Op,
    Outcome, PlanMessage, Reply, Request, decode, encode,
};
use aether_node::client::Client;
use aether_node::metrics::{Failure, Malformed};
use aether_tests::cluster::{TestNode, ask, counter_value, start_cluster};
use aether_tests::{NatsServer, wait_for};
use serde_json::{Value, json};
use std::time::Duration;

const T: Duration = Duration::from_secs(20);
const SHARDS: u32 = 64;

async fn cluster(nats: &NatsServer, prefix: &str) -> (Vec<TestNode>, aether_core::plan::Plan) {
    let nc = nats.connect().await;
    start_cluster(&nats.url(), &nc, prefix, &["app-0", "app-1"], SHARDS, 8, 10).await
}

fn code(r: &Reply) -> ErrorCode {
    match &r.outcome {
        Outcome::Error(e) => e.code,
        Outcome::Ok(ok) => panic!("expected an error, got {ok:?}"),
    }
}

fn add(id: &str, n: i64, cmd: Option<String>) -> Request {
    Request::new(
        ActorRef::new("counter", id),
        Op::Command {
            command: json!({"add": n}),
        },
        cmd,
    )
}

/// Another actor id in the same shard as `id`.
fn neighbour(id: &str) -> String {
    let shard = shard_of(id, SHARDS);
    (0..)
        .map(|i| format!("{id}-n{i}"))
        .find(|n| shard_of(n, SHARDS) == shard)
        .expect("a neighbour")
}

fn malformed(nodes: &[TestNode], kind: Malformed) -> u64 {
    nodes.iter().map(|n| n.metrics.malformed_of(kind)).sum()
}

/// The shard of `id` and every other actor still answer, from the shard's owner.
async fn still_serving(client: &Client, plan: &aether_core::plan::Plan, id: &str) {
    for actor in [id.to_owned(), neighbour(id)] {
        let before = client.read("counter", &actor).await.expect("read");
        let (v, _) = counter_value(&before);
        let reply = client
            .add(&actor, 1, format!("{actor}-ok"))
            .await
            .expect("answer");
        let (after, _) = counter_value(&reply);
        assert_eq!(after, v + 1, "{actor} still takes commands");
        let Outcome::Ok(ok) = &reply.outcome else {
            unreachable!()
        };
        assert_eq!(Some(ok.node.as_str()), plan.owner(shard_of(&actor, SHARDS)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_id_with_a_line_break_is_refused_and_the_shard_keeps_serving() {
    let nats = NatsServer::start();
    let (nodes, plan) = cluster(&nats, "crlf").await;
    let nc = nats.connect().await;
    let client = Client::new(nc.clone(), "crlf");
    for bad in ["a\r\nb", "line\nbreak", "nul\0", ""] {
        let r = ask(&nc, "crlf", &add("victim", 1, Some(bad.to_owned()))).await;
        assert_eq!(code(&r), ErrorCode::Malformed, "command id {bad:?}");
    }
    assert!(malformed(&nodes, Malformed::Request) >= 4, "counted");
    still_serving(&client, &plan, "victim").await;
    let (v, _) = counter_value(&client.read("counter", "victim").await.expect("read"));
    assert_eq!(v, 1, "nothing of the refused commands was applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_id_over_the_limit_is_refused() {
    let nats = NatsServer::start();
    let (nodes, plan) = cluster(&nats, "longcmd").await;
    let nc = nats.connect().await;
    let client = Client::new(nc.clone(), "longcmd");
    let long = "c".repeat(MAX_COMMAND_ID_BYTES + 1);
    let r = ask(&nc, "longcmd", &add("a", 1, Some(long))).await;
    assert_eq!(code(&r), ErrorCode::TooLarge);
    assert!(malformed(&nodes, Malformed::TooLarge) >= 1, "counted");
    let fits = "c".repeat(MAX_COMMAND_ID_BYTES);
    let (v, _) = counter_value(&client.add("a", 1, fits).await.expect("answer"));
    assert_eq!(v, 1, "an id at the limit is taken");
    still_serving(&client, &plan, "a").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actor_id_over_the_limit_is_refused_and_no_connection_drops() {
    let nats = NatsServer::start();
    let (nodes, plan) = cluster(&nats, "longid").await;
    let nc = nats.connect().await;
    let client = Client::new(nc.clone(), "longid");
    // Long enough that its subject would pass nats-server's 4,096-byte control line.
    let long = "x".repeat(3_000);
    let r = ask(&nc, "longid", &add(&long, 1, Some("l-1".into()))).await;
    assert_eq!(code(&r), ErrorCode::TooLarge);
    let read = Request::new(ActorRef::new("counter", &long), Op::Read, None);
    assert_eq!(code(&ask(&nc, "longid", &read).await), ErrorCode::TooLarge);
    assert!(malformed(&nodes, Malformed::TooLarge) >= 2, "counted");
    // An id at the limit works end to end: its subject fits.
    let at_limit = "y".repeat(MAX_ACTOR_ID_BYTES);
    let (v, _) = counter_value(
        &client
            .add(&at_limit, 2, "y-1".into())
            .await
            .expect("answer"),
    );
    assert_eq!(v, 2);
    for n in &nodes {
        assert_eq!(
            n.shared.client.connection_state(),
            async_nats::connection::State::Connected,
            "{} kept its connection",
            n.name
        );
    }
    still_serving(&client, &plan, "short").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deeply_nested_command_is_refused_before_it_reaches_the_log() {
    let nats = NatsServer::start();
    let (nodes, _plan) = cluster(&nats, "deep").await;
    let nc = nats.connect().await;
    let client = Client::new(nc.clone(), "deep");
    let nested = |depth: usize| {
        let mut v = json!(1);
        for _ in 0..depth {
            v = json!([v]);
        }
        v
    };
    let put = |depth: usize, id: &str| {
        Request::new(
            ActorRef::new("doc", "d"),
            Op::Command {
                command: json!({"put": {"key": "k", "value": nested(depth)}}),
            },
            Some(id.to_owned()),
        )
    };
    // 120 levels: serde_json reads it, but the record (4 levels deeper) would not read back.
    let r = ask(&nc, "deep", &put(120, "deep-1")).await;
    assert_eq!(code(&r), ErrorCode::Malformed);
    assert!(malformed(&nodes, Malformed::Request) >= 1);
    // Within the limit (the command object and `put` take two levels): stored and read back.
    let ok = ask(&nc, "deep", &put(MAX_COMMAND_DEPTH - 3, "deep-2")).await;
    assert!(matches!(ok.outcome, Outcome::Ok(_)), "{ok:?}");
    let read = client.read("doc", "d").await.expect("read");
    let Outcome::Ok(state) = &read.outcome else {
        panic!("{read:?}")
    };
    assert_eq!(state.state["k"], nested(MAX_COMMAND_DEPTH - 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_older_than_the_remembered_ids_is_not_applied_twice() {
    let nats = NatsServer::start();
    let (nodes, _plan) = cluster(&nats, "dup").await;
    let nc = nats.connect().await;
    let client = Client::new(nc.clone(), "dup");
    let first = client.add("acct", 1, "first".into()).await.expect("answer");
    assert_eq!(counter_value(&first), (1, 1));
    let newer = aether_node::store::RECENT_COMMANDS as i64;
    for i in 0..newer {
        client
            .add("acct", 1, format!("n-{i}"))
            .await
            .expect("answer");
    }
    // The node no longer remembers "first"; JetStream's duplicate window (120 s) does.
    let again = client.add("acct", 1, "first".into()).await.expect("answer");
    let (value, version) = counter_value(&again);
    assert_eq!(value, 1 + newer, "the retry was not applied again");
    assert_eq!(version, 1 + newer as u64);
    let (read, _) = counter_value(&client.read("counter", "acct").await.expect("read"));
    assert_eq!(read, 1 + newer, "memory and log agree");
    let dups: u64 = nodes
        .iter()
        .map(|n| n.metrics.failures_of(Failure::Duplicate))
        .sum();
    assert_eq!(dups, 1, "the duplicate ack is counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_that_contradicts_itself_is_ignored_and_counted() {
    let nats = NatsServer::start();
    let (nodes, plan) = cluster(&nats, "badplan").await;
    let nc = nats.connect().await;
    let client = Client::new(nc.clone(), "badplan");
    let js = async_nats::jetstream::new(nc.clone());
    let bucket = aether_nats::plans::open_bucket(&js, &Names::new("badplan"), 1)
        .await
        .expect("bucket");
    let good = PlanMessage::new(&plan, 4, 10);
    let mut bad: Vec<Value> = Vec::new();
    for mutate in [
        |v: &mut Value| v["shards"] = json!(128), // the map holds 64
        |v: &mut Value| v["moves"] = json!([{"shard": 1, "to": "nobody"}]),
        |v: &mut Value| {
            v["moves"] = json!([{"shard": 1, "to": "app-0"}, {"shard": 1, "to": "app-1"}])
        },
        |v: &mut Value| v["moves"] = json!([{"shard": 64, "to": "app-0"}]),
    ] {
        let mut v = serde_json::to_value(&good).expect("json");
        v["epoch"] = json!(plan.epoch + 1 + bad.len() as u64);
        mutate(&mut v);
        bad.push(v);
    }
    for (i, v) in bad.iter().enumerate() {
        bucket
            .put(
                Names::PLAN_KEY,
                serde_json::to_vec(v).expect("bytes").into(),
            )
            .await
            .expect("put");
        let want = i as u64 + 1;
        for n in &nodes {
            wait_for("the bad plan counted", T, || async {
                n.metrics.malformed_of(Malformed::Plan) >= want
            })
            .await;
            assert_eq!(n.shared.epoch(), plan.epoch, "the bad plan was not taken");
        }
    }
    let (v, _) = counter_value(&client.add("still", 1, "s-1".into()).await.expect("answer"));
    assert_eq!(v, 1, "still serving on the last good plan");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_would_make_the_state_too_large_is_refused_and_nothing_appended() {
    let nats = NatsServer::start();
    let (nodes, _plan) = cluster(&nats, "big").await;
    let nc = nats.connect().await;
    let client = Client::new(nc.clone(), "big");
    let put = |key: &str, bytes: usize, id: &str| {
        Request::new(
            ActorRef::new("doc", "d"),
            Op::Command {
                command: json!({"put": {"key": key, "value": "v".repeat(bytes)}}),
            },
            Some(id.to_owned()),
        )
    };
    let version = |r: &Reply| match &r.outcome {
        Outcome::Ok(ok) => ok.version,
        Outcome::Error(e) => panic!("{e:?}"),
    };
    // Four values of 60 KB (the test nodes take requests up to 64 KiB) fit the default 256 KiB.
    for i in 0..4u64 {
        let r = ask(&nc, "big", &put(&format!("k{i}"), 60_000, &format!("p{i}"))).await;
        assert_eq!(version(&r), i + 1);
    }
    // A fifth would take the state past 256 KiB.
    let refused = ask(&nc, "big", &put("k4", 60_000, "p4")).await;
    assert_eq!(code(&refused), ErrorCode::TooLarge);
    let read = client.read("doc", "d").await.expect("read");
    assert_eq!(version(&read), 4, "nothing appended");
    // The actor stays usable: it shrinks, then takes the value.
    let delete = Request::new(
        ActorRef::new("doc", "d"),
        Op::Command {
            command: json!({"delete": "k0"}),
        },
        Some("d0".into()),
    );
    assert_eq!(version(&ask(&nc, "big", &delete).await), 5);
    assert_eq!(
        version(&ask(&nc, "big", &put("k4", 60_000, "p4b")).await),
        6
    );
    // Every node keeps its connection.
    for n in &nodes {
        assert_eq!(
            n.shared.client.connection_state(),
            async_nats::connection::State::Connected
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_beyond_max_inflight_is_answered_overloaded_and_nothing_is_lost() {
    let nats = NatsServer::start();
    let nc = nats.connect().await;
    let mut cfg = aether_tests::cluster::node_config(&nats.url(), "flood", "app-0");
    cfg.max_inflight = 2;
    let node = TestNode::start_with(cfg).await;
    let plan = aether_tests::cluster::next_plan(None, &["app-0"], SHARDS, 8);
    aether_tests::cluster::publish(&nc, "flood", &plan, 10).await;
    wait_for("the plan", T, || async {
        node.shared.settled_at(plan.epoch)
    })
    .await;
    let subject = Names::new("flood").node_requests("app-0");
    let sends = (0..300).map(|i| {
        let (nc, subject) = (nc.clone(), subject.clone());
        async move {
            let req = add(&format!("f{}", i % 5), 1, Some(format!("flood-{i}")));
            let msg = nc
                .request(subject, encode(&req).expect("encodes").into())
                .await
                .expect("every request is answered");
            decode::<Reply>(&msg.payload).expect("a reply")
        }
    });
    let replies = futures::future::join_all(sends).await;
    let ok = replies
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Ok(_)))
        .count();
    let overloaded = replies
        .iter()
        .filter(|r| matches!(&r.outcome, Outcome::Error(e) if e.code == ErrorCode::Unavailable && e.message.contains("overloaded")))
        .count();
    assert_eq!(
        ok + overloaded,
        replies.len(),
        "only ok or overloaded: {replies:?}"
    );
    assert!(overloaded > 0, "the flood went past 2 in flight");
    assert_eq!(
        node.metrics
            .render()
            .lines()
            .find(|l| l.starts_with("aether_node_messages_total{kind=\"overloaded\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<usize>().ok()),
        Some(overloaded),
        "counted"
    );
    // Exactly the acknowledged commands were applied, once each.
    let client = Client::new(nc.clone(), "flood");
    let mut total = 0;
    for a in 0..5 {
        let (v, _) = counter_value(
            &client
                .read("counter", &format!("f{a}"))
                .await
                .expect("read"),
        );
        total += v;
    }
    assert_eq!(total, ok as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_event_stream_is_answered_unavailable_counted_and_makes_the_node_not_ready() {
    let nats = NatsServer::start();
    let nc = nats.connect().await;
    // The stream exists before the nodes, small and refusing new messages when full.
    let js = async_nats::jetstream::new(nc.clone());
    let names = Names::new("full");
    js.create_stream(async_nats::jetstream::stream::Config {
        name: names.event_stream(),
        subjects: vec![names.event_subjects()],
        allow_direct: true,
        max_bytes: 64 * 1024,
        discard: async_nats::jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .expect("stream");
    let (nodes, _plan) = cluster(&nats, "full").await;
    let client = Client::new(nc.clone(), "full");
    let put = |i: usize| {
        Request::new(
            ActorRef::new("doc", format!("d{}", i % 3)),
            Op::Command {
                command: json!({"put": {"key": format!("k{i}"), "value": "v".repeat(8_000)}}),
            },
            Some(format!("fill-{i}")),
        )
    };
    let mut acked = 0;
    let mut refused = None;
    for i in 0..40 {
        let r = ask(&nc, "full", &put(i)).await;
        match &r.outcome {
            Outcome::Ok(_) => acked += 1,
            Outcome::Error(e) => {
                refused = Some(e.clone());
                break;
            }
        }
    }
    let e = refused.expect("the stream filled up");
    assert_eq!(e.code, ErrorCode::Unavailable, "{e:?}");
    assert!(e.message.contains("event stream full"), "{e:?}");
    assert!(acked > 0);
    let full: u64 = nodes
        .iter()
        .map(|n| n.metrics.failures_of(Failure::StoreFull))
        .sum();
    assert!(full >= 1, "counted");
    assert!(
        nodes.iter().any(|n| n
            .health
            .problem()
            .is_some_and(|p| p.contains("event stream is full"))),
        "a node says why it is not ready: {:?}",
        nodes.iter().map(|n| n.health.problem()).collect::<Vec<_>>()
    );
    // Reads still work, and what was acknowledged is there.
    let mut keys = 0;
    for a in 0..3 {
        let r = client.read("doc", &format!("d{a}")).await.expect("read");
        let Outcome::Ok(ok) = &r.outcome else {
            panic!("{r:?}")
        };
        keys += ok.state.as_object().map_or(0, serde_json::Map::len);
    }
    assert_eq!(keys, acked, "every acknowledged put is there");
}

/// `--max-actors`: a node that has loaded more actors than the cap passivates the least recently
/// used; each reloads from the log when used again, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actors_in_memory_are_capped_least_recently_used_first() {
    let nats = NatsServer::start();
    let nc = nats.connect().await;
    let mut cfg = aether_tests::cluster::node_config(&nats.url(), "cap", "app-0");
    cfg.max_actors = 50;
    let n = TestNode::start_with(cfg).await;
    let plan = aether_tests::cluster::next_plan(None, &["app-0"], SHARDS, 4);
    aether_tests::cluster::publish(&nc, "cap", &plan, 10).await;
    wait_for("the plan", T, || async { n.shared.settled_at(plan.epoch) }).await;
    let client = Client::new(nc.clone(), "cap");
    for i in 0..300 {
        let reply = client
            .add(&format!("cap-{i}"), 1, format!("c-{i}"))
            .await
            .expect("answer");
        assert_eq!(counter_value(&reply), (1, 1));
        let held = n.metrics.actors.get();
        // Each worker evicts its own idle actors: at most one over per shard worker at any time.
        assert!(
            held <= 50 + i64::from(SHARDS),
            "{held} actors held after {i} loads"
        );
    }
    let (held, evicted) = (n.metrics.actors.get(), n.metrics.evicted.get());
    assert_eq!(
        i64::try_from(evicted).expect("count") + held,
        300,
        "every actor loaded is held or was evicted"
    );
    for i in 0..300 {
        let r = client
            .read("counter", &format!("cap-{i}"))
            .await
            .expect("read");
        assert_eq!(counter_value(&r), (1, 1), "cap-{i} reloads from the log");
    }
}
