//! The runner's operator (also `make soak`'s): plans made the way the operator makes them (the
//! core planner, the moves not reported done kept from their actual owners, then the KV bucket),
//! and its retry of a plan whose moves did not all finish.

use aether_core::crd::Strategy;
use aether_core::plan::{MemberInput, Plan, PlanSpec, plan, retry};
use aether_core::protocol::{self, Names, PlanMessage};
use aether_core::types::MovePhase;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Plans as the operator makes them: the core planner, with the moves not done yet kept from their
/// actual owners (read from the progress stream), and a retry only once no move is in flight.
#[derive(Debug)]
pub struct Planner {
    /// The plan published last.
    pub plan: Plan,
    /// Its members.
    pub members: Vec<String>,
    /// Shards of every plan.
    pub shards: u32,
    /// The plan bucket.
    pub bucket: async_nats::jetstream::kv::Store,
    /// JetStream, for the progress reports.
    pub js: async_nats::jetstream::Context,
    /// The prefix's names.
    pub names: Names,
    /// Plans published.
    pub published: u64,
}

impl Planner {
    /// The latest report of each move of the current plan (`None`: none yet).
    async fn outcomes(&self) -> BTreeMap<u32, Option<MovePhase>> {
        let mut out = BTreeMap::new();
        let stream = self.js.get_stream(self.names.progress_stream()).await.ok();
        for m in &self.plan.moves {
            let mut phase = None;
            if let Some(stream) = &stream
                && let Ok(msg) = stream
                    .get_last_raw_message_by_subject(&self.names.progress(self.plan.epoch, m.shard))
                    .await
                && let Ok(p) = protocol::decode::<protocol::Progress>(&msg.payload)
            {
                phase = Some(p.phase);
            }
            out.insert(m.shard, phase);
        }
        out
    }

    /// The next plan for `members`, published; returns it.
    pub async fn publish(&mut self, members: Vec<String>) -> Plan {
        let outcomes = self.outcomes().await;
        let pending = retry::unfinished(&self.plan.moves, |s| outcomes.get(&s).copied().flatten());
        let inputs: Vec<MemberInput> = members.iter().map(MemberInput::active).collect();
        let spec = PlanSpec {
            shards: self.shards,
            capacity: 4,
            strategy: Strategy::AnchorHash,
        };
        let next = plan(Some(&self.plan), &pending, &inputs, &spec)
            .unwrap_or_else(|e| panic!("plan: {e}"));
        let msg = PlanMessage::new(&next, 4, 10);
        let deadline = Instant::now() + Duration::from_secs(60);
        // The bucket may be without a leader for a moment after a server restart.
        while let Err(e) = aether_nats::plans::publish(&self.bucket, &msg).await {
            assert!(
                Instant::now() < deadline,
                "publish plan {}: {e}",
                next.epoch
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.published += 1;
        self.plan = next.clone();
        self.members = members;
        next
    }

    /// The operator's retry, by its rule (`aether_core::plan::retry`): once a move of the current
    /// plan failed or was superseded and none is in flight, or past the plan's deadline (as the
    /// operator fails a move that got no outcome), a new plan for the same members if any move
    /// did not finish.
    pub async fn retry(&mut self) -> Option<Plan> {
        let deadline = Instant::now() + Duration::from_secs(10 + 5);
        loop {
            let outcomes = self.outcomes().await;
            if outcomes.values().all(|p| *p == Some(MovePhase::Done)) {
                return None;
            }
            if retry::retry_due(outcomes.values().copied()) || Instant::now() > deadline {
                let members = self.members.clone();
                return Some(self.publish(members).await);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
