//! `make demo`: the whole thing on this machine, as a user would drive it.
//!
//! Starts a local control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler), a
//! nats-server and the test kubelet (pods run as processes), then `helm install`, `kubectl apply` of
//! the README's ShardPlan, a small workload, `kubectl scale` 3 -> 5 -> 2, and shows
//! `kubectl get shardplans -w` plus the operator's Events as they happen. Ctrl-C (or the end) tears
//! everything down.
//!
//! `--real-node` (`make demo-node`, root): the same on a real node instead (containerd, runc, a
//! kubelet, kube-proxy and CoreDNS; NATS in a pod; the images of `make images`), as
//! `make e2e-node` runs it (`aether_tests::realnode`).

use aether_core::crd::ShardPlan;
use aether_node::client::{Client, LoadReport, run_load};
use aether_tests::auth::{Certs, Role};
use aether_tests::bank;
use aether_tests::k8s::{ControlPlane, k8s_tool};
use aether_tests::realnode::{POD_NATS_URL, RealCluster};
use aether_tests::stack::{self, NS, Stack};
use futures::StreamExt;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const ACTORS: usize = 500;
const ACCOUNTS: usize = 1000;

fn step(text: &str) {
    println!("\n\x1b[1m==> {text}\x1b[0m");
}

/// Where the demo runs: the control plane, NATS as the pods and as this process reach it, and the
/// chart's settings for that kind of node.
struct Target<'a> {
    cp: &'a ControlPlane,
    certs: &'a Certs,
    pods_url: String,
    host_url: String,
    sets: Vec<&'static str>,
}

impl Target<'_> {
    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> (bool, String) {
        stack::kubectl(self.cp, args, stdin)
    }

    fn helm_install(&self, sets: &[&str]) -> (bool, String) {
        let mut all = self.sets.clone();
        all.extend_from_slice(sets);
        stack::helm_install(&self.cp.kubeconfig(), &self.pods_url, &all)
    }

    fn example_shardplan(&self) -> String {
        stack::example_shardplan(&self.pods_url)
    }

    async fn connect_as(&self, role: Role) -> async_nats::Client {
        stack::connect_as(&self.host_url, self.certs, role).await
    }
}

fn run(stack: &Target<'_>, shown: &str, args: &[&str]) -> Result<(), String> {
    println!("$ {shown}");
    let (ok, out) = stack.kubectl(args, None);
    print!("{out}");
    if ok {
        Ok(())
    } else {
        Err(format!("{shown} failed"))
    }
}

async fn settled(plans: &Api<ShardPlan>, members: u32, after_epoch: u64) -> Result<u64, String> {
    let timeout = Duration::from_secs(180);
    let sp =
        aether_tests::stack::wait_settled(plans, "actors", members, after_epoch, timeout).await?;
    Ok(sp.status.map_or(0, |s| s.epoch))
}

async fn demo(stack: &Target<'_>) -> Result<(), String> {
    let client = stack.cp.client().await;
    step(
        "helm install aether charts/aether --set example.enabled=true (operator, CRD, RBAC, a 3-pod StatefulSet with sidecars)",
    );
    let (ok, out) = stack.helm_install(&["example.terminationGracePeriodSeconds=40"]);
    print!("{out}");
    if !ok {
        return Err("helm install failed".into());
    }

    // What `kubectl get shardplans -w` shows, for the whole demo.
    let kubeconfig = stack.cp.kubeconfig();
    let mut watch = tokio::process::Command::new(k8s_tool("kubectl"))
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["-n", NS, "get", "shardplans", "-w"])
        .stdout(Stdio::inherit())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("kubectl: {e}"))?;
    // The operator's Events, as they come.
    let events: Api<Event> = Api::namespaced(client.clone(), NS);
    let since = k8s_openapi::jiff::Timestamp::now();
    let event_task = tokio::spawn(async move {
        let mut s = watcher(events, watcher::Config::default())
            .applied_objects()
            .boxed();
        while let Some(Ok(e)) = s.next().await {
            let fresh = e.event_time.as_ref().is_none_or(|t| t.0 >= since);
            if fresh && e.reporting_controller.as_deref() != Some("default-scheduler") {
                println!(
                    "   event {} {}: {}",
                    e.type_.unwrap_or_default(),
                    e.reason.unwrap_or_default(),
                    e.note.unwrap_or_default()
                );
            }
        }
    });

    let plans: Api<ShardPlan> = Api::namespaced(client.clone(), NS);
    let epoch = settled(&plans, 3, 0).await?;

    step(
        "kubectl apply -f examples/shardplan.yaml (the README's ShardPlan: adds migration limits)",
    );
    println!("$ kubectl apply -f examples/shardplan.yaml");
    let (ok, out) = stack.kubectl(&["apply", "-f", "-"], Some(&stack.example_shardplan()));
    print!("{out}");
    if !ok {
        return Err("kubectl apply failed".into());
    }
    println!("$ kubectl apply -f bad.yaml   # shards changed: refused by the API server");
    let bad = stack
        .example_shardplan()
        .replace("shards: 1024", "shards: 512");
    let (_, out) = stack.kubectl(&["apply", "-f", "-"], Some(&bad));
    print!("{out}");

    step(&format!(
        "a workload: {ACTORS} counter actors, 8 clients adding 1 at a time through the sidecars"
    ));
    let nc = stack.connect_as(Role::Client).await;
    let app = Client::new(nc, "actors");
    step(&format!(
        "the example app (Python, a container of every pod): {ACCOUNTS} bank accounts opened with {} each, then random transfers between them and holds (half captured, half released by their timers)",
        bank::OPENING
    ));
    bank::open(&app, ACCOUNTS, Duration::from_secs(60)).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let money = bank::transfers(
        app.clone(),
        ACCOUNTS,
        stop.clone(),
        0,
        Duration::from_secs(60),
    );
    let holding = bank::holds(
        app.clone(),
        ACCOUNTS,
        stop.clone(),
        0,
        Duration::from_secs(60),
    );
    let load = {
        let (app, stop) = (app.clone(), stop.clone());
        tokio::spawn(async move {
            let mut total = LoadReport::default();
            while !stop.load(Ordering::Relaxed) {
                let r = run_load(&app, "acct", ACTORS, ACTORS, 8, Duration::from_secs(60)).await;
                total.absorb(r);
            }
            total
        })
    };

    step("kubectl scale statefulset actors --replicas=5");
    run(
        stack,
        "kubectl scale statefulset actors --replicas=5",
        &["scale", "statefulset", "actors", "--replicas=5"],
    )?;
    let epoch = settled(&plans, 5, epoch).await?;

    step(
        "kubectl scale statefulset actors --replicas=2 (three sidecars drain: their shards move first)",
    );
    run(
        stack,
        "kubectl scale statefulset actors --replicas=2",
        &["scale", "statefulset", "actors", "--replicas=2"],
    )?;
    settled(&plans, 2, epoch).await?;

    stop.store(true, Ordering::Relaxed);
    let report = load.await.map_err(|e| e.to_string())?;
    step("checking every actor against its acknowledged commands");
    let mut wrong = 0;
    for (actor, sum) in &report.acked {
        let reply = app
            .read("counter", actor)
            .await
            .map_err(|e| e.to_string())?;
        let value = match &reply.outcome {
            aether_core::protocol::Outcome::Ok(ok) => ok.state["value"].as_i64().unwrap_or(-1),
            aether_core::protocol::Outcome::Error(e) => return Err(format!("{actor}: {e:?}")),
        };
        if value != *sum {
            wrong += 1;
        }
    }
    println!(
        "{} commands acknowledged, {} failed; {} actors checked, {wrong} with a state other than their acknowledged commands",
        report.ok,
        report.errors,
        report.acked.len()
    );
    step("checking every bank account against the acknowledged transfers and holds");
    let transfers = money.await.map_err(|e| e.to_string())??;
    let holds = holding.await.map_err(|e| e.to_string())??;
    let expected = bank::expected_with(ACCOUNTS, &transfers, &holds);
    bank::settle(&app, &expected, Duration::from_secs(60)).await?;
    let captured: i64 = holds.iter().filter(|h| h.2).map(|h| h.1).sum();
    println!(
        "{} transfers and {} holds acknowledged ({} released by their timers); every account holds what they say; the {} accounts hold {} in all: {} opened, {captured} paid out by captured holds",
        transfers.len(),
        holds.len(),
        holds.iter().filter(|h| !h.2).count(),
        ACCOUNTS,
        expected.iter().sum::<i64>(),
        bank::OPENING * ACCOUNTS as i64
    );
    println!("$ kubectl get shardplans,pods");
    let (_, out) = stack.kubectl(&["get", "shardplans,pods"], None);
    print!("{out}");
    let _ = watch.kill().await;
    event_task.abort();
    if wrong > 0 {
        return Err(format!("{wrong} actors lost acknowledged commands"));
    }
    Ok(())
}

/// Runs the demo on `target` until it ends or Ctrl-C.
async fn demo_or_interrupt(target: &Target<'_>) -> Result<(), String> {
    tokio::select! {
        r = demo(target) => r,
        _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    let real_node = std::env::args().any(|a| a == "--real-node");
    let started = Instant::now();
    let result = if real_node {
        step(
            "starting etcd, kube-apiserver and the rest on the bridge, then a real node: containerd, runc, a kubelet, kube-proxy, CoreDNS; NATS in a pod",
        );
        let real = RealCluster::start().await;
        println!("up in {:.1}s", started.elapsed().as_secs_f64());
        let target = Target {
            cp: &real.cp,
            certs: &real.certs,
            pods_url: POD_NATS_URL.into(),
            host_url: RealCluster::host_nats_url(),
            sets: vec!["image.pullPolicy=Never"],
        };
        let r = demo_or_interrupt(&target).await;
        step("tearing down");
        r
    } else {
        step(
            "starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler, nats-server and the test kubelet",
        );
        let stack = Stack::start().await;
        println!(
            "up in {:.1}s; pods' logs in {}",
            started.elapsed().as_secs_f64(),
            stack.logs.display()
        );
        let target = Target {
            cp: &stack.cp,
            certs: &stack.certs,
            pods_url: stack.nats_url.clone(),
            host_url: stack.nats_url.clone(),
            sets: Vec::new(),
        };
        let r = demo_or_interrupt(&target).await;
        step("tearing down");
        r
    };
    match result {
        Ok(()) => {
            println!("demo finished in {:.0}s", started.elapsed().as_secs_f64());
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("demo: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
