//! Shard migration against a real nats-server: live moves under load, failing destinations, a killed
//! source, a NATS restart, fencing, draining on SIGTERM, and a shard of many chunks.

use aether_core::crd::MovePhase;
use aether_core::protocol::{ActorRef, Names, NodeEvent, NodeEventKind, Outcome, Progress, decode};
use aether_node::client::{Client, run_load};
use aether_node::store::{EventStore, Record};
use aether_tests::cluster::{
    TestNode, assert_nothing_acked_lost, counter_value, move_one_shard, next_plan, progress_log,
    publish, spawn_process, start_cluster,
};
use aether_tests::{NatsServer, free_port, wait_for, workspace_binary};
use futures::StreamExt;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);
const SHARDS: u32 = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_moves_while_clients_keep_writing() {
    let nats = NatsServer::start();
    let prefix = "live";
    let nc = nats.connect().await;
    let progress = progress_log(&nc, prefix).await;
    let (mut nodes, p1) = start_cluster(
        &nats.url(),
        &nc,
        prefix,
        &["app-0", "app-1", "app-2"],
        SHARDS,
        8,
        10,
    )
    .await;
    let client = Client::new(nc.clone(), prefix);
    // Warm every actor so the moves carry live state.
    let warm = run_load(&client, "acct", 200, 200, 8, T).await;
    assert_eq!(warm.errors, 0);

    let load = {
        let client = client.clone();
        tokio::spawn(async move { run_load(&client, "acct", 200, 3000, 16, T).await })
    };
    nodes.push(TestNode::start(&nats.url(), prefix, "app-3").await);
    let p2 = next_plan(Some(&p1), &["app-0", "app-1", "app-2", "app-3"], SHARDS, 8);
    assert!(!p2.moves.is_empty());
    assert!(
        p2.moves.iter().all(|m| m.to == "app-3"),
        "a join moves shards only to the joiner"
    );
    publish(&nc, prefix, &p2, 10).await;
    for n in &nodes {
        wait_for("plan 2 with every move done", T, || async {
            n.shared.settled_at(2) && n.shared.pending_moves() == 0
        })
        .await;
    }
    let report = load.await.expect("load task");
    assert_eq!(report.errors, 0, "no command failed during the move");
    let mut total = warm;
    total.absorb(report);
    let acked = total.acked;
    assert_nothing_acked_lost(SHARDS, &nc, prefix, &client, &acked, true).await;

    let done: Vec<Progress> = progress
        .lock()
        .expect("lock")
        .iter()
        .filter(|p| p.epoch == 2)
        .cloned()
        .collect();
    // Done twice per move: by the destination when it takes the commit, by the source once the
    // commit is confirmed.
    for by_source in [false, true] {
        let moved_done = done
            .iter()
            .filter(|p| p.phase == MovePhase::Done && (p.node != "app-3") == by_source)
            .count();
        assert_eq!(
            moved_done,
            p2.moves.len(),
            "every move reported done (by its source: {by_source}): {done:?}"
        );
    }
    assert!(
        done.iter().any(|p| p.actors > 0),
        "live actors moved with their state"
    );
    // The new owner answers for the moved shards, with the state of before the move.
    for m in &p2.moves {
        let actor = (0..200)
            .map(|i| format!("acct-{i}"))
            .find(|a| aether_core::hash::shard_of(a, SHARDS) == m.shard);
        if let Some(actor) = actor {
            let reply = client.read("counter", &actor).await.expect("read");
            let Outcome::Ok(ok) = &reply.outcome else {
                panic!("{reply:?}")
            };
            assert_eq!(ok.node, "app-3");
            assert_eq!(ok.state["value"].as_i64(), acked.get(&actor).copied());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_silent_destination_rolls_the_move_back() {
    let nats = NatsServer::start();
    let prefix = "ghost";
    let nc = nats.connect().await;
    let progress = progress_log(&nc, prefix).await;
    let (_nodes, p1) =
        start_cluster(&nats.url(), &nc, prefix, &["app-0", "app-1"], SHARDS, 8, 1).await;
    let client = Client::new(nc.clone(), prefix);
    let before = run_load(&client, "acct", 100, 300, 8, T).await;
    assert_eq!(before.errors, 0);
    // app-8 has no process at all; app-9 listens for transfers and never answers (it died mid-transfer).
    let _silent = nc
        .subscribe(Names::new(prefix).node_migrate("app-9"))
        .await
        .expect("subscribe");
    let p2 = next_plan(Some(&p1), &["app-0", "app-1", "app-8", "app-9"], SHARDS, 8);
    publish(&nc, prefix, &p2, 1).await;
    wait_for("every move to fail", T, || async {
        let log = progress.lock().expect("lock");
        p2.moves.iter().all(|m| {
            log.iter()
                .any(|p| p.epoch == 2 && p.shard == m.shard && p.phase == MovePhase::Failed)
        })
    })
    .await;
    let log = progress.lock().expect("lock").clone();
    assert!(
        log.iter()
            .any(|p| p.error.as_deref().is_some_and(|e| e.contains("timed out"))),
        "silent: {log:?}"
    );
    assert!(
        log.iter()
            .any(|p| p.error.as_deref().is_some_and(|e| e.contains("no answer"))),
        "missing: {log:?}"
    );
    assert!(
        !log.iter()
            .any(|p| p.epoch == 2 && p.phase == MovePhase::Done)
    );
    // The sources kept their shards: every acknowledged command is still there, and writes go on.
    assert_nothing_acked_lost(SHARDS, &nc, prefix, &client, &before.acked, true).await;
    let after = run_load(&client, "acct", 100, 200, 8, T).await;
    assert_eq!(
        after.errors, 0,
        "the sources still serve the shards they kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_source_loses_nothing_acknowledged() {
    let bin = workspace_binary("aether-node");
    let nats = NatsServer::start();
    let prefix = "kill";
    let nc = nats.connect().await;
    let mut procs = Vec::new();
    for name in ["app-0", "app-1", "app-2"] {
        procs.push(spawn_process(&bin, &nats.url(), prefix, name, free_port()));
    }
    let p1 = next_plan(None, &["app-0", "app-1", "app-2"], SHARDS, 8);
    publish(&nc, prefix, &p1, 5).await;
    let client = Client::new(nc.clone(), prefix);
    let before = run_load(&client, "acct", 100, 600, 16, T).await;
    assert_eq!(before.errors, 0);
    // A rebalance starts (app-3 joins), and app-0, a source, dies at once.
    let _app3 = TestNode::start(&nats.url(), prefix, "app-3").await;
    let p2 = next_plan(Some(&p1), &["app-0", "app-1", "app-2", "app-3"], SHARDS, 8);
    publish(&nc, prefix, &p2, 5).await;
    procs[0].kill();
    // The operator sees the pod gone and plans it out: its shards have no source now.
    let p3 = next_plan(Some(&p2), &["app-1", "app-2", "app-3"], SHARDS, 8);
    publish(&nc, prefix, &p3, 5).await;
    let after = run_load(&client, "acct", 100, 300, 16, T).await;
    assert_eq!(
        after.errors, 0,
        "the new owners serve app-0's shards from the log"
    );
    let mut acked = before.acked.clone();
    for (k, v) in after.acked {
        *acked.entry(k).or_default() += v;
    }
    assert_nothing_acked_lost(SHARDS, &nc, prefix, &client, &acked, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_mid_move_loses_nothing_acknowledged() {
    let mut nats = NatsServer::start();
    let prefix = "restart";
    let nc = nats.connect().await;
    let (mut nodes, p1) =
        start_cluster(&nats.url(), &nc, prefix, &["app-0", "app-1"], SHARDS, 8, 5).await;
    let client = Client::new(nc.clone(), prefix);
    let warm = run_load(&client, "acct", 100, 200, 8, T).await;
    assert_eq!(warm.errors, 0);
    let load = {
        let client = client.clone();
        tokio::spawn(async move {
            run_load(&client, "acct", 100, 1500, 8, Duration::from_secs(40)).await
        })
    };
    nodes.push(TestNode::start(&nats.url(), prefix, "app-2").await);
    let p2 = next_plan(Some(&p1), &["app-0", "app-1", "app-2"], SHARDS, 8);
    publish(&nc, prefix, &p2, 5).await;
    nats.restart();
    let report = load.await.expect("load");
    let mut acked = warm.acked.clone();
    for (k, v) in report.acked {
        *acked.entry(k).or_default() += v;
    }
    // Commands whose reply was lost in the restart may have landed without an ack: at least the
    // acknowledged ones are there, and versions still count exactly the applied records.
    assert_nothing_acked_lost(SHARDS, &nc, prefix, &client, &acked, false).await;
    assert!(report.ok > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_writer_is_fenced_and_the_owner_recovers() {
    let nats = NatsServer::start();
    let prefix = "fence";
    let nc = nats.connect().await;
    let node = TestNode::start(&nats.url(), prefix, "app-0").await;
    let p1 = next_plan(None, &["app-0"], SHARDS, 4);
    publish(&nc, prefix, &p1, 5).await;
    wait_for("plan", T, || async { node.shared.settled_at(1) }).await;
    let client = Client::new(nc.clone(), prefix);
    assert_eq!(
        counter_value(&client.add("hot", 1, "a".into()).await.expect("add")).0,
        1
    );

    // Another writer, holding the same position in the log, races: exactly one append wins.
    let js = async_nats::jetstream::new(nc.clone());
    let store = EventStore::open(js, Names::new(prefix), 1)
        .await
        .expect("store");
    let actor = ActorRef::new("counter", "hot");
    let subject = store.subject(aether_core::hash::shard_of("hot", SHARDS), &actor);
    let (seq, last) = store
        .last(&subject)
        .await
        .expect("read")
        .expect("one record");
    let rec = |v| Record::new(None, vec![serde_json::json!({"added": 100})], v, 0);
    store
        .append(&subject, seq, &rec(last.version + 1))
        .await
        .expect("first writer wins");
    let second = store.append(&subject, seq, &rec(last.version + 1)).await;
    assert!(
        matches!(second, Err(aether_node::Error::Fenced(_))),
        "stale writer refused: {second:?}"
    );

    // The node's cached position is now stale: its next append is fenced, it reloads and applies.
    let (value, version) = counter_value(&client.add("hot", 1, "b".into()).await.expect("add"));
    assert_eq!((value, version), (102, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_node_before_it_exits() {
    let bin = workspace_binary("aether-node");
    let nats = NatsServer::start();
    let prefix = "drain";
    let nc = nats.connect().await;
    let mut events = nc
        .subscribe(Names::new(prefix).node_events())
        .await
        .expect("subscribe");
    let a0 = TestNode::start(&nats.url(), prefix, "app-0").await;
    let mut leaving = spawn_process(&bin, &nats.url(), prefix, "app-1", free_port());
    let p1 = next_plan(None, &["app-0", "app-1"], SHARDS, 4);
    publish(&nc, prefix, &p1, 5).await;
    wait_for("plan", T, || async { a0.shared.settled_at(1) }).await;
    let client = Client::new(nc.clone(), prefix);
    let before = run_load(&client, "acct", 60, 300, 8, T).await;
    assert_eq!(before.errors, 0);

    leaving.terminate();
    let announced = tokio::time::timeout(T, async {
        while let Some(m) = events.next().await {
            if let Ok(NodeEvent {
                node,
                event: NodeEventKind::Leaving,
                ..
            }) = decode::<NodeEvent>(&m.payload)
            {
                return node;
            }
        }
        String::new()
    })
    .await
    .expect("a leaving announcement");
    assert_eq!(announced, "app-1");
    assert!(
        leaving.wait_timeout(Duration::from_millis(300)).is_none(),
        "it serves until planned out"
    );
    // The operator plans it out; it moves its shards away, then exits 0.
    let p2 = next_plan(Some(&p1), &["app-0"], SHARDS, 4);
    publish(&nc, prefix, &p2, 5).await;
    let status = leaving.wait_timeout(T).expect("exits after draining");
    assert!(status.success(), "exit status {status:?}");
    wait_for("app-0 owns everything", T, || async {
        a0.shared.pending_moves() == 0
    })
    .await;
    assert_nothing_acked_lost(SHARDS, &nc, prefix, &client, &before.acked, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_of_many_chunks_moves_there_and_back_with_every_actors_state() {
    use aether_core::protocol::{Op, Request};
    let nats = NatsServer::start();
    let prefix = "bulk";
    let nc = nats.connect().await;
    let progress = progress_log(&nc, prefix).await;
    let (nodes, p1) =
        start_cluster(&nats.url(), &nc, prefix, &["app-0", "app-1"], SHARDS, 8, 30).await;
    let client = Client::new(nc.clone(), prefix);
    // 2,000 documents of ~1 KB in one shard: several 512 KiB chunks, three in flight at once.
    let shard = 5;
    let n = 2000;
    assert!(
        n * 1000 > 3 * aether_node::node::CHUNK_BYTES,
        "the shard spans more than three chunks"
    );
    let ids: Vec<String> = (0..)
        .map(|i| format!("doc-{i}"))
        .filter(|a| aether_core::hash::shard_of(a, SHARDS) == shard)
        .take(n)
        .collect();
    let value = |id: &str| format!("{id}:{}", "x".repeat(1000));
    for chunk in ids.chunks(100) {
        let writes = chunk.iter().map(|id| {
            let req = Request::new(
                ActorRef::new("doc", id.as_str()),
                Op::Command {
                    command: serde_json::json!({"put": {"key": "body", "value": value(id)}}),
                },
                Some(format!("put-{id}")),
            );
            let client = client.clone();
            async move { client.send(&req).await }
        });
        for reply in futures::future::join_all(writes).await {
            let reply = reply.expect("put");
            assert!(matches!(reply.outcome, Outcome::Ok(_)), "{reply:?}");
        }
    }
    // Move that one shard to the other node (planned by hand: only it moves).
    let from = p1.owner(shard).expect("owner").to_owned();
    let to = if from == "app-0" { "app-1" } else { "app-0" };
    let p2 = move_one_shard(&p1, shard, to);
    publish(&nc, prefix, &p2, 30).await;
    // The source's final report (the destination reports Done too, with no figures).
    let report_of = |epoch: u64, by: &str| {
        progress
            .lock()
            .expect("lock")
            .iter()
            .find(|p| {
                p.epoch == epoch
                    && p.shard == shard
                    && !matches!(p.phase, MovePhase::Transferring | MovePhase::HandedOff)
                    && p.node == by
            })
            .cloned()
    };
    wait_for("the move to finish", T, || async {
        report_of(p2.epoch, &from).is_some()
    })
    .await;
    let done = report_of(p2.epoch, &from).expect("a final report");
    assert_eq!(done.phase, MovePhase::Done, "{done:?}");
    assert_eq!(done.actors as usize, n, "every live actor travelled");
    let node = |name: &str| {
        nodes
            .iter()
            .find(|node| node.name == name)
            .map(|node| node.shared.clone())
            .expect("node")
    };
    let hosted = |name: &str| node(name).metrics().actors.get();
    let unreadable = |name: &str| {
        node(name)
            .metrics()
            .failures_of(aether_node::metrics::Failure::BadSnapshot)
    };
    assert_eq!(hosted(to), n as i64, "the destination installed them all");
    assert_eq!(hosted(&from), 0, "the source let them go");
    // Each document answers from its owner with the state written before the moves, read from
    // memory (an unreadable migrated state would be counted and the log replayed instead).
    let read_all = |ids: &[String], owner: &str| {
        let (client, owner, ids) = (client.clone(), owner.to_owned(), ids.to_vec());
        async move {
            for id in &ids {
                let reply = client.read("doc", id).await.expect("read");
                let Outcome::Ok(ok) = &reply.outcome else {
                    panic!("{id}: {reply:?}")
                };
                assert_eq!(ok.node, owner, "{id} is served by its owner");
                assert_eq!(ok.version, 1, "{id}");
                assert_eq!(ok.state["body"].as_str(), Some(value(id).as_str()), "{id}");
            }
        }
    };
    // Half are used at the destination (unpacked); the rest stay as they arrived, and move back
    // as they are: both kinds travel again with their state.
    let (used, untouched) = ids.split_at(n / 2);
    read_all(used, to).await;
    let p3 = move_one_shard(&p2, shard, &from);
    publish(&nc, prefix, &p3, 30).await;
    wait_for("the move back to finish", T, || async {
        report_of(p3.epoch, to).is_some()
    })
    .await;
    let back = report_of(p3.epoch, to).expect("a final report");
    assert_eq!(back.phase, MovePhase::Done, "{back:?}");
    assert_eq!(
        back.actors as usize, n,
        "used and untouched actors travelled"
    );
    assert_eq!(
        hosted(&from),
        n as i64,
        "the first owner installed them all"
    );
    assert_eq!(hosted(to), 0, "the second owner let them go");
    read_all(untouched, &from).await;
    read_all(used, &from).await;
    assert_eq!(
        unreadable(to) + unreadable(&from),
        0,
        "every migrated state read"
    );
}

/// A shard of many live actors is first copied while its source still serves it, then paused for
/// what changed meanwhile: the adds that land during the copy round travel too, and after the move
/// every counter holds exactly its acknowledged adds, read from its new owner's memory and from the
/// log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_copied_while_served_keeps_every_write_made_during_the_copy() {
    const FEW: u32 = 4;
    let nats = NatsServer::start();
    let prefix = "copy";
    let nc = nats.connect().await;
    let (nodes, p1) =
        start_cluster(&nats.url(), &nc, prefix, &["app-0", "app-1"], FEW, 8, 30).await;
    let client = Client::new(nc.clone(), prefix);
    let actors = 2_000;
    let warm = run_load(&client, "acct", actors, actors, 16, T).await;
    assert_eq!(warm.errors, 0);
    let shard = 1;
    let in_shard: Vec<String> = (0..actors)
        .map(|i| format!("acct-{i}"))
        .filter(|a| aether_core::hash::shard_of(a, FEW) == shard)
        .collect();
    assert!(
        in_shard.len() >= aether_node::migration::COPY_FROM_ACTORS,
        "the shard is big enough for a copy round: {}",
        in_shard.len()
    );
    let from = p1.owner(shard).expect("owner").to_owned();
    let to = if from == "app-0" { "app-1" } else { "app-0" };
    let load = {
        let client = client.clone();
        tokio::spawn(async move { run_load(&client, "acct", actors, 8_000, 16, T).await })
    };
    // The move starts while the adds run.
    wait_for("the adds to run", T, || async {
        let reply = client.read("counter", "acct-1").await;
        reply.is_ok_and(|r| counter_value(&r).0 >= 2)
    })
    .await;
    let p2 = move_one_shard(&p1, shard, to);
    publish(&nc, prefix, &p2, 30).await;
    for n in &nodes {
        wait_for("plan 2 with its move done", T, || async {
            n.shared.settled_at(p2.epoch) && n.shared.pending_moves() == 0
        })
        .await;
    }
    let report = load.await.expect("load task");
    assert_eq!(report.errors, 0, "no add failed during the move");
    let mut total = warm;
    total.absorb(report);
    let acked = total.acked;
    assert_nothing_acked_lost(FEW, &nc, prefix, &client, &acked, true).await;
    for actor in &in_shard {
        let reply = client.read("counter", actor).await.expect("read");
        let Outcome::Ok(ok) = &reply.outcome else {
            panic!("{actor}: {reply:?}")
        };
        assert_eq!(ok.node, to, "{actor} is served by its new owner");
        assert_eq!(
            ok.state["value"].as_i64(),
            acked.get(actor).copied(),
            "{actor}"
        );
    }
}

/// Issue 27 finding 3: a source restarted after its move committed, given a plan that lists the
/// same move again (an operator that had not read the `Done` yet), sends the commit again and
/// never serves the shard beside the destination (the model check's trace of the same, on the code
/// before the fix, is `the_restart_traces_the_model_found_stay_safe` in node/tests/model_check.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_source_never_serves_a_shard_it_handed_off_when_a_plan_lists_the_move_again() {
    use aether_core::protocol::{Op, Request};
    let bin = workspace_binary("aether-node");
    let nats = NatsServer::start();
    let prefix = "relist";
    let nc = nats.connect().await;
    let names = Names::new(prefix);
    let mut source = spawn_process(&bin, &nats.url(), prefix, "app-0", free_port());
    let _destination = spawn_process(&bin, &nats.url(), prefix, "app-1", free_port());
    let p1 = next_plan(None, &["app-0", "app-1"], SHARDS, 8);
    let reports = progress_log(&nc, prefix).await;
    publish(&nc, prefix, &p1, 5).await;
    let client = Client::new(nc.clone(), prefix);
    let (id, shard) = (0..)
        .map(|i| format!("c{i}"))
        .map(|id| {
            let s = aether_core::hash::shard_of(&id, SHARDS);
            (id, s)
        })
        .find(|(_, s)| p1.owner(*s) == Some("app-0"))
        .expect("an actor of app-0");
    client.add(&id, 1, "first".into()).await.expect("add");
    let p2 = move_one_shard(&p1, shard, "app-1");
    publish(&nc, prefix, &p2, 5).await;
    let done = |epoch: u64, node: &'static str| {
        let reports = reports.clone();
        move || {
            let reports = reports.clone();
            async move {
                reports.lock().expect("log").iter().any(|p| {
                    (p.epoch, p.shard, p.phase, p.node.as_str())
                        == (epoch, shard, MovePhase::Done, node)
                })
            }
        }
    };
    wait_for("the source's confirmed Done", T, done(p2.epoch, "app-0")).await;
    source.kill();
    let read = Request::new(ActorRef::new("counter", id.as_str()), Op::Read, None);
    wait_for("the server knows app-0 is gone", T, || async {
        client
            .request_once(names.node_requests("app-0"), &read)
            .await
            .is_err_and(|e| e.to_string().contains("no responders"))
    })
    .await;
    // The same move again, as an operator that had not read the Done would list it.
    let mut p3 = p2.clone();
    p3.epoch += 1;
    publish(&nc, prefix, &p3, 5).await;
    let _source = spawn_process(&bin, &nats.url(), prefix, "app-0", free_port());
    let value_at = |pod: &'static str| {
        let (client, read, subject) = (client.clone(), read.clone(), names.node_requests(pod));
        async move {
            let reply = client.request_once(subject, &read).await.ok()?;
            match reply.outcome {
                Outcome::Ok(ok) => ok.state["value"].as_i64(),
                Outcome::Error(_) => None,
            }
        }
    };
    wait_for("the restarted source answers", T, || async {
        value_at("app-0").await.is_some()
    })
    .await;
    for i in 0..5 {
        let before = value_at("app-0").await.expect("a read at the source");
        let add = Request::new(
            ActorRef::new("counter", id.as_str()),
            Op::Command {
                command: serde_json::json!({ "add": 1 }),
            },
            Some(format!("at-destination-{i}")),
        );
        let reply = client
            .request_once(names.node_requests("app-1"), &add)
            .await
            .expect("the destination answers");
        assert_eq!(counter_value(&reply).0, before + 1, "acknowledged");
        assert_eq!(
            value_at("app-0").await,
            Some(before + 1),
            "a read at the restarted source sees the destination's acknowledged append"
        );
    }
    wait_for("the move listed again is done", T, done(p3.epoch, "app-1")).await;
    assert!(
        !reports
            .lock()
            .expect("log")
            .iter()
            .any(|p| p.epoch == p3.epoch && p.phase == MovePhase::Transferring),
        "no second transfer"
    );
}
