//! The node's health as `/readyz` reports it: one value every task writes its part of.

use std::sync::Mutex;

/// Health as `/readyz` reports it, available before NATS is.
#[derive(Debug, Default)]
pub struct Health {
    /// Why the node is not ready; `None` when it is.
    pub problem: Mutex<Option<String>>,
    /// The event stream refused an append for lack of space (cleared by the next append that lands).
    store_full: Mutex<Option<String>>,
    full: std::sync::atomic::AtomicBool,
    /// The app container does not answer (`None` when it does, or when there is no app).
    app: Mutex<Option<String>>,
    /// The plan bucket is not read yet (`None` once it is).
    plan: Mutex<Option<String>>,
}

impl Health {
    /// The event stream is full (`Some(why)`), or takes appends again (`None`). Cheap when nothing
    /// changes: an append that lands only reads a flag.
    pub fn set_store_full(&self, why: Option<String>) {
        use std::sync::atomic::Ordering;
        if why.is_none() && !self.full.load(Ordering::Relaxed) {
            return;
        }
        self.full.store(why.is_some(), Ordering::Relaxed);
        if let Ok(mut p) = self.store_full.lock() {
            *p = why;
        }
    }

    /// Sets or clears the problem.
    pub fn set(&self, problem: Option<String>) {
        if let Ok(mut p) = self.problem.lock() {
            *p = problem;
        }
    }

    /// The app container does not answer (`Some(why)`), or does again (`None`).
    pub fn set_app(&self, why: Option<String>) {
        if let Ok(mut p) = self.app.lock() {
            *p = why;
        }
    }

    /// The current problem: the connection's, else a full event stream, else the app's.
    #[must_use]
    pub fn problem(&self) -> Option<String> {
        let main = self
            .problem
            .lock()
            .map_or_else(|_| Some("health lock poisoned".into()), |p| p.clone());
        main.or_else(|| self.store_full.lock().ok().and_then(|p| p.clone()))
            .or_else(|| self.app.lock().ok().and_then(|p| p.clone()))
            .or_else(|| self.plan.lock().ok().and_then(|p| p.clone()))
    }

    /// The plan bucket is not read yet (`Some(why)`), or it is (`None`).
    pub fn set_plan(&self, why: Option<String>) {
        if let Ok(mut p) = self.plan.lock() {
            *p = why;
        }
    }
}
