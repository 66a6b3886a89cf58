//! Large replies (over [`LARGE_REPLY_BYTES`], a big actor's state), so that a hot big actor does
//! not stall its neighbours (issue 28; `make bench`'s "A hot actor's neighbours"):
//! - [`Encoded`]: encoded once. The last few plain reads with a large reply keep their bytes, and
//!   a read of the same actor at the same state (the very state the worker shares, not only the same
//!   version) is answered with them: a reference count per read, not an encoding of the whole state.
//! - [`Lane`]: sent on the bulk connection one at a time, each flushed before the next, at most
//!   `--large-reply-rate` bytes per second: a large reply never queues in front of another actor's
//!   small one in the node's socket, and large replies take the node's bandwidth and the NATS
//!   server's time only up to that rate (as a byte-rate quota does), leaving the rest to the others.

use aether_core::protocol::{ActorRef, ActorReply, Outcome, Reply, encode};
use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// A reply larger than this is a large reply.
pub const LARGE_REPLY_BYTES: usize = 64 * 1024;

/// How far ahead of its rate the lane may run (a burst of large replies sent at once).
const BURST: Duration = Duration::from_millis(5);

/// The turn of large replies (see the module's documentation).
#[derive(Debug)]
pub struct Lane {
    /// When the bytes sent so far are paid for at the rate; held by the reply being sent.
    paid_until: tokio::sync::Mutex<Instant>,
    bytes_per_sec: u64,
}

impl Lane {
    /// A lane of at most `bytes_per_sec` (at least 1).
    #[must_use]
    pub fn new(bytes_per_sec: u64) -> Self {
        Self {
            paid_until: tokio::sync::Mutex::new(Instant::now()),
            bytes_per_sec: bytes_per_sec.max(1),
        }
    }

    /// Sends `len` bytes by `send` in its turn, then waits until the rate allows the next beyond
    /// the burst.
    pub async fn send<T>(&self, len: usize, send: impl Future<Output = T>) -> T {
        let mut paid = self.paid_until.lock().await;
        let out = send.await;
        let now = Instant::now();
        *paid = (*paid).max(now) + Duration::from_secs_f64(len as f64 / self.bytes_per_sec as f64);
        if let Some(ahead) = paid.checked_duration_since(now + BURST) {
            tokio::time::sleep(ahead).await;
        }
        out
    }
}

/// Large replies kept (one per actor, the most recently read first).
const KEPT: usize = 8;

/// The encoded large read replies (see the module's documentation).
#[derive(Debug, Default)]
pub struct Encoded {
    kept: Mutex<VecDeque<(ActorRef, ActorReply, bytes::Bytes)>>,
}

impl Encoded {
    fn kept(&self) -> MutexGuard<'_, VecDeque<(ActorRef, ActorReply, bytes::Bytes)>> {
        // Poisoned only by a panic elsewhere; the list is still whole.
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The bytes of `reply` to a plain read of `actor`: the kept ones if `reply` is what they
    /// encode, else `reply` encoded (and kept if large); `None` for a reply of another kind.
    pub fn bytes(&self, actor: &ActorRef, reply: &Reply) -> Option<bytes::Bytes> {
        let Outcome::Ok(ok) = &reply.outcome else {
            return None;
        };
        if ok.reply.is_some() {
            return None;
        }
        {
            let mut kept = self.kept();
            if let Some(i) = kept.iter().position(|(a, _, _)| a == actor) {
                if same(&kept[i].1, ok) {
                    let hit = kept.remove(i).unwrap_or_else(|| unreachable!());
                    let bytes = hit.2.clone();
                    kept.push_front(hit);
                    return Some(bytes);
                }
                kept.remove(i);
            }
        }
        let bytes = encode(reply).map(bytes::Bytes::from).ok()?;
        if bytes.len() > LARGE_REPLY_BYTES {
            let mut kept = self.kept();
            kept.retain(|(a, _, _)| a != actor);
            kept.push_front((actor.clone(), ok.clone(), bytes.clone()));
            kept.truncate(KEPT);
        }
        Some(bytes)
    }
}

/// Whether two replies encode alike: the same state (one shared value), version, node and timers.
fn same(a: &ActorReply, b: &ActorReply) -> bool {
    a.version == b.version
        && a.state.ptr_eq(&b.state)
        && a.node == b.node
        && a.timers == b.timers
        && a.reply.is_none()
        && b.reply.is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aether_core::protocol::SharedJson;
    use serde_json::json;

    fn read(state: &SharedJson, version: u64) -> Reply {
        Reply::ok(ActorReply {
            version,
            state: state.clone(),
            node: "app-0".into(),
            reply: None,
            timers: Vec::new(),
        })
    }

    fn bytes(b: &Option<bytes::Bytes>) -> &bytes::Bytes {
        b.as_ref().expect("a plain read's reply is encoded")
    }

    #[tokio::test(start_paused = true)]
    async fn the_lane_sends_one_at_a_time_at_its_rate() {
        let lane = std::sync::Arc::new(Lane::new(1_000_000));
        let start = Instant::now();
        let in_turn = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let sends = (0..10).map(|_| {
            let (lane, in_turn) = (lane.clone(), in_turn.clone());
            async move {
                lane.send(100_000, async {
                    assert_eq!(in_turn.fetch_add(1, std::sync::atomic::Ordering::SeqCst), 0);
                    tokio::task::yield_now().await;
                    in_turn.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                })
                .await;
            }
        });
        futures::future::join_all(sends).await;
        // A megabyte at a megabyte per second, less the burst the lane may run ahead.
        assert_eq!(start.elapsed(), Duration::from_secs(1) - BURST);
    }

    #[test]
    fn a_large_read_is_encoded_once_per_state() {
        let enc = Encoded::default();
        let actor = ActorRef::new("doc", "hot");
        let big = SharedJson::from(json!({"k": "x".repeat(LARGE_REPLY_BYTES)}));
        let first = enc.bytes(&actor, &read(&big, 3));
        let again = enc.bytes(&actor, &read(&big, 3));
        // The same bytes, not an equal copy.
        assert_eq!(bytes(&first).as_ptr(), bytes(&again).as_ptr());
        // An equal state that is another value (a reload), or another version: encoded anew, and
        // what it encodes is that reply.
        let reloaded = SharedJson::from(json!({"k": "y".repeat(LARGE_REPLY_BYTES)}));
        let after = enc.bytes(&actor, &read(&reloaded, 3));
        assert_ne!(bytes(&after).as_ptr(), bytes(&first).as_ptr());
        assert!(std::str::from_utf8(bytes(&after)).is_ok_and(|s| s.contains("yyyy")));
        let next = enc.bytes(&actor, &read(&reloaded, 4));
        assert_ne!(bytes(&next).as_ptr(), bytes(&after).as_ptr());
        // A small read is encoded each time and not kept.
        let small = SharedJson::from(json!({"n": 1}));
        let a = enc.bytes(&ActorRef::new("counter", "c"), &read(&small, 1));
        let b = enc.bytes(&ActorRef::new("counter", "c"), &read(&small, 1));
        assert_ne!(bytes(&a).as_ptr(), bytes(&b).as_ptr());
        assert_eq!(enc.kept().len(), 1);
    }
}
