//! Traces across hops against a real OTLP receiver (`make observability`, not part of `make test`):
//! Jaeger v2 (built from its Go module) receives the spans of two node processes and a real
//! nats-server with the bank app. One transfer sent to the node that does not own the sender is one
//! trace: the forwarding node's `request`, the owner's `request` (its child, through the
//! `traceparent` NATS header), the app's `decide`, the outbox's `send` (a child of the decide,
//! from the traceparent stored with the send) and the receiver's owner's `request` and `decide`.
//! A move is one trace: the source's `move` and the destination's `receive` of each chunk.

use aether_core::hash::shard_of;
use aether_core::protocol::{ActorRef, Names, Op, Outcome, Request};
use aether_tests::app::{App, http};
use aether_tests::cluster::{ask, move_one_shard, next_plan, publish, spawn_process_env};
use aether_tests::{NatsServer, Process, free_port, http_get, wait_for, workspace_binary};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);
const SHARDS: u32 = 16;
const PREFIX: &str = "traced";

fn jaeger_binary() -> PathBuf {
    let p = std::env::var_os("AETHER_JAEGER")
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("AETHER_JAEGER is not set: run `make observability`"));
    assert!(p.is_file(), "AETHER_JAEGER: {} is not a file", p.display());
    p
}

/// Jaeger v2 with in-memory storage: OTLP over HTTP on `otlp`, its query API on `query`.
fn jaeger(dir: &std::path::Path, otlp: u16, query: u16) -> Process {
    let config = format!(
        "service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces: {{receivers: [otlp], processors: [], exporters: [jaeger_storage_exporter]}}
  telemetry: {{metrics: {{level: none}}, logs: {{level: warn}}}}
extensions:
  jaeger_query:
    storage: {{traces: memstore}}
    http: {{endpoint: 127.0.0.1:{query}}}
    grpc: {{endpoint: 127.0.0.1:{grpc}}}
  jaeger_storage:
    backends: {{memstore: {{memory: {{max_traces: 10000}}}}}}
receivers:
  otlp:
    protocols: {{http: {{endpoint: 127.0.0.1:{otlp}}}}}
exporters:
  jaeger_storage_exporter: {{trace_storage: memstore}}
",
        grpc = free_port()
    );
    let path = dir.join("jaeger.yaml");
    std::fs::write(&path, config).expect("jaeger config");
    let bin = jaeger_binary();
    Process {
        child: Command::new(&bin)
            .arg("--config")
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", bin.display())),
    }
}

/// One span as Jaeger's query API gives it: service, operation, parent span id.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    operation: String,
    id: String,
    parent: Option<String>,
}

/// The traces of `service` with a span named `operation`, each as its spans.
async fn traces(query: u16, service: &str, operation: &str) -> Vec<Vec<Span>> {
    let path = format!("/api/traces?service={service}&operation={operation}&limit=100");
    let (_, body) = http(query, "GET", &path, &[], b"").await;
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    v["data"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            let services: HashMap<&str, &str> = t["processes"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, p)| (k.as_str(), p["serviceName"].as_str().unwrap_or_default()))
                .collect();
            t["spans"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| Span {
                    service: services
                        .get(s["processID"].as_str().unwrap_or_default())
                        .copied()
                        .unwrap_or_default()
                        .to_owned(),
                    operation: s["operationName"].as_str().unwrap_or_default().to_owned(),
                    id: s["spanID"].as_str().unwrap_or_default().to_owned(),
                    parent: s["references"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|r| r["refType"] == "CHILD_OF")
                        .and_then(|r| r["spanID"].as_str().map(str::to_owned)),
                })
                .collect()
        })
        .collect()
}

/// The span of `service` named `operation` whose parent is `parent`.
fn child<'a>(trace: &'a [Span], parent: &Span, service: &str, operation: &str) -> Option<&'a Span> {
    trace.iter().find(|s| {
        s.service == service && s.operation == operation && s.parent.as_deref() == Some(&parent.id)
    })
}

fn describe(trace: &[Span]) -> String {
    trace
        .iter()
        .map(|s| format!("{}:{} {} <- {:?}", s.service, s.operation, s.id, s.parent))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits until a trace of aether-node-0 with a span named `operation` is `whole`; fails after
/// [`T`] with every such trace and the operations each node reported. Polled: Jaeger has no way to
/// wait for a trace.
async fn until_trace(query: u16, operation: &str, what: &str, whole: impl Fn(&[Span]) -> bool) {
    let deadline = std::time::Instant::now() + T;
    loop {
        let found = traces(query, "aether-node-0", operation).await;
        if found.iter().any(|t| whole(t)) {
            return;
        }
        if std::time::Instant::now() >= deadline {
            let mut operations = String::new();
            for service in ["aether-node-0", "aether-node-1"] {
                let path = format!("/api/services/{service}/operations");
                let (_, body) = http(query, "GET", &path, &[], b"").await;
                operations += &format!("{service}: {}\n", String::from_utf8_lossy(&body));
            }
            let traces: Vec<String> = found.iter().map(|t| describe(t)).collect();
            panic!(
                "no {what} within {T:?}; operations:\n{operations}traces:\n{}",
                traces.join("\n---\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_transfer_and_a_move_are_each_one_trace_across_nodes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (otlp, query) = (free_port(), free_port());
    let _jaeger = jaeger(dir.path(), otlp, query);
    wait_for("Jaeger answers", T, || async {
        http_get(query, "/api/services").await.is_some()
    })
    .await;
    let nats = NatsServer::start();
    let nc = nats.connect().await;
    let bank = App::start("examples/bank/app.py").await;
    let endpoint = format!("http://127.0.0.1:{otlp}");
    let ports = [free_port(), free_port()];
    let node = |i: usize| {
        let service = format!("aether-node-{i}");
        spawn_process_env(
            &workspace_binary("aether-node"),
            &nats.url(),
            PREFIX,
            &format!("app-{i}"),
            ports[i],
            &["--app-url", &bank.url()],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
                ("OTEL_SERVICE_NAME", service.as_str()),
                ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ],
        )
    };
    let (_a, _b) = (node(0), node(1));
    wait_for("both nodes Ready", T, || async {
        let mut ready = true;
        for port in ports {
            ready &= http_get(port, "/readyz")
                .await
                .is_some_and(|(s, _)| s == 200);
        }
        ready
    })
    .await;
    let p1 = next_plan(None, &["app-0", "app-1"], SHARDS, 8);
    publish(&nc, PREFIX, &p1, 10).await;
    let owned_by = |pod: &str, n: usize| -> String {
        (0..)
            .map(|i| format!("acct-{i}"))
            .filter(|id| p1.owner(shard_of(id, SHARDS)) == Some(pod))
            .nth(n)
            .unwrap_or_default()
    };
    let (sender, receiver) = (owned_by("app-1", 0), owned_by("app-0", 0));
    let command = |id: &str, cmd: Value, cmd_id: &str| {
        Request::new(
            ActorRef::new("account", id),
            Op::Command { command: cmd },
            Some(cmd_id.to_owned()),
        )
    };
    wait_for("both nodes serve", T, || async {
        let r = ask(
            &nc,
            PREFIX,
            &command(&sender, json!({"deposit": 100}), "open"),
        )
        .await;
        matches!(r.outcome, Outcome::Ok(_))
    })
    .await;

    // The transfer goes to app-0, which does not own the sender: forwarded to app-1.
    let transfer = command(
        &sender,
        json!({"transfer": {"to": receiver, "amount": 30}}),
        "traced-1",
    );
    let msg = nc
        .request(
            Names::new(PREFIX).node_requests("app-0"),
            aether_core::protocol::encode(&transfer)
                .expect("encodes")
                .into(),
        )
        .await
        .expect("answered");
    let reply: aether_core::protocol::Reply =
        aether_core::protocol::decode(&msg.payload).expect("a reply");
    assert!(matches!(reply.outcome, Outcome::Ok(_)), "{reply:?}");
    wait_for("the deposit applied at the receiver", T, || async {
        let r = ask(
            &nc,
            PREFIX,
            &Request::new(ActorRef::new("account", &receiver), Op::Read, None),
        )
        .await;
        matches!(&r.outcome, Outcome::Ok(ok) if ok.state["balance"] == json!(30))
    })
    .await;

    let whole = |trace: &[Span]| {
        trace
            .iter()
            .filter(|s| {
                s.service == "aether-node-0" && s.operation == "request" && s.parent.is_none()
            })
            .any(|root| {
                child(trace, root, "aether-node-1", "request")
                    .and_then(|owner| child(trace, owner, "aether-node-1", "decide"))
                    .and_then(|decide| child(trace, decide, "aether-node-1", "send"))
                    .and_then(|send| child(trace, send, "aether-node-0", "request"))
                    .and_then(|at| child(trace, at, "aether-node-0", "decide"))
                    .is_some()
            })
    };
    until_trace(query, "request", "the transfer's trace, whole", whole).await;

    // A move: the receiver's shard from app-0 to app-1, with its actors: one trace.
    let p2 = move_one_shard(&p1, shard_of(&receiver, SHARDS), "app-1");
    publish(&nc, PREFIX, &p2, 10).await;
    until_trace(
        query,
        "move",
        "a move's trace with the destination's receive",
        |trace| {
            trace
                .iter()
                .filter(|s| s.service == "aether-node-0" && s.operation == "move")
                .any(|mv| child(trace, mv, "aether-node-1", "receive").is_some())
        },
    )
    .await;
}
