//! aether's node sidecar, one per pod. Data flow through its files:
//!
//! - `node.rs`: wiring: connections, the streams, every task started, shutdown.
//! - `shared.rs`: the state every task reads (ownership and workers under one lock, the NATS
//!   clients) and the progress reports; `health.rs`: readiness; `connect.rs`: NATS connections.
//! - `control.rs`: the plan, progress and `held` keys followed; `ownership.rs` decides (pure):
//!   plans, progress, hand-offs and commits in, routes and effects out.
//! - `requests.rs`: a request's way: taken from NATS, decoded, routed, served here, forwarded or
//!   redirected.
//! - `moves.rs`: a move's two ends, carrying out the effects `driver.rs` (pure) decides from the
//!   machines of `migration.rs` and the ownership; the simulator and the model check run the same
//!   driver.
//! - `host.rs`: one task per local shard, holding its actors; `host/commands.rs`: a request on its
//!   worker (decide, append, reply); `host/lending.rs`: actors lent to a move and staged by one.
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
pub mod connect;
pub mod control;
pub mod driver;
pub mod error;
pub mod health;
pub mod host;
pub mod http;
pub mod inspect;
pub mod large;
pub mod metrics;
pub mod migration;
pub mod moves;
pub mod node;
pub mod outbox;
pub mod ownership;
pub mod requests;
pub mod shared;
pub mod store;

pub use error::{Error, Result};
