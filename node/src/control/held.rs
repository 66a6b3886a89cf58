//! The `held.{pod}` keys of the plan bucket: this node's own (the plan it holds, rewritten every
//! [`lease::RENEW_EVERY`] as its lease on serving) and the other pods' (followed; read directly
//! while a plan waits for some of them). The rules are pure ([`lease`], [`Ownership`]); this
//! carries them out.
//!
//! [`Ownership`]: crate::ownership::Ownership

use super::{LEAVERS_WAIT, Shared};
use crate::error::{Error, Result};
use crate::metrics::Malformed;
use crate::ownership::lease::{self, HeldSeen, Wait};
use crate::shared::Hold;
use aether_core::protocol::{Held, Names, PlanMessage, VERSION, decode, encode};
use async_nats::jetstream::kv;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How often a node whose plan waits for other pods reads their `held.{pod}` keys directly, at most.
pub const HELD_POLL_EVERY: Duration = Duration::from_secs(1);

/// Takes each plan's hold once the workers that plan stopped have finished (their appends landed,
/// what they held answered): from then on this node serves nothing by an older plan, and
/// [`keep_lease`] says so.
pub(crate) async fn publish_held(
    shared: Arc<Shared>,
    holds: Option<tokio::sync::mpsc::UnboundedReceiver<Hold>>,
) {
    let Some(mut holds) = holds else { return };
    while let Some((epoch, answering)) = holds.recv().await {
        for task in answering {
            let _ = task.await;
        }
        shared.held_epoch.send_replace(epoch);
    }
}

/// The one writer of `held.{me}`: at once when the plan held changes, else every
/// [`lease::RENEW_EVERY`]. Each write that lands extends the lease by [`lease::LEASE`] from when it
/// was sent; after a lapse (or before the first write) the plan is read directly before the lease
/// counts again, so the node serves again only by a plan at least as new as any written before.
pub(crate) async fn keep_lease(shared: Arc<Shared>) {
    let key = Names::held_key(&shared.me);
    let mut epochs = shared.held_epoch.subscribe();
    let mut tick = tokio::time::interval(lease::RENEW_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut bucket: Option<kv::Store> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = epochs.changed() => if changed.is_err() { return },
        }
        let epoch = *epochs.borrow_and_update();
        if !shared.serving_lease() {
            shared
                .host
                .health
                .set_lease(Some("no lease: held.{pod} not written lately".into()));
        }
        let Ok(body) = encode(&Held {
            v: VERSION,
            node: shared.me.clone(),
            epoch,
            lease_ms: Some(lease::LEASE.as_millis() as u64),
        }) else {
            continue;
        };
        let store = match &bucket {
            Some(b) => b,
            None => match shared.plan_bucket().await {
                Ok(b) => bucket.insert(b),
                Err(e) => {
                    tracing::warn!(error = %e, "plan bucket, to say which plan this node holds");
                    continue;
                }
            },
        };
        let sent = Instant::now();
        match tokio::time::timeout(lease::LEASE, store.put(&key, body.into())).await {
            Ok(Ok(_)) => {
                let (until, read_plan) = lease::renewed(sent, Instant::now(), shared.lease_until());
                if read_plan && let Err(e) = take_plan(&shared, store).await {
                    tracing::warn!(error = %e, "could not read the plan after the lease lapsed");
                    continue;
                }
                shared.renew_lease(until);
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, epoch, "could not renew this node's lease (held.{{me}})");
                bucket = None;
            }
            Err(_) => tracing::warn!(epoch, "renewing this node's lease (held.{{me}}) timed out"),
        }
    }
}

/// Reads the plan directly and takes it if it is newer than the one held.
async fn take_plan(shared: &Arc<Shared>, bucket: &kv::Store) -> Result<()> {
    let entry = bucket
        .entry(Names::PLAN_KEY)
        .await
        .map_err(|e| Error::Nats(format!("read plan: {e}")))?;
    let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
        return Ok(());
    };
    let plan = decode::<PlanMessage>(&entry.value)?;
    if plan.epoch > shared.state().own.epoch() && plan.validate().is_ok() {
        shared.on_plan(plan, Some(stamp_ms(&entry)));
    }
    Ok(())
}

/// When the server stamped an entry, ms since the Unix epoch.
pub(crate) fn stamp_ms(entry: &kv::Entry) -> u64 {
    u64::try_from(entry.created.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

/// A pod's `held.{pod}` key as it is now (`None`: none, or one that does not decode).
async fn read_held(bucket: &kv::Store, pod: &str) -> Option<HeldSeen> {
    let entry = bucket.entry(Names::held_key(pod)).await.ok()??;
    let held = decode::<Held>(&entry.value).ok()?;
    Some(HeldSeen {
        epoch: held.epoch,
        written_ms: stamp_ms(&entry),
        lease_ms: held.lease_ms,
    })
}

impl Shared {
    /// While plan `epoch` (stamped `plan_ms` by the server, taken at `taken`) waits for pods to
    /// hold it: reads their keys, stops waiting for each that holds it or whose lease has lapsed,
    /// and for pods without a lease that left the plan after [`LEAVERS_WAIT`].
    pub(crate) async fn wait_for_pods(self: Arc<Self>, epoch: u64, plan_ms: Option<u64>) {
        let taken = Instant::now();
        let mut bucket: Option<kv::Store> = None;
        loop {
            let awaiting: Vec<String> = {
                let st = self.state();
                if st.own.epoch() != epoch {
                    return;
                }
                st.own.awaiting().into_iter().map(str::to_owned).collect()
            };
            if awaiting.is_empty() {
                return;
            }
            let mut next = HELD_POLL_EVERY;
            let store = match &bucket {
                Some(b) => Some(b),
                None => self.plan_bucket().await.ok().map(|b| &*bucket.insert(b)),
            };
            for pod in awaiting {
                let seen = match store {
                    Some(b) => read_held(b, &pod).await,
                    None => None,
                };
                let now_ms = plan_ms.map(|w| w + taken.elapsed().as_millis() as u64);
                let wait = match now_ms {
                    Some(now) => lease::wait(seen, epoch, now),
                    None => Wait::Unknown,
                };
                let settled = match wait {
                    Wait::Held => {
                        self.on_held(&pod, seen.map_or(epoch, |s| s.epoch));
                        None
                    }
                    Wait::Lapsed => {
                        tracing::info!(pod, epoch, "its lease has lapsed: not waited for");
                        self.state().own.stop_waiting_for(&pod, epoch)
                    }
                    Wait::For(d) => {
                        next = next.min(d);
                        None
                    }
                    Wait::Unknown => match LEAVERS_WAIT.checked_sub(taken.elapsed()) {
                        Some(left) if !left.is_zero() => {
                            next = next.min(left);
                            None
                        }
                        _ => self.state().own.stop_waiting_for_non_members(epoch),
                    },
                };
                self.start_settled(settled);
            }
            tokio::time::sleep(next).await;
        }
    }
}

/// Follows the other nodes' `held.{pod}` keys (a pod that says it holds the plan is not waited for
/// any more); [`Shared::wait_for_pods`] reads them directly besides, a watch can stall silently with
/// its server.
pub(crate) async fn watch_held(shared: Arc<Shared>) {
    loop {
        let result: Result<()> = async {
            let bucket = shared.plan_bucket().await?;
            let mut watch = bucket
                .watch_with_history(Names::HELD_KEYS)
                .await
                .map_err(|e| Error::Nats(format!("watch held: {e}")))?;
            while let Some(entry) = watch.next().await {
                let entry = entry.map_err(|e| Error::Nats(format!("watch held: {e}")))?;
                if entry.operation != kv::Operation::Put {
                    continue;
                }
                let Some(pod) = entry.key.strip_prefix("held.") else {
                    continue;
                };
                match decode::<Held>(&entry.value) {
                    Ok(h) => shared.on_held(pod, h.epoch),
                    Err(e) => {
                        shared.metrics().malformed(Malformed::Held);
                        tracing::warn!(error = %e, key = %entry.key, "ignoring a malformed held key");
                    }
                }
            }
            Err(Error::Nats("held watch ended".into()))
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "held watch interrupted; resuming");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
