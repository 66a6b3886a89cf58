//! Node sidecars against a real nats-server: routing, idempotent commands, bad input, stale plans.

use aether_core::protocol::{
    ActorRef, ErrorCode, Names, Op, Outcome, PlanMessage, Reply, Request, decode, encode,
};
use aether_node::client::Client;
use aether_node::metrics::{Malformed, Route};
use aether_tests::cluster::{TestNode, next_plan, publish, start_cluster};
use aether_tests::{NatsServer, wait_for};
use futures::StreamExt;
use serde_json::json;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

fn value(reply: &Reply) -> i64 {
    match &reply.outcome {
        Outcome::Ok(ok) => ok.state["value"].as_i64().unwrap_or(i64::MIN),
        Outcome::Error(e) => panic!("error reply: {e:?}"),
    }
}

async fn three_nodes(nats: &NatsServer, prefix: &str) -> (Vec<TestNode>, aether_core::plan::Plan) {
    let nc = nats.connect().await;
    start_cluster(
        &nats.url(),
        &nc,
        prefix,
        &["app-0", "app-1", "app-2"],
        64,
        8,
        10,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_served_from_any_node_and_logged_before_the_reply() {
    let nats = NatsServer::start();
    let (nodes, plan) = three_nodes(&nats, "basic").await;
    let nc = nats.connect().await;
    let client = Client::new(nc.clone(), "basic");
    let js = async_nats::jetstream::new(nc.clone());
    let stream = js
        .get_stream("basic-events")
        .await
        .expect("event stream exists");
    for i in 0..30 {
        let actor = format!("user-{i}");
        for k in 1..=3 {
            let reply = client
                .add(&actor, k, format!("c-{i}-{k}"))
                .await
                .expect("answer");
            let Outcome::Ok(ok) = &reply.outcome else {
                panic!("{reply:?}")
            };
            // Acknowledged means in JetStream: the actor's last record is this version.
            let shard = aether_core::hash::shard_of(&actor, plan.shards);
            let subject =
                Names::new("basic").actor_subject(shard, &ActorRef::new("counter", &actor));
            let last = stream
                .direct_get_last_for_subject(&subject)
                .await
                .expect("record in the log");
            let record: serde_json::Value =
                serde_json::from_slice(&last.payload).expect("json record");
            assert_eq!(record["version"].as_u64(), Some(ok.version));
            assert_eq!(
                plan.owner(shard),
                Some(ok.node.as_str()),
                "answered by the owner"
            );
        }
        assert_eq!(
            value(&client.read("counter", &actor).await.expect("read")),
            6
        );
    }
    // Requests reached non-owners too (queue group) and were forwarded once.
    let forwarded: usize = nodes
        .iter()
        .map(|n| n.metrics.render())
        .map(|m| {
            m.lines()
                .filter(|l| l.contains("kind=\"forwarded\""))
                .count()
        })
        .sum();
    assert!(forwarded > 0, "some requests were forwarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_command_id_is_applied_once() {
    let nats = NatsServer::start();
    let (_nodes, _plan) = three_nodes(&nats, "idem").await;
    let client = Client::new(nats.connect().await, "idem");
    let first = client
        .add("acct", 10, "same-id".into())
        .await
        .expect("answer");
    let again = client
        .add("acct", 10, "same-id".into())
        .await
        .expect("answer");
    assert_eq!(value(&first), 10);
    assert_eq!(value(&again), 10, "the retry is answered, not applied");
    let Outcome::Ok(a) = &again.outcome else {
        unreachable!()
    };
    assert_eq!(a.version, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_oversized_and_unknown_requests_get_error_replies() {
    let nats = NatsServer::start();
    let (nodes, _plan) = three_nodes(&nats, "bad").await;
    let nc = nats.connect().await;
    let names = Names::new("bad");
    let ask = |bytes: Vec<u8>| {
        let nc = nc.clone();
        let subject = names.any_node();
        async move {
            let msg = nc
                .request(subject, bytes.into())
                .await
                .expect("a reply, not silence");
            decode::<Reply>(&msg.payload).expect("a protocol reply")
        }
    };
    let code = |r: Reply| match r.outcome {
        Outcome::Error(e) => e.code,
        Outcome::Ok(_) => panic!("expected an error"),
    };
    assert_eq!(
        code(ask(b"\x00\xffnot json".to_vec()).await),
        ErrorCode::Malformed
    );
    assert_eq!(
        code(ask(br#"{"v":7,"x":1}"#.to_vec()).await),
        ErrorCode::UnsupportedVersion
    );
    let huge = Request::new(
        ActorRef::new("doc", "big"),
        Op::Command {
            command: json!({"put": {"key": "k", "value": "x".repeat(100_000)}}),
        },
        Some("big-1".into()),
    );
    assert_eq!(
        code(ask(encode(&huge).expect("encodes")).await),
        ErrorCode::TooLarge
    );
    let unknown = Request::new(ActorRef::new("nope", "a"), Op::Read, None);
    assert_eq!(
        code(ask(encode(&unknown).expect("encodes")).await),
        ErrorCode::UnknownKind
    );
    let rejected = Request::new(
        ActorRef::new("counter", "a"),
        Op::Command {
            command: json!({"mul": 2}),
        },
        None,
    );
    assert_eq!(
        code(ask(encode(&rejected).expect("encodes")).await),
        ErrorCode::Rejected
    );
    let malformed: u64 = nodes
        .iter()
        .flat_map(|n| {
            n.metrics
                .render()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|l| l.starts_with("aether_node_malformed_total"))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<u64>().ok()))
        .sum();
    assert!(
        malformed >= 3,
        "malformed and oversized requests are counted, saw {malformed}"
    );
    // Still serving.
    let client = Client::new(nc.clone(), "bad");
    assert_eq!(
        value(&client.add("fine", 1, "f-1".into()).await.expect("answer")),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_with_a_lower_epoch_is_ignored() {
    let nats = NatsServer::start();
    let (nodes, plan) = three_nodes(&nats, "stale").await;
    let nc = nats.connect().await;
    let p2 = next_plan(Some(&plan), &["app-0", "app-1"], 64, 8);
    publish(&nc, "stale", &p2, 10).await;
    for n in &nodes {
        wait_for("epoch 2", T, || async { n.shared.settled_at(2) }).await;
    }
    // Write epoch 1 straight into the bucket, as a confused or old operator would.
    let js = async_nats::jetstream::new(nc.clone());
    let kv = js.get_key_value("stale-plans").await.expect("bucket");
    let old = encode(&PlanMessage::new(&plan, 4, 10)).expect("encodes");
    kv.put(Names::PLAN_KEY, old.into()).await.expect("put");
    wait_for("the stale plan to be seen and counted", T, || async {
        nodes.iter().all(|n| {
            n.metrics
                .render()
                .contains("aether_node_stale_plans_total 1")
        })
    })
    .await;
    assert!(nodes.iter().all(|n| n.shared.settled_at(2)));
    // The publisher refuses to go back too.
    let bucket = aether_nats::plans::open_bucket(&js, &Names::new("stale"), 1)
        .await
        .expect("bucket");
    assert!(
        aether_nats::plans::publish(&bucket, &PlanMessage::new(&plan, 4, 10))
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actor_is_rebuilt_from_its_last_snapshot_and_the_records_after_it() {
    let nats = NatsServer::start();
    let prefix = "snap";
    let nc = nats.connect().await;
    let first = TestNode::start(&nats.url(), prefix, "app-0").await;
    let p1 = next_plan(None, &["app-0"], 64, 4);
    publish(&nc, prefix, &p1, 10).await;
    wait_for("plan 1", T, || async { first.shared.settled_at(1) }).await;
    let client = Client::new(nc.clone(), prefix);
    let n = 2 * aether_node::store::SNAPSHOT_EVERY + 6;
    for i in 0..n {
        client.add("long", 1, format!("s-{i}")).await.expect("add");
    }
    // app-0 goes away; app-1 owns everything and has never seen the actor: it reads the last record
    // (no snapshot), the snapshot record it points at, and replays the 6 records after it.
    drop(first);
    let second = TestNode::start(&nats.url(), prefix, "app-1").await;
    let p2 = next_plan(Some(&p1), &["app-1"], 64, 4);
    publish(&nc, prefix, &p2, 10).await;
    wait_for("plan 2", T, || async { second.shared.settled_at(2) }).await;
    let reply = client.read("counter", "long").await.expect("read");
    let Outcome::Ok(ok) = &reply.outcome else {
        panic!("{reply:?}")
    };
    assert_eq!(ok.node, "app-1");
    assert_eq!(
        (ok.state["value"].as_i64(), ok.version),
        (Some(n as i64), n)
    );
    // Its recent command ids came along: a retry of the last command is not applied again.
    let again = client
        .add("long", 1, format!("s-{}", n - 1))
        .await
        .expect("retry");
    assert_eq!(value(&again), n as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_forwarded_to_an_owner_that_is_gone_is_answered_unavailable_at_once() {
    let nats = NatsServer::start();
    let (mut nodes, plan) = three_nodes(&nats, "gone").await;
    let client = Client::new(nats.connect().await, "gone");
    let names = Names::new("gone");
    // An actor of app-2, asked at app-0, which forwards the request and relays the owner's reply.
    let actor = (0..)
        .map(|i| format!("g-{i}"))
        .find(|a| plan.owner(aether_core::hash::shard_of(a, plan.shards)) == Some("app-2"))
        .expect("an actor of app-2");
    let req = Request::new(ActorRef::new("counter", &actor), Op::Read, None);
    let reply = client
        .request_once(names.node_requests("app-0"), &req)
        .await
        .expect("an answer");
    match &reply.outcome {
        Outcome::Ok(ok) => assert_eq!(ok.node, "app-2", "the owner's reply, relayed"),
        Outcome::Error(e) => panic!("{e:?}"),
    }
    // app-2 stops serving while the plan still names it: the caller is told to retry at once (NATS
    // reports no responders to the forwarding node), not left waiting for its own timeout.
    let gone = nodes.pop().expect("app-2");
    assert_eq!(gone.name, "app-2");
    drop(gone);
    wait_for("app-0 to answer that app-2 does not", T, || async {
        let asked = std::time::Instant::now();
        let answer = client
            .request_once(names.node_requests("app-0"), &req)
            .await;
        let unavailable = matches!(
            &answer,
            Ok(Reply { outcome: Outcome::Error(e), .. })
                if e.code == ErrorCode::Unavailable && e.message.contains("app-2")
        );
        unavailable && asked.elapsed() < Duration::from_secs(2)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_watches_the_plan_sends_to_the_owner_and_follows_a_new_plan() {
    let nats = NatsServer::start();
    let (nodes, plan) = three_nodes(&nats, "hop").await;
    let nc = nats.connect().await;
    let client = Client::watching_plan(nc.clone(), "hop");
    assert!(client.wait_for_plan(T).await, "the client reads the plan");
    assert_eq!(client.plan_epoch(), plan.epoch);
    let forwarded = |nodes: &[TestNode]| -> u64 {
        nodes
            .iter()
            .map(|n| n.metrics.routes_of(Route::Forwarded))
            .sum()
    };
    let actors: Vec<String> = (0..60).map(|i| format!("hop-{i}")).collect();
    for a in &actors {
        let reply = client.add(a, 2, format!("h-{a}")).await.expect("answer");
        assert_eq!(value(&reply), 2);
    }
    assert_eq!(
        forwarded(&nodes),
        0,
        "every request went straight to its owner"
    );

    // A new plan moves a shard: the client follows it and the requests still take one hop.
    let shard = aether_core::hash::shard_of(&actors[0], plan.shards);
    let to = if plan.owner(shard) == Some("app-0") {
        "app-1"
    } else {
        "app-0"
    };
    let next = aether_tests::cluster::move_one_shard(&plan, shard, to);
    publish(&nc, "hop", &next, 10).await;
    wait_for("the client and the nodes at the new plan", T, || async {
        client.plan_epoch() == next.epoch && nodes.iter().all(|n| n.shared.settled_at(next.epoch))
    })
    .await;
    // While the shard moves, its new owner forwards to the source; once it has moved, the
    // client's request reaches the new owner and is served there, with no forward.
    wait_for("a read served by the new owner in one hop", T, || async {
        let before = forwarded(&nodes);
        let reply = client.read("counter", &actors[0]).await.expect("read");
        assert_eq!(value(&reply), 2, "the actor's state moved with it");
        let Outcome::Ok(ok) = &reply.outcome else {
            unreachable!()
        };
        ok.node == to && forwarded(&nodes) == before
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_request_travels_unchanged_with_hops_and_epoch_in_headers() {
    let nats = NatsServer::start();
    let (nodes, plan) = three_nodes(&nats, "hdr").await;
    let nc = nats.connect().await;
    let names = Names::new("hdr");
    let actor = (0..)
        .map(|i| format!("x-{i}"))
        .find(|a| plan.owner(aether_core::hash::shard_of(a, plan.shards)) == Some("app-2"))
        .expect("an actor of app-2");
    let body = encode(&Request::new(
        ActorRef::new("counter", &actor),
        Op::Read,
        None,
    ))
    .expect("encode");
    // What app-0 sends app-2 when it forwards (on the nodes' own subject): the same bytes, the
    // headers added.
    let mut seen = nc.subscribe(names.node_sends("app-2")).await.expect("sub");
    nc.flush().await.expect("flush");
    let msg = nc
        .request(names.node_requests("app-0"), body.clone().into())
        .await
        .expect("relayed");
    let reply: Reply = decode(&msg.payload).expect("reply");
    let Outcome::Ok(ok) = &reply.outcome else {
        panic!("{reply:?}")
    };
    assert_eq!(ok.node, "app-2");
    let forwarded = tokio::time::timeout(T, seen.next())
        .await
        .expect("the forwarded request")
        .expect("a message");
    assert_eq!(
        forwarded.payload.as_ref(),
        body.as_slice(),
        "the bytes as the client sent them"
    );
    let headers = forwarded.headers.expect("headers");
    assert_eq!(headers.get("Aether-Hops").map(|v| v.as_str()), Some("1"));
    assert_eq!(
        headers.get("Aether-Epoch").map(|v| v.as_str()),
        Some(plan.epoch.to_string().as_str())
    );
    // The headers replace the body's fields: hops 2 at a non-owner is a redirect, not a forward.
    let ask = |headers: async_nats::HeaderMap| {
        let (nc, body, subject) = (nc.clone(), body.clone(), names.node_requests("app-1"));
        async move {
            let msg = nc
                .request_with_headers(subject, headers, body.into())
                .await
                .expect("answer");
            decode::<Reply>(&msg.payload).expect("reply")
        }
    };
    let mut twice = async_nats::HeaderMap::new();
    twice.insert("Aether-Hops", "2");
    match ask(twice).await.outcome {
        Outcome::Error(e) => {
            assert_eq!(e.code, ErrorCode::Redirect);
            assert_eq!(e.owner.as_deref(), Some("app-2"));
        }
        Outcome::Ok(ok) => panic!("forwarded a third time: {ok:?}"),
    }
    let malformed = |nodes: &[TestNode]| -> u64 {
        nodes
            .iter()
            .map(|n| n.metrics.malformed_of(Malformed::Request))
            .sum()
    };
    let before = malformed(&nodes);
    let mut bad = async_nats::HeaderMap::new();
    bad.insert("Aether-Hops", "many");
    match ask(bad).await.outcome {
        Outcome::Error(e) => {
            assert_eq!(e.code, ErrorCode::Malformed);
            assert!(e.message.contains("Aether-Hops"), "{}", e.message);
        }
        Outcome::Ok(ok) => panic!("served: {ok:?}"),
    }
    assert_eq!(malformed(&nodes), before + 1, "counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_stops_under_load_answers_every_request_sent_to_it() {
    // A fourth node outside the plan takes its share of `P.req` (the queue group) and forwards it;
    // it is stopped and started again under load, round after round. Every request must get an
    // answer: one the stopping node's subscription received but never handed over (async-nats
    // forgets a drained subscription before the server has read its UNSUB) would leave its caller
    // waiting out its timeout.
    let nats = NatsServer::start();
    let (_nodes, plan) = three_nodes(&nats, "stop").await;
    let nc = nats.connect().await;
    let names = Names::new("stop");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..16)
        .map(|w| {
            let (nc, stop, any) = (nc.clone(), stop.clone(), names.any_node());
            tokio::spawn(async move {
                let (mut answered, mut silent) = (0u64, Vec::new());
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let actor = format!("s-{}", (w * 7919 + i) % 500);
                    let req = Request::new(ActorRef::new("counter", &actor), Op::Read, None);
                    let bytes = encode(&req).expect("encode");
                    let asked = std::time::Instant::now();
                    match tokio::time::timeout(
                        Duration::from_secs(3),
                        nc.request(any.clone(), bytes.into()),
                    )
                    .await
                    {
                        Ok(Ok(_)) => answered += 1,
                        Ok(Err(e)) => silent.push(format!("{actor}: {e}")),
                        Err(_) => {
                            silent.push(format!("{actor}: no answer after {:?}", asked.elapsed()))
                        }
                    }
                    i += 1;
                }
                (answered, silent)
            })
        })
        .collect();
    for round in 0..4 {
        let mut extra = TestNode::start(&nats.url(), "stop", "app-3").await;
        wait_for("app-3 to hold the plan", T, || async {
            extra.shared.settled_at(plan.epoch)
        })
        .await;
        wait_for("app-3 to take requests from the queue group", T, || async {
            extra.metrics.routes_of(Route::Forwarded) >= 200
        })
        .await;
        extra.terminate();
        extra
            .exited(T)
            .await
            .unwrap_or_else(|e| panic!("round {round}: app-3 exited with {e}"));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut answered, mut silent) = (0, Vec::new());
    for w in load {
        let (a, s) = w.await.expect("load task");
        answered += a;
        silent.extend(s);
    }
    assert!(answered > 0, "no request was answered");
    assert!(
        silent.is_empty(),
        "{} of {} requests got no answer: {:?}",
        silent.len(),
        answered + silent.len() as u64,
        &silent[..silent.len().min(5)]
    );
}
