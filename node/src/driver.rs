//! The move driver: every decision of a shard's move, both ends, pure. It runs the source's
//! [`SourceMove`] machine against the node's [`Ownership`] and turns its actions into [`Effect`]s
//! that a shell carries out in order: `moves.rs` against NATS and the shard workers, the simulator
//! (`tests/move_sim.rs`) and the model check (`tests/model_check.rs`) against their simulated
//! network. The rules that need both the machine and the plan live here, once:
//!
//! 1. the commit is sent only while the move's plan is current ([`SourceDriver::commit`]);
//! 2. a move that waited for a slot while a newer plan came reports `Superseded` and does nothing
//!    ([`SourceDriver::start`] gives a driver already at that outcome, so it ends like any move);
//! 3. the hand-off is recorded in the ownership and its `HandedOff` report stored before the
//!    commit is sent (the effects' order: [`Effect::StopServing`], [`Effect::Report`], then
//!    [`Effect::CommitAfter`]);
//! 4. a destination that takes the commit stores its `Done` before it confirms
//!    ([`Receive::Commit`] names the report; the shell stores it, then acks);
//! 5. when a move ends, started or not, the shard's next move (listed by a plan meanwhile) starts
//!    ([`SourceDriver::next`]).

use crate::migration::{Accept, Action, Event, Phase, SourceMove};
use crate::ownership::Ownership;
use aether_core::plan::Move;
use aether_core::protocol::{ErrorReply, Transfer};
use aether_core::types::MovePhase;
use std::time::Duration;

/// What a shell does for a source-side move, in the order given; each is done before the next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Store a report of the move (its phase, and why for a failure or supersession) before the
    /// next effect.
    Report {
        /// The phase.
        phase: MovePhase,
        /// Why.
        error: Option<String>,
    },
    /// Copy the shard's live actors, still serving it; answer [`Event::Copied`].
    Copy,
    /// Pause the shard and take its actors; answer [`Event::Captured`].
    PauseAndCapture {
        /// After a copy round: only what changed since.
        changed_only: bool,
    },
    /// Make chunk `chunk` and send it; answer [`Event::Produced`] or [`Event::ProduceFailed`].
    Produce {
        /// Chunk number.
        chunk: u32,
    },
    /// Send chunk `chunk` again after `delay_ms`.
    Resend {
        /// Chunk number.
        chunk: u32,
        /// Wait this long first.
        delay_ms: u64,
    },
    /// Stop serving the shard here (the ownership says it is handed off): drop its copies and
    /// forward what its worker queued to the destination.
    StopServing,
    /// Wait `delay_ms`, then call [`SourceDriver::commit`] and carry out what it returns.
    CommitAfter {
        /// Wait this long first.
        delay_ms: u64,
    },
    /// Send the commit, numbered `chunk`, now.
    SendCommit {
        /// The commit's number (the number of chunks).
        chunk: u32,
    },
    /// Serve the shard again: the source keeps it.
    Resume,
    /// Handed off, but a newer plan came before the commit was confirmed: nothing is reported
    /// (that plan decides who serves the shard).
    Unconfirmed,
}

/// One source-side move of one shard, in one plan.
#[derive(Clone, Debug)]
pub struct SourceDriver {
    /// The machine.
    pub machine: SourceMove,
    /// The move.
    pub mv: Move,
    /// Its plan's epoch.
    pub epoch: u64,
    commit: Option<u32>,
}

impl SourceDriver {
    /// Begins `mv` of plan `epoch` (once it has a move slot), with `machine` (a
    /// [`SourceMove::default`] or one with another copy threshold). A plan newer than `epoch`
    /// since: the driver is at its outcome already (nothing moves, the report says so), and the
    /// move ends like any other ([`SourceDriver::next`]).
    pub fn start(
        own: &Ownership,
        mv: Move,
        epoch: u64,
        mut machine: SourceMove,
    ) -> (Self, Vec<Effect>) {
        if !own.is_current(epoch) {
            machine.phase = Phase::Superseded;
            let why = "a newer plan came before the move started".to_owned();
            let d = Self {
                machine,
                mv,
                epoch,
                commit: None,
            };
            return (d, vec![report(MovePhase::Superseded, Some(why))]);
        }
        let first = machine.on(Event::Start);
        let mut d = Self {
            machine,
            mv,
            epoch,
            commit: None,
        };
        let mut fx = vec![report(MovePhase::Transferring, None)];
        fx.extend(d.effects(first));
        (d, fx)
    }

    /// A move this node handed off in an earlier epoch, listed again by plan `epoch`: only its
    /// commit is sent again.
    #[must_use]
    pub fn recommit(mv: Move, epoch: u64) -> (Self, Vec<Effect>) {
        let (machine, first) = SourceMove::recommit();
        let mut d = Self {
            machine,
            mv,
            epoch,
            commit: None,
        };
        let fx = d.effects(first);
        (d, fx)
    }

    /// Feeds what happened; the effects to carry out, in order. The hand-off is recorded in `own`
    /// here.
    pub fn on(&mut self, own: &mut Ownership, event: Event) -> Vec<Effect> {
        let actions = self.machine.on(event);
        let fx = self.effects(actions);
        if fx.contains(&Effect::StopServing) {
            own.hand_off(self.epoch, self.mv.shard, &self.mv.to);
        }
        fx
    }

    /// After [`Effect::CommitAfter`]'s wait: the commit goes out only while this move's plan is
    /// current; a newer plan makes it unconfirmed.
    pub fn commit(&mut self, own: &Ownership) -> Vec<Effect> {
        let Some(chunk) = self.commit.take() else {
            return Vec::new();
        };
        if own.is_current(self.epoch) {
            vec![Effect::SendCommit { chunk }]
        } else {
            let actions = self.machine.on(Event::Superseded);
            self.effects(actions)
        }
    }

    /// The machine reached its outcome.
    #[must_use]
    pub fn finished(&self) -> bool {
        self.machine.finished()
    }

    /// The move is over: the shard's next move, if a plan listed one while this ran (its plan's
    /// epoch and timeout), which starts now.
    #[must_use]
    pub fn next(self, own: &mut Ownership) -> Option<(Move, u64, Duration)> {
        own.move_finished(self.mv.shard, self.epoch)
    }

    fn effects(&mut self, actions: Vec<Action>) -> Vec<Effect> {
        let mut fx = Vec::with_capacity(actions.len() + 1);
        for action in actions {
            match action {
                Action::Copy => fx.push(Effect::Copy),
                Action::PauseAndCapture { changed_only } => {
                    fx.push(Effect::PauseAndCapture { changed_only });
                }
                Action::Produce { chunk } => fx.push(Effect::Produce { chunk }),
                Action::Resend { chunk, delay_ms } => fx.push(Effect::Resend { chunk, delay_ms }),
                Action::HandOff => {
                    fx.push(Effect::StopServing);
                    fx.push(report(MovePhase::HandedOff, None));
                }
                Action::Commit { chunk, delay_ms } => {
                    self.commit = Some(chunk);
                    fx.push(Effect::CommitAfter { delay_ms });
                }
                Action::Resume => fx.push(Effect::Resume),
                Action::ReportDone => fx.push(report(MovePhase::Done, None)),
                Action::ReportFailed(why) => fx.push(report(MovePhase::Failed, Some(why))),
                Action::ReportSuperseded => {
                    let why = "a newer plan came before the hand-off".to_owned();
                    fx.push(report(MovePhase::Superseded, Some(why)));
                }
                Action::CommitUnconfirmed => fx.push(Effect::Unconfirmed),
            }
        }
        fx
    }
}

fn report(phase: MovePhase, error: Option<String>) -> Effect {
    Effect::Report { phase, error }
}

/// What a destination does with a chunk it takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Receive {
    /// Stage its actors (installed, not served); `fresh`: first of its move, drop what an
    /// earlier move staged.
    Stage {
        /// First chunk of this move here.
        fresh: bool,
    },
    /// Had it already: ack again, change nothing.
    Duplicate,
    /// The commit: the shard is served here from now on. Store `done` (this move's `Done`
    /// report, so whoever starts later reads it) before confirming.
    Commit {
        /// Nothing of this move was staged here.
        fresh: bool,
        /// The move to report done.
        done: Move,
    },
}

/// Whether a destination may take `chunk` at all (checked before its actors are staged).
pub fn check(own: &Ownership, chunk: &Transfer) -> Result<(), ErrorReply> {
    own.check_chunk(chunk)
}

/// A destination's decision on `chunk` (after [`check`]); the ownership follows it.
pub fn receive(own: &mut Ownership, chunk: &Transfer) -> Result<Receive, ErrorReply> {
    Ok(match own.on_chunk(chunk)? {
        Accept::Stage { fresh } => Receive::Stage { fresh },
        Accept::Duplicate => Receive::Duplicate,
        Accept::Commit { fresh } => Receive::Commit {
            fresh,
            done: Move {
                shard: chunk.shard,
                from: Some(chunk.from.clone()),
                to: own.me().to_owned(),
            },
        },
    })
}
#[cfg(test)]
mod tests;
