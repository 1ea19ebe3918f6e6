//! Nacos's HTTP open API (v1) on `--listen-nacos-urls` (default 127.0.0.1:8848, under
//! `/nacos`): the configuration endpoints that Nacos clients (nacos-sdk-python's
//! `NacosClient`, the Java and Go 1.x clients, scripts with curl) call, over the
//! configuration center domain; login and namespaces as the Nacos console calls them.
//!
//! Conventions, as Nacos answers (`../shared/research/registry-config.md`, section 3):
//! - parameters come from the query string and, for form posts, the body (a name given in
//!   both: the query's wins, as a servlet's `getParameter`);
//! - success is `true` (config writes) or the content itself; errors are plain text with an
//!   HTTP status (404 `config data not exist`, 400 for bad parameters, 403 without rights);
//! - the client's address (for beta releases and history) is `X-Forwarded-For`'s first
//!   entry, `X-Real-IP`, or the connection's peer, as Nacos's `RequestUtil` reads it
//!   ([`crate::listen::client_ip`]);
//! - with berth's auth on, every call needs `accessToken` (query, form or header) from
//!   `/nacos/v1/auth/login`: a berth user's token.
//!
//! - `configs`: `/v1/cs/configs` (get, search, publish, delete, beta), the listener, history;
//! - `naming`: `/v1/ns/instance` (register, deregister, update, beat, get, list) and the
//!   service list, over the registry;
//! - `console`: login and namespaces;
//! - [`grpc`]: the Nacos 2.x gRPC protocol on the listener's port + 1000.

mod configs;
mod console;
pub mod grpc;
mod naming;

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{FromRequest, MatchedPath, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use berth_config::ConfigError;

use crate::auth::{AuthFailure, Credential, Principal};
use crate::config_center::ConfigFailure;
use crate::consensus::WriteError;
use crate::core::Core;

/// Nacos's API routes, for a Nacos listener.
pub fn routes(core: Arc<Core>) -> Router {
    Router::new()
        .nest(
            "/nacos",
            Router::new()
                .merge(configs::routes())
                .merge(naming::routes())
                .merge(console::routes()),
        )
        .fallback(unknown)
        .layer(axum::middleware::from_fn_with_state(core.clone(), observe))
        .with_state(core)
}

async fn unknown(req: Request) -> NacosError {
    NacosError::new(
        StatusCode::NOT_FOUND,
        format!(
            "berth does not serve {} {} (not part of its Nacos API)",
            req.method(),
            req.uri().path()
        ),
    )
}

/// Logs and counts every request.
async fn observe(State(core): State<Arc<Core>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    let (method, uri) = (req.method().clone(), req.uri().clone());
    let start = std::time::Instant::now();
    let resp = next.run(req).await;
    tracing::debug!(%method, %uri, status = resp.status().as_u16(), elapsed = ?start.elapsed(), "nacos api");
    core.metrics.observe_nacos(
        route.as_deref().unwrap_or("unmatched"),
        resp.status().as_u16(),
        start.elapsed(),
    );
    resp
}

/// An error answer: plain text and a status, as Nacos's v1 API answers.
#[derive(Debug)]
pub struct NacosError {
    status: StatusCode,
    msg: String,
}

impl NacosError {
    fn new(status: StatusCode, msg: impl Into<String>) -> NacosError {
        NacosError {
            status,
            msg: msg.into(),
        }
    }

    fn bad(msg: impl Into<String>) -> NacosError {
        NacosError::new(StatusCode::BAD_REQUEST, msg)
    }
}

impl IntoResponse for NacosError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = %self.status, msg = %self.msg, "nacos api error");
        }
        (
            self.status,
            [(header::CONTENT_TYPE, "text/plain;charset=UTF-8")],
            self.msg,
        )
            .into_response()
    }
}

impl From<ConfigFailure> for NacosError {
    fn from(e: ConfigFailure) -> NacosError {
        let status = match &e {
            ConfigFailure::Refused(ConfigError::Invalid(_) | ConfigError::UnknownNamespace(_)) => {
                StatusCode::BAD_REQUEST
            }
            ConfigFailure::Refused(ConfigError::TooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            ConfigFailure::Refused(ConfigError::NotFound(_)) => StatusCode::NOT_FOUND,
            ConfigFailure::Refused(ConfigError::Conflict { .. } | ConfigError::Exists(_)) => {
                StatusCode::CONFLICT
            }
            ConfigFailure::Refused(ConfigError::Corrupt { .. }) | ConfigFailure::Store(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            ConfigFailure::Write(w) => return write_error(w),
        };
        NacosError::new(status, e.to_string())
    }
}

fn write_error(e: &WriteError) -> NacosError {
    NacosError::new(super::http_status::of_write(e), e.to_string())
}

impl From<ConfigError> for NacosError {
    fn from(e: ConfigError) -> NacosError {
        ConfigFailure::Refused(e).into()
    }
}

impl From<AuthFailure> for NacosError {
    fn from(e: AuthFailure) -> NacosError {
        match e {
            AuthFailure::Auth(a) => NacosError::new(super::http_status::of_auth(&a), a.to_string()),
            AuthFailure::Write(w) => write_error(&w),
        }
    }
}

/// A request's parameters: the query string's, then a form body's (the first of a name wins).
#[derive(Debug, Default)]
pub struct Params(HashMap<String, String>);

impl Params {
    fn from_pairs(pairs: impl IntoIterator<Item = (String, String)>, into: &mut Params) {
        for (k, v) in pairs {
            into.0.entry(k).or_insert(v);
        }
    }

    /// The parameter's value, if given.
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }

    /// The parameter's value, or `""`.
    pub fn str(&self, k: &str) -> &str {
        self.get(k).unwrap_or_default()
    }

    /// A required, non-blank parameter.
    pub fn required(&self, k: &str) -> Result<&str, NacosError> {
        self.get(k)
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| NacosError::bad(format!("Required parameter '{k}' is not present")))
    }

    /// A positive integer parameter, or `default` when absent.
    pub fn number(&self, k: &str, default: usize) -> Result<usize, NacosError> {
        match self.get(k).map(str::trim) {
            None | Some("") => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| NacosError::bad(format!("{k} {v:?} is not a non-negative integer"))),
        }
    }

    /// A `true`/`false` parameter (absent: false).
    pub fn flag(&self, k: &str) -> bool {
        self.get(k).is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }
}

impl<S: Send + Sync> FromRequest<S> for Params {
    type Rejection = NacosError;

    async fn from_request(req: Request, state: &S) -> Result<Params, NacosError> {
        let mut params = Params::default();
        if let Some(q) = req.uri().query() {
            let pairs: Vec<(String, String)> = serde_urlencoded::from_str(q)
                .map_err(|e| NacosError::bad(format!("invalid query string: {e}")))?;
            Params::from_pairs(pairs, &mut params);
        }
        let form = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if form {
            let body = axum::body::Bytes::from_request(req, state)
                .await
                .map_err(|e| NacosError::new(e.status(), e.body_text()))?;
            let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&body)
                .map_err(|e| NacosError::bad(format!("invalid form body: {e}")))?;
            Params::from_pairs(pairs, &mut params);
        }
        Ok(params)
    }
}

/// Who the request acts as: the berth user whose token it carries (`accessToken` as a
/// parameter or header), or open access while auth is off.
pub fn principal(core: &Core, headers: &HeaderMap, q: &Params) -> Result<Principal, NacosError> {
    Ok(core.auth.principal(&Credential::from_http(
        headers,
        &["accesstoken"],
        q.get("accessToken"),
    ))?)
}
