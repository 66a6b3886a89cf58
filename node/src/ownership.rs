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
pub use answers::{MAX_HOPS, PlanEffects, Route, Settled, Unavailable};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// Done reports kept for plans not seen yet (a plan has at most 65,536 moves); the lowest epochs
/// go first.
const EARLY_DONE_LIMIT: usize = 1 << 16;

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

    /// This node's name.
    #[must_use]
    pub fn me(&self) -> &str {
        &self.me
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

    /// Source side: a move of `shard` runs here (or waits: held back, or deferred until the plan
    /// settles).
    #[must_use]
    pub fn is_moving(&self, shard: u32) -> bool {
        self.moving.contains(&shard)
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
        if self.arriving(view, shard) {
            return Route::Arriving { shard };
        }
        self.route_shard(view, shard, hops)
    }

    /// Where a request for `shard` goes after it was held as [`Route::Arriving`]: never held again.
    #[must_use]
    pub fn route_after_hold(&self, shard: u32, hops: u8) -> Route<'_> {
        let Some(view) = &self.view else {
            return Route::Unavailable(Unavailable::NoPlan);
        };
        self.route_shard(view, shard, hops)
    }

    /// True while `shard` is on its way here under the current plan and only its commit is
    /// missing: the source paused it and its chunks after the pause were staged.
    fn arriving(&self, view: &View, shard: u32) -> bool {
        // The hot path pays one emptiness check while nothing moves here.
        !self.incoming.is_empty()
            && self
                .incoming
                .get(&shard)
                .is_some_and(|i| i.paused && !i.committed && i.epoch == view.plan.epoch)
            && view.owner(shard) != Some(self.me.as_str())
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

    /// `pod`'s lease has lapsed (`lease::wait`): it serves nothing until it has read a plan at
    /// least as new as `epoch`, so this plan need not wait for it to say it holds it. Returns the
    /// moves to start when that settles the plan.
    pub fn stop_waiting_for(&mut self, pod: &str, epoch: u64) -> Option<Settled> {
        if epoch != self.epoch() || !self.awaiting.remove(pod) {
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

mod answers;
pub mod lease;
mod state_key;
#[cfg(test)]
mod tests;
