//! Errors the store returns: etcd's semantic errors plus storage failures.
//! The server maps each variant onto etcd's exact gRPC code and message.

/// Everything that can go wrong inside the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The requested revision was removed by compaction.
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    /// The requested revision has not happened yet.
    #[error("mvcc: required revision is a future revision")]
    FutureRevision,
    /// The lease does not exist (or has expired).
    #[error("requested lease not found")]
    LeaseNotFound,
    /// A lease with the requested ID already exists.
    #[error("lease already exists")]
    LeaseExists,
    /// The requested lease TTL exceeds the maximum.
    #[error("too large lease TTL")]
    LeaseTtlTooLarge,
    /// A put with `ignore_value`/`ignore_lease` named a key that does not exist.
    #[error("key not found")]
    KeyNotFound,
    /// A NOSPACE alarm is active: writes that grow the database are refused.
    #[error("mvcc: database space exceeded")]
    NoSpace,
    /// A guarded command's guard key changed after the revision its checks saw (the face's
    /// checks, e.g. permissions, rest on state that has moved on).
    #[error("guard stale: the state the request was checked against has changed")]
    GuardStale,
    /// The embedded storage engine failed.
    #[error("storage: {0}")]
    Storage(#[from] redb::Error),
    /// Data on disk did not decode.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// Filesystem error outside the engine (snapshots, directories).
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Result alias for store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Converts any redb error type into [`StoreError::Storage`].
pub(crate) trait DbResult<T> {
    /// Maps the engine error into a store error.
    fn db(self) -> Result<T>;
}

impl<T, E: Into<redb::Error>> DbResult<T> for std::result::Result<T, E> {
    fn db(self) -> Result<T> {
        self.map_err(|e| StoreError::Storage(e.into()))
    }
}
