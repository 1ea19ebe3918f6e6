//! Consumers of a member's streams, carried out: the `$JS.API.CONSUMER.*` requests, pull
//! requests (`CONSUMER.MSG.NEXT`), acks (`$JS.ACK.…`), and each stream's dispatcher task,
//! which wakes when messages are stored, when something is due (redeliveries, request
//! expiries, heartbeats) and when a push consumer may have gained interest.
//!
//! The rules live in [`berth_messaging::consumer`]; this file turns its actions into
//! messages (the stored message with the ack subject as its reply, or a status), saves each
//! consumer's state under `<stream dir>/consumers/<name>.json` (at most every
//! [`SAVE_EVERY`] while it changes, and before an ack that asked for a reply is answered),
//! and deletes ephemeral consumers left without requests or interest past their
//! `inactive_threshold`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use berth_messaging::consumer::{
    Ack, Action, Consumer, ConsumerConfig, ConsumerState, GiveUp, PullRequest, Source,
};
use berth_messaging::stream::{headers, ApiError, Retention, Stream, StreamStore};
use bytes::Bytes;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{now_ns, StreamHandle};
use crate::face::nats::Hub;

/// How often a changed consumer state is saved at most.
pub const SAVE_EVERY: Duration = Duration::from_millis(100);
/// How often the dispatcher looks for interest on push consumers without any.
const INTEREST_POLL: Duration = Duration::from_millis(100);
/// Consumers per `CONSUMER.NAMES` and `CONSUMER.LIST` page, as nats-server.
const NAMES_LIMIT: usize = 1024;
const LIST_LIMIT: usize = 256;

/// What `<name>.json` holds.
#[derive(Serialize, Deserialize)]
struct Saved {
    config: ConsumerConfig,
    state: ConsumerState,
    created: i64,
}

/// What a replicated stream's consumer saver is handed (in order).
pub(crate) enum SaverMsg {
    /// A consumer's saved state (empty: deleted).
    Save(String, Vec<u8>),
    /// Messages the consumers are done with (interest and work-queue retention), to drop
    /// through the group before any state handed after.
    Retire(Vec<u64>),
    /// Ack replies, answered once every state handed before is committed.
    Replies(Vec<String>),
    /// Answered once every state handed before is committed (or could not be).
    Flush(tokio::sync::oneshot::Sender<Result<(), ApiError>>),
}

/// One consumer of a stream.
pub(crate) struct Entry {
    consumer: Consumer,
    created: i64,
    /// Inboxes of acks that asked for a reply, answered once the state is saved.
    ack_replies: Vec<String>,
}

/// A stream's consumers.
#[derive(Default)]
pub(crate) struct Consumers {
    map: BTreeMap<String, Entry>,
    /// When the changed states were last saved.
    saved_at: i64,
}

/// The stream as a consumer reads it: only what is synced (a consumer never delivers, or
/// records as delivered, a message a crash could still take back).
struct StoreSource<'a>(&'a StreamStore);

impl Source for StoreSource<'_> {
    fn next(&self, from: u64, filters: &[String]) -> Option<(u64, u64)> {
        self.0
            .next_of(from, filters)
            .filter(|(s, _)| *s <= self.0.synced())
    }
    fn size_of(&self, seq: u64) -> Option<u64> {
        self.0.size_of(seq)
    }
    fn count_after(&self, seq: u64, filters: &[String]) -> u64 {
        let synced = self.0.synced();
        self.0
            .count_after(seq, filters)
            .saturating_sub(self.0.count_after(synced, filters))
    }
    fn last_seq(&self) -> u64 {
        self.0.synced()
    }
    fn last_matching(&self, filters: &[String]) -> Option<u64> {
        if filters.is_empty() {
            return self.0.last_matching(">");
        }
        filters.iter().filter_map(|f| self.0.last_matching(f)).max()
    }
    fn last_per_subject(&self, filters: &[String]) -> Vec<u64> {
        self.0.last_per_subject(filters)
    }
    fn first_at(&self, time: i64) -> Option<u64> {
        self.0.first_at(time)
    }
}

fn time(ns: i64) -> String {
    super::api::time(ns)
}

fn not_found() -> ApiError {
    ApiError::new(404, 10014, "consumer not found")
}

fn dir_of(hub: &Hub, stream: &str) -> std::path::PathBuf {
    hub.js.dir.join(stream).join("consumers")
}

impl Consumers {
    /// Consumers restored from their saved states (a replicated stream's, as its group
    /// applied them), none running ahead of the stream's `last_seq`.
    pub(crate) fn from_saved(saved: Vec<(String, Vec<u8>)>, last_seq: u64) -> Consumers {
        let mut out = Consumers::default();
        let now = now_ns();
        for (name, bytes) in saved {
            match serde_json::from_slice::<Saved>(&bytes) {
                Ok(s) => out.restore(name, s, last_seq, now),
                Err(e) => {
                    tracing::error!(consumer = %name, error = %e, "JetStream consumer not restored")
                }
            }
        }
        out
    }

    /// Opens the saved consumers of `stream` (a file that cannot be read is logged and
    /// left out).
    pub(crate) fn open(dir: &std::path::Path, last_seq: u64) -> Consumers {
        let mut out = Consumers::default();
        let Ok(entries) = std::fs::read_dir(dir.join("consumers")) else {
            return out;
        };
        let now = now_ns();
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let saved = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Saved>(&b).map_err(|e| e.to_string()));
            match saved {
                Ok(s) => {
                    let name = s.config.name.clone().unwrap_or_default();
                    out.restore(name, s, last_seq, now);
                }
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "JetStream consumer not opened")
                }
            }
        }
        out
    }

    /// Adds consumer `name` as it was saved (no further ahead than the stream's `last_seq`),
    /// its state counted as saved.
    fn restore(&mut self, name: String, s: Saved, last_seq: u64, now: i64) {
        let mut consumer = Consumer::restore_within(s.config, s.state, last_seq, now);
        let _ = consumer.take_dirty();
        self.map.insert(
            name,
            Entry {
                consumer,
                created: s.created,
                ack_replies: Vec::new(),
            },
        );
    }

    /// Marks consumer `name`'s state to be saved again.
    pub(crate) fn mark_dirty(&mut self, name: &str) {
        if let Some(e) = self.map.get_mut(name) {
            e.consumer.mark_dirty();
        }
    }

    /// How many consumers.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Each consumer's filters (empty: every subject).
    pub(crate) fn filters(&self) -> Vec<Vec<String>> {
        self.map
            .values()
            .map(|e| e.consumer.config().filters())
            .collect()
    }
}

/// One turn of a consumer under its stream's lock: pull requests whose requester went away
/// are dropped (nats-server drops them too), `turn` acts on it, and its actions are carried
/// out.
fn drive(
    hub: &Hub,
    handle: &Arc<StreamHandle>,
    name: &str,
    consumer: &mut Consumer,
    store: &StreamStore,
    later: &mut Later,
    turn: impl FnOnce(&mut Consumer, &StoreSource<'_>) -> Vec<Action>,
) {
    consumer.forget_requests(|r| !hub.has_interest(r));
    if consumer.flow_prefix.is_empty() {
        consumer.flow_prefix = format!("$JS.FC.{}.{name}", handle.name);
    }
    let actions = turn(consumer, &StoreSource(store));
    run_actions(hub, handle, name, consumer.config(), store, actions, later);
}

/// Carries out a consumer's actions (the stream locked by the caller).
fn run_actions(
    hub: &Hub,
    handle: &Arc<StreamHandle>,
    consumer: &str,
    c: &ConsumerConfig,
    store: &StreamStore,
    actions: Vec<Action>,
    later: &mut Later,
) {
    let stream_name = handle.name.as_str();
    for a in actions {
        match a {
            Action::Deliver {
                to,
                sseq,
                cseq,
                dc,
                pending,
            } => {
                let Ok(Some(m)) = store.get(sseq) else {
                    continue;
                };
                let ack = format!(
                    "$JS.ACK.{stream_name}.{consumer}.{dc}.{sseq}.{cseq}.{}.{pending}",
                    m.time
                );
                let (hdrs, payload) = if c.headers_only {
                    let size = m.payload.len().to_string();
                    let mut block = if m.headers.is_empty() {
                        b"NATS/1.0\r\n".to_vec()
                    } else {
                        m.headers[..m.headers.len().saturating_sub(2)].to_vec()
                    };
                    block.extend_from_slice(format!("Nats-Msg-Size: {size}\r\n\r\n").as_bytes());
                    (Some(Bytes::from(block)), Bytes::new())
                } else {
                    let h = (!m.headers.is_empty()).then(|| Bytes::from(m.headers));
                    (h, Bytes::from(m.payload))
                };
                hub.inject_as(&to, &m.subject, Some(&ack), hdrs.as_ref(), &payload);
                hub.core.metrics.js_delivered.inc();
            }
            Action::FlowControl { to, reply } => {
                let block = Bytes::from(headers::block(Some("100 FlowControl Request"), &[]));
                hub.inject_as(&to, &to, Some(&reply), Some(&block), &Bytes::new());
            }
            Action::Status {
                to,
                status,
                headers: extra,
            } => {
                let pairs: Vec<(&str, &str)> = extra
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let block = Bytes::from(headers::block(Some(&status), &pairs));
                hub.inject(&to, Some(&block), &Bytes::new());
            }
            Action::GaveUp {
                sseq,
                dc,
                cseq,
                why,
                first,
            } => {
                if first {
                    tracing::info!(
                        stream = stream_name,
                        consumer,
                        sseq,
                        dc,
                        why = why.as_str(),
                        "JetStream: message given up on"
                    );
                    advise(later, stream_name, consumer, sseq, cseq, dc, why);
                }
                if let Some(to) = &c.dead_letter_subject {
                    dead_letter(later, handle, consumer, to, store, sseq, dc, why);
                }
            }
        }
    }
}

/// The advisory nats-server publishes when a consumer gives up on a message.
#[allow(clippy::too_many_arguments)]
fn advise(
    later: &mut Later,
    stream: &str,
    consumer: &str,
    sseq: u64,
    cseq: u64,
    dc: u64,
    why: GiveUp,
) {
    let (kind, event) = match why {
        GiveUp::MaxDeliver => ("MAX_DELIVERIES", "max_deliver"),
        GiveUp::Term => ("MSG_TERMINATED", "terminated"),
    };
    let mut body = json!({
        "type": format!("io.nats.jetstream.advisory.v1.{event}"),
        "id": ephemeral_name(),
        "timestamp": time(now_ns()),
        "stream": stream,
        "consumer": consumer,
        "stream_seq": sseq,
        "deliveries": dc,
    });
    if why == GiveUp::Term {
        body["consumer_seq"] = json!(cseq);
    }
    let subject = format!("$JS.EVENT.ADVISORY.CONSUMER.{kind}.{stream}.{consumer}");
    let body = Bytes::from(body.to_string());
    later.push(Box::new(move |hub| hub.emit(&subject, &body)));
}

/// Headers a dead letter does not carry over (they would act on its new stream).
const NOT_CARRIED: [&str; 6] = [
    "Nats-Msg-Id",
    "Nats-Expected-Stream",
    "Nats-Expected-Last-Sequence",
    "Nats-Expected-Last-Subject-Sequence",
    "Nats-Expected-Last-Msg-Id",
    "Nats-Rollup",
];

/// Writes given-up message `sseq` to the consumer's dead-letter subject: its headers (less
/// those that would act on the new stream) plus `Nats-DLQ-*` ones saying why and from where,
/// under a message ID unique to (stream, consumer, sequence), so a retried write is stored
/// once. The consumer lets the message go only when the write is confirmed durable.
#[allow(clippy::too_many_arguments)]
fn dead_letter(
    later: &mut Later,
    handle: &Arc<StreamHandle>,
    consumer: &str,
    to: &str,
    store: &StreamStore,
    sseq: u64,
    dc: u64,
    why: GiveUp,
) {
    let Ok(Some(m)) = store.get(sseq) else {
        // Gone from the stream meanwhile: nothing to write.
        let (handle, consumer) = (handle.clone(), consumer.to_string());
        later.push(Box::new(move |_| confirm(&handle, &consumer, sseq)));
        return;
    };
    let mut block = String::from("NATS/1.0\r\n");
    let id = format!("dlq:{}:{consumer}:{sseq}", handle.name);
    for (name, value) in [
        ("Nats-Msg-Id", id.as_str()),
        ("Nats-DLQ-Reason", why.as_str()),
        ("Nats-DLQ-Stream", handle.name.as_str()),
        ("Nats-DLQ-Consumer", consumer),
        ("Nats-DLQ-Subject", m.subject.as_str()),
        ("Nats-DLQ-Sequence", &sseq.to_string()),
        ("Nats-DLQ-Deliveries", &dc.to_string()),
    ] {
        block.push_str(&format!("{name}: {value}\r\n"));
    }
    let original = String::from_utf8_lossy(&m.headers);
    for line in original.split("\r\n").skip(1).filter(|l| !l.is_empty()) {
        let name = line.split(':').next().unwrap_or_default();
        if !NOT_CARRIED.contains(&name) {
            block.push_str(line);
            block.push_str("\r\n");
        }
    }
    block.push_str("\r\n");
    let headers = Bytes::from(block);
    let payload = Bytes::from(m.payload);
    let (handle, consumer, to) = (handle.clone(), consumer.to_string(), to.to_string());
    // Written once the consumer's and stream's locks are released (the target stream's
    // writer and the subject table take their own).
    later.push(Box::new(move |hub| {
        let (weak, name) = (Arc::downgrade(&handle), consumer.clone());
        let stored = if hub.solo() {
            let done: super::Done = Box::new(move |answer| {
                if let (Ok(_), Some(handle)) = (answer, weak.upgrade()) {
                    confirm(&handle, &name, sseq);
                }
            });
            let stored = hub
                .js
                .store_then(&to, None, Some(&headers), &payload, Some(done));
            hub.inject(&to, Some(&headers), &payload);
            stored
        } else if let Some(target) = hub.cluster.stream_of(&to) {
            // A stream of the cluster takes it, on whichever members are its peers: stored
            // once that stream's acknowledgement comes back (none, or an error: written
            // again when the consumer retries).
            let on_reply: crate::face::nats::OnReply = Box::new(move |ack| {
                let stored = serde_json::from_slice::<Value>(ack).is_ok_and(|v| {
                    v.get("error").is_none() && v.get("seq").is_some() && v["stream"] == *target
                });
                if let (true, Some(handle)) = (stored, weak.upgrade()) {
                    confirm(&handle, &name, sseq);
                }
            });
            hub.request(&to, Some(&headers), &payload, on_reply);
            true
        } else {
            hub.inject(&to, Some(&headers), &payload);
            false
        };
        if !stored {
            // No stream keeps the subject: a core message, sent now, is all there is.
            confirm(&handle, &consumer, sseq);
        }
    }));
}

/// Work a consumer's actions leave for after its locks are released: publishing
/// advisories and dead letters (they take the subject table's and other streams' locks).
pub(crate) type Later = Vec<Box<dyn FnOnce(&Hub) + Send>>;

/// Runs what was left for after the locks.
fn run_later(hub: &Hub, later: Later) {
    for f in later {
        f(hub);
    }
}

/// The dead letter of `sseq` is written: the consumer lets it go.
fn confirm(handle: &StreamHandle, consumer: &str, sseq: u64) {
    // Called from a stream's writer thread or under the consumer's own locks: the lock is
    // taken only when free of this thread (try, then leave it to the dispatcher's retry).
    let Ok(mut consumers) = handle.consumers.try_lock() else {
        handle
            .confirmed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((consumer.to_string(), sseq));
        handle.wake.notify_one();
        return;
    };
    if let Some(e) = consumers.map.get_mut(consumer) {
        e.consumer.dead_lettered(sseq);
    }
    drop(consumers);
    handle.wake.notify_one();
}

/// ConsumerInfo.
fn info(stream: &str, name: &str, e: &Entry, store: &StreamStore, push_bound: bool) -> Value {
    let c = &e.consumer;
    let st = c.state();
    let mut v = json!({
        "stream_name": stream,
        "name": name,
        "created": time(e.created),
        "config": c.config(),
        "delivered": {"consumer_seq": st.delivered.consumer_seq, "stream_seq": st.delivered.stream_seq},
        "ack_floor": {"consumer_seq": st.ack_floor.consumer_seq, "stream_seq": st.ack_floor.stream_seq},
        "num_ack_pending": st.pending.len(),
        "num_redelivered": c.num_redelivered(),
        "num_waiting": c.num_waiting(),
        "num_pending": c.num_pending(&StoreSource(store)),
        "ts": time(now_ns()),
    });
    if push_bound {
        v["push_bound"] = json!(true);
    }
    v
}

#[derive(Deserialize)]
struct CreateRequest {
    #[serde(default)]
    stream_name: Option<String>,
    config: ConsumerConfig,
    #[serde(default)]
    action: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct NextRequest {
    batch: Option<u64>,
    expires: i64,
    no_wait: bool,
    max_bytes: u64,
    idle_heartbeat: i64,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ListRequest {
    offset: usize,
}

fn ephemeral_name() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..8)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// How a `$JS.API.CONSUMER.*` request was taken.
pub(crate) enum Served {
    /// Answered with this response type and body.
    Answer(&'static str, Result<Value, ApiError>),
    /// Answered on its own (a pull request's messages and statuses go to its inbox).
    Done,
    /// Not served (the hub finds no responders).
    No,
}

/// One `$JS.API.CONSUMER.*` request.
pub(crate) fn api(hub: &Arc<Hub>, op: &str, reply: Option<&str>, payload: &[u8]) -> Served {
    match api_inner(hub, op, reply, payload) {
        Some(Some((kind, answer))) => Served::Answer(kind, answer),
        Some(None) => Served::Done,
        None => Served::No,
    }
}

fn api_inner(
    hub: &Arc<Hub>,
    op: &str,
    reply: Option<&str>,
    payload: &[u8],
) -> Option<Option<(&'static str, Result<Value, ApiError>)>> {
    let (verb, rest) = op.split_once('.')?;
    let (verb, rest) = match (verb, rest.split_once('.')) {
        ("MSG", Some(("NEXT", rest))) => ("MSG.NEXT", rest),
        ("DURABLE", Some(("CREATE", rest))) => ("DURABLE.CREATE", rest),
        _ => (verb, rest),
    };
    let (stream, tail) = match rest.split_once('.') {
        Some((s, t)) => (s, Some(t)),
        None => (rest, None),
    };
    let handle = hub.stream_handle(stream);
    match verb {
        "MSG.NEXT" => {
            let (handle, name, reply) = (handle?, tail?, reply?);
            next(hub, &handle, name, reply, payload).then_some(())?;
            Some(None)
        }
        "CREATE" | "DURABLE.CREATE" => Some(Some((
            "consumer_create",
            (|| {
                let handle = handle.ok_or_else(|| ApiError::new(404, 10059, "stream not found"))?;
                let (name, filter) = match tail {
                    Some(t) => match t.split_once('.') {
                        Some((n, f)) if verb == "CREATE" => (Some(n), Some(f)),
                        _ => (Some(t), None),
                    },
                    None => (None, None),
                };
                create(
                    hub,
                    &handle,
                    name,
                    filter,
                    verb == "DURABLE.CREATE",
                    payload,
                )
            })(),
        ))),
        "INFO" => Some(Some((
            "consumer_info",
            (|| {
                let handle = handle.ok_or_else(|| ApiError::new(404, 10059, "stream not found"))?;
                let name = tail.ok_or_else(not_found)?;
                let consumers = handle.consumers();
                let e = consumers.map.get(name).ok_or_else(not_found)?;
                let guard = handle.lock();
                let s = guard
                    .as_ref()
                    .ok_or_else(|| ApiError::new(404, 10059, "stream not found"))?;
                Ok(info(stream, name, e, s.store(), e.consumer.push_ready))
            })(),
        ))),
        "DELETE" => Some(Some((
            "consumer_delete",
            (|| {
                let handle = handle.ok_or_else(|| ApiError::new(404, 10059, "stream not found"))?;
                let name = tail.ok_or_else(not_found)?;
                delete(hub, &handle, name)?;
                Ok(json!({"success": true}))
            })(),
        ))),
        "NAMES" | "LIST" if tail.is_none() => {
            let names = verb == "NAMES";
            let kind = if names {
                "consumer_names"
            } else {
                "consumer_list"
            };
            Some(Some((
                kind,
                (|| {
                    let handle =
                        handle.ok_or_else(|| ApiError::new(404, 10059, "stream not found"))?;
                    let req: ListRequest = super::api::body(payload)?;
                    let consumers = handle.consumers();
                    let total = consumers.map.len();
                    let limit = if names { NAMES_LIMIT } else { LIST_LIMIT };
                    let page = consumers.map.iter().skip(req.offset).take(limit);
                    let items: Vec<Value> = if names {
                        page.map(|(n, _)| json!(n)).collect()
                    } else {
                        let guard = handle.lock();
                        let s = guard
                            .as_ref()
                            .ok_or_else(|| ApiError::new(404, 10059, "stream not found"))?;
                        page.map(|(n, e)| info(stream, n, e, s.store(), e.consumer.push_ready))
                            .collect()
                    };
                    Ok(
                        json!({"total": total, "offset": req.offset, "limit": limit, "consumers": items}),
                    )
                })(),
            )))
        }
        _ => None,
    }
}

fn create(
    hub: &Arc<Hub>,
    handle: &Arc<StreamHandle>,
    name: Option<&str>,
    filter: Option<&str>,
    legacy_durable: bool,
    payload: &[u8],
) -> Result<Value, ApiError> {
    let req: CreateRequest = serde_json::from_slice(payload)
        .map_err(|e| ApiError::new(400, 10025, format!("invalid JSON: {e}")))?;
    if req.stream_name.as_deref().is_some_and(|s| s != handle.name) {
        return Err(ApiError::new(
            400,
            10056,
            "stream name in subject does not match request",
        ));
    }
    let mut config = req.config;
    if let Some(n) = name {
        if legacy_durable && config.durable_name.as_deref() != Some(n) {
            return Err(ApiError::new(
                400,
                10016,
                "consumer expected to be durable but a durable name was not set",
            ));
        }
        match (&config.name, &config.durable_name) {
            (Some(x), _) | (None, Some(x)) if x != n => {
                return Err(ApiError::new(
                    400,
                    10017,
                    "consumer name in subject does not match durable name in request",
                ))
            }
            _ => {}
        }
        if config.name.is_none() {
            config.name = Some(n.to_string());
        }
    }
    if let Some(f) = filter {
        let configured = config.filter_subject.as_deref().unwrap_or_default();
        if configured != f && !(configured.is_empty() && config.filter_subjects.is_empty()) {
            return Err(ApiError::new(
                400,
                10131,
                "Consumer create request did not match filtered subject from create subject",
            ));
        }
        config.filter_subject = Some(f.to_string());
    }
    let mut consumers = handle.consumers();
    let guard = handle.lock();
    let stream = guard
        .as_ref()
        .ok_or_else(|| ApiError::new(404, 10059, "stream not found"))?;
    config.check(&stream.config().subjects)?;
    let name = config.name.clone().unwrap_or_else(ephemeral_name);
    if handle.saver.is_some() && name.len() > 200 {
        return Err(ApiError::new(
            400,
            10003,
            "bad request: consumer name is too long",
        ));
    }
    config.name = Some(name.clone());
    if stream.config().retention == Retention::WorkQueue {
        let others: Vec<&ConsumerConfig> = consumers
            .map
            .iter()
            .filter(|(n, _)| **n != name)
            .map(|(_, e)| e.consumer.config())
            .collect();
        config.check_work_queue(&others)?;
    }
    let now = now_ns();
    let action = req.action.as_deref().unwrap_or("");
    if let Some(e) = consumers.map.get_mut(&name) {
        // The same configuration again: idempotent, whatever the action.
        if *e.consumer.config() == config {
            return Ok(info(
                &handle.name,
                &name,
                e,
                stream.store(),
                e.consumer.push_ready,
            ));
        }
        if action == "create" {
            return Err(ApiError::new(400, 10148, "consumer already exists"));
        }
        e.consumer.config().check_update(&config)?;
        e.consumer.set_config(config);
        tracing::info!(stream = %handle.name, consumer = %name, "JetStream consumer updated");
    } else {
        if action == "update" {
            return Err(ApiError::new(400, 10149, "consumer does not exist"));
        }
        let max = stream.config().max_consumers;
        if max > 0 && consumers.map.len() as i64 >= max {
            return Err(ApiError::new(400, 10026, "maximum consumers limit reached"));
        }
        let consumer = Consumer::new(config, &StoreSource(stream.store()), now);
        consumers.map.insert(
            name.clone(),
            Entry {
                consumer,
                created: now,
                ack_replies: Vec::new(),
            },
        );
        tracing::info!(stream = %handle.name, consumer = %name, "JetStream consumer created");
    }
    let e = consumers.map.get_mut(&name).ok_or_else(not_found)?;
    // Saved before it is answered, so a created consumer survives a crash.
    save(hub, handle, &name, e)?;
    let _ = e.consumer.take_dirty();
    let v = info(
        &handle.name,
        &name,
        e,
        stream.store(),
        e.consumer.push_ready,
    );
    drop(guard);
    drop(consumers);
    handle.refresh_interest();
    handle.wake.notify_one();
    Ok(v)
}

/// Saves a consumer's state: to its file, or (a replicated stream's) to the saver, which
/// proposes it to the group.
fn save(hub: &Hub, handle: &StreamHandle, name: &str, e: &Entry) -> Result<(), ApiError> {
    let saved = Saved {
        config: e.consumer.config().clone(),
        state: e.consumer.state().clone(),
        created: e.created,
    };
    let json = serde_json::to_vec(&saved).map_err(|e| ApiError::new(500, 10049, e.to_string()))?;
    if let Some(saver) = &handle.saver {
        return saver
            .send(SaverMsg::Save(name.to_string(), json))
            .map_err(|_| {
                ApiError::new(
                    503,
                    10008,
                    "JetStream system temporarily unavailable: the stream's leader stepped down",
                )
            });
    }
    let dir = dir_of(hub, &handle.name);
    std::fs::create_dir_all(&dir).map_err(|e| ApiError::io(&e))?;
    crate::durable_file::write(&dir.join(format!("{name}.json")), &json)
        .map_err(|e| ApiError::io(&e))
}

fn delete(hub: &Hub, handle: &StreamHandle, name: &str) -> Result<(), ApiError> {
    let mut consumers = handle.consumers();
    let mut e = consumers.map.remove(name).ok_or_else(not_found)?;
    for a in e.consumer.close("409 Consumer Deleted") {
        if let Action::Status { to, status, .. } = a {
            let block = Bytes::from(headers::block(Some(&status), &[]));
            hub.inject(&to, Some(&block), &Bytes::new());
        }
    }
    if let Some(saver) = &handle.saver {
        let _ = saver.send(SaverMsg::Save(name.to_string(), Vec::new()));
    } else {
        let path = dir_of(hub, &handle.name).join(format!("{name}.json"));
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ApiError::io(&e)),
        }
    }
    drop(consumers);
    handle.refresh_interest();
    tracing::info!(stream = %handle.name, consumer = name, "JetStream consumer deleted");
    Ok(())
}

/// A pull request: false when the consumer does not exist (no responders).
fn next(hub: &Hub, handle: &Arc<StreamHandle>, name: &str, reply: &str, payload: &[u8]) -> bool {
    let text = std::str::from_utf8(payload).unwrap_or("").trim();
    let req = if text.is_empty() {
        Ok(NextRequest::default())
    } else if let Ok(n) = text.parse::<u64>() {
        Ok(NextRequest {
            batch: Some(n),
            ..Default::default()
        })
    } else {
        serde_json::from_str::<NextRequest>(text).map_err(|e| e.to_string())
    };
    let mut consumers = handle.consumers();
    let Some(e) = consumers.map.get_mut(name) else {
        return false;
    };
    let bad = |why: String| {
        let block = Bytes::from(headers::block(
            Some(&format!("400 Bad Request - {why}")),
            &[],
        ));
        hub.inject(reply, Some(&block), &Bytes::new());
        true
    };
    let req = match req {
        Ok(r) if r.expires >= 0 && r.idle_heartbeat >= 0 => r,
        Ok(_) => return bad("negative durations".into()),
        Err(e) => return bad(e),
    };
    let now = now_ns();
    let pull = PullRequest {
        reply: reply.to_string(),
        batch: req.batch.unwrap_or(1).max(1),
        max_bytes: req.max_bytes,
        expires: if req.expires > 0 {
            now.saturating_add(req.expires)
        } else {
            0
        },
        no_wait: req.no_wait,
        heartbeat: req.idle_heartbeat,
        next_beat: now.saturating_add(req.idle_heartbeat),
        delivered_any: false,
    };
    let guard = handle.lock();
    let Some(stream) = guard.as_ref() else {
        return false;
    };
    let mut later = Later::new();
    drive(
        hub,
        handle,
        name,
        &mut e.consumer,
        stream.store(),
        &mut later,
        |c, src| c.pull(pull, src, now),
    );
    drop(guard);
    drop(consumers);
    run_later(hub, later);
    handle.wake.notify_one();
    true
}

/// An ack (`$JS.ACK.<stream>.<consumer>.<dc>.<sseq>.<cseq>.<ts>.<pending>`) or a flow
/// control reply (`$JS.FC.…`); true when it was one.
pub(crate) fn ack(hub: &Hub, subject: &str, reply: Option<&str>, payload: &[u8]) -> bool {
    let tokens: Vec<&str> = subject.split('.').collect();
    if tokens.len() == 5 && tokens[1] == "FC" {
        flow_answered(hub, tokens[2], tokens[3], subject);
        return true;
    }
    if tokens.len() != 9 || tokens[1] != "ACK" {
        return subject.starts_with("$JS.FC.");
    }
    let (stream, name) = (tokens[2], tokens[3]);
    let Ok(sseq) = tokens[5].parse::<u64>() else {
        return true;
    };
    let Some(handle) = hub.stream_handle(stream) else {
        return true;
    };
    let body = std::str::from_utf8(payload).unwrap_or("").trim();
    let (kind, next_req) = match body
        .split_once(' ')
        .map_or((body, ""), |(k, r)| (k, r.trim()))
    {
        ("" | "+ACK" | "+OK", _) => (Ack::Ack, None),
        ("+NXT", rest) => (Ack::Ack, Some(rest.to_string())),
        ("-NAK", rest) => (Ack::Nak(nak_delay(rest)), None),
        ("+WPI", _) => (Ack::Progress, None),
        ("+TERM", _) => (Ack::Term, None),
        _ => return true,
    };
    let now = now_ns();
    let mut consumers = handle.consumers();
    let Some(e) = consumers.map.get_mut(name) else {
        return true;
    };
    let mut later = Later::new();
    let was = e.consumer.state().pending.get(&sseq).copied();
    let acked = e.consumer.ack_seqs(sseq, kind, now);
    if let Some(seqs) = acked.as_ref().filter(|s| !s.is_empty()) {
        retire(handle.as_ref(), &consumers.map, seqs);
    }
    let Some(e) = consumers.map.get_mut(name) else {
        return true;
    };
    if acked.is_some() {
        if let (Ack::Nak(_), Some(p)) = (kind, was) {
            let body = json!({
                "type": "io.nats.jetstream.advisory.v1.nak",
                "id": ephemeral_name(),
                "timestamp": time(now),
                "stream": stream,
                "consumer": name,
                "consumer_seq": p.cseq,
                "stream_seq": sseq,
                "deliveries": p.dc,
            });
            let subject = format!("$JS.EVENT.ADVISORY.CONSUMER.MSG_NAKED.{stream}.{name}");
            let body = Bytes::from(body.to_string());
            later.push(Box::new(move |hub| hub.emit(&subject, &body)));
        }
    }
    hub.core.metrics.js_acks.inc();
    if let Some(r) = reply {
        if next_req.is_none() {
            e.ack_replies.push(r.to_string());
        }
    }
    poll_locked(hub, &handle, name, &mut e.consumer, now, &mut later);
    drop(consumers);
    run_later(hub, later);
    if let (Some(r), Some(next_body)) = (reply, next_req) {
        let body = if next_body.is_empty() {
            "1".to_string()
        } else {
            next_body
        };
        next(hub, &handle, name, r, body.as_bytes());
    }
    handle.wake.notify_one();
    true
}

/// A push client answered flow control request `reply` of consumer `name`: delivery goes on
/// if it waited on it.
fn flow_answered(hub: &Hub, stream: &str, name: &str, reply: &str) {
    let Some(handle) = hub.stream_handle(stream) else {
        return;
    };
    let mut consumers = handle.consumers();
    let Some(e) = consumers.map.get_mut(name) else {
        return;
    };
    if !e.consumer.flow_answered(reply) {
        return;
    }
    let mut later = Later::new();
    poll_locked(hub, &handle, name, &mut e.consumer, now_ns(), &mut later);
    drop(consumers);
    run_later(hub, later);
    handle.wake.notify_one();
}

/// One poll of `consumer` (`name`) under its stream's lock, its actions carried out.
fn poll_locked(
    hub: &Hub,
    handle: &Arc<StreamHandle>,
    name: &str,
    consumer: &mut Consumer,
    now: i64,
    later: &mut Later,
) {
    let guard = handle.lock();
    if let Some(stream) = guard.as_ref() {
        drive(
            hub,
            handle,
            name,
            consumer,
            stream.store(),
            later,
            |c, src| c.poll(src, now),
        );
    }
}

/// Drops acknowledged messages an interest or work-queue stream no longer keeps: on a work
/// queue, what one consumer acked; on an interest stream, what every consumer reaching its
/// subject is done with. A replicated stream drops them through its group (the saver
/// proposes them before the consumers' states saved after).
fn retire(handle: &StreamHandle, consumers: &BTreeMap<String, Entry>, seqs: &[u64]) {
    let mut guard = handle.lock();
    let Some(stream) = guard.as_mut() else { return };
    let drop: Vec<u64> = match stream.config().retention {
        Retention::Limits => return,
        Retention::WorkQueue => seqs.to_vec(),
        Retention::Interest => seqs
            .iter()
            .copied()
            .filter(|s| done_with(stream, consumers, *s))
            .collect(),
    };
    if drop.is_empty() {
        return;
    }
    if let Some(saver) = &handle.saver {
        // Stepped down if it is gone: the next leader finds them (`leftovers`).
        let _ = saver.send(SaverMsg::Retire(drop));
        return;
    }
    if let Err(e) = stream.retire(&drop) {
        tracing::error!(stream = %handle.name, error = %e, "JetStream: dropping acknowledged messages failed");
    }
}

/// The most stored messages a new leader looks at for leftovers.
const LEFTOVER_SCAN: usize = 1_000_000;

/// Whether an interest or work-queue stream's consumers are done with stored message `seq`:
/// on a work queue, acknowledged by a consumer reaching its subject; on an interest stream,
/// by every consumer reaching it.
fn done_with(stream: &Stream, consumers: &BTreeMap<String, Entry>, seq: u64) -> bool {
    let Some(subject) = stream.store().subject_of(seq) else {
        return false;
    };
    let mut reaching = consumers
        .values()
        .filter(|e| e.consumer.config().reaches(subject));
    match stream.config().retention {
        Retention::Limits => false,
        Retention::WorkQueue => reaching.any(|e| e.consumer.has_acked(seq)),
        Retention::Interest => reaching.all(|e| e.consumer.has_acked(seq)),
    }
}

/// The messages of an interest or work-queue stream its consumers are done with but that are
/// still stored: a replicated stream's leader that stepped down (or whose drop was not
/// committed) may leave some, and its successor drops them once it restored the consumers.
/// Only messages up to the furthest delivered are looked at, and at most
/// [`LEFTOVER_SCAN`] of them (the stream's lock is held meanwhile; a work queue's stored
/// messages below that point are its pending ones and those no consumer reaches).
pub(crate) fn leftovers(handle: &StreamHandle) -> Vec<u64> {
    let consumers = handle.consumers();
    let guard = handle.lock();
    let Some(stream) = guard.as_ref() else {
        return Vec::new();
    };
    if stream.config().retention == Retention::Limits {
        return Vec::new();
    }
    let upto = consumers
        .map
        .values()
        .map(|e| e.consumer.state().delivered.stream_seq)
        .max()
        .unwrap_or(0);
    let mut out = Vec::new();
    let mut from = stream.store().state().first_seq;
    let mut scanned = 0;
    while let Some((seq, _)) = stream.store().next_of(from, &[]) {
        if seq > upto || scanned == LEFTOVER_SCAN {
            break;
        }
        scanned += 1;
        if done_with(stream, &consumers.map, seq) {
            out.push(seq);
        }
        from = seq + 1;
    }
    out
}

/// `-NAK`'s delay: `{"delay": ns}` or a Go duration; none is 0.
fn nak_delay(rest: &str) -> i64 {
    if rest.is_empty() {
        return 0;
    }
    if let Ok(v) = serde_json::from_str::<Value>(rest) {
        return v["delay"].as_i64().unwrap_or(0);
    }
    humantime::parse_duration(rest).map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// A stream's dispatcher: runs consumers' timers, deliveries of newly stored messages and
/// push interest, saves changed states and deletes inactive ephemerals, until the stream
/// goes.
pub(crate) async fn dispatch(hub: std::sync::Weak<Hub>, handle: Arc<StreamHandle>) {
    loop {
        let Some(hub) = hub.upgrade() else { return };
        if handle.lock().is_none() || handle.is_closed() {
            return;
        }
        let now = now_ns();
        let wait = step(&hub, &handle, now);
        drop(hub);
        let wait = wait.clamp(Duration::from_millis(1), Duration::from_secs(1));
        tokio::select! {
            _ = handle.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// One round of the dispatcher; returns how long it may sleep.
fn step(hub: &Hub, handle: &Arc<StreamHandle>, now: i64) -> Duration {
    let confirmed: Vec<(String, u64)> =
        std::mem::take(&mut *handle.confirmed.lock().unwrap_or_else(|p| p.into_inner()));
    let mut consumers = handle.consumers();
    for (name, sseq) in confirmed {
        if let Some(e) = consumers.map.get_mut(&name) {
            e.consumer.dead_lettered(sseq);
        }
    }
    let guard = handle.lock();
    let Some(stream) = guard.as_ref() else {
        return Duration::from_secs(1);
    };
    let mut later = Later::new();
    let mut next: Option<i64> = None;
    let mut gone = Vec::new();
    let mut poll_interest = false;
    for (name, e) in consumers.map.iter_mut() {
        let c = &mut e.consumer;
        if let Some(to) = c.config().deliver_subject.clone() {
            c.push_ready = hub.has_interest(&to);
            poll_interest |= !c.push_ready;
        }
        drive(
            hub,
            handle,
            name,
            c,
            stream.store(),
            &mut later,
            |c, src| c.tick(src, now),
        );
        let config = c.config();
        if !config.is_durable()
            && config.inactive_threshold > 0
            && now - c.last_active > config.inactive_threshold
            && c.num_waiting() == 0
            && !c.push_ready
        {
            gone.push(name.clone());
        }
        if let Some(d) = c.next_deadline() {
            next = Some(next.map_or(d, |n: i64| n.min(d)));
        }
    }
    drop(guard);
    // Save what changed, at most every SAVE_EVERY (or now, when an ack waits for it).
    let waiting_acks = consumers.map.values().any(|e| !e.ack_replies.is_empty());
    if waiting_acks || now - consumers.saved_at >= SAVE_EVERY.as_nanos() as i64 {
        consumers.saved_at = now;
        let stream_name = handle.name.clone();
        let mut replies = Vec::new();
        for (name, e) in consumers.map.iter_mut() {
            if e.consumer.take_dirty() {
                if let Err(err) = save(hub, handle, name, e) {
                    // Tried again next round; the acks that wait for it are not answered.
                    tracing::error!(stream = %stream_name, consumer = %name, error = %err, "JetStream: saving a consumer failed");
                    e.consumer.mark_dirty();
                    continue;
                }
            }
            replies.append(&mut e.ack_replies);
        }
        match &handle.saver {
            // Answered once the states saved above are committed.
            Some(saver) if !replies.is_empty() => {
                let _ = saver.send(SaverMsg::Replies(replies));
            }
            Some(_) => {}
            None => {
                for r in replies {
                    hub.inject(&r, None, &Bytes::new());
                }
            }
        }
    }
    let dirty = consumers.map.values().any(|e| e.consumer.is_dirty());
    drop(consumers);
    run_later(hub, later);
    for name in gone {
        if delete(hub, handle, &name).is_ok() {
            tracing::info!(stream = %handle.name, consumer = %name, "JetStream ephemeral consumer inactive: deleted");
        }
    }
    let mut wait = next.map_or(Duration::from_secs(1), |d| {
        Duration::from_nanos(u64::try_from(d - now).unwrap_or(0))
    });
    if poll_interest {
        wait = wait.min(INTEREST_POLL);
    }
    if dirty {
        wait = wait.min(SAVE_EVERY);
    }
    wait
}
