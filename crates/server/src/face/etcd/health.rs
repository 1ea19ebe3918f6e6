//! `grpc.health.v1.Health` on the client port, as etcd serves it: `SERVING` while this
//! member has a leader and its consensus runs, `NOT_SERVING` otherwise. Load balancers and
//! gRPC health checks (berth's own Consul gRPC checks among them) call it.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

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

/// How often a Watch stream looks at this member's status between role changes (a follower
/// losing its leader is not a role change of its own).
const WATCH_POLL: Duration = Duration::from_millis(500);

impl HealthService {
    fn status(&self) -> ServingStatus {
        let up = self.core.consensus.stopped().is_none()
            && self.core.consensus.status().leader.is_some();
        if up {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        }
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
        Ok(Response::new(HealthCheckResponse {
            status: self.status() as i32,
        }))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

    /// The current status at once, then each change of it (gRPC's health protocol). An
    /// unknown service is answered SERVICE_UNKNOWN on the stream, not with an error.
    async fn watch(
        &self,
        req: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let known = req.get_ref().service.is_empty();
        let svc = HealthService {
            core: self.core.clone(),
        };
        let roles = self.core.consensus.roles();
        let stream = futures::stream::unfold(
            (svc, roles, None::<ServingStatus>),
            move |(svc, mut roles, last)| async move {
                loop {
                    let now = if known {
                        svc.status()
                    } else {
                        ServingStatus::ServiceUnknown
                    };
                    if last != Some(now) {
                        let item = Ok(HealthCheckResponse { status: now as i32 });
                        return Some((item, (svc, roles, Some(now))));
                    }
                    // A role change wakes it at once; a closed role channel leaves the poll.
                    let changed = async {
                        if roles.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    };
                    tokio::select! {
                        _ = changed => {}
                        _ = tokio::time::sleep(WATCH_POLL) => {}
                    }
                }
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }
}
