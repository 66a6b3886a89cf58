//! aether's operator: watches a ShardPlan's pods, plans with `aether-core`, publishes over NATS.

pub mod crdgen;
