//! Every error a client can see, with etcd's exact gRPC code and message: etcd clients match
//! on the message text, so these strings are part of the wire contract.

use berth_store::StoreError;
use tonic::{Code, Status};

use berth_auth::AuthError;

use crate::auth::AuthFailure;
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
    /// No user: an empty name, or no credential while auth is on.
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    /// UserAdd of an existing user.
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    /// Unknown user.
    #[error("etcdserver: user name not found")]
    UserNotFound,
    /// RoleAdd of an existing role.
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    /// Unknown role.
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    /// Empty role name.
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    /// Wrong user or password.
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    /// A grant without a permission.
    #[error("etcdserver: permission not given")]
    PermissionNotGiven,
    /// Not allowed.
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    /// RevokeRole of a role not granted.
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    /// RevokePermission of a permission not granted.
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    /// A bad, expired or revoked token.
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    /// Deleting root, or revoking root's role, while auth is on.
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    /// The auth state changed under the request.
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
    /// AuthEnable without root.
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    /// AuthEnable while root lacks the root role.
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
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
            UserAlreadyExist | UserNotFound | RoleAlreadyExist | RoleNotFound | RoleNotGranted
            | PermissionNotGranted | RootUserNotExist | RootRoleNotExist => {
                Code::FailedPrecondition
            }
            UserEmpty | RoleEmpty | AuthFailed | PermissionNotGiven | InvalidAuthMgmt
            | AuthOldRevision => Code::InvalidArgument,
            PermissionDenied => Code::PermissionDenied,
            InvalidAuthToken => Code::Unauthenticated,
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
            // A guard names the auth state the request was checked against.
            StoreError::GuardStale => ApiError::AuthOldRevision,
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

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> ApiError {
        match e {
            AuthError::UserEmpty => ApiError::UserEmpty,
            AuthError::UserAlreadyExists => ApiError::UserAlreadyExist,
            AuthError::UserNotFound => ApiError::UserNotFound,
            AuthError::RoleAlreadyExists => ApiError::RoleAlreadyExist,
            AuthError::RoleNotFound => ApiError::RoleNotFound,
            AuthError::RoleEmpty => ApiError::RoleEmpty,
            AuthError::AuthFailed => ApiError::AuthFailed,
            AuthError::PermissionNotGiven => ApiError::PermissionNotGiven,
            AuthError::PermissionDenied => ApiError::PermissionDenied,
            AuthError::RoleNotGranted => ApiError::RoleNotGranted,
            AuthError::PermissionNotGranted => ApiError::PermissionNotGranted,
            AuthError::NotEnabled => ApiError::AuthNotEnabled,
            AuthError::InvalidToken => ApiError::InvalidAuthToken,
            AuthError::InvalidManagement => ApiError::InvalidAuthMgmt,
            AuthError::OldRevision => ApiError::AuthOldRevision,
            AuthError::RootUserNotExist => ApiError::RootUserNotExist,
            AuthError::RootRoleNotExist => ApiError::RootRoleNotExist,
            AuthError::Options(_) | AuthError::Internal(_) => {
                tracing::error!(error = %e, "auth failure inside the server");
                ApiError::Corrupt
            }
        }
    }
}

impl From<AuthFailure> for ApiError {
    fn from(e: AuthFailure) -> ApiError {
        match e {
            AuthFailure::Auth(e) => e.into(),
            AuthFailure::Write(e) => e.into(),
        }
    }
}

impl From<AuthFailure> for Status {
    fn from(e: AuthFailure) -> Status {
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
        for (e, code, text) in [
            (
                AuthError::UserEmpty,
                Code::InvalidArgument,
                "etcdserver: user name is empty",
            ),
            (
                AuthError::PermissionDenied,
                Code::PermissionDenied,
                "etcdserver: permission denied",
            ),
            (
                AuthError::AuthFailed,
                Code::InvalidArgument,
                "etcdserver: authentication failed, invalid user ID or password",
            ),
            (
                AuthError::InvalidToken,
                Code::Unauthenticated,
                "etcdserver: invalid auth token",
            ),
            (
                AuthError::RootUserNotExist,
                Code::FailedPrecondition,
                "etcdserver: root user does not exist",
            ),
            (
                AuthError::OldRevision,
                Code::InvalidArgument,
                "etcdserver: revision of auth store is old",
            ),
            (
                AuthError::InvalidManagement,
                Code::InvalidArgument,
                "etcdserver: invalid auth management",
            ),
        ] {
            let s: Status = AuthFailure::from(e).into();
            assert_eq!((s.code(), s.message()), (code, text));
        }
        let s = store_status(StoreError::GuardStale);
        assert_eq!(s.message(), "etcdserver: revision of auth store is old");
        let s: Status = ApiError::RequestTooLarge.into();
        assert_eq!(
            (s.code(), s.message()),
            (Code::InvalidArgument, "etcdserver: request is too large")
        );
    }
}
