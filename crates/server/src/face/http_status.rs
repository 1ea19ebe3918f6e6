//! The HTTP statuses the JSON faces (berth's API, Nacos) share for failures that are not
//! their own: a write that did not go through, and a refused credential.

use axum::http::StatusCode;
use berth_auth::AuthError;

use crate::consensus::WriteError;

/// A write's failure: 507 out of space, 409 when the auth state it was checked against
/// changed before it applied (the client retries), 400 refused by the store, else 503 (no
/// leader, stopped, outcome unknown).
pub fn of_write(e: &WriteError) -> StatusCode {
    match e {
        WriteError::Refused(berth_store::StoreError::NoSpace) => StatusCode::INSUFFICIENT_STORAGE,
        WriteError::Refused(berth_store::StoreError::GuardStale) => StatusCode::CONFLICT,
        WriteError::Refused(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// A credential's refusal: 401 when there is none or it no longer holds, else 403.
pub fn of_auth(e: &AuthError) -> StatusCode {
    match e {
        AuthError::UserEmpty | AuthError::InvalidToken | AuthError::OldRevision => {
            StatusCode::UNAUTHORIZED
        }
        _ => StatusCode::FORBIDDEN,
    }
}
