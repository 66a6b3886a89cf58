//! A client's retry of an app kind's command that its actor no longer remembers (more than 64
//! commands later) but JetStream's duplicate window still holds: answered from the log with the
//! first reply, without calling the app's decide (docs/PROTOCOL.md "Requests"), before and after
//! a restart of the node. And the question the node asks the stream for that
//! (`EventStore::seen`), against a single nats-server and a cluster of three: it answers and
//! stores nothing, and leaves the id free for the command's own append.

use super::app_protocol::{command, node, node_again};
use aether_core::protocol::{ActorRef, Names, Op, Outcome, Reply, Request};
use aether_node::metrics::Failure;
use aether_node::store::{EventStore, RECENT_COMMANDS, Record};
use aether_tests::app::App;
use aether_tests::cluster::ask;
use aether_tests::{NatsCluster, NatsServer, wait_for};
use serde_json::{Value, json};
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

async fn asks_and_stores_nothing(nc: async_nats::Client, replicas: usize) {
    let js = async_nats::jetstream::new(nc);
    let store = EventStore::open(js, Names::new("seen"), replicas)
        .await
        .expect("event stream");
    let subject = "seen.ev.0.counter.a";
    let record =
        |cmd: &str, version| Record::new(Some(cmd.into()), vec![json!({"n": 1})], version, 0);
    let first = store
        .append(subject, 0, &record("c-1", 1))
        .await
        .expect("append");
    assert_eq!(
        store.seen(subject, "c-1").await.expect("asked"),
        Some(first)
    );
    assert_eq!(store.seen(subject, "c-2").await.expect("asked"), None);
    assert_eq!(store.seen(subject, "c-2").await.expect("asked again"), None);
    // The same id on another actor's subject is another command.
    assert_eq!(
        store
            .seen("seen.ev.0.counter.b", "c-1")
            .await
            .expect("asked"),
        None
    );
    let mut stream = store.stream().clone();
    let info = stream.info().await.expect("info");
    assert_eq!(info.state.messages, 1, "nothing stored by the questions");
    let second = store
        .append(subject, first, &record("c-2", 2))
        .await
        .expect("the id asked about is still free for its append");
    assert_eq!(
        store.seen(subject, "c-2").await.expect("asked"),
        Some(second)
    );
    assert_eq!(store.duplicate_window(), Duration::from_secs(120));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_says_whether_it_holds_a_command_and_stores_nothing() {
    let nats = NatsServer::start();
    asks_and_stores_nothing(nats.connect().await, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_stream_says_whether_it_holds_a_command_and_stores_nothing() {
    let cluster = NatsCluster::start(3).await;
    asks_and_stores_nothing(cluster.connect().await, 3).await;
}

fn answer(r: &Reply) -> (Option<Value>, Value) {
    match &r.outcome {
        Outcome::Ok(ok) => (ok.reply.clone(), ok.state["balance"].clone()),
        Outcome::Error(e) => panic!("error reply: {e:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_the_actor_forgot_is_answered_from_the_log_without_calling_decide() {
    let nats = NatsServer::start();
    let nc = nats.connect().await;
    let bank = App::start("examples/bank/app.py").await;
    let (mut n, _) = node(&nats, "forgot", &bank.url()).await;
    let deposit = |n: i64, id: &str| command("account", "alice", json!({ "deposit": n }), id);
    let first = answer(&ask(&nc, "forgot", &deposit(100, "d-1")).await);
    assert_eq!(first, (Some(json!({"balance": 100})), json!(100)));
    let newer = RECENT_COMMANDS as i64;
    for i in 0..newer {
        answer(&ask(&nc, "forgot", &deposit(1, &format!("n-{i}"))).await);
    }
    let decides = n.metrics.app_calls_of("decide");
    let again = answer(&ask(&nc, "forgot", &deposit(100, "d-1")).await);
    assert_eq!(
        again,
        (Some(json!({"balance": 100})), json!(100 + newer)),
        "the first reply, the state now, applied once"
    );
    assert_eq!(
        n.metrics.app_calls_of("decide"),
        decides,
        "decide not called"
    );
    assert_eq!(n.metrics.failures_of(Failure::Duplicate), 1);
    // A new command is still decided (the stream is asked first, and does not know it).
    let fresh = answer(&ask(&nc, "forgot", &deposit(5, "fresh-1")).await);
    assert_eq!(fresh.1, json!(105 + newer));
    assert_eq!(n.metrics.app_calls_of("decide"), decides + 1);

    // After a restart the node cannot name what the actor forgot before: it asks the stream
    // about every id it does not remember, within the window.
    n.terminate();
    n.exited(T).await.expect("clean exit");
    drop(n);
    let (n, _) = node_again(&nats, "forgot", &bank.url(), false).await;
    let alice = Request::new(ActorRef::new("account", "alice"), Op::Read, None);
    wait_for("the restarted node serves", T, || async {
        matches!(ask(&nc, "forgot", &alice).await.outcome, Outcome::Ok(_))
    })
    .await;
    let decides = n.metrics.app_calls_of("decide");
    for id in ["d-1", "n-0"] {
        let again = answer(&ask(&nc, "forgot", &deposit(100, id)).await);
        assert_eq!(again.1, json!(105 + newer), "{id} not applied again");
    }
    assert_eq!(
        n.metrics.app_calls_of("decide"),
        decides,
        "decide not called"
    );
    let fresh = answer(&ask(&nc, "forgot", &deposit(5, "fresh-2")).await);
    assert_eq!(fresh.1, json!(110 + newer));
    assert_eq!(n.metrics.app_calls_of("decide"), decides + 1);
}
