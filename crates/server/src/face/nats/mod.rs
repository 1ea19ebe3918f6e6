//! NATS's client protocol (`--listen-nats-urls`, default nats://127.0.0.1:4222): core
//! publish/subscribe as nats-server 2.10 speaks it to nats-py, nats.js, async-nats and nats.go
//! (INFO/CONNECT, PUB/HPUB/SUB/UNSUB/MSG/HMSG/PING/PONG, verbose and pedantic modes, `*` and
//! `>` wildcards, queue groups, auto-unsubscribe, no-responders, slow consumers).
//!
//! Core messages are not stored. Interest lives in one [`Hub`] per member, shared by its NATS
//! listeners; in a cluster, members exchange their interest and forward messages to the
//! members with matching subscribers (`route`), so a client may connect to any member.
//! JetStream streams are served on a single member (`jetstream`); consumers are not yet.
//!
//! # Layout
//! - this file: the hub (interest, routing, delivery) and the accept loop;
//! - `parse`: the protocol's framing;
//! - `conn`: one client connection (handshake, ops, its writer);
//! - `route`: interest and messages between the members of a cluster;
//! - `jetstream`: streams, their `$JS.API` requests, stored and acknowledged publishes;
//! - `monitor`: nats-server's `/varz` and `/connz` on berth's HTTP listener.

mod conn;
pub mod jetstream;
pub mod monitor;
pub mod parse;
pub mod route;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use berth_messaging::Sublist;
use bytes::{BufMut, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use rand::Rng;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch, Notify};

use crate::core::Core;
use crate::listen::ClientAddr;

/// The nats-server version berth reports: clients switch features on by it (2.10 turns on
/// what berth serves and nothing newer).
pub const VERSION: &str = "2.10.0";

/// Settings of the NATS face.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest message (headers and payload) a client may publish.
    pub max_payload: usize,
    /// Bytes queued for one client before it is closed as a slow consumer.
    pub max_pending: usize,
    /// How often the server pings an idle client; two unanswered pings close it.
    pub ping_interval: Duration,
    /// How long a client has to send CONNECT when auth is on.
    pub auth_timeout: Duration,
    /// Client connections open at once (nats-server's default, 65536).
    pub max_connections: usize,
    /// Subscriptions one connection may hold (0: no limit, nats-server's default).
    pub max_subscriptions: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload: 1024 * 1024,
            max_pending: 64 * 1024 * 1024,
            ping_interval: Duration::from_secs(120),
            auth_timeout: Duration::from_secs(2),
            max_connections: 65536,
            max_subscriptions: 0,
        }
    }
}

/// One client connection as the hub sees it: where its messages go.
pub(crate) struct Client {
    id: u64,
    out: mpsc::UnboundedSender<Bytes>,
    /// Bytes queued for the writer and not yet written.
    pending: AtomicUsize,
    /// Negotiated in CONNECT.
    headers: AtomicBool,
    echo: AtomicBool,
    no_responders: AtomicBool,
    /// Set once the connection is to close (slow consumer, protocol error, shutdown).
    closing: AtomicBool,
    /// Set when it closes as a slow consumer: what is queued is dropped, not written.
    slow: AtomicBool,
    close: Notify,
    /// What `/connz` reports of it.
    stats: ClientStats,
    /// Its subscriptions by sid (the hub removes an auto-unsubscribed one here too).
    subs: std::sync::Mutex<std::collections::BTreeMap<String, SubRef>>,
}

/// What one queued item is charged beyond its bytes (its handle and channel slot), so a
/// client that never reads cannot make the server hold many small items past the limit.
const QUEUED_OVERHEAD: usize = 64;

/// A connection's figures for `/connz`.
pub(crate) struct ClientStats {
    addr: Option<SocketAddr>,
    started: std::time::SystemTime,
    /// Milliseconds since the UNIX epoch of the last bytes read.
    last_activity_ms: AtomicU64,
    inbound: Traffic,
    outbound: Traffic,
    /// CONNECT's `name`, `lang` and `version`.
    named: std::sync::Mutex<(String, String, String)>,
}

impl ClientStats {
    fn new(addr: Option<SocketAddr>) -> ClientStats {
        ClientStats {
            addr,
            started: std::time::SystemTime::now(),
            last_activity_ms: AtomicU64::new(unix_ms()),
            inbound: Traffic::default(),
            outbound: Traffic::default(),
            named: std::sync::Mutex::new(Default::default()),
        }
    }
}

/// Milliseconds since the UNIX epoch.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Messages and their bytes, one way.
#[derive(Default)]
struct Traffic {
    msgs: AtomicU64,
    bytes: AtomicU64,
}

impl Traffic {
    fn add(&self, size: u64) {
        self.msgs.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(size, Ordering::Relaxed);
    }

    fn msgs(&self) -> u64 {
        self.msgs.load(Ordering::Relaxed)
    }

    fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// Server-wide totals for `/varz`.
#[derive(Default)]
struct Totals {
    inbound: Traffic,
    outbound: Traffic,
    connections: AtomicU64,
    slow_consumers: AtomicU64,
}

impl Client {
    /// Queues `bytes` for the client; past the pending limit the client is closed (as a slow
    /// consumer) instead.
    fn send(&self, hub: &Hub, bytes: Bytes) -> bool {
        if self.closing.load(Ordering::Relaxed) {
            return false;
        }
        let charge = bytes.len() + QUEUED_OVERHEAD;
        let queued = self.pending.fetch_add(charge, Ordering::Relaxed) + charge;
        if queued > hub.limits.max_pending {
            self.pending.fetch_sub(charge, Ordering::Relaxed);
            tracing::warn!(
                client = self.id,
                queued,
                "NATS slow consumer: closing the connection"
            );
            self.slow.store(true, Ordering::Relaxed);
            self.shut();
            return false;
        }
        if self.out.send(bytes).is_err() {
            self.pending.fetch_sub(charge, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn shut(&self) {
        self.closing.store(true, Ordering::Relaxed);
        self.close.notify_one();
    }

    fn subs(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, SubRef>> {
        self.subs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A subscription: the hub's entry for one `SUB`.
pub(crate) struct Sub {
    client: Arc<Client>,
    sid: String,
    subject: String,
    queue: Option<String>,
    /// Auto-unsubscribe after this many messages (0: never).
    max: AtomicU64,
    delivered: AtomicU64,
    /// Set when it is removed: a publish that matched it before takes another member.
    closed: AtomicBool,
}

/// A subscription handle, equal only to itself.
#[derive(Clone)]
pub(crate) struct SubRef(Arc<Sub>);

impl PartialEq for SubRef {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// A member's NATS interest and routing, shared by its NATS listeners.
pub struct Hub {
    core: Arc<Core>,
    limits: Limits,
    subs: RwLock<Sublist<SubRef>>,
    next_client: AtomicU64,
    /// This member's NATS server ID (56 upper-case characters, as nats-server's).
    server_id: String,
    /// Open connections, by client ID.
    clients: std::sync::Mutex<std::collections::BTreeMap<u64, Arc<Client>>>,
    totals: Totals,
    started: std::time::SystemTime,
    /// The first NATS listener's address (what `/varz` reports as host and port).
    listen: std::sync::OnceLock<SocketAddr>,
    /// Interest and messages exchanged with the cluster's other members.
    routes: route::Routes,
    /// This member's streams, while it is alone.
    js: jetstream::JetStream,
    /// The cluster's streams, while it is not.
    cluster: Arc<jetstream::cluster::Cluster>,
    /// True while the member is its cluster's only member (JetStream is served then).
    solo: AtomicBool,
    /// The hub itself, for work that outlives a call (stream writers).
    me: std::sync::Weak<Hub>,
    /// The server's own requests waiting for their reply, by reply subject.
    replies: std::sync::Mutex<Replies>,
    /// Their reply subjects' prefix, `$BERTH.R.<random>.`, announced over the routes.
    reply_prefix: String,
}

/// The server's own requests waiting for their reply: by reply subject, and in the order
/// they were made (to forget those not answered in time).
#[derive(Default)]
struct Replies {
    waiting: HashMap<String, OnReply>,
    order: std::collections::VecDeque<(std::time::Instant, String)>,
}

/// What the server does with the reply to one of its own requests.
pub(crate) type OnReply = Box<dyn FnOnce(&Bytes) + Send>;

/// The prefix of the server's own subjects (its requests' replies): clients may not publish
/// to them, nor ask for replies on them.
const RESERVED: &str = "$BERTH.";

/// Whether `subject` is one of the server's own.
fn reserved(subject: &str) -> bool {
    subject.starts_with(RESERVED)
}

/// How long the server waits for the reply to one of its requests (one not answered by
/// then is forgotten; its sender retries on its own).
const REPLY_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

impl Hub {
    /// A hub for `core`'s NATS listeners.
    pub fn new(core: Arc<Core>, limits: Limits) -> Arc<Hub> {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
        let mut rng = rand::rng();
        let server_id = (0..56)
            .map(|i| {
                if i == 0 {
                    'N'
                } else {
                    ALPHABET[rng.random_range(0..ALPHABET.len())] as char
                }
            })
            .collect();
        let js = jetstream::JetStream::open(&core.config.data_dir);
        let cluster = Arc::new(jetstream::cluster::Cluster::new(&core.config.data_dir));
        // Conservative at start (a member may not know its cluster's members yet): one
        // listed in a larger initial cluster is not alone. The routes keep it current.
        let solo = AtomicBool::new(
            core.config.initial_cluster.len() <= 1 && core.consensus.members().len() <= 1,
        );
        let hub = Arc::new_cyclic(|me| Hub {
            me: me.clone(),
            js,
            cluster,
            solo,
            core,
            limits: limits.clone(),
            subs: RwLock::new(Sublist::new()),
            next_client: AtomicU64::new(1),
            server_id,
            clients: Default::default(),
            totals: Totals::default(),
            started: std::time::SystemTime::now(),
            listen: std::sync::OnceLock::new(),
            routes: route::Routes::new(limits.max_pending),
            replies: Default::default(),
            reply_prefix: format!("{RESERVED}R.{:032x}.", rng.random::<u128>()),
        });
        hub.routes
            .local_added(&format!("{}>", hub.reply_prefix), None);
        hub.js.start_writers(&hub);
        hub
    }

    /// Publishes a message of the server's own with a reply subject of its own, and calls
    /// `on_reply` with the reply's payload when it comes back (here or from another member);
    /// nothing is called if none comes within a minute.
    fn request(&self, subject: &str, headers: Option<&Bytes>, payload: &Bytes, on_reply: OnReply) {
        // Unguessable, though clients may neither publish to nor reply on these subjects.
        let reply = format!("{}{:032x}", self.reply_prefix, rand::rng().random::<u128>());
        {
            let mut replies = self.replies.lock().unwrap_or_else(|p| p.into_inner());
            let now = std::time::Instant::now();
            while let Some((at, _)) = replies.order.front() {
                if now.duration_since(*at) < REPLY_WAIT {
                    break;
                }
                if let Some((_, old)) = replies.order.pop_front() {
                    replies.waiting.remove(&old);
                }
            }
            replies.waiting.insert(reply.clone(), on_reply);
            replies.order.push_back((now, reply.clone()));
        }
        self.route_message(subject, Some(&reply), headers, payload, |_| true);
    }

    /// When `subject` is the reply subject of one of the server's own requests: hands it
    /// `payload` and says so.
    fn take_reply(&self, subject: &str, payload: &Bytes) -> bool {
        if !subject.starts_with(&self.reply_prefix) {
            return false;
        }
        let waiting = self
            .replies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .waiting
            .remove(subject);
        if let Some(on_reply) = waiting {
            on_reply(payload);
        }
        true
    }

    /// True while the member is its cluster's only member: JetStream is then the member's
    /// own streams (`jetstream`); otherwise, the cluster's replicated ones.
    fn solo(&self) -> bool {
        self.solo.load(Ordering::Relaxed)
    }

    /// The stream whose consumers this member runs: its own stream while alone, or a
    /// replicated stream whose group it leads.
    fn stream_handle(&self, name: &str) -> Option<Arc<jetstream::StreamHandle>> {
        if self.solo() {
            self.js.stream(name)
        } else {
            self.cluster.led(name)
        }
    }

    /// Follows the cluster's stream assignments (replicated streams) until `stop`.
    pub async fn run_jetstream_cluster(self: Arc<Self>, stop: tokio::sync::watch::Receiver<bool>) {
        self.cluster.clone().run(self, stop).await;
    }

    /// Delivers a message the server itself publishes (API responses, acknowledgements) to
    /// every subscriber of `subject`, here and on other members.
    fn inject(&self, subject: &str, headers: Option<&Bytes>, payload: &Bytes) {
        self.inject_as(subject, subject, None, headers, payload);
    }

    /// Delivers a message to the subscribers of `to`, framed with subject `shown` and
    /// `reply` (a consumer's delivery: the stream subject, the ack subject).
    fn inject_as(
        &self,
        to: &str,
        shown: &str,
        reply: Option<&str>,
        headers: Option<&Bytes>,
        payload: &Bytes,
    ) {
        if self.take_reply(to, payload) {
            return;
        }
        let matches = self.subs_read().matches(to);
        let msg = route::Outgoing {
            subject: shown,
            to: (to != shown).then_some(to),
            reply,
            headers,
            payload,
        };
        let (_, served) = self.deliver_local(&matches, &msg, None, |_| true);
        if let Some(remote) = self.routes.remote_matches(to) {
            let _ = self.routes.forward(self, &remote, &served, msg);
        }
    }

    /// Publishes a message of the server's own (an advisory): stored by a stream that takes
    /// its subject, and delivered to subscribers.
    fn emit(&self, subject: &str, payload: &Bytes) {
        self.route_message(subject, None, None, payload, |_| true);
    }

    /// Whether any subscriber (here or on another member) takes `subject`.
    fn has_interest(&self, subject: &str) -> bool {
        !self.subs_read().matches(subject).is_empty()
            || self.routes.remote_matches(subject).is_some()
    }

    fn subs_read(&self) -> std::sync::RwLockReadGuard<'_, Sublist<SubRef>> {
        self.subs.read().unwrap_or_else(|p| p.into_inner())
    }

    fn subs_write(&self) -> std::sync::RwLockWriteGuard<'_, Sublist<SubRef>> {
        self.subs.write().unwrap_or_else(|p| p.into_inner())
    }

    fn clients(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<u64, Arc<Client>>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn subscribe(&self, sub: &SubRef) {
        let s = &sub.0;
        s.client.subs().insert(s.sid.clone(), sub.clone());
        self.subs_write()
            .insert(&s.subject, s.queue.as_deref(), sub.clone());
        self.routes.local_added(&s.subject, s.queue.as_deref());
    }

    fn unsubscribe(&self, sub: &SubRef) {
        let s = &sub.0;
        s.closed.store(true, Ordering::Relaxed);
        let removed = self
            .subs_write()
            .remove(&s.subject, s.queue.as_deref(), sub);
        if removed {
            self.routes.local_removed(&s.subject, s.queue.as_deref());
        }
        let mut subs = s.client.subs();
        if subs.get(&s.sid).is_some_and(|held| held == sub) {
            subs.remove(&s.sid);
        }
    }

    /// Routes one message from `from` to every plain subscription `subject` reaches and to
    /// one member of each queue group, here and on the other members of the cluster; returns
    /// a stall when a route to another member is backed up (the publisher waits on it).
    fn publish(
        &self,
        from: &Client,
        subject: &str,
        reply: Option<&str>,
        headers: Option<&Bytes>,
        payload: &Bytes,
    ) -> Option<route::Stall> {
        self.core.metrics.nats_msgs_in.inc();
        let size = (payload.len() + headers.map_or(0, Bytes::len)) as u64;
        from.stats.inbound.add(size);
        self.totals.inbound.add(size);
        if subject.starts_with("$JS.") {
            if let Some(me) = self.me.upgrade() {
                let answered = if self.solo() {
                    jetstream::api::handle(&me, subject, reply, payload)
                } else {
                    self.cluster.api(&me, subject, reply, payload)
                };
                if answered {
                    return None;
                }
            }
        }
        let echo = from.echo.load(Ordering::Relaxed);
        let (delivered, stored, stall) =
            self.route_message(subject, reply, headers, payload, |s| {
                echo || s.0.client.id != from.id
            });
        if delivered == 0 && !stored {
            if let Some(reply) = reply {
                self.no_responders(from, subject, reply);
            }
        }
        stall
    }

    /// Stores a message in the stream that takes `subject` and delivers it to the
    /// subscriptions `eligible` allows, here and on the other members; returns how many got
    /// it, whether a stream took it, and a stall when a route to another member is backed up.
    fn route_message(
        &self,
        subject: &str,
        reply: Option<&str>,
        headers: Option<&Bytes>,
        payload: &Bytes,
        eligible: impl Fn(&SubRef) -> bool,
    ) -> (usize, bool, Option<route::Stall>) {
        // A stream's subject: stored, and acknowledged to the reply subject once durable. In
        // a cluster, a peer of the stream stores it: this member if it is one (its stream's
        // queue group is then served here), another through the routes otherwise.
        let (stored, stream_queue) = if self.solo() {
            (self.js.store(subject, reply, headers, payload), None)
        } else {
            let queue = self.cluster.store(subject, reply, headers, payload);
            (queue.is_some(), queue)
        };
        let matches = self.subs_read().matches(subject);
        let msg = route::Outgoing {
            subject,
            to: None,
            reply,
            headers,
            payload,
        };
        let (mut delivered, mut served) = self.deliver_local(&matches, &msg, None, eligible);
        if let Some(q) = &stream_queue {
            served.push(q.as_str());
        }
        let mut stall = None;
        if let Some(remote) = self.routes.remote_matches(subject) {
            let (forwarded, backed_up) = self.routes.forward(self, &remote, &served, msg);
            delivered += forwarded;
            stall = backed_up;
        }
        (delivered, stored, stall)
    }

    /// Delivers a message another member forwarded to this member's plain subscribers and to
    /// one subscriber of each queue group it names.
    fn deliver_forwarded(&self, fwd: berth_proto::berth::nats::Forward) {
        if !self.solo()
            && fwd
                .queues
                .iter()
                .any(|q| q.starts_with("$js.") || q.starts_with("$jsl."))
        {
            self.serve_stream_forward(&fwd);
        }
        let to = if fwd.to.is_empty() {
            &fwd.subject
        } else {
            &fwd.to
        };
        if self.take_reply(to, &fwd.payload) {
            return;
        }
        let matches = self.subs_read().matches(to);
        let msg = route::Outgoing {
            subject: &fwd.subject,
            to: None,
            reply: (!fwd.reply.is_empty()).then_some(fwd.reply.as_str()),
            headers: fwd.headers.as_ref(),
            payload: &fwd.payload,
        };
        self.deliver_local(&matches, &msg, Some(&fwd.queues), |_| true);
    }

    /// A publish or API request another member routed to this member as a peer of its
    /// stream.
    fn serve_stream_forward(&self, fwd: &berth_proto::berth::nats::Forward) {
        let reply = (!fwd.reply.is_empty()).then_some(fwd.reply.as_str());
        if fwd.subject.starts_with("$JS.") {
            if let Some(me) = self.me.upgrade() {
                self.cluster.api(&me, &fwd.subject, reply, &fwd.payload);
            }
        } else {
            self.cluster
                .store(&fwd.subject, reply, fwd.headers.as_ref(), &fwd.payload);
        }
    }

    /// Delivers `msg` to the plain subscriptions of `matches` and one member of each of its
    /// queue groups (only those in `groups`, when given), among those `eligible` allows;
    /// returns how many got it and the queue groups served.
    fn deliver_local<'m>(
        &self,
        matches: &'m berth_messaging::Matches<SubRef>,
        msg: &route::Outgoing<'_>,
        groups: Option<&[String]>,
        eligible: impl Fn(&SubRef) -> bool,
    ) -> (usize, Vec<&'m str>) {
        let route::Outgoing {
            subject,
            reply,
            headers,
            payload,
            ..
        } = *msg;
        let mut delivered = 0;
        let mut served = Vec::new();
        let mut done = Vec::new();
        for sub in matches.plain.iter().filter(|s| eligible(s)) {
            delivered +=
                usize::from(self.deliver(sub, subject, reply, headers, payload, &mut done));
        }
        for (group, members) in &matches.queues {
            if groups.is_some_and(|g| !g.contains(group)) {
                continue;
            }
            let members: Vec<&SubRef> = members.iter().filter(|s| eligible(s)).collect();
            if members.is_empty() {
                continue;
            }
            // One member, at random; another if that one is already closing.
            let start = rand::rng().random_range(0..members.len());
            for i in 0..members.len() {
                let sub = members[(start + i) % members.len()];
                if self.deliver(sub, subject, reply, headers, payload, &mut done) {
                    delivered += 1;
                    served.push(group.as_str());
                    break;
                }
            }
        }
        for sub in done {
            self.unsubscribe(&sub);
        }
        (delivered, served)
    }

    /// Sends one message to `sub`; false when it did not take it (auto-unsubscribed, closing).
    fn deliver(
        &self,
        sub: &SubRef,
        subject: &str,
        reply: Option<&str>,
        headers: Option<&Bytes>,
        payload: &Bytes,
        done: &mut Vec<SubRef>,
    ) -> bool {
        let s = &sub.0;
        if s.closed.load(Ordering::Relaxed) {
            return false;
        }
        let n = s.delivered.fetch_add(1, Ordering::Relaxed) + 1;
        let max = s.max.load(Ordering::Relaxed);
        if max != 0 && n >= max {
            // Removal is idempotent: whichever delivery reaches the count queues it.
            done.push(sub.clone());
            if n > max {
                return false;
            }
        }
        // A client that did not negotiate headers gets the payload alone.
        let headers = headers.filter(|_| s.client.headers.load(Ordering::Relaxed));
        let msg = message(subject, &s.sid, reply, headers, payload);
        let sent = s.client.send(self, msg);
        if sent {
            let size = (payload.len() + headers.map_or(0, Bytes::len)) as u64;
            self.core.metrics.nats_msgs_out.inc();
            s.client.stats.outbound.add(size);
            self.totals.outbound.add(size);
        }
        sent
    }

    /// Tells a requester nobody listens: a 503 status message on its subscription for the
    /// reply subject, when it negotiated headers and no-responders. It is a delivery like
    /// any other (an inbox subscribed for one message ends with it).
    fn no_responders(&self, from: &Client, subject: &str, reply: &str) {
        if !(from.headers.load(Ordering::Relaxed) && from.no_responders.load(Ordering::Relaxed)) {
            return;
        }
        let matches = self.subs_read().matches(reply);
        let Some(sub) = matches.plain.iter().find(|s| s.0.client.id == from.id) else {
            return;
        };
        let headers = Bytes::from(format!("NATS/1.0 503\r\nNats-Subject: {subject}\r\n\r\n"));
        let mut done = Vec::new();
        self.deliver(sub, reply, None, Some(&headers), &Bytes::new(), &mut done);
        for sub in done {
            self.unsubscribe(&sub);
        }
    }
}

/// `MSG`/`HMSG` with its payload, ready to write.
fn message(
    subject: &str,
    sid: &str,
    reply: Option<&str>,
    headers: Option<&Bytes>,
    payload: &Bytes,
) -> Bytes {
    let hlen = headers.map_or(0, Bytes::len);
    let mut b = BytesMut::with_capacity(subject.len() + sid.len() + hlen + payload.len() + 48);
    b.put_slice(if headers.is_some() { b"HMSG " } else { b"MSG " });
    b.put_slice(subject.as_bytes());
    b.put_u8(b' ');
    b.put_slice(sid.as_bytes());
    if let Some(r) = reply {
        b.put_u8(b' ');
        b.put_slice(r.as_bytes());
    }
    if let Some(h) = headers {
        b.put_slice(format!(" {} {}\r\n", h.len(), h.len() + payload.len()).as_bytes());
        b.put_slice(h);
    } else {
        b.put_slice(format!(" {}\r\n", payload.len()).as_bytes());
    }
    b.put_slice(payload);
    b.put_slice(b"\r\n");
    b.freeze()
}

/// Serves NATS clients from `incoming` (a listener bound to `local`; its clients upgrade to
/// `tls` after INFO when given) until `stop`.
pub async fn serve<C, S>(
    hub: Arc<Hub>,
    local: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    incoming: S,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()>
where
    S: Stream<Item = std::io::Result<(C, ClientAddr)>> + Send + 'static,
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _ = hub.listen.set(local);
    let mut incoming = std::pin::pin!(incoming);
    loop {
        let next = tokio::select! {
            next = incoming.next() => next,
            _ = stop.changed() => return Ok(()),
        };
        let Some(accepted) = next else { return Ok(()) };
        let (io, ClientAddr(peer)) = match accepted {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "NATS accept failed");
                continue;
            }
        };
        let (hub, stop, tls) = (hub.clone(), stop.clone(), tls.clone());
        tokio::spawn(async move { conn::run(hub, io, local, peer, tls, stop).await });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_framed_as_nats_server_frames_them() {
        let p = Bytes::from_static(b"hello");
        assert_eq!(
            &message("a.b", "7", None, None, &p)[..],
            b"MSG a.b 7 5\r\nhello\r\n"
        );
        assert_eq!(
            &message("a", "1", Some("_INBOX.x"), None, &Bytes::new())[..],
            b"MSG a 1 _INBOX.x 0\r\n\r\n"
        );
        let h = Bytes::from_static(b"NATS/1.0\r\nA: 1\r\n\r\n");
        assert_eq!(
            &message("a", "1", None, Some(&h), &p)[..],
            b"HMSG a 1 18 23\r\nNATS/1.0\r\nA: 1\r\n\r\nhello\r\n"
        );
    }
}
