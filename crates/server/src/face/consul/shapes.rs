//! Consul's output shapes, PascalCase and type-exact (Go clients abort a whole decode on one
//! wrong type): `Node.TaggedAddresses` is a string map, `Service.TaggedAddresses` a map of
//! `{Address, Port}`; lists are `[]`, never `null`.

use std::collections::BTreeMap;

use berth_registry::catalog::{Entry, Record};
use berth_registry::{Check, CheckKind, Node, Service};
use serde_json::{json, Value};

use super::input::go_format;

/// A node (`/v1/catalog/nodes`, `ServiceEntry.Node`).
pub fn node(r: &Record<Node>) -> Value {
    let n = &r.value;
    json!({
        "ID": n.id,
        "Node": n.name,
        "Address": n.address,
        "Datacenter": n.datacenter,
        "TaggedAddresses": n.tagged_addresses,
        "Meta": n.meta,
        "CreateIndex": r.create,
        "ModifyIndex": r.modify,
    })
}

fn service_tagged(s: &Service) -> Value {
    let m: BTreeMap<&String, Value> = s
        .tagged_addresses
        .iter()
        .map(|(k, a)| (k, json!({"Address": a.address, "Port": a.port})))
        .collect();
    json!(m)
}

/// A service instance as the agent and health endpoints show it (`AgentService`).
pub fn service(r: &Record<Service>, datacenter: &str) -> Value {
    let s = &r.value;
    json!({
        "ID": s.id,
        "Service": s.name,
        "Tags": s.tags,
        "Meta": s.meta,
        "Port": s.port,
        "Address": s.address,
        "TaggedAddresses": service_tagged(s),
        "Weights": {"Passing": s.weights.passing, "Warning": s.weights.warning},
        "EnableTagOverride": s.enable_tag_override,
        "Kind": s.kind,
        "Datacenter": datacenter,
        "CreateIndex": r.create,
        "ModifyIndex": r.modify,
    })
}

/// A flattened instance (`/v1/catalog/service/<s>`).
pub fn catalog_service(n: &Record<Node>, r: &Record<Service>) -> Value {
    let (node, s) = (&n.value, &r.value);
    json!({
        "ID": node.id,
        "Node": node.name,
        "Address": node.address,
        "Datacenter": node.datacenter,
        "TaggedAddresses": node.tagged_addresses,
        "NodeMeta": node.meta,
        "ServiceKind": s.kind,
        "ServiceID": s.id,
        "ServiceName": s.name,
        "ServiceTags": s.tags,
        "ServiceAddress": s.address,
        "ServiceTaggedAddresses": service_tagged(s),
        "ServiceWeights": {"Passing": s.weights.passing, "Warning": s.weights.warning},
        "ServiceMeta": s.meta,
        "ServicePort": s.port,
        "ServiceEnableTagOverride": s.enable_tag_override,
        "CreateIndex": r.create,
        "ModifyIndex": r.modify,
    })
}

/// A health check (`HealthCheck`), with the tags of its instance.
pub fn check(r: &Record<Check>, service_tags: &[String]) -> Value {
    let c = &r.value;
    let mut def = serde_json::Map::new();
    match &c.kind {
        CheckKind::Http {
            url,
            method,
            headers,
            body,
            tls_skip_verify,
            tls_server_name,
        } => {
            def.insert("HTTP".into(), json!(url));
            def.insert("Method".into(), json!(method));
            def.insert("Header".into(), json!(headers));
            def.insert("Body".into(), json!(body));
            def.insert("TLSSkipVerify".into(), json!(tls_skip_verify));
            def.insert("TLSServerName".into(), json!(tls_server_name));
        }
        CheckKind::Tcp { address } => {
            def.insert("TCP".into(), json!(address));
        }
        CheckKind::Grpc {
            target,
            use_tls,
            tls_skip_verify,
        } => {
            def.insert("GRPC".into(), json!(target));
            def.insert("GRPCUseTLS".into(), json!(use_tls));
            def.insert("TLSSkipVerify".into(), json!(tls_skip_verify));
        }
        CheckKind::Ttl { ttl } => {
            def.insert("TTL".into(), json!(go_format(*ttl)));
        }
        CheckKind::External => {}
    }
    def.insert("Interval".into(), json!(go_format(c.interval)));
    def.insert("Timeout".into(), json!(go_format(c.timeout)));
    def.insert(
        "DeregisterCriticalServiceAfter".into(),
        json!(go_format(c.deregister_critical_after)),
    );
    json!({
        "Node": c.node,
        "CheckID": c.id,
        "Name": c.name,
        "Status": c.status.as_str(),
        "Notes": c.notes,
        "Output": c.output,
        "ServiceID": c.service_id,
        "ServiceName": c.service_name,
        "ServiceTags": service_tags,
        "Type": c.kind.type_name(),
        "Interval": if c.kind.is_active() { go_format(c.interval) } else { String::new() },
        "Timeout": if c.kind.is_active() { go_format(c.timeout) } else { String::new() },
        "ExposedPort": 0,
        "Definition": def,
        "CreateIndex": r.create,
        "ModifyIndex": r.modify,
    })
}

/// A `ServiceEntry` (`/v1/health/service/<s>`).
pub fn entry(e: &Entry) -> Value {
    let tags = &e.service.value.tags;
    let checks: Vec<Value> = e
        .checks
        .iter()
        .map(|c| {
            if c.value.service_id.is_empty() {
                check(c, &[])
            } else {
                check(c, tags)
            }
        })
        .collect();
    json!({
        "Node": node(&e.node),
        "Service": service(&e.service, &e.node.value.datacenter),
        "Checks": checks,
    })
}
