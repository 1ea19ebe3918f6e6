//! The write path: every command is replicated through the Raft log (openraft) and applied
//! by the state machine on every member; a single node is a cluster of one on this same path.
//! Also the read-index barrier for linearizable reads.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use berth_consensus::{Environment, Member, ProposeError, RaftStatus, Replica, ReplicaConfig};
use berth_store::{Applied, Command, Store};

use crate::config::{ClusterState, Config};
use crate::errors::ApiError;
use crate::member::{member_id, MemberInfo};
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

/// Hands commands to Raft and waits until they are committed and applied.
#[derive(Clone)]
pub struct Proposer {
    replica: Arc<Replica>,
    metrics: Arc<Metrics>,
}

/// Maps a consensus error to the etcd error a client sees.
pub fn map_err(e: ProposeError) -> ApiError {
    match e {
        ProposeError::Refused(e) => e.into(),
        ProposeError::NotLeader(_) => ApiError::NoLeader,
        ProposeError::Membership(reason) => ApiError::Membership(reason),
        ProposeError::Unknown => ApiError::LeaderChanged,
        ProposeError::Stopped(reason) => {
            tracing::error!(%reason, "consensus stopped");
            ApiError::Stopped
        }
    }
}

impl Proposer {
    /// Starts this member's Raft instance over `store`, bootstrapping a new cluster if needed;
    /// `env` says how peers are dialed and where storage work runs.
    pub async fn start(
        store: Arc<Store>,
        cfg: &Config,
        member: &MemberInfo,
        metrics: Arc<Metrics>,
        env: Environment,
    ) -> anyhow::Result<Proposer> {
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
        };
        let observer = metrics.clone();
        let bootstrap = cfg.initial_cluster_state == ClusterState::New;
        let replica = Replica::start(
            member.id,
            members,
            bootstrap,
            &cfg.data_dir.join("groups").join("meta"),
            store,
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
        let me = Member {
            name: member.name.clone(),
            peer_urls: member.peer_urls.clone(),
            client_urls: member.client_urls.clone(),
        };
        tokio::spawn(publish_self(replica.clone(), me));
        Ok(Proposer { replica, metrics })
    }

    /// Proposes one command; returns its result once it is committed and applied.
    pub async fn propose(&self, cmd: Command) -> Result<Applied, ApiError> {
        let result = self.replica.propose(&cmd).await;
        match &result {
            // A refusal (e.g. a missing lease) was still committed through the log.
            Ok(_) | Err(ProposeError::Refused(_)) => self.metrics.proposals_committed.inc(),
            Err(_) => self.metrics.proposals_failed.inc(),
        };
        result.map_err(map_err)
    }

    /// Returns once this member has applied every write acknowledged before the call.
    pub async fn read_index(&self) -> Result<(), ApiError> {
        self.replica.read_index().await.map_err(map_err)
    }

    /// The Raft instance (membership, leases at the leader, peer service).
    pub fn replica(&self) -> &Arc<Replica> {
        &self.replica
    }

    /// Renews a lease at the leader; returns its TTL (0 for an unknown lease).
    pub async fn lease_renew(&self, id: i64) -> Result<i64, ApiError> {
        self.replica.lease_renew(id).await.map_err(map_err)
    }

    /// Raft state for Status and metrics.
    pub fn status(&self) -> RaftStatus {
        self.replica.status()
    }

    /// How concurrent reads and writes shared Raft rounds, for metrics.
    pub fn sharing(&self) -> berth_consensus::Sharing {
        self.replica.sharing()
    }

    /// Stops Raft.
    pub async fn shutdown(&self) {
        self.replica.shutdown().await;
    }
}
