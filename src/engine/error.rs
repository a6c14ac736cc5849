//! What can go wrong in the engine, in terms a caller can act on. A miss is `None`, not an error.

/// An engine failure. Each variant maps to one HTTP status in `http::error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("invalid key: {0}")]
    InvalidKey(String),
    #[error("invalid ttl: {0}")]
    InvalidTtl(String),
    #[error("invalid tags: {0}")]
    InvalidTags(String),
    #[error("invalid depends_on: {0}")]
    InvalidDependencies(String),
    #[error("value too large: {0}")]
    ValueTooLarge(String),
    /// L2 is configured but could not take part in an operation that needs it.
    #[error("l2 unavailable")]
    L2Unavailable,
    /// The origin failed for a read and no stale copy could stand in.
    #[error("{0}")]
    Origin(super::OriginError),
}
