//! `/api/v1/config`: the configuration center in berth's own JSON, for the CLI and the
//! console. Items are addressed `/items/{namespace}/{group}/{dataId}` (`public` is the
//! default namespace).
//!
//! | route | what |
//! |---|---|
//! | `GET /namespaces`, `POST /namespaces`, `DELETE /namespaces/{ns}` | namespaces |
//! | `GET /items?namespace&group&search&page&size&content` | a page of items (`search`: `*` wildcards on the data ID) |
//! | `GET/PUT/DELETE /items/{ns}/{group}/{id}` | read, publish (`casMd5`: compare-and-publish), delete |
//! | `GET /items/.../versions?page&size`, `GET /items/.../versions/{v}` | kept versions |
//! | `GET /items/.../diff?from&to` | unified diff of two versions (`to` absent: the current one) |
//! | `POST /items/.../rollback` `{"version"}` | publish a kept version again |
//! | `GET/PUT/DELETE /items/.../beta`, `POST /items/.../beta/promote` | gray release |
//! | `GET /items/.../watch?md5&wait` | long poll: the item once its MD5 differs from `md5` |
//! | `GET /export?namespace`, `POST /import?namespace&policy`, `POST /clone` | archives |

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use berth_auth::Access;
use berth_config::{layout, rules, Author, Item, ItemKey, Namespace, Reader, Version};
use berth_store::Keyspace;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::{parse, principal, ApiError};
use crate::auth::Principal;
use crate::config_center::{Conflicts, Publish, Writer};
use crate::core::Core;
use crate::listen::ClientAddr;

/// Longest `wait` of a watch.
const MAX_WAIT: Duration = Duration::from_secs(300);
/// Largest page.
const MAX_PAGE: usize = 1000;

pub fn routes() -> Router<Arc<Core>> {
    let item = "/items/{ns}/{group}/{id}";
    Router::new()
        .route("/namespaces", get(namespaces).post(create_namespace))
        .route("/namespaces/{ns}", axum::routing::delete(delete_namespace))
        .route("/items", get(list))
        .route(item, get(read).put(publish).delete(remove))
        .route(&format!("{item}/versions"), get(versions))
        .route(&format!("{item}/versions/{{v}}"), get(version))
        .route(&format!("{item}/diff"), get(diff))
        .route(&format!("{item}/rollback"), post(rollback))
        .route(
            &format!("{item}/beta"),
            get(beta).put(publish_beta).delete(withdraw_beta),
        )
        .route(&format!("{item}/beta/promote"), post(promote_beta))
        .route(&format!("{item}/watch"), get(watch))
        .route("/export", get(export))
        .route("/import", post(import))
        .route("/clone", post(clone))
}

fn key((ns, group, id): &(String, String, String)) -> Result<ItemKey, ApiError> {
    let k = ItemKey::new(ns, group, id);
    rules::key(&k).map_err(|e| ApiError::bad(e.to_string()))?;
    Ok(k)
}

fn allowed(
    core: &Core,
    headers: &HeaderMap,
    k: &ItemKey,
    a: Access,
) -> Result<Principal, ApiError> {
    let p = principal(core, headers)?;
    p.check(Keyspace::Config, a, &layout::item(k), b"")?;
    Ok(p)
}

/// Who writes: the user from the client's address, under `p`'s auth guard.
fn author(p: &Principal, headers: &HeaderMap, conn: &ConnectInfo<ClientAddr>) -> Writer {
    Writer {
        author: Author {
            user: p.user().unwrap_or_default().to_string(),
            ip: crate::listen::client_ip(headers, conn.0),
        },
        guard: Some(p.guard()),
    }
}

fn item_json(k: &ItemKey, i: &Item, with_content: bool) -> Value {
    let mut v = json!({
        "namespace": k.namespace,
        "group": k.group,
        "dataId": k.data_id,
        "md5": i.md5,
        "type": i.kind.as_str(),
        "desc": i.desc,
        "tags": i.tags,
        "appName": i.app,
        "version": i.version,
        "created": i.created_ms,
        "modified": i.modified_ms,
        "author": i.author.user,
        "authorIp": i.author.ip,
    });
    if with_content {
        v["content"] = json!(i.content);
    }
    v
}

fn version_json(v: &Version) -> Value {
    json!({
        "version": v.version,
        "op": v.op.letter(),
        "content": v.item.content,
        "md5": v.item.md5,
        "type": v.item.kind.as_str(),
        "desc": v.item.desc,
        "tags": v.item.tags,
        "appName": v.item.app,
        "at": v.at_ms,
        "author": v.author.user,
        "authorIp": v.author.ip,
    })
}

async fn namespaces(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    principal(&core, &headers)?.authenticated()?;
    let cc = &core.config_center;
    let list: Vec<Value> = cc
        .namespaces()
        .iter()
        .map(|n| json!({"id": n.id, "name": n.name, "desc": n.desc, "created": n.created_ms, "items": cc.count(&n.id)}))
        .collect();
    Ok(Json(json!({ "namespaces": list })).into_response())
}

#[derive(Deserialize)]
struct NewNamespace {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    desc: String,
}

async fn create_namespace(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let p = principal(&core, &headers)?;
    p.admin()?;
    let n: NewNamespace = parse(&body)?;
    let ns = Namespace {
        name: if n.name.is_empty() {
            n.id.clone()
        } else {
            n.name
        },
        id: n.id,
        desc: n.desc,
        created_ms: i64::try_from(crate::registry::now_ms()).unwrap_or(i64::MAX),
    };
    core.config_center
        .create_namespace(&core, ns.clone(), Some(p.guard()))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": ns.id, "name": ns.name, "desc": ns.desc})),
    )
        .into_response())
}

async fn delete_namespace(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
    Path(ns): Path<String>,
) -> Result<Response, ApiError> {
    let p = principal(&core, &headers)?;
    p.admin()?;
    let deleted = core
        .config_center
        .delete_namespace(&core, &ns, Some(p.guard()))
        .await?;
    Ok(Json(json!({ "deleted": deleted })).into_response())
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    group: String,
    #[serde(default)]
    search: String,
    page: Option<usize>,
    size: Option<usize>,
    #[serde(default)]
    content: bool,
}

async fn list(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let namespace = ItemKey::new(&q.namespace, "g", "d").namespace;
    rules::namespace(&namespace).map_err(|e| ApiError::bad(e.to_string()))?;
    let p = principal(&core, &headers)?;
    let items = core.config_center.list(&namespace, |k, _| {
        (q.group.is_empty() || k.group == q.group)
            && (q.search.is_empty() || rules::wildcard(&q.search, &k.data_id))
            && p.check(Keyspace::Config, Access::Read, &layout::item(k), b"")
                .is_ok()
    });
    let size = q.size.unwrap_or(100).clamp(1, MAX_PAGE);
    let page = q.page.unwrap_or(1).max(1);
    let total = items.len();
    let shown: Vec<Value> = items
        .iter()
        .skip((page - 1).saturating_mul(size))
        .take(size)
        .map(|(k, i)| item_json(k, i, q.content))
        .collect();
    Ok(Json(json!({"total": total, "page": page, "size": size, "items": shown})).into_response())
}

async fn read(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
    Path(path): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let k = key(&path)?;
    allowed(&core, &headers, &k, Access::Read)?;
    let cc = &core.config_center;
    let item = cc.get(&k).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{k} does not exist"),
        )
    })?;
    let mut v = item_json(&k, &item, true);
    if let Some(b) = cc.beta(&k) {
        v["beta"] = json!({"md5": b.md5, "ips": b.ips, "at": b.at_ms});
    }
    Ok(Json(v).into_response())
}

#[derive(Deserialize)]
struct PublishBody {
    content: String,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    desc: String,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(rename = "appName", default)]
    app: String,
    #[serde(rename = "casMd5", default)]
    cas_md5: Option<String>,
}

async fn publish(
    State(core): State<Arc<Core>>,
    conn: ConnectInfo<ClientAddr>,
    headers: HeaderMap,
    Path(path): Path<(String, String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let k = key(&path)?;
    let p = allowed(&core, &headers, &k, Access::Write)?;
    let b: PublishBody = parse(&body)?;
    let publish = Publish {
        kind: rules::content_type(b.kind.as_deref())?,
        content: b.content,
        desc: b.desc,
        tags: b.tags,
        app: b.app,
        cas_md5: b.cas_md5,
    };
    let item = core
        .config_center
        .publish(&core, &k, publish, author(&p, &headers, &conn))
        .await?;
    Ok(Json(item_json(&k, &item, false)).into_response())
}

async fn remove(
    State(core): State<Arc<Core>>,
    conn: ConnectInfo<ClientAddr>,
    headers: HeaderMap,
    Path(path): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let k = key(&path)?;
    let p = allowed(&core, &headers, &k, Access::Write)?;
    let deleted = core
        .config_center
        .delete(&core, &k, author(&p, &headers, &conn))
        .await?;
    Ok(Json(json!({ "deleted": deleted })).into_response())
}

#[derive(Deserialize)]
struct Page {
    page: Option<usize>,
    size: Option<usize>,
}

async fn versions(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
    Path(path): Path<(String, String, String)>,
    Query(q): Query<Page>,
) -> Result<Response, ApiError> {
    let k = key(&path)?;
    allowed(&core, &headers, &k, Access::Read)?;
    let size = q.size.unwrap_or(100).clamp(1, MAX_PAGE);
    let page = q.page.unwrap_or(1).max(1);
    let (list, total) = core
        .config_center
        .versions(&k, (page - 1).saturating_mul(size), size)?;
    let list: Vec<Value> = list.iter().map(version_json).collect();
    Ok(Json(json!({"total": total, "page": page, "size": size, "versions": list})).into_response())
}

fn kept(core: &Core, k: &ItemKey, v: u64) -> Result<Version, ApiError> {
    core.config_center.version(k, v)?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{k} has no kept version {v}"),
        )
    })
}

async fn version(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
    Path((ns, group, id, v)): Path<(String, String, String, u64)>,
) -> Result<Response, ApiError> {
    let k = key(&(ns, group, id))?;
    allowed(&core, &headers, &k, Access::Read)?;
    Ok(Json(version_json(&kept(&core, &k, v)?)).into_response())
}

#[derive(Deserialize)]
struct DiffQuery {
    from: u64,
    to: Option<u64>,
}

async fn diff(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
    Path(path): Path<(String, String, String)>,
    Query(q): Query<DiffQuery>,
) -> Result<Response, ApiError> {
    let k = key(&path)?;
    allowed(&core, &headers, &k, Access::Read)?;
    let from = kept(&core, &k, q.from)?;
    let (to_name, to_content, to_version) = match q.to {
        Some(v) => {
            let to = kept(&core, &k, v)?;
            (format!("version {v}"), to.item.content, v)
        }
        None => {
            let item = core.config_center.get(&k).ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("{k} does not exist"),
                )
            })?;
            (
                format!("version {} (current)", item.version),
                item.content.clone(),
                item.version,
            )
        }
    };
    let text = berth_config::diff::unified(
        &format!("version {}", q.from),
        &from.item.content,
        &to_name,
        &to_content,
    );
    Ok(Json(json!({"from": q.from, "to": to_version, "diff": text})).into_response())
}

#[derive(Deserialize)]
struct RollbackBody {
    version: u64,
}

async fn rollback(
    State(core): State<Arc<Core>>,
    conn: ConnectInfo<ClientAddr>,
    headers: HeaderMap,
    Path(path): Path<(String, String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let k = key(&path)?;
    let p = allowed(&core, &headers, &k, Access::Write)?;
    let b: RollbackBody = parse(&body)?;
    let item = core
        .config_center
        .rollback(&core, &k, b.version, author(&p, &headers, &conn))
        .await?;
    Ok(Json(item_json(&k, &item, false)).into_response())
}

async fn beta(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
    Path(path): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let k = key(&path)?;
    allowed(&core, &headers, &k, Access::Read)?;
    let b = core.config_center.beta(&k).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{k} has no beta"),
        )
    })?;
    Ok(Json(json!({
        "content": b.content, "md5": b.md5, "type": b.kind.as_str(), "ips": b.ips,
        "labels": b.labels, "at": b.at_ms, "author": b.author.user, "authorIp": b.author.ip,
    }))
    .into_response())
}

#[derive(Deserialize)]
struct BetaBody {
    content: String,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    ips: Vec<String>,
    /// Labels that see the beta: `{"key": ["value", ...]}`.
    #[serde(default)]
    labels: std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
}

async fn publish_beta(
    State(core): State<Arc<Core>>,
    conn: ConnectInfo<ClientAddr>,
    headers: HeaderMap,
    Path(path): Path<(String, String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let k = key(&path)?;
    let p = allowed(&core, &headers, &k, Access::Write)?;
    let b: BetaBody = parse(&body)?;
    let kind = rules::content_type(b.kind.as_deref())?;
    let beta = core
        .config_center
        .publish_beta(
            &core,
            &k,
            b.content,
            kind,
            b.ips,
            b.labels,
            author(&p, &headers, &conn),
        )
        .await?;
    Ok(Json(json!({"md5": beta.md5, "ips": beta.ips, "labels": beta.labels})).into_response())
}

async fn withdraw_beta(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
    Path(path): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let k = key(&path)?;
    let p = allowed(&core, &headers, &k, Access::Write)?;
    let withdrawn = core
        .config_center
        .withdraw_beta(&core, &k, Some(p.guard()))
        .await?;
    Ok(Json(json!({ "withdrawn": withdrawn })).into_response())
}

async fn promote_beta(
    State(core): State<Arc<Core>>,
    conn: ConnectInfo<ClientAddr>,
    headers: HeaderMap,
    Path(path): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let k = key(&path)?;
    let p = allowed(&core, &headers, &k, Access::Write)?;
    let item = core
        .config_center
        .promote_beta(&core, &k, author(&p, &headers, &conn))
        .await?;
    Ok(Json(item_json(&k, &item, false)).into_response())
}

#[derive(Deserialize)]
struct WatchQuery {
    #[serde(default)]
    md5: String,
    wait: Option<String>,
}

/// Long poll: answers with the item (or `{"deleted": true}`) as soon as its MD5 differs
/// from `md5`; 304 when `wait` (default 30s, at most 5m) passes first.
async fn watch(
    State(core): State<Arc<Core>>,
    conn: ConnectInfo<ClientAddr>,
    headers: HeaderMap,
    Path(path): Path<(String, String, String)>,
    Query(q): Query<WatchQuery>,
) -> Result<Response, ApiError> {
    let k = key(&path)?;
    allowed(&core, &headers, &k, Access::Read)?;
    let wait = match q.wait.as_deref() {
        None | Some("") => Duration::from_secs(30),
        Some(w) => humantime::parse_duration(w)
            .map_err(|e| ApiError::bad(format!("wait {w:?}: {e}")))?
            .min(MAX_WAIT),
    };
    let ip = crate::listen::client_ip(&headers, conn.0);
    let probes = [(k.clone(), q.md5)];
    let changed = core
        .config_center
        .listen(&probes, &Reader::at(ip.clone()), Instant::now() + wait)
        .await;
    if changed.is_empty() {
        return Ok(StatusCode::NOT_MODIFIED.into_response());
    }
    match core.config_center.get_for(&k, &Reader::at(ip)) {
        Some((item, beta)) => {
            let mut v = item_json(&k, &item, true);
            v["beta"] = json!(beta);
            Ok(Json(v).into_response())
        }
        None => Ok(Json(json!({"deleted": true, "namespace": k.namespace, "group": k.group, "dataId": k.data_id})).into_response()),
    }
}

#[derive(Deserialize)]
struct NamespaceQuery {
    #[serde(default)]
    namespace: String,
}

/// `GET /export?namespace`: the namespace's items as a `.tar.gz`.
async fn export(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
    Query(q): Query<NamespaceQuery>,
) -> Result<Response, ApiError> {
    let ns = ItemKey::new(&q.namespace, "g", "d").namespace;
    core.config_center.require_namespace(&core, &ns).await?;
    let p = principal(&core, &headers)?;
    let entries: Vec<_> = core
        .config_center
        .export(&ns)
        .into_iter()
        .filter(|e| {
            let k = ItemKey::new(&ns, &e.group, &e.data_id);
            p.check(Keyspace::Config, Access::Read, &layout::item(&k), b"")
                .is_ok()
        })
        .collect();
    let data = berth_config::archive::pack(&ns, &entries)?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/gzip".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{ns}.tar.gz\""),
            ),
        ],
        data,
    )
        .into_response())
}

#[derive(Deserialize)]
struct ImportQuery {
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    policy: Option<String>,
}

fn policy(p: Option<&str>) -> Result<Conflicts, ApiError> {
    match p {
        None | Some("") => Ok(Conflicts::Abort),
        Some(s) => Conflicts::parse(s)
            .ok_or_else(|| ApiError::bad(format!("policy {s:?} is not abort, skip or overwrite"))),
    }
}

/// Checks write access to every entry before anything is written.
fn may_write_all(
    p: &Principal,
    ns: &str,
    entries: &[berth_config::archive::Entry],
) -> Result<(), ApiError> {
    for e in entries {
        let k = ItemKey::new(ns, &e.group, &e.data_id);
        p.check(Keyspace::Config, Access::Write, &layout::item(&k), b"")?;
    }
    Ok(())
}

/// `POST /import?namespace&policy=abort|skip|overwrite`, the body a `.tar.gz` as
/// `/export` makes it.
async fn import(
    State(core): State<Arc<Core>>,
    conn: ConnectInfo<ClientAddr>,
    headers: HeaderMap,
    Query(q): Query<ImportQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ns = ItemKey::new(&q.namespace, "g", "d").namespace;
    let policy = policy(q.policy.as_deref())?;
    let p = principal(&core, &headers)?;
    // An anonymous caller gets nothing unpacked (under auth); per-item grants are checked next.
    p.authenticated()?;
    core.config_center.require_namespace(&core, &ns).await?;
    let entries = berth_config::archive::unpack(&body, core.config_center.limits().max_content)?;
    may_write_all(&p, &ns, &entries)?;
    let report = core
        .config_center
        .import(&core, &ns, entries, policy, author(&p, &headers, &conn))
        .await?;
    Ok(Json(json!(report)).into_response())
}

#[derive(Deserialize)]
struct CloneBody {
    from: String,
    to: String,
    #[serde(default)]
    policy: Option<String>,
}

/// `POST /clone {"from","to","policy"}`: every item of one namespace published into another.
async fn clone(
    State(core): State<Arc<Core>>,
    conn: ConnectInfo<ClientAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let b: CloneBody = parse(&body)?;
    let from = ItemKey::new(&b.from, "g", "d").namespace;
    let to = ItemKey::new(&b.to, "g", "d").namespace;
    if from == to {
        return Err(ApiError::bad("from and to are the same namespace"));
    }
    let policy = policy(b.policy.as_deref())?;
    let p = principal(&core, &headers)?;
    core.config_center.require_namespace(&core, &from).await?;
    let entries = core.config_center.export(&from);
    for e in &entries {
        let k = ItemKey::new(&from, &e.group, &e.data_id);
        p.check(Keyspace::Config, Access::Read, &layout::item(&k), b"")?;
    }
    may_write_all(&p, &to, &entries)?;
    let report = core
        .config_center
        .import(&core, &to, entries, policy, author(&p, &headers, &conn))
        .await?;
    Ok(Json(json!(report)).into_response())
}
