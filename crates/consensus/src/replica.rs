//! A running Raft member of one group: starts openraft over the log store and the group's
//! state machine, bootstraps the cluster, and offers `propose` (opaque command bytes through
//! the log, answered with the state's result bytes), `read_index` (linearizable reads without
//! a log write), membership changes, the role it plays ([`Replica::roles`]) and channels to
//! peers for services of other layers (the server's lease leader service).

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
use crate::peer::GroupPeer;
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
    /// Current leader, if known.
    pub leader: Option<u64>,
    /// Index of the last log entry.
    pub last_log_index: u64,
    /// Index of the last applied entry.
    pub applied_index: u64,
    /// Index of the last committed entry.
    pub committed_index: u64,
    /// True when this member leads.
    pub is_leader: bool,
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

/// The role this member plays in its group, as [`Replica::roles`] reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Role {
    /// This member leads (openraft's Leader state).
    pub leading: bool,
    /// The leader it knows of, if any (itself when leading).
    pub leader: Option<u64>,
    /// The current term.
    pub term: u64,
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

    /// The role this member plays, now and at every change (leadership gained or lost, a new
    /// leader or term): leader-only work (lease expiry, TTL checks) follows it instead of
    /// polling.
    pub fn roles(&self) -> tokio::sync::watch::Receiver<Role> {
        self.roles.clone()
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

    /// Waits (up to a few seconds) for a leader to be known; returns it.
    pub async fn leader(&self) -> Result<u64, ProposeError> {
        let id = self.id;
        let known = |m: &RaftMetrics<TypeConfig>| {
            // As in `status`: only the Leader state counts as this member leading.
            if m.state == openraft::ServerState::Leader {
                Some(id)
            } else {
                m.current_leader.filter(|l| *l != id)
            }
        };
        watch_metrics(&self.raft, NO_LEADER_PATIENCE, known)
            .await
            .ok_or(ProposeError::NotLeader(None))
    }

    /// Replicates `command` (bytes of the group's state machine) through the log and returns
    /// the state machine's result bytes. On a follower the command is forwarded to the leader;
    /// while no leader is known it waits for one.
    pub async fn propose(&self, command: Vec<u8>) -> Result<Vec<u8>, ProposeError> {
        let bytes = command;
        let deadline = tokio::time::Instant::now() + NO_LEADER_PATIENCE;
        loop {
            // The leader known before this attempt: the retry below waits for it to change.
            let known = self.raft.metrics().borrow_watched().current_leader;
            let leader = match self.writes.write(RaftRequest(bytes.clone())).await {
                Ok(resp) => return Ok(resp.data.0),
                // Not proposed here: safe to send elsewhere.
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => f.leader_id,
                Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_))) => {
                    return Err(ProposeError::Unknown)
                }
                Err(e) => return Err(ProposeError::Stopped(e.to_string())),
            };
            if let Some(leader) = leader.filter(|l| *l != self.id) {
                match self.forward(leader, &bytes).await {
                    Err(ProposeError::NotLeader(_)) => {}
                    other => return other,
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ProposeError::NotLeader(None));
            }
            // Try again when the leader known changed since this attempt began (or shortly:
            // the one asked may be a new leader that has not caught up yet). Not compared with
            // the leader Raft named: when that differs from the known one, this would not wait
            // at all, and a loop that never waits never lets a simulated clock move.
            let moved = |m: &RaftMetrics<TypeConfig>| (m.current_leader != known).then_some(());
            watch_metrics(&self.raft, Duration::from_millis(20), moved).await;
        }
    }

    /// Sends an encoded command to the leader over the forward stream. `NotLeader` means it
    /// was certainly not proposed (so it may be retried); a lost answer is `Unknown`.
    async fn forward(&self, leader: u64, bytes: &[u8]) -> Result<Vec<u8>, ProposeError> {
        let stream = self.forward_stream(leader).await?;
        match stream.forward(bytes.to_vec()).await {
            Forwarded::Answered(Ok(resp)) => Ok(resp),
            Forwarded::Answered(Err((ForwardRefusal::NotLeader, _))) => {
                Err(ProposeError::NotLeader(None))
            }
            Forwarded::Answered(Err((ForwardRefusal::Undecodable, why))) => {
                // Never proposed; this member and the leader disagree on what may be applied.
                tracing::error!(leader, why, "the leader refused a forwarded write");
                Err(ProposeError::Stopped(why))
            }
            Forwarded::Answered(Err((refusal, why))) => {
                tracing::warn!(?refusal, why, "forwarded write failed at the leader");
                Err(ProposeError::Unknown)
            }
            Forwarded::NotSent(why) => {
                tracing::debug!(leader, why, "forwarded write not sent");
                Err(ProposeError::NotLeader(None))
            }
            Forwarded::Lost => {
                tracing::warn!(leader, "forwarded write lost its answer");
                Err(ProposeError::Unknown)
            }
        }
    }

    /// The open forward stream to `leader`, opened (again) when there is none.
    async fn forward_stream(&self, leader: u64) -> Result<Arc<ForwardStream>, ProposeError> {
        let mut slot = self.forwarder.lock().await;
        if let Some(s) = slot.as_ref() {
            if s.leader() == leader && s.is_open() {
                return Ok(s.clone());
            }
        }
        let stream = ForwardStream::open(leader, self.peer(leader)?)
            .await
            .map_err(|s| {
                tracing::debug!(leader, status = %s, "opening the forward stream");
                ProposeError::NotLeader(None)
            })?;
        let stream = Arc::new(stream);
        *slot = Some(stream.clone());
        Ok(stream)
    }

    /// Waits until this member has applied everything committed when the call began, as
    /// confirmed by a quorum (read-index): a read after this sees every acknowledged write.
    /// A follower asks the leader for the read index and waits to have applied that far.
    pub async fn read_index(&self) -> Result<(), ProposeError> {
        if self.status().is_leader {
            // Concurrent reads at the leader share one confirmation (which also waits for the
            // read index to be applied). Should leadership have moved, ask again below.
            let raft = self.raft.clone();
            let confirm = move || {
                let raft = raft.clone();
                async move {
                    raft.ensure_linearizable(ReadPolicy::ReadIndex)
                        .await
                        .ok()
                        .map(|_| 0)
                }
            };
            if self.local_reads.index(confirm).await.is_some() {
                return Ok(());
            }
            match self.raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
                Ok(_) => return Ok(()),
                Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(_))) => {}
                Err(e) => return Err(ProposeError::Stopped(e.to_string())),
            }
        }
        // A follower (Raft would only answer "ask the leader"): ask the leader directly.
        let leader = self.leader().await?;
        let client = self.peer(leader)?;
        // Concurrent reads share one request to the leader.
        let fetch = move || {
            let mut client = client.clone();
            async move {
                // Bounded: an unreachable former leader must not hold up the readers
                // queued behind this round (they ask the leader they know next).
                let mut req = tonic::Request::new(Blob::default());
                req.set_timeout(NO_LEADER_PATIENCE);
                let resp = client.read_index(req).await.ok()?;
                Some(resp.into_inner().index)
            }
        };
        let index = self
            .reads
            .index(fetch)
            .await
            .ok_or(ProposeError::NotLeader(None))?;
        // Usually applied already; otherwise wait for it.
        let applied = |m: &RaftMetrics<TypeConfig>| {
            m.last_applied
                .is_some_and(|l| l.index >= index)
                .then_some(())
        };
        watch_metrics(&self.raft, NO_LEADER_PATIENCE, applied)
            .await
            .ok_or_else(|| ProposeError::Stopped(format!("read index {index} not applied in time")))
    }

    /// True once this member leads and has applied everything committed before its term
    /// (state read straight from the group, such as lease timers, is then not behind what was
    /// acknowledged); a new leader waits for that, briefly. False at once on a follower.
    pub async fn leads_caught_up(&self) -> bool {
        leads_caught_up(&self.raft).await
    }

    /// Members of the current configuration.
    pub fn members(&self) -> Vec<MemberEntry> {
        let m = self.membership();
        let voters: std::collections::BTreeSet<u64> = m.voter_ids().collect();
        m.nodes()
            .map(|(id, member)| MemberEntry {
                id: *id,
                member: member.clone(),
                is_learner: !voters.contains(id),
            })
            .collect()
    }

    /// Runs a membership change at the leader (forwarded when this member follows).
    pub async fn change_membership(
        &self,
        change: Change,
        retain: bool,
    ) -> Result<(), ProposeError> {
        // Right after an election the member asked may still take itself (or a former leader)
        // for the leader: a change refused as "not the leader" was not proposed, so it is
        // asked again, of whoever leads then, until a leader takes it or patience runs out.
        let deadline = tokio::time::Instant::now() + NO_LEADER_PATIENCE;
        // Backing off: openraft logs every refusal as an error, and a new cluster's members
        // all publish themselves while the first leader settles in.
        let mut pause = Duration::from_millis(20);
        loop {
            let leader = self.leader().await?;
            let refused = if leader == self.id {
                match crate::peer::change_membership(&self.raft, change.clone(), retain).await {
                    Err(ProposeError::NotLeader(_)) => ProposeError::NotLeader(None),
                    done => return done,
                }
            } else {
                let blob = crate::peer::to_blob(&(change.clone(), retain))
                    .map_err(|e| ProposeError::Stopped(e.to_string()))?;
                let mut req = tonic::Request::new(blob);
                req.set_timeout(MEMBERSHIP_PATIENCE);
                match self.peer(leader)?.change_membership(req).await {
                    Ok(_) => return Ok(()),
                    Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                        return Err(ProposeError::Membership(s.message().to_string()))
                    }
                    Err(s) if crate::peer::is_not_leader(&s) => ProposeError::NotLeader(None),
                    // Not known whether it was proposed: not repeated.
                    Err(_) => return Err(ProposeError::NotLeader(None)),
                }
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(refused);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MEMBERSHIP_RETRY_MAX);
        }
    }

    /// Adds a member: first as a learner that receives the log, then (unless `learner`) as a
    /// voter. The member starts later with `--initial-cluster-state existing`.
    pub async fn add_member(
        &self,
        id: u64,
        member: Member,
        learner: bool,
    ) -> Result<(), ProposeError> {
        self.change_membership(Change::AddNodes([(id, member)].into()), true)
            .await?;
        if !learner {
            self.change_membership(Change::AddVoterIds([id].into()), true)
                .await?;
        }
        Ok(())
    }

    /// Makes a learner a voter.
    pub async fn promote_member(&self, id: u64) -> Result<(), ProposeError> {
        self.change_membership(Change::AddVoterIds([id].into()), true)
            .await
    }

    /// Removes a member (voter or learner) from the cluster.
    pub async fn remove_member(&self, id: u64) -> Result<(), ProposeError> {
        let is_voter = self.members().iter().any(|m| m.id == id && !m.is_learner);
        if is_voter {
            self.change_membership(Change::RemoveVoters([id].into()), false)
                .await?;
        }
        if self.members().iter().any(|m| m.id == id) {
            self.change_membership(Change::RemoveNodes([id].into()), false)
                .await?;
        }
        Ok(())
    }

    /// Records (or replaces) member `id`'s name and URLs in the membership.
    pub async fn set_member(&self, id: u64, member: Member) -> Result<(), ProposeError> {
        self.change_membership(ChangeMembers::SetNodes([(id, member)].into()), true)
            .await
    }

    /// Hands leadership to `to` (this member must lead) and waits until `to` leads.
    pub async fn transfer_leader(&self, to: u64) -> Result<(), ProposeError> {
        self.raft
            .trigger()
            .transfer_leader(to)
            .await
            .map_err(|e| ProposeError::Stopped(e.to_string()))?;
        self.raft
            .wait(Some(NO_LEADER_PATIENCE))
            .current_leader(to, "leadership transfer")
            .await
            .map_err(|e| ProposeError::Membership(format!("leadership did not move: {e}")))?;
        Ok(())
    }

    /// Current Raft state.
    pub fn status(&self) -> RaftStatus {
        // Called for every response header: read the fields under the borrow, clone nothing.
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        // A restarted former leader still names itself leader (from its saved vote) until it
        // hears from the new one: only the Leader state counts as leading.
        let is_leader = m.state == openraft::ServerState::Leader;
        let leader = if is_leader {
            Some(self.id)
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

/// Follows this member's role until Raft stops: publishes it to [`Replica::roles`], counts
/// changes of the known leader, and lets
/// the log fsync lone appends on the Raft task except on a leader with peers (which sends new
/// entries to them while its own fsync runs). It watches the server metrics, which change
/// only with the vote, role, leader or membership: the full metrics change with every write,
/// and waking this task for each would cost a thread wake-up per write.
async fn watch_role(
    mut metrics: openraft::type_config::alias::WatchReceiverOf<
        TypeConfig,
        openraft::metrics::RaftServerMetrics<TypeConfig>,
    >,
    count: Arc<std::sync::atomic::AtomicU64>,
    log: LogStore,
    roles: tokio::sync::watch::Sender<Role>,
) {
    let mut last = None;
    loop {
        let (leader, replicates, role) = {
            let m = metrics.borrow_watched();
            // Learners count: they are replicated to too. (A leader being removed may not be
            // in the membership itself.)
            let peers = m
                .membership_config
                .membership()
                .nodes()
                .any(|(id, _)| *id != m.id);
            let leading = m.state == openraft::ServerState::Leader;
            let role = Role {
                leading,
                leader: if leading {
                    Some(m.id)
                } else {
                    m.current_leader.filter(|l| *l != m.id)
                },
                term: m.vote.leader_id().term,
            };
            (m.current_leader, leading && peers, role)
        };
        roles.send_if_modified(|r| std::mem::replace(r, role) != role);
        log.flush_inline(!replicates);
        if leader != last && leader.is_some() {
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        last = leader;
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// Asks the members at `peer_urls` for the cluster ID (what a member joining an existing
/// cluster adopts); the first answer wins. `None` if nobody answered within `timeout`.
pub async fn fetch_cluster_id(peer_urls: &[String], timeout: Duration) -> Option<u64> {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        for url in peer_urls {
            let member = Member {
                peer_urls: vec![url.clone()],
                ..Member::default()
            };
            let Ok(mut client) =
                peer_client(&member, &Transport::default(), PeerStamp::anonymous())
            else {
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

/// Waits until `decide` has an answer from Raft's metrics, checked now and at every change
/// (borrowing them, not copying them per check as openraft's `wait` does); `None` when
/// `patience` runs out or Raft stops first.
pub(crate) async fn watch_metrics<T>(
    raft: &Raft<TypeConfig, StateMachine>,
    patience: Duration,
    decide: impl Fn(&RaftMetrics<TypeConfig>) -> Option<T>,
) -> Option<T> {
    let mut metrics = raft.metrics();
    let wait = async {
        loop {
            if let Some(answer) = decide(&metrics.borrow_watched()) {
                return Some(answer);
            }
            metrics.changed().await.ok()?;
        }
    };
    tokio::time::timeout(patience, wait).await.ok().flatten()
}

/// True once this member leads and has applied an entry of its own term (at least the blank
/// entry openraft commits first): everything committed before its election is then applied,
/// so state read straight from the store (leases) is not behind what was acknowledged. A new
/// leader waits for that (up to [`NO_LEADER_PATIENCE`]); a member that does not lead answers
/// false at once.
pub(crate) async fn leads_caught_up(raft: &Raft<TypeConfig, StateMachine>) -> bool {
    let caught_up = |m: &RaftMetrics<TypeConfig>| {
        if m.state != openraft::ServerState::Leader {
            Some(false)
        } else {
            m.last_applied
                .is_some_and(|l| l.leader_id.term == m.current_term)
                .then_some(true)
        }
    };
    watch_metrics(raft, NO_LEADER_PATIENCE, caught_up)
        .await
        .unwrap_or(false)
}
