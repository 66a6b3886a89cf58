//! aether's node sidecar, one per pod. Data flow through its files:
//!
//! - `node.rs`: NATS in: plan watch, requests, transfers, progress; routing decisions; migrations.
//! - `routing.rs`: who owns each shard now (plan target, or the source of a pending move).
//! - `host.rs`: one task per local shard, holding its actors; pause/queue/hand-off for moves.
//! - `store.rs`: the JetStream event log with fenced appends and inline snapshots.
//! - `migration.rs`: the move protocol as pure state machines; `capture.rs`: an actor's state in a transfer.
//! - `behaviour.rs`: actor kinds (`counter`, `doc`).
//! - `plans.rs`: the plan KV bucket (shared with the operator).
//! - `client.rs`: the client library and load generator; `http.rs`, `metrics.rs`, `config.rs`.

pub mod behaviour;
pub mod capture;
pub mod client;
pub mod config;
pub mod error;
pub mod host;
pub mod http;
pub mod metrics;
pub mod migration;
pub mod node;
pub mod plans;
pub mod process;
pub mod routing;
pub mod store;

pub use error::{Error, Result};
