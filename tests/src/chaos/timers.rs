//! Timers under the chaos schedule: `counter` actors with a periodic timer (each firing adds 1),
//! set before the first fault and cancelled after the last; then each actor's whole log is checked
//! ([`crate::timers::check_periodic`]: every firing applied once, never before its due time, on its
//! grid, none after the cancel) and its state against its firings.

use aether_core::protocol::{ActorRef, Op, Outcome, Request};
use aether_node::client::Client;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// The timers' period, milliseconds.
pub const EVERY: u64 = 1_000;

/// What the timer check found.
#[derive(Clone, Debug, Default)]
pub struct TimerVerdict {
    /// Actors with a periodic timer.
    pub actors: usize,
    /// Firings found in their logs.
    pub firings: usize,
    /// What broke a promise, for people.
    pub violations: Vec<String>,
}

/// Sends `command` to `actor` with command id `id` until a final answer (the same id each time,
/// so it is applied once); the reply's `ok`, or why there is none.
async fn until_answered(
    client: &Client,
    actor: &ActorRef,
    command: Value,
    id: &str,
) -> Result<aether_core::protocol::ActorReply, String> {
    let req = Request::new(actor.clone(), Op::Command { command }, Some(id.to_owned()));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match client.send(&req).await {
            Ok(r) => {
                return match r.outcome {
                    Outcome::Ok(ok) => Ok(ok),
                    Outcome::Error(e) => Err(format!("{}: {id}: {e:?}", actor.id)),
                };
            }
            Err(e) if Instant::now() >= deadline => return Err(format!("{}: {id}: {e}", actor.id)),
            Err(_) => {}
        }
    }
}

/// Sets a periodic timer on each of `n` counters; the actors.
pub async fn start(client: &Client, n: usize) -> Result<Vec<ActorRef>, String> {
    let actors: Vec<ActorRef> = (0..n)
        .map(|i| ActorRef::new("counter", format!("timer-{i}")))
        .collect();
    let schedule = json!({"schedule": {"name": "tick", "every": EVERY, "command": {"add": 1}}});
    for a in &actors {
        until_answered(client, a, schedule.clone(), "timer-set").await?;
    }
    Ok(actors)
}

/// Cancels the timers and checks every actor's log and state.
pub async fn finish(
    client: &Client,
    js: &async_nats::jetstream::Context,
    prefix: &str,
    shards: u32,
    actors: &[ActorRef],
) -> TimerVerdict {
    let mut v = TimerVerdict {
        actors: actors.len(),
        ..TimerVerdict::default()
    };
    for a in actors {
        let ok = match until_answered(client, a, json!({"cancelTimer": "tick"}), "timer-stop").await
        {
            Ok(ok) => ok,
            Err(e) => {
                v.violations
                    .push(format!("the cancel was not answered: {e}"));
                continue;
            }
        };
        let log = crate::timers::records(js, prefix, shards, a).await;
        match crate::timers::check_periodic(&a.id, &log, "tick", EVERY, "timer-stop") {
            Ok(fired) => {
                v.firings += fired;
                // The cancel's reply: the state counts exactly the firings before it.
                if ok.state["value"] != json!(fired) || ok.version != log.len() as u64 {
                    v.violations.push(format!(
                        "{}: value {} version {} after {fired} firings and {} records",
                        a.id,
                        ok.state["value"],
                        ok.version,
                        log.len()
                    ));
                }
            }
            Err(e) => v.violations.push(e),
        }
    }
    v
}
