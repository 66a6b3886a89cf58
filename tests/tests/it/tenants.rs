//! Tenants that cannot reach each other through the operator (issue 28): ShardPlans of one subject
//! prefix on two nats-servers hear only their own server's node events, and two spellings of one
//! server are one server for the prefix check; a ShardPlan whose NATS never answers delays no
//! other. The operator process on a real kube-apiserver, nodes on real nats-servers.

use aether_core::crd::ShardPlan;
use aether_core::protocol::{Names, NodeEvent, NodeEventKind, VERSION, encode};
use aether_tests::cluster::TestNode;
use aether_tests::k8s::{ApiServer, add_ready_pod};
use aether_tests::operator::{
    create_namespace, create_statefulset, degraded, install_crd, ready, shardplan, spawn_operator,
    spawn_operator_with, status_of, stored_plan,
};
use aether_tests::{NatsServer, free_port, wait_for};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);
const PREFIX: &str = "ten";

async fn leaving(nc: &async_nats::Client, pod: &str) {
    let ev = NodeEvent {
        v: VERSION,
        node: pod.to_owned(),
        event: NodeEventKind::Leaving,
    };
    nc.publish(
        Names::new(PREFIX).node_events(),
        encode(&ev).expect("encodes").into(),
    )
    .await
    .expect("published");
    nc.flush().await.expect("flushed");
}

/// A victim's ShardPlan on one server; in another namespace a ShardPlan with the same prefix on
/// another server, whose pods are named like the victim's. `leaving` for the victim's pods sent on
/// the other server plans out only the other ShardPlan's pod; the victim's plan is untouched, and
/// its own node saying it leaves still plans it out. A third ShardPlan on the victim's server,
/// its URL spelled another way, is Degraded `PrefixInUse` and publishes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shardplan_on_another_server_neither_steers_nor_hears_another_with_its_prefix() {
    let api = ApiServer::start().await;
    let client = api.client().await;
    install_crd(&client, "default").await;
    create_namespace(&client, "other").await;
    let (victim_nats, thief_nats) = (NatsServer::start(), NatsServer::start());
    let (victim_nc, thief_nc) = (victim_nats.connect().await, thief_nats.connect().await);

    let sts = create_statefulset(&client, "default", 2).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut nodes = Vec::new();
    for name in ["app-0", "app-1"] {
        nodes.push(TestNode::start(&victim_nats.url(), PREFIX, name).await);
        add_ready_pod(&pods, &sts, name).await;
    }
    let their_sts = create_statefulset(&client, "other", 1).await;
    add_ready_pod(
        &Api::namespaced(client.clone(), "other"),
        &their_sts,
        "app-0",
    )
    .await;

    let _operator = spawn_operator(&api, free_port(), "operator-0");
    let victims: Api<ShardPlan> = Api::namespaced(client.clone(), "default");
    let theirs: Api<ShardPlan> = Api::namespaced(client.clone(), "other");
    victims
        .create(
            &PostParams::default(),
            &shardplan("victim", 16, &victim_nats.url(), PREFIX),
        )
        .await
        .expect("victim ShardPlan");
    theirs
        .create(
            &PostParams::default(),
            &shardplan("thief", 16, &thief_nats.url(), PREFIX),
        )
        .await
        .expect("thief ShardPlan");
    wait_for("the victim Ready with 2 members", T, || async {
        victims
            .get("victim")
            .await
            .is_ok_and(|sp| ready(&sp) && status_of(&sp).member_count == 2)
    })
    .await;
    wait_for(
        "the other ShardPlan planned on its own server",
        T,
        || async {
            theirs
                .get("thief")
                .await
                .is_ok_and(|sp| status_of(&sp).epoch >= 1 && status_of(&sp).member_count == 1)
        },
    )
    .await;
    let epoch = status_of(&victims.get("victim").await.expect("get")).epoch;

    // `leaving` for every pod name, on the other server: only the other ShardPlan hears it.
    for pod in ["app-0", "app-1"] {
        leaving(&thief_nc, pod).await;
    }
    wait_for("the other ShardPlan's pod planned out", T, || async {
        theirs
            .get("thief")
            .await
            .is_ok_and(|sp| status_of(&sp).member_count == 0)
    })
    .await;
    let sp = victims.get("victim").await.expect("get");
    assert_eq!(
        (status_of(&sp).epoch, status_of(&sp).member_count),
        (epoch, 2),
        "the victim's plan is untouched: {:?}",
        status_of(&sp)
    );
    let held = stored_plan(&victim_nc, PREFIX)
        .await
        .expect("the victim's plan");
    assert_eq!((held.epoch, held.members.len()), (epoch, 2));

    // The same server, its URL spelled another way: the later ShardPlan may not use the prefix.
    let port = victim_nats
        .url()
        .rsplit(':')
        .next()
        .expect("a port")
        .to_owned();
    theirs
        .create(
            &PostParams::default(),
            &shardplan("copy", 16, &format!("nats://LOCALHOST:{port}"), PREFIX),
        )
        .await
        .expect("copy ShardPlan");
    wait_for(
        "the copy Degraded: PrefixInUse naming the victim",
        T,
        || async {
            theirs
                .get("copy")
                .await
                .is_ok_and(|sp| degraded(&sp, "PrefixInUse", "default/victim"))
        },
    )
    .await;
    let held = stored_plan(&victim_nc, PREFIX)
        .await
        .expect("the victim's plan");
    assert_eq!(
        (held.epoch, held.members.len()),
        (epoch, 2),
        "the copy published nothing"
    );

    // The victim's own node leaving, on the victim's server, still plans it out.
    leaving(&victim_nc, "app-1").await;
    wait_for("the victim planned app-1 out, Ready", T, || async {
        victims
            .get("victim")
            .await
            .is_ok_and(|sp| ready(&sp) && status_of(&sp).member_count == 1)
    })
    .await;
    drop(nodes);
}

/// A "server" that accepts TCP connections and never says a word: a NATS connection to it waits
/// for the server's INFO until the operator's connect timeout. Keeps every connection it accepted.
struct Silent {
    port: u16,
    accepted: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Silent {
    fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let accepted = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = accepted.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                if let Ok(mut a) = keep.lock() {
                    a.push(conn);
                }
            }
        });
        Self { port, accepted }
    }

    /// The first connection accepted, once there is one.
    fn first(&self) -> Option<std::net::TcpStream> {
        let a = self.accepted.lock().ok()?;
        a.first().and_then(|c| c.try_clone().ok())
    }
}

/// Whether the peer still holds `conn` open (nothing to read yet, no end of stream).
fn still_open(conn: &std::net::TcpStream) -> bool {
    use std::io::Read;
    conn.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 64];
    match (&*conn).read(&mut buf) {
        Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
        // End of stream (0), or bytes: the operator's client sends nothing before the server's
        // INFO, so either means it is not waiting on this connection any more.
        Ok(0 | 1..) => false,
    }
}

/// One tenant's ShardPlan names a NATS that accepts the connection and never answers; while the
/// operator's attempt to connect to it is still waiting (its connect timeout made long here),
/// another tenant's ShardPlan is planned, published and Ready, and the operator stays Ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shardplan_whose_nats_never_answers_delays_no_other() {
    let api = ApiServer::start().await;
    let client = api.client().await;
    install_crd(&client, "default").await;
    create_namespace(&client, "other").await;
    let silent = Silent::start();
    let nats = NatsServer::start();
    let nc = nats.connect().await;
    let op_port = free_port();
    let _operator = spawn_operator_with(
        &api,
        op_port,
        "operator-0",
        &["--nats-connect-timeout", "300"],
    );

    let theirs: Api<ShardPlan> = Api::namespaced(client.clone(), "other");
    theirs
        .create(
            &PostParams::default(),
            &shardplan(
                "stuck",
                16,
                &format!("nats://127.0.0.1:{}", silent.port),
                PREFIX,
            ),
        )
        .await
        .expect("stuck ShardPlan");
    wait_for(
        "the operator connecting to the silent server",
        T,
        || async { silent.first().is_some() },
    )
    .await;
    let waiting = silent.first().expect("a connection");

    let sts = create_statefulset(&client, "default", 2).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut nodes = Vec::new();
    for name in ["app-0", "app-1"] {
        nodes.push(TestNode::start(&nats.url(), "mine", name).await);
        add_ready_pod(&pods, &sts, name).await;
    }
    let mine: Api<ShardPlan> = Api::namespaced(client.clone(), "default");
    mine.create(
        &PostParams::default(),
        &shardplan("mine", 16, &nats.url(), "mine"),
    )
    .await
    .expect("my ShardPlan");
    wait_for("my ShardPlan Ready with 2 members", T, || async {
        mine.get("mine")
            .await
            .is_ok_and(|sp| ready(&sp) && status_of(&sp).member_count == 2)
    })
    .await;
    let held = stored_plan(&nc, "mine").await.expect("my plan in NATS");
    assert_eq!(held.members.len(), 2);
    assert!(
        still_open(&waiting),
        "the attempt on the silent server ended before my ShardPlan was planned: it waited for it"
    );
    assert!(
        matches!(
            aether_tests::http_get(op_port, "/readyz").await,
            Some((200, _))
        ),
        "the operator is Ready while one ShardPlan's NATS does not answer"
    );
    drop(nodes);
}
