//! The chaos runner's plans made by the operator process itself (`make chaos`'s third run): a
//! kube-apiserver (with etcd) holds the StatefulSet, a Pod object per node process and the
//! ShardPlan; two operator processes elect a leader through their Lease and plan from the pods. A
//! membership change is a pod's Ready condition turned off or on (as a failing or passing
//! readiness probe does), not a plan the runner writes; the operator's leader is SIGKILLed,
//! SIGSTOPped and failed over among the other faults.

use crate::k8s::{ApiServer, add_ready_pod};
use crate::operator::{create_statefulset, install_crd, spawn_operator, status_of};
use crate::{Process, free_port};
use aether_core::crd::ShardPlan;
use aether_core::plan::Plan;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use std::process::Command;
use std::time::{Duration, Instant};

const NS: &str = "default";
/// The ShardPlan's name.
const NAME: &str = "chaos";
/// The operators' leader Lease (the operator's default name).
const LEASE: &str = "aether-operator";
/// Longest the operator may take to plan for a membership change: past a leader's Lease (30 s,
/// plus its grace) when the leader was just SIGKILLed.
const PLAN_WITHIN: Duration = Duration::from_secs(90);

/// One operator replica.
struct Operator {
    name: String,
    port: u16,
    proc: Option<Process>,
}

/// Plans by the operator process, from the pods' readiness.
pub struct KubePlanner {
    api: ApiServer,
    pods: Api<Pod>,
    plans: Api<ShardPlan>,
    leases: Api<Lease>,
    operators: Vec<Operator>,
    all: Vec<String>,
    /// The pods Ready now (the members asked for).
    pub members: Vec<String>,
    /// Leader changes seen (failovers), for the report.
    pub failovers: u64,
}

impl std::fmt::Debug for KubePlanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubePlanner")
            .field("members", &self.members)
            .field("failovers", &self.failovers)
            .finish_non_exhaustive()
    }
}

impl KubePlanner {
    /// The control plane, the pods (`members` Ready, the rest of `all` not), the ShardPlan on
    /// `url`/`prefix` and two operators; returns once the first plan has `members`.
    pub async fn start(
        members: Vec<String>,
        all: &[String],
        shards: u32,
        url: &str,
        prefix: &str,
    ) -> (Self, Plan) {
        let api = ApiServer::start().await;
        let client = api.client().await;
        install_crd(&client, NS).await;
        let sts = create_statefulset(&client, NS, all.len() as i32).await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
        for name in all {
            add_ready_pod(&pods, &sts, name).await;
        }
        let mut planner = Self {
            api,
            pods,
            plans: Api::namespaced(client.clone(), NS),
            leases: Api::namespaced(client, NS),
            operators: Vec::new(),
            all: all.to_vec(),
            members: all.to_vec(),
            failovers: 0,
        };
        planner.set_members(&members).await;
        let sp: ShardPlan = serde_json::from_value(serde_json::json!({
            "apiVersion": "aether.dev/v1alpha1", "kind": "ShardPlan", "metadata": {"name": NAME},
            "spec": {"statefulSet": "app", "shards": shards, "capacity": 4,
                     "migration": {"maxConcurrent": 4, "timeoutSeconds": 10},
                     "nats": {"url": url, "subjectPrefix": prefix}}
        }))
        .unwrap_or_else(|e| panic!("ShardPlan: {e}"));
        planner
            .plans
            .create(&PostParams::default(), &sp)
            .await
            .unwrap_or_else(|e| panic!("create ShardPlan: {e}"));
        for i in 0..2 {
            let (name, port) = (format!("operator-{i}"), free_port());
            let proc = Some(spawn_operator(&planner.api, port, &name));
            planner.operators.push(Operator { name, port, proc });
        }
        let plan = planner.plan_of(&members).await;
        (planner, plan)
    }

    /// Plans published so far: the ShardPlan's epoch.
    pub async fn epoch(&self) -> u64 {
        self.plans
            .get(NAME)
            .await
            .map_or(0, |sp| status_of(&sp).epoch)
    }

    /// Turns each pod's Ready condition on when it is in `members`, off otherwise.
    async fn set_members(&mut self, members: &[String]) {
        for name in &self.all {
            let ready = members.contains(name);
            if ready == self.members.contains(name) {
                continue;
            }
            let status = serde_json::json!({"status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": if ready { "True" } else { "False" }}]}});
            self.pods
                .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
                .await
                .unwrap_or_else(|e| panic!("pod status {name}: {e}"));
        }
        self.members = members.to_vec();
    }

    /// Waits until the operator's plan has exactly `members`; returns it.
    async fn plan_of(&self, members: &[String]) -> Plan {
        let deadline = Instant::now() + PLAN_WITHIN;
        loop {
            if let Ok(sp) = self.plans.get(NAME).await
                && let Some(plan) = status_of(&sp).plan()
            {
                let mut names: Vec<String> = plan.members.iter().map(|m| m.name.clone()).collect();
                names.sort();
                let mut want = members.to_vec();
                want.sort();
                if names == want {
                    return plan;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the operator made no plan for {members:?} within {PLAN_WITHIN:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The membership `members` (pods Ready or not); returns the operator's plan for it.
    pub async fn publish(&mut self, members: Vec<String>) -> Plan {
        self.set_members(&members).await;
        self.plan_of(&members).await
    }

    /// Waits until nothing moves (the operator retries and re-plans on its own), at most `limit`.
    pub async fn retry(&mut self, limit: Duration) -> Option<Plan> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self
                .plans
                .get(NAME)
                .await
                .is_ok_and(|sp| status_of(&sp).moving == 0)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    /// The replica holding the Lease now.
    async fn leader(&self) -> Option<usize> {
        let lease = self.leases.get(LEASE).await.ok()?;
        let holder = lease.spec?.holder_identity?;
        self.operators.iter().position(|o| o.name == holder)
    }

    fn signal(&self, i: usize, sig: &str) {
        if let Some(p) = &self.operators[i].proc {
            let ok = Command::new("kill")
                .args([sig, &p.child.id().to_string()])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "kill {sig} {}", self.operators[i].name);
        }
    }

    fn restart(&mut self, i: usize) {
        if let Some(mut p) = self.operators[i].proc.take() {
            p.kill();
        }
        let o = &mut self.operators[i];
        o.proc = Some(spawn_operator(&self.api, o.port, &o.name));
    }

    /// SIGKILLs the leader, starts it again after `pause`.
    pub async fn kill_leader(&mut self, pause: Duration) -> String {
        let Some(i) = self.leader().await else {
            return "no operator leads now".into();
        };
        if let Some(mut p) = self.operators[i].proc.take() {
            p.kill();
        }
        tokio::time::sleep(pause).await;
        self.restart(i);
        format!("{} SIGKILLed for {pause:?}", self.operators[i].name)
    }

    /// SIGSTOPs the leader for `pause`, then SIGCONT.
    pub async fn stop_leader(&mut self, pause: Duration) -> String {
        let Some(i) = self.leader().await else {
            return "no operator leads now".into();
        };
        self.signal(i, "-STOP");
        tokio::time::sleep(pause).await;
        self.signal(i, "-CONT");
        format!("{} SIGSTOPped for {pause:?}", self.operators[i].name)
    }

    /// SIGKILLs the leader and waits until the other replica holds the Lease, then starts the
    /// killed one again as the standby.
    pub async fn fail_over(&mut self) -> String {
        let Some(i) = self.leader().await else {
            return "no operator leads now".into();
        };
        let started = Instant::now();
        if let Some(mut p) = self.operators[i].proc.take() {
            p.kill();
        }
        let other = 1 - i;
        while self.leader().await != Some(other) {
            assert!(
                started.elapsed() < PLAN_WITHIN,
                "{} never took the Lease",
                self.operators[other].name
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.failovers += 1;
        self.restart(i);
        format!(
            "{} SIGKILLed, {} leads after {:?}",
            self.operators[i].name,
            self.operators[other].name,
            started.elapsed()
        )
    }
}
