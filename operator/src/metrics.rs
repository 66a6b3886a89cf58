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

/// What the metrics count of one ShardPlan (kept by ShardPlan, served only as totals).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlanFigures {
    /// Moves not done.
    pub moving: u32,
    /// Its NATS could not be reached or read at its last reconcile.
    pub nats_unreachable: bool,
    /// Its `Degraded` condition is true.
    pub degraded: bool,
}

/// Operator metrics, served at `/metrics`. The operator serves every namespace and its endpoints
/// answer any pod that reaches them, so they name no ShardPlan: per-ShardPlan figures are totals
/// here, and each ShardPlan's own epoch, moves and conditions are in its status, which only those
/// allowed to read it see.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Reconciles run.
    pub reconciles: Counter,
    /// Reconcile errors by reason.
    pub errors: Family<Reason, Counter>,
    /// ShardPlans reconciled and not deleted.
    shardplans: Gauge,
    /// Moves not done, over all ShardPlans.
    moving: Gauge,
    /// ShardPlans whose NATS could not be reached or read.
    unreachable: Gauge,
    /// ShardPlans whose `Degraded` condition is true.
    degraded: Gauge,
    /// Each ShardPlan's figures, by namespace/name (never served as such).
    plans: Mutex<std::collections::BTreeMap<String, PlanFigures>>,
    /// Seconds to decide (plan computation included).
    pub plan_seconds: Histogram,
    /// Progress reports that did not decode.
    pub malformed_reports: Counter,
    /// Why the operator cannot do its job (its watches fail), `None` when it can. `/readyz`
    /// answers 503 with it. One ShardPlan's NATS is that ShardPlan's problem (its `Degraded`
    /// condition), not the operator's.
    watches: Mutex<Option<String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("aether_operator");
        let reconciles = Counter::default();
        let errors = Family::<Reason, Counter>::default();
        let shardplans = Gauge::default();
        let moving = Gauge::default();
        let unreachable = Gauge::default();
        let degraded = Gauge::default();
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
        registry.register(
            "shardplans",
            "ShardPlans reconciled and not deleted",
            shardplans.clone(),
        );
        registry.register(
            "moves_in_flight",
            "Shard moves not done, over all ShardPlans",
            moving.clone(),
        );
        registry.register(
            "shardplans_nats_unreachable",
            "ShardPlans whose NATS could not be reached or read at their last reconcile",
            unreachable.clone(),
        );
        registry.register(
            "shardplans_degraded",
            "ShardPlans whose Degraded condition is true",
            degraded.clone(),
        );
        for reason in crate::error::REASONS {
            let _ = errors.get_or_create(&Reason { reason });
        }
        registry.register(
            "decide_seconds",
            "Time to decide a reconcile, plan included",
            plan_seconds.clone(),
        );
        Self {
            registry,
            reconciles,
            errors,
            shardplans,
            moving,
            unreachable,
            degraded,
            plans: Mutex::new(std::collections::BTreeMap::new()),
            plan_seconds,
            malformed_reports,
            watches: Mutex::new(None),
        }
    }
}

impl Metrics {
    /// Records the figures of ShardPlan `key` (`namespace/name`), or forgets it (`None`: deleted),
    /// and sets the totals.
    pub fn plan(&self, key: &str, figures: Option<PlanFigures>) {
        let Ok(mut plans) = self.plans.lock() else {
            return;
        };
        match figures {
            Some(f) => {
                plans.insert(key.to_owned(), f);
            }
            None => {
                plans.remove(key);
            }
        }
        self.shardplans.set(plans.len() as i64);
        self.moving
            .set(plans.values().map(|f| i64::from(f.moving)).sum());
        self.unreachable
            .set(plans.values().filter(|f| f.nats_unreachable).count() as i64);
        self.degraded
            .set(plans.values().filter(|f| f.degraded).count() as i64);
    }

    /// Records (`Some`) or clears (`None`) why the operator's watches fail.
    pub fn watches(&self, why: Option<String>) {
        if let Ok(mut w) = self.watches.lock() {
            *w = why;
        }
    }

    /// Why the operator cannot do its job; `None` when it can.
    #[must_use]
    pub fn problem(&self) -> Option<String> {
        self.watches
            .lock()
            .ok()?
            .as_ref()
            .map(|w| format!("watches: {w}\n"))
    }

    /// Prometheus text exposition.
    #[must_use]
    pub fn render(&self) -> String {
        aether_nats::process::render_metrics(&self.registry)
    }
}
