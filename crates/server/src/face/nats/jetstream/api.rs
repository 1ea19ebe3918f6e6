//! The `$JS.API` requests berth answers, with JetStream's JSON: account info, stream create,
//! update, info, delete, purge, names, list, message get and delete, and direct get. Every
//! response names its type (`io.nats.jetstream.api.v1.<x>_response`); errors are exactly
//! `{"code","err_code","description"}`. A request without a reply subject is not answered.
//! Consumer requests and acks go to `consumers`. Subjects berth does not serve are left to
//! the hub, which finds no responders (503), as nats-server 2.15 answers API subjects it
//! does not know.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use base64::Engine as _;
use berth_messaging::stream::{headers, ApiError, Config, PubAck, State};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{now_ns, JetStream, StreamHandle};
use crate::face::nats::Hub;

/// Streams per `STREAM.NAMES` and `STREAM.LIST` page, as nats-server.
pub(super) const NAMES_LIMIT: usize = 1024;
pub(super) const LIST_LIMIT: usize = 256;

pub(super) fn time(ns: i64) -> String {
    if ns <= 0 {
        return "0001-01-01T00:00:00Z".into();
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns as u64);
    humantime::format_rfc3339_nanos(t).to_string()
}

fn not_found() -> ApiError {
    ApiError::new(404, 10059, "stream not found")
}

fn bad_json(e: &serde_json::Error) -> ApiError {
    ApiError::new(400, 10025, format!("invalid JSON: {e}"))
}

/// A request body as `T`; an empty body is `{}`.
pub(super) fn body<T: for<'de> Deserialize<'de>>(payload: &[u8]) -> Result<T, ApiError> {
    // Empty, or JSON `null` (async-nats sends it for STREAM.INFO): no fields, as Go's
    // decoder reads them.
    let payload = if payload.iter().all(u8::is_ascii_whitespace) || payload.trim_ascii() == b"null"
    {
        &b"{}"[..]
    } else {
        payload
    };
    serde_json::from_slice(payload).map_err(|e| bad_json(&e))
}

/// Answers a `$JS.API` request if it is one berth serves; false leaves it to the hub.
pub(crate) fn handle(hub: &Arc<Hub>, subject: &str, reply: Option<&str>, payload: &Bytes) -> bool {
    let js = &hub.js;
    if !hub.solo() {
        return false;
    }
    if subject.starts_with("$JS.ACK.") || subject.starts_with("$JS.FC.") {
        return super::consumers::ack(hub, subject, reply, payload);
    }
    let Some(rest) = subject.strip_prefix("$JS.API.") else {
        return false;
    };
    let (kind, answer) = match rest.split_once('.').unwrap_or((rest, "")) {
        ("INFO", "") => ("account_info", Ok(account_info(js))),
        ("STREAM", op) => match stream_op(hub, op, payload) {
            Some(r) => r,
            None => return false,
        },
        ("CONSUMER", op) => match super::consumers::api(hub, op, reply, payload) {
            super::consumers::Served::Answer(kind, answer) => (kind, answer),
            super::consumers::Served::Done => return true,
            super::consumers::Served::No => return false,
        },
        ("DIRECT", op) => {
            let Some(name_and_subject) = op.strip_prefix("GET.") else {
                return false;
            };
            return direct_get(hub, name_and_subject, reply, payload);
        }
        _ => return false,
    };
    js.api_total.fetch_add(1, Ordering::Relaxed);
    if let Err(e) = &answer {
        js.api_errors.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(subject, error = %e, "JetStream API error");
    }
    let body = response(kind, answer);
    if let Some(reply) = reply {
        hub.inject(reply, None, &Bytes::from(body.to_string()));
    }
    true
}

/// An API response of `kind` (`stream_info` …): the answer with its type, or the error.
pub(super) fn response(kind: &str, answer: Result<Value, ApiError>) -> Value {
    match answer {
        Ok(mut v) => {
            v["type"] = json!(format!("io.nats.jetstream.api.v1.{kind}_response"));
            v
        }
        Err(e) => json!({
            "type": format!("io.nats.jetstream.api.v1.{kind}_response"),
            "error": error(&e),
        }),
    }
}

fn error(e: &ApiError) -> Value {
    json!({"code": e.code, "err_code": e.err_code, "description": e.description})
}

/// A publish acknowledgement (or its error) as JetStream writes it.
pub(crate) fn pub_ack(stream: &str, answer: Result<PubAck, ApiError>) -> String {
    // Stream names are checked (no quotes or escapes), so the common answers are formatted
    // directly.
    match answer {
        Ok(a) if a.duplicate => format!(
            r#"{{"stream":"{stream}","seq":{},"duplicate":true}}"#,
            a.seq
        ),
        Ok(a) => format!(r#"{{"stream":"{stream}","seq":{}}}"#, a.seq),
        Err(e) => json!({"error": error(&e), "stream": stream, "seq": 0}).to_string(),
    }
}

fn account_info(js: &JetStream) -> Value {
    let streams = js.streams();
    let storage: u64 = streams
        .values()
        .filter_map(|h| h.lock().as_ref().map(|s| s.store().state().bytes))
        .sum();
    let consumers = streams.values().map(|h| h.consumers().len()).sum::<usize>();
    account_info_json(js, streams.len(), storage, consumers)
}

/// `$JS.API.INFO`'s answer: the account's streams, their bytes and consumers, no limits, and
/// the API's counters.
pub(super) fn account_info_json(
    js: &JetStream,
    streams: usize,
    storage: u64,
    consumers: usize,
) -> Value {
    json!({
        "memory": 0,
        "storage": storage,
        "reserved_memory": 0,
        "reserved_storage": 0,
        "streams": streams,
        "consumers": consumers,
        "limits": {
            "max_memory": -1,
            "max_storage": -1,
            "max_streams": -1,
            "max_consumers": -1,
            "max_ack_pending": -1,
            "memory_max_stream_bytes": -1,
            "storage_max_stream_bytes": -1,
            "max_bytes_required": false,
        },
        "api": {
            "total": js.api_total.load(Ordering::Relaxed),
            "errors": js.api_errors.load(Ordering::Relaxed),
        },
    })
}

pub(super) fn state_json(st: &State, consumers: usize, subjects: Option<Value>) -> Value {
    let mut v = json!({
        "messages": st.messages,
        "bytes": st.bytes,
        "first_seq": st.first_seq,
        "first_ts": time(st.first_time),
        "last_seq": st.last_seq,
        "last_ts": time(st.last_time),
        "consumer_count": consumers,
    });
    if st.subjects > 0 {
        v["num_subjects"] = json!(st.subjects);
    }
    if st.deleted > 0 {
        v["num_deleted"] = json!(st.deleted);
    }
    if let Some(s) = subjects {
        v["subjects"] = s;
    }
    v
}

/// A stream's info; with `subjects_filter`, its subjects' message counts too.
fn stream_info(
    hub: &Hub,
    h: &StreamHandle,
    subjects_filter: Option<&str>,
) -> Result<Value, ApiError> {
    let consumers = h.consumers().len();
    let guard = h.lock();
    let s = guard.as_ref().ok_or_else(not_found)?;
    let subjects = subjects_filter.map(|f| json!(s.store().subject_counts(f)));
    Ok(json!({
        "config": s.config(),
        "created": time(s.created()),
        "state": state_json(&s.store().state(), consumers, subjects),
        "cluster": {"leader": hub.server_id},
        "ts": time(now_ns()),
    }))
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct InfoRequest {
    pub(super) subjects_filter: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct PurgeRequest {
    pub(super) filter: Option<String>,
    pub(super) seq: Option<u64>,
    pub(super) keep: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct ListRequest {
    pub(super) offset: usize,
    pub(super) subject: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct MsgRequest {
    pub(super) seq: Option<u64>,
    pub(super) last_by_subj: Option<String>,
    pub(super) next_by_subj: Option<String>,
    pub(super) no_erase: Option<bool>,
}

/// One `STREAM.*` request: `None` when berth does not serve it.
fn stream_op(
    hub: &Arc<Hub>,
    op: &str,
    payload: &[u8],
) -> Option<(&'static str, Result<Value, ApiError>)> {
    let js = &hub.js;
    let (verb, name) = match op.split_once('.') {
        Some(("MSG", rest)) => match rest.split_once('.') {
            Some(("GET", name)) => ("MSG.GET", name),
            Some(("DELETE", name)) => ("MSG.DELETE", name),
            _ => return None,
        },
        Some((verb, name)) => (verb, name),
        None => (op, ""),
    };
    let found = || js.stream(name).ok_or_else(not_found);
    Some(match verb {
        "CREATE" => ("stream_create", create(hub, name, payload)),
        "UPDATE" => ("stream_update", update(hub, name, payload)),
        "INFO" => ("stream_info", body::<InfoRequest>(payload).and_then(|r| {
            stream_info(hub, &*found()?, r.subjects_filter.as_deref())
        })),
        "DELETE" => ("stream_delete", found().and_then(|h| {
            let _lifecycle = js.lifecycle();
            js.delete(&h)?;
            tracing::info!(stream = %name, "JetStream stream deleted");
            Ok(json!({"success": true}))
        })),
        "PURGE" => ("stream_purge", body::<PurgeRequest>(payload).and_then(|r| {
            let h = found()?;
            let mut guard = h.lock();
            let s = guard.as_mut().ok_or_else(not_found)?;
            let purged = s.purge(r.filter.as_deref(), r.seq, r.keep)?;
            if let Some(f) = s.store().durable() {
                f.sync_data().map_err(|e| ApiError::io(&e))?;
            }
            Ok(json!({"success": true, "purged": purged}))
        })),
        "NAMES" if name.is_empty() => ("stream_names", body::<ListRequest>(payload).map(|r| {
            let names = matching_streams(js, r.subject.as_deref());
            let total = names.len();
            let page: Vec<&String> = names.iter().skip(r.offset).take(NAMES_LIMIT).map(|(n, _)| n).collect();
            json!({
                "total": total,
                "offset": r.offset,
                "limit": NAMES_LIMIT,
                "streams": if page.is_empty() { Value::Null } else { json!(page) },
            })
        })),
        "LIST" if name.is_empty() => ("stream_list", body::<ListRequest>(payload).map(|r| {
            let all = matching_streams(js, r.subject.as_deref());
            let infos: Vec<Value> = all
                .iter()
                .skip(r.offset)
                .take(LIST_LIMIT)
                .filter_map(|(_, h)| stream_info(hub, h, None).ok())
                .collect();
            json!({"total": all.len(), "offset": r.offset, "limit": LIST_LIMIT, "streams": infos})
        })),
        "MSG.GET" => ("stream_msg_get", body::<MsgRequest>(payload).and_then(|r| {
            let h = found()?;
            let guard = h.lock();
            let s = guard.as_ref().ok_or_else(not_found)?;
            let m = find(s, &r)?;
            Ok(json!({"message": msg_json(&m)}))
        })),
        "MSG.DELETE" => ("stream_msg_delete", body::<MsgRequest>(payload).and_then(|r| {
            let h = found()?;
            let seq = r.seq.ok_or_else(|| ApiError::new(400, 10003, "bad request"))?;
            let _ = r.no_erase;
            let mut guard = h.lock();
            let s = guard.as_mut().ok_or_else(not_found)?;
            s.delete(seq)?;
            if let Some(f) = s.store().durable() {
                f.sync_data().map_err(|e| ApiError::io(&e))?;
            }
            Ok(json!({"success": true}))
        })),
        _ => return None,
    })
}

/// Streams (by name) with a subject overlapping `subject` (all without one).
fn matching_streams(js: &JetStream, subject: Option<&str>) -> Vec<(String, Arc<StreamHandle>)> {
    js.streams()
        .iter()
        .filter(|(_, h)| {
            subject.is_none_or(|f| {
                h.lock().as_ref().is_some_and(|s| {
                    s.config()
                        .subjects
                        .iter()
                        .any(|x| berth_messaging::subject::overlaps(x, f))
                })
            })
        })
        .map(|(n, h)| (n.clone(), h.clone()))
        .collect()
}

/// A stored message as `STREAM.MSG.GET` answers it (headers and data in base64).
pub(super) fn msg_json(m: &berth_messaging::stream::StoredMsg) -> Value {
    let mut msg = json!({"subject": m.subject, "seq": m.seq, "time": time(m.time)});
    let b64 = base64::engine::general_purpose::STANDARD;
    if !m.headers.is_empty() {
        msg["hdrs"] = json!(b64.encode(&m.headers));
    }
    if !m.payload.is_empty() {
        msg["data"] = json!(b64.encode(&m.payload));
    }
    msg
}

/// The message a get request names.
pub(super) fn find(
    s: &berth_messaging::stream::Stream,
    r: &MsgRequest,
) -> Result<berth_messaging::stream::StoredMsg, ApiError> {
    let none = || ApiError::new(404, 10037, "no message found");
    let store = s.store();
    let seq = match (&r.seq, &r.last_by_subj, &r.next_by_subj) {
        (Some(seq), None, None) => Some(*seq),
        (None, Some(subj), None) => store.last_matching(subj),
        (seq, None, Some(subj)) => store.next_matching(seq.unwrap_or(0), subj),
        _ => return Err(ApiError::new(400, 10003, "bad request")),
    };
    store
        .get(seq.ok_or_else(none)?)
        .map_err(|e| ApiError::io(&e))?
        .ok_or_else(none)
}

/// The request's config, checked against the subject's stream name.
pub(super) fn config_of(name: &str, payload: &[u8]) -> Result<Config, ApiError> {
    let mut config: Config = body(payload)?;
    if config.name.is_empty() {
        config.name = name.to_string();
    }
    if config.name != name {
        return Err(ApiError::new(
            400,
            10056,
            "stream name in subject does not match request",
        ));
    }
    config.check()?;
    Ok(config)
}

fn create(hub: &Arc<Hub>, name: &str, payload: &[u8]) -> Result<Value, ApiError> {
    let js = &hub.js;
    let config = config_of(name, payload)?;
    config.check_single()?;
    let _lifecycle = js.lifecycle();
    if let Some(h) = js.stream(name) {
        let same = h.lock().as_ref().is_some_and(|s| *s.config() == config);
        if !same {
            return Err(ApiError::new(
                400,
                10058,
                "stream name already in use with a different configuration",
            ));
        }
        return stream_info(hub, &h, None);
    }
    if js.overlaps(name, &config.subjects) {
        return Err(ApiError::new(
            400,
            10065,
            "subjects overlap with an existing stream",
        ));
    }
    let h = js.create(hub, config)?;
    tracing::info!(stream = %name, "JetStream stream created");
    let mut info = stream_info(hub, &h, None)?;
    info["did_create"] = json!(true);
    Ok(info)
}

fn update(hub: &Arc<Hub>, name: &str, payload: &[u8]) -> Result<Value, ApiError> {
    let js = &hub.js;
    let config = config_of(name, payload)?;
    config.check_single()?;
    let _lifecycle = js.lifecycle();
    let h = js.stream(name).ok_or_else(not_found)?;
    if js.overlaps(name, &config.subjects) {
        return Err(ApiError::new(
            400,
            10065,
            "subjects overlap with an existing stream",
        ));
    }
    js.update(&h, config)?;
    stream_info(hub, &h, None)
}

/// `DIRECT.GET.<stream>` (the request in the body) and `DIRECT.GET.<stream>.<subject>` (the
/// last message of that subject): the message itself, its stored headers first, then
/// `Nats-Stream`, `Nats-Subject`, `Nats-Sequence` and `Nats-Time-Stamp`; or a status. Only
/// for streams with `allow_direct`.
fn direct_get(hub: &Arc<Hub>, rest: &str, reply: Option<&str>, payload: &Bytes) -> bool {
    let (name, last_of) = match rest.split_once('.') {
        Some((n, s)) => (n, Some(s)),
        None => (rest, None),
    };
    let Some(h) = hub.js.stream(name) else {
        return false;
    };
    let guard = h.lock();
    let Some(s) = guard.as_ref().filter(|s| s.config().allow_direct) else {
        return false;
    };
    let Some(reply) = reply else { return true };
    let request = match last_of {
        Some(subject) => Ok(MsgRequest {
            last_by_subj: Some(subject.to_string()),
            ..Default::default()
        }),
        None if payload.is_empty() => Err(ApiError::new(408, 0, EMPTY_REQUEST)),
        None => body::<MsgRequest>(payload),
    };
    let found = request.and_then(|r| find(s, &r));
    drop(guard);
    direct_answer(hub, reply, name, found);
    true
}

/// The status text of a direct get without a request.
pub(super) const EMPTY_REQUEST: &str = "Empty Request";

/// Answers a direct get: the message (its stored headers first, then `Nats-Stream`,
/// `Nats-Subject`, `Nats-Sequence` and `Nats-Time-Stamp`) or a status line.
pub(super) fn direct_answer(
    hub: &Hub,
    reply: &str,
    name: &str,
    found: Result<berth_messaging::stream::StoredMsg, ApiError>,
) {
    let status = |text: &str| Bytes::from(headers::block(Some(text), &[]));
    match found {
        Ok(m) => {
            let seq = m.seq.to_string();
            let ts = time(m.time);
            let mut block = if m.headers.is_empty() {
                b"NATS/1.0\r\n".to_vec()
            } else {
                // The stored block without its blank last line.
                m.headers[..m.headers.len().saturating_sub(2)].to_vec()
            };
            let added = headers::block(
                None,
                &[
                    ("Nats-Stream", name),
                    ("Nats-Subject", &m.subject),
                    ("Nats-Sequence", &seq),
                    ("Nats-Time-Stamp", &ts),
                ],
            );
            block.extend_from_slice(&added["NATS/1.0\r\n".len()..]);
            hub.inject(reply, Some(&Bytes::from(block)), &Bytes::from(m.payload));
        }
        Err(e) if e.code == 404 => {
            hub.inject(reply, Some(&status("404 Message Not Found")), &Bytes::new())
        }
        Err(e) if e.code == 408 && e.description == EMPTY_REQUEST => {
            hub.inject(reply, Some(&status("408 Empty Request")), &Bytes::new())
        }
        Err(_) => hub.inject(reply, Some(&status("408 Bad Request")), &Bytes::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Debug, PartialEq, Default)]
    #[serde(default)]
    struct Req {
        seq: u64,
    }

    /// A request body may be empty or JSON `null` (async-nats sends it): no fields.
    #[test]
    fn empty_and_null_bodies_are_no_fields() {
        for b in [&b""[..], b"  ", b"null", b" null\r\n", b"{}"] {
            assert_eq!(body::<Req>(b), Ok(Req::default()), "{b:?}");
        }
        assert_eq!(body::<Req>(br#"{"seq":3}"#), Ok(Req { seq: 3 }));
        assert_eq!(body::<Req>(b"nul").map_err(|e| e.err_code), Err(10025));
    }
}
