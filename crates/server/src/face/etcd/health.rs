//! `grpc.health.v1.Health` on the client port, as etcd serves it: `SERVING` while this
//! member has a leader and its consensus runs, `NOT_SERVING` otherwise. Load balancers and
//! gRPC health checks (berth's own Consul gRPC checks among them) call it.

use std::pin::Pin;
use std::sync::Arc;

use berth_proto::grpc_health::health_check_response::ServingStatus;
use berth_proto::grpc_health::health_server::Health;
use berth_proto::grpc_health::{HealthCheckRequest, HealthCheckResponse};
use futures::Stream;
use tonic::{Request, Response, Status};

use crate::core::Core;

/// The health service.
pub struct HealthService {
    core: Arc<Core>,
}

impl HealthService {
    /// A health service of `core`.
    pub fn new(core: Arc<Core>) -> HealthService {
        HealthService { core }
    }
}

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        req: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let service = &req.get_ref().service;
        // etcd's health server knows the server as a whole ("").
        if !service.is_empty() {
            return Err(Status::not_found(format!("unknown service {service:?}")));
        }
        let up = self.core.consensus.stopped().is_none()
            && self.core.consensus.status().leader.is_some();
        let status = if up {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        Ok(Response::new(HealthCheckResponse {
            status: status as i32,
        }))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

    async fn watch(
        &self,
        _: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented(
            "health Watch is not served; poll Check",
        ))
    }
}
