//! The peer gRPC service (`berth.raft.RaftPeer`) a member serves on its peer port: Raft
//! messages from other members, snapshot streams, and the requests followers send their
//! leader (forwarded writes, read index, membership changes). One [`PeerRouter`] serves every
//! Raft group of the member: each message names its group and is routed to that replica.

use std::pin::Pin;
use std::sync::Arc;

use std::collections::HashMap;
use std::sync::Mutex;

use crate::sync::LockExt;

use berth_proto::berth::raft::raft_peer_server::{RaftPeer, RaftPeerServer};
use berth_proto::berth::raft::{
    Blob, ClusterInfoResponse, ForwardRefusal, ForwardRequest, ForwardResponse, ReadIndexResponse,
};
use openraft::errors::{ClientWriteError, RaftError};
use openraft::raft::{AppendEntriesRequest, ReadPolicy};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::group::GroupId;
use crate::replica::GroupPeer;
use crate::state_machine::GroupSnapshot;
use crate::types::{Change, LogId, RaftRequest, SnapshotMeta, TypeConfig, Vote};
use crate::wire::{from_blob, not_leader, to_blob, NOT_LEADER};

/// Decodes `data` as each message members read from one another (the serialized openraft
/// messages inside [`Blob`]s and the forwarded-write frames; the commands and results they
/// carry are the group state's to decode, fuzzed as `log_entry`); returns how many kinds
/// accepted it. Whatever the bytes, none may panic or
/// allocate without bound: the fuzz target `peer_messages` drives this.
#[doc(hidden)]
pub fn decode_peer_messages(data: &[u8]) -> usize {
    use openraft::raft::{
        AppendEntriesResponse, SnapshotResponse, StreamAppendResult, TransferLeaderRequest,
        VoteRequest, VoteResponse,
    };
    use prost::Message;
    let blob = Blob {
        data: data.to_vec(),
    };
    [
        from_blob::<AppendEntriesRequest<TypeConfig>>(&blob).is_ok(),
        from_blob::<AppendEntriesResponse<TypeConfig>>(&blob).is_ok(),
        from_blob::<StreamAppendResult<TypeConfig>>(&blob).is_ok(),
        from_blob::<VoteRequest<TypeConfig>>(&blob).is_ok(),
        from_blob::<VoteResponse<TypeConfig>>(&blob).is_ok(),
        from_blob::<(Vote, SnapshotMeta)>(&blob).is_ok(),
        from_blob::<SnapshotResponse<TypeConfig>>(&blob).is_ok(),
        from_blob::<TransferLeaderRequest<TypeConfig>>(&blob).is_ok(),
        from_blob::<(Change, bool)>(&blob).is_ok(),
        rmp_serde::from_slice::<LogId>(data).is_ok(),
        ForwardRequest::decode(data).is_ok(),
        ForwardResponse::decode(data).is_ok(),
        ReadIndexResponse::decode(data).is_ok(),
    ]
    .into_iter()
    .filter(|ok| *ok)
    .count()
}

/// Serves every Raft group of this member to its peers.
pub struct PeerRouter {
    cluster_id: u64,
    /// This member: messages for any other are refused.
    member_id: u64,
    groups: Mutex<HashMap<GroupId, Arc<GroupPeer>>>,
}

impl PeerRouter {
    /// A router for member `member_id` of cluster `cluster_id`, serving no group yet.
    pub fn new(cluster_id: u64, member_id: u64) -> Arc<PeerRouter> {
        Arc::new(PeerRouter {
            cluster_id,
            member_id,
            groups: Mutex::default(),
        })
    }

    /// Serves `replica`'s group from now on (replacing any earlier replica of that group).
    pub fn add(&self, replica: &crate::Replica) {
        let (group, peer) = replica.group_peer();
        self.groups.locked().insert(group, Arc::new(peer));
    }

    /// Stops serving `group` (its replica was shut down); its messages are refused as for a
    /// group this member does not run.
    pub fn remove(&self, group: &GroupId) {
        self.groups.locked().remove(group);
    }

    /// The gRPC service for the peer port.
    pub fn service(self: &Arc<Self>) -> RaftPeerServer<PeerRouter> {
        RaftPeerServer::from_arc(self.clone())
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX)
    }

    /// Refuses a message from another cluster or meant for another member; other services
    /// on the peer port call this first too.
    pub fn admit(&self, md: &tonic::metadata::MetadataMap) -> Result<(), Status> {
        crate::identity::admit(md, self.cluster_id, self.member_id)
    }

    /// The replica a message is for, once it is admitted.
    fn route(&self, md: &tonic::metadata::MetadataMap) -> Result<Arc<GroupPeer>, Status> {
        self.admit(md)?;
        let group = crate::identity::group_of(md)?;
        let found = self.groups.locked().get(&group).cloned();
        found.ok_or_else(|| {
            Status::not_found(format!(
                "berth: member {:x} runs no Raft group {group}",
                self.member_id
            ))
        })
    }
}

/// Answers of a forward stream.
type ForwardAnswers = Pin<Box<dyn Stream<Item = Result<ForwardResponse, Status>> + Send + 'static>>;

/// Proposes an encoded command a follower forwarded; returns the encoded result, or why it
/// was not applied (which the follower maps back).
async fn run_forwarded(
    group: &GroupPeer,
    command: Vec<u8>,
) -> Result<Vec<u8>, (ForwardRefusal, String)> {
    // Only what this member can apply is proposed: an entry no member can decode would stop
    // every member at apply, again at every restart.
    if let Err(e) = group.state.check(&command) {
        return Err((
            ForwardRefusal::Undecodable,
            format!("berth: forwarded write refused: {e}"),
        ));
    }
    match group.writes.write(RaftRequest(command)).await {
        Ok(resp) => Ok(resp.data.0),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
            Err((ForwardRefusal::NotLeader, NOT_LEADER.into()))
        }
        Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_))) => Err((
            ForwardRefusal::LeaderChanged,
            "berth: leader changed".into(),
        )),
        Err(e) => Err((ForwardRefusal::Failed, e.to_string())),
    }
}

/// Responses of a replication stream.
type AppendResponses = Pin<Box<dyn Stream<Item = Result<Blob, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl RaftPeer for PeerRouter {
    type AppendStreamStream = AppendResponses;
    type AppendEachStream = AppendResponses;

    async fn append_stream(
        &self,
        req: Request<Streaming<Blob>>,
    ) -> Result<Response<AppendResponses>, Status> {
        let group = self.route(req.metadata())?;
        // Requests until the leader ends the stream (or sends something undecodable, which
        // ends it too: the leader then starts a new session).
        let requests = req.into_inner().map_while(|m| {
            let blob = m.ok()?;
            from_blob::<AppendEntriesRequest<TypeConfig>>(&blob)
                .map_err(|e| tracing::warn!(status = %e, "undecodable replication request"))
                .ok()
        });
        // One response per request, in order; openraft ends the stream after a conflict or a
        // higher vote, which the leader handles as the end of the session.
        let responses = group.raft.stream_append(requests).map(|r| match r {
            Ok(result) => to_blob(&result),
            Err(fatal) => Err(Status::unavailable(fatal.to_string())),
        });
        Ok(Response::new(Box::pin(responses)))
    }

    async fn append_each(
        &self,
        req: Request<Streaming<Blob>>,
    ) -> Result<Response<AppendResponses>, Status> {
        let group = self.route(req.metadata())?;
        // One at a time, in order: the leader sends the next request after this answer.
        let raft = group.raft.clone();
        let answers = futures::StreamExt::then(req.into_inner(), move |m| {
            let raft = raft.clone();
            async move {
                let rpc: AppendEntriesRequest<TypeConfig> = from_blob(&m?)?;
                let resp = raft
                    .append_entries(rpc)
                    .await
                    .map_err(|e| Status::unavailable(e.to_string()))?;
                to_blob(&resp)
            }
        });
        Ok(Response::new(Box::pin(answers)))
    }

    async fn vote(&self, req: Request<Blob>) -> Result<Response<Blob>, Status> {
        let group = self.route(req.metadata())?;
        let rpc = from_blob(req.get_ref())?;
        let resp = group
            .raft
            .vote(rpc)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(to_blob(&resp)?))
    }

    async fn snapshot(&self, req: Request<Streaming<Blob>>) -> Result<Response<Blob>, Status> {
        let group = self.route(req.metadata())?;
        let mut stream = req.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        let (vote, meta): (Vote, SnapshotMeta) = from_blob(&first)?;
        std::fs::create_dir_all(&group.snapshot_dir)
            .map_err(|e| Status::internal(e.to_string()))?;
        let path = group.snapshot_dir.join(format!(
            "receiving-{}.tmp",
            std::process::id() as u64 ^ rand_suffix()
        ));
        let mut file = tokio::fs::File::create(&path)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let mut bytes = 0u64;
        // Chunks are never empty; an empty message marks the end. Without it the sender gave
        // up midway (its stream may still end cleanly): nothing of it is installed.
        let mut complete = false;
        let received: Result<(), Status> = async {
            while let Some(chunk) = stream.message().await? {
                if chunk.data.is_empty() {
                    complete = true;
                    continue;
                }
                bytes += chunk.data.len() as u64;
                tokio::io::AsyncWriteExt::write_all(&mut file, &chunk.data)
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?;
            }
            if complete {
                Ok(())
            } else {
                Err(Status::aborted(
                    "snapshot stream ended before its end marker",
                ))
            }
        }
        .await;
        if let Err(status) = received {
            drop(file);
            let _ = std::fs::remove_file(&path);
            tracing::warn!(bytes, %status, "incomplete snapshot discarded");
            return Err(status);
        }
        file.sync_all()
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        drop(file);
        tracing::info!(bytes, index = ?meta.last_log_id.map(|l| l.index), "received snapshot");
        let snapshot = openraft::storage::Snapshot {
            meta,
            snapshot: GroupSnapshot::File(path),
        };
        let resp = group
            .raft
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(to_blob(&resp)?))
    }

    async fn transfer_leader(&self, req: Request<Blob>) -> Result<Response<Blob>, Status> {
        let group = self.route(req.metadata())?;
        let rpc = from_blob(req.get_ref())?;
        let resp = group
            .raft
            .handle_transfer_leader(rpc)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(to_blob(&resp)?))
    }

    type ForwardStreamStream = ForwardAnswers;

    async fn forward_stream(
        &self,
        req: Request<Streaming<ForwardRequest>>,
    ) -> Result<Response<ForwardAnswers>, Status> {
        let group = self.route(req.metadata())?;
        let mut inbound = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(async move {
            // Each write runs on its own task: answers go back as they commit, in any order.
            while let Ok(Some(m)) = inbound.message().await {
                let (group, tx) = (group.clone(), tx.clone());
                tokio::spawn(async move {
                    let answer = match run_forwarded(&group, m.command).await {
                        Ok(result) => ForwardResponse {
                            id: m.id,
                            result,
                            ..Default::default()
                        },
                        Err((refusal, message)) => ForwardResponse {
                            id: m.id,
                            result: Vec::new(),
                            code: refusal as i32,
                            message,
                        },
                    };
                    let _ = tx.send(Ok(answer)).await;
                });
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn read_index(&self, req: Request<Blob>) -> Result<Response<ReadIndexResponse>, Status> {
        let group = self.route(req.metadata())?;
        let (read, _) = group
            .raft
            .get_read_log_id(ReadPolicy::ReadIndex)
            .await
            .map_err(|_| not_leader())?;
        // ReadLogId serializes as the log id it wraps.
        let bytes = rmp_serde::to_vec(&read).map_err(|e| Status::internal(e.to_string()))?;
        let log_id: LogId =
            rmp_serde::from_slice(&bytes).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(ReadIndexResponse {
            index: log_id.index,
        }))
    }

    async fn change_membership(&self, req: Request<Blob>) -> Result<Response<Blob>, Status> {
        let group = self.route(req.metadata())?;
        let (change, retain): (Change, bool) = from_blob(req.get_ref())?;
        match crate::replica::run_change(&group.raft, change, retain).await {
            Ok(()) => {}
            Err(crate::ProposeError::NotLeader(_)) => return Err(not_leader()),
            Err(crate::ProposeError::Membership(m)) => return Err(Status::failed_precondition(m)),
            Err(e) => return Err(Status::unavailable(e.to_string())),
        }
        Ok(Response::new(Blob::default()))
    }

    async fn cluster_info(
        &self,
        _req: Request<Blob>,
    ) -> Result<Response<ClusterInfoResponse>, Status> {
        Ok(Response::new(ClusterInfoResponse {
            cluster_id: self.cluster_id,
        }))
    }
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
