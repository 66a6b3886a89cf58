//! The operator's metrics, served at `/metrics` (`aether_operator_*`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Mutex;

/// Label of per-reason metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    /// The reason.
    pub reason: &'static str,
}

/// Label of per-ShardPlan metrics (bounded by the number of ShardPlans).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PlanLabel {
    /// namespace/name.
    pub shardplan: String,
}

/// Operator metrics, served at `/metrics`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Reconciles run.
    pub reconciles: Counter,
    /// Reconcile errors by reason.
    pub errors: Family<Reason, Counter>,
    /// Current epoch per ShardPlan.
    pub epoch: Family<PlanLabel, Gauge>,
    /// Moves not done per ShardPlan.
    pub moving: Family<PlanLabel, Gauge>,
    /// Seconds to decide (plan computation included).
    pub plan_seconds: Histogram,
    /// Progress reports that did not decode.
    pub malformed_reports: Counter,
    /// Why the operator cannot do its job, by source (`watches`, `nats namespace/name`); empty
    /// when it can. `/readyz` answers 503 with them.
    pub problems: Mutex<std::collections::BTreeMap<String, String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("aether_operator");
        let reconciles = Counter::default();
        let errors = Family::<Reason, Counter>::default();
        let epoch = Family::<PlanLabel, Gauge>::default();
        let moving = Family::<PlanLabel, Gauge>::default();
        let plan_seconds = Histogram::new([0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.25]);
        let malformed_reports = Counter::default();
        registry.register(
            "malformed_reports",
            "Progress reports that did not decode",
            malformed_reports.clone(),
        );
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconcile errors by reason",
            errors.clone(),
        );
        registry.register("plan_epoch", "Current plan epoch", epoch.clone());
        registry.register("moves_in_flight", "Shard moves not done", moving.clone());
        registry.register(
            "decide_seconds",
            "Time to decide a reconcile, plan included",
            plan_seconds.clone(),
        );
        Self {
            registry,
            reconciles,
            errors,
            epoch,
            moving,
            plan_seconds,
            malformed_reports,
            problems: Mutex::new(std::collections::BTreeMap::new()),
        }
    }
}

impl Metrics {
    /// Records (`Some`) or clears (`None`) a problem of `source`.
    pub fn problem(&self, source: &str, why: Option<String>) {
        if let Ok(mut p) = self.problems.lock() {
            match why {
                Some(w) => {
                    p.insert(source.to_owned(), w);
                }
                None => {
                    p.remove(source);
                }
            }
        }
    }

    /// The problems, one per line; `None` when there are none.
    #[must_use]
    pub fn problems(&self) -> Option<String> {
        let p = self.problems.lock().ok()?;
        (!p.is_empty()).then(|| {
            p.iter()
                .map(|(k, v)| format!("{k}: {v}\n"))
                .collect::<String>()
        })
    }

    /// Prometheus text exposition.
    #[must_use]
    pub fn render(&self) -> String {
        aether_nats::process::render_metrics(&self.registry)
    }
}
