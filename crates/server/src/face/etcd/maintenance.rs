//! etcd `Maintenance` service: status, alarms, hashes, defragmentation, snapshots and
//! leadership transfer (trivial on a single member).

use std::pin::Pin;
use std::sync::Arc;

use berth_proto::etcdserverpb::alarm_request::AlarmAction;
use berth_proto::etcdserverpb::maintenance_server::Maintenance;
use berth_proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, AlarmType, DefragmentRequest, DefragmentResponse,
    DowngradeRequest, DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse,
    MoveLeaderRequest, MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest,
    StatusResponse,
};
use berth_store::{Applied, Command};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{principal, Headers as _};
use crate::core::Core;
use crate::face::etcd::errors::{store_status, ApiError};

/// The etcd API version berth reports; clients gate features on it.
pub const ETCD_VERSION: &str = "3.5.0";

/// The Maintenance service.
pub struct MaintenanceService {
    core: Arc<Core>,
}

impl MaintenanceService {
    /// Creates the service.
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }
}

fn blocking_err(e: tokio::task::JoinError) -> Status {
    Status::internal(format!("berth: background task failed: {e}"))
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let who = principal(&self.core, &req)?;
        let r = req.into_inner();
        let action = AlarmAction::try_from(r.action)
            .map_err(|_| Status::invalid_argument("etcdserver: unknown alarm action"))?;
        // Listing alarms is open (health checks read them); raising or clearing one is root's.
        if action != AlarmAction::Get {
            who.admin()?;
        }
        let answer = match action {
            // After everything acknowledged is applied here, so a restarted member that has
            // not caught up yet answers what the cluster holds.
            AlarmAction::Get => self.core.consensus.read_index().await.map(|()| {
                self.core
                    .store
                    .alarms()
                    .into_iter()
                    .filter(|a| r.alarm == AlarmType::None as i32 || a.alarm == r.alarm)
                    .collect()
            })?,
            AlarmAction::Activate if r.alarm == AlarmType::None as i32 => Vec::new(),
            AlarmAction::Activate | AlarmAction::Deactivate => {
                if AlarmType::try_from(r.alarm).is_err() {
                    return Err(Status::invalid_argument("etcdserver: unknown alarm type"));
                }
                tracing::info!(
                    ?action,
                    alarm = r.alarm,
                    member = format_args!("{:x}", r.member_id),
                    "alarm request"
                );
                // Through the log: every member (and every restart) sees the same alarms.
                match self.core.consensus.propose(Command::Alarm(r)).await? {
                    Applied::Alarm(resp) => resp.alarms,
                    _ => return Err(Status::internal("berth: unexpected apply result for alarm")),
                }
            }
        };
        Ok(Response::new(AlarmResponse {
            header: self.core.header(self.core.store.revision()),
            alarms: answer,
        }))
    }

    async fn status(
        &self,
        _req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let stats = self.core.store.stats();
        let raft = self.core.consensus.status();
        let errors = self
            .core
            .store
            .alarms()
            .iter()
            .map(|a| {
                format!(
                    "memberID:{} alarm:{} ",
                    a.member_id,
                    AlarmType::try_from(a.alarm)
                        .map(|t| t.as_str_name())
                        .unwrap_or("UNKNOWN")
                )
            })
            .collect();
        Ok(Response::new(StatusResponse {
            header: self.core.header(stats.revision),
            version: ETCD_VERSION.into(),
            db_size: stats.db_size as i64,
            leader: raft.leader.unwrap_or(0),
            raft_index: raft.committed_index.max(raft.applied_index),
            raft_term: raft.term,
            raft_applied_index: raft.applied_index,
            errors,
            db_size_in_use: stats.db_size as i64,
            is_learner: false,
            ..Default::default()
        }))
    }

    async fn defragment(
        &self,
        req: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        principal(&self.core, &req)?.admin()?;
        let store = self.core.store.clone();
        tokio::task::spawn_blocking(move || store.defragment())
            .await
            .map_err(blocking_err)?
            .map_err(store_status)?;
        Ok(Response::new(DefragmentResponse {
            header: self.core.header(self.core.store.revision()),
        }))
    }

    async fn hash(&self, req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        principal(&self.core, &req)?.admin()?;
        let store = self.core.store.clone();
        let hash = tokio::task::spawn_blocking(move || store.hash())
            .await
            .map_err(blocking_err)?
            .map_err(store_status)?;
        Ok(Response::new(HashResponse {
            header: self.core.header(self.core.store.revision()),
            hash,
        }))
    }

    async fn hash_kv(
        &self,
        req: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        principal(&self.core, &req)?.admin()?;
        let rev = req.into_inner().revision;
        let store = self.core.store.clone();
        let (hash, compact_revision, hash_revision) =
            tokio::task::spawn_blocking(move || store.hash_kv(rev))
                .await
                .map_err(blocking_err)?
                .map_err(store_status)?;
        Ok(Response::new(HashKvResponse {
            header: self.core.header(self.core.store.revision()),
            hash,
            compact_revision,
            hash_revision,
        }))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        req: Request<SnapshotRequest>,
    ) -> Result<Response<SnapshotStream>, Status> {
        principal(&self.core, &req)?.admin()?;
        let (tx, rx) = mpsc::channel::<Result<SnapshotResponse, Status>>(4);
        let node = self.core.clone();
        let header = node.header(node.store.revision());
        tokio::task::spawn_blocking(move || {
            let estimate = node.store.stats().db_size;
            let mut sent = 0u64;
            let result = node.store.etcd_snapshot(|chunk| {
                sent += chunk.len() as u64;
                let resp = SnapshotResponse {
                    header,
                    // The exact size is known only at the end; never claim 0 before it.
                    remaining_bytes: estimate.saturating_sub(sent).max(1),
                    blob: chunk.to_vec(),
                    version: ETCD_VERSION.into(),
                };
                tx.blocking_send(Ok(resp))
                    .map_err(|_| berth_store::StoreError::Io(std::io::ErrorKind::BrokenPipe.into()))
            });
            let last = match result {
                Ok(()) => Ok(SnapshotResponse {
                    header,
                    remaining_bytes: 0,
                    blob: Vec::new(),
                    version: ETCD_VERSION.into(),
                }),
                Err(e) => {
                    tracing::warn!(error = %e, "snapshot stream ended early");
                    Err(store_status(e))
                }
            };
            let _ = tx.blocking_send(last);
            tracing::info!(bytes = sent, "snapshot sent");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn move_leader(
        &self,
        req: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        principal(&self.core, &req)?.admin()?;
        let target = req.into_inner().target_id;
        let consensus = &self.core.consensus;
        // As in etcd, the request must reach the leader (etcdctl finds it first).
        if !consensus.status().is_leader {
            return Err(ApiError::NotLeader.into());
        }
        let voter = consensus
            .members()
            .into_iter()
            .any(|m| m.id == target && !m.is_learner);
        if !voter {
            return Err(ApiError::BadLeaderTransferee.into());
        }
        if target != self.core.member.id {
            consensus.transfer_leader(target).await?;
            tracing::info!(to = format_args!("{target:x}"), "leadership moved");
        }
        Ok(Response::new(MoveLeaderResponse {
            header: self.core.header(self.core.store.revision()),
        }))
    }

    async fn downgrade(
        &self,
        _req: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        Err(ApiError::NotCapable.into())
    }
}
