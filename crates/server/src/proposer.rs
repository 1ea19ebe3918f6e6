//! The write path: every command is replicated through the Raft log (openraft) and applied
//! by the state machine on every member; a single node is a cluster of one on this same path.
//! Also the read-index barrier for linearizable reads.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use berth_consensus::{Member, ProposeError, RaftStatus, Replica, ReplicaConfig};
use berth_store::{Applied, Command, Store};

use crate::config::Config;
use crate::errors::ApiError;
use crate::member::MemberInfo;
use crate::metrics::Metrics;

/// How long startup waits for a leader before serving anyway (requests then retry/fail).
const LEADER_WAIT: Duration = Duration::from_secs(10);

/// Hands commands to Raft and waits until they are committed and applied.
#[derive(Clone)]
pub struct Proposer {
    replica: Arc<Replica>,
}

fn map_err(e: ProposeError) -> ApiError {
    match e {
        ProposeError::Refused(e) => e.into(),
        ProposeError::NotLeader(_) => ApiError::NoLeader,
        ProposeError::Stopped(reason) => {
            tracing::error!(%reason, "consensus stopped");
            ApiError::Stopped
        }
    }
}

impl Proposer {
    /// Starts this member's Raft instance over `store`, bootstrapping a new cluster if needed.
    pub async fn start(
        store: Arc<Store>,
        cfg: &Config,
        member: &MemberInfo,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Proposer> {
        if cfg.initial_cluster.len() > 1 {
            anyhow::bail!(
                "--initial-cluster names {} members: multi-member clusters need the peer transport, which this build does not have yet",
                cfg.initial_cluster.len()
            );
        }
        let members: BTreeMap<u64, Member> = [(
            member.id,
            Member {
                name: member.name.clone(),
                peer_urls: member.peer_urls.clone(),
                client_urls: member.client_urls.clone(),
            },
        )]
        .into();
        let rcfg = ReplicaConfig {
            heartbeat: Duration::from_millis(cfg.heartbeat_interval_ms),
            election_timeout: Duration::from_millis(cfg.election_timeout_ms),
            ..ReplicaConfig::default()
        };
        let observer = metrics.clone();
        let replica = Replica::start(
            member.id,
            members,
            &cfg.data_dir.join("groups").join("meta"),
            store,
            &rcfg,
            Some(Arc::new(move |took, batch| {
                observer.observe_commit(took, batch)
            })),
        )
        .await
        .map_err(|e| anyhow::anyhow!("starting consensus: {e}"))?;
        if !replica.wait_for_leader(LEADER_WAIT).await {
            tracing::warn!("no leader elected yet; serving anyway");
        }
        Ok(Proposer {
            replica: Arc::new(replica),
        })
    }

    /// Proposes one command; returns its result once it is committed and applied.
    pub async fn propose(&self, cmd: Command) -> Result<Applied, ApiError> {
        self.replica.propose(&cmd).await.map_err(map_err)
    }

    /// Returns once this member has applied every write acknowledged before the call.
    pub async fn read_index(&self) -> Result<(), ApiError> {
        self.replica.read_index().await.map_err(map_err)
    }

    /// Raft state for Status and metrics.
    pub fn status(&self) -> RaftStatus {
        self.replica.status()
    }

    /// Stops Raft.
    pub async fn shutdown(&self) {
        self.replica.shutdown().await;
    }
}
