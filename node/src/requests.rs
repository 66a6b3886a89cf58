//! A request's way through a node: size check, decode, validation, then [`Ownership::route`]
//! decides (served here by the shard's worker, sent on once to the owner, a redirect, or
//! unavailable). A forwarded request travels as the bytes it arrived as, with hops, epoch and what
//! is left of its timeout in headers ([`HOPS`], [`EPOCH`], [`TIMEOUT_MS`]); the owner's reply bytes
//! are relayed as it wrote them. Requests a stopped worker hands back are forwarded (after a
//! hand-off) or answered with where to go.
//!
//! [`Ownership::route`]: crate::ownership::Ownership::route

use crate::error::{Error, Result};
use crate::host::{Cmd, Pending};
use crate::metrics::{Failure, Malformed, Route as RouteKind};
use crate::ownership::Route;
use crate::shared::{SHUTDOWN_GRACE, Shared};
use aether_core::protocol::{ErrorCode, ErrorReply, Names, Op, Reply, Request, decode, encode};
use aether_nats::telemetry;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::error::SendError;
use tokio::sync::oneshot;
use tracing::Instrument;

/// Time to wait for a forwarded request's reply.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// Header of a forwarded request: how often it was forwarded (it replaces the body's `hops`).
pub const HOPS: &str = "Aether-Hops";
/// Header of a forwarded request: the forwarding node's plan epoch (replaces the body's `epoch`).
pub const EPOCH: &str = "Aether-Epoch";
/// Header of a forwarded request: milliseconds the caller still waits (replaces `timeoutMs`).
pub const TIMEOUT_MS: &str = "Aether-Timeout-Ms";

/// What a node answers a request with.
#[derive(Debug)]
pub enum Answer {
    /// Its own reply.
    Reply(Reply),
    /// The owner's reply to a forwarded request, as the owner encoded it.
    Relayed(bytes::Bytes),
    /// Its own reply, already encoded (a plain read: [`crate::large`]).
    Encoded(Reply, bytes::Bytes),
}

impl Answer {
    fn error(e: ErrorReply) -> Self {
        Self::Reply(Reply::error(e))
    }

    /// The reply, decoded (for a caller inside the node); relayed bytes that do not decode become
    /// an `internal` error.
    pub fn into_reply(self) -> Reply {
        match self {
            Self::Reply(reply) | Self::Encoded(reply, _) => reply,
            Self::Relayed(bytes) => decode::<Reply>(&bytes).unwrap_or_else(|e| {
                Reply::error(ErrorReply::new(
                    ErrorCode::Internal,
                    format!("the owner's reply does not decode: {e}"),
                ))
            }),
        }
    }

    /// The bytes to publish.
    pub fn into_bytes(self) -> aether_core::Result<bytes::Bytes> {
        match self {
            Self::Reply(reply) => encode(&reply).map(Into::into),
            Self::Relayed(bytes) | Self::Encoded(_, bytes) => Ok(bytes),
        }
    }
}

/// Where a routed request goes, decided under the ownership lock and carried out after it.
enum Target {
    Local(crate::host::ShardHandle, u32),
    Forward(String),
    Arriving(u32, tokio::sync::watch::Receiver<()>),
    Reply(ErrorReply),
}

/// Longest a request for a shard on its way here waits for the shard's commit (`Route::Arriving`)
/// before it is routed as if nothing were arriving: the commit is one round trip behind the last
/// chunk; a move that fails instead rolls back to its source.
const ARRIVAL_HOLD: Duration = Duration::from_millis(100);

impl Shared {
    /// Handles a request as it came from NATS: size check, decode, the forwarding headers,
    /// dispatch. Never panics on bad bytes.
    /// `from_node`: it came on the nodes' own subject ([`Names::node_sends`]), where sends'
    /// deliveries and releases are taken; anywhere else they are refused `malformed`.
    ///
    /// [`Names::node_sends`]: aether_core::protocol::Names::node_sends
    pub async fn handle_request_bytes(
        self: &Arc<Self>,
        bytes: bytes::Bytes,
        headers: Option<&async_nats::HeaderMap>,
        from_node: bool,
    ) -> Answer {
        if bytes.len() > self.max_request_bytes {
            self.metrics().malformed(Malformed::TooLarge);
            return Answer::error(ErrorReply::new(
                ErrorCode::TooLarge,
                format!(
                    "request of {} bytes exceeds {} bytes",
                    bytes.len(),
                    self.max_request_bytes
                ),
            ));
        }
        let req = match decode::<Request>(&bytes).and_then(|r| forwarded(r, headers)) {
            Ok(r) => r,
            Err(e) => {
                self.metrics().malformed(Malformed::Request);
                return Answer::error(ErrorReply::from_decode(&e));
            }
        };
        self.handle(req, Some(bytes), from_node).await
    }

    /// Handles a decoded request (from the app API): validation, kind, dispatch.
    pub async fn handle_request(self: &Arc<Self>, req: Request) -> Answer {
        self.handle(req, None, false).await
    }

    /// Validation, then dispatch (the owner judges the kind); `raw` are the bytes the request
    /// arrived as, if it came so.
    async fn handle(
        self: &Arc<Self>,
        mut req: Request,
        raw: Option<bytes::Bytes>,
        from_node: bool,
    ) -> Answer {
        if let Some(ms) = req.timeout_ms {
            req.deadline = Some(std::time::Instant::now() + Duration::from_millis(ms));
        }
        let valid = if from_node {
            req.validate()
        } else {
            req.validate_from_client()
        };
        if let Err(e) = valid {
            self.metrics().malformed(match e {
                aether_core::Error::TooLarge(_) => Malformed::TooLarge,
                _ => Malformed::Request,
            });
            return Answer::error(ErrorReply::from_decode(&e));
        }
        self.dispatch_once(req, raw, true, None).await
    }

    /// Serves a decoded request: here, by forwarding, or with a redirect.
    pub async fn dispatch(self: &Arc<Self>, req: Request) -> Answer {
        self.dispatch_once(req, None, true, None).await
    }

    /// `held`: the shard this request was held for as arriving (it is not held again).
    async fn dispatch_once(
        self: &Arc<Self>,
        req: Request,
        raw: Option<bytes::Bytes>,
        may_restart: bool,
        held: Option<u32>,
    ) -> Answer {
        let target = {
            let mut st = self.state();
            let route = match held {
                Some(shard) => st.own.route_after_hold(shard, req.hops),
                None => st.own.route(&req.actor.id, req.hops),
            };
            match route {
                Route::Local { shard } => Target::Local(st.worker(&self.host, shard), shard),
                Route::Forward { to, .. } => Target::Forward(to.to_owned()),
                // Subscribed under the lock the commit changes ownership under: a commit after
                // this routing wakes the hold.
                Route::Arriving { shard } => Target::Arriving(shard, self.arrivals.subscribe()),
                other => Target::Reply(other.error().unwrap_or_else(|| {
                    ErrorReply::new(ErrorCode::Internal, "no route for the request")
                })),
            }
        };
        match target {
            // The kinds are the owner's to judge: a node without the kind (one not updated yet in
            // a rolling update that adds it) forwards the request like any other.
            Target::Local(..) if self.host.registry.get(&req.actor.kind).is_none() => {
                Answer::error(ErrorReply::new(
                    ErrorCode::UnknownKind,
                    format!(
                        "no actor kind {:?} (its owner {} hosts {})",
                        req.actor.kind,
                        self.me,
                        self.host.registry.kinds().join(", ")
                    ),
                ))
            }
            Target::Local(..) if !self.serving_lease() => {
                // Without a lease this node may hold an older plan than the one others serve by.
                self.metrics().route(RouteKind::Unavailable);
                Answer::error(ErrorReply::unavailable(
                    "this node holds no lease on serving (it could not write to the plan bucket lately)",
                    100,
                ))
            }
            Target::Local(worker, shard) => {
                self.metrics().route(RouteKind::Local);
                let mut req = req;
                // An app kind's decide joins the request's trace (traces on); built-in kinds make
                // no span of their own.
                if req.trace.is_none()
                    && telemetry::enabled()
                    && matches!(
                        self.host.registry.get(&req.actor.kind),
                        Some(crate::behaviour::Kind::App(_))
                    )
                {
                    req.trace = telemetry::traceparent(&tracing::Span::current());
                }
                let started = std::time::Instant::now();
                let (tx, rx) = oneshot::channel();
                let read = matches!(req.op, Op::Read).then(|| req.actor.clone());
                if let Err(SendError(cmd)) = worker.tx.send(Cmd::Request((req, tx))) {
                    // Still registered: the worker ended by itself (it never should). Noticed,
                    // counted and replaced; its actors reload from the log.
                    if may_restart
                        && let Cmd::Request((req, _)) = cmd
                        && self.state().forget_dead(shard, &worker)
                    {
                        tracing::error!(shard, "shard worker ended unexpectedly: restarted");
                        self.metrics().failure(Failure::WorkerDied);
                        return Box::pin(self.dispatch_once(req, None, false, held)).await;
                    }
                    // Stopped between the routing and the send: route again.
                    return Answer::Reply(self.reroute(shard));
                }
                let reply = rx.await.unwrap_or_else(|_| {
                    Reply::error(ErrorReply::unavailable("shard worker stopped", 20))
                });
                self.metrics()
                    .request_seconds
                    .observe(started.elapsed().as_secs_f64());
                match read.and_then(|actor| self.encoded.bytes(&actor, &reply)) {
                    Some(bytes) => Answer::Encoded(reply, bytes),
                    None => Answer::Reply(reply),
                }
            }
            Target::Forward(to) => {
                self.metrics().route(RouteKind::Forwarded);
                self.relay(&to, req, raw).await
            }
            Target::Arriving(shard, mut arrivals) => {
                // Until the commit (or any other change of what this node serves), at most
                // ARRIVAL_HOLD; then routed again, never held twice.
                self.metrics().route(RouteKind::Held);
                if tokio::time::timeout(ARRIVAL_HOLD, arrivals.changed())
                    .await
                    .is_err()
                {
                    tracing::info!(shard, "no commit within the hold: routed as before");
                }
                Box::pin(self.dispatch_once(req, raw, may_restart, Some(shard))).await
            }
            Target::Reply(e) => {
                let kind = if e.code == ErrorCode::Redirect {
                    RouteKind::Redirected
                } else {
                    RouteKind::Unavailable
                };
                self.metrics().route(kind);
                Answer::error(e)
            }
        }
    }

    /// The answer for a request a stopped worker still held: where to go now.
    #[must_use]
    pub fn reroute(&self, shard: u32) -> Reply {
        let e = self.state().own.route_again(shard).error();
        Reply::error(e.unwrap_or_else(|| ErrorReply::unavailable("shard is changing owner", 20)))
    }

    /// Answers the requests a stopped worker of `shard` hands back with where to go now.
    pub fn answer_leftovers(
        self: &Arc<Self>,
        shard: u32,
        leftovers: oneshot::Receiver<Vec<Pending>>,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        self.tasks.spawn(async move {
            for (_, tx) in leftovers.await.unwrap_or_default() {
                let _ = tx.send(this.reroute(shard));
            }
        })
    }

    /// Forwards the requests a worker handed back at its hand-off to the shard's new owner.
    pub fn forward_leftovers(
        self: &Arc<Self>,
        to: String,
        leftovers: oneshot::Receiver<Vec<Pending>>,
    ) {
        let this = self.clone();
        self.tasks.spawn(async move {
            let forwarded = leftovers
                .await
                .unwrap_or_default()
                .into_iter()
                .map(|(req, tx)| {
                    let (this, to) = (this.clone(), to.clone());
                    async move {
                        let _ = tx.send(this.forward(&to, req).await);
                    }
                });
            futures::future::join_all(forwarded).await;
        });
    }

    /// Sends a request on to its owner `to` and relays the owner's reply bytes as they are (no
    /// decode and encode). The request goes as the bytes it arrived as (`raw`; encoded when it has
    /// none), hops, epoch and the time left in headers. Relayed rather than passed on with the
    /// caller's reply subject, which saves a hop: an owner that is gone would then leave the caller
    /// waiting for its own timeout, where a relay answers `unavailable` at once (NATS's "no
    /// responders").
    async fn relay(&self, to: &str, req: Request, raw: Option<bytes::Bytes>) -> Answer {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(HOPS, req.hops.saturating_add(1).to_string().as_str());
        headers.insert(EPOCH, self.epoch().to_string().as_str());
        let trace = req
            .trace
            .clone()
            .or_else(|| telemetry::traceparent(&tracing::Span::current()));
        telemetry::put(&mut headers, trace);
        if let Some(deadline) = req.deadline {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                self.metrics().failure(Failure::Expired);
                return Answer::error(ErrorReply::unavailable("the caller's deadline passed", 0));
            }
            let ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX).max(1);
            headers.insert(TIMEOUT_MS, ms.to_string().as_str());
        }
        let bytes = match raw {
            Some(raw) => raw,
            None => match encode(&req) {
                Ok(b) => b.into(),
                Err(e) => {
                    return Answer::error(ErrorReply::new(ErrorCode::Internal, e.to_string()));
                }
            },
        };
        // On the nodes' own subject, where a client cannot publish: the owner may answer into this
        // node's inbox, and takes sends' deliveries and releases.
        let sent = tokio::time::timeout(
            FORWARD_TIMEOUT,
            self.client
                .request_with_headers(self.names.node_sends(to), headers, bytes),
        )
        .await;
        match sent {
            Ok(Ok(msg)) => Answer::Relayed(msg.payload),
            Ok(Err(e)) => Answer::error(ErrorReply::unavailable(
                format!("owner {to} did not answer: {e}"),
                100,
            )),
            Err(_) => Answer::error(ErrorReply::unavailable(
                format!("owner {to} timed out"),
                100,
            )),
        }
    }

    /// Sends a request on to `to` and returns its reply (decoded, for a caller inside the node).
    pub async fn forward(&self, to: &str, req: Request) -> Reply {
        self.relay(to, req, None).await.into_reply()
    }
}

/// `req` with what a forwarding node's headers say in place of its body's `hops`, `epoch` and
/// `timeoutMs`; a header that is not a number is malformed.
fn forwarded(
    mut req: Request,
    headers: Option<&async_nats::HeaderMap>,
) -> aether_core::Result<Request> {
    let Some(headers) = headers else {
        return Ok(req);
    };
    let number = |name: &str| -> aether_core::Result<Option<u64>> {
        headers
            .get(name)
            .map(|v| {
                v.as_str().trim().parse::<u64>().map_err(|_| {
                    aether_core::Error::Malformed(format!(
                        "header {name}: {:?} is not a number",
                        v.as_str()
                    ))
                })
            })
            .transpose()
    };
    if let Some(hops) = number(HOPS)? {
        req.hops = u8::try_from(hops).unwrap_or(u8::MAX);
    }
    if let Some(epoch) = number(EPOCH)? {
        req.epoch = epoch;
    }
    if let Some(ms) = number(TIMEOUT_MS)? {
        req.timeout_ms = Some(ms);
    }
    Ok(req)
}

impl Shared {
    /// Publishes a reply; a reply that cannot be sent is counted (the caller times out and retries).
    pub async fn send_reply(&self, to: async_nats::Subject, answer: Answer) {
        let bytes = match answer.into_bytes() {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "reply not encodable");
                self.metrics().failure(Failure::Reply);
                return;
            }
        };
        let len = bytes.len();
        let sent = if len > crate::large::LARGE_REPLY_BYTES {
            // A large reply (a big actor's state) takes its turn in the lane (`large`).
            self.large_replies
                .send(len, async {
                    self.bulk.publish(to.clone(), bytes).await?;
                    self.bulk.flush().await.map_err(|e| {
                        async_nats::PublishError::with_source(
                            async_nats::client::PublishErrorKind::Send,
                            e,
                        )
                    })
                })
                .await
        } else {
            self.client.publish(to.clone(), bytes).await
        };
        if let Err(e) = sent {
            tracing::warn!(error = %e, "reply not sent");
            self.metrics().failure(Failure::Reply);
            if e.kind() == async_nats::client::PublishErrorKind::MaxPayloadExceeded {
                // The caller gets an answer it can act on instead of its own timeout.
                let limit = self.client.server_info().max_payload;
                let e = ErrorReply::new(
                    ErrorCode::TooLarge,
                    format!("the reply of {len} bytes exceeds the server's max payload of {limit}"),
                );
                if let Ok(b) = encode(&Reply::error(e)) {
                    let _ = self.client.publish(to, b.into()).await;
                }
            }
        }
    }
}

pub(crate) type Messages = futures::stream::SelectAll<RequestSubscription>;

/// How many more requests a subscription takes once the node asks it to end (see `end_after`):
/// more than can be on their way to one node (each caller has a few in flight), few enough that a
/// loaded queue group hands them out within a second.
const END_AFTER: u64 = 256;
/// A stopping node whose request subscriptions took nothing for this long takes it that no more
/// requests are on their way.
const QUIET_AT_EXIT: Duration = Duration::from_millis(200);

/// A request subscription that counts the messages it took, so that it can end without losing one.
pub(crate) struct RequestSubscription {
    sub: async_nats::Subscriber,
    taken: u64,
}

impl RequestSubscription {
    fn new(sub: async_nats::Subscriber) -> Self {
        Self { sub, taken: 0 }
    }

    /// Ends the subscription after `more` further messages, losing none on the way.
    ///
    /// async-nats's `drain` (and `unsubscribe`) forget the subscription as soon as its UNSUB is
    /// written, so a request the server sent before it read the UNSUB is dropped unseen and its
    /// caller waits out its timeout (the rolling-update test saw one such 10 s wait per rollout).
    /// `UNSUB <sid> <max>` has no such gap: the server stops delivering at exactly `max` messages
    /// and the client keeps the subscription until it has received that many. `more` must exceed
    /// what can be buffered or in flight (else the server stops at once and the client forgets the
    /// subscription before the surplus arrives); a subscription that does not reach its count ends
    /// when the node, finding it quiet, closes the connection.
    async fn end_after(
        &mut self,
        more: u64,
    ) -> std::result::Result<(), async_nats::UnsubscribeError> {
        self.sub.unsubscribe_after(self.taken + more).await
    }
}

impl futures::Stream for RequestSubscription {
    type Item = async_nats::Message;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let next = std::pin::Pin::new(&mut self.sub).poll_next(cx);
        if let std::task::Poll::Ready(Some(_)) = &next {
            self.taken += 1;
        }
        next
    }
}

/// Takes one request from NATS: refused when its reply subject is the ShardPlan's own (or, from a
/// client, a node's or the operator's inbox), answered
/// `overloaded` at once when the node is full, else served on a task of its own.
pub(crate) async fn take_request(shared: &Arc<Shared>, msg: async_nats::Message) {
    // Only a peer (on the nodes' own subject) may have its answer sent to a node's inbox.
    let from_node = msg.subject.as_str() == shared.names.node_sends(&shared.me);
    if msg.reply.as_ref().is_some_and(|to| {
        if from_node {
            !shared.names.is_reply_subject(to)
        } else {
            !shared.names.is_client_reply_subject(to)
        }
    }) {
        shared.metrics().malformed(Malformed::ReplySubject);
        return;
    }
    let Ok(permit) = shared.inflight.clone().try_acquire_owned() else {
        // Full: answered at once, here (the answer is the back-pressure).
        shared.metrics().route(RouteKind::Overloaded);
        if let Some(to) = msg.reply {
            let e = ErrorReply::unavailable("this node is overloaded", 50);
            shared.send_reply(to, Answer::Reply(Reply::error(e))).await;
        }
        return;
    };
    let shared = shared.clone();
    let span = request_span(msg.headers.as_ref(), from_node);
    shared.tasks.clone().spawn(
        async move {
            let answer = shared
                .handle_request_bytes(msg.payload, msg.headers.as_ref(), from_node)
                .await;
            if let Some(to) = msg.reply {
                shared.send_reply(to, answer).await;
            }
            drop(permit);
        }
        .instrument(span),
    );
}

/// The span of a request taken from NATS (traces on), a child of the `traceparent` its sender
/// gave (a forwarding node, an outbox, a client that traces).
pub(crate) fn request_span(
    headers: Option<&async_nats::HeaderMap>,
    from_node: bool,
) -> tracing::Span {
    telemetry::child_of(telemetry::parent_in(headers), || {
        tracing::info_span!("request", otel.kind = "server", from_node)
    })
}

/// The node's own request subjects (`P.node.{pod}.req` and `.send`); the any-node subject is
/// joined later, by [`join_any_node`].
pub(crate) async fn subscribe_requests(shared: &Arc<Shared>) -> Result<Messages> {
    let mine = shared
        .client
        .subscribe(shared.names.node_requests(&shared.me))
        .await
        .map_err(|e| Error::Nats(e.to_string()))?;
    let sends = shared
        .client
        .subscribe(shared.names.node_sends(&shared.me))
        .await
        .map_err(|e| Error::Nats(e.to_string()))?;
    Ok(futures::stream::select_all([
        RequestSubscription::new(mine),
        RequestSubscription::new(sends),
    ]))
}

/// Joins the nodes' queue group on the any-node subject (`P.req`). Called once the node took the
/// plan published when it started: a node that joined before would take its share of every
/// caller's requests only to answer "no plan yet" (a pod restarted by a rolling update cost its
/// callers 100 ms each so).
pub(crate) async fn join_any_node(shared: &Arc<Shared>) -> Result<RequestSubscription> {
    let any = shared
        .client
        .queue_subscribe(shared.names.any_node(), Names::NODE_QUEUE.to_owned())
        .await
        .map_err(|e| Error::Nats(e.to_string()))?;
    Ok(RequestSubscription::new(any))
}

/// Stops taking requests, and answers every one NATS already sent here, so none is left for its
/// caller's timeout. This node serves no shard now (or its workers stop next): each is forwarded
/// or answered with where to go. See `RequestSubscription::end_after` for why this is not
/// async-nats's `drain`.
pub(crate) async fn finish_requests(shared: &Arc<Shared>, mut requests: Messages) {
    for sub in requests.iter_mut() {
        if let Err(e) = sub.end_after(END_AFTER).await {
            tracing::warn!(error = %e, "could not end a request subscription");
        }
    }
    let left = async {
        // Until every subscription ended, or none took a request for QUIET_AT_EXIT (nobody
        // sends here any more: the plan names other owners, the queue group has other members).
        while let Ok(Some(msg)) = tokio::time::timeout(QUIET_AT_EXIT, requests.next()).await {
            take_request(shared, msg).await;
        }
    };
    if tokio::time::timeout(SHUTDOWN_GRACE, left).await.is_err() {
        tracing::warn!("requests still arriving at exit");
    }
}
