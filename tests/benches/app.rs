//! The application kinds (`make bench`): commands through the bank on the Python SDK and on the
//! TypeScript SDK (decide calls in batches), through a hand-written standard-library Python app (one
//! decide call per request: `tests/apps/faulty.py`), and through a Rust kind in process, beside the
//! built-in `counter` in the same run; and the app call by itself (the node's app client against the
//! Python app, one call per request). Each app has a node of its own. Writes
//! `target/app-bench.json`, which scripts/bench-report.py turns into a section of BENCHMARKS.md.

use aether_core::protocol::app::DecideCall;
use aether_core::protocol::{ActorRef, Names, Op, Outcome, Reply, Request, decode, encode};
use aether_node::app::AppClient;
use aether_node::behaviour::{Behaviour, Registry};
use aether_node::metrics::Metrics;
use aether_node::node::Health;
use aether_tests::app::App;
use aether_tests::cluster::{TestNode, next_plan, node_config, publish};
use aether_tests::measure::{Figure, drive, middle, ops, run_bench};
use aether_tests::{NatsServer, wait_for};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const SHARDS: u32 = 64;
const IN_FLIGHT: usize = 16;
const ROUNDS: usize = 3;
const N: usize = 5000;
const ACTORS: usize = 100;
const T: Duration = Duration::from_secs(60);

/// The bank's `account` in Rust, in process: what the Python app does, without the HTTP hop.
struct RustAccount;

impl Behaviour for RustAccount {
    fn kind(&self) -> &'static str {
        "raccount"
    }
    fn initial(&self) -> Value {
        json!({"balance": 0})
    }
    fn decide(&self, _state: &Value, command: &Value) -> Result<Vec<Value>, String> {
        let n = command["deposit"]
            .as_i64()
            .ok_or("deposit takes an integer")?;
        Ok(vec![json!({"deposited": n})])
    }
    fn apply(&self, state: &mut Value, event: &Value) {
        let b = state["balance"].as_i64().unwrap_or(0) + event["deposited"].as_i64().unwrap_or(0);
        state["balance"] = b.into();
    }
}

fn main() {
    run_bench("app", run(), None);
}

/// A node of its own (prefix `prefix`) with the app at `app_url`, every shard planned to it; the
/// node and its request subject.
async fn node_for(
    nats: &NatsServer,
    nc: &async_nats::Client,
    prefix: &str,
    app_url: String,
    kinds: Registry,
) -> (TestNode, String) {
    let mut cfg = node_config(&nats.url(), prefix, "app-0");
    cfg.app_url = Some(app_url);
    let node = TestNode::start_full(cfg, kinds, Arc::new(Health::default())).await;
    let plan = next_plan(None, &["app-0"], SHARDS, 4);
    publish(nc, prefix, &plan, 60).await;
    wait_for("plan", T, || async { node.shared.settled_at(plan.epoch) }).await;
    (node, Names::new(prefix).node_requests("app-0"))
}

async fn run() -> Value {
    let nats = NatsServer::start();
    let nc = nats.connect().await;
    let app = App::start("examples/bank/app.py").await;
    let ts_app = App::start_with(
        Path::new("node"),
        "examples/bank-ts/app.js",
        aether_tests::free_port(),
        &[],
    )
    .await;
    let stdlib_app = App::start("tests/apps/faulty.py").await;
    let mut kinds = Registry::builtin();
    kinds.register(Arc::new(RustAccount));
    let (_node, subject) = node_for(&nats, &nc, "appbench", app.url(), kinds).await;
    let (_ts_node, ts_subject) =
        node_for(&nats, &nc, "appbench-ts", ts_app.url(), Registry::builtin()).await;
    let (_stdlib_node, stdlib_subject) = node_for(
        &nats,
        &nc,
        "appbench-std",
        stdlib_app.url(),
        Registry::builtin(),
    )
    .await;

    let path = |subject: &String, kind: &'static str, command: Value, round: usize| {
        let (c, subject, command) = (nc.clone(), subject.clone(), command.clone());
        move |i: usize| {
            let (c, subject, command) = (c.clone(), subject.clone(), command.clone());
            async move {
                let req = Request::new(
                    ActorRef::new(kind, format!("a-{}", i % ACTORS)),
                    Op::Command { command },
                    Some(format!("{kind}-{round}-{i}")),
                );
                match c
                    .request(subject, encode(&req).expect("encode").into())
                    .await
                {
                    Ok(m) => matches!(
                        decode::<Reply>(&m.payload).map(|r| r.outcome),
                        Ok(Outcome::Ok(_))
                    ),
                    Err(_) => false,
                }
            }
        }
    };
    // The app call alone: the node's own client, kept-alive connections, the same command.
    let client = Arc::new(
        AppClient::new(&app.url(), T, 1 << 20, Arc::new(Metrics::default())).expect("client"),
    );
    let call = move |_: usize| {
        let client = client.clone();
        async move {
            let (state, command) = (json!({"balance": 5}), json!({"deposit": 1}));
            let call = DecideCall {
                kind: "account",
                id: "a-0",
                version: 1,
                state: &state,
                command: &command,
                command_id: None,
            };
            client.decide(&call).await.is_ok()
        }
    };
    let deposit = || json!({"deposit": 1});
    // A round not counted first: connections made, the app's interpreter warm (V8 compiles the
    // hot code as it runs).
    for (subject, kind, command) in [
        (&subject, "counter", json!({"add": 1})),
        (&subject, "raccount", deposit()),
        (&subject, "account", deposit()),
        (&ts_subject, "account", deposit()),
        (&stdlib_subject, "faulty", json!({"ok": true})),
    ] {
        drive(N / 5, IN_FLIGHT, path(subject, kind, command, ROUNDS)).await;
    }
    let mut figures: [Vec<Figure>; 6] = Default::default();
    for round in 0..ROUNDS {
        let [builtin, rust, python, typescript, stdlib, app_call] = &mut figures;
        builtin.push(
            drive(
                N,
                IN_FLIGHT,
                path(&subject, "counter", json!({"add": 1}), round),
            )
            .await,
        );
        rust.push(drive(N, IN_FLIGHT, path(&subject, "raccount", deposit(), round)).await);
        python.push(drive(N, IN_FLIGHT, path(&subject, "account", deposit(), round)).await);
        typescript.push(drive(N, IN_FLIGHT, path(&ts_subject, "account", deposit(), round)).await);
        stdlib.push(
            drive(
                N,
                IN_FLIGHT,
                path(&stdlib_subject, "faulty", json!({"ok": true}), round),
            )
            .await,
        );
        app_call.push(drive(N, IN_FLIGHT, call.clone()).await);
    }
    let [builtin, rust, python, typescript, stdlib, app_call] = figures;
    let lines = |file: &str| {
        std::fs::read_to_string(aether_tests::app::repo_file(file))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    json!({
        "in_flight": IN_FLIGHT,
        "commands": N,
        "rounds": ROUNDS,
        "builtin_counter": middle(&builtin),
        "rust_in_process": middle(&rust),
        "python_app": middle(&python),
        "typescript_app": middle(&typescript),
        "stdlib_app": middle(&stdlib),
        "app_call": middle(&app_call),
        "runs_ops_per_s": {
            "builtin_counter": ops(&builtin),
            "rust_in_process": ops(&rust),
            "python_app": ops(&python),
            "typescript_app": ops(&typescript),
            "stdlib_app": ops(&stdlib),
            "app_call": ops(&app_call),
        },
        "bank_lines": {
            "python_sdk": lines("examples/bank/app.py"),
            "typescript_sdk": lines("examples/bank-ts/app.ts"),
        },
    })
}
