//! The app API: the app container calls its actors through its sidecar, on loopback, without a
//! NATS client. `POST /v1/actors/{kind}/{id}` sends a command (the body, JSON; an optional
//! `Aether-Command-Id` header), `GET /v1/actors/{kind}/{id}` reads. Each is routed exactly like a
//! NATS request (`requests.rs`); redirects and `unavailable` answers are followed here, with the same
//! command id, for up to [`API_DEADLINE`], so the app sees an answer, not a routing detail. Error
//! codes become HTTP statuses ([`status_of`]); the body is the protocol's reply either way.

use crate::error::{Error, Result};
use crate::shared::Shared;
use aether_core::protocol::{ActorRef, ErrorCode, ErrorReply, Op, Outcome, Reply, Request};
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Longest the API follows redirects and retries `unavailable` before it answers 503.
pub const API_DEADLINE: Duration = Duration::from_secs(10);
/// The header that carries a command id.
pub const COMMAND_ID_HEADER: &str = "aether-command-id";

#[derive(Clone)]
struct Api {
    shared: Arc<Shared>,
    /// Numbers the command ids the API makes for commands sent without one.
    next: Arc<AtomicU64>,
    /// This process's start, in the made ids: a restarted sidecar never reuses one.
    started: u128,
}

/// Binds `addr` and serves the API on a task of its own.
pub async fn serve(
    addr: std::net::SocketAddr,
    shared: Arc<Shared>,
) -> Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Config(format!("--api-addr {addr}: {e}")))?;
    let app = router(shared);
    Ok(tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, for instance: wait for some to close.
                    tracing::warn!(error = %e, "app API: accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let service = hyper_util::service::TowerToHyperService::new(app.clone());
            tokio::spawn(async move {
                let served = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
                if let Err(e) = served {
                    tracing::debug!(error = %e, "app API connection");
                }
            });
        }
    }))
}

/// How long a connection to the app API may take to send a request's headers, or stay idle
/// between requests, before it is closed.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The API's routes.
pub fn router(shared: Arc<Shared>) -> Router {
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    // A body over the request limit is refused by the handler, in the protocol's JSON shape.
    let limit = shared.max_request_bytes.saturating_add(1);
    Router::new()
        .route("/v1/actors/{kind}/{id}", get(read).post(command))
        .route("/v1/actors/{kind}/{id}/timers", get(timers))
        // The empty id (valid in the protocol) has no path segment of its own.
        .route("/v1/actors/{kind}/", get(read_empty).post(command_empty))
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            shared.max_request_bytes,
            declared_size,
        ))
        // One bound for NATS requests and API requests alike (`--max-inflight`); outermost, so a
        // request over it is answered before anything else is done.
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            bounded,
        ))
        .with_state(Api {
            shared,
            next: Arc::new(AtomicU64::new(0)),
            started,
        })
}

/// The path's kind and id, or the `malformed` answer (an id that is not UTF-8 once decoded).
fn actor_of(path: Result<Path<(String, String)>, PathRejection>) -> Result<ActorRef, ErrorReply> {
    match path {
        Ok(Path((kind, id))) => Ok(ActorRef { kind, id }),
        Err(e) => Err(ErrorReply::new(
            ErrorCode::Malformed,
            format!("the actor's kind or id in the path: {e}"),
        )),
    }
}

async fn read(
    State(api): State<Api>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Response {
    match actor_of(path) {
        Ok(actor) => answer(&api, Request::new(actor, Op::Read, None)).await,
        Err(e) => respond(&Reply::error(e)),
    }
}

/// `GET /v1/actors/{kind}/{id}/timers`: the actor's timers (a read, routed like any), as
/// `{"timers": [{name, due, every?, command, catchUp?}]}`.
async fn timers(
    State(api): State<Api>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Response {
    let actor = match actor_of(path) {
        Ok(actor) => actor,
        Err(e) => return respond(&Reply::error(e)),
    };
    let reply = answer_reply(&api, Request::new(actor, Op::Read, None)).await;
    match &reply.outcome {
        Outcome::Ok(ok) => {
            let body =
                serde_json::to_vec(&serde_json::json!({ "timers": ok.timers })).unwrap_or_default();
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response()
        }
        Outcome::Error(_) => respond(&reply),
    }
}

async fn read_empty(State(api): State<Api>, Path(kind): Path<String>) -> Response {
    let actor = ActorRef::new(kind, "");
    answer(&api, Request::new(actor, Op::Read, None)).await
}

async fn command_empty(
    State(api): State<Api>,
    Path(kind): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    command_to(api, ActorRef::new(kind, ""), headers, body).await
}

async fn command(
    State(api): State<Api>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match actor_of(path) {
        Ok(actor) => command_to(api, actor, headers, body).await,
        Err(e) => respond(&Reply::error(e)),
    }
}

async fn command_to(
    api: Api,
    actor: ActorRef,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            return respond(&Reply::error(ErrorReply::new(
                ErrorCode::TooLarge,
                format!(
                    "the body could not be read within {} bytes: {e}",
                    api.shared.max_request_bytes
                ),
            )));
        }
    };
    if body.len() > api.shared.max_request_bytes {
        return respond(&Reply::error(ErrorReply::new(
            ErrorCode::TooLarge,
            format!(
                "command of {} bytes exceeds {} bytes",
                body.len(),
                api.shared.max_request_bytes
            ),
        )));
    }
    let command: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => {
            return respond(&Reply::error(ErrorReply::new(
                ErrorCode::Malformed,
                format!("the body is not JSON: {e}"),
            )));
        }
    };
    let command_id = match headers.get(COMMAND_ID_HEADER).map(HeaderValue::to_str) {
        Some(Ok(id)) => id.to_owned(),
        Some(Err(_)) => {
            return respond(&Reply::error(ErrorReply::new(
                ErrorCode::Malformed,
                "the Aether-Command-Id header is not visible ASCII",
            )));
        }
        // Made here, so the API's own retries below are never applied twice; the pod's name
        // hashed, so the id stays within the limit whatever the name.
        None => format!(
            "api-{:016x}-{:x}-{}",
            aether_core::hash::actor_hash(&api.shared.me),
            api.started,
            api.next.fetch_add(1, Ordering::Relaxed)
        ),
    };
    let req = Request::new(actor, Op::Command { command }, Some(command_id.clone()));
    let mut resp = answer(&api, req).await;
    // Every answer names the id used: after a 503 (outcome unknown) the app retries with it.
    if let Ok(v) = HeaderValue::from_str(&command_id) {
        resp.headers_mut().insert(COMMAND_ID_HEADER, v);
    }
    resp
}

/// Routes the request, following redirects and `unavailable` until [`API_DEADLINE`].
async fn answer(api: &Api, req: Request) -> Response {
    respond(&answer_reply(api, req).await)
}

/// The reply to `req`, following redirects and `unavailable` until [`API_DEADLINE`].
async fn answer_reply(api: &Api, req: Request) -> Reply {
    let deadline = tokio::time::Instant::now() + API_DEADLINE;
    loop {
        // The owner drops the command unapplied once the API stopped waiting for it.
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let mut attempt = req.clone();
        attempt.timeout_ms = Some(u64::try_from(left.as_millis()).unwrap_or(u64::MAX).max(1));
        let reply = api.shared.handle_request(attempt).await.into_reply();
        let wait = match &reply.outcome {
            Outcome::Error(e)
                if matches!(
                    e.code,
                    ErrorCode::Redirect | ErrorCode::Unavailable | ErrorCode::StaleEpoch
                ) =>
            {
                Duration::from_millis(e.retry_after_ms.unwrap_or(50).clamp(10, 1000))
            }
            _ => return reply,
        };
        if tokio::time::Instant::now() + wait >= deadline {
            return reply;
        }
        tokio::time::sleep(wait).await;
    }
}

/// The HTTP status of a reply.
#[must_use]
pub fn status_of(reply: &Reply) -> StatusCode {
    match &reply.outcome {
        Outcome::Ok(_) => StatusCode::OK,
        Outcome::Error(e) => match e.code {
            ErrorCode::Malformed | ErrorCode::UnsupportedVersion => StatusCode::BAD_REQUEST,
            ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::UnknownKind => StatusCode::NOT_FOUND,
            ErrorCode::Rejected => StatusCode::CONFLICT,
            ErrorCode::Redirect | ErrorCode::Unavailable | ErrorCode::StaleEpoch => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorCode::AppError => StatusCode::BAD_GATEWAY,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        },
    }
}

/// At most `--max-inflight` requests (NATS and API together) are handled at once; one more is
/// answered `unavailable` (503) at once, as on NATS.
async fn bounded(
    State(shared): State<Arc<Shared>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Ok(permit) = shared.inflight.clone().try_acquire_owned() else {
        shared.metrics().route(crate::metrics::Route::Overloaded);
        let e = ErrorReply::unavailable("this node is overloaded", 50);
        return respond(&Reply::error(e));
    };
    let resp = next.run(req).await;
    drop(permit);
    resp
}

/// A body declared larger than the request limit is refused from the head, before any of it is
/// read (`tooLarge`, 413).
async fn declared_size(
    State(limit): State<usize>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(n) = declared.filter(|&n| n > limit as u64) {
        return respond(&Reply::error(ErrorReply::new(
            ErrorCode::TooLarge,
            format!("a body of {n} bytes exceeds {limit} bytes"),
        )));
    }
    next.run(req).await
}

fn respond(reply: &Reply) -> Response {
    let status = status_of(reply);
    let body = match &reply.outcome {
        Outcome::Ok(ok) => serde_json::to_vec(ok),
        Outcome::Error(e) => serde_json::to_vec(e),
    }
    .unwrap_or_default();
    let mut resp = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    if let Outcome::Error(ErrorReply {
        retry_after_ms: Some(ms),
        ..
    }) = &reply.outcome
        && let Ok(v) = HeaderValue::from_str(&ms.div_ceil(1000).max(1).to_string())
    {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/PROTOCOL.md's table of HTTP statuses is what the API answers.
    #[test]
    fn the_documented_statuses_are_the_ones_answered() {
        let doc = include_str!("../../docs/PROTOCOL.md");
        let table = doc
            .split("| code | HTTP status |")
            .nth(1)
            .expect("docs/PROTOCOL.md has the API's status table");
        let mut checked = 0;
        for row in table.lines().skip(2).take_while(|l| l.starts_with('|')) {
            let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
            let status: u16 = cells[1]
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("status in {row}"));
            for code in cells[0].split('`').skip(1).step_by(2) {
                let code: ErrorCode =
                    serde_json::from_value(serde_json::Value::String(code.to_owned()))
                        .unwrap_or_else(|e| panic!("{code}: {e}"));
                let reply = Reply::error(ErrorReply::new(code, "x"));
                assert_eq!(status_of(&reply).as_u16(), status, "{code:?}");
                checked += 1;
            }
        }
        assert_eq!(checked, 10, "every error code is in the table");
    }
}
