use super::*;
use crate::store::Outgoing;
use aether_core::plan::{MemberInput, PlanSpec, plan};
use aether_core::types::Strategy;
use std::collections::BTreeSet;

fn two_pods() -> PlanMessage {
    let spec = PlanSpec {
        shards: 8,
        capacity: 4,
        strategy: Strategy::AnchorHash,
    };
    let members = [MemberInput::active("app-0"), MemberInput::active("app-1")];
    let p = plan(None, &BTreeSet::new(), &members, &spec).expect("plan");
    PlanMessage::new(&p, 4, 30)
}

#[test]
fn an_actor_is_where_the_shard_map_says_and_in_the_move_of_its_shard() {
    let mut plan = two_pods();
    let actor = ActorRef::new("counter", "user/42");
    let shard = shard_of(&actor.id, 8);
    let v = whereabouts(&plan, &actor);
    let owner = plan
        .members
        .iter()
        .find(|m| Some(m.bucket) == plan.shard_map.bucket(shard))
        .map(|m| m.name.clone());
    assert_eq!(v["shard"], json!(shard));
    assert_eq!(v["owner"], json!(owner));
    assert_eq!(v["moving"], Value::Null);
    plan.moves.push(aether_core::types::Move {
        shard,
        from: owner.clone(),
        to: "app-9".into(),
    });
    assert_eq!(
        whereabouts(&plan, &actor)["moving"],
        json!({"from": owner, "to": "app-9"})
    );
    assert_eq!(parse_actor("counter/user/42").expect("ok"), actor);
    assert!(parse_actor("counter").is_err());
    assert!(parse_actor("/x").is_err());
}

fn record(version: u64, events: Vec<Value>, snapshot: Option<i64>) -> Record {
    let mut r = Record::new(Some(format!("c{version}")), events, version, 0);
    r.snapshot = snapshot.map(|n| Snapshot::initial(json!({ "value": n })));
    r
}

#[test]
fn state_at_any_version_is_folded_by_the_kinds_own_apply() {
    let kinds = Registry::builtin();
    let counter = kinds.get("counter");
    // The counter's event, as its decide makes it for `{"add": 5}`.
    let event = json!({ "added": 5 });
    let log = vec![
        (1, record(1, vec![event.clone()], Some(5))),
        (2, record(2, vec![event.clone()], None)),
        (3, record(3, vec![event.clone()], None)),
    ];
    assert_eq!(state_at(counter, &log, 1), Some(json!({"value": 5})));
    assert_eq!(state_at(counter, &log, 3), Some(json!({"value": 15})));
    assert_eq!(state_at(counter, &log, 4), None, "no such version");
    // Purged before version 2 (compaction): from its snapshot only.
    assert_eq!(state_at(counter, &log[1..], 3), None);
    // An app kind: only where a snapshot is.
    assert_eq!(state_at(None, &log, 1), Some(json!({"value": 5})));
    assert_eq!(state_at(None, &log, 2), None);
}

#[test]
fn an_actors_view_shows_its_pending_work() {
    let kinds = Registry::builtin();
    let mut snap = Snapshot::initial(json!({"value": 1}));
    snap.outbox.push(Outgoing {
        id: "$send-1".into(),
        actor: ActorRef::new("account", "bob"),
        command: json!({"deposit": 5}),
        delivered: true,
        trace: None,
    });
    let actor = ActorRef::new("counter", "a");
    let v = actor_view(&actor, kinds.get("counter"), &snap, 7, &[]);
    assert_eq!(v["version"], json!(7));
    assert_eq!(v["state"], json!({"value": 1}));
    assert_eq!(
        v["pendingSends"],
        json!([{"id": "$send-1", "to": "account/bob", "delivered": true}])
    );
    // An app kind: the events after the snapshot are shown, not folded.
    let v = actor_view(&actor, None, &snap, 9, &[json!({"e": 1})]);
    assert_eq!(v["eventsNotFolded"], json!([{"e": 1}]));
    let table = render("get", &v, Output::Table);
    assert!(
        table.contains("$send-1 to account/bob (delivered, not released)"),
        "{table}"
    );
}

#[test]
fn status_counts_shards_per_pod_and_names_failed_moves_and_pods_behind() {
    let mut plan = two_pods();
    plan.epoch = 3;
    plan.moves.push(aether_core::types::Move {
        shard: 0,
        from: Some("app-0".into()),
        to: "app-1".into(),
    });
    let held: BTreeMap<String, Option<u64>> =
        [("app-0".to_owned(), Some(3)), ("app-1".to_owned(), Some(2))].into();
    let report = Progress {
        v: 1,
        epoch: 3,
        shard: 0,
        node: "app-0".into(),
        phase: aether_core::types::MovePhase::Failed,
        actors: 0,
        duration_ms: 5,
        bytes: 0,
        error: Some("no answer to chunk 0".into()),
        from: Some("app-0".into()),
        to: Some("app-1".into()),
    };
    let reports: BTreeMap<u32, Progress> = [(0, report)].into();
    let v = status_view(&plan, &held, &reports, json!({}));
    let shards: u64 = v["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m["shards"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(shards, 8);
    assert_eq!(v["notHoldingPlan"], json!(["app-1"]));
    assert_eq!(v["moves"], json!({"Failed": 1}));
    assert_eq!(v["failedMoves"][0]["error"], json!("no answer to chunk 0"));
    let table = render("status", &v, Output::Table);
    assert!(table.contains("1 Failed"), "{table}");
    assert!(
        table.contains("FAILED shard 0 from app-0 to app-1: no answer to chunk 0"),
        "{table}"
    );
}
