//! The app protocol and the app API (issue 15) against real processes: the Python example app
//! (`examples/bank/app.py`), a fault app (`tests/apps/faulty.py`) and a real nats-server. Each
//! fault of the app shows its reply code, its counter and that nothing was appended.

use aether_core::protocol::{ActorRef, ErrorCode, Op, Outcome, Reply, Request};
use aether_node::config::ApiAddr;
use aether_node::metrics::{AppFault, Failure};
use aether_node::node::Health;
use aether_tests::app::{App, http};
use aether_tests::cluster::{
    TestNode, ask, ask_served, next_plan, node_config, publish, spawn_process_with,
};
use aether_tests::{NatsServer, free_port, wait_for, workspace_binary};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);
const SHARDS: u32 = 16;

/// One node with the app at `app_url` and the API on a free port; the plan (published unless it
/// is there already) gives it every shard.
pub(crate) async fn node(nats: &NatsServer, prefix: &str, app_url: &str) -> (TestNode, u16) {
    node_again(nats, prefix, app_url, true).await
}

pub(crate) async fn node_again(
    nats: &NatsServer,
    prefix: &str,
    app_url: &str,
    first: bool,
) -> (TestNode, u16) {
    let api = free_port();
    let mut cfg = node_config(&nats.url(), prefix, "app-0");
    cfg.app_url = Some(app_url.to_owned());
    cfg.app_timeout = Duration::from_millis(500);
    // No operator here to plan the node away: a stopped node exits after this.
    cfg.drain_timeout = Duration::from_secs(1);
    cfg.api_addr = ApiAddr(Some(format!("127.0.0.1:{api}").parse().expect("addr")));
    let n = TestNode::start_with(cfg).await;
    let plan = next_plan(None, &["app-0"], SHARDS, 4);
    if first {
        publish(&nats.connect().await, prefix, &plan, 10).await;
    }
    wait_for("the plan", T, || async { n.shared.settled_at(plan.epoch) }).await;
    (n, api)
}

pub(crate) fn command(kind: &str, id: &str, command: Value, cmd: &str) -> Request {
    Request::new(
        ActorRef::new(kind, id),
        Op::Command { command },
        Some(cmd.to_owned()),
    )
}

fn error_code(r: &Reply) -> ErrorCode {
    match &r.outcome {
        Outcome::Error(e) => e.code,
        Outcome::Ok(ok) => panic!("expected an error, got {ok:?}"),
    }
}

fn json_of(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)))
}

/// Records of the actor in the log.
async fn logged(nc: &async_nats::Client, prefix: &str, kind: &str, id: &str) -> u64 {
    log_of(nc, prefix, kind, id).await.version
}

/// The actor as its log has it (state not folded: the last snapshot and the events after it).
async fn log_of(
    nc: &async_nats::Client,
    prefix: &str,
    kind: &str,
    id: &str,
) -> aether_node::store::Loaded {
    aether_tests::cluster::log_of(nc, prefix, SHARDS, kind, id).await
}

/// An account's balance through NATS, once a node answers.
async fn balance(nc: &async_nats::Client, prefix: &str, id: &str) -> Option<i64> {
    let r = ask(
        nc,
        prefix,
        &Request::new(ActorRef::new("account", id), Op::Read, None),
    )
    .await;
    match r.outcome {
        Outcome::Ok(ok) => ok.state["balance"].as_i64(),
        Outcome::Error(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_accounts_through_the_api_and_nats_and_rebuilt_after_a_restart() {
    let nats = NatsServer::start();
    let nc = nats.connect().await;
    let bank = App::start("examples/bank/app.py").await;
    let (mut n, api) = node(&nats, "bank", &bank.url()).await;
    // Ready once the app's kinds are known and the plan bucket is read.
    wait_for("the node Ready", T, || async {
        n.health.problem().is_none()
    })
    .await;

    // A command with a command id, and its retry: applied once.
    let dep = br#"{"deposit": 100}"#;
    for _ in 0..2 {
        let (status, body) = http(
            api,
            "POST",
            "/v1/actors/account/alice",
            &[("Aether-Command-Id", "dep-1")],
            dep,
        )
        .await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let b = json_of(&body);
        assert_eq!(b["state"], json!({"balance": 100}));
        assert_eq!(b["version"], 1);
    }
    // The app refuses an overdraft: 409 with its reason, nothing appended.
    let (status, body) = http(
        api,
        "POST",
        "/v1/actors/account/alice",
        &[],
        br#"{"withdraw": 150}"#,
    )
    .await;
    assert_eq!(status, 409);
    let b = json_of(&body);
    assert_eq!(b["code"], "rejected");
    assert!(
        b["message"]
            .as_str()
            .unwrap_or("")
            .contains("insufficient funds"),
        "{b}"
    );
    assert_eq!(logged(&nc, "bank", "account", "alice").await, 1);
    // The app's reply comes back beside the state; through NATS too.
    let r = ask(
        &nc,
        "bank",
        &command("account", "alice", json!({"withdraw": 30}), "w-1"),
    )
    .await;
    match &r.outcome {
        Outcome::Ok(ok) => {
            assert_eq!(ok.reply, Some(json!({"balance": 70})));
            assert_eq!(ok.version, 2);
        }
        Outcome::Error(e) => panic!("{e:?}"),
    }
    // Errors map to statuses.
    let (status, _) = http(api, "GET", "/v1/actors/nosuch/alice", &[], b"").await;
    assert_eq!(status, 404);
    let (status, _) = http(api, "POST", "/v1/actors/account/alice", &[], b"{not json").await;
    assert_eq!(status, 400);
    let (status, body) = http(
        api,
        "POST",
        "/v1/actors/account/alice",
        &[],
        br#"{"deposit": -1}"#,
    )
    .await;
    assert_eq!(
        (status, json_of(&body)["code"].clone()),
        (409, json!("rejected"))
    );

    // A transfer: a withdrawal here and a message that deposits there, delivered after the append;
    // the receiver's answer comes back to the sender and marks the message delivered.
    let (status, body) = http(
        api,
        "POST",
        "/v1/actors/account/alice",
        &[],
        br#"{"transfer": {"to": "bob", "amount": 20}}"#,
    )
    .await;
    assert_eq!(
        (status, json_of(&body)["reply"].clone()),
        (200, json!({"balance": 50}))
    );
    wait_for("the deposit at bob and its reply at alice", T, || async {
        balance(&nc, "bank", "bob").await == Some(20)
            && log_of(&nc, "bank", "account", "alice")
                .await
                .snapshot
                .outbox
                .is_empty()
    })
    .await;
    // bob: the deposit, and the record of its release once alice recorded the answer.
    assert_eq!(logged(&nc, "bank", "account", "bob").await, 2);
    // alice: deposit, withdraw, transfer, the record of the reply and of bob's release.
    assert_eq!(logged(&nc, "bank", "account", "alice").await, 5);
    let (status, body) = http(
        api,
        "POST",
        "/v1/actors/account/alice",
        &[],
        br#"{"$reply": {}}"#,
    )
    .await;
    assert_eq!(
        (status, json_of(&body)["code"].clone()),
        (400, json!("malformed")),
        "a client cannot forge a reply"
    );

    // Past two snapshots (the kind asks for one every 8 records), then a restart: the new node
    // loads the last snapshot and has the app fold the records after it.
    for i in 0..17 {
        let (status, _) = http(
            api,
            "POST",
            "/v1/actors/account/alice",
            &[("Aether-Command-Id", &format!("d{i}"))],
            br#"{"deposit": 10}"#,
        )
        .await;
        assert_eq!(status, 200);
    }
    let expected = json!({"balance": 50 + 170});
    assert_eq!(logged(&nc, "bank", "account", "alice").await, 22);
    n.terminate();
    n.exited(T).await.expect("clean exit");
    drop(n);
    let (n2, api2) = node_again(&nats, "bank", &bank.url(), false).await;
    let before = n2.metrics.app_calls_of("apply");
    let (status, body) = http(api2, "GET", "/v1/actors/account/alice", &[], b"").await;
    assert_eq!(status, 200);
    let b = json_of(&body);
    assert_eq!(
        (b["state"].clone(), b["version"].clone()),
        (expected, json!(22))
    );
    assert!(
        n2.metrics.app_calls_of("apply") > before,
        "the app folded the records after the snapshot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_of_the_app_is_an_error_reply_a_count_and_nothing_appended() {
    let nats = NatsServer::start();
    let nc = nats.connect().await;
    let mut app = App::start("tests/apps/faulty.py").await;
    let (n, api) = node(&nats, "faults", &app.url()).await;
    let m = n.metrics.clone();

    let cases: Vec<(Value, ErrorCode, Option<AppFault>)> = vec![
        (
            json!({"answer": "notJson"}),
            ErrorCode::AppError,
            Some(AppFault::Malformed),
        ),
        (
            json!({"answer": "eventsNotList"}),
            ErrorCode::AppError,
            Some(AppFault::Malformed),
        ),
        (
            json!({"answer": "noState"}),
            ErrorCode::AppError,
            Some(AppFault::Malformed),
        ),
        (
            json!({"answer": "status500"}),
            ErrorCode::AppError,
            Some(AppFault::Status),
        ),
        // A state over --max-state-bytes (256 KiB here), and an answer over the answer limit.
        (
            json!({"answer": "bigState", "bytes": 300_000}),
            ErrorCode::AppError,
            Some(AppFault::TooLarge),
        ),
        (
            json!({"answer": "bigState", "bytes": 2_000_000}),
            ErrorCode::AppError,
            Some(AppFault::TooLarge),
        ),
        // Past --app-timeout (500 ms here): unavailable, retry later.
        (
            json!({"answer": "slow", "ms": 1500}),
            ErrorCode::Unavailable,
            Some(AppFault::Timeout),
        ),
        (json!({"answer": "reject"}), ErrorCode::Rejected, None),
    ];
    for (i, (cmd, code, fault)) in cases.into_iter().enumerate() {
        let before = fault.map(|f| m.app_errors_of(f));
        let r = ask(
            &nc,
            "faults",
            &command("faulty", "f1", cmd.clone(), &format!("c{i}")),
        )
        .await;
        assert_eq!(error_code(&r), code, "{cmd}");
        if let (Some(f), Some(b)) = (fault, before) {
            assert_eq!(m.app_errors_of(f), b + 1, "{cmd} counted as {}", f.as_str());
        }
        assert_eq!(
            logged(&nc, "faults", "faulty", "f1").await,
            0,
            "{cmd}: nothing appended"
        );
    }
    // The actor and the node still serve: a good command lands.
    let r = ask(
        &nc,
        "faults",
        &command("faulty", "f1", json!({"ok": true}), "good"),
    )
    .await;
    assert!(
        matches!(&r.outcome, Outcome::Ok(ok) if ok.version == 1 && ok.reply == Some(json!({"n": 1}))),
        "{r:?}"
    );
    assert_eq!(logged(&nc, "faults", "faulty", "f1").await, 1);
    let (status, body) = http(
        api,
        "POST",
        "/v1/actors/faulty/f2",
        &[],
        br#"{"answer": "notJson"}"#,
    )
    .await;
    assert_eq!(
        (status, json_of(&body)["code"].clone()),
        (502, json!("appError"))
    );

    // The app goes away: not Ready with the reason, commands answered unavailable; back when it is.
    let port = app.port;
    app.kill();
    wait_for("not Ready while the app is down", T, || async {
        n.health
            .problem()
            .is_some_and(|p| p.contains("does not answer"))
    })
    .await;
    let r = ask(
        &nc,
        "faults",
        &command("faulty", "f1", json!({"ok": true}), "while-down"),
    )
    .await;
    assert_eq!(error_code(&r), ErrorCode::Unavailable);
    assert!(m.app_errors_of(AppFault::Unreachable) >= 1);
    let _app = App::start_on("tests/apps/faulty.py", port).await;
    wait_for("Ready again", T, || async { n.health.problem().is_none() }).await;
    let r = ask(
        &nc,
        "faults",
        &command("faulty", "f1", json!({"ok": true}), "while-down"),
    )
    .await;
    assert!(
        matches!(&r.outcome, Outcome::Ok(ok) if ok.version == 2),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_waits_for_its_app_not_ready_and_saying_why() {
    let nats = NatsServer::start();
    let port = free_port();
    let mut cfg = node_config(&nats.url(), "wait", "app-0");
    cfg.app_url = Some(format!("http://127.0.0.1:{port}"));
    let health = Arc::new(Health::default());
    let h = health.clone();
    let starting = tokio::spawn(async move { TestNode::start_with_health(cfg, h).await });
    wait_for("the reason", T, || async {
        health
            .problem()
            .is_some_and(|p| p.contains("waiting for the app's kinds"))
    })
    .await;
    assert!(
        !starting.is_finished(),
        "the node must not start serving without its kinds"
    );
    let _app = App::start_on("examples/bank/app.py", port).await;
    let n = tokio::time::timeout(T, starting)
        .await
        .expect("started once the app answers")
        .expect("no panic");
    let kinds = n.shared.host.registry.kinds().join(",");
    assert!(kinds.contains("account"), "{kinds}");
}

async fn ready(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
        && http(port, "GET", "/readyz", &[], b"").await.0 == 200
}

/// The send path's promise: a transfer whose deposit could not be delivered yet when the sender's
/// owner is killed (SIGKILL) is delivered by the next owner of the sender, once, and its reply
/// recorded once; another restart sends nothing again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_survives_its_senders_owner_dying_between_append_and_delivery() {
    let nats = NatsServer::start();
    let nc = nats.connect().await;
    let bin = workspace_binary("aether-node");
    let app_a = App::start("examples/bank/app.py").await;
    let mut app_b = App::start("examples/bank/app.py").await;
    let (ha, hb) = (free_port(), free_port());
    let node = |name: &str, port: u16, app: &str| {
        spawn_process_with(
            &bin,
            &nats.url(),
            "xfer",
            name,
            port,
            &["--app-url", app, "--app-timeout-ms", "300"],
        )
    };
    let mut a = node("app-0", ha, &app_a.url());
    let mut b = node("app-1", hb, &app_b.url());
    wait_for("both nodes Ready", T, || async {
        ready(ha).await && ready(hb).await
    })
    .await;
    let plan = next_plan(None, &["app-0", "app-1"], SHARDS, 4);
    publish(&nc, "xfer", &plan, 10).await;
    let on = |owner: &str| {
        (0..)
            .map(|i| format!("acct-{i}"))
            .find(|id| plan.owner(aether_core::hash::shard_of(id, SHARDS)) == Some(owner))
            .expect("an id")
    };
    let (s, r) = (on("app-0"), on("app-1"));
    wait_for("both accounts served", T, || async {
        balance(&nc, "xfer", &s).await.is_some() && balance(&nc, "xfer", &r).await.is_some()
    })
    .await;
    let dep = ask(
        &nc,
        "xfer",
        &command("account", &s, json!({"deposit": 100}), "dep"),
    )
    .await;
    assert!(matches!(dep.outcome, Outcome::Ok(_)), "{dep:?}");

    // The receiver's app is down: the deposit cannot be delivered, the transfer itself lands.
    let port_b = app_b.port;
    app_b.kill();
    let t = ask(
        &nc,
        "xfer",
        &command(
            "account",
            &s,
            json!({"transfer": {"to": r, "amount": 30}}),
            "t-1",
        ),
    )
    .await;
    assert!(
        matches!(&t.outcome, Outcome::Ok(ok) if ok.reply == Some(json!({"balance": 70}))),
        "{t:?}"
    );
    assert_eq!(
        log_of(&nc, "xfer", "account", &s)
            .await
            .snapshot
            .outbox
            .len(),
        1,
        "in the outbox"
    );
    assert_eq!(
        logged(&nc, "xfer", "account", &r).await,
        0,
        "not delivered yet"
    );

    // The sender's owner dies; the receiver's app comes back; every shard goes to app-1.
    a.kill();
    let _app_b = App::start_on("examples/bank/app.py", port_b).await;
    wait_for("app-1 Ready again", T, || ready(hb)).await;
    let mut all_b = next_plan(None, &["app-1"], SHARDS, 4);
    all_b.epoch = plan.epoch + 1;
    publish(&nc, "xfer", &all_b, 10).await;

    // Loading the sender finds the undelivered message and sends it.
    wait_for(
        "the deposit delivered and its reply recorded",
        T,
        || async {
            balance(&nc, "xfer", &s).await == Some(70)
                && balance(&nc, "xfer", &r).await == Some(30)
                && log_of(&nc, "xfer", "account", &s)
                    .await
                    .snapshot
                    .outbox
                    .is_empty()
        },
    )
    .await;
    wait_for("the send released at both ends", T, || async {
        logged(&nc, "xfer", "account", &r).await == 2
            && logged(&nc, "xfer", "account", &s).await == 4
    })
    .await;
    assert_eq!(
        logged(&nc, "xfer", "account", &r).await,
        2,
        "deposited once, then released"
    );
    assert_eq!(
        logged(&nc, "xfer", "account", &s).await,
        4,
        "deposit, transfer, reply, released"
    );

    // Once more from scratch: nothing is sent again.
    b.kill();
    let _b2 = node("app-1", hb, &format!("http://127.0.0.1:{port_b}"));
    wait_for("app-1 back", T, || ready(hb)).await;
    wait_for("served again", T, || async {
        balance(&nc, "xfer", &s).await == Some(70)
    })
    .await;
    assert_eq!(balance(&nc, "xfer", &r).await, Some(30));
    assert_eq!(logged(&nc, "xfer", "account", &r).await, 2);
    assert_eq!(logged(&nc, "xfer", "account", &s).await, 4);
}

/// A request still waiting when its caller's deadline (`timeoutMs`) passes is dropped before any
/// work, answered `unavailable` and counted; the command it waited behind lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_its_callers_deadline_is_dropped_and_counted() {
    let nats = NatsServer::start();
    let nc = nats.connect().await;
    let app = App::start("tests/apps/faulty.py").await;
    let mut cfg = node_config(&nats.url(), "deadline", "app-0");
    cfg.app_url = Some(app.url());
    cfg.app_timeout = Duration::from_secs(5);
    let n = TestNode::start_with(cfg).await;
    let plan = next_plan(None, &["app-0"], SHARDS, 4);
    publish(&nc, "deadline", &plan, 10).await;
    wait_for("the plan", T, || async { n.shared.settled_at(plan.epoch) }).await;
    let m = n.metrics.clone();

    let decides = m.app_calls_of("decide");
    let slow = command(
        "faulty",
        "d1",
        json!({"answer": "slow", "ms": 1500}),
        "slow",
    );
    let nc1 = nc.clone();
    let slow_reply = tokio::spawn(async move { ask(&nc1, "deadline", &slow).await });
    wait_for("the slow command at the app", T, || async {
        m.app_calls_of("decide") > decides
    })
    .await;
    let expired = m.failures_of(Failure::Expired);
    let mut quick = command("faulty", "d1", json!({"ok": true}), "quick");
    quick.timeout_ms = Some(200);
    let r = ask(&nc, "deadline", &quick).await;
    assert_eq!(error_code(&r), ErrorCode::Unavailable, "{r:?}");
    assert_eq!(m.failures_of(Failure::Expired), expired + 1);
    let slow_reply = slow_reply.await.expect("no panic");
    assert!(
        matches!(&slow_reply.outcome, Outcome::Ok(ok) if ok.version == 1),
        "{slow_reply:?}"
    );
    assert_eq!(
        logged(&nc, "deadline", "faulty", "d1").await,
        1,
        "only the slow command landed"
    );
}

/// A reply larger than the server's max payload (64 KiB here) cannot be published: the caller gets
/// a `tooLarge` error reply instead of its own timeout, it is counted, and the command (appended
/// before the reply) stays; the node's connection serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_over_the_servers_max_payload_is_answered_too_large() {
    let dir = tempfile::tempdir().expect("dir");
    let conf = dir.path().join("nats.conf");
    std::fs::write(&conf, "max_payload: 65536\n").expect("config");
    let nats = NatsServer::start_with(&["-c", conf.to_str().expect("utf-8")]);
    let nc = nats.connect().await;
    let app = App::start("tests/apps/faulty.py").await;
    let mut cfg = node_config(&nats.url(), "payload", "app-0");
    cfg.app_url = Some(app.url());
    let n = TestNode::start_with(cfg).await;
    let plan = next_plan(None, &["app-0"], SHARDS, 4);
    publish(&nc, "payload", &plan, 10).await;
    wait_for("the plan", T, || async { n.shared.settled_at(plan.epoch) }).await;

    let before = n.metrics.failures_of(Failure::Reply);
    let big = command(
        "faulty",
        "p1",
        json!({"answer": "bigReply", "bytes": 100_000}),
        "big",
    );
    let r = ask_served(&nc, "payload", &big).await;
    assert_eq!(error_code(&r), ErrorCode::TooLarge, "{r:?}");
    match &r.outcome {
        Outcome::Error(e) => assert!(e.message.contains("max payload of 65536"), "{e:?}"),
        Outcome::Ok(_) => unreachable!(),
    }
    assert_eq!(n.metrics.failures_of(Failure::Reply), before + 1);
    assert_eq!(
        logged(&nc, "payload", "faulty", "p1").await,
        1,
        "the command stays"
    );
    let ok = ask(
        &nc,
        "payload",
        &command("faulty", "p1", json!({"ok": true}), "after"),
    )
    .await;
    assert!(
        matches!(&ok.outcome, Outcome::Ok(o) if o.version == 2),
        "{ok:?}"
    );
}

/// Runs an SDK's client check (`program script --api URL`, a repository path) against a real node,
/// on a real nats-server, whose app is at `app_url`; fails with what the check printed.
async fn sdk_client_check(prefix: &str, app_url: &str, program: &std::path::Path, script: &str) {
    let nats = NatsServer::start();
    let (n, api) = node(&nats, prefix, app_url).await;
    wait_for("the node Ready", T, || async {
        n.health.problem().is_none()
    })
    .await;
    let out = tokio::process::Command::new(program)
        .arg(aether_tests::app::repo_file(script))
        .args(["--api", &format!("http://127.0.0.1:{api}")])
        .output()
        .await
        .unwrap_or_else(|e| panic!("{} runs: {e}", program.display()));
    assert!(
        out.status.success(),
        "{script} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    drop(n);
}

/// The Python SDK's client (`sdk/python`) against a real sidecar whose app is the bank on the SDK:
/// `sdk/python/tests/client_check.py` calls accounts through the app API (ids and retries, refusals
/// and unknown kinds as errors with their codes, a transfer's send, timers, the asyncio client).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdks_client_calls_actors_through_a_real_sidecar() {
    let bank = App::start("examples/bank/app.py").await;
    let python = aether_tests::app::python();
    sdk_client_check(
        "sdk",
        &bank.url(),
        &python,
        "sdk/python/tests/client_check.py",
    )
    .await;
}

/// The TypeScript SDK's client (`sdk/typescript`) against a real sidecar whose app is the bank twin
/// on that SDK (`examples/bank-ts/app.js`): `sdk/typescript/checks/client_check.mjs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typescript_sdks_app_and_client_work_with_a_real_sidecar() {
    let node_js = std::path::Path::new("node");
    let bank = App::start_with(node_js, "examples/bank-ts/app.js", free_port(), &[]).await;
    sdk_client_check(
        "sdkts",
        &bank.url(),
        node_js,
        "sdk/typescript/checks/client_check.mjs",
    )
    .await;
}
