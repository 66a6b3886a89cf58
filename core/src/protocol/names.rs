//! Names of the NATS subjects, KV bucket and stream of one ShardPlan; docs/PROTOCOL.md, "Names".

use super::messages::ActorRef;
use crate::error::{Error, Result};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Names of the NATS subjects, KV bucket and stream of one ShardPlan, from its subject prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    prefix: String,
}

impl Names {
    /// Names under `prefix` (`spec.nats.subjectPrefix`).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The KV bucket holding the plan.
    #[must_use]
    pub fn plan_bucket(&self) -> String {
        format!("{}-plans", self.prefix)
    }

    /// The key of the plan in [`Names::plan_bucket`].
    pub const PLAN_KEY: &'static str = "plan";

    /// The keys in [`Names::plan_bucket`] where nodes say which plan they hold.
    pub const HELD_KEYS: &'static str = "held.*";

    /// The key where `pod` says which plan it holds ([`crate::protocol::Held`]).
    #[must_use]
    pub fn held_key(pod: &str) -> String {
        format!("held.{pod}")
    }

    /// The JetStream stream of actor events.
    #[must_use]
    pub fn event_stream(&self) -> String {
        format!("{}-events", self.prefix)
    }

    /// Subjects of the event stream.
    #[must_use]
    pub fn event_subjects(&self) -> String {
        format!("{}.ev.>", self.prefix)
    }

    /// Subject of one actor's events: `{prefix}.ev.{shard}.{kind}.{base64url(id)}`.
    #[must_use]
    pub fn actor_subject(&self, shard: u32, actor: &ActorRef) -> String {
        format!(
            "{}.ev.{shard}.{}.{}",
            self.prefix,
            actor.kind,
            encode_id(&actor.id)
        )
    }

    /// Subject of an actor's pending-work marker, in the event stream beside its records:
    /// `{prefix}.ev.{shard}._pending.{kind}.{base64url(id)}`. It holds a message while the actor has
    /// work no client will ask for (undelivered sends, releases owed), so whoever serves the shard
    /// next resumes it without loading every actor. (`_pending` is never a kind: kinds are
    /// `[a-z0-9-]`.)
    #[must_use]
    pub fn pending_subject(&self, shard: u32, actor: &ActorRef) -> String {
        format!(
            "{}.ev.{shard}.{PENDING_TOKEN}.{}.{}",
            self.prefix,
            actor.kind,
            encode_id(&actor.id)
        )
    }

    /// Filter for the pending-work markers of every shard.
    #[must_use]
    pub fn pending_filter(&self) -> String {
        format!("{}.ev.*.{PENDING_TOKEN}.>", self.prefix)
    }

    /// The subject prefix.
    #[must_use]
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The shard and actor an actor's subject ([`Names::actor_subject`]) names, `None` for any
    /// other subject (a pending-work marker's included).
    #[must_use]
    pub fn actor_of(&self, subject: &str) -> Option<(u32, ActorRef)> {
        let rest = subject.strip_prefix(&self.prefix)?.strip_prefix(".ev.")?;
        let mut parts = rest.split('.');
        let (shard, kind, id) = (parts.next()?, parts.next()?, parts.next()?);
        if kind == PENDING_TOKEN || parts.next().is_some() {
            return None;
        }
        Some((
            shard.parse().ok()?,
            ActorRef::new(kind, decode_id(id).ok()?),
        ))
    }

    /// The shard and actor a pending-work marker subject names, `None` for any other subject.
    #[must_use]
    pub fn pending_actor(&self, subject: &str) -> Option<(u32, ActorRef)> {
        let rest = subject.strip_prefix(&self.prefix)?.strip_prefix(".ev.")?;
        let mut parts = rest.split('.');
        let (shard, token, kind, id) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if token != PENDING_TOKEN || parts.next().is_some() {
            return None;
        }
        Some((
            shard.parse().ok()?,
            ActorRef::new(kind, decode_id(id).ok()?),
        ))
    }

    /// Requests only nodes may send to one node: forwarded requests, sends' deliveries and releases
    /// (the nodes' user publishes here, a client's may not).
    #[must_use]
    pub fn node_sends(&self, pod: &str) -> String {
        format!("{}.node.{pod}.send", self.prefix)
    }

    /// Filter for all events of a shard.
    #[must_use]
    pub fn shard_filter(&self, shard: u32) -> String {
        format!("{}.ev.{shard}.>", self.prefix)
    }

    /// Requests any node answers (queue group [`Names::NODE_QUEUE`]).
    #[must_use]
    pub fn any_node(&self) -> String {
        format!("{}.req", self.prefix)
    }

    /// Queue group of [`Names::any_node`].
    pub const NODE_QUEUE: &'static str = "nodes";

    /// Requests for one node.
    #[must_use]
    pub fn node_requests(&self, pod: &str) -> String {
        format!("{}.node.{pod}.req", self.prefix)
    }

    /// Migration transfers to one node.
    #[must_use]
    pub fn node_migrate(&self, pod: &str) -> String {
        format!("{}.node.{pod}.migrate", self.prefix)
    }

    /// The JetStream stream of progress reports: the latest report of each move, kept so an
    /// operator or node that (re)starts reads where every move stands.
    #[must_use]
    pub fn progress_stream(&self) -> String {
        format!("{}-progress", self.prefix)
    }

    /// Subjects of the progress stream.
    #[must_use]
    pub fn progress_subjects(&self) -> String {
        format!("{}.progress.>", self.prefix)
    }

    /// Subject of the reports on one move: `{prefix}.progress.{epoch}.{shard}`.
    #[must_use]
    pub fn progress(&self, epoch: u64, shard: u32) -> String {
        format!("{}.progress.{epoch}.{shard}", self.prefix)
    }

    /// Inbox prefix of the nodes' connections (replies to their requests, JetStream answers):
    /// `_INBOX_{prefix}_node`, so per-role permissions can keep other users from reading them.
    #[must_use]
    pub fn node_inbox(&self) -> String {
        format!("_INBOX_{}_node", self.prefix)
    }

    /// Whether a request that came from a client (not on [`Names::node_sends`]) may be answered on
    /// `subject`: a reply subject it may name ([`Names::is_reply_subject`]) that is not under the
    /// nodes' or the operator's inbox prefix (a client could otherwise have a node answer into a
    /// peer's or the operator's pending request).
    #[must_use]
    pub fn is_client_reply_subject(&self, subject: &str) -> bool {
        let private = [self.node_inbox(), self.operator_inbox()].iter().any(|p| {
            subject
                .strip_prefix(p.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
        });
        self.is_reply_subject(subject) && !private
    }

    /// Inbox prefix of `kubectl aether`'s connection: `_INBOX_{prefix}_inspect` (it reads actors'
    /// records, which no client may read).
    #[must_use]
    pub fn inspect_inbox(&self) -> String {
        format!("_INBOX_{}_inspect", self.prefix)
    }

    /// Inbox prefix of the operator's connection: `_INBOX_{prefix}_operator`.
    #[must_use]
    pub fn operator_inbox(&self) -> String {
        format!("_INBOX_{}_operator", self.prefix)
    }

    /// Whether a node may answer a request on `subject`: neither one of this ShardPlan's own subjects
    /// (`{prefix}.…`) nor a JetStream, KV or system subject (`$…`). A node's NATS user may publish
    /// there, so answering would let a client that only may send requests write through the node
    /// (an event record, a progress report, a `held` key); such a request is dropped unanswered.
    #[must_use]
    pub fn is_reply_subject(&self, subject: &str) -> bool {
        let own = subject
            .strip_prefix(self.prefix.as_str())
            .is_some_and(|rest| rest.starts_with('.'));
        !own && !subject.starts_with('$')
    }

    /// Node lifecycle events to the operator.
    #[must_use]
    pub fn node_events(&self) -> String {
        format!("{}.nodes", self.prefix)
    }
}

/// The token after the shard in a pending-work marker's subject ([`Names::pending_subject`]).
pub const PENDING_TOKEN: &str = "_pending";

/// Encodes an actor id as one subject token: base64url without padding of its UTF-8 bytes.
#[must_use]
pub fn encode_id(id: &str) -> String {
    if id.is_empty() {
        // An empty token is not a valid subject; "=" never appears in unpadded base64url.
        return "=".to_owned();
    }
    URL_SAFE_NO_PAD.encode(id.as_bytes())
}

/// Inverse of [`encode_id`].
pub fn decode_id(token: &str) -> Result<String> {
    if token == "=" {
        return Ok(String::new());
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|e| Error::Malformed(format!("actor id token {token:?}: {e}")))?;
    String::from_utf8(bytes).map_err(|e| Error::Malformed(format!("actor id is not UTF-8: {e}")))
}

#[cfg(test)]
mod tests {
    use super::Names;

    #[test]
    fn a_node_answers_on_inboxes_but_never_on_the_plans_own_or_dollar_subjects() {
        let n = Names::new("aether");
        for ok in [
            "_INBOX.abc.1",
            "reply.to.me",
            "aether-x.y",
            "aetherz.req",
            "other.aether.ev.1",
        ] {
            assert!(n.is_reply_subject(ok), "{ok} is a reply subject");
        }
        for refused in [
            "aether.ev.0.counter.YQ",
            "aether.progress.2.0",
            "aether.nodes",
            "aether.node.app-0.migrate",
            "$KV.aether-plans.held.app-0",
            "$JS.API.STREAM.DELETE.aether-events",
            "$SYS.REQ.SERVER.PING",
        ] {
            assert!(!n.is_reply_subject(refused), "{refused} is refused");
        }
    }
}
