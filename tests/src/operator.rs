//! The operator as the tests drive it: its process against a real kube-apiserver ([`ApiServer`]),
//! the CRD installed, StatefulSets and ShardPlans created, and their status read.

use crate::k8s::ApiServer;
use crate::{Process, wait_for, workspace_binary};
use aether_core::crd::{ShardPlan, ShardPlanStatus};
use k8s_openapi::api::apps::v1::StatefulSet;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Starts the operator (`POD_NAME` `name`, namespace `default`) with its HTTP endpoints on `port`.
#[must_use]
pub fn spawn_operator(api: &ApiServer, port: u16, name: &str) -> Process {
    spawn_operator_with(api, port, name, &[])
}

/// [`spawn_operator`] with more flags.
#[must_use]
pub fn spawn_operator_with(api: &ApiServer, port: u16, name: &str, flags: &[&str]) -> Process {
    Process {
        child: Command::new(workspace_binary("aether-operator"))
            .args(["--http-addr", &format!("127.0.0.1:{port}")])
            .args(flags)
            .env("KUBECONFIG", api.kubeconfig())
            .env("POD_NAMESPACE", "default")
            .env("POD_NAME", name)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the operator: {e}")),
    }
}

/// Installs the ShardPlan CRD and waits until `namespace`'s ShardPlans are served.
pub async fn install_crd(client: &kube::Client, namespace: &str) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    Api::<CustomResourceDefinition>::all(client.clone())
        .create(&PostParams::default(), &aether_core::crd::definition())
        .await
        .unwrap_or_else(|e| panic!("CRD: {e}"));
    let plans: Api<ShardPlan> = Api::namespaced(client.clone(), namespace);
    wait_for("the CRD to be served", Duration::from_secs(30), || async {
        plans.list(&Default::default()).await.is_ok()
    })
    .await;
}

/// Creates namespace `name`.
pub async fn create_namespace(client: &kube::Client, name: &str) {
    use k8s_openapi::api::core::v1::Namespace;
    let ns: Namespace = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
    }))
    .unwrap_or_else(|e| panic!("namespace: {e}"));
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
}

/// Creates the StatefulSet `app` (pods labelled `app: app`) in `namespace`.
pub async fn create_statefulset(
    client: &kube::Client,
    namespace: &str,
    replicas: i32,
) -> StatefulSet {
    let sts: StatefulSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "app"},
        "spec": {"replicas": replicas, "serviceName": "app", "selector": {"matchLabels": {"app": "app"}},
                 "template": {"metadata": {"labels": {"app": "app"}}, "spec": {"containers": [{"name": "app", "image": "app"}]}}}
    }))
    .unwrap_or_else(|e| panic!("statefulset: {e}"));
    Api::<StatefulSet>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &sts)
        .await
        .unwrap_or_else(|e| panic!("create statefulset: {e}"))
}

/// A ShardPlan `name` of the StatefulSet `app`: `shards` shards, capacity 8, on `url` and `prefix`.
#[must_use]
pub fn shardplan(name: &str, shards: u32, url: &str, prefix: &str) -> ShardPlan {
    serde_json::from_value(json!({
        "apiVersion": "aether.dev/v1alpha1", "kind": "ShardPlan", "metadata": {"name": name},
        "spec": {"statefulSet": "app", "shards": shards, "capacity": 8,
                 "nats": {"url": url, "subjectPrefix": prefix}}
    }))
    .unwrap_or_else(|e| panic!("ShardPlan: {e}"))
}

/// Its status (empty before the first).
#[must_use]
pub fn status_of(sp: &ShardPlan) -> ShardPlanStatus {
    sp.status.clone().unwrap_or_default()
}

/// Condition `t` as (status, reason, message).
#[must_use]
pub fn condition(sp: &ShardPlan, t: &str) -> Option<(String, String, String)> {
    status_of(sp)
        .condition(t)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Degraded for `reason`, its message naming `naming` (a ShardPlan, `namespace/name`).
#[must_use]
pub fn degraded(sp: &ShardPlan, reason: &str, naming: &str) -> bool {
    condition(sp, "Degraded")
        .is_some_and(|c| c.0 == "True" && c.1 == reason && c.2.contains(naming))
}

/// The plan the bucket of `prefix` holds (`None`: no bucket or plan yet, or not a plan).
pub async fn stored_plan(
    nc: &async_nats::Client,
    prefix: &str,
) -> Option<aether_core::protocol::PlanMessage> {
    use aether_core::protocol::Names;
    let kv = async_nats::jetstream::new(nc.clone())
        .get_key_value(Names::new(prefix).plan_bucket())
        .await
        .ok()?;
    kv.get(Names::PLAN_KEY)
        .await
        .ok()
        .flatten()
        .and_then(|v| aether_core::protocol::decode(&v).ok())
}

/// Ready, with nothing moving.
#[must_use]
pub fn ready(sp: &ShardPlan) -> bool {
    condition(sp, "Ready").is_some_and(|c| c.0 == "True") && status_of(sp).moving == 0
}
