//! `aether-operator`: wires logs, the Kubernetes client, leader election, the controller and the HTTP
//! server. Decisions live in the library (`decide.rs`).

use aether_operator::controller::{self, Context, Metrics};
use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use clap::Parser;
use kube_lease_manager::LeaseManagerBuilder;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

/// Keeps event-sourced actors evenly spread over a StatefulSet's pods.
#[derive(Debug, Parser)]
#[command(name = "aether-operator", version, about)]
struct Args {
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "AETHER_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// This replica's identity in the leader Lease (the pod name).
    #[arg(long, env = "POD_NAME", default_value = "aether-operator")]
    identity: String,
    /// Namespace of the leader Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, env = "AETHER_LEASE", default_value = "aether-operator")]
    lease_name: String,
    /// Seconds a connection attempt to a ShardPlan's NATS may take; while one waits, other
    /// ShardPlans are reconciled as usual.
    #[arg(long, env = "AETHER_NATS_CONNECT_TIMEOUT", default_value = "5", value_parser = parse_secs)]
    nats_connect_timeout: std::time::Duration,
    /// Log as JSON lines.
    #[arg(long, env = "AETHER_LOG_JSON")]
    log_json: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("aether-operator: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aether-operator: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let telemetry = aether_nats::telemetry::init(args.log_json, "aether-operator");
    let ran = serve(args).await;
    telemetry.finish().await;
    ran
}

async fn serve(args: Args) -> Result<(), String> {
    let client = kube::Client::try_default()
        .await
        .map_err(|e| format!("no Kubernetes client (in-cluster config or KUBECONFIG): {e}"))?;
    let metrics = Arc::new(Metrics::default());
    let listener = tokio::net::TcpListener::bind(args.http_addr)
        .await
        .map_err(|e| format!("--http-addr {}: {e}", args.http_addr))?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(metrics.clone());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "http server stopped");
        }
    });

    // One active replica: the Lease holder runs the controller; the others wait their turn.
    let leases = LeaseManagerBuilder::new(client.clone(), &args.lease_name)
        .with_namespace(&args.lease_namespace)
        .with_identity(&args.identity)
        .build()
        .await
        .map_err(|e| {
            format!(
                "leader Lease {}/{}: {e}",
                args.lease_namespace, args.lease_name
            )
        })?;
    let (mut leader, lease_task) = leases.watch().await;
    while !*leader.borrow_and_update() {
        tracing::info!(identity = %args.identity, "standing by for the leader Lease");
        tokio::select! {
            changed = leader.changed() => changed.map_err(|e| format!("lease watch: {e}"))?,
            () = aether_nats::process::terminate() => return Ok(()),
        }
    }
    tracing::info!(identity = %args.identity, "leading");
    let ctx = Context::new(client, &args.identity, metrics, args.nats_connect_timeout);
    let mut lost = leader.clone();
    let stop = async move {
        tokio::select! {
            () = aether_nats::process::terminate() => {}
            _ = async { while lost.changed().await.is_ok() && *lost.borrow() {} } => {
                tracing::warn!("leadership lost: stopping");
            }
        }
    };
    controller::run(ctx, stop).await;
    drop(leader);
    let _ = lease_task.await;
    Ok(())
}

fn parse_secs(s: &str) -> Result<std::time::Duration, String> {
    match s.parse::<u64>() {
        Ok(n) if n > 0 => Ok(std::time::Duration::from_secs(n)),
        _ => Err(format!("{s:?} is not a whole number of seconds above 0")),
    }
}

/// 200 while the operator can do its job; 503 with why (its watches failing) otherwise. It names
/// no ShardPlan: one ShardPlan's NATS unreachable is that ShardPlan's `Degraded` condition.
async fn readyz(State(m): State<Arc<Metrics>>) -> axum::response::Response {
    match m.problem() {
        None => "ready\n".into_response(),
        Some(why) => (axum::http::StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    }
}

async fn metrics_text(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.render(),
    )
}
