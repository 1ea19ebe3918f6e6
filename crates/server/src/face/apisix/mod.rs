//! APISIX's Admin API v3 on berth's HTTP listener (`/apisix/admin/{routes, services,
//! upstreams, consumers, ssls}`), so APISIX users' scripts and tools manage berth's gateway
//! unchanged: APISIX's envelopes (`{"key","value"}`, `{"list","total"}`,
//! `{"deleted","key"}`, `{"message":"Key not found"}`), its statuses (201 for a create, 200
//! for an update), its `error_msg` bodies, merge-patch `PATCH` and sub-path `PATCH`,
//! server-set `create_time`/`update_time`, and 20-digit IDs for `POST`.
//!
//! Auth: while berth's auth is off the API is open (as APISIX with no admin key). Once it is
//! on, `X-API-KEY` (or `?api_key=`, or the `X-API-KEY` cookie) is a berth auth token, and
//! reads and writes are checked against the user's permissions on the `Gateway` keyspace
//! (keys `<kind>/<id>`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use berth_auth::{Access, AuthError};
use berth_gateway::{layout, GatewayError, Kind};
use berth_store::{Guard, Keyspace};
use serde_json::{json, Map, Value};

use crate::auth::{AuthFailure, Credential};
use crate::core::Core;
use crate::gateway::{GatewayFailure, Stored};

/// The Admin API's routes.
pub fn routes(core: Arc<Core>) -> Router {
    Router::new()
        .route("/apisix/admin/{kind}", any(collection))
        .route("/apisix/admin/{kind}/{id}", any(one))
        .route("/apisix/admin/{kind}/{id}/{*path}", any(sub_path))
        .with_state(core)
}

/// An Admin API failure, answered in APISIX's shape.
#[derive(Debug)]
enum AdminError {
    /// 400 `{"error_msg": ...}`.
    Bad(String),
    /// 404 `{"message":"Key not found"}`.
    NotFound,
    /// 404 for a kind APISIX has and berth does not serve, or none at all.
    UnknownKind(String),
    /// 405.
    Method(String),
    /// 401 `{"error_msg":"failed to check token","description":...}`.
    Token(String),
    /// A write that did not go through.
    Write(crate::consensus::WriteError),
    /// The store failed.
    Internal(String),
}

impl From<GatewayFailure> for AdminError {
    fn from(e: GatewayFailure) -> AdminError {
        match e {
            GatewayFailure::Refused(GatewayError::Corrupt { .. }) => {
                AdminError::Internal(e.to_string())
            }
            GatewayFailure::Refused(e) => AdminError::Bad(e.to_string()),
            GatewayFailure::Write(e) => AdminError::Write(e),
            GatewayFailure::Store(e) => AdminError::Internal(e.to_string()),
        }
    }
}

impl From<AuthFailure> for AdminError {
    fn from(e: AuthFailure) -> AdminError {
        match e {
            AuthFailure::Auth(AuthError::UserEmpty) => AdminError::Token("missing apikey".into()),
            AuthFailure::Auth(AuthError::InvalidToken | AuthError::OldRevision) => {
                AdminError::Token("wrong apikey".into())
            }
            AuthFailure::Auth(e) => AdminError::Token(e.to_string()),
            AuthFailure::Write(e) => AdminError::Write(e),
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            AdminError::Bad(msg) => (StatusCode::BAD_REQUEST, json!({ "error_msg": msg })),
            AdminError::NotFound => (StatusCode::NOT_FOUND, json!({ "message": "Key not found" })),
            AdminError::UnknownKind(k) => (
                StatusCode::NOT_FOUND,
                json!({ "error_msg": format!("Unsupported resource type: {k}") }),
            ),
            AdminError::Method(msg) => {
                (StatusCode::METHOD_NOT_ALLOWED, json!({ "error_msg": msg }))
            }
            AdminError::Token(why) => (
                StatusCode::UNAUTHORIZED,
                json!({ "error_msg": "failed to check token", "description": why }),
            ),
            AdminError::Write(e) => (
                crate::face::http_status::of_write(&e),
                json!({ "error_msg": e.to_string() }),
            ),
            AdminError::Internal(msg) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({ "error_msg": msg }),
            ),
        };
        tracing::debug!(status = status.as_u16(), body = %body, "apisix admin: refused");
        reply(status, body)
    }
}

fn reply(status: StatusCode, body: Value) -> Response {
    let mut text = serde_json::to_vec(&body).unwrap_or_default();
    text.push(b'\n');
    let mut r = (status, text).into_response();
    let h = r.headers_mut();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    h.insert("x-api-version", HeaderValue::from_static("v3"));
    r
}

/// APISIX's 405 for a method a kind does not take.
fn not_supported(method: impl std::fmt::Display, kind: Kind) -> AdminError {
    AdminError::Method(format!(
        "not supported `{method}` method for {}",
        kind.singular()
    ))
}

fn kind_of(name: &str) -> Result<Kind, AdminError> {
    Kind::from_plural(name).ok_or_else(|| AdminError::UnknownKind(name.to_string()))
}

fn query_param<'a>(q: &'a Option<String>, name: &str) -> Option<&'a str> {
    q.as_deref()?.split('&').find_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        (k == name).then_some(v)
    })
}

/// Checks the caller's `access` to `key` (a range up to `range_end` when not empty), and
/// returns the guard its write goes with.
fn authorize(
    core: &Core,
    headers: &HeaderMap,
    q: &Option<String>,
    access: Access,
    key: &[u8],
    range_end: &[u8],
) -> Result<Guard, AdminError> {
    let mut cred = Credential::from_http(headers, &["x-api-key"], query_param(q, "api_key"));
    if cred.token.is_none() {
        cred.token = headers
            .get_all("cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|c| {
                let (k, v) = c.trim().split_once('=')?;
                k.eq_ignore_ascii_case("x-api-key").then(|| v.to_string())
            });
    }
    let principal = core.auth.principal(&cred)?;
    principal.check(Keyspace::Gateway, access, key, range_end)?;
    Ok(principal.guard())
}

/// The envelope of one resource.
fn item(kind: Kind, id: &str, s: &Stored) -> Value {
    let mut value = s.value.clone();
    if kind == Kind::Ssl {
        // APISIX never returns a private key.
        if let Value::Object(m) = &mut value {
            m.remove("key");
            m.remove("keys");
        }
    }
    json!({
        "key": format!("/apisix/{}/{id}", kind.plural()),
        "value": value,
        "createdIndex": s.created,
        "modifiedIndex": s.modified,
    })
}

/// The body as a JSON object, refused in APISIX's words otherwise.
fn parse_body(body: &Bytes) -> Result<Value, AdminError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(AdminError::Bad("missing configurations".into()));
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| AdminError::Bad(format!("invalid request body: {e}")))?;
    if !v.is_object() {
        return Err(AdminError::Bad(
            "invalid configuration: the body must be a JSON object".into(),
        ));
    }
    forbid_times(&v, "")?;
    Ok(v)
}

/// APISIX sets `create_time` and `update_time` itself.
fn forbid_times(v: &Value, prefix: &str) -> Result<(), AdminError> {
    if let Value::Object(m) = v {
        for f in ["create_time", "update_time"] {
            if m.contains_key(f) {
                return Err(AdminError::Bad(format!(
                    "the property is forbidden:  {prefix}{f}"
                )));
            }
        }
        if let Some(u) = m.get("upstream") {
            forbid_times(u, "upstream.")?;
        }
    }
    Ok(())
}

/// The ID a body gives (`username` for consumers), as a string.
fn body_id(kind: Kind, v: &Value) -> Option<String> {
    match v.get(kind.id_field())? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

async fn collection(
    State(core): State<Arc<Core>>,
    Path(kind): Path<String>,
    method: Method,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AdminError> {
    let kind = kind_of(&kind)?;
    match method {
        Method::GET => list(&core, kind, &q, &headers).await,
        Method::PUT => {
            let v = parse_body(&body)?;
            let Some(id) = body_id(kind, &v) else {
                return Err(AdminError::Bad(match kind {
                    Kind::Consumer => {
                        "invalid configuration: property \"username\" is required".into()
                    }
                    _ => format!("missing {} id", kind.singular()),
                }));
            };
            put(&core, kind, &id, v, &q, &headers).await
        }
        Method::POST => {
            // APISIX makes IDs only for routes, services, upstreams and ssls.
            if matches!(
                kind,
                Kind::Consumer | Kind::PluginConfig | Kind::GlobalRule | Kind::ConsumerGroup
            ) {
                return Err(not_supported("POST", kind));
            }
            let v = parse_body(&body)?;
            if body_id(kind, &v).is_some() {
                return Err(AdminError::Bad(format!(
                    "wrong {} id, do not need it",
                    kind.singular()
                )));
            }
            let id = new_id(&core, kind)?;
            put(&core, kind, &id, v, &q, &headers).await
        }
        other => Err(not_supported(other, kind)),
    }
}

/// A fresh 20-digit ID, as APISIX makes them (from the store's revision, made unique).
fn new_id(core: &Core, kind: Kind) -> Result<String, AdminError> {
    let mut n = core.store.revision().max(1);
    loop {
        let id = format!("{n:020}");
        if core.gateway.get(kind, &id)?.is_none() {
            return Ok(id);
        }
        n += 1;
    }
}

async fn one(
    State(core): State<Arc<Core>>,
    Path((kind, id)): Path<(String, String)>,
    method: Method,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AdminError> {
    let kind = kind_of(&kind)?;
    match method {
        Method::GET => {
            authorize(
                &core,
                &headers,
                &q,
                Access::Read,
                &layout::key(kind, &id),
                b"",
            )?;
            core.gateway.sync(&core).await.map_err(AdminError::Write)?;
            match core.gateway.get(kind, &id)? {
                Some(s) => Ok(reply(StatusCode::OK, item(kind, &id, &s))),
                None => Err(AdminError::NotFound),
            }
        }
        Method::PUT => {
            let v = parse_body(&body)?;
            if body_id(kind, &v).is_some_and(|b| b != id) {
                return Err(AdminError::Bad(match kind {
                    Kind::Consumer => "wrong username".into(),
                    _ => format!("wrong {} id", kind.singular()),
                }));
            }
            put(&core, kind, &id, v, &q, &headers).await
        }
        Method::PATCH => patch(&core, kind, &id, None, &body, &q, &headers).await,
        Method::DELETE => {
            let guard = authorize(
                &core,
                &headers,
                &q,
                Access::Write,
                &layout::key(kind, &id),
                b"",
            )?;
            let force = query_param(&q, "force") == Some("true");
            match core
                .gateway
                .delete(&core, kind, &id, force, Some(guard))
                .await?
            {
                Some(_) => Ok(reply(
                    StatusCode::OK,
                    json!({ "deleted": "1", "key": format!("/apisix/{}/{id}", kind.plural()) }),
                )),
                None => Err(AdminError::NotFound),
            }
        }
        other => Err(not_supported(other, kind)),
    }
}

async fn sub_path(
    State(core): State<Arc<Core>>,
    Path((kind, id, path)): Path<(String, String, String)>,
    method: Method,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AdminError> {
    let kind = kind_of(&kind)?;
    if method != Method::PATCH {
        return Err(not_supported(method, kind));
    }
    patch(&core, kind, &id, Some(&path), &body, &q, &headers).await
}

async fn list(
    core: &Core,
    kind: Kind,
    q: &Option<String>,
    headers: &HeaderMap,
) -> Result<Response, AdminError> {
    let prefix = layout::prefix(kind);
    authorize(
        core,
        headers,
        q,
        Access::Read,
        &prefix,
        &layout::prefix_end(&prefix),
    )?;
    core.gateway.sync(core).await.map_err(AdminError::Write)?;
    let mut all: Vec<(String, Stored)> = core
        .gateway
        .list(kind)?
        .into_iter()
        .map(|s| {
            let id = body_id(kind, &s.value).unwrap_or_default();
            (id, s)
        })
        .collect();
    // Filters APISIX's list takes: name and uri by pattern, label by key or key:value.
    let decoded = |name: &str| {
        query_param(q, name).map(|v| {
            percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        })
    };
    for (field, pattern) in [("name", decoded("name")), ("uri", decoded("uri"))] {
        if let Some(p) = pattern.as_deref() {
            let re = regex_lite(p)?;
            all.retain(|(_, s)| {
                let v = &s.value;
                match field {
                    "uri" => {
                        v.get("uri").and_then(Value::as_str).is_some_and(&re)
                            || v.get("uris")
                                .and_then(Value::as_array)
                                .is_some_and(|us| us.iter().filter_map(Value::as_str).any(&re))
                    }
                    _ => v.get(field).and_then(Value::as_str).is_some_and(&re),
                }
            });
        }
    }
    if let Some(label) = decoded("label") {
        let (k, want) = match label.split_once(':') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (label.clone(), None),
        };
        all.retain(|(_, s)| {
            s.value
                .get("labels")
                .and_then(|l| l.get(&k))
                .and_then(Value::as_str)
                .is_some_and(|v| want.as_deref().is_none_or(|w| w == v))
        });
    }
    all.sort_by_key(|(_, s)| s.created);
    let total = all.len();
    let page = query_param(q, "page").and_then(|p| p.parse::<usize>().ok());
    let page_size = query_param(q, "page_size").and_then(|p| p.parse::<usize>().ok());
    if let Some(size) = page_size {
        if !(10..=500).contains(&size) {
            return Err(AdminError::Bad(
                "page_size must be between 10 and 500".into(),
            ));
        }
    }
    let shown: Vec<Value> = match (page, page_size) {
        (None, None) => all.iter().map(|(id, s)| item(kind, id, s)).collect(),
        (p, s) => {
            let (p, s) = (p.unwrap_or(1).max(1), s.unwrap_or(10));
            all.iter()
                .skip((p - 1).saturating_mul(s))
                .take(s)
                .map(|(id, s)| item(kind, id, s))
                .collect()
        }
    };
    Ok(reply(
        StatusCode::OK,
        json!({ "list": shown, "total": total }),
    ))
}

/// A matcher for a list filter: the pattern as a regex (APISIX's filters are regexes).
fn regex_lite(p: &str) -> Result<impl Fn(&str) -> bool, AdminError> {
    let re = regex::Regex::new(p).map_err(|e| AdminError::Bad(format!("invalid filter: {e}")))?;
    Ok(move |s: &str| re.is_match(s))
}

async fn put(
    core: &Core,
    kind: Kind,
    id: &str,
    v: Value,
    q: &Option<String>,
    headers: &HeaderMap,
) -> Result<Response, AdminError> {
    put_at(core, kind, id, v, None, q, headers).await
}

/// The longest `ttl` taken (etcd's longest lease).
const MAX_TTL: i64 = 9_000_000_000;

/// [`put`], only if the resource is still at mod revision `expect` when given. With `?ttl=N`
/// the resource expires N seconds later (unless written again without it).
async fn put_at(
    core: &Core,
    kind: Kind,
    id: &str,
    v: Value,
    expect: Option<i64>,
    q: &Option<String>,
    headers: &HeaderMap,
) -> Result<Response, AdminError> {
    let ttl = match query_param(q, "ttl") {
        None => None,
        Some(t) => match t.parse::<i64>() {
            Ok(t @ 1..=MAX_TTL) => Some(t),
            _ => {
                return Err(AdminError::Bad(format!(
                    "invalid ttl {t:?}: a whole number of seconds from 1 to {MAX_TTL}"
                )))
            }
        },
    };
    let guard = authorize(core, headers, q, Access::Write, &layout::key(kind, id), b"")?;
    // `ttl`: the resource goes with a lease of that many seconds, as APISIX's etcd lease
    // (granted first, and revoked again should the write not happen).
    let lease = match ttl {
        None => 0,
        Some(t) => {
            core.leases
                .grant(t, 0, None)
                .await
                .map_err(AdminError::Write)?
                .id
        }
    };
    let out = match core
        .gateway
        .put(core, kind, id, v, expect, lease, Some(guard))
        .await
    {
        Ok(out) => out,
        Err(e) => {
            if lease != 0 {
                if let Err(why) = core.leases.revoke(lease, None).await {
                    tracing::warn!(lease, error = %why, "apisix admin: a refused write's lease not revoked (it expires)");
                }
            }
            return Err(e.into());
        }
    };
    let status = if out.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut body = item(kind, id, &out.stored);
    if let Value::Object(m) = &mut body {
        m.remove("createdIndex");
        m.remove("modifiedIndex");
    }
    tracing::info!(kind = kind.plural(), %id, created = out.created, revision = out.stored.modified, "apisix admin: stored");
    Ok(reply(status, body))
}

/// RFC 7386 merge: objects merge recursively, `null` removes, anything else replaces.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

async fn patch(
    core: &Core,
    kind: Kind,
    id: &str,
    path: Option<&str>,
    body: &Bytes,
    q: &Option<String>,
    headers: &HeaderMap,
) -> Result<Response, AdminError> {
    if kind == Kind::Consumer {
        return Err(not_supported("PATCH", kind));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(AdminError::Bad("missing new configuration".into()));
    }
    let patch: Value = serde_json::from_slice(body)
        .map_err(|e| AdminError::Bad(format!("invalid request body: {e}")))?;
    authorize(core, headers, q, Access::Write, &layout::key(kind, id), b"")?;
    core.gateway.sync(core).await.map_err(AdminError::Write)?;
    let Some(current) = core.gateway.get(kind, id)? else {
        return Err(AdminError::NotFound);
    };
    let read_at = current.modified;
    let mut value = current.value;
    match path {
        None => {
            if !patch.is_object() {
                return Err(AdminError::Bad("invalid configuration".into()));
            }
            merge(&mut value, &patch);
        }
        Some(path) => {
            let mut at = &mut value;
            let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
            let Some((last, inner)) = parts.split_last() else {
                return Err(AdminError::Bad(format!("invalid sub-path: /{path}")));
            };
            for p in inner {
                let Value::Object(m) = at else {
                    return Err(AdminError::Bad(format!("invalid sub-path: /{path}")));
                };
                at = m
                    .entry(p.to_string())
                    .or_insert_with(|| Value::Object(Map::new()));
            }
            let Value::Object(m) = at else {
                return Err(AdminError::Bad(format!("invalid sub-path: /{path}")));
            };
            m.insert(last.to_string(), patch);
        }
    }
    if let Value::Object(m) = &mut value {
        m.remove("update_time");
        let created = m.remove("create_time");
        forbid_times(&Value::Object(m.clone()), "")?;
        if let Some(c) = created {
            m.insert("create_time".into(), c);
        }
    }
    // The merged result is checked whole, as a PUT's body would be; create_time is kept.
    if let Value::Object(m) = &mut value {
        m.remove("create_time");
    }
    put_at(core, kind, id, value, Some(read_at), q, headers).await
}
