//! The one write path every face uses: each command is replicated through the meta group's
//! Raft log and applied by the store on every member (a single node is a cluster of one on
//! this same path); also the read-index barrier for linearizable reads, membership changes,
//! and the member's role. Errors are protocol-neutral ([`WriteError`]): each face maps them
//! in its own error table (the etcd face: `errors.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use berth_consensus::{
    Environment, GroupId, Member, MemberEntry, PeerChannel, PeerRouter, ProposeError, RaftStatus,
    Replica, ReplicaConfig, Role,
};
use berth_store::codec::{decode_result, encode_entry};
use berth_store::{Applied, Command, Entry, Keyspace, Store, StoreError};

use crate::config::{ClusterState, Config};
use crate::member::{member_id, MemberInfo};
use crate::meta_group::MetaGroup;
use crate::metrics::Metrics;

/// How often a member retries recording its own name and client URLs in the membership.
const PUBLISH_RETRY: Duration = Duration::from_millis(500);

/// Records this member's name and client URLs in the cluster membership once a leader exists
/// (members bootstrap knowing only each other's peer URLs), as etcd members publish theirs.
async fn publish_self(replica: Arc<Replica>, me: Member) {
    loop {
        let current = replica.members().into_iter().find(|m| m.id == replica.id());
        if current.as_ref().is_some_and(|c| c.member == me) {
            return;
        }
        // Bounded below: the change itself and its forwarding to the leader time out.
        match replica.set_member(replica.id(), me.clone()).await {
            Ok(()) => tracing::info!(name = %me.name, "published member attributes"),
            Err(e) => tracing::debug!(error = %e, "publishing member attributes; will retry"),
        }
        tokio::time::sleep(PUBLISH_RETRY).await;
    }
}

/// Why a write (or a read barrier, or a membership change) did not produce a result. Faces
/// map it to their protocol; `Unknown` must never be reported as a failure, and never retried
/// by a face on its own (the write may have been applied).
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The store applied the command and refused it (a missing lease, a compacted revision).
    #[error(transparent)]
    Refused(#[from] StoreError),
    /// No leader could take the request: it was certainly not applied.
    #[error("no leader")]
    NotLeader,
    /// Leadership changed while the write was in flight: it may or may not have applied.
    #[error("leader changed; the outcome is unknown")]
    Unknown,
    /// A membership change was refused (another change in progress, a bad change).
    #[error("membership change refused: {0}")]
    Membership(String),
    /// Consensus stopped (shutdown, or a fatal storage error).
    #[error("consensus stopped: {0}")]
    Stopped(String),
}

impl From<ProposeError> for WriteError {
    fn from(e: ProposeError) -> WriteError {
        match e {
            ProposeError::NotLeader(_) => WriteError::NotLeader,
            ProposeError::Membership(reason) => WriteError::Membership(reason),
            ProposeError::Unknown => WriteError::Unknown,
            ProposeError::Stopped(reason) => {
                // Said once: every write still in flight at a shutdown ends here too.
                static SAID: std::sync::atomic::AtomicBool =
                    std::sync::atomic::AtomicBool::new(false);
                if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::error!(%reason, "consensus stopped");
                } else {
                    tracing::debug!(%reason, "consensus stopped");
                }
                WriteError::Stopped(reason)
            }
        }
    }
}

/// The terms this member leads, followed for leader-only work (lease expiry, auto-compaction):
/// one watch of the role and the shutdown signal, so no such loop polls or spins. Every wait
/// ends with `None` once shutdown begins or Raft has stopped.
pub struct Leadership {
    roles: tokio::sync::watch::Receiver<Role>,
    stop: tokio::sync::watch::Receiver<bool>,
}

impl Leadership {
    /// Waits until this member leads; its role then.
    pub async fn leading(&mut self) -> Option<Role> {
        loop {
            let role = *self.roles.borrow_and_update();
            if role.leading {
                return Some(role);
            }
            self.changed().await?;
        }
    }

    /// Waits until the leadership of `term` ends (another term, or not leading); the role
    /// then.
    pub async fn ended(&mut self, term: u64) -> Option<Role> {
        loop {
            let now = *self.roles.borrow_and_update();
            if !now.leading || now.term != term {
                return Some(now);
            }
            self.changed().await?;
        }
    }

    /// Waits for any change of role.
    pub async fn changed(&mut self) -> Option<()> {
        tokio::select! {
            changed = self.roles.changed() => changed.ok(),
            _ = self.stop.changed() => None,
        }
    }
}

/// Hands commands to the meta group's Raft and waits until they are committed and applied.
#[derive(Clone)]
pub struct Consensus {
    replica: Arc<Replica>,
    /// Serves this member's Raft groups (only `meta` today) on the peer port.
    peers: Arc<PeerRouter>,
    metrics: Arc<Metrics>,
    /// The meta group's replica settings, which other groups share (their own snapshot
    /// cadence aside).
    rcfg: ReplicaConfig,
}

/// Entries a stream group applies between snapshots: a stream's snapshot is a sync and a
/// list of its segment files, so it is cheap and frequent, and keeps its Raft log short.
const GROUP_SNAPSHOT_COUNT: u64 = 16_384;
/// Entries a stream group keeps behind a snapshot for slow followers.
const GROUP_KEEP_BEHIND: u64 = 4_096;

impl Consensus {
    /// Starts this member's Raft instance over `store`, bootstrapping a new cluster if needed;
    /// `env` says how peers are dialed and where storage work runs.
    pub async fn start(
        store: Arc<Store>,
        cfg: &Config,
        member: &MemberInfo,
        metrics: Arc<Metrics>,
        env: Environment,
    ) -> anyhow::Result<Consensus> {
        // Every initial member derives every member's ID from the same flags, so all of
        // them bootstrap the same membership. It must be the same byte for byte: the initial
        // entries of all members share one log id, so Raft never replaces one member's copy
        // with another's. Client URLs are therefore left out here (each member knows only its
        // own) and published afterwards through the log, as etcd members publish attributes.
        let members: BTreeMap<u64, Member> = cfg
            .initial_cluster
            .iter()
            .map(|(name, urls)| {
                let id = member_id(urls, &cfg.initial_cluster_token);
                (
                    id,
                    Member {
                        name: name.clone(),
                        peer_urls: urls.clone(),
                        client_urls: Vec::new(),
                    },
                )
            })
            .collect();
        let rcfg = ReplicaConfig {
            heartbeat: Duration::from_millis(cfg.heartbeat_interval_ms),
            election_timeout: Duration::from_millis(cfg.election_timeout_ms),
            snapshot_count: cfg.snapshot_count,
            keep_behind_snapshot: cfg.snapshot_count.min(5_000),
            env,
            cluster_id: member.cluster_id,
            group: GroupId::meta(),
        };
        let group_cfg = rcfg.clone();
        let observer = metrics.clone();
        let bootstrap = cfg.initial_cluster_state == ClusterState::New;
        let replica = Replica::start(
            member.id,
            members,
            bootstrap,
            &cfg.data_dir.join("groups").join(GroupId::META),
            Arc::new(MetaGroup(store)),
            &rcfg,
            Some(Arc::new(move |took, batch| {
                observer.observe_commit(took, batch)
            })),
        )
        .await
        .map_err(|e| anyhow::anyhow!("starting consensus: {e}"))?;
        // Serve at once: requests wait for a leader themselves, and peers need this member's
        // peer listener up to elect one.
        let replica = Arc::new(replica);
        let peers = PeerRouter::new(member.cluster_id, member.id);
        peers.add(&replica);
        let me = Member {
            name: member.name.clone(),
            peer_urls: member.peer_urls.clone(),
            client_urls: member.client_urls.clone(),
        };
        tokio::spawn(publish_self(replica.clone(), me));
        Ok(Consensus {
            replica,
            peers,
            metrics,
            rcfg: group_cfg,
        })
    }

    /// Starts this member's replica of another Raft group (a replicated stream), its log and
    /// snapshots under `dir`, applying to `state`, and serves it on the peer port. Every
    /// member of `members` bootstraps the group with the same list (the first election
    /// wins); without `bootstrap` a new replica waits for the group's leader to add it (a
    /// replica joining a formed group); a replica that ran before resumes.
    pub async fn start_group(
        &self,
        group: GroupId,
        dir: &std::path::Path,
        state: Arc<dyn berth_consensus::GroupState>,
        members: BTreeMap<u64, Member>,
        bootstrap: bool,
    ) -> anyhow::Result<Arc<Replica>> {
        let rcfg = ReplicaConfig {
            group,
            snapshot_count: GROUP_SNAPSHOT_COUNT,
            keep_behind_snapshot: GROUP_KEEP_BEHIND,
            ..self.rcfg.clone()
        };
        let replica = Replica::start(self.id(), members, bootstrap, dir, state, &rcfg, None)
            .await
            .map_err(|e| anyhow::anyhow!("starting group {}: {e}", rcfg.group))?;
        let replica = Arc::new(replica);
        self.peers.add(&replica);
        Ok(replica)
    }

    /// Stops serving a group's replica on the peer port and shuts it down.
    pub async fn stop_group(&self, replica: &Replica) {
        self.peers.remove(replica.group());
        replica.shutdown().await;
    }

    /// Proposes one command on user keys (what the etcd face writes); returns its result
    /// once it is committed and applied.
    pub async fn propose(&self, cmd: Command) -> Result<Applied, WriteError> {
        self.propose_in(Keyspace::User, cmd).await
    }

    /// Proposes one command on the keys of `ks` (a face's system keyspace); returns its
    /// result once it is committed and applied. Store-wide commands (compaction, leases,
    /// alarms) act the same whatever `ks` is.
    pub async fn propose_in(&self, ks: Keyspace, cmd: Command) -> Result<Applied, WriteError> {
        self.propose_entry(Entry::new(ks, cmd)).await
    }

    /// Proposes a command with its keyspace and guard (a guard makes the store refuse it with
    /// `GuardStale` if the state the face checked it against has moved on).
    pub async fn propose_entry(&self, entry: Entry) -> Result<Applied, WriteError> {
        let result = match self.replica.propose(encode_entry(entry)).await {
            Ok(bytes) => match decode_result(&bytes) {
                Ok(applied) => applied.map_err(WriteError::Refused),
                // Applied, but this build cannot read the result it wrote: the outcome is
                // unknown to the client (never "failed", which invites a retry).
                Err(e) => {
                    tracing::error!(error = %e, "undecodable apply result");
                    Err(WriteError::Unknown)
                }
            },
            Err(e) => Err(e.into()),
        };
        match &result {
            // A refusal (e.g. a missing lease) was still committed through the log.
            Ok(_) | Err(WriteError::Refused(_)) => self.metrics.proposals_committed.inc(),
            Err(_) => self.metrics.proposals_failed.inc(),
        };
        result
    }

    /// Returns once this member has applied every write acknowledged before the call.
    pub async fn read_index(&self) -> Result<(), WriteError> {
        Ok(self.replica.read_index().await?)
    }

    /// This member's ID.
    pub fn id(&self) -> u64 {
        self.replica.id()
    }

    /// Members of the current configuration.
    pub fn members(&self) -> Vec<MemberEntry> {
        self.replica.members()
    }

    /// Adds a member (a learner first; then a voter unless `learner`).
    pub async fn add_member(
        &self,
        id: u64,
        member: Member,
        learner: bool,
    ) -> Result<(), WriteError> {
        Ok(self.replica.add_member(id, member, learner).await?)
    }

    /// Makes a learner a voter.
    pub async fn promote_member(&self, id: u64) -> Result<(), WriteError> {
        Ok(self.replica.promote_member(id).await?)
    }

    /// Removes a member.
    pub async fn remove_member(&self, id: u64) -> Result<(), WriteError> {
        Ok(self.replica.remove_member(id).await?)
    }

    /// Records (or replaces) a member's name and URLs.
    pub async fn set_member(&self, id: u64, member: Member) -> Result<(), WriteError> {
        Ok(self.replica.set_member(id, member).await?)
    }

    /// Hands leadership to `to` (this member must lead).
    pub async fn transfer_leader(&self, to: u64) -> Result<(), WriteError> {
        Ok(self.replica.transfer_leader(to).await?)
    }

    /// Waits (briefly) for a leader to be known; returns it.
    pub async fn leader(&self) -> Result<u64, WriteError> {
        Ok(self.replica.leader().await?)
    }

    /// True once this member leads and has applied everything committed before its term.
    pub async fn leads_caught_up(&self) -> bool {
        self.replica.leads_caught_up().await
    }

    /// The member's role now and at every change.
    pub fn roles(&self) -> tokio::sync::watch::Receiver<Role> {
        self.replica.roles()
    }

    /// The terms this member leads, for leader-only work that runs until `stop` changes.
    pub fn leadership(&self, stop: tokio::sync::watch::Receiver<bool>) -> Leadership {
        Leadership {
            roles: self.replica.roles(),
            stop,
        }
    }

    /// A channel to member `id`'s peer port, for a service of this layer (the leader's lease
    /// service).
    pub fn peer_channel(&self, id: u64) -> Result<PeerChannel, WriteError> {
        Ok(self.replica.peer_channel(id)?)
    }

    /// Admits a peer message for this member of this cluster (services on the peer port
    /// beside Raft's check this first).
    #[allow(clippy::result_large_err)]
    pub fn admit_peer(&self, md: &tonic::metadata::MetadataMap) -> Result<(), tonic::Status> {
        self.peers.admit(md)
    }

    /// The Raft service for the peer port (every group of this member).
    pub fn peer_service(
        &self,
    ) -> berth_proto::berth::raft::raft_peer_server::RaftPeerServer<PeerRouter> {
        self.peers.service()
    }

    /// Raft state for Status and metrics.
    pub fn status(&self) -> RaftStatus {
        self.replica.status()
    }

    /// How concurrent reads and writes shared Raft rounds, for metrics.
    pub fn sharing(&self) -> berth_consensus::Sharing {
        self.replica.sharing()
    }

    /// Why Raft stopped, if it has.
    pub fn stopped(&self) -> Option<String> {
        self.replica.stopped()
    }

    /// Waits until Raft stops; returns why.
    pub async fn wait_stopped(&self) -> String {
        self.replica.wait_stopped().await
    }

    /// Stops Raft.
    pub async fn shutdown(&self) {
        self.replica.shutdown().await;
    }
}
