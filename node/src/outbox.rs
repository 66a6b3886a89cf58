//! Delivery of actors' sends. An app kind's decision may send commands to other actors; they are
//! written in the sender's record (its outbox) and delivered only after it landed, here, through
//! normal routing, with a command id made from the sender, the record and the index
//! (`aether_core::protocol::app::send_id`), so the receiver applies each once however often it is sent. The receiver's
//! answer comes back to the sender as a `$reply` command, whose record marks the send delivered;
//! until then the send stays in the outbox, and whoever loads the sender next (after a crash, a
//! move, a passivation) sends it again.

use crate::host::{Cmd, Delivery};
use crate::node::Shared;
use crate::ownership::{MAX_HOPS, Route};
use crate::store::Outgoing;
use aether_core::protocol::app::REPLY_KEY;
use aether_core::protocol::{ActorRef, ErrorCode, ErrorReply, Op, Outcome, Reply, Request};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Longest wait between two attempts at a delivery.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Delivers every send handed over by the shard workers, each on a task of its own, until the node
/// stops (what is not delivered by then stays in the senders' outboxes).
pub async fn run(shared: Arc<Shared>, mut deliveries: mpsc::UnboundedReceiver<Delivery>) {
    while let Some(d) = deliveries.recv().await {
        for send in d.sends {
            let (shared, from) = (shared.clone(), d.from.clone());
            tokio::spawn(async move { deliver(&shared, from, send).await });
        }
    }
}

async fn deliver(shared: &Arc<Shared>, from: ActorRef, send: Outgoing) {
    let req = Request::new(
        send.actor.clone(),
        Op::Command {
            command: send.command.clone(),
        },
        Some(send.id.clone()),
    );
    // A kind no node hosts is a final answer, as a client would get it (here the worker would
    // answer `internal`, which is retried).
    let unknown = shared.host.registry.get(&send.actor.kind).is_none();
    let outcome = until_answered(shared, || async {
        if unknown {
            return Some(Reply::error(ErrorReply::new(
                ErrorCode::UnknownKind,
                format!("no actor kind {:?}", send.actor.kind),
            )));
        }
        Some(shared.dispatch(req.clone()).await.into_reply())
    })
    .await;
    let Some(outcome) = outcome else { return };
    let command = json!({ REPLY_KEY: {
        "id": send.id,
        "to": send.actor,
        "command": send.command,
        "outcome": outcome,
    }});
    let mut back = Request::new(
        from,
        Op::Command { command },
        Some(format!("{}/reply", send.id)),
    );
    back.delivered = Some(send.id);
    // Only to the sender here: if it moved meanwhile, its new owner sends again and gets the reply.
    until_answered(shared, || shared.dispatch_local(back.clone())).await;
}

/// Tries until the answer is not one to retry (`redirect`, `unavailable`, `staleEpoch`,
/// `internal`), `attempt` gives up (`None`), or the node stops.
async fn until_answered<F, Fut>(shared: &Shared, mut attempt: F) -> Option<Outcome>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<Reply>>,
{
    let mut backoff = Duration::from_millis(20);
    loop {
        if shared.tasks.is_closed() {
            return None;
        }
        let reply = attempt().await?;
        match reply.outcome {
            Outcome::Error(e)
                if matches!(
                    e.code,
                    ErrorCode::Redirect
                        | ErrorCode::Unavailable
                        | ErrorCode::StaleEpoch
                        | ErrorCode::Internal
                ) =>
            {
                let hint = Duration::from_millis(e.retry_after_ms.unwrap_or(0));
                tokio::time::sleep(backoff.max(hint).min(MAX_BACKOFF)).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            outcome => return Some(outcome),
        }
    }
}

impl Shared {
    /// Serves `req` only if its actor is this node's: `None` when another node owns it.
    pub async fn dispatch_local(self: &Arc<Self>, req: Request) -> Option<Reply> {
        let worker = {
            let mut st = self.state();
            match st.own.route(&req.actor.id, MAX_HOPS) {
                Route::Local { shard } => st.worker(&self.host, shard),
                Route::Forward { .. } | Route::Redirect { .. } => return None,
                other => {
                    return Some(Reply::error(other.error().unwrap_or_else(|| {
                        ErrorReply::unavailable("no route for the reply", 100)
                    })));
                }
            }
        };
        let (tx, rx) = oneshot::channel();
        worker.tx.send(Cmd::Request((req, tx))).ok()?;
        rx.await.ok()
    }
}
