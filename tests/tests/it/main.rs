//! The tests crate's integration tests in one binary (one compile and one link instead of one per
//! file): each module is one concern, run against real nats-server processes, the workspace's
//! binaries and, for the operator, a real kube-apiserver. `e2e_k8s` (a whole control plane, a
//! kubelet and a cluster of pods, one test at a time) is a binary of its own.
//! Run one module: `cargo test --release -p aether-tests --test it control_faults::`.

mod app_batch;
mod app_protocol;
mod bad_input;
mod chaos;
mod control_faults;
mod exactly_once;
mod inspect;
mod lease;
mod node_basics;
mod node_http;
mod node_migration;
mod operator_k8s;
mod retries;
mod security;
mod tenants;
mod timers;
