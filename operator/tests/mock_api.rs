//! Reconcile against a mock API server (a `tower_test` pair): the error paths a real API server is hard
//! to make produce on cue. Each scenario lists the requests it expects, in order, and answers them.

use aether_core::crd::{ShardPlan, ShardPlanSpec};
use aether_operator::controller::{Context, Metrics, reconcile};
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use std::sync::Arc;
use std::time::Duration;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn shardplan() -> Arc<ShardPlan> {
    let spec: ShardPlanSpec = serde_json::from_value(serde_json::json!({
        "statefulSet": "app",
        // Nothing listens here: NATS is unreachable, which the status must say.
        "nats": {"url": "nats://127.0.0.1:1"}
    }))
    .expect("spec");
    let mut sp = ShardPlan::new("plan", spec);
    sp.metadata.namespace = Some("default".into());
    sp.metadata.generation = Some(1);
    Arc::new(sp)
}

fn status_json(code: u16, reason: &str) -> serde_json::Value {
    serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": reason, "reason": reason, "code": code
    })
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(Body::from(serde_json::to_vec(body).expect("json")))
        .expect("response")
}

async fn expect(
    handle: &mut Handle,
    method: Method,
    path: &str,
) -> (
    Request<Body>,
    tower_test::mock::SendResponse<Response<Body>>,
) {
    let (req, send) = tokio::time::timeout(Duration::from_secs(10), handle.next_request())
        .await
        .unwrap_or_else(|_| panic!("no {method} {path} within 10s"))
        .unwrap_or_else(|| panic!("client gone before {method} {path}"));
    assert_eq!(req.method(), method);
    assert!(
        req.uri().path() == path,
        "expected {path}, got {}",
        req.uri()
    );
    (req, send)
}

/// The reconcile reads the ShardPlan fresh first (the cache may be behind its own status write).
async fn serve_fresh_read(handle: &mut Handle, sp: &ShardPlan) {
    let (_, send) = expect(
        handle,
        Method::GET,
        "/apis/aether.dev/v1alpha1/namespaces/default/shardplans/plan",
    )
    .await;
    send.send_response(json_response(
        StatusCode::OK,
        &serde_json::to_value(sp).expect("json"),
    ));
}

/// The reconcile lists the ShardPlans (another one on the same prefix would conflict): only `sp`.
async fn serve_shardplan_list(handle: &mut Handle, sp: &ShardPlan) {
    let (_, send) = expect(handle, Method::GET, "/apis/aether.dev/v1alpha1/shardplans").await;
    let list = serde_json::json!({
        "apiVersion": "aether.dev/v1alpha1", "kind": "ShardPlanList", "metadata": {},
        "items": [serde_json::to_value(sp).expect("json")]
    });
    send.send_response(json_response(StatusCode::OK, &list));
}

async fn body_json(req: Request<Body>) -> serde_json::Value {
    let bytes = req.into_body().collect_bytes().await.expect("body");
    serde_json::from_slice(&bytes).expect("json body")
}

#[tokio::test]
async fn a_conflicting_status_write_is_an_error_and_publishes_nothing() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let ctx = Context::new(
        client,
        "test",
        Arc::new(Metrics::default()),
        std::time::Duration::from_secs(5),
    );
    let sp = shardplan();
    let run = tokio::spawn(reconcile(sp.clone(), ctx.clone()));
    serve_fresh_read(&mut handle, &sp).await;

    let (_, send) = expect(
        &mut handle,
        Method::GET,
        "/apis/apps/v1/namespaces/default/statefulsets/app",
    )
    .await;
    send.send_response(json_response(
        StatusCode::NOT_FOUND,
        &status_json(404, "NotFound"),
    ));
    serve_shardplan_list(&mut handle, &sp).await;
    let (req, send) = expect(
        &mut handle,
        Method::PATCH,
        "/apis/aether.dev/v1alpha1/namespaces/default/shardplans/plan/status",
    )
    .await;
    let patch = body_json(req).await;
    let degraded = patch["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Degraded").cloned())
        .expect("a Degraded condition");
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "StatefulSetMissing");
    assert!(
        degraded["message"]
            .as_str()
            .is_some_and(|m| m.contains("spec.statefulSet"))
    );
    send.send_response(json_response(
        StatusCode::CONFLICT,
        &status_json(409, "Conflict"),
    ));

    let result = run.await.expect("reconcile task");
    let err = result.expect_err("a conflict is an error");
    assert_eq!(err.reason(), "conflict");
    // No Event and no other call after the failed write.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), handle.next_request())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn an_unreachable_nats_is_reported_with_what_to_fix() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let ctx = Context::new(
        client,
        "test",
        Arc::new(Metrics::default()),
        std::time::Duration::from_secs(5),
    );
    let sp = shardplan();
    let run = tokio::spawn(reconcile(sp.clone(), ctx.clone()));
    serve_fresh_read(&mut handle, &sp).await;

    let sts = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "app", "namespace": "default"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "app"}}, "serviceName": "app",
                 "template": {"metadata": {"labels": {"app": "app"}}, "spec": {"containers": []}}}
    });
    let (_, send) = expect(
        &mut handle,
        Method::GET,
        "/apis/apps/v1/namespaces/default/statefulsets/app",
    )
    .await;
    send.send_response(json_response(StatusCode::OK, &sts));
    let (req, send) = expect(&mut handle, Method::GET, "/api/v1/namespaces/default/pods").await;
    assert!(
        req.uri()
            .query()
            .is_some_and(|q| q.contains("labelSelector=app%3Dapp")),
        "{}",
        req.uri()
    );
    let pods =
        serde_json::json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []});
    send.send_response(json_response(StatusCode::OK, &pods));
    serve_shardplan_list(&mut handle, &sp).await;

    let (req, send) = expect(
        &mut handle,
        Method::PATCH,
        "/apis/aether.dev/v1alpha1/namespaces/default/shardplans/plan/status",
    )
    .await;
    let patch = body_json(req).await;
    let cs = patch["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let degraded = cs
        .iter()
        .find(|c| c["type"] == "Degraded")
        .expect("Degraded");
    assert_eq!(degraded["reason"], "NatsUnreachable");
    assert!(
        degraded["message"]
            .as_str()
            .is_some_and(|m| m.contains("spec.nats.url"))
    );
    let ready = cs.iter().find(|c| c["type"] == "Ready").expect("Ready");
    assert_eq!(ready["status"], "False");
    let mut echoed = serde_json::to_value(&*sp).expect("json");
    echoed["status"] = patch["status"].clone();
    send.send_response(json_response(StatusCode::OK, &echoed));

    // A Warning Event says the same.
    let (req, send) = expect(
        &mut handle,
        Method::POST,
        "/apis/events.k8s.io/v1/namespaces/default/events",
    )
    .await;
    let event = body_json(req).await;
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "NatsUnreachable");
    send.send_response(json_response(StatusCode::CREATED, &event));

    let action = run
        .await
        .expect("task")
        .expect("a degraded reconcile is not an error");
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(Duration::from_secs(10))
    );
}
