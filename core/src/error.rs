//! The one error type of the core crate. Each variant is a fact a caller can act on; the operator turns
//! them into Degraded conditions, the node into error replies.

/// Everything the pure core can refuse.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum Error {
    /// `shards` must lie in `1..=65536`.
    #[error("shards must be between 1 and {max}, got {got}")]
    InvalidShards { got: u64, max: u32 },
    /// `capacity` must lie in `1..=65535`.
    #[error("capacity must be between 1 and {max}, got {got}")]
    InvalidCapacity { got: u64, max: u32 },
    /// More members than AnchorHash buckets.
    #[error(
        "{members} members do not fit into capacity {capacity}: raise spec.capacity (a new ShardPlan) or scale down"
    )]
    TooManyMembers { members: usize, capacity: u32 },
    /// An immutable setting differs from the one the previous plan was made with.
    #[error(
        "{field} is immutable: the previous plan used {previous}, the spec asks for {requested}"
    )]
    Immutable {
        field: &'static str,
        previous: u64,
        requested: u64,
    },
    /// Persisted placement state that does not describe a reachable AnchorHash state.
    #[error("corrupt placement state: {0}")]
    CorruptState(String),
    /// A member name that cannot be used (empty, or listed twice).
    #[error("invalid member {name:?}: {reason}")]
    InvalidMember { name: String, reason: &'static str },
    /// Bytes that are not a message of the protocol.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A field over one of the protocol's size limits (docs/PROTOCOL.md, "Limits").
    #[error("too large: {0}")]
    TooLarge(String),
    /// A message of a protocol version this build does not speak.
    #[error("unsupported protocol version {got} (this build speaks {supported})")]
    UnsupportedVersion { got: u64, supported: u16 },
}

/// Result with the core [`enum@Error`] by default.
pub type Result<T, E = Error> = std::result::Result<T, E>;
