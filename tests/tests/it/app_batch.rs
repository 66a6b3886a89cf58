//! Decide calls in batches (`decideBatch`, `POST /v1/decide-batch`, docs/PROTOCOL.md "App
//! protocol") against real processes: the bank on the Python SDK, which offers batches, under many
//! commands at once; and the fault app with `--batch`, whose faults inside a batch fail only the
//! calls they must.

use super::app_protocol::{command, node};
use aether_core::protocol::{ActorRef, ErrorCode, Op, Outcome, Reply, Request};
use aether_node::metrics::AppFault;
use aether_tests::app::App;
use aether_tests::cluster::{ask, log_of};
use aether_tests::{NatsServer, free_port, wait_for};
use serde_json::json;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

fn code(r: &Reply) -> Option<ErrorCode> {
    match &r.outcome {
        Outcome::Error(e) => Some(e.code),
        Outcome::Ok(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sdk_app_gets_decide_calls_in_batches_and_each_command_its_own_answer() {
    const ACCOUNTS: usize = 40;
    const DEPOSITS: usize = 400;
    let nats = NatsServer::start();
    let nc = nats.connect().await;
    let bank = App::start("examples/bank/app.py").await;
    let (n, _) = node(&nats, "batch", &bank.url()).await;
    let app = n.shared.app().expect("an app");
    assert_eq!(app.batch_max(), 64, "the SDK offers batches of 64");

    // Deposits to many accounts at once, and overdrafts refused among them.
    let deposits = (0..DEPOSITS).map(|i| {
        let nc = nc.clone();
        async move {
            let id = format!("b{}", i % ACCOUNTS);
            let r = ask(
                &nc,
                "batch",
                &command(
                    "account",
                    &id,
                    json!({"deposit": i % 7 + 1}),
                    &format!("d{i}"),
                ),
            )
            .await;
            (i, r)
        }
    });
    let overdrafts = (0..20).map(|i| {
        let nc = nc.clone();
        async move {
            let id = format!("poor{i}");
            ask(
                &nc,
                "batch",
                &command("account", &id, json!({"withdraw": 5}), &format!("w{i}")),
            )
            .await
        }
    });
    let (deposited, refused) = futures::future::join(
        futures::future::join_all(deposits),
        futures::future::join_all(overdrafts),
    )
    .await;
    for (i, r) in &deposited {
        assert_eq!(code(r), None, "deposit {i}: {r:?}");
    }
    for r in &refused {
        assert_eq!(code(r), Some(ErrorCode::Rejected), "{r:?}");
    }
    let batches = n.metrics.app_calls_of("decide-batch");
    let decides = n.metrics.app_calls_of("decide");
    assert!(
        batches > 0 && batches < decides,
        "{decides} decide calls in {batches} batches"
    );
    // Each account holds exactly its own deposits, each applied once.
    for a in 0..ACCOUNTS {
        let want: usize = (0..DEPOSITS)
            .filter(|i| i % ACCOUNTS == a)
            .map(|i| i % 7 + 1)
            .sum();
        let r = ask(
            &nc,
            "batch",
            &Request::new(ActorRef::new("account", format!("b{a}")), Op::Read, None),
        )
        .await;
        match &r.outcome {
            Outcome::Ok(ok) => assert_eq!(ok.state, json!({"balance": want}), "b{a}"),
            Outcome::Error(e) => panic!("b{a}: {e:?}"),
        }
    }
    for i in 0..20 {
        let log = log_of(&nc, "batch", 16, "account", &format!("poor{i}")).await;
        assert_eq!(log.version, 0, "poor{i}: a refusal appends nothing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_inside_a_batch_fails_only_the_calls_it_must() {
    let nats = NatsServer::start();
    let nc = nats.connect().await;
    let app = App::start_args("tests/apps/faulty.py", free_port(), &["--batch", "8"]).await;
    let (n, _) = node(&nats, "bfaults", &app.url()).await;
    wait_for("the app's batches known", T, || async {
        n.shared.app().is_some_and(|a| a.batch_max() == 8)
    })
    .await;
    let m = n.metrics.clone();
    // Alone, each is a batch of one: its entry's fault is its command's.
    let cases = [
        (
            json!({"answer": "notJson"}),
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
        (
            json!({"answer": "batchShort"}),
            ErrorCode::AppError,
            Some(AppFault::Malformed),
        ),
        (json!({"answer": "reject"}), ErrorCode::Rejected, None),
    ];
    for (i, (cmd, want, fault)) in cases.into_iter().enumerate() {
        let before = fault.map(|f| m.app_errors_of(f));
        let r = ask(
            &nc,
            "bfaults",
            &command("faulty", "f1", cmd.clone(), &format!("c{i}")),
        )
        .await;
        assert_eq!(code(&r), Some(want), "{cmd}: {r:?}");
        if let (Some(f), Some(b)) = (fault, before) {
            assert_eq!(m.app_errors_of(f), b + 1, "{cmd} counted as {}", f.as_str());
        }
        let log = log_of(&nc, "bfaults", 16, "faulty", "f1").await;
        assert_eq!(log.version, 0, "{cmd}: nothing appended");
    }
    // Many at once, one of which the app fails on: that one alone fails.
    let before = m.app_calls_of("decide-batch");
    let calls = (0..60).map(|i| {
        let nc = nc.clone();
        async move {
            let cmd = if i == 30 {
                json!({"answer": "status500"})
            } else {
                json!({"ok": true})
            };
            (
                i,
                ask(
                    &nc,
                    "bfaults",
                    &command("faulty", &format!("g{i}"), cmd, &format!("g{i}")),
                )
                .await,
            )
        }
    });
    for (i, r) in futures::future::join_all(calls).await {
        let want = (i == 30).then_some(ErrorCode::AppError);
        assert_eq!(code(&r), want, "g{i}: {r:?}");
        let log = log_of(&nc, "bfaults", 16, "faulty", &format!("g{i}")).await;
        assert_eq!(log.version, u64::from(i != 30), "g{i}");
    }
    assert!(m.app_calls_of("decide-batch") > before, "sent in batches");
}
