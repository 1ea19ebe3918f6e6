//! What the gateway domain refuses, with messages in APISIX's words where APISIX has words
//! for it, so a face can show them as they are.

/// A refused gateway request.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GatewayError {
    /// The resource does not follow its schema; the message names the field.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// A request the resources as they are refuse (a duplicate credential, a wrong name),
    /// in APISIX's words.
    #[error("{0}")]
    Refused(String),
    /// A plugin berth does not know.
    #[error("unknown plugin [{0}]")]
    UnknownPlugin(String),
    /// A plugin APISIX has that berth does not run yet: refused rather than ignored.
    #[error("plugin [{0}] is not supported by berth yet")]
    Unsupported(String),
    /// A reference to a resource that does not exist.
    #[error("failed to fetch {kind} info by {kind} id [{id}], response code: 404")]
    Missing {
        /// The referenced kind (`upstream`, `service`).
        kind: &'static str,
        /// The ID named.
        id: String,
    },
    /// A delete of a resource others still use.
    #[error("can not delete this {kind}, {user} [{user_id}] is still using it now")]
    InUse {
        /// The kind being deleted.
        kind: &'static str,
        /// The kind that uses it.
        user: &'static str,
        /// Its ID.
        user_id: String,
    },
    /// A stored record did not decode (a bug or a damaged store).
    #[error("gateway record {key}: {why}")]
    Corrupt {
        /// The record's key.
        key: String,
        /// The decoder's complaint.
        why: String,
    },
}

impl GatewayError {
    /// An [`GatewayError::Invalid`] from anything printable.
    pub fn invalid(msg: impl Into<String>) -> GatewayError {
        GatewayError::Invalid(msg.into())
    }
}
