//! The node's client for the app container: the app protocol's calls (`aether_core::protocol::app`)
//! over HTTP/1.1 with kept-alive connections. Every answer is checked for size and shape before the
//! node uses it; a failed call says how it failed ([`AppFault`]), counted in
//! `aether_node_app_errors_total`, and each call's duration goes to `aether_node_app_call_duration_seconds`.
//! An app whose kinds answer offers `decideBatch` gets the decide calls waiting at one moment in
//! one request (`batch.rs`).

use crate::error::{Error, Result};
use crate::metrics::{AppFault, Metrics};
use aether_core::protocol::app::{
    APPLY_PATH, ApplyAnswer, ApplyCall, DECIDE_PATH, DecideAnswer, DecideCall, Decision,
    KINDS_PATH, KindInfo, KindsAnswer,
};

mod batch;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, StatusCode, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The app container, as the node calls it.
#[derive(Debug)]
pub struct AppClient {
    http: Http,
    batch: batch::Lane,
}

/// The HTTP side of the calls (cloned into the batch lane's task).
#[derive(Clone, Debug)]
struct Http {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
    max_answer_bytes: usize,
    metrics: Arc<Metrics>,
}

impl AppClient {
    /// A client for the app at `url` (`http://host:port`, no path).
    pub fn new(
        url: &str,
        timeout: Duration,
        max_answer_bytes: usize,
        metrics: Arc<Metrics>,
    ) -> Result<Self> {
        let base = url.trim_end_matches('/').to_owned();
        let uri: hyper::Uri = format!("{base}{KINDS_PATH}")
            .parse()
            .map_err(|e| Error::Config(format!("--app-url {url}: {e}")))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(Error::Config(format!(
                "--app-url {url}: expected http://host:port"
            )));
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        let http = Http {
            base,
            client,
            timeout,
            max_answer_bytes,
            metrics,
        };
        Ok(Self {
            batch: batch::Lane::default(),
            http,
        })
    }

    /// The app's URL.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.http.base
    }

    /// `GET /v1/kinds`; also takes the app's `decideBatch` (asked again every probe, so an app
    /// restarted without batches gets single calls).
    pub async fn kinds(&self) -> Result<Vec<KindInfo>> {
        let answer: KindsAnswer = self
            .http
            .call(Method::GET, KINDS_PATH, Bytes::new())
            .await?;
        let batch = answer
            .batch()
            .map_err(|why| self.fault(AppFault::Malformed, why))?;
        let kinds = answer
            .check()
            .map_err(|why| self.fault(AppFault::Malformed, why))?;
        self.batch.set_max(batch);
        Ok(kinds)
    }

    /// The most decide calls sent in one request (1: no batches).
    #[must_use]
    pub fn batch_max(&self) -> usize {
        self.batch.max()
    }

    /// A decide call: `POST /v1/decide`, or one entry of a `POST /v1/decide-batch`.
    pub async fn decide(&self, call: &DecideCall<'_>) -> Result<Decision> {
        let body = serde_json::to_vec(call).map_err(|e| Error::Internal(e.to_string()))?;
        if self.batch.max() > 1 {
            return self.batch.decide(&self.http, body).await;
        }
        let answer: DecideAnswer = self
            .http
            .call(Method::POST, DECIDE_PATH, body.into())
            .await?;
        answer
            .check()
            .map_err(|why| self.fault(AppFault::Malformed, format!("decide: {why}")))
    }

    /// `POST /v1/apply`.
    pub async fn apply(&self, call: &ApplyCall<'_>) -> Result<serde_json::Value> {
        let body = serde_json::to_vec(call).map_err(|e| Error::Internal(e.to_string()))?;
        let answer: ApplyAnswer = self
            .http
            .call(Method::POST, APPLY_PATH, body.into())
            .await?;
        answer
            .check()
            .map_err(|why| self.fault(AppFault::Malformed, format!("apply: {why}")))
    }

    /// Counts a fault and makes its error.
    pub fn fault(&self, fault: AppFault, why: impl Into<String>) -> Error {
        self.http.fault(fault, why)
    }
}

impl Http {
    /// Counts a fault and makes its error.
    fn fault(&self, fault: AppFault, why: impl Into<String>) -> Error {
        self.metrics.app_error(fault);
        Error::App(fault, why.into())
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &'static str,
        body: Bytes,
    ) -> Result<T> {
        self.call_limited(method, path, body, self.max_answer_bytes)
            .await
    }

    /// A call whose answer may take up to `limit` bytes.
    async fn call_limited<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &'static str,
        body: Bytes,
        limit: usize,
    ) -> Result<T> {
        self.metrics.app_call(path.trim_start_matches("/v1/"));
        let started = Instant::now();
        let result =
            tokio::time::timeout(self.timeout, self.exchange(method, path, body, limit)).await;
        self.metrics
            .app_call_seconds
            .observe(started.elapsed().as_secs_f64());
        let bytes = match result {
            Err(_) => {
                return Err(self.fault(
                    AppFault::Timeout,
                    format!("{path}: no answer within {:?}", self.timeout),
                ));
            }
            Ok(r) => r?,
        };
        serde_json::from_slice(&bytes).map_err(|e| {
            self.fault(
                AppFault::Malformed,
                format!("{path}: the answer is not the expected JSON: {e}"),
            )
        })
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        limit: usize,
    ) -> Result<Bytes> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(header::CONTENT_TYPE, "application/json");
        // The span this call is part of (a decide of a traced request), for an app that traces.
        if let Some(tp) = aether_nats::telemetry::traceparent(&tracing::Span::current()) {
            req = req.header(aether_nats::telemetry::TRACEPARENT, tp);
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| Error::Internal(format!("app request: {e}")))?;
        let resp = self.client.request(req).await.map_err(|e| {
            self.fault(
                AppFault::Unreachable,
                format!("{path}: cannot reach {}: {e}", self.base),
            )
        })?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), limit)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    self.fault(
                        AppFault::TooLarge,
                        format!("{path}: the answer exceeds {limit} bytes"),
                    )
                } else {
                    self.fault(
                        AppFault::Unreachable,
                        format!("{path}: reading the answer: {e}"),
                    )
                }
            })?
            .to_bytes();
        if status != StatusCode::OK {
            let text = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
            return Err(self.fault(AppFault::Status, format!("{path}: HTTP {status}: {text}")));
        }
        Ok(body)
    }
}
