//! The node's one error type. Request handling maps each variant to an error reply code.

use crate::metrics::{AppFault, Failure};
use aether_core::protocol::{ErrorCode, ErrorReply};

/// What can go wrong in a node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is missing or invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// NATS or JetStream failed.
    #[error("nats: {0}")]
    Nats(String),
    /// Another writer appended to the actor first (expected-sequence check).
    #[error("fenced: {0}")]
    Fenced(String),
    /// JetStream already holds a record with this command id (its duplicate window): the command
    /// was applied before; the stream sequence of that record.
    #[error("duplicate of the record at sequence {0}")]
    Duplicate(u64),
    /// The event stream (or the account's JetStream storage) has no room for the append.
    #[error("event stream full: {0}")]
    StoreFull(String),
    /// A message or record over a size limit.
    #[error("too large: {0}")]
    TooLarge(String),
    /// A record in the log that cannot be read.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// The plan bucket or process plumbing shared with the operator.
    #[error(transparent)]
    Shared(#[from] aether_nats::Error),
    /// A protocol error from the core.
    #[error(transparent)]
    Protocol(#[from] aether_core::Error),
    /// An invariant of the node itself.
    #[error("internal: {0}")]
    Internal(String),
    /// The app container's kind refused the command (`rejected`).
    #[error("{0}")]
    Rejected(String),
    /// A call to the app container failed; nothing was appended.
    #[error("app {fault}: {1}", fault = .0.as_str())]
    App(AppFault, String),
    /// HTTP server failure.
    #[error("http: {0}")]
    Http(#[from] std::io::Error),
}

impl Error {
    /// Metric label: a fixed category per variant, never a Debug string.
    #[must_use]
    pub fn failure(&self) -> Failure {
        match self {
            Self::Config(_) => Failure::Config,
            Self::Nats(_) => Failure::Nats,
            Self::Fenced(_) => Failure::Fenced,
            Self::Duplicate(_) => Failure::Duplicate,
            Self::StoreFull(_) => Failure::StoreFull,
            Self::TooLarge(_) => Failure::TooLarge,
            Self::Corrupt(_) => Failure::Corrupt,
            Self::Protocol(_) => Failure::Protocol,
            Self::Shared(_) => Failure::Nats,
            Self::Internal(_) => Failure::Internal,
            Self::Http(_) => Failure::Http,
            Self::Rejected(_) => Failure::Rejected,
            Self::App(..) => Failure::App,
        }
    }

    /// The reply a caller gets for this error.
    #[must_use]
    pub fn to_reply(&self) -> ErrorReply {
        let code = match self {
            Self::TooLarge(_) => ErrorCode::TooLarge,
            Self::Protocol(e) => return ErrorReply::from_decode(e),
            Self::Fenced(_) => return ErrorReply::unavailable(self.to_string(), 50),
            Self::StoreFull(_) => return ErrorReply::unavailable(self.to_string(), 1000),
            Self::Rejected(why) => return ErrorReply::new(ErrorCode::Rejected, why.clone()),
            // The app is down or slow: the command was not decided, nothing appended; retry.
            Self::App(AppFault::Unreachable | AppFault::Timeout, _) => {
                return ErrorReply::unavailable(self.to_string(), 500);
            }
            Self::App(..) => ErrorCode::AppError,
            _ => ErrorCode::Internal,
        };
        ErrorReply::new(code, self.to_string())
    }
}

/// Result with the node's [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
