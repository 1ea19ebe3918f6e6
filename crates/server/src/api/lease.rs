//! etcd `Lease` service: grant and revoke go through the write path; keep-alives, TTL queries
//! and listing are answered from the lessor held in memory.

use std::pin::Pin;
use std::sync::Arc;

use berth_proto::etcdserverpb::lease_server::Lease;
use berth_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use berth_store::{Applied, Command};
use futures::Stream;
use rand::Rng;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::Node;
use crate::errors::ApiError;

/// The Lease service.
pub struct LeaseService {
    node: Arc<Node>,
}

impl LeaseService {
    /// Creates the service.
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

/// Revokes one lease through the write path (used by the API and by expiry).
pub async fn revoke(node: &Node, id: i64) -> Result<LeaseRevokeResponse, ApiError> {
    match node
        .proposer
        .propose(Command::LeaseRevoke(LeaseRevokeRequest { id }))
        .await?
    {
        Applied::LeaseRevoke(mut resp) => {
            node.fill(&mut resp.header);
            Ok(resp)
        }
        _ => Err(ApiError::Corrupt),
    }
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        req: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let mut g = req.into_inner();
        if self.node.out_of_space().await {
            return Err(ApiError::NoSpace.into());
        }
        if g.ttl > self.node.store.lease_limits().max_ttl {
            return Err(ApiError::LeaseTtlTooLarge.into());
        }
        let chosen_here = g.id == 0;
        for _ in 0..8 {
            if chosen_here {
                // Positive, so it prints the same in every client.
                g.id = rand::rng().random_range(1..i64::MAX);
            }
            match self.node.proposer.propose(Command::LeaseGrant(g)).await {
                Ok(Applied::LeaseGrant(mut resp)) => {
                    self.node.fill(&mut resp.header);
                    tracing::debug!(id = resp.id, ttl = resp.ttl, "lease granted");
                    return Ok(Response::new(resp));
                }
                Ok(_) => return Err(ApiError::Corrupt.into()),
                Err(ApiError::LeaseExist) if chosen_here => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::LeaseExist.into())
    }

    async fn lease_revoke(
        &self,
        req: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let id = req.into_inner().id;
        Ok(Response::new(revoke(&self.node, id).await?))
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<KeepAliveStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let node = self.node.clone();
        tokio::spawn(async move {
            loop {
                let id = match inbound.message().await {
                    Ok(Some(m)) => m.id,
                    Ok(None) => return,
                    Err(status) => {
                        tracing::debug!(%status, "keep-alive stream ended");
                        return;
                    }
                };
                // An unknown lease answers TTL 0, as etcd does; the client then stops.
                // Only the leader runs lease timers: renew there.
                let ttl = match node.proposer.lease_renew(id).await {
                    Ok(ttl) => ttl,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                let resp = LeaseKeepAliveResponse {
                    header: node.header(node.store.revision()),
                    id,
                    ttl,
                };
                if tx.send(Ok(resp)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let r = req.into_inner();
        // A missing lease is not an error here: etcd answers TTL -1. The leader knows the
        // remaining time; followers ask it.
        let mut resp = self
            .node
            .proposer
            .replica()
            .lease_ttl(r)
            .await
            .map_err(|e| Status::from(crate::proposer::map_err(e)))?;
        resp.header = self.node.header(self.node.store.revision());
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        _req: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        let leases = self
            .node
            .store
            .lease_ids()
            .into_iter()
            .map(|id| LeaseStatus { id })
            .collect();
        Ok(Response::new(LeaseLeasesResponse {
            header: self.node.header(self.node.store.revision()),
            leases,
        }))
    }
}
