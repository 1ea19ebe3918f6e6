//! `/nacos/v1/cs/*`: configuration items (get, search, publish with `casMd5`, delete, beta
//! releases), the long-poll listener and the kept versions (history), as Nacos 1.x and 2.x
//! servers answer them.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use berth_auth::Access;
use berth_config::model::DEFAULT_GROUP;
use berth_config::{layout, rules, Author, ContentType, Item, ItemKey, Reader, Version};
use berth_store::Keyspace;
use serde_json::json;
use tokio::time::Instant;

use super::{principal, NacosError, Params};
use crate::auth::Principal;
use crate::config_center::{Publish, Writer};
use crate::core::Core;
use crate::listen::{client_ip, ClientAddr};

/// Most items one listener request may name.
const MAX_PROBES: usize = 10_000;
/// Shortest and longest hold of a long poll (Nacos holds at least 10 s).
const MIN_HOLD: Duration = Duration::from_secs(10);
const MAX_HOLD: Duration = Duration::from_secs(300);
/// What Nacos takes off the client's timeout so the answer arrives before it gives up.
const HOLD_MARGIN: Duration = Duration::from_millis(500);
/// Largest page of a search or of history.
const MAX_PAGE: usize = 500;

pub fn routes() -> Router<Arc<Core>> {
    Router::new()
        .route(
            "/v1/cs/configs",
            get(get_config).post(publish).put(publish).delete(remove),
        )
        .route("/v1/cs/configs/listener", post(listen))
        .route("/v1/cs/history", get(history))
        .route("/v1/cs/history/previous", get(previous))
}

/// The item a request names: `dataId` and `group` (both required), `tenant` (empty: public).
fn item_key(q: &Params) -> Result<ItemKey, NacosError> {
    let k = ItemKey::new(
        q.str("tenant").trim(),
        q.required("group")?.trim(),
        q.required("dataId")?.trim(),
    );
    rules::key(&k).map_err(|e| NacosError::bad(e.to_string()))?;
    Ok(k)
}

/// Checks the caller's `access` to item `k`.
fn allowed(
    core: &Core,
    headers: &HeaderMap,
    q: &Params,
    k: &ItemKey,
    access: Access,
) -> Result<Principal, NacosError> {
    let p = principal(core, headers, q)?;
    p.check(Keyspace::Config, access, &layout::item(k), b"")?;
    Ok(p)
}

/// Who writes: the user (else the client's `src_user`) from `ip`, under `p`'s auth guard.
fn writer(p: &Principal, q: &Params, ip: String) -> Writer {
    Writer {
        author: Author {
            user: p
                .user()
                .map(str::to_string)
                .unwrap_or_else(|| q.str("src_user").to_string()),
            ip,
        },
        guard: Some(p.guard()),
    }
}

fn content_type(kind: ContentType) -> &'static str {
    match kind {
        ContentType::Json => "application/json;charset=UTF-8",
        ContentType::Xml => "application/xml;charset=UTF-8",
        ContentType::Html => "text/html;charset=UTF-8",
        _ => "text/plain;charset=UTF-8",
    }
}

/// An HTTP date (`Last-Modified`).
fn http_date(ms: i64) -> String {
    httpdate::fmt_http_date(
        std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0)),
    )
}

fn text(status: StatusCode, body: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain;charset=UTF-8")],
        body,
    )
        .into_response()
}

async fn get_config(
    State(core): State<Arc<Core>>,
    conn: ConnectInfo<ClientAddr>,
    headers: HeaderMap,
    q: Params,
) -> Result<Response, NacosError> {
    if let Some(mode) = q.get("search") {
        return search(&core, &headers, &q, mode);
    }
    let k = item_key(&q)?;
    allowed(&core, &headers, &q, &k, Access::Read)?;
    if !q.str("tag").is_empty() {
        return Err(NacosError::bad(
            "tag-isolated configs are not served by berth: use a beta release (betaIps) or a namespace",
        ));
    }
    let cc = &core.config_center;
    if q.flag("beta") {
        let Some(b) = cc.beta(&k) else {
            return Ok(
                Json(json!({"code": 200, "message": "query beta ok", "data": null}))
                    .into_response(),
            );
        };
        return Ok(Json(json!({
            "code": 200,
            "message": "query beta ok",
            "data": {
                "dataId": k.data_id, "group": k.group, "tenant": k.tenant(),
                "content": b.content, "md5": b.md5, "type": b.kind.as_str(),
                "betaIps": b.ips.join(","),
                "betaLabels": b.labels_text(),
                "lastModified": b.at_ms,
            }
        }))
        .into_response());
    }
    let ip = client_ip(&headers, conn.0);
    let Some((item, beta)) = cc.get_for(&k, &Reader::at(ip)) else {
        return Ok(text(StatusCode::NOT_FOUND, "config data not exist"));
    };
    if q.get("show") == Some("all") {
        return Ok(Json(detail(&k, &item)).into_response());
    }
    let mut resp = (
        [(header::CONTENT_TYPE, content_type(item.kind))],
        item.content.clone(),
    )
        .into_response();
    let h = resp.headers_mut();
    for (name, value) in [
        ("content-md5", item.md5.clone()),
        ("config-type", item.kind.as_str().to_string()),
        ("last-modified", http_date(item.modified_ms)),
        ("isbeta", beta.to_string()),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(HeaderName::from_static(name), v);
        }
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(resp)
}

/// An item as the Nacos console shows it (`show=all`) and a search lists it.
fn detail(k: &ItemKey, i: &Item) -> serde_json::Value {
    json!({
        "dataId": k.data_id,
        "group": k.group,
        "tenant": k.tenant(),
        "content": i.content,
        "md5": i.md5,
        "type": i.kind.as_str(),
        "appName": i.app,
        "desc": i.desc,
        "configTags": i.tags.join(","),
        "createTime": i.created_ms,
        "modifyTime": i.modified_ms,
        "createUser": i.author.user,
        "createIp": i.author.ip,
        "version": i.version,
        "encryptedDataKey": "",
    })
}

/// `GET /v1/cs/configs?search=accurate|blur`: a page of the namespace's items.
fn search(
    core: &Core,
    headers: &HeaderMap,
    q: &Params,
    mode: &str,
) -> Result<Response, NacosError> {
    let blur = match mode {
        "accurate" => false,
        "blur" => true,
        other => {
            return Err(NacosError::bad(format!(
                "search must be accurate or blur, not {other:?}"
            )))
        }
    };
    let namespace = ItemKey::new(q.str("tenant").trim(), "g", "d").namespace;
    rules::namespace(&namespace).map_err(|e| NacosError::bad(e.to_string()))?;
    let p = principal(core, headers, q)?;
    let (data_id, group, app) = (q.str("dataId"), q.str("group"), q.str("appName"));
    let tags = rules::split_tags(q.str("config_tags"));
    let matches = |pattern: &str, value: &str| {
        pattern.is_empty()
            || if blur {
                rules::wildcard(pattern, value)
            } else {
                pattern == value
            }
    };
    let items = core.config_center.list(&namespace, |k, i| {
        matches(data_id, &k.data_id)
            && matches(group, &k.group)
            && (app.is_empty() || i.app == app)
            && tags.iter().all(|t| i.tags.contains(t))
            && p.check(Keyspace::Config, Access::Read, &layout::item(k), b"")
                .is_ok()
    });
    let page_no = q.number("pageNo", 1)?.max(1);
    let page_size = q.number("pageSize", 100)?.clamp(1, MAX_PAGE);
    let total = items.len();
    let page: Vec<serde_json::Value> = items
        .iter()
        .skip((page_no - 1).saturating_mul(page_size))
        .take(page_size)
        .map(|(k, i)| detail(k, i))
        .collect();
    Ok(Json(json!({
        "totalCount": total,
        "pageNumber": page_no,
        "pagesAvailable": total.div_ceil(page_size),
        "pageItems": page,
    }))
    .into_response())
}

async fn publish(
    State(core): State<Arc<Core>>,
    conn: ConnectInfo<ClientAddr>,
    headers: HeaderMap,
    q: Params,
) -> Result<Response, NacosError> {
    let k = item_key(&q)?;
    let p = allowed(&core, &headers, &q, &k, Access::Write)?;
    let content = q.get("content").unwrap_or_default().to_string();
    let kind = rules::content_type(q.get("type"))?;
    let who = writer(&p, &q, client_ip(&headers, conn.0));
    // A beta: `betaIps` (Nacos's) and berth's `betaLabels` (`key=value,...`), as headers
    // or parameters.
    let given = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .or_else(|| q.get(name))
            .map(str::trim)
            .unwrap_or_default()
    };
    let (beta_ips, beta_labels) = (given("betaIps"), given("betaLabels"));
    if !beta_ips.is_empty() || !beta_labels.is_empty() {
        let labels = rules::beta_labels(beta_labels)?;
        core.config_center
            .publish_beta(
                &core,
                &k,
                content,
                kind,
                rules::split_tags(beta_ips),
                labels,
                who,
            )
            .await?;
        return Ok(
            Json(json!({"code": 200, "message": "publish beta ok", "data": true})).into_response(),
        );
    }
    let cas_md5 = headers
        .get("casmd5")
        .and_then(|v| v.to_str().ok())
        .or_else(|| q.get("casMd5"))
        .map(str::to_string);
    let publish = Publish {
        content,
        kind,
        desc: q.str("desc").to_string(),
        tags: rules::split_tags(q.str("config_tags")),
        app: q.str("appName").to_string(),
        cas_md5,
    };
    core.config_center.publish(&core, &k, publish, who).await?;
    Ok(text(StatusCode::OK, "true"))
}

async fn remove(
    State(core): State<Arc<Core>>,
    conn: ConnectInfo<ClientAddr>,
    headers: HeaderMap,
    q: Params,
) -> Result<Response, NacosError> {
    let k = item_key(&q)?;
    let p = allowed(&core, &headers, &q, &k, Access::Write)?;
    if q.flag("beta") {
        core.config_center
            .withdraw_beta(&core, &k, Some(p.guard()))
            .await?;
        return Ok(
            Json(json!({"code": 200, "message": "stop beta ok", "data": true})).into_response(),
        );
    }
    let who = writer(&p, &q, client_ip(&headers, conn.0));
    core.config_center.delete(&core, &k, who).await?;
    Ok(text(StatusCode::OK, "true"))
}

/// Parses a listener probe: `dataId ^2 group ^2 md5 [^2 tenant] ^1`, repeated.
fn probes(raw: &str, tenant: &str) -> Result<Vec<(ItemKey, String)>, NacosError> {
    let mut out = Vec::new();
    for record in raw.split('\u{1}').filter(|r| !r.is_empty()) {
        let f: Vec<&str> = record.split('\u{2}').collect();
        if !(3..=4).contains(&f.len()) {
            return Err(NacosError::bad(format!(
                "invalid Listening-Configs record {record:?}: want dataId, group, md5 [, tenant]"
            )));
        }
        let ns = f
            .get(3)
            .copied()
            .filter(|t| !t.is_empty())
            .unwrap_or(tenant);
        let k = ItemKey::new(ns, f[1], f[0]);
        rules::key(&k).map_err(|e| NacosError::bad(e.to_string()))?;
        out.push((k, f[2].to_string()));
        if out.len() > MAX_PROBES {
            return Err(NacosError::bad(format!(
                "Listening-Configs names more than {MAX_PROBES} items"
            )));
        }
    }
    Ok(out)
}

/// The listener's answer: the changed items, `dataId ^2 group [^2 tenant] ^1` each, URL-encoded.
fn changed_body(keys: &[ItemKey]) -> String {
    let mut raw = String::new();
    for k in keys {
        raw.push_str(&k.data_id);
        raw.push('\u{2}');
        raw.push_str(&k.group);
        if !k.tenant().is_empty() {
            raw.push('\u{2}');
            raw.push_str(k.tenant());
        }
        raw.push('\u{1}');
    }
    form_encode(&raw)
}

/// `application/x-www-form-urlencoded` encoding of one value (Java's `URLEncoder`).
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'*' | b'_' => {
                out.push(char::from(b))
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `POST /v1/cs/configs/listener`: answers at once with the items whose MD5 differs from
/// the client's, else holds the request until one changes or the client's
/// `Long-Pulling-Timeout` (less half a second, at least 10 s) passes.
async fn listen(
    State(core): State<Arc<Core>>,
    conn: ConnectInfo<ClientAddr>,
    headers: HeaderMap,
    q: Params,
) -> Result<Response, NacosError> {
    let raw = q.required("Listening-Configs")?;
    let probes = probes(raw, q.str("tenant"))?;
    let p = principal(&core, &headers, &q)?;
    for (k, _) in &probes {
        p.check(Keyspace::Config, Access::Read, &layout::item(k), b"")?;
    }
    let ip = client_ip(&headers, conn.0);
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let hold = match header("long-pulling-timeout") {
        None => Duration::ZERO,
        Some(ms) => {
            let ms: u64 = ms.trim().parse().map_err(|_| {
                NacosError::bad(format!("Long-Pulling-Timeout {ms:?} is not milliseconds"))
            })?;
            Duration::from_millis(ms)
                .saturating_sub(HOLD_MARGIN)
                .clamp(MIN_HOLD, MAX_HOLD)
        }
    };
    let no_hangup = header("long-pulling-timeout-no-hangup") == Some("true");
    let hold = if no_hangup { Duration::ZERO } else { hold };
    let changed = {
        // Counted while held, however the request ends (a client may hang up mid-poll).
        struct Held<'a>(&'a prometheus_client::metrics::gauge::Gauge);
        impl Drop for Held<'_> {
            fn drop(&mut self) {
                self.0.dec();
            }
        }
        core.metrics.nacos_listeners.inc();
        let _held = Held(&core.metrics.nacos_listeners);
        core.config_center
            .listen(&probes, &Reader::at(ip), Instant::now() + hold)
            .await
    };
    let mut resp = (
        [(header::CONTENT_TYPE, "text/html;charset=UTF-8")],
        changed_body(&changed),
    )
        .into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache,no-store"),
    );
    Ok(resp)
}

/// A kept version as Nacos's history lists it.
fn history_entry(k: &ItemKey, v: &Version) -> serde_json::Value {
    json!({
        "id": v.version,
        "lastId": -1,
        "dataId": k.data_id,
        "group": k.group,
        "tenant": k.tenant(),
        "appName": v.item.app,
        "md5": v.item.md5,
        "content": v.item.content,
        "type": v.item.kind.as_str(),
        "srcIp": v.author.ip,
        "srcUser": v.author.user,
        "opType": v.op.letter(),
        "createdTime": v.at_ms,
        "lastModifiedTime": v.at_ms,
    })
}

/// `GET /v1/cs/history`: with `nid`, that version; else a page of versions, newest first.
async fn history(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
    q: Params,
) -> Result<Response, NacosError> {
    let q = with_default_group(q);
    let k = item_key(&q)?;
    allowed(&core, &headers, &q, &k, Access::Read)?;
    let cc = &core.config_center;
    if let Some(nid) = q.get("nid") {
        let v: u64 = nid
            .trim()
            .parse()
            .map_err(|_| NacosError::bad(format!("nid {nid:?} is not a version number")))?;
        return match cc.version(&k, v)? {
            Some(v) => Ok(Json(history_entry(&k, &v)).into_response()),
            None => Ok(text(StatusCode::NOT_FOUND, "history not exist")),
        };
    }
    let page_no = q.number("pageNo", 1)?.max(1);
    let page_size = q.number("pageSize", 100)?.clamp(1, MAX_PAGE);
    let (versions, total) = cc.versions(&k, (page_no - 1).saturating_mul(page_size), page_size)?;
    Ok(Json(json!({
        "totalCount": total,
        "pageNumber": page_no,
        "pagesAvailable": total.div_ceil(page_size),
        "pageItems": versions.iter().map(|v| history_entry(&k, v)).collect::<Vec<_>>(),
    }))
    .into_response())
}

/// `GET /v1/cs/history/previous?id=N`: the version kept before `N`.
async fn previous(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
    q: Params,
) -> Result<Response, NacosError> {
    let q = with_default_group(q);
    let k = item_key(&q)?;
    allowed(&core, &headers, &q, &k, Access::Read)?;
    let id = q.required("id")?;
    let v: u64 = id
        .trim()
        .parse()
        .map_err(|_| NacosError::bad(format!("id {id:?} is not a version number")))?;
    match core.config_center.previous(&k, v)? {
        Some(v) => Ok(Json(history_entry(&k, &v)).into_response()),
        None => Ok(text(StatusCode::NOT_FOUND, "history not exist")),
    }
}

/// History calls of the Nacos console may leave the group out: it is then DEFAULT_GROUP.
fn with_default_group(mut q: Params) -> Params {
    q.0.entry("group".into())
        .or_insert_with(|| DEFAULT_GROUP.into());
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_parse_with_and_without_tenant() {
        let raw = "a\u{2}G\u{2}abc\u{1}b\u{2}G\u{2}\u{2}dev\u{1}";
        let p = probes(raw, "").expect("parse");
        assert_eq!(p[0], (ItemKey::new("", "G", "a"), "abc".to_string()));
        assert_eq!(p[1], (ItemKey::new("dev", "G", "b"), String::new()));
        assert!(probes("a\u{2}G\u{1}", "").is_err());
        assert!(probes("a b\u{2}G\u{2}x\u{1}", "").is_err());
    }

    #[test]
    fn changed_keys_are_url_encoded_as_java_does() {
        let body = changed_body(&[ItemKey::new("", "G", "a.b"), ItemKey::new("dev", "G", "c")]);
        assert_eq!(body, "a.b%02G%01c%02G%02dev%01");
    }
}
