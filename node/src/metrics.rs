//! Prometheus metrics of a node, served at `/metrics`. Every label value comes from one enum per
//! family ([`Route`], [`Malformed`], [`Failure`], [`AppFault`], [`MoveOutcome`]), never from ids or error text.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// A label with one fixed-vocabulary value.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    /// The value, from one of the enums below.
    pub kind: &'static str,
}

macro_rules! label_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $text:literal),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vdoc])* $variant),*
        }

        impl $name {
            /// Every value (their series are created at start, at 0, so that a dashboard or an
            /// alert finds each before the first one is counted).
            pub const ALL: &[Self] = &[$(Self::$variant),*];

            /// The label value.
            #[must_use]
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text),*
                }
            }
        }
    };
}

label_enum!(
    /// How a request was routed (`aether_node_messages_total{kind}`).
    Route {
        /// Served here.
        Local => "local",
        /// Sent on to the owner.
        Forwarded => "forwarded",
        /// Answered with a redirect.
        Redirected => "redirected",
        /// Held for its shard's commit (the shard was on its way here), then routed again.
        Held => "held",
        /// Answered unavailable (no plan, no members).
        Unavailable => "unavailable",
        /// Answered unavailable at once: `--max-inflight` requests were in flight.
        Overloaded => "overloaded",
    }
);

label_enum!(
    /// What could not be decoded (`aether_node_malformed_total{kind}`).
    Malformed {
        /// A request.
        Request => "request",
        /// A request over the size limit.
        TooLarge => "too_large",
        /// A transfer chunk.
        Transfer => "transfer",
        /// A progress report.
        Progress => "progress",
        /// A plan.
        Plan => "plan",
        /// A node's word on the plan it holds (`held.{pod}`).
        Held => "held",
        /// A request or transfer whose reply subject a node does not answer on (one of the
        /// ShardPlan's own subjects or a `$` subject): dropped unanswered and not carried out.
        ReplySubject => "reply_subject",
    }
);

label_enum!(
    /// Failures (`aether_node_failures_total{kind}`).
    Failure {
        /// A setting.
        Config => "config",
        /// NATS or JetStream.
        Nats => "nats",
        /// Another writer appended first.
        Fenced => "fenced",
        /// Over a size limit.
        TooLarge => "too_large",
        /// An unreadable log record.
        Corrupt => "corrupt",
        /// A protocol error.
        Protocol => "protocol",
        /// An invariant of the node.
        Internal => "internal",
        /// The HTTP server.
        Http => "http",
        /// A migrated actor of a kind this node lacks.
        UnknownKind => "unknown_kind",
        /// A migrated actor whose state does not read (rebuilt from the log).
        BadSnapshot => "bad_snapshot",
        /// A progress report not sent.
        Progress => "progress",
        /// A reply not sent.
        Reply => "reply",
        /// JetStream holds a record with the command's id already (its duplicate window): the
        /// append was answered as a duplicate, or the stream was asked before an app's decide
        /// (the actor is reloaded from the log; the command is not applied again).
        Duplicate => "duplicate",
        /// A shard worker ended without being stopped (restarted; its actors reload).
        WorkerDied => "worker_died",
        /// The event stream had no room for an append (the command was refused).
        StoreFull => "store_full",
        /// An app kind refused a command.
        Rejected => "rejected",
        /// A request still waiting when its caller's deadline (`timeoutMs`) passed: dropped.
        Expired => "expired",
        /// A call to the app container failed (`aether_node_app_errors_total` says how).
        App => "app",
    }
);

label_enum!(
    /// How a call to the app container failed (`aether_node_app_errors_total{kind}`).
    AppFault {
        /// No connection (the app is not listening).
        Unreachable => "unreachable",
        /// No answer within `--app-timeout`.
        Timeout => "timeout",
        /// An HTTP status other than 200.
        Status => "status",
        /// The body is not JSON of the expected shape.
        Malformed => "malformed",
        /// The body, or the state it holds, is over a size limit.
        TooLarge => "too_large",
    }
);

label_enum!(
    /// Outcomes of moves this node was the source of (`aether_node_moves_total{kind}`).
    MoveOutcome {
        /// The destination confirmed the commit.
        Done => "done",
        /// Rolled back: the source kept the shard.
        Failed => "failed",
        /// Handed off, but a newer plan came before the commit was confirmed.
        Superseded => "superseded",
    }
);

/// Every metric of a node.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Requests by route: local, forwarded, redirected, unavailable.
    pub messages: Family<Kind, Counter>,
    /// Messages that could not be decoded, by message type.
    pub malformed: Family<Kind, Counter>,
    /// Plans ignored because their epoch was not above the one held.
    pub stale_plans: Counter,
    /// Plan epoch held.
    pub epoch: Gauge,
    /// Plan epoch settled: every pod that may serve a shard under an older plan holds it, so the
    /// shards this node takes without a hand-off are served.
    pub settled: Gauge,
    /// Actors in memory.
    pub actors: Gauge,
    /// Requests queued behind paused (moving) shards.
    pub queued: Gauge,
    /// Move durations, seconds, for moves this node was the source of.
    pub move_seconds: Histogram,
    /// From a moving shard's pause to its hand-off (source side): how long its callers waited.
    pub move_pause_seconds: Histogram,
    /// Failures by reason.
    pub failures: Family<Kind, Counter>,
    /// Moves by outcome as source.
    pub moves: Family<Kind, Counter>,
    /// Failed calls to the app container, by how they failed.
    pub app_errors: Family<Kind, Counter>,
    /// Actors passivated because the node held `--max-actors` (least recently used first).
    pub evicted: Counter,
    /// Duration of calls to the app container (decide, apply, kinds), seconds.
    pub app_call_seconds: Histogram,
    /// Calls to the app container by path (`kinds`, `decide`, `apply`).
    pub app_calls: Family<Kind, Counter>,
    /// Actors in this node's look indexes: with timers (their earliest due time is held), or with
    /// sends to resume, whether the actor is in memory or not.
    pub timers_pending: Gauge,
    /// Bytes the look indexes have allocated.
    pub timer_index_bytes: Gauge,
    /// Timer firings applied (their records landed).
    pub timer_firings: Counter,
    /// Periodic timers' ticks skipped and coalesced into a later firing.
    pub timer_missed: Counter,
    /// From a timer's due time to its firing starting, seconds.
    pub timer_lateness: Histogram,
    /// Requests served by this node's shards, from routing to the reply, seconds.
    pub request_seconds: Histogram,
    /// 1 while the node's NATS connection is up, 0 while it reconnects.
    pub nats_connected: Gauge,
    /// Times the node's NATS connection was lost.
    pub nats_disconnects: Counter,
}

/// Paths of calls to the app container (`aether_node_app_calls_total{kind}`).
pub const APP_CALLS: &[&str] = &["kinds", "decide", "apply"];

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("aether_node");
        let messages = Family::default();
        let malformed = Family::default();
        let failures = Family::default();
        let moves = Family::default();
        let app_errors = Family::default();
        let app_calls = Family::default();
        let evicted = Counter::default();
        let timers_pending = Gauge::default();
        let timer_index_bytes = Gauge::default();
        let timer_firings = Counter::default();
        let timer_missed = Counter::default();
        let timer_lateness =
            Histogram::new([0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 60.0]);
        let app_call_seconds = Histogram::new([
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0,
        ]);
        let stale_plans = Counter::default();
        let epoch = Gauge::default();
        let settled = Gauge::default();
        let actors = Gauge::default();
        let queued = Gauge::default();
        let move_seconds =
            Histogram::new([0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0]);
        let move_pause_seconds =
            Histogram::new([0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0, 5.0]);
        registry.register("messages", "Requests by route", messages.clone());
        registry.register(
            "malformed",
            "Undecodable messages by type",
            malformed.clone(),
        );
        registry.register(
            "stale_plans",
            "Plans ignored for a non-increasing epoch",
            stale_plans.clone(),
        );
        registry.register("plan_epoch", "Plan epoch held", epoch.clone());
        registry.register(
            "plan_settled_epoch",
            "Plan epoch every pod this node waits for holds (shards taken without a hand-off served)",
            settled.clone(),
        );
        registry.register("actors_hosted", "Actors in memory", actors.clone());
        registry.register(
            "queue_depth",
            "Requests queued behind moving shards",
            queued.clone(),
        );
        registry.register(
            "move_duration_seconds",
            "Shard move durations (source side)",
            move_seconds.clone(),
        );
        registry.register(
            "move_pause_seconds",
            "From a moving shard's pause to its hand-off (source side): what callers wait",
            move_pause_seconds.clone(),
        );
        registry.register("failures", "Failures by reason", failures.clone());
        registry.register(
            "moves",
            "Shard moves by outcome (source side)",
            moves.clone(),
        );
        registry.register(
            "app_errors",
            "Failed calls to the app container by how they failed",
            app_errors.clone(),
        );
        registry.register(
            "app_call_duration_seconds",
            "Calls to the app container (decide, apply, kinds)",
            app_call_seconds.clone(),
        );
        registry.register(
            "app_calls",
            "Calls to the app container by call",
            app_calls.clone(),
        );
        registry.register(
            "timers_pending",
            "Actors whose next look (earliest timer, or sends to resume) this node's indexes hold",
            timers_pending.clone(),
        );
        registry.register(
            "timer_index_bytes",
            "Bytes allocated by this node's look indexes",
            timer_index_bytes.clone(),
        );
        registry.register(
            "timer_firings",
            "Timer firings applied",
            timer_firings.clone(),
        );
        registry.register(
            "timer_missed_ticks",
            "Periodic timers' ticks skipped and coalesced into a later firing",
            timer_missed.clone(),
        );
        registry.register(
            "timer_lateness_seconds",
            "From a timer's due time to its firing starting",
            timer_lateness.clone(),
        );
        registry.register(
            "evicted",
            "Actors passivated because the node held --max-actors",
            evicted.clone(),
        );
        let nats_connected = Gauge::default();
        let nats_disconnects = Counter::default();
        let request_seconds = Histogram::new([
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0, 5.0,
        ]);
        registry.register(
            "request_duration_seconds",
            "Requests served by this node's shards, from routing to the reply",
            request_seconds.clone(),
        );
        registry.register(
            "nats_connected",
            "1 while the node's NATS connection is up, 0 while it reconnects",
            nats_connected.clone(),
        );
        registry.register(
            "nats_disconnects",
            "Times the node's NATS connection was lost",
            nats_disconnects.clone(),
        );
        let label = |kind: &'static str| Kind { kind };
        for r in Route::ALL {
            let _ = messages.get_or_create(&label(r.as_str()));
        }
        for m in Malformed::ALL {
            let _ = malformed.get_or_create(&label(m.as_str()));
        }
        for f in Failure::ALL {
            let _ = failures.get_or_create(&label(f.as_str()));
        }
        for f in AppFault::ALL {
            let _ = app_errors.get_or_create(&label(f.as_str()));
        }
        for o in MoveOutcome::ALL {
            let _ = moves.get_or_create(&label(o.as_str()));
        }
        for c in APP_CALLS {
            let _ = app_calls.get_or_create(&label(c));
        }
        Self {
            request_seconds,
            nats_connected,
            nats_disconnects,
            registry,
            evicted,
            timers_pending,
            timer_index_bytes,
            timer_firings,
            timer_missed,
            timer_lateness,
            app_calls,
            app_errors,
            app_call_seconds,
            messages,
            malformed,
            stale_plans,
            epoch,
            settled,
            actors,
            queued,
            move_seconds,
            move_pause_seconds,
            failures,
            moves,
        }
    }
}

impl Metrics {
    /// Counts a routed request.
    pub fn route(&self, kind: Route) {
        self.messages
            .get_or_create(&Kind {
                kind: kind.as_str(),
            })
            .inc();
    }

    /// Counts an undecodable message.
    pub fn malformed(&self, kind: Malformed) {
        self.malformed
            .get_or_create(&Kind {
                kind: kind.as_str(),
            })
            .inc();
    }

    /// Counts a failure.
    pub fn failure(&self, kind: Failure) {
        self.failures
            .get_or_create(&Kind {
                kind: kind.as_str(),
            })
            .inc();
    }

    /// Counts a failed app call.
    pub fn app_error(&self, kind: AppFault) {
        self.app_errors
            .get_or_create(&Kind {
                kind: kind.as_str(),
            })
            .inc();
    }

    /// The count of one kind of failed app call (for tests).
    #[must_use]
    pub fn app_errors_of(&self, kind: AppFault) -> u64 {
        self.app_errors
            .get_or_create(&Kind {
                kind: kind.as_str(),
            })
            .get()
    }

    /// Counts a call to the app (`call`: kinds, decide or apply).
    pub fn app_call(&self, call: &'static str) {
        self.app_calls.get_or_create(&Kind { kind: call }).inc();
    }

    /// The count of one app call (for tests).
    #[must_use]
    pub fn app_calls_of(&self, call: &'static str) -> u64 {
        self.app_calls.get_or_create(&Kind { kind: call }).get()
    }

    /// Counts a move's outcome.
    pub fn move_outcome(&self, kind: MoveOutcome) {
        self.moves
            .get_or_create(&Kind {
                kind: kind.as_str(),
            })
            .inc();
    }

    /// The count of one kind of routed request (for tests).
    #[must_use]
    pub fn routes_of(&self, kind: Route) -> u64 {
        self.messages
            .get_or_create(&Kind {
                kind: kind.as_str(),
            })
            .get()
    }

    /// The count of one failure kind (for tests).
    #[must_use]
    pub fn failures_of(&self, kind: Failure) -> u64 {
        self.failures
            .get_or_create(&Kind {
                kind: kind.as_str(),
            })
            .get()
    }

    /// The count of one kind of undecodable message (for tests).
    #[must_use]
    pub fn malformed_of(&self, kind: Malformed) -> u64 {
        self.malformed
            .get_or_create(&Kind {
                kind: kind.as_str(),
            })
            .get()
    }

    /// Prometheus text exposition.
    #[must_use]
    pub fn render(&self) -> String {
        aether_nats::process::render_metrics(&self.registry)
    }
}
