//! etcd `Cluster` service. A single member lists itself; membership changes arrive with
//! clustering (Raft) and are refused with a clear message until then.

use std::sync::Arc;

use berth_proto::etcdserverpb::cluster_server::Cluster;
use berth_proto::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse,
};
use tonic::{Request, Response, Status};

use super::Node;

/// The Cluster service.
pub struct ClusterService {
    node: Arc<Node>,
}

impl ClusterService {
    /// Creates the service.
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    fn members(&self) -> Vec<Member> {
        self.node
            .proposer
            .replica()
            .members()
            .into_iter()
            .map(|m| Member {
                id: m.id,
                name: m.member.name,
                peer_ur_ls: m.member.peer_urls,
                client_ur_ls: m.member.client_urls,
                is_learner: m.is_learner,
            })
            .collect()
    }
}

fn needs_clustering(what: &str) -> Status {
    Status::unimplemented(format!(
        "berth: {what} needs clustering, which this build does not have yet (single member)"
    ))
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        _req: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        Err(needs_clustering("member add"))
    }

    async fn member_remove(
        &self,
        _req: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        Err(needs_clustering("member remove"))
    }

    async fn member_update(
        &self,
        _req: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        Err(needs_clustering("member update"))
    }

    async fn member_list(
        &self,
        _req: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        Ok(Response::new(MemberListResponse {
            // Membership is not MVCC data: etcd leaves the revision out of this header.
            header: self.node.header(0),
            members: self.members(),
        }))
    }

    async fn member_promote(
        &self,
        _req: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        Err(needs_clustering("member promote"))
    }
}
