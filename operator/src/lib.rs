//! aether's operator: `pods -> plan -> status -> NATS`. Its files, in data-flow order:
//!
//! - `membership.rs`: which pods are members (Ready) or draining (being deleted);
//! - `decide.rs`: the reconcile decisions, pure: next status, next plan, Events;
//! - `controller.rs`: the kube-rs Controller that observes, applies the decision (status by
//!   server-side apply first, then the plan to NATS KV) and follows progress reports;
//! - `error.rs`: the operator's one error type;
//! - `metrics.rs`: the operator's metrics;
//! - `credentials.rs`: which Secrets may hold a ShardPlan's NATS credentials and what their keys make;
//! - `crdgen.rs`: the CRD YAML from the Rust types.

pub mod controller;
pub mod crdgen;
pub mod credentials;
pub mod decide;
pub mod error;
pub mod membership;
pub mod metrics;
