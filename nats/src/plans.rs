//! The plan bucket in NATS KV: the operator writes the current plan under one key, the nodes watch it.
//! Both open the bucket through [`open_bucket`], so either may create it.

use crate::{Error, Result};
use aether_core::protocol::{Names, PlanMessage, encode};
use async_nats::jetstream::{self, kv};

/// Opens (creating if needed) the plan bucket of `names`.
pub async fn open_bucket(
    js: &jetstream::Context,
    names: &Names,
    replicas: usize,
) -> Result<kv::Store> {
    let bucket = names.plan_bucket();
    if let Ok(store) = js.get_key_value(&bucket).await {
        return Ok(store);
    }
    let created = js
        .create_key_value(kv::Config {
            bucket: bucket.clone(),
            description: "aether plans: the current shard placement".to_owned(),
            history: 5,
            num_replicas: replicas,
            ..Default::default()
        })
        .await;
    match created {
        Ok(store) => Ok(store),
        // It exists after all (reading it failed for a moment, e.g. while a server of the
        // cluster was gone, or another process created it meanwhile): read it again.
        Err(create) => {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            js.get_key_value(&bucket)
                .await
                .map_err(|get| Error::Nats(format!("plan bucket {bucket}: {create}; {get}")))
        }
    }
}

/// Publishes a plan, refusing to replace a plan of a higher or equal epoch. Returns the KV revision.
pub async fn publish(store: &kv::Store, plan: &PlanMessage) -> Result<u64> {
    let bytes = encode(plan)?;
    loop {
        let current = store
            .entry(Names::PLAN_KEY)
            .await
            .map_err(|e| Error::Nats(format!("read plan: {e}")))?;
        let result = match current {
            Some(entry) if entry.operation == kv::Operation::Put => {
                if let Ok(held) = aether_core::protocol::decode::<PlanMessage>(&entry.value)
                    && held.epoch >= plan.epoch
                {
                    return Err(Error::StalePlan {
                        held: held.epoch,
                        epoch: plan.epoch,
                    });
                }
                store
                    .update(Names::PLAN_KEY, bytes.clone().into(), entry.revision)
                    .await
                    .map_err(|e| {
                        (
                            e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                            e.to_string(),
                        )
                    })
            }
            _ => store
                .create(Names::PLAN_KEY, bytes.clone().into())
                .await
                .map_err(|e| {
                    (
                        e.kind() == kv::CreateErrorKind::AlreadyExists,
                        e.to_string(),
                    )
                }),
        };
        match result {
            Ok(revision) => return Ok(revision),
            // Someone wrote in between: read again and re-check the epoch.
            Err((true, _)) => continue,
            Err((false, e)) => return Err(Error::Nats(format!("write plan: {e}"))),
        }
    }
}
