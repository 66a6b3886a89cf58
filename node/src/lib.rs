//! aether's node sidecar, one per pod. Data flow through its files:
//!
//! - `node.rs`: wiring: connections, subscriptions, the plan watch, health, shutdown; the shared state.
//! - `ownership.rs`: who serves which shard (pure): plans, progress, hand-offs and commits in,
//!   routes and effects out.
//! - `requests.rs`: a request's way: decode, route, serve here, forward or redirect.
//! - `moves.rs`: a move's two ends, carrying out the machines of `migration.rs` (pure).
//! - `host.rs`: one task per local shard, holding its actors; pause/queue for moves.
//! - `store.rs`: the JetStream event log with fenced appends and inline snapshots.
//! - `capture.rs`: an actor's state in a transfer.
//! - `behaviour.rs`: actor kinds (`counter`, `doc`, and the app container's, called by `app.rs`).
//! - `outbox.rs`: delivers actors' sends and records their replies.
//! - `api.rs`: the app API (`/v1/actors/{kind}/{id}`) the app calls its actors through.
//! - `client.rs`: the client library and load generator; `http.rs`, `metrics.rs`, `config.rs`.

pub mod api;
pub mod app;
pub mod behaviour;
pub mod capture;
pub mod client;
pub mod config;
pub mod error;
pub mod host;
pub mod http;
pub mod metrics;
pub mod migration;
pub mod moves;
pub mod node;
pub mod outbox;
pub mod ownership;
pub mod requests;
pub mod store;

pub use error::{Error, Result};
