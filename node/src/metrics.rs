//! Prometheus metrics of a node, served at `/metrics`. Labels come from fixed sets, never from ids.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// A label with one fixed-vocabulary value.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    /// The value.
    pub kind: &'static str,
}

/// Every metric of a node.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Requests by route: local, forwarded, redirected, unavailable.
    pub messages: Family<Kind, Counter>,
    /// Messages that could not be decoded, by message type.
    pub malformed: Family<Kind, Counter>,
    /// Plans ignored because their epoch was not above the one held.
    pub stale_plans: Counter,
    /// Plan epoch held.
    pub epoch: Gauge,
    /// Actors in memory.
    pub actors: Gauge,
    /// Requests queued behind paused (moving) shards.
    pub queued: Gauge,
    /// Move durations, seconds, for moves this node was the source of.
    pub move_seconds: Histogram,
    /// Failures by reason.
    pub failures: Family<Kind, Counter>,
    /// Moves by outcome (done, failed) as source.
    pub moves: Family<Kind, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("aether_node");
        let messages = Family::<Kind, Counter>::default();
        let malformed = Family::<Kind, Counter>::default();
        let failures = Family::<Kind, Counter>::default();
        let moves = Family::<Kind, Counter>::default();
        let stale_plans = Counter::default();
        let epoch = Gauge::default();
        let actors = Gauge::default();
        let queued = Gauge::default();
        let move_seconds =
            Histogram::new([0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0]);
        registry.register("messages", "Requests by route", messages.clone());
        registry.register(
            "malformed",
            "Undecodable messages by type",
            malformed.clone(),
        );
        registry.register(
            "stale_plans",
            "Plans ignored for a non-increasing epoch",
            stale_plans.clone(),
        );
        registry.register("plan_epoch", "Plan epoch held", epoch.clone());
        registry.register("actors_hosted", "Actors in memory", actors.clone());
        registry.register(
            "queue_depth",
            "Requests queued behind moving shards",
            queued.clone(),
        );
        registry.register(
            "move_duration_seconds",
            "Shard move durations (source side)",
            move_seconds.clone(),
        );
        registry.register("failures", "Failures by reason", failures.clone());
        registry.register(
            "moves",
            "Shard moves by outcome (source side)",
            moves.clone(),
        );
        Self {
            registry,
            messages,
            malformed,
            stale_plans,
            epoch,
            actors,
            queued,
            move_seconds,
            failures,
            moves,
        }
    }
}

impl Metrics {
    /// Counts one occurrence in a labelled family.
    pub fn inc(family: &Family<Kind, Counter>, kind: &'static str) {
        family.get_or_create(&Kind { kind }).inc();
    }

    /// Prometheus text exposition.
    #[must_use]
    pub fn render(&self) -> String {
        crate::process::render_metrics(&self.registry)
    }
}
