//! `/api/v1/auth`: roles' permissions in every keyspace a face checks. etcd's
//! `RoleGrantPermission` names keys of the user keyspace only; here a grant also names its
//! keyspace (`user`, `registry`, `config`, `gateway`, `messaging`), which is how NATS
//! subjects, Nacos configuration items and the gateway's resources are granted to roles.
//! Changing grants needs root; reading a role needs root or the role.
//!
//! - `GET /roles/{role}`: `{"role", "permissions": [{"keyspace", "permission", "key",
//!   "range_end"}]}`.
//! - `POST /roles/{role}/permissions` `{"keyspace", "permission": "read"|"write"|"readwrite",
//!   "key", "range_end"?, "prefix"?}`: grants (or changes) one; `prefix: true` grants every
//!   key starting with `key` (`range_end` is then made, as etcdctl's `--prefix`).
//! - `DELETE /roles/{role}/permissions` `{"keyspace", "key", "range_end"?, "prefix"?}`:
//!   revokes exactly that grant.
//!
//! Keys are UTF-8 strings here (subjects, item keys, resource keys); etcd's binary keys stay
//! with etcd's API.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use berth_auth::{change, Access, AuthError, Permission};
use berth_store::Keyspace;
use serde::Deserialize;
use serde_json::json;

use super::{credential, parse, principal, ApiError};
use crate::auth::AuthFailure;
use crate::core::Core;

pub fn routes() -> Router<Arc<Core>> {
    Router::new()
        .route("/roles/{role}", get(show))
        .route("/roles/{role}/permissions", post(grant).delete(revoke))
}

/// The keyspaces a grant may name: every one a face checks (the auth keyspace is root's).
const GRANTABLE: [Keyspace; 5] = [
    Keyspace::User,
    Keyspace::Registry,
    Keyspace::Config,
    Keyspace::Gateway,
    Keyspace::Messaging,
];

fn keyspace(name: &str) -> Result<Keyspace, ApiError> {
    GRANTABLE
        .into_iter()
        .find(|k| k.name() == name)
        .ok_or_else(|| {
            let names: Vec<&str> = GRANTABLE.iter().map(|k| k.name()).collect();
            ApiError::bad(format!(
                "unknown keyspace {name:?}: one of {}",
                names.join(", ")
            ))
        })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Grant {
    keyspace: String,
    #[serde(default)]
    permission: Option<Access>,
    key: String,
    #[serde(default)]
    range_end: Option<String>,
    #[serde(default)]
    prefix: bool,
}

impl Grant {
    /// Keyspace, key and range end, checked.
    fn range(&self) -> Result<(Keyspace, Vec<u8>, Vec<u8>), ApiError> {
        let ks = keyspace(&self.keyspace)?;
        let key = self.key.as_bytes().to_vec();
        let end = match (&self.range_end, self.prefix) {
            (Some(_), true) => return Err(ApiError::bad("give range_end or prefix, not both")),
            (Some(e), false) => e.as_bytes().to_vec(),
            (None, true) => berth_proto::keys::prefix_end(&key),
            (None, false) => Vec::new(),
        };
        if key.is_empty() && end.is_empty() {
            return Err(ApiError::bad("key is empty"));
        }
        if !end.is_empty() && end != [0] && end <= key {
            return Err(ApiError::bad("range_end must come after key"));
        }
        Ok((ks, key, end))
    }
}

/// An auth refusal as this API answers it: a missing role or grant is a 404.
fn refused(e: AuthFailure) -> ApiError {
    match e {
        AuthFailure::Auth(a @ (AuthError::RoleNotFound | AuthError::PermissionNotGranted)) => {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", a.to_string())
        }
        other => other.into(),
    }
}

async fn show(
    State(core): State<Arc<Core>>,
    Path(role): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    principal(&core, &headers)?
        .admin_or_role(&role)
        .map_err(refused)?;
    let view = core.auth.view();
    let r = view
        .role(&role)
        .ok_or_else(|| refused(AuthError::RoleNotFound.into()))?;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let perms: Vec<_> = r
        .permissions
        .iter()
        .map(|p| {
            json!({
                "keyspace": Keyspace::from_id(u32::from(p.keyspace)).map_or("unknown", Keyspace::name),
                "permission": p.access,
                "key": text(&p.key),
                "range_end": text(&p.range_end),
            })
        })
        .collect();
    Ok(Json(json!({"role": r.name, "permissions": perms})).into_response())
}

async fn grant(
    State(core): State<Arc<Core>>,
    Path(role): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let g: Grant = parse(&body)?;
    let (ks, key, range_end) = g.range()?;
    let access = g
        .permission
        .ok_or_else(|| ApiError::bad("permission is missing: read, write or readwrite"))?;
    let p = Permission {
        keyspace: ks.id(),
        access,
        key,
        range_end,
    };
    changed(&core, &headers, "granted", &role, ks, |v| {
        change::role_grant_permission(v, &role, p.clone())
    })
    .await
}

async fn revoke(
    State(core): State<Arc<Core>>,
    Path(role): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let g: Grant = parse(&body)?;
    if g.permission.is_some() {
        return Err(ApiError::bad("a revoke names no permission"));
    }
    let (ks, key, range_end) = g.range()?;
    changed(&core, &headers, "revoked", &role, ks, |v| {
        change::role_revoke_permission(v, &role, ks.id(), &key, &range_end)
    })
    .await
}

/// Makes a role change as root (the caller's credential) and answers the revision after it.
async fn changed(
    core: &Core,
    headers: &HeaderMap,
    what: &str,
    role: &str,
    ks: Keyspace,
    change: impl Fn(&berth_auth::AuthView) -> Result<change::Changes, AuthError>,
) -> Result<Response, ApiError> {
    let revision = core
        .auth
        .change(&credential(headers), true, change)
        .await
        .map_err(refused)?;
    tracing::info!(%role, keyspace = %ks, what, "berth api: permission changed");
    Ok(Json(json!({"revision": revision})).into_response())
}
