//! Decide calls in batches, for an app that offers `decideBatch` (`GET /v1/kinds`): each call
//! waits in a queue; a task takes whatever has queued (up to the app's most) into one `POST
//! /v1/decide-batch` as soon as one of [`IN_FLIGHT`] requests is free, so calls batch up exactly
//! while the app is busy and a lone call goes at once. Each call gets its own entry's answer,
//! checked as a single answer is; a request that fails fails each of its calls the same way.

use super::Http;
use crate::error::{Error, Result};
use crate::metrics::AppFault;
use aether_core::protocol::app::{DECIDE_BATCH_PATH, DecideBatchAnswer, Decision};
use bytes::Bytes;
use hyper::Method;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::Instrument;

/// Batch requests to the app at once: one being answered while the next fills up.
pub const IN_FLIGHT: usize = 2;

/// A call's JSON, where its answer goes, and the span it was made in (its trace).
type Waiting = (Vec<u8>, oneshot::Sender<Result<Decision>>, tracing::Span);

/// The queue of decide calls and the most the app takes in one request.
#[derive(Debug)]
pub(super) struct Lane {
    max: Arc<AtomicUsize>,
    queue: OnceLock<mpsc::UnboundedSender<Waiting>>,
}

impl Default for Lane {
    fn default() -> Self {
        Self {
            max: Arc::new(AtomicUsize::new(1)),
            queue: OnceLock::new(),
        }
    }
}

impl Lane {
    pub(super) fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    pub(super) fn set_max(&self, max: usize) {
        self.max.store(max.max(1), Ordering::Relaxed);
    }

    /// One decide call (`body`: its JSON) through the queue.
    pub(super) async fn decide(&self, http: &Http, body: Vec<u8>) -> Result<Decision> {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(send_batches(http.clone(), rx, self.max.clone()));
            tx
        });
        let (tx, rx) = oneshot::channel();
        queue
            .send((body, tx, tracing::Span::current()))
            .map_err(|_| Error::Internal("the app's batch queue is gone".into()))?;
        rx.await
            .map_err(|_| Error::Internal("the app's batch request was dropped".into()))?
    }
}

/// Takes the queued calls into batches, [`IN_FLIGHT`] requests at most; ends when the client goes.
async fn send_batches(
    http: Http,
    mut queue: mpsc::UnboundedReceiver<Waiting>,
    max: Arc<AtomicUsize>,
) {
    let free = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        let Ok(permit) = free.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = queue.recv().await else {
            return;
        };
        let most = max.load(Ordering::Relaxed).max(1);
        let mut calls = vec![first];
        while calls.len() < most {
            match queue.try_recv() {
                Ok(call) => calls.push(call),
                Err(_) => break,
            }
        }
        let http = http.clone();
        // The request carries its first call's trace (`traceparent`).
        let span = calls[0].2.clone();
        tokio::spawn(
            async move {
                let _permit = permit;
                batch(&http, calls).await;
            }
            .instrument(span),
        );
    }
}

/// `{"calls": [...]}` from the calls' own JSON, as they are.
fn body_of(calls: &[Waiting]) -> Vec<u8> {
    let mut body = Vec::with_capacity(calls.iter().map(|(b, ..)| b.len() + 1).sum::<usize>() + 12);
    body.extend_from_slice(b"{\"calls\":[");
    for (i, (call, ..)) in calls.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(call);
    }
    body.extend_from_slice(b"]}");
    body
}

/// One `POST /v1/decide-batch`, each call answered from its entry.
async fn batch(http: &Http, calls: Vec<Waiting>) {
    let n = calls.len();
    for _ in 0..n {
        http.metrics.app_call("decide");
    }
    let limit = http.max_answer_bytes.saturating_mul(n);
    let answer: Result<DecideBatchAnswer> = http
        .call_limited(
            Method::POST,
            DECIDE_BATCH_PATH,
            Bytes::from(body_of(&calls)),
            limit,
        )
        .await;
    let answers = match answer {
        Ok(a) if a.answers.len() == n => a.answers,
        Ok(a) => {
            let why = format!(
                "{DECIDE_BATCH_PATH}: {} answers to {n} calls",
                a.answers.len()
            );
            for (_, tx, _) in calls {
                let _ = tx.send(Err(http.fault(AppFault::Malformed, why.clone())));
            }
            return;
        }
        Err(e) => {
            // Counted once, by the request; each of its calls fails the same way.
            let (fault, why) = match &e {
                Error::App(f, why) => (*f, why.clone()),
                other => (AppFault::Unreachable, other.to_string()),
            };
            for (_, tx, _) in calls {
                let _ = tx.send(Err(Error::App(fault, why.clone())));
            }
            return;
        }
    };
    for ((_, tx, _), entry) in calls.into_iter().zip(answers) {
        let decision = match entry.error {
            Some(error) => Err(http.fault(
                AppFault::Status,
                format!("{DECIDE_BATCH_PATH}: the app failed this call: {error}"),
            )),
            None => entry
                .answer
                .check()
                .map_err(|why| http.fault(AppFault::Malformed, format!("decide: {why}"))),
        };
        let _ = tx.send(decision);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_body_holds_each_call_as_it_is() {
        let call = |s: &str| {
            (
                s.as_bytes().to_vec(),
                oneshot::channel().0,
                tracing::Span::none(),
            )
        };
        let calls = vec![
            call(r#"{"kind":"a","id":"1"}"#),
            call(r#"{"kind":"a","id":"2"}"#),
        ];
        let v: serde_json::Value = serde_json::from_slice(&body_of(&calls)).expect("JSON");
        assert_eq!(
            v,
            serde_json::json!({"calls": [{"kind": "a", "id": "1"}, {"kind": "a", "id": "2"}]})
        );
    }
}
