//! Naming over Nacos gRPC, on the registry: `InstanceRequest` (register or deregister; an
//! ephemeral instance lives while its connection does: berth beats for it every 5 s and
//! removes it when the connection closes), `PersistentInstanceRequest` (checked by berth,
//! never removed by it), `BatchInstanceRequest` (the connection's instances of a service
//! replaced by the list), `SubscribeServiceRequest` (the service's instances now, then a
//! `NotifySubscriberRequest` pushed on each change), `ServiceQueryRequest` and
//! `ServiceListRequest`.

use std::sync::Arc;
use std::time::Duration;

use berth_registry::naming::{self, Instance, ServiceName};
use berth_registry::Topic;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::{code, failed, ok, ConnTag, Conns, Req};
use crate::core::Core;
use crate::registry::RegistryFailure;

fn failure(e: &RegistryFailure) -> u16 {
    match e {
        RegistryFailure::Refused(berth_registry::RegistryError::Invalid(_)) => code::BAD_REQUEST,
        RegistryFailure::Refused(_) => code::SERVER_ERROR,
        RegistryFailure::Write(_) => code::UNAVAILABLE,
    }
}

/// The request's service (`namespace`, `groupName`, `serviceName`).
fn service(r: &Req) -> Result<ServiceName, (u16, String)> {
    let s = ServiceName::new(
        r.str("namespace").trim(),
        r.str("groupName").trim(),
        r.str("serviceName").trim(),
    );
    s.validate()
        .map_err(|e| (code::BAD_REQUEST, e.to_string()))?;
    Ok(s)
}

/// Checks the request's token: any authenticated user may use naming.
fn authenticated(core: &Core, r: &Req) -> Result<(), (u16, String)> {
    r.principal(core)
        .and_then(|p| p.authenticated())
        .map_err(|e| (code::NO_RIGHT, e.to_string()))
}

/// An instance of `service` from its JSON.
fn instance(service: &ServiceName, v: &Value, ephemeral: bool) -> Result<Instance, (u16, String)> {
    let s = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let b = |k: &str, d: bool| v.get(k).and_then(Value::as_bool).unwrap_or(d);
    let port = v
        .get("port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| {
            (
                code::BAD_REQUEST,
                "instance.port is not 1 to 65535".to_string(),
            )
        })?;
    let metadata = v
        .get("metadata")
        .and_then(Value::as_object)
        .map(naming::metadata)
        .unwrap_or_default();
    let cluster = match s("clusterName").as_str() {
        "" => naming::DEFAULT_CLUSTER.to_string(),
        c => c.to_string(),
    };
    let i = Instance {
        service: service.clone(),
        cluster,
        ip: s("ip"),
        port,
        weight: v.get("weight").and_then(Value::as_f64).unwrap_or(1.0),
        enabled: b("enabled", true),
        healthy: b("healthy", true),
        ephemeral,
        metadata,
    };
    i.validate()
        .map_err(|e| (code::BAD_REQUEST, e.to_string()))?;
    Ok(i)
}

/// The lease the connection's ephemeral instances live on, granted on first use.
async fn conn_lease(core: &Core, conns: &Conns, tag: ConnTag) -> Result<i64, (u16, String)> {
    let held = conns
        .with_open(tag, |c| c.lease)
        .ok_or_else(super::unregistered)?;
    if held != 0 {
        return Ok(held);
    }
    let ttl = i64::try_from(naming::BEAT_TIMEOUT.as_secs()).unwrap_or(15);
    let granted = core
        .leases
        .grant(ttl, 0, None)
        .await
        .map_err(|e| (code::UNAVAILABLE, e.to_string()))?
        .id;
    // Two registrations racing on one connection: the first lease set wins; the other
    // holds nothing and expires on its own.
    let lease = conns.with_open(tag, |c| {
        if c.lease == 0 {
            c.lease = granted;
        }
        c.lease
    });
    if lease != Some(granted) {
        // Not ours to use (another registration won, or the connection closed meanwhile).
        let _ = core.leases.revoke(granted, None).await;
    }
    lease.ok_or_else(super::unregistered)
}

fn same_place(a: &Instance, b: &Instance) -> bool {
    a.ip == b.ip && a.port == b.port && a.cluster == b.cluster
}

/// `InstanceRequest` / `PersistentInstanceRequest` → `InstanceResponse`.
pub async fn instance_request(
    core: &Core,
    conns: &Conns,
    tag: ConnTag,
    r: &Req,
    persistent: bool,
) -> Result<String, (u16, String)> {
    authenticated(core, r)?;
    let svc = service(r)?;
    let kind = r.str("type").to_string();
    let body = r.body.get("instance").cloned().unwrap_or(Value::Null);
    let ephemeral = !persistent
        && body
            .get("ephemeral")
            .and_then(Value::as_bool)
            .unwrap_or(true);
    match kind.as_str() {
        "registerInstance" => {
            let i = instance(&svc, &body, ephemeral)?;
            let lease = if ephemeral {
                Some(conn_lease(core, conns, tag).await?)
            } else {
                None
            };
            core.registry
                .nacos_register(core, &i, lease)
                .await
                .map_err(|e| (failure(&e), e.to_string()))?;
            if ephemeral {
                // One instance per service per connection (as Nacos 2.x): another replaces it.
                let old = conns
                    .with_open(tag, |c| c.instances.insert(svc.clone(), vec![i.clone()]))
                    .ok_or_else(super::unregistered)?;
                for o in old
                    .unwrap_or_default()
                    .iter()
                    .filter(|o| !same_place(o, &i))
                {
                    let _ = core
                        .registry
                        .nacos_deregister(core, &svc, &o.ip, o.port, &o.cluster)
                        .await;
                }
            }
        }
        "deregisterInstance" => {
            let s = |k: &str| {
                body.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .trim()
                    .to_string()
            };
            let port = body
                .get("port")
                .and_then(Value::as_u64)
                .and_then(|p| u16::try_from(p).ok())
                .ok_or_else(|| (code::BAD_REQUEST, "instance.port is missing".to_string()))?;
            let (ip, cluster) = (s("ip"), s("clusterName"));
            core.registry
                .nacos_deregister(core, &svc, &ip, port, &cluster)
                .await
                .map_err(|e| (failure(&e), e.to_string()))?;
            let cluster = if cluster.is_empty() {
                naming::DEFAULT_CLUSTER.to_string()
            } else {
                cluster
            };
            conns.with_open(tag, |c| {
                if let Some(list) = c.instances.get_mut(&svc) {
                    list.retain(|o| !(o.ip == ip && o.port == port && o.cluster == cluster));
                }
            });
        }
        other => {
            return Err((
                code::BAD_REQUEST,
                format!("type {other:?} is not registerInstance or deregisterInstance"),
            ))
        }
    }
    Ok(kind)
}

/// `InstanceRequest` or `PersistentInstanceRequest`.
pub async fn instance_answer(
    core: &Core,
    conns: &Conns,
    tag: ConnTag,
    r: &Req,
    persistent: bool,
) -> berth_proto::nacos::Payload {
    match instance_request(core, conns, tag, r, persistent).await {
        Ok(kind) => ok("InstanceResponse", json!({ "type": kind })),
        Err((c, m)) => failed("InstanceResponse", c, &m, json!({})),
    }
}

/// `BatchInstanceRequest` → `BatchInstanceResponse`: the connection's instances of the
/// service become exactly the list (ephemeral ones).
pub async fn batch(
    core: &Core,
    conns: &Conns,
    tag: ConnTag,
    r: &Req,
) -> berth_proto::nacos::Payload {
    const KIND: &str = "BatchInstanceResponse";
    let result = async {
        authenticated(core, r)?;
        let svc = service(r)?;
        let list = r
            .body
            .get("instances")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let wanted = list
            .iter()
            .map(|v| instance(&svc, v, true))
            .collect::<Result<Vec<_>, _>>()?;
        let lease = Some(conn_lease(core, conns, tag).await?);
        for i in &wanted {
            core.registry
                .nacos_register(core, i, lease)
                .await
                .map_err(|e| (failure(&e), e.to_string()))?;
        }
        let old = conns
            .with_open(tag, |c| c.instances.insert(svc.clone(), wanted.clone()))
            .ok_or_else(super::unregistered)?;
        for o in old
            .unwrap_or_default()
            .iter()
            .filter(|o| !wanted.iter().any(|w| same_place(w, o)))
        {
            core.registry
                .nacos_deregister(core, &svc, &o.ip, o.port, &o.cluster)
                .await
                .map_err(|e| (failure(&e), e.to_string()))?;
        }
        Ok::<_, (u16, String)>(())
    }
    .await;
    match result {
        Ok(()) => ok(KIND, json!({"type": "batchRegisterInstance"})),
        Err((c, m)) => failed(KIND, c, &m, json!({})),
    }
}

/// What a client is shown of `svc` (Nacos's selection with its protect threshold;
/// subscribers are shown disabled instances too and filter them themselves), and the
/// index it reflects.
fn shown(
    core: &Core,
    svc: &ServiceName,
    healthy_only: bool,
    enabled_only: bool,
) -> (naming::Selection, i64) {
    let (hosts, index) = core.registry.nacos_instances(svc);
    let def = core.registry.nacos_def(svc);
    (
        naming::select(hosts, &[], healthy_only, enabled_only, def.as_ref()),
        index,
    )
}

/// A service's instances as Nacos's `ServiceInfo`.
fn service_info(svc: &ServiceName, shown: &naming::Selection, at: u64) -> Value {
    let hosts: Vec<Value> = shown
        .hosts
        .iter()
        .map(|i| {
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
            })
        })
        .collect();
    json!({
        "name": svc.name,
        "groupName": svc.group,
        "clusters": "",
        "cacheMillis": 10000,
        "hosts": hosts,
        "lastRefTime": at,
        "checksum": "",
        "allIps": false,
        "reachProtectionThreshold": shown.protected,
    })
}

/// `SubscribeServiceRequest` → `SubscribeServiceResponse`; with `subscribe: true` the
/// connection is then told of each change of the service.
pub fn subscribe(
    core: &Arc<Core>,
    conns: &Arc<Conns>,
    tag: ConnTag,
    r: &Req,
) -> berth_proto::nacos::Payload {
    const KIND: &str = "SubscribeServiceResponse";
    if let Err((c, m)) = authenticated(core, r) {
        return failed(KIND, c, &m, json!({}));
    }
    let svc = match service(r) {
        Ok(s) => s,
        Err((c, m)) => return failed(KIND, c, &m, json!({})),
    };
    let on = r
        .body
        .get("subscribe")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let (hosts, index) = shown(core, &svc, false, false);
    let at = crate::registry::now_ms();
    let info = service_info(&svc, &hosts, at);
    let Some(previous) = conns.with_open(tag, |c| c.subscriptions.remove(&svc)) else {
        let (c, m) = super::unregistered();
        return failed(KIND, c, &m, json!({}));
    };
    if let Some(task) = previous {
        task.abort();
    }
    if on {
        let task = tokio::spawn(follow(
            core.clone(),
            conns.clone(),
            tag.id,
            svc.clone(),
            info.clone(),
            index,
            at,
        ));
        let replaced = conns.with_open(tag, |c| c.subscriptions.insert(svc, task.abort_handle()));
        match replaced {
            // A subscription made meanwhile: this one replaces it.
            Some(Some(old)) => old.abort(),
            Some(None) => {}
            // The connection closed meanwhile.
            None => task.abort(),
        }
    }
    ok(KIND, json!({ "serviceInfo": info }))
}

/// Pushes `NotifySubscriberRequest` to connection `conn` each time the service's instances
/// change, with a strictly growing `lastRefTime` (clients drop a push that is not newer).
async fn follow(
    core: Arc<Core>,
    conns: Arc<Conns>,
    conn: u64,
    svc: ServiceName,
    mut last: Value,
    mut index: i64,
    mut at: u64,
) {
    let topic = Topic::Service(svc.catalog_name());
    loop {
        core.registry
            .wait(&topic, index, Instant::now() + Duration::from_secs(300))
            .await;
        let (hosts, now_index) = shown(&core, &svc, false, false);
        index = now_index;
        let candidate = service_info(&svc, &hosts, at);
        if candidate["hosts"] == last["hosts"]
            && candidate["reachProtectionThreshold"] == last["reachProtectionThreshold"]
        {
            continue;
        }
        at = crate::registry::now_ms().max(at + 1);
        let info = service_info(&svc, &hosts, at);
        let open = conns.push_to(conn, "NotifySubscriberRequest", |id| {
            json!({
                "headers": {},
                "requestId": id,
                "module": "naming",
                "namespace": svc.namespace,
                "serviceName": svc.name,
                "groupName": svc.group,
                "serviceInfo": info,
            })
        });
        if !open {
            return;
        }
        last = info;
    }
}

/// `ServiceQueryRequest` → `QueryServiceResponse` (`healthOnly` filters).
pub fn query(core: &Core, r: &Req) -> berth_proto::nacos::Payload {
    const KIND: &str = "QueryServiceResponse";
    if let Err((c, m)) = authenticated(core, r) {
        return failed(KIND, c, &m, json!({}));
    }
    let svc = match service(r) {
        Ok(s) => s,
        Err((c, m)) => return failed(KIND, c, &m, json!({})),
    };
    let healthy_only = r
        .body
        .get("healthOnly")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let (hosts, _) = shown(core, &svc, healthy_only, true);
    let info = service_info(&svc, &hosts, crate::registry::now_ms());
    ok(KIND, json!({ "serviceInfo": info }))
}

/// `ServiceListRequest` → `ServiceListResponse` (`count` and `serviceNames` always).
pub fn list(core: &Core, r: &Req) -> berth_proto::nacos::Payload {
    const KIND: &str = "ServiceListResponse";
    let empty = json!({"count": 0, "serviceNames": []});
    if let Err((c, m)) = authenticated(core, r) {
        return failed(KIND, c, &m, empty);
    }
    let group = match r.str("groupName").trim() {
        "" => naming::DEFAULT_GROUP,
        g => g,
    };
    let number = |k: &str, d: u64| r.body.get(k).and_then(Value::as_u64).unwrap_or(d);
    let page_no = usize::try_from(number("pageNo", 1).max(1)).unwrap_or(1);
    let page_size = usize::try_from(number("pageSize", 10).clamp(1, 10_000)).unwrap_or(10);
    let names: Vec<String> = core
        .registry
        .nacos_services(r.str("namespace").trim(), group)
        .into_iter()
        .map(|s| s.name)
        .collect();
    let page: Vec<&String> = names
        .iter()
        .skip((page_no - 1).saturating_mul(page_size))
        .take(page_size)
        .collect();
    ok(KIND, json!({"count": names.len(), "serviceNames": page}))
}

/// Keeps every open connection's lease alive, every 5 s: one renewal keeps all the
/// connection's ephemeral instances. A lease that lapsed (this member was cut off long
/// enough) is granted anew and the connection's instances are registered on it again.
pub async fn keep_alive(core: Arc<Core>, conns: Arc<Conns>) {
    let mut tick = tokio::time::interval(naming::BEAT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let leases: Vec<(u64, i64)> = conns
            .lock()
            .iter()
            .filter(|(_, c)| c.lease != 0)
            .map(|(id, c)| (*id, c.lease))
            .collect();
        for (id, lease) in leases {
            match core.leases.renew(lease).await {
                Ok(ttl) if ttl > 0 => {}
                Ok(_) => renew_lost(&core, &conns, id, lease).await,
                Err(e) => tracing::debug!(error = %e, "nacos grpc: renewing a connection's lease"),
            }
        }
    }
}

/// Grants connection `id` a new lease in place of `lost` and registers its instances on it.
async fn renew_lost(core: &Core, conns: &Conns, id: u64, lost: i64) {
    let ttl = i64::try_from(naming::BEAT_TIMEOUT.as_secs()).unwrap_or(15);
    let Ok(granted) = core.leases.grant(ttl, 0, None).await else {
        return;
    };
    let instances: Vec<Instance> = {
        let mut map = conns.lock();
        let Some(c) = map.get_mut(&id).filter(|c| c.lease == lost) else {
            return;
        };
        c.lease = granted.id;
        c.instances.values().flatten().cloned().collect()
    };
    for i in instances {
        if let Err(e) = core
            .registry
            .nacos_register(core, &i, Some(granted.id))
            .await
        {
            tracing::debug!(error = %e, "nacos grpc: registering an instance on a new lease");
        }
    }
}
