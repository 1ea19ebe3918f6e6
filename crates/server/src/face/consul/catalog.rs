//! `/v1/catalog/*` and `/v1/health/*`: the replicated catalog as Consul shows it. Every read
//! blocks on its own topic (one service, one node, the service list, the node list, every
//! check), so a change wakes only the queries whose result it changes.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, put};
use axum::Router;
use berth_registry::catalog::{Entry, Record};
use berth_registry::{CheckStatus, Node, Topic};
use serde::Deserialize;
use serde_json::{json, Value};

use super::agent::{CheckIn, ServiceIn};
use super::input::decode;
use super::{
    block_on, bool_reply, bytes_reply, json_reply, require_user, shapes, ApiError, Params, ReadOpts,
};
use crate::core::Core;
use crate::registry::DATACENTER;

pub(super) fn routes() -> Router<Arc<Core>> {
    Router::new()
        .route("/v1/catalog/datacenters", get(datacenters))
        .route("/v1/catalog/nodes", get(nodes))
        .route("/v1/catalog/node/{node}", get(node))
        .route("/v1/catalog/services", get(services))
        .route("/v1/catalog/service/{service}", get(service))
        .route("/v1/catalog/register", put(register))
        .route("/v1/catalog/deregister", put(deregister))
        .route("/v1/health/service/{service}", get(health_service))
        .route("/v1/health/checks/{service}", get(health_checks))
        .route("/v1/health/node/{node}", get(health_node))
        .route("/v1/health/state/{state}", get(health_state))
}

async fn datacenters() -> Response {
    json_reply(1, &json!([DATACENTER]))
}

/// True when `node` has every `node-meta` pair asked for.
fn meta_matches(node: &Node, want: &[(String, String)]) -> bool {
    want.iter()
        .all(|(k, v)| node.meta.get(k).is_some_and(|have| have == v))
}

/// Runs a blocking read of `topic` and answers `f`'s result with the topic's index. Answers
/// are kept per request (`route` and the filtering parameters) for the index they reflect,
/// so repeated discovery reads of an unchanged service cost a lookup.
async fn read(
    core: &Core,
    q: &Params,
    route: &str,
    topic: Topic,
    f: impl FnOnce(&berth_registry::Catalog) -> Value,
) -> Result<Response, ApiError> {
    let opts = ReadOpts::parse(q)?;
    block_on(core, &opts, &topic).await?;
    let key = format!("{route}|{topic:?}|{}", q.filters());
    let index = core.registry.read(|c| c.index(&topic));
    if let Some(body) = core.registry.rendered(&key, index) {
        return Ok(bytes_reply(index, body));
    }
    let (index, body) = core.registry.read(|c| (c.index(&topic), f(c)));
    let body = bytes::Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
    core.registry.remember(key, index, body.clone());
    Ok(bytes_reply(index, body))
}

async fn nodes(
    State(core): State<Arc<Core>>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let q = Params::parse(raw)?;
    let want = q.node_meta()?;
    read(&core, &q, "nodes", Topic::NodeList, |c| {
        let list: Vec<Value> = c
            .nodes()
            .iter()
            .filter(|n| meta_matches(&n.value, &want))
            .map(shapes::node)
            .collect();
        json!(list)
    })
    .await
}

async fn node(
    State(core): State<Arc<Core>>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let q = Params::parse(raw)?;
    read(&core, &q, "node", Topic::Node(name.clone()), |c| {
        match c.node(&name) {
            None => Value::Null,
            Some(n) => {
                let services: BTreeMap<String, Value> = c
                    .services_on(&name)
                    .iter()
                    .map(|s| (s.value.id.clone(), shapes::service(s, &n.value.datacenter)))
                    .collect();
                json!({"Node": shapes::node(&n), "Services": services})
            }
        }
    })
    .await
}

async fn services(
    State(core): State<Arc<Core>>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let q = Params::parse(raw)?;
    let want = q.node_meta()?;
    read(&core, &q, "services", Topic::ServiceList, |c| {
        if want.is_empty() {
            return json!(c.service_names());
        }
        // Only services with an instance on a node that has the metadata.
        let mut out: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
        for name in c.service_names().keys() {
            for e in c.entries(name) {
                if meta_matches(&e.node.value, &want) {
                    out.entry(name.clone())
                        .or_default()
                        .extend(e.service.value.tags.iter().cloned());
                }
            }
        }
        json!(out)
    })
    .await
}

/// The entries of service `name` that pass the `tag` and `node-meta` filters.
fn filtered(c: &berth_registry::Catalog, name: &str, q: &Params) -> Result<Vec<Entry>, ApiError> {
    let tags: Vec<&str> = q.all("tag").collect();
    let want = q.node_meta()?;
    Ok(c.entries(name)
        .into_iter()
        .filter(|e| {
            tags.iter()
                .all(|t| e.service.value.tags.iter().any(|have| have == t))
        })
        .filter(|e| meta_matches(&e.node.value, &want))
        .collect())
}

async fn service(
    State(core): State<Arc<Core>>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let q = Params::parse(raw)?;
    q.node_meta()?;
    read(&core, &q, "service", Topic::Service(name.clone()), |c| {
        let list: Vec<Value> = filtered(c, &name, &q)
            .unwrap_or_default()
            .iter()
            .map(|e| shapes::catalog_service(&e.node, &e.service))
            .collect();
        json!(list)
    })
    .await
}

async fn health_service(
    State(core): State<Arc<Core>>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let q = Params::parse(raw)?;
    q.node_meta()?;
    let passing = q.bool("passing", false)?;
    read(
        &core,
        &q,
        "health_service",
        Topic::Service(name.clone()),
        |c| {
            let list: Vec<Value> = filtered(c, &name, &q)
                .unwrap_or_default()
                .iter()
                .filter(|e| !passing || e.status() == CheckStatus::Passing)
                .map(shapes::entry)
                .collect();
            json!(list)
        },
    )
    .await
}

/// Checks with the tags of their instances.
fn checks_json(c: &berth_registry::Catalog, checks: &[Record<berth_registry::Check>]) -> Value {
    let list: Vec<Value> = checks
        .iter()
        .map(|r| {
            let tags = c
                .service(&r.value.node, &r.value.service_id)
                .map(|s| s.value.tags)
                .unwrap_or_default();
            shapes::check(r, &tags)
        })
        .collect();
    json!(list)
}

async fn health_checks(
    State(core): State<Arc<Core>>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let q = Params::parse(raw)?;
    let want = q.node_meta()?;
    read(
        &core,
        &q,
        "health_checks",
        Topic::Service(name.clone()),
        |c| {
            let checks: Vec<_> = c
                .checks_of_service(&name)
                .into_iter()
                .filter(|r| {
                    want.is_empty()
                        || c.node(&r.value.node)
                            .is_some_and(|n| meta_matches(&n.value, &want))
                })
                .collect();
            checks_json(c, &checks)
        },
    )
    .await
}

async fn health_node(
    State(core): State<Arc<Core>>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let q = Params::parse(raw)?;
    read(&core, &q, "health_node", Topic::Node(name.clone()), |c| {
        checks_json(c, &c.checks_on(&name))
    })
    .await
}

async fn health_state(
    State(core): State<Arc<Core>>,
    Path(state): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let q = Params::parse(raw)?;
    let want = q.node_meta()?;
    let filter = match state.as_str() {
        "any" => None,
        s => Some(CheckStatus::parse(s).ok_or_else(|| {
            ApiError::bad(format!(
                "Invalid check state {s:?}: any, passing, warning or critical"
            ))
        })?),
    };
    // The state is in the path, not in the filters: it names the kept answer.
    read(&core, &q, &format!("state/{state}"), Topic::Checks, |c| {
        let checks: Vec<_> = c
            .checks_in(filter)
            .into_iter()
            .filter(|r| {
                want.is_empty()
                    || c.node(&r.value.node)
                        .is_some_and(|n| meta_matches(&n.value, &want))
            })
            .collect();
        checks_json(c, &checks)
    })
    .await
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CatalogRegisterIn {
    id: String,
    node: String,
    address: String,
    datacenter: String,
    taggedaddresses: BTreeMap<String, String>,
    nodemeta: BTreeMap<String, String>,
    service: Option<ServiceIn>,
    check: Option<CheckIn>,
    checks: Vec<CheckIn>,
    skipnodeupdate: bool,
}

async fn register(
    State(core): State<Arc<Core>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let q = Params::parse(raw)?;
    require_user(&core, &headers, &q)?;
    let r: CatalogRegisterIn = decode(&body).map_err(ApiError::bad)?;
    if r.node.is_empty() {
        return Err(ApiError::bad("Must provide node"));
    }
    if r.address.is_empty() && !r.skipnodeupdate {
        return Err(ApiError::bad(
            "Must provide address if SkipNodeUpdate is not set",
        ));
    }
    if !r.datacenter.is_empty() && r.datacenter != DATACENTER {
        return Err(ApiError::bad(format!(
            "No path to datacenter {:?} (berth serves {DATACENTER:?})",
            r.datacenter
        )));
    }
    let existing = core.registry.read(|c| c.node(&r.node));
    // A member's own node stays a member's (its serfHealth keeps following its presence).
    let member = existing.as_ref().is_some_and(|n| n.value.member);
    let node = match (r.skipnodeupdate, existing) {
        (true, Some(n)) => n.value,
        _ => Node {
            name: r.node.clone(),
            id: if r.id.is_empty() {
                uuid_of(&r.node)
            } else {
                r.id
            },
            address: r.address,
            datacenter: DATACENTER.into(),
            tagged_addresses: r.taggedaddresses,
            meta: r.nodemeta,
            member,
        },
    };
    let service = r.service.map(ServiceIn::registration).transpose()?;
    let mut checks = Vec::new();
    for c in r.check.into_iter().chain(r.checks) {
        checks.push(c.definition(true)?);
    }
    core.registry
        .catalog_register(&core, node, service, checks)
        .await?;
    Ok(bool_reply(true))
}

/// A stable UUID-shaped ID for a node registered without one.
fn uuid_of(name: &str) -> String {
    let mut h: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    for b in name.bytes() {
        h ^= u128::from(b);
        h = h.wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013B);
    }
    let hex = format!("{h:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CatalogDeregisterIn {
    node: String,
    serviceid: String,
    checkid: String,
    datacenter: String,
}

async fn deregister(
    State(core): State<Arc<Core>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let q = Params::parse(raw)?;
    require_user(&core, &headers, &q)?;
    let r: CatalogDeregisterIn = decode(&body).map_err(ApiError::bad)?;
    if r.node.is_empty() {
        return Err(ApiError::bad("Must provide node"));
    }
    if !r.datacenter.is_empty() && r.datacenter != DATACENTER {
        return Err(ApiError::bad(format!(
            "No path to datacenter {:?}",
            r.datacenter
        )));
    }
    core.registry
        .catalog_deregister(
            &core,
            &r.node,
            Some(r.serviceid.as_str()).filter(|s| !s.is_empty()),
            Some(r.checkid.as_str()).filter(|s| !s.is_empty()),
        )
        .await?;
    Ok(bool_reply(true))
}
