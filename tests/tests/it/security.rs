//! Security against a real nats-server: the shipped roles (examples/nats/authorization.conf) refuse
//! every forgery a client user tries while the nodes and the operator's NATS side work through a
//! rebalance; TLS (server verification, client certificates) and every credential shape a node takes;
//! a wrong CA or password said in one log line and in /readyz, never a crash loop.

use aether_core::crd::MovePhase;
use aether_core::protocol::{
    ActorRef, ActorSnapshot, Held, Names, PlanMessage, Progress, Request, Transfer, VERSION,
    decode, encode, encode_transfer,
};
use aether_node::client::{Client, run_load};
use aether_node::config::NatsArgs;
use aether_node::metrics::Malformed;
use aether_tests::auth::{Certs, ROLE_PASSWORDS, Role, nkey_user, operator_mode_creds};
use aether_tests::cluster::{
    TestNode, assert_nothing_acked_lost, counter_value, nats_args, next_plan, node_config, publish,
};
use aether_tests::{NatsServer, nats_violations, wait_for, workspace_binary};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);
const SHARDS: u32 = 32;
/// The prefix the shipped configuration is written for.
const PREFIX: &str = "aether";
/// Every credential shape, in the order the tests try them.
const SHAPES: [Shape; 5] = [
    Shape::UserPassword,
    Shape::Token,
    Shape::Nkey,
    Shape::Creds,
    Shape::ClientCertificate,
];

/// nats-server with the shipped roles; its log is kept to check who was refused what.
pub(crate) struct Roles {
    pub(crate) nats: NatsServer,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Roles {
    pub(crate) fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("nats.log");
        // The shipped file as it is: it is written for the prefix `aether`.
        let conf =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/nats/authorization.conf");
        let nats = NatsServer::start_with_env(
            &[
                "-c",
                conf.to_str().expect("a UTF-8 path"),
                "-l",
                log.to_str().expect("a UTF-8 path"),
            ],
            &ROLE_PASSWORDS,
        );
        Self {
            nats,
            log,
            _dir: dir,
        }
    }

    /// The server's log lines that say it refused something.
    fn violations(&self) -> Vec<String> {
        nats_violations(&self.log)
    }
}

/// A connection as `role`'s user, with its inbox prefix (as it connects), and the errors the
/// server sends it (permission violations).
pub(crate) async fn connect_as(url: &str, role: Role) -> (async_nats::Client, Errors) {
    let errors = Errors::default();
    let sink = errors.clone();
    let (user, password) = role.user(PREFIX);
    let client = async_nats::ConnectOptions::with_user_and_password(user.clone(), password)
        .name(&user)
        .custom_inbox_prefix(role.inbox(PREFIX))
        .event_callback(move |event| {
            let sink = sink.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    sink.0.lock().expect("errors").push(e.to_string());
                }
            }
        })
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect as {user}: {e}"));
    (client, errors)
}

#[derive(Clone, Default)]
pub(crate) struct Errors(Arc<Mutex<Vec<String>>>);

impl Errors {
    /// Waits until the server has said `what` to this connection.
    pub(crate) async fn wait_for(&self, what: &str) {
        wait_for(&format!("the server to say {what:?}"), T, || async {
            self.0
                .lock()
                .expect("errors")
                .iter()
                .any(|e| e.contains(what))
        })
        .await;
    }
}

/// A node as the nodes' user.
pub(crate) fn node_with(url: &str, name: &str) -> aether_node::config::NodeConfig {
    let (user, password) = Role::Node.user(PREFIX);
    let mut cfg = node_config(url, PREFIX, name);
    cfg.nats.nats_user = Some(user);
    cfg.nats.nats_password = Some(password);
    cfg
}

/// The plan stored in the bucket (read with the operator's user).
async fn stored_plan(operator: &async_nats::Client) -> PlanMessage {
    let js = async_nats::jetstream::new(operator.clone());
    let bucket = aether_nats::plans::open_bucket(&js, &Names::new(PREFIX), 1)
        .await
        .expect("the operator opens the plan bucket");
    let entry = bucket
        .get(Names::PLAN_KEY)
        .await
        .expect("the operator reads the plan")
        .expect("a plan is stored");
    aether_core::protocol::decode(&entry).expect("the stored plan decodes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_user_cannot_forge_what_nodes_and_the_operator_send() {
    let roles = Roles::start();
    let url = roles.nats.url();
    let names = Names::new(PREFIX);
    let (operator, operator_errors) = connect_as(&url, Role::Operator).await;
    let mut nodes = Vec::new();
    for name in ["app-0", "app-1"] {
        nodes.push(TestNode::start_with(node_with(&url, name)).await);
    }
    let p1 = next_plan(None, &["app-0", "app-1"], SHARDS, 8);
    publish(&operator, PREFIX, &p1, 10).await;
    for n in &nodes {
        wait_for("every node to hold plan 1", T, || async {
            n.shared.settled_at(1)
        })
        .await;
    }
    let (client_nc, refused) = connect_as(&url, Role::Client).await;
    let client = Client::new(client_nc.clone(), PREFIX);
    let warm = run_load(&client, "acct", 50, 200, 8, T).await;
    assert_eq!(warm.errors, 0, "a client user sends requests");
    let victim = "acct-0";
    let shard = aether_core::hash::shard_of(victim, SHARDS);
    let (before, version) = counter_value(&client.read("counter", victim).await.expect("read"));
    // The victim's log as a node reads it, before the forgeries.
    let (node_nc, _) = connect_as(&url, Role::Node).await;
    let store = aether_node::store::EventStore::open(
        async_nats::jetstream::new(node_nc.clone()),
        names.clone(),
        1,
    )
    .await
    .expect("a node opens the event stream");
    let victim_subject = names.actor_subject(shard, &ActorRef::new("counter", victim));
    let last_before = store
        .last(&victim_subject)
        .await
        .expect("readable")
        .map(|(seq, _)| seq);

    // 1. A plan with a high epoch (it would freeze every node on it).
    let mut forged = p1.clone();
    forged.epoch = 1_000;
    let plan_subject = format!("$KV.{}.{}", names.plan_bucket(), Names::PLAN_KEY);
    let bytes = encode(&PlanMessage::new(&forged, 4, 10)).expect("encodes");
    client_nc
        .publish(plan_subject.clone(), bytes.clone().into())
        .await
        .expect("sent");
    refused
        .wait_for(&format!(
            "Permissions Violation for Publish to \"{plan_subject}\""
        ))
        .await;
    // ... nor through the JetStream API: a client user reads the plan bucket (to send each
    // request straight to its owner), but neither puts the plan nor creates the bucket.
    let js = async_nats::jetstream::new(client_nc.clone());
    let bucket = js
        .get_key_value(names.plan_bucket())
        .await
        .expect("a client user opens the plan bucket to read it");
    let read = bucket
        .get(Names::PLAN_KEY)
        .await
        .expect("a client user reads the plan")
        .expect("a plan");
    assert_eq!(
        decode::<PlanMessage>(&read).expect("a plan").epoch,
        p1.epoch,
        "the plan as published"
    );
    let put = tokio::time::timeout(
        Duration::from_secs(10),
        bucket.put(Names::PLAN_KEY, bytes.clone().into()),
    )
    .await;
    assert!(
        !matches!(put, Ok(Ok(_))),
        "a client user cannot put the plan"
    );
    let create = tokio::time::timeout(
        Duration::from_secs(10),
        js.create_stream(async_nats::jetstream::stream::Config {
            name: format!("KV_{}", names.plan_bucket()),
            subjects: vec![format!("$KV.{}.>", names.plan_bucket())],
            ..Default::default()
        }),
    )
    .await;
    assert!(
        !matches!(create, Ok(Ok(_))),
        "a client user cannot create the plan bucket"
    );
    refused
        .wait_for("Permissions Violation for Publish to \"$JS.API.STREAM.CREATE.KV_aether-plans\"")
        .await;
    // ... nor creates a consumer on it: not a durable one (the server's limit of consumers per
    // stream, used up, would leave every node started afterwards without its plan watch), not a
    // push one delivering into a node's subjects.
    let plans_stream = format!("KV_{}", names.plan_bucket());
    let durable = tokio::time::timeout(
        Duration::from_secs(10),
        js.create_consumer_on_stream(
            async_nats::jetstream::consumer::pull::Config {
                durable_name: Some("hog-0".into()),
                ..Default::default()
            },
            plans_stream.as_str(),
        ),
    )
    .await;
    assert!(
        !matches!(durable, Ok(Ok(_))),
        "a client user cannot create a durable consumer on the plan bucket"
    );
    let push = tokio::time::timeout(
        Duration::from_secs(10),
        js.create_consumer_on_stream(
            async_nats::jetstream::consumer::push::Config {
                deliver_subject: names.node_migrate("app-0"),
                ..Default::default()
            },
            plans_stream.as_str(),
        ),
    )
    .await;
    assert!(
        !matches!(push, Ok(Ok(_))),
        "a client user cannot have the server push into a node's subjects"
    );
    refused
        .wait_for("Permissions Violation for Publish to \"$JS.API.CONSUMER.CREATE.KV_aether-plans")
        .await;
    // A client that follows the plan (one hop to each owner) does so with the client user.
    let following = Client::watching_plan(client_nc.clone(), PREFIX);
    assert!(
        following.wait_for_plan(T).await,
        "a client user follows the plan"
    );
    assert_eq!(following.plan_epoch(), p1.epoch);

    // 2. A progress report: Done for a move that does not exist.
    let report = Progress {
        v: VERSION,
        epoch: 2,
        shard,
        node: "app-0".into(),
        phase: MovePhase::Done,
        actors: 0,
        duration_ms: 1,
        bytes: 0,
        error: None,
        from: None,
        to: None,
    };
    let subject = names.progress(2, shard);
    client_nc
        .publish(subject.clone(), encode(&report).expect("encodes").into())
        .await
        .expect("sent");
    refused
        .wait_for(&format!(
            "Permissions Violation for Publish to \"{subject}\""
        ))
        .await;

    // 3. A transfer chunk and its commit, carrying a state for the victim.
    let owner = p1.owner(shard).expect("owned").to_owned();
    let other = if owner == "app-0" { "app-1" } else { "app-0" };
    let mut chunk = Transfer {
        v: VERSION,
        epoch: 1,
        attempt: 1,
        shard,
        from: owner.clone(),
        chunk: 0,
        last: true,
        actors: vec![ActorSnapshot {
            actor: ActorRef::new("counter", victim),
            version: version + 100,
            seq: 1,
            state: aether_core::protocol::Bytes(
                serde_json::to_vec(&serde_json::json!({"value": 1_000_000})).expect("json"),
            ),
        }],
        commit: false,
        copy: false,
    };
    let migrate = names.node_migrate(other);
    for commit in [false, true] {
        chunk.commit = commit;
        if commit {
            chunk.actors.clear();
        }
        client_nc
            .publish(
                migrate.clone(),
                encode_transfer(&chunk).expect("encodes").into(),
            )
            .await
            .expect("sent");
    }
    refused
        .wait_for(&format!(
            "Permissions Violation for Publish to \"{migrate}\""
        ))
        .await;

    // 3b. A forged send (a node's own command id) or release, on the nodes' own subject.
    let sends = names.node_sends(other);
    let forged_send = aether_core::protocol::Request::new(
        ActorRef::new("counter", victim),
        aether_core::protocol::Op::Command {
            command: serde_json::json!({"add": 1_000_000}),
        },
        Some("$send-0000000000000000-1-0".to_owned()),
    );
    client_nc
        .publish(
            sends.clone(),
            aether_core::protocol::encode(&forged_send)
                .expect("encodes")
                .into(),
        )
        .await
        .expect("sent");
    refused
        .wait_for(&format!("Permissions Violation for Publish to \"{sends}\""))
        .await;

    // 4. A raw event record, without the expected-sequence header.
    let event_subject = names.actor_subject(shard, &ActorRef::new("counter", victim));
    client_nc
        .publish(
            event_subject.clone(),
            br#"{"added":1000000}"#.as_slice().into(),
        )
        .await
        .expect("sent");
    refused
        .wait_for(&format!(
            "Permissions Violation for Publish to \"{event_subject}\""
        ))
        .await;

    // 5. Joining the nodes' queue group to answer requests, or listening in on transfers.
    let _joined = client_nc
        .queue_subscribe(names.any_node(), Names::NODE_QUEUE.into())
        .await;
    refused
        .wait_for(&format!(
            "Permissions Violation for Subscription to \"{}\" using queue \"{}\"",
            names.any_node(),
            Names::NODE_QUEUE
        ))
        .await;
    let _listening = client_nc.subscribe(names.node_migrate(other)).await;
    refused
        .wait_for(&format!(
            "Permissions Violation for Subscription to \"{}\"",
            names.node_migrate(other)
        ))
        .await;
    // ... or reading what JetStream, the plan watch and peers send the nodes and the operator
    // (actors' records in a replay, the plan): their inboxes are their own.
    for inbox in [names.node_inbox(), names.operator_inbox()] {
        let _reading = client_nc.subscribe(format!("{inbox}.>")).await;
        refused
            .wait_for(&format!(
                "Permissions Violation for Subscription to \"{inbox}.>\""
            ))
            .await;
    }

    // 6. Another pod's `held` key (it would let a node serve a shard before its hand-off).
    let held_subject = format!("$KV.{}.{}", names.plan_bucket(), Names::held_key("app-0"));
    let held = Held {
        v: VERSION,
        node: "app-0".into(),
        epoch: 1_000,
        lease_ms: None,
    };
    client_nc
        .publish(held_subject.clone(), encode(&held).expect("encodes").into())
        .await
        .expect("sent");
    refused
        .wait_for(&format!(
            "Permissions Violation for Publish to \"{held_subject}\""
        ))
        .await;

    // 7. A request whose reply subject is the victim's event subject: the node may publish there,
    //    so it would append the reply as a record. It drops the request unanswered, not carried out.
    let add = Request::new(
        ActorRef::new("counter", victim),
        aether_core::protocol::Op::Command {
            command: serde_json::json!({"add": 1}),
        },
        Some("forged-reply".into()),
    );
    client_nc
        .publish_with_reply(
            names.any_node(),
            event_subject.clone(),
            encode(&add).expect("encodes").into(),
        )
        .await
        .expect("a client may send requests");
    wait_for(
        "a node to drop the request with the forged reply subject",
        T,
        || async {
            nodes
                .iter()
                .map(|n| n.metrics.malformed_of(Malformed::ReplySubject))
                .sum::<u64>()
                == 1
        },
    )
    .await;

    // Nothing of it took: the plan, every node's epoch, the victim's state and log.
    assert_eq!(stored_plan(&operator).await.epoch, 1, "the stored plan");
    for n in &nodes {
        assert_eq!(n.shared.epoch(), 1, "{} holds plan 1", n.name);
    }
    assert_eq!(
        store
            .last(&victim_subject)
            .await
            .expect("readable")
            .map(|(seq, _)| seq),
        last_before,
        "nothing was appended to {victim}'s log"
    );
    let (after, after_version) =
        counter_value(&client.read("counter", victim).await.expect("read"));
    assert_eq!(
        (after, after_version),
        (before, version),
        "{victim} unchanged"
    );

    // The nodes and the operator's side work through a rebalance under load: a third node joins,
    // then leaves (draining), with every command acknowledged exactly once.
    let load = {
        let client = following.clone();
        tokio::spawn(async move { run_load(&client, "acct", 50, 1_500, 8, T).await })
    };
    nodes.push(TestNode::start_with(node_with(&url, "app-2")).await);
    let p2 = next_plan(Some(&p1), &["app-0", "app-1", "app-2"], SHARDS, 8);
    assert!(!p2.moves.is_empty(), "the join moves shards");
    publish(&operator, PREFIX, &p2, 10).await;
    for n in &nodes {
        wait_for("plan 2 with every move done", T, || async {
            n.shared.settled_at(2) && n.shared.pending_moves() == 0
        })
        .await;
    }
    let p3 = next_plan(Some(&p2), &["app-0", "app-1"], SHARDS, 8);
    publish(&operator, PREFIX, &p3, 10).await;
    for n in &nodes {
        wait_for("plan 3 with every move done", T, || async {
            n.shared.settled_at(3) && n.shared.pending_moves() == 0
        })
        .await;
    }
    let mut leaver = nodes.pop().expect("app-2");
    leaver.terminate();
    leaver
        .exited(T)
        .await
        .expect("app-2 drains and exits cleanly");
    let report = load.await.expect("load task");
    assert_eq!(report.errors, 0, "no command failed during the rebalance");
    wait_for("the following client to read plan 3", T, || async {
        following.plan_epoch() == 3
    })
    .await;
    let mut acked: BTreeMap<String, i64> = warm.acked.clone();
    for (actor, n) in &report.acked {
        *acked.entry(actor.clone()).or_default() += n;
    }
    assert_nothing_acked_lost(SHARDS, &node_nc, PREFIX, &client, &acked, true).await;

    // The server refused only the client's attempts: the nodes and the operator never lacked a
    // permission.
    let violations = roles.violations();
    let others: Vec<&String> = violations
        .iter()
        .filter(|l| !l.contains(&Role::Client.user(PREFIX).0))
        .collect();
    assert!(
        others.is_empty(),
        "only the client user was refused anything: {others:#?}"
    );
    assert!(
        operator_errors.0.lock().expect("errors").is_empty(),
        "the operator's connection was refused nothing"
    );
    for subject in [
        plan_subject.as_str(),
        &names.progress(2, shard),
        &names.node_migrate(other),
        &names.node_sends(other),
        &event_subject,
        &held_subject,
        &names.any_node(),
        &format!("{}.>", names.node_inbox()),
        &format!("{}.>", names.operator_inbox()),
    ] {
        assert!(
            violations
                .iter()
                .any(|l| l.contains(&format!("\"{subject}\""))),
            "the server log names the refusal of {subject}: {violations:#?}"
        );
    }
}

/// How a node authenticates in [`each_credential_shape_over_tls_serves`].
#[derive(Clone, Copy, Debug)]
enum Shape {
    UserPassword,
    Token,
    Nkey,
    Creds,
    ClientCertificate,
}

/// A TLS nats-server requiring `shape`, and the node settings that satisfy it.
fn tls_server(certs: &Certs, shape: Shape, dir: &Path) -> (NatsServer, NatsArgs) {
    let mut args = nats_args("", PREFIX);
    args.nats_tls_ca = Some(certs.path("ca.crt"));
    let mut server: Vec<String> = certs.server_args(matches!(shape, Shape::ClientCertificate));
    match shape {
        Shape::UserPassword => {
            server.extend(["--user", "aether-node", "--pass", "node-secret"].map(String::from));
            args.nats_user = Some("aether-node".into());
            args.nats_password = Some("node-secret".into());
        }
        Shape::Token => {
            server.extend(["--auth", "a-token-of-forty-characters-0123456789ab"].map(String::from));
            args.nats_token = Some("a-token-of-forty-characters-0123456789ab".into());
        }
        Shape::Nkey => {
            let (seed, public) = nkey_user();
            let conf = dir.join("nkey.conf");
            std::fs::write(
                &conf,
                format!("authorization {{ users = [ {{nkey: {public}}} ] }}\n"),
            )
            .expect("write the server configuration");
            server.extend(["-c".to_owned(), conf.to_string_lossy().into_owned()]);
            args.nats_nkey = Some(seed);
        }
        Shape::Creds => {
            let creds = operator_mode_creds();
            let conf = dir.join("operator.conf");
            std::fs::write(&conf, &creds.server_conf).expect("write the server configuration");
            server.extend(["-c".to_owned(), conf.to_string_lossy().into_owned()]);
            args.nats_creds_data = Some(creds.creds);
        }
        Shape::ClientCertificate => {
            args.nats_tls_cert = Some(certs.path("client.crt"));
            args.nats_tls_key = Some(certs.path("client.key"));
        }
    }
    let server: Vec<&str> = server.iter().map(String::as_str).collect();
    let nats = NatsServer::start_with(&server);
    args.nats_url = format!(
        "tls://127.0.0.1:{}",
        nats.url().rsplit(':').next().expect("a port")
    );
    (nats, args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_credential_shape_over_tls_serves() {
    let certs = Certs::make();
    let dir = tempfile::tempdir().expect("temp dir");
    for shape in SHAPES {
        let (_nats, args) = tls_server(&certs, shape, dir.path());
        // The test's own connection goes through the node's connect, with the same settings.
        let nc = aether_node::node::connect(&args, "test", None, None)
            .await
            .unwrap_or_else(|e| panic!("{shape:?}: {e}"));
        assert!(
            nc.server_info().tls_required,
            "{shape:?}: the server requires TLS"
        );
        let mut cfg = node_config("", PREFIX, "app-0");
        cfg.nats = args.clone();
        let node = TestNode::start_with(cfg).await;
        let p1 = next_plan(None, &["app-0"], SHARDS, 8);
        publish(&nc, PREFIX, &p1, 10).await;
        wait_for(&format!("{shape:?}: the node holds plan 1"), T, || async {
            node.shared.settled_at(1) && node.health.problem().is_none()
        })
        .await;
        let client = Client::new(nc.clone(), PREFIX);
        client
            .add("acct", 5, format!("{shape:?}-1"))
            .await
            .expect("an add");
        let (value, version) = counter_value(&client.read("counter", "acct").await.expect("read"));
        assert_eq!(
            (value, version),
            (5, 1),
            "{shape:?}: the node serves over TLS"
        );
    }
}

/// A node process with `extra` arguments, its stderr kept in `log`.
fn node_process(url: &str, http_port: u16, log: &Path, extra: &[String]) -> aether_tests::Process {
    let child = std::process::Command::new(workspace_binary("aether-node"))
        .args([
            "run",
            "--pod-name",
            "app-0",
            "--nats-url",
            url,
            "--prefix",
            PREFIX,
        ])
        .args([
            "--http-addr",
            &format!("127.0.0.1:{http_port}"),
            "--api-addr",
            "off",
        ])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).expect("a log file"))
        .spawn()
        .expect("start aether-node");
    aether_tests::Process { child }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_password_or_missing_client_certificate_is_one_clear_line_and_not_ready() {
    let certs = Certs::make();
    let dir = tempfile::tempdir().expect("temp dir");
    let (_plain, with_password) = tls_server(&certs, Shape::UserPassword, dir.path());
    let (_mutual, with_cert) = tls_server(&certs, Shape::ClientCertificate, dir.path());
    let cases = [
        (
            "a CA that did not sign the server's certificate",
            &with_password.nats_url,
            vec![
                "--nats-tls-ca".to_owned(),
                certs.arg("other-ca.crt"),
                "--nats-user".to_owned(),
                "aether-node".to_owned(),
                "--nats-password".to_owned(),
                "node-secret".to_owned(),
            ],
            "invalid peer certificate",
        ),
        (
            "a wrong password",
            &with_password.nats_url,
            vec![
                "--nats-tls-ca".to_owned(),
                certs.arg("ca.crt"),
                "--nats-user".to_owned(),
                "aether-node".to_owned(),
                "--nats-password".to_owned(),
                "not-the-password".to_owned(),
            ],
            "authorization violation",
        ),
        (
            "no client certificate where the server requires one",
            &with_cert.nats_url,
            vec!["--nats-tls-ca".to_owned(), certs.arg("ca.crt")],
            // The server's alert (CertificateRequired) or, racing it, the closed connection.
            "IO error",
        ),
    ];
    let mut running = Vec::new();
    for (what, url, extra, reason) in &cases {
        let port = aether_tests::free_port();
        let log = dir.path().join(format!("{port}.log"));
        let node = node_process(url, port, &log, extra);
        wait_for(&format!("{what}: /readyz says why"), T, || async {
            matches!(
                aether_tests::http_get(port, "/readyz").await,
                Some((503, body)) if body.contains("cannot connect to NATS") && body.contains(reason)
            )
        })
        .await;
        running.push((what, node, port, log));
    }
    // Each stays up (no crash loop), not Ready, and has said each reason once, however often it
    // tried again meanwhile.
    for (what, mut node, port, log) in running {
        let (status, body) = aether_tests::http_get(port, "/readyz")
            .await
            .expect("the node answers /readyz");
        assert_eq!(status, 503, "{what}: not Ready ({body})");
        assert!(
            node.child.try_wait().expect("wait").is_none(),
            "{what}: the node keeps running"
        );
        let text = std::fs::read_to_string(&log).expect("the node's log");
        let said: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split_once("cannot connect to NATS").map(|(_, why)| why))
            .collect();
        let distinct: std::collections::BTreeSet<&str> = said.iter().copied().collect();
        assert!(
            !said.is_empty() && distinct.len() == said.len(),
            "{what}: each reason said once: {text}"
        );
        node.kill();
    }
}

/// A credentials Secret as the operator reads it.
fn secret(labelled: bool, data: Vec<(&str, Vec<u8>)>) -> Secret {
    let mut s = Secret::default();
    s.metadata.name = Some("nats-operator".into());
    if labelled {
        s.metadata.labels = Some(BTreeMap::from([(
            aether_operator::credentials::OPT_IN_LABEL.to_owned(),
            "true".to_owned(),
        )]));
    }
    s.data = Some(
        data.into_iter()
            .map(|(k, v)| (k.to_owned(), ByteString(v)))
            .collect(),
    );
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_connects_with_each_secret_shape_over_tls_and_reads_only_labelled_secrets() {
    let certs = Certs::make();
    let dir = tempfile::tempdir().expect("temp dir");
    let file = |name: &str| std::fs::read(certs.path(name)).expect("a certificate file");
    for shape in SHAPES {
        let (_nats, args) = tls_server(&certs, shape, dir.path());
        let mut data = vec![("ca.crt", file("ca.crt"))];
        let text = |v: &Option<String>| v.clone().expect("set").into_bytes();
        match shape {
            Shape::UserPassword => {
                data.push(("user", text(&args.nats_user)));
                data.push(("password", text(&args.nats_password)));
            }
            Shape::Token => data.push(("token", text(&args.nats_token))),
            Shape::Nkey => data.push(("nkey", text(&args.nats_nkey))),
            Shape::Creds => data.push(("creds", text(&args.nats_creds_data))),
            Shape::ClientCertificate => {
                data.push(("tls.crt", file("client.crt")));
                data.push(("tls.key", file("client.key")));
            }
        }
        let opts = aether_operator::credentials::options(&secret(true, data.clone()))
            .unwrap_or_else(|e| panic!("{shape:?}: {e}"));
        let nc = opts
            .connect(args.nats_url.as_str())
            .await
            .unwrap_or_else(|e| panic!("{shape:?}: the operator connects: {e}"));
        // What the operator does on NATS: write the plan.
        publish(&nc, PREFIX, &next_plan(None, &["app-0"], SHARDS, 8), 10).await;
        assert_eq!(
            stored_plan(&nc).await.epoch,
            1,
            "{shape:?}: the plan is stored"
        );

        let refused = aether_operator::credentials::options(&secret(false, data))
            .err()
            .unwrap_or_else(|| panic!("{shape:?}: a Secret without the label is refused"));
        assert!(
            refused
                .to_string()
                .contains("lacks the label aether.dev/nats-credentials=true"),
            "{refused}"
        );
    }
    // A CA that did not sign the server's certificate: no connection, and the error says TLS.
    let (_nats, args) = tls_server(&certs, Shape::Token, dir.path());
    let opts = aether_operator::credentials::options(&secret(
        true,
        vec![
            ("ca.crt", file("other-ca.crt")),
            ("token", args.nats_token.clone().expect("set").into_bytes()),
        ],
    ))
    .expect("options");
    let e = opts
        .connect(args.nats_url.as_str())
        .await
        .expect_err("a server certificate from another CA is refused");
    assert!(e.to_string().contains("invalid peer certificate"), "{e}");
}
