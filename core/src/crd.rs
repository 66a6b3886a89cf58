//! The `ShardPlan` custom resource: what a user applies (`spec`) and what the operator reports
//! (`status`). `crds/shardplan.yaml` is generated from these types (`make generate`); a test fails when
//! it drifts. What the schema and CEL rules cannot check (a missing StatefulSet, more replicas than
//! `capacity`, NATS unreachable) the operator reports as a `Degraded` condition.

use crate::anchor::AnchorState;
use crate::plan::Plan;
use crate::shardmap::ShardMap;
use crate::types::Move;
pub use crate::types::{Member, MovePhase, Strategy};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Desired spread of a StatefulSet's actors over its pods.
// One `printcolumn(...)` per column is kube-derive's syntax; clippy reads them as duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "aether.dev",
    version = "v1alpha1",
    kind = "ShardPlan",
    namespaced,
    status = "ShardPlanStatus",
    shortname = "sp",
    category = "aether",
    doc = "Keeps the event-sourced actors of a StatefulSet's pods evenly spread over its Ready pods, and moves them with their state when pods join or leave.",
    printcolumn(name = "Epoch", type_ = "integer", json_path = ".status.epoch"),
    printcolumn(name = "Members", type_ = "integer", json_path = ".status.memberCount"),
    printcolumn(name = "Moving", type_ = "integer", json_path = ".status.moving"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ShardPlanSpec {
    /// Name of the StatefulSet, in the ShardPlan's namespace, whose pods host the actors. Its Ready pods
    /// become members.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("statefulSet is immutable: create a new ShardPlan"))]
    pub stateful_set: String,

    /// Number of shards actors are hashed into (shard = XXH3-64(actor id) mod shards). Immutable: every
    /// actor's shard depends on it. More shards give finer balance and smaller moves.
    #[serde(default = "default_shards")]
    #[schemars(range(min = 1, max = 65536))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("shards is immutable: every actor's shard depends on it"))]
    pub shards: u32,

    /// How shards are placed on members: AnchorHash (consistent hashing, the default) or Balanced (every
    /// member within one shard of the others, for few shards).
    #[serde(default)]
    pub strategy: Strategy,

    /// Most members the placement can ever hold (AnchorHash buckets). Immutable; the StatefulSet must not
    /// scale beyond it.
    #[serde(default = "default_capacity")]
    #[schemars(range(min = 1, max = 65535))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("capacity is immutable: create a new ShardPlan to change it"))]
    pub capacity: u32,

    /// How the operator and the nodes reach NATS.
    #[serde(default)]
    pub nats: NatsSpec,

    /// Limits on shard migrations.
    #[serde(default)]
    pub migration: MigrationSpec,

    /// When true, no new plan is made: membership changes wait until it is false again.
    #[serde(default)]
    pub paused: bool,
}

fn default_shards() -> u32 {
    1024
}

fn default_capacity() -> u32 {
    256
}

/// NATS connection settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct NatsSpec {
    /// NATS server URL(s), comma-separated for a cluster.
    #[serde(default = "default_nats_url")]
    #[schemars(length(min = 1))]
    pub url: String,

    /// Name of a Secret in this namespace with the operator's NATS credentials, labelled
    /// `aether.dev/nats-credentials: "true"` (the operator reads no other): keys `user` and
    /// `password`, or `token`, or `nkey` (a seed), or `creds` (a .creds file); `ca.crt` for TLS
    /// verified against that CA, with `tls.crt` and `tls.key` for a client certificate. Absent: no
    /// authentication, no TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,

    /// First token of every subject, KV bucket and stream name of this ShardPlan.
    #[serde(default = "default_subject_prefix")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-]{1,64}$"))]
    pub subject_prefix: String,

    /// Replicas of the plan bucket and the progress stream when the operator creates them (set the
    /// nodes' `--stream-replicas` to the same for the event stream): 3 on a 3-server NATS cluster,
    /// so a server lost loses nothing. Fixed by whoever creates them first.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 5))]
    pub replicas: u32,
}

fn default_replicas() -> u32 {
    1
}

impl Default for NatsSpec {
    fn default() -> Self {
        Self {
            url: default_nats_url(),
            credentials_secret: None,
            subject_prefix: default_subject_prefix(),
            replicas: default_replicas(),
        }
    }
}

fn default_nats_url() -> String {
    "nats://nats:4222".to_owned()
}

fn default_subject_prefix() -> String {
    "aether".to_owned()
}

/// Migration limits.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationSpec {
    /// Most shard moves in flight at once from each source pod (a pod sends at most this many
    /// shards at a time; pods send in parallel).
    #[serde(default = "default_max_concurrent")]
    #[schemars(range(min = 1, max = 1024))]
    pub max_concurrent: u32,

    /// Seconds one shard move may take before it is rolled back and retried.
    #[serde(default = "default_timeout_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_seconds: u32,

    /// Retries of a failed move (with backoff) before the ShardPlan reports Degraded.
    #[serde(default = "default_max_retries")]
    #[schemars(range(min = 0, max = 100))]
    pub max_retries: u32,
}

impl Default for MigrationSpec {
    fn default() -> Self {
        Self {
            max_concurrent: default_max_concurrent(),
            timeout_seconds: default_timeout_seconds(),
            max_retries: default_max_retries(),
        }
    }
}

fn default_max_concurrent() -> u32 {
    4
}

fn default_timeout_seconds() -> u32 {
    30
}

fn default_max_retries() -> u32 {
    5
}

/// What the operator observed and decided.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShardPlanStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Epoch of the current plan; grows with every plan.
    #[serde(default)]
    pub epoch: u64,

    /// Number of members that own shards.
    #[serde(default)]
    pub member_count: u32,

    /// Number of shard moves not yet done.
    #[serde(default)]
    pub moving: u32,

    /// Pods known to the plan: members and draining pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberStatus>,

    /// AnchorHash state, so a restarted operator computes exactly the same plans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<AnchorState>,

    /// Target owner bucket of each shard (base64 of little-endian u16; 65535 = unassigned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard_map: Option<ShardMap>,

    /// Shard moves of the current plan that are not done; stored grouped (moves alike but for
    /// their shard in one entry), so a third of 65,536 shards moving fits in an object.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        with = "grouped_status"
    )]
    #[schemars(with = "Vec<MoveStatusGroup>")]
    pub moves: Vec<MoveStatus>,

    /// When the current plan was published: its moves' deadlines count from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planned_at: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,

    /// Ready, Rebalancing and Degraded, each with a reason and a message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A pod as the plan sees it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// Pod name.
    pub pod: String,
    /// AnchorHash bucket.
    pub bucket: u16,
    /// Active (owns shards) or Draining (being deleted; its shards are moving away).
    pub state: MemberState,
}

impl From<&Member> for MemberStatus {
    fn from(m: &Member) -> Self {
        Self {
            pod: m.name.clone(),
            bucket: m.bucket,
            state: MemberState::Active,
        }
    }
}

/// Member state.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum MemberState {
    /// Owns shards.
    Active,
    /// Being deleted; its shards are moving away.
    Draining,
}

/// Moves alike but for their shard, as `status.moves` stores them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MoveStatusGroup {
    /// The shards, ascending.
    pub shards: Vec<u32>,
    /// Source pod; absent when the source is gone and the destination rebuilds from the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Destination pod.
    pub to: String,
    /// Pending, Transferring, Failed (or Superseded).
    pub phase: MovePhase,
    /// Attempts so far.
    #[serde(default)]
    pub attempts: u32,
    /// What went wrong last, if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Not retried before this time (exponential backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

/// Serde for `status.moves`: [`MoveStatus`]es grouped into [`MoveStatusGroup`]s, read back ordered
/// by shard.
mod grouped_status {
    use super::{MoveStatus, MoveStatusGroup};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::collections::BTreeMap;

    pub fn serialize<S: Serializer>(moves: &[MoveStatus], s: S) -> Result<S::Ok, S::Error> {
        let mut groups: BTreeMap<String, MoveStatusGroup> = BTreeMap::new();
        for m in moves {
            // Everything but the shard, as the group's key.
            let key = serde_json::to_string(&(
                &m.from,
                &m.to,
                m.phase,
                m.attempts,
                &m.last_error,
                &m.retry_after,
            ))
            .map_err(serde::ser::Error::custom)?;
            groups
                .entry(key)
                .or_insert_with(|| MoveStatusGroup {
                    shards: Vec::new(),
                    from: m.from.clone(),
                    to: m.to.clone(),
                    phase: m.phase,
                    attempts: m.attempts,
                    last_error: m.last_error.clone(),
                    retry_after: m.retry_after.clone(),
                })
                .shards
                .push(m.shard);
        }
        let mut groups: Vec<MoveStatusGroup> = groups.into_values().collect();
        for g in &mut groups {
            g.shards.sort_unstable();
        }
        groups.sort_by_key(|g| g.shards.first().copied());
        groups.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<MoveStatus>, D::Error> {
        let groups = Vec::<MoveStatusGroup>::deserialize(d)?;
        let mut moves: Vec<MoveStatus> = groups
            .into_iter()
            .flat_map(|g| {
                g.shards
                    .iter()
                    .map(move |&shard| MoveStatus {
                        shard,
                        from: g.from.clone(),
                        to: g.to.clone(),
                        phase: g.phase,
                        attempts: g.attempts,
                        last_error: g.last_error.clone(),
                        retry_after: g.retry_after.clone(),
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        moves.sort_by_key(|m| m.shard);
        Ok(moves)
    }
}

/// One shard move and how far it got.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MoveStatus {
    /// Shard number.
    pub shard: u32,
    /// Source pod; absent when the source is gone and the destination rebuilds from the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Destination pod.
    pub to: String,
    /// Pending, Transferring, Done or Failed.
    pub phase: MovePhase,
    /// Attempts so far.
    #[serde(default)]
    pub attempts: u32,
    /// What went wrong last, if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// A failed move is not retried before this time (exponential backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

impl From<&MoveStatus> for Move {
    /// The move a status entry tracks, without its progress.
    fn from(m: &MoveStatus) -> Self {
        Self {
            shard: m.shard,
            from: m.from.clone(),
            to: m.to.clone(),
        }
    }
}

impl ShardPlanStatus {
    /// The plan this status describes: its members, shard map and the moves in flight; `None`
    /// before the first plan.
    #[must_use]
    pub fn plan(&self) -> Option<Plan> {
        let placement = self.placement.clone()?;
        let shard_map = self.shard_map.clone()?;
        let mut members: Vec<Member> = self
            .members
            .iter()
            .filter(|m| m.state == MemberState::Active)
            .map(|m| Member {
                name: m.pod.clone(),
                bucket: m.bucket,
            })
            .collect();
        members.sort_by_key(|m| m.bucket);
        Some(Plan {
            epoch: self.epoch,
            shards: shard_map.len() as u32,
            members,
            shard_map,
            moves: self.moves.iter().map(Move::from).collect(),
            placement,
        })
    }

    /// The condition of a type, whatever its status.
    #[must_use]
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    /// True when the condition of a type is `True`.
    #[must_use]
    pub fn is(&self, type_: &str) -> bool {
        self.condition(type_).is_some_and(|c| c.status == "True")
    }
}

/// The CustomResourceDefinition as applied: [`kube::CustomResourceExt::crd`] without the schema
/// formats the API server does not know (`uint16`, `uint32`, `uint64`: it warns about each on every
/// apply). Their non-negativity is kept as `minimum: 0` where no minimum is set.
#[must_use]
pub fn definition()
-> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    fn clean(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                let unsigned = map
                    .get("format")
                    .and_then(|f| f.as_str())
                    .is_some_and(|f| f.starts_with("uint"));
                if unsigned {
                    map.remove("format");
                    map.entry("minimum").or_insert(serde_json::json!(0));
                }
                map.values_mut().for_each(clean);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(clean),
            _ => {}
        }
    }
    let crd = <ShardPlan as kube::CustomResourceExt>::crd();
    let Ok(mut value) = serde_json::to_value(&crd) else {
        return crd;
    };
    clean(&mut value);
    serde_json::from_value(value).unwrap_or(crd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_a_minimal_spec() {
        let spec: ShardPlanSpec =
            serde_json::from_str(r#"{"statefulSet":"app"}"#).expect("minimal spec parses");
        assert_eq!(spec.shards, 1024);
        assert_eq!(spec.capacity, 256);
        assert_eq!(spec.strategy, Strategy::AnchorHash);
        assert_eq!(spec.migration.max_concurrent, 4);
        assert_eq!(spec.nats.subject_prefix, "aether");
        assert!(!spec.paused);
    }
}
