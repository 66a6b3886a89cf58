//! The reconcile decisions, pure: from what was observed (spec, status, StatefulSet, pods, progress
//! reports, NATS health) to the next status and, when the membership changed or a failed move is due a
//! retry, the next plan to publish. `controller.rs` gathers the observations and applies the decision:
//! status first (server-side apply), then the plan to NATS, then Events.

use aether_core::crd::{
    MemberState, MemberStatus, MovePhase, MoveStatus, ShardPlanSpec, ShardPlanStatus,
};
use aether_core::plan::{MemberInput, PlanSpec, plan};
use aether_core::protocol::{PlanMessage, Progress};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// The facts a reconcile starts from.
#[derive(Debug, Clone)]
pub struct Observed<'a> {
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// The spec.
    pub spec: &'a ShardPlanSpec,
    /// The current status, if any.
    pub status: Option<&'a ShardPlanStatus>,
    /// `spec.replicas` of the StatefulSet; `None` when it does not exist.
    pub replicas: Option<i32>,
    /// Members from the pods.
    pub members: Vec<MemberInput>,
    /// Progress reports received since the last reconcile.
    pub progress: Vec<Progress>,
    /// Why NATS cannot be used, if it cannot.
    pub nats_problem: Option<String>,
    /// The plan the bucket holds, if it was read.
    pub held: Option<Held>,
    /// This ShardPlan as it signs its plans: `namespace/name/uid`.
    pub me: String,
    /// Another ShardPlan, created earlier, on the same NATS URL and subject prefix.
    pub prefix_taken_by: Option<String>,
    /// Now.
    pub now: Time,
}

/// What the plan bucket holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// Its epoch.
    pub epoch: u64,
    /// Its number of shards.
    pub shards: u32,
    /// The ShardPlan that published it, if it says.
    pub owner: Option<String>,
}

/// Seconds a move may stay without an outcome past its share of the plan's time: the operator
/// then fails it (its source is stuck or gone) and retries it.
pub const DEADLINE_GRACE_SECONDS: u64 = 30;

/// A Kubernetes Event to emit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// True for a Warning, false for Normal.
    pub warning: bool,
    /// CamelCase reason.
    pub reason: &'static str,
    /// Text.
    pub message: String,
}

/// What to do.
#[derive(Debug, Clone)]
pub struct Decision {
    /// The status to write.
    pub status: ShardPlanStatus,
    /// A plan to publish after the status is written.
    pub publish: Option<PlanMessage>,
    /// Events to emit.
    pub notes: Vec<Note>,
    /// When to look again.
    pub requeue: Duration,
}

/// Delay before retrying a move that failed `attempts` times: 1 s, 2 s, 4 s, ... at most 60 s.
#[must_use]
pub fn backoff(attempts: u32) -> Duration {
    Duration::from_secs(1u64 << attempts.saturating_sub(1).min(6)).min(Duration::from_secs(60))
}

/// Decides the next status and plan.
#[must_use]
pub fn decide(o: &Observed<'_>) -> Decision {
    let mut status = o.status.cloned().unwrap_or_default();
    status.observed_generation = o.generation;
    let mut notes = Vec::new();
    let previous = o.status.and_then(ShardPlanStatus::plan);

    apply_progress(&mut status, &o.progress, &o.now);
    let expired = expire_moves(&mut status, o.spec, &o.now);
    if expired > 0 {
        notes.push(Note {
            warning: true,
            reason: "MoveTimedOut",
            message: format!(
                "epoch {}: {expired} shard moves got no outcome in time (their sources may be stuck or gone): retrying",
                status.epoch
            ),
        });
    }
    bound_errors(&mut status.moves);
    let held_epoch = o.held.as_ref().map_or(0, |h| h.epoch);

    let problem = if o.replicas.is_none() {
        Some((
            "StatefulSetMissing",
            format!(
                "StatefulSet {:?} does not exist in this namespace: create it or fix spec.statefulSet",
                o.spec.stateful_set
            ),
        ))
    } else if o.replicas.is_some_and(|r| r > o.spec.capacity as i32) {
        Some((
            "TooManyReplicas",
            format!(
                "the StatefulSet asks for {} replicas but spec.capacity is {}: scale down, or create a new ShardPlan with a larger capacity",
                o.replicas.unwrap_or_default(),
                o.spec.capacity
            ),
        ))
    } else if let Some(other) = &o.prefix_taken_by {
        Some((
            "PrefixInUse",
            format!(
                "ShardPlan {other} already uses subject prefix {:?} on this NATS: its plan bucket and event stream would be shared (one StatefulSet following the other's plan, actors of both in one log); set spec.nats.subjectPrefix to a prefix of its own",
                o.spec.nats.subject_prefix
            ),
        ))
    } else if let Some(h) = o
        .held
        .as_ref()
        .filter(|h| h.shards != o.spec.shards && h.owner.as_deref() != Some(o.me.as_str()))
    {
        Some((
            "ShardCountMismatch",
            format!(
                "the plan bucket {}-plans holds a plan of {} shards (from {}), and the actors in the event stream are placed by it; spec.shards is {}: set spec.shards to {}, or use another spec.nats.subjectPrefix (the actors stay under the old one)",
                o.spec.nats.subject_prefix,
                h.shards,
                h.owner.as_deref().unwrap_or("an unknown writer"),
                o.spec.shards,
                h.shards
            ),
        ))
    } else {
        o.nats_problem.as_ref().map(|p| {
            (
                "NatsUnreachable",
                format!("{p}: check spec.nats.url and the credentials Secret"),
            )
        })
    };

    let active: BTreeSet<&str> = o
        .members
        .iter()
        .filter(|m| !m.draining)
        .map(|m| m.name.as_str())
        .collect();
    let planned: BTreeSet<&str> = previous
        .as_ref()
        .map(|p| p.members.iter().map(|m| m.name.as_str()).collect())
        .unwrap_or_default();
    let membership_changed = active != planned;
    // A move whose source pod is gone (deleted, or its process died while draining) never reports:
    // re-plan, so its shard's new owner rebuilds the actors from the log instead of waiting forever.
    let present: BTreeSet<&str> = o.members.iter().map(|m| m.name.as_str()).collect();
    let mut sources_gone: Vec<&str> = status
        .moves
        .iter()
        .filter_map(|m| m.from.as_deref())
        .filter(|f| !present.contains(f))
        .collect();
    sources_gone.sort_unstable();
    sources_gone.dedup();
    if !sources_gone.is_empty() {
        let shards = status
            .moves
            .iter()
            .filter(|m| m.from.as_deref().is_some_and(|f| sources_gone.contains(&f)))
            .count();
        notes.push(Note {
            warning: true,
            reason: "SourceGone",
            message: format!(
                "{} left before handing over {shards} shards: their new owners rebuild those actors from the log",
                sources_gone.join(", ")
            ),
        });
    }
    // A retry is a new plan, which stops every transfer not handed off yet: it waits until none
    // is in flight (a stuck one fails by its deadline), so one failure never rolls the others back.
    let transferring = status
        .moves
        .iter()
        .any(|m| m.phase == MovePhase::Transferring);
    let retry_due = !transferring
        && status.moves.iter().any(|m| {
            m.phase == MovePhase::Failed
                && m.attempts <= o.spec.migration.max_retries
                && m.retry_after.as_ref().is_none_or(|t| t.0 <= o.now.0)
        });
    let exhausted: Vec<u32> = status
        .moves
        .iter()
        .filter(|m| m.attempts > o.spec.migration.max_retries)
        .map(|m| m.shard)
        .collect();

    let mut publish = None;
    let mut degraded = problem.clone();
    if problem.is_none()
        && !o.spec.paused
        && (membership_changed || retry_due || !sources_gone.is_empty())
    {
        let pending: BTreeSet<u32> = status.moves.iter().map(|m| m.shard).collect();
        let spec = PlanSpec {
            shards: o.spec.shards,
            capacity: o.spec.capacity,
            strategy: o.spec.strategy,
        };
        match plan(previous.as_ref(), &pending, &o.members, &spec) {
            Ok(mut next) => {
                if next.epoch <= held_epoch {
                    // Epochs only grow, whoever wrote the bucket: the nodes ignore anything lower.
                    notes.push(epoch_advanced(held_epoch, o.held.as_ref()));
                    next.epoch = held_epoch + 1;
                }
                let attempts: BTreeMap<u32, &MoveStatus> =
                    status.moves.iter().map(|m| (m.shard, m)).collect();
                notes.push(Note {
                    warning: false,
                    reason: if membership_changed || !sources_gone.is_empty() {
                        "Rebalancing"
                    } else {
                        "RetryingMoves"
                    },
                    message: format!(
                        "epoch {}: {} members, {} shards to move",
                        next.epoch,
                        next.members.len(),
                        next.moves.len()
                    ),
                });
                status.moves = next
                    .moves
                    .iter()
                    .map(|m| {
                        let before = attempts.get(&m.shard);
                        MoveStatus {
                            shard: m.shard,
                            from: m.from.clone(),
                            to: m.to.clone(),
                            // A move without a source is done as soon as its owner has the plan.
                            phase: MovePhase::Pending,
                            attempts: before.map_or(0, |b| b.attempts),
                            last_error: before.and_then(|b| b.last_error.clone()),
                            retry_after: None,
                        }
                    })
                    .filter(|m| m.from.is_some())
                    .collect();
                status.epoch = next.epoch;
                status.members = next.members.iter().map(MemberStatus::from).collect();
                for d in o.members.iter().filter(|m| m.draining) {
                    if status
                        .moves
                        .iter()
                        .any(|mv| mv.from.as_deref() == Some(&d.name))
                    {
                        status.members.push(MemberStatus {
                            pod: d.name.clone(),
                            bucket: u16::MAX,
                            state: MemberState::Draining,
                        });
                    }
                }
                status.placement = Some(next.placement.clone());
                status.shard_map = Some(next.shard_map.clone());
                status.planned_at = Some(o.now.clone());
                publish = Some(message(&next, o));
            }
            Err(e) => degraded = Some(("InvalidPlan", e.to_string())),
        }
    }
    // The bucket holds a later epoch than the status, or another ShardPlan's plan at ours (a
    // ShardPlan deleted and created again on the same prefix, or any other writer): the nodes
    // follow it, not us. Publish the current plan again above it.
    let foreign = o.held.as_ref().is_some_and(|h| {
        h.epoch > status.epoch
            || (h.epoch == status.epoch
                && h.owner.is_some()
                && h.owner.as_deref() != Some(o.me.as_str()))
    });
    if publish.is_none()
        && problem.is_none()
        && foreign
        && let Some(mut current) = status.plan()
    {
        notes.push(epoch_advanced(held_epoch, o.held.as_ref()));
        current.epoch = held_epoch + 1;
        status.epoch = current.epoch;
        status.planned_at = Some(o.now.clone());
        for m in &mut status.moves {
            m.phase = MovePhase::Pending;
        }
        publish = Some(message(&current, o));
    }
    if degraded.is_none() && !exhausted.is_empty() {
        degraded = Some((
            "MoveFailed",
            format!(
                "{} shard moves failed more than spec.migration.maxRetries={} times (shards {:?}); see status.moves[].lastError",
                exhausted.len(),
                o.spec.migration.max_retries,
                exhausted.iter().take(8).collect::<Vec<_>>()
            ),
        ));
    }

    status.member_count = status
        .members
        .iter()
        .filter(|m| m.state == MemberState::Active)
        .count() as u32;
    status.moving = status.moves.len() as u32;
    let g = o.generation;
    let now = &o.now;
    match &degraded {
        Some((reason, message)) => {
            if o.status
                .and_then(|s| condition(s, "Degraded"))
                .is_none_or(|c| c.reason != *reason)
            {
                notes.push(Note {
                    warning: true,
                    reason,
                    message: message.clone(),
                });
            }
            set(
                &mut status.conditions,
                "Degraded",
                true,
                reason,
                message,
                g,
                now,
            );
        }
        None => set(
            &mut status.conditions,
            "Degraded",
            false,
            "AsExpected",
            "",
            g,
            now,
        ),
    }
    let moving = status.moving;
    if o.spec.paused && membership_changed {
        set(
            &mut status.conditions,
            "Rebalancing",
            false,
            "Paused",
            "spec.paused is true: membership changes wait",
            g,
            now,
        );
    } else if moving > 0 {
        let msg = format!("epoch {}: {moving} shard moves in flight", status.epoch);
        set(
            &mut status.conditions,
            "Rebalancing",
            true,
            "MovingShards",
            &msg,
            g,
            now,
        );
    } else {
        set(
            &mut status.conditions,
            "Rebalancing",
            false,
            "Balanced",
            "",
            g,
            now,
        );
    }
    let waiting = membership_changed && publish.is_none();
    let ready = degraded.is_none() && moving == 0 && status.member_count > 0 && !waiting;
    let (reason, msg) = if ready {
        (
            "Balanced",
            format!(
                "epoch {}: {} members own every shard",
                status.epoch, status.member_count
            ),
        )
    } else if status.member_count == 0 && degraded.is_none() {
        (
            "NoMembers",
            "no Ready pod of the StatefulSet yet".to_owned(),
        )
    } else if let Some((r, m)) = &degraded {
        (*r, m.clone())
    } else {
        ("Rebalancing", format!("{moving} shard moves in flight"))
    };
    set(&mut status.conditions, "Ready", ready, reason, &msg, g, now);

    // Progress reports arrive over NATS between reconciles: look again soon while moves are in flight.
    let failed_retry = status
        .moves
        .iter()
        .filter(|m| m.phase == MovePhase::Failed)
        .map(|m| backoff(m.attempts))
        .min();
    let requeue = match (failed_retry, moving > 0, degraded.is_some()) {
        (Some(wait), _, _) => wait.min(Duration::from_secs(10)),
        (None, true, _) => Duration::from_secs(1),
        (None, false, true) => Duration::from_secs(10),
        (None, false, false) => Duration::from_secs(300),
    };
    Decision {
        status,
        publish,
        notes,
        requeue,
    }
}

/// The plan message of `plan`, signed by this ShardPlan.
fn message(plan: &aether_core::plan::Plan, o: &Observed<'_>) -> PlanMessage {
    let mut msg = PlanMessage::new(
        plan,
        o.spec.migration.max_concurrent,
        o.spec.migration.timeout_seconds,
    );
    msg.owner = Some(o.me.clone());
    msg
}

fn epoch_advanced(held: u64, h: Option<&Held>) -> Note {
    Note {
        warning: true,
        reason: "EpochAdvanced",
        message: format!(
            "the plan bucket holds epoch {held} (written by {}); publishing epoch {} above it",
            h.and_then(|h| h.owner.as_deref())
                .unwrap_or("a writer that did not sign it"),
            held + 1
        ),
    }
}

/// Distinct error texts kept in `status.moves`; the status stores moves alike in one entry, so
/// this bounds its size however many moves fail.
pub const DISTINCT_ERRORS: usize = 16;

/// Keeps the first [`DISTINCT_ERRORS`] distinct error texts (by shard) and says where the others are.
fn bound_errors(moves: &mut [MoveStatus]) {
    let mut kept: BTreeSet<String> = BTreeSet::new();
    for m in moves.iter_mut() {
        let Some(e) = &m.last_error else { continue };
        if kept.contains(e) {
            continue;
        }
        if kept.len() < DISTINCT_ERRORS {
            kept.insert(e.clone());
        } else {
            m.last_error = Some(format!(
                "one of more than {DISTINCT_ERRORS} different failures: see the source node's log"
            ));
        }
    }
}

/// Fails the moves of the current plan that got no outcome by their deadline: the plan's time
/// plus their share of the timeout (a source runs `maxConcurrent` moves at once, in shard order)
/// plus [`DEADLINE_GRACE_SECONDS`]. Returns how many.
fn expire_moves(status: &mut ShardPlanStatus, spec: &ShardPlanSpec, now: &Time) -> usize {
    let Some(since) = status.planned_at.clone() else {
        return 0;
    };
    let slots = u64::from(spec.migration.max_concurrent.max(1));
    let timeout = u64::from(spec.migration.timeout_seconds.max(1));
    let mut rank: BTreeMap<Option<String>, u64> = BTreeMap::new();
    let mut order: Vec<usize> = (0..status.moves.len()).collect();
    order.sort_by_key(|&i| status.moves[i].shard);
    let mut expired = 0;
    for i in order {
        let m = &mut status.moves[i];
        let r = rank.entry(m.from.clone()).or_default();
        let share = timeout * (1 + *r / slots) + DEADLINE_GRACE_SECONDS;
        *r += 1;
        let due = k8s_openapi::jiff::SignedDuration::from_secs(share as i64);
        let late = since.0.checked_add(due).is_ok_and(|d| d <= now.0);
        if late && matches!(m.phase, MovePhase::Pending | MovePhase::Transferring) {
            m.phase = MovePhase::Failed;
            m.attempts += 1;
            m.last_error = Some(format!(
                "no outcome within {share}s of the plan: its source may be stuck or gone"
            ));
            m.retry_after = None;
            expired += 1;
        }
    }
    expired
}

/// Folds progress reports of the current epoch into the moves.
fn apply_progress(status: &mut ShardPlanStatus, reports: &[Progress], now: &Time) {
    for p in reports.iter().filter(|p| p.epoch == status.epoch) {
        let Some(i) = status.moves.iter().position(|m| m.shard == p.shard) else {
            continue;
        };
        match p.phase {
            MovePhase::Done => {
                status.moves.remove(i);
            }
            // Reports are read again after a restart: a failure counts once (its text is kept).
            MovePhase::Failed if status.moves[i].phase == MovePhase::Failed => {
                status.moves[i].last_error = p.error.clone();
            }
            MovePhase::Failed => {
                let m = &mut status.moves[i];
                m.phase = MovePhase::Failed;
                m.attempts += 1;
                m.last_error = p.error.clone();
                let wait = k8s_openapi::jiff::SignedDuration::try_from(backoff(m.attempts))
                    .unwrap_or(k8s_openapi::jiff::SignedDuration::from_secs(60));
                m.retry_after = now.0.checked_add(wait).ok().map(Time);
            }
            MovePhase::Transferring | MovePhase::HandedOff
                if status.moves[i].phase == MovePhase::Pending =>
            {
                status.moves[i].phase = MovePhase::Transferring;
            }
            // A move superseded ends with the plan that superseded it.
            _ => {}
        }
    }
}

fn condition<'a>(status: &'a ShardPlanStatus, type_: &str) -> Option<&'a Condition> {
    status.condition(type_).filter(|c| c.status == "True")
}

/// Sets a condition, keeping its transition time when its status did not change.
fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    on: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: &Time,
) {
    let status = if on { "True" } else { "False" }.to_owned();
    let since = conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    conditions.retain(|c| c.type_ != type_);
    conditions.push(Condition {
        type_: type_.to_owned(),
        status,
        reason: reason.to_owned(),
        message: message.to_owned(),
        observed_generation: generation,
        last_transition_time: since,
    });
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
}

#[cfg(test)]
mod tests {
    use super::*;
    use aether_core::protocol::VERSION;

    fn spec() -> ShardPlanSpec {
        serde_json::from_value(
            serde_json::json!({"statefulSet": "app", "shards": 64, "capacity": 8}),
        )
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
}
