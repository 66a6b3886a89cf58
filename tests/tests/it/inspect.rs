//! `kubectl aether` (issue 31) against a real nats-server configured with the shipped roles and a
//! real node: each subcommand's answer checked against what the node serves and the log holds,
//! every bad argument and missing thing a clear error, and the inspect user unable to do more
//! than read.

use crate::security::{Roles, connect_as, node_with};
use aether_core::hash::shard_of;
use aether_core::protocol::{ActorRef, Op, Outcome, PlanMessage, Request};
use aether_node::client::Client;
use aether_tests::auth::Role;
use aether_tests::cluster::{TestNode, next_plan, publish, publish_message};
use aether_tests::{wait_for, workspace_binary};
use serde_json::{Value, json};
use std::process::Command;
use std::time::Duration;

const PREFIX: &str = "aether";
const SHARDS: u32 = 16;
const T: Duration = Duration::from_secs(30);

/// Runs `kubectl-aether` as the inspect user on `url` with `args`: (exit success, stdout, stderr).
fn kubectl_aether(url: &str, args: &[&str]) -> (bool, String, String) {
    let (user, password) = Role::Inspect.user(PREFIX);
    let out = Command::new(workspace_binary("kubectl-aether"))
        .args(["--nats-url", url, "--nats-user", &user, "--prefix", PREFIX])
        .args(args)
        .env("NATS_PASSWORD", password)
        .output()
        .unwrap_or_else(|e| panic!("kubectl-aether: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json_of(url: &str, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let (ok, out, err) = kubectl_aether(url, &all);
    assert!(ok, "kubectl aether {args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

fn fails_with(url: &str, args: &[&str], why: &str) {
    let (ok, out, err) = kubectl_aether(url, args);
    assert!(!ok, "kubectl aether {args:?} succeeded: {out}");
    assert!(
        err.contains(why),
        "kubectl aether {args:?}: {err:?} does not say {why:?}"
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_aether_shows_where_an_actor_lives_its_state_and_its_history() {
    let roles = Roles::start();
    let url = roles.nats.url();
    let (operator, _) = connect_as(&url, Role::Operator).await;
    let node = TestNode::start_with(node_with(&url, "app-0")).await;
    let plan = next_plan(None, &["app-0"], SHARDS, 4);
    publish(&operator, PREFIX, &plan, 10).await;
    wait_for("the node holds the plan", T, || async {
        node.shared.settled_at(plan.epoch)
    })
    .await;
    let (client_nc, _) = connect_as(&url, Role::Client).await;
    let client = Client::new(client_nc, PREFIX);
    let command = |id: &str, c: Value, cmd: &str| {
        Request::new(
            ActorRef::new("counter", id),
            Op::Command { command: c },
            Some(cmd.into()),
        )
    };
    for (i, n) in [2, 3, 5].iter().enumerate() {
        let r = client
            .send(&command(
                "user/42",
                json!({ "add": n }),
                &format!("add-{i}"),
            ))
            .await
            .expect("a reply");
        assert!(matches!(r.outcome, Outcome::Ok(_)), "{r:?}");
    }
    let timer = json!({"schedule": {"name": "later", "after": "1h", "command": {"add": 1}}});
    let r = client
        .send(&command("user/42", timer, "timer"))
        .await
        .expect("a reply");
    let Outcome::Ok(served) = &r.outcome else {
        panic!("{r:?}")
    };
    for i in 0..5 {
        client
            .send(&command(&format!("other-{i}"), json!({"add": 1}), "one"))
            .await
            .expect("a reply");
    }

    // where: the shard and owner by the plan.
    let w = json_of(&url, &["where", "counter/user/42"]);
    assert_eq!(w["shard"], json!(shard_of("user/42", SHARDS)));
    assert_eq!(w["owner"], json!("app-0"));
    assert_eq!(w["epoch"], json!(plan.epoch));
    let (ok, table, _) = kubectl_aether(&url, &["where", "counter/user/42"]);
    assert!(
        ok && table.contains("OWNER") && table.contains("app-0"),
        "{table}"
    );

    // get: what the node serves, from the log.
    let g = json_of(&url, &["get", "counter/user/42"]);
    assert_eq!(g["state"], (*served.state).clone());
    assert_eq!(g["version"], json!(served.version));
    assert_eq!(g["timers"][0]["name"], json!("later"));
    assert_eq!(g["where"]["owner"], json!("app-0"));
    let y = kubectl_aether(&url, &["get", "counter/user/42", "-o", "yaml"]);
    assert!(y.0 && y.1.contains("version: 4"), "{}", y.1);

    // history: every record, and the state after any version.
    let h = json_of(&url, &["history", "counter/user/42", "--at", "2"]);
    let records = h["records"].as_array().expect("records");
    assert_eq!(records.len(), 4);
    assert_eq!(records[0]["command"], json!("add-0"));
    assert_eq!(records[3]["timersSet"], json!(["later"]));
    assert_eq!(h["stateAt"], json!({"value": 5}));
    let h = json_of(&url, &["history", "counter/user/42", "--since", "3"]);
    assert_eq!(h["records"].as_array().map(Vec::len), Some(2));

    // actors: ids from the stream's subjects, paged by --limit.
    let a = json_of(&url, &["actors", "--kind", "counter"]);
    let mut ids: Vec<String> = a["actors"]
        .as_array()
        .expect("actors")
        .iter()
        .map(|x| x["actor"].as_str().unwrap_or_default().to_owned())
        .collect();
    ids.sort();
    assert_eq!(ids.len(), 6, "{ids:?}");
    assert!(ids.contains(&"counter/user/42".to_owned()));
    assert_eq!(a["more"], json!(false));
    let a = json_of(&url, &["actors", "--limit", "2"]);
    assert_eq!(
        (a["actors"].as_array().map(Vec::len), &a["more"]),
        (Some(2), &json!(true))
    );
    // Pages of 2 with --after the page's `next`: every actor once, in (shard, KIND/ID) order.
    let (mut paged, mut after) = (Vec::new(), None::<String>);
    loop {
        let mut args = vec!["actors", "--kind", "counter", "--limit", "2"];
        if let Some(a) = &after {
            args.extend(["--after", a.as_str()]);
        }
        let page = json_of(&url, &args);
        for x in page["actors"].as_array().expect("actors") {
            paged.push((
                x["shard"].as_u64().unwrap_or_default(),
                x["actor"].as_str().unwrap_or_default().to_owned(),
            ));
        }
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => break,
        }
        assert!(paged.len() <= ids.len(), "pages repeat: {paged:?}");
    }
    let mut sorted = paged.clone();
    sorted.sort();
    assert_eq!(paged, sorted, "in order");
    let mut paged_ids: Vec<String> = paged.into_iter().map(|(_, a)| a).collect();
    paged_ids.sort();
    assert_eq!(paged_ids, ids, "every actor once");
    let (ok, _, err) = kubectl_aether(&url, &["actors", "--after", "x/counter/a"]);
    assert!(!ok && err.contains("expected SHARD/KIND/ID"), "{err}");
    // Completions: a bash script that parses and offers the subcommands and their options.
    let (ok, script, err) = kubectl_aether(&url, &["completion", "bash"]);
    assert!(ok, "{err}");
    assert!(
        script.contains("history") && script.contains("--after"),
        "{script}"
    );
    let file = std::env::temp_dir().join(format!("kubectl-aether-{}.bash", std::process::id()));
    std::fs::write(&file, &script).expect("script");
    let parsed = std::process::Command::new("bash")
        .arg("-n")
        .arg(&file)
        .status()
        .expect("bash");
    let _ = std::fs::remove_file(&file);
    assert!(parsed.success(), "bash -n refused the completion script");
    let shard = shard_of("user/42", SHARDS).to_string();
    let a = json_of(&url, &["actors", "--shard", &shard]);
    assert!(a["actors"].as_array().expect("actors").iter().all(|x| {
        x["shard"]
            == json!(shard_of(
                x["actor"]
                    .as_str()
                    .unwrap_or_default()
                    .trim_start_matches("counter/"),
                SHARDS
            ))
    }));

    // status: one pod holding the plan, every shard on it.
    let st = json_of(&url, &["status"]);
    assert_eq!(st["epoch"], json!(plan.epoch));
    assert_eq!(
        st["members"],
        json!([{"pod": "app-0", "shards": SHARDS, "holds": plan.epoch}])
    );
    assert_eq!(st["notHoldingPlan"], json!([]));
    assert!(
        st["streams"]["events"]["messages"].as_u64() >= Some(10),
        "{st}"
    );

    // A second pod and a plan that moves half the shards to it: `moves` follows them to Done,
    // `status` shows both pods holding it and the shards split.
    let node1 = TestNode::start_with(node_with(&url, "app-1")).await;
    let p2 = next_plan(Some(&plan), &["app-0", "app-1"], SHARDS, 4);
    // As the operator publishes a retry: the attempts its moves had before.
    let mut msg = PlanMessage::new(&p2, 4, 10);
    let tried = p2.moves[0].shard;
    msg.attempts.insert(tried, 2);
    publish_message(&operator, PREFIX, &msg).await;
    for n in [&node, &node1] {
        wait_for("both nodes hold plan 2", T, || async {
            n.shared.settled_at(p2.epoch)
        })
        .await;
    }
    let (ok, watched, err) = kubectl_aether(&url, &["moves", "--watch"]);
    assert!(ok, "moves --watch: {err}");
    assert!(
        watched.contains("PHASE") && watched.contains("Done"),
        "{watched}"
    );
    let mv = json_of(&url, &["moves"]);
    assert_eq!(mv["epoch"], json!(p2.epoch));
    let moves = mv["moves"].as_array().expect("moves");
    assert_eq!(moves.len(), p2.moves.len());
    assert!(
        moves
            .iter()
            .all(|m| m["phase"] == "Done" && m["to"] == "app-1"),
        "{mv}"
    );
    for m in moves {
        let attempts = if m["shard"] == json!(tried) { 2 } else { 0 };
        assert_eq!(m["attempts"], json!(attempts), "{m}");
        // The source's `Done` says what it sent (the latest report of a move is the source's).
        assert!(m["bytes"].is_null() || m["bytes"].as_u64() > Some(0), "{m}");
    }
    assert!(
        moves.iter().any(|m| m["bytes"].as_u64() > Some(0)),
        "the bytes moves sent: {mv}"
    );
    assert!(
        watched.contains("ATTEMPTS") && watched.contains("BYTES"),
        "{watched}"
    );
    let st = json_of(&url, &["status"]);
    let shards: u64 = st["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m["shards"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(shards, u64::from(SHARDS));
    assert!(
        st["members"]
            .as_array()
            .expect("members")
            .iter()
            .all(|m| m["holds"] == json!(p2.epoch)),
        "{st}"
    );
    assert_eq!(st["moves"], json!({"Done": p2.moves.len()}));

    // The tables as people read them (the README's transcript comes from here).
    for args in [
        &["where", "counter/user/42"][..],
        &["get", "counter/user/42"],
        &["history", "counter/user/42", "--at", "2"],
        &["actors", "--limit", "3"],
        &["status"],
        &["moves"],
    ] {
        let (ok, table, err) = kubectl_aether(&url, args);
        assert!(ok, "{args:?}: {err}");
        eprintln!("$ kubectl aether {}\n{table}", args.join(" "));
    }

    // Every bad argument, unknown actor and missing thing: one clear line, a failure.
    fails_with(&url, &["get", "counter/nobody"], "no actor counter/nobody");
    fails_with(
        &url,
        &["history", "counter/nobody"],
        "no actor counter/nobody",
    );
    fails_with(&url, &["where", "user-42"], "expected KIND/ID");
    fails_with(
        &url,
        &["history", "counter/user/42", "--at", "9"],
        "cannot be folded",
    );
    let (ok, _, err) = kubectl_aether(&url, &["get", "counter/x", "-o", "xml"]);
    assert!(!ok && err.contains("xml"), "{err}");
    let (user, password) = Role::Inspect.user(PREFIX);
    let other = Command::new(workspace_binary("kubectl-aether"))
        .args([
            "--nats-url",
            &url,
            "--nats-user",
            &user,
            "--prefix",
            "elsewhere",
            "get",
            "counter/x",
        ])
        .env("NATS_PASSWORD", &password)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(
        !other.status.success() && err.contains("no event stream elsewhere-events"),
        "{err}"
    );
    let closed = format!("nats://127.0.0.1:{}", aether_tests::free_port());
    fails_with(&closed, &["get", "counter/x"], "cannot connect to NATS");

    // The inspect user reads, and nothing more: no request to a node, no consumer, no write, no
    // client's inbox.
    let (inspect, refused) = connect_as(&url, Role::Inspect).await;
    for subject in [format!("{PREFIX}.req"), format!("{PREFIX}.ev.0.counter.eA")] {
        inspect
            .publish(subject.clone(), "{}".into())
            .await
            .expect("sent");
        refused
            .wait_for(&format!(
                "Permissions Violation for Publish to \"{subject}\""
            ))
            .await;
    }
    let js = async_nats::jetstream::new(inspect.clone());
    let stream = js
        .get_stream(format!("{PREFIX}-events"))
        .await
        .expect("stream info is allowed");
    assert!(
        stream
            .create_consumer(async_nats::jetstream::consumer::pull::Config::default())
            .await
            .is_err(),
        "the inspect user made a consumer"
    );
    assert!(inspect.subscribe("_INBOX.>").await.is_ok());
    refused
        .wait_for("Permissions Violation for Subscription to \"_INBOX.>\"")
        .await;
}
