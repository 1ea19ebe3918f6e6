//! What the configuration center refuses, with messages a face can show as they are.

/// A refused configuration request.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The input is invalid; the message says which field and why.
    #[error("{0}")]
    Invalid(String),
    /// The content is larger than the configured limit.
    #[error("content is {size} bytes, more than the limit of {limit} bytes (--config-max-content-bytes)")]
    TooLarge {
        /// The content's size in bytes.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The namespace does not exist.
    #[error("namespace {0:?} does not exist")]
    UnknownNamespace(String),
    /// The item (or the version of it) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// What a create or an import would write exists already.
    #[error("{0}")]
    Exists(String),
    /// A compare-and-publish found another MD5 than the one given.
    #[error("the item's MD5 is {current:?}, not {expected:?}: it was changed since it was read")]
    Conflict {
        /// The MD5 the caller expected.
        expected: String,
        /// The MD5 the item has (empty when it does not exist).
        current: String,
    },
    /// A stored record did not decode (a bug or a damaged store).
    #[error("config record {key}: {why}")]
    Corrupt {
        /// The record's key.
        key: String,
        /// The decoder's complaint.
        why: String,
    },
}

impl ConfigError {
    /// An [`ConfigError::Invalid`] from anything printable.
    pub fn invalid(msg: impl Into<String>) -> ConfigError {
        ConfigError::Invalid(msg.into())
    }
}
