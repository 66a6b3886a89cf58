//! aether's core: everything the operator and the node sidecars must agree on, with no I/O.
//!
//! The data flow is `pods -> operator -> plan -> NATS -> nodes -> routing`. This crate holds the pure
//! parts of it, each in a file named for what it holds:
//!
//! - [`hash`]: where an actor lives: `shard(actor_id)`, the same in every process and language.
//! - [`anchor`]: AnchorHash, the consistent hash that places shards on member buckets.
//! - [`shardmap`]: the compact shard -> bucket table that travels in plans and status.
//! - [`plan`]: the planner, `plan(previous, members, spec) -> Plan`, deterministic and minimal.
//! - [`types`]: strategy, members, moves and their phases, shared by all of the above.
//! - [`crd`]: the `ShardPlan` custom resource (spec, status, validation); behind the default feature
//!   `k8s` (the node sidecar builds without kube and k8s-openapi).
//! - [`protocol`]: the versioned wire messages between clients, nodes and the operator.
//! - [`route`]: the O(1) `actor id -> owner` table a node builds from each plan.

pub mod anchor;
#[cfg(feature = "k8s")]
pub mod crd;
pub mod error;
pub mod hash;
pub mod plan;
pub mod protocol;
pub mod route;
pub mod shardmap;
pub mod types;

pub use error::{Error, Result};
/// Timers live with the protocol (their fields are part of it); also reachable as `timers`.
pub use protocol::timers;
