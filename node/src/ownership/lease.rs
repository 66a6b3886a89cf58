//! The lease a node holds on serving: the pure rules. A node serves only while its lease is valid,
//! i.e. within [`LEASE`] of sending its last `held.{me}` write that landed (it rewrites the key every
//! [`RENEW_EVERY`]); once it lapsed, the node serves again only after a write lands and it has then
//! read the plan. So a pod whose last write is [`LEASE`] old serves nothing, and serves again only
//! by a plan at least as new as any written before that: a node that takes its shards by a newer
//! plan need not wait for it to say it holds that plan (docs/PROTOCOL.md, "Held").
//!
//! Times here are the NATS server's (the plan bucket's stream stamps each write), compared only with
//! each other and with the local time elapsed since: no two hosts' clocks are compared.

use std::time::Duration;

/// How long a node serves after sending a `held.{me}` write that landed.
pub const LEASE: Duration = Duration::from_secs(2);

/// How often a node rewrites `held.{me}`.
pub const RENEW_EVERY: Duration = Duration::from_millis(500);

/// Added to a lease when another node judges it lapsed: clock rates, the stamping server's lag.
pub const MARGIN: Duration = Duration::from_millis(250);

/// A pod's `held.{pod}` key as read: the epoch it holds, when the server stamped it (ms since the
/// Unix epoch) and the lease it says it keeps (`None`: a node of a version without leases).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeldSeen {
    pub epoch: u64,
    pub written_ms: u64,
    pub lease_ms: Option<u64>,
}

/// Whether a node that took plan `epoch` still waits for a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// The pod holds `epoch` or a later one.
    Held,
    /// Its lease has lapsed: it serves nothing until it has read a plan at least this new.
    Lapsed,
    /// Its lease may still run this much longer: read its key again then.
    For(Duration),
    /// Nothing says when it stops serving (no key, or one without a lease): the older rule
    /// applies (wait for it; for at most `LEAVERS_WAIT` if it left the plan).
    Unknown,
}

/// `seen`: the pod's key read after taking plan `epoch`; `now_ms`: a time (server's) no later than
/// now: the plan's stamp plus the local time elapsed since it was taken.
#[must_use]
pub fn wait(seen: Option<HeldSeen>, epoch: u64, now_ms: u64) -> Wait {
    let Some(s) = seen else { return Wait::Unknown };
    if s.epoch >= epoch {
        return Wait::Held;
    }
    let Some(lease_ms) = s.lease_ms else {
        return Wait::Unknown;
    };
    let ends = s
        .written_ms
        .saturating_add(lease_ms)
        .saturating_add(MARGIN.as_millis() as u64);
    match ends.checked_sub(now_ms) {
        Some(left) if left > 0 => Wait::For(Duration::from_millis(left)),
        _ => Wait::Lapsed,
    }
}

/// The node's own side: may it serve at `now`, given when its lease ends (`None`: never held).
#[must_use]
pub fn serving<T: PartialOrd>(now: T, until: Option<T>) -> bool {
    until.is_some_and(|u| now < u)
}

/// After a write sent at `sent` landed at `now`, with the lease ending at `until` before it: the new
/// end, and whether the plan must be read first (the lease lapsed: something newer may have been
/// planned meanwhile, and the node serves again only by it).
#[must_use]
pub fn renewed<T: PartialOrd + Copy + std::ops::Add<Duration, Output = T>>(
    sent: T,
    now: T,
    until: Option<T>,
) -> (T, bool) {
    (sent + LEASE, !serving(now, until))
}

#[cfg(test)]
mod tests {
    use super::*;

    const E: u64 = 7;

    fn seen(epoch: u64, written_ms: u64) -> Option<HeldSeen> {
        Some(HeldSeen {
            epoch,
            written_ms,
            lease_ms: Some(LEASE.as_millis() as u64),
        })
    }

    #[test]
    fn a_pod_is_waited_for_until_it_holds_the_plan_or_its_lease_lapsed() {
        let lease = (LEASE + MARGIN).as_millis() as u64;
        assert_eq!(wait(seen(E, 0), E, 0), Wait::Held);
        assert_eq!(wait(seen(E + 1, 0), E, 0), Wait::Held);
        // Written 10 s before the plan: lapsed at once.
        assert_eq!(wait(seen(E - 1, 1_000), E, 11_000), Wait::Lapsed);
        assert_eq!(wait(seen(E - 1, 1_000), E, 1_000 + lease), Wait::Lapsed);
        // Written just before: the rest of its lease.
        assert_eq!(
            wait(seen(E - 1, 1_000), E, 1_500),
            Wait::For(Duration::from_millis(lease - 500))
        );
        // No key, or a key without a lease: the older rule.
        assert_eq!(wait(None, E, 10_000), Wait::Unknown);
        let old = Some(HeldSeen {
            epoch: E - 1,
            written_ms: 0,
            lease_ms: None,
        });
        assert_eq!(wait(old, E, 60_000), Wait::Unknown);
    }

    #[test]
    fn a_node_serves_again_after_a_lapse_only_once_it_read_the_plan() {
        assert!(!serving(0u64, None));
        let s = |ms: u64| Duration::from_millis(ms);
        assert!(serving(s(10), Some(s(11))));
        assert!(!serving(s(11), Some(s(11))));
        // Renewed in time: no read of the plan needed.
        assert_eq!(
            renewed(s(100), s(110), Some(s(500))),
            (s(100) + LEASE, false)
        );
        // Lapsed before the write landed, or never held: read the plan first.
        assert_eq!(
            renewed(s(100), s(600), Some(s(500))),
            (s(100) + LEASE, true)
        );
        assert_eq!(renewed(s(100), s(110), None), (s(100) + LEASE, true));
    }
}
