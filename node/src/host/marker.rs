//! An actor's pending-work marker (`P.ev.{shard}._pending.{kind}.{token}`), pure: what to write
//! around one record. The marker holds the earliest time the actor needs a look (`0`: at once,
//! it has sends to deliver or releases owed; else its earliest timer's due time), never later
//! than that, whether the record lands or not; a node that starts serving the shard indexes the
//! markers and loads no actor before its time. `store.rs` writes what this decides.

use crate::store::Record;
use aether_core::timers::{self, Timer};

/// A marker this much earlier than the actor's next look, a look this far from now, is moved on
/// once a record lands, so a node taking the shard does not load actors long before they are
/// due; a closer one is left (a periodic timer of a minute or less rewrites nothing when it fires,
/// nor does the catch-up after an outage of a timer that is due again within a minute).
pub const MARKER_SLACK_MS: u64 = 60_000;

/// The marker as the actor knows it: `None`, none; `Some(t)`, one saying `t`
/// ([`UNKNOWN`] when read from the log: there is one, its time is not known).
pub type Marker = Option<u64>;

/// A marker there is, whose time is not known (the actor was loaded from the log).
pub const UNKNOWN: u64 = u64::MAX;

/// When an actor needs a look: at once (`0`) while its outbox holds sends (to deliver, or
/// delivered and owed a release), else at its earliest timer; `None`: nothing pending.
#[must_use]
pub fn look(outbox: bool, timers: &[Timer]) -> Option<u64> {
    if outbox {
        Some(0)
    } else {
        timers.iter().map(|t| t.due).min()
    }
}

/// [`look`] once `record` landed on an actor whose timers are `timers`; `outbox`: whether its
/// outbox holds anything after the record's releases (its sends are counted here).
#[must_use]
pub fn look_after(outbox: bool, timers: &[Timer], record: &Record) -> Option<u64> {
    if outbox || !record.send.is_empty() {
        return Some(0);
    }
    if record.timers.is_empty() && record.cancel.is_empty() {
        return look(false, timers);
    }
    let mut after = timers.to_vec();
    timers::apply(&mut after, &record.timers, &record.cancel);
    look(false, &after)
}

/// The marker's writes around one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Writes {
    /// Written before the record is appended: the record may land or not, so it says the
    /// earlier of the two looks.
    pub before: Option<u64>,
    /// Once the record landed.
    pub after: After,
}

/// The marker's write once the record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Left as it is.
    Keep,
    /// Removed: the actor has nothing pending.
    Clear,
    /// Moved on to the actor's next look ([`MARKER_SLACK_MS`] or more after what it said).
    Set(u64),
}

/// The writes around a record that takes the actor's look from `before` to `after`, with the
/// marker as it is at `now`.
#[must_use]
pub fn writes(marker: Marker, before: Option<u64>, after: Option<u64>, now: u64) -> Writes {
    let first = match after {
        Some(a) if marker.is_none_or(|m| m > a) => Some(a.min(before.unwrap_or(u64::MAX))),
        _ => None,
    };
    let after = match (first.or(marker), after) {
        (Some(_), None) => After::Clear,
        (Some(held), Some(a)) if a >= held.max(now).saturating_add(MARKER_SLACK_MS) => {
            After::Set(a)
        }
        _ => After::Keep,
    };
    Writes {
        before: first,
        after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIN: u64 = MARKER_SLACK_MS;

    #[test]
    fn the_common_records() {
        let keep = |before| Writes {
            before,
            after: After::Keep,
        };
        // The first timer of an actor: marked before it lands.
        assert_eq!(writes(None, None, Some(5 * MIN), 0), keep(Some(5 * MIN)));
        // A periodic timer under a minute fires: nothing written.
        assert_eq!(
            writes(Some(100), Some(100), Some(100 + 10_000), 100),
            keep(None)
        );
        // A daily one fires: moved on once the firing landed.
        let day = 24 * 60 * MIN;
        assert_eq!(
            writes(Some(100), Some(100), Some(100 + day), 100).after,
            After::Set(100 + day)
        );
        // After an outage of ten minutes, a timer due again within the minute: left as it is.
        assert_eq!(
            writes(Some(100), Some(100), Some(10 * MIN + 100), 10 * MIN),
            keep(None)
        );
        // Its last one-shot timer fires: removed once it landed.
        assert_eq!(writes(Some(100), Some(100), None, 100).after, After::Clear);
        // A send from an actor with a timer tomorrow: at once, before the record.
        assert_eq!(writes(Some(day), Some(day), Some(0), 0), keep(Some(0)));
        // Loaded from the log (the marker's time unknown), a timer replaced by a later one: the
        // marker says the earlier, in case the record does not land.
        assert_eq!(
            writes(Some(UNKNOWN), Some(MIN), Some(2 * MIN), 0).before,
            Some(MIN)
        );
        // Nothing pending before or after: nothing.
        assert_eq!(writes(None, None, None, 0), keep(None));
    }

    proptest! {
        /// Whatever the record and whether it lands: the marker never says later than the
        /// actor's look, and is there exactly when the actor has something pending.
        #[test]
        fn the_marker_is_never_late(
            marker in proptest::option::of(prop_oneof![0..200u64, Just(UNKNOWN)]),
            before in proptest::option::of(0..200u64),
            after in proptest::option::of(0..200u64),
            lands: bool,
            now in 0..400u64,
        ) {
            // The marker as it is kept: there, and not later than the look, while one is pending.
            prop_assume!(before.is_none() || marker.is_some_and(|m| m == UNKNOWN || m <= before.unwrap_or(0)));
            let w = writes(marker.map(|m| if m == UNKNOWN { m } else { m * 1_000 }), before.map(|b| b * 1_000), after.map(|a| a * 1_000), now * 1_000);
            let mut held = marker.map(|m| if m == UNKNOWN { m } else { m * 1_000 });
            if let Some(t) = w.before {
                held = Some(t);
            }
            let (look, held) = if lands {
                match w.after {
                    After::Keep => {}
                    After::Clear => held = None,
                    After::Set(t) => held = Some(t),
                }
                (after.map(|a| a * 1_000), held)
            } else {
                (before.map(|b| b * 1_000), held)
            };
            if let Some(l) = look {
                prop_assert!(held.is_some_and(|h| h == UNKNOWN && marker == Some(UNKNOWN) || h <= l), "{held:?} later than {l}");
            }
            if lands && look.is_none() && held.is_some() {
                prop_assert!(false, "a marker left with nothing pending");
            }
        }
    }
}
