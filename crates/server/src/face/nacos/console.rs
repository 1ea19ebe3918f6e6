//! Login (`/nacos/v1/auth/login`, `/nacos/v1/auth/users/login`: a berth user's token) and
//! namespaces (`/nacos/v1/console/namespaces`), as Nacos clients and the console call them.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use berth_config::model::PUBLIC;
use berth_config::Namespace;
use rand::Rng;
use serde_json::json;

use super::{principal, NacosError, Params};
use crate::auth::AuthFailure;
use crate::core::Core;
use crate::registry::now_ms;

pub fn routes() -> Router<Arc<Core>> {
    Router::new()
        .route("/v1/auth/login", post(login))
        .route("/v1/auth/users/login", post(login))
        .route(
            "/v1/console/namespaces",
            axum::routing::get(namespaces)
                .post(create_namespace)
                .delete(delete_namespace),
        )
}

/// Logs a berth user in: `{"accessToken","tokenTtl","globalAdmin","username"}`. With auth
/// off there is nothing to log in to: the token is empty and every call is allowed.
async fn login(State(core): State<Arc<Core>>, q: Params) -> Result<Response, NacosError> {
    let user = q.required("username")?;
    let password = q.get("password").unwrap_or_default();
    let ttl = core.config.auth_token_ttl.as_secs();
    match core.auth.authenticate(user, password).await {
        Ok(token) => {
            let admin = core.auth.view().is_root(user);
            Ok(Json(json!({
                "accessToken": token,
                "tokenTtl": ttl,
                "globalAdmin": admin,
                "username": user,
            }))
            .into_response())
        }
        Err(AuthFailure::Auth(berth_auth::AuthError::NotEnabled)) => Ok(Json(json!({
            "accessToken": "",
            "tokenTtl": ttl,
            "globalAdmin": true,
            "username": user,
        }))
        .into_response()),
        Err(AuthFailure::Auth(berth_auth::AuthError::AuthFailed)) => Err(NacosError::new(
            StatusCode::FORBIDDEN,
            "unknown user or wrong password",
        )),
        Err(e) => Err(e.into()),
    }
}

/// `GET /v1/console/namespaces`: every namespace with its item count (`public` is `""`).
async fn namespaces(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
    q: Params,
) -> Result<Response, NacosError> {
    principal(&core, &headers, &q)?.authenticated()?;
    let cc = &core.config_center;
    let list: Vec<serde_json::Value> = cc
        .namespaces()
        .iter()
        .map(|n| {
            let public = n.id == PUBLIC;
            json!({
                "namespace": if public { "" } else { n.id.as_str() },
                "namespaceShowName": n.name,
                "namespaceDesc": n.desc,
                "quota": 200,
                "configCount": cc.count(&n.id),
                "type": if public { 0 } else { 2 },
            })
        })
        .collect();
    Ok(Json(json!({"code": 200, "message": null, "data": list})).into_response())
}

/// `POST /v1/console/namespaces`: `customNamespaceId` (generated when absent),
/// `namespaceName`, `namespaceDesc`.
async fn create_namespace(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
    q: Params,
) -> Result<Response, NacosError> {
    let p = principal(&core, &headers, &q)?;
    p.admin()?;
    let id = match q.get("customNamespaceId").map(str::trim) {
        Some(id) if !id.is_empty() => id.to_string(),
        _ => {
            let mut rng = rand::rng();
            let b: [u8; 16] = rng.random();
            b.iter().map(|x| format!("{x:02x}")).collect()
        }
    };
    let ns = Namespace {
        id,
        name: q.required("namespaceName")?.trim().to_string(),
        desc: q.str("namespaceDesc").to_string(),
        created_ms: i64::try_from(now_ms()).unwrap_or(i64::MAX),
    };
    core.config_center
        .create_namespace(&core, ns, Some(p.guard()))
        .await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], "true").into_response())
}

/// `DELETE /v1/console/namespaces?namespaceId=`: only an empty namespace.
async fn delete_namespace(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
    q: Params,
) -> Result<Response, NacosError> {
    let p = principal(&core, &headers, &q)?;
    p.admin()?;
    let id = q.required("namespaceId")?.trim();
    core.config_center
        .delete_namespace(&core, id, Some(p.guard()))
        .await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], "true").into_response())
}
