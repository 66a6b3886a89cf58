//! Promises that hold at any size and after any pause (issue 27), against real processes: a send
//! is applied once however long its sender's node was down (past JetStream's duplicate window,
//! shortened here to 1 s), a saga finishes without any client touching its sender, a node brings
//! back every one of many actors after a restart, and clients cannot use the nodes' own command
//! ids.

use aether_core::hash::shard_of;
use aether_core::protocol::{ActorRef, ErrorCode, Names, Op, Outcome, Reply, Request};
use aether_node::client::Client;
use aether_node::store::Record;
use aether_tests::app::{App, http_with_head};
use aether_tests::cluster::{ask, log_of, next_plan, node_process, publish};
use aether_tests::{NatsServer, Process, free_port, http_get, wait_for};
use futures::StreamExt;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);
const SHARDS: u32 = 16;
/// JetStream's duplicate window of the event stream in these tests (the node's default is 120 s).
const WINDOW: Duration = Duration::from_secs(1);

async fn ready(port: u16) -> bool {
    http_get(port, "/readyz")
        .await
        .is_some_and(|(s, _)| s == 200)
}

/// The event stream, created before any node with a duplicate window of [`WINDOW`]: whoever
/// creates it first fixes its settings.
async fn short_window_stream(nc: &async_nats::Client, prefix: &str) {
    let names = Names::new(prefix);
    async_nats::jetstream::new(nc.clone())
        .create_stream(async_nats::jetstream::stream::Config {
            name: names.event_stream(),
            subjects: vec![names.event_subjects()],
            allow_direct: true,
            duplicate_window: WINDOW,
            ..Default::default()
        })
        .await
        .expect("event stream");
}

/// Every record of an actor's subject, read straight from the log (the actor is not loaded).
async fn records(nc: &async_nats::Client, prefix: &str, kind: &str, id: &str) -> Vec<Record> {
    let js = async_nats::jetstream::new(nc.clone());
    let log = aether_tests::timers::records(&js, prefix, SHARDS, &ActorRef::new(kind, id)).await;
    log.into_iter().map(|(r, _)| r).collect()
}

fn state(r: &Reply) -> Value {
    match &r.outcome {
        Outcome::Ok(ok) => (*ok.state).clone(),
        Outcome::Error(e) => panic!("error reply: {e:?}"),
    }
}

async fn read(nc: &async_nats::Client, kind: &str, id: &str) -> Reply {
    answered(nc, &Request::new(ActorRef::new(kind, id), Op::Read, None)).await
}

/// The answer to `req`, retried as a client does on `unavailable` (no plan yet, a shard
/// moving), with the same command id.
async fn answered(nc: &async_nats::Client, req: &Request) -> Reply {
    answered_in(nc, PREFIX, req).await
}

/// [`answered`] for the nodes of `prefix`.
async fn answered_in(nc: &async_nats::Client, prefix: &str, req: &Request) -> Reply {
    let started = Instant::now();
    loop {
        let r = ask(nc, prefix, req).await;
        match &r.outcome {
            Outcome::Error(e) if e.code == ErrorCode::Unavailable && started.elapsed() < T => {
                tokio::time::sleep(Duration::from_millis(e.retry_after_ms.unwrap_or(50))).await;
            }
            _ => return r,
        }
    }
}

/// A saga stack: one saga app (its `$reply` decide calls held while `hold` exists) and two node
/// processes, `app-0` and `app-1`.
struct Saga {
    nats: NatsServer,
    nc: async_nats::Client,
    app: App,
    hold: std::path::PathBuf,
    _dir: tempfile::TempDir,
    ports: [u16; 2],
    nodes: [Option<Process>; 2],
}

const PREFIX: &str = "eo";

impl Saga {
    async fn start() -> Self {
        let nats = NatsServer::start();
        let nc = nats.connect().await;
        short_window_stream(&nc, PREFIX).await;
        let dir = tempfile::tempdir().expect("tmp");
        let hold = dir.path().join("hold");
        let app = App::start_args(
            "tests/apps/saga.py",
            free_port(),
            &["--hold", hold.to_str().expect("utf-8 path")],
        )
        .await;
        let mut s = Self {
            nats,
            nc,
            app,
            hold,
            _dir: dir,
            ports: [free_port(), free_port()],
            nodes: [None, None],
        };
        s.node(0);
        s.node(1);
        let ports = s.ports;
        wait_for("both nodes Ready", T, || async {
            ready(ports[0]).await && ready(ports[1]).await
        })
        .await;
        let plan = next_plan(None, &["app-0", "app-1"], SHARDS, 4);
        publish(&s.nc, PREFIX, &plan, 10).await;
        s
    }

    fn node(&mut self, i: usize) {
        self.nodes[i] = Some(node_process(
            &self.nats,
            PREFIX,
            &format!("app-{i}"),
            self.ports[i],
            &["--app-url", &self.app.url(), "--app-timeout-ms", "60000"],
        ));
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.nodes[i].take() {
            p.kill();
        }
    }

    async fn ready_again(&mut self, i: usize) {
        self.node(i);
        let port = self.ports[i];
        wait_for("the node Ready again", T, || ready(port)).await;
    }

    /// An id of `prefix`-n whose shard the first plan gives to `owner`.
    fn id_on(prefix: &str, owner: &str, skip: usize) -> String {
        let plan = next_plan(None, &["app-0", "app-1"], SHARDS, 4);
        (0..)
            .map(|i| format!("{prefix}-{i}"))
            .filter(|id| plan.owner(shard_of(id, SHARDS)) == Some(owner))
            .nth(skip)
            .expect("an id")
    }

    async fn place(&self, order: &str, stock: &str) {
        let req = Request::new(
            ActorRef::new("order", order),
            Op::Command {
                command: json!({"place": {"stock": stock, "qty": 1}}),
            },
            Some(format!("place-{order}")),
        );
        let r = answered(&self.nc, &req).await;
        assert!(matches!(r.outcome, Outcome::Ok(_)), "{r:?}");
    }

    /// Times `stock` applied `order`'s reservation, by its state and by its log.
    async fn applied(&self, stock: &str, order: &str) -> (i64, usize) {
        let s = state(&read(&self.nc, "stock", stock).await);
        let in_state = s["orders"][order].as_i64().unwrap_or(0);
        let in_log = records(&self.nc, PREFIX, "stock", stock)
            .await
            .iter()
            .flat_map(|r| r.events.iter())
            .filter(|e| e["reserved"]["order"] == json!(order))
            .count();
        (in_state, in_log)
    }

    /// True once the order's log holds the answer and nothing is pending (read from the log).
    async fn settled(&self, order: &str) -> bool {
        let l = log_of(&self.nc, PREFIX, SHARDS, "order", order).await;
        l.snapshot.outbox.is_empty() && l.version >= 3
    }
}

/// The sender's node is SIGKILLed after the receiver applied the send and before the sender
/// recorded the answer; every window passes; the node comes back. Nobody reads the order: its
/// node resumes it from the pending-work marker, the stock answers the repeated delivery from its
/// inbox, and the reservation is applied exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_is_applied_once_after_its_senders_node_dies_past_every_window() {
    let mut s = Saga::start().await;
    let order = Saga::id_on("order", "app-0", 0);
    let stock = Saga::id_on("stock", "app-1", 0);
    std::fs::write(&s.hold, b"").expect("hold");
    s.place(&order, &stock).await;
    wait_for("the stock applied the send", T, || async {
        s.applied(&stock, &order).await.0 == 1
    })
    .await;
    assert!(!s.settled(&order).await, "the answer is held at the app");
    s.kill(0);
    std::fs::remove_file(&s.hold).expect("unhold");
    // Past JetStream's duplicate window (and the time any attempt may still be on its way).
    tokio::time::sleep(WINDOW * 3).await;
    let started = Instant::now();
    s.ready_again(0).await;
    wait_for(
        "the saga finished without anyone touching the order",
        T,
        || s.settled(&order),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(s.applied(&stock, &order).await, (1, 1), "applied once");
    wait_for("the stock released the send", T, || async {
        log_of(&s.nc, PREFIX, SHARDS, "stock", &stock)
            .await
            .snapshot
            .inbox
            .is_empty()
    })
    .await;
    assert_eq!(
        state(&read(&s.nc, "order", &order).await)["status"],
        json!("confirmed")
    );
    eprintln!("saga finished {took:?} after the restart began");
}

/// Every node and the nats-server stop, with sends of 20 orders applied but not answered, for
/// longer than every window; everything comes back: each send applied once, every saga done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_pending_when_the_whole_cluster_stops_are_applied_once_after_it_restarts() {
    let mut s = Saga::start().await;
    let orders: Vec<(String, String)> = (0..20)
        .map(|i| {
            let (o, st) = if i % 2 == 0 {
                ("app-0", "app-1")
            } else {
                ("app-1", "app-0")
            };
            (Saga::id_on("order", o, i), Saga::id_on("stock", st, i % 3))
        })
        .collect();
    std::fs::write(&s.hold, b"").expect("hold");
    for (o, st) in &orders {
        s.place(o, st).await;
    }
    wait_for("every stock applied its sends", T, || async {
        for (o, st) in &orders {
            if s.applied(st, o).await.0 != 1 {
                return false;
            }
        }
        true
    })
    .await;
    s.kill(0);
    s.kill(1);
    s.nats.kill();
    std::fs::remove_file(&s.hold).expect("unhold");
    tokio::time::sleep(WINDOW * 3).await;
    s.nats.restart();
    s.nc = s.nats.connect().await;
    let started = Instant::now();
    s.node(0);
    s.node(1);
    wait_for(
        "every saga finished, nobody touching an order",
        T,
        || async {
            for (o, _) in &orders {
                if !s.settled(o).await {
                    return false;
                }
            }
            true
        },
    )
    .await;
    eprintln!(
        "{} sagas finished {:?} after the restart began",
        orders.len(),
        started.elapsed()
    );
    for (o, st) in &orders {
        assert_eq!(s.applied(st, o).await, (1, 1), "{o} at {st}");
    }
}

/// More actors than the node keeps in memory and far more than nats-server's default consumer
/// limit, read back cold after a restart: every one, 0 errors (each was rebuilt by replaying its
/// records, no consumer per actor).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_reads_back_every_one_of_many_actors() {
    let n: usize = std::env::var("AETHER_RESTART_ACTORS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let nats = NatsServer::start();
    let nc = nats.connect().await;
    let port = free_port();
    let node = || node_process(&nats, "many", "app-0", port, &["--max-actors", "5000"]);
    let mut p = node();
    wait_for("the node Ready", T, || ready(port)).await;
    publish(&nc, "many", &next_plan(None, &["app-0"], SHARDS, 4), 10).await;
    let client = Client::new(nc.clone(), "many");
    let add = |i: usize, k: usize| {
        let client = &client;
        async move {
            let r = client
                .add(&format!("c-{i}"), 1, format!("add-{i}-{k}"))
                .await
                .expect("sent");
            matches!(r.outcome, Outcome::Ok(_))
        }
    };
    // Two records each: the last one carries no snapshot, so a load replays the log.
    for k in 0..2 {
        let ok = futures::stream::iter(0..n)
            .map(|i| add(i, k))
            .buffer_unordered(256)
            .filter(|ok| std::future::ready(*ok))
            .count()
            .await;
        assert_eq!(ok, n, "every add acknowledged");
    }
    p.kill();
    let _p = node();
    wait_for("the node Ready again", T, || ready(port)).await;
    let started = Instant::now();
    let mut errors = Vec::new();
    let replies: Vec<(usize, Reply)> = futures::stream::iter(0..n)
        .map(|i| {
            let client = &client;
            async move {
                let r = client.read("counter", &format!("c-{i}")).await;
                (i, r.unwrap_or_else(|e| panic!("c-{i}: {e}")))
            }
        })
        .buffer_unordered(256)
        .collect()
        .await;
    for (i, r) in &replies {
        match &r.outcome {
            Outcome::Ok(ok) if ok.state["value"] == json!(2) && ok.version == 2 => {}
            other => errors.push(format!("c-{i}: {other:?}")),
        }
    }
    eprintln!("{n} actors read back cold in {:?}", started.elapsed());
    assert!(
        errors.is_empty(),
        "{} of {n} actors not read back, e.g. {:?}",
        errors.len(),
        &errors[..errors.len().min(3)]
    );
    let consumers = async_nats::jetstream::new(nc.clone())
        .get_stream(Names::new("many").event_stream())
        .await
        .expect("stream")
        .info()
        .await
        .expect("info")
        .state
        .consumer_count;
    assert_eq!(consumers, 0, "loads leave no consumer behind");
}

/// Command ids starting with `$` (sends' ids) and `release` are the nodes' own: refused from a
/// client on NATS and through the app API; the API names the command id it used on every answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_cannot_use_the_nodes_ids_and_the_api_names_its_command_id() {
    let nats = NatsServer::start();
    let nc = nats.connect().await;
    let (port, api) = (free_port(), free_port());
    let _p = node_process(
        &nats,
        "ns",
        "app-0",
        port,
        &["--api-addr", &format!("127.0.0.1:{api}")],
    );
    wait_for("the node Ready", T, || ready(port)).await;
    publish(&nc, "ns", &next_plan(None, &["app-0"], SHARDS, 4), 10).await;
    let forged = Request::new(
        ActorRef::new("counter", "victim"),
        Op::Command {
            command: json!({"add": 1}),
        },
        Some("$send-0123456789abcdef-1-0".to_owned()),
    );
    let code = |r: Reply| match r.outcome {
        Outcome::Error(e) => e.code,
        Outcome::Ok(ok) => panic!("accepted: {ok:?}"),
    };
    assert_eq!(code(ask(&nc, "ns", &forged).await), ErrorCode::Malformed);
    let release = Request::new(
        ActorRef::new("counter", "victim"),
        Op::Release {
            ids: vec!["$send-0123456789abcdef-1-0".to_owned()],
        },
        None,
    );
    assert_eq!(code(ask(&nc, "ns", &release).await), ErrorCode::Malformed);
    // Straight to the node's own request subject, too.
    let direct = nc
        .request(
            Names::new("ns").node_requests("app-0"),
            aether_core::protocol::encode(&forged)
                .expect("encodes")
                .into(),
        )
        .await
        .expect("answered");
    let r: Reply = aether_core::protocol::decode(&direct.payload).expect("reply");
    assert_eq!(code(r), ErrorCode::Malformed);
    // A client naming a node's (or the operator's) inbox as its reply subject gets nothing sent
    // there: a node would otherwise answer into a peer's pending request.
    let names = Names::new("ns");
    let read = aether_core::protocol::encode(&Request::new(
        ActorRef::new("counter", "victim"),
        Op::Read,
        None,
    ))
    .expect("encodes");
    let mut peer_inboxes = Vec::new();
    for inbox in [names.node_inbox(), names.operator_inbox()] {
        let to = format!("{inbox}.forged");
        peer_inboxes.push(nc.subscribe(to.clone()).await.expect("sub"));
        nc.publish_with_reply(names.node_requests("app-0"), to, read.clone().into())
            .await
            .expect("sent");
    }
    // Taken in order after them: once this is answered, they were refused.
    nc.request(names.node_requests("app-0"), read.clone().into())
        .await
        .expect("answered");
    for mut sub in peer_inboxes {
        assert!(
            futures::FutureExt::now_or_never(sub.next()).is_none(),
            "nothing answered into a private inbox"
        );
    }
    let metrics = http_get(port, "/metrics").await.expect("metrics").1;
    assert!(
        metrics.contains(r#"aether_node_malformed_total{kind="reply_subject"} 2"#),
        "both counted: {}",
        metrics
            .lines()
            .filter(|l| l.contains("malformed"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    let path = "/v1/actors/counter/victim";
    let post = |id: Option<&'static str>| async move {
        let headers: Vec<(&str, &str)> = id.map(|i| ("Aether-Command-Id", i)).into_iter().collect();
        http_with_head(api, "POST", path, &headers, br#"{"add": 1}"#).await
    };
    assert_eq!(post(Some("$send-x")).await.0, 400, "a $ id through the API");
    let (status, head, _) = post(Some("c-1")).await;
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase().contains("aether-command-id: c-1"),
        "{head}"
    );
    let (status, head, _) = post(None).await;
    assert_eq!(status, 200);
    let made = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("aether-command-id: ")
                .map(str::to_owned)
        })
        .unwrap_or_else(|| panic!("no command id in {head}"));
    assert!(made.starts_with("api-") && made.len() <= 128, "{made}");
    // Every API error is the protocol's JSON: a body over the request limit, an id that is not
    // UTF-8; and the empty id is an actor like any other.
    let code_of = |body: &[u8]| -> Value {
        serde_json::from_slice::<Value>(body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)))["code"]
            .clone()
    };
    // Declared, not sent: the node answers from the head (sending it all would race the answer
    // and the close with a broken pipe).
    let big = (3 * 1024 * 1024).to_string();
    let head = [("Content-Length", big.as_str())];
    let (status, _, body) = http_with_head(api, "POST", path, &head, b"{").await;
    assert_eq!((status, code_of(&body)), (413, json!("tooLarge")));
    let (status, _, body) = http_with_head(api, "GET", "/v1/actors/counter/%FF", &[], b"").await;
    assert_eq!((status, code_of(&body)), (400, json!("malformed")));
    let (status, _, _) =
        http_with_head(api, "POST", "/v1/actors/counter/", &[], br#"{"add": 7}"#).await;
    assert_eq!(status, 200, "the empty id");
    let empty = ask(
        &nc,
        "ns",
        &Request::new(ActorRef::new("counter", ""), Op::Read, None),
    )
    .await;
    assert_eq!(state(&empty)["value"], json!(7), "the same actor over NATS");
    let v = state(
        &ask(
            &nc,
            "ns",
            &Request::new(ActorRef::new("counter", "victim"), Op::Read, None),
        )
        .await,
    );
    assert_eq!(v["value"], json!(2), "only the two client commands applied");
}

/// A retry of an app kind's command (same command id) is answered with the reply its decide gave
/// the first time, also after a restart of the node, and is not applied again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_gets_the_original_reply_also_after_a_restart() {
    let nats = NatsServer::start();
    let nc = nats.connect().await;
    let app = App::start("examples/bank/app.py").await;
    let port = free_port();
    let node = || node_process(&nats, PREFIX, "app-0", port, &["--app-url", &app.url()]);
    let mut p = node();
    wait_for("the node Ready", T, || ready(port)).await;
    publish(&nc, PREFIX, &next_plan(None, &["app-0"], SHARDS, 4), 10).await;
    let deposit = |n: i64, id: &str| {
        Request::new(
            ActorRef::new("account", "alice"),
            Op::Command {
                command: json!({ "deposit": n }),
            },
            Some(id.to_owned()),
        )
    };
    let reply = |r: Reply| match r.outcome {
        Outcome::Ok(ok) => (ok.reply, ok.state["balance"].clone()),
        Outcome::Error(e) => panic!("{e:?}"),
    };
    assert_eq!(
        reply(answered(&nc, &deposit(100, "d-1")).await),
        (Some(json!({"balance": 100})), json!(100))
    );
    assert_eq!(
        reply(answered(&nc, &deposit(50, "d-2")).await),
        (Some(json!({"balance": 150})), json!(150))
    );
    let again = reply(answered(&nc, &deposit(100, "d-1")).await);
    assert_eq!(
        again,
        (Some(json!({"balance": 100})), json!(150)),
        "the first reply, applied once"
    );
    p.kill();
    let _p = node();
    wait_for("the node Ready again", T, || ready(port)).await;
    let again = reply(answered(&nc, &deposit(100, "d-1")).await);
    assert_eq!(
        again,
        (Some(json!({"balance": 100})), json!(150)),
        "after a restart too"
    );
    // Past the ids the actor remembers: JetStream's duplicate window still knows the command, and
    // its record the reply.
    let newer = aether_node::store::RECENT_COMMANDS as i64;
    for i in 0..newer {
        reply(answered(&nc, &deposit(1, &format!("n-{i}"))).await);
    }
    let again = reply(answered(&nc, &deposit(100, "d-1")).await);
    assert_eq!(
        again,
        (Some(json!({"balance": 100})), json!(150 + newer)),
        "recognised by the duplicate window, answered from the log"
    );
}

/// A move without a source: the owner of a shard of 5,000 actors is SIGKILLed and planned out; the
/// shard's new owner rebuilds every actor from the log, 0 errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_of_many_actors_moved_without_a_source_is_read_back_whole() {
    let nats = NatsServer::start();
    let nc = nats.connect().await;
    let ports = [free_port(), free_port()];
    let node = |i: usize| node_process(&nats, "nosrc", &format!("app-{i}"), ports[i], &[]);
    let (mut a, _b) = (node(0), node(1));
    wait_for("both nodes Ready", T, || async {
        ready(ports[0]).await && ready(ports[1]).await
    })
    .await;
    let p1 = next_plan(None, &["app-0", "app-1"], SHARDS, 4);
    publish(&nc, "nosrc", &p1, 10).await;
    let shard = (0..SHARDS)
        .find(|&s| p1.owner(s) == Some("app-0"))
        .expect("a shard of app-0");
    let ids: Vec<String> = (0..)
        .map(|i| format!("m-{i}"))
        .filter(|id| shard_of(id, SHARDS) == shard)
        .take(5_000)
        .collect();
    let client = Client::new(nc.clone(), "nosrc");
    wait_for("app-0 serves", T, || async {
        client
            .read("counter", &ids[0])
            .await
            .is_ok_and(|r| matches!(r.outcome, Outcome::Ok(_)))
    })
    .await;
    for k in 0..2 {
        let ok = futures::stream::iter(&ids)
            .map(|id| {
                let client = &client;
                async move {
                    client
                        .add(id, 1, format!("{id}-{k}"))
                        .await
                        .is_ok_and(|r| matches!(r.outcome, Outcome::Ok(_)))
                }
            })
            .buffer_unordered(256)
            .filter(|ok| std::future::ready(*ok))
            .count()
            .await;
        assert_eq!(ok, ids.len(), "every add acknowledged");
    }
    a.kill();
    let p2 = next_plan(Some(&p1), &["app-1"], SHARDS, 4);
    assert!(
        p2.moves
            .iter()
            .any(|m| m.shard == shard && m.from.is_none()),
        "a move without a source"
    );
    publish(&nc, "nosrc", &p2, 10).await;
    let replies: Vec<Reply> = futures::stream::iter(&ids)
        .map(|id| {
            let nc = &nc;
            async move {
                let req = Request::new(ActorRef::new("counter", id.as_str()), Op::Read, None);
                answered_in(nc, "nosrc", &req).await
            }
        })
        .buffer_unordered(256)
        .collect()
        .await;
    let wrong: Vec<&Reply> = replies
        .iter()
        .filter(|r| !matches!(&r.outcome, Outcome::Ok(ok) if ok.state["value"] == json!(2) && ok.node == "app-1"))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} actors not read back from app-1, e.g. {:?}",
        wrong.len(),
        ids.len(),
        wrong.first()
    );
}

/// An actor whose sends cannot be delivered (the receivers' node is down) fills its outbox up to
/// the state limit: further sends are refused `tooLarge` with nothing appended, while the actor
/// stays readable; once the receivers are back every send is delivered once, the outbox empties
/// and the actor takes commands again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_at_the_state_limit_refuses_more_sends_and_drains_once_delivered() {
    let nats = NatsServer::start();
    let nc = nats.connect().await;
    let app = App::start("examples/bank/app.py").await;
    let ports = [free_port(), free_port()];
    let node = |i: usize| {
        node_process(
            &nats,
            PREFIX,
            &format!("app-{i}"),
            ports[i],
            &["--app-url", &app.url(), "--max-state-bytes", "4096"],
        )
    };
    let (_a, mut b) = (node(0), node(1));
    wait_for("both nodes Ready", T, || async {
        ready(ports[0]).await && ready(ports[1]).await
    })
    .await;
    let plan = next_plan(None, &["app-0", "app-1"], SHARDS, 4);
    publish(&nc, PREFIX, &plan, 10).await;
    let on = |owner: &str| {
        (0..)
            .map(|i| format!("acct-{i}"))
            .find(|id| plan.owner(shard_of(id, SHARDS)) == Some(owner))
            .expect("an id")
    };
    let (alice, bob) = (on("app-0"), on("app-1"));
    let cmd = |command: Value, id: String| {
        Request::new(
            ActorRef::new("account", alice.as_str()),
            Op::Command { command },
            Some(id),
        )
    };
    let r = answered(&nc, &cmd(json!({"deposit": 1_000_000}), "fund".into())).await;
    assert!(matches!(r.outcome, Outcome::Ok(_)), "{r:?}");
    b.kill();
    // Until the server has dropped app-1's subscriptions, a request to any node may still be
    // handed to it and be lost with it.
    let probe = aether_core::protocol::encode(&Request::new(
        ActorRef::new("account", alice.as_str()),
        Op::Read,
        None,
    ))
    .expect("encodes");
    wait_for("the server knows app-1 is gone", T, || async {
        nc.request(
            Names::new(PREFIX).node_requests("app-1"),
            probe.clone().into(),
        )
        .await
        .is_err_and(|e| e.kind() == async_nats::RequestErrorKind::NoResponders)
    })
    .await;
    let mut sent = 0;
    let refused = loop {
        let t = cmd(
            json!({"transfer": {"to": bob, "amount": 1}}),
            format!("t-{sent}"),
        );
        let r = answered(&nc, &t).await;
        match r.outcome {
            Outcome::Ok(_) => sent += 1,
            Outcome::Error(e) => break e,
        }
        assert!(sent < 1_000, "the outbox never reached the limit");
    };
    assert_eq!(refused.code, ErrorCode::TooLarge, "{refused:?}");
    let version = log_of(&nc, PREFIX, SHARDS, "account", &alice).await.version;
    let r = answered(
        &nc,
        &cmd(
            json!({"transfer": {"to": bob, "amount": 1}}),
            "t-over".into(),
        ),
    )
    .await;
    assert!(matches!(&r.outcome, Outcome::Error(e) if e.code == ErrorCode::TooLarge));
    assert_eq!(
        log_of(&nc, PREFIX, SHARDS, "account", &alice).await.version,
        version,
        "nothing appended"
    );
    let now = read(&nc, "account", &alice).await;
    assert_eq!(
        state(&now)["balance"],
        json!(1_000_000 - sent),
        "readable at the limit"
    );
    // The receivers come back: every send is delivered, once, and the outbox empties.
    let _b = node(1);
    wait_for("every send delivered and released", T, || async {
        log_of(&nc, PREFIX, SHARDS, "account", &alice)
            .await
            .snapshot
            .outbox
            .is_empty()
    })
    .await;
    assert_eq!(
        state(&read(&nc, "account", &bob).await)["balance"],
        json!(sent),
        "each send applied once"
    );
    let r = answered(&nc, &cmd(json!({"deposit": 1}), "after".into())).await;
    assert!(
        matches!(r.outcome, Outcome::Ok(_)),
        "takes commands again: {r:?}"
    );
}

/// Issue 28 item 3: `--max-inflight` bounds the app API as it bounds NATS requests. A node without
/// a plan holds each API request for up to 10 s (the API waits out `unavailable`); with a bound of
/// 2, of 20 requests at once 2 are held and 18 answered `unavailable` ("overloaded") at once.
/// On 0bae6b1 all 20 were held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_api_is_bounded_by_max_inflight() {
    let nats = NatsServer::start();
    let (port, api) = (free_port(), free_port());
    let _node = node_process(
        &nats,
        "bound",
        "app-0",
        port,
        &[
            "--api-addr",
            &format!("127.0.0.1:{api}"),
            "--max-inflight",
            "2",
        ],
    );
    wait_for("the API listens", T, || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", api))
            .await
            .is_ok()
    })
    .await;
    let answers = futures::future::join_all((0..20).map(|i| async move {
        let path = format!("/v1/actors/counter/c{i}");
        http_with_head(api, "GET", &path, &[], b"").await
    }))
    .await;
    let overloaded = answers
        .iter()
        .filter(|(status, _, body)| {
            *status == 503 && String::from_utf8_lossy(body).contains("overloaded")
        })
        .count();
    assert_eq!(overloaded, 18, "{answers:?}");
    assert!(
        answers
            .iter()
            .filter(|(_, _, body)| String::from_utf8_lossy(body).contains("no plan"))
            .count()
            == 2,
        "the 2 admitted waited for a plan: {answers:?}"
    );
}

/// Issue 28 item 5: the app API closes a connection that does not finish its request's headers,
/// or says nothing at all, within its header-read timeout (10 s): 50 slow-header connections and
/// 50 silent ones cannot hold the API's sockets. On 25a1eae every one stayed open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_header_and_silent_connections_to_the_app_api_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let nats = NatsServer::start();
    let (port, api) = (free_port(), free_port());
    let _node = node_process(
        &nats,
        "slow",
        "app-0",
        port,
        &["--api-addr", &format!("127.0.0.1:{api}")],
    );
    wait_for("the API listens", T, || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", api))
            .await
            .is_ok()
    })
    .await;
    let closed = futures::future::join_all((0..100).map(|i| async move {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", api))
            .await
            .expect("connects");
        if i % 2 == 0 {
            s.write_all(b"GET /v1/actors/counter/x HTTP/1.1\r\nHost: a\r\n")
                .await
                .expect("writes");
        }
        let mut buf = [0u8; 1024];
        // The server closes it (EOF or reset) before the test's bound, or the test fails.
        matches!(
            tokio::time::timeout(T, s.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        )
    }))
    .await;
    assert!(
        closed.iter().all(|c| *c),
        "every slow or silent connection closed by the API: {} of 100",
        closed.iter().filter(|c| **c).count()
    );
    // The API still answers a whole request.
    let (status, _, _) = http_with_head(api, "GET", "/v1/actors/counter/x", &[], b"").await;
    assert_ne!(status, 0, "the API answers");
}
