//! The control messages a node follows: the plan (watched, and read directly now and then),
//! progress reports of every move, and the `held.{pod}` keys that say which plan each pod serves by;
//! and this node's own `held.{me}`. The decisions are [`crate::ownership::Ownership`]'s; this
//! carries them out: workers stopped, moves started, leftovers answered.

use crate::error::{Error, Result};
use crate::metrics::Malformed;
use crate::ownership::Settled;
use crate::shared::Shared;
use aether_core::protocol::{Names, PlanMessage, Progress, decode};
use aether_core::types::MovePhase;
use async_nats::jetstream;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;

mod held;
pub use held::HELD_POLL_EVERY;
pub(crate) use held::{keep_lease, publish_held, watch_held};

/// How long a plan that takes shards without a hand-off waits for the members of the plan before
/// that left it to say they hold it, when nothing says when their lease ends (a node of a version
/// without leases: a live one reads the plan at least every [`PLAN_POLL_EVERY`]); members are
/// waited for until they do.
pub const LEAVERS_WAIT: Duration = Duration::from_secs(6);

impl Shared {
    /// Takes a new plan (stamped `plan_ms` by the server, ms since the Unix epoch): ignored unless
    /// its epoch is higher; then local shards follow it.
    pub fn on_plan(self: &Arc<Self>, plan: PlanMessage, plan_ms: Option<u64>) {
        let _span = tracing::debug_span!("plan", epoch = plan.epoch).entered();
        let (fx, stopped, timeout, awaiting) = {
            let mut st = self.state();
            let held = st.own.epoch();
            let hosted: Vec<u32> = st.hosted();
            let got = plan.epoch;
            let slots = plan.max_concurrent.max(1) as usize;
            let Some(fx) = st.own.on_plan(plan, hosted) else {
                drop(st);
                if got < held {
                    self.metrics().stale_plans.inc();
                    tracing::info!(held, got, "ignoring a plan older than the one held");
                }
                return;
            };
            self.set_move_slots(slots);
            let stopped: Vec<_> = fx
                .stop
                .iter()
                .filter_map(|&s| Some((s, st.stop(s)?)))
                .collect();
            let awaiting: Vec<String> = st.own.awaiting().into_iter().map(str::to_owned).collect();
            (fx, stopped, st.own.timeout(), awaiting)
        };
        self.metrics().epoch.set(fx.epoch as i64);
        self.epochs.send_replace(fx.epoch);
        self.arrivals.send_replace(());
        tracing::info!(epoch = fx.epoch, moves = fx.start.len(), "new plan");
        let answering = stopped
            .into_iter()
            .map(|(shard, rx)| self.answer_leftovers(shard, rx))
            .collect();
        self.hold(fx.epoch, answering);
        let epoch = fx.epoch;
        if awaiting.is_empty() {
            self.metrics().settled.set(epoch as i64);
        } else {
            tracing::info!(
                epoch,
                awaiting = %awaiting.join(","),
                "shards taken without a hand-off wait until these pods hold the plan"
            );
            self.tasks.spawn(self.clone().wait_for_pods(epoch, plan_ms));
        }
        if !fx.report_done.is_empty() {
            let this = self.clone();
            self.tasks.spawn(async move {
                for mv in fx.report_done {
                    this.report(epoch, &mv, MovePhase::Done, (0, 0), 0, None)
                        .await;
                }
            });
        }
        for mv in fx.recommit {
            self.tasks
                .spawn_on(self.clone().recommit(mv, epoch), &self.moves);
        }
        for mv in fx.start {
            self.tasks
                .spawn_on(self.clone().run_moves(mv, epoch, timeout), &self.moves);
        }
    }

    /// `pod` says it holds plan `epoch`; when that settles the plan, its deferred moves start.
    pub fn on_held(self: &Arc<Self>, pod: &str, epoch: u64) {
        let _span = tracing::debug_span!("held", pod, epoch).entered();
        let settled = self.state().own.on_held(pod, epoch);
        self.start_settled(settled);
    }

    fn start_settled(self: &Arc<Self>, settled: Option<Settled>) {
        let Some(s) = settled else { return };
        tracing::info!(epoch = s.epoch, moves = s.start.len(), "plan settled");
        self.metrics().settled.set(s.epoch as i64);
        for mv in s.start {
            self.tasks
                .spawn_on(self.clone().run_moves(mv, s.epoch, s.timeout), &self.moves);
        }
    }

    /// A progress report from any node: done moves change the owner; a failed move to this node
    /// drops what it staged.
    pub fn on_progress(self: &Arc<Self>, bytes: &[u8]) {
        let Ok(p) = decode::<Progress>(bytes) else {
            self.metrics().malformed(Malformed::Progress);
            return;
        };
        let _span =
            tracing::debug_span!("progress", epoch = p.epoch, shard = p.shard, node = %p.node)
                .entered();
        let stopped = {
            let mut st = self.state();
            st.own
                .on_progress(&p)
                .and_then(|shard| Some((shard, st.stop(shard)?)))
        };
        if let Some((shard, rx)) = stopped {
            drop(self.answer_leftovers(shard, rx));
        }
    }
}

/// Takes the plan the bucket holds now, if any (a node that starts takes it before it joins the
/// any-node queue group); `watch_plans` then finds it held.
pub(crate) async fn take_published_plan(
    shared: &Arc<Shared>,
    js: &jetstream::Context,
    names: &Names,
    replicas: usize,
) {
    let Ok(bucket) = aether_nats::plans::open_bucket(js, names, replicas).await else {
        return;
    };
    if let Ok(Some(entry)) = bucket.entry(Names::PLAN_KEY).await
        && entry.operation == jetstream::kv::Operation::Put
        && let Ok(plan) = decode::<PlanMessage>(&entry.value).and_then(|p| p.validate().map(|()| p))
    {
        shared.on_plan(plan, Some(held::stamp_ms(&entry)));
    }
}

pub(crate) async fn watch_plans(
    shared: Arc<Shared>,
    js: jetstream::Context,
    names: Names,
    replicas: usize,
) {
    loop {
        let result: Result<()> = async {
            let bucket = aether_nats::plans::open_bucket(&js, &names, replicas).await?;
            // The plan held when the watch starts is read before the node says it is Ready.
            let initial = bucket
                .entry(Names::PLAN_KEY)
                .await
                .map_err(|e| Error::Nats(format!("read plan: {e}")))?
                .map(|e| e.revision);
            let mut watch = bucket
                .watch_with_history(Names::PLAN_KEY)
                .await
                .map_err(|e| Error::Nats(format!("watch plans: {e}")))?;
            if initial.is_none() {
                shared.host.health.set_plan(None);
            }
            let mut seen = 0u64;
            let mut poll = tokio::time::interval(PLAN_POLL_EVERY);
            poll.tick().await;
            loop {
                let entry = tokio::select! {
                    next = watch.next() => match next {
                        Some(entry) => entry.map_err(|e| Error::Nats(format!("watch plans: {e}")))?,
                        None => break,
                    },
                    _ = poll.tick() => {
                        // A watch can stall without an error when its consumer went with a
                        // server; the plan is read directly now and then, so it never goes unseen.
                        match bucket.entry(Names::PLAN_KEY).await {
                            Ok(Some(entry)) if entry.revision > seen => {
                                tracing::warn!(revision = entry.revision, "the plan watch was behind");
                                entry
                            }
                            _ => continue,
                        }
                    }
                };
                let read = initial.is_some_and(|r| entry.revision >= r);
                if entry.revision <= seen {
                    continue;
                }
                seen = entry.revision;
                if entry.operation != jetstream::kv::Operation::Put {
                    continue;
                }
                match decode::<PlanMessage>(&entry.value).and_then(|p| p.validate().map(|()| p)) {
                    Ok(plan) => shared.on_plan(plan, Some(held::stamp_ms(&entry))),
                    Err(e) => {
                        shared.metrics().malformed(Malformed::Plan);
                        tracing::warn!(error = %e, "ignoring a plan that is malformed or contradicts itself");
                    }
                }
                if read {
                    // After the plan is taken: Ready means it serves by that plan.
                    shared.host.health.set_plan(None);
                }
            }
            Err(Error::Nats("plan watch ended".into()))
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "plan watch interrupted; resuming");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// How often a node reads the plan directly, besides watching it.
pub const PLAN_POLL_EVERY: Duration = Duration::from_secs(5);
