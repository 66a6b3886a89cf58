//! The actors' pending-work markers in the event stream (`P.ev.{shard}._pending.{kind}.{token}`):
//! written and purged as `host/marker.rs` decides, and read, all of a node's newly served shards
//! at once, when it starts serving them (`outbox::resume_pending`).

use super::EventStore;
use crate::error::{Error, Result};
use aether_core::protocol::ActorRef;
use async_nats::jetstream;
use futures::StreamExt;
use std::time::Duration;

/// Markers [`EventStore::pending`] hands over at once.
pub const MARKER_BATCH: usize = 4096;
/// Longest wait for the next marker while reading them.
const MARKER_WAIT: Duration = Duration::from_secs(10);
/// How soon the reader asks again when a fetch found no marker and the server says some are left.
const MARKER_IDLE: Duration = Duration::from_millis(50);

impl EventStore {
    /// Writes `actor`'s pending-work marker (see [`Names::pending_subject`]): the earliest time it
    /// needs a look, in ms since the Unix epoch (`0`: at once). With `replace`, the markers before
    /// it are purged once it is stored (a crash between leaves two; the last one counts).
    pub async fn mark_pending(
        &self,
        shard: u32,
        actor: &ActorRef,
        look: u64,
        replace: bool,
    ) -> Result<()> {
        let subject = self.names.pending_subject(shard, actor);
        self.js
            .publish(subject.clone(), bytes::Bytes::from(look.to_string()))
            .await
            .map_err(|e| Error::Nats(format!("mark {subject}: {e}")))?
            .await
            .map_err(|e| Error::Nats(format!("mark {subject}: {e}")))?;
        if replace {
            self.stream
                .purge()
                .filter(&subject)
                .keep(1)
                .await
                .map_err(|e| Error::Nats(format!("mark {subject}: {e}")))?;
        }
        Ok(())
    }

    /// Removes `actor`'s pending-work marker; idempotent.
    pub async fn clear_pending(&self, shard: u32, actor: &ActorRef) -> Result<()> {
        let subject = self.names.pending_subject(shard, actor);
        self.stream
            .purge()
            .filter(&subject)
            .await
            .map_err(|e| Error::Nats(format!("clear {subject}: {e}")))?;
        Ok(())
    }

    /// The pending-work markers of the shards `wanted` says: each actor marked, with its shard and
    /// the time it needs a look (a marker that does not read as one, such as an older node's `1`,
    /// says "at once"), handed to `batch` [`MARKER_BATCH`] at a time; whatever the number of
    /// markers. One consumer over every marker (a subject left with two by a crash between a write
    /// and its purge hands both: the earlier look costs an early load, nothing more), deleted when
    /// read. Not "the last per subject": such a consumer stops delivering the rest once markers it
    /// was to deliver are purged while it reads, and counts them as pending for good.
    pub async fn pending(
        &self,
        wanted: impl Fn(u32) -> bool,
        mut batch: impl FnMut(Vec<(u32, ActorRef, u64)>),
    ) -> Result<usize> {
        let failed = |e: &dyn std::fmt::Display| Error::Nats(format!("pending work: {e}"));
        let mut consumer = self
            .stream
            .create_consumer(jetstream::consumer::pull::Config {
                filter_subject: self.names.pending_filter(),
                deliver_policy: jetstream::consumer::DeliverPolicy::All,
                ack_policy: jetstream::consumer::AckPolicy::None,
                memory_storage: true,
                // Gone by itself if this node dies while reading.
                inactive_threshold: MARKER_WAIT,
                ..Default::default()
            })
            .await
            .map_err(|e| failed(&e))?;
        let name = consumer.info().await.map_err(|e| failed(&e))?.name.clone();
        let read = self.read_markers(&mut consumer, wanted, &mut batch).await;
        // Deleted whatever the outcome: reading leaves no consumer behind.
        let _ = self.stream.delete_consumer(&name).await;
        read
    }

    async fn read_markers(
        &self,
        consumer: &mut jetstream::consumer::PullConsumer,
        wanted: impl Fn(u32) -> bool,
        batch: &mut impl FnMut(Vec<(u32, ActorRef, u64)>),
    ) -> Result<usize> {
        let failed = |e: &dyn std::fmt::Display| Error::Nats(format!("pending work: {e}"));
        let total = consumer.cached_info().num_pending;
        let mut found = 0;
        if total == 0 {
            return Ok(0);
        }
        // Fetches that answer what is there at once (no pull left waiting for markers purged
        // since the read began), until one answers nothing after markers came: the consumer has
        // reached the end of the stream. Markers written after the read began are their writers'
        // (the shards' owners) to index; a node reads only shards it already serves. Before any
        // marker came, an empty answer ends the read only once the server says none are left.
        let mut read = 0u64;
        let mut idle = Duration::ZERO;
        let mut out = Vec::with_capacity(MARKER_BATCH);
        loop {
            let mut messages = consumer
                .fetch()
                .max_messages(MARKER_BATCH)
                .messages()
                .await
                .map_err(|e| failed(&e))?;
            let mut got = 0;
            while let Some(m) = messages.next().await {
                let m = m.map_err(|e| failed(&e))?;
                got += 1;
                if let Some((shard, actor)) = self.names.pending_actor(&m.subject)
                    && wanted(shard)
                {
                    let look = std::str::from_utf8(&m.payload)
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                        .unwrap_or(0);
                    out.push((shard, actor, look));
                    found += 1;
                }
            }
            if !out.is_empty() {
                batch(std::mem::replace(
                    &mut out,
                    Vec::with_capacity(MARKER_BATCH),
                ));
            }
            read += got;
            // Markers written meanwhile may be read too; never more than twice what the stream held.
            if read > total.saturating_mul(2) {
                break;
            }
            if got > 0 {
                idle = Duration::ZERO;
                continue;
            }
            if read > 0 {
                break;
            }
            let left = consumer.info().await.map_err(|e| failed(&e))?.num_pending;
            if left == 0 {
                break;
            }
            idle += MARKER_IDLE;
            if idle >= MARKER_WAIT {
                return Err(failed(&format!(
                    "no marker within {MARKER_WAIT:?} after {read} of {total}, {left} still pending"
                )));
            }
            tokio::time::sleep(MARKER_IDLE).await;
        }
        Ok(found)
    }
}
