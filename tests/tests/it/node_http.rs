//! The sidecar's HTTP endpoints as a kubelet sees them: a separate `aether-node` process, probed over
//! HTTP while NATS is up, down and back.

use aether_tests::cluster::spawn_process;
use aether_tests::{NatsServer, free_port, http_get as get, wait_for, workspace_binary};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_nats_and_says_why() {
    let bin = workspace_binary("aether-node");
    let mut nats = NatsServer::start();
    let port = free_port();
    let _node = spawn_process(&bin, &nats.url(), "http", "app-0", port);
    wait_for("ready", T, || async {
        matches!(get(port, "/readyz").await, Some((200, _)))
    })
    .await;
    assert_eq!(get(port, "/healthz").await.map(|r| r.0), Some(200));
    let (status, metrics) = get(port, "/metrics").await.expect("metrics");
    assert_eq!(status, 200);
    assert!(metrics.contains("aether_node_plan_epoch"), "{metrics}");

    nats.kill();
    wait_for("not ready while NATS is gone", T, || async {
        matches!(get(port, "/readyz").await, Some((503, body)) if body.contains("NATS"))
    })
    .await;
    assert_eq!(
        get(port, "/healthz").await.map(|r| r.0),
        Some(200),
        "alive all the same"
    );
    nats.restart();
    wait_for("ready again", T, || async {
        matches!(get(port, "/readyz").await, Some((200, _)))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_nats_is_not_ready_and_says_so() {
    let bin = workspace_binary("aether-node");
    let port = free_port();
    let nowhere = format!("nats://127.0.0.1:{}", free_port());
    let _node = spawn_process(&bin, &nowhere, "http", "app-0", port);
    wait_for("a 503 naming the NATS address", T, || async {
        matches!(get(port, "/readyz").await, Some((503, body)) if body.contains(&nowhere))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_stop_the_process_with_one_line() {
    let bin = workspace_binary("aether-node");
    let out = std::process::Command::new(bin)
        .args(["run", "--pod-name", "Not_A_Pod"])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pod name"), "{err}");
}
