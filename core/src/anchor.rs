//! AnchorHash (Mendelson et al., IEEE/ACM ToN 2021), the consistent hash that maps shards to member
//! buckets with minimal disruption: removing a bucket moves only its shards, adding one moves only the
//! shards it takes, and a bucket added after a removal is the removed one, with exactly its shards.
//!
//! Written here rather than taken from the `anchorhash` crate (which stays a test oracle) because the
//! crate hides bucket ids and cannot be serialised, and because its second-level hash (FNV seeded with the
//! key) makes loads measurably less even than random (see ../../README.md, "Placement"). Two changes
//! over the paper, both preserving its minimal-disruption proofs, which never depend on the hash values:
//! - keys are shard numbers `0..S`, not random: the first level is `shard mod capacity`, exactly even;
//! - the second level is `reduce(mix64(shard << 32 | bucket) ^ SEED, A[b])`: an independent,
//!   well-mixed hash per (shard, bucket).
//!
//! The state is a pure function of the stack of removed buckets, because adding a bucket undoes the most
//! recent removal exactly. So [`AnchorState`] (capacity plus that stack, compacted) rebuilds the very
//! same table in any process.

use crate::error::{Error, Result};
use crate::hash::{mix64, reduce};
use crate::shardmap::PackedU16;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Most buckets an AnchorHash can hold; bucket ids fit in a u16 below [`crate::shardmap::UNASSIGNED`].
pub const MAX_CAPACITY: u32 = 65_535;

/// Fixed seed of the second-level hash ("aether" in ASCII); part of the placement's definition.
pub const SEED: u64 = 0x6165_7468_6572_0000;

/// The persisted form of an AnchorHash: enough to rebuild it exactly after an operator restart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnchorState {
    /// Number of buckets (`spec.capacity`).
    pub capacity: u32,
    /// Buckets `freshFrom..capacity` have never been used; they sit at the bottom of the removal stack.
    pub fresh_from: u32,
    /// Buckets removed after use, oldest first (base64 of little-endian u16).
    pub removed: PackedU16,
}

/// A live AnchorHash table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Anchor {
    /// `a[b] == 0` for a working bucket; otherwise the working-set size right after `b` was removed.
    a: Vec<u32>,
    /// Successor of a removed bucket (the bucket that took its place in `w`).
    k: Vec<u32>,
    /// Working buckets in positions `0..n`.
    w: Vec<u32>,
    /// Position of each bucket in `w`.
    l: Vec<u32>,
    /// Removed buckets, most recent last.
    r: Vec<u32>,
    /// Working-set size.
    n: u32,
}

impl Anchor {
    /// An empty table of `capacity` buckets: every bucket removed, bucket 0 first in line to be added.
    pub fn new(capacity: u32) -> Result<Self> {
        Self::with_working(capacity, 0)
    }

    /// The paper's `INITANCHOR(a, w)`: buckets `0..working` are working, the rest removed in
    /// descending order, which equals removing `capacity-1, ..., working` one by one.
    fn with_working(capacity: u32, working: u32) -> Result<Self> {
        if capacity == 0 || capacity > MAX_CAPACITY {
            return Err(Error::InvalidCapacity {
                got: capacity.into(),
                max: MAX_CAPACITY,
            });
        }
        if working > capacity {
            return Err(Error::CorruptState(format!(
                "freshFrom {working} exceeds capacity {capacity}"
            )));
        }
        let ids: Vec<u32> = (0..capacity).collect();
        let mut a = vec![0; capacity as usize];
        for b in working..capacity {
            a[b as usize] = b;
        }
        Ok(Self {
            a,
            k: ids.clone(),
            w: ids.clone(),
            l: ids,
            r: (working..capacity).rev().collect(),
            n: working,
        })
    }

    /// Rebuilds the table a previous [`Anchor::state`] described.
    pub fn restore(state: &AnchorState) -> Result<Self> {
        let mut anchor = Self::with_working(state.capacity, state.fresh_from)?;
        for &b in &state.removed.0 {
            let b = u32::from(b);
            if b >= state.fresh_from || !anchor.is_working(b) {
                return Err(Error::CorruptState(format!(
                    "removed bucket {b} is not a working bucket below freshFrom {}",
                    state.fresh_from
                )));
            }
            anchor.remove(b);
        }
        Ok(anchor)
    }

    /// The compact persisted form of this table.
    #[must_use]
    pub fn state(&self) -> AnchorState {
        let capacity = self.capacity();
        // The stack bottom is the untouched run capacity-1, capacity-2, ...; everything above it is an
        // explicit removal. Replaying the stack from a full table gives this state, whichever split.
        let fresh = self
            .r
            .iter()
            .zip((0..capacity).rev())
            .take_while(|(b, want)| *b == want)
            .count();
        AnchorState {
            capacity,
            fresh_from: capacity - fresh as u32,
            removed: PackedU16(self.r[fresh..].iter().map(|&b| b as u16).collect()),
        }
    }

    /// Number of buckets.
    #[must_use]
    pub fn capacity(&self) -> u32 {
        self.a.len() as u32
    }

    /// Number of working buckets.
    #[must_use]
    pub fn working(&self) -> u32 {
        self.n
    }

    /// True when `bucket` is in the working set.
    #[must_use]
    pub fn is_working(&self, bucket: u32) -> bool {
        (bucket as usize) < self.a.len() && self.l[bucket as usize] < self.n && {
            self.w[self.l[bucket as usize] as usize] == bucket
        }
    }

    /// Adds a bucket: the most recently removed one. `None` when all buckets are working.
    pub fn add(&mut self) -> Option<u32> {
        let b = self.r.pop()?;
        let bi = b as usize;
        self.a[bi] = 0;
        let last = self.w[self.n as usize] as usize;
        self.l[last] = self.n;
        self.w[self.l[bi] as usize] = b;
        self.k[bi] = b;
        self.n += 1;
        Some(b)
    }

    /// Removes a working bucket; returns false (and changes nothing) when it is not working.
    pub fn remove(&mut self, bucket: u32) -> bool {
        if !self.is_working(bucket) {
            return false;
        }
        let bi = bucket as usize;
        self.r.push(bucket);
        self.n -= 1;
        self.a[bi] = self.n;
        let last = self.w[self.n as usize];
        self.w[self.l[bi] as usize] = last;
        self.l[last as usize] = self.l[bi];
        self.k[bi] = last;
        true
    }

    /// The bucket of shard `shard`, or `None` when no bucket is working.
    #[inline]
    #[must_use]
    pub fn bucket_of(&self, shard: u32) -> Option<u32> {
        if self.n == 0 {
            return None;
        }
        let capacity = self.capacity();
        let mut b = shard % capacity;
        // Shards are the known keys 0..S, not random ones: deal each class of shards that took the same
        // path so far round-robin (from a per-path offset) over the buckets that were working when the
        // class's bucket was removed. The first class of bucket b is b, b + a, b + 2a, ...: `index` is a
        // shard's rank inside its class, and the shards that land on one bucket form a class again, with
        // consecutive ranks. Loads stay within a shard or two of even until classes shrink to single
        // shards, which then spread like a random hash.
        // Ranks stay below 65,536 and offsets below capacity, so u32 arithmetic cannot overflow.
        let mut index = shard / capacity;
        let mut path = mix64(SEED ^ u64::from(b));
        // With n >= 1 every removed bucket has a[b] >= 1, so a[b] == 0 means working.
        while self.a[b as usize] > 0 {
            let ab = self.a[b as usize];
            let pos = index + reduce(path, ab);
            index = pos / ab;
            let mut h = pos % ab;
            while self.a[h as usize] >= ab {
                h = self.k[h as usize];
            }
            b = h;
            path = mix64(path ^ u64::from(b));
        }
        Some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_undoes_the_last_remove_exactly() {
        let mut t = Anchor::with_working(16, 10).expect("valid");
        let before = t.clone();
        assert!(t.remove(3));
        assert_eq!(t.add(), Some(3));
        assert_eq!(t, before);
    }

    #[test]
    fn state_round_trips() {
        let mut t = Anchor::new(8).expect("valid");
        for _ in 0..6 {
            t.add();
        }
        t.remove(2);
        t.remove(5);
        t.add();
        let back = Anchor::restore(&t.state()).expect("restores");
        assert_eq!(back, t);
    }

    #[test]
    fn corrupt_state_is_refused() {
        let bad = AnchorState {
            capacity: 4,
            fresh_from: 2,
            removed: PackedU16(vec![3]),
        };
        assert!(matches!(Anchor::restore(&bad), Err(Error::CorruptState(_))));
        let bad = AnchorState {
            capacity: 0,
            fresh_from: 0,
            removed: PackedU16(vec![]),
        };
        assert!(matches!(
            Anchor::restore(&bad),
            Err(Error::InvalidCapacity { .. })
        ));
    }

    #[test]
    fn empty_table_places_nothing() {
        let t = Anchor::new(4).expect("valid");
        assert_eq!(t.bucket_of(0), None);
    }
}
