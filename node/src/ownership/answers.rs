//! What [`super::Ownership`] answers: where a request goes, what the shell does after a plan and
//! once it settles.

use aether_core::plan::Move;
use aether_core::protocol::ErrorReply;
use std::time::Duration;

/// Hops a request may take between nodes: one forward from the node it reached, and one more from a
/// source that just handed its shard off.
pub const MAX_HOPS: u8 = 2;

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
    /// The shard is on its way here: its source paused it and sent its last actors, and the
    /// commit is due. Held for the commit (briefly), then routed again with
    /// [`crate::ownership::Ownership::route_after_hold`]; sent back to the source it would only
    /// wait there or come back.
    Arriving {
        /// The actor's shard.
        shard: u32,
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
            Self::Local { .. } | Self::Forward { .. } | Self::Arriving { .. } => None,
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
