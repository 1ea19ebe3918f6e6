//! Every error a client can see, with etcd's exact gRPC code and message: etcd clients match
//! on the message text, so these strings are part of the wire contract.

use berth_store::StoreError;
use tonic::{Code, Status};

use crate::consensus::WriteError;

/// Errors of the etcd API layer.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Request key is empty.
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// `ignore_value`/`ignore_lease` on a missing key.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// `ignore_value` together with a value.
    #[error("etcdserver: value is provided")]
    ValueProvided,
    /// `ignore_lease` together with a lease.
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    /// Txn has too many operations.
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    /// Txn nested deeper than berth accepts (etcd has no such bound; see `MAX_TXN_DEPTH`).
    #[error(
        "etcdserver: txn nested too deeply (at most {} levels)",
        crate::face::etcd::kv::MAX_TXN_DEPTH
    )]
    TxnTooDeep,
    /// Txn writes the same key twice.
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// Unknown sort order or target.
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
    /// Revision compacted.
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    /// Revision in the future.
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRev,
    /// The database reached its quota.
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// Lease missing.
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// Lease ID taken.
    #[error("etcdserver: lease already exists")]
    LeaseExist,
    /// Lease TTL above the maximum.
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    /// Request bigger than `--max-request-bytes`.
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    /// Member ID unknown.
    #[error("etcdserver: member not found")]
    MemberNotFound,
    /// MemberAdd for a member that exists.
    #[error("etcdserver: member ID already exist")]
    MemberExist,
    /// MemberAdd with peer URLs another member has.
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExist,
    /// Peer URLs that do not parse.
    #[error("etcdserver: given member URLs are invalid")]
    MemberBadUrls,
    /// MemberPromote of a voter.
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    /// A request only the leader can serve reached a follower.
    #[error("etcdserver: not leader")]
    NotLeader,
    /// MoveLeader to a member that cannot lead.
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    /// Auth is not enabled.
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    /// The RPC is not supported by this server yet.
    #[error("etcdserver: not capable")]
    NotCapable,
    /// A membership change could not be made now.
    #[error("etcdserver: re-configuration failed: {0}")]
    Membership(String),
    /// Leadership changed while the request was in flight; its outcome is unknown.
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    /// No leader is known right now (election in progress or no quorum).
    #[error("etcdserver: no leader")]
    NoLeader,
    /// The server is shutting down.
    #[error("etcdserver: server stopped")]
    Stopped,
    /// The storage engine failed.
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
}

impl ApiError {
    /// The gRPC code etcd uses for this error.
    pub fn code(&self) -> Code {
        use ApiError::*;
        match self {
            EmptyKey | KeyNotFound | ValueProvided | LeaseProvided | TooManyOps | TxnTooDeep
            | DuplicateKey | InvalidSortOption | RequestTooLarge => Code::InvalidArgument,
            Compacted | FutureRev | LeaseTtlTooLarge => Code::OutOfRange,
            LeaseNotFound | MemberNotFound => Code::NotFound,
            MemberExist | PeerUrlExist | MemberNotLearner | NotLeader | BadLeaderTransferee => {
                Code::FailedPrecondition
            }
            MemberBadUrls => Code::InvalidArgument,
            LeaseExist | AuthNotEnabled | NotCapable | Membership(_) => Code::FailedPrecondition,
            Stopped | NoLeader | LeaderChanged => Code::Unavailable,
            NoSpace => Code::ResourceExhausted,
            Corrupt => Code::DataLoss,
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Compacted => ApiError::Compacted,
            StoreError::FutureRevision => ApiError::FutureRev,
            StoreError::LeaseNotFound => ApiError::LeaseNotFound,
            StoreError::LeaseExists => ApiError::LeaseExist,
            StoreError::LeaseTtlTooLarge => ApiError::LeaseTtlTooLarge,
            StoreError::KeyNotFound => ApiError::KeyNotFound,
            StoreError::NoSpace => ApiError::NoSpace,
            other => {
                tracing::error!(error = %other, "storage failure");
                ApiError::Corrupt
            }
        }
    }
}

/// The etcd face's reading of the write path's neutral errors.
impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> ApiError {
        match e {
            WriteError::Refused(e) => e.into(),
            WriteError::NotLeader => ApiError::NoLeader,
            WriteError::Membership(reason) => ApiError::Membership(reason),
            // Not a failure: the write may have been applied (etcd's "leader changed").
            WriteError::Unknown => ApiError::LeaderChanged,
            WriteError::Stopped(_) => ApiError::Stopped,
        }
    }
}

impl From<WriteError> for Status {
    fn from(e: WriteError) -> Status {
        ApiError::from(e).into()
    }
}

/// Maps a store error straight to the gRPC status etcd would send.
pub fn store_status(e: StoreError) -> Status {
    ApiError::from(e).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_messages_match_etcd() {
        let s = store_status(StoreError::Compacted);
        assert_eq!(s.code(), Code::OutOfRange);
        assert_eq!(
            s.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        let s = store_status(StoreError::LeaseNotFound);
        assert_eq!(
            (s.code(), s.message()),
            (Code::NotFound, "etcdserver: requested lease not found")
        );
        let s: Status = WriteError::Unknown.into();
        assert_eq!(
            (s.code(), s.message()),
            (Code::Unavailable, "etcdserver: leader changed")
        );
        let s: Status = WriteError::NotLeader.into();
        assert_eq!(
            (s.code(), s.message()),
            (Code::Unavailable, "etcdserver: no leader")
        );
        let s: Status = ApiError::RequestTooLarge.into();
        assert_eq!(
            (s.code(), s.message()),
            (Code::InvalidArgument, "etcdserver: request is too large")
        );
    }
}
