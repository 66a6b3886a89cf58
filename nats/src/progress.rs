//! Progress reports in JetStream: one subject per move (`{prefix}.progress.{epoch}.{shard}`), the
//! latest report of each kept, so a report survives whoever was not listening when it was sent (an
//! operator restarting or failing over, a node restarting) and anyone that starts reads where every
//! move stands. Nodes publish ([`report`]); the operator and every node follow ([`follow`]).

use crate::{Error, Result};
use aether_core::protocol::{Names, Progress, encode};
use async_nats::jetstream::{self, consumer, stream};
use std::time::Duration;

/// Moves whose latest report is kept: four plans of 65,536 shards. Older ones go first.
pub const KEPT: i64 = 4 * 65_536;

/// How long [`report`] keeps trying to have a report stored.
pub const REPORT_FOR: Duration = Duration::from_secs(30);

/// Opens (creating if needed) the progress stream of `names`.
pub async fn open_stream(
    js: &jetstream::Context,
    names: &Names,
    replicas: usize,
) -> Result<stream::Stream> {
    let name = names.progress_stream();
    js.get_or_create_stream(stream::Config {
        name: name.clone(),
        description: Some("aether progress: the latest report of each shard move".to_owned()),
        subjects: vec![names.progress_subjects()],
        max_messages_per_subject: 1,
        max_messages: KEPT,
        discard: stream::DiscardPolicy::Old,
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .map_err(|e| Error::Nats(format!("progress stream {name}: {e}")))
}

/// Stores a report, trying again (every 100 ms to 2 s) until JetStream acknowledges it or `within`
/// (usually [`REPORT_FOR`]) has passed.
pub async fn report(
    js: &jetstream::Context,
    names: &Names,
    p: &Progress,
    within: Duration,
) -> Result<()> {
    let subject = names.progress(p.epoch, p.shard);
    let bytes: bytes::Bytes = encode(p)?.into();
    let until = tokio::time::Instant::now() + within;
    let mut wait = Duration::from_millis(100);
    loop {
        let sent = async { js.publish(subject.clone(), bytes.clone()).await?.await }.await;
        match sent {
            Ok(_) => return Ok(()),
            Err(e) if tokio::time::Instant::now() + wait >= until => {
                return Err(Error::Nats(format!("progress report {subject}: {e}")));
            }
            Err(_) => {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Every report stored, oldest first, then each new one as it is stored: an ordered consumer,
/// recreated by the client where it left off after a reconnect. Also returns how many reports were
/// stored when it started (read them all to be caught up).
pub async fn follow(stream: &stream::Stream) -> Result<(consumer::pull::Ordered, u64)> {
    let stored = stream
        .get_info()
        .await
        .map_err(|e| Error::Nats(format!("progress stream info: {e}")))?
        .state
        .messages;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| Error::Nats(format!("progress consumer: {e}")))?;
    let messages = consumer
        .messages()
        .await
        .map_err(|e| Error::Nats(format!("progress consumer: {e}")))?;
    Ok((messages, stored))
}
