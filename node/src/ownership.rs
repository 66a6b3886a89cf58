//! Who serves which shard, as this node knows it: one pure type, no NATS, no tokio. The shell
//! (`node.rs`, `requests.rs`, `moves.rs`) holds it under one lock, feeds it every event that changes
//! an owner (a plan, a progress report, a hand-off, a chunk or commit received) and carries out the
//! effects it returns (stop these workers, start these moves, report these Done). Requests are routed
//! by reading it, without copying or allocating.
//!
//! The owner of a shard is the plan's target, except while the shard's move is pending: then the
//! move's source. A move stops being pending when the source hands the shard off (on the source),
//! when the commit arrives (on the destination), or when a `Done` report arrives (everyone else;
//! also when it arrives before the plan it belongs to). `Done` means the destination accepted the
//! commit: the destination reports it then, the source once the commit is confirmed. Reports are
//! durable (a JetStream stream the shell reads from the start), so a node that restarts learns
//! which moves of its plan committed before it acts on the plan.

use crate::migration::{self, Accept, Incoming};
use aether_core::plan::Move;
use aether_core::protocol::{ErrorReply, PlanMessage, Progress, Transfer};
use aether_core::route::RouteTable;
use aether_core::types::MovePhase;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// Hops a request may take between nodes: one forward from the node it reached, and one more from a
/// source that just handed its shard off.
pub const MAX_HOPS: u8 = 2;

/// Done reports kept for plans not seen yet (a plan has at most 65,536 moves); the lowest epochs
/// go first.
const EARLY_DONE_LIMIT: usize = 1 << 16;

/// Where a request goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route<'a> {
    /// This node serves the shard.
    Local {
        /// The actor's shard.
        shard: u32,
    },
    /// Another node serves it: send the request on (hops + 1).
    Forward {
        /// The actor's shard.
        shard: u32,
        /// The owner.
        to: &'a str,
    },
    /// Another node serves it and the request has hopped enough: tell the caller.
    Redirect {
        /// The actor's shard.
        shard: u32,
        /// The owner.
        to: &'a str,
        /// The plan epoch that says so.
        epoch: u64,
    },
    /// Nobody can serve it right now.
    Unavailable(Unavailable),
}

/// Why a request cannot be routed now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unavailable {
    /// No plan has reached this node yet.
    NoPlan,
    /// The plan has no members.
    NoMembers,
    /// The shard is changing owner here (a worker stopped with the request in hand).
    ChangingOwner(u32),
    /// This node takes the shard with this plan without a hand-off, and waits until every node
    /// that may still serve it under an older plan holds this one.
    Settling {
        /// The shard.
        shard: u32,
        /// The plan epoch awaited.
        epoch: u64,
    },
}

impl Unavailable {
    /// The reply a caller gets.
    #[must_use]
    pub fn reply(self) -> ErrorReply {
        match self {
            Self::NoPlan => ErrorReply::unavailable("this node has no plan yet", 100),
            Self::NoMembers => ErrorReply::unavailable("the plan has no members", 500),
            Self::ChangingOwner(shard) => {
                ErrorReply::unavailable(format!("shard {shard} is changing owner"), 20)
            }
            Self::Settling { shard, epoch } => ErrorReply::unavailable(
                format!("shard {shard} waits until every member holds plan epoch {epoch}"),
                20,
            ),
        }
    }
}

impl Route<'_> {
    /// The error reply of a route that is not served here or forwarded.
    #[must_use]
    pub fn error(self) -> Option<ErrorReply> {
        match self {
            Self::Redirect { shard, to, epoch } => Some(ErrorReply::redirect(to, epoch, shard)),
            Self::Unavailable(why) => Some(why.reply()),
            Self::Local { .. } | Self::Forward { .. } => None,
        }
    }
}

/// What the shell must do after a new plan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlanEffects {
    /// The new epoch.
    pub epoch: u64,
    /// Stop these shards' workers: not ours, or holding actors staged by a move that was never
    /// committed (they may be older than the log, so they go and are reloaded).
    pub stop: Vec<u32>,
    /// Start these moves (this node is their source and no move of the shard runs yet).
    pub start: Vec<Move>,
    /// Moves this node had handed off already, listed again (the operator had not seen them
    /// Done): send the commit again in this epoch, no second transfer.
    pub recommit: Vec<Move>,
    /// Moves to this node that are done already: without a source (its actors come from the log),
    /// or committed here in an earlier epoch and listed again. Report them Done.
    pub report_done: Vec<Move>,
}

/// The current plan and the moves of it still pending.
#[derive(Clone, Debug)]
struct View {
    plan: PlanMessage,
    table: RouteTable,
    /// Shards whose move is pending, with their actual (source) owner.
    pending: HashMap<u32, String>,
}

impl View {
    fn new(plan: PlanMessage) -> Self {
        let table = RouteTable::new(plan.shards, &plan.members, &plan.shard_map);
        let pending = plan
            .moves
            .iter()
            .filter_map(|m| Some((m.shard, m.from.clone()?)))
            .collect();
        Self {
            plan,
            table,
            pending,
        }
    }

    fn owner(&self, shard: u32) -> Option<&str> {
        if let Some(from) = self.pending.get(&shard) {
            return Some(from);
        }
        self.target(shard)
    }

    fn target(&self, shard: u32) -> Option<&str> {
        let i = self.table.owner_of_shard(shard)?;
        self.plan.members.get(i as usize).map(|m| m.name.as_str())
    }

    fn move_of(&self, shard: u32) -> Option<&Move> {
        self.plan.moves.iter().find(|m| m.shard == shard)
    }

    fn moves_from<'a>(&'a self, pod: &'a str) -> impl Iterator<Item = &'a Move> + 'a {
        self.plan
            .moves
            .iter()
            .filter(move |m| m.from.as_deref() == Some(pod) && self.pending.contains_key(&m.shard))
    }
}

/// Who serves which shard, as this node knows it.
#[derive(Clone, Debug)]
pub struct Ownership {
    me: String,
    view: Option<View>,
    /// Shards this node handed off, and to whom: a later plan that lists the same move again (its
    /// operator had not seen the Done report yet) is answered Done at once.
    handed_off: HashMap<u32, String>,
    /// Destination side: moves committed here, and from whom: a later plan that lists the same
    /// move again is done at once.
    received: HashMap<u32, String>,
    /// Done reports of a plan this node does not hold yet (progress and plans travel separately).
    early_done: std::collections::BTreeSet<(u64, u32)>,
    /// The latest move of each shard known to have been handed off or committed (by a report of
    /// any node, or by this node's own hand-off or commit): read again after a restart, it tells a
    /// source which shards it gave up before this process started, so a plan that lists such a
    /// move again gets its commit again, never a second owner.
    last_moves: HashMap<u32, LastMove>,
    /// Destination side: the incoming move of each shard, staged until its commit.
    incoming: HashMap<u32, Incoming>,
    /// Source side: shards with a move running here (or deferred until the plan settles).
    moving: HashSet<u32>,
    /// The plan epoch each pod last said it holds (`held.{pod}` in the plan bucket).
    held: HashMap<String, u64>,
    /// Shards this node owns under the current plan but did not serve under the plan before it
    /// (taken without a hand-off: a plan replaced mid-move, a member back, a skipped epoch). Another
    /// node may still serve them under an older plan, so they are served, and moved, only once the
    /// plan settles.
    unconfirmed: HashSet<u32>,
    /// Pods that must hold the current epoch before the plan settles: every member, and for a while
    /// ([`Ownership::stop_waiting_for_non_members`]) the members of the plan before that left.
    awaiting: std::collections::BTreeSet<String>,
    /// Moves of unconfirmed shards, started once the plan settles.
    deferred: Vec<Move>,
}

/// A move handed off or committed, as its reports name it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct LastMove {
    epoch: u64,
    from: Option<String>,
    to: String,
}

/// Moves to start because the plan settled, with that plan's epoch and per-move deadline.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settled {
    /// The epoch.
    pub epoch: u64,
    /// Moves deferred until now.
    pub start: Vec<Move>,
    /// The plan's per-move deadline.
    pub timeout: Duration,
}

impl Ownership {
    /// Nothing known yet, for pod `me`.
    #[must_use]
    pub fn new(me: impl Into<String>) -> Self {
        Self {
            me: me.into(),
            view: None,
            handed_off: HashMap::new(),
            received: HashMap::new(),
            early_done: std::collections::BTreeSet::new(),
            last_moves: HashMap::new(),
            incoming: HashMap::new(),
            moving: HashSet::new(),
            held: HashMap::new(),
            unconfirmed: HashSet::new(),
            awaiting: std::collections::BTreeSet::new(),
            deferred: Vec::new(),
        }
    }

    /// The epoch held, 0 before the first plan.
    #[must_use]
    pub fn epoch(&self) -> u64 {
        self.view.as_ref().map_or(0, |v| v.plan.epoch)
    }

    /// The plan held.
    #[must_use]
    pub fn plan(&self) -> Option<&PlanMessage> {
        self.view.as_ref().map(|v| &v.plan)
    }

    /// Moves of the current plan not done yet.
    #[must_use]
    pub fn pending_moves(&self) -> usize {
        self.view.as_ref().map_or(0, |v| v.pending.len())
    }

    /// True while the current plan lists this pod as a member.
    #[must_use]
    pub fn is_member(&self) -> bool {
        self.view
            .as_ref()
            .is_some_and(|v| v.plan.members.iter().any(|m| m.name == self.me))
    }

    /// The shard of an actor id, once a plan is held.
    #[must_use]
    pub fn shard(&self, actor_id: &str) -> Option<u32> {
        self.view.as_ref().map(|v| v.table.shard(actor_id))
    }

    /// The node that serves `shard` now, as far as this node knows.
    #[must_use]
    pub fn owner(&self, shard: u32) -> Option<&str> {
        self.view.as_ref()?.owner(shard)
    }

    /// True when this node serves `shard`: it owns it and, if it took it with this plan without a
    /// hand-off, the plan has settled.
    #[must_use]
    pub fn serves(&self, shard: u32) -> bool {
        self.owner(shard) == Some(self.me.as_str()) && !self.waits(shard)
    }

    /// True while this node owns `shard` but waits for the plan to settle before serving it.
    fn waits(&self, shard: u32) -> bool {
        !self.awaiting.is_empty() && self.unconfirmed.contains(&shard)
    }

    /// True once every pod that may serve a shard under an older plan holds the current one.
    #[must_use]
    pub fn settled(&self) -> bool {
        self.awaiting.is_empty()
    }

    /// The pods the plan waits for.
    #[must_use]
    pub fn awaiting(&self) -> Vec<&str> {
        self.awaiting.iter().map(String::as_str).collect()
    }

    /// Where a request for `actor_id` that has hopped `hops` times goes. No allocation.
    #[must_use]
    pub fn route(&self, actor_id: &str, hops: u8) -> Route<'_> {
        let Some(view) = &self.view else {
            return Route::Unavailable(Unavailable::NoPlan);
        };
        let shard = view.table.shard(actor_id);
        self.route_shard(view, shard, hops)
    }

    /// Where a request goes that a worker of `shard` held when it stopped: never forwarded (the
    /// caller asks the owner itself), and "changing owner" when that is still this node.
    #[must_use]
    pub fn route_again(&self, shard: u32) -> Route<'_> {
        let Some(view) = &self.view else {
            return Route::Unavailable(Unavailable::NoPlan);
        };
        match self.route_shard(view, shard, MAX_HOPS) {
            Route::Local { shard } => Route::Unavailable(Unavailable::ChangingOwner(shard)),
            other => other,
        }
    }

    fn route_shard<'a>(&'a self, view: &'a View, shard: u32, hops: u8) -> Route<'a> {
        match view.owner(shard) {
            Some(owner) if owner == self.me && self.waits(shard) => {
                Route::Unavailable(Unavailable::Settling {
                    shard,
                    epoch: view.plan.epoch,
                })
            }
            Some(owner) if owner == self.me => Route::Local { shard },
            Some(to) if hops < MAX_HOPS => Route::Forward { shard, to },
            Some(to) => Route::Redirect {
                shard,
                to,
                epoch: view.plan.epoch,
            },
            None => Route::Unavailable(Unavailable::NoMembers),
        }
    }

    /// Takes a plan: `None` when its epoch is not above the one held (ignored); otherwise what to
    /// do. `hosted` are the shards with a worker here.
    pub fn on_plan(
        &mut self,
        plan: PlanMessage,
        hosted: impl IntoIterator<Item = u32>,
    ) -> Option<PlanEffects> {
        if plan.epoch <= self.epoch() {
            return None;
        }
        let mut view = View::new(plan);
        let epoch = view.plan.epoch;
        // Moves this node handed off already, in this plan's epoch or an earlier one (before a
        // restart, or before a plan that listed another move of the shard), listed again: the
        // shard's latest hand-off or commit is this very move.
        for m in view.moves_from(&self.me) {
            let same = self.last_moves.get(&m.shard).is_some_and(|l| {
                l.epoch <= epoch && l.from.as_deref() == Some(self.me.as_str()) && l.to == m.to
            });
            if same && !self.early_done.contains(&(epoch, m.shard)) {
                self.handed_off.insert(m.shard, m.to.clone());
            }
        }
        // A handed-off move listed again: the shard is the destination's as far as this node is
        // concerned (it never serves it again); the commit is sent again in this epoch.
        let listed: HashMap<u32, &str> = view
            .moves_from(&self.me)
            .map(|m| (m.shard, m.to.as_str()))
            .collect();
        self.handed_off
            .retain(|shard, to| listed.get(shard) == Some(&to.as_str()));
        let mut recommit: Vec<Move> = view
            .plan
            .moves
            .iter()
            .filter(|m| self.handed_off.contains_key(&m.shard))
            .cloned()
            .collect();
        recommit.sort_by_key(|m| m.shard);
        for m in &recommit {
            view.pending.remove(&m.shard);
        }
        // Moves to this node that need nothing more: no source, or committed here already.
        let me = self.me.as_str();
        let received = &mut self.received;
        received.retain(|shard, from| {
            view.plan
                .moves
                .iter()
                .any(|m| m.shard == *shard && m.to == me && m.from.as_deref() == Some(from))
        });
        let mut report_done: Vec<Move> = view
            .plan
            .moves
            .iter()
            .filter(|m| m.to == me && (m.from.is_none() || received.contains_key(&m.shard)))
            .cloned()
            .collect();
        report_done.sort_by_key(|m| m.shard);
        // A shard received by a commit and listed again: its worker is reloaded from the log (its
        // source may have served it after the commit this node took, however unlikely).
        let relisted: HashSet<u32> = report_done
            .iter()
            .filter(|m| m.from.is_some())
            .map(|m| m.shard)
            .collect();
        for m in &report_done {
            view.pending.remove(&m.shard);
        }
        // Moves reported done before this plan reached this node.
        let early: Vec<(u64, u32)> = self
            .early_done
            .range((epoch, 0)..=(epoch, u32::MAX))
            .copied()
            .collect();
        for (_, shard) in early {
            view.pending.remove(&shard);
        }
        self.early_done = self.early_done.split_off(&(epoch + 1, 0));
        let previous = self.view.replace(view);
        let view = self.view.as_ref()?;
        let me = Some(self.me.as_str());
        // Shards this node serves now but did not serve under the plan just before this one. A
        // process's first plan confirms nothing: an older holder (which this process cannot know)
        // may not have read it yet.
        let unconfirmed: HashSet<u32> = (0..view.plan.shards)
            .filter(|&s| view.owner(s) == me)
            .filter(|&s| match &previous {
                None => true,
                Some(p) => {
                    p.plan.epoch + 1 != epoch
                        || p.owner(s) != me
                        || (!self.awaiting.is_empty() && self.unconfirmed.contains(&s))
                }
            })
            .collect();
        let awaiting: std::collections::BTreeSet<String> = if unconfirmed.is_empty() {
            std::collections::BTreeSet::new()
        } else {
            // Every member, and every pod that may still hold an older plan: the members of the
            // plan before, or for a first plan every pod whose `held` key this node has read.
            let before: Vec<&String> = match &previous {
                Some(p) => p.plan.members.iter().map(|m| &m.name).collect(),
                None => self.held.keys().collect(),
            };
            view.plan
                .members
                .iter()
                .map(|m| &m.name)
                .chain(before)
                .filter(|n| **n != self.me && self.held.get(*n).is_none_or(|&e| e < epoch))
                .cloned()
                .collect()
        };
        let mut stop: Vec<u32> = hosted
            .into_iter()
            .filter(|&shard| {
                let before = previous.as_ref().and_then(|p| p.owner(shard));
                view.owner(shard) != me
                    || before != me
                    || unconfirmed.contains(&shard)
                    || relisted.contains(&shard)
            })
            .collect();
        stop.sort_unstable();
        self.incoming.retain(|_, inc| inc.epoch >= epoch);
        // Moves deferred under the plan before never started: this plan decides again.
        for m in std::mem::take(&mut self.deferred) {
            self.moving.remove(&m.shard);
        }
        let mut start: Vec<Move> = view
            .moves_from(&self.me)
            .filter(|m| !self.moving.contains(&m.shard))
            .cloned()
            .collect();
        start.sort_by_key(|m| m.shard);
        self.moving.extend(start.iter().map(|m| m.shard));
        if !awaiting.is_empty() {
            let (later, now): (Vec<Move>, Vec<Move>) = start
                .into_iter()
                .partition(|m| unconfirmed.contains(&m.shard));
            self.deferred = later;
            start = now;
        }
        self.unconfirmed = if awaiting.is_empty() {
            HashSet::new()
        } else {
            unconfirmed
        };
        self.awaiting = awaiting;
        Some(PlanEffects {
            epoch,
            stop,
            start,
            recommit,
            report_done,
        })
    }

    /// A progress report from any node. Returns a shard whose staged copy must go: this node is the
    /// destination of a move its source reports failed (the source kept the shard).
    pub fn on_progress(&mut self, p: &Progress) -> Option<u32> {
        let held = self.epoch();
        if matches!(p.phase, MovePhase::HandedOff | MovePhase::Done)
            && let Some(to) = &p.to
        {
            self.moved(p.epoch, p.shard, p.from.as_deref(), to);
        }
        match p.phase {
            MovePhase::Done if p.epoch == held => {
                if let Some(v) = self.view.as_mut() {
                    v.pending.remove(&p.shard);
                }
                None
            }
            MovePhase::Done if p.epoch > held => {
                self.early_done.insert((p.epoch, p.shard));
                while self.early_done.len() > EARLY_DONE_LIMIT {
                    self.early_done.pop_first();
                }
                None
            }
            MovePhase::Failed if p.epoch == held => {
                let to_me = self
                    .view
                    .as_ref()
                    .and_then(|v| v.move_of(p.shard))
                    .is_some_and(|m| m.to == self.me && m.from.as_deref() == Some(&p.node));
                let committed = self.incoming.get(&p.shard).is_some_and(|i| i.committed);
                if to_me && !committed {
                    self.incoming.remove(&p.shard);
                    return Some(p.shard);
                }
                None
            }
            _ => None,
        }
    }

    /// Source side: this node gave `shard` up to `to` in plan `epoch` (every chunk acked).
    pub fn hand_off(&mut self, epoch: u64, shard: u32, to: &str) {
        self.handed_off.insert(shard, to.to_owned());
        let me = self.me.clone();
        self.moved(epoch, shard, Some(&me), to);
        if let Some(v) = self.view.as_mut()
            && v.plan.epoch == epoch
        {
            v.pending.remove(&shard);
        }
    }

    /// Destination side, before a chunk's actors are staged: the checks that need no staging state.
    pub fn check_chunk(&self, chunk: &Transfer) -> Result<(), ErrorReply> {
        migration::check_chunk(self.epoch(), self.source_of(chunk.shard), chunk)?;
        if !chunk.commit && self.done_here(chunk) {
            return Err(self.committed_already(chunk));
        }
        Ok(())
    }

    /// The move of this chunk is done here without a commit in this process: it committed before
    /// a restart (its `Done` report says so), or in an earlier epoch. A chunk of it is late (its
    /// source must give the shard up, not stage it again); a commit is acked again, changing nothing.
    fn done_here(&self, chunk: &Transfer) -> bool {
        let Some(v) = &self.view else { return false };
        v.plan.epoch == chunk.epoch
            && v.move_of(chunk.shard).is_some_and(|m| m.to == self.me)
            && !v.pending.contains_key(&chunk.shard)
            && !self.incoming.get(&chunk.shard).is_some_and(|i| i.committed)
    }

    fn committed_already(&self, chunk: &Transfer) -> ErrorReply {
        let mut e = ErrorReply::redirect(&self.me, chunk.epoch, chunk.shard);
        e.message = format!(
            "the move of shard {} in epoch {} is done: {} serves it",
            chunk.shard, chunk.epoch, self.me
        );
        e
    }

    /// Destination side: decides on a chunk or commit. `Stage { fresh: true }`: stop the shard's
    /// worker first (it may hold an earlier move's actors), then stage; `Commit`: this node serves
    /// the shard from now on.
    pub fn on_chunk(&mut self, chunk: &Transfer) -> Result<Accept, ErrorReply> {
        if self.done_here(chunk) {
            return if chunk.commit {
                Ok(Accept::Duplicate)
            } else {
                Err(self.committed_already(chunk))
            };
        }
        let holding = self.epoch();
        let source = self.source_of(chunk.shard).map(str::to_owned);
        let mut slot = self.incoming.remove(&chunk.shard);
        let decision = migration::accept_chunk(&mut slot, holding, source.as_deref(), chunk)
            .map_err(|mut e| {
                if e.code == aether_core::protocol::ErrorCode::Redirect {
                    e.owner = Some(self.me.clone());
                }
                e
            });
        if let Some(s) = slot {
            self.incoming.insert(chunk.shard, s);
        }
        match &decision {
            Ok(Accept::Stage { fresh: true }) => {
                self.handed_off.remove(&chunk.shard);
                self.received.remove(&chunk.shard);
            }
            Ok(Accept::Commit { .. }) => {
                // Received by a hand-off: its source served it alone up to the capture.
                let me = self.me.clone();
                self.moved(chunk.epoch, chunk.shard, Some(&chunk.from), &me);
                self.unconfirmed.remove(&chunk.shard);
                self.handed_off.remove(&chunk.shard);
                self.received.insert(chunk.shard, chunk.from.clone());
                if let Some(v) = self.view.as_mut() {
                    v.pending.remove(&chunk.shard);
                }
            }
            _ => {}
        }
        decision
    }

    /// Keeps the latest hand-off or commit of `shard` (one per shard: bounded by the shard count).
    fn moved(&mut self, epoch: u64, shard: u32, from: Option<&str>, to: &str) {
        if self.last_moves.get(&shard).is_some_and(|l| l.epoch > epoch) {
            return;
        }
        self.last_moves.insert(
            shard,
            LastMove {
                epoch,
                from: from.map(str::to_owned),
                to: to.to_owned(),
            },
        );
    }

    /// The source this node's plan names for a move of `shard` to this node.
    fn source_of(&self, shard: u32) -> Option<&str> {
        self.view
            .as_ref()?
            .move_of(shard)
            .filter(|m| m.to == self.me)?
            .from
            .as_deref()
    }

    /// True while `epoch` is the plan held.
    #[must_use]
    pub fn is_current(&self, epoch: u64) -> bool {
        self.epoch() == epoch
    }

    /// Source side: the move of `shard` in plan `epoch` ended. Returns the shard's move in a newer
    /// plan, if one listed it meanwhile (its start was held back while this one ran), with that
    /// plan's epoch and timeout; otherwise the shard is no longer moving.
    pub fn move_finished(&mut self, shard: u32, epoch: u64) -> Option<(Move, u64, Duration)> {
        let next = self
            .view
            .as_ref()
            .filter(|v| v.plan.epoch > epoch)
            .and_then(|v| {
                let m = v.moves_from(&self.me).find(|m| m.shard == shard)?;
                Some((m.clone(), v.plan.epoch, timeout(&v.plan)))
            });
        match next {
            None => {
                self.moving.remove(&shard);
                None
            }
            Some((m, ..)) if self.waits(m.shard) => {
                self.deferred.push(m);
                None
            }
            next => next,
        }
    }

    /// `pod` says it holds plan `epoch` (and serves nothing by an older one). Returns the moves to
    /// start when that settles the plan.
    pub fn on_held(&mut self, pod: &str, epoch: u64) -> Option<Settled> {
        self.held.insert(pod.to_owned(), epoch);
        if epoch < self.epoch() || !self.awaiting.remove(pod) {
            return None;
        }
        self.settle()
    }

    /// The members of the plan before that are not members of this one have had time to take it
    /// (a live node reads the plan at least every few seconds): stop waiting for them, so a pod
    /// that is gone for good does not hold its shards' new owners back. Returns the moves to start
    /// when that settles the plan.
    pub fn stop_waiting_for_non_members(&mut self, epoch: u64) -> Option<Settled> {
        let view = self.view.as_ref().filter(|v| v.plan.epoch == epoch)?;
        let members: HashSet<&str> = view.plan.members.iter().map(|m| m.name.as_str()).collect();
        let before = self.awaiting.len();
        self.awaiting.retain(|p| members.contains(p.as_str()));
        if self.awaiting.len() == before {
            return None;
        }
        self.settle()
    }

    fn settle(&mut self) -> Option<Settled> {
        if !self.awaiting.is_empty() {
            return None;
        }
        self.unconfirmed.clear();
        let plan = self.plan()?;
        let (epoch, timeout) = (plan.epoch, timeout(plan));
        let mut start = std::mem::take(&mut self.deferred);
        start.sort_by_key(|m| m.shard);
        Some(Settled {
            epoch,
            start,
            timeout,
        })
    }

    /// The per-move deadline of the plan held.
    #[must_use]
    pub fn timeout(&self) -> Duration {
        self.plan().map_or(Duration::from_secs(30), timeout)
    }

    /// Everything this node knows, in one canonical text (maps sorted): two values with the same key
    /// behave the same. For model checkers that keep each state they explored once.
    #[must_use]
    pub fn state_key(&self) -> String {
        use std::collections::{BTreeMap, BTreeSet};
        let view = self
            .view
            .as_ref()
            .map(|v| (v.plan.epoch, v.pending.iter().collect::<BTreeMap<_, _>>()));
        let mut deferred: Vec<u32> = self.deferred.iter().map(|m| m.shard).collect();
        deferred.sort_unstable();
        format!(
            "{view:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?}",
            self.handed_off.iter().collect::<BTreeMap<_, _>>(),
            self.received.iter().collect::<BTreeMap<_, _>>(),
            (
                &self.early_done,
                self.last_moves
                    .iter()
                    .map(|(s, l)| (s, l.epoch, &l.from, &l.to))
                    .collect::<BTreeSet<_>>()
            ),
            self.incoming.iter().collect::<BTreeMap<_, _>>(),
            self.moving.iter().collect::<BTreeSet<_>>(),
            self.held.iter().collect::<BTreeMap<_, _>>(),
            (
                self.unconfirmed.iter().collect::<BTreeSet<_>>(),
                &self.awaiting,
                deferred
            ),
        )
    }

    /// True once this node may exit while draining: not a member, nothing leaving from it.
    #[must_use]
    pub fn drained(&self) -> bool {
        let Some(v) = &self.view else { return true };
        !self.is_member() && v.moves_from(&self.me).next().is_none() && self.moving.is_empty()
    }
}

fn timeout(plan: &PlanMessage) -> Duration {
    Duration::from_secs(u64::from(plan.timeout_seconds.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aether_core::plan::{MemberInput, Plan, PlanSpec, plan};
    use aether_core::protocol::VERSION;
    use aether_core::types::Strategy;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn spec() -> PlanSpec {
        PlanSpec {
            shards: 64,
            capacity: 8,
            strategy: Strategy::AnchorHash,
        }
    }

    fn members(n: usize) -> Vec<MemberInput> {
        (0..n)
            .map(|i| MemberInput::active(format!("app-{i}")))
            .collect()
    }

    fn plans(sizes: &[usize]) -> Vec<Plan> {
        let mut out: Vec<Plan> = Vec::new();
        for &n in sizes {
            let p = plan(out.last(), &BTreeSet::new(), &members(n), &spec()).expect("plan");
            out.push(p);
        }
        out
    }

    fn msg(p: &Plan) -> PlanMessage {
        PlanMessage::new(p, 4, 30)
    }

    fn done(epoch: u64, shard: u32, node: &str) -> Progress {
        Progress {
            v: VERSION,
            epoch,
            shard,
            node: node.into(),
            phase: MovePhase::Done,
            actors: 0,
            duration_ms: 0,
            error: None,
            from: None,
            to: None,
        }
    }

    /// A report on move `m` by `node`, naming the move's ends as nodes do.
    fn report(epoch: u64, m: &Move, node: &str, phase: MovePhase) -> Progress {
        Progress {
            phase,
            from: m.from.clone(),
            to: Some(m.to.clone()),
            ..done(epoch, m.shard, node)
        }
    }

    /// A process's first plan, then every member saying it holds it (as when a cluster starts):
    /// its effects, with the moves that waited for that.
    fn first_plan(
        o: &mut Ownership,
        p: PlanMessage,
        hosted: impl IntoIterator<Item = u32>,
    ) -> PlanEffects {
        let epoch = p.epoch;
        let names: Vec<String> = p.members.iter().map(|m| m.name.clone()).collect();
        let mut fx = o.on_plan(p, hosted).expect("a newer plan");
        for n in names {
            if let Some(s) = o.on_held(&n, epoch) {
                fx.start.extend(s.start);
            }
        }
        fx
    }

    #[test]
    fn a_first_plan_serves_nothing_until_every_member_holds_it() {
        let ps = plans(&[2]);
        let mut o = Ownership::new("app-0");
        o.on_held("app-2", 0);
        o.on_plan(msg(&ps[0]), []).expect("first plan");
        let mine = (0..64)
            .find(|&s| o.owner(s) == Some("app-0"))
            .expect("a shard");
        assert!(!o.serves(mine), "an older holder may not have read it");
        assert_eq!(
            o.awaiting(),
            vec!["app-1", "app-2"],
            "members and known pods"
        );
        assert!(o.on_held("app-1", ps[0].epoch).is_none());
        assert!(o.stop_waiting_for_non_members(ps[0].epoch).is_some());
        assert!(o.serves(mine));
    }

    #[test]
    fn pending_moves_stay_with_their_source_until_done() {
        let ps = plans(&[2, 3]);
        let mut o = Ownership::new("app-0");
        o.on_plan(msg(&ps[0]), []).expect("first plan");
        o.on_plan(msg(&ps[1]), []).expect("second plan");
        let m = ps[1].moves.first().expect("a move to app-2").clone();
        let from = m.from.clone().expect("a source");
        assert_eq!(o.owner(m.shard), Some(from.as_str()));
        assert_eq!(o.on_progress(&done(ps[1].epoch, m.shard, &from)), None);
        assert_eq!(o.owner(m.shard), Some("app-2"));
        assert!(o.on_plan(msg(&ps[1]), []).is_none(), "same epoch ignored");
    }

    /// Found by the model check: a source restarted after it sent its commit must never serve the
    /// shard again in that epoch; its stored `HandedOff` report makes it send the commit again.
    #[test]
    fn a_source_that_reads_its_own_hand_off_after_a_restart_only_commits_again() {
        let ps = plans(&[2, 3]);
        let m = ps[1].moves.first().expect("a move").clone();
        let from = m.from.clone().expect("source");
        let mut o = Ownership::new(from.clone());
        let handed = report(ps[1].epoch, &m, &from, MovePhase::HandedOff);
        assert_eq!(o.on_progress(&handed), None);
        let fx = first_plan(&mut o, msg(&ps[1]), []);
        assert!(fx.recommit.iter().any(|r| r.shard == m.shard), "{fx:?}");
        assert!(
            !fx.start.iter().any(|s| s.shard == m.shard),
            "no second transfer"
        );
        assert!(!o.serves(m.shard), "never served again");
        // The destination's Done replaced the hand-off in the stream (the latest report of a move
        // is kept): it names the same move, and a later plan that lists it again (the operator had
        // not read the Done) gets its commit again too.
        for epoch in [ps[1].epoch, ps[1].epoch + 1] {
            let mut o = Ownership::new(from.clone());
            o.on_progress(&report(ps[1].epoch, &m, "app-2", MovePhase::Done));
            let mut again = msg(&ps[1]);
            again.epoch = epoch;
            let fx = first_plan(&mut o, again, []);
            if epoch == ps[1].epoch {
                assert!(!fx.recommit.iter().any(|r| r.shard == m.shard), "done");
            } else {
                assert!(fx.recommit.iter().any(|r| r.shard == m.shard), "{fx:?}");
            }
            assert!(!fx.start.iter().any(|s| s.shard == m.shard));
            assert!(!o.serves(m.shard), "never served again");
        }
        // Another move of the shard reported later (it came back to this node) is not a hand-off.
        let mut o = Ownership::new(from.clone());
        o.on_progress(&handed);
        let back = Move {
            shard: m.shard,
            from: Some("app-2".into()),
            to: from.clone(),
        };
        o.on_progress(&report(ps[1].epoch + 1, &back, "app-2", MovePhase::Done));
        let mut again = msg(&ps[1]);
        again.epoch += 2;
        let fx = first_plan(&mut o, again, []);
        assert!(fx.recommit.is_empty(), "{fx:?}");
        assert!(fx.start.iter().any(|s| s.shard == m.shard));
    }

    /// Found by the model check: a destination restarted after a commit learns from the Done report
    /// that the move is done; a late chunk of it is refused with `redirect` (never staged again), a
    /// late commit acked without change.
    #[test]
    fn a_move_done_here_refuses_late_chunks() {
        let ps = plans(&[2, 3]);
        let m = ps[1].moves.first().expect("a move").clone();
        let from = m.from.clone().expect("source");
        let mut dst = Ownership::new("app-2");
        dst.on_progress(&done(ps[1].epoch, m.shard, "app-2"));
        first_plan(&mut dst, msg(&ps[1]), []);
        assert!(dst.serves(m.shard));
        let chunk = |commit: bool| Transfer {
            v: VERSION,
            epoch: ps[1].epoch,
            attempt: 1,
            shard: m.shard,
            from: from.clone(),
            chunk: u32::from(commit),
            last: true,
            actors: vec![],
            commit,
            copy: false,
        };
        let refused = dst.check_chunk(&chunk(false)).expect_err("late chunk");
        assert_eq!(refused.code, aether_core::protocol::ErrorCode::Redirect);
        assert_eq!(refused.owner.as_deref(), Some("app-2"));
        assert!(dst.on_chunk(&chunk(false)).is_err());
        assert_eq!(dst.on_chunk(&chunk(true)), Ok(Accept::Duplicate));
        assert!(dst.serves(m.shard));
    }

    #[test]
    fn routes_without_a_plan_locally_forwarded_and_redirected() {
        let ps = plans(&[2]);
        let mut o = Ownership::new("app-0");
        assert_eq!(o.route("x", 0), Route::Unavailable(Unavailable::NoPlan));
        first_plan(&mut o, msg(&ps[0]), []);
        let (mut local, mut remote) = (None, None);
        for i in 0..100 {
            let id = format!("a{i}");
            match o.route(&id, 0) {
                Route::Local { .. } => local = Some(id),
                Route::Forward { to, .. } => {
                    assert_eq!(to, "app-1");
                    remote = Some(id);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        let (local, remote) = (local.expect("a local id"), remote.expect("a remote id"));
        assert!(matches!(
            o.route(&remote, 2),
            Route::Redirect { to: "app-1", .. }
        ));
        let shard = o.shard(&local).expect("shard");
        assert_eq!(
            o.route_again(shard),
            Route::Unavailable(Unavailable::ChangingOwner(shard))
        );
    }

    /// A source that took plans 1 and 2 (2 -> 3 members) and handed the first move's shard off to
    /// app-2: the plans, that move, and the source.
    fn handed_off_source(hosted: &[u32]) -> (Vec<Plan>, Move, Ownership) {
        let ps = plans(&[2, 3]);
        let m = ps[1].moves.first().expect("a move to app-2").clone();
        let from = m.from.clone().expect("a source");
        let mut o = Ownership::new(from);
        first_plan(&mut o, msg(&ps[0]), []);
        o.on_plan(msg(&ps[1]), hosted.iter().copied())
            .expect("second plan");
        o.hand_off(ps[1].epoch, m.shard, "app-2");
        (ps, m, o)
    }

    /// Found by the chaos suite (seed 1202): a plan that replaces one whose move was in flight gave
    /// the shard back to its source (a member flap) after the source had handed it off; the source
    /// served it from the log while the destination, still on the older plan, served it too, and
    /// reads of one missed the other's appends. Such a shard now waits until every member and the
    /// members that left hold the plan, and so does its move.
    #[test]
    fn a_shard_taken_back_without_a_hand_off_waits_until_every_member_holds_the_plan() {
        let first = plans(&[2, 3])[1].moves[0].shard;
        let (ps, m, mut o) = handed_off_source(&[first]);
        let from = m.from.clone().expect("a source");
        assert!(!o.serves(m.shard));
        // The operator had no Done report yet: the move is kept from its source, whose target
        // is the source again (app-2 flapped away): no move, the source owns the shard.
        let pending: BTreeSet<u32> = [m.shard].into();
        let back = plan(Some(&ps[1]), &pending, &members(2), &spec()).expect("plan");
        assert!(back.moves.iter().all(|mv| mv.shard != m.shard));
        let fx = o.on_plan(msg(&back), []).expect("third plan");
        assert!(fx.start.is_empty());
        assert_eq!(o.owner(m.shard), Some(from.as_str()));
        assert!(!o.serves(m.shard), "not before every member holds the plan");
        let kept = (0..64)
            .find(|&s| {
                ps[1].owner(s) == Some(from.as_str()) && back.owner(s) == Some(from.as_str())
            })
            .expect("a shard the source keeps");
        assert!(
            o.serves(kept),
            "a shard served by the plan before never waits"
        );
        assert_eq!(
            o.route_again(m.shard).error().map(|e| e.code),
            Some(aether_core::protocol::ErrorCode::Unavailable)
        );
        let mut waits: Vec<&str> = o.awaiting();
        waits.sort_unstable();
        let other = if from == "app-0" { "app-1" } else { "app-0" };
        let mut expected = vec![other, "app-2"];
        expected.sort_unstable();
        assert_eq!(waits, expected, "the other member and the one that left");
        assert!(
            o.on_held(other, back.epoch - 1).is_none(),
            "an older epoch counts for nothing"
        );
        assert!(o.on_held(other, back.epoch).is_none());
        assert!(!o.serves(m.shard));
        let settled = o.on_held("app-2", back.epoch).expect("settled");
        assert_eq!(settled.epoch, back.epoch);
        assert!(o.serves(m.shard));
    }

    #[test]
    fn the_move_of_a_shard_taken_without_a_hand_off_starts_once_the_plan_settles() {
        let (ps, m, mut o) = handed_off_source(&[]);
        let from = m.from.clone().expect("a source");
        // A plan that moves the shard from its source to the other old member instead (the
        // operator did not know the hand-off): the source does not hold it any more.
        let other = if from == "app-0" { "app-1" } else { "app-0" };
        let mut next = msg(&ps[1]);
        next.epoch += 1;
        let bucket = next
            .members
            .iter()
            .find(|mb| mb.name == other)
            .map(|mb| mb.bucket)
            .expect("member");
        next.shard_map.set(m.shard, bucket);
        next.moves = vec![Move {
            shard: m.shard,
            from: Some(from.clone()),
            to: other.into(),
        }];
        let fx = o.on_plan(next.clone(), []).expect("plan");
        assert!(fx.start.is_empty(), "its move of epoch 2 still runs");
        assert_eq!(
            o.move_finished(m.shard, ps[1].epoch),
            None,
            "deferred: app-2 may still serve it"
        );
        assert!(o.on_held(other, next.epoch).is_none());
        // app-2 left nothing to wait for once it is not a member... here it is one: it must say so.
        assert!(o.stop_waiting_for_non_members(next.epoch).is_none());
        let settled = o.on_held("app-2", next.epoch).expect("settled");
        assert_eq!(settled.start.len(), 1);
        assert_eq!(settled.start[0].shard, m.shard);
        assert!(o.serves(m.shard), "it serves until its hand-off");
    }

    #[test]
    fn a_skipped_epoch_reloads_and_waits_and_consecutive_plans_do_not() {
        let ps = plans(&[2, 3, 4]);
        let mut a = Ownership::new("app-0");
        first_plan(&mut a, msg(&ps[0]), []);
        let mine = (0..64).find(|&s| a.serves(s)).expect("a shard of app-0");
        // Consecutive: nothing waits, its worker keeps its actors.
        let mut b = a.clone();
        let mut same = msg(&ps[0]);
        same.epoch += 1;
        let fx = b.on_plan(same.clone(), [mine]).expect("plan");
        assert!(fx.stop.is_empty());
        assert!(b.settled() && b.serves(mine));
        // An epoch skipped: another node may have served the shard meanwhile.
        let mut jump = same;
        jump.epoch += 1;
        let fx = a.on_plan(jump.clone(), [mine]).expect("plan");
        assert_eq!(fx.stop, vec![mine], "its copy may be older than the log");
        assert!(!a.serves(mine));
        assert!(
            a.on_held("app-1", jump.epoch)
                .expect("settled")
                .start
                .is_empty()
        );
        assert!(a.serves(mine));
    }

    #[test]
    fn a_source_gives_up_at_hand_off_and_a_destination_serves_at_commit() {
        let ps = plans(&[2, 3]);
        let m = ps[1].moves.first().expect("a move").clone();
        let from = m.from.clone().expect("source");
        let (mut src, mut dst) = (Ownership::new(from.clone()), Ownership::new("app-2"));
        for o in [&mut src, &mut dst] {
            first_plan(o, msg(&ps[0]), []);
        }
        let fx = src.on_plan(msg(&ps[1]), []).expect("plan");
        assert!(fx.start.iter().any(|s| s.shard == m.shard));
        dst.on_plan(msg(&ps[1]), []);
        assert!(src.serves(m.shard) && !dst.serves(m.shard));
        let chunk = |n: u32, commit: bool| Transfer {
            v: VERSION,
            epoch: ps[1].epoch,
            attempt: 1,
            shard: m.shard,
            from: from.clone(),
            chunk: n,
            last: true,
            actors: vec![],
            commit,
            copy: false,
        };
        assert_eq!(
            dst.on_chunk(&chunk(0, false)),
            Ok(Accept::Stage { fresh: true })
        );
        assert!(!dst.serves(m.shard), "staged, not served");
        src.hand_off(ps[1].epoch, m.shard, "app-2");
        assert!(!src.serves(m.shard));
        assert_eq!(
            dst.on_chunk(&chunk(1, true)),
            Ok(Accept::Commit { fresh: false })
        );
        assert!(dst.serves(m.shard));
        // The operator had not seen Done and lists the move again: the source commits again (it
        // does not know whether its commit arrived), the destination, which does, is done at once.
        let mut again = msg(&ps[1]);
        again.epoch += 1;
        let fx = src.on_plan(again.clone(), []).expect("newer plan");
        assert!(
            fx.recommit
                .iter()
                .any(|r| r.shard == m.shard && r.to == "app-2")
        );
        assert!(
            !fx.report_done.iter().any(|d| d.shard == m.shard),
            "not Done before it is confirmed"
        );
        assert!(!fx.start.iter().any(|s| s.shard == m.shard), "still moving");
        assert!(!src.serves(m.shard));
        let fx = dst.on_plan(again, [m.shard]).expect("newer plan");
        assert!(fx.report_done.iter().any(|d| d.shard == m.shard));
        assert!(
            fx.stop.contains(&m.shard),
            "its worker is reloaded from the log"
        );
        assert!(dst.serves(m.shard));
    }

    #[test]
    fn a_failed_move_drops_what_the_destination_staged() {
        let ps = plans(&[2, 3]);
        let m = ps[1].moves.first().expect("a move").clone();
        let from = m.from.clone().expect("source");
        let mut dst = Ownership::new("app-2");
        dst.on_plan(msg(&ps[0]), []);
        dst.on_plan(msg(&ps[1]), []);
        let t = Transfer {
            v: VERSION,
            epoch: ps[1].epoch,
            attempt: 1,
            shard: m.shard,
            from: from.clone(),
            chunk: 0,
            last: true,
            actors: vec![],
            commit: false,
            copy: false,
        };
        assert!(dst.on_chunk(&t).is_ok());
        let mut failed = done(ps[1].epoch, m.shard, &from);
        failed.phase = MovePhase::Failed;
        failed.node = "app-9".into();
        assert_eq!(dst.on_progress(&failed), None, "only the move's source");
        failed.node = from;
        assert_eq!(dst.on_progress(&failed), Some(m.shard));
        assert!(!dst.serves(m.shard));
    }

    proptest! {
        /// Whatever order plans and Done reports arrive in, a node's view converges on the last
        /// plan's targets once every move of it is reported done; a report for a plan not held yet
        /// is kept until the plan comes; workers of shards that are not ours are stopped.
        #[test]
        fn views_converge_on_the_plan_whatever_the_order(
            sizes in prop::collection::vec(1usize..6, 1..5),
            me in 0usize..6,
            order in prop::collection::vec(any::<prop::sample::Index>(), 0..200),
        ) {
            let ps = plans(&sizes);
            let me = format!("app-{me}");
            let mut o = Ownership::new(me.clone());
            let mut events: Vec<Result<PlanMessage, Progress>> = Vec::new();
            for p in &ps {
                events.push(Ok(msg(p)));
                for m in &p.moves {
                    events.push(Err(done(p.epoch, m.shard, m.from.as_deref().unwrap_or(""))));
                }
            }
            // Shuffle; then the plans go back in epoch order (the KV watch delivers them in order).
            for (i, ix) in order.iter().enumerate() {
                let n = events.len();
                let (a, b) = (i % n, ix.index(n));
                if events[a].is_err() || events[b].is_err() {
                    events.swap(a, b);
                }
            }
            let slots: Vec<usize> = (0..events.len()).filter(|&i| events[i].is_ok()).collect();
            let mut in_order: Vec<PlanMessage> =
                slots.iter().filter_map(|&i| events[i].clone().ok()).collect();
            in_order.sort_by_key(|p| p.epoch);
            for (slot, p) in slots.into_iter().zip(in_order) {
                events[slot] = Ok(p);
            }
            let mut hosted: BTreeSet<u32> = BTreeSet::new();
            for e in events {
                match e {
                    Ok(p) => {
                        let fx = o.on_plan(p, hosted.iter().copied()).expect("newer");
                        for s in &fx.stop {
                            hosted.remove(s);
                        }
                        for shard in &hosted {
                            prop_assert!(o.serves(*shard), "a worker left on a shard not ours");
                        }
                    }
                    Err(p) => { o.on_progress(&p); }
                }
                // Workers start on demand for shards this node serves.
                for shard in 0..64u32 {
                    if o.serves(shard) {
                        hosted.insert(shard);
                    }
                }
            }
            let last = ps.last().expect("a plan");
            prop_assert_eq!(o.pending_moves(), 0);
            let table = RouteTable::new(last.shards, &msg(last).members, &msg(last).shard_map);
            for shard in 0..64u32 {
                let target = table.owner_of_shard(shard).map(|i| msg(last).members[i as usize].name.clone());
                prop_assert_eq!(o.owner(shard).map(str::to_owned), target);
            }
        }
    }
}
