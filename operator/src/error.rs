//! The operator's one error type.

/// The operator's one error type.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kubernetes API refused or failed a call.
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    /// A NATS call failed.
    #[error("nats: {0}")]
    Nats(String),
    /// The object lacks what every object has (a namespace).
    #[error("invalid object: {0}")]
    Invalid(String),
}

impl Error {
    /// Metric label: a fixed category per variant.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        // Each is in [`REASONS`].
        match self {
            Self::Kube(kube::Error::Api(s)) if s.code == 409 => "conflict",
            Self::Kube(_) => "kube",
            Self::Nats(_) => "nats",
            Self::Invalid(_) => "invalid",
        }
    }
}

/// Every [`Error::reason`] (`aether_operator_reconcile_errors_total{reason}`, each at 0 from the start).
pub const REASONS: [&str; 4] = ["conflict", "kube", "nats", "invalid"];

/// Result with the operator's [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
