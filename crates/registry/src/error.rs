//! What the registry domain refuses, with messages a face can show as they are.

/// A refused registry request: the face answers 400 (or 404 for [`RegistryError::NotFound`]).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryError {
    /// The input is invalid; the message says which field and why.
    #[error("{0}")]
    Invalid(String),
    /// The named service, check or node does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A stored record did not decode (a bug or a damaged store).
    #[error("registry record {key}: {why}")]
    Corrupt {
        /// The record's key.
        key: String,
        /// The decoder's complaint.
        why: String,
    },
}

impl RegistryError {
    /// An [`RegistryError::Invalid`] from anything printable.
    pub fn invalid(msg: impl Into<String>) -> RegistryError {
        RegistryError::Invalid(msg.into())
    }
}
