//! The chart's dashboard and alerts proven against real data (`make observability`, not part of
//! `make test`): the end-to-end stack with the Prometheus Operator's CRDs, `helm install` with
//! `monitoring.*.enabled`, and a real Prometheus (built from its Go module) configured from what the
//! chart put in the cluster, as the Prometheus Operator would: its PodMonitors become scrape jobs
//! over the API server's pods (Kubernetes service discovery, the same relabelling), its
//! PrometheusRule the rule file. Under the bank's load and a scale-out (moves), every panel query
//! of the dashboard ConfigMap and every alert expression (its value, compared with `bool`) must
//! return series, name only metrics Prometheus has scraped, and every rule evaluate without error.

use aether_core::crd::ShardPlan;
use aether_node::client::Client;
use aether_tests::app::http;
use aether_tests::auth::Role;
use aether_tests::stack::{NS, Stack, wait_settled};
use aether_tests::{Process, bank, free_port, wait_for};
use kube::Api;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const T: Duration = Duration::from_secs(120);
/// What Grafana's `$__rate_interval` becomes here (scrapes every second).
const RATE_INTERVAL: &str = "30s";

fn tool(var: &str) -> PathBuf {
    let p = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("{var} is not set: run `make observability`"));
    assert!(p.is_file(), "{var}: {} is not a file", p.display());
    p
}

/// `kubectl get <what> -o json` in every namespace: the items.
fn items(stack: &Stack, what: &str) -> Vec<Value> {
    let (ok, out) = stack.kubectl(&["get", what, "-A", "-o", "json"], None);
    assert!(ok, "kubectl get {what}: {out}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    v["items"].as_array().cloned().unwrap_or_default()
}

/// A Kubernetes label name as Prometheus's service discovery spells it.
fn sanitize(label: &str) -> String {
    label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// The scrape job the Prometheus Operator makes of a PodMonitor (selector, namespaces, port,
/// path, and the `namespace`, `pod`, `container` and `job` labels), with Kubernetes pod discovery.
fn scrape_job(pm: &Value, kubeconfig: &Path) -> Value {
    let (ns, name) = (
        pm["metadata"]["namespace"].as_str().unwrap_or_default(),
        pm["metadata"]["name"].as_str().unwrap_or_default(),
    );
    let spec = &pm["spec"];
    let endpoint = &spec["podMetricsEndpoints"][0];
    let mut relabel = Vec::new();
    for (k, v) in spec["selector"]["matchLabels"]
        .as_object()
        .cloned()
        .unwrap_or_default()
    {
        let k = sanitize(&k);
        relabel.push(json!({
            "action": "keep",
            "source_labels": [format!("__meta_kubernetes_pod_label_{k}"), format!("__meta_kubernetes_pod_labelpresent_{k}")],
            "regex": format!("({});true", v.as_str().unwrap_or_default()),
        }));
    }
    relabel.push(json!({"action": "keep", "source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": endpoint["port"]}));
    for (from, to) in [
        ("namespace", "namespace"),
        ("pod_name", "pod"),
        ("pod_container_name", "container"),
    ] {
        relabel.push(
            json!({"source_labels": [format!("__meta_kubernetes_{from}")], "target_label": to}),
        );
    }
    relabel.push(json!({"target_label": "job", "replacement": format!("{ns}/{name}")}));
    let mut sd = json!({"role": "pod", "kubeconfig_file": kubeconfig});
    if spec["namespaceSelector"]["any"] != json!(true) {
        sd["namespaces"] = json!({"names": spec["namespaceSelector"]["matchNames"]});
    }
    json!({
        "job_name": format!("podMonitor/{ns}/{name}/0"),
        "metrics_path": endpoint["path"],
        "scrape_interval": "1s",
        "kubernetes_sd_configs": [sd],
        "relabel_configs": relabel,
    })
}

/// Form encoding of one value.
fn form(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An instant query through Prometheus's HTTP API: the result vector, or the error it gave.
async fn query(port: u16, q: &str) -> Result<Vec<Value>, String> {
    let body = format!("query={}", form(q));
    let headers = [("Content-Type", "application/x-www-form-urlencoded")];
    let (status, out) = http(port, "POST", "/api/v1/query", &headers, body.as_bytes()).await;
    let v: Value = serde_json::from_slice(&out).map_err(|e| format!("{status}: {e}"))?;
    if v["status"] != "success" {
        return Err(format!("{status}: {}", v["error"]));
    }
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

/// The `aether_*` metric names an expression reads.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("aether_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// An alert's expression with its final comparison made a `bool` one: its value for every series,
/// firing or not.
fn valued(expr: &str) -> String {
    for op in [" > ", " < ", " == ", " >= ", " <= "] {
        if let Some((lhs, rhs)) = expr.rsplit_once(op) {
            return format!("{lhs}{op}bool {rhs}");
        }
    }
    panic!("an alert without a comparison: {expr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_and_alert_returns_series_from_a_real_prometheus() {
    let prometheus = tool("AETHER_PROMETHEUS");
    let crds = tool("AETHER_PROMETHEUS_OPERATOR_CRDS");
    let stack = Stack::start().await;
    let (ok, out) = stack.kubectl(
        &["apply", "--server-side", "-f", &crds.display().to_string()],
        None,
    );
    assert!(ok, "the Prometheus Operator's CRDs: {out}");
    let (ok, out) = stack.helm_install(&[
        "monitoring.dashboards.enabled=true",
        "monitoring.prometheusRule.enabled=true",
        "monitoring.podMonitor.enabled=true",
    ]);
    assert!(ok, "helm install failed: {out}");
    let plans: Api<ShardPlan> = Api::namespaced(stack.cp.client().await, NS);
    let first = wait_settled(&plans, "actors", 3, 0, T)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    // What the chart put in the cluster, read back as the Prometheus Operator and Grafana would.
    let dir = tempfile::tempdir().expect("temp dir");
    let rules = items(&stack, "prometheusrules");
    assert_eq!(rules.len(), 1, "one PrometheusRule");
    let rule_file = dir.path().join("aether.rules.json");
    std::fs::write(&rule_file, rules[0]["spec"].to_string()).expect("rule file");
    let monitors = items(&stack, "podmonitors");
    assert_eq!(
        monitors.len(),
        2,
        "the operator's and the nodes' PodMonitors"
    );
    let kubeconfig = stack.cp.kubeconfig();
    let jobs: Vec<Value> = monitors
        .iter()
        .map(|m| scrape_job(m, &kubeconfig))
        .collect();
    let config = json!({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [rule_file],
        "scrape_configs": jobs,
    });
    let config_file = dir.path().join("prometheus.json");
    std::fs::write(&config_file, config.to_string()).expect("config");
    let dashboards: Vec<Value> = items(&stack, "configmaps")
        .into_iter()
        .filter(|c| c["metadata"]["labels"]["grafana_dashboard"] == "1")
        .collect();
    assert_eq!(dashboards.len(), 1, "one dashboard ConfigMap");
    let dashboard: Value = serde_json::from_str(
        dashboards[0]["data"]["aether.json"]
            .as_str()
            .expect("aether.json"),
    )
    .expect("the dashboard is JSON");

    let port = free_port();
    let _prom = Process {
        child: Command::new(&prometheus)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", prometheus.display())),
    };

    // Load: the bank's transfers and holds (timers), and a scale-out (moves) while it runs.
    let nc = stack.connect_as(Role::Client).await;
    let app = Client::new(nc, "actors");
    bank::open(&app, 200, T)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let stop = Arc::new(AtomicBool::new(false));
    let money = bank::transfers(app.clone(), 200, stop.clone(), 0, T);
    let holding = bank::holds(app.clone(), 200, stop.clone(), 0, T);
    let (ok, out) = stack.kubectl(&["scale", "statefulset", "actors", "--replicas=4"], None);
    assert!(ok, "{out}");
    let epoch = first.status.clone().unwrap_or_default().epoch;
    wait_settled(&plans, "actors", 4, epoch, T)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // Every target scraped: 4 nodes and 2 operator replicas up.
    wait_for("Prometheus scraping 6 targets", T, || async {
        query(port, "count(up == 1)")
            .await
            .is_ok_and(|r| r.first().and_then(|s| s["value"][1].as_str()) == Some("6"))
    })
    .await;
    // Rates over the panels' window need several scrapes of every target.
    wait_for("5 scrapes of every target", T, || async {
        query(port, "min(count_over_time(up[30s])) >= 5")
            .await
            .is_ok_and(|r| !r.is_empty())
    })
    .await;
    // A move's duration is observed on its source once it committed, and rates need two scrapes.
    wait_for("a move's duration scraped", T, || async {
        query(port, "sum(aether_node_move_duration_seconds_count) > 0")
            .await
            .is_ok_and(|r| !r.is_empty())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    money
        .await
        .expect("transfers")
        .unwrap_or_else(|e| panic!("{e}"));
    holding
        .await
        .expect("holds")
        .unwrap_or_else(|e| panic!("{e}"));

    let scraped: BTreeSet<String> = {
        let (_, out) = http(port, "GET", "/api/v1/label/__name__/values", &[], b"").await;
        let v: Value = serde_json::from_slice(&out).expect("names");
        v["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n.as_str().map(str::to_owned))
            .collect()
    };
    let mut problems = Vec::new();
    let mut check = async |what: String, expr: String| {
        for name in metric_names(&expr) {
            if !scraped.contains(&name) {
                problems.push(format!("{what}: no metric {name}"));
            }
        }
        match query(port, &expr).await {
            Ok(r) if r.is_empty() => problems.push(format!("{what}: no series for {expr}")),
            Ok(_) => {}
            Err(e) => problems.push(format!("{what}: {e} for {expr}")),
        }
    };
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_default()
                .replace("$__rate_interval", RATE_INTERVAL);
            check(format!("panel {:?}", panel["title"]), expr).await;
            queries += 1;
        }
    }
    let mut alerts = 0;
    for group in rules[0]["spec"]["groups"].as_array().into_iter().flatten() {
        for rule in group["rules"].as_array().into_iter().flatten() {
            let expr = rule["expr"].as_str().unwrap_or_default();
            check(format!("alert {}", rule["alert"]), valued(expr)).await;
            alerts += 1;
        }
    }
    // Prometheus evaluates each rule itself: none may fail.
    let (_, out) = http(port, "GET", "/api/v1/rules", &[], b"").await;
    let v: Value = serde_json::from_slice(&out).expect("rules");
    let mut evaluated = 0;
    for group in v["data"]["groups"].as_array().into_iter().flatten() {
        for rule in group["rules"].as_array().into_iter().flatten() {
            evaluated += 1;
            if rule["health"] != "ok" {
                problems.push(format!(
                    "rule {}: {} {}",
                    rule["name"], rule["health"], rule["lastError"]
                ));
            }
        }
    }
    println!(
        "{queries} panel queries and {alerts} alerts checked against {} scraped metrics",
        scraped.len()
    );
    assert!(
        queries >= 20 && alerts >= 10,
        "{queries} queries, {alerts} alerts"
    );
    assert_eq!(evaluated, alerts, "Prometheus loaded every alert");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
