//! The node's health as `/readyz` reports it: one value every task writes its part of.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Why the node is not ready, by part; ready when every part is `None`. Read in this order: the
/// first problem is the one `/readyz` names.
#[derive(Debug, Default)]
struct Parts {
    /// The NATS connections and JetStream.
    connection: Option<String>,
    /// The event stream refused an append for lack of space (cleared by the next append that lands).
    store_full: Option<String>,
    /// The app container does not answer (`None` when it does, or when there is no app).
    app: Option<String>,
    /// The plan bucket is not read yet (`None` once it is).
    plan: Option<String>,
    /// The node holds no lease on serving (`control/held.rs`): it answers `unavailable`.
    lease: Option<String>,
}

/// Health as `/readyz` reports it, available before NATS is.
#[derive(Debug, Default)]
pub struct Health {
    parts: Mutex<Parts>,
    /// Whether `store_full` is set: an append that lands reads only this.
    full: AtomicBool,
}

impl Health {
    fn update(&self, f: impl FnOnce(&mut Parts)) {
        if let Ok(mut p) = self.parts.lock() {
            f(&mut p);
        }
    }

    /// The event stream is full (`Some(why)`), or takes appends again (`None`). Cheap when nothing
    /// changes: an append that lands only reads a flag.
    pub fn set_store_full(&self, why: Option<String>) {
        if why.is_none() && !self.full.load(Ordering::Relaxed) {
            return;
        }
        self.full.store(why.is_some(), Ordering::Relaxed);
        self.update(|p| p.store_full = why);
    }

    /// Sets or clears the connection's problem.
    pub fn set(&self, problem: Option<String>) {
        self.update(|p| p.connection = problem);
    }

    /// The app container does not answer (`Some(why)`), or does again (`None`).
    pub fn set_app(&self, why: Option<String>) {
        self.update(|p| p.app = why);
    }

    /// The plan bucket is not read yet (`Some(why)`), or it is (`None`).
    pub fn set_plan(&self, why: Option<String>) {
        self.update(|p| p.plan = why);
    }

    /// The node holds no lease on serving (`Some(why)`), or does (`None`).
    pub fn set_lease(&self, why: Option<String>) {
        self.update(|p| p.lease = why);
    }

    /// The current problem: the connection's, else a full event stream, else the app's, else the
    /// plan's, else the lease's; `None` when the node is ready.
    #[must_use]
    pub fn problem(&self) -> Option<String> {
        let Ok(p) = self.parts.lock() else {
            return Some("health lock poisoned".into());
        };
        p.connection
            .clone()
            .or_else(|| p.store_full.clone())
            .or_else(|| p.app.clone())
            .or_else(|| p.plan.clone())
            .or_else(|| p.lease.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::Health;

    #[test]
    fn the_first_problem_by_part_is_the_one_named_and_ready_when_none() {
        let h = Health::default();
        assert_eq!(h.problem(), None);
        h.set_plan(Some("reading the plan bucket".into()));
        h.set_app(Some("the app does not answer".into()));
        assert_eq!(h.problem().as_deref(), Some("the app does not answer"));
        h.set_store_full(Some("the event stream is full".into()));
        h.set(Some("NATS unreachable".into()));
        assert_eq!(h.problem().as_deref(), Some("NATS unreachable"));
        h.set(None);
        assert_eq!(h.problem().as_deref(), Some("the event stream is full"));
        h.set_store_full(None);
        h.set_app(None);
        h.set_plan(None);
        assert_eq!(h.problem(), None);
    }
}
