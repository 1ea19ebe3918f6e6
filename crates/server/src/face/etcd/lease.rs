//! etcd `Lease` service: the etcd face of the lease domain ([`crate::lease`]), which owns
//! grants, renewals at the leader, TTLs and expiry; here are etcd's checks, headers and errors.

use std::pin::Pin;
use std::sync::Arc;

use berth_proto::etcdserverpb::lease_server::Lease;
use berth_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use berth_auth::Access;
use berth_store::Keyspace;

use super::{principal, Headers as _};
use crate::auth::Principal;
use crate::core::Core;
use crate::face::etcd::errors::ApiError;

/// etcd's check of the keys attached to a lease (revoking it deletes them; putting to it
/// ties a key's life to theirs): `access` on every one. A key of a system keyspace (a
/// registry session's, say) can be touched through the etcd face only by root.
pub fn allow_lease_keys(
    core: &Core,
    p: &Principal,
    lease: i64,
    access: Access,
) -> Result<(), Status> {
    if p.is_open() {
        return Ok(());
    }
    let Some(info) = core.store.lease_info(lease) else {
        return Ok(());
    };
    for (ks, key) in &info.keys {
        if *ks == Keyspace::User {
            p.check(Keyspace::User, access, key, b"")?;
        } else {
            p.admin()?;
        }
    }
    Ok(())
}

/// The Lease service.
pub struct LeaseService {
    core: Arc<Core>,
}

impl LeaseService {
    /// Creates the service.
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }

    /// Serves one keep-alive stream (from gRPC or the JSON gateway): each request renews its
    /// lease at the leader and is answered with the TTL left.
    pub fn keep_alive(
        &self,
        inbound: impl Stream<Item = Result<LeaseKeepAliveRequest, Status>> + Send + 'static,
    ) -> KeepAliveStream {
        let mut inbound = Box::pin(inbound);
        let (tx, rx) = mpsc::channel(64);
        let node = self.core.clone();
        tokio::spawn(async move {
            loop {
                let id = match inbound.next().await {
                    Some(Ok(m)) => m.id,
                    None => return,
                    Some(Err(status)) => {
                        tracing::debug!(%status, "keep-alive stream ended");
                        return;
                    }
                };
                // An unknown lease answers TTL 0, as etcd does; the client then stops.
                let ttl = match node.leases.renew(id).await {
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
        Box::pin(ReceiverStream::new(rx))
    }
}

/// Responses of one keep-alive stream.
pub type KeepAliveStream =
    Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        req: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let who = principal(&self.core, &req)?;
        who.authenticated()?;
        let g = req.into_inner();
        if self.core.out_of_space().await {
            return Err(ApiError::NoSpace.into());
        }
        if g.ttl > self.core.store.lease_limits().max_ttl {
            return Err(ApiError::LeaseTtlTooLarge.into());
        }
        let mut resp = self
            .core
            .leases
            .grant(g.ttl, g.id, Some(who.guard()))
            .await?;
        self.core.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn lease_revoke(
        &self,
        req: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let who = principal(&self.core, &req)?;
        let id = req.into_inner().id;
        who.authenticated()?;
        allow_lease_keys(&self.core, &who, id, Access::Write)?;
        let mut resp = self.core.leases.revoke(id, Some(who.guard())).await?;
        self.core.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<KeepAliveStream>, Status> {
        principal(&self.core, &req)?.authenticated()?;
        Ok(Response::new(self.keep_alive(req.into_inner())))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let who = principal(&self.core, &req)?;
        let r = req.into_inner();
        who.authenticated()?;
        if r.keys {
            allow_lease_keys(&self.core, &who, r.id, Access::Read)?;
        }
        // A missing lease is not an error here: etcd answers TTL -1.
        let ttl = self.core.leases.time_to_live(r.id, r.keys).await?;
        Ok(Response::new(LeaseTimeToLiveResponse {
            header: self.core.header(self.core.store.revision()),
            id: r.id,
            ttl: ttl.ttl,
            granted_ttl: ttl.granted_ttl,
            keys: ttl.keys,
        }))
    }

    async fn lease_leases(
        &self,
        req: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        principal(&self.core, &req)?.authenticated()?;
        let leases = self
            .core
            .leases
            .ids()
            .into_iter()
            .map(|id| LeaseStatus { id })
            .collect();
        Ok(Response::new(LeaseLeasesResponse {
            header: self.core.header(self.core.store.revision()),
            leases,
        }))
    }
}
