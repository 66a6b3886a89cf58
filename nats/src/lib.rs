//! What aether's operator and node sidecar share, and nothing else: the plan bucket in NATS KV
//! ([`plans`]: both may create it, the operator publishes, the nodes watch) and process plumbing
//! ([`process`]: the termination signal, NATS URLs, metric text; [`telemetry`]: logs and traces). The operator depends on this
//! crate and the core, never on the node.

pub mod plans;
pub mod process;
pub mod progress;
pub mod telemetry;

/// What can go wrong here.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is invalid (a NATS URL).
    #[error("configuration: {0}")]
    Config(String),
    /// NATS or JetStream failed.
    #[error("nats: {0}")]
    Nats(String),
    /// The bucket holds a plan of this epoch or a later one.
    #[error("the bucket holds epoch {held} already; plan epoch {epoch} is stale")]
    StalePlan {
        /// Epoch in the bucket.
        held: u64,
        /// Epoch offered.
        epoch: u64,
    },
    /// A message did not encode.
    #[error(transparent)]
    Protocol(#[from] aether_core::Error),
}

/// Result with this crate's [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
