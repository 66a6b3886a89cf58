//! Faults in the control loop around a move, on real `aether-node` processes and a real nats-server
//! (issue 14): a node restarted after a commit serves what it received, and a source killed between
//! its last ack and its commit, restarted in the same epoch, never has its first attempt's staged
//! copy committed.

use aether_core::hash::shard_of;
use aether_core::protocol::{
    ActorRef, ActorSnapshot, Bytes, Names, Op, Outcome, Progress, Reply, Request, Transfer,
    TransferAck, VERSION, decode, encode,
};
use aether_core::types::MovePhase;
use aether_tests::cluster::{ask, move_one_shard, next_plan, publish, spawn_process};
use aether_tests::{NatsServer, Process, free_port, http_get, wait_for, workspace_binary};
use futures::StreamExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);
const SHARDS: u32 = 16;

/// A node process and its HTTP port, started again under the same name and port.
struct Proc {
    name: &'static str,
    port: u16,
    process: Option<Process>,
}

impl Proc {
    fn start(url: &str, prefix: &str, name: &'static str) -> Self {
        let mut p = Self {
            name,
            port: free_port(),
            process: None,
        };
        p.restart(url, prefix);
        p
    }

    fn restart(&mut self, url: &str, prefix: &str) {
        let bin = workspace_binary("aether-node");
        self.process = Some(spawn_process(&bin, url, prefix, self.name, self.port));
    }

    fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    async fn ready(&self) {
        wait_for(&format!("{} ready", self.name), T, || async {
            matches!(http_get(self.port, "/readyz").await, Some((200, _)))
        })
        .await;
    }

    async fn epoch(&self) -> u64 {
        let Some((_, text)) = http_get(self.port, "/metrics").await else {
            return 0;
        };
        text.lines()
            .find_map(|l| l.strip_prefix("aether_node_plan_epoch "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// Every progress report published under `prefix`.
async fn reports(nc: &async_nats::Client, prefix: &str) -> Arc<Mutex<Vec<Progress>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut sub = nc
        .subscribe(Names::new(prefix).progress_subjects())
        .await
        .expect("subscribe");
    let sink = log.clone();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Ok(p) = decode::<Progress>(&m.payload) {
                sink.lock().expect("lock").push(p);
            }
        }
    });
    log
}

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
    let log = reports(&nc, prefix).await;
    let mut a = Proc::start(&nats.url(), prefix, "app-0");
    let mut b = Proc::start(&nats.url(), prefix, "app-1");
    a.ready().await;
    b.ready().await;
    let p1 = next_plan(None, &["app-0", "app-1"], SHARDS, 4);
    publish(&nc, prefix, &p1, 30).await;
    let shard = (0..SHARDS)
        .find(|&s| p1.owner(s) == Some("app-0"))
        .expect("app-0 owns a shard");
    let id = actor_in(shard);
    wait_for("the first plan served", T, || async {
        a.epoch().await == p1.epoch && b.epoch().await == p1.epoch
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
        restarted.ready().await;
        wait_for("the plan held again", T, || async {
            restarted.epoch().await == p2.epoch
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
async fn a_source_restarted_before_its_commit_never_has_its_old_attempt_committed() {
    let nats = NatsServer::start();
    let nc = nats.connect().await;
    let prefix = "attempt";
    let log = reports(&nc, prefix).await;
    let mut a = Proc::start(&nats.url(), prefix, "app-0");
    let b = Proc::start(&nats.url(), prefix, "app-1");
    a.ready().await;
    b.ready().await;
    let p1 = next_plan(None, &["app-0", "app-1"], SHARDS, 4);
    publish(&nc, prefix, &p1, 30).await;
    let shard = (0..SHARDS)
        .find(|&s| p1.owner(s) == Some("app-0"))
        .expect("app-0 owns a shard");
    let id = actor_in(shard);
    wait_for("the first plan served", T, || async {
        a.epoch().await == p1.epoch && b.epoch().await == p1.epoch
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
        b.epoch().await == p2.epoch
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
