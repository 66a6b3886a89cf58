//! A paused shard's actors lent to its move (copied chunk by chunk off the worker), and the
//! actors a move stages on its destination until the commit installs them.

use super::{Actor, HostContext, Worker};
use crate::behaviour::Kind;
use crate::capture;
use crate::error::Error;
use crate::metrics::Failure;
use aether_core::protocol::{ActorRef, ActorSnapshot, TransferWriter};
use std::collections::HashMap;
use std::time::Instant;

/// The migration thread gives its core back (`sched_yield`) after writing or dropping this many
/// actors. At nice +10 it already gets little CPU while requests keep the cores busy, but once running
/// it keeps the core for its time slice (milliseconds): a request thread that wakes up meanwhile
/// waits. Yielding every ~20 us of work bounds that wait; the cost is one system call per 16 actors.
pub const YIELD_EVERY: usize = 16;

/// A paused shard's actors, lent to its move: serialised chunk by chunk as the move sends them
/// (off the worker, which only queues while paused), given back if the move rolls back, dropped
/// after the hand-off.
#[derive(Debug, Default)]
pub struct Lent {
    pub(super) actors: Vec<(ActorRef, Box<Actor>)>,
    pub(super) packed: Vec<(ActorRef, Packed)>,
    pub(super) next: usize,
    /// Only the first `send.0` actors and `send.1` packed ones are sent (after a copy round: those
    /// that changed since); `None`: all.
    pub(super) send: Option<(usize, usize)>,
    /// Copied actors not live any more: sent first, as drops (an empty state).
    pub(super) drops: Vec<ActorRef>,
}

/// Each copied actor's sequence, to tell at the pause which changed since.
pub type Copied = HashMap<ActorRef, u64>;

impl Lent {
    /// Number of actors.
    #[must_use]
    pub fn len(&self) -> usize {
        self.actors.len() + self.packed.len()
    }

    /// Adds a batch of copies.
    pub fn extend(&mut self, more: Lent) {
        self.actors.extend(more.actors);
        self.packed.extend(more.packed);
    }

    /// Each actor's sequence.
    #[must_use]
    pub fn sequences(&self) -> Copied {
        let live = self.actors.iter().map(|(k, a)| (k.clone(), a.seq));
        let packed = self.packed.iter().map(|(k, p)| (k.clone(), p.seq));
        live.chain(packed).collect()
    }

    /// After a copy round: only the actors whose sequence differs from their copy's, or that were
    /// not copied, are sent, and a drop for each copied actor not among them. Returns how many
    /// are sent and how many dropped.
    pub fn changed_since(&mut self, mut copied: Copied) -> (usize, usize) {
        fn changed<T>(
            items: &mut [(ActorRef, T)],
            copied: &mut Copied,
            seq: impl Fn(&T) -> u64,
        ) -> usize {
            let mut n = 0;
            for i in 0..items.len() {
                let (k, item) = &items[i];
                if copied.remove(k) != Some(seq(item)) {
                    items.swap(i, n);
                    n += 1;
                }
            }
            n
        }
        let actors = changed(&mut self.actors, &mut copied, |a| a.seq);
        let packed = changed(&mut self.packed, &mut copied, |p| p.seq);
        self.send = Some((actors, packed));
        self.drops = copied.into_keys().collect();
        (actors + packed, self.drops.len())
    }

    /// True when the shard had no live actors.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes up to `max_actors` of the next actors into `chunk`, stopping once it holds at least
    /// `max_bytes`; true when none are left. An actor still packed as it arrived is copied as it
    /// is. An actor whose state cannot be written is left out: its new owner rebuilds it from the log.
    pub fn fill(
        &mut self,
        chunk: &mut TransferWriter,
        max_bytes: usize,
        max_actors: usize,
    ) -> bool {
        let (n_actors, n_packed) = self.send.unwrap_or((self.actors.len(), self.packed.len()));
        let n_drops = self.drops.len();
        let total = n_drops + n_actors + n_packed;
        let stop = self.next.saturating_add(max_actors).min(total);
        while self.next < stop && chunk.len() < max_bytes {
            let i = self.next;
            self.next += 1;
            if i % YIELD_EVERY == YIELD_EVERY - 1 {
                std::thread::yield_now();
            }
            let written = if i < n_drops {
                // An empty state: the destination drops its copy and reads the actor from the log.
                chunk.actor(&self.drops[i], 0, 0, |_| Ok::<(), Error>(()))
            } else if i < n_drops + n_actors {
                let (actor, a) = &self.actors[i - n_drops];
                chunk.actor(actor, a.version, a.seq, |out| {
                    capture::write(out, &a.snapshot, a.base)
                })
            } else {
                let (actor, p) = &self.packed[i - n_drops - n_actors];
                chunk.actor(actor, p.version, p.seq, |out| {
                    out.extend_from_slice(&p.state);
                    Ok::<(), Error>(())
                })
            };
            if let Err(e) = written {
                tracing::warn!(error = %e, "actor left out of a transfer: rebuilt from the log");
            }
        }
        self.next >= total
    }

    /// Drops the actors after a hand-off, a few at a time (see [`YIELD_EVERY`]): freeing ten
    /// thousand actors' states at once would hold the core for milliseconds.
    pub fn release(self) {
        let mut actors = self.actors.into_iter();
        while actors.by_ref().take(YIELD_EVERY).count() > 0 {
            std::thread::yield_now();
        }
        // A packed actor is one allocation.
        let mut packed = self.packed.into_iter();
        while packed.by_ref().take(YIELD_EVERY * 8).count() > 0 {
            std::thread::yield_now();
        }
    }
}

/// Migrated actors, ready to install: kept as they arrived and unpacked when first used, so a
/// move costs the destination a copy per actor, not a parse. `None`: a drop (an empty state: the
/// actor's copy staged earlier goes, and it is read from the log).
#[derive(Debug, Default)]
pub struct Staged(pub(super) Vec<(ActorRef, Option<Packed>)>);

impl Staged {
    /// Adds captured actors. One of a kind this node lacks is left out and counted: such an actor
    /// is refused when used, as it would be had it never moved.
    pub fn add(&mut self, ctx: &HostContext, actors: impl IntoIterator<Item = ActorSnapshot>) {
        let now = Instant::now();
        let staged = actors.into_iter().filter_map(|snap| {
            if snap.state.0.is_empty() {
                return Some((snap.actor, None));
            }
            let Some(kind) = ctx.registry.get(&snap.actor.kind).cloned() else {
                ctx.metrics.failure(Failure::UnknownKind);
                return None;
            };
            let packed = Packed {
                kind,
                state: snap.state.0,
                version: snap.version,
                seq: snap.seq,
                since: now,
            };
            Some((snap.actor, Some(packed)))
        });
        self.0.extend(staged);
    }
}

/// A migrated actor not used since it arrived: its captured state, unparsed.
#[derive(Debug, Clone)]
pub struct Packed {
    pub(super) kind: Kind,
    pub(super) state: Vec<u8>,
    pub(super) version: u64,
    pub(super) seq: u64,
    pub(super) since: Instant,
}

impl Packed {
    /// The live actor, or why its state does not read.
    pub(super) fn unpack(self, window: std::time::Duration) -> Result<Box<Actor>, Error> {
        let (mut snapshot, base) = capture::read(&self.state)?;
        snapshot.state.compact();
        Ok(Box::new(Actor {
            forgotten: Actor::forgotten_at_load(&self.kind, snapshot.recent.len(), window),
            kind: self.kind,
            marker: snapshot.has_pending().then_some(super::marker::UNKNOWN),
            snapshot,
            version: self.version,
            seq: self.seq,
            base,
            last_used: Instant::now(),
        }))
    }
}

impl Worker {
    /// Takes lent actors back (a move that rolled back).
    pub(super) fn restore(&mut self, lent: Lent) {
        self.ctx.metrics.actors.inc_by(lent.len() as i64);
        self.actors.extend(lent.actors);
        self.packed.extend(lent.packed);
    }

    pub(super) fn install(&mut self, staged: Staged) {
        for (actor, p) in staged.0 {
            let Some(p) = p else {
                self.drop_actor(&actor);
                continue;
            };
            let replaced = self.actors.remove(&actor).is_some();
            if self.packed.insert(actor, p).is_none() && !replaced {
                self.ctx.metrics.actors.inc();
            }
        }
    }

    /// Copies of up to `max` actors from the `from`-th on (live ones first, then packed ones), and
    /// whether they are the last.
    pub(super) fn copy(&self, from: usize, max: usize) -> (Lent, bool) {
        let live = self.actors.len();
        let actors: Vec<_> = self
            .actors
            .iter()
            .skip(from)
            .take(max)
            .map(|(k, a)| (k.clone(), a.clone()))
            .collect();
        let rest = max - actors.len();
        let packed: Vec<_> = self
            .packed
            .iter()
            .skip(from.saturating_sub(live))
            .take(rest)
            .map(|(k, p)| (k.clone(), p.clone()))
            .collect();
        let end = from + actors.len() + packed.len() >= self.hosted();
        let lent = Lent {
            actors,
            packed,
            ..Lent::default()
        };
        (lent, end)
    }
}
