//! The node's one error type. Request handling maps each variant to an error reply code.

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
    /// A message or record over a size limit.
    #[error("too large: {0}")]
    TooLarge(String),
    /// A record in the log that cannot be read.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// A protocol error from the core.
    #[error(transparent)]
    Protocol(#[from] aether_core::Error),
    /// An invariant of the node itself.
    #[error("internal: {0}")]
    Internal(String),
    /// HTTP server failure.
    #[error("http: {0}")]
    Http(#[from] std::io::Error),
}

impl Error {
    /// Metric label: a fixed category per variant, never a Debug string.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Config(_) => "config",
            Self::Nats(_) => "nats",
            Self::Fenced(_) => "fenced",
            Self::TooLarge(_) => "too_large",
            Self::Corrupt(_) => "corrupt",
            Self::Protocol(_) => "protocol",
            Self::Internal(_) => "internal",
            Self::Http(_) => "http",
        }
    }

    /// The reply a caller gets for this error.
    #[must_use]
    pub fn to_reply(&self) -> ErrorReply {
        let code = match self {
            Self::TooLarge(_) => ErrorCode::TooLarge,
            Self::Protocol(e) => return ErrorReply::from_decode(e),
            Self::Fenced(_) => {
                let mut e = ErrorReply::new(ErrorCode::Unavailable, self.to_string());
                e.retry_after_ms = Some(50);
                return e;
            }
            _ => ErrorCode::Internal,
        };
        ErrorReply::new(code, self.to_string())
    }
}

/// Result with the node's [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
