//! Faults in the control loop around a move, on real `aether-node` processes and a real nats-server
//! (issue 14): a node restarted after a commit serves what it received; a source killed between
//! its last ack and its commit, restarted in the same epoch, never has its first attempt's staged
//! copy committed; a server of a 3-server cluster killed mid-rebalance under load loses nothing
//! acknowledged (streams and bucket with 3 replicas); and the operator's faults (module below).

use aether_core::hash::shard_of;
use aether_core::protocol::{
    ActorRef, ActorSnapshot, Bytes, Names, Op, Outcome, Progress, Reply, Request, Transfer,
    TransferAck, VERSION, decode, encode,
};
use aether_core::types::MovePhase;
use aether_tests::cluster::{NodeProcess, ask, move_one_shard, next_plan, progress_log, publish};
use aether_tests::{NatsServer, wait_for};
use futures::StreamExt;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);
const SHARDS: u32 = 16;

fn add(id: &str, n: i64, cmd: &str) -> Request {
    Request::new(
        ActorRef::new("counter", id),
        Op::Command {
            command: serde_json::json!({ "add": n }),
        },
        Some(cmd.to_owned()),
    )
}

fn read(id: &str) -> Request {
    Request::new(ActorRef::new("counter", id), Op::Read, None)
}

/// (value, version, node) of an ok reply; panics on an error.
fn ok(reply: &Reply) -> (i64, u64, String) {
    match &reply.outcome {
        Outcome::Ok(ok) => (
            ok.state["value"].as_i64().unwrap_or(i64::MIN),
            ok.version,
            ok.node.clone(),
        ),
        Outcome::Error(e) => panic!("error reply: {e:?}"),
    }
}

/// The final report (Done, Failed, Superseded) of every move of `plan`, read from the progress
/// stream once each has one.
async fn final_reports(
    js: &async_nats::jetstream::Context,
    names: &Names,
    plan: &aether_core::plan::Plan,
) -> Vec<(u32, Progress)> {
    let deadline = std::time::Instant::now() + T * 2;
    loop {
        let mut finals = Vec::new();
        let mut open = Vec::new();
        if let Ok(stream) = js.get_stream(names.progress_stream()).await {
            for m in &plan.moves {
                let last = stream
                    .get_last_raw_message_by_subject(&names.progress(plan.epoch, m.shard))
                    .await
                    .ok()
                    .and_then(|msg| decode::<Progress>(&msg.payload).ok());
                match last {
                    Some(p)
                        if !matches!(p.phase, MovePhase::Transferring | MovePhase::HandedOff) =>
                    {
                        finals.push((m.shard, p));
                    }
                    other => open.push((m.clone(), other)),
                }
            }
        }
        if finals.len() == plan.moves.len() {
            return finals;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "epoch {}: {} of {} moves ended; open: {open:?}",
            plan.epoch,
            finals.len(),
            plan.moves.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Records the stream holds on `subject`.
async fn records_of(stream: &mut async_nats::jetstream::stream::Stream, subject: &str) -> usize {
    let Ok(info) = stream.info_with_subjects(subject).await else {
        return 0;
    };
    let mut subjects = std::pin::pin!(info);
    let mut n = 0;
    while let Some(Ok((s, c))) = subjects.next().await {
        if s == subject {
            n = c;
        }
    }
    n
}

/// An actor id whose shard is `shard`.
fn actor_in(shard: u32) -> String {
    (0..)
        .map(|i| format!("acct-{i}"))
        .find(|a| shard_of(a, SHARDS) == shard)
        .expect("an id in every shard")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_after_a_commit_serves_the_shard_it_received() {
    let nats = NatsServer::start();
    let nc = nats.connect().await;
    let prefix = "restart";
    let log = progress_log(&nc, prefix).await;
    let mut a = NodeProcess::start(&nats.url(), prefix, "app-0");
    let mut b = NodeProcess::start(&nats.url(), prefix, "app-1");
    a.ready(T).await;
    b.ready(T).await;
    let p1 = next_plan(None, &["app-0", "app-1"], SHARDS, 4);
    publish(&nc, prefix, &p1, 30).await;
    let shard = (0..SHARDS)
        .find(|&s| p1.owner(s) == Some("app-0"))
        .expect("app-0 owns a shard");
    let id = actor_in(shard);
    wait_for("the first plan served", T, || async {
        a.settled_epoch().await == p1.epoch && b.settled_epoch().await == p1.epoch
    })
    .await;
    assert_eq!(ok(&ask(&nc, prefix, &add(&id, 5, "c1")).await).0, 5);

    // The shard moves app-0 -> app-1 and commits.
    let p2 = move_one_shard(&p1, shard, "app-1");
    publish(&nc, prefix, &p2, 30).await;
    wait_for("the move done by its source", T, || async {
        log.lock().expect("lock").iter().any(|p| {
            p.epoch == p2.epoch
                && p.shard == shard
                && p.node == "app-0"
                && p.phase == MovePhase::Done
        })
    })
    .await;
    let (value, version, node) = ok(&ask(&nc, prefix, &read(&id)).await);
    assert_eq!((value, version, node.as_str()), (5, 1, "app-1"));

    // The destination restarts, then the source: each reads which moves of its plan committed
    // before it acts on the plan, so neither routes the shard back, and the first request after
    // each is Ready is served by the new owner.
    for restarted in [&mut b, &mut a] {
        restarted.kill();
        restarted.restart(&nats.url(), prefix);
        restarted.ready(T).await;
        wait_for("the plan held again", T, || async {
            restarted.settled_epoch().await == p2.epoch
        })
        .await;
        for via in ["app-0", "app-1"] {
            // Asked of each node directly: one forward at most, no redirect, no bouncing.
            let msg = tokio::time::timeout(
                T,
                nc.request(
                    Names::new(prefix).node_requests(via),
                    encode(&read(&id)).expect("encodes").into(),
                ),
            )
            .await
            .expect("answered in time")
            .expect("a reply");
            let reply: Reply = decode(&msg.payload).expect("a reply");
            let (value, version, node) = ok(&reply);
            assert_eq!(
                (value, version, node.as_str()),
                (5, 1, "app-1"),
                "asked via {via} after {} restarted",
                restarted.name
            );
        }
    }
    let (value, version, _) = ok(&ask(&nc, prefix, &add(&id, 2, "c2")).await);
    assert_eq!((value, version), (7, 2), "writes go on at the new owner");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_of_an_r3_cluster_killed_mid_rebalance_loses_nothing_acknowledged() {
    use aether_node::client::{Client, run_load};
    use aether_tests::NatsCluster;
    use aether_tests::cluster::{TestNode, assert_nothing_acked_lost, node_config};
    let mut cluster = NatsCluster::start(3).await;
    let nc = cluster.connect().await;
    let prefix = "r3";
    let names = Names::new(prefix);
    let js = async_nats::jetstream::new(nc.clone());
    aether_nats::plans::open_bucket(&js, &names, 3)
        .await
        .expect("plan bucket");
    let start = |name: &str| {
        let mut cfg = node_config(&cluster.urls(), prefix, name);
        cfg.stream_replicas = 3;
        TestNode::start_with(cfg)
    };
    let mut nodes = vec![start("app-0").await, start("app-1").await];
    for stream in [
        names.event_stream(),
        names.progress_stream(),
        format!("KV_{}", names.plan_bucket()),
    ] {
        let info = js
            .get_stream(&stream)
            .await
            .expect("stream")
            .info()
            .await
            .expect("info")
            .clone();
        assert_eq!(info.config.num_replicas, 3, "{stream}");
    }
    let p1 = next_plan(None, &["app-0", "app-1"], SHARDS * 4, 8);
    publish(&nc, prefix, &p1, 30).await;
    for n in &nodes {
        wait_for("the first plan", T, || async {
            n.shared.settled_at(p1.epoch)
        })
        .await;
    }
    let client = Client::new(nc.clone(), prefix);
    let warm = run_load(&client, "acct", 200, 400, 8, T).await;
    assert_eq!(warm.errors, 0);
    let load = {
        let client = client.clone();
        tokio::spawn(async move { run_load(&client, "acct", 200, 3_000, 8, T * 2).await })
    };
    nodes.push(start("app-2").await);
    let p2 = next_plan(Some(&p1), &["app-0", "app-1", "app-2"], SHARDS * 4, 8);
    publish(&nc, prefix, &p2, 30).await;
    // A server dies mid-rebalance, under load.
    cluster.kill(0);
    // Every move ends; a failed one (a chunk lost with the server) is retried in a newer plan, as
    // the operator does.
    let mut plan = p2.clone();
    let mut outcomes = Vec::new();
    for _ in 0..5 {
        let finals = final_reports(&js, &names, &plan).await;
        let failed: Vec<u32> = finals
            .iter()
            .filter(|(_, p)| p.phase != MovePhase::Done)
            .map(|(shard, _)| *shard)
            .collect();
        outcomes.push((plan.epoch, finals.len(), failed.len()));
        if failed.is_empty() {
            break;
        }
        let mut retry = plan.clone();
        retry.epoch += 1;
        retry.moves.retain(|m| failed.contains(&m.shard));
        publish(&nc, prefix, &retry, 30).await;
        plan = retry;
    }
    eprintln!("(epoch, moves, not done): {outcomes:?}");
    assert!(
        outcomes.last().is_some_and(|o| o.2 == 0),
        "every move done in the end: {outcomes:?}"
    );
    let report = load.await.expect("load");
    assert_eq!(report.errors, 0, "every command acknowledged in the end");
    let mut acked = warm.acked;
    for (k, v) in report.acked {
        *acked.entry(k).or_default() += v;
    }
    assert_nothing_acked_lost(SHARDS * 4, &nc, prefix, &client, &acked, true).await;
    for m in &p2.moves {
        let actor = (0..200)
            .map(|i| format!("acct-{i}"))
            .find(|a| shard_of(a, SHARDS * 4) == m.shard);
        if let Some(actor) = actor {
            let (_, _, node) = ok(&client.read("counter", &actor).await.expect("read"));
            assert_eq!(node, m.to, "{actor} served by its new owner");
        }
    }
    cluster.restart(0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keeps_the_last_snapshot_and_a_gap_in_the_log_is_an_error() {
    let nats = NatsServer::start();
    let nc = nats.connect().await;
    let prefix = "compact";
    let names = Names::new(prefix);
    let mut node = NodeProcess::start_with(&nats.url(), prefix, "app-0", &["--compact-events"]);
    node.ready(T).await;
    let p1 = next_plan(None, &["app-0"], SHARDS, 4);
    publish(&nc, prefix, &p1, 30).await;
    wait_for("the plan held", T, || async {
        node.settled_epoch().await == p1.epoch
    })
    .await;
    // 70 records: snapshots in records 32 and 64; the log keeps 64..=70.
    for i in 1..=70 {
        let (value, version, _) = ok(&ask(&nc, prefix, &add("kept", 1, &format!("k{i}"))).await);
        assert_eq!((value, version), (i, i as u64));
    }
    let subject = names.actor_subject(shard_of("kept", SHARDS), &ActorRef::new("counter", "kept"));
    let js = async_nats::jetstream::new(nc.clone());
    let mut stream = js.get_stream(names.event_stream()).await.expect("stream");
    let deadline = std::time::Instant::now() + T;
    while records_of(&mut stream, &subject).await != 7 {
        assert!(
            std::time::Instant::now() < deadline,
            "compacted to 7 records"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // 40 records of another actor, then one of them (record 35, after its snapshot 32) deleted.
    for i in 1..=40 {
        ok(&ask(&nc, prefix, &add("gap", 1, &format!("g{i}"))).await);
    }
    let last = stream
        .get_last_raw_message_by_subject(
            &names.actor_subject(shard_of("gap", SHARDS), &ActorRef::new("counter", "gap")),
        )
        .await
        .expect("last record");
    assert!(
        stream
            .delete_message(last.sequence - 5)
            .await
            .expect("delete")
    );
    // Reloaded from the log by a restarted node: the compacted actor is whole, the gap is an error.
    node.kill();
    node.restart(&nats.url(), prefix);
    node.ready(T).await;
    let (value, version, _) = ok(&ask(&nc, prefix, &read("kept")).await);
    assert_eq!((value, version), (70, 70), "rebuilt from its last snapshot");
    let (value, version, _) = ok(&ask(&nc, prefix, &add("kept", 1, "k71")).await);
    assert_eq!((value, version), (71, 71));
    let reply = ask(&nc, prefix, &read("gap")).await;
    match &reply.outcome {
        Outcome::Error(e) => assert!(e.message.contains("gap"), "{e:?}"),
        Outcome::Ok(ok) => panic!("a log with a gap served a state: {ok:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_to_a_stuck_destination_stops_at_once_when_a_newer_plan_comes() {
    use aether_tests::cluster::start_cluster;
    let nats = NatsServer::start();
    let nc = nats.connect().await;
    let prefix = "stuck";
    let log = progress_log(&nc, prefix).await;
    let (_nodes, p1) =
        start_cluster(&nats.url(), &nc, prefix, &["app-0", "app-1"], SHARDS, 4, 30).await;
    let shard = (0..SHARDS)
        .find(|&s| p1.owner(s) == Some("app-0"))
        .expect("app-0 owns a shard");
    let id = actor_in(shard);
    assert_eq!(ok(&ask(&nc, prefix, &add(&id, 5, "c1")).await).0, 5);
    // app-9 takes transfers and never answers (it hangs): the move pauses the shard on app-0.
    let _stuck = nc
        .subscribe(Names::new(prefix).node_migrate("app-9"))
        .await
        .expect("subscribe");
    nc.flush().await.expect("flush");
    let p2 = next_plan(Some(&p1), &["app-0", "app-1", "app-9"], SHARDS, 4);
    assert!(
        p2.moves.iter().any(|m| m.to == "app-9"),
        "moves to app-9: {:?}",
        p2.moves
    );
    let to_nine: Vec<u32> = p2
        .moves
        .iter()
        .filter(|m| m.to == "app-9")
        .map(|m| m.shard)
        .collect();
    publish(&nc, prefix, &p2, 30).await;
    wait_for("the moves to app-9 transferring", T, || async {
        let log = log.lock().expect("lock");
        to_nine.iter().all(|s| {
            log.iter()
                .any(|p| p.epoch == p2.epoch && p.shard == *s && p.phase == MovePhase::Transferring)
        })
    })
    .await;
    // app-9 is gone from the next plan: the moves stop at once (before their 5 s chunk timeout),
    // each reported Superseded, and the shards are served by their sources again.
    let p3 = next_plan(Some(&p2), &["app-0", "app-1"], SHARDS, 4);
    publish(&nc, prefix, &p3, 30).await;
    wait_for("every move to app-9 superseded", T, || async {
        let log = log.lock().expect("lock");
        to_nine.iter().all(|s| {
            log.iter()
                .any(|p| p.epoch == p2.epoch && p.shard == *s && p.phase == MovePhase::Superseded)
        })
    })
    .await;
    let log = log.lock().expect("lock").clone();
    assert!(
        !log.iter()
            .any(|p| p.epoch == p2.epoch && p.phase == MovePhase::Failed),
        "stopped by the newer plan, not by a timeout: {log:?}"
    );
    if let Some(s) = to_nine.first() {
        let id = actor_in(*s);
        let reply = ask(&nc, prefix, &read(&id)).await;
        assert!(matches!(reply.outcome, Outcome::Ok(_)), "{reply:?}");
    }
    let (value, _, _) = ok(&ask(&nc, prefix, &add(&id, 1, "c2")).await);
    assert_eq!(value, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_restarted_before_its_commit_never_has_its_old_attempt_committed() {
    let nats = NatsServer::start();
    let nc = nats.connect().await;
    let prefix = "attempt";
    let log = progress_log(&nc, prefix).await;
    let mut a = NodeProcess::start(&nats.url(), prefix, "app-0");
    let b = NodeProcess::start(&nats.url(), prefix, "app-1");
    a.ready(T).await;
    b.ready(T).await;
    let p1 = next_plan(None, &["app-0", "app-1"], SHARDS, 4);
    publish(&nc, prefix, &p1, 30).await;
    let shard = (0..SHARDS)
        .find(|&s| p1.owner(s) == Some("app-0"))
        .expect("app-0 owns a shard");
    let id = actor_in(shard);
    wait_for("the first plan served", T, || async {
        a.settled_epoch().await == p1.epoch && b.settled_epoch().await == p1.epoch
    })
    .await;
    assert_eq!(ok(&ask(&nc, prefix, &add(&id, 5, "c1")).await).0, 5);

    // app-0 dies; the plan moves its shard to app-1. What app-0's first attempt sent before it
    // died (its last chunk, acked, no commit) is played here: a copy marked with value 999, so a
    // read shows which copy app-1 serves.
    a.kill();
    let p2 = move_one_shard(&p1, shard, "app-1");
    publish(&nc, prefix, &p2, 30).await;
    wait_for("app-1 holds the plan", T, || async {
        b.settled_epoch().await == p2.epoch
    })
    .await;
    let first = Transfer {
        v: VERSION,
        epoch: p2.epoch,
        attempt: 1,
        shard,
        from: "app-0".into(),
        chunk: 0,
        last: true,
        actors: vec![ActorSnapshot {
            actor: ActorRef::new("counter", id.as_str()),
            version: 1,
            seq: 1,
            state: Bytes(br#"{"state":{"value":999},"recent":[],"base":0}"#.to_vec()),
        }],
        commit: false,
        copy: false,
    };
    let msg = tokio::time::timeout(
        T,
        nc.request(
            Names::new(prefix).node_migrate("app-1"),
            encode(&first).expect("encodes").into(),
        ),
    )
    .await
    .expect("answered")
    .expect("a reply");
    let ack: TransferAck = decode(&msg.payload).expect("an ack");
    assert_eq!(ack.error, None, "the first attempt's chunk is staged");

    // app-0 restarts within the same epoch: its move runs again (nothing reported it done), as
    // a new attempt, whose chunks replace the staged copy; the commit serves the log's state.
    a.restart(&nats.url(), prefix);
    wait_for("the move done by its source", T, || async {
        log.lock().expect("lock").iter().any(|p| {
            p.epoch == p2.epoch
                && p.shard == shard
                && p.node == "app-0"
                && p.phase == MovePhase::Done
        })
    })
    .await;
    let (value, version, node) = ok(&ask(&nc, prefix, &read(&id)).await);
    assert_eq!(
        (value, version, node.as_str()),
        (5, 1, "app-1"),
        "the destination serves the log's state, not the first attempt's copy"
    );
    // A chunk of yet another attempt after the commit is refused: what is served stays.
    let mut late = first.clone();
    late.attempt = 3;
    let msg = nc
        .request(
            Names::new(prefix).node_migrate("app-1"),
            encode(&late).expect("encodes").into(),
        )
        .await
        .expect("a reply");
    let ack: TransferAck = decode(&msg.payload).expect("an ack");
    assert!(ack.error.is_some(), "refused after the commit: {ack:?}");
    let (value, _, _) = ok(&ask(&nc, prefix, &read(&id)).await);
    assert_eq!(value, 5);
}

mod operator {
    use super::T;
    use aether_core::crd::ShardPlan;
    use aether_core::protocol::{Names, PlanMessage};
    use aether_core::types::MovePhase;
    use aether_tests::cluster::{ProgressLog, progress_log};
    use aether_tests::cluster::{TestNode, next_plan};
    use aether_tests::k8s::{ApiServer, add_ready_pod};
    use aether_tests::operator::{
        condition, create_statefulset, degraded, install_crd, ready, shardplan as shardplan_on,
        spawn_operator as spawn_operator_named, status_of, stored_plan,
    };
    use aether_tests::{NatsServer, Process, free_port, wait_for};
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::api::events::v1::Event;
    use kube::Api;
    use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
    use serde_json::json;
    use std::process::Command;
    use std::sync::{Arc, Mutex};

    const PREFIX: &str = "ctl";

    fn spawn_operator(api: &ApiServer, port: u16) -> Process {
        spawn_operator_named(api, port, "operator-0")
    }

    fn shardplan(name: &str, shards: u32, url: &str) -> ShardPlan {
        shardplan_on(name, shards, url, PREFIX)
    }

    /// Waits until the source of each of `moves` (shard, source) reported it done in `epoch`; on
    /// timeout, says what each unfinished move's reports were.
    async fn every_move_done(log: &ProgressLog, epoch: u64, moves: &[(u32, String)]) {
        let unfinished = || {
            let log = log.lock().expect("lock");
            moves
                .iter()
                .filter(|(shard, from)| {
                    !log.iter().any(|p| {
                        p.epoch == epoch
                            && p.shard == *shard
                            && &p.node == from
                            && p.phase == MovePhase::Done
                    })
                })
                .map(|(shard, from)| {
                    let seen: Vec<String> = log
                        .iter()
                        .filter(|p| p.shard == *shard)
                        .map(|p| format!("{}@{} {:?} {:?}", p.node, p.epoch, p.phase, p.error))
                        .collect();
                    format!("shard {shard} from {from}: {seen:?}")
                })
                .collect::<Vec<_>>()
        };
        let deadline = std::time::Instant::now() + T;
        loop {
            let left = unfinished();
            if left.is_empty() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out after {T:?} waiting for every move of epoch {epoch} reported done by its source; not done: {left:#?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    async fn held(nc: &async_nats::Client) -> Option<PlanMessage> {
        stored_plan(nc, PREFIX).await
    }

    /// The epoch of every plan the bucket takes from now on, in the order it took them (0 for a
    /// watch error or a value that is not a plan).
    async fn plans_published(nc: &async_nats::Client) -> Arc<Mutex<Vec<u64>>> {
        use futures::StreamExt;
        let kv = async_nats::jetstream::new(nc.clone())
            .get_key_value(Names::new(PREFIX).plan_bucket())
            .await
            .expect("the plan bucket");
        let mut updates = kv.watch(Names::PLAN_KEY).await.expect("watch the plan");
        let published = Arc::new(Mutex::new(Vec::new()));
        let into = published.clone();
        tokio::spawn(async move {
            // An error or a value that is not a plan records epoch 0, which fails the order check.
            while let Some(entry) = updates.next().await {
                let epoch = entry.ok().map_or(0, |e| {
                    aether_core::protocol::decode::<PlanMessage>(&e.value).map_or(0, |p| p.epoch)
                });
                into.lock().expect("lock").push(epoch);
            }
        });
        published
    }

    async fn warnings(client: &kube::Client, reason: &str) -> Vec<String> {
        Api::<Event>::namespaced(client.clone(), "default")
            .list(&Default::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .map(|e| e.note.unwrap_or_default())
            .collect()
    }

    /// The operator against a real kube-apiserver, nodes on a real nats-server: a stale high epoch
    /// in the bucket is overtaken; the operator frozen and killed right after publishing a plan, its
    /// moves reported while it is gone, converges once restarted without a new epoch (it read the
    /// reports, it did not time them out); a second ShardPlan on the prefix, and one with another
    /// shard count after the first is deleted, are Degraded saying what to do; a ShardPlan created
    /// again on the prefix publishes above the epoch its bucket holds; a leader frozen mid-move
    /// past its Lease is followed by a standby that converges without a new epoch, and once it
    /// resumes (two operators both believing they lead, a pod leaving meanwhile) it stops, the
    /// plans stay monotonic and the status names the bucket's plan (a status decided from an older
    /// read conflicts instead of being written back over the new leader's).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_operator_converges_through_restarts_stale_epochs_and_shared_prefixes() {
        let api = ApiServer::start().await;
        let client = api.client().await;
        let nats = NatsServer::start();
        let nc = nats.connect().await;
        let log = progress_log(&nc, PREFIX).await;
        install_crd(&client, "default").await;
        let plans: Api<ShardPlan> = Api::namespaced(client.clone(), "default");
        let sts = create_statefulset(&client, "default", 3).await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let mut nodes = Vec::new();
        for name in ["app-0", "app-1"] {
            // The sidecar first: a pod is Ready only once its sidecar is subscribed.
            nodes.push(TestNode::start(&nats.url(), PREFIX, name).await);
            add_ready_pod(&pods, &sts, name).await;
        }

        // Someone wrote epoch 50 to the bucket (a plan the nodes would follow).
        let mut rogue = next_plan(None, &["app-0"], 64, 8);
        rogue.epoch = 50;
        let js = async_nats::jetstream::new(nc.clone());
        let bucket = aether_nats::plans::open_bucket(&js, &Names::new(PREFIX), 1)
            .await
            .expect("bucket");
        aether_nats::plans::publish(&bucket, &PlanMessage::new(&rogue, 4, 30))
            .await
            .expect("rogue plan");
        let mut operator = spawn_operator(&api, free_port());
        plans
            .create(
                &PostParams::default(),
                &shardplan("actors", 64, &nats.url()),
            )
            .await
            .expect("ShardPlan");
        wait_for("epoch 51 published above the bucket, Ready", T, || async {
            let sp_ok = plans
                .get("actors")
                .await
                .is_ok_and(|sp| status_of(&sp).epoch == 51 && ready(&sp));
            sp_ok
                && held(&nc)
                    .await
                    .is_some_and(|p| p.epoch == 51 && p.owner.is_some())
        })
        .await;
        for n in &nodes {
            wait_for("nodes on epoch 51", T, || async { n.shared.settled_at(51) }).await;
        }
        wait_for("an Event saying why", T, || async {
            warnings(&client, "EpochAdvanced")
                .await
                .iter()
                .any(|n| n.contains("epoch 50"))
        })
        .await;
        // A status decided from an older read (an operator paused mid-reconcile) is refused, not
        // written over the newer one.
        let read = plans.get("actors").await.expect("get");
        let mut older = status_of(&read);
        older.epoch = 1;
        plans
            .patch_metadata(
                "actors",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}})),
            )
            .await
            .expect("label");
        let refused = aether_operator::controller::write_status(
            &client,
            "default",
            "actors",
            read.metadata.resource_version.clone(),
            &older,
        )
        .await;
        assert!(
            matches!(&refused, Err(aether_operator::controller::Error::Kube(kube::Error::Api(s))) if s.code == 409),
            "a stale status write conflicts: {refused:?}"
        );
        assert_eq!(
            status_of(&plans.get("actors").await.expect("get")).epoch,
            51
        );

        // A scale-up; the operator is frozen as soon as the plan is in NATS (its status lists the
        // moves, nothing more), the moves finish while it is frozen, then it is killed.
        // The sidecar first: a pod is Ready only once its sidecar is subscribed.
        nodes.push(TestNode::start(&nats.url(), PREFIX, "app-2").await);
        add_ready_pod(&pods, &sts, "app-2").await;
        wait_for("epoch 52 in NATS", T, || async {
            held(&nc).await.is_some_and(|p| p.epoch == 52)
        })
        .await;
        let pid = operator.child.id().to_string();
        let stopped = Command::new("kill").args(["-STOP", &pid]).status();
        assert!(stopped.is_ok_and(|s| s.success()), "SIGSTOP the operator");
        let frozen = status_of(&plans.get("actors").await.expect("get"));
        assert_eq!(frozen.epoch, 52);
        assert!(
            frozen.moving > 0,
            "the status still lists the moves: {frozen:?}"
        );
        let moves: Vec<(u32, String)> = frozen
            .moves
            .iter()
            .map(|m| (m.shard, m.from.clone().unwrap_or_default()))
            .collect();
        every_move_done(&log, 52, &moves).await;
        operator.kill();
        let op_port = free_port();
        let mut leader = spawn_operator(&api, op_port);
        wait_for("Ready again at epoch 52, nothing moving", T, || async {
            plans.get("actors").await.is_ok_and(|sp| ready(&sp))
        })
        .await;
        let sp = plans.get("actors").await.expect("get");
        assert_eq!(
            status_of(&sp).epoch,
            52,
            "the reports were read, no move timed out or was retried"
        );

        // A second ShardPlan on the same prefix is Degraded; the first keeps its plan.
        plans
            .create(&PostParams::default(), &shardplan("copy", 64, &nats.url()))
            .await
            .expect("ShardPlan");
        wait_for(
            "the copy Degraded: PrefixInUse naming the first",
            T,
            || async {
                plans
                    .get("copy")
                    .await
                    .is_ok_and(|sp| degraded(&sp, "PrefixInUse", "default/actors"))
            },
        )
        .await;
        assert!(held(&nc).await.is_some_and(|p| p.epoch == 52));
        assert!(plans.get("actors").await.is_ok_and(|sp| ready(&sp)));
        plans
            .delete("copy", &DeleteParams::default())
            .await
            .expect("delete");

        // Deleted and created again on the prefix: with another shard count it is Degraded (the
        // actors are placed by 64 shards); with the same, it publishes above the bucket's epoch.
        plans
            .delete("actors", &DeleteParams::default())
            .await
            .expect("delete");
        plans
            .create(
                &PostParams::default(),
                &shardplan("wider", 128, &nats.url()),
            )
            .await
            .expect("ShardPlan");
        wait_for("ShardCountMismatch", T, || async {
            plans.get("wider").await.is_ok_and(|sp| {
                condition(&sp, "Degraded")
                    .is_some_and(|c| c.1 == "ShardCountMismatch" && c.2.contains("64"))
            })
        })
        .await;
        assert!(
            held(&nc)
                .await
                .is_some_and(|p| p.epoch == 52 && p.shards == 64)
        );
        plans
            .delete("wider", &DeleteParams::default())
            .await
            .expect("delete");
        plans
            .create(&PostParams::default(), &shardplan("again", 64, &nats.url()))
            .await
            .expect("ShardPlan");
        wait_for("the new ShardPlan Ready above epoch 52", T, || async {
            let sp_ok = plans
                .get("again")
                .await
                .is_ok_and(|sp| status_of(&sp).epoch == 53 && ready(&sp));
            sp_ok && held(&nc).await.is_some_and(|p| p.epoch == 53)
        })
        .await;
        for n in &nodes {
            wait_for("nodes on epoch 53", T, || async { n.shared.settled_at(53) }).await;
        }

        // 65,536 shards, 2 members -> 3: a third of the shards move. The status (grouped moves)
        // fits etcd and the plan (grouped moves) fits NATS's payload; both are written.
        let readiness =
            |ready: &str| json!({"status": {"conditions": [{"type": "Ready", "status": ready}]}});
        pods.patch_status(
            "app-2",
            &PatchParams::default(),
            &Patch::Merge(&readiness("False")),
        )
        .await
        .expect("pod status");
        plans
            .create(
                &PostParams::default(),
                &shardplan_on("big", 65_536, &nats.url(), "big"),
            )
            .await
            .expect("ShardPlan");
        wait_for("65,536 shards on 2 members", T, || async {
            plans
                .get("big")
                .await
                .is_ok_and(|sp| status_of(&sp).member_count == 2 && ready(&sp))
        })
        .await;
        pods.patch_status(
            "app-2",
            &PatchParams::default(),
            &Patch::Merge(&readiness("True")),
        )
        .await
        .expect("pod status");
        let deadline = std::time::Instant::now() + T;
        loop {
            let s = status_of(&plans.get("big").await.expect("get"));
            let p = stored_plan(&nc, "big").await;
            let in_nats = p.as_ref().map(|p| (p.epoch, p.moves.len()));
            if s.epoch == 2
                && s.moving > 20_000
                && s.member_count == 3
                && in_nats.is_some_and(|(e, n)| e == 2 && n > 20_000)
            {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "a third of 65,536 shards planned to move: status epoch {} moving {} members {} {:?}; NATS {in_nats:?}",
                s.epoch,
                s.moving,
                s.member_count,
                s.conditions
                    .iter()
                    .map(|c| format!("{} {} {}", c.type_, c.reason, c.message))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        plans
            .delete("big", &DeleteParams::default())
            .await
            .expect("delete");

        // One ShardPlan's NATS is its own problem, not the operator's: a ShardPlan whose NATS
        // refuses connections is Degraded `NatsUnreachable`, counted in /metrics; the operator
        // stays Ready, and neither endpoint (which any pod can reach) names it.
        let metrics = || async {
            aether_tests::http_get(op_port, "/metrics")
                .await
                .map(|(_, body)| body)
                .unwrap_or_default()
        };
        let nowhere = shardplan_on("nowhere", 64, "nats://127.0.0.1:1", "nowhere");
        plans
            .create(&PostParams::default(), &nowhere)
            .await
            .expect("ShardPlan");
        wait_for("nowhere Degraded NatsUnreachable", T, || async {
            plans
                .get("nowhere")
                .await
                .is_ok_and(|sp| degraded(&sp, "NatsUnreachable", "127.0.0.1:1"))
        })
        .await;
        wait_for("the unreachable ShardPlan counted", T, || async {
            metrics()
                .await
                .contains("aether_operator_shardplans_nats_unreachable 1")
        })
        .await;
        let ready_says = aether_tests::http_get(op_port, "/readyz").await;
        assert!(
            matches!(&ready_says, Some((200, _))),
            "the operator stays Ready: {ready_says:?}"
        );
        let said = format!("{ready_says:?}{}", metrics().await);
        for name in ["nowhere", "again", "default/"] {
            assert!(!said.contains(name), "the endpoints name {name:?}: {said}");
        }
        plans
            .delete("nowhere", &DeleteParams::default())
            .await
            .expect("delete");
        wait_for("the deleted ShardPlan no longer counted", T, || async {
            metrics()
                .await
                .contains("aether_operator_shardplans_nats_unreachable 0")
        })
        .await;

        // Leader failover mid-rebalance: a standby waits for the Lease; the leader is frozen as
        // soon as the plan is in NATS, its moves are reported while it is frozen; the standby
        // takes the Lease when it expires, reads the reports and converges without a new epoch.
        // Then the old leader resumes still believing it leads (two operators both leading until
        // it finds the Lease taken): it stops, and the plans stay monotonic, no epoch published
        // twice or lost, the status on the bucket's plan.
        let published = plans_published(&nc).await;
        let _standby = spawn_operator_named(&api, free_port(), "operator-1");
        let before = status_of(&plans.get("again").await.expect("get")).epoch;
        // The sidecar first: a pod is Ready only once its sidecar is subscribed.
        nodes.push(TestNode::start(&nats.url(), PREFIX, "app-3").await);
        add_ready_pod(&pods, &sts, "app-3").await;
        let next = before + 1;
        wait_for("the next epoch in NATS", T, || async {
            held(&nc).await.is_some_and(|p| p.epoch == next)
        })
        .await;
        let pid = leader.child.id().to_string();
        let stopped = Command::new("kill").args(["-STOP", &pid]).status();
        assert!(stopped.is_ok_and(|s| s.success()), "SIGSTOP the leader");
        let frozen = status_of(&plans.get("again").await.expect("get"));
        assert_eq!(frozen.epoch, next);
        assert!(
            frozen.moving > 0,
            "moves in flight at the failover: {frozen:?}"
        );
        let moves: Vec<(u32, String)> = frozen
            .moves
            .iter()
            .map(|m| (m.shard, m.from.clone().unwrap_or_default()))
            .collect();
        every_move_done(&log, next, &moves).await;
        wait_for("the standby leads and converges", T * 2, || async {
            plans
                .get("again")
                .await
                .is_ok_and(|sp| ready(&sp) && status_of(&sp).member_count == 4)
        })
        .await;
        assert_eq!(
            status_of(&plans.get("again").await.expect("get")).epoch,
            next,
            "the standby read the reports: no move timed out or was retried"
        );
        let resumed = Command::new("kill").args(["-CONT", &pid]).status();
        assert!(resumed.is_ok_and(|s| s.success()), "SIGCONT the old leader");
        // A change for both to see at once: a pod leaves.
        pods.delete("app-3", &DeleteParams::default())
            .await
            .expect("delete app-3");
        let deadline = std::time::Instant::now() + T;
        while leader.child.try_wait().ok().flatten().is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "the old leader still runs {T:?} after it resumed without the Lease"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        wait_for("converged on 3 members", T, || async {
            plans
                .get("again")
                .await
                .is_ok_and(|sp| ready(&sp) && status_of(&sp).member_count == 3)
        })
        .await;
        let held_now = held(&nc).await.map(|p| p.epoch);
        wait_for("the watch has seen the bucket's plan", T, || async {
            published.lock().expect("lock").last().copied() == held_now
        })
        .await;
        let epochs = published.lock().expect("lock").clone();
        assert!(
            epochs.windows(2).all(|w| w[0] < w[1]) && epochs.first() == Some(&next),
            "plans published since the failover, in order: {epochs:?}"
        );
        assert_eq!(
            Some(status_of(&plans.get("again").await.expect("get")).epoch),
            held_now,
            "the status describes the bucket's plan; published: {epochs:?}"
        );

        // A retry never rolls back transfers in flight: app-8 takes chunks and never answers (its
        // moves transfer until their 5 s chunk timeout), app-9 has no sidecar (its moves fail at
        // once, due for a retry after 1 s). The retry plan comes only once no move transfers,
        // so no move of this plan is superseded.
        let _hung = nc
            .subscribe(Names::new(PREFIX).node_migrate("app-8"))
            .await
            .expect("subscribe");
        nc.flush().await.expect("flush");
        add_ready_pod(&pods, &sts, "app-8").await;
        add_ready_pod(&pods, &sts, "app-9").await;
        // The operator may plan app-8 alone first and both after: the plan under test is the
        // first with 5 members (app-0, app-1, app-2, app-8, app-9; app-3 left above).
        let deadline = std::time::Instant::now() + T;
        let planned = loop {
            let sp = plans.get("again").await.expect("get");
            let s = status_of(&sp);
            if s.epoch > next && s.member_count == 5 {
                break s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "a plan for 5 members after epoch {next}: {s:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        let this = planned.epoch;
        let to = |pod: &str| -> Vec<u32> {
            planned
                .moves
                .iter()
                .filter(|m| m.to == pod)
                .map(|m| m.shard)
                .collect()
        };
        let (hung, absent) = (to("app-8"), to("app-9"));
        assert!(
            !hung.is_empty() && !absent.is_empty(),
            "{:?}",
            planned.moves
        );
        wait_for("the retry plan", T, || async {
            held(&nc).await.is_some_and(|p| p.epoch > this)
        })
        .await;
        let log = log.lock().expect("lock").clone();
        let last = |shard: u32| {
            log.iter()
                .filter(|p| p.epoch == this && p.shard == shard)
                .map(|p| p.phase)
                .next_back()
        };
        for shard in hung.iter().chain(&absent) {
            assert_eq!(
                last(*shard),
                Some(MovePhase::Failed),
                "shard {shard}: every move of epoch {this} ended before the retry, none superseded: {:?}",
                log.iter()
                    .filter(|p| p.shard == *shard && p.epoch >= this)
                    .collect::<Vec<_>>()
            );
        }
        assert!(
            !log.iter()
                .any(|p| p.epoch == this && p.phase == MovePhase::Superseded),
            "no transfer rolled back by the retry"
        );
    }
}
