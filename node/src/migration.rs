//! The shard migration protocol as pure state machines, tested without NATS. The I/O shell
//! (`node.rs`) feeds them events (acks, timeouts, captures) and carries out the actions they return.
//!
//! Source side, one shard, one epoch (DESIGN.md, "Migration of one shard"):
//! `Start -> PauseAndCapture -> Captured -> Send(0..n) -> all acked -> HandOff + Commit -> committed
//! -> ReportDone`. Any refusal, timeout or deadline before the last ack: `Resume` (the source keeps the
//! shard) and `ReportFailed`. A chunk refused as "retry later" (the destination has not seen the plan
//! yet) is sent again after a short delay until the deadline. After the last ack the decision is made:
//! the source has given the shard up, and it repeats the commit until the destination confirms it, so
//! the destination starts serving exactly when the source has stopped.
//!
//! Destination side: [`Incoming`] accepts chunks of exactly one (shard, epoch, source) in order, refuses
//! older epochs, and owns the shard once the last chunk is in.

use aether_core::protocol::{ActorSnapshot, ErrorCode, ErrorReply, Transfer};

/// Delay before a chunk refused with `Unavailable` is sent again.
pub const RETRY_DELAY_MS: u64 = 20;

/// Where a source-side move is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Created, nothing done.
    Idle,
    /// The shard is paused; waiting for its actors' captured state.
    Capturing,
    /// Sending chunk `next` of `chunks`.
    Sending {
        /// Chunk in flight.
        next: u32,
        /// Number of chunks.
        chunks: u32,
    },
    /// The source gave the shard up; the commit is not confirmed yet.
    Committing,
    /// The destination owns the shard; the source has forwarded its queue.
    Done,
    /// The move failed; the source kept the shard.
    RolledBack(String),
}

/// What happened, as the shell saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Begin the move.
    Start,
    /// The shard is paused and its state captured into this many chunks (at least 1).
    Captured {
        /// Number of chunks.
        chunks: u32,
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
    /// The destination confirmed the commit (or answered it at all: any answer is final).
    Committed,
    /// The commit got no answer; it is repeated.
    CommitUnanswered,
}

/// What the shell must do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Pause the shard (queue new messages) and capture its live actors.
    PauseAndCapture,
    /// Send a chunk.
    Send {
        /// Chunk number.
        chunk: u32,
        /// Wait this long first.
        delay_ms: u64,
    },
    /// Drop the local copies, forward the queued messages to the destination.
    HandOff,
    /// Send the commit.
    Commit {
        /// Wait this long first.
        delay_ms: u64,
    },
    /// Unpause: the source keeps the shard and serves its queue.
    Resume,
    /// Report the move done.
    ReportDone,
    /// Report the move failed, with why.
    ReportFailed(String),
}

/// One source-side move.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceMove {
    /// Where it is.
    pub phase: Phase,
}

impl Default for SourceMove {
    fn default() -> Self {
        Self { phase: Phase::Idle }
    }
}

impl SourceMove {
    /// Feeds one event; returns the actions to carry out, in order.
    pub fn on(&mut self, event: Event) -> Vec<Action> {
        use Action as A;
        match (&self.phase, event) {
            (Phase::Idle, Event::Start) => {
                self.phase = Phase::Capturing;
                vec![A::PauseAndCapture]
            }
            (Phase::Capturing, Event::Captured { chunks }) => {
                let chunks = chunks.max(1);
                self.phase = Phase::Sending { next: 0, chunks };
                vec![A::Send {
                    chunk: 0,
                    delay_ms: 0,
                }]
            }
            (&Phase::Sending { next, chunks }, Event::Acked { chunk }) if chunk == next => {
                if next + 1 == chunks {
                    self.phase = Phase::Committing;
                    vec![A::HandOff, A::Commit { delay_ms: 0 }]
                } else {
                    self.phase = Phase::Sending {
                        next: next + 1,
                        chunks,
                    };
                    vec![A::Send {
                        chunk: next + 1,
                        delay_ms: 0,
                    }]
                }
            }
            (&Phase::Sending { next, .. }, Event::Refused { chunk, error })
                if chunk == next && error.code == ErrorCode::Unavailable =>
            {
                vec![A::Send {
                    chunk,
                    delay_ms: error.retry_after_ms.unwrap_or(RETRY_DELAY_MS),
                }]
            }
            (&Phase::Sending { next, .. }, Event::Refused { chunk, error }) if chunk == next => {
                self.fail(format!(
                    "destination refused chunk {chunk}: {}",
                    error.message
                ))
            }
            (&Phase::Sending { next, .. }, Event::NoAnswer { chunk, reason }) if chunk == next => {
                self.fail(format!("no answer to chunk {chunk}: {reason}"))
            }
            (Phase::Committing, Event::Committed) => {
                self.phase = Phase::Done;
                vec![A::ReportDone]
            }
            (Phase::Committing, Event::CommitUnanswered) => vec![A::Commit {
                delay_ms: RETRY_DELAY_MS,
            }],
            (Phase::Capturing | Phase::Sending { .. }, Event::Deadline) => {
                self.fail("the move took longer than timeoutSeconds".to_owned())
            }
            // Late or duplicate events after the outcome, or out of order: nothing to do.
            _ => Vec::new(),
        }
    }

    fn fail(&mut self, reason: String) -> Vec<Action> {
        self.phase = Phase::RolledBack(reason.clone());
        vec![Action::Resume, Action::ReportFailed(reason)]
    }

    /// True once the move has an outcome.
    #[must_use]
    pub fn finished(&self) -> bool {
        matches!(self.phase, Phase::Done | Phase::RolledBack(_))
    }
}

/// Destination side: the chunks received so far of one incoming shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incoming {
    /// Shard.
    pub shard: u32,
    /// Epoch of the move.
    pub epoch: u64,
    /// Source pod.
    pub from: String,
    /// Next chunk expected.
    pub next: u32,
    /// Actors received.
    pub actors: Vec<ActorSnapshot>,
}

/// What to do with a chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Accept {
    /// Keep it; more chunks follow.
    More,
    /// The last chunk: install `actors` and own the shard.
    Install(Vec<ActorSnapshot>),
    /// Already had it (a retry after a lost ack): ack again, change nothing.
    Duplicate,
    /// The commit: serve the shard from now on.
    Commit,
}

/// Decides on a chunk. `holding` is the destination's plan epoch; `expected_source` the source its
/// plan names for this shard, if it has a move for it.
pub fn accept_chunk(
    incoming: &mut Option<Incoming>,
    holding: u64,
    expected_source: Option<&str>,
    chunk: Transfer,
) -> Result<Accept, ErrorReply> {
    if chunk.epoch < holding {
        let mut e = ErrorReply::new(
            ErrorCode::StaleEpoch,
            format!(
                "transfer for epoch {} but this node holds epoch {holding}",
                chunk.epoch
            ),
        );
        e.epoch = Some(holding);
        return Err(e);
    }
    if chunk.epoch > holding {
        let mut e = ErrorReply::new(
            ErrorCode::Unavailable,
            format!("this node has not seen plan epoch {} yet", chunk.epoch),
        );
        e.retry_after_ms = Some(RETRY_DELAY_MS);
        return Err(e);
    }
    if expected_source != Some(chunk.from.as_str()) {
        return Err(ErrorReply::new(
            ErrorCode::StaleEpoch,
            format!(
                "plan epoch {holding} has no move of shard {} from {} to this node",
                chunk.shard, chunk.from
            ),
        ));
    }
    if chunk.commit {
        // Whatever was installed (or nothing, after a restart: the log has it all), the source has
        // let go: the shard is ours.
        *incoming = None;
        return Ok(Accept::Commit);
    }
    let same =
        |i: &Incoming| i.shard == chunk.shard && i.epoch == chunk.epoch && i.from == chunk.from;
    if !incoming.as_ref().is_some_and(same) {
        if chunk.chunk != 0 {
            return Err(ErrorReply::new(
                ErrorCode::Malformed,
                format!("chunk {} before chunk 0", chunk.chunk),
            ));
        }
        *incoming = Some(Incoming {
            shard: chunk.shard,
            epoch: chunk.epoch,
            from: chunk.from.clone(),
            next: 0,
            actors: Vec::new(),
        });
    }
    let Some(inc) = incoming.as_mut() else {
        return Err(ErrorReply::new(ErrorCode::Internal, "no incoming shard"));
    };
    if chunk.chunk < inc.next {
        return Ok(Accept::Duplicate);
    }
    if chunk.chunk > inc.next {
        return Err(ErrorReply::new(
            ErrorCode::Malformed,
            format!("chunk {} but expected {}", chunk.chunk, inc.next),
        ));
    }
    inc.next += 1;
    inc.actors.extend(chunk.actors);
    if chunk.last {
        let actors = std::mem::take(&mut inc.actors);
        Ok(Accept::Install(actors))
    } else {
        Ok(Accept::More)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aether_core::protocol::{ActorRef, Bytes, VERSION};
    use proptest::prelude::*;

    fn chunk(epoch: u64, n: u32, last: bool) -> Transfer {
        Transfer {
            v: VERSION,
            epoch,
            shard: 3,
            from: "app-0".into(),
            chunk: n,
            last,
            commit: false,
            actors: vec![ActorSnapshot {
                actor: ActorRef::new("counter", format!("a{n}")),
                version: 1,
                seq: 1,
                state: Bytes(vec![]),
            }],
        }
    }

    #[test]
    fn happy_path() {
        let mut m = SourceMove::default();
        assert_eq!(m.on(Event::Start), vec![Action::PauseAndCapture]);
        assert_eq!(
            m.on(Event::Captured { chunks: 2 }),
            vec![Action::Send {
                chunk: 0,
                delay_ms: 0
            }]
        );
        assert_eq!(
            m.on(Event::Acked { chunk: 0 }),
            vec![Action::Send {
                chunk: 1,
                delay_ms: 0
            }]
        );
        assert_eq!(
            m.on(Event::Acked { chunk: 1 }),
            vec![Action::HandOff, Action::Commit { delay_ms: 0 }]
        );
        assert!(
            m.on(Event::Deadline).is_empty(),
            "no rollback after the hand-off"
        );
        assert_eq!(
            m.on(Event::CommitUnanswered),
            vec![Action::Commit {
                delay_ms: RETRY_DELAY_MS
            }]
        );
        assert_eq!(m.on(Event::Committed), vec![Action::ReportDone]);
        assert!(m.finished());
    }

    #[test]
    fn a_dead_destination_rolls_back() {
        let mut m = SourceMove::default();
        m.on(Event::Start);
        m.on(Event::Captured { chunks: 1 });
        let actions = m.on(Event::NoAnswer {
            chunk: 0,
            reason: "timed out".into(),
        });
        assert_eq!(actions[0], Action::Resume);
        assert!(matches!(&actions[1], Action::ReportFailed(r) if r.contains("timed out")));
    }

    #[test]
    fn a_destination_behind_is_retried_until_the_deadline() {
        let mut m = SourceMove::default();
        m.on(Event::Start);
        m.on(Event::Captured { chunks: 1 });
        let mut e = ErrorReply::new(ErrorCode::Unavailable, "not yet");
        e.retry_after_ms = Some(5);
        assert_eq!(
            m.on(Event::Refused { chunk: 0, error: e }),
            vec![Action::Send {
                chunk: 0,
                delay_ms: 5
            }]
        );
        assert_eq!(m.on(Event::Deadline)[0], Action::Resume);
    }

    #[test]
    fn destination_checks_epochs_and_order() {
        let mut inc = None;
        let stale = accept_chunk(&mut inc, 5, Some("app-0"), chunk(4, 0, true)).expect_err("stale");
        assert_eq!(stale.code, ErrorCode::StaleEpoch);
        let ahead = accept_chunk(&mut inc, 5, Some("app-0"), chunk(6, 0, true)).expect_err("ahead");
        assert_eq!(ahead.code, ErrorCode::Unavailable);
        let wrong =
            accept_chunk(&mut inc, 5, Some("app-9"), chunk(5, 0, true)).expect_err("source");
        assert_eq!(wrong.code, ErrorCode::StaleEpoch);
        assert!(
            accept_chunk(&mut inc, 5, Some("app-0"), chunk(5, 1, false)).is_err(),
            "gap"
        );
        assert_eq!(
            accept_chunk(&mut inc, 5, Some("app-0"), chunk(5, 0, false)),
            Ok(Accept::More)
        );
        assert_eq!(
            accept_chunk(&mut inc, 5, Some("app-0"), chunk(5, 0, false)),
            Ok(Accept::Duplicate)
        );
        match accept_chunk(&mut inc, 5, Some("app-0"), chunk(5, 1, true)) {
            Ok(Accept::Install(actors)) => assert_eq!(actors.len(), 2),
            other => panic!("expected install, got {other:?}"),
        }
        let mut commit = chunk(5, 2, true);
        commit.commit = true;
        commit.actors.clear();
        assert_eq!(
            accept_chunk(&mut inc, 5, Some("app-0"), commit.clone()),
            Ok(Accept::Commit)
        );
        commit.epoch = 4;
        assert!(
            accept_chunk(&mut inc, 5, Some("app-0"), commit).is_err(),
            "an old commit is refused"
        );
    }

    proptest! {
        /// Whatever the events, a move ends with exactly one of hand-off or resume, never both, and
        /// never hands off before every chunk was acked.
        #[test]
        fn outcome_is_exclusive(chunks in 1u32..5, events in prop::collection::vec(0u8..7, 0..30)) {
            let mut m = SourceMove::default();
            let mut actions = m.on(Event::Start);
            actions.extend(m.on(Event::Captured { chunks }));
            let mut acked = 0u32;
            for e in events {
                let next = match m.phase { Phase::Sending { next, .. } => next, _ => 0 };
                let ev = match e {
                    0 => { acked = acked.max(next + 1); Event::Acked { chunk: next } }
                    1 => Event::NoAnswer { chunk: next, reason: "x".into() },
                    2 => Event::Refused { chunk: next, error: ErrorReply::new(ErrorCode::Unavailable, "later") },
                    3 => Event::Deadline,
                    4 => Event::CommitUnanswered,
                    5 => Event::Committed,
                    _ => Event::Acked { chunk: next + 7 },
                };
                let out = m.on(ev);
                if out.contains(&Action::HandOff) {
                    prop_assert_eq!(acked, chunks);
                }
                actions.extend(out);
            }
            let handoffs = actions.iter().filter(|a| **a == Action::HandOff).count();
            let resumes = actions.iter().filter(|a| **a == Action::Resume).count();
            prop_assert!(handoffs + resumes <= 1);
            // Finished: rolled back, or handed off and committed; never Done without the commit.
            let reported_done = actions.contains(&Action::ReportDone);
            prop_assert_eq!(reported_done, m.phase == Phase::Done);
            prop_assert_eq!(m.finished(), resumes == 1 || reported_done);
        }
    }
}
