//! The shard's timers: when to look at each actor with timers (or sends to resume), kept in a
//! compact index ([`LookIndex`]) that holds no actor, so a passivated or evicted actor still
//! fires (reloaded from the log) and a million pending timers cost about 50 bytes each. The
//! actor's own timers, in its log, are the truth; the index only says when to look. A look loads
//! the actor if needed and fires its earliest due timer: an internal request `{"$timer": {}}` that
//! the worker turns into the actor's firing (`commands.rs`), or drops when nothing is due.
//!
//! A shard taken by a move, from the log or after a restart: its actors' pending-work markers
//! (`marker.rs`) say when each needs a look, and the node indexes them when it starts serving
//! the shard (`outbox::resume_pending`), loading no actor before its time.

use super::{Pending, Worker};
use aether_core::protocol::{ActorRef, Op, Request};
use aether_core::timers::{self, TIMER_KEY, Timer, epoch_ms};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::oneshot;

#[cfg(test)]
mod handoff_sim;
mod index;
pub(super) use index::LookIndex;

/// A firing that did not land (the app down, the store unreachable) is tried again after this.
pub const RETRY_FIRING_AFTER: Duration = Duration::from_secs(1);
/// Most actors a worker looks at (fires) at once before it serves requests again.
pub const FIRINGS_PER_TURN: usize = 256;
/// Most actors a worker loads from the log for their looks at once before it serves requests
/// again: a catch-up after an outage loads every timed actor, and requests must not wait behind
/// all of it.
pub const LOADS_PER_TURN: usize = 1;
/// How soon a worker tries a look's load again when the node's are all in progress.
const LOOK_LOAD_WAIT_MS: u64 = 5;

/// The instant at which wall-clock time `due` (ms since the Unix epoch) comes.
#[must_use]
pub fn instant_of(due: u64) -> Instant {
    let now = epoch_ms(SystemTime::now());
    Instant::now() + Duration::from_millis(due.saturating_sub(now))
}

impl Worker {
    /// Indexes the earliest due time of `actor`'s timers as it holds them now (loaded), or forgets
    /// it when it has none.
    pub(super) fn index_timers(&mut self, actor: &ActorRef) {
        let Some(a) = self.actors.get(actor) else {
            return;
        };
        let look = a.snapshot.timers.iter().map(|t| t.due).min();
        self.set_look(actor, look);
    }

    /// Sets when to look at `actor` in the shard's index, keeping the gauges.
    pub(super) fn set_look(&mut self, actor: &ActorRef, look: Option<u64>) {
        let change = self.timers.set(actor, look);
        if change != 0 {
            self.ctx.metrics.timers_pending.inc_by(change);
        }
        self.count_index_bytes();
    }

    /// Keeps the node's gauge of index bytes (this worker's share of it in `index_bytes`).
    pub(super) fn count_index_bytes(&mut self) {
        let now = self.timers.bytes() as i64;
        if now != self.index_bytes {
            self.ctx
                .metrics
                .timer_index_bytes
                .inc_by(now - self.index_bytes);
            self.index_bytes = now;
        }
    }

    /// Indexes what the shard's pending-work markers say (a shard just served): when to look at
    /// each actor not in memory. Actors in memory are indexed from their own timers already.
    pub(super) fn index_markers(&mut self, marked: Vec<(ActorRef, u64)>) {
        for (actor, look) in marked {
            if self.actors.contains_key(&actor) {
                continue;
            }
            let look = self.timers.look_of(&actor).map_or(look, |t| t.min(look));
            self.set_look(&actor, Some(look));
        }
    }

    /// Looks at the actors due now (at most [`FIRINGS_PER_TURN`], of which at most
    /// [`LOADS_PER_TURN`] not in memory): each is loaded if it is not in
    /// memory (which resumes its sends, and removes a marker with nothing behind it), and its
    /// earliest due timer fires, served as a request of its actor, in order with its other
    /// requests.
    pub(super) async fn fire_due(&mut self) {
        let now = epoch_ms(SystemTime::now());
        let retry_at = now + RETRY_FIRING_AFTER.as_millis() as u64;
        let (mut loads, mut looked) = (0, 0);
        while loads < LOADS_PER_TURN && looked < FIRINGS_PER_TURN {
            let Some(actor) = self.timers.take_next(now, retry_at) else {
                break;
            };
            looked += 1;
            if !self.actors.contains_key(&actor) {
                // The node's loads for looks are all in progress: tried again shortly, the
                // requests served meanwhile.
                let Ok(_load) = self.ctx.look_loads.clone().try_acquire_owned() else {
                    self.set_look(&actor, Some(now + LOOK_LOAD_WAIT_MS));
                    break;
                };
                loads += 1;
                self.touch(&actor).await;
                if !self.actors.contains_key(&actor) {
                    // Not loadable now (the store unreachable): looked at again at `retry_at`.
                    continue;
                }
            }
            let Some(due) = self.actors[&actor]
                .snapshot
                .timers
                .iter()
                .map(|t| t.due)
                .min()
            else {
                self.set_look(&actor, None);
                continue;
            };
            if due > now {
                self.set_look(&actor, Some(due));
                continue;
            }
            self.ctx
                .metrics
                .timer_lateness
                .observe(now.saturating_sub(due) as f64 / 1000.0);
            // Nobody waits for a firing's reply: its outcome is its record (or a retry).
            let (tx, _) = oneshot::channel();
            let pending: Pending = (firing_request(actor), tx);
            self.dispatch(pending, 0).await;
        }
    }
}

/// The internal request to fire `actor`'s earliest due timer: `{"$timer": {}}`, no id.
fn firing_request(actor: ActorRef) -> Request {
    let command = serde_json::json!({ TIMER_KEY: {} });
    Request::new(actor, Op::Command { command }, None)
}

/// What an internal firing request (`{"$timer": {}}`, from the shard's index) meets.
pub(super) enum FiringRequest {
    /// Not a firing request.
    NotTimer,
    /// The actor has no such timer due now (fired, cancelled or replaced since it was indexed).
    NotDue,
    /// Due: the request now carries the firing's command and command id.
    Due(Timer, timers::Firing),
}

/// Turns an internal firing request into the firing of the actor's earliest due timer at `now`
/// (the earliest due time, then the name): the command `{"$timer": {name, due, missed, command}}`
/// with its command id ([`timers::timer_id`]).
pub(super) fn fire(req: &mut Request, current: &[Timer], now: u64) -> FiringRequest {
    match (&req.op, &req.id) {
        (Op::Command { command }, None) if timers::is_firing_request(command) => {}
        _ => return FiringRequest::NotTimer,
    }
    let Some((t, f)) = current
        .iter()
        .filter_map(|t| t.fire(now).map(|f| (t, f)))
        .min_by(|(a, _), (b, _)| (a.due, &a.name).cmp(&(b.due, &b.name)))
    else {
        return FiringRequest::NotDue;
    };
    req.id = Some(timers::timer_id(&req.actor, &t.name, f.due));
    req.op = Op::Command {
        command: timers::firing_command(t, &f),
    };
    FiringRequest::Due(t.clone(), f)
}

/// A firing request back in its internal form (`{"$timer": {}}`, no id), so that it is judged
/// again against the actor's timers; any other request as it is.
pub(super) fn unfire(req: Request) -> Request {
    if fired_ticks(&req).is_some() {
        return firing_request(req.actor);
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
    fn a_firing_request_becomes_the_actors_own_firing_and_back() {
        let actor = ActorRef::new("counter", "a");
        let internal = || firing_request(actor.clone());
        let current = [t("y", 300), t("x", 100)];
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
        // Two due: the earliest fires first.
        let mut both = internal();
        let FiringRequest::Due(first, _) = fire(&mut both, &current, 400) else {
            panic!("due");
        };
        assert_eq!(first.name, "x");
        // Fenced and decided again: judged anew against the timers as the log then has them.
        let again = unfire(req);
        assert_eq!(again, internal());
        assert_eq!(fired_ticks(&again), None);
    }
}
