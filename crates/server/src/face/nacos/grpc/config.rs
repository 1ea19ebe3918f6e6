//! Config over Nacos gRPC: `ConfigQueryRequest`, `ConfigPublishRequest` (with `casMd5` and
//! `additionMap`), `ConfigRemoveRequest`, `ConfigBatchListenRequest`, and the
//! `ConfigChangeNotifyRequest` pushed to each connection listening to an item that changed
//! (the client then re-listens with its MD5 and queries what differs).

use std::sync::Arc;

use berth_auth::Access;
use berth_config::{layout, rules, Author, ItemKey, Reader};
use berth_store::Keyspace;
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;

use super::{code, failed, ok, ConnTag, Conns, Req};
use crate::auth::AuthFailure;
use crate::config_center::{Changed, ConfigFailure, Publish, Writer};
use crate::core::Core;

/// The item a request names (`tenant`, `group`, `dataId`).
fn key(r: &Req) -> Result<ItemKey, (u16, String)> {
    let k = ItemKey::new(
        r.str("tenant").trim(),
        r.str("group").trim(),
        r.str("dataId").trim(),
    );
    rules::key(&k).map_err(|e| (code::BAD_REQUEST, e.to_string()))?;
    Ok(k)
}

fn auth_code(e: &AuthFailure) -> u16 {
    match e {
        AuthFailure::Write(_) => code::UNAVAILABLE,
        AuthFailure::Auth(_) => code::NO_RIGHT,
    }
}

/// Checks `access` to `k` for the request's token.
/// Checks `access` to `k` for the request's principal; who writes, under its auth guard.
fn allowed(core: &Core, r: &Req, k: &ItemKey, access: Access) -> Result<Writer, (u16, String)> {
    let p = r
        .principal(core)
        .map_err(|e| (auth_code(&e), e.to_string()))?;
    p.check(Keyspace::Config, access, &layout::item(k), b"")
        .map_err(|e| (auth_code(&e), e.to_string()))?;
    let user = p.user().map(str::to_string).unwrap_or_else(|| {
        r.body
            .pointer("/additionMap/src_user")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    });
    Ok(Writer {
        author: Author {
            user,
            ip: r.client_ip.clone(),
        },
        guard: Some(p.guard()),
    })
}

fn failure_code(e: &ConfigFailure) -> u16 {
    use berth_config::ConfigError as E;
    match e {
        ConfigFailure::Refused(E::Invalid(_) | E::UnknownNamespace(_)) => code::BAD_REQUEST,
        ConfigFailure::Refused(E::TooLarge { .. }) => code::TOO_LARGE,
        ConfigFailure::Refused(E::NotFound(_)) => code::CONFIG_NOT_FOUND,
        ConfigFailure::Refused(E::Conflict { .. } | E::Exists(_)) => code::CONFLICT,
        ConfigFailure::Write(crate::consensus::WriteError::NotLeader) => code::UNAVAILABLE,
        _ => code::SERVER_ERROR,
    }
}

/// `ConfigQueryRequest` → `ConfigQueryResponse` (the beta when it covers `reader`: the
/// client's address or one of its connection's labels).
pub fn query(core: &Core, r: &Req, reader: &Reader) -> berth_proto::nacos::Payload {
    const KIND: &str = "ConfigQueryResponse";
    let k = match key(r) {
        Ok(k) => k,
        Err((c, m)) => return failed(KIND, c, &m, json!({})),
    };
    if let Err((c, m)) = allowed(core, r, &k, Access::Read) {
        return failed(KIND, c, &m, json!({}));
    }
    match core.config_center.get_for(&k, reader) {
        Some((item, beta)) => ok(
            KIND,
            json!({
                "content": item.content,
                "md5": item.md5,
                "contentType": item.kind.as_str(),
                "lastModified": item.modified_ms,
                "isBeta": beta,
                "encryptedDataKey": "",
            }),
        ),
        None => failed(
            KIND,
            code::CONFIG_NOT_FOUND,
            "config data not exist",
            json!({}),
        ),
    }
}

/// `ConfigPublishRequest` → `ConfigPublishResponse`; `additionMap.betaIps` (and berth's
/// `additionMap.betaLabels`, `key=value,...`) make it a beta.
pub async fn publish(core: &Core, r: &Req) -> berth_proto::nacos::Payload {
    const KIND: &str = "ConfigPublishResponse";
    let result = async {
        let k = key(r)?;
        let author = allowed(core, r, &k, Access::Write)?;
        let extra = |name: &str| {
            r.body
                .pointer(&format!("/additionMap/{name}"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .trim()
                .to_string()
        };
        let kind = rules::content_type(Some(&extra("type")))
            .map_err(|e| (code::BAD_REQUEST, e.to_string()))?;
        let content = r.str("content").to_string();
        let fail = |e: ConfigFailure| (failure_code(&e), e.to_string());
        let (beta_ips, beta_labels) = (extra("betaIps"), extra("betaLabels"));
        if !beta_ips.is_empty() || !beta_labels.is_empty() {
            let labels = rules::beta_labels(&beta_labels)
                .map_err(|e| (code::BAD_REQUEST, e.to_string()))?;
            let ips = rules::split_tags(&beta_ips);
            core.config_center
                .publish_beta(core, &k, content, kind, ips, labels, author)
                .await
                .map_err(fail)?;
            return Ok(());
        }
        if !extra("tag").is_empty() {
            return Err((
                code::BAD_REQUEST,
                "tag-isolated configs are not served by berth: use a beta release (betaIps) or a namespace".to_string(),
            ));
        }
        let cas = r.str("casMd5");
        let p = Publish {
            content,
            kind,
            desc: extra("desc"),
            tags: rules::split_tags(&extra("config_tags")),
            app: extra("appName"),
            cas_md5: (!cas.is_empty()).then(|| cas.to_string()),
        };
        core.config_center.publish(core, &k, p, author).await.map_err(fail)?;
        Ok(())
    }
    .await;
    match result {
        Ok(()) => ok(KIND, json!({})),
        Err((c, m)) => failed(KIND, c, &m, json!({})),
    }
}

/// `ConfigRemoveRequest` → `ConfigRemoveResponse` (success when there was nothing).
pub async fn remove(core: &Core, r: &Req) -> berth_proto::nacos::Payload {
    const KIND: &str = "ConfigRemoveResponse";
    let result = async {
        let k = key(r)?;
        let author = allowed(core, r, &k, Access::Write)?;
        core.config_center
            .delete(core, &k, author)
            .await
            .map_err(|e| (failure_code(&e), e.to_string()))
    }
    .await;
    match result {
        Ok(_) => ok(KIND, json!({})),
        Err((c, m)) => failed(KIND, c, &m, json!({})),
    }
}

/// `ConfigBatchListenRequest` → `ConfigChangeBatchListenResponse`: registers (or, with
/// `listen: false`, drops) the connection's listeners and lists every item whose MD5
/// differs from the client's.
pub fn batch_listen(
    core: &Core,
    conns: &Conns,
    tag: ConnTag,
    r: &Req,
) -> berth_proto::nacos::Payload {
    const KIND: &str = "ConfigChangeBatchListenResponse";
    let listen = r
        .body
        .get("listen")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let Some(contexts) = r.body.get("configListenContexts").and_then(Value::as_array) else {
        return failed(
            KIND,
            code::BAD_REQUEST,
            "configListenContexts is missing",
            json!({"changedConfigs": []}),
        );
    };
    let field = |c: &Value, f: &str| {
        c.get(f)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let mut keys = Vec::with_capacity(contexts.len());
    for c in contexts {
        let k = ItemKey::new(&field(c, "tenant"), &field(c, "group"), &field(c, "dataId"));
        if let Err(e) = rules::key(&k) {
            return failed(
                KIND,
                code::BAD_REQUEST,
                &e.to_string(),
                json!({"changedConfigs": []}),
            );
        }
        if let Err((c, m)) = allowed(core, r, &k, Access::Read) {
            return failed(KIND, c, &m, json!({"changedConfigs": []}));
        }
        keys.push((k, field(c, "md5")));
    }
    let held = conns.with_open(tag, |c| {
        for (k, _) in &keys {
            if listen {
                if c.listening.len() >= super::MAX_LISTENING && !c.listening.contains(k) {
                    return Err(());
                }
                c.listening.insert(k.clone());
            } else {
                c.listening.remove(k);
            }
        }
        Ok(Reader {
            ip: c.client_ip.clone(),
            labels: c.labels.clone(),
        })
    });
    let mut reader = match held {
        Some(Ok(reader)) => reader,
        Some(Err(())) => {
            return failed(
                KIND,
                code::BAD_REQUEST,
                &format!(
                    "a connection may listen to at most {} configs",
                    super::MAX_LISTENING
                ),
                json!({"changedConfigs": []}),
            )
        }
        None => {
            let (c, m) = super::unregistered();
            return failed(KIND, c, &m, json!({"changedConfigs": []}));
        }
    };
    if reader.ip.is_empty() {
        reader.ip = r.client_ip.clone();
    }
    let changed: Vec<Value> = if listen {
        keys.iter()
            .filter(|(k, md5)| core.config_center.md5_for(k, &reader) != *md5)
            .map(|(k, _)| json!({"dataId": k.data_id, "group": k.group, "tenant": k.tenant()}))
            .collect()
    } else {
        Vec::new()
    };
    ok(KIND, json!({ "changedConfigs": changed }))
}

/// Pushes `ConfigChangeNotifyRequest` to the connections listening to each item that
/// changes; after a reload (or falling behind), to every listening connection for every item
/// it listens to (clients re-listen by MD5, so a spurious notice costs one round trip).
pub async fn push_changes(core: Arc<Core>, conns: Arc<Conns>) {
    let mut changes = core.config_center.changes();
    loop {
        let changed = match changes.recv().await {
            Ok(c) => c,
            Err(RecvError::Lagged(_)) => Changed::All,
            Err(RecvError::Closed) => return,
        };
        match changed {
            Changed::Item(k) => notify(&conns, |c| c.listening.contains(&k), &k),
            Changed::All => {
                let all: Vec<ItemKey> = conns
                    .lock()
                    .values()
                    .flat_map(|c| c.listening.iter().cloned())
                    .collect::<std::collections::HashSet<_>>()
                    .into_iter()
                    .collect();
                for k in all {
                    notify(&conns, |c| c.listening.contains(&k), &k);
                }
            }
        }
    }
}

fn notify(conns: &Conns, to: impl Fn(&super::Conn) -> bool, k: &ItemKey) {
    conns.push(to, "ConfigChangeNotifyRequest", |id| {
        json!({
            "headers": {},
            "requestId": id,
            "module": "config",
            "dataId": k.data_id,
            "group": k.group,
            "tenant": k.tenant(),
        })
    });
}
