//! `/nacos/v1/ns/*`: Nacos 1.x naming over the registry: instances (register, deregister,
//! update, beat, get, list) and the service list, as Nacos servers answer them. Instances
//! registered here are catalog instances: Consul clients and DNS find them too.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use berth_registry::naming::{self, Instance, ServiceDef, ServiceName};
use berth_registry::RegistryError;
use serde_json::{json, Value};

use super::{principal, NacosError, Params};
use crate::core::Core;
use crate::registry::naming::{Beat, Define};
use crate::registry::RegistryFailure;

pub fn routes() -> Router<Arc<Core>> {
    Router::new()
        .route(
            "/v1/ns/instance",
            get(get_instance)
                .post(register)
                .put(update)
                .delete(deregister),
        )
        .route("/v1/ns/instance/list", get(list))
        .route("/v1/ns/instance/beat", put(beat))
        .route("/v1/ns/service/list", get(service_list))
        .route(
            "/v1/ns/service",
            get(get_service)
                .post(create_service)
                .put(update_service)
                .delete(delete_service),
        )
}

impl From<RegistryFailure> for NacosError {
    fn from(e: RegistryFailure) -> NacosError {
        let status = match &e {
            RegistryFailure::Refused(RegistryError::Invalid(_)) => StatusCode::BAD_REQUEST,
            RegistryFailure::Refused(RegistryError::NotFound(_)) => StatusCode::NOT_FOUND,
            RegistryFailure::Refused(RegistryError::Corrupt { .. }) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            RegistryFailure::Write(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        NacosError::new(status, e.to_string())
    }
}

fn text_ok() -> Response {
    ([(header::CONTENT_TYPE, "text/plain;charset=UTF-8")], "ok").into_response()
}

/// The service a request names: `serviceName` (maybe `group@@name`), `groupName`,
/// `namespaceId`.
fn service(q: &Params) -> Result<ServiceName, NacosError> {
    let s = ServiceName::new(
        q.str("namespaceId").trim(),
        q.str("groupName").trim(),
        q.required("serviceName")?.trim(),
    );
    s.validate().map_err(|e| NacosError::bad(e.to_string()))?;
    Ok(s)
}

fn port(q: &Params) -> Result<u16, NacosError> {
    let p = q.required("port")?;
    p.trim()
        .parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| NacosError::bad(format!("port {p:?} is not 1 to 65535")))
}

/// A cluster name as given; none (or Python's `None`, which nacos-sdk-python sends for
/// "no cluster") is `DEFAULT`.
fn cluster_name(given: &str) -> String {
    match given.trim() {
        "" | "None" => naming::DEFAULT_CLUSTER.to_string(),
        c => c.to_string(),
    }
}

fn flag(q: &Params, names: &[&str], default: bool) -> Result<bool, NacosError> {
    match names.iter().find_map(|n| q.get(n)).map(str::trim) {
        None | Some("") => Ok(default),
        Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
        Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
        Some(v) => Err(NacosError::bad(format!(
            "{} {v:?} is not true or false",
            names[0]
        ))),
    }
}

/// The `metadata` parameter: a JSON object, or Nacos's older `k=v,k2=v2`; `None` when absent.
fn metadata_param(q: &Params) -> Result<Option<BTreeMap<String, String>>, NacosError> {
    match q.get("metadata").map(str::trim) {
        None | Some("") => Ok(None),
        Some(m) if m.starts_with('{') => {
            let v: Value = serde_json::from_str(m)
                .map_err(|e| NacosError::bad(format!("metadata is not a JSON object: {e}")))?;
            let obj = v
                .as_object()
                .ok_or_else(|| NacosError::bad("metadata is not a JSON object"))?;
            Ok(Some(naming::metadata(obj)))
        }
        Some(m) => m
            .split(',')
            .map(|pair| {
                pair.split_once('=')
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .filter(|(k, _)| !k.is_empty())
                    .ok_or_else(|| {
                        NacosError::bad(format!(
                            "metadata {m:?} is neither a JSON object nor k=v pairs"
                        ))
                    })
            })
            .collect::<Result<_, _>>()
            .map(Some),
    }
}

/// A number parameter; `None` when absent.
fn float_param(q: &Params, k: &str) -> Result<Option<f64>, NacosError> {
    match q.get(k).map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) => v
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(Some)
            .ok_or_else(|| NacosError::bad(format!("{k} {v:?} is not a number"))),
    }
}

/// The instance a register or update request describes.
fn instance(q: &Params) -> Result<Instance, NacosError> {
    let metadata = metadata_param(q)?.unwrap_or_default();
    let weight = float_param(q, "weight")?.unwrap_or(1.0);
    let cluster = cluster_name(q.str("clusterName"));
    let i = Instance {
        service: service(q)?,
        cluster,
        ip: q.required("ip")?.trim().to_string(),
        port: port(q)?,
        weight,
        enabled: flag(q, &["enabled", "enable"], true)?,
        healthy: flag(q, &["healthy"], true)?,
        ephemeral: flag(q, &["ephemeral"], true)?,
        metadata,
    };
    i.validate().map_err(|e| NacosError::bad(e.to_string()))?;
    Ok(i)
}

async fn register(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
    q: Params,
) -> Result<Response, NacosError> {
    principal(&core, &headers, &q)?.authenticated()?;
    let i = instance(&q)?;
    core.registry.nacos_register(&core, &i, None).await?;
    Ok(text_ok())
}

/// `PUT /v1/ns/instance`: changes a registered instance (Nacos refuses an unknown one).
async fn update(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
    q: Params,
) -> Result<Response, NacosError> {
    principal(&core, &headers, &q)?.authenticated()?;
    let i = instance(&q)?;
    let (known, _) = core.registry.nacos_instances(&i.service);
    if !known
        .iter()
        .any(|k| k.ip == i.ip && k.port == i.port && k.cluster == i.cluster)
    {
        return Err(NacosError::bad(format!(
            "instance {} is not registered",
            i.instance_id()
        )));
    }
    core.registry.nacos_register(&core, &i, None).await?;
    Ok(text_ok())
}

async fn deregister(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
    q: Params,
) -> Result<Response, NacosError> {
    principal(&core, &headers, &q)?.authenticated()?;
    let s = service(&q)?;
    let ip = q.required("ip")?.trim().to_string();
    let port = port(&q)?;
    core.registry
        .nacos_deregister(&core, &s, &ip, port, &cluster_name(q.str("clusterName")))
        .await?;
    Ok(text_ok())
}

/// An instance as Nacos's v1 API shows it.
pub fn host_json(i: &Instance) -> Value {
    json!({
        "instanceId": i.instance_id(),
        "ip": i.ip,
        "port": i.port,
        "weight": i.weight,
        "healthy": i.healthy,
        "enabled": i.enabled,
        "ephemeral": i.ephemeral,
        "clusterName": i.cluster,
        "serviceName": i.service.grouped(),
        "metadata": i.metadata,
        "instanceHeartBeatInterval": naming::BEAT_INTERVAL.as_millis() as u64,
        "instanceHeartBeatTimeOut": naming::BEAT_TIMEOUT.as_millis() as u64,
        "ipDeleteTimeout": naming::DELETE_TIMEOUT.as_millis() as u64,
    })
}

async fn get_instance(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
    q: Params,
) -> Result<Response, NacosError> {
    principal(&core, &headers, &q)?.authenticated()?;
    let s = service(&q)?;
    let ip = q.required("ip")?.trim().to_string();
    let port = port(&q)?;
    let cluster = match q.str("cluster").trim() {
        "" => q.str("clusterName").trim(),
        c => c,
    };
    let (list, _) = core.registry.nacos_instances(&s);
    list.iter()
        .find(|i| i.ip == ip && i.port == port && (cluster.is_empty() || i.cluster == cluster))
        .map(|i| Json(host_json(i)).into_response())
        .ok_or_else(|| {
            NacosError::new(
                StatusCode::NOT_FOUND,
                "no ip ".to_string() + &ip + " for service " + &s.grouped(),
            )
        })
}

/// `GET /v1/ns/instance/list`: the service's instances, of `clusters` (comma-separated)
/// and, with `healthyOnly=true`, only the healthy ones.
async fn list(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
    q: Params,
) -> Result<Response, NacosError> {
    principal(&core, &headers, &q)?.authenticated()?;
    let s = service(&q)?;
    let healthy_only = flag(&q, &["healthyOnly"], false)?;
    let clusters: Vec<&str> = q
        .str("clusters")
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    let (list, _) = core.registry.nacos_instances(&s);
    // Nacos's instance list shows enabled instances only.
    let shown = naming::select(
        list,
        &clusters,
        healthy_only,
        true,
        core.registry.nacos_def(&s).as_ref(),
    );
    let hosts: Vec<Value> = shown.hosts.iter().map(host_json).collect();
    Ok(Json(json!({
        "name": s.grouped(),
        "groupName": s.group,
        "clusters": clusters.join(","),
        "cacheMillis": 10000,
        "hosts": hosts,
        "lastRefTime": crate::registry::now_ms(),
        "checksum": "",
        "allIPs": false,
        "reachProtectionThreshold": shown.protected,
        "valid": true,
    }))
    .into_response())
}

/// `PUT /v1/ns/instance/beat`: `beat` (JSON with `ip`, `port`, `cluster`) or `ip` and `port`;
/// code 20404 when the instance is unknown (the client then registers it again).
async fn beat(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
    q: Params,
) -> Result<Response, NacosError> {
    principal(&core, &headers, &q)?.authenticated()?;
    let s = service(&q)?;
    let beat: Value = match q.get("beat").map(str::trim) {
        None | Some("") => json!({}),
        Some(b) => serde_json::from_str(b)
            .map_err(|e| NacosError::bad(format!("beat is not JSON: {e}")))?,
    };
    let ip = beat
        .get("ip")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| q.get("ip").map(str::to_string))
        .filter(|i| !i.is_empty())
        .ok_or_else(|| NacosError::bad("the beat names no ip"))?;
    let port = match beat.get("port").and_then(Value::as_u64) {
        Some(p) => u16::try_from(p)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| NacosError::bad("port is not 1 to 65535"))?,
        None => port(&q)?,
    };
    let cluster = cluster_name(
        &beat
            .get("cluster")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| q.get("clusterName").map(str::to_string))
            .unwrap_or_default(),
    );
    let interval = naming::BEAT_INTERVAL.as_millis() as u64;
    let answer = |code: u32| {
        Json(json!({"clientBeatInterval": interval, "code": code, "lightBeatEnabled": true}))
            .into_response()
    };
    match core
        .registry
        .nacos_beat(&core, &s, &ip, port, &cluster)
        .await?
    {
        Beat::Renewed => Ok(answer(10200)),
        // A full beat of an unknown instance registers it, as Nacos does (its first beat
        // can arrive before the registration, or after it was removed); a light one cannot.
        Beat::Unknown if beat.get("ip").is_some() => {
            let metadata = beat
                .get("metadata")
                .and_then(Value::as_object)
                .map(naming::metadata)
                .unwrap_or_default();
            let i = Instance {
                service: s,
                cluster,
                ip,
                port,
                weight: beat.get("weight").and_then(Value::as_f64).unwrap_or(1.0),
                enabled: true,
                healthy: true,
                ephemeral: true,
                metadata,
            };
            i.validate().map_err(|e| NacosError::bad(e.to_string()))?;
            core.registry.nacos_register(&core, &i, None).await?;
            Ok(answer(10200))
        }
        Beat::Unknown => Ok(answer(20404)),
    }
}

/// `GET /v1/ns/service/list`: a page of the namespace's service names in a group.
async fn service_list(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
    q: Params,
) -> Result<Response, NacosError> {
    principal(&core, &headers, &q)?.authenticated()?;
    let group = match q.str("groupName").trim() {
        "" => naming::DEFAULT_GROUP,
        g => g,
    };
    let page_no = q.number("pageNo", 1)?.max(1);
    let page_size = q.number("pageSize", 10)?.clamp(1, 10_000);
    let names: Vec<String> = core
        .registry
        .nacos_services(q.str("namespaceId").trim(), group)
        .into_iter()
        .map(|s| s.name)
        .collect();
    let page: Vec<&String> = names
        .iter()
        .skip((page_no - 1).saturating_mul(page_size))
        .take(page_size)
        .collect();
    Ok(Json(json!({"count": names.len(), "doms": page})).into_response())
}

/// The `selector` parameter: only Nacos's `none` selector is served (the `label` selector
/// needs a CMDB berth does not have).
fn selector_param(q: &Params) -> Result<(), NacosError> {
    let Some(raw) = q.get("selector").map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(());
    };
    let v: Value = serde_json::from_str(raw)
        .map_err(|e| NacosError::bad(format!("selector is not JSON: {e}")))?;
    match v.get("type").and_then(Value::as_str).unwrap_or("none") {
        t if t.eq_ignore_ascii_case("none") => Ok(()),
        t => Err(NacosError::bad(format!(
            "selector type {t:?} is not supported (only \"none\")"
        ))),
    }
}

/// A service definition from a request, over `base` (what is kept of fields not given).
fn service_def(q: &Params, base: ServiceDef) -> Result<ServiceDef, NacosError> {
    selector_param(q)?;
    Ok(ServiceDef {
        protect_threshold: float_param(q, "protectThreshold")?.unwrap_or(base.protect_threshold),
        metadata: metadata_param(q)?.unwrap_or(base.metadata),
    })
}

/// `POST /v1/ns/service`: defines a service (400 if it exists).
async fn create_service(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
    q: Params,
) -> Result<Response, NacosError> {
    define(&core, &headers, &q, Define::Create).await
}

/// `PUT /v1/ns/service`: changes the given fields of a service (404 if it does not exist).
async fn update_service(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
    q: Params,
) -> Result<Response, NacosError> {
    define(&core, &headers, &q, Define::Update).await
}

/// Creates or updates a service's definition from the request (an update keeps the fields
/// it does not give).
async fn define(
    core: &Arc<Core>,
    headers: &HeaderMap,
    q: &Params,
    mode: Define,
) -> Result<Response, NacosError> {
    principal(core, headers, q)?.authenticated()?;
    let s = service(q)?;
    let base = match mode {
        Define::Create => ServiceDef::default(),
        Define::Update => core.registry.nacos_def(&s).unwrap_or_default(),
    };
    let def = service_def(q, base)?;
    core.registry.nacos_define(core, &s, &def, mode).await?;
    Ok(text_ok())
}

/// `DELETE /v1/ns/service`: removes a service's definition (400 while it has instances).
async fn delete_service(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
    q: Params,
) -> Result<Response, NacosError> {
    principal(&core, &headers, &q)?.authenticated()?;
    let s = service(&q)?;
    core.registry.nacos_undefine(&core, &s).await?;
    Ok(text_ok())
}

/// `GET /v1/ns/service`: a service with its settings and clusters (404 when it has neither
/// a definition nor instances).
async fn get_service(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
    q: Params,
) -> Result<Response, NacosError> {
    principal(&core, &headers, &q)?.authenticated()?;
    let s = service(&q)?;
    let def = core.registry.nacos_def(&s);
    let (list, _) = core.registry.nacos_instances(&s);
    if def.is_none() && list.is_empty() {
        return Err(NacosError::new(
            StatusCode::NOT_FOUND,
            format!("service {} not found", s.grouped()),
        ));
    }
    let def = def.unwrap_or_default();
    let clusters: std::collections::BTreeSet<&str> =
        list.iter().map(|i| i.cluster.as_str()).collect();
    let clusters: Vec<Value> = clusters
        .into_iter()
        .map(|c| json!({"name": c, "healthChecker": {"type": "NONE"}, "metadata": {}}))
        .collect();
    Ok(Json(json!({
        "namespaceId": s.namespace,
        "groupName": s.group,
        "name": s.name,
        "protectThreshold": def.protect_threshold,
        "metadata": def.metadata,
        "selector": {"type": "none", "contextType": "NONE"},
        "clusters": clusters,
    }))
    .into_response())
}
