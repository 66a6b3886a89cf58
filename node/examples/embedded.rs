//! A node with a kind of its own, in Rust, in process: the node crate used as a library.
//!
//! `cargo run --release -p aether-node --example embedded -- run --pod-name app-0 --nats-url ...`
//! takes the same arguments as `aether-node run` and hosts, besides `counter` and `doc`, the kind
//! `visits`: state `{"page": count, ...}`, command `{"visit": "page"}`.

use aether_node::behaviour::{Behaviour, Registry};
use aether_node::config::{Cli, Command};
use aether_node::metrics::Metrics;
use aether_node::node::{Health, Node};
use clap::Parser;
use serde_json::{Value, json};
use std::sync::Arc;

/// `visits`: counts visits per page.
struct Visits;

impl Behaviour for Visits {
    fn kind(&self) -> &'static str {
        "visits"
    }

    fn initial(&self) -> Value {
        json!({})
    }

    fn decide(&self, _state: &Value, command: &Value) -> Result<Vec<Value>, String> {
        let page = command
            .get("visit")
            .and_then(Value::as_str)
            .ok_or(r#"expected {"visit": "page"}"#)?;
        Ok(vec![json!({"visited": page})])
    }

    fn apply(&self, state: &mut Value, event: &Value) {
        if let (Some(page), Some(map)) = (
            event.get("visited").and_then(Value::as_str),
            state.as_object_mut(),
        ) {
            let n = map.get(page).and_then(Value::as_u64).unwrap_or(0);
            map.insert(page.to_owned(), json!(n + 1));
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), aether_node::Error> {
    let Command::Run(cfg) = Cli::parse().command else {
        return Err(aether_node::Error::Config(
            "only `run` is served here".into(),
        ));
    };
    let telemetry = aether_nats::telemetry::init(cfg.log_json, "aether-embedded");
    let mut kinds = Registry::builtin();
    kinds.register(Arc::new(Visits));
    let (health, metrics) = (Arc::new(Health::default()), Arc::new(Metrics::default()));
    let listener = tokio::net::TcpListener::bind(cfg.http_addr).await?;
    let probes = aether_node::http::router(health.clone(), metrics.clone());
    tokio::spawn(async move { axum::serve(listener, probes).await });
    let served = Node::connect_with(cfg, kinds, health, metrics)
        .await?
        .serve(aether_nats::process::terminate())
        .await;
    telemetry.finish().await;
    served
}
