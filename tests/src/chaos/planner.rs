//! The runner's operator (also `make soak`'s): the operator's own reconcile decision
//! (`aether_operator::decide::decide`) run on what the runner observes (its members, the progress
//! stream's latest report of each move), its plans published to the KV bucket. So plans, the moves
//! not done kept from their actual owners, and retries (after a failure's backoff, or a move's
//! deadline) are the operator's, not a copy of them.

use super::kube::KubePlanner;
use aether_core::crd::{ShardPlanSpec, ShardPlanStatus};
use aether_core::plan::{MemberInput, Plan};
use aether_core::protocol::{self, Names, PlanMessage, Progress};
use aether_operator::decide::{Held, Observed, decide};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use std::time::{Duration, Instant};

/// This runner as the plans' signer (a ShardPlan's `namespace/name/uid`).
const ME: &str = "chaos/runner/1";

/// Plans as the operator makes them: its `decide` on the runner's observations.
#[derive(Debug)]
pub struct Planner {
    /// The ShardPlan the runner stands for.
    spec: ShardPlanSpec,
    /// Its status, as `decide` left it.
    status: ShardPlanStatus,
    /// The members of the plan published last.
    pub members: Vec<String>,
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
    /// The first plan for `members` (`shards` shards, capacity 4, moves of at most 10 s, 4 at
    /// once per source), published.
    pub async fn start(
        members: Vec<String>,
        shards: u32,
        bucket: async_nats::jetstream::kv::Store,
        js: async_nats::jetstream::Context,
        names: Names,
    ) -> (Self, Plan) {
        let spec: ShardPlanSpec = serde_json::from_value(serde_json::json!({
            "statefulSet": "app",
            "shards": shards,
            "capacity": 4,
            "migration": {"maxConcurrent": 4, "timeoutSeconds": 10},
        }))
        .unwrap_or_else(|e| panic!("spec: {e}"));
        let mut planner = Self {
            spec,
            status: ShardPlanStatus::default(),
            members: Vec::new(),
            bucket,
            js,
            names,
            published: 0,
        };
        let plan = planner.publish(members).await;
        (planner, plan)
    }

    /// The latest report of each move of the current plan.
    async fn reports(&self) -> Vec<Progress> {
        let mut out = Vec::new();
        let Ok(stream) = self.js.get_stream(self.names.progress_stream()).await else {
            return out;
        };
        for m in &self.status.moves {
            if let Ok(msg) = stream
                .get_last_raw_message_by_subject(&self.names.progress(self.status.epoch, m.shard))
                .await
                && let Ok(p) = protocol::decode::<Progress>(&msg.payload)
            {
                out.push(p);
            }
        }
        out
    }

    /// One reconcile of the operator on `members` and the reports read now; publishes the plan it
    /// decides, if any, and returns it.
    async fn reconcile(&mut self, members: &[String]) -> Option<Plan> {
        let progress = self.reports().await;
        // The pods as the operator sees them: `members` Ready; a member of the plan that left
        // them is being deleted (draining: still the source of its moves, as a scaled-down pod
        // is until its shards are handed over).
        let mut inputs: Vec<MemberInput> = members.iter().map(MemberInput::active).collect();
        for m in &self.status.members {
            if !members.contains(&m.pod) {
                inputs.push(MemberInput::draining(m.pod.clone()));
            }
        }
        let observed = Observed {
            generation: Some(1),
            spec: &self.spec,
            status: (self.published > 0).then_some(&self.status),
            replicas: Some(members.len() as i32),
            members: inputs,
            progress,
            nats_problem: None,
            held: (self.published > 0).then(|| Held {
                epoch: self.status.epoch,
                shards: self.spec.shards,
                owner: Some(ME.to_owned()),
            }),
            me: ME.to_owned(),
            prefix_taken_by: None,
            now: Time(k8s_openapi::jiff::Timestamp::now()),
        };
        let decision = decide(&observed);
        self.status = decision.status;
        let msg = decision.publish?;
        self.put(&msg).await;
        self.published += 1;
        self.members = members.to_vec();
        self.status.plan()
    }

    async fn put(&self, msg: &PlanMessage) {
        let deadline = Instant::now() + Duration::from_secs(60);
        // The bucket may be without a leader for a moment after a server restart.
        while let Err(e) = aether_nats::plans::publish(&self.bucket, msg).await {
            assert!(Instant::now() < deadline, "publish plan {}: {e}", msg.epoch);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The operator's plan for `members` (a membership change), published. When it makes none
    /// (the members are the plan's already, or it is degraded), the current plan.
    pub async fn publish(&mut self, members: Vec<String>) -> Plan {
        match self.reconcile(&members).await {
            Some(plan) => plan,
            None => self
                .status
                .plan()
                .unwrap_or_else(|| panic!("the operator made no plan for {members:?}")),
        }
    }

    /// Reconciles, as the operator does while moves are in flight, until every move of the
    /// current plan is done (`None`) or the operator publishes a retry (a move failed and its
    /// backoff passed with none in flight, or a move got no outcome by its deadline: the plan's
    /// time plus its share of the timeout plus the operator's grace). Gives up after `limit`.
    pub async fn retry(&mut self, limit: Duration) -> Option<Plan> {
        let deadline = Instant::now() + limit;
        let members = self.members.clone();
        loop {
            if let Some(plan) = self.reconcile(&members).await {
                return Some(plan);
            }
            if self.status.moves.is_empty() || Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Who makes a chaos run's plans: the operator's `decide` in the runner, or the operator process
/// on a kube-apiserver (`Config::operator`).
#[derive(Debug)]
pub enum Plans {
    /// [`Planner`].
    Own(Box<Planner>),
    /// [`KubePlanner`].
    Kube(Box<KubePlanner>),
}

impl Plans {
    /// The members asked for last.
    #[must_use]
    pub fn members(&self) -> &[String] {
        match self {
            Self::Own(p) => &p.members,
            Self::Kube(k) => &k.members,
        }
    }

    /// The plan for `members`.
    pub async fn publish(&mut self, members: Vec<String>) -> Plan {
        match self {
            Self::Own(p) => p.publish(members).await,
            Self::Kube(k) => k.publish(members).await,
        }
    }

    /// Until every move is done or a retry is published, at most `limit`.
    pub async fn retry(&mut self, limit: Duration) -> Option<Plan> {
        match self {
            Self::Own(p) => p.retry(limit).await,
            Self::Kube(k) => k.retry(limit).await,
        }
    }

    /// Plans published: counted by the runner, or the operator's epoch.
    pub async fn published(&self) -> u64 {
        match self {
            Self::Own(p) => p.published,
            Self::Kube(k) => k.epoch().await,
        }
    }

    /// A fault of the operator process (`kind`: kill, stop or failover); none without one.
    pub async fn operator_fault(&mut self, kind: super::Fault, pause: Duration) -> String {
        let Self::Kube(k) = self else {
            return "no operator process in this run".into();
        };
        match kind {
            super::Fault::KillOperator => k.kill_leader(pause).await,
            super::Fault::StopOperator => k.stop_leader(pause).await,
            _ => k.fail_over().await,
        }
    }
}
