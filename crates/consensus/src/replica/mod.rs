//! A running Raft member of one group: starts openraft over the log store and the group's
//! state machine, bootstraps the cluster, and offers `propose` (opaque command bytes through
//! the log, answered with the state's result bytes), `read_index` (linearizable reads without
//! a log write), membership changes, the role it plays ([`Replica::roles`]) and channels to
//! peers for services of other layers (the server's lease leader service).
//!
//! # Layout
//! - this file: configuration, start, identity, peer channels, status and shutdown;
//! - `write`: proposing, and forwarding to the leader;
//! - `read`: the read index for linearizable reads;
//! - `membership`: membership changes, here or at the leader;
//! - `leadership`: who leads, the role watch, and waiting on Raft's metrics.

mod leadership;
mod membership;
mod read;
mod write;

pub(crate) use leadership::watch_metrics;
use leadership::watch_role;
pub use leadership::Role;
pub(crate) use membership::run_change;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use berth_proto::berth::raft::{Blob, ForwardRefusal};
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::raft::ReadPolicy;
use openraft::{ChangeMembers, Config, Raft, RaftMetrics, SnapshotPolicy};

use crate::batch_counts::BatchCounts;
use crate::env::{Environment, Transport};
use crate::forwarder::{ForwardStream, Forwarded};
use crate::group::{GroupId, GroupState};
use crate::identity::PeerStamp;
use crate::log_store::{FlushObserver, LogStore};
use crate::network::{peer_channel, peer_client, raft_client, PeerChannel, PeerNetwork};
use crate::read_batch::ReadBatcher;
use crate::state_machine::StateMachine;
use crate::types::{Change, Member, RaftRequest, TypeConfig};
use crate::write_batch::WriteBatcher;

/// The longest pause between attempts at a membership change refused as "not the leader".
const MEMBERSHIP_RETRY_MAX: Duration = Duration::from_millis(400);

/// How long a request waits for a leader to be elected before giving up.
const NO_LEADER_PATIENCE: Duration = Duration::from_secs(5);
/// How long a forwarded membership change may take.
const MEMBERSHIP_PATIENCE: Duration = Duration::from_secs(10);

/// Timing and retention settings, from the node configuration.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Election timeout (the upper bound of the randomized timeout; the lower is 3/4 of it).
    pub election_timeout: Duration,
    /// Entries applied between snapshots (etcd's `--snapshot-count`).
    pub snapshot_count: u64,
    /// Entries kept behind a snapshot for slow followers.
    pub keep_behind_snapshot: u64,
    /// How peers are dialed and where storage work runs.
    pub env: Environment,
    /// The cluster this member belongs to: stamped on every peer message it sends, and
    /// required of every peer message it accepts.
    pub cluster_id: u64,
    /// The Raft group this replica runs (stamped on its peer messages).
    pub group: GroupId,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_millis(100),
            election_timeout: Duration::from_millis(1000),
            snapshot_count: 100_000,
            keep_behind_snapshot: 5_000,
            env: Environment::default(),
            cluster_id: 0,
            group: GroupId::meta(),
        }
    }
}

/// Why a proposal did not produce a result. (A command the state machine refuses is still
/// applied: its refusal is in the result bytes, for the state's owner to decode.)
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// This member is not the leader; the leader is given when known.
    #[error("not the leader (leader: {0:?})")]
    NotLeader(Option<u64>),
    /// A membership change was refused (e.g. another change is in progress).
    #[error("membership change refused: {0}")]
    Membership(String),
    /// The leader changed while the command was in flight: it may or may not have been
    /// applied, so it is not retried (etcd: "leader changed").
    #[error("leader changed; the outcome of the request is unknown")]
    Unknown,
    /// Raft stopped (shutdown or a fatal storage error).
    #[error("consensus stopped: {0}")]
    Stopped(String),
}

/// A snapshot of the Raft state for Status and metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct RaftStatus {
    /// Current term.
    pub term: u64,
    /// Current leader, if known (and, when it is this member, still in contact with a
    /// quorum).
    pub leader: Option<u64>,
    /// Index of the last log entry.
    pub last_log_index: u64,
    /// Index of the last applied entry.
    pub applied_index: u64,
    /// Index of the last committed entry.
    pub committed_index: u64,
    /// True when this member leads (openraft's Leader state).
    pub is_leader: bool,
    /// True when this member leads but has not heard from a quorum within the leader lease
    /// (cut off from the majority, which may have elected another leader): `leader` is then
    /// `None`, as on an etcd member whose leader stepped down.
    pub quorum_lost: bool,
    /// Times the leader this member knows of changed.
    pub leader_changes: u64,
    /// Snapshots this member built.
    pub snapshots_built: u64,
    /// Snapshots this member installed from a leader.
    pub snapshots_installed: u64,
}

/// How concurrent requests shared work on this member, since start (for `/metrics`; kept out
/// of [`RaftStatus`], which every response header reads).
#[derive(Debug, Clone, Copy, Default)]
pub struct Sharing {
    /// Read-index requests this member sent to the leader, and the reads they answered.
    pub forwarded_reads: BatchCounts,
    /// Leadership confirmations this member made as leader, and the reads they answered.
    pub confirmed_reads: BatchCounts,
    /// Raft calls proposing writes here (local and forwarded), and the writes they carried.
    pub proposed_writes: BatchCounts,
}

/// One member's Raft instance of one group.
pub struct Replica {
    id: u64,
    group: GroupId,
    raft: Raft<TypeConfig, StateMachine>,
    state: Arc<dyn GroupState>,
    snapshot_dir: std::path::PathBuf,
    peers: std::sync::Mutex<std::collections::HashMap<u64, PeerChannel>>,
    cluster_id: u64,
    snapshots: Arc<crate::state_machine::SnapshotCounters>,
    leader_changes: Arc<std::sync::atomic::AtomicU64>,
    transport: Transport,
    /// Read-index requests to the leader, shared by concurrent reads on a follower.
    reads: ReadBatcher,
    /// Leadership confirmations, shared by concurrent reads on the leader.
    local_reads: ReadBatcher,
    /// Writes proposed here (and forwarded here), batched into fewer Raft calls.
    writes: Arc<WriteBatcher>,
    /// Writes proposed here while another member leads go to it over this stream. A tokio
    /// mutex: opening a stream awaits the leader, and concurrent writers must wait for that
    /// one stream rather than each open their own.
    forwarder: tokio::sync::Mutex<Option<Arc<ForwardStream>>>,
    /// The role, as the role watcher last saw it.
    roles: tokio::sync::watch::Receiver<Role>,
    /// openraft's leader lease (the election timeout): how recently a leader must have heard
    /// from a quorum to count as leading ([`leadership::quorum_contact`]).
    leader_lease: Duration,
}

/// What the peer router serves of one group's replica.
pub(crate) struct GroupPeer {
    pub(crate) raft: Raft<TypeConfig, StateMachine>,
    /// Forwarded writes are proposed through the member's batcher, with its own.
    pub(crate) writes: Arc<WriteBatcher>,
    /// Checks that a forwarded command is one the group can apply.
    pub(crate) state: Arc<dyn GroupState>,
    pub(crate) snapshot_dir: std::path::PathBuf,
}

/// A member of the current configuration, as the Cluster API lists it.
#[derive(Debug, Clone)]
pub struct MemberEntry {
    /// Member ID.
    pub id: u64,
    /// Name and URLs.
    pub member: Member,
    /// True for a non-voting member.
    pub is_learner: bool,
}

impl Replica {
    /// Starts the member with ID `id`, keeping the log and snapshots under `dir`, applying to
    /// `state`. With `bootstrap`, a member that has never run initializes the cluster
    /// `members` (every initial member does so with the same list; the first election wins).
    /// Without it, the member waits to be added by an existing cluster.
    pub async fn start(
        id: u64,
        members: BTreeMap<u64, Member>,
        bootstrap: bool,
        dir: &Path,
        state: Arc<dyn GroupState>,
        cfg: &ReplicaConfig,
        on_flush: Option<FlushObserver>,
    ) -> Result<Replica, StartError> {
        let election = cfg.election_timeout.as_millis() as u64;
        let config = Config {
            cluster_name: "berth".into(),
            heartbeat_interval: cfg.heartbeat.as_millis() as u64,
            // openraft's leader lease equals election_timeout_max, and followers refuse votes
            // while it lasts: [0.75, 1.0] × --election-timeout gives ~1.5–2 s failovers.
            election_timeout_min: election * 3 / 4,
            election_timeout_max: election,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_count),
            max_in_snapshot_log_to_keep: cfg.keep_behind_snapshot,
            // Purge as soon as a snapshot allows it (openraft waits for a whole batch).
            purge_batch_size: cfg.keep_behind_snapshot.clamp(1, 1024),
            // A restarted leader campaigns like any member instead of resuming its old term.
            // Neither the state machine nor the committed index is fsynced (the log is), so it
            // comes back knowing less than it acknowledged; resuming, it would serve reads
            // from that (its read index would be its old term's first entry). A new term's
            // first entry, committed before any read, teaches it the rest, as in etcd.
            enable_leader_restore: Some(false),
            ..Default::default()
        }
        .validate()
        .map_err(|e| StartError(format!("raft config: {e}")))?;
        let io = cfg.env.storage_io;
        let log = LogStore::open_with(&dir.join("log"), on_flush, io)
            .map_err(|e| StartError(e.to_string()))?;
        let snapshot_dir = dir.join("snapshots");
        let sm = StateMachine::new(state.clone(), &snapshot_dir, io)
            .map_err(|e| StartError(e.to_string()))?;
        let snapshots = sm.counters();
        let network = PeerNetwork {
            group: cfg.group.clone(),
            transport: cfg.env.transport.clone(),
            io,
            cluster_id: cfg.cluster_id,
            member_id: id,
        };
        let log_handle = log.clone();
        let raft = Raft::new(id, Arc::new(config), network, log, sm)
            .await
            .map_err(|e| StartError(format!("starting raft: {e}")))?;
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| StartError(format!("raft: {e}")))?;
        if !initialized && bootstrap && !members.contains_key(&id) {
            return Err(StartError(format!(
                "the initial cluster does not list this member (ID {id:x}): check that --initial-cluster names this member's --initial-advertise-peer-urls"
            )));
        }
        if !initialized && bootstrap {
            tracing::info!(
                member = id,
                members = members.len(),
                "bootstrapping a new cluster"
            );
            if let Err(e) = raft.initialize(members).await {
                // Another initial member may have been faster; its leader catches us up.
                tracing::info!(error = %e, "cluster already initialized by a peer");
            }
        }
        let leader_changes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (role_tx, roles) = tokio::sync::watch::channel(Role::default());
        tokio::spawn(watch_role(
            raft.server_metrics(),
            leader_changes.clone(),
            log_handle,
            role_tx,
        ));
        let writes = Arc::new(WriteBatcher::new(raft.clone()));
        Ok(Replica {
            id,
            group: cfg.group.clone(),
            raft,
            state,
            snapshot_dir,
            peers: Default::default(),
            cluster_id: cfg.cluster_id,
            snapshots,
            leader_changes,
            transport: cfg.env.transport.clone(),
            reads: ReadBatcher::default(),
            local_reads: ReadBatcher::default(),
            writes,
            forwarder: Default::default(),
            roles,
            leader_lease: cfg.election_timeout,
        })
    }

    /// This member's ID.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The group this replica runs.
    pub fn group(&self) -> &GroupId {
        &self.group
    }

    /// What the peer router serves of this replica.
    pub(crate) fn group_peer(&self) -> (GroupId, GroupPeer) {
        let peer = GroupPeer {
            raft: self.raft.clone(),
            writes: self.writes.clone(),
            state: self.state.clone(),
            snapshot_dir: self.snapshot_dir.clone(),
        };
        (self.group.clone(), peer)
    }

    /// The membership as this member currently knows it.
    fn membership(&self) -> Arc<crate::types::StoredMembership> {
        self.raft
            .metrics()
            .borrow_watched()
            .membership_config
            .clone()
    }

    /// A channel to member `id`'s peer port, stamped as this group's messages: other
    /// layers call their own services on the peer port over it (the server's lease leader
    /// service).
    pub fn peer_channel(&self, id: u64) -> Result<PeerChannel, ProposeError> {
        let mut peers = crate::sync::LockExt::locked(&self.peers);
        if let Some(c) = peers.get(&id) {
            return Ok(c.clone());
        }
        let m = self.membership();
        let node = m
            .get_node(&id)
            .ok_or(ProposeError::NotLeader(Some(id)))?
            .clone();
        let stamp = PeerStamp::new(self.cluster_id, self.id, id, &self.group);
        let channel = peer_channel(&node, &self.transport, stamp).map_err(ProposeError::Stopped)?;
        peers.insert(id, channel.clone());
        Ok(channel)
    }

    /// A client for member `id`'s Raft peer service.
    fn peer(&self, id: u64) -> Result<crate::network::PeerClient, ProposeError> {
        Ok(raft_client(self.peer_channel(id)?))
    }

    /// Current Raft state.
    pub fn status(&self) -> RaftStatus {
        // Called for every response header: read the fields under the borrow, clone nothing.
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        // A restarted former leader still names itself leader (from its saved vote) until it
        // hears from the new one: only the Leader state counts as leading.
        let is_leader = m.state == openraft::ServerState::Leader;
        // A leader cut off from its quorum stays openraft's leader: berth does not vouch for it
        // (health, the leader it reports) once its leader lease has run out.
        let quorum_lost = is_leader && !leadership::quorum_contact(&m, self.leader_lease);
        let leader = if is_leader {
            (!quorum_lost).then_some(self.id)
        } else {
            m.current_leader.filter(|l| *l != self.id)
        };
        RaftStatus {
            term: m.current_term,
            leader,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            committed_index: m.local_committed.map(|l| l.index).unwrap_or(0),
            is_leader,
            quorum_lost,
            leader_changes: self
                .leader_changes
                .load(std::sync::atomic::Ordering::Relaxed),
            snapshots_built: self
                .snapshots
                .built
                .load(std::sync::atomic::Ordering::Relaxed),
            snapshots_installed: self
                .snapshots
                .installed
                .load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// How concurrent reads and writes shared rounds here.
    pub fn sharing(&self) -> Sharing {
        Sharing {
            forwarded_reads: self.reads.counts(),
            confirmed_reads: self.local_reads.counts(),
            proposed_writes: self.writes.counts(),
        }
    }

    /// Why Raft has stopped, if it has: a storage error (the log or the state machine could
    /// not be written or read), a panic, or a shutdown.
    pub fn stopped(&self) -> Option<String> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        m.running_state.as_ref().err().map(|e| e.to_string())
    }

    /// Waits until Raft stops; returns why. A member whose Raft stopped on its own can serve
    /// nothing correctly (writes fail, linearizable reads hang), so its process should end.
    pub async fn wait_stopped(&self) -> String {
        let mut metrics = self.raft.metrics();
        loop {
            if let Err(e) = &metrics.borrow_watched().running_state {
                return e.to_string();
            }
            if metrics.changed().await.is_err() {
                return "raft stopped".into();
            }
        }
    }

    /// Stops Raft.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }
}

/// Why a member could not start.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(pub String);

/// Asks the members at `peer_urls` for the cluster ID (what a member joining an existing
/// cluster adopts), dialed by `transport`; the first answer wins. `None` if nobody answered
/// within `timeout`.
pub async fn fetch_cluster_id(
    peer_urls: &[String],
    transport: &Transport,
    timeout: Duration,
) -> Option<u64> {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        for url in peer_urls {
            let member = Member {
                peer_urls: vec![url.clone()],
                ..Member::default()
            };
            let Ok(mut client) = peer_client(&member, transport, PeerStamp::anonymous()) else {
                continue;
            };
            let mut req = tonic::Request::new(Blob::default());
            req.set_timeout(Duration::from_secs(1));
            if let Ok(resp) = client.cluster_info(req).await {
                return Some(resp.into_inner().cluster_id);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}
