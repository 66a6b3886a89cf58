//! The shard hash: the first step of every message's route (`actor id -> shard -> owner`).
//!
//! `shard(actor_id) = XXH3-64(utf8 bytes of actor_id, seed 0) mod shards`. XXH3 is specified, fast on
//! short keys and implemented in every mainstream language, so a client anywhere computes the same shard;
//! `docs/PROTOCOL.md` lists test vectors that `tests/protocol_doc.rs` checks against this code.

use xxhash_rust::xxh3::xxh3_64;

/// Most shards a ShardPlan can have (the shard map stores a bucket per shard).
pub const MAX_SHARDS: u32 = 65_536;

/// The 64-bit hash of an actor id, before the reduction to a shard.
#[inline]
#[must_use]
pub fn actor_hash(actor_id: &str) -> u64 {
    xxh3_64(actor_id.as_bytes())
}

/// The shard of an actor. `shards` is at least 1 (validated with the spec); 0 maps everything to 0
/// rather than panicking.
#[inline]
#[must_use]
pub fn shard_of(actor_id: &str, shards: u32) -> u32 {
    // `checked_rem` keeps a zero from a corrupt plan from being a division panic on the hot path.
    actor_hash(actor_id)
        .checked_rem(u64::from(shards))
        .unwrap_or(0) as u32
}

/// splitmix64's finaliser: a bijective mix with full avalanche, used for AnchorHash's second level.
#[inline]
#[must_use]
pub const fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Lemire's multiply-shift reduction of a 64-bit hash into `0..n`, unbiased enough for placement and
/// cheaper than a division.
#[inline]
#[must_use]
pub const fn reduce(hash: u64, n: u32) -> u32 {
    ((hash as u128 * n as u128) >> 64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_is_within_range_and_stable() {
        for shards in [1, 7, 1024, MAX_SHARDS] {
            for id in ["", "a", "counter/42", "ünïcödé", "x".repeat(300).as_str()] {
                let s = shard_of(id, shards);
                assert!(s < shards);
                assert_eq!(s, shard_of(id, shards));
            }
        }
        assert_eq!(shard_of("anything", 0), 0);
    }

    #[test]
    fn reduce_stays_in_range() {
        for n in [1u32, 2, 3, 1000, u32::MAX] {
            for h in [0u64, 1, u64::MAX / 2, u64::MAX] {
                assert!(reduce(h, n) < n);
            }
        }
    }
}
