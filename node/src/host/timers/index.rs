//! The shard's look index: for every actor of the shard with pending work (timers, or sends to
//! resume), the earliest time the worker must look at it, whether the actor is in memory or not.
//! Pure and compact: a million entries take about 50 bytes each (the actor's id once, in one
//! arena; a 16-byte slot; a 4-byte hash-table entry; a 16-byte heap entry), so a node can hold
//! every pending timer of its shards without holding their actors.
//!
//! Entries are kept in a heap ordered by look time; changing an actor's look pushes a new entry
//! and leaves the old one behind, stale (its time no longer the slot's), skipped when it surfaces
//! and dropped when stale entries outnumber live ones.

use aether_core::protocol::ActorRef;
use hashbrown::HashTable;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hash::BuildHasher;

/// A free slot's look time.
const FREE: u64 = u64::MAX;
/// Stale heap entries and unused id bytes tolerated before they are cleaned up (small in tests,
/// so that the clean-ups run there).
const SLACK: usize = if cfg!(test) { 4 } else { 4096 };

/// One actor: where its id is in the arena, its kind, its look time.
#[derive(Debug, Clone, Copy)]
struct Slot {
    look: u64,
    at: u32,
    len: u16,
    kind: u16,
}

/// When to look at each actor of a shard with pending work.
#[derive(Debug, Default)]
pub struct LookIndex {
    /// Kinds by number (a slot names its kind by position).
    kinds: Vec<String>,
    /// Every id, back to back.
    ids: String,
    /// Bytes of `ids` no slot uses any more.
    garbage: usize,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// The slot of each actor, hashed by kind and id.
    table: HashTable<u32>,
    hasher: std::hash::RandomState,
    heap: BinaryHeap<Reverse<(u64, u32)>>,
    live: usize,
}

impl LookIndex {
    fn hash(&self, kind: u16, id: &str) -> u64 {
        self.hasher.hash_one((kind, id))
    }

    fn id(&self, s: &Slot) -> &str {
        &self.ids[s.at as usize..s.at as usize + usize::from(s.len)]
    }

    fn kind_no(&self, kind: &str) -> Option<u16> {
        self.kinds
            .iter()
            .position(|k| k == kind)
            .and_then(|i| u16::try_from(i).ok())
    }

    fn find(&self, actor: &ActorRef) -> Option<u32> {
        let kind = self.kind_no(&actor.kind)?;
        let h = self.hash(kind, &actor.id);
        self.table
            .find(h, |&i| {
                let s = &self.slots[i as usize];
                s.kind == kind && self.id(s) == actor.id
            })
            .copied()
    }

    /// When `actor` is to be looked at, if the index holds it.
    #[must_use]
    pub fn look_of(&self, actor: &ActorRef) -> Option<u64> {
        self.find(actor).map(|i| self.slots[i as usize].look)
    }

    /// Sets when to look at `actor` (`None`: never, it has nothing pending); the change in the
    /// number of actors held (-1, 0 or 1). An actor whose id or kind the index cannot hold (over
    /// 65,535 bytes, or over 65,535 kinds) is not indexed (-0): it is looked at when loaded.
    pub fn set(&mut self, actor: &ActorRef, look: Option<u64>) -> i64 {
        let found = self.find(actor);
        match (found, look) {
            (None, None) => 0,
            (Some(i), None) => {
                self.remove(i);
                -1
            }
            (Some(i), Some(t)) => {
                if self.slots[i as usize].look != t {
                    self.slots[i as usize].look = t;
                    self.push(t, i);
                }
                0
            }
            (None, Some(t)) => i64::from(self.insert(actor, t)),
        }
    }

    fn insert(&mut self, actor: &ActorRef, look: u64) -> bool {
        let Ok(len) = u16::try_from(actor.id.len()) else {
            return false;
        };
        let kind = match self.kind_no(&actor.kind) {
            Some(k) => k,
            None => match u16::try_from(self.kinds.len()) {
                Ok(k) if k < u16::MAX => {
                    self.kinds.push(actor.kind.clone());
                    k
                }
                _ => return false,
            },
        };
        if self.ids.len() + actor.id.len() > u32::MAX as usize {
            self.compact_ids();
            if self.ids.len() + actor.id.len() > u32::MAX as usize {
                return false;
            }
        }
        let at = self.ids.len() as u32;
        self.ids.push_str(&actor.id);
        let slot = Slot {
            look,
            at,
            len,
            kind,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        };
        let h = self.hash(kind, &actor.id);
        let (slots, ids, hasher) = (&self.slots, &self.ids, &self.hasher);
        self.table.insert_unique(h, i, |&j| {
            let s = &slots[j as usize];
            hasher.hash_one((
                s.kind,
                &ids[s.at as usize..s.at as usize + usize::from(s.len)],
            ))
        });
        self.live += 1;
        self.push(look, i);
        true
    }

    fn remove(&mut self, i: u32) {
        let s = self.slots[i as usize];
        let h = self.hash(s.kind, self.id(&s));
        if let Ok(entry) = self.table.find_entry(h, |&j| j == i) {
            entry.remove();
        }
        self.slots[i as usize].look = FREE;
        self.free.push(i);
        self.garbage += usize::from(s.len);
        self.live -= 1;
        if self.garbage > SLACK && self.garbage > self.ids.len() / 2 {
            self.compact_ids();
        }
    }

    fn push(&mut self, look: u64, i: u32) {
        self.heap.push(Reverse((look, i)));
        // Stale entries outnumber live ones: rebuilt from the slots.
        if self.heap.len() > 2 * self.live + SLACK {
            self.heap = self
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.look != FREE)
                .map(|(i, s)| Reverse((s.look, i as u32)))
                .collect();
        }
    }

    /// The ids again back to back, without the removed ones.
    fn compact_ids(&mut self) {
        let mut ids = String::with_capacity(self.ids.len() - self.garbage);
        for s in self.slots.iter_mut().filter(|s| s.look != FREE) {
            let at = ids.len() as u32;
            ids.push_str(&self.ids[s.at as usize..s.at as usize + usize::from(s.len)]);
            s.at = at;
        }
        self.ids = ids;
        self.garbage = 0;
    }

    /// Drops stale entries from the heap's top.
    fn settle(&mut self) {
        while let Some(Reverse((t, i))) = self.heap.peek().copied() {
            if self.slots[i as usize].look == t {
                return;
            }
            self.heap.pop();
        }
    }

    /// The earliest look time held.
    pub fn next(&mut self) -> Option<u64> {
        self.settle();
        self.heap.peek().map(|Reverse((t, _))| *t)
    }

    /// The actor with the earliest look time, if it is `now` or earlier, moved to `retry_at` (set
    /// again once the look landed).
    pub fn take_next(&mut self, now: u64, retry_at: u64) -> Option<ActorRef> {
        self.settle();
        let Reverse((t, i)) = *self.heap.peek()?;
        if t > now {
            return None;
        }
        self.heap.pop();
        let s = self.slots[i as usize];
        let actor = ActorRef::new(
            self.kinds[usize::from(s.kind)].clone(),
            self.id(&s).to_owned(),
        );
        self.slots[i as usize].look = retry_at;
        self.heap.push(Reverse((retry_at, i)));
        Some(actor)
    }

    /// Up to `max` of [`LookIndex::take_next`], earliest first.
    #[cfg(test)]
    pub fn take_due(&mut self, now: u64, max: usize, retry_at: u64) -> Vec<ActorRef> {
        std::iter::from_fn(|| self.take_next(now, retry_at))
            .take(max)
            .collect()
    }

    /// Actors held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.live
    }

    /// Bytes the index has allocated (its capacities, not only what is used).
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.ids.capacity()
            + self.slots.capacity() * size_of::<Slot>()
            + self.free.capacity() * size_of::<u32>()
            + self.table.allocation_size()
            + self.heap.capacity() * size_of::<Reverse<(u64, u32)>>()
            + self.kinds.iter().map(String::capacity).sum::<usize>()
    }
}

#[cfg(test)]
#[path = "index_tests.rs"]
mod tests;
