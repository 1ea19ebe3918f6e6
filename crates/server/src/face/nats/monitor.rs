//! nats-server's monitoring endpoints on berth's HTTP listener: `/varz` (the server: identity,
//! limits, connection and message totals) and `/connz` (its client connections, with
//! nats-server's `sort`, `offset`, `limit`, `cid` and `subs` parameters), in nats-server's
//! JSON shapes, which clients' test suites and dashboards read.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{Client, Hub, VERSION};

/// The monitoring routes of `hub`.
pub fn routes(hub: Arc<Hub>) -> Router {
    Router::new()
        .route("/varz", get(varz))
        .route("/connz", get(connz))
        .with_state(hub)
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_nanos(t).to_string()
}

/// A duration as nats-server writes uptimes and idle times: `1d2h3m4s`, largest unit first.
fn go_duration(d: Duration) -> String {
    let mut secs = d.as_secs();
    let mut out = String::new();
    for (unit, size) in [("y", 31_536_000), ("d", 86_400), ("h", 3_600), ("m", 60)] {
        if secs >= size || !out.is_empty() {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out.push_str(&format!("{secs}s"));
    out
}

fn since(t: SystemTime) -> Duration {
    SystemTime::now().duration_since(t).unwrap_or_default()
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

async fn varz(State(hub): State<Arc<Hub>>) -> Json<Value> {
    let t = &hub.totals;
    let listen = hub.listen.get().copied();
    let connections = hub.clients().len();
    Json(json!({
        "server_id": hub.server_id,
        "server_name": hub.server_id,
        "version": VERSION,
        "proto": 1,
        "go": "berth",
        "host": listen.map(|a| a.ip().to_string()).unwrap_or_default(),
        "port": listen.map_or(0, |a| a.port()),
        "auth_required": hub.core.auth.view().enabled,
        "max_connections": hub.limits.max_connections,
        "max_subscriptions": hub.limits.max_subscriptions,
        "ping_interval": nanos(hub.limits.ping_interval),
        "ping_max": 2,
        "max_control_line": super::parse::MAX_CONTROL_LINE,
        "max_payload": hub.limits.max_payload,
        "max_pending": hub.limits.max_pending,
        "start": rfc3339(hub.started),
        "now": rfc3339(SystemTime::now()),
        "uptime": go_duration(since(hub.started)),
        "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "connections": connections,
        "total_connections": t.connections.load(Ordering::Relaxed),
        "routes": hub.routes.up(),
        "remotes": 0,
        "leafnodes": 0,
        "in_msgs": t.inbound.msgs(),
        "out_msgs": t.outbound.msgs(),
        "in_bytes": t.inbound.bytes(),
        "out_bytes": t.outbound.bytes(),
        "slow_consumers": t.slow_consumers.load(Ordering::Relaxed),
        "subscriptions": hub.subs_read().len(),
    }))
}

/// `/connz`'s parameters.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ConnzQuery {
    sort: Option<String>,
    offset: usize,
    limit: Option<usize>,
    cid: Option<u64>,
    subs: Option<String>,
}

/// What a sort reads of a connection.
type SortKey = fn(&Client) -> u64;

/// `/connz`'s `sort` by name: what it reads, and whether it is descending (nats-server sorts
/// every key but `cid` and `start` largest first); `None` for a name it does not know.
fn sorter(by: &str) -> Option<(SortKey, bool)> {
    Some(match by {
        "cid" => (|c| c.id, false),
        "start" => (
            |c| {
                c.stats
                    .started
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            },
            false,
        ),
        "subs" => (|c| c.subs().len() as u64, true),
        "pending" => (|c| c.pending.load(Ordering::Relaxed) as u64, true),
        "msgs_to" => (|c| c.stats.outbound.msgs(), true),
        "msgs_from" => (|c| c.stats.inbound.msgs(), true),
        "bytes_to" => (|c| c.stats.outbound.bytes(), true),
        "bytes_from" => (|c| c.stats.inbound.bytes(), true),
        "last" => (|c| c.stats.last_activity_ms.load(Ordering::Relaxed), true),
        "idle" => (
            |c| super::unix_ms().saturating_sub(c.stats.last_activity_ms.load(Ordering::Relaxed)),
            true,
        ),
        "uptime" => (|c| nanos(since(c.stats.started)), true),
        _ => return None,
    })
}

fn bad(msg: String) -> Response {
    (StatusCode::BAD_REQUEST, msg).into_response()
}

async fn connz(State(hub): State<Arc<Hub>>, Query(q): Query<ConnzQuery>) -> Response {
    let by = q.sort.as_deref().unwrap_or("cid");
    let Some((key, descending)) = sorter(by) else {
        return bad(format!("invalid sorting option: {by}"));
    };
    let mut clients: Vec<Arc<Client>> = hub.clients().values().cloned().collect();
    let subs = match q.subs.as_deref() {
        None | Some("" | "0" | "false") => false,
        Some("1" | "true" | "detail") => true,
        Some(other) => return bad(format!("invalid subs option: {other}")),
    };
    if let Some(cid) = q.cid {
        clients.retain(|c| c.id == cid);
    }
    let total = clients.len();
    clients.sort_by_key(|c| {
        let k = key(c);
        if descending {
            u64::MAX - k
        } else {
            k
        }
    });
    let limit = q.limit.unwrap_or(1024);
    let now = SystemTime::now();
    let list: Vec<Value> = clients
        .iter()
        .skip(q.offset)
        .take(limit)
        .map(|c| connection(c, subs, now))
        .collect();
    Json(json!({
        "server_id": hub.server_id,
        "now": rfc3339(now),
        "num_connections": list.len(),
        "total": total,
        "offset": q.offset,
        "limit": limit,
        "connections": list,
    }))
    .into_response()
}

fn connection(c: &Client, subs: bool, now: SystemTime) -> Value {
    let s = &c.stats;
    let last_ms = s.last_activity_ms.load(Ordering::Relaxed);
    let last = std::time::UNIX_EPOCH + Duration::from_millis(last_ms);
    let (name, lang, version) = s.named.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut v = json!({
        "cid": c.id,
        "kind": "Client",
        "type": "nats",
        "ip": s.addr.map(|a| a.ip().to_string()).unwrap_or_default(),
        "port": s.addr.map_or(0, |a| a.port()),
        "start": rfc3339(s.started),
        "last_activity": rfc3339(last),
        "uptime": go_duration(now.duration_since(s.started).unwrap_or_default()),
        "idle": go_duration(now.duration_since(last).unwrap_or_default()),
        "pending_bytes": c.pending.load(Ordering::Relaxed),
        "in_msgs": s.inbound.msgs(),
        "out_msgs": s.outbound.msgs(),
        "in_bytes": s.inbound.bytes(),
        "out_bytes": s.outbound.bytes(),
        "subscriptions": c.subs().len(),
    });
    for (key, value) in [("name", name), ("lang", lang), ("version", version)] {
        if !value.is_empty() {
            v[key] = Value::String(value);
        }
    }
    if subs {
        let list: Vec<String> = c.subs().values().map(|s| s.0.subject.clone()).collect();
        v["subscriptions_list"] = json!(list);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_nats_servers() {
        assert_eq!(go_duration(Duration::from_secs(0)), "0s");
        assert_eq!(go_duration(Duration::from_secs(75)), "1m15s");
        assert_eq!(go_duration(Duration::from_secs(86_400 + 3)), "1d0h0m3s");
    }
}
