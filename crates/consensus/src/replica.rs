//! A running Raft member: starts openraft over the log store and state machine, bootstraps
//! the cluster, and offers `propose` (writes through the log) and `read_index` (linearizable
//! reads without a log write) to the API layer.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use berth_store::{Applied, Command, Store, StoreError};
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::raft::ReadPolicy;
use openraft::{Config, Raft, SnapshotPolicy};

use crate::codec::{decode_result, encode_command};
use crate::log_store::{FlushObserver, LogStore};
use crate::network::LocalOnly;
use crate::state_machine::StateMachine;
use crate::types::{Member, RaftRequest, TypeConfig};

/// Timing and retention settings, from the node configuration.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Election timeout (the lower bound; the upper is twice as long).
    pub election_timeout: Duration,
    /// Entries applied between snapshots (etcd's `--snapshot-count`).
    pub snapshot_count: u64,
    /// Entries kept behind a snapshot for slow followers.
    pub keep_behind_snapshot: u64,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_millis(100),
            election_timeout: Duration::from_millis(1000),
            snapshot_count: 100_000,
            keep_behind_snapshot: 5_000,
        }
    }
}

/// Why a proposal did not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// The state machine refused the command (an etcd-level error such as a missing lease).
    #[error(transparent)]
    Refused(#[from] StoreError),
    /// This member is not the leader; the leader is given when known.
    #[error("not the leader (leader: {0:?})")]
    NotLeader(Option<u64>),
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
}

/// One member's Raft instance.
pub struct Replica {
    id: u64,
    raft: Raft<TypeConfig, StateMachine>,
}

impl Replica {
    /// Starts the member with ID `id`, keeping the log and snapshots under `dir`, applying to
    /// `store`. A fresh member bootstraps the cluster `members` (a cluster of one today).
    pub async fn start(
        id: u64,
        members: BTreeMap<u64, Member>,
        dir: &Path,
        store: Arc<Store>,
        cfg: &ReplicaConfig,
        on_flush: Option<FlushObserver>,
    ) -> anyhow_like::Result<Replica> {
        let election = cfg.election_timeout.as_millis() as u64;
        let config = Config {
            cluster_name: "berth".into(),
            heartbeat_interval: cfg.heartbeat.as_millis() as u64,
            election_timeout_min: election,
            election_timeout_max: election * 2,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_count),
            max_in_snapshot_log_to_keep: cfg.keep_behind_snapshot,
            purge_batch_size: 1024,
            ..Default::default()
        }
        .validate()
        .map_err(|e| anyhow_like::Error(format!("raft config: {e}")))?;
        let log = LogStore::open_observed(&dir.join("log"), on_flush).map_err(anyhow_like::io)?;
        let sm = StateMachine::new(store, &dir.join("snapshots")).map_err(anyhow_like::io)?;
        let raft = Raft::new(id, Arc::new(config), LocalOnly, log, sm)
            .await
            .map_err(|e| anyhow_like::Error(format!("starting raft: {e}")))?;
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| anyhow_like::Error(format!("raft: {e}")))?;
        if !initialized {
            tracing::info!(
                member = id,
                members = members.len(),
                "bootstrapping a new cluster"
            );
            raft.initialize(members)
                .await
                .map_err(|e| anyhow_like::Error(format!("initializing the cluster: {e}")))?;
        }
        Ok(Replica { id, raft })
    }

    /// This member's ID.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Replicates `cmd` through the log and returns the state machine's result.
    pub async fn propose(&self, cmd: &Command) -> Result<Applied, ProposeError> {
        match self
            .raft
            .client_write(RaftRequest(encode_command(cmd)))
            .await
        {
            Ok(resp) => decode_result(&resp.data.0)
                .map_err(ProposeError::Stopped)?
                .map_err(ProposeError::Refused),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(ProposeError::NotLeader(f.leader_id))
            }
            Err(e) => Err(ProposeError::Stopped(e.to_string())),
        }
    }

    /// Waits until this member has applied everything committed when the call began, as
    /// confirmed by a quorum (read-index): a read after this sees every acknowledged write.
    pub async fn read_index(&self) -> Result<(), ProposeError> {
        match self.raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => {
                Err(ProposeError::NotLeader(f.leader_id))
            }
            Err(RaftError::APIError(e)) => Err(ProposeError::Stopped(e.to_string())),
            Err(e) => Err(ProposeError::Stopped(e.to_string())),
        }
    }

    /// Current Raft state.
    pub fn status(&self) -> RaftStatus {
        let m = self.raft.metrics().borrow_watched().clone();
        RaftStatus {
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            committed_index: m.local_committed.map(|l| l.index).unwrap_or(0),
            is_leader: m.current_leader == Some(self.id),
        }
    }

    /// Waits until some member leads (used at startup), up to `timeout`.
    pub async fn wait_for_leader(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if self.status().leader.is_some() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// Stops Raft.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }
}

/// A small error type for startup failures (the library has no anyhow).
pub mod anyhow_like {
    /// A startup failure with its reason.
    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    pub struct Error(pub String);

    /// Result alias.
    pub type Result<T> = std::result::Result<T, Error>;

    /// Wraps an IO error.
    pub fn io(e: std::io::Error) -> Error {
        Error(e.to_string())
    }
}
