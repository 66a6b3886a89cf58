//! `aether-node run`: the sidecar; `send` and `load`: the command-line client.

use aether_core::protocol::{ActorRef, Op, Request, encode};
use aether_node::config::{Cli, Command, NodeConfig};
use aether_node::metrics::Metrics;
use aether_node::node::{self, Health};
use clap::Parser;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long `send` and `load` wait for the plan before sending through any node.
const PLAN_WAIT: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("aether-node: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run(cfg) => run(cfg).await,
            Command::Send(args) => {
                let nats = node::connect(&args.nats, "aether-cli", None, None).await?;
                // Straight to the owner when the plan is readable soon; else through any node.
                let client = aether_node::client::Client::watching_plan(nats, &args.nats.prefix);
                client.wait_for_plan(PLAN_WAIT).await;
                let op = match &args.command {
                    None => Op::Read,
                    Some(text) => Op::Command {
                        command: serde_json::from_str(text).map_err(|e| {
                            aether_node::Error::Config(format!("--command is not JSON: {e}"))
                        })?,
                    },
                };
                let req = Request::new(ActorRef::new(args.kind, args.id), op, args.command_id);
                let reply = client.send(&req).await?;
                println!("{}", String::from_utf8_lossy(&encode(&reply)?));
                Ok(())
            }
            Command::Load(args) => {
                let nats = node::connect(&args.nats, "aether-load", None, None).await?;
                let client = aether_node::client::Client::watching_plan(nats, &args.nats.prefix);
                client.wait_for_plan(PLAN_WAIT).await;
                let report = aether_node::client::run_load(
                    &client,
                    "load",
                    args.actors,
                    args.requests,
                    args.concurrency,
                    Duration::from_secs(args.max_seconds),
                )
                .await;
                println!("{}", serde_json::json!({"ok": report.ok, "errors": report.errors, "acked": report.acked}));
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aether-node: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cfg: NodeConfig) -> aether_node::Result<()> {
    let telemetry = aether_nats::telemetry::init(cfg.log_json, "aether-node");
    let health = Arc::new(Health::default());
    let metrics = Arc::new(Metrics::default());
    let listener = tokio::net::TcpListener::bind(cfg.http_addr)
        .await
        .map_err(|e| aether_node::Error::Config(format!("--http-addr {}: {e}", cfg.http_addr)))?;
    let app = aether_node::http::router(health.clone(), metrics.clone());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "http server stopped");
        }
    });
    let ran = node::run(cfg, health, metrics, aether_nats::process::terminate()).await;
    telemetry.finish().await;
    ran
}
