//! The shard migration protocol as pure state machines, tested without NATS. The I/O shell
//! (`node.rs`) feeds them events (acks, timeouts, captures) and carries out the actions they return.
//!
//! Source side, one shard, one epoch (DESIGN.md, "Migration of one shard"):
//! `Start -> Copy -> Copied -> Produce(0), ... (copies, the shard still served) -> all acked ->
//! PauseAndCapture -> Captured -> Produce(n), ... (what changed since the copy) -> all acked ->
//! HandOff + Commit -> committed -> ReportDone`. The copy round moves the shard's bulk while the
//! source still serves it, so the pause lasts as long as the actors that changed meanwhile take
//! (usually one chunk), not the whole shard; a shard of few actors skips it. The machine decides everything the protocol decides:
//! a new chunk (`Produce`) or one sent again (`Resend`), when to hand off, to commit, to give up. Chunks are produced (serialised) one at a time as they are
//! sent, so the source encodes chunk `k + 1` while chunk `k` travels and the destination parses it;
//! at most [`WINDOW`] are unacked at once. Any refusal, timeout or deadline before the last ack:
//! `Resume` (the source keeps the shard) and `ReportFailed`. A chunk refused as "retry later" (the
//! destination has not seen the plan yet) is sent again after a short delay until the deadline. After
//! the last ack the decision is made: the source has given the shard up, and it repeats the commit
//! until the destination confirms it, so the destination starts serving exactly when the source has
//! stopped.
//!
//! Destination side: [`Incoming`] accepts the chunks of exactly one (shard, epoch, source, attempt) in any
//! order (they travel concurrently), stages each one's actors (installed, not served), refuses older
//! epochs, and serves the shard once the commit comes.

use aether_core::protocol::{ErrorCode, ErrorReply, Transfer};
use std::collections::BTreeSet;

/// Chunks a source keeps unacked at once: the next chunk is on the wire while the destination
/// decodes and stages the previous one.
pub const WINDOW: u32 = 3;

/// Delay before a chunk refused with `Unavailable` is sent again.
pub const RETRY_DELAY_MS: u64 = 20;

/// A shard with fewer live actors than this is paused and sent whole (one chunk or so): a copy
/// round first would only add a round trip.
pub const COPY_FROM_ACTORS: usize = 256;

/// Where a source-side move is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Created, nothing done.
    Idle,
    /// Copying the live actors while the shard is still served.
    Copying,
    /// The shard is paused; waiting for its actors. Its chunks are numbered from `first` (after
    /// the copy round's).
    Capturing {
        /// Number of the first chunk sent after the pause.
        first: u32,
    },
    /// Sending the chunks: `0..sent` were asked for, `0..produced` of them exist.
    Sending {
        /// The copy round: the shard is still served, and the pause comes after these chunks.
        copy: bool,
        /// Chunks asked for (a prefix); chunk `sent - 1` may still be being produced.
        sent: u32,
        /// Chunks produced.
        produced: u32,
        /// Number of chunks, once the last one is produced.
        total: Option<u32>,
        /// Chunks acked.
        acked: BTreeSet<u32>,
    },
    /// The source gave the shard up; the commit (numbered `chunk`) is not confirmed yet.
    Committing {
        /// The commit's chunk number.
        chunk: u32,
    },
    /// The destination owns the shard; the source has forwarded its queue.
    Done,
    /// A newer plan came first: before the hand-off (the source kept the shard), or after it with
    /// the commit not confirmed (that plan decides who serves the shard).
    Superseded,
    /// The move failed; the source kept the shard.
    RolledBack(String),
}

/// What happened, as the shell saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Begin the move.
    Start,
    /// The live actors are copied (the shard still served): `actors` of them.
    Copied {
        /// How many.
        actors: usize,
    },
    /// The shard is paused and its actors are in hand (after a copy round: those that changed
    /// since, and which copied ones are gone).
    Captured,
    /// A chunk asked for with [`Action::Produce`] was made and sent; `last`: no actors are left
    /// after it.
    Produced {
        /// Chunk number.
        chunk: u32,
        /// The last chunk.
        last: bool,
    },
    /// A chunk asked for with [`Action::Produce`] could not be made.
    ProduceFailed {
        /// Chunk number.
        chunk: u32,
        /// Why.
        reason: String,
    },
    /// The destination acked a chunk.
    Acked {
        /// Chunk number.
        chunk: u32,
    },
    /// The destination refused a chunk.
    Refused {
        /// Chunk number.
        chunk: u32,
        /// Its error.
        error: ErrorReply,
    },
    /// No answer in time, or no destination listening.
    NoAnswer {
        /// Chunk number.
        chunk: u32,
        /// What the transport said.
        reason: String,
    },
    /// The move's overall deadline passed.
    Deadline,
    /// The destination confirmed the commit.
    Committed,
    /// The destination refused the commit: it holds a newer plan, which decides who serves.
    CommitRefused(ErrorReply),
    /// The commit got no answer; it is repeated.
    CommitUnanswered,
    /// A newer plan arrived: a move not yet handed off stops at once (the source keeps the shard
    /// and the newer plan decides anew); a commit not yet confirmed is not sent again.
    Superseded,
}

/// What the shell must do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Copy the shard's live actors without pausing it; answer with [`Event::Copied`].
    Copy,
    /// Pause the shard (queue new messages) and take its live actors. `changed_only` (after a copy
    /// round): only those whose sequence changed since their copy, or that were not copied, are
    /// sent, with a drop for each copied actor not live any more; otherwise all of them.
    PauseAndCapture {
        /// A copy round was sent.
        changed_only: bool,
    },
    /// Make chunk `chunk` from the actors not sent yet and send it (flagged as a copy until the
    /// pause); answer with
    /// [`Event::Produced`] or [`Event::ProduceFailed`].
    Produce {
        /// Chunk number (always the next one).
        chunk: u32,
    },
    /// Send again a chunk made before, after a delay.
    Resend {
        /// Chunk number.
        chunk: u32,
        /// Wait this long first.
        delay_ms: u64,
    },
    /// Stop serving the shard: drop the local copies, forward the queued messages to the
    /// destination, and store a `HandedOff` report before anything else is sent.
    HandOff,
    /// Send the commit, numbered after the last chunk.
    Commit {
        /// The commit's chunk number (the number of chunks).
        chunk: u32,
        /// Wait this long first.
        delay_ms: u64,
    },
    /// Unpause: the source keeps the shard and serves its queue (nothing to do before the pause
    /// but drop the copies).
    Resume,
    /// Report the move done: the destination confirmed the commit.
    ReportDone,
    /// Report the move failed, with why: the source kept the shard.
    ReportFailed(String),
    /// Report the move superseded: a newer plan came before the hand-off; the source kept the
    /// shard.
    ReportSuperseded,
    /// Report nothing: the shard was handed off but the commit was not confirmed before a newer
    /// plan came; that plan decides who serves it. (A `Superseded` report could replace the
    /// destination's `Done` if it did commit; the newer plan's move ends in its own report.)
    CommitUnconfirmed,
}

/// One source-side move.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceMove {
    /// Where it is.
    pub phase: Phase,
    /// A copy round comes first from this many live actors on ([`COPY_FROM_ACTORS`]).
    pub copy_from: usize,
}

impl Default for SourceMove {
    fn default() -> Self {
        Self {
            phase: Phase::Idle,
            copy_from: COPY_FROM_ACTORS,
        }
    }
}

impl SourceMove {
    /// A move this node handed off in an earlier epoch, listed again by a newer plan: only the
    /// commit is sent, in the newer epoch (numbered 0: the destination has no chunk of that epoch,
    /// dropped what it staged when the plan came, and reads the actors from the log). Returns the
    /// machine and its first actions.
    #[must_use]
    pub fn recommit() -> (Self, Vec<Action>) {
        (
            Self {
                phase: Phase::Committing { chunk: 0 },
                ..Self::default()
            },
            vec![Action::Commit {
                chunk: 0,
                delay_ms: 0,
            }],
        )
    }

    /// Feeds one event; returns the actions to carry out, in order.
    pub fn on(&mut self, event: Event) -> Vec<Action> {
        use Action as A;
        match (&self.phase, event) {
            (Phase::Idle, Event::Start) => {
                self.phase = Phase::Copying;
                vec![A::Copy]
            }
            (Phase::Copying, Event::Copied { actors }) if actors < self.copy_from => {
                self.phase = Phase::Capturing { first: 0 };
                vec![A::PauseAndCapture {
                    changed_only: false,
                }]
            }
            (Phase::Copying, Event::Copied { .. }) => {
                self.phase = Phase::Sending {
                    copy: true,
                    sent: 1,
                    produced: 0,
                    total: None,
                    acked: BTreeSet::new(),
                };
                vec![A::Produce { chunk: 0 }]
            }
            (Phase::Capturing { first }, Event::Captured) => {
                let first = *first;
                self.phase = Phase::Sending {
                    copy: false,
                    sent: first + 1,
                    produced: first,
                    total: None,
                    acked: (0..first).collect(),
                };
                vec![A::Produce { chunk: first }]
            }
            (Phase::Sending { .. }, event) => self.sending(event),
            (Phase::Committing { .. }, Event::Committed) => {
                self.phase = Phase::Done;
                vec![A::ReportDone]
            }
            (Phase::Committing { chunk }, Event::CommitUnanswered) => vec![A::Commit {
                chunk: *chunk,
                delay_ms: RETRY_DELAY_MS,
            }],
            (Phase::Committing { chunk }, Event::CommitRefused(e))
                if e.code == ErrorCode::Unavailable =>
            {
                vec![A::Commit {
                    chunk: *chunk,
                    delay_ms: e.retry_after_ms.unwrap_or(RETRY_DELAY_MS),
                }]
            }
            (Phase::Committing { .. }, Event::CommitRefused(_) | Event::Superseded) => {
                self.phase = Phase::Superseded;
                vec![A::CommitUnconfirmed]
            }
            (Phase::Copying | Phase::Capturing { .. }, Event::Deadline) => {
                self.fail("timed out: the move took longer than timeoutSeconds".to_owned())
            }
            // A newer plan before the hand-off: the destination refuses this epoch's chunks once it
            // holds that plan, so the move stops at once and the shard is served again here.
            (Phase::Copying | Phase::Capturing { .. }, Event::Superseded) => self.supersede(),
            // Late or duplicate events after the outcome, or out of order: nothing to do.
            _ => Vec::new(),
        }
    }

    /// Events while chunks travel. Only events about a produced chunk that is not acked yet count;
    /// the rest are late or duplicate.
    fn sending(&mut self, event: Event) -> Vec<Action> {
        let Phase::Sending {
            copy,
            sent,
            produced,
            total,
            acked,
        } = &mut self.phase
        else {
            return Vec::new();
        };
        let open = |chunk: u32| chunk < *produced && !acked.contains(&chunk);
        match event {
            Event::Superseded => self.supersede(),
            Event::Deadline => {
                self.fail("timed out: the move took longer than timeoutSeconds".to_owned())
            }
            Event::Produced { chunk, last } if chunk + 1 == *sent && *produced < *sent => {
                *produced = *sent;
                if last {
                    *total = Some(*sent);
                    Vec::new()
                } else {
                    next_chunk(sent, acked)
                }
            }
            Event::ProduceFailed { chunk, reason } if chunk + 1 == *sent && *produced < *sent => {
                self.fail(format!("chunk {chunk} could not be made: {reason}"))
            }
            Event::Acked { chunk } if open(chunk) => {
                acked.insert(chunk);
                if let Some(n) = *total
                    && acked.len() as u32 == n
                    && *copy
                {
                    // Every copy is staged: pause, and send what changed since.
                    self.phase = Phase::Capturing { first: n };
                    vec![Action::PauseAndCapture { changed_only: true }]
                } else if let Some(n) = *total
                    && acked.len() as u32 == n
                {
                    self.phase = Phase::Committing { chunk: n };
                    vec![
                        Action::HandOff,
                        Action::Commit {
                            chunk: n,
                            delay_ms: 0,
                        },
                    ]
                } else if total.is_none() && produced == sent {
                    next_chunk(sent, acked)
                } else {
                    Vec::new()
                }
            }
            Event::Refused { chunk, error } if open(chunk) => {
                if error.code == ErrorCode::Redirect {
                    // The destination has this move committed already (an earlier attempt of this
                    // source, which restarted after sending the commit): it serves the shard, so the
                    // source gives it up as after a confirmed commit and never resumes.
                    self.phase = Phase::Done;
                    vec![Action::HandOff, Action::ReportDone]
                } else if error.code == ErrorCode::Unavailable {
                    vec![Action::Resend {
                        chunk,
                        delay_ms: error.retry_after_ms.unwrap_or(RETRY_DELAY_MS),
                    }]
                } else {
                    self.fail(format!(
                        "destination refused chunk {chunk}: {}",
                        error.message
                    ))
                }
            }
            Event::NoAnswer { chunk, reason } if open(chunk) => {
                self.fail(format!("no answer to chunk {chunk}: {reason}"))
            }
            _ => Vec::new(),
        }
    }

    fn supersede(&mut self) -> Vec<Action> {
        self.phase = Phase::Superseded;
        vec![Action::Resume, Action::ReportSuperseded]
    }

    fn fail(&mut self, reason: String) -> Vec<Action> {
        self.phase = Phase::RolledBack(reason.clone());
        vec![Action::Resume, Action::ReportFailed(reason)]
    }

    /// True once the move has an outcome.
    #[must_use]
    pub fn finished(&self) -> bool {
        matches!(
            self.phase,
            Phase::Done | Phase::RolledBack(_) | Phase::Superseded
        )
    }

    /// True between the hand-off and the outcome of the commit.
    #[must_use]
    pub fn committing(&self) -> bool {
        matches!(self.phase, Phase::Committing { .. })
    }
}

/// Asks for the next chunk when the window has room.
fn next_chunk(sent: &mut u32, acked: &BTreeSet<u32>) -> Vec<Action> {
    if *sent - acked.len() as u32 >= WINDOW {
        return Vec::new();
    }
    *sent += 1;
    vec![Action::Produce { chunk: *sent - 1 }]
}

/// Destination side, one incoming shard: the chunks received so far of exactly one (shard, epoch,
/// source). Chunks arrive in any order (they travel concurrently) and maybe twice; the first chunk
/// of a move clears whatever an earlier move of the shard staged; the commit makes the shard served
/// here. Rolled back (its staged actors dropped) when the source reports the move failed or a newer
/// plan replaces it ([`crate::ownership::Ownership`] does both).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incoming {
    /// Shard.
    pub shard: u32,
    /// Epoch of the move.
    pub epoch: u64,
    /// Source pod.
    pub from: String,
    /// The source's attempt.
    pub attempt: u64,
    /// Chunks received (and staged).
    pub received: BTreeSet<u32>,
    /// Number of chunks, once the one flagged `last` arrived.
    pub total: Option<u32>,
    /// A chunk sent after the source paused was staged: a copy that arrives now is late and stale.
    pub paused: bool,
    /// The source committed: the shard is served here.
    pub committed: bool,
}

/// What to do with a chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Accept {
    /// Stage the chunk's actors: installed, not served until the commit. `fresh`: the first chunk of
    /// this move to arrive; whatever an earlier move of the shard staged here goes first.
    Stage {
        /// First chunk of this move.
        fresh: bool,
    },
    /// Already had it (a retry after a lost ack, or a late copy): ack again, change nothing.
    Duplicate,
    /// The commit: serve the shard from now on. `fresh`: what is staged here is not this attempt's
    /// whole move (another attempt's, or part of it, after this node restarted): it goes first,
    /// and the actors come from the log.
    Commit {
        /// Drop what is staged first.
        fresh: bool,
    },
}

/// The checks that need no state: the chunk's epoch is the one this node holds and its plan has this
/// move from this source. Cheap, so a destination runs them before staging a chunk's actors.
pub fn check_chunk(
    holding: u64,
    expected_source: Option<&str>,
    chunk: &Transfer,
) -> Result<(), ErrorReply> {
    if chunk.epoch < holding {
        return Err(ErrorReply::stale_epoch(
            format!(
                "transfer for epoch {} but this node holds epoch {holding}",
                chunk.epoch
            ),
            holding,
        ));
    }
    if chunk.epoch > holding {
        return Err(ErrorReply::unavailable(
            format!("this node has not seen plan epoch {} yet", chunk.epoch),
            RETRY_DELAY_MS,
        ));
    }
    if expected_source != Some(chunk.from.as_str()) {
        return Err(ErrorReply::stale_epoch(
            format!(
                "plan epoch {holding} has no move of shard {} from {} to this node",
                chunk.shard, chunk.from
            ),
            holding,
        ));
    }
    Ok(())
}

/// Decides on a chunk. `incoming` is the shard's incoming move, if any; `holding` the destination's
/// plan epoch; `expected_source` the source its plan names for this shard, if it has a move for it.
pub fn accept_chunk(
    incoming: &mut Option<Incoming>,
    holding: u64,
    expected_source: Option<&str>,
    chunk: &Transfer,
) -> Result<Accept, ErrorReply> {
    check_chunk(holding, expected_source, chunk)?;
    let same_move =
        |i: &Incoming| i.shard == chunk.shard && i.epoch == chunk.epoch && i.from == chunk.from;
    if let Some(i) = incoming.as_ref()
        && same_move(i)
        && i.committed
        && i.attempt != chunk.attempt
        && !chunk.commit
    {
        // The source restarted after its commit and did not learn of it: it must not replace
        // what this node serves, and must give the shard up (`redirect`: the owner is this node,
        // which [`crate::ownership::Ownership::on_chunk`] names).
        let mut e = ErrorReply::new(
            ErrorCode::Redirect,
            format!(
                "shard {} was committed to this node in epoch {holding} already",
                chunk.shard
            ),
        );
        e.epoch = Some(holding);
        return Err(e);
    }
    // An older attempt than the one staged (attempt ids grow, also across a source's restarts): a
    // late chunk or commit of a source that restarted since and moves the shard again. Staging it
    // would replace a newer capture with an older one.
    if let Some(i) = incoming.as_ref()
        && same_move(i)
        && !i.committed
        && chunk.attempt < i.attempt
    {
        return Err(ErrorReply::stale_epoch(
            format!(
                "attempt {} of the move of shard {} is older than attempt {} staged here",
                chunk.attempt, chunk.shard, i.attempt
            ),
            holding,
        ));
    }
    // A newer attempt of the same move (its source restarted) starts the staging afresh.
    let fresh = !incoming
        .as_ref()
        .is_some_and(|i| same_move(i) && (i.attempt == chunk.attempt || i.committed));
    if fresh {
        *incoming = None;
    }
    let inc = incoming.get_or_insert_with(|| Incoming {
        shard: chunk.shard,
        epoch: chunk.epoch,
        from: chunk.from.clone(),
        attempt: chunk.attempt,
        received: BTreeSet::new(),
        total: None,
        paused: false,
        committed: false,
    });
    if chunk.commit && inc.committed {
        // Committed already: the same commit again, or a source that restarted after its commit
        // and sends it again without knowing how many chunks its earlier run sent.
        return Ok(Accept::Duplicate);
    }
    if chunk.commit {
        if let Some(total) = inc.total
            && chunk.chunk != total
        {
            return Err(ErrorReply::new(
                ErrorCode::Malformed,
                format!(
                    "commit numbered {} but the move has {total} chunks",
                    chunk.chunk
                ),
            ));
        }
        // The source has let go: the shard is ours. What is staged is served only when it is
        // every chunk of this attempt; otherwise (another attempt's, or some chunks only, after a
        // restart: a copy staged without the later chunk that replaces it would be stale) it goes
        // first and the log has it all.
        let whole = inc
            .total
            .is_some_and(|n| (0..n).all(|c| inc.received.contains(&c)));
        inc.committed = true;
        return Ok(Accept::Commit {
            fresh: fresh || !whole,
        });
    }
    if inc.committed || !inc.received.insert(chunk.chunk) {
        return Ok(Accept::Duplicate);
    }
    if chunk.copy && inc.paused {
        // Sent before a chunk already staged, which holds newer states (or their drops).
        return Ok(Accept::Duplicate);
    }
    inc.paused |= !chunk.copy;
    if chunk.last {
        inc.total = Some(chunk.chunk + 1);
    }
    Ok(Accept::Stage { fresh })
}

#[cfg(test)]
mod tests;
