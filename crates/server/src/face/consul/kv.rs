//! `/v1/kv/*`: Consul's KV over the store's user keyspace, the very keys etcd clients see (a
//! key put with etcdctl is read here, and the other way round). What Consul keeps beside a
//! key (flags, lock index, session) lives in the registry keyspace under `kv/<key>`, written
//! in the same multi-keyspace txn as the key, and ignored once the key was deleted and
//! re-created through the etcd API (see `KvMeta::applies_to`).
//!
//! A key's `ModifyIndex` is its etcd mod revision, `CreateIndex` its create revision; the
//! index of a read is the newest change under the key or prefix, deletions included, so a
//! delete wakes blocked readers too.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::Engine;
use berth_auth::Access;
use berth_proto::etcdserverpb::{RangeRequest, TxnRequest};
use berth_proto::mvccpb::KeyValue;
use berth_registry::{layout, KvMeta};
use berth_store::{Delivery, KeySpan, Keyspace, WatchSink, WatchSpec};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::{check_index, credential, json_reply, ApiError, Params, ReadOpts, MAX_VALUE, X_INDEX};
use crate::core::Core;
use crate::registry::{compare_mod, delete_op, put_op, tagged};

/// How often a write retries when a concurrent one changed the key's metadata under it.
pub(super) const META_RETRIES: usize = 8;

pub(super) fn routes() -> Router<Arc<Core>> {
    Router::new()
        .route("/v1/kv/", get(get_root).put(put_root).delete(delete_root))
        .route("/v1/kv/{*key}", get(get_kv).put(put_kv).delete(delete_kv))
}

/// The range end of every key starting with `prefix` (every key for an empty prefix).
pub(super) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    layout::prefix_end(prefix)
}

fn range(
    core: &Core,
    ks: Keyspace,
    key: &[u8],
    range_end: &[u8],
) -> Result<Vec<KeyValue>, ApiError> {
    range_at(core, ks, key, range_end, 0)
}

/// The keys of `[key, range_end)` in `ks` at revision `rev` (0: the newest).
pub(super) fn range_at(
    core: &Core,
    ks: Keyspace,
    key: &[u8],
    range_end: &[u8],
    rev: i64,
) -> Result<Vec<KeyValue>, ApiError> {
    core.store
        .range_in(
            ks,
            &RangeRequest {
                key: key.to_vec(),
                range_end: range_end.to_vec(),
                revision: rev,
                ..Default::default()
            },
        )
        .map(|r| r.kvs)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// The metadata of the user keys in `[key, range_end)`, by user key, with the revision
/// each was written at.
fn metas(
    core: &Core,
    key: &[u8],
    range_end: &[u8],
) -> Result<HashMap<Vec<u8>, (KvMeta, i64)>, ApiError> {
    metas_at(core, key, range_end, 0)
}

/// [`metas`] at revision `rev` (0: the newest).
pub(super) fn metas_at(
    core: &Core,
    key: &[u8],
    range_end: &[u8],
    rev: i64,
) -> Result<HashMap<Vec<u8>, (KvMeta, i64)>, ApiError> {
    let end = if range_end.is_empty() {
        Vec::new()
    } else if range_end == [0] {
        prefix_end(layout::KV)
    } else {
        layout::kv(range_end)
    };
    let mut out = HashMap::new();
    for kv in range_at(core, Keyspace::Registry, &layout::kv(key), &end, rev)? {
        let user_key = kv.key[layout::KV.len()..].to_vec();
        match serde_json::from_slice::<KvMeta>(&kv.value) {
            Ok(m) => {
                out.insert(user_key, (m, kv.mod_revision));
            }
            Err(e) => tracing::error!(error = %e, "consul kv: undecodable metadata, ignored"),
        }
    }
    Ok(out)
}

/// Waits until a key in the span changes after `index`, or the deadline.
async fn block_kv(core: &Core, span: KeySpan, opts: &ReadOpts) -> Result<(), ApiError> {
    check_index(core, opts.index).await?;
    let (tx, mut rx) = mpsc::channel::<Delivery>(4);
    let spec = WatchSpec {
        keyspace: Keyspace::User,
        span,
        start_rev: opts.index + 1,
        no_put: false,
        no_delete: false,
    };
    let handle = core.store.watch(spec, 0, WatchSink::new(tx));
    core.metrics.consul_blocked.inc();
    tokio::select! {
        _ = rx.recv() => {}
        _ = tokio::time::sleep_until(opts.deadline()) => {}
    }
    core.metrics.consul_blocked.dec();
    core.store.cancel_watch(&handle);
    Ok(())
}

fn with_index(mut resp: Response, index: i64) -> Response {
    resp.headers_mut()
        .insert(X_INDEX, HeaderValue::from(index.max(1)));
    resp
}

async fn get_root(
    core: State<Arc<Core>>,
    raw: RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    get_kv(core, Path(String::new()), raw, headers).await
}

async fn get_kv(
    State(core): State<Arc<Core>>,
    Path(key): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let q = Params::parse(raw)?;
    let opts = ReadOpts::parse(&q)?;
    let list_keys = q.has("keys");
    let recurse = q.has("recurse") || list_keys;
    let key = key.into_bytes();
    let range_end = if recurse {
        prefix_end(&key)
    } else {
        Vec::new()
    };
    core.auth.principal(&credential(&headers, &q))?.check(
        Keyspace::User,
        Access::Read,
        &key,
        &range_end,
    )?;
    if opts.index > 0 {
        block_kv(&core, KeySpan::new(&key, &range_end), &opts).await?;
    }
    if !opts.stale {
        core.consensus.read_index().await?;
    }
    let index = core
        .store
        .last_change_in(Keyspace::User, &KeySpan::new(&key, &range_end));
    let kvs = range(&core, Keyspace::User, &key, &range_end)?;
    if kvs.is_empty() {
        return Ok(with_index(StatusCode::NOT_FOUND.into_response(), index));
    }
    if list_keys {
        let sep = q.get("separator").unwrap_or_default().as_bytes();
        let mut out: Vec<String> = Vec::new();
        for kv in &kvs {
            let rest = &kv.key[key.len()..];
            let shown = match (sep.is_empty(), find(rest, sep)) {
                (false, Some(at)) => &kv.key[..key.len() + at + sep.len()],
                _ => &kv.key[..],
            };
            let s = String::from_utf8_lossy(shown).into_owned();
            if out.last() != Some(&s) {
                out.push(s);
            }
        }
        return Ok(json_reply(index, &json!(out)));
    }
    if q.has("raw") && !recurse {
        let value = kvs[0].value.clone();
        return Ok(with_index(value.into_response(), index));
    }
    let metas = metas(&core, &key, &range_end)?;
    let list: Vec<Value> = kvs
        .iter()
        .map(|kv| {
            let meta = metas
                .get(&kv.key)
                .filter(|(_, rev)| KvMeta::applies_to(*rev, kv.create_revision))
                .map(|(m, _)| m.clone())
                .unwrap_or_default();
            entry_json(
                &kv.key,
                Some(&kv.value),
                &meta,
                kv.create_revision,
                kv.mod_revision,
            )
        })
        .collect();
    Ok(json_reply(index, &json!(list)))
}

/// A key as Consul shows it; `value` `None` (or empty) shows as null.
pub(super) fn entry_json(
    key: &[u8],
    value: Option<&[u8]>,
    meta: &KvMeta,
    create: i64,
    modify: i64,
) -> Value {
    let mut entry = json!({
        "LockIndex": meta.lock_index,
        "Key": String::from_utf8_lossy(key),
        "Flags": meta.flags,
        "Value": match value {
            Some(v) if !v.is_empty() => json!(base64::engine::general_purpose::STANDARD.encode(v)),
            _ => Value::Null,
        },
        "CreateIndex": create,
        "ModifyIndex": modify,
    });
    if let Some(s) = &meta.session {
        entry["Session"] = json!(s);
    }
    entry
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The metadata a put leaves: `lock` is `Some(true)` to acquire with `session`,
/// `Some(false)` to release it, `None` for a plain put (which keeps the lock). `None` when
/// the lock refuses (held by another session, or in its lock delay, or not held by the
/// releasing session).
pub(super) fn next_meta(
    core: &Core,
    old: KvMeta,
    flags: u64,
    lock: Option<bool>,
    session: Option<&berth_registry::Session>,
) -> Option<KvMeta> {
    // A holder whose session ended and whose lock is not cleaned up yet still holds it
    // until the clean-up starts its lock delay.
    let holder = old.session.clone();
    let holder_gone = holder
        .as_ref()
        .is_some_and(|h| core.registry.read(|c| c.session(h)).is_none());
    match (lock, session) {
        (Some(true), Some(s)) => {
            if holder.as_deref() == Some(s.id.as_str()) {
                return Some(KvMeta { flags, ..old });
            }
            if holder.is_some() && !(holder_gone && old.lock_delay_ms == 0) {
                return None;
            }
            if old.delay_until_ms > crate::registry::now_ms() {
                return None;
            }
            Some(KvMeta {
                flags,
                lock_index: old.lock_index + 1,
                session: Some(s.id.clone()),
                delay_until_ms: 0,
                behavior: s.behavior,
                lock_delay_ms: u64::try_from(s.lock_delay.as_millis()).unwrap_or(u64::MAX),
            })
        }
        (Some(false), Some(s)) => {
            if holder.as_deref() != Some(s.id.as_str()) {
                return None;
            }
            Some(KvMeta {
                flags,
                lock_index: old.lock_index,
                ..KvMeta::default()
            })
        }
        _ => Some(KvMeta { flags, ..old }),
    }
}

async fn put_root(State(_core): State<Arc<Core>>) -> Result<Response, ApiError> {
    Err(ApiError::bad("Missing key name"))
}

async fn put_kv(
    State(core): State<Arc<Core>>,
    Path(key): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let q = Params::parse(raw)?;
    if key.is_empty() {
        return Err(ApiError::bad("Missing key name"));
    }
    let lock = match (q.get("acquire"), q.get("release")) {
        (Some(_), Some(_)) => return Err(ApiError::bad("Conflicting flags: acquire with release")),
        (Some(s), None) => Some((true, s.to_string())),
        (None, Some(s)) => Some((false, s.to_string())),
        (None, None) => None,
    };
    let session = match &lock {
        None => None,
        Some((_, id)) => {
            let mut found = core.registry.read(|c| c.session(id));
            if found.is_none() {
                // Created on another member a moment ago?
                core.registry.sync(&core).await?;
                found = core.registry.read(|c| c.session(id));
            }
            match found {
                Some(s) => Some(s.value),
                None => {
                    return Err(ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("invalid session {id:?}"),
                    ))
                }
            }
        }
    };
    if body.len() > MAX_VALUE {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "Request body({} bytes) too large, max size: {MAX_VALUE} bytes",
                body.len()
            ),
        ));
    }
    let flags = q.u64("flags")?.unwrap_or(0);
    let cas = q.u64("cas")?.map(|c| i64::try_from(c).unwrap_or(i64::MAX));
    let key = key.into_bytes();
    let principal = core.auth.principal(&credential(&headers, &q))?;
    principal.check(Keyspace::User, Access::Write, &key, &[])?;
    for _ in 0..META_RETRIES {
        let current = range(&core, Keyspace::User, &key, &[])?.pop();
        if let Some(c) = cas {
            let now = current.as_ref().map_or(0, |kv| kv.mod_revision);
            if now != c {
                return Ok(super::bool_reply(false));
            }
        }
        let meta_key = layout::kv(&key);
        let (old, meta_rev) = metas(&core, &key, &[])?
            .remove(&key)
            .map_or((KvMeta::default(), 0), |(m, r)| (m, r));
        let live = current
            .as_ref()
            .is_some_and(|kv| KvMeta::applies_to(meta_rev, kv.create_revision));
        let old = if live { old } else { KvMeta::default() };
        let Some(meta) = next_meta(
            &core,
            old,
            flags,
            lock.as_ref().map(|(a, _)| *a),
            session.as_ref(),
        ) else {
            return Ok(super::bool_reply(false));
        };
        let key_rev = current.as_ref().map_or(0, |kv| kv.mod_revision);
        let txn = TxnRequest {
            compare: vec![
                compare_mod(Keyspace::User, &key, key_rev),
                compare_mod(Keyspace::Registry, &meta_key, meta_rev),
            ],
            success: vec![
                put_op(tagged(Keyspace::User, &key), body.to_vec(), 0),
                put_op(
                    tagged(Keyspace::Registry, &meta_key),
                    serde_json::to_vec(&meta).unwrap_or_default(),
                    0,
                ),
            ],
            failure: vec![],
        };
        let entry_guard = principal.guard();
        let resp = core
            .registry
            .write_multi_guarded(&core, txn, entry_guard)
            .await?;
        if resp.succeeded {
            return Ok(super::bool_reply(true));
        }
        // Someone wrote the key or its metadata between our read and the txn: a plain put
        // retries on the new state; a cas put is decided again at the top.
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "the key kept changing under concurrent writes; try again",
    ))
}

async fn delete_root(
    core: State<Arc<Core>>,
    raw: RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    delete_kv(core, Path(String::new()), raw, headers).await
}

async fn delete_kv(
    State(core): State<Arc<Core>>,
    Path(key): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let q = Params::parse(raw)?;
    let recurse = q.has("recurse");
    if key.is_empty() && !recurse {
        return Err(ApiError::bad("Missing key name"));
    }
    let cas = q.u64("cas")?.map(|c| i64::try_from(c).unwrap_or(i64::MAX));
    if cas.is_some() && recurse {
        return Err(ApiError::bad("Conflicting flags: cas=N with recurse"));
    }
    let key = key.into_bytes();
    let range_end = if recurse {
        prefix_end(&key)
    } else {
        Vec::new()
    };
    let principal = core.auth.principal(&credential(&headers, &q))?;
    principal.check(Keyspace::User, Access::Write, &key, &range_end)?;
    let meta_end = if recurse {
        if range_end == [0] {
            prefix_end(layout::KV)
        } else {
            layout::kv(&range_end)
        }
    } else {
        Vec::new()
    };
    let txn = TxnRequest {
        compare: cas
            .map(|c| compare_mod(Keyspace::User, &key, c))
            .into_iter()
            .collect(),
        success: vec![
            delete_op(
                tagged(Keyspace::User, &key),
                if range_end.is_empty() {
                    Vec::new()
                } else {
                    tagged(Keyspace::User, &range_end)
                },
            ),
            delete_op(
                tagged(Keyspace::Registry, &layout::kv(&key)),
                if meta_end.is_empty() {
                    Vec::new()
                } else {
                    tagged(Keyspace::Registry, &meta_end)
                },
            ),
        ],
        failure: vec![],
    };
    let resp = core
        .registry
        .write_multi_guarded(&core, txn, principal.guard())
        .await?;
    Ok(super::bool_reply(resp.succeeded))
}
