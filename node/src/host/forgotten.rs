//! Which command ids an app kind's actor has forgotten while JetStream may still know them.
//!
//! An actor remembers its last [`RECENT_COMMANDS`](crate::store::RECENT_COMMANDS) command ids; the
//! event stream remembers every id it stored within its duplicate window (120 s by default). A
//! retry of an id in between would be decided again by the app and only then caught by the append.
//! So the worker keeps, per app actor, the hashes of the ids that left its list while the window
//! may still hold them (up to [`FORGOTTEN_MAX`]), and the time until which ids it cannot name may
//! (those forgotten before the actor was loaded or beyond the cap). A command id that is not
//! recent and that this says JetStream may know is first asked of the stream, without being
//! stored ([`EventStore::seen`](crate::store::EventStore::seen)); the app is called only when the
//! stream does not know it. Pure: the caller passes the clock.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

/// Most forgotten ids an actor keeps the hash of (16 bytes each); beyond, any id it does not
/// remember is asked of the stream until the window has passed.
pub const FORGOTTEN_MAX: usize = 4096;

/// An app actor's forgotten command ids that JetStream's duplicate window may still hold.
#[derive(Clone, Debug, Default)]
pub struct Forgotten {
    /// Hashes of forgotten ids, with the time until which the window may hold each, oldest first.
    ids: VecDeque<(u64, Instant)>,
    /// Until when ids not in `ids` may still be in the window.
    unnamed_until: Option<Instant>,
}

impl Forgotten {
    /// An actor just loaded (from the log or a move) that remembers `recent` ids: when its list
    /// is full, ids it forgot earlier may be anywhere in the window from now on.
    #[must_use]
    pub fn loaded(recent: usize, full: usize, now: Instant, window: Duration) -> Option<Box<Self>> {
        (recent >= full).then(|| {
            Box::new(Self {
                ids: VecDeque::new(),
                unnamed_until: Some(now + window),
            })
        })
    }

    /// `id` left the actor's list at `now` (its record had landed before): the window holds it
    /// until `now + window` at the latest.
    pub fn forgot(&mut self, id: &str, now: Instant, window: Duration) {
        self.expire(now);
        self.ids.push_back((hash(id), now + window));
        while self.ids.len() > FORGOTTEN_MAX {
            if let Some((_, until)) = self.ids.pop_front() {
                self.unnamed_until = self.unnamed_until.max(Some(until));
            }
        }
    }

    /// Whether JetStream's window may still hold `id` (which the actor does not remember).
    #[must_use]
    pub fn may_hold(&self, id: &str, now: Instant) -> bool {
        if self.unnamed_until.is_some_and(|u| now < u) {
            return true;
        }
        let h = hash(id);
        self.ids.iter().any(|(x, until)| *x == h && now < *until)
    }

    /// Drops what the window no longer holds; `true` when nothing is left to keep.
    pub fn expire(&mut self, now: Instant) -> bool {
        while self.ids.front().is_some_and(|(_, until)| *until <= now) {
            self.ids.pop_front();
        }
        if self.unnamed_until.is_some_and(|u| u <= now) {
            self.unnamed_until = None;
        }
        self.ids.is_empty() && self.unnamed_until.is_none()
    }
}

/// A fixed hash (the same in every run): a collision only costs one question to the stream.
fn hash(id: &str) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    id.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const W: Duration = Duration::from_secs(120);

    #[test]
    fn an_actor_loaded_with_a_full_list_asks_for_every_unknown_id_until_the_window_passed() {
        let t0 = Instant::now();
        assert!(
            Forgotten::loaded(63, 64, t0, W).is_none(),
            "nothing forgotten yet"
        );
        let f = Forgotten::loaded(64, 64, t0, W).expect("a full list");
        assert!(f.may_hold("any", t0 + W - Duration::from_millis(1)));
        assert!(!f.may_hold("any", t0 + W));
    }

    #[test]
    fn beyond_the_cap_every_unknown_id_is_asked_for_as_long_as_the_dropped_ones_may_be_held() {
        let t0 = Instant::now();
        let mut f = Forgotten::default();
        for i in 0..=FORGOTTEN_MAX {
            f.forgot(&format!("c-{i}"), t0, W);
        }
        assert!(f.may_hold("never-seen", t0), "the oldest hash was dropped");
        assert!(!f.may_hold("never-seen", t0 + W));
    }

    proptest! {
        /// Every forgotten id is reported held for the whole window after it was forgotten (no
        /// retry within the window reaches the app), whatever was forgotten around it.
        #[test]
        fn a_forgotten_id_is_held_for_its_whole_window(
            gaps in prop::collection::vec(0u64..5_000, 1..300),
            probe in 0u64..130_000,
        ) {
            let t0 = Instant::now();
            let mut f = Forgotten::default();
            let mut at = t0;
            let mut forgotten = Vec::new();
            for (i, gap) in gaps.iter().enumerate() {
                at += Duration::from_millis(*gap);
                let id = format!("c-{i}");
                f.forgot(&id, at, W);
                forgotten.push((id, at));
            }
            let now = at + Duration::from_millis(probe);
            for (id, when) in &forgotten {
                if now < *when + W {
                    prop_assert!(f.may_hold(id, now), "{id} forgotten at {:?}", *when - t0);
                }
            }
            f.expire(now);
            prop_assert!(f.ids.iter().all(|(_, until)| now < *until));
        }
    }
}
