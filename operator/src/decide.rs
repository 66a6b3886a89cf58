//! The reconcile decisions, pure: from what was observed (spec, status, StatefulSet, pods, progress
//! reports, NATS health) to the next status and, when the membership changed or a failed move is due a
//! retry, the next plan to publish. `controller.rs` gathers the observations and applies the decision:
//! status first (server-side apply), then the plan to NATS, then Events.

use aether_core::crd::{
    MemberState, MemberStatus, MovePhase, MoveStatus, ShardPlanSpec, ShardPlanStatus,
};
use aether_core::plan::{MemberInput, Move, PlanSpec, plan, retry};
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
    // The shared rule (`aether_core::plan::retry`, which the chaos suite's planner and the model
    // check's operator follow too) on the phases as the status folds them (a `HandedOff` report
    // shows as `Transferring`; a done move is gone), then the operator's own bounds on a failed
    // move: its attempts and its backoff.
    let retry_due = retry::retry_due(status.moves.iter().map(|m| Some(m.phase)))
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
        let moves: Vec<Move> = status.moves.iter().map(Move::from).collect();
        let phase = |s: u32| status.moves.iter().find(|m| m.shard == s).map(|m| m.phase);
        let pending = retry::unfinished(&moves, phase);
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
                publish = Some(message(&next, o, &status.moves));
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
        publish = Some(message(&current, o, &status.moves));
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
fn message(plan: &aether_core::plan::Plan, o: &Observed<'_>, moves: &[MoveStatus]) -> PlanMessage {
    let mut msg = PlanMessage::new(
        plan,
        o.spec.migration.max_concurrent,
        o.spec.migration.timeout_seconds,
    );
    msg.owner = Some(o.me.clone());
    msg.attempts = moves
        .iter()
        .filter(|m| m.attempts > 0 && plan.moves.iter().any(|p| p.shard == m.shard))
        .map(|m| (m.shard, m.attempts))
        .collect();
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
mod tests;
