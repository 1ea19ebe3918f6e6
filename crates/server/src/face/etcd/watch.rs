//! etcd `Watch` service: one bidirectional stream carries many watches. A receive task turns
//! requests into store watches; a send task is the only writer to the client, in order.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_proto::etcd_watch::watch_server::Watch;
use berth_proto::etcdserverpb::watch_create_request::FilterType;
use berth_proto::etcdserverpb::watch_request::RequestUnion;
use berth_proto::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse};
use berth_proto::watch_frame::{encode_events, encode_header, WatchFrame};
use berth_store::{Delivery, KeySpan, Keyspace, WatchHandle, WatchSink, WatchSpec};
use bytes::Bytes;
use futures::{stream, Stream, StreamExt};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::Headers as _;
use crate::auth::Credential;
use crate::core::Core;
use crate::face::etcd::errors::ApiError;
use berth_auth::Access;

/// Deliveries (one per committed batch that concerns the stream, each carrying a response for
/// every watch of the stream that wants it) buffered between the store and the sender before
/// the stream's watchers are considered slow and switched to replaying from history.
const EVENT_BUFFER: usize = 1024;
/// How often pending progress notifications are reconsidered.
const PROGRESS_TICK: Duration = Duration::from_millis(100);

/// The Watch service.
pub struct WatchService {
    core: Arc<Core>,
    progress_interval: Duration,
}

impl WatchService {
    /// Creates the service; `progress_interval` paces `progress_notify` responses.
    pub fn new(core: Arc<Core>, progress_interval: Duration) -> Self {
        Self {
            core,
            progress_interval,
        }
    }
}

struct Entry {
    handle: Option<WatchHandle>,
    prev_kv: bool,
    progress_notify: bool,
    fragment: bool,
}

#[derive(Default)]
struct StreamState {
    watches: HashMap<i64, Entry>,
    next_id: i64,
}

type Shared = Arc<Mutex<StreamState>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, StreamState> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

enum Ctrl {
    Send(WatchResponse),
    Progress,
}

/// The frames of one watch stream.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchFrame, Status>> + Send>>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<WatchStream>, Status> {
        // Checked at each create, against the auth state of that moment (as etcd).
        let cred = super::credential(&req);
        Ok(Response::new(self.open(cred, req.into_inner())))
    }
}

/// Requests of one watch stream, from gRPC or from the JSON gateway.
pub type Inbound = Pin<Box<dyn Stream<Item = Result<WatchRequest, Status>> + Send>>;

impl WatchService {
    /// Serves one watch stream: `inbound` requests, on behalf of `cred`, to the frames
    /// returned (the gRPC service and the JSON gateway share this).
    pub fn open(
        &self,
        cred: Credential,
        inbound: impl Stream<Item = Result<WatchRequest, Status>> + Send + 'static,
    ) -> WatchStream {
        let inbound: Inbound = Box::pin(inbound);
        let (out_tx, out_rx) = mpsc::channel::<Vec<WatchFrame>>(16);
        let (ev_tx, ev_rx) = mpsc::channel(EVENT_BUFFER);
        let sink = WatchSink::new(ev_tx);
        let (ctrl_tx, ctrl_rx) = mpsc::channel(256);
        let state: Shared = Arc::default();
        tokio::spawn(receive(
            self.core.clone(),
            cred,
            inbound,
            ctrl_tx,
            sink,
            state.clone(),
        ));
        tokio::spawn(send(
            self.core.clone(),
            ev_rx,
            ctrl_rx,
            out_tx,
            state,
            self.progress_interval,
        ));
        let responses =
            ReceiverStream::new(out_rx).flat_map(|batch| stream::iter(batch.into_iter().map(Ok)));
        Box::pin(responses)
    }
}

fn cancel_all(node: &Core, state: &Shared) {
    for (_, e) in lock(state).watches.drain() {
        if let Some(h) = e.handle {
            node.store.cancel_watch(&h);
        }
    }
}

async fn receive(
    node: Arc<Core>,
    cred: Credential,
    mut inbound: Inbound,
    ctrl: mpsc::Sender<Ctrl>,
    events: WatchSink,
    state: Shared,
) {
    loop {
        let msg = match inbound.next().await {
            Some(Ok(m)) => m,
            // The client closed its sending side: existing watches keep running, as in etcd.
            None => return,
            Some(Err(status)) => {
                tracing::debug!(%status, "watch stream ended");
                cancel_all(&node, &state);
                return;
            }
        };
        let reply = match msg.request_union {
            Some(RequestUnion::CreateRequest(c)) => {
                create(&node, &cred, c, &ctrl, &events, &state).await
            }
            Some(RequestUnion::CancelRequest(c)) => {
                let entry = lock(&state).watches.remove(&c.watch_id);
                entry.map(|e| {
                    if let Some(h) = e.handle {
                        node.store.cancel_watch(&h);
                    }
                    Ctrl::Send(WatchResponse {
                        header: node.header(node.store.revision()),
                        watch_id: c.watch_id,
                        canceled: true,
                        ..Default::default()
                    })
                })
            }
            Some(RequestUnion::ProgressRequest(_)) => Some(Ctrl::Progress),
            None => None,
        };
        if let Some(r) = reply {
            if ctrl.send(r).await.is_err() {
                cancel_all(&node, &state);
                return;
            }
        }
    }
}

/// Registers one watch. The "created" response is queued before the watch starts so it
/// always reaches the client ahead of the watch's first event.
async fn create(
    node: &Core,
    cred: &Credential,
    c: WatchCreateRequest,
    ctrl: &mpsc::Sender<Ctrl>,
    events: &WatchSink,
    state: &Shared,
) -> Option<Ctrl> {
    let current = node.store.revision();
    let key = if c.key.is_empty() {
        vec![0]
    } else {
        c.key.clone()
    };
    let span = KeySpan::new(&key, &c.range_end);
    let refuse = |watch_id: i64, reason: &str| {
        Some(Ctrl::Send(WatchResponse {
            header: node.header(current),
            watch_id,
            created: true,
            canceled: true,
            cancel_reason: reason.to_string(),
            ..Default::default()
        }))
    };
    if matches!(&span, KeySpan::Range(s, e) if e <= s) {
        return refuse(-1, "mvcc: watcher range is empty");
    }
    let allowed = node
        .auth
        .principal(cred)
        .and_then(|p| p.check(Keyspace::User, Access::Read, &key, &c.range_end));
    if let Err(e) = allowed {
        tracing::debug!(error = %e, "watch refused");
        return refuse(c.watch_id, &ApiError::from(e).to_string());
    }
    let id = {
        let mut st = lock(state);
        let id = if c.watch_id != 0 {
            if st.watches.contains_key(&c.watch_id) {
                return refuse(-1, "mvcc: duplicate watch ID provided on the WatchStream");
            }
            c.watch_id
        } else {
            while st.watches.contains_key(&st.next_id) {
                st.next_id += 1;
            }
            let id = st.next_id;
            st.next_id += 1;
            id
        };
        st.watches.insert(
            id,
            Entry {
                handle: None,
                prev_kv: c.prev_kv,
                progress_notify: c.progress_notify,
                fragment: c.fragment,
            },
        );
        id
    };
    let created = WatchResponse {
        header: node.header(current),
        watch_id: id,
        created: true,
        ..Default::default()
    };
    ctrl.send(Ctrl::Send(created)).await.ok()?;
    let spec = WatchSpec {
        keyspace: Keyspace::User,
        span,
        start_rev: c.start_revision.max(0),
        no_put: c.filters.contains(&(FilterType::Noput as i32)),
        no_delete: c.filters.contains(&(FilterType::Nodelete as i32)),
    };
    let handle = node.store.watch(spec, id, events.clone());
    tracing::debug!(watch_id = id, start = c.start_revision, "watch created");
    let mut st = lock(state);
    match st.watches.get_mut(&id) {
        Some(e) => e.handle = Some(handle),
        // Cancelled while being created.
        None => node.store.cancel_watch(&handle),
    }
    // Nothing more to send: the created response is already queued.
    None
}

async fn send(
    node: Arc<Core>,
    mut events: mpsc::Receiver<Delivery>,
    mut ctrl: mpsc::Receiver<Ctrl>,
    out: mpsc::Sender<Vec<WatchFrame>>,
    state: Shared,
    progress_interval: Duration,
) {
    let mut tick = tokio::time::interval(PROGRESS_TICK);
    let mut ctrl_open = true;
    let mut progress_pending = false;
    let mut last_notify = Instant::now();
    loop {
        let ok = tokio::select! {
            biased;
            c = ctrl.recv(), if ctrl_open => match c {
                Some(Ctrl::Send(resp)) => out.send(vec![WatchFrame::Message(resp)]).await.is_ok(),
                Some(Ctrl::Progress) => {
                    progress_pending = true;
                    true
                }
                None => {
                    ctrl_open = false;
                    true
                }
            },
            ev = events.recv() => match ev {
                Some(delivery) => forward(&node, &state, delivery, &out).await,
                None => false,
            },
            _ = tick.tick() => {
                let mut ok = true;
                if progress_pending {
                    ok = progress(&node, &state, &mut events, &out, None).await.map(|sent| {
                        progress_pending = !sent;
                    }).is_ok();
                }
                if ok && last_notify.elapsed() >= progress_interval {
                    last_notify = Instant::now();
                    ok = progress(&node, &state, &mut events, &out, Some(())).await.is_ok();
                }
                ok
            }
            _ = out.closed() => false,
        };
        if !ok {
            break;
        }
    }
    cancel_all(&node, &state);
}

/// Turns a store delivery into the stream's responses (header, prev_kv, fragments) and sends
/// them as one batch; false when the client is gone. Watchers that need nothing of their own
/// get frames sharing one encoding of the header and of each distinct event list.
async fn forward(
    node: &Core,
    state: &Shared,
    delivery: Delivery,
    out: &mpsc::Sender<Vec<WatchFrame>>,
) -> bool {
    // Each item's (prev_kv, fragment) flags, or None when its watch was cancelled meanwhile
    // (what was already in flight for it is dropped).
    let flags: Vec<Option<(bool, bool)>> = {
        let mut st = lock(state);
        delivery
            .items
            .iter()
            .map(|item| {
                let entry = st.watches.get(&item.watch_id)?;
                let flags = (entry.prev_kv, entry.fragment);
                if item.compact_revision != 0 {
                    st.watches.remove(&item.watch_id);
                }
                Some(flags)
            })
            .collect()
    };
    let header = node.header(delivery.revision);
    let header_bytes = header.as_ref().map(encode_header).unwrap_or_default();
    // Encoded event lists by the address of their shared allocation.
    let mut encoded: HashMap<usize, Bytes> = HashMap::new();
    let limit = node.config.max_request_bytes;
    let mut batch = Vec::with_capacity(delivery.items.len());
    let mut events = 0;
    for (item, flags) in delivery.items.into_iter().zip(flags) {
        let Some((prev_kv, fragment)) = flags else {
            continue;
        };
        events += item.events.len();
        if !prev_kv && item.compact_revision == 0 {
            let key = item.events.as_ptr() as usize;
            let bytes = encoded
                .entry(key)
                .or_insert_with(|| encode_events(&item.events))
                .clone();
            if !fragment || header_bytes.len() + bytes.len() + 11 <= limit {
                batch.push(WatchFrame::Shared {
                    header: header_bytes.clone(),
                    watch_id: item.watch_id,
                    events: bytes,
                });
                continue;
            }
        }
        let mut resp = WatchResponse {
            header,
            watch_id: item.watch_id,
            events: item.events.to_vec(),
            compact_revision: item.compact_revision,
            canceled: item.compact_revision != 0,
            ..Default::default()
        };
        if prev_kv {
            for ev in &mut resp.events {
                if let Some(kv) = &ev.kv {
                    match node.store.get_at(&kv.key, kv.mod_revision - 1) {
                        Ok(prev) => ev.prev_kv = prev,
                        Err(e) => tracing::warn!(error = %e, "reading prev_kv for a watch event"),
                    }
                }
            }
        }
        if fragment && resp.encoded_len() > limit {
            batch.extend(fragments(resp, limit).into_iter().map(WatchFrame::Message));
        } else {
            batch.push(WatchFrame::Message(resp));
        }
    }
    node.metrics.watch_events.inc_by(events as u64);
    batch.is_empty() || out.send(batch).await.is_ok()
}

/// Splits a response whose events exceed `limit` bytes into several, each marked
/// `fragment` except the last, as etcd does for watchers that asked for fragmentation.
fn fragments(resp: WatchResponse, limit: usize) -> Vec<WatchResponse> {
    let mut parts = Vec::new();
    let mut current = WatchResponse {
        events: Vec::new(),
        ..resp.clone()
    };
    let base = current.encoded_len();
    let mut size = base;
    for ev in resp.events {
        let len = ev.encoded_len() + 8;
        if !current.events.is_empty() && size + len > limit {
            let next = WatchResponse {
                events: Vec::new(),
                ..current.clone()
            };
            current.fragment = true;
            parts.push(std::mem::replace(&mut current, next));
            size = base;
        }
        size += len;
        current.events.push(ev);
    }
    parts.push(current);
    parts
}

/// Sends a progress notification: to the whole stream (`per_watcher` None, watch_id -1) once
/// every watch is live, or to each live `progress_notify` watcher. Events up to the promised
/// revision are flushed first so the promise holds. Returns whether it was sent.
async fn progress(
    node: &Core,
    state: &Shared,
    events: &mut mpsc::Receiver<Delivery>,
    out: &mpsc::Sender<Vec<WatchFrame>>,
    per_watcher: Option<()>,
) -> Result<bool, ()> {
    let rev = node.store.progress_revision();
    while let Ok(delivery) = events.try_recv() {
        if !forward(node, state, delivery, out).await {
            return Err(());
        }
    }
    let targets: Vec<i64> = {
        let st = lock(state);
        let synced = |e: &Entry| {
            e.handle
                .as_ref()
                .is_some_and(|h| node.store.watch_synced(h))
        };
        match per_watcher {
            None => {
                if !st.watches.values().all(synced) {
                    return Ok(false);
                }
                vec![-1]
            }
            Some(()) => st
                .watches
                .iter()
                .filter(|(_, e)| e.progress_notify && synced(e))
                .map(|(id, _)| *id)
                .collect(),
        }
    };
    for watch_id in targets {
        let resp = WatchResponse {
            header: node.header(rev),
            watch_id,
            ..Default::default()
        };
        out.send(vec![WatchFrame::Message(resp)])
            .await
            .map_err(|_| ())?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::mvccpb::{Event, KeyValue};

    #[test]
    fn large_responses_split_into_fragments() {
        let events: Vec<Event> = (0..10)
            .map(|i| Event {
                kv: Some(KeyValue {
                    key: format!("k{i}").into_bytes(),
                    value: vec![b'v'; 100],
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect();
        let resp = WatchResponse {
            watch_id: 3,
            events: events.clone(),
            ..Default::default()
        };
        let parts = fragments(resp, 350);
        assert!(parts.len() > 3);
        assert!(parts
            .iter()
            .all(|p| p.encoded_len() <= 350 && p.watch_id == 3));
        assert!(parts[..parts.len() - 1].iter().all(|p| p.fragment));
        assert!(!parts[parts.len() - 1].fragment);
        let joined: Vec<Event> = parts.into_iter().flat_map(|p| p.events).collect();
        assert_eq!(joined, events);
    }
}
