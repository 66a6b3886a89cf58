//! The operator against a real kube-apiserver (and etcd), with node sidecars on a real nats-server:
//! CRD validation, a plan written to status and NATS, a scale-up rebalanced by the nodes until Ready,
//! a node that announces it is leaving planned out at once (and back in when it is up again),
//! malformed progress reports counted, a missing StatefulSet and a credentials Secret that has not
//! opted in reported as Degraded.

use aether_core::crd::{MoveStatus, ShardPlan, ShardPlanStatus};
use aether_core::protocol::{
    Names, NodeEvent, NodeEventKind, PlanMessage, Progress, VERSION, decode, encode,
};
use aether_tests::cluster::TestNode;
use aether_tests::k8s::{ApiServer, add_ready_pod};
use aether_tests::{NatsServer, Process, free_port, wait_for, workspace_binary};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use std::process::{Command, Stdio};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn status_of(sp: &ShardPlan) -> ShardPlanStatus {
    sp.status.clone().unwrap_or_default()
}

fn condition(sp: &ShardPlan, t: &str) -> Option<(String, String)> {
    let status = status_of(sp);
    status
        .condition(t)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

async fn nats_epoch(nc: &async_nats::Client, prefix: &str) -> u64 {
    let js = async_nats::jetstream::new(nc.clone());
    let Ok(kv) = js.get_key_value(Names::new(prefix).plan_bucket()).await else {
        return 0;
    };
    match kv.get(Names::PLAN_KEY).await {
        Ok(Some(v)) => decode::<PlanMessage>(&v).map_or(0, |p| p.epoch),
        _ => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_plans_publishes_and_follows_a_scale_up() {
    let api = ApiServer::start().await;
    let client = api.client().await;
    let nats = NatsServer::start();
    let nc = nats.connect().await;

    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &aether_core::crd::definition())
        .await
        .expect("CRD");
    let plans: Api<ShardPlan> = Api::namespaced(client.clone(), "default");
    wait_for("the CRD to be served", T, || async {
        plans.list(&Default::default()).await.is_ok()
    })
    .await;

    // Bad input is refused by the API server with a message that says what is wrong.
    let bad: ShardPlan = serde_json::from_value(json!({
        "apiVersion": "aether.dev/v1alpha1", "kind": "ShardPlan", "metadata": {"name": "bad"},
        "spec": {"statefulSet": "app", "shards": 0}
    }))
    .expect("object");
    let err = plans
        .create(&PostParams::default(), &bad)
        .await
        .expect_err("shards 0 is refused");
    assert!(err.to_string().contains("spec.shards"), "{err}");

    let sts: StatefulSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "app"},
        "spec": {"replicas": 3, "serviceName": "app", "selector": {"matchLabels": {"app": "app"}},
                 "template": {"metadata": {"labels": {"app": "app"}}, "spec": {"containers": [{"name": "app", "image": "app"}]}}}
    }))
    .expect("sts");
    let sts = Api::<StatefulSet>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &sts)
        .await
        .expect("statefulset");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut nodes = Vec::new();
    for i in 0..3 {
        let name = format!("app-{i}");
        // The sidecar first: a pod is Ready only once its sidecar is subscribed.
        nodes.push(TestNode::start(&nats.url(), "actors", &name).await);
        add_ready_pod(&pods, &sts, &name).await;
    }

    let op_port = free_port();
    let _operator = Process {
        child: Command::new(workspace_binary("aether-operator"))
            .args(["--http-addr", &format!("127.0.0.1:{op_port}")])
            .env("KUBECONFIG", api.kubeconfig())
            .env("POD_NAMESPACE", "default")
            .env("POD_NAME", "operator-0")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("operator"),
    };

    let sp: ShardPlan = serde_json::from_value(json!({
        "apiVersion": "aether.dev/v1alpha1", "kind": "ShardPlan", "metadata": {"name": "actors"},
        "spec": {"statefulSet": "app", "shards": 128, "capacity": 8,
                 "nats": {"url": nats.url(), "subjectPrefix": "actors"}}
    }))
    .expect("object");
    plans
        .create(&PostParams::default(), &sp)
        .await
        .expect("ShardPlan");
    wait_for("epoch 1, 3 members, Ready", T, || async {
        plans.get("actors").await.is_ok_and(|sp| {
            status_of(&sp).epoch == 1
                && status_of(&sp).member_count == 3
                && condition(&sp, "Ready").is_some_and(|c| c.0 == "True")
        })
    })
    .await;
    wait_for("the plan in NATS", T, || async {
        nats_epoch(&nc, "actors").await == 1
    })
    .await;
    for n in &nodes {
        wait_for("every node on epoch 1", T, || async {
            n.shared.settled_at(1)
        })
        .await;
    }

    // Immutable fields stay immutable.
    let err = plans
        .patch(
            "actors",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"shards": 256}})),
        )
        .await
        .expect_err("shards is immutable");
    assert!(err.to_string().contains("immutable"), "{err}");

    // Scale up: a fourth Ready pod with its sidecar. The operator plans epoch 2, the nodes move the
    // shards and report, and the status converges back to Ready with nothing moving.
    // The sidecar first: a pod is Ready only once its sidecar is subscribed.
    nodes.push(TestNode::start(&nats.url(), "actors", "app-3").await);
    add_ready_pod(&pods, &sts, "app-3").await;
    wait_for("epoch 2 with moves", T, || async {
        plans
            .get("actors")
            .await
            .is_ok_and(|sp| status_of(&sp).epoch >= 2)
    })
    .await;
    wait_for(
        "rebalanced: Ready, 4 members, nothing moving",
        T,
        || async {
            plans.get("actors").await.is_ok_and(|sp| {
                let s = status_of(&sp);
                s.member_count == 4
                    && s.moving == 0
                    && condition(&sp, "Ready").is_some_and(|c| c.0 == "True")
            })
        },
    )
    .await;
    let sp = plans.get("actors").await.expect("get");
    assert_eq!(
        nats_epoch(&nc, "actors").await,
        status_of(&sp).epoch,
        "status and NATS agree"
    );

    // A node that announces it is leaving (SIGTERM) is planned out at once, its pod still Ready;
    // announcing `up` again brings it back.
    let announce = |event| {
        let ev = NodeEvent {
            v: VERSION,
            node: "app-3".into(),
            event,
        };
        let nc = nc.clone();
        async move {
            nc.publish(
                Names::new("actors").node_events(),
                encode(&ev).expect("encodes").into(),
            )
            .await
            .expect("publish");
            nc.flush().await.expect("flush");
        }
    };
    let before = status_of(&sp).epoch;
    announce(NodeEventKind::Leaving).await;
    wait_for(
        "app-3 planned out: 3 active members, nothing moving",
        T,
        || async {
            plans.get("actors").await.is_ok_and(|sp| {
                let s = status_of(&sp);
                s.epoch > before
                    && s.members
                        .iter()
                        .filter(|m| m.state == aether_core::crd::MemberState::Active)
                        .all(|m| m.pod != "app-3")
                    && s.moving == 0
                    && condition(&sp, "Ready").is_some_and(|c| c.0 == "True")
            })
        },
    )
    .await;
    let out = status_of(&plans.get("actors").await.expect("get")).epoch;
    announce(NodeEventKind::Up).await;
    wait_for("app-3 back: 4 members, Ready", T, || async {
        plans.get("actors").await.is_ok_and(|sp| {
            let s = status_of(&sp);
            s.epoch > out
                && s.member_count == 4
                && s.moving == 0
                && condition(&sp, "Ready").is_some_and(|c| c.0 == "True")
        })
    })
    .await;

    // A progress report that does not decode is counted, never taken.
    nc.publish(Names::new("actors").progress(1, 0), "not a report".into())
        .await
        .expect("publish");
    wait_for("the malformed report counted", T, || async {
        metrics_text(op_port)
            .await
            .is_some_and(|m| m.contains("aether_operator_malformed_reports_total 1"))
    })
    .await;

    // A Failed report with a megabyte-long error: the status takes it cut to 1 KiB, and every later
    // status write still lands. app-9 is a Ready pod with no sidecar, so the moves to it stay open.
    add_ready_pod(&pods, &sts, "app-9").await;
    // The report names the epoch of the move it reports; should the operator plan again before it
    // lands (a report of an older epoch is not taken), it is sent again for the current one.
    let deadline = std::time::Instant::now() + T;
    let cut = |m: &MoveStatus, shard: u32| {
        m.shard == shard
            && m.last_error.as_deref().is_some_and(|e| {
                // The operator keeps 1,024 bytes of an error, and marks the cut with "...".
                e.starts_with("xxxx") && e.len() <= 1024 + 3
            })
    };
    let mut sent: Option<(u64, u32)> = None;
    let epoch = loop {
        let s = status_of(&plans.get("actors").await.expect("get"));
        if let Some((_, shard)) = sent
            && s.moves.iter().any(|m| cut(m, shard))
        {
            break s.epoch;
        }
        if let Some(m) = s.moves.iter().find(|m| m.to == "app-9")
            && sent.is_none_or(|(e, _)| e != s.epoch)
        {
            let long = Progress {
                v: VERSION,
                epoch: s.epoch,
                shard: m.shard,
                node: "app-0".into(),
                phase: aether_core::crd::MovePhase::Failed,
                actors: 0,
                duration_ms: 0,
                bytes: 0,
                error: Some("x".repeat(1_000_000)),
                from: None,
                to: None,
            };
            nc.publish(
                Names::new("actors").progress(s.epoch, m.shard),
                encode(&long).expect("encodes").into(),
            )
            .await
            .expect("publish");
            sent = Some((s.epoch, m.shard));
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the megabyte error never showed in the status, cut (sent for {sent:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    pods.delete("app-9", &Default::default())
        .await
        .expect("delete app-9");
    wait_for(
        "status written again: app-9 gone, Ready, nothing moving",
        T,
        || async {
            plans.get("actors").await.is_ok_and(|sp| {
                let s = status_of(&sp);
                s.epoch > epoch
                    && s.members.iter().all(|m| m.pod != "app-9")
                    && s.moving == 0
                    && condition(&sp, "Ready").is_some_and(|c| c.0 == "True")
            })
        },
    )
    .await;

    // A ShardPlan whose StatefulSet does not exist says so.
    let orphan: ShardPlan = serde_json::from_value(json!({
        "apiVersion": "aether.dev/v1alpha1", "kind": "ShardPlan", "metadata": {"name": "orphan"},
        "spec": {"statefulSet": "nope", "nats": {"url": nats.url(), "subjectPrefix": "orphan"}}
    }))
    .expect("object");
    plans
        .create(&PostParams::default(), &orphan)
        .await
        .expect("orphan");
    wait_for("Degraded: StatefulSetMissing", T, || async {
        plans.get("orphan").await.is_ok_and(|sp| {
            condition(&sp, "Degraded") == Some(("True".into(), "StatefulSetMissing".into()))
        })
    })
    .await;

    // A ShardPlan naming a Secret that has not opted in: the operator does not read it, and says
    // so and what to do.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client.clone(), "default");
    let plain: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": {"name": "plain"}, "stringData": {"token": "t"}
    }))
    .expect("secret");
    secrets
        .create(&PostParams::default(), &plain)
        .await
        .expect("secret");
    let unlabelled: ShardPlan = serde_json::from_value(json!({
        "apiVersion": "aether.dev/v1alpha1", "kind": "ShardPlan", "metadata": {"name": "unlabelled"},
        "spec": {"statefulSet": "app", "nats": {"url": nats.url(), "subjectPrefix": "unlabelled", "credentialsSecret": "plain"}}
    }))
    .expect("object");
    plans
        .create(&PostParams::default(), &unlabelled)
        .await
        .expect("unlabelled");
    wait_for("Degraded: the Secret lacks the opt-in label", T, || async {
        plans.get("unlabelled").await.is_ok_and(|sp| {
            status_of(&sp).condition("Degraded").is_some_and(|c| {
                c.status == "True"
                    && c.message
                        .contains("lacks the label aether.dev/nats-credentials=true")
            })
        })
    })
    .await;
}

/// The operator's /metrics text.
async fn metrics_text(port: u16) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    c.write_all(b"GET /metrics HTTP/1.0\r\nHost: operator\r\n\r\n")
        .await
        .ok()?;
    let mut out = String::new();
    c.read_to_string(&mut out).await.ok()?;
    Some(out)
}
