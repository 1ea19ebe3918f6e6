//! Core NATS across the members of a cluster, as nats-server's routes: every member tells
//! every other which subjects its clients subscribe to, and a message published on one member
//! goes to the members with matching interest, once each (`berth.nats.NatsRoute`, on the peer
//! port with the peer identity checks of Raft's service). A client may connect to any member.
//!
//! - Outbound, one [`Link`] per other member: a task that opens a stream to it, sends this
//!   member's whole interest, then every change of it and the messages forwarded there, in
//!   the order they happened. A reply subject's interest therefore reaches a member before a
//!   request naming it. When the stream fails, the task reopens it after a backoff, dropping
//!   what was queued meanwhile (the next stream starts from the whole interest again).
//! - Inbound, the service: each peer's interest goes into a table of its own entries
//!   ([`Routes::remote_matches`]); when the peer's stream ends, its interest is forgotten, so a
//!   member that dies stops receiving messages (and a request only it answered gets the
//!   no-responders status).
//! - Forwarded messages are delivered to the receiver's own subscribers only (the members are
//!   a full mesh: one hop). Queue groups prefer local members, as nats-server's do: a group
//!   with a member on the publishing member is served there; otherwise one member holding the
//!   group is chosen, and it picks one of its subscribers.
//!
//! Core messages are at most once: messages queued for a member beyond `--nats-max-pending`
//! bytes, or while its stream is down, are dropped and counted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use berth_consensus::PeerChannel;
use berth_messaging::interest::{self, Pair};
use berth_messaging::{subject, Change, InterestBook, Matches, Sublist};
use berth_proto::berth::nats::nats_route_client::NatsRouteClient;
use berth_proto::berth::nats::nats_route_server::{NatsRoute, NatsRouteServer};
use berth_proto::berth::nats::route_item::Kind;
use berth_proto::berth::nats::{Forward, Interest, LinkEnd, RouteFrame, RouteItem};
use bytes::Bytes;
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::Hub;

/// Shortest and longest wait before a failed stream to a peer is opened again.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// A stream that lasted this long starts the backoff over when it fails.
const STEADY: Duration = Duration::from_secs(10);
/// How often a link sends a frame when it has nothing else to send, and how long a stream
/// may stay silent before its receiver ends it (forgetting the sender's interest): a member
/// cut off by a partition stops being sent messages within seconds, as no TCP reset says so.
const HEARTBEAT: Duration = Duration::from_secs(1);
const SILENCE_LIMIT: Duration = Duration::from_secs(5);
/// How often the links are matched against the cluster's members.
const MEMBERSHIP_POLL: Duration = Duration::from_secs(1);
/// Bytes queued for a member past which a publisher is stalled until the queue drains, and
/// the longest a stall lasts (then the publisher goes on; past `--nats-max-pending` messages
/// for that member are dropped).
const STALL_BYTES: usize = 8 << 20;
const STALL_MAX: Duration = Duration::from_secs(1);
/// Items taken from a link's queue at once, and the bytes one frame carries at most.
const BATCH_ITEMS: usize = 512;
const FRAME_BYTES: usize = 1 << 20;

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

/// What a link queues for its peer.
enum Item {
    Interest(Change),
    /// A message and the bytes it is charged.
    Msg(Forward, usize),
}

/// The figures and state a link's task shares with the publishers.
#[derive(Default)]
struct LinkState {
    /// Bytes of messages queued and not yet handed to the stream.
    queued: AtomicUsize,
    /// True while a stream to the peer is open.
    up: AtomicBool,
    /// Woken when the queue drains below [`STALL_BYTES`].
    drained: tokio::sync::Notify,
}

impl LinkState {
    /// Takes `charge` bytes off the queue, waking stalled publishers once below the mark.
    fn taken(&self, charge: usize) {
        let before = self.queued.fetch_sub(charge, Ordering::Relaxed);
        if before >= STALL_BYTES && before - charge < STALL_BYTES {
            self.drained.notify_waiters();
        }
    }
}

/// A publisher's wait for a backed-up route to drain.
pub(crate) struct Stall(Arc<LinkState>);

impl Stall {
    /// Waits until the route's queue is below the stall mark, or [`STALL_MAX`].
    pub(crate) async fn wait(self) {
        let state = self.0;
        let _ = tokio::time::timeout(STALL_MAX, async {
            loop {
                let drained = state.drained.notified();
                tokio::pin!(drained);
                drained.as_mut().enable();
                if state.queued.load(Ordering::Relaxed) < STALL_BYTES
                    || !state.up.load(Ordering::Relaxed)
                {
                    return;
                }
                drained.await;
            }
        })
        .await;
    }
}

/// This member's link to one peer: its queue and its task (stopped when the link is dropped).
struct Link {
    tx: mpsc::UnboundedSender<Item>,
    state: Arc<LinkState>,
    task: tokio::task::AbortHandle,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a peer's current stream has told this member.
struct Inbound {
    /// Which of the peer's streams is current (a newer one replaces it).
    stream: u64,
    /// The pairs it holds, as entered in the remote table.
    pairs: HashSet<Pair>,
}

/// A member's routes: its own interest as sent to peers, its links, and its peers' interest.
pub(crate) struct Routes {
    book: Mutex<InterestBook>,
    links: RwLock<BTreeMap<u64, Link>>,
    remote: RwLock<Sublist<u64>>,
    /// Entries in `remote`; while 0 a publish skips it.
    remote_len: AtomicUsize,
    inbound: Mutex<HashMap<u64, Inbound>>,
    next_stream: AtomicU64,
    max_pending: usize,
}

impl Routes {
    pub(crate) fn new(max_pending: usize) -> Routes {
        Routes {
            book: Mutex::new(InterestBook::new()),
            links: RwLock::default(),
            remote: RwLock::new(Sublist::new()),
            remote_len: AtomicUsize::new(0),
            inbound: Mutex::default(),
            next_stream: AtomicU64::new(1),
            max_pending,
        }
    }

    /// A local subscription was added: peers learn of the pair if it is new.
    pub(crate) fn local_added(&self, filter: &str, queue: Option<&str>) {
        let mut book = locked(&self.book);
        if let Some(change) = book.add(filter, queue) {
            // Queued under the book's lock, so a link's whole-interest frame and the changes
            // after it are in order.
            self.tell_links(change);
        }
    }

    /// A local subscription left: peers learn of it if it was the pair's last.
    pub(crate) fn local_removed(&self, filter: &str, queue: Option<&str>) {
        let mut book = locked(&self.book);
        if let Some(change) = book.remove(filter, queue) {
            self.tell_links(change);
        }
    }

    fn tell_links(&self, change: Change) {
        for link in read(&self.links).values() {
            let _ = link.tx.send(Item::Interest(change.clone()));
        }
    }

    /// The whole interest as a first frame, and the number of the last change it holds.
    fn whole_interest(&self) -> (u64, RouteFrame) {
        let book = locked(&self.book);
        let items = book
            .pairs()
            .map(|(filter, queue)| RouteItem {
                kind: Some(Kind::Interest(Interest {
                    subject: filter.clone(),
                    queue: queue.clone().unwrap_or_default(),
                    add: true,
                })),
            })
            .collect();
        (book.seq(), RouteFrame { items })
    }

    /// Peers whose interest `subject` matches; `None` when no peer has any.
    pub(crate) fn remote_matches(&self, subject: &str) -> Option<Matches<u64>> {
        if self.remote_len.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let m = read(&self.remote).matches(subject);
        (!m.is_empty()).then_some(m)
    }

    /// Queues one message for each peer `remote` names that a local delivery did not make
    /// redundant (queue groups in `served_here`); returns how many peers it was queued for,
    /// and a stall when one of their queues is past the stall mark.
    pub(crate) fn forward(
        &self,
        hub: &Hub,
        remote: &Matches<u64>,
        served_here: &[&str],
        msg: Outgoing<'_>,
    ) -> (usize, Option<Stall>) {
        let to = interest::plan(
            remote,
            |g| served_here.contains(&g),
            |n| rand::rng().random_range(0..n),
        );
        let links = read(&self.links);
        let mut queued = 0;
        let mut stall = None;
        for (peer, queues) in to {
            let Some(link) = links.get(&peer) else {
                continue;
            };
            let charge = msg.size() + super::QUEUED_OVERHEAD;
            let held = link.state.queued.fetch_add(charge, Ordering::Relaxed) + charge;
            if held > self.max_pending || !link.state.up.load(Ordering::Relaxed) {
                link.state.taken(charge);
                hub.core.metrics.nats_route_dropped.inc();
                continue;
            }
            let fwd = msg.forward(queues);
            if link.tx.send(Item::Msg(fwd, charge)).is_err() {
                link.state.taken(charge);
                continue;
            }
            if held >= STALL_BYTES && stall.is_none() {
                stall = Some(Stall(link.state.clone()));
            }
            hub.core.metrics.nats_route_sent.inc();
            queued += 1;
        }
        (queued, stall)
    }

    /// Whether the link to `peer` has a stream open now (messages for it are not dropped).
    pub(crate) fn is_up(&self, peer: u64) -> bool {
        read(&self.links)
            .get(&peer)
            .is_some_and(|l| l.state.up.load(Ordering::Relaxed))
    }

    /// Links with a stream open now.
    pub(crate) fn up(&self) -> usize {
        read(&self.links)
            .values()
            .filter(|l| l.state.up.load(Ordering::Relaxed))
            .count()
    }

    /// A new stream from `peer` begins: whatever an earlier one said is forgotten.
    fn attach(&self, peer: u64) -> u64 {
        let stream = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let mut inbound = locked(&self.inbound);
        let old = inbound.insert(
            peer,
            Inbound {
                stream,
                pairs: HashSet::new(),
            },
        );
        if let Some(old) = old {
            self.forget(peer, old.pairs);
        }
        stream
    }

    /// `peer`'s stream `stream` ended: its interest goes, unless a newer stream replaced it.
    fn detach(&self, peer: u64, stream: u64) {
        let mut inbound = locked(&self.inbound);
        if inbound.get(&peer).is_some_and(|i| i.stream == stream) {
            if let Some(old) = inbound.remove(&peer) {
                self.forget(peer, old.pairs);
            }
        }
    }

    fn forget(&self, peer: u64, pairs: HashSet<Pair>) {
        let mut remote = write(&self.remote);
        for (filter, queue) in pairs {
            if remote.remove(&filter, queue.as_deref(), &peer) {
                self.remote_len.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Applies one interest change from `peer`'s stream `stream` (ignored once replaced).
    fn apply(&self, peer: u64, stream: u64, change: Interest) {
        let queue = (!change.queue.is_empty()).then_some(change.queue);
        if subject::check_filter(&change.subject).is_err()
            || queue
                .as_deref()
                .is_some_and(|q| subject::check_queue(q).is_err())
        {
            tracing::warn!(peer, subject = %change.subject, "NATS route: ignored an invalid interest");
            return;
        }
        let mut inbound = locked(&self.inbound);
        let Some(held) = inbound.get_mut(&peer).filter(|i| i.stream == stream) else {
            return;
        };
        let pair = (change.subject, queue);
        let mut remote = write(&self.remote);
        if change.add {
            if held.pairs.insert(pair.clone()) {
                remote.insert(&pair.0, pair.1.as_deref(), peer);
                self.remote_len.fetch_add(1, Ordering::Relaxed);
            }
        } else if held.pairs.remove(&pair) && remote.remove(&pair.0, pair.1.as_deref(), &peer) {
            self.remote_len.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A message published here, as it is forwarded.
pub(crate) struct Outgoing<'a> {
    pub subject: &'a str,
    /// Where it goes when that is not `subject` (a consumer's delivery).
    pub to: Option<&'a str>,
    pub reply: Option<&'a str>,
    pub headers: Option<&'a Bytes>,
    pub payload: &'a Bytes,
}

impl Outgoing<'_> {
    fn size(&self) -> usize {
        self.subject.len()
            + self.to.map_or(0, str::len)
            + self.reply.map_or(0, str::len)
            + self.headers.map_or(0, Bytes::len)
            + self.payload.len()
    }

    fn forward(&self, queues: Vec<String>) -> Forward {
        Forward {
            subject: self.subject.to_string(),
            reply: self.reply.unwrap_or_default().to_string(),
            headers: self.headers.cloned(),
            payload: self.payload.clone(),
            queues,
            to: self.to.unwrap_or_default().to_string(),
        }
    }
}

/// Keeps one link per other member of the cluster until `stop`.
pub async fn run(hub: Arc<Hub>, mut stop: watch::Receiver<bool>) {
    loop {
        reconcile(&hub);
        tokio::select! {
            _ = tokio::time::sleep(MEMBERSHIP_POLL) => {}
            _ = stop.changed() => break,
        }
    }
    write(&hub.routes.links).clear();
}

/// Opens links to members that have none and drops the links of members that left.
fn reconcile(hub: &Arc<Hub>) {
    let me = hub.core.consensus.id();
    let peers: HashSet<u64> = hub
        .core
        .consensus
        .members()
        .into_iter()
        .map(|m| m.id)
        .filter(|id| *id != me)
        .collect();
    // Conservative: a member listed in a larger initial cluster is never alone (before it
    // learns its members it sees only itself).
    let alone = peers.is_empty() && hub.core.config.initial_cluster.len() <= 1;
    hub.solo.store(alone, Ordering::Relaxed);
    let mut links = write(&hub.routes.links);
    links.retain(|peer, _| peers.contains(peer));
    for peer in peers {
        if links.contains_key(&peer) {
            continue;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(LinkState::default());
        let task = tokio::spawn(keep_link(hub.clone(), peer, state.clone(), rx)).abort_handle();
        tracing::debug!(
            peer = format!("{peer:x}"),
            "NATS route: linking to a member"
        );
        links.insert(peer, Link { tx, state, task });
    }
    drop(links);
    hub.core.metrics.nats_routes.set(hub.routes.up() as i64);
}

/// A link's task: streams to `peer` while it can, reopening after failures.
async fn keep_link(
    hub: Arc<Hub>,
    peer: u64,
    state: Arc<LinkState>,
    mut rx: mpsc::UnboundedReceiver<Item>,
) {
    let mut backoff = MIN_BACKOFF;
    let mut buf = Vec::with_capacity(BATCH_ITEMS);
    loop {
        let started = Instant::now();
        let ended = match hub.core.consensus.peer_channel(peer) {
            Ok(channel) => stream_to(&hub, &state, &mut rx, &mut buf, channel).await,
            Err(e) => Err(e.to_string()),
        };
        state.up.store(false, Ordering::Relaxed);
        state.drained.notify_waiters();
        match ended {
            Ok(()) => return,
            Err(e) => tracing::debug!(peer = format!("{peer:x}"), error = %e, "NATS route down"),
        }
        if started.elapsed() >= STEADY {
            backoff = MIN_BACKOFF;
        }
        // Until the next try, what is queued is dropped: the next stream starts from the
        // whole interest, and core messages are at most once.
        let wait = tokio::time::sleep(backoff);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = &mut wait => break,
                n = rx.recv_many(&mut buf, BATCH_ITEMS) => {
                    if n == 0 {
                        return;
                    }
                    for item in buf.drain(..) {
                        if let Item::Msg(_, charge) = item {
                            state.taken(charge);
                            hub.core.metrics.nats_route_dropped.inc();
                        }
                    }
                }
            }
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One stream to a peer: the whole interest, then what is queued, until the stream fails
/// (`Err`) or the link is dropped (`Ok`).
async fn stream_to(
    hub: &Hub,
    state: &LinkState,
    rx: &mut mpsc::UnboundedReceiver<Item>,
    buf: &mut Vec<Item>,
    channel: PeerChannel,
) -> Result<(), String> {
    let mut client = NatsRouteClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    let (frames, outgoing) = mpsc::channel(4);
    let (from_seq, whole) = hub.routes.whole_interest();
    frames
        .try_send(whole)
        .map_err(|_| "the frame queue is full at start".to_string())?;
    let mut call = tokio::spawn(async move { client.link(ReceiverStream::new(outgoing)).await });
    state.up.store(true, Ordering::Relaxed);
    let ended = |r: Result<Result<Response<LinkEnd>, Status>, tokio::task::JoinError>| match r {
        Ok(Ok(_)) => "the peer ended the stream".to_string(),
        Ok(Err(status)) => status.message().to_string(),
        Err(e) => e.to_string(),
    };
    let mut beat = tokio::time::interval(HEARTBEAT);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let n = tokio::select! {
            r = &mut call => return Err(ended(r)),
            n = rx.recv_many(buf, BATCH_ITEMS) => n,
            _ = beat.tick() => {
                tokio::select! {
                    sent = frames.send(RouteFrame::default()) => if sent.is_err() {
                        return Err(ended(call.await));
                    },
                    r = &mut call => return Err(ended(r)),
                }
                continue;
            }
        };
        if n == 0 {
            call.abort();
            return Ok(());
        }
        // The queue's charges go now, for the whole batch: a stream that fails while sending
        // it must not leave them counted (publishers would stall, then drop, for good).
        for item in buf.iter() {
            if let Item::Msg(_, charge) = item {
                state.taken(*charge);
            }
        }
        let mut frame = RouteFrame::default();
        let mut bytes = 0;
        let mut items = buf.drain(..).peekable();
        while let Some(item) = items.next() {
            match item {
                // The whole interest sent first holds this change already.
                Item::Interest(c) if c.seq <= from_seq => {}
                Item::Interest(c) => frame.items.push(RouteItem {
                    kind: Some(Kind::Interest(Interest {
                        subject: c.filter,
                        queue: c.queue.unwrap_or_default(),
                        add: c.add,
                    })),
                }),
                Item::Msg(fwd, charge) => {
                    bytes += charge;
                    frame.items.push(RouteItem {
                        kind: Some(Kind::Msg(fwd)),
                    });
                }
            }
            if frame.items.is_empty() || (bytes < FRAME_BYTES && items.peek().is_some()) {
                continue;
            }
            bytes = 0;
            let full = std::mem::take(&mut frame);
            tokio::select! {
                sent = frames.send(full) => if sent.is_err() {
                    return Err(ended(call.await));
                },
                r = &mut call => return Err(ended(r)),
            }
        }
    }
}

/// The route service for the peer port.
pub fn service(hub: Arc<Hub>) -> NatsRouteServer<RouteService> {
    NatsRouteServer::new(RouteService { hub })
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX)
}

/// Serves other members' links.
pub struct RouteService {
    hub: Arc<Hub>,
}

/// Forgets a peer's interest when its stream's handler ends, however it ends.
struct Attached<'a> {
    routes: &'a Routes,
    peer: u64,
    stream: u64,
}

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        self.routes.detach(self.peer, self.stream);
    }
}

#[tonic::async_trait]
impl NatsRoute for RouteService {
    async fn link(&self, req: Request<Streaming<RouteFrame>>) -> Result<Response<LinkEnd>, Status> {
        self.hub.core.consensus.admit_peer(req.metadata())?;
        let peer = berth_consensus::identity::sender_of(req.metadata())
            .ok_or_else(|| Status::invalid_argument("berth: the route names no sender"))?;
        let hub = &self.hub;
        let attached = Attached {
            routes: &hub.routes,
            peer,
            stream: hub.routes.attach(peer),
        };
        tracing::debug!(peer = format!("{peer:x}"), "NATS route from a member");
        let mut frames = req.into_inner();
        loop {
            let frame = match tokio::time::timeout(SILENCE_LIMIT, frames.message()).await {
                Ok(Ok(Some(frame))) => frame,
                Ok(Ok(None)) => break,
                Ok(Err(status)) => return Err(status),
                Err(_) => {
                    tracing::info!(
                        peer = format!("{peer:x}"),
                        "NATS route silent for {SILENCE_LIMIT:?}: forgetting the member's interest"
                    );
                    return Err(Status::deadline_exceeded(
                        "berth: the NATS route went silent",
                    ));
                }
            };
            for item in frame.items {
                match item.kind {
                    Some(Kind::Interest(i)) => hub.routes.apply(peer, attached.stream, i),
                    Some(Kind::Msg(fwd)) => {
                        hub.core.metrics.nats_route_received.inc();
                        hub.deliver_forwarded(fwd);
                    }
                    None => {}
                }
            }
        }
        Ok(Response::new(LinkEnd {}))
    }
}
