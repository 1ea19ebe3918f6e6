//! berth's own HTTP API (JSON) on the HTTP listener, under `/api/v1`: what the `berth` CLI
//! and the web console use where no other product's API says it (the configuration center's
//! history, diff, rollback, betas, import and export).
//!
//! - Answers are JSON; errors are `{"error": <message>, "code": <kind>}` with the HTTP status
//!   that says the same (400 invalid, 404 not found, 409 conflict, 413 too large, 401/403
//!   auth, 503 no leader or stopped, 507 out of space).
//! - The credential is a berth auth token in `Authorization: Bearer`, or `X-Consul-Token`
//!   (so one `--token` works for the CLI's registry and config commands alike).
//!
//! - `config`: `/api/v1/config/...`.
//! - `auth`: `/api/v1/auth/roles/...`, roles' permissions in every keyspace a face checks.

mod auth;
mod config;

use std::sync::Arc;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use berth_config::ConfigError;

use crate::auth::{AuthFailure, Credential, Principal};
use crate::config_center::ConfigFailure;
use crate::consensus::WriteError;
use crate::core::Core;

/// berth's API routes, for the HTTP listener.
pub fn routes(core: Arc<Core>) -> Router {
    Router::new()
        .nest("/api/v1/config", config::routes())
        .nest("/api/v1/auth", auth::routes())
        .layer(axum::middleware::from_fn(observe))
        .with_state(core)
}

/// Logs every request.
async fn observe(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    let (method, uri) = (req.method().clone(), req.uri().clone());
    let start = std::time::Instant::now();
    let resp = next.run(req).await;
    tracing::debug!(%method, %uri, route = route.as_deref().unwrap_or("unmatched"), status = resp.status().as_u16(), elapsed = ?start.elapsed(), "berth api");
    resp
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    msg: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, msg: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            msg: msg.into(),
        }
    }

    fn bad(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid", msg)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = %self.status, msg = %self.msg, "berth api error");
        }
        (
            self.status,
            Json(serde_json::json!({"error": self.msg, "code": self.code})),
        )
            .into_response()
    }
}

fn write_error(e: &WriteError) -> ApiError {
    let status = super::http_status::of_write(e);
    let code = match status {
        StatusCode::INSUFFICIENT_STORAGE => "no_space",
        StatusCode::BAD_REQUEST => "invalid",
        _ => "unavailable",
    };
    ApiError::new(status, code, e.to_string())
}

impl From<ConfigFailure> for ApiError {
    fn from(e: ConfigFailure) -> ApiError {
        let (status, code) = match &e {
            ConfigFailure::Refused(ConfigError::Invalid(_)) => (StatusCode::BAD_REQUEST, "invalid"),
            ConfigFailure::Refused(ConfigError::UnknownNamespace(_)) => {
                (StatusCode::NOT_FOUND, "unknown_namespace")
            }
            ConfigFailure::Refused(ConfigError::TooLarge { .. }) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "too_large")
            }
            ConfigFailure::Refused(ConfigError::NotFound(_)) => {
                (StatusCode::NOT_FOUND, "not_found")
            }
            ConfigFailure::Refused(ConfigError::Conflict { .. } | ConfigError::Exists(_)) => {
                (StatusCode::CONFLICT, "conflict")
            }
            ConfigFailure::Refused(ConfigError::Corrupt { .. }) | ConfigFailure::Store(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
            ConfigFailure::Write(w) => return write_error(w),
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl From<ConfigError> for ApiError {
    fn from(e: ConfigError) -> ApiError {
        ConfigFailure::Refused(e).into()
    }
}

impl From<AuthFailure> for ApiError {
    fn from(e: AuthFailure) -> ApiError {
        match e {
            AuthFailure::Auth(a) => {
                ApiError::new(super::http_status::of_auth(&a), "auth", a.to_string())
            }
            AuthFailure::Write(w) => write_error(&w),
        }
    }
}

/// A JSON request body as `T`.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("invalid JSON body: {e}")))
}

/// The credential a request carries: a berth token in `Authorization: Bearer` or
/// `X-Consul-Token`.
fn credential(headers: &HeaderMap) -> Credential {
    Credential::from_http(headers, &["authorization", "x-consul-token"], None)
}

/// Who the request acts as.
fn principal(core: &Core, headers: &HeaderMap) -> Result<Principal, ApiError> {
    Ok(core.auth.principal(&credential(headers))?)
}
