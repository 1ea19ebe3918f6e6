//! `/v1/agent/*`: this member as a Consul agent. Services and checks registered here are
//! attributed to this member's node; berth writes them straight into the replicated catalog
//! (no anti-entropy: agent and server are one process).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::Router;
use berth_registry::model::{TaggedAddress, Weights};
use berth_registry::register::{CheckDefinition, Registration};
use berth_registry::{CheckKind, CheckStatus, Service};
use serde::Deserialize;
use serde_json::{json, Value};

use super::input::{decode, GoDuration};
use super::{require_user, shapes, ApiError, Params};
use crate::core::Core;
use crate::registry::{Registry, DATACENTER};

pub(super) fn routes() -> Router<Arc<Core>> {
    Router::new()
        .route("/v1/agent/self", get(agent_self))
        .route("/v1/agent/members", get(members))
        .route("/v1/agent/services", get(services))
        .route("/v1/agent/service/{*id}", get(service))
        .route("/v1/agent/checks", get(checks))
        .route("/v1/agent/service/register", put(register))
        .route("/v1/agent/service/deregister/{*id}", put(deregister))
        .route(
            "/v1/agent/service/maintenance/{*id}",
            put(service_maintenance),
        )
        .route("/v1/agent/maintenance", put(node_maintenance))
        .route("/v1/agent/check/register", put(check_register))
        .route("/v1/agent/check/deregister/{*id}", put(check_deregister))
        .route("/v1/agent/check/pass/{*id}", put(pass))
        .route("/v1/agent/check/warn/{*id}", put(warn))
        .route("/v1/agent/check/fail/{*id}", put(fail))
        .route("/v1/agent/check/update/{*id}", put(update))
}

async fn agent_self(State(core): State<Arc<Core>>) -> Response {
    let node = Registry::agent_node(&core);
    axum::Json(json!({
        "Config": {
            "Datacenter": DATACENTER,
            "PrimaryDatacenter": DATACENTER,
            "NodeName": node.name,
            "NodeID": node.id,
            "Server": true,
            "Revision": "",
            "Version": env!("CARGO_PKG_VERSION"),
        },
        "Member": {
            "Name": node.name,
            "Addr": node.address,
            "Port": 8301,
            "Tags": {"dc": DATACENTER, "role": "consul", "build": "berth"},
            "Status": 1,
        },
        "Stats": {},
        "Meta": {},
        "DebugConfig": {},
        "xDS": null,
    }))
    .into_response()
}

/// Every member of the cluster, as Serf members (alive: it is a voting or learning member).
async fn members(State(core): State<Arc<Core>>) -> Response {
    let list: Vec<Value> = core
        .consensus
        .members()
        .into_iter()
        .map(|m| {
            let host = m
                .member
                .peer_urls
                .first()
                .and_then(|u| u.split("://").nth(1))
                .and_then(|hp| hp.rsplit_once(':').map(|(h, _)| h.to_string()))
                .unwrap_or_default();
            json!({
                "Name": m.member.name,
                "Addr": host,
                "Port": 8301,
                "Tags": {"dc": DATACENTER, "role": "consul"},
                "Status": 1,
            })
        })
        .collect();
    axum::Json(list).into_response()
}

async fn services(State(core): State<Arc<Core>>) -> Response {
    let node = core.member.name.clone();
    let map: BTreeMap<String, Value> = core.registry.read(|c| {
        c.services_on(&node)
            .iter()
            .map(|s| (s.value.id.clone(), shapes::service(s, DATACENTER)))
            .collect()
    });
    axum::Json(map).into_response()
}

async fn service(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let node = core.member.name.clone();
    match core.registry.read(|c| c.service(&node, &id)) {
        Some(s) => Ok(axum::Json(shapes::service(&s, DATACENTER)).into_response()),
        None => Err(ApiError::not_found(format!("unknown service ID: {id}"))),
    }
}

async fn checks(State(core): State<Arc<Core>>) -> Response {
    let node = core.member.name.clone();
    // The agent's own checks: serfHealth belongs to the catalog, as in Consul.
    let map: BTreeMap<String, Value> = core.registry.read(|c| {
        c.checks_on(&node)
            .iter()
            .filter(|r| r.value.id != berth_registry::catalog::SERF_HEALTH)
            .map(|r| {
                let tags = c
                    .service(&node, &r.value.service_id)
                    .map(|s| s.value.tags)
                    .unwrap_or_default();
                (r.value.id.clone(), shapes::check(r, &tags))
            })
            .collect()
    });
    axum::Json(map).into_response()
}

/// A check in a registration body (any case, snake_case accepted).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct CheckIn {
    checkid: String,
    id: String,
    name: String,
    notes: String,
    status: String,
    output: String,
    serviceid: String,
    ttl: Option<GoDuration>,
    http: String,
    method: String,
    header: BTreeMap<String, Vec<String>>,
    body: String,
    tlsskipverify: bool,
    tlsservername: String,
    tcp: String,
    grpc: String,
    grpcusetls: bool,
    interval: Option<GoDuration>,
    timeout: Option<GoDuration>,
    deregistercriticalserviceafter: Option<GoDuration>,
    args: Option<Value>,
    scriptargs: Option<Value>,
    script: Option<Value>,
    shell: Option<Value>,
    dockercontainerid: Option<Value>,
    udp: Option<Value>,
    h2ping: Option<Value>,
    aliasservice: Option<Value>,
    aliasnode: Option<Value>,
    osservice: Option<Value>,
}

impl CheckIn {
    /// The domain's definition. `external`: a catalog check (no kind needed, none run).
    pub(super) fn definition(self, external: bool) -> Result<CheckDefinition, ApiError> {
        let unsupported = [
            (
                "Args",
                self.args.is_some() || self.scriptargs.is_some() || self.script.is_some(),
            ),
            ("Shell", self.shell.is_some()),
            ("DockerContainerID", self.dockercontainerid.is_some()),
            ("UDP", self.udp.is_some()),
            ("H2PING", self.h2ping.is_some()),
            (
                "AliasService",
                self.aliasservice.is_some() || self.aliasnode.is_some(),
            ),
            ("OSService", self.osservice.is_some()),
        ];
        if let Some((what, _)) = unsupported.iter().find(|(_, given)| *given) {
            return Err(ApiError::bad(format!(
                "{what} checks are not supported by berth (script, Docker, UDP, H2PING, alias and OS service checks are off)"
            )));
        }
        let mut kinds = Vec::new();
        if let Some(ttl) = self.ttl {
            kinds.push(CheckKind::Ttl { ttl: ttl.0 });
        }
        if !self.http.is_empty() {
            kinds.push(CheckKind::Http {
                url: self.http,
                method: if self.method.is_empty() {
                    "GET".into()
                } else {
                    self.method.to_uppercase()
                },
                headers: self.header,
                body: self.body,
                tls_skip_verify: self.tlsskipverify,
                tls_server_name: self.tlsservername.clone(),
            });
        }
        if !self.tcp.is_empty() {
            kinds.push(CheckKind::Tcp { address: self.tcp });
        }
        if !self.grpc.is_empty() {
            kinds.push(CheckKind::Grpc {
                target: self.grpc,
                use_tls: self.grpcusetls,
                tls_skip_verify: self.tlsskipverify,
            });
        }
        let kind = match (kinds.len(), external) {
            (0, true) => CheckKind::External,
            (0, false) => {
                return Err(ApiError::bad(
                    "Must provide TTL or HTTP, TCP or GRPC and Interval",
                ))
            }
            (1, _) => kinds.remove(0),
            _ => {
                return Err(ApiError::bad(
                    "a check must be exactly one of TTL, HTTP, TCP or GRPC",
                ))
            }
        };
        let status = match self.status.as_str() {
            "" => None,
            s => Some(CheckStatus::parse(s).ok_or_else(|| {
                ApiError::bad(format!(
                    "Invalid check status: {s:?} (passing, warning or critical)"
                ))
            })?),
        };
        let id = if self.checkid.is_empty() {
            self.id
        } else {
            self.checkid
        };
        Ok(CheckDefinition {
            id: Some(id).filter(|s| !s.is_empty()),
            name: Some(self.name).filter(|s| !s.is_empty()),
            notes: self.notes,
            status,
            output: self.output,
            kind,
            interval: self.interval.map(|d| d.0),
            timeout: self.timeout.map(|d| d.0),
            deregister_critical_after: self.deregistercriticalserviceafter.map(|d| d.0),
            service_id: self.serviceid,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TaggedIn {
    address: String,
    port: i64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct WeightsIn {
    passing: i64,
    warning: i64,
}

/// A service in a registration body.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct ServiceIn {
    id: String,
    name: String,
    /// The catalog register's name of the name field.
    service: String,
    tags: Vec<String>,
    address: String,
    port: i64,
    meta: BTreeMap<String, String>,
    taggedaddresses: BTreeMap<String, TaggedIn>,
    enabletagoverride: bool,
    weights: Option<WeightsIn>,
    kind: String,
    check: Option<CheckIn>,
    checks: Vec<CheckIn>,
}

fn port(p: i64, what: &str) -> Result<u16, ApiError> {
    u16::try_from(p).map_err(|_| ApiError::bad(format!("{what} {p} is not a port (0 to 65535)")))
}

impl ServiceIn {
    pub(super) fn registration(self) -> Result<Registration, ApiError> {
        let weights = match self.weights {
            None => Weights::default(),
            Some(w) => {
                if w.passing < 1 || w.warning < 0 {
                    return Err(ApiError::bad(
                        "Passing must be greater than 0 and Warning must not be negative",
                    ));
                }
                Weights {
                    passing: u32::try_from(w.passing).unwrap_or(u32::MAX),
                    warning: u32::try_from(w.warning).unwrap_or(u32::MAX),
                }
            }
        };
        let mut tagged = BTreeMap::new();
        for (k, t) in self.taggedaddresses {
            tagged.insert(
                k,
                TaggedAddress {
                    address: t.address,
                    port: port(t.port, "TaggedAddresses port")?,
                },
            );
        }
        let mut checks = Vec::new();
        if let Some(c) = self.check {
            checks.push(c.definition(false)?);
        }
        for c in self.checks {
            checks.push(c.definition(false)?);
        }
        Ok(Registration {
            service: Service {
                id: self.id,
                name: if self.name.is_empty() {
                    self.service
                } else {
                    self.name
                },
                node: String::new(),
                tags: self.tags,
                address: self.address,
                port: port(self.port, "Port")?,
                meta: self.meta,
                tagged_addresses: tagged,
                weights,
                enable_tag_override: self.enabletagoverride,
                kind: self.kind,
            },
            checks,
        })
    }
}

async fn register(
    State(core): State<Arc<Core>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let q = Params::parse(raw)?;
    require_user(&core, &headers, &q)?;
    let svc: ServiceIn = decode(&body).map_err(ApiError::bad)?;
    let reg = svc.registration()?;
    let replace = q.bool("replace-existing-checks", false)?;
    let node = Registry::agent_node(&core);
    core.registry.register(&core, &node, reg, replace).await?;
    Ok(().into_response())
}

async fn deregister(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let q = Params::parse(raw)?;
    require_user(&core, &headers, &q)?;
    if core
        .registry
        .deregister_service(&core, &core.member.name, &id)
        .await?
    {
        Ok(().into_response())
    } else {
        Err(ApiError::not_found(format!("Unknown service ID {id:?}")))
    }
}

async fn service_maintenance(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let q = Params::parse(raw)?;
    require_user(&core, &headers, &q)?;
    let enable = match q.get("enable") {
        None => return Err(ApiError::bad("Missing value for enable")),
        Some(_) => q.bool("enable", false)?,
    };
    let reason = q.get("reason").unwrap_or_default().to_string();
    let node = Registry::agent_node(&core);
    core.registry
        .maintenance(&core, &node, Some(&id), enable, &reason)
        .await?;
    Ok(().into_response())
}

async fn node_maintenance(
    State(core): State<Arc<Core>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let q = Params::parse(raw)?;
    require_user(&core, &headers, &q)?;
    let enable = match q.get("enable") {
        None => return Err(ApiError::bad("Missing value for enable")),
        Some(_) => q.bool("enable", false)?,
    };
    let reason = q.get("reason").unwrap_or_default().to_string();
    let node = Registry::agent_node(&core);
    core.registry
        .maintenance(&core, &node, None, enable, &reason)
        .await?;
    Ok(().into_response())
}

async fn check_register(
    State(core): State<Arc<Core>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let q = Params::parse(raw)?;
    require_user(&core, &headers, &q)?;
    let c: CheckIn = decode(&body).map_err(ApiError::bad)?;
    let def = c.definition(false)?;
    let node = Registry::agent_node(&core);
    core.registry.register_check(&core, &node, def).await?;
    Ok(().into_response())
}

async fn check_deregister(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let q = Params::parse(raw)?;
    require_user(&core, &headers, &q)?;
    if core
        .registry
        .deregister_check(&core, &core.member.name, &id)
        .await?
    {
        Ok(().into_response())
    } else {
        Err(ApiError::not_found(format!("Unknown check ID {id:?}")))
    }
}

async fn ttl_update(
    core: &Core,
    id: &str,
    status: CheckStatus,
    output: String,
    q: &Params,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    require_user(core, headers, q)?;
    core.registry
        .update_ttl(core, &core.member.name, id, status, output)
        .await?;
    Ok(().into_response())
}

async fn pass(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    ttl_verb(&core, &id, CheckStatus::Passing, raw, &headers).await
}

async fn warn(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    ttl_verb(&core, &id, CheckStatus::Warning, raw, &headers).await
}

async fn fail(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    ttl_verb(&core, &id, CheckStatus::Critical, raw, &headers).await
}

/// `check/pass|warn|fail/<id>?note=…`: a TTL update with the note as its output.
async fn ttl_verb(
    core: &Core,
    id: &str,
    status: CheckStatus,
    raw: Option<String>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let q = Params::parse(raw)?;
    let note = q.get("note").unwrap_or_default().to_string();
    ttl_update(core, id, status, note, &q, headers).await
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct UpdateIn {
    status: String,
    output: String,
}

async fn update(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let q = Params::parse(raw)?;
    let u: UpdateIn = decode(&body).map_err(ApiError::bad)?;
    let status = CheckStatus::parse(&u.status).ok_or_else(|| {
        ApiError::bad(format!(
            "Invalid check status: {:?} (passing, warning or critical)",
            u.status
        ))
    })?;
    ttl_update(&core, &id, status, u.output, &q, &headers).await
}
