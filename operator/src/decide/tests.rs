//! Unit tests of `decide.rs`.

use super::*;
use aether_core::protocol::VERSION;

fn spec() -> ShardPlanSpec {
    serde_json::from_value(serde_json::json!({"statefulSet": "app", "shards": 64, "capacity": 8}))
        .expect("spec")
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
}

fn observe<'a>(
    spec: &'a ShardPlanSpec,
    status: Option<&'a ShardPlanStatus>,
    pods: &[&str],
) -> Observed<'a> {
    Observed {
        generation: Some(1),
        spec,
        status,
        replicas: Some(pods.len() as i32),
        members: pods.iter().map(|p| MemberInput::active(*p)).collect(),
        progress: Vec::new(),
        nats_problem: None,
        held: None,
        me: "ns/sp/uid-1".into(),
        prefix_taken_by: None,
        now: now(),
    }
}

fn cond<'a>(s: &'a ShardPlanStatus, t: &str) -> &'a Condition {
    s.conditions
        .iter()
        .find(|c| c.type_ == t)
        .expect("condition set")
}

fn done(epoch: u64, shard: u32) -> Progress {
    Progress {
        v: VERSION,
        epoch,
        shard,
        node: "x".into(),
        phase: MovePhase::Done,
        actors: 0,
        duration_ms: 1,
        bytes: 0,
        error: None,
        from: None,
        to: None,
    }
}

#[test]
fn first_members_get_a_plan_and_ready() {
    let s = spec();
    let d = decide(&observe(&s, None, &["app-0", "app-1"]));
    let p = d.publish.expect("a plan");
    assert_eq!(p.epoch, 1);
    assert!(p.moves.is_empty());
    assert_eq!(d.status.epoch, 1);
    assert_eq!(d.status.member_count, 2);
    assert_eq!(cond(&d.status, "Ready").status, "True");
    assert_eq!(cond(&d.status, "Degraded").status, "False");
    // Same observation again: nothing to publish, same status.
    let again = decide(&observe(&s, Some(&d.status), &["app-0", "app-1"]));
    assert!(again.publish.is_none());
    assert_eq!(again.status, d.status);
}

#[test]
fn a_join_rebalances_until_every_move_is_done() {
    let s = spec();
    let one = decide(&observe(&s, None, &["app-0", "app-1"])).status;
    let two = decide(&observe(&s, Some(&one), &["app-0", "app-1", "app-2"]));
    let plan = two.publish.expect("epoch 2");
    assert_eq!(plan.epoch, 2);
    assert!(!plan.moves.is_empty());
    assert_eq!(two.status.moving as usize, plan.moves.len());
    assert_eq!(cond(&two.status, "Rebalancing").status, "True");
    assert_eq!(cond(&two.status, "Ready").status, "False");
    assert!(two.notes.iter().any(|n| n.reason == "Rebalancing"));
    let mut o = observe(&s, Some(&two.status), &["app-0", "app-1", "app-2"]);
    o.progress = plan.moves.iter().map(|m| done(2, m.shard)).collect();
    let three = decide(&o);
    assert!(three.publish.is_none(), "progress alone makes no new plan");
    assert_eq!(three.status.moving, 0);
    assert_eq!(cond(&three.status, "Ready").status, "True");
}

#[test]
fn a_restarted_operator_makes_the_same_next_plan() {
    let s = spec();
    let one = decide(&observe(&s, None, &["app-0", "app-1"])).status;
    // Round-trip the status through JSON as the API server stores it.
    let stored: ShardPlanStatus =
        serde_json::from_str(&serde_json::to_string(&one).expect("json")).expect("parse");
    let a = decide(&observe(&s, Some(&one), &["app-0", "app-1", "app-2"])).publish;
    let b = decide(&observe(&s, Some(&stored), &["app-0", "app-1", "app-2"])).publish;
    assert_eq!(a, b);
}

#[test]
fn failed_moves_are_retried_then_degraded() {
    let mut s = spec();
    s.migration.max_retries = 1;
    let one = decide(&observe(&s, None, &["app-0", "app-1"])).status;
    let two = decide(&observe(&s, Some(&one), &["app-0", "app-1", "app-2"]));
    let shard = two.publish.as_ref().expect("plan").moves[0].shard;
    let fail = |epoch| Progress {
        v: VERSION,
        epoch,
        shard,
        node: "app-0".into(),
        phase: MovePhase::Failed,
        actors: 0,
        duration_ms: 5,
        bytes: 0,
        error: Some("no answer to chunk 0: timed out".into()),
        from: None,
        to: None,
    };
    let mut o = observe(&s, Some(&two.status), &["app-0", "app-1", "app-2"]);
    o.progress = vec![fail(2)];
    let waiting = decide(&o);
    assert!(waiting.publish.is_none(), "not before the backoff");
    let mut o = observe(&s, Some(&waiting.status), &["app-0", "app-1", "app-2"]);
    o.now = Time(now().0 + k8s_openapi::jiff::SignedDuration::from_secs(2));
    let three = decide(&o);
    let retry = three.publish.as_ref().expect("a retry plan");
    assert_eq!(retry.epoch, 3);
    assert!(
        retry.moves.iter().any(|m| m.shard == shard),
        "the failed move is planned again"
    );
    let mv = three
        .status
        .moves
        .iter()
        .find(|m| m.shard == shard)
        .expect("kept");
    assert_eq!(mv.attempts, 1);
    assert_eq!(
        retry.attempts,
        std::collections::BTreeMap::from([(shard, 1)]),
        "the retry plan says how often its moves were tried (kubectl aether moves shows it)"
    );
    assert!(
        two.publish.as_ref().is_some_and(|p| p.attempts.is_empty()),
        "a first plan tried nothing yet"
    );
    assert_eq!(
        mv.last_error.as_deref(),
        Some("no answer to chunk 0: timed out")
    );
    let mut o = observe(&s, Some(&three.status), &["app-0", "app-1", "app-2"]);
    o.progress = vec![fail(3)];
    // Past the backoff, before the other moves' deadlines.
    o.now = Time(now().0 + k8s_openapi::jiff::SignedDuration::from_secs(30));
    let four = decide(&o);
    assert!(four.publish.is_none(), "retries exhausted");
    let degraded = cond(&four.status, "Degraded");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "MoveFailed")
    );
    assert!(degraded.message.contains("maxRetries"));
}

#[test]
fn bad_surroundings_are_degraded_with_what_to_fix() {
    let s = spec();
    let mut o = observe(&s, None, &["app-0"]);
    o.replicas = None;
    let d = decide(&o);
    assert!(d.publish.is_none());
    let c = cond(&d.status, "Degraded");
    assert_eq!(c.reason, "StatefulSetMissing");
    assert!(c.message.contains("spec.statefulSet"));
    assert!(d.notes.iter().any(|n| n.warning));

    let mut o = observe(&s, None, &["app-0"]);
    o.replicas = Some(9);
    assert_eq!(
        cond(&decide(&o).status, "Degraded").reason,
        "TooManyReplicas"
    );

    let mut o = observe(&s, None, &["app-0"]);
    o.nats_problem = Some("cannot connect to nats://nats:4222".into());
    let d = decide(&o);
    assert_eq!(cond(&d.status, "Degraded").reason, "NatsUnreachable");
    assert_eq!(cond(&d.status, "Ready").status, "False");
}

#[test]
fn paused_plans_nothing_and_says_so() {
    let mut s = spec();
    let one = decide(&observe(&s, None, &["app-0", "app-1"])).status;
    s.paused = true;
    let d = decide(&observe(&s, Some(&one), &["app-0", "app-1", "app-2"]));
    assert!(d.publish.is_none());
    assert_eq!(cond(&d.status, "Rebalancing").reason, "Paused");
    assert_eq!(d.status.epoch, 1);
}

#[test]
fn a_draining_pod_is_planned_out_and_listed_while_it_drains() {
    let s = spec();
    let one = decide(&observe(&s, None, &["app-0", "app-1", "app-2"])).status;
    let mut o = observe(&s, Some(&one), &["app-0", "app-1"]);
    o.members.push(MemberInput::draining("app-2"));
    let d = decide(&o);
    let p = d.publish.expect("plan");
    assert!(p.moves.iter().all(|m| m.from.as_deref() == Some("app-2")));
    assert!(
        d.status
            .members
            .iter()
            .any(|m| m.pod == "app-2" && m.state == MemberState::Draining)
    );
    assert_eq!(d.status.member_count, 2);
}

#[test]
fn moves_from_a_draining_pod_that_vanished_are_replanned_from_the_log() {
    let s = spec();
    let one = decide(&observe(&s, None, &["app-0", "app-1", "app-2"])).status;
    let mut o = observe(&s, Some(&one), &["app-0", "app-1"]);
    o.members.push(MemberInput::draining("app-2"));
    let two = decide(&o).status;
    assert!(two.moves.iter().any(|m| m.from.as_deref() == Some("app-2")));
    // app-2's process dies and its pod is deleted before any move is done.
    let d = decide(&observe(&s, Some(&two), &["app-0", "app-1"]));
    let p = d.publish.expect("a new plan");
    assert_eq!(p.epoch, two.epoch + 1);
    assert!(p.moves.iter().all(|m| m.from.is_none()), "{:?}", p.moves);
    assert!(d.status.moves.is_empty(), "nothing left to wait for");
    assert!(d.status.members.iter().all(|m| m.pod != "app-2"));
    assert!(
        d.notes
            .iter()
            .any(|n| n.warning && n.reason == "SourceGone" && n.message.contains("app-2"))
    );
    assert_eq!(cond(&d.status, "Ready").status, "True");
}

#[test]
fn the_epoch_goes_above_whatever_the_bucket_holds() {
    let s = spec();
    let one = decide(&observe(&s, None, &["app-0", "app-1"])).status;
    // Another writer put epoch 100 in the bucket: the same plan is published above it.
    let mut o = observe(&s, Some(&one), &["app-0", "app-1"]);
    o.held = Some(Held {
        epoch: 100,
        shards: 64,
        owner: Some("ns/old/uid-0".into()),
    });
    let d = decide(&o);
    let p = d.publish.expect("published above the bucket");
    assert_eq!((p.epoch, d.status.epoch), (101, 101));
    assert_eq!(p.owner.as_deref(), Some("ns/sp/uid-1"));
    assert_eq!(p.shard_map, one.shard_map.clone().expect("map"));
    assert!(d.notes.iter().any(|n| n.reason == "EpochAdvanced"
        && n.message.contains("epoch 100")
        && n.message.contains("ns/old/uid-0")));
    // Once the bucket holds it, nothing more.
    let mut o = observe(&s, Some(&d.status), &["app-0", "app-1"]);
    o.held = Some(Held {
        epoch: 101,
        shards: 64,
        owner: Some("ns/sp/uid-1".into()),
    });
    assert!(decide(&o).publish.is_none());
    // Another ShardPlan's plan at our very epoch is not ours either.
    o.held = Some(Held {
        epoch: 101,
        shards: 64,
        owner: Some("ns/other/uid-2".into()),
    });
    assert_eq!(decide(&o).publish.map(|p| p.epoch), Some(102));
    // A ShardPlan created again on a prefix whose bucket holds epoch 7: its first plan is 8.
    let mut o = observe(&s, None, &["app-0"]);
    o.held = Some(Held {
        epoch: 7,
        shards: 64,
        owner: None,
    });
    let d = decide(&o);
    assert_eq!(d.publish.map(|p| p.epoch), Some(8));
    assert_eq!(cond(&d.status, "Ready").status, "True");
}

#[test]
fn another_shardplans_prefix_or_shard_count_is_degraded_with_what_to_do() {
    let s = spec();
    let mut o = observe(&s, None, &["app-0"]);
    o.prefix_taken_by = Some("ns/first".into());
    let d = decide(&o);
    assert!(d.publish.is_none());
    let c = cond(&d.status, "Degraded");
    assert_eq!(c.reason, "PrefixInUse");
    assert!(c.message.contains("ns/first") && c.message.contains("subjectPrefix"));
    let mut o = observe(&s, None, &["app-0"]);
    o.held = Some(Held {
        epoch: 3,
        shards: 1024,
        owner: Some("ns/old/uid-0".into()),
    });
    let d = decide(&o);
    assert!(
        d.publish.is_none(),
        "nodes keep the plan they can read actors with"
    );
    let c = cond(&d.status, "Degraded");
    assert_eq!(c.reason, "ShardCountMismatch");
    assert!(c.message.contains("1024") && c.message.contains("spec.shards"));
    assert_eq!(cond(&d.status, "Ready").status, "False");
}

#[test]
fn a_move_without_an_outcome_by_its_deadline_is_failed_and_retried() {
    let s = spec();
    let one = decide(&observe(&s, None, &["app-0", "app-1"])).status;
    let two = decide(&observe(&s, Some(&one), &["app-0", "app-1", "app-2"]));
    assert_eq!(two.status.planned_at, Some(now()));
    let n = two.status.moves.len();
    // Before its share of the time: nothing.
    let mut o = observe(&s, Some(&two.status), &["app-0", "app-1", "app-2"]);
    o.now = Time(now().0 + k8s_openapi::jiff::SignedDuration::from_secs(40));
    let d = decide(&o);
    assert!(d.publish.is_none());
    assert!(d.status.moves.iter().all(|m| m.phase == MovePhase::Pending));
    // Long after: every move failed once and planned again.
    o.now = Time(now().0 + k8s_openapi::jiff::SignedDuration::from_secs(100_000));
    let d = decide(&o);
    let retry = d.publish.expect("a retry plan");
    assert_eq!(retry.epoch, 3);
    assert_eq!(d.status.moves.len(), n);
    assert!(d.status.moves.iter().all(|m| {
        m.attempts == 1
            && m.last_error
                .as_deref()
                .is_some_and(|e| e.contains("no outcome"))
    }));
    assert!(d.notes.iter().any(|n| n.reason == "MoveTimedOut"));
}

#[test]
fn a_report_read_again_counts_once() {
    let s = spec();
    let one = decide(&observe(&s, None, &["app-0", "app-1"])).status;
    let two = decide(&observe(&s, Some(&one), &["app-0", "app-1", "app-2"])).status;
    let shard = two.moves[0].shard;
    let mut failed = done(2, shard);
    failed.phase = MovePhase::Failed;
    failed.error = Some("refused".into());
    let mut o = observe(&s, Some(&two), &["app-0", "app-1", "app-2"]);
    o.progress = vec![failed.clone()];
    let once = decide(&o).status;
    let mut o = observe(&s, Some(&once), &["app-0", "app-1", "app-2"]);
    o.progress = vec![failed];
    let twice = decide(&o).status;
    let attempts = |st: &ShardPlanStatus| {
        st.moves
            .iter()
            .find(|m| m.shard == shard)
            .map(|m| m.attempts)
    };
    assert_eq!(attempts(&once), Some(1));
    assert_eq!(
        attempts(&twice),
        Some(1),
        "the operator restarted and read it again"
    );
}

#[test]
fn a_plan_and_a_status_of_65536_shards_fit_nats_and_etcd() {
    let mut s = spec();
    s.shards = 65_536;
    let one = decide(&observe(&s, None, &["app-0", "app-1"])).status;
    let two = decide(&observe(&s, Some(&one), &["app-0", "app-1", "app-2"]));
    let plan = two.publish.expect("a plan");
    assert!(plan.moves.len() > 20_000, "{} moves", plan.moves.len());
    let bytes = aether_core::protocol::encode(&plan).expect("encodes");
    assert!(
        bytes.len() < 512 * 1024,
        "plan message {} bytes",
        bytes.len()
    );
    let back: PlanMessage = aether_core::protocol::decode(&bytes).expect("decodes");
    assert_eq!(back, plan);
    let status = serde_json::to_vec(&two.status).expect("json");
    assert!(status.len() < 512 * 1024, "status {} bytes", status.len());
    let back: ShardPlanStatus = serde_json::from_slice(&status).expect("parses");
    assert_eq!(back, two.status);
    // Every move fails with its own error text: the status stays small.
    let mut o = observe(&s, Some(&two.status), &["app-0", "app-1", "app-2"]);
    o.progress = plan
        .moves
        .iter()
        .map(|m| {
            let mut p = done(plan.epoch, m.shard);
            p.phase = MovePhase::Failed;
            p.error = Some(format!(
                "no answer to chunk {}: {}",
                m.shard,
                "x".repeat(900)
            ));
            p
        })
        .collect();
    let failed = decide(&o).status;
    let status = serde_json::to_vec(&failed).expect("json");
    assert!(status.len() < 1024 * 1024, "status {} bytes", status.len());
    let distinct: BTreeSet<&str> = failed
        .moves
        .iter()
        .filter_map(|m| m.last_error.as_deref())
        .collect();
    assert_eq!(distinct.len(), DISTINCT_ERRORS + 1);
}

#[test]
fn a_retry_waits_until_no_transfer_is_in_flight() {
    let s = spec();
    let one = decide(&observe(&s, None, &["app-0", "app-1"])).status;
    let two = decide(&observe(&s, Some(&one), &["app-0", "app-1", "app-2"]));
    let moves = &two.status.moves;
    assert!(moves.len() >= 2);
    let (a, b) = (moves[0].shard, moves[1].shard);
    let report = |shard, phase| {
        let mut p = done(2, shard);
        p.phase = phase;
        p.error = (phase == MovePhase::Failed).then(|| "refused".to_owned());
        p
    };
    let mut o = observe(&s, Some(&two.status), &["app-0", "app-1", "app-2"]);
    o.progress = vec![
        report(a, MovePhase::Failed),
        report(b, MovePhase::Transferring),
    ];
    o.now = Time(now().0 + k8s_openapi::jiff::SignedDuration::from_secs(5));
    let waiting = decide(&o);
    assert!(
        waiting.publish.is_none(),
        "no retry while another move transfers"
    );
    let mut o = observe(&s, Some(&waiting.status), &["app-0", "app-1", "app-2"]);
    o.progress = vec![report(b, MovePhase::Done)];
    o.now = Time(now().0 + k8s_openapi::jiff::SignedDuration::from_secs(6));
    let retried = decide(&o)
        .publish
        .expect("the retry once nothing transfers");
    assert!(retried.moves.iter().any(|m| m.shard == a));
    assert!(!retried.moves.iter().any(|m| m.shard == b));
}
