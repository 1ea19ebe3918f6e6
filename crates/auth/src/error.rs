//! The security domain's errors. Faces map each to their protocol (the etcd face: its exact
//! gRPC code and message, `face/etcd/errors.rs`); the display strings here are etcd's texts
//! without the `etcdserver: ` prefix, for logs.

/// Why an auth operation or a permission check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No user: an empty name given, or no credential presented while auth is on.
    #[error("user name is empty")]
    UserEmpty,
    /// UserAdd of a name that exists.
    #[error("user name already exists")]
    UserAlreadyExists,
    /// The user does not exist.
    #[error("user name not found")]
    UserNotFound,
    /// RoleAdd of a name that exists.
    #[error("role name already exists")]
    RoleAlreadyExists,
    /// The role does not exist.
    #[error("role name not found")]
    RoleNotFound,
    /// An empty role name.
    #[error("role name is empty")]
    RoleEmpty,
    /// Wrong user or password, or a user that cannot log in with a password.
    #[error("authentication failed, invalid user ID or password")]
    AuthFailed,
    /// A grant without a permission.
    #[error("permission not given")]
    PermissionNotGiven,
    /// The user's roles do not grant the operation.
    #[error("permission denied")]
    PermissionDenied,
    /// RevokeRole of a role the user does not have.
    #[error("role is not granted to the user")]
    RoleNotGranted,
    /// RevokePermission of a permission the role does not have.
    #[error("permission is not granted to the role")]
    PermissionNotGranted,
    /// Authenticate while auth is off.
    #[error("authentication is not enabled")]
    NotEnabled,
    /// A token that is malformed, forged, expired or revoked.
    #[error("invalid auth token")]
    InvalidToken,
    /// A change that would lock everyone out (deleting root, revoking root's role).
    #[error("invalid auth management")]
    InvalidManagement,
    /// The auth state changed between the permission check and the operation.
    #[error("revision of auth store is old")]
    OldRevision,
    /// AuthEnable without a `root` user.
    #[error("root user does not exist")]
    RootUserNotExist,
    /// AuthEnable while `root` lacks the `root` role.
    #[error("root user does not have root role")]
    RootRoleNotExist,
    /// A token option or key that cannot be used (configuration, not a client error).
    #[error("invalid auth options: {0}")]
    Options(String),
    /// Hashing or signing failed inside the server.
    #[error("auth internal error: {0}")]
    Internal(String),
}
