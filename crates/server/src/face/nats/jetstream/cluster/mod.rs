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
//! Interest and work-queue retention: the leader's consumers hand the messages they are
//! done with to the saver, which drops them through the group before it saves the states
//! that acknowledged them; an interest stream's group drops at once a publish no applied
//! consumer reaches; a new leader drops what its predecessor left.
//!
//! Dead letters: the leader publishes each to its subject with a reply subject of the
//! server's own (`Hub::request`), so whichever stream of the cluster takes it stores it; the
//! consumer lets the message go when the acknowledgement comes back.
//!
//! Schedules: the leader proposes firing when one is due, with its clock; the repeating
//! ones' due times are kept beside the messages, so a replica that restarts fires them as
//! the others do.
//!
//! Replica counts change with an update: the assignment names the new peers (or the ones
//! let go), and the group's leader brings the group's membership in line with it
//! (`membership`).
//!
//! Not yet: mirrors and sources, moving a stream's peers when a member leaves.
//!
//! # Layout
//! - this file: assignments, following them (`run`, `reconcile`), placement, and handing
//!   publishes to the local replica;
//! - `requests`: the `$JS.API` requests and acks, by who may answer them;
//! - `replica`: a local replica's proposer, its leader's work and consumers, proposing;
//! - `membership`: a group's members brought in line with its assignment.

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

mod membership;
mod replica;
mod requests;

use replica::{propose_publishes, step_down, timed_work};

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
/// How long a create waits for the stream's peers to serve it (well within the API's own
/// patience, `requests::API_PATIENCE`, which counts from the request).
const CREATE_PATIENCE: Duration = Duration::from_millis(2500);

/// A stream's placement, as the meta group holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Assignment {
    /// The configuration now.
    config: Config,
    /// The configuration the stream was created with: what a replica that has applied
    /// nothing yet starts from (its group's log carries every change since, in order).
    initial: Config,
    /// UNIX nanoseconds.
    created: i64,
    /// The stream's Raft group.
    group: String,
    /// Member IDs of its replicas.
    peers: Vec<u64>,
    /// Peers that do not form the group when they start empty: after any replica change,
    /// all of them (a new peer waits for the group's leader to take it in, and a peer that
    /// lost its files does not form a group of its own).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    joined: Vec<u64>,
    /// Peers the stream lets go (fewer replicas): they serve until the group has removed
    /// them (`membership::converge`), then the assignment forgets them and they stop.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    leaving: Vec<u64>,
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

/// The subjects only a stream's leader answers: its consumers' API, acks and push
/// consumers' flow control answers.
fn leader_subjects(name: &str) -> Vec<String> {
    let mut v = Vec::new();
    for verb in ["CREATE", "INFO", "DELETE", "NAMES", "LIST"] {
        v.push(format!("$JS.API.CONSUMER.{verb}.{name}"));
        v.push(format!("$JS.API.CONSUMER.{verb}.{name}.>"));
    }
    v.push(format!("$JS.API.CONSUMER.DURABLE.CREATE.{name}.>"));
    v.push(format!("$JS.API.CONSUMER.MSG.NEXT.{name}.>"));
    v.push(format!("$JS.ACK.{name}.>"));
    v.push(format!("$JS.FC.{name}.>"));
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
    /// The subjects this member announces for the stream (`None`: none now).
    announced: Mutex<Option<Vec<String>>>,
    /// Set once the group's Raft stopped on its own (a storage failure): the member stops
    /// announcing the stream, so its traffic goes to the other replicas.
    failed: std::sync::atomic::AtomicBool,
    /// Set while a membership step of the group runs (`membership::converge`).
    converging: Arc<std::sync::atomic::AtomicBool>,
}

impl Local {
    /// Announces `subjects` (the stream's and its API's) in the stream's queue group over
    /// the routes, replacing what was announced before.
    fn announce(&self, hub: &Hub, subjects: Vec<String>) {
        let mut announced = lock(&self.announced);
        if self.failed.load(std::sync::atomic::Ordering::Relaxed) || *self.stop.borrow() {
            return;
        }
        let queue = queue_of(&self.assignment().config.name);
        let old = announced.take().unwrap_or_default();
        for s in subjects.iter().filter(|s| !old.contains(s)) {
            hub.routes.local_added(s, Some(&queue));
        }
        for s in old.iter().filter(|s| !subjects.contains(s)) {
            hub.routes.local_removed(s, Some(&queue));
        }
        *announced = Some(subjects);
    }

    /// Stops announcing the stream.
    fn withdraw(&self, hub: &Hub) {
        let queue = queue_of(&self.assignment().config.name);
        if let Some(old) = lock(&self.announced).take() {
            for s in old {
                hub.routes.local_removed(&s, Some(&queue));
            }
        }
    }

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
            l.stop.send_replace(true);
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
                assigned.get(*name).is_none_or(|a| {
                    (!a.peers.contains(&me) && !a.leaving.contains(&me))
                        || a.group != l.assignment().group
                })
            })
            .map(|(n, l)| (n.clone(), l.clone()))
            .collect();
        for (name, l) in stale {
            lock(&self.local).remove(&name);
            let a = l.assignment();
            // Stopped first: nothing announces it again once withdrawn.
            l.stop.send_replace(true);
            l.withdraw(hub);
            step_down(hub, &l);
            hub.core.consensus.stop_group(&l.replica).await;
            let dir = self.dir.join(&a.group);
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "JetStream: removing a stopped replica's files");
            }
            tracing::info!(stream = %name, group = %a.group, "JetStream: replica stopped and removed");
        }
        for (name, a) in assigned {
            // Peers being let go keep their replica (and its vote) until the group has
            // removed them, and follow the assignment meanwhile.
            let leaving = a.leaving.contains(&me);
            if !a.peers.contains(&me) && !leaving {
                continue;
            }
            if let Some(l) = self.local(&name) {
                let changed = l.assignment().config.subjects != a.config.subjects;
                let subjects = interest_of(&a.config);
                *l.assignment.write().unwrap_or_else(|p| p.into_inner()) = a;
                if changed {
                    l.announce(hub, subjects);
                }
                continue;
            }
            match self.start_local(hub, &a).await {
                Ok(l) => {
                    if leaving {
                        // Back after a restart only to be removed: it votes, serves nothing.
                    } else if a.joined.contains(&me) {
                        // It may be joining a formed group: it serves once it knows the
                        // group's leader (which takes it in), not before.
                        announce_when_led(hub, &l);
                    } else {
                        l.announce(hub, interest_of(&a.config));
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
        let (config, created) = (a.initial.clone(), a.created);
        let stream_dir = dir.join("stream");
        let group = tokio::task::spawn_blocking(move || {
            StreamGroup::open(&stream_dir, config, created, SEGMENT_BYTES)
        })
        .await??;
        let group = Arc::new(group);
        // Every first peer bootstraps the group with the same members, byte for byte: IDs
        // and peer URLs from the meta group's membership. A peer that joined later waits
        // for the leader to bring it in.
        let members: BTreeMap<u64, Member> = a
            .peers
            .iter()
            .filter(|id| !a.joined.contains(id))
            .filter_map(|id| group_member(hub, *id).map(|m| (*id, m)))
            .collect();
        let me = hub.core.consensus.id();
        let bootstrap = !a.joined.contains(&me) && !a.leaving.contains(&me);
        let replica = hub
            .core
            .consensus
            .start_group(group_id, &dir, group.clone(), members, bootstrap)
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
            announced: Mutex::new(None),
            failed: Default::default(),
            converging: Default::default(),
        });
        // A group whose Raft stops on its own (a storage failure) serves nothing more: its
        // traffic goes to the other replicas.
        let (watched, hub2) = (Arc::downgrade(&local), hub.clone());
        let replica = local.replica.clone();
        tokio::spawn(async move {
            let why = replica.wait_stopped().await;
            let Some(l) = watched.upgrade() else { return };
            if *l.stop.borrow() {
                return;
            }
            l.failed.store(true, std::sync::atomic::Ordering::Relaxed);
            l.withdraw(&hub2);
            step_down(&hub2, &l);
            tracing::error!(stream = %l.assignment().config.name, reason = %why, "JetStream: this member's replica of the stream stopped; the other replicas serve it");
        });
        tokio::spawn(propose_publishes(hub.clone(), local.clone(), rx));
        tokio::spawn(timed_work(hub.clone(), local.clone(), stopped));
        Ok(local)
    }

    /// The stream (of any member) whose subjects take `subject`.
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
}

/// The assignment records from `key` to `range_end` (empty: the one key) in this member's
/// store.
fn stored_assignments(
    hub: &Hub,
    key: Vec<u8>,
    range_end: Vec<u8>,
) -> Result<Vec<berth_proto::mvccpb::KeyValue>, String> {
    hub.core
        .store
        .range_in(
            Keyspace::Messaging,
            &RangeRequest {
                key,
                range_end,
                ..Default::default()
            },
        )
        .map(|r| r.kvs)
        .map_err(|e| e.to_string())
}

/// Every assignment in this member's store.
fn read_assignments(hub: &Hub) -> Result<BTreeMap<String, Assignment>, String> {
    let kvs = stored_assignments(hub, PREFIX.to_vec(), berth_proto::keys::prefix_end(PREFIX))?;
    let mut out = BTreeMap::new();
    for kv in kvs {
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

/// Announces `local`'s subjects (as its assignment names them then) once its group has a
/// leader, checked every 50 ms until the replica stops or fails.
fn announce_when_led(hub: &Arc<Hub>, local: &Arc<Local>) {
    let (hub, local) = (hub.clone(), local.clone());
    tokio::spawn(async move {
        while !*local.stop.borrow() && !local.failed.load(std::sync::atomic::Ordering::Relaxed) {
            if local.replica.status().leader.is_some() {
                local.announce(&hub, interest_of(&local.assignment().config));
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

/// Member `id` of a stream's group, as the meta group knows it.
fn group_member(hub: &Hub, id: u64) -> Option<Member> {
    hub.core
        .consensus
        .members()
        .into_iter()
        .find(|m| m.id == id)
        .map(|m| Member {
            name: format!("{id:x}"),
            peer_urls: m.member.peer_urls,
            client_urls: Vec::new(),
        })
}

/// Chooses `n` members for a stream's replicas: those holding the fewest replicas, ties
/// broken at random, none of `besides` (its peers already).
fn place(
    hub: &Hub,
    existing: &BTreeMap<String, Assignment>,
    n: usize,
    besides: &[u64],
) -> Result<Vec<u64>, ApiError> {
    let members: Vec<u64> = hub
        .core
        .consensus
        .members()
        .into_iter()
        .filter(|m| !m.is_learner)
        .map(|m| m.id)
        .collect();
    let n_all = n + besides.len();
    if !matches!(n_all, 1 | 3 | 5) && n_all > members.len() {
        return Err(ApiError::new(
            500,
            10074,
            "insufficient resources: replicas exceed the cluster's members",
        ));
    }
    if n_all > members.len() {
        return Err(ApiError::new(
            500,
            10074,
            format!(
                "insufficient resources: {n_all} replicas asked, the cluster has {} members",
                members.len()
            ),
        ));
    }
    let mut load: Vec<(usize, u32, u64)> = members
        .iter()
        .filter(|m| !besides.contains(m))
        .map(|m| {
            let held = existing.values().filter(|a| a.peers.contains(m)).count();
            (held, rand::rng().random::<u32>(), *m)
        })
        .collect();
    load.sort_unstable();
    Ok(load.into_iter().take(n).map(|(_, _, m)| m).collect())
}
