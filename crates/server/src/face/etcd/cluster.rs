//! etcd `Cluster` service over the Raft membership: list, add (as voter or learner),
//! promote, remove and update members. Changes run on the leader (forwarded if needed).

use std::sync::Arc;

use berth_consensus::MemberEntry;
use berth_proto::etcdserverpb::cluster_server::Cluster;
use berth_proto::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse,
};
use tonic::{Request, Response, Status};

use super::{principal, Headers as _};
use crate::config::url_to_addr;
use crate::core::Core;
use crate::face::etcd::errors::ApiError;
use crate::member::member_id;

/// The Cluster service.
pub struct ClusterService {
    core: Arc<Core>,
}

fn to_pb(m: MemberEntry) -> Member {
    Member {
        id: m.id,
        name: m.member.name,
        peer_ur_ls: m.member.peer_urls,
        client_ur_ls: m.member.client_urls,
        is_learner: m.is_learner,
    }
}

fn check_urls(urls: &[String]) -> Result<(), ApiError> {
    if urls.is_empty() || urls.iter().any(|u| url_to_addr(u).is_err()) {
        return Err(ApiError::MemberBadUrls);
    }
    Ok(())
}

impl ClusterService {
    /// Creates the service.
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }

    fn entries(&self) -> Vec<MemberEntry> {
        self.core.consensus.members()
    }

    fn members(&self) -> Vec<Member> {
        self.entries().into_iter().map(to_pb).collect()
    }

    fn find(&self, id: u64) -> Result<MemberEntry, ApiError> {
        self.entries()
            .into_iter()
            .find(|m| m.id == id)
            .ok_or(ApiError::MemberNotFound)
    }

    /// Membership is not MVCC data: etcd leaves the revision out of these headers.
    fn header(&self) -> Option<berth_proto::etcdserverpb::ResponseHeader> {
        self.core.header(0)
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        req: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        principal(&self.core, &req)?.admin()?;
        let r = req.into_inner();
        check_urls(&r.peer_ur_ls)?;
        let id = member_id(&r.peer_ur_ls, &self.core.config.initial_cluster_token);
        let existing = self.entries();
        if existing.iter().any(|m| m.id == id) {
            return Err(ApiError::MemberExist.into());
        }
        if existing
            .iter()
            .any(|m| m.member.peer_urls.iter().any(|u| r.peer_ur_ls.contains(u)))
        {
            return Err(ApiError::PeerUrlExist.into());
        }
        let member = berth_consensus::Member {
            name: String::new(),
            peer_urls: r.peer_ur_ls.clone(),
            client_urls: Vec::new(),
        };
        self.core
            .consensus
            .add_member(id, member, r.is_learner)
            .await?;
        tracing::info!(member = format_args!("{id:x}"), learner = r.is_learner, urls = ?r.peer_ur_ls, "member added");
        Ok(Response::new(MemberAddResponse {
            header: self.header(),
            member: Some(Member {
                id,
                name: String::new(),
                peer_ur_ls: r.peer_ur_ls,
                client_ur_ls: Vec::new(),
                is_learner: r.is_learner,
            }),
            members: self.members(),
        }))
    }

    async fn member_remove(
        &self,
        req: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        principal(&self.core, &req)?.admin()?;
        let id = req.into_inner().id;
        self.find(id)?;
        self.core.consensus.remove_member(id).await?;
        tracing::info!(member = format_args!("{id:x}"), "member removed");
        Ok(Response::new(MemberRemoveResponse {
            header: self.header(),
            members: self.members(),
        }))
    }

    async fn member_update(
        &self,
        req: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        principal(&self.core, &req)?.admin()?;
        let r = req.into_inner();
        check_urls(&r.peer_ur_ls)?;
        let mut current = self.find(r.id)?;
        current.member.peer_urls = r.peer_ur_ls;
        self.core.consensus.set_member(r.id, current.member).await?;
        Ok(Response::new(MemberUpdateResponse {
            header: self.header(),
            members: self.members(),
        }))
    }

    async fn member_list(
        &self,
        _req: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        Ok(Response::new(MemberListResponse {
            header: self.header(),
            members: self.members(),
        }))
    }

    async fn member_promote(
        &self,
        req: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        principal(&self.core, &req)?.admin()?;
        let id = req.into_inner().id;
        if !self.find(id)?.is_learner {
            return Err(ApiError::MemberNotLearner.into());
        }
        self.core.consensus.promote_member(id).await?;
        tracing::info!(member = format_args!("{id:x}"), "learner promoted");
        Ok(Response::new(MemberPromoteResponse {
            header: self.header(),
            members: self.members(),
        }))
    }
}
