//! `/v1/session/*`: Consul sessions over the registry domain. A TTL session's record lives
//! on a lease: `renew` renews it at the leader (no log entry), and its expiry ends it.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::Router;
use berth_registry::catalog::{Record, SERF_HEALTH};
use berth_registry::{Behavior, Session, Topic};
use serde::Deserialize;
use serde_json::{json, Value};

use super::input::{decode, go_format, GoDuration};
use super::{block_on, bool_reply, json_reply, require_user, ApiError, Params, ReadOpts};
use crate::core::Core;

pub(super) fn routes() -> Router<Arc<Core>> {
    Router::new()
        .route("/v1/session/create", put(create))
        .route("/v1/session/destroy/{id}", put(destroy))
        .route("/v1/session/renew/{id}", put(renew))
        .route("/v1/session/info/{id}", get(info))
        .route("/v1/session/list", get(list))
        .route("/v1/session/node/{node}", get(node))
}

fn shape(r: &Record<Session>) -> Value {
    let s = &r.value;
    let checks: Vec<&String> = s.node_checks.iter().chain(&s.service_checks).collect();
    json!({
        "ID": s.id,
        "Name": s.name,
        "Node": s.node,
        "LockDelay": u64::try_from(s.lock_delay.as_nanos()).unwrap_or(u64::MAX),
        "Behavior": s.behavior.as_str(),
        "TTL": if s.ttl.is_zero() { String::new() } else { go_format(s.ttl) },
        "Checks": checks,
        "NodeChecks": s.node_checks,
        "ServiceChecks": s.service_checks.iter().map(|id| json!({"ID": id, "Namespace": ""})).collect::<Vec<_>>(),
        "CreateIndex": r.create,
        "ModifyIndex": r.modify,
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ServiceCheckIn {
    id: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CreateIn {
    name: String,
    node: String,
    checks: Option<Vec<String>>,
    nodechecks: Option<Vec<String>>,
    servicechecks: Vec<ServiceCheckIn>,
    lockdelay: Option<GoDuration>,
    behavior: String,
    ttl: Option<GoDuration>,
}

async fn create(
    State(core): State<Arc<Core>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let q = Params::parse(raw)?;
    require_user(&core, &headers, &q)?;
    let c: CreateIn = decode(&body).map_err(ApiError::bad)?;
    let behavior = match c.behavior.as_str() {
        "" | "release" => Behavior::Release,
        "delete" => Behavior::Delete,
        b => return Err(ApiError::bad(format!("Invalid Behavior setting '{b}'"))),
    };
    // Consul's default: the node's serfHealth, unless checks are given.
    let node_checks = match (c.checks, c.nodechecks) {
        (None, None) => vec![SERF_HEALTH.to_string()],
        (a, b) => a
            .into_iter()
            .flatten()
            .chain(b.into_iter().flatten())
            .collect(),
    };
    let s = Session {
        id: String::new(),
        name: c.name,
        node: if c.node.is_empty() {
            core.member.name.clone()
        } else {
            c.node
        },
        node_checks,
        service_checks: c.servicechecks.into_iter().map(|s| s.id).collect(),
        // Consul's default lock delay: 15 s (an explicit 0 turns it off).
        lock_delay: c
            .lockdelay
            .map_or(std::time::Duration::from_secs(15), |d| d.0),
        behavior,
        ttl: c.ttl.map(|d| d.0).unwrap_or_default(),
        lease: 0,
    };
    let id = core.registry.create_session(&core, s).await?;
    Ok(axum::Json(json!({"ID": id})).into_response())
}

async fn destroy(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let q = Params::parse(raw)?;
    require_user(&core, &headers, &q)?;
    core.registry.destroy_session(&core, &id).await?;
    Ok(bool_reply(true))
}

async fn renew(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let q = Params::parse(raw)?;
    require_user(&core, &headers, &q)?;
    match core.registry.renew_session(&core, &id).await? {
        Some(_) => {
            let r = core
                .registry
                .read(|c| c.session(&id))
                .ok_or_else(|| ApiError::not_found(format!("Session id '{id}' not found")))?;
            Ok(axum::Json(json!([shape(&r)])).into_response())
        }
        None => Err(ApiError::not_found(format!("Session id '{id}' not found"))),
    }
}

async fn read_sessions(
    core: &Core,
    q: &Params,
    f: impl Fn(&Session) -> bool,
) -> Result<Response, ApiError> {
    let opts = ReadOpts::parse(q)?;
    block_on(core, &opts, &Topic::Sessions).await?;
    let (index, list) = core.registry.read(|c| {
        let list: Vec<Value> = c
            .sessions()
            .iter()
            .filter(|s| f(&s.value))
            .map(shape)
            .collect();
        (c.index(&Topic::Sessions), list)
    });
    Ok(json_reply(index, &json!(list)))
}

async fn info(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let q = Params::parse(raw)?;
    read_sessions(&core, &q, |s| s.id == id).await
}

async fn list(
    State(core): State<Arc<Core>>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let q = Params::parse(raw)?;
    read_sessions(&core, &q, |_| true).await
}

async fn node(
    State(core): State<Arc<Core>>,
    Path(node): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let q = Params::parse(raw)?;
    read_sessions(&core, &q, |s| s.node == node).await
}
