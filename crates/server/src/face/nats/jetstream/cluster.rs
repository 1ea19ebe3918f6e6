//! JetStream in a cluster: every stream is its own Raft group (R1, R3 or R5) whose state is
//! a [`StreamGroup`], placed on members by an *assignment* in the meta group (the
//! `Messaging` keyspace, `jetstream/streams/<name>`: configuration, creation time, group
//! name and peers).
//!
//! Every member follows the assignments: it starts its replica of each stream it is a peer
//! of (and serves the group on the peer port), and stops and deletes the ones it no longer
//! is. A peer announces interest, over the NATS routes, in the stream's subjects and in its
//! stream-specific API subjects, in a queue group of the stream's own (`$js.<name>`): a
//! publish or an API request on any member then reaches exactly one peer (this member when
//! it is one), which proposes it to the group (forwarded to the group's leader) and answers
//! the reply subject once the group has committed and applied it, on a quorum.
//!
//! Publishes of one stream are proposed in the order they arrive, in batches (one proposer
//! task per local stream). The leader of each group also proposes the timed work: max_age
//! expiry and due schedules, carrying its clock.
//!
//! Consumers run on the group's leader, with the same runtime as a member's own streams
//! (`consumers`): the leader announces their API and ack subjects in a queue group of its
//! own (`$jsl.<name>`), and proposes their changed states to the group (at most every
//! 100 ms, and before it answers an ack that asked for a reply or a consumer create or
//! delete). A new leader restores them from the group's state; what was delivered and not
//! acknowledged is delivered again once its ack wait passes (at least once).
//!
//! Not yet: interest and work-queue retention and dead letters in a cluster (refused with a
//! clear error), mirrors and sources, moving a stream's peers when a member leaves.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use berth_consensus::{GroupId, Member, ProposeError, Replica};
use berth_messaging::stream::command::{Command, Outcome};
use berth_messaging::stream::{ApiError, Config, StoredMsg};
use berth_messaging::Sublist;
use berth_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use berth_proto::etcdserverpb::{Compare, RangeRequest, TxnRequest};
use berth_store::{Applied, Command as StoreCommand, KeySpan, Keyspace, WatchSink, WatchSpec};
use bytes::Bytes;
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use super::api::{self, body, config_of, MsgRequest};
use super::consumers::{self, SaverMsg};
use super::{now_ns, StreamHandle};
use crate::face::nats::Hub;
use crate::registry::{delete_op, put_op};
use crate::stream_group::StreamGroup;

/// Where assignments live in the `Messaging` keyspace.
const PREFIX: &[u8] = b"jetstream/streams/";
/// How often assignments are read again without a change seen (a watch interrupted).
const RECONCILE_EVERY: Duration = Duration::from_secs(1);
/// How often a group's leader looks for expired messages and due schedules.
const TIMED_WORK_EVERY: Duration = Duration::from_millis(100);
/// Publishes one proposer hands to the group at once (one log entry), and their bytes.
const PROPOSE_BATCH: usize = 1024;
const PROPOSE_BYTES: usize = 4 << 20;
/// Segment size of replicated streams.
const SEGMENT_BYTES: u64 = 32 << 20;
/// How long a create waits for the stream's peers to serve it.
const CREATE_PATIENCE: Duration = Duration::from_secs(5);

/// A stream's placement, as the meta group holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Assignment {
    config: Config,
    /// UNIX nanoseconds.
    created: i64,
    /// The stream's Raft group.
    group: String,
    /// Member IDs of its replicas.
    peers: Vec<u64>,
}

fn key(name: &str) -> Vec<u8> {
    [PREFIX, name.as_bytes()].concat()
}

/// The queue group a stream's peers announce their interest in.
fn queue_of(name: &str) -> String {
    format!("$js.{name}")
}

/// The API subjects only a stream's peers answer.
fn api_subjects(name: &str) -> Vec<String> {
    let mut v: Vec<String> = ["INFO", "UPDATE", "PURGE", "MSG.GET", "MSG.DELETE"]
        .iter()
        .map(|op| format!("$JS.API.STREAM.{op}.{name}"))
        .collect();
    v.push(format!("$JS.API.DIRECT.GET.{name}"));
    v.push(format!("$JS.API.DIRECT.GET.{name}.>"));
    v
}

/// The subjects only a stream's leader answers: its consumers' API and acks.
fn leader_subjects(name: &str) -> Vec<String> {
    let mut v = Vec::new();
    for verb in ["CREATE", "INFO", "DELETE", "NAMES", "LIST"] {
        v.push(format!("$JS.API.CONSUMER.{verb}.{name}"));
        v.push(format!("$JS.API.CONSUMER.{verb}.{name}.>"));
    }
    v.push(format!("$JS.API.CONSUMER.DURABLE.CREATE.{name}.>"));
    v.push(format!("$JS.API.CONSUMER.MSG.NEXT.{name}.>"));
    v.push(format!("$JS.ACK.{name}.>"));
    v
}

/// The queue group a stream's leader announces its consumers' subjects in.
fn leader_queue_of(name: &str) -> String {
    format!("$jsl.{name}")
}

/// Every subject a peer announces for a stream.
fn interest_of(config: &Config) -> Vec<String> {
    let mut v = config.subjects.clone();
    v.extend(api_subjects(&config.name));
    v
}

/// A publish waiting for its stream's proposer.
struct Pending {
    subject: String,
    headers: Option<Bytes>,
    payload: Bytes,
    reply: Option<String>,
}

/// This member's replica of a stream.
pub(crate) struct Local {
    assignment: RwLock<Assignment>,
    replica: Arc<Replica>,
    group: Arc<StreamGroup>,
    queue: mpsc::UnboundedSender<Pending>,
    /// Ends the proposer and timed-work tasks.
    stop: watch::Sender<bool>,
    /// The consumers' runtime while this member leads the group.
    led: Mutex<Option<Arc<StreamHandle>>>,
}

impl Local {
    fn assignment(&self) -> Assignment {
        self.assignment
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The cluster's assignments as this member last read them.
#[derive(Default)]
struct View {
    streams: BTreeMap<String, Assignment>,
    /// Stream subjects → stream name.
    subjects: Sublist<String>,
}

/// JetStream across the cluster's members.
pub(crate) struct Cluster {
    /// `<data-dir>/groups`.
    dir: PathBuf,
    view: RwLock<View>,
    local: Mutex<HashMap<String, Arc<Local>>>,
    /// Serializes reconciliations (the watch and the timer both run one).
    reconciling: tokio::sync::Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn unavailable(what: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        503,
        10008,
        format!("JetStream system temporarily unavailable: {what}"),
    )
}

fn not_found() -> ApiError {
    ApiError::new(404, 10059, "stream not found")
}

impl Cluster {
    pub(crate) fn new(data_dir: &std::path::Path) -> Cluster {
        Cluster {
            dir: data_dir.join("groups"),
            view: RwLock::default(),
            local: Mutex::default(),
            reconciling: tokio::sync::Mutex::new(()),
        }
    }

    fn view(&self) -> std::sync::RwLockReadGuard<'_, View> {
        self.view.read().unwrap_or_else(|p| p.into_inner())
    }

    fn local(&self, name: &str) -> Option<Arc<Local>> {
        lock(&self.local).get(name).cloned()
    }

    /// The consumers' runtime of stream `name`, when this member leads its group.
    pub(crate) fn led(&self, name: &str) -> Option<Arc<StreamHandle>> {
        self.local(name).and_then(|l| lock(&l.led).clone())
    }

    /// Follows the assignments until `stop`, then stops every local replica.
    pub(crate) async fn run(self: Arc<Self>, hub: Arc<Hub>, mut stop: watch::Receiver<bool>) {
        let store = hub.core.store.clone();
        loop {
            let (tx, mut rx) = mpsc::channel(64);
            let spec = WatchSpec {
                keyspace: Keyspace::Messaging,
                span: KeySpan::new(PREFIX, &berth_proto::keys::prefix_end(PREFIX)),
                start_rev: store.revision() + 1,
                no_put: false,
                no_delete: false,
            };
            let handle = store.watch(spec, 0, WatchSink::new(tx));
            self.reconcile(&hub).await;
            let ended = loop {
                tokio::select! {
                    d = rx.recv() => {
                        if d.is_none() {
                            break false;
                        }
                        while rx.try_recv().is_ok() {}
                        self.reconcile(&hub).await;
                    }
                    _ = tokio::time::sleep(RECONCILE_EVERY) => self.reconcile(&hub).await,
                    _ = stop.changed() => break true,
                }
            };
            store.cancel_watch(&handle);
            if ended {
                break;
            }
        }
        let locals: Vec<Arc<Local>> = lock(&self.local).drain().map(|(_, l)| l).collect();
        for l in locals {
            step_down(&hub, &l);
            let _ = l.stop.send(true);
            hub.core.consensus.stop_group(&l.replica).await;
        }
    }

    /// After this member changed an assignment: once it has applied the change (a follower
    /// learns of its commit before applying it), its view and replicas follow it.
    async fn sync_view(&self, hub: &Arc<Hub>) {
        if let Err(e) = hub.core.consensus.read_index().await {
            tracing::warn!(error = %e, "JetStream: assignments not read after a change");
        }
        self.reconcile(hub).await;
    }

    /// Reads the assignments and brings this member's replicas in line with them.
    async fn reconcile(&self, hub: &Arc<Hub>) {
        let _one = self.reconciling.lock().await;
        let assigned = match read_assignments(hub) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "JetStream: reading stream assignments");
                return;
            }
        };
        {
            let mut subjects = Sublist::new();
            for (name, a) in &assigned {
                for s in &a.config.subjects {
                    subjects.insert(s, None, name.clone());
                }
            }
            *self.view.write().unwrap_or_else(|p| p.into_inner()) = View {
                streams: assigned.clone(),
                subjects,
            };
        }
        let me = hub.core.consensus.id();
        // Replicas to stop: unassigned, moved off this member, or a new stream of the name.
        let stale: Vec<(String, Arc<Local>)> = lock(&self.local)
            .iter()
            .filter(|(name, l)| {
                assigned
                    .get(*name)
                    .is_none_or(|a| !a.peers.contains(&me) || a.group != l.assignment().group)
            })
            .map(|(n, l)| (n.clone(), l.clone()))
            .collect();
        for (name, l) in stale {
            lock(&self.local).remove(&name);
            let a = l.assignment();
            let queue = queue_of(&name);
            for s in interest_of(&a.config) {
                hub.routes.local_removed(&s, Some(&queue));
            }
            step_down(hub, &l);
            let _ = l.stop.send(true);
            hub.core.consensus.stop_group(&l.replica).await;
            let dir = self.dir.join(&a.group);
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "JetStream: removing a stopped replica's files");
            }
            tracing::info!(stream = %name, group = %a.group, "JetStream: replica stopped and removed");
        }
        for (name, a) in assigned {
            if !a.peers.contains(&me) {
                continue;
            }
            if let Some(l) = self.local(&name) {
                let old = l.assignment();
                if old.config.subjects != a.config.subjects {
                    let queue = queue_of(&name);
                    for s in &a.config.subjects {
                        hub.routes.local_added(s, Some(&queue));
                    }
                    for s in &old.config.subjects {
                        hub.routes.local_removed(s, Some(&queue));
                    }
                }
                *l.assignment.write().unwrap_or_else(|p| p.into_inner()) = a;
                continue;
            }
            match self.start_local(hub, &a).await {
                Ok(l) => {
                    let queue = queue_of(&name);
                    for s in interest_of(&a.config) {
                        hub.routes.local_added(&s, Some(&queue));
                    }
                    lock(&self.local).insert(name.clone(), l);
                    tracing::info!(stream = %name, group = %a.group, peers = a.peers.len(), "JetStream: replica started");
                }
                Err(e) => {
                    tracing::error!(stream = %name, error = %e, "JetStream: starting a replica")
                }
            }
        }
    }

    async fn start_local(&self, hub: &Arc<Hub>, a: &Assignment) -> anyhow::Result<Arc<Local>> {
        let group_id = GroupId::new(&a.group)
            .ok_or_else(|| anyhow::anyhow!("invalid group name {:?}", a.group))?;
        let dir = self.dir.join(&a.group);
        let (config, created) = (a.config.clone(), a.created);
        let stream_dir = dir.join("stream");
        let group = tokio::task::spawn_blocking(move || {
            StreamGroup::open(&stream_dir, config, created, SEGMENT_BYTES)
        })
        .await??;
        let group = Arc::new(group);
        // Every peer bootstraps the group with the same members, byte for byte: IDs and
        // peer URLs from the meta group's membership.
        let known: BTreeMap<u64, Vec<String>> = hub
            .core
            .consensus
            .members()
            .into_iter()
            .map(|m| (m.id, m.member.peer_urls))
            .collect();
        let members: BTreeMap<u64, Member> = a
            .peers
            .iter()
            .filter_map(|id| {
                known.get(id).map(|urls| {
                    (
                        *id,
                        Member {
                            name: format!("{id:x}"),
                            peer_urls: urls.clone(),
                            client_urls: Vec::new(),
                        },
                    )
                })
            })
            .collect();
        let replica = hub
            .core
            .consensus
            .start_group(group_id, &dir, group.clone(), members)
            .await?;
        let (queue, rx) = mpsc::unbounded_channel();
        let (stop, stopped) = watch::channel(false);
        let local = Arc::new(Local {
            assignment: RwLock::new(a.clone()),
            replica,
            group,
            queue,
            stop,
            led: Mutex::new(None),
        });
        tokio::spawn(propose_publishes(hub.clone(), local.clone(), rx));
        tokio::spawn(timed_work(hub.clone(), local.clone(), stopped));
        Ok(local)
    }

    /// The local stream whose subjects take `subject`, when this member is one of its peers.
    pub(crate) fn stream_of(&self, subject: &str) -> Option<String> {
        let view = self.view();
        let m = view.subjects.matches(subject);
        m.plain.first().map(|s| s.to_string())
    }

    /// Hands a publish to its stream's proposer when this member is a peer of the stream
    /// `subject` belongs to; returns the stream's queue group then (served here).
    pub(crate) fn store(
        &self,
        subject: &str,
        reply: Option<&str>,
        headers: Option<&Bytes>,
        payload: &Bytes,
    ) -> Option<String> {
        let name = self.stream_of(subject)?;
        let local = self.local(&name)?;
        let queued = local.queue.send(Pending {
            subject: subject.to_string(),
            headers: headers.cloned(),
            payload: payload.clone(),
            reply: reply.map(str::to_string),
        });
        queued.is_ok().then(|| queue_of(&name))
    }

    /// Answers a `$JS.API` request when this member can: false leaves it to the routes (a
    /// stream-specific request for a stream this member holds no replica of goes to a peer).
    pub(crate) fn api(
        self: &Arc<Self>,
        hub: &Arc<Hub>,
        subject: &str,
        reply: Option<&str>,
        payload: &Bytes,
    ) -> bool {
        if subject.starts_with("$JS.ACK.") || subject.starts_with("$JS.FC.") {
            // `$JS.ACK.<stream>.…`: the stream's leader takes it.
            let stream = subject.split('.').nth(2).unwrap_or_default();
            if hub.stream_handle(stream).is_none() {
                return false;
            }
            return consumers::ack(hub, subject, reply, payload);
        }
        let Some(rest) = subject.strip_prefix("$JS.API.") else {
            return false;
        };
        let (first, op) = rest.split_once('.').unwrap_or((rest, ""));
        let stream_op = match first {
            "INFO" if op.is_empty() => {
                let answer = Ok(self.account_info(hub));
                answer_to(hub, reply, "account_info", answer);
                return true;
            }
            "CONSUMER" => return self.consumer_api(hub, op, reply, payload),
            "STREAM" => op,
            "DIRECT" => {
                let Some(rest) = op.strip_prefix("GET.") else {
                    return false;
                };
                let name = rest.split_once('.').map_or(rest, |(n, _)| n);
                let Some(local) = self.local(name) else {
                    return false;
                };
                let (hub, reply, rest, payload) = (
                    hub.clone(),
                    reply.map(str::to_string),
                    rest.to_string(),
                    payload.clone(),
                );
                tokio::spawn(async move {
                    direct_get(&hub, &local, &rest, reply.as_deref(), &payload).await;
                });
                return true;
            }
            _ => return false,
        };
        let (verb, name) = match stream_op.split_once('.') {
            Some(("MSG", rest)) => match rest.split_once('.') {
                Some(("GET", name)) => ("MSG.GET", name),
                Some(("DELETE", name)) => ("MSG.DELETE", name),
                _ => return false,
            },
            Some((verb, name)) => (verb, name),
            None => (stream_op, ""),
        };
        let kind = match verb {
            "CREATE" => "stream_create",
            "UPDATE" => "stream_update",
            "INFO" => "stream_info",
            "DELETE" => "stream_delete",
            "PURGE" => "stream_purge",
            "NAMES" => "stream_names",
            "LIST" => "stream_list",
            "MSG.GET" => "stream_msg_get",
            "MSG.DELETE" => "stream_msg_delete",
            _ => return false,
        };
        let peers_only = matches!(verb, "UPDATE" | "INFO" | "PURGE" | "MSG.GET" | "MSG.DELETE");
        let local = self.local(name);
        if peers_only && local.is_none() {
            let answer = if !self.view().streams.contains_key(name) {
                not_found()
            } else if self.routed(hub, subject, &queue_of(name)) {
                // A peer answers (the routes carry the request to one).
                return false;
            } else {
                unavailable("no member holding the stream can be reached")
            };
            answer_to(hub, reply, kind, Err(answer));
            return true;
        }
        let (me, hub2) = (self.clone(), hub.clone());
        let (verb, name, reply, payload) = (
            verb.to_string(),
            name.to_string(),
            reply.map(str::to_string),
            payload.clone(),
        );
        tokio::spawn(async move {
            let answer = me
                .stream_request(&hub2, &verb, &name, local, &payload)
                .await;
            if let Err(e) = &answer {
                tracing::debug!(stream = %name, verb, error = %e, "JetStream API error");
            }
            answer_to(&hub2, reply.as_deref(), kind, answer);
        });
        true
    }

    /// A `$JS.API.CONSUMER.*` request: served here when this member leads the stream's
    /// group (answered once a create or delete is committed), left to the routes (to the
    /// leader) when the stream exists elsewhere.
    fn consumer_api(&self, hub: &Arc<Hub>, op: &str, reply: Option<&str>, payload: &Bytes) -> bool {
        let tail = op
            .strip_prefix("DURABLE.")
            .or_else(|| op.strip_prefix("MSG."))
            .unwrap_or(op);
        let (verb, rest) = tail.split_once('.').unwrap_or((tail, ""));
        let stream = rest.split('.').next().unwrap_or_default();
        let Some(handle) = hub.stream_handle(stream) else {
            if !self.view().streams.contains_key(stream) {
                answer_to(hub, reply, "consumer_info", Err(not_found()));
                return true;
            }
            let subject = format!("$JS.API.CONSUMER.{op}");
            if self.routed(hub, &subject, &leader_queue_of(stream)) {
                return false;
            }
            // No leader serves the stream's consumers yet (an election): say so rather
            // than let the request go unanswered.
            answer_to(
                hub,
                reply,
                "consumer_info",
                Err(unavailable("the stream has no leader at the moment")),
            );
            return true;
        };
        match consumers::api(hub, op, reply, payload) {
            consumers::Served::Answer(kind, answer) => {
                let changed = answer.is_ok() && matches!(verb, "CREATE" | "DELETE");
                if !changed {
                    answer_to(hub, reply, kind, answer);
                    return true;
                }
                let (hub, reply) = (hub.clone(), reply.map(str::to_string));
                tokio::spawn(async move {
                    let answer = match flush(&handle).await {
                        Ok(()) => answer,
                        Err(e) => Err(e),
                    };
                    answer_to(&hub, reply.as_deref(), kind, answer);
                });
                true
            }
            consumers::Served::Done => true,
            consumers::Served::No => false,
        }
    }

    /// Whether `subject` would reach, through an open link, a member serving `queue`.
    fn routed(&self, hub: &Hub, subject: &str, queue: &str) -> bool {
        hub.routes.remote_matches(subject).is_some_and(|m| {
            m.queues
                .iter()
                .any(|(g, peers)| g == queue && peers.iter().any(|p| hub.routes.is_up(*p)))
        })
    }

    fn account_info(&self, hub: &Hub) -> Value {
        let streams = self.view().streams.len();
        let storage: u64 = lock(&self.local)
            .values()
            .filter_map(|l| l.group.read(|s| s.store().state().bytes))
            .sum();
        json!({
            "memory": 0,
            "storage": storage,
            "reserved_memory": 0,
            "reserved_storage": 0,
            "streams": streams,
            "consumers": lock(&self.local)
                .values()
                .filter_map(|l| lock(&l.led).as_ref().map(|h| h.consumers().len()))
                .sum::<usize>(),
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
                "total": hub.js.api_total.load(std::sync::atomic::Ordering::Relaxed),
                "errors": hub.js.api_errors.load(std::sync::atomic::Ordering::Relaxed),
            },
        })
    }

    async fn stream_request(
        &self,
        hub: &Arc<Hub>,
        verb: &str,
        name: &str,
        local: Option<Arc<Local>>,
        payload: &[u8],
    ) -> Result<Value, ApiError> {
        let local = || -> Result<Arc<Local>, ApiError> { local.clone().ok_or_else(not_found) };
        match verb {
            "CREATE" => self.create(hub, name, payload).await,
            "DELETE" => self.delete(hub, name).await,
            "NAMES" | "LIST" => {
                let r: api::ListRequest = body(payload)?;
                let names: Vec<(String, Assignment)> = self
                    .view()
                    .streams
                    .iter()
                    .filter(|(_, a)| {
                        r.subject.as_deref().is_none_or(|f| {
                            a.config
                                .subjects
                                .iter()
                                .any(|x| berth_messaging::subject::overlaps(x, f))
                        })
                    })
                    .map(|(n, a)| (n.clone(), a.clone()))
                    .collect();
                let total = names.len();
                if verb == "NAMES" {
                    let page: Vec<&String> = names
                        .iter()
                        .skip(r.offset)
                        .take(api::NAMES_LIMIT)
                        .map(|(n, _)| n)
                        .collect();
                    return Ok(json!({
                        "total": total,
                        "offset": r.offset,
                        "limit": api::NAMES_LIMIT,
                        "streams": if page.is_empty() { Value::Null } else { json!(page) },
                    }));
                }
                let infos: Vec<Value> = names
                    .iter()
                    .skip(r.offset)
                    .take(api::LIST_LIMIT)
                    .map(|(n, a)| self.info_of(hub, n, a, None))
                    .collect();
                Ok(
                    json!({"total": total, "offset": r.offset, "limit": api::LIST_LIMIT, "streams": infos}),
                )
            }
            "INFO" => {
                let r: api::InfoRequest = body(payload)?;
                let l = local()?;
                read_barrier(&l).await?;
                Ok(self.info_of(hub, name, &l.assignment(), r.subjects_filter.as_deref()))
            }
            "UPDATE" => {
                let l = local()?;
                self.update(hub, name, &l, payload).await
            }
            "PURGE" => {
                let r: api::PurgeRequest = body(payload)?;
                let cmd = Command::Purge {
                    filter: r.filter.as_deref(),
                    seq: r.seq,
                    keep: r.keep,
                };
                let l = local()?;
                match propose(&l, &cmd).await? {
                    Outcome::Removed(n) => Ok(json!({"success": true, "purged": n})),
                    other => Err(unexpected(&other)),
                }
            }
            "MSG.DELETE" => {
                let r: MsgRequest = body(payload)?;
                let seq = r
                    .seq
                    .ok_or_else(|| ApiError::new(400, 10003, "bad request"))?;
                let l = local()?;
                match propose(&l, &Command::Delete { seq }).await? {
                    Outcome::Done => Ok(json!({"success": true})),
                    other => Err(unexpected(&other)),
                }
            }
            "MSG.GET" => {
                let r: MsgRequest = body(payload)?;
                let l = local()?;
                read_barrier(&l).await?;
                let m = l.group.read(|s| api::find(s, &r)).ok_or_else(not_found)??;
                Ok(json!({"message": api::msg_json(&m)}))
            }
            _ => Err(ApiError::new(400, 10003, "bad request")),
        }
    }

    /// A stream's info from its assignment and, when this member holds a replica, its state.
    fn info_of(&self, hub: &Hub, name: &str, a: &Assignment, filter: Option<&str>) -> Value {
        let local = self.local(name);
        let (state, subjects) = local
            .as_ref()
            .and_then(|l| {
                l.group.read(|s| {
                    (
                        s.store().state(),
                        filter.map(|f| json!(s.store().subject_counts(f))),
                    )
                })
            })
            .unwrap_or_default();
        let leader = local.and_then(|l| l.replica.status().leader);
        // Members by name, as nats-server names its servers.
        let names: HashMap<u64, String> = hub
            .core
            .consensus
            .members()
            .into_iter()
            .map(|m| (m.id, m.member.name))
            .collect();
        let name_of = |id: u64| names.get(&id).cloned().unwrap_or_else(|| format!("{id:x}"));
        let replicas: Vec<Value> = a
            .peers
            .iter()
            .filter(|p| Some(**p) != leader)
            .map(|p| json!({"name": name_of(*p), "current": true}))
            .collect();
        json!({
            "config": a.config,
            "created": api::time(a.created),
            "state": api::state_json(&state, 0, subjects),
            "cluster": {
                "name": hub.core.config.initial_cluster_token,
                "leader": leader.map(name_of),
                "replicas": replicas,
            },
            "ts": api::time(now_ns()),
        })
    }

    async fn create(&self, hub: &Arc<Hub>, name: &str, payload: &[u8]) -> Result<Value, ApiError> {
        let config = config_of(name, payload)?;
        if config.retention != berth_messaging::stream::Retention::Limits {
            return Err(ApiError::new(
                400,
                10003,
                "bad request: interest and work-queue retention of streams in a cluster are not served yet",
            ));
        }
        // Against everything committed before (another member may have just created it).
        hub.core
            .consensus
            .read_index()
            .await
            .map_err(|e| unavailable(&e))?;
        let existing = read_assignments(hub).map_err(|e| unavailable(&e))?;
        if let Some(a) = existing.get(name) {
            if a.config != config {
                return Err(ApiError::new(
                    400,
                    10058,
                    "stream name already in use with a different configuration",
                ));
            }
            return Ok(self.info_of(hub, name, a, None));
        }
        let overlapping = existing.values().any(|a| {
            a.config.subjects.iter().any(|x| {
                config
                    .subjects
                    .iter()
                    .any(|y| berth_messaging::subject::overlaps(x, y))
            })
        });
        if overlapping {
            return Err(ApiError::new(
                400,
                10065,
                "subjects overlap with an existing stream",
            ));
        }
        let replicas = usize::try_from(config.num_replicas.max(1)).unwrap_or(usize::MAX);
        let peers = place(hub, &existing, replicas)?;
        let a = Assignment {
            config,
            created: now_ns(),
            group: format!("js-{:016x}", rand::rng().random::<u64>()),
            peers,
        };
        let value = serde_json::to_vec(&a).map_err(|e| unavailable(&e))?;
        let k = key(name);
        let txn = TxnRequest {
            compare: vec![Compare {
                key: k.clone(),
                target: CompareTarget::Version as i32,
                result: CompareResult::Equal as i32,
                target_union: Some(TargetUnion::Version(0)),
                ..Default::default()
            }],
            success: vec![put_op(k, value, 0)],
            failure: Vec::new(),
        };
        match hub
            .core
            .consensus
            .propose_in(Keyspace::Messaging, StoreCommand::Txn(txn))
            .await
        {
            Ok(Applied::Txn(r)) if r.succeeded => {}
            Ok(_) => {
                return Err(ApiError::new(
                    400,
                    10058,
                    "stream name already in use (created concurrently)",
                ))
            }
            Err(e) => return Err(unavailable(&e)),
        }
        tracing::info!(stream = %name, group = %a.group, peers = ?a.peers, "JetStream: stream assigned");
        // Answered once the stream's peers serve it here (their interest reached this
        // member, or this member is one): a publish right after the answer is stored.
        self.sync_view(hub).await;
        let subject = a.config.subjects.first().cloned().unwrap_or_default();
        let queue = queue_of(name);
        let deadline = tokio::time::Instant::now() + CREATE_PATIENCE;
        loop {
            let here = self.local(name).is_some();
            // A peer's interest has come here, and this member's link to it is open.
            let routed = self.routed(hub, &subject, &queue);
            let led = match self.local(name) {
                Some(l) => l.replica.leader().await.is_ok(),
                None => true,
            };
            // And its consumers' runtime on the leader answers (here or through a link).
            let consumers = self.led(name).is_some()
                || self.routed(
                    hub,
                    &format!("$JS.API.CONSUMER.NAMES.{name}"),
                    &leader_queue_of(name),
                );
            if (here || routed) && led && consumers {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                tracing::warn!(stream = %name, "JetStream: created, but its peers do not serve it yet");
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut info = self.info_of(hub, name, &a, None);
        info["did_create"] = json!(true);
        Ok(info)
    }

    async fn update(
        &self,
        hub: &Arc<Hub>,
        name: &str,
        local: &Local,
        payload: &[u8],
    ) -> Result<Value, ApiError> {
        let config = config_of(name, payload)?;
        hub.core
            .consensus
            .read_index()
            .await
            .map_err(|e| unavailable(&e))?;
        let existing = read_assignments(hub).map_err(|e| unavailable(&e))?;
        let Some(old) = existing.get(name) else {
            return Err(not_found());
        };
        old.config.check_update(&config)?;
        if config.num_replicas != old.config.num_replicas {
            return Err(ApiError::new(
                400,
                10052,
                "changing a stream's replicas is not supported yet",
            ));
        }
        let overlapping = existing.iter().any(|(n, a)| {
            n != name
                && a.config.subjects.iter().any(|x| {
                    config
                        .subjects
                        .iter()
                        .any(|y| berth_messaging::subject::overlaps(x, y))
                })
        });
        if overlapping {
            return Err(ApiError::new(
                400,
                10065,
                "subjects overlap with an existing stream",
            ));
        }
        let json_config = serde_json::to_vec(&config).map_err(|e| unavailable(&e))?;
        // The stream applies its new limits at one point of its log, then the assignment
        // records the configuration.
        match propose(
            local,
            &Command::Configure {
                now: now_ns(),
                config: &json_config,
            },
        )
        .await?
        {
            Outcome::Done => {}
            other => return Err(unexpected(&other)),
        }
        let a = Assignment {
            config,
            ..old.clone()
        };
        let value = serde_json::to_vec(&a).map_err(|e| unavailable(&e))?;
        hub.core
            .consensus
            .propose_in(
                Keyspace::Messaging,
                StoreCommand::Txn(TxnRequest {
                    compare: Vec::new(),
                    success: vec![put_op(key(name), value, 0)],
                    failure: Vec::new(),
                }),
            )
            .await
            .map_err(|e| unavailable(&e))?;
        self.sync_view(hub).await;
        Ok(self.info_of(hub, name, &a, None))
    }

    async fn delete(&self, hub: &Arc<Hub>, name: &str) -> Result<Value, ApiError> {
        let txn = TxnRequest {
            compare: vec![Compare {
                key: key(name),
                target: CompareTarget::Version as i32,
                result: CompareResult::Greater as i32,
                target_union: Some(TargetUnion::Version(0)),
                ..Default::default()
            }],
            success: vec![delete_op(key(name), Vec::new())],
            failure: Vec::new(),
        };
        match hub
            .core
            .consensus
            .propose_in(Keyspace::Messaging, StoreCommand::Txn(txn))
            .await
        {
            Ok(Applied::Txn(r)) if r.succeeded => {
                tracing::info!(stream = %name, "JetStream: stream deleted");
                self.sync_view(hub).await;
                Ok(json!({"success": true}))
            }
            Ok(_) => Err(not_found()),
            Err(e) => Err(unavailable(&e)),
        }
    }
}

/// Every assignment in this member's store.
fn read_assignments(hub: &Hub) -> Result<BTreeMap<String, Assignment>, String> {
    let resp = hub
        .core
        .store
        .range_in(
            Keyspace::Messaging,
            &RangeRequest {
                key: PREFIX.to_vec(),
                range_end: berth_proto::keys::prefix_end(PREFIX),
                ..Default::default()
            },
        )
        .map_err(|e| e.to_string())?;
    let mut out = BTreeMap::new();
    for kv in resp.kvs {
        let name = String::from_utf8_lossy(&kv.key[PREFIX.len()..]).to_string();
        match serde_json::from_slice::<Assignment>(&kv.value) {
            Ok(a) => {
                out.insert(name, a);
            }
            Err(e) => {
                tracing::error!(stream = %name, error = %e, "JetStream: an unreadable stream assignment")
            }
        }
    }
    Ok(out)
}

/// Chooses `n` members for a new stream: those holding the fewest replicas, ties broken at
/// random.
fn place(
    hub: &Hub,
    existing: &BTreeMap<String, Assignment>,
    n: usize,
) -> Result<Vec<u64>, ApiError> {
    let members: Vec<u64> = hub
        .core
        .consensus
        .members()
        .into_iter()
        .filter(|m| !m.is_learner)
        .map(|m| m.id)
        .collect();
    if !matches!(n, 1 | 3 | 5) && n > members.len() {
        return Err(ApiError::new(
            500,
            10074,
            "insufficient resources: replicas exceed the cluster's members",
        ));
    }
    if n > members.len() {
        return Err(ApiError::new(
            500,
            10074,
            format!(
                "insufficient resources: {n} replicas asked, the cluster has {} members",
                members.len()
            ),
        ));
    }
    let mut load: Vec<(usize, u32, u64)> = members
        .iter()
        .map(|m| {
            let held = existing.values().filter(|a| a.peers.contains(m)).count();
            (held, rand::rng().random::<u32>(), *m)
        })
        .collect();
    load.sort_unstable();
    Ok(load.into_iter().take(n).map(|(_, _, m)| m).collect())
}

/// Waits until this replica has applied everything committed before the call (a read on a
/// follower sees every acknowledged publish).
async fn read_barrier(local: &Local) -> Result<(), ApiError> {
    local
        .replica
        .read_index()
        .await
        .map_err(|e| unavailable(&e))
}

/// Proposes one command to the stream's group; its outcome once applied.
async fn propose(local: &Local, cmd: &Command<'_>) -> Result<Outcome, ApiError> {
    let bytes = local
        .replica
        .propose(cmd.encode())
        .await
        .map_err(|e| propose_error(&e))?;
    match Outcome::decode(&bytes) {
        Ok(Outcome::Refused(e)) => Err(e),
        Ok(o) => Ok(o),
        Err(e) => Err(unavailable(e)),
    }
}

fn propose_error(e: &ProposeError) -> ApiError {
    match e {
        ProposeError::Unknown => ApiError::new(
            503,
            10008,
            "JetStream system temporarily unavailable: the stream's leader changed; the outcome is unknown",
        ),
        other => unavailable(other),
    }
}

fn unexpected(o: &Outcome) -> ApiError {
    ApiError::new(500, 10049, format!("unexpected stream outcome {o:?}"))
}

fn answer_to(hub: &Hub, reply: Option<&str>, kind: &str, answer: Result<Value, ApiError>) {
    hub.js
        .api_total
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if answer.is_err() {
        hub.js
            .api_errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let Some(reply) = reply else { return };
    let body = api::response(kind, answer);
    hub.inject(reply, None, &Bytes::from(body.to_string()));
}

/// Proposes a stream's publishes in the order they came, a batch at a time, and answers
/// each reply subject with its acknowledgement once applied.
async fn propose_publishes(
    hub: Arc<Hub>,
    local: Arc<Local>,
    mut rx: mpsc::UnboundedReceiver<Pending>,
) {
    let mut stop = local.stop.subscribe();
    loop {
        let first = tokio::select! {
            p = rx.recv() => match p {
                Some(p) => p,
                None => return,
            },
            _ = stop.changed() => return,
        };
        let mut bytes = first.payload.len();
        let mut batch = vec![first];
        while batch.len() < PROPOSE_BATCH && bytes < PROPOSE_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += p.payload.len() + p.headers.as_ref().map_or(0, Bytes::len);
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        // One command for the batch: the group stores them in the order they came.
        let cmd = Command::Publishes {
            now: now_ns(),
            msgs: batch
                .iter()
                .map(|p| {
                    (
                        p.subject.as_str(),
                        p.headers.as_deref().unwrap_or_default(),
                        &p.payload[..],
                    )
                })
                .collect(),
        };
        let results: Vec<Result<Outcome, ApiError>> = match propose(&local, &cmd).await {
            Ok(Outcome::Many(all)) if all.len() == batch.len() => all.into_iter().map(Ok).collect(),
            Ok(other) => batch.iter().map(|_| Err(unexpected(&other))).collect(),
            Err(e) => batch.iter().map(|_| Err(e.clone())).collect(),
        };
        let name = local.assignment().config.name;
        for (p, r) in batch.iter().zip(results) {
            let answer = match r {
                Ok(Outcome::Stored(ack)) => Ok(ack),
                Ok(Outcome::Refused(e)) => Err(e),
                Ok(other) => Err(unexpected(&other)),
                Err(e) => Err(e),
            };
            if let Some(reply) = &p.reply {
                let body = api::pub_ack(&name, answer);
                hub.inject(reply, None, &Bytes::from(body));
            }
        }
    }
}

/// Follows the group's leadership: while this member leads, it runs the stream's consumers
/// and expires messages past max_age and fires due schedules, with its clock.
async fn timed_work(hub: Arc<Hub>, local: Arc<Local>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TIMED_WORK_EVERY) => {}
            _ = stop.changed() => return,
        }
        let leads = local.replica.status().is_leader;
        let running = lock(&local.led).is_some();
        if !leads {
            if running {
                step_down(&hub, &local);
            }
            continue;
        }
        if !running {
            take_lead(&hub, &local).await;
        }
        let now = now_ns();
        let due = local.group.read(|s| {
            let max_age = s.config().max_age;
            let expired = max_age > 0
                && s.store()
                    .oldest()
                    .is_some_and(|(_, t, _)| t < now.saturating_sub(max_age));
            let scheduled = s.next_schedule().is_some_and(|at| at <= now);
            (expired, scheduled)
        });
        let Some((expired, scheduled)) = due else {
            continue;
        };
        for (go, cmd) in [
            (expired, Command::Expire { now }),
            (scheduled, Command::FireSchedules { now }),
        ] {
            if go {
                if let Err(e) = propose(&local, &cmd).await {
                    tracing::debug!(error = %e, "JetStream: timed work not proposed");
                }
            }
        }
    }
}

/// A direct get served by a replica (after a read barrier).
async fn direct_get(hub: &Hub, local: &Local, rest: &str, reply: Option<&str>, payload: &Bytes) {
    let (name, last_of) = match rest.split_once('.') {
        Some((n, s)) => (n, Some(s)),
        None => (rest, None),
    };
    if !local.assignment().config.allow_direct {
        return;
    }
    let Some(reply) = reply else { return };
    if read_barrier(local).await.is_err() {
        return;
    }
    let request = match last_of {
        Some(subject) => Ok(MsgRequest {
            last_by_subj: Some(subject.to_string()),
            ..Default::default()
        }),
        None if payload.is_empty() => {
            api::direct_answer(
                hub,
                reply,
                name,
                Err(ApiError::new(408, 0, api::EMPTY_REQUEST)),
            );
            return;
        }
        None => body::<MsgRequest>(payload),
    };
    let found: Result<StoredMsg, ApiError> = request.and_then(|r| {
        local
            .group
            .read(|s| api::find(s, &r))
            .unwrap_or_else(|| Err(not_found()))
    });
    api::direct_answer(hub, reply, name, found);
}

/// Starts the stream's consumers here, this member having become the group's leader: once
/// it has applied everything committed, they are restored from the group's state.
async fn take_lead(hub: &Arc<Hub>, local: &Arc<Local>) {
    if local.replica.read_index().await.is_err() {
        return;
    }
    let a = local.assignment();
    let name = a.config.name.clone();
    let last = local
        .group
        .read(|s| s.store().state().last_seq)
        .unwrap_or_default();
    let restored = consumers::Consumers::from_saved(local.group.consumers(), last);
    let (tx, rx) = mpsc::unbounded_channel();
    let handle =
        StreamHandle::replicated(&name, PathBuf::new(), local.group.shared(), restored, tx);
    *lock(&local.led) = Some(handle.clone());
    tokio::spawn(save_consumers(
        hub.clone(),
        local.clone(),
        Arc::downgrade(&handle),
        rx,
    ));
    tokio::spawn(consumers::dispatch(Arc::downgrade(hub), handle.clone()));
    // New messages wake the consumers.
    let (mut applied, weak) = (local.group.applied(), Arc::downgrade(&handle));
    tokio::spawn(async move {
        while applied.changed().await.is_ok() {
            match weak.upgrade() {
                Some(h) if !h.is_closed() => h.wake.notify_one(),
                _ => return,
            }
        }
    });
    let queue = leader_queue_of(&name);
    for s in leader_subjects(&name) {
        hub.routes.local_added(&s, Some(&queue));
    }
    tracing::info!(stream = %name, consumers = handle.consumers().len(), "JetStream: leading the stream; its consumers run here");
}

/// Stops the stream's consumers here (leadership moved away, or the replica stops).
fn step_down(hub: &Hub, local: &Local) {
    let Some(handle) = lock(&local.led).take() else {
        return;
    };
    handle.close();
    let name = local.assignment().config.name;
    let queue = leader_queue_of(&name);
    for s in leader_subjects(&name) {
        hub.routes.local_removed(&s, Some(&queue));
    }
    tracing::info!(stream = %name, "JetStream: no longer leading the stream; its consumers stopped here");
}

/// Waits until every consumer state handed to the saver before is committed.
async fn flush(handle: &StreamHandle) -> Result<(), ApiError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let stepped_down = || unavailable("the stream's leader stepped down");
    handle
        .saver
        .as_ref()
        .ok_or_else(stepped_down)?
        .send(SaverMsg::Flush(tx))
        .map_err(|_| stepped_down())?;
    rx.await.map_err(|_| stepped_down())?
}

/// Proposes the consumers' changed states to the group, a batch at a time, then answers the
/// acks and flushes that waited for them. A state that could not be proposed is marked to
/// be saved again; the acks waiting on it are not answered (their clients retry).
async fn save_consumers(
    hub: Arc<Hub>,
    local: Arc<Local>,
    handle: std::sync::Weak<StreamHandle>,
    mut rx: mpsc::UnboundedReceiver<SaverMsg>,
) {
    while let Some(first) = rx.recv().await {
        let mut msgs = vec![first];
        while let Ok(m) = rx.try_recv() {
            msgs.push(m);
        }
        let mut states: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut replies = Vec::new();
        let mut flushes = Vec::new();
        for m in msgs {
            match m {
                SaverMsg::Save(name, state) => {
                    states.insert(name, state);
                }
                SaverMsg::Replies(r) => replies.extend(r),
                SaverMsg::Flush(tx) => flushes.push(tx),
            }
        }
        let result = if states.is_empty() {
            Ok(())
        } else {
            let entries = states
                .iter()
                .map(|(n, s)| (n.as_str(), s.as_slice()))
                .collect();
            propose(&local, &Command::Consumers { entries })
                .await
                .map(|_| ())
        };
        match &result {
            Ok(()) => {
                for r in replies {
                    hub.inject(&r, None, &Bytes::new());
                }
            }
            Err(e) => {
                tracing::warn!(stream = %local.assignment().config.name, error = %e, "JetStream: consumer states not saved; trying again");
                if let Some(h) = handle.upgrade() {
                    let mut consumers = h.consumers();
                    for name in states.keys() {
                        consumers.mark_dirty(name);
                    }
                }
            }
        }
        for f in flushes {
            let _ = f.send(result.clone());
        }
    }
}
