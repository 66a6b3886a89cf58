//! Checking timers from the log itself: every record of an actor read straight from the event
//! stream (no node loads the actor), and a periodic timer's firings judged against what the
//! protocol promises: each applied once, never before its due time, on its grid, none after its
//! cancel. Used by the timer tests and the chaos runs.

use aether_core::protocol::{ActorRef, Names};
use aether_core::timers::TIMER_ID_PREFIX;
use aether_node::store::{EventStore, Record};
use futures::StreamExt;
use std::time::Duration;

/// Every record of `actor` (of `prefix`, `shards` shards), oldest first, with the time the stream
/// stored it (ms since the Unix epoch).
pub async fn records(
    js: &async_nats::jetstream::Context,
    prefix: &str,
    shards: u32,
    actor: &ActorRef,
) -> Vec<(Record, u64)> {
    use async_nats::jetstream::consumer::pull::OrderedConfig;
    let store = EventStore::open(js.clone(), Names::new(prefix), 1)
        .await
        .expect("the event store");
    let subject = store.subject(aether_core::hash::shard_of(&actor.id, shards), actor);
    let stream = js
        .get_stream(Names::new(prefix).event_stream())
        .await
        .expect("the event stream");
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: subject,
            ..OrderedConfig::default()
        })
        .await
        .expect("an ordered consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let mut out = Vec::new();
    loop {
        let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(2), messages.next()).await
        else {
            break;
        };
        let info = msg.info().expect("a JetStream message");
        let at = u64::try_from(info.published.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        let pending = info.pending;
        out.push((serde_json::from_slice(&msg.payload).expect("a record"), at));
        if pending == 0 {
            break;
        }
    }
    out
}

/// The firings of timer `name` in a log: (due, stored at), from their command ids
/// (`$timer-{h}-{due}-{name}`).
#[must_use]
pub fn firings(log: &[(Record, u64)], name: &str) -> Vec<(u64, u64)> {
    let suffix = format!("-{name}");
    log.iter()
        .filter_map(|(r, at)| {
            let id = r.cmd.as_deref()?;
            let rest = id.strip_prefix(TIMER_ID_PREFIX)?.strip_suffix(&suffix)?;
            let due = rest.rsplit('-').next()?.parse().ok()?;
            Some((due, *at))
        })
        .collect()
}

/// Checks the periodic timer `name` (period `every` ms) of `actor` in its log, cancelled by the
/// command with id `cancel`: no command applied twice, every firing at or after its due time, the
/// due times on the timer's grid and increasing, none after the cancel. The number of firings, or
/// what is wrong.
pub fn check_periodic(
    actor: &str,
    log: &[(Record, u64)],
    name: &str,
    every: u64,
    cancel: &str,
) -> Result<usize, String> {
    let ids: Vec<&str> = log.iter().filter_map(|(r, _)| r.cmd.as_deref()).collect();
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    if unique.len() != ids.len() {
        return Err(format!("{actor}: a command applied twice: {ids:?}"));
    }
    let ticks = firings(log, name);
    if let Some((due, at)) = ticks.iter().find(|(due, at)| at < due) {
        return Err(format!("{actor}: fired at {at}, before its due time {due}"));
    }
    if let Some(w) = ticks
        .windows(2)
        .find(|w| w[1].0 <= w[0].0 || (w[1].0 - w[0].0) % every != 0)
    {
        return Err(format!("{actor}: ticks off their grid: {w:?}"));
    }
    let Some(cancelled) = log
        .iter()
        .position(|(r, _)| r.cmd.as_deref() == Some(cancel))
    else {
        return Err(format!("{actor}: the cancel {cancel:?} is not in the log"));
    };
    if log[cancelled..].iter().any(|(r, _)| {
        r.cmd
            .as_deref()
            .is_some_and(|c| c.starts_with(TIMER_ID_PREFIX))
    }) {
        return Err(format!("{actor}: a firing after the cancel"));
    }
    Ok(ticks.len())
}
