//! The leader's side of lease work (`berth.lease.LeaseLeader`, on the peer port beside
//! Raft's service): renewal batches and TTL queries from other members. A member that does
//! not lead, or leads but has not applied everything committed before its term, refuses, and
//! the sender asks whoever leads next.

use std::pin::Pin;
use std::sync::Arc;

use berth_proto::berth::lease::lease_leader_server::{LeaseLeader, LeaseLeaderServer};
use berth_proto::berth::lease::{RenewAnswers, RenewBatch, TimeToLiveRequest, TimeToLiveResponse};
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::Leases;
use crate::consensus::Consensus;

/// Answers of a renewal stream.
type Answers = Pin<Box<dyn Stream<Item = Result<RenewAnswers, Status>> + Send>>;

/// Serves other members' lease requests.
pub struct LeaderService {
    leases: Arc<Leases>,
    consensus: Consensus,
}

/// The lease leader service for the peer port.
pub fn service(leases: Arc<Leases>, consensus: Consensus) -> LeaseLeaderServer<LeaderService> {
    LeaseLeaderServer::new(LeaderService { leases, consensus })
}

fn not_leader() -> Status {
    Status::unavailable("berth: not the leader")
}

#[tonic::async_trait]
impl LeaseLeader for LeaderService {
    type RenewStream = Answers;

    async fn renew(
        &self,
        req: Request<Streaming<RenewBatch>>,
    ) -> Result<Response<Answers>, Status> {
        self.consensus.admit_peer(req.metadata())?;
        let (leases, consensus) = (self.leases.clone(), self.consensus.clone());
        // In order, one answer per batch: the sender has one batch in flight.
        let answers = req.into_inner().then(move |batch| {
            let (leases, consensus) = (leases.clone(), consensus.clone());
            async move {
                let batch = batch?;
                if !consensus.leads_caught_up().await {
                    return Ok(RenewAnswers {
                        id: batch.id,
                        ttls: Vec::new(),
                        refused: true,
                    });
                }
                Ok(RenewAnswers {
                    id: batch.id,
                    ttls: leases.renew_here(&batch.leases),
                    refused: false,
                })
            }
        });
        Ok(Response::new(Box::pin(answers)))
    }

    async fn time_to_live(
        &self,
        req: Request<TimeToLiveRequest>,
    ) -> Result<Response<TimeToLiveResponse>, Status> {
        self.consensus.admit_peer(req.metadata())?;
        if !self.consensus.leads_caught_up().await {
            return Err(not_leader());
        }
        let r = req.into_inner();
        Ok(Response::new(self.leases.time_to_live_here(r.id, r.keys)))
    }
}
