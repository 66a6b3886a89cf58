//! The shard's timer index: the next due time of every timer of the shard's actors this worker
//! knows of (loaded actors, and passivated or evicted ones: they still fire, reloading from the
//! log). The actor's own timers, in its log, are the truth; the index only says when to look. A
//! firing is an internal request `{"$timer": {"name"}}` that the worker turns into the actor's
//! firing (`commands.rs`), or drops when the actor's timer is no longer due.
//!
//! A shard taken by a move or from the log: the actors with timers carry a pending-work marker, and
//! the node loads them when it starts serving the shard (`outbox::resume_pending`), which indexes
//! their timers.

use super::{Pending, Worker};
use aether_core::protocol::{ActorRef, Op, Request};
use aether_core::timers::{self, TIMER_KEY, Timer, epoch_ms};
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::oneshot;

/// A firing that did not land (the app down, the store unreachable) is tried again after this.
pub const RETRY_FIRING_AFTER: Duration = Duration::from_secs(1);
/// Most firings a worker starts at once before it serves requests again.
pub const FIRINGS_PER_TURN: usize = 256;

/// Due times of a shard's timers.
#[derive(Debug, Default)]
pub(super) struct TimerIndex {
    due: BTreeSet<(u64, ActorRef, String)>,
    by_actor: HashMap<ActorRef, Vec<(u64, String)>>,
}

impl TimerIndex {
    /// Replaces what the index holds of `actor` by its `timers`; the change in entries.
    pub fn set(&mut self, actor: &ActorRef, timers: &[Timer]) -> i64 {
        let before = self.forget(actor);
        if timers.is_empty() {
            return -before;
        }
        let entries: Vec<(u64, String)> = timers.iter().map(|t| (t.due, t.name.clone())).collect();
        for (due, name) in &entries {
            self.due.insert((*due, actor.clone(), name.clone()));
        }
        let added = entries.len() as i64;
        self.by_actor.insert(actor.clone(), entries);
        added - before
    }

    fn forget(&mut self, actor: &ActorRef) -> i64 {
        let Some(old) = self.by_actor.remove(actor) else {
            return 0;
        };
        for (due, name) in &old {
            self.due.remove(&(*due, actor.clone(), name.clone()));
        }
        old.len() as i64
    }

    /// The earliest due time held.
    #[must_use]
    pub fn next(&self) -> Option<u64> {
        self.due.first().map(|(due, _, _)| *due)
    }

    /// Up to `max` entries due by `now`, each moved to `retry_at` (replaced when its firing lands).
    pub fn take_due(
        &mut self,
        now: u64,
        max: usize,
        retry_at: u64,
    ) -> Vec<(u64, ActorRef, String)> {
        let mut out = Vec::new();
        while out.len() < max {
            match self.due.first() {
                Some((due, _, _)) if *due <= now => {}
                _ => break,
            }
            let Some((due, actor, name)) = self.due.pop_first() else {
                break;
            };
            self.due.insert((retry_at, actor.clone(), name.clone()));
            if let Some(entries) = self.by_actor.get_mut(&actor)
                && let Some(e) = entries.iter_mut().find(|(d, n)| *d == due && *n == name)
            {
                e.0 = retry_at;
            }
            out.push((due, actor, name));
        }
        out
    }

    /// Entries held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.due.len()
    }
}

/// The instant at which wall-clock time `due` (ms since the Unix epoch) comes.
#[must_use]
pub fn instant_of(due: u64) -> Instant {
    let now = epoch_ms(SystemTime::now());
    Instant::now() + Duration::from_millis(due.saturating_sub(now))
}

impl Worker {
    /// Indexes `actor`'s timers as it holds them now (loaded), or forgets them.
    pub(super) fn index_timers(&mut self, actor: &ActorRef) {
        let change = match self.actors.get(actor) {
            Some(a) => self.timers.set(actor, &a.snapshot.timers),
            None => return,
        };
        if change != 0 {
            self.ctx.metrics.timers_pending.inc_by(change);
        }
    }

    /// Starts the firings due now (at most [`FIRINGS_PER_TURN`]); each is served as a request of
    /// its actor, in order with the actor's other requests.
    pub(super) async fn fire_due(&mut self) {
        let now = epoch_ms(SystemTime::now());
        let retry_at = now + RETRY_FIRING_AFTER.as_millis() as u64;
        for (due, actor, name) in self.timers.take_due(now, FIRINGS_PER_TURN, retry_at) {
            self.ctx
                .metrics
                .timer_lateness
                .observe(now.saturating_sub(due) as f64 / 1000.0);
            let command = serde_json::json!({ TIMER_KEY: { "name": name } });
            let req = Request::new(actor, Op::Command { command }, None);
            // Nobody waits for a firing's reply: its outcome is its record (or a retry).
            let (tx, _) = oneshot::channel();
            let pending: Pending = (req, tx);
            self.dispatch(pending, 0).await;
        }
    }
}

/// What an internal firing request (`{"$timer": {"name"}}`, from the shard's timer index) meets.
pub(super) enum FiringRequest {
    /// Not a firing request.
    NotTimer,
    /// The actor has no such timer due now (fired, cancelled or replaced since it was indexed).
    NotDue,
    /// Due: the request now carries the firing's command and command id.
    Due(Timer, timers::Firing),
}

/// Turns an internal firing request into the firing of the actor's own timer at `now`: the
/// command `{"$timer": {name, due, missed, command}}` with its command id ([`timers::timer_id`]).
pub(super) fn fire(req: &mut Request, current: &[Timer], now: u64) -> FiringRequest {
    let name = match (&req.op, &req.id) {
        (Op::Command { command }, None) => match timers::requested_firing(command) {
            Some(name) => name.to_owned(),
            None => return FiringRequest::NotTimer,
        },
        _ => return FiringRequest::NotTimer,
    };
    let Some(t) = current.iter().find(|t| t.name == name) else {
        return FiringRequest::NotDue;
    };
    let Some(f) = t.fire(now) else {
        return FiringRequest::NotDue;
    };
    req.id = Some(timers::timer_id(&req.actor, &name, f.due));
    req.op = Op::Command {
        command: timers::firing_command(t, &f),
    };
    FiringRequest::Due(t.clone(), f)
}

/// A firing request back in its internal form (`{"$timer": {"name"}}`, no id), so that it is
/// judged again against the actor's timers; any other request as it is.
pub(super) fn unfire(mut req: Request) -> Request {
    if fired_ticks(&req).is_some()
        && let Op::Command { command } = &req.op
        && let Some(name) = command[timers::TIMER_KEY]["name"].as_str()
    {
        let command = serde_json::json!({ timers::TIMER_KEY: { "name": name } });
        req.op = Op::Command { command };
        req.id = None;
    }
    req
}

/// The ticks a firing request coalesced (`missed`), when it is a firing.
pub(super) fn fired_ticks(req: &Request) -> Option<u64> {
    if !req
        .id
        .as_deref()
        .is_some_and(|id| id.starts_with(timers::TIMER_ID_PREFIX))
    {
        return None;
    }
    match &req.op {
        Op::Command { command } => Some(command[timers::TIMER_KEY]["missed"].as_u64().unwrap_or(0)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn t(name: &str, due: u64) -> Timer {
        Timer {
            name: name.into(),
            due,
            every: None,
            command: Value::Null,
            catch_up: 0,
        }
    }

    #[test]
    fn the_index_follows_each_actors_timers_and_postpones_what_it_hands_out() {
        let mut ix = TimerIndex::default();
        let a = ActorRef::new("counter", "a");
        let b = ActorRef::new("counter", "b");
        assert_eq!(ix.set(&a, &[t("x", 10), t("y", 30)]), 2);
        assert_eq!(ix.set(&b, &[t("x", 20)]), 1);
        assert_eq!(ix.next(), Some(10));
        let due = ix.take_due(25, 10, 1_000);
        assert_eq!(
            due.iter()
                .map(|(d, a, n)| (*d, a.id.as_str(), n.as_str()))
                .collect::<Vec<_>>(),
            vec![(10, "a", "x"), (20, "b", "x")]
        );
        assert_eq!((ix.next(), ix.len()), (Some(30), 3));
        // The firing landed: the actor's timers as its record left them replace the entries.
        assert_eq!(ix.set(&a, &[t("y", 30)]), -1);
        assert_eq!(ix.set(&b, &[]), -1);
        assert_eq!((ix.next(), ix.len()), (Some(30), 1));
        assert!(ix.take_due(29, 10, 1_000).is_empty());
    }

    #[test]
    fn a_firing_request_becomes_the_actors_own_firing_and_back() {
        let actor = ActorRef::new("counter", "a");
        let internal = || {
            let command = serde_json::json!({ TIMER_KEY: { "name": "x" } });
            Request::new(actor.clone(), Op::Command { command }, None)
        };
        let current = [t("x", 100)];
        // Not due yet, or no such timer: nothing to fire.
        assert!(matches!(
            fire(&mut internal(), &current, 99),
            FiringRequest::NotDue
        ));
        assert!(matches!(
            fire(&mut internal(), &[], 500),
            FiringRequest::NotDue
        ));
        // A client's command is never a firing, whatever its shape.
        let mut client = internal();
        client.id = Some("c-1".into());
        assert!(matches!(
            fire(&mut client, &current, 500),
            FiringRequest::NotTimer
        ));
        let mut req = internal();
        let FiringRequest::Due(timer, f) = fire(&mut req, &current, 500) else {
            panic!("due");
        };
        assert_eq!(
            (timer.name.as_str(), f.due, f.missed, f.next),
            ("x", 100, 0, None)
        );
        assert_eq!(req.id, Some(timers::timer_id(&actor, "x", 100)));
        assert_eq!(fired_ticks(&req), Some(0));
        // Fenced and decided again: judged anew against the timers as the log then has them.
        let again = unfire(req);
        assert_eq!(again, internal());
        assert_eq!(fired_ticks(&again), None);
    }
}
