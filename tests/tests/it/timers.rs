//! Timers (issue 29) against real processes and a real nats-server: an app kind's decide sets and
//! cancels timers and sees their firings; built-in counters' timers fire through a SIGKILL, a
//! move and eviction from a cache too small for them; each actor's whole log is then checked:
//! every firing applied once, never before its due time, periodic ticks on their grid, nothing
//! fired after a cancel, and nothing left indexed once every timer is gone.

use aether_core::protocol::{ActorRef, ErrorCode, Op, Outcome, Reply, Request};
use aether_tests::app::{App, http};
use aether_tests::cluster::{NodeProcess, ask, log_of, next_plan, publish};
use aether_tests::timers::{check_periodic, firings, records};
use aether_tests::{NatsServer, wait_for};
use serde_json::{Value, json};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

fn cmd(kind: &str, id: &str, command: Value, cmd_id: &str) -> Request {
    Request::new(
        ActorRef::new(kind, id),
        Op::Command { command },
        Some(cmd_id.to_owned()),
    )
}

fn ok_of(r: &Reply) -> &aether_core::protocol::ActorReply {
    match &r.outcome {
        Outcome::Ok(ok) => ok,
        Outcome::Error(e) => panic!("error reply: {e:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_kind_sets_sees_and_cancels_its_timers_and_bad_ones_are_malformed() {
    let nats = NatsServer::start();
    let nc = nats.connect().await;
    let app = App::start("tests/apps/faulty.py").await;
    let prefix = "apptimers";
    let (_node, api) = crate::app_protocol::node(&nats, prefix, &app.url()).await;

    // A one-shot timer set by decide: listed in the reply, then fired once into decide.
    let set = json!({"answer": "timer", "timers": [
        {"name": "t", "after": "300ms", "command": {"x": 1}},
        {"name": "later", "after": "1h", "command": {"y": 2}},
    ]});
    let r = ask(&nc, prefix, &cmd("faulty", "a", set, "c1")).await;
    let timers = ok_of(&r).timers.clone();
    assert_eq!(
        timers.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        ["later", "t"]
    );
    let due = timers[1].due;
    let read = Request::new(ActorRef::new("faulty", "a"), Op::Read, None);
    wait_for("the timer fired", T, || async {
        ok_of(&ask(&nc, prefix, &read).await)
            .state
            .get("fired")
            .is_some()
    })
    .await;
    let r = ask(&nc, prefix, &read).await;
    let ok = ok_of(&r);
    assert_eq!(
        ok.state["fired"],
        json!([{"name": "t", "due": due, "missed": 0, "command": {"x": 1}}])
    );
    assert_eq!(ok.timers.len(), 1, "the one-shot timer is gone once fired");

    // The app API lists the actor's timers.
    let (status, body) = http(api, "GET", "/v1/actors/faulty/a/timers", &[], b"").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let listed: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(listed["timers"][0]["name"], "later");
    assert_eq!(listed["timers"][0]["command"], json!({"y": 2}));

    // Bad timers are refused `malformed` and nothing is appended.
    let version = ok.version;
    for (i, bad) in [
        json!([{"name": "p", "every": 10}]),
        json!([{"name": "bad name", "after": 1}]),
        json!([{"name": "x", "after": "soon"}]),
        json!(
            (0..65)
                .map(|i| json!({"name": format!("n{i}"), "after": "1h"}))
                .collect::<Vec<_>>()
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let r = ask(
            &nc,
            prefix,
            &cmd(
                "faulty",
                "a",
                json!({"answer": "timer", "timers": bad}),
                &format!("bad{i}"),
            ),
        )
        .await;
        match &r.outcome {
            Outcome::Error(e) => assert_eq!(e.code, ErrorCode::Malformed, "{e:?}"),
            Outcome::Ok(ok) => panic!("a bad timer was taken: {ok:?}"),
        }
    }
    assert_eq!(ok_of(&ask(&nc, prefix, &read).await).version, version);

    // Cancelled: gone from the actor and from the listing.
    let cancel = json!({"answer": "timer", "cancel": ["later"]});
    let r = ask(&nc, prefix, &cmd("faulty", "a", cancel, "c2")).await;
    assert!(ok_of(&r).timers.is_empty());
    let (_, body) = http(api, "GET", "/v1/actors/faulty/a/timers", &[], b"").await;
    assert_eq!(
        serde_json::from_slice::<Value>(&body).expect("json"),
        json!({"timers": []})
    );
}

/// The bank example's holds: a hold not captured in time is released by its timer, exactly once; a
/// captured one cancels its timer and is never released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bank_hold_not_captured_in_time_is_released_once_and_a_captured_one_never() {
    let nats = NatsServer::start();
    let nc = nats.connect().await;
    let bank = App::start("examples/bank/app.py").await;
    let prefix = "holds";
    let (_node, api) = crate::app_protocol::node(&nats, prefix, &bank.url()).await;
    let account = |c: Value, id: &str| cmd("account", "alice", c, id);
    ok_of(&ask(&nc, prefix, &account(json!({"deposit": 100}), "d1")).await);
    let hold = |h: &str, n: i64, ttl: &str| json!({"hold": {"id": h, "amount": n, "ttl": ttl}});
    let r = ask(&nc, prefix, &account(hold("h1", 60, "300ms"), "h1")).await;
    assert_eq!(ok_of(&r).state, json!({"balance": 40, "holds": {"h1": 60}}));
    let r = ask(&nc, prefix, &account(hold("h2", 30, "1h"), "h2")).await;
    assert_eq!(ok_of(&r).timers.len(), 2);
    // Captured before its time: its timer goes with it.
    let r = ask(&nc, prefix, &account(json!({"capture": "h2"}), "c2")).await;
    let ok = ok_of(&r);
    assert_eq!(ok.state, json!({"balance": 10, "holds": {"h1": 60}}));
    assert_eq!(
        ok.timers
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        ["hold-h1"]
    );
    // Not captured: released by its timer.
    let read = Request::new(ActorRef::new("account", "alice"), Op::Read, None);
    wait_for("the hold released", T, || async {
        ok_of(&ask(&nc, prefix, &read).await).state == json!({"balance": 70})
    })
    .await;
    let r = ask(&nc, prefix, &read).await;
    let ok = ok_of(&r);
    assert!(ok.timers.is_empty(), "{:?}", ok.timers);
    // deposit, two holds, a capture, one release: five records, none twice.
    assert_eq!(ok.version, 5);
    let (status, body) = http(api, "GET", "/v1/actors/account/alice/timers", &[], b"").await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).expect("json"),
        json!({"timers": []})
    );
    // A capture after the release is refused: the money is back in the balance.
    let r = ask(&nc, prefix, &account(json!({"capture": "h1"}), "c1")).await;
    match &r.outcome {
        Outcome::Error(e) => assert_eq!(e.code, ErrorCode::Rejected, "{e:?}"),
        Outcome::Ok(ok) => panic!("a released hold was captured: {ok:?}"),
    }
}

/// Few actors in memory: most timers belong to passivated actors, which still fire.
const POD_FLAGS: &[&str] = &["--max-actors", "3"];
const PREFIX: &str = "timers";
const SHARDS: u32 = 8;
const ACTORS: usize = 10;
/// How long the whole cluster is off: three and a half periods of the ticks.
const OUTAGE: Duration = Duration::from_millis(3500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_timers_fire_once_each_through_a_kill_a_move_and_eviction() {
    let nats = NatsServer::start();
    let nc = nats.connect().await;
    let js = async_nats::jetstream::new(nc.clone());
    let mut pods = vec![
        NodeProcess::start_with(&nats.url(), PREFIX, "app-0", POD_FLAGS),
        NodeProcess::start_with(&nats.url(), PREFIX, "app-1", POD_FLAGS),
    ];
    let p1 = next_plan(None, &["app-0", "app-1"], SHARDS, 4);
    publish(&nc, PREFIX, &p1, 30).await;
    for p in &pods {
        wait_for("plan 1 settled", T, || async {
            p.settled_epoch().await == p1.epoch
        })
        .await;
    }
    let actors: Vec<ActorRef> = (0..ACTORS)
        .map(|i| ActorRef::new("counter", format!("c{i}")))
        .collect();
    for a in &actors {
        let tick = json!({"schedule": {"name": "tick", "every": "1s", "command": {"add": 1}}});
        let once =
            json!({"schedule": {"name": "once", "after": "1500ms", "command": {"add": 1000}}});
        ask(&nc, PREFIX, &cmd("counter", &a.id, tick, "tick")).await;
        let r = ask(&nc, PREFIX, &cmd("counter", &a.id, once, "once")).await;
        assert_eq!(ok_of(&r).timers.len(), 2, "{r:?}");
    }
    // Progress while waiting: each actor's record count (only its timers append now), read from
    // the log by direct gets; the whole history is read once at the end.
    let versions = || async {
        let mut out = Vec::new();
        for a in &actors {
            out.push(log_of(&nc, PREFIX, SHARDS, "counter", &a.id).await.version);
        }
        out
    };
    let all_grew = |from: Vec<u64>, by: u64| {
        let versions = &versions;
        async move {
            versions()
                .await
                .iter()
                .zip(&from)
                .all(|(now, then)| *now >= then + by)
        }
    };
    let start = versions().await;
    wait_for("every actor fired three times", T, || {
        all_grew(start.clone(), 3)
    })
    .await;

    // app-0 SIGKILLed and started again: its shards' timers come back from the markers.
    pods[0].kill();
    pods[0].restart(&nats.url(), PREFIX);
    wait_for("app-0 back", T, || async {
        pods[0].settled_epoch().await == p1.epoch
    })
    .await;
    let before = versions().await;
    wait_for("every actor ticks after the restart", T, || {
        all_grew(before.clone(), 2)
    })
    .await;

    // A third pod: shards move with their actors' timers.
    pods.push(NodeProcess::start_with(
        &nats.url(),
        PREFIX,
        "app-2",
        POD_FLAGS,
    ));
    let p2 = next_plan(Some(&p1), &["app-0", "app-1", "app-2"], SHARDS, 4);
    assert!(!p2.moves.is_empty());
    publish(&nc, PREFIX, &p2, 30).await;
    for p in &pods {
        wait_for("plan 2 settled", T, || async {
            p.settled_epoch().await == p2.epoch
        })
        .await;
    }
    let before = versions().await;
    wait_for("every actor ticks after the move", T, || {
        all_grew(before.clone(), 2)
    })
    .await;

    // The whole cluster off for 3.5 periods: each periodic timer fires once for what it missed
    // (coalesced), not a burst.
    for p in &mut pods {
        p.kill();
    }
    tokio::time::sleep(OUTAGE).await;
    for p in &mut pods {
        p.restart(&nats.url(), PREFIX);
    }
    for p in &pods {
        wait_for("plan 2 settled after the outage", T, || async {
            p.settled_epoch().await == p2.epoch
        })
        .await;
    }
    let before = versions().await;
    wait_for("every actor ticks after the outage", T, || {
        all_grew(before.clone(), 2)
    })
    .await;
    let mut missed = 0;
    for p in &pods {
        missed += p
            .metric("aether_node_timer_missed_ticks_total")
            .await
            .unwrap_or(0);
    }
    assert!(
        missed >= 2 * ACTORS as i64,
        "the ticks missed in the outage are counted as coalesced: {missed}"
    );

    // Cancelled: no timer left on any actor, and none indexed on any node.
    for a in &actors {
        let r = ask(
            &nc,
            PREFIX,
            &cmd("counter", &a.id, json!({"cancelTimer": "tick"}), "stop"),
        )
        .await;
        assert!(ok_of(&r).timers.is_empty(), "{r:?}");
    }
    for p in &pods {
        wait_for("no timer indexed", T, || async {
            p.metric("aether_node_timers_pending").await == Some(0)
        })
        .await;
    }

    // Each actor's whole log: every firing once, never early, on its grid, none after the cancel;
    // the state counts exactly the firings.
    for a in &actors {
        let log = records(&js, PREFIX, SHARDS, a).await;
        let fired =
            check_periodic(&a.id, &log, "tick", 1000, "stop").unwrap_or_else(|e| panic!("{e}"));
        let once = firings(&log, "once");
        assert_eq!(once.len(), 1, "{}: the one-shot timer fired {once:?}", a.id);
        assert!(
            once[0].1 >= once[0].0,
            "{}: the one-shot timer fired early",
            a.id
        );
        let ticks = firings(&log, "tick");
        assert_eq!(ticks.len(), fired);
        // The outage skipped ticks (a gap of whole periods) and they were not fired late one
        // by one: a firing more than a period after its due time comes at most once per outage
        // (app-0's restart, the whole cluster's).
        assert!(
            ticks.windows(2).any(|w| w[1].0 - w[0].0 >= 3000),
            "{}: no ticks skipped in the outage: {ticks:?}",
            a.id
        );
        let late = ticks.iter().filter(|(due, at)| at - due > 1000).count();
        assert!(
            late <= 2,
            "{}: {late} late firings, a burst: {ticks:?}",
            a.id
        );
        let read = Request::new(a.clone(), Op::Read, None);
        let r = ask(&nc, PREFIX, &read).await;
        let ok = ok_of(&r);
        assert_eq!(
            ok.state["value"],
            json!(1000 + ticks.len() as i64),
            "{}",
            a.id
        );
        assert_eq!(ok.version, log.len() as u64, "{}", a.id);
    }
}

/// Many actors with timers, in a cache far too small for them, their node SIGKILLed: the node
/// started again indexes every one from its marker (which says the timer's due time) and loads
/// only the actors whose timers come due, not the others; a one-shot timer that fired leaves no
/// marker, a far one's marker says its due time. Nobody reads the far actors afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_indexes_many_timers_without_loading_their_actors() {
    const FAR: usize = 3_000;
    const NEAR: usize = 30;
    let prefix = "manytimers";
    let nats = NatsServer::start();
    let nc = nats.connect().await;
    let js = async_nats::jetstream::new(nc.clone());
    let mut pod = NodeProcess::start_with(&nats.url(), prefix, "app-0", &["--max-actors", "100"]);
    let plan = next_plan(None, &["app-0"], SHARDS, 4);
    publish(&nc, prefix, &plan, 30).await;
    wait_for("plan settled", T, || async {
        pod.settled_epoch().await == plan.epoch
    })
    .await;
    let schedule = |name: &str, after: &str| json!({"schedule": {"name": name, "after": after, "command": {"add": 1}}});
    let set = |id: String, command: Value| {
        let nc = nc.clone();
        async move {
            let r = ask(&nc, prefix, &cmd("counter", &id, command, "set")).await;
            (id, ok_of(&r).timers[0].due)
        }
    };
    let mut far = Vec::new();
    for chunk in (0..FAR).collect::<Vec<_>>().chunks(200) {
        let sets = chunk
            .iter()
            .map(|i| set(format!("far{i}"), schedule("later", "1h")));
        far.extend(futures::future::join_all(sets).await);
    }
    // Due once the node is back: long enough for the restart, short for the test.
    let near: Vec<(String, u64)> = futures::future::join_all(
        (0..NEAR).map(|i| set(format!("near{i}"), schedule("soon", "6s"))),
    )
    .await;

    pod.kill();
    pod.restart(&nats.url(), prefix);
    wait_for("every actor with a timer indexed again", T, || async {
        pod.metric("aether_node_timers_pending").await == Some((FAR + NEAR) as i64)
    })
    .await;
    let hosted = pod.metric("aether_node_actors_hosted").await.unwrap_or(-1);
    assert!(
        hosted <= NEAR as i64,
        "{hosted} actors loaded to index {} timers",
        FAR + NEAR
    );
    // The near ones fire (each loaded for it); the far ones stay indexed and not loaded.
    wait_for("the near timers fired", T, || async {
        pod.metric("aether_node_timers_pending").await == Some(FAR as i64)
    })
    .await;
    assert_eq!(
        pod.metric("aether_node_timer_firings_total").await,
        Some(NEAR as i64)
    );
    let hosted = pod.metric("aether_node_actors_hosted").await.unwrap_or(-1);
    assert!(hosted <= NEAR as i64, "{hosted} actors loaded");
    let bytes = pod
        .metric("aether_node_timer_index_bytes")
        .await
        .unwrap_or(0);
    assert!(bytes > 0, "the index's bytes are counted");

    // The markers: gone with the fired one-shot timers; the far ones say their due time.
    let names = aether_core::protocol::Names::new(prefix);
    let stream = js.get_stream(names.event_stream()).await.expect("stream");
    let marker = |id: &str| {
        let actor = ActorRef::new("counter", id);
        let subject = names.pending_subject(aether_core::hash::shard_of(id, SHARDS), &actor);
        let stream = stream.clone();
        async move {
            stream
                .get_last_raw_message_by_subject(&subject)
                .await
                .ok()
                .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        }
    };
    for (id, _) in &near {
        let log = records(&js, prefix, SHARDS, &ActorRef::new("counter", id.as_str())).await;
        assert_eq!(firings(&log, "soon").len(), 1, "{id}: fired once");
        assert_eq!(marker(id).await, None, "{id}: no marker left");
    }
    for (id, due) in far.iter().step_by(97) {
        assert_eq!(marker(id).await, Some(due.to_string()), "{id}: its marker");
    }
}

/// The pending-work read of a node that starts serving shards reads every marker that was there and
/// ends, while other nodes go on purging and writing markers. A "last per subject" consumer stopped
/// delivering once markers it was to deliver were purged, and went on counting them as pending, so
/// the read waited for markers that never came (a joining node's timers fired 48 s late in the
/// timers bench). Every marker that stayed is read, none that was purged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pending_work_read_ends_while_markers_are_purged_and_written() {
    use aether_node::store::{EventStore, MARKER_BATCH};
    use std::collections::HashSet;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    const MARKED: usize = 3 * MARKER_BATCH;
    // Purged while the read runs, after its first batch: not delivered yet (delivery is in order).
    const PURGED: std::ops::Range<usize> = 2 * MARKER_BATCH..MARKED;
    let nats = NatsServer::start();
    let nc = nats.connect().await;
    let js = async_nats::jetstream::new(nc.clone());
    let store = Arc::new(
        EventStore::open(js, aether_core::protocol::Names::new("markread"), 1)
            .await
            .expect("store"),
    );
    let actor = |i: usize| ActorRef::new("counter", format!("m{i}"));
    let shard = |i: usize| aether_core::hash::shard_of(&format!("m{i}"), SHARDS);
    for chunk in (0..MARKED).collect::<Vec<_>>().chunks(500) {
        let marks = chunk.iter().map(|&i| {
            let store = store.clone();
            async move { store.mark_pending(shard(i), &actor(i), 0, false).await }
        });
        for r in futures::future::join_all(marks).await {
            r.expect("mark");
        }
    }

    // Another node's worker: purges the markers of PURGED once the read has begun, then writes a
    // new marker now and then until the read is over.
    let (begun_tx, begun_rx) = tokio::sync::oneshot::channel::<()>();
    let (purged_tx, purged_rx) = std::sync::mpsc::channel::<()>();
    let done = Arc::new(AtomicBool::new(false));
    let other = {
        let (store, done) = (store.clone(), done.clone());
        tokio::spawn(async move {
            let _ = begun_rx.await;
            for i in PURGED {
                store
                    .clear_pending(shard(i), &actor(i))
                    .await
                    .expect("purge");
            }
            let _ = purged_tx.send(());
            let mut n = 0;
            while !done.load(Ordering::Relaxed) {
                let id = MARKED + n;
                store
                    .mark_pending(shard(id), &actor(id), 0, true)
                    .await
                    .expect("mark");
                n += 1;
                // Paces the writer (a few markers a second, as timers being set elsewhere).
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        })
    };
    let mut seen: HashSet<String> = HashSet::new();
    let mut begun = Some(begun_tx);
    let read = tokio::time::timeout(
        T,
        store.pending(
            |_| true,
            |batch| {
                seen.extend(batch.into_iter().map(|(_, a, _)| a.id));
                if let Some(tx) = begun.take() {
                    let _ = tx.send(());
                    tokio::task::block_in_place(|| purged_rx.recv()).expect("purged");
                }
            },
        ),
    )
    .await;
    done.store(true, Ordering::Relaxed);
    other.await.expect("writer");
    let found = read
        .expect("the read ends while markers keep being written")
        .expect("read");
    assert_eq!(found, seen.len(), "each marker handed over once");
    for i in 0..PURGED.start {
        assert!(seen.contains(&format!("m{i}")), "m{i}: its marker was read");
    }
    for i in PURGED {
        assert!(!seen.contains(&format!("m{i}")), "m{i}: purged, yet read");
    }
}
